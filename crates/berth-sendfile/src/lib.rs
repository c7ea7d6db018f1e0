//! Zero-copy file send to sockets: a resumable sendfile(2) loop with byte ranges,
//! headers and a copy fallback.
//!
//! # What and why
//!
//! Serving a file by `read` + `write` copies every byte twice through user space.
//! sendfile(2) lets the kernel hand page-cache pages straight to the socket, which
//! roughly halves the sender's CPU per byte (see the `sendfile` system benchmark).
//! Mapping the file and writing from the mapping (what the .NET seed does) is still a
//! copy, and crashes with SIGBUS if the file shrinks. This crate never crashes, hangs or
//! sends a wrong byte when the file shrinks: it stops with a typed error.
//!
//! The entry type is [`FileSend`]: a resumable send of `file[offset .. offset + len]`
//! that works on blocking and non-blocking sockets. Each
//! [`send_some`](FileSend::send_some) moves at most a chunk (2 MiB by default) and
//! returns [`Progress`]; on a full non-blocking socket it returns
//! [`SendFileError::WouldBlock`] and the next call resumes where it stopped, which is
//! what a completion-style reactor (berth-reactor) needs. A `FileSend` holds the file
//! as any [`AsFd`](std::os::fd::AsFd) (`&File`, `File`, `Arc<File>`, `OwnedFd`) and a
//! few integers; calls never allocate. [`send_file`] is the blocking one-liner.
//!
//! Headers go first with [`FileSend::send_header`] (`MSG_MORE`, so the header and the
//! first body bytes share a segment, as nginx does), or under [`set_cork`].
//!
//! Ranges come from [`ByteRange`]: [`validate_range`] does the checked arithmetic for
//! `offset + len` against a file size, and [`resolve_http_range`] turns an HTTP
//! `Range: bytes=...` header into one, with the error that decides between 206, 416
//! and ignoring the header.
//!
//! # sendfile or the copy fallback
//!
//! A send starts with sendfile(2) ([`Method::Sendfile`]). If the kernel refuses the
//! pair of descriptors (EINVAL, ENOSYS, ESPIPE, EOPNOTSUPP: a pipe or other
//! non-seekable source, some special or FUSE files, an `O_APPEND` output), the send
//! switches for good to [`Method::Copy`]: pread into the caller's scratch buffer, then
//! send(2) with `MSG_NOSIGNAL` (write(2) if the output is not a socket). The bytes and
//! the resumable API are the same. The scratch buffer is a `&mut [u8]` the caller
//! passes to every call, so berth-buf leases can be used and the fast path needs none:
//! pass `&mut []` and, if the fallback is ever needed, the call returns
//! [`SendFileError::ScratchRequired`] having sent nothing. The fallback can also be
//! chosen up front with [`FileSend::force_fallback`].
//!
//! A non-seekable source (pipe, socket) is read as a stream: its range must start at 0
//! and means "the next `len` bytes"; bytes read but not yet taken by the socket wait in
//! the scratch buffer, so the same buffer must be passed to every call.
//!
//! # Errors
//!
//! [`SendFileError`] says what happened and how many body bytes had been sent:
//!
//! - [`WouldBlock`](SendFileError::WouldBlock): the non-blocking socket is full (or a
//!   send timeout expired); wait for writability and call again.
//! - [`Truncated`](SendFileError::Truncated)`{ sent, expected }`: the file ended before
//!   the range did (a 0 from sendfile or pread before the end). It was shortened while
//!   being sent, or was shorter from the start. The peer got `sent` correct bytes;
//!   close the connection, since the promised length cannot be delivered.
//! - [`PeerClosed`](SendFileError::PeerClosed)`{ sent, reset }`: EPIPE / ECONNRESET /
//!   ENOTCONN. No SIGPIPE is delivered (see below).
//! - [`ScratchRequired`](SendFileError::ScratchRequired): the fallback needs a buffer.
//! - [`NotSeekable`](SendFileError::NotSeekable): a range not starting at 0 on a pipe.
//! - [`Range`](SendFileError::Range): the range overflows or ends past the end of the
//!   file ([`RangeError`]).
//! - [`Io`](SendFileError::Io): anything else (EIO from the disk, EBADF, ...).
//!
//! It converts into `std::io::Error` with the matching `ErrorKind`.
//!
//! # SIGPIPE
//!
//! send(2) takes `MSG_NOSIGNAL`, but sendfile(2) and write(2) do not: when the peer
//! has gone they raise SIGPIPE in the calling thread, and its default action kills the
//! process. Rust binaries (and the test harness) set SIGPIPE to "ignore" before `main`,
//! so usually the call just fails with EPIPE. A library cannot count on that (a C host,
//! `-Zon-broken-pipe=kill`), so around those calls the crate checks the disposition (one
//! `sigaction` query per call) and, unless SIGPIPE is ignored, blocks it in the calling
//! thread and consumes a SIGPIPE that the call raised before restoring the mask. The
//! EPIPE becomes [`SendFileError::PeerClosed`]. A SIGPIPE handler the application
//! installed therefore does not see pipes broken by this crate.
//!
//! # Caveat: sendfile does not snapshot the file
//!
//! Bytes handed to the kernel by sendfile are references to page-cache pages until TCP
//! transmits them. If another process writes to or truncates the file meanwhile, the
//! peer can receive the new contents: a truncation zeroes the rest of the page (or large
//! folio) holding the new end of file, so bytes already counted as sent may arrive as
//! zeros. Bytes are never taken from a wrong offset, and everything past the new end is
//! reported as [`SendFileError::Truncated`]. This is inherent to zero-copy (nginx has
//! the same property); serve files that are replaced atomically (write + rename), or
//! use [`FileSend::force_fallback`], whose copy is a snapshot at read time.
//!
//! # Example
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use berth_sendfile::{resolve_http_range, FileSend};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = std::env::temp_dir().join(format!("berth-sendfile-crate-doc-{}", std::process::id()));
//! std::fs::write(&path, b"0123456789")?;
//! let file = std::fs::File::open(&path)?;
//! let size = file.metadata()?.len();
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let mut client = TcpStream::connect(listener.local_addr()?)?;
//! let (server, _) = listener.accept()?;
//! server.set_nonblocking(true)?;
//!
//! // An HTTP server's range request, resolved against the file, sent after its header.
//! let range = resolve_http_range("bytes=-4", size)?;
//! let header = format!("Content-Range: {}\r\n\r\n", range.content_range(size));
//! let mut send = FileSend::new(&file, range);
//! let mut header = header.as_bytes();
//! while !header.is_empty() {
//!     header = &header[send.send_header(&server, header)?..];
//! }
//! let mut scratch = [0u8; 4096];
//! loop {
//!     match send.send_some(&server, &mut scratch) {
//!         Ok(p) if p.done => break,
//!         Ok(_) => {}
//!         Err(e) if e.is_would_block() => { /* wait for writability (a reactor does) */ }
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! drop(server);
//!
//! let mut got = String::new();
//! client.read_to_string(&mut got)?;
//! assert_eq!(got, "Content-Range: bytes 6-9/10\r\n\r\n6789");
//! # std::fs::remove_file(&path)?;
//! # Ok(())
//! # }
//! ```

mod error;
mod range;
mod send;
mod source;
mod sys;

pub use error::SendFileError;

/// Sets SIGPIPE to "ignored" for the whole process and promises it stays so, which
/// lets every later send skip looking at the signal's disposition first (one
/// `rt_sigaction` syscall per sendfile(2) call, out of the five or so a small file
/// costs a server).
///
/// sendfile(2) has no `MSG_NOSIGNAL`, so without the promise each call checks that
/// SIGPIPE is ignored and blocks it in the thread if not. Call this from a binary
/// that owns its signal dispositions (the `berth` binary does, at start-up), never
/// from a library: if SIGPIPE is later given a handler or its default action again,
/// a peer that closes mid-send raises it.
///
/// # Errors
/// The `sigaction` call failed (not expected with these arguments); nothing changed.
pub fn keep_sigpipe_ignored() -> std::io::Result<()> {
    sys::keep_sigpipe_ignored()
}
pub use range::{
    ByteRange, ContentRange, HttpRangeError, RangeError, resolve_http_range, resolve_http_range_spec, validate_range,
};
pub use send::{DEFAULT_CHUNK_CAP, FileSend, MAX_CHUNK_CAP, Method, Progress, send_file, set_cork};
pub use source::SourceFile;
