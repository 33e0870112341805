//! PASTE's buffer model, as its sources have it (see the project's reference notes on PASTE and
//! netmap; the paper is "PASTE: A Network Programming Interface for Non-Volatile Main Memory").
//!
//! - A pool of fixed 2 KiB buffers in one [`Region`] (DRAM, or a file with hicamp's durability
//!   modes). Buffer `i` sits at `i * 2048`; indices 0 and 1 are reserved. The first 32 bytes of
//!   every buffer belong to the kernel; the frame is written at offset 32, so the TCP payload
//!   starts at `32 + doff` (`doff` = 66: Ethernet, IPv4, TCP with timestamps).
//! - Rings of 16-byte slots `{buf_idx, len, flags, ptr}` (`ptr` packs the netmap offset in bits
//!   0-7, the socket fd in bits 8-39 and `doff` in bits 40-49). The application owns
//!   `[head, tail)` of the RX ring and releases a batch by moving `head` to `tail`.
//! - Extra buffers: a list linked through each buffer's first u32 (netmap's `ni_bufs_head`),
//!   turned by the application into an array used circularly. To keep a buffer, the
//!   application swaps the RX slot's index with the next extra buffer and sets
//!   [`NS_BUF_CHANGED`]; the oldest held buffer goes back to the ring (it is overwritten by a
//!   later frame), which is PASTE's circular reuse.
//! - The zero-copy WAL ([`ZeroCopyLog`]): flush the body in place line by line, append the
//!   8-byte record `buf_idx<<32 | off<<16 | len` to a circular log and flush it; one fence per
//!   RX batch (plus the emulated latency). "PASTE with copy" ([`CopyLog`]) memcpys the body
//!   behind an 8-byte length slot in the log, flushes the body's lines, writes the length and
//!   flushes it.

use std::io;

use thiserror::Error;

use super::region::{Region, CACHE_LINE};

/// Size of every buffer.
pub const BUF_SIZE: usize = 2048;
/// Bytes at the start of each buffer that belong to the kernel.
pub const HEADROOM: usize = 32;
/// Buffers 0 and 1 are reserved (netmap).
pub const RESERVED_BUFS: u32 = 2;
/// The slot flag: the application put another buffer in this slot.
pub const NS_BUF_CHANGED: u16 = 0x1;
/// Bytes of one zero-copy log record.
pub const RECORD_LEN: usize = 8;

/// Errors of the PASTE model.
#[derive(Debug, Error)]
pub enum PasteError {
    /// The region could not be made or flushed.
    #[error("PASTE region: {0}")]
    Io(#[from] io::Error),
    /// The pool has fewer buffers than the rings and the extra list need.
    #[error("buffer pool of {have} buffers is too small: {need} needed")]
    PoolTooSmall {
        /// Buffers needed.
        need: u64,
        /// Buffers the region holds.
        have: u64,
    },
    /// No free RX slot: the application has not released its batch.
    #[error("RX ring full")]
    RingFull,
    /// A frame longer than a buffer's room.
    #[error("frame of {0} bytes does not fit a 2 KiB buffer")]
    FrameTooLong(usize),
    /// A slot index the application does not own.
    #[error("slot {0} is not in the application's part of the ring")]
    NotOwned(u32),
    /// The application has no extra buffers to swap in.
    #[error("no extra buffers")]
    NoExtraBuffers,
    /// A slot carries a buffer index outside the pool, or a reserved one.
    #[error("bad buffer index {0}")]
    BadBuffer(u32),
    /// A body that does not fit a record's 16-bit fields or its buffer.
    #[error("body at {off}+{len} does not fit a log record")]
    BadRecord {
        /// Offset in the buffer.
        off: usize,
        /// Length.
        len: usize,
    },
}

/// One netmap slot (16 bytes in the ABI).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    /// Buffer index.
    pub buf_idx: u32,
    /// `doff + payload` bytes.
    pub len: u16,
    /// `NS_*` flags.
    pub flags: u16,
    /// PASTE's packed netmap offset, fd and `doff`.
    pub ptr: u64,
}

impl Slot {
    /// Packs PASTE's `ptr`: offset bits 0-7, fd bits 8-39, doff bits 40-49.
    pub fn pack_ptr(offset: u8, fd: u32, doff: u16) -> u64 {
        u64::from(offset) | (u64::from(fd) << 8) | ((u64::from(doff) & 0x3ff) << 40)
    }
    /// The netmap offset (32).
    pub fn offset(&self) -> usize {
        (self.ptr & 0xff) as usize
    }
    /// The socket fd.
    pub fn fd(&self) -> u32 {
        ((self.ptr >> 8) & 0xffff_ffff) as u32
    }
    /// The header length.
    pub fn doff(&self) -> usize {
        ((self.ptr >> 40) & 0x3ff) as usize
    }
}

/// A ring of slots with netmap's head/cur/tail.
#[derive(Debug, Clone)]
pub struct Ring {
    /// The slots.
    pub slots: Vec<Slot>,
    /// First slot the application owns.
    pub head: u32,
    /// The application's cursor.
    pub cur: u32,
    /// One past the last slot the application owns.
    pub tail: u32,
}

impl Ring {
    fn new(n: u32) -> Ring {
        Ring {
            slots: vec![Slot::default(); n as usize],
            head: 0,
            cur: 0,
            tail: 0,
        }
    }
    fn next(&self, i: u32) -> u32 {
        if i + 1 == self.slots.len() as u32 {
            0
        } else {
            i + 1
        }
    }
    /// Slots the application owns, `head..tail` in ring order.
    pub fn owned(&self) -> Vec<u32> {
        let mut v = Vec::new();
        let mut i = self.head;
        while i != self.tail {
            v.push(i);
            i = self.next(i);
        }
        v
    }
    fn owns(&self, i: u32) -> bool {
        let n = self.slots.len() as u32;
        let span = (self.tail + n - self.head) % n;
        i < n && (i + n - self.head) % n < span
    }
}

/// Counters of the PASTE model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PasteCounts {
    /// Frames the "NIC" wrote into RX buffers (a DMA write on hardware, a memcpy here; not a
    /// CPU copy of the model).
    pub rx_frames: u64,
    /// Buffers swapped out of the RX ring with `NS_BUF_CHANGED`.
    pub swaps: u64,
    /// Payload bytes the application memcpy'd (the copy WAL's bodies).
    pub copied_bytes: u64,
    /// Response bytes written into TX buffers.
    pub tx_bytes_written: u64,
    /// Frames sent.
    pub tx_frames: u64,
}

/// The pool, its RX and TX rings and the application's extra buffers: one PASTE port.
#[derive(Debug)]
pub struct PastePort {
    /// The buffer pool.
    pub pool: Region,
    nbufs: u32,
    /// RX ring.
    pub rx: Ring,
    /// TX ring.
    pub tx: Ring,
    /// The application's extra buffers (the array it made from the linked list).
    extra: Vec<u32>,
    /// Next extra buffer to swap in (wraps: circular reuse).
    next_extra: usize,
    /// Counters.
    pub counts: PasteCounts,
}

/// Buffers a port of these sizes needs (reserved ones included).
pub fn buffers_needed(rx_slots: u32, tx_slots: u32, extra: u32) -> u64 {
    u64::from(RESERVED_BUFS) + u64::from(rx_slots) + u64::from(tx_slots) + u64::from(extra)
}

impl PastePort {
    /// A port over `pool` (its length a multiple of 2 KiB) with rings of `rx_slots` and
    /// `tx_slots` and `extra` extra buffers, handed over as netmap does: a list linked through
    /// each buffer's first u32, which the application walks into an array.
    pub fn new(pool: Region, rx_slots: u32, tx_slots: u32, extra: u32) -> Result<Self, PasteError> {
        let have = (pool.len() / BUF_SIZE) as u64;
        let need = buffers_needed(rx_slots, tx_slots, extra);
        if have < need || rx_slots < 2 || tx_slots < 2 || have > u64::from(u32::MAX) {
            return Err(PasteError::PoolTooSmall { need, have });
        }
        let mut port = PastePort {
            pool,
            nbufs: have as u32,
            rx: Ring::new(rx_slots),
            tx: Ring::new(tx_slots),
            extra: Vec::new(),
            next_extra: 0,
            counts: PasteCounts::default(),
        };
        let mut next = RESERVED_BUFS;
        for s in port.rx.slots.iter_mut().chain(port.tx.slots.iter_mut()) {
            s.buf_idx = next;
            next += 1;
        }
        // The kernel links the extra buffers through their first u32 (0 ends the list).
        let first = next;
        for i in 0..extra {
            let b = first + i;
            let link = if i + 1 == extra { 0 } else { b + 1 };
            let off = b as usize * BUF_SIZE;
            port.pool.bytes_mut()[off..off + 4].copy_from_slice(&link.to_le_bytes());
        }
        let head = if extra == 0 { 0 } else { first };
        // The application walks the list (netmap_if's ni_bufs_head).
        let mut b = head;
        while b != 0 {
            port.extra.push(b);
            let off = b as usize * BUF_SIZE;
            b = u32::from_le_bytes(port.pool.bytes()[off..off + 4].try_into().expect("4"));
        }
        Ok(port)
    }

    /// Buffers in the pool.
    pub fn buffers(&self) -> u32 {
        self.nbufs
    }

    /// The application's extra buffers.
    pub fn extra_count(&self) -> usize {
        self.extra.len()
    }

    /// Byte offset of buffer `idx` in the pool.
    pub fn buf_off(&self, idx: u32) -> Result<usize, PasteError> {
        if idx < RESERVED_BUFS || idx >= self.nbufs {
            return Err(PasteError::BadBuffer(idx));
        }
        Ok(idx as usize * BUF_SIZE)
    }

    /// The kernel's side of RX: the frame (headers of `doff` bytes, then the TCP payload) goes
    /// into the buffer of the next free slot at the netmap offset, and the slot to the
    /// application. The write is the NIC's DMA; the kernel TCP stack is not modelled.
    pub fn deliver(&mut self, frame: &[u8], fd: u32, doff: u16) -> Result<u32, PasteError> {
        if frame.len() > BUF_SIZE - HEADROOM || usize::from(doff) > frame.len() {
            return Err(PasteError::FrameTooLong(frame.len()));
        }
        let i = self.rx.tail;
        if self.rx.next(i) == self.rx.head {
            return Err(PasteError::RingFull);
        }
        let idx = self.rx.slots[i as usize].buf_idx;
        let off = self.buf_off(idx)? + HEADROOM;
        self.pool.bytes_mut()[off..off + frame.len()].copy_from_slice(frame);
        let s = &mut self.rx.slots[i as usize];
        s.len = frame.len() as u16;
        s.flags = 0;
        s.ptr = Slot::pack_ptr(HEADROOM as u8, fd, doff);
        self.rx.tail = self.rx.next(i);
        self.counts.rx_frames += 1;
        Ok(i)
    }

    /// The TCP payload of RX slot `i`: `(offset in the pool, length)`.
    pub fn payload(&self, i: u32) -> Result<(usize, usize), PasteError> {
        if !self.rx.owns(i) {
            return Err(PasteError::NotOwned(i));
        }
        let s = self.rx.slots[i as usize];
        let off = self.buf_off(s.buf_idx)? + s.offset() + s.doff();
        Ok((off, usize::from(s.len) - s.doff()))
    }

    /// Keeps the buffer of RX slot `i`: swaps in the next extra buffer (circularly: the one
    /// swapped in is the oldest held buffer once the list has gone round) and sets
    /// [`NS_BUF_CHANGED`]. Returns the index of the buffer now held.
    pub fn keep(&mut self, i: u32) -> Result<u32, PasteError> {
        if !self.rx.owns(i) {
            return Err(PasteError::NotOwned(i));
        }
        if self.extra.is_empty() {
            return Err(PasteError::NoExtraBuffers);
        }
        let e = self.next_extra;
        let s = &mut self.rx.slots[i as usize];
        let held = s.buf_idx;
        s.buf_idx = self.extra[e];
        s.flags |= NS_BUF_CHANGED;
        self.extra[e] = held;
        self.next_extra = (e + 1) % self.extra.len();
        self.counts.swaps += 1;
        Ok(held)
    }

    /// Releases every RX slot the application owns (netmap's `head = tail` and the next
    /// poll); the kernel takes the changed buffers and clears [`NS_BUF_CHANGED`].
    pub fn release_rx(&mut self) -> Result<(), PasteError> {
        for i in self.rx.owned() {
            let s = &mut self.rx.slots[i as usize];
            if s.flags & NS_BUF_CHANGED != 0 {
                let idx = s.buf_idx;
                if idx < RESERVED_BUFS || idx >= self.nbufs {
                    return Err(PasteError::BadBuffer(idx));
                }
                s.flags &= !NS_BUF_CHANGED;
            }
        }
        self.rx.head = self.rx.tail;
        self.rx.cur = self.rx.tail;
        Ok(())
    }

    /// Writes a reply into the next TX slot's buffer at `32 + doff` (the kernel fills the
    /// headers in the headroom); `Err(RingFull)` when no slot is free.
    pub fn send(&mut self, payload: &[u8], fd: u32, doff: u16) -> Result<(), PasteError> {
        let i = self.tx.head;
        if self.tx.next(i) == self.tx.tail {
            return Err(PasteError::RingFull);
        }
        if HEADROOM + usize::from(doff) + payload.len() > BUF_SIZE {
            return Err(PasteError::FrameTooLong(payload.len()));
        }
        let off = self.buf_off(self.tx.slots[i as usize].buf_idx)? + HEADROOM + usize::from(doff);
        self.pool.bytes_mut()[off..off + payload.len()].copy_from_slice(payload);
        let s = &mut self.tx.slots[i as usize];
        s.len = doff + payload.len() as u16;
        s.ptr = Slot::pack_ptr(HEADROOM as u8, fd, doff);
        self.tx.head = self.tx.next(i);
        self.counts.tx_bytes_written += payload.len() as u64;
        Ok(())
    }

    /// The kernel's TX: every queued slot is sent (headers written into the headroom, which the
    /// model skips) and its slot given back.
    pub fn txsync(&mut self) -> usize {
        let mut n = 0;
        while self.tx.tail != self.tx.head {
            self.tx.tail = self.tx.next(self.tx.tail);
            n += 1;
        }
        self.counts.tx_frames += n as u64;
        n
    }

    /// Every buffer index the port references (rings and extra list), for leak checks.
    pub fn referenced_buffers(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .rx
            .slots
            .iter()
            .chain(self.tx.slots.iter())
            .map(|s| s.buf_idx)
            .chain(self.extra.iter().copied())
            .collect();
        v.sort_unstable();
        v
    }

    /// Buffers held by the application (extra buffers that hold kept data).
    pub fn held_buffers(&self) -> u64 {
        self.counts.swaps.min(self.extra.len() as u64)
    }
}

/// Encodes a zero-copy log record.
pub fn encode_record(buf_idx: u32, off: usize, len: usize) -> Result<u64, PasteError> {
    if off > 0xffff || len > 0xffff || off + len > BUF_SIZE {
        return Err(PasteError::BadRecord { off, len });
    }
    Ok((u64::from(buf_idx) << 32) | ((off as u64) << 16) | len as u64)
}

/// Decodes a zero-copy log record: `(buf_idx, off, len)`.
pub fn decode_record(r: u64) -> (u32, usize, usize) {
    (
        (r >> 32) as u32,
        ((r >> 16) & 0xffff) as usize,
        (r & 0xffff) as usize,
    )
}

/// PASTE's zero-copy WAL: a circular log of 8-byte records pointing into held buffers.
#[derive(Debug)]
pub struct ZeroCopyLog {
    /// The log.
    pub log: Region,
    pos: usize,
    /// Records appended.
    pub records: u64,
}

impl ZeroCopyLog {
    /// A log of `log.len() / 8` records.
    pub fn new(log: Region) -> ZeroCopyLog {
        ZeroCopyLog {
            log,
            pos: 0,
            records: 0,
        }
    }

    /// Record slots.
    pub fn capacity(&self) -> usize {
        self.log.len() / RECORD_LEN
    }

    /// Logs the body of RX slot `i` (`body_off` bytes into its TCP payload, `len` bytes):
    /// flushes it in place line by line, appends and flushes the record, and keeps the buffer
    /// (swap with the next extra buffer). The caller fences once per batch.
    pub fn append(
        &mut self,
        port: &mut PastePort,
        i: u32,
        body_off: usize,
        len: usize,
    ) -> Result<u64, PasteError> {
        let (pay, pay_len) = port.payload(i)?;
        if body_off + len > pay_len {
            return Err(PasteError::BadRecord { off: body_off, len });
        }
        let idx = port.rx.slots[i as usize].buf_idx;
        let base = port.buf_off(idx)?;
        let off_in_buf = pay + body_off - base;
        let rec = encode_record(idx, off_in_buf, len)?;
        port.pool.flush(pay + body_off, len)?;
        let at = self.pos * RECORD_LEN;
        self.log.bytes_mut()[at..at + RECORD_LEN].copy_from_slice(&rec.to_le_bytes());
        self.log.flush(at, RECORD_LEN)?;
        self.pos = (self.pos + 1) % self.capacity().max(1);
        self.records += 1;
        port.keep(i)?;
        Ok(rec)
    }

    /// Records in the log (non-zero slots), in slot order from the oldest (with the position
    /// that the next append writes).
    pub fn scan(log: &[u8]) -> Vec<u64> {
        log.chunks_exact(RECORD_LEN)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .filter(|&r| r != 0)
            .collect()
    }
}

/// "PASTE with copy": bodies memcpy'd into a circular log, each behind an 8-byte length slot,
/// entries aligned to cache lines.
#[derive(Debug)]
pub struct CopyLog {
    /// The log.
    pub log: Region,
    pos: usize,
    /// Records appended.
    pub records: u64,
    /// Body bytes copied into the log.
    pub copied_bytes: u64,
}

/// Bytes of one copy-log entry for a body of `len` bytes.
pub fn copy_entry_len(len: usize) -> usize {
    (8 + len).div_ceil(CACHE_LINE) * CACHE_LINE
}

impl CopyLog {
    /// A log over `log`.
    pub fn new(log: Region) -> CopyLog {
        CopyLog {
            log,
            pos: 0,
            records: 0,
            copied_bytes: 0,
        }
    }

    /// Copies `body` into the log, flushes its lines, writes its length and flushes that
    /// (PASTE's order); the caller fences.
    pub fn append(&mut self, body: &[u8]) -> Result<(), PasteError> {
        let n = copy_entry_len(body.len());
        if n > self.log.len() {
            return Err(PasteError::BadRecord {
                off: 0,
                len: body.len(),
            });
        }
        if self.pos + n > self.log.len() {
            self.pos = 0;
        }
        let at = self.pos;
        self.log.bytes_mut()[at + 8..at + 8 + body.len()].copy_from_slice(body);
        self.log.flush(at + 8, body.len())?;
        self.log.bytes_mut()[at..at + 8].copy_from_slice(&(body.len() as u64).to_le_bytes());
        self.log.flush(at, 8)?;
        self.pos += n;
        self.records += 1;
        self.copied_bytes += body.len() as u64;
        Ok(())
    }

    /// The bodies in a copy log, in log order (entries with a length of 0 or past the end are
    /// where scanning stops).
    pub fn scan(log: &[u8], body_len: usize) -> Vec<&[u8]> {
        let n = copy_entry_len(body_len);
        let mut v = Vec::new();
        let mut at = 0;
        while at + n <= log.len() {
            let len = u64::from_le_bytes(log[at..at + 8].try_into().expect("8")) as usize;
            if len == 0 || len != body_len {
                break;
            }
            v.push(&log[at + 8..at + 8 + len]);
            at += n;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use hicamp::Durability;

    use super::*;

    fn port(extra: u32) -> PastePort {
        let n = buffers_needed(8, 8, extra) as usize;
        let pool = Region::anon(n * BUF_SIZE, Durability::CacheLine, 0).unwrap();
        PastePort::new(pool, 8, 8, extra).unwrap()
    }

    fn frame(tag: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![0xEE; 66];
        f.extend(std::iter::repeat(tag).take(payload));
        f
    }

    #[test]
    fn ptr_packing_round_trips() {
        let p = Slot::pack_ptr(32, 123_456, 66);
        let s = Slot {
            ptr: p,
            ..Slot::default()
        };
        assert_eq!((s.offset(), s.fd(), s.doff()), (32, 123_456, 66));
    }

    #[test]
    fn payload_sits_at_32_plus_doff() {
        let mut p = port(4);
        let i = p.deliver(&frame(7, 100), 3, 66).unwrap();
        let (off, len) = p.payload(i).unwrap();
        let idx = p.rx.slots[i as usize].buf_idx;
        assert_eq!(off, idx as usize * BUF_SIZE + 32 + 66);
        assert_eq!(len, 100);
        assert!(p.pool.bytes()[off..off + len].iter().all(|&b| b == 7));
    }

    #[test]
    fn swap_sets_buf_changed_and_release_clears_it() {
        let mut p = port(4);
        let i = p.deliver(&frame(1, 10), 3, 66).unwrap();
        let before = p.rx.slots[i as usize].buf_idx;
        let held = p.keep(i).unwrap();
        assert_eq!(held, before);
        let s = p.rx.slots[i as usize];
        assert_ne!(s.buf_idx, before);
        assert_eq!(s.flags & NS_BUF_CHANGED, NS_BUF_CHANGED);
        p.release_rx().unwrap();
        assert_eq!(p.rx.slots[i as usize].flags & NS_BUF_CHANGED, 0);
        // The slot is no longer the application's.
        assert!(matches!(p.keep(i), Err(PasteError::NotOwned(_))));
    }

    #[test]
    fn ring_full_is_an_error() {
        let mut p = port(1);
        for _ in 0..7 {
            p.deliver(&frame(1, 10), 1, 66).unwrap();
        }
        assert!(matches!(
            p.deliver(&frame(1, 10), 1, 66),
            Err(PasteError::RingFull)
        ));
        assert!(matches!(
            p.deliver(&vec![0; 2100], 1, 66),
            Err(PasteError::FrameTooLong(_))
        ));
    }

    #[test]
    fn pool_too_small_is_an_error() {
        let pool = Region::anon(10 * BUF_SIZE, Durability::None, 0).unwrap();
        assert!(matches!(
            PastePort::new(pool, 8, 8, 4),
            Err(PasteError::PoolTooSmall { .. })
        ));
    }

    #[test]
    fn circular_reuse_recycles_the_oldest_held_buffer() {
        let extra = 3;
        let mut p = port(extra);
        let log = Region::anon(64 * RECORD_LEN, Durability::CacheLine, 0).unwrap();
        let mut wal = ZeroCopyLog::new(log);
        let mut held = Vec::new();
        for k in 0..6u8 {
            let i = p.deliver(&frame(k, 50), 1, 66).unwrap();
            let idx = p.rx.slots[i as usize].buf_idx;
            wal.append(&mut p, i, 0, 50).unwrap();
            held.push(idx);
            p.release_rx().unwrap();
        }
        // The fourth swap handed the first held buffer back to the ring.
        let in_rx: Vec<u32> = p.rx.slots.iter().map(|s| s.buf_idx).collect();
        assert!(in_rx.contains(&held[0]));
        // The log still names it: its record is stale once a new frame lands there.
        let recs = ZeroCopyLog::scan(wal.log.bytes());
        assert_eq!(recs.len(), 6);
        assert_eq!(decode_record(recs[0]).0, held[0]);
    }

    #[test]
    fn zero_copy_wal_flushes_in_place_and_copies_nothing() {
        let mut p = port(8);
        let log = Region::anon(64 * RECORD_LEN, Durability::CacheLine, 0).unwrap();
        let mut wal = ZeroCopyLog::new(log);
        let i = p.deliver(&frame(9, 1156), 1, 66).unwrap();
        let rec = wal.append(&mut p, i, 132, 1024).unwrap();
        let (idx, off, len) = decode_record(rec);
        assert_eq!((off, len), (32 + 66 + 132, 1024));
        let b = idx as usize * BUF_SIZE + off;
        assert!(p.pool.bytes()[b..b + len].iter().all(|&x| x == 9));
        assert_eq!(p.counts.copied_bytes, 0);
        // 1024 bytes at offset 230 of a line-aligned buffer: 17 lines, and the record's line.
        assert_eq!(p.pool.counts.flushed_lines, 17);
        assert_eq!(wal.log.counts.flushed_lines, 1);
    }

    #[test]
    fn copy_wal_copies_the_body() {
        let log = Region::anon(4 * copy_entry_len(1024), Durability::CacheLine, 0).unwrap();
        let mut wal = CopyLog::new(log);
        for k in 0..6u8 {
            wal.append(&[k; 1024]).unwrap();
        }
        assert_eq!(wal.copied_bytes, 6 * 1024);
        // Wrapped: entries 4 and 5 overwrote 0 and 1.
        let bodies = CopyLog::scan(wal.log.bytes(), 1024);
        assert_eq!(bodies.len(), 4);
        assert_eq!(bodies[0][0], 4);
        assert_eq!(bodies[3][0], 3);
    }

    #[test]
    fn record_fields_are_checked() {
        assert!(encode_record(5, 2000, 100).is_err());
        assert!(encode_record(5, 0, 70_000).is_err());
        assert_eq!(
            decode_record(encode_record(7, 230, 1024).unwrap()),
            (7, 230, 1024)
        );
    }

    proptest::proptest! {
        #[test]
        fn record_encoding_round_trips(idx in 2u32.., off in 0usize..2048, len in 0usize..2048) {
            if off + len <= BUF_SIZE {
                let r = encode_record(idx, off, len).unwrap();
                proptest::prop_assert_eq!(decode_record(r), (idx, off, len));
            } else {
                proptest::prop_assert!(encode_record(idx, off, len).is_err());
            }
        }

        #[test]
        fn no_buffer_leaks_or_duplicates(ops in proptest::collection::vec((0u8..3, 1usize..200), 1..200), extra in 1u32..6) {
            let mut p = port(extra);
            let all_before = p.referenced_buffers();
            for (op, len) in ops {
                match op {
                    0 => { let _ = p.deliver(&frame(1, len), 1, 66); }
                    1 => {
                        if let Some(&i) = p.rx.owned().first() {
                            p.keep(i).unwrap();
                        }
                    }
                    _ => p.release_rx().unwrap(),
                }
                let now = p.referenced_buffers();
                proptest::prop_assert_eq!(&now, &all_before);
            }
        }
    }
}
