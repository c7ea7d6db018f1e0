//! [`LocalCache`]: a per-thread stash of free segments in front of the shared list.
//!
//! The cache's state lives on the heap, owned by its handle, and a thread-local slot
//! points at it while the handle lives. Leasing through the handle pops the stash; a
//! [`Lease`] dropped on the same thread finds the slot and pushes its segment back,
//! with no atomic read-modify-write at all. The stash refills from and flushes to the
//! shared list in batches (one CAS each), and a lease dropped on another thread simply
//! goes to the shared list.
//!
//! The slot is a plain `Cell` of a raw pointer: const-initialised and without a
//! destructor, so reaching it is a single thread-pointer-relative load. Only code on
//! the owning thread ever follows it, none of that code calls out to user code while
//! it holds a reference, so no two references to the state ever overlap.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use crate::lease::Lease;
use crate::manager::{BufferManager, CACHED, Exhausted, FREE, Shared, thread_ordinal};

struct CacheState {
    shared: NonNull<Shared>,
    /// Free segment indices; capacity `2 * batch`, never grown.
    slots: Vec<u32>,
    batch: usize,
}

impl CacheState {
    #[inline]
    fn shared(&self) -> &Shared {
        // SAFETY: a cache state exists only while its LocalCache, which holds a
        // manager handle, lives (or that handle was leaked with it).
        unsafe { self.shared.as_ref() }
    }

    /// Moves the top `n` cached segments to the shared list.
    fn flush(&mut self, n: usize) {
        let at = self.slots.len().saturating_sub(n);
        let moved = self.slots.len() - at;
        if moved == 0 {
            return;
        }
        let shared = self.shared();
        for &index in &self.slots[at..] {
            shared.mark(index, FREE);
        }
        shared.free.push_batch(thread_ordinal(), &self.slots[at..]);
        self.slots.truncate(at);
    }

    /// Pops a cached segment, refilling a batch from the shared list if empty, and
    /// marks it leased.
    #[inline]
    fn take(&mut self) -> Option<u32> {
        let index = match self.slots.pop() {
            Some(index) => index,
            None => self.refill()?,
        };
        self.shared().mark_leased(index);
        Some(index)
    }

    #[cold]
    fn refill(&mut self) -> Option<u32> {
        // SAFETY: as in `shared`; a separate borrow so `slots` can be filled.
        let shared = unsafe { self.shared.as_ref() };
        if shared.free.pop_batch(thread_ordinal(), self.batch, &mut self.slots) == 0 {
            return None;
        }
        for &index in &self.slots {
            shared.note_high_water(index);
            shared.mark(index, CACHED);
        }
        self.slots.pop()
    }

    /// Takes back a segment dropped on this thread.
    #[inline]
    fn put(&mut self, index: u32) {
        if self.slots.len() == self.slots.capacity() {
            self.flush(self.batch);
        }
        self.shared().mark(index, CACHED);
        self.slots.push(index);
    }
}

impl Drop for CacheState {
    fn drop(&mut self) {
        self.flush(self.slots.len());
    }
}

thread_local! {
    /// This thread's cache, or null.
    static CACHE: Cell<*mut CacheState> = const { Cell::new(ptr::null_mut()) };
}

/// This thread's cache if it serves `shared`'s arena.
#[inline]
fn cache_for(shared: NonNull<Shared>) -> Option<NonNull<CacheState>> {
    let state = NonNull::new(CACHE.with(Cell::get))?;
    // SAFETY: a non-null slot points to the live state of this thread's LocalCache
    // (the handle clears the slot before freeing it); reading one field makes no
    // lasting reference.
    (unsafe { state.as_ref() }.shared == shared).then_some(state)
}

/// Puts a segment dropped on this thread into this thread's cache if the cache
/// belongs to the segment's arena. Returns false if it did not take it.
#[inline]
pub(crate) fn give_back(shared: NonNull<Shared>, index: u32) -> bool {
    let Some(mut state) = cache_for(shared) else { return false };
    // SAFETY: see the module docs: owning thread, no overlapping reference.
    unsafe { state.as_mut() }.put(index);
    true
}

/// Takes a segment from this thread's cache if it belongs to `shared`'s arena: the
/// shared path's last resort before declaring the arena exhausted.
pub(crate) fn take_cached(shared: NonNull<Shared>) -> Option<Lease> {
    let mut state = cache_for(shared)?;
    // SAFETY: see the module docs: owning thread, no overlapping reference.
    let state = unsafe { state.as_mut() };
    let index = state.slots.pop()?;
    state.shared().mark_leased(index);
    Some(Lease::arena(shared, index))
}

/// A per-thread cache of free segments for a single-thread hot path (a reactor's
/// event loop). Leases taken through it, and any lease of the same arena dropped on
/// its thread, move between the cache and the caller without touching shared atomics;
/// the cache exchanges `batch` segments at a time with the shared free list.
///
/// One cache may be installed per thread at a time; it is not `Send`. Dropping it
/// returns its segments to the shared list. Segments parked in a cache are free but
/// reachable only from its thread, so another thread can find the arena exhausted
/// while up to `2 * batch` segments per cache sit idle: size the arena with that in
/// mind.
///
/// ```
/// # let manager = berth_buf::BufferManager::with_defaults()?;
/// let cache = manager.local_cache()?;
/// let lease = cache.lease()?;
/// drop(lease); // back into this thread's cache
/// assert_eq!(manager.stats().in_use, 0);
/// drop(cache); // cached segments back to the shared list
/// assert_eq!(manager.stats().cached, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LocalCache {
    manager: BufferManager,
    state: NonNull<CacheState>,
    _not_send: PhantomData<*const ()>,
}

/// A [`LocalCache`] could not be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// This thread already has a local cache; drop it first.
    #[error("this thread already has a local buffer cache")]
    AlreadyInstalled,
    /// The batch size must be at least 1.
    #[error("local cache batch size is 0")]
    ZeroBatch,
}

impl BufferManager {
    /// Installs a [`LocalCache`] on this thread that moves 32 segments at a time.
    pub fn local_cache(&self) -> Result<LocalCache, CacheError> {
        self.local_cache_with_batch(32)
    }

    /// Installs a [`LocalCache`] that moves `batch` segments at a time and holds up
    /// to `2 * batch`.
    pub fn local_cache_with_batch(&self, batch: usize) -> Result<LocalCache, CacheError> {
        if batch == 0 {
            return Err(CacheError::ZeroBatch);
        }
        if !CACHE.with(Cell::get).is_null() {
            return Err(CacheError::AlreadyInstalled);
        }
        let batch = batch.min(self.segment_count());
        let state = Box::new(CacheState { shared: self.shared_ptr(), slots: Vec::with_capacity(2 * batch), batch });
        let state = NonNull::from(Box::leak(state));
        CACHE.with(|slot| slot.set(state.as_ptr()));
        Ok(LocalCache { manager: self.clone(), state, _not_send: PhantomData })
    }
}

impl LocalCache {
    /// Leases a segment from this thread's cache, refilling it from the shared list
    /// when empty. Exhaustion follows the manager's policy.
    #[inline]
    pub fn lease(&self) -> Result<Lease, Exhausted> {
        let mut state = self.state;
        // SAFETY: see the module docs: owning thread (the handle is not Send), no
        // overlapping reference.
        match unsafe { state.as_mut() }.take() {
            Some(index) => Ok(Lease::arena(self.manager.shared_ptr(), index)),
            // Empty everywhere: the manager's own path applies the exhaustion policy.
            None => self.manager.lease(),
        }
    }

    /// The manager this cache serves.
    pub fn manager(&self) -> &BufferManager {
        &self.manager
    }

    /// Segments currently in the cache.
    pub fn cached(&self) -> usize {
        // SAFETY: as in `lease`.
        unsafe { self.state.as_ref() }.slots.len()
    }
}

impl Drop for LocalCache {
    fn drop(&mut self) {
        // Unhook the slot first so no lease drop can reach the state being freed.
        let _ = CACHE.try_with(|slot| {
            if slot.get() == self.state.as_ptr() {
                slot.set(ptr::null_mut());
            }
        });
        // SAFETY: made by `Box::leak` in `local_cache_with_batch`, freed only here;
        // the slot no longer points to it. Dropping it flushes the segments.
        drop(unsafe { Box::from_raw(self.state.as_ptr()) });
    }
}

impl fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCache").field("cached", &self.cached()).finish()
    }
}
