//! [`OpArgs`]: one operation's arguments and result — the `SocketAsyncEventArgs` analog.

use std::ops::Range;
use std::os::fd::RawFd;

use berth_buf::Lease;

use crate::error::OpError;

/// What an operation does.
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
    /// A user completion posted to the port (`PostQueuedCompletionStatus`), with the
    /// user's code.
    User(u64),
}

/// A buffer range that does not fit in the op's lease.
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
    token: T,
}

impl<T> OpArgs<T> {
    /// A fresh op carrying `token`.
    pub fn new(token: T) -> OpArgs<T> {
        OpArgs {
            kind: OpKind::None,
            socket: None,
            buffer: None,
            range: 0..0,
            transferred: 0,
            result: Ok(()),
            user_data: 0,
            token,
        }
    }

    /// The operation.
    pub fn kind(&self) -> OpKind {
        self.kind
    }

    /// Sets the operation.
    pub fn set_kind(&mut self, kind: OpKind) {
        self.kind = kind;
    }

    /// The socket (`AcceptSocket` after an accept).
    pub fn socket(&self) -> Option<RawFd> {
        self.socket
    }

    /// Sets the socket the op works on.
    pub fn set_socket(&mut self, socket: Option<RawFd>) {
        self.socket = socket;
    }

    /// Attaches a buffer and the range of it the op uses, returning the buffer it
    /// replaces. A range outside the lease is refused and the lease handed back in
    /// the error.
    pub fn set_buffer(&mut self, lease: Lease, range: Range<usize>) -> Result<Option<Lease>, SetBufferError> {
        if range.start > range.end || range.end > lease.capacity() {
            let range = RangeError { start: range.start, end: range.end, capacity: lease.capacity() };
            return Err(SetBufferError { range, lease });
        }
        self.range = range;
        Ok(self.buffer.replace(lease))
    }

    /// Changes the active range of the attached buffer (`SetBuffer(offset, count)`).
    pub fn set_range(&mut self, range: Range<usize>) -> Result<(), RangeError> {
        let capacity = self.buffer.as_ref().map_or(0, Lease::capacity);
        if range.start > range.end || range.end > capacity {
            return Err(RangeError { start: range.start, end: range.end, capacity });
        }
        self.range = range;
        Ok(())
    }

    /// The active range.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The attached buffer.
    pub fn buffer(&self) -> Option<&Lease> {
        self.buffer.as_ref()
    }

    /// The attached buffer, mutable.
    pub fn buffer_mut(&mut self) -> Option<&mut Lease> {
        self.buffer.as_mut()
    }

    /// Detaches the buffer (to keep it, or to return it to the arena by dropping it).
    pub fn take_buffer(&mut self) -> Option<Lease> {
        self.range = 0..0;
        self.buffer.take()
    }

    /// The active range of the buffer (empty if none is attached).
    pub fn active(&self) -> &[u8] {
        self.buffer.as_ref().and_then(|b| b.get(self.range.clone())).unwrap_or(&[])
    }

    /// The active range of the buffer, mutable (empty if none is attached).
    pub fn active_mut(&mut self) -> &mut [u8] {
        let range = self.range.clone();
        self.buffer.as_mut().and_then(|b| b.get_mut(range)).unwrap_or(&mut [])
    }

    /// Bytes moved by the last completion (`BytesTransferred`).
    pub fn transferred(&self) -> usize {
        self.transferred
    }

    /// The bytes the last completion moved: the start of the active range.
    pub fn transferred_bytes(&self) -> &[u8] {
        let active = self.active();
        &active[..self.transferred.min(active.len())]
    }

    /// How the last completion ended (`SocketError`).
    pub fn result(&self) -> Result<(), OpError> {
        self.result
    }

    /// Records a completion: bytes moved, or why it failed (0 bytes).
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

    /// A free word for the completion engine (a file offset, a timer key).
    pub fn user_data(&self) -> u64 {
        self.user_data
    }

    /// Sets the free word.
    pub fn set_user_data(&mut self, data: u64) {
        self.user_data = data;
    }

    /// The user's token (`UserToken`).
    pub fn token(&self) -> &T {
        &self.token
    }

    /// The user's token, mutable.
    pub fn token_mut(&mut self) -> &mut T {
        &mut self.token
    }

    /// Clears everything but the token for reuse; an attached lease goes back to
    /// its arena.
    pub fn reset(&mut self) {
        self.kind = OpKind::None;
        self.socket = None;
        self.buffer = None;
        self.range = 0..0;
        self.transferred = 0;
        self.result = Ok(());
        self.user_data = 0;
    }
}
