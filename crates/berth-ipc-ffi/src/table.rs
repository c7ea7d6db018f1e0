//! Handles: generation-checked slots that a C caller names by a 64-bit id.
//!
//! A C caller may pass anything as a handle: zero, a handle it closed, one from
//! another table, or the same handle from two threads at once. None of that may
//! reach Rust as an invalid reference, so a handle is not a pointer but an index
//! and a generation, checked against the slot on every call, and a call holds the
//! slot exclusively (a busy bit taken by compare-and-swap) for its duration. A
//! second thread finds the bit set and gets `BUSY`; a closed slot has a new
//! generation, so its old ids are `BAD_HANDLE` (an id comes back only after 2^32
//! closes of the same slot).

use std::cell::UnsafeCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots per table: open channels, senders or receivers at once, per process.
pub(crate) const SLOTS: usize = 1024;

const OPEN: u64 = 1 << 32;
const BUSY: u64 = 1 << 33;
const POISONED: u64 = 1 << 34;
const GEN: u64 = 0xffff_ffff;

/// Why a handle could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandleError {
    /// Zero, never issued, or closed.
    Bad,
    /// Another thread is inside a call on it.
    Busy,
    /// A panic happened inside a call on it; only closing it is allowed.
    Poisoned,
    /// Every slot is in use.
    Full,
}

struct Slot<T> {
    /// Generation (low 32 bits), `OPEN`, `BUSY`, `POISONED`.
    state: AtomicU64,
    value: UnsafeCell<Option<T>>,
}

/// A fixed table of slots, allocated on first use.
pub(crate) struct Table<T> {
    slots: OnceLock<Box<[Slot<T>]>>,
    /// Stored in bits 56.. of every id, so an id of one table (a channel) is
    /// refused by another (a sender), whatever its index and generation.
    kind: u64,
}

/// Bit position of the table's kind in an id; the slot index (plus one) sits in
/// bits 32..56, the generation in 0..32.
const KIND_SHIFT: u32 = 56;

// SAFETY: a slot's value is only touched by the thread that set its BUSY bit (an
// acquire compare-and-swap; cleared with a release store), so at most one thread
// has it at a time and each sees the previous holder's writes. `T: Send` because
// the value moves between the threads that take turns.
unsafe impl<T: Send> Sync for Table<T> {}

impl<T> std::fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").finish_non_exhaustive()
    }
}

impl<T> Table<T> {
    /// A table whose ids carry `kind` (1..=255).
    pub(crate) const fn new(kind: u8) -> Table<T> {
        Table { slots: OnceLock::new(), kind: kind as u64 }
    }

    fn slots(&self) -> &[Slot<T>] {
        self.slots.get_or_init(|| {
            (0..SLOTS).map(|_| Slot { state: AtomicU64::new(0), value: UnsafeCell::new(None) }).collect()
        })
    }

    /// Stores `value` in a free slot and returns its id (never 0).
    pub(crate) fn insert(&self, value: T) -> Result<u64, HandleError> {
        for (i, slot) in self.slots().iter().enumerate() {
            let cur = slot.state.load(Ordering::Relaxed);
            if cur & (OPEN | BUSY) != 0 {
                continue;
            }
            if slot.state.compare_exchange(cur, cur | BUSY, Ordering::Acquire, Ordering::Relaxed).is_err() {
                continue;
            }
            // SAFETY: we hold the slot's BUSY bit (see `Sync`).
            unsafe { *slot.value.get() = Some(value) };
            let generation = cur & GEN;
            slot.state.store(generation | OPEN, Ordering::Release);
            return Ok((self.kind << KIND_SHIFT) | ((i as u64 + 1) << 32) | generation);
        }
        Err(HandleError::Full)
    }

    /// The slot named by `id`, with its state at the time, if the id is current.
    fn find(&self, id: u64) -> Result<(&Slot<T>, u64), HandleError> {
        if id >> KIND_SHIFT != self.kind {
            return Err(HandleError::Bad);
        }
        let index = ((id >> 32) & 0xff_ffff).checked_sub(1).ok_or(HandleError::Bad)?;
        let slot = self.slots().get(usize::try_from(index).map_err(|_| HandleError::Bad)?).ok_or(HandleError::Bad)?;
        let cur = slot.state.load(Ordering::Acquire);
        if cur & GEN != id & GEN || cur & OPEN == 0 {
            return Err(HandleError::Bad);
        }
        Ok((slot, cur))
    }

    /// Takes handle `id` for the duration of one call.
    pub(crate) fn get(&self, id: u64) -> Result<Held<'_, T>, HandleError> {
        let (slot, cur) = self.find(id)?;
        if cur & POISONED != 0 {
            return Err(HandleError::Poisoned);
        }
        if cur & BUSY != 0 {
            return Err(HandleError::Busy);
        }
        match slot.state.compare_exchange(cur, cur | BUSY, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Ok(Held { slot }),
            // Taken, closed or poisoned in between: look again.
            Err(_) => self.get(id).map_err(|e| if e == HandleError::Bad { e } else { HandleError::Busy }),
        }
    }

    /// Closes handle `id` (a poisoned one too) and returns its value, to drop.
    pub(crate) fn remove(&self, id: u64) -> Result<T, HandleError> {
        let (slot, cur) = self.find(id)?;
        if cur & BUSY != 0 {
            return Err(HandleError::Busy);
        }
        if slot.state.compare_exchange(cur, cur | BUSY, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return Err(HandleError::Busy);
        }
        // SAFETY: we hold the slot's BUSY bit.
        let value = unsafe { (*slot.value.get()).take() };
        // A new generation, closed and free: every id issued for it so far is stale.
        slot.state.store((cur + 1) & GEN, Ordering::Release);
        value.ok_or(HandleError::Bad)
    }
}

/// One call's exclusive use of a handle's value; releases the slot when dropped,
/// poisoning it if the call panicked.
pub(crate) struct Held<'a, T> {
    slot: &'a Slot<T>,
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: we hold the slot's BUSY bit, and an open slot always has a value.
        unsafe { (*self.slot.value.get()).as_ref() }.expect("an open slot holds a value")
    }
}

impl<T> std::ops::DerefMut for Held<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { (*self.slot.value.get()).as_mut() }.expect("an open slot holds a value")
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.slot.state.fetch_or(POISONED, Ordering::Relaxed);
        }
        self.slot.state.fetch_and(!BUSY, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_exclusive() {
        let t: Table<u32> = Table::new(1);
        let a = t.insert(7).unwrap();
        assert_ne!(a, 0);
        assert_eq!(t.get(0).err(), Some(HandleError::Bad));
        assert_eq!(t.get(a ^ 1).err(), Some(HandleError::Bad), "another generation");
        assert_eq!(t.get(a + (5 << 32)).err(), Some(HandleError::Bad), "another slot");
        assert_eq!(t.get(u64::MAX).err(), Some(HandleError::Bad));
        let other: Table<u32> = Table::new(2);
        let b = other.insert(1).unwrap();
        assert_eq!(b & !(0xff << KIND_SHIFT), a & !(0xff << KIND_SHIFT), "same slot and generation");
        assert_eq!(t.get(b).err(), Some(HandleError::Bad), "an id of another kind");
        {
            let mut held = t.get(a).unwrap();
            *held += 1;
            assert_eq!(t.get(a).err(), Some(HandleError::Busy));
            assert_eq!(t.remove(a).err(), Some(HandleError::Busy));
        }
        assert_eq!(*t.get(a).unwrap(), 8);
        assert_eq!(t.remove(a), Ok(8));
        assert_eq!(t.get(a).err(), Some(HandleError::Bad), "closed");
        assert_eq!(t.remove(a).err(), Some(HandleError::Bad), "closed twice");
        let b = t.insert(9).unwrap();
        assert_ne!(a, b, "a reused slot has a new generation");
    }

    #[test]
    fn a_panic_poisons_the_handle_until_it_is_closed() {
        let t: Table<u32> = Table::new(1);
        let a = t.insert(1).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = t.get(a).unwrap();
            panic!("inside a call");
        }));
        assert!(r.is_err());
        assert_eq!(t.get(a).err(), Some(HandleError::Poisoned));
        assert_eq!(t.remove(a), Ok(1));
    }

    #[test]
    fn a_full_table_is_an_error() {
        let t: Table<u32> = Table::new(1);
        for i in 0..SLOTS {
            t.insert(i as u32).unwrap();
        }
        assert_eq!(t.insert(0), Err(HandleError::Full));
    }
}
