//! Zero heap allocations per op take + give and per connection permit in steady
//! state, proven with a counting global allocator.

use std::hint::black_box;

use berth_buf::BufferManager;
use berth_ops::{ConnectionLimit, OpError, OpKind, OpPool};
use berth_testkit::{CountingAllocator, thread_allocations};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn steady_state_allocates_nothing() {
    let buffers = BufferManager::with_defaults().unwrap();
    let mut pool = OpPool::new(64, |i| i);
    let limit = ConnectionLimit::new(10);

    let before = thread_allocations();
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
    let n = thread_allocations() - before;
    assert_eq!(n, 0, "op take/give allocated {n} times");
}
