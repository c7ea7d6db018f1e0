//! `send_some` makes no heap allocation in steady state, on either path: a counting
//! global allocator, counting per thread so other test threads do not interfere.

mod common;

use berth_sendfile::FileSend;
use berth_testkit::{CountingAllocator, thread_allocations};
use common::*;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocs() -> u64 {
    thread_allocations()
}

#[test]
fn send_some_does_not_allocate() {
    let data = pattern(4 << 20, 11);
    let tmp = TempFile::with_contents("alloc", &data);
    let file = tmp.open();
    let b = allocs();
    drop(std::hint::black_box(vec![1u8; 10]));
    assert!(allocs() > b, "the counting allocator counts");
    for fallback in [false, true] {
        let (sender, receiver) = pair();
        let reader = drain(receiver, 64 << 10);
        let mut send = FileSend::whole(&file).unwrap().chunk_cap(64 << 10).force_fallback(fallback);
        let mut scratch = vec![0u8; 16 << 10];
        let before = allocs();
        let mut calls = 0;
        loop {
            let p = send.send_some(&sender, &mut scratch).unwrap();
            calls += 1;
            if p.done {
                break;
            }
        }
        let during = allocs() - before;
        drop(sender);
        assert!(join(reader) == data);
        assert!(calls > 60, "{calls} calls");
        assert_eq!(during, 0, "fallback {fallback}: {during} allocations in {calls} calls");
    }
}
