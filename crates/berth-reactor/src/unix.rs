//! Unix domain stream sockets: [`UnixAddr`] (a filesystem path or an abstract
//! name), [`UnixListenOptions`], [`PeerCred`], and the socket setup behind
//! [`CompletionPort::listen_unix`](crate::CompletionPort::listen_unix) and
//! [`connect_unix`](crate::CompletionPort::connect_unix).

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::port::SubmitError;
use crate::socket::BoundFile;

/// The most bytes a Unix socket name may have: `sun_path` is 108 bytes, and a path
/// needs its terminating NUL (an abstract name its leading one).
pub const UNIX_NAME_MAX: usize = 107;

/// Where a Unix domain socket lives.
///
/// ```
/// use berth_reactor::UnixAddr;
///
/// let path: UnixAddr = "unix:/run/berth.sock".parse()?;
/// assert_eq!(path, UnixAddr::Path("/run/berth.sock".into()));
/// let name: UnixAddr = "unix:@berth".parse()?;
/// assert_eq!(name, UnixAddr::Abstract(b"berth".to_vec()));
/// assert_eq!(name.to_string(), "unix:@berth");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixAddr {
    /// A socket file at this path.
    Path(PathBuf),
    /// A name in Linux's abstract namespace: no file, gone when the last socket
    /// bound to it closes.
    Abstract(Vec<u8>),
}

impl UnixAddr {
    /// The address as the kernel takes it; [`SubmitError::PathTooLong`] if it does
    /// not fit in `sun_path`.
    fn to_sockaddr(&self) -> Result<SocketAddrUnix, SubmitError> {
        let (len, made) = match self {
            UnixAddr::Path(p) => (p.as_os_str().len(), SocketAddrUnix::new(p.as_path())),
            UnixAddr::Abstract(name) => (name.len(), SocketAddrUnix::new_abstract_name(name)),
        };
        if len > UNIX_NAME_MAX {
            return Err(SubmitError::PathTooLong { len, max: UNIX_NAME_MAX });
        }
        made.map_err(|e| match e {
            Errno::NAMETOOLONG => SubmitError::PathTooLong { len, max: UNIX_NAME_MAX },
            e => SubmitError::Io(e.into()),
        })
    }
}

impl std::str::FromStr for UnixAddr {
    type Err = io::Error;

    /// `unix:/path`, `unix:@name` (abstract), or the same without `unix:`.
    fn from_str(s: &str) -> Result<UnixAddr, io::Error> {
        let rest = s.strip_prefix("unix:").unwrap_or(s);
        if rest.is_empty() || rest == "@" {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?}: an empty Unix socket name")));
        }
        Ok(match rest.strip_prefix('@') {
            Some(name) => UnixAddr::Abstract(name.as_bytes().to_vec()),
            None => UnixAddr::Path(PathBuf::from(rest)),
        })
    }
}

impl fmt::Display for UnixAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixAddr::Path(p) => write!(f, "unix:{}", p.display()),
            UnixAddr::Abstract(name) => write!(f, "unix:@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// Where a server listens: a TCP address or a Unix socket. Parsed from
/// `127.0.0.1:8080`, `[::1]:0`, `unix:/run/berth.sock` or `unix:@name`.
///
/// ```
/// use berth_reactor::{Endpoint, UnixAddr};
///
/// let tcp: Endpoint = "127.0.0.1:8080".parse()?;
/// assert_eq!(tcp, Endpoint::Tcp("127.0.0.1:8080".parse()?));
/// let unix: Endpoint = "unix:/run/berth.sock".parse()?;
/// assert_eq!(unix, Endpoint::Unix(UnixAddr::Path("/run/berth.sock".into())));
/// assert_eq!(unix.to_string(), "unix:/run/berth.sock");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(std::net::SocketAddr),
    /// A Unix domain socket.
    Unix(UnixAddr),
}

impl Endpoint {
    /// The TCP address, if it is one.
    pub fn tcp(&self) -> Option<std::net::SocketAddr> {
        match self {
            Endpoint::Tcp(a) => Some(*a),
            Endpoint::Unix(_) => None,
        }
    }
}

impl From<std::net::SocketAddr> for Endpoint {
    fn from(addr: std::net::SocketAddr) -> Endpoint {
        Endpoint::Tcp(addr)
    }
}

impl From<UnixAddr> for Endpoint {
    fn from(addr: UnixAddr) -> Endpoint {
        Endpoint::Unix(addr)
    }
}

impl std::str::FromStr for Endpoint {
    type Err = io::Error;

    fn from_str(s: &str) -> Result<Endpoint, io::Error> {
        if s.starts_with("unix:") {
            return s.parse().map(Endpoint::Unix);
        }
        s.parse().map(Endpoint::Tcp).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{s:?}: {e} (expected ip:port, [ipv6]:port, unix:/path or unix:@name)"),
            )
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => a.fmt(f),
            Endpoint::Unix(u) => u.fmt(f),
        }
    }
}

/// How [`listen_unix`](crate::CompletionPort::listen_unix) binds.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct UnixListenOptions {
    /// `listen(2)` backlog (default 1024).
    pub backlog: i32,
    /// A socket file left at the path by a server that died (nobody accepts on it)
    /// is removed and the path bound again (default false: such a file is
    /// [`SubmitError::StaleSocketFile`]). A live listener's file, or a file that is
    /// not a socket, is never removed. (Two servers started on one path at the same
    /// instant, both replacing, can still race between the check and the bind: give
    /// each its own path, or let a service manager own the socket.)
    pub replace_stale: bool,
}

impl Default for UnixListenOptions {
    fn default() -> Self {
        UnixListenOptions { backlog: 1024, replace_stale: false }
    }
}

impl UnixListenOptions {
    /// Sets [`replace_stale`](Self::replace_stale).
    pub fn replace_stale(mut self, yes: bool) -> Self {
        self.replace_stale = yes;
        self
    }

    /// Sets the [`backlog`](Self::backlog).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }
}

/// The credentials of the process at the other end of a Unix stream
/// (`SO_PEERCRED`: taken when it connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Its process id, or `None` when the kernel cannot name it here: the peer is in
    /// another pid namespace (a process on the host talking to berth in a container).
    pub pid: Option<i32>,
    /// Its user id (in this process's user namespace).
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
}

pub(crate) fn peer_cred(stream: &UnixStream) -> io::Result<PeerCred> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes for the call, `len` holds the
    // size of `cred`, and the descriptor is open (borrowed from `stream`). Read into
    // plain integers: a pid of 0 (the peer outside our pid namespace) is a value
    // here, not an invariant broken.
    let rc = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &raw mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred { pid: Some(cred.pid).filter(|&p| p > 0), uid: cred.uid, gid: cred.gid })
}

fn socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?)
}

/// A non-blocking Unix listener bound to `addr`, and (for a path) the file it made.
pub(crate) fn listener(
    addr: &UnixAddr,
    options: &UnixListenOptions,
) -> Result<(UnixListener, Option<BoundFile>), SubmitError> {
    let sockaddr = addr.to_sockaddr()?;
    let fd = socket()?;
    match rustix::net::bind(&fd, &sockaddr) {
        Ok(()) => {}
        Err(Errno::ADDRINUSE) => match addr {
            UnixAddr::Path(path) => {
                stale(path, options.replace_stale)?;
                rustix::net::bind(&fd, &sockaddr).map_err(io::Error::from)?;
            }
            UnixAddr::Abstract(_) => return Err(in_use(addr, "another socket is bound to this name").into()),
        },
        Err(e) => return Err(io::Error::from(e).into()),
    }
    let bound = match addr {
        UnixAddr::Path(path) => {
            // Known before listening, so an error below still removes the file.
            let meta = std::fs::symlink_metadata(path)?;
            Some(BoundFile { path: path.clone(), id: (meta.dev(), meta.ino()) })
        }
        UnixAddr::Abstract(_) => None,
    };
    rustix::net::listen(&fd, options.backlog).map_err(io::Error::from)?;
    Ok((UnixListener::from(fd), bound))
}

/// `path` is taken: removes it if it is a socket nobody accepts on and the caller
/// allowed that; otherwise says why it cannot be bound.
fn stale(path: &Path, replace: bool) -> Result<(), SubmitError> {
    let addr = || UnixAddr::Path(path.to_path_buf());
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() {
        return Err(in_use(&addr(), "the path exists and is not a socket").into());
    }
    // A non-blocking probe: a live listener with a full backlog answers EAGAIN
    // instead of making the start wait for room.
    let probe = socket()?;
    let sockaddr = addr().to_sockaddr()?;
    match rustix::net::connect(&probe, &sockaddr).map_err(io::Error::from) {
        Ok(()) => Err(in_use(&addr(), "a listener accepts on it").into()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(in_use(&addr(), "a listener accepts on it").into()),
        // Gone between the bind and now: bind again.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            if !replace {
                return Err(SubmitError::StaleSocketFile { path: path.to_path_buf() });
            }
            tracing::info!(path = %path.display(), "removing a stale socket file");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn in_use(addr: &UnixAddr, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::AddrInUse, format!("{addr}: address in use: {why}"))
}

/// A non-blocking Unix stream connecting to `addr`. A Unix connect finishes at once
/// or fails: a listener whose backlog is full refuses with `WouldBlock` rather than
/// leaving the connect under way.
pub(crate) fn connect(addr: &UnixAddr) -> Result<UnixStream, SubmitError> {
    let sockaddr = addr.to_sockaddr()?;
    let fd = socket()?;
    match rustix::net::connect(&fd, &sockaddr) {
        Ok(()) | Err(Errno::INPROGRESS) => Ok(UnixStream::from(fd)),
        Err(e) => Err(io::Error::from(e).into()),
    }
}
