//! The memory: a line store, a segment map and the accounting, shared by every
//! handle through one `Arc`.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::config::Config;
use crate::dag::{self, Tree};
use crate::error::Result;
use crate::map::MapTable;
use crate::segment::{Segment, SegmentMut};
use crate::stats::Stats;
use crate::store::Store;

const STRIPES: usize = 16;

/// A counter striped over cache lines so that threads do not bounce one line.
pub(crate) struct StripedCounter {
    stripes: [CachePadded<AtomicI64>; STRIPES],
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

impl StripedCounter {
    fn new() -> Self {
        StripedCounter {
            stripes: std::array::from_fn(|_| CachePadded::new(AtomicI64::new(0))),
        }
    }

    #[inline]
    pub(crate) fn add(&self, v: i64) {
        let s = STRIPE.with(|c| {
            let mut s = c.get();
            if s == usize::MAX {
                s = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
                c.set(s);
            }
            s
        });
        self.stripes[s].fetch_add(v, Relaxed);
    }

    pub(crate) fn sum(&self) -> i64 {
        self.stripes.iter().map(|s| s.load(Relaxed)).sum()
    }
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) map: MapTable,
    /// Bytes referenced by live handles and map entries.
    pub(crate) logical: StripedCounter,
}

/// A HICAMP memory: immutable, deduplicated lines; segments as canonical DAGs
/// of lines; a segment map. Cloning a `Memory` clones a handle to the same
/// memory. `Memory` is `Send + Sync`; the intern path takes only the lock of
/// one of 64 index shards.
#[derive(Clone)]
pub struct Memory {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Memory {
    /// A new, empty memory in anonymous mappings.
    pub fn new(config: Config) -> Result<Memory> {
        config.validate()?;
        let store = Store::new(config.line_size, config.capacity_lines)?;
        let map = MapTable::new(config.map_capacity)?;
        Ok(Memory {
            inner: Arc::new(Inner {
                config,
                store,
                map,
                logical: StripedCounter::new(),
            }),
        })
    }

    /// A memory with the default config (64-byte lines).
    pub fn with_defaults() -> Result<Memory> {
        Memory::new(Config::default())
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Line size in bytes.
    pub fn line_size(&self) -> usize {
        self.inner.config.line_size
    }

    /// Child ids per interior line.
    pub fn fanout(&self) -> usize {
        self.inner.store.fanout()
    }

    /// True when both handles name the same memory.
    pub fn same(&self, other: &Memory) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A segment holding a copy of `data`, deduplicated line by line.
    pub fn segment(&self, data: &[u8]) -> Result<Segment> {
        let tree = dag::build(&self.inner.store, data)?;
        Ok(Segment::from_tree(self.clone(), tree))
    }

    /// A segment of `len` zero bytes (costs no line at all).
    pub fn zeroed(&self, len: u64) -> Result<Segment> {
        dag::check_len(len)?;
        let tree = Tree {
            root: crate::LineId::ZERO,
            height: dag::height_for(
                dag::leaves_for(len, self.inner.store.shift()),
                self.inner.store.shift() - 2,
            ),
            len,
        };
        Ok(Segment::from_tree(self.clone(), tree))
    }

    /// The empty segment.
    pub fn empty(&self) -> Segment {
        Segment::from_tree(self.clone(), Tree::default())
    }

    /// A new, empty mutable segment.
    pub fn builder(&self) -> SegmentMut {
        SegmentMut::from_tree(self.clone(), Tree::default())
    }

    /// Footprint statistics (takes each shard lock briefly).
    pub fn stats(&self) -> Stats {
        Stats::collect(self)
    }

    /// Lines in use (leaf and interior; the zero line is not counted).
    pub fn live_lines(&self) -> u64 {
        let c = self.inner.store.counters();
        c.live[0] + c.live[1]
    }

    /// The reference count of a line (0 for the zero line). For tests and
    /// tools.
    pub fn refcount(&self, id: crate::LineId) -> u32 {
        self.inner.store.refcount(id)
    }

    /// The kind of a live line (for tests and tools).
    pub fn line_kind(&self, id: crate::LineId) -> crate::LineKind {
        self.inner.store.kind(id)
    }
}
