//! Shared by the tests that run the built `berth` binary.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start berth");
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
