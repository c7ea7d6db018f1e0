//! Choosing the driver where io_uring is forbidden: in a child process whose seccomp
//! filter makes `io_uring_setup` fail with `EPERM` (as Docker's default profile
//! does), `Driver::Auto` runs on epoll and serves an echo, and `Driver::Uring` is a
//! typed error, never a silent fallback.

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use berth_ops::OpKind;
use berth_reactor::{Completion, CompletionPort, Driver, ListenOptions, UringUnavailable};

const CHILD_ENV: &str = "BERTH_SECCOMP_CHILD";

#[test]
fn io_uring_forbidden_by_seccomp() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", "seccomp_child", "--nocapture", "--ignored", "--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .env_remove("BERTH_DRIVER")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("seccomp child: epoll echo ok"), "{stdout}");
}

/// Makes `io_uring_setup` fail with EPERM in this thread (and threads it starts).
fn forbid_io_uring() {
    let filter = [
        // A = the syscall number.
        libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: 0 },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }, 0);
    // SAFETY: `prog` points at `filter`, both alive for the call; the kernel copies them.
    let r = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) };
    assert_eq!(r, 0, "installing the seccomp filter: {}", std::io::Error::last_os_error());
}

#[test]
#[ignore = "run by io_uring_forbidden_by_seccomp in a child process"]
fn seccomp_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    forbid_io_uring();

    let err = CompletionPort::builder().driver(Driver::Uring).build(|_| ()).expect_err("io_uring must be refused");
    assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
    let why = err.get_ref().and_then(|e| e.downcast_ref::<UringUnavailable>()).expect("a UringUnavailable inside");
    assert_eq!(why.during, "io_uring_setup");
    assert_eq!(why.source.raw_os_error(), Some(libc::EPERM));

    let mut port = CompletionPort::builder().driver(Driver::Auto).build(|_| ()).unwrap();
    assert_eq!(port.driver(), Driver::Epoll);
    assert_eq!(port.stats().driver, Driver::Epoll);
    let listener = port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
    let addr = port.local_addr(listener).unwrap();
    let op = port.take_op().unwrap();
    port.accept(listener, op).unwrap();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    client.write_all(b"hello").unwrap();
    let mut batch = Vec::with_capacity(8);
    let mut echoed = false;
    for _ in 0..200 {
        port.wait(&mut batch, Some(Duration::from_millis(50))).unwrap();
        for c in batch.drain(..) {
            let Completion::Op { kind, socket, result, .. } = c else { continue };
            match kind {
                OpKind::Accept => port.recv_pooled(socket, op).unwrap(),
                OpKind::Recv => {
                    let n = result.unwrap();
                    port.op_mut(op).unwrap().set_range(0..n).unwrap();
                    port.send(socket, op).unwrap();
                }
                OpKind::Send => echoed = true,
                _ => {}
            }
        }
        if echoed {
            break;
        }
    }
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    println!("seccomp child: epoll echo ok");
}
