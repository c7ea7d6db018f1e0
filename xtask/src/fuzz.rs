//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (issue #16), on a pinned
//! nightly and a pinned cargo-fuzz, both installed here when missing.
//!
//! - `cargo xtask fuzz --all [--time SECS]`: builds every target in one
//!   `cargo fuzz build`, then runs each for SECS seconds (default 30), one after the
//!   other. What `.ci/run` calls.
//! - `cargo xtask fuzz <target>... [--time SECS]`: the same for the targets named;
//!   longer runs (`--time 600`) are for a developer's machine.
//! - `cargo xtask fuzz --list`: the targets.
//! - `--toolchain NAME` builds on another nightly than the pinned one.
//!
//! Each run reads the committed seeds in `fuzz/corpus/<target>` and writes the
//! inputs it finds to `fuzz/scratch/<target>` (ignored by git); crashes land in
//! `fuzz/artifacts/<target>`. A crash fails the task. When the toolchain or
//! cargo-fuzz cannot be installed (no network), the task prints `SKIPPED` and
//! succeeds, as the miri step of `.ci/run` does.

use std::process::Command;

use crate::{USAGE, cargo, root, run_cmd};

/// The nightly the targets build on unless `--toolchain` names another: the one
/// `.ci/run` pins for miri (a test keeps the two equal).
const NIGHTLY: &str = "nightly-2026-05-20";
/// The cargo-fuzz release installed when another (or none) is found.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Every target in `fuzz/Cargo.toml`, in the order `--all` runs them.
const TARGETS: &[&str] =
    &["ipc_header", "ipc_hostile_peer", "http_request", "path_decode", "http_range", "relay_frames", "buffers"];

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut targets: Vec<&str> = Vec::new();
    let mut secs: u64 = 30;
    let mut toolchain = NIGHTLY.to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--list" => {
                TARGETS.iter().for_each(|t| println!("{t}"));
                return Ok(());
            }
            "--all" => targets.extend(TARGETS),
            "--toolchain" => toolchain = it.next().ok_or("--toolchain needs a name")?.clone(),
            "--time" => {
                secs = it.next().and_then(|s| s.parse().ok()).filter(|&s| s > 0).ok_or("--time needs seconds")?
            }
            t => match TARGETS.iter().find(|&&k| k == t) {
                Some(k) => targets.push(k),
                None => return Err(format!("no fuzz target {t:?} (cargo xtask fuzz --list)\n{USAGE}")),
            },
        }
    }
    if targets.is_empty() {
        return Err(USAGE.into());
    }
    if let Err(why) = tools(&toolchain) {
        println!("SKIPPED fuzz: {why} (no network?); the targets were not run");
        return Ok(());
    }
    let fuzz = root().join("fuzz");
    // One build for every target: sanitizer builds of the server take minutes.
    run_cmd(cargo_fuzz(&toolchain).args(["build", "--fuzz-dir"]).arg(&fuzz))?;
    for t in &targets {
        let scratch = fuzz.join("scratch").join(t);
        std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
        eprintln!("xtask: fuzzing {t} for {secs} s");
        run_cmd(
            cargo_fuzz(&toolchain)
                .args(["run", "--fuzz-dir"])
                .arg(&fuzz)
                .arg(t)
                .arg(&scratch)
                .arg(fuzz.join("corpus").join(t))
                .arg("--")
                .arg(format!("-max_total_time={secs}"))
                .arg("-print_final_stats=1"),
        )
        .map_err(|e| format!("fuzz target {t} failed (its input is in fuzz/artifacts/{t}): {e}"))?;
    }
    Ok(())
}

/// `cargo +TOOLCHAIN fuzz`.
fn cargo_fuzz(toolchain: &str) -> Command {
    // Not `$CARGO`: that is the stable cargo running xtask; rustup's proxy picks the nightly.
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{toolchain}")).arg("fuzz");
    cmd
}

/// Installs the pinned nightly and cargo-fuzz unless they are here; `Err` says which
/// could not be installed.
fn tools(toolchain: &str) -> Result<(), String> {
    let rustup = Command::new("rustup").args(["toolchain", "install", toolchain, "--profile", "minimal"]).status();
    if !rustup.is_ok_and(|s| s.success()) {
        return Err(format!("rustup could not install {toolchain}"));
    }
    let found = cargo_fuzz(toolchain).arg("--version").output().ok().filter(|o| o.status.success());
    let version = found.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    if version.ends_with(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz {CARGO_FUZZ_VERSION} is missing (found {version:?}): installing it (a minute, once)");
    // A debug build: cargo-fuzz only drives cargo and libFuzzer, and compiling it
    // unoptimised takes about 30 s here instead of 50 s.
    run_cmd(cargo().args(["install", "--locked", "--debug", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION]))
        .map_err(|e| format!("cargo install cargo-fuzz {CARGO_FUZZ_VERSION}: {e}"))
}

#[cfg(test)]
mod tests {
    /// `.ci/run` pins one nightly for miri and passes it here; a developer's
    /// `cargo xtask fuzz` uses this file's default. They must not drift apart.
    #[test]
    fn the_default_nightly_is_the_one_ci_pins() {
        let ci = std::fs::read_to_string(crate::root().join(".ci/run")).unwrap();
        assert!(
            ci.contains(&format!("NIGHTLY={}\n", super::NIGHTLY)),
            ".ci/run pins another nightly than {}",
            super::NIGHTLY
        );
    }

    /// `--all` runs every target `fuzz/Cargo.toml` declares: a new one is not left
    /// out of CI.
    #[test]
    fn every_declared_target_is_run() {
        let manifest = std::fs::read_to_string(crate::root().join("fuzz/Cargo.toml")).unwrap();
        let declared: Vec<&str> = manifest
            .split("[[bin]]")
            .skip(1)
            .filter_map(|bin| bin.lines().find_map(|l| l.strip_prefix("name = ")))
            .map(|n| n.trim_matches('"'))
            .collect();
        assert_eq!(declared, super::TARGETS);
    }
}
