//! Thread per core: N completion ports, each with its own `SO_REUSEPORT` listener on a
//! shared address, its own op pool and its own buffer cache. The kernel spreads
//! connections across the listeners; no lock is shared on the hot path.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use berth_buf::BufferManager;
use berth_ops::ConnectionLimit;

use crate::{CompletionPort, Driver, Endpoint, ListenOptions, PortHandle, SocketId, UnixListenOptions};

/// How to start a group of workers.
#[derive(Debug, Clone)]
pub struct WorkersConfig {
    /// Threads (default: one per available core).
    pub workers: usize,
    /// Address all workers listen on (port 0 picks one port for all of them).
    pub addr: SocketAddr,
    /// Ops per worker.
    pub ops: usize,
    /// Sockets per worker.
    pub max_sockets: usize,
    /// The arena all workers lease from (each through its own cache).
    pub buffers: BufferManager,
    /// A connection cap shared by all workers.
    pub limit: Option<ConnectionLimit>,
    /// Listener options; `reuse_port` is forced on when there is more than one worker.
    pub listen: ListenOptions,
    /// The driver every worker's port runs on (default: [`Driver::from_env`], which is
    /// `Auto` unless `BERTH_DRIVER` says otherwise).
    pub driver: Option<Driver>,
    /// Listen on this Unix socket instead of `addr`: bound once, each worker
    /// accepting on its own clone of it (`SO_REUSEPORT` does not apply to Unix
    /// sockets). Its file is removed when the workers are joined.
    pub unix: Option<(crate::UnixAddr, UnixListenOptions)>,
    /// Accept on this listener, bound and listening already (systemd socket
    /// activation), instead of binding `addr` or `unix`: each worker accepts on its
    /// own clone of it.
    pub inherited: Option<std::sync::Arc<Inherited>>,
}

/// A listening socket the process was handed (systemd's `LISTEN_FDS`), for
/// [`WorkersConfig::inherited`].
#[derive(Debug)]
pub enum Inherited {
    /// A TCP listener.
    Tcp(std::net::TcpListener),
    /// A Unix stream listener.
    Unix(std::os::unix::net::UnixListener),
}

impl Inherited {
    fn try_clone(&self) -> io::Result<Inherited> {
        Ok(match self {
            Inherited::Tcp(l) => Inherited::Tcp(l.try_clone()?),
            Inherited::Unix(l) => Inherited::Unix(l.try_clone()?),
        })
    }

    /// Where it listens.
    pub fn endpoint(&self) -> io::Result<Endpoint> {
        use std::os::linux::net::SocketAddrExt;
        Ok(match self {
            Inherited::Tcp(l) => Endpoint::Tcp(l.local_addr()?),
            Inherited::Unix(l) => {
                let addr = l.local_addr()?;
                match (addr.as_pathname(), addr.as_abstract_name()) {
                    (Some(path), _) => Endpoint::Unix(crate::UnixAddr::Path(path.to_path_buf())),
                    (None, Some(name)) => Endpoint::Unix(crate::UnixAddr::Abstract(name.to_vec())),
                    (None, None) => return Err(io::Error::new(io::ErrorKind::InvalidInput, "an unnamed Unix socket")),
                }
            }
        })
    }
}

impl WorkersConfig {
    /// One worker per core on `addr`, 1024 ops and sockets each, sharing `buffers`.
    pub fn new(addr: SocketAddr, buffers: BufferManager) -> WorkersConfig {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        WorkersConfig {
            workers,
            addr,
            ops: 1024,
            max_sockets: 1024,
            buffers,
            limit: None,
            listen: ListenOptions::default(),
            driver: None,
            unix: None,
            inherited: None,
        }
    }
}

/// What a worker thread gets: its port (with the listener registered) and its index.
#[derive(Debug)]
pub struct Worker<T> {
    /// The worker's number, `0..workers`.
    pub index: usize,
    /// The worker's port.
    pub port: CompletionPort<T>,
    /// The worker's listener on the shared address.
    pub listener: SocketId,
}

/// A running group of workers.
pub struct Workers {
    /// The TCP address they all listen on (the configured `addr`, unused, when they
    /// listen on a Unix socket: see `endpoint`).
    pub local_addr: SocketAddr,
    /// Where they listen: the TCP address (with the port picked for port 0) or the
    /// Unix socket.
    pub endpoint: Endpoint,
    handles: Vec<PortHandle>,
    driver: Driver,
    threads: Vec<JoinHandle<io::Result<()>>>,
    /// The Unix socket file the workers accept on, removed when they are joined.
    _unix_file: Option<crate::socket::BoundFile>,
}

impl Workers {
    /// Starts `config.workers` threads. Each builds a port whose ops carry tokens from
    /// `token` and binds its listener; once every worker is set up, each runs
    /// `body(worker)` until it returns. An error building any worker's port or
    /// listener is returned here, and then no body runs: the workers already set up
    /// drop their ports and are joined before `start` returns.
    pub fn start<T, M, B>(config: WorkersConfig, token: M, body: B) -> io::Result<Workers>
    where
        T: 'static,
        M: Fn(usize) -> T + Send + Sync + Clone + 'static,
        B: Fn(Worker<T>) -> io::Result<()> + Send + Sync + Clone + 'static,
    {
        let mut listen = config.listen;
        listen.reuse_port |= config.workers > 1;
        let mut addr = config.addr;
        let mut handles = Vec::new();
        let mut running_on = Driver::Epoll;
        let mut threads = Vec::new();
        let mut gos = Vec::new();
        // Known before any worker starts, so an unnamed socket stops nothing running.
        let inherited_at = config.inherited.as_ref().map(|l| l.endpoint()).transpose()?;
        let unix = match (&config.unix, &config.inherited) {
            (Some((path, options)), None) => Some(crate::unix::listener(path, options).map_err(io::Error::other)?),
            _ => None,
        };
        for index in 0..config.workers.max(1) {
            let unix_listener = unix.as_ref().map(|(l, _)| l.try_clone()).transpose()?;
            let inherited = config.inherited.as_ref().map(|l| l.try_clone()).transpose()?;
            let (ready_tx, ready_rx) = mpsc::channel();
            let (go_tx, go_rx) = mpsc::channel::<bool>();
            let (token, body, buffers, limit) =
                (token.clone(), body.clone(), config.buffers.clone(), config.limit.clone());
            let (ops, max_sockets, driver) = (config.ops, config.max_sockets, config.driver);
            let ports = config.workers.max(1);
            let spawned = std::thread::Builder::new().name(format!("berth-worker-{index}")).spawn(move || {
                let setup = (|| {
                    let mut builder =
                        CompletionPort::builder().ops(ops).max_sockets(max_sockets).buffers(buffers).arena_ports(ports);
                    if let Some(limit) = limit {
                        builder = builder.connection_limit(limit);
                    }
                    if let Some(driver) = driver {
                        builder = builder.driver(driver);
                    }
                    let mut port = builder.build(token)?;
                    let (listener, local) = match (inherited, unix_listener) {
                        (Some(Inherited::Tcp(l)), _) => {
                            let local = l.local_addr()?;
                            (port.register_listener(l, listen.nodelay).map_err(io::Error::other)?, local)
                        }
                        (Some(Inherited::Unix(l)), _) | (None, Some(l)) => {
                            (port.register_unix_listener(l).map_err(io::Error::other)?, addr)
                        }
                        (None, None) => {
                            let listener = port.listen(addr, listen).map_err(io::Error::other)?;
                            (listener, port.local_addr(listener).map_err(io::Error::other)?)
                        }
                    };
                    Ok::<_, io::Error>((port, listener, local))
                })();
                match setup {
                    Ok((port, listener, local)) => {
                        let _ = ready_tx.send(Ok((port.handle(), local, port.driver())));
                        // Run only once every worker is set up; otherwise let go.
                        match go_rx.recv() {
                            Ok(true) => body(Worker { index, port, listener }),
                            _ => Ok(()),
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                        Err(e)
                    }
                }
            });
            let ready = match spawned {
                Ok(thread) => {
                    threads.push(thread);
                    ready_rx.recv().unwrap_or_else(|_| Err(io::Error::other("worker died during setup")))
                }
                Err(e) => Err(e),
            };
            match ready {
                Ok((handle, local, kind)) => {
                    // The first worker may have picked the port; the others join it.
                    addr = local;
                    running_on = kind;
                    handles.push(handle);
                    gos.push(go_tx);
                }
                Err(e) => {
                    for go in gos {
                        let _ = go.send(false);
                    }
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        for go in gos {
            let _ = go.send(true);
        }
        let (endpoint, unix_file) = match (inherited_at, &config.unix, unix) {
            (Some(Endpoint::Tcp(_)), _, _) => (Endpoint::Tcp(addr), None),
            (Some(at), _, _) => (at, None),
            (None, Some((path, _)), Some((_, file))) => (Endpoint::Unix(path.clone()), file),
            _ => (Endpoint::Tcp(addr), None),
        };
        Ok(Workers { local_addr: addr, endpoint, handles, driver: running_on, threads, _unix_file: unix_file })
    }

    /// The driver the workers' ports run on (the same for all: each builds with the
    /// same choice on the same kernel).
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// Handles for posting to each worker (to ask them to stop, say).
    pub fn handles(&self) -> &[PortHandle] {
        &self.handles
    }

    /// Waits for every worker to return; the first error wins.
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads {
            let r = t.join().unwrap_or_else(|_| Err(io::Error::other("worker panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers").field("local_addr", &self.local_addr).field("workers", &self.threads.len()).finish()
    }
}
