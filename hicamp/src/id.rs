//! Typed identifiers: a line id is never a segment id, and neither is a bare integer.

use std::fmt;

/// Physical line id (HICAMP's PLID): the index of a line slot in the arena.
///
/// `LineId::ZERO` is the all-zero line at every level of a DAG: it is never
/// stored, never reference-counted, and a subtree that holds only zeros is
/// represented by it, so a mostly-zero segment costs almost nothing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct LineId(pub(crate) u32);

impl LineId {
    /// The all-zero line.
    pub const ZERO: LineId = LineId(0);

    /// The raw slot index.
    pub fn get(self) -> u32 {
        self.0
    }

    /// True for the all-zero line.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for LineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

impl fmt::Display for LineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

/// Index of an entry in the segment map.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct SegmentId(pub u32);

impl SegmentId {
    /// The raw index.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S{}", self.0)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S{}", self.0)
    }
}

/// The two kinds of line. They live in separate hash domains and are compared
/// by kind as well as content, so a leaf never aliases an interior line.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum LineKind {
    /// Holds segment data.
    Leaf,
    /// Holds child line ids (little-endian `u32`s) and owns a reference to each.
    Interior,
}
