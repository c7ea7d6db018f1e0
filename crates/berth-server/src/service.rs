//! [`Service`]: what a server runs per connection, and [`Reply`], how it answers.

use std::any::Any;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use berth_buf::{Exhausted, Lease};
use berth_ops::{OpError, OpId};
use berth_reactor::{PortHandle, SocketId};
use berth_sendfile::{ByteRange, FileSend, SourceFile};

use crate::conn::Conns;

/// A protocol run by a [`Server`](crate::Server): it gets connection events and the
/// bytes received, and answers through a [`Reply`] with bytes, a file and a close.
///
/// One value is shared by every worker thread (hence `Sync`); what belongs to one
/// connection lives in [`Conn`](Service::Conn), the seed's `AsyncUserToken`, created
/// by [`connect`](Service::connect) on the connection's worker and kept in a slot
/// preallocated for the socket.
///
/// The server calls [`data`](Service::data) with everything received and not yet
/// consumed. The service consumes a prefix (a request, say) and may answer it; the
/// server sends the answer, and only once it is sent calls `data` again with the
/// rest. So pipelined requests are answered in order, one at a time, and a peer that
/// sends faster than it reads is not read from meanwhile. A reply longer than one
/// segment is streamed: [`Reply::stream`] asks for [`more`](Service::more) once its
/// bytes are sent, segment by segment. Consuming nothing and
/// answering nothing means "need more bytes": the server reads more, up to the
/// request head limit ([`Reply::input_full`] says when that is reached).
///
/// ```
/// use berth_server::{Reply, Service};
///
/// /// Answers every line with its length.
/// struct LineLength;
///
/// impl Service for LineLength {
///     type Conn = ();
///     fn connect(&self, _peer: Option<std::net::SocketAddr>) {}
///     fn data(&self, _conn: &mut (), input: &[u8], reply: &mut Reply<'_>) -> usize {
///         match input.iter().position(|&b| b == b'\n') {
///             Some(end) => {
///                 use std::io::Write;
///                 let _ = writeln!(reply, "{}", end);
///                 end + 1
///             }
///             None if reply.input_full() => {
///                 reply.close(); // a line longer than the server buffers
///                 input.len()
///             }
///             None => 0, // wait for the rest of the line
///         }
///     }
/// }
/// ```
pub trait Service: Send + Sync + 'static {
    /// Per-connection state (the seed's user token).
    type Conn: 'static;

    /// A connection was accepted; returns its state. `peer` is `None` if the address
    /// could not be read.
    fn connect(&self, peer: Option<SocketAddr>) -> Self::Conn;

    /// Bytes arrived: `input` is everything received and not yet consumed. Returns how
    /// many bytes of `input` were consumed (values past `input.len()` count as all of
    /// it). Anything written to `reply` is sent before `data` is called again.
    fn data(&self, conn: &mut Self::Conn, input: &[u8], reply: &mut Reply<'_>) -> usize;

    /// The reply to the last request (everything written to its [`Reply`]) has been
    /// handed to the kernel: an access log ends the request's time here.
    fn reply_sent(&self, conn: &mut Self::Conn) {
        let _ = conn;
    }

    /// The next segment of a streamed reply ([`Reply::stream`]): the previous
    /// segment has been handed to the kernel. Whatever is written to `reply` is sent
    /// next; call [`reply.stream()`](Reply::stream) again to be called once more
    /// after it, or leave it to end the stream (the reply is then complete:
    /// [`reply_sent`](Service::reply_sent) follows, then the next request or the
    /// close asked for by any segment). A call that writes nothing and sends no file
    /// ends the stream too — unless it asks for more: that *yields*, and `more` is
    /// called again once the worker has handled the completions of its other
    /// connections, so a long piece of work (a listing's pass over a large
    /// directory) can be done in steps without holding the worker. The default
    /// writes nothing.
    ///
    /// Only one segment of a stream exists at a time, so a reply of any length
    /// holds one buffer segment; `reply` starts empty, with a whole segment of room.
    fn more(&self, conn: &mut Self::Conn, reply: &mut Reply<'_>) {
        let _ = (conn, reply);
    }

    /// The connection is closed (by either side, a timeout or shutdown).
    fn disconnect(&self, conn: Self::Conn) {
        let _ = conn;
    }

    /// A worker starts, on its own thread, before it accepts anything. `worker`
    /// posts to it from any thread: each post becomes a call of
    /// [`posted`](Service::posted) on that worker. A service that answers from
    /// another thread (see [`Reply::answer_later`]) keeps the handles.
    fn worker_started(&self, worker: WorkerHandle) {
        let _ = worker;
    }

    /// `data` was posted to this worker with [`WorkerHandle::post`]. `conns` answers
    /// or closes this worker's connections by [`ConnId`].
    fn posted(&self, data: u64, conns: &mut Conns<'_, Self>)
    where
        Self: Sized,
    {
        let _ = (data, conns);
    }

    /// Per-worker state: called once on each worker's thread when it starts (after
    /// [`worker_started`](Service::worker_started), before it accepts). What it
    /// returns belongs to that worker alone — a channel to a backend process, say —
    /// so it needs no lock: [`data`](Service::data) reaches it through
    /// [`Reply::worker_state`], [`posted`](Service::posted) and
    /// [`ready`](Service::ready) through [`Conns::worker_state`]. It drops when the
    /// worker stops. `conns` can already [`watch`](Conns::watch) descriptors on the
    /// worker's port.
    fn worker_state(&self, conns: &mut Conns<'_, Self>) -> Option<Box<dyn Any>>
    where
        Self: Sized,
    {
        let _ = conns;
        None
    }

    /// A [`Watch`] this service armed on the worker's port ([`Conns::arm`])
    /// finished: `Ok(())` when its descriptor turned readable (which may be
    /// spurious: read it non-blocking) or a timer's time came,
    /// `Err(OpError::TimedOut)` at the deadline given to `arm`, another error if
    /// the wait failed. A watch removed with [`Conns::unwatch`] is not reported.
    fn ready(&self, watch: Watch, result: Result<(), OpError>, conns: &mut Conns<'_, Self>)
    where
        Self: Sized,
    {
        let _ = (watch, result, conns);
    }

    /// The worker is about to wait on its port again: everything its last wait
    /// returned has been handled. A service that stopped a wake while it was busy
    /// (berth-ipc's [`disarm_wake`](berth_ipc::Receiver::disarm_wake), say) looks
    /// at its source here and arms again before the worker sleeps. Called before
    /// every wait, so it must be cheap when there is nothing to do; the default
    /// does nothing.
    fn before_wait(&self, conns: &mut Conns<'_, Self>)
    where
        Self: Sized,
    {
        let _ = conns;
    }
}

/// A descriptor (or a timer) a [`Service`] waits on through one worker's completion
/// port, with no thread of its own: made by [`Conns::watch`] or [`Conns::timer`],
/// armed by [`Conns::arm`], reported by [`Service::ready`]. It belongs to the
/// worker that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    pub(crate) socket: Option<SocketId>,
    pub(crate) op: OpId,
}

/// A connection's identity across threads: its worker, slot and generation packed
/// in a `u64` (`generation << 32 | worker << 24 | slot`), so an id kept after the
/// connection closed never names the connection that reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

/// Workers a [`ConnId`] can name.
pub(crate) const MAX_WORKERS: usize = 256;
/// Connection slots per worker a [`ConnId`] can name.
pub(crate) const MAX_SLOTS: usize = 1 << 24;

impl ConnId {
    pub(crate) fn new(worker: usize, socket: SocketId) -> ConnId {
        let v = socket.to_u64();
        let (generation, slot) = (v >> 32, v & 0xFF_FFFF);
        ConnId((generation << 32) | ((worker as u64 & 0xFF) << 24) | slot)
    }

    /// The worker that owns the connection.
    pub fn worker(self) -> usize {
        ((self.0 >> 24) & 0xFF) as usize
    }

    pub(crate) fn socket(self) -> SocketId {
        SocketId::from_u64((self.0 & 0xFFFF_FFFF_0000_0000) | (self.0 & 0xFF_FFFF))
    }

    /// The packed value, to send to another process.
    pub fn to_u64(self) -> u64 {
        self.0
    }

    /// Unpacks [`to_u64`](ConnId::to_u64). Any value is safe: one that names no open
    /// connection is refused where it is used.
    pub fn from_u64(v: u64) -> ConnId {
        ConnId(v)
    }
}

/// Posts to one worker from any thread (see [`Service::worker_started`]).
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    index: usize,
    workers: usize,
    port: PortHandle,
}

/// The key of completions posted by a service.
pub(crate) const SERVICE_POST: u64 = u64::MAX - 2;

impl WorkerHandle {
    pub(crate) fn new(index: usize, workers: usize, port: PortHandle) -> WorkerHandle {
        WorkerHandle { index, workers, port }
    }

    /// Which worker this is (as in [`ConnId::worker`]).
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many workers the server runs (indices `0..workers`).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Wakes the worker and has it call [`Service::posted`] with `data`. Fails with
    /// `BrokenPipe` once the worker has stopped, and with `WouldBlock` while 1024
    /// posts already wait for it (nothing is queued; try again later).
    pub fn post(&self, data: u64) -> io::Result<()> {
        self.port.post(SERVICE_POST, data)
    }
}

/// A [`Reply`] could not take more bytes: its segment is full or none could be
/// leased. The server closes the connection rather than send half an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reply buffer full or unavailable")]
pub struct ReplyFull;

/// How a [`Service`] answers: bytes written into one leased buffer segment (a
/// response head, a short body), then optionally a file range sent by sendfile(2),
/// then optionally a close. Nothing is allocated: the bytes go into a segment of the
/// server's arena, leased on the first write.
///
/// `std::io::Write` is implemented, so `write!` formats straight into the segment.
pub struct Reply<'a> {
    lease: &'a dyn Fn() -> Result<Lease, Exhausted>,
    state: Option<&'a mut (dyn Any + 'static)>,
    head: Option<Lease>,
    file: Option<FileSend<SourceFile>>,
    parts: FileParts,
    close: bool,
    failed: bool,
    input_full: bool,
    server_closing: bool,
    later: bool,
    stream: bool,
    conn: ConnId,
}

/// The most file ranges one [`Reply`] interleaves with its bytes
/// ([`Reply::file_part`]).
pub const MAX_FILE_PARTS: usize = 16;

/// The ranges of one file interleaved with a reply's bytes: part `i` goes after
/// the bytes up to `marks[i].0`. A fixed array: a reply of several parts allocates
/// nothing.
#[derive(Debug)]
pub(crate) struct FileParts {
    pub(crate) file: Option<SourceFile>,
    pub(crate) marks: [(usize, ByteRange); MAX_FILE_PARTS],
    pub(crate) n: usize,
}

impl FileParts {
    pub(crate) const EMPTY: FileParts =
        FileParts { file: None, marks: [(0, ByteRange::whole(0)); MAX_FILE_PARTS], n: 0 };
}

/// What a reply came to, for the server.
pub(crate) struct ReplyParts {
    pub(crate) head: Option<Lease>,
    pub(crate) file: Option<FileSend<SourceFile>>,
    pub(crate) parts: FileParts,
    pub(crate) close: bool,
    pub(crate) failed: bool,
    pub(crate) later: bool,
    /// Call [`Service::more`] once this is sent.
    pub(crate) stream: bool,
}

impl ReplyParts {
    /// Nothing to send and no close: the connection goes on (or waits, if `later`).
    pub(crate) fn is_empty(&self) -> bool {
        self.head.as_ref().is_none_or(|h| h.is_empty())
            && self.file.is_none()
            && self.parts.n == 0
            && !self.close
            && !self.failed
    }
}

impl<'a> Reply<'a> {
    pub(crate) fn new(
        lease: &'a dyn Fn() -> Result<Lease, Exhausted>,
        conn: ConnId,
        input_full: bool,
        server_closing: bool,
        state: Option<&'a mut (dyn Any + 'static)>,
    ) -> Self {
        Reply {
            lease,
            state,
            head: None,
            file: None,
            parts: FileParts::EMPTY,
            close: false,
            failed: false,
            input_full,
            server_closing,
            later: false,
            stream: false,
            conn,
        }
    }

    pub(crate) fn into_parts(self) -> ReplyParts {
        // Either one file after the bytes or parts between them, not both; a stream
        // goes on now, an answer comes later: not both.
        let failed = self.failed || (self.file.is_some() && self.parts.n > 0) || (self.stream && self.later);
        ReplyParts {
            head: self.head,
            file: self.file,
            parts: self.parts,
            close: self.close,
            failed,
            later: self.later,
            stream: self.stream,
        }
    }

    /// This worker's state ([`Service::worker_state`]), if it has one of type `T`.
    pub fn worker_state<T: 'static>(&mut self) -> Option<&mut T> {
        self.state.as_deref_mut()?.downcast_mut()
    }

    /// The connection this reply goes to: keep it to answer later from another
    /// thread (through [`WorkerHandle::post`] and [`Conns::answer`]).
    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    /// The answer comes later: after this reply's bytes (if any) are sent, the
    /// connection neither reads nor calls [`Service::data`] until
    /// [`Conns::answer`] (from [`Service::posted`]) answers it or closes it.
    /// Unconsumed input waits in the connection's buffer meanwhile. A connection
    /// waiting for an answer is not read from (a client that gives up is noticed
    /// when its answer is written), and is closed cleanly if the answer does not
    /// come within the [answer timeout](crate::ServerBuilder::answer_timeout).
    pub fn answer_later(&mut self) {
        self.later = true;
    }

    /// The reply goes on after this segment: once its bytes (and file) are handed
    /// to the kernel, the server calls [`Service::more`] for the next segment, and
    /// so on until a segment does not ask for more. Each segment is produced only
    /// after the previous one was sent, into the one segment the connection holds,
    /// so a reply of any length (a directory listing, say) costs one segment of
    /// memory. The [write timeout](crate::ServerBuilder::write_timeout) applies to
    /// each segment; a peer that leaves mid-stream ends it with
    /// [`Service::disconnect`]. A [`close`](Self::close) asked for by any segment
    /// closes the connection after the last one. Asked for with nothing written,
    /// the reply starts with `more`; asked for by a `more` that writes nothing, it
    /// yields the worker (see [`Service::more`]). Cannot be combined with
    /// [`answer_later`](Self::answer_later) (the connection is closed).
    ///
    /// ```
    /// use berth_server::{Reply, Service};
    /// use std::io::Write;
    ///
    /// /// Answers any input with the numbers 0 to 99,999, one segment at a time.
    /// struct Count;
    ///
    /// impl Service for Count {
    ///     type Conn = u32; // the next number
    ///     fn connect(&self, _peer: Option<std::net::SocketAddr>) -> u32 { 0 }
    ///     fn data(&self, next: &mut u32, input: &[u8], reply: &mut Reply<'_>) -> usize {
    ///         *next = 0;
    ///         self.more(next, reply);
    ///         input.len()
    ///     }
    ///     fn more(&self, next: &mut u32, reply: &mut Reply<'_>) {
    ///         // "99999\n" is at most 6 bytes; fill the segment, then ask for more.
    ///         while *next < 100_000 && reply.remaining() >= 6 {
    ///             let _ = writeln!(reply, "{next}");
    ///             *next += 1;
    ///         }
    ///         if *next < 100_000 {
    ///             reply.stream();
    ///         }
    ///     }
    /// }
    /// ```
    pub fn stream(&mut self) {
        self.stream = true;
    }

    /// Whether [`stream`](Self::stream) was asked for.
    pub fn streaming(&self) -> bool {
        self.stream
    }

    /// Appends bytes to the reply. Fails if they do not fit in the rest of the
    /// segment (see [`remaining`](Self::remaining)) or no segment could be leased;
    /// the connection is then closed after the call.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), ReplyFull> {
        if self.head.is_none() {
            match (self.lease)() {
                Ok(mut lease) => {
                    // Empty, not zeroed: only the first `len` bytes of a reply are
                    // ever sent, and zeroing the segment (`clear`) cost a memset of
                    // the whole segment — 8 KiB, 128 KiB for `berth relay` — per reply.
                    let _ = lease.set_len(0);
                    self.head = Some(lease);
                }
                Err(_) => {
                    self.failed = true;
                    return Err(ReplyFull);
                }
            }
        }
        let Some(head) = self.head.as_mut() else { return Err(ReplyFull) };
        let len = head.len();
        if bytes.len() > head.capacity() - len {
            self.failed = true;
            return Err(ReplyFull);
        }
        head.spare_mut()[..bytes.len()].copy_from_slice(bytes);
        if head.set_len(len + bytes.len()).is_err() {
            self.failed = true;
            return Err(ReplyFull);
        }
        Ok(())
    }

    /// Drops the bytes written after the first `len` (a head that turned out not to
    /// fit its body's framing, rewritten another way).
    pub(crate) fn truncate(&mut self, len: usize) {
        if let Some(head) = self.head.as_mut()
            && len <= head.len()
        {
            let _ = head.set_len(len);
        }
    }

    /// Overwrites bytes written earlier, from `at` (a length filled in once the
    /// bytes after it are known: a chunk size). Out of range changes nothing.
    pub(crate) fn overwrite(&mut self, at: usize, bytes: &[u8]) {
        if let Some(head) = self.head.as_mut()
            && let Some(dst) = head.filled_mut().get_mut(at..at.saturating_add(bytes.len()))
        {
            dst.copy_from_slice(bytes);
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> &[u8] {
        self.head.as_ref().map_or(&[], |h| h.filled())
    }

    /// Room left for bytes (a whole segment before the first write, as far as the
    /// server's arena has one).
    pub fn remaining(&self) -> usize {
        match &self.head {
            Some(h) => h.capacity() - h.len(),
            None => usize::MAX,
        }
    }

    /// Sends `file` (its range) after the bytes, by sendfile(2). If the file turns
    /// out shorter than the range while it is sent, the connection is closed. The
    /// file is the reply's own (`File`) or one shared with a cache (`Arc<File>`, as
    /// a [`SourceFile`]).
    pub fn send_file<F: AsFd + Into<SourceFile>>(&mut self, file: FileSend<F>) {
        self.file = Some(file.map_file(Into::into));
    }

    /// Interleaves ranges of `file` with the bytes (a `multipart/byteranges` body):
    /// each [`file_part`](Self::file_part) sends its range, by sendfile(2), after the
    /// bytes written before it and before those written after it. Replaces an
    /// earlier file; a reply carries either this or [`send_file`](Self::send_file).
    ///
    /// ```
    /// # fn answer(reply: &mut berth_server::Reply<'_>, file: std::fs::File) -> Result<(), berth_server::ReplyFull> {
    /// use berth_sendfile::ByteRange;
    /// reply.file_parts(file);
    /// reply.write_bytes(b"first: ")?;
    /// reply.file_part(ByteRange::new(0, 10).unwrap())?;
    /// reply.write_bytes(b"\nlast: ")?;
    /// reply.file_part(ByteRange::new(90, 10).unwrap())?;
    /// reply.write_bytes(b"\n")
    /// # }
    /// ```
    pub fn file_parts(&mut self, file: impl Into<SourceFile>) {
        self.parts.file = Some(file.into());
    }

    /// Sends `range` of the [`file_parts`](Self::file_parts) file at this point of
    /// the reply. Fails (and the connection is closed after the call) without a file
    /// or past [`MAX_FILE_PARTS`] ranges.
    pub fn file_part(&mut self, range: ByteRange) -> Result<(), ReplyFull> {
        if self.parts.file.is_none() || self.parts.n == MAX_FILE_PARTS {
            self.failed = true;
            return Err(ReplyFull);
        }
        self.parts.marks[self.parts.n] = (self.written().len(), range);
        self.parts.n += 1;
        Ok(())
    }

    /// Closes the connection once the reply is sent (a lingering close: the server
    /// shuts down its sending side and discards input until the peer closes or a
    /// short timeout passes, so the peer reads the whole reply).
    pub fn close(&mut self) {
        self.close = true;
    }

    /// Whether [`close`](Self::close) was asked for.
    pub fn closing(&self) -> bool {
        self.close
    }

    /// True when the input handed to [`Service::data`] is as large as the server
    /// buffers: consuming nothing now would leave the connection stuck, so the service
    /// must answer (an HTTP server's 431) or close.
    pub fn input_full(&self) -> bool {
        self.input_full
    }

    /// True when the server is shutting down and will close the connection after this
    /// reply (an HTTP service says `Connection: close`).
    pub fn server_closing(&self) -> bool {
        self.server_closing
    }
}

impl io::Write for Reply<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf).map(|()| buf.len()).map_err(|e| io::Error::new(io::ErrorKind::WriteZero, e))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("written", &self.written().len())
            .field("file", &self.file.as_ref().map(|f| f.range()))
            .field("parts", &&self.parts.marks[..self.parts.n])
            .field("close", &self.close)
            .field("failed", &self.failed)
            .field("later", &self.later)
            .field("stream", &self.stream)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_id_keeps_worker_slot_and_generation() {
        let socket = SocketId::from_u64((0xDEAD_BEEF << 32) | 0x12_3456);
        let id = ConnId::new(200, socket);
        assert_eq!(id.worker(), 200);
        assert_eq!(id.socket(), socket);
        assert_eq!(ConnId::from_u64(id.to_u64()), id);
        // The same slot under another generation or worker is another id.
        assert_ne!(ConnId::new(200, SocketId::from_u64((0xDEAD_BEF0 << 32) | 0x12_3456)), id);
        assert_ne!(ConnId::new(3, socket), id);
    }
}
