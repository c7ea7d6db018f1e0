//! `http_request`: arbitrary bytes, split at arbitrary points, fed to `StaticFiles`
//! over a fixture root with a secret file beside it (issue #16, target 3).
//!
//! Input: one byte of options (which `StaticFiles` configuration, the request head
//! limit, the segment size), one byte whose low 3 bits count split points, two bytes
//! per split point, then the bytes the client sends. The connection is driven by
//! `berth_server::fuzzing::Connection`, which calls the service as a worker does.
//!
//! Checked: no panic; every reply is exactly one well-formed HTTP/1.1 response
//! (parsed back by httparse, not by the server's code): a status line, headers,
//! one `Content-Length` that matches the body (none on a 204, no body on a 304 or
//! for HEAD), no `Transfer-Encoding`, `Connection: close` exactly when the server
//! closes; a 200 with an `ETag` carries a whole fixture file; a single-range 206's
//! `Content-Range` agrees with its length and its body is those bytes of a fixture
//! file, and a multipart 206 is parts of such bytes between its boundaries; no reply ever holds 8 bytes in a row of
//! the secret file (that the request did not hold itself); and a full buffer is
//! always answered.

#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use berth_server::StaticFiles;
use berth_server::fuzzing::{CloseReason, Connection, Event};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    /// The three configurations, with their `max_headers`.
    files: [(StaticFiles, usize); 3],
    /// Every file beneath the root, by contents.
    contents: Vec<Vec<u8>>,
    /// Every 8 bytes in a row of the secret beside the root.
    secret_windows: HashSet<u64>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Fixtures of runs that are gone, then ours.
        for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix("berth-fuzz-http-"));
            if pid.is_some_and(|p| !std::path::Path::new("/proc").join(p).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let base = std::env::temp_dir().join(format!("berth-fuzz-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        // High bytes only: nothing the server writes on its own (ASCII) or the
        // fixture files (ASCII) can look like it.
        let mut x: u32 = 0x9e37_79b9;
        let secret: Vec<u8> = (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                0x80 | (x as u8)
            })
            .collect();
        let files: &[(&str, &[u8])] = &[
            ("index.html", b"<h1>index</h1>\n"),
            ("a.txt", b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789abcdefghijklmnopqrstuvwxyz\n"),
            ("empty.txt", b""),
            ("app.html", b"<div id=app></div>\n"),
            ("404.html", b"<h1>not here</h1>\n"),
            ("a.txt.gz", b"GZIP-SIDECAR-OF-A\n"),
            ("dir/index.html", b"<h1>dir</h1>\n"),
            ("dir/b.css", b"body { color: red }\n"),
            ("dir/sub/c.json", b"{\"c\": 1}\n"),
            (".hidden", b"hidden but not secret\n"),
            (".well-known/security.txt", b"Contact: mailto:x@example.com\n"),
            ("with space.txt", b"space\n"),
        ];
        let mut contents = Vec::new();
        for (name, body) in files {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, body).unwrap();
            contents.push(body.to_vec());
        }
        std::fs::write(base.join("secret"), &secret).unwrap();
        // Ways out of the root that a path check alone would not catch.
        std::os::unix::fs::symlink("../secret", root.join("leak")).unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        std::os::unix::fs::symlink(base.join("secret"), root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("dir/leak.html")).unwrap();
        let plain = StaticFiles::new(&root).unwrap();
        let routed = StaticFiles::new(&root)
            .unwrap()
            .index(["index.htm", "index.html"])
            .unwrap()
            .fallback("app.html")
            .unwrap()
            .not_found("404.html")
            .unwrap()
            .precompressed(true)
            .header("X-Fuzz", "1")
            .unwrap()
            .cache_control("max-age=60")
            .unwrap();
        let strict = StaticFiles::new(&root).unwrap().hidden(true).max_uri_len(48).max_headers(4).index([""; 0]).unwrap();
        let secret_windows = secret.windows(8).map(|w| u64::from_le_bytes(w.try_into().unwrap())).collect();
        Fixture { files: [(plain, 64), (routed, 64), (strict, 4)], contents, secret_windows }
    })
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Vec<&'a [u8]> {
    headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value).collect()
}

fn number(v: &[u8]) -> u64 {
    assert!(!v.is_empty() && v.iter().all(u8::is_ascii_digit), "not a number: {:?}", String::from_utf8_lossy(v));
    std::str::from_utf8(v).unwrap().parse().unwrap()
}

/// Whether the request a reply answers is a HEAD the server parsed.
fn is_head(request: &[u8], max_headers: usize) -> bool {
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut headers);
    matches!(req.parse(request), Ok(httparse::Status::Complete(_))) && req.method == Some("HEAD")
}

fn check_reply(f: &Fixture, max_headers: usize, input: &[u8], request: &[u8], response: &[u8], close: bool) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(response) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("reply does not parse as HTTP ({other:?}): {:?}", String::from_utf8_lossy(response)),
    };
    assert_eq!(resp.version, Some(1), "not HTTP/1.1");
    let code = resp.code.unwrap();
    assert!((200..600).contains(&code), "status {code}");
    assert!(response.starts_with(format!("HTTP/1.1 {code} ").as_bytes()));
    let reason = resp.reason.unwrap_or("");
    assert!(!reason.is_empty() && reason.bytes().all(|b| (0x20..0x7f).contains(&b)), "reason {reason:?}");
    let body = &response[head_len..];
    let lengths = header(resp.headers, "content-length");
    assert!(header(resp.headers, "transfer-encoding").is_empty(), "Transfer-Encoding on a reply");
    let closes = header(resp.headers, "connection").iter().any(|v| v.eq_ignore_ascii_case(b"close"));
    assert_eq!(closes, close, "Connection: close said {closes}, the server closes: {close}");
    let head_only = is_head(request, max_headers);
    match code {
        204 => assert!(lengths.is_empty() && body.is_empty(), "a 204 with a length or a body"),
        304 => assert!(body.is_empty(), "a 304 with a body"),
        _ => {
            assert_eq!(lengths.len(), 1, "{} Content-Length headers on a {code}", lengths.len());
            let len = number(lengths[0]);
            let expected = if head_only { 0 } else { len };
            assert_eq!(
                body.len() as u64,
                expected,
                "body of {} bytes, Content-Length {len}, head_only {head_only}",
                body.len()
            );
        }
    }
    if !head_only && code == 200 && !header(resp.headers, "etag").is_empty() {
        assert!(
            f.contents.iter().any(|c| c == body),
            "a 200 that is not a whole file: {:?}",
            String::from_utf8_lossy(body)
        );
    }
    if code == 206
        && let [range] = header(resp.headers, "content-range")[..]
    {
        let range = std::str::from_utf8(range).unwrap();
        let spec = range.strip_prefix("bytes ").expect("Content-Range unit");
        let (span, size) = spec.split_once('/').expect("Content-Range size");
        let (a, b) = span.split_once('-').expect("Content-Range span");
        let (a, b, size) = (number(a.as_bytes()), number(b.as_bytes()), number(size.as_bytes()));
        assert!(a <= b && b < size, "Content-Range {range}");
        assert_eq!(number(lengths[0]), b - a + 1, "Content-Range {range} and Content-Length disagree");
        if !head_only {
            assert!(
                f.contents.iter().any(|c| c.len() as u64 == size && c[a as usize..=b as usize] == *body),
                "206 body is not bytes {a}-{b} of a {size}-byte file"
            );
        }
    }
    // The secret is high bytes only: look up just the runs of 8 such bytes.
    if code == 206
        && !head_only
        && let [ct] = header(resp.headers, "content-type")[..]
        && let Some(boundary) = ct.strip_prefix(b"multipart/byteranges; boundary=")
    {
        check_multipart(f, body, boundary);
    }
    for w in response.windows(8).filter(|w| w.iter().all(|&b| b >= 0x80)) {
        let key = u64::from_le_bytes(w.try_into().unwrap());
        if f.secret_windows.contains(&key) {
            assert!(input.windows(8).any(|i| i == w), "the secret leaked: {:?}", String::from_utf8_lossy(response));
        }
    }
}

/// A `multipart/byteranges` body: parts of one file, each with its `Content-Range`
/// and exactly those bytes, then the closing delimiter.
fn check_multipart(f: &Fixture, mut body: &[u8], boundary: &[u8]) {
    let delimiter = [b"\r\n--", boundary].concat();
    let mut parts = 0;
    loop {
        body = body.strip_prefix(&delimiter[..]).expect("a part delimiter");
        if body == b"--\r\n" {
            break;
        }
        body = body.strip_prefix(b"\r\n").expect("CRLF after the delimiter");
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let Ok(httparse::Status::Complete((n, headers))) = httparse::parse_headers(body, &mut headers) else {
            panic!("part headers do not parse: {:?}", String::from_utf8_lossy(body));
        };
        let range = header(headers, "content-range");
        let range = std::str::from_utf8(range[0]).unwrap().strip_prefix("bytes ").expect("part Content-Range");
        let (span, size) = range.split_once('/').unwrap();
        let (a, b) = span.split_once('-').unwrap();
        let (a, b, size) = (number(a.as_bytes()) as usize, number(b.as_bytes()) as usize, number(size.as_bytes()));
        let bytes = &body[n..n + (b - a + 1)];
        assert!(
            f.contents.iter().any(|c| c.len() as u64 == size && c[a..=b] == *bytes),
            "part {a}-{b}/{size} holds other bytes"
        );
        body = &body[n + bytes.len()..];
        parts += 1;
    }
    assert!(parts >= 2, "a multipart reply of {parts} part");
}

fuzz_target!(|data: &[u8]| {
    let [options, splits, rest @ ..] = data else { return };
    let n = usize::from(splits & 7);
    if rest.len() < 2 * n {
        return;
    }
    let (points, stream) = rest.split_at(2 * n);
    let f = fixture();
    let (files, max_headers) = &f.files[usize::from(options % 3)];
    let max_input = [96, 512, 8192][usize::from(options / 3 % 3)];
    let segment = [1024, 8192][usize::from(options / 9 % 2)];
    let mut cuts: Vec<usize> =
        points.chunks(2).map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    let mut conn = Connection::new(files, segment, max_input).expect("connection");
    let mut events = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        conn.receive(&stream[from..cut], &mut events);
        from = cut;
    }
    for e in &events {
        match e {
            Event::Reply { request, response, close, later } => {
                assert!(!later, "StaticFiles answers at once");
                check_reply(f, *max_headers, stream, request, response, *close);
            }
            Event::Later { .. } => panic!("StaticFiles answers at once"),
            Event::Closed(CloseReason::ReplyFailed) if segment < 8192 => {}
            Event::Closed(why) => panic!("closed without a reply: {why:?}"),
        }
    }
});
