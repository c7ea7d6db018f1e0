//! The stages of `cargo xtask bench`: a progress bar per stage on a terminal, plain
//! lines anywhere else (CI logs), and a line for everything skipped and why.
//!
//! Every stage's command runs with its output piped through here. On a terminal
//! (indicatif) each stage is a spinner with its elapsed time and the command's latest
//! line above an overall bar, and the full output goes to a log file in
//! `target/bench-report/logs/`. Elsewhere indicatif would draw nothing, so the stage
//! lines and every line of the command's output are written as plain text instead.
//! Either way a line that says `skipped` is repeated above the bars as it happens and
//! again in a recap at the end, so nothing is left out silently.

use std::fs;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars, when drawing on a terminal.
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
}

/// A run of numbered stages.
pub(crate) struct Stages {
    total: usize,
    done: usize,
    bars: Option<Bars>,
    /// Where plain lines go when there are no bars (stderr, or a buffer in tests).
    out: Box<dyn Write>,
    logs: PathBuf,
    skipped: Vec<String>,
}

impl Stages {
    /// `total` stages, logs in `logs`; bars only when stderr is a terminal and not CI.
    pub(crate) fn new(total: usize, logs: &Path) -> Stages {
        let terminal = io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let target = if terminal { Some(ProgressDrawTarget::stderr()) } else { None };
        Stages::with(total, logs, target, Box::new(io::stderr()))
    }

    /// With bars drawn to `target` (`None`: plain lines to `out`).
    fn with(total: usize, logs: &Path, target: Option<ProgressDrawTarget>, out: Box<dyn Write>) -> Stages {
        let bars = target.map(|target| {
            let multi = MultiProgress::with_draw_target(target);
            let overall = multi.add(ProgressBar::new(total as u64));
            overall.set_style(
                ProgressStyle::with_template("{prefix:>6} [{bar:30}] {pos}/{len} stages, {elapsed} so far")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            overall.set_prefix("bench");
            // Redraws the elapsed time between stages' own ticks.
            overall.enable_steady_tick(Duration::from_secs(1));
            Bars { multi, overall }
        });
        Stages { total, done: 0, bars, out, logs: logs.to_path_buf(), skipped: Vec::new() }
    }

    /// Says that `what` is not run, and why; repeated in [`Stages::finish`]'s recap.
    pub(crate) fn skip(&mut self, what: &str, why: &str) {
        let line = format!("skipped {what}: {why}");
        self.line(&line);
        self.skipped.push(line);
    }

    /// One `xtask: ...` line, above the bars or plain.
    fn line(&mut self, text: &str) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(format!("xtask: {text}"));
            }
            None => {
                let _ = writeln!(self.out, "xtask: {text}");
            }
        }
    }

    fn label(&self, what: &str) -> String {
        format!("[{}/{}] {what}", self.done + 1, self.total)
    }

    /// Runs `cmd` in `dir` as the next stage, its output logged (and, without bars,
    /// passed through); a line that says `skipped` is reported as a skip. A failing
    /// command fails the stage with the end of its output.
    pub(crate) fn run(&mut self, what: &str, cmd: &mut Command, dir: &Path) -> Result<(), String> {
        let label = self.label(what);
        let started = Instant::now();
        fs::create_dir_all(&self.logs).map_err(|e| format!("{}: {e}", self.logs.display()))?;
        let log_path = self.logs.join(format!("{}-{}.log", self.done + 1, slug(what)));
        let mut log = fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let _ = writeln!(log, "$ {cmd:?}");
        let spinner = self.bars.as_ref().map(|b| {
            let s = b.multi.insert_before(&b.overall, ProgressBar::new_spinner());
            s.set_style(
                ProgressStyle::with_template("{prefix} {spinner} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            s.set_prefix(label.clone());
            s.enable_steady_tick(Duration::from_millis(120));
            s
        });
        if spinner.is_none() {
            self.line(&label);
        }

        let mut child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{cmd:?}: {e}"))?;
        let (tx, rx) = mpsc::channel::<String>();
        let readers: Vec<_> = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in lines(BufReader::new(stream)) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
        drop(tx);

        // The last lines, for the error message of a failing stage.
        let mut tail: Vec<String> = Vec::new();
        for line in rx {
            let _ = writeln!(log, "{line}");
            if is_skip_line(&line) {
                let text = line.trim().to_string();
                if let Some(b) = &self.bars {
                    let _ = b.multi.println(format!("xtask: {text}"));
                }
                self.skipped.push(text);
            }
            match &spinner {
                Some(s) if !line.trim().is_empty() => s.set_message(line.trim().to_string()),
                Some(_) => {}
                None => {
                    let _ = writeln!(self.out, "{line}");
                }
            }
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
        for r in readers {
            let _ = r.join();
        }
        let status = child.wait().map_err(|e| format!("{cmd:?}: {e}"))?;
        if let Some(s) = &spinner {
            s.finish_and_clear();
        }
        self.done += 1;
        if let Some(b) = &self.bars {
            b.overall.inc(1);
        }
        let secs = started.elapsed().as_secs_f64();
        if status.success() {
            self.line(&format!("{label}: done in {secs:.0} s (log: {})", log_path.display()));
            Ok(())
        } else {
            self.line(&format!("{label}: FAILED after {secs:.0} s ({status}); its last lines:"));
            for l in &tail {
                self.line(&format!("  | {l}"));
            }
            Err(format!("{what}: {cmd:?} failed: {status} (full output: {})", log_path.display()))
        }
    }

    /// Runs `f` as the next stage, in this process.
    pub(crate) fn step<T>(&mut self, what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        let label = self.label(what);
        self.line(&label);
        let result = f();
        self.done += 1;
        if let Some(b) = &self.bars {
            b.overall.inc(1);
        }
        result
    }

    /// Removes the bars; returns the recap of every skip, to print last so the end of
    /// the output says what is missing from the report.
    pub(crate) fn finish(mut self) -> String {
        if let Some(b) = self.bars.take() {
            b.overall.finish_and_clear();
            let _ = b.multi.clear();
        }
        let mut recap = String::new();
        if !self.skipped.is_empty() {
            recap.push_str("xtask: not in this report:\n");
            for s in &self.skipped {
                recap.push_str(&format!("xtask:   {s}\n"));
            }
        }
        recap
    }
}

/// Whether a line of a bench's output reports something skipped (`files_bench:
/// skipped files: nginx and wrk not installed; ...`).
fn is_skip_line(line: &str) -> bool {
    let l = line.trim_start();
    let after_prefix = l.split_once(": ").map_or(l, |(_, rest)| rest);
    l.starts_with("skipped ") || after_prefix.starts_with("skipped ")
}

/// The lines of a stream, split at `\n` and at `\r` (progress output redraws a line
/// with `\r`), lossily decoded.
fn lines(mut r: impl BufRead) -> impl Iterator<Item = String> {
    std::iter::from_fn(move || {
        let mut buf = Vec::new();
        loop {
            let available = match r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            };
            if available.is_empty() {
                return (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned());
            }
            match available.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(at) => {
                    let cr = available[at] == b'\r';
                    buf.extend_from_slice(&available[..at]);
                    r.consume(at + 1);
                    // `\r\n` ends one line, not two.
                    if cr && r.fill_buf().is_ok_and(|b| b.first() == Some(&b'\n')) {
                        r.consume(1);
                    }
                    return Some(String::from_utf8_lossy(&buf).into_owned());
                }
                None => {
                    let n = available.len();
                    buf.extend_from_slice(available);
                    r.consume(n);
                }
            }
        }
    })
}

/// `criterion bench buf` → `criterion-bench-buf`, for a log file name.
fn slug(what: &str) -> String {
    let s: String =
        what.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    s.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A `Write` the test can read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-progress-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn without_a_terminal_stage_and_skip_lines_are_plain_text() {
        let logs = temp("plain");
        let out = Buffer::default();
        let mut stages = Stages::with(3, &logs, None, Box::new(out.clone()));
        stages.skip("files", "not asked for (--only ops)");
        stages
            .run("system bench echo", &mut sh("echo measuring; echo 'echo_bench: skipped berth: not built' >&2"), &logs)
            .unwrap();
        let err = stages.run("criterion bench ops", &mut sh("echo compile error >&2; exit 3"), &logs).unwrap_err();
        assert!(err.contains("criterion bench ops") && err.contains("2-criterion-bench-ops.log"), "{err}");
        stages.step("report", || Ok(())).unwrap();
        let recap = stages.finish();
        assert_eq!(
            recap,
            "xtask: not in this report:\nxtask:   skipped files: not asked for (--only ops)\n\
             xtask:   echo_bench: skipped berth: not built\n"
        );

        let text = out.text();
        for want in [
            "xtask: skipped files: not asked for (--only ops)\n",
            "xtask: [1/3] system bench echo\n",
            "measuring\n",
            "echo_bench: skipped berth: not built\n",
            "xtask: [1/3] system bench echo: done in ",
            "xtask: [2/3] criterion bench ops\n",
            "xtask: [2/3] criterion bench ops: FAILED after ",
            "xtask:   | compile error\n",
            "xtask: [3/3] report\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        let log = fs::read_to_string(logs.join("1-system-bench-echo.log")).unwrap();
        assert!(log.contains("measuring\n") && log.contains("skipped berth"), "{log}");
        let _ = fs::remove_dir_all(&logs);
    }

    #[test]
    fn with_bars_output_goes_to_the_log_and_skips_are_still_collected() {
        let logs = temp("bars");
        let out = Buffer::default();
        let mut stages = Stages::with(1, &logs, Some(ProgressDrawTarget::hidden()), Box::new(out.clone()));
        stages.run("system bench files", &mut sh("echo 'files_bench: skipped files: no nginx'"), &logs).unwrap();
        let recap = stages.finish();
        assert_eq!(recap, "xtask: not in this report:\nxtask:   files_bench: skipped files: no nginx\n");
        // The command's own lines went to the log, not through.
        assert_eq!(out.text(), "");
        assert!(fs::read_to_string(logs.join("1-system-bench-files.log")).unwrap().contains("no nginx"));
        let _ = fs::remove_dir_all(&logs);
    }

    #[test]
    fn lines_split_at_newlines_and_carriage_returns() {
        let got: Vec<String> = lines(&b"a\nb\rc\r\nlast"[..]).collect();
        assert_eq!(got, ["a", "b", "c", "last"]);
        assert!(is_skip_line("files_bench: skipped files: nginx and wrk not installed"));
        assert!(is_skip_line("skipped relay: no backend"));
        assert!(!is_skip_line("echo_bench: 3 rows written (none skipped)"));
        assert_eq!(slug("system bench echo (echo_bench)"), "system-bench-echo-echo-bench");
    }
}
