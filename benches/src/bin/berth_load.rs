//! `berth_load`: the load generator of the echo benchmarks.
//!
//! Opens C TCP connections (or, with `--addr unix:/path`, Unix stream connections)
//! to an echo server and runs ping-pong on each: write one
//! M-byte message, read exactly M bytes back, check every byte, repeat. Each message
//! is a deterministic pattern seeded by (connection id, sequence number), so a server
//! that mixes up connections, reorders, drops or invents bytes is caught: a mismatch is
//! an error, reported on stderr and counted, never ignored.
//!
//! One thread runs one mio (epoll, edge-triggered) loop over every connection, so the
//! generator stays cheap enough to drive a server from a single pinned core: per
//! message it makes one `write` and usually one `read`. A read that returns less than
//! it asked for has drained the socket, and edge-triggered epoll reports every later
//! arrival, so no speculative read ending in `EAGAIN` is needed (tokio's own readiness
//! clearing does the same). The latency histogram has fixed log buckets; nothing is
//! allocated per message.
//!
//! Everything is bounded in time: the run stops after `--warmup` + `--duration`
//! seconds, and a connection that makes no progress for `--timeout` seconds (a dead or
//! stuck server) is counted as an error and closed.
//!
//! ```text
//! berth_load --addr 127.0.0.1:7000|unix:/path --connections 64 --size 64 --duration 10 [--warmup 1]
//!            [--timeout 5] [--json] [--marks] [--quiet]
//! ```
//!
//! Output: one human line; with `--json`, one JSON object
//! `{msgs_per_s, p50_us, p99_us, errors, messages, bytes}` on stdout instead (the human
//! line goes to stderr), where `messages` are the round trips completed in the measured
//! window (after warm-up), `bytes` the payload bytes echoed and verified in it, and
//! `errors` counts connect failures, resets, early closes, timeouts and mismatches over
//! the whole run; `--quiet` drops the human line (errors are still described on
//! stderr). `--marks` prints `mark start` and `mark end` lines on stdout at the
//! edges of the measured window, so a caller can sample the server's CPU time there.
//! The exit status is 0 only if no error happened and at least one message completed.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_benches::load;

use mio::net::{TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Registry, Token};

const USAGE: &str = "usage: berth_load --addr HOST:PORT|unix:/path --connections C --size M --duration SECS \
                     [--warmup SECS] [--timeout SECS] [--json] [--marks] [--quiet]";

/// How many mismatches are described on stderr before only counting them.
const MISMATCH_REPORTS: u64 = 5;

fn main() -> ExitCode {
    let cfg = match Config::parse(std::env::args().skip(1)) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("berth_load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let report = match run(&cfg) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("berth_load: {e}");
            return ExitCode::from(1);
        }
    };
    let human = report.human_line(&cfg);
    if cfg.json {
        if !cfg.quiet {
            eprintln!("{human}");
        }
        println!("{}", report.json());
    } else if !cfg.quiet {
        println!("{human}");
    }
    if report.errors.total() == 0 && report.messages > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(a) => a.fmt(f),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connection of either kind, driven the same way.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Starts a non-blocking connect and registers the stream with `registry`.
    fn connect(target: &Target, registry: &Registry, token: Token) -> io::Result<Stream> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        Ok(match target {
            Target::Tcp(addr) => {
                let mut s = TcpStream::connect(*addr)?;
                registry.register(&mut s, token, interest)?;
                Stream::Tcp(s)
            }
            Target::Unix(path) => {
                let mut s = UnixStream::connect(path)?;
                registry.register(&mut s, token, interest)?;
                Stream::Unix(s)
            }
        })
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }

    /// `Ok` once connected; `NotConnected` while the connect is in progress.
    fn connected(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(drop),
            Stream::Unix(s) => s.peer_addr().map(drop),
        }
    }

    fn set_nodelay(&self) {
        if let Stream::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The command line.
#[derive(Debug, Clone)]
struct Config {
    addr: Target,
    connections: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    json: bool,
    marks: bool,
    quiet: bool,
}

impl Config {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
        let mut addr = None;
        let mut connections = None;
        let mut size = None;
        let mut duration = None;
        let mut warmup = Duration::from_secs(1);
        let mut timeout = Duration::from_secs(5);
        let mut json = false;
        let mut marks = false;
        let mut quiet = false;
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--addr" => {
                    let text = value()?;
                    if let Some(path) = text.strip_prefix("unix:") {
                        addr = Some(Target::Unix(PathBuf::from(path)));
                        continue;
                    }
                    let resolved = text.to_socket_addrs().map_err(|e| format!("--addr {text}: {e}"))?.next();
                    addr = Some(Target::Tcp(resolved.ok_or_else(|| format!("--addr {text}: no address"))?));
                }
                "--connections" => connections = Some(load::parse_num(&arg, &value()?)?),
                "--size" => size = Some(load::parse_num(&arg, &value()?)?),
                "--duration" => duration = Some(load::parse_secs(&arg, &value()?)?),
                "--warmup" => warmup = load::parse_secs(&arg, &value()?)?,
                "--timeout" => timeout = load::parse_secs(&arg, &value()?)?,
                "--json" => json = true,
                "--marks" => marks = true,
                "--quiet" => quiet = true,
                "-h" | "--help" => return Err("help".into()),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let cfg = Config {
            addr: addr.ok_or("--addr is required")?,
            connections: connections.ok_or("--connections is required")?,
            size: size.ok_or("--size is required")?,
            duration: duration.ok_or("--duration is required")?,
            warmup,
            timeout,
            json,
            marks,
            quiet,
        };
        if cfg.connections == 0 || cfg.size == 0 || cfg.duration.is_zero() || cfg.timeout.is_zero() {
            return Err("--connections, --size, --duration and --timeout must be positive".into());
        }
        Ok(cfg)
    }
}

/// Fills `buf` with message `seq` of connection `conn`: a splitmix64 stream whose seed
/// is unique per (connection, sequence number) for the first 2^40 messages.
fn fill_pattern(buf: &mut [u8], conn: u32, seq: u64) {
    let mut state = (u64::from(conn) << 40) ^ (seq & ((1 << 40) - 1));
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&next().to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let len = tail.len();
    tail.copy_from_slice(&next().to_le_bytes()[..len]);
}

/// The first offset at which `got` differs from `expected`, comparing the common
/// length, or the shorter length if one is a prefix of the other.
fn first_mismatch(expected: &[u8], got: &[u8]) -> Option<usize> {
    if expected == got {
        return None;
    }
    Some(expected.iter().zip(got).position(|(a, b)| a != b).unwrap_or(expected.len().min(got.len())))
}

/// Errors by kind, over the whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Errors {
    connect: u64,
    io: u64,
    eof: u64,
    timeout: u64,
    mismatch: u64,
}

impl Errors {
    fn total(&self) -> u64 {
        self.connect + self.io + self.eof + self.timeout + self.mismatch
    }
}

/// Why a connection was given up.
#[derive(Debug)]
enum Failure {
    Connect(io::Error),
    Io(io::Error),
    /// The server closed the connection (read returned 0).
    Eof,
    /// Echoed bytes differ from what was sent (or more came back than was sent).
    Mismatch {
        seq: u64,
        offset: usize,
        expected: Option<u8>,
        got: Option<u8>,
    },
}

/// What one connection is doing.
#[derive(Debug)]
struct Conn {
    stream: Stream,
    id: u32,
    connected: bool,
    /// Readiness seen from epoll and not yet used up by a short read or `EAGAIN`.
    readable: bool,
    writable: bool,
    seq: u64,
    sent: usize,
    received: usize,
    started: Instant,
    last_progress: Instant,
    send: Vec<u8>,
    /// One byte longer than a message, so that a short read proves the socket drained
    /// and an over-long echo is seen as such.
    recv: Vec<u8>,
}

impl Conn {
    fn new(stream: Stream, id: u32, size: usize, now: Instant) -> Conn {
        Conn {
            stream,
            id,
            connected: false,
            readable: false,
            writable: false,
            seq: 0,
            sent: 0,
            received: 0,
            started: now,
            last_progress: now,
            send: vec![0; size],
            recv: vec![0; size + 1],
        }
    }

    fn start_message(&mut self) {
        fill_pattern(&mut self.send, self.id, self.seq);
        self.sent = 0;
        self.received = 0;
        self.started = Instant::now();
    }

    /// Makes all the progress possible without blocking; completed round trips are
    /// recorded in `hist` when `measuring`. Returns how many messages completed.
    fn drive(&mut self, hist: &mut load::Histogram, measuring: bool) -> Result<u64, Failure> {
        if !self.connected {
            if let Some(e) = self.stream.take_error().map_err(Failure::Connect)? {
                return Err(Failure::Connect(e));
            }
            match self.stream.connected() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(0), // still connecting
                Err(e) => return Err(Failure::Connect(e)),
            }
            self.connected = true;
            self.stream.set_nodelay();
            self.start_message();
        }
        let size = self.send.len();
        let mut done = 0;
        loop {
            let mut progressed = false;
            if self.writable && self.sent < size {
                match self.stream.write(&self.send[self.sent..]) {
                    Ok(0) => return Err(Failure::Io(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.sent += n;
                        // A short write means the send buffer is full.
                        self.writable = self.sent == size;
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progressed = true,
                    Err(e) => return Err(Failure::Io(e)),
                }
            }
            if self.readable && self.received < size {
                let want = self.recv.len() - self.received;
                match self.stream.read(&mut self.recv[self.received..]) {
                    Ok(0) => return Err(Failure::Eof),
                    Ok(n) => {
                        self.received += n;
                        self.readable = n == want;
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progressed = true,
                    Err(e) => return Err(Failure::Io(e)),
                }
                if self.received >= size {
                    if let Some(offset) = first_mismatch(&self.send, &self.recv[..self.received]) {
                        return Err(Failure::Mismatch {
                            seq: self.seq,
                            offset,
                            expected: self.send.get(offset).copied(),
                            got: self.recv.get(offset).copied(),
                        });
                    }
                    if measuring {
                        hist.record(self.started.elapsed().as_nanos().try_into().unwrap_or(u64::MAX));
                    }
                    done += 1;
                    self.seq += 1;
                    self.start_message();
                }
            }
            if !progressed {
                return Ok(done);
            }
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
struct Report {
    messages: u64,
    bytes: u64,
    window: Duration,
    hist: load::Histogram,
    errors: Errors,
}

impl Report {
    fn msgs_per_s(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 { self.messages as f64 / secs } else { 0.0 }
    }

    fn p_us(&self, q: f64) -> f64 {
        self.hist.quantile(q) as f64 / 1000.0
    }

    fn json(&self) -> String {
        serde_json::json!({
            "msgs_per_s": self.msgs_per_s(),
            "p50_us": self.p_us(0.5),
            "p99_us": self.p_us(0.99),
            "errors": self.errors.total(),
            "messages": self.messages,
            "bytes": self.bytes,
        })
        .to_string()
    }

    fn human_line(&self, cfg: &Config) -> String {
        let e = &self.errors;
        format!(
            "berth_load {} {} conns {} B: {:.0} msgs/s, p50 {:.1} us, p99 {:.1} us, {} messages in {:.2} s, \
             {} errors (connect {}, io {}, eof {}, timeout {}, mismatch {})",
            cfg.addr,
            cfg.connections,
            cfg.size,
            self.msgs_per_s(),
            self.p_us(0.5),
            self.p_us(0.99),
            self.messages,
            self.window.as_secs_f64(),
            e.total(),
            e.connect,
            e.io,
            e.eof,
            e.timeout,
            e.mismatch,
        )
    }
}

/// Counts a failed connection and says why on stderr (mismatches: the first few).
fn record_failure(errors: &mut Errors, conn: u32, failure: Failure) {
    match failure {
        Failure::Connect(e) => {
            errors.connect += 1;
            eprintln!("berth_load: connection {conn}: connect failed: {e}");
        }
        Failure::Io(e) => {
            errors.io += 1;
            eprintln!("berth_load: connection {conn}: {e}");
        }
        Failure::Eof => {
            errors.eof += 1;
            eprintln!("berth_load: connection {conn}: closed by the server");
        }
        Failure::Mismatch { seq, offset, expected, got } => {
            errors.mismatch += 1;
            if errors.mismatch <= MISMATCH_REPORTS {
                eprintln!(
                    "berth_load: connection {conn}: MISMATCH in message {seq} at byte {offset}: \
                     expected {expected:?}, got {got:?}"
                );
            }
        }
    }
}

fn run(cfg: &Config) -> io::Result<Report> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut hist = load::Histogram::new();
    let mut errors = Errors::default();

    let start = Instant::now();
    let mut conns: Vec<Option<Conn>> = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let id = u32::try_from(i).map_err(|_| io::Error::other("too many connections"))?;
        match Stream::connect(&cfg.addr, poll.registry(), Token(i)) {
            Ok(stream) => conns.push(Some(Conn::new(stream, id, cfg.size, start))),
            Err(e) => {
                record_failure(&mut errors, id, Failure::Connect(e));
                conns.push(None);
            }
        }
    }
    let mut alive = conns.iter().flatten().count();

    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let mut measuring = false;
    let mut window_start = measure_from;
    let mut messages = 0u64;
    let mut last_scan = start;
    const TICK: Duration = Duration::from_millis(50);

    loop {
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            window_start = now;
            hist.clear();
            messages = 0;
            load::mark(cfg.marks, "start");
        }
        if now >= end || alive == 0 {
            break;
        }
        let until = if measuring { end } else { measure_from };
        let wait = until.saturating_duration_since(now).min(TICK);
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            let i = event.token().0;
            let Some(conn) = conns.get_mut(i).and_then(Option::as_mut) else { continue };
            // Errors and hang-ups are surfaced by the next syscall on the socket.
            let trouble = event.is_error() || event.is_read_closed() || event.is_write_closed();
            conn.readable |= event.is_readable() || trouble;
            conn.writable |= event.is_writable() || trouble;
            conn.last_progress = now;
            match conn.drive(&mut hist, measuring) {
                Ok(n) => messages += n,
                Err(failure) => {
                    record_failure(&mut errors, conn.id, failure);
                    conns[i] = None;
                    alive -= 1;
                }
            }
        }
        if now.duration_since(last_scan) >= TICK {
            last_scan = now;
            for slot in conns.iter_mut() {
                if slot.as_ref().is_some_and(|c| now.duration_since(c.last_progress) > cfg.timeout) {
                    let conn = slot.take().map_or(0, |c| c.id);
                    errors.timeout += 1;
                    alive -= 1;
                    eprintln!("berth_load: connection {conn}: no progress for {:?}", cfg.timeout);
                }
            }
        }
    }
    let stop = Instant::now();
    if !measuring {
        // Every connection failed during warm-up: an empty window.
        window_start = stop;
        messages = 0;
        hist.clear();
    }
    load::mark(cfg.marks, "end");
    Ok(Report { messages, bytes: messages * cfg.size as u64, window: stop.duration_since(window_start), hist, errors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_differs_by_connection_and_sequence() {
        let mut a = vec![0; 100];
        let mut b = vec![0; 100];
        fill_pattern(&mut a, 1, 7);
        fill_pattern(&mut b, 1, 7);
        assert_eq!(a, b);
        fill_pattern(&mut b, 2, 7);
        assert_ne!(a, b);
        fill_pattern(&mut b, 1, 8);
        assert_ne!(a, b);
        // A shorter message is a prefix of a longer one with the same seed, and odd
        // lengths (a partial last word) are filled.
        let mut c = vec![0; 13];
        fill_pattern(&mut c, 1, 7);
        assert_eq!(c, a[..13]);
        let mut one = [0u8; 1];
        fill_pattern(&mut one, 3, 0);
        assert_eq!(one[0], {
            let mut w = [0u8; 8];
            fill_pattern(&mut w, 3, 0);
            w[0]
        });
    }

    #[test]
    fn pattern_is_not_trivially_constant() {
        let mut a = vec![0; 4096];
        fill_pattern(&mut a, 0, 0);
        let distinct = a.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(distinct > 200, "only {distinct} distinct byte values");
    }

    #[test]
    fn mismatch_finds_the_first_bad_byte() {
        let mut a = vec![0; 64];
        fill_pattern(&mut a, 5, 5);
        let mut b = a.clone();
        assert_eq!(first_mismatch(&a, &b), None);
        b[40] ^= 1;
        b[50] ^= 1;
        assert_eq!(first_mismatch(&a, &b), Some(40));
        // An over-long echo mismatches at the first extra byte.
        let mut long = a.clone();
        long.push(0);
        assert_eq!(first_mismatch(&a, &long), Some(64));
        // A short one at its end.
        assert_eq!(first_mismatch(&a, &a[..10]), Some(10));
    }

    #[test]
    fn args_parse_and_reject() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>().into_iter();
        let cfg = Config::parse(args("--addr 127.0.0.1:9 --connections 4 --size 64 --duration 0.5 --json")).unwrap();
        assert_eq!(cfg.connections, 4);
        assert_eq!(cfg.duration, Duration::from_millis(500));
        assert!(cfg.json && !cfg.marks);
        assert!(Config::parse(args("--addr 127.0.0.1:9 --connections 4 --size 64")).is_err());
        assert!(Config::parse(args("--addr 127.0.0.1:9 --connections 0 --size 64 --duration 1")).is_err());
        assert!(Config::parse(args("--bogus")).is_err());
    }

    /// A local echo server that corrupts one byte of the third message: the run
    /// must count a mismatch, not carry on.
    #[test]
    fn a_corrupting_server_is_caught() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 32];
            let mut seen = 0usize;
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                for (k, b) in buf[..n].iter_mut().enumerate() {
                    if seen + k == 2 * 32 + 17 {
                        *b ^= 0x40;
                    }
                }
                seen += n;
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
        let cfg = Config {
            addr: Target::Tcp(addr),
            connections: 1,
            size: 32,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(2),
            json: false,
            marks: false,
            quiet: true,
        };
        let report = run(&cfg).unwrap();
        assert_eq!(report.errors, Errors { mismatch: 1, ..Errors::default() });
        assert_eq!(report.messages, 2);
        server.join().unwrap();
    }

    /// A correct echo server over several connections: no errors, messages counted.
    #[test]
    fn a_correct_server_runs_clean() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming().take(3) {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1000];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let cfg = Config {
            addr: Target::Tcp(addr),
            connections: 3,
            size: 3000,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(50),
            timeout: Duration::from_secs(2),
            json: true,
            marks: false,
            quiet: true,
        };
        let report = run(&cfg).unwrap();
        assert_eq!(report.errors.total(), 0);
        assert!(report.messages > 10);
        assert_eq!(report.bytes, report.messages * 3000);
        assert!(report.hist.quantile(0.5) > 0);
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["messages"], report.messages);
    }

    /// The same over a Unix stream socket: `--addr unix:/path` parses, connects and runs.
    #[test]
    fn a_unix_socket_server_runs_clean() {
        let dir = std::env::temp_dir().join(format!("berth-load-unix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("echo.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming().take(2) {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1000];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let arg = format!("unix:{}", path.display());
        let args = ["--addr", &arg, "--connections", "2", "--size", "64", "--duration", "0.3", "--warmup", "0.05"];
        let cfg = Config::parse(args.iter().map(|s| s.to_string())).unwrap();
        assert_eq!(cfg.addr, Target::Unix(path.clone()));
        assert_eq!(cfg.addr.to_string(), arg);
        let report = run(&cfg).unwrap();
        assert_eq!(report.errors.total(), 0);
        assert!(report.messages > 10);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A server that accepts and never answers: the run ends by the timeout, bounded.
    #[test]
    fn a_silent_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = Config {
            addr: Target::Tcp(listener.local_addr().unwrap()),
            connections: 2,
            size: 8,
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            timeout: Duration::from_millis(200),
            json: false,
            marks: false,
            quiet: true,
        };
        let t = Instant::now();
        let report = run(&cfg).unwrap();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_eq!(report.errors.timeout, 2);
        drop(listener);
    }
}
