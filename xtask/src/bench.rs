//! `cargo xtask bench`: criterion micro-benches turned into peer comparisons, then the
//! system benchmarks, all into one `results.json`, then the report (see [`crate::report`]).

use std::fs;
use std::path::Path;

use berth_benches::{Better, Row, append_rows, read_results};

use crate::progress::Stages;
use crate::{USAGE, cargo, report, root, target_dir};

/// A criterion bench compared with its peer: both ids are measured in the same run.
struct Pair {
    group: &'static str,
    berth: &'static str,
    peer_id: &'static str,
    peer: &'static str,
}

/// Criterion bench targets (in `benches/benches/`) and the comparisons drawn from them.
const CRITERION_BENCHES: &[&str] = &["buf", "ops"];
const PAIRS: &[Pair] = &[
    Pair { group: "buf", berth: "buf/lease_return/shared", peer_id: "buf/lease_return/vec_4096", peer: "vec_4096" },
    Pair {
        group: "buf",
        berth: "buf/lease_return/shared_list",
        peer_id: "buf/lease_return/vec_4096",
        peer: "vec_4096",
    },
    Pair { group: "buf", berth: "buf/lease_return/local", peer_id: "buf/lease_return/vec_4096", peer: "vec_4096" },
    Pair {
        group: "buf",
        berth: "buf/lease_return/contended_2threads",
        peer_id: "buf/lease_return/vec_4096_2threads",
        peer: "vec_4096_2threads",
    },
    Pair { group: "ops", berth: "ops/take_give/pool", peer_id: "ops/take_give/box", peer: "box" },
];

/// System benchmarks: binaries of `berth-benches` that measure berth and a peer side
/// by side and append their own rows (see `berth_benches::append_rows`). Each gets
/// `--quick` when xtask does, and `BERTH_BENCH_RESULTS` pointing at the results file.
/// (group, binary name, its arguments: one binary may serve several groups)
const SYSTEM_BENCHES: &[(&str, &str, &[&str])] = &[
    ("sendfile", "sendfile_bench", &[]),
    ("echo", "echo_bench", &[]),
    ("ipc", "ipc_bench", &[]),
    ("files", "files_bench", &[]),
    ("relay", "relay_bench", &[]),
    ("udp", "udp_bench", &["--case", "udp"]),
    ("unix", "udp_bench", &["--case", "unix"]),
];

/// Groups that belong in the report but have no benchmark in xtask yet, and why.
const NOT_YET: &[(&str, &str)] = &[];

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut quick = false;
    let mut only: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => only.push(it.next().ok_or(USAGE)?.clone()),
            _ => return Err(USAGE.into()),
        }
    }
    let known: Vec<&str> = CRITERION_BENCHES
        .iter()
        .copied()
        .chain(SYSTEM_BENCHES.iter().map(|&(g, _, _)| g))
        .chain(NOT_YET.iter().map(|&(g, _)| g))
        .collect();
    if let Some(bad) = only.iter().find(|o| !known.contains(&o.as_str())) {
        return Err(format!("--only {bad}: no such group (groups: {})", known.join(", ")));
    }
    let wanted = |group: &str| only.is_empty() || only.iter().any(|o| o == group);

    let target = target_dir()?;
    let report = target.join("bench-report");
    fs::create_dir_all(&report).map_err(|e| e.to_string())?;

    let criterion: Vec<&str> = CRITERION_BENCHES.iter().copied().filter(|b| wanted(b)).collect();
    let system: Vec<(&str, &str, &[&str])> = SYSTEM_BENCHES.iter().copied().filter(|(g, _, _)| wanted(g)).collect();
    let mut stages = Stages::new(criterion.len() + system.len() + 1, &report.join("logs"));
    let unwanted: Vec<&str> = known.iter().copied().filter(|g| !wanted(g)).collect();
    if !unwanted.is_empty() {
        stages.skip(&unwanted.join(", "), &format!("not asked for (--only {})", only.join(" --only ")));
    }
    for &(group, why) in NOT_YET.iter().filter(|(g, _)| wanted(g)) {
        stages.skip(group, why);
    }

    let result = run_stages(&mut stages, &criterion, &system, quick, &target);
    // The bars go before anything else is printed.
    let recap = stages.finish();
    if let Ok(rendered) = &result {
        print_report(&report, rendered);
    }
    eprint!("{recap}");
    result.map(drop)
}

fn run_stages(
    stages: &mut Stages,
    criterion: &[&str],
    system: &[(&str, &str, &[&str])],
    quick: bool,
    target: &Path,
) -> Result<report::Report, String> {
    let report = &target.join("bench-report");
    let results = report.join("results.json");
    for &bench in criterion {
        let mut cmd = cargo();
        cmd.args(["bench", "-p", "berth-benches", "--bench", bench, "--"]);
        if quick {
            cmd.args(["--warm-up-time", "0.5", "--measurement-time", "1", "--sample-size", "20"]);
        }
        stages.run(&format!("criterion bench {bench}"), &mut cmd, &root())?;
        // criterion writes under the same target directory (it asks cargo too).
        let rows = criterion_rows(&target.join("criterion"), bench)?;
        append_rows(&results, &rows).map_err(|e| e.to_string())?;
    }

    for &(group, bin, args) in system {
        let mut cmd = cargo();
        cmd.args(["run", "--release", "-p", "berth-benches", "--bin", bin, "--"]).args(args);
        if quick {
            cmd.arg("--quick");
        }
        cmd.env("BERTH_BENCH_RESULTS", &results);
        stages.run(&format!("system bench {group} ({bin})"), &mut cmd, &root())?;
    }

    stages.step("report", || render_report(report))
}

/// Renders `results.json` in `dir` into `report.md` and one SVG per group beside it,
/// and prints the summary. `cargo xtask report` runs only this.
pub(crate) fn write_report(dir: &Path) -> Result<(), String> {
    let rendered = render_report(dir)?;
    print_report(dir, &rendered);
    Ok(())
}

fn render_report(dir: &Path) -> Result<report::Report, String> {
    let results = dir.join("results.json");
    let all = read_results(&results).map_err(|e| format!("{}: {e}", results.display()))?;
    if all.results.is_empty() {
        return Err(format!("{}: no results yet; run `cargo xtask bench --quick`", results.display()));
    }
    let rendered = report::render(&all, &report::Machine::detect());
    report::write(dir, &rendered)?;
    Ok(rendered)
}

fn print_report(dir: &Path, rendered: &report::Report) {
    print!("{}", rendered.summary);
    println!("written: {} and {} charts beside it", dir.join("report.md").display(), rendered.charts.len());
}

/// Rows for the pairs of one criterion bench target, from criterion's estimates.
fn criterion_rows(criterion_dir: &Path, group: &str) -> Result<Vec<Row>, String> {
    PAIRS
        .iter()
        .filter(|p| p.group == group)
        .map(|p| {
            let berth = criterion_mean_ns(criterion_dir, p.berth)?;
            let peer = criterion_mean_ns(criterion_dir, p.peer_id)?;
            Ok(Row::new(p.berth, "ns_per_op", berth, p.peer, peer, Better::Lower))
        })
        .collect()
}

/// The mean time per iteration, in nanoseconds, that criterion recorded for `id`.
/// A bench `buf/lease_return/shared` is group `buf/lease_return`, function `shared`;
/// criterion stores it under `target/criterion/buf_lease_return/shared/new/estimates.json`.
fn criterion_mean_ns(criterion_dir: &Path, id: &str) -> Result<f64, String> {
    let (group, function) = id.rsplit_once('/').unwrap_or(("", id));
    let path = criterion_dir.join(group.replace('/', "_")).join(function).join("new/estimates.json");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    v["mean"]["point_estimate"].as_f64().ok_or_else(|| format!("{}: no mean.point_estimate", path.display()))
}
