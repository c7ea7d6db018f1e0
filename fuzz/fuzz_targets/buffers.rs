//! `buffers`: structured sequences of `Lease`, `RawLease` redeem/return and
//! `RecyclableBuffer` operations against a model (issue #16, target 7).
//!
//! The model knows how many segments the arena has and who holds each: leases,
//! outstanding raw leases, recyclable buffers. It predicts when a lease succeeds
//! (exactly while a segment is free: arenas under 256 segments have no implicit
//! thread cache), which raw redemptions and returns succeed (exactly the first, of
//! the latest raw lease of a segment), what every lease and buffer holds (so a
//! segment handed out twice shows up as bytes changing under another holder), and
//! the arena's counters (`in_use`, `raw`, stale and double returns).

#![no_main]

use std::collections::VecDeque;
use std::io::{IoSlice, Read};

use arbitrary::Arbitrary;
use berth_buf::{BufferConfig, BufferManager, Exhaustion, GrowError, Lease, RawError, RawLease, RecyclableBuffer};
use bytes::Buf;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Lease,
    Drop(u8),
    Write { lease: u8, at: u16, bytes: Vec<u8> },
    SetLen { lease: u8, len: u16 },
    Clear(u8),
    IntoRaw(u8),
    Redeem(u8),
    Release(u8),
    Forge { manager: u32, index: u32, generation: u32 },
    NewBuffer { max: u16 },
    DropBuffer(u8),
    Extend { buf: u8, bytes: Vec<u8> },
    WriteSome { buf: u8, bytes: Vec<u8> },
    Reserve { buf: u8, n: u16 },
    Read { buf: u8, n: u16 },
    Consume { buf: u8, n: u16 },
    Advance { buf: u8, n: u16 },
    ClearBuffer(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    segments: u8,
    size_log: u8,
    ops: Vec<Op>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawState {
    Outstanding,
    Spent,
}

struct Raw {
    raw: RawLease,
    state: RawState,
    /// The bytes the lease held when it became raw.
    bytes: Vec<u8>,
}

struct Model {
    segments: usize,
    leases: Vec<(Lease, Vec<u8>)>,
    raws: Vec<Raw>,
    buffers: Vec<(RecyclableBuffer, VecDeque<u8>)>,
    stale_or_double: u64,
}

impl Model {
    fn held(&self) -> usize {
        self.leases.len()
            + self.raws.iter().filter(|r| r.state == RawState::Outstanding).count()
            + self.buffers.iter().map(|(b, _)| b.segment_count()).sum::<usize>()
    }

    fn check(&self, m: &BufferManager) {
        for (lease, bytes) in &self.leases {
            assert_eq!(lease.filled(), &bytes[..], "a lease's bytes changed under it");
        }
        for (buf, bytes) in &self.buffers {
            assert_eq!(buf.len(), bytes.len());
            let mut slices = [IoSlice::new(&[]); 64];
            let n = buf.io_slices(&mut slices);
            let joined: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
            assert!(joined.iter().eq(bytes.iter()), "a recyclable buffer's bytes changed");
            assert!(buf.reserved() <= buf.max_capacity() - buf.len());
        }
        let s = m.stats();
        assert_eq!(s.in_use, self.held(), "in_use");
        assert_eq!(s.raw, self.raws.iter().filter(|r| r.state == RawState::Outstanding).count(), "raw");
        assert_eq!(s.stale_returns + s.double_returns, self.stale_or_double, "stale and double returns");
        assert!(s.in_use <= self.segments);
    }

    /// Whether `raw` is the one redemption or return that must succeed now.
    fn redeemable(&self, raw: RawLease) -> Option<usize> {
        let i = self.raws.iter().rposition(|r| r.raw.index() == raw.index())?;
        (self.raws[i].raw == raw && self.raws[i].state == RawState::Outstanding).then_some(i)
    }
}

fn pick<T>(v: &[T], i: u8) -> Option<usize> {
    (!v.is_empty()).then(|| usize::from(i) % v.len())
}

fuzz_target!(|input: Input| {
    let segments = 1 + usize::from(input.segments % 12);
    let size = 16usize << (input.size_log % 5);
    let config = BufferConfig::new().segment_size(size).segment_count(segments).exhaustion(Exhaustion::Fail);
    let manager = BufferManager::new(config).expect("arena");
    let mut m = Model { segments, leases: Vec::new(), raws: Vec::new(), buffers: Vec::new(), stale_or_double: 0 };

    for op in input.ops.into_iter().take(200) {
        match op {
            Op::Lease => {
                let free = m.held() < segments;
                match manager.lease() {
                    Ok(lease) => {
                        assert!(free, "a lease from a full arena");
                        assert_eq!(lease.capacity(), size);
                        assert!(lease.is_empty());
                        m.leases.push((lease, Vec::new()));
                    }
                    Err(e) => {
                        assert!(!free, "exhausted with {} of {segments} segments held", m.held());
                        assert_eq!(e.segments, segments);
                    }
                }
            }
            Op::Drop(i) => {
                if let Some(i) = pick(&m.leases, i) {
                    m.leases.swap_remove(i);
                }
            }
            Op::Write { lease, at, bytes } => {
                if let Some(i) = pick(&m.leases, lease) {
                    let (l, model) = &mut m.leases[i];
                    let at = usize::from(at) % (size + 1);
                    let n = bytes.len().min(size - at);
                    let end = at + n;
                    let old = l.len();
                    if end > old {
                        l.set_len(end).unwrap();
                        // Bytes between the old length and `at` are whatever the segment held.
                        model.extend_from_slice(&l.filled()[old..end]);
                    }
                    l.filled_mut()[at..end].copy_from_slice(&bytes[..n]);
                    model[at..end].copy_from_slice(&bytes[..n]);
                }
            }
            Op::SetLen { lease, len } => {
                if let Some(i) = pick(&m.leases, lease) {
                    let (l, model) = &mut m.leases[i];
                    let len = usize::from(len) % (2 * size);
                    match l.set_len(len) {
                        Ok(()) => {
                            assert!(len <= size);
                            let old = model.len();
                            model.resize(len, 0);
                            if len > old {
                                model[old..].copy_from_slice(&l.filled()[old..]);
                            }
                        }
                        Err(e) => assert!(len > size && e.len == len && e.capacity == size),
                    }
                }
            }
            Op::Clear(i) => {
                if let Some(i) = pick(&m.leases, i) {
                    m.leases[i].0.clear();
                    m.leases[i].1.clear();
                }
            }
            Op::IntoRaw(i) => {
                if let Some(i) = pick(&m.leases, i) {
                    let (lease, bytes) = m.leases.swap_remove(i);
                    let raw = lease.into_raw().expect("an arena lease becomes raw");
                    assert!((raw.index() as usize) < segments);
                    m.raws.push(Raw { raw, state: RawState::Outstanding, bytes });
                }
            }
            Op::Redeem(i) => {
                if let Some(i) = pick(&m.raws, i) {
                    let raw = m.raws[i].raw;
                    let expect = m.redeemable(raw);
                    match manager.from_raw(raw) {
                        Ok(lease) => {
                            let j = expect.expect("a raw lease redeemed twice, or stale");
                            m.raws[j].state = RawState::Spent;
                            // The segment's bytes travelled with it.
                            let kept = &m.raws[j].bytes;
                            let mut lease = lease;
                            assert_eq!(&lease.spare_mut()[..kept.len()], &kept[..], "raw handoff lost bytes");
                            m.leases.push((lease, Vec::new()));
                        }
                        Err(e) => {
                            assert!(expect.is_none(), "redeeming the current raw lease failed: {e:?}");
                            assert!(matches!(e, RawError::DoubleReturn { .. } | RawError::Stale { .. }), "{e:?}");
                            m.stale_or_double += 1;
                        }
                    }
                }
            }
            Op::Release(i) => {
                if let Some(i) = pick(&m.raws, i) {
                    let raw = m.raws[i].raw;
                    let expect = m.redeemable(raw);
                    match manager.release_raw(raw) {
                        Ok(()) => m.raws[expect.expect("a raw lease returned twice, or stale")].state = RawState::Spent,
                        Err(e) => {
                            assert!(expect.is_none(), "returning the current raw lease failed: {e:?}");
                            assert!(matches!(e, RawError::DoubleReturn { .. } | RawError::Stale { .. }), "{e:?}");
                            m.stale_or_double += 1;
                        }
                    }
                }
            }
            Op::Forge { manager: id, index, generation } => {
                // Built from a real raw lease's manager id most of the time.
                let real = m.raws.first().map(|r| r.raw.to_parts()[0]);
                let id = match (real, id % 4) {
                    (Some(real), 0..=2) => real,
                    _ => id,
                };
                let raw = RawLease::from_parts([id, index % (segments as u32 + 2), generation % 8]);
                let expect = m.redeemable(raw);
                match manager.release_raw(raw) {
                    Ok(()) => m.raws[expect.expect("a forged raw lease was accepted")].state = RawState::Spent,
                    Err(e) => {
                        assert!(expect.is_none(), "{e:?} for the current raw lease");
                        m.stale_or_double += 1;
                    }
                }
            }
            Op::NewBuffer { max } => {
                if m.buffers.len() < 4 {
                    let max = usize::from(max) % (4 * size * segments + 1);
                    m.buffers.push((RecyclableBuffer::new(&manager, max), VecDeque::new()));
                }
            }
            Op::DropBuffer(i) => {
                if let Some(i) = pick(&m.buffers, i) {
                    m.buffers.swap_remove(i);
                }
            }
            Op::Extend { buf, bytes } => {
                if let Some(i) = pick(&m.buffers, buf) {
                    let held_by_others = m.held() - m.buffers[i].0.segment_count();
                    let (b, model) = &mut m.buffers[i];
                    match b.extend_from_slice(&bytes) {
                        Ok(()) => model.extend(&bytes),
                        Err(GrowError::CapacityExceeded { requested, max }) => {
                            assert!(model.len() + bytes.len() > b.max_capacity());
                            assert_eq!((requested, max), (model.len() + bytes.len(), b.max_capacity()));
                        }
                        Err(GrowError::Exhausted(_)) => {
                            assert_eq!(held_by_others + b.segment_count(), segments, "exhausted with segments free");
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }
            Op::WriteSome { buf, bytes } => {
                if let Some(i) = pick(&m.buffers, buf) {
                    let held_by_others = m.held() - m.buffers[i].0.segment_count();
                    let (b, model) = &mut m.buffers[i];
                    let room = b.max_capacity() - model.len();
                    match b.write_some(&bytes) {
                        Ok(n) => {
                            assert!(n <= bytes.len().min(room));
                            if n < bytes.len().min(room) {
                                assert_eq!(
                                    held_by_others + b.segment_count(),
                                    segments,
                                    "short write with segments free"
                                );
                            }
                            model.extend(&bytes[..n]);
                        }
                        Err(GrowError::CapacityExceeded { .. }) => assert_eq!(room, 0),
                        Err(GrowError::Exhausted(_)) => {
                            assert_eq!(held_by_others + b.segment_count(), segments, "exhausted with segments free");
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }
            Op::Reserve { buf, n } => {
                if let Some(i) = pick(&m.buffers, buf) {
                    let (b, model) = &mut m.buffers[i];
                    let n = usize::from(n) % (2 * size * segments + 1);
                    if b.reserve(n).is_ok() {
                        assert!(model.len() + n <= b.max_capacity());
                        assert!(b.reserved() >= n, "reserved {} after reserve({n})", b.reserved());
                    }
                }
            }
            Op::Read { buf, n } => {
                if let Some(i) = pick(&m.buffers, buf) {
                    let (b, model) = &mut m.buffers[i];
                    let mut out = vec![0u8; usize::from(n) % (2 * size + 1)];
                    let got = b.read(&mut out).expect("reading a recyclable buffer");
                    assert_eq!(got, out.len().min(model.len()));
                    let expect: Vec<u8> = model.drain(..got).collect();
                    assert_eq!(&out[..got], &expect[..], "read other bytes than were written");
                }
            }
            Op::Consume { buf, n } => {
                if let Some(i) = pick(&m.buffers, buf) {
                    let (b, model) = &mut m.buffers[i];
                    let n = usize::from(n) % (2 * size + 1);
                    b.consume(n);
                    model.drain(..n.min(model.len()));
                }
            }
            Op::Advance { buf, n } => {
                if let Some(i) = pick(&m.buffers, buf) {
                    let (b, model) = &mut m.buffers[i];
                    let n = usize::from(n) % (model.len() + 1);
                    let chunk = b.chunk();
                    assert!(!chunk.is_empty() || model.is_empty());
                    assert!(chunk.iter().eq(model.iter().take(chunk.len())), "chunk is not the front");
                    b.advance(n);
                    model.drain(..n);
                }
            }
            Op::ClearBuffer(i) => {
                if let Some(i) = pick(&m.buffers, i) {
                    m.buffers[i].0.clear();
                    m.buffers[i].1.clear();
                    assert_eq!(m.buffers[i].0.segment_count(), 0);
                }
            }
        }
        m.check(&manager);
    }
    // Everything comes back.
    for r in m.raws.iter().filter(|r| r.state == RawState::Outstanding) {
        manager.release_raw(r.raw).expect("returning an outstanding raw lease");
    }
    m.leases.clear();
    m.buffers.clear();
    assert_eq!(manager.stats().in_use, 0, "segments lost");
});
