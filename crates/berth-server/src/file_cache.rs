//! The open-file cache of [`StaticFiles`](crate::StaticFiles): per worker, the
//! descriptor and content type of recently served paths, so a request for one of
//! them costs one `statx` of the descriptor instead of `openat2`, `statx` and
//! `close` (on loopback, the open and close are a sixth of a small file's CPU time).
//!
//! The caller checks each hit with that `statx`: an inode whose change time moved
//! since it was opened (written, renamed, linked, unlinked, chmod-ed) or that has no
//! link left is [forgotten](FileCache::forget) and looked up again. What leaves the
//! file untouched — a directory or symlink on its path renamed or retargeted, an
//! index file appearing — is seen once the entry is [`valid`](FileCache::new) old:
//! the next request opens the path again (with the same `RESOLVE_BENEATH` rules)
//! and replaces it. The table is fixed at the worker's start (set-associative, four ways per
//! bucket, least recently used out), so a hit allocates nothing and a miss only the
//! `Arc` of its descriptor (and its key's room, the first time a slot holds a path
//! that long). Each lookup also looks at one more slot in turn and closes it if it
//! outlived `valid`, so descriptors of files deleted since are not kept long while
//! requests flow.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Slots per bucket.
const WAYS: usize = 4;
/// The most entries one worker's cache takes (more is clamped).
pub(crate) const MAX_ENTRIES: usize = 1 << 16;

/// What the cache knows of a path.
#[derive(Clone)]
pub(crate) struct Cached {
    /// The file, shared with every reply that is sending it.
    pub(crate) file: Arc<File>,
    /// The content type, from the name that was opened (an index file's, for a
    /// directory).
    pub(crate) content_type: &'static str,
    /// Which of the index names was served, for a directory (its sidecars are
    /// beside it).
    pub(crate) index: Option<usize>,
    /// The inode's change time when it was opened: a rename (to a hidden name, out
    /// of the root), a link or unlink, a chmod or a write changes it, and the path is
    /// then looked up again.
    pub(crate) ctime: (i64, i64),
}

struct Slot {
    hash: u64,
    /// The decoded path, and whether the request ended it with a slash (`dir` is a
    /// redirect, `dir/` its index).
    key: Vec<u8>,
    slash: bool,
    /// When it was opened.
    opened: Instant,
    /// The cache's clock at its last use: the least recent of a bucket goes first.
    used: u64,
    entry: Option<Cached>,
}

/// One worker's open-file cache.
pub(crate) struct FileCache {
    slots: Vec<Slot>,
    buckets: usize,
    valid: Duration,
    clock: u64,
    /// The next slot the sweep looks at.
    hand: usize,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
}

impl FileCache {
    /// Room for `entries` paths (at most [`MAX_ENTRIES`], rounded down to buckets
    /// of four, a power of two of them, at least one), each trusted for `valid`.
    pub(crate) fn new(entries: usize, valid: Duration) -> FileCache {
        let wanted = entries.clamp(WAYS, MAX_ENTRIES) / WAYS;
        let buckets = 1usize << wanted.ilog2();
        let now = Instant::now();
        let slots = (0..buckets * WAYS)
            .map(|_| Slot { hash: 0, key: Vec::new(), slash: false, opened: now, used: 0, entry: None })
            .collect();
        FileCache { slots, buckets, valid, clock: 0, hand: 0, hits: 0, misses: 0 }
    }

    /// The entry for `path` (with its trailing slash or not), if it is there and
    /// still within its time. `Err` otherwise, with the descriptor's `Arc` of an
    /// entry that outlived its time: [`share`] reuses it for the path's new
    /// descriptor, so reopening a path once a `valid` allocates nothing.
    pub(crate) fn get(&mut self, path: &[u8], slash: bool, now: Instant) -> Result<Cached, Option<Arc<File>>> {
        let found = self.lookup(path, slash, now);
        // After the lookup: a stale entry of this path goes back to the caller.
        self.sweep(now);
        found
    }

    fn lookup(&mut self, path: &[u8], slash: bool, now: Instant) -> Result<Cached, Option<Arc<File>>> {
        let hash = hash(path, slash);
        let base = self.bucket(hash);
        self.clock += 1;
        for slot in &mut self.slots[base..base + WAYS] {
            if slot.entry.is_some() && slot.hash == hash && slot.slash == slash && slot.key == path {
                if now.duration_since(slot.opened) >= self.valid {
                    // Opened again by the caller, and put back.
                    self.misses += 1;
                    return Err(slot.entry.take().map(|e| e.file));
                }
                slot.used = self.clock;
                self.hits += 1;
                return slot.entry.clone().ok_or(None);
            }
        }
        self.misses += 1;
        Err(None)
    }

    /// Keeps `entry` for `path`, in place of the bucket's stale, empty or least
    /// recently used slot.
    pub(crate) fn insert(&mut self, path: &[u8], slash: bool, entry: Cached, now: Instant) {
        let hash = hash(path, slash);
        let base = self.bucket(hash);
        self.clock += 1;
        let bucket = &mut self.slots[base..base + WAYS];
        // The path's own slot, even emptied (a stale entry handed back): its key has
        // the room already.
        let same = bucket.iter().position(|s| s.hash == hash && s.slash == slash && s.key == path);
        let free = || bucket.iter().position(|s| s.entry.is_none());
        let i = same.or_else(free).unwrap_or_else(|| {
            // Every way is taken: the least recently used goes.
            (0..WAYS).min_by_key(|&i| bucket[i].used).unwrap_or(0)
        });
        let slot = &mut bucket[i];
        slot.hash = hash;
        slot.key.clear();
        slot.key.extend_from_slice(path);
        slot.slash = slash;
        slot.opened = now;
        slot.used = self.clock;
        slot.entry = Some(entry);
    }

    /// Drops the entry for `path`, if there is one (its file is gone).
    pub(crate) fn forget(&mut self, path: &[u8], slash: bool) {
        let hash = hash(path, slash);
        let base = self.bucket(hash);
        for slot in &mut self.slots[base..base + WAYS] {
            if slot.hash == hash && slot.slash == slash && slot.key == path {
                slot.entry = None;
            }
        }
    }

    /// Entries held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.entry.is_some()).count()
    }

    /// Closes the slot under the hand if it outlived its time, and moves the hand.
    fn sweep(&mut self, now: Instant) {
        let slot = &mut self.slots[self.hand];
        if slot.entry.is_some() && now.duration_since(slot.opened) >= self.valid {
            slot.entry = None;
        }
        self.hand = (self.hand + 1) % self.slots.len();
    }

    fn bucket(&self, hash: u64) -> usize {
        // The high bits: the multiply below mixes upwards.
        ((hash >> 32) as usize & (self.buckets - 1)) * WAYS
    }
}

/// `file` behind an `Arc`: `old`'s, when nothing else holds it (no reply is still
/// sending its file), else a new one.
pub(crate) fn share(old: Option<Arc<File>>, file: File) -> Arc<File> {
    match old {
        Some(mut arc) => match Arc::get_mut(&mut arc) {
            Some(slot) => {
                *slot = file;
                arc
            }
            None => Arc::new(file),
        },
        None => Arc::new(file),
    }
}

/// A multiply-rotate hash of the path, eight bytes at a time (not keyed: a client
/// choosing paths that collide only pushes its own paths out of one bucket).
fn hash(path: &[u8], slash: bool) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (path.len() as u64) ^ u64::from(slash) << 63;
    let mut chunks = path.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    h ^ h >> 29
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: &Arc<File>) -> Cached {
        Cached { file: file.clone(), content_type: "text/plain", index: None, ctime: (0, 0) }
    }

    fn some_file() -> Arc<File> {
        Arc::new(File::open("Cargo.toml").unwrap())
    }

    #[test]
    fn hits_within_its_time_and_not_after() {
        let mut cache = FileCache::new(16, Duration::from_secs(1));
        let file = some_file();
        let t0 = Instant::now();
        assert!(cache.get(b"a.txt", false, t0).is_err());
        cache.insert(b"a.txt", false, entry(&file), t0);
        let hit = cache.get(b"a.txt", false, t0 + Duration::from_millis(999)).expect("a hit within its time");
        assert!(Arc::ptr_eq(&hit.file, &file));
        assert!(cache.get(b"a.txt", false, t0 + Duration::from_secs(1)).is_err(), "stale entry served");
        // The stale entry let its descriptor go.
        assert_eq!(Arc::strong_count(&file), 2, "only `file` and `hit` hold it");
        assert_eq!((cache.hits, cache.misses), (1, 2));
        cache.insert(b"a.txt", false, entry(&file), t0);
        cache.forget(b"a.txt", false);
        assert!(cache.get(b"a.txt", false, t0).is_err(), "a forgotten entry served");
        assert_eq!(Arc::strong_count(&file), 2);
    }

    #[test]
    fn the_trailing_slash_and_every_byte_count() {
        let mut cache = FileCache::new(16, Duration::from_secs(60));
        let file = some_file();
        let now = Instant::now();
        cache.insert(b"dir", true, entry(&file), now);
        assert!(cache.get(b"dir", false, now).is_err(), "`dir` answered as `dir/`");
        assert!(cache.get(b"dir", true, now).is_ok());
        assert!(cache.get(b"dis", true, now).is_err());
        assert!(cache.get(b"dir2", true, now).is_err());
        assert!(cache.get(b"di", true, now).is_err());
    }

    #[test]
    fn stays_within_its_slots_and_drops_the_least_recently_used() {
        let mut cache = FileCache::new(4, Duration::from_secs(60));
        assert_eq!(cache.slots.len(), 4, "one bucket");
        let file = some_file();
        let now = Instant::now();
        for name in [b"a", b"b", b"c", b"d"] {
            cache.insert(name, false, entry(&file), now);
        }
        // `a` was used last, so `b` is the least recent when `e` comes.
        assert!(cache.get(b"a", false, now).is_ok());
        cache.insert(b"e", false, entry(&file), now);
        assert_eq!(cache.len(), 4);
        assert!(cache.get(b"b", false, now).is_err(), "the least recently used stayed");
        for name in [b"a", b"c", b"d", b"e"] {
            assert!(cache.get(name, false, now).is_ok());
        }
        // Inserting a path that is there replaces it, never takes a second slot.
        cache.insert(b"e", false, entry(&file), now);
        assert_eq!(cache.len(), 4);
        for i in 0..1000u32 {
            cache.insert(&i.to_le_bytes(), false, entry(&file), now);
        }
        assert_eq!(cache.len(), 4);
        assert_eq!(Arc::strong_count(&file), 5, "four slots and `file`");
    }

    #[test]
    fn the_sweep_closes_stale_entries_of_other_paths() {
        let mut cache = FileCache::new(64, Duration::from_secs(1));
        let file = some_file();
        let t0 = Instant::now();
        for i in 0..64u32 {
            cache.insert(&i.to_le_bytes(), false, entry(&file), t0);
        }
        let held = cache.len();
        assert!(held > 32, "{held}");
        let later = t0 + Duration::from_secs(2);
        for _ in 0..cache.slots.len() {
            let _ = cache.get(b"other", false, later);
        }
        assert_eq!(cache.len(), 0);
        assert_eq!(Arc::strong_count(&file), 1);
    }

    #[test]
    fn sizes_round_down_and_are_clamped() {
        let size = |n| FileCache::new(n, Duration::from_secs(1)).slots.len();
        assert_eq!(size(0), 4);
        assert_eq!(size(256), 256);
        assert_eq!(size(300), 256);
        assert_eq!(size(usize::MAX), MAX_ENTRIES);
    }

    #[test]
    fn paths_spread_over_the_buckets() {
        let cache = FileCache::new(1024, Duration::from_secs(1));
        let mut used = vec![0u32; cache.buckets];
        for i in 0..4096 {
            let path = format!("static/img/photo-{i}.jpg");
            used[cache.bucket(hash(path.as_bytes(), false)) / WAYS] += 1;
        }
        let max = used.iter().copied().max().unwrap();
        // 4096 paths over 256 buckets: 16 each on average.
        assert!(max <= 40, "a bucket took {max} of 4096 paths");
    }

    #[test]
    fn a_stale_entry_lends_its_arc_to_the_new_descriptor_when_no_reply_holds_it() {
        let mut cache = FileCache::new(16, Duration::from_secs(1));
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        cache.insert(b"a", false, entry(&some_file()), t0);
        let Err(Some(stale)) = cache.get(b"a", false, later) else { panic!("no stale Arc handed back") };
        let at = Arc::as_ptr(&stale);
        let reused = share(Some(stale), File::open("Cargo.toml").unwrap());
        assert_eq!(Arc::as_ptr(&reused), at, "a new Arc for a stale entry nobody held");
        // A reply still sending the old file keeps it: the new descriptor gets its own.
        let sending = reused.clone();
        let fresh = share(Some(reused), File::open("Cargo.toml").unwrap());
        assert!(!Arc::ptr_eq(&fresh, &sending));
        assert_eq!(Arc::strong_count(&sending), 1);
    }
}
