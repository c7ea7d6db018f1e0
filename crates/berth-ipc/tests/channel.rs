//! In-process tests of channels: creation, opening faults, hostile peers, limits,
//! descriptor passing, duplex, close and timeouts.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use berth_ipc::{Channel, Config, Duplex, OpenError, RecvError, SendError, WaitMode};

const T: Option<Duration> = Some(Duration::from_secs(10));

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A writable view of the channel file, as a hostile peer would have.
fn raw(chan: &Channel) -> File {
    File::from(chan.as_fd().try_clone_to_owned().unwrap())
}

/// The bytes of a valid 4 KiB-ring channel file.
fn good_file_bytes() -> Vec<u8> {
    let chan = Channel::create_memfd(&Config::new(4096)).unwrap();
    let mut bytes = vec![0; 4096 + 4096];
    raw(&chan).read_exact_at(&mut bytes, 0).unwrap();
    bytes
}

/// Opens `bytes` as a channel file: a memfd sealed against resizing, the only kind
/// of descriptor `from_fd` accepts.
fn open_bytes(bytes: &[u8]) -> Result<Channel, OpenError> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    File::from(fd.try_clone().unwrap()).write_all_at(bytes, 0).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL).unwrap();
    Channel::from_fd(fd)
}

fn patched(at: usize, v: &[u8]) -> Vec<u8> {
    let mut b = good_file_bytes();
    b[at..at + v.len()].copy_from_slice(v);
    b
}

#[test]
fn memfd_round_trip_lend_and_copy() {
    let chan = Channel::create_memfd(&Config::new(4096)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    for i in 0..10_000u32 {
        let msg = vec![i as u8; (i % 300) as usize];
        tx.send(&msg, T).unwrap();
        if i % 2 == 0 {
            assert_eq!(&*rx.recv(T).unwrap(), &msg[..]);
        } else {
            assert_eq!(rx.recv_vec(T).unwrap(), msg);
        }
    }
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Empty);
}

/// Large messages from a page-aligned buffer land at every payload page offset of
/// a lap (they advance by 8 bytes a record), so `send` takes both of its copy paths,
/// the ordinary one and the backward one for a destination just past the source;
/// every byte must arrive either way.
#[test]
fn large_sends_arrive_intact_at_every_page_offset() {
    const LEN: usize = 5000; // above the backward path's threshold, odd 64-byte tail
    let chan = Channel::create_memfd(&Config::new(1 << 16)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let mut buf = vec![0u8; LEN + 4096];
    let at = buf.as_ptr().align_offset(4096);
    let mut out = vec![0u8; LEN];
    for i in 0..2_000u32 {
        let msg = &mut buf[at..at + LEN];
        for (j, b) in msg.iter_mut().enumerate() {
            *b = (j as u32).wrapping_mul(31).wrapping_add(i) as u8;
        }
        tx.send(msg, T).unwrap();
        let n = rx.recv(T).unwrap().copy_to(&mut out).unwrap();
        assert_eq!((n, &out[..]), (LEN, &buf[at..at + LEN]), "message {i}");
    }
}

#[test]
fn a_well_formed_file_opens() {
    let ch = open_bytes(&good_file_bytes()).unwrap();
    assert_eq!(ch.capacity(), 4096);
    assert_eq!(ch.max_message(), 2048 - 8);
}

#[test]
fn file_too_short() {
    assert!(matches!(open_bytes(&good_file_bytes()[..100]), Err(OpenError::TooShort { len: 100, .. })));
    // Header fine, ring cut off.
    assert!(matches!(open_bytes(&good_file_bytes()[..6000]), Err(OpenError::TooShort { len: 6000, .. })));
    assert!(matches!(open_bytes(&[]), Err(OpenError::TooShort { .. })));
}

#[test]
fn wrong_magic() {
    assert!(matches!(open_bytes(&patched(0, b"NOTBERTH")), Err(OpenError::BadMagic)));
    assert!(matches!(open_bytes(&[0u8; 8192]), Err(OpenError::NotReady | OpenError::BadMagic)));
}

#[test]
fn other_major_version() {
    // Layout 1.x (tail-polled commits) and a future 3.x are both refused by this 2.x build.
    for other in [1u16, 3] {
        let e = open_bytes(&patched(8, &other.to_le_bytes())).unwrap_err();
        assert!(
            matches!(e, OpenError::VersionMismatch { found_major, supported_major: 2, .. } if found_major == other),
            "{e}"
        );
    }
}

#[test]
fn capacity_not_power_of_two() {
    assert!(matches!(
        open_bytes(&patched(24, &3000u64.to_le_bytes())),
        Err(OpenError::CapacityNotPowerOfTwo { capacity: 3000 })
    ));
    assert!(matches!(
        Channel::create_memfd(&Config::new(5000)),
        Err(OpenError::CapacityNotPowerOfTwo { capacity: 5000 })
    ));
}

#[test]
fn lengths_outside_the_mapping() {
    // Capacity says 8 KiB but the file holds 4 KiB of ring.
    let mut b = patched(24, &8192u64.to_le_bytes());
    b[48..56].copy_from_slice(&(4096u64 + 8192).to_le_bytes());
    assert!(matches!(open_bytes(&b), Err(OpenError::TooShort { .. })));
    // Data offset far beyond the file, total length inconsistent, absurd max message.
    assert!(matches!(open_bytes(&patched(40, &(1u64 << 60).to_le_bytes())), Err(OpenError::LayoutOutOfBounds { .. })));
    assert!(matches!(open_bytes(&patched(48, &u64::MAX.to_le_bytes())), Err(OpenError::LayoutOutOfBounds { .. })));
    assert!(matches!(open_bytes(&patched(32, &u64::MAX.to_le_bytes())), Err(OpenError::LayoutOutOfBounds { .. })));
    // Creator died before publishing the header.
    assert!(matches!(open_bytes(&patched(60, &0u32.to_le_bytes())), Err(OpenError::NotReady)));
}

#[test]
fn unsealed_memfd_is_refused() {
    let bytes = good_file_bytes();
    let fd = rustix::fs::memfd_create("hostile", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
    File::from(fd.try_clone().unwrap()).write_all_at(&bytes, 0).unwrap();
    assert!(matches!(Channel::from_fd(fd), Err(OpenError::NotSealed)));
}

/// A file that is not a sealed memfd could be truncated by whoever sent it, after we
/// mapped it (`SIGBUS` on our next access): `from_fd` refuses it, even with a valid
/// header. Opening the same file by name (our own 0600 file) still works.
#[test]
fn unsealed_plain_files_are_refused_by_from_fd() {
    let name = unique("plain");
    let chan = Channel::create_named(&name, &Config::new(4096)).unwrap();
    let path = berth_ipc::named_path(&name).unwrap();
    let tmpfs = File::options().read(true).write(true).open(&path).unwrap();
    let e = Channel::from_fd(OwnedFd::from(tmpfs)).unwrap_err();
    assert!(matches!(e, OpenError::NotSealed), "{e}");
    let by_name = Channel::open_named(&name).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), by_name.receiver().unwrap());
    tx.try_send(b"by name").unwrap();
    assert_eq!(&*rx.recv(T).unwrap(), b"by name");
    Channel::unlink_named(&name).unwrap();

    // A file on another file system (no seals at all), and one received over a socket.
    let path = std::env::temp_dir().join(unique("file"));
    std::fs::write(&path, good_file_bytes()).unwrap();
    let file = File::options().read(true).write(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    let fds = [file.as_fd()];
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(&a, &[std::io::IoSlice::new(&[1])], &mut control, rustix::net::SendFlags::empty()).unwrap();
    let e = Channel::from_fd(OwnedFd::from(file.try_clone().unwrap())).unwrap_err();
    assert!(matches!(e, OpenError::NotSealed), "{e}");
    let e = Channel::recv_from(&b).unwrap_err();
    assert!(matches!(e, OpenError::NotSealed), "{e}");
}

#[test]
fn message_too_large_sends_nothing() {
    let chan = Channel::create_memfd(&Config::new(4096).max_message(100)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    assert_eq!(tx.try_send(&[1; 101]).unwrap_err(), SendError::TooLarge { len: 101, max: 100 });
    assert_eq!(tx.send(&[1; 5000], T).unwrap_err(), SendError::TooLarge { len: 5000, max: 100 });
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Empty);
    tx.try_send(&[2; 100]).unwrap();
    assert_eq!(&*rx.try_recv().unwrap(), &[2; 100]);
    assert!(matches!(
        Channel::create_memfd(&Config::new(4096).max_message(4096)),
        Err(OpenError::LayoutOutOfBounds { .. })
    ));
}

#[test]
fn full_try_send_loses_nothing() {
    let chan = Channel::create_memfd(&Config::new(1024)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let mut sent = 0u32;
    loop {
        match tx.try_send(&sent.to_le_bytes().repeat(6)) {
            Ok(()) => sent += 1,
            Err(SendError::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(sent, 1024 / 32);
    assert_eq!(tx.try_send(b"x").unwrap_err(), SendError::Full);
    for i in 0..sent {
        assert_eq!(rx.recv_vec(T).unwrap(), i.to_le_bytes().repeat(6));
    }
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Empty);
}

#[test]
fn dropped_grant_aborts_and_partial_commit_shortens() {
    let chan = Channel::create_memfd(&Config::new(1024)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    {
        let mut g = tx.try_reserve(100).unwrap();
        g.fill(7);
    }
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Empty);
    let mut g = tx.try_reserve(100).unwrap();
    g[..3].copy_from_slice(b"abc");
    g.commit_len(3);
    assert_eq!(&*rx.try_recv().unwrap(), b"abc");
}

/// A record header word as layout 2.0 defines it: `u32 len`, `u8 type`, a zero
/// byte, `u16` lap tag.
fn header(len: u32, ty: u8, lap: u16) -> u64 {
    u64::from(len) | (u64::from(ty) << 32) | (u64::from(lap) << 48)
}

#[test]
fn corrupted_record_header_from_a_hostile_peer() {
    for bad in [
        header(u32::MAX, 1, 0),          // huge length
        header(2041, 1, 0),              // just above the maximum message
        header(16, 9, 0),                // unknown record type
        header(16, 1, 7),                // a lap tag from another lap
        header(16, 1, 0) | (0xff << 40), // reserved byte set
    ] {
        let chan = Channel::create_memfd(&Config::new(4096)).unwrap();
        let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
        for _ in 0..3 {
            tx.try_send(&[1; 16]).unwrap();
            rx.try_recv().unwrap();
        }
        tx.try_send(&[1; 16]).unwrap();
        raw(&chan).write_all_at(&bad.to_le_bytes(), 4096 + 72).unwrap();
        assert!(matches!(rx.try_recv(), Err(RecvError::Corrupted(_))), "{bad:#x}");
        assert!(matches!(rx.recv(T), Err(RecvError::Corrupted(_))));
    }
    // A header erased (or made to look one lap old) below the producer position, and
    // a corrupted producer position: an error at once, not a wait that never ends.
    for (at, bad) in [(4096u64, 0u64), (4096, header(16, 1, u16::MAX)), (128, 1 << 50), (128, 4)] {
        let chan = Channel::create_memfd(&Config::new(4096)).unwrap();
        let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
        tx.try_send(&[1; 16]).unwrap();
        raw(&chan).write_all_at(&bad.to_le_bytes(), at).unwrap();
        let t0 = Instant::now();
        assert!(matches!(rx.recv(T), Err(RecvError::Corrupted(_))), "at {at}: {bad:#x}");
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
    // A hostile consumer moving head past tail: the sender errors instead of overwriting.
    let chan = Channel::create_memfd(&Config::new(1024)).unwrap();
    let (mut tx, _rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    raw(&chan).write_all_at(&(1u64 << 40).to_le_bytes(), 256).unwrap();
    assert!(matches!(tx.try_send(&[0; 8]), Err(SendError::Corrupted(_))));
    // Misaligned positions are refused when an end attaches.
    let chan = Channel::create_memfd(&Config::new(1024)).unwrap();
    raw(&chan).write_all_at(&3u64.to_le_bytes(), 128).unwrap();
    raw(&chan).write_all_at(&5u64.to_le_bytes(), 256).unwrap();
    assert!(matches!(chan.sender(), Err(OpenError::LayoutOutOfBounds { .. })));
    assert!(matches!(chan.receiver(), Err(OpenError::LayoutOutOfBounds { .. })));
}

#[test]
fn each_end_attaches_once() {
    let chan = Channel::create_memfd(&Config::new(1024)).unwrap();
    let _tx = chan.sender().unwrap();
    let _rx = chan.receiver().unwrap();
    assert!(matches!(chan.sender(), Err(OpenError::RoleTaken { role: "sender", .. })));
    assert!(matches!(chan.receiver(), Err(OpenError::RoleTaken { role: "receiver", .. })));
}

#[test]
fn sender_close_is_seen_after_draining() {
    let chan = Channel::create_memfd(&Config::new(1024)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    tx.try_send(b"last words").unwrap();
    drop(tx);
    assert_eq!(rx.recv_vec(T).unwrap(), b"last words");
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Closed);
    assert_eq!(rx.recv(T).unwrap_err(), RecvError::Closed);
}

#[test]
fn receiver_close_stops_a_waiting_sender() {
    let chan = Channel::create_memfd(&Config::new(64)).unwrap();
    let (mut tx, rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    tx.try_send(&[0; 24]).unwrap();
    tx.try_send(&[0; 24]).unwrap();
    let t = std::thread::spawn(move || tx.send(&[0; 24], T));
    drop(rx);
    assert_eq!(t.join().unwrap().unwrap_err(), SendError::Closed);
}

#[test]
fn recv_times_out() {
    let chan = Channel::create_memfd(&Config::new(1024)).unwrap();
    let (_tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let t0 = Instant::now();
    assert_eq!(rx.recv(Some(Duration::from_millis(30))).unwrap_err(), RecvError::TimedOut);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(30) && took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn blocked_ends_wake_each_other_across_threads() {
    let chan = Channel::create_memfd(&Config::new(256)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let n = 20_000u32;
    let t = std::thread::spawn(move || {
        for i in 0..n {
            tx.send(&i.to_le_bytes().repeat((i % 15) as usize), T).unwrap();
        }
    });
    for i in 0..n {
        assert_eq!(rx.recv_vec(T).unwrap(), i.to_le_bytes().repeat((i % 15) as usize));
    }
    t.join().unwrap();
    assert_eq!(rx.recv(T).unwrap_err(), RecvError::Closed);
}

#[test]
fn busy_poll_mode_works() {
    let chan = Channel::create_memfd(&Config::new(256)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    tx.set_wait_mode(berth_ipc::WaitMode::BusyPoll);
    rx.set_wait_mode(berth_ipc::WaitMode::BusyPoll);
    let t = std::thread::spawn(move || {
        for i in 0..5000u32 {
            tx.send(&i.to_le_bytes(), T).unwrap();
        }
    });
    for i in 0..5000u32 {
        assert_eq!(&*rx.recv(T).unwrap(), &i.to_le_bytes());
    }
    t.join().unwrap();
}

#[test]
fn copy_into_a_small_buffer_keeps_the_message() {
    let chan = Channel::create_memfd(&Config::new(1024)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    tx.try_send(b"0123456789").unwrap();
    let mut small = [0u8; 4];
    assert_eq!(rx.try_recv_into(&mut small).unwrap_err(), RecvError::BufferTooSmall { len: 10, buf: 4 });
    let mut big = [0u8; 16];
    assert_eq!(rx.try_recv_into(&mut big).unwrap(), 10);
    assert_eq!(&big[..10], b"0123456789");
}

#[test]
fn named_channel_is_exclusive_private_and_reopenable() {
    let name = unique("named");
    let chan = Channel::create_named(&name, &Config::new(4096)).unwrap();
    let path = berth_ipc::named_path(&name).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let again = Channel::create_named(&name, &Config::new(4096)).unwrap_err();
    assert!(matches!(&again, OpenError::Io(e) if e.kind() == std::io::ErrorKind::AlreadyExists), "{again}");
    let mut tx = chan.sender().unwrap();
    let other = Channel::open_named(&name).unwrap();
    let mut rx = other.receiver().unwrap();
    tx.try_send(b"across mappings").unwrap();
    assert_eq!(&*rx.recv(T).unwrap(), b"across mappings");
    // Group-readable files are refused.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(Channel::open_named(&name), Err(OpenError::BadPermissions { mode: 0o640 })));
    Channel::unlink_named(&name).unwrap();
}

#[test]
fn named_open_refuses_symlinks_and_bad_names() {
    let name = unique("link");
    let target = std::env::temp_dir().join(unique("target"));
    std::fs::write(&target, good_file_bytes()).unwrap();
    let link = berth_ipc::named_path(&name).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = Channel::open_named(&name).unwrap_err();
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_file(&target);
    assert!(matches!(e, OpenError::NotRegularFile), "{e}");
    for bad in ["", ".", "..", "a/b", "../etc", "x y", &"n".repeat(201)] {
        assert!(matches!(Channel::open_named(bad), Err(OpenError::InvalidName(_))), "{bad:?}");
    }
}

#[test]
fn cleanup_stale_removes_only_dead_channels() {
    let live = unique("live");
    let dead = unique("dead");
    let _keep = Channel::create_named(&live, &Config::new(4096)).unwrap();
    let gone = Channel::create_named(&dead, &Config::new(4096)).unwrap();
    // A pid that surely names no process: one of our children, reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    raw(&gone).write_all_at(&dead_pid.to_le_bytes(), 56).unwrap();
    drop(gone);
    let removed = Channel::cleanup_stale().unwrap();
    assert!(removed.contains(&dead), "{removed:?}");
    assert!(!removed.contains(&live));
    assert!(berth_ipc::named_path(&live).unwrap().exists());
    assert!(!berth_ipc::named_path(&dead).unwrap().exists());
    Channel::unlink_named(&live).unwrap();
}

/// A peer that claimed its end (pid stored) but died before storing its start time
/// is watched by pid alone: a wait ends with `PeerDead`, not a timeout (with `None`,
/// it would never end). A live claimer in that window still counts as alive.
#[test]
fn peer_that_died_while_claiming_is_dead() {
    let chan = Channel::create_memfd(&Config::new(4096)).unwrap();
    let mut rx = chan.receiver().unwrap();
    // Our own pid, start time not yet stored: alive.
    raw(&chan).write_all_at(&std::process::id().to_le_bytes(), 136).unwrap();
    assert_eq!(rx.recv(Some(Duration::from_millis(100))).unwrap_err(), RecvError::TimedOut);
    // A pid that surely names no process: one of our children, reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    raw(&chan).write_all_at(&dead_pid.to_le_bytes(), 136).unwrap();
    raw(&chan).write_all_at(&0u64.to_le_bytes(), 144).unwrap();
    assert_eq!(rx.recv(Some(Duration::from_secs(5))).unwrap_err(), RecvError::PeerDead);
}

/// A peer that writes a sender pid of 2^31 or more (negative as a `pid_t`) is a
/// dead peer: `try_recv` says `PeerDead`. Found by the `ipc_hostile_peer` fuzz
/// target: the pid went to rustix as a negative number, which panicked in debug
/// builds (this test fails that way without the fix; in release, with `/proc`
/// readable, the answer was already right).
#[test]
fn a_negative_peer_pid_is_a_dead_peer_not_a_panic() {
    for pid in [u32::MAX, 0x8000_0000] {
        let chan = Channel::create_memfd(&Config::new(4096)).unwrap();
        let mut rx = chan.receiver().unwrap();
        raw(&chan).write_all_at(&pid.to_le_bytes(), 136).unwrap();
        assert_eq!(rx.try_recv().unwrap_err(), RecvError::PeerDead, "sender pid {pid:#x}");
    }
}

#[test]
fn fd_passed_over_a_unix_socket() {
    let (a, b) = UnixStream::pair().unwrap();
    let chan = Channel::create_memfd(&Config::new(4096)).unwrap();
    chan.send_over(&a).unwrap();
    let theirs = Channel::recv_from(&b).unwrap();
    let mut tx = chan.sender().unwrap();
    let mut rx = theirs.receiver().unwrap();
    tx.try_send(b"via SCM_RIGHTS").unwrap();
    assert_eq!(&*rx.recv(T).unwrap(), b"via SCM_RIGHTS");
    drop(a);
    assert!(Channel::recv_from(&b).is_err());
}

#[test]
fn duplex_request_reply_over_memfds_and_names() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut d = Duplex::accept_over(&b).unwrap();
        while let Ok(req) = d.rx.recv_vec(T) {
            let mut reply = req.clone();
            reply.reverse();
            d.tx.send(&reply, T).unwrap();
        }
    });
    let mut d = Duplex::connect_over(&a, &Config::new(4096)).unwrap();
    for i in 0..1000u32 {
        let req = i.to_be_bytes();
        d.tx.send(&req, T).unwrap();
        assert_eq!(d.rx.recv_vec(T).unwrap(), i.to_le_bytes());
    }
    drop(d);
    server.join().unwrap();

    let name = unique("duplex");
    let mut a = Duplex::create_named(&name, &Config::new(4096)).unwrap();
    let mut b = Duplex::open_named(&name).unwrap();
    Duplex::unlink_named(&name).unwrap();
    a.tx.try_send(b"ping").unwrap();
    assert_eq!(&*b.rx.recv(T).unwrap(), b"ping");
    b.tx.try_send(b"pong").unwrap();
    assert_eq!(&*a.rx.recv(T).unwrap(), b"pong");
}

/// CPU time the calling thread has used (user and system), from its own clock.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A thread that may run on one CPU only does not spin by default: spinning would
/// keep a peer that needs the same CPU from running (a relay and its backend pinned
/// together). With more CPUs, the default spins. Beyond the default's value, a
/// receiver created and blocked on such a thread is seen to sleep: it uses a small
/// part of its wait in CPU time.
///
/// Proven by mutation: `WaitMode::default` answering `BusyPoll` on one CPU fails
/// both the value and the CPU assertion (the wait burns its 500 ms); answering
/// `spins: 2000` fails the value assertion.
#[test]
fn default_wait_mode_does_not_spin_on_one_cpu() {
    let mask = rustix::thread::sched_getaffinity(None).expect("affinity");
    let Some(cpu) = (0..rustix::thread::CpuSet::MAX_CPU).find(|&c| mask.is_set(c)) else { return };
    std::thread::spawn(move || {
        let mut one = rustix::thread::CpuSet::new();
        one.set(cpu);
        rustix::thread::sched_setaffinity(None, &one).expect("pin");
        assert_eq!(WaitMode::default(), WaitMode::Block { spins: 0 });
        let chan = Channel::create_memfd(&Config::new(1 << 16)).unwrap();
        let (_tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
        let before = thread_cpu();
        let err = rx.recv(Some(Duration::from_millis(500))).map(|m| m.len()).unwrap_err();
        let used = thread_cpu() - before;
        assert_eq!(err, RecvError::TimedOut);
        // Sleeping costs well under a millisecond; spinning costs the whole 500 ms.
        assert!(used < Duration::from_millis(100), "a blocked receiver on one CPU used {used:?} of CPU in 500 ms");
    })
    .join()
    .unwrap();
    if mask.count() > 1 {
        assert_eq!(WaitMode::default(), WaitMode::Block { spins: 2000 });
    }
}

/// A sender that is alive but stops moving (it neither sends nor beats) is
/// reported as `PeerDead` to a receiver with a peer timeout, rather than waited
/// for until the receive's own timeout: its process is alive (this one), so only
/// the heartbeat can tell. The process check alone would wait the full 10 s.
///
/// Proven by mutation: `PeerWatch::check` ignoring `timeout` fails it (`TimedOut`
/// after 10 s instead of `PeerDead`).
#[test]
fn a_receiver_gives_up_on_a_sender_that_stops_beating() {
    let chan = Channel::create_memfd(&Config::new(1 << 16)).unwrap();
    let (tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    rx.set_peer_timeout(Some(Duration::from_millis(200)));
    tx.heartbeat();
    let err = rx.recv(Some(Duration::from_secs(10))).map(|m| m.len()).unwrap_err();
    assert_eq!(err, RecvError::PeerDead);
    drop(tx);
}

/// The other side of the same rule: a sender that beats while it has nothing to
/// send keeps a receiver with a peer timeout waiting (its receive times out), and a
/// sender blocked on a full ring gives up on a receiver that stops beating.
///
/// Proven by mutation: `Sender::heartbeat` doing nothing fails the first half
/// (`PeerDead` instead of `TimedOut`).
#[test]
fn a_beating_peer_is_waited_for_and_a_silent_one_is_not() {
    let chan = Channel::create_memfd(&Config::new(1 << 16)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    rx.set_peer_timeout(Some(Duration::from_millis(200)));
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (tx, stop) = (&tx, &stop);
        s.spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tx.heartbeat();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let err = rx.recv(Some(Duration::from_millis(1500))).map(|m| m.len()).unwrap_err();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(err, RecvError::TimedOut, "a beating sender was declared dead");
    });
    // Now the receiver stops moving: fill the ring and wait for room.
    tx.set_peer_timeout(Some(Duration::from_millis(200)));
    rx.heartbeat();
    while tx.try_send(&[7; 1000]).is_ok() {}
    assert_eq!(tx.send(&[7; 1000], Some(Duration::from_secs(10))), Err(SendError::PeerDead));
}

/// Setting the same peer timeout again before each short receive does not
/// restart its count: a sender that neither beats nor sends is still declared
/// dead once the limit has passed.
///
/// Proven by mutation: `PeerWatch::set_timeout` restarting the count on every
/// call fails it (every receive times out until the 5 s bound).
#[test]
fn setting_the_peer_timeout_again_does_not_restart_its_count() {
    let chan = Channel::create_memfd(&Config::new(1 << 16)).unwrap();
    let (tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    tx.heartbeat();
    let start = std::time::Instant::now();
    let err = loop {
        rx.set_peer_timeout(Some(Duration::from_millis(200)));
        match rx.recv(Some(Duration::from_millis(50))).map(|m| m.len()) {
            Err(RecvError::TimedOut) if start.elapsed() < Duration::from_secs(5) => {}
            other => break other,
        }
    };
    assert_eq!(err, Err(RecvError::PeerDead), "after {:?}", start.elapsed());
    drop(tx);
}

/// The copying calls deliver every byte in place, whatever the length: whole words
/// and the bytes after the last one.
#[test]
fn copies_are_byte_exact_at_every_length() {
    let chan = Channel::create_memfd(&Config::new(1 << 16)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let mut out = [0xeeu8; 2100];
    for len in (0..=100).chain([1023, 1024, 1025, 2047, 2099]) {
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        tx.send(&msg, T).unwrap();
        assert_eq!(rx.recv(T).unwrap().copy_to(&mut out).unwrap(), len);
        assert_eq!(&out[..len], &msg[..], "length {len}");
        tx.send(&msg, T).unwrap();
        assert_eq!(rx.try_recv_into(&mut out[..len]).unwrap(), len);
        assert_eq!(&out[..len], &msg[..], "length {len}");
    }
}

/// A batch goes in whole or not at all: `Full` when it does not fit (nothing of it
/// is seen), `BatchTooLarge` when it never could, `TooLarge` for one oversized
/// message; the receiving side hands over at most `limit` per call, in order.
#[test]
fn batches_are_whole_and_bounded() {
    let chan = Channel::create_memfd(&Config::new(256)).unwrap();
    let (mut tx, mut rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let none: [&[u8]; 0] = [];
    tx.try_send_batch(&none).unwrap();
    assert_eq!(rx.try_recv_batch(8, |_| {}).unwrap_err(), RecvError::Empty);
    assert_eq!(rx.try_recv_batch(0, |_| unreachable!()), Ok(0));
    tx.try_send(&[0; 120]).unwrap(); // 128 of 256 bytes
    tx.try_send(&[0; 8]).unwrap(); // 144
    let four = [[1u8; 24], [2; 24], [3; 24], [4; 24]]; // 128 bytes of records
    assert_eq!(tx.try_send_batch(&four), Err(SendError::Full));
    assert_eq!(rx.recv(T).unwrap().len(), 120);
    assert_eq!(rx.recv(T).unwrap().len(), 8, "nothing of the refused batch");
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Empty);
    tx.send_batch(&four, T).unwrap();
    assert_eq!(tx.try_send_batch(&[[0u8; 24]; 5]), Err(SendError::BatchTooLarge { bytes: 160, max: 128 }));
    assert_eq!(tx.try_send_batch(&[&[0u8; 8][..], &[0; 121]]), Err(SendError::TooLarge { len: 121, max: 120 }));
    let mut seen = Vec::new();
    assert_eq!(rx.recv_batch(3, T, |m| seen.push(m[0])), Ok(3));
    assert_eq!(rx.try_recv_batch(3, |m| seen.push(m[0])), Ok(1));
    assert_eq!(seen, [1, 2, 3, 4]);
    drop(tx);
    assert_eq!(rx.recv_batch(3, T, |_| {}), Err(RecvError::Closed));
}
