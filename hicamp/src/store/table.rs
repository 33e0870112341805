//! The dedup table of one shard: buckets of one cache line, each holding 15
//! `u32` slots and an overflow count, at a load factor of up to 7/8.
//!
//! ```text
//!   bucket (64 bytes)  [ s0 s1 ... s14 | overflow ]
//!   slot (u32)         [ tag (32 - id_bits bits) | line id (id_bits bits) ]   0 = empty
//!   home bucket        ((h >> 32) * buckets) >> 32     any bucket count, so growth is by 1.5x
//!   tag                bits 8.. of h (bits 0..6 pick the shard)
//! ```
//!
//! A line id needs `id_bits` bits (enough for the memory's slot count); the
//! rest of the slot holds tag bits of the hash, so most non-matching slots are
//! skipped without reading their line (a memory of 2^24 lines keeps 7 tag
//! bits). An entry lives in its home bucket or, when that is full, in the
//! first bucket after it with room; `overflow` counts the entries that probed
//! past a bucket, so a lookup stops at the first bucket whose count is 0 and
//! deletion needs no shifting (F14's scheme). The table stores no hash: growth
//! rehashes the lines themselves (the caller passes the hashes), which is
//! what lets a slot be 4 bytes.

/// Slots per bucket.
pub(super) const BUCKET_SLOTS: usize = 15;

/// One cache line of the table.
#[repr(C, align(64))]
#[derive(Clone, Copy, Default)]
pub(super) struct Bucket {
    /// Words 0..15 are the slots; word 15 ([`OVERFLOW`]) counts the entries
    /// whose home bucket lies at or before this one and that live after it.
    words: [u32; 16],
}

/// The word of a bucket that holds its overflow count.
const OVERFLOW: usize = BUCKET_SLOTS;
/// The slot bits of a mask over a bucket's words.
const SLOT_BITS: u32 = (1 << BUCKET_SLOTS) - 1;

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

/// One shard's table (see the module docs).
pub(super) struct Table {
    buckets: Vec<Bucket>,
    len: usize,
    id_bits: u32,
}

impl Table {
    /// An empty table of `buckets` buckets for line ids of `id_bits` bits.
    pub(super) fn new(id_bits: u32, buckets: usize) -> Table {
        debug_assert!((1..=32).contains(&id_bits));
        Table {
            buckets: vec![Bucket::default(); buckets.max(1)],
            len: 0,
            id_bits,
        }
    }

    /// Buckets needed to hold `n` entries at a load of 3/4.
    pub(super) fn buckets_for(n: usize) -> usize {
        (n * 4).div_ceil(BUCKET_SLOTS * 3).max(1)
    }

    #[inline]
    fn id_mask(&self) -> u32 {
        if self.id_bits >= 32 {
            u32::MAX
        } else {
            (1 << self.id_bits) - 1
        }
    }

    /// The tag field of hash `h` (already in place above the id bits).
    #[inline]
    fn tag(&self, h: u64) -> u32 {
        if self.id_bits >= 32 {
            0
        } else {
            ((h >> 8) as u32) << self.id_bits
        }
    }

    /// Home bucket of hash `h` among `n` buckets.
    #[inline]
    pub(super) fn home_of(h: u64, n: usize) -> usize {
        (((h >> 32) * n as u64) >> 32) as usize
    }

    /// Entries.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Allocated bytes.
    pub(super) fn bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
    }

    /// Base of the bucket array and the bucket count (for prefetch hints).
    pub(super) fn hint(&self) -> (*const Bucket, usize) {
        (self.buckets.as_ptr(), self.buckets.len())
    }

    /// True when one more entry would pass the maximum load (7/8).
    #[inline]
    pub(super) fn full(&self) -> bool {
        (self.len + 1) * 8 > self.buckets.len() * BUCKET_SLOTS * 7
    }

    /// The bucket count after the next growth (1.5x).
    pub(super) fn grown(&self) -> usize {
        self.buckets.len() + self.buckets.len() / 2 + 1
    }

    /// Bit `s` set when slot `s` of bucket `b` is used and equals `tag`
    /// under `tmask`; and bit `s` set when slot `s` is empty.
    #[inline(always)]
    fn masks(&self, b: usize, tag: u32, tmask: u32) -> (u32, u32) {
        let w = &self.buckets[b].words;
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64
            // CPU has the feature `masks_sse2` is compiled for.
            let (hit, empty) = unsafe { masks_sse2(w, tag, tmask) };
            (hit & SLOT_BITS, empty & SLOT_BITS)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let (mut hit, mut empty) = (0u32, 0u32);
            for (s, &v) in w[..BUCKET_SLOTS].iter().enumerate() {
                hit |= u32::from((v & tmask) == tag && v != 0) << s;
                empty |= u32::from(v == 0) << s;
            }
            (hit, empty)
        }
    }

    /// Bit `s` set when slot `s` of bucket `b` is used and has `tag`.
    #[inline(always)]
    fn matches(&self, b: usize, tag: u32) -> u32 {
        self.masks(b, tag, !self.id_mask()).0
    }

    /// The first id in the probe sequence of `h` for which `eq` holds.
    #[inline]
    pub(super) fn find(&self, h: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let n = self.buckets.len();
        let tag = self.tag(h);
        let idm = self.id_mask();
        let mut b = Self::home_of(h, n);
        for _ in 0..n {
            let mut m = self.matches(b, tag);
            while m != 0 {
                let s = m.trailing_zeros() as usize;
                m &= m - 1;
                let id = self.buckets[b].words[s] & idm;
                if eq(id) {
                    return Some(id);
                }
            }
            if self.buckets[b].words[OVERFLOW] == 0 {
                return None;
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
        None
    }

    /// Calls `f` on each id of the home bucket of `h` whose tag matches
    /// (the candidates a lookup will compare first); returns how many.
    #[inline]
    pub(super) fn candidates(&self, h: u64, mut f: impl FnMut(u32)) -> u32 {
        let b = Self::home_of(h, self.buckets.len());
        let mut m = self.matches(b, self.tag(h));
        let n = m.count_ones();
        while m != 0 {
            let s = m.trailing_zeros() as usize;
            m &= m - 1;
            f(self.buckets[b].words[s] & self.id_mask());
        }
        n
    }

    /// Adds `id` under hash `h`. The caller grows the table first when
    /// [`Table::full`] (so a free slot exists) and knows `id` is absent.
    pub(super) fn insert(&mut self, h: u64, id: u32) {
        debug_assert!(id != 0 && id & !self.id_mask() == 0);
        debug_assert!(self.len < self.buckets.len() * BUCKET_SLOTS);
        let n = self.buckets.len();
        let v = self.tag(h) | id;
        let mut b = Self::home_of(h, n);
        loop {
            let empty = self.masks(b, 0, 0).1;
            if empty != 0 {
                self.buckets[b].words[empty.trailing_zeros() as usize] = v;
                self.len += 1;
                return;
            }
            self.buckets[b].words[OVERFLOW] += 1;
            b = if b + 1 == n { 0 } else { b + 1 };
        }
    }

    /// Removes `id`, which was inserted under hash `h`; false when absent.
    pub(super) fn remove(&mut self, h: u64, id: u32) -> bool {
        let n = self.buckets.len();
        let v = self.tag(h) | id;
        let home = Self::home_of(h, n);
        let mut b = home;
        for _ in 0..n {
            let hit = self.masks(b, v, u32::MAX).0;
            if hit != 0 {
                self.buckets[b].words[hit.trailing_zeros() as usize] = 0;
                self.len -= 1;
                let mut p = home;
                while p != b {
                    self.buckets[p].words[OVERFLOW] -= 1;
                    p = if p + 1 == n { 0 } else { p + 1 };
                }
                return true;
            }
            if self.buckets[b].words[OVERFLOW] == 0 {
                break;
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
        false
    }

    /// Every id in the table.
    pub(super) fn ids(&self) -> Vec<u32> {
        let idm = self.id_mask();
        let mut v = Vec::with_capacity(self.len);
        for b in &self.buckets {
            v.extend(
                b.words[..BUCKET_SLOTS]
                    .iter()
                    .filter(|s| **s != 0)
                    .map(|s| s & idm),
            );
        }
        v
    }

    /// Rebuilds the table with `buckets` buckets from `ids` (every entry) and
    /// their `hashes`.
    pub(super) fn rebuild(&mut self, buckets: usize, ids: &[u32], hashes: &[u64]) {
        debug_assert_eq!(ids.len(), hashes.len());
        let mut t = Table::new(self.id_bits, buckets.max(Self::buckets_for(ids.len())));
        for (&id, &h) in ids.iter().zip(hashes) {
            t.insert(h, id);
        }
        *self = t;
    }
}

/// For each word `s` of `w`: bit `s` of the first mask when the word is
/// non-zero and equals `tag` under `tmask`, bit `s` of the second when it is
/// zero (four 4-lane compares; the caller masks off word 15).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn masks_sse2(w: &[u32; 16], tag: u32, tmask: u32) -> (u32, u32) {
    use std::arch::x86_64::*;
    let t = _mm_set1_epi32(tag as i32);
    let k = _mm_set1_epi32(tmask as i32);
    let z = _mm_setzero_si128();
    let (mut hit, mut empty) = (0u32, 0u32);
    for q in 0..4 {
        let p = w[4 * q..4 * q + 4].as_ptr().cast::<__m128i>();
        // SAFETY: `p` points at 4 words (16 bytes) of `w`; the load is
        // unaligned.
        let v = unsafe { _mm_loadu_si128(p) };
        let zero = _mm_cmpeq_epi32(v, z);
        let eq = _mm_cmpeq_epi32(_mm_and_si128(v, k), t);
        hit |= (_mm_movemask_ps(_mm_castsi128_ps(_mm_andnot_si128(zero, eq))) as u32) << (4 * q);
        empty |= (_mm_movemask_ps(_mm_castsi128_ps(zero)) as u32) << (4 * q);
    }
    (hit, empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A hash with few distinct values, so that tags and homes collide a lot.
    fn h_of(key: u32, spread: u32) -> u64 {
        let x = u64::from(key % spread).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^ (x >> 29)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32),
        Remove(u32),
        Find(u32),
        Grow,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u32..300).prop_map(Op::Insert),
            3 => (1u32..300).prop_map(Op::Remove),
            3 => (1u32..300).prop_map(Op::Find),
            1 => Just(Op::Grow),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a HashMap model: ids are keys (as line contents are in the
        /// store); `spread` folds them onto few hashes; small id widths leave
        /// many tag bits, 32-bit ids none.
        #[test]
        fn table_matches_model(
            ops in proptest::collection::vec(op(), 1..250),
            spread in 1u32..64,
            id_bits in prop_oneof![Just(9u32), Just(16), Just(32)],
        ) {
            let mut t = Table::new(id_bits, 1);
            let mut model: HashMap<u32, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k) => {
                        let h = h_of(k, spread);
                        let found = t.find(h, |id| id == k);
                        prop_assert_eq!(found.is_some(), model.contains_key(&k));
                        if found.is_none() {
                            if t.full() {
                                let ids = t.ids();
                                let hs: Vec<u64> = ids.iter().map(|&i| model[&i]).collect();
                                t.rebuild(t.grown(), &ids, &hs);
                            }
                            t.insert(h, k);
                            model.insert(k, h);
                        }
                    }
                    Op::Remove(k) => {
                        let h = h_of(k, spread);
                        prop_assert_eq!(t.remove(h, k), model.remove(&k).is_some());
                    }
                    Op::Find(k) => {
                        let h = h_of(k, spread);
                        prop_assert_eq!(t.find(h, |id| id == k), model.get(&k).map(|_| k));
                    }
                    Op::Grow => {
                        let ids = t.ids();
                        let hs: Vec<u64> = ids.iter().map(|&i| model[&i]).collect();
                        t.rebuild(t.grown(), &ids, &hs);
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                let mut ids = t.ids();
                ids.sort_unstable();
                let mut keys: Vec<u32> = model.keys().copied().collect();
                keys.sort_unstable();
                prop_assert_eq!(ids, keys);
                prop_assert!(t.len() <= t.buckets.len() * BUCKET_SLOTS);
                // The overflow counts are exactly the entries probing past.
                let n = t.buckets.len();
                let mut want = vec![0u32; n];
                for (&k, &h) in &model {
                    let home = Table::home_of(h, n);
                    let v = t.tag(h) | k;
                    let mut b = home;
                    while !t.buckets[b].words[..BUCKET_SLOTS].contains(&v) {
                        want[b] += 1;
                        b = (b + 1) % n;
                    }
                }
                let got: Vec<u32> = t.buckets.iter().map(|b| b.words[OVERFLOW]).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
