//! Paired rounds for the system benchmarks that set berth's server against a peer's:
//! one round measures every server once, back to back, and a row comes from the
//! round whose own berth/peer ratio is the median, so a fast round of one server is
//! never set against a slow round of the other (this VM's loopback throughput jumps
//! between levels from round to round). A round in which the rest of the machine
//! took more than [`BUSY_LIMIT`] of a core is *disturbed*: retried, and used only
//! when no clean round exists.
//!
//! Also the plumbing those benchmarks share: the CPU samples at the edges of a
//! load's measured window, a child's stdout as a channel of lines, and building the
//! sibling binaries. (`echo_bench` keeps its own copy of the same rules.)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys_bench::{ChildGuard, machine_busy_time, process_cpu_split, process_cpu_time};

/// A round in which something other than the server and the load took more than
/// this share of a core is disturbed.
pub const BUSY_LIMIT: f64 = 0.10;

/// One server measured once: what the load counted and what the server spent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    /// Messages per second over the load's measured window.
    pub msgs_per_s: f64,
    /// Messages completed in the window.
    pub messages: u64,
    /// Round-trip latency quantiles (µs).
    pub p50_us: f64,
    /// See [`p50_us`](Self::p50_us).
    pub p99_us: f64,
    /// The server's CPU time (user + system) over the window, and the user part.
    pub server_cpu: Duration,
    /// See [`server_cpu`](Self::server_cpu).
    pub server_user: Duration,
    /// The load generator's CPU time over the window: near the window's length, the
    /// load (not the server) may be what limits the rate.
    pub load_cpu: Duration,
    /// Wall time between the samples, and CPU time the rest of the machine used in it.
    pub window: Duration,
    /// See [`window`](Self::window).
    pub others_cpu: Duration,
    /// Datagrams sent but never answered within the load's resend timeout, and those
    /// sent, in the window (0 for stream loads).
    pub lost: u64,
    /// See [`lost`](Self::lost).
    pub sent: u64,
}

impl Round {
    /// How much of a core others took during the round.
    pub fn others_share(&self) -> f64 {
        share(self.others_cpu, self.window)
    }

    /// How much of its core the load used.
    pub fn load_share(&self) -> f64 {
        share(self.load_cpu, self.window)
    }

    /// Whether the rest of the machine took too much of it.
    pub fn disturbed(&self) -> bool {
        self.others_share() > BUSY_LIMIT
    }

    /// The server's CPU time per message, in µs.
    pub fn server_cpu_us_per_msg(&self) -> f64 {
        if self.messages == 0 { 0.0 } else { self.server_cpu.as_secs_f64() * 1e6 / self.messages as f64 }
    }

    /// The share of the server's CPU time spent in user space.
    pub fn server_user_share(&self) -> f64 {
        let cpu = self.server_cpu.as_secs_f64();
        if cpu > 0.0 { self.server_user.as_secs_f64() / cpu } else { 0.0 }
    }

    /// Lost datagrams per million sent.
    pub fn lost_ppm(&self) -> f64 {
        if self.sent == 0 { 0.0 } else { self.lost as f64 * 1e6 / self.sent as f64 }
    }
}

fn share(part: Duration, whole: Duration) -> f64 {
    let w = whole.as_secs_f64();
    if w > 0.0 { part.as_secs_f64() / w } else { 0.0 }
}

/// berth and one peer measured in the same round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    /// berth's server.
    pub berth: Round,
    /// The peer's server.
    pub peer: Round,
}

impl Pair {
    /// Either side disturbed.
    pub fn disturbed(&self) -> bool {
        self.berth.disturbed() || self.peer.disturbed()
    }

    /// berth's messages per second over the peer's (> 1: berth served more).
    pub fn rate_ratio(&self) -> f64 {
        ratio(self.berth.msgs_per_s, self.peer.msgs_per_s)
    }

    /// The peer's server CPU per message over berth's (> 1: berth used less).
    pub fn cpu_ratio(&self) -> f64 {
        ratio(self.peer.server_cpu_us_per_msg(), self.berth.server_cpu_us_per_msg())
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The rounds a comparison's rows come from: for each figure, the round whose ratio
/// is the median over the clean rounds (over all rounds if none is clean).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compared {
    /// The round at the median of [`Pair::rate_ratio`].
    pub rate: Pair,
    /// The round at the median of [`Pair::cpu_ratio`].
    pub cpu: Pair,
}

impl Compared {
    /// `None` for no rounds.
    pub fn of(all: &[Pair]) -> Option<Compared> {
        let pairs = clean(all);
        Some(Compared { rate: median_pair(&pairs, Pair::rate_ratio)?, cpu: median_pair(&pairs, Pair::cpu_ratio)? })
    }
}

/// The clean pairs, or all of them if none is clean.
fn clean(all: &[Pair]) -> Vec<Pair> {
    let clean: Vec<Pair> = all.iter().filter(|p| !p.disturbed()).copied().collect();
    if clean.is_empty() { all.to_vec() } else { clean }
}

/// The pair at the median of `key`; for an even count the lower of the middle two,
/// the one less favourable to berth. `None` for no pairs.
pub fn median_pair(pairs: &[Pair], key: fn(&Pair) -> f64) -> Option<Pair> {
    let mut sorted = pairs.to_vec();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted.get(sorted.len().checked_sub(1)? / 2).copied()
}

/// The lowest and highest of `key` over the clean pairs (all if none is clean).
pub fn spread(all: &[Pair], key: fn(&Pair) -> f64) -> (f64, f64) {
    let values: Vec<f64> = clean(all).iter().map(key).collect();
    (values.iter().copied().fold(f64::INFINITY, f64::min), values.iter().copied().fold(0.0, f64::max))
}

/// The median (the mean of the middle two for an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// CPU times taken together at one instant, at an edge of a measured window.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When.
    pub at: Instant,
    /// The server's user + system time, and its user part.
    pub server: Duration,
    /// See [`server`](Self::server).
    pub server_user: Duration,
    /// The load's CPU time.
    pub load: Duration,
    /// The whole machine's busy time.
    pub machine: Duration,
}

impl Sample {
    /// Reads `/proc` for the server, the load and the machine.
    pub fn take(server_pid: u32, load_pid: u32) -> Result<Sample, String> {
        let machine = machine_busy_time().map_err(|e| format!("machine cpu time: {e}"))?;
        let (server_user, server_system) =
            process_cpu_split(server_pid).map_err(|e| format!("server cpu time: {e}"))?;
        let load = process_cpu_time(load_pid).map_err(|e| format!("load cpu time: {e}"))?;
        Ok(Sample { at: Instant::now(), server: server_user + server_system, server_user, load, machine })
    }

    /// CPU time used since `start` by everything but the server and the load.
    pub fn others_since(&self, start: &Sample) -> Duration {
        let ours = self.server.saturating_sub(start.server) + self.load.saturating_sub(start.load);
        self.machine.saturating_sub(start.machine).saturating_sub(ours)
    }
}

/// Forwards the lines a child prints on stdout to a channel, until it closes its
/// stdout; keeps draining after the receiver is gone so the child never blocks.
pub fn stdout_lines(child: &mut ChildGuard) -> Result<Receiver<String>, String> {
    let stdout = child.child_mut().stdout.take().ok_or("child stdout not piped")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    Ok(rx)
}

/// The next line from `rx` before `deadline`.
pub fn next_line(rx: &Receiver<String>, deadline: Instant, what: &str) -> Result<String, String> {
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(line) => Ok(line),
        Err(RecvTimeoutError::Timeout) => Err(format!("timed out waiting for {what}")),
        Err(RecvTimeoutError::Disconnected) => Err(format!("process exited before {what}")),
    }
}

/// Waits for one exact line: anything else is a protocol error.
pub fn expect_line(rx: &Receiver<String>, deadline: Instant, want: &str) -> Result<(), String> {
    let line = next_line(rx, deadline, &format!("`{want}`"))?;
    if line == want { Ok(()) } else { Err(format!("expected `{want}`, got {line:?}")) }
}

/// Makes sure the binaries `bins` of this package next to this executable are built
/// and up to date: under cargo (`CARGO` is set) it asks cargo to build them in the
/// same profile; otherwise they must already exist.
pub fn build_siblings(exe_dir: &Path, bins: &[&str]) -> Result<(), String> {
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "berth-benches"]);
        match exe_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(profile) => {
                cmd.args(["--profile", profile]);
            }
            None => return Err(format!("cannot tell the cargo profile of {}", exe_dir.display())),
        }
        for bin in bins {
            cmd.args(["--bin", bin]);
        }
        let status = cmd.status().map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build of {bins:?} failed: {status}"));
        }
    }
    for bin in bins {
        if !exe_dir.join(bin).is_file() {
            return Err(format!(
                "{} not found: build it with `cargo build --release -p berth-benches --bins`",
                exe_dir.join(bin).display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(msgs_per_s: f64, messages: u64, cpu_ms: u64, others_ms: u64) -> Round {
        Round {
            msgs_per_s,
            messages,
            p50_us: 1.0,
            p99_us: 2.0,
            server_cpu: Duration::from_millis(cpu_ms),
            server_user: Duration::from_millis(cpu_ms / 4),
            load_cpu: Duration::from_millis(500),
            window: Duration::from_secs(1),
            others_cpu: Duration::from_millis(others_ms),
            lost: 3,
            sent: 1_000_000,
        }
    }

    #[test]
    fn rows_come_from_the_median_round_and_disturbed_rounds_are_left_out() {
        let r = |rate: f64| round(rate, rate as u64 * 10, 1000, 0);
        let pairs = [
            Pair { berth: r(220.0), peer: r(200.0) },
            Pair { berth: r(110.0), peer: r(100.0) },
            Pair { berth: r(110.0), peer: r(100.0) },
            Pair { berth: r(220.0), peer: r(100.0) },
            Pair { berth: r(220.0), peer: r(100.0) },
        ];
        let c = Compared::of(&pairs).unwrap();
        assert!((c.rate.rate_ratio() - 1.1).abs() < 1e-9);
        assert!((c.cpu.cpu_ratio() - 1.1).abs() < 1e-9);
        let mut noisy = pairs.to_vec();
        for _ in 0..2 {
            noisy.push(Pair { berth: round(900.0, 9000, 1000, 0), peer: round(100.0, 1000, 1000, 600) });
        }
        assert!((Compared::of(&noisy).unwrap().rate.rate_ratio() - 1.1).abs() < 1e-9);
        assert_eq!(spread(&noisy, Pair::rate_ratio), (1.1, 2.2));
        let two = [
            Pair { berth: round(100.0, 1, 1, 0), peer: round(100.0, 1, 1, 0) },
            Pair { berth: round(300.0, 1, 1, 0), peer: round(100.0, 1, 1, 0) },
        ];
        assert_eq!(Compared::of(&two).unwrap().rate.rate_ratio(), 1.0);
        assert!(Compared::of(&[]).is_none());
    }

    #[test]
    fn round_figures() {
        let r = round(100.0, 2000, 10, 200);
        assert_eq!(r.server_cpu_us_per_msg(), 5.0);
        assert_eq!(r.server_user_share(), 0.2);
        assert_eq!(r.load_share(), 0.5);
        assert_eq!(r.lost_ppm(), 3.0);
        assert!(r.disturbed());
        assert!(!round(1.0, 1, 1, 50).disturbed());
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
