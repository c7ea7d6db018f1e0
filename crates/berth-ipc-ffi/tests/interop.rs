//! Other languages against a Rust process, through the C ABI:
//! - the C test program (`tests/c/exchange.c`, compiled with the system `cc` and
//!   linked with the staticlib): a million messages each way, then `PeerDead`
//!   within 100 ms of a SIGKILL of the Rust side;
//! - the C example (`examples/c/echo_poll.c`, linked with the cdylib);
//! - the Python example (`examples/python/echo_client.py`, ctypes on the cdylib).
//!
//! The Rust side is this test binary re-executed as an echo peer (`helper`).
//! Without `cc` or `python3` a test is skipped, except under CI (`CI` set),
//! where it fails: CI must run them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_ipc::{Config, Duplex, RecvError};

/// The echo peer: creates the named duplex `BERTH_FFI_NAME` with wake
/// descriptors, says READY on stderr, and echoes every message until the other
/// side closes.
#[test]
#[ignore = "helper process, started by the other tests"]
fn helper() {
    let Ok(name) = std::env::var("BERTH_FFI_NAME") else { return };
    let duplex = Duplex::create_named(&name, &Config::new(1 << 16).wake_fds(true)).unwrap();
    let (mut tx, mut rx) = duplex.split();
    eprintln!("READY");
    loop {
        match rx.recv(None) {
            Ok(msg) => tx.send(&msg, None).unwrap(),
            Err(RecvError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Removes the duplex's files when dropped, whatever happened to the peer.
struct Echo {
    child: Child,
    name: String,
}

impl Echo {
    fn start(tag: &str) -> Echo {
        let name = format!("t-ffi-{tag}-{}", std::process::id());
        let _ = Duplex::unlink_named(&name);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "helper", "--nocapture", "--ignored", "--test-threads=1"])
            .env("BERTH_FFI_NAME", &name)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let ready = BufReader::new(err).lines().any(|l| l.is_ok_and(|l| l.trim() == "READY"));
        assert!(ready, "echo peer exited before READY: {:?}", child.wait());
        Echo { child, name }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Duplex::unlink_named(&self.name);
    }
}

/// A tool the test needs: `None` (skip) when it is missing, a failure under CI.
fn tool(name: &str) -> Option<&str> {
    if Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some(name);
    }
    assert!(std::env::var_os("CI").is_none(), "`{name}` is missing under CI: .ci/run installs it");
    eprintln!("SKIPPED: no `{name}` on this machine");
    None
}

/// Where `cargo test` just built this package's libraries: `deps/`, beside this
/// test binary (the copies one level up are only refreshed by `cargo build`, so
/// they may be stale).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().to_path_buf();
    for lib in ["libberth_ipc_ffi.a", "libberth_ipc_ffi.so"] {
        assert!(dir.join(lib).exists(), "no {lib} in {}", dir.display());
    }
    dir
}

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles `src` with the system C compiler into `out`, with warnings as errors.
fn compile(cc: &str, src: &str, out: &Path, link: &[&str]) {
    let status = Command::new(cc)
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-I"])
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join(src))
        .args(link)
        .arg("-o")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "{cc} failed on {src}");
}

/// Proven by mutation: the watcher thread not waking sleepers
/// (`Watcher::fire` returning at once) fails the 100 ms bound (the C side only
/// notices at its next backstop wake-up, most of a second later).
#[test]
fn c_test_program_exchanges_a_million_each_way_and_sees_peer_dead() {
    let Some(cc) = tool("cc") else { return };
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("berth-ffi-exchange");
    let lib = lib_dir().join("libberth_ipc_ffi.a");
    let lib = lib.to_str().unwrap();
    compile(cc, "tests/c/exchange.c", &exe, &[lib, "-lpthread", "-ldl", "-lm", "-lrt", "-lgcc_s"]);
    let count = std::env::var("BERTH_FFI_COUNT").unwrap_or_else(|_| "1000000".into());
    let mut echo = Echo::start("exchange");
    let mut c = Command::new(&exe).args([&echo.name, &count]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    let mut next = || lines.next().map(|l| l.unwrap()).unwrap_or_default();
    assert_eq!(next(), format!("EXCHANGED {count}"), "the C program failed: {:?}", c.wait());
    assert_eq!(next(), "WAITING");
    // Let it settle into its long sleeps (slices double from 10 ms: by 1.5 s the
    // next backstop wake-up is ~0.8 s away, so only the watcher thread can make
    // the 100 ms), then kill the Rust side as a crash would.
    std::thread::sleep(Duration::from_millis(1500));
    echo.child.kill().unwrap();
    let killed = Instant::now();
    let result = next();
    let took = killed.elapsed();
    echo.child.wait().unwrap();
    assert_eq!(result, "RESULT 5 peer process is dead");
    assert!(took < Duration::from_millis(100), "PeerDead after {took:?}");
    assert!(c.wait().unwrap().success());
}

#[test]
fn c_example_runs_against_a_rust_echo_peer() {
    let Some(cc) = tool("cc") else { return };
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("berth-ffi-echo-poll");
    let dir = lib_dir();
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    let libdir = format!("-L{}", dir.display());
    compile(cc, "examples/c/echo_poll.c", &exe, &[&libdir, "-lberth_ipc_ffi", &rpath]);
    let echo = Echo::start("poll");
    // `cargo test` puts target/<profile> on LD_LIBRARY_PATH, which outranks the
    // runpath: a stale copy of the library there would be loaded instead.
    let out = Command::new(&exe).args([&echo.name, "20000"]).env("LD_LIBRARY_PATH", &dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echoed 20000 messages\n");
}

#[test]
fn python_example_runs_against_a_rust_echo_peer() {
    let Some(python) = tool("python3") else { return };
    let so = lib_dir().join("libberth_ipc_ffi.so");
    let mut echo = Echo::start("python");
    // -B: no __pycache__ left in the source tree.
    let out = Command::new(python)
        .arg("-B")
        .arg(crate_dir().join("examples/python/echo_client.py"))
        .arg(&so)
        .arg(&echo.name)
        .arg("5000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    // The peer saw the close and exited by itself.
    assert!(echo.child.wait().unwrap().success());
}
