//! A ring of segments: a contiguous range of segment ids with a head and a
//! tail ("Rethinking Network Stack Design with Memory Snapshots", section
//! 3.2).
//!
//! ```text
//!   base                                                    base+size-1
//!   [ . . . . h h h h h h h h N N N N N N N . . . . . . . . . ]
//!             ^head         ^tail ^tail+1      ^head-1  (cyclic)
//!   host owns [head, tail]         NIC owns [tail+1, head-1]
//! ```
//!
//! The host posts slots to the NIC by moving `head` forward (after it has
//! prepared them: a TX segment written, or an RX segment emptied); the NIC
//! gives slots back by moving `tail` forward (after it has transmitted them,
//! or deposited a received frame). Positions are cyclic; three monotonic
//! counters (`posted`, `completed`, `reaped`) make "all" and "none"
//! unambiguous:
//!
//! * the NIC owns counters `[completed, posted)`;
//! * the host owns `[posted, completed + size)`, made of free slots
//!   `[posted, reaped + size)` it may prepare and post, and completed slots
//!   `[reaped + size, completed + size)` it has still to reap or harvest.
//!
//! # The ring's region of the segment map
//!
//! A ring's ids are reserved in the memory's segment map (no other segment
//! can take them), and the entries of that region are held by the ring
//! itself, in a [`SlotMap`]: id `base + i` maps to slot `i`. Only the driver
//! and the device that own the ring ever bind or read those entries, and the
//! ownership rule above already says which of the two may touch a slot, so
//! a slot changes hands with no lock and no map update, as a NIC's descriptor
//! ring is its own memory. The segment a slot holds is still reached by its
//! segment id, and still carries its DMA metadata in its first bytes.

use hicamp::{Segment, SegmentId};

/// Who owns a ring slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The driver: free, or completed and waiting to be reaped.
    Host,
    /// The device: posted and not yet completed.
    Nic,
}

/// Violations of the ownership rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The host tried to post slots it does not have free.
    #[error("post of {want} slots with {free} free")]
    PostOverrun {
        /// Slots asked for.
        want: u32,
        /// Slots free.
        free: u32,
    },
    /// The NIC tried to complete slots it does not own.
    #[error("completion of {want} slots with {owned} owned by the NIC")]
    CompleteOverrun {
        /// Slots asked for.
        want: u32,
        /// Slots the NIC owns.
        owned: u32,
    },
    /// The host tried to reap slots that are not completed.
    #[error("reap of {want} slots with {done} completed")]
    ReapOverrun {
        /// Slots asked for.
        want: u32,
        /// Slots completed and not reaped.
        done: u32,
    },
}

/// A ring of `size` consecutive segment ids starting at `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegRing {
    base: SegmentId,
    size: u32,
    posted: u64,
    completed: u64,
    reaped: u64,
}

impl SegRing {
    /// A ring whose slots all belong to the host.
    pub fn new(base: SegmentId, size: u32) -> SegRing {
        assert!(size > 0, "a ring has at least one slot");
        SegRing {
            base,
            size,
            posted: 0,
            completed: 0,
            reaped: 0,
        }
    }

    fn id(&self, counter: u64) -> SegmentId {
        SegmentId(self.base.get() + (counter % u64::from(self.size)) as u32)
    }

    /// Slots in the ring.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The ids of the ring.
    pub fn ids(&self) -> std::ops::Range<u32> {
        self.base.get()..self.base.get() + self.size
    }

    /// First slot the host owns: the next one it prepares and posts.
    pub fn head(&self) -> SegmentId {
        self.id(self.posted)
    }

    /// Last slot the host owns (the NIC owns everything after it up to
    /// `head - 1`).
    pub fn tail(&self) -> SegmentId {
        self.id(self.completed + u64::from(self.size) - 1)
    }

    /// Slots the NIC owns.
    pub fn nic_owned(&self) -> u32 {
        (self.posted - self.completed) as u32
    }

    /// Slots the host owns.
    pub fn host_owned(&self) -> u32 {
        self.size - self.nic_owned()
    }

    /// Host slots free to prepare and post.
    pub fn free(&self) -> u32 {
        (self.reaped + u64::from(self.size) - self.posted) as u32
    }

    /// Host slots completed by the NIC and not yet reaped.
    pub fn completed_unreaped(&self) -> u32 {
        (self.completed - self.reaped) as u32
    }

    /// The `i`-th free slot from `head` (0 is `head`), if there are that many.
    pub fn free_slot(&self, i: u32) -> Option<SegmentId> {
        (i < self.free()).then(|| self.id(self.posted + u64::from(i)))
    }

    /// The `i`-th NIC slot, oldest first.
    pub fn nic_slot(&self, i: u32) -> Option<SegmentId> {
        (i < self.nic_owned()).then(|| self.id(self.completed + u64::from(i)))
    }

    /// The `i`-th completed, unreaped slot, oldest first.
    pub fn completed_slot(&self, i: u32) -> Option<SegmentId> {
        (i < self.completed_unreaped()).then(|| self.id(self.reaped + u64::from(i)))
    }

    /// Who owns `id` (None when it is not in the ring).
    pub fn owner(&self, id: SegmentId) -> Option<Owner> {
        let pos = u64::from(id.get().checked_sub(self.base.get())?);
        if pos >= u64::from(self.size) {
            return None;
        }
        let n = u64::from(self.size);
        // Distance from the oldest NIC slot, cyclically.
        let from_completed = (pos + n - self.completed % n) % n;
        if from_completed < self.posted - self.completed {
            Some(Owner::Nic)
        } else {
            Some(Owner::Host)
        }
    }

    /// The host hands the next `n` free slots (from `head`) to the NIC.
    pub fn post(&mut self, n: u32) -> Result<(), RingError> {
        if n > self.free() {
            return Err(RingError::PostOverrun {
                want: n,
                free: self.free(),
            });
        }
        self.posted += u64::from(n);
        Ok(())
    }

    /// The NIC gives its `n` oldest slots back (they follow `tail`).
    pub fn complete(&mut self, n: u32) -> Result<(), RingError> {
        if n > self.nic_owned() {
            return Err(RingError::CompleteOverrun {
                want: n,
                owned: self.nic_owned(),
            });
        }
        self.completed += u64::from(n);
        Ok(())
    }

    /// The host takes note of `n` completed slots; they become free.
    pub fn reap(&mut self, n: u32) -> Result<(), RingError> {
        if n > self.completed_unreaped() {
            return Err(RingError::ReapOverrun {
                want: n,
                done: self.completed_unreaped(),
            });
        }
        self.reaped += u64::from(n);
        Ok(())
    }
}

/// The entries of a ring's region of the segment map: the segment each slot
/// id is bound to (`None`: the empty segment).
///
/// Binding a segment to a slot moves one reference into the slot (a
/// snapshot, when the caller cloned it); taking it moves the reference out.
#[derive(Debug)]
pub struct SlotMap {
    base: SegmentId,
    slots: Box<[Option<Segment>]>,
}

impl SlotMap {
    /// The entries of `ring`'s ids, all bound to the empty segment.
    pub fn new(ring: &SegRing) -> SlotMap {
        SlotMap {
            base: ring.base,
            slots: (0..ring.size).map(|_| None).collect(),
        }
    }

    fn index(&self, id: SegmentId) -> usize {
        let i = id.get().wrapping_sub(self.base.get()) as usize;
        assert!(i < self.slots.len(), "{id:?} is not a slot of this ring");
        i
    }

    /// The segment bound to slot `id` (`None`: the empty segment).
    pub fn get(&self, id: SegmentId) -> Option<&Segment> {
        self.slots[self.index(id)].as_ref()
    }

    /// Binds `seg` to slot `id`; returns what the slot held.
    pub fn replace(&mut self, id: SegmentId, seg: Segment) -> Option<Segment> {
        let i = self.index(id);
        self.slots[i].replace(seg)
    }

    /// Takes the segment out of slot `id`, leaving the empty segment.
    pub fn take(&mut self, id: SegmentId) -> Option<Segment> {
        let i = self.index(id);
        self.slots[i].take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paper_rule_holds_at_the_edges() {
        let mut r = SegRing::new(SegmentId(1059), 10);
        assert_eq!(r.host_owned(), 10);
        assert_eq!((r.head(), r.tail()), (SegmentId(1059), SegmentId(1068)));
        r.post(10).unwrap();
        assert_eq!(r.nic_owned(), 10);
        assert!(r.post(1).is_err());
        r.complete(4).unwrap();
        assert_eq!(r.tail(), SegmentId(1062));
        assert_eq!(r.owner(SegmentId(1062)), Some(Owner::Host));
        assert_eq!(r.owner(SegmentId(1063)), Some(Owner::Nic));
        assert_eq!(r.owner(SegmentId(1069)), None);
        assert!(r.reap(5).is_err());
        r.reap(4).unwrap();
        assert_eq!(r.free_slot(0), Some(SegmentId(1059)));
    }

    #[test]
    fn slot_map_binds_ring_ids() {
        let mem = hicamp::Memory::new(hicamp::Config::default()).unwrap();
        let r = SegRing::new(SegmentId(40), 4);
        let mut m = SlotMap::new(&r);
        let a = mem.segment(b"frame a").unwrap();
        assert!(m.get(SegmentId(41)).is_none(), "the empty segment");
        assert!(m.replace(SegmentId(41), a.clone()).is_none());
        assert_eq!(m.get(SegmentId(41)), Some(&a));
        assert_eq!(m.take(SegmentId(41)), Some(a));
        assert!(m.get(SegmentId(41)).is_none());
        let outside = std::panic::catch_unwind(|| SlotMap::new(&r).get(SegmentId(44)).is_none());
        assert!(outside.is_err(), "an id outside the ring is a bug");
    }

    proptest! {
        /// Random producer/consumer schedules: every slot has exactly one
        /// owner, the counts add up, out-of-turn moves are refused, and the
        /// NIC's slots are exactly the ones posted and not completed, oldest
        /// first.
        #[test]
        fn ownership_invariants(size in 1u32..40, ops in prop::collection::vec((0u8..3, 0u32..50), 0..200)) {
            let mut r = SegRing::new(SegmentId(100), size);
            let mut in_flight = std::collections::VecDeque::new();
            let mut done = std::collections::VecDeque::new();
            let mut next = 0u64;
            for (op, n) in ops {
                let before = r.clone();
                match op {
                    0 => match r.post(n) {
                        Ok(()) => for _ in 0..n { in_flight.push_back(next % u64::from(size)); next += 1; },
                        Err(_) => { prop_assert!(n > before.free()); prop_assert_eq!(&r, &before); }
                    },
                    1 => match r.complete(n) {
                        Ok(()) => for _ in 0..n { done.push_back(in_flight.pop_front().unwrap()); },
                        Err(_) => { prop_assert!(n > before.nic_owned()); prop_assert_eq!(&r, &before); }
                    },
                    _ => match r.reap(n) {
                        Ok(()) => for _ in 0..n { done.pop_front(); },
                        Err(_) => { prop_assert!(n > before.completed_unreaped()); prop_assert_eq!(&r, &before); }
                    },
                }
                prop_assert_eq!(r.nic_owned() + r.host_owned(), size);
                prop_assert_eq!(r.free() + r.completed_unreaped(), r.host_owned());
                prop_assert_eq!(r.nic_owned() as usize, in_flight.len());
                let nic: Vec<u64> = r.ids().filter(|i| r.owner(SegmentId(*i)) == Some(Owner::Nic)).map(|i| u64::from(i - 100)).collect();
                let mut want: Vec<u64> = in_flight.iter().copied().collect();
                want.sort();
                prop_assert_eq!(nic, want);
                for (i, pos) in in_flight.iter().enumerate() {
                    prop_assert_eq!(r.nic_slot(i as u32), Some(SegmentId(100 + *pos as u32)));
                }
                for (i, pos) in done.iter().enumerate() {
                    prop_assert_eq!(r.completed_slot(i as u32), Some(SegmentId(100 + *pos as u32)));
                    prop_assert_eq!(r.owner(SegmentId(100 + *pos as u32)), Some(Owner::Host));
                }
                if r.host_owned() > 0 {
                    // head is the first host slot and tail the last.
                    prop_assert_eq!(r.owner(r.head()), Some(Owner::Host));
                    prop_assert_eq!(r.owner(r.tail()), Some(Owner::Host));
                }
            }
        }
    }
}
