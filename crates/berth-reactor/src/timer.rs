//! Deadlines: a min-heap of `(when, what, sequence)` with lazy deletion.
//!
//! An entry is live only while its sequence number matches the one stored with the op
//! or socket it names; completing or re-arming bumps that number, so stale entries are
//! skipped when they surface instead of being searched for and removed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a timer entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    /// An op's deadline, by op index.
    Op(u32),
    /// A listener's accept back-off, by socket index.
    Backoff(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub(crate) when: Instant,
    pub(crate) target: Target,
    pub(crate) seq: u32,
}

pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    limit: usize,
}

impl Timers {
    pub(crate) fn with_capacity(limit: usize) -> Timers {
        Timers { heap: BinaryHeap::with_capacity(limit), limit }
    }

    /// Adds an entry; when the heap is at its preallocated size, first drops entries
    /// `live` says are stale, so the heap does not grow in steady state.
    pub(crate) fn push(&mut self, entry: Entry, live: impl Fn(&Entry) -> bool) {
        if self.heap.len() >= self.limit {
            self.heap.retain(|Reverse(e)| live(e));
        }
        self.heap.push(Reverse(entry));
    }

    /// The earliest entry's time.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.when)
    }

    /// Pops the earliest entry if it is due.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Entry> {
        match self.heap.peek() {
            Some(Reverse(e)) if e.when <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}
