//! berth-buf: one pre-allocated buffer arena for a socket server.
//!
//! The seed design (a C# IOCP server on `SocketAsyncEventArgs`) carves one big
//! `byte[]` into fixed segments with a `BufferManager` — but never takes a segment
//! back, and every connection holds two forever. This crate keeps the idea (one
//! arena, fixed segments, no allocation per I/O) and fixes the rest:
//!
//! - [`BufferManager`]: one page-aligned anonymous mapping cut into segments
//!   (default 4096 bytes), optionally pre-faulted. Addresses never move, so the arena
//!   can be registered with the kernel once.
//! - [`Lease`]: a segment, owned; it derefs to its bytes, remembers how many are
//!   filled, is `Send`, and goes back to the arena when dropped — from any thread.
//! - A lock-free shared free list (the manager is `Sync`), and a [`LocalCache`] per
//!   thread that moves segments in batches, so an event loop leases and returns
//!   without shared atomic operations.
//! - [`RawLease`]: a lease as plain data (segment index + generation) for io_uring
//!   buffer ids, FFI or IPC. A stale or repeated return is refused and counted, never
//!   undefined behaviour.
//! - [`Exhaustion`]: when every segment is out, [`Exhausted`] (an error to act on) or a
//!   counted heap fallback. Never a block, never a panic.
//! - [`RecyclableBuffer`]: the seed's `RecyclableMemoryStream` — a growable buffer
//!   over a chain of leases with `io::Read`/`Write`, `bytes::Buf`/`BufMut` and
//!   `IoSlice`s for `writev`, bounded by a maximum capacity.
//! - [`BufferStats`]: total, in use, cached, high-water mark, exhaustion, heap
//!   fallbacks, stale and double returns.
//!
//! ```
//! use berth_buf::{BufferConfig, BufferManager, Exhaustion};
//!
//! let manager = BufferManager::new(BufferConfig::new().segment_count(2).exhaustion(Exhaustion::Fail))?;
//! let a = manager.lease()?;
//! let b = manager.lease()?;
//! assert!(manager.lease().is_err()); // exhausted: an error, not a crash
//! drop(a);
//! let c = manager.lease()?; // the segment came back
//! assert_eq!(manager.stats().in_use, 2);
//! # drop((b, c));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Costs
//! Leasing from the shared list and returning to it is two compare-and-swaps; through
//! a [`LocalCache`] it is a few plain loads and stores. Neither allocates. Leases carry
//! no reference count: dropping the last [`BufferManager`] handle while a lease is
//! still out leaks the arena instead of unmapping it under the lease. `cargo xtask bench` measures both against
//! `Vec::with_capacity(4096)`.
//!
//! # Caveats
//! One [`LocalCache`] per thread at a time. A lease's bytes are not zeroed when it is
//! handed out (see [`Lease::clear`]). Generations are 30 bits and wrap: a raw lease
//! kept across 2^30 reuses of its segment would be taken for current.

mod config;
mod free_list;
mod lease;
mod local;
mod loom;
mod manager;
mod recyclable;
mod stats;
mod strided;

pub use config::{BufferConfig, ConfigError, Exhaustion};
pub use lease::{Lease, LengthError, RawLease};
pub use local::{CacheError, LocalCache};
pub use manager::{BufferManager, Exhausted, RawError};
pub use recyclable::{GrowError, RecyclableBuffer};
pub use stats::BufferStats;
