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
pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize};

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

/// The reference-count bytes of every slot.
#[cfg(not(loom))]
pub(crate) type CountArray = crate::region::AtomicU8Array;

/// The reference-count bytes of every slot (loom: a plain boxed slice).
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct CountArray(Box<[AtomicU8]>);

#[cfg(loom)]
impl CountArray {
    pub(crate) fn as_slice(&self) -> &[AtomicU8] {
        &self.0
    }
}

/// The count bytes of `slots` slots at `off` in `backing`.
#[cfg(not(loom))]
pub(crate) fn count_array(
    backing: &std::sync::Arc<crate::region::Backing>,
    off: usize,
    slots: usize,
) -> CountArray {
    backing.u8s(off, slots)
}

/// The count bytes of `slots` slots (loom: all zero, as in a fresh mapping).
#[cfg(loom)]
pub(crate) fn count_array(
    _backing: &std::sync::Arc<crate::region::Backing>,
    _off: usize,
    slots: usize,
) -> CountArray {
    CountArray((0..slots).map(|_| AtomicU8::new(0)).collect())
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

/// Deferred reclamation for the lock-free hit path (see the store's module
/// documentation), with `crossbeam-epoch`.
///
/// A thread pins ([`epoch::Epochs::pin`]) before it reads the index or a line
/// without the shard lock; whatever such a reader might still reach (a
/// replaced bucket array, a freed line slot) is handed back through
/// [`epoch::Guard::defer`], which runs it only after every thread pinned at
/// the time has unpinned.
///
/// Each store has its own collector, so that one memory's long pins (a
/// segment build stays pinned from its first leaf to its root) never hold
/// back another memory's reclamation. A thread keeps one registration per
/// collector it used, in a thread-local list that drops the registrations of
/// dead stores whenever it registers a new one.
#[cfg(not(loom))]
pub(crate) mod epoch {
    use std::cell::RefCell;
    use std::sync::{Arc, Weak};

    pub(crate) use crossbeam_epoch::Guard;
    use crossbeam_epoch::{Collector, LocalHandle};

    /// The lock-free hit path is compiled in.
    pub(crate) const LOCK_FREE_HITS: bool = true;

    /// One store's epoch collector.
    #[derive(Debug, Clone)]
    pub(crate) struct Epochs {
        collector: Collector,
        /// Identifies the store; its death retires the thread registrations.
        alive: Arc<()>,
    }

    thread_local! {
        static HANDLES: RefCell<Vec<(Weak<()>, LocalHandle)>> = const { RefCell::new(Vec::new()) };
    }

    impl Epochs {
        pub(crate) fn new() -> Epochs {
            Epochs {
                collector: Collector::new(),
                alive: Arc::new(()),
            }
        }

        /// Pins the current thread in this store's collector.
        #[inline]
        pub(crate) fn pin(&self) -> Guard {
            HANDLES.with(|h| {
                let mut h = h.borrow_mut();
                let me = Arc::as_ptr(&self.alive);
                if let Some((_, local)) = h.iter().find(|(w, _)| w.as_ptr() == me) {
                    return local.pin();
                }
                h.retain(|(w, _)| w.strong_count() > 0);
                let local = self.collector.register();
                let g = local.pin();
                h.push((Arc::downgrade(&self.alive), local));
                g
            })
        }
    }
}

/// The loom substitute: `crossbeam-epoch` keeps its own thread-locals and
/// atomics, which loom cannot instrument, so under `cfg(loom)` there are no
/// lock-free readers at all (every hit goes through the locked path, which
/// is what `tests/loom_store.rs` model-checks), and with no such reader a
/// deferred function may run at once: [`epoch::Guard::defer`] calls it
/// immediately, which is exactly the store's reclamation before epochs.
#[cfg(loom)]
pub(crate) mod epoch {
    /// A pin that protects nothing (there is nothing to protect from).
    #[derive(Debug)]
    pub(crate) struct Guard(());

    impl Guard {
        /// Runs `f` now.
        pub(crate) fn defer<F: FnOnce() -> R, R>(&self, f: F) {
            f();
        }

        /// Nothing is ever pending.
        pub(crate) fn flush(&self) {}
    }

    /// A collector that has nothing to collect.
    #[derive(Debug, Clone)]
    pub(crate) struct Epochs;

    impl Epochs {
        pub(crate) fn new() -> Epochs {
            Epochs
        }

        pub(crate) fn pin(&self) -> Guard {
            Guard(())
        }
    }

    /// Hits take the shard lock.
    pub(crate) const LOCK_FREE_HITS: bool = false;
}
