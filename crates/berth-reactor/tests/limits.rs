//! The port at its limits and on its rarer paths: a full socket table, a file sent
//! through the copy fallback (and cut short mid-send), and a connect that never
//! answers. Each runs on the driver `BERTH_DRIVER` names (CI runs epoll and uring
//! both). A pooled receive on an empty arena is `backpressure.rs`.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use berth_ops::{OpError, OpKind};
use berth_reactor::{Completion, CompletionPort, ListenOptions, SubmitError};
use common::{IO_TIMEOUT, client, connected_pair, wait_for};

fn is_op(c: &Completion, kind: OpKind) -> bool {
    matches!(c, Completion::Op { kind: k, .. } if *k == kind)
}

fn result_of(c: Completion) -> Result<usize, OpError> {
    match c {
        Completion::Op { result, .. } => result,
        other => panic!("not an op completion: {other:?}"),
    }
}

/// A file under the temp dir, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(tag: &str, data: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("berth-reactor-limits-{}-{tag}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect()
}

/// A full socket table refuses `listen` and `connect` with `TooManySockets`,
/// leaving the op idle and reusable; a connection accepted while the table is
/// full is refused (counted) and closed. Closing a socket makes room again.
///
/// Proven by mutation: `Core::add_socket` checking `len > max` instead of
/// `len >= max` fails it (a third socket is let in).
#[test]
fn a_full_socket_table_refuses_with_too_many_sockets() {
    let mut port = CompletionPort::builder().ops(4).max_sockets(2).build(|_| ()).unwrap();
    let listener = port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
    let addr = port.local_addr(listener).unwrap();
    let accept = port.take_op().unwrap();
    port.accept(listener, accept).unwrap();
    let first = client(addr);
    let Completion::Op { socket, .. } = wait_for(&mut port, |c| is_op(c, OpKind::Accept)) else { unreachable!() };
    assert_eq!(port.stats().sockets, 2);

    let refused = port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default());
    assert!(matches!(refused, Err(SubmitError::TooManySockets { max: 2 })), "{refused:?}");
    // Connects go elsewhere, so a refused one leaves nothing in our listener's queue.
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let op = port.take_op().unwrap();
    let refused = port.connect(elsewhere.local_addr().unwrap(), op);
    assert!(matches!(refused, Err(SubmitError::TooManySockets { max: 2 })), "{refused:?}");
    assert_eq!(port.stats().sockets, 2);

    // An accepted connection with no room in the table: refused and closed.
    port.accept(listener, accept).unwrap();
    let mut second = client(addr);
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut batch = Vec::new();
    while port.stats().refused == 0 {
        assert!(Instant::now() < deadline, "the connection over the table's size was never refused");
        port.wait(&mut batch, Some(Duration::from_millis(20))).unwrap();
        assert!(batch.is_empty(), "nothing but a refusal expected: {batch:?}");
    }
    match second.read(&mut [0u8; 1]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a refused connection was not closed: {other:?}"),
    }

    // Room again: the refused op connects.
    port.close(socket).unwrap();
    drop(first);
    let out = port.connect(elsewhere.local_addr().unwrap(), op).expect("a closed socket makes room");
    let c = wait_for(&mut port, |c| is_op(c, OpKind::Connect));
    assert_eq!(result_of(c), Ok(0));
    port.close(out).unwrap();
}

/// A file sent through the copy fallback at the port: the op's buffer is the
/// scratch space, every byte arrives in order, and without a buffer the op is
/// refused at completion with `InvalidInput` (documented on `send_file`).
///
/// Proven by mutation: `driver::io::send_file` ignoring the op's buffer (always
/// no scratch) fails it (`InvalidInput` instead of the byte count).
#[test]
fn send_file_copy_fallback_through_the_op_buffer() {
    let data = pattern(3 << 20);
    let tmp = TempFile::new("fallback", &data);
    let (mut port, _l, socket, mut c) = connected_pair(8);

    let op = port.take_op().unwrap();
    let send = berth_sendfile::FileSend::whole(std::fs::File::open(&tmp.0).unwrap()).unwrap().force_fallback(true);
    port.send_file(socket, op, send).unwrap();
    let done = wait_for(&mut port, |c| is_op(c, OpKind::SendFile));
    assert_eq!(result_of(done), Err(OpError::InvalidInput), "the fallback needs scratch space");

    let lease = port.lease().unwrap();
    let capacity = lease.capacity();
    port.op_mut(op).unwrap().set_buffer(lease, 0..capacity).unwrap();
    let send = berth_sendfile::FileSend::whole(std::fs::File::open(&tmp.0).unwrap()).unwrap().force_fallback(true);
    port.send_file(socket, op, send).unwrap();
    let len = data.len();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; len];
        c.read_exact(&mut got).map(|()| got)
    });
    let done = wait_for(&mut port, |c| is_op(c, OpKind::SendFile));
    assert_eq!(result_of(done), Ok(data.len()));
    let got = reader.join().unwrap().expect("every byte");
    assert!(got == data, "the copied bytes differ");
    drop(port.op_mut(op).unwrap().take_buffer());
    port.give_op(op).unwrap();
}

/// A file cut short by another handle while the port sends it (the client not
/// reading, so the send is pending): the op completes with `Truncated`, on the
/// copy fallback and on sendfile, and what the client receives is the file's
/// prefix.
///
/// Proven by mutation: `driver::io::send_file` mapping `SendFileError::Truncated`
/// to `BrokenPipe` fails it.
#[test]
fn send_file_of_a_shrinking_file_completes_truncated() {
    let data = pattern(32 << 20);
    for fallback in [true, false] {
        let tmp = TempFile::new(if fallback { "cut-copy" } else { "cut-sendfile" }, &data);
        let (mut port, _l, socket, mut c) = connected_pair(8);
        let op = port.take_op().unwrap();
        let lease = port.lease().unwrap();
        let capacity = lease.capacity();
        port.op_mut(op).unwrap().set_buffer(lease, 0..capacity).unwrap();
        let send =
            berth_sendfile::FileSend::whole(std::fs::File::open(&tmp.0).unwrap()).unwrap().force_fallback(fallback);
        port.send_file(socket, op, send).unwrap();
        // The client reads nothing yet: the socket's buffers fill and the op waits.
        let mut batch = Vec::new();
        for _ in 0..5 {
            port.wait(&mut batch, Some(Duration::from_millis(10))).unwrap();
            assert!(batch.is_empty(), "32 MiB went out to a client that reads nothing: {batch:?}");
        }
        let cut = 1 << 20;
        std::fs::OpenOptions::new().write(true).open(&tmp.0).unwrap().set_len(cut).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            c.read_to_end(&mut got).map(|_| got)
        });
        let done = wait_for(&mut port, |c| is_op(c, OpKind::SendFile));
        assert_eq!(result_of(done), Err(OpError::Truncated), "fallback {fallback}");
        port.close(socket).unwrap();
        let got = reader.join().unwrap().unwrap_or_default();
        // sendfile may deliver zeroes past the cut (see berth-sendfile's tests); below
        // it, and for the copy, every byte is the file's.
        let below = got.len().min(cut as usize);
        assert!(got[..below] == data[..below], "fallback {fallback}: bytes below the cut differ");
        drop(port.op_mut(op).unwrap().take_buffer());
        port.give_op(op).unwrap();
    }
}

/// A connect whose peer never answers (a listener whose accept queue is full
/// drops the SYN) completes with `TimedOut` at its deadline, not after the
/// kernel's minutes of SYN retries.
///
/// Proven by mutation: `CompletionPort::set_deadline` storing nothing fails it
/// (no completion within `IO_TIMEOUT`).
#[test]
fn a_connect_deadline_fires() {
    // A listener nobody accepts on, with a backlog of one: fill its queue.
    let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    full.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    full.listen(1).unwrap();
    let addr = full.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => queued.push(s),
            Err(_) => break, // the queue is full: SYNs are dropped from here on
        }
    }
    assert!(queued.len() < 16, "the accept queue never filled");

    let mut port = CompletionPort::builder().ops(4).max_sockets(4).build(|_| ()).unwrap();
    let op = port.take_op().unwrap();
    port.set_deadline(op, Some(Instant::now() + Duration::from_millis(200))).unwrap();
    let socket = port.connect(addr, op).unwrap();
    let done = wait_for(&mut port, |c| is_op(c, OpKind::Connect));
    assert_eq!(result_of(done), Err(OpError::TimedOut));
    assert_eq!(port.stats().timed_out, 1);
    port.close(socket).unwrap();
    port.give_op(op).unwrap();
}
