//! Byte ranges of a file: checked construction, validation against a file size, and
//! resolution of an HTTP `Range: bytes=...` spec (RFC 9110 §14.1.2) for the static file
//! server. Pure arithmetic, no I/O.

use std::fmt;

/// A half-open byte range `offset .. offset + len` whose end does not overflow `u64`.
///
/// A `ByteRange` only promises that its end is representable; whether it lies inside
/// a file is checked by [`ByteRange::within`] (or [`validate_range`]), which is what
/// a sender or an HTTP server should use for ranges that came from a user or a peer.
///
/// ```
/// use berth_sendfile::ByteRange;
///
/// let r = ByteRange::within(100, 50, 1000)?;
/// assert_eq!((r.offset(), r.len(), r.end()), (100, 50, 150));
/// assert!(ByteRange::within(990, 50, 1000).is_err()); // past the end of the file
/// # Ok::<(), berth_sendfile::RangeError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ByteRange {
    offset: u64,
    len: u64,
}

/// Why a byte range was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// `offset + len` does not fit in a `u64`: the caller's arithmetic would have wrapped.
    #[error("byte range {offset} + {len} overflows u64")]
    Overflow {
        /// Requested start.
        offset: u64,
        /// Requested length.
        len: u64,
    },
    /// The range ends after the end of the file. A zero-length range at exactly the
    /// end of the file is allowed; one that starts after it is not.
    #[error("byte range {offset}..{offset}+{len} is past the end of a {file_size}-byte file")]
    PastEnd {
        /// Requested start.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The file's size when it was checked.
        file_size: u64,
    },
}

impl ByteRange {
    /// `offset .. offset + len`, refusing an end that overflows `u64`.
    ///
    /// ```
    /// use berth_sendfile::{ByteRange, RangeError};
    ///
    /// assert_eq!(ByteRange::new(10, 5)?.end(), 15);
    /// assert_eq!(ByteRange::new(u64::MAX, 1), Err(RangeError::Overflow { offset: u64::MAX, len: 1 }));
    /// # Ok::<(), RangeError>(())
    /// ```
    pub const fn new(offset: u64, len: u64) -> Result<ByteRange, RangeError> {
        match offset.checked_add(len) {
            Some(_) => Ok(ByteRange { offset, len }),
            None => Err(RangeError::Overflow { offset, len }),
        }
    }

    /// The whole of a file of `file_size` bytes.
    ///
    /// ```
    /// use berth_sendfile::ByteRange;
    ///
    /// assert_eq!(ByteRange::whole(42), ByteRange::new(0, 42).unwrap());
    /// ```
    pub const fn whole(file_size: u64) -> ByteRange {
        ByteRange { offset: 0, len: file_size }
    }

    /// `offset .. offset + len`, checked to lie inside a file of `file_size` bytes.
    /// Same as [`validate_range`].
    ///
    /// ```
    /// use berth_sendfile::{ByteRange, RangeError};
    ///
    /// assert!(ByteRange::within(10, 0, 10).is_ok()); // empty range at the end
    /// assert_eq!(
    ///     ByteRange::within(11, 0, 10),
    ///     Err(RangeError::PastEnd { offset: 11, len: 0, file_size: 10 })
    /// );
    /// ```
    pub const fn within(offset: u64, len: u64, file_size: u64) -> Result<ByteRange, RangeError> {
        match offset.checked_add(len) {
            None => Err(RangeError::Overflow { offset, len }),
            Some(end) if end > file_size => Err(RangeError::PastEnd { offset, len, file_size }),
            Some(_) => Ok(ByteRange { offset, len }),
        }
    }

    /// First byte of the range.
    ///
    /// ```
    /// assert_eq!(berth_sendfile::ByteRange::new(3, 4).unwrap().offset(), 3);
    /// ```
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of bytes in the range.
    ///
    /// ```
    /// assert_eq!(berth_sendfile::ByteRange::new(3, 4).unwrap().len(), 4);
    /// ```
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// One past the last byte (`offset + len`, never overflowing).
    ///
    /// ```
    /// assert_eq!(berth_sendfile::ByteRange::new(3, 4).unwrap().end(), 7);
    /// ```
    pub const fn end(&self) -> u64 {
        // Construction guarantees that this does not overflow.
        self.offset + self.len
    }

    /// Whether the range holds no bytes.
    ///
    /// ```
    /// assert!(berth_sendfile::ByteRange::new(3, 0).unwrap().is_empty());
    /// ```
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of an HTTP `Content-Range` header for this range of a file of
    /// `file_size` bytes: `bytes first-last/size`. Meant for non-empty ranges (an HTTP
    /// 206 never carries an empty one); an empty range renders as `bytes */size`, the
    /// form a 416 response uses.
    ///
    /// ```
    /// use berth_sendfile::ByteRange;
    ///
    /// let r = ByteRange::within(0, 500, 10_000)?;
    /// assert_eq!(r.content_range(10_000).to_string(), "bytes 0-499/10000");
    /// # Ok::<(), berth_sendfile::RangeError>(())
    /// ```
    pub const fn content_range(&self, file_size: u64) -> ContentRange {
        ContentRange { range: *self, file_size }
    }
}

/// Checks that `offset .. offset + len` lies inside a file of `file_size` bytes, with
/// checked arithmetic: an overflowing end is [`RangeError::Overflow`], an end beyond the
/// file is [`RangeError::PastEnd`]. Zero-length ranges are valid anywhere up to and
/// including `file_size`.
///
/// ```
/// use berth_sendfile::{validate_range, RangeError};
///
/// assert_eq!(validate_range(0, 0, 0)?.len(), 0); // empty file, empty range
/// assert!(matches!(validate_range(u64::MAX, 2, u64::MAX), Err(RangeError::Overflow { .. })));
/// # Ok::<(), RangeError>(())
/// ```
pub const fn validate_range(offset: u64, len: u64, file_size: u64) -> Result<ByteRange, RangeError> {
    ByteRange::within(offset, len, file_size)
}

/// Display adapter for a `Content-Range` header value; see [`ByteRange::content_range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    range: ByteRange,
    file_size: u64,
}

impl fmt::Display for ContentRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.range.is_empty() {
            write!(f, "bytes */{}", self.file_size)
        } else {
            // Non-empty, so end - 1 does not underflow.
            write!(f, "bytes {}-{}/{}", self.range.offset, self.range.end() - 1, self.file_size)
        }
    }
}

/// Why an HTTP `Range` header value could not be turned into one byte range.
///
/// What a server does with each (RFC 9110 §14.2): [`Unsatisfiable`](Self::Unsatisfiable)
/// becomes `416 Range Not Satisfiable` with `Content-Range: bytes */size`;
/// [`Malformed`](Self::Malformed) and [`MultipleRanges`](Self::MultipleRanges) mean the
/// header is ignored and the whole file is sent with `200 OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpRangeError {
    /// Not a `bytes=` range spec this parser understands (other unit, bad digits,
    /// `last < first`, empty spec).
    #[error("malformed Range header")]
    Malformed,
    /// More than one range was asked for (`bytes=0-1,5-6`); berth serves single ranges.
    #[error("multiple byte ranges are not supported")]
    MultipleRanges,
    /// Well-formed, but no byte of the file is in it: the first byte is at or beyond
    /// the end of the file, or a suffix of length 0 was asked for.
    #[error("range not satisfiable for a {file_size}-byte file")]
    Unsatisfiable {
        /// The file's size, for the `Content-Range: bytes */size` of the 416 response.
        file_size: u64,
    },
}

/// Resolves the value of an HTTP `Range` header (`bytes=a-b`, `bytes=a-`, `bytes=-n`)
/// against a file of `file_size` bytes, per RFC 9110 §14.1.2: a last position beyond the
/// file is clamped to its last byte, a suffix longer than the file means the whole file.
/// The unit is matched case-insensitively; whitespace around the spec is tolerated.
/// Numbers too large for a `u64` are treated as "beyond the file", never wrapped.
///
/// ```
/// use berth_sendfile::{resolve_http_range, ByteRange, HttpRangeError};
///
/// assert_eq!(resolve_http_range("bytes=0-499", 10_000), Ok(ByteRange::new(0, 500).unwrap()));
/// assert_eq!(resolve_http_range("bytes=9500-", 10_000), Ok(ByteRange::new(9500, 500).unwrap()));
/// assert_eq!(resolve_http_range("bytes=-500", 10_000), Ok(ByteRange::new(9500, 500).unwrap()));
/// assert_eq!(resolve_http_range("bytes=0-99999", 100), Ok(ByteRange::new(0, 100).unwrap()));
/// assert_eq!(
///     resolve_http_range("bytes=100-", 100),
///     Err(HttpRangeError::Unsatisfiable { file_size: 100 })
/// );
/// assert_eq!(resolve_http_range("items=0-1", 100), Err(HttpRangeError::Malformed));
/// ```
pub fn resolve_http_range(header: &str, file_size: u64) -> Result<ByteRange, HttpRangeError> {
    let header = header.trim_matches(is_ows);
    let (unit, spec) = header.split_once('=').ok_or(HttpRangeError::Malformed)?;
    if !unit.trim_matches(is_ows).eq_ignore_ascii_case("bytes") {
        return Err(HttpRangeError::Malformed);
    }
    if spec.contains(',') {
        // RFC 9110 allows empty list elements ("bytes=0-1,"); treat a list with exactly
        // one non-empty element as that element, anything more as multiple ranges.
        let mut parts = spec.split(',').map(|p| p.trim_matches(is_ows)).filter(|p| !p.is_empty());
        let first = parts.next().ok_or(HttpRangeError::Malformed)?;
        if parts.next().is_some() {
            return Err(HttpRangeError::MultipleRanges);
        }
        return resolve_one(first, file_size);
    }
    resolve_one(spec.trim_matches(is_ows), file_size)
}

/// Resolves one element of a `Range` header's list (`a-b`, `a-`, `-n`, without the
/// `bytes=` unit) against a file of `file_size` bytes, as
/// [`resolve_http_range`] does for a single range: for a server that splits a list of
/// several ranges itself (`multipart/byteranges`). Surrounding whitespace is
/// tolerated.
///
/// ```
/// use berth_sendfile::{resolve_http_range_spec, ByteRange, HttpRangeError};
///
/// assert_eq!(resolve_http_range_spec(" 0-9", 100), Ok(ByteRange::new(0, 10).unwrap()));
/// assert_eq!(resolve_http_range_spec("-5", 100), Ok(ByteRange::new(95, 5).unwrap()));
/// assert_eq!(resolve_http_range_spec("200-", 100), Err(HttpRangeError::Unsatisfiable { file_size: 100 }));
/// assert_eq!(resolve_http_range_spec("9-1", 100), Err(HttpRangeError::Malformed));
/// ```
pub fn resolve_http_range_spec(spec: &str, file_size: u64) -> Result<ByteRange, HttpRangeError> {
    resolve_one(spec.trim_matches(is_ows), file_size)
}

/// Optional whitespace (RFC 9110 OWS): space or horizontal tab.
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A run of ASCII digits as a `u64`; `Ok(None)` when the digits are valid but the value
/// does not fit (it is then larger than any file). Signs, spaces and empty strings are
/// malformed (`u64::from_str` would accept a leading `+`).
fn digits(s: &str) -> Result<Option<u64>, HttpRangeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpRangeError::Malformed);
    }
    Ok(s.parse::<u64>().ok())
}

/// Whether the ASCII digits `a` are a smaller number than the digits `b`, whatever
/// their length (leading zeros allowed).
fn value_less(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    (a.len(), a) < (b.len(), b)
}

fn resolve_one(spec: &str, file_size: u64) -> Result<ByteRange, HttpRangeError> {
    let (first, last) = spec.split_once('-').ok_or(HttpRangeError::Malformed)?;
    let unsatisfiable = HttpRangeError::Unsatisfiable { file_size };
    if first.is_empty() {
        // Suffix range: the last n bytes.
        let n = digits(last)?.unwrap_or(u64::MAX);
        if n == 0 || file_size == 0 {
            return Err(unsatisfiable);
        }
        let len = n.min(file_size);
        return Ok(ByteRange { offset: file_size - len, len });
    }
    let (first_digits, last_digits) = (first, last);
    let first = digits(first)?;
    let last = if last.is_empty() { None } else { Some(digits(last)?.unwrap_or(u64::MAX)) };
    let first = match first {
        // Larger than u64::MAX: beyond any file, and well-formed unless `last` is
        // smaller (compared by value: both may be too large for a u64).
        None => {
            return match last {
                Some(_) if value_less(last_digits, first_digits) => Err(HttpRangeError::Malformed),
                _ => Err(unsatisfiable),
            };
        }
        Some(f) => f,
    };
    if let Some(l) = last
        && l < first
    {
        return Err(HttpRangeError::Malformed);
    }
    if first >= file_size {
        return Err(unsatisfiable);
    }
    // first < file_size, so file_size - 1 does not underflow; the clamp keeps last < file_size.
    let last = last.unwrap_or(u64::MAX).min(file_size - 1);
    Ok(ByteRange { offset: first, len: last - first + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_overflow_only() {
        assert_eq!(ByteRange::new(u64::MAX, 0).map(|r| r.end()), Ok(u64::MAX));
        assert_eq!(ByteRange::new(u64::MAX - 1, 2), Err(RangeError::Overflow { offset: u64::MAX - 1, len: 2 }));
        assert_eq!(ByteRange::new(5, 10).map(|r| (r.offset(), r.len())), Ok((5, 10)));
    }

    #[test]
    fn within_bounds() {
        assert!(validate_range(0, 10, 10).is_ok());
        assert!(validate_range(10, 0, 10).is_ok());
        assert!(validate_range(0, 0, 0).is_ok());
        assert_eq!(validate_range(0, 11, 10), Err(RangeError::PastEnd { offset: 0, len: 11, file_size: 10 }));
        assert_eq!(validate_range(11, 0, 10), Err(RangeError::PastEnd { offset: 11, len: 0, file_size: 10 }));
        assert_eq!(validate_range(1, u64::MAX, u64::MAX), Err(RangeError::Overflow { offset: 1, len: u64::MAX }));
        assert!(validate_range(u64::MAX, 0, u64::MAX).is_ok());
        assert!(validate_range(1 << 33, 4096, (1 << 33) + 4096).is_ok());
    }

    #[test]
    fn content_range_display() {
        let size = 10_000;
        assert_eq!(ByteRange::new(9500, 500).unwrap().content_range(size).to_string(), "bytes 9500-9999/10000");
        assert_eq!(ByteRange::new(0, 1).unwrap().content_range(1).to_string(), "bytes 0-0/1");
        assert_eq!(ByteRange::new(0, 0).unwrap().content_range(0).to_string(), "bytes */0");
    }

    fn ok(offset: u64, len: u64) -> Result<ByteRange, HttpRangeError> {
        Ok(ByteRange { offset, len })
    }

    #[test]
    fn http_forms() {
        assert_eq!(resolve_http_range("bytes=0-0", 10), ok(0, 1));
        assert_eq!(resolve_http_range("bytes=0-9", 10), ok(0, 10));
        assert_eq!(resolve_http_range("bytes=0-10", 10), ok(0, 10));
        assert_eq!(resolve_http_range("bytes=3-", 10), ok(3, 7));
        assert_eq!(resolve_http_range("bytes=9-", 10), ok(9, 1));
        assert_eq!(resolve_http_range("bytes=-1", 10), ok(9, 1));
        assert_eq!(resolve_http_range("bytes=-10", 10), ok(0, 10));
        assert_eq!(resolve_http_range("bytes=-11", 10), ok(0, 10));
        assert_eq!(resolve_http_range("BYTES=2-3", 10), ok(2, 2));
        assert_eq!(resolve_http_range(" bytes = 2-3 ", 10), ok(2, 2));
        assert_eq!(resolve_http_range("bytes=2-3,", 10), ok(2, 2));
        assert_eq!(resolve_http_range("bytes=, 2-3", 10), ok(2, 2));
    }

    #[test]
    fn http_unsatisfiable() {
        let u = Err(HttpRangeError::Unsatisfiable { file_size: 10 });
        assert_eq!(resolve_http_range("bytes=10-", 10), u);
        assert_eq!(resolve_http_range("bytes=10-20", 10), u);
        assert_eq!(resolve_http_range("bytes=-0", 10), u);
        assert_eq!(resolve_http_range("bytes=99999999999999999999999-", 10), u);
        let empty = Err(HttpRangeError::Unsatisfiable { file_size: 0 });
        assert_eq!(resolve_http_range("bytes=0-", 0), empty);
        assert_eq!(resolve_http_range("bytes=-5", 0), empty);
        assert_eq!(resolve_http_range("bytes=0-0", 0), empty);
    }

    #[test]
    fn http_huge_numbers_never_wrap() {
        let max = u64::MAX;
        assert_eq!(resolve_http_range("bytes=0-99999999999999999999999", 10), ok(0, 10));
        assert_eq!(resolve_http_range("bytes=-99999999999999999999999", 10), ok(0, 10));
        assert_eq!(resolve_http_range(&format!("bytes=0-{max}"), max), ok(0, max));
        assert_eq!(resolve_http_range(&format!("bytes={}-", max - 1), max), ok(max - 1, 1));
        assert_eq!(resolve_http_range(&format!("bytes=-{max}"), max), ok(0, max));
    }

    /// A first position too large for a `u64` is beyond the file (416) when the last
    /// is at least as large, and malformed only when the last is smaller — by value,
    /// not by what fits in a `u64`. Found by the `http_range` fuzz target's model:
    /// `bytes=N-N` with a 20-digit N was called malformed (a 200 of the whole file).
    #[test]
    fn http_huge_first_position_compares_by_value() {
        let unsat = Err(HttpRangeError::Unsatisfiable { file_size: 100 });
        let huge = "99999999999999999999";
        assert_eq!(resolve_http_range(&format!("bytes={huge}-{huge}"), 100), unsat);
        assert_eq!(resolve_http_range(&format!("bytes={huge}-{huge}9"), 100), unsat);
        assert_eq!(resolve_http_range(&format!("bytes=000{huge}-{huge}"), 100), unsat);
        assert_eq!(resolve_http_range(&format!("bytes={huge}-"), 100), unsat);
        assert_eq!(resolve_http_range(&format!("bytes={huge}9-{huge}"), 100), Err(HttpRangeError::Malformed));
        assert_eq!(resolve_http_range(&format!("bytes={huge}-5"), 100), Err(HttpRangeError::Malformed));
        assert_eq!(resolve_http_range(&format!("bytes={huge}-{}", u64::MAX), 100), Err(HttpRangeError::Malformed));
    }

    #[test]
    fn http_malformed() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=5-4",
            "bytes=1 -2",
            "bytes=--1",
            "items=0-1",
            "bytes=0_1",
            "bytes=1-2-3",
            "bytes=,",
            "bytes=99999999999999999999999-1",
        ] {
            assert_eq!(resolve_http_range(bad, 10), Err(HttpRangeError::Malformed), "{bad:?}");
        }
        assert_eq!(resolve_http_range("bytes=0-1,3-4", 10), Err(HttpRangeError::MultipleRanges));
    }

    proptest::proptest! {
        #[test]
        fn within_matches_wide_arithmetic(offset: u64, len: u64, size: u64) {
            let wide = offset as u128 + len as u128;
            let got = validate_range(offset, len, size);
            if wide > u64::MAX as u128 {
                proptest::prop_assert_eq!(got, Err(RangeError::Overflow { offset, len }));
            } else if wide > size as u128 {
                proptest::prop_assert_eq!(got, Err(RangeError::PastEnd { offset, len, file_size: size }));
            } else {
                proptest::prop_assert_eq!(got.map(|r| (r.offset(), r.end())), Ok((offset, wide as u64)));
            }
        }

        #[test]
        fn http_ranges_stay_inside_the_file(a in 0u64..2000, b in 0u64..2000, size in 0u64..1500, form in 0u8..3) {
            let header = match form {
                0 => format!("bytes={a}-{b}"),
                1 => format!("bytes={a}-"),
                _ => format!("bytes=-{a}"),
            };
            if let Ok(r) = resolve_http_range(&header, size) {
                proptest::prop_assert!(!r.is_empty());
                proptest::prop_assert!(r.end() <= size);
                match form {
                    0 => proptest::prop_assert_eq!((r.offset(), r.end()), (a, (b + 1).min(size))),
                    1 => proptest::prop_assert_eq!((r.offset(), r.end()), (a, size)),
                    _ => proptest::prop_assert_eq!((r.offset(), r.end()), (size - a.min(size), size)),
                }
            }
        }
    }
}
