//! The IPC relay with an in-process backend thread: frames round-trip with every byte
//! checked across interleaved connections; bad lengths, no backend and a backend that
//! goes away mid-request close clients cleanly; a new backend is taken; replies for
//! connections that are gone are dropped and counted. In a process without the
//! berth-ipc watcher thread, a killed backend or relay is still seen.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use berth_server::{IpcRelay, RelayBackend, RelayConfig, RelayHandle, Server};
use common::*;

const MAX_FRAME: usize = 64 * 1024;

/// A channel name of its own per test: pid and a counter.
fn channel(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("berth-relay-test-{}-{}-{what}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The files of lane `lane` of relay channel `name`: its two rings and their wake
/// FIFOs.
fn lane_files(name: &str, lane: usize) -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["a2b", "b2a"] {
        files.push(format!("/dev/shm/berth-ipc.{name}.{lane}.{dir}"));
        for end in ["rx", "tx"] {
            files.push(format!("/dev/shm/berth-ipc-wake.{name}.{lane}.{dir}.{end}"));
        }
    }
    files
}

/// Some file of the relay's lanes (of up to 8 workers) exists.
fn files_exist(name: &str) -> bool {
    (0..8).flat_map(|lane| lane_files(name, lane)).any(|f| std::path::Path::new(&f).exists())
}

/// Every file of lanes `0..workers` exists.
fn lanes_exist(name: &str, workers: usize) -> bool {
    (0..workers).flat_map(|lane| lane_files(name, lane)).all(|f| std::path::Path::new(&f).exists())
}

/// A backend speaking the raw protocol on lane 0 of `name`: opens the lane (waiting
/// for the relay to create it), takes the welcome, says hello, and waits until the
/// relay counts it attached. Returns the duplex and the welcome.
fn attach_raw(name: &str, handle: &RelayHandle) -> (berth_ipc::Duplex, Vec<u8>) {
    let lane = format!("{name}.0");
    let mut duplex = loop {
        match berth_ipc::Duplex::open_named(&lane) {
            Ok(d) => break d,
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    };
    let welcome = duplex.rx.recv_vec(Some(IO_TIMEOUT)).expect("welcome");
    duplex.tx.send(&record(u64::MAX, b""), Some(IO_TIMEOUT)).unwrap();
    assert!(handle.wait_attached(IO_TIMEOUT));
    (duplex, welcome)
}

/// A relay server with frames up to 64 KiB (segments of 128 KiB take one).
fn relay_server(name: &str, workers: usize) -> (Server, RelayHandle) {
    let relay = IpcRelay::start(RelayConfig::new(name).max_frame(MAX_FRAME)).expect("relay starts");
    let handle = relay.handle();
    let server = builder()
        .workers(workers)
        .segment_size(128 * 1024)
        .max_request_head(128 * 1024)
        .segment_count(128)
        .serve(relay)
        .expect("server starts");
    (server, handle)
}

/// A backend thread that echoes until its channel goes away.
fn echo_backend(name: &str, handle: &RelayHandle) -> thread::JoinHandle<()> {
    let mut backend = RelayBackend::attach_retrying(name, IO_TIMEOUT).expect("backend attaches");
    assert!(handle.wait_attached(IO_TIMEOUT), "relay saw the backend's hello");
    thread::spawn(move || while backend.echo_one(Some(IO_TIMEOUT)).is_ok() {})
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut payload = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload)?;
    Ok(payload)
}

/// The connection ends in an orderly close (EOF after no further bytes).
fn closes_cleanly(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        other => panic!("expected a clean close, got {other:?}"),
    }
}

/// A payload unique to (connection, frame).
fn payload(conn: usize, n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(131) ^ conn.wrapping_mul(17) ^ n.wrapping_mul(7)) as u8).collect()
}

#[test]
fn frames_round_trip_across_interleaved_connections() {
    let name = channel("roundtrip");
    let (server, handle) = relay_server(&name, 2);
    let backend = echo_backend(&name, &handle);
    assert!(lanes_exist(&name, 2), "each worker has its lane");
    let addr = server.local_addr();
    let sizes = [0usize, 1, 7, 64, 1000, 4096, 8191, 30_000, MAX_FRAME];
    let clients: Vec<_> = (0..12)
        .map(|c| {
            thread::spawn(move || {
                let mut s = client(addr);
                for (n, &len) in sizes.iter().enumerate() {
                    let p = payload(c, n, len);
                    s.write_all(&frame(&p)).unwrap();
                    assert_eq!(read_frame(&mut s).unwrap(), p, "connection {c} frame {n}");
                }
                // Pipelined: three frames in one write, answered in order.
                let batch: Vec<Vec<u8>> = (0..3).map(|k| payload(c, 100 + k, 100 + k * 500)).collect();
                let all: Vec<u8> = batch.iter().flat_map(|p| frame(p)).collect();
                s.write_all(&all).unwrap();
                for p in &batch {
                    assert_eq!(&read_frame(&mut s).unwrap(), p, "connection {c} pipelined");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let stats = handle.stats();
    assert_eq!(stats.frames_in, 12 * (sizes.len() as u64 + 3), "{stats}");
    assert_eq!(stats.replies_out, stats.frames_in, "{stats}");
    assert_eq!(stats.replies_dropped, 0, "{stats}");
    server.shutdown(Duration::from_secs(5)).unwrap();
    backend.join().unwrap();
    assert!(!files_exist(&name), "channel files removed at shutdown");
}

#[test]
fn oversized_and_malformed_lengths_close_cleanly() {
    let name = channel("bad");
    let relay = IpcRelay::start(RelayConfig::new(&name).max_frame(MAX_FRAME)).unwrap();
    let handle = relay.handle();
    // Segments of 8 KiB: a legal 10 KiB frame does not fit the server's buffer.
    let server = builder().serve(relay).unwrap();
    let backend = echo_backend(&name, &handle);

    for len in [MAX_FRAME as u32 + 1, 0x8000_0000, u32::MAX, 10 * 1024] {
        let mut s = client(server.local_addr());
        s.write_all(&len.to_be_bytes()).unwrap();
        let _ = s.write_all(&pattern(9000));
        closes_cleanly(&mut s);
    }
    // The relay still works for a good client.
    let mut s = client(server.local_addr());
    s.write_all(&frame(b"still fine")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), b"still fine");
    assert_eq!(handle.stats().frames_refused, 4, "{}", handle.stats());
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
    backend.join().unwrap();
}

#[test]
fn without_a_backend_clients_are_closed_cleanly() {
    let name = channel("nobackend");
    let (server, handle) = relay_server(&name, 1);
    assert!(!handle.attached());
    eventually("the worker's lane is created", || lanes_exist(&name, 1));
    let mut s = client(server.local_addr());
    s.write_all(&frame(b"anyone there?")).unwrap();
    closes_cleanly(&mut s);
    assert_eq!(handle.stats().closed_no_backend, 1);
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert!(!files_exist(&name));
}

#[test]
fn a_backend_lost_mid_request_closes_its_clients_and_a_new_one_is_taken() {
    let name = channel("lost");
    let (server, handle) = relay_server(&name, 2);
    let addr = server.local_addr();

    // A backend that takes three requests and goes away without answering.
    let mut doomed = RelayBackend::attach_retrying(&name, IO_TIMEOUT).unwrap();
    assert!(handle.wait_attached(IO_TIMEOUT));
    let mut waiting: Vec<TcpStream> = (0..3)
        .map(|c| {
            let mut s = client(addr);
            s.write_all(&frame(&payload(c, 0, 300))).unwrap();
            s
        })
        .collect();
    for _ in 0..3 {
        let req = doomed.recv(Some(IO_TIMEOUT)).expect("a request reaches the backend");
        assert_eq!(req.payload().len(), 300);
    }
    drop(doomed);
    for s in &mut waiting {
        closes_cleanly(s); // bounded by the socket's read timeout
    }
    assert!(handle.wait_detached(IO_TIMEOUT));
    assert_eq!(handle.stats().closed_backend_lost, 3, "{}", handle.stats());

    // A new backend attaches to the recreated channel and the relay works again.
    let backend = echo_backend(&name, &handle);
    let mut s = client(addr);
    for n in 0..5 {
        let p = payload(9, n, 2000 + n);
        s.write_all(&frame(&p)).unwrap();
        assert_eq!(read_frame(&mut s).unwrap(), p);
    }
    assert_eq!(handle.stats().backends_attached, 2);
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
    backend.join().unwrap();
    assert!(!files_exist(&name));
}

#[test]
fn a_reply_for_a_gone_connection_is_dropped_and_counted() {
    let name = channel("gone");
    let (server, handle) = relay_server(&name, 1);
    let mut backend = RelayBackend::attach_retrying(&name, IO_TIMEOUT).unwrap();
    assert!(handle.wait_attached(IO_TIMEOUT));
    let addr = server.local_addr();

    // Connection A: one round trip, then it closes.
    let mut a = client(addr);
    a.write_all(&frame(b"first")).unwrap();
    let req = backend.recv(Some(IO_TIMEOUT)).unwrap();
    let a_id = req.conn();
    drop(req);
    backend.reply(a_id, b"first", Some(IO_TIMEOUT)).unwrap();
    assert_eq!(read_frame(&mut a).unwrap(), b"first");
    drop(a);

    // Connection B: the backend answers A again (nobody waits under that id any
    // more), then B. One worker handles replies in order, so once B has its reply
    // the one for A was dropped.
    let mut b = client(addr);
    b.write_all(&frame(b"second")).unwrap();
    let req = backend.recv(Some(IO_TIMEOUT)).unwrap();
    let b_id = req.conn();
    assert_ne!(a_id, b_id);
    drop(req);
    backend.reply(a_id, b"stale", Some(IO_TIMEOUT)).unwrap();
    backend.reply(u64::MAX - 7, b"forged", Some(IO_TIMEOUT)).unwrap();
    backend.reply(b_id, b"second", Some(IO_TIMEOUT)).unwrap();
    assert_eq!(read_frame(&mut b).unwrap(), b"second");
    let stats = handle.stats();
    assert_eq!(stats.replies_dropped, 2, "{stats}");
    assert_eq!(stats.replies_out, 2, "{stats}");
    drop(b);
    drop(backend);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn graceful_shutdown_lets_a_pending_reply_through_then_closes() {
    let name = channel("drain");
    let (server, handle) = relay_server(&name, 1);
    let mut backend = RelayBackend::attach_retrying(&name, IO_TIMEOUT).unwrap();
    assert!(handle.wait_attached(IO_TIMEOUT));
    let mut s = client(server.local_addr());
    s.write_all(&frame(b"in flight")).unwrap();
    let req = backend.recv(Some(IO_TIMEOUT)).unwrap();
    let id = req.conn();
    drop(req);

    // Shut down with the request at the backend; its reply still reaches the client,
    // then the connection closes and the server stops.
    server.shutdown_handle().shutdown(IO_TIMEOUT);
    backend.reply(id, b"in flight", Some(IO_TIMEOUT)).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), b"in flight");
    closes_cleanly(&mut s);
    drop(s); // ends the server's lingering close at once
    server.join().unwrap();
    assert!(!files_exist(&name));
}

#[test]
fn a_backend_that_never_replies_gets_its_clients_closed_at_the_answer_timeout() {
    let name = channel("silent");
    let relay = IpcRelay::start(RelayConfig::new(&name).max_frame(1024)).expect("relay starts");
    let handle = relay.handle();
    let timeout = Duration::from_millis(300);
    let server = builder().answer_timeout(Some(timeout)).serve(relay).expect("server starts");
    // Attached and alive, but it does not read its requests (yet).
    let mut backend = RelayBackend::attach_retrying(&name, IO_TIMEOUT).expect("backend attaches");
    assert!(handle.wait_attached(IO_TIMEOUT));

    let mut waiting: Vec<TcpStream> = (0..3).map(|_| client(server.local_addr())).collect();
    for (i, s) in waiting.iter_mut().enumerate() {
        s.write_all(&frame(&payload(i, 0, 100))).unwrap();
    }
    let started = std::time::Instant::now();
    for s in &mut waiting {
        closes_cleanly(s);
    }
    let waited = started.elapsed();
    assert!(waited >= timeout - Duration::from_millis(50), "closed after {waited:?}, before the timeout");
    eventually("answer timeouts counted", || server.metrics().answer_timeouts == 3);
    assert_eq!(server.metrics().timeouts, 0, "read timeouts are counted apart");

    // The backend wakes up and answers the three: their connections are gone, so the
    // replies are dropped, and a new client is served as usual.
    let backend = thread::spawn(move || while backend.echo_one(Some(IO_TIMEOUT)).is_ok() {});
    eventually("late replies dropped", || handle.stats().replies_dropped == 3);
    let mut s = client(server.local_addr());
    let p = payload(9, 1, 500);
    s.write_all(&frame(&p)).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), p);
    assert_eq!(server.metrics().answer_timeouts, 3);
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
    backend.join().unwrap();
}

#[test]
fn a_dawdling_backend_and_sleeping_workers_lose_no_wake() {
    // Both sides keep going to sleep: the backend pauses now and then before it
    // replies (so a worker finds its ring empty and sleeps on the wake descriptor),
    // and clients pause between frames (so the backend sleeps on its lanes). A lost
    // wake leaves a client without its reply: its read times out (2 s) and fails.
    let name = channel("dawdle");
    let (server, handle) = relay_server(&name, 2);
    let mut backend = RelayBackend::attach_retrying(&name, IO_TIMEOUT).expect("backend attaches");
    assert!(handle.wait_attached(IO_TIMEOUT));
    let backend = thread::spawn(move || {
        let mut n = 0u32;
        loop {
            let (conn, payload) = match backend.recv(Some(IO_TIMEOUT)) {
                Ok(req) => (req.conn(), req.payload().to_vec()),
                Err(_) => return n,
            };
            n += 1;
            if n.is_multiple_of(3) {
                thread::sleep(Duration::from_micros(u64::from(n % 7) * 150));
            }
            if backend.reply(conn, &payload, Some(IO_TIMEOUT)).is_err() {
                return n;
            }
        }
    });
    let addr = server.local_addr();
    let rounds = 300;
    let clients: Vec<_> = (0..4)
        .map(|c| {
            thread::spawn(move || {
                let mut s = client(addr);
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                for n in 0..rounds {
                    let p = payload(c, n, 1 + (n * 37) % 700);
                    s.write_all(&frame(&p)).unwrap();
                    let got = read_frame(&mut s).unwrap_or_else(|e| panic!("client {c} frame {n}: no reply ({e})"));
                    assert_eq!(got, p, "client {c} frame {n}");
                    if n.is_multiple_of(5) {
                        thread::sleep(Duration::from_micros(300));
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    assert_eq!(handle.stats().replies_out, 4 * rounds as u64, "{}", handle.stats());
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(backend.join().unwrap(), 4 * rounds as u32);
}

/// A record of the relay protocol: `[u64 conn | u32 len | payload]`, little-endian.
fn record(conn: u64, payload: &[u8]) -> Vec<u8> {
    let mut r = conn.to_le_bytes().to_vec();
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(payload);
    r
}

#[test]
fn a_flood_of_replies_is_drained_in_turns_and_none_is_lost() {
    // A backend speaking the raw protocol on the one lane: welcome, hello, then 600
    // stale replies and the real one published as one batch, so the worker finds
    // them all at one wake. It handles 256 per turn and posts to itself to go on;
    // the real reply behind the stale ones still arrives.
    let name = channel("flood");
    let (server, handle) = relay_server(&name, 1);
    let (mut duplex, welcome) = attach_raw(&name, &handle);
    assert_eq!(welcome, record(u64::MAX, &[1, 0, 0, 0, 0, 0, 0, 0]), "welcome: one lane, this is lane 0");

    let mut s = client(server.local_addr());
    s.write_all(&frame(b"last in line")).unwrap();
    let request = duplex.rx.recv_vec(Some(IO_TIMEOUT)).unwrap();
    let id = u64::from_le_bytes(request[..8].try_into().unwrap());
    assert_eq!(&request[8..], &record(0, b"last in line")[8..]);
    // Other generations of the same slot: no connection waits under them.
    let mut batch: Vec<Vec<u8>> = (1..=600u64).map(|n| record(id ^ (n << 40), b"stale")).collect();
    batch.push(record(id, b"last in line"));
    duplex.tx.send_batch(&batch, Some(IO_TIMEOUT)).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), b"last in line");
    let stats = handle.stats();
    assert_eq!((stats.replies_dropped, stats.replies_out), (600, 1), "{stats}");
    drop(s);
    drop(duplex);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_backend_that_stops_receiving_has_its_lane_recreated() {
    // A raw backend says hello, then closes its receiving end but keeps its sending
    // one (so its lane's reply ring shows nothing wrong). Requests fill the small
    // request ring; the forward that finds it full and the backend gone closes its
    // client, and the lane is recreated: the clients waiting on that backend are
    // closed and a new backend is taken.
    let name = channel("halfclosed");
    let relay = IpcRelay::start(RelayConfig::new(&name).max_frame(1024).ring_capacity(4096)).unwrap();
    let handle = relay.handle();
    let server = builder().serve(relay).unwrap();
    let (duplex, _) = attach_raw(&name, &handle);
    let (tx, rx) = duplex.split();
    drop(rx);

    // Three 1000-byte frames fill the 4 KiB ring; the fourth finds it full.
    let mut clients: Vec<TcpStream> = (0..4).map(|_| client(server.local_addr())).collect();
    for (i, s) in clients.iter_mut().enumerate() {
        s.write_all(&frame(&payload(i, 0, 1000))).unwrap();
    }
    for s in &mut clients {
        closes_cleanly(s);
    }
    assert!(handle.wait_detached(IO_TIMEOUT), "the lane was not recreated");
    let stats = handle.stats();
    assert_eq!((stats.frames_in, stats.closed_backend_lost), (3, 4), "{stats}");

    let backend = echo_backend(&name, &handle);
    let mut s = client(server.local_addr());
    s.write_all(&frame(b"new backend")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), b"new backend");
    drop((s, tx));
    server.shutdown(Duration::from_secs(5)).unwrap();
    backend.join().unwrap();
}

/// The child half of `a_backend_killed_before_its_hello_frees_the_lane`: with
/// `BERTH_RELAY_TEST_LANE` set, claims that lane's backend ends (side B), says
/// so (`ready`) and waits to be killed; without it, does nothing.
#[test]
fn child_claims_a_lane_and_waits() {
    let Ok(lane) = std::env::var("BERTH_RELAY_TEST_LANE") else { return };
    let duplex = berth_ipc::Duplex::open_named(&lane).expect("child opens the lane");
    println!("ready");
    io::stdout().flush().unwrap();
    thread::sleep(Duration::from_secs(60));
    drop(duplex);
}

#[test]
fn a_backend_killed_before_its_hello_frees_the_lane() {
    // A process claims the lane's ends and is killed before its hello: no record
    // and (yet) no watched pid tell the lane, so only its look at the channel
    // while unattached (once a second) finds the claimant dead and recreates the
    // lane. A new backend is then taken.
    let name = channel("prehello");
    let (server, handle) = relay_server(&name, 1);
    eventually("the lane is created", || lanes_exist(&name, 1));
    let mut child = start_child("child_claims_a_lane_and_waits", "BERTH_RELAY_TEST_LANE", &format!("{name}.0"));
    child.kill().unwrap();
    child.wait().unwrap();

    let backend = echo_backend(&name, &handle);
    let mut s = client(server.local_addr());
    s.write_all(&frame(b"after the dead claimant")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), b"after the dead claimant");
    assert_eq!(handle.stats().closed_backend_lost, 0);
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
    backend.join().unwrap();
}

/// CPU time the calling thread has used, from its own clock.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A stale wake in one lane's descriptor (a write no arm asked for, as a late
/// wake from an earlier arm) costs a backend of several lanes one wake-up, not a
/// spin: the lane its `poll` reported readable is emptied at the next arm, while
/// the others are re-armed without a read.
///
/// Proven by mutation: `RelayBackend::sleep` never noting a lane readable makes
/// the backend spin through its 300 ms wait (the CPU assertion fails).
#[test]
fn a_stale_wake_costs_a_backend_of_several_lanes_one_wake_up_not_a_spin() {
    let name = channel("stale-wake");
    let (server, handle) = relay_server(&name, 2);
    let mut backend = RelayBackend::attach_retrying(&name, IO_TIMEOUT).expect("backend attaches");
    assert_eq!(backend.lanes(), 2);
    assert!(handle.wait_attached(IO_TIMEOUT));
    // A first sleep arms both lanes.
    assert!(matches!(backend.recv(Some(Duration::from_millis(50))), Err(berth_server::RecvError::TimedOut)));
    let fifo = format!("/dev/shm/berth-ipc-wake.{name}.1.a2b.rx");
    let flags = rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC;
    let fd = rustix::fs::open(fifo.as_str(), flags, rustix::fs::Mode::empty()).expect("lane 1's wake FIFO");
    rustix::io::write(&fd, &1u64.to_ne_bytes()).unwrap();
    let before = thread_cpu();
    assert!(matches!(backend.recv(Some(Duration::from_millis(300))), Err(berth_server::RecvError::TimedOut)));
    let cpu = thread_cpu() - before;
    assert!(cpu < Duration::from_millis(100), "the backend used {cpu:?} of CPU in a 300 ms wait: it spins");
    drop(backend);
    server.shutdown(IO_TIMEOUT).unwrap();
}

/// A burst of 256 or more replies committed while the worker has taken its wake
/// back (`disarm_wake` in `data`) is pumped by `before_wait` with the watch still
/// armed; the pump yields at the budget and posts. The post must pump too: the flag
/// is down, so the backend's next commit writes no wake, and nothing else would.
/// The test's backend watches the reply ring's flag (the documented layout) and
/// commits 300 stale replies in the window, then the real one.
///
/// Proven by mutation: `posted` pumping only with the watch unarmed (as before the
/// take-back) fails it in the first rounds on both drivers, with 256 replies
/// dropped and no answer.
#[test]
fn a_burst_pumped_before_the_wait_loses_no_reply() {
    use std::os::unix::fs::FileExt;
    let name = channel("yieldarmed");
    let (server, handle) = relay_server(&name, 1);
    let lane = format!("{name}.0");
    let (duplex, _) = attach_raw(&name, &handle);
    let (mut tx, mut rx) = duplex.split();
    // The reply ring's receiver flag (layout offset 384; 2 = WAIT_FD).
    let ring = std::fs::File::open(format!("/dev/shm/berth-ipc.{lane}.b2a")).unwrap();
    let flag = move || {
        let mut w = [0u8; 4];
        ring.read_exact_at(&mut w, 384).unwrap();
        u32::from_le_bytes(w)
    };
    let mut s = client(server.local_addr());
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut caught = 0;
    for round in 0..30 {
        // Wait until the worker sleeps, armed.
        let t0 = std::time::Instant::now();
        while flag() != 2 {
            assert!(t0.elapsed() < Duration::from_secs(5), "round {round}: never armed");
            thread::yield_now();
        }
        let p = payload(round, 0, MAX_FRAME);
        let writer = {
            let mut w = s.try_clone().unwrap();
            let f = frame(&p);
            thread::spawn(move || w.write_all(&f).unwrap())
        };
        // The take-back in `data` (before the 64 KiB copy): commit 300 stale
        // replies then, each with the flag down (no wake written).
        let mut early = None;
        loop {
            if flag() == 0 {
                caught += 1;
                for n in 1..=300u64 {
                    tx.try_send(&record((n << 40) | 0xdead, b"")).unwrap();
                }
                break;
            }
            if let Ok(g) = rx.try_recv() {
                early = Some(g.to_vec());
                break;
            }
        }
        let request = match early {
            Some(r) => r,
            None => rx.recv_vec(Some(IO_TIMEOUT)).unwrap(),
        };
        let id = u64::from_le_bytes(request[..8].try_into().unwrap());
        tx.send(&record(id, &request[12..]), Some(IO_TIMEOUT)).unwrap();
        writer.join().unwrap();
        let got = read_frame(&mut s)
            .unwrap_or_else(|e| panic!("round {round} (caught {caught}): no reply ({e}); {}", handle.stats()));
        assert_eq!(got, p);
    }
    eprintln!("caught the window in {caught} of 30 rounds; {}", handle.stats());
    drop(s);
    drop((tx, rx));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// Runs this test binary again for test `name` alone, in a process without the
/// berth-ipc watcher thread (`BERTH_IPC_WATCHER=off`), and checks that it ran and
/// passed. Returns false in that child, where the test body runs.
fn in_a_process_without_the_watcher(name: &str) -> bool {
    if std::env::var_os("BERTH_IPC_WATCHER").is_some_and(|v| v == "off") {
        return false;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1"])
        .env("BERTH_IPC_WATCHER", "off")
        .output()
        .expect("the child run starts");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("1 passed"),
        "the child run failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Starts this test binary's `child` test in a process of its own with `var` set to
/// `value` (and the watcher left on), and waits for it to print `ready`.
fn start_child(child: &str, var: &str, value: &str) -> std::process::Child {
    let mut proc = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", child, "--nocapture", "--test-threads=1"])
        .env(var, value)
        .env_remove("BERTH_IPC_WATCHER")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("child starts");
    let mut out = io::BufReader::new(proc.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        assert!(io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "{child} ended before it was ready");
    }
    proc
}

/// The child half of `without_a_watcher_the_relay_still_sees_its_backend_killed`:
/// with `BERTH_RELAY_TEST_BACKEND` set, attaches to that relay, says so and echoes
/// until it is killed; without it, does nothing.
#[test]
fn child_attaches_and_echoes() {
    let Ok(name) = std::env::var("BERTH_RELAY_TEST_BACKEND") else { return };
    let mut backend = RelayBackend::attach_retrying(&name, IO_TIMEOUT).expect("child attaches");
    println!("ready");
    io::stdout().flush().unwrap();
    while backend.echo_one(None).is_ok() {}
}

/// The child half of `without_a_watcher_a_backend_still_sees_its_relay_killed`: with
/// `BERTH_RELAY_TEST_RELAY` set, runs a relay of two workers on that channel, says
/// so and waits to be killed; without it, does nothing.
#[test]
fn child_runs_a_relay() {
    let Ok(name) = std::env::var("BERTH_RELAY_TEST_RELAY") else { return };
    let (_server, _handle) = relay_server(&name, 2);
    eventually("the lanes are created", || lanes_exist(&name, 2));
    println!("ready");
    io::stdout().flush().unwrap();
    thread::sleep(Duration::from_secs(60));
}

/// A relay whose process has no watcher thread (turned off here; a forked child or
/// a watcher that stopped are the same case) is told of nothing when its backend
/// is killed: its workers' waits on the lane are bounded by `Receiver::max_sleep`,
/// so it still looks, finds the backend dead and lets it go.
///
/// Proven by mutation: the relay arming its lane's watch with no deadline when
/// attached (ignoring `max_sleep`) never notices, and `wait_detached` fails.
#[test]
fn without_a_watcher_the_relay_still_sees_its_backend_killed() {
    if in_a_process_without_the_watcher("without_a_watcher_the_relay_still_sees_its_backend_killed") {
        return;
    }
    let name = channel("nowatch-relay");
    let (server, handle) = relay_server(&name, 1);
    eventually("the lane is created", || lanes_exist(&name, 1));
    let mut backend = start_child("child_attaches_and_echoes", "BERTH_RELAY_TEST_BACKEND", &name);
    assert!(handle.wait_attached(IO_TIMEOUT), "relay saw the backend's hello");
    let mut s = client(server.local_addr());
    s.write_all(&frame(b"before the kill")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), b"before the kill");
    backend.kill().unwrap();
    backend.wait().unwrap();
    assert!(handle.wait_detached(Duration::from_secs(5)), "the relay never noticed its backend's death");
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// The same for a backend of several lanes, which waits on their wake descriptors
/// in `poll`: with no watcher in its process, the poll is bounded by the lanes'
/// `max_sleep`, so a relay killed while the backend waits turns its wait into an
/// error instead of an endless sleep.
///
/// Proven by mutation: `RelayBackend::wait` polling with no timeout never returns
/// (the 5 s wait below fails).
#[test]
fn without_a_watcher_a_backend_still_sees_its_relay_killed() {
    if in_a_process_without_the_watcher("without_a_watcher_a_backend_still_sees_its_relay_killed") {
        return;
    }
    let name = channel("nowatch-backend");
    let mut relay = start_child("child_runs_a_relay", "BERTH_RELAY_TEST_RELAY", &name);
    let mut backend = RelayBackend::attach_retrying(&name, IO_TIMEOUT).expect("backend attaches");
    assert_eq!(backend.lanes(), 2);
    let (done, ended) = std::sync::mpsc::channel();
    let waiter = thread::spawn(move || {
        let _ = done.send(backend.echo_one(None));
    });
    // Asleep in its wait before the kill, most likely; after it, the same is checked.
    thread::sleep(Duration::from_millis(200));
    relay.kill().unwrap();
    relay.wait().unwrap();
    let got = ended.recv_timeout(Duration::from_secs(5)).expect("the backend never noticed its relay's death");
    assert!(
        matches!(got, Err(berth_server::EchoError::Recv(berth_ipc::RecvError::PeerDead))),
        "the backend's wait ended with {got:?}"
    );
    waiter.join().unwrap();
}
