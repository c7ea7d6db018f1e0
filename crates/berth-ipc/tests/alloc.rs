//! Zero heap allocations per message in steady state, proven with a counting
//! global allocator: one at a time, in batches, and through the wake descriptors
//! (arming, the commit that writes the peer's descriptor, the release that writes
//! the sender's). One test function, so no other test allocates concurrently.

use std::hint::black_box;
use std::os::fd::AsFd;

use berth_ipc::{Channel, Config, RecvError};
use berth_testkit::{CountingAllocator, allocations_during};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Proven by mutation: `Sender::try_send_batch` collecting the messages into a
/// `Vec` first fails the batch assertion.
#[test]
fn steady_state_allocates_nothing() {
    let chan = Channel::create_memfd(&Config::new(1 << 16).wake_fds(true)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let msg = [7u8; 64];

    // Warm up: the first arm opens the peer's pidfd and registers it with the
    // watcher thread (both allocate, once per peer).
    assert_eq!(rx.arm_wake(), Ok(true));
    tx.try_send(&msg).unwrap();
    drop(rx.try_recv().unwrap());
    while tx.try_send(&msg).is_ok() {}
    assert_eq!(tx.arm_wake(64), Ok(true));
    while rx.try_recv().map(drop).is_ok() {}

    let n = allocations_during(|| {
        for _ in 0..10_000 {
            tx.try_send(&msg).unwrap();
            black_box(&*rx.try_recv().unwrap());
        }
    });
    assert_eq!(n, 0, "one message at a time allocated");

    let batch = [&msg[..]; 16];
    let n = allocations_during(|| {
        for _ in 0..2_000 {
            tx.try_send_batch(&batch).unwrap();
            let mut got = 0;
            while got < batch.len() {
                got += rx
                    .try_recv_batch(5, |m| {
                        black_box(m);
                    })
                    .unwrap();
            }
        }
    });
    assert_eq!(n, 0, "batches allocated");

    // The receiver sleeps on its descriptor before every message: each commit
    // writes it, each arm empties it.
    let n = allocations_during(|| {
        for _ in 0..2_000 {
            assert_eq!(rx.try_recv().map(drop), Err(RecvError::Empty));
            assert_eq!(rx.arm_wake(), Ok(true));
            tx.try_send(&msg).unwrap();
            black_box(rx.as_fd());
            drop(rx.try_recv().unwrap());
        }
    });
    assert_eq!(n, 0, "the receiver's descriptor wake allocated");

    // The sender sleeps on its descriptor for room before every message.
    while tx.try_send(&msg).is_ok() {}
    let n = allocations_during(|| {
        for _ in 0..2_000 {
            assert_eq!(tx.arm_wake(64), Ok(true));
            while rx.try_recv().map(drop).is_ok() {}
            while tx.try_send(&msg).is_ok() {}
        }
    });
    assert_eq!(n, 0, "the sender's descriptor wake allocated");
}
