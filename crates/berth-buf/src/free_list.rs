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

/// "No segment": the end of a chain.
pub(crate) const NIL: u32 = u32::MAX;

pub(crate) struct FreeList {
    head: AtomicU64,
    next: Box<[AtomicU32]>,
}

#[inline]
fn pack(tag: u32, index: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(index)
}

#[inline]
fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

impl FreeList {
    /// A stack holding every index `0..count`, lowest on top.
    pub(crate) fn full(count: u32) -> FreeList {
        let next = (0..count).map(|i| AtomicU32::new(if i + 1 < count { i + 1 } else { NIL })).collect();
        let top = if count == 0 { NIL } else { 0 };
        FreeList { head: AtomicU64::new(pack(0, top)), next }
    }

    /// The next link of `index`; an index outside the table reads as the chain's end.
    #[inline]
    fn next_of(&self, index: u32) -> u32 {
        self.next.get(index as usize).map_or(NIL, |n| n.load(Ordering::Relaxed))
    }

    /// Pops one index, or `None` if the stack is empty.
    #[inline]
    pub(crate) fn pop(&self) -> Option<u32> {
        // Acquire pairs with the Release of the push that put `top` there, so the
        // popper sees the link and everything the previous owner wrote.
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let (tag, top) = unpack(head);
            if top == NIL {
                return None;
            }
            // May be stale if `top` is popped meanwhile; the tagged CAS then fails.
            let new = pack(tag.wrapping_add(1), self.next_of(top));
            match self.head.compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Some(top),
                Err(actual) => head = actual,
            }
        }
    }

    /// Pops up to `max` indices into `out` with a single CAS; returns how many.
    ///
    /// The chain below the head cannot change while the head's tag is unchanged (any
    /// push or pop bumps it), so a successful CAS proves the walked chain was intact.
    pub(crate) fn pop_batch(&self, max: usize, out: &mut Vec<u32>) -> usize {
        if max == 0 {
            return 0;
        }
        let start = out.len();
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            out.truncate(start);
            let (tag, top) = unpack(head);
            let mut cur = top;
            while cur != NIL && out.len() - start < max {
                out.push(cur);
                cur = self.next_of(cur);
            }
            if out.len() == start {
                return 0;
            }
            let new = pack(tag.wrapping_add(1), cur);
            match self.head.compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return out.len() - start,
                Err(actual) => head = actual,
            }
        }
    }

    /// Pushes one index the caller owns.
    #[inline]
    pub(crate) fn push(&self, index: u32) {
        self.push_chain(index, index);
    }

    /// Pushes every index in `indices` (all owned by the caller) with one CAS.
    pub(crate) fn push_batch(&self, indices: &[u32]) {
        let (Some(&first), Some(&last)) = (indices.first(), indices.last()) else { return };
        for pair in indices.windows(2) {
            if let Some(link) = self.next.get(pair[0] as usize) {
                link.store(pair[1], Ordering::Relaxed);
            }
        }
        self.push_chain(first, last);
    }

    /// Splices the caller-owned chain `first ..= last` (already linked) on top.
    #[inline]
    fn push_chain(&self, first: u32, last: u32) {
        let Some(last_link) = self.next.get(last as usize) else { return };
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            let (tag, top) = unpack(head);
            last_link.store(top, Ordering::Relaxed);
            // Release publishes the links and the segments' contents to the next popper.
            let new = pack(tag.wrapping_add(1), first);
            match self.head.compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// Counts the indices on the stack by walking it. Exact when no thread pops
    /// meanwhile (pushes only make it count short); used when the last handle goes.
    pub(crate) fn len_quiescent(&self) -> usize {
        let (_, mut cur) = unpack(self.head.load(Ordering::Acquire));
        let mut n = 0;
        while cur != NIL && n <= self.next.len() {
            n += 1;
            cur = self.next_of(cur);
        }
        n
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pops_every_index_once_then_none() {
        let list = FreeList::full(5);
        let mut got: Vec<u32> = std::iter::from_fn(|| list.pop()).collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(list.pop(), None);
    }

    #[test]
    fn batches_move_in_one_piece() {
        let list = FreeList::full(10);
        let mut out = Vec::new();
        assert_eq!(list.pop_batch(4, &mut out), 4);
        assert_eq!(list.len_quiescent(), 6);
        list.push_batch(&out[1..]);
        assert_eq!(list.len_quiescent(), 9);
        list.push(out[0]);
        assert_eq!(list.len_quiescent(), 10);
        out.clear();
        assert_eq!(list.pop_batch(100, &mut out), 10);
        out.sort_unstable();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn empty_list() {
        let list = FreeList::full(0);
        assert_eq!(list.pop(), None);
        assert_eq!(list.pop_batch(3, &mut Vec::new()), 0);
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
            let list = Arc::new(FreeList::full(3));
            let l2 = list.clone();
            let t = loom::thread::spawn(move || {
                let mut got = Vec::new();
                l2.pop_batch(2, &mut got);
                l2.push_batch(&got);
            });
            if let Some(i) = list.pop() {
                list.push(i);
            }
            t.join().unwrap();
            let mut all = Vec::new();
            while let Some(i) = list.pop() {
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
            let list = Arc::new(FreeList::full(2));
            let l2 = list.clone();
            let t = loom::thread::spawn(move || l2.pop());
            let a = list.pop();
            let b = t.join().unwrap();
            assert!(a.is_some() && b.is_some());
            assert_ne!(a, b);
        });
    }

    /// A pop racing a pop-then-push of the same top (the ABA shape) stays consistent.
    #[test]
    fn aba_shape_is_caught_by_the_tag() {
        loom::model(|| {
            let list = Arc::new(FreeList::full(3));
            let l2 = list.clone();
            let t = loom::thread::spawn(move || {
                let a = l2.pop();
                let b = l2.pop();
                if let Some(a) = a {
                    l2.push(a);
                }
                b
            });
            let mine = list.pop();
            let theirs = t.join().unwrap();
            let mut all = Vec::new();
            while let Some(i) = list.pop() {
                all.push(i);
            }
            all.extend(mine);
            all.extend(theirs);
            all.sort_unstable();
            assert_eq!(all, vec![0, 1, 2]);
        });
    }
}
