//! berth-ipc against Unix sockets, pipes and memcpy, producer and consumer in separate
//! processes pinned to different cores (this binary re-executes itself with `--role`).
//!
//! Rows: `ipc/rtt_64B/p50_ns` (peer `unix_socketpair`), `ipc/rtt_64B_vs_pipe/p50_ns`
//! (peer `pipe`), `ipc/rtt_64B_vs_floor/p50_ns` (peer `shm_pingpong`: the floor of
//! any shared-memory channel on this machine, see [`rtt_floor`]),
//! `ipc/throughput_64B/msgs_per_s` (peer `unix_socketpair`),
//! `ipc/throughput_64B_vs_floor/msgs_per_s` (peer `shm_stream`, see [`StreamFloor`]),
//! `ipc/throughput_64KiB/gbps` (peer `memcpy`, one core),
//! `ipc/throughput_64KiB_vs_floor/gbps` (peer `shm_stream` with 64 KiB slots),
//! `ipc/idle_blocked/cpu_percent`
//! (peer: a receiver blocked on a Unix socket read; both measured as the process's CPU
//! over a window that starts once the receive has been blocked for 1.5 s),
//! `ipc/throughput_64B_batch/msgs_per_s` (batches of [`BATCH`] sent with
//! `send_batch` and received with `recv_batch`; peer `ipc_one_at_a_time`: the same
//! channel with `send` / `recv`, in turns with it), and
//! `ipc/rtt_64B_wakefd/p50_us` (both ends asleep in `epoll` on the channels' wake
//! descriptors between messages; peer `unix_socketpair_epoll`: both ends asleep in
//! `epoll` on a non-blocking socket pair, in turns with it). `--quick` keeps it
//! under a minute;
//! `--only rtt|tp64|tp64k|idle|batch|wakefd` runs one measurement (and writes only
//! its rows).
//! Throughputs (ours and the peers') are the median over 50 timed chunks; where they
//! take turns (five each), the median of the turns.
//!
//! At 64 KiB the producer sends from a page-aligned buffer with `Sender::send` and the
//! consumer copies each lent record into another page-aligned buffer: the same buffers
//! as the `memcpy` peer's.
//!
//! Round trips are timed in batches of [`RTT_BATCH`] (p50 over batches of the mean
//! round trip), in busy-poll mode for berth-ipc, the mode the latency target is for.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_benches::{Better, Row, append_rows, results_path};
use berth_ipc::{Channel, Config, RecvError, WaitMode};

const MSG: usize = 64;
const BIG: usize = 64 * 1024;
/// Round trips timed together: the RTT rows are the p50 over batches of the mean
/// round trip in a batch, so the clock is read twice per batch, not per round trip.
const RTT_BATCH: usize = 100;
/// Turns berth-ipc and its peer take in the measurements run in turns (the round trip
/// against the floor, the 64 B throughput against the streaming floor, 64 KiB
/// against memcpy).
const RTT_ROUNDS: usize = 5;
/// Messages per `send_batch` in the batch throughput run; the receiver takes up to
/// [`RECV_BATCH`] per `recv_batch`.
const BATCH: usize = 32;
const RECV_BATCH: usize = 256;

fn pin(core: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(core);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("ipc_bench: cannot pin to core {core}: {e}");
    }
}

fn cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn inheritable(fd: impl AsFd, on: bool) {
    let flags = if on { rustix::io::FdFlags::empty() } else { rustix::io::FdFlags::CLOEXEC };
    rustix::io::fcntl_setfd(fd, flags).expect("fcntl");
}

/// Runs this binary as `role` on core 1 with the given descriptors inherited.
fn child(role: &str, fds: &[BorrowedOrOwned<'_>], extra: &[String]) -> std::process::Child {
    for f in fds {
        inheritable(f.fd(), true);
    }
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.arg("--role").arg(role);
    for f in fds {
        cmd.arg(f.fd().as_raw_fd().to_string());
    }
    cmd.args(extra).stdout(Stdio::piped());
    let c = cmd.spawn().expect("spawn helper");
    for f in fds {
        inheritable(f.fd(), false);
    }
    c
}

enum BorrowedOrOwned<'a> {
    Chan(&'a Channel),
    Fd(&'a OwnedFd),
    Raw(std::os::fd::BorrowedFd<'a>),
}

impl BorrowedOrOwned<'_> {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            BorrowedOrOwned::Chan(c) => c.as_fd(),
            BorrowedOrOwned::Fd(f) => f.as_fd(),
            BorrowedOrOwned::Raw(f) => *f,
        }
    }
}

/// A channel with wake descriptors as three inherited descriptors: the memfd, the
/// receiver's and the sender's wake descriptors.
fn wake_chan_fds(ch: &Channel) -> [BorrowedOrOwned<'_>; 3] {
    let (rx, tx) = ch.wake_fds().expect("created with wake descriptors");
    [BorrowedOrOwned::Chan(ch), BorrowedOrOwned::Raw(rx), BorrowedOrOwned::Raw(tx)]
}

/// Opens a channel with wake descriptors from three descriptor arguments.
fn take_wake_chan(args: &[String]) -> Channel {
    Channel::from_fds(take_fd(&args[0]), take_fd(&args[1]), take_fd(&args[2])).unwrap()
}

/// An epoll instance watching `fd` for readability.
fn epoll_on(fd: std::os::fd::BorrowedFd<'_>) -> OwnedFd {
    use rustix::event::epoll;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create");
    epoll::add(&ep, fd, epoll::EventData::new_u64(0), epoll::EventFlags::IN).expect("epoll_ctl");
    ep
}

/// Sleeps in `epoll_wait` until the watched descriptor is readable.
fn epoll_sleep(ep: &OwnedFd) {
    let mut events = [std::mem::MaybeUninit::uninit(); 1];
    loop {
        match rustix::event::epoll::wait(ep, &mut events[..], None) {
            Ok((ready, _)) if !ready.is_empty() => return,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("epoll_wait: {e}"),
        }
    }
}

/// The next message of `rx` copied into `out`, sleeping in epoll (on `ep`, which
/// watches `rx`'s wake descriptor) whenever the ring is empty. `false` once the
/// sender closed.
fn recv_epoll(rx: &mut berth_ipc::Receiver, ep: &OwnedFd, out: &mut [u8; MSG]) -> bool {
    loop {
        match rx.try_recv() {
            Ok(m) => {
                out.copy_from_slice(&m);
                return true;
            }
            Err(RecvError::Empty) => {}
            Err(RecvError::Closed) => return false,
            Err(e) => panic!("{e}"),
        }
        match rx.arm_wake() {
            Ok(true) => epoll_sleep(ep),
            Ok(false) => {}
            Err(RecvError::Closed) => return false,
            Err(e) => panic!("{e}"),
        }
    }
}

fn take_fd(arg: &str) -> OwnedFd {
    let raw: RawFd = arg.parse().expect("fd number");
    // SAFETY: the parent passed this inherited descriptor for us to own.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

fn busy(mut tx: berth_ipc::Sender, mut rx: berth_ipc::Receiver) -> (berth_ipc::Sender, berth_ipc::Receiver) {
    tx.set_wait_mode(WaitMode::BusyPoll);
    rx.set_wait_mode(WaitMode::BusyPoll);
    (tx, rx)
}

fn touch(b: &[u8]) -> u64 {
    b.chunks_exact(8).fold(0u64, |a, c| a.wrapping_add(u64::from_le_bytes(c.try_into().unwrap())))
}

/// The child side.
fn role(args: &[String]) {
    pin(1);
    let t = Some(Duration::from_secs(60));
    match args[0].as_str() {
        "ipc_echo" => {
            let rx_ch = Channel::from_fd(take_fd(&args[1])).unwrap();
            let tx_ch = Channel::from_fd(take_fd(&args[2])).unwrap();
            let (mut tx, mut rx) = busy(tx_ch.sender().unwrap(), rx_ch.receiver().unwrap());
            loop {
                let mut out = [0u8; MSG];
                match rx.recv(t) {
                    Ok(g) => out.copy_from_slice(&g),
                    Err(RecvError::Closed) => break,
                    Err(e) => panic!("{e}"),
                }
                tx.send(&out, t).unwrap();
            }
        }
        "ipc_wake_echo" => {
            let rx_ch = take_wake_chan(&args[1..4]);
            let tx_ch = take_wake_chan(&args[4..7]);
            let (mut rx, mut tx) = (rx_ch.receiver().unwrap(), tx_ch.sender().unwrap());
            let ep = epoll_on(rx.as_fd());
            let mut out = [0u8; MSG];
            while recv_epoll(&mut rx, &ep, &mut out) {
                // One message in flight: the reply always fits.
                tx.try_send(&out).unwrap();
            }
        }
        "sock_epoll_echo" => {
            let s = UnixStream::from(take_fd(&args[1]));
            s.set_nonblocking(true).unwrap();
            let ep = epoll_on(s.as_fd());
            let mut buf = [0u8; MSG];
            loop {
                match (&s).read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        assert_eq!(n, MSG, "a 64-byte message in one read");
                        (&s).write_all(&buf).unwrap();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => epoll_sleep(&ep),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        "floor_echo" => {
            let page = Floor::open(take_fd(&args[1]));
            let mut out = [0u8; MSG];
            let mut expect = 1u64;
            loop {
                let seq = page.wait(PING, expect);
                if seq == Floor::STOP {
                    break;
                }
                page.read(PING, &mut out);
                page.write(PONG, &out, seq);
                expect = seq + 1;
            }
        }
        "stream_echo" => {
            let mut r = std::fs::File::from(take_fd(&args[1]));
            let mut w = std::fs::File::from(take_fd(&args[2]));
            let mut buf = [0u8; MSG];
            while r.read_exact(&mut buf).is_ok() {
                w.write_all(&buf).unwrap();
            }
        }
        "ipc_produce" => {
            let ch = Channel::from_fd(take_fd(&args[1])).unwrap();
            let size: usize = args[2].parse().unwrap();
            let count: u64 = args[3].parse().unwrap();
            let mut tx = ch.sender().unwrap();
            tx.set_wait_mode(WaitMode::BusyPoll);
            let mut src_v = vec![0xa5u8; size + 4096];
            let src = page_aligned(&mut src_v, size);
            for i in 0..count {
                src[..8].copy_from_slice(&i.to_le_bytes());
                tx.send(src, t).unwrap();
            }
        }
        "ipc_produce_batch" => {
            let ch = Channel::from_fd(take_fd(&args[1])).unwrap();
            let count: u64 = args[2].parse().unwrap();
            let mut tx = ch.sender().unwrap();
            tx.set_wait_mode(WaitMode::BusyPoll);
            let mut msgs = [[0xa5u8; MSG]; BATCH];
            let mut i = 0u64;
            while i < count {
                let n = (BATCH as u64).min(count - i) as usize;
                for (k, m) in msgs[..n].iter_mut().enumerate() {
                    m[..8].copy_from_slice(&(i + k as u64).to_le_bytes());
                }
                tx.send_batch(&msgs[..n], t).unwrap();
                i += n as u64;
            }
        }
        "floor_produce" => {
            let size: usize = args[2].parse().unwrap();
            let ring = StreamFloor::open(take_fd(&args[1]), size);
            let count: u64 = args[3].parse().unwrap();
            let mut src_v = vec![0xa5u8; size + 4096];
            let src = page_aligned(&mut src_v, size);
            let mut head = 0u64;
            for i in 0..count {
                while i - head >= ring.slots {
                    head = ring.word(STREAM_HEAD).load(std::sync::atomic::Ordering::Acquire);
                    std::hint::spin_loop();
                }
                src[..8].copy_from_slice(&i.to_le_bytes());
                // SAFETY: slot `i` is free (the consumer published a head past its
                // previous use) and is read only after the release store below.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), ring.slot(i), size) };
                ring.word(STREAM_TAIL).store(i + 1, std::sync::atomic::Ordering::Release);
            }
        }
        "stream_produce" => {
            let mut w = std::fs::File::from(take_fd(&args[1]));
            let count: u64 = args[2].parse().unwrap();
            let mut src = [0xa5u8; MSG];
            for i in 0..count {
                src[..8].copy_from_slice(&i.to_le_bytes());
                w.write_all(&src).unwrap();
            }
        }
        "ipc_idle" => {
            let ch = Channel::from_fd(take_fd(&args[1])).unwrap();
            let ms: u64 = args[2].parse().unwrap();
            let mut rx = ch.receiver().unwrap();
            println!("{}", idle_window(ms, move |t| assert_eq!(rx.recv(Some(t)).unwrap_err(), RecvError::TimedOut)));
        }
        "sock_idle" => {
            let s = UnixStream::from(take_fd(&args[1]));
            let ms: u64 = args[2].parse().unwrap();
            println!(
                "{}",
                idle_window(ms, move |t| {
                    s.set_read_timeout(Some(t)).unwrap();
                    assert!((&s).read(&mut [0u8; 1]).is_err());
                })
            );
        }
        other => panic!("unknown role {other}"),
    }
}

/// Settling time before the idle window: a blocked receive has reached its longest
/// sleeps by then (they double from 10 ms to 1 s).
const IDLE_SETTLE: Duration = Duration::from_millis(1500);

/// CPU ns this process uses (all threads: the blocked one and any helper such as
/// berth-ipc's watcher) during `ms` of a blocking call `block` that started
/// [`IDLE_SETTLE`] earlier and lasts past the window.
fn idle_window(ms: u64, block: impl FnOnce(Duration) + Send + 'static) -> u64 {
    let window = Duration::from_millis(ms);
    let blocked = std::thread::spawn(move || block(IDLE_SETTLE + window + Duration::from_millis(500)));
    std::thread::sleep(IDLE_SETTLE);
    let c0 = cpu_ns();
    std::thread::sleep(window);
    let used = cpu_ns() - c0;
    blocked.join().unwrap();
    used
}

fn p50(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

/// Batch samples of berth-ipc round trips (see [`RTT_BATCH`]).
fn rtt_ipc(n: usize) -> Vec<u64> {
    let a2b = Channel::create_memfd(&Config::new(1 << 16)).unwrap();
    let b2a = Channel::create_memfd(&Config::new(1 << 16)).unwrap();
    let mut c = child("ipc_echo", &[BorrowedOrOwned::Chan(&a2b), BorrowedOrOwned::Chan(&b2a)], &[]);
    let (mut tx, mut rx) = busy(a2b.sender().unwrap(), b2a.receiver().unwrap());
    let t = Some(Duration::from_secs(60));
    let batches = n / RTT_BATCH;
    let mut samples = Vec::with_capacity(batches);
    let mut payload = [0u8; MSG];
    let mut sink = 0u64;
    for b in 0..batches + batches / 10 {
        let t0 = Instant::now();
        for i in 0..RTT_BATCH {
            payload[..8].copy_from_slice(&((b * RTT_BATCH + i) as u64).to_le_bytes());
            tx.send(&payload, t).unwrap();
            sink = sink.wrapping_add(touch(&rx.recv(t).unwrap()));
        }
        let dt = t0.elapsed().as_nanos() as u64 / RTT_BATCH as u64;
        if b >= batches / 10 {
            samples.push(dt);
        }
    }
    std::hint::black_box(sink);
    drop((tx, rx));
    c.wait().unwrap();
    samples
}

/// Offsets in the floor's shared page: each direction has a 64-byte payload line and,
/// on the next line, its sequence word (the commit). A 256-byte stride keeps the two
/// directions out of each other's adjacent-line prefetch pairs.
const PING: usize = 0;
const PONG: usize = 256;

/// The least any shared-memory channel can do for a 64-byte message: write the payload
/// line, publish a sequence number with a release store, and have the other core spin
/// on it and copy the payload out. No ring, no positions, no validation, no waking:
/// berth-ipc's round trip measured against this says what the channel itself costs
/// on top of moving two cache lines each way between these two cores.
struct Floor {
    map: memmap2::MmapMut,
}

impl Floor {
    /// A sequence number that tells the echo side to stop.
    const STOP: u64 = u64::MAX;

    fn create() -> (Floor, OwnedFd) {
        let fd = rustix::fs::memfd_create("berth-ipc-bench-floor", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        let file = std::fs::File::from(fd);
        file.set_len(4096).expect("memfd size");
        let page = Floor::map(&file);
        (page, OwnedFd::from(file))
    }

    fn open(fd: OwnedFd) -> Floor {
        Floor::map(&std::fs::File::from(fd))
    }

    fn map(file: &std::fs::File) -> Floor {
        // SAFETY: a private memfd shared only by this benchmark's two processes, which
        // touch the payload bytes only in turn (see `wait`) and the sequence words
        // only atomically.
        let map = unsafe { memmap2::MmapMut::map_mut(file) }.expect("mmap");
        Floor { map }
    }

    fn seq(&self, dir: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: `dir + 64` is 8-aligned and in the page, which outlives `&self`; the
        // word is only ever accessed atomically.
        unsafe { &*self.map.as_ptr().add(dir + MSG).cast::<std::sync::atomic::AtomicU64>() }
    }

    /// Spins until direction `dir` carries sequence `want` (or STOP); returns it.
    /// Panics after a minute rather than hang the benchmark.
    fn wait(&self, dir: usize, want: u64) -> u64 {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let seq = self.seq(dir).load(std::sync::atomic::Ordering::Acquire);
            if seq == want || seq == Floor::STOP {
                return seq;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 20) && start.elapsed() > Duration::from_secs(60) {
                panic!("floor ping-pong: no sequence {want} after a minute");
            }
        }
    }

    fn read(&self, dir: usize, out: &mut [u8; MSG]) {
        // SAFETY: the writer published this payload (acquire in `wait`) and writes the
        // direction again only after our answer; the page outlives the copy.
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(dir), out.as_mut_ptr(), MSG) };
    }

    fn write(&self, dir: usize, payload: &[u8; MSG], seq: u64) {
        // SAFETY: the reader copied the previous payload out before answering it, so
        // nobody reads these bytes until the release store below.
        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), self.map.as_ptr().add(dir).cast_mut(), MSG) };
        self.seq(dir).store(seq, std::sync::atomic::Ordering::Release);
    }
}

/// Bytes of berth-ipc's ring in a throughput run with `size`-byte messages (1 MiB
/// for 64 B, 4 MiB for 64 KiB), and of the streaming floor's slots ([`StreamFloor`]).
fn ring_bytes(size: usize) -> u64 {
    if size > 1024 { 1 << 22 } else { 1 << 20 }
}
/// Offsets in the streaming floor's mapping: the producer position, the consumer
/// position (each on its own 128-byte pair of lines), then the slots from 4096.
const STREAM_TAIL: usize = 0;
const STREAM_HEAD: usize = 128;
const STREAM_DATA: usize = 4096;

/// The least a shared-memory ring must do to stream messages of one size: the
/// producer copies each into its own slot (a cache line for 64 B, page-aligned for
/// 64 KiB) and publishes a position with a release store; the consumer reads the
/// position only when it has used up the messages it knows of, reads (64 B) or
/// copies out (64 KiB) each message, and publishes its own position every quarter
/// ring. This is berth-ipc's protocol without record headers (so no line is shared
/// by two messages), validation, reservations or waking: berth-ipc's throughput
/// against this says what the channel costs on top of what these two cores can move.
struct StreamFloor {
    map: memmap2::MmapMut,
    size: usize,
    slots: u64,
}

impl StreamFloor {
    fn create(size: usize) -> (StreamFloor, OwnedFd) {
        let fd = rustix::fs::memfd_create("berth-ipc-bench-stream", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        let file = std::fs::File::from(fd);
        file.set_len(STREAM_DATA as u64 + ring_bytes(size)).expect("memfd size");
        let ring = StreamFloor::map(&file, size);
        (ring, OwnedFd::from(file))
    }

    fn open(fd: OwnedFd, size: usize) -> StreamFloor {
        StreamFloor::map(&std::fs::File::from(fd), size)
    }

    fn map(file: &std::fs::File, size: usize) -> StreamFloor {
        // SAFETY: a private memfd shared only by this benchmark's two processes; a slot
        // is written only while free and read only once published (see the roles), the
        // positions are only accessed atomically.
        let map = unsafe { memmap2::MmapMut::map_mut(file) }.expect("mmap");
        StreamFloor { map, size, slots: ring_bytes(size) / size as u64 }
    }

    fn word(&self, at: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: `at` is 0 or 128: 8-aligned and inside the mapping, which outlives
        // `&self`; the word is only ever accessed atomically.
        unsafe { &*self.map.as_ptr().add(at).cast::<std::sync::atomic::AtomicU64>() }
    }

    /// The slot of message `i`.
    fn slot(&self, i: u64) -> *mut u8 {
        let at = STREAM_DATA + (i % self.slots) as usize * self.size;
        // SAFETY: `at + size` is within the mapping's length set in `create`.
        unsafe { self.map.as_ptr().add(at).cast_mut() }
    }
}

/// Messages per second of `size` bytes through the streaming floor
/// ([`StreamFloor`]), timed like [`throughput_ipc`] (median over chunks), the payload
/// read (64 B) or copied out to a page-aligned buffer (larger) on arrival, as there.
fn throughput_floor(size: usize, count: u64) -> f64 {
    let (ring, fd) = StreamFloor::create(size);
    let mut c = child("floor_produce", &[BorrowedOrOwned::Fd(&fd)], &[size.to_string(), count.to_string()]);
    drop(fd);
    let (mut next, mut tail, mut sink) = (0u64, 0u64, 0u64);
    let mut dst_v = vec![0u8; size + 4096];
    let dst = page_aligned(&mut dst_v, size);
    let mut take = |ring: &StreamFloor| {
        let mut spins = 0u32;
        let mut start = None;
        while next == tail {
            tail = ring.word(STREAM_TAIL).load(std::sync::atomic::Ordering::Acquire);
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            // The clock only after a long spin: reading it per message would be most
            // of what is measured.
            if spins.is_multiple_of(1 << 20)
                && start.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(60)
            {
                panic!("streaming floor: no message {next} after a minute");
            }
        }
        // SAFETY: message `next` was published (acquire above) and its slot is not
        // written again until our head passes it.
        let msg = unsafe { std::slice::from_raw_parts(ring.slot(next), size) };
        if size == MSG {
            sink = sink.wrapping_add(touch(msg));
        } else {
            dst.copy_from_slice(msg);
            sink = sink.wrapping_add(dst[size - 1] as u64);
        }
        next += 1;
        if next.is_multiple_of(ring.slots / 4) {
            ring.word(STREAM_HEAD).store(next, std::sync::atomic::Ordering::Release);
        }
    };
    let rate = median_rate(count, || take(&ring));
    std::hint::black_box(sink);
    c.wait().unwrap();
    rate
}

/// Batch samples of the floor ping-pong ([`Floor`]), timed like [`rtt_ipc`].
fn rtt_floor(n: usize) -> Vec<u64> {
    let (page, fd) = Floor::create();
    let mut c = child("floor_echo", &[BorrowedOrOwned::Fd(&fd)], &[]);
    drop(fd);
    let batches = n / RTT_BATCH;
    let mut samples = Vec::with_capacity(batches);
    let mut payload = [0u8; MSG];
    let mut back = [0u8; MSG];
    let mut sink = 0u64;
    let mut seq = 0u64;
    for b in 0..batches + batches / 10 {
        let t0 = Instant::now();
        for _ in 0..RTT_BATCH {
            seq += 1;
            payload[..8].copy_from_slice(&seq.to_le_bytes());
            page.write(PING, &payload, seq);
            page.wait(PONG, seq);
            page.read(PONG, &mut back);
            sink = sink.wrapping_add(touch(&back));
        }
        let dt = t0.elapsed().as_nanos() as u64 / RTT_BATCH as u64;
        if b >= batches / 10 {
            samples.push(dt);
        }
    }
    std::hint::black_box(sink);
    page.seq(PING).store(Floor::STOP, std::sync::atomic::Ordering::Release);
    c.wait().unwrap();
    samples
}

fn rtt_stream(n: usize, role_fds: [OwnedFd; 2], mut w: std::fs::File, mut r: std::fs::File) -> f64 {
    let mut c = child("stream_echo", &[BorrowedOrOwned::Fd(&role_fds[0]), BorrowedOrOwned::Fd(&role_fds[1])], &[]);
    drop(role_fds);
    let batches = n / RTT_BATCH;
    let mut samples = Vec::with_capacity(batches);
    let mut payload = [0u8; MSG];
    let mut back = [0u8; MSG];
    let mut sink = 0u64;
    for b in 0..batches + batches / 10 {
        let t0 = Instant::now();
        for i in 0..RTT_BATCH {
            payload[..8].copy_from_slice(&((b * RTT_BATCH + i) as u64).to_le_bytes());
            w.write_all(&payload).unwrap();
            r.read_exact(&mut back).unwrap();
            sink = sink.wrapping_add(touch(&back));
        }
        let dt = t0.elapsed().as_nanos() as u64 / RTT_BATCH as u64;
        if b >= batches / 10 {
            samples.push(dt);
        }
    }
    std::hint::black_box(sink);
    drop((w, r));
    c.wait().unwrap();
    p50(samples)
}

fn rtt_socketpair(n: usize) -> f64 {
    let (mine, theirs) = UnixStream::pair().unwrap();
    let t1 = OwnedFd::from(theirs.try_clone().unwrap());
    let t2 = OwnedFd::from(theirs);
    let w = std::fs::File::from(OwnedFd::from(mine.try_clone().unwrap()));
    let r = std::fs::File::from(OwnedFd::from(mine));
    rtt_stream(n, [t1, t2], w, r)
}

fn rtt_pipe(n: usize) -> f64 {
    let (r1, w1) = std::io::pipe().unwrap(); // parent -> child
    let (r2, w2) = std::io::pipe().unwrap(); // child -> parent
    let w = std::fs::File::from(OwnedFd::from(w1));
    let r = std::fs::File::from(OwnedFd::from(r2));
    rtt_stream(n, [OwnedFd::from(r1), OwnedFd::from(w2)], w, r)
}

/// Messages per second (and bytes) of `count` messages of `size` bytes.
fn throughput_ipc(size: usize, count: u64) -> f64 {
    let ch = Channel::create_memfd(&Config::new(ring_bytes(size))).unwrap();
    let mut rx = ch.receiver().unwrap();
    rx.set_wait_mode(WaitMode::BusyPoll);
    let mut c = child("ipc_produce", &[BorrowedOrOwned::Chan(&ch)], &[size.to_string(), count.to_string()]);
    let t = Some(Duration::from_secs(60));
    let mut dst_v = vec![0u8; size + 4096];
    let dst = page_aligned(&mut dst_v, size);
    let mut sink = 0u64;
    drop(rx.recv(t).unwrap());
    let rate = median_rate(count - 1, || {
        let g = rx.recv(t).unwrap();
        if size == MSG {
            sink = sink.wrapping_add(touch(&g));
        } else {
            dst.copy_from_slice(&g);
            sink = sink.wrapping_add(dst[size - 1] as u64);
        }
    });
    std::hint::black_box(sink);
    c.wait().unwrap();
    rate
}

/// Messages per second of `count` 64-byte messages sent in batches of [`BATCH`]
/// and received with `recv_batch`, timed as [`throughput_ipc`] times one at a time
/// (median over chunks of the same number of messages).
fn throughput_ipc_batch(count: u64) -> f64 {
    let ch = Channel::create_memfd(&Config::new(ring_bytes(MSG))).unwrap();
    let mut rx = ch.receiver().unwrap();
    rx.set_wait_mode(WaitMode::BusyPoll);
    let mut c = child("ipc_produce_batch", &[BorrowedOrOwned::Chan(&ch)], &[count.to_string()]);
    let t = Some(Duration::from_secs(60));
    let mut sink = 0u64;
    let mut left = count;
    let mut take = |n: u64, sink: &mut u64| {
        let mut got = 0;
        while got < n {
            let limit = RECV_BATCH.min((n - got) as usize);
            got += rx.recv_batch(limit, t, |m| *sink = sink.wrapping_add(touch(m))).unwrap() as u64;
        }
    };
    // The first batch untimed, as the first message is for one at a time.
    take(BATCH as u64, &mut sink);
    left -= BATCH as u64;
    let chunk = chunk_len(left);
    let mut rates = Vec::new();
    for _ in 0..left / chunk {
        let t0 = Instant::now();
        take(chunk, &mut sink);
        rates.push(chunk as f64 / t0.elapsed().as_secs_f64());
    }
    take(left % chunk, &mut sink);
    std::hint::black_box(sink);
    c.wait().unwrap();
    median(rates)
}

/// Round trips (µs each) of 64-byte messages with both ends asleep in epoll on
/// their channels' wake descriptors whenever they wait.
fn rtt_wakefd(n: usize) -> Vec<f64> {
    let cfg = Config::new(1 << 16).wake_fds(true);
    let a2b = Channel::create_memfd(&cfg).unwrap();
    let b2a = Channel::create_memfd(&cfg).unwrap();
    let fds: Vec<BorrowedOrOwned<'_>> = wake_chan_fds(&a2b).into_iter().chain(wake_chan_fds(&b2a)).collect();
    let mut c = child("ipc_wake_echo", &fds, &[]);
    drop(fds);
    let (mut tx, mut rx) = (a2b.sender().unwrap(), b2a.receiver().unwrap());
    let ep = epoll_on(rx.as_fd());
    let mut payload = [0u8; MSG];
    let mut back = [0u8; MSG];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let t0 = Instant::now();
        tx.try_send(&payload).unwrap();
        assert!(recv_epoll(&mut rx, &ep, &mut back));
        let dt = t0.elapsed().as_secs_f64() * 1e6;
        assert_eq!(back[..8], payload[..8]);
        if i >= n / 10 {
            samples.push(dt);
        }
    }
    drop((tx, rx));
    c.wait().unwrap();
    samples
}

/// The same round trips over a non-blocking Unix socket pair, both ends asleep in
/// epoll whenever a read would block.
fn rtt_sock_epoll(n: usize) -> Vec<f64> {
    let (mine, theirs) = UnixStream::pair().unwrap();
    let theirs = OwnedFd::from(theirs);
    let mut c = child("sock_epoll_echo", &[BorrowedOrOwned::Fd(&theirs)], &[]);
    drop(theirs);
    mine.set_nonblocking(true).unwrap();
    let ep = epoll_on(mine.as_fd());
    let mut payload = [0u8; MSG];
    let mut back = [0u8; MSG];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let t0 = Instant::now();
        (&mine).write_all(&payload).unwrap();
        loop {
            match (&mine).read(&mut back) {
                Ok(k) => {
                    assert_eq!(k, MSG);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => epoll_sleep(&ep),
                Err(e) => panic!("{e}"),
            }
        }
        let dt = t0.elapsed().as_secs_f64() * 1e6;
        if i >= n / 10 {
            samples.push(dt);
        }
    }
    drop(mine);
    c.wait().unwrap();
    samples
}

/// Messages per timed chunk: throughputs are the median over chunks, so that a
/// chunk in which another process took our core does not drag the figure down.
fn chunk_len(count: u64) -> u64 {
    (count / 50).max(1)
}

/// Calls `one` `count` times and returns the median, over timed chunks of
/// [`chunk_len`] calls, of calls per second; the calls left after the last whole
/// chunk run untimed.
fn median_rate(count: u64, mut one: impl FnMut()) -> f64 {
    let chunk = chunk_len(count);
    let mut rates = Vec::new();
    for _ in 0..count / chunk {
        let t0 = Instant::now();
        for _ in 0..chunk {
            one();
        }
        rates.push(chunk as f64 / t0.elapsed().as_secs_f64());
    }
    for _ in 0..count % chunk {
        one();
    }
    median(rates)
}

/// The figures of each turn, divided by `unit`, with `digits` decimals.
fn turns(v: &[f64], unit: f64, digits: usize) -> String {
    v.iter().map(|x| format!("{:.*}", digits, x / unit)).collect::<Vec<_>>().join(" ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    v[v.len() / 2]
}

fn throughput_socketpair(count: u64) -> f64 {
    let (mine, theirs) = UnixStream::pair().unwrap();
    let theirs = OwnedFd::from(theirs);
    let mut c = child("stream_produce", &[BorrowedOrOwned::Fd(&theirs)], &[count.to_string()]);
    drop(theirs);
    let mut r = mine;
    let mut buf = [0u8; MSG];
    let mut sink = 0u64;
    r.read_exact(&mut buf).unwrap();
    let rate = median_rate(count - 1, || {
        r.read_exact(&mut buf).unwrap();
        sink = sink.wrapping_add(touch(&buf));
    });
    std::hint::black_box(sink);
    c.wait().unwrap();
    rate
}

/// A page-aligned `len`-byte slice of `v` (which has a page to spare).
fn page_aligned(v: &mut [u8], len: usize) -> &mut [u8] {
    let skip = v.as_ptr().align_offset(4096);
    &mut v[skip..skip + len]
}

/// Gbit/s of one core copying `count` 64 KiB messages, as the ring's two copies do.
fn memcpy_gbps(count: u64) -> f64 {
    // Page-aligned like the ring's data area: wherever the allocator happened to put
    // two plain vectors, `rep movsb` could run at a tenth of its speed (seen after the
    // other stages had used the heap: 15-19 Gbit/s instead of about 300).
    let (mut src_v, mut dst_v) = (vec![0xa5u8; BIG + 4096], vec![0u8; BIG + 4096]);
    let src = page_aligned(&mut src_v, BIG);
    let dst = page_aligned(&mut dst_v, BIG);
    let mut i = 0u8;
    let copies_per_s = median_rate(count, || {
        let s = std::hint::black_box(&*src);
        dst.copy_from_slice(s);
        dst[0] = i;
        i = i.wrapping_add(1);
        std::hint::black_box(&mut *dst);
    });
    copies_per_s * BIG as f64 * 8.0 / 1e9
}

fn idle_cpu_percent(ipc: bool, ms: u64) -> f64 {
    let mut c;
    let _keep;
    if ipc {
        let ch = Channel::create_memfd(&Config::new(1 << 16)).unwrap();
        let tx = ch.sender().unwrap(); // attached and alive, never sending
        c = child("ipc_idle", &[BorrowedOrOwned::Chan(&ch)], &[ms.to_string()]);
        _keep = (Some(tx), None);
    } else {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let theirs = OwnedFd::from(theirs);
        c = child("sock_idle", &[BorrowedOrOwned::Fd(&theirs)], &[ms.to_string()]);
        _keep = (None, Some(mine));
    }
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    c.wait().unwrap();
    let ns: f64 = out.trim().parse().expect("child cpu ns");
    ns / (ms as f64 * 1e6) * 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--role") {
        role(&args[1..]);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).map(String::as_str);
    let run = |what: &str| only.is_none_or(|o| o == what);
    pin(0);
    let (rtt_n, rtt_sock_n, tp_n, tp_sock_n, big_n, idle_ms) = if quick {
        (200_000, 50_000, 10_000_000, 1_000_000, 20_000, 1000)
    } else {
        (1_000_000, 200_000, 50_000_000, 4_000_000, 100_000, 3000)
    };
    let wake_n = if quick { 20_000 } else { 100_000 };

    let mut rows = Vec::new();
    if run("rtt") {
        // The hypervisor may move this machine's two cores between sibling hyperthreads
        // and separate cores while we run, which changes a cache line's trip several
        // times over: berth and the floor take turns, a slice each per round.
        let (mut ipc, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..RTT_ROUNDS {
            ipc.extend(rtt_ipc(rtt_n / RTT_ROUNDS));
            floor.extend(rtt_floor(rtt_n / RTT_ROUNDS));
        }
        let (ipc_rtt, floor_rtt) = (p50(ipc), p50(floor));
        let sock_rtt = rtt_socketpair(rtt_sock_n);
        let pipe_rtt = rtt_pipe(rtt_sock_n);
        println!(
            "rtt 64B p50: ipc {ipc_rtt:.0} ns, socketpair {sock_rtt:.0} ns, pipe {pipe_rtt:.0} ns, \
             shared-memory floor {floor_rtt:.0} ns"
        );
        rows.push(Row::new("ipc/rtt_64B/p50_ns", "p50_ns", ipc_rtt, "unix_socketpair", sock_rtt, Better::Lower));
        rows.push(Row::new("ipc/rtt_64B_vs_pipe/p50_ns", "p50_ns", ipc_rtt, "pipe", pipe_rtt, Better::Lower));
        rows.push(Row::new("ipc/rtt_64B_vs_floor/p50_ns", "p50_ns", ipc_rtt, "shm_pingpong", floor_rtt, Better::Lower));
    }
    if run("tp64") {
        // As for the round trip: berth, the streaming floor and the socket pair take
        // turns, so that all see each placement of our two vCPUs, and each row is a
        // median over the turns (a single long run is a single placement).
        let (mut ipc, mut floor, mut sock) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RTT_ROUNDS {
            ipc.push(throughput_ipc(MSG, tp_n / RTT_ROUNDS as u64));
            floor.push(throughput_floor(MSG, tp_n / RTT_ROUNDS as u64));
            sock.push(throughput_socketpair(tp_sock_n / RTT_ROUNDS as u64));
        }
        println!(
            "throughput 64B turns (M msg/s): ipc {}; shared-memory floor {}; socketpair {}",
            turns(&ipc, 1e6, 1),
            turns(&floor, 1e6, 1),
            turns(&sock, 1e6, 1)
        );
        let (ipc_tp, floor_tp, sock_tp) = (median(ipc), median(floor), median(sock));
        println!(
            "throughput 64B: ipc {:.1} M msg/s, socketpair {:.2} M msg/s, shared-memory floor {:.1} M msg/s",
            ipc_tp / 1e6,
            sock_tp / 1e6,
            floor_tp / 1e6
        );
        rows.push(Row::new(
            "ipc/throughput_64B_vs_floor/msgs_per_s",
            "msgs_per_s",
            ipc_tp,
            "shm_stream",
            floor_tp,
            Better::Higher,
        ));
        rows.push(Row::new(
            "ipc/throughput_64B/msgs_per_s",
            "msgs_per_s",
            ipc_tp,
            "unix_socketpair",
            sock_tp,
            Better::Higher,
        ));
    }
    if run("tp64k") {
        // In turns, with the streaming floor as well: a disturbance of this shared
        // machine then hits all three, and the floor shows what the two cores could
        // move across at the time (their cross-core bandwidth changes by whole turns,
        // about 95 instead of 280 Gbit/s).
        let gbps = |msgs_per_s: f64| msgs_per_s * BIG as f64 * 8.0 / 1e9;
        let (mut ipc, mut copy, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RTT_ROUNDS {
            ipc.push(gbps(throughput_ipc(BIG, big_n / RTT_ROUNDS as u64)));
            copy.push(memcpy_gbps(big_n / RTT_ROUNDS as u64));
            floor.push(gbps(throughput_floor(BIG, big_n / RTT_ROUNDS as u64)));
        }
        println!(
            "throughput 64KiB turns (Gbit/s): ipc {}; memcpy {}; shared-memory floor {}",
            turns(&ipc, 1.0, 0),
            turns(&copy, 1.0, 0),
            turns(&floor, 1.0, 0)
        );
        let (big, mc, fl) = (median(ipc), median(copy), median(floor));
        println!(
            "throughput 64KiB: ipc {big:.1} Gbit/s, memcpy {mc:.1} Gbit/s ({:.0}%), shared-memory floor {fl:.1} Gbit/s",
            big / mc * 100.0
        );
        rows.push(Row::new("ipc/throughput_64KiB/gbps", "gbps", big, "memcpy", mc, Better::Higher));
        rows.push(Row::new("ipc/throughput_64KiB_vs_floor/gbps", "gbps", big, "shm_stream", fl, Better::Higher));
    }
    if run("idle") {
        let idle_ipc = idle_cpu_percent(true, idle_ms);
        let idle_sock = idle_cpu_percent(false, idle_ms);
        println!("idle blocked receiver CPU: ipc {idle_ipc:.3}%, unix socket read {idle_sock:.3}%");
        rows.push(Row::new(
            "ipc/idle_blocked/cpu_percent",
            "cpu_percent",
            idle_ipc,
            "unix_socket_read",
            idle_sock,
            Better::Lower,
        ));
    }
    if run("batch") {
        // In turns, as for tp64: one at a time and in batches see the same
        // placements of our two vCPUs.
        let (mut one, mut batch) = (Vec::new(), Vec::new());
        for _ in 0..RTT_ROUNDS {
            one.push(throughput_ipc(MSG, tp_n / RTT_ROUNDS as u64));
            batch.push(throughput_ipc_batch(tp_n / RTT_ROUNDS as u64));
        }
        println!(
            "throughput 64B turns (M msg/s): batches of {BATCH} {}; one at a time {}",
            turns(&batch, 1e6, 1),
            turns(&one, 1e6, 1)
        );
        let (b, o) = (median(batch), median(one));
        println!(
            "throughput 64B: batches {:.1} M msg/s, one at a time {:.1} M msg/s ({:.2}x)",
            b / 1e6,
            o / 1e6,
            b / o
        );
        rows.push(Row::new(
            "ipc/throughput_64B_batch/msgs_per_s",
            "msgs_per_s",
            b,
            "ipc_one_at_a_time",
            o,
            Better::Higher,
        ));
    }
    if run("wakefd") {
        let (mut ipc, mut sock) = (Vec::new(), Vec::new());
        for _ in 0..RTT_ROUNDS {
            ipc.extend(rtt_wakefd(wake_n / RTT_ROUNDS));
            sock.extend(rtt_sock_epoll(wake_n / RTT_ROUNDS));
        }
        let p50 = |mut v: Vec<f64>| {
            v.sort_unstable_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (i, s) = (p50(ipc), p50(sock));
        println!("rtt 64B, both ends asleep in epoll, p50: ipc wake fds {i:.1} us, socketpair {s:.1} us");
        rows.push(Row::new("ipc/rtt_64B_wakefd/p50_us", "p50_us", i, "unix_socketpair_epoll", s, Better::Lower));
    }
    let path = results_path();
    append_rows(&path, &rows).expect("write results");
    println!("wrote {} rows to {}", rows.len(), path.display());
}
