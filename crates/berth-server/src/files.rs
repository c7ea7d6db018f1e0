//! [`StaticFiles`]: HTTP/1.1 GET and HEAD of the files beneath a root directory.

use std::cell::Cell;
use std::ffi::{CStr, OsStr};
use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_sendfile::{ByteRange, FileSend, SourceFile};
use httpdate::HttpDate;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::access_log::{AccessLog, Record};
use crate::conn::Conns;
use crate::encoding::{Accepted, Coding};
use crate::file_cache::{self, Cached, FileCache};
use crate::listing::{Listing, Step};
use crate::path::{self, PathError, RelPath};
use crate::ranges::{self, MAX_RANGES, Ranges};
use crate::service::{Reply, Service};
use crate::validators::{Conditions, ETag, Precondition, if_range_matches};

/// The largest header count [`StaticFiles::max_headers`] accepts (the parser's array
/// lives on the stack).
pub const MAX_HEADERS: usize = 100;
/// Decoded paths (plus `/`, an index name, a sidecar suffix and a NUL) must fit in
/// this many bytes.
const PATH_BUF: usize = 4096;
/// The longest [`StaticFiles::index`] name (Linux's `NAME_MAX`).
pub const MAX_INDEX_NAME: usize = 255;
/// Room kept after a decoded path: `/`, an index name, `.zst` and the NUL.
const PATH_RESERVE: usize = 1 + MAX_INDEX_NAME + 4 + 1;
const ALLOW: &str = "Allow: GET, HEAD, OPTIONS\r\n";

/// A status code and its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Status(u16, &'static str);

const OK: Status = Status(200, "OK");
const NO_CONTENT: Status = Status(204, "No Content");
const PARTIAL: Status = Status(206, "Partial Content");
const MOVED: Status = Status(301, "Moved Permanently");
const NOT_MODIFIED: Status = Status(304, "Not Modified");
const PRECONDITION_FAILED: Status = Status(412, "Precondition Failed");
const BAD_REQUEST: Status = Status(400, "Bad Request");
const FORBIDDEN: Status = Status(403, "Forbidden");
const NOT_FOUND: Status = Status(404, "Not Found");
const BAD_METHOD: Status = Status(405, "Method Not Allowed");
const URI_TOO_LONG: Status = Status(414, "URI Too Long");
const UNSATISFIABLE: Status = Status(416, "Range Not Satisfiable");
const HEADERS_TOO_LARGE: Status = Status(431, "Request Header Fields Too Large");
const SERVER_ERROR: Status = Status(500, "Internal Server Error");
const UNAVAILABLE: Status = Status(503, "Service Unavailable");

/// Serves the files beneath a root directory over HTTP/1.1: GET and HEAD,
/// keep-alive and pipelining, `Content-Length`, `Content-Type` from the extension,
/// validators and conditional requests (below), ranges (below), a directory's
/// index files or else, when asked for, its [listing](Self::list) (a directory
/// asked for without its trailing slash is redirected to it), a [fallback](Self::fallback) and a
/// [not-found page](Self::not_found), [precompressed](Self::precompressed)
/// sidecars, bodies by sendfile(2). HTTP/1.0 closes after the reply unless it asked
/// for keep-alive.
///
/// # Ranges
///
/// One range gets a 206 with `Content-Range`; several get a `multipart/byteranges`
/// 206, each part's bytes by sendfile(2) between the part headers. A list of more
/// than 16 ranges ([`MAX_FILE_PARTS`](crate::MAX_FILE_PARTS)), ranges that overlap,
/// or a malformed header get the whole file with 200, as nginx does: a request never
/// gets more bytes than the file holds. Ranges with no byte in the file are dropped;
/// if none is left, 416.
///
/// # Validators
///
/// Every file response carries `Last-Modified` and a strong `ETag` made of the
/// file's device, inode, size and modification time in nanoseconds (hex, quoted), so
/// a rewrite or a replacement by rename changes it. The conditional headers are
/// taken in RFC 9110 §13.2.2's order: `If-Match` (strong comparison, `*`), or else
/// `If-Unmodified-Since`, fail with 412 Precondition Failed; then `If-None-Match`
/// (lists, `*`, weak comparison: `W/` is ignored), or else `If-Modified-Since`, give
/// 304 Not Modified with the `ETag` and `Last-Modified`; then `Range`, applied only
/// if `If-Range` (when present) holds our `ETag` (strong comparison) or exactly our
/// `Last-Modified` date. A value that does not parse never matches: a list is read
/// up to its first malformed item, and an unparsable date is ignored.
///
/// # Nothing outside the root
///
/// The request path is percent-decoded once and refused (403) if it holds a NUL, a
/// backslash or a `..` segment — in any spelling: `%2e%2e`, `..%2f`, `%5c`. The rest
/// is opened relative to a descriptor of the root with openat2 and
/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so the kernel refuses any resolution —
/// a symlink included — that would leave the root, without a race between a check
/// and the open. Where openat2 is missing (Linux before 5.6) each component is
/// opened in turn with `O_NOFOLLOW`, so no symlink is followed at all. FIFOs,
/// sockets and devices are not served.
///
/// # Hidden files
///
/// A path with a segment that starts with `.` (`/.git/config`, `/.env`,
/// `/docs/.htpasswd`, in any spelling, `/%2egit/config` included) is a 404, as if it
/// did not exist, unless [`hidden`](Self::hidden) is set: a checkout or a home
/// directory served as it is must not hand out its repository, keys or passwords.
/// `/.well-known/` (RFC 8615) is served; dotfiles beneath it are still hidden.
///
/// # Limits
///
/// A request line or head that does not fit in the server's request head limit gets
/// 414 (the line) or 431 (the headers), as do more headers than
/// [`max_headers`](Self::max_headers); a target longer than
/// [`max_uri_len`](Self::max_uri_len) gets 414; a malformed request 400; `OPTIONS`
/// (any path, or `*`) 204 with `Allow: GET, HEAD, OPTIONS`, and any other method
/// than GET, HEAD and OPTIONS 405 with the same `Allow`. A request with a body is answered and the
/// connection closed (no body is read).
///
/// ```
/// use berth_server::{Server, StaticFiles};
/// use std::io::{Read, Write};
///
/// let root = std::env::temp_dir().join(format!("berth-static-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&root)?;
/// std::fs::write(root.join("a.txt"), "0123456789")?;
/// let server = Server::builder().addr("127.0.0.1:0".parse()?).workers(1).serve(StaticFiles::new(&root)?)?;
///
/// let mut client = std::net::TcpStream::connect(server.local_addr())?;
/// client.write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=-3\r\nConnection: close\r\n\r\n")?;
/// let mut response = String::new();
/// client.read_to_string(&mut response)?;
/// assert!(response.starts_with("HTTP/1.1 206 Partial Content\r\n"));
/// assert!(response.contains("Content-Range: bytes 7-9/10\r\n"));
/// assert!(response.ends_with("\r\n\r\n789"));
/// # server.shutdown(std::time::Duration::from_secs(1))?;
/// # std::fs::remove_dir_all(&root)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct StaticFiles {
    root: OwnedFd,
    root_path: PathBuf,
    max_uri: usize,
    max_headers: usize,
    hidden: bool,
    /// `Cache-Control: ...\r\n`, rendered once.
    cache_control: Vec<u8>,
    /// The [`header`](Self::header) lines, rendered once.
    extra: Vec<u8>,
    /// The [`index`](Self::index) names, tried in order for a directory.
    index: Vec<Vec<u8>>,
    /// [`fallback`](Self::fallback) and [`not_found`](Self::not_found): paths relative
    /// to the root, checked and normalised at build time (no NUL).
    fallback: Option<Vec<u8>>,
    not_found: Option<Vec<u8>>,
    /// Serve `FILE.br`, `.zst`, `.gz` sidecars.
    precompressed: bool,
    /// List directories without an index.
    list: bool,
    /// Listings running now, across all workers, and how many may run at once.
    listings: Arc<AtomicUsize>,
    max_listings: usize,
    log: Option<AccessLog>,
    /// Each worker's [open-file cache](Self::open_file_cache): entries and how long
    /// one is trusted; `None` when off.
    cache: Option<(usize, Duration)>,
}

/// Paths each worker's open-file cache holds by default (see
/// [`StaticFiles::open_file_cache`]).
pub const DEFAULT_CACHE_ENTRIES: usize = 256;
/// How long a cached path is trusted by default before it is opened again.
pub const DEFAULT_CACHE_VALID: Duration = Duration::from_secs(1);

/// Listings that may run at once by default (see [`StaticFiles::max_listings`]).
pub const DEFAULT_MAX_LISTINGS: usize = 64;

/// A listing being streamed, holding its place among the server's running listings.
#[derive(Debug)]
pub(crate) struct Streaming {
    listing: Box<Listing>,
    _place: ListingPlace,
}

/// One of the [`StaticFiles::max_listings`] places, given back when dropped.
#[derive(Debug)]
struct ListingPlace(Arc<AtomicUsize>);

impl Drop for ListingPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`StaticFiles`]' state per connection: the peer's address and, with an
/// [access log](StaticFiles::access_log), the record of the request whose reply is
/// being sent (it is queued once the reply is out, with the time it took).
#[derive(Debug)]
pub struct FilesConn {
    peer: Option<std::net::IpAddr>,
    pending: Option<Record>,
    /// The directory listing being streamed, if any.
    listing: Option<Streaming>,
}

/// A routing option refused by [`StaticFiles::index`], [`StaticFiles::fallback`] or
/// [`StaticFiles::not_found`]. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// An index name must be one file name: not empty, `.` or `..`, without `/` or
    /// NUL, at most [`MAX_INDEX_NAME`] bytes.
    #[error("index name {0:?} is not a single file name")]
    InvalidIndex(String),
    /// The path is empty, holds a NUL or a `..` segment, or is too long.
    #[error("{0:?} is not a path beneath the root")]
    InvalidPath(String),
    /// The file could not be opened beneath the root (it does not exist, or a
    /// symlink on the way leaves the root) or is not a regular file.
    #[error("{path:?} cannot be served from beneath the root: {source}")]
    Unusable {
        /// The path as given.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// The most bytes [`StaticFiles::cache_control`] and [`StaticFiles::header`] may add
/// to a response head together (names, values, `: ` and CRLFs): the head must fit in
/// one buffer segment with the server's own headers.
pub const MAX_EXTRA_HEADERS: usize = 4096;

/// Headers the server writes itself or that frame the message: setting them would
/// duplicate them or let a response lie about its length.
const RESERVED: &[&str] = &[
    "accept-ranges",
    "allow",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "date",
    "etag",
    "keep-alive",
    "last-modified",
    "location",
    "proxy-connection",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A response header refused by [`StaticFiles::header`] or
/// [`StaticFiles::cache_control`]. Nothing was added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The name is empty or not an HTTP token (letters, digits and
    /// ``!#$%&'*+-.^_`|~``; no spaces, colons or control bytes).
    #[error("header name {0:?} is not an HTTP token")]
    InvalidName(String),
    /// The value holds CR, LF, NUL or another control byte (a tab aside): it could
    /// end the header and start another, or the body.
    #[error("the value of header {0:?} holds a control character (CR, LF, NUL, ...)")]
    InvalidValue(String),
    /// The server writes this header itself or it frames the message
    /// (`Content-Length`, `Connection`, ...); use
    /// [`cache_control`](StaticFiles::cache_control) for `Cache-Control`.
    #[error("header {0:?} is set by the server and cannot be added")]
    Reserved(String),
    /// The added headers would take more than [`MAX_EXTRA_HEADERS`] bytes.
    #[error("the added headers would take more than {MAX_EXTRA_HEADERS} bytes")]
    TooLong,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `name: value\r\n`, if the name is a token and the value has no control bytes
/// (surrounding spaces and tabs are dropped).
fn render_header(name: &str, value: &str) -> Result<Vec<u8>, HeaderError> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(HeaderError::InvalidName(name.to_string()));
    }
    let value = value.trim_matches([' ', '\t']);
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(HeaderError::InvalidValue(name.to_string()));
    }
    let mut line = Vec::with_capacity(name.len() + value.len() + 4);
    line.extend_from_slice(name.as_bytes());
    line.extend_from_slice(b": ");
    line.extend_from_slice(value.as_bytes());
    line.extend_from_slice(b"\r\n");
    Ok(line)
}

impl StaticFiles {
    /// Serves the files beneath `root`, which must be a directory. It is opened now;
    /// renaming it later does not change what is served.
    pub fn new(root: impl AsRef<Path>) -> io::Result<StaticFiles> {
        let root_path = root.as_ref().to_path_buf();
        let fd = rustix::fs::open(&root_path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(StaticFiles {
            root: fd,
            root_path,
            max_uri: 4096,
            max_headers: 64,
            hidden: false,
            cache_control: Vec::new(),
            extra: Vec::new(),
            index: vec![b"index.html".to_vec()],
            fallback: None,
            not_found: None,
            precompressed: false,
            list: false,
            listings: Arc::new(AtomicUsize::new(0)),
            max_listings: DEFAULT_MAX_LISTINGS,
            log: None,
            cache: Some((DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_VALID)),
        })
    }

    /// The file names tried, in order, for a directory asked for with its trailing
    /// slash (default: `index.html`); the first that is a regular file is served. An
    /// empty list serves no index: a directory is then a 404 (or the
    /// [`fallback`](Self::fallback)). Replaces the earlier list.
    ///
    /// ```
    /// # let root = std::env::temp_dir();
    /// let files = berth_server::StaticFiles::new(&root)?.index(["index.html", "index.htm"])?;
    /// assert!(berth_server::StaticFiles::new(&root)?.index(["../x"]).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn index<I, S>(mut self, names: I) -> Result<Self, RouteError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        for name in names {
            let name = name.as_ref();
            if name.is_empty()
                || name == "."
                || name == ".."
                || name.len() > MAX_INDEX_NAME
                || name.bytes().any(|b| b == b'/' || b == 0)
            {
                return Err(RouteError::InvalidIndex(name.to_string()));
            }
            list.push(name.as_bytes().to_vec());
        }
        self.index = list;
        Ok(self)
    }

    /// Single-page applications: a GET or HEAD of a path that does not exist gets
    /// `file` (relative to the root) with 200, its own `ETag`, ranges and conditional
    /// requests. A path that exists but is refused — hidden, forbidden, leaving the
    /// root, not a regular file — is not redirected to it. `file` must be a regular
    /// file beneath the root now; it is opened again, with the same openat2 rules as
    /// any request, each time it is served.
    ///
    /// ```
    /// # let root = std::env::temp_dir().join(format!("berth-fallback-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&root)?;
    /// std::fs::write(root.join("app.html"), "<div id=app></div>")?;
    /// let files = berth_server::StaticFiles::new(&root)?.fallback("app.html")?;
    /// assert!(berth_server::StaticFiles::new(&root)?.fallback("../etc/passwd").is_err());
    /// # std::fs::remove_dir_all(&root)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fallback(mut self, file: impl AsRef<Path>) -> Result<Self, RouteError> {
        self.fallback = Some(self.checked_file(file.as_ref())?);
        Ok(self)
    }

    /// The body of every 404 (a missing file, a hidden one, a directory without an
    /// index): `file`, relative to the root, with its own `Content-Type`, served with
    /// status 404 (no validators, no ranges). Checked as
    /// [`fallback`](Self::fallback); if it cannot be opened when needed, the plain
    /// `404 Not Found` text is sent.
    ///
    /// ```
    /// # let root = std::env::temp_dir().join(format!("berth-not-found-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&root)?;
    /// std::fs::write(root.join("404.html"), "<h1>Nothing here</h1>")?;
    /// let files = berth_server::StaticFiles::new(&root)?.not_found("404.html")?;
    /// # std::fs::remove_dir_all(&root)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn not_found(mut self, file: impl AsRef<Path>) -> Result<Self, RouteError> {
        self.not_found = Some(self.checked_file(file.as_ref())?);
        Ok(self)
    }

    /// `file` normalised (no empty or `.` segments) and opened once beneath the root.
    fn checked_file(&self, file: &Path) -> Result<Vec<u8>, RouteError> {
        let shown = file.display().to_string();
        let mut rel = Vec::new();
        for seg in file.as_os_str().as_bytes().split(|&b| b == b'/') {
            if seg == b".." || seg.contains(&0) {
                return Err(RouteError::InvalidPath(shown));
            }
            if !seg.is_empty() && seg != b"." {
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(seg);
            }
        }
        if rel.is_empty() || rel.len() > PATH_BUF - PATH_RESERVE {
            return Err(RouteError::InvalidPath(shown));
        }
        let mut buf = rel.clone();
        buf.push(0);
        let c = CStr::from_bytes_with_nul(&buf).map_err(|_| RouteError::InvalidPath(shown.clone()))?;
        match self.open(c) {
            Ok((_, meta)) if meta.is_file() => Ok(rel),
            Ok(_) => Err(RouteError::Unusable { path: shown, source: io::Error::other("not a regular file") }),
            Err(e) => Err(RouteError::Unusable { path: shown, source: e.into() }),
        }
    }

    /// Sends `Cache-Control: value` with every file (200, 206 and 304; not with
    /// errors or redirects), replacing an earlier value. The line is rendered now,
    /// so a response only copies its bytes.
    ///
    /// ```
    /// # let root = std::env::temp_dir();
    /// let files = berth_server::StaticFiles::new(&root)?.cache_control("public, max-age=3600")?;
    /// assert!(berth_server::StaticFiles::new(&root)?.cache_control("no-cache\r\nX-Evil: 1").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cache_control(mut self, value: &str) -> Result<Self, HeaderError> {
        let line = render_header("Cache-Control", value)?;
        if line.len() + self.extra.len() > MAX_EXTRA_HEADERS {
            return Err(HeaderError::TooLong);
        }
        self.cache_control = line;
        Ok(self)
    }

    /// Adds `name: value` to every file response (200, 206 and 304) and to the 204 of
    /// `OPTIONS`; repeatable, sent in the order added. Refused with a
    /// [`HeaderError`] — never sent half-checked — if the name is not an HTTP token,
    /// the value holds CR, LF, NUL or another control byte, the name is one the server
    /// writes itself or that frames the message (`Content-Length`, `Content-Type`,
    /// `ETag`, `Cache-Control`: see [`cache_control`](Self::cache_control), ...), or
    /// the added headers would pass [`MAX_EXTRA_HEADERS`] bytes. The line is rendered
    /// now, so a response only copies its bytes.
    ///
    /// ```
    /// use berth_server::{HeaderError, StaticFiles};
    /// # let root = std::env::temp_dir();
    /// let files = StaticFiles::new(&root)?
    ///     .header("X-Content-Type-Options", "nosniff")?
    ///     .header("Access-Control-Allow-Origin", "*")?;
    /// let injected = StaticFiles::new(&root)?.header("X-A", "1\r\nSet-Cookie: stolen=1");
    /// assert!(matches!(injected, Err(HeaderError::InvalidValue(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, HeaderError> {
        if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            return Err(HeaderError::Reserved(name.to_string()));
        }
        let line = render_header(name, value)?;
        if line.len() + self.extra.len() + self.cache_control.len() > MAX_EXTRA_HEADERS {
            return Err(HeaderError::TooLong);
        }
        self.extra.extend_from_slice(&line);
        Ok(self)
    }

    /// Serves precompressed sidecars (default false): for a request whose
    /// `Accept-Encoding` accepts `br`, `zstd` or `gzip` (q-values honoured, `q=0`
    /// excludes, `*` counts; the best q wins, br before zstd before gzip on a tie),
    /// `FILE.br`, `FILE.zst` or `FILE.gz` is sent in FILE's place when it is a
    /// regular file beside FILE, opened beneath the root like any request (a sidecar
    /// that is a symlink leaving the root is skipped), and not older than FILE. It
    /// goes with `Content-Encoding`, FILE's `Content-Type`, its own `ETag` and
    /// `Last-Modified`, and ranges count its encoded bytes. Every file response then
    /// carries `Vary: Accept-Encoding`. Nothing is compressed on the fly.
    ///
    /// Off by default, as nginx's `gzip_static` is: each request that accepts an
    /// encoding costs an open attempt per coding, and a sidecar is trusted to hold
    /// FILE's bytes encoded — the operator vouches for that by turning it on.
    ///
    /// ```
    /// # let root = std::env::temp_dir();
    /// // site/app.js is served as site/app.js.br to `Accept-Encoding: br, gzip`.
    /// let files = berth_server::StaticFiles::new(&root)?.precompressed(true);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn precompressed(mut self, on: bool) -> Self {
        self.precompressed = on;
        self
    }

    /// Lists a directory that has no index file (default false: a 404, or the
    /// [fallback](Self::fallback)). A GET of `/dir/` then gets an HTML page: a link
    /// to the parent, the subdirectories, then the other entries, each group sorted
    /// by the bytes of the names (byte order, not locale order), with sizes in bytes
    /// and modification dates. Hidden entries (a name starting with `.`) are left
    /// out unless [`hidden`](Self::hidden) is set. An index file still wins; the
    /// listing wins over the [fallback](Self::fallback).
    ///
    /// Names are never markup: in the text `& < > " '` are escaped and invalid
    /// UTF-8 and control characters (a newline) show as U+FFFD; in the link every
    /// byte but letters, digits and `-._~` is percent-encoded, raw bytes included,
    /// so the link names the file exactly. A symlink is shown as what it points to
    /// when that lies beneath the listed directory (openat2 with `RESOLVE_BENEATH`,
    /// as every open here); one that leaves it, dangles or loops is shown without a
    /// size or date (its link, when followed, gets what any request for it gets).
    /// The page is sent with `Cache-Control: no-cache` and
    /// `Content-Security-Policy: default-src 'none'`, without validators.
    ///
    /// The page is streamed ([`Reply::stream`]), one segment at a time, chunked
    /// (HTTP/1.0: ended by the close), and sorted without holding the directory: a
    /// listing keeps a fixed window of the next entries (about 112 KiB, whatever the
    /// directory's size) and reads the directory again for each window, so a
    /// directory of n entries is read about n / 3,000 times (100,000 entries: 29
    /// reads, about 1.5 s of CPU, mostly the kernel's getdents). The cost grows as
    /// n²: meant for directories of human size. Each read is done in steps of 8192
    /// entries with the worker yielded between them, so its other connections are
    /// served meanwhile.
    ///
    /// ```
    /// # let root = std::env::temp_dir();
    /// let files = berth_server::StaticFiles::new(&root)?.list(true);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn list(mut self, on: bool) -> Self {
        self.list = on;
        self
    }

    /// Each worker keeps the descriptor and content type of up to `entries`
    /// recently served paths (default [`DEFAULT_CACHE_ENTRIES`]; rounded down to a
    /// power of two, at least 4 and at most 65,536, and all workers' together at
    /// most a quarter of `RLIMIT_NOFILE`), so a request for one costs one `statx` of
    /// that descriptor instead of `openat2`, `statx` and `close`; `entries` of 0
    /// turns the cache off.
    ///
    /// The `statx` keeps answers current: when the inode's change time differs from
    /// the one it had when opened — written, deleted, renamed (to a hidden name or
    /// out of the root too), linked, unlinked, chmod-ed — the path is looked up
    /// again. What leaves the file untouched is seen once the entry is `valid` old
    /// (default [`DEFAULT_CACHE_VALID`]), when the next request opens the path again
    /// with the same rules as without the cache: a directory or symlink on its path
    /// renamed, moved or retargeted, an index file appearing, a listing that would
    /// now replace a deleted index. A `valid` of zero turns the cache off too.
    ///
    /// Each entry holds a descriptor: `entries` × workers of them count against
    /// the process's open-file limit beside the connections. Directory listings,
    /// precompressed sidecars, the fallback and the error pages are not cached.
    ///
    /// ```
    /// # let root = std::env::temp_dir();
    /// use std::time::Duration;
    /// let files = berth_server::StaticFiles::new(&root)?.open_file_cache(1024, Duration::from_secs(10));
    /// let uncached = berth_server::StaticFiles::new(&root)?.open_file_cache(0, Duration::ZERO);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn open_file_cache(mut self, entries: usize, valid: Duration) -> Self {
        self.cache = (entries > 0 && !valid.is_zero()).then_some((entries, valid));
        self
    }

    /// How many listings may stream at once, across all workers (default
    /// [`DEFAULT_MAX_LISTINGS`]): each holds about 112 KiB and a directory
    /// descriptor until its last byte is sent, so slow clients could otherwise pin
    /// any amount. A listing asked for beyond it gets `503 Service Unavailable` with
    /// `Retry-After: 1`.
    pub fn max_listings(mut self, n: usize) -> Self {
        self.max_listings = n.max(1);
        self
    }

    /// A place for one more running listing, if there is one.
    fn listing_place(&self) -> Option<ListingPlace> {
        self.listings
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < self.max_listings).then_some(n + 1))
            .ok()
            .map(|_| ListingPlace(self.listings.clone()))
    }

    /// Logs every request to `log` (see [`AccessLog`]): the combined log format plus
    /// the request time, from the complete request head to the last byte of the
    /// reply handed to the kernel. Records go to the logger thread through a bounded
    /// queue once the reply is sent; a full queue drops them (counted), so a worker
    /// never waits for the disk.
    ///
    /// See [`AccessLog::start`] for an example.
    pub fn access_log(mut self, log: AccessLog) -> Self {
        self.log = Some(log);
        self
    }

    /// The longest request target accepted (default 4096 bytes); longer gets 414.
    pub fn max_uri_len(mut self, bytes: usize) -> Self {
        self.max_uri = bytes;
        self
    }

    /// The most request headers accepted (default 64, at most [`MAX_HEADERS`]); more
    /// gets 431.
    pub fn max_headers(mut self, n: usize) -> Self {
        self.max_headers = n.clamp(1, MAX_HEADERS);
        self
    }

    /// Serves hidden files too: paths with a segment that starts with `.` (default
    /// false: they are 404s, `/.well-known/` aside).
    pub fn hidden(mut self, serve: bool) -> Self {
        self.hidden = serve;
        self
    }

    /// The root directory, as given.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// Opens `rel` beneath the root.
    fn open(&self, rel: &CStr) -> Result<(File, Metadata), Errno> {
        // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused after).
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat2(&self.root, rel, flags, Mode::empty(), beneath()) {
            Err(Errno::NOSYS) => open_walk(&self.root, rel.to_bytes(), flags)?,
            other => other?,
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        Ok((file, meta))
    }

    fn respond(
        &self,
        req: &httparse::Request<'_, '_>,
        reply: &mut Reply<'_>,
        outcome: &Cell<(u16, u64)>,
        listing: &mut Option<Streaming>,
    ) {
        let head_only = req.method == Some("HEAD");
        let http10 = req.version == Some(0);
        let mut keep_alive = !http10;
        let (mut host, mut body) = (false, false);
        let mut cond = Conditions::default();
        let mut accepted = Accepted::default();
        for h in req.headers.iter() {
            let value = std::str::from_utf8(h.value).ok().map(str::trim);
            let name = h.name;
            if name.eq_ignore_ascii_case("connection") {
                for token in value.unwrap_or("").split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                        keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("host") {
                host = true;
            } else if name.eq_ignore_ascii_case("content-length") {
                body |= value != Some("0");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                body = true;
            } else if name.eq_ignore_ascii_case("if-modified-since") {
                cond.modified_since = cond.modified_since.or(value);
            } else if name.eq_ignore_ascii_case("if-unmodified-since") {
                cond.unmodified_since = cond.unmodified_since.or(value);
            } else if name.eq_ignore_ascii_case("if-match") {
                cond.if_match = true;
            } else if name.eq_ignore_ascii_case("if-none-match") {
                cond.if_none_match = true;
            } else if name.eq_ignore_ascii_case("range") {
                cond.range = cond.range.or(value);
            } else if name.eq_ignore_ascii_case("if-range") {
                cond.if_range = cond.if_range.or(value);
            } else if self.precompressed && name.eq_ignore_ascii_case("accept-encoding") {
                accepted.add(h.value);
            }
        }
        cond.headers = &*req.headers;
        // A body is never read: closing keeps the next request from starting inside it.
        keep_alive &= !body && !reply.server_closing();
        let mut r = Response { reply, keep_alive, http10, head_only, files: Some(self), outcome };

        if !matches!(req.method, Some("GET" | "HEAD" | "OPTIONS")) {
            return r.error(BAD_METHOD, ALLOW);
        }
        if !http10 && !host {
            r.keep_alive = false;
            return r.error(BAD_REQUEST, "");
        }
        let target = req.path.unwrap_or("");
        if target.len() > self.max_uri {
            return r.error(URI_TOO_LONG, "");
        }
        if req.method == Some("OPTIONS") {
            // The same methods for every resource, `*` (the server) included: no
            // need to look at the file system.
            return r.options();
        }
        let (raw_path, query) = match target.find(['?', '#']) {
            Some(i) => target.split_at(i),
            None => (target, ""),
        };
        let mut buf = [0u8; PATH_BUF];
        let rel = match path::decode(raw_path.as_bytes(), &mut buf[..PATH_BUF - PATH_RESERVE]) {
            Ok(rel) => rel,
            Err(PathError::NotAbsolute) => return r.error(BAD_REQUEST, ""),
            Err(PathError::TooLong) => return r.error(URI_TOO_LONG, ""),
            Err(PathError::Forbidden) => {
                tracing::debug!(target, "refused path");
                return r.error(FORBIDDEN, "");
            }
        };
        if !self.hidden && path::is_hidden(&buf[..rel.len]) {
            tracing::debug!(target, "hidden path");
            return r.error(NOT_FOUND, "");
        }
        // A path served a moment ago: its descriptor, and one statx of it instead
        // of openat2, statx and close. An inode whose change time moved (written,
        // renamed, linked, unlinked) or with no link left is looked up again.
        let now = self.cache.map(|_| Instant::now());
        let mut recycled = None;
        if let Some(now) = now
            && let Some(cache) = r.reply.worker_state::<FileCache>()
        {
            match cache.get(&buf[..rel.len], rel.trailing_slash, now) {
                Ok(hit) => match hit.file.metadata() {
                    // The same inode, unchanged since it was looked up: not renamed,
                    // linked, unlinked or written (each changes its ctime).
                    Ok(meta) if meta.nlink() > 0 && (meta.ctime(), meta.ctime_nsec()) == hit.ctime => {
                        let len = self.index_name(&mut buf, rel.len, hit.index);
                        let file = SourceFile::Shared(hit.file);
                        return self.serve(r, &mut buf, len, file, &meta, hit.content_type, &cond, &accepted);
                    }
                    _ => {
                        cache.forget(&buf[..rel.len], rel.trailing_slash);
                        recycled = Some(hit.file);
                    }
                },
                Err(stale) => recycled = stale,
            }
        }
        let (file, meta, len) = match self.locate(&mut buf, rel, target) {
            Ok((file, meta, len)) => {
                let content_type = content_type(&buf[..len]);
                let file = match now.zip(r.reply.worker_state::<FileCache>()) {
                    Some((now, cache)) => {
                        let file = file_cache::share(recycled, file);
                        let index =
                            (len > rel.len).then(|| self.index.iter().position(|n| **n == buf[rel.len + 1..len]));
                        let ctime = (meta.ctime(), meta.ctime_nsec());
                        let entry = Cached { file: file.clone(), content_type, index: index.flatten(), ctime };
                        cache.insert(&buf[..rel.len], rel.trailing_slash, entry, now);
                        SourceFile::Shared(file)
                    }
                    None => SourceFile::Owned(file),
                };
                return self.serve(r, &mut buf, len, file, &meta, content_type, &cond, &accepted);
            }
            Err(Located::Redirect) => {
                let query = if query.starts_with('?') { query } else { "" };
                return r.redirect(raw_path, query);
            }
            Err(Located::Status(status)) => return r.error(status, ""),
            Err(Located::List(dir)) => {
                // "/" and the decoded path with its slashes, for the page's title.
                let mut shown = [0u8; PATH_BUF + 2];
                let root = &buf[..rel.len] == b".";
                let n = if root {
                    shown[0] = b'/';
                    1
                } else {
                    shown[0] = b'/';
                    shown[1..=rel.len].copy_from_slice(&buf[..rel.len]);
                    shown[rel.len + 1] = b'/';
                    rel.len + 2
                };
                return r.listing(dir, &shown[..n], root, listing);
            }
            Err(Located::Missing) => match self.fallback.as_deref().map(|f| self.open_rel(&mut buf, f)) {
                Some(Ok((file, meta, len))) if meta.is_file() => (file, meta, len),
                _ => return r.error(NOT_FOUND, ""),
            },
        };
        let content_type = content_type(&buf[..len]);
        self.serve(r, &mut buf, len, SourceFile::Owned(file), &meta, content_type, &cond, &accepted);
    }

    /// Serves FILE (`buf[..len]`, opened as `file`), or the sidecar of it the client
    /// prefers.
    #[allow(clippy::too_many_arguments)]
    fn serve(
        &self,
        r: Response<'_, '_>,
        buf: &mut [u8; PATH_BUF],
        len: usize,
        file: SourceFile,
        meta: &Metadata,
        content_type: &'static str,
        cond: &Conditions<'_, '_>,
        accepted: &Accepted,
    ) {
        let (order, n) = if self.precompressed { accepted.ranked() } else { (Coding::ALL, 0) };
        let sidecar = order[..n].iter().find_map(|&c| self.sidecar(buf, len, c, meta).map(|s| (s, c)));
        match sidecar {
            Some(((file, meta), coding)) => r.file(SourceFile::Owned(file), &meta, content_type, cond, Some(coding)),
            None => r.file(file, meta, content_type, cond, None),
        }
    }

    /// Writes `/` and index name `index` after the directory path `buf[..len]` (as
    /// [`locate`](Self::locate) found it) and returns the name's length: a cached
    /// index's sidecars are beside it.
    fn index_name(&self, buf: &mut [u8; PATH_BUF], len: usize, index: Option<usize>) -> usize {
        let Some(name) = index.and_then(|i| self.index.get(i)) else { return len };
        let end = len + 1 + name.len();
        buf[len] = b'/';
        buf[len + 1..end].copy_from_slice(name);
        buf[end] = 0;
        end
    }

    /// FILE's sidecar for `coding` (`buf[..len]` is FILE), if it is a regular file
    /// beneath the root and not older than FILE.
    fn sidecar(
        &self,
        buf: &mut [u8; PATH_BUF],
        len: usize,
        coding: Coding,
        plain: &Metadata,
    ) -> Option<(File, Metadata)> {
        let suffix = coding.suffix();
        let end = len + suffix.len();
        buf[len..end].copy_from_slice(suffix);
        buf[end] = 0;
        let opened = self.open(cstr(buf, end));
        buf[len] = 0;
        let (file, meta) = opened.ok()?;
        let fresh = (meta.mtime(), meta.mtime_nsec()) >= (plain.mtime(), plain.mtime_nsec());
        (meta.is_file() && fresh).then_some((file, meta))
    }

    /// Opens what a decoded path names: the file, or for a directory asked for with
    /// its trailing slash the first of its index files.
    fn locate(&self, buf: &mut [u8; PATH_BUF], rel: RelPath, target: &str) -> Result<(File, Metadata, usize), Located> {
        let len = rel.len;
        let (file, meta) = match self.open(cstr(buf, len)) {
            Ok(opened) => opened,
            Err(e) => return Err(missing_or(e, target)),
        };
        if meta.is_file() {
            return Ok((file, meta, len));
        }
        if !meta.is_dir() {
            return Err(Located::Status(FORBIDDEN));
        }
        if !rel.trailing_slash {
            return Err(Located::Redirect);
        }
        buf[len] = b'/';
        for name in &self.index {
            let end = len + 1 + name.len();
            buf[len + 1..end].copy_from_slice(name);
            buf[end] = 0;
            match self.open(cstr(buf, end)) {
                Ok((file, meta)) if meta.is_file() => return Ok((file, meta, end)),
                // A directory or a FIFO by that name is not an index: try the next.
                Ok(_) => {}
                Err(e) => match missing_or(e, target) {
                    Located::Missing => {}
                    other => return Err(other),
                },
            }
        }
        if self.list {
            return Err(Located::List(OwnedFd::from(file)));
        }
        Err(Located::Missing)
    }

    /// Opens `rel` (checked at build time) from `buf`, as a request path would be.
    fn open_rel(&self, buf: &mut [u8; PATH_BUF], rel: &[u8]) -> Result<(File, Metadata, usize), Errno> {
        buf[..rel.len()].copy_from_slice(rel);
        buf[rel.len()] = 0;
        let (file, meta) = self.open(cstr(buf, rel.len()))?;
        Ok((file, meta, rel.len()))
    }
}

/// Why [`StaticFiles::locate`] found nothing to serve.
enum Located {
    /// Nothing by that name (or no index in the directory): a 404, or the fallback.
    Missing,
    /// A directory asked for without its trailing slash.
    Redirect,
    /// Refused, or an error: no fallback.
    Status(Status),
    /// A directory without an index, to list.
    List(OwnedFd),
}

fn missing_or(e: Errno, target: &str) -> Located {
    match e {
        Errno::NOENT | Errno::NOTDIR => Located::Missing,
        e => Located::Status(open_status(e, target)),
    }
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

/// `buf[..len]` with its NUL, as a C string.
fn cstr(buf: &[u8], len: usize) -> &CStr {
    CStr::from_bytes_until_nul(&buf[..=len]).unwrap_or(c".")
}

/// Without openat2: open each component in turn, refusing every symlink.
fn open_walk(root: &OwnedFd, rel: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    let mut dir: Option<OwnedFd> = None;
    let mut parts = rel.split(|&b| b == b'/').peekable();
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        let f = if last { flags | OFlags::NOFOLLOW } else { OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW };
        let base = dir.as_ref().unwrap_or(root);
        dir = Some(rustix::fs::openat(base, OsStr::from_bytes(part), f | OFlags::CLOEXEC, Mode::empty())?);
    }
    dir.ok_or(Errno::NOENT)
}

fn open_status(e: Errno, target: &str) -> Status {
    match e {
        Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG => NOT_FOUND,
        // EXDEV: the path (through a symlink) would leave the root.
        Errno::XDEV | Errno::LOOP | Errno::ACCESS | Errno::PERM => {
            tracing::debug!(target, "refused open: {e}");
            FORBIDDEN
        }
        Errno::MFILE | Errno::NFILE | Errno::NOMEM => {
            tracing::warn!(target, "open: {e}");
            UNAVAILABLE
        }
        _ => {
            tracing::warn!(target, "open: {e}");
            SERVER_ERROR
        }
    }
}

/// The content type of a file named `name` (by its extension).
fn content_type(name: &[u8]) -> &'static str {
    mime_guess::from_path(Path::new(OsStr::from_bytes(name))).first_raw().unwrap_or("application/octet-stream")
}

/// `; charset=utf-8` for the textual types (`text/*`, JavaScript, JSON and `+json`,
/// SVG), whose bytes a browser would otherwise decode by guessing; nothing for the
/// rest. XML other than SVG is left alone: its own declaration names its encoding.
fn charset(content_type: &str) -> &'static str {
    let (top, sub) = content_type.split_once('/').unwrap_or((content_type, ""));
    let textual = top.eq_ignore_ascii_case("text")
        || (top.eq_ignore_ascii_case("application")
            && (["javascript", "ecmascript", "x-javascript", "json"].iter().any(|t| sub.eq_ignore_ascii_case(t))
                || sub.as_bytes().rsplit(|&b| b == b'+').next().is_some_and(|t| t.eq_ignore_ascii_case(b"json"))
                    && sub.contains('+')))
        || content_type.eq_ignore_ascii_case("image/svg+xml");
    if textual && !content_type.contains(';') { "; charset=utf-8" } else { "" }
}

/// A time as an HTTP date, if it is one (1970 to 9999; httpdate panics outside).
pub(crate) fn http_date(t: SystemTime) -> Option<HttpDate> {
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (secs < 253_402_300_800).then(|| HttpDate::from(t))
}

fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// A `multipart/byteranges` boundary: `berth-` and 16 hex digits mixed from the
/// file's tag and the clock, so a file's bytes are unlikely to hold it.
struct Boundary([u8; 22]);

impl Boundary {
    fn new(etag: &ETag) -> Boundary {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        // FNV-1a over the tag, then the clock.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in etag.as_bytes().iter().chain(&nanos.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut out = *b"berth-0000000000000000";
        for (i, d) in out[6..].iter_mut().enumerate() {
            *d = b"0123456789abcdef"[((h >> (60 - 4 * i)) & 0xf) as usize];
        }
        Boundary(out)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("berth")
    }
}

/// Counts the bytes written to it: the length of the part headers, before they are
/// written, for `Content-Length`.
struct Count(usize);

impl io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One part's delimiter and headers (RFC 9110 §14.6).
fn part_header(w: &mut impl io::Write, boundary: &str, e: &Entity<'_>, range: ByteRange) -> io::Result<()> {
    let (content_type, charset) = (e.content_type, e.charset);
    write!(
        w,
        "\r\n--{boundary}\r\nContent-Type: {content_type}{charset}\r\nContent-Range: {}\r\n\r\n",
        range.content_range(e.size)
    )
}

/// Writes one response into a [`Reply`]. Write errors mark the reply failed; the
/// server then closes the connection, so they are not checked one by one.
struct Response<'r, 'a> {
    reply: &'r mut Reply<'a>,
    keep_alive: bool,
    http10: bool,
    head_only: bool,
    /// For the added headers; `None` when the request did not even parse.
    files: Option<&'r StaticFiles>,
    /// The status and the body bytes, for the access log.
    outcome: &'r Cell<(u16, u64)>,
}

impl Response<'_, '_> {
    /// Status line and the headers every response has.
    fn start(&mut self, status: Status) -> io::Result<()> {
        let Status(code, reason) = status;
        self.outcome.set((code, 0));
        write!(self.reply, "HTTP/1.1 {code} {reason}\r\nServer: berth\r\n")?;
        if let Some(now) = http_date(SystemTime::now()) {
            write!(self.reply, "Date: {now}\r\n")?;
        }
        if !self.keep_alive {
            self.reply.write_bytes(b"Connection: close\r\n").map_err(io::Error::other)?;
        } else if self.http10 {
            self.reply.write_bytes(b"Connection: keep-alive\r\n").map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// `ETag`, `Last-Modified`, `Cache-Control` and the added headers: on a 200 and a
    /// 206, and on a 304 in their place (RFC 9110 §15.4.5).
    fn validators(&mut self, etag: &ETag, last_modified: Option<HttpDate>) -> io::Result<()> {
        write!(self.reply, "ETag: {}\r\n", etag.as_str())?;
        if let Some(lm) = last_modified {
            write!(self.reply, "Last-Modified: {lm}\r\n")?;
        }
        if let Some(files) = self.files {
            if files.precompressed {
                self.reply.write_bytes(b"Vary: Accept-Encoding\r\n").map_err(io::Error::other)?;
            }
            self.reply.write_bytes(&files.cache_control).map_err(io::Error::other)?;
            self.reply.write_bytes(&files.extra).map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// 204 with `Allow` (a 204 has no body and no `Content-Length`).
    fn options(mut self) {
        let _ = (|| {
            self.start(NO_CONTENT)?;
            self.reply.write_bytes(ALLOW.as_bytes()).map_err(io::Error::other)?;
            if let Some(files) = self.files {
                self.reply.write_bytes(&files.extra).map_err(io::Error::other)?;
            }
            write!(self.reply, "\r\n")
        })();
        self.finish();
    }

    /// The body has `n` bytes (none are sent for HEAD).
    fn body_len(&self, n: u64) {
        if !self.head_only {
            self.outcome.set((self.outcome.get().0, n));
        }
    }

    fn finish(&mut self) {
        if !self.keep_alive {
            self.reply.close();
        }
    }

    fn error(mut self, status: Status, extra: &str) {
        if status == NOT_FOUND
            && let Some(files) = self.files
            && let Some(page) = files.not_found.as_deref()
        {
            let mut buf = [0u8; PATH_BUF];
            match files.open_rel(&mut buf, page) {
                Ok((file, meta, len)) if meta.is_file() => {
                    return self.page(status, file, meta.len(), Path::new(OsStr::from_bytes(&buf[..len])));
                }
                _ => tracing::warn!("the not-found page cannot be opened; sending the plain 404"),
            }
        }
        let Status(code, reason) = status;
        let _ = (|| {
            self.start(status)?;
            // "404 Not Found\n"
            let len = 3 + 1 + reason.len() + 1;
            write!(self.reply, "{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len}\r\n\r\n")?;
            self.body_len(len as u64);
            if !self.head_only {
                writeln!(self.reply, "{code} {reason}")?;
            }
            Ok::<(), io::Error>(())
        })();
        self.finish();
    }

    /// A whole file as the body of an error status (the custom 404 page): no
    /// validators, no ranges.
    fn page(mut self, status: Status, file: File, size: u64, name: &Path) {
        let content_type = mime_guess::from_path(name).first_raw().unwrap_or("application/octet-stream");
        let _ = (|| {
            self.start(status)?;
            let charset = charset(content_type);
            write!(self.reply, "Content-Type: {content_type}{charset}\r\nContent-Length: {size}\r\n\r\n")
        })();
        self.body_len(size);
        if !self.head_only && size > 0 {
            self.reply.send_file(FileSend::new(file, ByteRange::whole(size)));
        }
        self.finish();
    }

    /// A directory listing: the head, the page's start, and the rest streamed by
    /// [`Service::more`]. HTTP/1.1 gets it chunked, HTTP/1.0 ended by the close.
    fn listing(mut self, dir: OwnedFd, path: &[u8], root: bool, slot: &mut Option<Streaming>) {
        let place = if self.head_only { None } else { self.files.and_then(StaticFiles::listing_place) };
        if place.is_none() && !self.head_only {
            return self.error(UNAVAILABLE, "Retry-After: 1\r\n");
        }
        let chunked = !self.http10;
        self.keep_alive &= chunked;
        let hidden = self.files.is_some_and(|f| f.hidden);
        let head = (|| {
            self.start(OK)?;
            self.reply
                .write_bytes(
                    b"Content-Type: text/html; charset=utf-8\r\nCache-Control: no-cache\r\n\
                      Content-Security-Policy: default-src 'none'\r\n",
                )
                .map_err(io::Error::other)?;
            if let Some(files) = self.files {
                self.reply.write_bytes(&files.extra).map_err(io::Error::other)?;
            }
            if chunked {
                self.reply.write_bytes(b"Transfer-Encoding: chunked\r\n").map_err(io::Error::other)?;
            }
            self.reply.write_bytes(b"\r\n").map_err(io::Error::other)
        })();
        if let (Ok(()), Some(place)) = (head, place) {
            let listing = Listing::new(dir, chunked, hidden);
            let head_len = self.reply.written().len();
            if listing.start(self.reply, path, root).is_ok() {
                // The body's first bytes; `more` counts the rest as it writes them.
                self.body_len((self.reply.written().len() - head_len) as u64);
                *slot = Some(Streaming { listing, _place: place });
                self.reply.stream();
            }
        }
        self.finish();
    }

    fn redirect(mut self, path: &str, query: &str) {
        let _ = (|| {
            self.start(MOVED)?;
            // `path` passed httparse's token rules: no CR, LF or spaces.
            write!(self.reply, "Location: {path}/{query}\r\nContent-Length: 0\r\n\r\n")
        })();
        self.finish();
    }

    /// FILE (or its sidecar for `coding`; `name` is FILE's, for its type).
    fn file(
        mut self,
        file: SourceFile,
        meta: &Metadata,
        content_type: &'static str,
        cond: &Conditions<'_, '_>,
        coding: Option<Coding>,
    ) {
        let size = meta.len();
        let modified = meta.modified().ok();
        let mtime = modified.and_then(unix_secs);
        let last_modified = modified.and_then(http_date);
        let etag = ETag::of(meta);
        match cond.evaluate(&etag, mtime) {
            Precondition::Failed => return self.error(PRECONDITION_FAILED, ""),
            Precondition::NotModified => {
                let _ = (|| {
                    self.start(NOT_MODIFIED)?;
                    self.validators(&etag, last_modified)?;
                    write!(self.reply, "\r\n")
                })();
                return self.finish();
            }
            Precondition::Proceed => {}
        }
        let range_applies = cond.if_range.is_none_or(|v| if_range_matches(v, &etag, mtime));
        let mut list = [ByteRange::whole(0); MAX_RANGES];
        let asked = cond.range.filter(|_| range_applies).map_or(Ranges::Ignore, |v| ranges::parse(v, size, &mut list));
        let entity = Entity { size, content_type, charset: charset(content_type), coding, etag: &etag, last_modified };
        let (status, body) = match asked {
            Ranges::Single(r) => (PARTIAL, r),
            Ranges::Multi(n) => {
                return match self.multipart(&list[..n], &entity) {
                    Ok(_) if self.head_only => self.finish(),
                    Ok(b) => self.multipart_body(file, &list[..n], &entity, &b),
                    // Too many bytes of part headers for one segment: the whole file.
                    Err(()) => self.body(OK, file, ByteRange::whole(size), &entity),
                };
            }
            Ranges::Unsatisfiable => {
                let _ = (|| {
                    self.start(UNSATISFIABLE)?;
                    let len = "416 Range Not Satisfiable\n".len();
                    write!(
                        self.reply,
                        "Content-Range: bytes */{size}\r\nContent-Type: text/plain; charset=utf-8\r\n\
                         Content-Length: {len}\r\n\r\n"
                    )?;
                    self.body_len(len as u64);
                    if !self.head_only {
                        writeln!(self.reply, "416 Range Not Satisfiable")?;
                    }
                    Ok::<(), io::Error>(())
                })();
                return self.finish();
            }
            Ranges::Ignore => (OK, ByteRange::whole(size)),
        };
        self.body(status, file, body, &entity);
    }

    /// `Content-Encoding`, the validators and `Accept-Ranges`, ending the head.
    fn entity_headers(&mut self, e: &Entity<'_>) -> io::Result<()> {
        if let Some(coding) = e.coding {
            write!(self.reply, "Content-Encoding: {}\r\n", coding.token())?;
        }
        self.validators(e.etag, e.last_modified)?;
        write!(self.reply, "Accept-Ranges: bytes\r\n\r\n")
    }

    /// The head of a `multipart/byteranges` 206 for `parts`, with its boundary; `Err`
    /// with nothing written if the part headers would not fit in the reply's segment
    /// after it (the caller then sends the whole file).
    fn multipart(&mut self, parts: &[ByteRange], e: &Entity<'_>) -> Result<Boundary, ()> {
        let boundary = Boundary::new(e.etag);
        let b = boundary.as_str();
        let mut framing = Count(0);
        for r in parts {
            let _ = part_header(&mut framing, b, e, *r);
        }
        let _ = write!(framing, "\r\n--{b}--\r\n");
        let len = framing.0 as u64 + parts.iter().map(|r| r.len()).sum::<u64>();
        let _ = (|| {
            self.start(PARTIAL)?;
            write!(self.reply, "Content-Type: multipart/byteranges; boundary={b}\r\nContent-Length: {len}\r\n")?;
            self.body_len(len);
            self.entity_headers(e)
        })();
        if !self.head_only && self.reply.remaining() < framing.0 {
            self.reply.truncate(0);
            return Err(());
        }
        Ok(boundary)
    }

    /// The parts after [`multipart`](Self::multipart)'s head: each part's header as
    /// bytes, its range by sendfile, then the closing boundary.
    fn multipart_body(mut self, file: SourceFile, parts: &[ByteRange], e: &Entity<'_>, boundary: &Boundary) {
        let b = boundary.as_str();
        self.reply.file_parts(file);
        let _ = (|| {
            for r in parts {
                part_header(&mut *self.reply, b, e, *r)?;
                self.reply.file_part(*r).map_err(io::Error::other)?;
            }
            write!(self.reply, "\r\n--{b}--\r\n")
        })();
        self.finish();
    }

    /// A 200 or a single-range 206.
    fn body(mut self, status: Status, file: SourceFile, body: ByteRange, e: &Entity<'_>) {
        let _ = (|| {
            self.start(status)?;
            let (content_type, charset) = (e.content_type, e.charset);
            write!(self.reply, "Content-Type: {content_type}{charset}\r\nContent-Length: {}\r\n", body.len())?;
            if status == PARTIAL {
                write!(self.reply, "Content-Range: {}\r\n", body.content_range(e.size))?;
            }
            self.entity_headers(e)
        })();
        self.body_len(body.len());
        if !self.head_only && !body.is_empty() {
            self.reply.send_file(FileSend::new(file, body));
        }
        self.finish();
    }
}

/// What is served (FILE or its sidecar) and how it is described.
struct Entity<'e> {
    size: u64,
    content_type: &'e str,
    charset: &'static str,
    coding: Option<Coding>,
    etag: &'e ETag,
    last_modified: Option<HttpDate>,
}

impl Service for StaticFiles {
    type Conn = FilesConn;

    /// Each worker's open-file cache, when [on](StaticFiles::open_file_cache):
    /// all workers' entries together take at most a quarter of the open-file limit
    /// (`RLIMIT_NOFILE`), leaving the rest to connections.
    fn worker_state(&self, conns: &mut Conns<'_, Self>) -> Option<Box<dyn std::any::Any>> {
        let (entries, valid) = self.cache?;
        let workers = conns.handle().workers().max(1) as u64;
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
        let budget = usize::try_from(limit / 4 / workers).unwrap_or(usize::MAX);
        if budget < entries && conns.worker() == 0 {
            tracing::info!(
                "open-file cache: {budget} entries per worker, not {entries}: a quarter of the open-file limit                  ({limit}) across {workers} workers"
            );
        }
        Some(Box::new(FileCache::new(entries.min(budget), valid)))
    }

    fn connect(&self, peer: Option<SocketAddr>) -> FilesConn {
        FilesConn { peer: peer.map(|p| p.ip()), pending: None, listing: None }
    }

    fn data(&self, conn: &mut FilesConn, input: &[u8], reply: &mut Reply<'_>) -> usize {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers[..self.max_headers]);
        let outcome = Cell::new((0, 0));
        let status = match req.parse(input) {
            Ok(httparse::Status::Complete(n)) => {
                self.respond(&req, reply, &outcome, &mut conn.listing);
                self.hold(conn, Some(&req), outcome.get());
                return n;
            }
            Ok(httparse::Status::Partial) => {
                let line_done = input.contains(&b'\n');
                // Method and version take a few bytes beside the target.
                if !line_done && (reply.input_full() || input.len() > self.max_uri.saturating_add(32)) {
                    URI_TOO_LONG
                } else if reply.input_full() {
                    HEADERS_TOO_LARGE
                } else {
                    return 0;
                }
            }
            Err(httparse::Error::TooManyHeaders) => HEADERS_TOO_LARGE,
            Err(_) => BAD_REQUEST,
        };
        // The rest of this connection's input cannot be trusted to frame requests.
        let r = Response { reply, keep_alive: false, http10: false, head_only: false, files: None, outcome: &outcome };
        r.error(status, "");
        self.hold(conn, None, outcome.get());
        input.len()
    }

    fn more(&self, conn: &mut FilesConn, reply: &mut Reply<'_>) {
        let Some(streaming) = conn.listing.as_mut() else { return };
        let step = streaming.listing.segment(reply);
        if let (Ok(_), Some(record)) = (&step, conn.pending.as_mut()) {
            record.add_bytes(reply.written().len() as u64);
        }
        match step {
            // A yield writes nothing and asks for more: called again after the
            // worker's other completions.
            Ok(Step::More | Step::Yield) => reply.stream(),
            Ok(Step::Done) => conn.listing = None,
            Err(e) => {
                // Nothing half-written goes out: the body ends short, with the close.
                tracing::debug!("listing cut short: {e}");
                conn.listing = None;
                reply.truncate(0);
                reply.close();
            }
        }
    }

    fn reply_sent(&self, conn: &mut FilesConn) {
        if let (Some(log), Some(record)) = (&self.log, conn.pending.take()) {
            log.push(record);
        }
    }

    fn disconnect(&self, mut conn: FilesConn) {
        // A reply cut short (the peer left, a timeout): logged as far as it got.
        self.reply_sent(&mut conn);
    }
}

impl StaticFiles {
    /// With an access log: keeps the record of this request until its reply is sent.
    fn hold(&self, conn: &mut FilesConn, req: Option<&httparse::Request<'_, '_>>, (status, bytes): (u16, u64)) {
        let Some(log) = &self.log else { return };
        if let Some(earlier) = conn.pending.take() {
            log.push(earlier);
        }
        let mut record = Record::new(conn.peer);
        if let Some(req) = req {
            record.request(req);
        }
        record.outcome(status, bytes);
        conn.pending = Some(record);
    }
}
