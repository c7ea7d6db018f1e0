//! The io_uring driver: true completions. Each op at the head of its socket's queue
//! is one submission on the port's ring; all of them go to the kernel, and all
//! completions come back, in one `io_uring_enter` per wait.
//!
//! - accept, recv (into the op's own segment) and send are ring operations: no
//!   syscall of their own. A partial send is resubmitted for the rest. A listener
//!   with an accept op waiting has one multishot accept in the kernel; connections
//!   it delivers while no accept op waits are kept for the next accept, and the
//!   multishot is cancelled until one comes.
//! - Pooled receives pick a segment from the port's provided-buffer ring
//!   (`driver::pbuf`) only when data arrives: no segment while idle, no syscall of
//!   their own. A socket with a pooled receive waiting has one *multishot* receive
//!   in the kernel (its `Reader`), armed once and delivering every arrival; what it
//!   delivers while no receive waits is kept, in order, for the next one (and after
//!   two such the multishot is stopped, so an idle reader of a busy socket does not
//!   drain the ring). (On a kernel without buffer rings they wait for readiness with
//!   `POLL_ADD` and then receive into a fresh segment.)
//! - Datagram ops (`recv_from`, `send_to`) are `RECVMSG`/`SENDMSG` submissions; up
//!   to `DATAGRAMS_IN_KERNEL` of one UDP socket's are in the kernel at once, not only
//!   the head, so one enter moves a batch.
//! - File sends and connects wait for readiness on the ring (`POLL_ADD`) and then
//!   make their syscall, so a file still goes out by sendfile(2).
//! - The kernel may write into an op's buffer until the op's completion comes back,
//!   so cancelling (`cancel`, `close`, a deadline) only *asks* (`ASYNC_CANCEL`): the
//!   op keeps its lease, and the user cannot take it back, until then.
//! - Posts wake the ring through an eventfd with a multishot poll armed on it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use berth_buf::Lease;
use berth_ops::{OpError, OpKind};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};
use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{SendFlags, SocketFlags};

use crate::core::{Core, State, Step};
use crate::driver::UringUnavailable;
use crate::driver::epoll::Epoll;
use crate::driver::io::{self as sys_io, AcceptFailure};
use crate::driver::kept::{Arrival, Kept};
use crate::driver::pbuf::{self, BufRing};
use crate::socket::{Dir, Io, Listener, NIL, Stream};

const POLLIN: u32 = PollFlags::IN.bits() as u32;
const POLLOUT: u32 = PollFlags::OUT.bits() as u32;

/// How soon a wait looks again for segments while receives are starved of them.
const STARVED_RETRY: Duration = Duration::from_millis(1);

/// The `user_data` bit of requests that belong to a socket rather than to an op (a
/// listener's multishot accept, a stream's multishot receive); op requests keep it
/// clear.
const SOCKET_TAG: u64 = 1 << 63;
/// With [`SOCKET_TAG`]: the request is a multishot receive, not an accept.
const RECV_TAG: u64 = 1 << 62;
/// The bits of a generation or sequence number that `user_data` carries.
const GEN_MASK: u32 = 0x3fff_ffff;
/// Room kept for connections a multishot accept delivers with no accept op waiting.
/// A burst can exceed it (the multishot drains the backlog until its cancel lands);
/// the queue then grows, once, rather than close connections the peer already sees
/// as established.
const UNCLAIMED_MAX: usize = 64;

/// Datagram ops of one UDP socket and direction the kernel may hold at once: enough
/// for a batch per enter, few enough that an arrival does not wake a crowd of
/// receives that then find nothing.
const DATAGRAMS_IN_KERNEL: usize = 32;

/// `user_data` of the eventfd's poll.
const WAKE: u64 = u64::MAX;
/// `user_data` of cancel requests, whose own completions say nothing we need.
const CANCEL: u64 = u64::MAX - 1;
/// `user_data` of the datagram epoll's poll (see [`Batched`]).
const BATCHED: u64 = u64::MAX - 2;

/// UDP sockets whose datagram ops run by readiness, in batches: the epoll driver's
/// code (`recvmmsg`/`sendmmsg`, up to 64 datagrams a call, pooled receives leasing
/// just before the call) on an epoll instance of their own, whose descriptor the
/// ring polls. On loopback this costs less CPU per datagram than a `RECVMSG` and a
/// `SENDMSG` in the ring for each (see `PortBuilder::ring_datagrams`).
struct Batched {
    epoll: Epoll,
    /// A one-shot poll of the epoll's descriptor is in the ring. It is armed before
    /// each enter (in `prepare`), not kept as a multishot: a multishot would post a
    /// completion, through task work, for every datagram that wakes the epoll.
    armed: bool,
    /// The last poll failed: not armed again until the next datagram op.
    failed: bool,
    /// Per socket slot: the generation registered with the epoll, if any.
    registered: Vec<Option<u32>>,
}

/// What the kernel is doing for an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// The op itself (accept, recv, send).
    Data,
    /// A readiness poll; the op's syscall follows when it fires.
    Poll,
    /// A pooled receive into a segment the kernel picks from the buffer ring.
    Select,
}

/// How starting an op went.
enum Start {
    /// With the kernel now.
    Started,
    /// Left in its queue: its listener is backing off.
    Waiting,
    /// Finished at once (a file send that did not block).
    Done(Result<usize, OpError>, crate::SocketId),
}

/// What a completion means for its op.
enum Outcome {
    Done(Result<usize, OpError>, crate::SocketId),
    /// Cancelled by the kernel at our request: complete with this error.
    Abandon(OpError),
    /// Not finished: submit it again (the rest of a send, the next accept).
    Again,
    /// The buffer ring was empty: wait, queued, until segments come back.
    Starved,
}

/// A socket's multishot receive and what it delivered that no receive took yet.
#[derive(Default)]
struct Reader {
    /// The generation (31 bits) of the socket the multishot in the kernel reads.
    armed: Option<u32>,
    /// A cancel is on its way to the armed multishot.
    stopping: bool,
    /// The generation the kept arrivals (`Uring::kept`) belong to.
    generation: u32,
}

pub(crate) struct Uring {
    ring: IoUring,
    /// The read side of the posts' eventfd (the notifier holds a duplicate).
    wake: OwnedFd,
    wake_armed: bool,
    phase: Vec<Phase>,
    in_kernel: usize,
    /// Completions copied out of the ring before they are handled (handling one may
    /// submit more); preallocated to the completion queue's size.
    cqes: Vec<(u64, i32, u32)>,
    overflow_seen: u32,
    /// The provided-buffer ring pooled receives take their segments from (`None` on
    /// kernels without buffer rings: they poll, then receive).
    pbuf: Option<BufRing>,
    /// Bytes a pooled receive may take (the arena's segment size).
    segment: u32,
    /// Sockets whose pooled receive found the buffer ring empty.
    starved: Vec<u32>,
    /// UDP sockets whose queues changed since the last enter: their datagram ops
    /// are started once, just before it (see `advance_datagrams`).
    datagrams: Vec<u32>,
    /// The port is going: nothing new goes to the kernel (see `drain`).
    draining: bool,
    /// Listeners (index, generation) with a multishot accept in the kernel.
    accepting: Vec<(u32, u32)>,
    /// Connections a multishot accept delivered while no accept op waited:
    /// (listener index, generation, connection).
    unclaimed: std::collections::VecDeque<(u32, u32, Stream)>,
    /// Multishot accept works here (5.19+); cleared at its first `EINVAL`.
    multishot_accept: bool,
    /// Per socket slot: its multishot receive.
    readers: Vec<Reader>,
    /// Per socket slot: the arrivals its multishot delivered that no receive took.
    kept: Kept,
    /// Multishot receive works here (6.0+); cleared at its first `EINVAL`.
    multishot_recv: bool,
    /// Multishot `RECVMSG` works here (6.0+); cleared at its first `EINVAL`.
    multishot_recvmsg: bool,
    /// The header template of multishot datagram receives (its address and control
    /// room): boxed, so it stays put until the enter that submits it.
    msg_template: Box<libc::msghdr>,
    /// The setup flags the kernel took.
    pub(crate) flags: &'static str,
    /// The port's audit: the stranded ops (index, sequence) found at the last check,
    /// so that each is counted once.
    stranded: Vec<(u32, u32)>,
    /// UDP sockets' datagram ops by readiness (made at the first UDP op), unless
    /// they run in the ring.
    batched: Option<Batched>,
    /// The datagram epoll's events per wait; `None` when datagrams run in the ring.
    batch_events: Option<usize>,
}

impl Drop for Uring {
    fn drop(&mut self) {
        if self.pbuf.is_some() {
            // Before the ring's memory and its segments go (fields drop after this).
            let _ = self.ring.submitter().unregister_buf_ring(pbuf::GROUP);
        }
    }
}

type Flags = fn(&mut io_uring::Builder);

/// Setup flags, best first; `EINVAL` steps down to the next.
const LADDER: [(&str, Flags); 3] = [
    ("SINGLE_ISSUER|DEFER_TASKRUN|SUBMIT_ALL", |b| {
        b.setup_single_issuer().setup_defer_taskrun().setup_submit_all();
    }),
    ("COOP_TASKRUN|TASKRUN_FLAG|SUBMIT_ALL", |b| {
        b.setup_coop_taskrun().setup_taskrun_flag().setup_submit_all();
    }),
    ("none", |_| {}),
];

fn unavailable(during: &'static str, source: io::Error) -> UringUnavailable {
    UringUnavailable { during, source }
}

impl Uring {
    /// Sets up a ring with room for `ops` operations in flight, probes every opcode
    /// the port uses, and makes one round trip through the kernel (a seccomp filter
    /// may allow the setup and refuse the enter). Returns the driver and the eventfd
    /// posts write to.
    ///
    /// `ring_entries` segments (a power of two; 0 for none) are leased with `lease`
    /// for the provided-buffer ring; a kernel without buffer rings (before 5.19) runs
    /// without one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ops: usize,
        sockets: usize,
        segment: usize,
        ring_entries: u16,
        lease: impl FnMut() -> Option<Lease>,
        ring_datagrams: bool,
        events: usize,
    ) -> Result<(Uring, OwnedFd), UringUnavailable> {
        let sq = (ops as u32).clamp(8, 4096).next_power_of_two();
        // Each op has at most one submission and one cancel in flight, plus the wake
        // poll's completions: the completion queue never needs to overflow.
        let cq = ((2 * ops + 64) as u32).clamp(2 * sq, 65536).next_power_of_two();
        let mut last = None;
        let mut ring = None;
        for (name, apply) in LADDER {
            let mut builder = IoUring::builder();
            builder.dontfork().setup_cqsize(cq);
            apply(&mut builder);
            match builder.build(sq) {
                Ok(r) => {
                    ring = Some((r, name));
                    break;
                }
                Err(e) if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => last = Some(e),
                Err(e) => return Err(unavailable("io_uring_setup", e)),
            }
        }
        let Some((mut ring, flags)) = ring else {
            return Err(unavailable("io_uring_setup", last.unwrap_or_else(|| Errno::INVAL.into())));
        };
        if !ring.params().is_feature_nodrop() || !ring.params().is_feature_ext_arg() {
            return Err(unavailable("io_uring_setup (no FEAT_NODROP or FEAT_EXT_ARG)", Errno::NOSYS.into()));
        }
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe).map_err(|e| unavailable("IORING_REGISTER_PROBE", e))?;
        for (name, code) in [
            ("ACCEPT", opcode::Accept::CODE),
            ("RECV", opcode::Recv::CODE),
            ("SEND", opcode::Send::CODE),
            ("POLL_ADD", opcode::PollAdd::CODE),
            ("RECVMSG", opcode::RecvMsg::CODE),
            ("SENDMSG", opcode::SendMsg::CODE),
            ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
        ] {
            if !probe.is_supported(code) {
                let _ = name;
                return Err(unavailable("probing the opcodes the port uses", Errno::NOSYS.into()));
            }
        }
        // One round trip: a NOP submitted and reaped.
        // SAFETY: a NOP refers to no memory.
        unsafe { ring.submission().push(&opcode::Nop::new().build().user_data(CANCEL)) }
            .map_err(|_| unavailable("the first submission", Errno::AGAIN.into()))?;
        ring.submit_and_wait(1).map_err(|e| unavailable("io_uring_enter", e))?;
        ring.completion().for_each(drop);
        // Optional: saves the kernel a descriptor lookup per enter.
        let _ = ring.submitter().register_ring_fd();

        let wake =
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)
                .map_err(|e| unavailable("eventfd", e.into()))?;
        let notifier = wake.try_clone().map_err(|e| unavailable("eventfd", e))?;
        let pbuf = match ring_entries {
            0 => None,
            n => match BufRing::new(&ring, n, lease) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::debug!("no provided-buffer ring ({e}): pooled receives poll, then receive");
                    None
                }
            },
        };
        let mut uring = Uring {
            ring,
            wake,
            wake_armed: false,
            phase: vec![Phase::Idle; ops],
            in_kernel: 0,
            cqes: Vec::with_capacity(cq as usize),
            overflow_seen: 0,
            pbuf,
            segment: segment.min(u32::MAX as usize) as u32,
            starved: Vec::with_capacity(64),
            datagrams: Vec::with_capacity(8),
            draining: false,
            accepting: Vec::with_capacity(8),
            unclaimed: std::collections::VecDeque::with_capacity(UNCLAIMED_MAX),
            multishot_accept: true,
            readers: (0..sockets).map(|_| Reader::default()).collect(),
            // Each arrival holds a ring segment (or marks an end): twice the ring.
            kept: Kept::new(sockets, 2 * usize::from(ring_entries) + 64),
            multishot_recv: true,
            multishot_recvmsg: true,
            msg_template: Box::new(crate::udp::multishot_template()),
            flags,
            stranded: Vec::new(),
            batched: None,
            batch_events: None,
        };
        uring.batch_events = (!ring_datagrams).then_some(events);
        uring.arm_wake();
        Ok((uring, notifier))
    }

    fn arm_wake(&mut self) {
        let poll = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), POLLIN).multi(true);
        // SAFETY: a poll refers to no memory; the eventfd lives as long as the ring.
        self.push(&poll.build().user_data(WAKE));
        self.wake_armed = true;
    }

    /// Queues a submission, making room by submitting the queue if it is full.
    fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: every submission's memory (an op's segment, owned by the op in
            // the pool, in the arena the core keeps mapped) stays valid and untouched
            // until its completion: the op is `kernel` until then, and `op_mut`,
            // `give_op` and the drop path all wait for that.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            match self.ring.submit() {
                Ok(_) => {}
                // The completion queue is backed up: move completions out (handled at
                // the next reap) and try again.
                Err(_) => self.copy_out(),
            }
        }
    }

    pub(crate) fn ring_buffers(&self) -> usize {
        self.pbuf.as_ref().map_or(0, BufRing::lent)
    }

    /// The audit before a sleep: counts the queue heads left neither with the kernel
    /// nor waiting for a reason — the buffer ring (starved), a listener's back-off,
    /// an armed or ending multishot (accept or receive), the datagram start before
    /// the enter, the drain — and the receives left waiting although arrivals are
    /// kept for them. Each op is counted once (see `PortStats::stranded_ops`).
    pub(crate) fn audit<T>(&mut self, core: &mut Core<T>) -> u64 {
        let before = std::mem::take(&mut self.stranded);
        if self.draining {
            return 0;
        }
        let batched = self.batched.is_some();
        let mut count = self.batched.as_mut().map_or(0, |b| b.epoll.audit(core, true));
        for (index, entry) in core.sockets.iter() {
            let socket = index as u32;
            if batched && matches!(entry.io, Io::Udp { .. }) {
                // The datagram epoll's (audited above).
                continue;
            }
            if self.datagrams.contains(&socket) {
                // Started (or completed from what a multishot kept) just before the
                // enter, which then does not sleep if any completed.
                continue;
            }
            let generation = core.generations[index] & GEN_MASK;
            let waits_for_reason = self.starved.contains(&socket)
                || entry.backoff_until.is_some()
                || self.accepting.contains(&(socket, generation))
                || self.readers[index].armed.is_some();
            for dir in [Dir::Read, Dir::Write] {
                let op = entry.queue_ref(dir).head;
                if op == NIL {
                    continue;
                }
                let kept_for_it =
                    dir == Dir::Read && self.readers[index].generation == generation && !self.kept.is_empty(socket);
                // A receive with the kernel while arrivals are kept for the socket: the
                // kept ones come first, so it waits behind data it should have had.
                if core.meta[op as usize].kernel && !kept_for_it {
                    continue;
                }
                if waits_for_reason && !kept_for_it && !core.meta[op as usize].kernel {
                    continue;
                }
                let key = (op, core.meta[op as usize].seq);
                if !before.contains(&key) {
                    tracing::warn!(socket, ?dir, op, "stranded op: it could run, and the port is going to sleep");
                    count += 1;
                }
                self.stranded.push(key);
            }
        }
        count
    }

    /// Whether a wait must not block: never for this driver (its work is all in the
    /// kernel's hands).
    pub(crate) fn busy(&self) -> bool {
        self.batched.as_ref().is_some_and(|b| b.epoll.busy())
    }

    pub(crate) fn submit<T>(&mut self, core: &mut Core<T>, op: u32, socket: u32, dir: Dir) {
        let udp = matches!(core.sockets.get(socket as usize), Some(e) if matches!(e.io, Io::Udp { .. }));
        if udp
            && let Some(events) = self.batch_events
            && self.batched.is_none()
        {
            // The epoll's own waker is never used: posts wake the ring.
            match Epoll::new(events) {
                Ok((epoll, _waker)) => {
                    let registered = vec![None; self.readers.len()];
                    self.batched = Some(Batched { epoll, armed: false, failed: false, registered });
                }
                Err(e) => {
                    let sid = core.sid(socket);
                    tracing::warn!("an epoll for UDP sockets: {e}");
                    return core.complete(op, Err(OpError::from_io(&e)), sid);
                }
            }
        }
        if let Some(b) = self.batched.as_mut()
            && let Some(entry) = core.sockets.get(socket as usize)
            && udp
        {
            let generation = core.generations[socket as usize] & GEN_MASK;
            let slot = &mut b.registered[socket as usize];
            if *slot != Some(generation) {
                let fd = entry.io.as_raw_fd();
                if let Err(e) = b.epoll.register(socket as usize, fd, false) {
                    let sid = core.sid(socket);
                    tracing::debug!(socket, "registering a UDP socket with the datagram epoll: {e}");
                    return core.complete(op, Err(OpError::from_io(&e)), sid);
                }
                *slot = Some(generation);
            }
            b.failed = false;
            return b.epoll.submit(core, op, socket, dir);
        }
        core.push_back(socket, dir, op);
        self.advance(core, socket, dir);
    }

    /// Starts the head of a queue, and the ones after it as long as they finish at
    /// once; stops at one the kernel holds. (A UDP socket's datagram ops: see
    /// [`advance_datagrams`](Self::advance_datagrams).)
    fn advance<T>(&mut self, core: &mut Core<T>, socket: u32, dir: Dir) {
        if matches!(core.sockets.get(socket as usize), Some(e) if matches!(e.io, Io::Udp { .. })) {
            // Started at the next enter, once for every op queued or completed
            // since: walking the queue per op would cost more than the syscalls saved.
            if !self.datagrams.contains(&socket) {
                self.datagrams.push(socket);
            }
            return;
        }
        loop {
            let head = core.head(socket, dir);
            if head == NIL || core.meta[head as usize].kernel {
                return;
            }
            match self.start(core, head, socket, true) {
                Start::Started | Start::Waiting => return,
                Start::Done(result, sid) => {
                    core.pop_front(socket, dir);
                    core.stats.completed_queued += 1;
                    core.complete(head, result, sid);
                }
            }
        }
    }

    /// A UDP socket's queue: datagrams need no order among themselves, so up to
    /// [`DATAGRAMS_IN_KERNEL`] of its datagram ops are with the kernel at once, not
    /// only the head — one enter then moves a batch of them instead of one per
    /// direction. (The walk stops at any other kind of op that is not the head.)
    /// Ops start in queue order and leave it when they complete, so those the kernel
    /// holds are always a prefix of the queue.
    fn advance_datagrams<T>(&mut self, core: &mut Core<T>, socket: u32, dir: Dir) {
        if !matches!(core.sockets.get(socket as usize), Some(e) if matches!(e.io, Io::Udp { .. })) {
            return; // closed since it was listed
        }
        let mut cur = core.head(socket, dir);
        let mut held = 0;
        while cur != NIL && held < DATAGRAMS_IN_KERNEL {
            let next = core.meta[cur as usize].next;
            if core.meta[cur as usize].kernel {
                held += 1;
                cur = next;
                continue;
            }
            let datagram = core.meta[cur as usize]
                .id
                .and_then(|id| core.pool.get(id).ok())
                .is_some_and(|a| matches!(a.kind(), OpKind::RecvFrom | OpKind::SendTo));
            if !datagram && cur != core.head(socket, dir) {
                return;
            }
            if held > 0 && core.meta[cur as usize].pooled {
                // A pooled receive arms the socket's multishot, which would take
                // datagrams meant for the one-shot receives ahead of it: it starts once
                // they are done.
                return;
            }
            match self.start(core, cur, socket, true) {
                Start::Started => held += 1,
                Start::Waiting => return,
                Start::Done(result, sid) => {
                    core.unlink(socket, dir, cur);
                    core.stats.completed_queued += 1;
                    core.complete(cur, result, sid);
                }
            }
            cur = next;
        }
    }

    /// A listener's back-off ended: accept again.
    pub(crate) fn resume<T>(&mut self, core: &mut Core<T>, socket: u32) {
        self.advance(core, socket, Dir::Read);
    }

    /// Asks the kernel for an op back (its completion follows, cancelled or not).
    pub(crate) fn abort<T>(&mut self, core: &mut Core<T>, op: u32) {
        let target = user_data(op, core.meta[op as usize].seq);
        self.push(&opcode::AsyncCancel::new(target).build().user_data(CANCEL));
    }

    fn start<T>(&mut self, core: &mut Core<T>, op: u32, socket: u32, try_now: bool) -> Start {
        if self.draining {
            // Left queued: the port's drop frees it with the rest.
            return Start::Waiting;
        }
        let sid = core.sid(socket);
        let Some(id) = core.meta[op as usize].id else { return Start::Done(Err(OpError::InvalidInput), sid) };
        let Some(entry) = core.sockets.get(socket as usize) else {
            return Start::Done(Err(OpError::NotConnected), sid);
        };
        let fd = types::Fd(entry.io.as_raw_fd());
        let meta = core.meta[op as usize];
        let Ok(args) = core.pool.get_mut(id) else { return Start::Done(Err(OpError::InvalidInput), sid) };
        let (sqe, phase) = match args.kind() {
            OpKind::Accept if self.multishot_accept => {
                if core.backing_off(socket) {
                    return Start::Waiting;
                }
                if let Some(accepted) = self.claim(core, socket, sid.generation) {
                    return Start::Done(Ok(0), accepted);
                }
                let key = (socket, sid.generation & GEN_MASK);
                if !self.accepting.contains(&key) {
                    let flags = (SocketFlags::NONBLOCK | SocketFlags::CLOEXEC).bits() as i32;
                    let multi = opcode::AcceptMulti::new(fd).flags(flags).build();
                    self.push(&multi.user_data(socket_data(key.0, key.1)));
                    self.accepting.push(key);
                    self.in_kernel += 1;
                }
                // The op waits in its queue, not in the kernel: cancelling it or its
                // deadline needs nothing from the kernel.
                return Start::Waiting;
            }
            OpKind::Accept => {
                if core.backing_off(socket) {
                    return Start::Waiting;
                }
                let flags = (SocketFlags::NONBLOCK | SocketFlags::CLOEXEC).bits() as i32;
                (opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut()).flags(flags).build(), Phase::Data)
            }
            OpKind::Recv if meta.pooled && self.pbuf.is_some() && self.multishot_recv => {
                let generation = sid.generation & GEN_MASK;
                if let Some(a) = self.take_kept(socket, generation) {
                    return Start::Done(hand_over(args, a.lease, a.res, a.taken), sid);
                }
                self.arm_reader(socket, generation, || opcode::RecvMulti::new(fd, pbuf::GROUP).build());
                // The op waits in its queue; the multishot belongs to the socket.
                return Start::Waiting;
            }
            OpKind::Recv if !meta.pooled && self.reading(socket, sid.generation) => {
                // Arrivals kept for this socket come first, copied into the op's own
                // range; with none kept, the multishot is stopped and the receive
                // starts once it has ended.
                if let Some(front) = self.kept.front_mut(socket) {
                    let result = copy_front(args, front);
                    if front.used_up() {
                        self.kept.pop_front(socket);
                    }
                    return Start::Done(result, sid);
                }
                self.stop_reader(socket, sid.generation);
                return Start::Waiting;
            }
            // A receive into a list, or a wait for readability, on a socket whose
            // multishot receive is armed or left arrivals: those come first (the
            // socket itself may hold nothing more), and the multishot must end before
            // the socket is read or polled directly, or it would take what they wait for.
            kind @ (OpKind::RecvVectored | OpKind::Ready)
                if (kind == OpKind::RecvVectored || meta.events & POLLIN != 0)
                    && self.reading(socket, sid.generation) =>
            {
                if let Some(front) = self.kept.front_mut(socket) {
                    if kind == OpKind::Ready {
                        return Start::Done(Ok(POLLIN as usize), sid);
                    }
                    let result = copy_front_list(&mut core.packets[op as usize], front);
                    if front.used_up() {
                        self.kept.pop_front(socket);
                    }
                    return Start::Done(result, sid);
                }
                self.stop_reader(socket, sid.generation);
                return Start::Waiting;
            }
            OpKind::Recv if meta.pooled && self.pbuf.is_some() => (
                opcode::Recv::new(fd, std::ptr::null_mut(), self.segment)
                    .buf_group(pbuf::GROUP)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT),
                Phase::Select,
            ),
            OpKind::Recv if meta.pooled => (opcode::PollAdd::new(fd, POLLIN).build(), Phase::Poll),
            OpKind::Recv => {
                let range = args.range();
                let Some(lease) = args.buffer_mut() else { return Start::Done(Err(OpError::InvalidInput), sid) };
                let Some(buf) = lease.get_mut(range) else { return Start::Done(Err(OpError::InvalidInput), sid) };
                let len = buf.len().min(u32::MAX as usize) as u32;
                (opcode::Recv::new(fd, buf.as_mut_ptr(), len).build(), Phase::Data)
            }
            OpKind::Send => {
                let range = args.range();
                let Some(lease) = args.buffer() else { return Start::Done(Err(OpError::InvalidInput), sid) };
                let Some(buf) = lease.get(range.start + meta.progress..range.end) else {
                    return Start::Done(Err(OpError::InvalidInput), sid);
                };
                let len = buf.len().min(u32::MAX as usize) as u32;
                (opcode::Send::new(fd, buf.as_ptr(), len).flags(SendFlags::NOSIGNAL.bits() as i32).build(), Phase::Data)
            }
            OpKind::SendFile => {
                if try_now && let Step::Done(result, sid) = sys_io::send_file(core, op, socket) {
                    return Start::Done(result, sid);
                }
                (opcode::PollAdd::new(fd, POLLOUT).build(), Phase::Poll)
            }
            OpKind::Connect => (opcode::PollAdd::new(fd, POLLOUT).build(), Phase::Poll),
            OpKind::SendPackets => {
                if try_now && let Step::Done(result, sid) = sys_io::send_packets(core, op, socket) {
                    return Start::Done(result, sid);
                }
                (opcode::PollAdd::new(fd, POLLOUT).build(), Phase::Poll)
            }
            OpKind::RecvVectored => {
                if try_now && let Step::Done(result, sid) = sys_io::recv_vectored(core, op, socket) {
                    return Start::Done(result, sid);
                }
                (opcode::PollAdd::new(fd, POLLIN).build(), Phase::Poll)
            }
            OpKind::Ready => (opcode::PollAdd::new(fd, meta.events).build(), Phase::Poll),
            OpKind::RecvFrom if meta.pooled && self.pbuf.is_some() && self.multishot_recvmsg => {
                let generation = sid.generation & GEN_MASK;
                if let Some(a) = self.take_kept(socket, generation) {
                    let result = hand_over_datagram(core, op, socket, a.lease, a.res);
                    return Start::Done(result, sid);
                }
                let template = &raw const *self.msg_template;
                // MSG_TRUNC: each datagram's header says its real length.
                self.arm_reader(socket, generation, || {
                    opcode::RecvMsgMulti::new(fd, template, pbuf::GROUP).flags(libc::MSG_TRUNC as u32).build()
                });
                return Start::Waiting;
            }
            OpKind::RecvFrom if !meta.pooled && self.reading(socket, sid.generation) => {
                // Datagrams a multishot kept come first, copied into the op's range;
                // with none kept, the multishot is stopped and this receive starts
                // once it has ended.
                if let Some(a) = self.kept.pop_front(socket) {
                    let result = copy_datagram(core, op, socket, a.lease.as_ref(), a.res);
                    return Start::Done(result, sid);
                }
                self.stop_reader(socket, sid.generation);
                return Start::Waiting;
            }
            kind @ (OpKind::RecvFrom | OpKind::SendTo) => {
                let hdr = match sys_io::prepare_datagram(core, op, socket) {
                    Ok((hdr, _)) => hdr,
                    Err(e) => return Start::Done(Err(e), sid),
                };
                // MSG_TRUNC: a receive returns the datagram's real length.
                let sqe = if kind == OpKind::RecvFrom {
                    opcode::RecvMsg::new(fd, hdr).flags(libc::MSG_TRUNC as u32).build()
                } else {
                    opcode::SendMsg::new(fd, hdr).flags(libc::MSG_NOSIGNAL as u32).build()
                };
                (sqe, Phase::Data)
            }
            _ => return Start::Done(Err(OpError::InvalidInput), sid),
        };
        self.push(&sqe.user_data(user_data(op, meta.seq)));
        self.phase[op as usize] = phase;
        core.meta[op as usize].kernel = true;
        self.in_kernel += 1;
        Start::Started
    }

    /// The next arrival kept for `socket`, once those of an earlier socket in its
    /// slot are dropped.
    fn take_kept(&mut self, socket: u32, generation: u32) -> Option<Arrival> {
        let reader = &mut self.readers[socket as usize];
        if reader.generation != generation {
            self.kept.clear(socket);
            reader.generation = generation;
        }
        self.kept.pop_front(socket)
    }

    /// Arms `socket`'s multishot receive (the submission `sqe` makes) unless one of
    /// this generation is armed. (One of an earlier socket in the slot may still be
    /// ending: its last completion is told apart by its generation.)
    fn arm_reader(&mut self, socket: u32, generation: u32, sqe: impl FnOnce() -> squeue::Entry) {
        if self.readers[socket as usize].armed != Some(generation) {
            self.push(&sqe().user_data(reader_data(socket, generation)));
            let reader = &mut self.readers[socket as usize];
            reader.armed = Some(generation);
            reader.stopping = false;
            self.in_kernel += 1;
        }
    }

    /// Asks a socket's multishot receive to end (once): an op that must read the
    /// socket itself waits for that.
    fn stop_reader(&mut self, socket: u32, generation: u32) {
        let reader = &mut self.readers[socket as usize];
        if !reader.stopping {
            reader.stopping = true;
            let target = reader_data(socket, generation & GEN_MASK);
            self.push(&opcode::AsyncCancel::new(target).build().user_data(CANCEL));
        }
    }

    /// Takes a connection a multishot accept delivered earlier to `listener`, if
    /// one is kept and admitted (one refused is closed; the next is tried).
    fn claim<T>(&mut self, core: &mut Core<T>, listener: u32, generation: u32) -> Option<crate::SocketId> {
        let generation = generation & GEN_MASK;
        while let Some(i) = self.unclaimed.iter().position(|&(l, g, _)| l == listener && g == generation) {
            let (_, _, stream) = self.unclaimed.remove(i)?;
            let nodelay = matches!(core.sockets.get(listener as usize), Some(e) if matches!(e.io, Io::Listener { nodelay: true, .. }));
            if let Some(accepted) = core.admit(stream, nodelay, |_, _, _| Ok(())) {
                return Some(accepted);
            }
        }
        None
    }

    /// A completion of a listener's multishot accept.
    fn accepted<T>(&mut self, core: &mut Core<T>, data: u64, res: i32, flags: u32) {
        let (listener, generation) = (data as u32, ((data >> 32) as u32) & GEN_MASK);
        let more = cqueue::more(flags);
        if !more {
            self.accepting.retain(|&k| k != (listener, generation));
            self.in_kernel -= 1;
        }
        let live = core.sockets.get(listener as usize).is_some()
            && core.generations.get(listener as usize).is_some_and(|&g| g & GEN_MASK == generation)
            && !self.draining;
        if res >= 0 {
            // SAFETY: a successful accept's result is a new descriptor we now own.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            if !live {
                return;
            }
            let stream = Stream::accepted(fd, unix_listener(core, listener));
            let head = core.head(listener, Dir::Read);
            let nodelay = match core.sockets.get_mut(listener as usize) {
                Some(entry) => {
                    entry.backoff_delay = Duration::ZERO;
                    matches!(entry.io, Io::Listener { nodelay: true, .. })
                }
                None => false,
            };
            if head != NIL {
                // Refused (limit, table) means closed and counted; the op waits on.
                if let Some(accepted) = core.admit(stream, nodelay, |_, _, _| Ok(())) {
                    core.pop_front(listener, Dir::Read);
                    core.stats.completed_queued += 1;
                    core.complete(head, Ok(0), accepted);
                }
            } else {
                let first = !self.unclaimed.iter().any(|&(l, g, _)| (l, g) == (listener, generation));
                self.unclaimed.push_back((listener, generation, stream));
                // Nobody accepts now: stop the multishot (once) until an accept op comes.
                if more && first {
                    self.push(&opcode::AsyncCancel::new(data).build().user_data(CANCEL));
                }
            }
        } else {
            let errno = Errno::from_raw_os_error(-res);
            match errno {
                Errno::CANCELED => {}
                Errno::INVAL if self.multishot_accept => {
                    tracing::debug!("no multishot accept on this kernel: one accept per submission");
                    self.multishot_accept = false;
                }
                _ => {
                    if live && sys_io::classify_accept(errno) == AcceptFailure::BackOff {
                        core.back_off(listener, &errno.into());
                        if more {
                            self.push(&opcode::AsyncCancel::new(data).build().user_data(CANCEL));
                        }
                    }
                }
            }
        }
        if live {
            // The next accept op, or a new multishot for the one still waiting.
            self.advance(core, listener, Dir::Read);
        }
    }

    /// Whether socket `socket` has a multishot receive armed or arrivals kept.
    fn reading(&self, socket: u32, generation: u32) -> bool {
        self.readers.get(socket as usize).is_some_and(|r| {
            let generation = generation & GEN_MASK;
            r.armed == Some(generation) || (r.generation == generation && !self.kept.is_empty(socket))
        })
    }

    /// A completion of a stream's multishot receive: an arrival (a segment and its
    /// length), the end of stream, an error, or the multishot's end.
    fn received<T>(&mut self, core: &mut Core<T>, data: u64, res: i32, flags: u32, lease: Option<Lease>) {
        let (socket, generation) = (data as u32, ((data >> 32) as u32) & GEN_MASK);
        let more = cqueue::more(flags);
        let Some(reader) = self.readers.get_mut(socket as usize) else { return };
        if !more {
            self.in_kernel -= 1;
            if reader.armed == Some(generation) {
                reader.armed = None;
                reader.stopping = false;
            }
        }
        let live = core.sockets.get(socket as usize).is_some()
            && core.generations.get(socket as usize).is_some_and(|&g| g & GEN_MASK == generation)
            && !self.draining;
        if !live {
            // The socket is gone: the segment goes back to the arena.
            return;
        }
        let udp = matches!(core.sockets.get(socket as usize), Some(e) if matches!(e.io, Io::Udp { .. }));
        match res {
            r if r == -Errno::CANCELED.raw_os_error() => {}
            r if r == -Errno::INVAL.raw_os_error() && udp && self.multishot_recvmsg && self.kept.is_empty(socket) => {
                tracing::debug!("no multishot RECVMSG on this kernel: one datagram receive per submission");
                self.multishot_recvmsg = false;
            }
            r if r == -Errno::INVAL.raw_os_error() && !udp && self.multishot_recv && self.kept.is_empty(socket) => {
                tracing::debug!("no multishot receive on this kernel: one receive per submission");
                self.multishot_recv = false;
            }
            r if r == -Errno::NOBUFS.raw_os_error() => {
                // The ring ran dry and ended the multishot: a waiting receive starves
                // until segments return (`feed` re-arms it).
                let head = core.head(socket, Dir::Read);
                if head != NIL && core.meta[head as usize].pooled {
                    core.stats.enobufs += 1;
                    if !self.starved.contains(&socket) {
                        self.starved.push(socket);
                    }
                    return;
                }
            }
            _ => {
                if reader.generation != generation {
                    self.kept.clear(socket);
                    reader.generation = generation;
                }
                let head = core.head(socket, Dir::Read);
                let waiting = head != NIL && !core.meta[head as usize].kernel && core.meta[head as usize].pooled;
                if waiting && self.kept.is_empty(socket) {
                    let sid = core.sid(socket);
                    let result = if udp {
                        hand_over_datagram(core, head, socket, lease, res)
                    } else {
                        match core.meta[head as usize].id.map(|id| core.pool.get_mut(id)) {
                            Some(Ok(args)) => hand_over(args, lease, res, 0),
                            _ => Err(OpError::InvalidInput),
                        }
                    };
                    core.pop_front(socket, Dir::Read);
                    core.stats.completed_queued += 1;
                    core.complete(head, result, sid);
                } else {
                    let mut lease = lease;
                    if let Some(l) = lease.as_mut() {
                        let _ = l.set_len(res.max(0) as usize);
                    }
                    self.kept.push_back(socket, Arrival { lease, res, taken: 0 });
                    // Nobody reads this socket now: stop taking segments from the ring
                    // for it after a couple of arrivals.
                    if more && self.kept.len(socket) >= 2 && !reader.stopping {
                        reader.stopping = true;
                        self.push(&opcode::AsyncCancel::new(data).build().user_data(CANCEL));
                    }
                }
            }
        }
        // The next receive, a re-armed multishot for one still waiting, or an own-buffer
        // receive that waited for the multishot to end.
        self.advance(core, socket, Dir::Read);
    }

    /// Socket `socket` is being closed: cancel its multishot accept or receive,
    /// close the connections it accepted that nobody took, and return the segments
    /// it received that nobody took.
    pub(crate) fn deregister(&mut self, socket: crate::SocketId, fd: std::os::fd::RawFd) {
        let key = (socket.index, socket.generation & GEN_MASK);
        if let Some(b) = self.batched.as_mut()
            && let Some(slot) = b.registered.get_mut(socket.index as usize)
            && slot.take().is_some()
        {
            b.epoll.deregister(fd);
            b.epoll.forget(socket.index);
        }
        if self.accepting.contains(&key) {
            let target = socket_data(key.0, key.1);
            self.push(&opcode::AsyncCancel::new(target).build().user_data(CANCEL));
        }
        self.unclaimed.retain(|&(l, g, _)| (l, g) != key);
        self.kept.clear(socket.index);
        if self.readers.get(socket.index as usize).is_some_and(|r| r.armed == Some(key.1)) {
            self.push(&opcode::AsyncCancel::new(reader_data(key.0, key.1)).build().user_data(CANCEL));
        }
    }

    /// Before each wait decides whether it may sleep: refills the buffer ring
    /// (restarting receives that starved) and starts the datagram ops queued since
    /// the last enter. Either may complete ops at once (a datagram a multishot kept),
    /// which the wait then hands over without sleeping.
    pub(crate) fn prepare<T>(&mut self, core: &mut Core<T>) {
        self.feed(core);
        if let Some(b) = self.batched.as_mut() {
            b.epoll.prepare(core);
            if !b.armed && !b.failed && !self.draining {
                let poll = opcode::PollAdd::new(types::Fd(b.epoll.as_raw_fd()), POLLIN);
                b.armed = true;
                // SAFETY: a poll refers to no memory; the epoll lives as long as the ring.
                self.push(&poll.build().user_data(BATCHED));
            }
        }
        let mut datagrams = std::mem::take(&mut self.datagrams);
        for socket in datagrams.drain(..) {
            self.advance_datagrams(core, socket, Dir::Read);
            self.advance_datagrams(core, socket, Dir::Write);
        }
        self.datagrams = datagrams;
    }

    /// Enters the kernel once (after [`prepare`](Self::prepare)): submits everything
    /// queued and waits up to `timeout` for a completion; then handles every
    /// completion there is.
    pub(crate) fn poll<T>(&mut self, core: &mut Core<T>, mut timeout: Option<Duration>) -> io::Result<()> {
        if !self.starved.is_empty() {
            // Receives wait for segments the user still holds; no completion announces
            // their return, so look again soon.
            timeout = Some(timeout.map_or(STARVED_RETRY, |t| t.min(STARVED_RETRY)));
        }
        let result = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result.map_err(|e| Errno::from_io_error(&e).ok_or(e)) {
            Ok(_) => {}
            // Timed out, interrupted, or the completion queue is backed up (reaped now).
            Err(Ok(Errno::TIME | Errno::INTR | Errno::BUSY | Errno::AGAIN)) => {}
            Err(Ok(errno)) => return Err(errno.into()),
            Err(Err(e)) => return Err(e),
        }
        self.reap(core);
        Ok(())
    }

    /// Refills the buffer ring from the port's cache and restarts the receives that
    /// found it empty.
    fn feed<T>(&mut self, core: &mut Core<T>) {
        let Some(pbuf) = self.pbuf.as_mut() else { return };
        pbuf.refill(|| core.lease().ok());
        core.stats.ring_buffers = pbuf.lent();
        if pbuf.lent() > 0 && !self.starved.is_empty() {
            let mut starved = std::mem::take(&mut self.starved);
            for socket in starved.drain(..) {
                self.advance(core, socket, Dir::Read);
            }
            self.starved = starved;
        }
    }

    fn copy_out(&mut self) {
        let mut cq = self.ring.completion();
        let overflow = cq.overflow();
        for cqe in &mut cq {
            self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        drop(cq);
        if overflow != self.overflow_seen {
            tracing::warn!(
                "io_uring completion queue dropped {} completions",
                overflow.wrapping_sub(self.overflow_seen)
            );
            self.overflow_seen = overflow;
        }
    }

    fn reap<T>(&mut self, core: &mut Core<T>) {
        if self.ring.submission().cq_overflow() {
            // FEAT_NODROP: the kernel keeps what did not fit and hands it over at the
            // next enter, which a wait with completions ready makes at once.
            core.stats.cq_overflows += 1;
        }
        self.copy_out();
        let mut cqes = std::mem::take(&mut self.cqes);
        for (data, res, flags) in cqes.drain(..) {
            self.completed(core, data, res, flags);
        }
        self.cqes = cqes;
    }

    fn completed<T>(&mut self, core: &mut Core<T>, data: u64, res: i32, flags: u32) {
        if data == WAKE {
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&self.wake, &mut count);
            core.drain_posts();
            if !cqueue::more(flags) {
                self.arm_wake();
            }
            return;
        }
        if data == CANCEL {
            return;
        }
        if data == BATCHED {
            let Some(b) = self.batched.as_mut() else { return };
            b.armed = false;
            if self.draining {
                // The port is going: nothing new starts (as in the ring).
                return;
            }
            if res < 0 {
                // Armed again after the next datagram op, not before every enter: a
                // poll the kernel keeps refusing must not spin.
                tracing::warn!("the datagram epoll's poll failed: {}", io::Error::from_raw_os_error(-res));
                b.failed = true;
                return;
            }
            // Edges for UDP sockets: move their datagrams now, without waiting. A
            // wait that filled its room may have left edges behind, which no new
            // poll completion would announce: fetch them too.
            loop {
                if let Err(e) = b.epoll.poll(core, Some(Duration::ZERO)) {
                    tracing::warn!("the datagram epoll: {e}");
                    break;
                }
                if !b.epoll.last_full {
                    break;
                }
            }
            return;
        }
        if data & SOCKET_TAG != 0 {
            if data & RECV_TAG == 0 {
                return self.accepted(core, data, res, flags);
            }
            let lease = match (cqueue::buffer_select(flags), self.pbuf.as_mut()) {
                (Some(bid), Some(pbuf)) => pbuf.take(bid),
                _ => None,
            };
            return self.received(core, data, res, flags, lease);
        }
        let (op, seq) = (data as u32, (data >> 32) as u32);
        let Some(meta) = core.meta.get(op as usize).copied() else { return };
        if !meta.kernel || meta.seq & GEN_MASK != seq {
            tracing::error!(op, "io_uring completion for an op the port does not hold");
            return;
        }
        core.meta[op as usize].kernel = false;
        self.in_kernel -= 1;
        let phase = std::mem::replace(&mut self.phase[op as usize], Phase::Idle);
        // Every completion that names a segment hands it back, whatever became of
        // the op: to the op, or (dropped) to the arena.
        let lease = match (cqueue::buffer_select(flags), self.pbuf.as_mut()) {
            (Some(bid), Some(pbuf)) => pbuf.take(bid),
            _ => None,
        };
        match meta.state {
            // (A timer op is never with the kernel.)
            State::Idle | State::Timer => {}
            State::Detached { socket } => {
                core.stats.pending -= 1;
                if phase == Phase::Data && res >= 0 && is_accept(core, op) {
                    // SAFETY: a successful accept's result is a descriptor nobody else owns.
                    drop(unsafe { OwnedFd::from_raw_fd(res) });
                }
                core.abandon(op, socket, meta.cancel_as.unwrap_or(OpError::Cancelled));
            }
            State::Queued { socket, dir } => {
                let outcome = self.outcome(core, op, socket, phase, res, lease);
                let again = matches!(outcome, Outcome::Again | Outcome::Starved);
                if !again {
                    if core.head(socket, dir) == op {
                        core.pop_front(socket, dir);
                    } else {
                        core.unlink(socket, dir, op);
                    }
                }
                match outcome {
                    Outcome::Done(result, sid) => {
                        core.stats.completed_queued += 1;
                        core.complete(op, result, sid);
                    }
                    Outcome::Abandon(error) => core.abandon(op, core.sid(socket), error),
                    Outcome::Starved => {
                        core.stats.enobufs += 1;
                        if !self.starved.contains(&socket) {
                            self.starved.push(socket);
                        }
                        // Queued, not with the kernel: `feed` restarts it.
                        return;
                    }
                    Outcome::Again => {
                        if let Start::Done(result, sid) = self.start(core, op, socket, false) {
                            core.pop_front(socket, dir);
                            core.stats.completed_queued += 1;
                            core.complete(op, result, sid);
                        }
                    }
                }
                self.advance(core, socket, dir);
            }
        }
    }

    /// What completion `res` of an op in `phase` means.
    fn outcome<T>(
        &mut self,
        core: &mut Core<T>,
        op: u32,
        socket: u32,
        phase: Phase,
        res: i32,
        lease: Option<Lease>,
    ) -> Outcome {
        let sid = core.sid(socket);
        let meta = core.meta[op as usize];
        let cancelled = res == -Errno::CANCELED.raw_os_error() || (res == -Errno::INTR.raw_os_error());
        let error = || OpError::from_io(&io::Error::from_raw_os_error(-res));
        let Some(Ok(args)) = meta.id.map(|id| core.pool.get_mut(id)) else {
            return Outcome::Done(Err(OpError::InvalidInput), sid);
        };
        let kind = args.kind();
        if phase == Phase::Select {
            if res < 0 {
                return match meta.cancel_as {
                    Some(as_) => Outcome::Abandon(as_),
                    None if res == -Errno::NOBUFS.raw_os_error() => Outcome::Starved,
                    None => Outcome::Done(Err(error()), sid),
                };
            }
            // Data wins over a cancel that came too late.
            if let Some(mut lease) = lease {
                let capacity = lease.capacity();
                let _ = lease.set_len(res as usize);
                if let Err(e) = args.set_buffer(lease, 0..capacity) {
                    drop(e.lease);
                    return Outcome::Done(Err(OpError::InvalidInput), sid);
                }
            }
            return Outcome::Done(Ok(res as usize), sid);
        }
        if phase == Phase::Poll {
            // Nothing was read or written yet: a cancel wins, whatever the poll said.
            if let Some(as_) = meta.cancel_as {
                return Outcome::Abandon(as_);
            }
            if res < 0 && !cancelled {
                return Outcome::Done(Err(error()), sid);
            }
            let step = match kind {
                OpKind::Recv => sys_io::recv(core, op, socket).0,
                OpKind::SendFile => sys_io::send_file(core, op, socket),
                OpKind::Connect => sys_io::connect(core, socket),
                OpKind::SendPackets => sys_io::send_packets(core, op, socket),
                OpKind::RecvVectored => sys_io::recv_vectored(core, op, socket),
                // The poll's result is the answer (a stray cancel: poll again).
                OpKind::Ready if res >= 0 => Step::Done(Ok(res as usize), sid),
                OpKind::Ready => Step::Pending,
                _ => Step::Done(Err(OpError::InvalidInput), sid),
            };
            return match step {
                Step::Done(result, sid) => Outcome::Done(result, sid),
                Step::Pending => Outcome::Again,
            };
        }
        if matches!(kind, OpKind::RecvFrom | OpKind::SendTo) {
            if let Some(as_) = meta.cancel_as
                && cancelled
            {
                return Outcome::Abandon(as_);
            }
            let res = if res >= 0 { Ok(res as usize) } else { Err(Errno::from_raw_os_error(-res)) };
            match res {
                // Interrupted, or failed on an earlier datagram's ICMP error: again.
                Err(Errno::INTR) => return Outcome::Again,
                Err(e) if sys_io::retry_send(core, op, socket, e) => return Outcome::Again,
                _ => {}
            }
            return Outcome::Done(sys_io::finish_datagram(core, op, socket, res), sid);
        }
        if res < 0 {
            if let Some(as_) = meta.cancel_as
                && cancelled
            {
                return Outcome::Abandon(as_);
            }
            if kind == OpKind::Accept {
                let errno = Errno::from_raw_os_error(-res);
                if meta.cancel_as.is_some() {
                    return Outcome::Abandon(meta.cancel_as.unwrap_or(OpError::Cancelled));
                }
                return match sys_io::classify_accept(errno) {
                    AcceptFailure::Empty | AcceptFailure::Interrupted | AcceptFailure::Skip => Outcome::Again,
                    AcceptFailure::BackOff => {
                        core.back_off(socket, &errno.into());
                        Outcome::Again
                    }
                };
            }
            return Outcome::Done(Err(error()), sid);
        }
        let n = res as usize;
        match kind {
            OpKind::Accept => {
                // SAFETY: a successful accept's result is a new descriptor we now own.
                let fd = unsafe { OwnedFd::from_raw_fd(res) };
                let stream = Stream::accepted(fd, unix_listener(core, socket));
                let nodelay = match core.sockets.get_mut(socket as usize) {
                    Some(entry) => {
                        entry.backoff_delay = Duration::ZERO;
                        matches!(entry.io, Io::Listener { nodelay: true, .. })
                    }
                    None => false,
                };
                match core.admit(stream, nodelay, |_, _, _| Ok(())) {
                    Some(accepted) => Outcome::Done(Ok(0), accepted),
                    None if meta.cancel_as.is_some() => Outcome::Abandon(meta.cancel_as.unwrap_or(OpError::Cancelled)),
                    // Refused and closed: keep accepting.
                    None => Outcome::Again,
                }
            }
            OpKind::Recv => {
                let range = args.range();
                if let Some(lease) = args.buffer_mut() {
                    let _ = lease.set_len(range.start + n);
                }
                // Data that arrived wins over a cancel that came too late.
                Outcome::Done(Ok(n), sid)
            }
            OpKind::Send => {
                let len = args.range().len();
                if n == 0 {
                    return Outcome::Done(Err(OpError::BrokenPipe), sid);
                }
                let progress = meta.progress + n;
                core.meta[op as usize].progress = progress;
                if progress < len {
                    core.stats.send_waits += 1;
                }
                if progress >= len {
                    Outcome::Done(Ok(progress), sid)
                } else if let Some(as_) = meta.cancel_as {
                    Outcome::Abandon(as_)
                } else {
                    Outcome::Again
                }
            }
            _ => Outcome::Done(Err(OpError::InvalidInput), sid),
        }
    }

    /// Before the port's memory goes: asks the kernel for every op it holds and waits
    /// (up to `limit`) for their completions. Returns how many it still holds.
    pub(crate) fn drain<T>(&mut self, core: &mut Core<T>, limit: Duration) -> usize {
        // The completions that come back must not start the ops queued behind them.
        self.draining = true;
        self.starved.clear();
        self.unclaimed.clear();
        for (index, generation) in self.accepting.clone() {
            let target = socket_data(index, generation);
            self.push(&opcode::AsyncCancel::new(target).build().user_data(CANCEL));
        }
        for index in 0..self.readers.len() {
            self.kept.clear(index as u32);
            if let Some(generation) = self.readers[index].armed {
                let target = reader_data(index as u32, generation);
                self.push(&opcode::AsyncCancel::new(target).build().user_data(CANCEL));
            }
        }
        for op in 0..core.meta.len() {
            if core.meta[op].kernel {
                self.abort(core, op as u32);
            }
        }
        let until = Instant::now() + limit;
        while self.in_kernel > 0 {
            let now = Instant::now();
            if now >= until {
                break;
            }
            if self.poll(core, Some((until - now).min(Duration::from_millis(50)))).is_err() {
                break;
            }
        }
        self.in_kernel
    }
}

/// An op's `user_data`: its index and (31 bits of) its sequence number, so a cancel
/// aimed at one submission never hits the op's next one.
fn user_data(op: u32, seq: u32) -> u64 {
    (u64::from(seq & GEN_MASK) << 32) | u64::from(op)
}

/// A socket's own request (a multishot accept): its index and generation.
fn socket_data(index: u32, generation: u32) -> u64 {
    SOCKET_TAG | (u64::from(generation & GEN_MASK) << 32) | u64::from(index)
}

/// A stream's multishot receive.
fn reader_data(index: u32, generation: u32) -> u64 {
    socket_data(index, generation) | RECV_TAG
}

/// Hands an arrival to a pooled receive: its segment (as `0..capacity`, filled with
/// the `res - taken` bytes no copy took yet) and result.
fn hand_over<T>(
    args: &mut berth_ops::OpArgs<T>,
    lease: Option<Lease>,
    res: i32,
    taken: usize,
) -> Result<usize, OpError> {
    if res < 0 {
        return Err(OpError::from_io(&io::Error::from_raw_os_error(-res)));
    }
    let res = (res as usize).saturating_sub(taken);
    if let Some(mut lease) = lease {
        let capacity = lease.capacity();
        if taken > 0 {
            // A receive into its own range took the front: the rest moves up, so the
            // op's bytes start at 0 as after any pooled receive.
            lease.copy_within(taken..taken + res, 0);
        }
        let _ = lease.set_len(res);
        if let Err(e) = args.set_buffer(lease, 0..capacity) {
            drop(e.lease);
            return Err(OpError::InvalidInput);
        }
    }
    Ok(res)
}

/// Hands a datagram a multishot `RECVMSG` delivered (or its error) to pooled receive
/// `op`: the segment, with the datagram as the op's range, and the sender, packet
/// info and length. An error the network reported takes the socket's queued
/// errors off it, as a one-shot receive does.
fn hand_over_datagram<T>(
    core: &mut Core<T>,
    op: u32,
    socket: u32,
    lease: Option<Lease>,
    res: i32,
) -> Result<usize, OpError> {
    let Some(Ok(args)) = core.meta[op as usize].id.map(|id| core.pool.get_mut(id)) else {
        return Err(OpError::InvalidInput);
    };
    let Some(mut lease) = lease.filter(|_| res >= 0) else {
        return sys_io::finish_datagram(core, op, socket, Err(Errno::from_raw_os_error(-res.min(-1))));
    };
    let _ = lease.set_len(res as usize);
    match crate::udp::landed(lease.filled()) {
        Some(landed) => crate::udp::hand_over_landed(args, lease, &landed),
        None => Err(OpError::InvalidInput),
    }
}

/// Copies a datagram a multishot kept into receive `op`'s own range (or passes on
/// its error).
fn copy_datagram<T>(
    core: &mut Core<T>,
    op: u32,
    socket: u32,
    lease: Option<&Lease>,
    res: i32,
) -> Result<usize, OpError> {
    let Some(lease) = lease.filter(|_| res >= 0) else {
        return sys_io::finish_datagram(core, op, socket, Err(Errno::from_raw_os_error(-res.min(-1))));
    };
    let Some(Ok(args)) = core.meta[op as usize].id.map(|id| core.pool.get_mut(id)) else {
        return Err(OpError::InvalidInput);
    };
    match crate::udp::landed(lease.filled()) {
        Some(landed) => crate::udp::copy_landed(args, lease.filled(), &landed),
        None => Err(OpError::InvalidInput),
    }
}

/// Copies what is left of a kept arrival into a receive's own range; returns the
/// receive's result (an end of stream or error is passed on as it is).
fn copy_front<T>(args: &mut berth_ops::OpArgs<T>, front: &mut Arrival) -> Result<usize, OpError> {
    let Arrival { lease, res, taken } = front;
    let Some(lease) = lease.as_ref() else {
        return if *res < 0 { Err(OpError::from_io(&io::Error::from_raw_os_error(-*res))) } else { Ok(0) };
    };
    let range = args.range();
    let Some(own) = args.buffer_mut() else { return Err(OpError::InvalidInput) };
    let src = &lease.filled()[*taken..];
    let n = src.len().min(range.len());
    own[range.start..range.start + n].copy_from_slice(&src[..n]);
    let _ = own.set_len(range.start + n);
    *taken += n;
    Ok(n)
}

/// Whether socket `index` is a Unix domain listener (its accepted sockets are Unix
/// streams).
fn unix_listener<T>(core: &Core<T>, index: u32) -> bool {
    matches!(core.sockets.get(index as usize), Some(e) if matches!(e.io, Io::Listener { listener: Listener::Unix { .. }, .. }))
}

/// Copies what is left of a kept arrival into a list's byte ranges, in order (a
/// `recv_vectored`); an end of stream or error is passed on as it is.
fn copy_front_list(list: &mut crate::packets::Packets, front: &mut Arrival) -> Result<usize, OpError> {
    let Arrival { lease, res, taken } = front;
    let Some(lease) = lease.as_ref() else {
        return if *res < 0 { Err(OpError::from_io(&io::Error::from_raw_os_error(-*res))) } else { Ok(0) };
    };
    let mut src = &lease.filled()[*taken..];
    let mut copied = 0;
    for item in list.items_mut() {
        if let crate::Packet::Bytes { lease: own, range } = item {
            let n = src.len().min(range.end.saturating_sub(range.start));
            let Some(dst) = own.get_mut(range.start..range.start + n) else { return Err(OpError::InvalidInput) };
            dst.copy_from_slice(&src[..n]);
            let _ = own.set_len(range.start + n);
            src = &src[n..];
            copied += n;
        }
    }
    *taken += copied;
    Ok(copied)
}

fn is_accept<T>(core: &Core<T>, op: u32) -> bool {
    core.meta[op as usize].id.and_then(|id| core.pool.get(id).ok()).is_some_and(|a| a.kind() == OpKind::Accept)
}
