//! Several buffers in one op: `send_packets` (byte ranges and files, gathered, in
//! order, one completion) and `recv_vectored` (scatter into byte ranges), over TCP
//! and Unix streams, with the bad inputs: an empty list, a file in a receive list, a
//! file that shrinks before it is sent — on whichever driver `BERTH_DRIVER` picks.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use berth_ops::{OpError, OpId, OpKind};
use berth_reactor::{Completion, CompletionPort, Packet, SocketId, SubmitError};
use berth_sendfile::{ByteRange, FileSend};
use common::{IO_TIMEOUT, connected_pair, wait_for};

/// A file of `len` patterned bytes; returns it (open) and its bytes.
fn file(name: &str, len: usize) -> (std::fs::File, Vec<u8>, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("berth-packets-{}-{name}", std::process::id()));
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    (std::fs::File::open(&path).unwrap(), bytes, path)
}

/// Fills `op`'s list with `parts` (each in a fresh segment, `range` within it).
fn push_bytes(port: &mut CompletionPort<()>, op: OpId, parts: &[&[u8]]) {
    for (i, part) in parts.iter().enumerate() {
        let mut lease = port.lease().unwrap();
        // Leave a gap in front so ranges do not all start at 0.
        let start = i % 3;
        lease[start..start + part.len()].copy_from_slice(part);
        port.packets_mut(op).unwrap().push_bytes(lease, start..start + part.len()).unwrap();
    }
}

fn completion(port: &mut CompletionPort<()>, kind: OpKind) -> Result<usize, OpError> {
    match wait_for(port, |c| matches!(c, Completion::Op { kind: k, .. } if *k == kind)) {
        Completion::Op { result, .. } => result,
        Completion::Posted { .. } => unreachable!(),
    }
}

/// Reads exactly `len` bytes on another thread while the port works.
fn reader(mut client: impl Read + Send + 'static, len: usize) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut got = vec![0u8; len];
        client.read_exact(&mut got).expect("the whole reply");
        got
    })
}

#[test]
fn header_file_and_trailer_go_out_in_order_as_one_op() {
    let (mut port, _listener, socket, client) = connected_pair(8);
    let (f, body, path) = file("hft", 3 << 20);
    let op = port.take_op().unwrap();
    push_bytes(&mut port, op, &[b"HTTP/1.1 200 OK\r\n", b"Content-Length: 3145728\r\n\r\n"]);
    port.packets_mut(op).unwrap().push_file(FileSend::whole(f).unwrap());
    push_bytes(&mut port, op, &[b"-- trailer --"]);
    let mut expected = b"HTTP/1.1 200 OK\r\nContent-Length: 3145728\r\n\r\n".to_vec();
    expected.extend_from_slice(&body);
    expected.extend_from_slice(b"-- trailer --");
    let read = reader(client, expected.len());
    port.send_packets(socket, op).unwrap();
    assert_eq!(completion(&mut port, OpKind::SendPackets), Ok(expected.len()));
    assert!(read.join().unwrap() == expected, "the bytes differ");
    // The list stays with the op; the same op goes again after a rewind.
    assert_eq!(port.packets(op).unwrap().len(), 4);
    let _ = std::fs::remove_file(path);
}

#[test]
fn many_ranges_are_gathered_in_order_across_several_syscalls() {
    // More segments than `connected_pair` has: one per range.
    let buffers = berth_buf::BufferManager::new(berth_buf::BufferConfig::new().segment_size(4096).segment_count(256));
    let mut port = CompletionPort::builder().ops(8).max_sockets(8).buffers(buffers.unwrap()).build(|_| ()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let socket = port.register_stream(listener.accept().unwrap().0).unwrap();
    let parts: Vec<Vec<u8>> = (0..150).map(|i| vec![i as u8; 1 + i * 13 % 700]).collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    let op = port.take_op().unwrap();
    push_bytes(&mut port, op, &refs);
    // An empty range in the middle is skipped, not an error.
    let empty = port.lease().unwrap();
    port.packets_mut(op).unwrap().push_bytes(empty, 5..5).unwrap();
    push_bytes(&mut port, op, &[b"end"]);
    let expected: Vec<u8> = parts.concat().into_iter().chain(*b"end").collect();
    let read = reader(client, expected.len());
    port.send_packets(socket, op).unwrap();
    assert_eq!(completion(&mut port, OpKind::SendPackets), Ok(expected.len()));
    assert!(read.join().unwrap() == expected, "the bytes differ");
}

#[test]
fn a_file_that_shrank_completes_truncated_after_what_went_before() {
    let (mut port, _listener, socket, mut client) = connected_pair(8);
    let (f, _, path) = file("shrink", 64 * 1024);
    let send = FileSend::new(f, ByteRange::new(0, 64 * 1024).unwrap());
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1000).unwrap();
    let op = port.take_op().unwrap();
    push_bytes(&mut port, op, &[b"HEAD"]);
    port.packets_mut(op).unwrap().push_file(send);
    push_bytes(&mut port, op, &[b"TAIL"]);
    port.send_packets(socket, op).unwrap();
    assert_eq!(completion(&mut port, OpKind::SendPackets), Err(OpError::Truncated));
    // What went out: the header and the file's 1000 bytes, never the trailer.
    port.close(socket).unwrap();
    let mut got = Vec::new();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(&got[..4], b"HEAD");
    assert_eq!(got.len(), 4 + 1000);
    let _ = std::fs::remove_file(path);
}

#[test]
fn recv_vectored_scatters_across_the_ranges_in_order() {
    let (mut port, _listener, socket, mut client) = connected_pair(8);
    let op = port.take_op().unwrap();
    for _ in 0..3 {
        let lease = port.lease().unwrap();
        port.packets_mut(op).unwrap().push_bytes(lease, 10..50).unwrap();
    }
    let message: Vec<u8> = (0..100u8).collect();
    client.write_all(&message).unwrap();
    // Loopback delivers the 100 bytes at once; wait until they are all there.
    std::thread::sleep(Duration::from_millis(20));
    port.recv_vectored(socket, op).unwrap();
    assert_eq!(completion(&mut port, OpKind::RecvVectored), Ok(100));
    let list = port.packets(op).unwrap();
    let mut got = Vec::new();
    for (i, item) in list.items().iter().enumerate() {
        let Packet::Bytes { lease, range } = item else { panic!("a file") };
        let filled = &lease.filled()[range.start..];
        assert_eq!(filled.len(), [40, 40, 20][i]);
        got.extend_from_slice(filled);
    }
    assert_eq!(got, message);
    // The peer's FIN: Ok(0).
    drop(client);
    port.recv_vectored(socket, op).unwrap();
    assert_eq!(completion(&mut port, OpKind::RecvVectored), Ok(0));
}

#[test]
fn lists_that_cannot_run_are_refused_at_submit() {
    let (mut port, _listener, socket, _client) = connected_pair(8);
    let op = port.take_op().unwrap();
    assert!(matches!(port.send_packets(socket, op), Err(SubmitError::NoBuffer)));
    assert!(matches!(port.recv_vectored(socket, op), Err(SubmitError::NoBuffer)));
    let lease = port.lease().unwrap();
    port.packets_mut(op).unwrap().push_bytes(lease, 3..3).unwrap();
    assert!(matches!(port.send_packets(socket, op), Err(SubmitError::NoBuffer)));
    let lease = port.lease().unwrap();
    let capacity = lease.capacity();
    assert!(port.packets_mut(op).unwrap().push_bytes(lease, 0..capacity + 1).is_err());
    let (f, _, path) = file("refused", 10);
    port.packets_mut(op).unwrap().push_file(FileSend::whole(f).unwrap());
    match port.recv_vectored(socket, op) {
        Err(SubmitError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert_eq!(port.stats().pending, 0);
    assert!(matches!(port.send_packets(SocketId::NONE, op), Err(SubmitError::StaleSocket)));
    // A range moved past its lease after push_bytes checked it: refused at submit,
    // never a panic inside wait.
    port.packets_mut(op).unwrap().clear();
    let lease = port.lease().unwrap();
    let capacity = lease.capacity();
    port.packets_mut(op).unwrap().push_bytes(lease, 0..4).unwrap();
    if let Packet::Bytes { range, .. } = &mut port.packets_mut(op).unwrap().items_mut()[0] {
        *range = 0..capacity + 10;
    }
    for refused in [port.send_packets(socket, op), port.recv_vectored(socket, op)] {
        match refused {
            Err(SubmitError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
    // Giving the op back returns every lease in its list.
    port.give_op(op).unwrap();
    assert_eq!(common::held(&port), 0);
    let _ = std::fs::remove_file(path);
}

#[test]
fn send_packets_over_a_unix_stream() {
    let mut port = CompletionPort::builder().ops(8).max_sockets(8).build(|_| ()).unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let socket = port.register_unix_stream(ours).unwrap();
    let (f, body, path) = file("unix", 300_000);
    let op = port.take_op().unwrap();
    push_bytes(&mut port, op, &[b"<"]);
    port.packets_mut(op).unwrap().push_file(FileSend::whole(f).unwrap());
    push_bytes(&mut port, op, &[b">"]);
    let expected: Vec<u8> = b"<".iter().chain(&body).chain(b">").copied().collect();
    let read = reader(theirs, expected.len());
    port.send_packets(socket, op).unwrap();
    assert_eq!(completion(&mut port, OpKind::SendPackets), Ok(expected.len()));
    assert!(read.join().unwrap() == expected);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_gather_larger_than_the_socket_buffer_resumes_its_partial_writes() {
    let (mut port, _listener, socket, client) = connected_pair(8);
    // A small send buffer, so the kernel takes the list in many partial writes.
    socket2::SockRef::from(port.stream(socket).unwrap()).set_send_buffer_size(16 * 1024).unwrap();
    let op = port.take_op().unwrap();
    let mut expected = Vec::new();
    // (The io_uring driver lends a quarter of the arena to its buffer ring.)
    for i in 0..40usize {
        let mut lease = port.lease().unwrap();
        let capacity = lease.capacity();
        for (j, b) in lease[..capacity].iter_mut().enumerate() {
            *b = (i * 31 + j * 7) as u8;
        }
        // Ranges of odd lengths and offsets, so partial writes end mid-range.
        let range = (i % 5)..capacity - (i % 7);
        expected.extend_from_slice(&lease[range.clone()]);
        port.packets_mut(op).unwrap().push_bytes(lease, range).unwrap();
    }
    let read = reader(client, expected.len());
    port.send_packets(socket, op).unwrap();
    assert_eq!(completion(&mut port, OpKind::SendPackets), Ok(expected.len()));
    assert!(read.join().unwrap() == expected, "the bytes differ");
}

/// After a pooled receive, what arrives next may already have been taken off the
/// socket (io_uring's multishot receive keeps it for the next receive): a
/// `recv_vectored` must get those bytes first and in order, and a readiness wait
/// must see them rather than wait for more that will never come.
#[test]
fn receives_of_any_kind_after_a_pooled_one_see_the_bytes_in_order() {
    let (mut port, _listener, socket, mut client) = connected_pair(8);
    let recv = port.take_op().unwrap();
    client.write_all(b"first").unwrap();
    port.recv_pooled(socket, recv).unwrap();
    assert_eq!(completion(&mut port, OpKind::Recv), Ok(5));
    // The peer's next message arrives while no receive waits; one wait lets the
    // driver take it (or not) before anything is asked for.
    client.write_all(b"second").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let mut batch = Vec::with_capacity(4);
    port.wait(&mut batch, Some(Duration::from_millis(20))).unwrap();
    assert!(batch.is_empty());

    let ready = port.take_op().unwrap();
    port.wait_ready(socket, ready, berth_reactor::Interest::Readable).unwrap();
    let bits = completion(&mut port, OpKind::Ready).expect("readable");
    assert!(berth_reactor::Ready::from_result(bits).is_readable());

    let list = port.take_op().unwrap();
    for _ in 0..2 {
        let lease = port.lease().unwrap();
        port.packets_mut(list).unwrap().push_bytes(lease, 0..4).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 6 {
        port.recv_vectored(socket, list).unwrap();
        let n = completion(&mut port, OpKind::RecvVectored).expect("the kept bytes");
        assert!(n > 0);
        let mut left = n;
        for item in port.packets(list).unwrap().items() {
            let Packet::Bytes { lease, range } = item else { unreachable!() };
            let here = left.min(range.len());
            got.extend_from_slice(&lease[range.start..range.start + here]);
            left -= here;
        }
    }
    assert_eq!(got, b"second");
    // Then the socket itself: a third message, read in order after them.
    client.write_all(b"third").unwrap();
    port.recv_pooled(socket, recv).unwrap();
    assert_eq!(completion(&mut port, OpKind::Recv), Ok(5));
    assert_eq!(port.op(recv).unwrap().transferred_bytes(), b"third");
}
