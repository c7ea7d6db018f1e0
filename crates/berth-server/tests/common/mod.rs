//! Shared pieces of the server tests: temp dirs, a server on 127.0.0.1:0, and a raw
//! HTTP/1.1 client over std TcpStream with timeouts on every read and write.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_server::{Server, ServerBuilder, StaticFiles};

/// Every socket read and write in the tests gives up after this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "berth-server-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            name
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Creates `rel` (and its parents) with `bytes`.
    pub fn file(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic, position-dependent bytes: a shifted or repeated chunk shows.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 8) ^ (i >> 16)) as u8).collect()
}

/// A test builder: one worker, small tables.
pub fn builder() -> ServerBuilder {
    Server::builder().addr("127.0.0.1:0".parse().unwrap()).workers(1).max_connections(64).segment_count(256)
}

pub fn serve_dir(root: &Path) -> Server {
    builder().serve(StaticFiles::new(root).unwrap()).expect("server starts")
}

pub fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length").map(|v| v.parse().expect("content-length"))
    }
}

/// Reads one response head (up to and including the blank line), byte by byte so
/// that a pipelined next response stays in the socket.
pub fn read_head(s: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte)? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("EOF after {head:?}"))),
            _ => head.push(byte[0]),
        }
        assert!(head.len() < 64 * 1024, "runaway head");
    }
    Ok(String::from_utf8(head).expect("ascii head"))
}

/// Reads one response; `head_only` for HEAD requests (no body even with a length).
pub fn read_response(s: &mut TcpStream, head_only: bool) -> io::Result<Response> {
    let head = read_head(s)?;
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    let mut r = Response { status, head, body: Vec::new() };
    // 204 and 304 have no body (and 204 no Content-Length).
    if !head_only && status != 304 && status != 204 {
        let len = r.content_length().expect("a Content-Length");
        r.body = vec![0; len];
        s.read_exact(&mut r.body)?;
    }
    Ok(r)
}

/// Sends `raw` and reads one response.
pub fn exchange(s: &mut TcpStream, raw: &str) -> Response {
    s.write_all(raw.as_bytes()).expect("send request");
    read_response(s, raw.starts_with("HEAD ")).expect("response")
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, raw: &str) -> Response {
    exchange(&mut client(addr), raw)
}

/// A GET with `Host` and the given extra header lines.
pub fn req(method: &str, target: &str, extra: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nHost: test\r\n{extra}\r\n")
}

/// True if the peer closed: EOF or reset, no more bytes.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Waits (bounded) until `pred` holds.
pub fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(2));
    }
}
