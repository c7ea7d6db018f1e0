//! `relay_bench`: the round trip of a 64-byte frame through `berth relay` (TCP → IPC
//! → `berth backend-echo` → IPC → TCP) against a direct TCP echo (`berth echo`, the
//! same server without the IPC hop), side by side in one run.
//!
//! ```text
//! relay_bench [--quick]
//! ```
//!
//! Rows (appended to `berth_benches::results_path()`, lower is better):
//! - `relay/64B/rtt_p50_us` (peer `tcp_echo`): the median round trip over every
//!   sample of every round. The ratio is below 1 by construction (the relay adds a
//!   hop and a process); it says what the hop costs.
//! - `relay/64B/hop_us` (peer `c_epoll_hop`): that hop alone (relay p50 minus echo
//!   p50) against the same for a plain C epoll echo with and without a futex hop
//!   through a child process (`benches/c/epoll_echo.c` `--hop`, built with the
//!   system's `cc`; skipped with a note without one): the floor of a relay with a
//!   backend process on this machine, with no ring, framing or event loop. Its own
//!   ratio to the C echo is printed as about the best the first row can reach here.
//! - `relay/64B/handoff_us` (peer `hop_budget_0.9`): that C hop's hand-off alone,
//!   with no sockets (`--handoff`: a 64-byte message to the child and back, each
//!   asleep on a futex while the other works, both on the servers' core), against
//!   the hop a 0.9 ratio in the first row leaves (tcp echo p50 / 9): how much of
//!   that budget two processes on one core spend handing a request over and back.
//! - `relay/64B/hop_paired_us` (peer `c_epoll_hop_paired`): both hops again, from
//!   a pass after the rounds in which each cycle makes one round trip to each of
//!   relay, echo, C hop and C echo, so that drift moves both sides of each
//!   difference alike: the median of the cycles' relay − echo against that of
//!   their C hop − C echo. Every server waits about four round trips between its
//!   requests here, so the hops are larger than in the rounds.
//! - `relay/64B/syscalls_per_rt`: the syscalls of the relay and the backend
//!   together per round trip, against the echo server's, counted with `perf stat -e
//!   raw_syscalls:sys_enter` in a separate, untimed pass after the rounds (skipped,
//!   with a note, where perf cannot run); both processes' shares are printed too.
//!
//! The `berth` binary is looked up next to this executable and built with
//! `cargo build -p berth-cli` (same profile) if it is missing. The servers (relay,
//! backend, echo, the two C servers and the hand-off; one worker each) are pinned
//! to the first core and the client to the second when there are two. One client
//! connection sends a frame, waits for the whole reply, and repeats; rounds
//! alternate relay and echo (and the C pair), every other round in reverse order,
//! so drift on a shared machine hits both alike. Every child is stopped with
//! SIGINT (so the relay removes its channel files) and killed if it does not exit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_benches::sys_bench::{ChildGuard, PerfSyscalls, available_cores, pin_current_thread, spawn_pinned};
use berth_benches::{Better, Row, append_rows, results_path};

/// Payload bytes per frame (plus the 4-byte length).
const PAYLOAD: usize = 64;
const STARTUP: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    berth_benches::sys_bench::exit_code("relay_bench", run())
}

fn run() -> Result<(), String> {
    let quick = berth_benches::sys_bench::quick_flag("relay_bench")?;
    let (rounds, samples, warmup) = if quick { (3, 2_000, 300) } else { (7, 20_000, 2_000) };
    let berth = berth_benches::sys_bench::berth_binary("relay_bench")?;
    let cores = available_cores().map_err(|e| format!("reading the CPU set: {e}"))?;
    let (server_core, client_core) = match cores.as_slice() {
        [a, b, ..] => (Some(*a), Some(*b)),
        _ => (None, None),
    };

    let channel = format!("relay-bench-{}", std::process::id());
    let (relay, relay_addr) = start(&berth, &["relay", "--channel", &channel], server_core)?;
    let (backend, _) = start(&berth, &["backend-echo", "--channel", &channel], server_core)?;
    let (echo, echo_addr) = start(&berth, &["echo"], server_core)?;
    // The C floor: its echo, and the same with the hop through a child process.
    let exe_dir = berth.parent().ok_or("no directory for the C servers")?;
    let c_program = berth_benches::sys_bench::compile_c(exe_dir, "epoll_echo.c", "c_epoll_echo")
        .map_err(|e| eprintln!("relay_bench: no C floor ({e})"))
        .ok();
    let c_servers = match &c_program {
        Some(program) => {
            let (c_echo, a) = start_program(program, &[], server_core)?;
            let (c_hop, b) = start_program(program, &["--hop"], server_core)?;
            let a = a.ok_or("no address in the C echo's banner")?;
            let b = b.ok_or("no address in the C hop's banner")?;
            Some(((c_echo, client(a)?), (c_hop, client(b)?)))
        }
        None => None,
    };
    if let Some(core) = client_core {
        pin_current_thread(core).map_err(|e| format!("pinning the client: {e}"))?;
    }
    let relay_addr = relay_addr.ok_or("no address in the relay's banner")?;
    let echo_addr = echo_addr.ok_or("no address in the echo server's banner")?;
    let mut via_relay = relay_client(relay_addr)?;
    let mut direct = client(echo_addr)?;

    let frame: Vec<u8> = (PAYLOAD as u32).to_be_bytes().into_iter().chain((0..PAYLOAD).map(|i| i as u8)).collect();
    let mut relay_rtts = Vec::with_capacity(rounds * samples);
    let mut echo_rtts = Vec::with_capacity(rounds * samples);
    let (mut c_echo_rtts, mut c_hop_rtts, mut handoffs) = (Vec::new(), Vec::new(), Vec::new());
    let mut c_servers = c_servers;
    for round in 0..rounds {
        // Every other round in reverse, so that no server always runs after the same one.
        let forward = round % 2 == 0;
        if forward {
            measure(&mut via_relay, &frame, warmup, samples, &mut relay_rtts)?;
            measure(&mut direct, &frame, warmup, samples, &mut echo_rtts)?;
        }
        if let Some(((_, c_echo), (_, c_hop))) = c_servers.as_mut() {
            if forward {
                measure(c_echo, &frame, warmup, samples, &mut c_echo_rtts)?;
                measure(c_hop, &frame, warmup, samples, &mut c_hop_rtts)?;
            } else {
                measure(c_hop, &frame, warmup, samples, &mut c_hop_rtts)?;
                measure(c_echo, &frame, warmup, samples, &mut c_echo_rtts)?;
            }
        }
        if !forward {
            measure(&mut direct, &frame, warmup, samples, &mut echo_rtts)?;
            measure(&mut via_relay, &frame, warmup, samples, &mut relay_rtts)?;
        }
        if let Some(program) = &c_program {
            handoffs.push(handoff(program, samples, server_core)?);
        }
        eprintln!("relay_bench: round {}/{rounds} done", round + 1);
    }
    let (relay_p50, relay_p99) = percentiles(&mut relay_rtts);
    let (echo_p50, echo_p99) = percentiles(&mut echo_rtts);
    eprintln!(
        "relay_bench: 64 B round trip: relay p50 {relay_p50:.1} µs p99 {relay_p99:.1} µs; \
         tcp echo p50 {echo_p50:.1} µs p99 {echo_p99:.1} µs"
    );
    let mut rows = vec![Row::new("relay/64B/rtt_p50_us", "rtt_p50_us", relay_p50, "tcp_echo", echo_p50, Better::Lower)];
    if c_servers.is_some() {
        let (c_echo_p50, _) = percentiles(&mut c_echo_rtts);
        let (c_hop_p50, c_hop_p99) = percentiles(&mut c_hop_rtts);
        eprintln!(
            "relay_bench: C floor: epoll echo p50 {c_echo_p50:.1} µs; with a futex hop p50 {c_hop_p50:.1} µs \
             p99 {c_hop_p99:.1} µs; the hop costs berth {:.1} µs, C {:.1} µs; the best relay/tcp echo ratio \
             here is about {:.3}",
            relay_p50 - echo_p50,
            c_hop_p50 - c_echo_p50,
            c_echo_p50 / c_hop_p50
        );
        rows.push(Row::new(
            "relay/64B/hop_us",
            "hop_us",
            relay_p50 - echo_p50,
            "c_epoll_hop",
            c_hop_p50 - c_echo_p50,
            Better::Lower,
        ));
        handoffs.sort_by(f64::total_cmp);
        let handoff = handoffs[handoffs.len() / 2];
        let budget = echo_p50 / 9.0;
        eprintln!(
            "relay_bench: the C hop's hand-off alone (no sockets), median of the rounds: {handoff:.2} µs \
             ({:.2}..{:.2}); a 0.9 ratio leaves the hop {budget:.2} µs; with the C hop's cost berth's ratio \
             would be {:.3}",
            handoffs[0],
            handoffs[handoffs.len() - 1],
            echo_p50 / (echo_p50 + c_hop_p50 - c_echo_p50)
        );
        rows.push(Row::new("relay/64B/handoff_us", "handoff_us", handoff, "hop_budget_0.9", budget, Better::Lower));
    }
    if let Some(((_, c_echo), (_, c_hop))) = c_servers.as_mut() {
        let cycles = if quick { 2_000 } else { 10_000 };
        let (berth_hop, c_hop_cost) = paired_hops([&mut via_relay, &mut direct, c_hop, c_echo], &frame, cycles)?;
        eprintln!(
            "relay_bench: paired ({cycles} cycles of one round trip to each of relay, echo, C hop, C echo): \
             the hop costs berth {berth_hop:.2} µs, C {c_hop_cost:.2} µs (p50 of each cycle's difference)"
        );
        rows.push(Row::new(
            "relay/64B/hop_paired_us",
            "hop_paired_us",
            berth_hop,
            "c_epoll_hop_paired",
            c_hop_cost,
            Better::Lower,
        ));
    }
    let trips = if quick { 2_000 } else { 10_000 };
    let relayed = syscalls_per_rt(&mut via_relay, &frame, &[relay.id(), backend.id()], trips);
    let direct_n = syscalls_per_rt(&mut direct, &frame, &[echo.id()], trips);
    match (relayed, direct_n) {
        (Ok(r), Ok(e)) => {
            eprintln!(
                "relay_bench: syscalls per round trip (perf stat, untimed): relay {:.2} + backend {:.2} = {:.2}; \
                 tcp echo {:.2}",
                r[0],
                r[1],
                r[0] + r[1],
                e[0]
            );
            rows.push(Row::new(
                "relay/64B/syscalls_per_rt",
                "syscalls_per_rt",
                r[0] + r[1],
                "tcp_echo",
                e[0],
                Better::Lower,
            ));
        }
        (Err(e), _) | (_, Err(e)) => eprintln!("relay_bench: syscalls not counted: {e}"),
    }
    append_rows(&results_path(), &rows).map_err(|e| format!("writing results: {e}"))?;

    drop((via_relay, direct));
    for child in [relay, backend, echo] {
        stop(child);
    }
    if let Some(((c_echo, _), (c_hop, _))) = c_servers {
        stop(c_echo);
        stop(c_hop);
    }
    Ok(())
}

/// Starts `berth ARGS --workers 1 --log warn` (with `--addr 127.0.0.1:0` unless it
/// is the backend) on `core`; returns it and the address from its banner.
fn start(berth: &Path, args: &[&str], core: Option<usize>) -> Result<(ChildGuard, Option<SocketAddr>), String> {
    let mut all = args.to_vec();
    all.extend(["--log", "warn"]);
    if args[0] != "backend-echo" {
        all.extend(["--addr", "127.0.0.1:0", "--workers", "1"]);
    }
    start_program(berth, &all, core)
}

/// Starts `program ARGS` on `core`; returns it and the address its banner ends
/// with (`... on ADDR`, a server's; required unless `ARGS` starts the backend).
fn start_program(
    program: &Path,
    args: &[&str],
    core: Option<usize>,
) -> Result<(ChildGuard, Option<SocketAddr>), String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let server = args.first() != Some(&"backend-echo");
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = ChildGuard::new(
        spawn_pinned(&mut cmd, core).map_err(|e| format!("starting {} {args:?}: {e}", program.display()))?,
    );
    let stdout = child.child_mut().stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {} // keep the pipe drained
    });
    let banner = match rx.recv_timeout(STARTUP) {
        Ok(Some(Ok(line))) => line,
        _ => return Err(format!("{} {args:?} printed no banner", program.display())),
    };
    // "... on ADDR (1 worker)"
    let addr = banner.rsplit(" on ").next().and_then(|rest| rest.split(' ').next()).and_then(|a| a.parse().ok());
    if server && addr.is_none() {
        return Err(format!("no address in {banner:?}"));
    }
    Ok((child, addr))
}

/// One `--handoff` run of the C floor on `core`: the mean round trip (µs) of
/// `trips` hand-offs to its child process and back.
fn handoff(program: &Path, trips: usize, core: Option<usize>) -> Result<f64, String> {
    let mut cmd = Command::new(program);
    cmd.args(["--handoff", &trips.to_string()]).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = ChildGuard::new(spawn_pinned(&mut cmd, core).map_err(|e| format!("starting the hand-off: {e}"))?);
    // Bounded: the program gives up after 60 s (alarm), and its child dies with it.
    let mut text = String::new();
    let stdout = child.child_mut().stdout.take().ok_or("no stdout")?;
    BufReader::new(stdout).read_to_string(&mut text).map_err(|e| format!("reading the hand-off: {e}"))?;
    match child.wait_timeout(STARTUP) {
        Ok(Some(status)) if status.success() => {}
        other => return Err(format!("the hand-off ended with {other:?}")),
    }
    text.trim()
        .strip_prefix("handoff ")
        .and_then(|rest| rest.strip_suffix(" us"))
        .and_then(|us| us.parse().ok())
        .ok_or_else(|| format!("the hand-off printed {text:?}"))
}

fn stop(mut child: ChildGuard) {
    if let Ok(pid) = i32::try_from(child.id())
        && let Some(pid) = rustix::process::Pid::from_raw(pid)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    }
    let _ = child.child_mut();
    let _ = child.wait_timeout(Duration::from_secs(5));
}

fn client(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    Ok(s)
}

/// A relay connection that has had one echo: until the relay has taken the
/// backend's hello, a frame is answered by a clean close, so retry (bounded).
fn relay_client(addr: SocketAddr) -> Result<TcpStream, String> {
    let start = Instant::now();
    let probe = [0, 0, 0, 1, 42];
    loop {
        if start.elapsed() > STARTUP {
            return Err("the relay never took the backend".into());
        }
        let mut s = client(addr)?;
        let mut back = [0u8; 5];
        if s.write_all(&probe).is_ok() && s.read_exact(&mut back).is_ok() && back == probe {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `warmup` unmeasured round trips, then `samples` timed ones (µs) into `out`; every
/// reply is checked.
fn measure(s: &mut TcpStream, frame: &[u8], warmup: usize, samples: usize, out: &mut Vec<f64>) -> Result<(), String> {
    let mut back = vec![0u8; frame.len()];
    for i in 0..warmup + samples {
        let t = Instant::now();
        s.write_all(frame).map_err(|e| format!("send: {e}"))?;
        s.read_exact(&mut back).map_err(|e| format!("receive: {e}"))?;
        let rtt = t.elapsed();
        if back != frame {
            return Err("a reply differs from its frame".into());
        }
        if i >= warmup {
            out.push(rtt.as_secs_f64() * 1e6);
        }
    }
    Ok(())
}

/// The hops measured in pairs: each cycle makes one round trip to each of `relay`,
/// `echo`, `c_hop` and `c_echo` in turn, so that a drifting machine moves both sides
/// of a difference alike; returns the medians of relay − echo and C hop − C echo
/// (µs) over `cycles` cycles, after a tenth as many unmeasured ones.
fn paired_hops(servers: [&mut TcpStream; 4], frame: &[u8], cycles: usize) -> Result<(f64, f64), String> {
    let [relay, echo, c_hop, c_echo] = servers;
    let mut back = vec![0u8; frame.len()];
    let mut once = |s: &mut TcpStream| -> Result<f64, String> {
        let t = Instant::now();
        s.write_all(frame).map_err(|e| format!("send: {e}"))?;
        s.read_exact(&mut back).map_err(|e| format!("receive: {e}"))?;
        let rtt = t.elapsed().as_secs_f64() * 1e6;
        if back != frame {
            return Err("a reply differs from its frame".into());
        }
        Ok(rtt)
    };
    let (mut berth, mut c) = (Vec::with_capacity(cycles), Vec::with_capacity(cycles));
    for i in 0..cycles + cycles / 10 {
        let (r, e, h, ce) = (once(relay)?, once(echo)?, once(c_hop)?, once(c_echo)?);
        if i >= cycles / 10 {
            berth.push(r - e);
            c.push(h - ce);
        }
    }
    Ok((percentiles(&mut berth).0, percentiles(&mut c).0))
}

/// Syscalls per round trip of each process of `pids` over `trips` round trips on
/// `s` (untimed: perf slows them). Counting starts a moment before the first round
/// trip and ends a moment after the last, so an idle wake-up or two is counted too.
fn syscalls_per_rt(s: &mut TcpStream, frame: &[u8], pids: &[u32], trips: usize) -> Result<Vec<f64>, String> {
    let perfs =
        pids.iter().map(|&pid| PerfSyscalls::start(pid, Duration::from_millis(300))).collect::<Result<Vec<_>, _>>()?;
    let mut discard = Vec::new();
    measure(s, frame, trips, 0, &mut discard)?;
    perfs.into_iter().map(|p| p.stop().map(|n| n / trips as f64)).collect()
}

/// (p50, p99) of the samples.
fn percentiles(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}
