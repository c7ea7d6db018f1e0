//! The resumable send ([`FileSend`]) and the blocking convenience ([`send_file`]).

use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::io::Errno;

use crate::error::SendFileError;
use crate::range::{ByteRange, RangeError};
use crate::sys;

/// Default cap on the bytes one call hands to the kernel: 2 MiB, as nginx's
/// `sendfile_max_chunk`, so one large file does not monopolise a thread.
pub const DEFAULT_CHUNK_CAP: usize = 2 << 20;

/// The most Linux moves in one sendfile/read/write call (`MAX_RW_COUNT`); larger caps
/// are clamped to it.
pub const MAX_CHUNK_CAP: usize = 0x7fff_f000;

/// How the body is being moved.
///
/// ```
/// use berth_sendfile::{ByteRange, FileSend, Method};
///
/// let file = std::fs::File::open("Cargo.toml")?;
/// let send = FileSend::new(&file, ByteRange::new(0, 10).unwrap());
/// assert_eq!(send.method(), Method::Sendfile);
/// assert_eq!(send.force_fallback(true).method(), Method::Copy);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// sendfile(2): the kernel moves page-cache pages to the socket, no user-space copy.
    Sendfile,
    /// pread (or read, for a pipe) into the caller's scratch buffer, then send: used when
    /// sendfile refused the source or the output (EINVAL, ENOSYS, ESPIPE, EOPNOTSUPP),
    /// or when forced with [`FileSend::force_fallback`].
    Copy,
}

/// Where a send stands after a call. `done` is true once every byte of the range was
/// handed to the kernel.
///
/// ```
/// use berth_sendfile::{ByteRange, FileSend};
///
/// let file = std::fs::File::open("Cargo.toml")?;
/// let send = FileSend::new(&file, ByteRange::new(0, 0).unwrap());
/// let p = send.progress();
/// assert!(p.done && p.remaining == 0 && p.sent_total == 0);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use]
pub struct Progress {
    /// Bytes this call handed to the kernel.
    pub sent: u64,
    /// Bytes of the range handed to the kernel so far.
    pub sent_total: u64,
    /// Bytes of the range still to send.
    pub remaining: u64,
    /// Whether the whole range has been sent.
    pub done: bool,
}

/// A resumable send of `file[offset .. offset + len]` to a socket.
///
/// Generic over how the file is held (`&File`, `File`, `Arc<File>`, `OwnedFd`, anything
/// [`AsFd`]), so a reactor can own it inside an operation. The state is a few integers:
/// a call never allocates.
///
/// Each [`send_some`](Self::send_some) moves at most the chunk cap (default
/// [`DEFAULT_CHUNK_CAP`]) with one sendfile(2) call, or one read + one send in the copy
/// fallback, and returns how far the send got; on a non-blocking socket that is full it
/// returns [`SendFileError::WouldBlock`] and the next call resumes exactly there. Loop
/// until [`Progress::done`], or use [`send_all`](Self::send_all) on a blocking socket.
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::{TcpListener, TcpStream};
/// use berth_sendfile::FileSend;
///
/// # fn main() -> std::io::Result<()> {
/// let path = std::env::temp_dir().join(format!("berth-sendfile-doc-{}", std::process::id()));
/// std::fs::write(&path, b"hello, sendfile")?;
/// let file = std::fs::File::open(&path)?;
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let mut client = TcpStream::connect(listener.local_addr()?)?;
/// let (server, _) = listener.accept()?;
///
/// let mut send = FileSend::checked(&file, 7, 8)?; // "sendfile"
/// send.send_header(&server, b"HDR ")?; // short enough to go out in one call
/// while !send.send_some(&server, &mut [])?.done {}
/// drop(server);
///
/// let mut got = String::new();
/// client.read_to_string(&mut got)?;
/// assert_eq!(got, "HDR sendfile");
/// # std::fs::remove_file(&path)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FileSend<F> {
    file: F,
    range: ByteRange,
    /// Bytes of the range handed to the kernel (not counting a stream's stash).
    sent: u64,
    chunk_cap: usize,
    method: Method,
    /// The source cannot seek (pread said ESPIPE): read() it, and keep what the socket
    /// did not take in `stash` (a range of the caller's scratch buffer).
    stream: bool,
    stash: (usize, usize),
    /// The output said ENOTSOCK to send(2): use write(2) (under the SIGPIPE guard).
    out_not_socket: bool,
}

impl<F: AsFd> FileSend<F> {
    /// A send of `range` of `file`. The range is not checked against the file's size
    /// (use [`checked`](Self::checked) for ranges that came from a user or peer); if the
    /// file is shorter, the send stops with [`SendFileError::Truncated`].
    ///
    /// ```
    /// use berth_sendfile::{ByteRange, FileSend};
    ///
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// let send = FileSend::new(file, ByteRange::new(0, 16).unwrap());
    /// assert_eq!(send.remaining(), 16);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(file: F, range: ByteRange) -> FileSend<F> {
        FileSend {
            file,
            range,
            sent: 0,
            chunk_cap: DEFAULT_CHUNK_CAP,
            method: Method::Sendfile,
            stream: false,
            stash: (0, 0),
            out_not_socket: false,
        }
    }

    /// A send of `file[offset .. offset + len]`, checked against the file's current size
    /// (one fstat): [`SendFileError::Range`] if it overflows or ends past the end.
    ///
    /// ```
    /// use berth_sendfile::{FileSend, RangeError, SendFileError};
    ///
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// assert!(FileSend::checked(&file, 0, 1).is_ok());
    /// assert!(matches!(
    ///     FileSend::checked(&file, u64::MAX, 1),
    ///     Err(SendFileError::Range(RangeError::Overflow { .. }))
    /// ));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn checked(file: F, offset: u64, len: u64) -> Result<FileSend<F>, SendFileError> {
        let size = file_size(file.as_fd())?;
        Ok(FileSend::new(file, ByteRange::within(offset, len, size)?))
    }

    /// A send of the whole file, as long as it is now (one fstat).
    ///
    /// ```
    /// use berth_sendfile::FileSend;
    ///
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// let len = file.metadata()?.len();
    /// assert_eq!(FileSend::whole(&file)?.remaining(), len);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn whole(file: F) -> Result<FileSend<F>, SendFileError> {
        let size = file_size(file.as_fd())?;
        Ok(FileSend::new(file, ByteRange::whole(size)))
    }

    /// Caps the bytes one call moves; clamped to `1 ..= MAX_CHUNK_CAP`.
    ///
    /// ```
    /// use berth_sendfile::{ByteRange, FileSend, MAX_CHUNK_CAP};
    ///
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// let send = FileSend::new(&file, ByteRange::whole(10)).chunk_cap(usize::MAX);
    /// assert_eq!(send.chunk_cap_bytes(), MAX_CHUNK_CAP);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn chunk_cap(mut self, bytes: usize) -> FileSend<F> {
        self.chunk_cap = bytes.clamp(1, MAX_CHUNK_CAP);
        self
    }

    /// The current per-call cap.
    ///
    /// ```
    /// use berth_sendfile::{ByteRange, FileSend, DEFAULT_CHUNK_CAP};
    ///
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// assert_eq!(FileSend::new(&file, ByteRange::whole(1)).chunk_cap_bytes(), DEFAULT_CHUNK_CAP);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn chunk_cap_bytes(&self) -> usize {
        self.chunk_cap
    }

    /// Skips sendfile and uses the copy fallback from the start (for sources known to
    /// refuse it, or to compare the two). `false` goes back to trying sendfile.
    ///
    /// See [`Method`] for an example.
    pub fn force_fallback(mut self, on: bool) -> FileSend<F> {
        self.method = if on { Method::Copy } else { Method::Sendfile };
        self
    }

    /// How the body is being moved now; switches from `Sendfile` to `Copy` by itself
    /// when sendfile refuses.
    ///
    /// See [`Method`] for an example.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The range being sent.
    ///
    /// ```
    /// use berth_sendfile::{ByteRange, FileSend};
    ///
    /// let r = ByteRange::new(5, 10).unwrap();
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// assert_eq!(FileSend::new(&file, r).range(), r);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn range(&self) -> ByteRange {
        self.range
    }

    /// Bytes of the range still to send.
    ///
    /// See [`FileSend::new`] for an example.
    pub fn remaining(&self) -> u64 {
        self.range.len() - self.sent
    }

    /// Where the send stands (`sent` is 0: no call is being reported).
    ///
    /// See [`Progress`] for an example.
    pub fn progress(&self) -> Progress {
        self.progress_with(0)
    }

    /// The file (or handle) being sent.
    ///
    /// ```
    /// use berth_sendfile::{ByteRange, FileSend};
    ///
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// let send = FileSend::new(file, ByteRange::whole(0));
    /// let file: std::fs::File = send.into_inner();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_inner(self) -> F {
        self.file
    }

    /// A reference to the file (or handle) being sent.
    ///
    /// ```
    /// use berth_sendfile::{ByteRange, FileSend};
    ///
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// let send = FileSend::new(&file, ByteRange::whole(0));
    /// assert!(std::ptr::eq(*send.file(), &file));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn file(&self) -> &F {
        &self.file
    }

    /// The same send (range, progress, method) over `f(file)`: an owned file turned
    /// into a [`SourceFile`](crate::SourceFile), say, by a completion port that keeps
    /// owned and shared files alike.
    ///
    /// ```
    /// use berth_sendfile::{ByteRange, FileSend, SourceFile};
    ///
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// let send = FileSend::new(file, ByteRange::new(0, 16).unwrap()).map_file(SourceFile::from);
    /// assert_eq!(send.remaining(), 16);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn map_file<G: AsFd>(self, f: impl FnOnce(F) -> G) -> FileSend<G> {
        FileSend {
            file: f(self.file),
            range: self.range,
            sent: self.sent,
            chunk_cap: self.chunk_cap,
            method: self.method,
            stream: self.stream,
            stash: self.stash,
            out_not_socket: self.out_not_socket,
        }
    }

    /// Sends (part of) a header before the body, with `MSG_MORE` when a body follows, so
    /// the header and the first body bytes leave in the same TCP segment (what nginx
    /// does with `tcp_nopush`). Returns how many header bytes the socket took: on a
    /// non-blocking socket that can be fewer than `header.len()`, so call again with the
    /// rest; [`SendFileError::WouldBlock`] if it took none. Header bytes are not counted
    /// in [`Progress`].
    ///
    /// When the range is empty there is no body to flush the header, so it goes without
    /// `MSG_MORE`. For a socket that is not TCP the flag is harmless.
    ///
    /// See [`FileSend`] for an example.
    pub fn send_header(&mut self, socket: impl AsFd, header: &[u8]) -> Result<usize, SendFileError> {
        if header.is_empty() {
            return Ok(0);
        }
        let more = self.remaining() > 0;
        self.write_out(socket.as_fd(), header, more)
    }

    /// Sends the next piece of the range: at most the chunk cap, in one sendfile(2) call
    /// (or one read and one send in the copy fallback). Returns the progress, or
    /// [`SendFileError::WouldBlock`] if the socket took nothing; the next call resumes
    /// where this one stopped. A call after `done` returns `done` again without a syscall.
    ///
    /// `scratch` is only used by the copy fallback and may be empty while sendfile works
    /// (berth-reactor passes a leased segment, simple callers `&mut []`); if the fallback
    /// is needed and it is empty, the call returns [`SendFileError::ScratchRequired`]
    /// having sent nothing, and can be repeated with a buffer. For a non-seekable
    /// source (a pipe), pass the same buffer every call: it holds bytes already read
    /// from the pipe that the socket has not taken yet.
    ///
    /// See [`FileSend`] for an example.
    pub fn send_some(&mut self, socket: impl AsFd, scratch: &mut [u8]) -> Result<Progress, SendFileError> {
        let socket = socket.as_fd();
        let remaining = self.remaining();
        if remaining == 0 {
            return Ok(self.progress());
        }
        let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(self.chunk_cap);
        if self.method == Method::Sendfile {
            match self.sendfile_step(socket, want) {
                Some(result) => return result,
                None => self.method = Method::Copy,
            }
        }
        self.copy_step(socket, want, scratch)
    }

    /// Calls [`send_some`](Self::send_some) until the range is done; returns the bytes
    /// of the range sent in total. Meant for blocking sockets: on a non-blocking one it
    /// returns `WouldBlock` when the socket fills, and can be called again later.
    ///
    /// ```
    /// use std::io::Read;
    /// use std::net::{TcpListener, TcpStream};
    /// use berth_sendfile::FileSend;
    ///
    /// # fn main() -> std::io::Result<()> {
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let mut client = TcpStream::connect(listener.local_addr()?)?;
    /// let (server, _) = listener.accept()?;
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// let len = file.metadata()?.len();
    /// let mut scratch = [0u8; 4096]; // used only if sendfile is refused
    /// assert_eq!(FileSend::whole(&file)?.send_all(&server, &mut scratch)?, len);
    /// drop(server);
    /// let mut got = Vec::new();
    /// client.read_to_end(&mut got)?;
    /// assert_eq!(got, std::fs::read("Cargo.toml")?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_all(&mut self, socket: impl AsFd, scratch: &mut [u8]) -> Result<u64, SendFileError> {
        let socket = socket.as_fd();
        loop {
            let p = self.send_some(socket, scratch)?;
            if p.done {
                return Ok(p.sent_total);
            }
        }
    }

    fn progress_with(&self, sent: u64) -> Progress {
        let remaining = self.remaining();
        Progress { sent, sent_total: self.sent, remaining, done: remaining == 0 }
    }

    fn position(&self) -> u64 {
        // sent <= len and offset + len does not overflow (ByteRange invariant).
        self.range.offset() + self.sent
    }

    fn advance(&mut self, n: usize) -> Progress {
        // The kernel never moves more than asked, and we never ask for more than
        // `remaining`; the min keeps the invariant even if it did.
        let n = (n as u64).min(self.remaining());
        self.sent += n;
        self.progress_with(n)
    }

    fn truncated(&self) -> SendFileError {
        SendFileError::Truncated { sent: self.sent, expected: self.range.len() }
    }

    /// Sorts an output error: the peer going away is `PeerClosed`, the rest is `Io`.
    fn output_error(&self, e: Errno) -> SendFileError {
        match e {
            Errno::PIPE | Errno::NOTCONN => SendFileError::PeerClosed { sent: self.sent, reset: false },
            Errno::CONNRESET => SendFileError::PeerClosed { sent: self.sent, reset: true },
            e => SendFileError::Io { sent: self.sent, source: e.into() },
        }
    }

    /// One sendfile call. `None` when sendfile refuses this source or output, and the
    /// copy fallback should take over.
    fn sendfile_step(&mut self, socket: BorrowedFd<'_>, want: usize) -> Option<Result<Progress, SendFileError>> {
        let _sigpipe = sys::SigpipeGuard::new();
        loop {
            let mut offset = self.position();
            return Some(match sys::sendfile(socket, self.file.as_fd(), &mut offset, want) {
                // The range is not done, so want > 0: a 0 means the file ends here.
                Ok(0) => Err(self.truncated()),
                Ok(n) => Ok(self.advance(n)),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => Err(SendFileError::WouldBlock),
                Err(e @ (Errno::INVAL | Errno::NOSYS | Errno::SPIPE | Errno::OPNOTSUPP)) => {
                    tracing::debug!(errno = %e, sent = self.sent, "sendfile refused; using the copy fallback");
                    return None;
                }
                Err(e) => Err(self.output_error(e)),
            });
        }
    }

    /// One read from the source into `scratch` and one write to the socket.
    fn copy_step(
        &mut self,
        socket: BorrowedFd<'_>,
        want: usize,
        scratch: &mut [u8],
    ) -> Result<Progress, SendFileError> {
        let (start, end) = self.stash;
        if start < end {
            // A stream's bytes read earlier that the socket did not take.
            let held = scratch.get(start..end).ok_or(SendFileError::ScratchRequired)?;
            let n = self.write_out(socket, held, false)?;
            self.stash.0 += n;
            return Ok(self.advance(n));
        }
        let n = want.min(scratch.len());
        if n == 0 {
            return Err(SendFileError::ScratchRequired);
        }
        let buf = &mut scratch[..n];
        let got = self.read_in(buf)?;
        let written = match self.write_out(socket, &buf[..got], false) {
            Ok(w) => w,
            Err(e) => {
                if self.stream && e.is_would_block() {
                    self.stash = (0, got);
                }
                return Err(e);
            }
        };
        if self.stream && written < got {
            self.stash = (written, got);
        }
        Ok(self.advance(written))
    }

    /// Fills (part of) `buf` from the source at the current position. Never returns 0.
    fn read_in(&mut self, buf: &mut [u8]) -> Result<usize, SendFileError> {
        loop {
            let r = if self.stream {
                sys::read(self.file.as_fd(), buf)
            } else {
                sys::pread(self.file.as_fd(), buf, self.position())
            };
            return match r {
                Ok(0) => Err(self.truncated()),
                Ok(n) => Ok(n.min(buf.len())),
                Err(Errno::INTR) => continue,
                Err(Errno::SPIPE) if !self.stream => {
                    if self.range.offset() != 0 {
                        return Err(SendFileError::NotSeekable { offset: self.range.offset() });
                    }
                    tracing::debug!("source is not seekable; reading it as a stream");
                    self.stream = true;
                    continue;
                }
                Err(e) => Err(SendFileError::Io { sent: self.sent, source: e.into() }),
            };
        }
    }

    /// One send(2) with MSG_NOSIGNAL, or write(2) under the SIGPIPE guard for outputs
    /// that are not sockets. Never returns 0 for a non-empty `buf`.
    fn write_out(&mut self, out: BorrowedFd<'_>, buf: &[u8], more: bool) -> Result<usize, SendFileError> {
        loop {
            let r = if self.out_not_socket {
                let _sigpipe = sys::SigpipeGuard::new();
                sys::write(out, buf)
            } else {
                sys::send(out, buf, more)
            };
            return match r {
                Ok(0) if !buf.is_empty() => {
                    Err(SendFileError::Io { sent: self.sent, source: io::ErrorKind::WriteZero.into() })
                }
                Ok(n) => Ok(n.min(buf.len())),
                Err(Errno::INTR) => continue,
                Err(Errno::NOTSOCK) if !self.out_not_socket => {
                    self.out_not_socket = true;
                    continue;
                }
                Err(Errno::AGAIN) => Err(SendFileError::WouldBlock),
                Err(e) => Err(self.output_error(e)),
            };
        }
    }
}

fn file_size(file: BorrowedFd<'_>) -> Result<u64, SendFileError> {
    match sys::file_size(file) {
        Ok(Some(size)) => Ok(size),
        Ok(None) => {
            Err(SendFileError::Io { sent: 0, source: io::Error::new(io::ErrorKind::InvalidData, "negative file size") })
        }
        Err(e) => Err(SendFileError::Io { sent: 0, source: e.into() }),
    }
}

/// Sends `range` of `file` (`..` for all of it, `a..b`, `a..`, `a..=b`) to a blocking
/// socket, headers and all being the caller's business. The range is checked against
/// the file's size first. Uses sendfile, and the copy fallback with a 64 KiB buffer
/// (allocated only then) if sendfile is refused. Returns the bytes sent.
///
/// ```
/// use std::io::Read;
/// use std::net::{TcpListener, TcpStream};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let mut client = TcpStream::connect(listener.local_addr()?)?;
/// let (server, _) = listener.accept()?;
/// let file = std::fs::File::open("Cargo.toml")?;
/// assert_eq!(berth_sendfile::send_file(&server, &file, 0..9)?, 9);
/// drop(server);
/// let mut got = String::new();
/// client.read_to_string(&mut got)?;
/// assert_eq!(got, "[package]");
/// # Ok(())
/// # }
/// ```
pub fn send_file(socket: impl AsFd, file: &File, range: impl RangeBounds<u64>) -> Result<u64, SendFileError> {
    let size = file_size(file.as_fd())?;
    let range = resolve_bounds(range, size)?;
    let mut send = FileSend::new(file, range);
    let socket = socket.as_fd();
    match send.send_all(socket, &mut []) {
        Err(SendFileError::ScratchRequired) => {
            let mut scratch = vec![0u8; 64 << 10];
            send.send_all(socket, &mut scratch)
        }
        other => other,
    }
}

/// Turns Rust range bounds into a [`ByteRange`] checked against `file_size`.
fn resolve_bounds(range: impl RangeBounds<u64>, file_size: u64) -> Result<ByteRange, RangeError> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1).ok_or(RangeError::Overflow { offset: s, len: 1 })?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1).ok_or(RangeError::Overflow { offset: start, len: u64::MAX })?,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => file_size.max(start),
    };
    // An end before the start is a caller error; report it as past the end of the file
    // rather than wrapping.
    let len = end.checked_sub(start).ok_or(RangeError::PastEnd { offset: start, len: 0, file_size })?;
    ByteRange::within(start, len, file_size)
}

/// Turns `TCP_CORK` on or off: while on, the kernel sends only full segments, so a
/// header written before the body never goes out alone. The alternative to
/// [`FileSend::send_header`]'s `MSG_MORE` when the header is written by other code.
/// Turning it off flushes what is held.
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::{TcpListener, TcpStream};
/// use std::time::Duration;
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let mut client = TcpStream::connect(listener.local_addr()?)?;
/// let (mut server, _) = listener.accept()?;
/// // Shorter than the ~200 ms after which the kernel sends corked bytes anyway.
/// client.set_read_timeout(Some(Duration::from_millis(100)))?;
/// let mut buf = [0u8; 64];
///
/// berth_sendfile::set_cork(&server, true)?;
/// server.write_all(b"HTTP/1.1 200 OK\r\n\r\n")?;
/// assert!(client.read(&mut buf).is_err(), "held: less than a full segment");
/// berth_sendfile::set_cork(&server, false)?; // flushes what is held
/// assert_eq!(client.read(&mut buf)?, 19);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn set_cork(socket: impl AsFd, on: bool) -> io::Result<()> {
    Ok(sys::set_cork(socket.as_fd(), on)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        let r = |a, b| ByteRange::new(a, b).unwrap();
        assert_eq!(resolve_bounds(.., 10), Ok(r(0, 10)));
        assert_eq!(resolve_bounds(2..5, 10), Ok(r(2, 3)));
        assert_eq!(resolve_bounds(2..=5, 10), Ok(r(2, 4)));
        assert_eq!(resolve_bounds(2.., 10), Ok(r(2, 8)));
        assert_eq!(resolve_bounds(10.., 10), Ok(r(10, 0)));
        assert_eq!(resolve_bounds(..0, 0), Ok(r(0, 0)));
        assert!(matches!(resolve_bounds(11.., 10), Err(RangeError::PastEnd { .. })));
        assert!(matches!(resolve_bounds(0..11, 10), Err(RangeError::PastEnd { .. })));
        assert!(matches!(
            resolve_bounds((Bound::Included(5), Bound::Excluded(2)), 10),
            Err(RangeError::PastEnd { .. })
        ));
        assert!(matches!(resolve_bounds(0..=u64::MAX, 10), Err(RangeError::Overflow { .. })));
        assert!(matches!(
            resolve_bounds((Bound::Excluded(u64::MAX), Bound::Unbounded), 10),
            Err(RangeError::Overflow { .. })
        ));
    }
}
