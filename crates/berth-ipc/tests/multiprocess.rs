//! Two-process tests: a stress run with sequence numbers and checksums, and kill -9 of
//! either end. The helper is this test binary re-executed with `BERTH_IPC_ROLE` set;
//! the channel is a memfd the child inherits (`BERTH_IPC_FD`).

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_ipc::{Channel, Config, Receiver, RecvError, SendError};

const T: Option<Duration> = Some(Duration::from_secs(30));
/// Spawning with an inheritable fd must not race another test's spawn.
static SPAWN: Mutex<()> = Mutex::new(());

fn spawn_helper(role: &str, chan: &Channel, count: u64) -> Child {
    let _guard = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    chan.set_inheritable(true).unwrap();
    let wake = chan.wake_fds().map(|(rx, tx)| format!("{},{}", rx.as_raw_fd(), tx.as_raw_fd()));
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper", "--nocapture", "--ignored", "--test-threads=1"])
        .env("BERTH_IPC_ROLE", role)
        .env("BERTH_IPC_FD", chan.as_fd().as_raw_fd().to_string())
        .env("BERTH_IPC_WAKE", wake.unwrap_or_default())
        .env("BERTH_IPC_COUNT", count.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    chan.set_inheritable(false).unwrap();
    child
}

/// Blocks until the child prints `READY` on stderr (libtest holds stdout's lock) (or fails the test if it exits first).
fn wait_ready(child: &mut Child) {
    let out = child.stderr.take().unwrap();
    for line in BufReader::new(out).lines() {
        if line.unwrap().trim() == "READY" {
            return;
        }
    }
    panic!("helper exited before READY: {:?}", child.wait());
}

/// Message `seq`: its length and payload follow from the sequence number alone.
fn message(seq: u64, buf: &mut Vec<u8>) {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let r = next();
    // Mostly small, sometimes up to ~4 KiB: exercises wrap padding at every offset.
    let len = if r % 64 == 0 { (r >> 8) % 4000 } else { (r >> 8) % 200 } as usize;
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    while buf.len() < 16 + len {
        buf.extend_from_slice(&next().to_le_bytes());
    }
    buf.truncate(16 + len);
    let sum = checksum(&buf[16..]);
    buf[8..16].copy_from_slice(&sum.to_le_bytes());
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

/// The child side of every test.
#[test]
#[ignore = "helper process, started by the other tests"]
fn helper() {
    let Ok(role) = std::env::var("BERTH_IPC_ROLE") else { return };
    let fd: i32 = std::env::var("BERTH_IPC_FD").unwrap().parse().unwrap();
    let count: u64 = std::env::var("BERTH_IPC_COUNT").unwrap().parse().unwrap();
    // SAFETY: the parent passed this descriptor number for us to own.
    let own = |fd: i32| unsafe { OwnedFd::from_raw_fd(fd) };
    let wake = std::env::var("BERTH_IPC_WAKE").unwrap();
    let chan = match wake.split_once(',') {
        Some((rx, tx)) => Channel::from_fds(own(fd), own(rx.parse().unwrap()), own(tx.parse().unwrap())).unwrap(),
        None => Channel::from_fd(own(fd)).unwrap(),
    };
    match role.as_str() {
        "producer" => {
            let mut tx = chan.sender().unwrap();
            let mut buf = Vec::new();
            for seq in 0..count {
                message(seq, &mut buf);
                // Both ways in: written in place, and copied by `send` (whose copy
                // runs backwards at some distances between buffer and ring).
                if seq % 2 == 0 {
                    let mut g = tx.reserve(buf.len(), T).unwrap();
                    g.copy_from_slice(&buf);
                    g.commit();
                } else {
                    tx.send(&buf, T).unwrap();
                }
            }
        }
        "producer_mid" => {
            let mut tx = chan.sender().unwrap();
            for i in 0..3u8 {
                tx.try_send(&[i; 100]).unwrap();
            }
            let mut g = tx.try_reserve(1000).unwrap();
            g[..500].fill(0xee);
            eprintln!("READY");
            // Killed here, the half-written record never committed.
            loop {
                std::thread::park();
            }
        }
        "batches" => {
            // Batch k: 1 + k % 40 records of (k, i, n) and some filler, sent whole,
            // forever (until killed), waiting for room when the ring is full.
            let mut tx = chan.sender().unwrap();
            let mut msgs: Vec<Vec<u8>> = Vec::new();
            for k in 0u64.. {
                let n = 1 + k % 40;
                msgs.clear();
                for i in 0..n {
                    let mut m = [k.to_le_bytes(), i.to_le_bytes(), n.to_le_bytes()].concat();
                    m.resize(24 + ((k + i) % 50) as usize, 0x5a);
                    msgs.push(m);
                }
                tx.send_batch(&msgs, T).unwrap();
                if k == 0 {
                    eprintln!("READY");
                }
            }
        }
        "consumer_drain" => {
            // Receives and drops everything, with no deadline, until the sender goes.
            let mut rx = chan.receiver().unwrap();
            eprintln!("READY");
            while rx.recv(None).is_ok() {}
        }
        "consumer_stall" => {
            let _rx = chan.receiver().unwrap();
            eprintln!("READY");
            loop {
                std::thread::park();
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// Message `seq` as received, against the one sent.
fn check(seq: u64, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "message {seq}: length");
    let got_seq = u64::from_le_bytes(got[..8].try_into().unwrap());
    assert_eq!(got_seq, seq, "lost or duplicated message");
    let sum = u64::from_le_bytes(got[8..16].try_into().unwrap());
    assert_eq!(checksum(&got[16..]), sum, "message {seq}: corrupted payload");
    assert!(got == want, "message {seq}: payload differs");
}

fn stress(count: u64) {
    let chan = Channel::create_memfd(&Config::new(64 * 1024)).unwrap();
    let mut rx = chan.receiver().unwrap();
    let mut child = spawn_helper("producer", &chan, count);
    let (mut want, mut out) = (Vec::new(), vec![0u8; 4096]);
    for seq in 0..count {
        message(seq, &mut want);
        let got = rx.recv(T).unwrap_or_else(|e| panic!("message {seq}: {e}"));
        // Both ways out: lent in place, and copied with volatile loads.
        if seq % 3 == 0 {
            let n = got.copy_to(&mut out).unwrap();
            check(seq, &out[..n], &want);
        } else {
            check(seq, &got, &want);
        }
    }
    assert_eq!(rx.recv(T).unwrap_err(), RecvError::Closed, "nothing after the last message");
    assert!(child.wait().unwrap().success());
}

/// Always on: a million messages (a few seconds in debug builds).
#[test]
fn stress_two_processes_1m() {
    stress(1_000_000);
}

/// The full run: `cargo test -p berth-ipc --release --test multiprocess stress_two_processes_10m`.
#[test]
#[cfg_attr(debug_assertions, ignore = "10M messages: run with --release")]
fn stress_two_processes_10m() {
    stress(10_000_000);
}

/// Calls `f` while it says `Empty` / `Full` (for at most 2 s) and returns what it
/// says then.
fn try_until_not_empty<E: PartialEq + From<Nothing>>(mut f: impl FnMut() -> Result<(), E>) -> Result<(), E> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = f();
        if r != Err(E::from(Nothing)) || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// `Empty` or `Full`: the non-blocking calls' "nothing right now".
struct Nothing;

impl From<Nothing> for RecvError {
    fn from(_: Nothing) -> RecvError {
        RecvError::Empty
    }
}

impl From<Nothing> for SendError {
    fn from(_: Nothing) -> SendError {
        SendError::Full
    }
}

fn shm_entries() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    // Named tests of the other test binary may run concurrently; they use `t-` names.
    v.retain(|n| !n.starts_with("berth-ipc.t-"));
    v.sort();
    v
}

/// A memfd channel, its receiver, and a producer process that has committed three
/// 100-byte messages and is stopped halfway through writing a fourth.
fn producer_mid() -> (Channel, Receiver, Child) {
    producer_mid_on(Config::new(64 * 1024))
}

/// [`producer_mid`] on a channel made with `config`.
fn producer_mid_on(config: Config) -> (Channel, Receiver, Child) {
    let chan = Channel::create_memfd(&config).unwrap();
    let rx = chan.receiver().unwrap();
    let mut child = spawn_helper("producer_mid", &chan, 0);
    wait_ready(&mut child);
    (chan, rx, child)
}

#[test]
fn kill_producer_mid_message_gives_peer_dead_and_leaves_nothing() {
    let before = shm_entries();
    let (chan, mut rx, mut child) = producer_mid();
    for i in 0..3u8 {
        assert_eq!(&*rx.recv(T).unwrap(), &[i; 100]);
    }
    let killer = std::thread::spawn(move || {
        child.kill().unwrap();
        let at = Instant::now();
        child.wait().unwrap();
        at
    });
    let err = rx.recv(T).unwrap_err();
    let done = Instant::now();
    let killed_at = killer.join().unwrap();
    assert_eq!(err, RecvError::PeerDead);
    let took = done.saturating_duration_since(killed_at);
    assert!(took < Duration::from_millis(100), "PeerDead after {took:?}");
    // The half-written record is never delivered, and the non-blocking call reports
    // the death too (it checks the process at most every 10 ms).
    assert_eq!(try_until_not_empty(|| rx.try_recv().map(drop)), Err(RecvError::PeerDead));
    drop((rx, chan));
    assert_eq!(shm_entries(), before, "memfd mode leaves nothing in /dev/shm");
}

#[test]
fn kill_consumer_while_producer_waits_gives_peer_dead() {
    let chan = Channel::create_memfd(&Config::new(4096)).unwrap();
    let mut tx = chan.sender().unwrap();
    let mut child = spawn_helper("consumer_stall", &chan, 0);
    wait_ready(&mut child);
    while tx.try_send(&[7; 256]).is_ok() {}
    let killer = std::thread::spawn(move || {
        child.kill().unwrap();
        let at = Instant::now();
        child.wait().unwrap();
        at
    });
    let err = tx.send(&[7; 256], T).unwrap_err();
    let done = Instant::now();
    let killed_at = killer.join().unwrap();
    assert_eq!(err, SendError::PeerDead);
    let took = done.saturating_duration_since(killed_at);
    assert!(took < Duration::from_millis(100), "PeerDead after {took:?}");
    // The ring is still full: the non-blocking call reports the death too.
    assert_eq!(try_until_not_empty(|| tx.try_send(&[7; 256])), Err(SendError::PeerDead));
}

/// A heartbeat limit shorter than the peer's idle sleep: the peer, asleep with no
/// deadline, last beat when it fell asleep, over a second ago. The sender commits
/// (waking it), fills the ring and waits for room before the peer is scheduled
/// again (here: it is stopped, then continued 100 ms later). That peer is slow to
/// wake, not hung, and the send must succeed; a peer stopped for good is still
/// declared dead once the limit has passed with no sign of life.
///
/// Proven by mutation: `PeerWatch::hung` judging by the heartbeat alone fails the
/// first send at once with `PeerDead`.
#[test]
fn a_peer_woken_from_a_long_idle_sleep_is_not_taken_for_hung() {
    use rustix::process::{Signal, kill_process};
    const LIMIT: Duration = Duration::from_millis(300);
    // Fenced: every wake reaches the peer without membarrier, so its idle sleep has
    // no timer whatever this machine allows (else it could sleep in 1 ms slices and
    // keep its heartbeat fresh).
    let chan = Channel::create_memfd(&Config::new(4096).fenced(true)).unwrap();
    let mut tx = chan.sender().unwrap();
    tx.set_peer_timeout(Some(LIMIT));
    let mut child = spawn_helper("consumer_drain", &chan, 0);
    wait_ready(&mut child);
    let pid = child.id();
    tx.send(&[1; 256], T).unwrap();
    // The peer drains that and falls asleep with no deadline (and so no timer).
    std::thread::sleep(Duration::from_millis(1200));
    stop(pid);
    let cont = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), Signal::CONT).unwrap();
    });
    fill(&mut tx);
    assert_eq!(tx.send(&[3; 256], Some(Duration::from_secs(10))), Ok(()), "a slow-to-wake peer taken for hung");
    cont.join().unwrap();
    // Stopped for good: no heartbeat, no progress.
    std::thread::sleep(Duration::from_millis(200));
    stop(pid);
    fill(&mut tx);
    let start = Instant::now();
    assert_eq!(tx.send(&[5; 256], Some(Duration::from_secs(10))), Err(SendError::PeerDead));
    let took = start.elapsed();
    assert!(took >= LIMIT / 2 && took < Duration::from_secs(3), "a stopped peer declared dead after {took:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Sends SIGSTOP to `pid` and waits (at most 5 s) until it has stopped: the stop
/// takes effect only once the process is scheduled to take it.
fn stop(pid: u32) {
    use rustix::process::{Pid, Signal, kill_process};
    kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::STOP).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The state follows the command name's closing parenthesis.
        if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T')) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("process {pid} did not stop within 5 s");
}

/// Sends 256-byte messages until the ring is full.
fn fill(tx: &mut berth_ipc::Sender) {
    loop {
        match tx.try_send(&[2; 256]) {
            Ok(()) => {}
            Err(e) => return assert_eq!(e, SendError::Full),
        }
    }
}

/// Only non-blocking calls: the messages committed before the kill, then `PeerDead`.
#[test]
fn try_recv_alone_reports_a_killed_producer() {
    let (_chan, mut rx, mut child) = producer_mid();
    child.kill().unwrap();
    child.wait().unwrap();
    for i in 0..3u8 {
        assert_eq!(try_until_not_empty(|| rx.try_recv().map(|m| assert_eq!(&*m, &[i; 100]))), Ok(()));
    }
    assert_eq!(try_until_not_empty(|| rx.try_recv().map(drop)), Err(RecvError::PeerDead));
}

/// A producer killed while it sends batches (here: while it waits for room for
/// one) leaves whole batches only: every batch the receiver sees has all its
/// records, in order, and then the receiver gets `PeerDead`.
///
/// Proven by mutation: `Sender::stage_batch` publishing after every record (the
/// prefix of a batch that did not fit becomes visible before it rewinds) fails
/// it (a partial batch, or corruption).
#[test]
fn a_producer_killed_mid_batch_leaves_whole_batches() {
    let chan = Channel::create_memfd(&Config::new(16 * 1024)).unwrap();
    let mut rx = chan.receiver().unwrap();
    let mut child = spawn_helper("batches", &chan, 0);
    wait_ready(&mut child);
    // Let it fill the ring and block on a batch that does not fit.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut batch, mut index, mut size, mut batches) = (0u64, 0u64, 0u64, 0u64);
    let word = |m: &[u8], i: usize| u64::from_le_bytes(m[i * 8..i * 8 + 8].try_into().unwrap());
    let end = loop {
        let got = rx.recv_batch(7, T, |m| {
            let (k, i, n) = (word(m, 0), word(m, 1), word(m, 2));
            assert_eq!((k, i, n), (batch, index, 1 + batch % 40), "out of order or partial batch");
            assert_eq!(m.len() as u64, 24 + (k + i) % 50);
            index += 1;
            size = n;
            if index == n {
                (batch, index) = (batch + 1, 0);
                batches += 1;
            }
        });
        if let Err(e) = got {
            break e;
        }
    };
    assert_eq!(end, RecvError::PeerDead);
    assert_eq!(index, 0, "a batch of {size} ended after {index} records");
    assert!(batches > 5, "only {batches} batches arrived: the ring was never full");
}

/// Voluntary context switches of thread `tid` of this process so far.
fn voluntary_switches(tid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// CPU time the calling thread has used (user and system), from its own clock.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A receiver blocked for a long time sleeps (the watcher thread, not a timer or
/// a spin, tells it of its peer's death), and still learns of a kill -9 at once.
///
/// Sleeping is measured as the receiving thread's own CPU time over the ~3.5 s it
/// is blocked: a busy-spinning receiver would use all of it (and make no
/// voluntary context switch, so counting those alone could not catch it).
/// Proven by mutation: `Wait::pause` never sleeping (`let sleep = false`) fails
/// the CPU assertion.
#[test]
fn an_idle_blocked_receiver_sleeps_yet_sees_a_kill_at_once() {
    let woke = idle_blocked_receiver(Config::new(64 * 1024), T);
    // Timed 50 ms slices would be 40 wake-ups here; 1 s ones are about 2.
    assert!(woke <= 8, "an idle blocked receiver woke {woke} times in 2 s");
}

/// With no deadline, its sleep has no timer at all: nothing but the kill wakes it.
/// Proven by mutation: `Wait::pause` sleeping in timed slices anyway fails it.
#[test]
fn an_idle_receiver_without_a_deadline_never_wakes_until_the_kill() {
    // Fenced: every wake reaches it without membarrier, so this holds wherever
    // membarrier is refused too (then an unfenced channel sleeps in 1 ms slices).
    let woke = idle_blocked_receiver(Config::new(64 * 1024).fenced(true), None);
    // Slices doubling from 10 ms would wake it 4 times in this window.
    assert!(woke <= 1, "an idle receiver without a deadline woke {woke} times in 2 s");
}

/// Blocks a receiver in `recv(timeout)` on a live, silent producer; returns how
/// often it woke in 2 s (from 0.1 s in), then kills the producer and checks the
/// receiver used next to no CPU and got `PeerDead` at once.
fn idle_blocked_receiver(config: Config, timeout: Option<Duration>) -> u64 {
    let (_chan, mut rx, mut child) = producer_mid_on(config);
    for i in 0..3u8 {
        assert_eq!(&*rx.recv(T).unwrap(), &[i; 100]);
    }
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get()).unwrap();
        let cpu_before = thread_cpu();
        let err = rx.recv(timeout).map(|m| m.len()).unwrap_err();
        (err, Instant::now(), thread_cpu() - cpu_before)
    });
    let tid = tid_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let before = voluntary_switches(tid);
    std::thread::sleep(Duration::from_millis(2000));
    let woke = voluntary_switches(tid) - before;
    child.kill().unwrap();
    let killed_at = Instant::now();
    child.wait().unwrap();
    let (err, done, cpu) = waiter.join().unwrap();
    assert_eq!(err, RecvError::PeerDead);
    // A sleeping receiver uses well under a millisecond of the 2.1 s; a spinning
    // one uses nearly all of it. 200 ms leaves room for a loaded machine.
    assert!(cpu < Duration::from_millis(200), "a blocked receiver used {cpu:?} of CPU in 2.1 s: it spins");
    let took = done.saturating_duration_since(killed_at);
    assert!(took < Duration::from_millis(100), "PeerDead after {took:?}");
    woke
}

/// The same with the receiver asleep in `poll` on its wake descriptor: it uses
/// next to no CPU while the producer is alive and silent, and the producer's kill
/// wakes it at once (the watcher thread writes the descriptor), after which
/// `arm_wake` says `PeerDead`.
///
/// Proven by mutation: `Shared::wake_sleeper` not writing the descriptor fails
/// the 100 ms bound (the poll sleeps out its 5 s); `Receiver::arm_wake` not
/// registering with the watcher (`self.peer.watch` removed) fails it too.
#[test]
fn an_idle_receiver_asleep_on_its_descriptor_sees_a_kill_at_once() {
    let chan = Channel::create_memfd(&Config::new(64 * 1024).wake_fds(true)).unwrap();
    let mut rx = chan.receiver().unwrap();
    let mut child = spawn_helper("producer_mid", &chan, 0);
    wait_ready(&mut child);
    for i in 0..3u8 {
        assert_eq!(&*rx.recv(T).unwrap(), &[i; 100]);
    }
    let waiter = std::thread::spawn(move || {
        let cpu_before = thread_cpu();
        let mut rounds = 0u32;
        let err = loop {
            rounds += 1;
            match rx.try_recv().map(|m| m.len()) {
                Err(RecvError::Empty) => {}
                Err(e) => break e,
                Ok(len) => panic!("a {len}-byte message"),
            }
            match rx.arm_wake() {
                Ok(true) => {
                    let fd = rx.as_fd();
                    let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
                    let t = rustix::event::Timespec { tv_sec: 5, tv_nsec: 0 };
                    let _ = rustix::event::poll(&mut fds, Some(&t));
                }
                Ok(false) => {}
                Err(e) => break e,
            }
        };
        (err, Instant::now(), thread_cpu() - cpu_before, rounds)
    });
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let killed_at = Instant::now();
    child.wait().unwrap();
    let (err, done, cpu, rounds) = waiter.join().unwrap();
    assert_eq!(err, RecvError::PeerDead);
    let took = done.saturating_duration_since(killed_at);
    assert!(took < Duration::from_millis(100), "PeerDead after {took:?}");
    assert!(rounds <= 4, "{rounds} wake-ups of an idle receiver");
    assert!(cpu < Duration::from_millis(200), "an idle receiver used {cpu:?} of CPU in 1.5 s");
}

/// Waits on `rx`'s wake descriptor as an event loop does (`try_recv`, `arm_wake`,
/// `poll` for at most `sleep`), until something other than `Empty` comes; returns
/// it and when.
fn wait_on_descriptor(rx: &mut Receiver, sleep: Duration, until: Instant) -> (Result<usize, RecvError>, Instant) {
    loop {
        match rx.try_recv().map(|m| m.len()) {
            Err(RecvError::Empty) if Instant::now() < until => {}
            r => return (r, Instant::now()),
        }
        match rx.arm_wake() {
            Ok(true) => {
                let fd = rx.as_fd();
                let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
                let t = rustix::event::Timespec { tv_sec: sleep.as_secs() as _, tv_nsec: sleep.subsec_nanos() as _ };
                let _ = rustix::event::poll(&mut fds, Some(&t));
            }
            Ok(false) => {}
            Err(e) => return (Err(e), Instant::now()),
        }
    }
}

/// An end that has slept once (so the watcher has its peer's pidfd) and whose peer
/// is then killed while it is awake: its next `arm_wake` says `PeerDead` at once,
/// although the watcher's wake-up was written (and is drained) before it armed.
/// The death is remembered from the watcher's report, not polled from the pidfd
/// before each sleep.
///
/// Proven by mutation: `PeerWatch::check` taking a registered peer for alive
/// (`(Some(_), _) => true`) fails the 100 ms bound (the poll sleeps out its 5 s);
/// `Watcher::fire` not storing `fired` fails it too.
#[test]
fn a_peer_killed_while_its_registered_end_is_awake_is_seen_at_the_next_arm() {
    let chan = Channel::create_memfd(&Config::new(64 * 1024).wake_fds(true)).unwrap();
    let mut rx = chan.receiver().unwrap();
    let mut child = spawn_helper("producer_mid", &chan, 0);
    wait_ready(&mut child);
    for i in 0..3u8 {
        assert_eq!(&*rx.recv(T).unwrap(), &[i; 100]);
    }
    // One sleep on the descriptor: registers the producer with the watcher.
    let (r, _) = wait_on_descriptor(&mut rx, Duration::from_millis(50), Instant::now() + Duration::from_millis(100));
    assert_eq!(r, Err(RecvError::Empty));
    // Killed while nobody sleeps; the watcher's wake lands in the descriptor.
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let (r, done) = wait_on_descriptor(&mut rx, Duration::from_secs(5), start + Duration::from_secs(10));
    assert_eq!(r, Err(RecvError::PeerDead));
    let took = done - start;
    assert!(took < Duration::from_millis(100), "PeerDead after {took:?}");
}

/// The same for a blocking `recv` (a futex sleeper): after one sleep that
/// registered the peer, a kill while the end is awake ends the next `recv` at once.
///
/// Proven by mutation as above: a registered peer taken for alive makes the next
/// `recv` sleep out 1 s slices until its 30 s timeout.
#[test]
fn a_peer_killed_while_its_registered_futex_sleeper_is_awake_is_seen_at_the_next_recv() {
    let (_chan, mut rx, mut child) = producer_mid();
    for i in 0..3u8 {
        assert_eq!(&*rx.recv(T).unwrap(), &[i; 100]);
    }
    // Sleeps (and registers): the producer is parked.
    assert_eq!(rx.recv(Some(Duration::from_millis(100))).map(|m| m.len()).unwrap_err(), RecvError::TimedOut);
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(rx.recv(T).map(|m| m.len()).unwrap_err(), RecvError::PeerDead);
    let took = start.elapsed();
    assert!(took < Duration::from_millis(100), "PeerDead after {took:?}");
}
