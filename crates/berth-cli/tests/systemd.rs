//! systemd integration of the `berth` binary: socket activation (`LISTEN_FDS`, the
//! listener at descriptor 3, TCP or Unix) and readiness (`READY=1` / `STOPPING=1` to
//! `NOTIFY_SOCKET`). The service manager is played by `sh`, which puts the
//! listener at descriptor 3 and sets `LISTEN_PID` to its own pid before `exec`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};

use rustix::process::Signal;

mod common;

use common::{TIMEOUT, signal, wait_exit};

/// Runs `berth ARGS` as systemd would with `listener` (any listening socket, or
/// none) at descriptor 3, `LISTEN_FDS=count`, and `LISTEN_PID` its own pid (or
/// another's when `foreign_pid`). Returns the child and its banner line.
fn activated(
    listener: Option<OwnedFd>,
    count: u32,
    foreign_pid: bool,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Child, String) {
    let pid = if foreign_pid { "1" } else { "$$" };
    let script = format!("exec 3<&0 0</dev/null; LISTEN_PID={pid} LISTEN_FDS={count} exec \"$0\" \"$@\"");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg(env!("CARGO_BIN_EXE_berth")).args(args);
    cmd.envs(env.iter().copied());
    match listener {
        Some(fd) => cmd.stdin(Stdio::from(fd)),
        None => cmd.stdin(Stdio::null()),
    };
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start sh");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[berth] {line}");
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let banner = rx.recv_timeout(TIMEOUT).expect("a banner line (or end of output)");
    (child, banner)
}

fn get(mut s: impl Read + Write) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

fn site(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-cli-systemd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "activated").unwrap();
    dir
}

#[test]
fn a_tcp_socket_from_systemd_is_served_instead_of_addr() {
    let dir = site("tcp");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (child, banner) = activated(
        Some(listener.into()),
        1,
        false,
        &[],
        &["serve", dir.to_str().unwrap(), "--addr", "127.0.0.1:1", "--workers", "2", "--log", "warn"],
    );
    assert!(banner.contains(&format!("on http://{addr}/ (2 workers")), "banner: {banner:?}");
    for _ in 0..3 {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let response = get(s);
        assert!(response.starts_with("HTTP/1.1 200 OK") && response.ends_with("activated"), "{response}");
    }
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());
}

#[test]
fn a_unix_socket_from_systemd_is_served() {
    let dir = site("unix");
    let path = dir.join("activated.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (child, banner) = activated(
        Some(listener.into()),
        1,
        false,
        &[],
        &["serve", dir.to_str().unwrap(), "--workers", "1", "--log", "warn"],
    );
    assert!(banner.contains(&format!("on unix:{} (1 worker", path.display())), "banner: {banner:?}");
    let s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let response = get(s);
    assert!(response.starts_with("HTTP/1.1 200 OK") && response.ends_with("activated"), "{response}");
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());
    // The socket file belongs to systemd's socket unit: berth leaves it.
    assert!(path.exists());
}

#[test]
fn listen_variables_meant_for_another_process_are_ignored() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let theirs = listener.local_addr().unwrap();
    let (child, banner) = activated(
        Some(listener.into()),
        1,
        true,
        &[],
        &["echo", "--addr", "127.0.0.1:0", "--workers", "1", "--log", "warn"],
    );
    assert!(banner.contains("on 127.0.0.1:") && !banner.contains(&theirs.to_string()), "banner: {banner:?}");
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());
}

#[test]
fn a_wrong_socket_unit_stops_berth_with_a_reason() {
    // Two sockets: berth serves one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (child, banner) = activated(Some(listener.into()), 2, false, &[], &["echo", "--log", "warn"]);
    assert_eq!(banner, "");
    assert!(!wait_exit(child).success());
    // Descriptor 3 a plain file, not a listening socket.
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let (child, banner) = activated(Some(file.into()), 1, false, &[], &["echo", "--log", "warn"]);
    assert_eq!(banner, "");
    assert!(!wait_exit(child).success());
    // A stream socket that does not listen (a connected one, with a name).
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let connected = std::net::TcpStream::connect(server.local_addr().unwrap()).unwrap();
    let (child, banner) = activated(Some(connected.into()), 1, false, &[], &["echo", "--log", "warn"]);
    assert_eq!(banner, "");
    assert!(!wait_exit(child).success());
}

#[test]
fn readiness_and_stopping_are_told_to_notify_socket() {
    let dir = site("notify");
    let path = dir.join("notify.sock");
    let manager = UnixDatagram::bind(&path).unwrap();
    manager.set_read_timeout(Some(TIMEOUT)).unwrap();
    let notify = path.to_str().unwrap();
    let (child, banner) = activated(
        None,
        0,
        false,
        &[("NOTIFY_SOCKET", notify)],
        &["echo", "--addr", "127.0.0.1:0", "--workers", "1", "--log", "warn"],
    );
    assert!(banner.starts_with("berth: echo on 127.0.0.1:"), "banner: {banner:?}");
    let mut buf = [0u8; 512];
    let n = manager.recv(&mut buf).expect("READY=1");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(ready.contains(&format!("MAINPID={}", child.id())), "{ready:?}");
    signal(&child, Signal::INT);
    let n = manager.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(wait_exit(child).success());
}
