//! StaticFiles' open-file cache over real sockets: what it keeps, what its fstat
//! sees at once, what only its `valid` time brings, and the switch that turns it off.

mod common;

use std::time::Duration;

use berth_server::StaticFiles;
use common::*;

fn serve_cached(dir: &TempDir, valid: Duration) -> berth_server::Server {
    let files = StaticFiles::new(dir.path()).unwrap().open_file_cache(64, valid);
    builder().serve(files).expect("server starts")
}

/// `d/a.txt` now names another file because its directory was swapped: the served
/// file itself is untouched (same links, same ctime), so nothing a stat of the
/// cached descriptor can see.
fn swap_the_directory(dir: &TempDir) {
    std::fs::rename(dir.path().join("d"), dir.path().join("d.old")).unwrap();
    dir.file("d/a.txt", b"second");
}

#[test]
fn a_cached_path_is_answered_from_its_descriptor_until_valid_ends() {
    let dir = TempDir::new("cache-valid");
    dir.file("d/a.txt", b"first");
    let server = serve_cached(&dir, Duration::from_millis(300));
    let mut s = client(server.local_addr());
    assert_eq!(exchange(&mut s, &req("GET", "/d/a.txt", "")).body, b"first");
    swap_the_directory(&dir);
    // Within its time the entry answers: the old file, by its descriptor.
    let cached = exchange(&mut s, &req("GET", "/d/a.txt", ""));
    assert_eq!(cached.body, b"first", "the path was opened again: no cache");
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(exchange(&mut s, &req("GET", "/d/a.txt", "")).body, b"second", "a stale entry served");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn turned_off_every_request_opens_the_path() {
    let dir = TempDir::new("cache-off");
    dir.file("d/a.txt", b"first");
    let files = StaticFiles::new(dir.path()).unwrap().open_file_cache(0, Duration::from_secs(60));
    let server = builder().serve(files).expect("server starts");
    let mut s = client(server.local_addr());
    assert_eq!(exchange(&mut s, &req("GET", "/d/a.txt", "")).body, b"first");
    swap_the_directory(&dir);
    assert_eq!(exchange(&mut s, &req("GET", "/d/a.txt", "")).body, b"second");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn deleted_or_replaced_files_are_seen_at_once() {
    let dir = TempDir::new("cache-gone");
    dir.file("a.txt", b"first");
    dir.file("b.txt", b"bee");
    let server = serve_cached(&dir, Duration::from_secs(60));
    let mut s = client(server.local_addr());
    assert_eq!(exchange(&mut s, &req("GET", "/a.txt", "")).body, b"first");
    assert_eq!(exchange(&mut s, &req("GET", "/b.txt", "")).body, b"bee");
    // Replaced by a rename: the old file has no link left.
    dir.file("new.txt", b"second!");
    std::fs::rename(dir.path().join("new.txt"), dir.path().join("a.txt")).unwrap();
    let r = exchange(&mut s, &req("GET", "/a.txt", ""));
    assert_eq!(r.body, b"second!");
    // Deleted.
    std::fs::remove_file(dir.path().join("b.txt")).unwrap();
    assert_eq!(exchange(&mut s, &req("GET", "/b.txt", "")).status, 404);
    // Renamed to a hidden name, and one kept by a second link then unlinked: the
    // rename and the unlink change the inode's ctime, so the path is looked up
    // again at once (and `.c.txt` stays hidden).
    dir.file("c.txt", b"sea");
    assert_eq!(exchange(&mut s, &req("GET", "/c.txt", "")).body, b"sea");
    std::fs::rename(dir.path().join("c.txt"), dir.path().join(".c.txt")).unwrap();
    assert_eq!(exchange(&mut s, &req("GET", "/c.txt", "")).status, 404);
    dir.file("e.txt", b"eel");
    assert_eq!(exchange(&mut s, &req("GET", "/e.txt", "")).body, b"eel");
    std::fs::hard_link(dir.path().join("e.txt"), dir.path().join(".e.bak")).unwrap();
    std::fs::remove_file(dir.path().join("e.txt")).unwrap();
    assert_eq!(exchange(&mut s, &req("GET", "/e.txt", "")).status, 404);
    // Written again in place: the new bytes, with a length and tag to match.
    std::fs::write(dir.path().join("a.txt"), b"third, longer").unwrap();
    let again = exchange(&mut s, &req("GET", "/a.txt", ""));
    assert_eq!(again.body, b"third, longer");
    assert_ne!(again.header("etag"), r.header("etag"));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_directory_and_its_index_are_kept_apart() {
    let dir = TempDir::new("cache-dir");
    dir.file("docs/index.html", b"<p>index</p>");
    dir.file("docs/index.html.gz", b"gzipped bytes");
    let files = StaticFiles::new(dir.path()).unwrap().precompressed(true).open_file_cache(64, Duration::from_secs(60));
    let server = builder().serve(files).expect("server starts");
    let mut s = client(server.local_addr());
    for round in 0..2 {
        // The second round is answered from the cache: the index's name (for its
        // type and its sidecar) must come back with it.
        let plain = exchange(&mut s, &req("GET", "/docs/", ""));
        assert_eq!((plain.status, &plain.body[..]), (200, &b"<p>index</p>"[..]), "round {round}");
        assert_eq!(plain.header("content-type"), Some("text/html; charset=utf-8"), "round {round}");
        let gz = exchange(&mut s, &req("GET", "/docs/", "Accept-Encoding: gzip\r\n"));
        assert_eq!(gz.header("content-encoding"), Some("gzip"), "round {round}");
        assert_eq!(gz.body, b"gzipped bytes", "round {round}");
        // Without its slash it is still a redirect, not the cached index.
        let bare = exchange(&mut s, &req("GET", "/docs", ""));
        assert_eq!(bare.status, 301, "round {round}: {}", bare.head);
    }
    std::fs::remove_file(dir.path().join("docs/index.html")).unwrap();
    assert_eq!(exchange(&mut s, &req("GET", "/docs/", "")).status, 404);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn many_paths_stay_within_the_entries_and_every_answer_is_right() {
    let dir = TempDir::new("cache-many");
    for i in 0..300 {
        dir.file(&format!("f{i}.txt"), format!("file {i}").as_bytes());
    }
    let files = StaticFiles::new(dir.path()).unwrap().open_file_cache(16, Duration::from_secs(60));
    let server = builder().serve(files).expect("server starts");
    let mut s = client(server.local_addr());
    for round in 0..3 {
        for i in (0..300).rev().step_by(7).chain(0..300) {
            let r = exchange(&mut s, &req("GET", &format!("/f{i}.txt"), ""));
            assert_eq!(r.body, format!("file {i}").as_bytes(), "round {round}, f{i}.txt");
        }
    }
    // 16 entries (four buckets of four) hold at most 16 descriptors of the 300.
    let open = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        // The files, not the root's own descriptor.
        .filter(|p| p.starts_with(dir.path()) && p != dir.path())
        .count();
    assert!((1..=16).contains(&open), "{open} descriptors beneath the root are open");
    server.shutdown(Duration::from_secs(5)).unwrap();
}
