//! systemd integration, both optional and both off unless systemd set them up:
//! socket activation (the listening socket handed over as descriptor 3, announced by
//! `LISTEN_PID`/`LISTEN_FDS`) and readiness notification (`READY=1` and
//! `STOPPING=1` sent to `NOTIFY_SOCKET`, as `sd_notify(3)` does).

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

use berth_server::Inherited;
use rustix::io::FdFlags;
use rustix::net::{AddressFamily, SocketType, sockopt};

/// The first descriptor a service manager passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// The listening socket systemd passed to this process, if any: `None` when
/// `LISTEN_PID` is unset or names another process (the variables were inherited
/// from a parent, not meant for us).
///
/// # Errors
/// More than one socket, or descriptor 3 not a listening TCP or Unix stream socket:
/// the unit is wrong, and starting on some other address would hide that.
pub(crate) fn listen_fds() -> Result<Option<Inherited>, String> {
    let for_us =
        std::env::var("LISTEN_PID").ok().and_then(|p| p.trim().parse::<u32>().ok()) == Some(std::process::id());
    if !for_us {
        return Ok(None);
    }
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.trim().parse::<u32>().ok()).unwrap_or(0);
    // Ours to consume, as sd_listen_fds(3) does: nothing berth starts sees them.
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called first thing in `main`, before any other thread exists, so
        // nothing reads the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    match count {
        0 => return Ok(None),
        1 => {}
        n => {
            return Err(format!(
                "systemd passed {n} sockets (LISTEN_FDS={n}); berth serves one: give the socket unit one ListenStream="
            ));
        }
    }
    // SAFETY: LISTEN_PID names this process, so the service manager passed it
    // descriptor 3, open from exec on; this runs before berth opens anything.
    // Only borrowed until the checks below pass.
    let borrowed = unsafe { BorrowedFd::borrow_raw(FIRST_FD) };
    let flags = rustix::io::fcntl_getfd(borrowed).map_err(|e| format!("LISTEN_FDS=1 but descriptor 3: {e}"))?;
    let listening = sockopt::socket_acceptconn(borrowed).unwrap_or(false);
    let stream = sockopt::socket_type(borrowed).is_ok_and(|t| t == SocketType::STREAM);
    if !listening || !stream {
        return Err(
            "LISTEN_FDS: descriptor 3 is not a listening stream socket (ListenStream= in the socket unit)".into()
        );
    }
    let family =
        rustix::net::getsockname(borrowed).map(|a| a.address_family()).map_err(|e| format!("LISTEN_FDS: {e}"))?;
    if !matches!(family, AddressFamily::INET | AddressFamily::INET6 | AddressFamily::UNIX) {
        return Err(format!("LISTEN_FDS: descriptor 3 is a socket of family {}, not TCP or Unix", family.as_raw()));
    }
    // SAFETY: as above; it is open and a listening socket (checked), and from here
    // owned by this value alone.
    let fd = unsafe { OwnedFd::from_raw_fd(FIRST_FD) };
    // Not inherited by anything berth starts.
    let _ = rustix::io::fcntl_setfd(&fd, flags | FdFlags::CLOEXEC);
    Ok(Some(match family {
        AddressFamily::UNIX => Inherited::Unix(std::os::unix::net::UnixListener::from(fd)),
        _ => Inherited::Tcp(std::net::TcpListener::from(fd)),
    }))
}

/// The activated listener, between `main` taking it and the server using it.
static ACTIVATED: Mutex<Option<Inherited>> = Mutex::new(None);

/// Keeps what [`listen_fds`] found for [`take`].
pub(crate) fn keep(listener: Option<Inherited>) {
    *ACTIVATED.lock().unwrap_or_else(|e| e.into_inner()) = listener;
}

/// The activated listener, once.
pub(crate) fn take() -> Option<Inherited> {
    ACTIVATED.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Tells the service manager `state` (`READY=1`, `STOPPING=1`) if it asked to be
/// told (`NOTIFY_SOCKET`); a failure is logged, never fatal.
pub(crate) fn notify(state: &str) {
    let Ok(target) = std::env::var("NOTIFY_SOCKET") else { return };
    let sent = UnixDatagram::unbound().and_then(|socket| match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(state.as_bytes(), &addr)
        }
        None => socket.send_to(state.as_bytes(), &target),
    });
    match sent {
        Ok(_) => tracing::debug!("sd_notify {state:?} to {target}"),
        Err(e) => tracing::warn!("sd_notify {state:?} to {target}: {e}"),
    }
}
