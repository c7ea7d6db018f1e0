//! `udp_bench`: issue 15's rows — berth's UDP echo against tokio's, and berth's echo
//! over a Unix stream socket against tokio's — side by side in one run, with
//! `echo_bench`'s method (see `berth_benches::paired`).
//!
//! For each case and each server a fresh server process is started pinned to one
//! core, and the load runs pinned to the other; the server's CPU time (utime + stime
//! from `/proc/<pid>/stat`) is sampled at the edges of the load's measured window.
//! In each round every server is measured once (who goes first rotating), and each
//! row comes from the round whose own berth/peer ratio is the median; rounds in which
//! the rest of the machine took more than 10% of a core are disturbed, retried, and
//! used only if no clean round exists. An untimed pass then counts each server's
//! syscalls per message with `perf stat` (skipped, and said so, without perf).
//!
//! - `udp`: `berth_udp_echo` (256 receives in flight on one socket; `--driver uring`,
//!   and `--driver epoll` as a third server), `tokio_udp_echo` (a `UdpSocket`
//!   `recv_from`/`send_to` loop on the `current_thread` runtime); the load is
//!   `udp_load`: 64 client sockets, each with 8 datagrams of 64 B in flight, every
//!   echo checked. Lost datagrams (unanswered after 200 ms, then replaced) are
//!   counted and printed per round; both servers get the same 4 MiB `SO_RCVBUF`.
//!   Measured in the same rounds and printed against tokio, without rows: berth
//!   with pooled receives (`--pooled`), and `benches/c/udp_mmsg_echo.c` (built with
//!   `cc`), a blocking C loop of `recvmmsg`/`sendmmsg` at 64 datagrams a call — the
//!   floor of what any server's syscalls can save on this machine — and the same
//!   loop on an edge-triggered epoll (`c_epoll_mmsg`, `--epoll`), the floor of any
//!   server that waits by readiness, as berth and tokio do; and that loop sending
//!   its replies grouped with UDP GSO as berth does (`c_epoll_gso`, `--gso`).
//! - `unix`: `berth_echo` and `tokio_echo` on `--addr unix:/path`, driven by
//!   `berth_load` over 64 Unix stream connections, ping-pong of 64 B messages.
//!
//! ```text
//! udp_bench [--quick] [--self-test] [--case udp|unix]...
//! ```
//!
//! Rows (appended to `berth_benches::results_path()`): `udp/64B/msgs_per_s` and
//! `udp/64B/server_cpu_us_per_msg` (peer `tokio_udp`),
//! `udp/64B/server_cpu_us_per_msg_vs_epoll` (peer `berth_epoll`),
//! `udp/64B/server_cpu_us_per_msg_vs_c_epoll` (peer `c_epoll_mmsg`),
//! `udp/64B/syscalls_per_msg` (peer `tokio_udp`); the same under
//! `unix/64B/64conns/` (peer `tokio_unix`). Where io_uring cannot run, berth is its
//! epoll driver and the `_vs_epoll` rows are left out. `--self-test` runs the whole
//! pipeline with tokio's servers on both sides and writes no rows.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use berth_benches::paired::{
    BUSY_LIMIT, Compared, Pair, Round, Sample, build_siblings, expect_line, median, next_line, spread, stdout_lines,
};
use berth_benches::sys_bench::{ChildGuard, available_cores, pin_current_thread, spawn_pinned};
use berth_benches::{Better, Row, append_rows, results_path};

/// Rounds are retried up to this many times the rounds wanted while disturbed.
const MAX_ATTEMPTS: usize = 3;
/// How long a server may take to print its address.
const STARTUP: Duration = Duration::from_secs(10);
/// The message size, and the clients (UDP) or connections (Unix).
const SIZE: usize = 64;
const CLIENTS: usize = 64;
/// Datagrams each UDP client keeps in flight.
const DEPTH: usize = 8;

fn main() -> ExitCode {
    berth_benches::sys_bench::exit_code("udp_bench", run())
}

/// Which case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Udp,
    Unix,
}

impl Kind {
    /// The row id prefix.
    fn id(self) -> String {
        match self {
            Kind::Udp => format!("udp/{SIZE}B"),
            Kind::Unix => format!("unix/{SIZE}B/{CLIENTS}conns"),
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    rounds: usize,
    secs: f64,
    warmup: f64,
    exe_dir: PathBuf,
    server_core: Option<usize>,
    load_core: Option<usize>,
    /// Where the Unix servers' socket files go.
    sock_dir: PathBuf,
}

/// A server to measure: a name for the report and how to start it.
#[derive(Debug, Clone)]
struct ServerSpec {
    name: String,
    program: PathBuf,
    args: Vec<String>,
}

/// One case's outcome: berth against its peer, against itself on epoll, and
/// against the C epoll floor.
#[derive(Debug, Clone, Copy)]
struct Case {
    kind: Kind,
    peer: &'static str,
    vs_peer: Compared,
    vs_epoll: Option<Compared>,
    /// Against `c_epoll_mmsg` (UDP, where `cc` could build it).
    vs_floor: Option<Compared>,
    /// Syscalls per message of berth and the peer, if counted.
    syscalls: Option<(f64, f64)>,
}

fn run() -> Result<(), String> {
    let mut quick = false;
    let mut self_test = false;
    let mut kinds = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--self-test" => self_test = true,
            "--case" => match args.next().as_deref() {
                Some("udp") => kinds.push(Kind::Udp),
                Some("unix") => kinds.push(Kind::Unix),
                other => return Err(format!("--case {other:?}: expected udp or unix")),
            },
            other => {
                return Err(format!(
                    "unknown argument {other}\nusage: udp_bench [--quick] [--self-test] [--case udp|unix]..."
                ));
            }
        }
    }
    if kinds.is_empty() {
        kinds = vec![Kind::Udp, Kind::Unix];
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let exe_dir = exe.parent().ok_or("current_exe has no parent")?.to_path_buf();
    build_siblings(
        &exe_dir,
        &["udp_load", "berth_load", "berth_udp_echo", "tokio_udp_echo", "berth_echo", "tokio_echo"],
    )?;

    let cores = available_cores().map_err(|e| format!("sched_getaffinity: {e}"))?;
    let (server_core, load_core) = match cores.as_slice() {
        [] => (None, None),
        [only] => {
            println!("udp_bench: only cpu {only} is allowed: server and load share it (results are not comparable)");
            (Some(*only), Some(*only))
        }
        [first, second, ..] => (Some(*first), Some(*second)),
    };
    if let Some(core) = load_core {
        pin_current_thread(core).map_err(|e| format!("pin to cpu {core}: {e}"))?;
    }
    let sock_dir = std::env::temp_dir().join(format!("berth-udp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&sock_dir).map_err(|e| format!("{}: {e}", sock_dir.display()))?;
    let cfg = Config {
        rounds: if quick { 3 } else { 9 },
        secs: 1.0,
        warmup: if quick { 0.3 } else { 0.5 },
        exe_dir,
        server_core,
        load_core,
        sock_dir,
    };
    println!(
        "udp_bench: server on cpu {}, load on cpu {}; {} rounds of {} s per case (each row from the round with the \
         median berth/peer ratio; a round is disturbed when others take > {:.0}% of a core), each after {} s warm-up",
        show_core(cfg.server_core),
        show_core(cfg.load_core),
        cfg.rounds,
        cfg.secs,
        BUSY_LIMIT * 100.0,
        cfg.warmup,
    );
    if self_test {
        println!("udp_bench: self-test: tokio's servers stand in for berth's; no rows are written");
    }
    let result = kinds.iter().map(|&kind| run_case(&cfg, kind, self_test)).collect::<Result<Vec<Case>, String>>();
    let _ = std::fs::remove_dir_all(&cfg.sock_dir);
    let cases = result?;
    let rows: Vec<Row> = cases.iter().flat_map(rows).collect();
    for row in &rows {
        println!(
            "{:<42} berth {:>12.3}  {} {:>12.3}  ratio {:.3}",
            row.bench, row.berth, row.peer, row.peer_value, row.ratio
        );
    }
    if self_test {
        println!("udp_bench: self-test done; rows not written");
    } else {
        let path = results_path();
        append_rows(&path, &rows).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("udp_bench: {} rows appended to {}", rows.len(), path.display());
    }
    Ok(())
}

fn show_core(core: Option<usize>) -> String {
    core.map_or_else(|| "any".into(), |c| c.to_string())
}

/// The servers of a case: berth (io_uring), the peer, then berth on epoll if io_uring
/// runs here.
fn servers(cfg: &Config, kind: Kind, self_test: bool) -> (Vec<ServerSpec>, &'static str) {
    let exe = |name: &str| cfg.exe_dir.join(name);
    let (berth_bin, peer_bin, peer) = match kind {
        Kind::Udp => ("berth_udp_echo", "tokio_udp_echo", "tokio_udp"),
        Kind::Unix => ("berth_echo", "tokio_echo", "tokio_unix"),
    };
    let peer_spec = ServerSpec { name: peer.into(), program: exe(peer_bin), args: vec![] };
    if self_test {
        return (vec![ServerSpec { name: "berth(tokio)".into(), ..peer_spec.clone() }, peer_spec], peer);
    }
    let driver = |d: &str| vec!["--driver".to_string(), d.to_string()];
    let berth = ServerSpec { name: "berth".into(), program: exe(berth_bin), args: driver("uring") };
    let epoll = ServerSpec { name: "berth_epoll".into(), program: exe(berth_bin), args: driver("epoll") };
    if start_server(cfg, kind, &berth).is_ok() {
        let mut servers = vec![berth, peer_spec, epoll];
        if kind == Kind::Udp {
            // Pooled receives: a segment leased per datagram as it is received.
            let args = vec!["--driver".to_string(), "uring".to_string(), "--pooled".to_string()];
            servers.push(ServerSpec { name: "berth_pooled".into(), program: exe(berth_bin), args });
            // Datagram ops as ring operations (RECVMSG/SENDMSG), not readiness batches.
            let args = vec!["--driver".to_string(), "uring".to_string(), "--ring-datagrams".to_string()];
            servers.push(ServerSpec { name: "berth_ring".into(), program: exe(berth_bin), args });
            // The floor: a C loop of blocking recvmmsg/sendmmsg, 64 datagrams a call;
            // and the same loop on an edge-triggered epoll, the floor of any
            // readiness-based server.
            match berth_benches::sys_bench::compile_c(&cfg.exe_dir, "udp_mmsg_echo.c", "c_udp_mmsg_echo") {
                Ok(program) => {
                    let args = vec!["--epoll".to_string()];
                    servers.push(ServerSpec { name: "c_mmsg".into(), program: program.clone(), args: vec![] });
                    servers.push(ServerSpec { name: "c_epoll_mmsg".into(), program: program.clone(), args });
                    // And grouping its replies with UDP GSO, as berth's batches do.
                    let args = vec!["--epoll".to_string(), "--gso".to_string()];
                    servers.push(ServerSpec { name: "c_epoll_gso".into(), program, args });
                }
                Err(e) => println!("udp_bench: no plain C recvmmsg echo in this run: {e}"),
            }
        }
        (servers, peer)
    } else {
        println!("udp_bench: io_uring cannot run here: berth runs on epoll, no rows against epoll");
        (vec![ServerSpec { name: "berth".into(), ..epoll }, peer_spec], peer)
    }
}

fn run_case(cfg: &Config, kind: Kind, self_test: bool) -> Result<Case, String> {
    let (servers, peer) = servers(cfg, kind, self_test);
    let id = kind.id();
    let mut rounds: Vec<Vec<Round>> = Vec::new();
    let clean = |rounds: &[Vec<Round>]| rounds.iter().filter(|r| !r.iter().any(Round::disturbed)).count();
    for round in 0..cfg.rounds * MAX_ATTEMPTS {
        if clean(&rounds) >= cfg.rounds {
            break;
        }
        let n = servers.len();
        let mut measured = vec![None; n];
        for k in 0..n {
            let i = (round + k) % n;
            let spec = &servers[i];
            let r = measure(cfg, kind, spec, cfg.secs).map_err(|e| format!("{} {id}: {e}", spec.name))?;
            println!(
                "  round {round} {id} {:<12} {:>9.0} msgs/s  p99 {:>7.1} us  server cpu {:.2} us/msg ({:.0}% user); \
                 load {:.0}% of its core; {}others {:.0}% of a core{}",
                spec.name,
                r.msgs_per_s,
                r.p99_us,
                r.server_cpu_us_per_msg(),
                r.server_user_share() * 100.0,
                r.load_share() * 100.0,
                if kind == Kind::Udp { format!("lost {} of {} sent; ", r.lost, r.sent) } else { String::new() },
                r.others_share() * 100.0,
                if r.disturbed() { " (disturbed)" } else { "" },
            );
            measured[i] = Some(r);
        }
        rounds.push(measured.into_iter().flatten().collect());
    }
    if clean(&rounds) < cfg.rounds {
        println!(
            "udp_bench: warning: {id}: the machine was busy with other work; {} of {} rounds clean",
            clean(&rounds),
            rounds.len()
        );
    }
    let column = |i: usize| rounds.iter().filter_map(|r| r.get(i).copied()).collect::<Vec<_>>();
    for (i, spec) in servers.iter().enumerate() {
        let all = column(i);
        let used: Vec<Round> = {
            let c: Vec<Round> = all.iter().filter(|r| !r.disturbed()).copied().collect();
            if c.is_empty() { all.clone() } else { c }
        };
        let med = |f: fn(&Round) -> f64| median(used.iter().map(f).collect());
        let (lost, sent) = used.iter().fold((0, 0), |(l, s), r| (l + r.lost, s + r.sent));
        println!(
            "{id} {:<12} {:>9.0} msgs/s (median of {} of {} rounds)  p50 {:.1} us  p99 {:.1} us  server cpu {:.2} us/msg \
             ({:.0}% user)  load {:.0}% of its core{}",
            spec.name,
            med(|r| r.msgs_per_s),
            used.len(),
            all.len(),
            med(|r| r.p50_us),
            med(|r| r.p99_us),
            med(Round::server_cpu_us_per_msg),
            med(Round::server_user_share) * 100.0,
            med(Round::load_share) * 100.0,
            if kind == Kind::Udp {
                format!("  lost {lost} of {sent} sent ({:.1} per million)", lost as f64 * 1e6 / sent.max(1) as f64)
            } else {
                String::new()
            },
        );
    }
    let pairs = |peer: usize| -> Vec<Pair> {
        rounds.iter().filter(|r| r.len() > peer).map(|r| Pair { berth: r[0], peer: r[peer] }).collect()
    };
    let vs_peer = Compared::of(&pairs(1)).ok_or_else(|| format!("{id}: no round measured"))?;
    let epoll_at = servers.iter().position(|s| s.name == "berth_epoll");
    let vs_epoll = epoll_at.and_then(|i| Compared::of(&pairs(i)));
    let floor_at = servers.iter().position(|s| s.name == "c_epoll_mmsg");
    let vs_floor = floor_at.and_then(|i| Compared::of(&pairs(i)));
    let gso_floor_at = servers.iter().position(|s| s.name == "c_epoll_gso");
    let vs_gso_floor = gso_floor_at.and_then(|i| Compared::of(&pairs(i)));
    for (name, at, c) in [
        (peer, Some(1), Some(vs_peer)),
        ("berth_epoll", epoll_at, vs_epoll),
        ("c_epoll_mmsg", floor_at, vs_floor),
        ("c_epoll_gso", gso_floor_at, vs_gso_floor),
    ] {
        let (Some(c), Some(at)) = (c, at) else { continue };
        let (rlow, rhigh) = spread(&pairs(at), Pair::rate_ratio);
        let (clow, chigh) = spread(&pairs(at), Pair::cpu_ratio);
        println!(
            "{id} against {name}, median round: msgs/s {:.0} vs {:.0} ({:.3}x, spread {rlow:.3}..{rhigh:.3}); \
             server cpu {:.2} vs {:.2} us/msg ({:.3}x less, spread {clow:.3}..{chigh:.3})",
            c.rate.berth.msgs_per_s,
            c.rate.peer.msgs_per_s,
            c.rate.rate_ratio(),
            c.cpu.berth.server_cpu_us_per_msg(),
            c.cpu.peer.server_cpu_us_per_msg(),
            c.cpu.cpu_ratio(),
        );
    }
    for extra in ["berth_pooled", "berth_ring", "c_mmsg", "c_epoll_mmsg", "c_epoll_gso"] {
        let Some(at) = servers.iter().position(|s| s.name == extra) else { continue };
        let against: Vec<Pair> =
            rounds.iter().filter(|r| r.len() > at).map(|r| Pair { berth: r[at], peer: r[1] }).collect();
        if let Some(c) = Compared::of(&against) {
            let (rlow, rhigh) = spread(&against, Pair::rate_ratio);
            let (clow, chigh) = spread(&against, Pair::cpu_ratio);
            println!(
                "{id} {extra} against {peer}, median round: msgs/s {:.3}x (spread {rlow:.3}..{rhigh:.3}); \
                 server cpu {:.3}x less (spread {clow:.3}..{chigh:.3})",
                c.rate.rate_ratio(),
                c.cpu.cpu_ratio(),
            );
        }
    }
    let syscalls = if self_test { None } else { count_syscalls(cfg, kind, &servers) };
    Ok(Case { kind, peer, vs_peer, vs_epoll, vs_floor, syscalls })
}

/// A case's rows: rate and CPU against the peer, CPU against berth on epoll, and
/// syscalls per message against the peer.
fn rows(c: &Case) -> Vec<Row> {
    let id = c.kind.id();
    let t = &c.vs_peer;
    let mut rows = vec![
        Row::new(
            format!("{id}/msgs_per_s"),
            "msgs_per_s",
            t.rate.berth.msgs_per_s,
            c.peer,
            t.rate.peer.msgs_per_s,
            Better::Higher,
        ),
        Row::new(
            format!("{id}/server_cpu_us_per_msg"),
            "server_cpu_us_per_msg",
            t.cpu.berth.server_cpu_us_per_msg(),
            c.peer,
            t.cpu.peer.server_cpu_us_per_msg(),
            Better::Lower,
        ),
    ];
    if let Some(e) = &c.vs_epoll {
        rows.push(Row::new(
            format!("{id}/server_cpu_us_per_msg_vs_epoll"),
            "server_cpu_us_per_msg",
            e.cpu.berth.server_cpu_us_per_msg(),
            "berth_epoll",
            e.cpu.peer.server_cpu_us_per_msg(),
            Better::Lower,
        ));
    }
    if let Some(f) = &c.vs_floor {
        rows.push(Row::new(
            format!("{id}/server_cpu_us_per_msg_vs_c_epoll"),
            "server_cpu_us_per_msg",
            f.cpu.berth.server_cpu_us_per_msg(),
            "c_epoll_mmsg",
            f.cpu.peer.server_cpu_us_per_msg(),
            Better::Lower,
        ));
    }
    if let Some((berth, peer)) = c.syscalls {
        rows.push(Row::new(format!("{id}/syscalls_per_msg"), "syscalls_per_msg", berth, c.peer, peer, Better::Lower));
    }
    rows
}

/// Starts a server pinned to the server core; returns it with the address it printed.
fn start_server(cfg: &Config, kind: Kind, spec: &ServerSpec) -> Result<(ChildGuard, String), String> {
    let addr = match kind {
        Kind::Udp => "127.0.0.1:0".to_string(),
        Kind::Unix => {
            // A fresh path per server: a killed server leaves its socket file behind.
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("unix:{}", cfg.sock_dir.join(format!("s{n}.sock")).display())
        }
    };
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).args(["--addr", &addr]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let child = spawn_pinned(&mut cmd, cfg.server_core).map_err(|e| format!("{}: {e}", spec.program.display()))?;
    let mut server = ChildGuard::new(child);
    let lines = stdout_lines(&mut server)?;
    let line = next_line(&lines, Instant::now() + STARTUP, "the server's `listening on ADDR` line")?;
    let printed = line
        .strip_prefix("listening on ")
        .map(|a| a.trim().to_string())
        .ok_or_else(|| format!("expected `listening on ADDR` from the server, got {line:?}"))?;
    Ok((server, printed))
}

/// Starts the case's load on the load core against `addr`, measuring for `secs`
/// after the warm-up and marking the window's edges.
fn start_load(
    cfg: &Config,
    kind: Kind,
    addr: &str,
    secs: f64,
) -> Result<(ChildGuard, Receiver<String>, Instant), String> {
    let (bin, mut cmd) = match kind {
        Kind::Udp => {
            let mut cmd = Command::new(cfg.exe_dir.join("udp_load"));
            cmd.args(["--clients", &CLIENTS.to_string(), "--depth", &DEPTH.to_string()]);
            ("udp_load", cmd)
        }
        Kind::Unix => {
            let mut cmd = Command::new(cfg.exe_dir.join("berth_load"));
            cmd.args(["--connections", &CLIENTS.to_string()]);
            ("berth_load", cmd)
        }
    };
    cmd.args(["--addr", addr, "--size", &SIZE.to_string()])
        .args(["--duration", &secs.to_string(), "--warmup", &cfg.warmup.to_string()])
        .args(["--json", "--marks", "--quiet"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let child = spawn_pinned(&mut cmd, cfg.load_core).map_err(|e| format!("{bin}: {e}"))?;
    let mut load = ChildGuard::new(child);
    let lines = stdout_lines(&mut load)?;
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.warmup + secs + 20.0);
    Ok((load, lines, deadline))
}

/// One server measured once: a fresh server, the load, and the server's CPU time
/// over exactly the load's measured window.
fn measure(cfg: &Config, kind: Kind, spec: &ServerSpec, secs: f64) -> Result<Round, String> {
    let (server, addr) = start_server(cfg, kind, spec)?;
    let (load, lines, deadline) = start_load(cfg, kind, &addr, secs)?;
    expect_line(&lines, deadline, "mark start")?;
    let start = Sample::take(server.id(), load.id())?;
    expect_line(&lines, deadline, "mark end")?;
    let end = Sample::take(server.id(), load.id())?;
    let json = next_line(&lines, deadline, "the load's JSON report")?;
    let _ = load.wait_timeout(Duration::from_secs(5));
    drop(server);
    let report = parse_report(&json)?;
    Ok(Round {
        msgs_per_s: report.msgs_per_s,
        messages: report.messages,
        p50_us: report.p50_us,
        p99_us: report.p99_us,
        server_cpu: end.server.saturating_sub(start.server),
        server_user: end.server_user.saturating_sub(start.server_user),
        load_cpu: end.load.saturating_sub(start.load),
        window: end.at.duration_since(start.at),
        others_cpu: end.others_since(&start),
        lost: report.lost,
        sent: report.sent,
    })
}

/// What a load's JSON line says.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LoadReport {
    msgs_per_s: f64,
    messages: u64,
    p50_us: f64,
    p99_us: f64,
    sent: u64,
    lost: u64,
}

/// Parses `berth_load`'s or `udp_load`'s JSON line; any error the load counted (a
/// mismatch, a socket error) makes the round invalid.
fn parse_report(json: &str) -> Result<LoadReport, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("load report {json:?}: {e}"))?;
    let num = |key: &str| v[key].as_f64().ok_or_else(|| format!("load report has no {key}: {json}"));
    let errors = num("errors")?;
    if errors > 0.0 {
        return Err(format!("the load saw {errors} errors (see above); not a valid measurement"));
    }
    let messages = num("messages")? as u64;
    if messages == 0 {
        return Err("no message completed".into());
    }
    Ok(LoadReport {
        msgs_per_s: num("msgs_per_s")?,
        messages,
        p50_us: num("p50_us")?,
        p99_us: num("p99_us")?,
        sent: v["sent"].as_u64().unwrap_or(0),
        lost: v["lost"].as_u64().unwrap_or(0),
    })
}

/// Syscalls per message of each server (untimed: tracing slows the server), printed;
/// returns berth's and the peer's (the first two servers). `None`, said so, where
/// perf is missing or may not trace.
fn count_syscalls(cfg: &Config, kind: Kind, servers: &[ServerSpec]) -> Option<(f64, f64)> {
    let mut per_msg = Vec::new();
    for spec in servers {
        match syscalls_per_msg(cfg, kind, spec) {
            Ok(n) => {
                println!("{} {:<12} {n:.3} syscalls per message (perf stat, untimed pass)", kind.id(), spec.name);
                per_msg.push(n);
            }
            Err(e) => {
                println!("udp_bench: syscalls not counted ({}): {e}", spec.name);
                return None;
            }
        }
    }
    match per_msg[..] {
        [berth, peer, ..] => Some((berth, peer)),
        _ => None,
    }
}

fn syscalls_per_msg(cfg: &Config, kind: Kind, spec: &ServerSpec) -> Result<f64, String> {
    let (server, addr) = start_server(cfg, kind, spec)?;
    let secs = cfg.secs.max(1.0);
    let (load, lines, deadline) = start_load(cfg, kind, &addr, secs)?;
    expect_line(&lines, deadline, "mark start")?;
    let count = berth_benches::sys_bench::perf_syscall_count(server.id(), secs)?;
    expect_line(&lines, deadline, "mark end")?;
    let json = next_line(&lines, deadline, "the load's JSON report")?;
    let _ = load.wait_timeout(Duration::from_secs(5));
    drop(server);
    // perf counted over `secs` from the start mark; the load's count covers the same window.
    Ok(count / parse_report(&json)?.messages as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(rate: f64, cpu_ms: u64) -> Round {
        Round {
            msgs_per_s: rate,
            messages: rate as u64,
            p50_us: 1.0,
            p99_us: 2.0,
            server_cpu: Duration::from_millis(cpu_ms),
            server_user: Duration::from_millis(cpu_ms / 2),
            load_cpu: Duration::from_millis(900),
            window: Duration::from_secs(1),
            others_cpu: Duration::ZERO,
            lost: 0,
            sent: 0,
        }
    }

    #[test]
    fn rows_name_the_cases_and_compare_in_the_right_direction() {
        let one = |p: Pair| Compared { rate: p, cpu: p };
        let udp = Case {
            kind: Kind::Udp,
            peer: "tokio_udp",
            vs_peer: one(Pair { berth: round(300_000.0, 600), peer: round(200_000.0, 800) }),
            vs_epoll: Some(one(Pair { berth: round(300_000.0, 600), peer: round(300_000.0, 900) })),
            vs_floor: Some(one(Pair { berth: round(300_000.0, 600), peer: round(300_000.0, 540) })),
            syscalls: Some((0.25, 2.0)),
        };
        let unix = Case { kind: Kind::Unix, peer: "tokio_unix", vs_epoll: None, vs_floor: None, syscalls: None, ..udp };
        let all: Vec<Row> = [udp, unix].iter().flat_map(rows).collect();
        let ids: Vec<&str> = all.iter().map(|r| r.bench.as_str()).collect();
        assert_eq!(
            ids,
            [
                "udp/64B/msgs_per_s",
                "udp/64B/server_cpu_us_per_msg",
                "udp/64B/server_cpu_us_per_msg_vs_epoll",
                "udp/64B/server_cpu_us_per_msg_vs_c_epoll",
                "udp/64B/syscalls_per_msg",
                "unix/64B/64conns/msgs_per_s",
                "unix/64B/64conns/server_cpu_us_per_msg",
            ]
        );
        assert_eq!(all[0].ratio, 1.5);
        assert_eq!(all[0].peer, "tokio_udp");
        // 600 ms over 300k messages is 2 µs; 800 ms over 200k is 4 µs: half the CPU.
        assert_eq!((all[1].berth, all[1].ratio), (2.0, 2.0));
        assert_eq!((all[2].peer.as_str(), all[2].ratio), ("berth_epoll", 1.5));
        // 540 ms against 600 ms: berth uses a ninth more than the floor.
        assert_eq!((all[3].peer.as_str(), all[3].ratio), ("c_epoll_mmsg", 0.9));
        assert_eq!(all[4].ratio, 8.0);
        assert_eq!(all[5].peer, "tokio_unix");
    }

    #[test]
    fn load_reports_parse_and_errors_invalidate_a_round() {
        let udp = r#"{"msgs_per_s":1000.0,"p50_us":5.0,"p99_us":9.0,"errors":0,"messages":1000,"bytes":0,"sent":1010,"lost":2,"late":0}"#;
        let r = parse_report(udp).unwrap();
        assert_eq!((r.messages, r.sent, r.lost), (1000, 1010, 2));
        let tcp = r#"{"msgs_per_s":10.0,"p50_us":5.0,"p99_us":9.0,"errors":0,"messages":10,"bytes":640}"#;
        assert_eq!(parse_report(tcp).unwrap().lost, 0);
        assert!(parse_report(&tcp.replace(r#""errors":0"#, r#""errors":1"#)).is_err());
        assert!(parse_report(&tcp.replace(r#""messages":10"#, r#""messages":0"#)).is_err());
        assert!(parse_report("nonsense").is_err());
    }
}
