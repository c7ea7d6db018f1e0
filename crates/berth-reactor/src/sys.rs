//! The OS calls the port makes beyond mio: listener setup through socket2.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::ListenOptions;

/// A non-blocking listener with `SO_REUSEADDR`, optional `SO_REUSEPORT`, and the
/// given backlog.
pub(crate) fn listener(addr: SocketAddr, options: &ListenOptions) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(options.backlog)?;
    Ok(socket.into())
}
