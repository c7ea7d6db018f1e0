//! The ring protocol, free of the OS: positions, record framing, validation of
//! untrusted lengths and the waiter-flag handshake, over any [`Region`].
//!
//! The mapped file implements [`Region`] over shared memory; tests and loom use a
//! heap region. Nothing here trusts the peer: every position and record header read
//! from the region is checked before it drives an access, and a failed check is a
//! `Corrupted` error.

use crate::layout::{REC_DATA, REC_PAD, RECORD_ALIGN};
use crate::loom::{AtomicU32, AtomicU64, Ordering};

/// Where a ring lives: its control words and its data bytes.
pub(crate) trait Region {
    /// The producer position (bytes ever committed), written by the sender.
    fn tail(&self) -> &AtomicU64;
    /// The consumer position (bytes ever released), written by the receiver.
    fn head(&self) -> &AtomicU64;
    /// 1 while the receiver is (about to be) asleep; the futex word it sleeps on.
    fn rx_wait(&self) -> &AtomicU32;
    /// 1 while the sender is (about to be) asleep waiting for room.
    fn tx_wait(&self) -> &AtomicU32;
    /// Loads the 8-byte record header at data offset `off` (8-aligned, in bounds).
    fn load_word(&self, off: usize) -> u64;
    /// Stores the 8-byte record header at data offset `off` (8-aligned, in bounds).
    fn store_word(&self, off: usize, v: u64);
    /// The waker's half of the wake handshake, between its position store and its
    /// load of the peer's waiter flag: it must act as a full (StoreLoad) barrier
    /// *together with* [`Region::heavy_barrier`] on the sleeping side. Over shared
    /// memory with `membarrier(2)` available it is only a compiler fence (the
    /// sleeper's membarrier forces the barrier onto this CPU); otherwise, and under
    /// loom, a `SeqCst` fence. Runs on every commit and release.
    fn light_barrier(&self);
    /// The sleeper's half, between raising its waiter flag and re-checking the ring:
    /// a `SeqCst` fence plus, over shared memory, `membarrier(GLOBAL_EXPEDITED)`.
    /// Runs only when an end is about to sleep.
    fn heavy_barrier(&self);
}

/// A record header word: length in the low half, type in the high half, so that a
/// little-endian reader sees `u32 len` then `u32 type`.
pub(crate) fn record_word(len: u32, ty: u32) -> u64 {
    u64::from(len) | (u64::from(ty) << 32)
}

/// Bytes a record of `len` payload bytes occupies, header and padding included.
pub(crate) fn record_size(len: u64) -> u64 {
    RECORD_ALIGN + len.next_multiple_of(RECORD_ALIGN)
}

/// Geometry both ends agree on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) capacity: u64,
    pub(crate) max_message: u64,
}

/// A place in the ring handed to the caller: payload at data offset `off`, `len`
/// bytes; the position becomes `next` once committed or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) off: usize,
    pub(crate) len: usize,
    hdr: usize,
    next: u64,
}

/// Why the producer cannot reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReserveError {
    TooLarge,
    Full,
    Corrupted(&'static str),
}

/// The sender's private state.
#[derive(Debug)]
pub(crate) struct Producer {
    geo: Geometry,
    tail: u64,
    cached_head: u64,
}

impl Producer {
    /// Resumes at the positions currently in the region.
    pub(crate) fn new(geo: Geometry, r: &impl Region) -> Producer {
        let tail = r.tail().load(Ordering::Relaxed);
        // Pretend the ring is full so the first reserve loads and validates the head.
        Producer { geo, tail, cached_head: tail.wrapping_sub(geo.capacity) }
    }

    /// Finds room for a `len`-byte record, padding to the end first if it would wrap.
    /// Nothing becomes visible to the consumer until [`Producer::commit`].
    pub(crate) fn reserve(&mut self, r: &impl Region, len: usize) -> Result<Slot, ReserveError> {
        let cap = self.geo.capacity;
        if len as u64 > self.geo.max_message {
            return Err(ReserveError::TooLarge);
        }
        let total = record_size(len as u64);
        let at = self.tail & (cap - 1);
        let to_end = cap - at;
        let need = if to_end < total { to_end + total } else { total };
        if cap - self.tail.wrapping_sub(self.cached_head) < need {
            let head = r.head().load(Ordering::Acquire);
            // The consumer may only move forward, never past what we committed.
            if self.tail.wrapping_sub(head) > cap
                || head.wrapping_sub(self.cached_head) > self.tail.wrapping_sub(self.cached_head)
            {
                return Err(ReserveError::Corrupted("consumer position out of range"));
            }
            self.cached_head = head;
            if cap - self.tail.wrapping_sub(head) < need {
                return Err(ReserveError::Full);
            }
        }
        let (hdr, next) = if to_end < total {
            // The pad is written now but only published together with the record.
            r.store_word(at as usize, record_word((to_end - RECORD_ALIGN) as u32, REC_PAD));
            (0, self.tail.wrapping_add(to_end + total))
        } else {
            (at as usize, self.tail.wrapping_add(total))
        };
        Ok(Slot { off: hdr + RECORD_ALIGN as usize, len, hdr, next })
    }

    /// Publishes a reserved record (optionally shortened to `len`) with one release
    /// store. Returns true when the receiver flagged that it sleeps and must be woken.
    pub(crate) fn commit(&mut self, r: &impl Region, slot: Slot, len: usize) -> bool {
        debug_assert!(len <= slot.len);
        r.store_word(slot.hdr, record_word(len as u32, REC_DATA));
        // A shortened record frees its unused tail padding.
        let next = slot.next - (record_size(slot.len as u64) - record_size(len as u64));
        self.tail = next;
        r.tail().store(next, Ordering::Release);
        // Pairs with the receiver's heavy barrier in `Consumer::prepare_wait`: either
        // it sees our tail, or we see its flag. No fence, no RMW while it is awake.
        r.light_barrier();
        r.rx_wait().load(Ordering::Relaxed) != 0 && r.rx_wait().swap(0, Ordering::Relaxed) != 0
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
        let at = self.tail & (cap - 1);
        let to_end = cap - at;
        let need = if to_end < total { to_end + total } else { total };
        let head = r.head().load(Ordering::Acquire);
        if self.tail.wrapping_sub(head) > cap {
            return Err(ReserveError::Corrupted("consumer position out of range"));
        }
        Ok(cap - self.tail.wrapping_sub(head) >= need)
    }

    /// The producer position (bytes ever committed).
    #[cfg(test)]
    pub(crate) fn position(&self) -> u64 {
        self.tail
    }
}

/// The receiver's private state.
#[derive(Debug)]
pub(crate) struct Consumer {
    geo: Geometry,
    head: u64,
    cached_tail: u64,
    poisoned: Option<&'static str>,
}

impl Consumer {
    /// Resumes at the positions currently in the region.
    pub(crate) fn new(geo: Geometry, r: &impl Region) -> Consumer {
        let head = r.head().load(Ordering::Relaxed);
        Consumer { geo, head, cached_tail: head, poisoned: None }
    }

    /// The next committed record, if any. Validates the producer position and the
    /// record header against the geometry; a failure poisons the consumer.
    pub(crate) fn peek(&mut self, r: &impl Region) -> Result<Option<Slot>, &'static str> {
        if let Some(why) = self.poisoned {
            return Err(why);
        }
        self.peek_inner(r).inspect_err(|why| self.poisoned = Some(why))
    }

    fn peek_inner(&mut self, r: &impl Region) -> Result<Option<Slot>, &'static str> {
        let cap = self.geo.capacity;
        let mut head = self.head;
        for _ in 0..2 {
            if head == self.cached_tail {
                let tail = r.tail().load(Ordering::Acquire);
                if tail.wrapping_sub(head) > cap || !tail.is_multiple_of(RECORD_ALIGN) {
                    return Err("producer position out of range");
                }
                if tail == head {
                    self.head = head;
                    return Ok(None);
                }
                self.cached_tail = tail;
            }
            let avail = self.cached_tail.wrapping_sub(head);
            let at = head & (cap - 1);
            let word = r.load_word(at as usize);
            let (len, ty) = (word & 0xffff_ffff, word >> 32);
            match ty as u32 {
                REC_DATA => {
                    if len > self.geo.max_message {
                        return Err("record length above the maximum message");
                    }
                    let total = record_size(len);
                    if total > cap - at || total > avail {
                        return Err("record length beyond the committed data");
                    }
                    self.head = head;
                    return Ok(Some(Slot {
                        off: (at + RECORD_ALIGN) as usize,
                        len: len as usize,
                        hdr: at as usize,
                        next: head.wrapping_add(total),
                    }));
                }
                REC_PAD => {
                    let to_end = cap - at;
                    if len + RECORD_ALIGN != to_end || to_end > avail || at == 0 {
                        return Err("bad padding record");
                    }
                    head = head.wrapping_add(to_end);
                }
                _ => return Err("unknown record type"),
            }
        }
        Err("padding record after padding")
    }

    /// Gives a record's space back to the producer. Returns true when the sender
    /// flagged that it sleeps waiting for room and must be woken.
    pub(crate) fn release(&mut self, r: &impl Region, slot: Slot) -> bool {
        self.head = slot.next;
        r.head().store(slot.next, Ordering::Release);
        // Pairs with the sender's heavy barrier in `Producer::prepare_wait`.
        r.light_barrier();
        r.tx_wait().load(Ordering::Relaxed) != 0 && r.tx_wait().swap(0, Ordering::Relaxed) != 0
    }

    /// Announces that the receiver is about to sleep. Returns false (and clears the
    /// flag) if a record was committed meanwhile, or the state is corrupted.
    pub(crate) fn prepare_wait(&mut self, r: &impl Region) -> bool {
        r.rx_wait().store(1, Ordering::Relaxed);
        r.heavy_barrier();
        if r.tail().load(Ordering::Acquire) == self.head && self.poisoned.is_none() {
            true
        } else {
            r.rx_wait().store(0, Ordering::Relaxed);
            false
        }
    }
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
    /// False only in the loom test showing that the waker's barrier is load-bearing.
    waker_barrier: bool,
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
            waker_barrier: true,
        }
    }

    /// A region whose wakers skip their barrier (to show loom then finds a lost wake-up).
    #[cfg(loom)]
    pub(crate) fn without_waker_barrier(capacity: usize) -> HeapRegion {
        HeapRegion { waker_barrier: false, ..HeapRegion::new(capacity) }
    }

    pub(crate) fn write(&self, off: usize, src: &[u8]) {
        for (i, b) in src.iter().enumerate() {
            // SAFETY: the protocol gives the producer exclusive use of reserved bytes;
            // loom checks exactly that claim.
            self.bytes[off + i].with_mut(|p| unsafe { *p = *b });
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
        self.words[off / 8].load(Ordering::Relaxed)
    }
    fn store_word(&self, off: usize, v: u64) {
        self.words[off / 8].store(v, Ordering::Relaxed)
    }
    /// Models the membarrier pairing: the sleeper's membarrier makes the waker execute
    /// a full barrier at some point of its instruction stream. The only placement that
    /// matters is between its position store and its flag load (elsewhere either its
    /// store is already visible to the sleeper's re-check, or its load already sees
    /// the flag), so a `SeqCst` fence there on both sides is the model.
    fn light_barrier(&self) {
        if self.waker_barrier {
            crate::loom::fence(Ordering::SeqCst);
        }
    }
    fn heavy_barrier(&self) {
        crate::loom::fence(Ordering::SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn pair(cap: u64) -> (HeapRegion, Producer, Consumer) {
        let r = HeapRegion::new(cap as usize);
        let geo = Geometry { capacity: cap, max_message: crate::layout::max_message_for(cap) };
        let p = Producer::new(geo, &r);
        let c = Consumer::new(geo, &r);
        (r, p, c)
    }

    fn send(r: &HeapRegion, p: &mut Producer, msg: &[u8]) -> Result<(), ReserveError> {
        let s = p.reserve(r, msg.len())?;
        r.write(s.off, msg);
        p.commit(r, s, msg.len());
        Ok(())
    }

    fn recv(r: &HeapRegion, c: &mut Consumer) -> Result<Option<Vec<u8>>, &'static str> {
        let Some(s) = c.peek(r)? else { return Ok(None) };
        let mut v = vec![0; s.len];
        r.read(s.off, &mut v);
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
    fn hostile_record_lengths_are_errors() {
        for bad in [
            record_word(4000, REC_DATA),    // beyond the maximum
            record_word(56, REC_DATA),      // within max but beyond the committed bytes
            record_word(8, 77),             // unknown type
            record_word(0, REC_PAD),        // pad not reaching the end
            record_word(u32::MAX, REC_PAD), // absurd pad
        ] {
            let (r, mut p, mut c) = pair(128);
            send(&r, &mut p, &[9; 16]).unwrap();
            r.poke_word(0, bad);
            assert!(c.peek(&r).is_err());
            // Poisoned: the error repeats, nothing is delivered.
            assert!(c.peek(&r).is_err());
        }
    }

    #[test]
    fn hostile_positions_are_errors() {
        let (r, mut p, mut c) = pair(128);
        send(&r, &mut p, &[9; 16]).unwrap();
        r.tail().store(1 << 40, Ordering::Relaxed);
        assert!(c.peek(&r).is_err());
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
    }

    #[test]
    fn shortened_commit_frees_the_rest() {
        let (r, mut p, mut c) = pair(128);
        let s = p.reserve(&r, 40).unwrap();
        r.write(s.off, &[5; 3]);
        p.commit(&r, s, 3);
        assert_eq!(p.position(), 16);
        assert_eq!(recv(&r, &mut c).unwrap().unwrap(), vec![5; 3]);
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
                    match send(&r, &mut p, &msg) {
                        Ok(()) => model.push_back(msg),
                        Err(ReserveError::Full) => prop_assert!(!model.is_empty()),
                        Err(e) => prop_assert!(false, "{e:?}"),
                    }
                } else {
                    prop_assert_eq!(recv(&r, &mut c).unwrap(), model.pop_front());
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
        Geometry { capacity: 64, max_message: 24 }
    }

    /// Records cross the threads whole and in order, including across a wrap, and
    /// the payload writes never race with the reads (loom checks the cells).
    #[test]
    fn loom_records_arrive_whole_and_in_order() {
        loom::model(|| {
            let r = Arc::new(HeapRegion::new(64));
            let pr = r.clone();
            let producer = thread::spawn(move || {
                let mut p = Producer::new(geo(), &*pr);
                let mut sent = 0u8;
                // 3 records of 24 B (32 B each) in a 64 B ring: the third must wait
                // for room and then wraps.
                while sent < 3 {
                    match p.reserve(&*pr, 20) {
                        Ok(s) => {
                            pr.write(s.off, &[sent; 20]);
                            p.commit(&*pr, s, 20);
                            sent += 1;
                        }
                        Err(ReserveError::Full) => thread::yield_now(),
                        Err(e) => panic!("{e:?}"),
                    }
                }
            });
            let mut c = Consumer::new(geo(), &*r);
            let mut got = 0u8;
            while got < 3 {
                match c.peek(&*r).unwrap() {
                    Some(s) => {
                        let mut buf = [0u8; 20];
                        r.read(s.off, &mut buf);
                        assert_eq!(s.len, 20);
                        assert_eq!(buf, [got; 20]);
                        c.release(&*r, s);
                        got += 1;
                    }
                    None => thread::yield_now(),
                }
            }
            producer.join().unwrap();
        });
    }

    /// The waiter handshake: a receiver that decides to sleep is always seen by the
    /// producer's wake check (no lost wake-up).
    #[test]
    fn loom_no_lost_wakeup() {
        loom::model(|| {
            let r = Arc::new(HeapRegion::new(64));
            let pr = r.clone();
            let producer = thread::spawn(move || {
                let mut p = Producer::new(geo(), &*pr);
                let s = p.reserve(&*pr, 8).unwrap();
                pr.write(s.off, &[1; 8]);
                p.commit(&*pr, s, 8)
            });
            let mut c = Consumer::new(geo(), &*r);
            let sleeps = c.prepare_wait(&*r);
            let woke = producer.join().unwrap();
            if sleeps {
                // The futex wait compares the flag with 1: it must have been cleared
                // by the producer's wake (so the wait returns at once), or the
                // producer must wake.
                assert!(woke && r.rx_wait().load(Ordering::Relaxed) == 0);
            }
        });
    }

    /// The same handshake for a sender waiting for room.
    #[test]
    fn loom_no_lost_wakeup_for_room() {
        loom::model(|| {
            let r = Arc::new(HeapRegion::new(64));
            let mut p = Producer::new(geo(), &*r);
            for _ in 0..2 {
                let s = p.reserve(&*r, 24).unwrap();
                p.commit(&*r, s, 24);
            }
            let cr = r.clone();
            let consumer = thread::spawn(move || {
                let mut c = Consumer::new(geo(), &*cr);
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

    /// The waker's barrier is load-bearing: with it removed (as if the sleeper's
    /// membarrier did not reach the waker), loom finds an execution in which the
    /// receiver decides to sleep and the sender misses its flag. This shows the model
    /// above is sensitive to exactly the barrier pair the fast path relies on.
    #[test]
    #[should_panic(expected = "lost wake-up")]
    fn loom_without_the_waker_barrier_a_wakeup_is_lost() {
        loom::model(|| {
            let r = Arc::new(HeapRegion::without_waker_barrier(64));
            let pr = r.clone();
            let producer = thread::spawn(move || {
                let mut p = Producer::new(geo(), &*pr);
                let s = p.reserve(&*pr, 8).unwrap();
                p.commit(&*pr, s, 8)
            });
            let mut c = Consumer::new(geo(), &*r);
            let sleeps = c.prepare_wait(&*r);
            let woke = producer.join().unwrap();
            if sleeps {
                assert!(woke, "lost wake-up");
            }
        });
    }

    /// Full wait loops on both ends over several records: the receiver sleeps whenever
    /// the ring looks empty, the sender whenever it looks full (a 64 B ring holds two
    /// 24 B records). A sleep is modelled as "yield until the flag is cleared": if a
    /// wake-up were lost the flag would stay 1 forever and loom reports a deadlock
    /// (every thread blocked). Every record arrives once and in order.
    #[test]
    fn loom_sleeping_ends_always_wake_each_other() {
        fn sleep_on(flag: &AtomicU32) {
            // futex_wait(flag, 1): returns once the waker cleared the flag.
            while flag.load(Ordering::Relaxed) == 1 {
                thread::yield_now();
            }
        }
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let r = Arc::new(HeapRegion::new(64));
            let pr = r.clone();
            let producer = thread::spawn(move || {
                let mut p = Producer::new(geo(), &*pr);
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
                    pr.write(s.off, &[n; 20]);
                    if p.commit(&*pr, s, 20) {
                        // futex_wake: the flag is already 0, the sleeper proceeds.
                    }
                }
            });
            let mut c = Consumer::new(geo(), &*r);
            for n in 0..3u8 {
                let s = loop {
                    match c.peek(&*r).unwrap() {
                        Some(s) => break s,
                        None => {
                            if c.prepare_wait(&*r) {
                                sleep_on(r.rx_wait());
                            }
                        }
                    }
                };
                let mut buf = [0u8; 20];
                r.read(s.off, &mut buf);
                assert_eq!(buf, [n; 20]);
                c.release(&*r, s);
            }
            producer.join().unwrap();
        });
    }
}
