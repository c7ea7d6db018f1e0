//! The `results.json` format shared by `cargo xtask bench` and the system benchmarks.
//!
//! Every benchmark that compares berth with a peer produces [`Row`]s. A system
//! benchmark (a binary in this package) measures berth and its peer side by side in
//! one run and calls [`append_rows`]; criterion benches are turned into rows by xtask,
//! which reads criterion's estimates. The file is
//! `{"results":[{"bench":..,"metric":..,"berth":..,"peer":..,"peer_value":..,"ratio":..,"better":..}]}`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod load;
pub mod paired;
pub mod sys_bench;

/// Which direction of a metric is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Smaller is better (latency, CPU time, nanoseconds per op).
    Lower,
    /// Larger is better (throughput).
    Higher,
}

/// One measured comparison of berth with its peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Benchmark id, `group/case/variant`, e.g. `buf/lease_return/shared`.
    pub bench: String,
    /// What was measured, e.g. `ns_per_op`, `gbps`.
    pub metric: String,
    /// berth's value.
    pub berth: f64,
    /// The peer's name, e.g. `vec_4096`.
    pub peer: String,
    /// The peer's value, measured in the same run.
    pub peer_value: f64,
    /// > 1 always means berth wins; see [`ratio`].
    pub ratio: f64,
    /// Which direction is good.
    pub better: Better,
}

impl Row {
    /// A row with its ratio computed from the two values.
    pub fn new(
        bench: impl Into<String>,
        metric: impl Into<String>,
        berth: f64,
        peer: impl Into<String>,
        peer_value: f64,
        better: Better,
    ) -> Row {
        Row {
            bench: bench.into(),
            metric: metric.into(),
            berth,
            peer: peer.into(),
            peer_value,
            ratio: ratio(berth, peer_value, better),
            better,
        }
    }
}

/// `peer / berth` when lower is better, `berth / peer` when higher is better, so a
/// ratio above 1 means berth wins. A zero denominator gives 0 (no claim).
pub fn ratio(berth: f64, peer_value: f64, better: Better) -> f64 {
    let (num, den) = match better {
        Better::Lower => (peer_value, berth),
        Better::Higher => (berth, peer_value),
    };
    if den > 0.0 && num.is_finite() { num / den } else { 0.0 }
}

/// The whole results file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// All rows, in the order they were measured.
    pub results: Vec<Row>,
}

/// `target/bench-report/results.json` under the workspace root, or the path in
/// `BERTH_BENCH_RESULTS` if set (xtask sets it for the benches it runs).
pub fn results_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_BENCH_RESULTS") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    root.join("target/bench-report/results.json")
}

/// Reads a results file; a missing file is an empty result set.
pub fn read_results(path: &Path) -> io::Result<Results> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Results::default()),
        Err(e) => Err(e),
    }
}

/// Adds rows to the results file, replacing earlier rows with the same `bench` id
/// so that re-running one benchmark does not duplicate its rows.
pub fn append_rows(path: &Path, rows: &[Row]) -> io::Result<()> {
    let mut all = read_results(path)?;
    all.results.retain(|old| !rows.iter().any(|new| new.bench == old.bench));
    all.results.extend_from_slice(rows);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(&all).map_err(io::Error::other)?;
    fs::write(path, text + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_above_one_means_berth_wins() {
        assert_eq!(ratio(10.0, 50.0, Better::Lower), 5.0);
        assert_eq!(ratio(2.0, 1.0, Better::Higher), 2.0);
        assert_eq!(ratio(0.0, 1.0, Better::Lower), 0.0);
    }

    #[test]
    fn append_replaces_rows_with_the_same_id() {
        let dir = std::env::temp_dir().join(format!("berth-results-{}", std::process::id()));
        let path = dir.join("results.json");
        let _ = fs::remove_file(&path);
        let a = Row::new("x/a", "ns_per_op", 1.0, "p", 2.0, Better::Lower);
        let b = Row::new("x/b", "ns_per_op", 1.0, "p", 3.0, Better::Lower);
        append_rows(&path, &[a.clone(), b.clone()]).unwrap();
        let a2 = Row::new("x/a", "ns_per_op", 2.0, "p", 2.0, Better::Lower);
        append_rows(&path, std::slice::from_ref(&a2)).unwrap();
        let got = read_results(&path).unwrap();
        assert_eq!(got.results, vec![b, a2]);
        let _ = fs::remove_dir_all(&dir);
    }
}
