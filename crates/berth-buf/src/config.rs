//! How a [`BufferManager`](crate::BufferManager) is shaped, and why a shape is refused.

use std::io;

/// What [`BufferManager::lease`](crate::BufferManager::lease) does when every segment
/// of the arena is leased.
///
/// ```
/// use berth_buf::{BufferConfig, BufferManager, Exhaustion};
///
/// let config = BufferConfig::new().segment_count(1).exhaustion(Exhaustion::Heap);
/// let manager = BufferManager::new(config)?;
/// let _only = manager.lease()?;
/// assert!(manager.lease()?.is_heap()); // exhausted: a heap buffer instead of an error
/// assert_eq!(Exhaustion::default(), Exhaustion::Fail);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exhaustion {
    /// Return [`Exhausted`](crate::Exhausted): the caller decides (refuse a
    /// connection, apply back-pressure, retry later). The default.
    #[default]
    Fail,
    /// Allocate a segment-sized buffer on the heap instead. Counted in
    /// [`BufferStats::heap_fallbacks`](crate::BufferStats::heap_fallbacks).
    Heap,
}

/// The shape of a buffer arena. Build one with [`BufferConfig::new`] and the setters,
/// then [`BufferManager::new`](crate::BufferManager::new).
///
/// ```
/// use berth_buf::{BufferConfig, BufferManager, Exhaustion};
///
/// let config = BufferConfig::new().segment_size(8192).segment_count(256).exhaustion(Exhaustion::Heap);
/// let manager = BufferManager::new(config)?;
/// assert_eq!(manager.segment_size(), 8192);
/// # Ok::<(), berth_buf::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    pub(crate) segment_size: usize,
    pub(crate) segment_count: usize,
    pub(crate) prefault: bool,
    pub(crate) exhaustion: Exhaustion,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig::new()
    }
}

impl BufferConfig {
    /// The largest number of segments one arena may have.
    ///
    /// ```
    /// use berth_buf::{BufferConfig, BufferManager, ConfigError};
    ///
    /// let config = BufferConfig::new().segment_count(BufferConfig::MAX_SEGMENTS + 1);
    /// assert!(matches!(BufferManager::new(config), Err(ConfigError::TooManySegments { .. })));
    /// ```
    pub const MAX_SEGMENTS: usize = (u32::MAX - 1) as usize;

    /// 1024 segments of 4096 bytes, not pre-faulted, failing when exhausted.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager};
    /// let manager = BufferManager::new(BufferConfig::new())?;
    /// assert_eq!((manager.segment_count(), manager.segment_size()), (1024, 4096));
    /// assert_eq!(BufferConfig::new(), BufferConfig::default());
    /// # Ok::<(), berth_buf::ConfigError>(())
    /// ```
    pub const fn new() -> BufferConfig {
        BufferConfig { segment_size: 4096, segment_count: 1024, prefault: false, exhaustion: Exhaustion::Fail }
    }

    /// Bytes per segment (default 4096). A multiple of the page size keeps every
    /// segment page-aligned.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager};
    /// let manager = BufferManager::new(BufferConfig::new().segment_size(512).segment_count(4))?;
    /// assert_eq!(manager.lease()?.capacity(), 512);
    /// assert!(BufferManager::new(BufferConfig::new().segment_size(0)).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const fn segment_size(mut self, bytes: usize) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Number of segments (default 1024).
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager};
    /// let manager = BufferManager::new(BufferConfig::new().segment_count(3))?;
    /// assert_eq!(manager.stats().total, 3);
    /// assert_eq!(manager.arena().1, 3 * 4096);
    /// # Ok::<(), berth_buf::ConfigError>(())
    /// ```
    pub const fn segment_count(mut self, count: usize) -> Self {
        self.segment_count = count;
        self
    }

    /// Touch every page at construction (`MAP_POPULATE`) so the first use of a
    /// segment never page-faults. Costs the whole arena in resident memory up front.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager};
    /// let manager = BufferManager::new(BufferConfig::new().segment_count(16).prefault(true))?;
    /// let lease = manager.lease()?;
    /// assert!(lease.iter().all(|&b| b == 0)); // populated pages, still zeroed
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const fn prefault(mut self, yes: bool) -> Self {
        self.prefault = yes;
        self
    }

    /// What to do when every segment is leased.
    ///
    /// ```
    /// # use berth_buf::{BufferConfig, BufferManager, Exhaustion};
    /// let manager = BufferManager::new(BufferConfig::new().segment_count(1).exhaustion(Exhaustion::Fail))?;
    /// let _only = manager.lease()?;
    /// assert!(manager.lease().is_err());
    /// assert_eq!(manager.stats().exhausted, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const fn exhaustion(mut self, policy: Exhaustion) -> Self {
        self.exhaustion = policy;
        self
    }

    /// Checks the shape and returns the arena's length in bytes.
    pub(crate) fn arena_len(&self) -> Result<usize, ConfigError> {
        if self.segment_size == 0 {
            return Err(ConfigError::ZeroSegmentSize);
        }
        if self.segment_size > u32::MAX as usize {
            return Err(ConfigError::SegmentTooLarge { segment_size: self.segment_size, max: u32::MAX as usize });
        }
        if self.segment_count == 0 {
            return Err(ConfigError::ZeroSegmentCount);
        }
        if self.segment_count > Self::MAX_SEGMENTS {
            return Err(ConfigError::TooManySegments { count: self.segment_count, max: Self::MAX_SEGMENTS });
        }
        self.segment_size
            .checked_mul(self.segment_count)
            .filter(|&len| len <= isize::MAX as usize)
            .ok_or(ConfigError::TooLarge { segment_size: self.segment_size, segment_count: self.segment_count })
    }
}

/// A [`BufferConfig`] that cannot be built.
///
/// ```
/// use berth_buf::{BufferConfig, BufferManager, ConfigError};
///
/// let err = BufferManager::new(BufferConfig::new().segment_count(0)).unwrap_err();
/// assert!(matches!(err, ConfigError::ZeroSegmentCount));
/// let err = BufferManager::new(BufferConfig::new().segment_size(1 << 40)).unwrap_err();
/// assert!(matches!(err, ConfigError::SegmentTooLarge { max, .. } if max == u32::MAX as usize));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Segments must hold at least one byte.
    #[error("segment size is 0")]
    ZeroSegmentSize,
    /// Segments are at most `u32::MAX` bytes (a lease stores its length in 32 bits).
    #[error("segment size {segment_size} exceeds the maximum {max}")]
    SegmentTooLarge {
        /// What was asked for.
        segment_size: usize,
        /// The limit.
        max: usize,
    },
    /// An arena needs at least one segment.
    #[error("segment count is 0")]
    ZeroSegmentCount,
    /// Segment indices are 32-bit.
    #[error("{count} segments requested, at most {max} are supported")]
    TooManySegments {
        /// What was asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `segment_size * segment_count` overflows the address space.
    #[error("{segment_count} segments of {segment_size} bytes overflow the address space")]
    TooLarge {
        /// What was asked for.
        segment_size: usize,
        /// What was asked for.
        segment_count: usize,
    },
    /// The kernel refused the mapping (usually not enough memory or address space).
    #[error("could not map the arena: {0}")]
    Map(#[from] io::Error),
}
