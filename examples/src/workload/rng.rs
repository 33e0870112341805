//! The workload's random numbers: SplitMix64, seeded from [`super::WorkloadConfig::seed`],
//! so that a workload is the same, byte for byte, on every machine. Product code (the
//! workload is part of what `hicamp dedup` measures), not the tests' generator.

/// SplitMix64: small, fast, and good enough for synthetic data.
#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A new generator whose sequence is independent of this one's.
    pub(super) fn fork(&mut self) -> Rng {
        Rng(self.next_u64() ^ 0xD6E8_FEB8_6659_FD93)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub(super) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub(super) fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// Exponentially distributed with the given mean (Poisson arrivals), clamped to
    /// `1..=20 * mean` microseconds.
    pub(super) fn gap(&mut self, mean: u64) -> u64 {
        // u in [0, 1), so 1 - u in (0, 1] and -ln(1 - u) >= 0.
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let e = -(1.0 - u).ln();
        ((e * mean as f64) as u64).clamp(1, mean * 20)
    }

    pub(super) fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }

    pub(super) fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }

    /// Index into `weights` chosen with probability proportional to its weight.
    pub(super) fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// Skewed choice in `0..n`: the minimum of two uniform draws (small values more likely).
    pub(super) fn skewed(&mut self, n: u64) -> u64 {
        self.below(n).min(self.below(n))
    }
}
