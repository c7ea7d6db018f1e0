//! The request path allocates nothing: after a warm-up, thousands of keep-alive
//! requests to `StaticFiles` (a small file, a larger one by sendfile, 304s by date and
//! by ETag, a 412, 206s with and without If-Range, the fallback for a missing path,
//! the not-found page for a hidden one, a precompressed sidecar whole and by range,
//! a multipart/byteranges 206 and a list of 300 ranges (the whole file), all with
//! the access log on (its logger thread counted too),
//! and an OPTIONS; every 200 and 206 with its ETag, Cache-Control and an added header), echo round trips and
//! relay round trips (TCP -> IPC -> backend -> back) make zero heap allocations in
//! the whole process — the server's workers and the relay's backend thread included.
//!
//! The count is process-wide ([`berth_testkit::total_allocations`]), so this binary
//! holds one test, and the client loops below allocate nothing themselves: requests
//! are prepared before the count starts and responses are read into a fixed buffer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use berth_server::{AccessLog, Echo, IpcRelay, LogTarget, RelayBackend, RelayConfig, StaticFiles};
use berth_testkit::{CountingAllocator, total_allocations};

use common::*;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const WARM_UP: usize = 200;
const ROUNDS: usize = 2000;

/// Sends `request` and reads exactly `expect` response bytes into `buf`.
fn round_trip(s: &mut TcpStream, request: &[u8], buf: &mut [u8], expect: usize) {
    s.write_all(request).expect("send");
    s.read_exact(&mut buf[..expect]).expect("response");
}

/// Allocations in the whole process while `rounds` of `f` run, after a warm-up.
fn allocations_over(mut f: impl FnMut()) -> u64 {
    for _ in 0..WARM_UP {
        f();
    }
    let before = total_allocations();
    for _ in 0..ROUNDS {
        f();
    }
    total_allocations() - before
}

/// The full length of the response to `request` (head and body), measured once.
fn response_len(s: &mut TcpStream, request: &str) -> usize {
    let r = exchange(s, request);
    r.head.len() + if request.starts_with("HEAD ") || r.status == 304 { 0 } else { r.body.len() }
}

/// With the open-file cache on (`cache`, the default: hits, and entries reopened
/// when they outlive a short `valid`) and off (every request opens its file).
fn static_files(cache: bool) {
    let dir = TempDir::new("alloc");
    dir.file("small.txt", &pattern(1024));
    dir.file("big.bin", &pattern(256 * 1024));
    dir.file("app.js", &pattern(4096));
    dir.file("app.js.br", &pattern(1000));
    let (log, log_handle) = AccessLog::start(LogTarget::File(dir.path().join("access.log"))).unwrap();
    let files = StaticFiles::new(dir.path())
        .unwrap()
        .access_log(log)
        .precompressed(true)
        .not_found("small.txt")
        .unwrap()
        .fallback("app.js")
        .unwrap()
        .cache_control("public, max-age=60")
        .unwrap()
        .header("X-Content-Type-Options", "nosniff")
        .unwrap()
        .open_file_cache(if cache { 64 } else { 0 }, Duration::from_millis(100));
    let server = builder().serve(files).expect("server starts");
    let mut s = client(server.local_addr());
    let first = exchange(&mut s, &req("GET", "/small.txt", ""));
    let since = first.header("last-modified").unwrap().to_owned();
    let etag = first.header("etag").expect("an ETag").to_owned();
    let big_etag = exchange(&mut s, &req("HEAD", "/big.bin", "")).header("etag").expect("an ETag").to_owned();
    let requests = [
        req("GET", "/small.txt", ""),
        req("GET", "/big.bin", ""),
        req("HEAD", "/big.bin", ""),
        req("GET", "/small.txt", &format!("If-Modified-Since: {since}\r\n")),
        req("GET", "/big.bin", "Range: bytes=1000-70999\r\n"),
        req("GET", "/small.txt", &format!("If-None-Match: \"x\", W/{etag}\r\n")),
        req("GET", "/small.txt", "If-Match: \"stale\"\r\n"),
        req("GET", "/big.bin", &format!("Range: bytes=1000-70999\r\nIf-Range: {big_etag}\r\n")),
        req("GET", "/missing", ""),
        req("GET", "/.hidden", ""),
        req("GET", "/app.js", "Accept-Encoding: gzip;q=0.5, br, zstd;q=0\r\n"),
        req("GET", "/app.js", "Accept-Encoding: br\r\nRange: bytes=10-99\r\n"),
        req("GET", "/big.bin", "Range: bytes=0-99,5000-70999,-1000\r\n"),
        req("GET", "/small.txt", &format!("Range: bytes={}\r\n", "0-0,".repeat(300))),
        req("OPTIONS", "*", ""),
        req("GET", "/%2e%2e/etc/passwd", ""),
    ];
    let lens: Vec<usize> = requests.iter().map(|r| response_len(&mut s, r)).collect();
    let mut buf = vec![0u8; 512 * 1024];
    for (request, &len) in requests.iter().zip(&lens) {
        let n = allocations_over(|| round_trip(&mut s, request.as_bytes(), &mut buf, len));
        let line = request.lines().next().unwrap();
        assert_eq!(n, 0, "{n} allocations over {ROUNDS} requests of `{line}` (cache {cache})");
    }
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
    let dropped = log_handle.dropped() as usize;
    log_handle.finish();
    let lines = std::fs::read_to_string(dir.path().join("access.log")).unwrap().lines().count();
    // A full queue drops records rather than wait: written and dropped add up.
    assert!(lines + dropped >= requests.len() * (WARM_UP + ROUNDS), "{lines} lines logged, {dropped} dropped");
}

fn echo() {
    let server = builder().serve(Echo).expect("server starts");
    let mut s = client(server.local_addr());
    let msg = pattern(1000);
    let mut buf = vec![0u8; msg.len()];
    let n = allocations_over(|| {
        round_trip(&mut s, &msg, &mut buf, msg.len());
        assert!(buf == msg);
    });
    assert_eq!(n, 0, "{n} allocations over {ROUNDS} echo round trips");
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

fn relay() {
    let channel = format!("alloc-test-{}", std::process::id());
    let relay = IpcRelay::start(RelayConfig::new(&channel).max_frame(4096)).expect("relay starts");
    let handle = relay.handle();
    // Two workers, so the backend serves two lanes (its poll(2) path) and the
    // worker that gets the connection sleeps on its lane's wake descriptor.
    let server = builder().workers(2).serve(relay).expect("server starts");
    let mut backend = RelayBackend::attach_retrying(&channel, Duration::from_secs(10)).expect("backend attaches");
    assert_eq!(backend.lanes(), 2);
    assert!(handle.wait_attached(Duration::from_secs(10)));
    let backend = std::thread::spawn(move || while backend.echo_one(Some(Duration::from_secs(30))).is_ok() {});
    let mut s = client(server.local_addr());
    let payload = pattern(300);
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    let mut buf = vec![0u8; frame.len()];
    let n = allocations_over(|| {
        round_trip(&mut s, &frame, &mut buf, frame.len());
        assert!(buf == frame);
    });
    assert_eq!(n, 0, "{n} allocations over {ROUNDS} relay round trips");
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
    backend.join().unwrap();
}

#[test]
fn request_paths_allocate_nothing() {
    static_files(true);
    static_files(false);
    echo();
    relay();
}
