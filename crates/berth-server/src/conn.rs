//! One worker's connections: the completion handler that runs a [`Service`] on a
//! completion port.
//!
//! Each connection has a slot in a `Vec` indexed by its socket's slot index
//! (preallocated: no allocation per connection) and two ops taken at accept: one for
//! reading, one for writing. A connection is in one phase at a time:
//!
//! - *Reading*: a receive is pending. With nothing buffered it is a pooled receive
//!   (no segment held while idle) whose deadline is the idle timeout (the header
//!   timeout for a fresh connection); with part of a request buffered it reads into
//!   the rest of the same segment, with the deadline fixed at the request's first
//!   byte plus the header timeout, so trickling bytes do not extend it.
//! - *Writing*: the reply's bytes, then its file, are being sent. Nothing is read
//!   meanwhile; pipelined requests wait in the read segment and are handed to the
//!   service once the reply is out. A streamed reply ([`Reply::stream`]) stays in
//!   this phase from segment to segment: once one is sent its buffer is given back
//!   and [`Service::more`] writes the next into a fresh lease, so the connection
//!   holds one reply segment however long the reply.
//! - *Lingering*: after a reply that closes, the sending side is shut down and input is
//!   discarded until the peer closes or a short deadline passes, so the peer reads
//!   the whole reply instead of a reset.
//! - *Awaiting*: the service will answer later ([`Reply::answer_later`]), from
//!   [`Service::posted`] through [`Conns`]. No op is pending; unconsumed input waits
//!   in the read segment. The answer has a deadline (the answer timeout), checked by
//!   a sweep over the connections that runs only while some connection awaits, and
//!   at most every `timeout / 8`: no timer per connection, no allocation.
//!
//! An op is given back to the port's pool exactly once: at close if it is idle, or
//! when its (cancelled) completion arrives if it was pending.

use std::any::Any;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_ops::{OpError, OpId, OpKind};
use berth_reactor::workers::Worker as PortWorker;
use berth_reactor::{Completion, CompletionPort, Handler, Interest, SocketId};

use crate::metrics::{Counter, Local, Row};
use crate::server::SHUTDOWN;
use crate::service::{ConnId, FileParts, Reply, ReplyParts, SERVICE_POST, Service, Watch, WorkerHandle};

/// How long a lingering close waits for the peer to close.
const LINGER: Duration = Duration::from_secs(2);

/// The server's limits, as a worker needs them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) answer_timeout: Option<Duration>,
    pub(crate) max_input: usize,
}

impl Limits {
    /// The least time between two sweeps for overdue answers.
    fn sweep_every(&self) -> Duration {
        self.answer_timeout.map_or(Duration::MAX, |t| (t / 8).clamp(Duration::from_millis(10), Duration::from_secs(1)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Reading,
    Writing,
    Lingering,
    Awaiting,
}

struct Conn<C> {
    socket: SocketId,
    read: OpId,
    write: OpId,
    read_pending: bool,
    write_pending: bool,
    phase: Phase,
    /// Consumed bytes at the front of the read segment.
    start: usize,
    /// When the first byte of the request being read arrived.
    request_started: Option<Instant>,
    /// No request has arrived yet.
    fresh: bool,
    /// The body still to send after the reply's bytes.
    file: Option<berth_sendfile::FileSend<berth_sendfile::SourceFile>>,
    /// A reply of several parts ([`Reply::file_part`]): its bytes, kept here because
    /// the write op's segment is sendfile's scratch; the file ranges between them;
    /// how far the bytes are sent and which part is next.
    pieces: Option<Pieces>,
    close_after: bool,
    /// Wait for the service's later answer once the reply is sent.
    await_after: bool,
    /// Ask the service for the next segment once this one is sent.
    stream_after: bool,
    /// The stream yielded: [`Service::more`] is called again when the resume
    /// posted to this worker arrives.
    resume_pending: bool,
    /// While awaiting: when the answer is overdue.
    answer_by: Option<Instant>,
    user: C,
}

/// A reply of bytes with file ranges between them, being sent in turn.
struct Pieces {
    head: berth_buf::Lease,
    parts: FileParts,
    /// Bytes of `head` sent.
    pos: usize,
    /// The next part to send.
    next: usize,
}

/// One worker's completion handler.
pub(crate) struct Worker<S: Service> {
    service: Arc<S>,
    /// This worker's index, for [`ConnId`]s.
    index: usize,
    /// How many workers the server runs.
    workers: usize,
    /// The service's state for this worker ([`Service::worker_state`]).
    state: Option<Box<dyn Any>>,
    /// The service's watches on this port, and whether each is armed.
    watches: Vec<(Watch, bool)>,
    limits: Limits,
    listener: Option<SocketId>,
    accept: Option<OpId>,
    conns: Vec<Option<Conn<S::Conn>>>,
    live: usize,
    draining: Option<Instant>,
    /// When to sweep for overdue answers next; `None` while no connection awaits.
    sweep_at: Option<Instant>,
    counts: Local,
    /// Connections this worker refused itself (no op left for them).
    refused_here: u64,
    /// `process` is handing a reply to `write`: a reply that ends there and then
    /// (nothing to send, an empty stream) asks for the next request through
    /// `process_again` instead of calling `process` again, so pipelined requests
    /// loop rather than nest (they would overflow the worker's stack).
    in_process: bool,
    process_again: bool,
    /// Streams that yielded (their connection index and socket), resumed after the
    /// next wait's completions. Kept here, not posted to the port: the post queue
    /// is shared with shutdown and the service's posts, which a crowd of yielding
    /// streams must not crowd out. Room for every connection, made at the start.
    yielded: std::collections::VecDeque<(usize, SocketId)>,
}

impl<S: Service> Worker<S> {
    pub(crate) fn new(service: Arc<S>, limits: Limits, listener: SocketId, max_sockets: usize, workers: usize) -> Self {
        Worker {
            service,
            index: 0,
            workers,
            state: None,
            watches: Vec::new(),
            limits,
            listener: Some(listener),
            accept: None,
            conns: (0..max_sockets).map(|_| None).collect(),
            live: 0,
            draining: None,
            sweep_at: None,
            counts: Local::default(),
            refused_here: 0,
            in_process: false,
            process_again: false,
            yielded: std::collections::VecDeque::with_capacity(max_sockets),
        }
    }

    /// The worker thread's loop: accept, serve, and on shutdown drain and return.
    pub(crate) fn run(mut self, worker: PortWorker<()>, rows: &[Row]) -> std::io::Result<()> {
        let PortWorker { index, mut port, listener } = worker;
        let row = &rows[index];
        self.index = index;
        self.service.worker_started(WorkerHandle::new(index, self.workers, port.handle()));
        let service = self.service.clone();
        self.state = service.worker_state(&mut Conns { worker: &mut self, port: &mut port });
        let accept = port.take_op().map_err(std::io::Error::other)?;
        port.accept(listener, accept).map_err(std::io::Error::other)?;
        self.accept = Some(accept);
        loop {
            service.before_wait(&mut Conns { worker: &mut self, port: &mut port });
            let wake = match (self.draining, self.sweep_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = wake.map(|d| d.saturating_duration_since(Instant::now()));
            // A stream that yielded goes on once this wait's completions are handled:
            // the wait must not sleep.
            let timeout = if self.yielded.is_empty() { timeout } else { Some(Duration::ZERO) };
            port.run_once(&mut self, timeout)?;
            for _ in 0..self.yielded.len() {
                let Some((index, socket)) = self.yielded.pop_front() else { break };
                self.resume(&mut port, index, socket);
            }
            if self.sweep_at.is_some_and(|at| Instant::now() >= at) {
                self.sweep(&mut port);
            }
            self.publish(&port, row);
            if let Some(deadline) = self.draining {
                if self.live == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::debug!(worker = index, open = self.live, "grace period over: closing connections");
                    for i in 0..self.conns.len() {
                        self.close(&mut port, i);
                    }
                    self.publish(&port, row);
                    break;
                }
            }
        }
        tracing::debug!(worker = index, "worker stopped");
        Ok(())
    }

    fn publish(&mut self, port: &CompletionPort<()>, row: &Row) {
        let stats = port.stats();
        let pool = port.pool_stats();
        let c = &mut self.counts;
        c.set(Counter::OpsInline, stats.completed_inline);
        c.set(Counter::OpsQueued, stats.completed_queued);
        c.set(Counter::Uring, u64::from(stats.driver == berth_reactor::Driver::Uring));
        c.set(Counter::CqOverflows, stats.cq_overflows);
        c.set(Counter::SendWaits, stats.send_waits);
        c.set(Counter::AsleepUs, u64::try_from(stats.blocked.as_micros()).unwrap_or(u64::MAX));
        c.set(Counter::OpsCapacity, pool.capacity as u64);
        c.set(Counter::OpsInUse, pool.in_use as u64);
        c.set(Counter::OpsHighWater, pool.high_water as u64);
        c.set(Counter::OpsExhausted, pool.exhausted);
        // Refusals by the connection limit are read from the limit itself (they
        // complete nothing, so no batch follows them); these are the rest.
        c.set(Counter::Refused, self.refused_here);
        row.publish(c);
    }
}

impl<S: Service> Worker<S> {
    // ---- connections --------------------------------------------------------------

    fn accepted(&mut self, port: &mut CompletionPort<()>, socket: SocketId) {
        let index = socket.index();
        if self.draining.is_some() || index >= self.conns.len() {
            let _ = port.close(socket);
            return;
        }
        let (read, write) = match (port.take_op(), port.take_op()) {
            (Ok(r), Ok(w)) => (r, w),
            (r, w) => {
                for op in [r, w].into_iter().flatten() {
                    let _ = port.give_op(op);
                }
                let _ = port.close(socket);
                self.refused_here += 1;
                tracing::debug!("connection refused: op pool empty");
                return;
            }
        };
        let peer = port.stream(socket).ok().and_then(|s| s.peer_addr().ok());
        let user = self.service.connect(peer);
        self.conns[index] = Some(Conn {
            socket,
            read,
            write,
            read_pending: false,
            write_pending: false,
            phase: Phase::Reading,
            start: 0,
            request_started: None,
            fresh: true,
            file: None,
            pieces: None,
            close_after: false,
            await_after: false,
            stream_after: false,
            resume_pending: false,
            answer_by: None,
            user,
        });
        self.live += 1;
        self.counts.add(Counter::Accepted, 1);
        self.read(port, index);
    }

    /// Closes connection `index` (if open): its pending op completes as cancelled and
    /// is given back then; idle ops are given back now.
    fn close(&mut self, port: &mut CompletionPort<()>, index: usize) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::take) else { return };
        let _ = port.close(conn.socket);
        if !conn.read_pending {
            let _ = port.give_op(conn.read);
        }
        if !conn.write_pending {
            let _ = port.give_op(conn.write);
        }
        self.live -= 1;
        self.counts.add(Counter::Closed, 1);
        drop(conn.file);
        self.service.disconnect(conn.user);
    }

    fn conn(&mut self, index: usize) -> Option<&mut Conn<S::Conn>> {
        self.conns.get_mut(index).and_then(Option::as_mut)
    }

    /// Connection `index` now waits for the service's answer, until the answer
    /// timeout.
    fn awaiting(&mut self, index: usize) {
        let timeout = self.limits.answer_timeout;
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        conn.phase = Phase::Awaiting;
        conn.answer_by = timeout.and_then(|t| Instant::now().checked_add(t));
        if let Some(by) = conn.answer_by
            && self.sweep_at.is_none_or(|at| by < at)
        {
            self.sweep_at = Some(by);
        }
    }

    /// Closes (cleanly, as [`Reply::close`]) every connection whose answer is
    /// overdue, and schedules the next sweep for the earliest deadline left, but not
    /// sooner than [`Limits::sweep_every`] from now.
    fn sweep(&mut self, port: &mut CompletionPort<()>) {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for index in 0..self.conns.len() {
            let Some(conn) = self.conns[index].as_ref() else { continue };
            let Some(by) = conn.answer_by.filter(|_| conn.phase == Phase::Awaiting) else { continue };
            if by <= now {
                tracing::debug!(socket = ?conn.socket, "no answer within the answer timeout: closing");
                self.counts.add(Counter::AnswerTimeouts, 1);
                self.linger(port, index);
            } else {
                next = Some(next.map_or(by, |n| n.min(by)));
            }
        }
        let soonest = now.checked_add(self.limits.sweep_every()).unwrap_or(now);
        self.sweep_at = next.map(|n| n.max(soonest));
    }

    fn begin_drain(&mut self, port: &mut CompletionPort<()>, grace: Duration) {
        if self.draining.is_some() {
            return;
        }
        let now = Instant::now();
        self.draining = Some(now.checked_add(grace).unwrap_or(now + Duration::from_secs(86_400 * 365)));
        if let Some(listener) = self.listener.take() {
            // Cancels the pending accept; its completion gives the op back.
            let _ = port.close(listener);
        }
        for index in 0..self.conns.len() {
            // Waiting for a request that has not started, or lingering after the
            // last reply: nothing in flight.
            let idle = self.conns[index].as_ref().is_some_and(|c| {
                c.phase == Phase::Lingering
                    || (c.phase == Phase::Reading && c.read_pending && c.request_started.is_none())
            });
            if idle {
                self.close(port, index);
            }
        }
    }

    // ---- reading ------------------------------------------------------------------

    /// Submits the connection's next receive, or closes it when nothing more can
    /// come of it.
    fn read(&mut self, port: &mut CompletionPort<()>, index: usize) {
        let limits = self.limits;
        let draining = self.draining;
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        conn.phase = Phase::Reading;
        let now = Instant::now();
        let Ok(args) = port.op_mut(conn.read) else { return self.close(port, index) };
        let filled = args.buffer().map_or(0, |b| b.len());
        let buffered = filled.saturating_sub(conn.start);
        let mut deadline = if buffered == 0 {
            conn.request_started = None;
            now + if conn.fresh { limits.header_timeout } else { limits.idle_timeout }
        } else {
            *conn.request_started.get_or_insert(now) + limits.header_timeout
        };
        if let Some(d) = draining {
            if buffered == 0 {
                return self.close(port, index);
            }
            deadline = deadline.min(d);
        }
        let submitted = if buffered == 0 {
            conn.start = 0;
            port.set_deadline(conn.read, Some(deadline)).and_then(|()| port.recv_pooled(conn.socket, conn.read))
        } else {
            // Keep the partial request: move it to the front and read after it.
            let start = conn.start;
            conn.start = 0;
            let Some(lease) = args.buffer_mut() else { return self.close(port, index) };
            lease.copy_within(start..filled, 0);
            let limit = limits.max_input.min(lease.capacity());
            if lease.set_len(buffered).is_err() || buffered >= limit || args.set_range(buffered..limit).is_err() {
                // The service left a full buffer unanswered.
                return self.close(port, index);
            }
            port.set_deadline(conn.read, Some(deadline)).and_then(|()| port.recv(conn.socket, conn.read))
        };
        match submitted {
            Ok(()) => conn.read_pending = true,
            Err(_) => self.close(port, index),
        }
    }

    fn received(&mut self, port: &mut CompletionPort<()>, index: usize, result: Result<usize, OpError>) {
        let Some(conn) = self.conn(index) else { return };
        conn.read_pending = false;
        let lingering = conn.phase == Phase::Lingering;
        let (socket, read) = (conn.socket, conn.read);
        match result {
            Ok(n) if n > 0 => {
                self.counts.add(Counter::BytesIn, n as u64);
                if lingering {
                    // Discard, keep waiting for the peer's close (same deadline).
                    if port.recv_pooled(socket, read).is_ok() {
                        if let Some(conn) = self.conn(index) {
                            conn.read_pending = true;
                        }
                    } else {
                        self.close(port, index);
                    }
                    return;
                }
                if let Some(conn) = self.conn(index) {
                    conn.fresh = false;
                    conn.request_started.get_or_insert_with(Instant::now);
                }
                self.process(port, index);
            }
            Err(OpError::TimedOut) => {
                if !lingering {
                    self.counts.add(Counter::Timeouts, 1);
                    tracing::debug!(?socket, "read deadline passed: closing");
                }
                self.close(port, index);
            }
            // End of stream, an error, or the arena ran dry.
            _ => self.close(port, index),
        }
    }

    /// Hands the buffered input to the service until it answers or wants more.
    fn process(&mut self, port: &mut CompletionPort<()>, index: usize) {
        loop {
            let draining = self.draining.is_some();
            let max_input = self.limits.max_input;
            let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
            let (consumed, parts) = {
                let Ok(args) = port.op(conn.read) else { return self.close(port, index) };
                let input = args.buffer().and_then(|b| b.filled().get(conn.start..)).unwrap_or(&[]);
                if input.is_empty() {
                    break;
                }
                let full = input.len() >= max_input.min(args.buffer().map_or(0, |b| b.capacity()));
                let lease = || port.lease();
                let state = self.state.as_deref_mut();
                let mut reply = Reply::new(&lease, ConnId::new(self.index, conn.socket), full, draining, state);
                let consumed = self.service.data(&mut conn.user, input, &mut reply).min(input.len());
                (consumed, reply.into_parts())
            };
            conn.start += consumed;
            if parts.failed {
                tracing::debug!(socket = ?conn.socket, "reply did not fit or no buffer: closing");
                return self.close(port, index);
            }
            // A stream asked for with nothing written yet starts with `more`.
            if !parts.is_empty() || parts.stream {
                conn.request_started = None;
                self.in_process = true;
                self.write(port, index, parts);
                self.in_process = false;
                if std::mem::take(&mut self.process_again) {
                    // The reply ended within `write` (nothing to send): next request.
                    continue;
                }
                return;
            }
            if parts.later {
                conn.request_started = None;
                return self.awaiting(index);
            }
            if consumed == 0 {
                break;
            }
        }
        self.read(port, index);
    }

    // ---- writing ------------------------------------------------------------------

    fn write(&mut self, port: &mut CompletionPort<()>, index: usize, parts: ReplyParts) {
        let draining = self.draining.is_some();
        let write_timeout = self.limits.write_timeout;
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        conn.phase = Phase::Writing;
        // A close asked for by an earlier segment of a stream still holds (it is
        // false for a fresh reply: a reply that closes does not read again).
        conn.close_after |= parts.close || (draining && !parts.later);
        conn.await_after = parts.later && !parts.close;
        conn.stream_after = parts.stream;
        conn.file = parts.file;
        let deadline = write_timeout.map(|t| Instant::now() + t);
        if port.set_deadline(conn.write, deadline).is_err() {
            return self.close(port, index);
        }
        if parts.parts.n > 0 {
            let Some(head) = parts.head else { return self.close(port, index) };
            conn.pieces = Some(Pieces { head, parts: parts.parts, pos: 0, next: 0 });
            return self.next_piece(port, index);
        }
        let Some(head) = parts.head.filter(|h| !h.is_empty()) else {
            return if conn.file.is_some() { self.send_file(port, index) } else { self.replied(port, index) };
        };
        let len = head.len();
        let mut sent = 0;
        if let Some(file) = conn.file.as_mut() {
            // Nothing else is queued to write on this socket, so the head may go out
            // directly, with MSG_MORE: it then shares a segment with the body.
            let Ok(stream) = port.fd(conn.socket) else { return self.close(port, index) };
            match file.send_header(stream, &head[..len]) {
                Ok(n) => sent = n,
                Err(e) if e.is_would_block() => {}
                Err(e) => {
                    tracing::debug!(socket = ?conn.socket, "sending reply: {e}");
                    return self.close(port, index);
                }
            }
            self.counts.add(Counter::BytesOut, sent as u64);
        }
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        let capacity = head.capacity();
        let range = if sent == len { 0..capacity } else { sent..len };
        let attached = port.op_mut(conn.write).map(|args| args.set_buffer(head, range).is_ok());
        if !matches!(attached, Ok(true)) {
            return self.close(port, index);
        }
        if sent == len {
            // The head is out; the segment stays on the op as sendfile's scratch.
            return self.send_file(port, index);
        }
        match port.send(conn.socket, conn.write) {
            Ok(()) => conn.write_pending = true,
            Err(_) => self.close(port, index),
        }
    }

    /// Sends the next piece of a reply of several parts: the bytes up to the next
    /// part (copied into the write op's own segment), or the part's file range.
    fn next_piece(&mut self, port: &mut CompletionPort<()>, index: usize) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        let Some(p) = conn.pieces.as_mut() else { return self.replied(port, index) };
        let len = p.head.len();
        let (mark, part) = match p.parts.marks[..p.parts.n].get(p.next) {
            Some(&(mark, range)) => (mark.min(len), Some(range)),
            None => (len, None),
        };
        let Ok(args) = port.op_mut(conn.write) else { return self.close(port, index) };
        let mut buffer = match args.take_buffer() {
            Some(lease) => lease,
            None => match port.lease() {
                Ok(lease) => lease,
                Err(_) => return self.close(port, index),
            },
        };
        let Ok(args) = port.op_mut(conn.write) else { return self.close(port, index) };
        if p.pos < mark {
            let chunk = &p.head[p.pos..mark];
            // The head came from a segment of the same size: it fits.
            let n = chunk.len().min(buffer.capacity());
            buffer[..n].copy_from_slice(&chunk[..n]);
            p.pos += n;
            if args.set_buffer(buffer, 0..n).is_err() {
                return self.close(port, index);
            }
            return match port.send(conn.socket, conn.write) {
                Ok(()) => conn.write_pending = true,
                Err(_) => self.close(port, index),
            };
        }
        let Some(range) = part else {
            // Every byte and part is out.
            drop(buffer);
            conn.pieces = None;
            return self.replied(port, index);
        };
        p.next += 1;
        // A handle of its own per part (a dup, or for a cached file a clone of its
        // Arc: no allocation either way), since the port keeps the FileSend until the
        // part is sent.
        let Some(Ok(file)) = p.parts.file.as_ref().map(berth_sendfile::SourceFile::try_clone) else {
            return self.close(port, index);
        };
        let capacity = buffer.capacity();
        if args.set_buffer(buffer, 0..capacity).is_err() {
            return self.close(port, index);
        }
        match port.send_file(conn.socket, conn.write, berth_sendfile::FileSend::new(file, range)) {
            Ok(()) => conn.write_pending = true,
            Err(_) => self.close(port, index),
        }
    }

    fn send_file(&mut self, port: &mut CompletionPort<()>, index: usize) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        let Some(file) = conn.file.take() else { return self.replied(port, index) };
        if port.op(conn.write).is_ok_and(|a| a.buffer().is_none())
            && let Ok(scratch) = port.lease()
            && let Ok(args) = port.op_mut(conn.write)
        {
            // Scratch space in case sendfile is refused and the copy fallback runs.
            let capacity = scratch.capacity();
            let _ = args.set_buffer(scratch, 0..capacity);
        }
        match port.send_file(conn.socket, conn.write, file) {
            Ok(()) => conn.write_pending = true,
            Err(_) => self.close(port, index),
        }
    }

    fn sent(&mut self, port: &mut CompletionPort<()>, index: usize, kind: OpKind, result: Result<usize, OpError>) {
        let Some(conn) = self.conn(index) else { return };
        conn.write_pending = false;
        match result {
            Ok(n) => {
                self.counts.add(Counter::BytesOut, n as u64);
                if self.conn(index).is_some_and(|c| c.pieces.is_some()) {
                    self.next_piece(port, index);
                } else if kind == OpKind::Send && self.conn(index).is_some_and(|c| c.file.is_some()) {
                    self.send_file(port, index);
                } else {
                    self.replied(port, index);
                }
            }
            Err(e) => {
                if e == OpError::Truncated {
                    tracing::warn!("file shrank while being sent: closing the connection");
                } else {
                    tracing::debug!("send failed: {e}");
                }
                self.close(port, index);
            }
        }
    }

    /// A reply (or a segment of a streamed one) is sent: the next segment, or read
    /// the next request, or close.
    fn replied(&mut self, port: &mut CompletionPort<()>, index: usize) {
        let draining = self.draining;
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        if let Ok(args) = port.op_mut(conn.write) {
            drop(args.take_buffer());
        }
        if std::mem::take(&mut conn.stream_after) {
            return self.more(port, index);
        }
        self.counts.add(Counter::Replies, 1);
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        self.service.reply_sent(&mut conn.user);
        if std::mem::take(&mut conn.await_after) {
            // Even while draining: the answer may still come within the grace period.
            return self.awaiting(index);
        }
        if !(conn.close_after || draining.is_some()) {
            if self.in_process {
                // Called from `process` itself: it goes on with the next request.
                self.process_again = true;
                return;
            }
            return self.process(port, index);
        }
        self.linger(port, index);
    }

    /// The next segment of a streamed reply, written by [`Service::more`] into a
    /// fresh lease (the last segment's was given back in [`replied`](Self::replied)).
    fn more(&mut self, port: &mut CompletionPort<()>, index: usize) {
        let draining = self.draining.is_some();
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        let id = ConnId::new(self.index, conn.socket);
        let parts = {
            let lease = || port.lease();
            let state = self.state.as_deref_mut();
            let mut reply = Reply::new(&lease, id, false, draining, state);
            self.service.more(&mut conn.user, &mut reply);
            reply.into_parts()
        };
        if parts.failed || parts.later {
            tracing::debug!(socket = ?conn.socket, "stream segment did not fit, no buffer, or asked to wait: closing");
            return self.close(port, index);
        }
        if !parts.is_empty() {
            // `write` keeps a close asked for by an earlier segment.
            return self.write(port, index, parts);
        }
        if !parts.stream {
            // Nothing more: the stream ends here.
            return self.replied(port, index);
        }
        // Nothing yet, but more to come: let this worker's other completions
        // run first (at most one entry per connection: it holds room for all).
        conn.resume_pending = true;
        self.yielded.push_back((index, conn.socket));
    }

    /// A stream that yielded goes on (if its connection is still the one that
    /// yielded).
    fn resume(&mut self, port: &mut CompletionPort<()>, index: usize, socket: SocketId) {
        let Some(conn) = self.conn(index) else { return };
        if conn.socket != socket || !std::mem::take(&mut conn.resume_pending) {
            return;
        }
        self.more(port, index);
    }

    /// Lingering close: FIN now, discard input until the peer's FIN or a deadline,
    /// so unread input does not turn our close into a reset that eats the reply.
    fn linger(&mut self, port: &mut CompletionPort<()>, index: usize) {
        let draining = self.draining;
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        conn.phase = Phase::Lingering;
        if let Ok(stream) = port.stream(conn.socket) {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        } else if let Ok(stream) = port.unix_stream(conn.socket) {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        let mut deadline = Instant::now() + LINGER;
        if let Some(d) = draining {
            deadline = deadline.min(d);
        }
        let (socket, read) = (conn.socket, conn.read);
        match port.set_deadline(read, Some(deadline)).and_then(|()| port.recv_pooled(socket, read)) {
            Ok(()) => conn.read_pending = true,
            Err(_) => self.close(port, index),
        }
    }
}

impl<S: Service> Handler<()> for Worker<S> {
    fn completed(&mut self, port: &mut CompletionPort<()>, completion: Completion) {
        let (op, kind, socket, result) = match completion {
            Completion::Posted { key: SHUTDOWN, data } => {
                return self.begin_drain(port, Duration::from_millis(data));
            }
            Completion::Posted { key: SERVICE_POST, data } => {
                let service = self.service.clone();
                return service.posted(data, &mut Conns { worker: self, port });
            }
            Completion::Posted { .. } => return,
            Completion::Op { op, kind, socket, result } => (op, kind, socket, result),
        };
        if Some(op) == self.accept {
            match (result, self.listener) {
                (Ok(_), Some(listener)) => {
                    self.accepted(port, socket);
                    if port.accept(listener, op).is_err() {
                        tracing::error!("accept could not be resubmitted; this worker stops accepting");
                        let _ = port.give_op(op);
                        self.accept = None;
                    }
                }
                (Ok(_), None) => {
                    let _ = port.close(socket);
                    let _ = port.give_op(op);
                    self.accept = None;
                }
                (Err(e), listener) => {
                    if e != OpError::Cancelled {
                        tracing::warn!("accept failed: {e}");
                    }
                    let again = listener.is_some_and(|l| e.is_transient() && port.accept(l, op).is_ok());
                    if !again {
                        let _ = port.give_op(op);
                        self.accept = None;
                    }
                }
            }
            return;
        }
        let index = socket.index();
        let ours = self.conns.get(index).and_then(Option::as_ref).is_some_and(|c| {
            c.socket == socket
                && ((op == c.read && c.read_pending && kind == OpKind::Recv)
                    || (op == c.write && c.write_pending && matches!(kind, OpKind::Send | OpKind::SendFile)))
        });
        if !ours {
            if let Some(at) = self.watches.iter().position(|&(w, armed)| armed && w.op == op) {
                self.watches[at].1 = false;
                let watch = self.watches[at].0;
                let service = self.service.clone();
                return service.ready(watch, result.map(|_| ()), &mut Conns { worker: self, port });
            }
            // A pending op of a connection closed since (or of a watch removed
            // since): give it back now.
            let _ = port.give_op(op);
            return;
        }
        match kind {
            OpKind::Recv => self.received(port, index, result),
            _ => self.sent(port, index, kind, result),
        }
    }
}

// ---- answers from elsewhere --------------------------------------------------------

/// One worker's connections, handed to [`Service::posted`]: answer a connection that
/// waits for an answer ([`Reply::answer_later`]), or close such connections.
pub struct Conns<'a, S: Service> {
    worker: &'a mut Worker<S>,
    port: &'a mut CompletionPort<()>,
}

/// [`Conns::answer`] found no connection waiting for an answer under that id: it
/// closed (its id is stale), belongs to another worker, or is not waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no connection waits for an answer under this id")]
pub struct NotWaiting;

impl<S: Service> Conns<'_, S> {
    /// This worker's index (as in [`ConnId::worker`]).
    pub fn worker(&self) -> usize {
        self.worker.index
    }

    /// A handle that posts to this worker ([`Service::posted`]), from any thread.
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle::new(self.worker.index, self.worker.workers, self.port.handle())
    }

    /// This worker's state ([`Service::worker_state`]), if it has one of type `T`.
    pub fn worker_state<T: 'static>(&mut self) -> Option<&mut T> {
        self.worker.state.as_deref_mut()?.downcast_mut()
    }

    /// Registers `fd` on this worker's port, to wait for it to turn readable
    /// ([`arm`](Self::arm)) with no thread of its own: an eventfd, a pipe, a
    /// berth-ipc channel's wake descriptor. The port keeps a duplicate of `fd`
    /// until [`unwatch`](Self::unwatch) (or the worker stops).
    ///
    /// # Errors
    /// What [`CompletionPort::register_fd`] refuses (a regular file, a closed
    /// descriptor), a full socket table, or no op left in the port's pool.
    pub fn watch(&mut self, fd: impl AsFd) -> io::Result<Watch> {
        let socket = self.port.register_fd(fd).map_err(submit_error)?;
        match self.port.take_op() {
            Ok(op) => Ok(self.add_watch(Watch { socket: Some(socket), op })),
            Err(e) => {
                let _ = self.port.close(socket);
                Err(io::Error::other(e))
            }
        }
    }

    /// A watch on no descriptor: [`arm`](Self::arm) it with a deadline and
    /// [`Service::ready`] reports `Ok(())` then (a timer on the worker's port).
    pub fn timer(&mut self) -> io::Result<Watch> {
        let op = self.port.take_op().map_err(io::Error::other)?;
        Ok(self.add_watch(Watch { socket: None, op }))
    }

    fn add_watch(&mut self, watch: Watch) -> Watch {
        self.worker.watches.push((watch, false));
        watch
    }

    /// Arms `watch` once: [`Service::ready`] is called when its descriptor turns
    /// readable, or at `deadline` (`Err(OpError::TimedOut)`; for a
    /// [timer](Self::timer), `Ok(())` — a timer without a deadline fires at once).
    /// Re-arm after each report. A watch waits in its descriptor's queue: arming
    /// one that is armed already is an error, as is one not of this worker.
    pub fn arm(&mut self, watch: Watch, deadline: Option<Instant>) -> io::Result<()> {
        let Some(at) = self.worker.watches.iter().position(|&(w, _)| w == watch) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such watch on this worker"));
        };
        if self.worker.watches[at].1 {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "the watch is armed already"));
        }
        match watch.socket {
            Some(socket) => {
                self.port.set_deadline(watch.op, deadline).map_err(submit_error)?;
                self.port.wait_ready(socket, watch.op, Interest::Readable).map_err(submit_error)?;
            }
            None => self.port.timer(watch.op, deadline.unwrap_or_else(Instant::now)).map_err(submit_error)?,
        }
        self.worker.watches[at].1 = true;
        Ok(())
    }

    /// Removes `watch`: its descriptor's duplicate is closed and a pending wait is
    /// cancelled, unreported.
    pub fn unwatch(&mut self, watch: Watch) {
        let Some(at) = self.worker.watches.iter().position(|&(w, _)| w == watch) else { return };
        let (_, armed) = self.worker.watches.swap_remove(at);
        match watch.socket {
            // Its cancelled completion, if armed, is given back when it comes.
            Some(socket) => {
                let _ = self.port.close(socket);
            }
            None if armed => {
                let _ = self.port.cancel(watch.op);
            }
            None => {}
        }
        if !armed {
            let _ = self.port.give_op(watch.op);
        }
    }

    /// Answers connection `id`, which waits for an answer: `answer` gets its state
    /// and a [`Reply`] as [`Service::data`] does. Once the reply is sent the
    /// connection goes on with its buffered input and reads again — unless the reply
    /// closes it, or asks to [`answer_later`](Reply::answer_later) again.
    pub fn answer(&mut self, id: ConnId, answer: impl FnOnce(&mut S::Conn, &mut Reply<'_>)) -> Result<(), NotWaiting> {
        let w = &mut *self.worker;
        let port = &mut *self.port;
        if id.worker() != w.index {
            return Err(NotWaiting);
        }
        let socket = id.socket();
        let index = socket.index();
        let draining = w.draining.is_some();
        let Some(conn) = w.conns.get_mut(index).and_then(Option::as_mut) else { return Err(NotWaiting) };
        if conn.socket != socket || conn.phase != Phase::Awaiting {
            return Err(NotWaiting);
        }
        let parts = {
            let lease = || port.lease();
            let mut reply = Reply::new(&lease, id, false, draining, w.state.as_deref_mut());
            answer(&mut conn.user, &mut reply);
            reply.into_parts()
        };
        if parts.failed {
            tracing::debug!(socket = ?conn.socket, "answer did not fit or no buffer: closing");
            w.close(port, index);
        } else if !parts.is_empty() || parts.stream {
            w.write(port, index, parts);
        } else if !parts.later {
            w.process(port, index);
        }
        Ok(())
    }

    /// Closes cleanly (a lingering close, as [`Reply::close`]) every connection that
    /// waits for an answer and for whose state `which` returns true; returns how many.
    pub fn close_waiting(&mut self, mut which: impl FnMut(&mut S::Conn) -> bool) -> usize {
        let w = &mut *self.worker;
        let mut closed = 0;
        for index in 0..w.conns.len() {
            let Some(conn) = w.conns[index].as_mut() else { continue };
            if conn.phase == Phase::Awaiting && which(&mut conn.user) {
                closed += 1;
                w.linger(self.port, index);
            }
        }
        closed
    }
}

fn submit_error(e: berth_reactor::SubmitError) -> io::Error {
    match e {
        berth_reactor::SubmitError::Io(e) => e,
        e => io::Error::other(e),
    }
}

impl<S: Service> std::fmt::Debug for Conns<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conns").field("worker", &self.worker.index).field("open", &self.worker.live).finish()
    }
}
