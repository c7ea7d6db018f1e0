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
