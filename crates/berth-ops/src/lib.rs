//! berth-ops: operation args and their pool — the `SocketAsyncEventArgs` layer.
//!
//! In the seed design each connection owns reusable `SocketAsyncEventArgs` objects
//! taken from a `SocketAsyncEventArgsPool`, and a `Semaphore` caps connections. Here:
//!
//! - [`OpArgs<T>`]: one operation — [`OpKind`] (accept, recv, send, send-file,
//!   connect, close, user), the socket, an optional [`Lease`](berth_buf::Lease) with
//!   the active range, bytes transferred, the result as an [`OpError`] kind, and the
//!   user token `T` (`AsyncUserToken`).
//! - [`OpPool<T>`]: every op allocated at construction on a `slab`; [`OpId`]s carry a
//!   generation so a stale id is refused instead of reaching the op's next user.
//!   `take`/`give` never allocate.
//! - [`ConnectionLimit`]: the semaphore, as `try_acquire()` → a permit or a refusal.
//!
//! ```
//! use berth_buf::BufferManager;
//! use berth_ops::{ConnectionLimit, OpKind, OpPool};
//!
//! let buffers = BufferManager::with_defaults()?;
//! let limit = ConnectionLimit::new(100);
//! let mut pool = OpPool::new(100, |_| ());
//!
//! let _permit = limit.try_acquire()?; // a connection arrives
//! let id = pool.take()?; // its receive op
//! let op = pool.get_mut(id)?;
//! op.set_kind(OpKind::Recv);
//! op.set_buffer(buffers.lease()?, 0..4096)?;
//! // ... the completion port fills it and completes it ...
//! pool.give(id)?; // the lease goes back to the arena, the op to the pool
//! assert_eq!(buffers.stats().in_use, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod args;
mod error;
mod limit;
mod loom;
mod pool;

pub use args::{OpArgs, OpKind, PacketInfo, RangeError, SetBufferError};
pub use error::OpError;
pub use limit::{ConnectionLimit, ConnectionPermit, LimitReached};
pub use pool::{OpId, OpPool, PoolExhausted, PoolStats, StaleOp};
