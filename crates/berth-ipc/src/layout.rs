//! The header page: field offsets, creation-time values and the validation of an
//! untrusted header. Pure code over bytes; see the crate docs for the table.

use crate::error::OpenError;

/// `BERTHIPC`, the first eight bytes of every channel file.
pub const MAGIC: [u8; 8] = *b"BERTHIPC";
/// Layout major version: a reader rejects any other major.
pub const VERSION_MAJOR: u16 = 2;
/// Layout minor version: additions a reader of the same major may ignore.
pub const VERSION_MINOR: u16 = 3;
/// ABI flag: the file's integers are little-endian.
pub(crate) const ABI_LITTLE_ENDIAN: u32 = 1;
/// ABI flag (minor 1): the channel has wake descriptors, and a waiter flag may hold
/// [`WAIT_FD`]. A reader that does not know the bit refuses the file, which is what
/// must happen: it would not signal a peer asleep in `epoll`.
pub(crate) const ABI_WAKE_FDS: u32 = 2;
/// ABI flag (minor 2): every end of the channel follows each publication (of `tail`
/// or `head`) with a full `SeqCst` fence before it loads the peer's waiter flag, so
/// a sleeper needs only its own fence, no `membarrier`. A reader that does not know
/// the bit refuses the file, which is what must happen: it would publish without
/// the fence and rely on the sleeper's membarrier.
pub(crate) const ABI_FENCED: u32 = 4;
/// ABI flag (minor 3): an end judges a hung peer (if it does at all) by the later
/// of the peer's heartbeat and its own first look at the peer's current ring
/// position, never by the heartbeat alone. So an end may sleep with no timer, its
/// heartbeat growing old while it sleeps. A reader that does not know the bit
/// refuses the file, which is what must happen: it would take such a sleeper for
/// hung. Every channel this build creates has it.
pub(crate) const ABI_POSITION_LIVENESS: u32 = 8;
/// The ABI flags this build writes and requires.
pub(crate) const ABI_FLAGS: u32 = if cfg!(target_endian = "little") { ABI_LITTLE_ENDIAN } else { 0 };
/// Optional ABI flags this build understands.
pub(crate) const ABI_OPTIONAL: u32 = ABI_WAKE_FDS | ABI_FENCED | ABI_POSITION_LIVENESS;

/// Waiter flag value: this end sleeps (or is about to) on the futex word itself.
pub(crate) const WAIT_FUTEX: u32 = 1;
/// Waiter flag value: this end sleeps (or is about to) in `epoll`/`poll` on its wake
/// descriptor; the waker writes that descriptor instead of calling `futex_wake`.
pub(crate) const WAIT_FD: u32 = 2;
/// Size of the header page; the ring's data starts at this offset.
pub const HEADER_LEN: u64 = 4096;
/// Records start at multiples of this and their headers are this long.
pub(crate) const RECORD_ALIGN: u64 = 8;
/// Smallest ring capacity.
pub(crate) const MIN_CAPACITY: u64 = 64;
/// Largest ring capacity (1 TiB).
pub(crate) const MAX_CAPACITY: u64 = 1 << 40;

/// `state` once (before that it is 0, as in a fresh file) the header is complete (stored last, with release ordering).
pub(crate) const STATE_READY: u32 = 1;

/// Record type of a message.
pub(crate) const REC_DATA: u32 = 1;
/// Record type of the padding that fills the ring's tail end before a wrap.
pub(crate) const REC_PAD: u32 = 2;

/// `*_flags` bit: this end closed its handle cleanly.
pub(crate) const FLAG_CLOSED: u32 = 1;

/// Byte offsets of the header fields (all naturally aligned, native = little-endian).
pub(crate) mod off {
    pub(crate) const MAGIC: usize = 0;
    pub(crate) const MAJOR: usize = 8;
    pub(crate) const MINOR: usize = 10;
    pub(crate) const ABI: usize = 12;
    pub(crate) const HEADER_LEN: usize = 16;
    pub(crate) const RECORD_ALIGN: usize = 20;
    pub(crate) const CAPACITY: usize = 24;
    pub(crate) const MAX_MESSAGE: usize = 32;
    pub(crate) const DATA_OFFSET: usize = 40;
    pub(crate) const TOTAL_LEN: usize = 48;
    pub(crate) const CREATOR_PID: usize = 56;
    pub(crate) const STATE: usize = 60;
    pub(crate) const CREATOR_START: usize = 64;
    /// Producer cache line: `tail`, then the sender's identity.
    pub(crate) const TAIL: usize = 128;
    pub(crate) const TX_PID: usize = 136;
    pub(crate) const TX_FLAGS: usize = 140;
    pub(crate) const TX_START: usize = 144;
    pub(crate) const TX_HEARTBEAT: usize = 152;
    /// Consumer cache line: `head`, then the receiver's identity.
    pub(crate) const HEAD: usize = 256;
    pub(crate) const RX_PID: usize = 264;
    pub(crate) const RX_FLAGS: usize = 268;
    pub(crate) const RX_START: usize = 272;
    pub(crate) const RX_HEARTBEAT: usize = 280;
    /// Futex word the receiver sleeps on (1 = a receiver is, or is about to be, asleep).
    pub(crate) const RX_WAIT: usize = 384;
    /// Futex word the sender sleeps on (1 = a sender waits for room).
    pub(crate) const TX_WAIT: usize = 512;
    /// Bytes a header snapshot must hold to be parsed.
    pub(crate) const SNAPSHOT: usize = 72;
}

/// The validated geometry of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) capacity: u64,
    pub(crate) max_message: u64,
    pub(crate) data_offset: u64,
    pub(crate) total_len: u64,
    pub(crate) creator_pid: u32,
    pub(crate) creator_start: u64,
    /// ABI flag [`ABI_WAKE_FDS`]: the ends wake each other through descriptors too.
    pub(crate) wake_fds: bool,
    /// ABI flag [`ABI_FENCED`]: publications fence, sleepers need no membarrier.
    pub(crate) fenced: bool,
    /// ABI flag [`ABI_POSITION_LIVENESS`]: both ends judge liveness by position too,
    /// so a sleep may have no timer.
    pub(crate) position_liveness: bool,
}

/// The largest message a ring of `capacity` bytes can always fit: any record of at
/// most half the ring fits either before the wrap or, after padding, at offset 0.
pub(crate) fn max_message_for(capacity: u64) -> u64 {
    (capacity / 2 - RECORD_ALIGN).min(u64::from(u32::MAX) - RECORD_ALIGN)
}

/// Checks a capacity / max-message pair, for creation and for opening.
pub(crate) fn check_geometry(capacity: u64, max_message: u64) -> Result<(), OpenError> {
    if !capacity.is_power_of_two() {
        return Err(OpenError::CapacityNotPowerOfTwo { capacity });
    }
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        return Err(OpenError::CapacityOutOfRange { capacity, min: MIN_CAPACITY, max: MAX_CAPACITY });
    }
    if max_message == 0 || max_message > max_message_for(capacity) {
        return Err(OpenError::LayoutOutOfBounds { what: "max_message" });
    }
    Ok(())
}

impl Layout {
    /// The geometry of a new channel.
    pub(crate) fn new(
        capacity: u64,
        max_message: u64,
        creator_pid: u32,
        creator_start: u64,
    ) -> Result<Layout, OpenError> {
        check_geometry(capacity, max_message)?;
        Ok(Layout {
            capacity,
            max_message,
            data_offset: HEADER_LEN,
            total_len: HEADER_LEN + capacity,
            creator_pid,
            creator_start,
            wake_fds: false,
            fenced: false,
            position_liveness: true,
        })
    }

    /// The immutable header fields (everything before `state`, plus the creator's
    /// start time) as bytes; the creator writes them before publishing `state`.
    pub(crate) fn encode(&self) -> [u8; off::SNAPSHOT] {
        let mut h = [0u8; off::SNAPSHOT];
        h[off::MAGIC..off::MAGIC + 8].copy_from_slice(&MAGIC);
        put(&mut h, off::MAJOR, &VERSION_MAJOR.to_le_bytes());
        put(&mut h, off::MINOR, &VERSION_MINOR.to_le_bytes());
        let abi = ABI_FLAGS
            | if self.wake_fds { ABI_WAKE_FDS } else { 0 }
            | if self.fenced { ABI_FENCED } else { 0 }
            | if self.position_liveness { ABI_POSITION_LIVENESS } else { 0 };
        put(&mut h, off::ABI, &abi.to_le_bytes());
        put(&mut h, off::HEADER_LEN, &(HEADER_LEN as u32).to_le_bytes());
        put(&mut h, off::RECORD_ALIGN, &(RECORD_ALIGN as u32).to_le_bytes());
        put(&mut h, off::CAPACITY, &self.capacity.to_le_bytes());
        put(&mut h, off::MAX_MESSAGE, &self.max_message.to_le_bytes());
        put(&mut h, off::DATA_OFFSET, &self.data_offset.to_le_bytes());
        put(&mut h, off::TOTAL_LEN, &self.total_len.to_le_bytes());
        put(&mut h, off::CREATOR_PID, &self.creator_pid.to_le_bytes());
        // `state` stays 0 here; it is published separately, last.
        put(&mut h, off::CREATOR_START, &self.creator_start.to_le_bytes());
        h
    }

    /// Validates an untrusted header snapshot of a file of `file_len` bytes.
    ///
    /// `h` is a private copy, so nothing can change under the checks. Every field
    /// that later drives a memory access is checked here; the ring positions are
    /// checked on every use instead, since the peer keeps writing them.
    pub(crate) fn parse(h: &[u8], file_len: u64) -> Result<Layout, OpenError> {
        if file_len < HEADER_LEN || h.len() < off::SNAPSHOT {
            return Err(OpenError::TooShort { len: file_len, need: HEADER_LEN });
        }
        if h[off::MAGIC..off::MAGIC + 8] != MAGIC {
            return Err(OpenError::BadMagic);
        }
        let major = u16::from_le_bytes(get(h, off::MAJOR));
        let minor = u16::from_le_bytes(get(h, off::MINOR));
        if major != VERSION_MAJOR {
            return Err(OpenError::VersionMismatch {
                found_major: major,
                found_minor: minor,
                supported_major: VERSION_MAJOR,
            });
        }
        let abi = u32::from_le_bytes(get(h, off::ABI));
        if abi & !ABI_OPTIONAL != ABI_FLAGS {
            return Err(OpenError::AbiMismatch { found: abi, expected: ABI_FLAGS });
        }
        if u64::from(u32::from_le_bytes(get(h, off::HEADER_LEN))) != HEADER_LEN {
            return Err(OpenError::LayoutOutOfBounds { what: "header_len" });
        }
        if u64::from(u32::from_le_bytes(get(h, off::RECORD_ALIGN))) != RECORD_ALIGN {
            return Err(OpenError::LayoutOutOfBounds { what: "record_align" });
        }
        let capacity = u64::from_le_bytes(get(h, off::CAPACITY));
        let max_message = u64::from_le_bytes(get(h, off::MAX_MESSAGE));
        check_geometry(capacity, max_message)?;
        let data_offset = u64::from_le_bytes(get(h, off::DATA_OFFSET));
        if data_offset < HEADER_LEN || data_offset % HEADER_LEN != 0 {
            return Err(OpenError::LayoutOutOfBounds { what: "data_offset" });
        }
        let total_len = u64::from_le_bytes(get(h, off::TOTAL_LEN));
        match data_offset.checked_add(capacity) {
            Some(end) if end == total_len => {}
            _ => return Err(OpenError::LayoutOutOfBounds { what: "total_len" }),
        }
        if usize::try_from(total_len).is_err() {
            return Err(OpenError::LayoutOutOfBounds { what: "total_len" });
        }
        if file_len < total_len {
            return Err(OpenError::TooShort { len: file_len, need: total_len });
        }
        if u32::from_le_bytes(get(h, off::STATE)) != STATE_READY {
            return Err(OpenError::NotReady);
        }
        Ok(Layout {
            capacity,
            max_message,
            data_offset,
            total_len,
            creator_pid: u32::from_le_bytes(get(h, off::CREATOR_PID)),
            creator_start: u64::from_le_bytes(get(h, off::CREATOR_START)),
            wake_fds: abi & ABI_WAKE_FDS != 0,
            fenced: abi & ABI_FENCED != 0,
            position_liveness: abi & ABI_POSITION_LIVENESS != 0,
        })
    }
}

fn put(h: &mut [u8], at: usize, bytes: &[u8]) {
    h[at..at + bytes.len()].copy_from_slice(bytes);
}

fn get<const N: usize>(h: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&h[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn good() -> (Vec<u8>, u64) {
        let l = Layout::new(4096, 1024, 42, 7).unwrap();
        let mut h = l.encode().to_vec();
        h[off::STATE..off::STATE + 4].copy_from_slice(&STATE_READY.to_le_bytes());
        (h, l.total_len)
    }

    fn with(at: usize, bytes: &[u8]) -> Vec<u8> {
        let (mut h, _) = good();
        h[at..at + bytes.len()].copy_from_slice(bytes);
        h
    }

    #[test]
    fn a_good_header_round_trips() {
        let (h, len) = good();
        let l = Layout::parse(&h, len).unwrap();
        assert_eq!((l.capacity, l.max_message, l.creator_pid, l.creator_start), (4096, 1024, 42, 7));
    }

    #[test]
    fn each_bad_field_is_its_own_error() {
        let (_, len) = good();
        assert!(matches!(Layout::parse(&good().0, 100), Err(OpenError::TooShort { .. })));
        assert!(matches!(Layout::parse(&good().0, len - 1), Err(OpenError::TooShort { .. })));
        assert!(matches!(Layout::parse(&with(0, b"NOTBERTH"), len), Err(OpenError::BadMagic)));
        assert!(matches!(
            Layout::parse(&with(off::MAJOR, &1u16.to_le_bytes()), len),
            Err(OpenError::VersionMismatch { found_major: 1, .. })
        ));
        // A newer minor of the same major is accepted.
        assert!(Layout::parse(&with(off::MINOR, &9u16.to_le_bytes()), len).is_ok());
        // The wake-descriptor, fenced and liveness bits are understood; an unknown
        // optional bit is not.
        let wake = Layout::parse(&with(off::ABI, &(ABI_FLAGS | ABI_WAKE_FDS).to_le_bytes()), len).unwrap();
        let fenced = Layout::parse(&with(off::ABI, &(ABI_FLAGS | ABI_FENCED).to_le_bytes()), len).unwrap();
        assert!(fenced.fenced && !fenced.wake_fds && !wake.fenced);
        assert!(wake.wake_fds);
        assert!(!Layout::parse(&good().0, len).unwrap().wake_fds);
        let old = Layout::parse(&with(off::ABI, &ABI_FLAGS.to_le_bytes()), len).unwrap();
        assert!(Layout::parse(&good().0, len).unwrap().position_liveness && !old.position_liveness);
        assert!(matches!(
            Layout::parse(&with(off::ABI, &(ABI_FLAGS | 16).to_le_bytes()), len),
            Err(OpenError::AbiMismatch { .. })
        ));
        assert!(matches!(
            Layout::parse(&with(off::ABI, &0x80u32.to_le_bytes()), len),
            Err(OpenError::AbiMismatch { .. })
        ));
        assert!(matches!(
            Layout::parse(&with(off::CAPACITY, &3000u64.to_le_bytes()), len),
            Err(OpenError::CapacityNotPowerOfTwo { capacity: 3000 })
        ));
        assert!(matches!(
            Layout::parse(&with(off::CAPACITY, &(1u64 << 62).to_le_bytes()), len),
            Err(OpenError::CapacityOutOfRange { .. })
        ));
        assert!(matches!(
            Layout::parse(&with(off::MAX_MESSAGE, &4096u64.to_le_bytes()), len),
            Err(OpenError::LayoutOutOfBounds { what: "max_message" })
        ));
        assert!(matches!(
            Layout::parse(&with(off::DATA_OFFSET, &(u64::MAX - 4095).to_le_bytes()), len),
            Err(OpenError::LayoutOutOfBounds { .. })
        ));
        assert!(matches!(
            Layout::parse(&with(off::TOTAL_LEN, &(1u64 << 50).to_le_bytes()), len),
            Err(OpenError::LayoutOutOfBounds { what: "total_len" })
        ));
        assert!(matches!(Layout::parse(&with(off::STATE, &0u32.to_le_bytes()), len), Err(OpenError::NotReady)));
    }

    /// A header field: the good value, a power of two, one near a power of two, or
    /// anything — so generated headers get past the magic and reach every check.
    fn field(good: u64) -> impl Strategy<Value = u64> {
        prop_oneof![
            6 => Just(good),
            2 => (0u32..64).prop_map(|s| 1u64 << s),
            2 => (0u32..64, -9i64..=9).prop_map(|(s, d)| (1u64 << s).wrapping_add_signed(d)),
            1 => any::<u64>(),
        ]
    }

    /// Header bytes as an attacker would write them: mostly well-formed fixed fields
    /// and hostile geometry, sometimes a byte flipped anywhere, sometimes pure noise,
    /// sometimes cut short.
    fn hostile_header() -> impl Strategy<Value = (Vec<u8>, u64)> {
        // total_len and the file's length are mostly derived from the fields before
        // them (as an honest creator would), so a lie in one field is not masked by
        // an unrelated mismatch elsewhere.
        let geometry = (
            field(4096),
            field(1024),
            field(HEADER_LEN),
            proptest::option::weighted(0.3, field(HEADER_LEN + 4096)),
            proptest::option::weighted(0.3, field(HEADER_LEN + 4096)),
            -2i64..=2,
        );
        let shaped = (geometry, proptest::option::weighted(0.2, (0..off::SNAPSHOT, any::<u8>()))).prop_map(
            |((capacity, max_message, data_offset, total_len, file_len, slack), flip)| {
                let total_len = total_len.unwrap_or(data_offset.wrapping_add(capacity));
                let file_len = file_len.unwrap_or(total_len.wrapping_add_signed(slack));
                let (mut h, _) = good();
                put(&mut h, off::CAPACITY, &capacity.to_le_bytes());
                put(&mut h, off::MAX_MESSAGE, &max_message.to_le_bytes());
                put(&mut h, off::DATA_OFFSET, &data_offset.to_le_bytes());
                put(&mut h, off::TOTAL_LEN, &total_len.to_le_bytes());
                if let Some((at, byte)) = flip {
                    h[at] = byte;
                }
                (h, file_len)
            },
        );
        let noise = (proptest::collection::vec(any::<u8>(), 0..200), any::<u64>());
        prop_oneof![8 => shaped, 1 => noise, 1 => (shaped_short(), any::<u64>())]
    }

    fn shaped_short() -> impl Strategy<Value = Vec<u8>> {
        (0..off::SNAPSHOT).prop_map(|n| good().0[..n].to_vec())
    }

    /// Random and hostile header bytes never panic, and whatever parses describes a
    /// layout that fits inside the file. The run must also see headers accepted and
    /// headers refused past the magic, so the in-bounds assertions are exercised
    /// (random bytes alone never get past the magic).
    ///
    /// Proven by mutation: `parse` without its `file_len < total_len` check fails it
    /// (an accepted layout ends past the file), and so does `check_geometry`
    /// without the power-of-two check.
    #[test]
    fn random_headers_never_panic() {
        use proptest::test_runner::{Config, TestRunner};
        use std::cell::Cell;
        let (accepted, deep_refusals) = (Cell::new(0u32), Cell::new(0u32));
        let mut runner = TestRunner::new(Config { cases: 4096, failure_persistence: None, ..Config::default() });
        runner
            .run(&hostile_header(), |(bytes, file_len)| {
                match Layout::parse(&bytes, file_len) {
                    Ok(l) => {
                        accepted.set(accepted.get() + 1);
                        prop_assert!(l.capacity.is_power_of_two());
                        prop_assert!((MIN_CAPACITY..=MAX_CAPACITY).contains(&l.capacity));
                        prop_assert!(l.data_offset >= HEADER_LEN);
                        prop_assert!(l.data_offset.checked_add(l.capacity) == Some(l.total_len));
                        prop_assert!(
                            l.total_len <= file_len,
                            "layout ends at {} past a {file_len}-byte file",
                            l.total_len
                        );
                        prop_assert!(l.max_message > 0 && l.max_message <= l.capacity / 2);
                    }
                    Err(OpenError::TooShort { .. } | OpenError::BadMagic) => {}
                    Err(_) => deep_refusals.set(deep_refusals.get() + 1),
                }
                Ok(())
            })
            .unwrap();
        assert!(accepted.get() > 20, "only {} of 4096 headers parsed: the asserts hardly ran", accepted.get());
        assert!(deep_refusals.get() > 100, "only {} headers were refused past the magic", deep_refusals.get());
    }

    proptest! {
        /// Mutating any single field of a good header either still parses to a layout
        /// that fits, or fails with a typed error.
        #[test]
        fn mutated_good_headers_stay_in_bounds(at in 0usize..off::SNAPSHOT, byte in any::<u8>(), file_len in 4096u64..16384) {
            let (mut h, _) = good();
            h[at] = byte;
            if let Ok(l) = Layout::parse(&h, file_len) {
                prop_assert!(l.data_offset + l.capacity <= file_len);
            }
        }
    }
}
