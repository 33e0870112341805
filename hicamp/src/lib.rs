//! A software emulation of HICAMP memory.
//!
//! # The problem
//!
//! A network stack copies payload bytes at every hand-off (application to
//! kernel, socket queue, retransmission queue, NIC) because a buffer that was
//! handed off may still change. HICAMP (Cheriton et al., ASPLOS 2012) makes
//! memory itself immutable and deduplicated, so a hand-off becomes a snapshot:
//! one reference-count increment instead of a copy.
//!
//! # Concepts
//!
//! * **Lines** are fixed-size (16..=4096 bytes, default 64) and immutable. A
//!   [`LineId`] names one; line 0 is the all-zero line and costs nothing.
//! * **Deduplication**: writing content that already exists returns the
//!   existing line with one more reference. Lookup is a hash, then a full
//!   comparison: a hash never decides equality.
//! * **Segments** are DAGs of lines: leaves hold data, interior lines hold child
//!   ids. The DAG shape depends on (content, length, line size) only, so equal
//!   content gives the equal root and equality is O(1).
//!
//! ```text
//!   Segment handle ----> root (interior)         segment map: S7 -> (root, h, len, ver)
//!                        /   |    \      \
//!                   interior  interior  0  0      0 = all-zero subtree, never stored
//!                   /  |  \      |  \
//!                 D1  D2  D1    D3  D4            D1 stored once, referenced twice
//! ```
//!
//! * A **snapshot** ([`Segment::clone`], [`SegmentMap::snapshot`]) shares the
//!   root; a **write** ([`SegmentMut::write_at`], [`SegmentMap::write_at`])
//!   copies the changed leaves and their ancestors only.
//! * **Reference counts**: every root held by a handle or a map entry, and
//!   every child of an interior line, holds one reference; a line whose count
//!   reaches zero releases its children and its slot.
//!
//! # Example
//!
//! ```
//! use hicamp::{Config, Memory};
//!
//! let mem = Memory::new(Config::default())?;
//! let a = mem.segment(&[7u8; 4096])?;
//! let snap = a.clone();                 // O(1) snapshot
//! let mut m = a.into_mut();
//! m.write_at(100, b"hello")?;           // copy-on-write of one leaf + path
//! let b = m.freeze();
//! assert_eq!(snap.to_vec(), vec![7u8; 4096]);   // the snapshot never changes
//! assert_eq!(&b.to_vec()[100..105], b"hello");
//! assert_eq!(mem.segment(&b.to_vec())?, b);       // equal content, equal root
//! # Ok::<(), hicamp::Error>(())
//! ```
//!
//! The crate denies unsafe code except in these modules, where every unsafe
//! block carries a `// SAFETY:` comment:
//!
//! * `region`: the mappings and the raw line reads and writes of the arena;
//! * `store` (its root module, `store::index` and `store::recovery`): reading
//!   lines the caller holds a reference to, writing a freshly taken slot under
//!   its shard lock, and the unsafe `children_of`/`line_of` readers used by the
//!   single-threaded recovery walk (`store::counts`, `store::intern` and
//!   `store::durability` deny unsafe code again);
//! * `hash`: the AVX2 XXH3 long-input loop ([`hash`]), called only after
//!   runtime detection of AVX2;
//! * `fsck`: line reads (through `store::line_of`) of a file it mapped itself;
//! * `shared`: the memory mapped by several processes ([`shared`]): its
//!   mapping accessors, line reads and writes under its own protocol, and the
//!   futex and liveness system calls;
//! * `window`: the userfaultfd mapping of a [`Window`] (mmap, the fill and
//!   write-protect ioctls, the slices over the mapping).

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod dag;
mod directory;
mod error;
pub mod footprint;
#[allow(unsafe_code)]
mod fsck;
#[allow(unsafe_code)]
pub mod hash;
mod id;
mod map;
mod memory;
mod persist;
#[allow(unsafe_code)]
mod region;
mod segment;
mod shape;
#[allow(unsafe_code)]
pub mod shared;
mod slice;
mod splice;
mod stats;
#[allow(unsafe_code)]
mod store;
mod sync;
#[allow(unsafe_code)]
mod window;

pub use config::{Config, Durability, MAX_LINE_SIZE, MIN_LINE_SIZE};
pub use directory::{NamedSegment, DIRECTORY};
pub use error::{Error, Result};
pub use fsck::{fsck, FsckReport};
pub use id::{LineId, LineKind, SegmentId};
pub use map::{MapEntry, SegmentMap};
pub use memory::ReadSegment;
pub use memory::{Damage, Memory, OpenOptions, Recovery};
pub use persist::{FORMAT_VERSION, MAGIC};
pub use region::{flush_cache_lines_of, flush_instruction, persist_fence};
pub use segment::{Cursor, ReadCost, Segment, SegmentMut};
pub use shape::MAX_SEGMENT_LEN;
pub use slice::SegmentSlice;
pub use splice::{Piece, SpliceCounts};
pub use stats::{MetadataPerLine, Stats};
pub use store::{ReadCounts, ReadError, WriteCounts};
pub use window::{
    Window, WindowError, WindowOptions, WindowStats, DEFAULT_READ_AHEAD_PAGES,
    DEFAULT_RUN_AHEAD_CHUNKS, MAX_WINDOW_LEN,
};
