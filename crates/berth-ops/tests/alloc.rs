//! Zero heap allocations per op take + give and per connection permit in steady
//! state, proven with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_buf::BufferManager;
use berth_ops::{ConnectionLimit, OpError, OpKind, OpPool};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_allocates_nothing() {
    let buffers = BufferManager::with_defaults().unwrap();
    let mut pool = OpPool::new(64, |i| i);
    let limit = ConnectionLimit::new(10);

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..10_000 {
        let permit = limit.try_acquire().unwrap();
        let id = pool.take().unwrap();
        let op = pool.get_mut(id).unwrap();
        op.set_kind(OpKind::Recv);
        op.set_buffer(buffers.lease().unwrap(), 0..512).unwrap();
        op.complete(if i % 2 == 0 { Ok(100) } else { Err(OpError::ConnectionReset) });
        black_box(op.transferred_bytes());
        pool.give(id).unwrap();
        assert!(pool.get(id).is_err());
        drop(permit);
    }
    let n = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(n, 0, "op take/give allocated {n} times");
}
