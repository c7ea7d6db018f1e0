//! Lease + return of one 4096-byte segment, against `Vec::with_capacity(4096)` + drop.
//!
//! `shared` is the plain `BufferManager::lease` on a thread without a `LocalCache`: on
//! this 4096-segment arena it goes through the thread's implicit segment cache, as
//! any thread that leases and returns on its own does (the shared free list sees one
//! CAS per batch). `shared_list` is the same call on an arena too small (128
//! segments) for thread caches: every lease and every return is a CAS on the shared
//! free list, the path a thread takes when no cache serves it. `local` goes through a
//! `LocalCache`; `contended_2threads` is `shared` on two pinned threads at once.
//!
//! Ids: `buf/lease_return/{shared,shared_list,local,vec_4096,contended_2threads,vec_4096_2threads}`.
//! `cargo xtask bench` pairs them into results.json.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use berth_buf::{BufferConfig, BufferManager};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn manager() -> BufferManager {
    BufferManager::new(BufferConfig::new().segment_size(4096).segment_count(4096).prefault(true)).expect("arena")
}

/// Runs `op` `iters` times on this thread and on one more, started together; the
/// time per iteration is the per-operation latency with two threads contending.
///
/// The two threads are pinned to cores 0 and 1 (as a thread-per-core server pins its
/// workers), for berth and the peer alike.
fn two_threads(iters: u64, op: impl Fn() + Send + Sync + Clone + 'static) -> Duration {
    pin_to(0);
    let barrier = Arc::new(Barrier::new(2));
    let (b2, op2) = (barrier.clone(), op.clone());
    let other = std::thread::spawn(move || {
        pin_to(1);
        b2.wait();
        for _ in 0..iters {
            op2();
        }
    });
    barrier.wait();
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    let mine = start.elapsed();
    other.join().expect("bench thread");
    mine
}

/// Pins the calling thread to one CPU (best effort: a machine with one core, or a
/// refused call, leaves it unpinned).
fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

fn lease_return(c: &mut Criterion) {
    let mut group = c.benchmark_group("buf/lease_return");
    group.throughput(Throughput::Elements(1));

    let m = manager();
    group.bench_function("shared", |b| {
        b.iter(|| black_box(m.lease().expect("segment")));
    });

    let small =
        BufferManager::new(BufferConfig::new().segment_size(4096).segment_count(128).prefault(true)).expect("arena");
    group.bench_function("shared_list", |b| {
        b.iter(|| black_box(small.lease().expect("segment")));
    });

    let cache = m.local_cache().expect("cache");
    group.bench_function("local", |b| {
        b.iter(|| black_box(cache.lease().expect("segment")));
    });
    drop(cache);

    group.bench_function("vec_4096", |b| {
        b.iter(|| black_box(Vec::<u8>::with_capacity(black_box(4096))));
    });

    let shared = m.clone();
    group.bench_function("contended_2threads", |b| {
        let m = shared.clone();
        b.iter_custom(|iters| {
            let m = m.clone();
            two_threads(iters, move || drop(black_box(m.lease().expect("segment"))))
        });
    });

    group.bench_function("vec_4096_2threads", |b| {
        b.iter_custom(|iters| two_threads(iters, || drop(black_box(Vec::<u8>::with_capacity(black_box(4096))))));
    });
    group.finish();
}

criterion_group!(benches, lease_return);
criterion_main!(benches);
