//! Ctrl-C, SIGTERM, SIGHUP and SIGUSR1 without a signal handler: all four are blocked in
//! every thread (the mask is set before any thread starts and inherited) and the main
//! thread takes them synchronously with `sigtimedwait`. No async-signal-safety concerns, no extra
//! crate; libc because rustix has no stable sigprocmask/sigtimedwait.

use std::io;
use std::time::Duration;

/// A signal the main thread acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGINT or SIGTERM (named): shut down.
    Stop(&'static str),
    /// SIGUSR1: print the metrics now.
    Stats,
    /// SIGHUP: reopen the access log (logrotate); keep serving.
    Reopen,
}

/// The signals the main thread takes.
fn set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use, and the
    // four signal numbers are valid, so sigaddset cannot fail.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGUSR1 in the calling thread (and so in threads it
/// starts).
pub(crate) fn block() -> io::Result<()> {
    let set = set();
    // SAFETY: `set` is an initialised signal set; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
}

/// Waits up to `timeout` for one of the signals; `None` on timeout.
pub(crate) fn wait(timeout: Duration) -> io::Result<Option<Signal>> {
    let set = set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are initialised and outlive the call; a null siginfo
    // pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    if sig >= 0 {
        return Ok(Some(match sig {
            libc::SIGUSR1 => Signal::Stats,
            libc::SIGHUP => Signal::Reopen,
            libc::SIGINT => Signal::Stop("SIGINT"),
            _ => Signal::Stop("SIGTERM"),
        }));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
        _ => Err(e),
    }
}
