//! [`Lease`]: one segment of the arena (or a heap fallback), returned on drop.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use crate::local;
use crate::loom::Ordering;
use crate::manager::{FREE, RAW, Shared, state};

/// Where a lease's bytes live and where they go back to, decoded from its fields.
#[derive(Clone, Copy)]
enum Home {
    Arena { shared: NonNull<Shared>, index: u32 },
    Heap { bytes: NonNull<u8>, capacity: usize },
}

/// Decodes a lease's `origin` and `word` fields.
#[inline(always)]
fn home_of(origin: NonNull<u8>, word: u32) -> Home {
    if origin.addr().get() & HEAP_TAG == 0 {
        Home::Arena { shared: origin.cast(), index: word }
    } else {
        // SAFETY: clearing the tag bit of a non-null, 2-aligned address leaves it non-zero.
        let bytes = origin.map_addr(|a| unsafe { std::num::NonZero::new_unchecked(a.get() & !HEAP_TAG) });
        Home::Heap { bytes, capacity: word as usize }
    }
}

/// Low bit of `Lease::origin` set: a heap block, not the arena.
const HEAP_TAG: usize = 1;
/// Heap blocks are aligned to 2 so that the tag bit is free.
const HEAP_ALIGN: usize = 2;

/// One segment of a [`BufferManager`](crate::BufferManager)'s arena, leased until
/// dropped. The seed's `SetBuffer(buffer, offset, size)` slice, as an owned value.
///
/// It dereferences to the whole segment (`capacity()` bytes, ready to receive into)
/// and remembers how many of them hold data ([`len`](Lease::len), set by
/// [`set_len`](Lease::set_len)). Its address never moves while it lives, so it can be
/// handed to the kernel. It is `Send`: a lease dropped on another thread goes back to
/// the shared free list.
///
/// Bytes of a fresh lease are whatever the previous holder left; they are always
/// initialised, never secret to the process, but call [`clear`](Lease::clear) before
/// sending a segment you have not filled.
///
/// ```
/// # let manager = berth_buf::BufferManager::with_defaults()?;
/// let mut lease = manager.lease()?;
/// let n = std::io::Read::read(&mut &b"ping"[..], &mut lease[..])?;
/// lease.set_len(n)?;
/// assert_eq!(lease.filled(), b"ping");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Lease {
    // 16 bytes, so a lease travels in two registers: the arena's `Shared` (tag clear)
    // or a heap block (tag set); the segment index or the heap block's size; the
    // filled length.
    origin: NonNull<u8>,
    word: u32,
    len: u32,
}

// SAFETY: a lease is the only handle to its bytes (ownership came off the free list or
// the heap), and its return path is thread-safe (`Shared` is Sync).
unsafe impl Send for Lease {}
// SAFETY: `&Lease` only gives `&[u8]` of bytes nobody else can write.
unsafe impl Sync for Lease {}

/// A length beyond the lease's capacity was asked for. The lease is unchanged.
///
/// ```
/// # let manager = berth_buf::BufferManager::with_defaults()?;
/// let mut lease = manager.lease()?;
/// let err = lease.set_len(5000).unwrap_err();
/// assert_eq!((err.len, err.capacity), (5000, 4096));
/// assert_eq!(lease.len(), 0); // unchanged
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("length {len} exceeds the segment capacity {capacity}")]
pub struct LengthError {
    /// The length asked for.
    pub len: usize,
    /// The segment's capacity.
    pub capacity: usize,
}

/// A lease turned into plain data by [`Lease::into_raw`]: which manager, which
/// segment, which generation. It can cross an FFI boundary, sit in an io_uring buffer
/// id table or travel in an IPC message, and is redeemed once with
/// [`BufferManager::from_raw`](crate::BufferManager::from_raw) or returned with
/// [`BufferManager::release_raw`](crate::BufferManager::release_raw). A stale or
/// repeated redemption is refused, never undefined behaviour.
///
/// ```
/// # use berth_buf::RawLease;
/// # let manager = berth_buf::BufferManager::with_defaults()?;
/// let raw = manager.lease()?.into_raw().expect("an arena segment");
/// let parts = raw.to_parts(); // into an io_uring buffer table or an IPC message, and back
/// let lease = manager.from_raw(RawLease::from_parts(parts))?;
/// assert_eq!(lease.index(), Some(raw.index()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawLease {
    pub(crate) manager: u32,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl RawLease {
    /// The segment's index in its arena.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let lease = manager.lease()?;
    /// let index = lease.index();
    /// let raw = lease.into_raw().expect("an arena segment");
    /// assert_eq!(Some(raw.index()), index);
    /// # manager.release_raw(raw)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The generation the segment was in when it was made raw.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let raw = manager.lease()?.into_raw().expect("an arena segment");
    /// let again = manager.from_raw(raw)?.into_raw().expect("an arena segment");
    /// assert_eq!(again.index(), raw.index());
    /// assert_ne!(again.generation(), raw.generation()); // so the first copy is stale now
    /// assert!(manager.release_raw(raw).is_err());
    /// # manager.release_raw(again)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Packs into 96 bits for transport: `[manager, index, generation]`.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let raw = manager.lease()?.into_raw().expect("an arena segment");
    /// let [_manager, index, generation] = raw.to_parts();
    /// assert_eq!((index, generation), (raw.index(), raw.generation()));
    /// # manager.release_raw(raw)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_parts(self) -> [u32; 3] {
        [self.manager, self.index, self.generation]
    }

    /// Unpacks [`to_parts`](RawLease::to_parts). Any value is accepted here; a forged
    /// one is refused when redeemed.
    ///
    /// ```
    /// # use berth_buf::RawLease;
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let raw = manager.lease()?.into_raw().expect("an arena segment");
    /// assert_eq!(RawLease::from_parts(raw.to_parts()), raw);
    /// let [m, i, g] = raw.to_parts();
    /// assert!(manager.release_raw(RawLease::from_parts([m, i, g + 1])).is_err()); // forged: refused
    /// # manager.release_raw(raw)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_parts(parts: [u32; 3]) -> RawLease {
        RawLease { manager: parts[0], index: parts[1], generation: parts[2] }
    }
}

impl Lease {
    /// A lease of arena segment `index`, already marked leased.
    #[inline]
    pub(crate) fn arena(shared: NonNull<Shared>, index: u32) -> Lease {
        Lease { origin: shared.cast(), word: index, len: 0 }
    }

    /// A zeroed heap-backed lease of `size` bytes (the `Exhaustion::Heap` fallback).
    /// `size` is a validated segment size: non-zero and at most `u32::MAX`.
    pub(crate) fn heap(size: usize) -> Lease {
        let layout = heap_layout(size);
        // SAFETY: the layout has a non-zero size (segment sizes are at least 1).
        let bytes = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(bytes) = NonNull::new(bytes) else { std::alloc::handle_alloc_error(layout) };
        Lease { origin: bytes.map_addr(|a| a | HEAP_TAG), word: size as u32, len: 0 }
    }

    #[inline]
    fn home(&self) -> Home {
        home_of(self.origin, self.word)
    }

    /// The first byte and the size of the segment.
    #[inline]
    fn raw_parts(&self) -> (*mut u8, usize) {
        match self.home() {
            Home::Arena { shared, index } => {
                // SAFETY: the arena outlives every lease of it (see `manager`).
                let s = unsafe { shared.as_ref() };
                (s.segment_ptr(index).as_ptr(), s.segment_size)
            }
            Home::Heap { bytes, capacity } => (bytes.as_ptr(), capacity),
        }
    }

    /// Bytes in the segment.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager};
    /// let manager = BufferManager::new(BufferConfig::new().segment_size(256).segment_count(2))?;
    /// let lease = manager.lease()?;
    /// assert_eq!((lease.capacity(), lease.len()), (256, 0));
    /// assert_eq!(lease[..].len(), lease.capacity()); // it derefs to the whole segment
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn capacity(&self) -> usize {
        self.raw_parts().1
    }

    /// Bytes of valid data at the start of the segment.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut lease = manager.lease()?;
    /// lease[..3].copy_from_slice(b"abc");
    /// assert_eq!(lease.len(), 0); // writing bytes does not record them
    /// lease.set_len(3)?;
    /// assert_eq!(lease.len(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True if no data has been recorded.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut lease = manager.lease()?;
    /// assert!(lease.is_empty());
    /// lease.set_len(1)?;
    /// assert!(!lease.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records that the first `len` bytes hold data (after a receive, say).
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut lease = manager.lease()?;
    /// lease[..4].copy_from_slice(b"data");
    /// lease.set_len(4)?;
    /// assert_eq!(lease.filled(), b"data");
    /// assert!(lease.set_len(lease.capacity() + 1).is_err()); // past the segment: refused
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn set_len(&mut self, len: usize) -> Result<(), LengthError> {
        let capacity = self.capacity();
        if len > capacity {
            return Err(LengthError { len, capacity });
        }
        // Capacity is at most u32::MAX (checked by the configuration).
        self.len = len as u32;
        Ok(())
    }

    /// The valid data: the first [`len`](Lease::len) bytes.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut lease = manager.lease()?;
    /// lease[..2].copy_from_slice(b"ok");
    /// assert_eq!(lease.filled(), b"");
    /// lease.set_len(2)?;
    /// assert_eq!(lease.filled(), b"ok");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn filled(&self) -> &[u8] {
        &self[..self.len as usize]
    }

    /// The valid data, mutable.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut lease = manager.lease()?;
    /// lease[..2].copy_from_slice(b"ok");
    /// lease.set_len(2)?;
    /// lease.filled_mut().make_ascii_uppercase();
    /// assert_eq!(lease.filled(), b"OK");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn filled_mut(&mut self) -> &mut [u8] {
        let len = self.len as usize;
        &mut self[..len]
    }

    /// The bytes after the valid data, to receive more into.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut lease = manager.lease()?;
    /// lease.spare_mut()[..3].copy_from_slice(b"GET");
    /// lease.set_len(3)?;
    /// lease.spare_mut()[..2].copy_from_slice(b" /"); // appends after the data
    /// lease.set_len(5)?;
    /// assert_eq!(lease.filled(), b"GET /");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let len = self.len as usize;
        &mut self[len..]
    }

    /// Zeroes the whole segment and sets the length to 0.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let mut lease = manager.lease()?;
    /// lease[..3].copy_from_slice(b"old");
    /// lease.set_len(3)?;
    /// lease.clear();
    /// assert!(lease.is_empty() && lease.iter().all(|&b| b == 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear(&mut self) {
        self.fill(0);
        self.len = 0;
    }

    /// True if this lease is a heap fallback rather than an arena segment.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, Exhaustion};
    /// let manager = BufferManager::new(BufferConfig::new().segment_count(1).exhaustion(Exhaustion::Heap))?;
    /// let segment = manager.lease()?;
    /// let fallback = manager.lease()?; // the arena is exhausted
    /// assert!(!segment.is_heap() && fallback.is_heap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_heap(&self) -> bool {
        matches!(self.home(), Home::Heap { .. })
    }

    /// The arena index of the segment (`None` for a heap fallback).
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, Exhaustion};
    /// let manager = BufferManager::new(BufferConfig::new().segment_count(1).exhaustion(Exhaustion::Heap))?;
    /// let segment = manager.lease()?;
    /// assert_eq!(segment.index(), Some(0));
    /// assert_eq!(manager.lease()?.index(), None); // a heap fallback has no index
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn index(&self) -> Option<u32> {
        match self.home() {
            Home::Arena { index, .. } => Some(index),
            Home::Heap { .. } => None,
        }
    }

    /// Gives up the lease as plain data; the segment stays leased until the raw lease
    /// is redeemed or released. A heap fallback cannot be made raw and is handed back.
    ///
    /// The filled length is not kept; carry it beside the raw lease if needed.
    ///
    /// ```
    /// # let manager = berth_buf::BufferManager::with_defaults()?;
    /// let lease = manager.lease()?;
    /// let raw = lease.into_raw().expect("an arena segment");
    /// assert_eq!(manager.stats().raw, 1);
    /// manager.release_raw(raw)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_raw(self) -> Result<RawLease, Lease> {
        let Home::Arena { shared, index } = self.home() else { return Err(self) };
        std::mem::forget(self);
        // SAFETY: the arena outlives every lease and raw lease of it (see `manager`).
        let s = unsafe { shared.as_ref() };
        // A new generation per handoff: a raw lease that was redeemed and made raw
        // again must not revive the earlier, spent copy.
        let generation = s.next_raw_generation(index);
        s.states[index as usize].store(state(generation, RAW), Ordering::Release);
        Ok(RawLease { manager: s.id, index, generation })
    }
}

impl Deref for Lease {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        let (ptr, capacity) = self.raw_parts();
        // SAFETY: `ptr` points to `capacity` initialised bytes (zeroed by mmap or by
        // `alloc_zeroed`) that only this lease may access while it lives.
        unsafe { std::slice::from_raw_parts(ptr, capacity) }
    }
}

impl DerefMut for Lease {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        let (ptr, capacity) = self.raw_parts();
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(ptr, capacity) }
    }
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for Lease {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl Drop for Lease {
    /// Into this thread's segment cache if it serves the lease's arena (a few
    /// instructions, inlined), else out of line to the shared list or the heap.
    #[inline(always)]
    fn drop(&mut self) {
        if let Home::Arena { shared, index } = self.home()
            && local::give_back(shared, index)
        {
            return;
        }
        // Two scalars, passed in registers, so the fast path above never spills the
        // lease to memory.
        drop_slow(self.origin, self.word);
    }
}

#[inline(never)]
fn drop_slow(origin: NonNull<u8>, word: u32) {
    match home_of(origin, word) {
        Home::Arena { shared, index } => {
            // SAFETY: the arena outlives every lease of it (see `manager`).
            let s = unsafe { shared.as_ref() };
            s.mark(index, FREE);
            s.give_back_shared(index); // our last access to the arena
        }
        Home::Heap { bytes, capacity } => {
            // SAFETY: allocated in `Lease::heap` with this very layout, freed only here.
            unsafe { std::alloc::dealloc(bytes.as_ptr(), heap_layout(capacity)) };
        }
    }
}

fn heap_layout(size: usize) -> std::alloc::Layout {
    // A validated segment size (at most u32::MAX) with alignment 2 is always a valid layout.
    std::alloc::Layout::from_size_align(size, HEAP_ALIGN).unwrap_or(std::alloc::Layout::new::<u16>())
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("index", &self.index())
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}
