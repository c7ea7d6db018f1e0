//! The compio echo server measured by `echo_bench` beside berth: compio is another
//! completion-based runtime on io_uring (the model berth-reactor's driver split was
//! read from), so it is the fairest peer for berth's io_uring driver. One runtime on
//! one thread (the benchmark pins it to one core), a task per connection, each
//! reading into and writing from its own 4 KiB buffer, as `tokio_echo` does.
//!
//! `compio_echo --addr 127.0.0.1:0` prints `listening on ADDR` and echoes until killed.

use std::io;
use std::net::SocketAddr;

use compio::buf::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpListener;

fn main() -> io::Result<()> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().map_err(io::Error::other)?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| io::Error::other(format!("{arg} needs a value")))?;
        match arg.as_str() {
            "--addr" => addr = value.parse().map_err(io::Error::other)?,
            _ => return Err(io::Error::other(format!("unknown argument {arg}"))),
        }
    }
    compio::runtime::Runtime::new()?.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (mut stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            compio::runtime::spawn(async move {
                let mut buf = Vec::with_capacity(4096);
                loop {
                    let BufResult(read, b) = stream.read(buf).await;
                    buf = b;
                    if !matches!(read, Ok(n) if n > 0) {
                        break;
                    }
                    let BufResult(written, b) = stream.write_all(buf).await;
                    buf = b;
                    if written.is_err() {
                        break;
                    }
                    buf.clear();
                }
            })
            .detach();
        }
    })
}
