//! The drivers: what turns the core's queued ops into syscalls or ring submissions
//! and hands back their completions. One module per backend, behind one set of
//! methods ([`Backend`]); the core (`crate::core`) knows nothing of either.
//!
//! Every driver provides:
//! - `register` / `deregister`: a socket enters or leaves the table (on io_uring,
//!   leaving cancels what the socket itself has in the kernel: a multishot accept).
//! - `submit`: an op was queued at the tail of its socket's queue for one direction;
//!   run it when the ops ahead of it are done (the epoll driver may finish it at
//!   once). Completions go through `Core::complete`, in queue order per direction.
//! - `abort`: an op the kernel holds (`Meta::kernel`) is wanted back — cancel,
//!   close, deadline. Only the io_uring driver ever holds one; its completion still
//!   comes, and the core decides what it completes as (`Meta::cancel_as`).
//! - `resume`: a listener's accept back-off ended.
//! - `poll`: wait once, up to a timeout, and handle what happened, including the
//!   posts' wake-up.
//!
//! Which driver runs is decided once, when the port is built ([`Driver`]).

pub(crate) mod epoll;
pub(crate) mod io;
pub(crate) mod kept;
pub(crate) mod pbuf;
pub(crate) mod uring;

use std::os::fd::RawFd;
use std::time::Duration;

use crate::core::Core;
use crate::socket::Dir;

/// Which driver a port runs on; [`PortBuilder::driver`](crate::PortBuilder::driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Driver {
    /// io_uring where the kernel allows it, else epoll (logged once, at info, with
    /// the reason): `io_uring_setup` refused (`EPERM` under Docker's default seccomp
    /// profile or `kernel.io_uring_disabled`, `ENOSYS` on old kernels and gVisor),
    /// a setup flag or opcode the port needs missing, or the first enter refused.
    #[default]
    Auto,
    /// epoll through mio: completions emulated from readiness.
    Epoll,
    /// io_uring: true completions. If it cannot run, building the port fails with
    /// [`UringUnavailable`] (inside the `io::Error`), never a silent fallback.
    Uring,
}

impl Driver {
    /// The driver named by the `BERTH_DRIVER` environment variable (`auto`, `epoll`
    /// or `uring`), or `Auto` when it is unset. Ports built without
    /// [`PortBuilder::driver`](crate::PortBuilder::driver) use this, so a whole
    /// program or test suite can be switched without a rebuild.
    ///
    /// # Errors
    /// Any other value, so a typo is never silently ignored.
    pub fn from_env() -> Result<Driver, std::io::Error> {
        match std::env::var("BERTH_DRIVER") {
            Err(std::env::VarError::NotPresent) => Ok(Driver::Auto),
            Ok(v) => v.parse(),
            Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("BERTH_DRIVER: {e}"))),
        }
    }

    /// `"auto"`, `"epoll"` or `"uring"`.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Auto => "auto",
            Driver::Epoll => "epoll",
            Driver::Uring => "uring",
        }
    }
}

impl std::str::FromStr for Driver {
    type Err = std::io::Error;

    fn from_str(s: &str) -> Result<Driver, std::io::Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Driver::Auto),
            "epoll" => Ok(Driver::Epoll),
            "uring" | "io_uring" | "io-uring" => Ok(Driver::Uring),
            other => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown driver {other:?}: expected auto, epoll or uring"),
            )),
        }
    }
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the io_uring driver cannot run here: the step that failed and the error the
/// kernel gave. Found inside the `io::Error` (kind `Unsupported`) that
/// [`PortBuilder::build`](crate::PortBuilder::build) returns for [`Driver::Uring`].
#[derive(Debug, thiserror::Error)]
#[error("io_uring cannot run here: {during}: {source}")]
pub struct UringUnavailable {
    /// The step that failed (`io_uring_setup`, probing the opcodes, the first enter…).
    pub during: &'static str,
    /// What the kernel said (`EPERM`: forbidden by seccomp or `kernel.io_uring_disabled`;
    /// `ENOSYS`: no io_uring or a missing opcode).
    #[source]
    pub source: std::io::Error,
}

/// The driver a port runs, chosen at build.
// One per port, built once and never moved on the hot path: no need to box the ring.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    Epoll(epoll::Epoll),
    Uring(uring::Uring),
}

impl Backend {
    pub(crate) fn kind(&self) -> Driver {
        match self {
            Backend::Epoll(_) => Driver::Epoll,
            Backend::Uring(_) => Driver::Uring,
        }
    }

    pub(crate) fn register(&self, index: usize, fd: RawFd, listener: bool) -> std::io::Result<()> {
        match self {
            Backend::Epoll(d) => d.register(index, fd, listener),
            // Ring operations name their descriptor; there is nothing to register.
            Backend::Uring(_) => Ok(()),
        }
    }

    /// Socket `socket` (by id) is being closed; `fd` is still open.
    pub(crate) fn deregister(&mut self, socket: crate::SocketId, fd: RawFd) {
        match self {
            Backend::Epoll(d) => d.deregister(fd),
            Backend::Uring(d) => d.deregister(socket, fd),
        }
    }

    pub(crate) fn submit<T>(&mut self, core: &mut Core<T>, op: u32, socket: u32, dir: Dir) {
        match self {
            Backend::Epoll(d) => d.submit(core, op, socket, dir),
            Backend::Uring(d) => d.submit(core, op, socket, dir),
        }
    }

    pub(crate) fn abort<T>(&mut self, core: &mut Core<T>, op: u32) {
        match self {
            // The epoll driver never leaves an op with the kernel.
            Backend::Epoll(_) => {}
            Backend::Uring(d) => d.abort(core, op),
        }
    }

    pub(crate) fn resume<T>(&mut self, core: &mut Core<T>, socket: u32) {
        match self {
            Backend::Epoll(d) => d.resume(core, socket),
            Backend::Uring(d) => d.resume(core, socket),
        }
    }

    /// Segments lent to the kernel's buffer ring.
    pub(crate) fn ring_buffers(&self) -> usize {
        match self {
            Backend::Epoll(_) => 0,
            Backend::Uring(d) => d.ring_buffers(),
        }
    }

    pub(crate) fn busy(&self) -> bool {
        match self {
            Backend::Epoll(d) => d.busy(),
            Backend::Uring(d) => d.busy(),
        }
    }

    /// Ops the port holds that could run now although it is about to sleep (see
    /// `PortStats::stranded_ops`); each counted once.
    pub(crate) fn audit<T>(&mut self, core: &mut Core<T>) -> u64 {
        match self {
            Backend::Epoll(d) => d.audit(core, false),
            Backend::Uring(d) => d.audit(core),
        }
    }

    /// Work a wait does before it decides whether it may sleep (datagram ops queued
    /// since the last wait, segments returned to the buffer ring); it may complete
    /// ops at once.
    pub(crate) fn prepare<T>(&mut self, core: &mut Core<T>) {
        match self {
            Backend::Epoll(d) => d.prepare(core),
            Backend::Uring(d) => d.prepare(core),
        }
    }

    pub(crate) fn poll<T>(&mut self, core: &mut Core<T>, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Backend::Epoll(d) => d.poll(core, timeout),
            Backend::Uring(d) => d.poll(core, timeout),
        }
    }
}
