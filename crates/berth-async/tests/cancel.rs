//! Cancellation: a future dropped while its op is in flight cancels the op, and the
//! op's buffer returns to the arena once the port hands it back — never before (the
//! kernel may write into it), never leaked. Run under `BERTH_DRIVER=epoll` and
//! `BERTH_DRIVER=uring`: on io_uring the ops are with the kernel when cancelled.

mod common;

use std::time::Duration;

use berth_async::{Error, JoinError, TcpListener, TcpStream, spawn, timeout};
use common::{LIMIT, client, held, runtime, settle};

/// Thousands of tasks, each with a read in flight on an idle connection, aborted at
/// once: every lease comes back once the cancellations complete.
#[test]
fn thousands_of_reads_dropped_mid_flight_return_every_buffer() {
    const CONNECTIONS: usize = 20;
    const READS: usize = 100; // per connection: 2000 tasks, 2000 leases in flight
    let (rt, buffers) = runtime(4096, 4096);
    let baseline = held(&rt, &buffers);
    let peers = rt
        .block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = listener.local_addr().unwrap();
            let mut peers = Vec::new();
            let mut tasks = Vec::new();
            // Held until the end: closing a connection would cancel its reads too, and
            // this test is about the reads' own cancellation.
            let mut conns = Vec::new();
            for _ in 0..CONNECTIONS {
                peers.push(client(addr));
                let (conn, _) = listener.accept().await.unwrap();
                let conn = std::rc::Rc::new(conn);
                conns.push(conn.clone());
                for _ in 0..READS {
                    let conn = conn.clone();
                    let lease = conn.lease().unwrap();
                    tasks.push(spawn(async move {
                        let (result, _lease) = conn.read(lease).await;
                        result
                    }));
                }
            }
            // Let every task submit its read.
            berth_async::sleep(Duration::from_millis(20)).await.unwrap();
            assert!(tasks.iter().all(|t| !t.is_finished()), "no read can complete: the peers send nothing");
            assert!(held(&rt, &buffers) >= baseline + CONNECTIONS * READS, "each read holds its lease");
            for t in &tasks {
                t.abort();
            }
            for t in tasks {
                assert_eq!(t.await.unwrap_err(), JoinError::Aborted);
            }
            assert!(settle(|| rt.cancelling() == 0).await, "{} cancellations never came back", rt.cancelling());
            assert_eq!(held(&rt, &buffers), baseline, "leases leaked or not yet returned: {:?}", buffers.stats());
            drop(conns);
            peers
        })
        .unwrap();
    assert_eq!(rt.cancelling(), 0);
    assert_eq!(held(&rt, &buffers), baseline, "leases leaked or not yet returned: {:?}", buffers.stats());
    drop(peers);
    drop(rt);
    assert_eq!(buffers.stats().in_use, 0, "the port's drop returns the rest: {:?}", buffers.stats());
}

/// Pooled reads (no buffer until data arrives; on io_uring a multishot receive on
/// the port's buffer ring) aborted in flight: all come back, nothing is left
/// leased, and the connections read on afterwards.
#[test]
fn pooled_reads_dropped_mid_flight_leave_nothing_behind() {
    use std::io::Write;
    const CONNECTIONS: usize = 20;
    const READS: usize = 50;
    let (rt, buffers) = runtime(2048, 1024);
    let baseline = held(&rt, &buffers);
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peers = Vec::new();
        let mut conns = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..CONNECTIONS {
            peers.push(client(addr));
            let conn = std::rc::Rc::new(listener.accept().await.unwrap().0);
            for _ in 0..READS {
                let conn = conn.clone();
                tasks.push(spawn(async move { conn.read_pooled().await.map(|l| l.map(|l| l.len())) }));
            }
            conns.push(conn);
        }
        berth_async::sleep(Duration::from_millis(20)).await.unwrap();
        assert_eq!(rt.stats().pending, CONNECTIONS * READS, "every pooled read in flight");
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            assert_eq!(t.await.unwrap_err(), JoinError::Aborted);
        }
        assert!(settle(|| rt.cancelling() == 0).await, "{} cancellations never came back", rt.cancelling());
        assert_eq!(rt.stats().pending, 0);
        assert_eq!(held(&rt, &buffers), baseline, "{:?}", buffers.stats());
        for (peer, conn) in peers.iter_mut().zip(&conns) {
            peer.write_all(b"after").unwrap();
            let mut got = Vec::new();
            while got.len() < 5 {
                let lease = timeout(LIMIT, conn.read_pooled()).await.unwrap().unwrap().expect("open");
                got.extend_from_slice(lease.filled());
            }
            assert_eq!(got, b"after");
        }
    })
    .unwrap();
    assert_eq!(held(&rt, &buffers), baseline);
}

/// A runtime dropped with reads in flight cancels them and waits for the port to
/// hand them back before it goes: nothing is in use afterwards.
#[test]
fn dropping_the_runtime_cancels_pending_reads() {
    let (rt, buffers) = runtime(256, 256);
    let peer = rt
        .block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let peer = client(listener.local_addr().unwrap());
            let (conn, _) = listener.accept().await.unwrap();
            let conn = std::rc::Rc::new(conn);
            for _ in 0..50 {
                let conn = conn.clone();
                drop(spawn(async move { conn.read(conn.lease().unwrap()).await.0 }));
            }
            berth_async::sleep(Duration::from_millis(10)).await.unwrap();
            peer
        })
        .unwrap();
    // The 50 reads hold their leases (beyond what the io_uring buffer ring lends).
    assert!(held(&rt, &buffers) >= 50, "{:?}", buffers.stats());
    drop(rt);
    drop(peer);
    assert_eq!(buffers.stats().in_use, 0, "{:?}", buffers.stats());
}

/// `timeout` around a read that never completes: `TimedOut`, the read is cancelled
/// and its lease returns to the arena.
#[test]
fn timeout_cancels_a_read_and_returns_its_buffer() {
    let (rt, buffers) = runtime(64, 64);
    let baseline = held(&rt, &buffers);
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let _peer = client(listener.local_addr().unwrap());
        let (conn, _) = listener.accept().await.unwrap();
        let lease = conn.lease().unwrap();
        let started = std::time::Instant::now();
        let late = timeout(Duration::from_millis(30), conn.read(lease)).await;
        assert!(matches!(late, Err(Error::TimedOut)), "{late:?}");
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(started.elapsed() < LIMIT);
        assert!(settle(|| rt.cancelling() == 0).await);
        assert_eq!(held(&rt, &buffers), baseline, "the read's lease came back: {:?}", buffers.stats());
        // The connection is still usable after the cancelled read.
        use std::io::Write;
        let mut peer = _peer;
        peer.write_all(b"x").unwrap();
        let (n, lease) = timeout(LIMIT, conn.read(conn.lease().unwrap())).await.unwrap();
        assert_eq!((n.unwrap(), lease.filled()), (1, &b"x"[..]));
    })
    .unwrap();
}

/// Reads cancelled again and again on one connection: once each cancellation is
/// back, the connection reads on as before, every byte in order, and no lease is
/// left behind. (Bytes that arrive while a dropped read is still with the kernel go
/// to that read and are dropped with it: see the crate's Cancellation section. The
/// peer here sends only once the cancellation has completed.)
#[test]
fn a_connection_reads_on_after_cancelled_reads() {
    use std::io::Write;
    let (rt, buffers) = runtime(64, 64);
    let baseline = held(&rt, &buffers);
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut peer = client(listener.local_addr().unwrap());
        let (conn, _) = listener.accept().await.unwrap();
        for round in 0..50u8 {
            let late = timeout(Duration::from_micros(200), conn.read(conn.lease().unwrap())).await;
            assert!(matches!(late, Err(Error::TimedOut)), "nothing was sent yet");
            assert!(settle(|| rt.cancelling() == 0).await);
            peer.write_all(&[round]).unwrap();
            let (n, lease) = timeout(LIMIT, conn.read(conn.lease().unwrap())).await.unwrap();
            assert_eq!((n.unwrap(), lease.filled()), (1, &[round][..]));
        }
        assert_eq!(held(&rt, &buffers), baseline);
    })
    .unwrap();
}

/// A connect dropped in flight closes its socket and gives its op back.
#[test]
fn dropped_accepts_and_connects_give_their_ops_back() {
    let (rt, _buffers) = runtime(64, 64);
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        for _ in 0..20 {
            let late = timeout(Duration::from_micros(100), listener.accept()).await;
            assert!(matches!(late, Err(Error::TimedOut)));
        }
        // 192.0.2.0/24 (TEST-NET-1) is unroutable: the connect stays in flight.
        for _ in 0..5 {
            let late = timeout(Duration::from_millis(2), TcpStream::connect("192.0.2.1:9".parse().unwrap())).await;
            // Timed out in flight, or refused at once where there is no route at all.
            assert!(!matches!(late, Ok(Ok(_))), "{late:?}");
        }
        assert!(settle(|| rt.cancelling() == 0).await);
        // Every op is back: the whole pool can be taken again.
        let all: Vec<_> = (0..64).map(|_| spawn(berth_async::sleep(Duration::from_millis(5)))).collect();
        for s in all {
            s.await.unwrap().unwrap();
        }
        assert_eq!(rt.stats().sockets, 1, "only the listener is left");
    })
    .unwrap();
}

/// A datagram receive under a timeout: cancelled, its lease back, the socket
/// receives on.
#[test]
fn a_timed_out_recv_from_returns_its_buffer() {
    let (rt, buffers) = runtime(64, 64);
    let baseline = held(&rt, &buffers);
    rt.block_on(async {
        let a = berth_async::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = berth_async::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        for _ in 0..20 {
            let late = timeout(Duration::from_micros(300), b.recv_from(b.lease().unwrap())).await;
            assert!(matches!(late, Err(Error::TimedOut)));
        }
        assert!(settle(|| rt.cancelling() == 0).await);
        assert_eq!(held(&rt, &buffers), baseline);
        let mut ping = a.lease().unwrap();
        ping.spare_mut()[..2].copy_from_slice(b"hi");
        ping.set_len(2).unwrap();
        a.send_to(ping, b.local_addr().unwrap()).await.0.unwrap();
        let (got, lease) = timeout(LIMIT, b.recv_from(b.lease().unwrap())).await.unwrap();
        assert_eq!((got.unwrap().0, lease.filled()), (2, &b"hi"[..]));
    })
    .unwrap();
    assert_eq!(held(&rt, &buffers), baseline);
}

/// Tasks still pending when the runtime is dropped complete as `RuntimeGone`.
#[test]
fn a_dropped_runtime_ends_its_tasks() {
    let (rt, _) = runtime(16, 16);
    let task = rt.spawn(async { berth_async::sleep(Duration::from_secs(600)).await });
    rt.block_on(berth_async::yield_now()).unwrap();
    drop(rt);
    let mut task = std::pin::pin!(task);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(task.as_mut(), &mut cx) {
        std::task::Poll::Ready(r) => assert_eq!(r.unwrap_err(), JoinError::RuntimeGone),
        std::task::Poll::Pending => panic!("the task's output is settled when its runtime goes"),
    }
}
