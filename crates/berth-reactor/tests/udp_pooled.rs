//! Pooled datagram receives (`recv_from_pooled`): a segment only when a datagram
//! arrives (a multishot `RECVMSG` on io_uring, `recvmmsg` into fresh segments on
//! epoll), the datagram as the op's range, sender and packet info, truncation,
//! datagrams kept in order when no receive waits, own-buffer receives mixed in, and
//! ICMP errors — on whichever driver `BERTH_DRIVER` picks.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::{OpError, OpId, OpKind};
use berth_reactor::{Completion, CompletionPort, POOLED_DATAGRAM_HEADROOM, SocketId, UdpOptions};
use common::{IO_TIMEOUT, held, wait_for};

fn port(segment: usize) -> CompletionPort<()> {
    let buffers = BufferManager::new(BufferConfig::new().segment_size(segment).segment_count(256)).unwrap();
    // The audit: every test here also checks no receive was left stranded.
    CompletionPort::builder().ops(96).max_sockets(16).buffers(buffers).audit(true).build(|_| ()).unwrap()
}

fn client(bind: &str) -> UdpSocket {
    let c = UdpSocket::bind(bind).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c
}

/// The next op completion, with its op, kind and result.
fn next_op(port: &mut CompletionPort<()>) -> (OpId, OpKind, Result<usize, OpError>) {
    let done = match wait_for(port, |c| matches!(c, Completion::Op { .. })) {
        Completion::Op { op, kind, result, .. } => (op, kind, result),
        other => unreachable!("{other:?}"),
    };
    assert_eq!(port.stats().stranded_ops, 0, "the port slept while it could have gone on: {:?}", port.stats());
    done
}

/// The datagram a completed receive holds: its buffer over its range.
fn datagram(port: &CompletionPort<()>, op: OpId) -> Vec<u8> {
    let args = port.op(op).unwrap();
    args.buffer().unwrap()[args.range()].to_vec()
}

/// Echoes `count` datagrams with pooled receives: each completed receive is sent
/// back as it is (its range is the datagram), then receives again.
fn pooled_echo(port: &mut CompletionPort<()>, socket: SocketId, ops: &[OpId], count: usize) {
    for &op in ops {
        port.recv_from_pooled(socket, op).unwrap();
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
                    assert_eq!(port.op(op).unwrap().range().len(), n, "the range is the datagram");
                    assert!(port.op(op).unwrap().remote_endpoint().is_some());
                    port.send_to(socket, op).unwrap();
                }
                (OpKind::SendTo, Ok(_)) => {
                    echoed += 1;
                    port.recv_from_pooled(socket, op).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn echo_many(server: &str, client_bind: &str) {
    let mut port = port(2048);
    let socket = port.bind_udp(server.parse().unwrap(), UdpOptions::default()).unwrap();
    let addr = port.local_addr(socket).unwrap();
    let ops: Vec<_> = (0..32).map(|_| port.take_op().unwrap()).collect();
    let per_client = 200;
    let threads = common::udp_echo_clients(addr, client_bind, 4, per_client);
    pooled_echo(&mut port, socket, &ops, 4 * per_client);
    for t in threads {
        t.join().unwrap();
    }
    // The receives wait again, and idle receives hold no segment.
    let _ = port.wait(&mut Vec::with_capacity(8), Some(Duration::from_millis(20)));
    assert_eq!(held(&port), 0, "{:?}", port.stats());
}

#[test]
fn pooled_echo_over_ipv4() {
    echo_many("127.0.0.1:0", "127.0.0.1:0");
}

#[test]
fn pooled_echo_over_ipv6() {
    echo_many("[::1]:0", "[::1]:0");
}

#[test]
fn idle_pooled_receives_hold_no_segment_until_a_datagram_comes() {
    let mut port = port(2048);
    let socket = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let addr = port.local_addr(socket).unwrap();
    let ops: Vec<_> = (0..64).map(|_| port.take_op().unwrap()).collect();
    for &op in &ops {
        port.recv_from_pooled(socket, op).unwrap();
    }
    // And a socket with a single receive (the epoll driver's one-op path).
    let lone = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let lone_op = port.take_op().unwrap();
    port.recv_from_pooled(lone, lone_op).unwrap();
    for _ in 0..3 {
        let _ = port.wait(&mut Vec::with_capacity(8), Some(Duration::from_millis(10)));
    }
    assert_eq!(held(&port), 0, "idle receives hold segments: {:?}", port.stats());
    let c = client("127.0.0.1:0");
    c.send_to(b"one", addr).unwrap();
    let (op, kind, result) = next_op(&mut port);
    assert_eq!((kind, result), (OpKind::RecvFrom, Ok(3)));
    assert_eq!(datagram(&port, op), b"one");
    assert_eq!(port.op(op).unwrap().remote_endpoint(), Some(c.local_addr().unwrap()));
    assert_eq!(port.op(op).unwrap().message_len(), 3);
    assert_eq!(held(&port), 1, "only the completed receive holds a segment");
}

#[test]
fn a_datagram_longer_than_the_segment_is_truncated_with_its_real_length() {
    let segment = 256;
    let room = segment - POOLED_DATAGRAM_HEADROOM;
    let mut port = port(segment);
    let socket = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let addr = port.local_addr(socket).unwrap();
    let op = port.take_op().unwrap();
    port.recv_from_pooled(socket, op).unwrap();
    let c = client("127.0.0.1:0");
    let big: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    c.send_to(&big, addr).unwrap();
    let (_, _, result) = next_op(&mut port);
    assert_eq!(result, Err(OpError::MessageTruncated));
    assert_eq!(port.op(op).unwrap().message_len(), 300);
    assert_eq!(datagram(&port, op), &big[..room], "the range holds the first bytes, all that fit");
    // One that fits exactly arrives whole.
    port.recv_from_pooled(socket, op).unwrap();
    c.send_to(&big[..room], addr).unwrap();
    let (_, _, result) = next_op(&mut port);
    assert_eq!(result, Ok(room));
    assert_eq!(datagram(&port, op), &big[..room]);
}

#[test]
fn datagrams_that_arrive_while_no_receive_waits_come_in_order() {
    let mut port = port(2048);
    let socket = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let addr = port.local_addr(socket).unwrap();
    let c = client("127.0.0.1:0");
    let op = port.take_op().unwrap();
    let own = port.take_op().unwrap();
    let lease = port.lease().unwrap();
    port.op_mut(own).unwrap().set_buffer(lease, 0..64).unwrap();
    port.recv_from_pooled(socket, op).unwrap();
    for k in 0..12u8 {
        c.send_to(&[k; 5], addr).unwrap();
    }
    // Pooled and own-buffer receives, interleaved: every datagram once, in order.
    for k in 0..12u8 {
        let (done, _, result) = next_op(&mut port);
        assert_eq!(result, Ok(5), "datagram {k}");
        if k % 3 == 2 {
            assert_eq!(done, own);
            assert_eq!(&port.op(own).unwrap().buffer().unwrap().filled()[..5], &[k; 5]);
        } else {
            assert_eq!(done, op);
            assert_eq!(datagram(&port, op), [k; 5]);
        }
        assert_eq!(port.op(done).unwrap().remote_endpoint(), Some(c.local_addr().unwrap()));
        if k % 3 == 1 {
            port.recv_from(socket, own).unwrap();
        } else {
            port.recv_from_pooled(socket, op).unwrap();
        }
    }
}

#[test]
fn pooled_receives_report_where_each_datagram_was_sent() {
    for (bind, to) in [("0.0.0.0:0", "127.0.0.1"), ("[::]:0", "::1")] {
        let mut port = port(2048);
        let options = UdpOptions::default().packet_info(true).only_v6(true);
        let socket = port.bind_udp(bind.parse().unwrap(), options).unwrap();
        let to: IpAddr = to.parse().unwrap();
        let addr = SocketAddr::new(to, port.local_addr(socket).unwrap().port());
        let op = port.take_op().unwrap();
        port.recv_from_pooled(socket, op).unwrap();
        let c = client(&SocketAddr::new(to, 0).to_string());
        c.send_to(b"where", addr).unwrap();
        let (_, _, result) = next_op(&mut port);
        assert_eq!(result, Ok(5));
        assert_eq!(datagram(&port, op), b"where");
        assert_eq!(port.op(op).unwrap().remote_endpoint(), Some(c.local_addr().unwrap()));
        let info = port.op(op).unwrap().packet_info().expect("packet info asked for");
        assert_eq!(info.addr, to);
        assert!(info.interface > 0, "{info:?}");
    }
}

#[test]
fn an_icmp_error_reaches_a_pooled_receive_and_the_socket_goes_on() {
    let mut port = port(2048);
    let options = UdpOptions::default().icmp_errors(true);
    let socket = port.bind_udp("127.0.0.1:0".parse().unwrap(), options).unwrap();
    let addr = port.local_addr(socket).unwrap();
    // A port nobody listens on: bind one and drop it.
    let gone = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let op = port.take_op().unwrap();
    port.recv_from_pooled(socket, op).unwrap();
    let send = port.take_op().unwrap();
    let lease = port.lease().unwrap();
    port.op_mut(send).unwrap().set_buffer(lease, 0..4).unwrap();
    port.op_mut(send).unwrap().set_remote_endpoint(Some(gone));
    port.send_to(socket, send).unwrap();
    // Both complete, often in one wait.
    let mut results = std::collections::HashMap::new();
    let mut batch = Vec::with_capacity(8);
    let until = Instant::now() + IO_TIMEOUT;
    while results.len() < 2 && Instant::now() < until {
        port.wait(&mut batch, Some(Duration::from_millis(50))).unwrap();
        for c in batch.drain(..) {
            if let Completion::Op { op, result, .. } = c {
                results.insert(op, result);
            }
        }
    }
    assert_eq!(results.get(&send), Some(&Ok(4)), "{results:?}");
    assert_eq!(results.get(&op), Some(&Err(OpError::ConnectionRefused)), "{results:?}");
    assert_eq!(port.op(op).unwrap().remote_endpoint(), Some(gone));
    // The socket goes on.
    port.recv_from_pooled(socket, op).unwrap();
    client("127.0.0.1:0").send_to(b"after", addr).unwrap();
    let (_, _, result) = next_op(&mut port);
    assert_eq!(result, Ok(5));
    assert_eq!(datagram(&port, op), b"after");
}

/// The next `n` op completions, in the order the port delivered them.
fn ops_in_order(port: &mut CompletionPort<()>, n: usize) -> Vec<(OpId, Result<usize, OpError>)> {
    let mut done = Vec::new();
    let mut batch = Vec::with_capacity(16);
    let until = Instant::now() + IO_TIMEOUT;
    while done.len() < n {
        assert!(Instant::now() < until, "only {done:?} within the limit");
        port.wait(&mut batch, Some(Duration::from_millis(50))).unwrap();
        for c in batch.drain(..) {
            if let Completion::Op { op, result, .. } = c {
                done.push((op, result));
            }
        }
    }
    assert_eq!(port.stats().stranded_ops, 0, "{:?}", port.stats());
    done
}

#[test]
fn a_pooled_receive_queued_behind_an_own_buffer_one_keeps_the_order() {
    let mut port = port(2048);
    let socket = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let addr = port.local_addr(socket).unwrap();
    let own = port.take_op().unwrap();
    let lease = port.lease().unwrap();
    port.op_mut(own).unwrap().set_buffer(lease, 0..64).unwrap();
    port.recv_from(socket, own).unwrap();
    // The own-buffer receive goes to the kernel first.
    let _ = port.wait(&mut Vec::with_capacity(8), Some(Duration::from_millis(10)));
    let pooled = port.take_op().unwrap();
    port.recv_from_pooled(socket, pooled).unwrap();
    let _ = port.wait(&mut Vec::with_capacity(8), Some(Duration::from_millis(10)));
    let c = client("127.0.0.1:0");
    c.send_to(b"d0", addr).unwrap();
    c.send_to(b"d1", addr).unwrap();
    let done = ops_in_order(&mut port, 2);
    assert_eq!(done, vec![(own, Ok(2)), (pooled, Ok(2))], "receives completed out of order");
    assert_eq!(&port.op(own).unwrap().buffer().unwrap().filled()[..2], b"d0");
    assert_eq!(datagram(&port, pooled), b"d1");
}
