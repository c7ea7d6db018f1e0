//! Helpers shared by the integration tests: temp files that clean up after themselves,
//! loopback socket pairs with timeouts, a draining reader thread, and a bounded wait
//! for writability. Every wait here has a deadline, so a bug fails a test, never hangs it.

#![allow(dead_code, unreachable_pub)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use berth_sendfile::SendFileError;

/// How long any single blocking step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(20);

/// A file under `std::env::temp_dir()` with a unique name, removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(tag: &str) -> TempFile {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("berth-sendfile-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempFile { path }
    }

    pub fn with_contents(tag: &str, data: &[u8]) -> TempFile {
        let t = TempFile::new(tag);
        std::fs::write(&t.path, data).expect("write temp file");
        t
    }

    pub fn open(&self) -> File {
        File::open(&self.path).expect("open temp file")
    }

    /// A second handle, writable, for truncating behind the sender's back.
    pub fn open_rw(&self) -> File {
        OpenOptions::new().read(true).write(true).open(&self.path).expect("open temp file rw")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Deterministic bytes that differ from position to position (xorshift), so a byte sent
/// from the wrong offset is caught.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&bytes[..take]);
    }
    out
}

/// A connected loopback pair `(sender, receiver)`, both with read/write timeouts.
pub fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let receiver = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (sender, _) = listener.accept().expect("accept");
    for s in [&sender, &receiver] {
        s.set_read_timeout(Some(STEP)).expect("timeout");
        s.set_write_timeout(Some(STEP)).expect("timeout");
    }
    (sender, receiver)
}

/// Reads until EOF on a thread, `chunk` bytes at a time; fails (not hangs) after `STEP`
/// without data.
pub fn drain(mut receiver: TcpStream, chunk: usize) -> JoinHandle<io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            match receiver.read(&mut buf)? {
                0 => return Ok(got),
                n => got.extend_from_slice(&buf[..n]),
            }
        }
    })
}

pub fn join<T>(h: JoinHandle<io::Result<T>>) -> T {
    h.join().expect("reader thread panicked").expect("reader failed (timed out?)")
}

/// Waits until `fd` is writable, failing the test after `STEP`.
pub fn wait_writable(fd: impl AsFd) {
    let fd = fd.as_fd();
    let mut fds = [rustix::event::PollFd::from_borrowed_fd(fd, rustix::event::PollFlags::OUT)];
    let timeout = rustix::event::Timespec { tv_sec: STEP.as_secs() as _, tv_nsec: 0 };
    loop {
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => panic!("socket not writable within {STEP:?}"),
            Ok(_) => return,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Drives a send on a non-blocking socket to the end, waiting for writability on
/// `WouldBlock`; returns how many times it would have blocked.
pub fn drive_nonblocking<F: AsFd>(
    send: &mut berth_sendfile::FileSend<F>,
    socket: &TcpStream,
    scratch: &mut [u8],
) -> Result<u64, SendFileError> {
    let mut would_block = 0;
    loop {
        match send.send_some(socket, scratch) {
            Ok(p) if p.done => return Ok(would_block),
            Ok(_) => {}
            Err(SendFileError::WouldBlock) => {
                would_block += 1;
                wait_writable(socket);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Makes both ends of a pair small-buffered so the sender blocks often.
pub fn shrink_buffers(sender: &TcpStream, receiver: &TcpStream) {
    // Not too small: a receive window near zero makes TCP fall back on its persist
    // timer (hundreds of ms per probe) instead of window updates.
    rustix::net::sockopt::set_socket_send_buffer_size(sender, 16 << 10).expect("SO_SNDBUF");
    rustix::net::sockopt::set_socket_recv_buffer_size(receiver, 32 << 10).expect("SO_RCVBUF");
}

/// Drives a send on a non-blocking `sender` while playing a slow reader on the same
/// thread: each time the sender would block, read at most `step` bytes from `receiver`
/// (or, if nothing has arrived yet, wait for either side with a deadline). The number of
/// `WouldBlock` resumes is therefore at least `(len - socket buffers) / step`, on any
/// machine. Returns every byte received and that count.
pub fn drive_with_slow_reader<F: AsFd>(
    send: &mut berth_sendfile::FileSend<F>,
    sender: TcpStream,
    mut receiver: TcpStream,
    scratch: &mut [u8],
    step: usize,
) -> Result<(Vec<u8>, u64), SendFileError> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    sender.set_nonblocking(true).expect("nonblocking");
    receiver.set_nonblocking(true).expect("nonblocking");
    let mut got = Vec::new();
    let mut buf = vec![0u8; step];
    let mut would_block = 0;
    loop {
        match send.send_some(&sender, scratch) {
            Ok(p) if p.done => break,
            Ok(_) => continue,
            Err(SendFileError::WouldBlock) => would_block += 1,
            Err(e) => return Err(e),
        }
        match receiver.read(&mut buf) {
            Ok(0) => panic!("receiver saw EOF before the send was done"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let timeout = Timespec { tv_sec: STEP.as_secs() as _, tv_nsec: 0 };
                let mut fds = [PollFd::new(&sender, PollFlags::OUT), PollFd::new(&receiver, PollFlags::IN)];
                match poll(&mut fds, Some(&timeout)) {
                    Ok(0) => panic!("neither side ready within {STEP:?}"),
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => panic!("poll: {e}"),
                }
            }
            Err(e) => panic!("receiver: {e}"),
        }
    }
    drop(sender);
    receiver.set_nonblocking(false).expect("blocking");
    receiver.read_to_end(&mut got).expect("read the rest");
    Ok((got, would_block))
}
