//! The atomics the ring protocol uses: `std`'s normally, loom's under `--cfg loom`.
//!
//! Only the OS-free core (the [`crate::ring`] protocol and its heap-backed test region)
//! is compiled under loom; the mapped-file layer casts shared memory to `std` atomics
//! and is left out of loom builds.

/// Only the test region fences through the shim; the mapped layer picks its own barriers.
#[cfg(all(test, not(loom)))]
pub(crate) use std::sync::atomic::fence;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// An `UnsafeCell` with loom's closure-based API, so the test region's payload bytes
/// are race-checked under loom and plain memory otherwise.
#[cfg(all(any(test, loom), not(loom)))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(all(any(test, loom), not(loom)))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(v: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(v))
    }
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
