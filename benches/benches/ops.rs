//! Take + give of a pooled op, against `Box::new` of the same struct + drop.
//!
//! Ids: `ops/take_give/{pool,box}`.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;

use berth_ops::{OpArgs, OpPool};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A typical user token: a connection id and a few counters.
#[derive(Default)]
struct Token {
    _connection: u64,
    _received: u64,
    _sent: u64,
}

fn take_give(c: &mut Criterion) {
    let mut group = c.benchmark_group("ops/take_give");
    group.throughput(Throughput::Elements(1));

    let mut pool = OpPool::new(1024, |_| Token::default());
    group.bench_function("pool", |b| {
        b.iter(|| {
            let id = pool.take().expect("op");
            black_box(pool.get_mut(id).expect("taken"));
            pool.give(id).expect("taken");
        });
    });

    group.bench_function("box", |b| {
        b.iter(|| {
            let op = Box::new(OpArgs::new(Token::default()));
            drop(black_box(op));
        });
    });
    group.finish();
}

criterion_group!(benches, take_give);
criterion_main!(benches);
