//! [`Echo`]: a ready-made echo [`Handler`]: every byte received is sent back.
//!
//! It is the smallest complete server on the port — accept, pooled receive, send the
//! same lease back, receive again — and what `berth_echo` (the benchmark server) and
//! the tests run. `examples/async_socket_server.rs` writes the same loop out step by
//! step against the seed's `AsyncSocketServer`.

use berth_ops::{OpId, OpKind};

use crate::{Completion, CompletionPort, Handler, SocketId};

/// The key of a [`Completion::Posted`] that makes [`Echo`] stop.
pub const STOP: u64 = u64::MAX;

/// An echo server's completion handler. Submit an accept on `listener` with any op,
/// then call [`CompletionPort::run_once`] until [`stopped`](Echo::stopped).
///
/// ```
/// use berth_reactor::echo::{Echo, STOP};
/// use berth_reactor::{CompletionPort, ListenOptions};
/// use std::io::{Read, Write};
///
/// let mut port = CompletionPort::builder().build(|_| ())?;
/// let listener = port.listen("127.0.0.1:0".parse()?, ListenOptions::default())?;
/// let mut client = std::net::TcpStream::connect(port.local_addr(listener)?)?;
/// let mut echo = Echo::start(&mut port, listener)?;
/// client.write_all(b"hello")?;
/// let mut reply = [0u8; 5];
/// let handle = port.handle();
/// let reader = std::thread::spawn(move || {
///     client.read_exact(&mut reply).map(|_| reply).and_then(|r| handle.post(STOP, 0).map(|_| r))
/// });
/// while !echo.stopped() {
///     port.run_once(&mut echo, Some(std::time::Duration::from_secs(5)))?;
/// }
/// assert_eq!(&reader.join().unwrap()?, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Echo {
    listener: SocketId,
    stopped: bool,
    /// Connections open now.
    pub connections: usize,
}

impl Echo {
    /// Takes an op and submits the first accept on `listener`.
    pub fn start<T>(port: &mut CompletionPort<T>, listener: SocketId) -> Result<Echo, crate::SubmitError> {
        let accept = port.take_op().map_err(|_| crate::SubmitError::StaleOp)?;
        port.accept(listener, accept)?;
        Ok(Echo { listener, stopped: false, connections: 0 })
    }

    /// True once a [`STOP`] post arrived.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    fn drop_connection<T>(&mut self, port: &mut CompletionPort<T>, socket: SocketId, op: OpId) {
        // Closing cancels anything else pending on the socket and returns its leases.
        if port.close(socket).is_ok() {
            self.connections = self.connections.saturating_sub(1);
        }
        let _ = port.give_op(op);
    }
}

impl<T> Handler<T> for Echo {
    fn completed(&mut self, port: &mut CompletionPort<T>, completion: Completion) {
        let (op, kind, socket, result) = match completion {
            Completion::Posted { key, .. } => {
                self.stopped |= key == STOP;
                return;
            }
            Completion::Op { op, kind, socket, result } => (op, kind, socket, result),
        };
        match (kind, result) {
            (OpKind::Accept, Ok(_)) => {
                self.connections += 1;
                match port.take_op() {
                    Ok(recv) => {
                        if port.recv_pooled(socket, recv).is_err() {
                            self.drop_connection(port, socket, recv);
                        }
                    }
                    // Out of ops: refuse this connection, keep the others.
                    Err(_) => {
                        let _ = port.close(socket);
                        self.connections -= 1;
                    }
                }
                let _ = port.accept(self.listener, op);
            }
            (OpKind::Accept, Err(_)) => {
                let _ = port.accept(self.listener, op);
            }
            (OpKind::Recv, Ok(n)) if n > 0 => {
                let ok = port.op_mut(op).is_ok_and(|a| a.set_range(0..n).is_ok());
                if !ok || port.send(socket, op).is_err() {
                    self.drop_connection(port, socket, op);
                }
            }
            (OpKind::Send, Ok(_)) => {
                if port.recv_pooled(socket, op).is_err() {
                    self.drop_connection(port, socket, op);
                }
            }
            // End of stream, an error, or a cancellation: the connection is done.
            _ => self.drop_connection(port, socket, op),
        }
    }
}
