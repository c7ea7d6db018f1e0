//! RecyclableBuffer: capacity limits, pool exhaustion, the std and bytes traits, and
//! a property test against a `VecDeque<u8>` model.

use std::collections::VecDeque;
use std::io::{IoSlice, Read, Write};

use berth_buf::{BufferConfig, BufferManager, Exhaustion, GrowError, RecyclableBuffer};
use bytes::{Buf, BufMut};
use proptest::prelude::*;

fn manager(count: usize) -> BufferManager {
    BufferManager::new(BufferConfig::new().segment_size(16).segment_count(count).exhaustion(Exhaustion::Fail)).unwrap()
}

#[test]
fn over_capacity_is_an_error_and_loses_nothing() {
    let m = manager(16);
    let mut buf = RecyclableBuffer::new(&m, 40);
    buf.extend_from_slice(&[1; 30]).unwrap();
    let err = buf.extend_from_slice(&[2; 11]).unwrap_err();
    assert_eq!(err, GrowError::CapacityExceeded { requested: 41, max: 40 });
    assert_eq!(buf.len(), 30);
    // io::Write takes what fits, then refuses.
    assert_eq!(buf.write(&[3; 20]).unwrap(), 10);
    let e = buf.write(&[4; 1]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
    assert!(buf.write_all(&[5; 1]).is_err());
    let mut out = Vec::new();
    buf.read_to_end(&mut out).unwrap();
    assert_eq!(out, [vec![1; 30], vec![3; 10]].concat());
}

#[test]
fn pool_exhaustion_is_an_error_and_loses_nothing() {
    let m = manager(2);
    let mut buf = RecyclableBuffer::new(&m, 1000);
    buf.extend_from_slice(&[7; 20]).unwrap();
    // 12 bytes of room in hand; the arena has no third segment.
    assert!(matches!(buf.extend_from_slice(&[8; 20]), Err(GrowError::Exhausted(_))));
    assert_eq!(buf.len(), 20);
    assert_eq!(buf.write(&[9; 20]).unwrap(), 12); // partial, as io::Write allows
    let e = buf.write(&[9; 1]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::OutOfMemory);
    assert_eq!(buf.len(), 32);
    let mut out = vec![0; 32];
    buf.read_exact(&mut out).unwrap();
    assert_eq!(out, [vec![7; 20], vec![9; 12]].concat());
    // Drained: the segments went back (one is kept for the next write).
    assert!(m.stats().in_use <= 1);
}

#[test]
fn reading_returns_segments_to_the_arena() {
    let m = manager(8);
    let mut buf = RecyclableBuffer::new(&m, 128);
    buf.extend_from_slice(&[1; 100]).unwrap();
    assert_eq!(m.stats().in_use, 7);
    buf.consume(50);
    assert_eq!(m.stats().in_use, 4);
    buf.consume(1000);
    assert!(buf.is_empty());
    assert!(m.stats().in_use <= 1);
    drop(buf);
    assert_eq!(m.stats().in_use, 0);
}

#[test]
fn io_slices_cover_the_held_bytes_for_writev() {
    let m = manager(8);
    let mut buf = RecyclableBuffer::new(&m, 128);
    let data: Vec<u8> = (0..50).collect();
    buf.extend_from_slice(&data).unwrap();
    buf.consume(5);
    let mut slices = [IoSlice::new(&[]); 8];
    let n = buf.io_slices(&mut slices);
    assert_eq!(n, 4); // 11 + 16 + 16 + 2
    let joined: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
    assert_eq!(joined, data[5..]);

    // And a real writev over a loopback socket pair.
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let written = a.write_vectored(&slices[..n]).unwrap();
    buf.advance(written);
    let mut got = vec![0; written];
    b.read_exact(&mut got).unwrap();
    assert_eq!(got, data[5..5 + written]);
}

#[test]
fn bufmut_writes_into_reserved_space() {
    let m = manager(8);
    let mut buf = RecyclableBuffer::new(&m, 64);
    assert_eq!(buf.remaining_mut(), 0);
    buf.reserve(40).unwrap();
    assert!(buf.remaining_mut() >= 40);
    buf.put_u32(0xdead_beef);
    buf.put_slice(&[5; 30]);
    assert_eq!(buf.len(), 34);
    assert_eq!(buf.get_u32(), 0xdead_beef);
    assert_eq!(buf.chunk(), &[5; 12]);
    assert!(matches!(buf.reserve(100), Err(GrowError::CapacityExceeded { .. })));
}

#[derive(Debug, Clone)]
enum Op {
    Write(Vec<u8>),
    Extend(Vec<u8>),
    Read(usize),
    Consume(usize),
    Reserve(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..50).prop_map(Op::Write),
        proptest::collection::vec(any::<u8>(), 0..50).prop_map(Op::Extend),
        (0usize..60).prop_map(Op::Read),
        (0usize..60).prop_map(Op::Consume),
        (0usize..60).prop_map(Op::Reserve),
    ]
}

proptest! {
    /// Whatever the sequence of writes and reads, the buffer holds exactly what a
    /// byte queue would (minus writes refused for capacity or exhaustion), and its
    /// segments all come back.
    #[test]
    fn behaves_like_a_byte_queue(ops in proptest::collection::vec(op(), 0..60), max in 0usize..120, segs in 1usize..10) {
        let m = manager(segs);
        let mut buf = RecyclableBuffer::new(&m, max);
        let mut model: VecDeque<u8> = VecDeque::new();
        for op in ops {
            match op {
                Op::Write(d) => {
                    if let Ok(n) = buf.write(&d) {
                        prop_assert!(n > 0 || d.is_empty());
                        model.extend(&d[..n]);
                    }
                }
                Op::Extend(d) => {
                    if buf.extend_from_slice(&d).is_ok() {
                        model.extend(&d);
                    }
                }
                Op::Read(n) => {
                    let mut out = vec![0; n];
                    let got = buf.read(&mut out).unwrap();
                    let want: Vec<u8> = model.drain(..got.min(model.len())).collect();
                    prop_assert_eq!(&out[..got], &want[..]);
                    prop_assert_eq!(got, n.min(got + model.len()));
                }
                Op::Consume(n) => {
                    buf.consume(n);
                    model.drain(..n.min(model.len()));
                }
                Op::Reserve(n) => {
                    if buf.reserve(n).is_ok() {
                        prop_assert!(buf.remaining_mut() >= n);
                    }
                }
            }
            prop_assert_eq!(buf.len(), model.len());
            prop_assert!(buf.len() <= max);
            let mut joined = Vec::new();
            let mut slices = [IoSlice::new(&[]); 16];
            let n = buf.chunks_vectored(&mut slices);
            for s in &slices[..n] { joined.extend_from_slice(s); }
            prop_assert_eq!(joined, model.iter().copied().collect::<Vec<_>>());
        }
        drop(buf);
        prop_assert_eq!(m.stats().in_use, 0);
    }
}
