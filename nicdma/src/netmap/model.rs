//! An in-process model of netmap's kernel side, for testing the port's
//! ring protocol where there is no `/dev/netmap` (test support, not API).
//!
//! [`loopback`] lays out a region as netmap does at REGISTER (a
//! `netmap_if`, one TX and one RX ring, 2 KiB buffers, an extra-buffer
//! list) and starts a thread that plays the kernel of a netmap pipe whose
//! TX ring feeds its own RX ring. The port's syncs hand the region to the
//! thread and wait for it back, as a system call would. On each sync the
//! kernel thread:
//!
//! * checks the ring's `head`/`cur` lie in `[hwcur, hwtail]` (netmap resets
//!   the ring otherwise; the model records a violation and fails the
//!   sync), and that a slot whose `buf_idx` changed carries
//!   `NS_BUF_CHANGED`;
//! * takes TX slots `[hwcur, head)` (remembering a hash of each frame) and
//!   RX slots given back;
//! * "transmits" a random number of the pending TX frames, each at random
//!   as a pipe does (the TX slot's buffer is swapped with a free RX slot's,
//!   `NS_BUF_CHANGED` on both) or as a NIC does (the bytes are DMA'd into
//!   the RX slot's own buffer, no flag; sometimes split over two slots
//!   with `NS_MOREFRAG` on the first), checking that neither slot nor the
//!   frame's bytes changed while the kernel owned them;
//! * advances `tail`, and checks that no buffer index is in two places at
//!   once (ring slots and the extra-buffer list).
//!
//! Violations are collected in the [`ModelHandle`]; a full audit (every
//! buffer accounted for exactly once) runs on request.

use std::collections::HashSet;
use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::abi::{off, NetmapSlot, NS_BUF_CHANGED, NS_MOREFRAG};
use super::{NetmapPort, NetmapSync, Region, SyncDir, FIRST_BUF};
use crate::port::PortError;
use crate::sys::mem::Mmap;

/// Sizes and seed of a model port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// Slots of each ring (need not be a power of two).
    pub slots: u32,
    /// Extra buffers on the spare list.
    pub extra_bufs: u32,
    /// Bytes of each buffer.
    pub buf_size: u32,
    /// Seed of the kernel's random choices.
    pub seed: u64,
    /// Whether the kernel may split a frame over two RX slots
    /// (`NS_MOREFRAG`).
    pub fragments: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            slots: 32,
            extra_bufs: 8,
            buf_size: 2048,
            seed: 1,
            fragments: true,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    violations: Vec<String>,
    moved: u64,
    syncs: u64,
    audit_wanted: bool,
    audit: Option<Result<(), String>>,
}

/// The test's view of the model kernel.
#[derive(Debug, Clone)]
pub struct ModelHandle {
    shared: Arc<Mutex<Shared>>,
}

impl ModelHandle {
    fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Protocol violations seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.with(|s| s.violations.clone())
    }

    /// Frames moved from TX to RX.
    pub fn moved(&self) -> u64 {
        self.with(|s| s.moved)
    }

    /// Syncs served.
    pub fn syncs(&self) -> u64 {
        self.with(|s| s.syncs)
    }

    /// Asks for a full audit at the next sync: every buffer in exactly one
    /// place (with nothing kept by the application).
    pub fn request_audit(&self) {
        self.with(|s| {
            s.audit_wanted = true;
            s.audit = None;
        });
    }

    /// The outcome of the last requested audit, once run.
    pub fn audit(&self) -> Option<Result<(), String>> {
        self.with(|s| s.audit.clone())
    }
}

/// The port's side of the model: each sync is a round trip to the kernel
/// thread, which owns the region meanwhile.
#[derive(Debug)]
pub struct ModelSync {
    to_kernel: Option<Sender<(SyncDir, Region)>>,
    from_kernel: Receiver<(Region, io::Result<()>)>,
    thread: Option<JoinHandle<()>>,
}

impl NetmapSync for ModelSync {
    fn sync(&mut self, dir: SyncDir, region: Region) -> (Option<Region>, io::Result<()>) {
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the model kernel is gone");
        let Some(tx) = &self.to_kernel else {
            return (Some(region), Err(gone()));
        };
        if let Err(e) = tx.send((dir, region)) {
            let (_, region) = e.0;
            return (Some(region), Err(gone()));
        }
        match self.from_kernel.recv() {
            Ok((region, r)) => (Some(region), r),
            Err(_) => (None, Err(gone())),
        }
    }
}

impl Drop for ModelSync {
    fn drop(&mut self) {
        self.to_kernel = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A small xorshift generator (the model cannot use the dev-only testkit).
struct Xs(u64);

impl Xs {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(n.max(1))) as u32
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

struct Kernel {
    nifp: usize,
    tx_off: usize,
    rx_off: usize,
    bufs: usize,
    buf_size: usize,
    n: u32,
    nbufs: u32,
    tx_hwcur: u32,
    /// The next TX slot to transmit (`hwtail` is the slot before it).
    tx_done: u32,
    rx_hwcur: u32,
    rx_hwtail: u32,
    /// What the kernel last left in each slot: (buf_idx, len).
    tx_shadow: Vec<(u32, u16)>,
    rx_shadow: Vec<(u32, u16)>,
    /// Hash of each submitted TX frame.
    tx_sum: Vec<u64>,
    rng: Xs,
    fragments: bool,
    shared: Arc<Mutex<Shared>>,
}

impl Kernel {
    fn next(&self, i: u32) -> u32 {
        if i + 1 == self.n {
            0
        } else {
            i + 1
        }
    }

    fn prev(&self, i: u32) -> u32 {
        if i == 0 {
            self.n - 1
        } else {
            i - 1
        }
    }

    fn dist(&self, a: u32, b: u32) -> u32 {
        if b >= a {
            b - a
        } else {
            b + self.n - a
        }
    }

    fn slot_off(&self, ring: usize, i: u32) -> usize {
        ring + off::RING_SLOTS + i as usize * off::SLOT_SIZE
    }

    fn violation(&self, what: String) {
        let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        // The first few tell the story.
        if g.violations.len() < 8 {
            g.violations.push(what);
        }
    }

    fn buf_ok(&self, idx: u32) -> bool {
        (FIRST_BUF..self.nbufs).contains(&idx)
    }

    fn frame_sum(&self, r: &Region, s: &NetmapSlot) -> u64 {
        let at = self.bufs + s.buf_idx as usize * self.buf_size;
        r.map.slice(at, usize::from(s.len)).map_or(0, fnv)
    }

    /// One sync; `Err` is what the system call would return.
    fn sync(&mut self, dir: SyncDir, r: &mut Region) -> io::Result<()> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let (ring, hwcur, hwtail) = match dir {
            SyncDir::Tx => (self.tx_off, self.tx_hwcur, self.prev(self.tx_done)),
            SyncDir::Rx => (self.rx_off, self.rx_hwcur, self.rx_hwtail),
        };
        let head = r.u32_at(ring + off::RING_HEAD).unwrap_or(u32::MAX);
        let cur = r.u32_at(ring + off::RING_CUR).unwrap_or(u32::MAX);
        if head >= self.n
            || cur >= self.n
            || self.dist(hwcur, head) > self.dist(hwcur, hwtail)
            || self.dist(head, cur) > self.dist(head, hwtail)
        {
            self.violation(format!(
                "{dir:?}sync: head {head} cur {cur} outside [hwcur {hwcur}, hwtail {hwtail}]"
            ));
            return Err(einval());
        }
        // The slots the user gives to the kernel: [hwcur, head).
        let mut i = hwcur;
        while i != head {
            let at = self.slot_off(ring, i);
            let Some(mut s) = r.slot_at(at) else {
                return Err(einval());
            };
            let shadow = match dir {
                SyncDir::Tx => self.tx_shadow[i as usize],
                SyncDir::Rx => self.rx_shadow[i as usize],
            };
            if s.buf_idx != shadow.0 && s.flags & NS_BUF_CHANGED == 0 {
                self.violation(format!(
                    "{dir:?} slot {i}: buf_idx {} -> {} without NS_BUF_CHANGED",
                    shadow.0, s.buf_idx
                ));
            }
            if !self.buf_ok(s.buf_idx) || usize::from(s.len) > self.buf_size {
                self.violation(format!(
                    "{dir:?} slot {i}: bad buffer {} or length {}",
                    s.buf_idx, s.len
                ));
                return Err(einval());
            }
            match dir {
                SyncDir::Tx => {
                    self.tx_shadow[i as usize] = (s.buf_idx, s.len);
                    self.tx_sum[i as usize] = self.frame_sum(r, &s);
                }
                SyncDir::Rx => {
                    self.rx_shadow[i as usize] = (s.buf_idx, s.len);
                    // The kernel clears the flag when it takes the slot.
                    s.flags &= !NS_BUF_CHANGED;
                    r.put_slot(at, &s);
                }
            }
            i = self.next(i);
        }
        match dir {
            SyncDir::Tx => self.tx_hwcur = head,
            SyncDir::Rx => self.rx_hwcur = head,
        }
        self.wire(r);
        let tx_tail = self.prev(self.tx_done);
        r.put_u32(self.tx_off + off::RING_TAIL, tx_tail);
        r.put_u32(self.rx_off + off::RING_TAIL, self.rx_hwtail);
        self.check_owners(r);
        Ok(())
    }

    /// Moves a random number of pending TX frames into free RX slots by
    /// swapping buffers, as a netmap pipe does.
    fn wire(&mut self, r: &mut Region) {
        let pending = self.dist(self.tx_done, self.tx_hwcur);
        let room = self.dist(self.rx_hwtail, self.prev(self.rx_hwcur));
        let most = pending.min(room);
        let k = if self.rng.below(3) == 0 {
            most
        } else {
            self.rng.below(most + 1)
        };
        let mut moved = 0u64;
        for _ in 0..k {
            let (t, x) = (self.tx_done, self.rx_hwtail);
            let (ta, xa) = (self.slot_off(self.tx_off, t), self.slot_off(self.rx_off, x));
            let (Some(ts), Some(xs)) = (r.slot_at(ta), r.slot_at(xa)) else {
                return;
            };
            if (ts.buf_idx, ts.len) != self.tx_shadow[t as usize]
                || self.frame_sum(r, &ts) != self.tx_sum[t as usize]
            {
                self.violation(format!(
                    "TX slot {t} or its frame changed while the kernel owned it"
                ));
            }
            if xs.buf_idx != self.rx_shadow[x as usize].0 {
                self.violation(format!("RX slot {x} changed while the kernel owned it"));
            }
            let (new_tx, new_rx) = if self.rng.below(2) == 0 {
                // A pipe: the buffers trade places.
                (
                    NetmapSlot {
                        buf_idx: xs.buf_idx,
                        len: ts.len,
                        flags: NS_BUF_CHANGED,
                        ptr: 0,
                    },
                    NetmapSlot {
                        buf_idx: ts.buf_idx,
                        len: ts.len,
                        flags: NS_BUF_CHANGED | (ts.flags & NS_MOREFRAG),
                        ptr: 0,
                    },
                )
            } else {
                // A NIC: the frame is DMA'd into the RX slot's own buffer,
                // or, now and then, into two slots (NS_MOREFRAG on the
                // first), as a NIC with small RX buffers does.
                let src = self.bufs + ts.buf_idx as usize * self.buf_size;
                let bytes = r
                    .map
                    .slice(src, usize::from(ts.len))
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                let room = self.dist(self.rx_hwtail, self.prev(self.rx_hwcur));
                let cut =
                    if self.fragments && room >= 2 && bytes.len() >= 2 && self.rng.below(3) == 0 {
                        1 + self.rng.below(bytes.len() as u32 - 1) as usize
                    } else {
                        bytes.len()
                    };
                let dst = self.bufs + xs.buf_idx as usize * self.buf_size;
                r.map.write(dst, &bytes[..cut]);
                let mut first = NetmapSlot {
                    buf_idx: xs.buf_idx,
                    len: cut as u16,
                    flags: ts.flags & NS_MOREFRAG,
                    ptr: 0,
                };
                if cut < bytes.len() {
                    first.flags |= NS_MOREFRAG;
                    let x2 = self.next(x);
                    let xa2 = self.slot_off(self.rx_off, x2);
                    let Some(xs2) = r.slot_at(xa2) else { return };
                    if xs2.buf_idx != self.rx_shadow[x2 as usize].0 {
                        self.violation(format!("RX slot {x2} changed while the kernel owned it"));
                    }
                    let dst2 = self.bufs + xs2.buf_idx as usize * self.buf_size;
                    r.map.write(dst2, &bytes[cut..]);
                    let second = NetmapSlot {
                        buf_idx: xs2.buf_idx,
                        len: (bytes.len() - cut) as u16,
                        flags: ts.flags & NS_MOREFRAG,
                        ptr: 0,
                    };
                    r.put_slot(xa2, &second);
                    self.rx_shadow[x2 as usize] = (second.buf_idx, second.len);
                    // The first slot is written below; the ring moves past
                    // both.
                    self.rx_hwtail = x2;
                }
                (NetmapSlot { flags: 0, ..ts }, first)
            };
            r.put_slot(ta, &new_tx);
            r.put_slot(xa, &new_rx);
            self.tx_shadow[t as usize] = (new_tx.buf_idx, new_tx.len);
            self.rx_shadow[x as usize] = (new_rx.buf_idx, new_rx.len);
            self.tx_done = self.next(t);
            self.rx_hwtail = self.next(self.rx_hwtail);
            moved += 1;
            if self.dist(self.rx_hwtail, self.prev(self.rx_hwcur)) == 0 {
                break;
            }
        }
        let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        g.moved += moved;
    }

    /// No buffer in two places (slots of both rings, the spare list); with
    /// an audit requested, every buffer in exactly one.
    fn check_owners(&mut self, r: &Region) {
        let mut seen = HashSet::new();
        let mut dup = Vec::new();
        for ring in [self.tx_off, self.rx_off] {
            for i in 0..self.n {
                if let Some(s) = r.slot_at(self.slot_off(ring, i)) {
                    if !self.buf_ok(s.buf_idx) || !seen.insert(s.buf_idx) {
                        dup.push(s.buf_idx);
                    }
                }
            }
        }
        let mut at = r.u32_at(self.nifp + off::IF_BUFS_HEAD).unwrap_or(0);
        let mut steps = 0;
        while at != 0 && steps <= self.nbufs {
            if !self.buf_ok(at) || !seen.insert(at) {
                dup.push(at);
                break;
            }
            at = r
                .u32_at(self.bufs + at as usize * self.buf_size)
                .unwrap_or(0);
            steps += 1;
        }
        if !dup.is_empty() {
            self.violation(format!("buffers in two places (or invalid): {dup:?}"));
        }
        let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        g.syncs += 1;
        if g.audit_wanted {
            g.audit_wanted = false;
            let missing: Vec<u32> = (FIRST_BUF..self.nbufs)
                .filter(|i| !seen.contains(i))
                .collect();
            g.audit = Some(if dup.is_empty() && missing.is_empty() {
                Ok(())
            } else {
                Err(format!("duplicated {dup:?}, unaccounted {missing:?}"))
            });
        }
    }
}

/// A port on a model netmap pipe looped back to itself (what it sends, it
/// receives), with the kernel thread's handle.
pub fn loopback(cfg: ModelConfig) -> Result<(NetmapPort<ModelSync>, ModelHandle), PortError> {
    let bad = |why: &str| PortError::Os {
        op: "netmap model",
        source: io::Error::new(io::ErrorKind::InvalidInput, why.to_owned()),
    };
    if !(2..=4096).contains(&cfg.slots) || !(64..=65_535).contains(&cfg.buf_size) {
        return Err(bad("2..=4096 slots, buffers of 64..=65535 bytes"));
    }
    let n = cfg.slots;
    let ring_size = (off::RING_SLOTS + n as usize * off::SLOT_SIZE).div_ceil(128) * 128;
    // A netmap_if at 128 (so the port must use nr_offset), the rings from
    // 1024, the buffers page-aligned after them.
    let nifp = 128;
    let tx_off = 1024;
    let rx_off = tx_off + ring_size;
    let bufs = (rx_off + ring_size).div_ceil(4096) * 4096;
    let nbufs = FIRST_BUF + 2 * n + cfg.extra_bufs;
    let bs = cfg.buf_size as usize;
    let map = Mmap::anonymous(bufs + nbufs as usize * bs).map_err(|source| PortError::Os {
        op: "mmap the model region",
        source,
    })?;
    let mut r = Region { map };
    // netmap_if: one NIC ring pair, no host rings.
    r.map.write(nifp, b"model\0");
    r.put_u32(nifp + off::IF_TX_RINGS, 1);
    r.put_u32(nifp + off::IF_RX_RINGS, 1);
    r.put_u32(nifp + off::IF_HOST_TX_RINGS, 0);
    r.put_u32(nifp + off::IF_HOST_RX_RINGS, 0);
    for (k, ring) in [tx_off, rx_off].into_iter().enumerate() {
        let ofs = (ring - nifp) as i64;
        r.map
            .write(nifp + off::IF_RING_OFS + k * 8, &ofs.to_ne_bytes());
        r.map.write(
            ring + off::RING_BUF_OFS,
            &((bufs - ring) as i64).to_ne_bytes(),
        );
        r.put_u32(ring + off::RING_NUM_SLOTS, n);
        r.put_u32(ring + off::RING_BUF_SIZE, cfg.buf_size);
        r.map.write(ring + off::RING_DIR, &(k as u16).to_ne_bytes());
        r.put_u32(ring + off::RING_HEAD, 0);
        r.put_u32(ring + off::RING_CUR, 0);
        // TX: all but one slot free for the user; RX: nothing received.
        r.put_u32(ring + off::RING_TAIL, if k == 0 { n - 1 } else { 0 });
    }
    let mut tx_shadow = Vec::new();
    let mut rx_shadow = Vec::new();
    for i in 0..n {
        let (t, x) = (FIRST_BUF + i, FIRST_BUF + n + i);
        let slot = |b| NetmapSlot {
            buf_idx: b,
            ..NetmapSlot::default()
        };
        r.put_slot(tx_off + off::RING_SLOTS + i as usize * 16, &slot(t));
        r.put_slot(rx_off + off::RING_SLOTS + i as usize * 16, &slot(x));
        tx_shadow.push((t, 0));
        rx_shadow.push((x, 0));
    }
    // The extra buffers, linked through their first u32.
    let first_extra = FIRST_BUF + 2 * n;
    for b in first_extra..nbufs {
        let next = if b + 1 < nbufs { b + 1 } else { 0 };
        r.put_u32(bufs + b as usize * bs, next);
    }
    let head = if cfg.extra_bufs > 0 { first_extra } else { 0 };
    r.put_u32(nifp + off::IF_BUFS_HEAD, head);

    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut k = Kernel {
        nifp,
        tx_off,
        rx_off,
        bufs,
        buf_size: bs,
        n,
        nbufs,
        tx_hwcur: 0,
        tx_done: 0,
        rx_hwcur: 0,
        rx_hwtail: 0,
        tx_shadow,
        rx_shadow,
        tx_sum: vec![0; n as usize],
        rng: Xs(cfg.seed | 1),
        fragments: cfg.fragments,
        shared: shared.clone(),
    };
    let (to_kernel, requests) = channel::<(SyncDir, Region)>();
    let (replies, from_kernel) = channel();
    let thread = std::thread::Builder::new()
        .name("netmap-model".into())
        .spawn(move || {
            while let Ok((dir, mut region)) = requests.recv() {
                let res = k.sync(dir, &mut region);
                if replies.send((region, res)).is_err() {
                    break;
                }
            }
        })
        .map_err(|source| PortError::Os {
            op: "spawn the model kernel",
            source,
        })?;
    let sync = ModelSync {
        to_kernel: Some(to_kernel),
        from_kernel,
        thread: Some(thread),
    };
    let port = NetmapPort::from_registered(sync, r, nifp, 0, "model")?;
    Ok((port, ModelHandle { shared }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_refuses_a_head_past_tail() {
        let (mut port, model) = loopback(ModelConfig {
            slots: 8,
            ..ModelConfig::default()
        })
        .unwrap();
        // Nothing received yet (tail 0): claiming 3 slots is a lie.
        port.rx_head = 3;
        assert!(port.rxsync().is_err());
        let v = model.violations();
        assert!(v[0].contains("outside [hwcur 0, hwtail 0]"), "{v:?}");
    }

    #[test]
    fn the_model_sees_a_buffer_in_two_places() {
        let (mut port, model) = loopback(ModelConfig {
            slots: 8,
            extra_bufs: 2,
            ..ModelConfig::default()
        })
        .unwrap();
        let lay = port.lay;
        let r = port.region.as_mut().unwrap();
        let spare = r.u32_at(lay.nifp + off::IF_BUFS_HEAD).unwrap();
        assert_ne!(spare, 0);
        // The spare goes into a TX slot but stays on the spare list.
        r.put_slot(
            lay.tx.slot(0),
            &NetmapSlot {
                buf_idx: spare,
                len: 10,
                flags: NS_BUF_CHANGED,
                ptr: 0,
            },
        );
        port.tx_head = 1;
        port.tx_queued = true;
        crate::Port::flush(&mut port).unwrap();
        let v = model.violations();
        assert!(v.iter().any(|m| m.contains("two places")), "{v:?}");
        model.request_audit();
        port.rxsync().unwrap();
        assert!(matches!(model.audit(), Some(Err(_))));
    }
}

#[cfg(test)]
mod layout_tests {
    use super::super::Layout;
    use super::*;
    use crate::Port;

    /// A kernel side that is never asked anything.
    struct NoSync;

    impl NetmapSync for NoSync {
        fn sync(&mut self, _: SyncDir, region: Region) -> (Option<Region>, io::Result<()>) {
            (Some(region), Err(io::Error::other("no kernel")))
        }
    }

    /// A corruption of a fresh model region.
    type Corrupt = Box<dyn FnOnce(&mut Region, Layout)>;

    /// A fresh model region, corrupted by `f`, opened as a port.
    fn open_corrupted(f: impl FnOnce(&mut Region, Layout)) -> Result<(), PortError> {
        let (mut port, _model) = loopback(ModelConfig {
            slots: 8,
            extra_bufs: 3,
            ..ModelConfig::default()
        })
        .unwrap();
        let lay = port.lay;
        let mut region = port.region.take().unwrap();
        f(&mut region, lay);
        NetmapPort::from_registered(NoSync, region, lay.nifp, 0, "bad").map(drop)
    }

    #[test]
    fn bad_kernel_data_is_a_typed_error() {
        assert!(open_corrupted(|_, _| {}).is_ok());
        let cases: Vec<(&str, Corrupt)> = vec![
            (
                "ring offset outside",
                Box::new(|r, l| {
                    r.map
                        .write(l.nifp + off::IF_RING_OFS, &(1i64 << 40).to_ne_bytes());
                }),
            ),
            (
                "negative ring offset",
                Box::new(|r, l| {
                    r.map
                        .write(l.nifp + off::IF_RING_OFS, &(-4096i64).to_ne_bytes());
                }),
            ),
            (
                "unbound ring (offset 0)",
                Box::new(|r, l| {
                    r.map.write(l.nifp + off::IF_RING_OFS, &0i64.to_ne_bytes());
                }),
            ),
            (
                "no slots",
                Box::new(|r, l| {
                    r.put_u32(l.tx.off + off::RING_NUM_SLOTS, 0);
                }),
            ),
            (
                "slots past the region",
                Box::new(|r, l| {
                    r.put_u32(l.rx.off + off::RING_NUM_SLOTS, 1 << 20);
                }),
            ),
            (
                "tiny buffers",
                Box::new(|r, l| {
                    r.put_u32(l.tx.off + off::RING_BUF_SIZE, 10);
                }),
            ),
            (
                "wrong direction",
                Box::new(|r, l| {
                    r.map.write(l.rx.off + off::RING_DIR, &0u16.to_ne_bytes());
                }),
            ),
            (
                "pools differ",
                Box::new(|r, l| {
                    let b = r.i64_at(l.rx.off + off::RING_BUF_OFS).unwrap();
                    r.map
                        .write(l.rx.off + off::RING_BUF_OFS, &(b + 64).to_ne_bytes());
                }),
            ),
            (
                "tail out of range",
                Box::new(|r, l| {
                    r.put_u32(l.tx.off + off::RING_TAIL, 8);
                }),
            ),
            (
                "reserved buffer on the extra list",
                Box::new(|r, l| {
                    r.put_u32(l.nifp + off::IF_BUFS_HEAD, 1);
                }),
            ),
            (
                "extra list loops",
                Box::new(|r, l| {
                    let head = r.u32_at(l.nifp + off::IF_BUFS_HEAD).unwrap();
                    let b = l.buf(head).unwrap();
                    r.put_u32(b, head);
                }),
            ),
            (
                "ring asked beyond the port's",
                Box::new(|r, l| {
                    r.put_u32(l.nifp + off::IF_TX_RINGS, 0);
                }),
            ),
        ];
        for (what, f) in cases {
            match open_corrupted(f) {
                Err(PortError::Os { op, source }) => {
                    assert_eq!(op, "netmap rings", "{what}");
                    assert_eq!(source.kind(), io::ErrorKind::InvalidData, "{what}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        // The netmap_if itself outside the region.
        let (mut port, _m) = loopback(ModelConfig::default()).unwrap();
        let region = port.region.take().unwrap();
        let len = region.map.len();
        assert!(NetmapPort::from_registered(NoSync, region, len - 8, 0, "bad").is_err());
    }

    #[test]
    fn bad_rx_slots_are_dropped_and_fragments_gathered() {
        let (mut port, model) = loopback(ModelConfig {
            slots: 8,
            fragments: false,
            ..ModelConfig::default()
        })
        .unwrap();
        for i in 0..3u8 {
            let f = [i; 60];
            assert_eq!(
                port.transmit(&crate::VirtioNetHdr::default(), &[&f])
                    .unwrap(),
                crate::TxOutcome::Sent
            );
        }
        port.flush().unwrap();
        // Let the kernel deliver: sync until three frames wait.
        for _ in 0..1000 {
            port.rxsync().unwrap();
            if port.lay.rx.dist(port.rx_head, port.rx_tail) == 3 {
                break;
            }
        }
        assert_eq!(port.lay.rx.dist(port.rx_head, port.rx_tail), 3);
        // The "kernel" hands over a bad index, then a fragment: both go.
        let lay = port.lay;
        let r = port.region.as_mut().unwrap();
        let mut s0 = r.slot_at(lay.rx.slot(port.rx_head)).unwrap();
        let keep0 = s0;
        s0.buf_idx = u32::MAX;
        r.put_slot(lay.rx.slot(port.rx_head), &s0);
        let mut s1 = r.slot_at(lay.rx.slot(lay.rx.next(port.rx_head))).unwrap();
        s1.flags |= NS_MOREFRAG;
        r.put_slot(lay.rx.slot(lay.rx.next(port.rx_head)), &s1);
        let mut got = Vec::new();
        while port.receive(&mut |_, f| got.push(f.to_vec())).unwrap() {
            if got.len() > 3 {
                break;
            }
            // Put slot 0's buffer back before the ring is synced.
            let r = port.region.as_mut().unwrap();
            r.put_slot(lay.rx.slot(0), &keep0);
        }
        // Frame 0 (bad index) dropped; frames 1 and 2 arrive as one
        // two-slot packet, gathered.
        let mut joined = vec![1u8; 60];
        joined.extend_from_slice(&[2u8; 60]);
        assert_eq!(got, vec![joined]);
        assert_eq!(port.copies().rx_dropped, 1);
        assert_eq!(port.copies().rx_frames, 1);
        port.rxsync().unwrap();
        let v = model.violations();
        assert!(v.is_empty(), "{v:?}");
    }
}
