//! Zero heap allocations per read and write once a task is running, proven with a
//! counting global allocator: the task allocates at spawn, then nothing per
//! operation — owned-buffer reads, pooled reads, writes and the completions that
//! wake it. Counted per thread: the runtime, its port and the task all run on the
//! test's thread; the peer runs on another.

mod common;

use std::io::{Read, Write};

use berth_async::{TcpListener, timeout};
use berth_testkit::{CountingAllocator, thread_allocations};
use common::{LIMIT, client, runtime};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const WARM: usize = 100;
const MEASURED: usize = 2000;

/// A blocking peer that sends 64 bytes and reads the echo, `rounds` times.
fn peer(addr: std::net::SocketAddr, rounds: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = client(addr);
        let message = [7u8; 64];
        let mut echo = [0u8; 64];
        for _ in 0..rounds {
            c.write_all(&message).unwrap();
            c.read_exact(&mut echo).unwrap();
            assert_eq!(echo, message);
        }
    })
}

#[test]
fn owned_buffer_echo_allocates_nothing_per_round_trip() {
    let (rt, _buffers) = runtime(16, 64);
    let measured = rt
        .block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let peer = peer(listener.local_addr().unwrap(), WARM + MEASURED);
            let (conn, _) = listener.accept().await.unwrap();
            let mut lease = conn.lease().unwrap();
            let mut before = 0;
            for round in 0..WARM + MEASURED {
                if round == WARM {
                    before = thread_allocations();
                }
                lease.clear();
                // A 64-byte message may arrive in pieces: read until it is whole.
                while lease.len() < 64 {
                    let (n, back) = conn.read(lease).await;
                    lease = back;
                    assert!(n.unwrap() > 0);
                }
                let (sent, back) = conn.write_all(lease).await;
                lease = back;
                sent.unwrap();
            }
            let n = thread_allocations() - before;
            peer.join().unwrap();
            n
        })
        .unwrap();
    assert_eq!(measured, 0, "{measured} allocations in {MEASURED} echo round trips");
}

#[test]
fn pooled_echo_in_a_spawned_task_with_a_timeout_allocates_nothing_per_round_trip() {
    let (rt, _buffers) = runtime(16, 64);
    let measured = rt
        .block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let peer = peer(listener.local_addr().unwrap(), WARM + MEASURED);
            let (conn, _) = listener.accept().await.unwrap();
            // Spawning allocates (the task, its waker, its join state); the loop must not.
            let task = berth_async::spawn(async move {
                let mut before = 0;
                let mut pending = Vec::with_capacity(64);
                let mut round = 0;
                while round < WARM + MEASURED {
                    if round == WARM && pending.is_empty() {
                        before = thread_allocations();
                    }
                    // Each read under a timeout: a timer op submitted and cancelled per read.
                    let lease = timeout(LIMIT, conn.read_pooled()).await.unwrap().unwrap().expect("not closed");
                    pending.extend_from_slice(lease.filled());
                    if pending.len() < 64 {
                        continue;
                    }
                    pending.clear();
                    let (sent, _lease) = conn.write_all(lease).await;
                    sent.unwrap();
                    round += 1;
                }
                thread_allocations() - before
            });
            let n = task.await.unwrap();
            peer.join().unwrap();
            n
        })
        .unwrap();
    assert_eq!(measured, 0, "{measured} allocations in {MEASURED} pooled echo round trips");
}
