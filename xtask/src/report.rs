//! The benchmark report: `results.json` (plus the machine it ran on) turned into
//! `report.md`, one SVG chart per group and the summary printed at the end of
//! `cargo xtask bench`. Everything here is a pure function of its inputs, so it is
//! tested on a fixed results file; reading `/proc` and writing files live in
//! [`Machine::detect`] and [`write()`].

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use berth_benches::{Better, Results, Row};

/// One condition a row must meet. Conditions on berth's own value use the row's
/// metric as the unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Goal {
    /// `ratio ≥ x` (a ratio above 1 always means berth wins).
    Ratio(f64),
    /// berth's value ≤ x.
    AtMost(f64),
    /// berth's value ≥ x.
    AtLeast(f64),
    /// berth's value ≤ x × the peer's value (CPU, memory: lower is better).
    PeerFraction(f64),
}

/// The targets of the rows whose bench id matches `pattern` (`*` is one path segment).
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) pattern: &'static str,
    pub(crate) goals: &'static [Goal],
}

/// DESIGN.md's benchmark table and the per-row targets of issues 2 to 6. A row that
/// matches no pattern is reported as having no target.
pub(crate) const TARGETS: &[Target] = &[
    // Issue 2: shared ≤ 20 ns and ≥ 5× `vec_4096`; local ≤ 5 ns; take + give ≤ 10 ns.
    Target { pattern: "buf/lease_return/shared", goals: &[Goal::AtMost(20.0), Goal::Ratio(5.0)] },
    Target { pattern: "buf/lease_return/local", goals: &[Goal::AtMost(5.0)] },
    Target { pattern: "ops/take_give/pool", goals: &[Goal::AtMost(10.0)] },
    // Issue 3: sender CPU per GB ≤ 0.6× the copy loop; throughput ≥ 0.95× it.
    Target { pattern: "sendfile/1GiB/sender_cpu_s_per_gb", goals: &[Goal::PeerFraction(0.6)] },
    Target { pattern: "sendfile/1GiB/gbps", goals: &[Goal::Ratio(0.95)] },
    // Issue 4: ≥ 1.15× tokio msgs/s, ≤ 0.9× its CPU per message, idle RSS ≤ 0.25× its.
    Target { pattern: "echo/*/64conns/msgs_per_s", goals: &[Goal::Ratio(1.15)] },
    Target { pattern: "echo/*/64conns/server_cpu_us_per_msg", goals: &[Goal::PeerFraction(0.9)] },
    Target { pattern: "echo/idle15k/rss_mib", goals: &[Goal::PeerFraction(0.25)] },
    // Issue 14 (io_uring driver): ≤ 0.9× tokio's CPU per message at 256 connections,
    // ≤ 1.0× berth on epoll at every count, ≤ 0.1 syscalls per message.
    Target { pattern: "echo/64B/256conns/server_cpu_us_per_msg", goals: &[Goal::PeerFraction(0.9)] },
    Target { pattern: "echo/64B/*/server_cpu_us_per_msg_vs_epoll", goals: &[Goal::PeerFraction(1.0)] },
    Target { pattern: "echo/64B/64conns/syscalls_per_msg", goals: &[Goal::AtMost(0.1)] },
    Target { pattern: "echo/64B/64conns/server_cpu_us_per_msg_vs_compio", goals: &[Goal::PeerFraction(1.0)] },
    // Issue 19 (berth-async): the async echo uses no more CPU per message than tokio
    // or compio, and at most ~5% more than the same echo on the raw port.
    Target { pattern: "echo_async/64B/64conns/server_cpu_us_per_msg", goals: &[Goal::Ratio(1.0)] },
    Target { pattern: "echo_async/64B/64conns/server_cpu_us_per_msg_vs_port", goals: &[Goal::Ratio(0.95)] },
    Target { pattern: "echo_async/64B/64conns/server_cpu_us_per_msg_vs_compio", goals: &[Goal::Ratio(1.0)] },
    // Issue 5: RTT p50 ≤ 300 ns and ≥ 50× the socketpair; ≥ 50 M msgs/s at 64 B;
    // ≥ 40% of memcpy at 64 KiB; a blocked receiver ~0% CPU (read as ≤ 1%).
    Target { pattern: "ipc/rtt_64B/p50_ns", goals: &[Goal::AtMost(300.0), Goal::Ratio(50.0)] },
    Target { pattern: "ipc/throughput_64B/msgs_per_s", goals: &[Goal::AtLeast(50e6)] },
    Target { pattern: "ipc/throughput_64KiB/gbps", goals: &[Goal::Ratio(0.4)] },
    Target { pattern: "ipc/idle_blocked/cpu_percent", goals: &[Goal::AtMost(1.0)] },
    // Issue 18: batches ≥ 1.5× one message at a time; a round trip with both ends
    // asleep in epoll on the wake descriptors no slower than a socket pair's.
    Target { pattern: "ipc/throughput_64B_batch/msgs_per_s", goals: &[Goal::Ratio(1.5)] },
    Target { pattern: "ipc/rtt_64B_wakefd/p50_us", goals: &[Goal::Ratio(1.0)] },
    // And the relay on the workers' ports: a round trip through the backend at
    // least 0.9× as fast as a direct TCP echo.
    Target { pattern: "relay/64B/rtt_p50_us", goals: &[Goal::Ratio(0.9)] },
    // Issue 6: ≥ 1.0× nginx requests/s at each file size.
    Target { pattern: "files/*/req_per_s", goals: &[Goal::Ratio(1.0)] },
    // Issue 17: ≤ 0.7× the CPU per request of nginx with open_file_cache (the
    // logged row is under files/*/req_per_s above: ≥ 1.0×).
    Target { pattern: "files/1KiB/server_cpu_us_per_req", goals: &[Goal::PeerFraction(0.7)] },
    // Issue 15: UDP echo ≥ 1.15× tokio's datagrams/s at ≤ 0.8× its CPU per datagram;
    // echo over a Unix stream socket ≥ 1.0× tokio's messages/s.
    Target { pattern: "udp/64B/msgs_per_s", goals: &[Goal::Ratio(1.15)] },
    Target { pattern: "udp/64B/server_cpu_us_per_msg", goals: &[Goal::PeerFraction(0.8)] },
    Target { pattern: "unix/64B/64conns/msgs_per_s", goals: &[Goal::Ratio(1.0)] },
];

/// The machine a run measured: it heads the report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Machine {
    pub(crate) cores: usize,
    pub(crate) kernel: String,
    pub(crate) cpu: String,
}

impl Machine {
    /// This machine, from `/proc` (fields it cannot read say "unknown").
    pub(crate) fn detect() -> Machine {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine { cores, kernel, cpu }
    }
}

/// Whether a row met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Met,
    NotMet,
    NoTarget,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "NOT MET",
            Status::NoTarget => "no target",
        }
    }
}

/// The goals for a bench id, if any pattern matches it.
pub(crate) fn goals_for(bench: &str) -> Option<&'static [Goal]> {
    TARGETS.iter().find(|t| pattern_matches(t.pattern, bench)).map(|t| t.goals)
}

fn pattern_matches(pattern: &str, id: &str) -> bool {
    let (mut p, mut i) = (pattern.split('/'), id.split('/'));
    loop {
        match (p.next(), i.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == "*" || a == b => {}
            _ => return false,
        }
    }
}

fn goal_met(goal: Goal, row: &Row) -> bool {
    match goal {
        Goal::Ratio(x) => row.ratio >= x,
        Goal::AtMost(x) => row.berth <= x,
        Goal::AtLeast(x) => row.berth >= x,
        Goal::PeerFraction(f) => row.peer_value > 0.0 && row.berth <= f * row.peer_value,
    }
}

/// Met when every goal holds; a row without goals has no target.
pub(crate) fn status(row: &Row) -> Status {
    match goals_for(&row.bench) {
        None | Some([]) => Status::NoTarget,
        Some(goals) if goals.iter().all(|&g| goal_met(g, row)) => Status::Met,
        Some(_) => Status::NotMet,
    }
}

/// The ratio a row must reach to meet its target, where the goals translate into one
/// (`berth ≤ 20 ns` against a 55 ns peer is `ratio ≥ 2.75`): the chart's marker.
fn ratio_threshold(row: &Row) -> Option<f64> {
    let goals = goals_for(&row.bench)?;
    goals
        .iter()
        .filter_map(|&g| match (g, row.better) {
            (Goal::Ratio(x), _) => Some(x),
            (Goal::AtMost(x), Better::Lower) if x > 0.0 => Some(row.peer_value / x),
            (Goal::AtLeast(x), Better::Higher) if row.peer_value > 0.0 => Some(x / row.peer_value),
            (Goal::PeerFraction(f), Better::Lower) if f > 0.0 => Some(1.0 / f),
            _ => None,
        })
        .filter(|x| x.is_finite() && *x > 0.0)
        .reduce(f64::max)
}

/// `ratio ≥ 5, berth ≤ 20 ns`, or `—` without a target.
pub(crate) fn describe_target(row: &Row) -> String {
    let Some(goals) = goals_for(&row.bench).filter(|g| !g.is_empty()) else {
        return "—".into();
    };
    let unit = unit(&row.metric);
    let parts: Vec<String> = goals
        .iter()
        .map(|&g| match g {
            Goal::Ratio(x) => format!("ratio ≥ {}", num(x)),
            Goal::AtMost(x) => format!("berth ≤ {}{unit}", num(x)),
            Goal::AtLeast(x) => format!("berth ≥ {}{unit}", num(x)),
            Goal::PeerFraction(f) => format!("berth ≤ {}× peer", num(f)),
        })
        .collect();
    parts.join(", ")
}

/// A short unit for a metric name, with its leading space.
fn unit(metric: &str) -> &'static str {
    match metric {
        "ns_per_op" | "p50_ns" => " ns",
        "msgs_per_s" => " msgs/s",
        "req_per_s" => " req/s",
        "gbps" => " GB/s",
        "cpu_percent" => " %",
        "rss_mib" => " MiB",
        "server_cpu_us_per_msg" | "rtt_p50_us" => " µs",
        "cpu_s_per_gb" => " s/GB",
        _ => "",
    }
}

/// Three significant digits; millions as `M`.
pub(crate) fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.abs() >= 1e6 {
        return format!("{} M", num(v / 1e6));
    }
    if v == 0.0 {
        return "0".into();
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (2 - magnitude).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    // 20.0 → 20, 0.950 → 0.95: trailing zeros say nothing.
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// The group of a bench id: its first segment.
pub(crate) fn group_of(bench: &str) -> &str {
    bench.split('/').next().unwrap_or(bench)
}

/// Groups in the order their first row was measured, each with its rows.
fn groups(results: &Results) -> Vec<(&str, Vec<&Row>)> {
    let mut out: Vec<(&str, Vec<&Row>)> = Vec::new();
    for row in &results.results {
        let g = group_of(&row.bench);
        match out.iter_mut().find(|(name, _)| *name == g) {
            Some((_, rows)) => rows.push(row),
            None => out.push((g, vec![row])),
        }
    }
    out
}

/// The report: markdown, one chart per group and the console summary.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Report {
    /// `report.md`; charts are linked as `<group>.svg` beside it.
    pub(crate) markdown: String,
    /// `(group, svg)`: written as `<group>.svg`.
    pub(crate) charts: Vec<(String, String)>,
    /// The table printed at the end of `cargo xtask bench`.
    pub(crate) summary: String,
}

/// Renders the whole report. Pure: the same inputs give the same bytes.
pub(crate) fn render(results: &Results, machine: &Machine) -> Report {
    let mut md = String::new();
    let _ = writeln!(md, "# berth benchmark report\n");
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "- cores: {}", machine.cores);
    let _ = writeln!(md, "- kernel: {}", machine.kernel);
    let _ = writeln!(md, "- CPU: {}\n", machine.cpu);
    let _ = writeln!(
        md,
        "Each berth figure was measured side by side with its peer in the same run. \
         `ratio` above 1 means berth won (peer / berth when lower is better, berth / peer \
         when higher is better).\n"
    );
    let (met, not_met, untargeted) = counts(results);
    let _ = writeln!(md, "Targets met: {met} of {} ({untargeted} rows without a target).\n", met + not_met);

    let mut charts = Vec::new();
    for (group, rows) in groups(results) {
        let _ = writeln!(md, "## {group}\n");
        let _ = writeln!(md, "![{group}: ratio per row, with its target]({group}.svg)\n");
        let _ = writeln!(md, "| bench | metric | berth | peer | peer value | ratio | target | met |");
        let _ = writeln!(md, "| --- | --- | ---: | --- | ---: | ---: | --- | --- |");
        for row in &rows {
            let status = match status(row) {
                Status::NotMet => "**not met**",
                s => s.label(),
            };
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} | {}× | {} | {} |",
                row.bench,
                row.metric,
                num(row.berth),
                row.peer,
                num(row.peer_value),
                num(row.ratio),
                describe_target(row),
                status
            );
        }
        md.push('\n');
        charts.push((group.to_string(), chart(group, &rows)));
    }
    Report { markdown: md, charts, summary: summary(results) }
}

fn counts(results: &Results) -> (usize, usize, usize) {
    let (mut met, mut not_met, mut none) = (0, 0, 0);
    for row in &results.results {
        match status(row) {
            Status::Met => met += 1,
            Status::NotMet => not_met += 1,
            Status::NoTarget => none += 1,
        }
    }
    (met, not_met, none)
}

/// The console table: one line per row, with its target and whether it was met.
pub(crate) fn summary(results: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<38} {:>10} {:<18} {:>10} {:>8}  {:<28} status",
        "bench", "berth", "peer", "peer", "ratio", "target"
    );
    for row in &results.results {
        let _ = writeln!(
            s,
            "{:<38} {:>10} {:<18} {:>10} {:>8}  {:<28} {}",
            row.bench,
            num(row.berth),
            row.peer,
            num(row.peer_value),
            format!("{}x", num(row.ratio)),
            describe_target(row),
            status(row).label()
        );
    }
    let (met, not_met, none) = counts(results);
    let _ = writeln!(s, "targets met: {met} of {}; {none} rows without a target", met + not_met);
    s
}

/// A horizontal bar chart of one group's ratios on a log scale: each bar runs from
/// parity (1) to the row's ratio, green when its target is met, red when not, grey
/// without a target; a dark tick marks the ratio the target needs.
pub(crate) fn chart(group: &str, rows: &[&Row]) -> String {
    const LABEL_W: f64 = 300.0;
    const PLOT_W: f64 = 360.0;
    const VALUE_W: f64 = 130.0;
    const ROW_H: f64 = 30.0;
    const TOP: f64 = 40.0;
    let width = LABEL_W + PLOT_W + VALUE_W;
    let height = TOP + ROW_H * rows.len() as f64 + 50.0;

    // The log-scale domain covers parity, every ratio and every threshold, widened to
    // whole powers of ten so the grid lines are 0.1, 1, 10, ...
    let values = rows.iter().flat_map(|r| [Some(r.ratio), ratio_threshold(r)]).flatten();
    let (mut lo, mut hi) = (1.0f64, 1.0f64);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let (lo_exp, hi_exp) = (lo.log10().floor() as i32, hi.log10().ceil().max(lo.log10().floor() + 1.0) as i32);
    let x = |v: f64| {
        let v = v.max(10f64.powi(lo_exp));
        LABEL_W + (v.log10() - f64::from(lo_exp)) / f64::from(hi_exp - lo_exp) * PLOT_W
    };

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}: berth vs peer (ratio, log scale; &gt; 1 means berth wins)</text>"#,
        escape(group)
    );
    let plot_bottom = TOP + ROW_H * rows.len() as f64;
    for e in lo_exp..=hi_exp {
        let gx = x(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{plot_bottom}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}×</text>"##,
            plot_bottom + 16.0,
            num(10f64.powi(e))
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let label = row.bench.strip_prefix(group).map_or(row.bench.as_str(), |r| r.trim_start_matches('/'));
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{} <tspan fill="#777">vs {}</tspan></text>"##,
            LABEL_W - 8.0,
            y + ROW_H / 2.0 + 4.0,
            escape(label),
            escape(&row.peer)
        );
        let color = match status(row) {
            Status::Met => "#2e9d4a",
            Status::NotMet => "#d0433a",
            Status::NoTarget => "#9a9a9a",
        };
        if row.ratio > 0.0 && row.ratio.is_finite() {
            let (a, b) = (x(1.0), x(row.ratio));
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                a.min(b),
                y + 6.0,
                (b - a).abs().max(1.0),
                ROW_H - 12.0
            );
        }
        if let Some(t) = ratio_threshold(row) {
            let tx = x(t);
            let _ = writeln!(
                s,
                r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#222" stroke-width="3"/>"##,
                y + 2.0,
                y + ROW_H - 2.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}× {}</text>"#,
            LABEL_W + PLOT_W + 8.0,
            y + ROW_H / 2.0 + 4.0,
            num(row.ratio),
            status(row).label()
        );
    }
    let px = x(1.0);
    let _ = writeln!(s, r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{plot_bottom}" stroke="#333"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="10" y="{:.1}" fill="#555">bars: ratio from parity (1×); black tick: the ratio the target needs; green met, red not met, grey no target</text>"##,
        plot_bottom + 38.0
    );
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Writes `report.md` and the charts into `dir`.
pub(crate) fn write(dir: &Path, report: &Report) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let put = |name: &str, text: &str| {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    put("report.md", &report.markdown)?;
    for (group, svg) in &report.charts {
        put(&format!("{group}.svg"), svg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: &str = r#"{"results":[
        {"bench":"buf/lease_return/shared","metric":"ns_per_op","berth":10.0,"peer":"vec_4096","peer_value":80.0,"ratio":8.0,"better":"lower"},
        {"bench":"buf/lease_return/local","metric":"ns_per_op","berth":7.0,"peer":"vec_4096","peer_value":80.0,"ratio":11.43,"better":"lower"},
        {"bench":"buf/lease_return/contended_2threads","metric":"ns_per_op","berth":400.0,"peer":"vec_4096_2threads","peer_value":100.0,"ratio":0.25,"better":"lower"},
        {"bench":"echo/64B/64conns/msgs_per_s","metric":"msgs_per_s","berth":120000.0,"peer":"tokio","peer_value":100000.0,"ratio":1.2,"better":"higher"},
        {"bench":"echo/64B/64conns/server_cpu_us_per_msg","metric":"server_cpu_us_per_msg","berth":9.5,"peer":"tokio","peer_value":10.0,"ratio":1.05,"better":"lower"}
    ]}"#;

    fn machine() -> Machine {
        Machine { cores: 2, kernel: "6.1.0-test".into(), cpu: "Test CPU @ 3.00GHz".into() }
    }

    fn row_line<'a>(md: &'a str, bench: &str) -> &'a str {
        md.lines().find(|l| l.starts_with(&format!("| `{bench}`"))).unwrap()
    }

    #[test]
    fn report_has_machine_tables_charts_and_correct_verdicts() {
        let results: Results = serde_json::from_str(FIXED).unwrap();
        let report = render(&results, &machine());
        let md = &report.markdown;

        // Machine details first.
        let machine_at = md.find("## Machine").unwrap();
        assert!(machine_at < md.find("## buf").unwrap());
        assert!(md.contains("- cores: 2") && md.contains("- kernel: 6.1.0-test") && md.contains("Test CPU"));

        // A table and a chart per group, in measurement order.
        assert!(md.find("## buf").unwrap() < md.find("## echo").unwrap());
        assert!(md.contains("![buf: ratio per row, with its target](buf.svg)"));
        assert_eq!(report.charts.iter().map(|(g, _)| g.as_str()).collect::<Vec<_>>(), ["buf", "echo"]);

        // shared: 10 ns ≤ 20 and 8× ≥ 5×; local: 7 ns > 5 ns; contended: no target;
        // echo: 1.2× ≥ 1.15×, but 9.5 µs > 0.9 × 10 µs.
        assert!(row_line(md, "buf/lease_return/shared").ends_with("| berth ≤ 20 ns, ratio ≥ 5 | met |"));
        assert!(row_line(md, "buf/lease_return/local").ends_with("| berth ≤ 5 ns | **not met** |"));
        assert!(row_line(md, "buf/lease_return/contended_2threads").ends_with("| — | no target |"));
        assert!(row_line(md, "echo/64B/64conns/msgs_per_s").ends_with("| ratio ≥ 1.15 | met |"));
        assert!(
            row_line(md, "echo/64B/64conns/server_cpu_us_per_msg").ends_with("| berth ≤ 0.9× peer | **not met** |")
        );
        assert!(md.contains("Targets met: 2 of 4 (1 rows without a target)."));

        // Each chart is one SVG document with a bar per row and a tick per target.
        for (group, svg) in &report.charts {
            let rows = results.results.iter().filter(|r| group_of(&r.bench) == group).count();
            assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{group}");
            // One background rect plus one bar per row.
            assert_eq!(svg.matches("<rect").count(), rows + 1, "{group}");
            // Ticks: shared and local in buf, both rows in echo.
            assert_eq!(svg.matches("stroke-width=\"3\"").count(), 2, "{group}");
        }
        let buf_svg = &report.charts[0].1;
        assert_eq!(buf_svg.matches("#2e9d4a").count(), 1);
        assert_eq!(buf_svg.matches("#d0433a").count(), 1);
        assert_eq!(buf_svg.matches("#9a9a9a").count(), 1);

        // The console summary says the same.
        let summary = &report.summary;
        let line = |b: &str| summary.lines().find(|l| l.starts_with(b)).unwrap().to_string();
        assert!(line("buf/lease_return/shared ").ends_with(" met"));
        assert!(line("buf/lease_return/local ").ends_with("NOT MET"));
        assert!(line("buf/lease_return/contended_2threads ").ends_with("no target"));
        assert!(summary.contains("targets met: 2 of 4; 1 rows without a target"));

        // Pure: the same inputs give the same bytes.
        assert_eq!(render(&results, &machine()), report);
    }

    #[test]
    fn every_target_pattern_matches_the_ids_the_benches_write() {
        for id in [
            "buf/lease_return/shared",
            "buf/lease_return/local",
            "ops/take_give/pool",
            "sendfile/1GiB/sender_cpu_s_per_gb",
            "sendfile/1GiB/gbps",
            "echo/64B/64conns/msgs_per_s",
            "echo/4KiB/64conns/server_cpu_us_per_msg",
            "echo/idle15k/rss_mib",
            "ipc/rtt_64B/p50_ns",
            "ipc/throughput_64B/msgs_per_s",
            "ipc/throughput_64KiB/gbps",
            "ipc/idle_blocked/cpu_percent",
            "ipc/throughput_64B_batch/msgs_per_s",
            "ipc/rtt_64B_wakefd/p50_us",
            "relay/64B/rtt_p50_us",
            "files/1KiB/req_per_s",
            "files/1KiB/server_cpu_us_per_req",
            "udp/64B/msgs_per_s",
            "udp/64B/server_cpu_us_per_msg",
            "unix/64B/64conns/msgs_per_s",
        ] {
            assert!(goals_for(id).is_some(), "{id}");
        }
        for id in [
            "buf/lease_return/contended_2threads",
            "ipc/rtt_64B_vs_pipe/p50_ns",
            "ipc/throughput_64KiB_vs_floor/gbps",
            "echo/64B/64conns",
            "udp/64B/server_cpu_us_per_msg_vs_epoll",
            "udp/64B/syscalls_per_msg",
        ] {
            assert!(goals_for(id).is_none(), "{id}");
        }
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(num(47.887), "47.9");
        assert_eq!(num(20.0), "20");
        assert_eq!(num(0.95), "0.95");
        assert_eq!(num(0.0014776), "0.00148");
        assert_eq!(num(150256.7), "150257");
        assert_eq!(num(50e6), "50 M");
        assert_eq!(num(19560746.99), "19.6 M");
    }

    #[test]
    fn thresholds_translate_goals_into_ratios() {
        let row = |bench: &str, berth, peer_value, better| Row::new(bench, "m", berth, "p", peer_value, better);
        // ≤ 20 ns against an 80 ns peer needs 4×; ≥ 5× needs 5×: the stricter wins.
        assert_eq!(ratio_threshold(&row("buf/lease_return/shared", 10.0, 80.0, Better::Lower)), Some(5.0));
        assert_eq!(ratio_threshold(&row("buf/lease_return/shared", 10.0, 200.0, Better::Lower)), Some(10.0));
        assert_eq!(ratio_threshold(&row("echo/idle15k/rss_mib", 1.0, 70.0, Better::Lower)), Some(4.0));
        assert_eq!(ratio_threshold(&row("ipc/throughput_64B/msgs_per_s", 1.0, 1e6, Better::Higher)), Some(50.0));
        assert_eq!(ratio_threshold(&row("ipc/rtt_64B_vs_pipe/p50_ns", 1.0, 2.0, Better::Lower)), None);
    }
}
