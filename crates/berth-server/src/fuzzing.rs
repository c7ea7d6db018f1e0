//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, and this crate's
//! own tests): the request-path and `Range` parsers as plain functions, and
//! [`Connection`], which drives a [`Service`] the way a worker does — input buffered
//! up to the request head limit, `data` called until it answers or wants more,
//! replies turned into the bytes a client would read — without sockets or threads.
//! Not a stable API; hidden from the docs.

use std::any::Any;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use berth_buf::{BufferConfig, BufferManager, Lease};
use berth_sendfile::ByteRange;

use crate::path;
use crate::ranges::{self, MAX_RANGES, Ranges};
use crate::service::{ConnId, Reply, ReplyParts, Service};

/// Why [`decode_path`] refused a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// Not in origin form (`/...`): a 400.
    NotAbsolute,
    /// Longer, decoded, than the buffer: a 414.
    TooLong,
    /// A NUL, a backslash or a `..` segment: a 403.
    Forbidden,
}

/// A path [`decode_path`] accepted: `out[..len]` (then a NUL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedPath {
    /// Bytes of the decoded path (`.` for the root).
    pub len: usize,
    /// The request path ended in `/`.
    pub trailing_slash: bool,
}

/// Decodes a request path (without its query) into `out`, as `StaticFiles` does.
pub fn decode_path(raw: &[u8], out: &mut [u8]) -> Result<DecodedPath, PathRefusal> {
    match path::decode(raw, out) {
        Ok(p) => Ok(DecodedPath { len: p.len, trailing_slash: p.trailing_slash }),
        Err(path::PathError::NotAbsolute) => Err(PathRefusal::NotAbsolute),
        Err(path::PathError::TooLong) => Err(PathRefusal::TooLong),
        Err(path::PathError::Forbidden) => Err(PathRefusal::Forbidden),
    }
}

/// Whether a decoded path names a hidden file (a 404 unless `StaticFiles::hidden`).
pub fn is_hidden(decoded: &[u8]) -> bool {
    path::is_hidden(decoded)
}

/// What `StaticFiles` makes of a `Range` header value for a file of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole file, 200.
    Ignore,
    /// 416.
    Unsatisfiable,
    /// 206 with these ranges, in the order asked (one: a plain 206; more: multipart).
    Ranges(Vec<ByteRange>),
}

/// Reads a `Range` header value as `StaticFiles` does (the list, the cap, overlaps).
pub fn range_list(value: &str, size: u64) -> RangeAnswer {
    let mut out = [ByteRange::whole(0); MAX_RANGES];
    match ranges::parse(value, size, &mut out) {
        Ranges::Ignore => RangeAnswer::Ignore,
        Ranges::Unsatisfiable => RangeAnswer::Unsatisfiable,
        Ranges::Single(r) => RangeAnswer::Ranges(vec![r]),
        Ranges::Multi(n) => RangeAnswer::Ranges(out[..n].to_vec()),
    }
}

/// What a client sees happen on a [`Connection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `data` consumed `request` and answered it with `response` (the reply's bytes,
    /// its file ranges read from the file); `close`: the server closes after it;
    /// `later`: an answer follows from another thread (not simulated).
    Reply {
        /// The input bytes the reply consumed.
        request: Vec<u8>,
        /// The bytes sent.
        response: Vec<u8>,
        /// The connection is closed after the reply.
        close: bool,
        /// The service answers later as well.
        later: bool,
    },
    /// `data` consumed `request` and will answer later ([`Reply::answer_later`]);
    /// the harness goes on as if that answer had been sent.
    Later {
        /// The input bytes consumed.
        request: Vec<u8>,
    },
    /// The server closed the connection without a reply.
    Closed(CloseReason),
}

/// Why a [`Connection`] was closed without a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The reply did not fit its segment, or no segment could be leased.
    ReplyFailed,
    /// The input filled the request head limit and the service neither consumed
    /// nor answered it.
    InputFullUnanswered,
    /// A file range of the reply ran past the end of its file.
    FileShort,
}

/// One connection of a server, driven by hand: see the module docs. The service's
/// `disconnect` runs when it drops.
pub struct Connection<'s, S: Service> {
    service: &'s S,
    conn: Option<S::Conn>,
    manager: BufferManager,
    input: Vec<u8>,
    limit: usize,
    id: ConnId,
    closed: bool,
    state: Option<&'s mut (dyn Any + 'static)>,
}

impl<S: Service> std::fmt::Debug for Connection<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("buffered", &self.input.len()).field("closed", &self.closed).finish()
    }
}

impl<'s, S: Service> Connection<'s, S> {
    /// A connection with replies in segments of `segment_size` bytes and input
    /// buffered up to `max_input` bytes (capped by the segment, as the server does).
    pub fn new(service: &'s S, segment_size: usize, max_input: usize) -> io::Result<Self> {
        let manager = BufferManager::new(BufferConfig::new().segment_size(segment_size).segment_count(4))
            .map_err(io::Error::other)?;
        let conn = Some(service.connect(None));
        let limit = max_input.min(manager.segment_size()).max(1);
        let id = ConnId::from_u64(0x0000_0001_0000_0007);
        Ok(Connection {
            service,
            conn,
            manager,
            input: Vec::with_capacity(limit),
            limit,
            id,
            closed: false,
            state: None,
        })
    }

    /// Lends `data` the worker state `state` ([`Reply::worker_state`]), as the
    /// worker that owns the connection (worker 0) does.
    pub fn with_worker_state(mut self, state: &'s mut (dyn Any + 'static)) -> Self {
        self.state = Some(state);
        self
    }

    /// The id replies of this connection carry.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Whether the server has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The client sends `bytes` (one read's worth, or more: whatever does not fit
    /// the buffer is read after the service made room). Appends what happens.
    pub fn receive(&mut self, mut bytes: &[u8], events: &mut Vec<Event>) {
        while !bytes.is_empty() && !self.closed {
            let n = (self.limit - self.input.len()).min(bytes.len());
            self.input.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.process(events);
            if !self.closed && self.input.len() >= self.limit {
                // As the worker does: a full buffer the service left unanswered.
                self.closed = true;
                events.push(Event::Closed(CloseReason::InputFullUnanswered));
            }
        }
    }

    fn process(&mut self, events: &mut Vec<Event>) {
        let Some(conn) = self.conn.as_mut() else { return };
        while !self.closed && !self.input.is_empty() {
            let full = self.input.len() >= self.limit;
            let manager = &self.manager;
            let lease = || manager.lease();
            let mut reply = Reply::new(&lease, self.id, full, false, self.state.as_deref_mut());
            let consumed = self.service.data(conn, &self.input, &mut reply).min(self.input.len());
            let parts = reply.into_parts();
            let request: Vec<u8> = self.input.drain(..consumed).collect();
            if parts.failed {
                self.closed = true;
                events.push(Event::Closed(CloseReason::ReplyFailed));
                return;
            }
            if !parts.is_empty() {
                let (close, later) = (parts.close, parts.later && !parts.close);
                match materialise(parts) {
                    Ok(response) => events.push(Event::Reply { request, response, close, later }),
                    Err(reason) => {
                        self.closed = true;
                        events.push(Event::Closed(reason));
                        return;
                    }
                }
                self.service.reply_sent(conn);
                if close {
                    self.closed = true;
                }
                continue;
            }
            if parts.later {
                events.push(Event::Later { request });
                continue;
            }
            if consumed == 0 {
                return;
            }
        }
    }
}

impl<S: Service> Drop for Connection<'_, S> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.service.disconnect(conn);
        }
    }
}

/// The bytes a reply puts on the wire: its bytes with its file ranges read in.
fn materialise(parts: ReplyParts) -> Result<Vec<u8>, CloseReason> {
    let head: &[u8] = parts.head.as_ref().map_or(&[], Lease::filled);
    let mut out = Vec::with_capacity(head.len());
    if parts.parts.n > 0 {
        let Some(file) = parts.parts.file.as_ref() else { return Err(CloseReason::ReplyFailed) };
        let mut pos = 0;
        for &(mark, range) in &parts.parts.marks[..parts.parts.n] {
            let mark = mark.min(head.len());
            out.extend_from_slice(&head[pos.min(mark)..mark]);
            pos = mark;
            read_range(file.file(), range, &mut out)?;
        }
        out.extend_from_slice(&head[pos..]);
        return Ok(out);
    }
    out.extend_from_slice(head);
    if let Some(send) = parts.file.as_ref() {
        read_range(send.file().file(), send.range(), &mut out)?;
    }
    Ok(out)
}

fn read_range(file: &File, range: ByteRange, out: &mut Vec<u8>) -> Result<(), CloseReason> {
    let start = out.len();
    let len = usize::try_from(range.len()).map_err(|_| CloseReason::FileShort)?;
    out.resize(start + len, 0);
    file.read_exact_at(&mut out[start..], range.offset()).map_err(|_| CloseReason::FileShort)
}

/// Worker 0's relay lane for [`Connection::with_worker_state`], with no port: its
/// channel is created (welcome and all) and taken as attached at once, as if the
/// worker had read a backend's hello (the harness plays that worker, which never
/// reads replies). Attach a [`crate::RelayBackend`] to read what it forwards.
pub fn relay_lane(relay: &crate::IpcRelay) -> Result<Box<dyn Any + Send>, crate::OpenError> {
    crate::relay::fuzzing_lane(relay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticFiles;

    fn root(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-fuzzing-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.txt"), "0123456789").unwrap();
        dir
    }

    /// The harness answers pipelined requests in order, reads file ranges in, and
    /// gives the same replies however the bytes are split.
    #[test]
    fn connection_replies_as_a_worker_would() {
        let dir = root("harness");
        let files = StaticFiles::new(&dir).unwrap();
        let input = b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=2-4\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let replies = |chunk: usize| {
            let mut conn = Connection::new(&files, 8192, 8192).unwrap();
            let mut events = Vec::new();
            input.chunks(chunk).for_each(|c| conn.receive(c, &mut events));
            assert!(conn.is_closed());
            events
                .into_iter()
                .map(|e| match e {
                    Event::Reply { response, close, .. } => (String::from_utf8(response).unwrap(), close),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        let whole = replies(input.len());
        assert_eq!(whole.len(), 2, "the third request comes after the close");
        assert!(whole[0].0.starts_with("HTTP/1.1 206 ") && whole[0].0.ends_with("\r\n\r\n234") && !whole[0].1);
        assert!(whole[1].0.starts_with("HTTP/1.1 200 ") && whole[1].0.ends_with("\r\n\r\n0123456789") && whole[1].1);
        let strip_date = |r: &[(String, bool)]| -> Vec<String> {
            r.iter().map(|(s, _)| s.lines().filter(|l| !l.starts_with("Date:")).collect()).collect()
        };
        assert_eq!(strip_date(&replies(1)), strip_date(&whole));
        assert_eq!(strip_date(&replies(7)), strip_date(&whole));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The relay fuzz target's rig: a lane made without a port, a backend attached
    /// to it, and a connection of worker 0 whose frames reach the backend whole.
    #[test]
    fn a_relay_lane_without_a_port_forwards_frames() {
        let name = format!("berth-fuzzing-relay-{}", std::process::id());
        let relay = crate::IpcRelay::start(crate::RelayConfig::new(&name).max_frame(1024)).unwrap();
        let mut lane = relay_lane(&relay).unwrap();
        let mut backend = crate::RelayBackend::attach(&name).unwrap();
        assert_eq!(backend.lanes(), 1);
        assert!(relay.handle().attached());
        let mut conn = Connection::new(&relay, 4096, 600).unwrap().with_worker_state(&mut *lane);
        let mut events = Vec::new();
        conn.receive(b"\0\0\0\x03abc\0\0\0", &mut events);
        assert_eq!(events, [Event::Later { request: b"\0\0\0\x03abc".to_vec() }]);
        let req = backend.recv(Some(std::time::Duration::from_secs(5))).unwrap();
        assert_eq!((req.conn(), req.payload()), (conn.id().to_u64(), &b"abc"[..]));
        drop(req);
        assert!(backend.recv(Some(std::time::Duration::ZERO)).is_err(), "the partial frame waits");
        drop(conn);
        drop(lane);
        let _ = berth_ipc::Duplex::unlink_named(&format!("{name}.0"));
    }

    /// A head that fills the buffer unanswered closes the connection, as a worker does.
    #[test]
    fn full_input_unanswered_closes() {
        struct Never;
        impl Service for Never {
            type Conn = ();
            fn connect(&self, _: Option<std::net::SocketAddr>) {}
            fn data(&self, _: &mut (), _: &[u8], _: &mut Reply<'_>) -> usize {
                0
            }
        }
        let mut conn = Connection::new(&Never, 4096, 16).unwrap();
        let mut events = Vec::new();
        conn.receive(&[b'x'; 15], &mut events);
        assert!(events.is_empty() && !conn.is_closed());
        conn.receive(b"y", &mut events);
        assert_eq!(events, [Event::Closed(CloseReason::InputFullUnanswered)]);
    }
}
