//! The shared free list: a lock-free stack of segment indices (a Treiber stack).
//!
//! The head is one 64-bit word, `tag << 32 | index`. Every successful push or pop
//! bumps the tag, so a thread that read the head, was preempted, and tries its CAS
//! after other threads popped and pushed the same index fails instead of installing a
//! stale `next` (the ABA problem). The tag is 32 bits: an ABA failure would need a
//! thread to stall between its load and its CAS while others perform exactly 2^32
//! stack operations, which we accept (as do most tagged-index stacks).
//!
//! Links live beside the stack in `next`, one per segment, so the segments' own bytes
//! are never touched by the allocator. Batches move with one CAS: a chain is walked
//! from the head and cut off, or linked locally and spliced on top, which is how a
//! per-thread cache refills and flushes.

use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::strided::Strided;

/// "No segment": the end of a chain.
pub(crate) const NIL: u32 = u32::MAX;

/// One stack head on its own pair of cache lines, so shards do not false-share.
#[repr(align(128))]
struct Head(AtomicU64);

/// The shared free list: one Treiber stack per shard over a common link table.
///
/// Each thread pushes to and pops from its own shard and steals from the others
/// (shard 0 first) only when its own is empty, so threads that lease and return on
/// their own stop contending for one cache line. Every segment starts in shard 0,
/// lowest index on top: a segment never used before is always handed out in index
/// order, which keeps the arena's touched footprint dense.
pub(crate) struct FreeList {
    heads: Box<[Head]>,
    /// `heads.len() - 1`; the shard count is a power of two.
    mask: usize,
    next: Strided<AtomicU32>,
}

fn pack(tag: u32, index: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(index)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

impl FreeList {
    /// A list holding every index `0..count` in shard 0, lowest on top, with
    /// `shards` shards (rounded up to a power of two).
    pub(crate) fn full(count: u32, shards: usize) -> FreeList {
        let shards = shards.max(1).next_power_of_two();
        let count_usize = count as usize;
        let next =
            Strided::new(count_usize, |i| AtomicU32::new(if i + 1 < count_usize { (i + 1) as u32 } else { NIL }));
        let top = if count == 0 { NIL } else { 0 };
        let heads = (0..shards).map(|s| Head(AtomicU64::new(pack(0, if s == 0 { top } else { NIL })))).collect();
        FreeList { heads, mask: shards - 1, next }
    }

    /// The next link of `index`; an index outside the table reads as the chain's end.
    #[inline]
    fn next_of(&self, index: u32) -> u32 {
        self.next.get(index as usize).map_or(NIL, |n| n.load(Ordering::Relaxed))
    }

    #[inline]
    fn head(&self, shard: usize) -> &AtomicU64 {
        &self.heads[shard & self.mask].0
    }

    /// Pops one index from `shard`, or from another shard if that one is empty;
    /// `None` only if every shard is empty.
    #[inline]
    pub(crate) fn pop(&self, shard: usize) -> Option<u32> {
        if let Some(index) = self.pop_from(self.head(shard)) {
            return Some(index);
        }
        self.steal(shard)
    }

    #[cold]
    fn steal(&self, shard: usize) -> Option<u32> {
        (0..self.heads.len()).filter(|&s| s != shard & self.mask).find_map(|s| self.pop_from(self.head(s)))
    }

    #[inline]
    fn pop_from(&self, head_word: &AtomicU64) -> Option<u32> {
        // Acquire pairs with the Release of the push that put `top` there, so the
        // popper sees the link and everything the previous owner wrote.
        let mut head = head_word.load(Ordering::Acquire);
        loop {
            let (tag, top) = unpack(head);
            if top == NIL {
                return None;
            }
            // May be stale if `top` is popped meanwhile; the tagged CAS then fails.
            let new = pack(tag.wrapping_add(1), self.next_of(top));
            match head_word.compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Some(top),
                Err(actual) => head = actual,
            }
        }
    }

    /// Pops up to `out.len()` indices into `out` with a single CAS, from `shard` or, if
    /// it is empty, from the first other shard that has any; returns how many.
    pub(crate) fn pop_batch(&self, shard: usize, out: &mut [u32]) -> usize {
        let n = self.heads.len();
        let own = shard & self.mask;
        std::iter::once(own)
            .chain((0..n).filter(|&s| s != own))
            .map(|s| self.pop_batch_from(self.head(s), out))
            .find(|&got| got > 0)
            .unwrap_or(0)
    }

    /// The chain below the head cannot change while the head's tag is unchanged (any
    /// push or pop bumps it), so a successful CAS proves the walked chain was intact.
    fn pop_batch_from(&self, head_word: &AtomicU64, out: &mut [u32]) -> usize {
        if out.is_empty() {
            return 0;
        }
        let mut head = head_word.load(Ordering::Acquire);
        loop {
            let (tag, top) = unpack(head);
            let mut cur = top;
            let mut got = 0;
            while cur != NIL && got < out.len() {
                out[got] = cur;
                got += 1;
                cur = self.next_of(cur);
            }
            if got == 0 {
                return 0;
            }
            let new = pack(tag.wrapping_add(1), cur);
            match head_word.compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return got,
                Err(actual) => head = actual,
            }
        }
    }

    /// Pushes one index the caller owns onto `shard`.
    #[inline]
    pub(crate) fn push(&self, shard: usize, index: u32) {
        self.push_chain(self.head(shard), index, index);
    }

    /// Pushes every index in `indices` (all owned by the caller) onto `shard` with
    /// one CAS.
    pub(crate) fn push_batch(&self, shard: usize, indices: &[u32]) {
        let (Some(&first), Some(&last)) = (indices.first(), indices.last()) else { return };
        for pair in indices.windows(2) {
            if let Some(link) = self.next.get(pair[0] as usize) {
                link.store(pair[1], Ordering::Relaxed);
            }
        }
        self.push_chain(self.head(shard), first, last);
    }

    /// Splices the caller-owned chain `first ..= last` (already linked) on top.
    #[inline]
    fn push_chain(&self, head_word: &AtomicU64, first: u32, last: u32) {
        let Some(last_link) = self.next.get(last as usize) else { return };
        let mut head = head_word.load(Ordering::Relaxed);
        loop {
            let (tag, top) = unpack(head);
            last_link.store(top, Ordering::Relaxed);
            // Release publishes the links and the segments' contents to the next popper.
            let new = pack(tag.wrapping_add(1), first);
            match head_word.compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// Counts the indices on all shards by walking them. Exact when no thread pops
    /// meanwhile (pushes only make it count short); used when the last handle goes.
    pub(crate) fn len_quiescent(&self) -> usize {
        let mut n = 0;
        for head in self.heads.iter() {
            let (_, mut cur) = unpack(head.0.load(Ordering::Acquire));
            while cur != NIL && n <= self.next.len() {
                n += 1;
                cur = self.next_of(cur);
            }
        }
        n
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pops_every_index_once_then_none() {
        let list = FreeList::full(5, 2);
        let mut got: Vec<u32> = std::iter::from_fn(|| list.pop(1)).collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(list.pop(0), None);
    }

    #[test]
    fn batches_move_in_one_piece() {
        let list = FreeList::full(10, 2);
        let mut out = [0; 4];
        assert_eq!(list.pop_batch(1, &mut out), 4); // stolen from shard 0
        assert_eq!(list.len_quiescent(), 6);
        list.push_batch(1, &out[1..]);
        assert_eq!(list.len_quiescent(), 9);
        list.push(0, out[0]);
        assert_eq!(list.len_quiescent(), 10);
        let mut all = [0; 100];
        assert_eq!(list.pop_batch(1, &mut all), 3); // shard 1's own first
        assert_eq!(list.pop_batch(1, &mut all[3..]), 7);
        let mut all = all[..10].to_vec();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_thread_reuses_its_own_shard_first() {
        let list = FreeList::full(4, 2);
        let first = list.pop(1).unwrap(); // shard 1 is empty: stolen from shard 0
        assert_eq!(first, 0);
        list.push(1, first);
        // Shard 1's own segment comes back before shard 0's lower ones.
        assert_eq!(list.pop(1), Some(0));
        assert_eq!(list.pop(0), Some(1));
        // Shard 3 is shard 1 (two shards).
        list.push(3, 0);
        assert_eq!(list.pop(1), Some(0));
    }

    #[test]
    fn empty_list() {
        let list = FreeList::full(0, 4);
        assert_eq!(list.pop(3), None);
        assert_eq!(list.pop_batch(3, &mut [0; 3]), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// Two threads: one moves batches (a local cache refilling and flushing), one
    /// pops and pushes single indices. Afterwards every index is on the list once.
    #[test]
    fn batch_and_single_ops_never_lose_or_duplicate() {
        loom::model(|| {
            let list = Arc::new(FreeList::full(3, 2));
            let l2 = list.clone();
            let t = loom::thread::spawn(move || {
                let mut got = [0; 2];
                let n = l2.pop_batch(1, &mut got);
                l2.push_batch(1, &got[..n]);
            });
            if let Some(i) = list.pop(0) {
                list.push(0, i);
            }
            t.join().unwrap();
            let mut all = Vec::new();
            while let Some(i) = list.pop(0) {
                all.push(i);
            }
            all.sort_unstable();
            assert_eq!(all, vec![0, 1, 2]);
        });
    }

    /// Two threads each pop one index: they never get the same one.
    #[test]
    fn concurrent_pops_are_exclusive() {
        loom::model(|| {
            let list = Arc::new(FreeList::full(2, 2));
            let l2 = list.clone();
            let t = loom::thread::spawn(move || l2.pop(1));
            let a = list.pop(0);
            let b = t.join().unwrap();
            assert!(a.is_some() && b.is_some());
            assert_ne!(a, b);
        });
    }

    /// A pop racing a pop-then-push of the same top (the ABA shape) stays consistent.
    #[test]
    fn aba_shape_is_caught_by_the_tag() {
        loom::model(|| {
            let list = Arc::new(FreeList::full(3, 1));
            let l2 = list.clone();
            let t = loom::thread::spawn(move || {
                let a = l2.pop(0);
                let b = l2.pop(0);
                if let Some(a) = a {
                    l2.push(0, a);
                }
                b
            });
            let mine = list.pop(0);
            let theirs = t.join().unwrap();
            let mut all = Vec::new();
            while let Some(i) = list.pop(0) {
                all.push(i);
            }
            all.extend(mine);
            all.extend(theirs);
            all.sort_unstable();
            assert_eq!(all, vec![0, 1, 2]);
        });
    }
}
