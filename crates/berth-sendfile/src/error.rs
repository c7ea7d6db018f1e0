//! The error type of a send, and its mapping onto `std::io::Error`.

use std::io;

use crate::range::RangeError;

/// Why a send stopped. Every variant that can happen after bytes went out says how many
/// bytes of the body had been sent (`sent`, counted from the start of the range), so a
/// caller can log it or decide what the peer has seen.
///
/// Converts into [`io::Error`] (for `?` in `io::Result` code) with a matching
/// [`io::ErrorKind`]; the typed error stays reachable through
/// [`io::Error::get_ref`].
///
/// ```
/// use std::io;
/// use berth_sendfile::SendFileError;
///
/// let e: io::Error = SendFileError::WouldBlock.into();
/// assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
/// let e: io::Error = SendFileError::Truncated { sent: 10, expected: 20 }.into();
/// assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendFileError {
    /// The socket is non-blocking (or has a send timeout that expired) and took nothing
    /// this call. Nothing is lost: wait until it is writable and call again; the send
    /// resumes where it stopped.
    #[error("socket would block")]
    WouldBlock,
    /// The source ended before the range did: the file was truncated (by another handle
    /// or process) while it was being sent, or was shorter than the range from the
    /// start. The peer received exactly `sent` correct bytes and must not be told that
    /// the body is complete; close the connection.
    #[error("file ended after {sent} of {expected} bytes: truncated while sending")]
    Truncated {
        /// Bytes of the range that were sent (and are correct).
        sent: u64,
        /// The length of the range.
        expected: u64,
    },
    /// The peer closed or reset the connection (EPIPE, ECONNRESET, ENOTCONN). No
    /// SIGPIPE was delivered. Close the socket.
    #[error("peer closed the connection after {sent} bytes")]
    PeerClosed {
        /// Bytes of the range that were handed to the kernel before the error.
        sent: u64,
        /// `true` for ECONNRESET (the peer reset), `false` for EPIPE/ENOTCONN.
        reset: bool,
    },
    /// The fallback copy was needed (sendfile refused the source or the socket, or it
    /// was forced) but the scratch buffer was empty, or, for a non-seekable source, is
    /// shorter than the bytes it holds from the previous call. Call again with a
    /// non-empty buffer (the same one, for a non-seekable source).
    #[error("the copy fallback needs a scratch buffer")]
    ScratchRequired,
    /// The source cannot seek (a pipe or socket) and the range does not start at 0: only
    /// the next `len` bytes of a stream can be sent.
    #[error("source is not seekable; range must start at 0, not {offset}")]
    NotSeekable {
        /// The range's start.
        offset: u64,
    },
    /// The requested range is not inside the file (or overflows).
    #[error(transparent)]
    Range(#[from] RangeError),
    /// Any other failure of the file or the socket (EIO, EBADF, ...).
    #[error("I/O error after {sent} bytes: {source}")]
    Io {
        /// Bytes of the range that were sent before the error.
        sent: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl SendFileError {
    /// Whether this is [`SendFileError::WouldBlock`].
    ///
    /// ```
    /// assert!(berth_sendfile::SendFileError::WouldBlock.is_would_block());
    /// ```
    pub fn is_would_block(&self) -> bool {
        matches!(self, SendFileError::WouldBlock)
    }

    /// The `io::ErrorKind` this error maps to.
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use berth_sendfile::SendFileError;
    ///
    /// assert_eq!(SendFileError::PeerClosed { sent: 0, reset: true }.kind(), ErrorKind::ConnectionReset);
    /// ```
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            SendFileError::WouldBlock => io::ErrorKind::WouldBlock,
            SendFileError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            SendFileError::PeerClosed { reset: true, .. } => io::ErrorKind::ConnectionReset,
            SendFileError::PeerClosed { reset: false, .. } => io::ErrorKind::BrokenPipe,
            SendFileError::ScratchRequired | SendFileError::NotSeekable { .. } | SendFileError::Range(_) => {
                io::ErrorKind::InvalidInput
            }
            SendFileError::Io { source, .. } => source.kind(),
        }
    }
}

impl From<SendFileError> for io::Error {
    fn from(e: SendFileError) -> io::Error {
        match e {
            // Keep the OS error itself (raw_os_error stays available).
            SendFileError::Io { source, .. } => source,
            other => io::Error::new(other.kind(), other),
        }
    }
}
