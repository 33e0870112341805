//! The geometry of a segment DAG: a pure function of the length and the line
//! size (see `dag` for the picture). No other module is needed to compute it,
//! so the recovery walk, `fsck` and the DAG code all share it without
//! depending on one another.

use crate::error::{Error, Result};

/// Longest segment: 2^48 bytes keeps every span computation inside `u64`.
pub const MAX_SEGMENT_LEN: u64 = 1 << 48;
/// Tallest possible DAG (16-byte lines, fanout 4, 2^44 leaves).
pub(crate) const MAX_HEIGHT: usize = 24;

/// Leaves of a segment of `len` bytes on lines of `1 << shift` bytes.
#[inline]
pub(crate) fn leaves_for(len: u64, shift: u32) -> u64 {
    len.div_ceil(1 << shift)
}

/// Height of the DAG over `n` leaves with fanout `1 << fshift`.
pub(crate) fn height_for(n: u64, fshift: u32) -> u32 {
    let mut h = 0;
    while h * fshift < 64 && (1u64 << (h * fshift)) < n {
        h += 1;
    }
    h
}

/// Checks that a segment of `len` bytes is not too long.
pub(crate) fn check_len(len: u64) -> Result<()> {
    if len > MAX_SEGMENT_LEN {
        return Err(Error::TooLong {
            len,
            max: MAX_SEGMENT_LEN,
        });
    }
    Ok(())
}
