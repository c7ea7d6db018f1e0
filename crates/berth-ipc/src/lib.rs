//! A shared-memory channel between processes: a single-producer single-consumer
//! byte ring in a mapped file.
//!
//! The seed's `MemoryMappedFileComms` had one slot with a 4-byte length: a second
//! write overwrote a message nobody had read, and a crashed peer left the other side
//! waiting forever. Here a [`Sender`] appends length-prefixed records to a ring in a
//! shared mapping and a [`Receiver`] reads them in place, in order, each exactly once.
//! A full ring is [`SendError::Full`] (or a wait), never an overwrite. Waiting sleeps
//! on a futex, so a blocked end costs no CPU; a dead peer is reported as
//! [`RecvError::PeerDead`] / [`SendError::PeerDead`] within milliseconds. A
//! [`Duplex`] puts two rings back to back for request/reply.
//!
//! # Example
//!
//! ```
//! use berth_ipc::{Channel, Config};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // An anonymous channel: hand it to another process with `send_over` (SCM_RIGHTS)
//! // or by inheritance; here both ends live in one process.
//! let chan = Channel::create_memfd(&Config::new(64 * 1024))?;
//! let mut tx = chan.sender()?;
//! let mut rx = chan.receiver()?;
//!
//! tx.try_send(b"hello")?;
//! let mut grant = tx.reserve(5, Some(Duration::from_secs(1)))?; // write in place
//! grant.copy_from_slice(b"world");
//! grant.commit();
//!
//! assert_eq!(&*rx.recv(Some(Duration::from_secs(1)))?, b"hello"); // lent in place
//! assert_eq!(rx.recv_vec(None)?, b"world"); // copied out
//! # Ok(())
//! # }
//! ```
//!
//! # Creating and sharing a channel
//!
//! - [`Channel::create_memfd`]: an anonymous memfd sealed against shrinking and
//!   growing. Pass it with [`Channel::send_over`] / [`Channel::recv_from`] over a
//!   Unix socket, or let a child inherit it ([`Channel::set_inheritable`] and
//!   [`Channel::from_fd`], which accept only descriptors sealed against shrinking).
//!   It leaves nothing in the file system, even after `kill -9` of both ends.
//! - [`Channel::create_named`] / [`Channel::open_named`]: `/dev/shm/berth-ipc.<name>`,
//!   created with `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600; opening refuses
//!   symlinks, files of another owner and files readable by group or others.
//!   [`Channel::unlink_named`] removes one; [`Channel::cleanup_stale`] removes those
//!   whose creator and both ends are dead.
//!
//! Either end may create the channel; each process then attaches with
//! [`Channel::sender`] or [`Channel::receiver`] (one of each per channel).
//!
//! # Waiting in an event loop
//!
//! A channel created with [`Config::wake_fds`] gives each end a descriptor that
//! `epoll`, mio or tokio's `AsyncFd` can wait on: `Receiver::as_fd` ([`AsFd`](std::os::fd::AsFd)) turns
//! readable for "data ready", `Sender::as_fd` for "room ready". The loop is:
//! try ([`Receiver::try_recv`] / [`Receiver::try_recv_batch`]); on `Empty`, call
//! [`Receiver::arm_wake`]; if it says to sleep, wait for readability, then try
//! again. Arming empties the descriptor, raises this end's waiter flag with the
//! value 2 (see [Wake protocol](#wake-protocol)) and re-checks the ring, as a futex
//! sleep does, so the peer writes the descriptor only for an end that said it
//! sleeps: a busy stream makes no syscall. Bound the wait by
//! [`Receiver::max_sleep`]: `None` means a wake is sure to end it (the peer's
//! death too, written by the watcher thread); otherwise arm again when it passes,
//! which looks at the peer itself.
//!
//! ```
//! use berth_ipc::{Channel, Config, RecvError};
//! use std::os::fd::AsFd;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let chan = Channel::create_memfd(&Config::new(4096).wake_fds(true))?;
//! let (mut tx, mut rx) = (chan.sender()?, chan.receiver()?);
//! std::thread::spawn(move || tx.send(b"ready", None));
//! let msg = loop {
//!     match rx.try_recv() {
//!         Ok(m) => break m.to_vec(),
//!         Err(RecvError::Empty) => {}
//!         Err(e) => return Err(e.into()),
//!     }
//!     if rx.arm_wake()? {
//!         // Any poller will do; here poll(2) through rustix.
//!         let fd = rx.as_fd();
//!         let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
//!         let bound = rx.max_sleep().map(|d| rustix::event::Timespec::try_from(d).unwrap());
//!         rustix::event::poll(&mut fds, bound.as_ref())?;
//!     }
//! };
//! assert_eq!(msg, b"ready");
//! # Ok(())
//! # }
//! ```
//!
//! How the descriptors reach the peer: a memfd channel's are two eventfds, sent
//! with the memfd by [`Channel::send_over`] (one `SCM_RIGHTS` message) or
//! inherited and opened with [`Channel::from_fds`]. A named channel's are two
//! FIFOs beside its file (`/dev/shm/berth-ipc-wake.<name>.rx` / `.tx`, mode 0600),
//! which [`Channel::open_named`] opens by name with the file's own checks (ours,
//! not a symlink, no group or other access). FIFOs, rather than the alternatives:
//! `pidfd_getfd` needs ptrace rights over the peer (refused between sibling
//! processes under Yama's default, and by many container profiles); a Unix-socket
//! handoff needs a listener and a rendezvous protocol on both sides; and no
//! pollable kernel object can live in the shared mapping itself (a futex cannot
//! be polled). A FIFO is found by name like the file, is pollable, and a write
//! to it wakes `epoll` like an eventfd's.
//!
//! # Batches
//!
//! [`Sender::try_send_batch`] / [`Sender::send_batch`] commit several messages
//! with one store of the producer position and at most one wake; the receiver
//! sees the whole batch or none of it, even if the sender dies while writing it.
//! [`Receiver::try_recv_batch`] / [`Receiver::recv_batch`] lend up to `limit`
//! messages to a closure and give their space back with at most one store of the
//! consumer position and one wake (as Aeron's `poll(limit)` does).
//!
//! # On-disk layout (version 2.3)
//!
//! All integers are little-endian (ABI flag bit 0; a big-endian build writes 0 there
//! and the two refuse each other's files). Offsets in bytes from the start of the file.
//!
//! | offset | type | field |
//! | ---: | --- | --- |
//! | 0 | `[u8; 8]` | magic `BERTHIPC` |
//! | 8 | u16 | major version (2); readers refuse another major |
//! | 10 | u16 | minor version (3); additions readers of the same major may ignore |
//! | 12 | u32 | ABI flags: bit 0 = little-endian; bit 1 = wake descriptors (since 2.1: a waiter flag may be 2, see below); bit 2 = fenced (since 2.2: every publication fences, sleepers need no membarrier, see below); bit 3 = position liveness (since 2.3, set on every channel this crate creates: a peer timeout counts the peer's ring position as a sign of life, so an end may sleep with no timer, see below); readers refuse any other bit |
//! | 16 | u32 | header length = 4096 |
//! | 20 | u32 | record alignment = 8 |
//! | 24 | u64 | capacity C of the data area: a power of two, 64 ..= 2^40 |
//! | 32 | u64 | max message M: 1 ..= min(C/2 − 8, 2^32 − 9) |
//! | 40 | u64 | data offset D = 4096 |
//! | 48 | u64 | total length = D + C (the file is at least this long) |
//! | 56 | u32 | creator pid |
//! | 60 | u32 | state: 0 = initialising, 1 = ready; written last, with release ordering |
//! | 64 | u64 | creator start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) |
//! | 128 | u64 | **tail**: bytes ever committed by the sender (monotonic) |
//! | 136 | u32 | sender pid (0 until attached; claimed by compare-and-swap) |
//! | 140 | u32 | sender flags: bit 0 = closed cleanly |
//! | 144 | u64 | sender start time |
//! | 152 | u64 | sender heartbeat (`CLOCK_MONOTONIC` ns) |
//! | 256 | u64 | **head**: bytes released by the receiver (monotonic), published in batches |
//! | 264 | u32 | receiver pid |
//! | 268 | u32 | receiver flags: bit 0 = closed cleanly |
//! | 272 | u64 | receiver start time |
//! | 280 | u64 | receiver heartbeat |
//! | 384 | u32 | receiver waiter flag (a futex word): 0 = awake, 1 = sleeps (or is about to) on this word, 2 = sleeps on its wake descriptor |
//! | 512 | u32 | sender waiter flag: the same, waiting for room |
//! | D | `[u8; C]` | the ring |
//!
//! Tail and head each sit on their own 128-byte line, the futex words on lines of
//! their own, so neither end's hot writes invalidate the other's hot reads.
//!
//! A position `p` addresses ring byte `p mod C`; its *lap* is `p / C`. A record
//! starts at an 8-aligned position with an 8-byte header word, followed by `len`
//! payload bytes padded to a multiple of 8:
//!
//! | byte | type | field |
//! | ---: | --- | --- |
//! | 0 | u32 | `len`: payload bytes |
//! | 4 | u8 | type: 1 = message, 2 = padding |
//! | 5 | u8 | 0 |
//! | 6 | u16 | lap tag: the low 16 bits of the lap of the record's position |
//!
//! When a record would cross the end of the ring, the sender writes a padding
//! record whose `len` covers exactly the rest of the ring (`C − offset − 8`) and
//! puts the message at offset 0 (tagged with the next lap).
//!
//! **Commit.** The sender writes the payload, then the header word (at a wrap: the
//! message's header at offset 0 and the padding header), then publishes everything
//! with one release store of `tail`. The receiver reads `tail` (acquire) only when
//! the records it already knows of are used up, and never reads past it, so it
//! never touches bytes the sender is still writing and never takes stale bytes of
//! an earlier lap for a header. Under `tail`, every record must be whole: a header
//! whose lap tag is not the lap of its position (erased, left over from an earlier
//! lap), a length beyond `tail` or beyond the end of the ring, or an unknown type
//! is corruption.
//!
//! **Release.** The receiver publishes `head` (release store) every `C/4` bytes,
//! whenever it finds the ring empty, and whenever the sender's futex word says it
//! waits for room; between publications the sender may see less room than there
//! is. The sender re-reads `head` only when its cached copy says full.
//!
//! # Wake protocol
//!
//! Both ends spin briefly ([`WaitMode::Block`]), then sleep. The receiver publishes
//! `head`, stores 1 in its futex word, issues a sequentially consistent fence and
//! `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, re-reads `tail`, and only if still
//! empty calls `futex_wait(word, 1)`. The sender, after the release store of
//! `tail`, reads the word with a plain load; only if it is nonzero does it swap it
//! to 0, and then it calls `futex_wake` if the value was 1 and writes the
//! receiver's wake descriptor (eight bytes: an eventfd's 1) if it was 2. An end
//! that sleeps on its descriptor ([`Receiver::arm_wake`]) first empties it, then
//! stores 2 instead of 1 and goes through the same barrier and re-check, then
//! waits for the descriptor to turn readable; the protocol is otherwise the
//! futex one, and loom checks it too. A sender waiting for room does the
//! same on its own word with `head`, and the receiver checks that word whenever it
//! releases a record (publishing `head` at once if it is set).
//!
//! A sleep that ends by timeout with the word still 1 proves that no commit came
//! after the barrier (it would have cleared the word), so the next sleep needs no
//! new barrier: an idle blocked end pays only the timeout and a liveness check.
//!
//! The classic Dekker handshake needs a StoreLoad barrier on *both* sides, which
//! would put an `mfence` on every commit and release. Here the barrier is
//! asymmetric: every process that attaches an end registers with
//! `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED`, so the sleeper's membarrier makes
//! every running thread of both processes execute a full barrier before it returns.
//! Wherever that barrier falls in the sender's instruction stream, either the
//! sender's tail store is visible to the receiver's re-check, or the sender's flag
//! load comes after the receiver's flag store (loom checks the protocol with the
//! barrier pair modelled as two fences, and shows a wake-up is lost without it).
//! The per-message cost is therefore a few plain stores and one plain load of a
//! line nobody writes while both ends are busy: no fence, no locked instruction, no
//! syscall. The sleeper pays the membarrier (a few µs), which it only does on its
//! way to a futex sleep.
//!
//! A channel created with [`Config::fenced`] (ABI flag bit 2) trades the other way:
//! every publication of either end pays a `SeqCst` fence between its position store
//! and its flag load, and a sleeper issues only its own fence, no membarrier —
//! the classic symmetric handshake, which is exactly what the loom models check.
//! That suits request/response traffic, where an end sleeps after most messages: a
//! fence costs tens of ns, a membarrier about a µs, and with the peer's threads
//! running on other CPUs an IPI to each (several µs more on a VM). A process whose
//! channels are all fenced does not register for membarrier at all.
//!
//! If this process cannot register or issue membarrier (an old kernel, a seccomp
//! filter), its wakes use a `SeqCst` fence instead, and its own futex sleeps last
//! at most 1 ms, because a peer that does use the fence-free path could then miss
//! its flag; such a missed wake-up costs at most that millisecond. The futexes are
//! shared (not process-private) so the two processes meet on the same word.
//! [`WaitMode::BusyPoll`] never sleeps.
//!
//! # Failure semantics
//!
//! - Before each sleep an end checks its peer, with its waiter flag already raised:
//!   the clean-close flag, then the process through a pidfd (or `/proc/<pid>/stat` if
//!   pidfds are unavailable) opened once and verified against the recorded start
//!   time, so pid reuse is not mistaken for life. A peer that stored its pid but no
//!   start time (it died while attaching, or `/proc` is unreadable) is watched by pid
//!   alone. The pidfd is also handed to a watcher thread (one per process, started
//!   at the first sleep unless `BERTH_IPC_WATCHER=off` is in the environment,
//!   blocked in `epoll_wait` on the pidfds of every peer an end of this process
//!   sleeps on). When the peer's process exits, the watcher records the death, then
//!   clears the sleeper's flag and wakes it, as a commit would, so a dead peer turns
//!   a wait into `PeerDead` at once. Once an end's peer is with the
//!   watcher, its check before a sleep reads that record instead of polling the
//!   pidfd: no syscall (a death not recorded yet still ends the sleep, since the
//!   watcher's wake comes after its record and the check after the raised flag).
//!   A sleep then needs no timer of its own when nothing else could end it: a wait
//!   with no deadline and no heartbeat limit of its own, whose wakes are sure to
//!   reach it (fenced, or with membarrier), sleeps until a commit, a close or the
//!   watcher wakes it, so an idle blocked end never wakes (a timed futex sleep sets
//!   up and tears down a timer each time: about 2.5 µs of a relay backend's round
//!   trip on a VM). Otherwise sleeps double from 10 ms to 1 s (to the heartbeat
//!   limit, if lower). Without the watcher (turned off, no pidfd or epoll, a child
//!   forked from the process that started it, or a watcher thread that stopped: the
//!   end then stops trusting its registration and is woken to look for itself)
//!   sleeps stop doubling at 50 ms, and a death is seen within 10 to 50 ms. A peer that closed
//!   cleanly gives `Closed` at once: its close clears the flag. Optionally
//!   ([`Receiver::set_peer_timeout`]) a peer that shows no sign of life for longer
//!   than a limit counts as dead too (a hung process). An end beats when it starts to sleep and
//!   when it wakes. A long sleep still leaves an old heartbeat until the sleeper is
//!   scheduled again, and the peer may commit, wake it and start to wait on it
//!   before that: so the peer counts a move of the sleeper's ring position as a
//!   sign of life too, and the limit runs from the later of the heartbeat and its
//!   own first look at that position. A sleeper is never judged on time it spent
//!   asleep before anyone waited on it. Both ends must share a pid namespace.
//! - A receiver first drains every record the sender committed, then reports
//!   `Closed` / `PeerDead`. A record the sender reserved but never committed
//!   (killed mid-write, or a dropped [`Grant`]) is never visible: only the tail
//!   store publishes, and it comes after the bytes.
//! - The non-blocking calls report the peer too: on an empty ring `try_recv`, on a
//!   full one `try_send` / `try_reserve`, check the clean-close flag every time and
//!   the peer's process (as above, with the heartbeat limit if set) at most every
//!   10 ms of a coarse clock, so a busy polling loop pays no syscall per call and
//!   sees a death within about 10 ms. While there is room, `try_send` does not
//!   check: messages to a dead receiver are accepted and lost with it.
//! - Opening validates the whole header ([`OpenError`]), and attaching the alignment of
//!   the positions; positions and record headers are re-validated on every use,
//!   since the peer keeps writing them. A failed check is [`RecvError::Corrupted`] /
//!   [`SendError::Corrupted`], never an access outside the mapping, a panic or a
//!   hang.
//!
//! # Trust model
//!
//! A channel joins two processes of the same user. The code is written so that a
//! buggy or hostile peer can make this process see errors or wrong payload bytes,
//! but cannot make *this crate* read or write outside the mapping: every length and
//! position is read once into a local, checked against the geometry fixed at open,
//! and only then used. Control words and record headers are accessed atomically;
//! payload copies use raw pointers.
//!
//! Lending is different. [`RecvGuard`] derefs to `&[u8]` and [`Grant`] to
//! `&mut [u8]` over shared memory; Rust assumes such memory does not change while
//! borrowed. An honest peer never touches a record between commit and release, so
//! the borrow is sound. A hostile peer that writes into a lent record breaks that
//! assumption: your code may observe bytes changing under a shared reference, which
//! is outside what the language guarantees. If the peer is not trusted, use the
//! copying calls ([`RecvGuard::copy_to`], [`Receiver::try_recv_into`],
//! [`Receiver::recv_vec`], which read with volatile loads into private memory) and
//! validate the copy. A named file could also be truncated by another process of the
//! same user, which would raise `SIGBUS` on access; memfd channels are sealed against
//! that, and a descriptor from a peer ([`Channel::from_fd`], [`Channel::recv_from`],
//! [`Duplex::accept_over`]) must carry the shrink seal (`F_GET_SEALS`) or is refused
//! with [`OpenError::NotSealed`]: only [`Channel::open_named`] maps an unsealed file.

// Under loom only the OS-free core is built; its helpers for the mapped layer go unused.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

mod cache;
#[cfg(not(loom))]
mod channel;
#[cfg(not(loom))]
mod copy;
#[cfg(not(loom))]
mod duplex;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod layout;
mod loom;
mod ring;
#[cfg(not(loom))]
mod sys;
#[cfg(not(loom))]
mod watch;

#[cfg(not(loom))]
pub use channel::{
    Channel, Config, Grant, NAME_PREFIX, Receiver, RecvGuard, SHM_DIR, Sender, WAKE_PREFIX, WaitMode, named_path,
};
#[cfg(not(loom))]
pub use duplex::Duplex;
pub use error::{OpenError, RecvError, SendError};
pub use layout::{HEADER_LEN, MAGIC, VERSION_MAJOR, VERSION_MINOR};
