//! Streamed replies ([`Reply::stream`], [`Service::more`]) and the directory
//! listings of `StaticFiles::list` built on them: content, order, escaping, hidden
//! entries, HEAD, HTTP/1.0, a client that leaves mid-stream, the write timeout,
//! shutdown, and memory that does not grow with the directory.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_server::{Driver, Reply, Service, StaticFiles};

use common::*;

// ---- a streaming service --------------------------------------------------------

/// Answers `N\n` (a decimal count, or `0` for "forever") with the lines
/// `0\n`..`N-1\n`, streamed a segment at a time; counts segments and disconnects.
#[derive(Default)]
struct Lines {
    segments: Arc<AtomicUsize>,
    disconnects: Arc<AtomicUsize>,
}

struct LineConn {
    next: u64,
    end: u64,
}

impl Lines {
    fn fill(&self, c: &mut LineConn, reply: &mut Reply<'_>) {
        self.segments.fetch_add(1, Ordering::Relaxed);
        while (c.end == 0 || c.next < c.end) && reply.remaining() >= 21 {
            let _ = writeln!(reply, "{}", c.next);
            c.next += 1;
        }
        if c.end == 0 || c.next < c.end {
            reply.stream();
        }
    }
}

impl Service for Lines {
    type Conn = LineConn;

    fn connect(&self, _peer: Option<std::net::SocketAddr>) -> LineConn {
        LineConn { next: 0, end: 0 }
    }

    fn data(&self, c: &mut LineConn, input: &[u8], reply: &mut Reply<'_>) -> usize {
        let Some(nl) = input.iter().position(|&b| b == b'\n') else { return 0 };
        let n = std::str::from_utf8(&input[..nl]).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1);
        *c = LineConn { next: 0, end: n };
        self.fill(c, reply);
        nl + 1
    }

    fn more(&self, c: &mut LineConn, reply: &mut Reply<'_>) {
        self.fill(c, reply);
    }

    fn disconnect(&self, _c: LineConn) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
    }
}

fn expected_lines(n: u64) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        writeln!(v, "{i}").unwrap();
    }
    v
}

#[test]
fn a_stream_is_sent_segment_by_segment_and_the_connection_goes_on() {
    let lines = Lines::default();
    let segments = lines.segments.clone();
    let server = builder().segment_size(4096).serve(lines).unwrap();
    let mut s = client(server.local_addr());
    for n in [100_000u64, 3] {
        s.write_all(format!("{n}\n").as_bytes()).unwrap();
        let want = expected_lines(n);
        let mut got = vec![0; want.len()];
        s.read_exact(&mut got).unwrap();
        assert!(got == want, "stream of {n} lines differs");
    }
    // 100,000 lines of up to 6 bytes in 4 KiB segments: many segments.
    assert!(segments.load(Ordering::Relaxed) > 100, "{} segments", segments.load(Ordering::Relaxed));
    eventually("a stream counted as one reply", || server.metrics().replies == 2);
    let handle = server.shutdown_handle();
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(handle.metrics().buffers.in_use, 0, "buffers returned");
}

/// A service whose streamed replies are empty: `data` asks for a stream without
/// writing and `more` ends it with nothing. Counts the requests it saw.
#[derive(Default)]
struct Silent {
    seen: Arc<AtomicUsize>,
}

impl Service for Silent {
    type Conn = ();

    fn connect(&self, _peer: Option<std::net::SocketAddr>) {}

    fn data(&self, _c: &mut (), input: &[u8], reply: &mut Reply<'_>) -> usize {
        let Some(nl) = input.iter().position(|&b| b == b'\n') else { return 0 };
        self.seen.fetch_add(1, Ordering::Relaxed);
        reply.stream();
        nl + 1
    }

    fn more(&self, _c: &mut (), _reply: &mut Reply<'_>) {}
}

/// Thousands of pipelined requests whose replies end at once (empty streams) are
/// handled one after another, not one inside the other: a worker's stack does not
/// grow with them (it overflowed, killing the server, at 1,000).
#[test]
fn pipelined_empty_streams_are_handled_in_turn_not_nested() {
    let silent = Silent::default();
    let seen = silent.seen.clone();
    let server = builder().serve(silent).unwrap();
    let mut s = client(server.local_addr());
    let burst = b"e\n".repeat(30_000);
    s.write_all(&burst).unwrap();
    eventually("every pipelined request handled", || seen.load(Ordering::Relaxed) == 30_000);
    // Still serving: another connection is handled too.
    let mut t = client(server.local_addr());
    t.write_all(b"e\n").unwrap();
    eventually("a second connection handled", || seen.load(Ordering::Relaxed) == 30_001);
    drop((s, t));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_client_that_leaves_mid_stream_ends_it_and_frees_everything() {
    let lines = Lines::default();
    let disconnects = lines.disconnects.clone();
    let server = builder().segment_size(4096).serve(lines).unwrap();
    let mut s = client(server.local_addr());
    s.write_all(b"0\n").unwrap(); // forever
    let mut buf = [0u8; 64 * 1024];
    s.read_exact(&mut buf).unwrap();
    drop(s);
    eventually("the stream's connection closed", || server.metrics().connections_open == 0);
    assert_eq!(disconnects.load(Ordering::Relaxed), 1);
    let handle = server.shutdown_handle();
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(handle.metrics().buffers.in_use, 0, "buffers returned");
}

#[test]
fn the_write_timeout_ends_a_stream_nobody_reads() {
    let lines = Lines::default();
    let disconnects = lines.disconnects.clone();
    let server = builder().segment_size(4096).write_timeout(Some(Duration::from_millis(200))).serve(lines).unwrap();
    let mut s = client(server.local_addr());
    s.write_all(b"0\n").unwrap(); // forever, and never read
    eventually("the write timeout closed the stream", || disconnects.load(Ordering::Relaxed) == 1);
    assert_eq!(server.metrics().connections_open, 0);
    drop(s);
    let handle = server.shutdown_handle();
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(handle.metrics().buffers.in_use, 0, "buffers returned");
}

#[test]
fn shutdown_ends_a_stream_after_the_grace_period() {
    let lines = Lines::default();
    let disconnects = lines.disconnects.clone();
    let server = builder().segment_size(4096).write_timeout(None).serve(lines).unwrap();
    let mut s = client(server.local_addr());
    s.write_all(b"0\n").unwrap();
    let mut buf = [0u8; 4096];
    s.read_exact(&mut buf).unwrap();
    let handle = server.shutdown_handle();
    let started = Instant::now();
    server.shutdown(Duration::from_millis(300)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(disconnects.load(Ordering::Relaxed), 1);
    assert_eq!(handle.metrics().buffers.in_use, 0, "buffers returned");
    drop(s);
}

/// `wait\n` is answered with a stream that yields (writes nothing, asks for more)
/// until some connection sent `go\n`, then `done\n`; `go\n` gets `ok\n`.
#[derive(Default)]
struct Yielder {
    go: std::sync::atomic::AtomicBool,
    yields: AtomicUsize,
}

impl Service for Yielder {
    type Conn = ();

    fn connect(&self, _peer: Option<std::net::SocketAddr>) {}

    fn data(&self, _c: &mut (), input: &[u8], reply: &mut Reply<'_>) -> usize {
        let Some(nl) = input.iter().position(|&b| b == b'\n') else { return 0 };
        if &input[..nl] == b"go" {
            self.go.store(true, Ordering::Relaxed);
            let _ = reply.write_bytes(b"ok\n");
        } else {
            self.more(&mut (), reply);
        }
        nl + 1
    }

    fn more(&self, _c: &mut (), reply: &mut Reply<'_>) {
        if self.go.load(Ordering::Relaxed) {
            let _ = reply.write_bytes(b"done\n");
        } else {
            self.yields.fetch_add(1, Ordering::Relaxed);
            reply.stream();
        }
    }
}

#[test]
fn a_stream_that_yields_lets_the_worker_serve_other_connections() {
    let server = builder().serve(Yielder::default()).unwrap();
    let mut waiting = client(server.local_addr());
    waiting.write_all(b"wait\n").unwrap();
    // The same (only) worker still answers another connection meanwhile.
    let mut other = client(server.local_addr());
    other.write_all(b"go\n").unwrap();
    let mut ok = [0u8; 3];
    other.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok\n");
    let mut done = [0u8; 5];
    waiting.read_exact(&mut done).unwrap();
    assert_eq!(&done, b"done\n");
    let handle = server.shutdown_handle();
    drop((waiting, other));
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(handle.metrics().buffers.in_use, 0, "buffers returned");
}

// ---- listings -------------------------------------------------------------------

fn serve_list(root: &std::path::Path, hidden: bool) -> berth_server::Server {
    builder().serve(StaticFiles::new(root).unwrap().list(true).hidden(hidden)).expect("server starts")
}

/// Reads a chunked body to its last chunk; `None` if the framing is broken.
fn read_chunked(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            s.read_exact(&mut b)?;
            line.push(b[0]);
            assert!(line.len() < 64, "runaway chunk size line");
        }
        let size = usize::from_str_radix(std::str::from_utf8(&line[..line.len() - 2]).unwrap(), 16)
            .map_err(|e| io::Error::other(format!("chunk size {line:?}: {e}")))?;
        let mut chunk = vec![0; size + 2];
        s.read_exact(&mut chunk)?;
        assert_eq!(&chunk[size..], b"\r\n", "chunk ends with CRLF");
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// GETs `path` on `s` (keep-alive) and returns the head and the chunked body.
fn list(s: &mut TcpStream, path: &str) -> (String, String) {
    s.write_all(req("GET", path, "").as_bytes()).unwrap();
    let head = read_head(s).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {head}");
    let body = read_chunked(s).unwrap();
    (head, String::from_utf8(body).expect("a listing is UTF-8"))
}

/// The names linked from a listing, in order (the hrefs, still encoded).
fn hrefs(page: &str) -> Vec<&str> {
    page.split("<a href=\"").skip(1).map(|rest| &rest[..rest.find('"').unwrap()]).collect()
}

fn tree() -> TempDir {
    let dir = TempDir::new("listing");
    dir.file("b.txt", b"bb");
    dir.file("a.txt", b"a");
    dir.file("C.txt", b"ccc");
    dir.file("zdir/x", b"x");
    dir.file("adir/y", b"y");
    dir.file(".env", b"SECRET");
    dir.file(".hiddendir/z", b"z");
    dir.file("withindex/index.html", b"<p>index</p>");
    dir
}

#[test]
fn a_listing_has_directories_first_each_group_sorted_with_sizes_and_dates() {
    let dir = tree();
    let server = serve_list(dir.path(), false);
    let mut s = client(server.local_addr());
    let (head, page) = list(&mut s, "/");
    for h in ["Content-Type: text/html; charset=utf-8", "Transfer-Encoding: chunked", "Cache-Control: no-cache"] {
        assert!(head.contains(h), "{h}: {head}");
    }
    assert!(!head.contains("ETag") && !head.contains("Content-Length"), "{head}");
    assert_eq!(hrefs(&page), ["./adir/", "./withindex/", "./zdir/", "./C.txt", "./a.txt", "./b.txt"], "{page}");
    assert!(page.contains("<title>Index of /</title>"), "{page}");
    assert!(!page.contains("../"), "no parent link at the root: {page}");
    assert!(page.contains(">b.txt</a></td><td>2</td><td>"), "size: {page}");
    assert!(page.contains(" GMT</td>"), "date: {page}");
    assert!(page.ends_with("</table>\n</body>\n</html>\n"), "{page}");

    // Keep-alive: the next request on the same connection.
    let (_, sub) = list(&mut s, "/adir/");
    assert_eq!(hrefs(&sub), ["../", "./y"], "{sub}");
    assert!(sub.contains("<title>Index of /adir/</title>"), "{sub}");
    // An index file wins over the listing.
    let r = exchange(&mut s, &req("GET", "/withindex/", ""));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"<p>index</p>"[..]));
    // Without the slash: the redirect, as for any directory.
    let r = exchange(&mut s, &req("GET", "/adir", ""));
    assert_eq!(r.status, 301);
}

#[test]
fn hidden_entries_are_listed_only_when_hidden_files_are_served() {
    let dir = tree();
    let server = serve_list(dir.path(), false);
    let (_, page) = list(&mut client(server.local_addr()), "/");
    assert!(!page.contains(".env") && !page.contains(".hiddendir"), "{page}");
    // A hidden directory is not listed either: a 404.
    assert_eq!(get(server.local_addr(), &req("GET", "/.hiddendir/", "")).status, 404);

    let server = serve_list(dir.path(), true);
    let (_, page) = list(&mut client(server.local_addr()), "/");
    assert_eq!(hrefs(&page)[..2], ["./.hiddendir/", "./adir/"], "{page}");
    assert!(page.contains("./.env"), "{page}");
}

#[test]
fn without_list_a_directory_without_an_index_is_still_a_404() {
    let dir = tree();
    let server = serve_dir(dir.path());
    assert_eq!(get(server.local_addr(), &req("GET", "/adir/", "")).status, 404);
    assert_eq!(get(server.local_addr(), &req("GET", "/", "")).status, 404);
}

#[test]
fn names_are_escaped_in_the_text_and_percent_encoded_in_the_links() {
    let dir = TempDir::new("listing-escape");
    let names: [&[u8]; 5] =
        [b"<script>alert(1)<", b"q\"uo'te&amp", b"new\nline", b"bad\xff\xfe.txt", b"javascript:alert(1)"];
    for name in names {
        std::fs::write(dir.path().join(std::ffi::OsStr::from_bytes(name)), b"!").unwrap();
    }
    std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc", dir.path().join("out")).unwrap();
    // A link to the directory itself: listed as a directory, never recursed into.
    std::os::unix::fs::symlink(".", dir.path().join("self")).unwrap();
    std::os::unix::fs::symlink("javascript:alert(1)", dir.path().join("tofile")).unwrap();
    let server = serve_list(dir.path(), false);
    let mut s = client(server.local_addr());
    let (_, page) = list(&mut s, "/");
    let lower = page.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "raw markup in the page: {page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;"), "{page}");
    assert!(page.contains("q&quot;uo&#39;te&amp;amp"), "{page}");
    assert!(page.contains("new\u{FFFD}line") && !page.contains("new\nline"), "{page}");
    assert!(page.contains("bad\u{FFFD}\u{FFFD}.txt"), "{page}");
    // The links carry the raw bytes, percent-encoded, and no scheme.
    let links = hrefs(&page);
    for want in [
        "./%3Cscript%3Ealert%281%29%3C",
        "./q%22uo%27te%26amp",
        "./new%0Aline",
        "./bad%FF%FE.txt",
        "./javascript%3Aalert%281%29",
    ] {
        assert!(links.contains(&want), "{want} in {links:?}");
    }
    // A symlink loop and a link out of the root are entries without a size or date.
    assert!(page.contains("<a href=\"./loop\">loop</a></td><td></td><td></td>"), "{page}");
    assert!(page.contains("<a href=\"./out\">out</a></td><td></td><td></td>"), "{page}");
    // Links that stay inside are shown as what they point to.
    assert_eq!(hrefs(&page)[0], "./self/", "{page}");
    assert!(page.contains("<a href=\"./tofile\">tofile</a></td><td>1</td>"), "{page}");
    // Each link works: it names the file exactly.
    for link in ["/bad%FF%FE.txt", "/new%0Aline", "/%3Cscript%3Ealert%281%29%3C"] {
        let r = exchange(&mut s, &req("GET", link, ""));
        assert_eq!((r.status, r.body.as_slice()), (200, &b"!"[..]), "{link}");
    }
    // The title escapes the request path too.
    std::fs::create_dir(dir.path().join("<b>")).unwrap();
    let (_, sub) = list(&mut s, "/%3Cb%3E/");
    assert!(sub.contains("<title>Index of /&lt;b&gt;/</title>"), "{sub}");
}

#[test]
fn head_gets_the_headers_only_and_http10_a_body_ended_by_the_close() {
    let dir = tree();
    let server = serve_list(dir.path(), false);
    let mut s = client(server.local_addr());
    s.write_all(req("HEAD", "/", "").as_bytes()).unwrap();
    let head = read_head(&mut s).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("Transfer-Encoding: chunked"), "{head}");
    // Nothing after the head: the next response follows at once.
    let r = exchange(&mut s, &req("GET", "/a.txt", ""));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"a"[..]));

    let mut s = client(server.local_addr());
    s.write_all(b"GET /zdir/ HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let all = String::from_utf8(all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("Connection: close") && !head.contains("Transfer-Encoding"), "{head}");
    assert!(body.starts_with("<!DOCTYPE html>") && body.ends_with("</html>\n"), "{body}");
    assert_eq!(hrefs(body), ["../", "./x"]);
}

/// Creates `n` empty files named `f000000`.. in a fresh directory.
/// Listings beyond `max_listings` get a 503 with `Retry-After` while the others run
/// (each holds a window of names and a directory descriptor); a place comes back
/// when its listing's client leaves, and a HEAD needs none.
#[test]
fn listings_beyond_the_cap_are_refused_until_a_place_comes_back() {
    let dir = many(20_000);
    let files = StaticFiles::new(dir.path()).unwrap().list(true).max_listings(1);
    let server = builder().segment_size(4096).serve(files).unwrap();
    let addr = server.local_addr();
    // A client that asks for the listing and reads only its first bytes: the
    // listing stays running (its segments wait for the socket to drain).
    let mut slow = client(addr);
    slow.write_all(req("GET", "/", "").as_bytes()).unwrap();
    let mut first = [0u8; 512];
    slow.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..40]));
    // The head of a fresh listing request: its status and Retry-After.
    let ask = || {
        let mut s = client(addr);
        s.write_all(req("GET", "/", "Connection: close\r\n").as_bytes()).unwrap();
        let head = read_head(&mut s).unwrap();
        (head.split(' ').nth(1).unwrap().to_string(), head.contains("\r\nRetry-After: 1\r\n"))
    };
    assert_eq!(ask(), ("503".to_string(), true), "a second listing while the first runs");
    assert_eq!(get(addr, &req("HEAD", "/", "")).status, 200, "a HEAD streams nothing");
    drop(slow);
    eventually("the slow client's place given back", || ask().0 == "200");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

fn many(n: usize) -> TempDir {
    let dir = TempDir::new("listing-many");
    for i in 0..n {
        std::fs::File::create(dir.path().join(format!("f{i:06}"))).unwrap();
    }
    dir
}

/// Lists `dir` on a fresh server (one client); returns the page, the time taken
/// and the arena's high water mark.
fn list_fresh(dir: &TempDir, driver: Driver) -> (String, Duration, usize) {
    let server = builder().driver(driver).serve(StaticFiles::new(dir.path()).unwrap().list(true)).unwrap();
    let mut s = client(server.local_addr());
    let started = Instant::now();
    let (_, page) = list(&mut s, "/");
    let took = started.elapsed();
    let high = server.metrics().buffers.high_water;
    (page, took, high)
}

#[test]
fn a_listing_of_100000_entries_holds_no_more_buffers_than_one_of_ten() {
    let small = many(10);
    let big = many(100_000);
    // epoll: the arena holds only what connections lease (io_uring adds its buffer
    // ring, the same for both sizes).
    let (page, took_small, high_small) = list_fresh(&small, Driver::Epoll);
    assert_eq!(hrefs(&page).len(), 10);
    let (page, took, high_big) = list_fresh(&big, Driver::Epoll);
    let links = hrefs(&page);
    assert_eq!(links.len(), 100_000);
    assert!(links.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
    assert_eq!((links[0], links[99_999]), ("./f000000", "./f099999"));
    eprintln!(
        "listing: 10 entries in {took_small:?} (arena high water {high_small}), \
         100,000 entries ({} bytes) in {took:?} (arena high water {high_big})",
        page.len()
    );
    // (The high water counts the segments a worker's cache has touched, so it is not
    // 2 but the same small number for any directory.)
    assert_eq!(high_big, high_small, "the arena's high water does not grow with the directory");
}

#[test]
fn a_client_that_leaves_mid_listing_frees_everything() {
    let big = many(20_000);
    let server = serve_list(big.path(), false);
    let mut s = client(server.local_addr());
    s.write_all(req("GET", "/", "").as_bytes()).unwrap();
    let mut buf = [0u8; 16 * 1024];
    s.read_exact(&mut buf).unwrap();
    drop(s);
    eventually("the listing's connection closed", || server.metrics().connections_open == 0);
    let handle = server.shutdown_handle();
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(handle.metrics().buffers.in_use, 0, "buffers returned");
}

/// More entries than one pass holds (4096), directories and files mixed: every
/// directory before every file, each group in order, each entry once, across passes
/// and across the steps a pass is read in.
#[test]
fn a_listing_longer_than_one_window_stays_grouped_sorted_and_complete() {
    let dir = TempDir::new("listing-mixed");
    // Names that interleave: d-0007 (a directory) sorts between f-0006 and f-0008.
    for i in 0..9000 {
        let name = dir.path().join(format!("n-{i:05}"));
        if i % 3 == 0 {
            std::fs::create_dir(&name).unwrap();
        } else {
            std::fs::File::create(&name).unwrap();
        }
    }
    let server = serve_list(dir.path(), false);
    let (_, page) = list(&mut client(server.local_addr()), "/");
    let links = hrefs(&page);
    let dirs: Vec<String> = (0..9000).step_by(3).map(|i| format!("./n-{i:05}/")).collect();
    let files: Vec<String> = (0..9000).filter(|i| i % 3 != 0).map(|i| format!("./n-{i:05}")).collect();
    assert_eq!(links.len(), 9000);
    assert!(links[..3000].iter().zip(&dirs).all(|(a, b)| a == b), "directories first, in order");
    assert!(links[3000..].iter().zip(&files).all(|(a, b)| a == b), "then files, in order");
}

/// The access log's `%b` of a listing is the body bytes sent — every segment's,
/// chunk framing included — not the 0 of a reply whose length was not known up
/// front.
#[test]
fn the_access_log_counts_every_byte_of_a_listing() {
    let dir = many(2_000);
    let log_path = dir.path().join("access.log");
    let (log, handle) = berth_server::AccessLog::start(berth_server::LogTarget::File(log_path.clone())).unwrap();
    let files = StaticFiles::new(dir.path()).unwrap().list(true).access_log(log);
    let server = builder().segment_size(4096).serve(files).unwrap();
    let mut s = client(server.local_addr());
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let body_at = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    let body = raw.len() - body_at;
    assert!(body > 4 * 4096, "a listing of {body} bytes fits one segment");
    let mut s = client(server.local_addr());
    s.write_all(req("GET", "/", "").as_bytes()).unwrap();
    let head = read_head(&mut s).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let chunked = read_chunked(&mut s).unwrap();
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
    handle.finish();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let bytes: Vec<u64> = text
        .lines()
        .map(|line| {
            let after = &line[line.find("HTTP/1.").unwrap()..];
            after.split(' ').nth(2).unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(bytes.len(), 2, "{text}");
    assert_eq!(bytes[0], body as u64, "HTTP/1.0 listing: {text}");
    // Chunked: the page plus each chunk's size line and CRLFs, and the last chunk.
    assert!(bytes[1] > chunked.len() as u64, "HTTP/1.1 listing logged {} of a {}-byte page", bytes[1], chunked.len());
    assert!(
        bytes[1] < chunked.len() as u64 + 1024,
        "HTTP/1.1 listing logged {} of a {}-byte page",
        bytes[1],
        chunked.len()
    );
}
