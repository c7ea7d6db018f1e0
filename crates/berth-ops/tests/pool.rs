//! The op pool and the connection limit at their edges, and the pool against a model.

use std::collections::HashMap;

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::{ConnectionLimit, OpId, OpKind, OpPool};
use proptest::prelude::*;

#[test]
fn exhaustion_is_an_error_and_counted() {
    let mut pool = OpPool::new(2, |_| ());
    let a = pool.take().unwrap();
    let _b = pool.take().unwrap();
    assert_eq!(pool.take().unwrap_err().capacity, 2);
    assert_eq!(pool.stats().exhausted, 1);
    pool.give(a).unwrap();
    assert!(pool.take().is_ok());
    assert_eq!(pool.stats().high_water, 2);
}

#[test]
fn stale_and_forged_ids_are_refused() {
    let mut pool = OpPool::new(2, |_| ());
    let a = pool.take().unwrap();
    pool.give(a).unwrap();
    assert!(pool.give(a).is_err(), "double give");
    assert!(pool.get(a).is_err());
    let a2 = pool.take().unwrap(); // same slot, next generation
    assert_eq!(a2.index(), a.index());
    assert!(pool.get_mut(a).is_err(), "stale id reached the op's next use");
    assert!(pool.get(OpId::from_u64(u64::MAX)).is_err());
    assert!(pool.get(OpId::from_u64(a2.to_u64() + (1 << 32))).is_err());
    assert_eq!(OpId::from_u64(a2.to_u64()), a2);
    // A double give, a `get` and a `get_mut` of the stale id, and two forged `get`s.
    assert_eq!(pool.stats().stale, 5);
}

#[test]
fn give_resets_the_op_and_returns_its_lease_but_keeps_the_token() {
    let buffers = BufferManager::new(BufferConfig::new().segment_count(1)).unwrap();
    let mut pool = OpPool::new(1, |i| format!("conn-{i}"));
    let id = pool.take().unwrap();
    let op = pool.get_mut(id).unwrap();
    op.set_kind(OpKind::Send);
    op.set_socket(Some(5));
    op.set_buffer(buffers.lease().unwrap(), 10..20).unwrap();
    op.token_mut().push('!');
    assert_eq!(buffers.stats().in_use, 1);
    pool.give(id).unwrap();
    assert_eq!(buffers.stats().in_use, 0);
    let id = pool.take().unwrap();
    let op = pool.get(id).unwrap();
    assert_eq!((op.kind(), op.socket(), op.buffer().is_none()), (OpKind::None, None, true));
    assert_eq!(op.token(), "conn-0!");
}

#[test]
fn bad_buffer_ranges_are_refused_and_the_lease_handed_back() {
    let buffers = BufferManager::new(BufferConfig::new().segment_size(100).segment_count(1)).unwrap();
    let mut pool = OpPool::new(1, |_| ());
    let id = pool.take().unwrap();
    let op = pool.get_mut(id).unwrap();
    let err = op.set_buffer(buffers.lease().unwrap(), 50..101).unwrap_err();
    assert_eq!((err.range.end, err.range.capacity), (101, 100));
    #[allow(clippy::reversed_empty_ranges)]
    let err = op.set_buffer(err.lease, 60..50).unwrap_err();
    op.set_buffer(err.lease, 0..100).unwrap();
    assert!(op.set_range(0..101).is_err());
    assert_eq!(op.range(), 0..100);
    op.set_range(10..20).unwrap();
    assert_eq!(op.active().len(), 10);
    op.complete(Ok(500)); // more than the range: the view is clamped
    assert_eq!(op.transferred_bytes().len(), 10);
    assert_eq!(buffers.stats().in_use, 1);
    assert!(op.take_buffer().is_some());
    assert_eq!(op.active(), b"");
}

#[test]
fn connection_limit_across_threads() {
    let limit = ConnectionLimit::new(8);
    let held: Vec<_> = (0..8).map(|_| limit.try_acquire().unwrap()).collect();
    let l2 = limit.clone();
    let refused = std::thread::spawn(move || l2.try_acquire().is_err()).join().unwrap();
    assert!(refused);
    assert_eq!(limit.refused(), 1);
    // Permits dropped on another thread free their places.
    std::thread::spawn(move || drop(held)).join().unwrap();
    assert_eq!(limit.in_use(), 0);

    let threads: Vec<_> = (0..4)
        .map(|_| {
            let l = limit.clone();
            std::thread::spawn(move || {
                let mut max_seen = 0;
                for _ in 0..10_000 {
                    if let Ok(p) = l.try_acquire() {
                        max_seen = max_seen.max(l.in_use());
                        drop(p);
                    }
                }
                max_seen
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap() <= 8);
    }
    assert_eq!(limit.in_use(), 0);
}

proptest! {
    /// Any interleaving of take, give and lookups with live and dead ids: live ids
    /// reach their own op, dead ones are refused, and counts match.
    #[test]
    fn pool_matches_model(ops in proptest::collection::vec((0u8..3, any::<usize>()), 0..300), cap in 0usize..10) {
        let mut pool = OpPool::new(cap, |_| 0u64);
        let mut live: HashMap<OpId, u64> = HashMap::new();
        let mut dead: Vec<OpId> = Vec::new();
        let mut stamp = 0u64;
        let mut stale = 0u64;
        for (kind, pick) in ops {
            match kind {
                0 => match pool.take() {
                    Ok(id) => {
                        stamp += 1;
                        *pool.get_mut(id).unwrap().token_mut() = stamp;
                        prop_assert!(live.insert(id, stamp).is_none());
                    }
                    Err(_) => prop_assert_eq!(live.len(), cap),
                },
                1 if !live.is_empty() => {
                    let id = *live.keys().nth(pick % live.len()).unwrap();
                    live.remove(&id);
                    pool.give(id).unwrap();
                    dead.push(id);
                }
                _ if !dead.is_empty() => {
                    let id = dead[pick % dead.len()];
                    prop_assert!(pool.get(id).is_err());
                    prop_assert!(pool.give(id).is_err());
                    stale += 2;
                }
                _ => {}
            }
            for (id, stamp) in &live {
                prop_assert_eq!(*pool.get(*id).unwrap().token(), *stamp);
            }
            prop_assert_eq!(pool.stats().in_use, live.len());
            prop_assert_eq!(pool.available(), cap - live.len());
            prop_assert_eq!(pool.stats().stale, stale);
        }
    }
}
