//! Shared pieces of the reactor tests: an echo handler and a server thread running it.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use berth_buf::{BufferConfig, BufferManager};
use berth_ops::{ConnectionLimit, OpKind};
use berth_reactor::{Completion, CompletionPort, ListenOptions, PortHandle, PortStats, SocketId};

pub use berth_reactor::echo::{Echo, STOP};

/// Every socket read and write in the tests gives up after this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub struct EchoServer {
    pub addr: SocketAddr,
    pub handle: PortHandle,
    pub thread: JoinHandle<io::Result<(PortStats, usize)>>,
}

impl EchoServer {
    /// Stops the server; returns its stats and the arena's in-use count at the end.
    pub fn stop(self) -> (PortStats, usize) {
        self.handle.post(STOP, 0).expect("post stop");
        self.thread.join().expect("server thread").expect("server loop")
    }
}

/// Starts an echo server on 127.0.0.1:0 in its own thread.
pub fn echo_server(ops: usize, segments: usize, limit: Option<ConnectionLimit>) -> EchoServer {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let buffers = BufferManager::new(BufferConfig::new().segment_size(4096).segment_count(segments))
            .map_err(io::Error::other)?;
        let mut builder = CompletionPort::builder().ops(ops).max_sockets(ops).buffers(buffers.clone());
        if let Some(limit) = limit {
            builder = builder.connection_limit(limit);
        }
        let mut port = builder.build(|_| ())?;
        let listener =
            port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).map_err(io::Error::other)?;
        let mut echo = Echo::start(&mut port, listener).map_err(io::Error::other)?;
        tx.send((port.local_addr(listener).map_err(io::Error::other)?, port.handle())).unwrap();
        while !echo.stopped() {
            port.run_once(&mut echo, Some(Duration::from_millis(100)))?;
        }
        let stats = port.stats();
        drop(port);
        Ok((stats, buffers.stats().in_use))
    });
    let (addr, handle) = rx.recv().expect("server started");
    EchoServer { addr, handle, thread }
}

/// A blocking client with timeouts on every read and write.
pub fn client(addr: SocketAddr) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Waits (bounded) until `pred` holds for a completion; returns it.
pub fn wait_for<T>(port: &mut CompletionPort<T>, mut pred: impl FnMut(&Completion) -> bool) -> Completion {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let mut batch = Vec::with_capacity(64);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        port.wait(&mut batch, Some(Duration::from_millis(50))).expect("wait");
        for c in batch.drain(..) {
            if pred(&c) {
                return c;
            }
            seen.push(c);
        }
    }
    panic!("no matching completion within {IO_TIMEOUT:?}; saw {seen:?}");
}

/// Accepts one connection on `listener` with an op taken and given back; returns
/// the accepted socket and the peer address the accept reported (TCP).
pub fn accept_one<T>(port: &mut CompletionPort<T>, listener: SocketId) -> (SocketId, Option<SocketAddr>) {
    let op = port.take_op().unwrap();
    port.accept(listener, op).unwrap();
    let Completion::Op { socket, result, .. } =
        wait_for(port, |c| matches!(c, Completion::Op { kind: OpKind::Accept, .. }))
    else {
        unreachable!()
    };
    assert_eq!(result, Ok(0));
    let peer = port.op(op).unwrap().remote_endpoint();
    port.give_op(op).unwrap();
    (socket, peer)
}

/// An accepted connection on a fresh port: (port, listener, server socket, client).
pub fn connected_pair(ops: usize) -> (CompletionPort<()>, SocketId, SocketId, std::net::TcpStream) {
    let buffers = BufferManager::new(BufferConfig::new().segment_size(65536).segment_count(64)).unwrap();
    let mut port = CompletionPort::builder().ops(ops).max_sockets(16).buffers(buffers).build(|_| ()).unwrap();
    let listener = port.listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
    let addr = port.local_addr(listener).unwrap();
    let accept = port.take_op().unwrap();
    port.accept(listener, accept).unwrap();
    let c = client(addr);
    let Completion::Op { socket, .. } =
        wait_for(&mut port, |c| matches!(c, Completion::Op { kind: OpKind::Accept, .. }))
    else {
        unreachable!()
    };
    port.give_op(accept).unwrap();
    (port, listener, socket, c)
}

/// Segments the port's ops and the test hold: the arena's in-use count less the
/// segments lent to the io_uring buffer ring (0 on epoll).
pub fn held<T>(port: &CompletionPort<T>) -> usize {
    port.buffers().stats().in_use - port.stats().ring_buffers
}

/// Starts `clients` UDP clients bound to `client_bind`, each sending `per_client`
/// numbered datagrams of varied length (1,400 bytes at most) to `addr` with eight
/// in flight, and checking that each comes back once, whole and unaltered.
pub fn udp_echo_clients(addr: SocketAddr, client_bind: &str, clients: usize, per_client: usize) -> Vec<JoinHandle<()>> {
    (0..clients)
        .map(|i| {
            let c = std::net::UdpSocket::bind(client_bind).unwrap();
            c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                let mut next = 0u32;
                let mut buf = [0u8; 2048];
                while seen.len() < per_client {
                    while next < per_client as u32 && next as usize - seen.len() < 8 {
                        let len = 4 + (next as usize * 37 + i) % 1400;
                        let mut d = vec![i as u8; len];
                        d[..4].copy_from_slice(&next.to_le_bytes());
                        c.send_to(&d, addr).unwrap();
                        next += 1;
                    }
                    let (n, from) = c.recv_from(&mut buf).expect("an echo (none lost on loopback)");
                    assert_eq!(from, addr);
                    let k = u32::from_le_bytes(buf[..4].try_into().unwrap());
                    assert_eq!(n, 4 + (k as usize * 37 + i) % 1400, "datagram {k} came back with another length");
                    assert!(buf[4..n].iter().all(|&b| b == i as u8), "datagram {k} came back altered");
                    assert!(seen.insert(k), "datagram {k} echoed twice");
                }
            })
        })
        .collect()
}
