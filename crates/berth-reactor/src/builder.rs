//! [`PortBuilder`] and [`ListenOptions`]: how a port and its listeners are set up,
//! and which driver the port runs on.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Once};

use berth_buf::BufferManager;
use berth_ops::{ConnectionLimit, OpPool};
use slab::Slab;

use crate::core::{Core, Meta};
use crate::driver::{Backend, Driver, epoll::Epoll, uring::Uring};
use crate::handle::{Notifier, Shared};
use crate::port::{CompletionPort, PortStats};
use crate::timer::Timers;

/// Listener options: the socket2 settings that `std` does not expose. Socket
/// options set on the listener (keepalive, buffer sizes) are inherited by every
/// connection it accepts.
#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    /// `listen(2)` backlog (default 1024).
    pub backlog: i32,
    /// `SO_REUSEPORT`, so several ports (one per thread) can share an address
    /// (default false).
    pub reuse_port: bool,
    /// `TCP_NODELAY` on accepted connections (default true).
    pub nodelay: bool,
    /// `IPV6_V6ONLY` for an IPv6 address: `Some(false)` also accepts IPv4 clients
    /// (as mapped addresses) on `[::]` (default: the system's setting).
    pub only_v6: Option<bool>,
    /// TCP keepalive on accepted connections (`SO_KEEPALIVE` with its idle time,
    /// interval and probe count), so a peer that vanished without a FIN is found
    /// (default off).
    pub keepalive: Option<Keepalive>,
    /// `SO_RCVBUF` in bytes, set before `listen` so the window scale fits
    /// (default: the system's autotuning).
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes (default: the system's autotuning).
    pub send_buffer: Option<usize>,
}

/// TCP keepalive timing ([`ListenOptions::keepalive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe (`TCP_KEEPIDLE`).
    pub idle: std::time::Duration,
    /// Time between probes (`TCP_KEEPINTVL`).
    pub interval: std::time::Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub retries: u32,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            backlog: 1024,
            reuse_port: false,
            nodelay: true,
            only_v6: None,
            keepalive: None,
            recv_buffer: None,
            send_buffer: None,
        }
    }
}

/// How to build a [`CompletionPort`]; from [`CompletionPort::builder`].
#[derive(Debug, Clone)]
pub struct PortBuilder {
    ops: usize,
    max_sockets: usize,
    events: usize,
    posts: usize,
    buffers: Option<BufferManager>,
    cache_batch: usize,
    limit: Option<ConnectionLimit>,
    driver: Option<Driver>,
    audit: bool,
    ring_datagrams: bool,
    arena_ports: usize,
}

impl PortBuilder {
    /// Checks, each time the port is about to sleep, that no op it holds could run
    /// now, and counts those that could in [`PortStats::stranded_ops`](crate::PortStats::stranded_ops)
    /// (default off). A diagnostic for tests and for chasing a stall: on epoll it
    /// costs one `poll(2)` per socket with a queued op per sleep.
    pub fn audit(mut self, on: bool) -> Self {
        self.audit = on;
        self
    }

    /// Ops in the port's pool (default 1024): the most operations in flight at once.
    pub fn ops(mut self, n: usize) -> Self {
        self.ops = n;
        self
    }

    /// Size of the socket table (default 1024). Accepts beyond it are refused
    /// cleanly and counted.
    pub fn max_sockets(mut self, n: usize) -> Self {
        self.max_sockets = n;
        self
    }

    /// Posts ([`PortHandle::post`](crate::PortHandle::post)) that may wait for the port at once (default 1024):
    /// beyond that a post is refused with `WouldBlock` instead of queueing without
    /// bound behind a port that does not wait.
    pub fn posts(mut self, n: usize) -> Self {
        self.posts = n.max(1);
        self
    }

    /// Which driver the port runs on (default: [`Driver::from_env`], which is
    /// [`Driver::Auto`] unless `BERTH_DRIVER` says otherwise).
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = Some(driver);
        self
    }

    /// How many ports share the arena given to [`buffers`](Self::buffers) (default
    /// 1). On io_uring each port lends part of the arena to its kernel buffer ring
    /// (a quarter of the arena, at most 256 segments); ports sharing one arena split
    /// that quarter, so that however many there are, three quarters stay for the
    /// segments replies and own-buffer receives lease. [`Workers`](crate::workers::Workers)
    /// sets it to its worker count.
    pub fn arena_ports(mut self, n: usize) -> Self {
        self.arena_ports = n.max(1);
        self
    }

    /// On io_uring, run UDP sockets' datagram ops as ring operations: a `RECVMSG`
    /// or `SENDMSG` each (up to 32 of a socket's in the kernel at once), and a
    /// multishot `RECVMSG` drawing from the buffer ring for pooled receives.
    ///
    /// Off by default (the default is on when `BERTH_RING_DATAGRAMS` is `1`,
    /// `true`, `on` or `yes`): datagram ops then run by readiness, as on the epoll
    /// driver — the port makes an epoll instance for its UDP sockets at the first
    /// datagram op, polls it through the ring, and moves each socket's queued
    /// datagrams with one `recvmmsg`/`sendmmsg` of up to 64. On loopback that costs
    /// less CPU per datagram than the ring operations (`udp_bench` prints `berth`
    /// and `berth_ring` side by side, each against tokio). A pooled receive then
    /// leases its segment just before the call and completes with
    /// `BufferExhausted` when the arena is empty, instead of waiting for the buffer
    /// ring. The epoll driver ignores this.
    pub fn ring_datagrams(mut self, on: bool) -> Self {
        self.ring_datagrams = on;
        self
    }

    /// Readiness events fetched per `epoll_wait` (default 1024; the epoll driver's).
    pub fn events(mut self, n: usize) -> Self {
        self.events = n.max(1);
        self
    }

    /// The buffer arena that pooled receives lease from (default: a new arena of
    /// 1024 × 4 KiB segments).
    pub fn buffers(mut self, manager: BufferManager) -> Self {
        self.buffers = Some(manager);
        self
    }

    /// Segments moved at a time between the port's local cache and the shared free
    /// list (default 32).
    pub fn cache_batch(mut self, n: usize) -> Self {
        self.cache_batch = n;
        self
    }

    /// Caps accepted connections: beyond the limit a new connection is closed at once
    /// and counted in [`PortStats::refused`]. Share one limit between ports to cap a
    /// whole server.
    pub fn connection_limit(mut self, limit: ConnectionLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Builds the port on this thread, with every op created up front by `token(i)`.
    ///
    /// # Errors
    /// The kernel refused a resource (the epoll instance, the ring, the arena), or
    /// `BERTH_DRIVER` holds an unknown name (`InvalidInput`). With
    /// [`Driver::Uring`] where io_uring cannot run, an error of kind `Unsupported`
    /// whose inner error is a [`UringUnavailable`](crate::UringUnavailable).
    pub fn build<T>(self, token: impl FnMut(usize) -> T) -> io::Result<CompletionPort<T>> {
        let wanted = match self.driver {
            Some(d) => d,
            None => Driver::from_env()?,
        };
        let ops = self.ops.min(u32::MAX as usize - 2);
        let buffers = match self.buffers {
            Some(b) => b,
            None => BufferManager::with_defaults().map_err(io::Error::other)?,
        };
        // The io_uring buffer ring: a quarter of the arena shared among the ports
        // that lease from it, at most 256 segments.
        let ring_entries = match (buffers.segment_count() / 4 / self.arena_ports).min(256) {
            0 => 0,
            n => 1u16 << n.ilog2(),
        };
        let max_sockets = self.max_sockets.min(u32::MAX as usize - 1);
        let (ring_datagrams, events) = (self.ring_datagrams, self.events);
        let uring = || {
            Uring::new(
                ops,
                max_sockets,
                buffers.segment_size(),
                ring_entries,
                || buffers.lease().ok(),
                ring_datagrams,
                events,
            )
        };
        let (driver, notifier) = match wanted {
            Driver::Epoll => epoll(self.events)?,
            Driver::Uring => match uring() {
                Ok((ring, fd)) => (Backend::Uring(ring), Notifier::EventFd(fd)),
                Err(e) => return Err(io::Error::new(io::ErrorKind::Unsupported, e)),
            },
            Driver::Auto => match uring() {
                Ok((ring, fd)) => {
                    static CHOSEN: Once = Once::new();
                    CHOSEN.call_once(|| tracing::info!(flags = ring.flags, "completion ports run on io_uring"));
                    (Backend::Uring(ring), Notifier::EventFd(fd))
                }
                Err(e) => {
                    static FELL_BACK: Once = Once::new();
                    FELL_BACK.call_once(|| tracing::info!("completion ports run on epoll: {e}"));
                    epoll(self.events)?
                }
            },
        };
        // One cache per thread: a second port on the same thread shares the arena's
        // shared list instead.
        let cache = buffers.local_cache_with_batch(self.cache_batch.max(1)).ok();
        let stats = PortStats { driver: driver.kind(), ring_buffers: driver.ring_buffers(), ..PortStats::default() };
        Ok(CompletionPort {
            driver,
            core: Core {
                pool: OpPool::new(ops, token),
                meta: vec![Meta::IDLE; ops],
                files: (0..ops).map(|_| None).collect(),
                sockets: Slab::with_capacity(max_sockets),
                generations: vec![0; max_sockets],
                max_sockets,
                ready: VecDeque::with_capacity(ops + self.posts + 64),
                timers: Timers::with_capacity(2 * ops + max_sockets + 16),
                shared: Arc::new(Shared {
                    notifier,
                    posts: Mutex::new(VecDeque::with_capacity(self.posts)),
                    post_capacity: self.posts,
                    closed: AtomicBool::new(false),
                }),
                buffers,
                cache,
                limit: self.limit,
                stats,
                audit: self.audit,
                slots: None,
                packets: (0..ops).map(|_| crate::packets::Packets::default()).collect(),
            },
            batch: Vec::with_capacity(self.events.max(64)),
        })
    }
}

fn epoll(events: usize) -> io::Result<(Backend, Notifier)> {
    let (driver, waker) = Epoll::new(events)?;
    Ok((Backend::Epoll(driver), Notifier::Epoll(waker)))
}

impl CompletionPort<()> {
    /// A builder with the defaults: 1024 ops, 1024 sockets, a fresh arena, the
    /// driver from [`Driver::from_env`].
    pub fn builder() -> PortBuilder {
        PortBuilder {
            ops: 1024,
            max_sockets: 1024,
            events: 1024,
            posts: 1024,
            buffers: None,
            cache_batch: 32,
            limit: None,
            driver: None,
            audit: false,
            ring_datagrams: std::env::var("BERTH_RING_DATAGRAMS")
                .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "on" | "yes")),
            arena_ports: 1,
        }
    }
}
