//! [`serve_per_core`]: one runtime per thread, each accepting on its own
//! `SO_REUSEPORT` listener of one address (the kernel spreads connections among
//! them), as `berth_reactor::workers` runs ports; and [`PerCore`], to stop and join
//! them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Waker};

use berth_reactor::ListenOptions;

use crate::error::Error;
use crate::net::TcpListener;
use crate::runtime::{Runtime, RuntimeBuilder};

/// How [`serve_per_core`] sets up its runtimes.
#[derive(Debug, Clone)]
pub struct PerCoreConfig {
    /// The address every runtime listens on (port 0: the first runtime's port,
    /// which the others then share).
    pub addr: SocketAddr,
    /// Runtimes, one thread each (default: the CPUs this process may run on).
    pub threads: usize,
    /// Each runtime's port: give it one [`BufferManager`](berth_buf::BufferManager)
    /// to share one arena among them all.
    pub runtime: RuntimeBuilder,
    /// The listeners' options; `reuse_port` is set whenever there are several.
    pub listen: ListenOptions,
}

impl PerCoreConfig {
    /// `addr` on as many runtimes as this process has CPUs, with default ports and
    /// listeners.
    pub fn new(addr: SocketAddr) -> PerCoreConfig {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        PerCoreConfig { addr, threads, runtime: Runtime::builder(), listen: ListenOptions::default() }
    }

    /// Sets the number of runtimes (at least 1).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Sets how each runtime's port is built.
    pub fn runtime(mut self, runtime: RuntimeBuilder) -> Self {
        self.runtime = runtime;
        self
    }
}

/// Runs `serve(listener, index)` on `config.threads` runtimes, each on its own thread
/// with its own `SO_REUSEPORT` listener on `config.addr`: the second seed's
/// `TcpListener` server, once per core. Returns once every runtime is listening.
///
/// `serve` runs until it returns or [`PerCore::stop`] drops it — which cancels
/// every operation it had in flight, as dropping any future does.
///
/// # Errors
/// A runtime or listener that could not be set up (the address in use, say); then
/// no `serve` runs, and the runtimes already set up are ended before this returns.
pub fn serve_per_core<F, Fut>(config: PerCoreConfig, serve: F) -> Result<PerCore, Error>
where
    F: Fn(TcpListener, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let threads = config.threads.max(1);
    let mut listen = config.listen;
    listen.reuse_port |= threads > 1;
    let stop = Arc::new(Stop { stopped: AtomicBool::new(false), wakers: Mutex::new(vec![None; threads]) });
    let mut addr = config.addr;
    let mut running = Vec::with_capacity(threads);
    let mut gos = Vec::with_capacity(threads);
    let mut failure = None;
    for index in 0..threads {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr, Error>>();
        let (go_tx, go_rx) = mpsc::channel::<bool>();
        let (runtime, serve, stop) = (config.runtime.clone(), serve.clone(), stop.clone());
        let spawned = std::thread::Builder::new().name(format!("berth-async-{index}")).spawn(move || {
            let rt = match runtime.build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let listener = match rt.block_on(async move { TcpListener::bind_with(addr, listen) }) {
                Ok(Ok(listener)) => listener,
                Ok(Err(e)) | Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let _ = ready_tx.send(listener.local_addr());
            // Serve only once every runtime is listening; otherwise let go.
            if go_rx.recv() != Ok(true) {
                return Ok(());
            }
            rt.block_on(Race { serve: Box::pin(serve(listener, index)), stop: StopWait { stop, index } })?
        });
        let thread = match spawned {
            Ok(thread) => thread,
            Err(e) => {
                failure = Some(Error::Io(e));
                break;
            }
        };
        match ready_rx.recv() {
            Ok(Ok(local)) => {
                // Port 0: the others share the first one's port.
                addr = local;
                running.push(thread);
                gos.push(go_tx);
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                failure = Some(e);
                break;
            }
            Err(_) => {
                let _ = thread.join();
                failure = Some(Error::Io(std::io::Error::other("a runtime thread died while setting up")));
                break;
            }
        }
    }
    let go = failure.is_none();
    for tx in gos {
        let _ = tx.send(go);
    }
    if let Some(e) = failure {
        for thread in running {
            let _ = thread.join();
        }
        return Err(e);
    }
    Ok(PerCore { addr, stop, threads: running })
}

/// The runtimes [`serve_per_core`] started. Dropping it does not stop them: they
/// serve on, detached, until every `serve` returns or the process ends; call
/// [`stop`](Self::stop) and [`join`](Self::join) to end them.
#[derive(Debug)]
pub struct PerCore {
    addr: SocketAddr,
    stop: Arc<Stop>,
    threads: Vec<std::thread::JoinHandle<Result<(), Error>>>,
}

impl PerCore {
    /// The address they all listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ends every runtime's `serve` future (its operations are cancelled, its
    /// buffers come back) and then the runtime; [`join`](Self::join) waits for it.
    pub fn stop(&self) {
        self.stop.stopped.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self.stop.lock().iter_mut().filter_map(Option::take).collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Waits for every runtime to end (after [`stop`](Self::stop), or when each
    /// `serve` returns).
    ///
    /// # Errors
    /// The first runtime whose wait on its port failed.
    pub fn join(self) -> Result<(), Error> {
        let mut first = Ok(());
        for thread in self.threads {
            let result =
                thread.join().unwrap_or_else(|_| Err(std::io::Error::other("a runtime thread panicked").into()));
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

/// The stop request every runtime waits on.
#[derive(Debug)]
struct Stop {
    stopped: AtomicBool,
    /// Each runtime's waiting waker, by index.
    wakers: Mutex<Vec<Option<Waker>>>,
}

impl Stop {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Waker>>> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ready once [`PerCore::stop`] was called.
struct StopWait {
    stop: Arc<Stop>,
    index: usize,
}

impl Future for StopWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.stopped.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.stop.lock()[self.index] = Some(cx.waker().clone());
        // A stop between the first check and the waker's registration: seen now.
        if self.stop.stopped.load(Ordering::Acquire) { Poll::Ready(()) } else { Poll::Pending }
    }
}

/// Runs `serve` until it ends or the stop comes; then drops it.
struct Race<S> {
    serve: Pin<Box<S>>,
    stop: StopWait,
}

impl<S: Future<Output = ()>> Future for Race<S> {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if Pin::new(&mut self.stop).poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        self.serve.as_mut().poll(cx).map(Ok)
    }
}
