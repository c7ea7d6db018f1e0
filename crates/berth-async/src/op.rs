//! [`Op`]: one submitted port operation as a future, and what happens when it is
//! dropped in flight.
//!
//! The runtime keeps an [`OpSlot`] per op of the port's pool. A submitted op is
//! `Waiting` (with the waker of the task awaiting it); its completion makes it
//! `Done`, which the future's next poll consumes, taking the op's lease and giving
//! the op back to the pool. A future dropped before that cancels the op and marks it
//! `Orphan`: the op — and the buffer the kernel may still be writing into — stays
//! with the port until its completion arrives, and only then goes back to the pool,
//! its lease to the arena.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use berth_buf::Lease;
use berth_ops::{OpError, OpId};
use berth_reactor::{CompletionPort, SocketId, SubmitError};

use crate::error::Error;
use crate::runtime::Inner;

/// Where the runtime keeps an op's completion until its future takes it.
#[derive(Debug, Default)]
pub(crate) enum OpSlot {
    /// Not submitted through this crate.
    #[default]
    Idle,
    /// Submitted; the waker of the task awaiting it.
    Waiting(Option<Waker>),
    /// Completed, not yet taken by its future.
    Done { result: Result<usize, OpError>, socket: SocketId },
    /// Its future was dropped in flight: give it back when it completes.
    Orphan,
}

/// A completed op, given back to the pool.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) result: Result<usize, OpError>,
    pub(crate) socket: SocketId,
    pub(crate) lease: Option<Lease>,
    pub(crate) remote: Option<SocketAddr>,
}

/// A submitted op; resolves once its completion arrives.
#[derive(Debug)]
pub(crate) struct Op {
    rt: Rc<Inner>,
    id: OpId,
    done: bool,
}

/// What to attach to an op before its submit.
pub(crate) struct Setup {
    pub(crate) lease: Option<(Lease, Range<usize>)>,
    pub(crate) remote: Option<SocketAddr>,
}

impl Setup {
    pub(crate) const NONE: Setup = Setup { lease: None, remote: None };

    pub(crate) fn lease(lease: Lease, range: Range<usize>) -> Setup {
        Setup { lease: Some((lease, range)), remote: None }
    }
}

impl Inner {
    /// Takes an op, attaches `setup`, submits it with `submit`. On refusal the op goes
    /// back to the pool and the lease, if any, back to the caller.
    pub(crate) fn submit(
        self: &Rc<Self>,
        setup: Setup,
        submit: impl FnOnce(&mut CompletionPort<()>, OpId) -> Result<(), SubmitError>,
    ) -> Result<Op, (Error, Option<Lease>)> {
        let mut port = self.port.borrow_mut();
        let Ok(id) = port.take_op() else {
            return Err((Error::PoolExhausted, setup.lease.map(|(l, _)| l)));
        };
        let attached = match port.op_mut(id) {
            Ok(args) => {
                args.set_remote_endpoint(setup.remote);
                match setup.lease {
                    Some((lease, range)) => args.set_buffer(lease, range).map(drop).map_err(|e| e.lease),
                    None => Ok(()),
                }
            }
            Err(e) => {
                let _ = port.give_op(id);
                return Err((e.into(), setup.lease.map(|(l, _)| l)));
            }
        };
        if let Err(lease) = attached {
            let _ = port.give_op(id);
            return Err((SubmitError::NoBuffer.into(), Some(lease)));
        }
        if let Err(e) = submit(&mut port, id) {
            let lease = port.op_mut(id).ok().and_then(|a| a.take_buffer());
            let _ = port.give_op(id);
            return Err((e.into(), lease));
        }
        drop(port);
        if let Some(slot) = self.ops.borrow_mut().get_mut(id.index()) {
            *slot = OpSlot::Waiting(None);
        }
        Ok(Op { rt: self.clone(), id, done: false })
    }
}

impl Future for Op {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = &mut *self;
        let (result, socket) = {
            let mut ops = this.rt.ops.borrow_mut();
            let Some(slot) = ops.get_mut(this.id.index()) else {
                this.done = true;
                return Poll::Ready(Outcome {
                    result: Err(OpError::Other),
                    socket: SocketId::NONE,
                    lease: None,
                    remote: None,
                });
            };
            match slot {
                OpSlot::Done { result, socket } => {
                    let out = (*result, *socket);
                    *slot = OpSlot::Idle;
                    out
                }
                OpSlot::Waiting(waker) => {
                    // Cloning a waker is a reference count: no allocation.
                    match waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
                OpSlot::Idle | OpSlot::Orphan => {
                    this.done = true;
                    return Poll::Ready(Outcome {
                        result: Err(OpError::Other),
                        socket: SocketId::NONE,
                        lease: None,
                        remote: None,
                    });
                }
            }
        };
        this.done = true;
        let mut port = this.rt.port.borrow_mut();
        let (lease, remote) = match port.op_mut(this.id) {
            Ok(args) => (args.take_buffer(), args.remote_endpoint()),
            Err(_) => (None, None),
        };
        let _ = port.give_op(this.id);
        Poll::Ready(Outcome { result, socket, lease, remote })
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let finished = {
            let mut ops = self.rt.ops.borrow_mut();
            let Some(slot) = ops.get_mut(self.id.index()) else { return };
            match std::mem::replace(slot, OpSlot::Orphan) {
                // Completed but not taken: the op is idle, hand it back now.
                OpSlot::Done { .. } => {
                    *slot = OpSlot::Idle;
                    true
                }
                _ => false,
            }
        };
        let mut port = self.rt.port.borrow_mut();
        if finished {
            // `give_op` resets the op, which drops its lease into the arena.
            let _ = port.give_op(self.id);
            return;
        }
        // In flight: ask for it back. Its buffer stays with the op (on io_uring, with
        // the kernel) until the completion arrives; the runtime then gives it back.
        self.rt.orphans.set(self.rt.orphans.get() + 1);
        let _ = port.cancel(self.id);
    }
}
