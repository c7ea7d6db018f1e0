//! `path_decode`: the request-path decoder and the hidden-path rule against a small
//! model (issue #16, target 4).
//!
//! Input: one byte choosing the output buffer's size, then the raw path. The model
//! decodes percent escapes once (`%` and two hex digits; anything else is literal),
//! refuses a NUL or a backslash, or a decoded length that leaves no room for the NUL
//! (whichever comes first), then splits on `/`, refuses a `..` segment, drops empty
//! and `.` segments and joins the rest (`.` if none). The decoder must agree exactly;
//! and whatever it accepts has no `..` segment, NUL, backslash or leading `/`, so it
//! resolves beneath the root (which is what `StaticFiles` hands to openat2).

#![no_main]

use berth_server::fuzzing::{PathRefusal, decode_path, is_hidden};
use libfuzzer_sys::fuzz_target;

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn model(raw: &[u8], room: usize) -> Result<(Vec<u8>, bool), PathRefusal> {
    if raw.first() != Some(&b'/') {
        return Err(PathRefusal::NotAbsolute);
    }
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let b = match (raw[i], raw.get(i + 1).copied().and_then(hex), raw.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                i += 3;
                h << 4 | l
            }
            (b, _, _) => {
                i += 1;
                b
            }
        };
        if b == 0 || b == b'\\' {
            return Err(PathRefusal::Forbidden);
        }
        // One byte of the buffer stays for the NUL.
        if decoded.len() + 1 >= room {
            return Err(PathRefusal::TooLong);
        }
        decoded.push(b);
    }
    let trailing = decoded.last() == Some(&b'/');
    let mut kept: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b".." => return Err(PathRefusal::Forbidden),
            b"" | b"." => {}
            s => kept.push(s),
        }
    }
    let joined = if kept.is_empty() { b".".to_vec() } else { kept.join(&b'/') };
    Ok((joined, trailing))
}

fn model_hidden(rel: &[u8]) -> bool {
    rel != b"."
        && rel.split(|&b| b == b'/').enumerate().any(|(i, s)| s.starts_with(b".") && !(i == 0 && s == b".well-known"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, raw)) = data.split_first() else { return };
    let room = if size == 255 { 4096 } else { usize::from(size % 64) };
    let mut out = vec![0xAAu8; room];
    let got = decode_path(raw, &mut out);
    let expected = model(raw, room);
    match (got, expected) {
        (Ok(p), Ok((path, trailing))) => {
            let decoded = &out[..p.len];
            assert_eq!(decoded, &path[..], "decoded differently from the model");
            assert_eq!(p.trailing_slash, trailing);
            assert_eq!(out[p.len], 0, "no NUL after the path");
            assert!(!decoded.contains(&0) && !decoded.contains(&b'\\'));
            assert!(!decoded.starts_with(b"/"), "an absolute path would leave the root");
            assert!(decoded.split(|&b| b == b'/').all(|s| s != b".." && !s.is_empty()), "segment .. or empty");
            assert_eq!(
                is_hidden(decoded),
                model_hidden(decoded),
                "hidden rule on {:?}",
                String::from_utf8_lossy(decoded)
            );
        }
        (Err(e), Err(m)) => assert_eq!(e, m, "refused for another reason than the model"),
        (got, expected) => panic!("decoder {got:?}, model {expected:?}"),
    }
});
