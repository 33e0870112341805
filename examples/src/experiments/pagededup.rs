//! The baseline: deduplication at page granularity, the Linux KSM model.
//!
//! KSM (kernel same-page merging) scans the pages of mergeable mappings, merges pages whose
//! contents are byte-for-byte equal into one write-protected copy, and (with `use_zero_pages`)
//! maps all-zero pages to the kernel's zero page. This module counts what that would achieve on
//! a set of inputs:
//!
//! - Each [`PageDedup::add`] call is one file or mapping: it is cut into pages from its own
//!   offset 0, and a last partial page is zero-padded, as a file mapped into memory is.
//! - A page is a zero page iff all its bytes are 0 (the padding included). Zero pages cost no
//!   physical memory.
//! - Every other page is stored once per distinct content. Equality is exact: pages are hashed
//!   into buckets, and a hash match is always confirmed by comparing the full bytes against the
//!   distinct pages kept so far. A hash alone never decides.
//! - KSM's metadata: [`KSM_METADATA_PER_PAGE`] = 64 bytes per scanned page (every page,
//!   zero pages included). This is the figure the project's anchors use for KSM (one
//!   `struct rmap_item` per scanned page, plus its share of the stable/unstable tree nodes;
//!   Barker et al., "An empirical study of memory sharing in virtual machines", USENIX ATC'12),
//!   kept per page whatever the page size.

use std::collections::HashMap;
use std::fmt;

use hicamp::footprint::is_zero;

/// The page size of the KSM model: 4 KiB.
pub const DEFAULT_PAGE_SIZE: usize = 4096;

/// KSM metadata per scanned page, bytes (see the module documentation for the source).
pub const KSM_METADATA_PER_PAGE: u64 = 64;

/// What page-granularity deduplication achieves on the data added so far.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PageDedupReport {
    /// Page size, bytes.
    pub page_size: u64,
    /// Bytes added (the data itself, without the padding of last partial pages).
    pub logical_bytes: u64,
    /// Pages scanned (partial last pages count as whole pages).
    pub pages: u64,
    /// Pages whose bytes are all zero (after padding).
    pub zero_pages: u64,
    /// Distinct non-zero pages.
    pub unique_pages: u64,
    /// Memory holding the distinct pages: `unique_pages * page_size`.
    pub physical_bytes: u64,
    /// KSM metadata: `pages * KSM_METADATA_PER_PAGE`.
    pub metadata_bytes: u64,
    /// `logical_bytes / (physical_bytes + metadata_bytes)`; zero pages are free, like the
    /// kernel's zero page. 1.0 when nothing was added (the denominator is 0 exactly then).
    pub dedup_ratio: f64,
    /// `(logical_bytes - bytes of zero pages) / (physical_bytes + metadata_bytes)`: the saving
    /// that is not merely zero pages. The bytes of a zero page are its data bytes, not its
    /// padding. 1.0 when nothing was added; 0.0 when everything added was zero (then there is
    /// metadata but nothing non-zero to store).
    pub dedup_ratio_excl_zero: f64,
}

impl PageDedupReport {
    /// The report of `pages` pages of `page_size` bytes covering `logical_bytes`, of which
    /// `zero_pages` are all zero (covering `zero_page_bytes` of data) and `unique_pages` are
    /// distinct non-zero pages: the KSM cost model of this module.
    pub fn new(
        page_size: u64,
        logical_bytes: u64,
        pages: u64,
        zero_pages: u64,
        unique_pages: u64,
        zero_page_bytes: u64,
    ) -> PageDedupReport {
        let physical_bytes = unique_pages * page_size;
        let metadata_bytes = pages * KSM_METADATA_PER_PAGE;
        let cost = physical_bytes + metadata_bytes;
        let ratio = |bytes: u64| {
            if cost == 0 {
                1.0
            } else {
                bytes as f64 / cost as f64
            }
        };
        PageDedupReport {
            page_size,
            logical_bytes,
            pages,
            zero_pages,
            unique_pages,
            physical_bytes,
            metadata_bytes,
            dedup_ratio: ratio(logical_bytes),
            dedup_ratio_excl_zero: ratio(logical_bytes - zero_page_bytes),
        }
    }
}

/// A page-content hash function.
type HashFn = fn(&[u8]) -> u64;

/// Streaming page-granularity deduplication: add items one by one, then [`report`].
///
/// [`report`]: PageDedup::report
pub struct PageDedup {
    page_size: usize,
    hash: HashFn,
    logical_bytes: u64,
    pages: u64,
    zero_pages: u64,
    /// Data bytes (without padding) covered by zero pages.
    zero_page_bytes: u64,
    /// The distinct non-zero pages, back to back; page `i` is at `i * page_size`.
    store: Vec<u8>,
    /// Page hash -> indices of the distinct pages with that hash.
    index: HashMap<u64, Vec<usize>>,
    /// Holds a zero-padded last partial page.
    scratch: Vec<u8>,
}

impl fmt::Debug for PageDedup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageDedup")
            .field("page_size", &self.page_size)
            .field("logical_bytes", &self.logical_bytes)
            .field("pages", &self.pages)
            .field("zero_pages", &self.zero_pages)
            .field("unique_pages", &self.unique_pages())
            .finish_non_exhaustive()
    }
}

impl PageDedup {
    /// An empty deduplicator for pages of `page_size` bytes (4096 for KSM).
    ///
    /// # Panics
    /// If `page_size` is 0.
    pub fn new(page_size: usize) -> Self {
        Self::with_hash(page_size, page_hash)
    }

    fn with_hash(page_size: usize, hash: HashFn) -> Self {
        assert!(page_size > 0, "page size must be positive");
        PageDedup {
            page_size,
            hash,
            logical_bytes: 0,
            pages: 0,
            zero_pages: 0,
            zero_page_bytes: 0,
            store: Vec::new(),
            index: HashMap::new(),
            scratch: vec![0; page_size],
        }
    }

    /// The page size.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Adds one file or mapping: its pages start at its own offset 0, and a last partial page
    /// is zero-padded. Empty data adds nothing.
    pub fn add(&mut self, data: &[u8]) {
        self.logical_bytes += data.len() as u64;
        let mut chunks = data.chunks_exact(self.page_size);
        for page in &mut chunks {
            self.add_page(page, page.len());
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch[..rest.len()].copy_from_slice(rest);
            scratch[rest.len()..].fill(0);
            self.add_page(&scratch, rest.len());
            self.scratch = scratch;
        }
    }

    /// Counts one whole page, of which `data_len` bytes are data (the rest padding).
    fn add_page(&mut self, page: &[u8], data_len: usize) {
        debug_assert_eq!(page.len(), self.page_size);
        self.pages += 1;
        if is_zero(page) {
            self.zero_pages += 1;
            self.zero_page_bytes += data_len as u64;
            return;
        }
        let h = (self.hash)(page);
        let ps = self.page_size;
        let store = &self.store;
        let bucket = self.index.entry(h).or_default();
        if bucket.iter().any(|&i| &store[i * ps..(i + 1) * ps] == page) {
            return;
        }
        bucket.push(self.store.len() / ps);
        self.store.extend_from_slice(page);
    }

    fn unique_pages(&self) -> u64 {
        (self.store.len() / self.page_size) as u64
    }

    /// What deduplication achieves on everything added so far.
    pub fn report(&self) -> PageDedupReport {
        PageDedupReport::new(
            self.page_size as u64,
            self.logical_bytes,
            self.pages,
            self.zero_pages,
            self.unique_pages(),
            self.zero_page_bytes,
        )
    }
}

/// A fast 64-bit hash of a page: 8-byte words mixed by multiply-rotate, finished with the
/// SplitMix64 finalizer. Not cryptographic: equality is always confirmed on the bytes.
fn page_hash(page: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut words = page.chunks_exact(8);
    let mut h = (page.len() as u64).wrapping_mul(K);
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("8-byte chunk"));
        h = (h ^ x).wrapping_mul(K).rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K).rotate_left(29);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (testkit's PRNG), none of them zero.
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut v = testkit::Rng::new(seed).bytes(n);
        v.iter_mut().for_each(|b| *b |= 1);
        v
    }

    #[test]
    fn same_data_twice() {
        let data = noise(1, 10 * DEFAULT_PAGE_SIZE);
        let mut d = PageDedup::new(DEFAULT_PAGE_SIZE);
        d.add(&data);
        let once = d.report();
        assert_eq!(once.pages, 10);
        assert_eq!(once.unique_pages, 10);
        assert_eq!(once.zero_pages, 0);
        d.add(&data);
        let twice = d.report();
        assert_eq!(twice.unique_pages, 10);
        assert_eq!(twice.pages, 20);
        assert_eq!(twice.logical_bytes, 2 * data.len() as u64);
        assert_eq!(twice.physical_bytes, 10 * 4096);
        assert_eq!(twice.metadata_bytes, 20 * 64);
        // 2 x 40960 / (40960 + 1280) = 1.939...
        let expect = 81_920.0 / 42_240.0;
        assert!((twice.dedup_ratio - expect).abs() < 1e-12);
        assert!(twice.dedup_ratio > 1.9 && twice.dedup_ratio < 2.0);
        assert_eq!(twice.dedup_ratio, twice.dedup_ratio_excl_zero);
    }

    #[test]
    fn all_zero_input() {
        let mut d = PageDedup::new(4096);
        d.add(&vec![0; 5 * 4096 + 100]);
        let r = d.report();
        assert_eq!(r.pages, 6);
        assert_eq!(r.zero_pages, 6);
        assert_eq!(r.unique_pages, 0);
        assert_eq!(r.physical_bytes, 0);
        assert_eq!(r.metadata_bytes, 6 * 64);
        assert_eq!(r.dedup_ratio, (5 * 4096 + 100) as f64 / (6 * 64) as f64);
        assert_eq!(r.dedup_ratio_excl_zero, 0.0);
    }

    #[test]
    fn empty() {
        let mut d = PageDedup::new(4096);
        d.add(&[]);
        let r = d.report();
        assert_eq!(r.pages, 0);
        assert_eq!(r.logical_bytes, 0);
        assert_eq!(r.dedup_ratio, 1.0);
        assert_eq!(r.dedup_ratio_excl_zero, 1.0);
    }

    #[test]
    fn partial_page_is_zero_padded() {
        let mut d = PageDedup::new(4096);
        d.add(b"abc");
        let mut page = b"abc".to_vec();
        page.resize(4096, 0);
        d.add(&page);
        let r = d.report();
        assert_eq!(r.pages, 2);
        assert_eq!(r.unique_pages, 1);
        assert_eq!(r.logical_bytes, 4099);
        // Each add starts at its own offset 0: "xabc" is not "abc" shifted.
        d.add(b"xabc");
        assert_eq!(d.report().unique_pages, 2);
        // A non-zero page with a zero tail is not a zero page.
        let mut tail = vec![0u8; 4096];
        tail[4095] = 1;
        d.add(&tail);
        let r = d.report();
        assert_eq!(r.zero_pages, 0);
        assert_eq!(r.unique_pages, 3);
    }

    #[test]
    fn zero_pages_excluded() {
        let mut d = PageDedup::new(4096);
        let mut data = noise(5, 4096);
        data.extend_from_slice(&[0; 3 * 4096]);
        d.add(&data);
        let r = d.report();
        assert_eq!(r.zero_pages, 3);
        assert_eq!(r.unique_pages, 1);
        let cost = (4096 + 4 * 64) as f64;
        assert_eq!(r.dedup_ratio, (4 * 4096) as f64 / cost);
        assert_eq!(r.dedup_ratio_excl_zero, 4096.0 / cost);
    }

    #[test]
    fn collisions_never_merge_distinct_pages() {
        fn constant(_: &[u8]) -> u64 {
            42
        }
        let mut d = PageDedup::with_hash(256, constant);
        let mut reference = PageDedup::new(256);
        // Pages differing in one byte only, and repeats of them.
        let base = noise(9, 256);
        for round in 0..3 {
            for i in 0..50usize {
                let mut page = base.clone();
                page[i * 5] ^= 0x80;
                d.add(&page);
                reference.add(&page);
            }
            let r = d.report();
            assert_eq!(r.unique_pages, 50, "round {round}");
            assert_eq!(r.pages, 50 * (round + 1));
        }
        assert_eq!(d.index.len(), 1, "all pages in one bucket");
        assert_eq!(d.report(), reference.report());
    }

    #[test]
    fn odd_page_size() {
        let mut d = PageDedup::new(100);
        let data = noise(3, 250);
        d.add(&data);
        d.add(&data);
        let r = d.report();
        assert_eq!(r.pages, 6);
        assert_eq!(r.unique_pages, 3);
        assert!(is_zero(&[0; 13]));
        assert!(!is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn debug_output() {
        let mut d = PageDedup::new(4096);
        d.add(&noise(2, 5000));
        let r = d.report();
        assert_eq!(r.page_size, 4096);
        assert!(format!("{d:?}").contains("unique_pages: 2"));
    }
}
