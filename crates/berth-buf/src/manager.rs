//! The arena, its shared state and the [`BufferManager`] handle.
//!
//! # Lifetime without a reference count per lease
//!
//! A [`Lease`] holds a raw pointer to [`Shared`], not an `Arc`, because two atomic
//! reference-count operations per lease would cost more than the lease itself. The
//! arena stays alive by one count, `refs`, to which every manager handle contributes
//! [`HANDLE`] and every segment that is *off the shared free list* (leased, parked in a
//! local cache, or handed out raw) contributes 1. Whoever brings `refs` to zero frees
//! the arena. A local cache takes and gives back segments in batches, so its leases
//! touch `refs` once per batch rather than once per lease.

use std::ptr::NonNull;

use memmap2::{MmapMut, MmapOptions};

use crate::config::{BufferConfig, ConfigError, Exhaustion};
use crate::free_list::FreeList;
use crate::lease::{Lease, RawLease};
use crate::loom::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use crate::stats::{BufferStats, Counters};

/// What one manager handle adds to `refs`. Segments add 1 each; a count of segments
/// is below 2^32, so the two never mix.
const HANDLE: u64 = 1 << 40;
const SEGMENTS_MASK: u64 = HANDLE - 1;

/// Per-segment state word: `generation << 2 | tag`.
pub(crate) const FREE: u32 = 0;
pub(crate) const LEASED: u32 = 1;
pub(crate) const RAW: u32 = 2;
const TAG_MASK: u32 = 3;
/// Generations are 30 bits and wrap.
pub(crate) const MAX_GENERATION: u32 = u32::MAX >> 2;

pub(crate) fn state(generation: u32, tag: u32) -> u32 {
    ((generation & MAX_GENERATION) << 2) | tag
}

pub(crate) fn generation_of(state: u32) -> u32 {
    state >> 2
}

/// Distinguishes managers so a raw lease is never redeemed at the wrong one.
static NEXT_MANAGER_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

pub(crate) struct Shared {
    map: MmapMut,
    base: NonNull<u8>,
    pub(crate) segment_size: usize,
    count: u32,
    pub(crate) id: u32,
    exhaustion: Exhaustion,
    pub(crate) states: Box<[AtomicU32]>,
    pub(crate) free: FreeList,
    refs: AtomicU64,
    pub(crate) counters: Counters,
    high_water: AtomicUsize,
}

// SAFETY: the arena is plain bytes; each segment is accessed only by the one holder of
// its lease (ownership is transferred through the free list's Release/Acquire CAS), and
// all shared bookkeeping is atomic.
unsafe impl Send for Shared {}
// SAFETY: as above; `&Shared` exposes only atomics and immutable configuration.
unsafe impl Sync for Shared {}

impl Shared {
    /// The bytes of segment `index`.
    pub(crate) fn segment_ptr(&self, index: u32) -> NonNull<u8> {
        debug_assert!(index < self.count);
        // SAFETY: index < count, so the offset is inside the mapping of
        // `segment_size * count` bytes, which `arena_len` proved fits in isize.
        unsafe { self.base.add(index as usize * self.segment_size) }
    }

    /// Marks a segment just taken off a free list as leased, in a new generation.
    pub(crate) fn mark_leased(&self, index: u32) {
        let slot = &self.states[index as usize];
        let g = generation_of(slot.load(Ordering::Relaxed)).wrapping_add(1);
        slot.store(state(g, LEASED), Ordering::Release);
    }

    /// Marks a leased segment free again (keeps its generation).
    pub(crate) fn mark_free(&self, index: u32) {
        let slot = &self.states[index as usize];
        let g = generation_of(slot.load(Ordering::Relaxed));
        slot.store(state(g, FREE), Ordering::Release);
    }

    /// Takes `n` segment references (segments leaving the shared list). Returns the
    /// number of segments off the list afterwards.
    pub(crate) fn acquire_segments(&self, n: usize) -> u64 {
        let before = self.refs.fetch_add(n as u64, Ordering::Relaxed);
        let out = (before & SEGMENTS_MASK) + n as u64;
        let out_usize = out as usize;
        if out_usize > self.high_water.load(Ordering::Relaxed) {
            self.high_water.fetch_max(out_usize, Ordering::Relaxed);
        }
        out
    }

    /// Pops one segment from the shared list and marks it leased.
    pub(crate) fn take_shared(&self) -> Option<u32> {
        let index = self.free.pop()?;
        self.acquire_segments(1);
        self.mark_leased(index);
        Some(index)
    }

    /// What to hand out when no segment is left: an error or a heap lease.
    pub(crate) fn on_exhausted(&self) -> Result<Lease, Exhausted> {
        self.counters.exhausted.fetch_add(1, Ordering::Relaxed);
        match self.exhaustion {
            Exhaustion::Fail => Err(Exhausted { segments: self.count as usize }),
            Exhaustion::Heap => {
                self.counters.heap_fallbacks.fetch_add(1, Ordering::Relaxed);
                Ok(Lease::heap(self.segment_size))
            }
        }
    }

    /// Frees the arena if the last reference just went. Called by whoever dropped one.
    ///
    /// # Safety
    /// `this` must point to a live `Shared` created by [`BufferManager::new`], and the
    /// caller must give up `n` references it holds; after this call it must not touch
    /// `*this` again.
    pub(crate) unsafe fn release_refs(this: NonNull<Shared>, n: u64) {
        // SAFETY: the caller holds `n` references, so `*this` is alive until the
        // fetch_sub below publishes their release.
        let prev = unsafe { this.as_ref() }.refs.fetch_sub(n, Ordering::Release);
        if prev == n {
            // Pairs with every other holder's Release: their last uses of the arena
            // happen before we free it.
            fence(Ordering::Acquire);
            // SAFETY: `refs` hit zero, so no handle, lease or cache can reach `this`
            // any more; it was created by `Box::into_raw` in `BufferManager::new`.
            drop(unsafe { Box::from_raw(this.as_ptr()) });
        }
    }

    /// Returns one leased segment (already marked free) to the shared list.
    ///
    /// # Safety
    /// As [`Shared::release_refs`] with `n = 1`: the caller gives up the segment's reference.
    pub(crate) unsafe fn give_back_shared(this: NonNull<Shared>, index: u32) {
        // SAFETY: the segment's reference keeps `*this` alive here.
        unsafe { this.as_ref() }.free.push(index);
        // SAFETY: forwarded from the caller.
        unsafe { Shared::release_refs(this, 1) };
    }
}

/// All segments were leased and the policy is [`Exhaustion::Fail`]. Nothing was taken;
/// retry after leases are dropped, or shed load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {segments} buffer segments are leased")]
pub struct Exhausted {
    /// The arena's segment count.
    pub segments: usize,
}

/// A raw lease that could not be redeemed: it was stale, already returned, or belongs
/// to another manager. Counted in [`BufferStats`]; the segment is untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RawError {
    /// The segment was already returned or redeemed with this generation.
    #[error("segment {index} generation {generation} was already returned (double return)")]
    DoubleReturn {
        /// The segment.
        index: u32,
        /// The generation in the raw lease.
        generation: u32,
    },
    /// The segment has moved on to a later generation, or was never handed out raw.
    #[error("segment {index} generation {generation} is stale")]
    Stale {
        /// The segment.
        index: u32,
        /// The generation in the raw lease.
        generation: u32,
    },
    /// The raw lease came from another manager, or names no segment of this one.
    #[error("raw lease does not belong to this buffer manager")]
    Foreign,
}

/// The arena: one page-aligned anonymous mapping cut into equal segments, leased out
/// as [`Lease`]s. The seed's `BufferManager`, except that segments come back.
///
/// A `BufferManager` is a cheap handle (clone it for each thread); the arena lives
/// until the last handle and the last lease are gone. It is `Send + Sync`; leasing from
/// many threads goes through a lock-free free list, and a thread that leases a lot can
/// use a [`LocalCache`](crate::LocalCache) to skip it.
///
/// ```
/// use berth_buf::BufferManager;
///
/// let manager = BufferManager::with_defaults()?;
/// let mut lease = manager.lease()?;
/// lease[..5].copy_from_slice(b"hello");
/// lease.set_len(5)?;
/// assert_eq!(lease.filled(), b"hello");
/// drop(lease); // the segment goes back to the arena
/// assert_eq!(manager.stats().in_use, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BufferManager {
    shared: NonNull<Shared>,
}

// SAFETY: the handle only reaches `Shared`, which is Send + Sync.
unsafe impl Send for BufferManager {}
// SAFETY: as above.
unsafe impl Sync for BufferManager {}

impl BufferManager {
    /// Maps an arena of the given shape.
    ///
    /// Errors if the shape is zero-sized, overflows, or the kernel refuses the mapping.
    pub fn new(config: BufferConfig) -> Result<BufferManager, ConfigError> {
        let len = config.arena_len()?;
        let mut options = MmapOptions::new();
        options.len(len);
        if config.prefault {
            options.populate();
        }
        let mut map = options.map_anon()?;
        let base =
            NonNull::new(map.as_mut_ptr()).ok_or_else(|| ConfigError::Map(std::io::Error::other("null mapping")))?;
        let count = config.segment_count as u32;
        let shared = Box::new(Shared {
            map,
            base,
            segment_size: config.segment_size,
            count,
            id: NEXT_MANAGER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            exhaustion: config.exhaustion,
            states: (0..count).map(|_| AtomicU32::new(state(0, FREE))).collect(),
            free: FreeList::full(count),
            refs: AtomicU64::new(HANDLE),
            counters: Counters::default(),
            high_water: AtomicUsize::new(0),
        });
        Ok(BufferManager { shared: NonNull::from(Box::leak(shared)) })
    }

    /// An arena of [`BufferConfig::new`]'s shape: 1024 segments of 4096 bytes.
    pub fn with_defaults() -> Result<BufferManager, ConfigError> {
        BufferManager::new(BufferConfig::new())
    }

    pub(crate) fn shared(&self) -> &Shared {
        // SAFETY: this handle holds a reference, so `Shared` is alive.
        unsafe { self.shared.as_ref() }
    }

    pub(crate) fn shared_ptr(&self) -> NonNull<Shared> {
        self.shared
    }

    /// Bytes per segment.
    pub fn segment_size(&self) -> usize {
        self.shared().segment_size
    }

    /// Number of segments in the arena.
    pub fn segment_count(&self) -> usize {
        self.shared().count as usize
    }

    /// Leases one segment from the shared free list.
    ///
    /// When every segment is leased, fails with [`Exhausted`] or, under
    /// [`Exhaustion::Heap`], returns a heap-backed lease.
    pub fn lease(&self) -> Result<Lease, Exhausted> {
        let shared = self.shared();
        match shared.take_shared() {
            Some(index) => Ok(Lease::arena(self.shared, index)),
            // Before giving up, take one parked in this thread's cache, if any.
            None => crate::local::take_cached(self.shared).ok_or(()).or_else(|()| shared.on_exhausted()),
        }
    }

    /// Redeems a raw lease made by [`Lease::into_raw`], taking the segment back into a
    /// [`Lease`].
    ///
    /// A raw lease can be redeemed once. A second redemption, one from an older
    /// generation, or one from another manager is refused, counted, and leaves the
    /// segment alone.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let raw = manager.lease()?.into_raw().expect("arena lease");
    /// let lease = manager.from_raw(raw)?;
    /// assert!(manager.from_raw(raw).is_err()); // already redeemed
    /// # drop(lease);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_raw(&self, raw: RawLease) -> Result<Lease, RawError> {
        self.transition_raw(raw, LEASED)?;
        Ok(Lease::arena(self.shared, raw.index))
    }

    /// Returns a raw lease's segment to the arena without redeeming it first.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let raw = manager.lease()?.into_raw().expect("arena lease");
    /// manager.release_raw(raw)?;
    /// assert!(manager.release_raw(raw).is_err()); // double return: refused and counted
    /// assert_eq!(manager.stats().double_returns, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release_raw(&self, raw: RawLease) -> Result<(), RawError> {
        self.transition_raw(raw, FREE)?;
        // SAFETY: the CAS above gave us the segment's reference; this handle keeps
        // `Shared` alive regardless.
        unsafe { Shared::give_back_shared(self.shared, raw.index) };
        Ok(())
    }

    /// Moves segment `raw.index` from `RAW(gen)` to `to(gen)`, or explains why not.
    fn transition_raw(&self, raw: RawLease, to: u32) -> Result<(), RawError> {
        let shared = self.shared();
        if raw.manager != shared.id {
            shared.counters.stale_returns.fetch_add(1, Ordering::Relaxed);
            return Err(RawError::Foreign);
        }
        let Some(slot) = shared.states.get(raw.index as usize) else {
            shared.counters.stale_returns.fetch_add(1, Ordering::Relaxed);
            return Err(RawError::Foreign);
        };
        if raw.generation > MAX_GENERATION {
            shared.counters.stale_returns.fetch_add(1, Ordering::Relaxed);
            return Err(RawError::Stale { index: raw.index, generation: raw.generation });
        }
        let expected = state(raw.generation, RAW);
        match slot.compare_exchange(expected, state(raw.generation, to), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(actual) if generation_of(actual) == raw.generation => {
                shared.counters.double_returns.fetch_add(1, Ordering::Relaxed);
                Err(RawError::DoubleReturn { index: raw.index, generation: raw.generation })
            }
            Err(_) => {
                shared.counters.stale_returns.fetch_add(1, Ordering::Relaxed);
                Err(RawError::Stale { index: raw.index, generation: raw.generation })
            }
        }
    }

    /// A snapshot of the arena's counters.
    ///
    /// `in_use` is found by reading every segment's state (a few microseconds for tens
    /// of thousands of segments), so nothing on the lease path has to count it.
    pub fn stats(&self) -> BufferStats {
        let shared = self.shared();
        let mut in_use = 0;
        let mut raw = 0;
        for slot in shared.states.iter() {
            match slot.load(Ordering::Relaxed) & TAG_MASK {
                LEASED => in_use += 1,
                RAW => raw += 1,
                _ => {}
            }
        }
        let off_list = (shared.refs.load(Ordering::Relaxed) & SEGMENTS_MASK) as usize;
        let c = &shared.counters;
        BufferStats {
            total: shared.count as usize,
            segment_size: shared.segment_size,
            in_use: in_use + raw,
            raw,
            cached: off_list.saturating_sub(in_use + raw),
            high_water: shared.high_water.load(Ordering::Relaxed),
            exhausted: c.exhausted.load(Ordering::Relaxed),
            heap_fallbacks: c.heap_fallbacks.load(Ordering::Relaxed),
            stale_returns: c.stale_returns.load(Ordering::Relaxed),
            double_returns: c.double_returns.load(Ordering::Relaxed),
        }
    }

    /// The arena's first byte and its length: for registering the whole arena with
    /// the kernel once (io_uring fixed buffers, `mlock`, `madvise`).
    pub fn arena(&self) -> (NonNull<u8>, usize) {
        let shared = self.shared();
        (shared.base, shared.map.len())
    }
}

impl Clone for BufferManager {
    fn clone(&self) -> Self {
        self.shared().refs.fetch_add(HANDLE, Ordering::Relaxed);
        BufferManager { shared: self.shared }
    }
}

impl Drop for BufferManager {
    fn drop(&mut self) {
        // SAFETY: this handle holds one HANDLE reference and never uses it again.
        unsafe { Shared::release_refs(self.shared, HANDLE) };
    }
}

impl std::fmt::Debug for BufferManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferManager")
            .field("segment_size", &self.segment_size())
            .field("segment_count", &self.segment_count())
            .field("exhaustion", &self.shared().exhaustion)
            .finish()
    }
}
