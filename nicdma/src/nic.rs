//! The NIC: a TX ring and an RX ring of segments, the DMA engine that moves
//! frames between them and a [`Port`], and the driver's batch interface.
//!
//! ```text
//!  driver (host)                         device (NIC)
//!  tx_prepare(seg) x N  -- snapshot into the free slots at TX head
//!  tx_doorbell()        -- posts them (moves head) ----> dma(): reads each
//!                                                        posted segment through
//!                                                        the memory, gathers
//!                                                        the frame line by line,
//!                                                        port.transmit, writes
//!                                                        the status, completes
//!  tx_reap()            <-- one notification per pass -- (moves tail)
//!  rx_refill()          -- posts empty RX slots -------> dma(): port.receive,
//!                                                        deposits meta + frame
//!                                                        into the slot (line
//!                                                        dedup happens here),
//!                                                        completes
//!  rx_harvest(out)      <-- one notification per pass --
//!    the RX segments move to the stack
//! ```
//!
//! A ring segment holds [`DmaMeta`] at offset 0 and the frame at
//! `frame_off`; the bytes between are headroom for protocol headers.
//!
//! # TX slots: frame segments and inline descriptors
//!
//! A TX slot is a segment id of the ring, and its metadata travels with the
//! slot. It is given one of two things:
//!
//! * a **frame segment** ([`Nic::tx_prepare`]): the [`DmaMeta`], headroom,
//!   the headers and the payload's lines spliced behind them, one segment
//!   the slot's id is bound to (the seed's model; what [`Nic::tx_slots`]
//!   shows, what the sim's wire reads through a cursor);
//! * an **inline descriptor** ([`TxDesc`], [`Nic::tx_prepare_desc`]), as an
//!   mlx5 send WQE carries a frame's L2-L4 headers inline and points at its
//!   payload buffers: the slot's [`DmaMeta`] and header bytes in the slot,
//!   and snapshots of the payload's segments ([`hicamp::SegmentSlice`]s, a
//!   reference each). The slot's id stays bound to the empty segment; the
//!   device gathers [headers, payload lines] into the port's gather list,
//!   and no frame segment is built or released (about 470 instructions per
//!   frame to make and drop one, against 3400 to build and release a 200-byte
//!   reply's owned frame segment). Its status is written into the
//!   descriptor (no copy-on-write), read back at reap as a segment's, and
//!   the descriptor leaves its slot when the slot is reaped, by either reap.
//!
//! ```text
//!  slot id  -> frame segment: | DmaMeta | headroom | headers | payload lines |
//!  slot id  -> TxDesc:        DmaMeta, headers (inline), [SegmentSlice, ...]
//!                                                         '-> payload lines
//! ```
//!
//! # What a frame costs
//!
//! The per-frame work is what a NIC does and no more:
//!
//! * a slot changes hands through the ring's own region of the segment map
//!   ([`SlotMap`]): prepare binds a snapshot (one reference), the device
//!   borrows it, harvest moves an RX slot's segment out to the stack (no
//!   count touched); no map lock, no map entry written;
//! * the TX DMA reads the metadata and gathers the frame's lines through the
//!   memory into a reused gather list, no allocation (an inline
//!   descriptor: its headers, then its payload slices' lines); a port that copies
//!   frames anyway (the sim's wire) reads them straight from the segment
//!   instead ([`Port::transmit_from`]: one pass, whole runs of sibling
//!   lines at a time, no gather list and no second copy);
//! * completion is the tail moving past the slot. A transmitted segment keeps
//!   the status its driver gave it (`PENDING`): the device rewrites the
//!   status, copy-on-write, only to report an error (or to clear a stale
//!   one), so success costs no new line;
//! * the RX DMA interns the frame's lines once, where dedup happens;
//! * notifications and the port's wake-ups are `UnixDatagram` writes only
//!   once someone asked for the file descriptor to poll (an interrupt line
//!   is unmasked only when the driver wants to sleep on it).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use hicamp::{Memory, Segment, SegmentId};

use crate::frame::{TxDesc, TxFrame};
use crate::meta::{offset, status, DmaMeta, VirtioNetHdr, META_LEN};
use crate::port::{Port, PortError, TxOutcome};
use crate::ring::{RingError, SegRing, SlotMap};

/// Errors of the NIC.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// The memory refused an operation (capacity, map space).
    #[error("memory: {0}")]
    Memory(#[from] hicamp::Error),
    /// The port failed.
    #[error("port: {0}")]
    Port(#[from] PortError),
    /// A ring rule was broken (a bug in the caller).
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// A ring id given to [`Nic::with_rings`] holds a segment (or the two
    /// rings overlap).
    #[error("ring id {0:?} is in use")]
    RingInUse(SegmentId),
    /// The notification channel failed.
    #[error("notification: {0}")]
    Notify(std::io::Error),
}

/// Sizes and batching of a NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicConfig {
    /// Slots of the TX ring.
    pub tx_slots: u32,
    /// Slots of the RX ring.
    pub rx_slots: u32,
    /// Where a received frame starts in its RX segment (at least
    /// [`META_LEN`]); a line boundary keeps whole frame lines aligned, so
    /// equal frame lines deduplicate.
    pub rx_frame_off: u16,
    /// Frames the device transmits per pass, at most.
    pub tx_batch: u32,
    /// Frames the device receives per pass, at most.
    pub rx_batch: u32,
    /// Count deduplicated lines on receive (`rx_lines_dedup`): the RX DMA
    /// then writes through the memory's counted copy-on-write path, which
    /// costs about 1.4x the plain deposit. Off by default. Implies
    /// [`NicConfig::rx_dedup`].
    pub rx_dedup_counts: bool,
    /// Deduplicate received lines (intern them in the memory's index). Off
    /// by default: the RX DMA writes a frame into owned lines, kept out of
    /// the index ([`Memory::segment_owned`]), since most received lines live
    /// only until the application copies them out. The environment variable
    /// `HICAMP_RX_DEDUP=1` turns it on for every NIC.
    pub rx_dedup: bool,
}

impl Default for NicConfig {
    fn default() -> Self {
        NicConfig {
            tx_slots: 256,
            rx_slots: 256,
            rx_frame_off: 64,
            tx_batch: 64,
            rx_batch: 64,
            rx_dedup_counts: false,
            rx_dedup: false,
        }
    }
}

/// True when `HICAMP_RX_DEDUP=1` asks every NIC to deduplicate on receive.
fn rx_dedup_from_env() -> bool {
    std::env::var_os("HICAMP_RX_DEDUP").is_some_and(|v| v == "1")
}

/// What the NIC did, in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicCounters {
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Of those, frames from inline descriptors ([`TxDesc`]).
    pub tx_inline: u64,
    /// Frame bytes transmitted.
    pub tx_bytes: u64,
    /// Lines the TX DMA read through the memory (metadata and frame).
    pub tx_lines_read: u64,
    /// TX segments whose metadata was malformed (dropped, status BAD_FRAME).
    pub tx_bad: u64,
    /// TX frames the port refused with an error (status PORT_ERROR).
    pub tx_port_errors: u64,
    /// Times the port pushed back (frames retried on a later pass).
    pub tx_full: u64,
    /// Doorbells rung by the driver.
    pub doorbells: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// Frame bytes received.
    pub rx_bytes: u64,
    /// Leaf lines holding frame bytes the RX DMA wrote (new, deduplicated
    /// and zero).
    pub rx_lines_written: u64,
    /// Of those, lines that already existed (deduplicated on receive);
    /// counted only with [`NicConfig::rx_dedup_counts`].
    pub rx_lines_dedup: u64,
    /// Of the frame lines written, all-zero lines (stored nowhere).
    pub rx_lines_zero: u64,
    /// Passes that ran out of posted RX slots (frames then wait in the port).
    pub rx_no_slot: u64,
    /// Frames dropped because the memory refused their lines (full): a NIC
    /// out of buffers drops, the host keeps running.
    pub rx_dropped_nomem: u64,
    /// Notifications raised (at most one per pass with completions).
    pub notifications: u64,
    /// Payload bytes the NIC copied through an intermediate buffer (the
    /// segment path copies none: TX gathers lines, RX interns the frame).
    pub payload_bytes_copied: u64,
}

/// What one device pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// TX slots completed.
    pub tx: u32,
    /// RX slots completed.
    pub rx: u32,
}

/// A NIC over a memory and a port.
pub struct Nic<P: Port> {
    mem: Memory,
    port: P,
    cfg: NicConfig,
    tx: SegRing,
    rx: SegRing,
    /// The TX ring's region of the segment map.
    tx_slots: SlotMap,
    /// The TX slots' inline descriptors ([`TxDesc`], by slot index): a slot
    /// holds one of these or a frame segment in `tx_slots`.
    tx_desc: Box<[Option<TxDesc>]>,
    /// The RX ring's region of the segment map.
    rx_slots: SlotMap,
    tx_prepared: u32,
    /// Error statuses the device wrote into completed TX slots not yet
    /// reaped: while 0, reaping reads no segment (every completed slot kept
    /// its driver's status, which reads as success).
    tx_errors_unreaped: u32,
    counters: NicCounters,
    /// The TX DMA's gather list, reused from frame to frame (empty between
    /// frames; its element lifetime is re-chosen per frame by [`reuse`]).
    gather: Vec<&'static [u8]>,
    /// The RX DMA's flat deposit buffer, reused from frame to frame (see
    /// `deposit`).
    rx_flat: Vec<u8>,
    /// TX segments their slots let go of since the last doorbell, released
    /// together by it (see [`Nic::tx_prepare`]).
    tx_retired: Vec<Segment>,
    /// TX segments [`Nic::tx_reap_release`] let go of, released together.
    tx_reaped: Vec<Segment>,
    irq_raise: UnixDatagram,
    irq_wait: UnixDatagram,
    irq_pending: bool,
    /// Someone asked for [`Nic::notify_fd`]: notifications are written to it.
    irq_unmasked: AtomicBool,
    /// A notification byte may be waiting in the channel.
    irq_sent: AtomicBool,
    /// The ring ids go back to the map on drop (they were reserved by
    /// [`Nic::new`], not handed in).
    owns_ids: bool,
}

/// An empty vector of slices with the allocation of `v` (an in-place
/// `collect` keeps the allocation: the element layout is the same).
fn reuse<'b>(mut v: Vec<&[u8]>) -> Vec<&'b [u8]> {
    v.clear();
    v.into_iter().map(|_| -> &'b [u8] { &[] }).collect()
}

/// The lines a descriptor's payload spans (what its gather reads).
fn payload_lines(d: &TxDesc, line_size: usize) -> u64 {
    let shift = line_size.trailing_zeros();
    d.payload()
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (off, len) = (p.offset(), p.len() as u64);
            ((off + len - 1) >> shift) - (off >> shift) + 1
        })
        .sum()
}

/// A transmitted segment's status says it completed without error: `OK`, or
/// `PENDING` (the device writes no status on success).
fn status_ok(st: u16) -> bool {
    st == status::OK || st == status::PENDING
}

/// Chunks of a received frame whose splice pieces fit on the stack.
const SMALL_CHUNKS: usize = 8;

/// A deposit of more than this many lines is built from the NIC's flat
/// buffer (fewer are interned line by line through a splice, which costs
/// less than a tree build's batch for a few lines: an ACK).
const FLAT_MIN_LINES: usize = 4;

/// The largest deposit built from the flat buffer (the rest, never seen
/// from a port, go through a splice).
const FLAT_MAX: usize = 1 << 20;

/// What one RX DMA write did to the memory's lines.
#[derive(Debug, Clone, Copy, Default)]
struct DepositCounts {
    /// Leaf lines holding frame bytes interned (new, deduplicated or zero).
    written: u64,
    /// Of those, lines that already existed (known only when counted).
    dedup: u64,
    /// Of those, all-zero lines.
    zero: u64,
}

/// The RX DMA write: a new segment holding `meta` at offset 0 and the frame
/// (`chunks`, in order) at `off` (zeros in between), its lines interned
/// where dedup happens.
///
/// The fast form is one splice (each line assembled and interned once, the
/// interior levels built bottom-up). With `count_dedup`, the frame goes
/// through the memory's counted write instead, which tells new lines from
/// deduplicated ones at the price of a copy-on-write rebuild of the DAG.
///
/// A frame of more than [`FLAT_MIN_LINES`] lines is laid out in `flat` (the
/// NIC's reused deposit buffer: the metadata, zeros, the frame) and built
/// as one segment from it, as the memory's own splice of bytes would, but
/// with no buffer allocated and zeroed per frame.
///
/// With `dedup` off (the default), every frame (up to [`FLAT_MAX`]) is laid
/// out in `flat` and written into owned lines ([`Memory::segment_owned`]):
/// a copy into free slots, no hash, no index.
fn deposit(
    mem: &Memory,
    meta: &DmaMeta,
    off: u16,
    chunks: &[&[u8]],
    dedup: bool,
    count_dedup: bool,
    flat: &mut Vec<u8>,
) -> Result<(Segment, DepositCounts), hicamp::Error> {
    let meta = meta.to_bytes();
    let len: usize = chunks.iter().map(|c| c.len()).sum();
    let total = usize::from(off) + len;
    let ls = mem.line_size();
    if count_dedup {
        let mut b = mem.builder();
        b.write_at(0, &meta)?;
        // One counted write, so that lines are counted once: a coalesced
        // frame is flattened first (this measurement mode is off by default).
        let flat;
        let frame: &[u8] = match chunks {
            [one] => one,
            _ => {
                flat = chunks.concat();
                &flat
            }
        };
        let c = b.write_at_counted(u64::from(off), frame)?;
        let counts = DepositCounts {
            written: c.lines(),
            dedup: c.dedup_hits,
            zero: c.zero_lines,
        };
        return Ok((b.freeze(), counts));
    }
    // The splice's piece list: on the stack for a frame of a few chunks (no
    // allocation per frame), on the heap for a long coalesced one.
    let head = [
        hicamp::Piece::Bytes(&meta),
        hicamp::Piece::Zeros(u64::from(off) - META_LEN as u64),
    ];
    let owned = !dedup && mem.owned_lines_enabled();
    let (seg, assembled, flat_zero) = if (owned || total > FLAT_MIN_LINES * ls) && total <= FLAT_MAX
    {
        if flat.len() < total {
            flat.resize(total, 0);
        }
        flat[..META_LEN].copy_from_slice(&meta);
        flat[META_LEN..usize::from(off)].fill(0);
        let mut at = usize::from(off);
        for c in chunks {
            flat[at..at + c.len()].copy_from_slice(c);
            at += c.len();
        }
        let seg = if owned {
            mem.segment_owned(&flat[..total])?
        } else {
            mem.segment(&flat[..total])?
        };
        // The lines a splice would assemble: line 0 (the metadata's) and
        // every line holding frame bytes.
        let frame_lines = if len == 0 {
            0
        } else {
            (total - 1) / ls - usize::from(off) / ls + 1
        };
        let shares_line0 = len > 0 && usize::from(off) < ls;
        // The frame's lines that hold only zeros (not line 0, the
        // metadata's), read a word at a time from the flat copy.
        let first = (usize::from(off) / ls).max(1);
        let zero = if len == 0 {
            0
        } else {
            flat[(first * ls).min(total)..total]
                .chunks(ls)
                .filter(|l| is_zero(l))
                .count() as u64
        };
        (
            seg,
            (frame_lines + usize::from(!shares_line0)) as u64,
            Some(zero),
        )
    } else if chunks.len() <= SMALL_CHUNKS {
        let mut stack = [hicamp::Piece::Zeros(0); 2 + SMALL_CHUNKS];
        stack[..2].copy_from_slice(&head);
        for (p, c) in stack[2..].iter_mut().zip(chunks) {
            *p = hicamp::Piece::Bytes(c);
        }
        let (seg, c) = mem.splice(&stack[..2 + chunks.len()])?;
        (seg, c.assembled_lines, None)
    } else {
        let mut pieces = Vec::with_capacity(2 + chunks.len());
        pieces.extend_from_slice(&head);
        pieces.extend(chunks.iter().map(|c| hicamp::Piece::Bytes(c)));
        let (seg, c) = mem.splice(&pieces)?;
        (seg, c.assembled_lines, None)
    };
    // The lines the frame touches that hold only zeros were interned as line
    // 0 (line 0 of the segment holds the metadata, which is never zero).
    let off = usize::from(off);
    let zero = match flat_zero {
        Some(z) => z,
        None => zero_lines(chunks, off, ls),
    };
    let counts = DepositCounts {
        // Lines that hold frame bytes: not the metadata's own line.
        written: assembled - u64::from(off >= ls),
        dedup: 0,
        zero,
    };
    Ok((seg, counts))
}

/// True when every byte is zero (a word at a time).
fn is_zero(b: &[u8]) -> bool {
    let (words, rest) = b.as_chunks::<8>();
    words.iter().fold(0u64, |a, w| a | u64::from_ne_bytes(*w)) == 0 && rest.iter().all(|x| *x == 0)
}

/// The lines holding bytes of the frame `chunks` (at `off`) that hold only
/// zeros, line 0 (the metadata's) aside.
fn zero_lines(chunks: &[&[u8]], off: usize, ls: usize) -> u64 {
    let mut zero = 0;
    // Frame position, and whether the line being walked is zero so far
    // (and where its frame bytes start, absolutely).
    let mut pos = 0usize;
    let mut line_zero = true;
    let mut line_first = off;
    for c in chunks {
        let mut i = 0;
        while i < c.len() {
            // The end of the line holding frame byte `pos` (lines are a
            // power of two bytes).
            let line_end = ((off + pos) | (ls - 1)) + 1 - off;
            let take = (line_end - pos).min(c.len() - i);
            if line_zero && c[i..i + take].iter().any(|b| *b != 0) {
                line_zero = false;
            }
            i += take;
            pos += take;
            if pos == line_end {
                if line_first >= ls && line_zero {
                    zero += 1;
                }
                line_zero = true;
                line_first = off + pos;
            }
        }
    }
    if off + pos != line_first && line_first >= ls && line_zero {
        zero += 1;
    }
    zero
}

/// Counts a transmit attempt of a frame of `len` bytes (`lines` read
/// through the memory; `prev`: the status the slot carries). `None`: the
/// port is full, the slot stays posted for a later pass; else the status
/// the device writes into the slot, if any (success writes none unless the
/// slot carries a stale error).
fn settle(
    counters: &mut NicCounters,
    sent: Result<TxOutcome, PortError>,
    len: u32,
    lines: u64,
    prev: u16,
) -> Result<Option<Option<u16>>, NicError> {
    match sent {
        Ok(TxOutcome::Full) => {
            counters.tx_full += 1;
            Ok(None)
        }
        Ok(TxOutcome::Sent) => {
            counters.tx_frames += 1;
            counters.tx_bytes += u64::from(len);
            counters.tx_lines_read += lines;
            Ok(Some((!status_ok(prev)).then_some(status::OK)))
        }
        Err(PortError::Disconnected) => Err(PortError::Disconnected.into()),
        Err(_) => {
            counters.tx_port_errors += 1;
            Ok(Some(Some(status::PORT_ERROR)))
        }
    }
}

impl<P: Port> std::fmt::Debug for Nic<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nic")
            .field("port", &self.port.name())
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish_non_exhaustive()
    }
}

impl<P: Port> Nic<P> {
    /// A NIC whose rings are new consecutive ranges of `mem`'s segment map.
    pub fn new(mem: &Memory, port: P, cfg: NicConfig) -> Result<Nic<P>, NicError> {
        let tx = mem.map().reserve_range(cfg.tx_slots)?;
        let rx = mem.map().reserve_range(cfg.rx_slots)?;
        Self::build(mem, port, cfg, tx.start, rx.start, true)
    }

    /// A NIC whose rings are ranges of `mem`'s segment map the caller
    /// reserved earlier (`cfg.tx_slots` ids from `tx`, `cfg.rx_slots` from
    /// `rx`), each bound to the empty segment: a server that records its
    /// rings (under a name, say) reuses them after a restart or a crash
    /// instead of leaking them. The NIC does not give these ids back to the
    /// map when it drops; they stay bound to the empty segment.
    pub fn with_rings(
        mem: &Memory,
        port: P,
        cfg: NicConfig,
        tx: SegmentId,
        rx: SegmentId,
    ) -> Result<Nic<P>, NicError> {
        let map = mem.map();
        for (base, n) in [(tx, cfg.tx_slots), (rx, cfg.rx_slots)] {
            for i in 0..n {
                let id = SegmentId(base.get().checked_add(i).ok_or(NicError::RingInUse(base))?);
                if map.entry(id)?.len != 0 {
                    return Err(NicError::RingInUse(id));
                }
            }
        }
        let overlap = tx.get() < rx.get().saturating_add(cfg.rx_slots)
            && rx.get() < tx.get().saturating_add(cfg.tx_slots);
        if overlap {
            return Err(NicError::RingInUse(rx));
        }
        Self::build(mem, port, cfg, tx, rx, false)
    }

    fn build(
        mem: &Memory,
        port: P,
        cfg: NicConfig,
        tx: SegmentId,
        rx: SegmentId,
        owns_ids: bool,
    ) -> Result<Nic<P>, NicError> {
        let (irq_raise, irq_wait) = UnixDatagram::pair().map_err(NicError::Notify)?;
        irq_raise.set_nonblocking(true).map_err(NicError::Notify)?;
        irq_wait.set_nonblocking(true).map_err(NicError::Notify)?;
        let tx = SegRing::new(tx, cfg.tx_slots);
        let rx = SegRing::new(rx, cfg.rx_slots);
        Ok(Nic {
            mem: mem.clone(),
            port,
            cfg: NicConfig {
                rx_frame_off: cfg.rx_frame_off.max(META_LEN as u16),
                rx_dedup: cfg.rx_dedup || cfg.rx_dedup_counts || rx_dedup_from_env(),
                ..cfg
            },
            tx_slots: SlotMap::new(&tx),
            tx_desc: (0..tx.size()).map(|_| None).collect(),
            rx_slots: SlotMap::new(&rx),
            tx,
            rx,
            tx_prepared: 0,
            tx_errors_unreaped: 0,
            counters: NicCounters::default(),
            gather: Vec::new(),
            rx_flat: Vec::new(),
            tx_retired: Vec::new(),
            tx_reaped: Vec::new(),
            irq_raise,
            irq_wait,
            irq_pending: false,
            irq_unmasked: AtomicBool::new(false),
            irq_sent: AtomicBool::new(false),
            owns_ids,
        })
    }

    /// The counters.
    pub fn counters(&self) -> &NicCounters {
        &self.counters
    }

    /// The TX ring.
    pub fn tx_ring(&self) -> &SegRing {
        &self.tx
    }

    /// The RX ring.
    pub fn rx_ring(&self) -> &SegRing {
        &self.rx
    }

    /// The port.
    pub fn port(&self) -> &P {
        &self.port
    }

    /// The port, mutably.
    pub fn port_mut(&mut self) -> &mut P {
        &mut self.port
    }

    /// The memory.
    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    /// The TX ring's region of the segment map: the segment each TX slot id
    /// holds.
    pub fn tx_slots(&self) -> &SlotMap {
        &self.tx_slots
    }

    /// The RX ring's region of the segment map.
    pub fn rx_slots(&self) -> &SlotMap {
        &self.rx_slots
    }

    /// Polls readable after a pass that completed work (interrupt emulation).
    /// Asking for it unmasks the interrupt: from then on every notification
    /// is written to it.
    pub fn notify_fd(&self) -> RawFd {
        if !self.irq_unmasked.swap(true, Relaxed) && self.irq_pending {
            self.raise();
        }
        self.irq_wait.as_raw_fd()
    }

    fn raise(&self) {
        let _ = self.irq_raise.send(&[1]);
        self.irq_sent.store(true, Relaxed);
    }

    /// True when a notification is pending (without consuming it).
    pub fn notified(&self) -> bool {
        self.irq_pending
    }

    /// Acknowledges notifications (drains the channel).
    pub fn ack(&mut self) {
        if self.irq_sent.swap(false, Relaxed) {
            let mut b = [0u8; 16];
            while self.irq_wait.recv(&mut b).is_ok() {}
        }
        self.irq_pending = false;
    }

    // ---- driver side -------------------------------------------------------

    /// TX slots the driver can still prepare.
    pub fn tx_room(&self) -> u32 {
        self.tx.free() - self.tx_prepared
    }

    /// Puts a snapshot of `frame` (a segment with [`DmaMeta`] at offset 0)
    /// into the next free TX slot. False when the ring is full. No doorbell.
    pub fn tx_prepare(&mut self, frame: &Segment) -> Result<bool, NicError> {
        let Some(slot) = self.tx.free_slot(self.tx_prepared) else {
            return Ok(false);
        };
        if !frame.memory().same(&self.mem) {
            return Err(hicamp::Error::ForeignSegment.into());
        }
        // The snapshot: one reference moves into the slot's entry. The
        // slot's previous segment is retired, and the doorbell releases the
        // batch's retired segments in one `Memory::release_segments` (one
        // release of the dying lines, not one per frame).
        // (A segment held elsewhere too, whose root keeps a count above
        // one, loses its reference here: a decrement, nothing to batch.)
        debug_assert!(self.tx_desc(slot).is_none(), "descriptors leave at reap");
        if let Some(old) = self.tx_slots.replace(slot, frame.clone()) {
            if self.mem.refcount(old.root()) == 1 {
                self.tx_retired.push(old);
            }
        }
        self.tx_prepared += 1;
        Ok(true)
    }

    /// Puts `desc` (inline headers, payload snapshots) into the next free TX
    /// slot: no frame segment is built, the slot's segment stays the empty
    /// one. Gives `desc` back when the ring is full. No doorbell.
    pub fn tx_prepare_desc(&mut self, desc: TxDesc) -> Result<Option<TxDesc>, NicError> {
        let Some(slot) = self.tx.free_slot(self.tx_prepared) else {
            return Ok(Some(desc));
        };
        if !desc.in_memory(&self.mem) {
            return Err(hicamp::Error::ForeignSegment.into());
        }
        // A segment an earlier frame left in the slot (`tx_reap` keeps
        // them) is retired as `tx_prepare` retires it.
        if let Some(old) = self.tx_slots.take(slot) {
            if self.mem.refcount(old.root()) == 1 {
                self.tx_retired.push(old);
            }
        }
        let i = self.tx_index(slot);
        self.tx_desc[i] = Some(desc);
        self.tx_prepared += 1;
        Ok(None)
    }

    /// [`Nic::tx_prepare`] or [`Nic::tx_prepare_desc`], as `frame` is; gives
    /// it back when the ring is full.
    pub fn tx_prepare_frame(&mut self, frame: TxFrame) -> Result<Option<TxFrame>, NicError> {
        match frame {
            TxFrame::Inline(d) => Ok(self.tx_prepare_desc(d)?.map(TxFrame::Inline)),
            TxFrame::Segment(s) => Ok((!self.tx_prepare(&s)?).then_some(TxFrame::Segment(s))),
        }
    }

    /// The inline descriptor TX slot `slot` holds, if it holds one (from
    /// its prepare until it is reaped).
    pub fn tx_desc(&self, slot: SegmentId) -> Option<&TxDesc> {
        self.tx_desc[self.tx_index(slot)].as_ref()
    }

    /// The index of TX slot `slot` in the ring.
    fn tx_index(&self, slot: SegmentId) -> usize {
        let i = slot.get().wrapping_sub(self.tx.ids().start) as usize;
        assert!(i < self.tx_desc.len(), "{slot:?} is not a TX slot");
        i
    }

    /// Posts every prepared TX slot to the device (one doorbell). Returns how
    /// many.
    pub fn tx_doorbell(&mut self) -> Result<u32, NicError> {
        let n = self.tx_prepared;
        match self.tx_retired.len() {
            0 => {}
            // One frame: a plain drop costs less than a batch of one.
            1 => self.tx_retired.clear(),
            _ => self.mem.release_segments(self.tx_retired.drain(..)),
        }
        if n > 0 {
            self.tx.post(n)?;
            self.tx_prepared = 0;
            self.counters.doorbells += 1;
        }
        Ok(n)
    }

    /// Recycles completed TX slots: reads each one's status from its
    /// metadata (each slot keeps its segment until the next prepare replaces
    /// it, as a ring buffer does; an inline descriptor leaves its slot
    /// here). Returns (completed OK, completed with an error).
    pub fn tx_reap(&mut self) -> Result<(u32, u32), NicError> {
        self.reap_tx(false)
    }

    /// [`Nic::tx_reap`] that also lets go of each completed slot's segment
    /// (as a driver frees a transmitted buffer on completion), the dying
    /// ones released together. A slot that kept its frame until the next
    /// prepare replaced it kept one lap of the ring alive: free with
    /// interned frames, whose lines repeat, but a lap of distinct lines
    /// with owned ones (`Memory::splice_owned`).
    pub fn tx_reap_release(&mut self) -> Result<(u32, u32), NicError> {
        let r = self.reap_tx(true)?;
        match self.tx_reaped.len() {
            0 => {}
            1 => self.tx_reaped.clear(),
            _ => self.mem.release_segments(self.tx_reaped.drain(..)),
        }
        Ok(r)
    }

    fn reap_tx(&mut self, release: bool) -> Result<(u32, u32), NicError> {
        let n = self.tx.completed_unreaped();
        let r = if self.tx_errors_unreaped == 0 {
            // The device wrote no status: every slot reads as its driver
            // left it (PENDING or OK).
            (n, 0)
        } else {
            self.tx_errors_unreaped = 0;
            let (mut ok, mut bad) = (0, 0);
            for i in 0..n {
                let slot = self.tx.completed_slot(i).expect("counted");
                let desc = self.tx_desc(slot).map(TxDesc::status);
                let st = desc.or_else(|| {
                    self.tx_slots.get(slot).and_then(|seg| {
                        let at = offset::STATUS as usize;
                        let mut st = [0u8; 2];
                        match seg.cursor().chunk().get(at..at + 2) {
                            Some(b) => st.copy_from_slice(b),
                            None => {
                                if seg.read_at(offset::STATUS, &mut st).ok()? < 2 {
                                    return None;
                                }
                            }
                        }
                        Some(u16::from_le_bytes(st))
                    })
                });
                if st.is_some_and(status_ok) {
                    ok += 1;
                } else {
                    bad += 1;
                }
            }
            (ok, bad)
        };
        // A descriptor leaves its slot at reap either way: it holds nothing
        // but its payload's references, which a lap of the ring must not
        // keep alive.
        for i in 0..n {
            let slot = self.tx.completed_slot(i).expect("counted");
            let at = self.tx_index(slot);
            drop(self.tx_desc[at].take());
        }
        if release {
            for i in 0..n {
                let slot = self.tx.completed_slot(i).expect("counted");
                if let Some(seg) = self.tx_slots.take(slot) {
                    // A segment held elsewhere too only loses the slot's
                    // reference (a decrement, nothing to batch).
                    if self.mem.refcount(seg.root()) == 1 {
                        self.tx_reaped.push(seg);
                    }
                }
            }
        }
        self.tx.reap(n)?;
        Ok(r)
    }

    /// Posts every free RX slot to the device. Returns how many.
    pub fn rx_refill(&mut self) -> Result<u32, NicError> {
        let n = self.rx.free();
        self.rx.post(n)?;
        Ok(n)
    }

    /// Takes up to `max` received segments out of the RX slots, which
    /// become free (and bound to the empty segment). Returns how many.
    ///
    /// The slot gives its segment up rather than keep a snapshot until the
    /// next deposit: a slot that kept one held every frame of the last lap
    /// of the ring alive (256 slots of 64 KiB TSO frames: 16 MiB), so the
    /// lines a stack was done with died a whole lap later, out of cache,
    /// when the slot was written again.
    pub fn rx_harvest(&mut self, out: &mut Vec<Segment>, max: u32) -> Result<u32, NicError> {
        let n = self.rx.completed_unreaped().min(max);
        out.reserve(n as usize);
        for i in 0..n {
            let slot = self.rx.completed_slot(i).expect("counted");
            // The stack's segment: the slot's own reference moves, no lock.
            let seg = self.rx_slots.take(slot);
            out.push(seg.unwrap_or_else(|| self.mem.empty()));
        }
        self.rx.reap(n)?;
        Ok(n)
    }

    // ---- device side -------------------------------------------------------

    /// One device pass: transmit posted TX slots and deposit received frames
    /// into posted RX slots, in batches; one notification if anything
    /// completed.
    pub fn dma(&mut self) -> Result<Work, NicError> {
        let tx = self.dma_tx()?;
        // One kick for the pass's batch (ports that queue frames; also
        // frames an earlier kick could not hand over yet).
        match self.port.flush() {
            Ok(()) => {}
            Err(PortError::Disconnected) => return Err(PortError::Disconnected.into()),
            Err(_) => self.counters.tx_port_errors += 1,
        }
        let work = Work {
            tx,
            rx: self.dma_rx()?,
        };
        // Interrupt moderation: one notification per pass with completions,
        // and none while an earlier one is still unacknowledged.
        if work.tx + work.rx > 0 && !self.irq_pending {
            self.irq_pending = true;
            self.counters.notifications += 1;
            if self.irq_unmasked.load(Relaxed) {
                self.raise();
            }
        }
        Ok(work)
    }

    /// Writes `st` into the metadata of the segment in TX slot `slot`
    /// (copy-on-write: the driver's own snapshot keeps its bytes).
    fn set_status(&mut self, slot: SegmentId, st: u16) -> Result<(), NicError> {
        let mut m = match self.tx_slots.take(slot) {
            Some(seg) => seg.into_mut(),
            None => self.mem.builder(),
        };
        m.write_at(offset::STATUS, &st.to_le_bytes())?;
        self.tx_slots.replace(slot, m.freeze());
        Ok(())
    }

    fn dma_tx(&mut self) -> Result<u32, NicError> {
        let mut done = 0;
        while done < self.cfg.tx_batch {
            let Some(slot) = self.tx.nic_slot(0) else {
                break;
            };
            let at = self.tx_index(slot);
            let write = if let Some(d) = self.tx_desc[at].as_mut() {
                // An inline descriptor: the headers from the slot, the
                // payload's lines through the memory, one gather list; or,
                // for a port whose device reads descriptors later (a writer
                // thread), the descriptor itself.
                let spans = payload_lines(d, self.mem.line_size());
                let (sent, lines) = match self.port.transmit_desc(d) {
                    Some(sent) => (sent, spans),
                    None => {
                        let mut chunks = reuse(std::mem::take(&mut self.gather));
                        let lines = d.gather(&mut chunks) as u64;
                        let sent = self.port.transmit(&d.meta().vnet, &chunks);
                        self.gather = reuse(chunks);
                        (sent, lines)
                    }
                };
                let (len, prev) = (d.meta().frame_len, d.status());
                let ok = matches!(sent, Ok(TxOutcome::Sent));
                let Some(write) = settle(&mut self.counters, sent, len, lines, prev)? else {
                    break;
                };
                self.counters.tx_inline += u64::from(ok);
                if let (Some(st), Some(d)) = (write, self.tx_desc[at].as_mut()) {
                    d.set_status(st);
                    if !status_ok(st) {
                        self.tx_errors_unreaped += 1;
                    }
                }
                None
            } else {
                self.counters.tx_lines_read += 1;
                // The device reads the slot's segment through the memory:
                // the metadata first, then the frame's lines into the
                // gather list.
                match self.tx_slots.get(slot).map(crate::frame::open_frame) {
                    None | Some(Err(_)) => {
                        self.counters.tx_bad += 1;
                        Some(status::BAD_FRAME)
                    }
                    Some(Ok((meta, mut c))) => {
                        let (off, len) = (u64::from(meta.frame_off), meta.frame_len as usize);
                        // A port that copies the frame reads it straight
                        // through the cursor; else the lines go into the
                        // gather list.
                        let (sent, lines) = match self.port.transmit_from(&meta.vnet, &mut c, len) {
                            Some(sent) => {
                                let shift = self.mem.line_size().trailing_zeros();
                                let lines = if len == 0 {
                                    0
                                } else {
                                    ((off + len as u64 - 1) >> shift) - (off >> shift) + 1
                                };
                                (sent, lines)
                            }
                            None => {
                                let mut chunks = reuse(std::mem::take(&mut self.gather));
                                // Runs of sibling lines straight from their
                                // parent line (DmaMeta::parse checked that
                                // the frame lies within the segment).
                                c.gather(len, &mut chunks);
                                let sent = self.port.transmit(&meta.vnet, &chunks);
                                let lines = chunks.len() as u64;
                                self.gather = reuse(chunks);
                                (sent, lines)
                            }
                        };
                        let Some(write) =
                            settle(&mut self.counters, sent, meta.frame_len, lines, meta.status)?
                        else {
                            break;
                        };
                        write
                    }
                }
            };
            if let Some(st) = write {
                self.set_status(slot, st)?;
                if !status_ok(st) {
                    self.tx_errors_unreaped += 1;
                }
            }
            self.tx.complete(1)?;
            done += 1;
        }
        Ok(done)
    }

    fn dma_rx(&mut self) -> Result<u32, NicError> {
        let mut done = 0;
        let off = self.cfg.rx_frame_off;
        let count_dedup = self.cfg.rx_dedup_counts;
        let dedup = self.cfg.rx_dedup;
        while done < self.cfg.rx_batch {
            let Some(slot) = self.rx.nic_slot(0) else {
                // Out of posted RX slots: whatever waits stays in the port
                // (back-pressure onto the wire) until the driver refills.
                self.counters.rx_no_slot += 1;
                break;
            };
            let mem = &self.mem;
            let flat = &mut self.rx_flat;
            let mut result = None;
            let got = self
                .port
                .receive_chunks(&mut |vnet: &VirtioNetHdr, chunks: &[&[u8]]| {
                    let len: usize = chunks.iter().map(|c| c.len()).sum();
                    let meta = DmaMeta {
                        vnet: *vnet,
                        frame_off: off,
                        status: status::OK,
                        frame_len: len as u32,
                        gso_segs: 0,
                    };
                    result = Some(
                        deposit(mem, &meta, off, chunks, dedup, count_dedup, flat)
                            .map(|(s, c)| (s, c, len)),
                    );
                })?;
            if !got {
                break;
            }
            let (seg, counts, len) = match result.expect("deposit ran") {
                Ok(r) => r,
                Err(_) => {
                    // The frame is gone from the port; the slot stays posted.
                    self.counters.rx_dropped_nomem += 1;
                    continue;
                }
            };
            // A slot's segment moved out when it was harvested: the slot is
            // empty here (a deposit never overwrites an unharvested one).
            drop(self.rx_slots.replace(slot, seg));
            self.rx.complete(1)?;
            self.counters.rx_frames += 1;
            self.counters.rx_bytes += len as u64;
            self.counters.rx_lines_written += counts.written;
            self.counters.rx_lines_dedup += counts.dedup;
            self.counters.rx_lines_zero += counts.zero;
            done += 1;
        }
        Ok(done)
    }
}

impl<P: Port> Drop for Nic<P> {
    /// Gives the ring's ids back to the segment map (the slots release their
    /// segments when the slot maps drop).
    fn drop(&mut self) {
        if !self.owns_ids {
            return;
        }
        let map = self.mem.map();
        for id in self.tx.ids().chain(self.rx.ids()) {
            let _ = map.delete(SegmentId(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hicamp::Config;

    /// Depositing a frame as chunks gives the same segment and counts as
    /// depositing it whole, wherever the chunks are cut.
    #[test]
    fn chunked_deposits_match_whole_ones() {
        let mem = Memory::new(Config::default()).unwrap();
        let mut frame = vec![0u8; 1500];
        for (i, b) in frame.iter_mut().enumerate() {
            // Zero lines here and there, so the zero count is exercised.
            if (i / 64) % 3 != 1 {
                *b = (i * 7 + 1) as u8 | 1;
            }
        }
        let mut flat = Vec::new();
        let offs = [META_LEN as u16, 62, 64, 100];
        for (dedup, off) in [true, false].into_iter().flat_map(|d| offs.map(|o| (d, o))) {
            let meta = DmaMeta::frame(off, frame.len() as u32);
            let (whole, wc) =
                deposit(&mem, &meta, off, &[&frame], dedup, false, &mut Vec::new()).unwrap();
            // Owned lines unless asked to deduplicate.
            assert_eq!(whole.is_canonical(), dedup, "off {off}");
            // The flat build is the memory's own splice of the same bytes,
            // with the same count of lines written.
            let mb = meta.to_bytes();
            let (spliced, sc) = mem
                .splice(&[
                    hicamp::Piece::Bytes(&mb),
                    hicamp::Piece::Zeros(u64::from(off) - META_LEN as u64),
                    hicamp::Piece::Bytes(&frame),
                ])
                .unwrap();
            assert!(spliced == whole, "off {off}");
            assert_eq!(
                wc.written,
                sc.assembled_lines - u64::from(usize::from(off) >= mem.line_size()),
                "off {off}"
            );
            for cuts in [
                vec![1usize],
                vec![63, 64, 65],
                vec![66, 1000],
                vec![700, 701, 1499],
            ] {
                let mut chunks = Vec::new();
                let mut at = 0;
                for &c in &cuts {
                    chunks.push(&frame[at..c]);
                    at = c;
                }
                chunks.push(&frame[at..]);
                let (seg, c) = deposit(&mem, &meta, off, &chunks, dedup, false, &mut flat).unwrap();
                assert!(seg == whole, "off {off} cuts {cuts:?}");
                assert_eq!(
                    (c.written, c.zero),
                    (wc.written, wc.zero),
                    "off {off} cuts {cuts:?}"
                );
                let (_, cc) = deposit(&mem, &meta, off, &chunks, true, true, &mut flat).unwrap();
                assert_eq!(cc.zero, wc.zero, "counted, off {off} cuts {cuts:?}");
            }
            if off % 64 == 0 {
                assert!(wc.zero > 0, "off {off}");
            }
        }
    }

    /// A TX slot's previous frame, replaced by the next prepare, is
    /// released by that batch's doorbell: a ring that keeps turning over
    /// frames nobody else holds keeps one lap of them alive, not all.
    #[test]
    fn replaced_tx_frames_die_at_the_doorbell() {
        let mem = Memory::new(Config::default()).unwrap();
        let (_net, pa, _pb) =
            crate::sim::SimNet::pair(5, crate::sim::LinkConfig::default()).unwrap();
        let cfg = NicConfig {
            tx_slots: 8,
            ..NicConfig::default()
        };
        let mut a = Nic::new(&mem, pa, cfg).unwrap();
        // A lap of 8 frames of 300 bytes no other lap shares.
        let lap = |a: &mut Nic<crate::sim::SimPort>, k: u64| {
            for i in 0..8u64 {
                let mut f: Vec<u8> = (0..300u64)
                    .map(|j| {
                        ((k << 40 | i << 20 | j).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
                    })
                    .collect();
                f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa]);
                let seg = crate::frame::tx_segment(&mem, VirtioNetHdr::default(), 64, &f).unwrap();
                assert!(a.tx_prepare(&seg).unwrap());
            }
            // Retired, not yet released: the doorbell does it.
            a.tx_doorbell().unwrap();
            a.dma().unwrap();
            a.tx_reap().unwrap();
        };
        lap(&mut a, 0);
        let one_lap = mem.live_lines();
        for k in 1..4 {
            lap(&mut a, k);
            assert_eq!(mem.live_lines(), one_lap, "lap {k}");
        }
        // A frame the caller still holds only loses the slot's reference.
        let kept =
            crate::frame::tx_segment(&mem, VirtioNetHdr::default(), 64, &[7u8; 200]).unwrap();
        assert!(a.tx_prepare(&kept).unwrap());
        a.tx_doorbell().unwrap();
        a.dma().unwrap();
        a.tx_reap().unwrap();
        lap(&mut a, 9);
        assert_eq!(kept.to_vec().len(), kept.len() as usize);
        drop(a);
        drop(kept);
    }

    /// Owned TX frames (`build_lines(owned)`: distinct lines, nothing to
    /// deduplicate) die when their slots are reaped with
    /// `tx_reap_release`: no lap of them stays alive in the ring (a server
    /// answering 20k POSTs through segstack kept 1024 frames, ~24k lines,
    /// when each slot kept its frame until the next prepare: `tx_reap`).
    #[test]
    fn owned_tx_frames_die_when_reaped() {
        let mem = Memory::new(Config::default()).unwrap();
        let (_net, pa, _pb) =
            crate::sim::SimNet::pair(6, crate::sim::LinkConfig::default()).unwrap();
        let cfg = NicConfig {
            tx_slots: 8,
            ..NicConfig::default()
        };
        let mut a = Nic::new(&mem, pa, cfg).unwrap();
        let payload = mem.segment(&[0x5au8; 4096]).unwrap();
        let base = mem.live_lines();
        let lap = |a: &mut Nic<crate::sim::SimPort>, k: u64, release: bool| {
            for i in 0..8u64 {
                let mut hdr = [0u8; 66];
                hdr[..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa]);
                hdr[12..28].copy_from_slice(&(k << 8 | i).to_le_bytes().repeat(2));
                // An unaligned payload edge: an owned leaf of its own.
                let s = hicamp::SegmentSlice::new(payload.clone(), 100 + i, 1000);
                let (f, _) = crate::frame::build_lines(
                    &mem,
                    true,
                    VirtioNetHdr::default(),
                    64,
                    &hdr,
                    std::slice::from_ref(&s),
                )
                .unwrap();
                assert!(a.tx_prepare(&f).unwrap());
            }
            a.tx_doorbell().unwrap();
            a.dma().unwrap();
            if release {
                assert_eq!(a.tx_reap_release().unwrap(), (8, 0));
            } else {
                assert_eq!(a.tx_reap().unwrap(), (8, 0));
            }
        };
        lap(&mut a, 0, false);
        assert!(mem.live_lines() > base, "tx_reap keeps the lap");
        for k in 1..4 {
            lap(&mut a, k, true);
            assert_eq!(mem.live_lines(), base, "lap {k}");
            let st = mem.stats();
            assert_eq!((st.owned_leaf_lines, st.owned_interior_lines), (0, 0));
        }
        drop(a);
        drop(payload);
        assert_eq!(mem.live_lines(), 0);
    }

    /// A port that refuses the first `fail` frames with an error and pushes
    /// back on the next `full`, then sends; it keeps what it sent.
    struct PickyPort {
        fail: u32,
        full: u32,
        sent: Vec<Vec<u8>>,
    }

    impl Port for PickyPort {
        fn transmit(&mut self, _: &VirtioNetHdr, chunks: &[&[u8]]) -> Result<TxOutcome, PortError> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err(PortError::BadOffload);
            }
            if self.full > 0 {
                self.full -= 1;
                return Ok(TxOutcome::Full);
            }
            self.sent.push(chunks.concat());
            Ok(TxOutcome::Sent)
        }

        fn receive(&mut self, _: &mut dyn FnMut(&VirtioNetHdr, &[u8])) -> Result<bool, PortError> {
            Ok(false)
        }

        fn name(&self) -> &str {
            "picky"
        }
    }

    /// An inline descriptor puts on the wire the bytes the frame segment of
    /// the same headers and payload carries (no payload, one slice at any
    /// phase, two and three slices), through a port that gathers and the
    /// sim's wire alike, and makes no frame line.
    #[test]
    fn inline_descriptors_send_what_frame_segments_send() {
        let mem = Memory::new(Config::default()).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        let seg = mem.segment(&data).unwrap();
        let sl = |off: u64, len: usize| hicamp::SegmentSlice::new(seg.clone(), off, len);
        let shapes = [
            vec![],
            vec![sl(0, 200)],
            vec![sl(13, 1400)],
            vec![sl(0, 4096), sl(4096, 700)],
            vec![sl(5, 10), sl(64, 64), sl(300, 4000)],
        ];
        let mut hdrs = [0u8; 66];
        hdrs[..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa]);
        for (i, b) in hdrs[12..].iter_mut().enumerate() {
            *b = i as u8 | 0x40;
        }
        let picky = PickyPort {
            fail: 0,
            full: 0,
            sent: Vec::new(),
        };
        let mut a = Nic::new(&mem, picky, NicConfig::default()).unwrap();
        let (net, pa, pb) = crate::sim::SimNet::pair(7, crate::sim::LinkConfig::default()).unwrap();
        let mut sa = Nic::new(&mem, pa, NicConfig::default()).unwrap();
        let mut sb = Nic::new(&mem, pb, NicConfig::default()).unwrap();
        sb.rx_refill().unwrap();
        for payload in &shapes {
            let d = TxDesc::new(VirtioNetHdr::default(), &hdrs, payload).unwrap();
            let off = crate::frame::aligned_frame_off(mem.line_size(), hdrs.len(), 0);
            let (f, _) =
                crate::frame::build(&mem, VirtioNetHdr::default(), off, &hdrs, payload).unwrap();
            let (_, want) = crate::frame::frame_bytes(&f).unwrap();
            assert_eq!(d.to_vec(), want);
            assert_eq!(d.frame_len(), want.len());
            let as_seg = d.to_segment(&mem, true).unwrap();
            assert_eq!(crate::frame::frame_bytes(&as_seg).unwrap().1, want);
            drop(as_seg);
            let made = mem.stats().owned_lines_created;
            let live = mem.live_lines();
            for nic_frame in [TxFrame::Inline(d.clone()), TxFrame::Segment(f.clone())] {
                assert!(a.tx_prepare_frame(nic_frame).unwrap().is_none());
            }
            assert!(sa.tx_prepare_desc(d.clone()).unwrap().is_none());
            a.tx_doorbell().unwrap();
            sa.tx_doorbell().unwrap();
            assert_eq!(a.dma().unwrap().tx, 2);
            assert_eq!(a.tx_reap_release().unwrap(), (2, 0));
            assert_eq!(sa.dma().unwrap().tx, 1);
            assert_eq!(sa.tx_reap().unwrap(), (1, 0));
            // (The RX deposit below makes owned lines: not the TX side.)
            assert_eq!(mem.stats().owned_lines_created, made);
            net.clock().advance(1_000_000);
            sb.dma().unwrap();
            let mut rx = Vec::new();
            assert_eq!(sb.rx_harvest(&mut rx, 4).unwrap(), 1);
            sb.rx_refill().unwrap();
            let (_, got) = crate::frame::frame_bytes(&rx[0]).unwrap();
            assert_eq!(got, want, "sim wire");
            drop(rx);
            let sent = &a.port().sent;
            assert_eq!(sent[sent.len() - 2], want, "gathered, inline");
            assert_eq!(sent[sent.len() - 1], want, "gathered, segment");
            assert_eq!(mem.live_lines(), live);
        }
        assert_eq!(a.counters().tx_inline, shapes.len() as u64);
        assert_eq!(a.counters().tx_frames, 2 * shapes.len() as u64);
        assert_eq!(sa.counters().tx_inline, shapes.len() as u64);
        // A payload from another memory is refused.
        let other = Memory::new(Config::default()).unwrap();
        let foreign = hicamp::SegmentSlice::from_bytes(&other, &[1u8; 100]).unwrap();
        let d = TxDesc::new(VirtioNetHdr::default(), &hdrs, &[foreign]).unwrap();
        assert!(matches!(
            a.tx_prepare_desc(d),
            Err(NicError::Memory(hicamp::Error::ForeignSegment))
        ));
        // Too many header bytes for a descriptor.
        assert!(TxDesc::new(VirtioNetHdr::default(), &[0; 200], &[]).is_err());
    }

    /// A descriptor's status reports a port error at reap, a full port
    /// keeps it posted for the next pass, and each descriptor's payload
    /// references die when its slot is reaped, whichever reap (a ring that
    /// kept descriptors a lap would keep 8 payloads here).
    #[test]
    fn inline_descriptors_report_errors_and_die_when_reaped() {
        let mem = Memory::new(Config::default()).unwrap();
        let picky = PickyPort {
            fail: 1,
            full: 1,
            sent: Vec::new(),
        };
        let cfg = NicConfig {
            tx_slots: 8,
            ..NicConfig::default()
        };
        let mut a = Nic::new(&mem, picky, cfg).unwrap();
        let base = mem.live_lines();
        let hdrs = [0x11u8; 54];
        let lap = |a: &mut Nic<PickyPort>, k: u64, release: bool| {
            for i in 0..8u64 {
                let body: Vec<u8> = (0..500u64)
                    .map(|j| {
                        ((k << 40 | i << 20 | j).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
                    })
                    .collect();
                let p = hicamp::SegmentSlice::from_bytes(&mem, &body).unwrap();
                let d = TxDesc::new(VirtioNetHdr::default(), &hdrs, &[p]).unwrap();
                assert!(a.tx_prepare_desc(d).unwrap().is_none());
            }
            assert!(mem.live_lines() > base);
            a.tx_doorbell().unwrap();
            let mut r = (0, 0);
            while r.0 + r.1 < 8 {
                a.dma().unwrap();
                let (ok, bad) = if release {
                    a.tx_reap_release().unwrap()
                } else {
                    a.tx_reap().unwrap()
                };
                r = (r.0 + ok, r.1 + bad);
            }
            r
        };
        // The first frame fails (status PORT_ERROR), the second waits one
        // pass (the port is full), the rest go.
        assert_eq!(lap(&mut a, 0, true), (7, 1));
        assert_eq!(a.counters().tx_port_errors, 1);
        assert_eq!(a.counters().tx_full, 1);
        assert_eq!(a.port().sent.len(), 7);
        assert_eq!(mem.live_lines(), base);
        for k in 1..4 {
            assert_eq!(lap(&mut a, k, k % 2 == 0), (8, 0), "lap {k}");
            assert_eq!(mem.live_lines(), base, "lap {k}");
        }
        assert_eq!(a.counters().tx_inline, 31);
    }
}
