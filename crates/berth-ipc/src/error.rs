//! Error types: opening a channel, sending and receiving.

use std::io;

/// Why a channel could not be created, opened or attached to.
///
/// Everything a file or a peer controls ends up here as a value, never as a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file is shorter than the header page or than the layout it describes.
    #[error("channel file too short: {len} bytes, need at least {need}")]
    TooShort {
        /// The file's length.
        len: u64,
        /// The length the header (or the layout it describes) needs.
        need: u64,
    },
    /// The first eight bytes are not `BERTHIPC`: not a berth channel.
    #[error("not a berth-ipc channel (bad magic)")]
    BadMagic,
    /// The file was written by an incompatible major version of the layout.
    #[error("channel layout version {found_major}.{found_minor}, this build reads {supported_major}.x")]
    VersionMismatch {
        /// The file's major version.
        found_major: u16,
        /// The file's minor version.
        found_minor: u16,
        /// The major version this build understands.
        supported_major: u16,
    },
    /// The file was written with ABI flags (byte order, unknown features) we cannot honour.
    #[error("channel ABI flags {found:#x}, this build needs {expected:#x}")]
    AbiMismatch {
        /// The file's flags.
        found: u32,
        /// The flags this build writes and accepts.
        expected: u32,
    },
    /// The ring capacity is not a power of two.
    #[error("ring capacity {capacity} is not a power of two")]
    CapacityNotPowerOfTwo {
        /// The capacity found (or asked for).
        capacity: u64,
    },
    /// The ring capacity is a power of two but outside the supported range.
    #[error("ring capacity {capacity} outside {min}..={max}")]
    CapacityOutOfRange {
        /// The capacity found (or asked for).
        capacity: u64,
        /// Smallest supported capacity.
        min: u64,
        /// Largest supported capacity.
        max: u64,
    },
    /// A length or offset in the header points outside the mapping or breaks an invariant.
    #[error("channel header field out of bounds: {what}")]
    LayoutOutOfBounds {
        /// Which field.
        what: &'static str,
    },
    /// The creator has not finished writing the header (or died while doing so).
    #[error("channel not ready (creator still initialising or died during creation)")]
    NotReady,
    /// A named channel file belongs to another user.
    #[error("channel file owned by uid {owner}, we are uid {us}")]
    NotOwner {
        /// The file's owner.
        owner: u32,
        /// Our effective uid.
        us: u32,
    },
    /// A named channel file is readable or writable by group or others.
    #[error("channel file mode {mode:o} grants access beyond its owner")]
    BadPermissions {
        /// The file's permission bits.
        mode: u32,
    },
    /// The path is not a regular file (a symlink, a directory, a FIFO...).
    #[error("channel path is not a regular file")]
    NotRegularFile,
    /// A descriptor handed to us is not sealed against shrinking (an unsealed memfd,
    /// a plain or `/dev/shm` file): its sender could truncate it under our mapping
    /// (SIGBUS hazard).
    #[error("channel descriptor is not sealed against shrinking")]
    NotSealed,
    /// A channel name must be 1..=200 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
    #[error("invalid channel name {0:?}")]
    InvalidName(String),
    /// Invalid creation parameters.
    #[error("invalid channel config: {0}")]
    InvalidConfig(&'static str),
    /// Another live process already holds this end of the channel.
    #[error("the {role} end is already attached by pid {pid}")]
    RoleTaken {
        /// `"sender"` or `"receiver"`.
        role: &'static str,
        /// The holder's pid.
        pid: u32,
    },
    /// The channel has wake descriptors (it was created with
    /// [`Config::wake_fds`](crate::Config::wake_fds)) but they were not handed over:
    /// open it with [`Channel::from_fds`](crate::Channel::from_fds) or
    /// [`Channel::recv_from`](crate::Channel::recv_from), which take them too.
    #[error("the channel has wake descriptors, and they were not given")]
    WakeFdsMissing,
    /// A wake descriptor is not an eventfd or a FIFO of ours, or wake descriptors
    /// were given for a channel created without them.
    #[error("bad wake descriptor")]
    BadWakeFd,
    /// No channel descriptor arrived over the socket.
    #[error("no file descriptor received")]
    NoFdReceived,
    /// An OS call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why a message was not sent. In every case nothing was written that the receiver
/// could see: the message is either fully committed or not at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No room in the ring right now (only from the non-blocking calls).
    #[error("ring full")]
    Full,
    /// The message is larger than the channel's maximum message length.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The channel's maximum.
        max: usize,
    },
    /// The receiver closed its end cleanly.
    #[error("receiver closed")]
    Closed,
    /// The receiver's process died (or showed no sign of life for the peer timeout).
    #[error("receiver process is dead")]
    PeerDead,
    /// The timeout passed before room appeared.
    #[error("timed out waiting for room")]
    TimedOut,
    /// A batch's records take more than half the ring: it could never be
    /// committed whole. Nothing was sent.
    #[error("a batch of {bytes} ring bytes exceeds the maximum of {max}")]
    BatchTooLarge {
        /// Ring bytes the batch's records need (headers and padding included).
        bytes: u64,
        /// Half the ring's capacity.
        max: u64,
    },
    /// The channel was created without wake descriptors: there is nothing to
    /// wait on in an event loop.
    #[error("the channel has no wake descriptors")]
    NoWakeFd,
    /// The consumer position in shared memory is impossible: a buggy or hostile peer.
    #[error("shared ring state corrupted: {0}")]
    Corrupted(&'static str),
}

/// Why no message was received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// Nothing to read right now (only from the non-blocking calls).
    #[error("ring empty")]
    Empty,
    /// The sender closed its end cleanly and every message it sent has been read.
    #[error("sender closed")]
    Closed,
    /// The sender's process died (or showed no sign of life for the peer timeout); every message it committed
    /// has been read, a message it left half-written is dropped.
    #[error("sender process is dead")]
    PeerDead,
    /// The timeout passed before a message arrived.
    #[error("timed out waiting for a message")]
    TimedOut,
    /// The channel was created without wake descriptors: there is nothing to
    /// wait on in an event loop.
    #[error("the channel has no wake descriptors")]
    NoWakeFd,
    /// A record header or position in shared memory is impossible: a buggy or hostile
    /// peer. The channel stays unusable (every later call returns this again).
    #[error("shared ring state corrupted: {0}")]
    Corrupted(&'static str),
    /// The destination buffer of a copy-out is too small; the message stays queued.
    #[error("buffer of {buf} bytes too small for a {len}-byte message")]
    BufferTooSmall {
        /// The message's length.
        len: usize,
        /// The buffer's length.
        buf: usize,
    },
    /// [`Receiver::recv_vec`](crate::Receiver::recv_vec) could not allocate a `Vec`
    /// for the message (its length is the sender's choice, up to the channel's
    /// maximum); the message stays queued.
    #[error("cannot allocate {len} bytes for a message")]
    OutOfMemory {
        /// The message's length.
        len: usize,
    },
}
