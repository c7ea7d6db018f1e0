//! Unix domain stream sockets on the port: paths and abstract names, accept with the
//! peer's credentials, connect, and the bind errors (stale file, live listener, a
//! file that is not a socket, a name too long), on whichever driver `BERTH_DRIVER`
//! picks.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::{OpError, OpKind};
use berth_reactor::{Completion, CompletionPort, SocketId, SubmitError, UNIX_NAME_MAX, UnixAddr, UnixListenOptions};
use common::{Echo, IO_TIMEOUT, STOP, accept_one, wait_for};

fn port() -> CompletionPort<()> {
    let buffers = BufferManager::new(BufferConfig::new().segment_size(4096).segment_count(64)).unwrap();
    CompletionPort::builder().ops(64).max_sockets(16).buffers(buffers).build(|_| ()).unwrap()
}

/// A fresh directory for socket files, removed first if a crashed run left it.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-unix-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn client(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Runs the echo handler on `addr` in a thread until `STOP` is posted; returns once
/// it listens.
fn echo_on(addr: UnixAddr) -> (berth_reactor::PortHandle, std::thread::JoinHandle<usize>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut port = port();
        let listener = port.listen_unix(&addr, UnixListenOptions::default()).expect("listen_unix");
        let mut echo = Echo::start(&mut port, listener).expect("echo");
        tx.send(port.handle()).unwrap();
        while !echo.stopped() {
            port.run_once(&mut echo, Some(Duration::from_millis(100))).expect("run");
        }
        port.stats().accepted as usize
    });
    (rx.recv().expect("listening"), thread)
}

fn echo_round(stream: &mut UnixStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let mut got = vec![0; message.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(got, message);
}

#[test]
fn echo_over_a_socket_file_and_the_file_goes_with_the_listener() {
    let dir = scratch("echo");
    let path = dir.join("echo.sock");
    let (handle, thread) = echo_on(UnixAddr::Path(path.clone()));
    let mut clients: Vec<_> = (0..4).map(|_| client(&path)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        for size in [1usize, 100, 4096, 10_000] {
            let message: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
            echo_round(c, &message);
        }
    }
    handle.post(STOP, 0).unwrap();
    assert_eq!(thread.join().unwrap(), 4);
    assert!(!path.exists(), "the listener's socket file outlived it");
}

#[test]
fn echo_over_an_abstract_name() {
    let name = format!("berth-test-{}-abstract", std::process::id());
    let (handle, thread) = echo_on(UnixAddr::Abstract(name.clone().into_bytes()));
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut c = UnixStream::connect_addr(&addr).expect("connect to the abstract name");
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    echo_round(&mut c, b"abstract hello");
    handle.post(STOP, 0).unwrap();
    assert_eq!(thread.join().unwrap(), 1);
}

#[test]
fn accept_reports_the_peers_credentials_and_connect_unix_reaches_a_listener() {
    let dir = scratch("cred");
    let addr = UnixAddr::Path(dir.join("c.sock"));
    let mut port = port();
    let listener = port.listen_unix(&addr, UnixListenOptions::default()).unwrap();
    assert!(matches!(port.local_addr(listener), Err(SubmitError::WrongSocket)));

    // The port connects to its own listener: both ends are the port's.
    let connect = port.take_op().unwrap();
    let out = port.connect_unix(&addr, connect).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { kind: OpKind::Connect, .. }));
    assert!(matches!(done, Completion::Op { socket, result: Ok(0), .. } if socket == out));
    let accepted = accept_one(&mut port, listener).0;

    let cred = port.peer_cred(accepted).unwrap();
    assert_eq!(cred.pid, Some(std::process::id() as i32));
    assert_eq!(cred.uid, rustix::process::getuid().as_raw());
    assert_eq!(cred.gid, rustix::process::getgid().as_raw());
    assert!(port.stream(accepted).is_err(), "a Unix socket is not a TCP stream");

    // Bytes from the connected end arrive at the accepted one through the port.
    let lease = port.lease().unwrap();
    port.op_mut(connect).unwrap().set_buffer(lease, 0..5).unwrap();
    port.op_mut(connect).unwrap().active_mut().copy_from_slice(b"hello");
    port.send(out, connect).unwrap();
    let recv = port.take_op().unwrap();
    port.recv_pooled(accepted, recv).unwrap();
    wait_for(&mut port, |c| matches!(c, Completion::Op { kind: OpKind::Recv, .. }));
    assert_eq!(port.op(recv).unwrap().transferred_bytes(), b"hello");
}

#[test]
fn a_stale_socket_file_is_an_error_unless_replacing_is_asked() {
    let dir = scratch("stale");
    let path = dir.join("s.sock");
    // A server that died: its file stays, nobody accepts.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let addr = UnixAddr::Path(path.clone());
    let mut port = port();
    match port.listen_unix(&addr, UnixListenOptions::default()) {
        Err(SubmitError::StaleSocketFile { path: p }) => assert_eq!(p, path),
        other => panic!("expected StaleSocketFile, got {other:?}"),
    }
    assert!(path.exists(), "the stale file was removed without being asked to");
    // Connecting to it is refused at submit, with the op left unchanged.
    let op = port.take_op().unwrap();
    match port.connect_unix(&addr, op) {
        Err(SubmitError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("expected ConnectionRefused, got {other:?}"),
    }
    let listener = port.listen_unix(&addr, UnixListenOptions::default().replace_stale(true)).unwrap();
    let _c = client(&path);
    accept_one(&mut port, listener);
}

#[test]
fn a_live_listener_or_a_file_that_is_no_socket_is_never_replaced() {
    let dir = scratch("live");
    let live = dir.join("live.sock");
    let other = UnixListener::bind(&live).unwrap();
    let mut port = port();
    let replace = UnixListenOptions::default().replace_stale(true);
    match port.listen_unix(&UnixAddr::Path(live.clone()), replace) {
        Err(SubmitError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}"),
        other => panic!("expected AddrInUse, got {other:?}"),
    }
    // The other server still has its file and its clients.
    let _c = client(&live);
    other.accept().expect("the live listener still accepts");

    let plain = dir.join("notes.txt");
    std::fs::write(&plain, b"keep me").unwrap();
    match port.listen_unix(&UnixAddr::Path(plain.clone()), replace) {
        Err(SubmitError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}"),
        other => panic!("expected AddrInUse, got {other:?}"),
    }
    assert_eq!(std::fs::read(&plain).unwrap(), b"keep me");

    // Two binds of one abstract name: the second is refused.
    let name = UnixAddr::Abstract(format!("berth-test-{}-twice", std::process::id()).into_bytes());
    port.listen_unix(&name, UnixListenOptions::default()).unwrap();
    match port.listen_unix(&name, UnixListenOptions::default()) {
        Err(SubmitError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}"),
        other => panic!("expected AddrInUse, got {other:?}"),
    }
}

#[test]
fn closing_the_listener_leaves_a_file_that_replaced_its_socket() {
    let dir = scratch("replaced");
    let path = dir.join("r.sock");
    let mut port = port();
    let listener = port.listen_unix(&UnixAddr::Path(path.clone()), UnixListenOptions::default()).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"someone else's").unwrap();
    port.close(listener).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
}

#[test]
fn a_name_longer_than_sun_path_is_a_typed_error() {
    let mut port = port();
    let dir = scratch("long");
    let base = dir.as_os_str().len() + 1;
    // Exactly the longest a path may be binds; one byte more is refused.
    let longest = dir.join("x".repeat(UNIX_NAME_MAX - base));
    assert_eq!(longest.as_os_str().len(), UNIX_NAME_MAX);
    port.listen_unix(&UnixAddr::Path(longest), UnixListenOptions::default()).expect("107 bytes fit");
    let too_long = dir.join("y".repeat(UNIX_NAME_MAX + 1 - base));
    match port.listen_unix(&UnixAddr::Path(too_long.clone()), UnixListenOptions::default()) {
        Err(SubmitError::PathTooLong { len, max }) => assert_eq!((len, max), (108, 107)),
        other => panic!("expected PathTooLong, got {other:?}"),
    }
    assert!(!too_long.exists());
    let op = port.take_op().unwrap();
    let name = UnixAddr::Abstract(vec![b'n'; 200]);
    assert!(matches!(port.connect_unix(&name, op), Err(SubmitError::PathTooLong { len: 200, max: 107 })));
    // The op was left as it was: it can be used at once.
    port.timer(op, std::time::Instant::now()).unwrap();
}

#[test]
fn a_peer_that_dies_mid_message_ends_the_stream_and_loses_nothing_received() {
    let (mut port, accepted, mut peer) = pair();
    peer.write_all(b"half a mess").unwrap();
    drop(peer);
    let recv = port.take_op().unwrap();
    let mut got = Vec::new();
    loop {
        port.recv_pooled(accepted, recv).unwrap();
        let Completion::Op { result, .. } = wait_for(&mut port, |c| matches!(c, Completion::Op { .. })) else {
            unreachable!()
        };
        match result {
            Ok(0) => break,
            Ok(_) => got.extend_from_slice(port.op(recv).unwrap().transferred_bytes()),
            Err(e) => panic!("receive failed: {e}"),
        }
    }
    assert_eq!(got, b"half a mess");
    // A send to the dead peer fails cleanly.
    let send = port.take_op().unwrap();
    let lease = port.lease().unwrap();
    port.op_mut(send).unwrap().set_buffer(lease, 0..64).unwrap();
    port.send(accepted, send).unwrap();
    let Completion::Op { result, .. } = wait_for(&mut port, |c| matches!(c, Completion::Op { kind: OpKind::Send, .. }))
    else {
        unreachable!()
    };
    assert!(matches!(result, Err(OpError::BrokenPipe | OpError::ConnectionReset)), "{result:?}");
}

/// A port with one end of a `UnixStream::pair` registered; the other end returned.
fn pair() -> (CompletionPort<()>, SocketId, UnixStream) {
    let mut port = port();
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let socket = port.register_unix_stream(ours).unwrap();
    assert!(port.unix_stream(socket).is_ok());
    (port, socket, theirs)
}

#[test]
fn unix_addr_parses_and_prints() {
    for (text, addr) in [
        ("unix:/tmp/a.sock", UnixAddr::Path("/tmp/a.sock".into())),
        ("/tmp/a.sock", UnixAddr::Path("/tmp/a.sock".into())),
        ("unix:@svc", UnixAddr::Abstract(b"svc".to_vec())),
        ("@svc", UnixAddr::Abstract(b"svc".to_vec())),
    ] {
        assert_eq!(text.parse::<UnixAddr>().unwrap(), addr, "{text}");
    }
    for bad in ["unix:", "", "unix:@", "@"] {
        assert!(bad.parse::<UnixAddr>().is_err(), "{bad:?} parsed");
    }
    assert_eq!(UnixAddr::Path("/x".into()).to_string(), "unix:/x");
}
