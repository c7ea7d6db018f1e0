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
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start berth");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let banner = rx.recv_timeout(TIMEOUT).expect("a banner line");
    (child, banner)
}
