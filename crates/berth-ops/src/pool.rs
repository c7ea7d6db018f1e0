//! [`OpPool`]: pre-allocated [`OpArgs`], handed out by generation-checked [`OpId`]s.

use std::sync::atomic::{AtomicU64, Ordering};

use slab::Slab;

use crate::args::OpArgs;

/// A handle to an op taken from an [`OpPool`]: index plus generation. Once the op is
/// given back, every copy of the id is stale and refused, so a late completion can
/// never land in the op's next use.
///
/// It packs into a `u64` ([`to_u64`](OpId::to_u64)) to ride in an epoll token or a
/// completion's user data.
///
/// ```
/// use berth_ops::{OpId, OpPool};
///
/// let mut pool = OpPool::new(4, |_| ());
/// let id = pool.take()?;
/// let token = id.to_u64(); // e.g. into an epoll token, and back
/// assert!(pool.get(OpId::from_u64(token)).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId {
    index: u32,
    generation: u32,
}

impl OpId {
    /// `generation << 32 | index`.
    ///
    /// ```
    /// # use berth_ops::OpPool;
    /// let mut pool = OpPool::new(1, |_| ());
    /// let id = pool.take()?;
    /// assert_eq!(id.to_u64() as u32 as usize, id.index()); // the low half is the index
    /// pool.give(id)?;
    /// let again = pool.take()?; // the same slot, the next generation
    /// assert_ne!(again.to_u64(), id.to_u64());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// Unpacks [`to_u64`](OpId::to_u64). Any value is accepted; a forged one is
    /// refused by the pool as [`StaleOp`].
    ///
    /// ```
    /// # use berth_ops::{OpId, OpPool};
    /// let mut pool = OpPool::new(1, |_| ());
    /// let id = pool.take()?;
    /// assert_eq!(OpId::from_u64(id.to_u64()), id);
    /// assert!(pool.get(OpId::from_u64(u64::MAX)).is_err()); // forged: refused, no panic
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_u64(v: u64) -> OpId {
        OpId { index: v as u32, generation: (v >> 32) as u32 }
    }

    /// The slot index in the pool (stable for the pool's life).
    ///
    /// ```
    /// # use berth_ops::OpPool;
    /// let mut pool = OpPool::new(2, |i| i * 10);
    /// let (a, b) = (pool.take()?, pool.take()?);
    /// assert_eq!((a.index(), b.index()), (0, 1)); // lowest slot first
    /// assert_eq!(*pool.get(b)?.token(), b.index() * 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// Every op of the pool is taken. Nothing changed; give one back or refuse the work.
///
/// ```
/// # use berth_ops::OpPool;
/// let mut pool = OpPool::new(1, |_| ());
/// let _only = pool.take()?;
/// assert_eq!(pool.take().unwrap_err().capacity, 1);
/// assert_eq!(pool.stats().exhausted, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {capacity} pooled operations are in use")]
pub struct PoolExhausted {
    /// The pool's size.
    pub capacity: usize,
}

/// An [`OpId`] that no longer (or never did) name a taken op of this pool.
///
/// ```
/// # use berth_ops::OpPool;
/// let mut pool = OpPool::new(1, |_| ());
/// let id = pool.take()?;
/// pool.give(id)?;
/// assert_eq!(pool.give(id).unwrap_err().id, id); // a second give is refused
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stale or unknown operation id {id:?}")]
pub struct StaleOp {
    /// The refused id.
    pub id: OpId,
}

/// Counters of an [`OpPool`].
///
/// ```
/// # use berth_ops::OpPool;
/// let mut pool = OpPool::new(4, |_| ());
/// let (a, _b) = (pool.take()?, pool.take()?);
/// pool.give(a)?;
/// assert!(pool.get(a).is_err());
/// let s = pool.stats();
/// assert_eq!((s.capacity, s.in_use, s.high_water, s.exhausted, s.stale), (4, 1, 2, 0, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// Ops in the pool.
    pub capacity: usize,
    /// Ops taken now.
    pub in_use: usize,
    /// The most ops ever taken at once.
    pub high_water: usize,
    /// Times `take` found every op in use.
    pub exhausted: u64,
    /// Stale ids refused.
    pub stale: u64,
}

struct Entry<T> {
    generation: u32,
    taken: bool,
    args: OpArgs<T>,
}

/// A fixed set of [`OpArgs`], created at construction on a [`Slab`]: the seed's
/// `SocketAsyncEventArgsPool`. `take` and `give` never allocate; an exhausted pool is
/// an error, a stale id is an error, never the wrong op.
///
/// ```
/// use berth_ops::{OpKind, OpPool};
///
/// let mut pool = OpPool::new(2, |i| format!("connection {i}"));
/// let id = pool.take()?;
/// pool.get_mut(id)?.set_kind(OpKind::Recv);
/// pool.give(id)?;
/// assert!(pool.get(id).is_err()); // the id is stale now
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct OpPool<T> {
    slots: Slab<Entry<T>>,
    free: Vec<u32>,
    high_water: usize,
    exhausted: u64,
    /// Stale ids refused, by `get` (which has only `&self`) as well as `get_mut` and
    /// `give`. An atomic rather than a `Cell` so the pool (and the port that holds it)
    /// stays `Sync`; `&mut self` paths bump it without an atomic operation, and `get`
    /// pays a relaxed add only when it refuses an id. Not from `crate::loom`: the pool
    /// is single-threaded and not model-checked.
    stale: AtomicU64,
}

impl<T> OpPool<T> {
    /// Creates `capacity` ops, each with the token `token(i)`. All memory the pool
    /// will ever use is allocated here.
    ///
    /// ```
    /// # use berth_ops::OpPool;
    /// let mut pool = OpPool::new(3, |i| format!("slot {i}"));
    /// assert_eq!((pool.capacity(), pool.available()), (3, 3));
    /// assert_eq!(pool.token_at_mut(2).map(|t| t.as_str()), Some("slot 2"));
    /// ```
    pub fn new(capacity: usize, mut token: impl FnMut(usize) -> T) -> OpPool<T> {
        let capacity = capacity.min(u32::MAX as usize);
        let mut slots = Slab::with_capacity(capacity);
        for i in 0..capacity {
            slots.insert(Entry { generation: 0, taken: false, args: OpArgs::new(token(i)) });
        }
        // Lowest index on top, so a lightly loaded pool keeps reusing the same few ops.
        let free = (0..capacity as u32).rev().collect();
        OpPool { slots, free, high_water: 0, exhausted: 0, stale: AtomicU64::new(0) }
    }

    /// Takes a free op (reset, with its token as left by its last user).
    ///
    /// ```
    /// # use berth_ops::OpPool;
    /// let mut pool = OpPool::new(1, |_| ());
    /// let id = pool.take()?;
    /// assert!(pool.take().is_err()); // exhausted: an error, nothing changed
    /// pool.give(id)?;
    /// assert!(pool.take().is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn take(&mut self) -> Result<OpId, PoolExhausted> {
        let Some(index) = self.free.pop() else {
            self.exhausted += 1;
            return Err(PoolExhausted { capacity: self.slots.len() });
        };
        let in_use = self.slots.len() - self.free.len();
        self.high_water = self.high_water.max(in_use);
        let entry = &mut self.slots[index as usize];
        entry.taken = true;
        Ok(OpId { index, generation: entry.generation })
    }

    fn entry(&self, id: OpId) -> Option<&Entry<T>> {
        self.slots.get(id.index as usize).filter(|e| e.taken && e.generation == id.generation)
    }

    /// The op `id` names, if it is still taken. A stale or forged id is refused and
    /// counted in [`PoolStats::stale`], as by [`get_mut`](OpPool::get_mut) and [`give`](OpPool::give).
    ///
    /// ```
    /// # use berth_ops::OpPool;
    /// let mut pool = OpPool::new(1, |_| 7u8);
    /// let id = pool.take()?;
    /// assert_eq!(*pool.get(id)?.token(), 7);
    /// pool.give(id)?;
    /// assert!(pool.get(id).is_err());
    /// assert_eq!(pool.stats().stale, 1); // counted, as by get_mut and give
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self, id: OpId) -> Result<&OpArgs<T>, StaleOp> {
        match self.entry(id) {
            Some(e) => Ok(&e.args),
            None => {
                self.stale.fetch_add(1, Ordering::Relaxed);
                Err(StaleOp { id })
            }
        }
    }

    /// The op `id` names, mutable.
    ///
    /// ```
    /// # use berth_ops::{OpKind, OpPool};
    /// let mut pool = OpPool::new(1, |_| ());
    /// let id = pool.take()?;
    /// pool.get_mut(id)?.set_kind(OpKind::Send);
    /// assert_eq!(pool.get(id)?.kind(), OpKind::Send);
    /// pool.give(id)?;
    /// assert!(pool.get_mut(id).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_mut(&mut self, id: OpId) -> Result<&mut OpArgs<T>, StaleOp> {
        if self.entry(id).is_none() {
            *self.stale.get_mut() += 1;
            return Err(StaleOp { id });
        }
        Ok(&mut self.slots[id.index as usize].args)
    }

    /// Gives the op back: it is reset (its lease returns to the arena, its token
    /// stays) and `id` becomes stale.
    ///
    /// ```
    /// # use berth_ops::OpPool;
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut pool = OpPool::new(1, |_| ());
    /// let id = pool.take()?;
    /// pool.get_mut(id)?.set_buffer(manager.lease()?, 0..10)?;
    /// pool.give(id)?;
    /// assert_eq!(manager.stats().in_use, 0); // the op's lease went back
    /// assert!(pool.give(id).is_err()); // and the id is stale
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn give(&mut self, id: OpId) -> Result<(), StaleOp> {
        if self.entry(id).is_none() {
            *self.stale.get_mut() += 1;
            return Err(StaleOp { id });
        }
        let entry = &mut self.slots[id.index as usize];
        entry.taken = false;
        entry.generation = entry.generation.wrapping_add(1);
        entry.args.reset();
        self.free.push(id.index);
        Ok(())
    }

    /// The token of slot `index` whether or not it is taken (for setting tokens up).
    ///
    /// ```
    /// # use berth_ops::OpPool;
    /// let mut pool = OpPool::new(2, |_| 0u32);
    /// *pool.token_at_mut(1).expect("slot 1") = 42;
    /// assert!(pool.token_at_mut(2).is_none()); // past the pool
    /// let (_a, b) = (pool.take()?, pool.take()?);
    /// assert_eq!((b.index(), *pool.get(b)?.token()), (1, 42));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn token_at_mut(&mut self, index: usize) -> Option<&mut T> {
        self.slots.get_mut(index).map(|e| e.args.token_mut())
    }

    /// Ops in the pool.
    ///
    /// ```
    /// # use berth_ops::OpPool;
    /// let mut pool = OpPool::new(8, |_| ());
    /// let _id = pool.take()?;
    /// assert_eq!((pool.capacity(), pool.available()), (8, 7)); // taking does not shrink it
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Ops free to take.
    ///
    /// ```
    /// # use berth_ops::OpPool;
    /// let mut pool = OpPool::new(2, |_| ());
    /// let id = pool.take()?;
    /// assert_eq!(pool.available(), 1);
    /// pool.give(id)?;
    /// assert_eq!(pool.available(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Counters.
    ///
    /// ```
    /// # use berth_ops::OpPool;
    /// let mut pool = OpPool::new(1, |_| ());
    /// let _id = pool.take()?;
    /// assert!(pool.take().is_err());
    /// let s = pool.stats();
    /// assert_eq!((s.in_use, s.high_water, s.exhausted), (1, 1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            capacity: self.slots.len(),
            in_use: self.slots.len() - self.free.len(),
            high_water: self.high_water,
            exhausted: self.exhausted,
            stale: self.stale.load(Ordering::Relaxed),
        }
    }
}

impl<T> std::fmt::Debug for OpPool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpPool").field("stats", &self.stats()).finish()
    }
}
