//! The netmap backend: a [`Port`] on one ring pair of a netmap port
//! (`eth0`, `eth0-2`, `vale0:1`, a pipe end), where `/dev/netmap` exists.
//!
//! ```text
//!   region (this process's memory, given to netmap with NETMAP_REQ_OPT_EXTMEM)
//!  +-----------+--------------------+----------------------------------------+
//!  | netmap_if | TX ring | RX ring  | 2 KiB buffers: ring slots' and extras   |
//!  +-----------+--------------------+----------------------------------------+
//!     ring_ofs[] -> rings; a slot names its buffer by index:
//!     buffer address = ring + buf_ofs + buf_idx * nr_buf_size
//! ```
//!
//! * Opening: `open("/dev/netmap")`, `NIOCCTRL` with `NETMAP_REQ_REGISTER`
//!   (mode `NR_REG_ONE_NIC`, the ring named by a `-K` suffix, else 0) and
//!   the EXTMEM option: netmap carves its `netmap_if`, rings and buffers
//!   out of a region this port mapped (huge pages when reserved: a ring
//!   larger than a page must be physically contiguous; else 4 KiB pages
//!   and rings of at most 240 slots). There is no `mmap` of the device.
//! * RX: the user owns `[head, tail)`; each slot is lent to the NIC's
//!   deposit (the one copy into lines, counted in
//!   [`PortCopies::rx_copy_bytes`]) and `head` moves on; `NIOCRXSYNC` gives
//!   the slots back and moves `tail` when `head` reaches it.
//! * Keeping a received buffer without a copy, as PASTE does:
//!   [`NetmapPort::receive_keep`] swaps a spare buffer (from the extra
//!   buffer list `ni_bufs_head`, linked through each buffer's first `u32`)
//!   into the RX slot with `NS_BUF_CHANGED` and lends the received buffer
//!   to the caller as a [`Kept`]; [`NetmapPort::release`] puts it back on
//!   the list, [`NetmapPort::transmit_kept`] sends it by swapping it into a
//!   TX slot (zero-copy reply; the slot's old buffer becomes a spare).
//! * TX: the emulated DMA gather into the slots' buffers (offloads done on
//!   the way, `ringtx`), `head`/`cur` advanced, one `NIOCTXSYNC` per
//!   [`Port::flush`].
//! * The ring logic talks to the kernel only through [`NetmapSync`]: the
//!   device's ioctls ([`DevSync`]) or, in tests, a thread that plays
//!   netmap's kernel side on the same ring layout (`model`, with the
//!   `test-support` feature). The region is handed over by value for each
//!   sync, so nothing of ours reads the rings while the kernel side owns
//!   them.
//! * A packet of several slots (`NS_MOREFRAG` on all but the last) is
//!   lent as one chunk per slot. Not done: sending one (a frame must fit a
//!   buffer); one ring pair per port (use `ethtool -L IFACE combined 1`, or
//!   one port per `IFACE-K`); no LRO.

pub mod abi;
#[cfg(any(test, feature = "test-support"))]
pub mod model;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use abi::{off, NetmapSlot, NS_BUF_CHANGED, NS_MOREFRAG};

use crate::meta::VirtioNetHdr;
use crate::port::{Port, PortCopies, PortError, TxOutcome};
use crate::ringtx::{self, TxSlots};
use crate::sys::mem::Mmap;

/// Where the netmap control device is.
pub const NETMAP_DEVICE: &str = "/dev/netmap";

/// Buffers 0 and 1 are reserved by netmap: never a slot's.
const FIRST_BUF: u32 = 2;

/// The memory netmap's rings and buffers live in (the segment-ring region:
/// an `mmap`'d region of 2 KiB buffers). Opaque outside the crate; it
/// changes hands by value on every sync.
pub struct Region {
    map: Mmap,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("len", &self.map.len())
            .finish()
    }
}

impl Region {
    fn u32_at(&self, at: usize) -> Option<u32> {
        self.map.read::<4>(at).map(u32::from_ne_bytes)
    }

    fn i64_at(&self, at: usize) -> Option<i64> {
        self.map.read::<8>(at).map(i64::from_ne_bytes)
    }

    fn put_u32(&mut self, at: usize, v: u32) -> bool {
        self.map.write(at, &v.to_ne_bytes())
    }

    fn slot_at(&self, at: usize) -> Option<NetmapSlot> {
        let b = self.map.read::<16>(at)?;
        Some(NetmapSlot {
            buf_idx: u32::from_ne_bytes(b[0..4].try_into().ok()?),
            len: u16::from_ne_bytes(b[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(b[6..8].try_into().ok()?),
            ptr: u64::from_ne_bytes(b[8..16].try_into().ok()?),
        })
    }

    fn put_slot(&mut self, at: usize, s: &NetmapSlot) -> bool {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&s.buf_idx.to_ne_bytes());
        b[4..6].copy_from_slice(&s.len.to_ne_bytes());
        b[6..8].copy_from_slice(&s.flags.to_ne_bytes());
        b[8..16].copy_from_slice(&s.ptr.to_ne_bytes());
        self.map.write(at, &b)
    }
}

/// Which ring a sync is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDir {
    /// `NIOCTXSYNC`.
    Tx,
    /// `NIOCRXSYNC`.
    Rx,
}

/// The kernel side of the rings: a sync hands the region over with the
/// ring's `head`/`cur` published, and gets it back with `tail` moved.
pub trait NetmapSync: Send {
    /// Syncs one direction. Returns the region (`None` only if the kernel
    /// side is gone with it) and the outcome.
    fn sync(&mut self, dir: SyncDir, region: Region) -> (Option<Region>, io::Result<()>);

    /// A descriptor that polls readable when RX slots may be waiting.
    fn fd(&self) -> Option<RawFd> {
        None
    }
}

/// The real kernel: the `/dev/netmap` descriptor the port was registered
/// on.
#[derive(Debug)]
pub struct DevSync {
    fd: OwnedFd,
}

impl NetmapSync for DevSync {
    fn sync(&mut self, dir: SyncDir, region: Region) -> (Option<Region>, io::Result<()>) {
        let r = match dir {
            SyncDir::Tx => crate::sys::netmap::txsync(self.fd.as_fd()),
            SyncDir::Rx => crate::sys::netmap::rxsync(self.fd.as_fd()),
        };
        (Some(region), r)
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}

/// One ring as the port sees it.
#[derive(Debug, Clone, Copy)]
struct RingLay {
    off: usize,
    n: u32,
}

impl RingLay {
    fn slot(&self, i: u32) -> usize {
        self.off + off::RING_SLOTS + i as usize * off::SLOT_SIZE
    }

    fn next(&self, i: u32) -> u32 {
        if i + 1 == self.n {
            0
        } else {
            i + 1
        }
    }

    /// Slots from `a` up to (not including) `b`.
    fn dist(&self, a: u32, b: u32) -> u32 {
        if b >= a {
            b - a
        } else {
            b + self.n - a
        }
    }
}

/// Where things are in the region, checked once after registering.
#[derive(Debug, Clone, Copy)]
struct Layout {
    nifp: usize,
    tx: RingLay,
    rx: RingLay,
    /// Region offset of buffer 0.
    bufs: usize,
    buf_size: usize,
    /// Buffers the region holds (valid indices: 2 .. nbufs).
    nbufs: u32,
}

fn bad_layout(why: impl Into<String>) -> PortError {
    PortError::Os {
        op: "netmap rings",
        source: io::Error::new(io::ErrorKind::InvalidData, why.into()),
    }
}

impl Layout {
    /// Reads the `netmap_if` at `nifp` and the rings `tx_i` / `rx_i` (NIC
    /// ring numbers) it points to, checking every offset against the
    /// region.
    fn parse(r: &Region, nifp: usize, tx_i: u32, rx_i: u32) -> Result<Layout, PortError> {
        let get = |o: usize| {
            r.u32_at(nifp + o)
                .ok_or_else(|| bad_layout("netmap_if outside the region"))
        };
        let (tx_rings, rx_rings) = (get(off::IF_TX_RINGS)?, get(off::IF_RX_RINGS)?);
        let host_tx = get(off::IF_HOST_TX_RINGS)?;
        if tx_i >= tx_rings || rx_i >= rx_rings {
            return Err(bad_layout(format!(
                "ring {tx_i}/{rx_i} asked, the port has {tx_rings} TX and {rx_rings} RX rings"
            )));
        }
        let ring = |k: u32, dir: u16| -> Result<(RingLay, usize, usize), PortError> {
            let ofs = r
                .i64_at(nifp + off::IF_RING_OFS + k as usize * 8)
                .ok_or_else(|| bad_layout("ring_ofs outside the region"))?;
            let at = (nifp as i64)
                .checked_add(ofs)
                .filter(|&a| ofs != 0 && a >= 0)
                .ok_or_else(|| bad_layout("a ring offset points outside the region"))?
                as usize;
            let n = r
                .u32_at(at + off::RING_NUM_SLOTS)
                .ok_or_else(|| bad_layout("a ring outside the region"))?;
            let size = r.u32_at(at + off::RING_BUF_SIZE).unwrap_or(0) as usize;
            let rdir = r
                .map
                .read::<2>(at + off::RING_DIR)
                .map(u16::from_ne_bytes)
                .unwrap_or(u16::MAX);
            let buf_ofs = r.i64_at(at + off::RING_BUF_OFS).unwrap_or(i64::MIN);
            let lay = RingLay { off: at, n };
            if !(2..=1 << 20).contains(&n)
                || r.map
                    .slice(lay.slot(0), n as usize * off::SLOT_SIZE)
                    .is_none()
            {
                return Err(bad_layout(format!("a ring of {n} slots does not fit")));
            }
            if !(64..=65_535).contains(&size) || rdir != dir {
                return Err(bad_layout(format!(
                    "ring with buffer size {size}, direction {rdir}"
                )));
            }
            let bufs = (at as i64)
                .checked_add(buf_ofs)
                .filter(|&b| b >= 0 && (b as usize) < r.map.len())
                .ok_or_else(|| bad_layout("buffers outside the region"))?;
            Ok((lay, bufs as usize, size))
        };
        let (tx, tbufs, tsize) = ring(tx_i, 0)?;
        let (rx, rbufs, rsize) = ring(rx_i + tx_rings + host_tx, 1)?;
        if (tbufs, tsize) != (rbufs, rsize) {
            return Err(bad_layout("the TX and RX rings use different buffer pools"));
        }
        let nbufs = ((r.map.len() - tbufs) / tsize).min(u32::MAX as usize) as u32;
        Ok(Layout {
            nifp,
            tx,
            rx,
            bufs: tbufs,
            buf_size: tsize,
            nbufs,
        })
    }

    fn buf(&self, idx: u32) -> Option<usize> {
        (FIRST_BUF..self.nbufs)
            .contains(&idx)
            .then(|| self.bufs + idx as usize * self.buf_size)
    }
}

/// A received buffer the application keeps (swapped out of the RX ring):
/// give it back with [`NetmapPort::release`] or send it with
/// [`NetmapPort::transmit_kept`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a kept buffer is lost to the port until released"]
pub struct Kept {
    idx: u32,
    len: u16,
}

impl Kept {
    /// The netmap buffer index.
    pub fn index(&self) -> u32 {
        self.idx
    }

    /// Bytes of the frame in it.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Buffer swaps a netmap port made (zero-copy paths), beside its
/// [`PortCopies`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetmapSwaps {
    /// Received buffers kept by swapping a spare into the RX slot.
    pub rx_kept: u64,
    /// Kept buffers sent by swapping them into a TX slot.
    pub tx_swapped: u64,
    /// Kept buffers given back to the spare list.
    pub released: u64,
}

/// Sizes of the extmem region of a real netmap port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetmapConfig {
    /// Buffers in the region's pool (ring slots and extras come out of it).
    pub bufs: u32,
    /// Extra buffers to ask for (the spare list for keeping RX buffers).
    pub extra_bufs: u32,
    /// Ring objects in the region's ring pool.
    pub ring_objs: u32,
}

impl Default for NetmapConfig {
    fn default() -> Self {
        NetmapConfig {
            bufs: 8192,
            extra_bufs: 512,
            ring_objs: 16,
        }
    }
}

/// A [`Port`] on one ring pair of a netmap port, its kernel side behind
/// `S` ([`DevSync`]: the device).
pub struct NetmapPort<S: NetmapSync = DevSync> {
    // Declared before `region`: dropped first, so a real port's descriptor
    // (its registration) goes before the region is unmapped.
    sync: S,
    region: Option<Region>,
    lay: Layout,
    tx_head: u32,
    tx_tail: u32,
    tx_queued: bool,
    rx_head: u32,
    rx_tail: u32,
    /// Where `receive` assembles a packet of several slots.
    scratch: Vec<u8>,
    spares: u32,
    /// Buffers lent out as [`Kept`].
    held: Vec<bool>,
    /// An error a sync met where it could not be returned (`free()`).
    sync_err: Option<PortError>,
    name: String,
    mac: Option<[u8; 6]>,
    mtu: Option<u32>,
    copies: PortCopies,
    swaps: NetmapSwaps,
}

impl<S: NetmapSync> fmt::Debug for NetmapPort<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetmapPort")
            .field("name", &self.name)
            .field("tx_slots", &self.lay.tx.n)
            .field("rx_slots", &self.lay.rx.n)
            .field("buf_size", &self.lay.buf_size)
            .field("spares", &self.spares)
            .finish_non_exhaustive()
    }
}

/// The error for a host without `/dev/netmap`, naming the backends that
/// work here.
pub fn missing_device() -> PortError {
    PortError::Unsupported {
        backend: "netmap",
        why: format!(
            "{NETMAP_DEVICE} not found (the netmap kernel module is not loaded); backends that work here: {}",
            crate::backend::working_here()
        ),
    }
}

/// Whether netmap works here (the device opens), and if not, why.
pub fn probe() -> Result<(), String> {
    if !std::path::Path::new(NETMAP_DEVICE).exists() {
        return Err(format!(
            "{NETMAP_DEVICE} not found (no netmap kernel module)"
        ));
    }
    crate::sys::netmap::open_device(NETMAP_DEVICE)
        .map(drop)
        .map_err(|e| format!("{NETMAP_DEVICE}: {e}"))
}

/// Splits `netmap:eth0-2` / `eth0-2` / `vale0:1` into the name for
/// `nr_name` and the NIC ring (`-K` suffix, else 0).
fn parse_name(spec: &str) -> (&str, u16) {
    let name = spec.strip_prefix("netmap:").unwrap_or(spec);
    if let Some((base, k)) = name.rsplit_once('-') {
        if !base.is_empty() && !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(k) = k.parse() {
                return (base, k);
            }
        }
    }
    (name, 0)
}

const PAGE: usize = 4096;
const HUGE: usize = 2 << 20;

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

impl NetmapPort<DevSync> {
    /// Opens port `name` (`eth0`, `eth0-K` for NIC ring K, `vale0:1`, ...;
    /// a leading `netmap:` is allowed) with the default sizes.
    pub fn open(name: &str) -> Result<Self, PortError> {
        Self::with_config(name, NetmapConfig::default())
    }

    /// Opens port `name` with its memory in an extmem region of `cfg`'s
    /// sizes.
    ///
    /// Errors: [`PortError::Unsupported`] without `/dev/netmap` (naming the
    /// backends that work here) or when netmap lacks extmem,
    /// [`PortError::NotPermitted`], [`PortError::NoSuchInterface`].
    pub fn with_config(name: &str, cfg: NetmapConfig) -> Result<Self, PortError> {
        let (base, ring) = parse_name(name);
        let mut hdr =
            abi::NmreqHeader::new(abi::NETMAP_REQ_REGISTER, base).ok_or_else(|| PortError::Os {
                op: "netmap port name",
                source: io::Error::new(io::ErrorKind::InvalidInput, "empty or too long"),
            })?;
        if !std::path::Path::new(NETMAP_DEVICE).exists() {
            return Err(missing_device());
        }
        let fd =
            crate::sys::netmap::open_device(NETMAP_DEVICE).map_err(|e| match e.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => PortError::NotPermitted("open /dev/netmap"),
                Some(libc::ENOENT | libc::ENXIO | libc::ENODEV) => missing_device(),
                _ => PortError::Os {
                    op: "open /dev/netmap",
                    source: e,
                },
            })?;
        let os = |op| move |source| PortError::Os { op, source };
        // Huge pages let ring objects span pages (netmap drops objects that
        // cross physically discontiguous pages); without them, one ring
        // must fit a page: 240 slots.
        let (if_size, if_total) = (1024usize, 2usize);
        let mut slots = 4096usize;
        let mut ring_size = round_up(off::RING_SLOTS + slots * off::SLOT_SIZE, 128);
        let body = |ring_size: usize| {
            round_up(if_size * if_total, PAGE)
                + round_up(ring_size * cfg.ring_objs as usize, PAGE)
                + round_up(cfg.bufs as usize * 2048, PAGE)
        };
        let map = match Mmap::anonymous_huge(round_up(body(ring_size), HUGE)) {
            Ok(m) => m,
            Err(_) => {
                slots = (PAGE - off::RING_SLOTS) / off::SLOT_SIZE;
                ring_size = PAGE;
                Mmap::anonymous(body(ring_size)).map_err(os("mmap the netmap region"))?
            }
        };
        let mut ext = abi::NmreqOptExtmem {
            nro_usrptr: map.addr(),
            ..Default::default()
        };
        ext.nro_info = abi::NmreqPoolsInfo {
            nr_memsize: map.len() as u64,
            nr_if_pool_objtotal: if_total as u32,
            nr_if_pool_objsize: if_size as u32,
            nr_ring_pool_objtotal: cfg.ring_objs,
            nr_ring_pool_objsize: ring_size as u32,
            nr_buf_pool_objtotal: cfg.bufs,
            nr_buf_pool_objsize: 2048,
            ..Default::default()
        };
        let mut req = abi::NmreqRegister {
            nr_mode: abi::NR_REG_ONE_NIC,
            nr_ringid: ring,
            nr_tx_slots: slots as u32,
            nr_rx_slots: slots as u32,
            nr_extra_bufs: cfg.extra_bufs,
            ..Default::default()
        };
        crate::sys::netmap::register_extmem(fd.as_fd(), &mut hdr, &mut req, &mut ext).map_err(
            |e| match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) => PortError::Unsupported {
                    backend: "netmap",
                    why: "this netmap has no extmem (build it with ./configure --enable-extmem)"
                        .into(),
                },
                Some(libc::EPERM | libc::EACCES) => PortError::NotPermitted("NIOCCTRL REGISTER"),
                Some(libc::ENXIO | libc::ENOENT | libc::ENODEV) => {
                    PortError::NoSuchInterface(base.into())
                }
                _ if ext.nro_opt.nro_status != 0 => PortError::Os {
                    op: "netmap EXTMEM option",
                    source: io::Error::from_raw_os_error(ext.nro_opt.nro_status as i32),
                },
                _ => PortError::Os {
                    op: "NIOCCTRL REGISTER",
                    source: e,
                },
            },
        )?;
        let nifp = usize::try_from(req.nr_offset)
            .map_err(|_| bad_layout("nr_offset beyond the address space"))?;
        let (mac, mtu) = match crate::xdp::iface_info(base) {
            Ok((m, t)) => (Some(m), Some(t)),
            Err(_) => (None, None),
        };
        let mut p = NetmapPort::from_registered(
            DevSync { fd },
            Region { map },
            nifp,
            u32::from(ring),
            base,
        )?;
        p.mac = mac;
        p.mtu = mtu;
        Ok(p)
    }
}

impl<S: NetmapSync> NetmapPort<S> {
    /// A port on rings the kernel side has just set up in `region`:
    /// `netmap_if` at `nifp`, NIC ring pair `ring`.
    pub(crate) fn from_registered(
        sync: S,
        region: Region,
        nifp: usize,
        ring: u32,
        name: &str,
    ) -> Result<Self, PortError> {
        let lay = Layout::parse(&region, nifp, ring, ring)?;
        let word = |ring: &RingLay, o| {
            region
                .u32_at(ring.off + o)
                .filter(|&v| v < ring.n)
                .ok_or_else(|| bad_layout("a ring index out of range"))
        };
        let (tx_head, tx_tail) = (
            word(&lay.tx, off::RING_HEAD)?,
            word(&lay.tx, off::RING_TAIL)?,
        );
        let (rx_head, rx_tail) = (
            word(&lay.rx, off::RING_HEAD)?,
            word(&lay.rx, off::RING_TAIL)?,
        );
        // Count the extra buffers (bounded: a cycle is the kernel's bug).
        let mut spares = 0u32;
        let mut at = region
            .u32_at(nifp + off::IF_BUFS_HEAD)
            .ok_or_else(|| bad_layout("netmap_if outside the region"))?;
        while at != 0 {
            let b = lay
                .buf(at)
                .ok_or_else(|| bad_layout("an extra buffer index out of range"))?;
            spares += 1;
            if spares > lay.nbufs {
                return Err(bad_layout("the extra buffer list loops"));
            }
            at = region.u32_at(b).unwrap_or(0);
        }
        Ok(NetmapPort {
            sync,
            region: Some(region),
            held: vec![false; lay.nbufs as usize],
            lay,
            tx_head,
            tx_tail,
            tx_queued: false,
            rx_head,
            rx_tail,
            scratch: Vec::new(),
            spares,
            sync_err: None,
            name: name.to_owned(),
            mac: None,
            mtu: None,
            copies: PortCopies::default(),
            swaps: NetmapSwaps::default(),
        })
    }

    /// The interface's MAC address, when the port is a NIC's.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac
    }

    /// The interface's MTU, when the port is a NIC's.
    pub fn mtu(&self) -> Option<u32> {
        self.mtu
    }

    /// The buffer swaps made so far.
    pub fn swaps(&self) -> NetmapSwaps {
        self.swaps
    }

    /// Spare buffers on the extra-buffer list.
    pub fn spares(&self) -> u32 {
        self.spares
    }

    /// Slots of the (TX, RX) rings.
    pub fn ring_slots(&self) -> (u32, u32) {
        (self.lay.tx.n, self.lay.rx.n)
    }

    fn reg(&self) -> Result<&Region, PortError> {
        self.region.as_ref().ok_or(PortError::Disconnected)
    }

    fn reg_mut(&mut self) -> Result<&mut Region, PortError> {
        self.region.as_mut().ok_or(PortError::Disconnected)
    }

    /// Publishes `head`/`cur` of one ring, syncs it, reads `tail` back.
    fn do_sync(&mut self, dir: SyncDir) -> Result<(), PortError> {
        let (ring, head) = match dir {
            SyncDir::Tx => (self.lay.tx, self.tx_head),
            SyncDir::Rx => (self.lay.rx, self.rx_head),
        };
        let r = self.reg_mut()?;
        r.put_u32(ring.off + off::RING_HEAD, head);
        r.put_u32(ring.off + off::RING_CUR, head);
        let region = self.region.take().ok_or(PortError::Disconnected)?;
        self.copies.kicks += 1;
        let (region, res) = self.sync.sync(dir, region);
        self.region = region;
        let op = match dir {
            SyncDir::Tx => "NIOCTXSYNC",
            SyncDir::Rx => "NIOCRXSYNC",
        };
        res.map_err(|source| PortError::Os { op, source })?;
        let tail = self
            .reg()?
            .u32_at(ring.off + off::RING_TAIL)
            .filter(|&t| t < ring.n)
            .ok_or_else(|| bad_layout("the kernel's tail is out of range"))?;
        match dir {
            SyncDir::Tx => {
                self.tx_tail = tail;
                self.tx_queued = false;
            }
            SyncDir::Rx => self.rx_tail = tail,
        }
        Ok(())
    }

    /// `NIOCRXSYNC` now: gives the consumed RX slots back and learns of new
    /// ones (what a `poll()` on the descriptor does).
    pub fn rxsync(&mut self) -> Result<(), PortError> {
        self.do_sync(SyncDir::Rx)
    }

    fn spare_pop(&mut self) -> Option<u32> {
        let lay = self.lay;
        let r = self.region.as_mut()?;
        let head = r.u32_at(lay.nifp + off::IF_BUFS_HEAD)?;
        let b = lay.buf(head)?;
        let next = r.u32_at(b)?;
        r.put_u32(lay.nifp + off::IF_BUFS_HEAD, next);
        self.spares = self.spares.saturating_sub(1);
        Some(head)
    }

    fn spare_push(&mut self, idx: u32) {
        let lay = self.lay;
        let Some(b) = lay.buf(idx) else { return };
        let Some(r) = self.region.as_mut() else {
            return;
        };
        let head = r.u32_at(lay.nifp + off::IF_BUFS_HEAD).unwrap_or(0);
        r.put_u32(b, head);
        r.put_u32(lay.nifp + off::IF_BUFS_HEAD, idx);
        self.spares += 1;
    }

    /// The next received packet: its first slot and how many slots it
    /// spans (fragments with `NS_MOREFRAG` on all but the last), syncing
    /// when the user range is empty or ends inside a packet; drops
    /// malformed packets (counted).
    fn rx_next(&mut self) -> Result<Option<(NetmapSlot, u32)>, PortError> {
        let mut synced = false;
        loop {
            let avail = self.lay.rx.dist(self.rx_head, self.rx_tail);
            let mut k = 0;
            let mut bad = false;
            let mut complete = false;
            let mut i = self.rx_head;
            let mut first = None;
            while k < avail {
                let s = self
                    .reg()?
                    .slot_at(self.lay.rx.slot(i))
                    .ok_or_else(|| bad_layout("RX slot outside the region"))?;
                first.get_or_insert(s);
                k += 1;
                bad |= self.lay.buf(s.buf_idx).is_none() || usize::from(s.len) > self.lay.buf_size;
                if s.flags & NS_MOREFRAG == 0 {
                    complete = true;
                    break;
                }
                i = self.lay.rx.next(i);
            }
            let too_long = k as usize >= abi::NETMAP_MAX_FRAGS || k + 1 >= self.lay.rx.n;
            if complete && !bad {
                return Ok(first.map(|s| (s, k)));
            }
            if bad || (!complete && too_long) {
                // Give the packet's slots back unread.
                self.copies.rx_dropped += 1;
                for _ in 0..k {
                    self.rx_head = self.lay.rx.next(self.rx_head);
                }
                continue;
            }
            // Nothing, or the start of a packet whose end has not come.
            if synced {
                return Ok(None);
            }
            self.do_sync(SyncDir::Rx)?;
            synced = true;
        }
    }

    /// Lends the `k` slots from `rx_head` as chunks, then moves past them.
    fn lend(
        &mut self,
        k: u32,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[&[u8]]),
    ) -> Result<usize, PortError> {
        let lay = self.lay;
        let r = self.reg()?;
        let mut parts: [&[u8]; abi::NETMAP_MAX_FRAGS] = [&[]; abi::NETMAP_MAX_FRAGS];
        let mut i = self.rx_head;
        let mut bytes = 0;
        for p in parts.iter_mut().take(k as usize) {
            let s = r
                .slot_at(lay.rx.slot(i))
                .ok_or_else(|| bad_layout("RX slot outside the region"))?;
            let b = lay.buf(s.buf_idx).ok_or(PortError::Disconnected)?;
            *p = r
                .map
                .slice(b, usize::from(s.len))
                .ok_or_else(|| bad_layout("RX buffer outside the region"))?;
            bytes += usize::from(s.len);
            i = lay.rx.next(i);
        }
        deposit(&VirtioNetHdr::default(), &parts[..k as usize]);
        self.rx_head = i;
        self.copies.rx_frames += 1;
        self.copies.rx_copy_bytes += bytes as u64;
        Ok(bytes)
    }

    /// Receives the next frame and keeps its buffer (no copy): a spare
    /// buffer is swapped into the RX slot (`NS_BUF_CHANGED`). `Ok(None)`
    /// when nothing is waiting; an error when no spare is left (release
    /// kept buffers first) or the packet spans several slots (take it with
    /// [`Port::receive_chunks`]).
    pub fn receive_keep(&mut self) -> Result<Option<Kept>, PortError> {
        let Some((s, k)) = self.rx_next()? else {
            return Ok(None);
        };
        if k > 1 {
            return Err(PortError::Os {
                op: "netmap: keep a received buffer",
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a packet of several slots (NS_MOREFRAG): receive it as chunks",
                ),
            });
        }
        let spare = self.spare_pop().ok_or_else(|| PortError::Os {
            op: "netmap: keep a received buffer",
            source: io::Error::new(
                io::ErrorKind::WouldBlock,
                "no spare buffer to swap in (release kept buffers)",
            ),
        })?;
        let at = self.lay.rx.slot(self.rx_head);
        let swapped = NetmapSlot {
            buf_idx: spare,
            flags: s.flags | NS_BUF_CHANGED,
            ..s
        };
        self.reg_mut()?.put_slot(at, &swapped);
        self.held[s.buf_idx as usize] = true;
        self.rx_head = self.lay.rx.next(self.rx_head);
        self.copies.rx_frames += 1;
        self.swaps.rx_kept += 1;
        Ok(Some(Kept {
            idx: s.buf_idx,
            len: s.len,
        }))
    }

    fn check_held(&self, k: &Kept) -> Result<(), PortError> {
        if self.held.get(k.idx as usize) == Some(&true) {
            Ok(())
        } else {
            Err(PortError::Os {
                op: "netmap: kept buffer",
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a buffer this port lent"),
            })
        }
    }

    /// The frame in a kept buffer.
    pub fn kept_bytes(&self, k: &Kept) -> Result<&[u8], PortError> {
        self.check_held(k)?;
        let b = self.lay.buf(k.idx).ok_or(PortError::Disconnected)?;
        self.reg()?
            .map
            .slice(b, k.len())
            .ok_or(PortError::Disconnected)
    }

    /// Gives a kept buffer back to the spare list.
    pub fn release(&mut self, k: Kept) -> Result<(), PortError> {
        self.check_held(&k)?;
        self.held[k.idx as usize] = false;
        self.spare_push(k.idx);
        self.swaps.released += 1;
        Ok(())
    }

    /// Sends a kept buffer without copying it: it is swapped into the next
    /// TX slot (`NS_BUF_CHANGED`), whose buffer becomes a spare. Gives the
    /// buffer back (`Ok(Some)`) when the TX ring is full.
    pub fn transmit_kept(&mut self, k: Kept) -> Result<Option<Kept>, PortError> {
        self.check_held(&k)?;
        if TxSlots::free(self) == 0 {
            if let Some(e) = self.sync_err.take() {
                return Err(e);
            }
            return Ok(Some(k));
        }
        let at = self.lay.tx.slot(self.tx_head);
        let old = self
            .reg()?
            .slot_at(at)
            .ok_or_else(|| bad_layout("TX slot outside the region"))?;
        let s = NetmapSlot {
            buf_idx: k.idx,
            len: k.len,
            flags: NS_BUF_CHANGED,
            ptr: 0,
        };
        self.reg_mut()?.put_slot(at, &s);
        self.held[k.idx as usize] = false;
        self.spare_push(old.buf_idx);
        self.tx_head = self.lay.tx.next(self.tx_head);
        self.tx_queued = true;
        self.copies.tx_frames += 1;
        self.swaps.tx_swapped += 1;
        Ok(None)
    }
}

impl<S: NetmapSync> TxSlots for NetmapPort<S> {
    fn free(&mut self) -> usize {
        let mut n = self.lay.tx.dist(self.tx_head, self.tx_tail);
        if n == 0 {
            if let Err(e) = self.do_sync(SyncDir::Tx) {
                self.sync_err = Some(e);
                return 0;
            }
            n = self.lay.tx.dist(self.tx_head, self.tx_tail);
        }
        n as usize
    }

    fn capacity(&self) -> usize {
        let wire = self.mtu.map_or(usize::MAX, |m| m as usize + 14);
        self.lay.buf_size.min(usize::from(u16::MAX)).min(wire)
    }

    fn next(&mut self, len: usize) -> Result<&mut [u8], PortError> {
        let at = self.lay.tx.slot(self.tx_head);
        let s = self
            .reg()?
            .slot_at(at)
            .ok_or_else(|| bad_layout("TX slot outside the region"))?;
        let b = self
            .lay
            .buf(s.buf_idx)
            .ok_or_else(|| bad_layout("a TX slot's buffer index is out of range"))?;
        let max = self.lay.buf_size;
        self.reg_mut()?
            .map
            .slice_mut(b, len)
            .filter(|_| len <= max)
            .ok_or(PortError::TooLarge { len, max })
    }

    fn commit(&mut self, len: usize) {
        let at = self.lay.tx.slot(self.tx_head);
        let Some(r) = self.region.as_mut() else {
            return;
        };
        let Some(s) = r.slot_at(at) else { return };
        r.put_slot(
            at,
            &NetmapSlot {
                len: len as u16,
                flags: 0,
                ptr: 0,
                ..s
            },
        );
        self.tx_head = self.lay.tx.next(self.tx_head);
        self.tx_queued = true;
    }
}

impl<S: NetmapSync> Port for NetmapPort<S> {
    /// Gathers the frame (offloads applied) into the next TX slots'
    /// buffers; [`Port::flush`] pushes them with one `NIOCTXSYNC`.
    fn transmit(&mut self, vnet: &VirtioNetHdr, chunks: &[&[u8]]) -> Result<TxOutcome, PortError> {
        let mut copies = self.copies;
        let r = ringtx::place(vnet, chunks, self, &mut copies);
        self.copies = copies;
        if let Some(e) = self.sync_err.take() {
            return Err(e);
        }
        if matches!(r, Ok(TxOutcome::Full)) && self.tx_queued {
            self.flush()?;
        }
        r
    }

    fn flush(&mut self) -> Result<(), PortError> {
        if self.tx_queued {
            self.do_sync(SyncDir::Tx)?;
        }
        Ok(())
    }

    /// Lends the next packet; one of several slots is first gathered into
    /// a scratch buffer (counted as a copy too).
    fn receive(
        &mut self,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[u8]),
    ) -> Result<bool, PortError> {
        let Some((_, k)) = self.rx_next()? else {
            return Ok(false);
        };
        if k == 1 {
            self.lend(1, &mut |h, c| deposit(h, c[0]))?;
            return Ok(true);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let n = self.lend(k, &mut |_, c| {
            for p in c {
                scratch.extend_from_slice(p);
            }
        })?;
        self.copies.rx_copy_bytes += n as u64;
        deposit(&VirtioNetHdr::default(), &scratch);
        self.scratch = scratch;
        Ok(true)
    }

    /// Lends the next packet as its slots' buffers, where they lie (one
    /// chunk per fragment).
    fn receive_chunks(
        &mut self,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[&[u8]]),
    ) -> Result<bool, PortError> {
        let Some((_, k)) = self.rx_next()? else {
            return Ok(false);
        };
        self.lend(k, deposit)?;
        Ok(true)
    }

    fn copies(&self) -> PortCopies {
        self.copies
    }

    fn rx_fd(&self) -> Option<RawFd> {
        self.sync.fd()
    }

    fn max_frame(&self) -> usize {
        self.capacity()
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_rings() {
        assert_eq!(parse_name("netmap:eth0"), ("eth0", 0));
        assert_eq!(parse_name("eth0-3"), ("eth0", 3));
        assert_eq!(parse_name("vale0:1"), ("vale0:1", 0));
        assert_eq!(parse_name("veth-a"), ("veth-a", 0));
        assert_eq!(parse_name("-3"), ("-3", 0));
    }

    #[test]
    fn a_missing_device_is_a_typed_error_naming_what_works() {
        if std::path::Path::new(NETMAP_DEVICE).exists() {
            return;
        }
        match NetmapPort::open("eth0") {
            Err(PortError::Unsupported { backend, why }) => {
                assert_eq!(backend, "netmap");
                assert!(why.starts_with("/dev/netmap not found"), "{why}");
                assert!(why.contains("backends that work here: sim"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(probe().unwrap_err().contains("not found"));
    }
}
