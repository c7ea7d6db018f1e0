//! [`sleep`], [`sleep_until`] and [`timeout`], on the port's timer op.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::op::Setup;
use crate::runtime::Inner;

/// Waits until `at`, on a timer op of the current runtime's port (one op from its
/// pool while it waits; dropping the future cancels the timer).
///
/// # Errors
/// [`Error::NoRuntime`] outside a runtime; [`Error::PoolExhausted`] if every op is
/// in flight.
pub async fn sleep_until(at: Instant) -> Result<(), Error> {
    let rt = Inner::current()?;
    let op = rt.submit(Setup::NONE, |port, id| port.timer(id, at)).map_err(|(e, _)| e)?;
    op.await.result.map(drop).map_err(Error::from)
}

/// Waits for `duration`; see [`sleep_until`].
///
/// ```
/// use std::time::{Duration, Instant};
/// let rt = berth_async::Runtime::new()?;
/// let start = Instant::now();
/// rt.block_on(berth_async::sleep(Duration::from_millis(20)))??;
/// assert!(start.elapsed() >= Duration::from_millis(20));
/// # Ok::<(), berth_async::Error>(())
/// ```
pub async fn sleep(duration: Duration) -> Result<(), Error> {
    sleep_until(Instant::now() + duration).await
}

/// Runs `future` for at most `duration`. If the time runs out first it is dropped
/// — cancelling the operation it awaits, whose buffer returns to the arena once
/// the port hands the op back — and the result is [`Error::TimedOut`].
///
/// ```
/// use std::time::Duration;
/// let rt = berth_async::Runtime::new()?;
/// let never = std::future::pending::<()>();
/// let late = rt.block_on(berth_async::timeout(Duration::from_millis(10), never))?;
/// assert!(matches!(late, Err(berth_async::Error::TimedOut)));
/// # Ok::<(), berth_async::Error>(())
/// ```
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Error> {
    let mut future = pin!(future);
    let mut timer = pin!(sleep(duration));
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Err(Error::TimedOut)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
