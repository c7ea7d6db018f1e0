//! System benchmark: sending a page-cached file over loopback TCP with berth-sendfile's
//! `FileSend` (sendfile(2)) against a 64 KiB read/write copy loop, in the same run.
//!
//! The sender runs on this thread, the receiver on another, pinned to different cores
//! when the machine has two. Each transfer records the sender thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) and the wall time until the receiver has every byte.
//! The two methods alternate `reps` times and the medians are reported, as rows
//! `sendfile/1GiB/sender_cpu_s_per_gb` (lower is better) and `sendfile/1GiB/gbps`
//! (Gbit/s, higher is better), peer `copy_loop_64k`.
//!
//! `--quick` sends 256 MiB three times instead of 1 GiB five times (the row ids stay
//! the same; the printed summary says which size was used). The file is created under
//! `target/` and deleted at the end, even on failure.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_benches::{Better, Row, append_rows, results_path};
use berth_sendfile::FileSend;
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
use rustix::time::{ClockId, clock_gettime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Sendfile,
    CopyLoop,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    cpu_s: f64,
    wall_s: f64,
}

/// The benchmark file; removed on drop, so a panic does not leave 1 GiB behind.
struct BenchFile {
    path: PathBuf,
}

impl Drop for BenchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn thread_cpu_s() -> f64 {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

fn pin_to(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = CpuSet::new();
        set.set(cpu);
        if let Err(e) = sched_setaffinity(None, &set) {
            eprintln!("sendfile_bench: could not pin to cpu {cpu}: {e}");
        }
    }
}

fn create_file(path: &PathBuf, size: u64) -> io::Result<()> {
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(path)?;
    let mut block = vec![0u8; 8 << 20];
    let mut written = 0u64;
    while written < size {
        // Varying contents, so nothing can shortcut a block of zeros.
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i as u64).wrapping_mul(31).wrapping_add(written / 4096) as u8;
        }
        let n = (size - written).min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        written += n as u64;
    }
    // Written back now, so writeback does not run during the measurements; the pages
    // stay in the page cache.
    f.sync_all()?;
    // Touch every page once through a read, to be sure the file is cached.
    let mut r = File::open(path)?;
    let mut sink = vec![0u8; 8 << 20];
    while r.read(&mut sink)? > 0 {}
    Ok(())
}

/// One transfer of the whole file; returns the sender's CPU time and the wall time
/// until the receiver has read every byte.
fn transfer(method: Method, file: &File, size: u64, receiver_cpu: Option<usize>) -> io::Result<Sample> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.set_write_timeout(Some(Duration::from_secs(120)))?;
    }
    let receiver = std::thread::spawn(move || -> io::Result<u64> {
        pin_to(receiver_cpu);
        let mut client = client;
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            match client.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });

    let wall0 = Instant::now();
    let cpu0 = thread_cpu_s();
    match method {
        Method::Sendfile => {
            let mut send = FileSend::whole(file).map_err(io::Error::from)?;
            send.send_all(&server, &mut []).map_err(io::Error::from)?;
        }
        Method::CopyLoop => {
            let mut buf = vec![0u8; 64 << 10];
            let mut offset = 0u64;
            let mut server = &server;
            use std::os::unix::fs::FileExt;
            loop {
                let n = file.read_at(&mut buf, offset)?;
                if n == 0 {
                    break;
                }
                server.write_all(&buf[..n])?;
                offset += n as u64;
            }
        }
    }
    let cpu_s = thread_cpu_s() - cpu0;
    drop(server);
    let received = receiver.join().map_err(|_| io::Error::other("receiver panicked"))??;
    let wall_s = wall0.elapsed().as_secs_f64();
    if received != size {
        return Err(io::Error::other(format!("{method:?}: receiver got {received} of {size} bytes")));
    }
    Ok(Sample { cpu_s, wall_s })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> io::Result<()> {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    let (size, reps): (u64, usize) = if quick { (256 << 20, 3) } else { (1 << 30, 5) };

    let cpus = allowed_cpus();
    let (sender_cpu, receiver_cpu) = if cpus.len() >= 2 {
        (Some(cpus[0]), Some(cpus[1]))
    } else {
        eprintln!("sendfile_bench: fewer than 2 CPUs allowed ({cpus:?}); not pinning");
        (None, None)
    };
    pin_to(sender_cpu);

    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target)?;
    let bench_file = BenchFile { path: target.join(format!("sendfile-bench-{}.dat", std::process::id())) };
    eprintln!("sendfile_bench: creating a {} MiB file at {}", size >> 20, bench_file.path.display());
    create_file(&bench_file.path, size)?;
    let file = File::open(&bench_file.path)?;

    let mut sendfile = Vec::new();
    let mut copy = Vec::new();
    for rep in 0..reps {
        // Alternate which goes first, so neither always runs on a warmer machine.
        let order =
            if rep % 2 == 0 { [Method::Sendfile, Method::CopyLoop] } else { [Method::CopyLoop, Method::Sendfile] };
        for method in order {
            let s = transfer(method, &file, size, receiver_cpu)?;
            eprintln!(
                "sendfile_bench: rep {rep} {method:?}: sender cpu {:.3} s, wall {:.3} s, {:.2} Gbit/s",
                s.cpu_s,
                s.wall_s,
                size as f64 * 8.0 / s.wall_s / 1e9
            );
            match method {
                Method::Sendfile => sendfile.push(s),
                Method::CopyLoop => copy.push(s),
            }
        }
    }
    drop(file);
    drop(bench_file);

    let gb = size as f64 / 1e9;
    let cpu_per_gb = |v: &[Sample]| median(v.iter().map(|s| s.cpu_s / gb).collect());
    let gbps = |v: &[Sample]| median(v.iter().map(|s| size as f64 * 8.0 / s.wall_s / 1e9).collect());
    let rows = [
        Row::new(
            "sendfile/1GiB/sender_cpu_s_per_gb",
            "cpu_s_per_gb",
            cpu_per_gb(&sendfile),
            "copy_loop_64k",
            cpu_per_gb(&copy),
            Better::Lower,
        ),
        Row::new("sendfile/1GiB/gbps", "gbps", gbps(&sendfile), "copy_loop_64k", gbps(&copy), Better::Higher),
    ];
    let pinned = match (sender_cpu, receiver_cpu) {
        (Some(s), Some(r)) => format!("sender on cpu {s}, receiver on cpu {r}"),
        _ => "not pinned".to_string(),
    };
    println!("sendfile_bench: {} MiB x {reps} reps, {pinned}", size >> 20);
    for r in &rows {
        println!(
            "{:<36} {:>10.4} {:<14} {:>10.4}  ratio {:.2} ({})",
            r.bench, r.berth, r.peer, r.peer_value, r.ratio, r.metric
        );
    }
    append_rows(&results_path(), &rows)
}
