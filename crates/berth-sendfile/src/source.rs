//! [`SourceFile`]: the file a [`FileSend`](crate::FileSend) reads, owned or shared.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

/// The file behind a send: one of its own, or one shared with others — an open-file
/// cache that keeps a descriptor per path and lends it to every reply of that file,
/// so a request costs no `open`, `dup` or `close`.
///
/// Both are read with `pread`/`sendfile` at explicit offsets, never through the
/// descriptor's file position, so sends of one shared file may run side by side.
///
/// ```
/// use std::sync::Arc;
/// use berth_sendfile::{ByteRange, FileSend, SourceFile};
///
/// let cached = Arc::new(std::fs::File::open("Cargo.toml")?);
/// // Two replies of the same file, one descriptor, no dup.
/// let a = FileSend::new(SourceFile::from(cached.clone()), ByteRange::new(0, 8).unwrap());
/// let b = FileSend::new(SourceFile::from(cached.clone()), ByteRange::new(8, 8).unwrap());
/// assert_eq!(Arc::strong_count(&cached), 3);
/// # drop((a, b));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub enum SourceFile {
    /// A file this send owns; it closes when the send is dropped.
    Owned(File),
    /// A file shared with a cache or other sends; it closes with its last holder.
    Shared(Arc<File>),
}

impl SourceFile {
    /// Another handle to the same open file: a clone of the `Arc` for a shared file
    /// (no syscall), a `dup` for an owned one.
    pub fn try_clone(&self) -> io::Result<SourceFile> {
        match self {
            SourceFile::Owned(f) => f.try_clone().map(SourceFile::Owned),
            SourceFile::Shared(f) => Ok(SourceFile::Shared(f.clone())),
        }
    }

    /// The file.
    pub fn file(&self) -> &File {
        match self {
            SourceFile::Owned(f) => f,
            SourceFile::Shared(f) => f,
        }
    }
}

impl From<File> for SourceFile {
    fn from(file: File) -> SourceFile {
        SourceFile::Owned(file)
    }
}

impl From<Arc<File>> for SourceFile {
    fn from(file: Arc<File>) -> SourceFile {
        SourceFile::Shared(file)
    }
}

impl AsFd for SourceFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file().as_fd()
    }
}

impl AsRawFd for SourceFile {
    fn as_raw_fd(&self) -> RawFd {
        self.file().as_raw_fd()
    }
}
