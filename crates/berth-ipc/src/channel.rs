//! The mapped channel: creating and opening the shared file, attaching as sender or
//! receiver, waiting, and watching the peer.

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cache;
use crate::copy::{copy_bytes, volatile_copy};
use crate::error::{OpenError, RecvError, SendError};
use crate::layout::{self, FLAG_CLOSED, Layout, STATE_READY, WAIT_FD, WAIT_FUTEX, off};
use crate::ring::{Consumer, Geometry, Producer, Region, ReserveError, Slot, Wake, record_size};
use crate::sys;

/// Where named channels live.
pub const SHM_DIR: &str = "/dev/shm";
/// File-name prefix of named channels (`/dev/shm/berth-ipc.<name>`).
pub const NAME_PREFIX: &str = "berth-ipc.";
/// File-name prefix of a named channel's wake FIFOs
/// (`/dev/shm/berth-ipc-wake.<name>.rx` and `.tx`).
pub const WAKE_PREFIX: &str = "berth-ipc-wake.";

/// The first futex sleep of a wait; each further sleep doubles, up to [`SLICE_MAX`]
/// (or [`SLICE_WATCHED`]), and the peer's liveness is checked between sleeps.
const SLICE_MIN: Duration = Duration::from_millis(10);
/// The longest futex sleep between two liveness checks when no watcher thread wakes
/// us on the peer's death (see `watch`): a death is then noticed within 10 ms by a
/// waiter that has just started, within 50 ms by a long idle one, and an idle
/// blocked end wakes about 20 times a second.
const SLICE_MAX: Duration = Duration::from_millis(50);
/// The longest futex sleep while the watcher thread wakes us on the peer's death,
/// for a wait that still needs a timer (a deadline, a peer timeout, or a channel
/// from before layout 2.3): only a backstop. Otherwise such a sleep has no timer at
/// all (see `PeerWatch::wakes_suffice`).
const SLICE_WATCHED: Duration = Duration::from_secs(1);
/// The longest futex sleep when this process cannot issue `membarrier` (the peer's
/// fence-free wake could then be missed, and is only caught by this timeout).
const SLICE_NO_MEMBARRIER: Duration = Duration::from_millis(1);
/// Busy-poll iterations between liveness and deadline checks.
const BUSY_CHECK_EVERY: u32 = 4096;
/// The non-blocking calls check the peer's process at most this often (in ns of the
/// coarse clock); in between an empty or full result costs no syscall.
const TRY_CHECK_EVERY_NS: u64 = SLICE_MIN.as_nanos() as u64;

/// Parameters of a new channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    capacity: u64,
    max_message: Option<u64>,
    wake_fds: bool,
    fenced: bool,
}

impl Config {
    /// A ring of `capacity` data bytes (a power of two, 64 B ..= 1 TiB).
    pub fn new(capacity: u64) -> Config {
        Config { capacity, max_message: None, wake_fds: false, fenced: false }
    }

    /// Gives each end a wake descriptor that an event loop can wait on
    /// (`Receiver::as_fd` ([`AsFd`](std::os::fd::AsFd)), `Sender::as_fd`, [`Receiver::arm_wake`]): an eventfd
    /// for a memfd channel, a FIFO beside the file for a named one. Off by default:
    /// such a channel needs its descriptors passed along with the memfd
    /// ([`Channel::send_over`], [`Channel::from_fds`]).
    pub fn wake_fds(mut self, on: bool) -> Config {
        self.wake_fds = on;
        self
    }

    /// Makes every publication of either end (a commit, a release that gives room
    /// back) pay a full fence, so that an end about to sleep needs no
    /// `membarrier(2)`. Off by default: a stream of messages between busy ends then
    /// costs no fence at all, and each sleep pays a membarrier instead — about a
    /// µs, and several more on a VM for each CPU running a thread of a process
    /// with a channel (an IPI). Turn it on for request/response traffic, where an
    /// end sleeps after most messages: a fence costs tens of ns. Recorded in the
    /// header (ABI flag bit 2), so both ends keep to it; a berth-ipc older than
    /// layout 2.2 refuses such a channel.
    pub fn fenced(mut self, on: bool) -> Config {
        self.fenced = on;
        self
    }

    /// The largest message; at most `capacity / 2 - 8` (the default).
    pub fn max_message(mut self, max: u64) -> Config {
        self.max_message = Some(max);
        self
    }

    fn layout(&self) -> Result<Layout, OpenError> {
        if !self.capacity.is_power_of_two() {
            return Err(OpenError::CapacityNotPowerOfTwo { capacity: self.capacity });
        }
        let max = self.max_message.unwrap_or_else(|| layout::max_message_for(self.capacity.max(layout::MIN_CAPACITY)));
        let pid = sys::getpid();
        let start = sys::start_time(pid).map_or(0, |(s, _)| s);
        Ok(Layout { wake_fds: self.wake_fds, fenced: self.fenced, ..Layout::new(self.capacity, max, pid, start)? })
    }
}

impl Default for Config {
    /// 1 MiB ring, messages up to 512 KiB − 8.
    fn default() -> Config {
        Config::new(1 << 20)
    }
}

/// How a blocked `send`/`recv` waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Spin `spins` times, then sleep on the futex. The default spins 2000 times
    /// (each a `pause`, 10–50 ns on current x86: some tens of µs in all) — unless
    /// the thread that creates the end may run on one CPU only, where spinning would
    /// only keep a peer that shares the CPU from running: then it sleeps at once
    /// (`spins: 0`).
    Block {
        /// Spin iterations before sleeping.
        spins: u32,
    },
    /// Never sleep: poll the ring, checking the peer and the deadline every few
    /// thousand iterations. Lowest latency, burns a core while waiting.
    BusyPoll,
}

impl Default for WaitMode {
    /// `Block` with 2000 spins, or none on a thread confined to one CPU (read from
    /// its affinity mask when called).
    fn default() -> WaitMode {
        WaitMode::Block { spins: if sys::runs_on_one_cpu() { 0 } else { 2000 } }
    }
}

/// A channel's two wake descriptors: the receiver waits for `rx` to turn readable
/// and the sender writes it; `tx` the other way round.
#[derive(Debug)]
pub(crate) struct WakeFds {
    rx: OwnedFd,
    tx: OwnedFd,
    /// Their open file descriptions are this process's alone: FIFOs it opened by
    /// path (each end of a named channel opens its own), not handed out since
    /// ([`Channel::send_over`], [`Channel::set_inheritable`], [`Channel::wake_fds`]
    /// clear it). Then nobody else can clear their `O_NONBLOCK`, and a drain is one
    /// plain read (see `sys::drain`). Only ever goes from true to false.
    private: AtomicBool,
}

impl WakeFds {
    /// Two fresh eventfds, for a memfd channel.
    fn events() -> io::Result<WakeFds> {
        Ok(WakeFds { rx: sys::eventfd()?, tx: sys::eventfd()?, private: AtomicBool::new(false) })
    }

    /// Descriptors from a peer, checked to be eventfds or FIFOs.
    fn checked(rx: OwnedFd, tx: OwnedFd) -> Result<WakeFds, OpenError> {
        sys::check_wake_fd(rx.as_fd())?;
        sys::check_wake_fd(tx.as_fd())?;
        Ok(WakeFds { rx, tx, private: AtomicBool::new(false) })
    }

    /// The FIFOs of named channel `name`, opened with the same checks as its file.
    fn open_named(name: &str) -> Result<WakeFds, OpenError> {
        let (rx, tx) = wake_paths(name)?;
        Ok(WakeFds {
            rx: sys::open_fifo_checked(&rx)?,
            tx: sys::open_fifo_checked(&tx)?,
            private: AtomicBool::new(true),
        })
    }

    /// The descriptor of the end that sleeps on `word_at` (`RX_WAIT` or `TX_WAIT`).
    fn of(&self, word_at: usize) -> BorrowedFd<'_> {
        if word_at == off::RX_WAIT { self.rx.as_fd() } else { self.tx.as_fd() }
    }

    /// Empties `fd` (one of ours) before its end flags that it sleeps on it.
    fn drain(&self, fd: BorrowedFd<'_>) {
        sys::drain(fd, self.private.load(Ordering::Relaxed));
    }

    /// The descriptors are about to leave this process (or its sole ownership).
    fn shared_out(&self) {
        self.private.store(false, Ordering::Relaxed);
    }
}

/// The shared mapping, owned jointly by a channel's handles in this process.
pub(crate) struct Shared {
    _map: memmap2::MmapRaw,
    base: NonNull<u8>,
    fd: OwnedFd,
    layout: Layout,
    /// The wake descriptors, exactly when `layout.wake_fds`.
    wake: Option<WakeFds>,
    /// This process takes part in the membarrier wake protocol (see `Region::light_barrier`).
    asym: bool,
    /// A membarrier call failed after the start-up probe succeeded: sleep in short slices.
    degraded: std::sync::atomic::AtomicBool,
    /// The CPU has `PREFETCHW` (see `crate::cache`).
    prefetchw: bool,
}

// SAFETY: the mapping is only accessed through atomics (control words and record
// headers) or through byte ranges the ring protocol hands to exactly one handle.
unsafe impl Send for Shared {}
// SAFETY: as above; `&Shared` exposes no unsynchronised access.
unsafe impl Sync for Shared {}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("layout", &self.layout).finish_non_exhaustive()
    }
}

impl Shared {
    fn new(map: memmap2::MmapRaw, base: NonNull<u8>, fd: OwnedFd, layout: Layout, wake: Option<WakeFds>) -> Shared {
        // A fenced channel never relies on membarrier: it does not register this
        // process, which then takes no IPI from other processes' membarriers
        // unless a channel of another kind does.
        let asym = !layout.fenced && sys::membarrier_ready();
        let degraded = std::sync::atomic::AtomicBool::new(false);
        Shared { _map: map, base, fd, layout, wake, asym, degraded, prefetchw: cache::has_prefetchw() }
    }

    /// Wakes the end that sleeps on the flag at `word_at`, as a publication that
    /// cleared that flag asked (`w`). Off the hot path: only when someone sleeps.
    #[cold]
    pub(crate) fn wake(&self, word_at: usize, w: Wake) {
        match (w, &self.wake) {
            (Wake::No, _) => {}
            (Wake::Fd, Some(fds)) => sys::signal(fds.of(word_at)),
            // A futex sleeper, or a flag that claims a descriptor the channel does not
            // have (a hostile peer): the futex wake is harmless either way.
            _ => sys::futex_wake(self.u32_at(word_at)),
        }
    }

    /// Wakes the end that sleeps on `word_at` however it sleeps (the watcher
    /// thread, which does not know): futex and descriptor both.
    pub(crate) fn wake_sleeper(&self, word_at: usize) {
        sys::futex_wake(self.u32_at(word_at));
        if let Some(fds) = &self.wake {
            sys::signal(fds.of(word_at));
        }
    }

    /// The longest a futex sleep may last: `grown` while the peer's wakes are sure to
    /// reach us, a short slice when they might be missed (no membarrier).
    fn slice_cap(&self, grown: Duration) -> Duration {
        if self.wakes_reach_us() { grown } else { grown.min(SLICE_NO_MEMBARRIER) }
    }

    /// Whether every wake the peer owes us is sure to reach us: a fenced channel
    /// needs no membarrier, and an asymmetric one has it unless it degraded.
    fn wakes_reach_us(&self) -> bool {
        self.layout.fenced || (self.asym && !self.degraded.load(Ordering::Relaxed))
    }

    #[inline]
    pub(crate) fn u32_at(&self, at: usize) -> &AtomicU32 {
        debug_assert!(at.is_multiple_of(4) && at + 4 <= layout::HEADER_LEN as usize);
        // SAFETY: `at` is a constant header offset, 4-aligned, inside the header page
        // which is mapped for as long as `self` lives; page alignment of the mapping
        // makes the pointer aligned. Shared memory is only ever accessed atomically here.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(at).cast()) }
    }

    #[inline]
    pub(crate) fn u64_at(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at.is_multiple_of(8) && at + 8 <= layout::HEADER_LEN as usize);
        // SAFETY: as in `u32_at`, with 8-byte alignment.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(at).cast()) }
    }

    /// Pointer to data byte `off` (`off <= capacity`, guaranteed by the ring core;
    /// `capacity` itself only as the end of an empty record).
    #[inline]
    fn data(&self, off: usize) -> *mut u8 {
        debug_assert!((off as u64) <= self.layout.capacity);
        // SAFETY: data_offset + capacity == total_len, the mapped length (checked by
        // `Layout::parse` / `Layout::new`), and off <= capacity.
        unsafe { self.base.as_ptr().add(self.layout.data_offset as usize + off) }
    }

    fn geometry(&self) -> Geometry {
        Geometry::new(self.layout.capacity, self.layout.max_message)
    }

    /// Maps `fd` and validates its header. `require_seal`: refuse any descriptor not
    /// sealed against shrinking (whoever else holds it could truncate it under our
    /// mapping: a `SIGBUS` hazard); only our own, owner-checked named files skip this.
    /// `wake` supplies the wake descriptors once the header says whether the channel
    /// has them.
    fn open(
        fd: OwnedFd,
        require_seal: bool,
        wake: impl FnOnce(&Layout) -> Result<Option<WakeFds>, OpenError>,
    ) -> Result<Shared, OpenError> {
        if require_seal && !sys::sealed_against_shrink(fd.as_fd()) {
            return Err(OpenError::NotSealed);
        }
        let len = sys::file_len(fd.as_fd())?;
        if len < layout::HEADER_LEN {
            return Err(OpenError::TooShort { len, need: layout::HEADER_LEN });
        }
        // Map the header page alone first: nothing beyond it is trusted yet.
        let head = sys::map(fd.as_fd(), layout::HEADER_LEN as usize)?;
        let base = NonNull::new(head.as_mut_ptr()).ok_or(OpenError::LayoutOutOfBounds { what: "mapping" })?;
        // SAFETY: offset STATE is 4-aligned inside the mapped header page.
        let state = unsafe { AtomicU32::from_ptr(base.as_ptr().add(off::STATE).cast()) };
        if state.load(Ordering::Acquire) != STATE_READY {
            return Err(OpenError::NotReady);
        }
        let mut snap = [0u8; off::SNAPSHOT];
        for (i, b) in snap.iter_mut().enumerate() {
            // SAFETY: i < SNAPSHOT < HEADER_LEN, inside the mapping. Volatile, because
            // another process may write the page; the copy is private from here on.
            *b = unsafe { base.as_ptr().add(i).read_volatile() };
        }
        let layout = Layout::parse(&snap, len)?;
        drop(head);
        let wake = wake(&layout)?;
        if wake.is_some() != layout.wake_fds {
            return Err(if layout.wake_fds { OpenError::WakeFdsMissing } else { OpenError::BadWakeFd });
        }
        let map = sys::map(fd.as_fd(), layout.total_len as usize)?;
        let base = NonNull::new(map.as_mut_ptr()).ok_or(OpenError::LayoutOutOfBounds { what: "mapping" })?;
        Ok(Shared::new(map, base, fd, layout, wake))
    }

    /// Sizes and maps a fresh file and writes its header, publishing `state` last.
    fn init(fd: OwnedFd, layout: Layout, wake: Option<WakeFds>) -> Result<Shared, OpenError> {
        let map = sys::map(fd.as_fd(), layout.total_len as usize)?;
        let base = NonNull::new(map.as_mut_ptr()).ok_or(OpenError::LayoutOutOfBounds { what: "mapping" })?;
        let sh = Shared::new(map, base, fd, layout, wake);
        for (i, b) in layout.encode().iter().enumerate() {
            // SAFETY: i < SNAPSHOT, inside the header page; no peer can have opened
            // the file yet in a way that trusts it, since `state` is still INIT.
            unsafe { sh.base.as_ptr().add(i).write_volatile(*b) };
        }
        sh.u32_at(off::STATE).store(STATE_READY, Ordering::Release);
        Ok(sh)
    }
}

impl Region for Shared {
    fn tail(&self) -> &AtomicU64 {
        self.u64_at(off::TAIL)
    }
    fn head(&self) -> &AtomicU64 {
        self.u64_at(off::HEAD)
    }
    fn rx_wait(&self) -> &AtomicU32 {
        self.u32_at(off::RX_WAIT)
    }
    fn tx_wait(&self) -> &AtomicU32 {
        self.u32_at(off::TX_WAIT)
    }
    #[inline]
    fn load_word(&self, at: usize) -> u64 {
        // SAFETY: the ring core passes 8-aligned offsets below capacity (positions are
        // checked for alignment when an end attaches and only move by multiples of 8);
        // the data area starts page-aligned, so the word is aligned and mapped.
        unsafe { AtomicU64::from_ptr(self.data(at).cast()) }.load(Ordering::Acquire)
    }
    #[inline]
    fn store_word(&self, at: usize, v: u64) {
        // SAFETY: as in `load_word`.
        unsafe { AtomicU64::from_ptr(self.data(at).cast()) }.store(v, Ordering::Release)
    }

    #[inline]
    fn prefetch_read(&self, at: usize) {
        cache::prefetch_read(self.data(at));
    }
    #[inline]
    fn prefetch_write(&self, at: usize) {
        cache::prefetch_write(self.data(at), self.prefetchw);
    }

    #[inline]
    fn light_barrier(&self) {
        // A fenced channel's sleepers count on this fence (they issue no membarrier).
        if self.asym && !self.layout.fenced {
            // Only the compiler must keep the flag load after the position store; the
            // CPU's StoreLoad ordering is supplied by the sleeper's membarrier.
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            std::sync::atomic::fence(Ordering::SeqCst);
        }
    }
    fn heavy_barrier(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.layout.fenced {
            // Every publication of the peer fences too (ABI_FENCED): the two
            // fences are the classic handshake, the one loom checks.
            return;
        }
        if !sys::membarrier_global() {
            // Peers that rely on it may now be missed: fall back to short sleeps.
            self.degraded.store(true, Ordering::Relaxed);
        }
    }
}

/// A channel's shared file, mapped; attach to it with [`Channel::sender`] or
/// [`Channel::receiver`]. Cloning shares the mapping.
#[derive(Debug, Clone)]
pub struct Channel {
    sh: Arc<Shared>,
}

/// The path of a named channel, after checking the name.
pub fn named_path(name: &str) -> Result<PathBuf, OpenError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(OpenError::InvalidName(name.to_owned()));
    }
    Ok(Path::new(SHM_DIR).join(format!("{NAME_PREFIX}{name}")))
}

/// The paths of a named channel's wake FIFOs: the receiver's and the sender's.
fn wake_paths(name: &str) -> Result<(PathBuf, PathBuf), OpenError> {
    named_path(name)?;
    let dir = Path::new(SHM_DIR);
    Ok((dir.join(format!("{WAKE_PREFIX}{name}.rx")), dir.join(format!("{WAKE_PREFIX}{name}.tx"))))
}

/// Removes a named channel's wake FIFOs, if it has them.
fn unlink_wake(name: &str) {
    if let Ok((rx, tx)) = wake_paths(name) {
        let _ = std::fs::remove_file(rx);
        let _ = std::fs::remove_file(tx);
    }
}

impl Channel {
    /// The shared mapping (for the watcher's tests).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.sh
    }

    /// Creates an anonymous channel in a memfd sealed against resizing. Nothing
    /// appears in the file system; the file dies with its last descriptor and mapping,
    /// even after `kill -9`. Hand it to the peer with [`Channel::send_over`] or by
    /// inheritance ([`Channel::set_inheritable`]).
    pub fn create_memfd(cfg: &Config) -> Result<Channel, OpenError> {
        let layout = cfg.layout()?;
        let fd = sys::memfd(layout.total_len)?;
        let wake = if layout.wake_fds { Some(WakeFds::events()?) } else { None };
        Ok(Channel { sh: Arc::new(Shared::init(fd, layout, wake)?) })
    }

    /// Creates `/dev/shm/berth-ipc.<name>`, exclusively (an existing file is an
    /// `AlreadyExists` I/O error), mode 0600, without following symlinks. With
    /// [`Config::wake_fds`], also the FIFOs `/dev/shm/berth-ipc-wake.<name>.rx` and
    /// `.tx` (mode 0600), which [`Channel::open_named`] opens with the same checks.
    pub fn create_named(name: &str, cfg: &Config) -> Result<Channel, OpenError> {
        let path = named_path(name)?;
        let layout = cfg.layout()?;
        let fd = sys::create_excl(&path, layout.total_len)?;
        let made = (|| {
            // The file is ours exclusively from here, so FIFOs of this name are
            // leftovers of a crash: `make_fifo` replaces them.
            let wake = if layout.wake_fds {
                let (rx, tx) = wake_paths(name)?;
                sys::make_fifo(&rx)?;
                sys::make_fifo(&tx)?;
                Some(WakeFds::open_named(name)?)
            } else {
                None
            };
            Shared::init(fd, layout, wake)
        })();
        made.map(|sh| Channel { sh: Arc::new(sh) }).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
            unlink_wake(name);
        })
    }

    /// Opens a named channel created by [`Channel::create_named`] (and its wake
    /// FIFOs, if it has them). The file must be a regular file owned by our
    /// effective uid with no group/other permissions; so must the FIFOs.
    pub fn open_named(name: &str) -> Result<Channel, OpenError> {
        let fd = sys::open_checked(&named_path(name)?)?;
        let sh = Shared::open(fd, false, |l| if l.wake_fds { WakeFds::open_named(name).map(Some) } else { Ok(None) })?;
        Ok(Channel { sh: Arc::new(sh) })
    }

    /// Removes a named channel's file and its wake FIFOs (processes that opened
    /// them keep using them).
    pub fn unlink_named(name: &str) -> Result<(), OpenError> {
        std::fs::remove_file(named_path(name)?)?;
        unlink_wake(name);
        Ok(())
    }

    /// Removes named channels whose creator and both ends are all dead (or never
    /// attached). Returns the names removed. Files of other users and files that are
    /// not berth channels are left alone.
    pub fn cleanup_stale() -> io::Result<Vec<String>> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(SHM_DIR)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_prefix(NAME_PREFIX)) else {
                continue;
            };
            let Ok(fd) = sys::open_checked(&entry.path()) else {
                continue;
            };
            let mut h = [0u8; 288];
            let file = std::fs::File::from(fd);
            if std::os::unix::fs::FileExt::read_exact_at(&file, &mut h, 0).is_err() || h[..8] != layout::MAGIC {
                continue;
            }
            let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
            let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
            let someone_alive =
                [(off::CREATOR_PID, off::CREATOR_START), (off::TX_PID, off::TX_START), (off::RX_PID, off::RX_START)]
                    .iter()
                    .any(|&(p, s)| pid_alive(u32_at(p), u64_at(s)));
            if !someone_alive && std::fs::remove_file(entry.path()).is_ok() {
                unlink_wake(name);
                tracing::debug!(name, "removed stale berth-ipc channel");
                removed.push(name.to_owned());
            }
        }
        Ok(removed)
    }

    /// Maps a channel from a descriptor: received over a socket or inherited. The
    /// descriptor must be sealed against shrinking (a memfd from
    /// [`Channel::create_memfd`]); anything else — an unsealed memfd, a `/dev/shm` or
    /// other plain file — is [`OpenError::NotSealed`], since whoever else holds it
    /// could truncate it under our mapping (`SIGBUS`). Open named channels with
    /// [`Channel::open_named`].
    ///
    /// A channel created with [`Config::wake_fds`] is [`OpenError::WakeFdsMissing`]
    /// here: open it with [`Channel::from_fds`].
    pub fn from_fd(fd: OwnedFd) -> Result<Channel, OpenError> {
        Ok(Channel { sh: Arc::new(Shared::open(fd, true, |_| Ok(None))?) })
    }

    /// Like [`Channel::from_fd`], for a channel created with [`Config::wake_fds`]:
    /// `rx_wake` and `tx_wake` are its wake descriptors as [`Channel::wake_fds`]
    /// gives them (each must be an eventfd or a FIFO).
    pub fn from_fds(fd: OwnedFd, rx_wake: OwnedFd, tx_wake: OwnedFd) -> Result<Channel, OpenError> {
        let wake = WakeFds::checked(rx_wake, tx_wake)?;
        Ok(Channel { sh: Arc::new(Shared::open(fd, true, |_| Ok(Some(wake)))?) })
    }

    /// Maps the next channel of a list of received descriptors: its memfd, then its
    /// two wake descriptors if its header says it has them.
    pub(crate) fn from_received(fds: &mut impl Iterator<Item = OwnedFd>) -> Result<Channel, OpenError> {
        let fd = fds.next().ok_or(OpenError::NoFdReceived)?;
        let sh = Shared::open(fd, true, |l| {
            if !l.wake_fds {
                return Ok(None);
            }
            let (Some(rx), Some(tx)) = (fds.next(), fds.next()) else { return Err(OpenError::WakeFdsMissing) };
            WakeFds::checked(rx, tx).map(Some)
        })?;
        Ok(Channel { sh: Arc::new(sh) })
    }

    /// The descriptors that make up this channel: the file, then the wake
    /// descriptors if it has them (what [`Channel::send_over`] sends).
    pub(crate) fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        let wake = self.sh.wake.as_ref().map(|w| {
            // Whoever gets them shares their descriptions: drains must not trust O_NONBLOCK.
            w.shared_out();
            [w.rx.as_fd(), w.tx.as_fd()]
        });
        std::iter::once(self.sh.fd.as_fd()).chain(wake.into_iter().flatten())
    }

    /// Sends this channel's descriptor over a Unix socket (`SCM_RIGHTS`), with its
    /// wake descriptors if it has them.
    pub fn send_over(&self, sock: &UnixStream) -> io::Result<()> {
        let mut fds = [self.sh.fd.as_fd(); 3];
        let mut n = 0;
        for fd in self.fds() {
            fds[n] = fd;
            n += 1;
        }
        sys::send_fds(sock.as_fd(), &fds[..n])
    }

    /// Receives a channel sent with [`Channel::send_over`] and validates it.
    pub fn recv_from(sock: &UnixStream) -> Result<Channel, OpenError> {
        Channel::from_received(&mut sys::recv_fds(sock.as_fd())?.into_iter())
    }

    /// Lets (or stops) a child process started later inherit the descriptor (clears
    /// close-on-exec), and the wake descriptors if the channel has them; tell the
    /// child the numbers from [`AsRawFd`](std::os::fd::AsRawFd) and
    /// [`Channel::wake_fds`].
    pub fn set_inheritable(&self, inherit: bool) -> io::Result<()> {
        self.fds().try_for_each(|fd| sys::set_inheritable(fd, inherit))
    }

    /// The wake descriptors (the receiver's, the sender's), if the channel was
    /// created with [`Config::wake_fds`]: to hand to a peer with the memfd. From
    /// this call on, this process's ends no longer assume that nobody else can
    /// clear the descriptors' `O_NONBLOCK` (their drains cost a `poll` again on a
    /// named channel's FIFOs).
    pub fn wake_fds(&self) -> Option<(BorrowedFd<'_>, BorrowedFd<'_>)> {
        self.sh.wake.as_ref().map(|w| {
            // To hand to a peer: see `WakeFds::private`.
            w.shared_out();
            (w.rx.as_fd(), w.tx.as_fd())
        })
    }

    /// The ring's data capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.sh.layout.capacity
    }

    /// The largest message this channel carries.
    pub fn max_message(&self) -> usize {
        self.sh.layout.max_message as usize
    }

    /// Whether the channel was created [fenced](Config::fenced) (as its header says).
    pub fn fenced(&self) -> bool {
        self.sh.layout.fenced
    }

    /// The pid that created the channel.
    pub fn creator_pid(&self) -> u32 {
        self.sh.layout.creator_pid
    }

    /// Attaches as the channel's only sender.
    pub fn sender(&self) -> Result<Sender, OpenError> {
        let prod =
            Producer::new(self.sh.geometry(), &*self.sh).map_err(|what| OpenError::LayoutOutOfBounds { what })?;
        let me = claim(&self.sh, "sender", off::TX_PID, off::TX_START, off::TX_HEARTBEAT)?;
        Ok(Sender { sh: self.sh.clone(), prod, peer: PeerWatch::new(Side::TX), mode: WaitMode::default(), me })
    }

    /// Attaches as the channel's only receiver.
    pub fn receiver(&self) -> Result<Receiver, OpenError> {
        let cons =
            Consumer::new(self.sh.geometry(), &*self.sh).map_err(|what| OpenError::LayoutOutOfBounds { what })?;
        let me = claim(&self.sh, "receiver", off::RX_PID, off::RX_START, off::RX_HEARTBEAT)?;
        Ok(Receiver {
            sh: self.sh.clone(),
            cons,
            peer: PeerWatch::new(Side::RX),
            mode: WaitMode::default(),
            me,
            arm: Arm::None,
        })
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sh.fd.as_fd()
    }
}

/// Offsets of one end's identity words.
#[derive(Debug, Clone, Copy)]
struct End {
    heartbeat: usize,
}

fn claim(sh: &Shared, role: &'static str, pid_at: usize, start_at: usize, hb_at: usize) -> Result<End, OpenError> {
    let pid = sys::getpid();
    if let Err(holder) = sh.u32_at(pid_at).compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire) {
        return Err(OpenError::RoleTaken { role, pid: holder });
    }
    let start = sys::start_time(pid).map_or(0, |(s, _)| s);
    sh.u64_at(start_at).store(start, Ordering::Release);
    sh.u64_at(hb_at).store(sys::monotonic_ns(), Ordering::Relaxed);
    Ok(End { heartbeat: hb_at })
}

/// Whether `pid` names a live process, and (unless `start` is 0) the one that
/// started at `start`.
fn pid_alive(pid: u32, start: u64) -> bool {
    if pid == 0 {
        return false;
    }
    match sys::start_time(pid) {
        Some((s, zombie)) => !zombie && (s == start || start == 0),
        // No such process, unless /proc cannot be read at all (then a peer records
        // start 0 and only its bare pid can be checked).
        None => start == 0 && sys::start_time(sys::getpid()).is_none() && sys::process_exists(pid),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerState {
    /// Not attached yet (or attaching).
    Absent,
    Alive,
    Closed,
    Dead,
}

/// Header offsets of the words one end watches, and of the futex word it sleeps on.
#[derive(Debug, Clone, Copy)]
struct Side {
    pid_at: usize,
    start_at: usize,
    flags_at: usize,
    hb_at: usize,
    /// The peer's ring position (the receiver's head, the sender's tail): it moves
    /// only when the peer does, so it is a sign of life besides the heartbeat.
    pos_at: usize,
    wait_at: usize,
}

impl Side {
    /// The sender's view: it watches the receiver and sleeps on `TX_WAIT`.
    const TX: Side = Side {
        pid_at: off::RX_PID,
        start_at: off::RX_START,
        flags_at: off::RX_FLAGS,
        hb_at: off::RX_HEARTBEAT,
        pos_at: off::HEAD,
        wait_at: off::TX_WAIT,
    };
    /// The receiver's view: it watches the sender and sleeps on `RX_WAIT`.
    const RX: Side = Side {
        pid_at: off::TX_PID,
        start_at: off::TX_START,
        flags_at: off::TX_FLAGS,
        hb_at: off::TX_HEARTBEAT,
        pos_at: off::TAIL,
        wait_at: off::RX_WAIT,
    };
}

/// Watches the other end: its clean-close flag, its process (pidfd, else /proc),
/// and optionally its heartbeat.
#[derive(Debug)]
struct PeerWatch {
    side: Side,
    known: Option<(u32, u64)>,
    pidfd: Option<sys::Pidfd>,
    /// The watcher thread wakes our sleeps when the peer's process exits.
    watched: Option<crate::watch::Registration>,
    timeout: Option<Duration>,
    /// With a `timeout`: the peer's position at the last check and when a check
    /// first saw it there (monotonic ns, 0 before the first check).
    progress: (u64, u64),
    /// Coarse-clock time before which `check_now_and_then` skips the process check.
    next_try_check: u64,
}

impl PeerWatch {
    fn new(side: Side) -> PeerWatch {
        PeerWatch { side, known: None, pidfd: None, watched: None, timeout: None, progress: (0, 0), next_try_check: 0 }
    }

    /// A limit set afresh (from none) starts from a fresh look at the peer; a
    /// changed limit keeps the look it has, so setting one before each call does
    /// not restart the count.
    fn set_timeout(&mut self, timeout: Option<Duration>) {
        if self.timeout.is_none() {
            self.progress = (0, 0);
        }
        self.timeout = timeout;
    }

    /// Before a sleep: hands the peer's pidfd to the watcher thread (once), and
    /// returns the longest we may sleep before checking the peer again: long while
    /// the watcher reports its death, and no longer than a heartbeat limit (judged
    /// at checks). A peer that died just before is reported at once too: its pidfd
    /// is readable when it is registered.
    fn watch(&mut self, sh: &Arc<Shared>) -> Duration {
        if self.watched.is_none()
            && let Some(fd) = &self.pidfd
        {
            self.watched = crate::watch::register(fd, sh, self.side.wait_at);
        }
        self.bound(self.watched.is_some())
    }

    /// The longest a sleep may last before this end looks at the peer again: a
    /// backstop while the watcher reports its death (`watched`), else short, and
    /// never longer than a heartbeat limit (judged at checks).
    fn bound(&self, watched: bool) -> Duration {
        let longest = if watched { SLICE_WATCHED } else { SLICE_MAX };
        self.timeout.map_or(longest, |limit| longest.min(limit.max(SLICE_MIN)))
    }

    /// Whether only a wake can usefully end a sleep on this peer, so that the sleep
    /// needs no timer: the watcher thread (still trusted) wakes us on the peer's
    /// death (a clean close wakes us anyway), no heartbeat limit of ours asks for a
    /// look now and then, every wake the peer owes us is sure to reach us, and the
    /// peer judges our liveness by our position too (the ABI flag), so our heartbeat
    /// may grow old while we sleep. After [`watch`](Self::watch).
    fn wakes_suffice(&self, sh: &Shared) -> bool {
        self.wakes_suffice_if(sh, self.trusted())
    }

    fn wakes_suffice_if(&self, sh: &Shared, trusted: bool) -> bool {
        trusted && self.timeout.is_none() && sh.layout.position_liveness && sh.wakes_reach_us()
    }

    /// Whether the watcher thread will report the peer's death to us.
    fn trusted(&self) -> bool {
        self.watched.as_ref().is_some_and(crate::watch::Registration::trusted)
    }

    /// The longest a sleep on the wake descriptor may last before this end must
    /// look at the peer itself: `None` when [`wakes_suffice`](Self::wakes_suffice).
    fn max_sleep(&self, sh: &Shared) -> Option<Duration> {
        let trusted = self.trusted();
        (!self.wakes_suffice_if(sh, trusted)).then(|| sh.slice_cap(self.bound(trusted)))
    }

    fn closed(&self, sh: &Shared) -> bool {
        sh.u32_at(self.side.flags_at).load(Ordering::Acquire) & FLAG_CLOSED != 0
    }

    /// For the non-blocking calls, on an empty or full ring: the clean-close flag every
    /// time, the full [`PeerWatch::check`] (a syscall or a `/proc` read) at most every
    /// [`TRY_CHECK_EVERY_NS`], so a busy `try_recv` loop pays a coarse-clock read per
    /// empty result and no syscall. `Alive` when the check was skipped.
    fn check_now_and_then(&mut self, sh: &Shared) -> PeerState {
        if self.closed(sh) {
            return PeerState::Closed;
        }
        let now = sys::coarse_ns();
        if now < self.next_try_check {
            return PeerState::Alive;
        }
        self.next_try_check = now.saturating_add(TRY_CHECK_EVERY_NS);
        self.check(sh)
    }

    fn check(&mut self, sh: &Shared) -> PeerState {
        if self.closed(sh) {
            return PeerState::Closed;
        }
        let pid = sh.u32_at(self.side.pid_at).load(Ordering::Acquire);
        let start = sh.u64_at(self.side.start_at).load(Ordering::Acquire);
        if pid == 0 {
            return PeerState::Absent;
        }
        // A start time of 0 means the peer claimed its end and has not stored its
        // start time yet, died before it did, or could not read it: watch the pid
        // alone (pid reuse could fool that) until the start time appears.
        if self.known != Some((pid, start)) {
            self.known = Some((pid, start));
            // Open the pidfd first, then confirm the pid still names the process that
            // attached: from then on the pidfd cannot be fooled by pid reuse.
            self.pidfd = sys::Pidfd::open(pid).ok();
            self.watched = None;
            if !pid_alive(pid, start) {
                return PeerState::Dead;
            }
        }
        // A registration is only as good as the watcher behind it: one that stopped,
        // or that belongs to the process we were forked from, reports nothing.
        if self.watched.as_ref().is_some_and(|reg| !reg.trusted()) {
            self.watched = None;
        }
        // Registered with the watcher (this pidfd's peer, since `known` did not
        // change), its record of the death is checked instead of polling the
        // pidfd: no syscall per sleep. The callers raised their waiter flag and
        // fenced first, so a death the watcher has not recorded yet still wakes
        // them (see `watch`).
        let alive = match (&self.watched, &self.pidfd) {
            (Some(reg), _) => !reg.fired(),
            (None, Some(fd)) => !fd.exited(),
            (None, None) => pid_alive(pid, start),
        };
        if !alive {
            return PeerState::Dead;
        }
        if let Some(limit) = self.timeout
            && self.hung(sh, limit)
        {
            return PeerState::Dead;
        }
        PeerState::Alive
    }

    /// Whether the peer has shown no sign of life for longer than `limit`: no
    /// heartbeat, and no move of its ring position since a check of ours first saw
    /// it there. A heartbeat alone is not enough: an end asleep on an empty (full)
    /// ring beats when it falls asleep and when it wakes, so after a long idle sleep
    /// its heartbeat is old until it is scheduled again, and we may commit, wake it
    /// and fill the ring before it is. Its position has not moved since then, but
    /// our first look at that position is no older than our wait on it.
    fn hung(&mut self, sh: &Shared, limit: Duration) -> bool {
        let now = sys::monotonic_ns();
        let pos = sh.u64_at(self.side.pos_at).load(Ordering::Relaxed);
        if self.progress.1 == 0 || self.progress.0 != pos {
            self.progress = (pos, now);
        }
        let hb = sh.u64_at(self.side.hb_at).load(Ordering::Relaxed);
        Duration::from_nanos(now.saturating_sub(hb.max(self.progress.1))) > limit
    }
}

/// The sending end. One per channel (attaching a second is `RoleTaken`).
#[derive(Debug)]
pub struct Sender {
    sh: Arc<Shared>,
    prod: Producer,
    peer: PeerWatch,
    mode: WaitMode,
    me: End,
}

impl Sender {
    /// The largest message this channel carries.
    pub fn max_message(&self) -> usize {
        self.sh.layout.max_message as usize
    }

    /// How blocking calls wait (default: spin briefly, then futex).
    pub fn set_wait_mode(&mut self, mode: WaitMode) {
        self.mode = mode;
    }

    /// Treat the receiver as dead when, while we wait for it, it shows no sign of
    /// life for longer than `timeout` (a hung peer): no heartbeat, and no move of
    /// its position in the ring since our first look at it. A receiver beats while
    /// it waits and on [`Receiver::heartbeat`]; busy receivers that never wait must
    /// call that. Blocking calls then sleep no longer than `timeout` at a time.
    pub fn set_peer_timeout(&mut self, timeout: Option<Duration>) {
        self.peer.set_timeout(timeout);
    }

    /// Records that this end is alive (see [`Receiver::set_peer_timeout`]).
    pub fn heartbeat(&self) {
        beat(&self.sh, self.me);
    }

    /// How long a wait on this end's wake descriptor (after
    /// [`arm_wake`](Self::arm_wake) said to sleep) may last before the end must look
    /// at the receiver itself by arming again. `None`: only a wake can end it
    /// usefully, and the receiver's death or close writes the descriptor. Otherwise
    /// a bound: 50 ms without the process's watcher thread (no pidfd, a child forked
    /// since the watcher started, or a watcher that stopped), 1 s with it when
    /// something else asks for looks (a peer timeout, which also caps the bound, or
    /// a channel created before layout 2.3), 1 ms where a wake might be missed.
    pub fn max_sleep(&self) -> Option<Duration> {
        self.peer.max_sleep(&self.sh)
    }

    /// Copies `msg` into the ring and commits it, or fails at once with `Full`.
    #[inline]
    pub fn try_send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        let mut g = self.try_reserve(msg.len())?;
        copy_bytes(&mut g, msg);
        g.commit();
        Ok(())
    }

    /// Like [`Sender::try_send`], waiting up to `timeout` (`None`: forever) for room.
    #[inline]
    pub fn send(&mut self, msg: &[u8], timeout: Option<Duration>) -> Result<(), SendError> {
        let mut g = self.reserve(msg.len(), timeout)?;
        copy_bytes(&mut g, msg);
        g.commit();
        Ok(())
    }

    /// Reserves `len` bytes in place, or fails at once with `Full`.
    #[inline]
    pub fn try_reserve(&mut self, len: usize) -> Result<Grant<'_>, SendError> {
        match self.prod.reserve(&*self.sh, len) {
            Ok(slot) => Ok(Grant { tx: self, slot }),
            Err(e) => Err(self.reserve_error(e, len)),
        }
    }

    /// Reserves `len` bytes in place, waiting up to `timeout` (`None`: forever) for
    /// room. Write the message into the [`Grant`] and [`commit`](Grant::commit) it.
    #[inline]
    pub fn reserve(&mut self, len: usize, timeout: Option<Duration>) -> Result<Grant<'_>, SendError> {
        match self.prod.reserve(&*self.sh, len) {
            Ok(slot) => Ok(Grant { tx: self, slot }),
            Err(ReserveError::Full) => self.reserve_slow(len, timeout),
            Err(e) => Err(self.reserve_error(e, len)),
        }
    }

    /// [`Sender::reserve`] once the ring was found full: wait for room.
    #[cold]
    fn reserve_slow(&mut self, len: usize, timeout: Option<Duration>) -> Result<Grant<'_>, SendError> {
        let mut wait = Wait::new(timeout);
        let got = loop {
            let (sh, prod) = (&self.sh, &mut self.prod);
            let prepare = || prod.prepare_wait(&**sh, len, WAIT_FUTEX);
            match wait.pause(sh, self.mode, &mut self.peer, self.me, sh.tx_wait(), prepare) {
                Ok(()) => {}
                Err(Stop::Peer(PeerState::Closed)) => break Err(SendError::Closed),
                Err(Stop::Peer(_)) => break Err(SendError::PeerDead),
                Err(Stop::TimedOut) => break Err(SendError::TimedOut),
            }
            match self.prod.reserve(&*self.sh, len) {
                Ok(slot) => break Ok(slot),
                Err(ReserveError::Full) => {}
                Err(e) => break Err(self.reserve_error(e, len)),
            }
        };
        wait.finish(self.sh.tx_wait());
        Ok(Grant { tx: self, slot: got? })
    }

    fn reserve_error(&mut self, e: ReserveError, len: usize) -> SendError {
        match e {
            ReserveError::TooLarge => SendError::TooLarge { len, max: self.max_message() },
            ReserveError::Corrupted(why) => SendError::Corrupted(why),
            ReserveError::Full => match self.peer.check_now_and_then(&self.sh) {
                PeerState::Closed => SendError::Closed,
                PeerState::Dead => SendError::PeerDead,
                PeerState::Absent | PeerState::Alive => SendError::Full,
            },
        }
    }

    /// Commits every message of `msgs` as one batch, or none of them: the records
    /// are written, then published with a single store of the producer position,
    /// and the receiver is woken at most once. `Full` when the whole batch does not
    /// fit right now; [`SendError::BatchTooLarge`] when it could never fit (its
    /// records take more than half the ring); `TooLarge` when one message is over
    /// the maximum. An empty batch sends nothing. A receiver sees all of a batch or
    /// none of it, even if this process dies while writing it.
    ///
    /// ```
    /// # use berth_ipc::{Channel, Config};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let chan = Channel::create_memfd(&Config::new(4096))?;
    /// let (mut tx, mut rx) = (chan.sender()?, chan.receiver()?);
    /// tx.try_send_batch(&[&b"one"[..], b"two", b"three"])?;
    /// let mut got = Vec::new();
    /// assert_eq!(rx.try_recv_batch(16, |m| got.push(m.to_vec()))?, 3);
    /// assert_eq!(got, [&b"one"[..], b"two", b"three"]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_send_batch<M: AsRef<[u8]>>(&mut self, msgs: &[M]) -> Result<(), SendError> {
        self.check_batch(msgs)?;
        match self.stage_batch(msgs) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.reserve_error(e, 0)),
        }
    }

    /// Like [`Sender::try_send_batch`], waiting up to `timeout` (`None`: forever)
    /// for room for the whole batch.
    pub fn send_batch<M: AsRef<[u8]>>(&mut self, msgs: &[M], timeout: Option<Duration>) -> Result<(), SendError> {
        self.check_batch(msgs)?;
        match self.stage_batch(msgs) {
            Ok(()) => return Ok(()),
            Err(ReserveError::Full) => {}
            Err(e) => return Err(self.reserve_error(e, 0)),
        }
        let mut wait = Wait::new(timeout);
        let got = loop {
            let (sh, prod) = (&self.sh, &mut self.prod);
            let prepare = || prod.prepare_wait_batch(&**sh, msgs.iter().map(|m| m.as_ref().len()), WAIT_FUTEX);
            match wait.pause(sh, self.mode, &mut self.peer, self.me, sh.tx_wait(), prepare) {
                Ok(()) => {}
                Err(Stop::Peer(PeerState::Closed)) => break Err(SendError::Closed),
                Err(Stop::Peer(_)) => break Err(SendError::PeerDead),
                Err(Stop::TimedOut) => break Err(SendError::TimedOut),
            }
            match self.stage_batch(msgs) {
                Ok(()) => break Ok(()),
                Err(ReserveError::Full) => {}
                Err(e) => break Err(self.reserve_error(e, 0)),
            }
        };
        wait.finish(self.sh.tx_wait());
        got
    }

    /// The checks that make a batch committable whole in an empty ring: every
    /// message within the maximum, and the records within half the ring (then even
    /// the padding of a wrap fits).
    fn check_batch<M: AsRef<[u8]>>(&self, msgs: &[M]) -> Result<(), SendError> {
        let max = self.max_message();
        let mut bytes = 0u64;
        for m in msgs {
            let len = m.as_ref().len();
            if len > max {
                return Err(SendError::TooLarge { len, max });
            }
            bytes = bytes.saturating_add(record_size(len as u64));
        }
        let half = self.sh.layout.capacity / 2;
        if bytes > half {
            return Err(SendError::BatchTooLarge { bytes, max: half });
        }
        Ok(())
    }

    /// Writes and stages every message, then publishes once. Whether the whole
    /// batch fits is known before anything is copied (a sender waiting for room
    /// retries this without rewriting the batch each time); should a reservation
    /// fail anyway, what was staged is forgotten (none of it was visible).
    fn stage_batch<M: AsRef<[u8]>>(&mut self, msgs: &[M]) -> Result<(), ReserveError> {
        if msgs.is_empty() {
            return Ok(());
        }
        if !self.prod.batch_fits(&*self.sh, msgs.iter().map(|m| m.as_ref().len()))? {
            return Err(ReserveError::Full);
        }
        let start = self.prod.position();
        for m in msgs {
            let m = m.as_ref();
            match self.prod.reserve(&*self.sh, m.len()) {
                Ok(slot) => {
                    // SAFETY: as in `Grant::deref_mut`: the slot is reserved room in
                    // the data area beyond the published tail, written only by us.
                    let dst = unsafe { std::slice::from_raw_parts_mut(self.sh.data(slot.off()), slot.len) };
                    copy_bytes(dst, m);
                    self.prod.stage(&*self.sh, slot, m.len());
                }
                Err(e) => {
                    self.prod.rewind(start);
                    return Err(e);
                }
            }
        }
        let w = self.prod.publish(&*self.sh);
        if w != Wake::No {
            self.sh.wake(off::RX_WAIT, w);
        }
        Ok(())
    }

    /// This end's wake descriptor, if the channel was created with
    /// [`Config::wake_fds`]: it turns readable when the receiver makes room after
    /// [`Sender::arm_wake`] said to sleep.
    /// To wait on in this process: hand it to another only through
    /// [`Channel::send_over`] or [`Channel::wake_fds`] (a named channel's FIFO is
    /// read without a `poll` first while no other process shares it).
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.sh.wake.as_ref().map(|w| w.tx.as_fd())
    }

    /// Prepares to wait in an event loop until a `len`-byte message fits: empties
    /// this end's wake descriptor, flags the receiver to write it when it releases
    /// room, and checks the ring and the peer once more. `Ok(true)`: sleep until
    /// `Sender::as_fd` is readable, then try again. `Ok(false)`: there is room
    /// now; try again at once. The receiver's close or death is an error here, and
    /// wakes a sleeper too: its close always, its death where
    /// [`max_sleep`](Self::max_sleep) is `None` (else arm again within that bound).
    pub fn arm_wake(&mut self, len: usize) -> Result<bool, SendError> {
        let Some(fds) = &self.sh.wake else { return Err(SendError::NoWakeFd) };
        if len > self.max_message() {
            return Err(SendError::TooLarge { len, max: self.max_message() });
        }
        fds.drain(fds.tx.as_fd());
        if !self.prod.prepare_wait(&*self.sh, len, WAIT_FD) {
            return Ok(false);
        }
        // With the flag raised: a death the watcher reports after this check
        // writes our descriptor.
        let gone = match self.peer.check(&self.sh) {
            PeerState::Closed => SendError::Closed,
            PeerState::Dead => SendError::PeerDead,
            PeerState::Absent | PeerState::Alive => {
                self.peer.watch(&self.sh);
                beat(&self.sh, self.me);
                return Ok(true);
            }
        };
        self.sh.tx_wait().store(0, Ordering::Relaxed);
        Err(gone)
    }
}

/// The wake descriptor of a channel created with [`Config::wake_fds`] (see
/// [`Sender::arm_wake`]). A channel without them has none: this is then the
/// channel's file, which `epoll` refuses (`EPERM`), so registering it fails at once
/// instead of waiting forever; [`Sender::wake_fd`] says which it is.
impl AsFd for Sender {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake_fd().unwrap_or(self.sh.fd.as_fd())
    }
}

/// The same descriptor as [`AsFd`], for APIs that still take raw ones (tokio's
/// `AsyncFd`).
impl AsRawFd for Sender {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        close_end(&self.sh, off::TX_FLAGS, off::RX_WAIT);
    }
}

fn remaining(start: Instant, timeout: Duration) -> Option<Duration> {
    timeout.checked_sub(start.elapsed()).filter(|d| !d.is_zero())
}

/// Why a blocking call stopped waiting.
enum Stop {
    /// The peer closed cleanly or died (never `Absent` or `Alive`).
    Peer(PeerState),
    /// The caller's timeout passed.
    TimedOut,
}

/// One blocking call's waiting, shared by [`Sender::reserve`] and [`Receiver::recv`]:
/// spin up to the wait mode's budget, then check the peer and the deadline, beat, and
/// sleep on a futex in slices that grow from [`SLICE_MIN`] to [`SLICE_MAX`]. The clock
/// is read only once spinning is over: no vDSO call on the fast path.
struct Wait {
    timeout: Option<Duration>,
    start: Option<Instant>,
    spins: u32,
    grown: Duration,
}

impl Wait {
    fn new(timeout: Option<Duration>) -> Wait {
        Wait { timeout, start: None, spins: 0, grown: SLICE_MIN }
    }

    /// Called after an attempt that found nothing to do. `prepare` flags this end as
    /// waiting on `word` and says whether sleeping is safe (the ring did not change).
    fn pause(
        &mut self,
        sh: &Arc<Shared>,
        mode: WaitMode,
        peer: &mut PeerWatch,
        me: End,
        word: &AtomicU32,
        prepare: impl FnOnce() -> bool,
    ) -> Result<(), Stop> {
        let budget = match mode {
            WaitMode::Block { spins } => spins,
            WaitMode::BusyPoll => BUSY_CHECK_EVERY,
        };
        if self.spins < budget {
            self.spins += 1;
            std::hint::spin_loop();
            return Ok(());
        }
        // A flag still raised from our last sleep means nobody committed since our
        // last barrier and re-check (that commit would have cleared it), so we may
        // sleep again without another membarrier: an idle blocked end pays only the
        // futex timeout and the liveness check.
        let sleep = matches!(mode, WaitMode::Block { .. }) && (word.load(Ordering::Relaxed) == WAIT_FUTEX || prepare());
        // With our flag raised: a death the watcher thread reports after this check
        // clears the flag, so the sleep below returns at once (see `watch`).
        match peer.check(sh) {
            state @ (PeerState::Closed | PeerState::Dead) => return Err(Stop::Peer(state)),
            PeerState::Absent | PeerState::Alive => {}
        }
        // Without a deadline the clock is not read: a relay backend's wait sits
        // between the relay's wake and its own sleep, on every round trip's path.
        let left = match self.timeout {
            None => Duration::MAX,
            Some(t) => remaining(*self.start.get_or_insert_with(Instant::now), t).ok_or(Stop::TimedOut)?,
        };
        beat(sh, me);
        match mode {
            WaitMode::BusyPoll => self.spins = 0,
            WaitMode::Block { .. } => {
                if sleep {
                    let longest = peer.watch(sh);
                    let slice = left.min(sh.slice_cap(self.grown.min(longest)));
                    // No deadline of the caller's, the watcher thread wakes us on the
                    // peer's death, no heartbeat of the peer's to check and every wake
                    // sure to reach us: only a wake can end this sleep usefully, so it
                    // arms no timer. A timed futex wait sets one up and tears it down
                    // per sleep: about 2.5 µs of each round trip of a relay backend on
                    // a VM (task-clock, issue 18).
                    let untimed = self.timeout.is_none() && peer.wakes_suffice(sh);
                    sys::futex_wait(word, WAIT_FUTEX, (!untimed).then_some(slice));
                    self.grown = (self.grown * 2).min(longest);
                    // A beat on waking: a peer that reads the heartbeat alone (a
                    // channel without the liveness flag) then sees us alive at once.
                    beat(sh, me);
                }
            }
        }
        Ok(())
    }

    /// Lowers our waiter flag once the wait is over, so the peer does not issue a
    /// futex wake for a sleep that ended by timeout.
    fn finish(self, word: &AtomicU32) {
        if word.load(Ordering::Relaxed) != 0 {
            word.store(0, Ordering::Relaxed);
        }
    }
}

/// Records that end `me` is alive.
fn beat(sh: &Shared, me: End) {
    sh.u64_at(me.heartbeat).store(sys::monotonic_ns(), Ordering::Relaxed);
}

/// Marks this end closed (flags word at `flags_at`) and wakes the peer if it sleeps
/// on the flag at `peer_at`.
fn close_end(sh: &Shared, flags_at: usize, peer_at: usize) {
    sh.u32_at(flags_at).fetch_or(FLAG_CLOSED, Ordering::Release);
    std::sync::atomic::fence(Ordering::SeqCst);
    sh.wake(peer_at, Wake::from_flag(sh.u32_at(peer_at).swap(0, Ordering::Relaxed)));
}

/// Room reserved in the ring: write the message through `DerefMut<[u8]>`, then
/// [`commit`](Grant::commit). Dropping it uncommitted aborts: the receiver never
/// sees any of it.
pub struct Grant<'a> {
    tx: &'a mut Sender,
    slot: Slot,
}

impl Grant<'_> {
    /// Publishes the whole reserved length.
    #[inline]
    pub fn commit(self) {
        let len = self.slot.len;
        self.commit_len(len);
    }

    /// Publishes only the first `len` bytes; the rest of the reservation is freed.
    ///
    /// # Panics
    /// If `len` is larger than the reservation.
    #[inline]
    pub fn commit_len(self, len: usize) {
        assert!(len <= self.slot.len, "commit_len({len}) beyond a {}-byte grant", self.slot.len);
        let w = self.tx.prod.commit(&*self.tx.sh, self.slot, len);
        if w != Wake::No {
            self.tx.sh.wake(off::RX_WAIT, w);
        }
    }
}

impl Deref for Grant<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: the slot lies inside the data area (checked by the ring core) beyond
        // the committed tail, where an honest receiver never reads or writes, and
        // `&mut Sender` makes this the only grant. See the crate's trust model for a
        // hostile receiver.
        unsafe { std::slice::from_raw_parts(self.tx.sh.data(self.slot.off()), self.slot.len) }
    }
}

impl DerefMut for Grant<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the slice unique in this process.
        unsafe { std::slice::from_raw_parts_mut(self.tx.sh.data(self.slot.off()), self.slot.len) }
    }
}

impl fmt::Debug for Grant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant").field("len", &self.slot.len).finish()
    }
}

/// The receiving end. One per channel (attaching a second is `RoleTaken`).
#[derive(Debug)]
pub struct Receiver {
    sh: Arc<Shared>,
    cons: Consumer,
    peer: PeerWatch,
    mode: WaitMode,
    me: End,
    /// What became of the last arm (for [`Receiver::disarm_wake`] and
    /// [`Receiver::rearm_wake`]).
    arm: Arm,
}

/// The last arm of a [`Receiver`]'s wake descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    /// None said to sleep (or it failed).
    None,
    /// It said to sleep, and stands.
    Armed,
    /// [`Receiver::disarm_wake`] cleared its flag before the sender could: no wake
    /// was written for it.
    TakenBack,
    /// [`Receiver::disarm_wake`] found its flag cleared by the sender: the wake is
    /// written or on its way.
    WakeComing,
}

impl Receiver {
    /// The largest message this channel carries.
    pub fn max_message(&self) -> usize {
        self.sh.layout.max_message as usize
    }

    /// How blocking calls wait (default: spin briefly, then futex).
    pub fn set_wait_mode(&mut self, mode: WaitMode) {
        self.mode = mode;
    }

    /// Treat the sender as dead when, while we wait for it, it shows no sign of
    /// life for longer than `timeout` (a hung peer): no heartbeat, and no commit
    /// since our first look at its position. A sender beats while it waits and on
    /// [`Sender::heartbeat`]; an idle sender must call that. Blocking calls then
    /// sleep no longer than `timeout` at a time.
    pub fn set_peer_timeout(&mut self, timeout: Option<Duration>) {
        self.peer.set_timeout(timeout);
    }

    /// Records that this end is alive (see [`Sender::set_peer_timeout`]).
    pub fn heartbeat(&self) {
        beat(&self.sh, self.me);
    }

    /// How long a wait on this end's wake descriptor (after
    /// [`arm_wake`](Self::arm_wake) said to sleep) may last before the end must look
    /// at the sender itself by arming again. `None`: only a wake can end it
    /// usefully, and the sender's death or close writes the descriptor. Otherwise a
    /// bound: see [`Sender::max_sleep`].
    pub fn max_sleep(&self) -> Option<Duration> {
        self.peer.max_sleep(&self.sh)
    }

    /// The next message, lent in place until the guard drops, or `Empty` at once.
    /// After the sender closed or died, the messages it committed are still
    /// delivered, then `Closed` / `PeerDead` (a death is noticed within about 10 ms
    /// of calls: the sender's process is checked at most that often).
    #[inline]
    pub fn try_recv(&mut self) -> Result<RecvGuard<'_>, RecvError> {
        match self.cons.poll(&*self.sh) {
            Ok(true) => Ok(RecvGuard { rx: self }),
            Ok(false) => self.try_recv_empty(),
            Err(why) => Err(RecvError::Corrupted(why)),
        }
    }

    /// The ring was empty: publish our position (waking a sender that waits for
    /// room), and say whether the sender is gone.
    #[cold]
    fn try_recv_empty(&mut self) -> Result<RecvGuard<'_>, RecvError> {
        self.flush();
        let gone = match self.peer.check_now_and_then(&self.sh) {
            PeerState::Closed => RecvError::Closed,
            PeerState::Dead => RecvError::PeerDead,
            PeerState::Absent | PeerState::Alive => return Err(RecvError::Empty),
        };
        // It may have committed between our poll and its close or death: deliver that first.
        match self.cons.poll(&*self.sh) {
            Ok(true) => Ok(RecvGuard { rx: self }),
            Ok(false) => Err(gone),
            Err(why) => Err(RecvError::Corrupted(why)),
        }
    }

    /// Publishes the consumer position if a batch is pending; see `Consumer::flush`.
    fn flush(&mut self) {
        let w = self.cons.flush(&*self.sh);
        if w != Wake::No {
            self.sh.wake(off::TX_WAIT, w);
        }
    }

    /// Like [`Receiver::try_recv`], waiting up to `timeout` (`None`: forever).
    #[inline]
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<RecvGuard<'_>, RecvError> {
        match self.cons.poll(&*self.sh) {
            Ok(true) => Ok(RecvGuard { rx: self }),
            Ok(false) => self.recv_slow(timeout),
            Err(why) => Err(RecvError::Corrupted(why)),
        }
    }

    /// [`Receiver::recv`] once the ring was found empty: wait for a record.
    #[cold]
    fn recv_slow(&mut self, timeout: Option<Duration>) -> Result<RecvGuard<'_>, RecvError> {
        let mut wait = Wait::new(timeout);
        let got = loop {
            // Never keep a sender waiting for room behind an unpublished batch.
            self.flush();
            let (sh, cons) = (&self.sh, &mut self.cons);
            let prepare = || cons.prepare_wait(&**sh, WAIT_FUTEX);
            match wait.pause(sh, self.mode, &mut self.peer, self.me, sh.rx_wait(), prepare) {
                Ok(()) => {}
                Err(Stop::TimedOut) => break Err(RecvError::TimedOut),
                // Whatever the peer committed before closing or dying is still delivered.
                Err(Stop::Peer(state)) => match self.cons.poll(&*self.sh) {
                    Ok(true) => break Ok(()),
                    Ok(false) if state == PeerState::Closed => break Err(RecvError::Closed),
                    Ok(false) => break Err(RecvError::PeerDead),
                    Err(why) => break Err(RecvError::Corrupted(why)),
                },
            }
            match self.cons.poll(&*self.sh) {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(why) => break Err(RecvError::Corrupted(why)),
            }
        };
        wait.finish(self.sh.rx_wait());
        got?;
        Ok(RecvGuard { rx: self })
    }

    /// Copies the next message into `buf` and releases it; `BufferTooSmall` leaves it
    /// queued. Returns the message length. Prefer this over the lending calls when
    /// the sender is not trusted (see the crate docs).
    pub fn try_recv_into(&mut self, buf: &mut [u8]) -> Result<usize, RecvError> {
        let g = self.try_recv()?;
        g.copy_to(buf)
    }

    /// Waits for the next message and copies it into a new `Vec`. The length is the
    /// sender's choice (up to [`Receiver::max_message`]): if it cannot be allocated,
    /// the message stays queued and the call returns [`RecvError::OutOfMemory`]
    /// instead of aborting the process.
    pub fn recv_vec(&mut self, timeout: Option<Duration>) -> Result<Vec<u8>, RecvError> {
        let g = self.recv(timeout)?;
        let len = g.len();
        let mut v = Vec::new();
        if v.try_reserve_exact(len).is_err() {
            // Keep the message queued, as `copy_to` does for a short buffer.
            std::mem::forget(g);
            return Err(RecvError::OutOfMemory { len });
        }
        v.resize(len, 0); // within the reserved capacity: no further allocation
        g.copy_to(&mut v)?;
        Ok(v)
    }

    /// Hands up to `limit` messages, in order, to `f`, each lent in place for the
    /// call, or `Empty` (or the sender's close or death, as [`Receiver::try_recv`])
    /// if there is none. The space of the whole batch is given back with at most one
    /// store of the consumer position, and the sender woken at most once. Returns
    /// how many `f` saw (at least one). A panic in `f` leaves that message queued.
    ///
    /// Lending rules as for [`RecvGuard`]: with an untrusted sender, copy in `f`
    /// and validate the copy.
    pub fn try_recv_batch(&mut self, limit: usize, f: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        if limit == 0 {
            return Ok(0);
        }
        std::mem::forget(self.try_recv()?);
        Ok(self.drain_batch(limit, f))
    }

    /// Like [`Receiver::try_recv_batch`], waiting up to `timeout` (`None`: forever)
    /// for the first message.
    pub fn recv_batch(
        &mut self,
        limit: usize,
        timeout: Option<Duration>,
        f: impl FnMut(&[u8]),
    ) -> Result<usize, RecvError> {
        if limit == 0 {
            return Ok(0);
        }
        // The guard is forgotten, not dropped: its record stays current, unreleased.
        std::mem::forget(self.recv(timeout)?);
        Ok(self.drain_batch(limit, f))
    }

    /// Lends the current record and those after it (up to `limit`) to `f`, moving
    /// past each, then publishes the position once. A corrupted record ends the
    /// batch; the next call reports it.
    fn drain_batch(&mut self, limit: usize, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        let empty = loop {
            let slot = self.cons.current();
            // SAFETY: as in `RecvGuard::deref`: a committed record inside the data
            // area, lent for the call only, while `&mut self` keeps every other
            // guard away.
            f(unsafe { std::slice::from_raw_parts(self.sh.data(slot.off()), slot.len) });
            self.cons.advance(slot);
            n += 1;
            if n == limit {
                break false;
            }
            match self.cons.poll(&*self.sh) {
                Ok(true) => {}
                Ok(false) | Err(_) => break true,
            }
        };
        // One publication: everything when the ring was found empty (as
        // `try_recv` does), else by the batch-size rule.
        let w = if empty { self.cons.flush(&*self.sh) } else { self.cons.settle(&*self.sh) };
        if w != Wake::No {
            self.sh.wake(off::TX_WAIT, w);
        }
        n
    }

    /// This end's wake descriptor, if the channel was created with
    /// [`Config::wake_fds`]: it turns readable when the sender commits after
    /// [`Receiver::arm_wake`] said to sleep.
    /// To wait on in this process: hand it to another only through
    /// [`Channel::send_over`] or [`Channel::wake_fds`] (a named channel's FIFO is
    /// read without a `poll` first while no other process shares it).
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.sh.wake.as_ref().map(|w| w.rx.as_fd())
    }

    /// Prepares to wait in an event loop: empties this end's wake descriptor,
    /// publishes the consumer position, flags the sender to write the descriptor
    /// at its next commit, and checks the ring and the peer once more.
    /// `Ok(true)`: sleep until `Receiver::as_fd` ([`AsFd`](std::os::fd::AsFd)) is readable, then call
    /// [`Receiver::try_recv`] again. `Ok(false)`: a message is there; receive it
    /// at once. A sender that closed or died with nothing left to read is
    /// `Closed` / `PeerDead` here, and its close wakes a sleeper too; its death does
    /// where [`max_sleep`](Self::max_sleep) is `None` (else arm again within that
    /// bound).
    ///
    /// The flag is what makes the sender pay a syscall, and only for a receiver
    /// that said it sleeps: while both ends are busy, nobody writes the descriptor.
    pub fn arm_wake(&mut self) -> Result<bool, RecvError> {
        self.arm_wake_draining(true)
    }

    /// [`Receiver::arm_wake`] for an event loop that knows whether the descriptor
    /// was readable when it last waited on it (say `true` if it did not wait, or
    /// does not know). With `was_readable` false and this end still flagged from
    /// its last arm, or that flag taken back by [`Receiver::disarm_wake`] — so no
    /// wake was written for that arm, nor by the watcher — the descriptor is not
    /// emptied first: one syscall less per sleep for an end
    /// that sleeps on several channels and was not the one woken. A wake that was
    /// still on its way from an earlier arm then makes the next wait return at
    /// once (a spurious wake-up, never a lost one); say `true` after that one.
    pub fn rearm_wake(&mut self, was_readable: bool) -> Result<bool, RecvError> {
        let still_armed = self.sh.rx_wait().load(Ordering::Relaxed) == WAIT_FD;
        self.arm_wake_draining(was_readable || !(still_armed || self.arm == Arm::TakenBack))
    }

    /// Takes back what the last [`arm_wake`](Receiver::arm_wake) (or
    /// [`rearm_wake`](Receiver::rearm_wake)) said: this end woke for something
    /// else, is busy, and will look at the ring (and arm again) before it next
    /// sleeps — so the sender's next commit need not write the descriptor. An event
    /// loop that forwards a request and expects the answer on this channel calls it
    /// first: a peer on the same core that answers before this end sleeps again
    /// then pays no write, and this end no wake-up and no read.
    ///
    /// Returns `true` if a wake is written or on its way anyway (the sender
    /// committed since the last arm that said to sleep): the descriptor turns
    /// readable, as after any wake. `false`: no wake is coming for an arm — it was
    /// taken back here, or nothing was armed (a spurious one, as after any arm that
    /// raced a commit, stays possible); a [`rearm_wake(false)`](Receiver::rearm_wake)
    /// then arms again without emptying the descriptor. Costs one atomic swap;
    /// harmless when nothing is armed.
    pub fn disarm_wake(&mut self) -> bool {
        if self.cons.take_back_wait(&*self.sh) {
            self.arm = Arm::TakenBack;
        } else if self.arm == Arm::Armed {
            // The sender cleared the flag first: its wake is on its way.
            self.arm = Arm::WakeComing;
        }
        self.arm == Arm::WakeComing
    }

    fn arm_wake_draining(&mut self, drain: bool) -> Result<bool, RecvError> {
        let armed = self.arm_wake_inner(drain);
        self.arm = if armed == Ok(true) { Arm::Armed } else { Arm::None };
        armed
    }

    fn arm_wake_inner(&mut self, drain: bool) -> Result<bool, RecvError> {
        let Some(fds) = &self.sh.wake else { return Err(RecvError::NoWakeFd) };
        // Before the flag: a wake written after the flag must stay readable.
        if drain {
            fds.drain(fds.rx.as_fd());
        }
        self.flush();
        if !self.cons.prepare_wait(&*self.sh, WAIT_FD) {
            return Ok(false);
        }
        let gone = match self.peer.check(&self.sh) {
            PeerState::Closed => RecvError::Closed,
            PeerState::Dead => RecvError::PeerDead,
            PeerState::Absent | PeerState::Alive => {
                // A death after the check: the watcher writes our descriptor.
                self.peer.watch(&self.sh);
                beat(&self.sh, self.me);
                return Ok(true);
            }
        };
        self.sh.rx_wait().store(0, Ordering::Relaxed);
        // What it committed before closing or dying is still delivered first.
        match self.cons.poll(&*self.sh) {
            Ok(false) => Err(gone),
            Ok(true) | Err(_) => Ok(false),
        }
    }
}

/// The wake descriptor of a channel created with [`Config::wake_fds`] (see
/// [`Receiver::arm_wake`]). A channel without them has none: this is then the
/// channel's file, which `epoll` refuses (`EPERM`), so registering it fails at once
/// instead of waiting forever; [`Receiver::wake_fd`] says which it is.
impl AsFd for Receiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake_fd().unwrap_or(self.sh.fd.as_fd())
    }
}

/// The same descriptor as [`AsFd`], for APIs that still take raw ones (tokio's
/// `AsyncFd`).
impl AsRawFd for Receiver {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.flush();
        close_end(&self.sh, off::RX_FLAGS, off::TX_WAIT);
    }
}

/// A received message, lent in place: `Deref<Target = [u8]>`. Dropping it gives the
/// space back to the sender.
pub struct RecvGuard<'a> {
    rx: &'a mut Receiver,
}

impl RecvGuard<'_> {
    /// Copies the message out with volatile reads (no assumption that the bytes hold
    /// still) and releases it; `BufferTooSmall` if `buf` is too short.
    pub fn copy_to(self, buf: &mut [u8]) -> Result<usize, RecvError> {
        let slot = self.rx.cons.current();
        let len = slot.len;
        let Some(dst) = buf.get_mut(..len) else {
            // Keep the message queued: forget nothing, release nothing.
            let err = RecvError::BufferTooSmall { len, buf: buf.len() };
            std::mem::forget(self);
            return Err(err);
        };
        let src = self.rx.sh.data(slot.off());
        // SAFETY: [off, off + len) is inside the data area (validated by the ring core),
        // and `dst` is exactly `len` bytes.
        unsafe { volatile_copy(src, dst) };
        Ok(len)
    }
}

impl Deref for RecvGuard<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        let slot = self.rx.cons.current();
        // SAFETY: the slot is a committed record inside the data area (bounds checked
        // against the capacity by the ring core); an honest sender does not write it
        // until we release it, and `&mut Receiver` makes this the only guard. See the
        // crate's trust model for a hostile sender.
        unsafe { std::slice::from_raw_parts(self.rx.sh.data(slot.off()), slot.len) }
    }
}

impl Drop for RecvGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        let slot = self.rx.cons.current();
        let w = self.rx.cons.release(&*self.rx.sh, slot);
        if w != Wake::No {
            self.rx.sh.wake(off::TX_WAIT, w);
        }
    }
}

impl fmt::Debug for RecvGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvGuard").field("len", &self.rx.cons.current().len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fenced channel's sleepers issue no membarrier, on the creator's side and on
    /// the side that mapped it from its header; an unfenced channel's sleepers issue
    /// one per sleep.
    ///
    /// Proven by mutation: `Layout::parse` ignoring `ABI_FENCED` fails the opener's
    /// count (its sender would also publish without the fence the creator's
    /// sleepers count on); `heavy_barrier` ignoring `fenced` fails both.
    #[test]
    fn only_an_unfenced_channel_pays_a_membarrier_per_sleep() {
        let membarriers = || sys::MEMBARRIERS.with(|n| n.get());
        for fenced in [false, true] {
            let chan = Channel::create_memfd(&Config::new(4096).wake_fds(true).fenced(fenced)).unwrap();
            let (rx_wake, tx_wake) = chan.wake_fds().unwrap();
            let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().unwrap();
            let opened = Channel::from_fds(dup(chan.as_fd()), dup(rx_wake), dup(tx_wake)).unwrap();
            let (mut tx, mut rx) = (opened.sender().unwrap(), chan.receiver().unwrap());
            while tx.try_send(&[7; 100]).is_ok() {}
            let before = membarriers();
            assert_eq!(tx.arm_wake(100), Ok(true), "a full ring: the sender sleeps");
            let by_sender = membarriers() - before;
            while rx.try_recv().is_ok() {}
            let before = membarriers();
            assert_eq!(rx.arm_wake(), Ok(true), "an empty ring: the receiver sleeps");
            let by_receiver = membarriers() - before;
            let want = if fenced { 0 } else { 1 };
            assert_eq!((by_sender, by_receiver), (want, want), "membarriers per sleep, fenced: {fenced}");
        }
    }
}
