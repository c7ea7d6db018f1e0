//! `cargo xtask <task>`: the project's own tasks, written in Rust.
//!
//! - `bench [--quick] [--only <group>...]`: runs the criterion benches and the system
//!   comparisons, writes `<target>/bench-report/results.json`, then `report.md` and one
//!   SVG chart per group beside it, and prints the summary with each target met or not.
//!   `<target>` is cargo's target directory, found as cargo finds it (`cargo
//!   metadata`: `CARGO_TARGET_DIR`, `build.target-dir`, else `target/`).
//! - `report`: only the last step, from the `results.json` already there.
//! - `docs [--open|--serve]`: the mdBook and the API docs as one site in `<target>/site`,
//!   with the book's includes and every internal link checked.
//! - `fuzz (--all | <target>...) [--time SECS] | --list`: builds the cargo-fuzz targets
//!   in `fuzz/` on a pinned nightly and runs each for SECS seconds (default 30),
//!   installing the nightly and cargo-fuzz when missing (`fuzz.rs`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bench;
mod docs;
mod fuzz;
mod progress;
mod report;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench::run(&args[1..]),
        Some("report") if args.len() == 1 => target_dir().and_then(|t| bench::write_report(&t.join("bench-report"))),
        Some("docs") => docs::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask bench [--quick] [--only <group>...]
       cargo xtask report
       cargo xtask docs [--open|--serve]
       cargo xtask fuzz (--all | <target>...) [--time SECS]
       cargo xtask fuzz --list";

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_path_buf()
}

/// Runs a command in the workspace root, failing with its status.
fn run_cmd(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.current_dir(root()).status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed: {status}")) }
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Cargo's target directory as cargo itself resolves it (`CARGO_TARGET_DIR`,
/// `build.target-dir` in a config, else `target/` in the workspace): never assume
/// `target/`, or a newcomer's `CARGO_TARGET_DIR` sends results where xtask does not
/// look for them.
fn target_dir() -> Result<PathBuf, String> {
    target_dir_from(&mut metadata_cmd())
}

/// The `target_directory` that `cargo metadata` (run as `cmd`) reports.
fn target_dir_from(cmd: &mut Command) -> Result<PathBuf, String> {
    let v = run_metadata(cmd)?;
    v["target_directory"].as_str().map(PathBuf::from).ok_or_else(|| "cargo metadata: no target_directory".into())
}

/// `cargo metadata` of the workspace (no dependencies), as JSON.
fn metadata() -> Result<serde_json::Value, String> {
    run_metadata(&mut metadata_cmd())
}

fn metadata_cmd() -> Command {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1", "--no-deps"]).current_dir(root());
    cmd
}

fn run_metadata(cmd: &mut Command) -> Result<serde_json::Value, String> {
    let out = cmd.output().map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The target directory follows `CARGO_TARGET_DIR` as cargo does (the newcomer's
    /// `CARGO_TARGET_DIR=/some/dir cargo xtask bench`), and is the workspace's
    /// `target/` without it (unless a cargo config says otherwise).
    ///
    /// Proven by mutation: `target_dir_from` returning `root().join("target")`
    /// fails it.
    #[test]
    fn target_dir_is_where_cargo_puts_it() {
        let elsewhere = std::env::temp_dir().join("berth-xtask-target-dir-test");
        let with_env = target_dir_from(metadata_cmd().env("CARGO_TARGET_DIR", &elsewhere)).unwrap();
        assert_eq!(with_env, elsewhere);
        let without = target_dir_from(metadata_cmd().env_remove("CARGO_TARGET_DIR")).unwrap();
        assert_eq!(without, root().join("target"));
    }
}
