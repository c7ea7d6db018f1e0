//! `Range` header lists for [`StaticFiles`](crate::StaticFiles): one range, several
//! (a `multipart/byteranges` reply), or a reason to ignore the header. Pure, no
//! allocation; the cap on the number of ranges and the refusal of overlaps keep a
//! request from asking for more bytes than the file holds (no amplification).

use berth_sendfile::{ByteRange, HttpRangeError, resolve_http_range_spec};

use crate::service::MAX_FILE_PARTS;

/// The most ranges served as a multipart reply; more gets the whole file.
pub(crate) const MAX_RANGES: usize = MAX_FILE_PARTS;

/// What to do with a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ranges {
    /// Malformed, another unit, more than [`MAX_RANGES`] ranges, overlapping ranges
    /// or more bytes than the file: the whole file with 200 (as nginx does).
    Ignore,
    /// Well-formed, but no range has a byte of the file: 416.
    Unsatisfiable,
    /// One satisfiable range: a plain 206.
    Single(ByteRange),
    /// The first `n` ranges of the output array, in the order asked: a
    /// `multipart/byteranges` 206.
    Multi(usize),
}

/// Reads `value` (e.g. `bytes=0-99, 200-299`) against a file of `size` bytes into
/// `out`. Elements that are unsatisfiable are dropped (RFC 9110 §14.2); counting
/// stops at the first element past the cap, so a list of thousands costs no more
/// than one of seventeen.
pub(crate) fn parse(value: &str, size: u64, out: &mut [ByteRange; MAX_RANGES]) -> Ranges {
    let ows = [' ', '\t'];
    let Some((unit, spec)) = value.trim_matches(ows).split_once('=') else { return Ranges::Ignore };
    if !unit.trim_matches(ows).eq_ignore_ascii_case("bytes") {
        return Ranges::Ignore;
    }
    let (mut n, mut listed) = (0, 0);
    for elem in spec.split(',').map(|e| e.trim_matches(ows)).filter(|e| !e.is_empty()) {
        listed += 1;
        if listed > MAX_RANGES {
            return Ranges::Ignore;
        }
        match resolve_http_range_spec(elem, size) {
            Ok(r) => {
                out[n] = r;
                n += 1;
            }
            Err(HttpRangeError::Unsatisfiable { .. }) => {}
            Err(_) => return Ranges::Ignore,
        }
    }
    match n {
        0 if listed == 0 => Ranges::Ignore,
        0 => Ranges::Unsatisfiable,
        1 => Ranges::Single(out[0]),
        n => {
            let mut sorted = *out;
            sorted[..n].sort_unstable_by_key(|r| r.offset());
            let mut total = 0u64;
            for (i, r) in sorted[..n].iter().enumerate() {
                total = total.saturating_add(r.len());
                if i > 0 && r.offset() < sorted[i - 1].end() {
                    return Ranges::Ignore;
                }
            }
            if total > size { Ranges::Ignore } else { Ranges::Multi(n) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &str, size: u64) -> (Ranges, Vec<(u64, u64)>) {
        let mut out = [ByteRange::whole(0); MAX_RANGES];
        let r = parse(value, size, &mut out);
        let n = if let Ranges::Multi(n) = r { n } else { 0 };
        (r, out[..n].iter().map(|r| (r.offset(), r.len())).collect())
    }

    #[test]
    fn lists() {
        assert_eq!(parsed("bytes=0-9", 100).0, Ranges::Single(ByteRange::new(0, 10).unwrap()));
        assert_eq!(parsed("bytes=0-9, 500-", 100).0, Ranges::Single(ByteRange::new(0, 10).unwrap()));
        assert_eq!(parsed("bytes=50-59,0-9,-5", 100), (Ranges::Multi(3), vec![(50, 10), (0, 10), (95, 5)]));
        assert_eq!(parsed("BYTES = 0-0 , 2-2 ,", 3), (Ranges::Multi(2), vec![(0, 1), (2, 1)]));
        assert_eq!(parsed("bytes=0-9,10-19", 100).0, Ranges::Multi(2), "adjacent is not overlapping");
        assert_eq!(parsed("bytes=200-,300-", 100).0, Ranges::Unsatisfiable);
    }

    #[test]
    fn ignored() {
        for v in ["bytes=0-9,5-14", "bytes=0-,-1", "bytes=0-9,x", "items=0-1,2-3", "bytes=", "bytes=,", "0-9,20-29"] {
            assert_eq!(parsed(v, 100).0, Ranges::Ignore, "{v}");
        }
        let seventeen =
            format!("bytes={}", (0..17).map(|i| format!("{}-{}", i * 2, i * 2)).collect::<Vec<_>>().join(","));
        assert_eq!(parsed(&seventeen, 100).0, Ranges::Ignore);
        let sixteen =
            format!("bytes={}", (0..16).map(|i| format!("{}-{}", i * 2, i * 2)).collect::<Vec<_>>().join(","));
        assert_eq!(parsed(&sixteen, 100).0, Ranges::Multi(16));
        let thousand = format!("bytes={}", "0-0,".repeat(1000));
        assert_eq!(parsed(&thousand, 100).0, Ranges::Ignore);
    }
}
