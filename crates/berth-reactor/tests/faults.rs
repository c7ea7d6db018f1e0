//! The completion port under faults: resets, half-close, a peer that never reads,
//! cancel and close with ops in flight, deadlines, posts while blocked.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use berth_ops::{OpError, OpKind};
use berth_reactor::{Completion, CompletionPort, ListenOptions, SubmitError};
use berth_testkit::{CountingAllocator, thread_allocations};
use common::{connected_pair, held, wait_for};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn is_op(c: &Completion, want: OpKind) -> bool {
    matches!(c, Completion::Op { kind, .. } if *kind == want)
}

fn result_of(c: Completion) -> Result<usize, OpError> {
    match c {
        Completion::Op { result, .. } => result,
        Completion::Posted { .. } => panic!("not an op"),
    }
}

/// Makes the next close of `s` send a RST instead of a FIN.
fn reset_on_close(s: &std::net::TcpStream) {
    socket2::SockRef::from(s).set_linger(Some(Duration::ZERO)).unwrap();
}

#[test]
fn peer_reset_mid_receive() {
    let (mut port, _l, socket, client) = connected_pair(8);
    let recv = port.take_op().unwrap();
    let lease = port.lease().unwrap();
    port.op_mut(recv).unwrap().set_buffer(lease, 0..1024).unwrap();
    port.recv(socket, recv).unwrap();
    reset_on_close(&client);
    drop(client);
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Recv));
    assert_eq!(result_of(c), Err(OpError::ConnectionReset));
    port.close(socket).unwrap();
    port.give_op(recv).unwrap();
    assert_eq!(held(&port), 0);
}

#[test]
fn peer_reset_mid_send() {
    let (mut port, _l, socket, client) = connected_pair(8);
    // Fill the path until a send stays pending, then reset.
    let send = port.take_op().unwrap();
    let mut lease = port.lease().unwrap();
    lease.fill(b'x');
    let cap = lease.capacity();
    port.op_mut(send).unwrap().set_buffer(lease, 0..cap).unwrap();
    let mut pending = false;
    for _ in 0..1000 {
        port.send(socket, send).unwrap();
        let mut batch = Vec::with_capacity(8);
        port.wait(&mut batch, Some(Duration::from_millis(0))).unwrap();
        if batch.is_empty() {
            pending = true;
            break;
        }
    }
    assert!(pending, "a peer that never reads never filled the socket");
    reset_on_close(&client);
    drop(client);
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Send));
    let r = result_of(c);
    assert!(matches!(r, Err(OpError::ConnectionReset | OpError::BrokenPipe)), "{r:?}");
}

#[test]
fn half_close_still_sends_the_rest() {
    let (mut port, _l, socket, mut client) = connected_pair(8);
    client.write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let op = port.take_op().unwrap();
    port.recv_pooled(socket, op).unwrap();
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Recv));
    assert_eq!(result_of(c), Ok(10));
    port.recv_pooled(socket, op).unwrap();
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Recv));
    assert_eq!(result_of(c), Ok(0), "the peer's FIN reads as 0 bytes");
    // We still send to a peer that only shut its writing side.
    let mut lease = port.lease().unwrap();
    lease[..5].copy_from_slice(b"reply");
    port.op_mut(op).unwrap().set_buffer(lease, 0..5).unwrap();
    port.send(socket, op).unwrap();
    assert_eq!(result_of(wait_for(&mut port, |c| is_op(c, OpKind::Send))), Ok(5));
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"reply");
}

#[test]
fn a_client_that_never_reads_keeps_memory_bounded() {
    let (mut port, _l, socket, client) = connected_pair(4);
    let ops: Vec<_> = (0..4).map(|_| port.take_op().unwrap()).collect();
    for &op in &ops {
        let mut lease = port.lease().unwrap();
        lease.fill(7);
        let cap = lease.capacity();
        port.op_mut(op).unwrap().set_buffer(lease, 0..cap).unwrap();
    }
    let mut batch = Vec::with_capacity(16);
    let resubmit = |port: &mut berth_reactor::CompletionPort<()>, batch: &mut Vec<Completion>| {
        for &op in &ops {
            match port.send(socket, op) {
                Ok(()) | Err(SubmitError::Busy) => {}
                Err(e) => panic!("{e}"),
            }
        }
        port.wait(batch, Some(Duration::ZERO)).unwrap();
        batch.len()
    };
    // Send as fast as the port lets us until the kernel's buffers are full and every
    // op is stuck.
    let deadline = Instant::now() + Duration::from_secs(10);
    while port.stats().pending < 4 {
        assert!(Instant::now() < deadline, "sends never backed up");
        resubmit(&mut port, &mut batch);
    }
    // From then on nothing moves and nothing grows: no completion, no allocation, no
    // more than the pool's four ops pending, no more than their four leases out.
    let before = thread_allocations();
    let mut completed = 0;
    for _ in 0..1000 {
        completed += resubmit(&mut port, &mut batch);
        assert!(port.stats().pending <= 4);
    }
    assert_eq!(thread_allocations() - before, 0, "allocations while backed up");
    assert_eq!(completed, 0, "a send completed although the client reads nothing");
    assert_eq!(held(&port), 4);
    assert!(port.take_op().is_err(), "pool exhaustion is the bound");
    drop(client);
    port.close(socket).unwrap();
    port.wait(&mut batch, Some(Duration::ZERO)).unwrap();
    for op in ops {
        port.give_op(op).unwrap();
    }
    assert_eq!(held(&port), 0);
}

#[test]
fn cancel_and_close_with_ops_in_flight_return_every_lease() {
    let (mut port, _l, socket, _client) = connected_pair(8);
    let base = held(&port);
    let r1 = port.take_op().unwrap();
    let lease = port.lease().unwrap();
    port.op_mut(r1).unwrap().set_buffer(lease, 0..100).unwrap();
    port.recv(socket, r1).unwrap();
    let r2 = port.take_op().unwrap();
    let lease = port.lease().unwrap();
    port.op_mut(r2).unwrap().set_buffer(lease, 0..100).unwrap();
    port.recv(socket, r2).unwrap(); // queued behind r1
    assert_eq!(port.stats().pending, 2);
    assert!(matches!(port.give_op(r1), Err(SubmitError::Busy)));

    port.cancel(r2).unwrap();
    assert!(matches!(port.cancel(r2), Err(SubmitError::NotPending)));
    let c = wait_for(&mut port, |c| matches!(c, Completion::Op { op, .. } if *op == r2));
    assert_eq!(result_of(c), Err(OpError::Cancelled));

    assert_eq!(port.close(socket).unwrap(), 1);
    let c = wait_for(&mut port, |c| matches!(c, Completion::Op { op, .. } if *op == r1));
    assert_eq!(result_of(c), Err(OpError::Cancelled));
    assert_eq!(held(&port), base, "a cancelled op kept its lease");
    assert!(matches!(port.recv(socket, r1), Err(SubmitError::StaleSocket | SubmitError::NoBuffer)));
    assert!(matches!(port.close(socket), Err(SubmitError::StaleSocket)));
    port.give_op(r1).unwrap();
    port.give_op(r2).unwrap();
    assert_eq!(port.stats().pending, 0);
}

#[test]
fn a_deadline_fires_while_the_op_is_pending() {
    let (mut port, _l, socket, _client) = connected_pair(8);
    let op = port.take_op().unwrap();
    port.set_deadline(op, Some(Instant::now() + Duration::from_millis(30))).unwrap();
    port.recv_pooled(socket, op).unwrap();
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Recv));
    assert_eq!(result_of(c), Err(OpError::TimedOut));
    assert_eq!(port.stats().timed_out, 1);
    assert_eq!(port.stats().pending, 0);
    // The op is idle and reusable; without a deadline it waits for data.
    port.set_deadline(op, None).unwrap();
    port.recv_pooled(socket, op).unwrap();
    assert!(matches!(port.give_op(op), Err(SubmitError::Busy)));
}

#[test]
fn a_post_from_another_thread_wakes_a_blocked_wait() {
    let (mut port, _l, _socket, _client) = connected_pair(8);
    let handle = port.handle();
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50)); // let the port block first
        handle.post(1, 2).unwrap();
    });
    let mut batch = Vec::with_capacity(4);
    // No timeout: only the post can end this wait.
    port.wait(&mut batch, None).unwrap();
    assert_eq!(batch, [Completion::Posted { key: 1, data: 2 }]);
    poster.join().unwrap();
    let handle = port.handle();
    drop(port);
    assert!(handle.post(3, 4).is_err(), "posting to a dropped port is an error");
}

#[test]
fn stale_ids_and_misuse_are_errors() {
    let (mut port, listener, socket, _client) = connected_pair(8);
    let op = port.take_op().unwrap();
    assert!(matches!(port.recv(socket, op), Err(SubmitError::NoBuffer)));
    assert!(matches!(port.send(socket, op), Err(SubmitError::NoBuffer)));
    assert!(matches!(port.accept(socket, op), Err(SubmitError::WrongSocket)));
    assert!(matches!(port.recv_pooled(listener, op), Err(SubmitError::WrongSocket)));
    port.give_op(op).unwrap();
    assert!(matches!(port.recv_pooled(socket, op), Err(SubmitError::StaleOp)));
    let forged = berth_reactor::SocketId::from_u64(socket.to_u64() + (1 << 32));
    let op = port.take_op().unwrap();
    assert!(matches!(port.recv_pooled(forged, op), Err(SubmitError::StaleSocket)));
}

#[test]
fn connect_completes_and_refused_connect_fails() {
    let (mut port, listener, _s, _c) = connected_pair(8);
    let addr = port.local_addr(listener).unwrap();
    let accept = port.take_op().unwrap();
    port.accept(listener, accept).unwrap();
    let op = port.take_op().unwrap();
    let out = port.connect(addr, op).unwrap();
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Connect));
    assert_eq!(c, Completion::Op { op, kind: OpKind::Connect, socket: out, result: Ok(0) });

    // A port nobody listens on: bind one, learn it, close it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let op2 = port.take_op().unwrap();
    port.connect(dead, op2).unwrap();
    let c = wait_for(&mut port, |c| matches!(c, Completion::Op { op, .. } if *op == op2));
    assert_eq!(result_of(c), Err(OpError::ConnectionRefused));
}

#[test]
fn send_file_sends_the_range() {
    let (mut port, _l, socket, mut client) = connected_pair(8);
    let path = std::env::temp_dir().join(format!("berth-reactor-sendfile-{}", std::process::id()));
    let data: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let send = berth_sendfile::FileSend::checked(file, 1000, 400_000).unwrap();
    let op = port.take_op().unwrap();
    port.send_file(socket, op, send).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; 400_000];
        client.read_exact(&mut got).unwrap();
        got
    });
    let c = wait_for(&mut port, |c| is_op(c, OpKind::SendFile));
    assert_eq!(result_of(c), Ok(400_000));
    let got = reader.join().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(got == data[1000..401_000], "file bytes differ");
}

#[test]
fn no_wakeup_is_lost_after_a_short_read() {
    let (mut port, _l, socket, mut client) = connected_pair(8);
    let op = port.take_op().unwrap();
    client.write_all(b"first").unwrap();
    port.recv_pooled(socket, op).unwrap();
    assert_eq!(result_of(wait_for(&mut port, |c| is_op(c, OpKind::Recv))), Ok(5)); // short: drained
    // Data arrives while no receive is pending and the port is not waiting.
    client.write_all(b"second").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // The next receive skips the syscall (the socket looked drained) but the edge
    // that "second" raised is still waiting in epoll.
    port.recv_pooled(socket, op).unwrap();
    assert_eq!(result_of(wait_for(&mut port, |c| is_op(c, OpKind::Recv))), Ok(6));
    assert_eq!(port.op(op).unwrap().transferred_bytes(), b"second");
}

#[test]
fn a_refused_submit_leaves_the_op_untouched() {
    let (mut port, listener, socket, _client) = connected_pair(8);
    let op = port.take_op().unwrap();
    let lease = port.lease().unwrap();
    port.op_mut(op).unwrap().set_buffer(lease, 0..10).unwrap();
    // A pooled receive on a listener is refused: the op keeps its buffer.
    assert!(matches!(port.recv_pooled(listener, op), Err(SubmitError::WrongSocket)));
    assert!(port.op(op).unwrap().buffer().is_some());
    // Accepted: the old buffer goes back to the arena while the receive waits.
    port.recv_pooled(socket, op).unwrap();
    assert!(port.op(op).unwrap().buffer().is_none());
    assert_eq!(held(&port), 0);
}

/// Data and the peer's FIN arrive in one epoll edge: the short read that takes the data
/// must not make the port wait for another edge, for none will come. The next
/// receive completes with `Ok(0)` (the seed's "BytesTransferred == 0: close").
#[test]
fn data_and_fin_in_one_edge_both_complete() {
    let (mut port, _l, socket, mut client) = connected_pair(8);
    let recv = port.take_op().unwrap();
    port.recv_pooled(socket, recv).unwrap();
    let mut batch = Vec::with_capacity(8);
    port.wait(&mut batch, Some(Duration::from_millis(20))).unwrap();
    assert!(batch.is_empty(), "nothing sent yet: {batch:?}");
    client.write_all(b"abc").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // Both are queued on the socket before the port looks: one edge for the two.
    std::thread::sleep(Duration::from_millis(50));
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Recv));
    assert_eq!(result_of(c), Ok(3));
    port.recv_pooled(socket, recv).unwrap();
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Recv));
    assert_eq!(result_of(c), Ok(0), "the FIN was lost");
    port.close(socket).unwrap();
    port.give_op(recv).unwrap();
    assert_eq!(held(&port), 0);
}

/// A flood of connections over the limit is refused a turn at a time: the port goes on
/// serving an existing connection in between, and every refused one is still closed.
///
/// Proven by mutation: `Core::admit` forgetting a stream it refuses for the limit
/// (`mem::forget`, never closed) fails the last loop (the read times out).
#[test]
fn a_refused_flood_takes_turns_with_other_sockets() {
    const FLOOD: usize = 300;
    let limit = berth_ops::ConnectionLimit::new(1);
    let mut port =
        berth_reactor::CompletionPort::builder().ops(8).max_sockets(16).connection_limit(limit).build(|_| ()).unwrap();
    let listener = port.listen("127.0.0.1:0".parse().unwrap(), berth_reactor::ListenOptions::default()).unwrap();
    let addr = port.local_addr(listener).unwrap();
    let accept = port.take_op().unwrap();
    port.accept(listener, accept).unwrap();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    let Completion::Op { socket, .. } = wait_for(&mut port, |c| is_op(c, OpKind::Accept)) else { unreachable!() };
    // The accept op is pending again; the limit is spent by the first connection.
    port.accept(listener, accept).unwrap();
    let flood: Vec<_> = (0..FLOOD).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    // One look refuses one turn's worth, not the whole backlog.
    let mut batch = Vec::with_capacity(8);
    port.wait(&mut batch, Some(Duration::ZERO)).unwrap();
    let first_turn = port.stats().refused;
    assert!(first_turn > 0 && first_turn < FLOOD as u64, "refused {first_turn} in one turn");
    client.write_all(b"ping").unwrap();
    let recv = port.take_op().unwrap();
    port.recv_pooled(socket, recv).unwrap();
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Recv));
    assert_eq!(result_of(c), Ok(4));
    let deadline = Instant::now() + Duration::from_secs(10);
    while port.stats().refused < FLOOD as u64 && Instant::now() < deadline {
        port.wait(&mut batch, Some(Duration::from_millis(10))).unwrap();
        assert!(batch.is_empty(), "nothing but refusals expected: {batch:?}");
    }
    assert_eq!(port.stats().refused, FLOOD as u64);
    // Closed means an end of stream or a reset; a read that times out (the socket
    // is still open, unanswered) is the failure this loop exists to catch.
    for (i, mut s) in flood.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match s.read(&mut [0u8; 1]) {
            Ok(0) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {}
            other => panic!("refused connection {i} was not closed: {other:?}"),
        }
    }
}

/// A submitted op belongs to the port until it completes: no taking its buffer away
/// mid-receive.
#[test]
fn a_submitted_op_cannot_be_changed() {
    let (mut port, _l, socket, mut client) = connected_pair(8);
    let recv = port.take_op().unwrap();
    let lease = port.lease().unwrap();
    port.op_mut(recv).unwrap().set_buffer(lease, 0..512).unwrap();
    port.recv(socket, recv).unwrap();
    assert!(matches!(port.op_mut(recv), Err(SubmitError::Busy)));
    assert!(port.op(recv).unwrap().buffer().is_some(), "still readable");
    client.write_all(b"hello").unwrap();
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Recv));
    assert_eq!(result_of(c), Ok(5));
    let args = port.op_mut(recv).expect("idle again once completed");
    assert_eq!(&args.take_buffer().unwrap().filled()[..5], b"hello");
    port.give_op(recv).unwrap();
}

/// Dropping a port with receives in flight (on io_uring: held by the kernel, with
/// more queued behind them) returns every segment to the arena; none is leaked as
/// still in the kernel's hands.
#[test]
fn dropping_a_port_with_ops_in_flight_returns_every_lease() {
    let (mut port, _l, socket, _client) = connected_pair(8);
    let buffers = port.buffers().clone();
    for _ in 0..3 {
        let op = port.take_op().unwrap();
        let lease = port.lease().unwrap();
        port.op_mut(op).unwrap().set_buffer(lease, 0..100).unwrap();
        port.recv(socket, op).unwrap();
    }
    let send = port.take_op().unwrap();
    let lease = port.lease().unwrap();
    port.op_mut(send).unwrap().set_buffer(lease, 0..1).unwrap();
    port.send(socket, send).unwrap();
    let mut batch = Vec::new();
    port.wait(&mut batch, Some(Duration::from_millis(20))).unwrap();
    assert_eq!(port.stats().pending, 3, "three receives pending");
    assert!(buffers.stats().in_use > 0);
    drop(port);
    assert_eq!(buffers.stats().in_use, 0, "a segment was kept (or leaked) at drop");
}

/// Connections that arrive while no accept is pending — after one completed and
/// before the next is submitted, or after the pending one was cancelled — are all
/// accepted later, each a working connection (on io_uring a multishot accept takes
/// them from the backlog early and keeps them for the next accept op).
#[test]
fn connections_between_accepts_are_kept_for_the_next_accept() {
    let mut port = CompletionPort::builder().ops(64).max_sockets(64).build(|_| ()).unwrap();
    let listener = port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
    let addr = port.local_addr(listener).unwrap();
    let accept = port.take_op().unwrap();
    // An accept cancelled while it waits (on io_uring its multishot stays armed).
    port.accept(listener, accept).unwrap();
    port.cancel(accept).unwrap();
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Accept));
    assert_eq!(result_of(c), Err(OpError::Cancelled));
    let mut clients: Vec<_> = (0..20).map(|_| common::client(addr)).collect();
    port.accept(listener, accept).unwrap();
    let first = wait_for(&mut port, |c| is_op(c, OpKind::Accept));
    assert!(result_of(first).is_ok());
    // No accept pending for a while: the rest arrive meanwhile.
    let mut batch = Vec::new();
    port.wait(&mut batch, Some(Duration::from_millis(50))).unwrap();
    assert!(batch.is_empty(), "nothing completes without an accept op: {batch:?}");
    let Completion::Op { socket, .. } = first else { unreachable!() };
    let mut sockets = vec![socket];
    while sockets.len() < clients.len() {
        port.accept(listener, accept).unwrap();
        let c = wait_for(&mut port, |c| is_op(c, OpKind::Accept));
        let Completion::Op { socket, result, .. } = c else { unreachable!() };
        assert!(result.is_ok(), "{result:?}");
        sockets.push(socket);
    }
    // Every accepted socket is a live connection to one of the clients.
    let recv = port.take_op().unwrap();
    let mut seen = std::collections::HashSet::new();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&[i as u8]).unwrap();
    }
    for &socket in &sockets {
        port.recv_pooled(socket, recv).unwrap();
        let c = wait_for(&mut port, |c| is_op(c, OpKind::Recv));
        assert_eq!(result_of(c), Ok(1));
        assert!(seen.insert(port.op(recv).unwrap().transferred_bytes()[0]), "two sockets, one client");
    }
    assert_eq!(seen.len(), 20);
    assert_eq!(port.stats().accepted, 20);
}

/// Bytes that arrive while no receive is pending, mixed pooled receives and
/// receives into a small range of the op's own segment: every byte comes out once,
/// in order, and a pooled receive's bytes always start at offset 0 (on io_uring the
/// socket's multishot receive keeps such arrivals for the next receive, and a
/// receive into its own range copies from them).
#[test]
fn arrivals_between_receives_come_out_in_order() {
    let (mut port, _l, socket, mut client) = connected_pair(8);
    let op = port.take_op().unwrap();
    let mut sent = Vec::new();
    let mut got = Vec::new();
    let mut next = 0u8;
    let mut send = |client: &mut std::net::TcpStream, sent: &mut Vec<u8>, n: usize| {
        let bytes: Vec<u8> = (0..n)
            .map(|_| {
                next = next.wrapping_add(1);
                next
            })
            .collect();
        client.write_all(&bytes).unwrap();
        sent.extend_from_slice(&bytes);
    };
    for round in 0..20 {
        // Arrivals while nothing is pending.
        send(&mut client, &mut sent, 10 + round);
        std::thread::sleep(Duration::from_millis(2));
        send(&mut client, &mut sent, 5);
        if round % 2 == 0 {
            // A receive into 3 bytes of its own segment.
            if port.op(op).unwrap().buffer().is_none() {
                let lease = port.lease().unwrap();
                port.op_mut(op).unwrap().set_buffer(lease, 0..3).unwrap();
            } else {
                port.op_mut(op).unwrap().set_range(0..3).unwrap();
            }
            port.recv(socket, op).unwrap();
        } else {
            port.recv_pooled(socket, op).unwrap();
        }
        let c = wait_for(&mut port, |c| is_op(c, OpKind::Recv));
        let n = result_of(c).unwrap();
        assert!(n > 0);
        let args = port.op(op).unwrap();
        if round % 2 == 1 {
            assert_eq!(args.range().start, 0, "a pooled receive's bytes start at 0");
        }
        got.extend_from_slice(args.transferred_bytes());
    }
    // Drain the rest with pooled receives.
    while got.len() < sent.len() {
        port.recv_pooled(socket, op).unwrap();
        let c = wait_for(&mut port, |c| is_op(c, OpKind::Recv));
        let n = result_of(c).unwrap();
        assert!(n > 0);
        got.extend_from_slice(port.op(op).unwrap().transferred_bytes());
    }
    assert_eq!(got, sent, "bytes lost, repeated or reordered");
}
