//! A local service on a Unix socket: who connected is known from the kernel
//! (`SO_PEERCRED`), so only the server's own user is served. Each connection gets a
//! greeting naming its process and user, then an echo of what it sends.
//!
//! Run it with `cargo run -p berth-reactor --example unix_server -- unix:/tmp/berth.sock`
//! and talk to it with `nc -U /tmp/berth.sock` (or `unix:@name` for an abstract
//! name: `nc -U @name` with some netcats, `socat - ABSTRACT-CONNECT:name`). A socket
//! file left by an earlier run that died is replaced; the file is removed at exit.

use std::io;
use std::time::{Duration, Instant};

use berth_ops::OpKind;
use berth_reactor::{Completion, CompletionPort, Handler, SocketId, UnixAddr, UnixListenOptions};

struct LocalService {
    listener: SocketId,
    uid: u32,
    served: u64,
    refused: u64,
}

// ANCHOR: handler
impl Handler<()> for LocalService {
    fn completed(&mut self, port: &mut CompletionPort<()>, completion: Completion) {
        let Completion::Op { op, kind, socket, result } = completion else { return };
        match (kind, result) {
            (OpKind::Accept, Ok(_)) => {
                let _ = port.accept(self.listener, op);
                // The peer's credentials, from the kernel: nothing it sent decides this.
                match port.peer_cred(socket) {
                    Ok(cred) if cred.uid == self.uid => self.greet(port, socket, cred.pid, cred.uid),
                    _ => {
                        self.refused += 1;
                        let _ = port.close(socket);
                    }
                }
            }
            // Greeting or echo sent: receive the next bytes.
            (OpKind::Send, Ok(_)) => {
                if port.recv_pooled(socket, op).is_err() {
                    let _ = port.close(socket);
                    let _ = port.give_op(op);
                }
            }
            (OpKind::Recv, Ok(n)) if n > 0 => {
                let ok = port.op_mut(op).is_ok_and(|args| args.set_range(0..n).is_ok());
                if !ok || port.send(socket, op).is_err() {
                    let _ = port.close(socket);
                    let _ = port.give_op(op);
                }
            }
            // The peer closed, or an error: done with this connection.
            (OpKind::Accept, Err(_)) => {
                let _ = port.accept(self.listener, op);
            }
            _ => {
                let _ = port.close(socket);
                let _ = port.give_op(op);
            }
        }
    }
}
// ANCHOR_END: handler

impl LocalService {
    fn greet(&mut self, port: &mut CompletionPort<()>, socket: SocketId, pid: Option<i32>, uid: u32) {
        let (Ok(op), Ok(mut lease)) = (port.take_op(), port.lease()) else {
            let _ = port.close(socket);
            return;
        };
        let mut line = [0u8; 64];
        let len = {
            use std::io::Write;
            let mut w = &mut line[..];
            // No pid when the client is in another pid namespace.
            let _ = match pid {
                Some(pid) => writeln!(w, "hello pid {pid} uid {uid}"),
                None => writeln!(w, "hello uid {uid}"),
            };
            64 - w.len()
        };
        lease[..len].copy_from_slice(&line[..len]);
        let sent = port.op_mut(op).is_ok_and(|args| args.set_buffer(lease, 0..len).is_ok());
        if !sent || port.send(socket, op).is_err() {
            let _ = port.close(socket);
            let _ = port.give_op(op);
            return;
        }
        self.served += 1;
    }
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: UnixAddr = args.next().as_deref().unwrap_or("unix:/tmp/berth-example.sock").parse()?;
    let seconds: Option<u64> = match (args.next().as_deref(), args.next()) {
        (Some("--seconds"), Some(n)) => n.parse().ok(),
        _ => None,
    };
    println!("listening on {addr}");
    let (served, refused) = run(&addr, seconds.map(Duration::from_secs), || {})?;
    println!("served {served}, refused {refused}");
    Ok(())
}

/// Serves on `addr` for `run_for` (or for ever); `listening` is called once it
/// accepts. Returns the connections served and refused.
fn run(addr: &UnixAddr, run_for: Option<Duration>, listening: impl FnOnce()) -> io::Result<(u64, u64)> {
    // ANCHOR: setup
    let mut port = CompletionPort::builder().ops(256).max_sockets(128).build(|_| ())?;
    let options = UnixListenOptions::default().replace_stale(true);
    let listener = port.listen_unix(addr, options).map_err(io::Error::other)?;
    let accept = port.take_op().map_err(io::Error::other)?;
    port.accept(listener, accept).map_err(io::Error::other)?;
    // ANCHOR_END: setup
    listening();
    let uid = rustix::process::getuid().as_raw();
    let mut service = LocalService { listener, uid, served: 0, refused: 0 };
    let deadline = run_for.map(|d| Instant::now() + d);
    loop {
        port.run_once(&mut service, Some(Duration::from_millis(200)))?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    // Dropping the port closes the listener, which removes its socket file.
    Ok((service.served, service.refused))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use berth_reactor::UnixAddr;

    /// The example as a local client sees it: a greeting naming the client's own
    /// process and user, then its bytes echoed; the socket file gone after.
    #[test]
    fn greets_by_credentials_then_echoes() {
        let path = std::env::temp_dir().join(format!("berth-unix-example-{}.sock", std::process::id()));
        let addr = UnixAddr::Path(path.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let server =
            std::thread::spawn(move || super::run(&addr, Some(Duration::from_secs(1)), || tx.send(()).unwrap()));
        rx.recv_timeout(Duration::from_secs(10)).expect("listening");
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut greeting = String::new();
        BufReader::new(&s).read_line(&mut greeting).unwrap();
        let uid = rustix::process::getuid().as_raw();
        assert_eq!(greeting, format!("hello pid {} uid {uid}\n", std::process::id()));
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        drop(s);
        assert_eq!(server.join().unwrap().unwrap(), (1, 0));
        assert!(!path.exists(), "the socket file outlived the server");
    }
}
