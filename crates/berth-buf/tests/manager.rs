//! The buffer manager's behaviour at its edges: exhaustion, bad configurations, raw
//! handoff misuse, leases crossing threads and outliving their manager.

use berth_buf::{BufferConfig, BufferManager, CacheError, ConfigError, Exhaustion, RawError, RawLease};

fn small(count: usize, policy: Exhaustion) -> BufferManager {
    BufferManager::new(BufferConfig::new().segment_size(64).segment_count(count).exhaustion(policy)).unwrap()
}

#[test]
fn exhaustion_fail_is_an_error_and_recovers() {
    let m = small(2, Exhaustion::Fail);
    let a = m.lease().unwrap();
    let b = m.lease().unwrap();
    let err = m.lease().unwrap_err();
    assert_eq!(err.segments, 2);
    assert_eq!(m.stats().exhausted, 1);
    assert_eq!(m.stats().in_use, 2);
    drop(a);
    let c = m.lease().unwrap();
    assert!(!c.is_heap());
    drop((b, c));
    assert_eq!(m.stats().in_use, 0);
}

#[test]
fn exhaustion_heap_falls_back_and_counts() {
    let m = small(1, Exhaustion::Heap);
    let a = m.lease().unwrap();
    let mut h = m.lease().unwrap();
    assert!(h.is_heap());
    assert_eq!(h.capacity(), 64);
    assert_eq!(h.index(), None);
    h[..3].copy_from_slice(b"abc");
    h.set_len(3).unwrap();
    assert_eq!(h.filled(), b"abc");
    let s = m.stats();
    assert_eq!((s.heap_fallbacks, s.exhausted, s.in_use), (1, 1, 1));
    // A heap lease cannot become raw; it comes back intact.
    let h = h.into_raw().unwrap_err();
    assert_eq!(h.filled(), b"abc");
    drop((a, h));
    assert_eq!(m.stats().in_use, 0);
}

#[test]
#[cfg_attr(miri, ignore = "asks the kernel for mappings larger than miri can model")]
fn bad_configurations_are_errors() {
    let e = BufferManager::new(BufferConfig::new().segment_size(0)).unwrap_err();
    assert!(matches!(e, ConfigError::ZeroSegmentSize));
    let e = BufferManager::new(BufferConfig::new().segment_count(0)).unwrap_err();
    assert!(matches!(e, ConfigError::ZeroSegmentCount));
    let e = BufferManager::new(BufferConfig::new().segment_size(usize::MAX / 2).segment_count(3)).unwrap_err();
    assert!(matches!(e, ConfigError::SegmentTooLarge { .. }));
    let e =
        BufferManager::new(BufferConfig::new().segment_size(u32::MAX as usize).segment_count((u32::MAX - 1) as usize))
            .unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { .. }));
    let e = BufferManager::new(BufferConfig::new().segment_size(1).segment_count(usize::MAX)).unwrap_err();
    assert!(matches!(e, ConfigError::TooManySegments { .. }));
    // Fits the address-space arithmetic but not the machine: the kernel's refusal
    // is an error too, not an abort.
    let e = BufferManager::new(BufferConfig::new().segment_size(1 << 31).segment_count(1 << 30)).unwrap_err();
    assert!(matches!(e, ConfigError::Map(_) | ConfigError::TooLarge { .. }), "{e}");
}

#[test]
fn a_lease_is_two_words() {
    assert_eq!(std::mem::size_of::<berth_buf::Lease>(), 16);
}

#[test]
fn set_len_past_capacity_is_refused() {
    let m = small(1, Exhaustion::Fail);
    let mut l = m.lease().unwrap();
    let e = l.set_len(65).unwrap_err();
    assert_eq!((e.len, e.capacity), (65, 64));
    assert_eq!(l.len(), 0);
    l.set_len(64).unwrap();
    assert_eq!(l.filled().len(), 64);
}

#[test]
fn segments_are_distinct_and_stable() {
    let m = small(8, Exhaustion::Fail);
    let mut leases: Vec<_> = (0..8).map(|_| m.lease().unwrap()).collect();
    for (i, l) in leases.iter_mut().enumerate() {
        l.fill(i as u8);
    }
    let mut addrs: Vec<_> = leases.iter().map(|l| l.as_ptr() as usize).collect();
    for (i, l) in leases.iter().enumerate() {
        assert!(l.iter().all(|&b| b == i as u8), "segment {i} was overwritten");
    }
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), 8);
    let (base, len) = m.arena();
    assert_eq!(len, 8 * 64);
    assert_eq!(base.as_ptr() as usize % 4096, 0, "arena is page-aligned");
}

#[test]
fn raw_double_return_and_stale_are_refused_and_counted() {
    let m = small(2, Exhaustion::Fail);
    let raw = m.lease().unwrap().into_raw().unwrap();
    assert_eq!(m.stats().raw, 1);
    let lease = m.from_raw(raw).unwrap();
    // Redeeming again while the lease lives: refused (would alias).
    assert!(matches!(m.from_raw(raw), Err(RawError::DoubleReturn { .. })));
    drop(lease);
    // The segment is free now: the old raw lease is a double return.
    assert!(matches!(m.release_raw(raw), Err(RawError::DoubleReturn { .. })));
    // The segment is leased again in a newer generation: the old raw lease is stale.
    let again: Vec<_> = (0..2).map(|_| m.lease().unwrap()).collect();
    assert!(matches!(m.from_raw(raw), Err(RawError::Stale { .. })));
    let s = m.stats();
    assert_eq!((s.double_returns, s.stale_returns), (2, 1));
    assert_eq!(s.in_use, 2);
    drop(again);
    assert_eq!(m.stats().in_use, 0);
}

#[test]
fn forged_and_foreign_raw_leases_are_refused() {
    let m = small(2, Exhaustion::Fail);
    let other = small(2, Exhaustion::Fail);
    let raw = m.lease().unwrap().into_raw().unwrap();
    assert_eq!(other.from_raw(raw).unwrap_err(), RawError::Foreign);
    let [id, index, generation] = raw.to_parts();
    assert_eq!(m.from_raw(RawLease::from_parts([id, 99, generation])).unwrap_err(), RawError::Foreign);
    assert!(matches!(m.from_raw(RawLease::from_parts([id, index, u32::MAX])), Err(RawError::Stale { .. })));
    assert!(matches!(m.from_raw(RawLease::from_parts([id, index, generation + 1])), Err(RawError::Stale { .. })));
    m.release_raw(raw).unwrap();
    assert_eq!(m.stats().in_use, 0);
}

#[test]
fn leases_dropped_on_another_thread_come_back() {
    let m = small(4, Exhaustion::Fail);
    let leases: Vec<_> = (0..4).map(|_| m.lease().unwrap()).collect();
    std::thread::spawn(move || drop(leases)).join().unwrap();
    assert_eq!(m.stats().in_use, 0);
    assert_eq!(m.stats().free(), 4);
}

#[test]
fn a_lease_outlives_its_manager() {
    let m = small(2, Exhaustion::Fail);
    let mut l = m.lease().unwrap();
    drop(m);
    l.fill(7); // the arena is still mapped
    assert!(l.iter().all(|&b| b == 7));
    drop(l); // the arena was leaked, not unmapped under the lease: no use after free
}

#[test]
fn local_cache_round_trip_and_cross_thread_drop() {
    let m = small(64, Exhaustion::Fail);
    let cache = m.local_cache_with_batch(8).unwrap();
    assert!(matches!(m.local_cache(), Err(CacheError::AlreadyInstalled)));
    assert!(matches!(m.local_cache_with_batch(0), Err(CacheError::ZeroBatch)));
    let a = cache.lease().unwrap();
    assert_eq!(cache.cached(), 7); // one batch came over, one is leased
    drop(a);
    assert_eq!(cache.cached(), 8);
    let s = m.stats();
    assert_eq!((s.in_use, s.cached), (0, 8));

    // Leases from the cache dropped elsewhere go to the shared list.
    let leases: Vec<_> = (0..10).map(|_| cache.lease().unwrap()).collect();
    std::thread::spawn(move || drop(leases)).join().unwrap();
    assert_eq!(m.stats().in_use, 0);

    // Returns past the cache's capacity flush a batch to the shared list.
    let leases: Vec<_> = (0..40).map(|_| cache.lease().unwrap()).collect();
    drop(leases);
    assert!(cache.cached() <= 16);
    drop(cache);
    let s = m.stats();
    assert_eq!((s.in_use, s.cached, s.free()), (0, 0, 64));
    // After the cache is gone, a new one can be installed.
    let _again = m.local_cache().unwrap();
}

#[test]
fn local_cache_exhaustion_follows_the_policy() {
    let m = small(4, Exhaustion::Fail);
    let cache = m.local_cache_with_batch(2).unwrap();
    let held: Vec<_> = (0..4).map(|_| cache.lease().unwrap()).collect();
    assert!(cache.lease().is_err());
    assert_eq!(m.stats().exhausted, 1);
    drop(held);
    assert!(cache.lease().is_ok());
}

#[test]
fn many_threads_lease_and_return() {
    let m = small(32, Exhaustion::Fail);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                let cache = if t % 2 == 0 { Some(m.local_cache_with_batch(4).unwrap()) } else { None };
                for i in 0..20_000u32 {
                    let lease = match &cache {
                        Some(c) => c.lease(),
                        None => m.lease(),
                    };
                    // Exhaustion is possible with 4 threads on 32 segments only if
                    // caches hoard; either way it must be an error, never a crash.
                    if let Ok(mut l) = lease {
                        let tag = (t as u32) << 24 | i;
                        l[..4].copy_from_slice(&tag.to_le_bytes());
                        std::hint::spin_loop();
                        assert_eq!(u32::from_le_bytes(l[..4].try_into().unwrap()), tag, "segment shared");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = m.stats();
    assert_eq!((s.in_use, s.cached), (0, 0));
    assert!(s.high_water <= 32);
}

/// An arena large enough for `BufferManager::lease` to cache segments per thread
/// (256 or more segments: `segment_count / 64` of them, at most 32).
fn cached_arena(count: usize) -> BufferManager {
    BufferManager::new(BufferConfig::new().segment_size(64).segment_count(count)).unwrap()
}

#[test]
fn a_thread_cache_serves_the_plain_lease_path_and_stats_stay_truthful() {
    let m = cached_arena(1024);
    let leases: Vec<_> = (0..40).map(|_| m.lease().unwrap()).collect();
    let s = m.stats();
    assert_eq!(s.in_use, 40);
    assert!(s.cached <= 16, "{s:?}");
    drop(leases);
    let s = m.stats();
    assert_eq!(s.in_use, 0, "dropped leases are not in use");
    assert!(0 < s.cached && s.cached <= 16, "segments parked in this thread's cache are cached: {s:?}");
    assert_eq!(s.free() + s.cached, 1024);
    // Small arenas get no implicit cache: nothing is stranded on a thread.
    let small = cached_arena(255);
    drop(small.lease().unwrap());
    assert_eq!((small.stats().in_use, small.stats().cached), (0, 0));
}

#[test]
fn a_thread_exit_flushes_its_cache() {
    let m = cached_arena(512);
    let m2 = m.clone();
    std::thread::spawn(move || {
        let held: Vec<_> = (0..20).map(|_| m2.lease().unwrap()).collect();
        drop(held);
        let s = m2.stats();
        assert_eq!(s.in_use, 0);
        assert!(s.cached > 0, "{s:?}");
    })
    .join()
    .unwrap();
    let s = m.stats();
    assert_eq!((s.in_use, s.cached, s.free()), (0, 0, 512));
}

#[test]
fn leases_cross_threads_between_caches() {
    let m = cached_arena(1024);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<berth_buf::Lease>>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let producer = {
        let m = m.clone();
        std::thread::spawn(move || {
            for _ in 0..50 {
                let batch: Vec<_> = (0..20).map(|_| m.lease().unwrap()).collect();
                tx.send(batch).unwrap();
            }
        })
    };
    let consumer = {
        let m = m.clone();
        std::thread::spawn(move || {
            // This thread leases too, so its cache serves the arena and takes the
            // producer's segments as they are dropped here.
            let own = m.lease().unwrap();
            for batch in rx {
                for l in &batch {
                    assert!(!l.is_heap());
                }
                drop(batch);
            }
            drop(own);
            let s = m.stats();
            assert_eq!(s.in_use, 0, "{s:?}");
            done_tx.send(()).unwrap();
            // Hold the cache until the main thread has looked.
            std::thread::park_timeout(std::time::Duration::from_millis(100));
        })
    };
    producer.join().unwrap();
    done_rx.recv().unwrap();
    let s = m.stats();
    assert_eq!(s.in_use, 0);
    assert!(s.cached <= 2 * 16, "at most one implicit cache per thread: {s:?}");
    consumer.join().unwrap();
    let s = m.stats();
    assert_eq!((s.in_use, s.cached, s.free()), (0, 0, 1024));
}

#[test]
fn a_thread_cache_moves_to_the_arena_the_thread_uses() {
    let a = cached_arena(1024);
    let b = cached_arena(1024);
    drop(a.lease().unwrap());
    assert!(a.stats().cached > 0);
    // Leases from another arena go to its shared list until the thread has clearly
    // moved on; then the cache flushes `a` and serves `b`.
    for _ in 0..100 {
        drop(b.lease().unwrap());
    }
    assert_eq!(a.stats().cached, 0);
    assert!(b.stats().cached > 0);
    // A LocalCache of `a` takes the thread's cache over at once.
    let cache = a.local_cache_with_batch(4).unwrap();
    assert_eq!(b.stats().cached, 0);
    drop(cache.lease().unwrap());
    assert_eq!(cache.cached(), 4);
    // While it is installed, `b` cannot take the cache.
    for _ in 0..100 {
        drop(b.lease().unwrap());
    }
    assert_eq!((b.stats().cached, b.stats().in_use), (0, 0));
    assert_eq!(cache.cached(), 4);
    // Leases through the manager on this thread use the pinned cache.
    drop(a.lease().unwrap());
    assert_eq!(cache.cached(), 4);
    drop(cache);
    assert_eq!(a.stats().cached, 0);
}

#[test]
fn implicit_caches_of_many_idle_threads_hold_at_most_an_eighth_of_the_arena() {
    let m = cached_arena(256);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(17));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (m, barrier) = (m.clone(), barrier.clone());
            std::thread::spawn(move || {
                let held: Vec<_> = (0..4).map(|_| m.lease().unwrap()).collect();
                drop(held);
                barrier.wait(); // every thread has leased and returned
                barrier.wait(); // the main thread has looked
            })
        })
        .collect();
    barrier.wait();
    let s = m.stats();
    assert_eq!(s.in_use, 0);
    assert!(0 < s.cached && s.cached <= 256 / 8, "{s:?}");
    // The rest is on the shared list: one thread can still lease it all.
    let all: Vec<_> = (0..256 - s.cached).map(|_| m.lease().unwrap()).collect();
    drop(all);
    barrier.wait();
    for t in threads {
        t.join().unwrap();
    }
    let s = m.stats();
    assert_eq!((s.in_use, s.free()), (0, 256 - s.cached));
}

#[test]
fn many_threads_with_implicit_caches_keep_segments_exclusive() {
    let m = cached_arena(256);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for i in 0..20_000u32 {
                    if let Ok(mut l) = m.lease() {
                        let tag = t << 24 | i;
                        l[..4].copy_from_slice(&tag.to_le_bytes());
                        held.push((l, tag));
                    }
                    if held.len() > (i % 7) as usize {
                        let (l, tag) = held.swap_remove(0);
                        assert_eq!(u32::from_le_bytes(l[..4].try_into().unwrap()), tag, "segment shared");
                    }
                }
                held.clear();
                let s = m.stats();
                assert!(s.in_use + s.cached <= 256);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = m.stats();
    assert_eq!((s.in_use, s.cached, s.free()), (0, 0, 256));
}

/// Code that runs in a thread-local destructor after the thread's cache was flushed
/// (a late destructor, say) still leases and returns, through the shared list, and
/// cannot install a cache.
#[test]
fn an_exiting_thread_uses_the_shared_list() {
    use std::cell::RefCell;
    use std::sync::mpsc;

    type Report = (bool, bool, usize);
    struct Late(Option<(BufferManager, mpsc::Sender<Report>)>);
    impl Drop for Late {
        fn drop(&mut self) {
            if let Some((m, tx)) = self.0.take() {
                let lease = m.lease();
                let exiting = matches!(m.local_cache(), Err(CacheError::ThreadExiting));
                let ok = lease.is_ok();
                drop(lease);
                let _ = tx.send((ok, exiting, m.stats().cached));
            }
        }
    }
    thread_local! {
        static LATE: RefCell<Late> = const { RefCell::new(Late(None)) };
    }

    let m = cached_arena(1024);
    let (tx, rx) = mpsc::channel();
    let m2 = m.clone();
    std::thread::spawn(move || {
        // Registered before the cache's exit guard, so destroyed after it.
        LATE.with(|late| late.borrow_mut().0 = Some((m2.clone(), tx)));
        drop(m2.lease().unwrap());
    })
    .join()
    .unwrap();
    let (leased, exiting, cached) = rx.recv().unwrap();
    assert!(leased, "a lease in a late destructor comes from the shared list");
    assert!(exiting, "no cache is installed on an exiting thread");
    assert_eq!(cached, 0);
    let s = m.stats();
    assert_eq!((s.in_use, s.cached, s.free()), (0, 0, 1024));
}

/// A lease that finds the arena exhausted calls cached segments home: every thread
/// cache serving the arena gives all of them back at its next return.
#[test]
fn exhaustion_calls_cached_segments_home() {
    use std::sync::mpsc;

    let m = cached_arena(256);
    let (to_main, from_worker) = mpsc::channel();
    let (to_worker, from_main) = mpsc::channel::<()>();
    let m2 = m.clone();
    let worker = std::thread::spawn(move || {
        let cache = m2.local_cache_with_batch(8).unwrap();
        let held: Vec<_> = (0..12).map(|_| cache.lease().unwrap()).collect();
        drop(held);
        let keep = cache.lease().unwrap();
        to_main.send(cache.cached()).unwrap();
        from_main.recv().unwrap(); // the main thread found the arena exhausted
        drop(keep); // the cache notices and gives everything back
        to_main.send(cache.cached()).unwrap();
        from_main.recv().unwrap();
    });
    let cached = from_worker.recv().unwrap();
    assert!(cached > 0);
    let mine: Vec<_> = std::iter::from_fn(|| m.lease().ok()).collect();
    assert_eq!(mine.len(), 256 - 1 - cached, "exhausted while the worker's cache holds {cached}");
    assert_eq!(m.stats().exhausted, 1);
    to_worker.send(()).unwrap();
    assert_eq!(from_worker.recv().unwrap(), 0, "the worker's cache gave its segments back");
    let more: Vec<_> = std::iter::from_fn(|| m.lease().ok()).collect();
    assert_eq!(more.len(), cached + 1);
    to_worker.send(()).unwrap();
    worker.join().unwrap();
    drop((mine, more));
    let s = m.stats();
    assert_eq!((s.in_use, s.free() + s.cached), (0, 256));
    assert!(s.cached <= 4, "only this thread's small cache: {s:?}");
}
