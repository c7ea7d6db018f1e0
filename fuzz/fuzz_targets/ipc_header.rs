//! `ipc_header`: arbitrary bytes as a channel header (issue #16, target 1).
//!
//! Input: 8 bytes of file length (little-endian), then the header bytes. Checks
//! that the parser never panics, that it accepts exactly the headers a
//! straightforward reading of the layout table (berth-ipc's crate docs) accepts,
//! and that an accepted header yields offsets and lengths inside the file.

#![no_main]

use berth_ipc::fuzzing::{HEADER_SNAPSHOT, parse_header};
use berth_ipc::{HEADER_LEN, MAGIC, VERSION_MAJOR};
use libfuzzer_sys::fuzz_target;

fn u16_at(h: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([h[at], h[at + 1]])
}

fn u32_at(h: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(h[at..at + 4].try_into().unwrap())
}

fn u64_at(h: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(h[at..at + 8].try_into().unwrap())
}

/// The table, read literally: whether a file of `file_len` bytes starting with `h`
/// is a channel this build may map.
fn model_accepts(h: &[u8], file_len: u64) -> bool {
    if h.len() < HEADER_SNAPSHOT || file_len < HEADER_LEN {
        return false;
    }
    let capacity = u64_at(h, 24);
    let max_message = u64_at(h, 32);
    let data_offset = u64_at(h, 40);
    let total_len = u64_at(h, 48);
    let capacity_ok = capacity.is_power_of_two() && (64..=1 << 40).contains(&capacity);
    // 1 ..= min(C/2 - 8, 2^32 - 9)
    let max_ok = capacity_ok && max_message >= 1 && max_message <= (capacity / 2 - 8).min((1 << 32) - 9);
    h[..8] == MAGIC
        && u16_at(h, 8) == VERSION_MAJOR
        // ABI flags: bit 0 this build's endianness, bit 1 (wake descriptors, layout
        // 2.1), bit 2 (fenced publications, layout 2.2) and bit 3 (position
        // liveness, layout 2.3) optional, any other bit refused.
        && u32_at(h, 12) & !(2 | 4 | 8) == u32::from(cfg!(target_endian = "little"))
        && u64::from(u32_at(h, 16)) == HEADER_LEN
        && u32_at(h, 20) == 8
        && max_ok
        && data_offset >= HEADER_LEN
        && data_offset.is_multiple_of(HEADER_LEN)
        && u128::from(data_offset) + u128::from(capacity) == u128::from(total_len)
        && usize::try_from(total_len).is_ok()
        && total_len <= file_len
        && u32_at(h, 60) == 1
}

fuzz_target!(|data: &[u8]| {
    let Some((len, header)) = data.split_first_chunk::<8>() else { return };
    let file_len = u64::from_le_bytes(*len);
    let parsed = parse_header(header, file_len);
    let expected = model_accepts(header, file_len);
    assert_eq!(parsed.is_ok(), expected, "parse said {parsed:?}, the layout table says accept={expected}");
    if let Ok(g) = parsed {
        // What the channel maps and indexes must lie inside the file.
        assert!(g.capacity.is_power_of_two());
        assert!(g.data_offset >= HEADER_LEN);
        assert_eq!(g.data_offset.checked_add(g.capacity), Some(g.total_len));
        assert!(g.total_len <= file_len);
        assert!(g.max_message >= 1 && g.max_message + 8 <= g.capacity / 2);
        // The values are the header's, not defaults.
        assert_eq!(
            (g.capacity, g.max_message, g.data_offset),
            (u64_at(header, 24), u64_at(header, 32), u64_at(header, 40))
        );
    }
});
