//! The C ABI of [berth-ipc](https://docs.rs/berth-ipc): a shared-memory
//! single-producer single-consumer channel between processes, for C, Python
//! (`ctypes`) and any language that can call C.
//!
//! Built as a `cdylib` (`libberth_ipc_ffi.so`) and a `staticlib`
//! (`libberth_ipc_ffi.a`). The header `include/berth_ipc.h` is generated from
//! this file by cbindgen and committed; a test fails when it is stale.
//!
//! # Model
//!
//! Handles are 64-bit ids, not pointers: a channel (`BerthIpcChannel`), its one
//! sender (`BerthIpcSender`) and its one receiver (`BerthIpcReceiver`). Every
//! function returns a status code (`BERTH_IPC_OK` or another `BERTH_IPC_*`);
//! [`berth_ipc_error_message`] names a code and [`berth_ipc_last_error`] gives
//! the details of the last failure to open or create on this thread.
//!
//! Nothing a caller passes can cause undefined behaviour inside the library as
//! long as the pointers it passes are NULL or valid for what the function says:
//! NULL pointers are `BERTH_IPC_NULL`, unknown or closed handles
//! `BERTH_IPC_BAD_HANDLE`, a length over the maximum `BERTH_IPC_TOO_LARGE`, a
//! second thread inside the same handle `BERTH_IPC_BUSY`, and a Rust panic
//! `BERTH_IPC_PANIC` (caught; it never unwinds into C).
//!
//! Lending: [`berth_ipc_recv`] gives a pointer into the ring, valid until
//! [`berth_ipc_release`]; [`berth_ipc_reserve`] gives room in the ring, published
//! by [`berth_ipc_commit`]. The same rules as in Rust apply to the lent bytes; with
//! an untrusted peer, copy them out ([`berth_ipc_recv_copy`]) before checking them.
//!
//! # Example (from Rust, as a C program would call it)
//!
//! ```
//! use berth_ipc_ffi::*;
//!
//! let (mut ch, mut tx, mut rx) = (0, 0, 0);
//! // SAFETY: every pointer is a valid out-parameter or a buffer of the given length.
//! unsafe {
//!     assert_eq!(berth_ipc_channel_create(4096, 0, 0, &mut ch), BERTH_IPC_OK);
//!     assert_eq!(berth_ipc_sender_open(ch, &mut tx), BERTH_IPC_OK);
//!     assert_eq!(berth_ipc_receiver_open(ch, &mut rx), BERTH_IPC_OK);
//!     assert_eq!(berth_ipc_try_send(tx, b"hi".as_ptr(), 2), BERTH_IPC_OK);
//!     let (mut buf, mut len) = ([0u8; 16], 0usize);
//!     assert_eq!(berth_ipc_recv_copy(rx, buf.as_mut_ptr(), buf.len(), &mut len, 1000), BERTH_IPC_OK);
//!     assert_eq!(&buf[..len], b"hi");
//!     for code in [berth_ipc_sender_close(tx), berth_ipc_receiver_close(rx), berth_ipc_channel_close(ch)] {
//!         assert_eq!(code, BERTH_IPC_OK);
//!     }
//! }
//! ```

use std::cell::RefCell;
use std::ffi::{CStr, c_char};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use berth_ipc::{Channel, Config, OpenError, Receiver, RecvError, SendError, Sender};

mod table;

use table::{HandleError, Table};

/// A channel: the mapped ring, from which one sender and one receiver are opened.
pub type BerthIpcChannel = u64;
/// The sending end of a channel.
pub type BerthIpcSender = u64;
/// The receiving end of a channel.
pub type BerthIpcReceiver = u64;

/// Success.
pub const BERTH_IPC_OK: i32 = 0;
/// Nothing to receive right now (the non-blocking calls).
pub const BERTH_IPC_EMPTY: i32 = 1;
/// No room in the ring right now (the non-blocking calls).
pub const BERTH_IPC_FULL: i32 = 2;
/// The timeout passed.
pub const BERTH_IPC_TIMED_OUT: i32 = 3;
/// The peer closed its end cleanly (for a receiver: after everything it sent was read).
pub const BERTH_IPC_CLOSED: i32 = 4;
/// The peer's process died (for a receiver: after everything it committed was read).
pub const BERTH_IPC_PEER_DEAD: i32 = 5;
/// A message longer than the channel's maximum, or a batch larger than half the ring.
pub const BERTH_IPC_TOO_LARGE: i32 = 6;
/// The shared ring holds impossible values: a buggy or hostile peer. Close the channel.
pub const BERTH_IPC_CORRUPTED: i32 = 7;
/// A pointer argument was NULL.
pub const BERTH_IPC_NULL: i32 = 8;
/// The handle is 0, was never issued, or was closed.
pub const BERTH_IPC_BAD_HANDLE: i32 = 9;
/// Another thread is inside a call on this handle. Use each end from one thread.
pub const BERTH_IPC_BUSY: i32 = 10;
/// A call out of order: commit without reserve, a second reserve, receive while a
/// record is lent, release with none lent.
pub const BERTH_IPC_STATE: i32 = 11;
/// An invalid argument: a name, a capacity, a descriptor number, a length.
pub const BERTH_IPC_INVALID: i32 = 12;
/// Creating or opening a channel failed; see `berth_ipc_last_error`.
pub const BERTH_IPC_OPEN_FAILED: i32 = 13;
/// Another process already holds this end of the channel.
pub const BERTH_IPC_ROLE_TAKEN: i32 = 14;
/// The channel was created without wake descriptors (`BERTH_IPC_WAKE_FDS`).
pub const BERTH_IPC_NO_WAKE_FD: i32 = 15;
/// Too many handles are open in this process (1024 of each kind).
pub const BERTH_IPC_NO_HANDLES: i32 = 16;
/// A bug: a panic inside the library was caught. The handle stays unusable; close it.
pub const BERTH_IPC_PANIC: i32 = 17;
/// The copy-out buffer is too small; the message stays queued and `*len` says its size.
pub const BERTH_IPC_BUFFER_TOO_SMALL: i32 = 18;

/// Flag of `berth_ipc_channel_create*`: give each end a wake descriptor that
/// `poll`/`epoll` can wait on (`berth_ipc_receiver_wake_fd`, `berth_ipc_receiver_arm`).
pub const BERTH_IPC_WAKE_FDS: u32 = 1;
/// Flag of `berth_ipc_channel_create*`: a fenced channel (berth-ipc's
/// `Config::fenced`). Every publication pays a full fence, so an end about to sleep
/// needs no `membarrier(2)`: the cheaper choice when the ends sleep often (a
/// request/reply link such as `berth relay`'s lanes), the dearer one for a stream
/// that rarely sleeps. The flag is in the channel's header: a reader built before
/// it refuses the channel (`BERTH_IPC_OPEN_FAILED`), and the other end needs no flag.
pub const BERTH_IPC_FENCED: u32 = 2;

/// A sender and whether a reservation is pending (its length).
struct TxEnd {
    tx: Sender,
    reserved: Option<usize>,
}

/// A receiver and whether a record is lent.
struct RxEnd {
    rx: Receiver,
    lent: bool,
}

static CHANNELS: Table<Channel> = Table::new(1);
static SENDERS: Table<TxEnd> = Table::new(2);
static RECEIVERS: Table<RxEnd> = Table::new(3);

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_last_error(msg: impl std::fmt::Display) {
    let _ = LAST_ERROR.try_with(|e| {
        let mut e = e.borrow_mut();
        e.clear();
        use std::fmt::Write;
        let _ = write!(e, "{msg}");
    });
}

/// Runs a call's body; a panic becomes `BERTH_IPC_PANIC` instead of unwinding into C.
fn call(f: impl FnOnce() -> Result<(), i32>) -> i32 {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => BERTH_IPC_OK,
        Ok(Err(code)) => code,
        Err(_) => {
            set_last_error("a panic inside berth-ipc-ffi (a bug): the handle is unusable; close it");
            BERTH_IPC_PANIC
        }
    }
}

fn handle_code(e: HandleError) -> i32 {
    match e {
        HandleError::Bad => BERTH_IPC_BAD_HANDLE,
        HandleError::Busy => BERTH_IPC_BUSY,
        HandleError::Poisoned => BERTH_IPC_PANIC,
        HandleError::Full => BERTH_IPC_NO_HANDLES,
    }
}

fn recv_code(e: RecvError) -> i32 {
    match e {
        RecvError::Empty => BERTH_IPC_EMPTY,
        RecvError::Closed => BERTH_IPC_CLOSED,
        RecvError::PeerDead => BERTH_IPC_PEER_DEAD,
        RecvError::TimedOut => BERTH_IPC_TIMED_OUT,
        RecvError::BufferTooSmall { .. } => BERTH_IPC_BUFFER_TOO_SMALL,
        RecvError::NoWakeFd => BERTH_IPC_NO_WAKE_FD,
        _ => BERTH_IPC_CORRUPTED,
    }
}

fn send_code(e: SendError) -> i32 {
    match e {
        SendError::Full => BERTH_IPC_FULL,
        SendError::TooLarge { .. } | SendError::BatchTooLarge { .. } => BERTH_IPC_TOO_LARGE,
        SendError::Closed => BERTH_IPC_CLOSED,
        SendError::PeerDead => BERTH_IPC_PEER_DEAD,
        SendError::TimedOut => BERTH_IPC_TIMED_OUT,
        SendError::NoWakeFd => BERTH_IPC_NO_WAKE_FD,
        _ => BERTH_IPC_CORRUPTED,
    }
}

fn open_code(e: OpenError) -> i32 {
    let code = match e {
        OpenError::RoleTaken { .. } => BERTH_IPC_ROLE_TAKEN,
        OpenError::InvalidName(_)
        | OpenError::InvalidConfig(_)
        | OpenError::CapacityNotPowerOfTwo { .. }
        | OpenError::CapacityOutOfRange { .. } => BERTH_IPC_INVALID,
        _ => BERTH_IPC_OPEN_FAILED,
    };
    set_last_error(e);
    code
}

/// `timeout_ms < 0`: wait forever.
fn timeout(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// Writes `v` through an out-parameter.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, v: T) -> Result<(), i32> {
    if out.is_null() {
        return Err(BERTH_IPC_NULL);
    }
    // SAFETY: not NULL, and valid for a write by the caller's contract.
    unsafe { out.write(v) };
    Ok(())
}

/// A channel name from C.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
unsafe fn name<'a>(name: *const c_char) -> Result<&'a str, i32> {
    if name.is_null() {
        return Err(BERTH_IPC_NULL);
    }
    // SAFETY: a NUL-terminated string by the caller's contract.
    let name = unsafe { CStr::from_ptr(name) };
    name.to_str().map_err(|_| {
        set_last_error("the channel name is not UTF-8");
        BERTH_IPC_INVALID
    })
}

fn config(capacity: u64, max_message: u64, flags: u32) -> Result<Config, i32> {
    if flags & !(BERTH_IPC_WAKE_FDS | BERTH_IPC_FENCED) != 0 {
        set_last_error(format!("unknown flags {flags:#x}"));
        return Err(BERTH_IPC_INVALID);
    }
    let mut cfg = Config::new(capacity).wake_fds(flags & BERTH_IPC_WAKE_FDS != 0).fenced(flags & BERTH_IPC_FENCED != 0);
    if max_message != 0 {
        cfg = cfg.max_message(max_message);
    }
    Ok(cfg)
}

fn new_channel(made: Result<Channel, OpenError>, out: *mut BerthIpcChannel) -> Result<(), i32> {
    if out.is_null() {
        return Err(BERTH_IPC_NULL);
    }
    let id = CHANNELS.insert(made.map_err(open_code)?).map_err(handle_code)?;
    // SAFETY: checked not NULL above; valid for a write by the caller's contract.
    unsafe { out.write(id) };
    Ok(())
}

/// A slice from C: `data` may be NULL only when `len` is 0.
///
/// # Safety
/// `data` is NULL or valid for reads of `len` bytes for `'a`.
unsafe fn bytes<'a>(data: *const u8, len: usize) -> Result<&'a [u8], i32> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(BERTH_IPC_NULL);
    }
    // SAFETY: not NULL, and readable for `len` bytes by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

/// The text of a status code: a static NUL-terminated string, never NULL.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn berth_ipc_error_message(code: i32) -> *const c_char {
    let s: &'static CStr = match code {
        BERTH_IPC_OK => c"ok",
        BERTH_IPC_EMPTY => c"ring empty",
        BERTH_IPC_FULL => c"ring full",
        BERTH_IPC_TIMED_OUT => c"timed out",
        BERTH_IPC_CLOSED => c"peer closed its end",
        BERTH_IPC_PEER_DEAD => c"peer process is dead",
        BERTH_IPC_TOO_LARGE => c"message (or batch) larger than the channel allows",
        BERTH_IPC_CORRUPTED => c"shared ring state corrupted (buggy or hostile peer)",
        BERTH_IPC_NULL => c"NULL pointer argument",
        BERTH_IPC_BAD_HANDLE => c"unknown or closed handle",
        BERTH_IPC_BUSY => c"another thread is inside a call on this handle",
        BERTH_IPC_STATE => c"call out of order (commit without reserve, receive while a record is lent...)",
        BERTH_IPC_INVALID => c"invalid argument",
        BERTH_IPC_OPEN_FAILED => c"could not create or open the channel",
        BERTH_IPC_ROLE_TAKEN => c"this end of the channel is already attached",
        BERTH_IPC_NO_WAKE_FD => c"the channel has no wake descriptors",
        BERTH_IPC_NO_HANDLES => c"too many open handles",
        BERTH_IPC_PANIC => c"internal error (a caught panic); close the handle",
        BERTH_IPC_BUFFER_TOO_SMALL => c"buffer too small for the message",
        _ => c"unknown status code",
    };
    s.as_ptr()
}

/// Copies the message of the last failure to create or open on this thread (and
/// of some `BERTH_IPC_INVALID` and `BERTH_IPC_PANIC` results) into `buf`,
/// NUL-terminated and truncated to `cap` bytes. Returns the message's full length
/// (without the NUL); 0 if there is none. `buf` may be NULL when `cap` is 0.
/// Thread-safe (the message is per thread).
///
/// # Safety
/// `buf` is NULL or valid for writes of `cap` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_last_error(buf: *mut c_char, cap: usize) -> usize {
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        LAST_ERROR
            .try_with(|e| {
                let e = e.borrow();
                if !buf.is_null() && cap > 0 {
                    let n = e.len().min(cap - 1);
                    // SAFETY: `buf` is valid for `cap` bytes and n + 1 <= cap.
                    unsafe {
                        std::ptr::copy_nonoverlapping(e.as_ptr().cast::<c_char>(), buf, n);
                        buf.add(n).write(0);
                    }
                }
                e.len()
            })
            .unwrap_or(0)
    }));
    r.unwrap_or(0)
}

/// Creates an anonymous channel (a memfd) with a ring of `capacity` bytes (a power
/// of two, 64 B ..= 1 TiB) carrying messages of up to `max_message` bytes (0: the
/// default, half the ring less 8). `flags`: 0, or `BERTH_IPC_WAKE_FDS` and/or
/// `BERTH_IPC_FENCED` (or-ed). Pass it to
/// another process with `berth_ipc_channel_fd` (and `berth_ipc_channel_wake_fds`)
/// and `berth_ipc_channel_from_fd` there. Thread-safe.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_channel_create(
    capacity: u64,
    max_message: u64,
    flags: u32,
    out: *mut BerthIpcChannel,
) -> i32 {
    call(|| new_channel(Channel::create_memfd(&config(capacity, max_message, flags)?), out))
}

/// Creates the named channel `/dev/shm/berth-ipc.<name>` (mode 0600, exclusively:
/// an existing name is `BERTH_IPC_OPEN_FAILED`), and with `BERTH_IPC_WAKE_FDS` its
/// wake FIFOs beside it; `flags` as in `berth_ipc_channel_create`. `name`: 1 to 200 bytes of `[A-Za-z0-9._-]`. Thread-safe.
///
/// # Safety
/// `name` is NULL or NUL-terminated; `out` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_channel_create_named(
    name: *const c_char,
    capacity: u64,
    max_message: u64,
    flags: u32,
    out: *mut BerthIpcChannel,
) -> i32 {
    call(|| {
        // SAFETY: the caller's contract.
        let name = unsafe { self::name(name) }?;
        new_channel(Channel::create_named(name, &config(capacity, max_message, flags)?), out)
    })
}

/// Opens a named channel made by `berth_ipc_channel_create_named` (in this or
/// any process of the same user), with its wake FIFOs if it has them. Thread-safe.
///
/// # Safety
/// `name` is NULL or NUL-terminated; `out` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_channel_open_named(name: *const c_char, out: *mut BerthIpcChannel) -> i32 {
    call(|| {
        // SAFETY: the caller's contract.
        let name = unsafe { self::name(name) }?;
        new_channel(Channel::open_named(name), out)
    })
}

/// Removes a named channel's file and wake FIFOs; processes that opened it keep
/// using it. Thread-safe.
///
/// # Safety
/// `name` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_channel_unlink_named(name: *const c_char) -> i32 {
    call(|| {
        // SAFETY: the caller's contract.
        let name = unsafe { self::name(name) }?;
        Channel::unlink_named(name).map_err(open_code)
    })
}

/// Maps a channel from a descriptor received from (or inherited from) the process
/// that created it: `fd` is its memfd, `rx_wake_fd` and `tx_wake_fd` its wake
/// descriptors (-1 for a channel without them). The library owns all three from
/// this call on, whether it succeeds or not. Thread-safe.
///
/// # Safety
/// `out` is NULL or valid for a write; each descriptor is -1 or an open
/// descriptor that nothing else will close or use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_channel_from_fd(
    fd: i32,
    rx_wake_fd: i32,
    tx_wake_fd: i32,
    out: *mut BerthIpcChannel,
) -> i32 {
    call(|| {
        // SAFETY: by the caller's contract each non-negative number is an open
        // descriptor handed over to us.
        let own = |n: i32| (n >= 0).then(|| unsafe { OwnedFd::from_raw_fd(n) });
        let (fd, rx, tx) = (own(fd), own(rx_wake_fd), own(tx_wake_fd));
        let made = match (fd, rx, tx) {
            (Some(fd), None, None) => Channel::from_fd(fd),
            (Some(fd), Some(rx), Some(tx)) => Channel::from_fds(fd, rx, tx),
            _ => {
                set_last_error("need a channel descriptor and either both wake descriptors or neither");
                return Err(BERTH_IPC_INVALID);
            }
        };
        new_channel(made, out)
    })
}

/// The channel's memfd (owned by the handle: do not close it), to pass to a
/// child process or over a Unix socket. Thread-safe.
///
/// # Safety
/// `fd` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_channel_fd(ch: BerthIpcChannel, fd: *mut i32) -> i32 {
    call(|| {
        let c = CHANNELS.get(ch).map_err(handle_code)?;
        // SAFETY: the caller's contract.
        unsafe { put(fd, c.as_fd().as_raw_fd()) }
    })
}

/// The channel's wake descriptors (owned by the handle), to pass along with its
/// memfd; `BERTH_IPC_NO_WAKE_FD` for a channel created without them. Thread-safe.
///
/// # Safety
/// `rx_wake_fd` and `tx_wake_fd` are NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_channel_wake_fds(
    ch: BerthIpcChannel,
    rx_wake_fd: *mut i32,
    tx_wake_fd: *mut i32,
) -> i32 {
    call(|| {
        let c = CHANNELS.get(ch).map_err(handle_code)?;
        let (rx, tx) = c.wake_fds().ok_or(BERTH_IPC_NO_WAKE_FD)?;
        // SAFETY: the caller's contract.
        unsafe { put(rx_wake_fd, rx.as_raw_fd()).and(put(tx_wake_fd, tx.as_raw_fd())) }
    })
}

/// Lets child processes started later inherit the channel's descriptors (`on`
/// nonzero: clears close-on-exec), or stops that. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn berth_ipc_channel_set_inheritable(ch: BerthIpcChannel, on: i32) -> i32 {
    call(|| {
        let c = CHANNELS.get(ch).map_err(handle_code)?;
        c.set_inheritable(on != 0).map_err(|e| {
            set_last_error(e);
            BERTH_IPC_OPEN_FAILED
        })
    })
}

/// The largest message the channel carries. Thread-safe.
///
/// # Safety
/// `max` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_channel_max_message(ch: BerthIpcChannel, max: *mut u64) -> i32 {
    call(|| {
        let c = CHANNELS.get(ch).map_err(handle_code)?;
        // SAFETY: the caller's contract.
        unsafe { put(max, c.max_message() as u64) }
    })
}

/// Closes a channel handle. Ends opened from it keep working. Thread-safe;
/// `BERTH_IPC_BUSY` if another thread is inside a call on it.
#[unsafe(no_mangle)]
pub extern "C" fn berth_ipc_channel_close(ch: BerthIpcChannel) -> i32 {
    call(|| CHANNELS.remove(ch).map(drop).map_err(handle_code))
}

/// Attaches this process as the channel's only sender. Thread-safe.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_sender_open(ch: BerthIpcChannel, out: *mut BerthIpcSender) -> i32 {
    call(|| {
        if out.is_null() {
            return Err(BERTH_IPC_NULL);
        }
        let tx = CHANNELS.get(ch).map_err(handle_code)?.sender().map_err(open_code)?;
        let id = SENDERS.insert(TxEnd { tx, reserved: None }).map_err(handle_code)?;
        // SAFETY: the caller's contract.
        unsafe { put(out, id) }
    })
}

/// Attaches this process as the channel's only receiver. Thread-safe.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_receiver_open(ch: BerthIpcChannel, out: *mut BerthIpcReceiver) -> i32 {
    call(|| {
        if out.is_null() {
            return Err(BERTH_IPC_NULL);
        }
        let rx = CHANNELS.get(ch).map_err(handle_code)?.receiver().map_err(open_code)?;
        let id = RECEIVERS.insert(RxEnd { rx, lent: false }).map_err(handle_code)?;
        // SAFETY: the caller's contract.
        unsafe { put(out, id) }
    })
}

/// Takes a sender for one call, refusing it while a reservation is pending.
fn sender(tx: BerthIpcSender) -> Result<table::Held<'static, TxEnd>, i32> {
    let t = SENDERS.get(tx).map_err(handle_code)?;
    if t.reserved.is_some() {
        return Err(BERTH_IPC_STATE);
    }
    Ok(t)
}

/// Copies `len` bytes from `data` into the ring as one message, waiting up to
/// `timeout_ms` for room (negative: forever). `BERTH_IPC_TOO_LARGE` over the
/// maximum; `BERTH_IPC_CLOSED` / `BERTH_IPC_PEER_DEAD` when the receiver is gone.
/// Thread-safe (`BERTH_IPC_BUSY` if another thread is inside this sender).
///
/// # Safety
/// `data` is NULL or valid for reads of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_send(tx: BerthIpcSender, data: *const u8, len: usize, timeout_ms: i64) -> i32 {
    call(|| {
        // SAFETY: the caller's contract.
        let msg = unsafe { bytes(data, len) }?;
        sender(tx)?.tx.send(msg, timeout(timeout_ms)).map_err(send_code)
    })
}

/// Like `berth_ipc_send`, failing at once with `BERTH_IPC_FULL` when there is no
/// room. Thread-safe as `berth_ipc_send`.
///
/// # Safety
/// `data` is NULL or valid for reads of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_try_send(tx: BerthIpcSender, data: *const u8, len: usize) -> i32 {
    call(|| {
        // SAFETY: the caller's contract.
        let msg = unsafe { bytes(data, len) }?;
        sender(tx)?.tx.try_send(msg).map_err(send_code)
    })
}

/// Reserves `len` bytes in the ring and stores their address in `*buf`: write
/// the message there, then `berth_ipc_commit` (or `berth_ipc_abort`). Waits up to
/// `timeout_ms` for room (0: not at all, `BERTH_IPC_FULL`; negative: forever).
/// Until the commit or abort, the other sending calls return `BERTH_IPC_STATE`.
/// Thread-safe as `berth_ipc_send`.
///
/// # Safety
/// `buf` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_reserve(tx: BerthIpcSender, len: usize, timeout_ms: i64, buf: *mut *mut u8) -> i32 {
    call(|| {
        if buf.is_null() {
            return Err(BERTH_IPC_NULL);
        }
        let mut t = sender(tx)?;
        let mut grant = if timeout_ms == 0 { t.tx.try_reserve(len) } else { t.tx.reserve(len, timeout(timeout_ms)) }
            .map_err(send_code)?;
        // A grant left uncommitted publishes nothing; the commit reserves the same
        // room again (the producer's position has not moved) and publishes it.
        let ptr = grant.as_mut_ptr();
        t.reserved = Some(len);
        // SAFETY: checked not NULL above; valid for a write by the caller's contract.
        unsafe { buf.write(ptr) };
        Ok(())
    })
}

/// Publishes the first `len` bytes (at most the reserved length) of the pending
/// reservation as one message. Thread-safe as `berth_ipc_send`.
#[unsafe(no_mangle)]
pub extern "C" fn berth_ipc_commit(tx: BerthIpcSender, len: usize) -> i32 {
    call(|| {
        let mut t = SENDERS.get(tx).map_err(handle_code)?;
        let reserved = t.reserved.ok_or(BERTH_IPC_STATE)?;
        if len > reserved {
            return Err(BERTH_IPC_TOO_LARGE);
        }
        // The same room as at `berth_ipc_reserve`: it fitted then, and only our own
        // commits move the producer's position.
        let grant = t.tx.try_reserve(reserved).map_err(send_code)?;
        grant.commit_len(len);
        t.reserved = None;
        Ok(())
    })
}

/// Drops the pending reservation: nothing of it is ever seen. Thread-safe as
/// `berth_ipc_send`.
#[unsafe(no_mangle)]
pub extern "C" fn berth_ipc_abort(tx: BerthIpcSender) -> i32 {
    call(|| {
        let mut t = SENDERS.get(tx).map_err(handle_code)?;
        t.reserved.take().map(drop).ok_or(BERTH_IPC_STATE)
    })
}

/// The sender's wake descriptor (owned by the handle): it turns readable when
/// room appears after `berth_ipc_sender_arm` said to sleep. `BERTH_IPC_NO_WAKE_FD`
/// for a channel created without `BERTH_IPC_WAKE_FDS`. Thread-safe.
///
/// # Safety
/// `fd` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_sender_wake_fd(tx: BerthIpcSender, fd: *mut i32) -> i32 {
    call(|| {
        let t = SENDERS.get(tx).map_err(handle_code)?;
        let w = t.tx.wake_fd().ok_or(BERTH_IPC_NO_WAKE_FD)?;
        // SAFETY: the caller's contract.
        unsafe { put(fd, w.as_raw_fd()) }
    })
}

/// Prepares to wait in `poll`/`epoll` until a `len`-byte message fits: sets
/// `*sleep` to 1 if the caller should now wait for the sender's wake descriptor
/// to turn readable, 0 if there is room already (send at once).
/// `BERTH_IPC_CLOSED` / `BERTH_IPC_PEER_DEAD` when the receiver is gone.
/// Thread-safe as `berth_ipc_send`.
///
/// # Safety
/// `sleep` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_sender_arm(tx: BerthIpcSender, len: usize, sleep: *mut i32) -> i32 {
    call(|| {
        if sleep.is_null() {
            return Err(BERTH_IPC_NULL);
        }
        let armed = sender(tx)?.tx.arm_wake(len).map_err(send_code)?;
        // SAFETY: the caller's contract.
        unsafe { put(sleep, i32::from(armed)) }
    })
}

/// How long a wait on the sender's wake descriptor, after `berth_ipc_sender_arm`
/// said to sleep, may last before the caller must arm again (which looks at the
/// receiver itself): `*ms` = -1 when only a wake can end it usefully (the
/// receiver's close or death writes the descriptor), else a bound in ms, rounded
/// up (50 without this process's watcher thread, 1 where a wake might be missed).
/// Pass it to `poll`/`epoll_wait` as the timeout. Thread-safe as `berth_ipc_send`.
///
/// # Safety
/// `ms` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_sender_max_sleep_ms(tx: BerthIpcSender, ms: *mut i32) -> i32 {
    call(|| {
        let bound = sender(tx)?.tx.max_sleep();
        // SAFETY: the caller's contract.
        unsafe { put(ms, poll_ms(bound)) }
    })
}

/// `max_sleep` as `poll`'s timeout: -1 for none, else whole ms rounded up.
fn poll_ms(bound: Option<Duration>) -> i32 {
    bound.map_or(-1, |d| i32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX))
}

/// Closes the sender: the receiver gets everything sent so far, then
/// `BERTH_IPC_CLOSED`. A pending reservation is dropped. Thread-safe;
/// `BERTH_IPC_BUSY` if another thread is inside a call on it.
#[unsafe(no_mangle)]
pub extern "C" fn berth_ipc_sender_close(tx: BerthIpcSender) -> i32 {
    call(|| SENDERS.remove(tx).map(drop).map_err(handle_code))
}

/// Takes a receiver for one call, refusing it while a record is lent.
fn receiver(rx: BerthIpcReceiver) -> Result<table::Held<'static, RxEnd>, i32> {
    let r = RECEIVERS.get(rx).map_err(handle_code)?;
    if r.lent {
        return Err(BERTH_IPC_STATE);
    }
    Ok(r)
}

/// Lends the next message: `*data` and `*len` describe it in place, valid until
/// `berth_ipc_release` (which must come before the next receive). Waits up to
/// `timeout_ms` (negative: forever). After the sender closed or died, its
/// committed messages still come first, then `BERTH_IPC_CLOSED` /
/// `BERTH_IPC_PEER_DEAD`. Thread-safe (`BERTH_IPC_BUSY` if another thread is
/// inside this receiver).
///
/// # Safety
/// `data` and `len` are NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_recv(
    rx: BerthIpcReceiver,
    timeout_ms: i64,
    data: *mut *const u8,
    len: *mut usize,
) -> i32 {
    // SAFETY: the caller's contract.
    call(|| unsafe { lend(rx, Some(timeout_ms), data, len) })
}

/// Like `berth_ipc_recv`, answering `BERTH_IPC_EMPTY` at once when there is
/// nothing. Thread-safe as `berth_ipc_recv`.
///
/// # Safety
/// `data` and `len` are NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_try_recv(rx: BerthIpcReceiver, data: *mut *const u8, len: *mut usize) -> i32 {
    // SAFETY: the caller's contract.
    call(|| unsafe { lend(rx, None, data, len) })
}

/// # Safety
/// `data` and `len` are NULL or valid for a write.
unsafe fn lend(rx: BerthIpcReceiver, wait: Option<i64>, data: *mut *const u8, len: *mut usize) -> Result<(), i32> {
    if data.is_null() || len.is_null() {
        return Err(BERTH_IPC_NULL);
    }
    let mut r = receiver(rx)?;
    let guard = match wait {
        Some(ms) => r.rx.recv(timeout(ms)),
        None => r.rx.try_recv(),
    }
    .map_err(recv_code)?;
    let (ptr, n) = (guard.as_ptr(), guard.len());
    // Kept current, unreleased, until `berth_ipc_release` receives it again.
    std::mem::forget(guard);
    r.lent = true;
    // SAFETY: checked not NULL above; valid for writes by the caller's contract.
    unsafe {
        data.write(ptr);
        len.write(n);
    }
    Ok(())
}

/// Gives the lent message's space back to the sender. Thread-safe as
/// `berth_ipc_recv`.
#[unsafe(no_mangle)]
pub extern "C" fn berth_ipc_release(rx: BerthIpcReceiver) -> i32 {
    call(|| {
        let mut r = RECEIVERS.get(rx).map_err(handle_code)?;
        if !r.lent {
            return Err(BERTH_IPC_STATE);
        }
        // The lent record is still the receiver's current one: receiving again
        // finds it, and dropping the guard releases it.
        drop(r.rx.try_recv().map_err(recv_code)?);
        r.lent = false;
        Ok(())
    })
}

/// Copies the next message into `buf` (`cap` bytes) and releases it; `*len` is
/// its length. `BERTH_IPC_BUFFER_TOO_SMALL` leaves it queued, with `*len` set.
/// Waits up to `timeout_ms` (0: not at all, `BERTH_IPC_EMPTY`; negative:
/// forever). The copy reads the ring with volatile loads: prefer it when the
/// sender is not trusted. Thread-safe as `berth_ipc_recv`.
///
/// # Safety
/// `buf` is NULL or valid for writes of `cap` bytes; `len` is NULL or valid for
/// a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_recv_copy(
    rx: BerthIpcReceiver,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
    timeout_ms: i64,
) -> i32 {
    call(|| {
        if len.is_null() || (buf.is_null() && cap > 0) {
            return Err(BERTH_IPC_NULL);
        }
        let mut r = receiver(rx)?;
        let guard =
            if timeout_ms == 0 { r.rx.try_recv() } else { r.rx.recv(timeout(timeout_ms)) }.map_err(recv_code)?;
        let n = guard.len();
        // SAFETY: checked not NULL above; valid for a write by the caller's contract.
        unsafe { len.write(n) };
        let dst: &mut [u8] = if cap == 0 {
            &mut []
        } else {
            // SAFETY: not NULL, writable for `cap` bytes by the caller's contract.
            unsafe { std::slice::from_raw_parts_mut(buf, cap) }
        };
        guard.copy_to(dst).map(drop).map_err(recv_code)
    })
}

/// The receiver's wake descriptor (owned by the handle): it turns readable when a
/// message arrives after `berth_ipc_receiver_arm` said to sleep.
/// `BERTH_IPC_NO_WAKE_FD` for a channel created without `BERTH_IPC_WAKE_FDS`.
/// Thread-safe.
///
/// # Safety
/// `fd` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_receiver_wake_fd(rx: BerthIpcReceiver, fd: *mut i32) -> i32 {
    call(|| {
        let r = RECEIVERS.get(rx).map_err(handle_code)?;
        let w = r.rx.wake_fd().ok_or(BERTH_IPC_NO_WAKE_FD)?;
        // SAFETY: the caller's contract.
        unsafe { put(fd, w.as_raw_fd()) }
    })
}

/// Prepares to wait in `poll`/`epoll` for a message: sets `*sleep` to 1 if the
/// caller should now wait for the receiver's wake descriptor to turn readable
/// (then receive again), 0 if a message is there (receive at once).
/// `BERTH_IPC_CLOSED` / `BERTH_IPC_PEER_DEAD` once the sender is gone and
/// everything it sent was read. The sender writes the descriptor only after this
/// call, so a busy stream costs no syscall. Thread-safe as `berth_ipc_recv`.
///
/// # Safety
/// `sleep` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_receiver_arm(rx: BerthIpcReceiver, sleep: *mut i32) -> i32 {
    call(|| {
        if sleep.is_null() {
            return Err(BERTH_IPC_NULL);
        }
        let armed = receiver(rx)?.rx.arm_wake().map_err(recv_code)?;
        // SAFETY: the caller's contract.
        unsafe { put(sleep, i32::from(armed)) }
    })
}

/// How long a wait on the receiver's wake descriptor, after
/// `berth_ipc_receiver_arm` said to sleep, may last before the caller must arm
/// again (which looks at the sender itself): `*ms` = -1 when only a wake can end
/// it usefully (the sender's close or death writes the descriptor), else a bound
/// in ms, rounded up (50 without this process's watcher thread, 1 where a wake
/// might be missed). Pass it to `poll`/`epoll_wait` as the timeout. Thread-safe as
/// `berth_ipc_recv`.
///
/// # Safety
/// `ms` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn berth_ipc_receiver_max_sleep_ms(rx: BerthIpcReceiver, ms: *mut i32) -> i32 {
    call(|| {
        let bound = receiver(rx)?.rx.max_sleep();
        // SAFETY: the caller's contract.
        unsafe { put(ms, poll_ms(bound)) }
    })
}

/// Closes the receiver; a waiting sender gets `BERTH_IPC_CLOSED`. A lent message
/// is not released (it was never consumed). Thread-safe; `BERTH_IPC_BUSY` if
/// another thread is inside a call on it.
#[unsafe(no_mangle)]
pub extern "C" fn berth_ipc_receiver_close(rx: BerthIpcReceiver) -> i32 {
    call(|| RECEIVERS.remove(rx).map(drop).map_err(handle_code))
}
