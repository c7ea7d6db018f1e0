//! Any descriptor on the port (`register_fd` + `wait_ready`: an eventfd, a pipe) and
//! the stand-alone timer op, on whichever driver `BERTH_DRIVER` picks.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use berth_ops::{OpError, OpId, OpKind};
use berth_reactor::{Completion, CompletionPort, Interest, Ready, SocketId, SubmitError};
use common::wait_for;
use rustix::event::{EventfdFlags, eventfd};

fn port() -> CompletionPort<()> {
    CompletionPort::builder().ops(32).max_sockets(16).build(|_| ()).unwrap()
}

/// Waits up to `limit` and returns every completion that came.
fn drain(port: &mut CompletionPort<()>, limit: Duration) -> Vec<Completion> {
    let mut out = Vec::with_capacity(16);
    let mut all = Vec::new();
    let until = Instant::now() + limit;
    while Instant::now() < until {
        port.wait(&mut out, Some(until.saturating_duration_since(Instant::now()))).unwrap();
        all.append(&mut out);
    }
    all
}

fn result_of(c: &Completion) -> (OpId, SocketId, Result<usize, OpError>) {
    match *c {
        Completion::Op { op, socket, result, .. } => (op, socket, result),
        Completion::Posted { .. } => panic!("a post: {c:?}"),
    }
}

fn nonblocking_eventfd() -> OwnedFd {
    eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap()
}

#[test]
fn an_eventfd_completes_a_readiness_op_only_once_signalled() {
    let mut port = port();
    let efd = nonblocking_eventfd();
    let socket = port.register_fd(&efd).unwrap();
    let op = port.take_op().unwrap();
    port.wait_ready(socket, op, Interest::Readable).unwrap();
    assert!(drain(&mut port, Duration::from_millis(100)).is_empty(), "ready before anything was written");
    assert_eq!(port.stats().pending, 1);

    rustix::io::write(&efd, &1u64.to_ne_bytes()).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { kind: OpKind::Ready, .. }));
    let (id, on, result) = result_of(&done);
    assert_eq!((id, on), (op, socket));
    assert!(Ready::from_result(result.unwrap()).is_readable());

    // Level, not edge: still readable until it is read, so the next op completes too.
    port.wait_ready(socket, op, Interest::Readable).unwrap();
    wait_for(&mut port, |c| matches!(c, Completion::Op { kind: OpKind::Ready, .. }));
    let mut count = [0u8; 8];
    rustix::io::read(&efd, &mut count).unwrap();
    assert_eq!(u64::from_ne_bytes(count), 1);
    port.wait_ready(socket, op, Interest::Readable).unwrap();
    assert!(drain(&mut port, Duration::from_millis(100)).is_empty(), "ready after the count was read");
}

#[test]
fn a_pipe_reports_writable_readable_and_hang_up() {
    let mut port = port();
    let (reader, writer) = std::io::pipe().unwrap();
    let r = port.register_fd(&reader).unwrap();
    let w = port.register_fd(&writer).unwrap();
    let (read_op, write_op) = (port.take_op().unwrap(), port.take_op().unwrap());
    port.wait_ready(w, write_op, Interest::Writable).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(Ready::from_result(result_of(&done).2.unwrap()).is_writable());

    port.wait_ready(r, read_op, Interest::Readable).unwrap();
    assert!(drain(&mut port, Duration::from_millis(50)).is_empty());
    (&writer).write_all(b"x").unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    let ready = Ready::from_result(result_of(&done).2.unwrap());
    assert!(ready.is_readable() && !ready.is_hup(), "{ready:?}");
    let mut byte = [0u8; 1];
    (&reader).read_exact(&mut byte).unwrap();

    // The caller closes both of its descriptors; the port's duplicate of the write
    // end keeps the pipe open, so no hang-up until the port closes it too.
    port.wait_ready(r, read_op, Interest::Readable).unwrap();
    drop(writer);
    assert!(drain(&mut port, Duration::from_millis(50)).is_empty(), "hang-up while the port holds the write end");
    port.close(w).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert!(Ready::from_result(result_of(&done).2.unwrap()).is_hup());
}

#[test]
fn cancel_close_and_deadline_end_a_readiness_op() {
    let mut port = port();
    let efd = nonblocking_eventfd();
    let socket = port.register_fd(efd.as_fd()).unwrap();
    let op = port.take_op().unwrap();

    port.wait_ready(socket, op, Interest::Readable).unwrap();
    assert!(matches!(port.wait_ready(socket, op, Interest::Readable), Err(SubmitError::Busy)));
    port.cancel(op).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert_eq!(result_of(&done).2, Err(OpError::Cancelled));

    port.set_deadline(op, Some(Instant::now() + Duration::from_millis(30))).unwrap();
    port.wait_ready(socket, op, Interest::Readable).unwrap();
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert_eq!(result_of(&done).2, Err(OpError::TimedOut));
    port.set_deadline(op, None).unwrap();

    port.wait_ready(socket, op, Interest::Readable).unwrap();
    assert_eq!(port.close(socket).unwrap(), 1);
    let done = wait_for(&mut port, |c| matches!(c, Completion::Op { .. }));
    assert_eq!(result_of(&done).2, Err(OpError::Cancelled));
    assert_eq!(port.stats().pending, 0);
    // The caller's own descriptor is untouched by the port's close.
    rustix::io::write(&efd, &1u64.to_ne_bytes()).unwrap();
    port.give_op(op).unwrap();
}

#[test]
fn bad_descriptors_are_refused() {
    let mut port = port();
    let closed = {
        let efd = nonblocking_eventfd();
        // A number that was a descriptor and is no longer.
        std::os::fd::AsRawFd::as_raw_fd(&efd)
    };
    // SAFETY: only to hand a closed number to the port, which must refuse it.
    let stale = unsafe { std::os::fd::BorrowedFd::borrow_raw(closed) };
    match port.register_fd(stale) {
        Err(SubmitError::Io(e)) => assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::BADF.raw_os_error())),
        other => panic!("expected EBADF, got {other:?}"),
    }
    let file = std::fs::File::open("/proc/self/status").unwrap();
    match port.register_fd(&file) {
        Err(SubmitError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied),
        other => panic!("expected a refusal for a regular file, got {other:?}"),
    }
    // A device epoll cannot wait on: refused on both drivers (io_uring would call
    // it ready at once).
    let null = std::fs::File::open("/dev/null").unwrap();
    match port.register_fd(&null) {
        Err(SubmitError::Io(e)) => assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::PERM.raw_os_error())),
        other => panic!("expected EPERM for /dev/null, got {other:?}"),
    }
    // Socket ops on a registered descriptor are refused; nothing is queued.
    let efd = nonblocking_eventfd();
    let socket = port.register_fd(&efd).unwrap();
    let op = port.take_op().unwrap();
    assert!(matches!(port.recv_pooled(socket, op), Err(SubmitError::WrongSocket)));
    assert_eq!(port.stats().pending, 0);
    assert!(matches!(port.wait_ready(SocketId::NONE, op, Interest::Readable), Err(SubmitError::StaleSocket)));
}

#[test]
fn timers_fire_in_order_not_early_and_a_cancelled_one_never() {
    let mut port = port();
    let (a, b, c) = (port.take_op().unwrap(), port.take_op().unwrap(), port.take_op().unwrap());
    let start = Instant::now();
    port.timer(a, start + Duration::from_millis(60)).unwrap();
    port.timer(b, start + Duration::from_millis(20)).unwrap();
    port.timer(c, start + Duration::from_millis(40)).unwrap();
    assert!(matches!(port.timer(a, start), Err(SubmitError::Busy)));
    assert!(matches!(port.give_op(a), Err(SubmitError::Busy)));
    port.cancel(c).unwrap();
    let first = result_of(&wait_for(&mut port, |_| true));
    assert_eq!(first, (c, SocketId::NONE, Err(OpError::Cancelled)));
    let mut fired = Vec::new();
    while fired.len() < 2 {
        let done = wait_for(&mut port, |_| true);
        let (op, socket, result) = result_of(&done);
        assert_eq!((socket, result), (SocketId::NONE, Ok(0)));
        let at = if op == a { 60 } else { 20 };
        assert!(start.elapsed() >= Duration::from_millis(at), "timer fired early");
        fired.push(op);
    }
    assert_eq!(fired, [b, a]);
    assert!(drain(&mut port, Duration::from_millis(80)).is_empty(), "the cancelled timer fired");
    assert_eq!(port.stats().pending, 0);
    // A time already past fires at the next wait; the op is reusable after.
    port.timer(a, start).unwrap();
    assert_eq!(result_of(&wait_for(&mut port, |_| true)), (a, SocketId::NONE, Ok(0)));
    port.give_op(a).unwrap();
}
