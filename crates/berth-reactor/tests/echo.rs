//! Loopback echo through the completion port: integrity across many connections and
//! message sizes, the connection limit, and several workers.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::ConnectionLimit;
use berth_reactor::workers::{Workers, WorkersConfig};
use common::{Echo, client, echo_server};

/// A deterministic pattern so every byte can be checked.
fn pattern(conn: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ conn.wrapping_mul(7)) as u8).collect()
}

/// Writes `data` while reading the echo on another thread (large messages would
/// otherwise deadlock on full socket buffers), and checks every byte.
fn round_trip(stream: &std::net::TcpStream, data: &[u8]) {
    let mut reader = stream.try_clone().unwrap();
    let len = data.len();
    let expected = data.to_vec();
    let r = std::thread::spawn(move || {
        let mut got = vec![0u8; len];
        reader.read_exact(&mut got).expect("echo read");
        assert!(got == expected, "echoed bytes differ");
    });
    (&*stream).write_all(data).expect("write");
    r.join().unwrap();
}

#[test]
fn echo_integrity_many_connections_and_sizes() {
    let server = echo_server(256, 512, None);
    let sizes = [1usize, 7, 64, 1000, 4096, 4097, 65_536, 300_000, 1 << 20];
    let clients: Vec<_> = (0..16)
        .map(|conn| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let s = client(addr);
                for (i, &size) in sizes.iter().enumerate() {
                    if conn % 4 != 0 && size > 65_536 {
                        continue; // the biggest messages on a quarter of the connections
                    }
                    round_trip(&s, &pattern(conn * 100 + i, size));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let (stats, in_use) = server.stop();
    assert_eq!(stats.accepted, 16);
    if stats.driver == berth_reactor::Driver::Epoll {
        assert!(stats.completed_inline > 0, "the fast path never fired: {stats:?}");
    }
    assert_eq!(in_use, 0, "leases left behind after the port closed");
}

#[test]
fn connection_limit_refuses_cleanly_and_spares_existing_connections() {
    let limit = ConnectionLimit::new(2);
    let server = echo_server(16, 16, Some(limit.clone()));
    let a = client(server.addr);
    let b = client(server.addr);
    round_trip(&a, b"first");
    round_trip(&b, b"second");
    // The third is accepted by the kernel, then closed by the port at once.
    let mut c = client(server.addr);
    let mut buf = [0u8; 1];
    let refused = match c.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(refused, "the connection over the limit was served");
    round_trip(&a, b"still here");
    round_trip(&b, b"me too");
    drop((a, b));
    let (stats, _) = server.stop();
    assert_eq!(stats.refused, 1);
    assert_eq!(limit.refused(), 1);
}

#[test]
fn workers_share_one_address() {
    let buffers = BufferManager::new(BufferConfig::new().segment_count(256)).unwrap();
    let mut config = WorkersConfig::new("127.0.0.1:0".parse().unwrap(), buffers.clone());
    config.workers = 2;
    config.ops = 64;
    config.max_sockets = 64;
    let workers = Workers::start(
        config,
        |_| (),
        |mut w| {
            let mut echo = Echo::start(&mut w.port, w.listener).map_err(std::io::Error::other)?;
            while !echo.stopped() {
                w.port.run_once(&mut echo, Some(Duration::from_millis(100)))?;
            }
            Ok(())
        },
    )
    .unwrap();
    let addr = workers.local_addr;
    let clients: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let s = client(addr);
                round_trip(&s, &pattern(i, 10_000));
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    for h in workers.handles() {
        h.post(common::STOP, 0).unwrap();
    }
    workers.join().unwrap();
    assert_eq!(buffers.stats().in_use, 0);
}

/// A worker that cannot be set up fails the whole start, and then no worker serves:
/// the ones already set up let go of their ports instead of running unreachable.
#[test]
fn a_failed_worker_stops_the_start_and_no_body_runs() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let buffers = BufferManager::new(BufferConfig::new().segment_count(256)).unwrap();
    let mut config = WorkersConfig::new("127.0.0.1:0".parse().unwrap(), buffers.clone());
    config.workers = 3;
    config.ops = 8;
    config.max_sockets = 8;
    let ran = Arc::new(AtomicUsize::new(0));
    let ran2 = ran.clone();
    let started = Workers::start(
        config,
        // The second worker's port cannot be built: its token maker fails.
        |_| {
            if std::thread::current().name() == Some("berth-worker-1") {
                panic!("deliberate setup failure of worker 1");
            }
        },
        move |_w| {
            ran2.fetch_add(1, Ordering::SeqCst);
            Ok(())
        },
    );
    let err = started.expect_err("a worker failed to set up");
    assert!(err.to_string().contains("setup"), "{err}");
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a body ran although the start failed");
    assert_eq!(buffers.stats().in_use, 0);
}
