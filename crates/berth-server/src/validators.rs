//! Validators for [`StaticFiles`](crate::StaticFiles): the strong `ETag` of a file, the
//! entity-tag lists of `If-Match` / `If-None-Match`, and RFC 9110 §13.2.2's order of
//! the conditional headers. Pure functions of the request's bytes and a file's
//! metadata, without allocation; bytes a peer sent that do not parse never match.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

/// Bytes of the longest tag: two quotes, four 64-bit hex fields and three dashes.
const ETAG_MAX: usize = 2 + 4 * 16 + 3;

/// A file's strong entity tag, `"dev-ino-size-mtime_ns"` in hex, formatted on the
/// stack. Any change of content through a rewrite changes the size or the
/// modification time (to the nanosecond), and a replacement by rename the inode.
#[derive(Clone, Copy)]
pub(crate) struct ETag {
    buf: [u8; ETAG_MAX],
    len: usize,
}

impl ETag {
    pub(crate) fn of(meta: &Metadata) -> ETag {
        // Before 1970 the product is negative; wrapping keeps it distinct enough.
        let mtime_ns = (i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())) as u64;
        let mut tag = ETag { buf: [0; ETAG_MAX], len: 0 };
        tag.push(b'"');
        for (i, field) in [meta.dev(), meta.ino(), meta.size(), mtime_ns].into_iter().enumerate() {
            if i > 0 {
                tag.push(b'-');
            }
            tag.hex(field);
        }
        tag.push(b'"');
        tag
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    /// `v` in lower-case hex, without leading zeros.
    fn hex(&mut self, v: u64) {
        let digits = (64 - (v | 1).leading_zeros()).div_ceil(4);
        for i in (0..digits).rev() {
            self.push(b"0123456789abcdef"[((v >> (i * 4)) & 0xf) as usize]);
        }
    }

    /// The tag with its quotes, as sent in `ETag`.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn as_str(&self) -> &str {
        // Quotes, hex digits and dashes: always ASCII.
        std::str::from_utf8(self.as_bytes()).unwrap_or("\"\"")
    }
}

/// One entity tag of a list: whether it had `W/`, and its opaque tag with quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag<'a> {
    weak: bool,
    opaque: &'a [u8],
}

/// The entity tags of a comma-separated list (RFC 9110 §8.8.3), in order. Ends at the
/// first item that is not a well-formed tag: what follows garbage is not trusted.
struct Tags<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Tags<'a> {
    type Item = Tag<'a>;

    fn next(&mut self) -> Option<Tag<'a>> {
        let start = self.rest.iter().position(|&b| !matches!(b, b' ' | b'\t' | b','))?;
        let mut s = &self.rest[start..];
        self.rest = &[];
        let weak = s.starts_with(b"W/");
        if weak {
            s = &s[2..];
        }
        let body = s.strip_prefix(b"\"")?;
        // etagc: %x21 / %x23-7E / obs-text.
        let close = body.iter().position(|&b| b == b'"')?;
        if body[..close].iter().any(|&b| b < 0x21 || b == 0x7f) {
            return None;
        }
        let opaque = &s[..close + 2];
        let after = &s[close + 2..];
        let next = after.iter().position(|&b| !matches!(b, b' ' | b'\t')).unwrap_or(after.len());
        if next < after.len() && after[next] != b',' {
            return None;
        }
        self.rest = &after[next..];
        Some(Tag { weak, opaque })
    }
}

/// Whether an `If-Match` / `If-None-Match` field value matches `etag`: `*` matches
/// (the file exists), and so does any tag of the list, compared strongly (both tags
/// strong and equal) or weakly (`W/` ignored).
fn list_matches(value: &[u8], etag: &ETag, strong: bool) -> bool {
    if value.trim_ascii() == b"*" {
        return true;
    }
    Tags { rest: value }.any(|t| t.opaque == etag.as_bytes() && !(strong && t.weak))
}

/// The conditional headers of one request, borrowed from it.
#[derive(Debug, Default)]
pub(crate) struct Conditions<'h, 'b> {
    /// Every header of the request: `If-Match` and `If-None-Match` may come as several
    /// lines, which together make one list.
    pub(crate) headers: &'h [httparse::Header<'b>],
    pub(crate) if_match: bool,
    pub(crate) if_none_match: bool,
    pub(crate) modified_since: Option<&'b str>,
    pub(crate) unmodified_since: Option<&'b str>,
    pub(crate) range: Option<&'b str>,
    pub(crate) if_range: Option<&'b str>,
}

/// What the preconditions say about a GET or HEAD of an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precondition {
    /// Go on: Range and If-Range come next.
    Proceed,
    /// 304: the client's copy is current.
    NotModified,
    /// 412: `If-Match` or `If-Unmodified-Since` failed.
    Failed,
}

impl Conditions<'_, '_> {
    /// Whether any line of header `name` matches `etag`.
    fn matches(&self, name: &str, etag: &ETag, strong: bool) -> bool {
        self.headers.iter().any(|h| h.name.eq_ignore_ascii_case(name) && list_matches(h.value, etag, strong))
    }

    /// RFC 9110 §13.2.2: If-Match, else If-Unmodified-Since; then If-None-Match, else
    /// If-Modified-Since. `mtime` is the file's modification time in Unix seconds.
    pub(crate) fn evaluate(&self, etag: &ETag, mtime: Option<u64>) -> Precondition {
        if self.if_match {
            if !self.matches("if-match", etag, true) {
                return Precondition::Failed;
            }
        } else if let (Some(mtime), Some(since)) = (mtime, self.unmodified_since.and_then(parse_date))
            && mtime > since
        {
            return Precondition::Failed;
        }
        if self.if_none_match {
            if self.matches("if-none-match", etag, false) {
                return Precondition::NotModified;
            }
        } else if let (Some(mtime), Some(since)) = (mtime, self.modified_since.and_then(parse_date))
            && mtime <= since
        {
            return Precondition::NotModified;
        }
        Precondition::Proceed
    }
}

/// An HTTP date as Unix seconds; `None` if it is not one.
fn parse_date(v: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(v).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// `If-Range` (RFC 9110 §13.1.5): the range is sent only if the client's validator is
/// our entity tag, compared strongly, or exactly our `Last-Modified` date.
pub(crate) fn if_range_matches(value: &str, etag: &ETag, mtime: Option<u64>) -> bool {
    let v = value.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        let mut tags = Tags { rest: v.as_bytes() };
        return matches!((tags.next(), tags.next()), (Some(t), None) if !t.weak && t.opaque == etag.as_bytes());
    }
    mtime.is_some() && parse_date(v) == mtime
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etag() -> ETag {
        let meta = std::fs::metadata(env!("CARGO_MANIFEST_DIR")).unwrap();
        ETag::of(&meta)
    }

    fn tags(v: &str) -> Vec<(bool, &str)> {
        Tags { rest: v.as_bytes() }.map(|t| (t.weak, std::str::from_utf8(t.opaque).unwrap())).collect()
    }

    #[test]
    fn etag_is_quoted_hex() {
        let e = etag();
        let s = e.as_str();
        assert!(s.starts_with('"') && s.ends_with('"') && s.len() > 8, "{s}");
        assert_eq!(s.matches('-').count(), 3, "{s}");
        assert!(s[1..s.len() - 1].bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "{s}");
        let mut t = ETag { buf: [0; ETAG_MAX], len: 0 };
        t.hex(0);
        t.push(b'.');
        t.hex(u64::MAX);
        t.push(b'.');
        t.hex(0x1_0000);
        assert_eq!(std::str::from_utf8(t.as_bytes()).unwrap(), "0.ffffffffffffffff.10000");
    }

    #[test]
    fn lists_parse_and_stop_at_garbage() {
        assert_eq!(tags(r#""a", W/"b" ,"c""#), [(false, r#""a""#), (true, r#""b""#), (false, r#""c""#)]);
        assert_eq!(tags(r#" ,, "a",,"#), [(false, r#""a""#)]);
        assert_eq!(tags(r#""a" junk, "b""#), []);
        assert_eq!(tags(r#""a", junk, "b""#), [(false, r#""a""#)]);
        assert_eq!(tags(r#""unterminated"#), []);
        assert_eq!(tags(r#"w/"lower""#), []);
        assert_eq!(tags("\"sp ace\""), []);
        assert_eq!(tags(""), []);
        assert_eq!(tags("*"), []);
    }

    #[test]
    fn strong_and_weak_comparison() {
        let e = etag();
        let ours = e.as_str();
        assert!(list_matches(ours.as_bytes(), &e, true));
        assert!(list_matches(format!("W/{ours}").as_bytes(), &e, false));
        assert!(!list_matches(format!("W/{ours}").as_bytes(), &e, true));
        assert!(list_matches(format!(r#""x", {ours}"#).as_bytes(), &e, true));
        assert!(list_matches(b" * ", &e, true));
        assert!(!list_matches(br#""x", *"#, &e, false));
        assert!(!list_matches(&[0xff; 8192], &e, false));
        assert!(if_range_matches(ours, &e, None));
        assert!(!if_range_matches(&format!("W/{ours}"), &e, None));
        assert!(!if_range_matches(&format!("{ours}, {ours}"), &e, None));
        assert!(!if_range_matches("\"other\"", &e, None));
    }
}
