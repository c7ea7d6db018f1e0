//! [`LocalCache`]: a per-thread stash of free segments in front of the shared list.
//!
//! The cache lives in a thread-local slot while its handle lives. Leasing through the
//! handle pops the stash; a [`Lease`] dropped on the same thread finds the slot and
//! pushes its segment back, with no atomic read-modify-write at all. The stash refills
//! from and flushes to the shared list in batches (one CAS each), and a lease dropped
//! on another thread simply goes to the shared list.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::lease::Lease;
use crate::manager::{BufferManager, CACHED, Exhausted, FREE, Shared};

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
        shared.free.push_batch(&self.slots[at..]);
        self.slots.truncate(at);
    }
}

impl Drop for CacheState {
    fn drop(&mut self) {
        self.flush(self.slots.len());
    }
}

thread_local! {
    static CACHE: RefCell<Option<CacheState>> = const { RefCell::new(None) };
}

/// Puts a segment dropped on this thread into this thread's cache if the cache
/// belongs to the segment's arena. Returns false if it did not take it.
#[inline]
pub(crate) fn give_back(shared: NonNull<Shared>, index: u32) -> bool {
    CACHE
        .try_with(|cell| {
            let Ok(mut guard) = cell.try_borrow_mut() else { return false };
            let Some(cache) = guard.as_mut() else { return false };
            if cache.shared != shared {
                return false;
            }
            if cache.slots.len() == cache.slots.capacity() {
                cache.flush(cache.batch);
            }
            cache.shared().mark(index, CACHED);
            cache.slots.push(index);
            true
        })
        .unwrap_or(false)
}

/// Takes a segment from this thread's cache if it belongs to `shared`'s arena: the
/// shared path's last resort before declaring the arena exhausted.
pub(crate) fn take_cached(shared: NonNull<Shared>) -> Option<Lease> {
    CACHE
        .try_with(|cell| {
            let mut guard = cell.try_borrow_mut().ok()?;
            let cache = guard.as_mut().filter(|c| c.shared == shared)?;
            let index = cache.slots.pop()?;
            cache.shared().mark_leased(index);
            Some(Lease::arena(shared, index))
        })
        .ok()
        .flatten()
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
        let batch = batch.min(self.segment_count());
        CACHE
            .try_with(|cell| {
                let mut slot = cell.try_borrow_mut().map_err(|_| CacheError::AlreadyInstalled)?;
                if slot.is_some() {
                    return Err(CacheError::AlreadyInstalled);
                }
                *slot = Some(CacheState { shared: self.shared_ptr(), slots: Vec::with_capacity(2 * batch), batch });
                Ok(LocalCache { manager: self.clone(), _not_send: PhantomData })
            })
            .unwrap_or(Err(CacheError::AlreadyInstalled))
    }
}

impl LocalCache {
    /// Leases a segment from this thread's cache, refilling it from the shared list
    /// when empty. Exhaustion follows the manager's policy.
    #[inline]
    pub fn lease(&self) -> Result<Lease, Exhausted> {
        let from_cache = CACHE.try_with(|cell| {
            let Ok(mut guard) = cell.try_borrow_mut() else { return None };
            let cache = guard.as_mut()?;
            let index = match cache.slots.pop() {
                Some(index) => index,
                None => {
                    // SAFETY: as in `CacheState::shared`; a separate borrow so that
                    // `slots` can be filled while the arena is read.
                    let shared = unsafe { cache.shared.as_ref() };
                    let got = shared.free.pop_batch(cache.batch, &mut cache.slots);
                    if got == 0 {
                        return None;
                    }
                    for &index in &cache.slots {
                        shared.note_high_water(index);
                        shared.mark(index, CACHED);
                    }
                    cache.slots.pop()?
                }
            };
            cache.shared().mark_leased(index);
            Some(Lease::arena(cache.shared, index))
        });
        match from_cache {
            Ok(Some(lease)) => Ok(lease),
            // Empty everywhere, or the slot is unusable (thread teardown): the
            // manager's own path applies the exhaustion policy.
            _ => self.manager.lease(),
        }
    }

    /// The manager this cache serves.
    pub fn manager(&self) -> &BufferManager {
        &self.manager
    }

    /// Segments currently in the cache.
    pub fn cached(&self) -> usize {
        CACHE
            .try_with(|cell| cell.try_borrow().ok().and_then(|g| g.as_ref().map(|c| c.slots.len())).unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for LocalCache {
    fn drop(&mut self) {
        // Take the state out before the handle (and maybe the arena) goes away.
        let state = CACHE.try_with(|cell| cell.try_borrow_mut().ok().and_then(|mut g| g.take())).ok().flatten();
        drop(state);
    }
}

impl fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCache").field("cached", &self.cached()).finish()
    }
}
