//! `tokio_echo`: the idiomatic tokio echo server, the peer of berth's echo server in
//! the echo benchmarks.
//!
//! The shape of tokio's own `examples/echo.rs`: a `TcpListener` accept loop, one
//! spawned task per connection, `read` into a buffer and `write_all` it back. The
//! buffer is 4 KiB, berth's default segment size, so a 4 KiB message is echoed in one
//! read on both servers. `TCP_NODELAY` is set on every connection, as berth's load
//! generator does on its side.
//!
//! ```text
//! tokio_echo [--addr 127.0.0.1:0 | --addr unix:/path] [--threads N]
//! ```
//!
//! With `--addr unix:/path` it serves a `UnixListener` the same way (a socket file
//! left at the path is removed first) and prints `listening on unix:/path`.
//!
//! The runtime is `current_thread` by default (one core, like one berth port);
//! `--threads N` uses the multi-thread runtime with N workers. The first line on
//! stdout is `listening on ADDR`, so a caller can bind port 0 and learn the port.
//! The server runs until killed, and dies with its parent process.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

const USAGE: &str = "usage: tokio_echo [--addr HOST:PORT] [--threads N]";

fn main() -> ExitCode {
    let mut addr = String::from("127.0.0.1:0");
    let mut threads = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--addr", Some(v)) => addr = v,
            ("--threads", Some(v)) => match v.parse() {
                Ok(n) => threads = n,
                Err(e) => {
                    eprintln!("tokio_echo: --threads {v}: {e}\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    // A benchmark's server must not outlive the benchmark, even if it is SIGKILLed.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));

    let runtime = if threads == 0 {
        tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_io().enable_time().build()
    };
    let result = runtime.and_then(|rt| match addr.strip_prefix("unix:") {
        Some(path) => rt.block_on(serve_unix(path)),
        None => rt.block_on(serve(&addr)),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_echo: {addr}: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(addr: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let local: SocketAddr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}")?;
        out.flush()?;
    }
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, then keep serving.
                eprintln!("tokio_echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        tokio::spawn(echo(socket));
    }
}

async fn serve_unix(path: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on unix:{path}")?;
        out.flush()?;
    }
    loop {
        match listener.accept().await {
            Ok((socket, _)) => drop(tokio::spawn(echo(socket))),
            Err(e) => {
                eprintln!("tokio_echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One connection: read into a buffer, write it all back, until EOF or an error.
async fn echo(mut socket: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if socket.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
