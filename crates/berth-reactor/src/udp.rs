//! UDP on the port: [`UdpOptions`], the per-op message headers datagram ops use
//! (`MsgSlot`), and the syscalls both drivers share: one `recvmsg`/`sendmsg`, and
//! on epoll `recvmmsg`/`sendmmsg` over several queued ops at once.
//!
//! A datagram op's `msghdr`, its `iovec`, the address and the control buffer live in
//! a slot per op, allocated once when the port's first UDP socket is bound and never
//! moved: the io_uring driver hands the kernel a pointer to it.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd};

use berth_ops::{OpArgs, OpError, PacketInfo};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How [`bind_udp`](crate::CompletionPort::bind_udp) sets up a socket.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct UdpOptions {
    /// `SO_REUSEPORT`: several ports (one per thread) share the address, the kernel
    /// spreading datagrams by flow (default false).
    pub reuse_port: bool,
    /// Report each datagram's destination address and interface
    /// ([`OpArgs::packet_info`]: `IP_PKTINFO` / `IPV6_RECVPKTINFO`), for a server
    /// bound to a wildcard address (default false).
    pub packet_info: bool,
    /// `IPV6_V6ONLY` for an IPv6 socket: `Some(false)` also takes IPv4 datagrams as
    /// mapped addresses (default: the system's setting).
    pub only_v6: Option<bool>,
    /// `SO_RCVBUF` in bytes (default: the system's).
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes (default: the system's).
    pub send_buffer: Option<usize>,
    /// Report ICMP errors (a port nobody listens on, a host unreachable) for
    /// datagrams sent to explicit destinations (`IP_RECVERR`): the next receive
    /// completes with the error and the address it was about (default false: the
    /// kernel drops them for an unconnected socket, as servers usually want; a
    /// connected socket's errors are always reported).
    pub icmp_errors: bool,
    /// Send consecutive [`send_to`](crate::CompletionPort::send_to) ops of a batch
    /// that go to one destination with one length (the last may be shorter) as one
    /// message the kernel cuts into those datagrams (UDP GSO, `UDP_SEGMENT`): one
    /// pass through the stack for the group instead of one per datagram. The peer
    /// receives the same datagrams; each op still completes with its own length.
    /// Where the kernel refuses a group (no checksum offload on the route, a segment
    /// over the path's MTU: the group fails where its datagrams one per message do
    /// not), they go out one by one and the socket no longer groups datagrams that
    /// long, to any destination (default true; epoll and io_uring's readiness
    /// batches, not [`ring_datagrams`](crate::PortBuilder::ring_datagrams)).
    pub gso: bool,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            reuse_port: false,
            packet_info: false,
            only_v6: None,
            recv_buffer: None,
            send_buffer: None,
            icmp_errors: false,
            gso: true,
        }
    }
}

impl UdpOptions {
    /// Sets [`gso`](Self::gso).
    pub fn gso(mut self, yes: bool) -> Self {
        self.gso = yes;
        self
    }

    /// Sets [`packet_info`](Self::packet_info).
    pub fn packet_info(mut self, yes: bool) -> Self {
        self.packet_info = yes;
        self
    }

    /// Sets [`reuse_port`](Self::reuse_port).
    pub fn reuse_port(mut self, yes: bool) -> Self {
        self.reuse_port = yes;
        self
    }

    /// Sets [`recv_buffer`](Self::recv_buffer).
    pub fn recv_buffer(mut self, bytes: usize) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }

    /// Sets [`send_buffer`](Self::send_buffer).
    pub fn send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = Some(bytes);
        self
    }

    /// Sets [`icmp_errors`](Self::icmp_errors).
    pub fn icmp_errors(mut self, yes: bool) -> Self {
        self.icmp_errors = yes;
        self
    }

    /// Sets [`only_v6`](Self::only_v6).
    pub fn only_v6(mut self, yes: bool) -> Self {
        self.only_v6 = Some(yes);
        self
    }
}

/// A bound, non-blocking UDP socket with the options asked for (with
/// `icmp_errors`, ICMP errors are queued by `IP_RECVERR` so the next receive reports
/// them instead of the kernel dropping them).
pub(crate) fn bind(addr: SocketAddr, options: &UdpOptions) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if let (SocketAddr::V6(_), Some(only)) = (addr, options.only_v6) {
        socket.set_only_v6(only)?;
    }
    if let Some(n) = options.recv_buffer {
        socket.set_recv_buffer_size(n)?;
    }
    if let Some(n) = options.send_buffer {
        socket.set_send_buffer_size(n)?;
    }
    let v6 = addr.is_ipv6();
    if options.icmp_errors {
        set_flag(&socket, v6, (libc::IPPROTO_IP, libc::IP_RECVERR), (libc::IPPROTO_IPV6, libc::IPV6_RECVERR))?;
        if v6 && options.only_v6 != Some(true) {
            // Mapped IPv4 peers of a dual-stack socket report through the IPv4 option.
            let _ = set_flag(&socket, false, (libc::IPPROTO_IP, libc::IP_RECVERR), (0, 0));
        }
    }
    if options.packet_info {
        set_flag(&socket, v6, (libc::IPPROTO_IP, libc::IP_PKTINFO), (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO))?;
        if v6 && options.only_v6 != Some(true) {
            // Mapped IPv4 datagrams on a dual-stack socket carry IPv4 packet info.
            let _ = set_flag(&socket, false, (libc::IPPROTO_IP, libc::IP_PKTINFO), (0, 0));
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The largest segment a new socket groups into a GSO send: half the payload one
/// send may carry, so a group has at least two. 0 means the socket does not group.
pub(crate) fn gso_limit(socket: &UdpSocket, options: &UdpOptions) -> u16 {
    if !options.gso {
        return 0;
    }
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes for the call, and `len` is
    // `value`'s size; the descriptor is open (borrowed from `socket`).
    let rc = unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, (&raw mut value).cast(), &raw mut len)
    };
    // A kernel without UDP_SEGMENT (before 4.18) would send a group as one datagram:
    // it must refuse the option to be asked for groups.
    if rc == 0 { (GSO_MAX_BYTES / 2) as u16 } else { 0 }
}

/// The most payload one GSO send carries (UDP over IPv4 allows 65507 bytes).
const GSO_MAX_BYTES: usize = 65_000;
/// Datagrams one GSO send carries at most (the kernel's `UDP_MAX_SEGMENTS`, which
/// newer kernels raised to 128).
const GSO_MAX_SEGMENTS: usize = 64;

/// Groups a batch's sends for UDP GSO (see [`UdpOptions::gso`]): consecutive
/// headers to one destination whose datagrams have one length, up to `limit`
/// bytes (the last of a group may be shorter), become one message whose `iovec`s
/// are the ops' buffers, with a `UDP_SEGMENT` control message giving the length.
/// Nothing is copied and nothing allocated after `new`.
pub(crate) struct Coalescer {
    /// The ops' `iovec`s, at their index in the batch, for the groups to point at.
    iovs: Box<[libc::iovec]>,
    /// A `UDP_SEGMENT` control message per message (u64s for `cmsghdr`'s alignment).
    control: Box<[[u64; 3]]>,
    /// The ops in each message of the last batch, in order.
    sizes: Vec<u8>,
}

/// If a GSO send's error may be the kernel refusing the segmentation rather than
/// the datagrams, the largest segment the socket should still group (0: none).
/// Only a guess: the driver applies it once the same datagrams, one per message,
/// went out (a destination port 0 fails both ways, and is the datagram's error).
pub(crate) fn gso_refused(e: rustix::io::Errno, segment: usize) -> Option<u16> {
    use rustix::io::Errno;
    match e {
        // No checksum offload on the route, or no GSO at all.
        Errno::IO | Errno::OPNOTSUPP | Errno::NOPROTOOPT => Some(0),
        // A segment over the path's MTU (or SO_NO_CHECK, which then stops it soon).
        Errno::INVAL | Errno::MSGSIZE => Some(segment.saturating_sub(1).min(usize::from(u16::MAX)) as u16),
        _ => None,
    }
}

impl Coalescer {
    pub(crate) fn new(capacity: usize) -> Coalescer {
        let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        Coalescer {
            iovs: vec![empty; capacity].into_boxed_slice(),
            control: vec![[0u64; 3]; capacity].into_boxed_slice(),
            sizes: Vec::with_capacity(capacity),
        }
    }

    /// The ops in each message of the last batch.
    pub(crate) fn sizes(&self) -> &[u8] {
        &self.sizes
    }

    /// One op per message: a batch of `count` left as it is.
    pub(crate) fn singles(&mut self, count: usize) {
        self.sizes.clear();
        self.sizes.resize(count, 1);
    }

    /// Rewrites `batch` — one send header per op, in queue order, as made by
    /// [`Slots::send`], at most `new`'s capacity — into groups of segments up to
    /// `limit` bytes; [`sizes`](Self::sizes) then tells how many ops each message
    /// holds. Returns whether any holds more than one.
    pub(crate) fn coalesce(&mut self, batch: &mut Vec<libc::mmsghdr>, limit: u16) -> bool {
        self.sizes.clear();
        let n = batch.len().min(self.iovs.len());
        let (mut out, mut i) = (0, 0);
        while i < n {
            let first = batch[i].msg_hdr;
            let segment = single_iov(&first).map_or(0, |iov| iov.iov_len);
            let mut j = i + 1;
            if segment > 0 && segment <= usize::from(limit) {
                let mut total = segment;
                while j < n && j - i < GSO_MAX_SEGMENTS {
                    let next = &batch[j].msg_hdr;
                    let Some(len) = single_iov(next).map(|iov| iov.iov_len) else { break };
                    if len == 0 || len > segment || total + len > GSO_MAX_BYTES || !same_destination(&first, next) {
                        break;
                    }
                    total += len;
                    j += 1;
                    if len < segment {
                        // Only a group's last datagram may be shorter.
                        break;
                    }
                }
            }
            let mut hdr = first;
            if j - i > 1 {
                for (slot, m) in self.iovs[i..j].iter_mut().zip(&batch[i..j]) {
                    // Each has one (checked above).
                    *slot = single_iov(&m.msg_hdr).unwrap_or(*slot);
                }
                let control = &mut self.control[out];
                let cmsg = control.as_mut_ptr().cast::<libc::cmsghdr>();
                // SAFETY: `control` is 24 bytes, 8-aligned: room for a cmsghdr (16)
                // and its u16 of data at CMSG_DATA (offset 16), which is CMSG_SPACE(2).
                unsafe {
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize;
                    libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(segment as u16);
                }
                hdr.msg_iov = (&raw mut self.iovs[i]).cast();
                hdr.msg_iovlen = j - i;
                hdr.msg_control = control.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE only computes a size.
                hdr.msg_controllen = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
                hdr.msg_flags = 0;
            }
            batch[out] = libc::mmsghdr { msg_hdr: hdr, msg_len: 0 };
            self.sizes.push((j - i) as u8);
            out += 1;
            i = j;
        }
        batch.truncate(out);
        out < n
    }
}

/// A send header's one `iovec`, if it has exactly one and no control data (the
/// only kind [`Slots::send`] makes, and the only kind grouped).
fn single_iov(hdr: &libc::msghdr) -> Option<libc::iovec> {
    if hdr.msg_iovlen != 1 || hdr.msg_iov.is_null() || !hdr.msg_control.is_null() {
        return None;
    }
    // SAFETY: a header from `Slots::send` points at its slot's iovec, which lives as
    // long as the port and is not written while the batch is built.
    Some(unsafe { *hdr.msg_iov })
}

/// Whether two send headers name the same destination (or both none: a connected
/// socket's peer).
fn same_destination(a: &libc::msghdr, b: &libc::msghdr) -> bool {
    if a.msg_namelen != b.msg_namelen || a.msg_name.is_null() != b.msg_name.is_null() {
        return false;
    }
    if a.msg_name.is_null() {
        return true;
    }
    let len = (a.msg_namelen as usize).min(mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: a send header's name points at its slot's sockaddr_storage (never
    // moved, not written while the batch is built), whose first `msg_namelen`
    // bytes `Slots::send` wrote; `len` is within it.
    unsafe {
        std::slice::from_raw_parts(a.msg_name.cast::<u8>(), len)
            == std::slice::from_raw_parts(b.msg_name.cast::<u8>(), len)
    }
}

/// Sets an integer socket option to 1: the IPv4 one or, for an IPv6 socket, the
/// IPv6 one.
fn set_flag(socket: &Socket, v6: bool, v4opt: (i32, i32), v6opt: (i32, i32)) -> io::Result<()> {
    let (level, name) = if v6 { v6opt } else { v4opt };
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int for the duration of the call, and its size is
    // passed; the descriptor is open (borrowed from `socket`).
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const one).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// One datagram op's message header and what it points to.
#[repr(C)]
pub(crate) struct MsgSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: libc::sockaddr_storage,
    /// Room for one `IPV6_PKTINFO` (or `IP_PKTINFO`) control message; u64s for the
    /// alignment `cmsghdr` needs.
    control: [u64; 8],
}

/// The message slots of a port, one per op. Each in an `UnsafeCell` and reached only
/// through `&self`: the kernel may be writing one op's slot (io_uring writes back
/// a header's lengths and flags) while another is prepared, so no `&mut` ever spans
/// them all.
pub(crate) struct Slots(Box<[std::cell::UnsafeCell<MsgSlot>]>);

impl Slots {
    pub(crate) fn new(ops: usize) -> Slots {
        // SAFETY: every field of MsgSlot is plain data (integers, pointers, byte
        // arrays) for which all zeroes is a valid value.
        let zeroed = || std::cell::UnsafeCell::new(unsafe { MaybeUninit::<MsgSlot>::zeroed().assume_init() });
        Slots((0..ops).map(|_| zeroed()).collect())
    }

    /// Op `op`'s slot, to prepare or read.
    ///
    /// # Safety
    /// The kernel must not hold op `op` (its submission completed or never made),
    /// and no other reference to this slot may be live.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slot(&self, op: u32) -> &mut MsgSlot {
        // SAFETY: the caller guarantees nobody else reads or writes this one slot now.
        unsafe { &mut *self.0[op as usize].get() }
    }

    /// Points op `op`'s header at `buf` (to receive into) and at its own address and
    /// control space; returns the header, which stays valid (never moved) as long as
    /// the port.
    pub(crate) fn recv(&self, op: u32, buf: &mut [u8], control: bool) -> *mut libc::msghdr {
        // SAFETY: ops are prepared only while the kernel does not hold them (a queue
        // head not `kernel`, or the epoll driver's synchronous syscalls).
        let slot = unsafe { self.slot(op) };
        slot.iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        slot.hdr.msg_name = (&raw mut slot.name).cast();
        slot.hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        slot.hdr.msg_iov = &raw mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        if control {
            slot.hdr.msg_control = (&raw mut slot.control).cast();
            slot.hdr.msg_controllen = mem::size_of_val(&slot.control);
        } else {
            slot.hdr.msg_control = std::ptr::null_mut();
            slot.hdr.msg_controllen = 0;
        }
        slot.hdr.msg_flags = 0;
        &raw mut slot.hdr
    }

    /// Points op `op`'s header at `buf` (to send) and at `to` (or no address: a
    /// connected socket's peer).
    pub(crate) fn send(&self, op: u32, buf: &[u8], to: Option<SocketAddr>) -> *mut libc::msghdr {
        // SAFETY: as in `recv`.
        let slot = unsafe { self.slot(op) };
        slot.iov = libc::iovec { iov_base: buf.as_ptr().cast_mut().cast(), iov_len: buf.len() };
        match to {
            Some(addr) => {
                let addr = SockAddr::from(addr);
                let len = addr.len() as usize;
                // SAFETY: `addr` holds `len` initialised bytes of a sockaddr, and the
                // slot's storage is a sockaddr_storage, which any sockaddr fits.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        addr.as_ptr().cast::<u8>(),
                        (&raw mut slot.name).cast::<u8>(),
                        len.min(mem::size_of::<libc::sockaddr_storage>()),
                    );
                }
                slot.hdr.msg_name = (&raw mut slot.name).cast();
                slot.hdr.msg_namelen = addr.len();
            }
            None => {
                slot.hdr.msg_name = std::ptr::null_mut();
                slot.hdr.msg_namelen = 0;
            }
        }
        slot.hdr.msg_iov = &raw mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        slot.hdr.msg_control = std::ptr::null_mut();
        slot.hdr.msg_controllen = 0;
        slot.hdr.msg_flags = 0;
        &raw mut slot.hdr
    }

    /// The length of the datagram op `op` was last prepared to send.
    pub(crate) fn send_len(&self, op: u32) -> usize {
        // SAFETY: as in `header`, and read in place the same way.
        unsafe { (*self.0[op as usize].get()).iov.iov_len }
    }

    /// The header of op `op`, as last prepared.
    pub(crate) fn header(&self, op: u32) -> libc::msghdr {
        // SAFETY: read after preparing, before (epoll) or after (io_uring) the
        // kernel's use of it; read in place through the cell's pointer, with no
        // `&mut` to the slot, so the pointers the header holds into its own slot
        // (made by `send`/`recv`) stay valid for the reads `Coalescer` makes.
        unsafe { (*self.0[op as usize].get()).hdr }
    }

    /// Stores what the kernel wrote back into a header copy (a batch's).
    pub(crate) fn set_header(&self, op: u32, hdr: &libc::msghdr) {
        // SAFETY: the epoll driver's batch is synchronous: the kernel is done with it.
        let slot = &mut unsafe { self.slot(op) }.hdr;
        slot.msg_namelen = hdr.msg_namelen;
        slot.msg_controllen = hdr.msg_controllen;
        slot.msg_flags = hdr.msg_flags;
    }

    /// A receive of `len` bytes (the datagram's real length: `MSG_TRUNC` was asked)
    /// into a buffer of `capacity` finished: records the sender, the packet info and
    /// the length in `args`, and says whether it fit.
    pub(crate) fn finish_recv<T>(
        &self,
        op: u32,
        len: usize,
        capacity: usize,
        args: &mut OpArgs<T>,
    ) -> Result<usize, OpError> {
        // SAFETY: the receive completed: the kernel no longer holds the op.
        let slot = unsafe { self.slot(op) };
        args.set_remote_endpoint(sockaddr(&slot.name, slot.hdr.msg_namelen));
        args.set_packet_info(packet_info(&slot.hdr));
        args.set_message_len(len);
        if len > capacity || slot.hdr.msg_flags & libc::MSG_TRUNC != 0 {
            Err(OpError::MessageTruncated)
        } else {
            Ok(len)
        }
    }

    /// After a receive failed with an error the network reported (an ICMP port
    /// unreachable, say): takes the queued errors off the socket (`MSG_ERRQUEUE`,
    /// so they do not keep it flagged) and records the address the last one was
    /// about as the op's remote endpoint.
    pub(crate) fn take_errors<T>(&self, op: u32, fd: BorrowedFd<'_>, args: &mut OpArgs<T>) {
        let mut scratch = [0u8; 64];
        for _ in 0..64 {
            let hdr = self.recv(op, &mut scratch, true);
            // SAFETY: the header points at `scratch`, the slot's address and control
            // space, all valid for the call; MSG_DONTWAIT keeps it from blocking.
            let n = unsafe { libc::recvmsg(fd.as_raw_fd(), hdr, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
            if n < 0 {
                break;
            }
            // SAFETY: the syscall above is done with it; the kernel does not hold the op.
            let slot = unsafe { self.slot(op) };
            if let Some(addr) = sockaddr(&slot.name, slot.hdr.msg_namelen) {
                args.set_remote_endpoint(Some(addr));
            }
        }
    }
}

/// Bytes at the start of a segment a pooled datagram receive
/// ([`recv_from_pooled`](crate::CompletionPort::recv_from_pooled)) keeps for the
/// kernel's header, the sender's address and a packet-info control message; the
/// datagram goes after them, so it can hold up to the segment size less this.
/// (io_uring's multishot receive writes all four into the segment; the epoll driver
/// leaves the same room, so a datagram fits or is truncated alike on both.)
pub const POOLED_DATAGRAM_HEADROOM: usize = RECVMSG_OUT + NAME_ROOM + CONTROL_ROOM;
/// `struct io_uring_recvmsg_out`: name, control and payload lengths and the flags.
const RECVMSG_OUT: usize = 16;
/// A `sockaddr_in6`, the largest address a UDP socket receives from.
const NAME_ROOM: usize = mem::size_of::<libc::sockaddr_in6>();
/// `CMSG_SPACE(sizeof(struct in6_pktinfo))`, which also holds an `in_pktinfo`.
const CONTROL_ROOM: usize = 40;

/// The header template of a multishot datagram receive: only the room for the
/// address and the control message matters (the kernel lays each datagram out as
/// header, address, control, payload in the segment it picks).
pub(crate) fn multishot_template() -> libc::msghdr {
    // SAFETY: all zeroes is a valid msghdr (null pointers, zero lengths).
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_namelen = NAME_ROOM as libc::socklen_t;
    hdr.msg_controllen = CONTROL_ROOM;
    hdr
}

/// A datagram as a multishot receive laid it out in a segment.
#[derive(Debug, Clone)]
pub(crate) struct Landed {
    /// Where its bytes are in the segment (what fit of them).
    pub(crate) payload: std::ops::Range<usize>,
    /// Its real length (`MSG_TRUNC`): more than the payload range if cut.
    pub(crate) len: usize,
    pub(crate) truncated: bool,
    pub(crate) from: Option<SocketAddr>,
    pub(crate) info: Option<PacketInfo>,
}

/// Reads the layout a multishot `RECVMSG` wrote into the first `filled` bytes of a
/// segment; `None` if they are too few to hold it (never from a sane kernel).
pub(crate) fn landed(segment: &[u8]) -> Option<Landed> {
    let template = multishot_template();
    let out = io_uring::types::RecvMsgOut::parse(segment, &template).ok()?;
    let start = out.payload_data().as_ptr() as usize - segment.as_ptr() as usize;
    let payload = start..start + out.payload_data().len();
    let len = out.incoming_payload_len() as usize;
    // The address and control bytes sit at unaligned offsets: copy them into
    // aligned storage before reading them as structures.
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let name_bytes = out.name_data();
    let n = name_bytes.len().min(mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: `n` bytes fit in both the source slice and the storage.
    unsafe { std::ptr::copy_nonoverlapping(name_bytes.as_ptr(), (&raw mut name).cast::<u8>(), n) };
    let mut control = [0u64; 8];
    let control_bytes = out.control_data();
    let c = control_bytes.len().min(mem::size_of_val(&control));
    // SAFETY: `c` bytes fit in both the source slice and the u64 array.
    unsafe { std::ptr::copy_nonoverlapping(control_bytes.as_ptr(), control.as_mut_ptr().cast::<u8>(), c) };
    // SAFETY: as in `multishot_template`.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    if c > 0 {
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = c;
    }
    Some(Landed {
        payload,
        len,
        truncated: out.is_payload_truncated() || len > out.payload_data().len(),
        from: sockaddr(&name, n as libc::socklen_t),
        info: packet_info(&hdr),
    })
}

/// Completes a datagram receive from a [`Landed`] layout in `lease`: the op's buffer
/// becomes the segment with the datagram as its range (a pooled receive), or, with
/// `copy_into_own`, the datagram is copied into the op's own range.
pub(crate) fn hand_over_landed<T>(
    args: &mut OpArgs<T>,
    mut lease: berth_buf::Lease,
    landed: &Landed,
) -> Result<usize, OpError> {
    args.set_remote_endpoint(landed.from);
    args.set_packet_info(landed.info);
    args.set_message_len(landed.len);
    let _ = lease.set_len(landed.payload.end);
    if let Err(e) = args.set_buffer(lease, landed.payload.clone()) {
        drop(e.lease);
        return Err(OpError::InvalidInput);
    }
    if landed.truncated { Err(OpError::MessageTruncated) } else { Ok(landed.len) }
}

/// Copies a landed datagram out of `segment` into the op's own buffer range.
pub(crate) fn copy_landed<T>(args: &mut OpArgs<T>, segment: &[u8], landed: &Landed) -> Result<usize, OpError> {
    let range = args.range();
    let Some(lease) = args.buffer_mut() else { return Err(OpError::InvalidInput) };
    let Some(dst) = lease.get_mut(range.clone()) else { return Err(OpError::InvalidInput) };
    let n = dst.len().min(landed.payload.len());
    dst[..n].copy_from_slice(&segment[landed.payload.start..landed.payload.start + n]);
    let _ = lease.set_len(range.start + n);
    args.set_remote_endpoint(landed.from);
    args.set_packet_info(landed.info);
    args.set_message_len(landed.len);
    if landed.truncated || landed.len > range.len() { Err(OpError::MessageTruncated) } else { Ok(landed.len) }
}

/// Empties a socket's error queue (`MSG_ERRQUEUE`): after a send failed on an ICMP
/// error meant for an earlier datagram, so the queue neither keeps the socket
/// flagged nor fills its receive buffer.
pub(crate) fn drain_errors(fd: BorrowedFd<'_>) {
    let mut scratch = [0u8; 64];
    let mut control = [0u64; 8];
    for _ in 0..64 {
        let mut iov = libc::iovec { iov_base: scratch.as_mut_ptr().cast(), iov_len: scratch.len() };
        // SAFETY: all zeroes is a valid msghdr (null pointers, zero lengths).
        let mut hdr: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        hdr.msg_iov = &raw mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = mem::size_of_val(&control);
        // SAFETY: the header points at `scratch` and `control`, live for the call;
        // MSG_DONTWAIT keeps it from blocking.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut hdr, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            break;
        }
    }
}

/// Whether a datagram send to an explicit destination failed on an ICMP error the
/// network reported for an *earlier* datagram (perhaps to another peer): the send
/// itself was not made, and is retried once after the error queue is emptied.
pub(crate) fn is_earlier_icmp(e: OpError) -> bool {
    matches!(e, OpError::ConnectionRefused | OpError::Unreachable)
        || matches!(e, OpError::Os(n) if n == libc::EHOSTUNREACH || n == libc::ENETUNREACH || n == libc::EPROTO)
}

/// Whether an errno from a datagram receive is one the network reported for an
/// earlier send (queued by `IP_RECVERR`), not a fault of the socket.
pub(crate) fn is_network_error(e: OpError) -> bool {
    matches!(e, OpError::ConnectionRefused | OpError::Unreachable)
        || matches!(e, OpError::Os(n) if n == libc::EHOSTUNREACH || n == libc::ENETUNREACH || n == libc::EMSGSIZE || n == libc::EPROTO)
}

/// A sockaddr the kernel wrote, as a std address (None for other families).
fn sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and the
            // storage is aligned for (and larger than) one.
            let a = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let a = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

/// The `IP_PKTINFO` / `IPV6_PKTINFO` control message of a received header, if any.
fn packet_info(hdr: &libc::msghdr) -> Option<PacketInfo> {
    if hdr.msg_control.is_null() || hdr.msg_controllen == 0 {
        return None;
    }
    // SAFETY: the header's control pointer and length are the slot's control buffer
    // as the kernel filled it; CMSG_FIRSTHDR/NXTHDR stay within msg_controllen, and
    // each payload read is checked against its cmsg_len and read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let data = libc::CMSG_DATA(cmsg);
            let room = c.cmsg_len as usize - (data as usize - cmsg as usize);
            if c.cmsg_level == libc::IPPROTO_IP
                && c.cmsg_type == libc::IP_PKTINFO
                && room >= mem::size_of::<libc::in_pktinfo>()
            {
                let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                return Some(PacketInfo {
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))),
                    interface: info.ipi_ifindex as u32,
                });
            }
            if c.cmsg_level == libc::IPPROTO_IPV6
                && c.cmsg_type == libc::IPV6_PKTINFO
                && room >= mem::size_of::<libc::in6_pktinfo>()
            {
                let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                return Some(PacketInfo {
                    addr: IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)),
                    interface: info.ipi6_ifindex,
                });
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}
