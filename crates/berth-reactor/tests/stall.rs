//! Issue 20: an echo server under a 4 KiB ping-pong load never sleeps while an op it
//! holds could run. The port's audit (`PortBuilder::audit`) checks that before every
//! sleep; these tests hold it at zero, with the segment as large as a message and
//! with a message spread over four segments (short reads, the epoll driver's
//! "drained" shortcut), on whichever driver `BERTH_DRIVER` picks (CI runs both).

mod common;

use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use berth_buf::{BufferConfig, BufferManager};
use berth_reactor::{CompletionPort, ListenOptions, PortStats};
use common::{Echo, STOP, client};

const CONNECTIONS: usize = 64;
const MESSAGE: usize = 4096;
const ROUND_TRIPS: usize = 200;

/// Runs the echo load against an audited port whose segments hold `segment` bytes;
/// returns the port's stats at the end.
fn echo_load(segment: usize) -> (PortStats, Vec<String>) {
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || -> io::Result<PortStats> {
        let buffers = BufferManager::new(BufferConfig::new().segment_size(segment).segment_count(1024))
            .map_err(io::Error::other)?;
        let mut port =
            CompletionPort::builder().ops(256).max_sockets(256).buffers(buffers).audit(true).build(|_| ())?;
        let listener =
            port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).map_err(io::Error::other)?;
        let mut echo = Echo::start(&mut port, listener).map_err(io::Error::other)?;
        tx.send((port.local_addr(listener).map_err(io::Error::other)?, port.handle())).unwrap();
        while !echo.stopped() {
            port.run_once(&mut echo, Some(Duration::from_millis(100)))?;
        }
        Ok(port.stats())
    });
    let (addr, handle) = rx.recv().expect("server started");
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            std::thread::spawn(move || -> Result<(), String> {
                let mut s = client(addr);
                let mut message = [0u8; MESSAGE];
                let mut back = [0u8; MESSAGE];
                for round in 0..ROUND_TRIPS {
                    // Every message differs, so a reply from the wrong place shows.
                    for (i, b) in message.iter_mut().enumerate() {
                        *b = (i + c * 7 + round * 13) as u8;
                    }
                    let failed = |e: io::Error| format!("connection {c} round {round}: {e}");
                    s.write_all(&message).map_err(failed)?;
                    s.read_exact(&mut back).map_err(failed)?;
                    if back != message {
                        return Err(format!("connection {c} round {round}: the echo differs"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    // The server's stats first: a stranded op shows as such, not only as a client's
    // read timing out.
    let failures: Vec<String> = clients.into_iter().filter_map(|c| c.join().expect("client").err()).collect();
    handle.post(STOP, 0).expect("post stop");
    (server.join().expect("server thread").expect("server loop"), failures)
}

fn assert_never_stranded((stats, failures): (PortStats, Vec<String>)) {
    let messages = (CONNECTIONS * ROUND_TRIPS) as u64;
    // The audit ran: the server slept between messages (the clients wait for each
    // echo), and checked before each sleep.
    assert!(stats.blocking_waits > 0, "the port never slept, so the audit never ran: {stats:?}");
    assert_eq!(stats.stranded_ops, 0, "the port slept while an op could run: {stats:?}");
    // A 4 KiB reply always fits a loopback socket's send buffer.
    assert_eq!(stats.send_waits, 0, "a reply waited for room: {stats:?}");
    assert!(failures.is_empty(), "{} connections failed, first: {}", failures.len(), failures[0]);
    assert!(stats.completed_inline + stats.completed_queued >= 2 * messages, "{stats:?}");
}

#[test]
fn four_kib_echo_never_strands_an_op() {
    assert_never_stranded(echo_load(MESSAGE));
}

#[test]
fn four_kib_echo_over_one_kib_segments_never_strands_an_op() {
    assert_never_stranded(echo_load(1024));
}
