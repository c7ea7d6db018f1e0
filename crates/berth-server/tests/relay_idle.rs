//! An idle relay costs no CPU: with no relay thread and no poll interval, a worker
//! waiting for its lane (no backend yet, or a backend that has nothing to say)
//! sleeps in its completion port, and a backend serving two lanes sleeps in
//! `poll(2)` on their wake descriptors. Measured as the CPU time of those threads
//! (utime + stime from `/proc/self/task/*/stat`), not their context switches: a
//! busy loop that yields would switch often yet still burn a core.
//!
//! Its own test binary, so no other test's `berth-worker-*` threads are counted.

mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use berth_server::{IpcRelay, RelayBackend, RelayConfig};
use common::*;

/// How long each idle phase is measured.
const IDLE: Duration = Duration::from_millis(1500);
/// The most CPU the measured threads may use in a phase, in clock ticks (10 ms):
/// a busy thread would use 150.
const MAX_TICKS: u64 = 15;

/// CPU time (utime + stime, clock ticks) of this process's threads whose name
/// starts with `prefix`.
fn cpu_ticks(prefix: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        // After "pid (comm) ": state is field 3, utime field 14, stime field 15.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        total += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    total
}

/// CPU ticks the threads named `prefix*` use while the test sleeps for [`IDLE`].
fn idle_ticks(prefix: &str) -> u64 {
    let before = cpu_ticks(prefix);
    thread::sleep(IDLE);
    cpu_ticks(prefix) - before
}

#[test]
fn waiting_workers_and_backend_use_no_cpu() {
    let name = format!("berth-relay-idle-{}", std::process::id());
    let relay = IpcRelay::start(RelayConfig::new(&name).max_frame(1024)).expect("relay starts");
    let handle = relay.handle();
    let server = builder().workers(2).serve(relay).expect("server starts");

    // No backend: each worker waits for a hello on its lane (with a look at the
    // lane once a second).
    thread::sleep(Duration::from_millis(200));
    let ticks = idle_ticks("berth-worker");
    assert!(ticks <= MAX_TICKS, "workers waiting for a backend used {ticks} ticks in {IDLE:?}");

    // A backend on both lanes, some traffic, then silence: the workers sleep on
    // their wake descriptors, the backend in poll(2) on its two.
    let mut backend = RelayBackend::attach_retrying(&name, IO_TIMEOUT).expect("backend attaches");
    assert_eq!(backend.lanes(), 2);
    assert!(handle.wait_attached(IO_TIMEOUT));
    let backend = thread::Builder::new()
        .name("relay-backend".into())
        .spawn(move || while backend.echo_one(Some(Duration::from_secs(30))).is_ok() {})
        .unwrap();
    let mut clients: Vec<_> = (0..4).map(|_| client(server.local_addr())).collect();
    for (n, s) in clients.iter_mut().enumerate() {
        for round in 0..20u8 {
            let frame = [0, 0, 0, 2, n as u8, round];
            s.write_all(&frame).unwrap();
            let mut back = [0u8; 6];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, frame);
        }
    }
    let ticks = idle_ticks("berth-worker");
    assert!(ticks <= MAX_TICKS, "workers waiting for replies used {ticks} ticks in {IDLE:?}");
    let ticks = idle_ticks("relay-backend");
    assert!(ticks <= MAX_TICKS, "the backend waiting on two lanes used {ticks} ticks in {IDLE:?}");

    // Still served after the silence.
    clients[0].write_all(&[0, 0, 0, 1, 9]).unwrap();
    let mut back = [0u8; 5];
    clients[0].read_exact(&mut back).unwrap();
    assert_eq!(back, [0, 0, 0, 1, 9]);
    drop(clients);
    server.shutdown(Duration::from_secs(5)).unwrap();
    backend.join().unwrap();
}
