//! Connection churn with receives pending: 10,000 loopback connections opened in
//! waves and closed in a shuffled order — half by the port while its receives are
//! pending (on io_uring: held by the kernel), half by the client — and afterwards
//! every segment is back in the arena, no op is pending, and the process has the
//! descriptors it started with. Runs on the driver `BERTH_DRIVER` names (CI runs it
//! on both).

use std::time::{Duration, Instant};

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::{OpError, OpKind};
use berth_reactor::{Completion, CompletionPort, ListenOptions};

const CONNECTIONS: usize = 10_000;
const WAVE: usize = 250;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// A small deterministic shuffle (xorshift), so a failure repeats.
fn shuffle<T>(items: &mut [T], seed: &mut u64) {
    for i in (1..items.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        items.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

#[test]
fn ten_thousand_connections_closed_with_receives_pending() {
    let fds_before = open_fds();
    let buffers = BufferManager::new(BufferConfig::new().segment_size(4096).segment_count(1024)).unwrap();
    let mut port = CompletionPort::builder()
        .ops(4 * WAVE + 8)
        .max_sockets(WAVE + 8)
        .buffers(buffers.clone())
        .build(|_| ())
        .unwrap();
    let listener = port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
    let addr = port.local_addr(listener).unwrap();
    let accept = port.take_op().unwrap();
    port.accept(listener, accept).unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut batch = Vec::with_capacity(1024);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut opened = 0;
    let mut cancelled = 0;
    while opened < CONNECTIONS {
        let clients: Vec<_> = (0..WAVE).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        opened += WAVE;
        // Accept the wave, and give each connection two pending receives: a pooled
        // one (no segment while waiting) and one into its own segment.
        let mut conns = Vec::with_capacity(WAVE);
        while conns.len() < WAVE {
            assert!(Instant::now() < deadline, "accepting stalled at {} of a wave", conns.len());
            port.wait(&mut batch, Some(Duration::from_millis(100))).unwrap();
            for c in batch.drain(..) {
                let Completion::Op { kind: OpKind::Accept, socket, result, .. } = c else { panic!("unexpected {c:?}") };
                result.unwrap();
                let pooled = port.take_op().unwrap();
                port.recv_pooled(socket, pooled).unwrap();
                let own = port.take_op().unwrap();
                let lease = port.lease().unwrap();
                port.op_mut(own).unwrap().set_buffer(lease, 0..4096).unwrap();
                port.recv(socket, own).unwrap();
                conns.push(socket);
                port.accept(listener, accept).unwrap();
            }
        }
        // Pair each server socket with its client by address, then close in a
        // shuffled order: even positions by the port, odd ones by the client.
        let mut clients: Vec<_> = clients.into_iter().map(Some).collect();
        let mut order: Vec<usize> = (0..WAVE).collect();
        shuffle(&mut order, &mut seed);
        for (n, &i) in order.iter().enumerate() {
            let socket = conns[i];
            let peer = port.stream(socket).unwrap().peer_addr().unwrap();
            let client = clients.iter().position(|c| c.as_ref().is_some_and(|c| c.local_addr().unwrap() == peer));
            let client = clients[client.expect("a client for every connection")].take();
            if n % 2 == 0 {
                assert_eq!(port.close(socket).unwrap(), 2, "both receives were pending");
                cancelled += 2;
                drop(client);
            } else {
                drop(client); // the peer's FIN completes the first receive with Ok(0)
            }
        }
        // Every op completes exactly once: as cancelled, or with end of stream (the
        // second receive then as cancelled when the server closes).
        let mut done = 0;
        while done < 2 * WAVE {
            assert!(Instant::now() < deadline, "completions stalled at {done} of {}", 2 * WAVE);
            port.wait(&mut batch, Some(Duration::from_millis(100))).unwrap();
            for c in batch.drain(..) {
                let Completion::Op { op, kind: OpKind::Recv, socket, result } = c else { panic!("unexpected {c:?}") };
                done += 1;
                match result {
                    Err(OpError::Cancelled) => {}
                    // End of stream from the client (or a reset): close from our side,
                    // which cancels the connection's other receive.
                    Ok(0) | Err(OpError::ConnectionReset) => {
                        if let Ok(n) = port.close(socket) {
                            cancelled += n;
                        }
                    }
                    other => panic!("op {op:?}: unexpected {other:?}"),
                }
                port.give_op(op).unwrap();
            }
        }
        assert_eq!(port.stats().sockets, 1, "only the listener is left");
        assert_eq!(port.stats().pending, 1, "only the accept is pending");
    }
    assert!(cancelled >= CONNECTIONS, "{cancelled} cancelled receives");
    assert_eq!(port.stats().accepted as usize, CONNECTIONS);
    port.close(listener).unwrap();
    let mut batch = Vec::new();
    while port.stats().pending > 0 && Instant::now() < deadline {
        port.wait(&mut batch, Some(Duration::from_millis(50))).unwrap();
    }
    port.give_op(accept).unwrap();
    // Only the segments lent to the io_uring buffer ring are out (none on epoll).
    assert_eq!(buffers.stats().in_use, port.stats().ring_buffers, "a lease did not come back");
    assert_eq!(port.pool_stats().in_use, 0);
    drop(port);
    assert_eq!(buffers.stats().in_use, 0, "the buffer ring's segments did not come back");
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
}
