//! `berth`: serve a directory over HTTP, or run an echo server, on berth-server.
//!
//! `berth serve [DIR]` serves DIR (default: the current directory) on
//! http://127.0.0.1:8080/; `berth echo` runs an echo server. Both print a one-line
//! banner with the address on stdout, log to stderr (`--log`, or `RUST_LOG`), and
//! shut down gracefully on Ctrl-C or SIGTERM (a second signal exits at once).

mod signals;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use berth_server::{Echo, Server, ServerBuilder, Service, StaticFiles};
use clap::{Args, Parser, Subcommand};

/// berth: IOCP-style socket servers on Linux.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the files of a directory over HTTP/1.1 (GET and HEAD).
    Serve {
        /// The directory to serve.
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Echo every byte received back to its sender.
    Echo {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Address to listen on (port 0 picks a free port; the banner shows it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Worker threads, one completion port each (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Connections open at once; more are refused.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive
    /// (default: RUST_LOG, else info).
    #[arg(long)]
    log: Option<String>,
    /// Print a metrics line to stderr every this many seconds.
    #[arg(long, value_name = "SECS")]
    stats_interval: Option<u64>,
    /// How long in-flight replies may take to finish after Ctrl-C, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    grace: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Serve { common, .. } | Command::Echo { common }) = &cli.command;
    init_logging(common.log.as_deref());
    // Before any thread starts, so every thread inherits the blocked mask and the
    // signals wait for `signals::wait`.
    if let Err(e) = signals::block() {
        eprintln!("berth: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let result = match &cli.command {
        Command::Serve { dir, common } => match StaticFiles::new(dir) {
            Ok(files) => run(common, files, &format!("serving {}", dir.display()), "http://", "/"),
            Err(e) => Err(format!("cannot serve {}: {e}", dir.display())),
        },
        Command::Echo { common } => run(common, Echo, "echo", "", ""),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

fn builder(common: &Common) -> ServerBuilder {
    let mut b = Server::builder().addr(common.addr).max_connections(common.max_connections);
    if let Some(n) = common.workers {
        b = b.workers(n);
    }
    b
}

fn run<S: Service>(common: &Common, service: S, what: &str, scheme: &str, suffix: &str) -> Result<(), String> {
    let server = builder(common).serve(service).map_err(|e| format!("cannot listen on {}: {e}", common.addr))?;
    let n = server.workers();
    println!("berth: {what} on {scheme}{}{suffix} ({n} worker{})", server.local_addr(), if n == 1 { "" } else { "s" });
    let shutdown = server.shutdown_handle();
    let interval = common.stats_interval.filter(|&s| s > 0).map(Duration::from_secs);
    let grace = Duration::from_secs(common.grace);
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let joiner = {
        let finished = finished.clone();
        std::thread::spawn(move || {
            let r = server.join();
            finished.store(true, std::sync::atomic::Ordering::Release);
            r
        })
    };
    let mut stopping = false;
    // Wake up at least once a second to notice workers that stopped on their own.
    let mut tick = interval.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1));
    let mut next_stats = interval.map(|i| std::time::Instant::now() + i);
    while !finished.load(std::sync::atomic::Ordering::Acquire) {
        match signals::wait(tick) {
            Ok(Some(sig)) if !stopping => {
                tracing::info!("{sig}: shutting down (up to {}s for replies in flight)", grace.as_secs());
                shutdown.shutdown(grace);
                stopping = true;
                // Notice the workers' end promptly.
                tick = tick.min(Duration::from_millis(50));
            }
            Ok(Some(sig)) => {
                eprintln!("berth: {sig} again: exiting now");
                std::process::exit(130);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for signals: {e}")),
        }
        if let (Some(at), Some(i)) = (next_stats, interval)
            && std::time::Instant::now() >= at
        {
            eprintln!("berth: {}", shutdown.metrics());
            next_stats = Some(at + i);
        }
    }
    let result = joiner.join().map_err(|_| "a worker panicked".to_string())?;
    result.map_err(|e| format!("server stopped: {e}"))?;
    tracing::info!("stopped: {}", shutdown.metrics());
    Ok(())
}
