//! The server's life and limits: slow clients, the connection cap, graceful shutdown
//! with a reply in flight, a file truncated mid-send, and the echo service.

mod common;

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use berth_server::{Echo, StaticFiles};
use common::*;

/// How long a trickling client may stay open under a 300 ms header timeout: far
/// beyond the timeout (a loaded machine), far below forever.
const TRICKLE_BOUND: Duration = Duration::from_secs(5);

/// Proven by mutation: the header deadline restarting at each read
/// (`request_started.get_or_insert(now)` replaced by `now`) fails it (still open
/// after `TRICKLE_BOUND`).
#[test]
fn slowloris_is_closed_by_the_header_timeout() {
    let dir = TempDir::new("slow");
    dir.file("a.txt", b"alpha");
    let server =
        builder().header_timeout(Duration::from_millis(300)).serve(StaticFiles::new(dir.path()).unwrap()).unwrap();
    let mut s = client(server.local_addr());
    s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n").unwrap();
    // Trickle a header byte at a time, paced by short read timeouts: bytes keep
    // arriving, but the deadline is fixed at the request's first byte.
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    // The only way out of this loop is the server closing the connection; a
    // deadline that moved with each byte would keep it open until the bound fails.
    loop {
        assert!(start.elapsed() < TRICKLE_BOUND, "a slow client was still open after {TRICKLE_BOUND:?}");
        if s.write_all(b"X").is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => panic!("no reply expected, got {:?}", &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(_) => {} // read timeout: trickle on
        }
    }
    eventually("the timeout to be counted", || server.metrics().timeouts >= 1);

    // A connection that sends nothing at all is closed too.
    let mut idle = client(server.local_addr());
    assert!(closed_by_peer(&mut idle));
    // Others are served meanwhile and after.
    assert_eq!(get(server.local_addr(), &req("GET", "/a.txt", "")).body, b"alpha");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn keep_alive_idle_timeout_closes() {
    let dir = TempDir::new("idle");
    dir.file("a.txt", b"alpha");
    let server =
        builder().idle_timeout(Duration::from_millis(200)).serve(StaticFiles::new(dir.path()).unwrap()).unwrap();
    let mut s = client(server.local_addr());
    assert_eq!(exchange(&mut s, &req("GET", "/a.txt", "")).body, b"alpha");
    assert!(closed_by_peer(&mut s), "an idle kept-alive connection is closed");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn max_connections_refuses_cleanly() {
    let dir = TempDir::new("limit");
    dir.file("a.txt", b"alpha");
    let server = builder().max_connections(2).serve(StaticFiles::new(dir.path()).unwrap()).unwrap();
    let addr = server.local_addr();
    let mut a = client(addr);
    let mut b = client(addr);
    assert_eq!(exchange(&mut a, &req("GET", "/a.txt", "")).body, b"alpha");
    assert_eq!(exchange(&mut b, &req("GET", "/a.txt", "")).body, b"alpha");

    // The third is accepted and closed at once: EOF or reset, never a hang or a reply.
    let mut c = client(addr);
    let _ = c.write_all(req("GET", "/a.txt", "").as_bytes());
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("over the limit: expected a close, got {other:?}"),
    }
    eventually("the refusal to be counted", || server.metrics().connections_refused >= 1);

    // The two admitted still work; once one leaves, a newcomer is served.
    assert_eq!(exchange(&mut a, &req("GET", "/a.txt", "")).body, b"alpha");
    drop(a);
    eventually("the closed connection to free its place", || server.metrics().connections_open == 1);
    assert_eq!(get(addr, &req("GET", "/a.txt", "")).body, b"alpha");
    assert_eq!(exchange(&mut b, &req("GET", "/a.txt", "")).body, b"alpha");
    drop(b);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn graceful_shutdown_finishes_the_reply_in_flight() {
    let dir = TempDir::new("drain");
    let data = pattern(24 << 20);
    dir.file("big.bin", &data);
    dir.file("a.txt", b"alpha");
    let server = serve_dir(dir.path());
    let addr = server.local_addr();

    let mut idle = client(addr);
    assert_eq!(exchange(&mut idle, &req("GET", "/a.txt", "")).body, b"alpha");
    let mut s = client(addr);
    s.write_all(req("GET", "/big.bin", "").as_bytes()).unwrap();
    let head = read_head(&mut s).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"));
    let mut first = vec![0u8; 1 << 20];
    s.read_exact(&mut first).unwrap();

    // The client is not reading: the body is mid-send when the shutdown starts.
    let handle = server.shutdown_handle();
    handle.shutdown(Duration::from_secs(30));
    let (tx, rx) = std::sync::mpsc::channel();
    let joiner = std::thread::spawn(move || tx.send(server.join()));

    // The idle connection is closed; the reply in flight completes byte for byte.
    assert!(closed_by_peer(&mut idle), "idle connection closed at shutdown");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(first.len() + rest.len(), data.len(), "the whole body, then EOF");
    assert!(first == data[..first.len()] && rest == data[first.len()..], "body bytes differ");
    rx.recv_timeout(IO_TIMEOUT).expect("workers stop after the drain").unwrap();
    let _ = joiner.join();
    // Nobody listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
    let m = handle.metrics();
    assert_eq!(m.connections_open, 0);
    assert_eq!(m.buffers.in_use, 0);
}

/// A reply the client stops reading does not hold the shutdown past its grace:
/// the server closes it and `shutdown` returns. Run on another thread so that an
/// ignored grace fails the test instead of hanging it.
///
/// Proven by mutation: the worker's "grace period over" branch never taken fails
/// it (`shutdown` has not returned after `IO_TIMEOUT`).
#[test]
fn shutdown_grace_ends_a_stalled_reply() {
    let dir = TempDir::new("grace");
    dir.file("big.bin", &pattern(24 << 20));
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    s.write_all(req("GET", "/big.bin", "").as_bytes()).unwrap();
    read_head(&mut s).unwrap();
    // The client never reads on: the grace period runs out and the server closes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(server.shutdown(Duration::from_millis(200))));
    rx.recv_timeout(IO_TIMEOUT).expect("shutdown ignored its 200 ms grace").unwrap();
    assert!(closed_by_peer(&mut s), "the stalled reply's connection is closed");
}

/// A reply the client stops reading is ended by the write timeout, without any
/// shutdown: the connection is closed while the client is still not reading (so
/// the reply cannot have completed), and the server goes on serving others.
///
/// Proven by mutation: `Conns::write` not setting the deadline
/// (`write_timeout.map(..)` replaced by `None`) fails it.
#[test]
fn write_timeout_ends_a_stalled_reply() {
    let dir = TempDir::new("write-timeout");
    dir.file("big.bin", &pattern(24 << 20));
    dir.file("a.txt", b"alpha");
    let server =
        builder().write_timeout(Some(Duration::from_millis(300))).serve(StaticFiles::new(dir.path()).unwrap()).unwrap();
    let mut s = client(server.local_addr());
    s.write_all(req("GET", "/big.bin", "").as_bytes()).unwrap();
    assert!(read_head(&mut s).unwrap().starts_with("HTTP/1.1 200"));
    // Not reading: the socket buffers fill and the send stalls until the deadline.
    eventually("the stalled connection to be closed", || server.metrics().connections_open == 0);
    assert!(closed_by_peer(&mut s), "the stalled reply's connection is closed");
    assert_eq!(get(server.local_addr(), &req("GET", "/a.txt", "")).body, b"alpha");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn file_truncated_while_sent_closes_the_connection() {
    let dir = TempDir::new("trunc");
    let len = 32usize << 20;
    let path = dir.file("big.bin", &pattern(len));
    dir.file("a.txt", b"alpha");
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    s.write_all(req("GET", "/big.bin", "").as_bytes()).unwrap();
    let head = read_head(&mut s).unwrap();
    assert!(head.contains(&format!("Content-Length: {len}\r\n")));
    // Sockets hold a few MiB at most; the rest is still to be sent.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1 << 20).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close after truncation: {e}"),
        }
    }
    assert!(got < len, "a truncated file cannot deliver its promised length");
    // The server is unharmed.
    assert_eq!(get(server.local_addr(), &req("GET", "/a.txt", "")).body, b"alpha");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn file_deleted_while_sent_still_delivers_every_byte() {
    // An open file outlives its directory entry: deleting it mid-send must neither
    // cut the reply short nor hang it, and the next request sees a 404.
    let dir = TempDir::new("deleted");
    let len = 16usize << 20;
    let data = pattern(len);
    let path = dir.file("big.bin", &data);
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    s.write_all(req("GET", "/big.bin", "").as_bytes()).unwrap();
    let head = read_head(&mut s).unwrap();
    assert!(head.contains(&format!("Content-Length: {len}\r\n")));
    std::fs::remove_file(&path).unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    assert!(body == data, "bytes of a deleted file changed in flight");
    assert!(get(server.local_addr(), &req("GET", "/big.bin", "")).head.starts_with("HTTP/1.1 404"));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn echo_service_round_trips() {
    let server = builder().serve(Echo).unwrap();
    let mut clients: Vec<_> = (0..4).map(|_| client(server.local_addr())).collect();
    for round in 0..50u32 {
        for (i, c) in clients.iter_mut().enumerate() {
            let msg = format!("round {round} client {i} {}", "z".repeat(round as usize * 100));
            c.write_all(msg.as_bytes()).unwrap();
            let mut got = vec![0u8; msg.len()];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, msg.as_bytes());
        }
    }
    // Counters are published after each batch of completions: wait for the last one.
    eventually("bytes out to match bytes in", || {
        let m = server.metrics();
        m.bytes_in == m.bytes_out && m.connections_open == 4
    });
    drop(clients);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// Workers share one arena, and on io_uring each lends part of it to its kernel
/// buffer ring: with four workers and a small arena the rings once took every
/// segment (a quarter each), and every reply failed for want of one.
#[test]
fn many_workers_on_a_small_arena_still_answer() {
    let dir = TempDir::new("small-arena");
    dir.file("a.txt", b"alpha");
    let server =
        builder().workers(4).segment_count(256).serve(StaticFiles::new(dir.path()).unwrap()).expect("server starts");
    for i in 0..16 {
        let r = get(server.local_addr(), &req("GET", "/a.txt", ""));
        assert_eq!((r.status, &r.body[..]), (200, &b"alpha"[..]), "connection {i}");
    }
    let high = server.metrics().buffers.high_water;
    assert!(high < 256, "the buffer rings and replies took all {high} segments");
    server.shutdown(Duration::from_secs(5)).unwrap();
}
