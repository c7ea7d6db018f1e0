//! The book's "Getting started" server: the files of a directory over HTTP/1.1, with a
//! connection limit, timeouts and a metrics line every ten seconds.
//!
//! Run it with `cargo run --release -p berth-server --example hello_server -- [DIR]`
//! (default: the current directory on http://127.0.0.1:8080/); stop it with Ctrl-C.
//! `berth serve` is the same server with graceful shutdown and more options.

// ANCHOR: server
use std::time::Duration;

use berth_server::{Server, StaticFiles};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());

    let server = Server::builder()
        .addr("127.0.0.1:8080".parse()?)
        .max_connections(1_000) // past it, new connections are closed at once
        .header_timeout(Duration::from_secs(10)) // slowloris guard
        .idle_timeout(Duration::from_secs(30)) // between kept-alive requests
        .serve(StaticFiles::new(&dir)?)?; // nothing outside `dir` is ever served
    println!("serving {dir} on http://{}/", server.local_addr());

    loop {
        std::thread::sleep(Duration::from_secs(10));
        println!("{}", server.metrics()); // conns, replies, bytes, ops, buffers
    }
}
// ANCHOR_END: server
