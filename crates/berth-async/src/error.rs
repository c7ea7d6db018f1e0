//! [`Error`]: why an async operation failed, and [`JoinError`]: why a task gave no
//! output.

use std::io;

use berth_ops::OpError;
use berth_reactor::SubmitError;

/// Why an operation of this crate failed: the port refused it, it completed with
/// an error, or there was no runtime or no free resource to run it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operation completed with an error: a peer that reset or closed
    /// ([`OpError::is_peer_gone`]), a refused connect, a cancellation.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The port refused the submit (a stale socket, a lease with no room to
    /// receive into: [`SubmitError::NoBuffer`]).
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// Every op of the port's pool is in flight; raise
    /// [`RuntimeBuilder::ops`](crate::RuntimeBuilder::ops) or try again once some complete.
    #[error("no free operation in the port's pool")]
    PoolExhausted,
    /// The buffer arena had no free segment.
    #[error("buffer arena exhausted")]
    BufferExhausted,
    /// [`timeout`](crate::timeout)'s time ran out; the inner future was dropped (and
    /// its operation cancelled).
    #[error("timed out")]
    TimedOut,
    /// Called outside [`Runtime::block_on`](crate::Runtime::block_on): there is no
    /// port to submit to.
    #[error("not inside a berth-async runtime")]
    NoRuntime,
    /// The runtime behind a [`Handle`](crate::Handle) is gone.
    #[error("the runtime is gone")]
    RuntimeGone,
    /// The operating system refused (creating the port, say).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// True if the peer is gone and the connection should be closed.
    ///
    /// ```
    /// # use berth_async::Error;
    /// assert!(Error::Op(berth_ops::OpError::BrokenPipe).is_peer_gone());
    /// assert!(!Error::TimedOut.is_peer_gone());
    /// ```
    pub fn is_peer_gone(&self) -> bool {
        matches!(self, Error::Op(e) if e.is_peer_gone())
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Op(op) => op.into(),
            Error::Io(io) => io,
            Error::Submit(SubmitError::Io(io)) => io,
            Error::TimedOut => io::Error::new(io::ErrorKind::TimedOut, e),
            Error::PoolExhausted | Error::BufferExhausted => io::Error::new(io::ErrorKind::OutOfMemory, e),
            other => io::Error::other(other),
        }
    }
}

/// Why a [`JoinHandle`](crate::JoinHandle) has no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The task panicked; the runtime dropped it and kept serving the others. The
    /// panic's message, if it was a string.
    #[error("task panicked: {0}")]
    Panicked(String),
    /// The task was aborted ([`JoinHandle::abort`](crate::JoinHandle::abort)).
    #[error("task aborted")]
    Aborted,
    /// The runtime was dropped before the task finished.
    #[error("the runtime was dropped before the task finished")]
    RuntimeGone,
}
