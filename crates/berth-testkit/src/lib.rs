//! Test support shared by the berth crates (dev-dependency only).
//!
//! [`CountingAllocator`] wraps the system allocator and counts allocations per
//! thread, so a test can prove a hot path allocates nothing while other test threads
//! go about their business, and in total across threads ([`total_allocations`]) for
//! tests of servers whose hot path runs on threads the test does not own (such a
//! test must be alone in its test binary). Install it in a test binary:
//!
//! ```
//! use berth_testkit::{CountingAllocator, allocations_during};
//!
//! #[global_allocator]
//! static GLOBAL: CountingAllocator = CountingAllocator;
//!
//! let n = allocations_during(|| {
//!     let v: Vec<u8> = Vec::with_capacity(16);
//!     std::hint::black_box(v);
//! });
//! assert_eq!(n, 1);
//! assert_eq!(allocations_during(|| { std::hint::black_box(1 + 1); }), 0);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting `alloc` and `realloc` calls made by each thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

/// Allocations made by every thread of the process.
static TOTAL: AtomicU64 = AtomicU64::new(0);

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    TOTAL.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches
// only a const-initialised thread local, which needs no allocation.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed through.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations made so far by this thread (only meaningful with
/// [`CountingAllocator`] installed as the global allocator).
pub fn thread_allocations() -> u64 {
    ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
}

/// Allocations made so far by all threads of the process (only meaningful with
/// [`CountingAllocator`] installed). Other tests running in parallel in the same
/// binary count too: a test that relies on this should be the binary's only test.
pub fn total_allocations() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}

/// Allocations this thread made while running `f`.
pub fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = thread_allocations();
    f();
    thread_allocations() - before
}
