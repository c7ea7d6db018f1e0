//! What the load generators (`berth_load`, `udp_load`) share: the latency
//! histogram, argument parsing and the window marks `echo_bench` and `udp_bench`
//! read.

use std::io::{self, Write};
use std::time::Duration;

/// A latency histogram with fixed logarithmic buckets over the whole `u64` range of
/// nanoseconds: 16 linear sub-buckets per power of two, so any recorded value is
/// reported within 1/32 of itself (the bucket midpoint). Recording never allocates.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Values below `SUB` get one bucket each; every power of two from `SUB` up to 2^63
/// gets `SUB` buckets.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram (its buckets allocated once, here).
    pub fn new() -> Histogram {
        Histogram { counts: vec![0; BUCKETS], total: 0 }
    }

    /// Forgets every value (after a warm-up).
    pub fn clear(&mut self) {
        self.counts.fill(0);
        self.total = 0;
    }

    fn index(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros(); // >= SUB_BITS
        let sub = (v >> (exp - SUB_BITS)) as usize & (SUB - 1);
        (exp - SUB_BITS + 1) as usize * SUB + sub
    }

    /// The smallest value in bucket `i` and the bucket's width.
    fn bounds(i: usize) -> (u64, u64) {
        if i < SUB {
            return (i as u64, 1);
        }
        let shift = (i / SUB - 1) as u32;
        let sub = (i % SUB) as u64;
        ((SUB as u64 + sub) << shift, 1 << shift)
    }

    /// Counts one latency.
    pub fn record(&mut self, nanos: u64) {
        self.counts[Self::index(nanos)] += 1;
        self.total += 1;
    }

    /// The value at quantile `q` (0..=1): the midpoint of the bucket holding the
    /// `ceil(q * n)`-th smallest recorded value; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = Self::bounds(i);
                return low + (width - 1) / 2;
            }
        }
        unreachable!("rank <= total")
    }
}

/// `text` as a count, for flag `flag`.
pub fn parse_num(flag: &str, text: &str) -> Result<usize, String> {
    text.parse().map_err(|e| format!("{flag} {text}: {e}"))
}

/// `text` as seconds (fractions allowed), for flag `flag`.
pub fn parse_secs(flag: &str, text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|e| format!("{flag} {text}: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{flag} {text}: {e}"))
}

/// With `--marks` (`on`), prints `mark WHAT` at an edge of the measured window.
pub fn mark(on: bool, what: &str) {
    if on {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "mark {what}");
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_cover_u64_and_round_trip() {
        assert_eq!(Histogram::index(u64::MAX), BUCKETS - 1);
        let mut prev = 0;
        for v in (0..20_000u64).chain([1 << 20, (1 << 20) + 12345, 1 << 40, u64::MAX / 3, u64::MAX]) {
            let i = Histogram::index(v);
            let (low, width) = Histogram::bounds(i);
            assert!(low <= v && v - low < width, "v {v} bucket {i} low {low} width {width}");
            assert!(width == 1 || (width as f64) / (low as f64) <= 1.0 / SUB as f64);
            if v < 20_000 {
                assert!(i >= prev);
                prev = i;
            }
        }
    }

    #[test]
    fn histogram_percentiles() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        // 1..=1000 microseconds, once each.
        for us in 1..=1000u64 {
            h.record(us * 1000);
        }
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 / 32.0;
        assert!(close(h.quantile(0.5), 500_000), "p50 {}", h.quantile(0.5));
        assert!(close(h.quantile(0.99), 990_000), "p99 {}", h.quantile(0.99));
        assert!(close(h.quantile(1.0), 1_000_000));
        assert!(close(h.quantile(0.0), 1_000));
        // Small exact values.
        h.clear();
        for v in [3, 3, 3, 9] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 3);
        assert_eq!(h.quantile(0.99), 9);
    }
}
