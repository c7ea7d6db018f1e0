//! [`IpcRelay`]: length-prefixed frames from TCP clients, relayed to a local backend
//! process over a berth-ipc [`Duplex`], and the backend's replies routed back; and
//! [`RelayBackend`], the backend's end of the protocol.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_ipc::{Channel, Config, Duplex, OpenError, RecvError, RecvGuard, SendError, Sender};

use crate::conn::Conns;
use crate::service::{ConnId, Reply, Service, WorkerHandle};

/// Bytes of a record header: `u64` connection id, `u32` payload length.
const RECORD_HEADER: usize = 12;
/// The connection id of a backend's hello record.
const HELLO: u64 = u64::MAX;
/// How often the relay thread looks up from the ring to notice a shutdown.
const POLL: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How to start an [`IpcRelay`].
#[derive(Debug, Clone)]
pub struct RelayConfig {
    channel: String,
    max_frame: usize,
    ring_capacity: u64,
    queue: usize,
}

impl RelayConfig {
    /// A relay on the named channel `channel` (letters, digits, `.`, `_`, `-`).
    pub fn new(channel: impl Into<String>) -> RelayConfig {
        RelayConfig { channel: channel.into(), max_frame: 64 * 1024, ring_capacity: 4 << 20, queue: 1024 }
    }

    /// The largest frame payload, in bytes (default 64 KiB). The server's segment
    /// size and request head limit must take a frame and its 4-byte length
    /// ([`ServerBuilder::segment_size`](crate::ServerBuilder::segment_size),
    /// [`max_request_head`](crate::ServerBuilder::max_request_head)); a frame that
    /// does not fit is refused like an oversized one.
    pub fn max_frame(mut self, bytes: usize) -> RelayConfig {
        self.max_frame = bytes;
        self
    }

    /// Bytes of each of the two rings (default 4 MiB; rounded up to a power of two
    /// that takes at least two frames).
    pub fn ring_capacity(mut self, bytes: u64) -> RelayConfig {
        self.ring_capacity = bytes;
        self
    }

    /// Replies queued per worker before the relay thread waits (default 1024).
    pub fn queue(mut self, items: usize) -> RelayConfig {
        self.queue = items.max(1);
        self
    }

    fn ipc(&self) -> Config {
        let message = (self.max_frame + RECORD_HEADER) as u64;
        let capacity = self.ring_capacity.max(2 * (message + 8)).next_power_of_two();
        Config::new(capacity).max_message(message)
    }
}

/// Why an [`IpcRelay`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The channel could not be created (a bad name, a bad size, or an OS error).
    #[error("relay channel: {0}")]
    Channel(#[from] OpenError),
    /// The relay thread could not be started.
    #[error("relay thread: {0}")]
    Io(#[from] io::Error),
    /// The maximum frame does not fit a `u32` length.
    #[error("max frame of {0} bytes is too large")]
    FrameTooLarge(usize),
}

/// The relay's counters (see [`RelayHandle::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Frames forwarded to a backend.
    pub frames_in: u64,
    /// Replies written back to their connection.
    pub replies_out: u64,
    /// Connections closed for an oversized or malformed frame length.
    pub frames_refused: u64,
    /// Replies for a connection that is gone (or not waiting): dropped.
    pub replies_dropped: u64,
    /// Connections closed because a frame came while no backend was attached.
    pub closed_no_backend: u64,
    /// Connections closed because the request ring was full.
    pub closed_ring_full: u64,
    /// Connections closed because their backend died or closed before replying.
    pub closed_backend_lost: u64,
    /// Backends attached so far (hello records accepted).
    pub backends_attached: u64,
    /// Records from the backend with a bad header, dropped.
    pub bad_records: u64,
}

impl fmt::Display for RelayStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "relay: frames in {} out {}, refused {}, replies dropped {}, closed: no backend {} ring full {} \
             backend lost {}, backends attached {}, bad records {}",
            self.frames_in,
            self.replies_out,
            self.frames_refused,
            self.replies_dropped,
            self.closed_no_backend,
            self.closed_ring_full,
            self.closed_backend_lost,
            self.backends_attached,
            self.bad_records
        )
    }
}

#[derive(Default)]
struct Counters {
    frames_in: AtomicU64,
    replies_out: AtomicU64,
    frames_refused: AtomicU64,
    replies_dropped: AtomicU64,
    closed_no_backend: AtomicU64,
    closed_ring_full: AtomicU64,
    closed_backend_lost: AtomicU64,
    backends_attached: AtomicU64,
    bad_records: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The backend link, shared by the workers (senders) and the relay thread.
struct Link {
    /// The request ring's sender while a backend is attached.
    tx: Option<Sender>,
    /// Counts attached backends; a request remembers the one it went to.
    generation: u64,
}

enum Item {
    /// A reply payload for a connection.
    Reply(ConnId, Vec<u8>),
    /// The backend of this generation is gone: close who waits for it.
    Lost(u64),
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    /// Payload buffers to reuse.
    spare: Vec<Vec<u8>>,
    /// The worker stopped: drop what comes.
    dead: bool,
}

/// One worker's bounded reply queue.
struct Inbox {
    worker: WorkerHandle,
    queue: Mutex<Queue>,
    room: Condvar,
}

struct Shared {
    config: RelayConfig,
    link: Mutex<Link>,
    attached: Condvar,
    inboxes: Mutex<Vec<Option<Arc<Inbox>>>>,
    stop: AtomicBool,
    counts: Counters,
}

/// The IPC relay service: TCP clients' frames go to a local backend process over a
/// shared-memory [`Duplex`], and its replies come back to the right connection.
///
/// # Protocol
///
/// - **TCP side.** A client sends frames: a 4-byte big-endian payload length, then the
///   payload (at most [`RelayConfig::max_frame`], default 64 KiB). Each frame gets
///   one reply frame of the same shape, in order: a connection has one request at
///   the backend at a time, and frames the client pipelines wait in its buffer. A
///   length over the maximum (or with the top bit set) closes the connection
///   cleanly, counted in [`RelayStats::frames_refused`].
/// - **The channel.** The relay creates the named duplex
///   `/dev/shm/berth-ipc.<channel>.a2b` / `.b2a` (0600) at start — after
///   [`Channel::cleanup_stale`] removed files left by dead processes, and replacing a
///   file of that name still held by a live process (one relay per name) — and is
///   side A. A backend attaches with [`Duplex::open_named`] as side B
///   ([`RelayBackend::attach`]) and sends a *hello* record; only then does the relay
///   forward frames to it. Until then, a client's frame is answered by a clean close
///   ([`RelayStats::closed_no_backend`]).
/// - **Records.** Each record in either ring is `[u64 connection id | u32 payload
///   length | payload]`, little-endian like the ring itself. The id is the relay's
///   [`ConnId`]; the backend copies it into the reply. The hello is the id
///   `u64::MAX` with an empty payload. A record whose length field does not match is
///   dropped and counted ([`RelayStats::bad_records`]).
/// - **A dead backend.** When the backend dies (`PeerDead`) or closes its end
///   (`Closed`), every client waiting for a reply from it is closed cleanly
///   ([`RelayStats::closed_backend_lost`]); the relay removes the files, creates
///   fresh ones under the same name and waits for the next backend's hello. A
///   backend restarts by attaching again (the old files' roles stay claimed, so it
///   must wait for the new ones: [`RelayBackend::attach`] fails until they exist).
/// - **A restarted relay.** Its files replace the old ones; a backend still attached
///   to the old files sees the old relay dead (`PeerDead`) and attaches again.
///
/// # Threads and queues
///
/// Workers send to the backend with a non-blocking `try_reserve` under one mutex
/// (the ring has one producer). If the ring is full the connection is closed
/// cleanly and counted ([`RelayStats::closed_ring_full`]): a frame is never held,
/// and a worker never blocks. One relay thread blocks on the reply ring
/// (`recv` with a short timeout, to notice shutdown) and puts each reply in the
/// owning worker's bounded queue ([`RelayConfig::queue`]), posting to the worker
/// when the queue was empty ([`WorkerHandle::post`]). When a queue is full the
/// relay thread waits for room: back-pressure, which fills the reply ring and
/// then holds the backend. No reply is dropped for want of room, so no client waits
/// forever for a reply that was thrown away.
///
/// # Example
///
/// ```
/// use berth_server::{IpcRelay, RelayBackend, RelayConfig, Server};
/// use std::io::{Read, Write};
/// use std::time::Duration;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let channel = format!("relay-doc-{}", std::process::id());
/// let relay = IpcRelay::start(RelayConfig::new(&channel).max_frame(1024))?;
/// let handle = relay.handle();
/// let server = Server::builder().addr("127.0.0.1:0".parse()?).workers(1).serve(relay)?;
///
/// // A backend (here a thread; usually another process) attaches and echoes.
/// let mut backend = RelayBackend::attach(&channel)?;
/// assert!(handle.wait_attached(Duration::from_secs(5)));
/// std::thread::spawn(move || while backend.echo_one(None).is_ok() {});
///
/// let mut client = std::net::TcpStream::connect(server.local_addr())?;
/// client.write_all(b"\0\0\0\x05hello")?;
/// let mut reply = [0u8; 9];
/// client.read_exact(&mut reply)?;
/// assert_eq!(&reply, b"\0\0\0\x05hello");
/// # drop(client);
/// server.shutdown(Duration::from_secs(1))?; // also stops the relay, removes the files
/// # Ok(())
/// # }
/// ```
pub struct IpcRelay {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Watches an [`IpcRelay`] from outside the server: its counters and whether a
/// backend is attached. Cheap to clone.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

/// Per-connection state of the relay: which backend the pending request went to.
#[derive(Debug, Default)]
pub struct RelayConn {
    /// The generation of the backend holding this connection's request, 0 if none.
    waiting_on: u64,
}

impl IpcRelay {
    /// Creates the channel (see [`IpcRelay`]) and starts the relay thread.
    pub fn start(config: RelayConfig) -> Result<IpcRelay, RelayError> {
        if u32::try_from(config.max_frame).is_err() || config.max_frame > (1 << 31) {
            return Err(RelayError::FrameTooLarge(config.max_frame));
        }
        let duplex = create_duplex(&config.channel, &config.ipc())?;
        let shared = Arc::new(Shared {
            config,
            link: Mutex::new(Link { tx: None, generation: 0 }),
            attached: Condvar::new(),
            inboxes: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            counts: Counters::default(),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("berth-relay".into())
            .spawn(move || relay_thread(&sh, duplex))
            .inspect_err(|_| {
                let _ = Duplex::unlink_named(&shared.config.channel);
            })?;
        tracing::info!(channel = %shared.config.channel, "relay channel created; waiting for a backend");
        Ok(IpcRelay { shared, thread: Some(thread) })
    }

    /// A handle on the counters and the backend's state.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle { shared: self.shared.clone() }
    }
}

impl Drop for IpcRelay {
    /// Stops the relay thread (within about 100 ms) and removes the channel files.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl fmt::Debug for IpcRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpcRelay").field("channel", &self.shared.config.channel).finish()
    }
}

impl RelayHandle {
    /// A snapshot of the counters.
    pub fn stats(&self) -> RelayStats {
        let c = &self.shared.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayStats {
            frames_in: get(&c.frames_in),
            replies_out: get(&c.replies_out),
            frames_refused: get(&c.frames_refused),
            replies_dropped: get(&c.replies_dropped),
            closed_no_backend: get(&c.closed_no_backend),
            closed_ring_full: get(&c.closed_ring_full),
            closed_backend_lost: get(&c.closed_backend_lost),
            backends_attached: get(&c.backends_attached),
            bad_records: get(&c.bad_records),
        }
    }

    /// Whether a backend is attached now.
    pub fn attached(&self) -> bool {
        lock(&self.shared.link).tx.is_some()
    }

    /// Waits up to `timeout` for a backend to be attached; true if one is.
    pub fn wait_attached(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut link = lock(&self.shared.link);
        while link.tx.is_none() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            link = self.shared.attached.wait_timeout(link, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Waits up to `timeout` until no backend is attached (the relay noticed a dead
    /// backend); true if none is.
    pub fn wait_detached(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut link = lock(&self.shared.link);
        while link.tx.is_some() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            link = self.shared.attached.wait_timeout(link, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

impl fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayHandle").field("channel", &self.shared.config.channel).finish()
    }
}

impl Service for IpcRelay {
    type Conn = RelayConn;

    fn connect(&self, _peer: Option<SocketAddr>) -> RelayConn {
        RelayConn::default()
    }

    fn data(&self, conn: &mut RelayConn, input: &[u8], reply: &mut Reply<'_>) -> usize {
        let sh = &*self.shared;
        let Some(&[a, b, c, d]) = input.get(..4) else { return 0 };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        let Some(payload) = input.get(4..4 + len) else {
            if len > sh.config.max_frame || reply.input_full() {
                // Oversized, malformed (top bit), or larger than the server buffers.
                add(&sh.counts.frames_refused, 1);
                tracing::debug!(len, "relay: frame refused: closing");
                reply.close();
                return input.len();
            }
            return 0; // wait for the rest of the frame
        };
        if len > sh.config.max_frame {
            add(&sh.counts.frames_refused, 1);
            reply.close();
            return input.len();
        }
        let mut link = lock(&sh.link);
        let generation = link.generation;
        let Some(tx) = link.tx.as_mut() else {
            drop(link);
            add(&sh.counts.closed_no_backend, 1);
            reply.close();
            return input.len();
        };
        let id = reply.conn_id().to_u64();
        let forwarded = tx.try_reserve(RECORD_HEADER + len).map(|mut grant| {
            grant[..8].copy_from_slice(&id.to_le_bytes());
            grant[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            grant[12..].copy_from_slice(payload);
            grant.commit();
        });
        drop(link);
        if let Err(e) = forwarded {
            match e {
                SendError::Full => add(&sh.counts.closed_ring_full, 1),
                // Closed, dead, corrupted: the relay thread notices and reattaches.
                _ => add(&sh.counts.closed_backend_lost, 1),
            }
            tracing::debug!("relay: cannot forward a frame ({e}): closing");
            reply.close();
            return input.len();
        }
        add(&sh.counts.frames_in, 1);
        conn.waiting_on = generation;
        reply.answer_later();
        4 + len
    }

    fn worker_started(&self, worker: WorkerHandle) {
        let index = worker.index();
        let inbox = Arc::new(Inbox { worker, queue: Mutex::new(Queue::default()), room: Condvar::new() });
        let mut inboxes = lock(&self.shared.inboxes);
        if inboxes.len() <= index {
            inboxes.resize(index + 1, None);
        }
        inboxes[index] = Some(inbox);
    }

    fn posted(&self, _data: u64, conns: &mut Conns<'_, Self>) {
        let sh = &*self.shared;
        let Some(inbox) = lock(&sh.inboxes).get(conns.worker()).cloned().flatten() else { return };
        let cap = sh.config.queue;
        let mut spent: Option<Vec<u8>> = None;
        loop {
            let item = {
                let mut q = lock(&inbox.queue);
                if let Some(buf) = spent.take()
                    && q.spare.len() < cap
                {
                    q.spare.push(buf);
                }
                let was_full = q.items.len() >= cap;
                let item = q.items.pop_front();
                if was_full {
                    inbox.room.notify_all();
                }
                item
            };
            match item {
                None => break,
                Some(Item::Reply(id, payload)) => {
                    let answered = conns.answer(id, |conn, reply| {
                        // Counted before the reply can reach the client.
                        add(&sh.counts.replies_out, 1);
                        conn.waiting_on = 0;
                        // A reply larger than the segment fails the reply: the server closes.
                        if reply.write_bytes(&(payload.len() as u32).to_be_bytes()).is_ok() {
                            let _ = reply.write_bytes(&payload);
                        }
                    });
                    if answered.is_err() {
                        add(&sh.counts.replies_dropped, 1);
                    }
                    spent = Some(payload);
                }
                Some(Item::Lost(generation)) => {
                    conns.close_waiting(|conn| {
                        let lost = conn.waiting_on != 0 && conn.waiting_on <= generation;
                        if lost {
                            // Counted before the close can reach the client.
                            add(&sh.counts.closed_backend_lost, 1);
                        }
                        lost
                    });
                }
            }
        }
    }
}

/// Creates the relay's duplex: stale files of dead processes are removed first, and
/// a file of this name that a live process still holds is replaced.
fn create_duplex(name: &str, cfg: &Config) -> Result<Duplex, OpenError> {
    if let Err(e) = Channel::cleanup_stale() {
        tracing::debug!("relay: cleaning up stale channels: {e}");
    }
    match Duplex::create_named(name, cfg) {
        Err(OpenError::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => {
            tracing::warn!(channel = name, "relay channel exists and is in use: replacing it");
            let _ = Duplex::unlink_named(name);
            Duplex::create_named(name, cfg)
        }
        r => r,
    }
}

fn relay_thread(sh: &Shared, first: Duplex) {
    let mut duplex = Some(first);
    while !sh.stop.load(Ordering::Acquire) {
        let d = match duplex.take() {
            Some(d) => d,
            None => match create_duplex(&sh.config.channel, &sh.config.ipc()) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(channel = %sh.config.channel, "relay: cannot recreate the channel: {e}");
                    pause(sh, Duration::from_secs(1));
                    continue;
                }
            },
        };
        let (tx, mut rx) = d.split();
        let mut tx = Some(tx);
        let mut attached = None;
        while !sh.stop.load(Ordering::Acquire) {
            let msg = match rx.recv(Some(POLL)) {
                Ok(msg) => msg,
                Err(RecvError::TimedOut) => continue,
                Err(e) => {
                    if attached.is_some() {
                        tracing::warn!("relay: backend gone ({e}); waiting for a new one");
                    }
                    break;
                }
            };
            let Some((id, payload)) = parse_record(&msg) else {
                add(&sh.counts.bad_records, 1);
                continue;
            };
            if id == HELLO {
                if let Some(tx) = tx.take() {
                    let mut link = lock(&sh.link);
                    link.generation += 1;
                    link.tx = Some(tx);
                    attached = Some(link.generation);
                    drop(link);
                    sh.attached.notify_all();
                    add(&sh.counts.backends_attached, 1);
                    tracing::info!(channel = %sh.config.channel, "relay: backend attached");
                }
                continue;
            }
            let id = ConnId::from_u64(id);
            let Some(inbox) = lock(&sh.inboxes).get(id.worker()).cloned().flatten() else {
                add(&sh.counts.replies_dropped, 1);
                continue;
            };
            let mut buf = lock(&inbox.queue).spare.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(payload);
            drop(msg);
            deliver(sh, &inbox, Item::Reply(id, buf));
        }
        if let Some(generation) = attached {
            lock(&sh.link).tx = None;
            sh.attached.notify_all();
            let inboxes: Vec<_> = lock(&sh.inboxes).iter().flatten().cloned().collect();
            for inbox in &inboxes {
                deliver(sh, inbox, Item::Lost(generation));
            }
        }
        let _ = Duplex::unlink_named(&sh.config.channel);
    }
    lock(&sh.link).tx = None;
    sh.attached.notify_all();
    // Also when the stop came before the first round began.
    let _ = Duplex::unlink_named(&sh.config.channel);
}

/// Splits a record into its connection id and payload, if its header is sound.
fn parse_record(msg: &[u8]) -> Option<(u64, &[u8])> {
    let id = u64::from_le_bytes(msg.get(..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(msg.get(8..12)?.try_into().ok()?) as usize;
    let payload = msg.get(RECORD_HEADER..)?;
    (payload.len() == len).then_some((id, payload))
}

/// Queues `item` for the worker, waiting while its queue is full (back-pressure),
/// and posts to the worker when the queue was empty.
fn deliver(sh: &Shared, inbox: &Inbox, item: Item) {
    let mut q = lock(&inbox.queue);
    while q.items.len() >= sh.config.queue && !q.dead {
        if sh.stop.load(Ordering::Acquire) {
            add(&sh.counts.replies_dropped, 1);
            return;
        }
        q = inbox.room.wait_timeout(q, POLL).unwrap_or_else(|e| e.into_inner()).0;
    }
    if q.dead {
        add(&sh.counts.replies_dropped, 1);
        return;
    }
    let was_empty = q.items.is_empty();
    q.items.push_back(item);
    if was_empty
        && let Err(e) = inbox.worker.post(0)
        // WouldBlock: the worker's port has posts waiting, so it wakes and drains this
        // queue anyway (`posted` reads it whatever the data).
        && e.kind() != std::io::ErrorKind::WouldBlock
    {
        // The worker stopped: nothing will read this queue again.
        q.dead = true;
        q.items.clear();
    }
}

fn pause(sh: &Shared, total: Duration) {
    let end = Instant::now() + total;
    while !sh.stop.load(Ordering::Acquire) && Instant::now() < end {
        std::thread::sleep(POLL.min(end.saturating_duration_since(Instant::now())));
    }
}

/// The backend's end of the relay protocol (see [`IpcRelay`]): attach to
/// a relay's channel, receive requests tagged with their connection id, reply.
#[derive(Debug)]
pub struct RelayBackend {
    duplex: Duplex,
}

/// A request from a relay: the connection id to reply to, and the payload, lent in
/// place (the ring's space is given back when it drops).
#[derive(Debug)]
pub struct RelayRequest<'a> {
    conn: u64,
    guard: RecvGuard<'a>,
}

impl RelayRequest<'_> {
    /// The connection id to put in the reply.
    pub fn conn(&self) -> u64 {
        self.conn
    }

    /// The frame's payload.
    pub fn payload(&self) -> &[u8] {
        &self.guard[RECORD_HEADER..]
    }
}

impl RelayBackend {
    /// Attaches to the relay's channel `name` as side B and says hello. Fails while
    /// the channel does not exist or another backend holds it (retry a little later).
    pub fn attach(name: &str) -> Result<RelayBackend, OpenError> {
        let mut duplex = Duplex::open_named(name)?;
        let mut hello = [0u8; RECORD_HEADER];
        hello[..8].copy_from_slice(&HELLO.to_le_bytes());
        duplex.tx.send(&hello, Some(Duration::from_secs(5))).map_err(|e| OpenError::Io(io::Error::other(e)))?;
        Ok(RelayBackend { duplex })
    }

    /// Attaches to `name`, retrying every 20 ms until `timeout` passes.
    pub fn attach_retrying(name: &str, timeout: Duration) -> Result<RelayBackend, OpenError> {
        let end = Instant::now() + timeout;
        loop {
            match RelayBackend::attach(name) {
                Ok(b) => return Ok(b),
                Err(e) if Instant::now() >= end => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The next request, waiting up to `timeout` (`None`: forever). A record with a
    /// bad header is `Corrupted`. `Closed` / `PeerDead` mean the relay is gone:
    /// attach again.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<RelayRequest<'_>, RecvError> {
        let guard = self.duplex.rx.recv(timeout)?;
        match parse_record(&guard) {
            Some((conn, _)) => Ok(RelayRequest { conn, guard }),
            None => Err(RecvError::Corrupted("bad relay record header")),
        }
    }

    /// Sends `payload` as the reply to connection `conn`, waiting up to `timeout`
    /// for room.
    pub fn reply(&mut self, conn: u64, payload: &[u8], timeout: Option<Duration>) -> Result<(), SendError> {
        send_record(&mut self.duplex.tx, conn, payload, timeout)
    }

    /// Receives one request and sends its payload back to its connection.
    pub fn echo_one(&mut self, timeout: Option<Duration>) -> Result<(), EchoError> {
        let Duplex { tx, rx } = &mut self.duplex;
        let guard = rx.recv(timeout)?;
        let (conn, payload) = parse_record(&guard).ok_or(RecvError::Corrupted("bad relay record header"))?;
        send_record(tx, conn, payload, timeout)?;
        Ok(())
    }
}

/// Why [`RelayBackend::echo_one`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EchoError {
    /// Receiving the request.
    #[error(transparent)]
    Recv(#[from] RecvError),
    /// Sending the reply.
    #[error(transparent)]
    Send(#[from] SendError),
}

fn send_record(tx: &mut Sender, conn: u64, payload: &[u8], timeout: Option<Duration>) -> Result<(), SendError> {
    let len =
        u32::try_from(payload.len()).map_err(|_| SendError::TooLarge { len: payload.len(), max: tx.max_message() })?;
    let mut grant = tx.reserve(RECORD_HEADER + payload.len(), timeout)?;
    grant[..8].copy_from_slice(&conn.to_le_bytes());
    grant[8..12].copy_from_slice(&len.to_le_bytes());
    grant[12..].copy_from_slice(payload);
    grant.commit();
    Ok(())
}
