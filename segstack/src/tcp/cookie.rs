//! SYN cookies (RFC 4987 §3.6, as Linux does them): when a listener's
//! queue is full, its SYN-ACK carries the connection's state in the initial
//! sequence number instead of a socket, and the ACK that completes the
//! handshake proves (by returning the number plus one) that the peer saw it.
//!
//! The 32-bit cookie is `count(8) | mac(22) | mss index(2)`:
//!
//! - `count` is the low 8 bits of a clock that ticks every
//!   [`COOKIE_PERIOD_NS`] (64 s); a cookie is valid for
//!   [`COOKIE_MAX_AGE`] ticks after the one it was made in (Linux: 2 min);
//! - `mac` is a keyed hash (the listener's random secret) of the 4-tuple,
//!   the peer's initial sequence number, the full count and the MSS index,
//!   so a cookie cannot be forged for another peer, time or MSS;
//! - the MSS index picks one of [`MSS_TABLE`] (the largest not above the
//!   peer's MSS).
//!
//! Window scaling, timestamps and SACK are not encoded: a connection opened
//! by a cookie runs without them (the cookie SYN-ACK does not offer them).

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddrV4;

/// The cookie clock's period.
pub const COOKIE_PERIOD_NS: u64 = 64_000_000_000;
/// Ticks a cookie stays valid after the one it was made in.
pub const COOKIE_MAX_AGE: u64 = 2;
/// The MSS values a cookie can carry (as Linux's `msstab`).
pub const MSS_TABLE: [u16; 4] = [536, 1300, 1440, 1460];

const MAC_BITS: u32 = 22;
const MAC_MASK: u32 = (1 << MAC_BITS) - 1;

/// A listener's cookie secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SynCookies {
    secret: [u64; 2],
}

impl std::fmt::Debug for SynCookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs.
        f.write_str("SynCookies { .. }")
    }
}

impl SynCookies {
    /// Cookies under `secret`.
    pub fn new(secret: [u64; 2]) -> SynCookies {
        SynCookies { secret }
    }

    /// Cookies under a fresh random secret (the standard library's
    /// per-process random hash keys).
    pub fn random() -> SynCookies {
        let s = std::collections::hash_map::RandomState::new();
        SynCookies {
            secret: [s.hash_one(0x5359_4e31_u64), s.hash_one(0x5359_4e32_u64)],
        }
    }

    fn mac(
        &self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        irs: u32,
        count: u64,
        idx: u32,
    ) -> u32 {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.secret[0]);
        h.write_u32(u32::from(*local.ip()));
        h.write_u16(local.port());
        h.write_u32(u32::from(*remote.ip()));
        h.write_u16(remote.port());
        h.write_u32(irs);
        h.write_u64(count);
        h.write_u32(idx);
        h.write_u64(self.secret[1]);
        let x = h.finish();
        ((x ^ (x >> 32)) as u32) & MAC_MASK
    }

    /// The cookie (our initial sequence number) for a SYN from `remote` to
    /// `local` with sequence number `irs` and MSS option `peer_mss`, at
    /// `now` (ns), and the MSS it encodes.
    pub fn encode(
        &self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        irs: u32,
        peer_mss: Option<u16>,
        now: u64,
    ) -> (u32, u16) {
        let peer = peer_mss.unwrap_or(MSS_TABLE[0]);
        let idx = MSS_TABLE.iter().rposition(|&m| m <= peer).unwrap_or(0) as u32;
        let count = now / COOKIE_PERIOD_NS;
        let mac = self.mac(local, remote, irs, count, idx);
        let cookie = ((count as u32 & 0xff) << 24) | (mac << 2) | idx;
        (cookie, MSS_TABLE[idx as usize])
    }

    /// The MSS a cookie encodes, if `cookie` is one this secret made for
    /// this 4-tuple and `irs` within [`COOKIE_MAX_AGE`] ticks of `now`.
    pub fn decode(
        &self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        irs: u32,
        cookie: u32,
        now: u64,
    ) -> Option<u16> {
        let now_count = now / COOKIE_PERIOD_NS;
        let age = (now_count as u32 & 0xff).wrapping_sub(cookie >> 24) & 0xff;
        if u64::from(age) > COOKIE_MAX_AGE || u64::from(age) > now_count {
            return None;
        }
        let count = now_count - u64::from(age);
        let idx = cookie & 3;
        (self.mac(local, remote, irs, count, idx) == (cookie >> 2) & MAC_MASK)
            .then_some(MSS_TABLE[idx as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn addr(ip: u32, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(ip), port)
    }

    proptest! {
        #[test]
        fn a_cookie_decodes_to_its_mss_within_its_age(
            secret: [u64; 2], l: u32, lp: u16, r: u32, rp: u16, irs: u32,
            mss in proptest::option::of(0u16..9000), now in 0u64..1 << 50,
            later in 0..(COOKIE_MAX_AGE + 1) * COOKIE_PERIOD_NS,
        ) {
            let c = SynCookies::new(secret);
            let (local, remote) = (addr(l, lp), addr(r, rp));
            let (cookie, m) = c.encode(local, remote, irs, mss, now);
            prop_assert!(MSS_TABLE.contains(&m));
            prop_assert!(m <= mss.unwrap_or(536).max(536));
            // Valid until the clock has ticked COOKIE_MAX_AGE times past it.
            let then = (now / COOKIE_PERIOD_NS) * COOKIE_PERIOD_NS + later;
            let want = (then / COOKIE_PERIOD_NS - now / COOKIE_PERIOD_NS <= COOKIE_MAX_AGE)
                .then_some(m);
            prop_assert_eq!(c.decode(local, remote, irs, cookie, then), want);
        }

        #[test]
        fn a_cookie_is_refused_under_another_secret_tuple_irs_or_age(
            secret: [u64; 2], other: [u64; 2], l: u32, lp: u16, r: u32, rp: u16,
            irs: u32, now in 0u64..1 << 50, flip in 0u32..32,
        ) {
            let c = SynCookies::new(secret);
            let (local, remote) = (addr(l, lp), addr(r, rp));
            let (cookie, _) = c.encode(local, remote, irs, Some(1460), now);
            // 22 MAC bits: a wrong guess passes with odds 2^-22, which
            // proptest's few hundred cases do not reach.
            if other != secret {
                prop_assert_eq!(SynCookies::new(other).decode(local, remote, irs, cookie, now), None);
            }
            prop_assert_eq!(c.decode(local, remote, irs.wrapping_add(1), cookie, now), None);
            prop_assert_eq!(c.decode(local, addr(r, rp.wrapping_add(1)), irs, cookie, now), None);
            prop_assert_eq!(c.decode(local, remote, irs, cookie ^ (1 << flip), now), None);
            let stale = now + (COOKIE_MAX_AGE + 1) * COOKIE_PERIOD_NS;
            prop_assert_eq!(c.decode(local, remote, irs, cookie, stale), None);
            // Made in the future (a count the clock has not reached).
            if now >= COOKIE_PERIOD_NS {
                prop_assert_eq!(c.decode(local, remote, irs, cookie, now - COOKIE_PERIOD_NS), None);
            }
        }
    }

    #[test]
    fn the_mss_index_is_the_largest_not_above_the_peers() {
        let c = SynCookies::new([1, 2]);
        let (l, r) = (addr(1, 80), addr(2, 4000));
        let mss = |m| c.encode(l, r, 7, m, 0).1;
        assert_eq!(mss(None), 536);
        assert_eq!(mss(Some(100)), 536);
        assert_eq!(mss(Some(1299)), 536);
        assert_eq!(mss(Some(1300)), 1300);
        assert_eq!(mss(Some(1448)), 1440);
        assert_eq!(mss(Some(1460)), 1460);
        assert_eq!(mss(Some(9000)), 1460);
    }
}
