//! Shared by the tests that run the built `berth` binary.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

/// Every wait on the child is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `berth ARGS` and returns it with its first stdout line (the banner).
pub fn start(args: &[&str]) -> (Child, String) {
    let (child, banner, _stderr) = start_capturing(args);
    (child, banner)
}

/// As [`start`], and the child's stderr lines as they come (also copied to the
/// test's stderr). Dropping the receiver is fine: the lines are still drained.
pub fn start_capturing(args: &[&str]) -> (Child, String, mpsc::Receiver<String>) {
    start_in(None, args)
}

/// As [`start_capturing`], in the working directory `cwd` if given.
pub fn start_in(cwd: Option<&Path>, args: &[&str]) -> (Child, String, mpsc::Receiver<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start berth");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[berth] {line}");
            let _ = err_tx.send(line);
        }
    });
    let banner = rx.recv_timeout(TIMEOUT).expect("a banner line");
    (child, banner, err_rx)
}

/// Waits (bounded by [`TIMEOUT`]) for a stderr line containing `needle`.
pub fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no stderr line with {needle:?}: {e}"),
        }
    }
}

/// The address in a banner: what follows `http://` (or, without it, the last word
/// before ` (`) up to the next `/` or space.
pub fn banner_addr(banner: &str) -> SocketAddr {
    let rest = match banner.split_once("http://") {
        Some((_, rest)) => rest,
        None => banner.rsplit_once(" on ").map_or(banner, |(_, r)| r),
    };
    rest.split(['/', ' ']).next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no address in {banner:?}"))
}

/// `GET path` with `Connection: close`; the whole response as text.
pub fn get_close(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

pub fn signal(child: &Child, sig: Signal) {
    kill_process(Pid::from_raw(child.id() as i32).unwrap(), sig).unwrap();
}

/// Waits (bounded by [`TIMEOUT`]) for the child to exit.
pub fn wait_exit(mut child: Child) -> ExitStatus {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    rx.recv_timeout(TIMEOUT).expect("berth exits").unwrap()
}
