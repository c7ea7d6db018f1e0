//! Socket setup the drivers share: listeners and outgoing connections through socket2.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use crate::ListenOptions;

/// A non-blocking listener with `SO_REUSEADDR`, optional `SO_REUSEPORT`, and the
/// given backlog.
pub(crate) fn listener(addr: SocketAddr, options: &ListenOptions) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if let (SocketAddr::V6(_), Some(only)) = (addr, options.only_v6) {
        socket.set_only_v6(only)?;
    }
    if let Some(k) = options.keepalive {
        let params = TcpKeepalive::new().with_time(k.idle).with_interval(k.interval).with_retries(k.retries);
        socket.set_tcp_keepalive(&params)?;
        socket.set_keepalive(true)?;
    }
    if let Some(n) = options.recv_buffer {
        socket.set_recv_buffer_size(n)?;
    }
    if let Some(n) = options.send_buffer {
        socket.set_send_buffer_size(n)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(options.backlog)?;
    Ok(socket.into())
}

/// A non-blocking stream with a connect to `addr` under way (or done: loopback
/// connects may finish at once).
pub(crate) fn connect(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}
