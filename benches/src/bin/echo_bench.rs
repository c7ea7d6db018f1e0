//! `echo_bench`: berth's echo server against tokio's, side by side in one run.
//!
//! For each case (64 B messages over 16, 64 and 256 connections, 4 KiB over 64) and
//! each server — berth on io_uring, tokio, berth on its epoll driver, and compio (a
//! completion runtime on io_uring, `compio_echo`) — a fresh
//! server process is started pinned to one core and `berth_load` drives it from the
//! other core with ping-pong connections; the server's CPU time (utime + stime from `/proc/<pid>/stat`)
//! is sampled at the edges of the load's measured window, giving the CPU time per
//! message. Then the idle test: a fresh server gets 15,000 connections that never send
//! (`--quick`: 3,000) and the growth of its resident set is measured. Cases run
//! interleaved (case by case; in each round every server, who goes first rotating)
//! so drift on a shared machine hits all alike, and each row comes from the round
//! whose own berth/peer ratio is the median (see [`Pair`]). A separate, untimed pass
//! counts the syscalls per message of berth and tokio with `perf stat` (skipped, and
//! said so, where perf is missing).
//!
//! ```text
//! echo_bench [--quick] [--self-test] [--case LABEL/NconnS] [--rounds N]
//! ```
//!
//! Every round prints the server's busy share (its CPU time over the round's wall
//! time): an event-driven server below ~90% busy while its clients have messages
//! outstanding was waiting for something (issue 20). `--case 4KiB/64conns` runs only
//! that case and `--rounds N` sets its rounds (fresh servers each); such a
//! diagnostic run skips the syscall and idle passes and writes no rows.
//!
//! Rows (appended to `berth_benches::results_path()`): per case
//! `echo/{64B,4KiB}/{N}conns/msgs_per_s` and `.../server_cpu_us_per_msg` (peer
//! `tokio`), `.../server_cpu_us_per_msg_vs_epoll` (peer `berth_epoll`) and
//! `.../server_cpu_us_per_msg_vs_compio` (peer `compio`);
//! `echo/64B/64conns/syscalls_per_msg` (peer `tokio`); `echo/idle15k/rss_mib`.
//! In [`ASYNC_CASE`] only, berth-async's echo (`berth_async_echo`, server
//! `berth_async`, on berth's driver) is measured too, giving
//! `echo_async/64B/64conns/server_cpu_us_per_msg` (peer `tokio`), `..._vs_port`
//! (peer `berth`: the same echo on the raw completion port, what async/await costs)
//! and `..._vs_compio` (peer `compio`).
//! Where io_uring cannot run, berth is its epoll driver and the `_vs_epoll` rows are
//! left out.
//!
//! A server is any binary that takes `--addr HOST:PORT`, prints `listening on ADDR`
//! as its first line on stdout, echoes every byte back and runs until killed. Both the
//! servers and `berth_load` are looked up next to this executable; berth's is named
//! `berth_echo`. Until it exists, no berth rows can be measured and the run says so
//! and writes nothing. `--self-test` runs the whole pipeline with the tokio server on
//! both sides (and writes no rows), to check the harness itself.
//!
//! Pinning uses `sched_setaffinity` (rustix): a child inherits the mask of the thread
//! that spawns it, so every thread of the server is on its core from the start. Every
//! child is killed when its guard drops, and every wait has a deadline.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::{Duration, Instant};

use berth_benches::paired::{BUSY_LIMIT, build_siblings, expect_line, median, next_line, stdout_lines};
use berth_benches::sys_bench::{
    ChildGuard, available_cores, machine_busy_time, open_fds, pin_current_thread, process_cpu_split, process_cpu_time,
    raise_nofile, rss_kib, spawn_pinned,
};
use berth_benches::{Better, Row, append_rows, results_path};

/// Throughput cases: (message label in the bench id, bytes, ping-pong connections).
const CASES: &[(&str, usize, usize)] = &[("64B", 64, 16), ("64B", 64, 64), ("64B", 64, 256), ("4KiB", 4096, 64)];
/// The one case berth-async's echo server is measured in (rows `echo_async/...`).
const ASYNC_CASE: (&str, usize, usize) = ("64B", 64, 64);
/// The case whose syscalls per message are counted (in a separate, untimed pass).
const SYSCALL_CASE: (&str, usize, usize) = ("64B", 64, 64);
/// Idle connections in the memory case (`--quick`: [`IDLE_QUICK`]).
const IDLE_FULL: usize = 15_000;
const IDLE_QUICK: usize = 3_000;
/// Descriptors kept free beyond the idle connections (stdio, pipes, listener, epoll).
const FD_SLACK: u64 = 256;
/// Disturbed rounds (see [`BUSY_LIMIT`]) are retried up to this many times the
/// rounds wanted, and used only if there are no clean ones.
const MAX_ATTEMPTS: usize = 3;
/// How long a server may take to print its address.
const STARTUP: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    berth_benches::sys_bench::exit_code("echo_bench", run())
}

/// The command line and what follows from it.
#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    self_test: bool,
    /// Rounds per throughput case; each round measures every server once.
    rounds: usize,
    /// Seconds of measurement and of warm-up per round.
    secs: f64,
    warmup: f64,
    idle: usize,
    exe_dir: PathBuf,
    server_core: Option<usize>,
    load_core: Option<usize>,
}

/// A server to measure: a name for the report and how to start it.
#[derive(Debug, Clone)]
struct ServerSpec {
    name: String,
    program: PathBuf,
    args: Vec<String>,
}

/// One round of a throughput case against one server.
#[derive(Debug, Clone, Copy)]
struct EchoResult {
    msgs_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    messages: u64,
    server_cpu: Duration,
    /// The part of `server_cpu` spent in user space (the rest is the kernel's).
    server_user: Duration,
    /// Times the server went to sleep, and the load's CPU time: a server that
    /// sleeps while the load is busy all the time waits for its clients.
    server_sleeps: u64,
    load_cpu: Duration,
    /// CPU time of the `ksoftirqd` threads (part of `others_cpu`).
    softirq_threads: Duration,
    /// Wall time between the samples, and CPU time the rest of the machine (neither
    /// the server nor the load) used in it.
    window: Duration,
    others_cpu: Duration,
}

impl EchoResult {
    /// How much of a core others took during the round.
    fn others_share(&self) -> f64 {
        let w = self.window.as_secs_f64();
        if w > 0.0 { self.others_cpu.as_secs_f64() / w } else { 0.0 }
    }

    fn disturbed(&self) -> bool {
        self.others_share() > BUSY_LIMIT
    }

    /// The server's CPU time over the round's wall time: 1.0 is a core kept busy.
    fn busy_share(&self) -> f64 {
        let w = self.window.as_secs_f64();
        if w > 0.0 { self.server_cpu.as_secs_f64() / w } else { 0.0 }
    }

    /// The load's CPU time over the round's wall time.
    fn load_share(&self) -> f64 {
        let w = self.window.as_secs_f64();
        if w > 0.0 { self.load_cpu.as_secs_f64() / w } else { 0.0 }
    }

    /// The `ksoftirqd` threads' CPU time over the round's wall time.
    fn softirq_share(&self) -> f64 {
        let w = self.window.as_secs_f64();
        if w > 0.0 { self.softirq_threads.as_secs_f64() / w } else { 0.0 }
    }

    fn sleeps_per_msg(&self) -> f64 {
        if self.messages == 0 { 0.0 } else { self.server_sleeps as f64 / self.messages as f64 }
    }

    fn server_cpu_us_per_msg(&self) -> f64 {
        if self.messages == 0 { 0.0 } else { self.server_cpu.as_secs_f64() * 1e6 / self.messages as f64 }
    }

    /// The share of the server's CPU time spent in user space: what the server's own
    /// code (rather than the kernel's TCP path) can change at most.
    fn server_user_share(&self) -> f64 {
        let cpu = self.server_cpu.as_secs_f64();
        if cpu > 0.0 { self.server_user.as_secs_f64() / cpu } else { 0.0 }
    }
}

/// A throughput case against one server over all rounds: medians, so that a round
/// disturbed by something else on the machine does not decide the result.
#[derive(Debug, Clone, Copy, PartialEq)]
struct EchoSummary {
    msgs_per_s: f64,
    server_cpu_us_per_msg: f64,
    server_user_share: f64,
    p50_us: f64,
    p99_us: f64,
    /// The slowest and fastest round used, to show the spread.
    min_msgs_per_s: f64,
    max_msgs_per_s: f64,
    /// Rounds used (the clean ones if any, else all) and rounds measured.
    used: usize,
    measured: usize,
}

impl EchoSummary {
    fn of(all: &[EchoResult]) -> EchoSummary {
        let clean: Vec<EchoResult> = all.iter().filter(|r| !r.disturbed()).copied().collect();
        let rounds = if clean.is_empty() { all } else { &clean };
        let med = |f: fn(&EchoResult) -> f64| median(rounds.iter().map(f).collect());
        let rate = |r: &EchoResult| r.msgs_per_s;
        EchoSummary {
            msgs_per_s: med(rate),
            server_cpu_us_per_msg: med(EchoResult::server_cpu_us_per_msg),
            server_user_share: med(EchoResult::server_user_share),
            p50_us: med(|r| r.p50_us),
            p99_us: med(|r| r.p99_us),
            min_msgs_per_s: rounds.iter().map(rate).fold(f64::INFINITY, f64::min),
            max_msgs_per_s: rounds.iter().map(rate).fold(0.0, f64::max),
            used: rounds.len(),
            measured: all.len(),
        }
    }
}

/// One round of a throughput case: each server measured once, back to back (who
/// goes first alternates between rounds), so both saw the same machine.
///
/// This VM's loopback throughput jumps between two levels from one round to the
/// next (about 1.6x apart, for tokio and berth alike, seemingly with where the
/// hypervisor runs the two vCPUs). Medians taken over each server's rounds
/// separately can then compare a fast round of one with a slow round of the other;
/// the ratio of each round's own pair cannot.
#[derive(Debug, Clone, Copy)]
struct Pair {
    berth: EchoResult,
    /// tokio, or berth on its epoll driver.
    peer: EchoResult,
}

impl Pair {
    fn disturbed(&self) -> bool {
        self.berth.disturbed() || self.peer.disturbed()
    }

    /// berth's messages per second over the peer's (> 1: berth served more).
    fn rate_ratio(&self) -> f64 {
        ratio(self.berth.msgs_per_s, self.peer.msgs_per_s)
    }

    /// The peer's server CPU per message over berth's (> 1: berth used less).
    fn cpu_ratio(&self) -> f64 {
        ratio(self.peer.server_cpu_us_per_msg(), self.berth.server_cpu_us_per_msg())
    }
}

/// One throughput case's outcome: berth against tokio, against itself on epoll,
/// and against compio (another io_uring completion runtime).
#[derive(Debug, Clone, Copy)]
struct Case {
    label: &'static str,
    conns: usize,
    vs_tokio: Compared,
    vs_epoll: Option<Compared>,
    vs_compio: Option<Compared>,
    /// berth-async's echo in [`ASYNC_CASE`], where it was measured.
    async_vs: Option<AsyncCompared>,
}

/// berth-async's echo server against tokio, the raw port (`berth`) and compio.
#[derive(Debug, Clone, Copy)]
struct AsyncCompared {
    tokio: Compared,
    port: Option<Compared>,
    compio: Option<Compared>,
}

/// Syscalls per message of berth and tokio, counted in an untimed pass.
#[derive(Debug, Clone, Copy)]
struct Syscalls {
    berth: f64,
    tokio: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The rounds a case's rows come from: for each figure, the round whose berth/tokio
/// ratio is the median over the clean rounds (over all rounds if none is clean).
#[derive(Debug, Clone, Copy)]
struct Compared {
    rate: Pair,
    cpu: Pair,
}

impl Compared {
    fn of(all: &[Pair]) -> Option<Compared> {
        let clean: Vec<Pair> = all.iter().filter(|p| !p.disturbed()).copied().collect();
        let pairs = if clean.is_empty() { all } else { &clean };
        Some(Compared { rate: median_pair(pairs, Pair::rate_ratio)?, cpu: median_pair(pairs, Pair::cpu_ratio)? })
    }
}

/// The pair at the median of `key`; for an even count the lower of the middle two,
/// the one less favourable to berth. `None` for no pairs.
fn median_pair(pairs: &[Pair], key: fn(&Pair) -> f64) -> Option<Pair> {
    let mut sorted = pairs.to_vec();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted.get(sorted.len().checked_sub(1)? / 2).copied()
}

/// The idle case against one server.
#[derive(Debug, Clone, Copy)]
struct IdleResult {
    conns: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
}

impl IdleResult {
    fn growth_mib(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / 1024.0
    }
}

fn run() -> Result<(), String> {
    const USAGE: &str = "usage: echo_bench [--quick] [--self-test] [--case LABEL/NconnS] [--rounds N]";
    let mut quick = false;
    let mut self_test = false;
    let mut only_case: Option<String> = None;
    let mut rounds: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--self-test" => self_test = true,
            "--case" => only_case = Some(args.next().ok_or(USAGE)?),
            "--rounds" => {
                let n = args.next().ok_or(USAGE)?;
                rounds = Some(n.parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("--rounds {n}: not a count"))?);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let cases: Vec<(&str, usize, usize)> = match &only_case {
        None => CASES.to_vec(),
        Some(name) => {
            let found: Vec<_> =
                CASES.iter().copied().filter(|(label, _, conns)| format!("{label}/{conns}conns") == *name).collect();
            if found.is_empty() {
                let known: Vec<String> = CASES.iter().map(|(l, _, c)| format!("{l}/{c}conns")).collect();
                return Err(format!("--case {name}: no such case (known: {})", known.join(", ")));
            }
            found
        }
    };
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let exe_dir = exe.parent().ok_or("current_exe has no parent")?.to_path_buf();

    // If berth's server is a binary of this package, build it along with the others.
    let berth_in_package = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/berth_echo.rs").is_file();
    let berth_echo = exe_dir.join("berth_echo");
    if self_test || berth_in_package || berth_echo.is_file() {
        let mut bins = vec!["berth_load", "tokio_echo", "compio_echo"];
        if berth_in_package {
            bins.push("berth_echo");
        }
        if Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/berth_async_echo.rs").is_file() {
            bins.push("berth_async_echo");
        }
        build_siblings(&exe_dir, &bins)?;
    }
    let tokio = ServerSpec { name: "tokio".into(), program: exe_dir.join("tokio_echo"), args: vec![] };
    let berth = if self_test {
        println!("echo_bench: self-test: tokio_echo stands in for berth; no rows are written");
        ServerSpec { name: "berth(tokio)".into(), ..tokio.clone() }
    } else if berth_echo.is_file() {
        ServerSpec { name: "berth".into(), program: berth_echo.clone(), args: vec!["--driver".into(), "uring".into()] }
    } else {
        println!(
            "echo_bench: skipped berth: berth_echo not built yet (it arrives with berth-reactor); no rows written"
        );
        println!("echo_bench: `echo_bench --self-test` checks the harness with tokio on both sides");
        return Ok(());
    };

    let cores = available_cores().map_err(|e| format!("sched_getaffinity: {e}"))?;
    let (server_core, load_core) = match cores.as_slice() {
        [] => (None, None),
        [only] => {
            println!("echo_bench: only cpu {only} is allowed: server and load share it (results are not comparable)");
            (Some(*only), Some(*only))
        }
        [first, second, ..] => (Some(*first), Some(*second)),
    };
    if let Some(core) = load_core {
        // This thread opens the idle connections and spawns the load: keep it off the server's core.
        pin_current_thread(core).map_err(|e| format!("pin to cpu {core}: {e}"))?;
    }

    let wanted_idle = if quick { IDLE_QUICK } else { IDLE_FULL };
    let limit = raise_nofile(wanted_idle as u64 + FD_SLACK).map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let idle = if limit >= wanted_idle as u64 + FD_SLACK {
        wanted_idle
    } else {
        let scaled = limit.saturating_sub(FD_SLACK) as usize;
        println!(
            "echo_bench: RLIMIT_NOFILE hard limit is {limit}: idle test scaled down from {wanted_idle} to {scaled} connections"
        );
        scaled
    };
    let cfg = Config {
        quick,
        self_test,
        rounds: rounds.unwrap_or(if quick { 3 } else { 9 }),
        // Many short rounds rather than a few long ones: the machine's state changes
        // every few seconds, and more pairs make their median steadier.
        secs: 1.0,
        warmup: if quick { 0.3 } else { 0.5 },
        idle,
        exe_dir,
        server_core,
        load_core,
    };
    println!(
        "echo_bench: server on cpu {}, load on cpu {} (sched_setaffinity via rustix); \
         {} rounds of {} s per case (each row from the round with the median berth/peer ratio), each after {} s warm-up; idle test {} connections; RLIMIT_NOFILE {limit}",
        show_core(cfg.server_core),
        show_core(cfg.load_core),
        cfg.rounds,
        cfg.secs,
        cfg.warmup,
        cfg.idle,
    );

    // berth runs on io_uring and is measured against tokio and against itself on
    // epoll; where io_uring cannot run, berth is its epoll driver and the rows
    // against epoll are left out.
    let mut berth = berth;
    let mut berth_epoll = None;
    if !self_test {
        let epoll = ServerSpec {
            name: "berth_epoll".into(),
            program: berth.program.clone(),
            args: vec!["--driver".into(), "epoll".into()],
        };
        if start_server(&cfg, &berth).is_ok() {
            berth_epoll = Some(epoll);
        } else {
            println!("echo_bench: io_uring cannot run here: berth runs on epoll, no rows against epoll");
            berth = ServerSpec { name: "berth".into(), ..epoll };
        }
    }
    let mut servers = vec![berth, tokio];
    servers.extend(berth_epoll);
    let compio_echo = cfg.exe_dir.join("compio_echo");
    if !self_test && compio_echo.is_file() {
        servers.push(ServerSpec { name: "compio".into(), program: compio_echo, args: vec![] });
    }
    if only_case.is_some() && !self_test {
        // A diagnostic run also measures the plainest event loop there is: what any
        // server gets from this machine (issue 20).
        match berth_benches::sys_bench::compile_c(&cfg.exe_dir, "epoll_echo.c", "c_epoll_echo") {
            Ok(program) => servers.push(ServerSpec { name: "c_epoll".into(), program, args: vec![] }),
            Err(e) => println!("echo_bench: no plain C epoll echo in this run: {e}"),
        }
    }
    // Last, so that the cases it sits out leave the others' positions in each round as they are.
    let async_echo = cfg.exe_dir.join("berth_async_echo");
    if !self_test && async_echo.is_file() {
        let driver = servers[0].args.clone();
        let mut compat = driver.clone();
        compat.push("--compat".into());
        servers.push(ServerSpec { name: "berth_async".into(), program: async_echo.clone(), args: driver });
        // The same through `Compat` and tokio's traits: what the adapter's copies cost.
        servers.push(ServerSpec { name: "berth_async_compat".into(), program: async_echo, args: compat });
    }
    let position = |name: &str| servers.iter().position(|s| s.name == name);
    let (epoll_at, compio_at) = (position("berth_epoll"), position("compio"));
    let async_at = position("berth_async");
    let compat_at = position("berth_async_compat");
    let mut results = Vec::new();
    for &(label, size, conns) in &cases {
        let mut rounds: Vec<Vec<EchoResult>> = Vec::new();
        let clean = |rounds: &[Vec<EchoResult>]| rounds.iter().filter(|r| !r.iter().any(EchoResult::disturbed)).count();
        for round in 0..cfg.rounds * MAX_ATTEMPTS {
            if clean(&rounds) >= cfg.rounds {
                break;
            }
            // Rotate who goes first, so none always runs on a warmer machine.
            let n = servers.len();
            let mut measured = vec![None; n];
            for k in 0..n {
                let i = (round + k) % n;
                let spec = &servers[i];
                if (Some(i) == async_at || Some(i) == compat_at) && (label, size, conns) != ASYNC_CASE {
                    continue;
                }
                let r = measure_echo(&cfg, spec, size, conns).map_err(|e| format!("{} {label}: {e}", spec.name))?;
                println!(
                    "  round {round} echo/{label}/{conns}conns {:<12} {:>9.0} msgs/s  p99 {:>7.1} us  server busy {:>3.0}% \
                     ({:.3} sleeps/msg), load busy {:>3.0}%, ksoftirqd {:.0}%  server cpu {:.2} us/msg ({:.0}% user; {} msgs, {:.2} s cpu); \
                     others {:.0}% of a core{}",
                    spec.name,
                    r.msgs_per_s,
                    r.p99_us,
                    r.busy_share() * 100.0,
                    r.sleeps_per_msg(),
                    r.load_share() * 100.0,
                    r.softirq_share() * 100.0,
                    r.server_cpu_us_per_msg(),
                    r.server_user_share() * 100.0,
                    r.messages,
                    r.server_cpu.as_secs_f64(),
                    r.others_share() * 100.0,
                    if r.disturbed() { " (disturbed)" } else { "" },
                );
                measured[i] = Some(r);
            }
            rounds.push(measured.into_iter().flatten().collect());
        }
        if clean(&rounds) < cfg.rounds {
            println!(
                "echo_bench: warning: {label}/{conns}conns: the machine was busy with other work; {} of {} rounds \
                 clean, throughput is unreliable (server cpu per message much less so)",
                clean(&rounds),
                rounds.len(),
            );
        }
        let column = |i: usize| rounds.iter().filter_map(|r| r.get(i).copied()).collect::<Vec<_>>();
        for (i, spec) in servers.iter().enumerate() {
            if column(i).is_empty() {
                continue; // not measured in this case (berth-async's servers)
            }
            let s = EchoSummary::of(&column(i));
            println!(
                "echo/{label}/{conns}conns {:<12} {:>9.0} msgs/s (median of {} clean rounds of {}: {:.0}..{:.0})  \
                 p50 {:>6.1} us  p99 {:>7.1} us  server cpu {:.2} us/msg ({:.0}% of it in user space)",
                spec.name,
                s.msgs_per_s,
                s.used,
                s.measured,
                s.min_msgs_per_s,
                s.max_msgs_per_s,
                s.p50_us,
                s.p99_us,
                s.server_cpu_us_per_msg,
                s.server_user_share * 100.0,
            );
        }
        let pairs = |peer: usize| -> Vec<Pair> {
            rounds.iter().filter(|r| r.len() > peer).map(|r| Pair { berth: r[0], peer: r[peer] }).collect()
        };
        let vs_tokio = Compared::of(&pairs(1)).ok_or_else(|| format!("{label}: no round measured"))?;
        let vs_epoll = epoll_at.and_then(|i| Compared::of(&pairs(i)));
        let vs_compio = compio_at.and_then(|i| Compared::of(&pairs(i)));
        for (peer, at, c) in
            [("tokio", Some(1), Some(vs_tokio)), ("berth_epoll", epoll_at, vs_epoll), ("compio", compio_at, vs_compio)]
        {
            let (Some(c), Some(at)) = (c, at) else { continue };
            let (low, high) = spread(&pairs(at));
            println!(
                "echo/{label}/{conns}conns against {peer}, median round: msgs/s {:.0} vs {:.0} ({:.3}x); \
                 server cpu {:.2} vs {:.2} us/msg ({:.3}x less); cpu ratio spread over rounds {:.3}..{:.3}",
                c.rate.berth.msgs_per_s,
                c.rate.peer.msgs_per_s,
                c.rate.rate_ratio(),
                c.cpu.berth.server_cpu_us_per_msg(),
                c.cpu.peer.server_cpu_us_per_msg(),
                c.cpu.cpu_ratio(),
                low,
                high,
            );
        }
        let async_vs = async_at.filter(|_| (label, size, conns) == ASYNC_CASE).and_then(|a| {
            let against = |peer: usize| -> Vec<Pair> {
                rounds.iter().filter(|r| r.len() > a).map(|r| Pair { berth: r[a], peer: r[peer] }).collect()
            };
            let tokio = Compared::of(&against(1))?;
            let port = Compared::of(&against(0));
            let compio = compio_at.and_then(|i| Compared::of(&against(i)));
            for (peer, c) in [("tokio", Some(tokio)), ("berth (raw port)", port), ("compio", compio)] {
                let Some(c) = c else { continue };
                println!(
                    "echo_async/{label}/{conns}conns against {peer}, median round: server cpu {:.2} vs {:.2} us/msg ({:.3}x less)",
                    c.cpu.berth.server_cpu_us_per_msg(),
                    c.cpu.peer.server_cpu_us_per_msg(),
                    c.cpu.cpu_ratio(),
                );
            }
            if let Some(c) = compat_at.and_then(|i| {
                let pairs: Vec<Pair> =
                    rounds.iter().filter(|r| r.len() > i.max(a)).map(|r| Pair { berth: r[i], peer: r[a] }).collect();
                Compared::of(&pairs)
            }) {
                println!(
                    "echo_async/{label}/{conns}conns through Compat (tokio traits, copying) against owned leases, \
                     median round: server cpu {:.2} vs {:.2} us/msg ({:.3}x less)",
                    c.cpu.berth.server_cpu_us_per_msg(),
                    c.cpu.peer.server_cpu_us_per_msg(),
                    c.cpu.cpu_ratio(),
                );
            }
            Some(AsyncCompared { tokio, port, compio })
        });
        results.push(Case { label, conns, vs_tokio, vs_epoll, vs_compio, async_vs });
    }
    if only_case.is_some() {
        println!("echo_bench: diagnostic run of one case: no syscall or idle pass, no rows written");
        return Ok(());
    }
    let cases = results;
    let syscalls = if cfg.self_test { None } else { count_syscalls(&cfg, &servers[..2]) };
    let mut idle = Vec::new();
    for spec in &servers[..2] {
        let r = measure_idle(&cfg, spec).map_err(|e| format!("{} idle: {e}", spec.name))?;
        println!(
            "echo/idle {} conns {:<13} rss {:.1} MiB -> {:.1} MiB: +{:.2} MiB ({:.0} B per connection)",
            r.conns,
            spec.name,
            r.rss_before_kib as f64 / 1024.0,
            r.rss_after_kib as f64 / 1024.0,
            r.growth_mib(),
            r.growth_mib() * 1024.0 * 1024.0 / r.conns.max(1) as f64,
        );
        idle.push(r);
    }

    let [berth_idle, tokio_idle] = idle[..] else { return Err("missing idle result".into()) };
    let rows = rows(&cases, syscalls, berth_idle, tokio_idle)?;
    for row in &rows {
        println!(
            "{:<42} berth {:>12.3}  {} {:>12.3}  ratio {:.3}",
            row.bench, row.berth, row.peer, row.peer_value, row.ratio
        );
    }
    if cfg.self_test {
        println!("echo_bench: self-test done; rows not written");
    } else {
        let path = results_path();
        append_rows(&path, &rows).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("echo_bench: {} rows appended to {}", rows.len(), path.display());
    }
    Ok(())
}

fn show_core(core: Option<usize>) -> String {
    core.map_or_else(|| "any".into(), |c| c.to_string())
}

/// The rows: per entry of [`CASES`], in order, berth against tokio (messages per
/// second, server CPU per message) and berth's server CPU per message against its
/// own epoll driver; then the syscalls per message, if counted; then the idle case.
fn rows(
    cases: &[Case],
    syscalls: Option<Syscalls>,
    berth_idle: IdleResult,
    tokio_idle: IdleResult,
) -> Result<Vec<Row>, String> {
    if cases.len() != CASES.len() {
        return Err("missing echo result".into());
    }
    let mut rows = Vec::new();
    for c in cases {
        let id = format!("echo/{}/{}conns", c.label, c.conns);
        let t = &c.vs_tokio;
        rows.push(Row::new(
            format!("{id}/msgs_per_s"),
            "msgs_per_s",
            t.rate.berth.msgs_per_s,
            "tokio",
            t.rate.peer.msgs_per_s,
            Better::Higher,
        ));
        rows.push(Row::new(
            format!("{id}/server_cpu_us_per_msg"),
            "server_cpu_us_per_msg",
            t.cpu.berth.server_cpu_us_per_msg(),
            "tokio",
            t.cpu.peer.server_cpu_us_per_msg(),
            Better::Lower,
        ));
        for (suffix, peer, c) in [("epoll", "berth_epoll", &c.vs_epoll), ("compio", "compio", &c.vs_compio)] {
            if let Some(c) = c {
                rows.push(Row::new(
                    format!("{id}/server_cpu_us_per_msg_vs_{suffix}"),
                    "server_cpu_us_per_msg",
                    c.cpu.berth.server_cpu_us_per_msg(),
                    peer,
                    c.cpu.peer.server_cpu_us_per_msg(),
                    Better::Lower,
                ));
            }
        }
        if let Some(a) = &c.async_vs {
            let id = format!("echo_async/{}/{}conns/server_cpu_us_per_msg", c.label, c.conns);
            for (suffix, peer, c) in
                [("", "tokio", Some(a.tokio)), ("_vs_port", "berth", a.port), ("_vs_compio", "compio", a.compio)]
            {
                if let Some(c) = c {
                    rows.push(Row::new(
                        format!("{id}{suffix}"),
                        "server_cpu_us_per_msg",
                        c.cpu.berth.server_cpu_us_per_msg(),
                        peer,
                        c.cpu.peer.server_cpu_us_per_msg(),
                        Better::Lower,
                    ));
                }
            }
        }
    }
    if let Some(s) = syscalls {
        let (label, _, conns) = SYSCALL_CASE;
        rows.push(Row::new(
            format!("echo/{label}/{conns}conns/syscalls_per_msg"),
            "syscalls_per_msg",
            s.berth,
            "tokio",
            s.tokio,
            Better::Lower,
        ));
    }
    rows.push(Row::new(
        "echo/idle15k/rss_mib",
        "rss_mib",
        berth_idle.growth_mib(),
        "tokio",
        tokio_idle.growth_mib(),
        Better::Lower,
    ));
    Ok(rows)
}

/// The lowest and highest CPU ratio over the clean rounds (all rounds if none is clean).
fn spread(pairs: &[Pair]) -> (f64, f64) {
    let clean: Vec<Pair> = pairs.iter().filter(|p| !p.disturbed()).copied().collect();
    let used = if clean.is_empty() { pairs } else { &clean };
    let ratios = used.iter().map(Pair::cpu_ratio);
    (ratios.clone().fold(f64::INFINITY, f64::min), ratios.fold(0.0, f64::max))
}

/// Syscalls per message of berth and tokio in [`SYSCALL_CASE`]: a separate pass,
/// untimed (tracing slows the server), counting `raw_syscalls:sys_enter` of the
/// server process with `perf stat` over the load's measured window. `None` (said
/// so) where perf is missing or may not trace.
fn count_syscalls(cfg: &Config, servers: &[ServerSpec]) -> Option<Syscalls> {
    let (label, size, conns) = SYSCALL_CASE;
    let mut per_msg = Vec::new();
    for spec in servers {
        match syscalls_per_msg(cfg, spec, size, conns) {
            Ok(n) => {
                println!(
                    "echo/{label}/{conns}conns {:<12} {n:.3} syscalls per message (perf stat, untimed pass)",
                    spec.name
                );
                per_msg.push(n);
            }
            Err(e) => {
                println!("echo_bench: syscalls not counted ({}): {e}", spec.name);
                return None;
            }
        }
    }
    match per_msg[..] {
        [berth, tokio] => Some(Syscalls { berth, tokio }),
        _ => None,
    }
}

fn syscalls_per_msg(cfg: &Config, spec: &ServerSpec, size: usize, conns: usize) -> Result<f64, String> {
    let (server, addr) = start_server(cfg, spec)?;
    let secs = cfg.secs.max(1.0);
    let (load, lines, deadline) = start_load(cfg, addr, size, conns, secs)?;
    expect_line(&lines, deadline, "mark start")?;
    let count = berth_benches::sys_bench::perf_syscall_count(server.id(), secs)?;
    expect_line(&lines, deadline, "mark end")?;
    let json = next_line(&lines, deadline, "berth_load's JSON report")?;
    let _ = load.wait_timeout(Duration::from_secs(5));
    drop(server);
    let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("berth_load report {json:?}: {e}"))?;
    let messages = v["messages"].as_f64().filter(|&m| m > 0.0).ok_or("no message completed")?;
    // perf counted over `secs` from the start mark; the load's count covers the same window.
    Ok(count / messages)
}

/// Starts a server pinned to the server core; returns it with the address it printed.
fn start_server(cfg: &Config, spec: &ServerSpec) -> Result<(ChildGuard, SocketAddr), String> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).args(["--addr", "127.0.0.1:0"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let child = spawn_pinned(&mut cmd, cfg.server_core).map_err(|e| format!("{}: {e}", spec.program.display()))?;
    let mut server = ChildGuard::new(child);
    let lines = stdout_lines(&mut server)?;
    let line = next_line(&lines, Instant::now() + STARTUP, "the server's `listening on ADDR` line")?;
    let addr = line
        .strip_prefix("listening on ")
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| format!("expected `listening on ADDR` from the server, got {line:?}"))?;
    Ok((server, addr))
}

/// Starts `berth_load` on the load core against `addr`: `conns` ping-pong
/// connections of `size`-byte messages, measuring for `secs` after the warm-up and
/// marking the window's edges. Returns it, its stdout lines, and a deadline for
/// them (connecting, warm-up, measurement, and slack for a loaded machine).
fn start_load(
    cfg: &Config,
    addr: SocketAddr,
    size: usize,
    conns: usize,
    secs: f64,
) -> Result<(ChildGuard, Receiver<String>, Instant), String> {
    let mut cmd = Command::new(cfg.exe_dir.join("berth_load"));
    cmd.args(["--addr", &addr.to_string()])
        .args(["--connections", &conns.to_string(), "--size", &size.to_string()])
        .args(["--duration", &secs.to_string(), "--warmup", &cfg.warmup.to_string()])
        .args(["--json", "--marks", "--quiet"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let child = spawn_pinned(&mut cmd, cfg.load_core).map_err(|e| format!("berth_load: {e}"))?;
    let mut load = ChildGuard::new(child);
    let lines = stdout_lines(&mut load)?;
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.warmup + secs + 20.0);
    Ok((load, lines, deadline))
}

/// One throughput case: a fresh server, `berth_load` with `size`-byte messages, and
/// the server's CPU time over exactly the load's measured window.
fn measure_echo(cfg: &Config, spec: &ServerSpec, size: usize, conns: usize) -> Result<EchoResult, String> {
    let (server, addr) = start_server(cfg, spec)?;
    let pid = server.id();
    let (load, lines, deadline) = start_load(cfg, addr, size, conns, cfg.secs)?;
    expect_line(&lines, deadline, "mark start")?;
    let start = Sample::take(pid, load.id())?;
    expect_line(&lines, deadline, "mark end")?;
    let end = Sample::take(pid, load.id())?;
    let json = next_line(&lines, deadline, "berth_load's JSON report")?;
    let _ = load.wait_timeout(Duration::from_secs(5));
    drop(server);

    let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("berth_load report {json:?}: {e}"))?;
    let num = |key: &str| v[key].as_f64().ok_or_else(|| format!("berth_load report has no {key}: {json}"));
    let errors = num("errors")?;
    if errors > 0.0 {
        return Err(format!("berth_load saw {errors} errors (see above); not a valid measurement"));
    }
    let messages = num("messages")? as u64;
    if messages == 0 {
        return Err("no message completed".into());
    }
    Ok(EchoResult {
        msgs_per_s: num("msgs_per_s")?,
        p50_us: num("p50_us")?,
        p99_us: num("p99_us")?,
        messages,
        server_cpu: end.server.saturating_sub(start.server),
        server_user: end.server_user.saturating_sub(start.server_user),
        server_sleeps: end.server_sleeps.saturating_sub(start.server_sleeps),
        load_cpu: end.load.saturating_sub(start.load),
        softirq_threads: end.ksoftirqd.saturating_sub(start.ksoftirqd),
        window: end.at.duration_since(start.at),
        others_cpu: end.others_since(&start),
    })
}

/// CPU times taken together at one instant, at an edge of the measured window.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    server: Duration,
    server_user: Duration,
    /// The server's voluntary context switches: how often it went to sleep.
    server_sleeps: u64,
    load: Duration,
    machine: Duration,
    /// The CPU time of the kernel's softirq threads (`ksoftirqd/N`): loopback TCP's
    /// receive work runs inline in the sender's syscall until the kernel defers it
    /// to them, and then the receiver waits for a thread to be scheduled.
    ksoftirqd: Duration,
}

impl Sample {
    fn take(server_pid: u32, load_pid: u32) -> Result<Sample, String> {
        let machine = machine_busy_time().map_err(|e| format!("machine cpu time: {e}"))?;
        let (server_user, server_system) =
            process_cpu_split(server_pid).map_err(|e| format!("server cpu time: {e}"))?;
        let load = process_cpu_time(load_pid).map_err(|e| format!("berth_load cpu time: {e}"))?;
        let server_sleeps = voluntary_switches(server_pid).map_err(|e| format!("server context switches: {e}"))?;
        Ok(Sample {
            at: Instant::now(),
            server: server_user + server_system,
            server_user,
            server_sleeps,
            load,
            machine,
            ksoftirqd: ksoftirqd_time(),
        })
    }

    /// CPU time used since `start` by everything but the server and the load.
    fn others_since(&self, start: &Sample) -> Duration {
        let ours = self.server.saturating_sub(start.server) + self.load.saturating_sub(start.load);
        self.machine.saturating_sub(start.machine).saturating_sub(ours)
    }
}

/// The CPU time all `ksoftirqd/N` threads have used (0 where /proc says nothing).
fn ksoftirqd_time() -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Duration::ZERO };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/")))
        .filter_map(|pid| process_cpu_time(pid).ok())
        .sum()
}

/// A process's voluntary context switches (its main thread's: the servers measured
/// here serve on it), from `/proc/<pid>/status`.
fn voluntary_switches(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no voluntary_ctxt_switches line".to_string())
}

/// The idle case: a fresh server, `cfg.idle` connections that never send, and the
/// growth of the server's resident set once it has accepted them all.
fn measure_idle(cfg: &Config, spec: &ServerSpec) -> Result<IdleResult, String> {
    let (server, addr) = start_server(cfg, spec)?;
    let pid = server.id();
    let fds = |pid| open_fds(pid).map_err(|e| format!("server fds: {e}"));
    thread::sleep(Duration::from_millis(200));
    let fds_before = fds(pid)?;
    let rss_before = settled_rss(pid)?;

    let deadline = Instant::now() + Duration::from_secs(if cfg.quick { 30 } else { 90 });
    // The server must have accepted all but `lag` of the connections opened so far
    // before more are opened, so its listen backlog never overflows into SYN retries.
    let lag = 512;
    let mut conns = Vec::with_capacity(cfg.idle);
    while conns.len() < cfg.idle {
        if Instant::now() > deadline {
            return Err(format!("opened only {} of {} connections in time", conns.len(), cfg.idle));
        }
        if conns.len() % lag == 0 {
            wait_for_fds(pid, fds_before + conns.len().saturating_sub(lag), deadline)?;
        }
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connection {} of {}: {e}", conns.len() + 1, cfg.idle))?;
        conns.push(stream);
    }
    wait_for_fds(pid, fds_before + cfg.idle, deadline)?;
    // Let the server finish whatever it does per accepted connection.
    thread::sleep(Duration::from_millis(300));
    let rss_after = settled_rss(pid)?;
    // A server that dropped idle connections would look lean: all must still be open.
    let fds_after = fds(pid)?;
    if fds_after < fds_before + cfg.idle {
        return Err(format!(
            "server closed idle connections: {fds_after} descriptors, expected {}",
            fds_before + cfg.idle
        ));
    }
    // Kill the server before closing our ends, so TIME_WAIT stays on its side and our
    // ephemeral ports are free for the next server.
    drop(server);
    drop(conns);
    Ok(IdleResult { conns: cfg.idle, rss_before_kib: rss_before, rss_after_kib: rss_after })
}

/// Waits until process `pid` has at least `want` descriptors open, or `deadline`.
fn wait_for_fds(pid: u32, want: usize, deadline: Instant) -> Result<(), String> {
    loop {
        let have = open_fds(pid).map_err(|e| format!("server fds: {e}"))?;
        if have >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("server has {have} descriptors open, expected {want}: it stopped accepting"));
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// The server's RSS once two readings 100 ms apart agree (within 16 KiB), or the last
/// reading after 3 s.
fn settled_rss(pid: u32) -> Result<u64, String> {
    let read = || rss_kib(pid).map_err(|e| format!("server rss: {e}"));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = read()?;
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = read()?;
        if now.abs_diff(last) <= 16 || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(msgs_per_s: f64, messages: u64, cpu_ms: u64, others_ms: u64) -> EchoResult {
        EchoResult {
            msgs_per_s,
            p50_us: 1.0,
            p99_us: 2.0,
            messages,
            server_cpu: Duration::from_millis(cpu_ms),
            server_user: Duration::from_millis(cpu_ms / 10),
            server_sleeps: 0,
            load_cpu: Duration::from_secs(1),
            softirq_threads: Duration::ZERO,
            window: Duration::from_secs(1),
            others_cpu: Duration::from_millis(others_ms),
        }
    }

    fn pair(berth: EchoResult, peer: EchoResult) -> Pair {
        Pair { berth, peer }
    }

    /// A fast round of one server is never set against a slow round of the other:
    /// each figure comes from the round whose own ratio is the median.
    #[test]
    fn rows_come_from_the_median_round_not_from_separate_medians() {
        // The machine is fast (tokio 200) or slow (tokio 100); berth is 1.1x either
        // way. Three rounds caught both servers in the same state, two caught berth
        // fast and tokio slow. Separate medians would say 220 against 100 (2.2x).
        let fast = |rate: f64| round(rate, rate as u64 * 10, 1000, 0);
        let pairs = [
            pair(fast(220.0), fast(200.0)),
            pair(fast(110.0), fast(100.0)),
            pair(fast(110.0), fast(100.0)),
            pair(fast(220.0), fast(100.0)),
            pair(fast(220.0), fast(100.0)),
        ];
        let c = Compared::of(&pairs).unwrap();
        assert!((c.rate.rate_ratio() - 1.1).abs() < 1e-9);
        assert!((c.cpu.cpu_ratio() - 1.1).abs() < 1e-9);
        // A disturbed round is left out while there are clean ones...
        let mut with_noise = pairs.to_vec();
        with_noise.push(pair(round(900.0, 9000, 1000, 0), round(100.0, 1000, 1000, 600)));
        with_noise.push(pair(round(950.0, 9500, 1000, 0), round(100.0, 1000, 1000, 600)));
        assert!((Compared::of(&with_noise).unwrap().rate.rate_ratio() - 1.1).abs() < 1e-9);
        // ...an even count takes the lower middle...
        let two =
            [pair(round(100.0, 1, 1, 0), round(100.0, 1, 1, 0)), pair(round(300.0, 1, 1, 0), round(100.0, 1, 1, 0))];
        assert_eq!(Compared::of(&two).unwrap().rate.rate_ratio(), 1.0);
        // ...and no rounds is no comparison.
        assert!(Compared::of(&[]).is_none());
    }

    #[test]
    fn summaries_take_medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let r = |rate, cpu_ms, others_ms| EchoResult {
            msgs_per_s: rate,
            p50_us: rate,
            p99_us: rate,
            messages: 1000,
            server_cpu: Duration::from_millis(cpu_ms),
            server_user: Duration::from_millis(cpu_ms) / 4,
            server_sleeps: 0,
            load_cpu: Duration::from_secs(1),
            softirq_threads: Duration::ZERO,
            window: Duration::from_secs(1),
            others_cpu: Duration::from_millis(others_ms),
        };
        let s = EchoSummary::of(&[r(10.0, 5, 0), r(1000.0, 1, 0), r(20.0, 2, 0)]);
        assert_eq!((s.msgs_per_s, s.min_msgs_per_s, s.max_msgs_per_s), (20.0, 10.0, 1000.0));
        assert_eq!(s.server_cpu_us_per_msg, 2.0);
        assert_eq!(s.server_user_share, 0.25);
        assert_eq!((s.used, s.measured), (3, 3));
        // Disturbed rounds are left out while there are clean ones...
        let s = EchoSummary::of(&[r(10.0, 5, 600), r(1000.0, 1, 0), r(20.0, 2, 0)]);
        assert_eq!((s.msgs_per_s, s.used, s.measured), (510.0, 2, 3));
        // ...and used when there are none.
        let s = EchoSummary::of(&[r(10.0, 5, 600), r(30.0, 1, 300)]);
        assert_eq!((s.msgs_per_s, s.used), (20.0, 2));
    }

    #[test]
    fn rows_compare_berth_with_its_peers_in_the_right_direction() {
        let idle = |after| IdleResult { conns: 100, rss_before_kib: 1024, rss_after_kib: after };
        let one = |p: Pair| Compared { rate: p, cpu: p };
        let case = |i: usize, vs_epoll| Case {
            label: CASES[i].0,
            conns: CASES[i].2,
            vs_tokio: one(pair(round(200.0, 1000, 1, 0), round(100.0, 1000, 2, 0))),
            vs_epoll,
            vs_compio: if i == 1 { vs_epoll } else { None },
            async_vs: None,
        };
        let epoll = Some(one(pair(round(50.0, 500, 2, 0), round(50.0, 500, 3, 0))));
        let cases = [case(0, epoll), case(1, epoll), case(2, None), case(3, epoll)];
        let calls = Some(Syscalls { berth: 0.05, tokio: 2.0 });
        let rows = rows(&cases, calls, idle(2048), idle(5120)).unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.bench.as_str()).collect();
        assert_eq!(
            ids,
            [
                "echo/64B/16conns/msgs_per_s",
                "echo/64B/16conns/server_cpu_us_per_msg",
                "echo/64B/16conns/server_cpu_us_per_msg_vs_epoll",
                "echo/64B/64conns/msgs_per_s",
                "echo/64B/64conns/server_cpu_us_per_msg",
                "echo/64B/64conns/server_cpu_us_per_msg_vs_epoll",
                "echo/64B/64conns/server_cpu_us_per_msg_vs_compio",
                "echo/64B/256conns/msgs_per_s",
                "echo/64B/256conns/server_cpu_us_per_msg",
                "echo/4KiB/64conns/msgs_per_s",
                "echo/4KiB/64conns/server_cpu_us_per_msg",
                "echo/4KiB/64conns/server_cpu_us_per_msg_vs_epoll",
                "echo/64B/64conns/syscalls_per_msg",
                "echo/idle15k/rss_mib",
            ]
        );
        assert_eq!(rows[0].ratio, 2.0); // twice the messages per second
        assert_eq!(rows[1].berth, 1.0); // 1 ms over 1000 messages
        assert_eq!(rows[1].ratio, 2.0); // half the CPU per message
        assert_eq!((rows[2].peer.as_str(), rows[2].ratio), ("berth_epoll", 1.5)); // 2 ms against 3 ms
        assert_eq!(rows[6].peer, "compio");
        assert_eq!((rows[12].berth, rows[12].ratio), (0.05, 40.0));
        assert_eq!(rows[13].berth, 1.0); // +1 MiB
        assert_eq!(rows[13].ratio, 4.0); // a quarter of tokio's growth
        assert!(super::rows(&cases[..1], None, idle(2048), idle(5120)).is_err());
    }

    /// berth-async's rows sit right after their case's, berth-async being "berth" in
    /// them (its CPU per message against tokio's, the raw port's and compio's).
    #[test]
    fn async_rows_follow_their_case() {
        let idle = |after| IdleResult { conns: 100, rss_before_kib: 1024, rss_after_kib: after };
        let one = |p: Pair| Compared { rate: p, cpu: p };
        let base = one(pair(round(200.0, 1000, 1, 0), round(100.0, 1000, 2, 0)));
        let case = |i: usize| Case {
            label: CASES[i].0,
            conns: CASES[i].2,
            vs_tokio: base,
            vs_epoll: None,
            vs_compio: None,
            async_vs: (i == 1).then(|| AsyncCompared {
                tokio: one(pair(round(1.0, 1000, 2, 0), round(1.0, 1000, 4, 0))),
                port: Some(one(pair(round(1.0, 1000, 2, 0), round(1.0, 1000, 1, 0)))),
                compio: None,
            }),
        };
        let cases = [case(0), case(1), case(2), case(3)];
        let rows = rows(&cases, None, idle(2048), idle(5120)).unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.bench.as_str()).collect();
        assert_eq!(
            &ids[2..7],
            [
                "echo/64B/64conns/msgs_per_s",
                "echo/64B/64conns/server_cpu_us_per_msg",
                "echo_async/64B/64conns/server_cpu_us_per_msg",
                "echo_async/64B/64conns/server_cpu_us_per_msg_vs_port",
                "echo/64B/256conns/msgs_per_s",
            ]
        );
        assert_eq!((rows[4].peer.as_str(), rows[4].berth, rows[4].ratio), ("tokio", 2.0, 2.0));
        assert_eq!((rows[5].peer.as_str(), rows[5].ratio), ("berth", 0.5));
    }
}
