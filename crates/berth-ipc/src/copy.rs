//! Copying messages into and out of the ring: [`copy_bytes`] for `send`, and
//! [`volatile_copy`] for the receiver's copy-out calls.
//!
//! # Into the ring
//!
//! From a few KiB up, glibc's `memcpy` copies with `rep movsb`. That instruction
//! slows down more than tenfold when the destination lies 1 to 31 bytes past the
//! source modulo 4 KiB. It does so on the AMD EPYC (Zen 3) this crate is measured
//! on: 15-25 Gbit/s instead of 300-400 for 64 KiB. Each load then appears to
//! depend on a store just issued at the same page offset ("4K aliasing").
//!
//! Ring payloads start 8 bytes after a record header, and their page offsets
//! advance with every record. A page-aligned source buffer therefore meets this
//! distance for a few records of every lap, and each of those copies costs as
//! much as fifteen ordinary ones. Copying backwards, in 64-byte blocks, turns
//! the false dependencies around: a load can then only match a store that has
//! not been issued yet.

/// Page size that the CPU compares addresses within.
const PAGE: usize = 4096;

/// Destination-past-source distances (modulo [`PAGE`]) at which `rep movsb` is slow.
const SLOW_SKEW: std::ops::Range<usize> = 1..32;

/// Below this length `memcpy` does not use `rep movsb`, and its vector loop is
/// faster than ours whatever the distance (glibc's threshold is 2-4 KiB depending
/// on the vector width).
const SLOW_MIN_LEN: usize = 2048;

/// Copies `src` into `dst`, which must have the same length (as
/// `<[u8]>::copy_from_slice`, which panics otherwise).
#[inline]
pub(crate) fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    if src.len() >= SLOW_MIN_LEN && SLOW_SKEW.contains(&skew(dst, src)) {
        copy_backwards(dst, src);
    } else {
        dst.copy_from_slice(src);
    }
}

/// How far `dst` lies past `src`, modulo [`PAGE`].
fn skew(dst: &[u8], src: &[u8]) -> usize {
    dst.as_ptr().addr().wrapping_sub(src.as_ptr().addr()) % PAGE
}

/// Copies 64-byte blocks from the end down, then the odd bytes at the front. Out
/// of line: it serves a few large records per lap and would only bloat `send`.
#[inline(never)]
fn copy_backwards(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_bytes: lengths differ");
    let (dst_head, dst_blocks) = dst.as_rchunks_mut::<64>();
    let (src_head, src_blocks) = src.as_rchunks::<64>();
    for (d, s) in dst_blocks.iter_mut().zip(src_blocks).rev() {
        *d = *s;
    }
    dst_head.copy_from_slice(src_head);
}

/// Copies `dst.len()` bytes from shared memory at `src` into private memory with
/// volatile loads, which tolerate a peer writing concurrently: the copy may hold torn
/// or changing bytes, never more than that. On x86_64, 16 bytes per load (SSE) once
/// `src` is 16-aligned, as fast as `memcpy` (about 400 Gbit/s for 64 KiB on the test
/// machine, against 230 with 8-byte loads); elsewhere, or for the rest, 8 bytes per
/// load while `src` is 8-aligned (payloads always are), then single bytes.
///
/// # Safety
/// `src .. src + dst.len()` must lie inside a live mapping.
pub(crate) unsafe fn volatile_copy(src: *const u8, dst: &mut [u8]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__m128i;
        // One 8-byte word first if that brings `src` to a 16-byte boundary.
        if src.addr() % 16 == 8 && dst.len() >= 8 {
            // SAFETY: 8 <= dst.len(), inside the caller's range; `src` is 8-aligned.
            let w = unsafe { src.cast::<u64>().read_volatile() };
            dst[..8].copy_from_slice(&w.to_ne_bytes());
            done = 8;
        }
        if src.addr().wrapping_add(done).is_multiple_of(16) {
            for chunk in dst[done..].chunks_exact_mut(16) {
                // SAFETY: `done + 16 <= dst.len()`, inside the caller's range; 16-aligned
                // since `src + done` was and `done` grows by 16.
                let v = unsafe { src.add(done).cast::<__m128i>().read_volatile() };
                // SAFETY: `__m128i` is 16 plain bytes; every bit pattern is a valid array.
                let bytes: [u8; 16] = unsafe { std::mem::transmute(v) };
                chunk.copy_from_slice(&bytes);
                done += 16;
            }
        }
    }
    if src.addr().wrapping_add(done).is_multiple_of(8) {
        for chunk in dst[done..].chunks_exact_mut(8) {
            // SAFETY: `done + 8 <= dst.len()`, so inside the caller's range; aligned
            // since `src + done` was and `done` grows by 8.
            let w = unsafe { src.add(done).cast::<u64>().read_volatile() };
            chunk.copy_from_slice(&w.to_ne_bytes());
            done += 8;
        }
    }
    for (i, d) in dst[done..].iter_mut().enumerate() {
        // SAFETY: `done + i < dst.len()`, inside the caller's range.
        *d = unsafe { src.add(done + i).read_volatile() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every skew around the slow window, lengths around the threshold and with odd
    /// tails: the bytes arrive intact whichever way they were copied.
    #[test]
    fn copies_exactly_at_every_skew_and_length() {
        let src_buf: Vec<u8> = (0..3 * PAGE).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut dst_buf = vec![0u8; 5 * PAGE];
        let src_at = src_buf.as_ptr().align_offset(PAGE);
        let dst_base = dst_buf.as_ptr().align_offset(PAGE) + PAGE;
        let skews = [0, 1, 7, 8, 31, 32, 33, 63, 64, PAGE - 1];
        let lens = [0, 1, 63, 64, 65, SLOW_MIN_LEN - 1, SLOW_MIN_LEN, SLOW_MIN_LEN + 37, PAGE + 1];
        for skew in skews {
            for len in lens {
                let src = &src_buf[src_at..src_at + len];
                let at = dst_base + skew;
                // The copy and a margin of 64 bytes on each side.
                let window = at - 64..at + len + 64;
                dst_buf[window.clone()].fill(0xee);
                copy_bytes(&mut dst_buf[at..at + len], src);
                assert_eq!(&dst_buf[at..at + len], src, "skew {skew}, len {len}");
                let (before, after) = (&dst_buf[window.start..at], &dst_buf[at + len..window.end]);
                assert!(before.iter().chain(after).all(|&b| b == 0xee), "wrote outside, skew {skew}, len {len}");
            }
        }
    }

    /// Every source alignment (the wide loads need 16, then 8), lengths with every
    /// kind of tail: the copy is exact and stays within `dst`.
    #[test]
    fn volatile_copy_is_exact_at_every_alignment_and_length() {
        let src_buf: Vec<u8> = (0..512).map(|i| (i * 13 + 5) as u8).collect();
        let base = src_buf.as_ptr().align_offset(16);
        for misalign in 0..16 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 100, 255] {
                let src = &src_buf[base + misalign..base + misalign + len];
                let mut dst = vec![0xeeu8; len + 2];
                // SAFETY: `src` is a live slice of exactly `len` bytes.
                unsafe { volatile_copy(src.as_ptr(), &mut dst[1..=len]) };
                assert_eq!(&dst[1..=len], src, "misalign {misalign}, len {len}");
                assert_eq!((dst[0], dst[len + 1]), (0xee, 0xee), "misalign {misalign}, len {len}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn different_lengths_panic_like_copy_from_slice() {
        let src = vec![1u8; SLOW_MIN_LEN + 8];
        let mut dst = vec![0u8; SLOW_MIN_LEN + 16];
        copy_backwards(&mut dst, &src);
    }
}
