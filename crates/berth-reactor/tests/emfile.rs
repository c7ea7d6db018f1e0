//! Accept under descriptor exhaustion: in a child process with a tiny RLIMIT_NOFILE,
//! accept hits EMFILE, backs off (counted, no spinning), and resumes accepting every
//! waiting connection once descriptors are freed.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_ops::OpKind;
use berth_reactor::{Completion, CompletionPort, ListenOptions};

const CONNECTIONS: usize = 20;
const CHILD_ENV: &str = "BERTH_EMFILE_CHILD";
/// How long the child keeps its descriptors while accept backs off, measuring its CPU.
const BACKOFF_WINDOW: Duration = Duration::from_millis(300);

/// This process's CPU time (all threads, user and system).
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[test]
fn accept_backs_off_on_emfile_and_recovers() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "emfile_child", "--nocapture", "--ignored", "--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        // The harness may print "test emfile_child ... " on the same line.
        if let Some(at) = line.find("listening on ") {
            addr = Some(line[at + 13..].trim().parse::<std::net::SocketAddr>().unwrap());
            break;
        }
        line.clear();
    }
    let addr = addr.expect("child printed its address");
    // The kernel completes these handshakes into the backlog even while the child
    // cannot accept them.
    let clients: Vec<_> = (0..CONNECTIONS).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    drop(clients);
    assert!(status.success(), "child failed: {rest}");
    let report = rest.lines().find_map(|l| l.find("ok accepted=").map(|at| &l[at..])).expect("child report");
    let field = |name: &str| report.split(name).nth(1).and_then(|v| v.split_whitespace().next()).unwrap();
    let backoffs: u64 = field("backoffs=").parse().unwrap();
    eprintln!("child: {report}");
    assert!(backoffs >= 1, "EMFILE never happened: {report}");
    // Exponential back-off: a handful of retries, not a spinning core.
    assert!(backoffs < 100, "accept spun: {report}");
}

/// The child side; does nothing unless started by the test above.
#[test]
#[ignore]
fn emfile_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut port = CompletionPort::builder().ops(64).max_sockets(64).build(|_| ()).unwrap();
    let listener = port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
    let addr = port.local_addr(listener).unwrap();
    // Room for only a few accepted sockets.
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let limit = rustix::process::Rlimit { current: Some(open + 4), maximum: None };
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    rustix::process::setrlimit(rustix::process::Resource::Nofile, rustix::process::Rlimit { maximum: hard, ..limit })
        .unwrap();
    let accept = port.take_op().unwrap();
    port.accept(listener, accept).unwrap();
    println!("listening on {addr}");

    let mut held = Vec::new();
    let mut released = false;
    let mut backing_off: Option<(Instant, Duration)> = None;
    let mut cpu_share = 0.0;
    let mut accepted = 0;
    let mut batch = Vec::with_capacity(64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted < CONNECTIONS && Instant::now() < deadline {
        port.wait(&mut batch, Some(Duration::from_millis(20))).unwrap();
        for c in batch.drain(..) {
            if let Completion::Op { kind: OpKind::Accept, result: Ok(_), socket, .. } = c {
                accepted += 1;
                held.push(socket);
                port.accept(listener, accept).unwrap();
            }
        }
        if !released && port.stats().accept_backoffs >= 1 && backing_off.is_none() {
            backing_off = Some((Instant::now(), cpu_time()));
        }
        let waited_enough = backing_off.is_some_and(|(at, _)| at.elapsed() >= BACKOFF_WINDOW);
        if !released && port.stats().accept_backoffs >= 2 && waited_enough {
            // While it backed off, the port slept: well under half a core.
            let (at, cpu) = backing_off.unwrap();
            cpu_share = (cpu_time() - cpu).as_secs_f64() / at.elapsed().as_secs_f64();
            assert!(cpu_share < 0.5, "the port spun while backing off: {:.0}% of a core", cpu_share * 100.0);
            // Free the descriptors: accepting must resume on its own.
            for s in held.drain(..) {
                port.close(s).unwrap();
            }
            released = true;
        } else if released {
            for s in held.drain(..) {
                port.close(s).unwrap();
            }
        }
    }
    let stats = port.stats();
    println!(
        "ok accepted={accepted} backoffs={} cpu_while_backing_off={:.1}%",
        stats.accept_backoffs,
        cpu_share * 100.0
    );
    assert_eq!(accepted, CONNECTIONS, "{stats:?}");
}
