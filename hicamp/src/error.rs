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
    /// An I/O error on a memory file.
    #[error("{path}: {op}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The operating system's message.
        message: String,
    },
    /// The file is not a memory file (wrong magic).
    #[error("{path}: not a hicamp memory file")]
    NotAMemoryFile {
        /// The file.
        path: String,
    },
    /// The file was written by a newer format version.
    #[error("{path}: format version {found} is newer than the supported {supported}")]
    UnsupportedVersion {
        /// The file.
        path: String,
        /// Version in the file.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The file is shorter than its header says.
    #[error("{path}: truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// The file.
        path: String,
        /// Bytes the header (or format) requires.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The file was written by an older format version this build does not read.
    #[error("{path}: format version {found} is older than the supported {supported}: re-create the file (copy its named segments out with the build that wrote it)")]
    OldFormat {
        /// The file.
        path: String,
        /// Version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The file system holding a memory file has no room for the space it
    /// needs next (the memory is unchanged; free space, or use a smaller write).
    #[error("{path}: no space left on the file system: cannot reserve {bytes} more bytes for the memory file")]
    NoSpace {
        /// The file.
        path: String,
        /// Bytes the reservation asked for.
        bytes: u64,
    },
    /// The file's content is inconsistent.
    #[error("{path}: corrupt: {what}")]
    Corrupt {
        /// The file (or "memory").
        path: String,
        /// What is wrong.
        what: String,
    },
    /// Another process has the file open.
    #[error("{path}: in use by another process")]
    InUse {
        /// The file.
        path: String,
    },
    /// A name is not usable in the directory of named segments.
    #[error("bad segment name {0:?}: 1..=1024 bytes of UTF-8 expected")]
    BadName(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
