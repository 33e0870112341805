//! The TAP device's TX engine on a thread of its own.
//!
//! A NIC reads a posted TX descriptor by DMA while the CPU goes on; a TAP
//! "wire" is a `writev` whose kernel work (the frame copied into an skb, and
//! the peer's whole receive path: IP, TCP, the wake-up of its reader) runs
//! on the calling thread. For a 4 KiB HTTP reply that is about 5.5 us of an
//! 18 us request (perf, nginx in stack mode). [`TxThread`] moves it off the
//! application's core: the port hands the writer the slot's descriptor
//! ([`TxDesc::take`]: the headers, and the payload's segment references,
//! which move; no byte is copied and no count touched) and the writer gathers
//! the payload's lines into the `writev` itself, as a device's DMA engine
//! would, then drops the references.
//!
//! Frames of at least [`TxThread::min_len`] bytes go to the writer. Smaller
//! ones are written inline when the writer has nothing in flight (a queued
//! frame is never overtaken: the FIFO order of the wire is the ring's), since
//! the hand-off (a futex wake, the writer's wake-up on the other core) costs
//! about as much as a small frame's `writev` and takes CPU from whatever
//! else runs there (redis-benchmark at pipelining 1: 111 K -> 70 K requests/s
//! when every frame went through a writer).
//!
//! Frames queued during a NIC pass go to the writer together at the pass's
//! end ([`TxThread::flush`], the port's kick): one wake-up of the writer per
//! batch, not per frame (nginx in stack mode makes about 11 frames a pass).
//!
//! Back-pressure: at most [`MAX_IN_FLIGHT`] frames wait for the writer;
//! beyond that the port answers `Full` and the NIC keeps the slot posted.
//! A `writev` error on the writer thread is counted ([`TxThread::errors`]);
//! the frame is dropped, as a NIC drops a frame the wire refused.
//!
//! Fork: a thread does not survive `fork`. The port notices that it runs in
//! a child (a fork counter bumped by a `pthread_atfork` handler; the pid if
//! that could not be registered) and starts a writer of its own; the
//! parent's queued frames stay the parent's.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use crate::frame::TxDesc;
use crate::meta::VNET_HDR_LEN;

/// The writer thread's threshold from a setting's text (`HICAMP_TAP_TX_THREAD`):
/// `0` or `off`: no writer thread (`None`); else frames of at least that many
/// bytes go to it; an error for anything else.
pub fn parse_tx_thread(v: &str) -> Result<Option<usize>, String> {
    let v = v.trim();
    if v == "0" || v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| format!("{v:?} is not a frame size in bytes (or 0/off)"))
}

/// Frames queued for the writer at most (the NIC's slot stays posted beyond).
pub const MAX_IN_FLIGHT: usize = 256;

/// A batch this long goes to the writer without waiting for the pass's end.
const FLUSH_AT: usize = 32;

/// What the writer thread reports back.
#[derive(Debug, Default)]
struct Shared {
    /// Frames queued and not yet written (or dropped).
    in_flight: AtomicUsize,
    /// Frames written.
    written: AtomicU64,
    /// Frames the kernel refused (`writev` errors other than `EINTR`/`EAGAIN`).
    errors: AtomicU64,
    /// Bytes gathered into the writer's bounce buffer (frames of many
    /// separate runs of lines: see `write_frame`).
    gathered: AtomicU64,
    /// The port is going: a frame the wire does not take now is dropped
    /// instead of waited for.
    closing: AtomicBool,
}

/// One queued frame: its virtio-net header and the descriptor (taken from the slot).
#[derive(Debug)]
struct Job {
    hdr: [u8; VNET_HDR_LEN],
    frame: Frame,
}

/// A queued frame's bytes: a descriptor's (gathered by the writer), or a
/// copy (a frame that is no descriptor, queued behind descriptors).
// The descriptor is the common case and moves by value (no allocation per frame); the copy
// is the rare one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Frame {
    Desc(TxDesc),
    Bytes(Vec<u8>),
}

/// A running writer: where it runs, the queue to it, its counters, its thread.
#[derive(Debug)]
struct Writer {
    at: Here,
    tx: mpsc::Sender<Vec<Job>>,
    shared: Arc<Shared>,
    thread: std::thread::JoinHandle<()>,
}

/// A TAP queue's TX writer thread (see the module docs).
#[derive(Debug)]
pub struct TxThread {
    /// Frames of at least this many bytes go to the writer.
    min_len: usize,
    /// The process the writer runs in ([`here`]), and the queue to it (None:
    /// not started in this process yet).
    writer: Option<Writer>,
    /// Frames queued since the last flush (counted in flight already).
    batch: Vec<Job>,
}

impl TxThread {
    /// A writer for frames of at least `min_len` bytes (started at the first one).
    pub fn new(min_len: usize) -> TxThread {
        TxThread {
            min_len,
            writer: None,
            batch: Vec::new(),
        }
    }

    /// Frames of at least this many bytes go to the writer.
    pub fn min_len(&self) -> usize {
        self.min_len
    }

    fn live(&self) -> Option<&Arc<Shared>> {
        match &self.writer {
            Some(w) if w.at == here() => Some(&w.shared),
            _ => None,
        }
    }

    /// Frames waiting for the writer (0 when none runs in this process).
    pub fn in_flight(&self) -> usize {
        self.live()
            .map_or(0, |s| s.in_flight.load(Ordering::Acquire))
    }

    /// Hands the frames queued since the last flush to the writer (one
    /// wake-up). The port calls it at the end of each NIC pass.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let Some(w) = self.writer.as_ref().filter(|w| w.at == here()) else {
            // Queued in a process the writer is not in (cannot happen: `queue` starts one).
            return Err(io::Error::other("TAP writer missing"));
        };
        let n = batch.len();
        if let Err(mpsc::SendError(b)) = w.tx.send(batch) {
            w.shared.in_flight.fetch_sub(n, Ordering::AcqRel);
            drop(b);
            return Err(io::Error::other("TAP writer thread ended"));
        }
        Ok(())
    }

    /// Frames the writer of this process wrote.
    pub fn written(&self) -> u64 {
        self.live().map_or(0, |s| s.written.load(Ordering::Relaxed))
    }

    /// Frames the writer's `writev` failed on (dropped).
    pub fn errors(&self) -> u64 {
        self.live().map_or(0, |s| s.errors.load(Ordering::Relaxed))
    }

    /// Bytes the writer gathered into its bounce buffer.
    pub fn gathered(&self) -> u64 {
        self.live()
            .map_or(0, |s| s.gathered.load(Ordering::Relaxed))
    }

    /// Whether a frame of `len` bytes goes to the writer: a large one, or any
    /// while earlier frames wait there (the wire's order is the ring's).
    pub fn takes(&self, len: usize) -> bool {
        len >= self.min_len || self.in_flight() > 0
    }

    /// Queues `desc` (a snapshot of it) for the writer on `file`; `Ok(false)`
    /// when [`MAX_IN_FLIGHT`] frames wait already (back-pressure).
    /// The descriptor is taken ([`TxDesc::take`]: its payload's references move
    /// to the writer) only when it is queued.
    pub fn queue(
        &mut self,
        file: &Arc<File>,
        hdr: [u8; VNET_HDR_LEN],
        desc: &mut TxDesc,
    ) -> io::Result<bool> {
        let now = here();
        let stale = !matches!(&self.writer, Some(w) if w.at == now);
        if stale {
            // Forked: the parent's writer is not here, and its queue's state (a copy) is
            // not ours to touch; forget it.
            if let Some(old) = self.writer.take() {
                std::mem::forget(old);
            }
            // A batch copied from the parent holds references the child owns too (the
            // memory's counts are shared only in a shared memory, where they are the
            // parent's to drop): forgotten with the writer.
            std::mem::forget(std::mem::take(&mut self.batch));
            let (tx, rx) = mpsc::channel::<Vec<Job>>();
            let shared = Arc::new(Shared::default());
            let (f, s) = (Arc::clone(file), Arc::clone(&shared));
            let thread = std::thread::Builder::new()
                .name("hicamp-tap-tx".into())
                .spawn(move || writer(&f, &rx, &s))?;
            self.writer = Some(Writer {
                at: now,
                tx,
                shared,
                thread,
            });
        }
        self.enqueue(hdr, || Frame::Desc(desc.take()))
    }

    /// Queues a copy of the frame `chunks` (one that is no descriptor) behind the frames
    /// that wait for the writer, so that the wire's order stays the ring's; `Ok(false)` when
    /// [`MAX_IN_FLIGHT`] frames wait already. Only while frames wait (else the caller writes
    /// it itself).
    pub fn queue_copy(&mut self, hdr: [u8; VNET_HDR_LEN], chunks: &[&[u8]]) -> io::Result<bool> {
        self.enqueue(hdr, || Frame::Bytes(chunks.concat()))
    }

    /// Adds the frame `frame` makes to the batch when fewer than [`MAX_IN_FLIGHT`] wait for
    /// the writer (`frame` is called only then); else sends the batch, so that room opens,
    /// and answers `Ok(false)`.
    fn enqueue(
        &mut self,
        hdr: [u8; VNET_HDR_LEN],
        frame: impl FnOnce() -> Frame,
    ) -> io::Result<bool> {
        let Some(shared) = self.live() else {
            return Err(io::Error::other("TAP writer missing"));
        };
        if shared.in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
            self.flush()?;
            return Ok(false);
        }
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        self.batch.push(Job {
            hdr,
            frame: frame(),
        });
        if self.batch.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(true)
    }
}

impl Drop for TxThread {
    fn drop(&mut self) {
        let Some(w) = self.writer.take() else {
            return;
        };
        if w.at != here() {
            // In another process than the writer's, its queue is not ours (see `queue`).
            std::mem::forget(w);
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let n = batch.len();
        if n > 0 && w.tx.send(batch).is_err() {
            w.shared.in_flight.fetch_sub(n, Ordering::AcqRel);
        }
        // The writer writes what waits (dropping what the wire does not take now), then
        // ends with the queue; joined, so that the descriptor it shares closes with the port.
        w.shared.closing.store(true, Ordering::Release);
        drop(w.tx);
        let _ = w.thread.join();
    }
}

/// Which process this is, cheaply: the fork generation, or the pid when no
/// fork handler could be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Here {
    Generation(u64),
    Pid(u32),
}

fn here() -> Here {
    match crate::sys::fork_generation() {
        Some(g) => Here::Generation(g),
        None => Here::Pid(std::process::id()),
    }
}

/// The writer: each job's frame gathered from its lines and written, in order.
fn writer(file: &File, rx: &mpsc::Receiver<Vec<Job>>, shared: &Shared) {
    let mut flat = Vec::new();
    let mut chunks: Vec<&[u8]> = Vec::new();
    while let Ok(batch) = rx.recv() {
        for job in batch {
            let mut c = super::reuse(std::mem::take(&mut chunks));
            match &job.frame {
                Frame::Desc(d) => {
                    d.gather(&mut c);
                }
                Frame::Bytes(b) => c.push(b),
            }
            let len: usize = c.iter().map(|x| x.len()).sum();
            let r = loop {
                match super::write_frame(file, &mut flat, &job.hdr, &c) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            && !shared.closing.load(Ordering::Acquire) =>
                    {
                        // The device's send buffer is full: wait until it drains.
                        let _ = crate::sys::poll_writable(std::os::fd::AsFd::as_fd(file), 10);
                        continue;
                    }
                    r => break r,
                }
            };
            match r {
                Ok((n, g)) if n == VNET_HDR_LEN + len => {
                    shared.written.fetch_add(1, Ordering::Relaxed);
                    shared.gathered.fetch_add(g as u64, Ordering::Relaxed);
                }
                _ => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            chunks = super::reuse(c);
            // The frame's references go before the slot counts as free.
            drop(job);
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::VirtioNetHdr;
    use hicamp::{Config, Memory, SegmentSlice};
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};

    /// A datagram socket pair standing in for the TAP descriptor: a write is one frame, whole
    /// or refused (`EAGAIN` when full), as on a TAP queue. The writer's end is non-blocking.
    fn wire() -> (Arc<File>, UnixDatagram) {
        let (w, r) = UnixDatagram::pair().expect("socketpair");
        w.set_nonblocking(true).expect("O_NONBLOCK");
        (Arc::new(File::from(std::os::fd::OwnedFd::from(w))), r)
    }

    fn wait_idle(t: &TxThread) {
        let end = Instant::now() + Duration::from_secs(20);
        while t.in_flight() > 0 {
            assert!(Instant::now() < end, "the writer never finished");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Frames of every shape (headers only; a few lines; a TSO-sized frame of many lines at
    /// an unaligned offset; copies of frames that are no descriptors, between them) come out
    /// of the writer byte-exact and in queue order, in batches of every size, and the
    /// payload's references go with them: the memory holds nothing more afterwards.
    #[test]
    fn frames_arrive_in_order_and_their_lines_are_released() {
        let mem = Memory::new(Config::default()).unwrap();
        let before = mem.live_lines();
        let (w, r) = wire();
        let mut t = TxThread::new(0);
        let mut rng = testkit::Rng::new(7);
        let mut expect = Vec::new();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 1 << 17];
            for _ in 0..300 {
                let n = r.recv(&mut buf).expect("recv");
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        for i in 0..300usize {
            let plen = [0, 100, 1448, 4096, 40_000][i % 5] + i;
            let data = rng.bytes(plen + 37);
            let seg = mem.segment(&data).unwrap();
            let payload = SegmentSlice::new(seg, 37, plen);
            let hdrs = rng.bytes(54);
            let mut d = TxDesc::new(VirtioNetHdr::default(), &hdrs, &[payload]).unwrap();
            let hdr = d.meta().vnet.to_bytes();
            expect.extend_from_slice(&hdr);
            expect.extend_from_slice(&d.to_vec());
            if i % 5 == 3 && t.in_flight() > 0 {
                // A frame that is no descriptor, behind queued ones: a copy, in order.
                let bytes = d.to_vec();
                while !t.queue_copy(hdr, &[&bytes[..10], &bytes[10..]]).unwrap() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
            while !t.queue(&w, hdr, &mut d).unwrap() {
                std::thread::sleep(Duration::from_millis(1));
            }
            if i % 7 == 0 {
                t.flush().unwrap();
            }
            // Taken: the slot keeps its headers and metadata, not the payload.
            assert!(d.payload().is_empty());
            assert_eq!(d.headers(), &hdrs[..]);
        }
        t.flush().unwrap();
        wait_idle(&t);
        assert_eq!(t.written(), 300);
        assert_eq!(t.errors(), 0);
        drop(t);
        drop(w);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(
            got == expect,
            "the writer's bytes differ from the frames queued"
        );
        assert_eq!(
            mem.live_lines(),
            before,
            "a frame's lines outlived its write"
        );
    }

    #[test]
    fn the_setting_parses_or_says_why_not() {
        assert_eq!(parse_tx_thread("0"), Ok(None));
        assert_eq!(parse_tx_thread(" OFF "), Ok(None));
        assert_eq!(parse_tx_thread("2048"), Ok(Some(2048)));
        let e = parse_tx_thread("2k").unwrap_err();
        assert!(e.contains("\"2k\""), "{e}");
        assert!(parse_tx_thread("-1").is_err());
    }

    /// A wire that takes nothing: the queue stops at MAX_IN_FLIGHT frames (back-pressure),
    /// and everything arrives once the wire drains.
    #[test]
    fn a_stalled_wire_is_back_pressure() {
        let mem = Memory::new(Config::default()).unwrap();
        let (w, r) = wire();
        let mut t = TxThread::new(0);
        let seg = mem.segment(&vec![9u8; 8192]).unwrap();
        let mut queued = 0usize;
        let mut refused = false;
        // The socket holds what its send buffer takes (a few dozen frames at the default
        // 208 KiB); the rest wait in the queue until MAX_IN_FLIGHT do.
        for _ in 0..4096 {
            let mut d = TxDesc::new(
                VirtioNetHdr::default(),
                &[1; 14],
                &[SegmentSlice::from_segment(seg.clone())],
            )
            .unwrap();
            if t.queue(&w, [0; VNET_HDR_LEN], &mut d).unwrap() {
                queued += 1;
            } else {
                refused = true;
                assert_eq!(d.payload().len(), 1, "a refused frame keeps its payload");
                break;
            }
        }
        assert!(refused, "never refused");
        assert!(queued >= MAX_IN_FLIGHT, "refused after {queued} frames");
        t.flush().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..queued {
            assert_eq!(r.recv(&mut buf).unwrap(), VNET_HDR_LEN + 14 + 8192);
        }
        wait_idle(&t);
        assert_eq!(t.written(), queued as u64);
    }
}
