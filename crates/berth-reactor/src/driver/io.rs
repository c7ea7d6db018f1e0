//! One-shot socket syscalls, each written once: the epoll driver calls them when a
//! socket is ready, the io_uring driver for the ops it runs by readiness (pooled
//! receives, file sends, connects). Each returns a [`Step`]: done (with the result
//! the op completes with), or pending (it would block). Errnos are named.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};

use berth_buf::Lease;
use berth_ops::{OpError, OpKind};
use berth_sendfile::SendFileError;
use rustix::io::Errno;
use rustix::net::SocketFlags;

use crate::core::{Core, Step};
use crate::packets::Flow;
use crate::socket::{Entry, Io, Listener, Stream};

/// One receive into the op's range, or into a fresh segment for a pooled receive.
/// Also says whether the read was short, so the socket's queue is drained.
pub(crate) fn recv<T>(core: &mut Core<T>, op: u32, socket: u32) -> (Step, bool) {
    let sid = core.sid(socket);
    let Some(Entry { io: Io::Stream(stream), .. }) = core.sockets.get(socket as usize) else {
        return (Step::Done(Err(OpError::NotConnected), sid), false);
    };
    let Some(id) = core.meta[op as usize].id else { return (Step::Done(Err(OpError::InvalidInput), sid), false) };
    let pooled = core.meta[op as usize].pooled;
    let mut fresh = None;
    if pooled {
        let lease = match &core.cache {
            Some(cache) => cache.lease(),
            None => core.buffers.lease(),
        };
        let Ok(lease) = lease else { return (Step::Done(Err(OpError::BufferExhausted), sid), false) };
        fresh = Some(lease);
    }
    let Ok(args) = core.pool.get_mut(id) else { return (Step::Done(Err(OpError::InvalidInput), sid), false) };
    let range = if pooled { 0..fresh.as_ref().map_or(0, Lease::capacity) } else { args.range() };
    let Some(lease) = fresh.as_mut().or(args.buffer_mut()) else {
        return (Step::Done(Err(OpError::InvalidInput), sid), false);
    };
    let n = loop {
        match (&*stream).read(&mut lease[range.clone()]) {
            Ok(n) => break n,
            // A pooled segment goes straight back to the cache: idle sockets hold none.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (Step::Pending, false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (Step::Done(Err(OpError::from_io(&e)), sid), false),
        }
    };
    let _ = lease.set_len(range.start + n);
    if let Some(lease) = fresh
        && let Err(e) = args.set_buffer(lease, range.clone())
    {
        drop(e.lease);
        return (Step::Done(Err(OpError::InvalidInput), sid), false);
    }
    (Step::Done(Ok(n), sid), n > 0 && n < range.len())
}

/// Sends what is left of the op's range, resuming from its progress.
pub(crate) fn send<T>(core: &mut Core<T>, op: u32, socket: u32) -> Step {
    let sid = core.sid(socket);
    let Some(Entry { io: Io::Stream(stream), .. }) = core.sockets.get(socket as usize) else {
        return Step::Done(Err(OpError::NotConnected), sid);
    };
    let meta = &mut core.meta[op as usize];
    let Some(Ok(args)) = meta.id.map(|id| core.pool.get(id)) else {
        return Step::Done(Err(OpError::InvalidInput), sid);
    };
    let range = args.range();
    let Some(lease) = args.buffer() else { return Step::Done(Err(OpError::InvalidInput), sid) };
    while meta.progress < range.len() {
        match (&*stream).write(&lease[range.start + meta.progress..range.end]) {
            Ok(0) => return Step::Done(Err(OpError::BrokenPipe), sid),
            Ok(n) => meta.progress += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Step::Done(Err(OpError::from_io(&e)), sid),
        }
    }
    Step::Done(Ok(meta.progress), sid)
}

/// Sends what is left of the op's file range by sendfile(2), the op's buffer as
/// scratch space for the copy fallback.
pub(crate) fn send_file<T>(core: &mut Core<T>, op: u32, socket: u32) -> Step {
    let sid = core.sid(socket);
    let Some(Entry { io: Io::Stream(stream), .. }) = core.sockets.get(socket as usize) else {
        return Step::Done(Err(OpError::NotConnected), sid);
    };
    let Some(file) = core.files[op as usize].as_mut() else { return Step::Done(Err(OpError::InvalidInput), sid) };
    let Some(Ok(args)) = core.meta[op as usize].id.map(|id| core.pool.get_mut(id)) else {
        return Step::Done(Err(OpError::InvalidInput), sid);
    };
    let mut no_scratch = [0u8; 0];
    let scratch: &mut [u8] = match args.buffer_mut() {
        Some(lease) => &mut lease[..],
        None => &mut no_scratch,
    };
    loop {
        match file.send_some(stream, scratch) {
            Ok(progress) if progress.done => {
                let sent = progress.sent_total as usize;
                core.files[op as usize] = None;
                return Step::Done(Ok(sent), sid);
            }
            Ok(_) => continue,
            Err(SendFileError::WouldBlock) => return Step::Pending,
            Err(e) => {
                core.files[op as usize] = None;
                return Step::Done(Err(crate::packets::file_error(&e)), sid);
            }
        }
    }
}

/// Whether a non-blocking connect has finished, and how.
pub(crate) fn connect<T>(core: &mut Core<T>, socket: u32) -> Step {
    let sid = core.sid(socket);
    let Some(Entry { io: Io::Stream(stream), .. }) = core.sockets.get(socket as usize) else {
        return Step::Done(Err(OpError::NotConnected), sid);
    };
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Step::Done(Err(OpError::from_io(&e)), sid),
        Ok(None) => {}
    }
    match stream.connected() {
        Ok(()) => Step::Done(Ok(0), sid),
        Err(e) if e.kind() == io::ErrorKind::NotConnected || Errno::from_io_error(&e) == Some(Errno::INPROGRESS) => {
            Step::Pending
        }
        Err(e) => Step::Done(Err(OpError::from_io(&e)), sid),
    }
}

/// Whether the socket is ready for what the readiness op waits for, by one `poll(2)`
/// that does not wait (edges say only that something changed).
pub(crate) fn ready<T>(core: &mut Core<T>, op: u32, socket: u32) -> Step {
    let sid = core.sid(socket);
    let Some(entry) = core.sockets.get(socket as usize) else { return Step::Done(Err(OpError::NotConnected), sid) };
    match crate::ready::ready_now(entry.io.as_fd(), core.meta[op as usize].events) {
        Ok(0) => Step::Pending,
        Ok(bits) => Step::Done(Ok(bits as usize), sid),
        Err(e) => Step::Done(Err(OpError::from_io(&e.into())), sid),
    }
}

/// What an accept(2) error means for the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptFailure {
    /// Nothing in the backlog now.
    Empty,
    /// EINTR: try again at once.
    Interrupted,
    /// A connection that died in the backlog (ECONNABORTED, EPROTO, and the network
    /// errors accept(2) passes on from the new socket): not the listener's fault;
    /// take the next one.
    Skip,
    /// EMFILE, ENFILE, ENOBUFS, ENOMEM — or anything else (a security module's
    /// EPERM, say): the connection may stay in the backlog, so back off.
    BackOff,
}

pub(crate) fn classify_accept(e: Errno) -> AcceptFailure {
    match e {
        Errno::AGAIN => AcceptFailure::Empty,
        Errno::INTR => AcceptFailure::Interrupted,
        Errno::CONNABORTED
        | Errno::PROTO
        | Errno::NETDOWN
        | Errno::NOPROTOOPT
        | Errno::HOSTDOWN
        | Errno::NONET
        | Errno::HOSTUNREACH
        | Errno::OPNOTSUPP
        | Errno::NETUNREACH => AcceptFailure::Skip,
        _ => AcceptFailure::BackOff,
    }
}

/// accept4(2) with the new socket non-blocking and close-on-exec.
pub(crate) fn accept(listener: &Listener) -> Result<Stream, Errno> {
    let fd = rustix::net::accept_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    Ok(Stream::accepted(fd, matches!(listener, Listener::Unix { .. })))
}

/// Points datagram op `op`'s message header at its buffer range (and, for a send,
/// its remote endpoint); returns the header and the range's length, or the result
/// the op fails with at once.
pub(crate) fn prepare_datagram<T>(
    core: &mut Core<T>,
    op: u32,
    socket: u32,
) -> Result<(*mut libc::msghdr, usize), OpError> {
    let Some(Entry { io: Io::Udp { packet_info, .. }, .. }) = core.sockets.get(socket as usize) else {
        return Err(OpError::NotConnected);
    };
    let control = *packet_info;
    let pooled = core.meta[op as usize].pooled;
    let (Some(slots), Some(id)) = (core.slots.as_ref(), core.meta[op as usize].id) else {
        return Err(OpError::InvalidInput);
    };
    let Ok(args) = core.pool.get_mut(id) else { return Err(OpError::InvalidInput) };
    if pooled && args.buffer().is_none() {
        // A pooled receive gets its segment now, just before the syscall, and gives
        // it back if nothing came (`unlease_datagram`).
        let lease = match &core.cache {
            Some(cache) => cache.lease(),
            None => core.buffers.lease(),
        };
        let Ok(lease) = lease else { return Err(OpError::BufferExhausted) };
        let capacity = lease.capacity();
        if let Err(e) = args.set_buffer(lease, crate::udp::POOLED_DATAGRAM_HEADROOM.min(capacity)..capacity) {
            drop(e.lease);
            return Err(OpError::InvalidInput);
        }
    }
    let range = args.range();
    let kind = args.kind();
    let remote = args.remote_endpoint();
    let Some(lease) = args.buffer_mut() else { return Err(OpError::InvalidInput) };
    let Some(buf) = lease.get_mut(range) else { return Err(OpError::InvalidInput) };
    let len = buf.len();
    let hdr = match kind {
        OpKind::RecvFrom => slots.recv(op, buf, control),
        _ => slots.send(op, buf, remote),
    };
    Ok((hdr, len))
}

/// What a datagram op's syscall returned (`Ok`: the datagram's real length for a
/// receive, bytes sent for a send), as the op's result, with the sender, packet
/// info and length recorded for a receive.
pub(crate) fn finish_datagram<T>(
    core: &mut Core<T>,
    op: u32,
    socket: u32,
    res: Result<usize, Errno>,
) -> Result<usize, OpError> {
    let (Some(slots), Some(id)) = (core.slots.as_ref(), core.meta[op as usize].id) else {
        return Err(OpError::InvalidInput);
    };
    let pooled = core.meta[op as usize].pooled;
    let Ok(args) = core.pool.get_mut(id) else { return Err(OpError::InvalidInput) };
    let receive = args.kind() == OpKind::RecvFrom;
    match res {
        Ok(n) if receive => {
            let range = args.range();
            let kept = range.start..range.start + n.min(range.len());
            if let Some(lease) = args.buffer_mut() {
                let _ = lease.set_len(kept.end);
            }
            if pooled {
                // A pooled receive's range is the datagram (what fit of it).
                let _ = args.set_range(kept);
            }
            slots.finish_recv(op, n, range.len(), args)
        }
        Ok(n) => Ok(n),
        Err(e) => {
            if pooled {
                drop(args.take_buffer());
            }
            let error = OpError::from_io(&e.into());
            if receive
                && crate::udp::is_network_error(error)
                && let Some(entry) = core.sockets.get(socket as usize)
            {
                slots.take_errors(op, entry.io.as_fd(), args);
            }
            Err(error)
        }
    }
}

/// A pooled datagram receive that got nothing gives its segment back: an idle
/// receive holds none.
pub(crate) fn unlease_datagram<T>(core: &mut Core<T>, op: u32) {
    if core.meta[op as usize].pooled
        && let Some(Ok(args)) = core.meta[op as usize].id.map(|id| core.pool.get_mut(id))
    {
        drop(args.take_buffer());
    }
}

/// One `recvmsg`/`sendmsg` for a datagram op.
pub(crate) fn datagram<T>(core: &mut Core<T>, op: u32, socket: u32) -> Step {
    let sid = core.sid(socket);
    loop {
        let (hdr, _) = match prepare_datagram(core, op, socket) {
            Ok(prepared) => prepared,
            Err(e) => return Step::Done(Err(e), sid),
        };
        let Some(entry) = core.sockets.get(socket as usize) else {
            return Step::Done(Err(OpError::NotConnected), sid);
        };
        let fd = entry.io.as_fd().as_raw_fd();
        let receive = matches!(core.meta[op as usize].id.map(|id| core.pool.get(id)), Some(Ok(a)) if a.kind() == OpKind::RecvFrom);
        // SAFETY: the header was just pointed at the op's own buffer range and the
        // op's slot, which outlive the call; the socket is non-blocking.
        let n = unsafe {
            if receive { libc::recvmsg(fd, hdr, libc::MSG_TRUNC) } else { libc::sendmsg(fd, hdr, libc::MSG_NOSIGNAL) }
        };
        let res = if n >= 0 {
            Ok(n as usize)
        } else {
            match Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO) {
                Errno::AGAIN => {
                    unlease_datagram(core, op);
                    return Step::Pending;
                }
                Errno::INTR => continue,
                e => Err(e),
            }
        };
        if let Err(e) = res
            && retry_send(core, op, socket, e)
        {
            continue;
        }
        return Step::Done(finish_datagram(core, op, socket, res), sid);
    }
}

/// A datagram send to an explicit destination failed on an ICMP error left by an
/// earlier datagram: empties the error queue and says to try once more (the op's
/// `progress` marks the retry). A connected socket's error is its own: reported.
pub(crate) fn retry_send<T>(core: &mut Core<T>, op: u32, socket: u32, e: Errno) -> bool {
    let meta = &mut core.meta[op as usize];
    let Some(Ok(args)) = meta.id.map(|id| core.pool.get(id)) else { return false };
    let retry = args.kind() == OpKind::SendTo
        && args.remote_endpoint().is_some()
        && meta.progress == 0
        && crate::udp::is_earlier_icmp(OpError::from_io(&e.into()));
    if retry {
        meta.progress = 1;
        if let Some(entry) = core.sockets.get(socket as usize) {
            crate::udp::drain_errors(entry.io.as_fd());
        }
    }
    retry
}

/// One step of a `send_packets` op: as much of its list as the socket takes.
pub(crate) fn send_packets<T>(core: &mut Core<T>, op: u32, socket: u32) -> Step {
    let sid = core.sid(socket);
    let Some(entry) = core.sockets.get(socket as usize) else { return Step::Done(Err(OpError::NotConnected), sid) };
    let Some(Ok(args)) = core.meta[op as usize].id.map(|id| core.pool.get_mut(id)) else {
        return Step::Done(Err(OpError::InvalidInput), sid);
    };
    let mut no_scratch = [0u8; 0];
    let scratch: &mut [u8] = match args.buffer_mut() {
        Some(lease) => &mut lease[..],
        None => &mut no_scratch,
    };
    match crate::packets::send(&mut core.packets[op as usize], entry.io.as_fd(), scratch) {
        Flow::Done(result) => Step::Done(result, sid),
        Flow::WouldBlock => Step::Pending,
    }
}

/// A `recv_vectored` op's one receive.
pub(crate) fn recv_vectored<T>(core: &mut Core<T>, op: u32, socket: u32) -> Step {
    let sid = core.sid(socket);
    let Some(entry) = core.sockets.get(socket as usize) else { return Step::Done(Err(OpError::NotConnected), sid) };
    match crate::packets::recv(&mut core.packets[op as usize], entry.io.as_fd()) {
        Flow::Done(result) => Step::Done(result, sid),
        Flow::WouldBlock => Step::Pending,
    }
}
