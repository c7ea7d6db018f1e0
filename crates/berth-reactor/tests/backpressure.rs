//! An arena too small for the offered load. On io_uring the pooled receives that find
//! the buffer ring empty (`ENOBUFS`) wait, queued — no error, no false end of stream —
//! and complete with their data once segments come back. On epoll a pooled receive
//! that finds the arena empty completes with `BufferExhausted`, and the same op
//! resubmitted after segments return gets the data. Runs on the driver
//! `BERTH_DRIVER` names (CI runs both).

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::{OpError, OpId, OpKind};
use berth_reactor::{Completion, CompletionPort, Driver, ListenOptions, SocketId};
use common::{client, wait_for};

const SEGMENTS: usize = 8;
const CONNS: usize = 12;

#[test]
fn receives_wait_for_segments_and_lose_nothing() {
    let buffers = BufferManager::new(BufferConfig::new().segment_size(4096).segment_count(SEGMENTS)).unwrap();
    let mut port = CompletionPort::builder()
        .ops(64)
        .max_sockets(32)
        .cache_batch(1)
        .buffers(buffers.clone())
        .build(|_| ())
        .unwrap();
    let listener = port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
    let addr = port.local_addr(listener).unwrap();
    let accept = port.take_op().unwrap();
    let mut conns: Vec<(SocketId, OpId)> = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..CONNS {
        port.accept(listener, accept).unwrap();
        clients.push(client(addr));
        let Completion::Op { socket, .. } =
            wait_for(&mut port, |c| matches!(c, Completion::Op { kind: OpKind::Accept, .. }))
        else {
            unreachable!()
        };
        let op = port.take_op().unwrap();
        port.recv_pooled(socket, op).unwrap();
        conns.push((socket, op));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("message {i:02}").as_bytes()).unwrap();
    }
    // Take completions and keep their segments until the arena runs dry.
    let mut got: Vec<Option<String>> = vec![None; CONNS];
    let mut exhausted = Vec::new();
    let mut batch = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && got.iter().flatten().count() + exhausted.len() < CONNS {
        port.wait(&mut batch, Some(Duration::from_millis(20))).unwrap();
        for c in batch.drain(..) {
            let Completion::Op { op, result, .. } = c else { continue };
            let i = conns.iter().position(|&(_, o)| o == op).unwrap();
            match result {
                Ok(n) => {
                    assert!(n > 0, "connection {i}: a false end of stream");
                    got[i] = Some(String::from_utf8(port.op(op).unwrap().transferred_bytes().to_vec()).unwrap());
                }
                Err(OpError::BufferExhausted) => exhausted.push(i),
                Err(e) => panic!("connection {i}: {e:?}"),
            }
        }
    }
    let first = got.iter().flatten().count();
    assert!(first < CONNS, "every receive got a segment from an arena of {SEGMENTS}");
    match port.driver() {
        Driver::Uring => {
            assert!(exhausted.is_empty(), "io_uring: starved receives wait, they do not fail");
            assert!(port.stats().enobufs > 0, "{:?}", port.stats());
            assert_eq!(port.stats().pending, CONNS - first, "the starved receives are still pending");
        }
        _ => assert_eq!(exhausted.len(), CONNS - first, "epoll: the rest fail with BufferExhausted"),
    }
    // Hand the segments back; on epoll, resubmit the receives that failed.
    for (i, &(_, op)) in conns.iter().enumerate() {
        if got[i].is_some() {
            drop(port.op_mut(op).unwrap().take_buffer());
        }
    }
    for &i in &exhausted {
        let (socket, op) = conns[i];
        port.recv_pooled(socket, op).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.iter().flatten().count() < CONNS {
        assert!(Instant::now() < deadline, "starved receives never resumed: {got:?}");
        port.wait(&mut batch, Some(Duration::from_millis(20))).unwrap();
        for c in batch.drain(..) {
            let Completion::Op { op, result, .. } = c else { continue };
            let i = conns.iter().position(|&(_, o)| o == op).unwrap();
            let n = result.unwrap_or_else(|e| panic!("connection {i}: {e:?}"));
            assert!(n > 0, "connection {i}: a false end of stream");
            got[i] = Some(String::from_utf8(port.op(op).unwrap().transferred_bytes().to_vec()).unwrap());
            drop(port.op_mut(op).unwrap().take_buffer());
        }
    }
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.as_deref(), Some(format!("message {i:02}").as_str()), "connection {i}");
    }
}
