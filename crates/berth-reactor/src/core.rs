//! The driver-independent part of a port: the op pool and each op's metadata, the
//! socket table with its per-direction FIFO queues, deadlines, the ready list and
//! the counters. Knows nothing of epoll or io_uring; a driver (`crate::driver`)
//! moves ops from these queues to the kernel and reports back through
//! [`Core::complete`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_buf::{BufferManager, Lease, LocalCache};
use berth_ops::{ConnectionLimit, ConnectionPermit, OpError, OpId, OpKind, OpPool};
use berth_sendfile::{FileSend, SourceFile};
use slab::Slab;

use crate::handle::Shared;
use crate::port::{Completion, PortStats, SubmitError};
use crate::socket::{Dir, Entry, Io, NIL, Queue, SocketId, Stream};
use crate::timer::{self, Target, Timers};

/// Accept back-off after EMFILE/ENFILE: first delay, then doubling up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Where an op is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Idle,
    /// In its socket's queue for `dir`; the head of a queue may also be with the
    /// kernel (`Meta::kernel`).
    Queued {
        socket: u32,
        dir: Dir,
    },
    /// Its socket was closed while the kernel held the op: out of every queue, it
    /// completes as cancelled once the kernel hands it back (and with it the buffer
    /// the kernel may still write into).
    Detached {
        socket: SocketId,
    },
    /// A timer op: due at the timer entry with its sequence number, on no socket.
    Timer,
}

/// Per-op bookkeeping beside the pool, indexed by op index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) id: Option<OpId>,
    pub(crate) state: State,
    pub(crate) next: u32,
    /// Bytes sent so far by a send that is resumed across partial writes.
    pub(crate) progress: usize,
    /// Lease a segment only when data arrives.
    pub(crate) pooled: bool,
    pub(crate) deadline: Option<Instant>,
    /// Bumped at every completion and re-arm; timer entries with an older value are stale.
    pub(crate) seq: u32,
    /// The kernel holds the op (an io_uring submission whose completion has not come
    /// back): its buffer must not be touched, and cancelling it is only a request.
    pub(crate) kernel: bool,
    /// A cancel or deadline asked the kernel for the op back: if the kernel reports it
    /// cancelled, it completes with this error; if the op finished first, with its
    /// real result (no received byte is dropped).
    pub(crate) cancel_as: Option<OpError>,
    /// What a readiness op waits for (`poll(2)` event bits).
    pub(crate) events: u32,
}

impl Meta {
    pub(crate) const IDLE: Meta = Meta {
        id: None,
        state: State::Idle,
        next: NIL,
        progress: 0,
        pooled: false,
        deadline: None,
        seq: 0,
        kernel: false,
        cancel_as: None,
        events: 0,
    };
}

/// The outcome of trying an op's syscall once.
pub(crate) enum Step {
    Done(Result<usize, OpError>, SocketId),
    Pending,
}

/// The port's state, minus the driver.
pub(crate) struct Core<T> {
    pub(crate) pool: OpPool<T>,
    pub(crate) meta: Vec<Meta>,
    pub(crate) files: Vec<Option<FileSend<SourceFile>>>,
    pub(crate) sockets: Slab<Entry>,
    pub(crate) generations: Vec<u32>,
    pub(crate) max_sockets: usize,
    pub(crate) ready: VecDeque<Completion>,
    pub(crate) timers: Timers,
    pub(crate) shared: Arc<Shared>,
    pub(crate) buffers: BufferManager,
    pub(crate) cache: Option<LocalCache>,
    pub(crate) limit: Option<ConnectionLimit>,
    pub(crate) stats: PortStats,
    /// [`PortBuilder::audit`](crate::PortBuilder::audit): look for stranded ops before each sleep.
    pub(crate) audit: bool,
    /// The datagram ops' message headers, one per op: made when the first UDP socket
    /// is bound, never moved after.
    pub(crate) slots: Option<crate::udp::Slots>,
    /// Each op's list of buffers and files (`send_packets`, `recv_vectored`): empty,
    /// holding nothing, until used; then reused with its capacity.
    pub(crate) packets: Vec<crate::packets::Packets>,
}

impl<T> Core<T> {
    pub(crate) fn check_op(&self, id: OpId) -> Result<(), SubmitError> {
        self.pool.get(id).map(|_| ()).map_err(|_| SubmitError::StaleOp)
    }

    pub(crate) fn entry(&self, s: SocketId) -> Result<&Entry, SubmitError> {
        match (self.sockets.get(s.index as usize), self.generations.get(s.index as usize)) {
            (Some(e), Some(&g)) if g == s.generation => Ok(e),
            _ => Err(SubmitError::StaleSocket),
        }
    }

    pub(crate) fn sid(&self, index: u32) -> SocketId {
        SocketId { index, generation: self.generations[index as usize] }
    }

    /// Leases a segment through the local cache if this port has one.
    pub(crate) fn lease(&self) -> Result<Lease, berth_buf::Exhausted> {
        match &self.cache {
            Some(cache) => cache.lease(),
            None => self.buffers.lease(),
        }
    }

    /// Adds a socket to the table; `register` tells the driver about it first (with
    /// the slot index and the descriptor) and may refuse.
    pub(crate) fn add_socket(
        &mut self,
        io: Io,
        permit: Option<ConnectionPermit>,
        register: impl FnOnce(usize, RawFd, bool) -> io::Result<()>,
    ) -> Result<SocketId, SubmitError> {
        if self.sockets.len() >= self.max_sockets {
            return Err(SubmitError::TooManySockets { max: self.max_sockets });
        }
        let slot = self.sockets.vacant_entry();
        let index = slot.key();
        register(index, io.as_raw_fd(), matches!(io, Io::Listener { .. }))?;
        slot.insert(Entry::new(io, permit));
        self.stats.sockets = self.sockets.len();
        Ok(SocketId { index: index as u32, generation: self.generations[index] })
    }

    /// Takes an accepted connection into the table, or refuses it (closed at once and
    /// counted): the connection limit, then the table's size.
    pub(crate) fn admit(
        &mut self,
        stream: Stream,
        nodelay: bool,
        register: impl FnOnce(usize, RawFd, bool) -> io::Result<()>,
    ) -> Option<SocketId> {
        let permit = match &self.limit {
            Some(limit) => match limit.try_acquire() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.stats.refused += 1;
                    tracing::debug!("connection refused: limit reached");
                    return None;
                }
            },
            None => None,
        };
        if nodelay && let Stream::Tcp(tcp) = &stream {
            let _ = tcp.set_nodelay(true);
        }
        match self.add_socket(Io::Stream(stream), permit, register) {
            Ok(sid) => {
                self.stats.accepted += 1;
                Some(sid)
            }
            Err(e) => {
                self.stats.refused += 1;
                tracing::debug!("connection refused: {e}");
                None
            }
        }
    }

    /// Accept on `listener` met an error that may leave the connection in the
    /// backlog (EMFILE, ENFILE, ENOBUFS, ENOMEM, a security module's EPERM): pause it
    /// for a doubling delay; the back-off timer resumes it.
    pub(crate) fn back_off(&mut self, listener: u32, error: &io::Error) {
        let Some(entry) = self.sockets.get_mut(listener as usize) else { return };
        let delay =
            if entry.backoff_delay.is_zero() { BACKOFF_FIRST } else { (entry.backoff_delay * 2).min(BACKOFF_MAX) };
        entry.backoff_delay = delay;
        let when = Instant::now() + delay;
        entry.backoff_until = Some(when);
        entry.backoff_seq = entry.backoff_seq.wrapping_add(1);
        let seq = entry.backoff_seq;
        self.stats.accept_backoffs += 1;
        tracing::warn!("accept: {error}; backing off {delay:?}");
        self.push_timer(timer::Entry { when, target: Target::Backoff(listener), seq });
    }

    /// Whether `listener` is backing off now (clears an expired back-off).
    pub(crate) fn backing_off(&mut self, listener: u32) -> bool {
        let Some(entry) = self.sockets.get_mut(listener as usize) else { return false };
        match entry.backoff_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                entry.backoff_until = None;
                false
            }
            None => false,
        }
    }

    fn push_timer(&mut self, entry: timer::Entry) {
        let meta = &self.meta;
        self.timers.push(entry, |e| match e.target {
            Target::Op(o) => meta[o as usize].seq == e.seq && meta[o as usize].state != State::Idle,
            Target::Backoff(_) => true,
        });
    }

    /// Arms a timer op to fire at `when`, for its current submission.
    pub(crate) fn arm_timer(&mut self, op: u32, when: Instant) {
        let seq = self.meta[op as usize].seq;
        self.push_timer(timer::Entry { when, target: Target::Op(op), seq });
    }

    /// Arms the op's deadline, if it has one, for its current submission.
    pub(crate) fn arm_deadline(&mut self, op: u32) {
        if let Some(when) = self.meta[op as usize].deadline {
            let seq = self.meta[op as usize].seq;
            self.push_timer(timer::Entry { when, target: Target::Op(op), seq });
        }
    }

    // ---- queues ------------------------------------------------------------------

    pub(crate) fn push_back(&mut self, socket: u32, dir: Dir, op: u32) {
        self.meta[op as usize].state = State::Queued { socket, dir };
        self.meta[op as usize].next = NIL;
        let q = self.sockets[socket as usize].queue(dir);
        let tail = q.tail;
        if tail == NIL {
            *q = Queue { head: op, tail: op };
        } else {
            q.tail = op;
            self.meta[tail as usize].next = op;
        }
        self.stats.pending += 1;
    }

    pub(crate) fn head(&self, socket: u32, dir: Dir) -> u32 {
        self.sockets.get(socket as usize).map_or(NIL, |e| e.queue_ref(dir).head)
    }

    pub(crate) fn pop_front(&mut self, socket: u32, dir: Dir) -> Option<u32> {
        let q = self.sockets.get_mut(socket as usize)?.queue(dir);
        let head = q.head;
        if head == NIL {
            return None;
        }
        let next = self.meta[head as usize].next;
        q.head = next;
        if next == NIL {
            q.tail = NIL;
        }
        self.meta[head as usize].next = NIL;
        self.stats.pending -= 1;
        Some(head)
    }

    /// Removes `op` from the middle of its queue (cancel, timeout).
    pub(crate) fn unlink(&mut self, socket: u32, dir: Dir, op: u32) {
        let Some(entry) = self.sockets.get_mut(socket as usize) else { return };
        let q = entry.queue(dir);
        let mut prev = NIL;
        let mut cur = q.head;
        while cur != NIL && cur != op {
            prev = cur;
            cur = self.meta[cur as usize].next;
        }
        if cur == NIL {
            return;
        }
        let next = self.meta[op as usize].next;
        if prev == NIL {
            q.head = next;
        } else {
            self.meta[prev as usize].next = next;
        }
        if q.tail == op {
            q.tail = prev;
        }
        self.meta[op as usize].next = NIL;
        self.stats.pending -= 1;
    }

    /// Hands the op back to the user with `result`.
    pub(crate) fn complete(&mut self, op: u32, result: Result<usize, OpError>, socket: SocketId) {
        let meta = &mut self.meta[op as usize];
        meta.state = State::Idle;
        meta.kernel = false;
        meta.cancel_as = None;
        meta.seq = meta.seq.wrapping_add(1);
        let Some(id) = meta.id else { return };
        let Ok(args) = self.pool.get_mut(id) else { return };
        args.complete(result);
        let kind = args.kind();
        if kind == OpKind::Accept && result.is_ok() {
            // SAEA's AcceptSocket.RemoteEndPoint: the new connection's peer.
            let peer = match self.sockets.get(socket.index as usize).map(|e| &e.io) {
                Some(Io::Stream(Stream::Tcp(tcp))) => tcp.peer_addr().ok(),
                _ => None,
            };
            args.set_remote_endpoint(peer);
        }
        self.ready.push_back(Completion::Op { op: id, kind, socket, result });
    }

    /// Completes an op that no driver holds as `error` (cancelled, timed out),
    /// returning its lease and dropping its file.
    pub(crate) fn abandon(&mut self, op: u32, socket: SocketId, error: OpError) {
        if let Some(id) = self.meta[op as usize].id
            && let Ok(args) = self.pool.get_mut(id)
        {
            drop(args.take_buffer());
        }
        self.files[op as usize] = None;
        self.packets[op as usize].clear();
        match error {
            OpError::TimedOut => self.stats.timed_out += 1,
            _ => self.stats.cancelled += 1,
        }
        self.complete(op, Err(error), socket);
    }

    /// Drains the posts queued by [`PortHandle`](crate::PortHandle)s.
    pub(crate) fn drain_posts(&mut self) {
        let mut posts = self.shared.posts.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(p) = posts.pop_front() {
            self.stats.posted += 1;
            self.ready.push_back(Completion::Posted { key: p.key, data: p.data });
        }
    }
}
