//! The seed's `AsyncSocketServer`, written on berth: an echo server.
//!
//! Run it with `cargo run -p berth-reactor --example async_socket_server -- 127.0.0.1:9000`
//! and talk to it with `nc 127.0.0.1 9000`. It prints its address, echoes every byte,
//! and exits after `--seconds N` if given.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::{ConnectionLimit, OpError};
use berth_reactor::{Completion, CompletionPort, Handler, ListenOptions, SocketId};

/// `AsyncUserToken`: what the server keeps per connection. The op already carries
/// its socket, so the token only counts bytes.
#[derive(Debug, Default)]
struct UserToken {
    bytes_echoed: u64,
}

/// `AsyncSocketServer`: the completion handler (`IO_Completed`).
struct AsyncSocketServer {
    listener: SocketId,
    connections: usize,
}

// ANCHOR: handler
impl Handler<UserToken> for AsyncSocketServer {
    // IO_Completed: one entry point for every completion, dispatched on the op kind.
    fn completed(&mut self, port: &mut CompletionPort<UserToken>, completion: Completion) {
        let Completion::Op { op, kind, socket, result } = completion else { return };
        match (kind, result) {
            // ProcessAccept: hand the new socket a receive op, and accept again
            // (StartAccept with the same SocketAsyncEventArgs).
            (berth_ops::OpKind::Accept, Ok(_)) => {
                self.connections += 1;
                match port.take_op() {
                    // readPool.Pop(): a receive op for this connection; no buffer is
                    // leased until data arrives (recv_pooled).
                    Ok(recv) => {
                        if port.recv_pooled(socket, recv).is_err() {
                            let _ = port.give_op(recv);
                            let _ = port.close(socket);
                        }
                    }
                    // SocketAsyncEventArgsPool empty: refuse the connection cleanly.
                    Err(_) => {
                        let _ = port.close(socket);
                    }
                }
                let _ = port.accept(self.listener, op);
            }
            (berth_ops::OpKind::Accept, Err(e)) => {
                eprintln!("accept failed: {e}");
                let _ = port.accept(self.listener, op);
            }
            // ProcessReceive: BytesTransferred > 0 and SocketError.Success → echo it
            // back with SendAsync on the same args and the same buffer.
            (berth_ops::OpKind::Recv, Ok(n)) if n > 0 => {
                let ok = port.op_mut(op).is_ok_and(|args| args.set_range(0..n).is_ok());
                if !ok || port.send(socket, op).is_err() {
                    self.disconnect(port, socket, op);
                }
            }
            // ProcessSend: the whole range went out; ReceiveAsync again. The lease goes
            // back to the arena while the connection waits (the seed kept it forever).
            (berth_ops::OpKind::Send, Ok(n)) => {
                if let Ok(args) = port.op_mut(op) {
                    args.token_mut().bytes_echoed += n as u64;
                }
                if port.recv_pooled(socket, op).is_err() {
                    self.disconnect(port, socket, op);
                }
            }
            // CloseClientSocket: 0 bytes (the peer closed) or any error.
            (_, Ok(_)) | (_, Err(OpError::Cancelled)) | (_, Err(_)) => self.disconnect(port, socket, op),
        }
    }
}

// ANCHOR_END: handler

impl AsyncSocketServer {
    /// CloseClientSocket: close the socket (pending ops complete as cancelled and
    /// return their buffers), release the semaphore (the permit drops with the
    /// socket) and push the args back into the pool.
    fn disconnect(&mut self, port: &mut CompletionPort<UserToken>, socket: SocketId, op: berth_ops::OpId) {
        let _ = port.close(socket);
        if let Ok(args) = port.op_mut(op) {
            args.token_mut().bytes_echoed = 0;
        }
        let _ = port.give_op(op);
        self.connections = self.connections.saturating_sub(1);
    }
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:0").parse().map_err(io::Error::other)?;
    let seconds: Option<u64> = match (args.next().as_deref(), args.next()) {
        (Some("--seconds"), Some(n)) => n.parse().ok(),
        _ => None,
    };
    let stats = run(addr, seconds.map(Duration::from_secs), |at| println!("listening on {at}"))?;
    println!(
        "accepted {} refused {} inline {} queued {}",
        stats.accepted, stats.refused, stats.completed_inline, stats.completed_queued
    );
    Ok(())
}

/// Serves on `addr` (for `run_for`, or for ever), telling `listening` the bound
/// address once it accepts.
fn run(
    addr: SocketAddr,
    run_for: Option<Duration>,
    listening: impl FnOnce(SocketAddr),
) -> io::Result<berth_reactor::PortStats> {
    // ANCHOR: setup
    // new AsyncSocketServer(numConnections, receiveBufferSize)
    let num_connections = 10_000;
    let receive_buffer_size = 4096;

    // BufferManager(receiveBufferSize * numConnections * 2, receiveBufferSize): but
    // only buffers in use are leased, so far fewer segments are enough.
    let buffers =
        BufferManager::new(BufferConfig::new().segment_size(receive_buffer_size).segment_count(num_connections / 4))
            .map_err(io::Error::other)?;

    // Semaphore maxNumberAcceptedClients(numConnections): refuses instead of blocking.
    let limit = ConnectionLimit::new(num_connections);

    // SocketAsyncEventArgsPool(numConnections): every op created up front.
    let mut port = CompletionPort::builder()
        .ops(num_connections + 1)
        .max_sockets(num_connections + 1)
        .buffers(buffers)
        .connection_limit(limit)
        .build(|_| UserToken::default())?;

    // Start(localEndPoint): bind, listen, StartAccept.
    let listener = port.listen(addr, ListenOptions::default()).map_err(io::Error::other)?;
    let accept = port.take_op().map_err(io::Error::other)?;
    port.accept(listener, accept).map_err(io::Error::other)?;

    // ANCHOR_END: setup
    listening(port.local_addr(listener).map_err(io::Error::other)?);
    let mut server = AsyncSocketServer { listener, connections: 0 };
    let deadline = run_for.map(|d| Instant::now() + d);
    loop {
        port.run_once(&mut server, Some(Duration::from_millis(200)))?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    Ok(port.stats())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    /// The example as a client sees it: three connections, each echoed byte for byte
    /// (a small message and one of 100 KiB, larger than a buffer segment), then closed.
    #[test]
    fn echoes_every_byte() {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            super::run("127.0.0.1:0".parse().unwrap(), Some(Duration::from_secs(2)), |a| tx.send(a).unwrap())
        });
        let addr = rx.recv_timeout(Duration::from_secs(10)).expect("listening");
        for len in [5usize, 4096, 100_000] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let writer = {
                let mut s = s.try_clone().unwrap();
                let msg = msg.clone();
                std::thread::spawn(move || s.write_all(&msg).unwrap())
            };
            let mut back = vec![0u8; len];
            s.read_exact(&mut back).unwrap();
            writer.join().unwrap();
            assert!(back == msg, "echo of {len} bytes differs");
        }
        let stats = server.join().unwrap().unwrap();
        assert_eq!(stats.accepted, 3);
    }
}
