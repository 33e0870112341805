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
//!    snapshots of the RX segments: the stack segments
//! ```
//!
//! A ring segment holds [`DmaMeta`] at offset 0 and the frame at
//! `frame_off`; the bytes between are headroom for protocol headers.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use hicamp::{Memory, Segment, SegmentId};

use crate::meta::{offset, status, DmaMeta, VirtioNetHdr, META_LEN};
use crate::port::{Port, PortError, TxOutcome};
use crate::ring::{RingError, SegRing};

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
}

impl Default for NicConfig {
    fn default() -> Self {
        NicConfig {
            tx_slots: 256,
            rx_slots: 256,
            rx_frame_off: 64,
            tx_batch: 64,
            rx_batch: 64,
        }
    }
}

/// What the NIC did, in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicCounters {
    /// Frames transmitted.
    pub tx_frames: u64,
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
    /// Leaf lines the RX DMA wrote (new, deduplicated and zero).
    pub rx_lines_written: u64,
    /// Of those, lines that already existed (deduplicated on receive).
    pub rx_lines_dedup: u64,
    /// Of those, all-zero lines (stored nowhere).
    pub rx_lines_zero: u64,
    /// Passes that ran out of posted RX slots (frames then wait in the port).
    pub rx_no_slot: u64,
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
    tx_prepared: u32,
    counters: NicCounters,
    irq_raise: UnixDatagram,
    irq_wait: UnixDatagram,
    irq_pending: bool,
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
        let (irq_raise, irq_wait) = UnixDatagram::pair().map_err(NicError::Notify)?;
        irq_raise.set_nonblocking(true).map_err(NicError::Notify)?;
        irq_wait.set_nonblocking(true).map_err(NicError::Notify)?;
        Ok(Nic {
            mem: mem.clone(),
            port,
            cfg: NicConfig {
                rx_frame_off: cfg.rx_frame_off.max(META_LEN as u16),
                ..cfg
            },
            tx: SegRing::new(tx.start, cfg.tx_slots),
            rx: SegRing::new(rx.start, cfg.rx_slots),
            tx_prepared: 0,
            counters: NicCounters::default(),
            irq_raise,
            irq_wait,
            irq_pending: false,
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

    /// Polls readable after a pass that completed work (interrupt emulation).
    pub fn notify_fd(&self) -> RawFd {
        self.irq_wait.as_raw_fd()
    }

    /// True when a notification is pending (without consuming it).
    pub fn notified(&self) -> bool {
        self.irq_pending
    }

    /// Acknowledges notifications (drains the channel).
    pub fn ack(&mut self) {
        let mut b = [0u8; 16];
        while self.irq_wait.recv(&mut b).is_ok() {}
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
        self.mem.map().replace(slot, frame.clone())?;
        self.tx_prepared += 1;
        Ok(true)
    }

    /// Posts every prepared TX slot to the device (one doorbell). Returns how
    /// many.
    pub fn tx_doorbell(&mut self) -> Result<u32, NicError> {
        let n = self.tx_prepared;
        if n > 0 {
            self.tx.post(n)?;
            self.tx_prepared = 0;
            self.counters.doorbells += 1;
        }
        Ok(n)
    }

    /// Recycles completed TX slots (each keeps its segment until the next
    /// prepare replaces it). Returns (completed OK, completed with an error).
    pub fn tx_reap(&mut self) -> Result<(u32, u32), NicError> {
        let n = self.tx.completed_unreaped();
        let (mut ok, mut bad) = (0, 0);
        for i in 0..n {
            let slot = self.tx.completed_slot(i).expect("counted");
            let mut st = [0u8; 2];
            self.mem.map().read_at(slot, offset::STATUS, &mut st)?;
            if u16::from_le_bytes(st) == status::OK {
                ok += 1;
            } else {
                bad += 1;
            }
            // The slot keeps its segment until the next prepare replaces it
            // (a ring buffer): no map update here.
        }
        self.tx.reap(n)?;
        Ok((ok, bad))
    }

    /// Posts every free RX slot to the device. Returns how many.
    pub fn rx_refill(&mut self) -> Result<u32, NicError> {
        let n = self.rx.free();
        self.rx.post(n)?;
        Ok(n)
    }

    /// Takes up to `max` received segments (snapshots of the RX slots, which
    /// become free). Returns how many.
    pub fn rx_harvest(&mut self, out: &mut Vec<Segment>, max: u32) -> Result<u32, NicError> {
        let n = self.rx.completed_unreaped().min(max);
        for i in 0..n {
            let slot = self.rx.completed_slot(i).expect("counted");
            // The stack's snapshot; the slot keeps the segment until the next
            // deposit replaces it.
            out.push(self.mem.map().get(slot)?);
        }
        self.rx.reap(n)?;
        Ok(n)
    }

    // ---- device side -------------------------------------------------------

    /// One device pass: transmit posted TX slots and deposit received frames
    /// into posted RX slots, in batches; one notification if anything
    /// completed.
    pub fn dma(&mut self) -> Result<Work, NicError> {
        let work = Work {
            tx: self.dma_tx()?,
            rx: self.dma_rx()?,
        };
        // Interrupt moderation: one notification per pass with completions,
        // and none while an earlier one is still unacknowledged.
        if work.tx + work.rx > 0 && !self.irq_pending {
            let _ = self.irq_raise.send(&[1]);
            self.irq_pending = true;
            self.counters.notifications += 1;
        }
        Ok(work)
    }

    fn set_status(&self, slot: SegmentId, st: u16) -> Result<(), NicError> {
        self.mem
            .map()
            .write_at(slot, offset::STATUS, &st.to_le_bytes())?;
        Ok(())
    }

    fn dma_tx(&mut self) -> Result<u32, NicError> {
        let mut done = 0;
        while done < self.cfg.tx_batch && self.tx.nic_owned() > 0 {
            let slot = self.tx.nic_slot(0).expect("owned");
            let seg = self.mem.map().get(slot)?;
            self.counters.tx_lines_read += 1;
            let st = match DmaMeta::read(&seg) {
                Err(_) => {
                    self.counters.tx_bad += 1;
                    status::BAD_FRAME
                }
                Ok(meta) => {
                    // Gather the frame line by line: no flattening.
                    let mut chunks: Vec<&[u8]> = Vec::new();
                    let mut left = meta.frame_len as usize;
                    let mut c = seg.cursor_at(u64::from(meta.frame_off));
                    while left > 0 {
                        let chunk = c.chunk();
                        let take = chunk.len().min(left);
                        chunks.push(&chunk[..take]);
                        c.advance(take);
                        left -= take;
                    }
                    match self.port.transmit(&meta.vnet, &chunks) {
                        Ok(TxOutcome::Full) => {
                            self.counters.tx_full += 1;
                            break;
                        }
                        Ok(TxOutcome::Sent) => {
                            self.counters.tx_frames += 1;
                            self.counters.tx_bytes += u64::from(meta.frame_len);
                            self.counters.tx_lines_read += chunks.len() as u64;
                            status::OK
                        }
                        Err(PortError::Disconnected) => return Err(PortError::Disconnected.into()),
                        Err(_) => {
                            self.counters.tx_port_errors += 1;
                            status::PORT_ERROR
                        }
                    }
                }
            };
            drop(seg);
            self.set_status(slot, st)?;
            self.tx.complete(1)?;
            done += 1;
        }
        Ok(done)
    }

    fn dma_rx(&mut self) -> Result<u32, NicError> {
        let mut done = 0;
        let off = self.cfg.rx_frame_off;
        while done < self.cfg.rx_batch {
            let Some(slot) = self.rx.nic_slot(0) else {
                // Out of posted RX slots: whatever waits stays in the port
                // (back-pressure onto the wire) until the driver refills.
                self.counters.rx_no_slot += 1;
                break;
            };
            let mem = &self.mem;
            let mut result: Option<Result<(Segment, hicamp::WriteCounts, usize), hicamp::Error>> =
                None;
            let got = self
                .port
                .receive(&mut |vnet: &VirtioNetHdr, frame: &[u8]| {
                    let meta = DmaMeta {
                        vnet: *vnet,
                        frame_off: off,
                        status: status::OK,
                        frame_len: frame.len() as u32,
                        gso_segs: 0,
                    };
                    let mut b = mem.builder();
                    result = Some((|| {
                        b.write_at(0, &meta.to_bytes())?;
                        let counts = b.write_at_counted(u64::from(off), frame)?;
                        Ok((b.freeze(), counts, frame.len()))
                    })());
                })?;
            if !got {
                break;
            }
            let (seg, counts, len) = result.expect("deposit ran")?;
            self.mem.map().replace(slot, seg)?;
            self.rx.complete(1)?;
            self.counters.rx_frames += 1;
            self.counters.rx_bytes += len as u64;
            self.counters.rx_lines_written += counts.lines();
            self.counters.rx_lines_dedup += counts.dedup_hits;
            self.counters.rx_lines_zero += counts.zero_lines;
            done += 1;
        }
        Ok(done)
    }
}

impl<P: Port> Drop for Nic<P> {
    /// Gives the ring entries back to the segment map (releasing whatever
    /// segments the slots still hold).
    fn drop(&mut self) {
        let map = self.mem.map();
        for id in self.tx.ids().chain(self.rx.ids()) {
            let _ = map.delete(SegmentId(id));
        }
    }
}
