//! The berth-async echo server measured by `echo_bench` (server "berth_async"):
//! the same echo as `berth_echo`, written as one async task per connection on a
//! `berth_async::Runtime` (one port, one thread), to measure what async/await costs
//! over the raw completion port.
//!
//! `berth_async_echo --addr 127.0.0.1:0 [--connections N] [--driver auto|epoll|uring] [--compat]`
//! prints `listening on ADDR` and echoes until killed. Each connection's task loops
//! over a pooled read (no buffer held while idle) and a `write_all` of the lease that
//! arrived. With `--compat` ("berth_async_compat" in `echo_bench`) it goes through
//! `Compat` and tokio's `AsyncReadExt`/`AsyncWriteExt` with a 4 KiB stack buffer
//! instead, as a protocol crate written for tokio would: the adapter's copy cost.

use std::io::{self, Write};
use std::net::SocketAddr;

use berth_async::{Runtime, TcpListener, TcpStream};
use berth_buf::{BufferConfig, BufferManager};
use berth_reactor::{Driver, ListenOptions};

fn main() -> io::Result<()> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().map_err(io::Error::other)?;
    let mut connections = 20_000usize;
    let mut driver = Driver::from_env()?;
    let mut compat = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--compat" {
            compat = true;
            continue;
        }
        let value = args.next().ok_or_else(|| io::Error::other(format!("{arg} needs a value")))?;
        match arg.as_str() {
            "--addr" => addr = value.parse().map_err(io::Error::other)?,
            "--connections" => connections = value.parse().map_err(io::Error::other)?,
            "--driver" => driver = value.parse()?,
            _ => return Err(io::Error::other(format!("unknown argument {arg}"))),
        }
    }
    let buffers =
        BufferManager::new(BufferConfig::new().segment_size(4096).segment_count(4096)).map_err(io::Error::other)?;
    // One op per connection (its read or its write) plus the accept.
    let rt = Runtime::builder()
        .ops(connections + 1)
        .max_sockets(connections + 1)
        .buffers(buffers)
        .driver(driver)
        .build()
        .map_err(io::Error::from)?;
    let served: Result<(), berth_async::Error> = rt.block_on(async {
        let listener = TcpListener::bind_with(addr, ListenOptions { backlog: 4096, ..ListenOptions::default() })?;
        println!("listening on {}", listener.local_addr()?);
        io::stdout().flush()?;
        loop {
            // A refused or failed accept (out of ops, say) drops that one connection.
            if let Ok((conn, _)) = listener.accept().await {
                if compat {
                    drop(berth_async::spawn(echo_compat(conn)));
                } else {
                    drop(berth_async::spawn(echo(conn)));
                }
            }
        }
    })?;
    served.map_err(io::Error::from)
}

// ANCHOR: echo
async fn echo(conn: TcpStream) -> Result<(), berth_async::Error> {
    while let Some(lease) = conn.read_pooled().await? {
        conn.write_all(lease).await.0?;
    }
    Ok(())
}
// ANCHOR_END: echo

/// The echo through tokio's traits: one copy in (segment to stack), one out.
async fn echo_compat(conn: TcpStream) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = berth_async::Compat::new(conn);
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
        conn.flush().await?;
    }
}
