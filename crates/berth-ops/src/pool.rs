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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId {
    index: u32,
    generation: u32,
}

impl OpId {
    /// `generation << 32 | index`.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// Unpacks [`to_u64`](OpId::to_u64). Any value is accepted; a forged one is
    /// refused by the pool as [`StaleOp`].
    pub fn from_u64(v: u64) -> OpId {
        OpId { index: v as u32, generation: (v >> 32) as u32 }
    }

    /// The slot index in the pool (stable for the pool's life).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// Every op of the pool is taken. Nothing changed; give one back or refuse the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {capacity} pooled operations are in use")]
pub struct PoolExhausted {
    /// The pool's size.
    pub capacity: usize,
}

/// An [`OpId`] that no longer (or never did) name a taken op of this pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stale or unknown operation id {id:?}")]
pub struct StaleOp {
    /// The refused id.
    pub id: OpId,
}

/// Counters of an [`OpPool`].
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

    /// The op `id` names, if it is still taken.
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
    pub fn get_mut(&mut self, id: OpId) -> Result<&mut OpArgs<T>, StaleOp> {
        if self.entry(id).is_none() {
            *self.stale.get_mut() += 1;
            return Err(StaleOp { id });
        }
        Ok(&mut self.slots[id.index as usize].args)
    }

    /// Gives the op back: it is reset (its lease returns to the arena, its token
    /// stays) and `id` becomes stale.
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
    pub fn token_at_mut(&mut self, index: usize) -> Option<&mut T> {
        self.slots.get_mut(index).map(|e| e.args.token_mut())
    }

    /// Ops in the pool.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Ops free to take.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Counters.
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
