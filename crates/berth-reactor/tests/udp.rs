//! UDP on the port: echo over IPv4 and IPv6 with many datagrams in flight, the
//! sender and destination of each datagram, truncation reported with the real
//! length, ICMP errors reaching the next receive, and the ops' refusals — on
//! whichever driver `BERTH_DRIVER` picks.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::{OpError, OpId, OpKind};
use berth_reactor::{Completion, CompletionPort, ListenOptions, SocketId, SubmitError, UdpOptions};
use common::{IO_TIMEOUT, wait_for};

fn port() -> CompletionPort<()> {
    let buffers = BufferManager::new(BufferConfig::new().segment_size(2048).segment_count(128)).unwrap();
    CompletionPort::builder().ops(96).max_sockets(16).buffers(buffers).build(|_| ()).unwrap()
}

/// An op with a fresh segment, range `0..len`.
fn op_with_buffer(port: &mut CompletionPort<()>, len: usize) -> OpId {
    let op = port.take_op().unwrap();
    let lease = port.lease().unwrap();
    port.op_mut(op).unwrap().set_buffer(lease, 0..len).unwrap();
    op
}

fn client(bind: &str) -> UdpSocket {
    let c = UdpSocket::bind(bind).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c
}

/// Echoes every datagram back to its sender from `ops` receives in flight, until
/// `count` datagrams went back.
fn echo(port: &mut CompletionPort<()>, socket: SocketId, ops: &[OpId], count: usize) {
    for &op in ops {
        port.recv_from(socket, op).unwrap();
    }
    let mut echoed = 0;
    let mut batch = Vec::with_capacity(128);
    let until = Instant::now() + IO_TIMEOUT;
    while echoed < count {
        assert!(Instant::now() < until, "echoed {echoed} of {count}");
        port.wait(&mut batch, Some(Duration::from_millis(50))).unwrap();
        for c in batch.drain(..) {
            let Completion::Op { op, kind, result, .. } = c else { panic!("{c:?}") };
            match (kind, result) {
                (OpKind::RecvFrom, Ok(n)) => {
                    assert!(port.op(op).unwrap().remote_endpoint().is_some());
                    port.op_mut(op).unwrap().set_range(0..n).unwrap();
                    port.send_to(socket, op).unwrap();
                }
                (OpKind::SendTo, Ok(_)) => {
                    echoed += 1;
                    port.op_mut(op).unwrap().set_range(0..1500).unwrap();
                    port.recv_from(socket, op).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn echo_many(server: &str, client_bind: &str) {
    let mut port = port();
    let socket = port.bind_udp(server.parse().unwrap(), UdpOptions::default()).unwrap();
    let addr = port.local_addr(socket).unwrap();
    let ops: Vec<_> = (0..32).map(|_| op_with_buffer(&mut port, 1500)).collect();
    let per_client = 200;
    let threads = common::udp_echo_clients(addr, client_bind, 4, per_client);
    echo(&mut port, socket, &ops, 4 * per_client);
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn echo_over_ipv4_with_many_datagrams_in_flight() {
    echo_many("127.0.0.1:0", "127.0.0.1:0");
}

#[test]
fn echo_over_ipv6() {
    echo_many("[::1]:0", "[::1]:0");
}

#[test]
fn a_datagram_longer_than_the_buffer_is_reported_truncated_with_its_length() {
    let mut port = port();
    let socket = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let addr = port.local_addr(socket).unwrap();
    let op = op_with_buffer(&mut port, 16);
    port.recv_from(socket, op).unwrap();
    let c = client("127.0.0.1:0");
    let big: Vec<u8> = (0..100u8).collect();
    c.send_to(&big, addr).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(matches!(done, Completion::Op { result: Err(OpError::MessageTruncated), .. }), "{done:?}");
    let args = port.op(op).unwrap();
    assert_eq!(args.message_len(), 100);
    assert_eq!(&args.buffer().unwrap().filled()[..16], &big[..16]);
    assert_eq!(args.remote_endpoint(), Some(c.local_addr().unwrap()));
    // The socket goes on: the next datagram arrives whole.
    port.recv_from(socket, op).unwrap();
    c.send_to(b"small", addr).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(matches!(done, Completion::Op { result: Ok(5), .. }), "{done:?}");
    assert_eq!(port.op(op).unwrap().message_len(), 5);
}

#[test]
fn packet_info_reports_where_each_datagram_was_sent() {
    for (bind, to) in [("0.0.0.0:0", "127.0.0.1"), ("[::]:0", "::1")] {
        let mut port = port();
        let options = UdpOptions::default().packet_info(true).only_v6(true);
        let socket = port.bind_udp(bind.parse().unwrap(), options).unwrap();
        let to: IpAddr = to.parse().unwrap();
        let addr = SocketAddr::new(to, port.local_addr(socket).unwrap().port());
        let op = op_with_buffer(&mut port, 64);
        port.recv_from(socket, op).unwrap();
        let c = client(&SocketAddr::new(to, 0).to_string());
        c.send_to(b"where", addr).unwrap();
        let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
        assert!(matches!(done, Completion::Op { result: Ok(5), .. }), "{done:?}");
        let info = port.op(op).unwrap().packet_info().expect("packet info asked for");
        assert_eq!(info.addr, to);
        assert!(info.interface > 0, "{info:?}");
    }
    // Not asked for: none.
    let mut port = port();
    let socket = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let addr = port.local_addr(socket).unwrap();
    let op = op_with_buffer(&mut port, 64);
    port.recv_from(socket, op).unwrap();
    client("127.0.0.1:0").send_to(b"x", addr).unwrap();
    wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert_eq!(port.op(op).unwrap().packet_info(), None);
}

#[test]
fn a_send_to_a_port_nobody_listens_on_fails_the_next_receive_and_the_socket_goes_on() {
    let mut port = port();
    let socket = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default().icmp_errors(true)).unwrap();
    let addr = port.local_addr(socket).unwrap();
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let send = op_with_buffer(&mut port, 8);
    port.op_mut(send).unwrap().set_remote_endpoint(Some(closed));
    port.send_to(socket, send).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(matches!(done, Completion::Op { kind: OpKind::SendTo, result: Ok(8), .. }), "{done:?}");

    let recv = op_with_buffer(&mut port, 64);
    port.recv_from(socket, recv).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(matches!(done, Completion::Op { result: Err(OpError::ConnectionRefused), .. }), "{done:?}");
    assert_eq!(port.op(recv).unwrap().remote_endpoint(), Some(closed));

    // Usable after: a real datagram arrives, and no stale error comes back.
    port.recv_from(socket, recv).unwrap();
    let c = client("127.0.0.1:0");
    c.send_to(b"after", addr).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(matches!(done, Completion::Op { result: Ok(5), .. }), "{done:?}");
    assert_eq!(port.op(recv).unwrap().remote_endpoint(), Some(c.local_addr().unwrap()));
}

#[test]
fn cancel_close_and_deadline_end_a_pending_receive() {
    let mut port = port();
    let socket = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let op = op_with_buffer(&mut port, 64);
    port.recv_from(socket, op).unwrap();
    // Let it reach the kernel (io_uring) before cancelling.
    let mut batch = Vec::with_capacity(8);
    port.wait(&mut batch, Some(Duration::from_millis(20))).unwrap();
    assert!(batch.is_empty());
    port.cancel(op).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(matches!(done, Completion::Op { result: Err(OpError::Cancelled), .. }), "{done:?}");
    // The buffer went back to the arena with the cancelled op: give it a new one.
    assert!(port.op(op).unwrap().buffer().is_none());
    let lease = port.lease().unwrap();
    port.op_mut(op).unwrap().set_buffer(lease, 0..64).unwrap();

    port.set_deadline(op, Some(Instant::now() + Duration::from_millis(30))).unwrap();
    port.recv_from(socket, op).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(matches!(done, Completion::Op { result: Err(OpError::TimedOut), .. }), "{done:?}");
    port.set_deadline(op, None).unwrap();

    let lease = port.lease().unwrap();
    port.op_mut(op).unwrap().set_buffer(lease, 0..64).unwrap();
    port.recv_from(socket, op).unwrap();
    port.wait(&mut batch, Some(Duration::from_millis(20))).unwrap();
    assert_eq!(port.close(socket).unwrap(), 1);
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(matches!(done, Completion::Op { result: Err(OpError::Cancelled), .. }), "{done:?}");
    assert_eq!(port.stats().pending, 0);
}

#[test]
fn datagram_ops_are_refused_where_they_do_not_apply() {
    let mut port = port();
    let udp = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let listener = port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
    let op = op_with_buffer(&mut port, 64);
    assert!(matches!(port.recv_from(listener, op), Err(SubmitError::WrongSocket)));
    assert!(matches!(port.recv(udp, op), Err(SubmitError::WrongSocket)));
    assert!(matches!(port.accept(udp, op), Err(SubmitError::WrongSocket)));
    let bare = port.take_op().unwrap();
    assert!(matches!(port.recv_from(udp, bare), Err(SubmitError::NoBuffer)));
    assert!(matches!(port.send_to(udp, bare), Err(SubmitError::NoBuffer)));
    assert_eq!(port.stats().pending, 0);

    // No destination on an unconnected socket: the op fails, nothing else does.
    port.send_to(udp, op).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(matches!(done, Completion::Op { result: Err(_), .. }), "{done:?}");
    // A connected socket needs none.
    let peer = client("127.0.0.1:0");
    port.udp_socket(udp).unwrap().connect(peer.local_addr().unwrap()).unwrap();
    port.op_mut(op).unwrap().active_mut().copy_from_slice(&[7; 64]);
    port.send_to(udp, op).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(matches!(done, Completion::Op { result: Ok(64), .. }), "{done:?}");
    let mut got = [0u8; 128];
    assert_eq!(peer.recv(&mut got).unwrap(), 64);
}

/// With ICMP errors on, an error left by a datagram to one peer must not cost the
/// next datagram to another: the send is retried after the error queue is emptied.
/// Without them (the default), the kernel drops such errors for an unconnected
/// socket, and receives go on as if nothing happened.
#[test]
fn an_icmp_error_for_one_peer_never_loses_a_datagram_to_another() {
    for icmp_errors in [true, false] {
        let mut port = port();
        let socket =
            port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default().icmp_errors(icmp_errors)).unwrap();
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let live = client("127.0.0.1:0");
        let op = op_with_buffer(&mut port, 8);
        for round in 0..20 {
            // To the dead peer, then (once its ICMP error has come back) to the live one.
            port.op_mut(op).unwrap().set_remote_endpoint(Some(closed));
            port.send_to(socket, op).unwrap();
            let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
            assert!(matches!(done, Completion::Op { result: Ok(8), .. }), "{done:?}");
            std::thread::sleep(Duration::from_millis(2));
            port.op_mut(op).unwrap().set_remote_endpoint(Some(live.local_addr().unwrap()));
            port.send_to(socket, op).unwrap();
            let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
            assert!(
                matches!(done, Completion::Op { result: Ok(8), .. }),
                "round {round}, icmp {icmp_errors}: {done:?}"
            );
            let mut got = [0u8; 16];
            assert_eq!(live.recv(&mut got).expect("the live peer's datagram"), 8);
        }
        if !icmp_errors {
            let recv = op_with_buffer(&mut port, 64);
            port.recv_from(socket, recv).unwrap();
            live.send_to(b"fine", port.local_addr(socket).unwrap()).unwrap();
            let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
            assert!(matches!(done, Completion::Op { result: Ok(4), .. }), "{done:?}");
        }
    }
}

/// More UDP sockets ready at once than one wait fetches events for (`events(1)`):
/// every receive still completes. (On io_uring a wait that filled its room once
/// left the other sockets' edges in the datagram epoll, which no new poll
/// completion announced.)
#[test]
fn more_ready_sockets_than_events_per_wait_all_complete() {
    let buffers = BufferManager::new(BufferConfig::new().segment_size(2048).segment_count(128)).unwrap();
    let mut port = CompletionPort::builder().ops(32).max_sockets(16).events(1).buffers(buffers).build(|_| ()).unwrap();
    let sockets: Vec<SocketId> =
        (0..6).map(|_| port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap()).collect();
    for &socket in &sockets {
        let op = op_with_buffer(&mut port, 64);
        port.recv_from(socket, op).unwrap();
    }
    let mut batch = Vec::new();
    port.wait(&mut batch, Some(Duration::ZERO)).unwrap();
    assert!(batch.is_empty(), "{batch:?}");
    // Every datagram lands while the port is not looking, so it finds them all
    // ready at once.
    let c = client("127.0.0.1:0");
    for &socket in &sockets {
        c.send_to(b"hello", port.local_addr(socket).unwrap()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    let mut got = Vec::new();
    let until = Instant::now() + IO_TIMEOUT;
    while got.len() < sockets.len() {
        assert!(Instant::now() < until, "{} of {} receives completed", got.len(), sockets.len());
        port.wait(&mut batch, Some(Duration::from_millis(50))).unwrap();
        for c in batch.drain(..) {
            let Completion::Op { socket, result: Ok(5), .. } = c else { panic!("{c:?}") };
            got.push(socket);
        }
    }
    got.sort_by_key(|s| s.index());
    assert_eq!(got, sockets);
}
