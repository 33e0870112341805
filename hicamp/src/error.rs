//! Errors of the memory layer.

use crate::id::SegmentId;

/// Everything that can go wrong in a [`Memory`](crate::Memory) operation.
///
/// No operation panics on bad input; every failure leaves the memory as it was
/// (an operation that fails releases whatever lines it had already built).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The configuration is not usable.
    #[error("bad config: {0}")]
    BadConfig(String),
    /// Every line slot is in use.
    #[error("line capacity exhausted: all {capacity} lines are in use")]
    CapacityExhausted {
        /// Capacity of the memory in lines.
        capacity: u64,
    },
    /// Every segment-map entry is in use.
    #[error("segment map full: all {capacity} entries are in use")]
    MapFull {
        /// Capacity of the segment map in entries.
        capacity: u64,
    },
    /// An offset or range lies outside what the operation allows.
    #[error("bad offset: {offset} (+{len}) is outside a segment of {seg_len} bytes")]
    BadOffset {
        /// The offending offset.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Length of the segment.
        seg_len: u64,
    },
    /// A segment would be longer than the memory can describe.
    #[error("segment too long: {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// Requested length.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// The segment id names no live segment.
    #[error("no such segment: {0}")]
    NoSuchSegment(SegmentId),
    /// A compare-and-swap commit found another version than expected.
    #[error("commit conflict on {id}: expected version {expected}, found {actual}")]
    Conflict {
        /// The segment.
        id: SegmentId,
        /// The version the committer based its change on.
        expected: u64,
        /// The version found in the map.
        actual: u64,
    },
    /// A segment handle from another memory was passed in.
    #[error("segment belongs to another memory")]
    ForeignSegment,
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
