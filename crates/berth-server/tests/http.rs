//! StaticFiles over real sockets: bodies byte for byte, keep-alive and pipelining,
//! conditional and range requests, and every refusal the issue lists.

mod common;

use std::io::Write;
use std::time::Duration;

use berth_server::{HeaderError, MAX_EXTRA_HEADERS, StaticFiles};
use common::*;

#[test]
fn get_and_head_every_byte() {
    let dir = TempDir::new("get");
    let sizes = [0usize, 1, 4095, 4096, 100_000, 3 << 20];
    for &n in &sizes {
        dir.file(&format!("f{n}.bin"), &pattern(n));
    }
    dir.file("page.html", b"<p>x</p>");
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    for &n in &sizes {
        let r = exchange(&mut s, &req("GET", &format!("/f{n}.bin"), ""));
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.content_length(), Some(n));
        assert!(r.body == pattern(n), "body of f{n}.bin differs");
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert!(r.header("last-modified").is_some());
        assert!(r.header("date").is_some());
        let h = exchange(&mut s, &req("HEAD", &format!("/f{n}.bin"), ""));
        assert_eq!(h.status, 200);
        assert_eq!(h.content_length(), Some(n));
    }
    let r = exchange(&mut s, &req("GET", "/page.html", ""));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.body, b"<p>x</p>");
    let r = exchange(&mut s, &req("GET", "/f1.bin?query=1", ""));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body, pattern(1));
    // A HEAD left no body behind: the connection is still in step.
    let r = exchange(&mut s, &req("GET", "/nope", ""));
    assert_eq!(r.status, 404);
    let m = server.metrics();
    assert_eq!(m.connections_accepted, 1);
    assert!(m.bytes_out as usize > sizes.iter().sum::<usize>());
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn pipelined_requests_in_one_write() {
    let dir = TempDir::new("pipe");
    dir.file("a.txt", b"alpha");
    dir.file("b.txt", b"bravo!");
    dir.file("big.bin", &pattern(200_000));
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    let mut batch = String::new();
    let order = ["a.txt", "b.txt", "big.bin", "a.txt", "missing", "b.txt"];
    for name in order {
        batch += &req("GET", &format!("/{name}"), "");
    }
    batch += &req("HEAD", "/a.txt", "");
    batch += &req("GET", "/b.txt", "");
    s.write_all(batch.as_bytes()).unwrap();
    for name in order {
        let r = read_response(&mut s, false).unwrap();
        match name {
            "a.txt" => assert_eq!(r.body, b"alpha"),
            "b.txt" => assert_eq!(r.body, b"bravo!"),
            "big.bin" => assert!(r.body == pattern(200_000)),
            _ => assert_eq!(r.status, 404),
        }
    }
    let h = read_response(&mut s, true).unwrap();
    assert_eq!(h.content_length(), Some(5));
    assert_eq!(read_response(&mut s, false).unwrap().body, b"bravo!");

    // Many small pipelined requests: more than one read's worth.
    let many: String = (0..300).map(|_| req("GET", "/a.txt", "")).collect();
    s.write_all(many.as_bytes()).unwrap();
    for _ in 0..300 {
        assert_eq!(read_response(&mut s, false).unwrap().body, b"alpha");
    }
    assert_eq!(server.metrics().connections_accepted, 1);
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn http10_and_connection_close() {
    let dir = TempDir::new("h10");
    dir.file("a.txt", b"alpha");
    let server = serve_dir(dir.path());
    let addr = server.local_addr();

    let mut s = client(addr);
    let r = exchange(&mut s, "GET /a.txt HTTP/1.0\r\n\r\n");
    assert_eq!(r.body, b"alpha");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed_by_peer(&mut s), "HTTP/1.0 without keep-alive must close");

    let mut s = client(addr);
    let r = exchange(&mut s, "GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let r = exchange(&mut s, "GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.body, b"alpha");

    let mut s = client(addr);
    let r = exchange(&mut s, &req("GET", "/a.txt", "Connection: close\r\n"));
    assert_eq!(r.body, b"alpha");
    assert!(closed_by_peer(&mut s));

    // A request with a body is answered, then the connection closes.
    let mut s = client(addr);
    let r = exchange(&mut s, &(req("GET", "/a.txt", "Content-Length: 3\r\n") + "xyz"));
    assert_eq!(r.body, b"alpha");
    assert!(closed_by_peer(&mut s));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn if_modified_since_gives_304() {
    let dir = TempDir::new("304");
    dir.file("a.txt", b"alpha");
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    let r = exchange(&mut s, &req("GET", "/a.txt", ""));
    let lm = r.header("last-modified").unwrap().to_string();
    let r = exchange(&mut s, &req("GET", "/a.txt", &format!("If-Modified-Since: {lm}\r\n")));
    assert_eq!(r.status, 304, "{}", r.head);
    assert!(r.body.is_empty());
    let r = exchange(&mut s, &req("GET", "/a.txt", "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"alpha"[..]));
    let r = exchange(&mut s, &req("GET", "/a.txt", "If-Modified-Since: not a date\r\n"));
    assert_eq!(r.status, 200);
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn ranges_and_their_edge_cases() {
    let dir = TempDir::new("range");
    let data = pattern(1000);
    dir.file("d.bin", &data);
    dir.file("empty", b"");
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    let mut range = |spec: &str| exchange(&mut s, &req("GET", "/d.bin", &format!("Range: {spec}\r\n")));

    let r = range("bytes=0-4");
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 0-4/1000")));
    assert_eq!(r.body, &data[..5]);
    let r = range("bytes=990-");
    assert_eq!(r.body, &data[990..]);
    let r = range("bytes=-3");
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 997-999/1000")));
    assert_eq!(r.body, &data[997..]);
    let r = range("bytes=-5000");
    assert_eq!((r.status, r.body.as_slice()), (206, data.as_slice()));
    let r = range("bytes=0-18446744073709551615");
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 0-999/1000")));
    assert_eq!(r.body, data);
    let r = range("bytes=500-99999999999999999999999");
    assert_eq!((r.status, r.body.as_slice()), (206, &data[500..]));
    for ignored in ["bytes=", "bytes=5-1", "bytes=0-1,1-2", "lines=1-2", "bytes=x-y"] {
        let r = range(ignored);
        assert_eq!((r.status, r.body.len()), (200, 1000), "{ignored}");
        assert!(r.body == data);
    }
    for unsatisfiable in ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=99999999999999999999999-"] {
        let r = range(unsatisfiable);
        assert_eq!((r.status, r.header("content-range")), (416, Some("bytes */1000")), "{unsatisfiable}");
    }
    let r = exchange(&mut s, &req("GET", "/empty", "Range: bytes=0-\r\n"));
    assert_eq!(r.status, 416);
    // If-Range with another date: the whole file.
    let r = exchange(&mut s, &req("GET", "/d.bin", "Range: bytes=0-1\r\nIf-Range: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
    assert_eq!((r.status, r.body.len()), (200, 1000));
    let lm = r.header("last-modified").unwrap().to_string();
    let r = exchange(&mut s, &req("GET", "/d.bin", &format!("Range: bytes=0-1\r\nIf-Range: {lm}\r\n")));
    assert_eq!((r.status, r.body.as_slice()), (206, &data[..2]));
    // HEAD with a range: the headers of the 206, no body.
    let r = exchange(&mut s, &req("HEAD", "/d.bin", "Range: bytes=10-19\r\n"));
    assert_eq!((r.status, r.content_length()), (206, Some(10)));
    let r = exchange(&mut s, &req("GET", "/d.bin", ""));
    assert!(r.body == data, "still in step after the HEAD");
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn directories_index_and_redirect() {
    let dir = TempDir::new("dirs");
    dir.file("index.html", b"root index");
    dir.file("sub/index.html", b"sub index");
    std::fs::create_dir_all(dir.path().join("bare")).unwrap();
    dir.file("bare/x.txt", b"x");
    let server = serve_dir(dir.path());
    let addr = server.local_addr();
    assert_eq!(get(addr, &req("GET", "/", "")).body, b"root index");
    assert_eq!(get(addr, &req("GET", "/sub/", "")).body, b"sub index");
    assert_eq!(get(addr, &req("GET", "/sub/index.html", "")).body, b"sub index");
    let r = get(addr, &req("GET", "/sub?x=1", ""));
    assert_eq!((r.status, r.header("location")), (301, Some("/sub/?x=1")));
    let r = get(addr, &req("GET", "/bare/", ""));
    assert_eq!(r.status, 404, "no listings");
    assert!(!String::from_utf8_lossy(&r.body).contains("x.txt"));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn nothing_outside_the_root() {
    let outer = TempDir::new("escape");
    outer.file("secret.txt", b"TOPSECRET");
    outer.file("secretdir/inner.txt", b"TOPSECRET too");
    let root = outer.path().join("root");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("ok.txt"), b"fine").unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.txt"), root.join("abs_link")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", root.join("rel_link")).unwrap();
    std::os::unix::fs::symlink("../secretdir", root.join("dir_link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
    std::os::unix::fs::symlink("../../ok.txt", root.join("a/b/inside_link")).unwrap();
    std::os::unix::fs::symlink("/proc/self/root/etc/passwd", root.join("magic")).unwrap();
    let server = serve_dir(&root);
    let addr = server.local_addr();

    // A symlink that stays inside the root is followed.
    assert_eq!(get(addr, &req("GET", "/a/b/inside_link", "")).body, b"fine");
    for target in [
        "/../secret.txt",
        "/a/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2e/secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/a/b/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
        "/..%5csecret.txt",
        "/a%5c..%5c..%5csecret.txt",
        "/ok.txt%00",
        "/secret.txt%00ok.txt",
        "/abs_link",
        "/rel_link",
        "/dir_link/inner.txt",
        "/passwd",
        "/magic",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
    ] {
        let r = get(addr, &req("GET", target, ""));
        assert!(matches!(r.status, 400 | 403 | 404), "{target}: {}", r.head);
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains("TOPSECRET") && !body.contains("root:"), "{target} leaked {body}");
    }
    // Raw backslashes and a NUL in the request line itself.
    for raw in ["GET /a\\..\\..\\secret.txt HTTP/1.1\r\nHost: t\r\n\r\n", "GET /ok.txt\0 HTTP/1.1\r\nHost: t\r\n\r\n"] {
        let r = get(addr, raw);
        assert!(matches!(r.status, 400 | 403 | 404), "{raw:?}: {}", r.head);
        assert!(!String::from_utf8_lossy(&r.body).contains("TOPSECRET"));
    }
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn hidden_files_are_404_unless_asked_for() {
    let dir = TempDir::new("hidden");
    dir.file(".env", b"SECRET=1");
    dir.file(".git/config", b"[core] SECRET");
    dir.file("docs/.htpasswd", b"admin:SECRET");
    dir.file(".hiddendir/index.html", b"SECRET index");
    dir.file(".well-known/security.txt", b"Contact: x");
    dir.file(".well-known/.key", b"SECRET key");
    dir.file("docs/a.txt", b"visible");
    let server = serve_dir(dir.path());
    let addr = server.local_addr();
    for target in [
        "/.env",
        "/.git/config",
        "/%2egit/config",
        "/%2Egit%2Fconfig",
        "/./.env",
        "/docs/.htpasswd",
        "/docs/%2ehtpasswd",
        "/.hiddendir/",
        "/.hiddendir",
        "/.git/",
        "/.well-known/.key",
    ] {
        let r = get(addr, &req("GET", target, ""));
        assert_eq!(r.status, 404, "{target}: {}", r.head);
        assert!(!String::from_utf8_lossy(&r.body).contains("SECRET"), "{target} leaked");
        let h = get(addr, &req("HEAD", target, ""));
        assert_eq!(h.status, 404, "HEAD {target}: {}", h.head);
    }
    assert_eq!(get(addr, &req("GET", "/.well-known/security.txt", "")).body, b"Contact: x");
    assert_eq!(get(addr, &req("GET", "/docs/a.txt", "")).body, b"visible");
    server.shutdown(Duration::from_secs(5)).unwrap();

    // `hidden(true)` (`berth serve --hidden`) serves them.
    let server = builder().serve(StaticFiles::new(dir.path()).unwrap().hidden(true)).unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, &req("GET", "/.env", "")).body, b"SECRET=1");
    assert_eq!(get(addr, &req("GET", "/%2egit/config", "")).body, b"[core] SECRET");
    assert_eq!(get(addr, &req("GET", "/.hiddendir/", "")).body, b"SECRET index");
    assert_eq!(get(addr, &req("GET", "/.well-known/.key", "")).body, b"SECRET key");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_fifo_is_refused_not_waited_on() {
    let dir = TempDir::new("fifo");
    let fifo = dir.path().join("pipe");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o600), 0).unwrap();
    let server = serve_dir(dir.path());
    let r = get(server.local_addr(), &req("GET", "/pipe", ""));
    assert_eq!(r.status, 403);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn refusals_400_405_414_431() {
    let dir = TempDir::new("refuse");
    dir.file("a.txt", b"alpha");
    let server = serve_dir(dir.path());
    let addr = server.local_addr();

    for method in ["POST", "PUT", "DELETE", "PATCH", "BREW", "options"] {
        let r = get(addr, &req(method, "/a.txt", ""));
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD, OPTIONS")), "{method}");
    }
    // 405 keeps the connection usable.
    let mut s = client(addr);
    assert_eq!(exchange(&mut s, &req("DELETE", "/a.txt", "")).status, 405);
    assert_eq!(exchange(&mut s, &req("GET", "/a.txt", "")).body, b"alpha");

    for raw in [
        "GARBAGE\r\n\r\n",
        "GET\r\n\r\n",
        "GET / HTTP/7.1\r\nHost: t\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n", // no Host
        "GET a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let mut s = client(addr);
        let r = exchange(&mut s, raw);
        assert_eq!(r.status, 400, "{raw:?}: {}", r.head);
        if raw != "GET a.txt HTTP/1.1\r\nHost: t\r\n\r\n" {
            assert!(closed_by_peer(&mut s), "{raw:?}: closed after a 400");
        }
    }

    // A target over the URI limit, with the head complete: 414.
    let long = format!("/{}", "a".repeat(5000));
    assert_eq!(get(addr, &req("GET", &long, "")).status, 414);
    // A request line longer than the whole head buffer: 414, then close.
    let mut s = client(addr);
    let huge = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "b".repeat(20_000));
    let _ = s.write_all(huge.as_bytes()); // the server may stop reading midway
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.status, 414);
    assert!(closed_by_peer(&mut s));

    // Too many headers: 431.
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut s = client(addr);
    let r = exchange(&mut s, &req("GET", "/a.txt", &many));
    assert_eq!(r.status, 431);
    assert!(closed_by_peer(&mut s));
    // A head larger than the buffer: 431.
    let mut s = client(addr);
    let big = req("GET", "/a.txt", &format!("X-Big: {}\r\n", "c".repeat(20_000)));
    let _ = s.write_all(big.as_bytes());
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.status, 431);
    assert!(closed_by_peer(&mut s));

    // The server is still fine.
    assert_eq!(get(addr, &req("GET", "/a.txt", "")).body, b"alpha");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// GET `target` and return its `ETag`, checking it is strong and quoted.
fn etag_of(s: &mut std::net::TcpStream, target: &str) -> String {
    let r = exchange(s, &req("GET", target, ""));
    let tag = r.header("etag").expect("an ETag").to_string();
    assert!(tag.len() > 2 && tag.starts_with('"') && tag.ends_with('"'), "strong and quoted: {tag}");
    tag
}

#[test]
fn if_none_match_gives_304() {
    let dir = TempDir::new("inm");
    dir.file("a.txt", b"alpha");
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    let tag = etag_of(&mut s, "/a.txt");
    let lm = exchange(&mut s, &req("GET", "/a.txt", "")).header("last-modified").unwrap().to_string();
    assert_eq!(etag_of(&mut s, "/a.txt"), tag, "stable while the file is");
    let old = "Sun, 06 Nov 1994 08:49:37 GMT";
    let inm = |v: &str| format!("If-None-Match: {v}\r\n");
    for matching in [
        inm(&tag),
        inm("*"),
        inm(" * "),
        inm(&format!("\"other\", {tag}")),
        inm(&format!("\"other\",{tag} , \"more\"")),
        inm(&format!("W/{tag}")),
        inm("\"other\"") + &inm(&tag), // one list over two lines
        // If-None-Match decides; If-Modified-Since is not looked at.
        inm(&tag) + &format!("If-Modified-Since: {old}\r\n"),
    ] {
        let r = exchange(&mut s, &req("GET", "/a.txt", &matching));
        assert_eq!(r.status, 304, "{matching:?}: {}", r.head);
        assert_eq!(r.header("etag"), Some(tag.as_str()), "{matching:?}");
        assert_eq!(r.header("last-modified"), Some(lm.as_str()), "{matching:?}");
        assert_eq!(r.header("content-length"), None);
        let h = exchange(&mut s, &req("HEAD", "/a.txt", &matching));
        assert_eq!(h.status, 304, "HEAD {matching:?}");
    }
    let stripped = tag.trim_matches('"');
    for other in [
        inm("\"other\""),
        inm(stripped),                 // no quotes
        inm(&format!("w/{tag}")),      // `W/` is case-sensitive
        inm(&format!("{tag}junk")),    // not a list
        inm(&format!("junk, {tag}")),  // garbage first: nothing after it is trusted
        inm(&format!("\"{stripped}")), // unterminated
        inm("*, *"),
        inm("\""),
        inm("W/"),
        inm(""),
        // If-None-Match is present and does not match: If-Modified-Since is ignored.
        inm("\"other\"") + &format!("If-Modified-Since: {lm}\r\n"),
    ] {
        let r = exchange(&mut s, &req("GET", "/a.txt", &other));
        assert_eq!((r.status, r.body.as_slice()), (200, &b"alpha"[..]), "{other:?}: {}", r.head);
    }
    // Raw bytes that are not UTF-8.
    s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"\xff\xfe\", \x80\r\n\r\n").unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"alpha"[..]));
    assert_eq!(exchange(&mut s, &req("GET", "/a.txt", "")).body, b"alpha", "still in step");
    drop(s);
    // Control bytes in the value: the parser refuses the request.
    let r = get(server.local_addr(), &req("GET", "/a.txt", "If-None-Match: \u{7f}\u{1}\u{8}\r\n"));
    assert_eq!(r.status, 400);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn if_none_match_of_8_kib() {
    let dir = TempDir::new("inm8k");
    dir.file("a.txt", b"alpha");
    let server = builder()
        .segment_size(32 * 1024)
        .max_request_head(32 * 1024)
        .serve(StaticFiles::new(dir.path()).unwrap())
        .unwrap();
    let mut s = client(server.local_addr());
    let tag = etag_of(&mut s, "/a.txt");
    // Junk of every printable kind, quotes and commas included.
    let junk: String = (0..8192).map(|i| (b' ' + ((i * 7919) % 95) as u8) as char).collect();
    let r = exchange(&mut s, &req("GET", "/a.txt", &format!("If-None-Match: {junk}\r\n")));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"alpha"[..]), "{}", r.head);
    // 8 KiB of quotes.
    let r = exchange(&mut s, &req("GET", "/a.txt", &format!("If-None-Match: {}\r\n", "\"".repeat(8192))));
    assert_eq!(r.status, 200);
    // A long list of other tags, ours last: still found.
    let list: String = (0..600).map(|i| format!("\"t{i}\", ")).collect();
    let r = exchange(&mut s, &req("GET", "/a.txt", &format!("If-None-Match: {list}{tag}\r\n")));
    assert_eq!(r.status, 304);
    // The same junk as If-Match and If-Range.
    let r = exchange(&mut s, &req("GET", "/a.txt", &format!("If-Match: {junk}\r\n")));
    assert_eq!(r.status, 412);
    let r = exchange(&mut s, &req("GET", "/a.txt", &format!("Range: bytes=0-0\r\nIf-Range: \"{junk}\r\n")));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"alpha"[..]));
    drop(s);
    // Nothing held: every segment is back once the workers stop (while they run, the
    // io_uring driver lends some to its buffer ring).
    let handle = server.shutdown_handle();
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(handle.metrics().buffers.in_use, 0, "buffers returned");

    // With the default head limit, 8 KiB of it is a 431, not a panic.
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    let r = exchange(&mut s, &req("GET", "/a.txt", &format!("If-None-Match: {junk}\r\n")));
    assert_eq!(r.status, 431);
    assert!(closed_by_peer(&mut s));
    assert_eq!(get(server.local_addr(), &req("GET", "/a.txt", "")).body, b"alpha");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn if_match_and_if_unmodified_since_give_412() {
    let dir = TempDir::new("412");
    dir.file("a.txt", b"alpha");
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    let tag = etag_of(&mut s, "/a.txt");
    let lm = exchange(&mut s, &req("GET", "/a.txt", "")).header("last-modified").unwrap().to_string();
    let old = "Sun, 06 Nov 1994 08:49:37 GMT";
    let im = |v: &str| format!("If-Match: {v}\r\n");
    let ius = |v: &str| format!("If-Unmodified-Since: {v}\r\n");
    for failing in [
        im("\"other\""),
        im(&format!("W/{tag}")), // If-Match compares strongly
        im("garbage"),
        im(""),
        ius(old),
        // If-Match is looked at first: a match of If-None-Match does not save it.
        im("\"other\"") + &format!("If-None-Match: {tag}\r\n"),
        // Range does not either.
        im("\"other\"") + "Range: bytes=0-1\r\n",
    ] {
        let r = exchange(&mut s, &req("GET", "/a.txt", &failing));
        assert_eq!(r.status, 412, "{failing:?}: {}", r.head);
        assert_eq!(r.body, b"412 Precondition Failed\n");
        let h = exchange(&mut s, &req("HEAD", "/a.txt", &failing));
        assert_eq!(h.status, 412, "HEAD {failing:?}");
    }
    for passing in [
        im(&tag),
        im("*"),
        im(&format!("\"other\", {tag}")),
        ius(&lm),
        ius("Fri, 31 Dec 9999 23:59:59 GMT"),
        ius("not a date"), // ignored
        // If-Match present and matching: If-Unmodified-Since is not looked at.
        im(&tag) + &ius(old),
    ] {
        let r = exchange(&mut s, &req("GET", "/a.txt", &passing));
        assert_eq!((r.status, r.body.as_slice()), (200, &b"alpha"[..]), "{passing:?}: {}", r.head);
    }
    // Passing If-Match, then a matching If-None-Match: 304.
    let r = exchange(&mut s, &req("GET", "/a.txt", &(im(&tag) + &format!("If-None-Match: {tag}\r\n"))));
    assert_eq!(r.status, 304);
    // Passing If-Unmodified-Since, then a Range: 206.
    let r = exchange(&mut s, &req("GET", "/a.txt", &(ius(&lm) + "Range: bytes=1-2\r\n")));
    assert_eq!((r.status, r.body.as_slice()), (206, &b"lp"[..]));
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn if_range_with_an_etag() {
    let dir = TempDir::new("ifrange");
    let data = pattern(1000);
    let path = dir.file("d.bin", &data);
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    let tag = etag_of(&mut s, "/d.bin");
    let ranged = |s: &mut std::net::TcpStream, if_range: &str| {
        exchange(s, &req("GET", "/d.bin", &format!("Range: bytes=10-19\r\nIf-Range: {if_range}\r\n")))
    };
    let r = ranged(&mut s, &tag);
    assert_eq!((r.status, r.body.as_slice()), (206, &data[10..20]), "fresh tag: {}", r.head);
    assert_eq!(r.header("etag"), Some(tag.as_str()));
    for stale in [
        "\"stale\"".to_string(),
        format!("W/{tag}"), // If-Range compares strongly
        format!("{tag}, {tag}"),
        format!("{tag}x"),
        "garbage".to_string(),
    ] {
        let r = ranged(&mut s, &stale);
        assert_eq!((r.status, r.body.len()), (200, 1000), "{stale}: {}", r.head);
    }
    // The file changes: the tag the client holds is now stale.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)).unwrap();
    drop(file);
    let r = ranged(&mut s, &tag);
    assert_eq!((r.status, r.body.len()), (200, 1000), "stale after the change: {}", r.head);
    let fresh = r.header("etag").unwrap().to_string();
    assert_ne!(fresh, tag);
    let r = ranged(&mut s, &fresh);
    assert_eq!((r.status, r.body.as_slice()), (206, &data[10..20]));
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn etag_changes_when_the_file_is_rewritten() {
    let dir = TempDir::new("etag");
    let path = dir.file("a.txt", b"alpha");
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    let first = etag_of(&mut s, "/a.txt");
    let set_mtime = |t: std::time::SystemTime| {
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_modified(t).unwrap();
    };
    let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    set_mtime(t0);
    let at_t0 = etag_of(&mut s, "/a.txt");
    // The same size and bytes, a nanosecond later: another tag.
    std::fs::write(&path, b"ALPHA").unwrap();
    set_mtime(t0 + Duration::from_nanos(1));
    let later = etag_of(&mut s, "/a.txt");
    assert_ne!(at_t0, later, "mtime in ns is part of the tag");
    // Back to the same mtime: the same tag (it depends on nothing else that changed).
    set_mtime(t0);
    assert_eq!(etag_of(&mut s, "/a.txt"), at_t0);
    // Another size at the same mtime: another tag.
    std::fs::write(&path, b"alphabet").unwrap();
    set_mtime(t0);
    let bigger = etag_of(&mut s, "/a.txt");
    assert_ne!(bigger, at_t0, "size is part of the tag");
    // Replaced by rename (a new inode), same size and mtime: another tag.
    let tmp = dir.file("tmp", b"ALPHABET");
    std::fs::OpenOptions::new().write(true).open(&tmp).unwrap().set_modified(t0).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let renamed = etag_of(&mut s, "/a.txt");
    assert_ne!(renamed, bigger, "inode is part of the tag");
    // An old tag no longer matches.
    for old in [&first, &at_t0, &later, &bigger] {
        let r = exchange(&mut s, &req("GET", "/a.txt", &format!("If-None-Match: {old}\r\n")));
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ALPHABET"[..]));
    }
    let r = exchange(&mut s, &req("GET", "/a.txt", &format!("If-None-Match: {renamed}\r\n")));
    assert_eq!(r.status, 304);
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn options_gives_204_with_allow() {
    let dir = TempDir::new("options");
    dir.file("a.txt", b"alpha");
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    for target in ["*", "/a.txt", "/", "/missing"] {
        let r = exchange(&mut s, &req("OPTIONS", target, ""));
        assert_eq!((r.status, r.header("allow")), (204, Some("GET, HEAD, OPTIONS")), "{target}: {}", r.head);
        assert_eq!(r.header("content-length"), None, "no Content-Length on a 204");
    }
    // Still in step: nothing followed the 204's head.
    assert_eq!(exchange(&mut s, &req("GET", "/a.txt", "")).body, b"alpha");
    // `*` is only for OPTIONS.
    assert_eq!(exchange(&mut s, &req("GET", "*", "")).status, 400);
    drop(s);
    // HTTP/1.1 without Host is still a 400.
    assert_eq!(get(server.local_addr(), "OPTIONS * HTTP/1.1\r\n\r\n").status, 400);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn charset_on_textual_types_only() {
    let dir = TempDir::new("charset");
    let names = [
        ("a.html", Some("text/html; charset=utf-8")),
        ("a.txt", Some("text/plain; charset=utf-8")),
        ("a.css", Some("text/css; charset=utf-8")),
        ("a.json", Some("application/json; charset=utf-8")),
        ("a.svg", Some("image/svg+xml; charset=utf-8")),
        ("a.png", Some("image/png")),
        ("a.bin", Some("application/octet-stream")),
        ("a.gz", None),
    ];
    for (name, _) in names {
        dir.file(name, b"x");
    }
    dir.file("a.js", b"x");
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    for (name, want) in names {
        let r = exchange(&mut s, &req("GET", &format!("/{name}"), ""));
        let ct = r.header("content-type").unwrap().to_string();
        match want {
            Some(want) => assert_eq!(ct, want, "{name}"),
            None => assert!(!ct.contains("charset"), "{name}: {ct}"),
        }
    }
    // JavaScript, whichever name mime_guess gives it.
    let r = exchange(&mut s, &req("GET", "/a.js", ""));
    assert!(r.header("content-type").unwrap().ends_with("javascript; charset=utf-8"), "{}", r.head);
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn cache_control_and_added_headers() {
    let dir = TempDir::new("extra");
    dir.file("a.txt", b"alpha");
    let files = StaticFiles::new(dir.path())
        .unwrap()
        .cache_control("no-cache")
        .unwrap()
        .cache_control("public, max-age=60")
        .unwrap()
        .header("X-Content-Type-Options", "nosniff")
        .unwrap()
        .header("Access-Control-Allow-Origin", "  *\t")
        .unwrap();
    let server = builder().serve(files).unwrap();
    let mut s = client(server.local_addr());
    let check = |r: &Response, what: &str| {
        assert_eq!(r.header("cache-control"), Some("public, max-age=60"), "{what}: {}", r.head);
        assert_eq!(r.head.matches("Cache-Control").count(), 1, "{what}: replaced, not repeated");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{what}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{what}");
        assert!(r.head.contains("\r\nX-Content-Type-Options: nosniff\r\nAccess-Control-Allow-Origin: *\r\n"));
    };
    let r = exchange(&mut s, &req("GET", "/a.txt", ""));
    check(&r, "200");
    assert_eq!(r.body, b"alpha");
    let tag = r.header("etag").unwrap().to_string();
    check(&exchange(&mut s, &req("HEAD", "/a.txt", "")), "HEAD");
    check(&exchange(&mut s, &req("GET", "/a.txt", "Range: bytes=0-1\r\n")), "206");
    check(&exchange(&mut s, &req("GET", "/a.txt", &format!("If-None-Match: {tag}\r\n"))), "304");
    // OPTIONS gets the added headers, not Cache-Control.
    let r = exchange(&mut s, &req("OPTIONS", "*", ""));
    assert_eq!((r.status, r.header("x-content-type-options")), (204, Some("nosniff")));
    assert_eq!(r.header("cache-control"), None);
    // Errors get neither.
    let r = exchange(&mut s, &req("GET", "/missing", ""));
    assert_eq!((r.status, r.header("cache-control"), r.header("x-content-type-options")), (404, None, None));
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn header_injection_is_refused_at_build_time() {
    let dir = TempDir::new("inject");
    let files = || StaticFiles::new(dir.path()).unwrap();
    for value in ["1\r\nSet-Cookie: a=b", "1\nX: y", "1\rX: y", "a\0b", "\u{7f}", "\u{1b}[31m"] {
        assert!(matches!(files().header("X-A", value), Err(HeaderError::InvalidValue(_))), "{value:?}");
        assert!(matches!(files().cache_control(value), Err(HeaderError::InvalidValue(_))), "{value:?}");
    }
    for name in ["", "X A", "X:A", "X-A:", "X\r\nY", "X\0", "(x)", "X\u{e9}", "X/Y"] {
        assert!(matches!(files().header(name, "v"), Err(HeaderError::InvalidName(_))), "{name:?}");
    }
    for name in ["Content-Length", "transfer-encoding", "CONNECTION", "Content-Type", "ETag", "Cache-Control", "Date"] {
        assert!(matches!(files().header(name, "1"), Err(HeaderError::Reserved(_))), "{name:?}");
    }
    let long = "v".repeat(MAX_EXTRA_HEADERS);
    assert!(matches!(files().header("X-Long", &long), Err(HeaderError::TooLong)));
    assert!(matches!(files().cache_control(&long), Err(HeaderError::TooLong)));
    let mut f = files();
    for i in 0.. {
        match f.header(&format!("X-{i}"), &"v".repeat(100)) {
            Ok(next) => f = next,
            Err(e) => {
                assert_eq!(e, HeaderError::TooLong);
                assert!(i > 30, "{i} headers of 100 bytes fit");
                break;
            }
        }
    }
    // Tabs inside a value, and obs-text, are allowed.
    assert!(files().header("X-Tab", "a\tb").is_ok());
    assert!(files().header("X-Utf8", "caf\u{e9}").is_ok());
}

#[test]
fn index_names_in_order() {
    let dir = TempDir::new("index");
    dir.file("both/index.htm", b"htm");
    dir.file("both/default.txt", b"txt");
    dir.file("second/default.txt", b"second");
    // A directory by an index name is not an index: the next name is tried.
    std::fs::create_dir_all(dir.path().join("dirnamed/index.htm")).unwrap();
    dir.file("dirnamed/default.txt", b"after the dir");
    dir.file("plain/index.html", b"not an index any more");
    let files = StaticFiles::new(dir.path()).unwrap().index(["index.htm", "default.txt"]).unwrap();
    let server = builder().serve(files).unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, &req("GET", "/both/", "")).body, b"htm");
    let r = get(addr, &req("GET", "/second/", ""));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"second"[..]));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(get(addr, &req("GET", "/dirnamed/", "")).body, b"after the dir");
    assert_eq!(get(addr, &req("GET", "/plain/", "")).status, 404, "the list replaced index.html");
    server.shutdown(Duration::from_secs(5)).unwrap();

    for bad in ["", ".", "..", "a/b", "x\0y", &"n".repeat(256)] {
        assert!(StaticFiles::new(dir.path()).unwrap().index([bad]).is_err(), "{bad:?}");
    }
    // No index at all: a directory is a 404.
    let server = builder().serve(StaticFiles::new(dir.path()).unwrap().index::<_, &str>([]).unwrap()).unwrap();
    assert_eq!(get(server.local_addr(), &req("GET", "/both/", "")).status, 404);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn fallback_serves_missing_paths_only() {
    let outer = TempDir::new("fallback");
    outer.file("secret.txt", b"TOPSECRET");
    let root = outer.path().join("root");
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("app.html"), b"<div id=app></div>").unwrap();
    std::fs::write(root.join("real.txt"), b"real").unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join(".git/config"), b"TOPSECRET git").unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.txt"), root.join("escape")).unwrap();
    let files = StaticFiles::new(&root).unwrap().fallback("/./app.html").unwrap();
    let server = builder().serve(files).unwrap();
    let addr = server.local_addr();
    let mut s = client(addr);
    for target in ["/missing", "/deep/route/42", "/real.txt/below", "/empty/", "/missing?x=1"] {
        let r = exchange(&mut s, &req("GET", target, ""));
        assert_eq!((r.status, r.body.as_slice()), (200, &b"<div id=app></div>"[..]), "{target}: {}", r.head);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(r.header("etag").is_some());
    }
    let h = exchange(&mut s, &req("HEAD", "/missing", ""));
    assert_eq!((h.status, h.content_length()), (200, Some(18)));
    assert_eq!(exchange(&mut s, &req("GET", "/real.txt", "")).body, b"real");
    // Refused paths keep their status: never the fallback.
    for (target, status) in [
        ("/.git/config", 404),
        ("/%2egit/config", 404),
        ("/.missing", 404),
        ("/../x", 403),
        ("/a/../../x", 403),
        ("/%2e%2e/secret.txt", 403),
        ("/escape", 403),
    ] {
        let r = exchange(&mut s, &req("GET", target, ""));
        assert_eq!(r.status, status, "{target}: {}", r.head);
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains("id=app") && !body.contains("TOPSECRET"), "{target}: {body}");
    }
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();

    // The file must exist beneath the root, as a regular file.
    for bad in ["../secret.txt", "missing.html", "empty", "escape", ""] {
        assert!(StaticFiles::new(&root).unwrap().fallback(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn not_found_page_with_404() {
    let dir = TempDir::new("notfound");
    dir.file("404.html", b"<h1>gone</h1>");
    dir.file("a.txt", b"a");
    dir.file(".env", b"TOPSECRET");
    let files = StaticFiles::new(dir.path()).unwrap().not_found("404.html").unwrap();
    let server = builder().serve(files).unwrap();
    let mut s = client(server.local_addr());
    for target in ["/missing", "/.env", "/dir/"] {
        let r = exchange(&mut s, &req("GET", target, ""));
        assert_eq!((r.status, r.body.as_slice()), (404, &b"<h1>gone</h1>"[..]), "{target}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    }
    let h = exchange(&mut s, &req("HEAD", "/missing", ""));
    assert_eq!((h.status, h.content_length()), (404, Some(13)));
    // Still in step after the HEAD; other statuses keep their text.
    assert_eq!(exchange(&mut s, &req("GET", "/a.txt", "")).body, b"a");
    assert_eq!(exchange(&mut s, &req("GET", "/%2e%2e/a", "")).body, b"403 Forbidden\n");
    // The page gone at request time: the plain 404.
    std::fs::remove_file(dir.path().join("404.html")).unwrap();
    let r = exchange(&mut s, &req("GET", "/missing", ""));
    assert_eq!((r.status, r.body.as_slice()), (404, &b"404 Not Found\n"[..]));
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert!(StaticFiles::new(dir.path()).unwrap().not_found("nope.html").is_err());
}

/// Sets a file's modification time `secs` from now (negative: in the past).
fn touch(path: &std::path::Path, secs: i64) {
    let now = std::time::SystemTime::now();
    let t =
        if secs >= 0 { now + Duration::from_secs(secs as u64) } else { now - Duration::from_secs(secs.unsigned_abs()) };
    std::fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

fn precompressed_site() -> (TempDir, std::path::PathBuf) {
    let outer = TempDir::new("sidecars");
    outer.file("secret.txt.gz", b"TOPSECRET");
    let root = outer.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    for (name, body) in [
        ("app.js", &b"plain javascript"[..]),
        ("app.js.br", b"BR-BYTES"),
        ("app.js.zst", b"ZSTD-BYTES"),
        ("app.js.gz", b"GZIP-BYTES"),
        ("old.txt", b"new plain"),
        ("old.txt.gz", b"STALE GZIP"),
        ("same.txt", b"plain"),
        ("same.txt.gz", b"GZ same mtime"),
        ("secret.txt", b"public plain"),
        ("index.html", b"<p>index</p>"),
        ("index.html.gz", b"GZ-INDEX"),
    ] {
        std::fs::write(root.join(name), body).unwrap();
    }
    for name in ["app.js", "old.txt"] {
        touch(&root.join(name), -100);
    }
    for name in ["app.js.br", "app.js.zst", "app.js.gz"] {
        touch(&root.join(name), -50);
    }
    touch(&root.join("old.txt.gz"), -200);
    let same = std::fs::metadata(root.join("same.txt")).unwrap().modified().unwrap();
    std::fs::File::options().write(true).open(root.join("same.txt.gz")).unwrap().set_modified(same).unwrap();
    // A sidecar that is a symlink out of the root, and one that is a directory.
    std::os::unix::fs::symlink(outer.path().join("secret.txt.gz"), root.join("secret.txt.gz")).unwrap();
    std::fs::write(root.join("dir.txt"), b"dir plain").unwrap();
    std::fs::create_dir_all(root.join("dir.txt.br")).unwrap();
    (outer, root)
}

#[test]
fn precompressed_sidecars_by_q_value() {
    let (_outer, root) = precompressed_site();
    let server = builder().serve(StaticFiles::new(&root).unwrap().precompressed(true)).unwrap();
    let mut s = client(server.local_addr());
    let plain = exchange(&mut s, &req("GET", "/app.js", ""));
    assert_eq!(plain.body, b"plain javascript");
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"), "a sidecar could apply");
    for (accept, body, coding) in [
        ("gzip, deflate, br, zstd", &b"BR-BYTES"[..], Some("br")),
        ("gzip", b"GZIP-BYTES", Some("gzip")),
        ("br;q=0, gzip;q=0.5, zstd;q=0.5", b"ZSTD-BYTES", Some("zstd")),
        ("gzip;q=1, br;q=0.8", b"GZIP-BYTES", Some("gzip")),
        ("*", b"BR-BYTES", Some("br")),
        ("*;q=0", b"plain javascript", None),
        ("identity", b"plain javascript", None),
        ("br;q=2, gzip;q=0.1.1, zstd;q=abc", b"plain javascript", None),
    ] {
        let r = exchange(&mut s, &req("GET", "/app.js", &format!("Accept-Encoding: {accept}\r\n")));
        assert_eq!((r.status, r.body.as_slice()), (200, body), "{accept}: {}", r.head);
        assert_eq!(r.header("content-encoding"), coding, "{accept}");
        assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"), "{accept}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        if coding.is_some() {
            assert_ne!(r.header("etag"), plain.header("etag"), "the sidecar's own ETag");
        }
    }
    let br = exchange(&mut s, &req("GET", "/app.js", "Accept-Encoding: br\r\n"));
    let etag = br.header("etag").unwrap();
    // Revalidation against the sidecar's tag, and ranges over the encoded bytes.
    let r = exchange(&mut s, &req("GET", "/app.js", &format!("Accept-Encoding: br\r\nIf-None-Match: {etag}\r\n")));
    assert_eq!((r.status, r.header("vary")), (304, Some("Accept-Encoding")));
    let r = exchange(&mut s, &req("GET", "/app.js", "Accept-Encoding: br\r\nRange: bytes=3-\r\n"));
    assert_eq!((r.status, r.body.as_slice()), (206, &b"BYTES"[..]));
    assert_eq!(r.header("content-range"), Some("bytes 3-7/8"));
    assert_eq!(r.header("content-encoding"), Some("br"));
    // Older than its file: not served. As old: served. Out of the root or not a
    // regular file: the plain file.
    for (target, body) in [
        ("/old.txt", &b"new plain"[..]),
        ("/same.txt", b"GZ same mtime"),
        ("/secret.txt", b"public plain"),
        ("/dir.txt", b"dir plain"),
        ("/", b"GZ-INDEX"),
    ] {
        let r = exchange(&mut s, &req("GET", target, "Accept-Encoding: br, gzip\r\n"));
        assert_eq!((r.status, r.body.as_slice()), (200, body), "{target}: {}", r.head);
    }
    let r = exchange(&mut s, &req("GET", "/index.html", "Accept-Encoding: gzip\r\n"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();

    // Off by default: no sidecar, no Vary.
    let server = builder().serve(StaticFiles::new(&root).unwrap()).unwrap();
    let r = get(server.local_addr(), &req("GET", "/app.js", "Accept-Encoding: br\r\n"));
    assert_eq!((r.body.as_slice(), r.header("vary")), (&b"plain javascript"[..], None));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn accept_encoding_of_8_kib() {
    let (_outer, root) = precompressed_site();
    let files = StaticFiles::new(&root).unwrap().precompressed(true);
    let server = builder().segment_size(32 * 1024).max_request_head(32 * 1024).serve(files).unwrap();
    let mut s = client(server.local_addr());
    let long = "x-unknown;q=0.5, ".repeat(8 * 1024 / 17 + 1) + "gzip";
    assert!(long.len() >= 8 * 1024);
    let r = exchange(&mut s, &req("GET", "/app.js", &format!("Accept-Encoding: {long}\r\n")));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"GZIP-BYTES"[..]));
    let garbage: String = (0..8 * 1024).map(|i| [';', '=', ',', 'q', '.', '9', ' ', 'b', 'r'][i % 9]).collect();
    let r = exchange(&mut s, &req("GET", "/app.js", &format!("Accept-Encoding: {garbage}\r\n")));
    assert_eq!(r.status, 200);
    let r = exchange(&mut s, &req("GET", "/app.js", &format!("Accept-Encoding: {}\r\n", ";q=0.".repeat(1700))));
    assert_eq!(r.body, b"plain javascript");
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
    // With the default 8 KiB request head it does not fit: 431, and the server goes on.
    let server = builder().serve(StaticFiles::new(&root).unwrap().precompressed(true)).unwrap();
    let r = get(server.local_addr(), &req("GET", "/app.js", &format!("Accept-Encoding: {long}\r\n")));
    assert_eq!(r.status, 431);
    assert_eq!(get(server.local_addr(), &req("GET", "/app.js", "")).status, 200);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// The parts of a `multipart/byteranges` body: each part's `Content-Range` and bytes.
fn multipart_parts(r: &Response) -> Vec<(String, Vec<u8>)> {
    let ct = r.header("content-type").expect("a Content-Type");
    let boundary = ct.strip_prefix("multipart/byteranges; boundary=").unwrap_or_else(|| panic!("{ct}"));
    let delim = format!("\r\n--{boundary}");
    let body = &r.body[..];
    let mut parts = Vec::new();
    let mut at = 0;
    loop {
        assert!(body[at..].starts_with(delim.as_bytes()), "delimiter at {at}");
        at += delim.len();
        if body[at..].starts_with(b"--\r\n") {
            assert_eq!(at + 4, body.len(), "nothing after the closing delimiter");
            return parts;
        }
        let head_end = at + body[at..].windows(4).position(|w| w == b"\r\n\r\n").expect("part head") + 4;
        let head = std::str::from_utf8(&body[at..head_end]).unwrap();
        let range = head.lines().find_map(|l| l.strip_prefix("Content-Range: ")).expect("Content-Range").to_string();
        assert!(head.contains("Content-Type: "), "{head}");
        let (first, last) = range["bytes ".len()..range.find('/').unwrap()].split_once('-').unwrap();
        let len = last.parse::<usize>().unwrap() - first.parse::<usize>().unwrap() + 1;
        parts.push((range, body[head_end..head_end + len].to_vec()));
        at = head_end + len;
    }
}

#[test]
fn multiple_ranges_as_multipart() {
    let dir = TempDir::new("multi");
    let data = pattern(3 << 20);
    dir.file("big.bin", &data);
    dir.file("t.txt", &pattern(10_000));
    let server = serve_dir(dir.path());
    let mut s = client(server.local_addr());
    let r = exchange(&mut s, &req("GET", "/t.txt", "Range: bytes=100-199, 0-9,-5\r\n"));
    assert_eq!(r.status, 206, "{}", r.head);
    assert_eq!(r.header("content-range"), None);
    let parts = multipart_parts(&r);
    let t = pattern(10_000);
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], ("bytes 100-199/10000".to_string(), t[100..200].to_vec()));
    assert_eq!(parts[1], ("bytes 0-9/10000".to_string(), t[..10].to_vec()));
    assert_eq!(parts[2], ("bytes 9995-9999/10000".to_string(), t[9995..].to_vec()));
    // Large parts (sent in several sendfile calls), then the connection is in step.
    let r = exchange(&mut s, &req("GET", "/big.bin", "Range: bytes=0-99999,1000000-1999999,2500000-\r\n"));
    let parts = multipart_parts(&r);
    assert_eq!(parts.len(), 3);
    assert!(parts[1].1 == data[1_000_000..2_000_000] && parts[2].1 == data[2_500_000..], "part bytes differ");
    assert_eq!(exchange(&mut s, &req("GET", "/t.txt", "Range: bytes=0-0\r\n")).body, t[..1]);
    // HEAD: the multipart head alone, its length that of the GET's body.
    let h = exchange(&mut s, &req("HEAD", "/t.txt", "Range: bytes=0-9,20-29\r\n"));
    assert_eq!(h.status, 206);
    assert!(h.header("content-type").unwrap().starts_with("multipart/byteranges; boundary="));
    let g = exchange(&mut s, &req("GET", "/t.txt", "Range: bytes=0-9,20-29\r\n"));
    assert_eq!(h.content_length(), Some(g.body.len()));
    // Pipelined behind a multipart reply.
    s.write_all((req("GET", "/t.txt", "Range: bytes=0-1,3-4\r\n") + &req("GET", "/t.txt", "")).as_bytes()).unwrap();
    assert_eq!(multipart_parts(&read_response(&mut s, false).unwrap()).len(), 2);
    assert!(read_response(&mut s, false).unwrap().body == t);
    // An unsatisfiable range among satisfiable ones is dropped; none satisfiable: 416.
    let r = exchange(&mut s, &req("GET", "/t.txt", "Range: bytes=0-9,20000-\r\n"));
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 0-9/10000")));
    assert_eq!(exchange(&mut s, &req("GET", "/t.txt", "Range: bytes=20000-,30000-\r\n")).status, 416);
    // If-Range that does not match: the whole file.
    let r = exchange(&mut s, &req("GET", "/t.txt", "Range: bytes=0-9,20-29\r\nIf-Range: \"stale\"\r\n"));
    assert_eq!(r.status, 200);
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn range_abuse_gets_the_whole_file() {
    let dir = TempDir::new("abuse");
    dir.file("t.txt", &pattern(10_000));
    let t = pattern(10_000);
    let server = builder()
        .segment_size(32 * 1024)
        .max_request_head(32 * 1024)
        .serve(StaticFiles::new(dir.path()).unwrap())
        .unwrap();
    let mut s = client(server.local_addr());
    let distinct = |n: usize| (0..n).map(|i| format!("{}-{}", i * 3, i * 3)).collect::<Vec<_>>().join(",");
    let sixteen = exchange(&mut s, &req("GET", "/t.txt", &format!("Range: bytes={}\r\n", distinct(16))));
    assert_eq!((sixteen.status, multipart_parts(&sixteen).len()), (206, 16), "the cap itself is served");
    for range in [
        format!("bytes={}", distinct(17)),
        format!("bytes={}", distinct(1000)),
        format!("bytes={}", "0-0,".repeat(1000)),
        "bytes=0-99,50-149".to_string(),
        "bytes=0-,-1".to_string(),
        "bytes=0-4999,4999-9999".to_string(),
        "bytes=0-9,x".to_string(),
    ] {
        let r = exchange(&mut s, &req("GET", "/t.txt", &format!("Range: {range}\r\n")));
        assert_eq!(r.status, 200, "{}: {}", &range[..range.len().min(40)], r.head);
        assert!(r.body == t);
    }
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();

    // Part headers that would not fit the reply's segment beside a long added head:
    // the whole file, not a broken reply.
    let files = StaticFiles::new(dir.path()).unwrap().header("X-Pad", &"p".repeat(2800)).unwrap();
    let server = builder().segment_size(4096).serve(files).unwrap();
    let r = get(server.local_addr(), &req("GET", "/t.txt", &format!("Range: bytes={}\r\n", distinct(16))));
    assert_eq!(r.status, 200);
    assert!(r.body == t);
    let r = get(server.local_addr(), &req("GET", "/t.txt", "Range: bytes=0-0,2-2\r\n"));
    assert_eq!((r.status, multipart_parts(&r).len()), (206, 2));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn access_log_combined_format_and_reopen() {
    use berth_server::{AccessLog, LogTarget};
    let dir = TempDir::new("access");
    dir.file("site/a.txt", b"0123456789");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("access.log");
    let (log, handle) = AccessLog::start(LogTarget::File(path.clone())).unwrap();
    let server = builder().serve(StaticFiles::new(dir.path().join("site")).unwrap().access_log(log)).unwrap();
    let addr = server.local_addr();
    let mut s = client(addr);
    exchange(&mut s, &req("GET", "/a.txt", "Referer: http://r/\r\nUser-Agent: t \"x\"\r\n"));
    exchange(&mut s, &req("HEAD", "/a.txt", ""));
    exchange(&mut s, &req("GET", "/a.txt", "Range: bytes=2-4\r\n"));
    exchange(&mut s, &req("GET", "/nope?q=%0a", ""));
    drop(s);
    eventually("four lines", || log_lines(&path).len() == 4);
    // logrotate: rename, then SIGHUP (here: reopen) — new lines go to a new file.
    let rotated = logs.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    handle.reopen();
    eventually("the log reopened", || path.exists());
    let r = get(addr, "GARBAGE\r\n\r\n");
    assert_eq!(r.status, 400);
    eventually("one line in the new file", || log_lines(&path).len() == 1);
    server.shutdown(Duration::from_secs(5)).unwrap();
    handle.finish();

    let old = log_lines(&rotated);
    assert_eq!(old.len(), 4, "{old:?}");
    for (line, want) in old.iter().zip([
        "\"GET /a.txt HTTP/1.1\" 200 10 \"http://r/\" \"t \\x22x\\x22\" ",
        "\"HEAD /a.txt HTTP/1.1\" 200 - \"-\" \"-\" ",
        "\"GET /a.txt HTTP/1.1\" 206 3 \"-\" \"-\" ",
        "\"GET /nope?q=%0a HTTP/1.1\" 404 14 \"-\" \"-\" ",
    ]) {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(line.contains(" +0000] "), "{line}");
        assert!(line.contains(want), "{want:?} in {line}");
        let time = line.rsplit(' ').next().unwrap();
        let (secs, ms) = time.split_once('.').unwrap_or_else(|| panic!("request time in {line}"));
        assert!(secs.parse::<u64>().is_ok() && ms.len() == 3 && ms.parse::<u32>().is_ok(), "{line}");
    }
    let new = log_lines(&path);
    assert!(new[0].contains("\"-\" 400 16 \"-\" \"-\" "), "{new:?}");
}

/// Reads a pipe to its end (bounded) on a thread of its own, once dropped.
struct Drain(Option<std::fs::File>);

impl Drop for Drain {
    fn drop(&mut self) {
        let Some(mut reader) = self.0.take() else { return };
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let deadline = std::time::Instant::now() + IO_TIMEOUT;
            while std::time::Instant::now() < deadline {
                match std::io::Read::read(&mut reader, &mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }
}

#[test]
fn access_log_full_queue_drops_never_blocks() {
    use berth_server::{AccessLog, LogTarget};
    let dir = TempDir::new("access-full");
    dir.file("a.txt", b"a");
    // A FIFO nobody reads: the logger's write blocks once the pipe is full.
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    use std::os::unix::fs::OpenOptionsExt;
    let reader = std::fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&fifo)
        .unwrap();
    let (log, handle) = AccessLog::with_capacity(LogTarget::File(fifo.clone()), 8).unwrap();
    let server = builder().serve(StaticFiles::new(dir.path()).unwrap().access_log(log)).unwrap();
    // Declared after the server, so dropped first when a failed assertion unwinds:
    // it drains the pipe, freeing a worker the log would wrongly have blocked, and
    // the test fails instead of hanging on the server's drop.
    let drain = Drain(Some(reader));
    let mut s = client(server.local_addr());
    let started = std::time::Instant::now();
    // Lines of ~500 bytes fill the 64 KiB pipe within a few hundred requests.
    let agent = format!("User-Agent: {}\r\n", "u".repeat(150));
    let target = format!("/a.txt?{}", "q".repeat(250));
    for _ in 0..2000 {
        assert_eq!(exchange(&mut s, &req("GET", &target, &agent)).body, b"a");
    }
    assert!(started.elapsed() < Duration::from_secs(15), "requests waited for the log");
    eventually("dropped records", || handle.dropped() > 0);
    drop(s);
    server.shutdown(Duration::from_secs(5)).unwrap();
    let dropped = handle.dropped();
    drop(drain);
    handle.finish();
    assert!(dropped > 0 && dropped < 2000, "{dropped}");
}
