//! `Accept-Encoding` (RFC 9110 §12.5.3) for the precompressed sidecars of
//! [`StaticFiles`](crate::StaticFiles): which of `br`, `zstd` and `gzip` a request
//! accepts, with what q-value. Pure, one pass over the bytes, no allocation; an item
//! that does not parse is skipped, and a q-value that does not parse excludes its
//! coding (never send what the client did not clearly accept).

/// A content coding we may have a sidecar for, in our order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    pub(crate) const ALL: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    /// The `Content-Encoding` token.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    /// The sidecar's suffix beside the file.
    pub(crate) fn suffix(self) -> &'static [u8] {
        match self {
            Coding::Br => b".br",
            Coding::Zstd => b".zst",
            Coding::Gzip => b".gz",
        }
    }
}

/// The q-values (in thousandths) a request gives our codings, explicitly or by `*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Accepted {
    explicit: [Option<u16>; 3],
    star: Option<u16>,
}

impl Accepted {
    /// Adds one `Accept-Encoding` field value (the header may come as several lines).
    /// A coding named twice keeps its lower q-value.
    pub(crate) fn add(&mut self, value: &[u8]) {
        for item in value.split(|&b| b == b',') {
            let mut params = item.split(|&b| b == b';');
            let coding = params.next().unwrap_or(&[]).trim_ascii();
            let mut q = Some(1000);
            for param in params {
                let Some(eq) = param.iter().position(|&b| b == b'=') else {
                    q = None;
                    break;
                };
                let (name, v) = (param[..eq].trim_ascii(), param[eq + 1..].trim_ascii());
                if name.eq_ignore_ascii_case(b"q") {
                    q = qvalue(v);
                    break;
                }
            }
            let q = q.unwrap_or(0);
            let slot = if coding == b"*" {
                &mut self.star
            } else if coding.eq_ignore_ascii_case(b"br") {
                &mut self.explicit[0]
            } else if coding.eq_ignore_ascii_case(b"zstd") {
                &mut self.explicit[1]
            } else if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
                &mut self.explicit[2]
            } else {
                continue;
            };
            *slot = Some(slot.map_or(q, |old| old.min(q)));
        }
    }

    /// The q-value of `coding`: its own, else `*`'s, else 0.
    fn q(&self, coding: Coding) -> u16 {
        self.explicit[coding as usize].or(self.star).unwrap_or(0)
    }

    /// The accepted codings (q > 0), best first; at equal q, br before zstd before
    /// gzip. Returns the array and how many of it are accepted.
    pub(crate) fn ranked(&self) -> ([Coding; 3], usize) {
        let mut out = Coding::ALL;
        // A stable insertion sort of three by descending q keeps our preference on ties.
        for i in 1..out.len() {
            let mut j = i;
            while j > 0 && self.q(out[j - 1]) < self.q(out[j]) {
                out.swap(j - 1, j);
                j -= 1;
            }
        }
        let n = out.iter().take_while(|&&c| self.q(c) > 0).count();
        (out, n)
    }
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &[][..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |&d| u16::from(d - b'0'));
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(value: &str) -> Vec<&'static str> {
        let mut a = Accepted::default();
        a.add(value.as_bytes());
        let (order, n) = a.ranked();
        order[..n].iter().map(|c| c.token()).collect()
    }

    #[test]
    fn q_values_and_preference() {
        assert_eq!(ranked("gzip, deflate, br, zstd"), ["br", "zstd", "gzip"]);
        assert_eq!(ranked("gzip;q=1.0, br;q=0.9"), ["gzip", "br"]);
        assert_eq!(ranked("br;q=0, gzip"), ["gzip"]);
        assert_eq!(ranked("*"), ["br", "zstd", "gzip"]);
        assert_eq!(ranked("*;q=0.5, gzip;q=1"), ["gzip", "br", "zstd"]);
        assert_eq!(ranked("*, br;q=0"), ["zstd", "gzip"]);
        assert_eq!(ranked("*;q=0"), Vec::<&str>::new());
        assert_eq!(ranked("identity"), Vec::<&str>::new());
        assert_eq!(ranked(""), Vec::<&str>::new());
        assert_eq!(ranked("GZIP ; Q=0.001"), ["gzip"]);
        assert_eq!(ranked("x-gzip"), ["gzip"]);
        assert_eq!(ranked("br, br;q=0"), Vec::<&str>::new(), "named twice: the lower q");
    }

    #[test]
    fn garbage_excludes() {
        for v in ["br;q=2", "br;q=1.5", "br;q=0.1234", "br;q=", "br;q=abc", "br;q", "br;q=-1", "br;q=1.001"] {
            assert_eq!(ranked(v), Vec::<&str>::new(), "{v}");
        }
        assert_eq!(ranked("br;level=5;q=0.5"), ["br"]);
        assert_eq!(ranked(",,, ;;; ==, gzip"), ["gzip"]);
        let long = "x;q=0.5, ".repeat(1000) + "zstd";
        assert_eq!(ranked(&long), ["zstd"]);
    }
}
