//! XXH3-64 with a seed, bit-identical to `xxhash_rust::xxh3::xxh3_64_with_seed`,
//! whose long-input loop (more than 240 bytes) runs on AVX2 when the CPU has it.
//!
//! The build targets the x86-64 baseline (SSE2), and `xxhash-rust` picks its
//! vector path at compile time, so without this module a line is hashed with
//! SSE2 even on an AVX2 machine. Here the choice is made at run time:
//! `is_x86_feature_detected!` caches its answer in an atomic, so each call
//! costs one load and a bit test, and a CPU without AVX2 takes the portable
//! path (never SIGILL). Inputs of up to 240 bytes (no accumulate loop) always
//! take the portable path, so short inputs cost what they did.
//!
//! The hash values are stored (the shared mapping's index), so both paths must
//! agree bit for bit; the tests compare them with `xxhash-rust` on random
//! lengths and seeds, with each path forced.

use xxhash_rust::xxh3::xxh3_64_with_seed as portable;

/// The longest input XXH3 hashes without its accumulate loop.
const MID_SIZE_MAX: usize = 240;

/// XXH3-64 of `data` with `seed`: the same value as
/// `xxhash_rust::xxh3::xxh3_64_with_seed`, computed with AVX2 when the CPU
/// has it and `data` is longer than 240 bytes.
#[inline]
pub fn xxh3_64_with_seed(data: &[u8], seed: u64) -> u64 {
    if data.len() <= MID_SIZE_MAX {
        portable(data, seed)
    } else {
        long(data, seed)
    }
}

/// The long-input half of [`xxh3_64_with_seed`], out of line so that the
/// short path inlined at every call site stays as small as `xxhash-rust`'s.
#[inline(never)]
fn long(data: &[u8], seed: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the one
        // requirement of `long_avx2`; its length precondition (> 240) holds
        // (the caller's branch).
        return unsafe { x86::long_avx2(data, seed) };
    }
    portable(data, seed)
}

/// A dispatch path, for tests and benches that force one.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// `xxhash-rust` as compiled (SSE2 on the x86-64 baseline).
    Portable,
    /// The AVX2 long-input loop (falls back to `Portable` for inputs of up
    /// to 240 bytes, as the dispatched function does).
    Avx2,
}

impl Path {
    /// Whether this CPU can run the path.
    #[doc(hidden)]
    pub fn available(self) -> bool {
        match self {
            Path::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx2 => false,
        }
    }
}

/// [`xxh3_64_with_seed`] on a forced path; `None` if this CPU cannot run it.
#[doc(hidden)]
pub fn xxh3_64_with_seed_on(path: Path, data: &[u8], seed: u64) -> Option<u64> {
    if !path.available() {
        return None;
    }
    match path {
        Path::Portable => Some(portable(data, seed)),
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 if data.len() > MID_SIZE_MAX => {
            // SAFETY: `available` checked that the CPU supports AVX2; the
            // length precondition holds by the guard.
            Some(unsafe { x86::long_avx2(data, seed) })
        }
        Path::Avx2 => Some(portable(data, seed)),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    const STRIPE_LEN: usize = 64;
    const SECRET_SIZE: usize = 192;
    /// Stripes per block: `(SECRET_SIZE - STRIPE_LEN) / 8`.
    const STRIPES_PER_BLOCK: usize = 16;
    const BLOCK_LEN: usize = STRIPE_LEN * STRIPES_PER_BLOCK;

    const P32_1: u64 = 0x9E37_79B1;
    const P32_2: u64 = 0x85EB_CA77;
    const P32_3: u64 = 0xC2B2_AE3D;
    const P64_1: u64 = 0x9E37_79B1_85EB_CA87;
    const P64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P64_3: u64 = 0x1656_67B1_9E37_79F9;
    const P64_4: u64 = 0x85EB_CA77_C2B2_AE63;
    const P64_5: u64 = 0x27D4_EB2F_1656_67C5;

    /// XXH3's default secret (`XXH3_kSecret`).
    const DEFAULT_SECRET: [u8; SECRET_SIZE] = [
        0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad,
        0x1c, 0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3,
        0x67, 0x1f, 0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc,
        0xff, 0x72, 0x21, 0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6,
        0x81, 0x3a, 0x26, 0x4c, 0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65,
        0x8b, 0x1b, 0x53, 0x2e, 0xa3, 0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19,
        0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8, 0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9,
        0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d, 0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31,
        0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64, 0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb,
        0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb, 0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0,
        0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e, 0x2b, 0x16, 0xbe, 0x58, 0x7d,
        0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce, 0x45, 0xcb, 0x3a, 0x8f,
        0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
    ];

    #[inline(always)]
    fn read64(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    }

    /// The secret XXH3 derives from a seed (`XXH3_initCustomSecret`).
    #[inline(always)]
    fn custom_secret(seed: u64) -> [u8; SECRET_SIZE] {
        let mut s = DEFAULT_SECRET;
        if seed != 0 {
            for i in 0..SECRET_SIZE / 16 {
                let lo = read64(&DEFAULT_SECRET, 16 * i).wrapping_add(seed);
                let hi = read64(&DEFAULT_SECRET, 16 * i + 8).wrapping_sub(seed);
                s[16 * i..16 * i + 8].copy_from_slice(&lo.to_le_bytes());
                s[16 * i + 8..16 * i + 16].copy_from_slice(&hi.to_le_bytes());
            }
        }
        s
    }

    /// The first 32 bytes of `b` (panics if shorter).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(b: &[u8]) -> __m256i {
        let b = &b[..32];
        // SAFETY: `b` holds 32 bytes; the load is unaligned.
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    /// The first four words of `w` (panics if shorter).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load64(w: &[u64]) -> __m256i {
        let w = &w[..4];
        // SAFETY: `w` holds 32 bytes; the load is unaligned.
        unsafe { _mm256_loadu_si256(w.as_ptr().cast()) }
    }

    /// `v` into the first four words of `w` (panics if shorter).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store64(w: &mut [u64], v: __m256i) {
        let w = &mut w[..4];
        // SAFETY: `w` holds 32 bytes; the store is unaligned.
        unsafe { _mm256_storeu_si256(w.as_mut_ptr().cast(), v) }
    }

    /// One 64-byte stripe into the accumulators (`XXH3_accumulate_512`).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn accumulate(acc: &mut [__m256i; 2], stripe: &[u8], secret: &[u8]) {
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: the caller guarantees AVX2.
            let x = unsafe { load(&stripe[32 * i..]) };
            // SAFETY: the caller guarantees AVX2.
            let k = unsafe { load(&secret[32 * i..]) };
            let dk = _mm256_xor_si256(x, k);
            // The high 32 bits of each lane, moved down (_MM_SHUFFLE(0,3,0,1)).
            let dk_hi = _mm256_shuffle_epi32::<0x31>(dk);
            let product = _mm256_mul_epu32(dk, dk_hi);
            // Each lane's neighbour (lanes 2k, 2k+1 swapped: _MM_SHUFFLE(1,0,3,2)).
            let swapped = _mm256_shuffle_epi32::<0x4E>(x);
            *a = _mm256_add_epi64(product, _mm256_add_epi64(*a, swapped));
        }
    }

    /// The end-of-block scramble (`XXH3_scrambleAcc`).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn scramble(acc: &mut [__m256i; 2], secret: &[u8]) {
        let prime = _mm256_set1_epi32(P32_1 as i32);
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: the caller guarantees AVX2.
            let k = unsafe { load(&secret[32 * i..]) };
            let dv = _mm256_xor_si256(*a, _mm256_srli_epi64::<47>(*a));
            let dk = _mm256_xor_si256(dv, k);
            let dk_hi = _mm256_shuffle_epi32::<0x31>(dk);
            let lo = _mm256_mul_epu32(dk, prime);
            let hi = _mm256_mul_epu32(dk_hi, prime);
            *a = _mm256_add_epi64(lo, _mm256_slli_epi64::<32>(hi));
        }
    }

    #[inline(always)]
    fn mul128_fold64(a: u64, b: u64) -> u64 {
        let p = u128::from(a) * u128::from(b);
        (p as u64) ^ ((p >> 64) as u64)
    }

    #[inline(always)]
    fn avalanche(mut h: u64) -> u64 {
        h ^= h >> 37;
        h = h.wrapping_mul(0x1656_6791_9E37_79F9);
        h ^ (h >> 32)
    }

    /// XXH3-64 of `data` (longer than 240 bytes) with `seed`, on AVX2
    /// (`XXH3_hashLong_64b_withSeed`).
    ///
    /// # Safety
    /// The CPU must support AVX2. (`data.len() > 240` is a precondition of
    /// the algorithm, not of memory safety: shorter input panics on a slice
    /// bound.)
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn long_avx2(data: &[u8], seed: u64) -> u64 {
        assert!(data.len() > super::MID_SIZE_MAX);
        let secret = custom_secret(seed);
        let init: [u64; 8] = [P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1];
        let (lo, hi) = init.split_at(4);
        // SAFETY: the caller guarantees AVX2.
        let acc0 = unsafe { load64(lo) };
        // SAFETY: the caller guarantees AVX2.
        let acc1 = unsafe { load64(hi) };
        let mut acc = [acc0, acc1];
        let len = data.len();
        let blocks = (len - 1) / BLOCK_LEN;
        for block in data[..blocks * BLOCK_LEN].chunks_exact(BLOCK_LEN) {
            for (s, stripe) in block.chunks_exact(STRIPE_LEN).enumerate() {
                // SAFETY: the caller guarantees AVX2.
                unsafe { accumulate(&mut acc, stripe, &secret[8 * s..]) };
            }
            // SAFETY: the caller guarantees AVX2.
            unsafe { scramble(&mut acc, &secret[SECRET_SIZE - STRIPE_LEN..]) };
        }
        let tail = &data[blocks * BLOCK_LEN..len - 1];
        for (s, stripe) in tail.chunks_exact(STRIPE_LEN).enumerate() {
            // SAFETY: the caller guarantees AVX2.
            unsafe { accumulate(&mut acc, stripe, &secret[8 * s..]) };
        }
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            accumulate(
                &mut acc,
                &data[len - STRIPE_LEN..],
                &secret[SECRET_SIZE - STRIPE_LEN - 7..],
            )
        };
        let mut out = [0u64; 8];
        let (lo, hi) = out.split_at_mut(4);
        // SAFETY: the caller guarantees AVX2.
        unsafe { store64(lo, acc[0]) };
        // SAFETY: the caller guarantees AVX2.
        unsafe { store64(hi, acc[1]) };
        let mut h = (len as u64).wrapping_mul(P64_1);
        for i in 0..4 {
            h = h.wrapping_add(mul128_fold64(
                out[2 * i] ^ read64(&secret, 11 + 16 * i),
                out[2 * i + 1] ^ read64(&secret, 11 + 16 * i + 8),
            ));
        }
        avalanche(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*, so the test needs no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    fn check(path: Path) {
        if !path.available() {
            eprintln!("hash path {path:?}: this CPU lacks it; checked the other path only");
            return;
        }
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut buf = vec![0u8; 16384 + 64];
        for b in buf.iter_mut() {
            *b = rng.next() as u8;
        }
        let mut lens: Vec<usize> = (0..=1100).collect();
        lens.extend([4095, 4096, 4097, 8191, 8192, 16383, 16384]);
        lens.extend((0..400).map(|_| (rng.next() % 16385) as usize));
        for (n, &len) in lens.iter().enumerate() {
            let seed = match n % 3 {
                0 => 0,
                1 => rng.next(),
                _ => rng.next() & 0xffff,
            };
            // An unaligned start too, as lines in the mapping may be.
            let off = (rng.next() % 64) as usize;
            let data = &buf[off..off + len];
            let want = portable(data, seed);
            assert_eq!(
                xxh3_64_with_seed_on(path, data, seed),
                Some(want),
                "{path:?} len {len} seed {seed:#x} off {off}"
            );
            assert_eq!(xxh3_64_with_seed(data, seed), want, "dispatched len {len}");
        }
    }

    #[test]
    fn avx2_path_equals_xxhash_rust() {
        check(Path::Avx2);
    }

    #[test]
    fn portable_path_equals_xxhash_rust() {
        check(Path::Portable);
    }

    #[test]
    fn all_zero_and_all_ones_lines() {
        for len in [241, 1024, 1025, 4096] {
            for fill in [0u8, 0xff] {
                let data = vec![fill; len];
                for path in [Path::Portable, Path::Avx2] {
                    if let Some(h) = xxh3_64_with_seed_on(path, &data, 7) {
                        assert_eq!(h, portable(&data, 7), "{path:?} {len} {fill}");
                    }
                }
            }
        }
    }
}
