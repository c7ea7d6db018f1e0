//! [`Echo`]: every byte received is sent back.

use std::net::SocketAddr;

use crate::service::{Reply, Service};

/// The echo service: sends back every byte it receives, in order. A reply is at most
/// one buffered read (the request head limit), so memory per connection is bounded
/// and a peer that does not read stops being read from.
///
/// ```
/// use berth_server::{Echo, Server};
/// use std::io::{Read, Write};
///
/// let server = Server::builder().addr("127.0.0.1:0".parse()?).workers(1).serve(Echo)?;
/// let mut client = std::net::TcpStream::connect(server.local_addr())?;
/// client.write_all(b"hello")?;
/// let mut got = [0u8; 5];
/// client.read_exact(&mut got)?;
/// assert_eq!(&got, b"hello");
/// # drop(client);
/// # server.shutdown(std::time::Duration::from_secs(1))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Service for Echo {
    type Conn = ();

    fn connect(&self, _peer: Option<SocketAddr>) {}

    fn data(&self, _conn: &mut (), input: &[u8], reply: &mut Reply<'_>) -> usize {
        // A failed write marks the reply failed; the server closes the connection.
        let _ = reply.write_bytes(input);
        input.len()
    }
}
