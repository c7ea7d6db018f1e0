//! Zero heap allocations per receive and send completion in steady state, proven with
//! a counting global allocator.

use std::io::{Read, Write};
use std::time::Duration;

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::OpKind;
use berth_reactor::{Completion, CompletionPort, Driver, ListenOptions};
use berth_testkit::{CountingAllocator, thread_allocations};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn echo_round_trips_allocate_nothing() {
    let buffers = BufferManager::new(BufferConfig::new().segment_count(64)).unwrap();
    let mut port = CompletionPort::builder().ops(8).max_sockets(8).buffers(buffers).build(|_| ()).unwrap();
    let listener = port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
    let addr = port.local_addr(listener).unwrap();
    let accept = port.take_op().unwrap();
    port.accept(listener, accept).unwrap();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut batch = Vec::with_capacity(64);
    let mut socket = None;
    for _ in 0..200 {
        port.wait(&mut batch, Some(Duration::from_millis(50))).unwrap();
        if let Some(Completion::Op { socket: s, .. }) = batch.first() {
            socket = Some(*s);
            break;
        }
    }
    let socket = socket.expect("accepted");
    let op = port.take_op().unwrap();
    port.recv_pooled(socket, op).unwrap();

    let message = [42u8; 64];
    let mut echo = [0u8; 64];
    let mut round_trip = |port: &mut CompletionPort<()>, batch: &mut Vec<Completion>| {
        client.write_all(&message).unwrap();
        let mut sent = false;
        for _ in 0..1000 {
            port.wait(batch, Some(Duration::from_millis(100))).unwrap();
            for c in batch.iter() {
                match *c {
                    Completion::Op { kind: OpKind::Recv, result: Ok(n), .. } => {
                        assert_eq!(n, 64);
                        port.op_mut(op).unwrap().set_range(0..n).unwrap();
                        port.send(socket, op).unwrap();
                    }
                    Completion::Op { kind: OpKind::Send, result: Ok(64), .. } => {
                        port.recv_pooled(socket, op).unwrap();
                        sent = true;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            if sent {
                break;
            }
        }
        assert!(sent);
        client.read_exact(&mut echo).unwrap();
        assert_eq!(echo, message);
    };

    for _ in 0..100 {
        round_trip(&mut port, &mut batch);
    }
    let before = thread_allocations();
    for _ in 0..2000 {
        round_trip(&mut port, &mut batch);
    }
    let n = thread_allocations() - before;
    assert_eq!(n, 0, "{n} allocations in 2000 echo round trips");
    let stats = port.stats();
    match stats.driver {
        // epoll's fast path: the sends complete at submit.
        Driver::Epoll => assert!(stats.completed_inline >= 2000, "sends should complete at submit: {stats:?}"),
        // io_uring: everything goes through the ring.
        _ => assert!(stats.completed_queued >= 4000 && stats.completed_inline == 0, "{stats:?}"),
    }
}

/// Posting and delivering posts allocates nothing, up to the queue's bound, and a full
/// queue refuses instead of growing.
#[test]
fn posts_allocate_nothing_and_stay_bounded() {
    let mut port = CompletionPort::builder().ops(8).posts(64).build(|_| ()).unwrap();
    let handle = port.handle();
    let mut batch = Vec::with_capacity(128);
    let cycle = |port: &mut CompletionPort<()>, batch: &mut Vec<Completion>| {
        for i in 0..64 {
            handle.post(1, i).unwrap();
        }
        let full = handle.post(1, 64).unwrap_err();
        assert_eq!(full.kind(), std::io::ErrorKind::WouldBlock);
        port.wait(batch, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(batch.len(), 64);
        assert_eq!(batch[63], Completion::Posted { key: 1, data: 63 }, "in order, nothing extra");
    };
    cycle(&mut port, &mut batch);
    let before = thread_allocations();
    for _ in 0..100 {
        cycle(&mut port, &mut batch);
    }
    let n = thread_allocations() - before;
    assert_eq!(n, 0, "{n} allocations in 6400 posts");
}

/// UDP echo in steady state — receive (with the sender and packet info), send back —
/// allocates nothing on either driver, and neither do timers and readiness ops.
#[test]
fn datagram_timer_and_readiness_ops_allocate_nothing() {
    use berth_reactor::{Interest, UdpOptions};
    let buffers = BufferManager::new(BufferConfig::new().segment_size(2048).segment_count(64)).unwrap();
    let mut port = CompletionPort::builder().ops(16).max_sockets(8).buffers(buffers).build(|_| ()).unwrap();
    let udp = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default().packet_info(true)).unwrap();
    let addr = port.local_addr(udp).unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ops: Vec<_> = (0..4)
        .map(|_| {
            let op = port.take_op().unwrap();
            let lease = port.lease().unwrap();
            port.op_mut(op).unwrap().set_buffer(lease, 0..1500).unwrap();
            port.recv_from(udp, op).unwrap();
            op
        })
        .collect();
    let (timer, ready) = (port.take_op().unwrap(), port.take_op().unwrap());
    let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap();
    let efd_socket = port.register_fd(&efd).unwrap();
    let mut batch = Vec::with_capacity(64);
    let round = |port: &mut CompletionPort<()>, batch: &mut Vec<Completion>| {
        for i in 0..4u8 {
            client.send_to(&[i; 100], addr).unwrap();
        }
        port.timer(timer, std::time::Instant::now()).unwrap();
        port.wait_ready(efd_socket, ready, Interest::Writable).unwrap();
        let (mut echoed, mut timers, mut readies) = (0, 0, 0);
        for _ in 0..1000 {
            port.wait(batch, Some(Duration::from_millis(100))).unwrap();
            for c in batch.iter() {
                match *c {
                    Completion::Op { op, kind: OpKind::RecvFrom, result: Ok(n), .. } => {
                        port.op_mut(op).unwrap().set_range(0..n).unwrap();
                        port.send_to(udp, op).unwrap();
                    }
                    Completion::Op { op, kind: OpKind::SendTo, result: Ok(100), .. } => {
                        port.op_mut(op).unwrap().set_range(0..1500).unwrap();
                        port.recv_from(udp, op).unwrap();
                        echoed += 1;
                    }
                    Completion::Op { kind: OpKind::Timer, result: Ok(0), .. } => timers += 1,
                    Completion::Op { kind: OpKind::Ready, result: Ok(_), .. } => readies += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            if (echoed, timers, readies) == (4, 1, 1) {
                break;
            }
        }
        assert_eq!((echoed, timers, readies), (4, 1, 1));
        let mut got = [0u8; 128];
        for _ in 0..4 {
            assert_eq!(client.recv(&mut got).unwrap(), 100);
        }
    };
    for _ in 0..50 {
        round(&mut port, &mut batch);
    }
    let before = thread_allocations();
    for _ in 0..500 {
        round(&mut port, &mut batch);
    }
    let n = thread_allocations() - before;
    assert_eq!(n, 0, "{n} allocations in 500 rounds of 4 datagram echoes, a timer and a readiness op");
    assert!(ops.iter().all(|&op| port.op(op).unwrap().packet_info().is_some()));
}

/// A UDP echo on pooled receives (a segment per datagram from the arena; a multishot
/// `RECVMSG` on io_uring, with datagrams kept while no receive waits) allocates
/// nothing in steady state.
#[test]
fn pooled_datagram_echo_allocates_nothing() {
    use berth_reactor::UdpOptions;
    let buffers = BufferManager::new(BufferConfig::new().segment_size(2048).segment_count(64)).unwrap();
    let mut port = CompletionPort::builder().ops(16).max_sockets(8).buffers(buffers).build(|_| ()).unwrap();
    let udp = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default().packet_info(true)).unwrap();
    let addr = port.local_addr(udp).unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Fewer receives than datagrams per round: some arrive while none waits.
    for _ in 0..3 {
        let op = port.take_op().unwrap();
        port.recv_from_pooled(udp, op).unwrap();
    }
    let mut batch = Vec::with_capacity(64);
    let round = |port: &mut CompletionPort<()>, batch: &mut Vec<Completion>| {
        for i in 0..6u8 {
            client.send_to(&[i; 100], addr).unwrap();
        }
        let mut echoed = 0;
        for _ in 0..1000 {
            port.wait(batch, Some(Duration::from_millis(100))).unwrap();
            for c in batch.iter() {
                match *c {
                    Completion::Op { op, kind: OpKind::RecvFrom, result: Ok(100), .. } => {
                        assert!(port.op(op).unwrap().packet_info().is_some());
                        port.send_to(udp, op).unwrap();
                    }
                    Completion::Op { op, kind: OpKind::SendTo, result: Ok(100), .. } => {
                        port.recv_from_pooled(udp, op).unwrap();
                        echoed += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            if echoed == 6 {
                break;
            }
        }
        assert_eq!(echoed, 6);
        let mut got = [0u8; 128];
        for _ in 0..6 {
            assert_eq!(client.recv(&mut got).unwrap(), 100);
        }
    };
    for _ in 0..50 {
        round(&mut port, &mut batch);
    }
    let before = thread_allocations();
    for _ in 0..500 {
        round(&mut port, &mut batch);
    }
    let n = thread_allocations() - before;
    assert_eq!(n, 0, "{n} allocations in 500 rounds of 6 pooled datagram echoes");
}

/// Sends grouped into UDP GSO messages (eight `send_to` ops to one peer per round,
/// one batch) allocate nothing, on either driver's readiness batches.
#[test]
fn grouped_datagram_sends_allocate_nothing() {
    use berth_reactor::UdpOptions;
    let buffers = BufferManager::new(BufferConfig::new().segment_size(2048).segment_count(64)).unwrap();
    let mut port =
        CompletionPort::builder().ops(16).max_sockets(8).buffers(buffers).ring_datagrams(false).build(|_| ()).unwrap();
    let udp = port.bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let to = client.local_addr().unwrap();
    let ops: Vec<_> = (0..8u8)
        .map(|i| {
            let op = port.take_op().unwrap();
            let mut lease = port.lease().unwrap();
            lease.spare_mut()[..100].fill(i);
            let args = port.op_mut(op).unwrap();
            args.set_buffer(lease, 0..100).unwrap();
            args.set_remote_endpoint(Some(to));
            op
        })
        .collect();
    let mut batch = Vec::with_capacity(64);
    let round = |port: &mut CompletionPort<()>, batch: &mut Vec<Completion>| {
        for &op in &ops {
            port.send_to(udp, op).unwrap();
        }
        let mut sent = 0;
        for _ in 0..1000 {
            port.wait(batch, Some(Duration::from_millis(100))).unwrap();
            for c in batch.iter() {
                assert!(matches!(c, Completion::Op { kind: OpKind::SendTo, result: Ok(100), .. }), "{c:?}");
                sent += 1;
            }
            if sent == 8 {
                break;
            }
        }
        assert_eq!(sent, 8);
        let mut got = [0u8; 128];
        for i in 0..8u8 {
            assert_eq!(client.recv(&mut got).unwrap(), 100);
            assert_eq!(got[0], i);
        }
    };
    for _ in 0..20 {
        round(&mut port, &mut batch);
    }
    let (before, segmented) = (thread_allocations(), port.stats().datagrams_segmented);
    for _ in 0..200 {
        round(&mut port, &mut batch);
    }
    let n = thread_allocations() - before;
    assert_eq!(n, 0, "{n} allocations in 200 rounds of 8 grouped sends");
    assert_eq!(port.stats().datagrams_segmented - segmented, 200 * 8, "every datagram went out grouped");
}

/// A `send_packets` op resent with its list (three byte ranges) allocates nothing,
/// nor does a `recv_vectored` into a list, once the lists have their capacity.
#[test]
fn packet_lists_allocate_nothing_once_filled() {
    let buffers = BufferManager::new(BufferConfig::new().segment_count(64)).unwrap();
    let mut port = CompletionPort::builder().ops(8).max_sockets(8).buffers(buffers).build(|_| ()).unwrap();
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let socket = port.register_unix_stream(ours).unwrap();
    let (send, recv) = (port.take_op().unwrap(), port.take_op().unwrap());
    for part in [&b"head "[..], b"body ", b"tail"] {
        let mut lease = port.lease().unwrap();
        lease[..part.len()].copy_from_slice(part);
        port.packets_mut(send).unwrap().push_bytes(lease, 0..part.len()).unwrap();
        let lease = port.lease().unwrap();
        port.packets_mut(recv).unwrap().push_bytes(lease, 0..8).unwrap();
    }
    let mut batch = Vec::with_capacity(16);
    let mut got = [0u8; 14];
    let mut round = |port: &mut CompletionPort<()>, batch: &mut Vec<Completion>| {
        port.send_packets(socket, send).unwrap();
        theirs.write_all(b"0123456789").unwrap();
        port.recv_vectored(socket, recv).unwrap();
        let (mut sent, mut received) = (false, 0);
        for _ in 0..1000 {
            port.wait(batch, Some(Duration::from_millis(100))).unwrap();
            for c in batch.iter() {
                match *c {
                    Completion::Op { kind: OpKind::SendPackets, result: Ok(14), .. } => sent = true,
                    Completion::Op { kind: OpKind::RecvVectored, result: Ok(n), .. } => {
                        received += n;
                        if received < 10 {
                            port.recv_vectored(socket, recv).unwrap();
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            if sent && received >= 10 {
                break;
            }
        }
        assert!(sent && received == 10, "sent {sent}, received {received}");
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"head body tail");
    };
    for _ in 0..20 {
        round(&mut port, &mut batch);
    }
    let before = thread_allocations();
    for _ in 0..500 {
        round(&mut port, &mut batch);
    }
    let n = thread_allocations() - before;
    assert_eq!(n, 0, "{n} allocations in 500 rounds of send_packets and recv_vectored");
}
