//! The io_uring driver's provided-buffer ring (`IORING_REGISTER_PBUF_RING`), made of
//! arena segments: the Linux counterpart of Registered I/O buffers. A pooled receive
//! asks the kernel to pick a segment from the ring only when data arrives, so idle
//! connections hold none and a receive costs no syscall of its own.
//!
//! Each ring slot (the buffer id the kernel reports) holds a [`Lease`] while the
//! segment is lent to the kernel; a completion that names the slot takes the lease
//! out and hands it to the op, and the slot is refilled from the port's cache before
//! the next enter. An empty ring is backpressure (`ENOBUFS`), never end of stream:
//! the receives that met it wait until segments come back.
//!
//! The ring needs no locked memory: the kernel reads the ring and writes the
//! segments in place, nothing is pinned.

use std::alloc::Layout;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use berth_buf::Lease;
use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// The buffer group of the ring (one per port).
pub(crate) const GROUP: u16 = 0;

pub(crate) struct BufRing {
    base: NonNull<BufRingEntry>,
    layout: Layout,
    mask: u16,
    /// Our copy of the ring's tail (the kernel owns the head).
    tail: u16,
    /// The segment lent to the kernel under each buffer id.
    held: Vec<Option<Lease>>,
    /// Buffer ids whose segment was taken by a completion: to refill.
    empty: Vec<u16>,
}

impl BufRing {
    /// Registers a ring of `entries` slots (a power of two, at most 32768) and fills
    /// what it can from `lease`.
    pub(crate) fn new(ring: &IoUring, entries: u16, lease: impl FnMut() -> Option<Lease>) -> io::Result<BufRing> {
        debug_assert!(entries.is_power_of_two());
        let size = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        let layout = Layout::from_size_align(size, 4096).map_err(io::Error::other)?;
        // SAFETY: `layout` has a non-zero size (entries >= 1).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let base =
            NonNull::new(raw.cast::<BufRingEntry>()).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let mut pbuf = BufRing {
            base,
            layout,
            mask: entries - 1,
            tail: 0,
            held: (0..entries).map(|_| None).collect(),
            empty: (0..entries).rev().collect(),
        };
        // SAFETY: `base` is page-aligned, zeroed, `entries` entries long, and lives
        // until after the ring is unregistered (`Uring`'s drop unregisters it first).
        unsafe { ring.submitter().register_buf_ring_with_flags(base.as_ptr() as u64, entries, GROUP, 0) }?;
        pbuf.refill(lease);
        Ok(pbuf)
    }

    /// Segments lent to the kernel now.
    pub(crate) fn lent(&self) -> usize {
        self.held.len() - self.empty.len()
    }

    /// The segment the kernel filled for buffer id `bid`.
    pub(crate) fn take(&mut self, bid: u16) -> Option<Lease> {
        let lease = self.held.get_mut(usize::from(bid))?.take()?;
        self.empty.push(bid);
        Some(lease)
    }

    /// Lends fresh segments for the empty slots, as many as `lease` gives, and
    /// publishes them. Returns how many were added.
    pub(crate) fn refill(&mut self, mut lease: impl FnMut() -> Option<Lease>) -> usize {
        let mut added = 0;
        while let Some(&bid) = self.empty.last() {
            let Some(mut segment) = lease() else { break };
            self.empty.pop();
            let buf: &mut [u8] = &mut segment[..];
            let (addr, len) = (buf.as_mut_ptr() as u64, buf.len().min(u32::MAX as usize) as u32);
            let slot = usize::from(self.tail.wrapping_add(added) & self.mask);
            // SAFETY: `slot` < entries; the kernel reads slots only below the tail we
            // publish, and this one is past it.
            let entry = unsafe { &mut *self.base.as_ptr().add(slot) };
            entry.set_addr(addr);
            entry.set_len(len);
            entry.set_bid(bid);
            self.held[usize::from(bid)] = Some(segment);
            added += 1;
        }
        if added > 0 {
            self.tail = self.tail.wrapping_add(added);
            // SAFETY: the tail lives in the first entry's reserved field, inside the
            // allocation, and is only ever accessed atomically by both sides.
            let tail = unsafe { &*(BufRingEntry::tail(self.base.as_ptr()) as *const AtomicU16) };
            // Release: the entries written above are visible before the new tail.
            tail.store(self.tail, Ordering::Release);
        }
        usize::from(added)
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring was unregistered (or
        // the io_uring closed) before, so the kernel no longer reads it.
        unsafe { std::alloc::dealloc(self.base.as_ptr().cast(), self.layout) };
    }
}
