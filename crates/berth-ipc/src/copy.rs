//! Copying a message into the ring without tripping the CPU's slow path for
//! nearby page offsets.
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
    if src.len() >= SLOW_MIN_LEN && SLOW_SKEW.contains(&(dst.as_ptr().addr().wrapping_sub(src.as_ptr().addr()) % PAGE))
    {
        copy_backwards(dst, src);
    } else {
        dst.copy_from_slice(src);
    }
}

/// Copies 64-byte blocks from the end down, then the odd bytes at the front.
#[cold]
fn copy_backwards(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_bytes: lengths differ");
    let (dst_head, dst_blocks) = dst.as_rchunks_mut::<64>();
    let (src_head, src_blocks) = src.as_rchunks::<64>();
    for (d, s) in dst_blocks.iter_mut().zip(src_blocks).rev() {
        *d = *s;
    }
    dst_head.copy_from_slice(src_head);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every skew around the slow window, lengths around the threshold and with odd
    /// tails: the bytes arrive intact whichever way they were copied.
    #[test]
    fn copies_exactly_at_every_skew_and_length() {
        let src_buf: Vec<u8> = (0..3 * PAGE).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut dst_buf = vec![0u8; 4 * PAGE];
        let src_at = src_buf.as_ptr().align_offset(PAGE);
        let dst_base = dst_buf.as_ptr().align_offset(PAGE);
        let skews = [0, 1, 7, 8, 31, 32, 33, 63, 64, PAGE - 1];
        let lens = [0, 1, 63, 64, 65, SLOW_MIN_LEN - 1, SLOW_MIN_LEN, SLOW_MIN_LEN + 37, PAGE + 1];
        for skew in skews {
            for len in lens {
                let src = &src_buf[src_at..src_at + len];
                dst_buf.fill(0xee);
                let at = dst_base + skew;
                copy_bytes(&mut dst_buf[at..at + len], src);
                assert_eq!(&dst_buf[at..at + len], src, "skew {skew}, len {len}");
                assert!(dst_buf[..at].iter().all(|&b| b == 0xee), "wrote before, skew {skew}, len {len}");
                assert!(dst_buf[at + len..].iter().all(|&b| b == 0xee), "wrote after, skew {skew}, len {len}");
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
