//! Out-of-order reassembly.
//!
//! Segments that arrive ahead of `RCV.NXT` are kept as payload snapshots keyed
//! by their receive offset (see [`super::seq`]). Ranges never overlap: a new
//! segment only fills the gaps between what is already held, so duplicated or
//! overlapping retransmissions add nothing and no byte is ever copied (the
//! kept pieces are slices of the arriving payloads).

use std::collections::BTreeMap;

use crate::Payload;

/// The out-of-order queue.
#[derive(Debug)]
pub(crate) struct Assembler {
    ranges: BTreeMap<u64, Payload>,
    bytes: usize,
    max_ranges: usize,
}

/// Why a segment was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooFragmented;

impl Assembler {
    /// An empty queue holding at most `max_ranges` disjoint ranges.
    pub(crate) fn new(max_ranges: usize) -> Assembler {
        Assembler {
            ranges: BTreeMap::new(),
            bytes: 0,
            max_ranges: max_ranges.max(1),
        }
    }

    /// Whether nothing is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of disjoint ranges held.
    #[cfg(test)]
    pub(crate) fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// Keeps the parts of `p` (at offset `start`) not held yet. Returns the
    /// number of new bytes, or `TooFragmented` (and keeps nothing) when that
    /// would exceed the range limit.
    pub(crate) fn insert(&mut self, start: u64, p: &Payload) -> Result<usize, TooFragmented> {
        let end = start + p.len() as u64;
        if p.is_empty() {
            return Ok(0);
        }
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        let mut cursor = start;
        if let Some((&s, q)) = self.ranges.range(..=start).next_back() {
            cursor = cursor.max(s + q.len() as u64);
        }
        for (&s, q) in self.ranges.range(start..end) {
            if s > cursor {
                pieces.push((cursor, s));
            }
            cursor = cursor.max(s + q.len() as u64);
        }
        if cursor < end {
            pieces.push((cursor, end));
        }
        if pieces.is_empty() {
            return Ok(0);
        }
        // Adjacent pieces would not merge in the map, so count conservatively.
        if self.ranges.len() + pieces.len() > self.max_ranges {
            return Err(TooFragmented);
        }
        let mut added = 0;
        for (a, b) in pieces {
            let piece = p.slice((a - start) as usize, (b - start) as usize);
            added += piece.len();
            self.ranges.insert(a, piece);
        }
        self.bytes += added;
        Ok(added)
    }

    /// Takes the next piece that continues at `nxt` (trimmed to start
    /// there), dropping pieces that lie wholly before it.
    pub(crate) fn pop_at(&mut self, nxt: u64) -> Option<Payload> {
        loop {
            let (&s, _) = self.ranges.iter().next()?;
            if s > nxt {
                return None;
            }
            let mut p = self.ranges.remove(&s)?;
            self.bytes -= p.len();
            let end = s + p.len() as u64;
            if end <= nxt {
                continue;
            }
            p.advance((nxt - s) as usize);
            return Some(p);
        }
    }

    /// Drops everything at or after `off` (data past a FIN).
    pub(crate) fn truncate_from(&mut self, off: u64) {
        let tail: Vec<u64> = self.ranges.range(..).map(|(&s, _)| s).collect();
        for s in tail {
            let Some(p) = self.ranges.get_mut(&s) else {
                continue;
            };
            let end = s + p.len() as u64;
            if s >= off {
                self.bytes -= p.len();
                self.ranges.remove(&s);
            } else if end > off {
                let keep = (off - s) as usize;
                self.bytes -= p.len() - keep;
                p.truncate(keep);
            }
        }
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        self.ranges.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hicamp::{Config, Memory};

    #[test]
    fn fills_gaps_only_and_merges_in_order() {
        let mem = Memory::new(Config::default()).unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let whole = Payload::from_bytes(&mem, &data).unwrap();
        let mut a = Assembler::new(16);
        // held: [100,200) and [300,400)
        assert_eq!(a.insert(100, &whole.slice(100, 200)), Ok(100));
        assert_eq!(a.insert(300, &whole.slice(300, 400)), Ok(100));
        // duplicate adds nothing
        assert_eq!(a.insert(120, &whole.slice(120, 180)), Ok(0));
        // spanning both fills [50,100), [200,300), [400,450)
        assert_eq!(a.insert(50, &whole.slice(50, 450)), Ok(200));
        assert_eq!(a.bytes(), 400);
        assert!(a.pop_at(40).is_none());
        let mut out = Vec::new();
        let mut nxt = 60;
        while let Some(p) = a.pop_at(nxt) {
            nxt += p.len() as u64;
            out.extend(p.to_vec());
        }
        assert_eq!(nxt, 450);
        assert_eq!(out, &data[60..450]);
        assert!(a.is_empty());
        assert_eq!(a.bytes(), 0);
    }

    #[test]
    fn range_limit_and_truncate() {
        let mem = Memory::new(Config::default()).unwrap();
        let whole = Payload::from_bytes(&mem, &[7u8; 1000]).unwrap();
        let mut a = Assembler::new(2);
        a.insert(0, &whole.slice(0, 10)).unwrap();
        a.insert(20, &whole.slice(20, 30)).unwrap();
        assert_eq!(a.insert(40, &whole.slice(40, 50)), Err(TooFragmented));
        assert_eq!(a.ranges(), 2);
        a.truncate_from(25);
        assert_eq!(a.bytes(), 15);
        a.truncate_from(5);
        assert_eq!(a.bytes(), 5);
        a.clear();
        assert!(a.is_empty());
    }
}
