//! `--addr unix:…`: `berth serve` and `berth echo` on a Unix socket file and on an
//! abstract name; a stale socket file refused unless `--replace-stale-socket`; the
//! socket file gone after SIGINT.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use rustix::process::Signal;

mod common;

use common::{TIMEOUT, signal, start, start_capturing, wait_exit, wait_for_line};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-cli-unix-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect to the socket file");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

#[test]
fn serve_on_a_socket_file_answers_and_removes_the_file_at_exit() {
    let dir = scratch("serve");
    std::fs::write(dir.join("index.html"), "<h1>over a unix socket</h1>").unwrap();
    let sock = dir.join("berth.sock");
    let addr = format!("unix:{}", sock.display());
    let (child, banner) = start(&["serve", dir.to_str().unwrap(), "--addr", &addr, "--workers", "2", "--log", "warn"]);
    assert!(banner.contains(&format!(" on {addr} (2 workers, ")), "banner: {banner:?}");
    // Several requests: either worker may take each connection.
    for _ in 0..4 {
        let mut s = connect(&sock);
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\n<h1>over a unix socket</h1>"), "{response}");
    }
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());
    assert!(!sock.exists(), "the socket file outlived the server");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn echo_on_an_abstract_name() {
    let name = format!("berth-cli-test-{}", std::process::id());
    let addr = format!("unix:@{name}");
    let (child, banner) = start(&["echo", "--addr", &addr, "--workers", "1", "--log", "warn"]);
    assert!(banner.contains(&format!(" on {addr} (1 worker, ")), "banner: {banner:?}");
    use std::os::linux::net::SocketAddrExt;
    let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut s = UnixStream::connect_addr(&sa).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"echo me").unwrap();
    let mut got = [0u8; 7];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"echo me");
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());
}

#[test]
fn a_stale_socket_file_is_refused_unless_replacing_is_asked() {
    let dir = scratch("stale");
    let sock = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let addr = format!("unix:{}", sock.display());
    let (child, banner, stderr) = start_capturing(&["echo", "--addr", &addr, "--workers", "1", "--log", "warn"]);
    assert_eq!(banner, "", "started on a stale socket file");
    let line = wait_for_line(&stderr, "stale socket file");
    assert!(line.contains(&sock.display().to_string()), "{line}");
    assert!(!wait_exit(child).success());
    assert!(sock.exists(), "the file was removed without being asked to");

    let (child, banner) =
        start(&["echo", "--addr", &addr, "--replace-stale-socket", "--workers", "1", "--log", "warn"]);
    assert!(banner.contains(&addr), "banner: {banner:?}");
    let mut s = connect(&sock);
    s.write_all(b"x").unwrap();
    let mut got = [0u8; 1];
    s.read_exact(&mut got).unwrap();
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());
    let _ = std::fs::remove_dir_all(&dir);
}
