//! A property test of the manager against a simple model: any sequence of leases,
//! drops, raw handoffs (valid, repeated or stale) keeps every segment owned by at most
//! one holder and the counters exact.

use std::collections::HashSet;

use berth_buf::{BufferConfig, BufferManager, Exhaustion, Lease, RawError, RawLease};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

#[derive(Debug, Clone)]
enum Op {
    Lease,
    CacheLease,
    Drop(usize),
    IntoRaw(usize),
    FromRaw(usize),
    ReleaseRaw(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Lease),
        2 => Just(Op::CacheLease),
        2 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::IntoRaw),
        1 => any::<usize>().prop_map(Op::FromRaw),
        1 => any::<usize>().prop_map(Op::ReleaseRaw),
    ]
}

/// Runs `ops` against a manager of `count` segments and the model, after leasing
/// `prelease` segments up front (so that large arenas can be exhausted too).
fn check(ops: Vec<Op>, count: usize, heap: bool, local_cache: bool, prelease: usize) -> Result<(), TestCaseError> {
    let policy = if heap { Exhaustion::Heap } else { Exhaustion::Fail };
    let m = BufferManager::new(BufferConfig::new().segment_size(32).segment_count(count).exhaustion(policy)).unwrap();
    let cache = if local_cache { Some(m.local_cache_with_batch(3).unwrap()) } else { None };
    let mut live: Vec<Lease> = (0..prelease).map(|_| m.lease().unwrap()).collect();
    // Every raw lease ever made, and whether it is still redeemable.
    let mut raws: Vec<(RawLease, bool)> = Vec::new();
    let (mut expect_double, mut expect_stale, mut expect_heap) = (0u64, 0u64, 0u64);
    // The most arena segments the model has held at once (leased or raw).
    let mut peak = live.len();

    for op in ops {
        match op {
            Op::Lease | Op::CacheLease => {
                let arena_live = live.iter().filter(|l| !l.is_heap()).count() + raws.iter().filter(|r| r.1).count();
                let got = match (&op, &cache) {
                    (Op::CacheLease, Some(c)) => c.lease(),
                    _ => m.lease(),
                };
                if arena_live < count {
                    let l = got.expect("a free segment exists");
                    prop_assert!(!l.is_heap());
                    live.push(l);
                } else if heap {
                    expect_heap += 1;
                    let l = got.expect("heap fallback");
                    prop_assert!(l.is_heap());
                    live.push(l);
                } else {
                    prop_assert!(got.is_err());
                }
            }
            Op::Drop(i) if !live.is_empty() => {
                live.swap_remove(i % live.len());
            }
            Op::IntoRaw(i) if !live.is_empty() => {
                let l = live.swap_remove(i % live.len());
                match l.into_raw() {
                    Ok(raw) => {
                        // An older raw lease of the same segment is stale from now on.
                        raws.push((raw, true));
                    }
                    Err(l) => {
                        prop_assert!(l.is_heap());
                        live.push(l);
                    }
                }
            }
            Op::FromRaw(i) | Op::ReleaseRaw(i) if !raws.is_empty() => {
                let k = i % raws.len();
                let (raw, redeemable) = raws[k];
                let result = if matches!(op, Op::FromRaw(_)) {
                    m.from_raw(raw).map(|l| live.push(l))
                } else {
                    m.release_raw(raw)
                };
                if redeemable {
                    prop_assert!(result.is_ok());
                    raws[k].1 = false;
                } else {
                    match result {
                        Err(RawError::DoubleReturn { .. }) => expect_double += 1,
                        Err(RawError::Stale { .. }) => expect_stale += 1,
                        other => prop_assert!(false, "redeemed a spent raw lease: {:?}", other),
                    }
                }
            }
            _ => {}
        }
        // No segment is held twice.
        let mut seen = HashSet::new();
        for l in live.iter().filter(|l| !l.is_heap()) {
            prop_assert!(seen.insert(l.index().unwrap()));
        }
        for (r, ok) in &raws {
            if *ok {
                prop_assert!(seen.insert(r.index()));
            }
        }
        peak = peak.max(seen.len());
        let s = m.stats();
        prop_assert_eq!(s.in_use, seen.len());
        prop_assert_eq!(s.raw, raws.iter().filter(|r| r.1).count());
        prop_assert_eq!(s.double_returns + s.stale_returns, expect_double + expect_stale);
        prop_assert_eq!(s.heap_fallbacks, expect_heap);
        // The touched footprint covers every segment ever held at once, and no more
        // than the arena.
        prop_assert!(s.high_water >= peak, "high_water {} below the peak in use {}", s.high_water, peak);
        prop_assert!(s.high_water <= count);
    }
    live.clear();
    for (raw, ok) in raws {
        if ok {
            m.release_raw(raw).unwrap();
        }
    }
    // Segments parked in this thread's cache are counted as cached, never in use.
    let s = m.stats();
    prop_assert_eq!(s.in_use, 0);
    let most_cached = if local_cache { 6 } else { count / 64 };
    prop_assert!(s.cached <= most_cached);
    prop_assert_eq!(s.free() + s.cached, count);
    drop(cache);
    let s = m.stats();
    if local_cache {
        prop_assert_eq!((s.in_use, s.cached, s.free()), (0, 0, count));
    }
    Ok(())
}

proptest! {
    #[test]
    fn manager_matches_model(ops in proptest::collection::vec(op(), 0..200), count in 1usize..12, heap in any::<bool>()) {
        check(ops, count, heap, true, 0)?;
    }

    /// Arenas large enough for the plain lease path to cache segments on this thread,
    /// nearly all leased up front so that exhaustion is reached with segments cached.
    #[test]
    fn manager_with_an_implicit_thread_cache_matches_model(
        ops in proptest::collection::vec(op(), 0..200),
        count in 256usize..300,
        heap in any::<bool>(),
    ) {
        check(ops, count, heap, false, count - 16)?;
    }
}
