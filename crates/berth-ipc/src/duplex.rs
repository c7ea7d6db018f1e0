//! Two rings back to back, for request/reply between two processes.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use crate::channel::{Channel, Config, Receiver, Sender};
use crate::error::OpenError;
use crate::sys;

/// One end of a two-way channel: a [`Sender`] on one ring and a [`Receiver`] on the
/// other. The fields are public: use them directly, or [`Duplex::split`] to move the
/// halves to different threads.
#[derive(Debug)]
pub struct Duplex {
    /// Our sending half.
    pub tx: Sender,
    /// Our receiving half.
    pub rx: Receiver,
}

impl Duplex {
    /// Names of the two files of a named duplex: `<name>.a2b` and `<name>.b2a`.
    fn names(name: &str) -> (String, String) {
        (format!("{name}.a2b"), format!("{name}.b2a"))
    }

    /// Creates a named duplex (`/dev/shm/berth-ipc.<name>.a2b` and `.b2a`) and takes
    /// side A. The peer calls [`Duplex::open_named`].
    pub fn create_named(name: &str, cfg: &Config) -> Result<Duplex, OpenError> {
        let (a2b, b2a) = Duplex::names(name);
        let out = Channel::create_named(&a2b, cfg)?;
        let back = Channel::create_named(&b2a, cfg).inspect_err(|_| {
            let _ = Channel::unlink_named(&a2b);
        })?;
        Ok(Duplex { tx: out.sender()?, rx: back.receiver()? })
    }

    /// Opens side B of a named duplex.
    pub fn open_named(name: &str) -> Result<Duplex, OpenError> {
        let (a2b, b2a) = Duplex::names(name);
        let inbound = Channel::open_named(&a2b)?;
        let outbound = Channel::open_named(&b2a)?;
        Ok(Duplex { tx: outbound.sender()?, rx: inbound.receiver()? })
    }

    /// Removes both files of a named duplex.
    pub fn unlink_named(name: &str) -> Result<(), OpenError> {
        let (a2b, b2a) = Duplex::names(name);
        let first = Channel::unlink_named(&a2b);
        Channel::unlink_named(&b2a).and(first)
    }

    /// Creates two memfd rings, sends both descriptors over `sock` and takes side A;
    /// the peer calls [`Duplex::accept_over`] on the other end of the socket.
    pub fn connect_over(sock: &UnixStream, cfg: &Config) -> Result<Duplex, OpenError> {
        let out = Channel::create_memfd(cfg)?;
        let back = Channel::create_memfd(cfg)?;
        let mut fds = [out.as_fd(); sys::MAX_FDS];
        let mut n = 0;
        for fd in out.fds().chain(back.fds()) {
            fds[n] = fd;
            n += 1;
        }
        sys::send_fds(sock.as_fd(), &fds[..n])?;
        Ok(Duplex { tx: out.sender()?, rx: back.receiver()? })
    }

    /// Receives the two rings sent by [`Duplex::connect_over`] and takes side B.
    pub fn accept_over(sock: &UnixStream) -> Result<Duplex, OpenError> {
        let mut fds = sys::recv_fds(sock.as_fd())?.into_iter();
        let inbound = Channel::from_received(&mut fds)?;
        let outbound = Channel::from_received(&mut fds)?;
        Ok(Duplex { tx: outbound.sender()?, rx: inbound.receiver()? })
    }

    /// The two halves, to move to different threads.
    pub fn split(self) -> (Sender, Receiver) {
        (self.tx, self.rx)
    }
}
