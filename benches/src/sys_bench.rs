//! Helpers shared by the system benchmarks: core pinning, a child process that is
//! always killed, and what `/proc` tells about a process (CPU time, RSS, open fds).
//!
//! Everything here is Linux-only and goes through rustix or `/proc`; no `unsafe`.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// The CPU ids the calling thread may run on, in increasing order.
pub fn available_cores() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(core);
    sched_setaffinity(None, &set)?;
    Ok(())
}

/// Spawns `cmd` with its CPU affinity set to `core` from its first instruction on.
///
/// The affinity mask is inherited across fork and exec, so the calling thread pins
/// itself to `core`, spawns, and restores its previous mask: the child and every
/// thread it starts run on `core` only, with no window in which they run elsewhere
/// (setting the mask of a running child afterwards would miss threads it already
/// started). `None` spawns without pinning.
pub fn spawn_pinned(cmd: &mut Command, core: Option<usize>) -> io::Result<Child> {
    let Some(core) = core else { return cmd.spawn() };
    let saved = sched_getaffinity(None)?;
    pin_current_thread(core)?;
    let child = cmd.spawn();
    sched_setaffinity(None, &saved)?;
    child
}

/// A child process that is killed (SIGKILL) and reaped when the guard is dropped, so
/// no benchmark leaves a server running behind it, whichever way it returns.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Takes ownership of a spawned child.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child itself, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the child to exit on its own for up to `timeout`, then kills it.
    /// Returns its exit status if it exited in time.
    pub fn wait_timeout(mut self, timeout: Duration) -> io::Result<Option<std::process::ExitStatus>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None); // dropped here: killed and reaped
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Already exited is fine: kill then fails with InvalidInput and wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU time consumed so far by all threads of process `pid`, from
/// `/proc/<pid>/stat` (resolution: one clock tick, usually 10 ms).
pub fn process_cpu_time(pid: u32) -> io::Result<Duration> {
    process_cpu_split(pid).map(|(user, system)| user + system)
}

/// CPU time a process has used so far, split into user and system (kernel) time.
pub fn process_cpu_split(pid: u32) -> io::Result<(Duration, Duration)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (user, system) = parse_stat_cpu_split(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat: unexpected format")))?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let time = |ticks: u64| Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz);
    Ok((time(user), time(system)))
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    parse_stat_cpu_split(stat).map(|(user, system)| user + system)
}

/// `(utime, stime)` in clock ticks from the text of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain spaces or
/// parentheses, so fields are counted from the last `)`: after it come field 3
/// (state) onwards, which puts utime (field 14) and stime (field 15) at 11 and 12.
pub fn parse_stat_cpu_split(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// CPU time spent busy by the whole machine so far, summed over all CPUs, from the
/// first line of `/proc/stat`: everything but idle and iowait. Compared with the time
/// of the processes a benchmark knows about, it shows how much of the machine
/// something else took during a measurement.
pub fn machine_busy_time() -> io::Result<Duration> {
    let text = fs::read_to_string("/proc/stat")?;
    let ticks = parse_stat_busy_ticks(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/stat: unexpected format"))?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz))
}

/// Busy ticks from the `cpu` line of `/proc/stat`: user, nice, system, irq, softirq
/// and steal (guest time is already inside user and nice).
pub fn parse_stat_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    if v.len() < 4 {
        return None;
    }
    Some(field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// The resident set size of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vmrss_kib(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/status: no VmRSS")))
}

/// The `VmRSS:  1234 kB` value from the text of `/proc/<pid>/status`, in KiB.
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..].split_whitespace().next()?.parse().ok()
}

/// How many file descriptors process `pid` has open (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Raises this process's soft `RLIMIT_NOFILE` towards `wanted`, capped at the hard
/// limit, and returns the soft limit now in force. Children spawned afterwards
/// inherit it. Never lowers the limit.
pub fn raise_nofile(wanted: u64) -> io::Result<u64> {
    let old = getrlimit(Resource::Nofile);
    let soft = old.current.unwrap_or(u64::MAX);
    if soft >= wanted {
        return Ok(soft);
    }
    let hard = old.maximum.unwrap_or(u64::MAX);
    let new = wanted.min(hard);
    if new > soft {
        setrlimit(Resource::Nofile, Rlimit { current: Some(new), maximum: old.maximum })?;
    }
    Ok(new.max(soft))
}

/// The `berth` binary (berth-cli) next to the running benchmark binary, built with
/// cargo first if it is missing (release if the benchmark runs from `release/`).
/// `who` names the caller in the progress line.
pub fn berth_binary(who: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no directory for this executable")?;
    let berth = dir.join("berth");
    if !berth.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "berth-cli", "--bin", "berth"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        eprintln!("{who}: building berth ({cmd:?})");
        let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() || !berth.exists() {
            return Err(format!("could not build {}", berth.display()));
        }
    }
    Ok(berth)
}

/// The exit code of a bench binary whose work returned `result`: on an error, the
/// message is printed as `name: error` and the code is 1.
pub fn exit_code(name: &str, result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The command line of a bench that takes only `--quick`: whether it was given.
pub fn quick_flag(name: &str) -> Result<bool, String> {
    let mut quick = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--quick" => quick = true,
            other => return Err(format!("unknown argument {other:?} (usage: {name} [--quick])")),
        }
    }
    Ok(quick)
}

/// The syscalls process `pid` makes in the next `secs` seconds, counted by
/// `perf stat -e raw_syscalls:sys_enter` (which must be installed and allowed).
pub fn perf_syscall_count(pid: u32, secs: f64) -> Result<f64, String> {
    let perf = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", &pid.to_string(), "--", "sleep"])
        .arg(secs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("perf: {e}"))?;
    parse_perf_syscalls(&String::from_utf8_lossy(&perf.stderr))
}

/// The count in a `perf stat -x , -e raw_syscalls:sys_enter` report.
fn parse_perf_syscalls(report: &str) -> Result<f64, String> {
    report
        .lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no syscall count from perf: {}", report.trim()))
}

/// Compiles `benches/c/<source>` with the system's `cc -O2` into `exe_dir/<out>` (a
/// plain C server measured beside berth to show what this machine allows); returns
/// its path.
pub fn compile_c(exe_dir: &std::path::Path, source: &str, out: &str) -> Result<PathBuf, String> {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("c").join(source);
    let out = exe_dir.join(out);
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .map_err(|e| format!("cc: {e} (install a C compiler to include it)"))?;
    if status.success() { Ok(out) } else { Err(format!("cc {} failed: {status}", source.display())) }
}

/// A `perf stat -e raw_syscalls:sys_enter` attached to a process until
/// [`stop`](Self::stop): counts the syscalls of a stretch of work rather than of a
/// fixed time.
#[derive(Debug)]
pub struct PerfSyscalls {
    perf: ChildGuard,
}

impl PerfSyscalls {
    /// Attaches to process `pid` (all its threads). perf needs a moment to attach:
    /// this waits `settle` before it returns.
    pub fn start(pid: u32, settle: Duration) -> Result<PerfSyscalls, String> {
        let perf = Command::new("perf")
            .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("perf: {e}"))?;
        let mut perf = ChildGuard::new(perf);
        std::thread::sleep(settle);
        if let Ok(Some(status)) = perf.child_mut().try_wait() {
            return Err(format!("perf stat exited at once ({status})"));
        }
        Ok(PerfSyscalls { perf })
    }

    /// Stops counting (SIGINT, on which perf prints its report) and returns the count.
    pub fn stop(mut self) -> Result<f64, String> {
        let pid = rustix::process::Pid::from_raw(self.perf.id() as i32).ok_or("perf has no pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::INT).map_err(|e| format!("stopping perf: {e}"))?;
        let mut report = String::new();
        if let Some(mut err) = self.perf.child_mut().stderr.take() {
            std::io::Read::read_to_string(&mut err, &mut report).map_err(|e| format!("perf's report: {e}"))?;
        }
        let _ = self.perf.wait_timeout(Duration::from_secs(5));
        parse_perf_syscalls(&report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_reports_give_their_syscall_count() {
        let report = "\n12345,,raw_syscalls:sys_enter,1002003,100.00,,\n";
        assert_eq!(parse_perf_syscalls(report), Ok(12345.0));
        assert!(parse_perf_syscalls("<not counted>,,cycles,0,100.00,,").is_err());
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123 4096 10";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(10));
        assert_eq!(parse_stat_cpu_split(stat), Some((7, 3)));
        assert_eq!(parse_stat_cpu_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  10 1 5 1000 50 2 3 4 0 0\ncpu0 5 0 2 500 25 1 1 2 0 0\nintr 1 2 3\n";
        assert_eq!(parse_stat_busy_ticks(stat), Some(10 + 1 + 5 + 2 + 3 + 4));
        assert_eq!(parse_stat_busy_ticks("cpu  1 2\n"), None);
        assert_eq!(parse_stat_busy_ticks("intr 1\n"), None);
        machine_busy_time().unwrap();
    }

    #[test]
    fn vmrss_is_read_in_kib() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t  1234 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss_kib(status), Some(1234));
        assert_eq!(parse_vmrss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(open_fds(pid).unwrap() >= 3);
        process_cpu_time(pid).unwrap();
        assert!(!available_cores().unwrap().is_empty());
    }
}
