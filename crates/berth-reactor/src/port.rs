//! [`CompletionPort`]: submit operations, receive completions.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_buf::{BufferManager, Lease, LocalCache};
use berth_ops::{ConnectionLimit, OpArgs, OpError, OpId, OpKind, OpPool, PoolExhausted};
use berth_sendfile::{FileSend, SendFileError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::handle::{PortHandle, Shared};
use crate::socket::{Dir, Entry, Io, NIL, Queue, SocketId};
use crate::timer::{self, Target, Timers};

const WAKER: Token = Token(usize::MAX);
/// Accept back-off after EMFILE/ENFILE: first delay, then doubling up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Connections one accept attempt may refuse or find dead in the backlog before it
/// lets the other sockets have a turn; the listener is driven again at the next wait.
const ACCEPT_TURN: u32 = 64;

/// One finished operation or a posted user completion: an entry of
/// `GetQueuedCompletionStatusEx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// A submitted op finished. The op (with its buffer and token) is the caller's
    /// again: resubmit it, or give it back with
    /// [`give_op`](CompletionPort::give_op).
    Op {
        /// The op.
        op: OpId,
        /// What it did.
        kind: OpKind,
        /// The socket it ran on; for an accept, the *accepted* socket (`AcceptSocket`).
        socket: SocketId,
        /// Bytes transferred, or why it failed. A receive of `Ok(0)` means the peer
        /// closed its sending side.
        result: Result<usize, OpError>,
    },
    /// A completion posted through a [`PortHandle`].
    Posted {
        /// The poster's key.
        key: u64,
        /// The poster's data.
        data: u64,
    },
}

/// Why a submit was refused. Nothing was queued and the op is unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The op id is stale or was never taken from this port.
    #[error("stale or unknown operation id")]
    StaleOp,
    /// The socket id is stale (closed) or unknown.
    #[error("stale or unknown socket id")]
    StaleSocket,
    /// The op is already pending; wait for its completion first.
    #[error("the operation is already pending")]
    Busy,
    /// The op is not pending (for `cancel`).
    #[error("the operation is not pending")]
    NotPending,
    /// Accept on a stream, or a stream operation on a listener.
    #[error("operation does not apply to this kind of socket")]
    WrongSocket,
    /// A receive or send without a buffer, or with an empty range.
    #[error("the operation needs a buffer with a non-empty range")]
    NoBuffer,
    /// The socket table is full.
    #[error("socket table full ({max} sockets)")]
    TooManySockets {
        /// The table's size.
        max: usize,
    },
    /// The operating system refused (creating or registering a socket).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Counters of a port; a snapshot from [`CompletionPort::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortStats {
    /// Ops submitted.
    pub submitted: u64,
    /// Ops whose syscall succeeded (or failed for good) at submit: no epoll round trip.
    pub completed_inline: u64,
    /// Ops completed after waiting for readiness.
    pub completed_queued: u64,
    /// Ops completed as cancelled (by `cancel` or `close`).
    pub cancelled: u64,
    /// Ops completed as timed out.
    pub timed_out: u64,
    /// Connections accepted and handed to the user.
    pub accepted: u64,
    /// Connections accepted and closed at once: connection limit or socket table full.
    pub refused: u64,
    /// Times accept hit EMFILE/ENFILE and backed off.
    pub accept_backoffs: u64,
    /// Posted completions delivered.
    pub posted: u64,
    /// Sockets registered now.
    pub sockets: usize,
    /// Ops pending now.
    pub pending: usize,
}

/// Listener options: the socket2 settings that `std` does not expose.
#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    /// `listen(2)` backlog (default 1024).
    pub backlog: i32,
    /// `SO_REUSEPORT`, so several ports (one per thread) can share an address
    /// (default false).
    pub reuse_port: bool,
    /// `TCP_NODELAY` on accepted connections (default true).
    pub nodelay: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions { backlog: 1024, reuse_port: false, nodelay: true }
    }
}

/// How to build a [`CompletionPort`]; from [`CompletionPort::builder`].
#[derive(Debug, Clone)]
pub struct PortBuilder {
    ops: usize,
    max_sockets: usize,
    events: usize,
    posts: usize,
    buffers: Option<BufferManager>,
    cache_batch: usize,
    limit: Option<ConnectionLimit>,
}

impl PortBuilder {
    /// Ops in the port's pool (default 1024): the most operations in flight at once.
    pub fn ops(mut self, n: usize) -> Self {
        self.ops = n;
        self
    }

    /// Size of the socket table (default 1024). Accepts beyond it are refused
    /// cleanly and counted.
    pub fn max_sockets(mut self, n: usize) -> Self {
        self.max_sockets = n;
        self
    }

    /// Posts ([`PortHandle::post`]) that may wait for the port at once (default 1024):
    /// beyond that a post is refused with `WouldBlock` instead of queueing without
    /// bound behind a port that does not wait.
    pub fn posts(mut self, n: usize) -> Self {
        self.posts = n.max(1);
        self
    }

    /// Readiness events fetched per `epoll_wait` (default 1024).
    pub fn events(mut self, n: usize) -> Self {
        self.events = n.max(1);
        self
    }

    /// The buffer arena that pooled receives lease from (default: a new arena of
    /// 1024 × 4 KiB segments).
    pub fn buffers(mut self, manager: BufferManager) -> Self {
        self.buffers = Some(manager);
        self
    }

    /// Segments moved at a time between the port's local cache and the shared free
    /// list (default 32).
    pub fn cache_batch(mut self, n: usize) -> Self {
        self.cache_batch = n;
        self
    }

    /// Caps accepted connections: beyond the limit a new connection is closed at once
    /// and counted in [`PortStats::refused`]. Share one limit between ports to cap a
    /// whole server.
    pub fn connection_limit(mut self, limit: ConnectionLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Builds the port on this thread, with every op created up front by `token(i)`.
    pub fn build<T>(self, token: impl FnMut(usize) -> T) -> io::Result<CompletionPort<T>> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let buffers = match self.buffers {
            Some(b) => b,
            None => BufferManager::with_defaults().map_err(io::Error::other)?,
        };
        // One cache per thread: a second port on the same thread shares the arena's
        // shared list instead.
        let cache = buffers.local_cache_with_batch(self.cache_batch.max(1)).ok();
        let ops = self.ops.min(u32::MAX as usize - 1);
        let max_sockets = self.max_sockets.min(u32::MAX as usize - 1);
        Ok(CompletionPort {
            poll,
            events: Events::with_capacity(self.events),
            pool: OpPool::new(ops, token),
            meta: vec![Meta::IDLE; ops],
            files: (0..ops).map(|_| None).collect(),
            sockets: Slab::with_capacity(max_sockets),
            generations: vec![0; max_sockets],
            max_sockets,
            ready: VecDeque::with_capacity(ops + self.posts + 64),
            timers: Timers::with_capacity(2 * ops + max_sockets + 16),
            shared: Arc::new(Shared {
                waker,
                posts: Mutex::new(VecDeque::with_capacity(self.posts)),
                post_capacity: self.posts,
                closed: AtomicBool::new(false),
            }),
            buffers,
            cache,
            limit: self.limit,
            stats: PortStats::default(),
            batch: Vec::with_capacity(self.events.max(64)),
            redrive: Vec::with_capacity(8),
        })
    }
}

/// Where an op is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Queued { socket: u32, dir: Dir },
}

/// Per-op bookkeeping beside the pool, indexed by op index.
#[derive(Debug, Clone, Copy)]
struct Meta {
    id: Option<OpId>,
    state: State,
    next: u32,
    /// Bytes sent so far by a send that is resumed across readiness events.
    progress: usize,
    /// Lease a segment only when data arrives.
    pooled: bool,
    deadline: Option<Instant>,
    /// Bumped at every completion and re-arm; timer entries with an older value are stale.
    seq: u32,
}

impl Meta {
    const IDLE: Meta =
        Meta { id: None, state: State::Idle, next: NIL, progress: 0, pooled: false, deadline: None, seq: 0 };
}

/// The outcome of trying an op's syscall once.
enum Step {
    Done(Result<usize, OpError>, SocketId),
    Pending,
}

/// An IOCP-style completion port over epoll (mio, edge-triggered): the user submits
/// operations carrying pooled [`OpArgs`] and later receives [`Completion`]s — never
/// readiness.
///
/// - **Ownership**: ops live in the port's [`OpPool`]; take one with
///   [`take_op`](Self::take_op), fill it (a [`Lease`] for a receive or send), submit
///   it. While pending it belongs to the port; its completion hands it back to be
///   resubmitted (as the seed reuses one `SocketAsyncEventArgs`) or given back.
/// - **Fast path**: submit tries the syscall at once; an op that finishes there is
///   completed without an epoll round trip (the seed's `willRaiseEvent == false`)
///   and still delivered through [`wait`](Self::wait), in order.
/// - **Ordering**: each socket has one FIFO of pending ops per direction; an op is
///   tried only when those ahead of it are done.
/// - **Threading**: one port per thread (it is not `Send`); other threads talk to it
///   with [`PortHandle::post`]. [`crate::workers`] starts one per core.
///
/// ```
/// use berth_reactor::{Completion, CompletionPort, ListenOptions};
/// use std::io::{Read, Write};
///
/// let mut port = CompletionPort::builder().build(|_| ())?;
/// let listener = port.listen("127.0.0.1:0".parse()?, ListenOptions::default())?;
/// let addr = port.local_addr(listener)?;
/// let accept = port.take_op()?;
/// port.accept(listener, accept)?;
///
/// let mut client = std::net::TcpStream::connect(addr)?;
/// let mut done = Vec::with_capacity(16);
/// port.wait(&mut done, Some(std::time::Duration::from_secs(5)))?;
/// let Completion::Op { socket, .. } = done[0] else { panic!("accept") };
///
/// let recv = port.take_op()?;
/// port.recv_pooled(socket, recv)?; // no buffer held until data arrives
/// client.write_all(b"ping")?;
/// done.clear();
/// while done.is_empty() {
///     port.wait(&mut done, Some(std::time::Duration::from_secs(5)))?;
/// }
/// assert_eq!(port.op(recv)?.transferred_bytes(), b"ping");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CompletionPort<T> {
    poll: Poll,
    events: Events,
    pool: OpPool<T>,
    meta: Vec<Meta>,
    files: Vec<Option<FileSend<File>>>,
    sockets: Slab<Entry>,
    generations: Vec<u32>,
    max_sockets: usize,
    ready: VecDeque<Completion>,
    timers: Timers,
    shared: Arc<Shared>,
    buffers: BufferManager,
    cache: Option<LocalCache>,
    limit: Option<ConnectionLimit>,
    stats: PortStats,
    batch: Vec<Completion>,
    /// Listeners whose accept gave up its turn with connections still in the backlog:
    /// no new edge will announce those, so the next wait drives them again.
    redrive: Vec<u32>,
}

/// Called once per completion by [`CompletionPort::run_once`]: the seed's
/// `IO_Completed`.
pub trait Handler<T> {
    /// Handles one completion; may submit, cancel, close or give back ops.
    fn completed(&mut self, port: &mut CompletionPort<T>, completion: Completion);
}

impl CompletionPort<()> {
    /// A builder with the defaults: 1024 ops, 1024 sockets, a fresh arena.
    pub fn builder() -> PortBuilder {
        PortBuilder {
            ops: 1024,
            max_sockets: 1024,
            events: 1024,
            posts: 1024,
            buffers: None,
            cache_batch: 32,
            limit: None,
        }
    }
}

impl<T> CompletionPort<T> {
    // ---- ops -------------------------------------------------------------------

    /// Takes a free op from the port's pool.
    pub fn take_op(&mut self) -> Result<OpId, PoolExhausted> {
        let id = self.pool.take()?;
        self.meta[id.index()] = Meta { id: Some(id), seq: self.meta[id.index()].seq, ..Meta::IDLE };
        Ok(id)
    }

    /// Gives an op back to the pool (its lease returns to the arena). A pending op
    /// cannot be given back: cancel it first.
    pub fn give_op(&mut self, id: OpId) -> Result<(), SubmitError> {
        self.check_op(id)?;
        if self.meta[id.index()].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        self.files[id.index()] = None;
        self.meta[id.index()].id = None;
        self.pool.give(id).map_err(|_| SubmitError::StaleOp)
    }

    /// The op, to read its result, buffer and token.
    pub fn op(&self, id: OpId) -> Result<&OpArgs<T>, SubmitError> {
        self.pool.get(id).map_err(|_| SubmitError::StaleOp)
    }

    /// The op, mutable (to attach a buffer or set its range before submitting).
    /// [`SubmitError::Busy`] while it is submitted: until it completes, the op and its
    /// buffer belong to the port.
    pub fn op_mut(&mut self, id: OpId) -> Result<&mut OpArgs<T>, SubmitError> {
        let args = self.pool.get_mut(id).map_err(|_| SubmitError::StaleOp)?;
        if self.meta[id.index()].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        Ok(args)
    }

    /// Sets (or clears) the deadline of the op's next submission: if it is still
    /// pending then, it completes with [`OpError::TimedOut`]. Kept across
    /// resubmissions until changed.
    pub fn set_deadline(&mut self, id: OpId, deadline: Option<Instant>) -> Result<(), SubmitError> {
        self.check_op(id)?;
        self.meta[id.index()].deadline = deadline;
        Ok(())
    }

    fn check_op(&self, id: OpId) -> Result<(), SubmitError> {
        self.pool.get(id).map(|_| ()).map_err(|_| SubmitError::StaleOp)
    }

    // ---- sockets -----------------------------------------------------------------

    fn entry(&self, s: SocketId) -> Result<&Entry, SubmitError> {
        match (self.sockets.get(s.index as usize), self.generations.get(s.index as usize)) {
            (Some(e), Some(&g)) if g == s.generation => Ok(e),
            _ => Err(SubmitError::StaleSocket),
        }
    }

    fn add_socket(&mut self, mut io: Io, permit: Option<berth_ops::ConnectionPermit>) -> Result<SocketId, SubmitError> {
        if self.sockets.len() >= self.max_sockets {
            return Err(SubmitError::TooManySockets { max: self.max_sockets });
        }
        let slot = self.sockets.vacant_entry();
        let index = slot.key();
        let token = Token(index);
        let interest = Interest::READABLE | Interest::WRITABLE;
        match &mut io {
            Io::Stream(s) => self.poll.registry().register(s, token, interest)?,
            Io::Listener { listener, .. } => self.poll.registry().register(listener, token, Interest::READABLE)?,
        }
        slot.insert(Entry::new(io, permit));
        self.stats.sockets = self.sockets.len();
        Ok(SocketId { index: index as u32, generation: self.generations[index] })
    }

    /// Binds and registers a listener (socket2: backlog, `SO_REUSEADDR`, optional
    /// `SO_REUSEPORT`).
    pub fn listen(&mut self, addr: SocketAddr, options: ListenOptions) -> Result<SocketId, SubmitError> {
        let listener = crate::sys::listener(addr, &options)?;
        self.add_socket(Io::Listener { listener: TcpListener::from_std(listener), nodelay: options.nodelay }, None)
    }

    /// Registers a connected stream (set to non-blocking here).
    pub fn register_stream(&mut self, stream: std::net::TcpStream) -> Result<SocketId, SubmitError> {
        stream.set_nonblocking(true)?;
        self.add_socket(Io::Stream(TcpStream::from_std(stream)), None)
    }

    /// The local address of a socket (a listener's bound port, say).
    pub fn local_addr(&self, socket: SocketId) -> Result<SocketAddr, SubmitError> {
        Ok(match &self.entry(socket)?.io {
            Io::Stream(s) => s.local_addr()?,
            Io::Listener { listener, .. } => listener.local_addr()?,
        })
    }

    /// The stream behind a socket, for peer addresses, socket options or `shutdown`.
    pub fn stream(&self, socket: SocketId) -> Result<&TcpStream, SubmitError> {
        match &self.entry(socket)?.io {
            Io::Stream(s) => Ok(s),
            Io::Listener { .. } => Err(SubmitError::WrongSocket),
        }
    }

    /// Closes a socket: every op pending on it completes with
    /// [`OpError::Cancelled`] and its lease goes back to the arena, then the socket is
    /// deregistered and closed. Returns how many ops were cancelled.
    pub fn close(&mut self, socket: SocketId) -> Result<usize, SubmitError> {
        self.entry(socket)?;
        let index = socket.index;
        let mut cancelled = 0;
        for dir in [Dir::Read, Dir::Write] {
            while let Some(op) = self.pop_front(index, dir) {
                self.cancel_queued(op, socket);
                cancelled += 1;
            }
        }
        let mut entry = self.sockets.remove(index as usize);
        let _ = match &mut entry.io {
            Io::Stream(s) => self.poll.registry().deregister(s),
            Io::Listener { listener, .. } => self.poll.registry().deregister(listener),
        };
        drop(entry);
        self.generations[index as usize] = self.generations[index as usize].wrapping_add(1);
        self.stats.sockets = self.sockets.len();
        Ok(cancelled)
    }

    /// Cancels a pending op: it completes with [`OpError::Cancelled`] and its lease
    /// goes back to the arena.
    pub fn cancel(&mut self, id: OpId) -> Result<(), SubmitError> {
        self.check_op(id)?;
        let State::Queued { socket, dir } = self.meta[id.index()].state else { return Err(SubmitError::NotPending) };
        self.unlink(socket, dir, id.index() as u32);
        let sid = SocketId { index: socket, generation: self.generations[socket as usize] };
        self.cancel_queued(id.index() as u32, sid);
        Ok(())
    }

    fn cancel_queued(&mut self, op: u32, socket: SocketId) {
        if let Some(id) = self.meta[op as usize].id
            && let Ok(args) = self.pool.get_mut(id)
        {
            drop(args.take_buffer());
        }
        self.files[op as usize] = None;
        self.stats.cancelled += 1;
        self.complete(op, Err(OpError::Cancelled), socket);
    }

    // ---- submitting ------------------------------------------------------------

    /// Accepts a connection on `listener` (`AcceptAsync`). The completion's `socket`
    /// is the accepted connection, already registered.
    pub fn accept(&mut self, listener: SocketId, op: OpId) -> Result<(), SubmitError> {
        if !matches!(self.entry(listener)?.io, Io::Listener { .. }) {
            return Err(SubmitError::WrongSocket);
        }
        self.submit(listener, op, OpKind::Accept, Dir::Read, false)
    }

    /// Receives into the op's buffer range (`ReceiveAsync`). A completion of `Ok(0)`
    /// means the peer shut its side.
    pub fn recv(&mut self, socket: SocketId, op: OpId) -> Result<(), SubmitError> {
        self.require_buffer(op)?;
        self.submit(socket, op, OpKind::Recv, Dir::Read, false)
    }

    /// A receive or send needs a buffer with a non-empty active range.
    fn require_buffer(&self, op: OpId) -> Result<(), SubmitError> {
        let args = self.op(op)?;
        if args.buffer().is_none() || args.range().is_empty() {
            return Err(SubmitError::NoBuffer);
        }
        Ok(())
    }

    /// Receives without holding a buffer while waiting: a segment is leased from the
    /// port's arena only once data has arrived (Kestrel's zero-byte read), so an idle
    /// connection holds no buffer. On completion the op carries the lease, range
    /// `0..segment_size`, and the bytes received. If the arena is exhausted at that
    /// moment the op completes with [`OpError::BufferExhausted`].
    /// Any buffer the op still carries goes back to the arena once the submit is
    /// accepted; a refused submit leaves the op untouched.
    pub fn recv_pooled(&mut self, socket: SocketId, op: OpId) -> Result<(), SubmitError> {
        self.submit(socket, op, OpKind::Recv, Dir::Read, true)
    }

    /// Sends the whole buffer range, resuming partial writes (`SendAsync`); completes
    /// once every byte is with the kernel.
    pub fn send(&mut self, socket: SocketId, op: OpId) -> Result<(), SubmitError> {
        self.require_buffer(op)?;
        self.submit(socket, op, OpKind::Send, Dir::Write, false)
    }

    /// Sends a file range by sendfile(2) (berth-sendfile). A buffer attached to the op
    /// serves as scratch space if the file needs the copy fallback; without one such
    /// a file fails with [`OpError::InvalidInput`]. Completes with the bytes sent; a
    /// file that shrinks mid-send completes with [`OpError::Truncated`].
    pub fn send_file(&mut self, socket: SocketId, op: OpId, file: FileSend<File>) -> Result<(), SubmitError> {
        self.check_op(op)?;
        if self.meta[op.index()].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        self.files[op.index()] = Some(file);
        let result = self.submit(socket, op, OpKind::SendFile, Dir::Write, false);
        if result.is_err() {
            self.files[op.index()] = None;
        }
        result
    }

    /// Connects to `addr` (`ConnectAsync`): the socket is created and registered now
    /// and returned; the op completes when the connection is up or has failed.
    pub fn connect(&mut self, addr: SocketAddr, op: OpId) -> Result<SocketId, SubmitError> {
        self.check_op(op)?;
        if self.meta[op.index()].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        let stream = TcpStream::connect(addr)?;
        let socket = self.add_socket(Io::Stream(stream), None)?;
        if let Err(e) = self.submit(socket, op, OpKind::Connect, Dir::Write, false) {
            let _ = self.close(socket);
            return Err(e);
        }
        Ok(socket)
    }

    fn submit(&mut self, socket: SocketId, id: OpId, kind: OpKind, dir: Dir, pooled: bool) -> Result<(), SubmitError> {
        self.check_op(id)?;
        let fd = match &self.entry(socket)?.io {
            Io::Stream(s) if kind != OpKind::Accept => s.as_raw_fd(),
            Io::Listener { listener, .. } if kind == OpKind::Accept => listener.as_raw_fd(),
            _ => return Err(SubmitError::WrongSocket),
        };
        let index = id.index();
        if self.meta[index].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        let args = self.pool.get_mut(id).map_err(|_| SubmitError::StaleOp)?;
        if pooled {
            drop(args.take_buffer());
        }
        args.set_kind(kind);
        args.set_socket(Some(fd));
        let meta = &mut self.meta[index];
        meta.id = Some(id);
        meta.progress = 0;
        meta.pooled = pooled;
        meta.next = NIL;
        self.stats.submitted += 1;

        let op = index as u32;
        let entry = &mut self.sockets[socket.index as usize];
        if entry.queue(dir).is_empty() && entry.ready(dir) {
            match self.try_op(op, socket.index) {
                Step::Done(result, target) => {
                    self.stats.completed_inline += 1;
                    self.complete(op, result, target);
                    return Ok(());
                }
                Step::Pending => self.sockets[socket.index as usize].set_ready(dir, false),
            }
        }
        self.push_back(socket.index, dir, op);
        self.stats.pending += 1;
        if let Some(when) = self.meta[index].deadline {
            let seq = self.meta[index].seq;
            let meta = &self.meta;
            self.timers.push(timer::Entry { when, target: Target::Op(op), seq }, |e| match e.target {
                Target::Op(o) => meta[o as usize].seq == e.seq && meta[o as usize].state != State::Idle,
                Target::Backoff(_) => true,
            });
        }
        Ok(())
    }

    // ---- queues ------------------------------------------------------------------

    fn push_back(&mut self, socket: u32, dir: Dir, op: u32) {
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
    }

    fn pop_front(&mut self, socket: u32, dir: Dir) -> Option<u32> {
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
    fn unlink(&mut self, socket: u32, dir: Dir, op: u32) {
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

    fn complete(&mut self, op: u32, result: Result<usize, OpError>, socket: SocketId) {
        let meta = &mut self.meta[op as usize];
        meta.state = State::Idle;
        meta.seq = meta.seq.wrapping_add(1);
        let Some(id) = meta.id else { return };
        let Ok(args) = self.pool.get_mut(id) else { return };
        args.complete(result);
        let kind = args.kind();
        self.ready.push_back(Completion::Op { op: id, kind, socket, result });
    }

    // ---- doing the work ----------------------------------------------------------

    /// Tries op `op`'s syscall once on socket `socket` (by index).
    fn try_op(&mut self, op: u32, socket: u32) -> Step {
        let Some(id) = self.meta[op as usize].id else {
            return Step::Done(Err(OpError::InvalidInput), self.sid(socket));
        };
        let kind = match self.pool.get(id) {
            Ok(args) => args.kind(),
            Err(_) => return Step::Done(Err(OpError::InvalidInput), self.sid(socket)),
        };
        match kind {
            OpKind::Accept => self.try_accept(socket),
            OpKind::Recv => self.try_recv(op, id, socket),
            OpKind::Send => self.try_send(op, id, socket),
            OpKind::SendFile => self.try_send_file(op, id, socket),
            OpKind::Connect => self.try_connect(socket),
            _ => Step::Done(Err(OpError::InvalidInput), self.sid(socket)),
        }
    }

    fn sid(&self, index: u32) -> SocketId {
        SocketId { index, generation: self.generations[index as usize] }
    }

    fn try_recv(&mut self, op: u32, id: OpId, socket: u32) -> Step {
        let (step, drained) = self.recv_once(op, id, socket);
        if drained
            && let Some(entry) = self.sockets.get_mut(socket as usize)
            && !entry.read_closed
        {
            // A short stream read emptied the receive queue: wait for the next edge
            // instead of paying an EAGAIN on the next receive. Not after the peer's
            // FIN or an error: their edge may have come with the data just read, and
            // no other follows.
            entry.readable = false;
        }
        step
    }

    /// One receive; also says whether it was short (the queue is drained).
    fn recv_once(&mut self, op: u32, id: OpId, socket: u32) -> (Step, bool) {
        let sid = self.sid(socket);
        let Some(Entry { io: Io::Stream(stream), .. }) = self.sockets.get(socket as usize) else {
            return (Step::Done(Err(OpError::NotConnected), sid), false);
        };
        let Ok(args) = self.pool.get_mut(id) else { return (Step::Done(Err(OpError::InvalidInput), sid), false) };
        let pooled = self.meta[op as usize].pooled;
        let mut fresh = None;
        if pooled {
            let lease = match &self.cache {
                Some(cache) => cache.lease(),
                None => self.buffers.lease(),
            };
            let Ok(lease) = lease else { return (Step::Done(Err(OpError::BufferExhausted), sid), false) };
            fresh = Some(lease);
        }
        let range = if pooled { 0..fresh.as_ref().map_or(0, Lease::capacity) } else { args.range() };
        let Some(lease) = fresh.as_mut().or(args.buffer_mut()) else {
            return (Step::Done(Err(OpError::InvalidInput), sid), false);
        };
        let n = loop {
            match (&*stream).read(&mut lease[range.clone()]) {
                Ok(n) => break n,
                // A pooled segment goes straight back to the cache: idle sockets hold none.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (Step::Pending, false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return (Step::Done(Err(OpError::from_io(&e)), sid), false),
            }
        };
        let _ = lease.set_len(range.start + n);
        if let Some(lease) = fresh
            && let Err(e) = args.set_buffer(lease, range.clone())
        {
            drop(e.lease);
            return (Step::Done(Err(OpError::InvalidInput), sid), false);
        }
        (Step::Done(Ok(n), sid), n > 0 && n < range.len())
    }

    fn try_send(&mut self, op: u32, id: OpId, socket: u32) -> Step {
        let sid = self.sid(socket);
        let Some(Entry { io: Io::Stream(stream), .. }) = self.sockets.get(socket as usize) else {
            return Step::Done(Err(OpError::NotConnected), sid);
        };
        let Ok(args) = self.pool.get(id) else { return Step::Done(Err(OpError::InvalidInput), sid) };
        let range = args.range();
        let Some(lease) = args.buffer() else { return Step::Done(Err(OpError::InvalidInput), sid) };
        let meta = &mut self.meta[op as usize];
        while meta.progress < range.len() {
            match (&*stream).write(&lease[range.start + meta.progress..range.end]) {
                Ok(0) => return Step::Done(Err(OpError::BrokenPipe), sid),
                Ok(n) => meta.progress += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Step::Done(Err(OpError::from_io(&e)), sid),
            }
        }
        Step::Done(Ok(meta.progress), sid)
    }

    fn try_send_file(&mut self, op: u32, id: OpId, socket: u32) -> Step {
        let sid = self.sid(socket);
        let Some(Entry { io: Io::Stream(stream), .. }) = self.sockets.get(socket as usize) else {
            return Step::Done(Err(OpError::NotConnected), sid);
        };
        let Some(file) = self.files[op as usize].as_mut() else { return Step::Done(Err(OpError::InvalidInput), sid) };
        let Ok(args) = self.pool.get_mut(id) else { return Step::Done(Err(OpError::InvalidInput), sid) };
        let mut no_scratch = [0u8; 0];
        let scratch: &mut [u8] = match args.buffer_mut() {
            Some(lease) => &mut lease[..],
            None => &mut no_scratch,
        };
        loop {
            match file.send_some(stream, scratch) {
                Ok(progress) if progress.done => {
                    let sent = progress.sent_total as usize;
                    self.files[op as usize] = None;
                    return Step::Done(Ok(sent), sid);
                }
                Ok(_) => continue,
                Err(SendFileError::WouldBlock) => return Step::Pending,
                Err(e) => {
                    let error = match &e {
                        SendFileError::Truncated { .. } => OpError::Truncated,
                        SendFileError::PeerClosed { reset: true, .. } => OpError::ConnectionReset,
                        SendFileError::PeerClosed { .. } => OpError::BrokenPipe,
                        SendFileError::ScratchRequired => OpError::InvalidInput,
                        _ => OpError::from_io(&io::Error::from(e.kind())),
                    };
                    self.files[op as usize] = None;
                    return Step::Done(Err(error), sid);
                }
            }
        }
    }

    fn try_connect(&mut self, socket: u32) -> Step {
        let sid = self.sid(socket);
        let Some(Entry { io: Io::Stream(stream), .. }) = self.sockets.get(socket as usize) else {
            return Step::Done(Err(OpError::NotConnected), sid);
        };
        match stream.take_error() {
            Ok(Some(e)) | Err(e) => return Step::Done(Err(OpError::from_io(&e)), sid),
            Ok(None) => {}
        }
        match stream.peer_addr() {
            Ok(_) => Step::Done(Ok(0), sid),
            Err(e) if e.kind() == io::ErrorKind::NotConnected || e.raw_os_error() == Some(115) => Step::Pending,
            Err(e) => Step::Done(Err(OpError::from_io(&e)), sid),
        }
    }

    fn try_accept(&mut self, listener: u32) -> Step {
        let lsid = self.sid(listener);
        let mut turn = 0u32;
        loop {
            turn += 1;
            if turn > ACCEPT_TURN {
                // A flood of refused or dead connections: give the other sockets their
                // turn and come back at the next wait.
                if !self.redrive.contains(&listener) {
                    self.redrive.push(listener);
                }
                return Step::Pending;
            }
            let Some(entry) = self.sockets.get_mut(listener as usize) else {
                return Step::Done(Err(OpError::NotConnected), lsid);
            };
            if let Some(until) = entry.backoff_until {
                if Instant::now() < until {
                    return Step::Pending;
                }
                entry.backoff_until = None;
            }
            let Io::Listener { listener: l, nodelay } = &entry.io else {
                return Step::Done(Err(OpError::InvalidInput), lsid);
            };
            let nodelay = *nodelay;
            match l.accept() {
                Ok((stream, _peer)) => {
                    entry.backoff_delay = Duration::ZERO;
                    let permit = match &self.limit {
                        Some(limit) => match limit.try_acquire() {
                            Ok(p) => Some(p),
                            Err(_) => {
                                // Over the limit: close it now, keep accepting.
                                self.stats.refused += 1;
                                tracing::debug!("connection refused: limit reached");
                                drop(stream);
                                continue;
                            }
                        },
                        None => None,
                    };
                    if nodelay {
                        let _ = stream.set_nodelay(true);
                    }
                    match self.add_socket(Io::Stream(stream), permit) {
                        Ok(sid) => {
                            self.stats.accepted += 1;
                            return Step::Done(Ok(0), sid);
                        }
                        Err(e) => {
                            self.stats.refused += 1;
                            tracing::debug!("connection refused: {e}");
                            continue;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A connection that died in the backlog (ECONNABORTED, EPROTO, and the
                // network errors accept(2) passes on from the new socket): not the
                // listener's fault; take the next one.
                Err(e) if matches!(e.raw_os_error(), Some(103 | 71 | 100 | 92 | 112 | 64 | 113 | 95 | 101)) => {
                    tracing::debug!("accept: {e}");
                    continue;
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM — or anything else (a security
                    // module's EPERM, say): the connection may stay in the backlog, so
                    // retry after a growing pause instead of spinning.
                    let delay = if entry.backoff_delay.is_zero() {
                        BACKOFF_FIRST
                    } else {
                        (entry.backoff_delay * 2).min(BACKOFF_MAX)
                    };
                    entry.backoff_delay = delay;
                    let when = Instant::now() + delay;
                    entry.backoff_until = Some(when);
                    entry.backoff_seq = entry.backoff_seq.wrapping_add(1);
                    let seq = entry.backoff_seq;
                    self.stats.accept_backoffs += 1;
                    tracing::warn!("accept: {e}; backing off {delay:?}");
                    let meta = &self.meta;
                    self.timers.push(timer::Entry { when, target: Target::Backoff(listener), seq }, |e| {
                        match e.target {
                            Target::Op(o) => meta[o as usize].seq == e.seq && meta[o as usize].state != State::Idle,
                            Target::Backoff(_) => true,
                        }
                    });
                    return Step::Pending;
                }
            }
        }
    }

    /// Runs queued ops of one direction of a socket until one would block.
    fn drive(&mut self, socket: u32, dir: Dir) {
        loop {
            let Some(entry) = self.sockets.get_mut(socket as usize) else { return };
            let head = entry.queue(dir).head;
            if head == NIL {
                return;
            }
            match self.try_op(head, socket) {
                Step::Pending => {
                    if let Some(entry) = self.sockets.get_mut(socket as usize) {
                        entry.set_ready(dir, false);
                    }
                    return;
                }
                Step::Done(result, target) => {
                    self.pop_front(socket, dir);
                    self.stats.completed_queued += 1;
                    self.complete(head, result, target);
                }
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(entry) = self.timers.pop_due(now) {
            match entry.target {
                Target::Op(op) => {
                    let meta = self.meta[op as usize];
                    if meta.seq != entry.seq {
                        continue;
                    }
                    if let State::Queued { socket, dir } = meta.state {
                        self.unlink(socket, dir, op);
                        self.files[op as usize] = None;
                        self.stats.timed_out += 1;
                        let sid = self.sid(socket);
                        self.complete(op, Err(OpError::TimedOut), sid);
                    }
                }
                Target::Backoff(socket) => {
                    let live = self.sockets.get(socket as usize).is_some_and(|e| e.backoff_seq == entry.seq);
                    if live {
                        if let Some(e) = self.sockets.get_mut(socket as usize) {
                            // The backlog still holds the connections that met EMFILE;
                            // no new edge will announce them.
                            e.backoff_until = None;
                            e.readable = true;
                        }
                        self.drive(socket, Dir::Read);
                    }
                }
            }
        }
    }

    fn drain_posts(&mut self) {
        let mut posts = self.shared.posts.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(p) = posts.pop_front() {
            self.stats.posted += 1;
            self.ready.push_back(Completion::Posted { key: p.key, data: p.data });
        }
    }

    // ---- getting completions -----------------------------------------------------

    /// Waits up to `timeout` (forever if `None`) for completions and moves them into
    /// `out` (cleared first): `GetQueuedCompletionStatusEx`. Completions that are
    /// already ready return at once. Reuse one `Vec` with enough capacity and this
    /// allocates nothing. Returns how many completions were delivered (0 on timeout).
    pub fn wait(&mut self, out: &mut Vec<Completion>, timeout: Option<Duration>) -> io::Result<usize> {
        out.clear();
        let start = Instant::now();
        let deadline = timeout.and_then(|t| start.checked_add(t));
        self.fire_timers(start);
        // Readiness that completes nothing (a socket with no pending op) does not end
        // the wait: keep polling until a completion or the timeout.
        loop {
            let now = Instant::now();
            let mut poll_timeout = if self.ready.is_empty() && self.redrive.is_empty() {
                deadline.map(|d| d.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            if let Some(next) = self.timers.next() {
                let until_timer = next.saturating_duration_since(now);
                poll_timeout = Some(poll_timeout.map_or(until_timer, |t| t.min(until_timer)));
            }
            self.poll_once(poll_timeout)?;
            self.fire_timers(Instant::now());
            if !self.ready.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        out.extend(self.ready.drain(..));
        Ok(out.len())
    }

    /// One `epoll_wait` and the work its events make possible.
    fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        match self.poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
            Err(e) => {
                self.events = events;
                return Err(e);
            }
        }
        for event in events.iter() {
            if event.token() == WAKER {
                self.drain_posts();
                continue;
            }
            let socket = event.token().0 as u32;
            let Some(entry) = self.sockets.get_mut(socket as usize) else { continue };
            let read = event.is_readable() || event.is_read_closed() || event.is_error();
            let write = event.is_writable() || event.is_write_closed() || event.is_error();
            entry.readable |= read;
            entry.writable |= write;
            entry.read_closed |= event.is_read_closed() || event.is_error();
            if read {
                self.drive(socket, Dir::Read);
            }
            if write {
                self.drive(socket, Dir::Write);
            }
        }
        self.events = events;
        // Each listener waiting for its next turn gets one; one that gives it up again
        // queues itself behind the others. (A slot closed and reused meanwhile gets a
        // harmless extra drive.)
        for _ in 0..self.redrive.len() {
            let socket = self.redrive.remove(0);
            if let Some(entry) = self.sockets.get_mut(socket as usize) {
                entry.readable = true;
                self.drive(socket, Dir::Read);
            }
        }
        Ok(())
    }

    /// Waits once and calls `handler` for each completion: the seed's `IO_Completed`
    /// loop. Returns how many were handled.
    pub fn run_once<H: Handler<T>>(&mut self, handler: &mut H, timeout: Option<Duration>) -> io::Result<usize> {
        let mut batch = std::mem::take(&mut self.batch);
        let result = self.wait(&mut batch, timeout);
        for completion in batch.drain(..) {
            handler.completed(self, completion);
        }
        self.batch = batch;
        result
    }

    // ---- the rest ----------------------------------------------------------------

    /// A handle for posting completions from other threads.
    pub fn handle(&self) -> PortHandle {
        PortHandle { shared: self.shared.clone() }
    }

    /// The arena pooled receives lease from.
    pub fn buffers(&self) -> &BufferManager {
        &self.buffers
    }

    /// Leases a segment through the port's local cache (for a send buffer, say).
    pub fn lease(&self) -> Result<Lease, berth_buf::Exhausted> {
        match &self.cache {
            Some(cache) => cache.lease(),
            None => self.buffers.lease(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> PortStats {
        self.stats
    }

    /// The op pool's counters.
    pub fn pool_stats(&self) -> berth_ops::PoolStats {
        self.pool.stats()
    }
}

impl<T> Drop for CompletionPort<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl<T> fmt::Debug for CompletionPort<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionPort").field("stats", &self.stats).finish()
    }
}
