//! A UDP echo server on the completion port: SAEA's `ReceiveFromAsync` and
//! `SendToAsync` on the same args, many receives in flight.
//!
//! Run it with `cargo run -p berth-reactor --example udp_echo -- 127.0.0.1:9000`
//! and talk to it with `nc -u 127.0.0.1 9000`. It prints its address, echoes every
//! datagram to its sender, and exits after `--seconds N` if given.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::{OpError, OpKind};
use berth_reactor::{Completion, CompletionPort, Handler, PortStats, SocketId, UdpOptions};

/// The largest datagram echoed whole; longer ones are reported truncated.
const DATAGRAM: usize = 1500;

struct UdpEcho {
    socket: SocketId,
    echoed: u64,
    truncated: u64,
}

// ANCHOR: handler
impl Handler<()> for UdpEcho {
    fn completed(&mut self, port: &mut CompletionPort<()>, completion: Completion) {
        let Completion::Op { op, kind, result, .. } = completion else { return };
        let resubmit = match (kind, result) {
            // ReceiveFromAsync completed: the sender is the op's RemoteEndPoint, so
            // SendToAsync on the same args sends the bytes straight back.
            (OpKind::RecvFrom, Ok(n)) => match port.op_mut(op).map(|args| args.set_range(0..n)) {
                Ok(Ok(())) => port.send_to(self.socket, op),
                _ => port.recv_from(self.socket, op),
            },
            // A datagram longer than the buffer: its first bytes are in the buffer
            // and its real length in message_len(); this server drops it.
            (OpKind::RecvFrom, Err(OpError::MessageTruncated)) => {
                self.truncated += 1;
                port.recv_from(self.socket, op)
            }
            // Sent (or refused by the network): receive again with the full buffer.
            (OpKind::SendTo, result) => {
                self.echoed += u64::from(result.is_ok());
                match port.op_mut(op).map(|args| args.set_range(0..DATAGRAM)) {
                    Ok(Ok(())) => port.recv_from(self.socket, op),
                    _ => return,
                }
            }
            // An ICMP error for an earlier echo (its sender went away): keep going.
            (OpKind::RecvFrom, Err(_)) => port.recv_from(self.socket, op),
            _ => return,
        };
        if let Err(e) = resubmit {
            eprintln!("resubmitting: {e}");
        }
    }
}
// ANCHOR_END: handler

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:0").parse().map_err(io::Error::other)?;
    let seconds: Option<u64> = match (args.next().as_deref(), args.next()) {
        (Some("--seconds"), Some(n)) => n.parse().ok(),
        _ => None,
    };
    let (stats, echoed) = run(addr, seconds.map(Duration::from_secs), |at| println!("listening on {at}"))?;
    println!("echoed {echoed} datagrams, {} ops completed", stats.completed_inline + stats.completed_queued);
    Ok(())
}

/// Serves on `addr` (for `run_for`, or for ever); returns the port's counters and
/// the datagrams echoed.
fn run(
    addr: SocketAddr,
    run_for: Option<Duration>,
    listening: impl FnOnce(SocketAddr),
) -> io::Result<(PortStats, u64)> {
    // ANCHOR: setup
    // 64 receives in flight, each with its own segment: on epoll one recvmmsg fills
    // every one that has a datagram waiting. Twice the segments: on io_uring the
    // port lends a quarter of its arena to the kernel's buffer ring.
    let in_flight = 64;
    let buffers = BufferManager::new(BufferConfig::new().segment_size(2048).segment_count(2 * in_flight))
        .map_err(io::Error::other)?;
    let mut port = CompletionPort::builder().ops(in_flight).max_sockets(4).buffers(buffers).build(|_| ())?;
    let socket = port.bind_udp(addr, UdpOptions::default()).map_err(io::Error::other)?;
    for _ in 0..in_flight {
        let op = port.take_op().map_err(io::Error::other)?;
        let lease = port.lease().map_err(io::Error::other)?;
        port.op_mut(op).map_err(io::Error::other)?.set_buffer(lease, 0..DATAGRAM).map_err(io::Error::other)?;
        port.recv_from(socket, op).map_err(io::Error::other)?;
    }
    // ANCHOR_END: setup
    listening(port.local_addr(socket).map_err(io::Error::other)?);
    let mut server = UdpEcho { socket, echoed: 0, truncated: 0 };
    let deadline = run_for.map(|d| Instant::now() + d);
    loop {
        port.run_once(&mut server, Some(Duration::from_millis(200)))?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    Ok((port.stats(), server.echoed))
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    /// The example as clients see it: every datagram comes back to its own sender,
    /// whole, over IPv4 and IPv6.
    #[test]
    fn echoes_every_datagram_to_its_sender() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let (tx, rx) = std::sync::mpsc::channel();
            let server = std::thread::spawn(move || {
                super::run(bind.parse().unwrap(), Some(Duration::from_secs(1)), |a| tx.send(a).unwrap())
            });
            let addr = rx.recv_timeout(Duration::from_secs(10)).expect("listening");
            let clients: Vec<_> = (0..3).map(|_| UdpSocket::bind(bind).unwrap()).collect();
            for (i, c) in clients.iter().enumerate() {
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                for len in [1usize, 100, 1500] {
                    let msg: Vec<u8> = (0..len).map(|b| (b + i * 3) as u8).collect();
                    c.send_to(&msg, addr).unwrap();
                    let mut back = [0u8; 2048];
                    let (n, from) = c.recv_from(&mut back).expect("an echo");
                    assert_eq!((from, &back[..n]), (addr, &msg[..]));
                }
            }
            let (_, echoed) = server.join().unwrap().unwrap();
            assert_eq!(echoed, 9);
        }
    }
}
