//! Per-segment metadata stored so that consecutive segment indices land on different
//! cache lines.
//!
//! Threads usually hold neighbouring segments (segment 0 on one core, segment 1 on
//! another). Stored plainly, their state words and free-list links would share a
//! cache line, and every lease and return on either core would pull that line across.
//! Here index `i` lives at row `i mod rows`, column `i div rows` of a table whose rows
//! are one cache line each, so indices `i` and `i + 1` are a whole line apart.

/// Bytes per cache line assumed by the layout.
const LINE: usize = 64;

pub(crate) struct Strided<T> {
    items: Box<[T]>,
    /// `rows - 1`; `rows` is a power of two.
    mask: usize,
    /// `log2(rows)`.
    shift: u32,
    /// Indices that hold real entries; the rest of the table is padding.
    len: usize,
}

impl<T> Strided<T> {
    /// Items per row (one cache line): a constant, so placing an index is a mask, two
    /// shifts and an add on the lease path.
    const PER_LINE: usize = {
        let per = LINE / if std::mem::size_of::<T>() == 0 { 1 } else { std::mem::size_of::<T>() };
        if per == 0 { 1 } else { per }
    };

    /// A table for indices `0..len`, entry `i` made by `make(i)`; padding entries
    /// (indices `len..`) are made by `make` too and never handed out by [`get`].
    pub(crate) fn new(len: usize, mut make: impl FnMut(usize) -> T) -> Strided<T> {
        let per_line = Self::PER_LINE;
        let rows = len.div_ceil(per_line).max(1).next_power_of_two();
        let shift = rows.trailing_zeros();
        // Storage position p holds index (p mod per_line) * rows + (p div per_line).
        let items = (0..rows * per_line).map(|p| make((p % per_line) * rows + p / per_line)).collect();
        Strided { items, mask: rows - 1, shift, len }
    }

    #[inline]
    fn position(&self, index: usize) -> usize {
        (index & self.mask) * Self::PER_LINE + (index >> self.shift)
    }

    /// The entry for `index`, or `None` if it is not a real index.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        if index < self.len { self.items.get(self.position(index)) } else { None }
    }

    /// Every stored entry, padding included, in storage order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// The number of real indices.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl<T> std::ops::Index<usize> for Strided<T> {
    type Output = T;

    /// The entry for a real index; an index the arena never hands out is a bug.
    #[inline]
    fn index(&self, index: usize) -> &T {
        debug_assert!(index < self.len);
        &self.items[self.position(index)]
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_index_has_its_own_slot_and_neighbours_are_a_line_apart() {
        for len in [1usize, 2, 15, 16, 17, 100, 1000, 4096] {
            let t: Strided<u32> = Strided::new(len, |i| i as u32);
            let mut seen = std::collections::HashSet::new();
            for i in 0..len {
                assert_eq!(t[i], i as u32, "len {len} index {i}");
                assert_eq!(t.get(i), Some(&(i as u32)));
                assert!(seen.insert(t.position(i)));
                if i + 1 < len && len > 16 {
                    let (a, b) = (t.position(i), t.position(i + 1));
                    assert_ne!(a / 16, b / 16, "len {len}: {i} and {} share a line", i + 1);
                }
            }
            assert_eq!(t.get(len), None);
            assert!(t.iter().count() >= len);
        }
    }
}
