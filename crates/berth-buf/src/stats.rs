//! Counters of a buffer arena and their snapshot.

use crate::loom::AtomicU64;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) exhausted: AtomicU64,
    pub(crate) heap_fallbacks: AtomicU64,
    pub(crate) stale_returns: AtomicU64,
    pub(crate) double_returns: AtomicU64,
}

/// A snapshot of a [`BufferManager`](crate::BufferManager)'s state, from
/// [`BufferManager::stats`](crate::BufferManager::stats).
///
/// Taken while other threads lease and return, the fields are each accurate but not
/// necessarily from the same instant.
///
/// ```
/// # use berth_buf::{BufferConfig, BufferManager};
/// let manager = BufferManager::new(BufferConfig::new().segment_count(4))?;
/// let lease = manager.lease()?;
/// let raw = manager.lease()?.into_raw().expect("an arena segment");
/// let s = manager.stats();
/// assert_eq!((s.total, s.in_use, s.raw, s.cached, s.high_water), (4, 2, 1, 0, 2));
/// # drop(lease);
/// # manager.release_raw(raw)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BufferStats {
    /// Segments in the arena.
    pub total: usize,
    /// Bytes per segment.
    pub segment_size: usize,
    /// Segments leased (including those handed out raw). Heap fallbacks not included.
    pub in_use: usize,
    /// Of `in_use`, segments currently handed out as [`RawLease`](crate::RawLease)s.
    pub raw: usize,
    /// Segments parked in per-thread caches (a [`LocalCache`](crate::LocalCache), or
    /// the cache [`BufferManager::lease`](crate::BufferManager::lease) keeps for large
    /// arenas): free, but off the shared list.
    pub cached: usize,
    /// Segments ever handed out: one past the highest index leased or cached so far.
    /// Free segments are reused last-in first-out, lowest index first, so this is the
    /// arena's touched footprint; it bounds the peak in use from above (by up to a
    /// batch per thread cache, which takes segments a batch at a time).
    pub high_water: usize,
    /// Times a lease found every segment taken.
    pub exhausted: u64,
    /// Times a heap buffer was handed out instead ([`Exhaustion::Heap`](crate::Exhaustion::Heap)).
    pub heap_fallbacks: u64,
    /// Raw leases refused because they were stale or foreign.
    pub stale_returns: u64,
    /// Raw leases refused because they were already returned or redeemed.
    pub double_returns: u64,
}

impl BufferStats {
    /// Segments neither leased nor cached.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager};
    /// let manager = BufferManager::new(BufferConfig::new().segment_count(4))?;
    /// let _lease = manager.lease()?;
    /// let s = manager.stats();
    /// assert_eq!(s.free(), s.total - s.in_use - s.cached);
    /// assert_eq!(s.free(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn free(&self) -> usize {
        self.total.saturating_sub(self.in_use + self.cached)
    }
}
