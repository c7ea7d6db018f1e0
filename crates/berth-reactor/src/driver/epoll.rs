//! The epoll driver (through mio, edge-triggered): completions emulated from
//! readiness, as .NET's Linux `SocketAsyncEngine` does. Submit tries the syscall at
//! once; an op that would block waits in its socket's queue and is tried again when
//! an edge says the socket is ready.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use berth_ops::{OpError, OpKind};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::core::{Core, Step};
use crate::driver::io::{self as sys_io, AcceptFailure};
use crate::socket::{Dir, Io, NIL};

const WAKER: Token = Token(usize::MAX);
/// Connections one accept attempt may refuse or find dead in the backlog before it
/// lets the other sockets have a turn; the listener is driven again at the next wait.
const ACCEPT_TURN: u32 = 64;
/// Datagram ops moved by one `recvmmsg`/`sendmmsg`.
const BATCH: usize = 64;

pub(crate) struct Epoll {
    poll: Poll,
    events: Events,
    /// Listeners whose accept gave up its turn with connections still in the backlog:
    /// no new edge will announce those, so the next wait drives them again.
    redrive: Vec<u32>,
    /// Sockets with datagram ops submitted since the last wait: the next wait moves
    /// them all, a batch per syscall.
    flush: Vec<u32>,
    /// The `mmsghdr` array of a batch (copies of the ops' headers, or their groups).
    batch: Vec<libc::mmsghdr>,
    /// Groups a send batch for UDP GSO.
    coalescer: crate::udp::Coalescer,
    /// The port's audit: queued ops whose socket `poll(2)` found ready as the port
    /// was about to sleep. Dropped when an edge for the socket comes; still there
    /// after a whole `epoll_wait` means the edge was lost.
    suspects: Vec<Suspect>,
    /// `epoll_wait`s that returned fewer events than there was room for: every edge
    /// pending when one began was delivered by it.
    whole_waits: u64,
    /// The last `epoll_wait` filled its room: more edges may be waiting.
    pub(crate) last_full: bool,
}

/// An op the audit saw able to run as the port went to sleep.
#[derive(Debug, Clone, Copy)]
struct Suspect {
    socket: u32,
    dir: Dir,
    op: u32,
    seq: u32,
    /// `whole_waits` when it was seen.
    seen: u64,
    /// Already counted as stranded.
    counted: bool,
}

impl Epoll {
    pub(crate) fn new(events: usize) -> io::Result<(Epoll, Waker)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let epoll = Epoll {
            poll,
            events: Events::with_capacity(events),
            redrive: Vec::with_capacity(8),
            flush: Vec::with_capacity(64),
            batch: Vec::with_capacity(BATCH),
            coalescer: crate::udp::Coalescer::new(BATCH),
            suspects: Vec::new(),
            whole_waits: 0,
            last_full: false,
        };
        Ok((epoll, waker))
    }

    pub(crate) fn register(&self, index: usize, fd: RawFd, listener: bool) -> io::Result<()> {
        let interest = if listener { Interest::READABLE } else { Interest::READABLE | Interest::WRITABLE };
        self.poll.registry().register(&mut SourceFd(&fd), Token(index), interest)
    }

    /// The epoll descriptor (the io_uring driver polls it for its UDP sockets).
    pub(crate) fn as_raw_fd(&self) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.poll)
    }

    /// Socket slot `socket` was closed: nothing pending for it is driven any more
    /// (the slot may be reused by a socket that is not this driver's).
    pub(crate) fn forget(&mut self, socket: u32) {
        self.flush.retain(|&s| s != socket);
        self.redrive.retain(|&s| s != socket);
        self.suspects.retain(|s| s.socket != socket);
    }

    pub(crate) fn deregister(&self, fd: RawFd) {
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
    }

    /// Whether a wait must not block: listeners wait for their next accept turn, or
    /// datagram ops to be moved.
    pub(crate) fn busy(&self) -> bool {
        !self.redrive.is_empty() || !self.flush.is_empty()
    }

    /// Tries a freshly submitted op at once if nothing is ahead of it and the socket
    /// may be ready (the seed's `willRaiseEvent == false`); queues it otherwise.
    pub(crate) fn submit<T>(&mut self, core: &mut Core<T>, op: u32, socket: u32, dir: Dir) {
        if matches!(core.sockets[socket as usize].io, Io::Udp { .. }) {
            // Datagram ops (and readiness ops on a UDP socket, to keep their order)
            // wait for the wait's flush, which batches them.
            core.push_back(socket, dir, op);
            if !self.flush.contains(&socket) {
                self.flush.push(socket);
            }
            return;
        }
        let entry = &core.sockets[socket as usize];
        if entry.queue_ref(dir).is_empty() && entry.ready(dir) {
            match self.try_op(core, op, socket) {
                Step::Done(result, target) => {
                    core.stats.completed_inline += 1;
                    core.complete(op, result, target);
                    return;
                }
                Step::Pending => core.sockets[socket as usize].set_ready(dir, false),
            }
        }
        core.push_back(socket, dir, op);
    }

    /// A listener's back-off ended: the backlog still holds the connections that met
    /// EMFILE, and no new edge will announce them.
    pub(crate) fn resume<T>(&mut self, core: &mut Core<T>, socket: u32) {
        if let Some(e) = core.sockets.get_mut(socket as usize) {
            e.readable = true;
        }
        self.drive(core, socket, Dir::Read);
    }

    /// Tries op `op`'s syscall once on socket `socket` (by index).
    fn try_op<T>(&mut self, core: &mut Core<T>, op: u32, socket: u32) -> Step {
        let kind = match core.meta[op as usize].id.map(|id| core.pool.get(id)) {
            Some(Ok(args)) => args.kind(),
            _ => return Step::Done(Err(OpError::InvalidInput), core.sid(socket)),
        };
        match kind {
            OpKind::Accept => self.try_accept(core, socket),
            OpKind::Recv => {
                let (step, drained) = sys_io::recv(core, op, socket);
                if drained
                    && let Some(entry) = core.sockets.get_mut(socket as usize)
                    && !entry.read_closed
                {
                    // A short stream read emptied the receive queue: wait for the next
                    // edge instead of paying an EAGAIN on the next receive. Not after
                    // the peer's FIN or an error: their edge may have come with the
                    // data just read, and no other follows.
                    entry.readable = false;
                }
                step
            }
            OpKind::Send | OpKind::SendFile | OpKind::SendPackets => {
                let step = match kind {
                    OpKind::Send => sys_io::send(core, op, socket),
                    OpKind::SendFile => sys_io::send_file(core, op, socket),
                    _ => sys_io::send_packets(core, op, socket),
                };
                if matches!(step, Step::Pending) {
                    core.stats.send_waits += 1;
                }
                step
            }
            OpKind::Connect => sys_io::connect(core, socket),
            OpKind::Ready => sys_io::ready(core, op, socket),
            OpKind::RecvFrom | OpKind::SendTo => sys_io::datagram(core, op, socket),
            OpKind::RecvVectored => sys_io::recv_vectored(core, op, socket),
            _ => Step::Done(Err(OpError::InvalidInput), core.sid(socket)),
        }
    }

    /// The audit before a sleep: counts the ops that could run now, each once (see
    /// `PortStats::stranded_ops`). A queue whose direction is still marked ready was
    /// left runnable; one whose socket `poll(2)` finds ready is a suspect, and
    /// stranded if it still is after a whole `epoll_wait` that brought no edge for
    /// its socket (an edge pending before the check would have come with it).
    /// With `udp_only` (the io_uring driver's datagram epoll), only UDP sockets.
    pub(crate) fn audit<T>(&mut self, core: &mut Core<T>, udp_only: bool) -> u64 {
        let mut stranded = 0;
        let before = std::mem::take(&mut self.suspects);
        for (index, entry) in core.sockets.iter() {
            let socket = index as u32;
            if udp_only && !matches!(entry.io, Io::Udp { .. }) {
                continue;
            }
            // A listener backing off is driven when its timer fires. (Datagram ops
            // submitted since the last wait were moved by `prepare`; the rest wait for
            // edges like any other.)
            if entry.backoff_until.is_some() {
                continue;
            }
            for dir in [Dir::Read, Dir::Write] {
                let op = entry.queue_ref(dir).head;
                if op == NIL {
                    continue;
                }
                let seq = core.meta[op as usize].seq;
                let known = before.iter().find(|s| s.socket == socket && s.dir == dir && s.op == op && s.seq == seq);
                let ready_now = entry.ready(dir) || polls_ready(entry, dir);
                if !ready_now {
                    continue;
                }
                let mut suspect =
                    known.copied().unwrap_or(Suspect { socket, dir, op, seq, seen: self.whole_waits, counted: false });
                let lost = entry.ready(dir) || suspect.seen < self.whole_waits;
                if lost && !suspect.counted {
                    tracing::warn!(socket, ?dir, op, "stranded op: it could run, and the port is going to sleep");
                    stranded += 1;
                    suspect.counted = true;
                }
                self.suspects.push(suspect);
            }
        }
        stranded
    }

    fn try_accept<T>(&mut self, core: &mut Core<T>, listener: u32) -> Step {
        let lsid = core.sid(listener);
        let mut turn = 0u32;
        loop {
            turn += 1;
            if turn > ACCEPT_TURN {
                // A flood of refused or dead connections: give the other sockets their
                // turn and come back at the next wait.
                if !self.redrive.contains(&listener) {
                    self.redrive.push(listener);
                }
                return Step::Pending;
            }
            if core.backing_off(listener) {
                return Step::Pending;
            }
            let Some(entry) = core.sockets.get_mut(listener as usize) else {
                return Step::Done(Err(OpError::NotConnected), lsid);
            };
            let Io::Listener { listener: l, nodelay } = &entry.io else {
                return Step::Done(Err(OpError::InvalidInput), lsid);
            };
            let nodelay = *nodelay;
            match sys_io::accept(l) {
                Ok(stream) => {
                    entry.backoff_delay = Duration::ZERO;
                    let poll = &self.poll;
                    let register = |index: usize, fd: RawFd, _: bool| {
                        poll.registry().register(
                            &mut SourceFd(&fd),
                            Token(index),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                    };
                    match core.admit(stream, nodelay, register) {
                        Some(sid) => return Step::Done(Ok(0), sid),
                        // Refused and closed: keep accepting.
                        None => continue,
                    }
                }
                Err(e) => match sys_io::classify_accept(e) {
                    AcceptFailure::Empty => return Step::Pending,
                    AcceptFailure::Interrupted => continue,
                    AcceptFailure::Skip => {
                        tracing::debug!("accept: {e}");
                        continue;
                    }
                    AcceptFailure::BackOff => {
                        core.back_off(listener, &e.into());
                        return Step::Pending;
                    }
                },
            }
        }
    }

    /// Runs queued ops of one direction of a socket until one would block.
    fn drive<T>(&mut self, core: &mut Core<T>, socket: u32, dir: Dir) {
        loop {
            let head = core.head(socket, dir);
            if head == NIL {
                return;
            }
            let kind = core.meta[head as usize].id.and_then(|id| core.pool.get(id).ok()).map(|a| a.kind());
            if matches!(kind, Some(OpKind::RecvFrom | OpKind::SendTo)) && core.meta[head as usize].next != NIL {
                if !self.datagrams(core, socket, dir) {
                    if let Some(entry) = core.sockets.get_mut(socket as usize) {
                        entry.set_ready(dir, false);
                    }
                    return;
                }
                continue;
            }
            match self.try_op(core, head, socket) {
                Step::Pending => {
                    if let Some(entry) = core.sockets.get_mut(socket as usize) {
                        entry.set_ready(dir, false);
                    }
                    return;
                }
                Step::Done(result, target) => {
                    core.pop_front(socket, dir);
                    core.stats.completed_queued += 1;
                    core.complete(head, result, target);
                }
            }
        }
    }

    /// Moves the datagram ops at the front of a socket's queue with one
    /// `recvmmsg`/`sendmmsg` (at most [`BATCH`], all of the head's kind) and completes
    /// those the kernel took, in order. Returns false if the socket would block.
    fn datagrams<T>(&mut self, core: &mut Core<T>, socket: u32, dir: Dir) -> bool {
        let sid = core.sid(socket);
        let mut ops = [NIL; BATCH];
        let mut count = 0;
        let mut cur = core.head(socket, dir);
        let mut receive = None;
        self.batch.clear();
        while cur != NIL && count < BATCH {
            let kind = core.meta[cur as usize].id.and_then(|id| core.pool.get(id).ok()).map(|a| a.kind());
            let this = match kind {
                Some(OpKind::RecvFrom) => true,
                Some(OpKind::SendTo) => false,
                _ => break,
            };
            if *receive.get_or_insert(this) != this {
                break;
            }
            match sys_io::prepare_datagram(core, cur, socket) {
                Ok(_) => {}
                Err(e) if count == 0 => {
                    // The head cannot run at all: it fails alone.
                    core.pop_front(socket, dir);
                    core.stats.completed_queued += 1;
                    core.complete(cur, Err(e), sid);
                    return true;
                }
                Err(_) => break,
            }
            let Some(slots) = core.slots.as_ref() else { break };
            self.batch.push(libc::mmsghdr { msg_hdr: slots.header(cur), msg_len: 0 });
            ops[count] = cur;
            count += 1;
            cur = core.meta[cur as usize].next;
        }
        if count == 0 {
            return true;
        }
        let Some(entry) = core.sockets.get(socket as usize) else { return true };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&entry.io);
        let receive = receive == Some(true);
        let gso = match entry.io {
            Io::Udp { gso, .. } if !receive && count > 1 => gso,
            _ => 0,
        };
        let grouped = gso > 0 && self.coalescer.coalesce(&mut self.batch, gso);
        if !grouped {
            self.coalescer.singles(count);
        }
        // The limit a refused group suggests, applied only once the same datagrams
        // went out one per message (if they fail too, the error was theirs).
        let mut refused = None;
        let n = loop {
            // SAFETY: each mmsghdr is a copy of an op's header, pointing at that op's
            // own buffer range and slot, or a group of them (`Coalescer::coalesce`),
            // pointing at the coalescer's iovecs and control buffer; all outlive the
            // call; the socket is non-blocking, so no timeout is needed.
            let n = unsafe {
                let (msgs, len) = (self.batch.as_mut_ptr(), self.batch.len() as u32);
                if receive {
                    libc::recvmmsg(fd, msgs, len, libc::MSG_TRUNC, std::ptr::null_mut())
                } else {
                    libc::sendmmsg(fd, msgs, len, libc::MSG_NOSIGNAL)
                }
            };
            if n >= 0 {
                break n as usize;
            }
            let e = rustix::io::Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(rustix::io::Errno::IO);
            let head_group = self.coalescer.sizes().first().is_some_and(|&s| s > 1);
            let refusal = match core.slots.as_ref() {
                Some(slots) if head_group => crate::udp::gso_refused(e, slots.send_len(ops[0])),
                _ => None,
            };
            match e {
                rustix::io::Errno::AGAIN => {
                    for &op in &ops[..count] {
                        sys_io::unlease_datagram(core, op);
                    }
                    return false;
                }
                rustix::io::Errno::INTR => continue,
                e if refusal.is_some() => {
                    // Perhaps the kernel refused the segmentation, not the datagrams:
                    // this batch goes out one datagram per message, which tells.
                    refused = refusal.map(|limit| (limit, e));
                    let Some(slots) = core.slots.as_ref() else { return true };
                    self.batch.clear();
                    for &op in &ops[..count] {
                        self.batch.push(libc::mmsghdr { msg_hdr: slots.header(op), msg_len: 0 });
                    }
                    self.coalescer.singles(count);
                }
                e if sys_io::retry_send(core, ops[0], socket, e) => return true,
                e => {
                    // The error belongs to the first datagram: it fails, the rest stay.
                    for &op in &ops[1..count] {
                        sys_io::unlease_datagram(core, op);
                    }
                    let head = ops[0];
                    let result = sys_io::finish_datagram(core, head, socket, Err(e));
                    core.pop_front(socket, dir);
                    core.stats.completed_queued += 1;
                    core.complete(head, result, sid);
                    return true;
                }
            }
        };
        if let Some((limit, e)) = refused
            && n > 0
        {
            // The datagrams went, the group did not: this socket groups no segment
            // this long again.
            core.stats.gso_refusals += 1;
            if let Some(crate::socket::Entry { io: Io::Udp { gso, .. }, .. }) = core.sockets.get_mut(socket as usize) {
                tracing::debug!("UDP GSO refused ({e}): grouping segments up to {limit} bytes");
                *gso = limit.min(*gso);
            }
        }
        let messages = self.batch.len();
        let done: usize = self.coalescer.sizes()[..n].iter().map(|&s| usize::from(s)).sum();
        for &op in &ops[done..count] {
            sys_io::unlease_datagram(core, op);
        }
        let mut k = 0;
        for m in 0..n {
            let (hdr, len) = (self.batch[m].msg_hdr, self.batch[m].msg_len as usize);
            let size = usize::from(self.coalescer.sizes()[m]);
            if size > 1 {
                core.stats.datagrams_segmented += size as u64;
            }
            for &op in &ops[k..k + size] {
                let len = if size == 1 {
                    if let Some(slots) = core.slots.as_ref() {
                        slots.set_header(op, &hdr);
                    }
                    len
                } else {
                    // A group's ops each sent their own datagram, whole (UDP sends
                    // all of a datagram or nothing).
                    core.slots.as_ref().map_or(0, |slots| slots.send_len(op))
                };
                let result = sys_io::finish_datagram(core, op, socket, Ok(len));
                core.pop_front(socket, dir);
                core.stats.completed_queued += 1;
                core.complete(op, result, sid);
            }
            k += size;
        }
        // A short receive batch emptied the socket: the next datagram brings an edge
        // (no EAGAIN to pay). A short send batch: the next call finds out why.
        n > 0 && !(receive && n < messages)
    }

    /// Before each wait decides whether it may sleep: moves the datagram ops
    /// submitted since the last wait (which may complete at once).
    pub(crate) fn prepare<T>(&mut self, core: &mut Core<T>) {
        for _ in 0..self.flush.len() {
            let socket = self.flush.swap_remove(0);
            // A direction known drained waits for its edge, which epoll gives for
            // every datagram that arrives (or room that frees) after the drain.
            if let Some(entry) = core.sockets.get(socket as usize) {
                let (read, write) = (entry.readable, entry.writable);
                if read {
                    self.drive(core, socket, Dir::Read);
                }
                if write {
                    self.drive(core, socket, Dir::Write);
                }
            }
        }
    }

    /// One `epoll_wait` (after [`prepare`](Self::prepare)) and the work its events
    /// make possible.
    pub(crate) fn poll<T>(&mut self, core: &mut Core<T>, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = if core.ready.is_empty() { timeout } else { Some(Duration::ZERO) };
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        match self.poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
            Err(e) => {
                self.events = events;
                return Err(e);
            }
        }
        self.last_full = events.iter().count() >= events.capacity();
        if !self.last_full {
            self.whole_waits += 1;
        }
        for event in events.iter() {
            if event.token() == WAKER {
                core.drain_posts();
                continue;
            }
            let socket = event.token().0 as u32;
            if !self.suspects.is_empty() {
                self.suspects.retain(|s| s.socket != socket);
            }
            let Some(entry) = core.sockets.get_mut(socket as usize) else { continue };
            let read = event.is_readable() || event.is_read_closed() || event.is_error();
            let write = event.is_writable() || event.is_write_closed() || event.is_error();
            entry.readable |= read;
            entry.writable |= write;
            entry.read_closed |= event.is_read_closed() || event.is_error();
            if read {
                self.drive(core, socket, Dir::Read);
            }
            if write {
                self.drive(core, socket, Dir::Write);
            }
        }
        self.events = events;
        // Each listener waiting for its next turn gets one; one that gives it up again
        // queues itself behind the others. (A slot closed and reused meanwhile gets a
        // harmless extra drive.)
        for _ in 0..self.redrive.len() {
            let socket = self.redrive.remove(0);
            if let Some(entry) = core.sockets.get_mut(socket as usize) {
                entry.readable = true;
                self.drive(core, socket, Dir::Read);
            }
        }
        Ok(())
    }
}

/// Whether `poll(2)` finds a socket ready in `dir` now (or hung up, or in error).
fn polls_ready(entry: &crate::socket::Entry, dir: Dir) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let wanted = match dir {
        Dir::Read => PollFlags::IN,
        Dir::Write => PollFlags::OUT,
    };
    let mut fds = [PollFd::new(&entry.io, wanted)];
    let now = Timespec { tv_sec: 0, tv_nsec: 0 };
    match rustix::event::poll(&mut fds, Some(&now)) {
        Ok(n) if n > 0 => !fds[0].revents().is_empty(),
        _ => false,
    }
}
