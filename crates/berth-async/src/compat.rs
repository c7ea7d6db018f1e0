//! [`Compat`]: `futures_io::AsyncRead`/`AsyncWrite` (and, with the `tokio` feature,
//! tokio's) over the owned-buffer calls, for code written against those traits. It copies: reads land in a leased
//! segment and are copied into the caller's slice; writes are copied from it into
//! one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use berth_buf::Lease;
use futures_io::{AsyncRead, AsyncWrite};

use crate::error::Error;
use crate::net::{Socket, TcpStream, UnixStream};
use crate::op::{Op, Setup};

mod sealed {
    pub trait Stream: Unpin {
        fn socket(&self) -> &crate::net::Socket;
    }
}

impl sealed::Stream for TcpStream {
    fn socket(&self) -> &Socket {
        &self.socket
    }
}

impl sealed::Stream for UnixStream {
    fn socket(&self) -> &Socket {
        &self.socket
    }
}

/// A stream ([`TcpStream`] or [`UnixStream`]) as `futures_io::AsyncRead` +
/// `AsyncWrite`, and with the `tokio` feature as `tokio::io::AsyncRead` +
/// `AsyncWrite` (driven by berth's runtime; no tokio runtime is involved).
///
/// **It copies**, once each way: a read is a pooled receive (no buffer held while
/// waiting) copied into the caller's slice, the rest kept for the next read; a
/// write copies up to one segment of the caller's bytes into a lease and returns at
/// once with that count, the send running behind it — the next write, `flush` or
/// `close` waits for it and reports its error. Use the owned-buffer calls where
/// the copy matters.
///
/// ```
/// use berth_async::{Compat, Runtime, TcpListener, TcpStream};
/// use futures_io::{AsyncRead, AsyncWrite};
/// use std::future::poll_fn;
/// use std::pin::Pin;
///
/// let rt = Runtime::new()?;
/// rt.block_on(async {
///     let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
///     let addr = listener.local_addr()?;
///     let client = berth_async::spawn(async move {
///         let mut c = Compat::new(TcpStream::connect(addr).await?);
///         poll_fn(|cx| Pin::new(&mut c).poll_write(cx, b"hi")).await?;
///         poll_fn(|cx| Pin::new(&mut c).poll_flush(cx)).await?;
///         Ok::<_, std::io::Error>(c)
///     });
///     let (server, _) = listener.accept().await?;
///     let mut server = Compat::new(server);
///     let mut buf = [0u8; 8];
///     let n = poll_fn(|cx| Pin::new(&mut server).poll_read(cx, &mut buf)).await?;
///     assert_eq!(&buf[..n], b"hi");
///     drop(client.await);
///     Ok::<(), std::io::Error>(())
/// })??;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Compat<S: sealed::Stream> {
    // Declared before the stream: pending ops are cancelled before it closes.
    read: Option<Op>,
    /// Bytes received and not yet read, from this offset.
    unread: Option<(Lease, usize)>,
    write: Option<Op>,
    stream: S,
}

impl<S: sealed::Stream> Compat<S> {
    /// Wraps a stream.
    pub fn new(stream: S) -> Compat<S> {
        Compat { read: None, unread: None, write: None, stream }
    }

    /// The stream back, once the last write has gone out (a write returns before its
    /// send runs): the stream, and how that send ended. Bytes received and not read
    /// yet are dropped, and a pending read is cancelled.
    ///
    /// Dropping a `Compat` instead cancels a send still running, which may have sent
    /// part of its bytes: flush (or close) first.
    pub async fn into_inner(mut self) -> (S, io::Result<()>) {
        let flushed = std::future::poll_fn(|cx| self.poll_write_done(cx)).await;
        (self.stream, flushed)
    }

    /// Waits for the pending send, if any.
    fn poll_write_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(op) = self.write.as_mut() else { return Poll::Ready(Ok(())) };
        let outcome = ready!(Pin::new(op).poll(cx));
        self.write = None;
        // The lease goes back to the arena here.
        drop(outcome.lease);
        Poll::Ready(outcome.result.map(drop).map_err(io::Error::from))
    }
}

use std::future::Future;

impl<S: sealed::Stream> AsyncRead for Compat<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.unread.is_none() {
            if this.read.is_none() {
                let socket = this.stream.socket();
                let id = socket.id;
                let op = socket.rt.submit(Setup::NONE, |port, op| port.recv_pooled(id, op)).map_err(|(e, _)| e);
                this.read = Some(op.map_err(io::Error::from)?);
            }
            let Some(op) = this.read.as_mut() else { return Poll::Ready(Ok(0)) };
            let outcome = ready!(Pin::new(op).poll(cx));
            this.read = None;
            match outcome.result {
                Ok(0) => return Poll::Ready(Ok(0)),
                Ok(_) => match outcome.lease {
                    Some(lease) => this.unread = Some((lease, 0)),
                    None => return Poll::Ready(Err(Error::BufferExhausted.into())),
                },
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        let Some((lease, at)) = this.unread.as_mut() else { return Poll::Ready(Ok(0)) };
        let rest = &lease.filled()[*at..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        *at += n;
        if *at >= lease.len() {
            this.unread = None;
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: sealed::Stream> AsyncWrite for Compat<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_write_done(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let socket = this.stream.socket();
        let mut lease = socket.rt.port.borrow().lease().map_err(|_| io::Error::from(Error::BufferExhausted))?;
        let n = buf.len().min(lease.capacity());
        lease.spare_mut()[..n].copy_from_slice(&buf[..n]);
        lease.set_len(n).map_err(io::Error::other)?;
        let id = socket.id;
        let op = socket.rt.submit(Setup::lease(lease, 0..n), |port, op| port.send(id, op)).map_err(|(e, _)| e);
        this.write = Some(op.map_err(io::Error::from)?);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_done(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_done(cx))?;
        Poll::Ready(self.stream.socket().shutdown(std::net::Shutdown::Write).map_err(io::Error::from))
    }
}

#[cfg(feature = "tokio")]
impl<S: sealed::Stream> tokio::io::AsyncRead for Compat<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        // (Zeroes the caller's unfilled room the first time: tokio's safe way in.)
        let n = ready!(AsyncRead::poll_read(self, cx, buf.initialize_unfilled()))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "tokio")]
impl<S: sealed::Stream> tokio::io::AsyncWrite for Compat<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(self, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(self, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_close(self, cx)
    }
}
