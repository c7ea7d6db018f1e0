//! Sockets: TCP echo both ways, end of stream, a peer gone mid-`write_all`, UDP,
//! Unix streams and the `futures_io` adapter.

mod common;

use std::future::poll_fn;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::pin::Pin;

use berth_async::{Compat, Error, TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream, spawn, timeout};
use berth_buf::Lease;
use berth_reactor::{UnixAddr, UnixListenOptions};
use common::{LIMIT, client, held, runtime, settle};
use futures_io::{AsyncRead, AsyncWrite};

fn fill(mut lease: Lease, bytes: &[u8]) -> Lease {
    lease.clear();
    lease.spare_mut()[..bytes.len()].copy_from_slice(bytes);
    lease.set_len(bytes.len()).unwrap();
    lease
}

#[test]
fn tcp_echo_between_two_tasks_and_end_of_stream() {
    let (rt, buffers) = runtime(64, 64);
    let baseline = held(&rt, &buffers);
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = spawn(async move {
            let (conn, peer) = listener.accept().await?;
            assert_eq!(peer, conn.peer_addr()?);
            let mut echoed = 0;
            while let Some(lease) = conn.read_pooled().await? {
                echoed += lease.len();
                conn.write_all(lease).await.0?;
            }
            Ok::<_, Error>(echoed)
        });
        let client = TcpStream::connect(addr).await.unwrap();
        let mut lease = client.lease().unwrap();
        for i in 0..50u8 {
            lease = fill(lease, &[i; 100]);
            let (sent, back) = client.write_all(lease).await;
            sent.unwrap();
            lease = back;
            lease.clear();
            while lease.len() < 100 {
                let (n, back) = client.read(lease).await;
                lease = back;
                assert!(n.unwrap() > 0);
            }
            assert_eq!(lease.filled(), &[i; 100][..]);
        }
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(timeout(LIMIT, server).await.unwrap().unwrap().unwrap(), 5000);
        // The server closed its side: the end of the stream.
        lease.clear();
        let (n, _lease) = client.read(lease).await;
        assert_eq!(n.unwrap(), 0);
    })
    .unwrap();
    assert_eq!(held(&rt, &buffers), baseline);
}

#[test]
fn a_full_lease_is_refused_and_given_back() {
    let (rt, _) = runtime(16, 16);
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let _peer = client(listener.local_addr().unwrap());
        let (conn, _) = listener.accept().await.unwrap();
        let mut lease = conn.lease().unwrap();
        let full = lease.capacity();
        lease.set_len(full).unwrap();
        let (r, lease) = conn.read(lease).await;
        assert!(matches!(r, Err(Error::Submit(berth_reactor::SubmitError::NoBuffer))), "{r:?}");
        assert_eq!(lease.len(), full, "the same lease, untouched");
    })
    .unwrap();
}

/// The peer closes while we write: `write_all` fails with a typed peer-gone error,
/// not a panic and not a hang.
#[test]
fn a_peer_closing_mid_write_all_is_a_typed_error() {
    let (rt, buffers) = runtime(64, 64);
    let baseline = held(&rt, &buffers);
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut peer = client(listener.local_addr().unwrap());
        let (conn, _) = listener.accept().await.unwrap();
        // The peer reads a little, then closes with unread data: a reset.
        let closer = std::thread::spawn(move || {
            let mut some = [0u8; 4096];
            peer.read_exact(&mut some).unwrap();
            drop(peer);
        });
        let mut lease = conn.lease().unwrap();
        let mut error = None;
        for _ in 0..100_000 {
            let size = lease.capacity();
            lease = fill(lease, &vec![1u8; size]);
            let (sent, back) = timeout(LIMIT, conn.write_all(lease)).await.expect("write_all never hangs");
            lease = back;
            if let Err(e) = sent {
                error = Some(e);
                break;
            }
        }
        let error = error.expect("the writes failed once the peer was gone");
        assert!(error.is_peer_gone(), "a peer-gone kind: {error:?}");
        assert!(matches!(error, Error::Op(berth_ops::OpError::ConnectionReset | berth_ops::OpError::BrokenPipe)));
        closer.join().unwrap();
        drop(lease);
    })
    .unwrap();
    assert_eq!(held(&rt, &buffers), baseline);
}

#[test]
fn udp_round_trip() {
    let (rt, _) = runtime(16, 16);
    rt.block_on(async {
        let a = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = b.local_addr().unwrap();
        let (sent, _) = a.send_to(fill(a.lease().unwrap(), b"datagram"), to).await;
        assert_eq!(sent.unwrap(), 8);
        let (got, lease) = timeout(LIMIT, b.recv_from(b.lease().unwrap())).await.unwrap();
        assert_eq!(got.unwrap(), (8, a.local_addr().unwrap()));
        assert_eq!(lease.filled(), b"datagram");
    })
    .unwrap();
}

#[test]
fn unix_stream_echo() {
    let (rt, _) = runtime(16, 16);
    let name = format!("berth-async-test-{}", std::process::id());
    let addr = UnixAddr::Abstract(name.into_bytes());
    rt.block_on(async {
        let listener = UnixListener::bind(&addr, UnixListenOptions::default()).unwrap();
        let server = spawn(async move {
            let conn = listener.accept().await?;
            let lease = conn.read_pooled().await?.expect("data");
            conn.write_all(lease).await.0
        });
        let client = UnixStream::connect(&addr).await.unwrap();
        client.write_all(fill(client.lease().unwrap(), b"over unix")).await.0.unwrap();
        let mut lease = client.lease().unwrap();
        while lease.len() < 9 {
            let (n, back) = timeout(LIMIT, client.read(lease)).await.unwrap();
            lease = back;
            assert!(n.unwrap() > 0);
        }
        assert_eq!(lease.filled(), b"over unix");
        timeout(LIMIT, server).await.unwrap().unwrap().unwrap();
    })
    .unwrap();
}

#[test]
fn compat_reads_and_writes_through_futures_io() {
    let (rt, buffers) = runtime(16, 16);
    let baseline = held(&rt, &buffers);
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut peer = client(listener.local_addr().unwrap());
        let (conn, _) = listener.accept().await.unwrap();
        let mut conn = Compat::new(conn);
        // More than one segment, written through the trait in pieces.
        let message: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut at = 0;
        while at < message.len() {
            at += poll_fn(|cx| Pin::new(&mut conn).poll_write(cx, &message[at..])).await.unwrap();
        }
        poll_fn(|cx| Pin::new(&mut conn).poll_flush(cx)).await.unwrap();
        let mut echo = vec![0u8; message.len()];
        peer.read_exact(&mut echo).unwrap();
        assert_eq!(echo, message);
        // And read back in small slices: the leftover of a segment is kept.
        peer.write_all(&message).unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 7];
        while got.len() < message.len() {
            let n = timeout(LIMIT, poll_fn(|cx| Pin::new(&mut conn).poll_read(cx, &mut small))).await.unwrap().unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, message);
        poll_fn(|cx| Pin::new(&mut conn).poll_close(cx)).await.unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "closed after the last byte");
        drop(conn);
        assert!(settle(|| rt.cancelling() == 0).await);
    })
    .unwrap();
    assert_eq!(held(&rt, &buffers), baseline);
}

/// With the `tokio` feature, the same adapter through tokio's traits and their
/// extension methods (`read_exact`, `write_all`, `shutdown`), on berth's runtime.
#[cfg(feature = "tokio")]
#[test]
fn compat_reads_and_writes_through_tokio_io() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (rt, buffers) = runtime(16, 16);
    let baseline = held(&rt, &buffers);
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut peer = client(listener.local_addr().unwrap());
        let (conn, _) = listener.accept().await.unwrap();
        let mut conn = Compat::new(conn);
        let message: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        conn.write_all(&message).await.unwrap();
        conn.flush().await.unwrap();
        let mut echo = vec![0u8; message.len()];
        peer.read_exact(&mut echo).unwrap();
        assert_eq!(echo, message);
        peer.write_all(&message).unwrap();
        let mut got = vec![0u8; message.len()];
        timeout(LIMIT, conn.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, message);
        conn.shutdown().await.unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "shut down after the last byte");
        drop(conn);
        assert!(settle(|| rt.cancelling() == 0).await);
    })
    .unwrap();
    assert_eq!(held(&rt, &buffers), baseline);
}

/// A client that connects and resets before the server accepts (SO_LINGER 0) is
/// skipped or accepted, never an error: `accept().await?` loops must not stop.
#[test]
fn accept_goes_on_past_a_connection_reset_before_it_was_accepted() {
    let (rt, _) = runtime(16, 16);
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        for _ in 0..3 {
            let gone = std::net::TcpStream::connect(addr).unwrap();
            rustix::net::sockopt::set_socket_linger(&gone, Some(std::time::Duration::ZERO)).unwrap();
            drop(gone);
        }
        let good = client(addr);
        let want = good.local_addr().unwrap();
        // The reset ones may come first (where the kernel still names their peer);
        // none is an error, and the good one arrives.
        for _ in 0..4 {
            let (conn, peer) = timeout(LIMIT, listener.accept()).await.unwrap().expect("accept is not an error");
            if peer == want {
                assert_eq!(conn.peer_addr().unwrap(), want);
                return;
            }
        }
        panic!("the good connection was never accepted");
    })
    .unwrap();
}

/// `Compat::into_inner` hands the stream back only once the last write went out:
/// every byte a write acknowledged reaches the peer.
#[test]
fn compat_into_inner_sends_what_writes_acknowledged() {
    let (rt, _) = runtime(16, 64);
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut peer = client(listener.local_addr().unwrap());
        let (conn, _) = listener.accept().await.unwrap();
        let mut conn = Compat::new(conn);
        // Write until a write waits (the peer reads nothing, so the socket fills):
        // the send before it is then still running.
        let chunk = vec![5u8; 4096];
        let mut acknowledged = 0;
        loop {
            let write = poll_fn(|cx| Pin::new(&mut conn).poll_write(cx, &chunk));
            match timeout(std::time::Duration::from_millis(100), write).await {
                Ok(n) => acknowledged += n.unwrap(),
                Err(_) => break,
            }
        }
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).unwrap();
            all.len()
        });
        let (stream, flushed) = timeout(LIMIT, conn.into_inner()).await.unwrap();
        flushed.unwrap();
        drop(stream);
        assert_eq!(reader.join().unwrap(), acknowledged, "bytes a write acknowledged were lost");
    })
    .unwrap();
}

#[test]
fn send_file_sends_the_whole_file() {
    let (rt, _) = runtime(16, 16);
    let path = std::env::temp_dir().join(format!("berth-async-send-file-{}", std::process::id()));
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let peer = client(listener.local_addr().unwrap());
        let reader = std::thread::spawn(move || {
            let mut peer = peer;
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got
        });
        let (conn, _) = listener.accept().await.unwrap();
        let sent = timeout(LIMIT, conn.send_file(berth_sendfile::FileSend::whole(file).unwrap())).await.unwrap();
        assert_eq!(sent.unwrap(), content.len());
        drop(conn);
        assert_eq!(reader.join().unwrap(), content);
    })
    .unwrap();
}
