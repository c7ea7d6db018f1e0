//! The ring protocol, free of the OS: positions, record framing and commit markers,
//! validation of untrusted headers and positions, and the waiter-flag handshake,
//! over any [`Region`].
//!
//! The mapped file implements [`Region`] over shared memory; tests and loom use a
//! heap region. Nothing here trusts the peer: every position and record header read
//! from the region is checked before it drives an access, and a failed check is a
//! `Corrupted` error.
//!
//! A record is committed by the release store of its header word, which carries the
//! lap (`position / capacity`) it was written in; the receiver polls that word, not
//! the producer's position, so a message costs the receiver one cache-line transfer
//! instead of two. Two rules keep an old word from passing for a new header:
//! - before publishing a record, the producer zeroes the word where the *next*
//!   header will go if that word is free (so stale payload bytes of an earlier lap
//!   are never read as a header);
//! - if it is not free, the ring is exactly full and the word is the header of the
//!   oldest unreleased record, written one lap earlier: its lap tag differs from the
//!   one the receiver expects there.
//!
//! The producer still stores its position (`tail`) after every commit, on a line the
//! receiver reads only on its way to sleep: it lets the receiver prove that a header
//! it waits for is overdue (corrupted) rather than wait forever. The consumer
//! publishes its position (`head`) in batches: every `release_batch` bytes, whenever
//! it finds the ring empty, and whenever the producer flags that it waits for room.

use crate::layout::{REC_DATA, REC_PAD, RECORD_ALIGN};
use crate::loom::{AtomicU32, AtomicU64, Ordering};

/// Where a ring lives: its control words and its data bytes.
pub(crate) trait Region {
    /// The producer position (bytes ever committed), written by the sender.
    fn tail(&self) -> &AtomicU64;
    /// The consumer position (bytes released and published), written by the receiver.
    fn head(&self) -> &AtomicU64;
    /// 1 while the receiver is (about to be) asleep; the futex word it sleeps on.
    fn rx_wait(&self) -> &AtomicU32;
    /// 1 while the sender is (about to be) asleep waiting for room.
    fn tx_wait(&self) -> &AtomicU32;
    /// Loads, with acquire ordering, the 8-byte record header at data offset `off`
    /// (8-aligned, in bounds).
    fn load_word(&self, off: usize) -> u64;
    /// Stores, with release ordering, the 8-byte record header at data offset `off`
    /// (8-aligned, in bounds).
    fn store_word(&self, off: usize, v: u64);
    /// Zeroes data bytes `off..off + len` (8-aligned, in bounds, free space that the
    /// consumer does not read until a later release store publishes it).
    fn zero(&self, off: usize, len: usize);
    /// The waker's half of the wake handshake, between its store (a record header or
    /// its position) and its load of the peer's waiter flag: it must act as a full
    /// (StoreLoad) barrier *together with* [`Region::heavy_barrier`] on the sleeping
    /// side. Over shared memory with `membarrier(2)` available it is only a compiler
    /// fence (the sleeper's membarrier forces the barrier onto this CPU); otherwise,
    /// and under loom, a `SeqCst` fence. Runs on every commit and head publication.
    fn light_barrier(&self);
    /// The sleeper's half, between raising its waiter flag and re-checking the ring:
    /// a `SeqCst` fence plus, over shared memory, `membarrier(GLOBAL_EXPEDITED)`.
    /// Runs only when an end is about to sleep.
    fn heavy_barrier(&self);
    /// Whether the consumer checks lap tags. Always true but in the loom test that
    /// shows the tag is load-bearing.
    fn lap_tags(&self) -> bool {
        true
    }
}

/// Bit position of the lap tag in a record header word.
const TAG_SHIFT: u32 = 48;

/// A record header word: `u32 len`, `u8 type`, a zero byte and `u16 lap tag`, in
/// that order for a little-endian reader. It is never 0 (type is 1 or 2), so a
/// zeroed word means "not committed".
pub(crate) fn record_word(len: u32, ty: u32, tag: u16) -> u64 {
    u64::from(len) | (u64::from(ty as u8) << 32) | (u64::from(tag) << TAG_SHIFT)
}

/// Bytes a record of `len` payload bytes occupies, header and padding included.
pub(crate) fn record_size(len: u64) -> u64 {
    RECORD_ALIGN + len.next_multiple_of(RECORD_ALIGN)
}

/// Geometry both ends agree on, plus each end's batching.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) capacity: u64,
    pub(crate) max_message: u64,
    /// The consumer publishes its position at least every this many bytes.
    pub(crate) release_batch: u64,
    /// The producer zeroes free space ahead of its position this many bytes at a time.
    pub(crate) zero_chunk: u64,
}

impl Geometry {
    /// A ring of `capacity` bytes (a power of two) carrying up to `max_message`; the
    /// consumer publishes its position every quarter ring, the producer zeroes
    /// ahead in chunks of a sixteenth of the ring, at most 4 KiB.
    pub(crate) fn new(capacity: u64, max_message: u64) -> Geometry {
        Geometry {
            capacity,
            max_message,
            release_batch: (capacity / 4).max(RECORD_ALIGN),
            zero_chunk: (capacity / 16).clamp(RECORD_ALIGN, 4096),
        }
    }

    /// The lap tag of position `pos`: the low 16 bits of `pos / capacity`.
    fn tag(&self, pos: u64) -> u16 {
        (pos >> self.capacity.trailing_zeros()) as u16
    }

    fn offset(&self, pos: u64) -> usize {
        (pos & (self.capacity - 1)) as usize
    }
}

/// A place in the ring handed to the caller: payload at data offset `off`, `len`
/// bytes; the position becomes `next` once committed or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) len: usize,
    hdr: usize,
    next: u64,
}

impl Slot {
    /// Data offset of the payload.
    #[inline]
    pub(crate) fn off(&self) -> usize {
        self.hdr + RECORD_ALIGN as usize
    }
}

/// Why the producer cannot reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReserveError {
    TooLarge,
    Full,
    Corrupted(&'static str),
}

/// Checks a position read from the region when an end attaches: records are
/// 8-aligned, and a header word is only ever accessed at an aligned offset.
pub(crate) fn check_position(pos: u64) -> Result<u64, &'static str> {
    if pos.is_multiple_of(RECORD_ALIGN) { Ok(pos) } else { Err("ring position not record-aligned") }
}

/// The sender's private state.
#[derive(Debug)]
pub(crate) struct Producer {
    geo: Geometry,
    tail: u64,
    cached_head: u64,
    /// Free space from `tail` up to here is known to read 0.
    zeroed: u64,
}

impl Producer {
    /// Resumes at the producer position currently in the region.
    pub(crate) fn new(geo: Geometry, r: &impl Region) -> Result<Producer, &'static str> {
        let tail = check_position(r.tail().load(Ordering::Relaxed))?;
        // Pretend the ring is full so the first reserve loads and validates the head.
        Ok(Producer { geo, tail, cached_head: tail.wrapping_sub(geo.capacity), zeroed: tail })
    }

    /// Finds room for a `len`-byte record (after a padding record if it would wrap).
    /// Writes nothing: the record becomes visible only at [`Producer::commit`].
    #[inline]
    pub(crate) fn reserve(&mut self, r: &impl Region, len: usize) -> Result<Slot, ReserveError> {
        let cap = self.geo.capacity;
        if len as u64 > self.geo.max_message {
            return Err(ReserveError::TooLarge);
        }
        let total = record_size(len as u64);
        let at = self.geo.offset(self.tail);
        let to_end = cap - at as u64;
        let need = if to_end < total { to_end + total } else { total };
        if cap - self.tail.wrapping_sub(self.cached_head) < need {
            self.refresh_head(r)?;
            if cap - self.tail.wrapping_sub(self.cached_head) < need {
                return Err(ReserveError::Full);
            }
        }
        let hdr = if to_end < total { 0 } else { at };
        Ok(Slot { len, hdr, next: self.tail.wrapping_add(need) })
    }

    /// Loads and validates the consumer position.
    #[cold]
    fn refresh_head(&mut self, r: &impl Region) -> Result<(), ReserveError> {
        let head = r.head().load(Ordering::Acquire);
        // The consumer may only move forward, never past what we committed, and only
        // ever stops at record boundaries.
        if self.tail.wrapping_sub(head) > self.geo.capacity
            || head.wrapping_sub(self.cached_head) > self.tail.wrapping_sub(self.cached_head)
            || !head.is_multiple_of(RECORD_ALIGN)
        {
            return Err(ReserveError::Corrupted("consumer position out of range"));
        }
        self.cached_head = head;
        Ok(())
    }

    /// Publishes a reserved record (optionally shortened to `len`): makes sure the
    /// next header word reads 0 if it is free, then release-stores the record's
    /// header (and, at a wrap, the padding header after it), then the position.
    /// Returns true when the receiver flagged that it sleeps and must be woken.
    #[inline]
    pub(crate) fn commit(&mut self, r: &impl Region, slot: Slot, len: usize) -> bool {
        debug_assert!(len <= slot.len);
        let geo = self.geo;
        // A shortened record frees its unused tail padding.
        let next = slot.next - (record_size(slot.len as u64) - record_size(len as u64));
        if len < slot.len {
            // The caller may have written past `len`: that is not zero any more.
            self.zeroed = next;
        }
        if (self.zeroed.wrapping_sub(next) as i64) < RECORD_ALIGN as i64 {
            self.zero_ahead(r, next);
        }
        let at = geo.offset(self.tail);
        if slot.hdr == at {
            r.store_word(at, record_word(len as u32, REC_DATA, geo.tag(self.tail)));
        } else {
            // Wrapped: the record at offset 0 of the next lap first, then the padding
            // that leads the receiver to it.
            let lap_start = self.tail.wrapping_add((geo.capacity as usize - at) as u64);
            r.store_word(0, record_word(len as u32, REC_DATA, geo.tag(lap_start)));
            let pad = (geo.capacity as usize - at) as u64 - RECORD_ALIGN;
            r.store_word(at, record_word(pad as u32, REC_PAD, geo.tag(self.tail)));
        }
        self.tail = next;
        r.tail().store(next, Ordering::Release);
        // Pairs with the receiver's heavy barrier in `Consumer::prepare_wait`: either
        // it sees our header, or we see its flag. No fence, no RMW while it is awake.
        r.light_barrier();
        r.rx_wait().load(Ordering::Relaxed) != 0 && r.rx_wait().swap(0, Ordering::Relaxed) != 0
    }

    /// Zeroes free space from `next` on, a chunk at a time, so that the word at `next`
    /// reads 0 before the header that leads the consumer there is published: stale
    /// payload of an earlier lap is never taken for a header. Zeroing ahead in chunks
    /// costs one `memset` per chunk instead of a store into a fresh line per record.
    /// If no byte at `next` is free, the ring is exactly full and the word there is
    /// the oldest record's header, one lap old, which its tag tells apart.
    #[cold]
    fn zero_ahead(&mut self, r: &impl Region, next: u64) {
        let geo = self.geo;
        let free = self.cached_head.wrapping_add(geo.capacity).wrapping_sub(next);
        if free == 0 || free > geo.capacity {
            return;
        }
        let start = if (self.zeroed.wrapping_sub(next) as i64) > 0 { self.zeroed } else { next };
        let end = next.wrapping_add(free.min(geo.zero_chunk));
        let (from, len) = (geo.offset(start), end.wrapping_sub(start) as usize);
        let first = len.min(geo.capacity as usize - from);
        r.zero(from, first);
        if first < len {
            r.zero(0, len - first);
        }
        self.zeroed = end;
    }

    /// A reservation was dropped uncommitted: its bytes may hold anything now.
    pub(crate) fn abort(&mut self, slot: Slot) {
        if slot.len > 0 {
            self.zeroed = self.tail;
        }
    }

    /// Announces that the sender is about to sleep until at least `len` bytes fit.
    /// Returns false (and clears the flag) if room appeared meanwhile.
    pub(crate) fn prepare_wait(&mut self, r: &impl Region, len: usize) -> bool {
        r.tx_wait().store(1, Ordering::Relaxed);
        r.heavy_barrier();
        match self.reserve_check(r, len) {
            Ok(false) => true,
            _ => {
                r.tx_wait().store(0, Ordering::Relaxed);
                false
            }
        }
    }

    /// Whether a `len`-byte record would fit now (refreshing the cached head).
    fn reserve_check(&mut self, r: &impl Region, len: usize) -> Result<bool, ReserveError> {
        let cap = self.geo.capacity;
        let total = record_size(len as u64);
        let to_end = cap - self.geo.offset(self.tail) as u64;
        let need = if to_end < total { to_end + total } else { total };
        self.refresh_head(r)?;
        Ok(cap - self.tail.wrapping_sub(self.cached_head) >= need)
    }

    /// The producer position (bytes ever committed).
    #[cfg(test)]
    pub(crate) fn position(&self) -> u64 {
        self.tail
    }
}

/// Empty polls between two cross-checks of the producer position.
const CROSS_CHECK_EVERY: u32 = 1024;

/// The receiver's private state.
#[derive(Debug)]
pub(crate) struct Consumer {
    geo: Geometry,
    /// The next record's position.
    head: u64,
    /// The position last stored to the region.
    published: u64,
    /// Empty polls since the last cross-check.
    idle: u32,
    poisoned: Option<&'static str>,
    /// The record the last successful [`Consumer::poll`] found.
    cur: Slot,
}

/// What the word at a record position says.
enum Word {
    Header(u64),
    NotYet,
}

impl Consumer {
    /// Resumes at the consumer position currently in the region.
    pub(crate) fn new(geo: Geometry, r: &impl Region) -> Result<Consumer, &'static str> {
        let head = check_position(r.head().load(Ordering::Relaxed))?;
        Ok(Consumer { geo, head, published: head, idle: 0, poisoned: None, cur: Slot { len: 0, hdr: 0, next: head } })
    }

    /// The next committed record, if any. Validates the record header against the
    /// geometry and the lap; a failure poisons the consumer.
    #[cfg(any(test, loom))]
    pub(crate) fn peek(&mut self, r: &impl Region) -> Result<Option<Slot>, &'static str> {
        Ok(if self.poll(r)? { Some(self.cur) } else { None })
    }

    /// Like [`Consumer::peek`], leaving the record found in [`Consumer::current`]:
    /// nothing larger than a flag crosses the call, which keeps the hot path free of
    /// aggregate copies through the stack.
    #[inline]
    pub(crate) fn poll(&mut self, r: &impl Region) -> Result<bool, &'static str> {
        if self.poisoned.is_none()
            && let Ok(Some(slot)) = self.peek_inner(r)
        {
            self.cur = slot;
            return Ok(true);
        }
        match self.peek_slow(r)? {
            Some(slot) => {
                self.cur = slot;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The record the last successful [`Consumer::poll`] found.
    #[inline]
    pub(crate) fn current(&self) -> Slot {
        self.cur
    }

    /// [`Consumer::peek`] when there is no record (or an error): count the empty
    /// poll, cross-check now and then, and poison on an error.
    #[cold]
    fn peek_slow(&mut self, r: &impl Region) -> Result<Option<Slot>, &'static str> {
        if let Some(why) = self.poisoned {
            return Err(why);
        }
        let found = match self.peek_inner(r) {
            Ok(None) => {
                self.idle = self.idle.wrapping_add(1);
                if self.idle.is_multiple_of(CROSS_CHECK_EVERY) { self.cross_check(r) } else { Ok(None) }
            }
            found => found,
        };
        found.inspect_err(|why| self.poisoned = Some(why))
    }

    /// Classifies the word at position `pos`.
    #[inline]
    fn word_at(&self, r: &impl Region, pos: u64) -> Result<Word, &'static str> {
        let word = r.load_word(self.geo.offset(pos));
        let want = self.geo.tag(pos);
        let tag = (word >> TAG_SHIFT) as u16;
        if word != 0 && (tag == want || !r.lap_tags()) {
            Ok(Word::Header(word))
        } else if word == 0 || tag == want.wrapping_sub(1) {
            // Zeroed by the producer ahead of time, or the header one lap older that
            // sits there while the ring is exactly full.
            Ok(Word::NotYet)
        } else {
            Err("record header from another lap")
        }
    }

    #[inline]
    fn peek_inner(&mut self, r: &impl Region) -> Result<Option<Slot>, &'static str> {
        let cap = self.geo.capacity;
        let mut head = self.head;
        for _ in 0..2 {
            let Word::Header(word) = self.word_at(r, head)? else {
                // Not `self.head = head`: after a padding record, an honest producer
                // has always committed the record it leads to, so stay on the pad.
                return Ok(None);
            };
            let at = self.geo.offset(head) as u64;
            let (len, ty, zero) = (word & 0xffff_ffff, (word >> 32) as u8, (word >> 40) as u8);
            if zero != 0 {
                return Err("bad record header");
            }
            match u32::from(ty) {
                REC_DATA => {
                    if len > self.geo.max_message {
                        return Err("record length above the maximum message");
                    }
                    let total = record_size(len);
                    if total > cap - at {
                        return Err("record crosses the end of the ring");
                    }
                    self.head = head;
                    return Ok(Some(Slot { len: len as usize, hdr: at as usize, next: head.wrapping_add(total) }));
                }
                REC_PAD => {
                    let to_end = cap - at;
                    if len + RECORD_ALIGN != to_end || at == 0 {
                        return Err("bad padding record");
                    }
                    head = head.wrapping_add(to_end);
                }
                _ => return Err("unknown record type"),
            }
        }
        Err("padding record after padding")
    }

    /// The ring looked empty: if the producer's position says a record is committed
    /// at our position, its header must be visible now (the position is stored after
    /// the header). A header that still is not there was corrupted: an error, not a
    /// wait that would never end.
    #[cold]
    fn cross_check(&mut self, r: &impl Region) -> Result<Option<Slot>, &'static str> {
        let tail = r.tail().load(Ordering::Acquire);
        let ahead = tail.wrapping_sub(self.head);
        if !tail.is_multiple_of(RECORD_ALIGN) {
            return Err("producer position not record-aligned");
        }
        // The position may trail the headers we already consumed by a record.
        if ahead == 0 || self.head.wrapping_sub(tail) <= self.geo.capacity {
            return Ok(None);
        }
        if ahead > self.geo.capacity {
            return Err("producer position out of range");
        }
        match self.peek_inner(r)? {
            Some(slot) => Ok(Some(slot)),
            None => Err("record below the producer position never committed"),
        }
    }

    /// Gives a record's space back to the producer. The position is published only
    /// every `release_batch` bytes or when the producer waits for room; returns true
    /// when the sender flagged that it sleeps and must be woken.
    #[inline]
    pub(crate) fn release(&mut self, r: &impl Region, slot: Slot) -> bool {
        self.head = slot.next;
        if self.head.wrapping_sub(self.published) >= self.geo.release_batch || r.tx_wait().load(Ordering::Relaxed) != 0
        {
            self.publish(r)
        } else {
            false
        }
    }

    /// Publishes the position if it moved; call whenever the ring is found empty, so
    /// that a producer waiting for room is never kept waiting by a batch. Returns true
    /// when the sender must be woken.
    #[inline]
    pub(crate) fn flush(&mut self, r: &impl Region) -> bool {
        self.head != self.published && self.publish(r)
    }

    fn publish(&mut self, r: &impl Region) -> bool {
        self.published = self.head;
        r.head().store(self.head, Ordering::Release);
        // Pairs with the sender's heavy barrier in `Producer::prepare_wait`.
        r.light_barrier();
        r.tx_wait().load(Ordering::Relaxed) != 0 && r.tx_wait().swap(0, Ordering::Relaxed) != 0
    }

    /// Announces that the receiver is about to sleep (call [`Consumer::flush`]
    /// first). Returns false (and clears the flag) if a record was committed
    /// meanwhile, or the state is corrupted (the next `peek` reports it).
    pub(crate) fn prepare_wait(&mut self, r: &impl Region) -> bool {
        debug_assert_eq!(self.head, self.published, "flush before sleeping");
        r.rx_wait().store(1, Ordering::Relaxed);
        r.heavy_barrier();
        let empty = self.poisoned.is_none()
            && match self.peek_inner(r).and_then(|s| if s.is_some() { Ok(s) } else { self.cross_check(r) }) {
                Ok(found) => found.is_none(),
                Err(why) => {
                    self.poisoned = Some(why);
                    false
                }
            };
        if !empty {
            r.rx_wait().store(0, Ordering::Relaxed);
        }
        empty
    }
}

/// A deliberate bug in a [`HeapRegion`], for the tests that show which parts of the
/// protocol are load-bearing (each makes loom or a unit test fail).
#[cfg(any(test, loom))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mutation {
    /// The wakers skip their barrier (as if the sleeper's membarrier did not reach them).
    NoWakerBarrier,
    /// Record headers are stored with relaxed instead of release ordering (only
    /// loom can tell).
    #[cfg_attr(not(loom), allow(dead_code))]
    RelaxedCommit,
    /// The consumer takes any non-zero word for a header, ignoring its lap tag.
    NoLapTags,
    /// The producer does not zero free space ahead of its position.
    NoPreZero,
}

/// A region on the heap, for deterministic tests and loom: control words are
/// fields, record headers a word array, payload bytes race-checked cells.
#[cfg(any(test, loom))]
#[derive(Debug)]
pub(crate) struct HeapRegion {
    tail: AtomicU64,
    head: AtomicU64,
    rx_wait: AtomicU32,
    tx_wait: AtomicU32,
    words: Vec<AtomicU64>,
    bytes: Vec<crate::loom::UnsafeCell<u8>>,
    mutation: Option<Mutation>,
}

#[cfg(any(test, loom))]
impl HeapRegion {
    pub(crate) fn new(capacity: usize) -> HeapRegion {
        HeapRegion {
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            rx_wait: AtomicU32::new(0),
            tx_wait: AtomicU32::new(0),
            words: (0..capacity / 8).map(|_| AtomicU64::new(0)).collect(),
            bytes: (0..capacity).map(|_| crate::loom::UnsafeCell::new(0)).collect(),
            mutation: None,
        }
    }

    /// A region with a deliberate bug.
    pub(crate) fn mutated(capacity: usize, m: Mutation) -> HeapRegion {
        HeapRegion { mutation: Some(m), ..HeapRegion::new(capacity) }
    }

    /// Writes payload bytes (at an 8-aligned offset). Outside loom, whole 8-byte
    /// chunks also land in the header word array, so that stale payload can look
    /// like a header exactly as it would in the shared mapping.
    pub(crate) fn write(&self, off: usize, src: &[u8]) {
        for (i, b) in src.iter().enumerate() {
            // SAFETY: the protocol gives the producer exclusive use of reserved bytes;
            // loom checks exactly that claim.
            self.bytes[off + i].with_mut(|p| unsafe { *p = *b });
        }
        #[cfg(not(loom))]
        for (i, chunk) in src.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            self.words[off / 8 + i].store(v, Ordering::Relaxed);
        }
    }

    pub(crate) fn read(&self, off: usize, dst: &mut [u8]) {
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: committed bytes are not written again until released.
            *b = self.bytes[off + i].with(|p| unsafe { *p });
        }
    }

    /// Overwrites a record header as a hostile producer would.
    #[cfg(test)]
    pub(crate) fn poke_word(&self, off: usize, v: u64) {
        self.words[off / 8].store(v, Ordering::Relaxed);
    }

    /// Reads a record header word (for tests).
    #[cfg(test)]
    pub(crate) fn peek_word(&self, off: usize) -> u64 {
        self.words[off / 8].load(Ordering::Relaxed)
    }
}

#[cfg(any(test, loom))]
impl Region for HeapRegion {
    fn tail(&self) -> &AtomicU64 {
        &self.tail
    }
    fn head(&self) -> &AtomicU64 {
        &self.head
    }
    fn rx_wait(&self) -> &AtomicU32 {
        &self.rx_wait
    }
    fn tx_wait(&self) -> &AtomicU32 {
        &self.tx_wait
    }
    fn load_word(&self, off: usize) -> u64 {
        self.words[off / 8].load(Ordering::Acquire)
    }
    fn store_word(&self, off: usize, v: u64) {
        match self.mutation {
            Some(Mutation::RelaxedCommit) => self.words[off / 8].store(v, Ordering::Relaxed),
            _ => self.words[off / 8].store(v, Ordering::Release),
        }
    }
    fn zero(&self, off: usize, len: usize) {
        if self.mutation == Some(Mutation::NoPreZero) {
            return;
        }
        for w in &self.words[off / 8..(off + len) / 8] {
            w.store(0, Ordering::Relaxed);
        }
        for b in &self.bytes[off..off + len] {
            // SAFETY: free space: the consumer released it and reads it again only
            // after a later release store (loom checks that claim).
            b.with_mut(|p| unsafe { *p = 0 });
        }
    }
    /// Models the membarrier pairing: the sleeper's membarrier makes the waker execute
    /// a full barrier at some point of its instruction stream. The only placement that
    /// matters is between its store and its flag load (elsewhere either its store is
    /// already visible to the sleeper's re-check, or its load already sees the flag),
    /// so a `SeqCst` fence there on both sides is the model.
    fn light_barrier(&self) {
        if self.mutation != Some(Mutation::NoWakerBarrier) {
            crate::loom::fence(Ordering::SeqCst);
        }
    }
    fn heavy_barrier(&self) {
        crate::loom::fence(Ordering::SeqCst);
    }
    fn lap_tags(&self) -> bool {
        self.mutation != Some(Mutation::NoLapTags)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn geo(cap: u64) -> Geometry {
        Geometry::new(cap, crate::layout::max_message_for(cap))
    }

    fn pair(cap: u64) -> (HeapRegion, Producer, Consumer) {
        ends(HeapRegion::new(cap as usize))
    }

    fn ends(r: HeapRegion) -> (HeapRegion, Producer, Consumer) {
        let g = geo(r.words.len() as u64 * 8);
        let p = Producer::new(g, &r).unwrap();
        let c = Consumer::new(g, &r).unwrap();
        (r, p, c)
    }

    fn send(r: &HeapRegion, p: &mut Producer, msg: &[u8]) -> Result<(), ReserveError> {
        let s = p.reserve(r, msg.len())?;
        r.write(s.off(), msg);
        p.commit(r, s, msg.len());
        Ok(())
    }

    /// Receives one message; on an empty ring, publishes the position as the channel does.
    fn recv(r: &HeapRegion, c: &mut Consumer) -> Result<Option<Vec<u8>>, &'static str> {
        let Some(s) = c.peek(r)? else {
            c.flush(r);
            return Ok(None);
        };
        let mut v = vec![0; s.len];
        r.read(s.off(), &mut v);
        c.release(r, s);
        Ok(Some(v))
    }

    #[test]
    fn full_loses_nothing() {
        let (r, mut p, mut c) = pair(256);
        let mut n = 0u8;
        loop {
            match send(&r, &mut p, &[n; 20]) {
                Ok(()) => n += 1,
                Err(e) => {
                    assert_eq!(e, ReserveError::Full);
                    break;
                }
            }
        }
        assert_eq!(usize::from(n), 256 / 32);
        for i in 0..n {
            assert_eq!(recv(&r, &mut c).unwrap().unwrap(), vec![i; 20]);
        }
        assert_eq!(recv(&r, &mut c).unwrap(), None);
    }

    #[test]
    fn too_large_writes_nothing() {
        let (r, mut p, mut c) = pair(256);
        assert_eq!(p.reserve(&r, 121).unwrap_err(), ReserveError::TooLarge);
        assert_eq!(recv(&r, &mut c).unwrap(), None);
        send(&r, &mut p, &[1; 120]).unwrap();
    }

    #[test]
    fn wrap_pads_and_keeps_order() {
        let (r, mut p, mut c) = pair(128);
        for round in 0..100u8 {
            let len = (round as usize * 7) % 57;
            send(&r, &mut p, &vec![round; len]).unwrap();
            assert_eq!(recv(&r, &mut c).unwrap().unwrap(), vec![round; len]);
        }
    }

    #[test]
    fn headers_carry_length_type_and_lap() {
        let (r, mut p, mut c) = pair(64);
        for lap in 0..3u16 {
            send(&r, &mut p, &[1; 20]).unwrap();
            assert_eq!(r.peek_word(0), 20 | (1 << 32) | (u64::from(lap) << 48));
            // Nothing committed beyond: the next header word was zeroed.
            assert_eq!(r.peek_word(32), 0);
            recv(&r, &mut c).unwrap().unwrap();
            send(&r, &mut p, &[2; 20]).unwrap();
            recv(&r, &mut c).unwrap().unwrap();
        }
    }

    #[test]
    fn hostile_record_headers_are_errors() {
        for bad in [
            record_word(4000, REC_DATA, 0),           // beyond the maximum
            record_word(8, 77, 0),                    // unknown type
            record_word(0, REC_PAD, 0),               // pad not reaching the end
            record_word(u32::MAX, REC_PAD, 0),        // absurd pad
            record_word(120, REC_PAD, 0),             // pad at offset 0
            record_word(16, REC_DATA, 5),             // from another lap
            record_word(16, REC_DATA, 0) | (1 << 40), // reserved byte set
        ] {
            let (r, mut p, mut c) = pair(128);
            send(&r, &mut p, &[9; 16]).unwrap();
            r.poke_word(0, bad);
            assert!(c.peek(&r).is_err(), "{bad:#x}");
            // Poisoned: the error repeats, nothing is delivered.
            assert!(c.peek(&r).is_err());
        }
        // A record that would cross the end of the ring.
        let (r, mut p, mut c) = pair(128);
        for _ in 0..6 {
            send(&r, &mut p, &[9; 8]).unwrap();
            recv(&r, &mut c).unwrap().unwrap();
        }
        send(&r, &mut p, &[9; 8]).unwrap();
        r.poke_word(96, record_word(40, REC_DATA, 0));
        assert_eq!(c.peek(&r), Err("record crosses the end of the ring"));
    }

    #[test]
    fn hostile_positions_are_errors() {
        for bad_tail in [1 << 40, 4] {
            let (r, mut p, mut c) = pair(128);
            send(&r, &mut p, &[9; 16]).unwrap();
            r.tail().store(bad_tail, Ordering::Relaxed);
            // The record itself is fine; the position is checked once the ring
            // looks empty: before sleeping, and every so many empty polls.
            assert_eq!(recv(&r, &mut c).unwrap().unwrap(), vec![9; 16]);
            c.flush(&r);
            assert!(!c.prepare_wait(&r), "do not sleep on a corrupted ring");
            assert!(c.peek(&r).is_err());
            let (r, mut p, mut c) = pair(128);
            send(&r, &mut p, &[9; 16]).unwrap();
            r.tail().store(bad_tail, Ordering::Relaxed);
            recv(&r, &mut c).unwrap().unwrap();
            let polls = (0..2 * CROSS_CHECK_EVERY).position(|_| c.peek(&r).is_err());
            assert!(polls.is_some(), "busy polling finds it too");
        }
        let (r, mut p, _c) = pair(128);
        r.head().store(1 << 40, Ordering::Relaxed);
        // Room is only re-checked when the cached view says full.
        let mut last = Ok(());
        for _ in 0..10 {
            last = send(&r, &mut p, &[1; 16]);
            if last.is_err() {
                break;
            }
        }
        assert!(matches!(last, Err(ReserveError::Corrupted(_))));
        // Misaligned positions are refused when an end attaches.
        let r = HeapRegion::new(128);
        r.tail().store(3, Ordering::Relaxed);
        r.head().store(5, Ordering::Relaxed);
        assert!(Producer::new(geo(128), &r).is_err());
        assert!(Consumer::new(geo(128), &r).is_err());
    }

    /// A header erased (or given a stale lap tag) under the producer's position is
    /// an error once the receiver would otherwise wait for it forever.
    #[test]
    fn a_header_that_never_commits_is_an_error_not_a_hang() {
        for erased in [0, record_word(16, REC_DATA, u16::MAX)] {
            let (r, mut p, mut c) = pair(128);
            send(&r, &mut p, &[9; 16]).unwrap();
            r.poke_word(0, erased);
            assert_eq!(c.peek(&r), Ok(None));
            assert!(!c.prepare_wait(&r));
            assert_eq!(c.peek(&r), Err("record below the producer position never committed"));
        }
    }

    #[test]
    fn shortened_commit_frees_the_rest() {
        let (r, mut p, mut c) = pair(128);
        let s = p.reserve(&r, 40).unwrap();
        r.write(s.off(), &[5; 3]);
        p.commit(&r, s, 3);
        assert_eq!(p.position(), 16);
        assert_eq!(recv(&r, &mut c).unwrap().unwrap(), vec![5; 3]);
    }

    #[test]
    fn an_aborted_reservation_leaves_no_trace() {
        let (r, mut p, mut c) = pair(128);
        send(&r, &mut p, &[1; 56]).unwrap();
        send(&r, &mut p, &[1; 32]).unwrap();
        recv(&r, &mut c).unwrap().unwrap();
        recv(&r, &mut c).unwrap().unwrap();
        // This one would wrap: nothing, not even the padding, is written until commit.
        let s = p.reserve(&r, 40).unwrap();
        r.write(s.off(), &[7; 40]);
        assert_eq!(recv(&r, &mut c).unwrap(), None);
        send(&r, &mut p, &[2; 40]).unwrap();
        assert_eq!(recv(&r, &mut c).unwrap().unwrap(), vec![2; 40]);
    }

    #[test]
    fn wake_flags_are_consumed_once() {
        let (r, mut p, mut c) = pair(128);
        assert!(c.prepare_wait(&r));
        let s = p.reserve(&r, 1).unwrap();
        assert!(p.commit(&r, s, 1));
        let s = p.reserve(&r, 1).unwrap();
        assert!(!p.commit(&r, s, 1), "no second wake without a new waiter");
        assert!(!c.prepare_wait(&r), "data is there: do not sleep");
    }

    /// The consumer publishes its position per batch (a quarter ring), when the ring
    /// is empty, and at once when the producer waits for room.
    #[test]
    fn head_is_published_in_batches() {
        let (r, mut p, mut c) = pair(256);
        for _ in 0..8 {
            send(&r, &mut p, &[1; 8]).unwrap();
        }
        let take = |c: &mut Consumer| {
            let s = c.peek(&r).unwrap().unwrap();
            c.release(&r, s)
        };
        for _ in 0..3 {
            assert!(!take(&mut c));
        }
        assert_eq!(r.head().load(Ordering::Relaxed), 0, "below the batch: not yet published");
        take(&mut c);
        assert_eq!(r.head().load(Ordering::Relaxed), 64);
        r.tx_wait().store(1, Ordering::Relaxed);
        assert!(take(&mut c), "a waiting producer is woken at once");
        assert_eq!(r.head().load(Ordering::Relaxed), 80);
        take(&mut c);
        take(&mut c);
        take(&mut c);
        assert_eq!(c.peek(&r), Ok(None));
        assert!(!c.flush(&r));
        assert_eq!(r.head().load(Ordering::Relaxed), 128, "an empty ring publishes everything");
    }

    /// Mutation check: in an exactly full ring the word after the last record is the
    /// oldest record's header, one lap old. Only the lap tag tells it apart.
    #[test]
    fn the_lap_tag_rejects_the_previous_laps_header() {
        for (mutation, stale_delivered) in [(None, false), (Some(Mutation::NoLapTags), true)] {
            let r = mutation.map_or_else(|| HeapRegion::new(64), |m| HeapRegion::mutated(64, m));
            let (r, mut p, mut c) = ends(r);
            send(&r, &mut p, &[1; 24]).unwrap();
            send(&r, &mut p, &[2; 24]).unwrap();
            assert_eq!(p.reserve(&r, 1).unwrap_err(), ReserveError::Full);
            recv(&r, &mut c).unwrap().unwrap();
            recv(&r, &mut c).unwrap().unwrap();
            assert_eq!(recv(&r, &mut c).unwrap().is_some(), stale_delivered, "{mutation:?}");
        }
    }

    /// Mutation check: payload of an earlier lap may hold a word that looks exactly
    /// like a valid header where a later lap puts a record boundary. Only zeroing the
    /// next header word before each commit keeps it from being delivered.
    #[test]
    fn pre_zeroing_hides_stale_payload() {
        for (mutation, stale_delivered) in [(None, false), (Some(Mutation::NoPreZero), true)] {
            let r = mutation.map_or_else(|| HeapRegion::new(128), |m| HeapRegion::mutated(128, m));
            let (r, mut p, mut c) = ends(r);
            // Lap 0: a payload whose second word (ring offset 16) is a lap-1 header.
            let mut msg = [0u8; 56];
            msg[8..16].copy_from_slice(&record_word(0, REC_DATA, 1).to_le_bytes());
            send(&r, &mut p, &msg).unwrap();
            send(&r, &mut p, &[0; 56]).unwrap();
            recv(&r, &mut c).unwrap().unwrap();
            recv(&r, &mut c).unwrap().unwrap();
            // Lap 1: a 16-byte record at offset 0 ends exactly at offset 16.
            send(&r, &mut p, &[3; 8]).unwrap();
            assert_eq!(recv(&r, &mut c).unwrap().unwrap(), vec![3; 8]);
            assert_eq!(recv(&r, &mut c).unwrap().is_some(), stale_delivered, "{mutation:?}");
        }
    }

    /// Bytes written into a reservation that is then aborted or shortened are no
    /// longer zero: the producer forgets what it had zeroed ahead, so garbage that
    /// looks like a header is never where the consumer looks next.
    #[test]
    fn aborted_and_shortened_grants_are_zeroed_again() {
        let fake = record_word(0, REC_DATA, 0).to_le_bytes();
        for (shorten, forget) in [(false, false), (false, true), (true, false), (true, true)] {
            let (r, mut p, mut c) = pair(1024);
            send(&r, &mut p, &[1; 8]).unwrap(); // zeroes ahead of position 16
            recv(&r, &mut c).unwrap().unwrap();
            let s = p.reserve(&r, 40).unwrap(); // payload at 24..64
            r.write(s.off(), &[fake, fake].concat());
            if shorten {
                // An empty record: the consumer looks next at 24, inside the grant.
                if forget {
                    // What a commit that kept its zeroed frontier would publish.
                    r.store_word(s.hdr, record_word(0, REC_DATA, 0));
                } else {
                    p.commit(&r, s, 0);
                }
                assert_eq!(recv(&r, &mut c).unwrap().unwrap(), Vec::<u8>::new());
            } else {
                if !forget {
                    p.abort(s);
                }
                // An 8-byte record: the consumer looks next at 32, inside the old grant.
                send(&r, &mut p, &[2; 8]).unwrap();
                assert_eq!(recv(&r, &mut c).unwrap().unwrap(), vec![2; 8]);
            }
            assert_eq!(recv(&r, &mut c).unwrap().is_some(), forget, "shorten {shorten}, forget {forget}");
        }
    }

    proptest! {
        /// The ring behaves like a FIFO queue of byte strings with bounded room.
        #[test]
        fn ring_matches_a_queue(ops in proptest::collection::vec((any::<bool>(), 0usize..100), 1..400)) {
            let (r, mut p, mut c) = pair(256);
            let mut model = VecDeque::new();
            let mut n = 0u8;
            for (is_send, len) in ops {
                if is_send {
                    n = n.wrapping_add(1);
                    let msg = vec![n; len];
                    let mut sent = send(&r, &mut p, &msg);
                    if sent == Err(ReserveError::Full) {
                        // A waiting producer gets the consumer's unpublished releases.
                        r.tx_wait().store(1, Ordering::Relaxed);
                        c.flush(&r);
                        r.tx_wait().store(0, Ordering::Relaxed);
                        sent = send(&r, &mut p, &msg);
                    }
                    match sent {
                        Ok(()) => model.push_back(msg),
                        Err(ReserveError::Full) => prop_assert!(!model.is_empty()),
                        Err(e) => prop_assert!(false, "{e:?}"),
                    }
                } else {
                    prop_assert_eq!(recv(&r, &mut c).unwrap(), model.pop_front());
                }
            }
        }

        /// Random words written over any header position never cause a panic or an
        /// out-of-bounds slot: the consumer delivers in-bounds records or errors.
        #[test]
        fn random_header_words_stay_in_bounds(at in 0usize..32, word in any::<u64>(), sends in 1usize..12) {
            let (r, mut p, mut c) = pair(256);
            for i in 0..sends {
                let _ = send(&r, &mut p, &vec![i as u8; (i * 13) % 40]);
            }
            r.poke_word(at * 8, word);
            for _ in 0..20 {
                match c.peek(&r) {
                    Ok(Some(s)) => {
                        prop_assert!(s.off() + s.len <= 256);
                        c.release(&r, s);
                    }
                    Ok(None) => { c.flush(&r); }
                    Err(_) => break,
                }
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn geo() -> Geometry {
        Geometry::new(64, 24)
    }

    /// Three 20-byte records (32 B each) through a 64 B ring: the third waits for
    /// room, wraps into the slot of the first and meets its header, one lap old.
    fn three_records(r: HeapRegion) {
        let r = Arc::new(r);
        let pr = r.clone();
        let producer = thread::spawn(move || {
            let mut p = Producer::new(geo(), &*pr).unwrap();
            let mut sent = 0u8;
            while sent < 3 {
                match p.reserve(&*pr, 20) {
                    Ok(s) => {
                        pr.write(s.off(), &[sent; 20]);
                        p.commit(&*pr, s, 20);
                        sent += 1;
                    }
                    Err(ReserveError::Full) => thread::yield_now(),
                    Err(e) => panic!("{e:?}"),
                }
            }
        });
        let mut c = Consumer::new(geo(), &*r).unwrap();
        let mut got = 0u8;
        while got < 3 {
            match c.peek(&*r).unwrap() {
                Some(s) => {
                    let mut buf = [0u8; 20];
                    r.read(s.off(), &mut buf);
                    assert_eq!(s.len, 20);
                    assert_eq!(buf, [got; 20], "a stale or torn record");
                    c.release(&*r, s);
                    got += 1;
                }
                None => {
                    c.flush(&*r);
                    thread::yield_now();
                }
            }
        }
        producer.join().unwrap();
    }

    /// Records cross the threads whole and in order, including across a wrap onto
    /// the previous lap's header, and the payload writes never race with the reads
    /// (loom checks the cells: the header's release/acquire is the only ordering).
    #[test]
    fn loom_records_arrive_whole_and_in_order() {
        loom::model(|| three_records(HeapRegion::new(64)));
    }

    /// Mutation check: with the commit store relaxed, loom finds the payload read
    /// racing with its write (a causality violation).
    #[test]
    #[should_panic(expected = "Causality violation")]
    fn loom_a_relaxed_commit_races() {
        loom::model(|| three_records(HeapRegion::mutated(64, Mutation::RelaxedCommit)));
    }

    /// Mutation check: without lap tags, the receiver takes the first record's
    /// header for the third's and reads a stale or racing payload.
    #[test]
    #[should_panic(expected = "a stale or torn record")]
    fn loom_without_lap_tags_a_stale_header_is_taken() {
        loom::model(|| three_records(HeapRegion::mutated(64, Mutation::NoLapTags)));
    }

    /// The waiter handshake: a receiver that decides to sleep is always seen by the
    /// producer's wake check (no lost wake-up).
    #[test]
    fn loom_no_lost_wakeup() {
        loom::model(|| {
            let r = Arc::new(HeapRegion::new(64));
            let pr = r.clone();
            let producer = thread::spawn(move || {
                let mut p = Producer::new(geo(), &*pr).unwrap();
                let s = p.reserve(&*pr, 8).unwrap();
                pr.write(s.off(), &[1; 8]);
                p.commit(&*pr, s, 8)
            });
            let mut c = Consumer::new(geo(), &*r).unwrap();
            let sleeps = c.prepare_wait(&*r);
            let woke = producer.join().unwrap();
            if sleeps {
                // The futex wait compares the flag with 1: it must have been cleared
                // by the producer's wake (so the wait returns at once), or the
                // producer must wake.
                assert!(woke && r.rx_wait().load(Ordering::Relaxed) == 0);
            } else {
                assert!(c.peek(&*r).unwrap().is_some(), "did not sleep, so the record is there");
            }
        });
    }

    /// The same handshake for a sender waiting for room.
    #[test]
    fn loom_no_lost_wakeup_for_room() {
        loom::model(|| {
            let r = Arc::new(HeapRegion::new(64));
            let mut p = Producer::new(geo(), &*r).unwrap();
            for _ in 0..2 {
                let s = p.reserve(&*r, 24).unwrap();
                p.commit(&*r, s, 24);
            }
            let cr = r.clone();
            let consumer = thread::spawn(move || {
                let mut c = Consumer::new(geo(), &*cr).unwrap();
                let s = c.peek(&*cr).unwrap().unwrap();
                c.release(&*cr, s)
            });
            let sleeps = p.prepare_wait(&*r, 24);
            let woke = consumer.join().unwrap();
            if sleeps {
                assert!(woke && r.tx_wait().load(Ordering::Relaxed) == 0);
            }
        });
    }

    /// The handshake for room when the consumer batches its releases (here: never
    /// by size, only when flagged or empty): one that does not publish at release (the producer had not flagged yet) publishes when it
    /// finds the ring empty, and then wakes the producer if it flagged meanwhile.
    #[test]
    fn loom_no_lost_wakeup_for_room_with_a_batched_release() {
        loom::model(|| {
            let g = Geometry { release_batch: u64::MAX, ..geo() };
            let r = Arc::new(HeapRegion::new(64));
            let mut p = Producer::new(g, &*r).unwrap();
            for _ in 0..2 {
                let s = p.reserve(&*r, 24).unwrap();
                p.commit(&*r, s, 24);
            }
            let cr = r.clone();
            let consumer = thread::spawn(move || {
                let mut c = Consumer::new(g, &*cr).unwrap();
                let s = c.peek(&*cr).unwrap().unwrap();
                let woke = c.release(&*cr, s);
                let s = c.peek(&*cr).unwrap().unwrap();
                let woke = c.release(&*cr, s) || woke;
                assert!(c.peek(&*cr).unwrap().is_none());
                c.flush(&*cr) || woke
            });
            let sleeps = p.prepare_wait(&*r, 24);
            let woke = consumer.join().unwrap();
            if sleeps {
                assert!(woke && r.tx_wait().load(Ordering::Relaxed) == 0);
            }
        });
    }

    /// The waker's barrier is load-bearing: with it removed (as if the sleeper's
    /// membarrier did not reach the waker), loom finds an execution in which the
    /// receiver decides to sleep and the sender misses its flag. This shows the model
    /// above is sensitive to exactly the barrier pair the fast path relies on.
    #[test]
    #[should_panic(expected = "lost wake-up")]
    fn loom_without_the_waker_barrier_a_wakeup_is_lost() {
        loom::model(|| {
            let r = Arc::new(HeapRegion::mutated(64, Mutation::NoWakerBarrier));
            let pr = r.clone();
            let producer = thread::spawn(move || {
                let mut p = Producer::new(geo(), &*pr).unwrap();
                let s = p.reserve(&*pr, 8).unwrap();
                p.commit(&*pr, s, 8)
            });
            let mut c = Consumer::new(geo(), &*r).unwrap();
            let sleeps = c.prepare_wait(&*r);
            let woke = producer.join().unwrap();
            if sleeps {
                assert!(woke, "lost wake-up");
            }
        });
    }

    /// Full wait loops on both ends over several records: the receiver sleeps whenever
    /// the ring looks empty, the sender whenever it looks full (a 64 B ring holds two
    /// 24 B records), and the receiver publishes its position only when it must (when
    /// the sender flagged or the ring is empty, never by batch size). A sleep is modelled as "yield until the flag is
    /// cleared": if a wake-up were lost the flag would stay 1 forever and loom
    /// reports a deadlock. Every record arrives once and in order.
    #[test]
    fn loom_sleeping_ends_always_wake_each_other() {
        fn sleep_on(flag: &AtomicU32) {
            // futex_wait(flag, 1): returns once the waker cleared the flag.
            while flag.load(Ordering::Relaxed) == 1 {
                thread::yield_now();
            }
        }
        let g = Geometry { release_batch: u64::MAX, ..geo() };
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(move || {
            let r = Arc::new(HeapRegion::new(64));
            let pr = r.clone();
            let producer = thread::spawn(move || {
                let mut p = Producer::new(g, &*pr).unwrap();
                for n in 0..3u8 {
                    let s = loop {
                        match p.reserve(&*pr, 20) {
                            Ok(s) => break s,
                            Err(ReserveError::Full) => {
                                if p.prepare_wait(&*pr, 20) {
                                    sleep_on(pr.tx_wait());
                                }
                            }
                            Err(e) => panic!("{e:?}"),
                        }
                    };
                    pr.write(s.off(), &[n; 20]);
                    if p.commit(&*pr, s, 20) {
                        // futex_wake: the flag is already 0, the sleeper proceeds.
                    }
                }
            });
            let mut c = Consumer::new(g, &*r).unwrap();
            for n in 0..3u8 {
                let s = loop {
                    match c.peek(&*r).unwrap() {
                        Some(s) => break s,
                        None => {
                            // As `Receiver::recv`: publish, wake a waiting sender, sleep.
                            c.flush(&*r);
                            if c.prepare_wait(&*r) {
                                sleep_on(r.rx_wait());
                            }
                        }
                    }
                };
                let mut buf = [0u8; 20];
                r.read(s.off(), &mut buf);
                assert_eq!(buf, [n; 20]);
                c.release(&*r, s);
            }
            producer.join().unwrap();
        });
    }
}
