//! `udp_load`: the load generator of the UDP echo benchmark.
//!
//! C client sockets (connected UDP, so only the server's datagrams reach them) each
//! keep D datagrams of M bytes in flight against an echo server. Every datagram
//! carries its client id and sequence number followed by a pattern seeded by both,
//! and every echo is checked byte for byte: one that differs, or names a client or a
//! sequence number never sent, is a mismatch — an error, never ignored.
//!
//! UDP may drop datagrams, even on loopback (a full receive buffer). A datagram not
//! answered within `--resend-ms` is counted as lost and its slot is refilled with a
//! new datagram (a new sequence number), so the load never stalls; an echo that
//! arrives after that is counted as late, not as a message.
//!
//! One thread, edge-triggered epoll (mio) over the clients, and the datagrams moved
//! in batches: a readable client is drained with `recvmmsg` (16 per call; a short
//! batch proves the socket empty, and the next arrival brings a new edge) and its
//! free slots refilled with one `sendmmsg`. That is about two syscalls per batch, so
//! the load stays cheaper than the servers it drives from one pinned core.
//!
//! ```text
//! udp_load --addr HOST:PORT [--clients 64] [--depth 8] [--size 64] --duration SECS
//!          [--warmup SECS] [--resend-ms 200] [--json] [--marks] [--quiet]
//! ```
//!
//! With `--json`, one line on stdout:
//! `{msgs_per_s, p50_us, p99_us, errors, messages, bytes, sent, lost, late}`, where
//! `messages`, `sent` and `lost` count the measured window (after the warm-up) and
//! `errors` (mismatches and socket errors) and `late` the whole run. `--marks` prints
//! `mark start` / `mark end` at the window's edges. The exit status is 0 only if no
//! error happened and at least one echo came back.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_benches::load;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

const USAGE: &str = "usage: udp_load --addr HOST:PORT [--clients C] [--depth D] [--size M] --duration SECS \
                     [--warmup SECS] [--resend-ms MS] [--json] [--marks] [--quiet]";

/// Datagrams one `recvmmsg` takes.
const RECV_BATCH: usize = 16;
/// The header every datagram starts with: client id (u32 LE), sequence number (u64 LE).
const HEADER: usize = 12;
/// How often slots are checked for lost datagrams.
const TICK: Duration = Duration::from_millis(10);
/// Mismatches described on stderr before only counting them.
const MISMATCH_REPORTS: u64 = 5;

fn main() -> ExitCode {
    let cfg = match Config::parse(std::env::args().skip(1)) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("udp_load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let report = match run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("udp_load: {e}");
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
    if report.errors == 0 && report.messages > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

#[derive(Debug, Clone)]
struct Config {
    addr: SocketAddr,
    clients: usize,
    depth: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
    resend: Duration,
    json: bool,
    marks: bool,
    quiet: bool,
}

impl Config {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
        let mut addr = None;
        let (mut clients, mut depth, mut size) = (64, 8, 64);
        let mut duration = None;
        let mut warmup = Duration::from_millis(500);
        let mut resend = Duration::from_millis(200);
        let (mut json, mut marks, mut quiet) = (false, false, false);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--addr" => {
                    let text = value()?;
                    let resolved = text.to_socket_addrs().map_err(|e| format!("--addr {text}: {e}"))?.next();
                    addr = Some(resolved.ok_or_else(|| format!("--addr {text}: no address"))?);
                }
                "--clients" => clients = load::parse_num(&arg, &value()?)?,
                "--depth" => depth = load::parse_num(&arg, &value()?)?,
                "--size" => size = load::parse_num(&arg, &value()?)?,
                "--duration" => duration = Some(load::parse_secs(&arg, &value()?)?),
                "--warmup" => warmup = load::parse_secs(&arg, &value()?)?,
                "--resend-ms" => resend = Duration::from_millis(load::parse_num(&arg, &value()?)? as u64),
                "--json" => json = true,
                "--marks" => marks = true,
                "--quiet" => quiet = true,
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let cfg = Config {
            addr: addr.ok_or("--addr is required")?,
            clients,
            depth,
            size,
            duration: duration.ok_or("--duration is required")?,
            warmup,
            resend,
            json,
            marks,
            quiet,
        };
        if cfg.clients == 0 || cfg.depth == 0 || cfg.duration.is_zero() || cfg.resend.is_zero() {
            return Err("--clients, --depth, --duration and --resend-ms must be positive".into());
        }
        if cfg.size < HEADER || cfg.size > 65_000 {
            return Err(format!("--size must be {HEADER}..=65000 bytes"));
        }
        Ok(cfg)
    }
}

/// Writes datagram `seq` of client `client` into `buf`: the header, then a
/// splitmix64 stream seeded by both.
fn fill(buf: &mut [u8], client: u32, seq: u64) {
    buf[..4].copy_from_slice(&client.to_le_bytes());
    buf[4..HEADER].copy_from_slice(&seq.to_le_bytes());
    let mut state = (u64::from(client) << 40) ^ seq;
    for chunk in buf[HEADER..].chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let n = chunk.len();
        chunk.copy_from_slice(&z.to_le_bytes()[..n]);
    }
}

/// The client id and sequence number of an echo, if it is exactly the datagram they
/// name (same length, every byte).
fn check(got: &[u8], size: usize, scratch: &mut [u8]) -> Option<(u32, u64)> {
    if got.len() != size {
        return None;
    }
    let client = u32::from_le_bytes(got[..4].try_into().ok()?);
    let seq = u64::from_le_bytes(got[4..HEADER].try_into().ok()?);
    fill(&mut scratch[..size], client, seq);
    (scratch[..size] == *got).then_some((client, seq))
}

/// A datagram in flight.
#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u64,
    sent: Instant,
}

struct Client {
    socket: UdpSocket,
    id: u32,
    next_seq: u64,
    /// One per datagram that may be in flight; `None` is free.
    slots: Vec<Option<Slot>>,
    readable: bool,
}

/// Counts of the whole run and of the measured window.
#[derive(Debug, Default, Clone)]
struct Counts {
    messages: u64,
    sent: u64,
    lost: u64,
    late: u64,
    mismatches: u64,
    io_errors: u64,
}

/// The scratch the batched syscalls use, allocated once.
struct Batches {
    recv: Vec<u8>,
    recv_iov: Vec<libc::iovec>,
    recv_hdr: Vec<libc::mmsghdr>,
    send: Vec<u8>,
    send_iov: Vec<libc::iovec>,
    send_hdr: Vec<libc::mmsghdr>,
    scratch: Vec<u8>,
    size: usize,
}

impl Batches {
    fn new(size: usize, depth: usize) -> Batches {
        // One byte more than a datagram per receive slot: an over-long echo shows.
        let stride = size + 1;
        let mut b = Batches {
            recv: vec![0; stride * RECV_BATCH],
            recv_iov: Vec::with_capacity(RECV_BATCH),
            recv_hdr: Vec::with_capacity(RECV_BATCH),
            send: vec![0; size * depth],
            send_iov: Vec::with_capacity(depth),
            send_hdr: Vec::with_capacity(depth),
            scratch: vec![0; size],
            size,
        };
        for chunk in b.recv.chunks_exact_mut(stride) {
            b.recv_iov.push(libc::iovec { iov_base: chunk.as_mut_ptr().cast(), iov_len: stride });
        }
        for chunk in b.send.chunks_exact_mut(size) {
            b.send_iov.push(libc::iovec { iov_base: chunk.as_mut_ptr().cast(), iov_len: size });
        }
        // The headers point at the iovecs, which never move again (no push past
        // their capacity).
        for iov in b.recv_iov.iter_mut() {
            b.recv_hdr.push(mmsghdr(iov));
        }
        for iov in b.send_iov.iter_mut() {
            b.send_hdr.push(mmsghdr(iov));
        }
        b
    }
}

/// A header for one datagram in `iov` (no address: the sockets are connected).
fn mmsghdr(iov: &mut libc::iovec) -> libc::mmsghdr {
    // SAFETY: msghdr is plain data; all zeroes (no name, no control) is valid.
    let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
    hdr.msg_hdr.msg_iov = iov;
    hdr.msg_hdr.msg_iovlen = 1;
    hdr
}

impl Client {
    /// Receives and checks every echo waiting on the socket.
    fn drain(&mut self, b: &mut Batches, counts: &mut Counts, hist: &mut load::Histogram, measuring: bool) {
        while self.readable {
            // SAFETY: each header points at its own iovec and that at its own chunk of
            // `b.recv`, all alive and unaliased for the call; MSG_DONTWAIT: no blocking.
            let n = unsafe {
                libc::recvmmsg(
                    self.socket.as_raw_fd(),
                    b.recv_hdr.as_mut_ptr(),
                    RECV_BATCH as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => self.readable = false,
                    io::ErrorKind::Interrupted => {}
                    _ => {
                        // ECONNREFUSED: an ICMP error for an earlier datagram (the
                        // server was not there). Counted; the socket goes on.
                        counts.io_errors += 1;
                        if counts.io_errors <= MISMATCH_REPORTS {
                            eprintln!("udp_load: client {}: {e}", self.id);
                        }
                    }
                }
                continue;
            }
            let n = n as usize;
            let now = Instant::now();
            let stride = b.size + 1;
            for i in 0..n {
                let len = b.recv_hdr[i].msg_len as usize;
                let got = &b.recv[i * stride..i * stride + len.min(stride)];
                let Some((client, seq)) = check(got, b.size, &mut b.scratch).filter(|&(c, _)| c == self.id) else {
                    counts.mismatches += 1;
                    if counts.mismatches <= MISMATCH_REPORTS {
                        eprintln!("udp_load: client {}: MISMATCH: an echo of {len} bytes that was never sent", self.id);
                    }
                    continue;
                };
                debug_assert_eq!(client, self.id);
                match self.slots.iter_mut().find(|s| s.is_some_and(|s| s.seq == seq)) {
                    Some(slot) => {
                        if measuring {
                            let sent = slot.map_or(now, |s| s.sent);
                            hist.record(now.duration_since(sent).as_nanos().try_into().unwrap_or(u64::MAX));
                            counts.messages += 1;
                        }
                        *slot = None;
                    }
                    None if seq < self.next_seq => counts.late += 1,
                    None => {
                        counts.mismatches += 1;
                        if counts.mismatches <= MISMATCH_REPORTS {
                            eprintln!("udp_load: client {}: MISMATCH: echo of datagram {seq}, never sent", self.id);
                        }
                    }
                }
            }
            if n < RECV_BATCH {
                self.readable = false;
            }
        }
    }

    /// Declares lost the datagrams older than `resend`.
    fn expire(&mut self, now: Instant, resend: Duration, counts: &mut Counts, measuring: bool) {
        for slot in self.slots.iter_mut() {
            if slot.is_some_and(|s| now.duration_since(s.sent) >= resend) {
                *slot = None;
                if measuring {
                    counts.lost += 1;
                }
            }
        }
    }

    /// Sends a new datagram for every free slot, in one `sendmmsg`.
    fn refill(&mut self, b: &mut Batches, counts: &mut Counts, measuring: bool) {
        let mut free = [usize::MAX; 64];
        let mut count = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if s.is_none() && count < free.len() {
                free[count] = i;
                count += 1;
            }
        }
        if count == 0 {
            return;
        }
        let size = b.size;
        for k in 0..count {
            fill(&mut b.send[k * size..(k + 1) * size], self.id, self.next_seq + k as u64);
        }
        // SAFETY: the first `count` headers point at their iovecs and those at their
        // own filled chunks of `b.send`, alive for the call; the socket is non-blocking.
        let n = unsafe {
            libc::sendmmsg(self.socket.as_raw_fd(), b.send_hdr.as_mut_ptr(), count as u32, libc::MSG_DONTWAIT)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
                counts.io_errors += 1;
                if counts.io_errors <= MISMATCH_REPORTS {
                    eprintln!("udp_load: client {}: send: {e}", self.id);
                }
            }
            // The slots stay free: the next tick or echo refills them.
            return;
        }
        let now = Instant::now();
        for &i in free.iter().take(n as usize) {
            self.slots[i] = Some(Slot { seq: self.next_seq, sent: now });
            self.next_seq += 1;
        }
        if measuring {
            counts.sent += n as u64;
        }
    }
}

#[derive(Debug, Clone)]
struct Report {
    counts: Counts,
    errors: u64,
    messages: u64,
    window: Duration,
    hist: load::Histogram,
}

impl Report {
    fn msgs_per_s(&self) -> f64 {
        let s = self.window.as_secs_f64();
        if s > 0.0 { self.messages as f64 / s } else { 0.0 }
    }

    fn json(&self) -> String {
        let c = &self.counts;
        serde_json::json!({
            "msgs_per_s": self.msgs_per_s(),
            "p50_us": self.hist.quantile(0.5) as f64 / 1000.0,
            "p99_us": self.hist.quantile(0.99) as f64 / 1000.0,
            "errors": self.errors,
            "messages": self.messages,
            "bytes": 0,
            "sent": c.sent,
            "lost": c.lost,
            "late": c.late,
        })
        .to_string()
    }

    fn human_line(&self, cfg: &Config) -> String {
        let c = &self.counts;
        format!(
            "udp_load {} {} clients x {} in flight, {} B: {:.0} msgs/s, p50 {:.1} us, p99 {:.1} us, {} echoes in {:.2} s; \
             {} sent, {} lost, {} late; {} errors ({} mismatches, {} socket errors)",
            cfg.addr,
            cfg.clients,
            cfg.depth,
            cfg.size,
            self.msgs_per_s(),
            self.hist.quantile(0.5) as f64 / 1000.0,
            self.hist.quantile(0.99) as f64 / 1000.0,
            self.messages,
            self.window.as_secs_f64(),
            c.sent,
            c.lost,
            c.late,
            self.errors,
            c.mismatches,
            c.io_errors,
        )
    }
}

fn run(cfg: &Config) -> io::Result<Report> {
    if cfg.depth > 64 {
        return Err(io::Error::other("--depth is at most 64"));
    }
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(cfg.clients.max(16));
    let mut b = Batches::new(cfg.size, cfg.depth);
    let mut hist = load::Histogram::new();
    let mut counts = Counts::default();
    let local: SocketAddr =
        if cfg.addr.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" }.parse().map_err(io::Error::other)?;
    let mut clients = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        let mut socket = UdpSocket::bind(local)?;
        socket.connect(cfg.addr)?;
        poll.registry().register(&mut socket, Token(i), Interest::READABLE)?;
        clients.push(Client { socket, id: i as u32, next_seq: 0, slots: vec![None; cfg.depth], readable: false });
    }
    for c in clients.iter_mut() {
        c.refill(&mut b, &mut counts, false);
    }

    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let mut measuring = false;
    let mut window_start = measure_from;
    let mut last_tick = start;
    loop {
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            window_start = now;
            hist.clear();
            counts = Counts {
                late: counts.late,
                mismatches: counts.mismatches,
                io_errors: counts.io_errors,
                ..Counts::default()
            };
            load::mark(cfg.marks, "start");
        }
        if now >= end {
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
            let Some(c) = clients.get_mut(event.token().0) else { continue };
            c.readable = true;
            c.drain(&mut b, &mut counts, &mut hist, measuring);
            c.refill(&mut b, &mut counts, measuring);
        }
        let now = Instant::now();
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            for c in clients.iter_mut() {
                c.expire(now, cfg.resend, &mut counts, measuring);
                c.refill(&mut b, &mut counts, measuring);
            }
        }
    }
    let stop = Instant::now();
    load::mark(cfg.marks, "end");
    let errors = counts.mismatches + counts.io_errors;
    let messages = counts.messages;
    Ok(Report { counts, errors, messages, window: stop.duration_since(window_start), hist })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_check_out_only_when_every_byte_matches() {
        let mut scratch = vec![0; 64];
        let mut d = vec![0; 64];
        fill(&mut d, 7, 1234);
        assert_eq!(check(&d, 64, &mut scratch), Some((7, 1234)));
        let mut other = vec![0; 64];
        fill(&mut other, 7, 1235);
        assert_ne!(d, other);
        d[40] ^= 1;
        assert_eq!(check(&d, 64, &mut scratch), None);
        d[40] ^= 1;
        assert_eq!(check(&d[..63], 64, &mut scratch), None);
        // Odd sizes fill their last partial word.
        let mut odd = vec![0; 13];
        fill(&mut odd, 1, 2);
        assert_eq!(check(&odd, 13, &mut scratch), Some((1, 2)));
    }

    /// A std echo thread that drops every 50th datagram and corrupts one: the load
    /// counts the drops as lost (and goes on), and the corruption as a mismatch.
    #[test]
    fn loss_is_counted_and_the_load_goes_on_and_corruption_is_an_error() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        server.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut k = 0u64;
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                k += 1;
                if k.is_multiple_of(50) {
                    continue;
                }
                if k == 777 {
                    buf[30] ^= 0x10;
                }
                let _ = server.send_to(&buf[..n], from);
            }
            k
        });
        let cfg = Config {
            addr,
            clients: 4,
            depth: 4,
            size: 64,
            duration: Duration::from_millis(600),
            warmup: Duration::from_millis(50),
            resend: Duration::from_millis(20),
            json: true,
            marks: false,
            quiet: true,
        };
        let report = run(&cfg).unwrap();
        assert!(report.messages > 1000, "{}", report.human_line(&cfg));
        assert!(report.counts.lost > 0, "{}", report.human_line(&cfg));
        assert_eq!(report.counts.mismatches, 1, "{}", report.human_line(&cfg));
        assert!(thread.join().unwrap() > 1000);
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["messages"], report.messages);
    }

    #[test]
    fn args_parse_and_reject() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>().into_iter();
        let cfg = Config::parse(args("--addr 127.0.0.1:9 --duration 1 --json")).unwrap();
        assert_eq!((cfg.clients, cfg.depth, cfg.size), (64, 8, 64));
        assert!(Config::parse(args("--addr 127.0.0.1:9 --duration 1 --size 4")).is_err());
        assert!(Config::parse(args("--addr 127.0.0.1:9")).is_err());
        assert!(Config::parse(args("--bogus")).is_err());
    }
}
