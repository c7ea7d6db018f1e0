//! The seed's `ZeroCopyFileTransfer`, on berth-sendfile: a file served over loopback
//! TCP with sendfile(2) from a non-blocking socket, resuming after every `WouldBlock`,
//! and the two ways such a send ends early: the file shrinks under it (`Truncated`)
//! and the client goes away (`PeerClosed`).
//!
//! Run it with `cargo run -p berth-sendfile --example serve_file`; it ends by itself.
//! `cargo test -p berth-sendfile` runs it too (`[[example]] test = true`).

use std::error::Error;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::Duration;

use berth_sendfile::{FileSend, SendFileError};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// Far larger than a loopback socket's buffers, so the sender fills them and waits.
const FILE_LEN: usize = 4 << 20;

fn main() -> Result<(), Box<dyn Error>> {
    let path = std::env::temp_dir().join(format!("berth-sendfile-example-{}", std::process::id()));
    let result = run(&path);
    let _ = fs::remove_file(&path);
    result
}

fn run(path: &Path) -> Result<(), Box<dyn Error>> {
    let data: Vec<u8> = (0..FILE_LEN).map(|i| (i % 251) as u8).collect();
    fs::write(path, &data)?;

    // 1. The whole file to a client that reads slowly: the socket fills up again and
    //    again, and each `WouldBlock` is resumed exactly where it stopped.
    // ANCHOR: whole
    let (socket, client) = connected_pair()?;
    let reader = thread::spawn(move || read_slowly(client));
    let file = File::open(path)?;
    let send = FileSend::whole(&file)?; // one fstat: the length is fixed here
    let header = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", send.remaining());
    let ending = handle(serve(&socket, send, header.as_bytes()));
    drop(socket); // end of the response: the client reads to EOF
    // ANCHOR_END: whole
    assert!(matches!(ending, Ok(Ending::Complete)), "{ending:?}");
    let received = reader.join().map_err(|_| "reader panicked")??;
    assert_eq!(&received[..header.len()], header.as_bytes());
    assert!(received[header.len()..] == data[..], "the body arrives byte for byte");

    // 2. The file shrinks after its length went out in the header (another process
    //    truncated it): the send stops at the new end with `Truncated`, no hang.
    // ANCHOR: truncated
    let (socket, client) = connected_pair()?;
    let reader = thread::spawn(move || read_slowly(client));
    let send = FileSend::whole(&file)?;
    File::options().write(true).open(path)?.set_len(1 << 20)?;
    let ending = handle(serve(&socket, send, b""));
    drop(socket);
    // ANCHOR_END: truncated
    assert!(matches!(ending, Ok(Ending::Truncated { sent: 1_048_576 })), "{ending:?}");
    assert_eq!(reader.join().map_err(|_| "reader panicked")??.len(), 1 << 20);

    // 3. The client connects and leaves without reading: `PeerClosed`, no SIGPIPE.
    let (socket, client) = connected_pair()?;
    drop(client);
    fs::write(path, &data)?;
    let ending = handle(serve(&socket, FileSend::whole(&file)?, header.as_bytes()));
    assert!(matches!(ending, Ok(Ending::PeerClosed)), "{ending:?}");
    Ok(())
}

/// How a response ended, as far as the connection is concerned.
#[derive(Debug)]
enum Ending {
    Complete,
    Truncated { sent: u64 },
    PeerClosed,
}

// ANCHOR: serve
/// Sends `header`, then the body, on a non-blocking socket. Where an event loop would
/// go back to waiting for writability (berth-reactor's send-file op does exactly this),
/// this example polls.
fn serve(socket: &TcpStream, mut send: FileSend<&File>, mut header: &[u8]) -> Result<u64, SendFileError> {
    socket.set_nonblocking(true).map_err(|source| SendFileError::Io { sent: 0, source })?;
    // The header goes with MSG_MORE, so it shares a TCP segment with the body's start.
    while !header.is_empty() {
        match send.send_header(socket, header) {
            Ok(n) => header = &header[n..],
            Err(SendFileError::WouldBlock) => wait_writable(socket, 0)?,
            Err(e) => return Err(e),
        }
    }
    // Only the copy fallback touches this (when the kernel refuses sendfile for the
    // file, e.g. a pipe or some FUSE files); a berth-buf lease does as well.
    let mut scratch = vec![0u8; 64 << 10];
    let mut resumed = 0;
    loop {
        match send.send_some(socket, &mut scratch) {
            Ok(progress) if progress.done => {
                println!("sent {} body bytes; WouldBlock resumes: {resumed}", progress.sent_total);
                return Ok(progress.sent_total);
            }
            Ok(_) => {} // at most one chunk (2 MiB by default) per call
            Err(SendFileError::WouldBlock) => {
                resumed += 1;
                wait_writable(socket, send.progress().sent_total)?;
            }
            Err(e) => return Err(e),
        }
    }
}
// ANCHOR_END: serve

// ANCHOR: handle
/// What a server does with each way a send ends.
fn handle(result: Result<u64, SendFileError>) -> Result<Ending, SendFileError> {
    match result {
        Ok(_) => Ok(Ending::Complete),
        // The file ended before the range: it was truncated while being sent. The
        // client holds `sent` correct bytes and must not take them for the whole body,
        // so the connection is closed (never kept alive) and the event logged.
        Err(SendFileError::Truncated { sent, expected }) => {
            eprintln!("file shrank while being sent: {sent} of {expected} bytes went out; closing");
            Ok(Ending::Truncated { sent })
        }
        // The client closed or reset the connection: nothing to retry, nobody to tell.
        Err(SendFileError::PeerClosed { sent, reset }) => {
            eprintln!("client left after {sent} bytes ({})", if reset { "reset" } else { "closed" });
            Ok(Ending::PeerClosed)
        }
        // A bad range, a missing scratch buffer or an I/O error (EIO from the disk):
        // the server's problem, not the client's. Log it and close.
        Err(e) => Err(e),
    }
}
// ANCHOR_END: handle

/// Blocks until `socket` can take more bytes, for at most five seconds.
fn wait_writable(socket: &TcpStream, sent: u64) -> Result<(), SendFileError> {
    let mut fds = [PollFd::new(socket, PollFlags::OUT)];
    loop {
        match poll(&mut fds, Some(&Timespec { tv_sec: 5, tv_nsec: 0 })) {
            Ok(0) => return Err(SendFileError::Io { sent, source: io::ErrorKind::TimedOut.into() }),
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(SendFileError::Io { sent, source: e.into() }),
        }
    }
}

/// A connected loopback pair: (the server's socket, the client's).
fn connected_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    Ok((server, client))
}

/// A client that reads 16 KiB at a time with a pause between reads, until EOF.
fn read_slowly(mut client: TcpStream) -> io::Result<Vec<u8>> {
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match client.read(&mut buf)? {
            0 => return Ok(received),
            n => received.extend_from_slice(&buf[..n]),
        }
        thread::sleep(Duration::from_micros(500));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_runs() {
        super::main().unwrap();
    }
}
