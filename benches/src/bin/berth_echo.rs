//! The berth echo server measured by `echo_bench` against `tokio_echo`: one
//! completion port on one thread (the benchmark pins it to one core).
//!
//! `berth_echo --addr 127.0.0.1:0 [--connections N] [--driver auto|epoll|uring]`
//! prints `listening on ADDR` and echoes until killed. `--addr unix:/path` (or
//! `unix:@name`) listens on a Unix stream socket instead (a stale socket file at the
//! path is replaced) and prints `listening on unix:/path`. `--driver` picks the port's
//! driver (default: `BERTH_DRIVER`, else auto); a driver that cannot run exits with
//! an error. `--connections` sizes the op pool and socket table (every
//! idle connection has one receive pending; none of them holds a buffer).

use std::io::{self, Write};

use berth_buf::{BufferConfig, BufferManager};
use berth_reactor::echo::Echo;
use berth_reactor::{CompletionPort, Driver, Endpoint, ListenOptions, UnixListenOptions};

fn main() -> io::Result<()> {
    let mut addr: Endpoint = "127.0.0.1:0".parse()?;
    let mut connections = 20_000usize;
    let mut driver = Driver::from_env()?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| io::Error::other(format!("{arg} needs a value")))?;
        match arg.as_str() {
            "--addr" => addr = value.parse()?,
            "--connections" => connections = value.parse().map_err(io::Error::other)?,
            "--driver" => driver = value.parse()?,
            _ => return Err(io::Error::other(format!("unknown argument {arg}"))),
        }
    }
    // Buffers are leased only while data is in flight: a few thousand segments serve
    // any number of idle connections.
    let buffers =
        BufferManager::new(BufferConfig::new().segment_size(4096).segment_count(4096)).map_err(io::Error::other)?;
    let mut port = CompletionPort::builder()
        .ops(connections + 1)
        .max_sockets(connections + 1)
        .buffers(buffers)
        .driver(driver)
        .build(|_| ())?;
    let (listener, shown) = match addr {
        Endpoint::Tcp(addr) => {
            let listener = port
                .listen(addr, ListenOptions { backlog: 4096, ..ListenOptions::default() })
                .map_err(io::Error::other)?;
            (listener, port.local_addr(listener).map_err(io::Error::other)?.to_string())
        }
        Endpoint::Unix(addr) => {
            let options = UnixListenOptions::default().backlog(4096).replace_stale(true);
            (port.listen_unix(&addr, options).map_err(io::Error::other)?, addr.to_string())
        }
    };
    let mut echo = Echo::start(&mut port, listener).map_err(io::Error::other)?;
    println!("listening on {shown}");
    io::stdout().flush()?;
    while !echo.stopped() {
        port.run_once(&mut echo, None)?;
    }
    Ok(())
}
