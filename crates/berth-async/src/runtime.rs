//! [`Runtime`]: a single-threaded executor around one completion port; tasks
//! ([`spawn`], [`JoinHandle`]), their wakers, and the [`Handle`] other threads use.
//!
//! The loop: poll the tasks whose wakers fired, then wait on the port (without
//! blocking if a task is runnable) and turn each completion into a wake of the task
//! awaiting that op. A waker fired on another thread queues its task and posts a
//! completion ([`PortHandle::post`]) to wake the port from its wait.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use berth_buf::BufferManager;
use berth_ops::{OpId, OpKind};
use berth_reactor::{Completion, CompletionPort, Driver, PortHandle, PortStats};
use slab::Slab;

use crate::error::{Error, JoinError};
use crate::op::OpSlot;

/// The key of the completions a remote wake posts to the port.
const WAKE: u64 = u64::MAX - 1;
/// The queue key of the future given to `block_on`.
const MAIN: u64 = u64::MAX;
/// How long a dropped runtime waits for cancelled ops to come back from the kernel.
const DRAIN: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves the data consistent (each
    // critical section is a push or a take).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// The runtime whose `block_on` runs on this thread: what [`spawn`], the socket
    /// constructors and [`sleep`](crate::sleep) use.
    static CONTEXT: RefCell<Option<Rc<Inner>>> = const { RefCell::new(None) };
    /// The address of that runtime's `Shared`: a waker compares it with its own to
    /// know whether it fires on the runtime's thread (no post needed).
    static RUNNING: Cell<usize> = const { Cell::new(0) };
}

/// State reachable from any thread: the run queue, remote spawns, the port's handle.
struct Shared {
    queue: Mutex<VecDeque<u64>>,
    spawns: Mutex<Vec<RemoteSpawn>>,
    has_spawns: AtomicBool,
    port: PortHandle,
    closed: AtomicBool,
}

type RemoteSpawn = Box<dyn RemoteTask>;

/// A task spawned from another thread, waiting for the runtime to take it.
trait RemoteTask: Send {
    /// The runtime takes it: it becomes one of its tasks.
    fn start(self: Box<Self>, inner: &Rc<Inner>);
    /// The runtime went away first: its join handle learns so.
    fn abandon(self: Box<Self>);
}

struct Remote<F: Future> {
    future: F,
    join: Arc<JoinShared<F::Output>>,
}

impl<F> RemoteTask for Remote<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    fn start(self: Box<Self>, inner: &Rc<Inner>) {
        let Remote { future, join } = *self;
        inner.spawn_task(Box::pin(future), join);
    }

    fn abandon(self: Box<Self>) {
        let Remote { future, join } = *self;
        drop(future);
        settle(&join, Err(JoinError::RuntimeGone));
    }
}

/// Publishes a task's output and wakes whoever awaits its [`JoinHandle`].
fn settle<T>(join: &JoinShared<T>, output: Result<T, JoinError>) {
    let waker = {
        let mut state = lock(&join.state);
        state.output = Some(output);
        state.finished = true;
        state.joiner.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

impl Shared {
    fn on_runtime_thread(self: &Arc<Self>) -> bool {
        RUNNING.with(Cell::get) == Arc::as_ptr(self) as usize
    }

    /// Queues `key` to be polled, waking the port if the caller is another thread.
    fn schedule(self: &Arc<Self>, key: u64) {
        lock(&self.queue).push_back(key);
        if !self.on_runtime_thread() {
            // WouldBlock: posts are already waiting, so the port wakes anyway;
            // BrokenPipe: the port is gone and nobody will poll the task.
            let _ = self.port.post(WAKE, 0);
        }
    }
}

/// A task's waker: queues the task at most once until it is polled.
struct TaskWaker {
    key: u64,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.shared.schedule(self.key);
        }
    }
}

/// A spawned task, type-erased.
trait Runnable {
    /// Polls the future (or drops it if aborted); `Ready` when the task is over.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    /// The future panicked: drop it and report.
    fn panicked(&mut self, message: String);
    /// The runtime is going away.
    fn orphaned(&mut self);
}

struct Task<T> {
    future: Option<Pin<Box<dyn Future<Output = T>>>>,
    join: Arc<JoinShared<T>>,
}

impl<T> Task<T> {
    fn finish(&mut self, output: Result<T, JoinError>) {
        // Dropped before the output is published: a joiner that sees it may rely on
        // the task's resources (its ops, its buffers) being released.
        drop(self.future.take());
        settle(&self.join, output);
    }
}

impl<T> Runnable for Task<T> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.join.aborted.load(Ordering::Acquire) {
            self.finish(Err(JoinError::Aborted));
            return Poll::Ready(());
        }
        let Some(future) = self.future.as_mut() else { return Poll::Ready(()) };
        match future.as_mut().poll(cx) {
            Poll::Ready(v) => {
                self.finish(Ok(v));
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn panicked(&mut self, message: String) {
        self.finish(Err(JoinError::Panicked(message)));
    }

    fn orphaned(&mut self) {
        self.finish(Err(JoinError::RuntimeGone));
    }
}

struct TaskEntry {
    generation: u32,
    task: Option<Box<dyn Runnable>>,
    waker: Arc<TaskWaker>,
    handle: Waker,
}

/// What a task leaves for its [`JoinHandle`].
struct JoinShared<T> {
    state: Mutex<JoinState<T>>,
    aborted: AtomicBool,
}

struct JoinState<T> {
    output: Option<Result<T, JoinError>>,
    finished: bool,
    joiner: Option<Waker>,
    /// The task's own waker, for `abort`; set when it is spawned on the runtime.
    task: Option<Waker>,
}

/// The runtime's state, shared by its tasks and sockets (`Rc`: one thread).
pub(crate) struct Inner {
    pub(crate) port: RefCell<CompletionPort<()>>,
    pub(crate) ops: RefCell<Vec<OpSlot>>,
    tasks: RefCell<Slab<TaskEntry>>,
    generation: Cell<u32>,
    /// Keys taken from the shared queue, polled in order (swapped, never reallocated
    /// in steady state).
    local: RefCell<VecDeque<u64>>,
    batch: RefCell<Vec<Completion>>,
    /// Ops whose futures were dropped in flight: they still belong to the port.
    pub(crate) orphans: Cell<usize>,
    shared: Arc<Shared>,
}

impl Inner {
    /// The runtime of the `block_on` running on this thread.
    pub(crate) fn current() -> Result<Rc<Inner>, Error> {
        CONTEXT.with(|c| c.borrow().clone()).ok_or(Error::NoRuntime)
    }

    fn spawn_task<T: 'static>(self: &Rc<Self>, future: Pin<Box<dyn Future<Output = T>>>, join: Arc<JoinShared<T>>) {
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        let mut tasks = self.tasks.borrow_mut();
        let entry = tasks.vacant_entry();
        let key = (u64::from(generation) << 32) | entry.key() as u64;
        let waker = Arc::new(TaskWaker { key, queued: AtomicBool::new(true), shared: self.shared.clone() });
        let handle = Waker::from(waker.clone());
        lock(&join.state).task = Some(handle.clone());
        let task: Box<dyn Runnable> = Box::new(Task { future: Some(future), join });
        entry.insert(TaskEntry { generation, task: Some(task), waker, handle });
        drop(tasks);
        lock(&self.shared.queue).push_back(key);
    }

    pub(crate) fn spawn<F>(self: &Rc<Self>, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
    {
        let join = Arc::new(JoinShared {
            state: Mutex::new(JoinState { output: None, finished: false, joiner: None, task: None }),
            aborted: AtomicBool::new(false),
        });
        self.spawn_task(Box::pin(future), join.clone());
        JoinHandle { join }
    }

    /// Polls one task by its queue key; stale keys (a finished task's) are skipped.
    fn run_task(&self, key: u64) {
        let index = (key & u64::from(u32::MAX)) as usize;
        let generation = (key >> 32) as u32;
        let (mut task, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(entry) = tasks.get_mut(index) else { return };
            if entry.generation != generation {
                return;
            }
            // Cleared before the poll: a wake during it queues the task again.
            entry.waker.queued.swap(false, Ordering::AcqRel);
            let Some(task) = entry.task.take() else { return };
            (task, entry.handle.clone())
        };
        let mut cx = Context::from_waker(&waker);
        let done = match catch_unwind(AssertUnwindSafe(|| task.poll(&mut cx))) {
            Ok(Poll::Pending) => false,
            Ok(Poll::Ready(())) => true,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::warn!(%message, "a berth-async task panicked; the runtime keeps serving the others");
                // Dropping the broken future may panic too: contain that as well.
                let _ = catch_unwind(AssertUnwindSafe(|| task.panicked(message)));
                true
            }
        };
        if done {
            let entry = self.tasks.borrow_mut().remove(index);
            drop(entry);
            drop(task);
        } else if let Some(entry) = self.tasks.borrow_mut().get_mut(index) {
            entry.task = Some(task);
        }
    }

    /// One wait on the port; completions wake the tasks awaiting their ops.
    fn turn(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let mut batch = self.batch.borrow_mut();
        self.port.borrow_mut().wait(&mut batch, timeout)?;
        for completion in batch.drain(..) {
            let Completion::Op { op, kind, socket, result } = completion else { continue };
            let orphan = {
                let mut ops = self.ops.borrow_mut();
                let Some(slot) = ops.get_mut(op.index()) else { continue };
                match std::mem::replace(slot, OpSlot::Done { result, socket }) {
                    OpSlot::Waiting(waker) => {
                        if let Some(w) = waker {
                            w.wake();
                        }
                        false
                    }
                    OpSlot::Orphan => {
                        *slot = OpSlot::Idle;
                        true
                    }
                    // A completion nobody submitted through this crate: not ours.
                    other => {
                        *slot = other;
                        false
                    }
                }
            };
            if orphan {
                self.release_orphan(op, kind, socket, result.is_ok());
            }
        }
        Ok(())
    }

    /// An op whose future is gone has completed: its lease returns to the arena as
    /// the op goes back to the pool; a connection it accepted is closed.
    pub(crate) fn release_orphan(&self, op: OpId, kind: OpKind, socket: berth_reactor::SocketId, ok: bool) {
        let mut port = self.port.borrow_mut();
        if kind == OpKind::Accept && ok {
            let _ = port.close(socket);
        }
        let _ = port.give_op(op);
        self.orphans.set(self.orphans.get().saturating_sub(1));
    }

    fn take_spawns(self: &Rc<Self>) {
        if !self.shared.has_spawns.swap(false, Ordering::AcqRel) {
            return;
        }
        let spawns = std::mem::take(&mut *lock(&self.shared.spawns));
        for spawn in spawns {
            spawn.start(self);
        }
    }

    fn block_on<F: Future>(self: &Rc<Self>, future: F) -> Result<F::Output, Error> {
        let _context = ContextGuard::enter(self);
        let main = Arc::new(TaskWaker { key: MAIN, queued: AtomicBool::new(true), shared: self.shared.clone() });
        let waker = Waker::from(main.clone());
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        lock(&self.shared.queue).push_back(MAIN);
        loop {
            self.take_spawns();
            {
                let mut local = self.local.borrow_mut();
                std::mem::swap(&mut *lock(&self.shared.queue), &mut *local);
            }
            loop {
                let Some(key) = self.local.borrow_mut().pop_front() else { break };
                if key == MAIN {
                    main.queued.swap(false, Ordering::AcqRel);
                    if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                        // Keys taken but not polled go back, for the next block_on.
                        let mut local = self.local.borrow_mut();
                        lock(&self.shared.queue).extend(local.drain(..));
                        return Ok(v);
                    }
                } else {
                    self.run_task(key);
                }
            }
            let idle = lock(&self.shared.queue).is_empty() && !self.shared.has_spawns.load(Ordering::Acquire);
            self.turn(if idle { None } else { Some(Duration::ZERO) })?;
        }
    }
}

/// Sets this thread's current runtime for the duration of a `block_on`.
struct ContextGuard {
    previous: Option<Rc<Inner>>,
    running: usize,
}

impl ContextGuard {
    fn enter(inner: &Rc<Inner>) -> ContextGuard {
        let previous = CONTEXT.with(|c| c.replace(Some(inner.clone())));
        let running = RUNNING.with(|r| r.replace(Arc::as_ptr(&inner.shared) as usize));
        ContextGuard { previous, running }
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CONTEXT.with(|c| *c.borrow_mut() = previous);
        RUNNING.with(|r| r.set(self.running));
    }
}

/// A single-threaded async runtime over one [`CompletionPort`]: the port's
/// completions wake the tasks awaiting them.
///
/// ```
/// let rt = berth_async::Runtime::new()?;
/// let answer = rt.block_on(async {
///     let task = berth_async::spawn(async { 6 * 7 });
///     task.await
/// })?;
/// assert_eq!(answer, Ok(42));
/// # Ok::<(), berth_async::Error>(())
/// ```
pub struct Runtime {
    inner: Rc<Inner>,
}

impl Runtime {
    /// A runtime on a port with the defaults ([`RuntimeBuilder`]).
    pub fn new() -> Result<Runtime, Error> {
        Runtime::builder().build()
    }

    /// A builder for the runtime's port.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder { ops: 1024, max_sockets: 1024, posts: 1024, buffers: None, driver: None }
    }

    /// Runs `future` to completion on this thread, with every task spawned on the
    /// runtime; returns its output. Tasks that are still pending stay on the runtime
    /// for the next `block_on`.
    ///
    /// # Errors
    /// [`Error::Io`] if waiting on the port fails.
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output, Error> {
        self.inner.block_on(future)
    }

    /// Spawns a task on this runtime; it runs during [`block_on`](Self::block_on).
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
    {
        self.inner.spawn(future)
    }

    /// A handle for other threads: spawn onto this runtime.
    pub fn handle(&self) -> Handle {
        Handle { shared: self.inner.shared.clone() }
    }

    /// The arena the runtime's reads lease from.
    pub fn buffers(&self) -> BufferManager {
        self.inner.port.borrow().buffers().clone()
    }

    /// The port's counters.
    pub fn stats(&self) -> PortStats {
        self.inner.port.borrow().stats()
    }

    /// The driver the port runs on.
    pub fn driver(&self) -> Driver {
        self.inner.port.borrow().driver()
    }

    /// Ops whose futures were dropped while the op was in flight, not yet handed
    /// back by the port (they keep their buffers until then).
    pub fn cancelling(&self) -> usize {
        self.inner.orphans.get()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Closed under the lock remote spawns take, so none lands after this: each is
        // either taken here (and told the runtime is gone) or refused.
        let spawns = {
            let mut spawns = lock(&self.inner.shared.spawns);
            self.inner.shared.closed.store(true, Ordering::Release);
            std::mem::take(&mut *spawns)
        };
        // Tasks first (their futures cancel their ops), outside every borrow: a
        // future's drop reaches the port.
        let tasks = std::mem::take(&mut *self.inner.tasks.borrow_mut());
        for (_, mut entry) in tasks {
            if let Some(task) = entry.task.as_mut() {
                let _ = catch_unwind(AssertUnwindSafe(|| task.orphaned()));
            }
        }
        for spawn in spawns {
            spawn.abandon();
        }
        // Then the cancelled ops come back, and with them their buffers.
        let deadline = Instant::now() + DRAIN;
        while self.inner.orphans.get() > 0 && Instant::now() < deadline {
            if self.inner.turn(Some(Duration::from_millis(10))).is_err() {
                break;
            }
        }
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("tasks", &self.inner.tasks.borrow().len())
            .field("cancelling", &self.inner.orphans.get())
            .finish()
    }
}

/// How to build a [`Runtime`]'s port.
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    ops: usize,
    max_sockets: usize,
    posts: usize,
    buffers: Option<BufferManager>,
    driver: Option<Driver>,
}

impl RuntimeBuilder {
    /// Ops in the port's pool (default 1024): the most operations in flight at
    /// once, sleeps included.
    pub fn ops(mut self, n: usize) -> Self {
        self.ops = n.max(1);
        self
    }

    /// Sockets the port can hold (default 1024).
    pub fn max_sockets(mut self, n: usize) -> Self {
        self.max_sockets = n.max(1);
        self
    }

    /// Posted wakes (from other threads) that may wait for the port (default 1024).
    pub fn posts(mut self, n: usize) -> Self {
        self.posts = n.max(1);
        self
    }

    /// The buffer arena (default: a new one of 1024 × 4 KiB segments).
    pub fn buffers(mut self, buffers: BufferManager) -> Self {
        self.buffers = Some(buffers);
        self
    }

    /// The port's driver (default: [`Driver::from_env`]).
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = Some(driver);
        self
    }

    /// Builds the runtime on this thread.
    ///
    /// # Errors
    /// As [`PortBuilder::build`](berth_reactor::PortBuilder::build).
    pub fn build(self) -> Result<Runtime, Error> {
        let mut builder = CompletionPort::builder().ops(self.ops).max_sockets(self.max_sockets).posts(self.posts);
        if let Some(buffers) = self.buffers {
            builder = builder.buffers(buffers);
        }
        if let Some(driver) = self.driver {
            builder = builder.driver(driver);
        }
        let port = builder.build(|_| ())?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::with_capacity(256)),
            spawns: Mutex::new(Vec::new()),
            has_spawns: AtomicBool::new(false),
            port: port.handle(),
            closed: AtomicBool::new(false),
        });
        let inner = Inner {
            port: RefCell::new(port),
            ops: RefCell::new((0..self.ops).map(|_| OpSlot::Idle).collect()),
            tasks: RefCell::new(Slab::with_capacity(256)),
            generation: Cell::new(0),
            local: RefCell::new(VecDeque::with_capacity(256)),
            batch: RefCell::new(Vec::with_capacity(self.ops + self.posts + 64)),
            orphans: Cell::new(0),
            shared,
        };
        Ok(Runtime { inner: Rc::new(inner) })
    }
}

/// Spawns a `!Send` task on the current runtime (the one whose
/// [`block_on`](Runtime::block_on) is running on this thread).
///
/// # Panics
/// Outside a runtime: use [`Runtime::spawn`] or [`Handle::spawn`] there.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
{
    match Inner::current() {
        Ok(inner) => inner.spawn(future),
        Err(_) => panic!("berth_async::spawn called outside a runtime (use Runtime::spawn or Handle::spawn)"),
    }
}

/// Yields once: the task is queued behind the others and polled again.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// A task's output, as a future: `Ok(output)`, or why there is none. Dropping it
/// detaches the task (it runs on).
pub struct JoinHandle<T> {
    join: Arc<JoinShared<T>>,
}

impl<T> JoinHandle<T> {
    /// Asks the runtime to drop the task at its next turn; it completes with
    /// [`JoinError::Aborted`] (unless it finished first). Its in-flight operations
    /// are cancelled as its futures drop.
    pub fn abort(&self) {
        self.join.aborted.store(true, Ordering::Release);
        let task = lock(&self.join.state).task.clone();
        if let Some(w) = task {
            w.wake();
        }
    }

    /// True once the task has finished (its output is ready).
    pub fn is_finished(&self) -> bool {
        lock(&self.join.state).finished
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = lock(&self.join.state);
        if let Some(output) = state.output.take() {
            return Poll::Ready(output);
        }
        if state.finished {
            // Polled again after it returned its output.
            return Poll::Ready(Err(JoinError::RuntimeGone));
        }
        match &state.joiner {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.joiner = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle").field("finished", &self.is_finished()).finish()
    }
}

/// A `Send + Sync` handle to a [`Runtime`], for other threads: spawn `Send` futures
/// onto it. (Wakers need no handle: any task's waker works from any thread.)
///
/// ```
/// let rt = berth_async::Runtime::new()?;
/// let handle = rt.handle();
/// let task = std::thread::spawn(move || handle.spawn(async { 7 })).join().unwrap()?;
/// assert_eq!(rt.block_on(task)?, Ok(7));
/// # Ok::<(), berth_async::Error>(())
/// ```
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Spawns `future` on the runtime, from any thread; it runs during the
    /// runtime's next [`block_on`](Runtime::block_on).
    ///
    /// # Errors
    /// [`Error::RuntimeGone`] once the runtime is dropped.
    pub fn spawn<F>(&self, future: F) -> Result<JoinHandle<F::Output>, Error>
    where
        F: Future + Send + 'static,
        F::Output: Send,
    {
        let join = Arc::new(JoinShared {
            state: Mutex::new(JoinState { output: None, finished: false, joiner: None, task: None }),
            aborted: AtomicBool::new(false),
        });
        {
            // `closed` is checked under the lock the runtime's drop sets it under.
            let mut spawns = lock(&self.shared.spawns);
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(Error::RuntimeGone);
            }
            spawns.push(Box::new(Remote { future, join: join.clone() }));
        }
        self.shared.has_spawns.store(true, Ordering::Release);
        if !self.shared.on_runtime_thread() {
            match self.shared.port.post(WAKE, 0) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(Error::RuntimeGone),
            }
        }
        Ok(JoinHandle { join })
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("closed", &self.shared.closed.load(Ordering::Relaxed)).finish()
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner").field("orphans", &self.orphans.get()).finish_non_exhaustive()
    }
}
