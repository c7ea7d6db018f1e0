//! Directory listings for [`StaticFiles::list`](crate::StaticFiles::list): an HTML
//! page, directories first, then the rest, each group sorted by the bytes of the
//! names, streamed one segment at a time ([`Reply::stream`]).
//!
//! Sorted output in bounded memory: a listing never holds the whole directory. Each
//! *pass* reads the directory from its start (getdents on the descriptor opened
//! beneath the root) and keeps the smallest entries after the last one sent, in a
//! fixed pool of [`POOL`] name bytes and [`SLOTS`] slots: when the pool fills, it
//! is sorted, the largest quarter dropped, and anything not below the smallest
//! dropped entry is skipped from then on. What is left at the end of the pass is
//! exactly the next entries in order; they are sent, and the next pass starts after
//! the last. So a directory of n entries costs about n / (3/4 SLOTS) passes of n
//! entries and a constant amount of memory (about 112 KiB while a listing runs);
//! entries created or removed while it is listed are shown or not (an entry that
//! turns from a directory into a file meanwhile may show in both groups).

use std::ffi::CStr;
use std::fmt;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::time::{Duration, UNIX_EPOCH};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, SeekFrom, Stat};

use crate::service::Reply;

/// Bytes of names one pass may hold.
pub(crate) const POOL: usize = 64 * 1024;
/// Entries one pass may hold.
pub(crate) const SLOTS: usize = 4096;
/// The getdents buffer.
const DIRENTS: usize = 16 * 1024;
/// Entries read in one step of a pass; then the worker is yielded
/// ([`Step::Yield`]) and the pass goes on from the directory offset reached.
const STEP: usize = 8192;
/// Linux's `NAME_MAX`: no directory entry has a longer name.
const NAME_MAX: usize = 255;
/// Room for one rendered row: a name of [`NAME_MAX`] bytes escaped for the text
/// (at most 6 bytes each, `&quot;`) and for the href (3 each), and the markup.
const ROW: usize = 4096;
/// `XXXXXXXX\r\n` before each chunk: a fixed width, filled in once the chunk is
/// written (leading zeros are allowed in a chunk size).
const CHUNK_HEAD: &[u8] = b"00000000\r\n";
const CLOSING: &[u8] = b"</table>\n</body>\n</html>\n";
/// The end of the last chunk and the last (empty) chunk.
const LAST_CHUNK: &[u8] = b"\r\n0\r\n\r\n";

/// Bytes kept as they are in an href: RFC 3986's unreserved characters. Everything
/// else, `/` and `:` included, is percent-encoded, so a name can never become a
/// scheme (`javascript:`), a path of its own or a query.
const HREF: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Directories sort before everything else.
const DIR: u8 = 0;
const OTHER: u8 = 1;

/// An entry's place in the order: its group, then its name's bytes.
#[derive(Clone, Copy)]
struct Key {
    group: u8,
    len: u8,
    name: [u8; NAME_MAX],
}

impl Key {
    const NONE: Key = Key { group: 0, len: 0, name: [0; NAME_MAX] };

    fn set(&mut self, group: u8, name: &[u8]) {
        let n = name.len().min(NAME_MAX);
        self.group = group;
        self.len = n as u8;
        self.name[..n].copy_from_slice(&name[..n]);
    }

    fn get(&self) -> (u8, &[u8]) {
        (self.group, &self.name[..usize::from(self.len)])
    }
}

/// One entry held by a pass: its name at `pool[start..start + len]`.
#[derive(Clone, Copy)]
struct Slot {
    start: u32,
    len: u8,
    group: u8,
}

/// A listing being sent: the directory, where the listing is, and one pass's
/// entries. Allocated once when the listing starts (its size does not depend on the
/// directory's); nothing is allocated per segment.
pub(crate) struct Listing {
    dir: OwnedFd,
    chunked: bool,
    hidden: bool,
    /// The last entry sent, once one was.
    cursor: Option<Key>,
    /// While a pass runs: entries not below this are skipped (a larger half was
    /// dropped from the pool). After it: whether entries are left past this pass.
    bound: Option<Key>,
    pool: Vec<u8>,
    slots: Vec<Slot>,
    /// The next slot to send.
    next: usize,
    /// A pass is needed before the next entries (none was run yet, or the last one
    /// left entries out).
    pass_due: bool,
    /// A pass is under way; it goes on from the directory offset `resume_at`.
    in_pass: bool,
    resume_at: u64,
    dirents: Vec<MaybeUninit<u8>>,
}

impl fmt::Debug for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listing")
            .field("chunked", &self.chunked)
            .field("held", &self.slots.len())
            .field("next", &self.next)
            .finish()
    }
}

impl Listing {
    /// Lists `dir` (opened beneath the root); `chunked` frames each segment as an
    /// HTTP/1.1 chunk, else the body ends with the connection (HTTP/1.0).
    pub(crate) fn new(dir: OwnedFd, chunked: bool, hidden: bool) -> Box<Listing> {
        Box::new(Listing {
            dir,
            chunked,
            hidden,
            cursor: None,
            bound: None,
            pool: Vec::with_capacity(POOL),
            slots: Vec::with_capacity(SLOTS),
            next: 0,
            pass_due: true,
            in_pass: false,
            resume_at: 0,
            dirents: vec![MaybeUninit::uninit(); DIRENTS],
        })
    }

    /// Writes the page's start into `reply` (after the response head): the title
    /// and heading from `path` (the decoded request path, shown escaped, cut short
    /// if it would not fit) and, below the root, a link to the parent. As one chunk
    /// when chunked.
    pub(crate) fn start(&self, reply: &mut Reply<'_>, path: &[u8], root: bool) -> io::Result<()> {
        let chunk = self.open_chunk(reply)?;
        // Leave room for the rest of the page start and a row.
        let budget = reply.remaining().saturating_sub(ROW) / 2;
        reply.write_all(b"<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>Index of ")?;
        write_text(reply, path, budget)?;
        reply.write_all(b"</title>\n</head>\n<body>\n<h1>Index of ")?;
        write_text(reply, path, budget)?;
        reply.write_all(b"</h1>\n<table>\n<tr><th>Name</th><th>Size</th><th>Modified</th></tr>\n")?;
        if !root {
            reply.write_all(b"<tr><td><a href=\"../\">../</a></td><td>-</td><td></td></tr>\n")?;
        }
        self.close_chunk(reply, chunk)
    }

    /// Writes the next segment: as many rows as fit, and the page's end once every
    /// entry is out; or nothing, if a step of a pass found no row to send yet.
    pub(crate) fn segment(&mut self, reply: &mut Reply<'_>) -> io::Result<Step> {
        let chunk = self.open_chunk(reply)?;
        let body = reply.written().len();
        let tail = CLOSING.len() + LAST_CHUNK.len();
        let mut row = [0u8; ROW];
        loop {
            if self.in_pass || (self.next == self.slots.len() && self.pass_due) {
                if self.pass_step()? {
                    continue;
                }
                // The pass goes on in the next call: send what this one has, or
                // (nothing yet) let the worker serve others first.
                if reply.written().len() > body {
                    break;
                }
                reply.truncate(chunk);
                return Ok(Step::Yield);
            }
            if self.next == self.slots.len() {
                // Every entry is out: the end of the page, if it fits here.
                if reply.remaining() < tail {
                    break;
                }
                reply.write_all(CLOSING)?;
                if self.chunked {
                    self.close_chunk(reply, chunk)?;
                    reply.write_all(b"0\r\n\r\n")?;
                }
                return Ok(Step::Done);
            }
            let slot = self.slots[self.next];
            let name = &self.pool[slot.start as usize..slot.start as usize + usize::from(slot.len)];
            let n = render(&mut row, &self.dir, name, slot.group);
            // The chunk's CRLF and the page's end must still fit after the row.
            if n + tail > reply.remaining() {
                if reply.written().len() > body {
                    break;
                }
                // Not even alone in a segment (a tiny segment size): skipped, so the
                // listing still ends.
                tracing::debug!("a listing row does not fit in a segment: skipped");
            } else {
                reply.write_all(&row[..n])?;
            }
            self.next += 1;
        }
        if reply.written().len() == body {
            // An empty chunk would end the body: a segment too small to list in.
            return Err(io::Error::other("segment too small for a listing row"));
        }
        self.close_chunk(reply, chunk)?;
        Ok(Step::More)
    }

    /// With chunked framing: the chunk-size placeholder; returns where it is.
    fn open_chunk(&self, reply: &mut Reply<'_>) -> io::Result<usize> {
        let at = reply.written().len();
        if self.chunked {
            reply.write_all(CHUNK_HEAD)?;
        }
        Ok(at)
    }

    /// Fills in the size of the chunk opened at `at` and ends it.
    fn close_chunk(&self, reply: &mut Reply<'_>, at: usize) -> io::Result<()> {
        if !self.chunked {
            return Ok(());
        }
        let size = reply.written().len() - at - CHUNK_HEAD.len();
        let mut hex = [0u8; 8];
        for (i, d) in hex.iter_mut().enumerate() {
            *d = b"0123456789abcdef"[(size >> (28 - 4 * i)) & 0xf];
        }
        reply.overwrite(at, &hex);
        reply.write_all(b"\r\n")
    }

    /// One step of a pass over the directory, which holds the smallest entries
    /// after the cursor (see the module docs): at most [`STEP`] entries, from where
    /// the last step stopped. Returns whether the pass is over (its entries are then
    /// sorted, ready to send). An error reading the directory, or offsets that do
    /// not move (a broken filesystem would have the pass read the same entries
    /// forever), is an error: the listing ends without its closing chunk, so the
    /// client sees it cut rather than complete.
    fn pass_step(&mut self) -> io::Result<bool> {
        if !self.in_pass {
            if let Some(last) = self.slots.last() {
                let mut cursor = Key::NONE;
                let start = last.start as usize;
                cursor.set(last.group, &self.pool[start..start + usize::from(last.len)]);
                self.cursor = Some(cursor);
            }
            self.pool.clear();
            self.slots.clear();
            self.next = 0;
            self.bound = None;
            self.pass_due = false;
            self.in_pass = true;
            self.resume_at = 0;
        }
        if let Err(e) = rustix::fs::seek(&self.dir, SeekFrom::Start(self.resume_at)) {
            tracing::warn!("listing: seeking in the directory: {e}");
            return Err(e.into());
        }
        let started_at = self.resume_at;
        let mut dir = RawDir::new(&self.dir, &mut self.dirents);
        let mut read = 0;
        loop {
            if read == STEP {
                if self.resume_at == started_at {
                    return Err(io::Error::other("directory offsets do not advance"));
                }
                return Ok(false);
            }
            let entry = match dir.next() {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    tracing::warn!("listing: reading the directory: {e}");
                    return Err(e.into());
                }
            };
            read += 1;
            self.resume_at = entry.next_entry_cookie();
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." || bytes.is_empty() || bytes.len() > NAME_MAX {
                continue;
            }
            if !self.hidden && bytes[0] == b'.' {
                continue;
            }
            let group = group(&self.dir, name, entry.file_type());
            let key = (group, bytes);
            if self.cursor.as_ref().is_some_and(|c| key <= c.get()) {
                continue;
            }
            if self.bound.as_ref().is_some_and(|b| key >= b.get()) {
                continue;
            }
            if self.slots.len() == SLOTS || self.pool.len() + bytes.len() > POOL {
                shrink(&mut self.pool, &mut self.slots, &mut self.bound);
                if self.bound.as_ref().is_some_and(|b| key >= b.get()) {
                    continue;
                }
            }
            self.slots.push(Slot { start: self.pool.len() as u32, len: bytes.len() as u8, group });
            self.pool.extend_from_slice(bytes);
        }
        Ok(self.end_pass())
    }

    /// Sorts the pass's entries; returns true.
    fn end_pass(&mut self) -> bool {
        let pool = &self.pool;
        self.slots.sort_unstable_by(|a, b| slot_key(pool, a).cmp(&slot_key(pool, b)));
        // Resuming at a directory offset may read an entry twice (hash collisions
        // in ext4's offsets): once in the page.
        self.slots.dedup_by(|a, b| slot_key(pool, a) == slot_key(pool, b));
        self.in_pass = false;
        // Entries were left out: another pass after these.
        self.pass_due = self.bound.is_some();
        true
    }
}

/// What [`Listing::segment`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Rows: more segments follow.
    More,
    /// Nothing yet (a pass is under way): call again after the worker's other work.
    Yield,
    /// The page's end: the listing is complete.
    Done,
}

fn slot_key<'p>(pool: &'p [u8], s: &Slot) -> (u8, &'p [u8]) {
    (s.group, &pool[s.start as usize..s.start as usize + usize::from(s.len)])
}

/// Keeps the smallest three quarters of the held entries, and sets `bound` to the
/// smallest entry dropped: nothing from it on can be among the pass's smallest any
/// more. (Keeping more sorts more often but leaves a fuller window at the end of
/// the pass, so fewer passes: the directory reads, not the sorting, are the cost.)
fn shrink(pool: &mut Vec<u8>, slots: &mut Vec<Slot>, bound: &mut Option<Key>) {
    {
        let pool = &*pool;
        slots.sort_unstable_by(|a, b| slot_key(pool, a).cmp(&slot_key(pool, b)));
    }
    let keep = slots.len() * 3 / 4;
    let Some(first_dropped) = slots.get(keep) else { return };
    let (group, name) = slot_key(pool, first_dropped);
    bound.get_or_insert(Key::NONE).set(group, name);
    slots.truncate(keep);
    // Move the kept names to the front of the pool, in the order they lie there.
    slots.sort_unstable_by_key(|s| s.start);
    let mut w = 0usize;
    for s in slots.iter_mut() {
        let start = s.start as usize;
        let len = usize::from(s.len);
        pool.copy_within(start..start + len, w);
        s.start = w as u32;
        w += len;
    }
    pool.truncate(w);
}

/// Directories, and symlinks to directories beneath the listed one, sort first.
fn group(dir: &OwnedFd, name: &CStr, kind: FileType) -> u8 {
    let kind = match kind {
        FileType::Unknown => match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => FileType::from_raw_mode(st.st_mode),
            Err(_) => return OTHER,
        },
        k => k,
    };
    match kind {
        FileType::Directory => DIR,
        FileType::Symlink => match resolve(dir, name) {
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => DIR,
            _ => OTHER,
        },
        _ => OTHER,
    }
}

/// What an entry is: itself, or for a symlink its target if the target lies
/// beneath the listed directory (openat2 with `RESOLVE_BENEATH`, so a link that
/// leaves it, dangles or loops is `None`, never followed out).
fn stat(dir: &OwnedFd, name: &CStr) -> Option<Stat> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink { resolve(dir, name) } else { Some(st) }
}

fn resolve(dir: &OwnedFd, name: &CStr) -> Option<Stat> {
    let how = rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_MAGICLINKS;
    let fd = rustix::fs::openat2(dir, name, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), how).ok()?;
    rustix::fs::fstat(&fd).ok()
}

/// One table row for `name` into `row`; returns its length. A row always fits
/// ([`ROW`] holds the longest name escaped twice).
fn render(row: &mut [u8; ROW], dir: &OwnedFd, name: &[u8], group: u8) -> usize {
    let mut w = io::Cursor::new(&mut row[..]);
    let _ = (|| {
        let slash = if group == DIR { "/" } else { "" };
        w.write_all(b"<tr><td><a href=\"./")?;
        for piece in percent_encode(name, HREF) {
            w.write_all(piece.as_bytes())?;
        }
        write!(w, "{slash}\">")?;
        write_text(&mut w, name, usize::MAX)?;
        write!(w, "{slash}</a></td><td>")?;
        // A name from getdents has no NUL; a C string of it is made on the stack.
        let mut c = [0u8; NAME_MAX + 1];
        c[..name.len()].copy_from_slice(name);
        let st = CStr::from_bytes_until_nul(&c).ok().and_then(|c| stat(dir, c));
        match st {
            Some(st) if group == DIR || FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                w.write_all(b"-")?
            }
            Some(st) => write!(w, "{}", st.st_size)?,
            None => {}
        }
        w.write_all(b"</td><td>")?;
        if let Some(st) = st
            && let Ok(secs) = u64::try_from(st.st_mtime)
            && let Some(t) = UNIX_EPOCH.checked_add(Duration::from_secs(secs))
            && let Some(date) = crate::files::http_date(t)
        {
            write!(w, "{date}")?;
        }
        w.write_all(b"</td></tr>\n")
    })();
    w.position() as usize
}

/// `bytes` as HTML text: `& < > " '` as entities, invalid UTF-8 and control
/// characters as U+FFFD; at most about `budget` bytes written (then `…`).
fn write_text(w: &mut impl Write, bytes: &[u8], budget: usize) -> io::Result<()> {
    let mut written = 0usize;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if written >= budget {
                return w.write_all("…".as_bytes());
            }
            let mut utf8 = [0u8; 4];
            let out: &[u8] = match c {
                '&' => b"&amp;",
                '<' => b"&lt;",
                '>' => b"&gt;",
                '"' => b"&quot;",
                '\'' => b"&#39;",
                c if c.is_control() => "\u{FFFD}".as_bytes(),
                c => c.encode_utf8(&mut utf8).as_bytes(),
            };
            w.write_all(out)?;
            written += out.len();
        }
        if !chunk.invalid().is_empty() {
            w.write_all("\u{FFFD}".as_bytes())?;
            written += 3;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        write_text(&mut out, bytes, usize::MAX).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(text(b"<script>alert('x')</script>"), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;");
        assert_eq!(text(b"a\"b&c"), "a&quot;b&amp;c");
        assert_eq!(text(b"new\nline"), "new\u{FFFD}line");
        assert_eq!(text(b"bad\xff\xfe.txt"), "bad\u{FFFD}\u{FFFD}.txt");
        assert_eq!(text("caf\u{e9}".as_bytes()), "caf\u{e9}");
    }

    #[test]
    fn hrefs_keep_only_unreserved_bytes() {
        let href: String = percent_encode(b"a b/c:d\xff<x>.~_-", HREF).collect();
        assert_eq!(href, "a%20b%2Fc%3Ad%FF%3Cx%3E.~_-");
    }

    #[test]
    fn shrinking_keeps_the_smallest_and_bounds_the_rest() {
        let mut pool = Vec::new();
        let mut slots = Vec::new();
        for (i, name) in [&b"d"[..], b"b", b"e", b"a", b"c", b"f"].iter().enumerate() {
            let group = if i == 5 { DIR } else { OTHER };
            slots.push(Slot { start: pool.len() as u32, len: name.len() as u8, group });
            pool.extend_from_slice(name);
        }
        let mut bound = None;
        shrink(&mut pool, &mut slots, &mut bound);
        let mut kept: Vec<_> = slots.iter().map(|s| slot_key(&pool, s)).collect();
        kept.sort();
        // The directory "f" sorts first.
        assert_eq!(kept, vec![(DIR, &b"f"[..]), (OTHER, b"a"), (OTHER, b"b"), (OTHER, b"c")]);
        assert_eq!(bound.as_ref().map(|b| b.get()), Some((OTHER, &b"d"[..])));
        assert_eq!(pool.len(), 4);
    }
}
