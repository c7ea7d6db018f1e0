//! Shared pieces of the berth-async tests: bounded runtimes and blocking peers.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_async::{Runtime, sleep};
use berth_buf::{BufferConfig, BufferManager};

/// Every blocking socket call and every wait in the tests gives up after this long.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A runtime on the driver `BERTH_DRIVER` names, with its own arena.
pub fn runtime(ops: usize, segments: usize) -> (Runtime, BufferManager) {
    let buffers = BufferManager::new(BufferConfig::new().segment_size(4096).segment_count(segments)).unwrap();
    let rt = Runtime::builder().ops(ops).max_sockets(ops).buffers(buffers.clone()).build().unwrap();
    (rt, buffers)
}

/// A blocking client with timeouts.
pub fn client(addr: SocketAddr) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s
}

/// Segments held by anything but the port's io_uring buffer ring (which lends the
/// kernel some for pooled receives, counted as in use while the port lives).
pub fn held(rt: &Runtime, buffers: &BufferManager) -> usize {
    buffers.stats().in_use - rt.stats().ring_buffers
}

/// Runs the runtime (sleeping in steps) until `done` holds or [`LIMIT`] passes.
pub async fn settle(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(2)).await.unwrap();
    }
    true
}
