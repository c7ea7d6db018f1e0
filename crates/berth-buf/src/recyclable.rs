//! [`RecyclableBuffer`]: a growable byte buffer made of leased segments.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};

use bytes::buf::UninitSlice;
use bytes::{Buf, BufMut};

use crate::lease::Lease;
use crate::manager::{BufferManager, Exhausted};

/// A [`RecyclableBuffer`] could not take more bytes. Everything written before is
/// still there, and the failed write wrote nothing.
///
/// ```
/// use berth_buf::{BufferConfig, BufferManager, GrowError, RecyclableBuffer};
///
/// let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(1))?;
/// let mut buf = RecyclableBuffer::new(&manager, 64);
/// assert!(matches!(buf.extend_from_slice(&[0; 65]), Err(GrowError::CapacityExceeded { max: 64, .. })));
/// assert!(matches!(buf.extend_from_slice(&[0; 17]), Err(GrowError::Exhausted(_)))); // one segment only
/// assert!(buf.is_empty()); // neither write wrote anything
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrowError {
    /// The write would pass the buffer's maximum capacity.
    #[error("buffer would hold {requested} bytes, its maximum is {max}")]
    CapacityExceeded {
        /// Bytes the buffer would have held.
        requested: usize,
        /// The maximum.
        max: usize,
    },
    /// The arena had no segment to grow into.
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
}

impl From<GrowError> for io::Error {
    fn from(e: GrowError) -> io::Error {
        let kind = match e {
            GrowError::CapacityExceeded { .. } => io::ErrorKind::StorageFull,
            GrowError::Exhausted(_) => io::ErrorKind::OutOfMemory,
        };
        io::Error::new(kind, e)
    }
}

/// A growable FIFO byte buffer built from a chain of [`Lease`]s: the seed's
/// `RecyclableMemoryStream`. Writes append, leasing segments as needed; reads consume
/// from the front and return emptied segments to the arena at once, so a buffer that
/// has been drained holds at most one segment.
///
/// It implements [`io::Write`] and [`io::Read`], [`Buf`] (including
/// [`chunks_vectored`](Buf::chunks_vectored) for `writev`), and [`BufMut`] over space
/// taken ahead with [`reserve`](RecyclableBuffer::reserve) — the pool can run dry, so
/// growth is an explicit, fallible step rather than a hidden one.
///
/// A maximum capacity bounds the bytes it holds: a write that would pass it is an
/// error and changes nothing.
///
/// ```
/// use std::io::{Read, Write};
/// use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
///
/// let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
/// let mut buf = RecyclableBuffer::new(&manager, 64);
/// buf.write_all(b"a message longer than one segment")?;
/// assert_eq!(buf.len(), 33);
/// let mut out = String::new();
/// buf.read_to_string(&mut out)?;
/// assert_eq!(out, "a message longer than one segment");
/// assert!(buf.extend_from_slice(&[0; 65]).is_err()); // over the maximum: nothing written
/// assert!(buf.is_empty());
/// assert_eq!(manager.stats().in_use, 1); // drained: one segment kept for the next write
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RecyclableBuffer {
    manager: BufferManager,
    /// `segs[..wseg]` are full; `segs[wseg]` takes the next write; later ones are
    /// reserved and empty. `segs[0]` has been read up to `read`.
    segs: VecDeque<Lease>,
    read: usize,
    wseg: usize,
    len: usize,
    max: usize,
}

impl RecyclableBuffer {
    /// An empty buffer over `manager`'s arena that holds at most `max_capacity` bytes.
    /// Takes no segment until the first write.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 1024);
    /// assert_eq!((buf.len(), buf.segment_count()), (0, 0)); // no segment until the first write
    /// buf.extend_from_slice(b"x")?;
    /// assert_eq!(buf.segment_count(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(manager: &BufferManager, max_capacity: usize) -> RecyclableBuffer {
        let per_segment = manager.segment_size().max(1);
        let expected = max_capacity.div_ceil(per_segment).saturating_add(1).min(64);
        RecyclableBuffer {
            manager: manager.clone(),
            segs: VecDeque::with_capacity(expected),
            read: 0,
            wseg: 0,
            len: 0,
            max: max_capacity,
        }
    }

    /// Bytes held (written and not yet read).
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 64);
    /// buf.extend_from_slice(&[7; 20])?;
    /// assert_eq!(buf.len(), 20);
    /// buf.consume(5);
    /// assert_eq!(buf.len(), 15);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing is held.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 64);
    /// assert!(buf.is_empty());
    /// buf.extend_from_slice(b"hi")?;
    /// buf.consume(2);
    /// assert!(buf.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most bytes this buffer may hold.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 10);
    /// assert_eq!(buf.max_capacity(), 10);
    /// assert_eq!(buf.write_some(&[1; 25])?, 10); // writes stop at the maximum
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_capacity(&self) -> usize {
        self.max
    }

    /// Segments currently leased by this buffer.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 64);
    /// buf.extend_from_slice(&[0; 20])?; // 16-byte segments
    /// assert_eq!(buf.segment_count(), 2);
    /// assert_eq!(manager.stats().in_use, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn segment_count(&self) -> usize {
        self.segs.len()
    }

    /// Bytes that can be written without leasing another segment.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 64);
    /// buf.reserve(20)?;
    /// assert_eq!((buf.reserved(), buf.segment_count()), (32, 2)); // two whole segments
    /// buf.extend_from_slice(&[0; 20])?;
    /// assert_eq!(buf.reserved(), 12);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reserved(&self) -> usize {
        let spare: usize = self.segs.iter().skip(self.wseg).map(|s| s.capacity() - s.len()).sum();
        spare.min(self.max - self.len)
    }

    /// Makes sure `additional` more bytes can be written without leasing, taking
    /// segments now. On error nothing held is lost (segments already taken stay
    /// reserved).
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 64);
    /// buf.reserve(40)?;
    /// assert_eq!(manager.stats().in_use, 3); // the segments are taken now
    /// assert!(buf.reserve(65).is_err()); // past the maximum
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reserve(&mut self, additional: usize) -> Result<(), GrowError> {
        self.check_room(additional)?;
        let mut spare: usize = self.segs.iter().skip(self.wseg).map(|s| s.capacity() - s.len()).sum();
        while spare < additional {
            let lease = self.manager.lease()?;
            spare += lease.capacity();
            self.segs.push_back(lease);
        }
        Ok(())
    }

    fn check_room(&self, additional: usize) -> Result<(), GrowError> {
        match self.len.checked_add(additional) {
            Some(total) if total <= self.max => Ok(()),
            _ => Err(GrowError::CapacityExceeded { requested: self.len.saturating_add(additional), max: self.max }),
        }
    }

    /// Appends all of `data` or nothing: fails without writing if it would pass the
    /// maximum or the arena cannot supply the segments.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 8);
    /// buf.extend_from_slice(b"12345")?;
    /// assert!(buf.extend_from_slice(b"6789").is_err()); // would pass 8: nothing written
    /// assert_eq!(buf.len(), 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn extend_from_slice(&mut self, data: &[u8]) -> Result<(), GrowError> {
        self.reserve(data.len())?;
        let written = self.copy_in(data);
        debug_assert_eq!(written, data.len());
        Ok(())
    }

    /// Appends as much of `data` as fits under the maximum and the arena allows.
    /// Fails only if not a single byte could be written.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 8);
    /// assert_eq!(buf.write_some(b"123456789")?, 8); // as much as fits
    /// assert!(buf.write_some(b"x").is_err()); // full: not a single byte
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_some(&mut self, data: &[u8]) -> Result<usize, GrowError> {
        if data.is_empty() {
            return Ok(0);
        }
        let room = self.max - self.len;
        if room == 0 {
            return Err(GrowError::CapacityExceeded { requested: self.len + data.len(), max: self.max });
        }
        let data = &data[..data.len().min(room)];
        let mut written = self.copy_in(data);
        while written < data.len() {
            match self.manager.lease() {
                Ok(lease) => self.segs.push_back(lease),
                Err(e) if written == 0 => return Err(e.into()),
                Err(_) => break,
            }
            written += self.copy_in(&data[written..]);
        }
        Ok(written)
    }

    /// Copies into reserved space only; returns how much fit.
    fn copy_in(&mut self, mut data: &[u8]) -> usize {
        let mut written = 0;
        while !data.is_empty() {
            let Some(seg) = self.write_segment() else { break };
            let spare = seg.spare_mut();
            let n = spare.len().min(data.len());
            spare[..n].copy_from_slice(&data[..n]);
            let new_len = seg.len() + n;
            // Cannot fail: n fits in the spare bytes.
            let _ = seg.set_len(new_len);
            data = &data[n..];
            written += n;
        }
        self.len += written;
        written
    }

    /// The segment that takes the next write, moving past full ones; `None` if no
    /// reserved space is left.
    fn write_segment(&mut self) -> Option<&mut Lease> {
        while self.wseg < self.segs.len() {
            if self.segs[self.wseg].len() < self.segs[self.wseg].capacity() {
                return self.segs.get_mut(self.wseg);
            }
            if self.wseg + 1 == self.segs.len() {
                return None;
            }
            self.wseg += 1;
        }
        None
    }

    /// Drops the first `n` held bytes (at most [`len`](Self::len)), returning emptied
    /// segments to the arena.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 64);
    /// buf.extend_from_slice(&[0; 40])?; // three 16-byte segments
    /// buf.consume(32);
    /// assert_eq!((buf.len(), buf.segment_count()), (8, 1)); // two emptied segments went back
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn consume(&mut self, n: usize) {
        let mut n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.segs.front() else { break };
            let front_len = front.len();
            let step = (front_len - self.read).min(n);
            self.read += step;
            n -= step;
            if self.read == front_len {
                self.retire_front();
            }
            if step == 0 && self.wseg == 0 {
                break;
            }
        }
        if self.len == 0 && self.read > 0 {
            self.retire_front();
        }
    }

    /// The front segment has been read to its end: return it, or rewind it if it is
    /// also the write segment.
    fn retire_front(&mut self) {
        if self.wseg == 0 {
            if let Some(front) = self.segs.front_mut() {
                let _ = front.set_len(0);
            }
        } else {
            self.segs.pop_front();
            self.wseg -= 1;
        }
        self.read = 0;
    }

    /// Drops everything held and returns every segment to the arena.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 64);
    /// buf.extend_from_slice(&[0; 40])?;
    /// buf.clear();
    /// assert!(buf.is_empty());
    /// assert_eq!((buf.segment_count(), manager.stats().in_use), (0, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear(&mut self) {
        self.segs.clear();
        self.read = 0;
        self.wseg = 0;
        self.len = 0;
    }

    /// The held bytes as `IoSlice`s for `writev` (see [`Buf::chunks_vectored`]).
    ///
    /// ```
    /// # use std::io::IoSlice;
    /// # use berth_buf::{BufferConfig, BufferManager, RecyclableBuffer};
    /// # let manager = BufferManager::new(BufferConfig::new().segment_size(16).segment_count(8))?;
    /// let mut buf = RecyclableBuffer::new(&manager, 64);
    /// buf.extend_from_slice(b"one segment, then more")?; // 22 bytes, 16 per segment
    /// let mut slices = [IoSlice::new(&[]); 4];
    /// assert_eq!(buf.io_slices(&mut slices), 2);
    /// assert_eq!(slices[0].len() + slices[1].len(), buf.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn io_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        self.chunks_vectored(dst)
    }

    /// Held bytes per segment, front first.
    fn readable(&self) -> impl Iterator<Item = &[u8]> {
        self.segs
            .iter()
            .take(self.wseg + 1)
            .enumerate()
            .map(move |(i, s)| if i == 0 { &s.filled()[self.read..] } else { s.filled() })
            .filter(|s| !s.is_empty())
    }
}

impl io::Write for RecyclableBuffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        Ok(self.write_some(data)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Read for RecyclableBuffer {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut copied = 0;
        for chunk in self.readable() {
            let n = chunk.len().min(out.len() - copied);
            out[copied..copied + n].copy_from_slice(&chunk[..n]);
            copied += n;
            if copied == out.len() {
                break;
            }
        }
        self.consume(copied);
        Ok(copied)
    }
}

impl Buf for RecyclableBuffer {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.readable().next().unwrap_or(&[])
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in dst.iter_mut().zip(self.readable()) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    /// Consumes `cnt` bytes; more than [`remaining`](Buf::remaining) consumes all.
    fn advance(&mut self, cnt: usize) {
        self.consume(cnt);
    }
}

// SAFETY: `chunk_mut` returns only spare bytes of the write segment, and
// `advance_mut` never records more than that segment's spare bytes as written.
unsafe impl BufMut for RecyclableBuffer {
    /// Bytes already reserved: call [`reserve`](RecyclableBuffer::reserve) first.
    fn remaining_mut(&self) -> usize {
        self.reserved()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let Some(seg) = self.segs.get_mut(self.wseg) else { return };
        let cnt = cnt.min(seg.capacity() - seg.len());
        let new_len = seg.len() + cnt;
        let _ = seg.set_len(new_len);
        self.len += cnt;
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        let room = self.max - self.len;
        match self.write_segment() {
            Some(seg) => {
                let spare = seg.spare_mut();
                let n = spare.len().min(room);
                UninitSlice::new(&mut spare[..n])
            }
            None => UninitSlice::new(&mut []),
        }
    }
}

impl fmt::Debug for RecyclableBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecyclableBuffer")
            .field("len", &self.len)
            .field("segments", &self.segs.len())
            .field("max", &self.max)
            .finish()
    }
}
