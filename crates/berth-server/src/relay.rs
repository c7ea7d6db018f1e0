//! [`IpcRelay`]: length-prefixed frames from TCP clients, relayed to a local backend
//! process over a berth-ipc [`Duplex`], and the backend's replies routed back; and
//! [`RelayBackend`], the backend's end of the protocol.

use std::any::Any;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_ipc::{Channel, Config, Duplex, OpenError, RecvError, RecvGuard, SendError, Sender};

use crate::OpError;
use crate::conn::Conns;
use crate::service::{ConnId, Reply, Service, Watch, WorkerHandle};

/// Bytes of a record header: `u64` connection id, `u32` payload length.
const RECORD_HEADER: usize = 12;
/// The connection id of a backend's hello record, and of a lane's welcome record.
const HELLO: u64 = u64::MAX;
/// Bytes of a welcome's payload: `u32` lanes, `u32` this lane's index.
const WELCOME: usize = 8;
/// Records a lane handles per wake before its worker turns to its other
/// completions (it posts to itself to go on).
const BUDGET: usize = 256;
/// While no backend is attached, how often a lane looks at the process that may
/// have claimed its ends (a backend killed between attaching and its hello says
/// nothing else). Attached, a lane needs no timer where berth-ipc's watcher writes
/// its wake descriptor when the backend's process exits (`Receiver::max_sleep` is
/// `None`), and waits at most that bound otherwise.
const UNATTACHED_CHECK: Duration = Duration::from_secs(1);
/// How long a lane waits before it tries again to create its channel.
const RETRY: Duration = Duration::from_secs(1);

/// How to start an [`IpcRelay`].
#[derive(Debug, Clone)]
pub struct RelayConfig {
    channel: String,
    max_frame: usize,
    ring_capacity: u64,
}

impl RelayConfig {
    /// A relay on the named channel `channel` (letters, digits, `.`, `_`, `-`).
    pub fn new(channel: impl Into<String>) -> RelayConfig {
        RelayConfig { channel: channel.into(), max_frame: 64 * 1024, ring_capacity: 4 << 20 }
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

    /// Bytes of each of the two rings of each worker's lane (default 4 MiB;
    /// rounded up to a power of two that takes at least two frames). The relay's
    /// shared memory is `workers × 2 ×` this: 16 MiB for two workers by default.
    pub fn ring_capacity(mut self, bytes: u64) -> RelayConfig {
        self.ring_capacity = bytes;
        self
    }

    fn ipc(&self) -> Config {
        let message = (self.max_frame + RECORD_HEADER) as u64;
        let capacity = self.ring_capacity.max(2 * (message + 8)).next_power_of_two();
        // Fenced: request/response, so an end sleeps after most records; a fence per
        // record costs less than a membarrier per sleep (see `Config::fenced`).
        Config::new(capacity).max_message(message).wake_fds(true).fenced(true)
    }
}

/// The name of worker `index`'s lane of relay channel `channel`.
fn lane_name(channel: &str, index: usize) -> String {
    format!("{channel}.{index}")
}

/// Why an [`IpcRelay`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The channel name is not valid (see [`RelayConfig::new`]).
    #[error("relay channel: {0}")]
    Channel(#[from] OpenError),
    /// An I/O error.
    #[error("relay: {0}")]
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
    /// Backends attached so far (hello records accepted on worker 0's lane).
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

/// What the workers share: the configuration and counters, all atomics. Each
/// worker's lane is its own ([`Lane`]).
struct Shared {
    config: RelayConfig,
    counts: Counters,
    /// Workers of the server, once the first lane is made (0 before).
    workers: AtomicUsize,
    /// Lanes with a backend attached now.
    attached: AtomicUsize,
}

/// The IPC relay service: TCP clients' frames go to a local backend process over
/// shared memory, and its replies come back to the right connection — on the
/// workers' own completion ports, with no thread of its own.
///
/// # Protocol
///
/// - **TCP side.** A client sends frames: a 4-byte big-endian payload length, then the
///   payload (at most [`RelayConfig::max_frame`], default 64 KiB). Each frame gets
///   one reply frame of the same shape, in order: a connection has one request at
///   the backend at a time, and frames the client pipelines wait in its buffer. A
///   length over the maximum (or with the top bit set) closes the connection
///   cleanly, counted in [`RelayStats::frames_refused`].
/// - **Lanes.** Each worker of the server owns one named [`Duplex`], its *lane*:
///   worker `i` of relay channel `NAME` creates `/dev/shm/berth-ipc.NAME.i.a2b` /
///   `.b2a` (0600, with wake FIFOs, [`Config::wake_fds`], and
///   [fenced](Config::fenced)) when it starts — after
///   [`Channel::cleanup_stale`] removed files left by dead processes, and replacing
///   a file of that name still held by a live process (one relay per name) — and is
///   its side A. The first record in each lane's request ring is a *welcome*:
///   id `u64::MAX`, payload `[u32 lanes | u32 this lane's index]`.
/// - **Attaching.** A backend opens side B of lane 0, reads the welcome, opens
///   lanes `1..lanes` the same way, and sends a *hello* (id `u64::MAX`, empty) on
///   each; [`RelayBackend::attach`] does all of it. A lane forwards frames only
///   after its hello; until then a client's frame is answered by a clean close
///   ([`RelayStats::closed_no_backend`]).
/// - **Records.** Each record in either ring is `[u64 connection id | u32 payload
///   length | payload]`, little-endian like the ring itself. The id is the relay's
///   [`ConnId`], which names the worker: a backend replies on the lane of
///   [`ConnId::worker`] (the one the request came on). A record whose length field
///   does not match is dropped and counted ([`RelayStats::bad_records`]); so is a
///   reply on another worker's lane ([`RelayStats::replies_dropped`]).
/// - **A dead backend.** When the backend dies (`PeerDead`) or closes its end
///   (`Closed`), each lane sees it on its own: every client waiting for a reply on
///   it is closed cleanly ([`RelayStats::closed_backend_lost`]), the lane removes
///   its files, creates fresh ones under the same name (with a new welcome) and
///   waits for the next backend's hello. A backend restarts by attaching again.
/// - **A restarted relay.** Its files replace the old ones; a backend still attached
///   to the old files sees the old relay dead (`PeerDead`) and attaches again.
///
/// # Threads
///
/// None of its own. A worker forwards a frame with a non-blocking `try_reserve` on
/// its own lane (one producer, no lock). If the ring is full the connection is
/// closed cleanly and counted ([`RelayStats::closed_ring_full`]): a frame is never
/// held, and a worker never blocks. The lane's reply ring is waited on by the
/// worker's completion port: its wake descriptor is [watched](Conns::watch), and
/// armed ([`Receiver::arm_wake`](berth_ipc::Receiver::arm_wake)) only once the ring
/// is found empty, so the backend writes it only for a worker that sleeps. A worker
/// that forwards a frame takes that arm back first
/// ([`disarm_wake`](berth_ipc::Receiver::disarm_wake)) and looks at the ring before
/// it waits again ([`Service::before_wait`]): a backend that answers meanwhile — one
/// on the worker's core — writes nothing, and the worker reads nothing. The worker
/// answers each reply straight from the ring into the connection's write buffer.
/// A backend that stops reading leaves its lane's ring full: its clients are
/// closed, and the others' go on.
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
/// let server = Server::builder().addr("127.0.0.1:0".parse()?).workers(2).serve(relay)?;
///
/// // A backend (here a thread; usually another process) attaches to both lanes
/// // and echoes.
/// let mut backend = RelayBackend::attach_retrying(&channel, Duration::from_secs(5))?;
/// assert_eq!(backend.lanes(), 2);
/// assert!(handle.wait_attached(Duration::from_secs(5)));
/// std::thread::spawn(move || while backend.echo_one(None).is_ok() {});
///
/// let mut client = std::net::TcpStream::connect(server.local_addr())?;
/// client.write_all(b"\0\0\0\x05hello")?;
/// let mut reply = [0u8; 9];
/// client.read_exact(&mut reply)?;
/// assert_eq!(&reply, b"\0\0\0\x05hello");
/// # drop(client);
/// server.shutdown(Duration::from_secs(1))?; // the lanes' files go with their workers
/// # Ok(())
/// # }
/// ```
pub struct IpcRelay {
    shared: Arc<Shared>,
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
    /// The lane's generation of the backend holding this connection's request, 0
    /// if none.
    waiting_on: u64,
}

impl IpcRelay {
    /// Checks the configuration and removes stale channel files; each worker
    /// creates its lane when the server starts it (see [`IpcRelay`]).
    pub fn start(config: RelayConfig) -> Result<IpcRelay, RelayError> {
        if u32::try_from(config.max_frame).is_err() || config.max_frame > (1 << 31) {
            return Err(RelayError::FrameTooLarge(config.max_frame));
        }
        // The longest lane name (worker 255, the duplex's suffix) must be valid.
        berth_ipc::named_path(&format!("{}.a2b", lane_name(&config.channel, 255)))?;
        if let Err(e) = Channel::cleanup_stale() {
            tracing::debug!("relay: cleaning up stale channels: {e}");
        }
        let shared = Arc::new(Shared {
            config,
            counts: Counters::default(),
            workers: AtomicUsize::new(0),
            attached: AtomicUsize::new(0),
        });
        Ok(IpcRelay { shared })
    }

    /// A handle on the counters and the backend's state.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle { shared: self.shared.clone() }
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

    /// Whether a backend is attached now: on every worker's lane.
    pub fn attached(&self) -> bool {
        let workers = self.shared.workers.load(Ordering::Acquire);
        workers > 0 && self.shared.attached.load(Ordering::Acquire) >= workers
    }

    /// Waits up to `timeout` for a backend to be attached on every lane; true if
    /// one is. (A monitoring helper: it looks every millisecond.)
    pub fn wait_attached(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, || self.attached())
    }

    /// Waits up to `timeout` until no lane has a backend attached (every lane
    /// noticed a dead backend); true if none has.
    pub fn wait_detached(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, || self.shared.attached.load(Ordering::Acquire) == 0)
    }

    fn wait_for(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        let end = Instant::now() + timeout;
        while !done() {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

impl fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayHandle").field("channel", &self.shared.config.channel).finish()
    }
}

/// One worker's lane: its own duplex to the backend, owned by the worker (its
/// [`Service::worker_state`]) and driven from its completion port.
struct Lane {
    sh: Arc<Shared>,
    /// The worker's index, and how many there are.
    index: usize,
    workers: usize,
    /// Posts to this worker, to go on after [`BUDGET`] records (none in the fuzz
    /// harness).
    worker: Option<WorkerHandle>,
    /// The channel now, if it could be created.
    link: Option<Link>,
    /// Counts the backends attached to this lane; a request remembers the one it
    /// went to.
    generation: u64,
    /// A reply's payload, copied out of the ring so the ring is free while the
    /// connection is answered (capacity: the largest frame, so no allocation).
    scratch: Vec<u8>,
    /// Fires [`RETRY`] after the channel could not be created.
    retry: Option<Watch>,
    /// A post to this worker is on its way: it goes on draining the ring then.
    posted: bool,
}

/// A lane's channel.
struct Link {
    duplex: Duplex,
    /// The reply ring's wake descriptor on the worker's port (none in the fuzz
    /// harness).
    watch: Option<Watch>,
    /// The watch is armed (its wait is pending on the port).
    armed: bool,
    /// A request went out with the reply ring's wake taken back
    /// ([`disarm_wake`](berth_ipc::Receiver::disarm_wake)): the ring is looked at
    /// before the worker waits ([`Service::before_wait`]).
    busy: bool,
    /// The generation of the attached backend, once its hello came.
    attached: Option<u64>,
    /// Forwarding failed with the request ring closed, dead or corrupted: a post
    /// is on its way to recreate the lane (the reply ring alone may not show it).
    broken: bool,
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            if link.attached.is_some() {
                self.sh.attached.fetch_sub(1, Ordering::AcqRel);
            }
            drop(link.duplex);
            let _ = Duplex::unlink_named(&lane_name(&self.sh.config.channel, self.index));
        }
    }
}

/// What one look at a lane's reply ring found.
enum Step {
    /// A reply for this connection; its payload is in the scratch buffer given.
    Reply(u64, Vec<u8>),
    /// A backend's hello.
    Hello,
    /// A record with a bad header.
    Bad,
    /// Nothing, and `arm_wake` said to sleep: arm the watch.
    Sleep,
    /// The budget is spent and a post will call back.
    Yield,
    /// The backend is gone (or the ring broke).
    Lost(RecvError),
    /// No lane or no channel.
    Idle,
}

/// Creates worker `index`'s lane channel, writes its welcome and arms its watch.
fn open_link(sh: &Shared, index: usize, workers: usize, conns: &mut Conns<'_, IpcRelay>) -> Option<Link> {
    let name = lane_name(&sh.config.channel, index);
    let made = create_duplex(&name, &sh.config.ipc()).map_err(io::Error::other).and_then(|mut duplex| {
        let mut welcome = [0u8; WELCOME];
        welcome[..4].copy_from_slice(&(workers as u32).to_le_bytes());
        welcome[4..].copy_from_slice(&(index as u32).to_le_bytes());
        let watched = try_send_record(&mut duplex.tx, HELLO, &welcome)
            .map_err(io::Error::other)
            .and_then(|()| conns.watch(duplex.rx.as_fd()));
        match watched {
            Ok(watch) => {
                Ok(Link { duplex, watch: Some(watch), armed: false, busy: false, attached: None, broken: false })
            }
            Err(e) => {
                drop(duplex);
                let _ = Duplex::unlink_named(&name);
                Err(e)
            }
        }
    });
    match made {
        Ok(mut link) => {
            // Armed for the first hello, with the unattached look-up deadline.
            if let Some(watch) = link.watch {
                match conns.arm(watch, Some(Instant::now() + UNATTACHED_CHECK)) {
                    Ok(()) => link.armed = true,
                    Err(e) => tracing::error!(channel = %name, "relay: cannot wait on the lane: {e}"),
                }
            }
            tracing::debug!(channel = %name, "relay lane created; waiting for a backend");
            Some(link)
        }
        Err(e) => {
            tracing::error!(channel = %name, "relay: cannot create the lane's channel: {e}");
            None
        }
    }
}

/// Creates this worker's lane channel afresh, or arms the retry timer.
fn reopen(sh: &Shared, conns: &mut Conns<'_, IpcRelay>) {
    let Some(lane) = conns.worker_state::<Lane>() else { return };
    let (index, workers, retry) = (lane.index, lane.workers, lane.retry);
    let link = open_link(sh, index, workers, conns);
    if link.is_none()
        && let Some(retry) = retry
    {
        let _ = conns.arm(retry, Some(Instant::now() + RETRY));
    }
    if let Some(lane) = conns.worker_state::<Lane>() {
        lane.link = link;
    }
}

impl Lane {
    /// One look at the reply ring: a record, or nothing (then the watch is armed).
    fn step(&mut self, handled: usize) -> Step {
        let Some(link) = self.link.as_mut() else { return Step::Idle };
        if handled >= BUDGET && (self.posted || self.worker.as_ref().is_some_and(|w| w.post(0).is_ok())) {
            // Other connections of this worker get their turn first; the post
            // (this one, or one already on its way) calls back.
            self.posted = true;
            return Step::Yield;
        }
        loop {
            match link.duplex.rx.try_recv() {
                Ok(msg) => {
                    return match parse_record(&msg) {
                        Some((HELLO, _)) => Step::Hello,
                        Some((id, payload)) => {
                            // Within the largest frame (the ring's maximum message): no allocation.
                            let mut buf = std::mem::take(&mut self.scratch);
                            buf.clear();
                            buf.extend_from_slice(payload);
                            Step::Reply(id, buf)
                        }
                        None => Step::Bad,
                    };
                }
                Err(RecvError::Empty) => {}
                Err(e) => return Step::Lost(e),
            }
            // A watch still armed has not reported the descriptor readable: if
            // no wake was written since the last arm (or it was taken back), it is
            // not read.
            match link.duplex.rx.rearm_wake(!link.armed) {
                Ok(true) => return Step::Sleep,
                Ok(false) => {}
                Err(e) => return Step::Lost(e),
            }
        }
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
        let id = reply.conn_id().to_u64();
        let lane = reply.worker_state::<Lane>();
        let forwarded = match lane.and_then(|lane| lane.link.as_mut().map(|link| (link, &lane.worker))) {
            Some((link @ Link { attached: Some(_), .. }, worker)) => {
                if !link.busy {
                    // Awake now: a backend that answers before this worker waits
                    // again (one on this core, run by the wake below) writes no
                    // wake; `before_wait` takes the answer.
                    link.duplex.rx.disarm_wake();
                    link.busy = true;
                }
                let sent = try_send_record(&mut link.duplex.tx, id, payload);
                if let Err(e) = &sent
                    && !matches!(e, SendError::Full)
                    && !link.broken
                {
                    // Closed, dead or corrupted: recreate the lane from `posted` (its
                    // watch reports a dead backend too, but not a broken ring).
                    link.broken = worker.as_ref().is_some_and(|w| w.post(0).is_ok());
                }
                sent.map(|()| link.attached.unwrap_or(0))
            }
            _ => {
                add(&sh.counts.closed_no_backend, 1);
                reply.close();
                return input.len();
            }
        };
        match forwarded {
            Ok(generation) => {
                add(&sh.counts.frames_in, 1);
                conn.waiting_on = generation;
                reply.answer_later();
                4 + len
            }
            Err(e) => {
                match e {
                    SendError::Full => add(&sh.counts.closed_ring_full, 1),
                    _ => add(&sh.counts.closed_backend_lost, 1),
                }
                tracing::debug!("relay: cannot forward a frame ({e}): closing");
                reply.close();
                input.len()
            }
        }
    }

    fn worker_state(&self, conns: &mut Conns<'_, Self>) -> Option<Box<dyn Any>> {
        let sh = &self.shared;
        let handle = conns.handle();
        sh.workers.store(handle.workers(), Ordering::Release);
        let retry = conns.timer().map_err(|e| tracing::warn!("relay: no retry timer: {e}")).ok();
        let (index, workers) = (handle.index(), handle.workers());
        let link = open_link(sh, index, workers, conns);
        if link.is_none()
            && let Some(retry) = retry
        {
            let _ = conns.arm(retry, Some(Instant::now() + RETRY));
        }
        Some(Box::new(Lane {
            sh: sh.clone(),
            index,
            workers,
            worker: Some(handle),
            link,
            generation: 0,
            scratch: Vec::with_capacity(sh.config.max_frame),
            retry,
            posted: false,
        }))
    }

    fn ready(&self, watch: Watch, result: Result<(), OpError>, conns: &mut Conns<'_, Self>) {
        let Some(lane) = conns.worker_state::<Lane>() else { return };
        if Some(watch) == lane.retry {
            if lane.link.is_none() {
                reopen(&self.shared, conns);
            }
            return;
        }
        match lane.link.as_mut() {
            Some(link) if link.watch == Some(watch) => link.armed = false,
            _ => return,
        }
        match result {
            // Readable, or the unattached look-up: the ring and the peer are checked next.
            Ok(()) | Err(OpError::TimedOut) => {}
            Err(e) => {
                tracing::warn!("relay: waiting on the lane failed ({e}); recreating it");
                return lost(&self.shared, conns, None);
            }
        }
        pump(&self.shared, conns);
    }

    fn before_wait(&self, conns: &mut Conns<'_, Self>) {
        let Some(link) = conns.worker_state::<Lane>().and_then(|lane| lane.link.as_mut()) else { return };
        if std::mem::take(&mut link.busy) {
            pump(&self.shared, conns);
        }
    }

    fn posted(&self, _data: u64, conns: &mut Conns<'_, Self>) {
        let Some(lane) = conns.worker_state::<Lane>() else { return };
        lane.posted = false;
        if lane.link.as_ref().is_some_and(|l| l.broken) {
            return lost(&self.shared, conns, None);
        }
        // Also with the watch armed: a pump that yielded from `before_wait` ran
        // with the flag taken back, so no wake would report what it left.
        // (`Step::Sleep` does not arm a watch twice.)
        if lane.link.is_some() {
            pump(&self.shared, conns);
        }
    }
}

/// Handles the lane's replies until its ring is empty (then its watch is armed),
/// the budget is spent (then a post calls back), or the backend is gone.
fn pump(sh: &Shared, conns: &mut Conns<'_, IpcRelay>) {
    let mut handled = 0;
    loop {
        let Some(lane) = conns.worker_state::<Lane>() else { return };
        let step = lane.step(handled);
        handled += 1;
        match step {
            Step::Reply(id, payload) => {
                let answered = conns.answer(ConnId::from_u64(id), |conn, reply| {
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
                if let Some(lane) = conns.worker_state::<Lane>() {
                    lane.scratch = payload;
                }
            }
            Step::Hello => {
                let Some(lane) = conns.worker_state::<Lane>() else { return };
                if let Some(link) = lane.link.as_mut().filter(|l| l.attached.is_none()) {
                    lane.generation += 1;
                    link.attached = Some(lane.generation);
                    sh.attached.fetch_add(1, Ordering::AcqRel);
                    if lane.index == 0 {
                        add(&sh.counts.backends_attached, 1);
                    }
                    tracing::info!(channel = %sh.config.channel, lane = lane.index, "relay: backend attached");
                }
            }
            Step::Bad => add(&sh.counts.bad_records, 1),
            Step::Sleep => {
                let Some(lane) = conns.worker_state::<Lane>() else { return };
                let Some((Some(watch), attached)) = lane.link.as_ref().map(|l| (l.watch, l.attached.is_some())) else {
                    return;
                };
                if lane.link.as_ref().is_some_and(|l| l.armed) {
                    // Still waiting from before the take-back, with the bound it was
                    // armed with: nothing that bound depends on changes for a relay
                    // lane meanwhile (fenced, so no membarrier to lose; no peer
                    // timeout), and a watcher that stops writes the descriptor.
                    return;
                }
                let max_sleep = lane.link.as_ref().and_then(|l| l.duplex.rx.max_sleep());
                // Attached, the watcher thread reports the backend's death through the
                // descriptor: no timer, unless the channel says one is needed (no
                // watcher here, say). Unattached, look now and then.
                let deadline = match (attached, max_sleep) {
                    (true, None) => None,
                    (true, Some(bound)) => Some(Instant::now() + bound),
                    (false, _) => Some(Instant::now() + UNATTACHED_CHECK),
                };
                match conns.arm(watch, deadline) {
                    Ok(()) => {
                        if let Some(link) = conns.worker_state::<Lane>().and_then(|l| l.link.as_mut()) {
                            link.armed = true;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("relay: cannot wait on the lane ({e}); recreating it");
                        return lost(sh, conns, None);
                    }
                }
                return;
            }
            Step::Yield | Step::Idle => return,
            Step::Lost(e) => return lost(sh, conns, Some(e)),
        }
    }
}

/// The lane's backend is gone (or its channel broke): closes the clients waiting
/// on it, removes the files and creates the lane afresh.
fn lost(sh: &Shared, conns: &mut Conns<'_, IpcRelay>, why: Option<RecvError>) {
    let Some(lane) = conns.worker_state::<Lane>() else { return };
    let Some(link) = lane.link.take() else { return };
    let index = lane.index;
    let attached = link.attached;
    if attached.is_some() {
        sh.attached.fetch_sub(1, Ordering::AcqRel);
        match why {
            Some(e) => tracing::warn!(lane = index, "relay: backend gone ({e}); waiting for a new one"),
            None => tracing::warn!(lane = index, "relay: lane broken; waiting for a new backend"),
        }
    }
    drop(link.duplex);
    let _ = Duplex::unlink_named(&lane_name(&sh.config.channel, index));
    if let Some(watch) = link.watch {
        conns.unwatch(watch);
    }
    if let Some(generation) = attached {
        conns.close_waiting(|conn| {
            let lost = conn.waiting_on != 0 && conn.waiting_on <= generation;
            if lost {
                // Counted before the close can reach the client.
                add(&sh.counts.closed_backend_lost, 1);
            }
            lost
        });
    }
    reopen(sh, conns);
}

/// Creates a lane's duplex: a file of this name that a live process still holds is
/// replaced.
fn create_duplex(name: &str, cfg: &Config) -> Result<Duplex, OpenError> {
    match Duplex::create_named(name, cfg) {
        Err(OpenError::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => {
            tracing::warn!(channel = name, "relay channel exists and is in use: replacing it");
            let _ = Duplex::unlink_named(name);
            Duplex::create_named(name, cfg)
        }
        r => r,
    }
}

/// Splits a record into its connection id and payload, if its header is sound.
fn parse_record(msg: &[u8]) -> Option<(u64, &[u8])> {
    let id = u64::from_le_bytes(msg.get(..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(msg.get(8..12)?.try_into().ok()?) as usize;
    let payload = msg.get(RECORD_HEADER..)?;
    (payload.len() == len).then_some((id, payload))
}

/// The backend's end of the relay protocol (see [`IpcRelay`]): attached to every
/// lane of a relay's channel (one per worker of the server), it receives requests
/// tagged with their connection id and sends each reply on the lane of the
/// request's worker.
///
/// One thread serves all lanes: [`recv`](Self::recv) looks at each in turn and,
/// when all are empty, sleeps on their wake descriptors with `poll(2)` (with one
/// lane, on the ring's futex). A lane that breaks — the relay gone, a corrupted
/// record — is an error of the whole backend: drop it and attach again.
#[derive(Debug)]
pub struct RelayBackend {
    lanes: Vec<Duplex>,
    /// The lane looked at first by the next receive (round robin).
    next: usize,
    /// Per lane: its wake descriptor was readable at the last `poll` (or there was
    /// none yet), so the next arm must empty it; the others are re-armed without
    /// a read (see `Receiver::rearm_wake`).
    readable: Vec<bool>,
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

/// How long attaching waits for a lane's welcome, for the lanes after the first to
/// appear, and for room for a hello.
const ATTACH_WAIT: Duration = Duration::from_secs(5);

fn bad_lane(why: &str) -> OpenError {
    OpenError::Io(io::Error::new(io::ErrorKind::InvalidData, format!("not a relay lane: {why}")))
}

/// Opens side B of lane `index` of relay channel `name` and reads its welcome:
/// the lane and how many lanes there are.
fn open_lane(name: &str, index: usize) -> Result<(Duplex, usize), OpenError> {
    let mut duplex = Duplex::open_named(&lane_name(name, index))?;
    let lanes = {
        let welcome = duplex.rx.recv(Some(ATTACH_WAIT)).map_err(|e| OpenError::Io(io::Error::other(e)))?;
        let Some((HELLO, payload)) = parse_record(&welcome) else { return Err(bad_lane("no welcome")) };
        let Ok([l0, l1, l2, l3, i0, i1, i2, i3]) = <[u8; WELCOME]>::try_from(payload) else {
            return Err(bad_lane("a welcome of another size"));
        };
        let lanes = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        if u32::from_le_bytes([i0, i1, i2, i3]) as usize != index || lanes == 0 || lanes > crate::service::MAX_WORKERS {
            return Err(bad_lane("a welcome for another lane"));
        }
        lanes
    };
    Ok((duplex, lanes))
}

impl RelayBackend {
    /// Attaches to every lane of the relay's channel `name` (side B) and says
    /// hello on each. Fails while lane 0 does not exist or another backend holds
    /// it (retry a little later); waits up to 5 s for the other lanes (a relay's
    /// workers create theirs as they start).
    pub fn attach(name: &str) -> Result<RelayBackend, OpenError> {
        let (first, count) = open_lane(name, 0)?;
        let mut lanes = Vec::with_capacity(count);
        lanes.push(first);
        let end = Instant::now() + ATTACH_WAIT;
        for index in 1..count {
            lanes.push(loop {
                match open_lane(name, index) {
                    Ok((lane, n)) if n == count => break lane,
                    Ok(_) => return Err(bad_lane("lanes disagree on their number")),
                    Err(e) if Instant::now() >= end => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            });
        }
        for lane in &mut lanes {
            send_record(&mut lane.tx, HELLO, &[], Some(ATTACH_WAIT)).map_err(|e| OpenError::Io(io::Error::other(e)))?;
        }
        let readable = vec![true; lanes.len()];
        Ok(RelayBackend { lanes, next: 0, readable })
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

    /// How many lanes (the relay's workers) this backend serves.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The next request, waiting up to `timeout` (`None`: forever). A record with a
    /// bad header is `Corrupted`. `Closed` / `PeerDead` mean the relay (or one of
    /// its lanes) is gone: attach again.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<RelayRequest<'_>, RecvError> {
        let lane = self.wait(timeout)?;
        let guard = self.lanes[lane].rx.try_recv()?;
        match parse_record(&guard) {
            Some((conn, _)) => Ok(RelayRequest { conn, guard }),
            None => Err(RecvError::Corrupted("bad relay record header")),
        }
    }

    /// Sends `payload` as the reply to connection `conn`, on its worker's lane,
    /// waiting up to `timeout` for room. (An id naming no lane goes to lane
    /// `worker % lanes`, whose worker drops and counts it.)
    pub fn reply(&mut self, conn: u64, payload: &[u8], timeout: Option<Duration>) -> Result<(), SendError> {
        let lane = ConnId::from_u64(conn).worker() % self.lanes.len();
        send_record(&mut self.lanes[lane].tx, conn, payload, timeout)
    }

    /// Receives one request and sends its payload back to its connection.
    pub fn echo_one(&mut self, timeout: Option<Duration>) -> Result<(), EchoError> {
        let lane = self.wait(timeout)?;
        let Duplex { tx, rx } = &mut self.lanes[lane];
        let guard = rx.try_recv()?;
        let (conn, payload) = parse_record(&guard).ok_or(RecvError::Corrupted("bad relay record header"))?;
        send_record(tx, conn, payload, timeout)?;
        Ok(())
    }

    /// Waits up to `timeout` for a record on any lane; returns the lane, whose
    /// `try_recv` then lends it.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<usize, RecvError> {
        if let [lane] = self.lanes.as_mut_slice() {
            // One lane: the ring's own wait (a short spin, then its futex).
            // Forgotten, not dropped: the record stays current and unreleased.
            std::mem::forget(lane.rx.recv(timeout)?);
            return Ok(0);
        }
        let end = timeout.map(|t| Instant::now().checked_add(t));
        loop {
            if let Some(lane) = self.ready_lane()? {
                return Ok(lane);
            }
            // All empty: flag every lane's sender to write our descriptor, then
            // sleep unless a record came meanwhile.
            let mut sleep = true;
            for (lane, readable) in self.lanes.iter_mut().zip(&mut self.readable) {
                sleep &= lane.rx.rearm_wake(*readable)?;
                *readable = false;
            }
            if !sleep {
                continue;
            }
            let left = match end {
                None | Some(None) => None,
                Some(Some(end)) => match end.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(RecvError::TimedOut),
                },
            };
            // A lane whose relay's death might not write its descriptor (no watcher
            // thread here, say) bounds the sleep: the next arm looks for itself.
            let bound = self.lanes.iter().filter_map(|lane| lane.rx.max_sleep()).min();
            self.sleep([left, bound].into_iter().flatten().min());
        }
    }

    /// The first lane, from `next` on, with a record (left current, unreleased).
    fn ready_lane(&mut self) -> Result<Option<usize>, RecvError> {
        let n = self.lanes.len();
        for k in 0..n {
            let lane = (self.next + k) % n;
            match self.lanes[lane].rx.try_recv() {
                Ok(guard) => {
                    // Forgotten, not dropped: the record stays current for `try_recv`.
                    std::mem::forget(guard);
                    self.next = (lane + 1) % n;
                    return Ok(Some(lane));
                }
                Err(RecvError::Empty) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Sleeps until a lane's wake descriptor is readable or `left` passes (a
    /// signal ends it early: the caller looks again), and notes which were.
    fn sleep(&mut self, left: Option<Duration>) {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let n = self.lanes.len();
        // A fixed array (at most 256 lanes): no allocation per sleep.
        let mut fds: [PollFd<'_>; crate::service::MAX_WORKERS] =
            std::array::from_fn(|i| PollFd::new(&self.lanes[i.min(n - 1)].rx, PollFlags::IN));
        let timeout = left
            .map(|d| Timespec { tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX), tv_nsec: d.subsec_nanos().into() });
        let polled = poll(&mut fds[..n], timeout.as_ref());
        for (readable, fd) in self.readable.iter_mut().zip(&fds[..n]) {
            // Any event (or a failed poll, which reports none) means: empty it next time.
            *readable = polled.is_err() || !fd.revents().is_empty();
        }
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

/// Writes record `[conn | len | payload]` into `grant`.
fn fill(mut grant: berth_ipc::Grant<'_>, conn: u64, payload: &[u8]) {
    grant[..8].copy_from_slice(&conn.to_le_bytes());
    grant[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    grant[12..].copy_from_slice(payload);
    grant.commit();
}

/// Sends a record, waiting up to `timeout` (`None`: forever) for room.
fn send_record(tx: &mut Sender, conn: u64, payload: &[u8], timeout: Option<Duration>) -> Result<(), SendError> {
    u32::try_from(payload.len()).map_err(|_| SendError::TooLarge { len: payload.len(), max: tx.max_message() })?;
    fill(tx.reserve(RECORD_HEADER + payload.len(), timeout)?, conn, payload);
    Ok(())
}

/// Sends a record, or fails at once with `Full`.
fn try_send_record(tx: &mut Sender, conn: u64, payload: &[u8]) -> Result<(), SendError> {
    u32::try_from(payload.len()).map_err(|_| SendError::TooLarge { len: payload.len(), max: tx.max_message() })?;
    fill(tx.try_reserve(RECORD_HEADER + payload.len())?, conn, payload);
    Ok(())
}

/// See `crate::fuzzing::relay_lane`.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzzing_lane(relay: &IpcRelay) -> Result<Box<dyn Any + Send>, OpenError> {
    let sh = &relay.shared;
    let mut duplex = create_duplex(&lane_name(&sh.config.channel, 0), &sh.config.ipc())?;
    let mut welcome = [0u8; WELCOME];
    welcome[..4].copy_from_slice(&1u32.to_le_bytes());
    try_send_record(&mut duplex.tx, HELLO, &welcome).map_err(|e| OpenError::Io(io::Error::other(e)))?;
    sh.workers.store(1, Ordering::Release);
    sh.attached.fetch_add(1, Ordering::AcqRel);
    add(&sh.counts.backends_attached, 1);
    let link = Link { duplex, watch: None, armed: false, busy: false, attached: Some(1), broken: false };
    Ok(Box::new(Lane {
        sh: sh.clone(),
        index: 0,
        workers: 1,
        worker: None,
        link: Some(link),
        generation: 1,
        scratch: Vec::with_capacity(sh.config.max_frame),
        retry: None,
        posted: false,
    }))
}
