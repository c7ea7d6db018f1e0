//! Every OS call the channel makes, behind a few small functions (all via rustix).
//!
//! What the rest of the crate needs from the OS:
//! - shared files: `memfd` (sealed against resizing), `create_excl` / `open_checked`
//!   for `/dev/shm` names (0600, `O_EXCL`, `O_NOFOLLOW`, owner and mode checked),
//!   `file_len`, `map` (a shared read-write mapping);
//! - waiting: `futex_wait` / `futex_wake` on a word in the shared mapping (not
//!   process-private, so both processes address the same futex);
//! - the asymmetric wake barrier: `membarrier_ready` (register this process for
//!   `MEMBARRIER_CMD_GLOBAL_EXPEDITED`, once) and `membarrier_global`;
//! - peer liveness: `getpid`, `start_time` (from `/proc/<pid>/stat`, to tell a pid
//!   from its reuse), `Pidfd`;
//! - descriptor passing: `send_fds` / `recv_fds` with `SCM_RIGHTS`;
//! - wake descriptors: `eventfd` (memfd channels), `make_fifo` / `open_fifo_checked`
//!   (named channels), `check_wake_fd` for a descriptor from a peer, `signal` and
//!   `drain`;
//! - `monotonic_ns`, a clock both processes share (for heartbeats), and `coarse_ns`
//!   (for rate-limiting the non-blocking calls' liveness checks).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::fs::{self, Mode, OFlags, SealFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

use crate::error::OpenError;

/// Our process id.
pub(crate) fn getpid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Nanoseconds on `CLOCK_MONOTONIC`, the same clock in every process of the host.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// Nanoseconds on `CLOCK_MONOTONIC_COARSE`: a vDSO read of the last tick (1–10 ms
/// resolution), cheap enough for every empty poll.
pub(crate) fn coarse_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// A process's start time (clock ticks after boot, field 22 of `/proc/<pid>/stat`)
/// and whether it is a zombie; `None` if there is no such process.
pub(crate) fn start_time(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?; // field 3
    let start = fields.nth(22 - 4)?.parse().ok()?; // field 22
    Some((start, state == "Z" || state == "X"))
}

/// A pid word from the shared header as a process id, if it can be one: 1 ..=
/// `i32::MAX`. The peer writes that word; cast to a `pid_t`, a value of 2^31 or more
/// would be negative — a process group to `kill(2)` (`-1`: every process we may
/// signal, so a dead peer would look alive) and a failed assertion in rustix.
fn pid_of(pid: u32) -> Option<rustix::process::Pid> {
    i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw)
}

/// Whether a process `pid` exists (`kill(pid, 0)`; a zombie counts), for when
/// `/proc` cannot be read. Another user's process (`EPERM`) exists too.
pub(crate) fn process_exists(pid: u32) -> bool {
    let Some(pid) = pid_of(pid) else { return false };
    !matches!(rustix::process::test_kill_process(pid), Err(rustix::io::Errno::SRCH))
}

/// An anonymous shared file of `len` bytes that can never shrink or grow again.
pub(crate) fn memfd(len: u64) -> io::Result<OwnedFd> {
    let fd = fs::memfd_create("berth-ipc", fs::MemfdFlags::CLOEXEC | fs::MemfdFlags::ALLOW_SEALING)?;
    fs::ftruncate(&fd, len)?;
    fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Whether `fd` carries the `F_SEAL_SHRINK` seal, so nobody can ever truncate it
/// under our mapping. Asked of the descriptor itself (`F_GET_SEALS`): a file that
/// cannot be sealed (not a memfd or tmpfs file) or a call that fails counts as
/// unsealed. `/proc` is not consulted.
pub(crate) fn sealed_against_shrink(fd: BorrowedFd<'_>) -> bool {
    fs::fcntl_get_seals(fd).is_ok_and(|seals| seals.contains(SealFlags::SHRINK))
}

/// Creates `path` exclusively, mode 0600, refusing symlinks, sized `len`.
pub(crate) fn create_excl(path: &Path, len: u64) -> io::Result<OwnedFd> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = fs::openat(fs::CWD, path, flags, Mode::RUSR | Mode::WUSR)?;
    if let Err(e) = fs::ftruncate(&fd, len) {
        let _ = fs::unlink(path);
        return Err(e.into());
    }
    Ok(fd)
}

/// Opens an existing channel file: a regular file (no symlink), ours, 0600 or tighter.
pub(crate) fn open_checked(path: &Path) -> Result<OwnedFd, OpenError> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd = fs::openat(fs::CWD, path, flags, Mode::empty())
        .map_err(|e| if e == rustix::io::Errno::LOOP { OpenError::NotRegularFile } else { OpenError::Io(e.into()) })?;
    let st = fs::fstat(&fd).map_err(io::Error::from)?;
    if fs::FileType::from_raw_mode(st.st_mode) != fs::FileType::RegularFile {
        return Err(OpenError::NotRegularFile);
    }
    let us = rustix::process::geteuid().as_raw();
    if st.st_uid != us {
        return Err(OpenError::NotOwner { owner: st.st_uid, us });
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o077 != 0 {
        return Err(OpenError::BadPermissions { mode });
    }
    Ok(fd)
}

/// The file's current length.
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(fs::fstat(fd)?.st_size as u64)
}

/// A shared read-write mapping of the first `len` bytes of `fd`.
pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<memmap2::MmapRaw> {
    use std::os::fd::AsRawFd;
    memmap2::MmapOptions::new().len(len).map_raw(fd.as_raw_fd())
}

/// Whether the calling thread may run on one CPU only (its affinity mask, or the
/// machine): then spinning while waiting for a peer only keeps the peer, which
/// needs that CPU, from running. False if the mask cannot be read.
pub(crate) fn runs_on_one_cpu() -> bool {
    rustix::thread::sched_getaffinity(None).is_ok_and(|set| set.count() == 1)
}

/// Sleeps while `*word == expected`, at most `timeout` (`None`: until woken).
/// Spurious returns are fine: callers re-check their condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| rustix::thread::futex::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: t.subsec_nanos() as _,
    });
    // Shared (not PRIVATE): the word lives in a mapping other processes also map.
    let _ = rustix::thread::futex::wait(word, rustix::thread::futex::Flags::empty(), expected, ts.as_ref());
}

/// Wakes every sleeper on `word` (there is at most one per ring end).
pub(crate) fn futex_wake(word: &AtomicU32) {
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), i32::MAX as u32);
}

/// Registers this process so that other processes' `membarrier_global` calls
/// interrupt its running threads with a full barrier, and checks that this process
/// may issue such calls itself. Done once per process; `false` if either is refused
/// (old kernel, seccomp), and then the channel falls back to fences.
pub(crate) fn membarrier_ready() -> bool {
    use rustix::thread::{MembarrierCommand, membarrier};
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        let ok = membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
            && membarrier(MembarrierCommand::GlobalExpedited).is_ok();
        if !ok {
            tracing::debug!("membarrier(GLOBAL_EXPEDITED) unavailable: every commit and release pays a fence");
        }
        ok
    })
}

/// Makes every running thread of every registered process (both ends of every
/// channel) pass a full memory barrier before this returns. `false` if refused.
pub(crate) fn membarrier_global() -> bool {
    #[cfg(test)]
    MEMBARRIERS.with(|n| n.set(n.get() + 1));
    rustix::thread::membarrier(rustix::thread::MembarrierCommand::GlobalExpedited).is_ok()
}

#[cfg(test)]
thread_local! {
    /// `membarrier_global` calls made by this thread (tests run in parallel threads).
    pub(crate) static MEMBARRIERS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A process handle that cannot be confused with a later process reusing its pid.
#[derive(Debug)]
pub(crate) struct Pidfd(OwnedFd);

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Pidfd {
    /// Opens a pidfd; `Err` if there is no such process or pidfds are unavailable.
    pub(crate) fn open(pid: u32) -> io::Result<Pidfd> {
        let pid = pid_of(pid).ok_or(io::ErrorKind::InvalidInput)?;
        Ok(Pidfd(rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?))
    }

    /// Whether the process has exited (a pidfd polls readable from then on).
    pub(crate) fn exited(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(&self.0, rustix::event::PollFlags::IN)];
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }
}

/// A non-blocking eventfd: a counter another process can add to (waking whoever
/// waits for it to turn readable) and its owner drains.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    Ok(rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)
}

/// Creates the FIFO `path`, mode 0600, replacing one left by a crash (the caller
/// holds the channel's name exclusively, so nobody else can be using it).
pub(crate) fn make_fifo(path: &Path) -> io::Result<()> {
    match fs::unlink(path) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(fs::mknodat(fs::CWD, path, fs::FileType::Fifo, Mode::RUSR | Mode::WUSR, 0)?)
}

/// Opens a wake FIFO for reading and writing, non-blocking (so it never waits for
/// the other side to open it): a FIFO (no symlink), ours, 0600 or tighter.
pub(crate) fn open_fifo_checked(path: &Path) -> Result<OwnedFd, OpenError> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = fs::openat(fs::CWD, path, flags, Mode::empty())
        .map_err(|e| if e == rustix::io::Errno::LOOP { OpenError::BadWakeFd } else { OpenError::Io(e.into()) })?;
    let st = fs::fstat(&fd).map_err(io::Error::from)?;
    if fs::FileType::from_raw_mode(st.st_mode) != fs::FileType::Fifo {
        return Err(OpenError::BadWakeFd);
    }
    let us = rustix::process::geteuid().as_raw();
    if st.st_uid != us {
        return Err(OpenError::NotOwner { owner: st.st_uid, us });
    }
    if st.st_mode & 0o077 != 0 {
        return Err(OpenError::BadPermissions { mode: st.st_mode & 0o7777 });
    }
    Ok(fd)
}

/// Refuses a wake descriptor from a peer that is neither an eventfd nor a FIFO: we
/// write eight bytes to it on every wake and read it before every sleep.
pub(crate) fn check_wake_fd(fd: BorrowedFd<'_>) -> Result<(), OpenError> {
    use std::os::fd::AsRawFd;
    let st = fs::fstat(fd).map_err(io::Error::from)?;
    if fs::FileType::from_raw_mode(st.st_mode) == fs::FileType::Fifo {
        return Ok(());
    }
    // An eventfd is an anonymous inode; its /proc link names it.
    let link = fs::readlinkat(fs::CWD, format!("/proc/self/fd/{}", fd.as_raw_fd()), Vec::new());
    match link {
        Ok(name) if name.as_bytes() == b"anon_inode:[eventfd]" => Ok(()),
        _ => Err(OpenError::BadWakeFd),
    }
}

/// Wakes whoever waits for `fd` (an eventfd or a FIFO) to turn readable. Errors
/// are ignored: a full FIFO or a saturated counter is readable already.
pub(crate) fn signal(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Empties a wake descriptor before its owner flags that it will sleep on it, so
/// that only a wake written after the flag makes it readable. One read, with no
/// `poll` first, whenever the read cannot block:
/// - `private`: the descriptor's open file description is this process's own (a
///   FIFO it opened by path and never handed out), so its `O_NONBLOCK` is ours and
///   a plain read of an empty FIFO is `EAGAIN`;
/// - otherwise the description may be shared with a peer that received it, which
///   could clear `O_NONBLOCK`: the read asks for `RWF_NOWAIT` itself (eventfds
///   honour it; FIFOs and older kernels refuse it with `EOPNOTSUPP`), and only a
///   refusal falls back to `poll` first, then a read when that says it cannot block.
pub(crate) fn drain(fd: BorrowedFd<'_>, private: bool) {
    // An eventfd gives its whole counter in one read; a FIFO up to 64 signals
    // (a rest only makes one spurious wake-up).
    let mut buf = [0u8; 64];
    let read = if private {
        rustix::io::read(fd, &mut buf)
    } else {
        // An offset of u64::MAX: the current position (these files have none).
        let mut bufs = [io::IoSliceMut::new(&mut buf)];
        rustix::io::preadv2(fd, &mut bufs, u64::MAX, rustix::io::ReadWriteFlags::NOWAIT)
    };
    match read {
        // Drained, or empty already.
        Ok(_) | Err(rustix::io::Errno::AGAIN) => {}
        Err(_) => drain_polled(fd),
    }
}

/// [`drain`] for a shared description without `RWF_NOWAIT`: a read only when a
/// zero-timeout `poll` says it cannot block.
#[cold]
fn drain_polled(fd: BorrowedFd<'_>) {
    let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    if matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0) {
        let _ = rustix::io::read(fd, &mut [0u8; 64]);
    }
}

/// Descriptors one `SCM_RIGHTS` message may carry here: a duplex's two channels
/// with their wake descriptors.
pub(crate) const MAX_FDS: usize = 6;

/// Sends `fds` with one byte of payload over a Unix stream socket (`SCM_RIGHTS`).
pub(crate) fn send_fds(sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"));
    }
    let payload = [fds.len() as u8];
    rustix::net::sendmsg(sock, &[io::IoSlice::new(&payload)], &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Receives up to [`MAX_FDS`] descriptors sent by [`send_fds`].
pub(crate) fn recv_fds(sock: BorrowedFd<'_>) -> io::Result<Vec<OwnedFd>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut payload = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let msg = rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    if msg.bytes == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut out = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            out.extend(fds);
        }
    }
    Ok(out)
}

/// Clears or sets close-on-exec, so a child started with `Command` inherits the fd.
pub(crate) fn set_inheritable(fd: impl AsFd, inherit: bool) -> io::Result<()> {
    let flags = if inherit { rustix::io::FdFlags::empty() } else { rustix::io::FdFlags::CLOEXEC };
    Ok(rustix::io::fcntl_setfd(fd, flags)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `ipc_hostile_peer` fuzz target: a peer that writes a pid of 2^31
    /// or more tripped rustix's assertion in debug builds, and in release made
    /// `process_exists` (used when `/proc` cannot be read) call `kill(-1, 0)`: true,
    /// "alive". Fails both ways without `pid_of`'s range check.
    #[test]
    fn a_pid_beyond_i32_names_no_process() {
        for pid in [u32::MAX, 1 << 31, (1 << 31) + 1] {
            assert!(!process_exists(pid), "pid {pid:#x} taken for a live process");
            assert!(Pidfd::open(pid).is_err(), "pidfd for pid {pid:#x}");
        }
        assert!(process_exists(getpid()));
        assert!(Pidfd::open(getpid()).is_ok());
    }
}
