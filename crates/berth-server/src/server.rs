//! [`Server`], its builder and its [`ShutdownHandle`]: workers, limits, timeouts.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_buf::{BufferConfig, BufferManager, ConfigError};
use berth_ops::ConnectionLimit;
use berth_reactor::workers::{Inherited, Workers, WorkersConfig};
use berth_reactor::{Driver, Endpoint, ListenOptions, PortHandle, UnixAddr, UnixListenOptions};

use crate::conn::{Limits, Worker};
use crate::metrics::{self, Metrics, Row};
use crate::service::{MAX_SLOTS, MAX_WORKERS, Service};

/// The key of the completion posted to each worker to start a graceful shutdown; the
/// data is the grace period in milliseconds.
pub(crate) const SHUTDOWN: u64 = u64::MAX - 1;

/// Sockets (and ops) per worker set aside for a service's watches beyond its
/// connections: a relay's lane takes one descriptor and one timer.
const SERVICE_WATCHES: usize = 8;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The buffer arena's shape was refused (segment size or count).
    #[error("buffer arena: {0}")]
    Buffers(#[from] ConfigError),
    /// Binding the address or starting a worker failed.
    #[error("starting workers: {0}")]
    Io(#[from] io::Error),
}

/// How to start a [`Server`]; from [`Server::builder`]. Every setting has a default
/// fit for a small public server.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    addr: SocketAddr,
    workers: usize,
    max_connections: usize,
    segment_size: usize,
    segment_count: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Option<Duration>,
    answer_timeout: Option<Duration>,
    max_request_head: usize,
    backlog: i32,
    driver: Option<Driver>,
    unix: Option<(UnixAddr, UnixListenOptions)>,
    inherited: Option<Arc<Inherited>>,
}

impl ServerBuilder {
    /// The address to listen on (default `127.0.0.1:8080`; port 0 picks a free one,
    /// see [`Server::local_addr`]).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self.unix = None;
        self
    }

    /// Where to listen: a TCP address (as [`addr`](Self::addr)) or a Unix socket
    /// (`unix:/run/berth.sock`, `unix:@name`). A socket file left by a server that
    /// died is an error unless `replace_stale` (see
    /// [`UnixListenOptions::replace_stale`]); the file is removed at shutdown.
    pub fn endpoint(mut self, endpoint: Endpoint, replace_stale: bool) -> Self {
        match endpoint {
            Endpoint::Tcp(addr) => return self.addr(addr),
            Endpoint::Unix(path) => {
                let options = UnixListenOptions::default().backlog(self.backlog).replace_stale(replace_stale);
                self.unix = Some((path, options));
            }
        }
        self
    }

    /// Accept on a listener that is already bound and listening — the one a service
    /// manager handed over (systemd socket activation, `LISTEN_FDS`) — instead of
    /// binding [`addr`](Self::addr) or [`endpoint`](Self::endpoint). Each worker
    /// accepts on its own clone of it.
    pub fn inherited(mut self, listener: Inherited) -> Self {
        self.inherited = Some(Arc::new(listener));
        self
    }

    /// Worker threads, each with its own completion port and `SO_REUSEPORT` listener
    /// (default: one per available core; 0 means the default; at most 256).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Connections open at once across all workers (default 10,000; at most
    /// 2^24 − 1). Past it a new
    /// connection is accepted and closed at once, and counted as refused.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Bytes per buffer segment (default 8192): the most a reply's bytes and a
    /// buffered request head can take.
    pub fn segment_size(mut self, bytes: usize) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Segments in the arena (default 8192). Idle connections hold none; a
    /// connection reading a request or sending a reply holds one or two. When none
    /// is left, the connection that needed one is closed (and counted in the arena's
    /// `exhausted`).
    pub fn segment_count(mut self, n: usize) -> Self {
        self.segment_count = n;
        self
    }

    /// How long a client may take to send a whole request head, counted from its
    /// first byte, or from the connection's start for the first request (default
    /// 15 s). A slow client (slowloris) is closed when it passes.
    pub fn header_timeout(mut self, t: Duration) -> Self {
        self.header_timeout = t;
        self
    }

    /// How long a kept-alive connection may stay idle between requests (default 60 s).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// How long one send (a reply's bytes, or a whole file body) may take before the
    /// connection is closed (default: no limit, so slow downloads of large files
    /// finish).
    pub fn write_timeout(mut self, t: Option<Duration>) -> Self {
        self.write_timeout = t;
        self
    }

    /// How long a connection may wait for an answer the service promised
    /// ([`Reply::answer_later`](crate::Reply::answer_later)) — an IPC relay's backend
    /// that is alive but never replies, say — before it is closed cleanly and counted
    /// in [`Metrics::answer_timeouts`](crate::Metrics::answer_timeouts) (default 30 s;
    /// `None`: wait for ever). Checked by a sweep that runs at most every
    /// `timeout / 8` (between 10 ms and 1 s), so a connection may wait that much
    /// longer. An answer that comes after is refused ([`NotWaiting`](crate::NotWaiting)).
    pub fn answer_timeout(mut self, t: Option<Duration>) -> Self {
        self.answer_timeout = t;
        self
    }

    /// The most bytes of unconsumed input buffered for a connection: the request head
    /// limit (default 8192; capped at the segment size).
    pub fn max_request_head(mut self, bytes: usize) -> Self {
        self.max_request_head = bytes.max(1);
        self
    }

    /// `listen(2)` backlog per worker (default 1024).
    pub fn backlog(mut self, n: i32) -> Self {
        self.backlog = n;
        self
    }

    /// The driver the workers' completion ports run on (default:
    /// [`Driver::from_env`], which is `Auto` — io_uring where the kernel allows it,
    /// else epoll — unless `BERTH_DRIVER` says otherwise).
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = Some(driver);
        self
    }

    /// Starts the workers and serves `service` until shut down.
    pub fn serve<S: Service>(self, service: S) -> Result<Server, ServeError> {
        let buffers =
            BufferManager::new(BufferConfig::new().segment_size(self.segment_size).segment_count(self.segment_count))?;
        // A `ConnId` names at most 256 workers and 2^24 slots per worker.
        let workers = if self.workers == 0 { default_workers() } else { self.workers }.min(MAX_WORKERS);
        let max_connections = self.max_connections.min(MAX_SLOTS - 1);
        let limit = ConnectionLimit::new(max_connections);
        // Any worker may get every connection; one more socket for its listener, and
        // a few for the service's watches (`Conns::watch`).
        let max_sockets = max_connections.saturating_add(1 + SERVICE_WATCHES);
        let mut config = WorkersConfig::new(self.addr, buffers.clone());
        config.workers = workers;
        config.max_sockets = max_sockets;
        config.ops = max_sockets.saturating_mul(2);
        config.limit = Some(limit.clone());
        config.listen = ListenOptions { backlog: self.backlog, ..ListenOptions::default() };
        config.driver = self.driver;
        config.unix = self.unix.map(|(path, options)| (path, options.backlog(self.backlog)));
        config.inherited = self.inherited;
        let rows: Arc<[Row]> = (0..workers).map(|_| Row::default()).collect();
        let limits = Limits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            answer_timeout: self.answer_timeout,
            max_input: self.max_request_head.min(buffers.segment_size()),
        };
        let service = Arc::new(service);
        let body_rows = rows.clone();
        let running = Workers::start(
            config,
            |_| (),
            move |worker| {
                Worker::new(service.clone(), limits, worker.listener, max_sockets, workers).run(worker, &body_rows)
            },
        )?;
        let shutdown = ShutdownHandle { handles: running.handles().to_vec().into(), rows, buffers, limit };
        tracing::info!(addr = %running.endpoint, workers, "berth-server listening");
        Ok(Server { local_addr: running.local_addr, workers: running, shutdown })
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A running server: worker threads serving a [`Service`].
///
/// ```
/// use berth_server::{Echo, Server};
/// use std::io::{Read, Write};
///
/// let server = Server::builder().addr("127.0.0.1:0".parse()?).workers(1).serve(Echo)?;
/// let mut client = std::net::TcpStream::connect(server.local_addr())?;
/// client.write_all(b"ping")?;
/// let mut reply = [0u8; 4];
/// client.read_exact(&mut reply)?;
/// assert_eq!(&reply, b"ping");
/// drop(client);
/// server.shutdown(std::time::Duration::from_secs(5))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    local_addr: SocketAddr,
    workers: Workers,
    shutdown: ShutdownHandle,
}

impl Server {
    /// A builder with the defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            max_connections: 10_000,
            segment_size: 8192,
            segment_count: 8192,
            header_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            write_timeout: None,
            answer_timeout: Some(Duration::from_secs(30)),
            max_request_head: 8192,
            backlog: 1024,
            driver: None,
            unix: None,
            inherited: None,
        }
    }

    /// The driver the workers' completion ports run on: `Epoll` or `Uring`.
    pub fn driver(&self) -> Driver {
        self.workers.driver()
    }

    /// The TCP address the workers listen on (the real port when 0 was asked for).
    /// For a server on a Unix socket this is the unused TCP default: see
    /// [`endpoint`](Self::endpoint).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the workers listen: the TCP address (with its real port) or the Unix
    /// socket.
    pub fn endpoint(&self) -> &Endpoint {
        &self.workers.endpoint
    }

    /// How many worker threads run.
    pub fn workers(&self) -> usize {
        self.shutdown.handles.len()
    }

    /// A handle that can start a graceful shutdown from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> Metrics {
        self.shutdown.metrics()
    }

    /// Shuts down gracefully (see [`ShutdownHandle::shutdown`]) and waits for the
    /// workers to finish.
    pub fn shutdown(self, grace: Duration) -> io::Result<()> {
        self.shutdown.shutdown(grace);
        self.join()
    }

    /// Waits until every worker has stopped (after a shutdown); the first worker
    /// error wins.
    pub fn join(self) -> io::Result<()> {
        self.workers.join()
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.local_addr).field("workers", &self.workers()).finish()
    }
}

/// Starts a graceful shutdown of a [`Server`] from any thread (a Ctrl-C handler,
/// say), and reads its metrics. Cheap to clone.
#[derive(Clone)]
pub struct ShutdownHandle {
    handles: Arc<[PortHandle]>,
    rows: Arc<[Row]>,
    buffers: BufferManager,
    limit: ConnectionLimit,
}

impl ShutdownHandle {
    /// Stops accepting (each worker closes its listener), closes idle connections,
    /// lets replies in flight finish — for at most `grace` — and then closes what is
    /// left; the workers then return and [`Server::join`] completes. A connection
    /// whose reply finishes during the grace period is closed after it. Calling it
    /// again, or after the server stopped, does no harm.
    pub fn shutdown(&self, grace: Duration) {
        let millis = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        for handle in self.handles.iter() {
            // A worker that already stopped has dropped its port (BrokenPipe): nothing
            // to do. A full post queue (WouldBlock) empties at the worker's next wait:
            // try again, for a while.
            let give_up = std::time::Instant::now() + Duration::from_secs(5);
            while let Err(e) = handle.post(SHUTDOWN, millis) {
                if e.kind() != std::io::ErrorKind::WouldBlock || std::time::Instant::now() >= give_up {
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        tracing::warn!("shutdown: a worker's post queue stayed full; it was not told to stop");
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> Metrics {
        let mut m = metrics::snapshot(&self.rows, self.buffers.stats());
        m.connections_refused += self.limit.refused();
        m
    }
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle").field("workers", &self.handles.len()).finish()
    }
}
