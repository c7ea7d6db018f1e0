//! `cargo xtask <task>`: the project's own tasks, written in Rust.
//!
//! - `bench [--quick] [--only <group>...]`: runs the criterion benches and the system
//!   comparisons and writes `target/bench-report/results.json`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use berth_benches::{Better, Row};

mod bench;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench::run(&args[1..]),
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

const USAGE: &str = "usage: cargo xtask bench [--quick] [--only <group>...]";

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

/// Formats one row for the summary printed at the end.
fn summary_line(row: &Row) -> String {
    let dir = match row.better {
        Better::Lower => "lower",
        Better::Higher => "higher",
    };
    format!(
        "{:<40} {:>12.2} {:<18} {:>12.2} {:>7.2}x ({} is better, {})",
        row.bench, row.berth, row.peer, row.peer_value, row.ratio, dir, row.metric
    )
}
