//! [`CompletionPort`]: submit operations, receive completions. The public face of
//! the port; the state is in `crate::core`, the kernel work in `crate::driver`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use berth_buf::{BufferManager, Lease};
use berth_ops::{OpArgs, OpError, OpId, OpKind, PoolExhausted};
use berth_sendfile::{FileSend, SourceFile};

use crate::ListenOptions;
use crate::core::{Core, Meta, State};
use crate::driver::{Backend, Driver};
use crate::handle::PortHandle;
use crate::packets::Packets;
use crate::ready::Interest;
use crate::socket::{Dir, Io, Listener, SocketId, Stream};
use crate::timer::Target;
use crate::udp::UdpOptions;
use crate::unix::{PeerCred, UnixAddr, UnixListenOptions};

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
    /// A Unix socket name longer than `sun_path` holds.
    #[error("Unix socket name too long: {len} bytes, at most {max}")]
    PathTooLong {
        /// The name's length in bytes.
        len: usize,
        /// The most a name may have ([`UNIX_NAME_MAX`](crate::UNIX_NAME_MAX)).
        max: usize,
    },
    /// A socket file is at the path but nobody accepts on it: a server died without
    /// removing it. Remove it, or bind with
    /// [`UnixListenOptions::replace_stale`](crate::UnixListenOptions::replace_stale).
    #[error("stale socket file at {}: nobody accepts on it (remove it, or bind with replace_stale)", path.display())]
    StaleSocketFile {
        /// The socket file's path.
        path: std::path::PathBuf,
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
    /// Ops whose syscall succeeded (or failed for good) at submit: no epoll round
    /// trip (the epoll driver's fast path; the io_uring driver submits every op).
    pub completed_inline: u64,
    /// Ops completed after waiting: for readiness (epoll) or for the ring.
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
    /// The driver the port runs on ([`Driver::Epoll`] or [`Driver::Uring`]).
    pub driver: Driver,
    /// Times the io_uring completion queue was found overflowed into the kernel's
    /// backlog (nothing is lost: the kernel keeps them, `FEAT_NODROP`, and the next
    /// enter hands them over). The queue is sized so this stays 0.
    pub cq_overflows: u64,
    /// Times a pooled receive found the io_uring buffer ring empty (`ENOBUFS`) and
    /// waited, queued, for segments to come back: backpressure, not an error.
    pub enobufs: u64,
    /// Segments lent to the kernel's buffer ring now (io_uring): they count as in use
    /// in the arena's stats, and return to it when the port is dropped.
    pub ring_buffers: usize,
    /// Waits that were allowed to block (nothing was ready to hand over when they
    /// began), and the time spent in them: a worker's idle share is
    /// `blocked / wall time`. A server idle while its clients wait is waiting for
    /// something it should not; the counters below tell what.
    pub blocking_waits: u64,
    /// Time spent in [`blocking_waits`](Self::blocking_waits).
    pub blocked: Duration,
    /// Times a stream send (a buffer, a file range or a packet list) found the
    /// socket's send buffer full and had to wait for room (epoll: each attempt that
    /// met `EAGAIN`), or was cut short by the kernel and went back for the rest
    /// (io_uring). A request/response server whose replies fit the socket buffer
    /// keeps this at 0.
    pub send_waits: u64,
    /// Only with [`PortBuilder::audit`](crate::PortBuilder::audit): times the port
    /// went to sleep while an op it held could have run — on epoll, a queued op whose
    /// socket `poll(2)` found ready across a whole `epoll_wait` that brought no edge
    /// for it (a lost edge), or a queue left with its direction still marked ready;
    /// on io_uring, a queue head left neither with the kernel nor waiting for a reason
    /// (segments, a listener's back-off, a multishot that is armed or ending). Each
    /// such op is counted once. It must stay 0: anything else is a bug in berth.
    pub stranded_ops: u64,
    /// Datagrams sent as segments of a UDP GSO send: consecutive
    /// [`send_to`](CompletionPort::send_to) ops to one destination grouped into one message
    /// ([`UdpOptions::gso`](crate::UdpOptions::gso)).
    pub datagrams_segmented: u64,
    /// Times the kernel refused such a group (no checksum offload on the route, a
    /// segment over its MTU: the group failed where its datagrams, one per message,
    /// then went): nothing lost, and the socket stopped grouping datagrams that long.
    pub gso_refusals: u64,
}

/// An IOCP-style completion port: the user submits operations carrying pooled
/// [`OpArgs`] and later receives [`Completion`]s — never readiness. It runs on
/// io_uring (true completions) or epoll (completions emulated from readiness); see
/// [`Driver`] and [`PortBuilder::driver`](crate::PortBuilder::driver).
///
/// - **Ownership**: ops live in the port's [`OpPool`](berth_ops::OpPool); take one with
///   [`take_op`](Self::take_op), fill it (a [`Lease`] for a receive or send), submit
///   it. While pending it belongs to the port; its completion hands it back to be
///   resubmitted (as the seed reuses one `SocketAsyncEventArgs`) or given back.
/// - **Fast path** (epoll): submit tries the syscall at once; an op that finishes
///   there is completed without an epoll round trip (the seed's
///   `willRaiseEvent == false`) and still delivered through [`wait`](Self::wait), in
///   order. On io_uring every op goes to the ring, and one `io_uring_enter` per wait
///   submits them all and collects their completions.
/// - **Cancelling** is a request on io_uring: an op the kernel holds keeps its
///   buffer (and stays busy) until the kernel hands it back; it then completes as
///   cancelled or timed out — or with its real result if it finished first, so no
///   received byte is dropped.
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
    // Declared first: dropped after `Drop::drop` has drained the ring, before the
    // ops and the arena the kernel might otherwise still write into.
    pub(crate) driver: Backend,
    pub(crate) core: Core<T>,
    pub(crate) batch: Vec<Completion>,
}

/// Called once per completion by [`CompletionPort::run_once`]: the seed's
/// `IO_Completed`.
pub trait Handler<T> {
    /// Handles one completion; may submit, cancel, close or give back ops.
    fn completed(&mut self, port: &mut CompletionPort<T>, completion: Completion);
}

impl<T> CompletionPort<T> {
    // ---- ops -------------------------------------------------------------------

    /// Takes a free op from the port's pool.
    pub fn take_op(&mut self) -> Result<OpId, PoolExhausted> {
        let id = self.core.pool.take()?;
        let meta = &mut self.core.meta[id.index()];
        *meta = Meta { id: Some(id), seq: meta.seq, ..Meta::IDLE };
        Ok(id)
    }

    /// Gives an op back to the pool (its lease returns to the arena). A pending op
    /// cannot be given back: cancel it first.
    pub fn give_op(&mut self, id: OpId) -> Result<(), SubmitError> {
        self.core.check_op(id)?;
        if self.core.meta[id.index()].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        self.core.files[id.index()] = None;
        self.core.packets[id.index()].clear();
        self.core.meta[id.index()].id = None;
        self.core.pool.give(id).map_err(|_| SubmitError::StaleOp)
    }

    /// The op, to read its result, buffer and token.
    pub fn op(&self, id: OpId) -> Result<&OpArgs<T>, SubmitError> {
        self.core.pool.get(id).map_err(|_| SubmitError::StaleOp)
    }

    /// The op, mutable (to attach a buffer or set its range before submitting).
    /// [`SubmitError::Busy`] while it is submitted: until it completes, the op and its
    /// buffer belong to the port (on io_uring, to the kernel).
    pub fn op_mut(&mut self, id: OpId) -> Result<&mut OpArgs<T>, SubmitError> {
        let args = self.core.pool.get_mut(id).map_err(|_| SubmitError::StaleOp)?;
        if self.core.meta[id.index()].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        Ok(args)
    }

    /// The op's list of buffers and files, for [`send_packets`](Self::send_packets)
    /// and [`recv_vectored`](Self::recv_vectored).
    pub fn packets(&self, id: OpId) -> Result<&Packets, SubmitError> {
        self.core.check_op(id)?;
        Ok(&self.core.packets[id.index()])
    }

    /// The op's list, to fill before submitting (SAEA's `BufferList` or
    /// `SendPacketsElements`). [`SubmitError::Busy`] while the op is submitted.
    pub fn packets_mut(&mut self, id: OpId) -> Result<&mut Packets, SubmitError> {
        self.core.check_op(id)?;
        if self.core.meta[id.index()].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        Ok(&mut self.core.packets[id.index()])
    }

    /// Sets (or clears) the deadline of the op's next submission: if it is still
    /// pending then, it completes with [`OpError::TimedOut`]. Kept across
    /// resubmissions until changed.
    pub fn set_deadline(&mut self, id: OpId, deadline: Option<Instant>) -> Result<(), SubmitError> {
        self.core.check_op(id)?;
        self.core.meta[id.index()].deadline = deadline;
        Ok(())
    }

    // ---- sockets -----------------------------------------------------------------

    fn add_socket(&mut self, io: Io) -> Result<SocketId, SubmitError> {
        let driver = &self.driver;
        self.core.add_socket(io, None, |index, fd, listener| driver.register(index, fd, listener))
    }

    /// Binds and registers a listener (socket2: backlog, `SO_REUSEADDR`, optional
    /// `SO_REUSEPORT`).
    pub fn listen(&mut self, addr: SocketAddr, options: ListenOptions) -> Result<SocketId, SubmitError> {
        let listener = crate::sys::listener(addr, &options)?;
        self.add_socket(Io::Listener { listener: Listener::Tcp(listener), nodelay: options.nodelay })
    }

    /// Binds and registers a Unix domain stream listener on a filesystem path or an
    /// abstract name. Accepted sockets are Unix streams: the same receives and
    /// sends, [`unix_stream`](Self::unix_stream) and
    /// [`peer_cred`](Self::peer_cred) for the peer.
    ///
    /// A path's socket file is removed again when the listener is closed (if it is
    /// still the file this bind made).
    ///
    /// # Errors
    /// [`SubmitError::PathTooLong`] for a name over [`UNIX_NAME_MAX`](crate::UNIX_NAME_MAX)
    /// bytes; [`SubmitError::StaleSocketFile`] for a socket file nobody accepts on
    /// (unless [`UnixListenOptions::replace_stale`]); `AddrInUse` for a live
    /// listener's path or a path that is not a socket.
    pub fn listen_unix(&mut self, addr: &UnixAddr, options: UnixListenOptions) -> Result<SocketId, SubmitError> {
        let (listener, bound) = crate::unix::listener(addr, &options)?;
        self.add_socket(Io::Listener { listener: Listener::Unix { listener, _file: bound }, nodelay: false })
    }

    /// Registers a TCP listener bound elsewhere (set to non-blocking here): one
    /// handed over by a service manager (systemd's `LISTEN_FDS`), or a clone of
    /// another port's. `nodelay` sets `TCP_NODELAY` on the connections it accepts.
    pub fn register_listener(
        &mut self,
        listener: std::net::TcpListener,
        nodelay: bool,
    ) -> Result<SocketId, SubmitError> {
        listener.set_nonblocking(true)?;
        self.add_socket(Io::Listener { listener: Listener::Tcp(listener), nodelay })
    }

    /// Registers a Unix listener bound elsewhere (set to non-blocking here): a
    /// clone of another port's listener, so several ports accept on one socket, or
    /// one handed over by a service manager.
    pub fn register_unix_listener(&mut self, listener: UnixListener) -> Result<SocketId, SubmitError> {
        listener.set_nonblocking(true)?;
        self.add_socket(Io::Listener { listener: Listener::Unix { listener, _file: None }, nodelay: false })
    }

    /// Registers a connected stream (set to non-blocking here).
    pub fn register_stream(&mut self, stream: std::net::TcpStream) -> Result<SocketId, SubmitError> {
        stream.set_nonblocking(true)?;
        self.add_socket(Io::Stream(Stream::Tcp(stream)))
    }

    /// Registers a connected Unix stream (set to non-blocking here): one end of a
    /// `UnixStream::pair`, say.
    pub fn register_unix_stream(&mut self, stream: UnixStream) -> Result<SocketId, SubmitError> {
        stream.set_nonblocking(true)?;
        self.add_socket(Io::Stream(Stream::Unix(stream)))
    }

    /// The local address of a TCP or UDP socket (a listener's bound port, say);
    /// [`SubmitError::WrongSocket`] for a Unix socket or a registered descriptor.
    pub fn local_addr(&self, socket: SocketId) -> Result<SocketAddr, SubmitError> {
        Ok(match &self.core.entry(socket)?.io {
            Io::Stream(Stream::Tcp(s)) => s.local_addr()?,
            Io::Listener { listener: Listener::Tcp(l), .. } => l.local_addr()?,
            Io::Udp { socket, .. } => socket.local_addr()?,
            _ => return Err(SubmitError::WrongSocket),
        })
    }

    /// The TCP stream behind a socket (non-blocking), for peer addresses, socket
    /// options or `shutdown`. Reading or writing it directly bypasses the port's
    /// ordering. [`SubmitError::WrongSocket`] for anything but a TCP stream.
    pub fn stream(&self, socket: SocketId) -> Result<&std::net::TcpStream, SubmitError> {
        match &self.core.entry(socket)?.io {
            Io::Stream(Stream::Tcp(s)) => Ok(s),
            _ => Err(SubmitError::WrongSocket),
        }
    }

    /// The descriptor behind any socket id (TCP or Unix, stream or listener, UDP, a
    /// registered descriptor): for syscalls the port does not make, such as
    /// `shutdown` or a header sent ahead of a file. Reading or writing it directly
    /// bypasses the port's ordering.
    pub fn fd(&self, socket: SocketId) -> Result<std::os::fd::BorrowedFd<'_>, SubmitError> {
        Ok(self.core.entry(socket)?.io.as_fd())
    }

    /// The Unix stream behind a socket (non-blocking), as [`stream`](Self::stream)
    /// is for TCP.
    pub fn unix_stream(&self, socket: SocketId) -> Result<&UnixStream, SubmitError> {
        match &self.core.entry(socket)?.io {
            Io::Stream(Stream::Unix(s)) => Ok(s),
            _ => Err(SubmitError::WrongSocket),
        }
    }

    /// The credentials of the process at the other end of a Unix stream
    /// (`SO_PEERCRED`): who connected, for an access check before serving it.
    pub fn peer_cred(&self, socket: SocketId) -> Result<PeerCred, SubmitError> {
        Ok(crate::unix::peer_cred(self.unix_stream(socket)?)?)
    }

    /// Binds and registers a UDP socket. Datagrams are received with
    /// [`recv_from`](Self::recv_from) and sent with [`send_to`](Self::send_to).
    pub fn bind_udp(&mut self, addr: SocketAddr, options: UdpOptions) -> Result<SocketId, SubmitError> {
        let socket = crate::udp::bind(addr, &options)?;
        if self.core.slots.is_none() {
            // Once per port, with the first UDP socket: a message header per op.
            self.core.slots = Some(crate::udp::Slots::new(self.core.meta.len()));
        }
        let gso = crate::udp::gso_limit(&socket, &options);
        self.add_socket(Io::Udp { socket, packet_info: options.packet_info, gso })
    }

    /// The UDP socket behind a socket id (non-blocking), for socket options,
    /// `connect` (after which [`send_to`](Self::send_to) may leave the op's remote
    /// endpoint unset) or multicast membership.
    pub fn udp_socket(&self, socket: SocketId) -> Result<&std::net::UdpSocket, SubmitError> {
        match &self.core.entry(socket)?.io {
            Io::Udp { socket, .. } => Ok(socket),
            _ => Err(SubmitError::WrongSocket),
        }
    }

    /// Registers any descriptor for readiness ops ([`wait_ready`](Self::wait_ready)):
    /// an eventfd, a pipe, a timerfd, a signalfd, an IPC channel's wake descriptor.
    /// The port keeps its own duplicate (closed by [`close`](Self::close)), so the
    /// caller may close theirs; the descriptor must be non-blocking if the caller
    /// reads it after a completion, as readiness can be spurious.
    ///
    /// # Errors
    /// `EBADF` (in [`SubmitError::Io`]) for a closed descriptor; `PermissionDenied`
    /// for a regular file or a directory, which are always ready, and `EPERM` for a
    /// descriptor epoll cannot wait on (`/dev/null`), on either driver.
    pub fn register_fd(&mut self, fd: impl AsFd) -> Result<SocketId, SubmitError> {
        let owned = rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), 0).map_err(io::Error::from)?;
        let kind = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&owned).map_err(io::Error::from)?.st_mode);
        if matches!(kind, rustix::fs::FileType::RegularFile | rustix::fs::FileType::Directory) {
            // epoll refuses these; io_uring would call them ready forever. Refused on both.
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "a regular file or directory is always ready: nothing to wait for",
            )
            .into());
        }
        if self.driver() == Driver::Uring {
            // What epoll cannot wait on (a device without poll support, /dev/null),
            // io_uring would report ready at once: refused on both drivers alike.
            crate::ready::pollable(owned.as_fd()).map_err(io::Error::from)?;
        }
        self.add_socket(Io::Fd(owned))
    }

    /// Closes a socket: every op pending on it completes with
    /// [`OpError::Cancelled`] and its lease goes back to the arena, then the socket is
    /// deregistered and closed. Returns how many ops were cancelled.
    ///
    /// On io_uring an op the kernel holds completes (as cancelled) once the kernel
    /// hands it back, at a later wait; its buffer stays with it until then, and the
    /// connection is torn down when the last such op is back.
    pub fn close(&mut self, socket: SocketId) -> Result<usize, SubmitError> {
        self.core.entry(socket)?;
        let index = socket.index;
        let mut cancelled = 0;
        for dir in [Dir::Read, Dir::Write] {
            while let Some(op) = self.core.pop_front(index, dir) {
                cancelled += 1;
                let meta = &mut self.core.meta[op as usize];
                if meta.kernel {
                    // Still pending (and counted so) until the kernel hands it back.
                    meta.state = State::Detached { socket };
                    self.core.stats.pending += 1;
                    if meta.cancel_as.is_none() {
                        meta.cancel_as = Some(OpError::Cancelled);
                        self.driver.abort(&mut self.core, op);
                    }
                } else {
                    self.core.abandon(op, socket, OpError::Cancelled);
                }
            }
        }
        let entry = self.core.sockets.remove(index as usize);
        self.driver.deregister(socket, entry.io.as_raw_fd());
        drop(entry);
        self.core.generations[index as usize] = self.core.generations[index as usize].wrapping_add(1);
        self.core.stats.sockets = self.core.sockets.len();
        Ok(cancelled)
    }

    /// Cancels a pending op: it completes with [`OpError::Cancelled`] and its lease
    /// goes back to the arena. On io_uring an op the kernel holds is asked back, and
    /// completes at a later wait: as cancelled, or with its result if it finished
    /// first.
    pub fn cancel(&mut self, id: OpId) -> Result<(), SubmitError> {
        self.core.check_op(id)?;
        let op = id.index() as u32;
        match self.core.meta[id.index()].state {
            State::Queued { socket, dir } => {
                self.cancel_queued(op, socket, dir, OpError::Cancelled);
                Ok(())
            }
            // Already being cancelled with its socket.
            State::Detached { .. } => Ok(()),
            State::Timer => {
                self.core.stats.pending -= 1;
                self.core.abandon(op, SocketId::NONE, OpError::Cancelled);
                Ok(())
            }
            State::Idle => Err(SubmitError::NotPending),
        }
    }

    /// Cancels a queued op as `error`: at once if no driver holds it, else by asking
    /// the kernel for it.
    fn cancel_queued(&mut self, op: u32, socket: u32, dir: Dir, error: OpError) {
        let meta = &mut self.core.meta[op as usize];
        if meta.kernel {
            if meta.cancel_as.is_none() {
                meta.cancel_as = Some(error);
                self.driver.abort(&mut self.core, op);
            }
            return;
        }
        self.core.unlink(socket, dir, op);
        let sid = self.core.sid(socket);
        self.core.abandon(op, sid, error);
    }

    // ---- submitting ------------------------------------------------------------

    /// Accepts a connection on `listener` (`AcceptAsync`). The completion's `socket`
    /// is the accepted connection, already registered.
    pub fn accept(&mut self, listener: SocketId, op: OpId) -> Result<(), SubmitError> {
        if !matches!(self.core.entry(listener)?.io, Io::Listener { .. }) {
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
    /// `0..segment_size`, and the bytes received. On epoll, if the arena is
    /// exhausted at that moment the op completes with [`OpError::BufferExhausted`];
    /// on io_uring the segment comes from the port's buffer ring, and a receive that
    /// finds the ring empty waits, queued, until segments return (counted in
    /// [`PortStats::enobufs`]).
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

    /// Receives one datagram into the op's buffer range (`ReceiveFromAsync`; with
    /// [`UdpOptions::packet_info`], also `ReceiveMessageFromAsync`). Completes with
    /// the datagram's length; the op's
    /// [`remote_endpoint`](berth_ops::OpArgs::remote_endpoint) is the sender and its
    /// [`packet_info`](berth_ops::OpArgs::packet_info) where it was addressed to. A
    /// datagram longer than the range completes with
    /// [`OpError::MessageTruncated`]: the range holds its first bytes,
    /// [`message_len`](berth_ops::OpArgs::message_len) its real length. With
    /// [`UdpOptions::icmp_errors`], an ICMP error for an earlier send (a port nobody
    /// listens on) completes the next receive with that error (`ConnectionRefused`,
    /// `Unreachable`), the address it was about as its remote endpoint; the socket
    /// stays usable.
    ///
    /// On epoll, datagram ops wait for the next [`wait`](Self::wait), which moves
    /// every one queued on a socket with one `recvmmsg` (or `sendmmsg`); on io_uring
    /// each is a `RECVMSG` (`SENDMSG`) submission, all sent with one enter.
    pub fn recv_from(&mut self, socket: SocketId, op: OpId) -> Result<(), SubmitError> {
        self.require_buffer(op)?;
        self.submit(socket, op, OpKind::RecvFrom, Dir::Read, false)
    }

    /// Receives one datagram into a segment leased only when it arrives, as
    /// [`recv_pooled`](Self::recv_pooled) does for streams: an idle receive holds no
    /// buffer, so a server can keep many waiting. The op completes as
    /// [`recv_from`](Self::recv_from) does (sender, packet info, truncation, ICMP
    /// errors), holding the segment with the datagram as its range — so
    /// [`send_to`](Self::send_to) on the same op echoes it back. The datagram starts
    /// [`POOLED_DATAGRAM_HEADROOM`](crate::POOLED_DATAGRAM_HEADROOM) bytes into the
    /// segment, so one up to the segment size less that fits; a longer one completes
    /// with [`OpError::MessageTruncated`], its first bytes kept.
    ///
    /// The receives wait for the next [`wait`](Self::wait), which leases a segment
    /// per queued receive and fills them with one `recvmmsg` (both drivers; with the
    /// arena exhausted the receive completes with [`OpError::BufferExhausted`]). With
    /// [`PortBuilder::ring_datagrams`](crate::PortBuilder::ring_datagrams) on
    /// io_uring, a socket with pooled datagram receives waiting has one
    /// *multishot* `RECVMSG` in the kernel drawing segments from the port's buffer
    /// ring (as pooled stream receives do): one submission for any number of
    /// datagrams. Datagrams it delivers while no receive waits are kept, in order,
    /// for the next ones; with the arena exhausted the receive waits for segments
    /// (counted in [`PortStats::enobufs`]).
    pub fn recv_from_pooled(&mut self, socket: SocketId, op: OpId) -> Result<(), SubmitError> {
        self.submit(socket, op, OpKind::RecvFrom, Dir::Read, true)
    }

    /// Sends the op's buffer range as one datagram to its
    /// [`remote_endpoint`](berth_ops::OpArgs::remote_endpoint) (`SendToAsync`), or to
    /// a connected socket's peer if that is unset. Completes with the bytes sent (the
    /// whole range: a datagram is never split); one larger than the path allows
    /// fails with `EMSGSIZE` (`OpError::Os`).
    pub fn send_to(&mut self, socket: SocketId, op: OpId) -> Result<(), SubmitError> {
        self.require_buffer(op)?;
        self.submit(socket, op, OpKind::SendTo, Dir::Write, false)
    }

    /// Sends the op's [`Packets`] in order and completes once, with the bytes sent
    /// in all (`SendPacketsAsync`; `SendAsync` with a `BufferList`): runs of byte
    /// ranges gathered into one `sendmsg` (flagged `MSG_MORE` when more follows, so a
    /// header shares its segment with the file's first bytes), files by
    /// sendfile(2). The op's own buffer,
    /// if any, is scratch space for a file that needs the copy fallback. A file that
    /// shrinks mid-send completes with [`OpError::Truncated`] (what went before it
    /// is sent; close the connection, as the peer cannot know where the file ended).
    ///
    /// # Errors
    /// [`SubmitError::NoBuffer`] for an empty list (or one with nothing to send).
    pub fn send_packets(&mut self, socket: SocketId, op: OpId) -> Result<(), SubmitError> {
        self.core.check_op(op)?;
        let list = &self.core.packets[op.index()];
        list.check()?;
        if list.total_bytes() == 0 {
            return Err(SubmitError::NoBuffer);
        }
        self.submit(socket, op, OpKind::SendPackets, Dir::Write, false)
    }

    /// Receives once into the op's [`Packets`] byte ranges, in order (`ReceiveAsync`
    /// with a `BufferList`): one `recvmsg`, each lease's length set to the end of
    /// what landed in it. Completes with the bytes received; `Ok(0)` means the peer
    /// shut its side.
    ///
    /// # Errors
    /// [`SubmitError::NoBuffer`] for a list without room; `InvalidInput` (in
    /// [`SubmitError::Io`]) for a list holding a file.
    pub fn recv_vectored(&mut self, socket: SocketId, op: OpId) -> Result<(), SubmitError> {
        self.core.check_op(op)?;
        let list = &self.core.packets[op.index()];
        list.check()?;
        if list.has_files() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a receive's list cannot hold a file").into());
        }
        if list.total_bytes() == 0 {
            return Err(SubmitError::NoBuffer);
        }
        self.submit(socket, op, OpKind::RecvVectored, Dir::Read, false)
    }

    /// Sends a file range by sendfile(2) (berth-sendfile). A buffer attached to the op
    /// serves as scratch space if the file needs the copy fallback; without one such
    /// a file fails with [`OpError::InvalidInput`]. Completes with the bytes sent; a
    /// file that shrinks mid-send completes with [`OpError::Truncated`].
    ///
    /// The file is a `File` of the send's own or a [`SourceFile`] shared with a
    /// cache (`Arc<File>`); the port drops its handle when the op completes.
    pub fn send_file<F>(&mut self, socket: SocketId, op: OpId, file: FileSend<F>) -> Result<(), SubmitError>
    where
        F: AsFd + Into<SourceFile>,
    {
        self.core.check_op(op)?;
        if self.core.meta[op.index()].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        self.core.files[op.index()] = Some(file.map_file(Into::into));
        let result = self.submit(socket, op, OpKind::SendFile, Dir::Write, false);
        if result.is_err() {
            self.core.files[op.index()] = None;
        }
        result
    }

    /// Completes `op` when `socket` is ready for `interest`, with `Ok(bits)`
    /// ([`Ready::from_result`](crate::Ready::from_result) reads them): the way to wait
    /// on a descriptor registered with [`register_fd`](Self::register_fd) — or on a
    /// socket, without a buffer (not a listener: accept on it). Readiness ops wait in
    /// the socket's queue for their
    /// direction, behind the receives (or sends) submitted before them. The op holds
    /// no buffer; a deadline applies as to any op.
    pub fn wait_ready(&mut self, socket: SocketId, op: OpId, interest: Interest) -> Result<(), SubmitError> {
        let dir = match interest {
            Interest::Readable => Dir::Read,
            Interest::Writable => Dir::Write,
        };
        self.core.check_op(op)?;
        if self.core.meta[op.index()].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        self.core.meta[op.index()].events = interest.events();
        self.submit(socket, op, OpKind::Ready, dir, false)
    }

    /// Completes `op` with `Ok(0)` at `at` (at once if it has passed): a timer on no
    /// socket, as a posted completion is, cancelled with [`cancel`](Self::cancel). The
    /// completion's `socket` is [`SocketId::NONE`]. The op's own deadline does not
    /// apply.
    pub fn timer(&mut self, op: OpId, at: Instant) -> Result<(), SubmitError> {
        self.core.check_op(op)?;
        let index = op.index();
        if self.core.meta[index].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        let args = self.core.pool.get_mut(op).map_err(|_| SubmitError::StaleOp)?;
        args.set_kind(OpKind::Timer);
        args.set_socket(None);
        let meta = &mut self.core.meta[index];
        meta.state = State::Timer;
        meta.kernel = false;
        meta.cancel_as = None;
        self.core.stats.submitted += 1;
        self.core.stats.pending += 1;
        self.core.arm_timer(index as u32, at);
        Ok(())
    }

    /// Connects to `addr` (`ConnectAsync`): the socket is created and registered now
    /// and returned; the op completes when the connection is up or has failed.
    pub fn connect(&mut self, addr: SocketAddr, op: OpId) -> Result<SocketId, SubmitError> {
        self.connect_with(op, || Ok(Stream::Tcp(crate::sys::connect(addr)?)))
    }

    /// Connects to a Unix domain listener, as [`connect`](Self::connect) does to a
    /// TCP one. A Unix connect is never under way: the op completes at the next
    /// wait, and a listener whose backlog is full refuses the submit with
    /// `WouldBlock`; nobody listening is `ConnectionRefused` (a stale socket file)
    /// or `NotFound` (no file), also at submit.
    pub fn connect_unix(&mut self, addr: &UnixAddr, op: OpId) -> Result<SocketId, SubmitError> {
        self.connect_with(op, || Ok(Stream::Unix(crate::unix::connect(addr)?)))
    }

    fn connect_with(
        &mut self,
        op: OpId,
        make: impl FnOnce() -> Result<Stream, SubmitError>,
    ) -> Result<SocketId, SubmitError> {
        self.core.check_op(op)?;
        if self.core.meta[op.index()].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        let stream = make()?;
        let socket = self.add_socket(Io::Stream(stream))?;
        if let Err(e) = self.submit(socket, op, OpKind::Connect, Dir::Write, false) {
            let _ = self.close(socket);
            return Err(e);
        }
        Ok(socket)
    }

    fn submit(&mut self, socket: SocketId, id: OpId, kind: OpKind, dir: Dir, pooled: bool) -> Result<(), SubmitError> {
        self.core.check_op(id)?;
        let io = &self.core.entry(socket)?.io;
        let datagram = matches!(kind, OpKind::RecvFrom | OpKind::SendTo);
        let fits = match io {
            // (A listener's readiness is its accept op's business.)
            _ if kind == OpKind::Ready => !matches!(io, Io::Listener { .. }),
            Io::Stream(_) => kind != OpKind::Accept && !datagram,
            Io::Listener { .. } => kind == OpKind::Accept,
            Io::Udp { .. } => datagram,
            Io::Fd(_) => false,
        };
        if !fits {
            return Err(SubmitError::WrongSocket);
        }
        let fd = io.as_raw_fd();
        let index = id.index();
        if self.core.meta[index].state != State::Idle {
            return Err(SubmitError::Busy);
        }
        let args = self.core.pool.get_mut(id).map_err(|_| SubmitError::StaleOp)?;
        if pooled {
            drop(args.take_buffer());
        }
        args.set_kind(kind);
        args.set_socket(Some(fd));
        let meta = &mut self.core.meta[index];
        meta.id = Some(id);
        meta.progress = 0;
        meta.pooled = pooled;
        meta.kernel = false;
        meta.cancel_as = None;
        self.core.packets[index].rewind();
        self.core.stats.submitted += 1;
        let op = index as u32;
        self.driver.submit(&mut self.core, op, socket.index, dir);
        if self.core.meta[index].state != State::Idle {
            self.core.arm_deadline(op);
        }
        Ok(())
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(entry) = self.core.timers.pop_due(now) {
            match entry.target {
                Target::Op(op) => {
                    let meta = self.core.meta[op as usize];
                    if meta.seq != entry.seq {
                        continue;
                    }
                    match meta.state {
                        State::Queued { socket, dir } => self.cancel_queued(op, socket, dir, OpError::TimedOut),
                        State::Timer => {
                            self.core.stats.pending -= 1;
                            self.core.stats.completed_queued += 1;
                            self.core.complete(op, Ok(0), SocketId::NONE);
                        }
                        _ => {}
                    }
                }
                Target::Backoff(socket) => {
                    let live = self.core.sockets.get(socket as usize).is_some_and(|e| e.backoff_seq == entry.seq);
                    if live {
                        if let Some(e) = self.core.sockets.get_mut(socket as usize) {
                            e.backoff_until = None;
                        }
                        self.driver.resume(&mut self.core, socket);
                    }
                }
            }
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
        // Events that complete nothing (readiness of a socket with no pending op) do
        // not end the wait: keep polling until a completion or the timeout.
        loop {
            // Done first, so that what it completes keeps the wait from sleeping.
            self.driver.prepare(&mut self.core);
            let now = Instant::now();
            let mut poll_timeout = if self.core.ready.is_empty() && !self.driver.busy() {
                deadline.map(|d| d.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            if let Some(next) = self.core.timers.next() {
                let until_timer = next.saturating_duration_since(now);
                poll_timeout = Some(poll_timeout.map_or(until_timer, |t| t.min(until_timer)));
            }
            let may_block = poll_timeout != Some(Duration::ZERO);
            if may_block && self.core.audit {
                let stranded = self.driver.audit(&mut self.core);
                self.core.stats.stranded_ops += stranded;
            }
            self.driver.poll(&mut self.core, poll_timeout)?;
            let after = Instant::now();
            if may_block {
                self.core.stats.blocking_waits += 1;
                self.core.stats.blocked += after.saturating_duration_since(now);
            }
            self.fire_timers(after);
            if !self.core.ready.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        out.extend(self.core.ready.drain(..));
        Ok(out.len())
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
        PortHandle { shared: self.core.shared.clone() }
    }

    /// The arena pooled receives lease from.
    pub fn buffers(&self) -> &BufferManager {
        &self.core.buffers
    }

    /// Leases a segment through the port's local cache (for a send buffer, say).
    pub fn lease(&self) -> Result<Lease, berth_buf::Exhausted> {
        self.core.lease()
    }

    /// The driver this port runs on: [`Driver::Epoll`] or [`Driver::Uring`].
    pub fn driver(&self) -> Driver {
        self.driver.kind()
    }

    /// Counters.
    pub fn stats(&self) -> PortStats {
        PortStats { ring_buffers: self.driver.ring_buffers(), ..self.core.stats }
    }

    /// The op pool's counters.
    pub fn pool_stats(&self) -> berth_ops::PoolStats {
        self.core.pool.stats()
    }
}

impl<T> Drop for CompletionPort<T> {
    fn drop(&mut self) {
        self.core.shared.closed.store(true, std::sync::atomic::Ordering::Release);
        if let Backend::Uring(ring) = &mut self.driver {
            let held = ring.drain(&mut self.core, Duration::from_secs(2));
            if held > 0 {
                // The kernel did not hand these back: it may still write into their
                // segments, so they must never be reused. Leak them.
                tracing::error!(held, "io_uring kept ops past the port's drop; leaking their buffers");
                for meta in self.core.meta.iter().filter(|m| m.kernel) {
                    if let Some(Ok(args)) = meta.id.map(|id| self.core.pool.get_mut(id)) {
                        std::mem::forget(args.take_buffer());
                    }
                }
                // A datagram op's message header is written back by the kernel too.
                std::mem::forget(self.core.slots.take());
            }
        }
    }
}

impl<T> fmt::Debug for CompletionPort<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionPort").field("stats", &self.core.stats).finish()
    }
}
