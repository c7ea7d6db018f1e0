//! `berth`: serve a directory over HTTP, or run an echo server, on berth-server.
//!
//! `berth serve [DIR]` serves DIR (default: the current directory) on
//! http://127.0.0.1:8080/; `berth echo` runs an echo server; `berth relay --channel
//! NAME` relays length-prefixed frames to a backend process attached to the named
//! shared-memory channel, and `berth backend-echo --channel NAME` is a demo backend.
//! Each prints a one-line banner on stdout, logs to stderr (`--log`, or `RUST_LOG`),
//! shuts down gracefully on Ctrl-C or SIGTERM (a second signal exits at once),
//! prints its metrics on SIGUSR1, and on SIGHUP reopens `serve`'s access log and
//! keeps serving.

mod signals;
mod systemd;

use signals::Signal;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use berth_server::{
    AccessLog, Echo, IpcRelay, LogTarget, RelayBackend, RelayConfig, RelayHandle, Server, ServerBuilder, Service,
    StaticFiles,
};
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
    /// Serve the files of a directory over HTTP/1.1 (GET, HEAD and OPTIONS).
    Serve {
        /// The directory to serve.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Serve hidden files too (a path segment starting with `.`, such as
        /// `.git/config` or `.env`); by default they are 404s, `/.well-known/` aside.
        #[arg(long)]
        hidden: bool,
        /// Send `Cache-Control: VALUE` with every file (200, 206, 304), e.g.
        /// `--cache-control 'public, max-age=3600'`.
        #[arg(long, value_name = "VALUE")]
        cache_control: Option<String>,
        /// Add a header to every file response (200, 206, 304) and to OPTIONS' 204:
        /// `--header 'X-Content-Type-Options: nosniff'`. Repeatable. A name that is
        /// not an HTTP token, a value with control characters, or a header the
        /// server sets itself (Content-Length, Content-Type, ETag, ...) is refused.
        #[arg(long, value_name = "'NAME: VALUE'", value_parser = parse_header)]
        header: Vec<(String, String)>,
        #[command(flatten)]
        routes: Routes,
        #[command(flatten)]
        common: Common,
    },
    /// Echo every byte received back to its sender.
    Echo {
        #[command(flatten)]
        common: Common,
    },
    /// Relay frames (a 4-byte big-endian length, then the payload) from TCP clients to
    /// a local backend process over a shared-memory channel, and route its replies
    /// back. Each worker creates its lane, `/dev/shm/berth-ipc.NAME.<worker>.a2b` and
    /// `.b2a`; a backend attaches to all of them with `berth backend-echo --channel
    /// NAME` (or berth_server::RelayBackend). Without a backend, and when it dies,
    /// waiting clients are closed cleanly; each lane then recreates its channel and
    /// takes the next backend that attaches.
    Relay {
        /// Name of the shared-memory channel (letters, digits, `.`, `_`, `-`).
        #[arg(long)]
        channel: String,
        /// Largest frame payload in bytes; a longer frame closes its connection.
        #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
        max_frame: usize,
        /// Seconds a client may wait for the backend's reply before it is closed
        /// (0: wait for ever).
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        answer_timeout: u64,
        #[command(flatten)]
        common: Common,
    },
    /// A demo backend for `berth relay`: attaches to the channel and sends every
    /// frame back to the connection it came from. Waits for the relay if the
    /// channel does not exist yet, and attaches again if the relay restarts.
    BackendEcho {
        /// Name of the relay's channel.
        #[arg(long)]
        channel: String,
        /// Log filter (default: RUST_LOG, else info).
        #[arg(long)]
        log: Option<String>,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Where to listen: ip:port (port 0 picks a free port; the banner shows it), or a
    /// Unix socket, unix:/path or unix:@abstract-name.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    addr: berth_server::Endpoint,
    /// With --addr unix:/path: remove a socket file left there by a server that died
    /// (one nobody accepts on) instead of refusing to start. A live server's socket
    /// or a file that is not a socket is never removed.
    #[arg(long)]
    replace_stale_socket: bool,
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
    /// Print a metrics line to stderr every this many seconds (and at any time on
    /// SIGUSR1: `kill -USR1 <pid>`).
    #[arg(long, value_name = "SECS")]
    stats_interval: Option<u64>,
    /// The completion ports' driver: auto (io_uring where the kernel allows it, else
    /// epoll), epoll or uring (an error if io_uring cannot run). Default:
    /// BERTH_DRIVER, else auto.
    #[arg(long, value_name = "auto|epoll|uring")]
    driver: Option<berth_server::Driver>,
    /// How long in-flight replies may take to finish after Ctrl-C, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    grace: u64,
    /// Seconds a client may take to send a whole request head (slowloris guard).
    #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Seconds a kept-alive connection may stay idle between requests.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Seconds one send (a reply, or a whole file body) may take; 0: no limit.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    write_timeout: u64,
    /// listen(2) backlog per worker: the kernel's queue of connections not yet
    /// accepted.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(i32).range(1..))]
    backlog: i32,
}

/// `berth serve`'s routing options.
#[derive(Debug, Args)]
struct Routes {
    /// A file name tried, in order, for a directory (repeatable; default index.html).
    #[arg(long, value_name = "NAME")]
    index: Vec<String>,
    /// Single-page apps: a GET or HEAD of a path that does not exist gets FILE
    /// (relative to DIR, never outside it) with 200. Hidden, forbidden and escaping
    /// paths still get their 404 or 403.
    #[arg(long, value_name = "FILE")]
    fallback: Option<PathBuf>,
    /// The body of every 404: FILE, relative to DIR, sent with status 404.
    #[arg(long, value_name = "FILE")]
    not_found: Option<PathBuf>,
    /// List a directory that has no index file: an HTML page, directories first,
    /// each group sorted by name (byte order), with sizes and dates; hidden entries
    /// only with --hidden. Streamed in constant memory, however large the directory.
    #[arg(long)]
    list: bool,
    /// Serve FILE.br, FILE.zst or FILE.gz in FILE's place to clients whose
    /// Accept-Encoding takes it, when it sits beside FILE and is not older.
    #[arg(long)]
    precompressed: bool,
    /// Log every request in the combined log format plus the request time, to FILE
    /// (appended; SIGHUP reopens it, for logrotate) or `-` (stdout). Written by a
    /// thread of its own; if it falls behind, lines are dropped and counted.
    #[arg(long, value_name = "-|FILE")]
    access_log: Option<PathBuf>,
    /// Paths each worker keeps open (descriptor and content type), so serving one
    /// again costs a stat of the descriptor instead of an open, a stat and a close;
    /// 0 turns the cache off. Each entry is an open descriptor (all workers' at most
    /// a quarter of the open-file limit).
    #[arg(long, value_name = "N", default_value_t = berth_server::DEFAULT_CACHE_ENTRIES)]
    file_cache: usize,
    /// Seconds a cached path is trusted before it is opened again. A file written,
    /// deleted, renamed or replaced is seen at once (its inode's change time); this
    /// bounds only what leaves the file untouched (a directory or symlink on its
    /// path renamed or retargeted, a new index file). 0 turns the cache off.
    #[arg(long, value_name = "SECS", default_value_t = berth_server::DEFAULT_CACHE_VALID.as_secs())]
    file_cache_valid: u64,
}

/// `Name: value` from `--header`; the name and value are checked by StaticFiles.
fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once(':').ok_or_else(|| format!("{s:?} is not 'Name: value'"))?;
    Ok((name.to_string(), value.to_string()))
}

fn main() -> ExitCode {
    // First of all, before anything opens a descriptor that could take number 3 or
    // a thread starts: the socket systemd may have passed (LISTEN_FDS).
    let activated = systemd::listen_fds();
    let cli = Cli::parse();
    let log = match &cli.command {
        Command::Serve { common, .. } | Command::Echo { common } | Command::Relay { common, .. } => &common.log,
        Command::BackendEcho { log, .. } => log,
    };
    init_logging(log.as_deref());
    // Before any thread starts, so every thread inherits the blocked mask and the
    // signals wait for `signals::wait`.
    if let Err(e) = signals::block() {
        eprintln!("berth: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    // This binary never wants SIGPIPE (a peer gone mid-send is an EPIPE error), and
    // saying so once spares each sendfile(2) a syscall that checks.
    if let Err(e) = berth_sendfile::keep_sigpipe_ignored() {
        eprintln!("berth: cannot ignore SIGPIPE: {e}");
        return ExitCode::FAILURE;
    }
    match activated {
        Ok(listener) => systemd::keep(listener),
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match &cli.command {
        Command::Serve { dir, hidden, cache_control, header, routes, common } => {
            serve(dir, *hidden, cache_control.as_deref(), header, routes, common)
        }
        Command::Echo { common } => run(common, Echo, "echo", "", ""),
        Command::Relay { channel, max_frame, answer_timeout, common } => {
            relay(common, channel, *max_frame, *answer_timeout)
        }
        Command::BackendEcho { channel, .. } => backend_echo(channel),
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

fn static_files(
    dir: &std::path::Path,
    hidden: bool,
    cache_control: Option<&str>,
    headers: &[(String, String)],
    routes: &Routes,
) -> Result<StaticFiles, String> {
    let mut files = StaticFiles::new(dir).map_err(|e| format!("cannot serve {}: {e}", dir.display()))?.hidden(hidden);
    if let Some(value) = cache_control {
        files = files.cache_control(value).map_err(|e| format!("--cache-control: {e}"))?;
    }
    for (name, value) in headers {
        files = files.header(name, value).map_err(|e| format!("--header: {e}"))?;
    }
    files = files
        .precompressed(routes.precompressed)
        .list(routes.list)
        .open_file_cache(routes.file_cache, Duration::from_secs(routes.file_cache_valid));
    if !routes.index.is_empty() {
        files = files.index(&routes.index).map_err(|e| format!("--index: {e}"))?;
    }
    if let Some(file) = &routes.fallback {
        files = files.fallback(file).map_err(|e| format!("--fallback: {e}"))?;
    }
    if let Some(file) = &routes.not_found {
        files = files.not_found(file).map_err(|e| format!("--not-found: {e}"))?;
    }
    Ok(files)
}

fn serve(
    dir: &std::path::Path,
    hidden: bool,
    cache_control: Option<&str>,
    headers: &[(String, String)],
    routes: &Routes,
    common: &Common,
) -> Result<(), String> {
    let mut files = static_files(dir, hidden, cache_control, headers, routes)?;
    let log = match &routes.access_log {
        None => None,
        Some(path) => {
            let target = if path.as_os_str() == "-" { LogTarget::Stdout } else { LogTarget::File(path.clone()) };
            let (log, handle) =
                AccessLog::start(target).map_err(|e| format!("--access-log {}: {e}", path.display()))?;
            files = files.access_log(log);
            Some(handle)
        }
    };
    let what = format!("serving {}", dir.display());
    let stats = || log.as_ref().map(|h| format!("access log: {} written, {} dropped", h.written(), h.dropped()));
    let reopen = || match &log {
        Some(h) => {
            tracing::info!("SIGHUP: reopening the access log");
            h.reopen();
        }
        None => tracing::info!("SIGHUP: no access log to reopen; still serving"),
    };
    let result = run_with(
        builder(common),
        common,
        files,
        &what,
        "http://",
        "/",
        Hooks {
            more_stats: Some(&|| stats().unwrap_or_default()),
            reopen: &reopen,
            flush_log: &|| {
                if let Some(h) = &log
                    && !h.flush_now(Duration::from_secs(2))
                {
                    eprintln!("berth: the access log did not finish writing within 2 s");
                }
            },
        },
    );
    if let Some(handle) = log {
        // The server has stopped: write what is queued.
        let dropped = handle.dropped();
        handle.finish();
        if dropped > 0 {
            tracing::warn!("access log: {dropped} lines dropped (the log fell behind)");
        }
    }
    result
}

fn builder(common: &Common) -> ServerBuilder {
    let write_timeout = Some(common.write_timeout).filter(|&s| s > 0).map(Duration::from_secs);
    let mut b = Server::builder()
        .endpoint(common.addr.clone(), common.replace_stale_socket)
        .max_connections(common.max_connections)
        .header_timeout(Duration::from_secs(common.header_timeout))
        .idle_timeout(Duration::from_secs(common.idle_timeout))
        .write_timeout(write_timeout)
        .backlog(common.backlog);
    if let Some(n) = common.workers {
        b = b.workers(n);
    }
    if let Some(driver) = common.driver {
        b = b.driver(driver);
    }
    b
}

fn relay(common: &Common, channel: &str, max_frame: usize, answer_timeout: u64) -> Result<(), String> {
    let relay = IpcRelay::start(RelayConfig::new(channel).max_frame(max_frame))
        .map_err(|e| format!("cannot start the relay on channel {channel}: {e}"))?;
    let handle: RelayHandle = relay.handle();
    // A frame and its length must fit one buffer segment.
    let segment = (max_frame + 4).next_power_of_two().max(8192);
    let answer_timeout = Some(answer_timeout).filter(|&s| s > 0).map(Duration::from_secs);
    let builder = builder(common)
        .segment_size(segment)
        .max_request_head(segment)
        .segment_count(1024)
        .answer_timeout(answer_timeout);
    let what = format!("relaying to backend channel {channel}");
    let stats = || handle.stats().to_string();
    let result = run_with(
        builder,
        common,
        relay,
        &what,
        "",
        "",
        Hooks { more_stats: Some(&stats), reopen: &no_reopen, flush_log: &|| {} },
    );
    tracing::info!("{}", handle.stats());
    result
}

/// Attaches to the relay's channel and echoes every frame; attaches again when the
/// relay goes away, until SIGINT/SIGTERM.
///
/// The echo runs on a thread of its own that waits for frames with no timeout of
/// its own: with one lane each sleep between two frames is a futex wait with no
/// timer (a timed one costs a timer per frame), with several a `poll` of the lanes'
/// descriptors, bounded only where the relay's death might not wake it (see
/// `Receiver::max_sleep`). This thread takes the signals and ends the process, the
/// relay seeing the backend's exit as it would see any backend's.
fn backend_echo(channel: &str) -> Result<(), String> {
    println!("berth: echo backend for relay channel {channel}");
    let name = channel.to_string();
    let echo = std::thread::Builder::new()
        .name("berth-backend-echo".into())
        .spawn(move || echo_forever(&name))
        .map_err(|e| format!("starting the echo thread: {e}"))?;
    loop {
        match signals::wait(Duration::from_millis(200)).map_err(|e| format!("waiting for signals: {e}"))? {
            Some(Signal::Stop(_)) => return Ok(()),
            // It never returns; finished means it panicked.
            _ if echo.is_finished() => return Err("the echo thread stopped".into()),
            _ => {}
        }
    }
}

/// `backend_echo`'s thread: attach, echo until the relay goes, attach again.
fn echo_forever(channel: &str) {
    let mut waiting_logged = false;
    loop {
        let mut backend = match RelayBackend::attach(channel) {
            Ok(b) => b,
            Err(e) => {
                if !waiting_logged {
                    tracing::info!("waiting for the relay's channel {channel}: {e}");
                    waiting_logged = true;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        tracing::info!("attached to relay channel {channel}");
        waiting_logged = false;
        loop {
            if let Err(e) = backend.echo_one(None) {
                tracing::warn!("relay gone ({e}); attaching again");
                break;
            }
        }
    }
}

fn run<S: Service>(common: &Common, service: S, what: &str, scheme: &str, suffix: &str) -> Result<(), String> {
    run_with(
        builder(common),
        common,
        service,
        what,
        scheme,
        suffix,
        Hooks { more_stats: None, reopen: &no_reopen, flush_log: &|| {} },
    )
}

/// What a command adds to the signal loop.
#[derive(Clone, Copy)]
struct Hooks<'a> {
    /// A line to print with the metrics (SIGUSR1, `--stats-interval`).
    more_stats: Option<&'a dyn Fn() -> String>,
    /// SIGHUP.
    reopen: &'a dyn Fn(),
    /// Before an exit that does not wait for the server (a second Ctrl-C): write
    /// what the access log has queued.
    flush_log: &'a dyn Fn(),
}

/// SIGHUP without an access log: nothing to reopen, and the server goes on.
fn no_reopen() {
    tracing::info!("SIGHUP: nothing to reopen; still serving");
}

fn run_with<S: Service>(
    builder: ServerBuilder,
    common: &Common,
    service: S,
    what: &str,
    scheme: &str,
    suffix: &str,
    hooks: Hooks<'_>,
) -> Result<(), String> {
    let Hooks { more_stats, reopen, flush_log } = hooks;
    // systemd socket activation: the socket unit's listener instead of --addr.
    let (builder, at) = match systemd::take() {
        Some(listener) => (builder.inherited(listener), "the socket systemd passed (LISTEN_FDS)".to_string()),
        None => (builder, common.addr.to_string()),
    };
    let server = builder.serve(service).map_err(|e| format!("cannot listen on {at}: {e}"))?;
    let n = server.workers();
    let plural = if n == 1 { "" } else { "s" };
    let on = match server.endpoint() {
        berth_server::Endpoint::Tcp(addr) => format!("{scheme}{addr}{suffix}"),
        unix => unix.to_string(),
    };
    println!("berth: {what} on {on} ({n} worker{plural}, {})", server.driver());
    systemd::notify(&format!("READY=1\nMAINPID={}\nSTATUS={what} on {on}", std::process::id()));
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
    let print_stats = || {
        eprintln!("berth: {}", shutdown.metrics());
        if let Some(line) = more_stats.map(|more| more()).filter(|l| !l.is_empty()) {
            eprintln!("berth: {line}");
        }
    };
    let mut stopping = false;
    // Wake up at least once a second to notice workers that stopped on their own.
    let mut tick = interval.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1));
    let mut next_stats = interval.map(|i| std::time::Instant::now() + i);
    while !finished.load(std::sync::atomic::Ordering::Acquire) {
        match signals::wait(tick) {
            Ok(Some(Signal::Stats)) => print_stats(),
            Ok(Some(Signal::Reopen)) => reopen(),
            Ok(Some(Signal::Stop(sig))) if !stopping => {
                tracing::info!("{sig}: shutting down (up to {}s for replies in flight)", grace.as_secs());
                systemd::notify("STOPPING=1");
                shutdown.shutdown(grace);
                stopping = true;
                // Notice the workers' end promptly.
                tick = tick.min(Duration::from_millis(50));
            }
            Ok(Some(Signal::Stop(sig))) => {
                eprintln!("berth: {sig} again: exiting now");
                flush_log();
                std::process::exit(130);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for signals: {e}")),
        }
        if let (Some(at), Some(i)) = (next_stats, interval)
            && std::time::Instant::now() >= at
        {
            print_stats();
            next_stats = Some(at + i);
        }
    }
    let result = joiner.join().map_err(|_| "a worker panicked".to_string())?;
    result.map_err(|e| format!("server stopped: {e}"))?;
    tracing::info!("stopped: {}", shutdown.metrics());
    Ok(())
}
