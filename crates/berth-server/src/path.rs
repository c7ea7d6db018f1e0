//! Request paths to file paths beneath a root: percent-decoding and the rules that
//! keep a request inside the root. Pure, no I/O; the open itself (openat2 with
//! `RESOLVE_BENEATH`) is in `files.rs` and catches what a string check cannot
//! (symlinks).

use percent_encoding::percent_decode;

/// Why a request path was refused before touching the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// Not in origin form (`/...`).
    NotAbsolute,
    /// Decoded, it is longer than the buffer.
    TooLong,
    /// A NUL byte, a backslash, or a `..` segment (after decoding).
    Forbidden,
}

/// A decoded, checked path relative to the root, NUL-terminated in the caller's
/// buffer: `len` bytes of path (`.` for the root itself), then a NUL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelPath {
    pub(crate) len: usize,
    /// The request path ended in `/`.
    pub(crate) trailing_slash: bool,
}

/// Decodes `raw` (the request target without its query) into `out` as a path
/// relative to the root: percent escapes decoded once, empty and `.` segments
/// dropped, and refused if any decoded byte is NUL or `\`, or any segment is `..`.
/// Encoded slashes (`%2f`) become separators and are then checked like any other,
/// so `..%2f` is refused as `../` is.
pub(crate) fn decode(raw: &[u8], out: &mut [u8]) -> Result<RelPath, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut n = 0;
    for b in percent_decode(raw) {
        if b == 0 || b == b'\\' {
            return Err(PathError::Forbidden);
        }
        // Keep one byte for the NUL.
        if n + 1 >= out.len() {
            return Err(PathError::TooLong);
        }
        out[n] = b;
        n += 1;
    }
    let trailing_slash = n > 0 && out[n - 1] == b'/';
    // Normalise in place: the output never outruns the input.
    let mut w = 0;
    let mut r = 0;
    while r < n {
        let seg_end = out[r..n].iter().position(|&b| b == b'/').map_or(n, |p| r + p);
        let seg = seg_end - r;
        if seg == 2 && out[r] == b'.' && out[r + 1] == b'.' {
            return Err(PathError::Forbidden);
        }
        if seg > 0 && !(seg == 1 && out[r] == b'.') {
            if w > 0 {
                out[w] = b'/';
                w += 1;
            }
            out.copy_within(r..seg_end, w);
            w += seg;
        }
        r = seg_end + 1;
    }
    if w == 0 {
        out[0] = b'.';
        w = 1;
    }
    out[w] = 0;
    Ok(RelPath { len: w, trailing_slash })
}

/// Whether a decoded path (as [`decode`] leaves it) names a hidden file: one of its
/// segments starts with `.` (`.git/config`, `.env`, `a/.htpasswd`). A first segment
/// of `.well-known` (RFC 8615: ACME challenges, `security.txt`) is not hidden, but a
/// dotfile beneath it is. The root itself (`.`) is not hidden.
pub(crate) fn is_hidden(rel: &[u8]) -> bool {
    if rel == b"." {
        return false;
    }
    rel.split(|&b| b == b'/')
        .enumerate()
        .any(|(i, seg)| seg.first() == Some(&b'.') && !(i == 0 && seg == b".well-known"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        let mut buf = [0u8; 256];
        let p = decode(raw.as_bytes(), &mut buf).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
        assert_eq!(buf[p.len], 0);
        String::from_utf8(buf[..p.len].to_vec()).unwrap()
    }

    fn err(raw: &str) -> PathError {
        let mut buf = [0u8; 256];
        decode(raw.as_bytes(), &mut buf).expect_err(raw)
    }

    #[test]
    fn normalises() {
        assert_eq!(ok("/"), ".");
        assert_eq!(ok("//"), ".");
        assert_eq!(ok("/./"), ".");
        assert_eq!(ok("/a.txt"), "a.txt");
        assert_eq!(ok("/dir/sub/"), "dir/sub");
        assert_eq!(ok("/dir//./x"), "dir/x");
        assert_eq!(ok("/with%20space"), "with space");
        assert_eq!(ok("/a%2fb"), "a/b");
        assert_eq!(ok("/..a/b.."), "..a/b..");
        assert_eq!(ok("/.%2e%2e"), "...");
        assert_eq!(ok("/%252e%252e"), "%2e%2e"); // decoded once only
    }

    #[test]
    fn refuses_escapes() {
        for raw in [
            "/..",
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/x",
            "/%2E%2e/x",
            "/.%2e/x",
            "/a/..%2f..%2fetc",
            "/..%5c..%5cetc",
            "/a\\b",
            "/a%00b",
            "/%2f..%2f",
        ] {
            assert_eq!(err(raw), PathError::Forbidden, "{raw}");
        }
        assert_eq!(err("a"), PathError::NotAbsolute);
        assert_eq!(err("*"), PathError::NotAbsolute);
        assert_eq!(err(&format!("/{}", "a".repeat(300))), PathError::TooLong);
    }

    fn hidden(raw: &str) -> bool {
        let mut buf = [0u8; 256];
        let p = decode(raw.as_bytes(), &mut buf).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
        is_hidden(&buf[..p.len])
    }

    #[test]
    fn hidden_segments() {
        for raw in [
            "/.git/config",
            "/%2egit/config",
            "/%2Egit%2fconfig",
            "/.env",
            "/a/.htpasswd",
            "/a/b/.git/",
            "/.well-known/.secret",
            "/.well-knownx/a",
            "/a/.well-known/x",
            "/..a/b",
            "/./.env",
        ] {
            assert!(hidden(raw), "{raw} should be hidden");
        }
        for raw in ["/", "/.", "/a.txt", "/a/b.c/d", "/.well-known/acme-challenge/x", "/.well-known/", "/a./b"] {
            assert!(!hidden(raw), "{raw} should not be hidden");
        }
    }

    #[test]
    fn trailing_slash() {
        let mut buf = [0u8; 64];
        assert!(decode(b"/dir/", &mut buf).unwrap().trailing_slash);
        assert!(!decode(b"/dir", &mut buf).unwrap().trailing_slash);
    }
}
