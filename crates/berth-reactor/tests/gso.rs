//! UDP GSO (`UdpOptions::gso`): consecutive `send_to` ops to one destination with one
//! length leave as one message the kernel cuts into datagrams. The peer must receive
//! exactly the datagrams sent, in order; each op completes with its own length; a
//! kernel that refuses the segmentation costs nothing but the grouping — on
//! whichever driver `BERTH_DRIVER` picks (io_uring's readiness batches: the ring's
//! own datagram ops never group).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::{OpError, OpId, OpKind};
use berth_reactor::{Completion, CompletionPort, SocketId, UdpOptions};
use common::IO_TIMEOUT;

/// Datagrams, each with where it goes.
type Sends = Vec<(SocketAddr, Vec<u8>)>;
type Datagrams = Vec<Vec<u8>>;

fn port() -> CompletionPort<()> {
    let buffers = BufferManager::new(BufferConfig::new().segment_size(2048).segment_count(160)).unwrap();
    CompletionPort::builder().ops(128).max_sockets(8).buffers(buffers).ring_datagrams(false).build(|_| ()).unwrap()
}

/// A port with one UDP socket bound on `addr`, and that socket's address.
fn bound(addr: &str, options: UdpOptions) -> (CompletionPort<()>, SocketId, SocketAddr) {
    let mut port = port();
    let socket = port.bind_udp(addr.parse().unwrap(), options).unwrap();
    let from = port.local_addr(socket).unwrap();
    (port, socket, from)
}

/// The datagrams of `sends`, in order.
fn payloads(sends: &Sends) -> Datagrams {
    sends.iter().map(|(_, d)| d.clone()).collect()
}

fn receiver() -> UdpSocket {
    let r = UdpSocket::bind("127.0.0.1:0").unwrap();
    r.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    r
}

/// The `i`th datagram of a test: `len` bytes that say which one it is.
fn datagram(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i * 31 + k) as u8).collect()
}

/// Submits a `send_to` for each `(destination, datagram)` before waiting once, so
/// they leave in one batch; every one must complete with its own datagram's length,
/// in submission order.
fn send_all(port: &mut CompletionPort<()>, socket: SocketId, sends: &Sends) {
    for (result, (_, data)) in try_send_all(port, socket, sends).into_iter().zip(sends) {
        assert_eq!(result, Ok(data.len()));
    }
}

/// As `send_all`, returning each send's result, in submission order.
fn try_send_all(port: &mut CompletionPort<()>, socket: SocketId, sends: &Sends) -> Vec<Result<usize, OpError>> {
    let mut ops: Vec<(OpId, usize)> = Vec::new();
    for (to, data) in sends {
        let op = port.take_op().unwrap();
        let mut lease = port.lease().unwrap();
        lease.spare_mut()[..data.len()].copy_from_slice(data);
        let args = port.op_mut(op).unwrap();
        args.set_buffer(lease, 0..data.len()).unwrap();
        args.set_remote_endpoint(Some(*to));
        port.send_to(socket, op).unwrap();
        ops.push((op, data.len()));
    }
    let mut done = Vec::new();
    let mut batch = Vec::with_capacity(256);
    let until = Instant::now() + IO_TIMEOUT;
    while done.len() < ops.len() {
        assert!(Instant::now() < until, "{} of {} sends completed", done.len(), ops.len());
        port.wait(&mut batch, Some(Duration::from_millis(50))).unwrap();
        for c in batch.drain(..) {
            let Completion::Op { op, kind: OpKind::SendTo, result, .. } = c else { panic!("{c:?}") };
            done.push((op, result));
        }
    }
    let mut results = Vec::new();
    for (&(op, _), &(got, result)) in ops.iter().zip(&done) {
        assert_eq!(op, got, "in submission order");
        port.give_op(op).unwrap();
        results.push(result);
    }
    results
}

/// Reads `expected.len()` datagrams from `r` and checks each, in order.
fn expect(r: &UdpSocket, from: SocketAddr, expected: &[Vec<u8>]) {
    let mut buf = [0u8; 4096];
    for (i, want) in expected.iter().enumerate() {
        let (n, peer) = r.recv_from(&mut buf).unwrap_or_else(|e| panic!("datagram {i} of {}: {e}", expected.len()));
        assert_eq!(peer, from);
        assert_eq!(&buf[..n], &want[..], "datagram {i} ({} bytes expected, {n} came)", want.len());
    }
    r.set_nonblocking(true).unwrap();
    assert!(r.recv_from(&mut buf).is_err(), "no datagram beyond those sent");
    r.set_nonblocking(false).unwrap();
}

/// A batch to `a`: 39 datagrams of 100 bytes and one of 37 (a group may end shorter),
/// one to `b`; then to `a` again 5 of 50 bytes (a new group: another destination
/// came between), 2 of 80 (longer: a new group) and one of 30 (ending that group),
/// and one of 80 (after a shorter one: alone).
fn mixed_batch(a: SocketAddr, b: SocketAddr) -> (Sends, Datagrams, Datagrams) {
    let mut sends = Vec::new();
    for i in 0..40 {
        sends.push((a, datagram(i, if i == 39 { 37 } else { 100 })));
    }
    sends.push((b, datagram(40, 100)));
    for i in 41..46 {
        sends.push((a, datagram(i, 50)));
    }
    for (i, len) in [(46, 80), (47, 80), (48, 30), (49, 80)] {
        sends.push((a, datagram(i, len)));
    }
    let to = |addr| sends.iter().filter(|(t, _)| *t == addr).map(|(_, d)| d.clone()).collect::<Vec<_>>();
    let (for_a, for_b) = (to(a), to(b));
    (sends, for_a, for_b)
}

/// Sends `mixed_batch` from a socket bound with `options`, checks that both peers
/// got exactly their datagrams, and returns the port's stats.
fn send_mixed(options: UdpOptions) -> berth_reactor::PortStats {
    let (mut port, socket, from) = bound("127.0.0.1:0", options);
    let (ra, rb) = (receiver(), receiver());
    let (sends, for_a, for_b) = mixed_batch(ra.local_addr().unwrap(), rb.local_addr().unwrap());
    send_all(&mut port, socket, &sends);
    expect(&ra, from, &for_a);
    expect(&rb, from, &for_b);
    port.stats()
}

#[test]
fn sends_to_one_peer_leave_grouped_and_arrive_as_sent() {
    let stats = send_mixed(UdpOptions::default());
    // The 40 to `a`, the 5, the 3: the one to `b` and the last go alone.
    assert_eq!((stats.datagrams_segmented, stats.gso_refusals), (48, 0));
}

#[test]
fn with_gso_off_every_datagram_is_its_own_message() {
    assert_eq!(send_mixed(UdpOptions::default().gso(false)).datagrams_segmented, 0);
}

/// A group that fails for its datagrams' own sake (destination port 0: `EINVAL`,
/// as a refused segmentation would be) fails those ops alone, each as a single
/// datagram would, and the socket goes on grouping: no refusal is counted.
#[test]
fn a_group_failing_for_its_datagrams_fails_them_and_grouping_goes_on() {
    let (mut port, socket, from) = bound("127.0.0.1:0", UdpOptions::default());
    let r = receiver();
    let (to, nowhere) = (r.local_addr().unwrap(), "127.0.0.1:0".parse().unwrap());
    let sends: Sends = (0..9).map(|i| (if (3..6).contains(&i) { nowhere } else { to }, datagram(i, 100))).collect();
    let results = try_send_all(&mut port, socket, &sends);
    for (i, result) in results.iter().enumerate() {
        if (3..6).contains(&i) {
            assert!(result.is_err(), "send {i} to port 0: {result:?}");
        } else {
            assert_eq!(*result, Ok(100), "send {i}");
        }
    }
    let arrived: Datagrams = sends.iter().filter(|(t, _)| *t == to).map(|(_, d)| d.clone()).collect();
    expect(&r, from, &arrived);
    assert_eq!((port.stats().datagrams_segmented, port.stats().gso_refusals), (6, 0));
}

#[test]
fn over_ipv6_and_a_connected_socket_too() {
    let (mut port, socket, from) = bound("[::1]:0", UdpOptions::default());
    let r = UdpSocket::bind("[::1]:0").unwrap();
    r.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let to = r.local_addr().unwrap();
    // 60 of 1200 bytes: more than one send carries (65000 bytes), so two groups.
    let sends: Vec<_> = (0..60).map(|i| (to, datagram(i, 1200))).collect();
    send_all(&mut port, socket, &sends);
    expect(&r, from, &payloads(&sends));
    assert_eq!(port.stats().datagrams_segmented, 60);
    assert_eq!(port.stats().gso_refusals, 0);

    // Connected, the ops name no destination: they group all the same.
    port.udp_socket(socket).unwrap().connect(to).unwrap();
    let mut ops = Vec::new();
    for i in 0..8 {
        let op = port.take_op().unwrap();
        let mut lease = port.lease().unwrap();
        lease.spare_mut()[..64].copy_from_slice(&datagram(100 + i, 64));
        port.op_mut(op).unwrap().set_buffer(lease, 0..64).unwrap();
        port.send_to(socket, op).unwrap();
        ops.push(op);
    }
    let mut batch = Vec::new();
    let mut sent = 0;
    let until = Instant::now() + IO_TIMEOUT;
    while sent < ops.len() {
        assert!(Instant::now() < until);
        port.wait(&mut batch, Some(Duration::from_millis(50))).unwrap();
        for c in batch.drain(..) {
            assert!(matches!(c, Completion::Op { kind: OpKind::SendTo, result: Ok(64), .. }), "{c:?}");
            sent += 1;
        }
    }
    expect(&r, from, &(0..8).map(|i| datagram(100 + i, 64)).collect::<Vec<_>>());
    assert_eq!(port.stats().datagrams_segmented, 68);

    // A dual-stack socket sending to an IPv4 peer (a mapped address) groups too.
    let dual = port.bind_udp("[::]:0".parse().unwrap(), UdpOptions::default().only_v6(false)).unwrap();
    let r4 = receiver();
    let mapped =
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), r4.local_addr().unwrap().port());
    let sends: Sends = (0..10).map(|i| (mapped, datagram(200 + i, 64))).collect();
    send_all(&mut port, dual, &sends);
    let from4 = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port.local_addr(dual).unwrap().port());
    expect(&r4, from4, &payloads(&sends));
    assert_eq!(port.stats().datagrams_segmented, 78);
}

/// `SO_NO_CHECK` makes the kernel refuse every GSO send (`EINVAL`): the batch goes
/// out one datagram per message instead, no op fails, and the socket stops grouping
/// datagrams that long.
#[test]
fn a_refused_segmentation_loses_nothing_and_stops_grouping() {
    let (mut port, socket, from) = bound("127.0.0.1:0", UdpOptions::default());
    let fd = port.udp_socket(socket).unwrap().as_raw_fd();
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int for the call and its size is passed; `fd` is
    // the port's open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as _,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let r = receiver();
    let to = r.local_addr().unwrap();
    for round in 0..3 {
        let len = if round == 2 { 40 } else { 200 };
        let sends: Vec<_> = (0..12).map(|i| (to, datagram(round * 12 + i, len))).collect();
        send_all(&mut port, socket, &sends);
        expect(&r, from, &payloads(&sends));
    }
    assert_eq!(port.stats().datagrams_segmented, 0);
    // Refused at 200 bytes, not tried at 200 again, refused at 40.
    assert_eq!(port.stats().gso_refusals, 2);
}
