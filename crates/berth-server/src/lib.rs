//! berth-server: a thin server on the berth completion port.
//!
//! # What and why
//!
//! The lower crates give the parts of an IOCP-style server — a buffer arena
//! (berth-buf), pooled operation args (berth-ops), a completion port per core
//! (berth-reactor) and zero-copy file sends (berth-sendfile). This crate composes them
//! into something safe to put on a network in a few lines: a connection limit that
//! refuses cleanly, header and idle timeouts, bounded memory per connection, graceful
//! shutdown, metrics, and logs through `tracing` (it never installs a subscriber).
//!
//! # Entry types
//!
//! - [`Server::builder`] → [`ServerBuilder`] (address, workers, max connections,
//!   buffer segments, timeouts, request head limit) → [`serve`](ServerBuilder::serve)
//!   a [`Service`] → a running [`Server`]: its address, a [`ShutdownHandle`] and a
//!   [`Metrics`] snapshot.
//! - [`Service`]: per-connection state (the seed's user token) and a `data` callback
//!   that consumes input and answers through a [`Reply`] — bytes into a leased
//!   segment, a file range by sendfile(2), a close.
//! - Built-in services: [`Echo`], and [`StaticFiles`] — HTTP/1.1 GET and HEAD of the
//!   files beneath a root, with keep-alive, pipelining, `Range`, strong `ETag`s and
//!   the conditional requests, `OPTIONS`, added headers, and strict path handling (openat2 with `RESOLVE_BENEATH`); and [`IpcRelay`] —
//!   length-prefixed frames relayed to a local backend process over a berth-ipc
//!   duplex, replies routed back by [`ConnId`] ([`RelayBackend`] is the backend's end).
//! - Answering later, from another thread: [`Reply::answer_later`], then
//!   [`WorkerHandle::post`] wakes the worker, whose [`Service::posted`] answers
//!   through [`Conns`].
//!
//! # Example
//!
//! ```
//! use std::io::{Read, Write};
//! use std::time::Duration;
//! use berth_server::{Server, StaticFiles};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = std::env::temp_dir().join(format!("berth-server-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&root)?;
//! std::fs::write(root.join("index.html"), "<h1>hello</h1>")?;
//!
//! let server = Server::builder().addr("127.0.0.1:0".parse()?).workers(1).serve(StaticFiles::new(&root)?)?;
//! let mut client = std::net::TcpStream::connect(server.local_addr())?;
//! client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
//! let mut response = String::new();
//! client.read_to_string(&mut response)?;
//! assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
//! assert!(response.ends_with("\r\n\r\n<h1>hello</h1>"));
//!
//! server.shutdown(Duration::from_secs(5))?; // stop accepting, finish replies, close
//! # std::fs::remove_dir_all(&root)?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it runs
//!
//! One worker thread per core, each with its own completion port, `SO_REUSEPORT`
//! listener, op pool and buffer cache ([`berth_reactor::workers`]). Per connection a
//! worker keeps a slot in a preallocated table and two pooled ops; an idle connection
//! holds no buffer (pooled receives). A service's input is the unconsumed bytes of one
//! segment, so a request head is at most one segment; replies are answered one at a
//! time, in order, and nothing is read while a reply is being sent.
//!
//! # Caveats
//!
//! - Linux only (epoll, sendfile, openat2 — [`StaticFiles`] falls back to a
//!   symlink-refusing walk on kernels before 5.6).
//! - A file served while it is being rewritten can reach the client as a mix of old
//!   and new bytes (sendfile does not snapshot); a file that shrinks mid-send ends the
//!   connection early. Replace served files atomically (write, then rename).
//! - Timeouts are per operation: the header timeout bounds a request head from its
//!   first byte; a send has no deadline unless [`ServerBuilder::write_timeout`] is set.

mod access_log;
mod conn;
mod echo;
mod encoding;
mod file_cache;
mod files;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod listing;
mod metrics;
mod path;
mod ranges;
mod relay;
mod server;
mod service;
mod validators;

pub use access_log::{AccessLog, AccessLogHandle, LogTarget};
pub use berth_ipc::{OpenError, RecvError, SendError};
pub use berth_ops::OpError;
/// The completion ports' driver, for [`ServerBuilder::driver`].
pub use berth_reactor::workers::Inherited;
pub use berth_reactor::{Driver, Endpoint, UnixAddr};
pub use conn::{Conns, NotWaiting};
pub use echo::Echo;
pub use files::{
    DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_VALID, DEFAULT_MAX_LISTINGS, FilesConn, HeaderError, MAX_EXTRA_HEADERS,
    MAX_HEADERS, MAX_INDEX_NAME, RouteError, StaticFiles,
};
pub use metrics::Metrics;
pub use relay::{
    EchoError, IpcRelay, RelayBackend, RelayConfig, RelayConn, RelayError, RelayHandle, RelayRequest, RelayStats,
};
pub use server::{ServeError, Server, ServerBuilder, ShutdownHandle};
pub use service::{ConnId, MAX_FILE_PARTS, Reply, ReplyFull, Service, Watch, WorkerHandle};
