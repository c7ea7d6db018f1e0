//! berth-async: async/await over berth's completion port.
//!
//! berth's [`CompletionPort`](berth_reactor::CompletionPort) hands back
//! completions, as IOCP does; .NET turns those into `Task`s that `await` — a
//! `TcpListener` echo server is a loop of `AcceptTcpClientAsync`, `ReadAsync` and
//! `WriteAsync`. This crate does the same for Rust futures, on Linux, on either of
//! the port's drivers (io_uring or the epoll emulation):
//!
//! - [`Runtime`]: a single-threaded executor per port. [`Runtime::block_on`] runs a
//!   future; [`spawn`] adds `!Send` tasks ([`JoinHandle`]); a task's waker works
//!   from any thread (it posts to the port); [`Handle`] spawns from other threads.
//!   A task that panics is dropped and reported through its `JoinHandle`; the
//!   others keep running.
//! - Owned-buffer I/O, as compio does it: [`TcpStream::read`] takes a
//!   [`Lease`](berth_buf::Lease) and gives it back with the result
//!   (`let (res, lease) = stream.read(lease).await;`), because the kernel owns the
//!   buffer while the read is in flight. [`TcpStream::read_pooled`] leases a segment
//!   only when data arrives, so an idle connection holds no buffer.
//!   [`TcpListener`], [`UdpSocket`], [`UnixListener`], [`UnixStream`];
//!   [`TcpStream::send_file`] sends a file by sendfile(2).
//! - [`sleep`] and [`timeout`] on the port's timer op.
//! - [`Compat`]: `futures_io::AsyncRead`/`AsyncWrite`, by copying.
//!
//! # Cancellation
//! Dropping a future whose operation is in flight cancels the operation. Its buffer
//! stays with the operation — on io_uring the kernel may still write into it —
//! until the port hands the operation back; then it returns to the arena. It is
//! never freed early and never leaked ([`Runtime::cancelling`] counts the ones on
//! their way back). The caller's lease is gone with the dropped future, and so are
//! bytes a dropped read received in the race between the drop and the kernel's
//! answer to the cancel: drop a read in flight when giving up on the connection
//! (a [`timeout`] on an idle peer), not to retry it.
//!
//! # Allocation
//! Spawning a task allocates (its future, its waker, its join state). After that,
//! awaiting reads, writes and timers allocates nothing: completions are routed
//! through a table indexed by op, and a waker is a reference count.
//!
//! # Example
//! ```
//! use berth_async::{Runtime, TcpListener, TcpStream};
//!
//! let rt = Runtime::new()?;
//! rt.block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
//!     let addr = listener.local_addr()?;
//!     berth_async::spawn(async move {
//!         let (conn, _peer) = listener.accept().await?;
//!         // Echo once: the lease that arrived goes straight back out.
//!         if let Some(lease) = conn.read_pooled().await? {
//!             conn.write_all(lease).await.0?;
//!         }
//!         Ok::<(), berth_async::Error>(())
//!     });
//!     let client = TcpStream::connect(addr).await?;
//!     let mut hello = client.lease()?;
//!     hello.spare_mut()[..5].copy_from_slice(b"hello");
//!     hello.set_len(5).unwrap();
//!     let (sent, mut buf) = client.write_all(hello).await;
//!     sent?;
//!     buf.clear();
//!     let (got, buf) = client.read(buf).await;
//!     assert_eq!((got?, buf.filled()), (5, &b"hello"[..]));
//!     Ok::<(), berth_async::Error>(())
//! })??;
//! # Ok::<(), berth_async::Error>(())
//! ```
//!
//! # Caveats
//! One runtime per thread, and its sockets are `!Send`: run one per core with
//! [`serve_per_core`] (as [`berth_reactor::workers`] does for ports), each with its
//! own `SO_REUSEPORT` listener. A write sends the whole lease (the port resumes
//! partial sends), so `write` and `write_all` differ only in what they return.

mod compat;
mod error;
mod net;
mod op;
mod per_core;
mod runtime;
mod time;

pub use compat::Compat;
pub use error::{Error, JoinError};
pub use net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
pub use per_core::{PerCore, PerCoreConfig, serve_per_core};
pub use runtime::{Handle, JoinHandle, Runtime, RuntimeBuilder, spawn, yield_now};
pub use time::{sleep, sleep_until, timeout};
