//! Bad input and faults: ranges past the end or overflowing, empty files and ranges, a
//! file truncated by another handle mid-send, a peer that closes mid-send (including
//! under the default SIGPIPE disposition, in a child process). Each must end in a typed
//! error or a correct result, bounded in time.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use berth_sendfile::{ByteRange, FileSend, RangeError, SendFileError, send_file};
use common::*;

#[test]
fn range_past_end_of_file() {
    let tmp = TempFile::with_contents("past-end", &pattern(1000, 1));
    let file = tmp.open();
    assert!(matches!(
        FileSend::checked(&file, 0, 1001),
        Err(SendFileError::Range(RangeError::PastEnd { offset: 0, len: 1001, file_size: 1000 }))
    ));
    assert!(matches!(FileSend::checked(&file, 1001, 0), Err(SendFileError::Range(RangeError::PastEnd { .. }))));
    let (sender, _receiver) = pair();
    assert!(matches!(send_file(&sender, &file, 500..1001), Err(SendFileError::Range(RangeError::PastEnd { .. }))));
    assert!(matches!(send_file(&sender, &file, 1001..), Err(SendFileError::Range(RangeError::PastEnd { .. }))));
}

#[test]
fn offset_plus_len_overflow() {
    let tmp = TempFile::with_contents("overflow", &pattern(10, 2));
    let file = tmp.open();
    assert!(matches!(
        FileSend::checked(&file, u64::MAX, 1),
        Err(SendFileError::Range(RangeError::Overflow { offset: u64::MAX, len: 1 }))
    ));
    assert!(matches!(FileSend::checked(&file, 1, u64::MAX), Err(SendFileError::Range(RangeError::Overflow { .. }))));
    assert!(ByteRange::new(u64::MAX / 2 + 1, u64::MAX / 2 + 1).is_err());
    let (sender, _receiver) = pair();
    assert!(matches!(send_file(&sender, &file, 0..=u64::MAX), Err(SendFileError::Range(RangeError::Overflow { .. }))));
    // An unchecked range far beyond the file is a truncation, not an overflow or a hang.
    let mut send = FileSend::new(&file, ByteRange::new(u64::MAX / 4, 10).unwrap());
    let e = send.send_some(&sender, &mut [0u8; 64]).unwrap_err();
    assert!(matches!(e, SendFileError::Truncated { sent: 0, expected: 10 } | SendFileError::Io { .. }), "{e:?}");
}

#[test]
fn empty_file_and_zero_length_ranges() {
    let empty = TempFile::with_contents("empty", b"");
    let full = TempFile::with_contents("zero-len", &pattern(100, 3));
    let (sender, receiver) = pair();
    let reader = drain(receiver, 1024);
    for (tmp, offset) in [(&empty, 0), (&full, 0), (&full, 50), (&full, 100)] {
        let file = tmp.open();
        let mut send = FileSend::checked(&file, offset, 0).unwrap();
        let p = send.send_some(&sender, &mut []).unwrap();
        assert_eq!(p, berth_sendfile::Progress { sent: 0, sent_total: 0, remaining: 0, done: true });
        assert_eq!(send.send_all(&sender, &mut []).unwrap(), 0);
        assert_eq!(
            FileSend::whole(&tmp.open()).unwrap().send_all(&sender, &mut []).unwrap(),
            tmp.open().metadata().unwrap().len()
        );
        assert_eq!(send_file(&sender, &file, offset..offset).unwrap(), 0);
    }
    drop(sender);
    // Only the two whole-file sends of `full` produced bytes.
    assert_eq!(join(reader).len(), 300);
}

/// How long a test waits to see that held bytes stay held, and how long held bytes
/// may take to arrive once released. Both are below the ~200 ms after which Linux
/// sends corked or `MSG_MORE` data anyway, so that timer cannot pass for a flush.
const HOLD: Duration = Duration::from_millis(150);

/// With an empty body, the header must not be held back by MSG_MORE: it has to arrive
/// on its own, without the sender closing or sending anything else — and before the
/// kernel's ~200 ms cork timer would release it anyway, or the test proves nothing.
///
/// Proven by mutation: `send_header` always passing `MSG_MORE` fails it (the read
/// times out).
#[test]
fn header_with_empty_body_is_not_held_back() {
    let tmp = TempFile::with_contents("header-empty", b"");
    let file = tmp.open();
    let (sender, mut receiver) = pair();
    let mut send = FileSend::whole(&file).unwrap();
    let header = b"HTTP/1.1 204 No Content\r\n\r\n";
    assert_eq!(send.send_header(&sender, header).unwrap(), header.len());
    receiver.set_read_timeout(Some(HOLD)).unwrap();
    let mut got = vec![0u8; header.len()];
    receiver.read_exact(&mut got).expect("the header was held back"); // times out if held
    assert_eq!(got, header);
}

/// With a body, the header is held (`MSG_MORE`) and leaves with the first body
/// bytes: nothing arrives after the header alone, and the first read after the body
/// starts returns the header and body bytes together.
///
/// Proven by mutation: `send_header` never passing `MSG_MORE` fails it (the
/// header arrives alone).
#[test]
fn header_and_first_body_bytes_leave_together() {
    let body = pattern(1000, 9);
    let tmp = TempFile::with_contents("header-body", &body);
    let file = tmp.open();
    let (sender, mut receiver) = pair();
    let mut send = FileSend::whole(&file).unwrap();
    let header = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    assert_eq!(send.send_header(&sender, header).unwrap(), header.len());
    receiver.set_read_timeout(Some(HOLD)).unwrap();
    let mut buf = vec![0u8; 4096];
    match receiver.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the header left alone, before any body byte: {other:?}"),
    }
    assert!(send.send_some(&sender, &mut []).unwrap().done);
    let n = receiver.read(&mut buf).expect("header and body after the body was sent");
    assert!(n > header.len(), "the first read held {n} bytes: the header without body bytes");
    assert_eq!(&buf[..header.len()], header);
    assert_eq!(&buf[header.len()..n], &body[..n - header.len()]);
}

/// Checks what the peer received from a file that was cut to `cut` bytes mid-send.
///
/// The copy fallback sends a snapshot: every byte must match. sendfile does not: bytes it
/// handed to the kernel are page-cache references until they leave, and truncation zeroes
/// the rest of the page (folio, which can be large) that holds the new end of file. So
/// with sendfile, bytes below `cut` must match and bytes at or past it must be either the
/// original or zero; never anything else, never from another offset.
fn check_received(got: &[u8], data: &[u8], cut: u64, fallback: bool) {
    let cut = (cut as usize).min(got.len());
    if let Some(i) = got[..cut].iter().zip(data).position(|(a, b)| a != b) {
        panic!("byte {i} below the cut differs: got {} expected {}", got[i], data[i]);
    }
    for (i, (&a, &b)) in got.iter().zip(data).enumerate().skip(cut) {
        let ok = a == b || (!fallback && a == 0);
        assert!(ok, "byte {i} past the cut ({cut}, fallback {fallback}): got {a} expected {b}");
    }
}

/// The file is truncated through another handle after part of it went out; the send
/// must stop with `Truncated` and the exact count, and every byte received is correct.
#[test]
fn truncated_by_another_handle_mid_send() {
    let data = pattern(4 << 20, 4);
    for fallback in [false, true] {
        for cut in [1 << 20, 100_000] {
            let tmp = TempFile::with_contents("truncated", &data);
            let file = tmp.open();
            let (sender, receiver) = pair();
            let reader = drain(receiver, 64 << 10);
            let mut send = FileSend::whole(&file).unwrap().chunk_cap(256 << 10).force_fallback(fallback);
            let mut scratch = vec![0u8; 64 << 10];
            let mut sent = 0;
            while sent < 256 << 10 {
                sent = send.send_some(&sender, &mut scratch).unwrap().sent_total;
            }
            tmp.open_rw().set_len(cut).unwrap();
            let e = send.send_all(&sender, &mut scratch).unwrap_err();
            let expect_sent = cut.max(sent);
            match e {
                SendFileError::Truncated { sent, expected } => {
                    assert_eq!((sent, expected), (expect_sent, data.len() as u64), "fallback {fallback} cut {cut}")
                }
                other => panic!("fallback {fallback} cut {cut}: expected Truncated, got {other:?}"),
            }
            assert_eq!(send.progress().sent_total, expect_sent);
            drop(sender);
            let got = join(reader);
            assert_eq!(got.len() as u64, expect_sent);
            check_received(&got, &data, cut, fallback);
            // Calling again after the error reports it again rather than looping.
            let (s2, _r2) = pair();
            assert!(matches!(send.send_some(&s2, &mut scratch), Err(SendFileError::Truncated { .. })));
        }
    }
}

/// Truncation racing with the send from another thread: whatever the interleaving, the
/// send ends (done or `Truncated`) and the received bytes are a prefix of the file.
#[test]
fn truncated_concurrently() {
    let data = pattern(8 << 20, 5);
    for (round, fallback) in [(0, false), (1, true), (2, false), (3, true)] {
        let tmp = TempFile::with_contents("race", &data);
        let file = tmp.open();
        let (sender, receiver) = pair();
        let reader = drain(receiver, 64 << 10);
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let cutter = {
            let rw = tmp.open_rw();
            std::thread::spawn(move || {
                let _ = go_rx.recv_timeout(STEP);
                rw.set_len(1 << (20 + round)).unwrap();
            })
        };
        let mut send = FileSend::whole(&file).unwrap().chunk_cap(128 << 10).force_fallback(fallback);
        let mut scratch = vec![0u8; 32 << 10];
        let first = send.send_some(&sender, &mut scratch).unwrap();
        go_tx.send(()).unwrap();
        let result = send.send_all(&sender, &mut scratch);
        cutter.join().unwrap();
        let sent = match result {
            Ok(n) => n,
            Err(SendFileError::Truncated { sent, .. }) => sent,
            Err(e) => panic!("round {round}: {e:?}"),
        };
        assert!(sent >= first.sent_total);
        drop(sender);
        let got = join(reader);
        assert_eq!(got.len() as u64, sent);
        check_received(&got, &data, 1 << (20 + round), fallback);
    }
}

/// A range longer than the file from the start: stops at the end with `Truncated`.
#[test]
fn file_shorter_than_unchecked_range() {
    let data = pattern(10_000, 6);
    let tmp = TempFile::with_contents("short", &data);
    let file = tmp.open();
    for fallback in [false, true] {
        let (sender, receiver) = pair();
        let reader = drain(receiver, 8192);
        let mut send = FileSend::new(&file, ByteRange::new(1000, 20_000).unwrap()).force_fallback(fallback);
        match send.send_all(&sender, &mut [0u8; 4096]) {
            Err(SendFileError::Truncated { sent: 9000, expected: 20_000 }) => {}
            other => panic!("{other:?}"),
        }
        drop(sender);
        assert!(join(reader) == data[1000..]);
    }
}

/// Runs a peer-close scenario: the receiver reads a little, then closes with data
/// unread (an RST). The sender must get `PeerClosed`, then keep getting a typed error.
fn peer_closes_mid_send(fallback: bool) {
    // Sparse: contents do not matter, only that it is far larger than socket buffers.
    let tmp = TempFile::new("peer-close");
    std::fs::File::create(&tmp.path).unwrap().set_len(64 << 20).unwrap();
    let file = tmp.open();
    let (sender, mut receiver) = pair();
    let closer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        receiver.read_exact(&mut buf).unwrap();
        drop(receiver);
    });
    let mut send = FileSend::whole(&file).unwrap().force_fallback(fallback);
    let mut scratch = vec![0u8; 64 << 10];
    let e = send.send_all(&sender, &mut scratch).unwrap_err();
    closer.join().unwrap();
    assert!(matches!(e, SendFileError::PeerClosed { .. }), "fallback {fallback}: {e:?}");
    let sent = send.progress().sent_total;
    assert!((64 << 10..64 << 20).contains(&sent));
    // Again: now EPIPE (the RST was already reported), still typed, still no signal.
    let e = send.send_some(&sender, &mut scratch).unwrap_err();
    assert!(matches!(e, SendFileError::PeerClosed { reset: false, .. }), "fallback {fallback}: {e:?}");
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::BrokenPipe);
}

/// Sending after our own `shutdown(Write)` is EPIPE from sendfile/send, every time; and
/// write(2) to a pipe whose reader has gone is EPIPE too. Each raises SIGPIPE unless
/// suppressed.
fn epipe_everywhere() {
    let tmp = TempFile::with_contents("epipe", &pattern(100_000, 7));
    let file = tmp.open();
    for fallback in [false, true] {
        let (sender, _receiver) = pair();
        sender.shutdown(Shutdown::Write).unwrap();
        let mut send = FileSend::whole(&file).unwrap().force_fallback(fallback);
        let e = send.send_some(&sender, &mut [0u8; 4096]).unwrap_err();
        assert!(matches!(e, SendFileError::PeerClosed { sent: 0, reset: false }), "{e:?}");
        let mut header = FileSend::whole(&file).unwrap();
        assert!(matches!(header.send_header(&sender, b"x"), Err(SendFileError::PeerClosed { .. })));
        // Output is a pipe with no reader: sendfile, then write(2) after ENOTSOCK.
        let (pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
        drop(pipe_r);
        let mut send = FileSend::whole(&file).unwrap().force_fallback(fallback);
        let e = send.send_some(&pipe_w, &mut [0u8; 4096]).unwrap_err();
        assert!(matches!(e, SendFileError::PeerClosed { .. }), "pipe, fallback {fallback}: {e:?}");
    }
}

#[test]
fn peer_closes_mid_send_sendfile() {
    peer_closes_mid_send(false);
}

#[test]
fn peer_closes_mid_send_fallback() {
    peer_closes_mid_send(true);
}

#[test]
fn epipe_is_a_typed_error() {
    epipe_everywhere();
}

const CHILD_ENV: &str = "BERTH_SENDFILE_SIGPIPE_CHILD";

/// The test harness, like every Rust binary, ignores SIGPIPE, which would hide a
/// SIGPIPE raised by sendfile(2). So this test re-runs itself in a child process that
/// restores the default disposition (terminate) and does every EPIPE scenario there:
/// the child survives only if the crate kept SIGPIPE from being delivered.
#[test]
fn no_sigpipe_under_default_disposition() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // SAFETY: setting SIGPIPE to SIG_DFL in this (child) process, which runs only
        // this test (--exact, one thread); no handler is involved.
        let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        assert_ne!(old, libc::SIG_ERR);
        epipe_everywhere();
        peer_closes_mid_send(false);
        peer_closes_mid_send(true);
        // Still alive, and no SIGPIPE left pending to kill us later.
        std::io::stdout().write_all(b"child survived\n").unwrap();
        return;
    }
    run_in_child("no_sigpipe_under_default_disposition");
}

/// A binary's promise ([`berth_sendfile::keep_sigpipe_ignored`]) that SIGPIPE stays
/// ignored makes sends skip the disposition check; the call itself must set the
/// disposition, so a process that had SIGPIPE's default action survives every EPIPE.
#[test]
fn keep_sigpipe_ignored_sets_it_for_good() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // SAFETY: as above: the child runs only this test, on one thread.
        let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        assert_ne!(old, libc::SIG_ERR);
        berth_sendfile::keep_sigpipe_ignored().expect("sigaction");
        // SAFETY: a query (null new action) into a zeroed, valid out-parameter.
        let ignored = unsafe {
            let mut now: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut now) == 0 && now.sa_sigaction == libc::SIG_IGN
        };
        assert!(ignored, "keep_sigpipe_ignored left SIGPIPE's disposition as it was");
        epipe_everywhere();
        peer_closes_mid_send(false);
        std::io::stdout().write_all(b"child survived\n").unwrap();
        return;
    }
    run_in_child("keep_sigpipe_ignored_sets_it_for_good");
}

/// Runs test `name` alone in a child process with [`CHILD_ENV`] set; fails unless
/// the child exits cleanly (not by a signal) and says it survived.
fn run_in_child(name: &str) {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the child we spawned; it has not been reaped (the
            // waiter thread is still blocked in wait), so the pid is still ours.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("child did not finish within 60 s");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), None, "child killed by signal; stderr:\n{stderr}");
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("child survived"), "{stdout}");
}
