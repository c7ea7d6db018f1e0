//! The port's socket table: each socket registered once, with one FIFO queue of
//! pending ops per direction, linked through the ops' own metadata (no allocation).

use std::io;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
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
    /// The socket of a completion that has none: a [`timer`](crate::CompletionPort::timer)
    /// op's. No registered socket ever has this id.
    pub const NONE: SocketId = SocketId { index: u32::MAX, generation: u32::MAX };

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

/// A connected stream: TCP or a Unix domain socket. Both read and write the same
/// way, so every stream op is written once.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Wraps a descriptor that `accept` returned on a listener of the given family.
    pub(crate) fn accepted(fd: OwnedFd, unix: bool) -> Stream {
        if unix { Stream::Unix(UnixStream::from(fd)) } else { Stream::Tcp(TcpStream::from(fd)) }
    }

    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }

    /// Whether the connection is up (a non-blocking connect has finished).
    pub(crate) fn connected(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(drop),
            Stream::Unix(s) => s.peer_addr().map(drop),
        }
    }
}

impl io::Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl io::Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// A listening socket: TCP, or a Unix domain socket (with the socket file it bound,
/// removed again when the listener is closed if it is still the same file).
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix { listener: UnixListener, _file: Option<BoundFile> },
}

/// The socket file a Unix listener created: its path and identity (device, inode),
/// so closing removes that file and never one put in its place since.
pub(crate) struct BoundFile {
    pub(crate) path: PathBuf,
    pub(crate) id: (u64, u64),
}

impl Drop for BoundFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix { listener, .. } => listener.as_fd(),
        }
    }
}

/// A registered descriptor, always non-blocking. Plain `std` types: each driver
/// registers the descriptor its own way.
pub(crate) enum Io {
    Stream(Stream),
    Listener {
        listener: Listener,
        nodelay: bool,
    },
    /// A UDP socket; `packet_info`: its receives report each datagram's destination;
    /// `gso`: the largest datagram its batches group into one GSO send (0: none; see
    /// `udp::Coalescer`), lowered when the kernel refuses a group.
    Udp {
        socket: UdpSocket,
        packet_info: bool,
        gso: u16,
    },
    /// A descriptor registered for readiness only (`register_fd`): the port's own
    /// duplicate, so the caller's closing theirs changes nothing here.
    Fd(OwnedFd),
}

impl AsFd for Io {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Io::Stream(s) => s.as_fd(),
            Io::Listener { listener, .. } => listener.as_fd(),
            Io::Udp { socket, .. } => socket.as_fd(),
            Io::Fd(fd) => fd.as_fd(),
        }
    }
}

impl AsRawFd for Io {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
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
