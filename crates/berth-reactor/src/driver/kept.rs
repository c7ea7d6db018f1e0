//! What a socket's multishot receive delivered while no receive waited: one FIFO
//! queue per socket slot, linked through one slab sized up front, so keeping an
//! arrival allocates nothing (the slab grows only past its initial size, once).

use berth_buf::Lease;
use slab::Slab;

/// One arrival: the segment (none for an end of stream or an error), the
/// completion's result, and how much of the segment a copy already took.
#[derive(Debug)]
pub(crate) struct Arrival {
    pub(crate) lease: Option<Lease>,
    pub(crate) res: i32,
    pub(crate) taken: usize,
}

impl Arrival {
    /// Whether a copy took everything (or it carries no bytes).
    pub(crate) fn used_up(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| self.taken >= l.len())
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Node {
    arrival: Arrival,
    next: u32,
}

#[derive(Debug, Clone, Copy)]
struct Queue {
    head: u32,
    tail: u32,
    len: u32,
}

const EMPTY: Queue = Queue { head: NIL, tail: NIL, len: 0 };

#[derive(Debug)]
pub(crate) struct Kept {
    nodes: Slab<Node>,
    queues: Vec<Queue>,
}

impl Kept {
    /// Queues for `sockets` slots, room for `capacity` arrivals in all.
    pub(crate) fn new(sockets: usize, capacity: usize) -> Kept {
        Kept { nodes: Slab::with_capacity(capacity), queues: vec![EMPTY; sockets] }
    }

    pub(crate) fn len(&self, socket: u32) -> usize {
        self.queues.get(socket as usize).map_or(0, |q| q.len as usize)
    }

    pub(crate) fn is_empty(&self, socket: u32) -> bool {
        self.len(socket) == 0
    }

    pub(crate) fn push_back(&mut self, socket: u32, arrival: Arrival) {
        let Some(q) = self.queues.get(socket as usize).copied() else { return };
        let key = self.nodes.insert(Node { arrival, next: NIL }) as u32;
        if q.tail == NIL {
            self.queues[socket as usize] = Queue { head: key, tail: key, len: 1 };
        } else {
            self.nodes[q.tail as usize].next = key;
            self.queues[socket as usize] = Queue { tail: key, len: q.len + 1, ..q };
        }
    }

    pub(crate) fn front_mut(&mut self, socket: u32) -> Option<&mut Arrival> {
        let head = self.queues.get(socket as usize)?.head;
        self.nodes.get_mut(head as usize).map(|n| &mut n.arrival)
    }

    pub(crate) fn pop_front(&mut self, socket: u32) -> Option<Arrival> {
        let q = *self.queues.get(socket as usize)?;
        if q.head == NIL {
            return None;
        }
        let node = self.nodes.remove(q.head as usize);
        self.queues[socket as usize] =
            if node.next == NIL { EMPTY } else { Queue { head: node.next, len: q.len - 1, ..q } };
        Some(node.arrival)
    }

    /// Drops every arrival kept for `socket` (their segments go back to the arena).
    pub(crate) fn clear(&mut self, socket: u32) {
        while self.pop_front(socket).is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(res: i32) -> Arrival {
        Arrival { lease: None, res, taken: 0 }
    }

    #[test]
    fn queues_are_fifo_and_separate() {
        let mut kept = Kept::new(4, 2);
        for i in 0..5 {
            kept.push_back(1, arrival(i));
            kept.push_back(2, arrival(100 + i));
        }
        assert_eq!((kept.len(1), kept.len(2), kept.len(0)), (5, 5, 0));
        assert_eq!(kept.front_mut(1).map(|a| a.res), Some(0));
        for i in 0..5 {
            assert_eq!(kept.pop_front(1).map(|a| a.res), Some(i));
        }
        assert!(kept.pop_front(1).is_none() && kept.is_empty(1));
        kept.push_back(1, arrival(7));
        assert_eq!(kept.pop_front(2).map(|a| a.res), Some(100));
        kept.clear(2);
        assert!(kept.is_empty(2));
        assert_eq!(kept.pop_front(1).map(|a| a.res), Some(7));
        // Out-of-range slots are empty and ignore pushes.
        kept.push_back(9, arrival(1));
        assert!(kept.pop_front(9).is_none());
        assert!(kept.nodes.is_empty());
    }
}
