//! berth-reactor: an IOCP-style completion port for Linux.
//!
//! Windows servers built on `SocketAsyncEventArgs` submit an operation and later
//! receive its *completion*. This crate gives that model on Linux with two drivers
//! behind one API ([`Driver`]):
//! - **io_uring**, Linux's own completion interface: each op is a submission on the
//!   port's ring, and one `io_uring_enter` per wait submits them all and collects
//!   their completions.
//! - **epoll** (through mio, edge-triggered), the fallback wherever io_uring is
//!   missing or forbidden, as .NET's own Linux socket engine works: try the syscall
//!   at once, queue the op per socket and direction only if it would block, and
//!   complete it when readiness arrives.
//!
//! [`Driver::Auto`] (the default) picks io_uring when the kernel allows it;
//! `BERTH_DRIVER=epoll|uring` or [`PortBuilder::driver`] force one.
//!
//! - [`CompletionPort`]: one per thread. Submit [`accept`](CompletionPort::accept),
//!   [`recv`](CompletionPort::recv), [`recv_pooled`](CompletionPort::recv_pooled)
//!   (no buffer held while idle), [`send`](CompletionPort::send) (the whole range),
//!   [`send_file`](CompletionPort::send_file) (sendfile(2)),
//!   [`connect`](CompletionPort::connect), and [`close`](CompletionPort::close) or
//!   [`cancel`](CompletionPort::cancel) (pending ops complete as cancelled and return
//!   their leases). Per-op deadlines complete as timed out.
//! - Completions come back two ways: [`CompletionPort::wait`] fills a `Vec`
//!   (`GetQueuedCompletionStatusEx`), and [`CompletionPort::run_once`] calls a
//!   [`Handler`] per completion (the seed's `IO_Completed`).
//! - [`PortHandle`]: post a completion from any thread (`PostQueuedCompletionStatus`).
//! - [`workers`]: one port per core, each with its own `SO_REUSEPORT` listener, op
//!   pool and buffer cache; no lock on the hot path.
//!
//! # Ownership
//! An op ([`OpArgs`](berth_ops::OpArgs), from the port's pool) belongs to the port
//! from submit to completion; the completion hands it back, with its lease, for reuse.
//!
//! # Faults
//! A peer that resets or closes completes the op with an [`OpError`](berth_ops::OpError)
//! kind; accept survives EMFILE/ENFILE by backing off (counted) instead of spinning;
//! connections past the [`ConnectionLimit`](berth_ops::ConnectionLimit) or the socket
//! table are closed at once and counted; nothing on the completion path allocates.

mod builder;
mod core;
mod driver;
pub mod echo;
mod handle;
mod packets;
mod port;
mod ready;
mod socket;
mod sys;
mod timer;
mod udp;
mod unix;
pub mod workers;

pub use builder::{Keepalive, ListenOptions, PortBuilder};
pub use driver::{Driver, UringUnavailable};
pub use handle::PortHandle;
pub use packets::{Packet, Packets};
pub use port::{Completion, CompletionPort, Handler, PortStats, SubmitError};
pub use ready::{Interest, Ready};
pub use socket::SocketId;
pub use udp::{POOLED_DATAGRAM_HEADROOM, UdpOptions};
pub use unix::{Endpoint, PeerCred, UNIX_NAME_MAX, UnixAddr, UnixListenOptions};
