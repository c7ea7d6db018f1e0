//! Several buffers in one op: [`Packets`], an op's list of leased byte ranges and
//! file ranges — SAEA's `BufferList` (scatter/gather) and `SendPacketsElement[]`.
//!
//! [`send_packets`](crate::CompletionPort::send_packets) sends the elements in order
//! and completes once: runs of byte ranges go out with one `sendmsg` each (gather),
//! files by sendfile(2) (zero-copy); a run of ranges with more to follow is flagged
//! `MSG_MORE`, so a header shares its segment with the file's first bytes.
//! [`recv_vectored`](crate::CompletionPort::recv_vectored) fills the byte ranges in
//! order with one `recvmsg` (scatter).
//!
//! Both drivers run these by readiness (the io_uring driver waits with `POLL_ADD`,
//! as for a file send): one syscall per run of ranges rather than one ring
//! submission per element.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::ops::Range;
use std::os::fd::BorrowedFd;

use berth_buf::Lease;
use berth_ops::{OpError, RangeError};
use berth_sendfile::{FileSend, SendFileError};
use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendFlags};

/// The most byte ranges one `sendmsg`/`recvmsg` carries; longer runs take more calls.
const IOV_BATCH: usize = 64;

/// One element of an op's [`Packets`].
#[derive(Debug)]
pub enum Packet {
    /// A range of a leased segment.
    Bytes {
        /// The segment.
        lease: Lease,
        /// The bytes of it to send (or to receive into).
        range: Range<usize>,
    },
    /// A range of a file, sent by sendfile(2).
    File(FileSend<File>),
}

/// An op's list of elements (SAEA's `BufferList` / `SendPacketsElement`s), for
/// [`send_packets`](crate::CompletionPort::send_packets) (byte ranges and files, sent
/// in order, runs of ranges gathered) and
/// [`recv_vectored`](crate::CompletionPort::recv_vectored) (byte ranges, filled in
/// order). Kept with the op across completions (its leases and capacity reused),
/// cleared when the op is given back or cancelled.
#[derive(Debug, Default)]
pub struct Packets {
    items: Vec<Packet>,
    /// Where a send or receive in progress is: the element, and the bytes of it done.
    next: usize,
    offset: usize,
    done: usize,
}

impl Packets {
    /// Appends `range` of `lease`.
    ///
    /// # Errors
    /// The range does not fit in the lease (the lease is dropped, back to its arena).
    pub fn push_bytes(&mut self, lease: Lease, range: Range<usize>) -> Result<(), RangeError> {
        if range.start > range.end || range.end > lease.capacity() {
            return Err(RangeError { start: range.start, end: range.end, capacity: lease.capacity() });
        }
        self.items.push(Packet::Bytes { lease, range });
        Ok(())
    }

    /// Appends a file range (sent zero-copy; see [`FileSend`]).
    pub fn push_file(&mut self, file: FileSend<File>) {
        self.items.push(Packet::File(file));
    }

    /// The elements.
    pub fn items(&self) -> &[Packet] {
        &self.items
    }

    /// The elements, to change a range or read what a receive filled.
    pub fn items_mut(&mut self) -> &mut [Packet] {
        &mut self.items
    }

    /// How many elements.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Removes every element (leases back to their arena, files closed); keeps the
    /// capacity, so refilling allocates nothing.
    pub fn clear(&mut self) {
        self.items.clear();
        self.rewind();
    }

    /// Takes the elements out (the list keeps no capacity).
    pub fn take(&mut self) -> Vec<Packet> {
        self.rewind();
        std::mem::take(&mut self.items)
    }

    pub(crate) fn rewind(&mut self) {
        self.next = 0;
        self.offset = 0;
        self.done = 0;
    }

    /// Every byte range inside its lease (`items_mut` lets them be changed after
    /// `push_bytes` checked them).
    pub(crate) fn check(&self) -> Result<(), std::io::Error> {
        let bad = self.items.iter().any(|p| match p {
            Packet::Bytes { lease, range } => range.start > range.end || range.end > lease.capacity(),
            Packet::File(_) => false,
        });
        if bad {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a byte range past its lease"));
        }
        Ok(())
    }

    pub(crate) fn has_files(&self) -> bool {
        self.items.iter().any(|p| matches!(p, Packet::File(_)))
    }

    /// Bytes the list has to move (a receive's room, a send's length).
    pub(crate) fn total_bytes(&self) -> usize {
        self.items
            .iter()
            .map(|p| match p {
                Packet::Bytes { range, .. } => range.len(),
                Packet::File(f) => f.remaining() as usize,
            })
            .sum()
    }
}

/// What one step of a send or receive over the list came to.
pub(crate) enum Flow {
    Done(Result<usize, OpError>),
    WouldBlock,
}

/// Sends what is left of the list, in order; `scratch` serves a file that needs the
/// copy fallback. Completes with the bytes sent in all.
pub(crate) fn send(list: &mut Packets, fd: BorrowedFd<'_>, scratch: &mut [u8]) -> Flow {
    loop {
        // Skip what is finished (and empty ranges).
        while let Some(item) = list.items.get(list.next) {
            let finished = match item {
                Packet::Bytes { range, .. } => list.offset >= range.len(),
                Packet::File(f) => f.remaining() == 0,
            };
            if !finished {
                break;
            }
            list.next += 1;
            list.offset = 0;
        }
        let Some(item) = list.items.get_mut(list.next) else { return Flow::Done(Ok(list.done)) };
        let more_after = |from: usize, items: &[Packet]| {
            items[from..].iter().any(|p| match p {
                Packet::Bytes { range, .. } => !range.is_empty(),
                Packet::File(f) => f.remaining() > 0,
            })
        };
        match item {
            Packet::File(file) => {
                // (sendfile takes no MSG_MORE: what follows a file starts a segment.)
                match file.send_some(fd, scratch) {
                    Ok(progress) => list.done += progress.sent as usize,
                    Err(SendFileError::WouldBlock) => return Flow::WouldBlock,
                    Err(e) => return Flow::Done(Err(file_error(&e))),
                }
            }
            Packet::Bytes { .. } => {
                // Gather the run of byte ranges from here.
                let mut iov = [IoSlice::new(&[]); IOV_BATCH];
                let mut count = 0;
                let mut end = list.next;
                let mut offset = list.offset;
                while let Some(Packet::Bytes { lease, range }) = list.items.get(end) {
                    if count == IOV_BATCH {
                        break;
                    }
                    let slice = &lease[range.start + offset..range.end];
                    if !slice.is_empty() {
                        iov[count] = IoSlice::new(slice);
                        count += 1;
                    }
                    offset = 0;
                    end += 1;
                }
                let mut flags = SendFlags::NOSIGNAL;
                if more_after(end, &list.items) {
                    flags |= SendFlags::MORE;
                }
                let mut no_ancillary = SendAncillaryBuffer::default();
                match rustix::net::sendmsg(fd, &iov[..count], &mut no_ancillary, flags) {
                    Ok(0) => return Flow::Done(Err(OpError::BrokenPipe)),
                    Ok(mut n) => {
                        list.done += n;
                        // Advance through the ranges the kernel took.
                        while n > 0 {
                            let Some(Packet::Bytes { range, .. }) = list.items.get(list.next) else { break };
                            let left = range.len() - list.offset;
                            if n >= left {
                                n -= left;
                                list.next += 1;
                                list.offset = 0;
                            } else {
                                list.offset += n;
                                n = 0;
                            }
                        }
                    }
                    Err(Errno::AGAIN) => return Flow::WouldBlock,
                    Err(Errno::INTR) => {}
                    Err(e) => return Flow::Done(Err(OpError::from_io(&e.into()))),
                }
            }
        }
    }
}

/// Receives once into the list's byte ranges, in order; each lease's length is set
/// to the end of what landed in it. `Ok(0)`: the peer shut its side.
pub(crate) fn recv(list: &mut Packets, fd: BorrowedFd<'_>) -> Flow {
    let mut iov: [IoSliceMut<'_>; IOV_BATCH] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
    let mut count = 0;
    for item in list.items.iter_mut() {
        if count == IOV_BATCH {
            break;
        }
        if let Packet::Bytes { lease, range } = item
            && range.start < range.end
        {
            iov[count] = IoSliceMut::new(&mut lease[range.clone()]);
            count += 1;
        }
    }
    let mut no_ancillary = RecvAncillaryBuffer::default();
    let n = loop {
        match rustix::net::recvmsg(fd, &mut iov[..count], &mut no_ancillary, RecvFlags::empty()) {
            Ok(msg) => break msg.bytes,
            Err(Errno::AGAIN) => return Flow::WouldBlock,
            Err(Errno::INTR) => {}
            Err(e) => return Flow::Done(Err(OpError::from_io(&e.into()))),
        }
    };
    let mut left = n;
    for item in list.items.iter_mut() {
        if let Packet::Bytes { lease, range } = item {
            let here = left.min(range.len());
            let _ = lease.set_len(range.start + here);
            left -= here;
        }
    }
    Flow::Done(Ok(n))
}

/// What a failed file send completes with (`send_file` and `send_packets` alike).
pub(crate) fn file_error(e: &SendFileError) -> OpError {
    match e {
        SendFileError::Truncated { .. } => OpError::Truncated,
        SendFileError::PeerClosed { reset: true, .. } => OpError::ConnectionReset,
        SendFileError::PeerClosed { .. } => OpError::BrokenPipe,
        SendFileError::ScratchRequired => OpError::InvalidInput,
        _ => OpError::from_io(&std::io::Error::from(e.kind())),
    }
}
