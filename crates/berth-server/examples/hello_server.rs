//! The book's "Getting started" server: the files of a directory over HTTP/1.1, with a
//! connection limit, timeouts and a metrics line every ten seconds.
//!
//! Run it with `cargo run --release -p berth-server --example hello_server -- [DIR]`
//! (default: the current directory on http://127.0.0.1:8080/); stop it with Ctrl-C.
//! `berth serve` is the same server with graceful shutdown and more options.

// ANCHOR: server
use std::net::SocketAddr;
use std::time::Duration;

use berth_server::{Server, StaticFiles};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let server = start(&dir, "127.0.0.1:8080".parse()?)?;
    println!("serving {dir} on http://{}/", server.local_addr());
    loop {
        std::thread::sleep(Duration::from_secs(10));
        println!("{}", server.metrics()); // conns, replies, bytes, ops, buffers
    }
}

fn start(dir: &str, addr: SocketAddr) -> Result<Server, Box<dyn std::error::Error>> {
    let server = Server::builder()
        .addr(addr)
        .max_connections(1_000) // past it, new connections are closed at once
        .header_timeout(Duration::from_secs(10)) // slowloris guard
        .idle_timeout(Duration::from_secs(30)) // between kept-alive requests
        .serve(StaticFiles::new(dir)?)?; // nothing outside `dir` is ever served
    Ok(server)
}
// ANCHOR_END: server

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    /// The server as the book shows it answers `/` with the directory's index.html.
    #[test]
    fn serves_the_index() {
        let dir = std::env::temp_dir().join(format!("berth-hello-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), "<h1>hello</h1>").unwrap();
        let server = super::start(dir.to_str().unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\n<h1>hello</h1>"), "{response}");
        server.shutdown(Duration::from_secs(5)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
