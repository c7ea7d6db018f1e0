//! `cargo xtask <task>`: the project's own tasks, written in Rust.
//!
//! - `bench [--quick] [--only <group>...]`: runs the criterion benches and the system
//!   comparisons, writes `target/bench-report/results.json`, then `report.md` and one
//!   SVG chart per group beside it, and prints the summary with each target met or not.
//! - `report`: only the last step, from the `results.json` already there.
//! - `docs [--open|--serve]`: the mdBook and the API docs as one site in `target/site`,
//!   with the book's includes and every internal link checked.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bench;
mod docs;
mod progress;
mod report;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench::run(&args[1..]),
        Some("report") if args.len() == 1 => bench::write_report(&root().join("target/bench-report")),
        Some("docs") => docs::run(&args[1..]),
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
       cargo xtask docs [--open|--serve]";

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
