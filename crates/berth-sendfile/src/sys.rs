//! Every OS call the crate makes: sendfile, pread/read, send/write, fstat, TCP_CORK
//! (all through rustix), and the thread signal-mask guard that keeps sendfile(2) and
//! write(2) from raising SIGPIPE (through libc: rustix has no stable sigprocmask).
//!
//! Each function makes one syscall and returns the raw `Errno`, so the caller can sort
//! EAGAIN / EINTR / EPIPE / "sendfile refused" from real failures. EINTR is not retried
//! here; the send loop decides.

use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::net::SendFlags;

/// `sendfile(out, in, &mut offset, count)`: advances `offset` by what it sent.
pub(crate) fn sendfile(
    out: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: &mut u64,
    count: usize,
) -> Result<usize, Errno> {
    rustix::fs::sendfile(out, file, Some(offset), count)
}

/// `pread(file, buf, offset)`.
pub(crate) fn pread(file: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    rustix::io::pread(file, buf, offset)
}

/// `read(file, buf)`, for sources that cannot seek (pipes, sockets).
pub(crate) fn read(file: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    rustix::io::read(file, buf)
}

/// `send(socket, buf, MSG_NOSIGNAL | MSG_MORE?)`: never raises SIGPIPE.
pub(crate) fn send(socket: BorrowedFd<'_>, buf: &[u8], more: bool) -> Result<usize, Errno> {
    let mut flags = SendFlags::NOSIGNAL;
    if more {
        flags |= SendFlags::MORE;
    }
    rustix::net::send(socket, buf, flags)
}

/// `write(fd, buf)`, for outputs that are not sockets (ENOTSOCK from [`send`]). Can
/// raise SIGPIPE on a pipe: call it under a [`SigpipeGuard`].
pub(crate) fn write(out: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, Errno> {
    rustix::io::write(out, buf)
}

/// The size of a file from `fstat`, `None` for a negative (nonsensical) size.
pub(crate) fn file_size(file: BorrowedFd<'_>) -> Result<Option<u64>, Errno> {
    let st = rustix::fs::fstat(file)?;
    Ok(u64::try_from(st.st_size).ok())
}

/// `setsockopt(TCP_CORK)`.
pub(crate) fn set_cork(socket: BorrowedFd<'_>, on: bool) -> Result<(), Errno> {
    rustix::net::sockopt::set_tcp_cork(socket, on)
}

/// Keeps a SIGPIPE raised by this thread from reaching the process while it lives.
///
/// sendfile(2) has no `MSG_NOSIGNAL`: when the peer has gone, the kernel both returns
/// EPIPE and sends SIGPIPE to the calling thread, whose default action kills the
/// process. Rust binaries ignore SIGPIPE from start-up, but a library cannot count on
/// it (a C host, `-Zon-broken-pipe=kill`, a handler someone installed). So before a
/// call that may raise it, [`SigpipeGuard::new`] looks at the disposition; if SIGPIPE
/// is ignored it does nothing (one `sigaction` query), otherwise it blocks SIGPIPE in
/// this thread. On drop, a SIGPIPE that became pending while the guard was up is
/// consumed with a zero-timeout `sigtimedwait`, and the old mask is restored. The EPIPE
/// itself still comes back from the syscall, which is how the error is reported.
///
/// A SIGPIPE that was already pending before the guard (the thread had it blocked) is
/// left alone: standard signals do not queue, so ours merged into it.
pub(crate) struct SigpipeGuard {
    old_mask: libc::sigset_t,
    pending_before: bool,
}

impl std::fmt::Debug for SigpipeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigpipeGuard").field("pending_before", &self.pending_before).finish_non_exhaustive()
    }
}

fn sigpipe_set() -> libc::sigset_t {
    // SAFETY: sigset_t is a plain bit array; all-zero is a valid (empty) value, and
    // sigemptyset/sigaddset only write inside the set we pass them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        set
    }
}

fn sigpipe_pending() -> bool {
    // SAFETY: a zeroed sigset_t is valid; sigpending writes only into `set`, and
    // sigismember only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set) == 0 && libc::sigismember(&set, libc::SIGPIPE) == 1
    }
}

/// Whether SIGPIPE is currently ignored process-wide. A failed query answers "no", so
/// the caller guards (the safe side).
fn sigpipe_ignored() -> bool {
    // SAFETY: a zeroed `sigaction` is a valid out-parameter; a null `act` makes this a
    // pure query that changes nothing.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Set by [`keep_sigpipe_ignored`]: the process promised SIGPIPE stays ignored.
static IGNORED_FOR_GOOD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets SIGPIPE's disposition to "ignore" and promises it stays so: every later send
/// skips the per-call check (one `rt_sigaction` syscall per sendfile(2)).
pub(crate) fn keep_sigpipe_ignored() -> std::io::Result<()> {
    // SAFETY: a zeroed `sigaction` with `SIG_IGN` as its handler and an empty mask is
    // a valid request; the old action is not asked for. Ignoring SIGPIPE breaks no
    // Rust or libc invariant (Rust binaries start that way).
    let rc = unsafe {
        let mut ignore: libc::sigaction = std::mem::zeroed();
        ignore.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&mut ignore.sa_mask);
        libc::sigaction(libc::SIGPIPE, &ignore, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    IGNORED_FOR_GOOD.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

impl SigpipeGuard {
    /// `None` when SIGPIPE is ignored (nothing to guard); otherwise SIGPIPE is blocked
    /// in this thread until the guard drops.
    pub(crate) fn new() -> Option<SigpipeGuard> {
        if IGNORED_FOR_GOOD.load(std::sync::atomic::Ordering::Relaxed) || sigpipe_ignored() {
            return None;
        }
        let set = sigpipe_set();
        // SAFETY: zeroed sigset_t is valid; pthread_sigmask reads `set` and writes the
        // previous mask into `old_mask`, both live locals. Blocking SIGPIPE in one thread
        // does not break any Rust or libc invariant.
        let (rc, old_mask) = unsafe {
            let mut old_mask: libc::sigset_t = std::mem::zeroed();
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask);
            (rc, old_mask)
        };
        if rc != 0 {
            // Cannot happen with valid arguments; without a guard the syscall still runs.
            tracing::warn!(rc, "pthread_sigmask failed; SIGPIPE not blocked");
            return None;
        }
        Some(SigpipeGuard { old_mask, pending_before: sigpipe_pending() })
    }
}

impl Drop for SigpipeGuard {
    fn drop(&mut self) {
        if !self.pending_before && sigpipe_pending() {
            let set = sigpipe_set();
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            loop {
                // SAFETY: `set` and `zero` are live locals; a null siginfo pointer is
                // allowed. SIGPIPE is blocked in this thread, so sigtimedwait may take it.
                let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
                if rc == -1 && Errno::from_io_error(&std::io::Error::last_os_error()) == Some(Errno::INTR) {
                    continue;
                }
                break;
            }
        }
        // SAFETY: restores the mask saved in `new`; the pointer is to our own field and
        // a null old-mask pointer is allowed.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut());
        }
    }
}
