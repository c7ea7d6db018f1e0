//! Zero heap allocations per lease and return in steady state, proven with a counting
//! global allocator. One test function, so no other test allocates concurrently.

use std::hint::black_box;
use std::io::{Read, Write};

use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
use berth_testkit::{CountingAllocator, allocations_during};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn steady_state_allocates_nothing() {
    let m = BufferManager::new(BufferConfig::new().segment_size(4096).segment_count(256)).unwrap();

    // Plain path (256 segments: this thread caches a few).
    drop(m.lease().unwrap());
    let n = allocations_during(|| {
        for _ in 0..10_000 {
            black_box(m.lease().unwrap());
        }
    });
    assert_eq!(n, 0, "shared lease + return allocated");

    // The same path holding several at once: this thread's implicit cache refills
    // from and flushes to the shared list.
    let n = allocations_during(|| {
        for _ in 0..1_000 {
            let held: [_; 10] = std::array::from_fn(|_| m.lease().unwrap());
            black_box(&held);
        }
    });
    assert_eq!(n, 0, "lease + return through the implicit cache allocated");

    // Raw handoff.
    let n = allocations_during(|| {
        for _ in 0..10_000 {
            let raw = m.lease().unwrap().into_raw().unwrap();
            let lease = m.from_raw(raw).unwrap();
            let raw = lease.into_raw().unwrap();
            m.release_raw(raw).unwrap();
        }
    });
    assert_eq!(n, 0, "raw handoff allocated");

    // Local cache path, including batch refills and flushes.
    let cache = m.local_cache_with_batch(8).unwrap();
    drop(cache.lease().unwrap());
    let n = allocations_during(|| {
        for i in 0..10_000 {
            let held: [_; 3] = std::array::from_fn(|_| cache.lease().unwrap());
            black_box(&held);
            if i % 100 == 0 {
                // Enough to force refills and flushes.
                let many: [_; 40] = std::array::from_fn(|_| cache.lease().unwrap());
                black_box(&many);
            }
        }
    });
    assert_eq!(n, 0, "local cache lease + return allocated");
    drop(cache);

    // A recyclable buffer that is written and drained repeatedly.
    let mut buf = RecyclableBuffer::new(&m, 64 * 1024);
    let payload = [7u8; 10_000];
    let mut sink = [0u8; 10_000];
    buf.write_all(&payload).unwrap();
    buf.read_exact(&mut sink).unwrap();
    let n = allocations_during(|| {
        for _ in 0..1_000 {
            buf.write_all(&payload).unwrap();
            buf.read_exact(&mut sink).unwrap();
        }
    });
    assert_eq!(n, 0, "recyclable buffer write + read allocated");

    // Stats are a snapshot without allocation too.
    let n = allocations_during(|| {
        black_box(m.stats());
    });
    assert_eq!(n, 0);
}
