//! The built `berth` binary: `serve DIR --addr 127.0.0.1:0` prints its banner with the
//! real address, serves the directory's index.html, prints its metrics on SIGUSR1,
//! and exits 0 on SIGINT; run in the checkout without DIR (the README's first
//! command), it answers `/` with the checkout's own index.html.

use rustix::process::Signal;

mod common;

use common::{banner_addr, get_close, signal, start, start_capturing, start_in, wait_exit, wait_for_line};

#[test]
fn serve_banner_get_and_sigint() {
    let dir = std::env::temp_dir().join(format!("berth-cli-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>berth cli</h1>").unwrap();

    let (child, banner, stderr) =
        start_capturing(&["serve", dir.to_str().unwrap(), "--addr", "127.0.0.1:0", "--workers", "1", "--log", "warn"]);
    let expected = format!("berth: serving {} on http://127.0.0.1:", dir.display());
    assert!(banner.starts_with(&expected), "banner: {banner:?}");
    // The banner names the driver the ports run on.
    let driver = if banner.trim_end().ends_with("/ (1 worker, uring)") { "uring" } else { "epoll" };
    assert!(banner.trim_end().ends_with(&format!("/ (1 worker, {driver})")), "banner: {banner:?}");

    let response = get_close(banner_addr(&banner), "/");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\n<h1>berth cli</h1>"), "{response}");

    // Workers publish their counters after each batch of completions, so a snapshot
    // may trail what the client has already seen by one batch: ask again (bounded)
    // until the reply shows.
    let mut stats = String::new();
    for _ in 0..50 {
        signal(&child, Signal::USR1);
        stats = wait_for_line(&stderr, "berth: conns open=");
        if stats.contains("replies=1 ") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(stats.contains("accepted=1 ") && stats.contains("replies=1 "), "stats after SIGUSR1: {stats}");
    assert!(stats.contains(&format!(" driver={driver} ")), "stats after SIGUSR1: {stats}");

    signal(&child, Signal::INT);
    let status = wait_exit(child);
    assert!(status.success(), "exit status {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's first command, as a newcomer runs it: `berth serve` in the checkout
/// (no DIR: the current directory) answers `/` with the checkout's index.html.
#[test]
fn serve_in_the_checkout_answers_slash_with_its_index_html() {
    let checkout = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let index = std::fs::read_to_string(checkout.join("index.html")).expect("index.html at the checkout's top");
    let (child, banner, _stderr) =
        start_in(Some(&checkout), &["serve", "--addr", "127.0.0.1:0", "--workers", "1", "--log", "warn"]);
    assert!(banner.starts_with("berth: serving . on http://127.0.0.1:"), "banner: {banner:?}");

    let response = get_close(banner_addr(&banner), "/");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("Content-Type: text/html"), "{response}");
    assert!(response.ends_with(&format!("\r\n\r\n{index}")), "{response}");
    // The checkout's repository is not handed out, in any spelling.
    for hidden in ["/.git/config", "/%2egit/config", "/.git/HEAD", "/.git/", "/.gitignore"] {
        let response = get_close(banner_addr(&banner), hidden);
        assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n"), "{hidden}: {response}");
        assert!(!response.contains("[core]") && !response.contains("refs/"), "{hidden}: {response}");
    }

    signal(&child, Signal::INT);
    let status = wait_exit(child);
    assert!(status.success(), "exit status {status:?}");
}

/// The server's own log lines reach the binary's stderr through the subscriber
/// `--log` sets up: berth-server's `tracing::info!` on start names the address the
/// banner shows and the worker count.
///
/// Proven by mutation: the `info!` in `ServerBuilder::serve` removed fails it (no
/// such line within the bound).
#[test]
fn serve_logs_the_listening_address() {
    let dir = std::env::temp_dir().join(format!("berth-cli-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (child, banner, stderr) =
        start_capturing(&["serve", dir.to_str().unwrap(), "--addr", "127.0.0.1:0", "--workers", "1", "--log", "info"]);
    let addr = banner_addr(&banner);
    let line = wait_for_line(&stderr, "berth-server listening");
    assert!(line.contains(" INFO "), "level missing: {line}");
    assert!(line.contains(&format!("addr={addr}")), "address missing or not the banner's ({addr}): {line}");
    assert!(line.contains("workers=1"), "worker count missing: {line}");
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--driver` picks the completion ports' driver: `epoll` always runs; `uring` runs or
/// fails with the reason (never a silent fallback); anything else is refused.
#[test]
fn driver_flag_picks_the_driver() {
    let (child, banner) = start(&["echo", "--addr", "127.0.0.1:0", "--workers", "1", "--driver", "epoll"]);
    assert!(banner.trim_end().ends_with("(1 worker, epoll)"), "banner: {banner:?}");
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());

    // io_uring runs here, or the port says why not and the process exits: never a
    // silent fallback.
    let (mut child, banner, stderr) =
        start_capturing(&["echo", "--addr", "127.0.0.1:0", "--workers", "1", "--driver", "uring"]);
    if banner.is_empty() {
        assert!(!child.wait().unwrap().success());
        let why = wait_for_line(&stderr, "berth: ");
        assert!(why.contains("io_uring cannot run here"), "{why}");
    } else {
        assert!(banner.trim_end().ends_with("(1 worker, uring)"), "banner: {banner:?}");
        signal(&child, Signal::INT);
        assert!(wait_exit(child).success());
    }

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["echo", "--addr", "127.0.0.1:0", "--driver", "kqueue"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected auto, epoll or uring"), "{bad:?}");
}

#[test]
fn version_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth")).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("berth {}\n", env!("CARGO_PKG_VERSION")));
}

/// `--idle-timeout 1` reaches the server: a kept-alive connection left idle is closed
/// after about a second (the default would keep it for a minute, past this test's
/// read timeout). Bad header flags are refused before anything listens.
#[test]
fn timeout_and_header_flags() {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!("berth-cli-flags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "alpha").unwrap();
    let (child, banner, _stderr) = start_capturing(&[
        "serve",
        dir.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--log",
        "warn",
        "--idle-timeout",
        "1",
    ]);
    let mut s = std::net::TcpStream::connect(banner_addr(&banner)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let started = std::time::Instant::now();
    let mut all = Vec::new();
    let closed = s.read_to_end(&mut all).is_ok();
    assert!(closed, "closed by the idle timeout within 10 s: {}", String::from_utf8_lossy(&all));
    assert!(all.ends_with(b"alpha"));
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));
    signal(&child, Signal::INT);
    assert!(wait_exit(child).success());

    for bad in [
        ["--header", "Content-Length: 1"],
        ["--header", "X-A: 1\r\nX-B: 2"],
        ["--header", "no colon"],
        ["--header", "X A: 1"],
        ["--cache-control", "a\nb"],
        ["--idle-timeout", "0"],
        ["--backlog", "0"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", dir.to_str().unwrap(), "--addr", "127.0.0.1:0"])
            .args(bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(out.stdout.is_empty(), "{bad:?}: no banner, nothing listened");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
