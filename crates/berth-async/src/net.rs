//! Sockets with owned-buffer I/O: [`TcpListener`], [`TcpStream`], [`UdpSocket`],
//! [`UnixListener`], [`UnixStream`].
//!
//! A read takes a [`Lease`] and gives it back with the result — the buffer belongs
//! to the operation (and, on io_uring, to the kernel) while it is in flight, so the
//! caller cannot touch it then, and a read that is dropped early leaves it with the
//! port until the kernel is done, after which it returns to the arena.

use std::fs::File;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;

use berth_buf::Lease;
use berth_reactor::{ListenOptions, SocketId, UdpOptions, UnixAddr, UnixListenOptions};
use berth_sendfile::FileSend;

use crate::error::Error;
use crate::op::Setup;
use crate::runtime::Inner;

/// A registered socket; closed (its pending ops cancelled) on drop. `pub` only so
/// that the sealed trait of [`Compat`](crate::Compat) can name it; not exported.
#[derive(Debug)]
#[allow(unreachable_pub)]
pub struct Socket {
    pub(crate) rt: Rc<Inner>,
    pub(crate) id: SocketId,
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = self.rt.port.borrow_mut().close(self.id);
    }
}

/// The closed socket of a connect dropped in flight.
struct CloseOnDrop<'a> {
    rt: &'a Rc<Inner>,
    id: Option<SocketId>,
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let _ = self.rt.port.borrow_mut().close(id);
        }
    }
}

impl Socket {
    /// Receives into the lease's spare room (`len..capacity`); the lease comes back
    /// with its length grown by the bytes received.
    pub(crate) async fn read(&self, lease: Lease) -> (Result<usize, Error>, Lease) {
        let range = lease.len()..lease.capacity();
        let id = self.id;
        let op = match self.rt.submit(Setup::lease(lease, range), |port, op| port.recv(id, op)) {
            Ok(op) => op,
            Err((e, lease)) => return (e, lease).into_pair(&self.rt),
        };
        let outcome = op.await;
        (outcome.result.map_err(Error::from), lease_back(&self.rt, outcome.lease))
    }

    /// A pooled receive: no buffer while waiting; `None` at the end of the stream.
    pub(crate) async fn read_pooled(&self) -> Result<Option<Lease>, Error> {
        let id = self.id;
        let op = self.rt.submit(Setup::NONE, |port, op| port.recv_pooled(id, op)).map_err(|(e, _)| e)?;
        let outcome = op.await;
        match outcome.result? {
            0 => Ok(None),
            _ => outcome.lease.map(Some).ok_or(Error::BufferExhausted),
        }
    }

    /// Sends the lease's filled bytes, all of them (the port resumes partial sends).
    pub(crate) async fn write(&self, lease: Lease) -> (Result<usize, Error>, Lease) {
        let range = 0..lease.len();
        let id = self.id;
        let op = match self.rt.submit(Setup::lease(lease, range), |port, op| port.send(id, op)) {
            Ok(op) => op,
            Err((e, lease)) => return (e, lease).into_pair(&self.rt),
        };
        let outcome = op.await;
        (outcome.result.map_err(Error::from), lease_back(&self.rt, outcome.lease))
    }

    /// Sends a file range by sendfile(2): no copy through user space.
    pub(crate) async fn send_file(&self, file: FileSend<File>) -> Result<usize, Error> {
        let id = self.id;
        let op = self.rt.submit(Setup::NONE, |port, op| port.send_file(id, op, file)).map_err(|(e, _)| e)?;
        Ok(op.await.result?)
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> Result<(), Error> {
        let port = self.rt.port.borrow();
        match port.stream(self.id) {
            Ok(tcp) => tcp.shutdown(how)?,
            Err(_) => port.unix_stream(self.id)?.shutdown(how)?,
        }
        Ok(())
    }
}

/// The lease of an op whose completion did not carry it back. The port returns
/// every op's lease with its completion unless the op was cancelled (by a close, a
/// deadline, `cancel`), and none of those can reach an op whose future is being
/// awaited here (the future borrows its socket; no deadline is set): this is an
/// invariant, kept with a fresh segment, and it panics (inside the task, which the
/// runtime contains) only if the invariant broke while the arena was dry.
fn lease_back(rt: &Rc<Inner>, lease: Option<Lease>) -> Lease {
    match lease {
        Some(lease) => lease,
        None => match rt.port.borrow().lease() {
            Ok(lease) => lease,
            Err(_) => panic!("berth-async: the port lost an op's lease and the arena is exhausted"),
        },
    }
}

trait IntoPair {
    fn into_pair(self, rt: &Rc<Inner>) -> (Result<usize, Error>, Lease);
}

impl IntoPair for (Error, Option<Lease>) {
    fn into_pair(self, rt: &Rc<Inner>) -> (Result<usize, Error>, Lease) {
        let (e, lease) = self;
        (Err(e), lease_back(rt, lease))
    }
}

async fn connect_with(
    rt: &Rc<Inner>,
    connect: impl FnOnce(
        &mut berth_reactor::CompletionPort<()>,
        berth_ops::OpId,
    ) -> Result<SocketId, berth_reactor::SubmitError>,
) -> Result<Socket, Error> {
    let mut socket = None;
    let op = rt
        .submit(Setup::NONE, |port, op| {
            socket = Some(connect(port, op)?);
            Ok(())
        })
        .map_err(|(e, _)| e)?;
    // Until the connect completes, a drop of this future closes the new socket.
    let mut guard = CloseOnDrop { rt, id: socket };
    let outcome = op.await;
    outcome.result?;
    let id = guard.id.take().ok_or(Error::Op(berth_ops::OpError::Other))?;
    Ok(Socket { rt: rt.clone(), id })
}

/// A TCP listener on the current runtime's port (`TcpListener`).
///
/// ```
/// use berth_async::{Runtime, TcpListener, TcpStream};
/// let rt = Runtime::new()?;
/// rt.block_on(async {
///     let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
///     let addr = listener.local_addr()?;
///     let client = berth_async::spawn(async move { TcpStream::connect(addr).await });
///     let (_conn, _peer) = listener.accept().await?;
///     client.await.expect("connect task").map(drop)
/// })??;
/// # Ok::<(), berth_async::Error>(())
/// ```
#[derive(Debug)]
pub struct TcpListener {
    socket: Socket,
}

impl TcpListener {
    /// Binds a listener with the default [`ListenOptions`] (`TcpListener.Start`).
    ///
    /// # Errors
    /// [`Error::NoRuntime`] outside a runtime; the port's refusal (address in use).
    pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
        TcpListener::bind_with(addr, ListenOptions::default())
    }

    /// Binds a listener with `options` (backlog, `SO_REUSEPORT`, nodelay...).
    pub fn bind_with(addr: SocketAddr, options: ListenOptions) -> Result<TcpListener, Error> {
        let rt = Inner::current()?;
        let id = rt.port.borrow_mut().listen(addr, options)?;
        Ok(TcpListener { socket: Socket { rt, id } })
    }

    /// The bound address (its port, when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.socket.rt.port.borrow().local_addr(self.socket.id)?)
    }

    /// Accepts a connection (`AcceptTcpClientAsync`): the stream and its peer's
    /// address.
    pub async fn accept(&self) -> Result<(TcpStream, SocketAddr), Error> {
        let listener = self.socket.id;
        loop {
            let op = self.socket.rt.submit(Setup::NONE, |port, op| port.accept(listener, op)).map_err(|(e, _)| e)?;
            let outcome = op.await;
            outcome.result?;
            let stream = TcpStream { socket: Socket { rt: self.socket.rt.clone(), id: outcome.socket } };
            match outcome.remote.map_or_else(|| stream.peer_addr(), Ok) {
                Ok(peer) => return Ok((stream, peer)),
                // Reset before we saw who it was (a peer that connected and gave up at
                // once): that connection is gone, and no reason to stop accepting.
                Err(_) => drop(stream),
            }
        }
    }
}

/// A TCP connection on the current runtime's port, with owned-buffer reads and
/// writes. Dropping it closes it (cancelling what is pending on it).
#[derive(Debug)]
pub struct TcpStream {
    pub(crate) socket: Socket,
}

impl TcpStream {
    /// Connects to `addr` (`ConnectAsync`).
    pub async fn connect(addr: SocketAddr) -> Result<TcpStream, Error> {
        let rt = Inner::current()?;
        let socket = connect_with(&rt, |port, op| port.connect(addr, op)).await?;
        Ok(TcpStream { socket })
    }

    /// Reads into the lease's spare room (`len()..capacity()`) and hands it back
    /// with its length grown by the bytes read; `Ok(0)` is the end of the stream.
    /// A full lease is refused ([`SubmitError::NoBuffer`](berth_reactor::SubmitError::NoBuffer)).
    ///
    /// Dropped before it completes, the read is cancelled and the lease returns to
    /// the arena once the port hands the op back.
    pub async fn read(&self, lease: Lease) -> (Result<usize, Error>, Lease) {
        self.socket.read(lease).await
    }

    /// Reads without holding a buffer while waiting: a segment is leased from the
    /// runtime's arena only once data has arrived, so an idle connection holds none.
    /// `Ok(None)` is the end of the stream.
    pub async fn read_pooled(&self) -> Result<Option<Lease>, Error> {
        self.socket.read_pooled().await
    }

    /// Writes the lease's filled bytes (`filled()`), every one (partial sends are
    /// resumed by the port), and hands it back; the same as
    /// [`write_all`](Self::write_all) with the count.
    pub async fn write(&self, lease: Lease) -> (Result<usize, Error>, Lease) {
        self.socket.write(lease).await
    }

    /// Writes the lease's filled bytes, every one. A peer that closes or resets
    /// meanwhile gives [`Error::Op`] with a peer-gone kind ([`Error::is_peer_gone`]).
    pub async fn write_all(&self, lease: Lease) -> (Result<(), Error>, Lease) {
        let (result, lease) = self.socket.write(lease).await;
        (result.map(drop), lease)
    }

    /// Sends a file range with sendfile(2) (`SendPacketsAsync` with a file, or
    /// `TransmitFile`): the bytes go from the page cache to the socket without a
    /// copy through user space. Completes with the bytes sent; a file that shrinks
    /// mid-send is [`OpError::Truncated`](berth_ops::OpError::Truncated). A file that
    /// sendfile(2) cannot send (no scratch buffer is attached for the copy fallback)
    /// is [`OpError::InvalidInput`](berth_ops::OpError::InvalidInput).
    pub async fn send_file(&self, file: FileSend<File>) -> Result<usize, Error> {
        self.socket.send_file(file).await
    }

    /// Shuts down one or both directions (`Socket.Shutdown`).
    pub fn shutdown(&self, how: Shutdown) -> Result<(), Error> {
        self.socket.shutdown(how)
    }

    /// The peer's address (`RemoteEndPoint`).
    pub fn peer_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.socket.rt.port.borrow().stream(self.socket.id)?.peer_addr()?)
    }

    /// The local address (`LocalEndPoint`).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.socket.rt.port.borrow().local_addr(self.socket.id)?)
    }

    /// Leases a segment from the runtime's arena (for a write).
    pub fn lease(&self) -> Result<Lease, Error> {
        self.socket.rt.port.borrow().lease().map_err(|_| Error::BufferExhausted)
    }
}

/// A UDP socket on the current runtime's port.
///
/// ```
/// use berth_async::{Runtime, UdpSocket};
/// let rt = Runtime::new()?;
/// rt.block_on(async {
///     let a = UdpSocket::bind("127.0.0.1:0".parse().unwrap())?;
///     let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap())?;
///     let mut ping = a.lease()?;
///     ping.spare_mut()[..4].copy_from_slice(b"ping");
///     ping.set_len(4).unwrap();
///     let (sent, _ping) = a.send_to(ping, b.local_addr()?).await;
///     assert_eq!(sent?, 4);
///     let (got, lease) = b.recv_from(b.lease()?).await;
///     assert_eq!((got?.1, lease.filled()), (a.local_addr()?, &b"ping"[..]));
///     Ok::<(), berth_async::Error>(())
/// })??;
/// # Ok::<(), berth_async::Error>(())
/// ```
#[derive(Debug)]
pub struct UdpSocket {
    socket: Socket,
}

impl UdpSocket {
    /// Binds a UDP socket with the default [`UdpOptions`].
    pub fn bind(addr: SocketAddr) -> Result<UdpSocket, Error> {
        let rt = Inner::current()?;
        let id = rt.port.borrow_mut().bind_udp(addr, UdpOptions::default())?;
        Ok(UdpSocket { socket: Socket { rt, id } })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.socket.rt.port.borrow().local_addr(self.socket.id)?)
    }

    /// Receives one datagram into the lease's spare room (`ReceiveFromAsync`): its
    /// length and sender. A datagram longer than the room is
    /// [`OpError::MessageTruncated`](berth_ops::OpError::MessageTruncated).
    pub async fn recv_from(&self, lease: Lease) -> (Result<(usize, SocketAddr), Error>, Lease) {
        let range = lease.len()..lease.capacity();
        let id = self.socket.id;
        let op = match self.socket.rt.submit(Setup::lease(lease, range), |port, op| port.recv_from(id, op)) {
            Ok(op) => op,
            Err((e, lease)) => return (Err(e), lease_back(&self.socket.rt, lease)),
        };
        let outcome = op.await;
        let lease = lease_back(&self.socket.rt, outcome.lease);
        let result = match (outcome.result, outcome.remote) {
            (Ok(n), Some(from)) => Ok((n, from)),
            (Ok(_), None) => Err(Error::Op(berth_ops::OpError::Other)),
            (Err(e), _) => Err(e.into()),
        };
        (result, lease)
    }

    /// Sends the lease's filled bytes as one datagram to `to` (`SendToAsync`).
    pub async fn send_to(&self, lease: Lease, to: SocketAddr) -> (Result<usize, Error>, Lease) {
        let range = 0..lease.len();
        let id = self.socket.id;
        let setup = Setup { lease: Some((lease, range)), remote: Some(to) };
        let op = match self.socket.rt.submit(setup, |port, op| port.send_to(id, op)) {
            Ok(op) => op,
            Err((e, lease)) => return (Err(e), lease_back(&self.socket.rt, lease)),
        };
        let outcome = op.await;
        let lease = lease_back(&self.socket.rt, outcome.lease);
        (outcome.result.map_err(Error::from), lease)
    }

    /// Leases a segment from the runtime's arena.
    pub fn lease(&self) -> Result<Lease, Error> {
        self.socket.rt.port.borrow().lease().map_err(|_| Error::BufferExhausted)
    }
}

/// A Unix domain stream listener on the current runtime's port.
#[derive(Debug)]
pub struct UnixListener {
    socket: Socket,
}

impl UnixListener {
    /// Binds to a path or an abstract name ([`UnixAddr`]); a stale socket file is
    /// refused unless `options` say to replace it.
    pub fn bind(addr: &UnixAddr, options: UnixListenOptions) -> Result<UnixListener, Error> {
        let rt = Inner::current()?;
        let id = rt.port.borrow_mut().listen_unix(addr, options)?;
        Ok(UnixListener { socket: Socket { rt, id } })
    }

    /// Accepts a connection.
    pub async fn accept(&self) -> Result<UnixStream, Error> {
        let listener = self.socket.id;
        let op = self.socket.rt.submit(Setup::NONE, |port, op| port.accept(listener, op)).map_err(|(e, _)| e)?;
        let outcome = op.await;
        outcome.result?;
        Ok(UnixStream { socket: Socket { rt: self.socket.rt.clone(), id: outcome.socket } })
    }
}

/// A Unix domain stream on the current runtime's port: the same owned-buffer
/// reads and writes as [`TcpStream`].
#[derive(Debug)]
pub struct UnixStream {
    pub(crate) socket: Socket,
}

impl UnixStream {
    /// Connects to a Unix listener.
    pub async fn connect(addr: &UnixAddr) -> Result<UnixStream, Error> {
        let rt = Inner::current()?;
        let socket = connect_with(&rt, |port, op| port.connect_unix(addr, op)).await?;
        Ok(UnixStream { socket })
    }

    /// As [`TcpStream::read`].
    pub async fn read(&self, lease: Lease) -> (Result<usize, Error>, Lease) {
        self.socket.read(lease).await
    }

    /// As [`TcpStream::read_pooled`].
    pub async fn read_pooled(&self) -> Result<Option<Lease>, Error> {
        self.socket.read_pooled().await
    }

    /// As [`TcpStream::write`].
    pub async fn write(&self, lease: Lease) -> (Result<usize, Error>, Lease) {
        self.socket.write(lease).await
    }

    /// As [`TcpStream::write_all`].
    pub async fn write_all(&self, lease: Lease) -> (Result<(), Error>, Lease) {
        let (result, lease) = self.socket.write(lease).await;
        (result.map(drop), lease)
    }

    /// As [`TcpStream::send_file`].
    pub async fn send_file(&self, file: FileSend<File>) -> Result<usize, Error> {
        self.socket.send_file(file).await
    }

    /// As [`TcpStream::shutdown`].
    pub fn shutdown(&self, how: Shutdown) -> Result<(), Error> {
        self.socket.shutdown(how)
    }

    /// Leases a segment from the runtime's arena.
    pub fn lease(&self) -> Result<Lease, Error> {
        self.socket.rt.port.borrow().lease().map_err(|_| Error::BufferExhausted)
    }
}
