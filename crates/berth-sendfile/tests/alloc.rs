//! `send_some` makes no heap allocation in steady state, on either path: a counting
//! global allocator, counting per thread so other test threads do not interfere.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

mod common;

use berth_sendfile::FileSend;
use common::*;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counter is a
// const-initialised thread local, which needs no allocation to access.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
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
