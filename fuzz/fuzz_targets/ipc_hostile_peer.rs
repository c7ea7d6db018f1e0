//! `ipc_hostile_peer`: a real channel (a memfd, mapped by the library) whose bytes
//! the fuzzer overwrites between receives through a second mapping of the same file,
//! as a peer lying about lengths, types, lap tags and positions would (issue #16,
//! target 2). An honest sender may run in between.
//!
//! Checked on every receive, against a model of the consumer's position that reads
//! the mapping as the crate docs describe it:
//! - a record returned is the one at the receiver's position (after at most one
//!   padding record), whole: its header says its length, type 1 and the lap of its
//!   position; it lies inside the ring, below a producer position that was
//!   published, and no longer than the maximum message; its bytes are the ring's;
//! - `Empty` (or `Closed`) only when the published tail is the receiver's position;
//! - `Corrupted` only after the fuzzer wrote something, and from then on always;
//! - while nothing was overwritten, the honest sender's messages arrive exactly, in
//!   order;
//! - never a panic or an access outside the mapping (the sanitizer, and the bounds
//!   above).

#![no_main]

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd};

use arbitrary::Arbitrary;
use berth_ipc::{Channel, Config, RecvError, SendError};
use libfuzzer_sys::fuzz_target;

const TAIL: usize = 128;
const HEAD: usize = 256;
const DATA: usize = 4096;
const REC_DATA: u64 = 1;
const REC_PAD: u64 = 2;

#[derive(Arbitrary, Debug)]
enum Pos {
    /// Any value at all.
    Raw(u64),
    /// The receiver's position plus this many 8-byte words.
    Ahead(u16),
    /// Just off a record boundary.
    Unaligned(u16),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The honest sender's `try_send` (if there is a sender).
    Send(Vec<u8>),
    /// `try_recv_into` a buffer of this many bytes.
    Recv(u16),
    /// `try_recv`, the bytes read in place, then released.
    RecvLent,
    /// Raw bytes anywhere in the ring.
    Bytes { at: u16, bytes: Vec<u8> },
    /// A record header word `slot` words after the receiver's position.
    Record { slot: u16, len: u32, ty: u8, zero: u8, lap: i8 },
    /// The producer position.
    Tail(Pos),
    /// The consumer position.
    Head(Pos),
    /// A 4-byte control word of the header page (pids, flags, futex words...).
    Word { at: u16, value: u32 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    cap_log: u8,
    small_max: Option<u16>,
    sender: bool,
    ops: Vec<Op>,
}

/// The fuzzer's own view of the file.
struct Peer {
    map: memmap2::MmapRaw,
    cap: u64,
}

impl Peer {
    fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.map.len());
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: in bounds (asserted above) of a live mapping; this thread is the
            // only one touching the file, and no lent record is alive during a write.
            unsafe { self.map.as_mut_ptr().add(at + i).write_volatile(*b) };
        }
    }

    fn read_u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        for (i, x) in b.iter_mut().enumerate() {
            // SAFETY: as in `write`; the offsets are fixed header offsets or inside the ring.
            *x = unsafe { self.map.as_ptr().add(at + i).read_volatile() };
        }
        u64::from_le_bytes(b)
    }

    fn ring(&self) -> Vec<u8> {
        (0..self.cap as usize)
            .map(|i| {
                // SAFETY: i < capacity: inside the data area of the mapping.
                unsafe { self.map.as_ptr().add(DATA + i).read_volatile() }
            })
            .collect()
    }
}

fn word(ring: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(ring[off..off + 8].try_into().unwrap())
}

fn record_size(len: u64) -> u64 {
    8 + len.next_multiple_of(8)
}

/// What the model knows of the receiver.
struct Model {
    cap: u64,
    max: u64,
    pos: u64,
    tails: Vec<u64>,
    poisoned: bool,
    tampered: bool,
    sent: VecDeque<Vec<u8>>,
    /// Where a receive that already walked past a padding record at `pos` went on
    /// (a `BufferTooSmall` reads the record after the padding): the receiver keeps
    /// that position, so bytes written over the consumed padding afterwards are not
    /// looked at again.
    past_pad: Option<u64>,
}

impl Model {
    fn off(&self, p: u64) -> usize {
        (p & (self.cap - 1)) as usize
    }

    fn lap(&self, p: u64) -> u16 {
        (p >> self.cap.trailing_zeros()) as u16
    }

    /// The position of the record the receiver must return next, and its header.
    fn next_record(&self, ring: &[u8]) -> (u64, u64) {
        if let Some(p) = self.past_pad {
            return (p, word(ring, self.off(p)));
        }
        let w = word(ring, self.off(self.pos));
        let p = if (w >> 32) as u8 as u64 == REC_PAD {
            self.pos + (self.cap - self.off(self.pos) as u64)
        } else {
            self.pos
        };
        (p, word(ring, self.off(p)))
    }

    fn check_header(&self, p: u64, w: u64, len: usize) {
        assert_eq!(w & 0xffff_ffff, len as u64, "returned length is not the header's");
        assert_eq!((w >> 32) as u8 as u64, REC_DATA, "returned a record that is not a message");
        assert_eq!((w >> 40) as u8, 0, "returned a record with a bad header");
        assert_eq!((w >> 48) as u16, self.lap(p), "returned a record from another lap");
        assert!(len as u64 <= self.max, "record of {len} bytes above the maximum {}", self.max);
        assert!(self.off(p) as u64 + record_size(len as u64) <= self.cap, "record crosses the end of the ring");
    }

    /// A record was returned: it must be the one at the position, whole.
    fn received(&mut self, ring: &[u8], got: &[u8]) {
        assert!(!self.poisoned, "a record after Corrupted");
        let (p, w) = self.next_record(ring);
        self.check_header(p, w, got.len());
        let end = p.wrapping_add(record_size(got.len() as u64));
        let covered = self.tails.iter().any(|&t| {
            let room = t.wrapping_sub(self.pos);
            room <= self.cap && end.wrapping_sub(self.pos) <= room
        });
        assert!(covered, "record ends at {end}, past every published tail {:?} (position {})", self.tails, self.pos);
        let at = self.off(p) + 8;
        assert_eq!(got, &ring[at..at + got.len()], "payload is not the ring's bytes");
        if !self.tampered {
            assert_eq!(Some(got), self.sent.pop_front().as_deref(), "an honest message lost or changed");
        }
        self.pos = end;
        self.past_pad = None;
    }

    fn failed(&mut self, ring: &[u8], tail_now: u64, e: RecvError) {
        match e {
            RecvError::Corrupted(_) => {
                assert!(self.tampered, "Corrupted with an honest peer");
                self.poisoned = true;
            }
            _ if self.poisoned => panic!("{e:?} after Corrupted"),
            RecvError::Empty | RecvError::Closed | RecvError::PeerDead => {
                assert_eq!(tail_now, self.pos, "{e:?} while records are published");
                if !self.tampered {
                    assert!(self.sent.is_empty(), "{e:?} with honest messages queued");
                }
            }
            RecvError::BufferTooSmall { len, buf } => {
                assert!(len > buf);
                let (p, w) = self.next_record(ring);
                self.check_header(p, w, len);
                if p != self.pos {
                    self.past_pad = Some(p);
                }
            }
            RecvError::TimedOut | RecvError::OutOfMemory { .. } => panic!("{e:?} from a non-blocking copy"),
            _ => panic!("unexpected {e:?}"),
        }
    }
}

fuzz_target!(|input: Input| {
    let cap = 64u64 << (input.cap_log % 7);
    let mut config = Config::new(cap);
    if let Some(m) = input.small_max {
        config = config.max_message(1 + u64::from(m) % (cap / 2 - 8));
    }
    let Ok(chan) = Channel::create_memfd(&config) else { return };
    let max = chan.max_message() as u64;
    let total = DATA + cap as usize;
    // The channel's memfd, sealed against shrinking, for its whole length.
    let map = memmap2::MmapOptions::new().len(total).map_raw(chan.as_fd().as_raw_fd());
    let peer = Peer { map: map.expect("map the channel file"), cap };
    let mut tx = if input.sender { Some(chan.sender().expect("attach the sender")) } else { None };
    let mut rx = chan.receiver().expect("attach the receiver");
    let mut model = Model {
        cap,
        max,
        pos: 0,
        tails: Vec::new(),
        poisoned: false,
        tampered: false,
        sent: VecDeque::new(),
        past_pad: None,
    };
    let mut buf = vec![0u8; 2 * cap as usize];

    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Send(msg) => {
                let Some(tx) = tx.as_mut() else { continue };
                match tx.try_send(&msg) {
                    Ok(()) => model.sent.push_back(msg),
                    Err(SendError::Full | SendError::TooLarge { .. }) => {}
                    Err(SendError::Corrupted(_)) => assert!(model.tampered, "sender saw corruption, honestly"),
                    Err(e) => assert!(model.tampered, "sender: {e:?}"),
                }
            }
            Op::Recv(n) => {
                let ring = peer.ring();
                let tail_now = peer.read_u64(TAIL);
                model.tails.push(tail_now);
                let n = usize::from(n) % buf.len();
                match rx.try_recv_into(&mut buf[..n]) {
                    Ok(len) => model.received(&ring, &buf[..len]),
                    Err(e) => model.failed(&ring, tail_now, e),
                }
            }
            Op::RecvLent => {
                let ring = peer.ring();
                let tail_now = peer.read_u64(TAIL);
                model.tails.push(tail_now);
                match rx.try_recv() {
                    Ok(guard) => {
                        let got = guard.to_vec();
                        drop(guard);
                        model.received(&ring, &got);
                    }
                    Err(e) => model.failed(&ring, tail_now, e),
                }
            }
            Op::Bytes { at, bytes } => {
                let at = usize::from(at) % cap as usize;
                let n = bytes.len().min(cap as usize - at);
                peer.write(DATA + at, &bytes[..n]);
                model.tampered = true;
            }
            Op::Record { slot, len, ty, zero, lap } => {
                let p = model.pos.wrapping_add(8 * u64::from(slot));
                let len = if len & 0x8000_0000 == 0 { u64::from(len) % (2 * cap) } else { u64::from(len) };
                let ty = match ty % 4 {
                    0 | 1 => REC_DATA,
                    2 => REC_PAD,
                    _ => u64::from(ty),
                };
                let tag = model.lap(p).wrapping_add_signed(i16::from(lap % 2));
                let w = (len & 0xffff_ffff) | (ty << 32) | (u64::from(zero % 2) << 40) | (u64::from(tag) << 48);
                peer.write(DATA + model.off(p), &w.to_le_bytes());
                model.tampered = true;
            }
            Op::Tail(pos) => {
                let v = position(&model, &peer, pos);
                peer.write(TAIL, &v.to_le_bytes());
                model.tampered = true;
            }
            Op::Head(pos) => {
                let v = position(&model, &peer, pos);
                peer.write(HEAD, &v.to_le_bytes());
                model.tampered = true;
            }
            Op::Word { at, value } => {
                // The control lines (tail, head, identities, futex words), not the
                // immutable fields before them, which the ends read only when opening.
                let at = 128 + (usize::from(at) % (DATA - 128)) / 4 * 4;
                peer.write(at, &value.to_le_bytes());
                model.tampered = true;
            }
        }
    }
});

fn position(model: &Model, peer: &Peer, pos: Pos) -> u64 {
    match pos {
        Pos::Raw(v) => v,
        Pos::Ahead(n) => model.pos.wrapping_add(8 * (u64::from(n) % (2 * model.cap / 8 + 2))),
        Pos::Unaligned(n) => peer.read_u64(TAIL).wrapping_add(u64::from(n % 8)),
    }
}
