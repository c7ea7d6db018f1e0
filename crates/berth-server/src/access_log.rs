//! The access log of [`StaticFiles`](crate::StaticFiles): fixed-size [`Record`]s
//! handed by the workers to one logger thread through a bounded queue, formatted
//! there in the combined log format plus the request time, and written in batches.
//! A worker never waits: a full queue drops the record and counts it.

use std::fs::File;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Records the queue holds by default ([`AccessLog::with_capacity`]).
const QUEUE: usize = 4096;
/// The logger writes when its batch holds this many bytes, or the queue is empty.
const BATCH: usize = 64 * 1024;
/// The longest formatted line (every field at its cap, every byte escaped, and more).
const MAX_LINE: usize = 4 * (TARGET + REFERER + AGENT + METHOD) + 256;
/// How often an idle logger looks at the reopen and stop flags.
const TICK: Duration = Duration::from_millis(100);
/// A busy logger's sleep between drains: records gather in the queue meanwhile
/// (half of 4,096 fill 4 ms at half a million requests per second; a drain that
/// found the queue half full is followed by another at once).
const GATHER: Duration = Duration::from_millis(4);
/// The longest a formatted line waits for its batch to fill.
const HOLD: Duration = Duration::from_secs(1);

const METHOD: usize = 8;
const TARGET: usize = 256;
const REFERER: usize = 128;
const AGENT: usize = 160;

/// Where an [`AccessLog`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (`--access-log -`).
    Stdout,
    /// A file, opened for appending (created with mode 0644 if missing) and opened
    /// again by [`AccessLogHandle::reopen`].
    File(PathBuf),
}

/// Bytes of a request field, truncated to `N`.
#[derive(Clone, Copy)]
struct Field<const N: usize> {
    bytes: [u8; N],
    len: u16,
    truncated: bool,
}

impl<const N: usize> Field<N> {
    const EMPTY: Self = Field { bytes: [0; N], len: 0, truncated: false };

    fn set(&mut self, value: &[u8]) {
        let n = value.len().min(N);
        self.bytes[..n].copy_from_slice(&value[..n]);
        self.len = n as u16;
        self.truncated = value.len() > N;
    }

    fn get(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// One request, as the logger needs it: copied bytes, no references, so it can
/// cross to the logger thread without allocation.
#[derive(Clone, Copy)]
pub(crate) struct Record {
    peer: Option<IpAddr>,
    /// When the request head was complete, for `[%t]`.
    time: u64,
    started: Instant,
    method: Field<METHOD>,
    target: Field<TARGET>,
    /// `HTTP/1.x` minor version; `None`: no request line could be read.
    version: Option<u8>,
    status: u16,
    bytes: u64,
    referer: Field<REFERER>,
    agent: Field<AGENT>,
    micros: u64,
}

impl Record {
    pub(crate) fn new(peer: Option<IpAddr>) -> Record {
        Record {
            peer,
            time: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            started: Instant::now(),
            method: Field::EMPTY,
            target: Field::EMPTY,
            version: None,
            status: 0,
            bytes: 0,
            referer: Field::EMPTY,
            agent: Field::EMPTY,
            micros: 0,
        }
    }

    /// The request line and the headers the combined format shows.
    pub(crate) fn request(&mut self, req: &httparse::Request<'_, '_>) {
        self.method.set(req.method.unwrap_or("").as_bytes());
        self.target.set(req.path.unwrap_or("").as_bytes());
        self.version = req.version;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("referer") {
                self.referer.set(h.value);
            } else if h.name.eq_ignore_ascii_case("user-agent") {
                self.agent.set(h.value);
            }
        }
    }

    pub(crate) fn outcome(&mut self, status: u16, bytes: u64) {
        self.status = status;
        self.bytes = bytes;
    }

    /// More body bytes: a streamed reply's next segment.
    pub(crate) fn add_bytes(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// The reply is sent (or the connection gone): the request time ends now.
    fn finish(&mut self) {
        self.micros = self.started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
    }

    /// `%h - - [%t] "%r" %>s %b "%{Referer}i" "%{User-agent}i" %T`, the time as
    /// seconds with milliseconds (nginx's `$request_time`), dates in UTC.
    fn format(&self, out: &mut Vec<u8>) -> io::Result<()> {
        match self.peer {
            Some(ip) => write!(out, "{ip}")?,
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" - - [");
        clf_time(self.time, out)?;
        out.extend_from_slice(b"] \"");
        match self.version {
            Some(minor) => {
                escape(self.method.get(), out);
                out.push(b' ');
                escape(self.target.get(), out);
                if self.target.truncated {
                    out.extend_from_slice(b"...");
                }
                write!(out, " HTTP/1.{minor}")?;
            }
            None => out.push(b'-'),
        }
        write!(out, "\" {} ", self.status)?;
        if self.bytes == 0 {
            out.push(b'-');
        } else {
            write!(out, "{}", self.bytes)?;
        }
        for (field, truncated) in
            [(self.referer.get(), self.referer.truncated), (self.agent.get(), self.agent.truncated)]
        {
            out.extend_from_slice(b" \"");
            if field.is_empty() {
                out.push(b'-');
            } else {
                escape(field, out);
                if truncated {
                    out.extend_from_slice(b"...");
                }
            }
            out.push(b'"');
        }
        writeln!(out, " {}.{:03}", self.micros / 1_000_000, (self.micros / 1000) % 1000)
    }
}

/// Printable ASCII as is; `"`, `\`, control bytes and non-ASCII as `\xHH`, so a
/// request cannot forge a line or a field of the log (nginx does the same).
fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                b"0123456789ABCDEF"[usize::from(b >> 4)],
                b"0123456789ABCDEF"[usize::from(b & 15)],
            ]);
        }
    }
}

/// `10/Oct/2000:13:55:36 +0000` from Unix seconds (UTC).
fn clf_time(secs: u64, out: &mut Vec<u8>) -> io::Result<()> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS[(month - 1) as usize];
    write!(out, "{day:02}/{name}/{year}:{:02}:{:02}:{:02} +0000", rem / 3600, rem / 60 % 60, rem % 60)
}

/// State shared by the senders, the handle and the logger thread.
#[derive(Debug, Default)]
struct Shared {
    reopen: AtomicBool,
    stop: AtomicBool,
    /// The logger wrote what was queued at `stop` and returned.
    done: AtomicBool,
    dropped: AtomicU64,
    written: AtomicU64,
    errors: AtomicU64,
    /// Writes issued (batches), for the tests.
    writes: AtomicU64,
}

/// The sending end of an access log, given to
/// [`StaticFiles::access_log`](crate::StaticFiles::access_log): cloned into the
/// service, used by every worker. Started with [`AccessLog::start`].
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<Record>,
    shared: Arc<Shared>,
}

/// Controls the logger thread of an [`AccessLog`]: reopen its file (SIGHUP, after
/// logrotate moved it), read its counters, and finish it after the server stopped.
#[derive(Debug)]
pub struct AccessLogHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record").field("status", &self.status).field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens `target` and starts the logger thread, with a queue of 4096 records.
    ///
    /// ```
    /// use berth_server::{AccessLog, LogTarget, StaticFiles};
    ///
    /// let dir = std::env::temp_dir();
    /// let path = dir.join(format!("berth-access-doc-{}.log", std::process::id()));
    /// let (log, handle) = AccessLog::start(LogTarget::File(path.clone()))?;
    /// let files = StaticFiles::new(&dir)?.access_log(log);
    /// // ... serve; on SIGHUP: handle.reopen(); after the server stopped:
    /// drop(files);
    /// handle.finish();
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start(target: LogTarget) -> io::Result<(AccessLog, AccessLogHandle)> {
        AccessLog::with_capacity(target, QUEUE)
    }

    /// As [`start`](Self::start), with a queue of `records` (at least 1): when it is
    /// full, a request's record is dropped and counted
    /// ([`AccessLogHandle::dropped`]), never waited for.
    pub fn with_capacity(target: LogTarget, records: usize) -> io::Result<(AccessLog, AccessLogHandle)> {
        let out = Output::open(&target)?;
        let (tx, rx) = sync_channel(records.max(1));
        let shared = Arc::new(Shared::default());
        let capacity = records.max(1);
        let logger =
            Logger { rx, shared: shared.clone(), target, out, batch: Vec::with_capacity(BATCH + MAX_LINE), capacity };
        let thread = std::thread::Builder::new().name("berth-access-log".into()).spawn(move || logger.run())?;
        Ok((AccessLog { tx, shared: shared.clone() }, AccessLogHandle { shared, thread: Some(thread) }))
    }

    /// Queues `record` (its request time ends now), or drops and counts it.
    pub(crate) fn push(&self, mut record: Record) {
        record.finish();
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl AccessLogHandle {
    /// Has the logger close and open its file again before its next batch (within
    /// about 100 ms): after logrotate renamed it, new lines go to a new file at the
    /// configured path. Standard output is left as it is.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
    }

    /// Records dropped because the queue was full (the logger or the disk behind).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Writes or reopens that failed (each also logged as a warning).
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    /// Writes what is queued now and stops the logger, waiting for it up to `limit`;
    /// returns whether it finished. For an exit that cannot wait for the server to
    /// stop (a second Ctrl-C): records pushed while it runs may or may not be
    /// written; once the logger has finished they are dropped and counted.
    pub fn flush_now(&self, limit: std::time::Duration) -> bool {
        self.shared.stop.store(true, Ordering::Release);
        let until = std::time::Instant::now() + limit;
        while !self.shared.done.load(Ordering::Acquire) {
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        true
    }

    /// Writes what is queued and stops the logger thread; call it after the server
    /// has stopped, so no record comes after.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AccessLogHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Output {
    Stdout(io::Stdout),
    File(File),
}

impl Output {
    fn open(target: &LogTarget) -> io::Result<Output> {
        match target {
            LogTarget::Stdout => Ok(Output::Stdout(io::stdout())),
            LogTarget::File(path) => Ok(Output::File(open_append(path)?)),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout(s) => {
                let mut lock = s.lock();
                lock.write_all(bytes)?;
                lock.flush()
            }
            Output::File(f) => f.write_all(bytes),
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    File::options().append(true).create(true).open(path)
}

struct Logger {
    rx: Receiver<Record>,
    shared: Arc<Shared>,
    target: LogTarget,
    out: Output,
    /// Formatted lines not yet written; its capacity is kept, so the logger
    /// allocates nothing after its start.
    batch: Vec<u8>,
    /// The queue's size: the most a stop drains.
    capacity: usize,
}

impl Logger {
    /// Idle, the logger blocks on the queue, so the first record after a quiet spell
    /// wakes it (one futex wake). Busy, it sleeps [`GATHER`] between drains instead
    /// of blocking: a worker's `try_send` then finds no one to wake, and a batch of
    /// many requests costs the workers no syscall and the logger one wake-up and at
    /// most one write. Lines are written once [`BATCH`] bytes are held, when a drain
    /// finds the queue empty, or when the oldest held line is [`HOLD`] old.
    fn run(mut self) {
        let mut busy = false;
        let mut last_took = 0;
        let mut held_since: Option<Instant> = None;
        loop {
            let mut took = 0;
            if busy {
                // A queue that was half full or more at the last drain may fill
                // within a sleep: drain again at once instead.
                if last_took < self.capacity / 2 {
                    std::thread::sleep(GATHER);
                }
            } else {
                match self.rx.recv_timeout(TICK) {
                    Ok(record) => {
                        self.add(&record);
                        took = 1;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            // At most a queue's worth per drain: workers faster than the logger
            // cannot keep it from its flags.
            while took < self.capacity {
                let Ok(record) = self.rx.try_recv() else { break };
                self.add(&record);
                took += 1;
                if self.batch.len() >= BATCH {
                    self.flush();
                }
            }
            if took > 0 && self.batch.is_empty() {
                held_since = None;
            } else if took > 0 {
                held_since.get_or_insert_with(Instant::now);
            }
            // A quiet moment (nothing came while it gathered), or lines held too long.
            if took == 0 || held_since.is_some_and(|t| t.elapsed() >= HOLD) {
                self.flush();
                held_since = None;
            }
            busy = took > 0;
            last_took = took;
            // Checked after every drain, not only when idle: a stop under load (the
            // second Ctrl-C) still writes what was queued when it came, and ends.
            if self.shared.stop.load(Ordering::Acquire) {
                // At most what the queue held at the stop: records still coming
                // (workers not yet stopped) cannot keep it from ending.
                for _ in 0..self.capacity {
                    let Ok(record) = self.rx.try_recv() else { break };
                    self.add(&record);
                    if self.batch.len() >= BATCH {
                        self.flush();
                    }
                }
                break;
            }
            if self.shared.reopen.swap(false, Ordering::AcqRel) {
                self.reopen();
            }
        }
        self.flush();
        self.shared.done.store(true, Ordering::Release);
    }

    fn add(&mut self, record: &Record) {
        let mark = self.batch.len();
        if record.format(&mut self.batch).is_err() {
            self.batch.truncate(mark);
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let lines = self.batch.iter().filter(|&&b| b == b'\n').count() as u64;
        self.shared.writes.fetch_add(1, Ordering::Relaxed);
        match self.out.write_all(&self.batch) {
            Ok(()) => {
                self.shared.written.fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => {
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("access log: {lines} lines lost: {e}");
            }
        }
        self.batch.clear();
    }

    fn reopen(&mut self) {
        self.flush();
        let LogTarget::File(path) = &self.target else { return };
        match open_append(path) {
            Ok(file) => {
                self.out = Output::File(file);
                tracing::info!("access log reopened: {}", path.display());
            }
            Err(e) => {
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("access log: cannot reopen {}: {e}; still writing to the old file", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(r: &Record) -> String {
        let mut out = Vec::new();
        r.format(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn combined_format_with_time() {
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(b"GET /a%20b?x=\"1\" HTTP/1.1\r\nReferer: http://x/\r\nUser-Agent: curl/8 \"q\"\r\n\r\n").unwrap();
        let mut r = Record::new(Some("127.0.0.1".parse().unwrap()));
        r.time = 971_186_136; // 2000-10-10 13:55:36 UTC
        r.request(&req);
        r.outcome(200, 2326);
        r.micros = 3_456;
        assert_eq!(
            line(&r),
            "127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /a%20b?x=\\x221\\x22 HTTP/1.1\" 200 2326 \
             \"http://x/\" \"curl/8 \\x22q\\x22\" 0.003\n"
        );
        let mut bad = Record::new(None);
        bad.time = 0;
        bad.outcome(400, 0);
        assert_eq!(line(&bad), "- - - [01/Jan/1970:00:00:00 +0000] \"-\" 400 - \"-\" \"-\" 0.000\n");
    }

    #[test]
    fn dates() {
        for (secs, text) in [(951_782_400, "29/Feb/2000:00:00:00"), (4_102_444_799, "31/Dec/2099:23:59:59")] {
            let mut out = Vec::new();
            clf_time(secs, &mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), format!("{text} +0000"));
        }
    }

    #[test]
    fn escapes_and_truncates() {
        let mut r = Record::new(None);
        let long = [b'a'; 1000];
        r.target.set(&long);
        r.method.set(b"GET");
        r.version = Some(1);
        r.agent.set(b"evil\n127.0.0.1 - - fake\xff");
        let l = line(&r);
        assert_eq!(l.matches('\n').count(), 1, "{l}");
        assert!(l.contains(&format!("{}... HTTP/1.1", "a".repeat(TARGET))), "{l}");
        assert!(l.contains("evil\\x0A127.0.0.1 - - fake\\xFF"), "{l}");
        assert!(l.len() < MAX_LINE);
    }

    /// The second Ctrl-C's path: `flush_now` returns only once every record queued
    /// before it is in the file, with the logger still holding its senders (the
    /// server has not stopped), and records pushed after it are dropped and counted.
    #[test]
    fn flush_now_writes_what_is_queued_before_returning() {
        let path = std::env::temp_dir().join(format!("berth-access-flush-{}.log", std::process::id()));
        let (log, handle) = AccessLog::with_capacity(LogTarget::File(path.clone()), 20_000).unwrap();
        for i in 0..10_000 {
            let mut r = Record::new(None);
            r.outcome(200, i);
            log.push(r);
        }
        assert!(handle.flush_now(std::time::Duration::from_secs(10)), "the logger did not finish");
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 10_000, "lines queued before flush_now were not all written when it returned");
        log.push(Record::new(None));
        assert_eq!(handle.dropped(), 1);
        drop(handle);
        let _ = std::fs::remove_file(path);
    }

    /// Under steady load the logger writes in batches, not a line per request: it
    /// gathers between drains instead of waking for each record. 2,000 records a
    /// request's time apart (50 µs, spun, never slept) come out in a few writes;
    /// a logger woken by each record writes about one per record.
    #[test]
    fn steady_load_is_written_in_batches() {
        let path = std::env::temp_dir().join(format!("berth-access-batch-{}.log", std::process::id()));
        let (log, handle) = AccessLog::with_capacity(LogTarget::File(path.clone()), 4096).unwrap();
        const RECORDS: u64 = 2_000;
        for i in 0..RECORDS {
            let until = Instant::now() + Duration::from_micros(50);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            let mut r = Record::new(None);
            r.outcome(200, i);
            log.push(r);
        }
        drop(log);
        let shared = handle.shared.clone();
        handle.finish();
        assert_eq!(shared.written.load(Ordering::Relaxed), RECORDS);
        let writes = shared.writes.load(Ordering::Relaxed);
        assert!(writes * 10 <= RECORDS, "{writes} writes for {RECORDS} records spaced 50 µs apart");
        let lines = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
        assert_eq!(lines, RECORDS);
        let _ = std::fs::remove_file(path);
    }
}
