//! `berth serve` as a real HTTP client sees it: curl downloads files byte for byte,
//! reuses one kept-alive connection for several URLs, gets HEAD, Range (one, several
//! as multipart/byteranges, 1,000 as the whole file), 304 (by date
//! and by ETag), 412, If-Range, OPTIONS, the `--header`s and `--cache-control` and
//! HTTP/1.0 right, and never gets a byte from outside the root whatever path it
//! sends (`--path-as-is` keeps curl from normalising `..` itself).
//!
//! Skipped, with a message saying so, when curl is not installed — except under CI
//! (the `CI` environment variable set and not empty, as `.ci/run` and CI services
//! set it), where a missing curl fails the test: `.ci/run` installs curl when it
//! runs as root, so a skip there would hide a broken setup.

use rustix::process::Signal;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{TIMEOUT, banner_addr, signal, start, wait_exit};

fn curl_installed() -> bool {
    Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Whether we run under CI, where nothing may be skipped for a missing tool.
fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Whether test `name` can run: curl is installed. Without it the test is skipped
/// (and says so), except under CI, where it fails.
fn curl_for(name: &str) -> bool {
    if curl_installed() {
        return true;
    }
    assert!(!under_ci(), "curl is not installed, and under CI (CI is set) {name} may not be skipped");
    eprintln!("SKIPPED {name}: curl is not installed (apt-get install curl)");
    false
}

/// Runs curl with a time limit on every transfer; `-s` quiet, `-S` errors shown.
fn curl(args: &[&str]) -> Output {
    let max = TIMEOUT.as_secs().to_string();
    Command::new("curl").args(["-sS", "--max-time", &max]).args(args).output().expect("run curl")
}

/// curl's `-w` output (stdout) for a request whose body goes to `-o /dev/null`.
fn curl_w(format: &str, args: &[&str]) -> String {
    let mut all = vec!["-o", "/dev/null", "-w", format];
    all.extend_from_slice(args);
    let out = curl(&all);
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(131) ^ (i >> 9)) as u8).collect()
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh scratch directory for test `name` (removed when the `Dir` drops): its
/// path, and the path of `root/` inside it, the directory to serve.
fn scratch(name: &str) -> (Dir, PathBuf, PathBuf) {
    let base = std::env::temp_dir().join(format!("berth-curl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    (Dir(base.clone()), base, root)
}

/// `root/` with files to serve, and a secret beside it that must never be served.
fn site() -> (Dir, PathBuf) {
    let (dir, base, root) = scratch("test");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>curl</h1>").unwrap();
    std::fs::write(root.join("big.bin"), pattern(3 << 20)).unwrap();
    std::fs::write(root.join("small.txt"), pattern(1000)).unwrap();
    std::fs::write(root.join("sub/page.html"), "<p>sub</p>").unwrap();
    std::fs::write(base.join("secret.txt"), "TOP-SECRET").unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join(".git/config"), "[core] TOP-SECRET").unwrap();
    std::os::unix::fs::symlink(base.join("secret.txt"), root.join("escape.txt")).unwrap();
    (dir, root)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn curl_against_berth_serve() {
    if !curl_for("curl_against_berth_serve") {
        return;
    }
    let (dir, root) = site();
    let (child, banner) = start(&[
        "serve",
        root.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--cache-control",
        "public, max-age=60",
        "--header",
        "X-Content-Type-Options: nosniff",
        "--header",
        "X-Berth-Test:  yes ",
        "--header-timeout",
        "10",
        "--idle-timeout",
        "30",
        "--write-timeout",
        "30",
        "--backlog",
        "64",
    ]);
    let addr = banner_addr(&banner);
    let url = |path: &str| format!("http://{addr}{path}");
    let out_dir = dir.0.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = |name: &str| out_dir.join(name);

    // Downloads, byte for byte, two of them over one kept-alive connection.
    let (big, small) = (out("big"), out("small"));
    let o = curl(&[
        "-w",
        "%{http_code} %{num_connects}\n",
        "-o",
        big.to_str().unwrap(),
        &url("/big.bin"),
        "-o",
        small.to_str().unwrap(),
        &url("/small.txt"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "200 1\n200 0\n", "two 200s, the second on the same connection");
    assert!(read(&big) == pattern(3 << 20), "big.bin differs");
    assert_eq!(read(&small), pattern(1000));

    // The directory's index.html, and a subdirectory's page.
    let o = curl(&[&url("/")]);
    assert_eq!(o.stdout, b"<h1>curl</h1>");
    let o = curl(&[&url("/sub/page.html")]);
    assert_eq!(o.stdout, b"<p>sub</p>");

    // Dotfiles are hidden, however the path is spelled (curl keeps `%2e` as sent).
    for path in ["/.git/config", "/%2egit/config", "/./.git/config", "/.git/"] {
        let o = curl(&["-w", "%{http_code}", "--path-as-is", &url(path)]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.ends_with("404") && !text.contains("TOP-SECRET"), "{path}: {text}");
    }

    // HEAD: the headers, no body.
    let o = curl(&["-I", &url("/big.bin")]);
    let head = String::from_utf8(o.stdout).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains(&format!("content-length: {}\r\n", 3 << 20)), "{head}");
    assert!(head.contains("accept-ranges: bytes\r\n"), "{head}");

    // A range, and a suffix range.
    let part = out("part");
    assert_eq!(curl_w("%{http_code}", &["-r", "1000-199999", &url("/big.bin")]), "206");
    let o = curl(&["-r", "1000-199999", "-o", part.to_str().unwrap(), &url("/big.bin")]);
    assert!(o.status.success());
    assert!(read(&part) == pattern(3 << 20)[1000..200_000], "range body differs");
    let o = curl(&["-r", "-100", &url("/small.txt")]);
    assert_eq!(o.stdout, &pattern(1000)[900..]);
    assert_eq!(curl_w("%{http_code}", &["-r", "5000-6000", &url("/small.txt")]), "416");

    // Several ranges: multipart/byteranges, each part's bytes right; past the cap of
    // 16, or overlapping, the whole file with 200 (no amplification).
    let o = curl(&["-D", "-", "-r", "0-9,500-509,-10", &url("/small.txt")]);
    let text = o.stdout.clone();
    let head_end = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&text[..head_end]).to_string();
    assert!(
        head.starts_with("HTTP/1.1 206 ") && head.contains("Content-Type: multipart/byteranges; boundary="),
        "{head}"
    );
    let body = &text[head_end..];
    let small = pattern(1000);
    for (range, bytes) in
        [("0-9/1000", &small[..10]), ("500-509/1000", &small[500..510]), ("990-999/1000", &small[990..])]
    {
        let at = body.windows(range.len()).position(|w| w == range.as_bytes()).unwrap_or_else(|| panic!("{range}"));
        let start = at + body[at..].windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(&body[start..start + 10], bytes, "{range}");
    }
    let many: Vec<String> = (0..1000).map(|i| format!("{i}-{i}")).collect();
    let many = many.join(",");
    for range in [many.as_str(), "0-99,50-149", "0-,0-"] {
        let o = curl(&["-w", "%{http_code}", "-r", range, &url("/small.txt")]);
        let (body, code) = o.stdout.split_at(o.stdout.len() - 3);
        assert_eq!((code, body), (&b"200"[..], small.as_slice()), "{}", &range[..range.len().min(30)]);
    }

    // If-Modified-Since from a file as new as the served one: 304, no body.
    let o = curl(&["-z", root.join("small.txt").to_str().unwrap(), "-w", "%{http_code}", &url("/small.txt")]);
    assert_eq!(o.stdout, b"304");

    // ETag revalidation: the tag from a HEAD, sent back as If-None-Match, gets a 304
    // (with the tag); another tag, or a weak form of ours for If-Match, does not.
    let o = curl(&["-I", &url("/small.txt")]);
    let head = String::from_utf8(o.stdout).unwrap();
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("ETag: ").or_else(|| l.strip_prefix("etag: ")))
        .unwrap_or_else(|| panic!("no ETag in {head}"))
        .trim()
        .to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let inm = format!("If-None-Match: {etag}");
    assert_eq!(curl_w("%{http_code}", &["-H", &inm, &url("/small.txt")]), "304");
    assert_eq!(curl_w("%{http_code}", &["-H", &format!("If-None-Match: \"x\", W/{etag}"), &url("/small.txt")]), "304");
    assert_eq!(curl_w("%{http_code}", &["-H", "If-None-Match: \"stale\"", &url("/small.txt")]), "200");
    assert_eq!(curl_w("%{http_code}", &["-H", "If-None-Match: garbage\u{7}", &url("/small.txt")]), "400");
    assert_eq!(curl_w("%{http_code}", &["-H", "If-Match: \"stale\"", &url("/small.txt")]), "412");
    let o = curl(&["-D", "-", "-o", "/dev/null", "-H", &inm, &url("/small.txt")]);
    let head = String::from_utf8(o.stdout).unwrap();
    assert!(head.starts_with("HTTP/1.1 304 ") && head.contains(&format!("ETag: {etag}\r\n")), "{head}");
    // A resumed download with If-Range: our tag gets the rest, a stale one the whole.
    let o = curl(&["-r", "900-", "-H", &format!("If-Range: {etag}"), &url("/small.txt")]);
    assert_eq!(o.stdout, &pattern(1000)[900..]);
    let o = curl(&["-r", "900-", "-H", "If-Range: \"stale\"", &url("/small.txt")]);
    assert_eq!(o.stdout, pattern(1000));

    // --cache-control and --header show up on files (and on the 304 above), with
    // charset=utf-8 on text.
    assert!(head.contains("Cache-Control: public, max-age=60\r\n"), "{head}");
    let o = curl(&["-D", "-", "-o", "/dev/null", &url("/sub/page.html")]);
    let head = String::from_utf8(o.stdout).unwrap();
    for line in [
        "Cache-Control: public, max-age=60\r\n",
        "X-Content-Type-Options: nosniff\r\n",
        "X-Berth-Test: yes\r\n",
        "Content-Type: text/html; charset=utf-8\r\n",
    ] {
        assert!(head.contains(line), "{line:?} in {head}");
    }

    // OPTIONS: 204 with Allow, for a path and for the server (`*`).
    let o = curl(&["-i", "-X", "OPTIONS", &url("/small.txt")]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
    assert!(text.contains("Allow: GET, HEAD, OPTIONS\r\n"), "{text}");
    assert_eq!(curl_w("%{http_code}", &["-X", "OPTIONS", "--request-target", "*", &url("/")]), "204");

    // HTTP/1.0: served, and the connection closed after the reply.
    let o = curl(&["--http1.0", "-i", &url("/small.txt")]);
    let text = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n") || text.starts_with("http/1.0 200 ok\r\n"), "{text}");
    assert!(o.stdout.ends_with(&pattern(1000)));

    // Not found, wrong method.
    assert_eq!(curl_w("%{http_code}", &[&url("/nope.txt")]), "404");
    assert_eq!(curl_w("%{http_code}", &["-X", "POST", "-d", "x", &url("/small.txt")]), "405");

    // Nothing from outside the root, however the path is spelled.
    for path in [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/sub/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/..%5csecret.txt",
        "/%00/../secret.txt",
        "/escape.txt",
    ] {
        let o = curl(&["--path-as-is", "-w", "\n%{http_code}", &url(path)]);
        let text = String::from_utf8_lossy(&o.stdout);
        let code = text.rsplit('\n').next().unwrap();
        assert!(matches!(code, "400" | "403" | "404"), "{path}: status {code}");
        assert!(!text.contains("TOP-SECRET"), "{path}: served the secret");
    }

    signal(&child, Signal::INT);
    let status = wait_exit(child);
    assert!(status.success(), "exit status {status:?}");
}

/// `--index`, `--fallback` and `--not-found`: a missing path gets the app, a
/// refused one (hidden, escaping) keeps its status, and a 404 has the custom page.
#[test]
fn curl_routing_options() {
    if !curl_for("curl_routing_options") {
        return;
    }
    let (dir, base, root) = scratch("routing");
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join(".git/config"), "TOP-SECRET").unwrap();
    std::fs::write(base.join("x"), "TOP-SECRET").unwrap();
    std::fs::write(root.join("app.html"), "<div id=app>").unwrap();
    std::fs::write(root.join("docs/start.htm"), "start").unwrap();
    // Served to a missing path under --not-found only; --fallback wins there.
    std::fs::write(root.join("404.html"), "<h1>custom 404</h1>").unwrap();

    // A fallback that leaves the root is refused at start.
    let mut refused = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", root.to_str().unwrap(), "--addr", "127.0.0.1:0", "--fallback", "../x"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = refused.kill();
            let _ = refused.wait();
            panic!("berth serve --fallback ../x kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success() && stderr.contains("--fallback"), "{status:?}: {stderr}");

    let root_s = root.to_str().unwrap();
    let common = ["--addr", "127.0.0.1:0", "--workers", "1"];
    let mut args = vec!["serve", root_s, "--index", "index.html", "--index", "start.htm", "--fallback", "app.html"];
    args.extend(common);
    let (child, banner) = start(&args);
    let url = |addr: std::net::SocketAddr, path: &str| format!("http://{addr}{path}");
    let addr = banner_addr(&banner);
    assert_eq!(curl(&[&url(addr, "/docs/")]).stdout, b"start");
    for path in ["/some/route", "/missing.js", "/docs/nothing"] {
        let o = curl(&["-w", " %{http_code}", &url(addr, path)]);
        assert_eq!(String::from_utf8_lossy(&o.stdout), "<div id=app> 200", "{path}");
    }
    for (path, code) in [("/.git/config", "404"), ("/%2egit/config", "404"), ("/../x", "403"), ("/%2e%2e/x", "403")] {
        let o = curl(&["--path-as-is", "-w", "\n%{http_code}", &url(addr, path)]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.ends_with(code) && !text.contains("id=app") && !text.contains("TOP-SECRET"), "{path}: {text}");
    }
    signal(&child, Signal::TERM);
    assert!(wait_exit(child).success());

    // --precompressed: the sidecar for a client that takes it, with its encoding;
    // one that is older than its file, or a symlink out of the root, is not served.
    std::fs::write(root.join("app.html.gz"), "GZ").unwrap();
    std::fs::write(base.join("outside.gz"), "TOP-SECRET").unwrap();
    std::fs::write(root.join("page.txt"), "plain page").unwrap();
    std::os::unix::fs::symlink(base.join("outside.gz"), root.join("page.txt.gz")).unwrap();
    std::fs::write(root.join("stale.txt.br"), "STALE").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(root.join("stale.txt"), "fresh").unwrap();
    let mut args = vec!["serve", root_s, "--precompressed"];
    args.extend(common);
    let (child, banner) = start(&args);
    let addr = banner_addr(&banner);
    let o = curl(&["-D", "-", "-H", "Accept-Encoding: br;q=0.9, gzip", &url(addr, "/app.html")]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Content-Encoding: gzip\r\n") && text.contains("Vary: Accept-Encoding\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nGZ"), "{text}");
    let long = format!("Accept-Encoding: {}gzip", "unknown;q=0.5, ".repeat(8 * 1024 / 15 + 1));
    assert_eq!(curl_w("%{http_code}", &["-H", &long, &url(addr, "/app.html")]), "431", "8 KiB does not fit the head");
    for (path, body) in [("/page.txt", "plain page"), ("/stale.txt", "fresh")] {
        let o = curl(&["-H", "Accept-Encoding: br, gzip", &url(addr, path)]);
        assert_eq!(String::from_utf8_lossy(&o.stdout), body, "{path}");
    }
    signal(&child, Signal::TERM);
    assert!(wait_exit(child).success());

    let mut args = vec!["serve", root_s, "--not-found", "404.html"];
    args.extend(common);
    let (child, banner) = start(&args);
    let addr = banner_addr(&banner);
    let o = curl(&["-w", " %{http_code} %{content_type}", &url(addr, "/nope")]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "<h1>custom 404</h1> 404 text/html; charset=utf-8");
    signal(&child, Signal::TERM);
    assert!(wait_exit(child).success());
    drop(dir);
}

/// `--access-log FILE`: one combined-format line per request with the request time;
/// SIGHUP after a logrotate-style rename reopens the file and the server keeps
/// serving; SIGTERM still drains and exits 0 with every line written. Without an
/// access log, SIGHUP no longer ends the process.
#[test]
fn curl_access_log_and_sighup() {
    if !curl_for("curl_access_log_and_sighup") {
        return;
    }
    let (dir, base, root) = scratch("access");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.txt"), "0123456789").unwrap();
    let log = base.join("access.log");
    let (child, banner, stderr) = common::start_capturing(&[
        "serve",
        root.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--access-log",
        log.to_str().unwrap(),
    ]);
    let addr = banner_addr(&banner);
    let lines =
        |path: &Path| std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>();
    let wait_lines = |path: &Path, n: usize| {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while lines(path).len() < n {
            assert!(std::time::Instant::now() < deadline, "{} lines in {}", n, path.display());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let o = curl(&["-A", "curl-test \"quoted\"", "-e", "http://ref/", &format!("http://{addr}/a.txt")]);
    assert_eq!(o.stdout, b"0123456789");
    wait_lines(&log, 1);
    let first = &lines(&log)[0];
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(
        first.contains("] \"GET /a.txt HTTP/1.1\" 200 10 \"http://ref/\" \"curl-test \\x22quoted\\x22\" "),
        "{first}"
    );

    let rotated = base.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    signal(&child, Signal::HUP);
    common::wait_for_line(&stderr, "access log reopened");
    assert_eq!(curl_w("%{http_code}", &[&format!("http://{addr}/nope")]), "404");
    signal(&child, Signal::TERM);
    assert!(wait_exit(child).success());
    assert_eq!(lines(&rotated).len(), 1);
    let after = lines(&log);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].contains("\"GET /nope HTTP/1.1\" 404 "), "{after:?}");

    // No access log: SIGHUP is logged and ignored.
    let (child, banner) = start(&["serve", root.to_str().unwrap(), "--addr", "127.0.0.1:0", "--workers", "1"]);
    let addr = banner_addr(&banner);
    signal(&child, Signal::HUP);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(curl(&[&format!("http://{addr}/a.txt")]).stdout, b"0123456789", "still serving after SIGHUP");
    signal(&child, Signal::TERM);
    assert!(wait_exit(child).success());
    drop(dir);
}

/// `--list`: curl gets a directory's listing (chunked, decoded by curl), directories
/// first, names escaped, hidden entries only with `--hidden`; a directory with an
/// index still gets the index, and without `--list` a directory is a 404.
#[test]
fn curl_directory_listing() {
    if !curl_for("curl_directory_listing") {
        return;
    }
    let (dir, _base, root) = scratch("list");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("site")).unwrap();
    std::fs::write(root.join("site/index.html"), "<h1>site</h1>").unwrap();
    std::fs::write(root.join("b.txt"), "bb").unwrap();
    std::fs::write(root.join("<img src=x onerror=alert(1)>"), "x").unwrap();
    std::fs::write(root.join(".env"), "TOP-SECRET").unwrap();
    let args = |extra: &[&'static str]| {
        let mut v = vec!["serve", root.to_str().unwrap(), "--addr", "127.0.0.1:0", "--workers", "1", "--log", "warn"];
        v.extend_from_slice(extra);
        v.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |extra: &[&'static str]| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        start(&a)
    };

    let (child, banner) = run(&["--list"]);
    let base = format!("http://{}", banner_addr(&banner));
    let out = curl(&["-D", "-", &format!("{base}/")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains("Transfer-Encoding: chunked"), "{page}");
    let links: Vec<&str> = page.split("<a href=\"").skip(1).map(|r| &r[..r.find('"').unwrap()]).collect();
    assert_eq!(links, ["./site/", "./sub/", "./%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E", "./b.txt"], "{page}");
    assert!(!page.contains("<img") && page.contains("&lt;img src=x onerror=alert(1)&gt;"), "{page}");
    assert!(!page.contains(".env"), "{page}");
    // Each link works as curl sends it.
    assert_eq!(curl_w("%{http_code}", &[&format!("{base}/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E")]), "200");
    let index = curl(&[&format!("{base}/site/")]);
    assert_eq!(index.stdout, b"<h1>site</h1>");
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());

    let (child, banner) = run(&["--list", "--hidden"]);
    let out = curl(&[&format!("http://{}/", banner_addr(&banner))]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("./.env"), "--hidden lists dotfiles");
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());

    let (child, banner) = run(&[]);
    assert_eq!(curl_w("%{http_code}", &[&format!("http://{}/sub/", banner_addr(&banner))]), "404");
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());
    drop(dir);
}
