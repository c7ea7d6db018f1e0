//! `berth_udp_echo`: the berth UDP echo server measured by `udp_bench` against
//! `tokio_udp_echo`: one completion port on one thread (the benchmark pins it to one
//! core) with `--ops` receives in flight on one socket. Each received datagram is
//! sent back from the same op (`send_to` to the op's `remote_endpoint`, which the
//! receive set to the sender), and once that send completes the op receives again:
//! the SAEA `ReceiveFromAsync` / `SendToAsync` loop.
//!
//! ```text
//! berth_udp_echo [--addr 127.0.0.1:0] [--ops 256] [--driver auto|epoll|uring]
//!                [--recv-buffer BYTES] [--pooled] [--ring-datagrams] [--no-gso]
//! ```
//!
//! `--pooled` receives with `recv_from_pooled` (a segment leased when a datagram
//! arrives) instead of each op holding its own. `--ring-datagrams` runs the datagram
//! ops as io_uring operations (`PortBuilder::ring_datagrams`; with `--pooled`, one
//! multishot `RECVMSG`) instead of readiness batches of `recvmmsg`/`sendmmsg`.
//! `--no-gso` sends every echo as its own message (`UdpOptions::gso(false)`), where
//! by default a batch's echoes to one client leave grouped (UDP GSO).
//!
//! Prints `listening on ADDR` and echoes until killed. `--recv-buffer` (default
//! 4 MiB, capped by the kernel at `net.core.rmem_max`) is the socket's `SO_RCVBUF`;
//! `tokio_udp_echo` sets the same, so neither drops more for a smaller queue.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::OpKind;
use berth_reactor::{Completion, CompletionPort, Driver, UdpOptions};

/// The largest datagram echoed whole (a larger one is reported truncated and dropped).
const SEGMENT: usize = 2048;

fn main() -> io::Result<()> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().map_err(io::Error::other)?;
    let mut ops = 256usize;
    let mut recv_buffer = 4 << 20;
    let mut driver = Driver::from_env()?;
    let mut pooled = false;
    let mut ring_datagrams = false;
    let mut gso = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--pooled" {
            pooled = true;
            continue;
        }
        if arg == "--ring-datagrams" {
            ring_datagrams = true;
            continue;
        }
        if arg == "--no-gso" {
            gso = false;
            continue;
        }
        let value = args.next().ok_or_else(|| io::Error::other(format!("{arg} needs a value")))?;
        match arg.as_str() {
            "--addr" => addr = value.parse().map_err(io::Error::other)?,
            "--ops" => ops = value.parse().map_err(io::Error::other)?,
            "--driver" => driver = value.parse()?,
            "--recv-buffer" => recv_buffer = value.parse().map_err(io::Error::other)?,
            _ => return Err(io::Error::other(format!("unknown argument {arg}"))),
        }
    }
    // A benchmark's server must not outlive the benchmark, even if it is SIGKILLed.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let buffers = BufferManager::new(BufferConfig::new().segment_size(SEGMENT).segment_count(2 * ops.max(16)))
        .map_err(io::Error::other)?;
    let mut port = CompletionPort::builder()
        .ops(ops)
        .max_sockets(4)
        .buffers(buffers)
        .driver(driver)
        .ring_datagrams(ring_datagrams)
        .build(|_| ())?;
    let socket =
        port.bind_udp(addr, UdpOptions::default().recv_buffer(recv_buffer).gso(gso)).map_err(io::Error::other)?;
    for _ in 0..ops {
        let op = port.take_op().map_err(io::Error::other)?;
        if pooled {
            port.recv_from_pooled(socket, op).map_err(io::Error::other)?;
            continue;
        }
        let lease = port.lease().map_err(io::Error::other)?;
        port.op_mut(op).map_err(io::Error::other)?.set_buffer(lease, 0..SEGMENT).map_err(io::Error::other)?;
        port.recv_from(socket, op).map_err(io::Error::other)?;
    }
    println!("listening on {}", port.local_addr(socket).map_err(io::Error::other)?);
    io::stdout().flush()?;

    let mut batch = Vec::with_capacity(ops + 16);
    loop {
        port.wait(&mut batch, Some(Duration::from_secs(1)))?;
        for c in batch.drain(..) {
            let Completion::Op { op, kind, result, .. } = c else { continue };
            let args = port.op_mut(op).map_err(io::Error::other)?;
            match (kind, result) {
                // A pooled receive's range is the datagram already.
                (OpKind::RecvFrom, Ok(_)) if pooled => port.send_to(socket, op).map_err(io::Error::other)?,
                (OpKind::RecvFrom, Ok(n)) => {
                    args.set_range(0..n).map_err(io::Error::other)?;
                    port.send_to(socket, op).map_err(io::Error::other)?;
                }
                _ if pooled => port.recv_from_pooled(socket, op).map_err(io::Error::other)?,
                // Sent, or failed (a truncated datagram, an ICMP error for an earlier
                // echo, a send the kernel refused): the op receives again.
                _ => {
                    args.set_range(0..SEGMENT).map_err(io::Error::other)?;
                    port.recv_from(socket, op).map_err(io::Error::other)?;
                }
            }
        }
    }
}
