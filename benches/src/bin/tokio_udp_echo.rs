//! `tokio_udp_echo`: the idiomatic tokio UDP echo server, the peer of
//! `berth_udp_echo` in `udp_bench`: one `UdpSocket`, `recv_from` into a buffer and
//! `send_to` the sender, in a loop, on the `current_thread` runtime (one core, like
//! one berth port).
//!
//! ```text
//! tokio_udp_echo [--addr 127.0.0.1:0] [--recv-buffer BYTES]
//! ```
//!
//! The first line on stdout is `listening on ADDR`. `--recv-buffer` (default 4 MiB,
//! capped at `net.core.rmem_max`) is `SO_RCVBUF`, the same as berth's server gets.
//! The server runs until killed, and dies with its parent process.

use std::io::Write;
use std::process::ExitCode;

use tokio::net::UdpSocket;

const USAGE: &str = "usage: tokio_udp_echo [--addr HOST:PORT] [--recv-buffer BYTES]";

fn main() -> ExitCode {
    let mut addr = String::from("127.0.0.1:0");
    let mut recv_buffer = 4usize << 20;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(v)) => addr = v,
            ("--recv-buffer", Some(v)) => match v.parse() {
                Ok(n) => recv_buffer = n,
                Err(e) => {
                    eprintln!("tokio_udp_echo: --recv-buffer {v}: {e}\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build();
    match runtime.and_then(|rt| rt.block_on(serve(&addr, recv_buffer))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_udp_echo: {addr}: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(addr: &str, recv_buffer: usize) -> std::io::Result<()> {
    let socket = UdpSocket::bind(addr).await?;
    rustix::net::sockopt::set_socket_recv_buffer_size(&socket, recv_buffer)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", socket.local_addr()?)?;
        out.flush()?;
    }
    let mut buf = vec![0u8; 2048];
    loop {
        // An ICMP error for an earlier echo (a client gone) fails one call; go on.
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
        let _ = socket.send_to(&buf[..n], from).await;
    }
}
