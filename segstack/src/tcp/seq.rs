//! Sequence-number arithmetic.
//!
//! On the wire, sequence numbers are 32-bit and wrap. Inside the socket every
//! position is an unwrapped 64-bit offset from the initial sequence number
//! (ours for the send side, the peer's for the receive side): offset 0 is the
//! SYN, offset 1 the first data byte. Offsets never wrap, so comparisons are
//! plain integer comparisons; the only wrapping arithmetic is here, where a
//! wire number is placed relative to a known offset. That is sound as long as
//! the two are less than 2^31 apart, which every window guarantees (the
//! largest scaled window is 2^30).

/// The offset of the wire number `seq`, given that the wire number `base_seq`
/// has offset `base_off`. May be negative for numbers before the ISN.
pub(crate) fn unwrap(seq: u32, base_seq: u32, base_off: u64) -> i64 {
    base_off as i64 + i64::from(seq.wrapping_sub(base_seq) as i32)
}

/// The wire number of `off`, given the initial sequence number `isn`.
pub(crate) fn wrap(isn: u32, off: u64) -> u32 {
    isn.wrapping_add(off as u32)
}

/// `a < b` in wrapping sequence space: the wire layer's comparison.
pub(crate) use crate::wire::seq_lt as lt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrap_across_the_wrap() {
        let isn = u32::MAX - 10;
        assert_eq!(wrap(isn, 0), isn);
        assert_eq!(wrap(isn, 11), 0);
        assert_eq!(unwrap(wrap(isn, 20), wrap(isn, 15), 15), 20);
        assert_eq!(unwrap(wrap(isn, 5), wrap(isn, 15), 15), 5);
        assert_eq!(unwrap(isn.wrapping_sub(3), isn, 0), -3);
        let far = (1u64 << 32) + 7;
        assert_eq!(
            unwrap(wrap(isn, far + 100), wrap(isn, far), far),
            (far + 100) as i64
        );
    }

    #[test]
    fn wrapping_less_than() {
        assert!(lt(1, 2));
        assert!(!lt(2, 1));
        assert!(lt(u32::MAX, 0));
        assert!(!lt(0, u32::MAX));
        assert!(!lt(5, 5));
    }
}
