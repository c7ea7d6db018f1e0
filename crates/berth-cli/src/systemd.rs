//! systemd integration, both optional and both off unless systemd set them up:
//! socket activation (the listening socket handed over as descriptor 3, announced by
//! `LISTEN_PID`/`LISTEN_FDS`) and readiness notification (`READY=1` and
//! `STOPPING=1` sent to `NOTIFY_SOCKET`, as `sd_notify(3)` does).

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

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
    // descriptor 3, open from exec on: nothing else in the process can have been
    // given that number, and berth closes no descriptor it did not open. Borrowed
    // only for `fcntl_getfd`, which checks it is open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(FIRST_FD) };
    let flags = rustix::io::fcntl_getfd(borrowed).map_err(|e| format!("LISTEN_FDS=1 but descriptor 3: {e}"))?;
    // SAFETY: as above; the descriptor is open (just checked) and ours alone from here.
    let fd = unsafe { OwnedFd::from_raw_fd(FIRST_FD) };
    // Not inherited by anything berth starts.
    let _ = rustix::io::fcntl_setfd(&fd, flags | FdFlags::CLOEXEC);
    let listening = sockopt::socket_acceptconn(&fd).unwrap_or(false);
    let stream = sockopt::socket_type(&fd).is_ok_and(|t| t == SocketType::STREAM);
    if !listening || !stream {
        return Err(
            "LISTEN_FDS: descriptor 3 is not a listening stream socket (ListenStream= in the socket unit)".into()
        );
    }
    let family =
        rustix::net::getsockname(fd.as_fd()).map(|a| a.address_family()).map_err(|e| format!("LISTEN_FDS: {e}"))?;
    match family {
        AddressFamily::INET | AddressFamily::INET6 => Ok(Some(Inherited::Tcp(std::net::TcpListener::from(fd)))),
        AddressFamily::UNIX => Ok(Some(Inherited::Unix(std::os::unix::net::UnixListener::from(fd)))),
        other => Err(format!("LISTEN_FDS: descriptor 3 is a socket of family {}, not TCP or Unix", other.as_raw())),
    }
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
