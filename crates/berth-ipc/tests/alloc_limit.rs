//! `recv_vec` under an allocator that refuses large requests: a record whose length
//! the sender chose (up to the channel's maximum, ~4 GiB) must not abort the process
//! when the copy cannot be allocated. Its own test binary, since the allocator is
//! global.

use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Duration;

use berth_ipc::{Channel, Config, RecvError};

/// Refuses (returns null for) every allocation above this size.
const LIMIT: usize = 64 << 20;

struct Limited;

// SAFETY: forwards to `System` unchanged, except that it may report failure (null),
// which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `dealloc`, and `new_size` is the caller's valid new size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Limited = Limited;

#[test]
fn recv_vec_reports_a_failed_allocation_and_keeps_the_message() {
    // A 1 GiB ring (a sparse memfd: only the pages touched are ever allocated)
    // carrying a record of half a gigabyte that is never written, only committed.
    let chan = Channel::create_memfd(&Config::new(1 << 30)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let len = rx.max_message();
    assert!(len > LIMIT);
    tx.try_reserve(len).unwrap().commit();
    tx.try_send(b"after").unwrap();
    let t = Some(Duration::from_secs(10));
    assert_eq!(rx.recv_vec(t).unwrap_err(), RecvError::OutOfMemory { len });
    // The message stays queued, like a copy into a buffer that is too small.
    assert_eq!(rx.recv(t).unwrap().len(), len);
    assert_eq!(rx.recv_vec(t).unwrap(), b"after");
}
