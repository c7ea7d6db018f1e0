//! Readiness of any descriptor on the port: [`Interest`] (what a
//! [`wait_ready`](crate::CompletionPort::wait_ready) op waits for) and [`Ready`]
//! (what its completion says).

use std::os::fd::BorrowedFd;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

/// What a readiness op waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interest {
    /// Something to read (an eventfd's count, a pipe's bytes, a timerfd's expiry), or
    /// the other end gone.
    Readable,
    /// Room to write.
    Writable,
}

impl Interest {
    pub(crate) fn events(self) -> u32 {
        match self {
            Interest::Readable => PollFlags::IN.bits() as u32,
            Interest::Writable => PollFlags::OUT.bits() as u32,
        }
    }
}

/// What a readiness op's completion reports: its `Ok(n)` read as `poll(2)` event bits.
///
/// ```
/// use berth_reactor::Ready;
///
/// let ready = Ready::from_result(1); // POLLIN
/// assert!(ready.is_readable() && !ready.is_writable() && !ready.is_hup());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ready(u32);

impl Ready {
    /// Reads a readiness op's transferred count.
    pub fn from_result(n: usize) -> Ready {
        Ready(n as u32)
    }

    /// The raw `poll(2)` bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Readable (`POLLIN`).
    pub fn is_readable(self) -> bool {
        self.0 & PollFlags::IN.bits() as u32 != 0
    }

    /// Writable (`POLLOUT`).
    pub fn is_writable(self) -> bool {
        self.0 & PollFlags::OUT.bits() as u32 != 0
    }

    /// The other end hung up (`POLLHUP`, `POLLRDHUP`).
    pub fn is_hup(self) -> bool {
        self.0 & (PollFlags::HUP.bits() | PollFlags::RDHUP.bits()) as u32 != 0
    }

    /// An error is pending on the descriptor (`POLLERR`).
    pub fn is_error(self) -> bool {
        self.0 & PollFlags::ERR.bits() as u32 != 0
    }
}

/// The events of `fd` that answer `events` now (with hang-ups and errors, which
/// always do), or 0: one `poll(2)` that does not wait.
pub(crate) fn ready_now(fd: BorrowedFd<'_>, events: u32) -> Result<u32, Errno> {
    let flags = PollFlags::from_bits_truncate(events as u16);
    let mut fds = [PollFd::from_borrowed_fd(fd, flags)];
    let now = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    loop {
        match rustix::event::poll(&mut fds, Some(&now)) {
            Ok(_) => break,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    let got = fds[0].revents().bits() as u32;
    let answers = events | (PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL).bits() as u32;
    Ok(got & answers)
}

/// Whether epoll can wait on `fd` (`EPERM` if not): one throwaway epoll instance,
/// so both drivers refuse the same descriptors.
pub(crate) fn pollable(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    use rustix::event::epoll;
    let probe = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(&probe, fd, epoll::EventData::new_u64(0), epoll::EventFlags::IN)
}
