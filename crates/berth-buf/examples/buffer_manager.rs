//! The seed's `BufferManager` and `SetBuffer`, on berth-buf: one arena, segments that
//! come back, exhaustion as an answer. Run with
//! `cargo run -p berth-buf --example buffer_manager`.

use berth_buf::{BufferConfig, BufferManager, Exhaustion, RecyclableBuffer};
use std::io::{Read, Write};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: arena
    // new BufferManager(receiveBufferSize * numConnections * 2, receiveBufferSize)
    let num_connections = 100;
    let receive_buffer_size = 4096;
    let buffers = BufferManager::new(
        BufferConfig::new()
            .segment_size(receive_buffer_size)
            .segment_count(num_connections * 2)
            .exhaustion(Exhaustion::Fail),
    )?;
    // ANCHOR_END: arena

    // ANCHOR: lease
    // bufferManager.SetBuffer(args): a segment for one receive.
    let mut lease = buffers.lease()?;
    let n = (&b"GET / HTTP/1.1\r\n\r\n"[..]).read(&mut lease[..])?;
    lease.set_len(n)?;
    assert_eq!(lease.filled(), b"GET / HTTP/1.1\r\n\r\n");
    // FreeBuffer: dropping the lease returns the segment — the seed never did.
    drop(lease);
    assert_eq!(buffers.stats().in_use, 0);
    // ANCHOR_END: lease

    // ANCHOR: local
    // On an event-loop thread, a local cache skips the shared free list.
    let cache = buffers.local_cache()?;
    for _ in 0..1000 {
        let segment = cache.lease()?;
        drop(segment); // straight back into this thread's cache
    }
    drop(cache);
    // ANCHOR_END: local

    // ANCHOR: recyclable
    // RecyclableMemoryStream: a growable buffer over leased segments, capped.
    let mut response = RecyclableBuffer::new(&buffers, 64 * 1024);
    write!(response, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")?;
    let mut slices = [std::io::IoSlice::new(&[]); 16];
    let count = response.io_slices(&mut slices); // ready for writev
    println!("response in {count} slice(s), {} bytes", response.len());
    // ANCHOR_END: recyclable

    let stats = buffers.stats();
    println!("arena: {} segments of {} bytes, high-water {}", stats.total, stats.segment_size, stats.high_water);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_runs() {
        super::main().unwrap();
    }
}
