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
//! - A lock-free shared free list (the manager is `Sync`) behind a small per-thread
//!   segment cache: [`BufferManager::lease`] and a lease dropped on the same thread
//!   use it without shared atomic operations, and it moves segments to and from the
//!   shared list in batches. A [`LocalCache`] pins it to one arena and sizes it, for
//!   an event loop.
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
//! A lease and its return on one thread go through that thread's cache: a few plain
//! loads and stores. When the cache is empty, full or serves another arena, the shared
//! list costs one compare-and-swap per batch, or per segment for a thread without a
//! cache. Nothing allocates. Leases carry no reference count: dropping the last
//! [`BufferManager`] handle while a lease is still out leaks the arena instead of
//! unmapping it under the lease. `cargo xtask bench` measures both paths against
//! `Vec::with_capacity(4096)`.
//!
//! # Caveats
//! One [`LocalCache`] per thread at a time. Segments in a thread's cache are free but
//! reachable only from that thread ([`BufferStats::cached`]): for an arena of 256
//! segments or more, up to `segment_count / 64` (at most 32) per thread that leased
//! from it and an eighth of the arena over all such threads, `2 * batch` with a
//! [`LocalCache`]; smaller arenas are cached only by a [`LocalCache`]. A thread's
//! cache gives everything back at its next return after a lease found the arena
//! exhausted, so a retry succeeds unless the segments sit with idle threads. A thread's
//! cache holds a handle: when the last user handle is dropped on another thread, the
//! arena stays mapped until the caching thread exits or moves on to another arena.
//!
//! A lease's bytes are not zeroed when it is handed out (see [`Lease::clear`]).
//! Generations are 30 bits and wrap: a raw lease kept across 2^30 raw handoffs of its
//! segment would be taken for current.

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
