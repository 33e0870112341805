//! The synchronisation primitives of the line store, swapped for loom's under
//! `cfg(loom)` (the way crossbeam does it), so that loom model-checks the real
//! store code (`tests/loom_store.rs`) rather than a mirror of its protocol.
//!
//! Only the store's own state goes through here: its shard locks, slot
//! counters, index hints and reference counts. Under `cfg(loom)` the
//! reference counts live in an ordinary boxed slice of loom atomics instead of
//! the mapping (loom cannot instrument atomics placed in mapped memory), which
//! is enough for anonymous memories, the only kind a loom test makes.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};

#[cfg(not(loom))]
pub(crate) use parking_lot::Mutex;

/// loom's mutex with parking_lot's interface (no poisoning).
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
impl<T> Mutex<T> {
    pub(crate) fn new(v: T) -> Self {
        Mutex(loom::sync::Mutex::new(v))
    }

    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The reference-count words of every slot.
#[cfg(not(loom))]
pub(crate) type CountArray = crate::region::AtomicU32Array;

/// The reference-count words of every slot (loom: a plain boxed slice).
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct CountArray(Box<[AtomicU32]>);

#[cfg(loom)]
impl CountArray {
    pub(crate) fn as_slice(&self) -> &[AtomicU32] {
        &self.0
    }
}

/// The count words of `slots` slots at `off` in `backing`.
#[cfg(not(loom))]
pub(crate) fn count_array(
    backing: &std::sync::Arc<crate::region::Backing>,
    off: usize,
    slots: usize,
) -> CountArray {
    backing.u32s(off, slots)
}

/// The count words of `slots` slots (loom: all zero, as in a fresh mapping).
#[cfg(loom)]
pub(crate) fn count_array(
    _backing: &std::sync::Arc<crate::region::Backing>,
    _off: usize,
    slots: usize,
) -> CountArray {
    CountArray((0..slots).map(|_| AtomicU32::new(0)).collect())
}

/// `n` zeroed atomics from zeroed allocator memory: pages never written cost
/// nothing (a free bitmap sized by capacity costs what is used of it).
#[cfg(not(loom))]
pub(crate) fn zeroed_u64s(n: usize) -> Box<[AtomicU64]> {
    crate::region::zeroed_atomic_u64s(n)
}

/// `n` zeroed atomics (loom: one by one).
#[cfg(loom)]
pub(crate) fn zeroed_u64s(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}
