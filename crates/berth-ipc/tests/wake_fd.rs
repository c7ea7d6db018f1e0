//! The pollable wake: channels created with `Config::wake_fds`, ends that sleep in
//! `poll` on their descriptor (`arm_wake` + `as_fd`), how the descriptors travel
//! (memfd + eventfds, named FIFOs, SCM_RIGHTS), and a stress run of sleep/wake races.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use berth_ipc::{Channel, Config, Duplex, OpenError, RecvError, SendError};

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Whether `fd` turns readable within `ms` milliseconds.
fn readable(fd: BorrowedFd<'_>, ms: i32) -> bool {
    let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
    let t = rustix::event::Timespec { tv_sec: i64::from(ms / 1000), tv_nsec: i64::from(ms % 1000) * 1_000_000 };
    matches!(rustix::event::poll(&mut fds, Some(&t)), Ok(n) if n > 0)
}

fn wake_chan(capacity: u64) -> Channel {
    Channel::create_memfd(&Config::new(capacity).wake_fds(true)).unwrap()
}

/// An armed receiver's descriptor turns readable at the next commit, and only
/// then; arming with a message queued says "do not sleep"; arming empties the
/// descriptor, so a wake already consumed does not make it readable again.
///
/// Proven by mutation: `Shared::wake` ignoring `Wake::Fd` fails the first
/// `readable` (and the stress test below hangs into its lost-wake assertion).
#[test]
fn an_armed_receiver_is_woken_through_its_descriptor() {
    let chan = wake_chan(4096);
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    assert!(rx.wake_fd().is_some() && tx.wake_fd().is_some());
    assert_eq!(rx.arm_wake(), Ok(true));
    assert!(!readable(rx.as_fd(), 0), "nothing committed yet");
    tx.try_send(b"one").unwrap();
    assert!(readable(rx.as_fd(), 1000), "the commit wrote the receiver's descriptor");
    assert_eq!(rx.arm_wake(), Ok(false), "a message is there: do not sleep");
    assert_eq!(&*rx.try_recv().unwrap(), b"one");
    assert_eq!(rx.arm_wake(), Ok(true));
    assert!(!readable(rx.as_fd(), 0), "arming emptied the descriptor");
    // Only an armed end is signalled: a second commit without a new arm writes nothing.
    tx.try_send(b"two").unwrap();
    assert!(readable(rx.as_fd(), 1000));
    assert_eq!(rx.arm_wake(), Ok(false));
    assert_eq!(&*rx.try_recv().unwrap(), b"two");
    tx.try_send(b"three").unwrap();
    assert!(!readable(rx.as_fd(), 0), "not armed: no syscall, no signal");
}

/// The sender's descriptor says "room ready" after it armed on a full ring.
#[test]
fn an_armed_sender_is_woken_when_room_appears() {
    let chan = wake_chan(256);
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    while tx.try_send(&[1; 40]).is_ok() {}
    assert_eq!(tx.arm_wake(40), Ok(true));
    assert!(!readable(tx.as_fd(), 0));
    drop(rx.try_recv().unwrap());
    assert!(readable(tx.as_fd(), 1000), "the release published the head and wrote the sender's descriptor");
    assert_eq!(tx.arm_wake(40), Ok(false), "room now");
    tx.try_send(&[2; 40]).unwrap();
    assert_eq!(tx.arm_wake(rx.max_message() + 1), Err(SendError::TooLarge { len: 121, max: 120 }));
}

/// A channel without wake descriptors says so instead of handing out something
/// that never turns readable: arming is an error, and its `as_fd` is the channel's
/// file, which epoll refuses.
#[test]
fn a_channel_without_wake_descriptors_refuses_to_arm() {
    let chan = Channel::create_memfd(&Config::new(4096)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    assert_eq!(rx.arm_wake(), Err(RecvError::NoWakeFd));
    assert_eq!(tx.arm_wake(8), Err(SendError::NoWakeFd));
    assert!(rx.wake_fd().is_none() && chan.wake_fds().is_none());
    let ep = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).unwrap();
    let add = rustix::event::epoll::add(
        &ep,
        rx.as_fd(),
        rustix::event::epoll::EventData::new_u64(1),
        rustix::event::epoll::EventFlags::IN,
    );
    assert_eq!(add, Err(rustix::io::Errno::PERM));
}

/// The peer's clean close with nothing left to read is an answer from `arm_wake`,
/// and a close while the receiver sleeps writes its descriptor.
#[test]
fn a_close_is_seen_by_an_armed_end() {
    let chan = wake_chan(4096);
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    tx.try_send(b"last").unwrap();
    assert_eq!(rx.arm_wake(), Ok(false));
    drop(rx.try_recv().unwrap());
    assert_eq!(rx.arm_wake(), Ok(true));
    drop(tx);
    assert!(readable(rx.as_fd(), 1000), "the close woke the sleeper");
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Closed);
    assert_eq!(rx.arm_wake(), Err(RecvError::Closed));
}

/// The descriptors travel with the memfd: `from_fd` alone refuses a channel that
/// has them, `from_fds` checks them, `send_over` / `recv_from` and the duplex
/// carry them, and an end opened that way wakes its peer.
#[test]
fn wake_descriptors_travel_with_the_memfd() {
    let chan = wake_chan(4096);
    let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().unwrap();
    assert!(matches!(Channel::from_fd(dup(chan.as_fd())), Err(OpenError::WakeFdsMissing)));
    // Something that is neither an eventfd nor a FIFO is refused as a wake descriptor.
    let file: OwnedFd = std::fs::File::open("/proc/self/stat").unwrap().into();
    let (rx, tx) = chan.wake_fds().unwrap();
    assert!(matches!(Channel::from_fds(dup(chan.as_fd()), file, dup(tx)), Err(OpenError::BadWakeFd)));
    // Wake descriptors for a channel that has none.
    let plain = Channel::create_memfd(&Config::new(4096)).unwrap();
    assert!(matches!(Channel::from_fds(dup(plain.as_fd()), dup(rx), dup(tx)), Err(OpenError::BadWakeFd)));
    let other = Channel::from_fds(dup(chan.as_fd()), dup(rx), dup(tx)).unwrap();
    let mut tx = other.sender().unwrap();
    let mut rx = chan.receiver().unwrap();
    assert_eq!(rx.arm_wake(), Ok(true));
    tx.try_send(b"x").unwrap();
    assert!(readable(rx.as_fd(), 1000));

    let (a, b) = UnixStream::pair().unwrap();
    let c = wake_chan(4096);
    c.send_over(&a).unwrap();
    let d = Channel::recv_from(&b).unwrap();
    assert!(d.wake_fds().is_some());
    let (mut tx, mut rx) = (d.sender().unwrap(), c.receiver().unwrap());
    assert_eq!(rx.arm_wake(), Ok(true));
    tx.try_send(b"y").unwrap();
    assert!(readable(rx.as_fd(), 1000));

    let cfg = Config::new(4096).wake_fds(true);
    let mut left = Duplex::connect_over(&a, &cfg).unwrap();
    let mut right = Duplex::accept_over(&b).unwrap();
    assert_eq!(right.rx.arm_wake(), Ok(true));
    left.tx.try_send(b"ping").unwrap();
    assert!(readable(right.rx.as_fd(), 1000));
    assert_eq!(&*right.rx.try_recv().unwrap(), b"ping");
    assert_eq!(left.rx.arm_wake(), Ok(true));
    right.tx.try_send(b"pong").unwrap();
    assert!(readable(left.rx.as_fd(), 1000));
}

/// A named channel's wake descriptors are FIFOs beside its file, opened by name
/// with the same checks (ours, 0600, no symlink), and removed with it.
#[test]
fn a_named_channel_wakes_through_its_fifos() {
    let name = unique("wake");
    let a = Channel::create_named(&name, &Config::new(4096).wake_fds(true)).unwrap();
    let b = Channel::open_named(&name).unwrap();
    let fifo = |end: &str| std::path::PathBuf::from(format!("/dev/shm/berth-ipc-wake.{name}.{end}"));
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    for end in ["rx", "tx"] {
        let meta = std::fs::symlink_metadata(fifo(end)).unwrap();
        assert!(meta.file_type().is_fifo());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let (mut tx, mut rx) = (b.sender().unwrap(), a.receiver().unwrap());
    assert_eq!(rx.arm_wake(), Ok(true));
    tx.try_send(b"named").unwrap();
    assert!(readable(rx.as_fd(), 1000));
    assert_eq!(&*rx.try_recv().unwrap(), b"named");
    // A FIFO others may open is refused, as the channel file would be.
    std::fs::set_permissions(fifo("tx"), std::fs::Permissions::from_mode(0o660)).unwrap();
    assert!(matches!(Channel::open_named(&name), Err(OpenError::BadPermissions { .. })));
    Channel::unlink_named(&name).unwrap();
    assert!(!fifo("rx").exists() && !fifo("tx").exists());
}

/// Both ends sleep in `poll` on their descriptors over and over through a ring of
/// 256 bytes (so the sender waits for room as often as the receiver for data),
/// mixed with futex sleeps (blocking `recv`) and batches. A lost wake-up would
/// leave an end asleep: the poll gives up after 10 s and the test fails there,
/// naming which wake was lost.
///
/// Proven by mutation: `Shared::wake` ignoring `Wake::Fd` fails at once ("lost
/// wake"), and so does `Receiver::arm_wake` draining after `prepare_wait`
/// instead of before (within a few thousand messages).
#[test]
fn sleepers_on_descriptors_never_lose_a_wake() {
    // How often each end sleeps depends on the scheduling (the receiver dawdles
    // now and then so the sender must sleep too): exchange again, up to five
    // times, until both sleeps have been exercised enough.
    let (mut rx_sleeps, mut tx_sleeps) = (0, 0);
    for _ in 0..5 {
        let (rx, tx) = exchange_with_sleeps();
        (rx_sleeps, tx_sleeps) = (rx_sleeps + rx, tx_sleeps + tx);
        if rx_sleeps > 100 && tx_sleeps > 100 {
            return;
        }
    }
    panic!("too few descriptor sleeps over five runs: rx {rx_sleeps}, tx {tx_sleeps}");
}

/// One run of the exchange above; returns the receiver's and the sender's
/// descriptor sleeps.
fn exchange_with_sleeps() -> (u32, u32) {
    const N: u32 = 40_000;
    let chan = wake_chan(256);
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let msg = |i: u32| -> Vec<u8> {
        let mut m = i.to_le_bytes().to_vec();
        m.resize(4 + (i as usize * 7) % 36, i as u8);
        m
    };
    let producer = std::thread::spawn(move || {
        let mut i = 0;
        let mut sleeps = 0u32;
        while i < N {
            // Every fifth round, a batch of three.
            let batch: Vec<Vec<u8>> =
                if i.is_multiple_of(5) { (i..(i + 3).min(N)).map(msg).collect() } else { vec![msg(i)] };
            let sent = if batch.len() == 1 { tx.try_send(&batch[0]) } else { tx.try_send_batch(&batch) };
            match sent {
                Ok(()) => i += batch.len() as u32,
                Err(SendError::Full) => {
                    let need = batch.iter().map(|m| m.len()).max().unwrap();
                    if tx.arm_wake(need).unwrap() {
                        sleeps += 1;
                        assert!(readable(tx.as_fd(), 10_000), "lost wake: the sender sleeps for room at {i}");
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        sleeps
    });
    let mut next = 0u32;
    let mut sleeps = 0u32;
    while next < N {
        let err = match rx.try_recv() {
            Ok(m) => {
                assert_eq!(&*m, &msg(next)[..], "message {next}");
                next += 1;
                if next.is_multiple_of(97) {
                    // Now and then the receiver dawdles, so the 256-byte ring fills
                    // and the sender must sleep for room, whatever the scheduling.
                    std::thread::sleep(Duration::from_micros(50));
                }
                continue;
            }
            Err(e) => e,
        };
        match err {
            RecvError::Empty if next.is_multiple_of(3) => {
                // A futex sleep now and then: the flag takes both values.
                let m = rx.recv(Some(Duration::from_secs(10))).unwrap();
                assert_eq!(&*m, &msg(next)[..], "message {next}");
                next += 1;
            }
            RecvError::Empty => {
                if rx.arm_wake().unwrap() {
                    sleeps += 1;
                    assert!(readable(rx.as_fd(), 10_000), "lost wake: the receiver sleeps at {next}");
                }
            }
            e => panic!("{e}"),
        }
    }
    let tx_sleeps = producer.join().unwrap();
    (sleeps, tx_sleeps)
}

/// CPU time the calling thread has used (user and system), from its own clock.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// An idle receiver waiting on its descriptor sleeps: over 1.5 s with a live,
/// silent sender it uses a small part of that in CPU time and wakes a handful of
/// times at most (the loop re-arms after every wake-up).
///
/// Proven by mutation: `Receiver::arm_wake` answering `Ok(false)` ("a message is
/// there") without a message fails both assertions: the loop spins.
#[test]
fn an_idle_receiver_asleep_on_its_descriptor_uses_no_cpu() {
    let chan = wake_chan(4096);
    let (tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let waiter = std::thread::spawn(move || {
        let before = thread_cpu();
        let start = Instant::now();
        let mut rounds = 0u32;
        while start.elapsed() < Duration::from_millis(1500) {
            rounds += 1;
            match rx.try_recv() {
                Err(RecvError::Empty) => {}
                other => panic!("{:?}", other.map(|m| m.len())),
            }
            if rx.arm_wake().unwrap() {
                readable(rx.as_fd(), 300);
            }
        }
        (thread_cpu() - before, rounds)
    });
    let (cpu, rounds) = waiter.join().unwrap();
    drop(tx);
    assert!(rounds <= 10, "{rounds} rounds in 1.5 s: the wait does not sleep");
    assert!(cpu < Duration::from_millis(100), "an idle armed receiver used {cpu:?} of CPU in 1.5 s");
    let _ = chan.as_fd().as_raw_fd();
}

/// Clears `O_NONBLOCK` on `fd`'s open file description, as a peer that shares it
/// may (it is shared by everyone who received the descriptor).
fn clear_nonblock(fd: BorrowedFd<'_>) {
    let flags = rustix::fs::fcntl_getfl(fd).unwrap();
    rustix::fs::fcntl_setfl(fd, flags - rustix::fs::OFlags::NONBLOCK).unwrap();
}

/// `arm_wake` empties its descriptor with no `poll` first where the read cannot
/// block, and never blocks where it could: here, with the wake descriptors'
/// `O_NONBLOCK` cleared by whoever shares them, an eventfd (read with
/// `RWF_NOWAIT`) and a named channel's FIFOs handed out by `wake_fds` (no longer
/// private: polled first) are drained, and the arm returns at once.
///
/// Proven by mutation: `sys::drain` reading plainly when not `private` hangs on the
/// eventfd; `WakeFds::shared_out` not clearing `private` hangs on the FIFO.
#[test]
fn draining_a_shared_wake_descriptor_never_blocks() {
    let name = unique("drain");
    let named = Channel::create_named(&name, &Config::new(4096).wake_fds(true)).unwrap();
    for chan in [wake_chan(4096), named] {
        let (rx_fd, tx_fd) = chan.wake_fds().unwrap();
        clear_nonblock(rx_fd);
        clear_nonblock(tx_fd);
        let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
        let (done, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Empty descriptor: the drain must not wait for a write.
            let first = rx.arm_wake();
            tx.try_send(b"x").unwrap();
            assert!(readable(rx.as_fd(), 1000));
            let again = rx.arm_wake();
            drop(rx.try_recv().unwrap());
            // Drained by the arm above, and empty again now.
            let last = rx.arm_wake();
            let _ = done.send((first, again, last, readable(rx.as_fd(), 0)));
        });
        let r = got.recv_timeout(Duration::from_secs(5)).expect("arm_wake blocked in its drain");
        assert_eq!(r, (Ok(true), Ok(false), Ok(true), false));
    }
    Channel::unlink_named(&name).unwrap();
}

/// `rearm_wake(false)` on an end still flagged from its last arm leaves its
/// descriptor as it is (no read); told it was readable, or once a wake has cleared
/// the flag, it empties it as `arm_wake` does.
///
/// Proven by mutation: `rearm_wake` always draining fails the first `readable`;
/// ignoring `was_readable` fails the second (a stale wake would then end every
/// wait at once, for ever); ignoring the cleared flag fails the last.
#[test]
fn rearming_without_a_read_keeps_a_stale_wake_until_told() {
    let chan = wake_chan(4096);
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    assert_eq!(rx.arm_wake(), Ok(true));
    // A wake still on its way from an earlier arm lands now.
    rustix::io::write(rx.as_fd(), &1u64.to_ne_bytes()).unwrap();
    assert_eq!(rx.rearm_wake(false), Ok(true));
    assert!(readable(rx.as_fd(), 0), "still flagged and not reported readable: left as it is");
    assert_eq!(rx.rearm_wake(true), Ok(true));
    assert!(!readable(rx.as_fd(), 0), "reported readable: emptied");
    // A commit's wake clears the flag: the next re-arm empties the descriptor.
    tx.try_send(b"m").unwrap();
    assert!(readable(rx.as_fd(), 1000));
    drop(rx.try_recv().unwrap());
    assert_eq!(rx.rearm_wake(false), Ok(true));
    assert!(!readable(rx.as_fd(), 0), "a wake cleared the flag: emptied");
}

/// `disarm_wake`: a flag taken back before the sender's commit gets no write, and
/// the next `rearm_wake(false)` leaves the descriptor alone (a planted byte shows
/// it was not read); a flag the sender cleared first was answered, so the wake is
/// reported and the next re-arm empties the descriptor.
///
/// Proven by mutation: `disarm_wake` not clearing the flag fails the first
/// `readable` (the commit writes); `rearm_wake` ignoring the take-back fails the
/// second (the planted byte is read); a take-back that counts as one even when the
/// sender's wake came first fails the third (the wake stays readable for ever).
#[test]
fn a_flag_taken_back_gets_no_wake_and_one_answered_is_drained() {
    let chan = wake_chan(4096);
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    assert_eq!(rx.arm_wake(), Ok(true));
    assert!(!rx.disarm_wake(), "nothing committed: no wake on its way");
    assert!(!rx.disarm_wake(), "a second take-back changes nothing");
    tx.try_send(b"a").unwrap();
    assert!(!readable(rx.as_fd(), 0), "taken back: the commit wrote nothing");
    assert_eq!(&*rx.try_recv().unwrap(), b"a");
    rustix::io::write(rx.as_fd(), &1u64.to_ne_bytes()).unwrap();
    assert_eq!(rx.rearm_wake(false), Ok(true));
    assert!(readable(rx.as_fd(), 0), "nothing was written for the arm taken back: not read");
    assert_eq!(rx.rearm_wake(true), Ok(true));
    assert!(!readable(rx.as_fd(), 0));

    // The sender's commit comes first: its wake is written and reported.
    tx.try_send(b"b").unwrap();
    assert!(readable(rx.as_fd(), 1000));
    assert!(rx.disarm_wake(), "the sender cleared the flag: its wake is there");
    assert_eq!(&*rx.try_recv().unwrap(), b"b");
    assert_eq!(rx.rearm_wake(false), Ok(true));
    assert!(!readable(rx.as_fd(), 0), "the answered wake was emptied");
    tx.try_send(b"c").unwrap();
    assert!(readable(rx.as_fd(), 1000), "armed again");
}

/// `disarm_wake` with nothing armed (never armed, or the last arm said not to
/// sleep) promises no wake, and none comes. Proven by mutation: returning "not taken
/// back" alone, as at first, says `true` for both.
#[test]
fn disarm_with_nothing_armed_promises_no_wake() {
    let chan = wake_chan(4096);
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let never_armed = rx.disarm_wake();
    tx.try_send(b"a").unwrap();
    assert_eq!(rx.arm_wake(), Ok(false), "a message is there: not armed");
    let not_armed = rx.disarm_wake();
    let woke = readable(rx.as_fd(), 200);
    assert!(!woke, "nothing was written");
    assert_eq!((never_armed, not_armed), (false, false), "disarm_wake claimed a wake on its way");
}
