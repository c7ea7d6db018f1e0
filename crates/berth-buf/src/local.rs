//! The per-thread segment cache (a "magazine", as in tcmalloc and jemalloc) in front
//! of the shared free list, and [`LocalCache`], the handle that pins it to one arena.
//!
//! Every thread has one magazine: a small stack of free segment indices of one arena.
//! [`BufferManager::lease`] pops from it and a [`Lease`] dropped on the thread pushes
//! to it, with plain loads and stores and no atomic read-modify-write; it refills from
//! and flushes to the shared list a batch at a time (one CAS each). It lives in a
//! const-initialised thread-local without a destructor, so reaching it is a
//! thread-pointer-relative access; a separate guard with a destructor, registered when
//! the magazine is first bound, flushes it when the thread exits.
//!
//! A pop or push touches nothing but the magazine: not the segment's state word. A
//! segment keeps the `LEASED` state it was given when it left the shared list for as
//! long as it moves between this thread's magazine and its leases, and the magazine's
//! count of segments held is an atomic (stored with plain relaxed stores) that the
//! arena can read: a bound magazine registers it with the arena, and
//! [`BufferManager::stats`] subtracts the registered counts from the `LEASED` states
//! to tell leases from cached segments. Refills and flushes, which do write state
//! words, run inside the count's sequence number (a seqlock whose only writer is the
//! owning thread), so `stats` never pairs state words and counts from either side of
//! one.
//!
//! Writing the state word on every pop and push cost more than a third of the
//! lease-and-return time (`buf/lease_return/local`: 7.7 ns with it, 4.9 ns without,
//! on the project's 2-core test VM). For the same reason the inlined return path
//! passes nothing by reference to its out-of-line fallbacks, so neither the lease nor
//! the magazine handle is spilled to memory on the way.
//!
//! # Binding and the arena's lifetime
//!
//! A bound magazine holds a counted manager handle, so the arena cannot be freed while
//! a magazine refers to it: no magazine ever touches freed memory, by construction.
//! The magazine lets go (flushes its segments to the shared list, then gives up the
//! handle — possibly the last, which frees the arena) when the thread exits, when a
//! [`LocalCache`] of another arena is installed on the thread or the one pinning it is
//! dropped, when the thread has leased `MISS_LIMIT` times from other arenas, or when
//! the thread drops the last other handle. An arena whose last user handle is dropped
//! on another thread stays mapped until then.
//!
//! # How much it holds
//!
//! Segments in a magazine are free but reachable only from its thread (stats count
//! them as `cached`). A magazine bound implicitly, by [`BufferManager::lease`], holds at
//! most `segment_count / 64` segments, at most 32, and arenas of fewer than 256
//! segments get none; implicit magazines of one arena reserve their capacity from a
//! budget of an eighth of the arena, and a thread that finds it spent uses the shared
//! list. A [`LocalCache`] holds up to `2 * batch`.
//!
//! When a lease finds the arena exhausted, every magazine serving it gives all its
//! segments back at its next return (one relaxed load per return notices), so only
//! the caches of idle threads stay stranded.
//!
//! # Aliasing
//!
//! The magazine is reached as `&mut` only inside `tls::with`, by code on its own
//! thread that never calls back into user code or into `tls::with` while it holds
//! the reference, so no two references to it ever overlap.

use std::fmt;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use crate::lease::Lease;
use crate::manager::{BufferManager, CacheCount, Exhausted, FREE, Shared, thread_ordinal};

/// Most segments one magazine holds: a [`LocalCache`]'s `2 * batch`, batch at most 64.
const MAX_HELD: usize = 128;
const _: () = assert!(MAX_HELD.is_power_of_two());
/// Most segments an implicitly bound magazine holds.
const IMPLICIT_MAX: usize = 32;
/// Leases from other arenas after which an implicitly bound magazine moves over.
const MISS_LIMIT: u32 = 64;

/// How many segments an implicitly bound magazine may hold for an arena of `count`
/// segments: 0 (none) for small arenas, so a thread never strands a large share.
fn implicit_cap(count: usize) -> usize {
    if cfg!(loom) {
        // Small arenas keep loom's state space small; the logic is the same.
        return count.min(4);
    }
    match (count / 64).min(IMPLICIT_MAX) {
        cap if cap < 4 => 0,
        cap => cap,
    }
}

pub(crate) struct Magazine {
    /// The arena served (one counted handle held), or null.
    shared: *const Shared,
    // The number of segments held (`slots[..len]`, the most recently returned on top)
    // is not here but beside the magazine in the thread-local (`Mag::held`), where the
    // arena can read it without touching the magazine.
    /// Most segments held before a batch is flushed; at most [`MAX_HELD`].
    cap: usize,
    /// Segments moved per refill or flush; at most `cap / 2`, at least 1.
    batch: usize,
    /// Leases on this thread from other arenas since binding.
    misses: u32,
    /// A [`LocalCache`] owns the binding: only it (or the thread's exit) unbinds.
    pinned: bool,
    /// Segments of the arena's implicit-cache budget this (implicit) binding reserved.
    reserved: usize,
    /// The arena's exhaustion count when this magazine last gave everything back.
    seen_exhausted: u64,
    /// The thread is exiting and the magazine was flushed: never bind again.
    dead: bool,
    slots: [u32; MAX_HELD],
}

impl Magazine {
    const EMPTY: Magazine = Magazine {
        shared: ptr::null(),
        cap: 0,
        batch: 0,
        misses: 0,
        pinned: false,
        reserved: 0,
        seen_exhausted: 0,
        dead: false,
        slots: [0; MAX_HELD],
    };

    #[inline(always)]
    fn serves(&self, shared: NonNull<Shared>) -> bool {
        ptr::eq(self.shared, shared.as_ptr())
    }

    /// The bound arena. Only called while bound.
    #[inline(always)]
    fn arena(&self) -> &Shared {
        debug_assert!(!self.shared.is_null());
        // SAFETY: while bound, the magazine holds a counted handle, so `Shared` lives.
        unsafe { &*self.shared }
    }
}

/// A thread's magazine together with its count of segments held: what `tls::with`
/// hands out. The count is an atomic beside the magazine, not in it, so that the
/// arena reads it through a shared reference while this thread holds `&mut Magazine`.
pub(crate) struct Mag<'a> {
    m: &'a mut Magazine,
    held: &'a CacheCount,
}

impl std::ops::Deref for Mag<'_> {
    type Target = Magazine;

    #[inline(always)]
    fn deref(&self) -> &Magazine {
        self.m
    }
}

impl std::ops::DerefMut for Mag<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Magazine {
        self.m
    }
}

impl Mag<'_> {
    /// Segments held. Only this thread writes the count, so a relaxed load reads its
    /// own last store.
    #[inline(always)]
    fn len(&self) -> usize {
        self.held.len()
    }

    /// A plain store: other threads only read the count, for statistics.
    #[inline(always)]
    fn set_len(&self, len: usize) {
        self.held.set_len(len);
    }

    /// Pops a segment of `shared`, if bound to it and not empty. The segment's state
    /// word already says `LEASED` (see the module docs).
    #[inline(always)]
    fn take(&mut self, shared: NonNull<Shared>) -> Option<u32> {
        if !self.serves(shared) {
            return None;
        }
        let len = self.len().checked_sub(1)?;
        // len < MAX_HELD, a power of two: the mask changes nothing and spares a
        // bounds check.
        let index = self.slots[len % MAX_HELD];
        self.set_len(len);
        Some(index)
    }

    /// Takes back a segment of `shared` dropped on this thread; false if the
    /// magazine serves another arena (the caller returns it to the shared list).
    #[inline(always)]
    fn put(&mut self, shared: NonNull<Shared>, index: u32) -> bool {
        if !self.serves(shared) {
            return false;
        }
        // SAFETY: the magazine serves `shared`, so its handle keeps it alive. (Through
        // the argument, not `self.shared`: no reload after the slot store.)
        let arena = unsafe { shared.as_ref() };
        let len = self.len();
        if len < self.cap && arena.exhaustions() == self.seen_exhausted {
            // len < cap <= MAX_HELD, a power of two: the mask changes nothing and
            // spares a bounds check.
            self.slots[len % MAX_HELD] = index;
            self.set_len(len + 1);
        } else {
            // By value (two registers), so the fast path never spills `self` to memory.
            self.reborrow().put_full(index);
        }
        true
    }

    #[inline(always)]
    fn reborrow(&mut self) -> Mag<'_> {
        Mag { m: self.m, held: self.held }
    }

    /// The magazine is full, or a lease found the arena exhausted since it last
    /// looked: then the manager wants its segments, and they all go back, this one too.
    #[cold]
    fn put_full(mut self, index: u32) {
        let exhaustions = self.arena().exhaustions();
        if exhaustions != self.seen_exhausted {
            self.seen_exhausted = exhaustions;
            self.flush(self.len());
            let s = self.arena();
            s.mark(index, FREE);
            s.give_back_shared(index);
            return;
        }
        self.flush(self.batch);
        let len = self.len();
        if let Some(slot) = self.slots.get_mut(len) {
            *slot = index;
            self.set_len(len + 1);
        } else {
            // Unreachable (a flush makes room), but never lose a segment.
            let s = self.arena();
            s.mark(index, FREE);
            s.give_back_shared(index);
        }
    }

    /// Refills an empty magazine with up to a batch from the shared list, marking
    /// each segment leased to this thread; false if the list had none.
    #[cold]
    fn refill(&mut self) -> bool {
        debug_assert_eq!(self.len(), 0);
        // SAFETY: as in `arena`; a separate borrow so `slots` can be filled.
        let shared = unsafe { &*self.shared };
        let want = self.batch.clamp(1, MAX_HELD);
        let (held, slots) = (self.held, &mut self.m.slots);
        held.changing(|| {
            let got = shared.free.pop_batch(thread_ordinal(), &mut slots[..want]);
            for &index in &slots[..got] {
                shared.note_high_water(index);
                shared.mark_leased(index);
            }
            held.set_len(got);
            got > 0
        })
    }

    /// Moves the `n` oldest segments (the bottom of the stack, the coldest) to the
    /// shared list with one CAS.
    fn flush(&mut self, n: usize) {
        let len = self.len();
        let n = n.min(len);
        if n == 0 {
            return;
        }
        // SAFETY: as in `arena`; a separate borrow so `slots` can be shifted.
        let shared = unsafe { &*self.shared };
        let (held, slots) = (self.held, &mut self.m.slots);
        held.changing(|| {
            // Marked free before the push: once pushed, another thread may lease them.
            for &index in &slots[..n] {
                shared.mark(index, FREE);
            }
            shared.free.push_batch(thread_ordinal(), &slots[..n]);
            slots.copy_within(n..len, 0);
            held.set_len(len - n);
        });
    }

    /// Serves `manager`'s arena from now on, holding up to `cap` segments. Flushes and
    /// lets go of the previous arena first. False if the thread is exiting, or if an
    /// implicit binding would take the arena's implicit caches over their budget.
    fn bind(&mut self, manager: &BufferManager, cap: usize, batch: usize, pinned: bool) -> bool {
        if self.dead || !tls::flush_at_exit() {
            self.dead = true;
            return false;
        }
        let cap = cap.clamp(2, MAX_HELD);
        let batch = batch.clamp(1, cap / 2);
        let shared = manager.shared();
        // Pinned caches are sized by their owner; implicit ones share a budget.
        let reserve = if pinned { 0 } else { cap };
        if self.serves(manager.shared_ptr()) {
            if reserve > 0 && !shared.reserve_implicit(reserve) {
                return false;
            }
            shared.unreserve_implicit(std::mem::take(&mut self.reserved));
        } else {
            if reserve > 0 && !shared.reserve_implicit(reserve) {
                return false;
            }
            self.unbind();
            // The caller's handle keeps the count above 0; this one is ours.
            shared.acquire_handle();
            shared.register_cache(self.held);
            self.shared = manager.shared_ptr().as_ptr();
        }
        self.reserved = reserve;
        self.seen_exhausted = shared.exhaustions();
        self.cap = cap;
        self.batch = batch;
        self.pinned = pinned;
        self.misses = 0;
        let len = self.len();
        if len > cap {
            self.flush(len - cap);
        }
        true
    }

    /// Flushes every segment and gives up the handle: afterwards the magazine serves
    /// nothing and holds no reference to any arena.
    fn unbind(&mut self) {
        let Some(shared) = NonNull::new(self.shared.cast_mut()) else { return };
        self.flush(self.len());
        let reserved = std::mem::take(&mut self.reserved);
        self.arena().unreserve_implicit(reserved);
        self.arena().unregister_cache(self.held);
        self.shared = ptr::null();
        self.set_len(0);
        self.cap = 0;
        self.pinned = false;
        // SAFETY: the handle taken in `bind`, given up once; the pointer was cleared
        // above, so the magazine never touches the arena again.
        unsafe { Shared::release_handle(shared) };
    }

    /// The thread is exiting: let go and stay unbound.
    fn retire(&mut self) {
        self.unbind();
        self.dead = true;
    }
}

/// Where the magazine lives: std's thread-locals normally, loom's under `--cfg loom`
/// (loom runs its threads on one OS thread, so std's would be shared by all of them).
#[cfg(not(loom))]
mod tls {
    use std::cell::UnsafeCell;

    use super::{Mag, Magazine};
    use crate::manager::CacheCount;

    /// The magazine and, beside it, its count of segments held (see [`Mag`]).
    struct Local {
        magazine: UnsafeCell<Magazine>,
        held: CacheCount,
    }

    thread_local! {
        // No destructor: a const thread-local without one is reached with no
        // lazy-initialisation or registration check.
        static LOCAL: Local = const {
            Local { magazine: UnsafeCell::new(Magazine::EMPTY), held: CacheCount::new() }
        };
        // Flushes the magazine when the thread exits; registered on first bind.
        static GUARD: Guard = const { Guard };
    }

    struct Guard;

    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: thread exit: no other reference to this thread's magazine is live.
            LOCAL.with(|l| Mag { m: unsafe { &mut *l.magazine.get() }, held: &l.held }.retire());
        }
    }

    /// Runs `f` on this thread's magazine. `f` must not call `with` again.
    #[inline(always)]
    pub(super) fn with<R>(f: impl FnOnce(&mut Mag<'_>) -> R) -> Option<R> {
        // SAFETY: this thread's own magazine; see the module docs on aliasing.
        Some(LOCAL.with(|l| f(&mut Mag { m: unsafe { &mut *l.magazine.get() }, held: &l.held })))
    }

    /// Makes sure the magazine is flushed when the thread exits; false if the thread
    /// is already exiting (its guard has run).
    pub(super) fn flush_at_exit() -> bool {
        GUARD.try_with(|_| ()).is_ok()
    }
}

#[cfg(loom)]
mod tls {
    use std::cell::UnsafeCell;

    use super::{Mag, Magazine};
    use crate::manager::CacheCount;

    /// Loom drops a thread's locals when the thread ends, so the magazine flushes
    /// itself instead of through a guard.
    struct Slot {
        magazine: UnsafeCell<Magazine>,
        held: CacheCount,
    }

    impl Drop for Slot {
        fn drop(&mut self) {
            Mag { m: self.magazine.get_mut(), held: &self.held }.retire();
        }
    }

    loom::thread_local! {
        static MAGAZINE: Slot = Slot { magazine: UnsafeCell::new(Magazine::EMPTY), held: CacheCount::new() };
    }

    pub(super) fn with<R>(f: impl FnOnce(&mut Mag<'_>) -> R) -> Option<R> {
        // SAFETY: this thread's own magazine; see the module docs on aliasing.
        MAGAZINE.try_with(|s| f(&mut Mag { m: unsafe { &mut *s.magazine.get() }, held: &s.held })).ok()
    }

    pub(super) fn flush_at_exit() -> bool {
        true
    }
}

/// Flushes and unbinds this thread's magazine as its exit does. Loom's `join` returns
/// before the joined thread's locals are dropped (std's waits), so loom models call
/// this at the end of a thread to make its exit flush visible to the joiner.
#[cfg(all(test, loom))]
pub(crate) fn exit_now() {
    tls::with(|m| m.retire());
}

/// Takes a segment of `shared` from this thread's magazine: the lease fast path.
#[inline(always)]
pub(crate) fn take(shared: NonNull<Shared>) -> Option<u32> {
    tls::with(|m| m.take(shared)).flatten()
}

/// The lease slow path: refills the magazine if it serves `manager`'s arena, or binds
/// it (if the arena is large enough and the magazine is free to move), then takes one.
/// `None` means "use the shared list".
pub(crate) fn take_slow(manager: &BufferManager) -> Option<u32> {
    let shared = manager.shared_ptr();
    tls::with(|m| {
        if !m.serves(shared) {
            if m.pinned || m.dead {
                return None;
            }
            let cap = implicit_cap(manager.segment_count());
            if cap == 0 {
                return None;
            }
            if !m.shared.is_null() {
                m.misses += 1;
                if m.misses < MISS_LIMIT {
                    return None;
                }
            }
            if !m.bind(manager, cap, cap / 2, false) {
                return None;
            }
        }
        if m.len() == 0 && !m.refill() {
            return None;
        }
        m.take(shared)
    })
    .flatten()
}

/// Called as a manager handle is dropped: if this thread's implicit magazine holds the
/// only other handle, flush it, and if that brings every segment home, unbind it too,
/// so the caller's release is the last and frees the arena now. If a lease is still
/// out, the magazine keeps its handle: the arena is freed when the thread exits, if
/// every segment is home by then, instead of leaked.
///
/// With exactly two handles, the caller's and this thread's magazine's, no other thread
/// holds one to clone, release or pop with, so the count cannot change meanwhile and
/// the shared list can only grow.
pub(crate) fn let_go_if_last(manager: &BufferManager) {
    let shared = manager.shared_ptr();
    tls::with(|m| {
        if m.serves(shared) && !m.pinned && manager.shared().handle_count() == 2 {
            m.flush(m.len());
            if manager.shared().free.len_quiescent() == manager.segment_count() {
                m.unbind();
            }
        }
    });
}

/// Puts a segment dropped on this thread into this thread's magazine if it serves the
/// segment's arena. Returns false if it did not take it.
#[inline(always)]
pub(crate) fn give_back(shared: NonNull<Shared>, index: u32) -> bool {
    tls::with(|m| m.put(shared, index)).unwrap_or(false)
}

/// A per-thread cache of free segments for a single-thread hot path (a reactor's
/// event loop): this thread's segment cache, pinned to one arena and sized by the
/// caller. Leases taken through it or through [`BufferManager::lease`] on this
/// thread, and any lease of the same arena dropped on this thread, move between the
/// cache and the caller without shared atomics; the cache exchanges `batch` segments
/// at a time with the shared free list.
///
/// Without one, [`BufferManager::lease`] caches a few segments per thread anyway for
/// arenas of 256 segments or more; a `LocalCache` makes the cache larger and keeps it
/// on this arena.
///
/// One cache may be installed per thread at a time; it is not `Send`. Dropping it
/// returns its segments to the shared list. Segments parked in a cache are free but
/// reachable only from its thread, so another thread can find the arena exhausted
/// while up to `2 * batch` segments per cache sit idle: size the arena with that in
/// mind. After such an exhaustion, a cache gives all its segments back at its next
/// return, so a retry finds those of every active thread.
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
///
/// ```
/// use berth_buf::CacheError;
/// # let manager = berth_buf::BufferManager::with_defaults()?;
///
/// assert_eq!(manager.local_cache_with_batch(0).unwrap_err(), CacheError::ZeroBatch);
/// let cache = manager.local_cache()?;
/// assert_eq!(manager.local_cache().unwrap_err(), CacheError::AlreadyInstalled);
/// # drop(cache);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// This thread already has a local cache; drop it first.
    #[error("this thread already has a local buffer cache")]
    AlreadyInstalled,
    /// The batch size must be at least 1.
    #[error("local cache batch size is 0")]
    ZeroBatch,
    /// The thread is exiting (its thread-local storage is being torn down).
    #[error("this thread is exiting")]
    ThreadExiting,
}

impl BufferManager {
    /// Installs a [`LocalCache`] on this thread that moves 32 segments at a time.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let cache = manager.local_cache()?;
    /// assert!(manager.local_cache().is_err()); // one per thread
    /// # drop(cache);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn local_cache(&self) -> Result<LocalCache, CacheError> {
        self.local_cache_with_batch(32)
    }

    /// Installs a [`LocalCache`] that moves `batch` segments at a time and holds up
    /// to `2 * batch`. The batch is capped at 64 and at the arena's segment count.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let cache = manager.local_cache_with_batch(8)?;
    /// let lease = cache.lease()?;
    /// assert_eq!(cache.cached(), 7); // one batch came over, one is leased
    /// # drop(lease);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn local_cache_with_batch(&self, batch: usize) -> Result<LocalCache, CacheError> {
        if batch == 0 {
            return Err(CacheError::ZeroBatch);
        }
        let batch = batch.min(MAX_HELD / 2).min(self.segment_count());
        tls::with(|m| {
            if m.pinned {
                Err(CacheError::AlreadyInstalled)
            } else if m.bind(self, 2 * batch, batch, true) {
                Ok(())
            } else {
                Err(CacheError::ThreadExiting)
            }
        })
        .unwrap_or(Err(CacheError::ThreadExiting))?;
        Ok(LocalCache { manager: self.clone(), _not_send: PhantomData })
    }
}

impl LocalCache {
    /// Leases a segment from this thread's cache, refilling it from the shared list
    /// when empty. Exhaustion follows the manager's policy.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let cache = manager.local_cache()?;
    /// let mut lease = cache.lease()?;
    /// lease[0] = 1;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn lease(&self) -> Result<Lease, Exhausted> {
        // The thread's cache is pinned to this arena, so the manager's path finds it.
        self.manager.lease()
    }

    /// The manager this cache serves.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let cache = manager.local_cache()?;
    /// let lease = cache.lease()?;
    /// assert_eq!(cache.manager().stats().in_use, 1); // the same arena
    /// # drop(lease);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn manager(&self) -> &BufferManager {
        &self.manager
    }

    /// Segments currently in the cache.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let cache = manager.local_cache_with_batch(4)?;
    /// let lease = cache.lease()?; // a batch of 4 comes over, one is leased
    /// assert_eq!(cache.cached(), 3);
    /// drop(lease); // back into the cache, not the shared list
    /// assert_eq!(cache.cached(), 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cached(&self) -> usize {
        let shared = self.manager.shared_ptr();
        tls::with(|m| if m.pinned && m.serves(shared) { m.len() } else { 0 }).unwrap_or(0)
    }
}

impl Drop for LocalCache {
    fn drop(&mut self) {
        let shared = self.manager.shared_ptr();
        // Unpinned and flushed unless the thread's exit already did it.
        tls::with(|m| {
            if m.pinned && m.serves(shared) {
                m.unbind();
            }
        });
    }
}

impl fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCache").field("cached", &self.cached()).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::mpsc;

    use crate::manager::FREED;
    use crate::{BufferConfig, BufferManager};

    fn freed(id: u32) -> bool {
        FREED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&id)
    }

    fn arena() -> BufferManager {
        BufferManager::new(BufferConfig::new().segment_size(64).segment_count(1024)).unwrap()
    }

    /// The last user handle goes while another thread's cache holds segments: the
    /// cache's own handle keeps the arena mapped, and the thread's exit flushes the
    /// segments and frees it.
    #[test]
    fn manager_dropped_while_a_thread_cache_holds_segments() {
        let m = arena();
        let id = m.shared().id;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let m2 = m.clone();
        let t = std::thread::spawn(move || {
            let leases: Vec<_> = (0..10).map(|_| m2.lease().unwrap()).collect();
            let kept = m2.lease().unwrap();
            drop(leases); // into this thread's cache
            let shared = m2.shared_ptr();
            drop(m2);
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            // No user handle is left; the cache still serves the arena and this lease
            // (dropped into it) still points into mapped memory.
            let mut kept = kept;
            kept.fill(9);
            drop(kept);
            assert!(super::tls::with(|m| m.serves(shared)).unwrap());
        });
        ready_rx.recv().unwrap();
        drop(m);
        assert!(!freed(id), "freed while a cache held segments");
        go_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(freed(id), "the thread's exit should flush its cache and free the arena");
    }

    /// A cache lets go of an arena when the thread moves to another one, and the last
    /// handle it held frees the arena there and then.
    #[test]
    fn moving_to_another_arena_releases_the_old_one() {
        let a = arena();
        let id = a.shared().id;
        drop(a.lease().unwrap());
        // The last user handle goes on another thread: this thread's cache keeps it.
        std::thread::spawn(move || drop(a)).join().unwrap();
        assert!(!freed(id), "this thread's cache still holds segments of `a`");
        let b = arena();
        for _ in 0..super::MISS_LIMIT {
            drop(b.lease().unwrap());
        }
        assert!(freed(id));
    }

    /// Implicit caches give their share of the budget back when they let go, and a
    /// LocalCache taking a thread's cache over returns it too.
    #[test]
    fn the_implicit_budget_comes_back() {
        let m = arena();
        let budget = || m.shared().implicit_budget.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(budget(), 128);
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || drop(m.lease().unwrap()))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(budget(), 128);
        drop(m.lease().unwrap());
        assert_eq!(budget(), 128 - 16);
        let cache = m.local_cache().unwrap();
        assert_eq!(budget(), 128);
        drop(cache);
        assert_eq!(budget(), 128);
    }

    /// Segments move between a thread's cache and its leases without their state
    /// words changing; `stats` on another thread still tells leases from cached
    /// segments, through the counts the caches register, and a thread's exit takes
    /// its count off the list.
    #[test]
    fn stats_from_another_thread_see_each_cache_and_each_lease() {
        let m = arena();
        let (report_tx, report_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let m2 = m.clone();
        let t = std::thread::spawn(move || {
            let cache = m2.local_cache_with_batch(8).unwrap();
            let mut leases: Vec<_> = (0..12).map(|_| cache.lease().unwrap()).collect();
            leases.truncate(3); // nine back into the cache
            report_tx.send(cache.cached()).unwrap();
            go_rx.recv().unwrap();
            drop(leases);
            report_tx.send(cache.cached()).unwrap();
            go_rx.recv().unwrap();
            drop(cache);
        });
        let cached = report_rx.recv().unwrap();
        assert!(cached >= 9, "the nine returned leases went into the cache");
        let s = m.stats();
        assert_eq!((s.in_use, s.cached), (3, cached));
        go_tx.send(()).unwrap();
        let cached = report_rx.recv().unwrap();
        let s = m.stats();
        assert_eq!((s.in_use, s.cached), (0, cached));
        assert_eq!(s.free() + s.cached, s.total);
        go_tx.send(()).unwrap();
        t.join().unwrap();
        let s = m.stats();
        assert_eq!((s.in_use, s.cached, s.free()), (0, 0, s.total));
        assert_eq!(m.shared().registered_caches(), 0, "the exited thread's count is off the list");
    }

    /// The user's last handle, dropped on the thread whose cache serves the arena,
    /// flushes that cache and frees the arena at once.
    #[test]
    fn the_last_handle_on_the_caching_thread_frees_the_arena() {
        let m = arena();
        let id = m.shared().id;
        let held: Vec<_> = (0..20).map(|_| m.lease().unwrap()).collect();
        drop(held);
        assert!(m.stats().cached > 0);
        drop(m);
        assert!(freed(id));
        // A lease still out keeps it mapped instead, and this thread's cache keeps a
        // handle, so the arena is freed at the thread's exit once the lease is back.
        let id = std::thread::spawn(|| {
            let m = arena();
            let id = m.shared().id;
            let kept = m.lease().unwrap();
            drop(m.lease().unwrap());
            drop(m);
            assert!(!freed(id));
            drop(kept); // into this thread's cache, which still serves the arena
            assert!(!freed(id));
            id
        })
        .join()
        .unwrap();
        assert!(freed(id));
    }

    /// The user's last handle frees the arena at once when no cache holds it.
    #[test]
    fn an_unused_arena_is_freed_with_its_last_handle() {
        let m = arena();
        let id = m.shared().id;
        let m2 = m.clone();
        std::thread::spawn(move || drop(m2.lease().unwrap())).join().unwrap();
        drop(m);
        assert!(freed(id));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use crate::manager::FREED;
    use crate::{BufferConfig, BufferManager};

    fn freed(id: u32) -> bool {
        FREED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&id)
    }

    fn arena() -> BufferManager {
        BufferManager::new(BufferConfig::new().segment_size(64).segment_count(3)).unwrap()
    }

    /// A thread leases and returns through its cache, gives up its handle and exits
    /// (flushing the cache) while the main thread drops the last user handle: the
    /// arena is freed exactly once, after both, whatever the interleaving.
    #[test]
    fn exit_flush_races_the_last_user_handle() {
        loom::model(|| {
            let m = arena();
            let id = m.shared().id;
            let m2 = m.clone();
            let t = loom::thread::spawn(move || {
                let a = m2.lease().unwrap();
                let b = m2.lease().unwrap();
                drop(a);
                drop(m2);
                drop(b); // into the cache of an arena with no user handle on this thread
                super::exit_now();
            });
            drop(m);
            t.join().unwrap();
            assert!(freed(id));
        });
    }

    /// A lease taken through one thread's cache is dropped on another thread while
    /// the first exits: the segment goes to the shared list, the cache flushes, and
    /// every segment ends up home exactly once.
    #[test]
    fn cross_thread_drop_races_the_cache_flush() {
        loom::model(|| {
            let m = arena();
            let id = m.shared().id;
            let m2 = m.clone();
            let (tx, rx) = loom::sync::mpsc::channel();
            let t = loom::thread::spawn(move || {
                let a = m2.lease().unwrap();
                tx.send(a).unwrap();
                drop(m2.lease().unwrap());
                super::exit_now();
            });
            let a = rx.recv().unwrap();
            drop(a); // this thread has no cache for the arena: the shared list
            t.join().unwrap();
            let s = m.stats();
            assert_eq!((s.in_use, s.cached, s.free()), (0, 0, 3));
            drop(m);
            assert!(freed(id));
        });
    }

    /// A lease on one thread finds the arena exhausted while another thread's cache
    /// holds a segment: that cache gives everything back at its next return, and the
    /// first thread's retry gets both.
    #[test]
    fn exhaustion_calls_a_cache_home() {
        loom::model(|| {
            let m = arena();
            let m2 = m.clone();
            let (ready_tx, ready_rx) = loom::sync::mpsc::channel();
            let (go_tx, go_rx) = loom::sync::mpsc::channel();
            let t = loom::thread::spawn(move || {
                let a = m2.lease().unwrap();
                drop(m2.lease().unwrap()); // parked in this thread's cache
                ready_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                drop(a); // sees the exhaustion: everything goes back
                super::exit_now();
            });
            ready_rx.recv().unwrap();
            let mine = m.lease().unwrap();
            assert!(m.lease().is_err(), "one segment leased, one cached elsewhere");
            go_tx.send(()).unwrap();
            t.join().unwrap();
            let more: Vec<_> = std::iter::from_fn(|| m.lease().ok()).collect();
            assert_eq!(more.len(), 2);
            drop((mine, more));
        });
    }

    /// Two threads lease and return through their own caches: a segment is never
    /// handed to both.
    #[test]
    fn two_caches_never_share_a_segment() {
        loom::model(|| {
            let m = arena();
            let m2 = m.clone();
            let t = loom::thread::spawn(move || {
                let mut l = m2.lease().unwrap();
                l[0] = 1;
                drop(l);
                super::exit_now();
            });
            let m3 = m.clone();
            let u = loom::thread::spawn(move || {
                let mut l = m3.lease().unwrap();
                l[0] = 2;
                super::exit_now();
                l
            });
            t.join().unwrap();
            let held = u.join().unwrap();
            assert_eq!(held[0], 2);
            drop(held);
            let s = m.stats();
            assert_eq!((s.in_use, s.cached), (0, 0));
        });
    }

    /// `stats` on one thread while another refills its cache, returns a lease into
    /// it and flushes it at exit: the caches' segments are never counted as in use.
    /// (Reading the state words and the caches' counts without the count's sequence
    /// number can pair "leased" words read before a flush with a count read after it:
    /// two phantom leases here.)
    #[test]
    fn stats_never_count_a_flushing_cache_as_in_use() {
        // `stats` reads every state word (padding included), each a point where loom
        // may switch threads: bound the preemptions so the model finishes in seconds.
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            // Four segments: the thread's cache holds up to 4 and refills 2 at a time.
            let m = BufferManager::new(BufferConfig::new().segment_size(64).segment_count(4)).unwrap();
            let m2 = m.clone();
            let t = loom::thread::spawn(move || {
                drop(m2.lease().unwrap()); // a refill of two, one back into the cache
                super::exit_now(); // both flushed to the shared list
            });
            let s = m.stats();
            assert!(s.in_use <= 1, "at most one lease was ever out: {s:?}");
            assert_eq!(s.in_use + s.cached + s.free(), s.total);
            t.join().unwrap();
            let s = m.stats();
            assert_eq!((s.in_use, s.cached), (0, 0));
        });
    }
}
