//! `files_bench`: static files over HTTP/1.1, `berth serve` against nginx (one
//! worker, `sendfile on`), both loaded by wrk, side by side in one run.
//!
//! ```text
//! files_bench [--quick]
//! ```
//!
//! Rows (appended to `berth_benches::results_path()`, peer `nginx`):
//! `files/1KiB/req_per_s`, `files/64KiB/req_per_s`, `files/1MiB/req_per_s` — wrk's
//! `Requests/sec` with one thread and 64 keep-alive connections, from the round
//! whose own berth/nginx ratio is the median (see [`median_pair`]);
//! `files/1KiB/server_cpu_us_per_req` (lower is better), from the round whose CPU
//! ratio is the median; and `files/1KiB_logged/req_per_s`, both servers writing an
//! access log to a file (berth `--access-log`, nginx `access_log` in its combined
//! format with a 64 KiB buffer). nginx runs with `open_file_cache` (descriptors and
//! metadata of served files kept open), its usual tuning for static files. Full mode
//! runs 5 rounds of 3 s per server and size, the two servers back to back in each,
//! in alternating order so drift on a shared machine hits both alike; `--quick` runs
//! one round of 2 s. Each run is preceded by a 1 s warm-up. The server CPU time per
//! request (from `/proc/<pid>/stat`) is printed beside the figures.
//!
//! nginx and wrk are looked up on `PATH` (and `/usr/sbin`). When one is missing and
//! this runs as root, they are installed with `apt-get install -y nginx-light wrk`
//! (`nginx` if `nginx-light` has no candidate; `apt-get update` first if the install
//! fails); otherwise the bench prints the install command, writes no rows and exits
//! successfully.
//!
//! nginx runs in the foreground as a single process (`master_process off`,
//! `worker_processes 1`): one worker, as the target asks, and one pid to pin, to
//! read CPU time from and to kill — a killed master would leave its worker behind.
//! Its configuration, pid file, error log and temp directories live under
//! `target/files-bench-<pid>/`, next to the served files, and are removed at the
//! end. Both servers are pinned to the first core and wrk to the second, and both
//! must return the exact bytes of every file before anything is measured.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_benches::sys_bench::{ChildGuard, available_cores, process_cpu_time, spawn_pinned};
use berth_benches::{Better, Row, append_rows, results_path};

/// The served files: (row label, size in bytes).
const SIZES: &[(&str, usize)] = &[("1KiB", 1024), ("64KiB", 64 * 1024), ("1MiB", 1024 * 1024)];
/// wrk's connections.
const CONNECTIONS: u32 = 64;
const STARTUP: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const INSTALL: &str = "apt-get install -y nginx-light wrk";

fn main() -> ExitCode {
    berth_benches::sys_bench::exit_code("files_bench", run())
}

fn run() -> Result<(), String> {
    let quick = berth_benches::sys_bench::quick_flag("files_bench")?;
    let (rounds, secs) = if quick { (1, 2) } else { (5, 3) };
    let Some((nginx, wrk)) = tools()? else { return Ok(()) };

    let cores = available_cores().map_err(|e| format!("reading the CPU set: {e}"))?;
    let (server_core, client_core) = match cores.as_slice() {
        [a, b, ..] => (Some(*a), Some(*b)),
        _ => (None, None),
    };

    let work = WorkDir::create()?;
    let www = work.path.join("www");
    fs::create_dir_all(&www).map_err(|e| format!("{}: {e}", www.display()))?;
    let mut files = Vec::new();
    for &(label, size) in SIZES {
        let body = content(size);
        let name = format!("file_{label}");
        fs::write(www.join(&name), &body).map_err(|e| format!("writing {name}: {e}"))?;
        files.push((label, name, body));
    }

    let berth_bin = berth_benches::sys_bench::berth_binary("files_bench")?;
    let (berth, berth_addr) = start_berth(&berth_bin, &www, server_core, None)?;
    let (nginx_proc, nginx_addr) = start_nginx(&nginx, &work.path.join("nginx"), &www, server_core, None)?;
    let servers = [("berth", &berth, berth_addr), ("nginx", &nginx_proc, nginx_addr)];

    for (_, name, body) in &files {
        for (server, _, addr) in &servers {
            let got = http_get(*addr, &format!("/{name}")).map_err(|e| format!("{server}: GET /{name}: {e}"))?;
            if got != *body {
                return Err(format!(
                    "{server}: GET /{name} returned {} bytes that differ from the file's {}",
                    got.len(),
                    body.len()
                ));
            }
        }
    }
    eprintln!(
        "files_bench: both servers return every file intact; wrk -t1 -c{CONNECTIONS}, {rounds} round(s) of {secs} s \
         (servers on core {server_core:?}, wrk on core {client_core:?})"
    );

    let mut rows = Vec::new();
    let mut summary = String::new();
    for (label, name, _) in &files {
        let pairs = measure(&servers, &wrk, label, name, rounds, secs, client_core)?;
        let ([b, n], (low, high)) = median_pair(&pairs, 0).ok_or_else(|| format!("{label}: no round measured"))?;
        let row = Row::new(format!("files/{label}/req_per_s"), "req_per_s", b.0, "nginx", n.0, Better::Higher);
        let _ = writeln!(
            summary,
            "files_bench: {label:>5}: berth {:>9.0} req/s ({:.1} µs CPU/req), nginx {:>9.0} req/s ({:.1} µs CPU/req), \
             ratio {:.2} (the median round's; {low:.2}..{high:.2} over {} rounds)",
            b.0,
            b.1,
            n.0,
            n.1,
            row.ratio,
            pairs.len(),
        );
        rows.push(row);
        if *label == "1KiB" {
            // Server CPU per request: where the two servers' own costs show, however
            // fast wrk can drive them.
            let ([b, n], (low, high)) = median_pair(&pairs, 1).ok_or_else(|| format!("{label}: no round measured"))?;
            let row = Row::new(
                format!("files/{label}/server_cpu_us_per_req"),
                "us_per_req",
                b.1,
                "nginx",
                n.1,
                Better::Lower,
            );
            let _ = writeln!(
                summary,
                "files_bench: {label:>5}: server CPU berth {:.2} µs/req, nginx {:.2} µs/req, ratio {:.2} \
                 (the median round's; nginx/berth {low:.2}..{high:.2})",
                b.1, n.1, row.ratio,
            );
            rows.push(row);
        }
    }
    // The first pair stops before the logged pair starts on the same core.
    drop(berth);
    drop(nginx_proc);

    // With access logs: the same 1 KiB file, both servers writing a line per request.
    let (label, name, _) = &files[0];
    let logs = work.path.join("logs");
    fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let (berth, berth_addr) = start_berth(&berth_bin, &www, server_core, Some(&logs.join("berth.log")))?;
    let (nginx_proc, nginx_addr) =
        start_nginx(&nginx, &work.path.join("nginx-logged"), &www, server_core, Some(&logs.join("nginx.log")))?;
    let servers = [("berth", &berth, berth_addr), ("nginx", &nginx_proc, nginx_addr)];
    let pairs = measure(&servers, &wrk, &format!("{label}_logged"), name, rounds, secs, client_core)?;
    let ([b, n], (low, high)) = median_pair(&pairs, 0).ok_or("logged: no round measured")?;
    let row = Row::new(format!("files/{label}_logged/req_per_s"), "req_per_s", b.0, "nginx", n.0, Better::Higher);
    let _ = writeln!(
        summary,
        "files_bench: {label}_logged: berth {:.0} req/s ({:.1} µs CPU/req), nginx {:.0} req/s ({:.1} µs CPU/req), \
         ratio {:.2} ({low:.2}..{high:.2})",
        b.0, b.1, n.0, n.1, row.ratio,
    );
    rows.push(row);
    for log in ["berth.log", "nginx.log"] {
        let lines = fs::read_to_string(logs.join(log)).map(|t| t.lines().count()).unwrap_or(0);
        if lines == 0 {
            return Err(format!("the {log} access log is empty: the logged case logged nothing"));
        }
    }
    eprint!("{summary}");
    append_rows(&results_path(), &rows).map_err(|e| format!("writing results: {e}"))?;
    Ok(()) // the guards kill both servers here, as on every early return
}

/// nginx and wrk, installed first when missing and running as root; `None` (after
/// printing the skip line) when missing otherwise.
fn tools() -> Result<Option<(PathBuf, PathBuf)>, String> {
    if let (Some(n), Some(w)) = (find_program("nginx"), find_program("wrk")) {
        return Ok(Some((n, w)));
    }
    let missing: Vec<&str> = ["nginx", "wrk"].into_iter().filter(|p| find_program(p).is_none()).collect();
    if !rustix::process::geteuid().is_root() {
        println!(
            "files_bench: skipped files: {} not installed; install with `sudo {INSTALL}` and run again",
            missing.join(" and ")
        );
        return Ok(None);
    }
    let nginx_pkg = if has_candidate("nginx-light") { "nginx-light" } else { "nginx" };
    let install = |pkgs: &[&str]| -> Result<bool, String> {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y"]).args(pkgs).env("DEBIAN_FRONTEND", "noninteractive");
        eprintln!("files_bench: {} missing; running: apt-get install -y {}", missing.join(" and "), pkgs.join(" "));
        Ok(cmd.status().map_err(|e| format!("running apt-get: {e}"))?.success())
    };
    let pkgs = [nginx_pkg, "wrk"];
    if !install(&pkgs)? {
        eprintln!("files_bench: running: apt-get update");
        let _ = Command::new("apt-get").arg("update").status();
        if !install(&pkgs)? {
            return Err(format!("could not install {}", pkgs.join(" ")));
        }
    }
    match (find_program("nginx"), find_program("wrk")) {
        (Some(n), Some(w)) => Ok(Some((n, w))),
        _ => Err("nginx or wrk still missing after apt-get install".into()),
    }
}

/// Whether apt knows a candidate version of `pkg`.
fn has_candidate(pkg: &str) -> bool {
    let Ok(out) = Command::new("apt-cache").args(["policy", pkg]).output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().any(|l| l.trim().strip_prefix("Candidate:").is_some_and(|v| v.trim() != "(none)"))
}

/// `name` on `PATH`, or in the sbin directories that a non-login root shell may lack.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The bench's directory under `target/`, removed on drop.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> Result<WorkDir, String> {
        let target = results_path()
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("target"));
        let path = target.join(format!("files-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let path = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// `size` bytes of deterministic, non-repeating-looking content (an LCG).
fn content(size: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..size)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// Starts `berth serve WWW --addr 127.0.0.1:0 --workers 1` on `core`; returns it and
/// the address from its banner `berth: serving <dir> on http://<addr>/ (1 worker)`.
fn start_berth(
    berth: &Path,
    www: &Path,
    core: Option<usize>,
    access_log: Option<&Path>,
) -> Result<(ChildGuard, SocketAddr), String> {
    let mut cmd = Command::new(berth);
    cmd.arg("serve").arg(www).args(["--addr", "127.0.0.1:0", "--workers", "1", "--log", "warn"]);
    if let Some(log) = access_log {
        cmd.arg("--access-log").arg(log);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = ChildGuard::new(spawn_pinned(&mut cmd, core).map_err(|e| format!("starting berth serve: {e}"))?);
    let stdout = child.child_mut().stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {} // keep the pipe drained
    });
    let banner = match rx.recv_timeout(STARTUP) {
        Ok(Some(Ok(line))) => line,
        _ => return Err("berth serve printed no banner".into()),
    };
    let addr = parse_banner(&banner).ok_or_else(|| format!("no address in berth's banner {banner:?}"))?;
    Ok((child, addr))
}

/// The address in `... on http://<addr>/ ...`.
fn parse_banner(line: &str) -> Option<SocketAddr> {
    let rest = line.rsplit_once(" on http://")?.1;
    rest.split(['/', ' ']).next()?.parse().ok()
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed).
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// The http modules with a temp path directive that `nginx -V` does not say are
/// left out (a directive of a missing module is a configuration error).
fn temp_path_modules(nginx: &Path) -> Vec<&'static str> {
    let out = Command::new(nginx).arg("-V").output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout));
    let text = text.unwrap_or_default();
    ["proxy", "fastcgi", "uwsgi", "scgi"]
        .into_iter()
        .filter(|m| !text.contains(&format!("--without-http_{m}_module")))
        .collect()
}

/// nginx's configuration: one process, one worker, `sendfile on`, `tcp_nopush on`,
/// keep-alive without a request limit, no access log, every path under `prefix`.
fn nginx_conf(prefix: &Path, www: &Path, port: u16, temp_modules: &[&str], access_log: Option<&Path>) -> String {
    let p = prefix.display();
    let mut c = String::new();
    let _ = writeln!(c, "daemon off;\nmaster_process off;\nworker_processes 1;");
    let _ = writeln!(c, "pid {p}/nginx.pid;\nerror_log {p}/error.log warn;");
    let _ = writeln!(c, "events {{\n    worker_connections 1024;\n}}");
    let _ = writeln!(c, "http {{");
    match access_log {
        // Buffered, as a tuned nginx logs: berth's logger also writes in batches.
        Some(log) => {
            let _ = writeln!(c, "    access_log {} combined buffer=64k flush=1s;", log.display());
        }
        None => {
            let _ = writeln!(c, "    access_log off;");
        }
    }
    let _ = writeln!(c, "    sendfile on;\n    tcp_nopush on;\n    tcp_nodelay on;");
    // Served files' descriptors and metadata kept open, as tuned static servers do.
    let _ = writeln!(c, "    open_file_cache max=1024 inactive=60s;\n    open_file_cache_valid 60s;");
    let _ = writeln!(c, "    keepalive_timeout 65;\n    keepalive_requests 1000000;");
    let _ = writeln!(c, "    default_type application/octet-stream;");
    let _ = writeln!(c, "    client_body_temp_path {p}/tmp/client_body;");
    for m in temp_modules {
        let _ = writeln!(c, "    {m}_temp_path {p}/tmp/{m};");
    }
    let _ = writeln!(c, "    server {{\n        listen 127.0.0.1:{port};\n        root {};", www.display());
    let _ = writeln!(c, "        location / {{\n        }}\n    }}\n}}");
    c
}

/// Starts nginx on a free port with its files under `work/nginx`, pinned to `core`,
/// and waits until it accepts connections.
fn start_nginx(
    nginx: &Path,
    prefix: &Path,
    www: &Path,
    core: Option<usize>,
    access_log: Option<&Path>,
) -> Result<(ChildGuard, SocketAddr), String> {
    let prefix = prefix.to_path_buf();
    fs::create_dir_all(prefix.join("tmp")).map_err(|e| format!("{}: {e}", prefix.display()))?;
    let port = free_port()?;
    let conf = prefix.join("nginx.conf");
    fs::write(&conf, nginx_conf(&prefix, www, port, &temp_path_modules(nginx), access_log))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut cmd = Command::new(nginx);
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf).arg("-e").arg(prefix.join("error.log"));
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
    let mut child = ChildGuard::new(spawn_pinned(&mut cmd, core).map_err(|e| format!("starting nginx: {e}"))?);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    loop {
        if TcpStream::connect(addr).is_ok() {
            return Ok((child, addr));
        }
        let exited = child.child_mut().try_wait().map_err(|e| e.to_string())?;
        if exited.is_some() || start.elapsed() > STARTUP {
            let log = fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
            return Err(format!("nginx did not start on {addr} ({exited:?}); error log:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `GET path` on a new connection; the body, after checking for `200` and
/// reading exactly `Content-Length` bytes.
fn http_get(addr: SocketAddr, path: &str) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the end of the head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(io::Error::other(format!("status {status}: {}", head.lines().next().unwrap_or(""))));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Content-Length"))?;
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the end of the body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if body.len() != len {
        return Err(io::Error::other("body longer than Content-Length"));
    }
    Ok(body)
}

/// Runs `wrk -t1 -c64 -d<secs>s --latency URL` on `core`; returns its output.
fn load(wrk: &Path, url: &str, secs: u32, core: Option<usize>) -> Result<String, String> {
    let mut cmd = Command::new(wrk);
    cmd.args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{secs}s"), "--latency", url]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = spawn_pinned(&mut cmd, core).map_err(|e| format!("starting wrk: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("wrk {url} failed ({}):\n{text}", out.status));
    }
    Ok(text)
}

/// What one wrk run reports.
#[derive(Debug, Clone, PartialEq)]
struct WrkStats {
    req_per_s: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
}

/// Parses wrk's summary: `Requests/sec:`, `N requests in ...`, and the optional
/// `Non-2xx or 3xx responses:` and `Socket errors:` lines.
fn parse_wrk(out: &str) -> Result<WrkStats, String> {
    let mut stats = WrkStats { req_per_s: f64::NAN, requests: 0, non_2xx: 0, socket_errors: 0 };
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            stats.req_per_s = v.trim().parse().map_err(|_| format!("bad Requests/sec line {line:?}"))?;
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            stats.requests = n.trim().parse().map_err(|_| format!("bad requests line {line:?}"))?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            stats.non_2xx = v.trim().parse().map_err(|_| format!("bad Non-2xx line {line:?}"))?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            stats.socket_errors = v
                .split(',')
                .filter_map(|f| f.split_whitespace().nth(1))
                .map(|n| n.parse::<u64>().map_err(|_| format!("bad Socket errors line {line:?}")))
                .sum::<Result<u64, String>>()?;
        }
    }
    if !stats.req_per_s.is_finite() {
        return Err("no Requests/sec in wrk's output".into());
    }
    Ok(stats)
}

/// One round: (requests per second, server CPU µs per request) of berth, then nginx.
type Round = [(f64, f64); 2];

/// The round whose own berth/nginx requests-per-second ratio is the median (the
/// lower middle for an even count, the one less favourable to berth), and the
/// lowest and highest ratio. Loopback on this VM jumps between two levels from one
/// round to the next; separate medians per server could set a fast round of one
/// against a slow round of the other, a round's own pair cannot.
/// Runs wrk against each server, `rounds` times, alternating who goes first: per
/// round (req/s, server CPU µs per request) of berth and of nginx.
fn measure(
    servers: &[(&str, &ChildGuard, SocketAddr); 2],
    wrk: &Path,
    label: &str,
    name: &str,
    rounds: usize,
    secs: u32,
    client_core: Option<usize>,
) -> Result<Vec<Round>, String> {
    let mut pairs: Vec<Round> = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut pair = [(0.0, 0.0); 2];
        for i in order {
            let (server, proc, addr) = &servers[i];
            let url = format!("http://{addr}/{name}");
            load(wrk, &url, 1, client_core)?; // warm-up: connections, page cache, caches
            let cpu0 = process_cpu_time(proc.id()).map_err(|e| format!("{server} CPU time: {e}"))?;
            let out = load(wrk, &url, secs, client_core)?;
            let cpu = process_cpu_time(proc.id()).map_err(|e| format!("{server} CPU time: {e}"))? - cpu0;
            let stats = parse_wrk(&out).map_err(|e| format!("{server} {label}: {e}\nwrk said:\n{out}"))?;
            if stats.non_2xx > 0 || stats.socket_errors > 0 {
                return Err(format!("{server} {label}: wrk saw errors\n{out}"));
            }
            let cpu_us = if stats.requests > 0 { cpu.as_secs_f64() * 1e6 / stats.requests as f64 } else { 0.0 };
            eprintln!(
                "files_bench: {label} round {}/{rounds} {server}: {:.0} req/s, {cpu_us:.1} µs server CPU/request",
                round + 1,
                stats.req_per_s
            );
            pair[i] = (stats.req_per_s, cpu_us);
        }
        pairs.push(pair);
    }
    Ok(pairs)
}

/// The round whose berth/nginx ratio of field `key` (0: req/s, 1: CPU per request,
/// as nginx/berth so that higher is better for both) is the median, and the lowest
/// and highest ratios.
fn median_pair(pairs: &[Round], key: usize) -> Option<(Round, (f64, f64))> {
    let ratio = |p: &Round| {
        let (b, n) = if key == 0 { (p[0].0, p[1].0) } else { (p[1].1, p[0].1) };
        if n > 0.0 { b / n } else { 0.0 }
    };
    let mut sorted = pairs.to_vec();
    sorted.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    let median = *sorted.get(sorted.len().checked_sub(1)? / 2)?;
    Some((median, (ratio(sorted.first()?), ratio(sorted.last()?))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output of `wrk -t1 -c64 -d2s --latency` (wrk 4.1.0) against nginx.
    const WRK_SAMPLE: &str = "\
Running 2s test @ http://127.0.0.1:40321/file_1KiB
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.05ms  312.44us   6.91ms   88.12%
    Req/Sec    61.27k     3.02k   65.10k    80.00%
  Latency Distribution
     50%    1.01ms
     75%    1.13ms
     90%    1.33ms
     99%    2.10ms
  121958 requests in 2.00s, 146.03MB read
Requests/sec:  60965.42
Transfer/sec:     73.00MB
";

    /// Each row comes from one round's own pair: a fast round of one server is
    /// never set against a slow round of the other.
    #[test]
    fn rows_come_from_the_median_round() {
        // berth is 1.1x nginx in every round, at two machine levels; per-server
        // medians would say 220 against 100 (2.2x).
        let r = |b: f64, n: f64| [(b, 1.0), (n, 2.0)];
        let pairs = [r(220.0, 200.0), r(110.0, 100.0), r(110.0, 100.0), r(220.0, 100.0), r(220.0, 100.0)];
        let (median, (low, high)) = median_pair(&pairs, 0).unwrap();
        assert!((median[0].0 / median[1].0 - 1.1).abs() < 1e-9);
        assert!((low - 1.1).abs() < 1e-9 && (high - 2.2).abs() < 1e-9);
        // An even count takes the lower middle; none is no comparison.
        let (two, _) = median_pair(&[r(100.0, 100.0), r(300.0, 100.0)], 0).unwrap();
        assert_eq!(two[0].0, 100.0);
        assert!(median_pair(&[], 0).is_none());
        // The CPU key: nginx/berth, so a berth that spends less is above 1.
        let c = |b: f64, n: f64| [(1.0, b), (1.0, n)];
        let (median, (low, high)) = median_pair(&[c(2.0, 3.0), c(4.0, 3.0), c(3.0, 3.0)], 1).unwrap();
        assert_eq!(median[0].1, 3.0);
        assert!((low - 0.75).abs() < 1e-9 && (high - 1.5).abs() < 1e-9);
    }

    #[test]
    fn wrk_summary_is_parsed() {
        let s = parse_wrk(WRK_SAMPLE).unwrap();
        assert_eq!(s, WrkStats { req_per_s: 60965.42, requests: 121958, non_2xx: 0, socket_errors: 0 });
    }

    #[test]
    fn wrk_errors_are_counted() {
        let out = format!(
            "{WRK_SAMPLE}  Socket errors: connect 0, read 3, write 1, timeout 2\n  Non-2xx or 3xx responses: 17\n"
        );
        let s = parse_wrk(&out).unwrap();
        assert_eq!((s.socket_errors, s.non_2xx), (6, 17));
    }

    #[test]
    fn wrk_output_without_a_rate_is_an_error() {
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n").is_err());
        assert!(parse_wrk("Requests/sec:  fast\n").is_err());
    }

    #[test]
    fn nginx_conf_has_one_worker_sendfile_and_private_paths() {
        let c = nginx_conf(Path::new("/t/ng"), Path::new("/t/www"), 8081, &["proxy", "fastcgi"], None);
        let logged = nginx_conf(Path::new("/t/ng"), Path::new("/t/www"), 8081, &[], Some(Path::new("/t/a.log")));
        assert!(logged.lines().any(|l| l.trim() == "access_log /t/a.log combined buffer=64k flush=1s;"), "{logged}");
        for line in [
            "open_file_cache max=1024 inactive=60s;",
            "daemon off;",
            "master_process off;",
            "worker_processes 1;",
            "pid /t/ng/nginx.pid;",
            "error_log /t/ng/error.log warn;",
            "access_log off;",
            "sendfile on;",
            "tcp_nopush on;",
            "keepalive_requests 1000000;",
            "client_body_temp_path /t/ng/tmp/client_body;",
            "proxy_temp_path /t/ng/tmp/proxy;",
            "fastcgi_temp_path /t/ng/tmp/fastcgi;",
            "listen 127.0.0.1:8081;",
            "root /t/www;",
        ] {
            assert!(c.lines().any(|l| l.trim() == line), "missing {line:?} in\n{c}");
        }
        assert!(!c.contains("uwsgi"));
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn banner_address_is_parsed() {
        let line = "berth: serving /tmp/on http://x on http://127.0.0.1:4242/ (1 worker)";
        assert_eq!(parse_banner(line), Some("127.0.0.1:4242".parse().unwrap()));
        assert_eq!(parse_banner("berth: echo on 127.0.0.1:1 (1 worker)"), None);
    }

    #[test]
    fn content_is_deterministic() {
        assert_eq!(content(4096), content(4096));
        assert_eq!(content(1024).len(), 1024);
        assert_ne!(content(64)[..32], content(64)[32..]);
    }
}
