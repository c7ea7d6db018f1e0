//! The committed C header is what cbindgen makes of the current source: this test
//! regenerates it and fails on any difference. After changing the ABI:
//! `BERTH_BLESS=1 cargo test -p berth-ipc-ffi --test header`, then commit
//! `include/berth_ipc.h`.

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not read the crate")
        .write(&mut fresh);
    let path = dir.join("include/berth_ipc.h");
    if std::env::var_os("BERTH_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write the header");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: regenerate it with `BERTH_BLESS=1 cargo test -p berth-ipc-ffi --test header` and commit it",
        path.display()
    );
}
