//! [`PortHandle`]: posting completions to a port from any thread.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A user completion: `PostQueuedCompletionStatus(key, data)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Post {
    pub(crate) key: u64,
    pub(crate) data: u64,
}

/// How a post wakes its port: each driver's own doorbell.
pub(crate) enum Notifier {
    /// The epoll driver's mio waker.
    Epoll(mio::Waker),
    /// An eventfd the io_uring driver keeps a poll armed on.
    EventFd(std::os::fd::OwnedFd),
}

impl Notifier {
    fn wake(&self) -> io::Result<()> {
        match self {
            Notifier::Epoll(waker) => waker.wake(),
            Notifier::EventFd(fd) => match rustix::io::write(fd, &1u64.to_ne_bytes()) {
                // EAGAIN: the counter is at its maximum, so a wake is pending anyway.
                Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }
}

pub(crate) struct Shared {
    pub(crate) notifier: Notifier,
    /// Posts waiting for the port; never more than `post_capacity`, so pushing
    /// never allocates.
    pub(crate) posts: Mutex<VecDeque<Post>>,
    pub(crate) post_capacity: usize,
    pub(crate) closed: AtomicBool,
}

/// A `Send + Sync` handle that posts user completions to a
/// [`CompletionPort`](crate::CompletionPort) from any thread, waking it if it is
/// blocked in [`wait`](crate::CompletionPort::wait): the seed's
/// `PostQueuedCompletionStatus`.
///
/// ```
/// # use berth_reactor::{CompletionPort, Completion};
/// let mut port = CompletionPort::builder().build(|_| ())?;
/// let handle = port.handle();
/// std::thread::spawn(move || handle.post(7, 42)).join().unwrap()?;
/// let mut done = Vec::new();
/// port.wait(&mut done, None)?;
/// assert_eq!(done, [Completion::Posted { key: 7, data: 42 }]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct PortHandle {
    pub(crate) shared: Arc<Shared>,
}

impl PortHandle {
    /// Queues a [`Completion::Posted`](crate::Completion::Posted) and wakes the port.
    /// Fails with `BrokenPipe` once the port is dropped, and with `WouldBlock` while
    /// the port already has [`posts`](crate::PortBuilder::posts) posts waiting for it
    /// (nothing is queued then; try again after it has waited). Allocates nothing, and
    /// wakes the port only for the first post it has not yet seen.
    ///
    /// ```
    /// # use berth_reactor::{CompletionPort, Completion};
    /// let mut port = CompletionPort::builder().posts(2).build(|_| ())?;
    /// let handle = port.handle();
    /// handle.post(1, 0)?;
    /// handle.post(2, 0)?;
    /// let full = handle.post(3, 0).unwrap_err();
    /// assert_eq!(full.kind(), std::io::ErrorKind::WouldBlock);
    /// let mut done = Vec::new();
    /// port.wait(&mut done, None)?;
    /// assert_eq!(done.len(), 2);
    /// handle.post(3, 0)?; // room again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn post(&self, key: u64, data: u64) -> io::Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "completion port is gone"));
        }
        let mut posts = self.shared.posts.lock().unwrap_or_else(|e| e.into_inner());
        if posts.len() >= self.shared.post_capacity {
            // A bare kind: refusing allocates nothing either.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let first = posts.is_empty();
        posts.push_back(Post { key, data });
        drop(posts);
        // The port drains the whole queue on a wake-up, under the same lock: a post
        // into a non-empty queue is covered by the wake of the one that made it
        // non-empty.
        if first { self.shared.notifier.wake() } else { Ok(()) }
    }
}

impl fmt::Debug for PortHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortHandle").field("closed", &self.shared.closed.load(Ordering::Relaxed)).finish()
    }
}
