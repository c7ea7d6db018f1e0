//! `serve_per_core`: several runtimes share one address through `SO_REUSEPORT`,
//! echo for many clients, stop with connections mid-read (their buffers back in
//! the shared arena), and a listener that cannot bind fails the start cleanly.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use berth_async::{Error, PerCore, PerCoreConfig, Runtime, TcpListener, serve_per_core, spawn};
use berth_buf::{BufferConfig, BufferManager};
use common::{LIMIT, client};

/// Joins the runtimes, failing the test (not hanging it) if they do not end in time.
fn join_within_limit(server: PerCore) -> Result<(), Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.join());
    });
    rx.recv_timeout(LIMIT).expect("the runtimes did not end within the limit")
}

// ANCHOR: serve
/// An echo server body: accept, and echo each connection in its own task.
async fn echo(listener: TcpListener, served: Arc<AtomicUsize>) {
    while let Ok((conn, _peer)) = listener.accept().await {
        served.fetch_add(1, Ordering::Relaxed);
        spawn(async move {
            while let Ok(Some(lease)) = conn.read_pooled().await {
                if conn.write_all(lease).await.0.is_err() {
                    break;
                }
            }
        });
    }
}

fn config(threads: usize, buffers: &BufferManager) -> PerCoreConfig {
    PerCoreConfig::new("127.0.0.1:0".parse().unwrap())
        .threads(threads)
        .runtime(Runtime::builder().ops(256).max_sockets(256).buffers(buffers.clone()))
}
// ANCHOR_END: serve

#[test]
fn runtimes_share_one_address_and_stop_with_connections_mid_read() {
    let buffers = BufferManager::new(BufferConfig::new().segment_size(4096).segment_count(256)).unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    // ANCHOR: start
    let server = serve_per_core(config(2, &buffers), move |listener, _index| echo(listener, counter.clone())).unwrap();
    // ANCHOR_END: start
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    // Many connections, so both runtimes get some whatever the kernel's hashing.
    let mut clients: Vec<_> = (0..32).map(|_| client(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let message = format!("hello {i}");
        c.write_all(message.as_bytes()).unwrap();
        let mut back = vec![0u8; message.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, message.as_bytes());
    }
    assert_eq!(served.load(Ordering::Relaxed), 32);
    // Stop with every connection's read in flight: the reads are cancelled and
    // their segments go back to the shared arena once the runtimes are gone.
    server.stop();
    join_within_limit(server).unwrap();
    assert_eq!(buffers.stats().in_use, 0, "{:?}", buffers.stats());
    // The connections were closed by the runtimes going away.
    for mut c in clients {
        let mut byte = [0u8; 1];
        assert!(matches!(c.read(&mut byte), Ok(0) | Err(_)), "a connection outlived its runtime");
    }
}

#[test]
fn a_listener_that_cannot_bind_fails_the_start_and_leaves_nothing_running() {
    let buffers = BufferManager::new(BufferConfig::new().segment_count(64)).unwrap();
    // Taken without SO_REUSEPORT: nobody may share it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = config(2, &buffers);
    config.addr = taken.local_addr().unwrap();
    let started = serve_per_core(config, |listener, _| async move {
        let _ = listener.accept().await;
    });
    match started {
        Err(Error::Submit(_) | Error::Io(_)) => {}
        other => panic!("expected the bind to fail, got {other:?}"),
    }
    assert_eq!(buffers.stats().in_use, 0);
}

#[test]
fn a_serve_future_that_returns_ends_its_runtime() {
    let buffers = BufferManager::new(BufferConfig::new().segment_count(64)).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let server = serve_per_core(config(3, &buffers), move |_listener, index| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1 << index, Ordering::Relaxed);
        }
    })
    .unwrap();
    join_within_limit(server).unwrap();
    // Each of the three ran its body once, with its own index.
    assert_eq!(runs.load(Ordering::Relaxed), 0b111);
}
