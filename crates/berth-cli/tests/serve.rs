//! The built `berth` binary: `serve DIR --addr 127.0.0.1:0` prints its banner with the
//! real address, serves the directory's index.html, prints its metrics on SIGUSR1,
//! and exits 0 on SIGINT.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;

mod common;

use common::{TIMEOUT, start_capturing, wait_for_line};

#[test]
fn serve_banner_get_and_sigint() {
    let dir = std::env::temp_dir().join(format!("berth-cli-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>berth cli</h1>").unwrap();

    let (mut child, banner, stderr) =
        start_capturing(&["serve", dir.to_str().unwrap(), "--addr", "127.0.0.1:0", "--workers", "1", "--log", "warn"]);
    let expected = format!("berth: serving {} on http://127.0.0.1:", dir.display());
    assert!(banner.starts_with(&expected), "banner: {banner:?}");
    assert!(banner.trim_end().ends_with("/ (1 worker)"), "banner: {banner:?}");
    let addr: SocketAddr = banner[expected.len() - "127.0.0.1:".len()..]
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {banner:?}"));

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\n<h1>berth cli</h1>"), "{response}");

    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::USR1).unwrap();
    let stats = wait_for_line(&stderr, "berth: conns open=");
    assert!(stats.contains("accepted=1 ") && stats.contains("replies=1 "), "stats after SIGUSR1: {stats}");

    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(TIMEOUT).expect("berth exits after SIGINT").unwrap();
    assert!(status.success(), "exit status {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's first command, as a newcomer runs it: `berth serve` in the checkout
/// (no DIR: the current directory) answers `/` with the checkout's index.html.
#[test]
fn serve_in_the_checkout_answers_slash_with_its_index_html() {
    let checkout = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let index = std::fs::read_to_string(checkout.join("index.html")).expect("index.html at the checkout's top");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--addr", "127.0.0.1:0", "--workers", "1", "--log", "warn"])
        .current_dir(&checkout)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start berth");
    let mut banner = String::new();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut banner);
        let _ = tx.send(banner);
    });
    let banner = rx.recv_timeout(TIMEOUT).expect("a banner line");
    assert!(banner.starts_with("berth: serving . on http://127.0.0.1:"), "banner: {banner:?}");
    let addr: SocketAddr = banner.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap().parse().unwrap();

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("Content-Type: text/html"), "{response}");
    assert!(response.ends_with(&format!("\r\n\r\n{index}")), "{response}");

    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(TIMEOUT).expect("berth exits after SIGINT").unwrap();
    assert!(status.success(), "exit status {status:?}");
}
