//! `http_range`: `resolve_http_range` (and the list reader `StaticFiles` builds on
//! it) against a straightforward model, over random file sizes (issue #16, target 5).
//!
//! Input: 8 bytes choosing the file size (small sizes most of the time, any `u64`
//! otherwise), then the header value. The model follows the function's docs and
//! RFC 9110 §14.1.2 with numbers of any length (compared as digit strings, so
//! nothing can wrap): `first-last` with `last < first` is malformed; a first
//! position at or past the end is unsatisfiable, and so is a suffix of 0 or any
//! range of an empty file; a last position past the end is clamped; a suffix
//! longer than the file is the whole file. The list reader must agree with the
//! single-range function element by element, never return more than 16 ranges,
//! overlapping ranges, or more bytes than the file.

#![no_main]

use std::cmp::Ordering;

use berth_sendfile::{ByteRange, HttpRangeError, resolve_http_range, resolve_http_range_spec};
use berth_server::fuzzing::{RangeAnswer, range_list};
use libfuzzer_sys::fuzz_target;

/// A non-negative integer of any length, as its digits without leading zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Num(String);

impl Num {
    fn parse(s: &str) -> Option<Num> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let t = s.trim_start_matches('0');
        Some(Num(if t.is_empty() { "0".into() } else { t.into() }))
    }

    fn of(v: u64) -> Num {
        Num(v.to_string())
    }

    fn cmp(&self, o: &Num) -> Ordering {
        self.0.len().cmp(&o.0.len()).then_with(|| self.0.cmp(&o.0))
    }

    /// The value, when it is below `limit` (so it fits a `u64`).
    fn below(&self, limit: u64) -> Option<u64> {
        (self.cmp(&Num::of(limit)) == Ordering::Less).then(|| self.0.parse().unwrap())
    }
}

fn ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// One `first-last` / `first-` / `-suffix` element.
fn model_one(spec: &str, size: u64) -> Result<ByteRange, HttpRangeError> {
    let unsat = Err(HttpRangeError::Unsatisfiable { file_size: size });
    let (first, last) = spec.split_once('-').ok_or(HttpRangeError::Malformed)?;
    if first.is_empty() {
        let n = Num::parse(last).ok_or(HttpRangeError::Malformed)?;
        if n == Num::of(0) || size == 0 {
            return unsat;
        }
        let len = n.below(size).unwrap_or(size);
        return Ok(ByteRange::new(size - len, len).unwrap());
    }
    let first = Num::parse(first).ok_or(HttpRangeError::Malformed)?;
    let last = if last.is_empty() { None } else { Some(Num::parse(last).ok_or(HttpRangeError::Malformed)?) };
    if let Some(l) = &last
        && l.cmp(&first) == Ordering::Less
    {
        return Err(HttpRangeError::Malformed);
    }
    let Some(first) = first.below(size) else { return unsat };
    let last = last.and_then(|l| l.below(size)).unwrap_or(size - 1);
    Ok(ByteRange::new(first, last - first + 1).unwrap())
}

fn model(header: &str, size: u64) -> Result<ByteRange, HttpRangeError> {
    let (unit, spec) = header.trim_matches(ows).split_once('=').ok_or(HttpRangeError::Malformed)?;
    if !unit.trim_matches(ows).eq_ignore_ascii_case("bytes") {
        return Err(HttpRangeError::Malformed);
    }
    let elems: Vec<&str> = spec.split(',').map(|e| e.trim_matches(ows)).filter(|e| !e.is_empty()).collect();
    match elems[..] {
        [] => Err(HttpRangeError::Malformed),
        [one] => model_one(one, size),
        _ => Err(HttpRangeError::MultipleRanges),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((sz, rest)) = data.split_first_chunk::<8>() else { return };
    let Ok(header) = std::str::from_utf8(rest) else { return };
    let raw = u64::from_le_bytes(*sz);
    let size = match raw >> 62 {
        0 | 1 => raw % 200,
        2 => u64::MAX - raw % 4,
        _ => raw,
    };
    let got = resolve_http_range(header, size);
    assert_eq!(got, model(header, size), "resolve_http_range({header:?}, {size})");
    if let Ok(r) = got {
        assert!(!r.is_empty() && r.end() <= size, "{r:?} outside a {size}-byte file");
    }

    // Each element alone, as StaticFiles reads lists.
    let spec = header.trim_matches(ows).split_once('=').map_or("", |(_, s)| s);
    for elem in spec.split(',') {
        assert_eq!(resolve_http_range_spec(elem, size), model_one(elem.trim_matches(ows), size), "spec {elem:?}");
    }

    match range_list(header, size) {
        RangeAnswer::Ignore | RangeAnswer::Unsatisfiable => {}
        RangeAnswer::Ranges(list) => {
            assert!(!list.is_empty() && list.len() <= 16, "{} ranges", list.len());
            let mut sorted = list.clone();
            sorted.sort_by_key(|r| r.offset());
            let mut total = 0u64;
            for (i, r) in sorted.iter().enumerate() {
                assert!(!r.is_empty() && r.end() <= size, "{r:?} outside a {size}-byte file");
                assert!(i == 0 || sorted[i - 1].end() <= r.offset(), "overlapping ranges {sorted:?}");
                total += r.len();
            }
            assert!(total <= size, "{total} bytes of a {size}-byte file");
            // In the order asked, each is what the single-range function makes of its element.
            let satisfiable: Vec<ByteRange> =
                spec.split(',').filter_map(|e| model_one(e.trim_matches(ows), size).ok()).collect();
            assert_eq!(list, satisfiable, "list {header:?}");
        }
    }
});
