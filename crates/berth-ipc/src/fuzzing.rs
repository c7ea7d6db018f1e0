//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the parts of
//! the crate that read untrusted bytes, callable without a file or a mapping. Not a
//! stable API; hidden from the docs.

use crate::error::OpenError;
use crate::layout::{Layout, off};

/// Bytes of the header that [`parse_header`] reads (the immutable fields and `state`).
pub const HEADER_SNAPSHOT: usize = off::SNAPSHOT;

/// The geometry a header describes, once [`parse_header`] accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderGeometry {
    /// Bytes of the ring's data area.
    pub capacity: u64,
    /// The largest message.
    pub max_message: u64,
    /// Where the data area starts in the file.
    pub data_offset: u64,
    /// `data_offset + capacity`: the bytes the channel maps.
    pub total_len: u64,
}

/// Validates `header` (a private copy of a channel file's first bytes) for a file of
/// `file_len` bytes, as opening a channel does before it maps anything beyond the
/// header page.
pub fn parse_header(header: &[u8], file_len: u64) -> Result<HeaderGeometry, OpenError> {
    let l = Layout::parse(header, file_len)?;
    Ok(HeaderGeometry {
        capacity: l.capacity,
        max_message: l.max_message,
        data_offset: l.data_offset,
        total_len: l.total_len,
    })
}
