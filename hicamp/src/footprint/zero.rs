//! Exact count of the logical bytes that lie in all-zero lines.
//!
//! HICAMP stores an all-zero line nowhere (line id 0), so "dedup ratio excluding zero lines"
//! needs the logical bytes those lines cover. The rules, the same as the memory's:
//!
//! - each item (file, segment) is cut into lines from its own offset 0;
//! - a line is a zero line iff all its bytes are 0; a last partial line is zero-padded, so it
//!   is a zero line iff its real bytes are 0;
//! - a zero line contributes its *real* bytes: `line_size` for a whole line, fewer for the
//!   last partial line (padding is not logical data).
//!
//! [`ZeroLineCounter`] does this streaming (data may arrive in chunks of any size, not aligned
//! to lines); [`zero_line_bytes`] is the one-shot form.

use crate::store::is_zero;

/// Streaming counter of bytes in all-zero lines, for one line size.
///
/// Call [`feed`](Self::feed) with an item's bytes in order (any chunking), then
/// [`finish_item`](Self::finish_item) before the next item starts.
#[derive(Debug, Clone)]
pub struct ZeroLineCounter {
    line_size: usize,
    /// Bytes of the current (incomplete) line seen so far.
    in_line: usize,
    /// Whether every byte of the current line seen so far is zero.
    line_zero: bool,
    /// Bytes in completed zero lines.
    zero_bytes: u64,
}

impl ZeroLineCounter {
    /// A counter for lines of `line_size` bytes.
    ///
    /// # Panics
    /// If `line_size` is 0.
    pub fn new(line_size: usize) -> Self {
        assert!(line_size > 0, "line size must be positive");
        ZeroLineCounter {
            line_size,
            in_line: 0,
            line_zero: true,
            zero_bytes: 0,
        }
    }

    /// The line size.
    pub fn line_size(&self) -> usize {
        self.line_size
    }

    /// Adds the next bytes of the current item.
    pub fn feed(&mut self, mut data: &[u8]) {
        // Complete the line left open by the previous call.
        if self.in_line > 0 {
            let take = (self.line_size - self.in_line).min(data.len());
            let (head, rest) = data.split_at(take);
            self.line_zero = self.line_zero && is_zero(head);
            self.in_line += take;
            data = rest;
            if self.in_line < self.line_size {
                return;
            }
            self.close_line();
        }
        let mut lines = data.chunks_exact(self.line_size);
        for line in &mut lines {
            if is_zero(line) {
                self.zero_bytes += self.line_size as u64;
            }
        }
        let rest = lines.remainder();
        if !rest.is_empty() {
            self.in_line = rest.len();
            self.line_zero = is_zero(rest);
        }
    }

    /// Counts one whole item: [`feed`](Self::feed) then [`finish_item`](Self::finish_item).
    pub fn feed_item(&mut self, data: &[u8]) {
        self.feed(data);
        self.finish_item();
    }

    /// Ends the current item: a last partial zero line counts its real bytes.
    pub fn finish_item(&mut self) {
        if self.in_line > 0 {
            self.close_line();
        }
    }

    /// Forgets the current item's open line without counting it (the item was abandoned).
    /// Bytes of its completed lines stay counted.
    pub fn discard_open_line(&mut self) {
        self.in_line = 0;
        self.line_zero = true;
    }

    /// Bytes in zero lines of every finished item, plus completed lines of the current one.
    pub fn zero_bytes(&self) -> u64 {
        self.zero_bytes
    }

    fn close_line(&mut self) {
        if self.line_zero {
            self.zero_bytes += self.in_line as u64;
        }
        self.in_line = 0;
        self.line_zero = true;
    }
}

/// Logical bytes of `data` (one item) lying in all-zero lines of `line_size` bytes.
pub fn zero_line_bytes(data: &[u8], line_size: usize) -> u64 {
    let mut c = ZeroLineCounter::new(line_size);
    c.feed_item(data);
    c.zero_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, byte by byte.
    fn reference(data: &[u8], line_size: usize) -> u64 {
        data.chunks(line_size)
            .filter(|l| l.iter().all(|&b| b == 0))
            .map(|l| l.len() as u64)
            .sum()
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        // Runs of zeros and non-zeros of varying length.
        let mut rng = testkit::Rng::new(seed);
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            let run = rng.index(200) + 1;
            let byte = if rng.one_in(2) { 0 } else { rng.byte() | 1 };
            v.resize(v.len() + run.min(len - v.len()), byte);
        }
        v
    }

    #[test]
    fn whole_and_partial_lines() {
        assert_eq!(zero_line_bytes(&[], 16), 0);
        assert_eq!(zero_line_bytes(&[0; 16], 16), 16);
        assert_eq!(
            zero_line_bytes(&[0; 40], 16),
            40,
            "partial last line counts 8"
        );
        let mut d = vec![0u8; 40];
        d[39] = 1;
        assert_eq!(zero_line_bytes(&d, 16), 32, "non-zero partial last line");
        d[0] = 1;
        assert_eq!(zero_line_bytes(&d, 16), 16);
        // Alignment is per item: 8 zero bytes then 16 zeros then 1 is not a zero line at 16.
        let mut e = vec![7u8; 8];
        e.extend_from_slice(&[0; 16]);
        assert_eq!(
            zero_line_bytes(&e, 16),
            8,
            "line 1 is bytes 16..24 (zero, partial)"
        );
        assert_eq!(zero_line_bytes(&e, 8), 16);
        assert_eq!(zero_line_bytes(&e, 32), 0);
    }

    #[test]
    fn matches_reference_for_every_line_size() {
        for seed in 1..6 {
            let data = pattern(50_000 + seed as usize * 777, seed);
            for shift in 4..=12 {
                let ls = 1usize << shift;
                assert_eq!(
                    zero_line_bytes(&data, ls),
                    reference(&data, ls),
                    "seed {seed} line size {ls}"
                );
            }
        }
    }

    #[test]
    fn chunking_does_not_matter() {
        let data = pattern(20_000, 9);
        for ls in [16, 64, 256, 4096] {
            let want = reference(&data, ls);
            for chunk in [1, 3, 15, 16, 17, 100, 4096, 5000] {
                let mut c = ZeroLineCounter::new(ls);
                for part in data.chunks(chunk) {
                    c.feed(part);
                }
                c.finish_item();
                assert_eq!(c.zero_bytes(), want, "line size {ls} chunk {chunk}");
            }
        }
    }

    #[test]
    fn items_are_aligned_separately() {
        let a = [0u8; 10];
        let b = [0u8; 6];
        let mut c = ZeroLineCounter::new(16);
        c.feed(&a);
        c.finish_item();
        c.feed(&[1]);
        c.feed(&b);
        c.finish_item();
        // Item 1: one partial zero line of 10 bytes; item 2: one partial non-zero line.
        assert_eq!(c.zero_bytes(), 10);
        c.feed(&[0; 5]);
        c.discard_open_line();
        c.finish_item();
        assert_eq!(c.zero_bytes(), 10);
    }

    /// `Config::with_line_size` keeps 2^24 lines, too big an address-space reservation for
    /// 4 KiB lines on machines without overcommit.
    fn small_config(line_size: usize) -> crate::Config {
        crate::Config {
            line_size,
            capacity_lines: 1 << 16,
            map_capacity: 16,
            ..crate::Config::default()
        }
    }

    /// For data that fills whole lines, the memory's own event count agrees.
    #[test]
    fn agrees_with_memory_zero_leaf_count() {
        for ls in [16usize, 64, 512, 4096] {
            let mut data = pattern(64 * 1024, 3);
            data.resize(data.len() + 3 * 4096, 0);
            let mem = crate::Memory::new(small_config(ls)).unwrap();
            let seg = mem.segment(&data).unwrap();
            let stats = mem.stats();
            assert_eq!(stats.logical_bytes, seg.len());
            assert_eq!(
                zero_line_bytes(&data, ls),
                stats.zero_leaf_bytes_interned(),
                "line size {ls}"
            );
        }
    }
}
