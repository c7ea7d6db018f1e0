//! The port's socket table: each socket registered once, with one FIFO queue of
//! pending ops per direction, linked through the ops' own metadata (no allocation).

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use berth_ops::ConnectionPermit;

/// The end of an op queue.
pub(crate) const NIL: u32 = u32::MAX;

/// A socket registered with a [`CompletionPort`](crate::CompletionPort): index plus
/// generation, so an id kept after [`close`](crate::CompletionPort::close) is refused
/// instead of reaching the socket that reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl SocketId {
    /// `generation << 32 | index`, for a user's own tables.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// Unpacks [`to_u64`](SocketId::to_u64); a forged value is refused by the port.
    pub fn from_u64(v: u64) -> SocketId {
        SocketId { index: v as u32, generation: (v >> 32) as u32 }
    }

    /// The slot index (dense, reused after close): handy for per-connection arrays.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// Which queue of a socket an op waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

/// A FIFO of op indices linked through `Meta::next`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Queue {
    pub(crate) head: u32,
    pub(crate) tail: u32,
}

impl Queue {
    pub(crate) const EMPTY: Queue = Queue { head: NIL, tail: NIL };

    pub(crate) fn is_empty(&self) -> bool {
        self.head == NIL
    }
}

/// A registered socket, always non-blocking. Plain `std` types: each driver
/// registers the descriptor its own way.
pub(crate) enum Io {
    Stream(TcpStream),
    Listener { listener: TcpListener, nodelay: bool },
}

impl AsRawFd for Io {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Io::Stream(s) => s.as_raw_fd(),
            Io::Listener { listener, .. } => listener.as_raw_fd(),
        }
    }
}

pub(crate) struct Entry {
    pub(crate) io: Io,
    pub(crate) read_q: Queue,
    pub(crate) write_q: Queue,
    /// The connection-limit place an accepted socket holds until it is closed.
    pub(crate) _permit: Option<ConnectionPermit>,
    /// Readiness ticks (the epoll driver's): false once a syscall showed the direction
    /// drained (EAGAIN, or a short read), true again on the next epoll edge. Edge-triggered epoll reports
    /// every arrival after the drain, so skipping the syscall while false loses no
    /// wake-up — and saves the EAGAIN a pooled receive would otherwise pay per message.
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// The peer shut its side or the socket has an error (sticky): every read now
    /// returns at once, and the edge that said so is spent, so a short read never
    /// clears `readable` again.
    pub(crate) read_closed: bool,
    /// Accept back-off after EMFILE/ENFILE: no accept before this instant.
    pub(crate) backoff_until: Option<Instant>,
    pub(crate) backoff_delay: Duration,
    pub(crate) backoff_seq: u32,
}

impl Entry {
    pub(crate) fn new(io: Io, permit: Option<ConnectionPermit>) -> Entry {
        Entry {
            io,
            read_q: Queue::EMPTY,
            write_q: Queue::EMPTY,
            _permit: permit,
            readable: true,
            writable: true,
            read_closed: false,
            backoff_until: None,
            backoff_delay: Duration::ZERO,
            backoff_seq: 0,
        }
    }

    /// Whether a syscall in `dir` may succeed without waiting for an edge.
    pub(crate) fn ready(&self, dir: Dir) -> bool {
        match dir {
            Dir::Read => self.readable,
            Dir::Write => self.writable,
        }
    }

    pub(crate) fn set_ready(&mut self, dir: Dir, ready: bool) {
        match dir {
            Dir::Read => self.readable = ready,
            Dir::Write => self.writable = ready,
        }
    }

    pub(crate) fn queue_ref(&self, dir: Dir) -> &Queue {
        match dir {
            Dir::Read => &self.read_q,
            Dir::Write => &self.write_q,
        }
    }

    pub(crate) fn queue(&mut self, dir: Dir) -> &mut Queue {
        match dir {
            Dir::Read => &mut self.read_q,
            Dir::Write => &mut self.write_q,
        }
    }
}
