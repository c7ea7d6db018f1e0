//! The C ABI called from Rust, as C would call it: round trips, reserve/commit,
//! lending, wake descriptors, and every kind of bad input a C caller can pass
//! (NULL, zero, closed and foreign handles, lengths over the maximum, calls out of
//! order, two threads on one end), each an error code.

use std::ffi::CStr;
use std::ptr::{null, null_mut};

use berth_ipc_ffi::*;

/// A memfd channel with both ends open.
fn open(flags: u32) -> (BerthIpcChannel, BerthIpcSender, BerthIpcReceiver) {
    let (mut ch, mut tx, mut rx) = (0, 0, 0);
    // SAFETY: valid out-parameters.
    unsafe {
        assert_eq!(berth_ipc_channel_create(4096, 0, flags, &mut ch), BERTH_IPC_OK);
        assert_eq!(berth_ipc_sender_open(ch, &mut tx), BERTH_IPC_OK);
        assert_eq!(berth_ipc_receiver_open(ch, &mut rx), BERTH_IPC_OK);
    }
    (ch, tx, rx)
}

fn close(ch: BerthIpcChannel, tx: BerthIpcSender, rx: BerthIpcReceiver) {
    assert_eq!(berth_ipc_sender_close(tx), BERTH_IPC_OK);
    assert_eq!(berth_ipc_receiver_close(rx), BERTH_IPC_OK);
    assert_eq!(berth_ipc_channel_close(ch), BERTH_IPC_OK);
}

fn last_error() -> String {
    let mut buf = [0 as std::ffi::c_char; 256];
    // SAFETY: a buffer of the given length.
    unsafe { berth_ipc_last_error(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: the function NUL-terminates within the buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

#[test]
fn send_reserve_and_receive_in_place() {
    let (ch, tx, rx) = open(0);
    // SAFETY: every pointer is valid for what each call says.
    unsafe {
        assert_eq!(berth_ipc_send(tx, b"one".as_ptr(), 3, 1000), BERTH_IPC_OK);
        let mut buf = null_mut();
        assert_eq!(berth_ipc_reserve(tx, 10, 1000, &mut buf), BERTH_IPC_OK);
        buf.copy_from(b"two".as_ptr(), 3);
        assert_eq!(berth_ipc_commit(tx, 3), BERTH_IPC_OK);
        assert_eq!(berth_ipc_reserve(tx, 5, 0, &mut buf), BERTH_IPC_OK);
        assert_eq!(berth_ipc_abort(tx), BERTH_IPC_OK);
        assert_eq!(berth_ipc_try_send(tx, null(), 0), BERTH_IPC_OK, "an empty message");
        let (mut data, mut len) = (null(), 0);
        for want in [&b"one"[..], b"two", b""] {
            assert_eq!(berth_ipc_recv(rx, 1000, &mut data, &mut len), BERTH_IPC_OK);
            assert_eq!(std::slice::from_raw_parts(data, len), want);
            assert_eq!(berth_ipc_release(rx), BERTH_IPC_OK);
        }
        assert_eq!(berth_ipc_try_recv(rx, &mut data, &mut len), BERTH_IPC_EMPTY, "the aborted reservation");
        assert_eq!(berth_ipc_recv(rx, 20, &mut data, &mut len), BERTH_IPC_TIMED_OUT);
        let mut max = 0;
        assert_eq!(berth_ipc_channel_max_message(ch, &mut max), BERTH_IPC_OK);
        assert_eq!(max, 2040);
    }
    close(ch, tx, rx);
}

/// Proven by mutation: `berth_ipc_release` not releasing (the `try_recv` guard
/// forgotten) fails the second receive (the same message again).
#[test]
fn calls_out_of_order_are_state_errors() {
    let (ch, tx, rx) = open(0);
    // SAFETY: every pointer is valid for what each call says.
    unsafe {
        let mut buf = null_mut();
        assert_eq!(berth_ipc_commit(tx, 1), BERTH_IPC_STATE, "commit without reserve");
        assert_eq!(berth_ipc_abort(tx), BERTH_IPC_STATE);
        assert_eq!(berth_ipc_reserve(tx, 8, 0, &mut buf), BERTH_IPC_OK);
        assert_eq!(berth_ipc_reserve(tx, 8, 0, &mut buf), BERTH_IPC_STATE, "a second reserve");
        assert_eq!(berth_ipc_try_send(tx, b"x".as_ptr(), 1), BERTH_IPC_STATE, "send during a reserve");
        assert_eq!(berth_ipc_commit(tx, 9), BERTH_IPC_TOO_LARGE, "commit beyond the reservation");
        assert_eq!(berth_ipc_commit(tx, 8), BERTH_IPC_OK);
        assert_eq!(berth_ipc_try_send(tx, b"y".as_ptr(), 1), BERTH_IPC_OK);
        let (mut data, mut len) = (null(), 0);
        assert_eq!(berth_ipc_release(rx), BERTH_IPC_STATE, "nothing lent");
        assert_eq!(berth_ipc_try_recv(rx, &mut data, &mut len), BERTH_IPC_OK);
        assert_eq!(len, 8);
        assert_eq!(berth_ipc_try_recv(rx, &mut data, &mut len), BERTH_IPC_STATE, "receive while lent");
        let mut copy = [0u8; 4];
        assert_eq!(berth_ipc_recv_copy(rx, copy.as_mut_ptr(), 4, &mut len, 0), BERTH_IPC_STATE);
        assert_eq!(berth_ipc_release(rx), BERTH_IPC_OK);
        assert_eq!(berth_ipc_recv_copy(rx, copy.as_mut_ptr(), 0, &mut len, 0), BERTH_IPC_BUFFER_TOO_SMALL);
        assert_eq!(len, 1, "the size of the message that stays queued");
        assert_eq!(berth_ipc_recv_copy(rx, copy.as_mut_ptr(), 4, &mut len, 0), BERTH_IPC_OK);
        assert_eq!(&copy[..len], b"y");
    }
    close(ch, tx, rx);
}

#[test]
fn null_pointers_are_errors() {
    let (ch, tx, rx) = open(0);
    // SAFETY: the pointers are NULL or valid, which is the contract.
    unsafe {
        assert_eq!(berth_ipc_channel_create(4096, 0, 0, null_mut()), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_channel_open_named(null(), &mut 0), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_channel_create_named(null(), 4096, 0, 0, &mut 0), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_sender_open(ch, null_mut()), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_send(tx, null(), 5, 0), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_try_send(tx, null(), 5), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_reserve(tx, 5, 0, null_mut()), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_try_recv(rx, null_mut(), &mut 0), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_recv(rx, 0, &mut null(), null_mut()), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_recv_copy(rx, null_mut(), 5, &mut 0, 0), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_channel_fd(ch, null_mut()), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_receiver_arm(rx, null_mut()), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_receiver_max_sleep_ms(rx, null_mut()), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_sender_max_sleep_ms(tx, null_mut()), BERTH_IPC_NULL);
        assert_eq!(berth_ipc_last_error(null_mut(), 0) > 0, !last_error().is_empty());
    }
    close(ch, tx, rx);
}

/// Proven by mutation: `Table::find` not comparing generations fails the
/// closed-handle assertions (a closed slot reused by a new channel answers OK).
#[test]
fn zero_closed_and_foreign_handles_are_errors() {
    let (ch, tx, rx) = open(0);
    close(ch, tx, rx);
    let (ch2, tx2, rx2) = open(0);
    // SAFETY: every pointer is valid for what each call says.
    unsafe {
        for h in [0, tx, u64::MAX, 1 << 32, (5000 << 32) | 1] {
            assert_eq!(berth_ipc_try_send(h, b"x".as_ptr(), 1), BERTH_IPC_BAD_HANDLE, "{h:#x}");
            assert_eq!(berth_ipc_sender_close(h), BERTH_IPC_BAD_HANDLE, "{h:#x}");
        }
        assert_eq!(berth_ipc_try_recv(rx, &mut null(), &mut 0), BERTH_IPC_BAD_HANDLE);
        assert_eq!(berth_ipc_receiver_close(rx), BERTH_IPC_BAD_HANDLE, "closed twice");
        assert_eq!(berth_ipc_channel_close(ch), BERTH_IPC_BAD_HANDLE);
        assert_eq!(berth_ipc_sender_open(ch, &mut 0), BERTH_IPC_BAD_HANDLE);
        // A channel or receiver id is not a sender id.
        assert_eq!(berth_ipc_try_send(ch2, b"x".as_ptr(), 1), BERTH_IPC_BAD_HANDLE);
        assert_eq!(berth_ipc_try_send(rx2, b"x".as_ptr(), 1), BERTH_IPC_BAD_HANDLE);
        assert_eq!(berth_ipc_try_send(tx2, b"x".as_ptr(), 1), BERTH_IPC_OK);
    }
    close(ch2, tx2, rx2);
}

#[test]
fn lengths_over_the_maximum_and_bad_arguments_are_errors() {
    let (ch, tx, rx) = open(0);
    let big = vec![0u8; 5000];
    // SAFETY: every pointer is valid for what each call says.
    unsafe {
        assert_eq!(berth_ipc_try_send(tx, big.as_ptr(), 2041), BERTH_IPC_TOO_LARGE);
        assert_eq!(berth_ipc_send(tx, big.as_ptr(), 5000, 10), BERTH_IPC_TOO_LARGE);
        assert_eq!(berth_ipc_reserve(tx, usize::MAX, 0, &mut null_mut()), BERTH_IPC_TOO_LARGE);
        assert_eq!(berth_ipc_sender_arm(tx, 2041, &mut 0), BERTH_IPC_NO_WAKE_FD);
        assert_eq!(berth_ipc_receiver_arm(rx, &mut 0), BERTH_IPC_NO_WAKE_FD);
        assert_eq!(berth_ipc_receiver_wake_fd(rx, &mut 0), BERTH_IPC_NO_WAKE_FD);
        assert_eq!(berth_ipc_channel_wake_fds(ch, &mut 0, &mut 0), BERTH_IPC_NO_WAKE_FD);
        let mut out = 0;
        assert_eq!(berth_ipc_channel_create(3000, 0, 0, &mut out), BERTH_IPC_INVALID);
        assert!(last_error().contains("power of two"), "{}", last_error());
        assert_eq!(berth_ipc_channel_create(4096, 0, 0x80, &mut out), BERTH_IPC_INVALID);
        assert_eq!(berth_ipc_channel_create_named(c"../x".as_ptr(), 4096, 0, 0, &mut out), BERTH_IPC_INVALID);
        assert_eq!(berth_ipc_channel_open_named(c"no-such-berth-channel".as_ptr(), &mut out), BERTH_IPC_OPEN_FAILED);
        assert!(!last_error().is_empty());
        assert_eq!(berth_ipc_channel_from_fd(-1, -1, -1, &mut out), BERTH_IPC_INVALID);
        let mut other = 0;
        assert_eq!(berth_ipc_sender_open(ch, &mut other), BERTH_IPC_ROLE_TAKEN);
    }
    for code in 0..=BERTH_IPC_BUFFER_TOO_SMALL {
        // SAFETY: a static NUL-terminated string.
        let text = unsafe { CStr::from_ptr(berth_ipc_error_message(code)) };
        assert_ne!(text.to_str().unwrap(), "unknown status code", "code {code}");
    }
    close(ch, tx, rx);
}

/// A second thread calling into an end that a first thread is blocked in gets
/// `BUSY` at once, as does closing it; the first call finishes normally.
///
/// Proven by mutation: `Table::get` not checking the busy bit fails it (OK or a
/// data race instead of BUSY).
#[test]
fn two_threads_on_one_end_get_busy() {
    let (ch, tx, rx) = open(0);
    let blocked = std::thread::spawn(move || {
        let (mut data, mut len) = (null(), 0);
        // SAFETY: valid out-parameters.
        unsafe { berth_ipc_recv(rx, 500, &mut data, &mut len) }
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    // SAFETY: valid out-parameters.
    unsafe {
        assert_eq!(berth_ipc_try_recv(rx, &mut null(), &mut 0), BERTH_IPC_BUSY);
        assert_eq!(berth_ipc_receiver_arm(rx, &mut 0), BERTH_IPC_BUSY);
    }
    assert_eq!(berth_ipc_receiver_close(rx), BERTH_IPC_BUSY);
    assert_eq!(blocked.join().unwrap(), BERTH_IPC_TIMED_OUT);
    close(ch, tx, rx);
}

/// The wake descriptors through the ABI: a channel passed as three descriptors,
/// an armed receiver woken by a commit in the other handle set.
#[test]
fn wake_descriptors_through_the_abi() {
    let (ch, tx, rx) = open(BERTH_IPC_WAKE_FDS);
    // SAFETY: every pointer is valid for what each call says; the duplicated
    // descriptors are handed over to `berth_ipc_channel_from_fd`.
    unsafe {
        let (mut fd, mut rfd, mut tfd) = (-1, -1, -1);
        assert_eq!(berth_ipc_channel_fd(ch, &mut fd), BERTH_IPC_OK);
        assert_eq!(berth_ipc_channel_wake_fds(ch, &mut rfd, &mut tfd), BERTH_IPC_OK);
        let dup = |n: i32| {
            use std::os::fd::{BorrowedFd, IntoRawFd};
            BorrowedFd::borrow_raw(n).try_clone_to_owned().unwrap().into_raw_fd()
        };
        let mut ch2 = 0;
        assert_eq!(berth_ipc_channel_from_fd(dup(fd), dup(rfd), -1, &mut ch2), BERTH_IPC_INVALID);
        assert_eq!(berth_ipc_channel_from_fd(dup(fd), -1, -1, &mut ch2), BERTH_IPC_OPEN_FAILED);
        assert_eq!(berth_ipc_channel_from_fd(dup(fd), dup(rfd), dup(tfd), &mut ch2), BERTH_IPC_OK);
        let mut sleep = -1;
        assert_eq!(berth_ipc_receiver_arm(rx, &mut sleep), BERTH_IPC_OK);
        assert_eq!(sleep, 1);
        let mut wfd = -1;
        assert_eq!(berth_ipc_receiver_wake_fd(rx, &mut wfd), BERTH_IPC_OK);
        assert!(!signalled(std::os::fd::BorrowedFd::borrow_raw(wfd)));
        assert_eq!(berth_ipc_receiver_arm(rx, &mut sleep), BERTH_IPC_OK);
        assert_eq!(sleep, 1);
        assert_eq!(berth_ipc_try_send(tx, b"wake".as_ptr(), 4), BERTH_IPC_OK);
        assert!(signalled(std::os::fd::BorrowedFd::borrow_raw(wfd)), "the commit wrote the receiver's descriptor");
        assert_eq!(berth_ipc_receiver_arm(rx, &mut sleep), BERTH_IPC_OK);
        assert_eq!(sleep, 0, "a message is there");
        assert_eq!(berth_ipc_channel_close(ch2), BERTH_IPC_OK);
    }
    close(ch, tx, rx);
}

/// Whether an eventfd has been written since it was last read (a non-blocking
/// read of its counter succeeds); reading empties it, as arming would.
fn signalled(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::io::Read;
    let mut counter = [0u8; 8];
    std::fs::File::from(fd.try_clone_to_owned().unwrap()).read(&mut counter).is_ok_and(|n| n == 8)
}

/// `BERTH_IPC_FENCED` makes a fenced channel (the flag is in its header, as a Rust
/// end opening the descriptor sees) that carries messages as any other; without
/// the flag the channel is not fenced. Proven by mutation: `config` ignoring the
/// flag fails the first assertion.
#[test]
fn a_fenced_channel_from_c() {
    let fenced_of = |flags: u32| {
        let (ch, tx, rx) = open(flags);
        let mut fd = -1;
        // SAFETY: valid pointers; the duplicate is owned by the Rust channel.
        let fenced = unsafe {
            let dup = |n: i32| std::os::fd::BorrowedFd::borrow_raw(n).try_clone_to_owned().unwrap();
            assert_eq!(berth_ipc_channel_fd(ch, &mut fd), BERTH_IPC_OK);
            let (mut rfd, mut tfd) = (-1, -1);
            let chan = if berth_ipc_channel_wake_fds(ch, &mut rfd, &mut tfd) == BERTH_IPC_OK {
                berth_ipc::Channel::from_fds(dup(fd), dup(rfd), dup(tfd))
            } else {
                berth_ipc::Channel::from_fd(dup(fd))
            };
            chan.unwrap().fenced()
        };
        // SAFETY: valid pointers and lengths.
        unsafe {
            assert_eq!(berth_ipc_try_send(tx, b"fence".as_ptr(), 5), BERTH_IPC_OK);
            let mut buf = [0u8; 8];
            let mut len = 0;
            assert_eq!(berth_ipc_recv_copy(rx, buf.as_mut_ptr(), buf.len(), &mut len, 0), BERTH_IPC_OK);
            assert_eq!(&buf[..len], b"fence");
        }
        close(ch, tx, rx);
        fenced
    };
    assert!(fenced_of(BERTH_IPC_FENCED), "created with BERTH_IPC_FENCED");
    assert!(fenced_of(BERTH_IPC_FENCED | BERTH_IPC_WAKE_FDS));
    assert!(!fenced_of(0));
}

/// The wait bound an event loop passes to `poll`: 50 ms while the end has not yet
/// handed its peer to the watcher thread (no arm yet), -1 (no bound) once an arm
/// has, the peer's death then writing the descriptor. Both ends live in this
/// process, so the watched peer is this process; the channel is fenced, so the
/// bound does not depend on this machine's membarrier.
///
/// Proven by mutation: `poll_ms` mapping `None` to 0 fails it.
#[test]
fn max_sleep_is_a_poll_timeout() {
    let (ch, tx, rx) = open(BERTH_IPC_WAKE_FDS | BERTH_IPC_FENCED);
    let (mut ms, mut sleep) = (0, 0);
    // SAFETY: valid out-parameters.
    unsafe {
        assert_eq!(berth_ipc_receiver_max_sleep_ms(rx, &mut ms), BERTH_IPC_OK);
        assert_eq!(ms, 50);
        assert_eq!(berth_ipc_receiver_arm(rx, &mut sleep), BERTH_IPC_OK);
        assert_eq!(sleep, 1);
        assert_eq!(berth_ipc_receiver_max_sleep_ms(rx, &mut ms), BERTH_IPC_OK);
        assert_eq!(ms, -1);
        assert_eq!(berth_ipc_sender_max_sleep_ms(tx, &mut ms), BERTH_IPC_OK);
        assert_eq!(ms, 50);
    }
    close(ch, tx, rx);
}
