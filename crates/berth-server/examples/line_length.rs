//! A custom [`Service`] on berth-server: answers every line with its length.
//!
//! Run it with `cargo run -p berth-server --example line_length -- 127.0.0.1:9001`,
//! type lines into `nc 127.0.0.1 9001`, and stop it with Ctrl-C (or pass
//! `--seconds N` to stop after N seconds).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use berth_server::{Reply, Server, Service};

// ANCHOR: service
/// Per connection: how many lines it sent (the seed's user token).
#[derive(Debug, Default)]
struct Lines {
    count: u64,
}

struct LineLength;

impl Service for LineLength {
    type Conn = Lines;

    fn connect(&self, _peer: Option<SocketAddr>) -> Lines {
        Lines::default()
    }

    fn data(&self, conn: &mut Lines, input: &[u8], reply: &mut Reply<'_>) -> usize {
        match input.iter().position(|&b| b == b'\n') {
            Some(end) => {
                conn.count += 1;
                // Formatted straight into a leased segment: no allocation.
                let _ = writeln!(reply, "line {}: {} bytes", conn.count, end);
                end + 1
            }
            // A line longer than the server buffers: say so and close.
            None if reply.input_full() => {
                let _ = writeln!(reply, "line too long");
                reply.close();
                input.len()
            }
            None => 0, // wait for the rest of the line
        }
    }
}
// ANCHOR_END: service

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().unwrap_or_else(|| "127.0.0.1:0".into()).parse()?;
    let seconds = match (args.next().as_deref(), args.next()) {
        (Some("--seconds"), Some(n)) => n.parse()?,
        _ => 0u64,
    };
    let server = start(addr)?;
    println!("line_length on {}", server.local_addr());
    if seconds > 0 {
        std::thread::sleep(Duration::from_secs(seconds));
        server.shutdown(Duration::from_secs(5))?;
    } else {
        server.join()?;
    }
    Ok(())
}

fn start(addr: SocketAddr) -> Result<Server, berth_server::ServeError> {
    // ANCHOR: serve
    let server = Server::builder().addr(addr).max_connections(1000).serve(LineLength)?;
    // ANCHOR_END: serve
    Ok(server)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    /// Lines sent in pieces and several at once are each answered, in order, with
    /// the count kept per connection.
    #[test]
    fn answers_every_line() {
        let server = super::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"hel").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(b"lo\n\nberth\n").unwrap();
        let want = "line 1: 5 bytes\nline 2: 0 bytes\nline 3: 5 bytes\n";
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), want);
        drop(s);
        server.shutdown(Duration::from_secs(5)).unwrap();
    }
}
