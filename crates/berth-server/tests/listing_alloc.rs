//! A directory listing's heap use does not depend on the directory's size: listing
//! 100,000 entries makes exactly as many allocations as listing ten (the listing's
//! fixed window, allocated once per listing; nothing per segment or per pass).
//!
//! The count is process-wide ([`berth_testkit::total_allocations`]), so this binary
//! holds one test, and the client allocates nothing while it counts: the request is
//! prepared before, and the response is read into a fixed buffer until the server
//! closes (`Connection: close`).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use berth_server::StaticFiles;
use berth_testkit::{CountingAllocator, total_allocations};

use common::*;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Sends `request` on a fresh connection; returns the allocations made meanwhile (by every
/// thread), the bytes received and the time taken.
fn count_listing(addr: std::net::SocketAddr, request: &[u8], buf: &mut [u8]) -> (u64, usize, Duration) {
    let mut s = client(addr);
    let before = total_allocations();
    let started = Instant::now();
    s.write_all(request).expect("send");
    let mut total = 0;
    let mut tail = [0u8; 8];
    loop {
        let n = s.read(buf).expect("read");
        if n == 0 {
            break;
        }
        total += n;
        // Keep the last bytes to check the end of the body.
        let keep = n.min(8);
        tail.copy_within(keep.., 0);
        tail[8 - keep..].copy_from_slice(&buf[n - keep..n]);
    }
    let took = started.elapsed();
    let allocations = total_allocations() - before;
    assert_eq!(&tail[1..], b"\r\n0\r\n\r\n", "the listing ends with its last chunk");
    drop(s);
    (allocations, total, took)
}

#[test]
fn listing_100000_entries_allocates_no_more_than_listing_ten() {
    let small = TempDir::new("alloc-small");
    let big = TempDir::new("alloc-big");
    for i in 0..10 {
        std::fs::File::create(small.path().join(format!("f{i:06}"))).unwrap();
    }
    for i in 0..100_000 {
        std::fs::File::create(big.path().join(format!("f{i:06}"))).unwrap();
    }
    // Warms the big server up without listing 100,000 entries twice.
    std::fs::create_dir(big.path().join("warm")).unwrap();
    std::fs::File::create(big.path().join("warm/x")).unwrap();
    let small_server = builder().serve(StaticFiles::new(small.path()).unwrap().list(true)).unwrap();
    let big_server = builder().serve(StaticFiles::new(big.path()).unwrap().list(true)).unwrap();
    let request = req("GET", "/", "Connection: close\r\n").into_bytes();
    let warm = req("GET", "/warm/", "Connection: close\r\n").into_bytes();
    let mut buf = vec![0u8; 64 * 1024];
    // Warm up both (the workers' buffer caches, the first accept).
    count_listing(small_server.local_addr(), &request, &mut buf);
    count_listing(big_server.local_addr(), &warm, &mut buf);

    let (small_allocs, small_bytes, _) = count_listing(small_server.local_addr(), &request, &mut buf);
    let (big_allocs, big_bytes, took) = count_listing(big_server.local_addr(), &request, &mut buf);
    eprintln!(
        "listing allocations: {small_allocs} for 10 entries ({small_bytes} bytes), \
         {big_allocs} for 100,000 entries ({big_bytes} bytes, {took:?})"
    );
    assert!(big_bytes > 9_000_000, "the whole listing arrived: {big_bytes} bytes");
    assert_eq!(big_allocs, small_allocs, "allocations independent of the directory's size");
    // The listing's state: its box, the name pool, the slots, the getdents buffer.
    assert!(small_allocs <= 4, "{small_allocs} allocations for one listing");
}
