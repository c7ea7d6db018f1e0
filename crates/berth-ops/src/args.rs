//! [`OpArgs`]: one operation's arguments and result — the `SocketAsyncEventArgs` analog.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::RawFd;

use berth_buf::Lease;

use crate::error::OpError;

/// What an operation does.
///
/// ```
/// use berth_ops::{OpArgs, OpKind};
///
/// let mut op = OpArgs::new(());
/// assert_eq!(op.kind(), OpKind::None);
/// op.set_kind(OpKind::User(7)); // a posted completion carrying the user's code
/// assert_eq!(op.kind(), OpKind::User(7));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OpKind {
    /// Not set yet (a fresh or reset op).
    #[default]
    None,
    /// Accept a connection on a listening socket (`AcceptAsync`).
    Accept,
    /// Receive into the op's buffer (`ReceiveAsync`).
    Recv,
    /// Send the op's buffer range (`SendAsync`).
    Send,
    /// Send (part of) a file (`SendPacketsAsync` / `TransmitFile`).
    SendFile,
    /// Connect to a remote address (`ConnectAsync`).
    Connect,
    /// Close the socket (`DisconnectAsync`).
    Close,
    /// Wait until a descriptor is ready (readable or writable): for descriptors that
    /// are not sockets — an eventfd, a pipe, a timerfd — as IOCP takes any handle.
    Ready,
    /// Complete at a given instant, on no socket.
    Timer,
    /// Receive one datagram and its sender (`ReceiveFromAsync`,
    /// `ReceiveMessageFromAsync`).
    RecvFrom,
    /// Send one datagram to the op's remote endpoint (`SendToAsync`).
    SendTo,
    /// Send a list of byte ranges and file ranges, in order, as one operation
    /// (`SendPacketsAsync`, and `SendAsync` with a `BufferList`).
    SendPackets,
    /// Receive into a list of byte ranges, in order (`ReceiveAsync` with a
    /// `BufferList`).
    RecvVectored,
    /// A user completion posted to the port (`PostQueuedCompletionStatus`), with the
    /// user's code.
    User(u64),
}

/// A buffer range that does not fit in the op's lease.
///
/// ```
/// # use berth_ops::{OpArgs, OpKind};
/// # let manager = berth_buf::BufferManager::with_defaults()?;
/// let mut op = OpArgs::new(());
/// op.set_buffer(manager.lease()?, 0..10)?;
/// let err = op.set_range(0..5000).unwrap_err();
/// assert_eq!((err.start, err.end, err.capacity), (0, 5000, 4096));
/// assert_eq!(op.range(), 0..10); // unchanged
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("range {start}..{end} does not fit a buffer of {capacity} bytes")]
pub struct RangeError {
    /// Start of the rejected range.
    pub start: usize,
    /// End of the rejected range.
    pub end: usize,
    /// The lease's capacity.
    pub capacity: usize,
}

/// [`OpArgs::set_buffer`] refused a range; the lease comes back unchanged.
///
/// ```
/// # use berth_ops::{OpArgs, OpKind};
/// # let manager = berth_buf::BufferManager::with_defaults()?;
/// let mut op = OpArgs::new(());
/// let err = op.set_buffer(manager.lease()?, 0..5000).unwrap_err();
/// assert_eq!(err.range.capacity, 4096);
/// op.set_buffer(err.lease, 0..4096)?; // the lease came back: offer it again
/// assert!(op.buffer().is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{range}")]
pub struct SetBufferError {
    /// What was wrong with the range.
    pub range: RangeError,
    /// The lease that was offered.
    pub lease: Lease,
}

/// The arguments and result of one asynchronous socket operation: the seed's
/// `SocketAsyncEventArgs`. Which operation ([`OpKind`]), on which socket, with which
/// buffer ([`Lease`]) and active range (`SetBuffer(offset, count)`), how many bytes
/// moved (`BytesTransferred`), how it ended (`SocketError`, as [`OpError`]) and the
/// user's per-connection token `T` (`UserToken`, the seed's `AsyncUserToken`).
///
/// Ops live in an [`OpPool`](crate::OpPool) and are reused, as the seed reuses one
/// `SocketAsyncEventArgs` for every receive on a connection.
///
/// ```
/// use berth_buf::BufferManager;
/// use berth_ops::{OpArgs, OpKind};
///
/// let manager = BufferManager::with_defaults()?;
/// let mut op = OpArgs::new(0u32);
/// op.set_kind(OpKind::Recv);
/// op.set_buffer(manager.lease()?, 0..1024)?; // SetBuffer(offset: 0, count: 1024)
/// op.active_mut()[..2].copy_from_slice(b"hi");
/// op.complete(Ok(2));
/// assert_eq!(op.transferred_bytes(), b"hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct OpArgs<T> {
    kind: OpKind,
    socket: Option<RawFd>,
    buffer: Option<Lease>,
    range: Range<usize>,
    transferred: usize,
    result: Result<(), OpError>,
    user_data: u64,
    remote: Option<SocketAddr>,
    packet_info: Option<PacketInfo>,
    message_len: usize,
    token: T,
}

/// Where a datagram was addressed to (`IP_PKTINFO` / `IPV6_PKTINFO`): SAEA's
/// `IPPacketInformation`, for a server bound to a wildcard address that must answer
/// from the address the client used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketInfo {
    /// The datagram's destination address (one of this host's).
    pub addr: IpAddr,
    /// The index of the interface it arrived on.
    pub interface: u32,
}

impl<T> OpArgs<T> {
    /// A fresh op carrying `token`.
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// let op = OpArgs::new("connection 1");
    /// assert_eq!((op.kind(), *op.token()), (OpKind::None, "connection 1"));
    /// assert!(op.buffer().is_none() && op.socket().is_none());
    /// ```
    pub fn new(token: T) -> OpArgs<T> {
        OpArgs {
            kind: OpKind::None,
            socket: None,
            buffer: None,
            range: 0..0,
            transferred: 0,
            result: Ok(()),
            user_data: 0,
            remote: None,
            packet_info: None,
            message_len: 0,
            token,
        }
    }

    /// The operation.
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// let mut op = OpArgs::new(());
    /// assert_eq!(op.kind(), OpKind::None); // fresh
    /// op.set_kind(OpKind::Accept);
    /// assert_eq!(op.kind(), OpKind::Accept);
    /// ```
    pub fn kind(&self) -> OpKind {
        self.kind
    }

    /// Sets the operation.
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// let mut op = OpArgs::new(());
    /// op.set_kind(OpKind::Send);
    /// assert_eq!(op.kind(), OpKind::Send);
    /// op.reset();
    /// assert_eq!(op.kind(), OpKind::None);
    /// ```
    pub fn set_kind(&mut self, kind: OpKind) {
        self.kind = kind;
    }

    /// The socket (`AcceptSocket` after an accept).
    ///
    /// ```
    /// # use berth_ops::OpArgs;
    /// let mut op = OpArgs::new(());
    /// assert_eq!(op.socket(), None);
    /// op.set_socket(Some(7)); // e.g. the fd an accept completed with
    /// assert_eq!(op.socket(), Some(7));
    /// ```
    pub fn socket(&self) -> Option<RawFd> {
        self.socket
    }

    /// Sets the socket the op works on.
    ///
    /// ```
    /// # use berth_ops::OpArgs;
    /// let mut op = OpArgs::new(());
    /// op.set_socket(Some(3));
    /// assert_eq!(op.socket(), Some(3));
    /// op.reset();
    /// assert_eq!(op.socket(), None);
    /// ```
    pub fn set_socket(&mut self, socket: Option<RawFd>) {
        self.socket = socket;
    }

    /// Attaches a buffer and the range of it the op uses, returning the buffer it
    /// replaces. A range outside the lease is refused and the lease handed back in
    /// the error.
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut op = OpArgs::new(());
    /// assert!(op.set_buffer(manager.lease()?, 0..100)?.is_none());
    /// let old = op.set_buffer(manager.lease()?, 0..50)?; // replaces the first
    /// assert!(old.is_some());
    /// assert_eq!(op.range(), 0..50);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_buffer(&mut self, lease: Lease, range: Range<usize>) -> Result<Option<Lease>, SetBufferError> {
        if range.start > range.end || range.end > lease.capacity() {
            let range = RangeError { start: range.start, end: range.end, capacity: lease.capacity() };
            return Err(SetBufferError { range, lease });
        }
        self.range = range;
        Ok(self.buffer.replace(lease))
    }

    /// Changes the active range of the attached buffer (`SetBuffer(offset, count)`).
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut op = OpArgs::new(());
    /// op.set_buffer(manager.lease()?, 0..4096)?;
    /// op.set_range(100..200)?;
    /// assert_eq!(op.active().len(), 100);
    /// assert!(op.set_range(0..4097).is_err()); // past the segment
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_range(&mut self, range: Range<usize>) -> Result<(), RangeError> {
        let capacity = self.buffer.as_ref().map_or(0, Lease::capacity);
        if range.start > range.end || range.end > capacity {
            return Err(RangeError { start: range.start, end: range.end, capacity });
        }
        self.range = range;
        Ok(())
    }

    /// The active range.
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut op = OpArgs::new(());
    /// assert_eq!(op.range(), 0..0);
    /// op.set_buffer(manager.lease()?, 16..32)?;
    /// assert_eq!(op.range(), 16..32);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The attached buffer.
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut op = OpArgs::new(());
    /// assert!(op.buffer().is_none());
    /// op.set_buffer(manager.lease()?, 0..10)?;
    /// assert_eq!(op.buffer().map(|b| b.capacity()), Some(4096));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn buffer(&self) -> Option<&Lease> {
        self.buffer.as_ref()
    }

    /// The attached buffer, mutable.
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut op = OpArgs::new(());
    /// op.set_buffer(manager.lease()?, 0..10)?;
    /// op.buffer_mut().expect("attached").set_len(3)?;
    /// assert_eq!(op.buffer().expect("attached").len(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn buffer_mut(&mut self) -> Option<&mut Lease> {
        self.buffer.as_mut()
    }

    /// Detaches the buffer (to keep it, or to return it to the arena by dropping it).
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut op = OpArgs::new(());
    /// op.set_buffer(manager.lease()?, 10..20)?;
    /// let lease = op.take_buffer().expect("attached");
    /// assert_eq!((op.range(), op.active().len()), (0..0, 0));
    /// drop(lease); // back to the arena
    /// assert_eq!(manager.stats().in_use, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn take_buffer(&mut self) -> Option<Lease> {
        self.range = 0..0;
        self.buffer.take()
    }

    /// The active range of the buffer (empty if none is attached).
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut op = OpArgs::new(());
    /// assert_eq!(op.active(), b""); // no buffer yet
    /// let mut lease = manager.lease()?;
    /// lease[..11].copy_from_slice(b"hello world");
    /// op.set_buffer(lease, 6..11)?;
    /// assert_eq!(op.active(), b"world");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn active(&self) -> &[u8] {
        self.buffer.as_ref().and_then(|b| b.get(self.range.clone())).unwrap_or(&[])
    }

    /// The active range of the buffer, mutable (empty if none is attached).
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut op = OpArgs::new(());
    /// op.set_buffer(manager.lease()?, 4..8)?;
    /// op.active_mut().copy_from_slice(b"body");
    /// assert_eq!(&op.buffer().expect("attached")[4..8], b"body");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn active_mut(&mut self) -> &mut [u8] {
        let range = self.range.clone();
        self.buffer.as_mut().and_then(|b| b.get_mut(range)).unwrap_or(&mut [])
    }

    /// Bytes moved by the last completion (`BytesTransferred`).
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpError};
    /// let mut op = OpArgs::new(());
    /// op.complete(Ok(42));
    /// assert_eq!(op.transferred(), 42);
    /// op.complete(Err(OpError::ConnectionReset));
    /// assert_eq!(op.transferred(), 0);
    /// ```
    pub fn transferred(&self) -> usize {
        self.transferred
    }

    /// The bytes the last completion moved: the start of the active range.
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut op = OpArgs::new(());
    /// op.set_buffer(manager.lease()?, 0..4)?;
    /// op.active_mut().copy_from_slice(b"pong");
    /// op.complete(Ok(2));
    /// assert_eq!(op.transferred_bytes(), b"po");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn transferred_bytes(&self) -> &[u8] {
        let active = self.active();
        &active[..self.transferred.min(active.len())]
    }

    /// How the last completion ended (`SocketError`).
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpError};
    /// let mut op = OpArgs::new(());
    /// assert_eq!(op.result(), Ok(()));
    /// op.complete(Err(OpError::TimedOut));
    /// assert_eq!(op.result(), Err(OpError::TimedOut));
    /// ```
    pub fn result(&self) -> Result<(), OpError> {
        self.result
    }

    /// Records a completion: bytes moved, or why it failed (0 bytes).
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpError};
    /// let mut op = OpArgs::new(());
    /// op.complete(Err(OpError::BrokenPipe));
    /// assert_eq!((op.transferred(), op.result()), (0, Err(OpError::BrokenPipe)));
    /// op.complete(Ok(10));
    /// assert_eq!((op.transferred(), op.result()), (10, Ok(())));
    /// ```
    pub fn complete(&mut self, outcome: Result<usize, OpError>) {
        match outcome {
            Ok(n) => {
                self.transferred = n;
                self.result = Ok(());
            }
            Err(e) => {
                self.transferred = 0;
                self.result = Err(e);
            }
        }
    }

    /// The peer's address (SAEA's `RemoteEndPoint`): set by an accept (the new
    /// connection's peer) and a datagram receive (the sender); read by a datagram
    /// send as its destination.
    ///
    /// ```
    /// # use berth_ops::OpArgs;
    /// let mut op = OpArgs::new(());
    /// op.set_remote_endpoint(Some("127.0.0.1:53".parse()?));
    /// assert_eq!(op.remote_endpoint(), Some("127.0.0.1:53".parse()?));
    /// op.reset();
    /// assert_eq!(op.remote_endpoint(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remote_endpoint(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// Sets the [`remote_endpoint`](Self::remote_endpoint): the destination of a
    /// datagram send.
    pub fn set_remote_endpoint(&mut self, addr: Option<SocketAddr>) {
        self.remote = addr;
    }

    /// Where the last datagram received was addressed to, if the socket asked for it
    /// (SAEA's `ReceiveMessageFromPacketInfo`).
    pub fn packet_info(&self) -> Option<PacketInfo> {
        self.packet_info
    }

    /// Sets the [`packet_info`](Self::packet_info) (the completion engine's).
    pub fn set_packet_info(&mut self, info: Option<PacketInfo>) {
        self.packet_info = info;
    }

    /// The real length of the last datagram received: more than the buffer held if
    /// it completed with [`OpError::MessageTruncated`].
    pub fn message_len(&self) -> usize {
        self.message_len
    }

    /// Sets the [`message_len`](Self::message_len) (the completion engine's).
    pub fn set_message_len(&mut self, len: usize) {
        self.message_len = len;
    }

    /// A free word for the completion engine (a file offset, a timer key).
    ///
    /// ```
    /// # use berth_ops::OpArgs;
    /// let mut op = OpArgs::new(());
    /// assert_eq!(op.user_data(), 0);
    /// op.set_user_data(4096); // e.g. the next file offset
    /// assert_eq!(op.user_data(), 4096);
    /// ```
    pub fn user_data(&self) -> u64 {
        self.user_data
    }

    /// Sets the free word.
    ///
    /// ```
    /// # use berth_ops::OpArgs;
    /// let mut op = OpArgs::new(());
    /// op.set_user_data(u64::MAX);
    /// assert_eq!(op.user_data(), u64::MAX);
    /// op.reset();
    /// assert_eq!(op.user_data(), 0);
    /// ```
    pub fn set_user_data(&mut self, data: u64) {
        self.user_data = data;
    }

    /// The user's token (`UserToken`).
    ///
    /// ```
    /// # use berth_ops::OpArgs;
    /// let mut op = OpArgs::new(17u32);
    /// op.reset(); // the token survives a reset
    /// assert_eq!(*op.token(), 17);
    /// ```
    pub fn token(&self) -> &T {
        &self.token
    }

    /// The user's token, mutable.
    ///
    /// ```
    /// # use berth_ops::OpArgs;
    /// let mut op = OpArgs::new(String::from("conn"));
    /// op.token_mut().push_str("-1");
    /// assert_eq!(op.token(), "conn-1");
    /// ```
    pub fn token_mut(&mut self) -> &mut T {
        &mut self.token
    }

    /// Clears everything but the token for reuse; an attached lease goes back to
    /// its arena.
    ///
    /// ```
    /// # use berth_ops::{OpArgs, OpKind};
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut op = OpArgs::new(7u32);
    /// op.set_kind(OpKind::Send);
    /// op.set_buffer(manager.lease()?, 0..10)?;
    /// op.reset();
    /// assert_eq!((op.kind(), op.buffer().is_none(), *op.token()), (OpKind::None, true, 7));
    /// assert_eq!(manager.stats().in_use, 0); // the lease went back
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn reset(&mut self) {
        self.kind = OpKind::None;
        self.socket = None;
        if let Some(lease) = self.buffer.take() {
            return_lease(lease);
        }
        self.range = 0..0;
        self.transferred = 0;
        self.result = Ok(());
        self.user_data = 0;
        self.remote = None;
        self.packet_info = None;
        self.message_len = 0;
    }
}

/// Returns a lease an op still held when it was reset. Out of line, so that
/// `OpPool::give` (which resets) stays small enough to be inlined where ops are
/// given back without one: with the lease's return path inlined into it, `give` was
/// not, and `ops/take_give/pool` went from 6.8 to 12.7 ns.
#[inline(never)]
fn return_lease(lease: Lease) {
    drop(lease);
}
