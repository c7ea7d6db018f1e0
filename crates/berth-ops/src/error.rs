//! [`OpError`]: why an operation failed, as a kind a server can branch on.

use std::io;

/// The result kind of a failed operation: the seed's `SocketError`, as a small `Copy`
/// enum (no allocation, no string) that a completion handler can match on.
///
/// ```
/// use berth_ops::OpError;
///
/// let e = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
/// assert_eq!(OpError::from_io(&e), OpError::ConnectionReset);
/// assert!(OpError::ConnectionReset.is_peer_gone());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// Cancelled by the user or by closing its socket.
    #[error("operation cancelled")]
    Cancelled,
    /// Its deadline passed.
    #[error("operation timed out")]
    TimedOut,
    /// The peer reset the connection.
    #[error("connection reset by peer")]
    ConnectionReset,
    /// The connection was aborted locally.
    #[error("connection aborted")]
    ConnectionAborted,
    /// Nobody listens at the address.
    #[error("connection refused")]
    ConnectionRefused,
    /// Writing to a connection the peer has closed.
    #[error("broken pipe: the peer closed the connection")]
    BrokenPipe,
    /// The socket is not connected.
    #[error("socket not connected")]
    NotConnected,
    /// The local address is taken.
    #[error("address in use")]
    AddrInUse,
    /// The local address cannot be used.
    #[error("address not available")]
    AddrNotAvailable,
    /// No route to the host or network.
    #[error("host or network unreachable")]
    Unreachable,
    /// The process or system is out of file descriptors (EMFILE/ENFILE).
    #[error("too many open files")]
    TooManyOpenFiles,
    /// The buffer arena had no segment for the operation.
    #[error("buffer arena exhausted")]
    BufferExhausted,
    /// A file being sent shrank before the whole range was sent.
    #[error("file truncated during send")]
    Truncated,
    /// The operation's arguments were invalid (no buffer for a receive, say).
    #[error("invalid operation arguments")]
    InvalidInput,
    /// The peer closed its side before the operation could complete.
    #[error("unexpected end of stream")]
    UnexpectedEof,
    /// A datagram was longer than the receive's buffer (`MSG_TRUNC`; SAEA's
    /// `MessageSize`): the buffer holds its first bytes, and
    /// [`OpArgs::message_len`](crate::OpArgs::message_len) its real length. Nothing is
    /// cut silently.
    #[error("datagram truncated: longer than the receive buffer")]
    MessageTruncated,
    /// Any other OS error, by errno.
    #[error("os error {0}")]
    Os(i32),
    /// An error without an errno or a kind above.
    #[error("other error")]
    Other,
}

impl OpError {
    /// Maps an I/O error to its kind.
    ///
    /// ```
    /// # use berth_ops::OpError;
    /// use std::io::{Error, ErrorKind};
    ///
    /// assert_eq!(OpError::from_io(&Error::from_raw_os_error(24)), OpError::TooManyOpenFiles); // EMFILE
    /// assert_eq!(OpError::from_io(&Error::from(ErrorKind::TimedOut)), OpError::TimedOut);
    /// assert_eq!(OpError::from_io(&Error::from_raw_os_error(9999)), OpError::Os(9999));
    /// ```
    pub fn from_io(e: &io::Error) -> OpError {
        if let Some(errno) = e.raw_os_error() {
            // EMFILE / ENFILE have no stable io::ErrorKind of their own.
            if errno == 24 || errno == 23 {
                return OpError::TooManyOpenFiles;
            }
        }
        use io::ErrorKind as K;
        match e.kind() {
            K::TimedOut => OpError::TimedOut,
            K::ConnectionReset => OpError::ConnectionReset,
            K::ConnectionAborted => OpError::ConnectionAborted,
            K::ConnectionRefused => OpError::ConnectionRefused,
            K::BrokenPipe => OpError::BrokenPipe,
            K::NotConnected => OpError::NotConnected,
            K::AddrInUse => OpError::AddrInUse,
            K::AddrNotAvailable => OpError::AddrNotAvailable,
            K::HostUnreachable | K::NetworkUnreachable => OpError::Unreachable,
            K::InvalidInput => OpError::InvalidInput,
            K::UnexpectedEof => OpError::UnexpectedEof,
            K::OutOfMemory => OpError::BufferExhausted,
            _ => e.raw_os_error().map_or(OpError::Other, OpError::Os),
        }
    }

    /// True if the peer is gone and the connection should be closed.
    ///
    /// ```
    /// # use berth_ops::OpError;
    /// assert!(OpError::BrokenPipe.is_peer_gone()); // close the connection
    /// assert!(!OpError::TimedOut.is_peer_gone());
    /// ```
    pub fn is_peer_gone(&self) -> bool {
        matches!(
            self,
            OpError::ConnectionReset
                | OpError::ConnectionAborted
                | OpError::BrokenPipe
                | OpError::NotConnected
                | OpError::UnexpectedEof
        )
    }

    /// True if the same operation may succeed later (resources freed up).
    ///
    /// ```
    /// # use berth_ops::OpError;
    /// assert!(OpError::BufferExhausted.is_transient()); // retry once segments come back
    /// assert!(!OpError::ConnectionReset.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(self, OpError::TooManyOpenFiles | OpError::BufferExhausted | OpError::TimedOut)
    }
}

impl From<OpError> for io::Error {
    fn from(e: OpError) -> io::Error {
        use io::ErrorKind as K;
        let kind = match e {
            OpError::Cancelled => K::Interrupted,
            OpError::TimedOut => K::TimedOut,
            OpError::ConnectionReset => K::ConnectionReset,
            OpError::ConnectionAborted => K::ConnectionAborted,
            OpError::ConnectionRefused => K::ConnectionRefused,
            OpError::BrokenPipe => K::BrokenPipe,
            OpError::NotConnected => K::NotConnected,
            OpError::AddrInUse => K::AddrInUse,
            OpError::AddrNotAvailable => K::AddrNotAvailable,
            OpError::Unreachable => K::HostUnreachable,
            OpError::BufferExhausted => K::OutOfMemory,
            OpError::InvalidInput => K::InvalidInput,
            OpError::UnexpectedEof | OpError::Truncated => K::UnexpectedEof,
            OpError::MessageTruncated => K::InvalidData,
            OpError::Os(errno) => return io::Error::from_raw_os_error(errno),
            OpError::TooManyOpenFiles => return io::Error::from_raw_os_error(24),
            OpError::Other => K::Other,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert_eq!(OpError::from_io(&io::Error::from_raw_os_error(24)), OpError::TooManyOpenFiles);
        assert_eq!(OpError::from_io(&io::Error::from_raw_os_error(23)), OpError::TooManyOpenFiles);
        assert_eq!(OpError::from_io(&io::Error::from_raw_os_error(104)), OpError::ConnectionReset);
        assert_eq!(OpError::from_io(&io::Error::from_raw_os_error(32)), OpError::BrokenPipe);
        assert_eq!(OpError::from_io(&io::Error::from_raw_os_error(9999)), OpError::Os(9999));
        assert_eq!(OpError::from_io(&io::Error::other("x")), OpError::Other);
    }

    #[test]
    fn round_trip_keeps_the_kind() {
        for e in [OpError::ConnectionReset, OpError::BrokenPipe, OpError::TimedOut, OpError::TooManyOpenFiles] {
            assert_eq!(OpError::from_io(&io::Error::from(e)), e);
        }
    }
}
