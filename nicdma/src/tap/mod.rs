//! The TAP backend: a [`Port`] on a Linux TAP device, so the kernel's network
//! stack is the NIC's link partner.
//!
//! Every frame crossing the TAP file descriptor carries the 12-byte
//! virtio-net header first (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ` = 12), the same
//! bytes as the first field of the ring segments' [`DmaMeta`](crate::DmaMeta):
//!
//! ```text
//!  read()/writev() on /dev/net/tun
//!  +-------------------------+---------------------------------------------+
//!  | virtio_net_hdr_v1 (12)  | Ethernet frame (dst, src, type, payload...) |
//!  +-------------------------+---------------------------------------------+
//!    flags gso_type hdr_len     <- transmit: gathered from the segment's
//!    gso_size csum_start           lines, one iovec per run (few runs)
//!    csum_offset num_buffers       or one gather into a bounce buffer
//!                               <- receive: lent as (&hdr, &frame)
//! ```
//!
//! The kernel copies every frame written to a TAP device. A small frame
//! goes as one iovec per run of chunks that lie end to end in memory
//! (consecutive line slots: a file read in place, a large write), with no
//! copy of ours, when that makes fewer than `GATHER_FROM` (8) runs; a small
//! frame of more separate lines is gathered into the port's bounce buffer
//! and written as one iovec (each extra iovec costs the kernel about 27 ns,
//! a gather about 6 ns per 64-byte line). A frame of 8 KiB or more (a TSO
//! frame of 64-byte lines) is read straight out of its segment into the
//! bounce buffer (`Port::transmit_from`, no gather list; through
//! `Port::transmit`, frames of 128 chunks or more are gathered there) and
//! written as one iovec, because the kernel's walk of a thousand 64-byte
//! iovecs cost more than that copy plus one contiguous copy. The gather is
//! the port's one CPU copy on TX, counted in
//! [`PortCopies::tx_gather_bytes`](crate::PortCopies::tx_gather_bytes).
//!
//! With the default [`Offload`]s the kernel may hand over frames whose
//! checksum is only partial (`F_NEEDS_CSUM`) and TCP super-frames of up to
//! 64 KiB (`gso_type` TCPV4/TCPV6, `gso_size` = MSS): the receive path
//! deposits them as they are, metadata included. In the other direction the
//! kernel always accepts partial checksums and GSO frames from us.
//!
//! `NetNs` (test support: built for tests and with the `test-support`
//! feature) is the test and benchmark helper: a private network namespace
//! (made and removed with iproute2's `ip`) that the TAP device moves into,
//! so the traffic of a test stays inside it. The TAP file descriptor keeps
//! working after the move.
//!
//! ```no_run
//! use nicdma::tap::{NetNs, TapPort};
//! use nicdma::Port;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut port = TapPort::open("")?; // the kernel picks the name (tapN)
//! let ns = NetNs::create()?;
//! ns.adopt(port.name(), Some("10.77.1.1/24"))?; // the kernel's side is 10.77.1.1
//! // `ip netns exec <ns> ping 10.77.1.2` now sends ARP and ICMP to `port`.
//! while port.wait_readable(std::time::Duration::from_millis(100))? {
//!     port.receive(&mut |hdr, frame| println!("{} bytes, {hdr:?}", frame.len()))?;
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::ops::BitOr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use hicamp::Cursor;

use crate::frame::TxDesc;
use crate::meta::{VirtioNetHdr, VNET_HDR_LEN};
use crate::port::{Port, PortCopies, PortError, TxOutcome};
use crate::sys;

mod txthread;
pub use txthread::{parse_tx_thread, TxThread, MAX_IN_FLIGHT};

#[cfg(any(test, feature = "test-support"))]
mod netns;
#[cfg(any(test, feature = "test-support"))]
pub use netns::{netns_supported, LinkStats, NetNs, NetNsError};

/// The largest frame a [`TapPort`] carries either way (without the virtio-net
/// header): a 64 KiB GSO packet plus an Ethernet header with a VLAN tag and
/// an IPv6 header, rounded up. The kernel never hands over more.
pub const MAX_FRAME: usize = 65_536 + 64;

/// Frames of fewer chunks (ACKs, RPC messages) go out as one iovec per
/// chunk from a stack array; frames of more (TSO) are gathered into the
/// port's bounce buffer first (see `TapPort::write_frame`).
const STACK_IOV: usize = 128;

/// A small frame whose chunks make this many separate runs or more (after runs of chunks that
/// lie end to end are merged) is gathered into the bounce buffer and written as one iovec;
/// fewer go as one iovec per run, with no copy of ours. Measured (`tap_tx_iovec_cost`,
/// below; medians of 15 interleaved batches, loaded 2-core host): each extra iovec of a
/// `writev` costs the kernel about 26-30 ns (a 4160 B frame: 65 iovecs 9.0 us, 1 iovec
/// 7.35 us), a gather of 64-byte lines about 6 ns per line (gather + 1 iovec 7.75 us); 8
/// runs cost about 200 ns more than one, the gather of a 1500 B frame about 90 ns.
const GATHER_FROM: usize = 8;

/// Frames of at least this many bytes (128 lines of 64 bytes) are copied
/// out of their segment by [`Port::transmit_from`] into one iovec.
const FLAT_FROM: usize = 8192;

/// Offloads the kernel may use on the frames it hands to us
/// (`TUNSETOFFLOAD`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Offload(u32);

impl Offload {
    /// Only complete frames with complete checksums.
    pub const NONE: Offload = Offload(0);
    /// Partial checksums (`F_NEEDS_CSUM`, `csum_start`/`csum_offset`).
    pub const CSUM: Offload = Offload(sys::TUN_F_CSUM);
    /// TCP over IPv4 super-frames (needs `CSUM`).
    pub const TSO4: Offload = Offload(sys::TUN_F_TSO4);
    /// TCP over IPv6 super-frames (needs `CSUM`).
    pub const TSO6: Offload = Offload(sys::TUN_F_TSO6);
    /// TSO frames with the ECN bit in `gso_type`.
    pub const TSO_ECN: Offload = Offload(sys::TUN_F_TSO_ECN);
    /// What [`TapPort::open`] asks for: checksum, TSO4, TSO6 and ECN.
    pub const DEFAULT: Offload =
        Offload(sys::TUN_F_CSUM | sys::TUN_F_TSO4 | sys::TUN_F_TSO6 | sys::TUN_F_TSO_ECN);

    /// The `TUN_F_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Offload) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Offload {
    type Output = Offload;
    fn bitor(self, rhs: Offload) -> Offload {
        Offload(self.0 | rhs.0)
    }
}

impl fmt::Debug for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Offload::CSUM, "CSUM"),
            (Offload::TSO4, "TSO4"),
            (Offload::TSO6, "TSO6"),
            (Offload::TSO_ECN, "TSO_ECN"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(o, _)| self.contains(*o))
            .map(|(_, n)| *n)
            .collect();
        if set.is_empty() {
            write!(f, "Offload(NONE)")
        } else {
            write!(f, "Offload({})", set.join(" | "))
        }
    }
}

/// A [`Port`] on a TAP device (`/dev/net/tun`, non-blocking, with the
/// virtio-net header on every frame). Dropping it closes the descriptor, and
/// the kernel removes the device.
pub struct TapPort {
    /// The queue's descriptor (shared with the TX writer thread, when one runs).
    file: Arc<File>,
    name: String,
    offload: Offload,
    /// One received frame: the header, then up to [`MAX_FRAME`] bytes.
    rx_buf: Box<[u8]>,
    /// The bounce buffer large frames are gathered into (one CPU copy,
    /// counted in `copies.tx_gather_bytes`).
    flat: Vec<u8>,
    /// The bounce buffer of [`Port::transmit_from`] ([`MAX_FRAME`] bytes,
    /// zeroed once).
    wire: Box<[u8]>,
    /// The copy counters.
    copies: PortCopies,
    /// Lazy receive ([`TapPort::set_lazy_rx`]) is on.
    lazy_rx: bool,
    /// Lazy receive: a read found the device empty, and nobody has said
    /// since that it became readable ([`TapPort::rearm`]).
    rx_idle: bool,
    /// Reads skipped because the device was known to be empty.
    rx_skipped: u64,
    /// The device is multi-queue (`IFF_MULTI_QUEUE`): this descriptor is one of its queues.
    multi_queue: bool,
    /// This queue is detached ([`TapPort::set_attached`]): the kernel sends it nothing, and
    /// frames transmitted meanwhile are dropped (counted in `detached_tx_drops`).
    detached: bool,
    /// Frames transmitted while the queue was detached (dropped).
    detached_tx_drops: u64,
    /// Large frames go to a writer thread ([`TapPort::set_tx_thread`]).
    tx_thread: Option<TxThread>,
}

impl fmt::Debug for TapPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TapPort")
            .field("name", &self.name)
            .field("fd", &self.file.as_raw_fd())
            .field("offload", &self.offload)
            .finish_non_exhaustive()
    }
}

/// Maps an error of the set-up calls; missing privileges get their own variant.
fn setup_err(op: &'static str, source: io::Error) -> PortError {
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => PortError::NotPermitted(op),
        _ => PortError::Os { op, source },
    }
}

/// Maps an error of the data path (back-pressure is handled by the callers).
fn data_err(op: &'static str, source: io::Error) -> PortError {
    match source.raw_os_error() {
        // The device is gone (deleted, or its namespace was removed).
        Some(libc::EBADFD) => PortError::Disconnected,
        _ => PortError::Os { op, source },
    }
}

impl TapPort {
    /// Creates (or attaches to) the TAP device `name`; an empty name lets the
    /// kernel pick one (`tap0`, `tap1`, ...; `"nic%d"` picks in that pattern).
    /// The device starts down and in the caller's network namespace; it asks
    /// for [`Offload::DEFAULT`].
    ///
    /// Errors: `NotPermitted` without CAP_NET_ADMIN (or without access to
    /// `/dev/net/tun`); `Os` otherwise, e.g. for a name longer than 15 bytes
    /// or one taken by a device that is not a free TAP device.
    pub fn open(name: &str) -> Result<TapPort, PortError> {
        // Multi-queue first (a new device is made so, and another process may attach a queue
        // of it later); a device made single-queue refuses that flag with EINVAL.
        match Self::open_with(name, true) {
            Err(PortError::Os { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                Self::open_with(name, false)
            }
            r => r,
        }
    }

    /// [`TapPort::open`] with or without `IFF_MULTI_QUEUE`. Every queue of a multi-queue
    /// device is a [`TapPort`] of its own (same name); the kernel spreads the flows it sends
    /// over the attached queues (`tun_automq_select_queue`: the queue that last transmitted a
    /// flow, remembered 3 s, else a hash of the flow).
    pub fn open_with(name: &str, multi_queue: bool) -> Result<TapPort, PortError> {
        let mut flags = sys::IFF_TAP | sys::IFF_NO_PI | sys::IFF_VNET_HDR;
        if multi_queue {
            flags |= sys::IFF_MULTI_QUEUE;
        }
        let mut req = sys::IfReq::new(name, flags).ok_or_else(|| PortError::Os {
            op: "TUNSETIFF",
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad interface name {name:?} (at most 15 bytes, no NUL)"),
            ),
        })?;
        // std opens with O_CLOEXEC already.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(|e| setup_err("open /dev/net/tun", e))?;
        sys::tun_set_iff(file.as_fd(), &mut req).map_err(|e| setup_err("TUNSETIFF", e))?;
        sys::tun_set_vnet_hdr_sz(file.as_fd(), VNET_HDR_LEN as libc::c_int)
            .map_err(|e| setup_err("TUNSETVNETHDRSZ", e))?;
        let mut port = TapPort {
            file: Arc::new(file),
            name: req.name(),
            offload: Offload::NONE,
            rx_buf: vec![0; VNET_HDR_LEN + MAX_FRAME].into_boxed_slice(),
            flat: Vec::with_capacity(MAX_FRAME),
            wire: vec![0; MAX_FRAME].into_boxed_slice(),
            copies: PortCopies::default(),
            lazy_rx: false,
            rx_idle: false,
            rx_skipped: 0,
            multi_queue,
            detached: false,
            detached_tx_drops: 0,
            tx_thread: None,
        };
        port.set_offload(Offload::DEFAULT)?;
        Ok(port)
    }

    /// Whether the device is multi-queue (this port is one of its queues).
    pub fn multi_queue(&self) -> bool {
        self.multi_queue
    }

    /// Whether this queue is attached (it always is on a single-queue device).
    pub fn attached(&self) -> bool {
        !self.detached
    }

    /// Frames transmitted while the queue was detached (dropped).
    pub fn detached_tx_drops(&self) -> u64 {
        self.detached_tx_drops
    }

    /// Attaches (`true`) or detaches this queue of a multi-queue device (`TUNSETQUEUE`). A
    /// detached queue gets no frames (the kernel moves its last queue into the freed index
    /// and spreads flows over the others); receives find nothing and transmits are dropped
    /// without a system call. Errors: `Os` with `EINVAL` on a single-queue device or for the
    /// last attached queue's detach on some kernels.
    pub fn set_attached(&mut self, on: bool) -> Result<(), PortError> {
        if on != self.detached {
            return Ok(());
        }
        if !self.multi_queue {
            return Err(PortError::Os {
                op: "TUNSETQUEUE",
                source: io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        let flags = if on {
            sys::IFF_ATTACH_QUEUE
        } else {
            sys::IFF_DETACH_QUEUE
        };
        let mut req = sys::IfReq::new("", flags).ok_or_else(|| PortError::Os {
            op: "TUNSETQUEUE",
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        sys::tun_set_queue(self.file.as_fd(), &mut req).map_err(|e| setup_err("TUNSETQUEUE", e))?;
        self.detached = !on;
        self.rx_idle = false;
        Ok(())
    }

    /// Changes the offloads the kernel may use on frames it hands to us
    /// (TSO needs `CSUM`, or the kernel answers `EINVAL`).
    pub fn set_offload(&mut self, offload: Offload) -> Result<(), PortError> {
        sys::tun_set_offload(self.file.as_fd(), offload.bits())
            .map_err(|e| setup_err("TUNSETOFFLOAD", e))?;
        self.offload = offload;
        Ok(())
    }

    /// The offloads in force.
    pub fn offload(&self) -> Offload {
        self.offload
    }

    /// Lazy receive: after a read finds the device empty, [`Port::receive`]
    /// answers "nothing" without a system call until [`TapPort::rearm`]. For
    /// an owner that learns of every arrival from the descriptor's readiness
    /// (an edge-triggered epoll registration, or a poll on it) and rearms
    /// before it runs the device: then a pass that transmits (or runs
    /// timers) makes no read that can only say `EAGAIN`, and a pass that
    /// receives makes one such read at most, however often the device runs.
    /// Off by default: an owner that does not rearm would never receive
    /// again.
    pub fn set_lazy_rx(&mut self, on: bool) {
        self.lazy_rx = on;
        self.rx_idle = false;
    }

    /// The descriptor was seen readable (or may have been): the next
    /// receive reads again (lazy receive only).
    pub fn rearm(&mut self) {
        self.rx_idle = false;
    }

    /// Reads lazy receive skipped (the device was known to be empty).
    pub fn rx_skipped(&self) -> u64 {
        self.rx_skipped
    }

    /// Waits up to `timeout` for a frame to arrive; returns whether one (may
    /// have) did. A zero timeout only checks.
    pub fn wait_readable(&self, timeout: Duration) -> Result<bool, PortError> {
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        sys::poll_readable(self.file.as_fd(), ms).map_err(|e| data_err("poll", e))
    }

    /// Writes one frame; returns the bytes written and the bytes gathered into the bounce
    /// buffer (0: the chunks went as they lie).
    fn write_frame(
        &mut self,
        hdr: &[u8; VNET_HDR_LEN],
        chunks: &[&[u8]],
    ) -> io::Result<(usize, usize)> {
        write_frame(&self.file, &mut self.flat, hdr, chunks)
    }

    /// Sends frames of at least `min_len` bytes through a writer thread (`None`: every frame
    /// is written by the caller, the default). See [`TxThread`]: the kernel's work of a
    /// large frame (its copy into an skb and the peer's receive path) then runs beside the
    /// application instead of in its thread; small frames are written inline while nothing
    /// waits for the writer.
    pub fn set_tx_thread(&mut self, min_len: Option<usize>) {
        self.tx_thread = min_len.map(TxThread::new);
    }

    /// The TX writer thread's state, when [`TapPort::set_tx_thread`] turned it on.
    pub fn tx_thread(&self) -> Option<&TxThread> {
        self.tx_thread.as_ref()
    }

    /// Iovecs `write_frame` uses for a frame of `chunks` chunks (the header's included), and
    /// the bytes it gathers into its bounce buffer (test support).
    #[cfg(test)]
    fn plan_iov(chunks: &[&[u8]]) -> (usize, usize) {
        let mut runs = 0;
        let mut end = None;
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            if end != Some(c.as_ptr() as usize) {
                runs += 1;
            }
            end = Some(c.as_ptr() as usize + c.len());
        }
        if chunks.len() < STACK_IOV && runs < GATHER_FROM {
            (runs + 1, 0)
        } else {
            (2, chunks.iter().map(|c| c.len()).sum())
        }
    }
}

impl TapPort {
    /// What becomes of a frame of `len` bytes before it is written, when anything: too
    /// large (an error), or dropped on a detached queue (counted, `Sent`).
    fn refuse(&mut self, len: usize) -> Option<Result<TxOutcome, PortError>> {
        if len > MAX_FRAME {
            return Some(Err(PortError::TooLarge {
                len,
                max: MAX_FRAME,
            }));
        }
        if self.detached {
            self.detached_tx_drops += 1;
            return Some(Ok(TxOutcome::Sent));
        }
        None
    }
}

/// Writes one frame to `file`: the header, then the chunks as they lie (runs of chunks that
/// lie end to end as one iovec each) when they are few, else gathered into `flat` and written
/// as one iovec. Returns the bytes written and the bytes gathered (0: none).
fn write_frame(
    file: &File,
    flat: &mut Vec<u8>,
    hdr: &[u8; VNET_HDR_LEN],
    chunks: &[&[u8]],
) -> io::Result<(usize, usize)> {
    // Runs of chunks that lie end to end (consecutive line slots) go as one iovec each,
    // with no copy of ours, when they are few.
    if chunks.len() < STACK_IOV {
        if let Some(r) = sys::writev_runs(file.as_fd(), hdr, chunks, GATHER_FROM + 1) {
            return Ok((r?, 0));
        }
    }
    // Else one gather into the bounce buffer, then one contiguous iovec. The kernel
    // copies the frame either way; walking many 64-byte iovecs in `copy_from_iter` costs
    // more than this gather plus one contiguous copy (see `GATHER_FROM`).
    flat.clear();
    for c in chunks {
        flat.extend_from_slice(c);
    }
    let n = (&*file).write_vectored(&[IoSlice::new(hdr), IoSlice::new(flat)])?;
    Ok((n, flat.len()))
}

/// An empty vector of chunks with `v`'s allocation, for borrows of another lifetime.
fn reuse<'b>(mut v: Vec<&[u8]>) -> Vec<&'b [u8]> {
    v.clear();
    v.into_iter().map(|_| -> &'b [u8] { &[] }).collect()
}

impl Port for TapPort {
    /// With a writer thread ([`TapPort::set_tx_thread`]): a large frame, or any while
    /// frames wait for the writer, is queued to it as a snapshot of the descriptor (the
    /// payload's lines gathered by the writer, as a DMA engine reads them); `Full` while
    /// [`MAX_IN_FLIGHT`] frames wait. Else `None`: the NIC gathers and calls
    /// [`Port::transmit`].
    fn transmit_desc(&mut self, desc: &mut TxDesc) -> Option<Result<TxOutcome, PortError>> {
        let t = self.tx_thread.as_mut()?;
        let len = desc.frame_len();
        if !t.takes(len) {
            return None;
        }
        if let Some(out) = self.refuse(len) {
            return Some(out);
        }
        let t = self.tx_thread.as_mut()?;
        let hdr = desc.meta().vnet.to_bytes();
        match t.queue(&self.file, hdr, desc) {
            Ok(true) => {
                self.copies.tx_frames += 1;
                self.copies.kicks += 1;
                Some(Ok(TxOutcome::Sent))
            }
            Ok(false) => Some(Ok(TxOutcome::Full)),
            Err(e) => Some(Err(data_err("TX writer thread", e))),
        }
    }

    /// One `writev`: the header, then one iovec per chunk (a frame of many
    /// chunks: one gathered iovec, see `write_frame`). `EAGAIN` (the
    /// socket's send buffer is full) is back-pressure. A device that is down
    /// refuses frames with `EIO` (an `Os` error).
    fn transmit(&mut self, vnet: &VirtioNetHdr, chunks: &[&[u8]]) -> Result<TxOutcome, PortError> {
        let len: usize = chunks.iter().map(|c| c.len()).sum();
        if let Some(out) = self.refuse(len) {
            return out;
        }
        let hdr = vnet.to_bytes();
        if let Some(t) = self.tx_thread.as_mut().filter(|t| t.in_flight() > 0) {
            // A frame that is no descriptor (a frame segment) while frames wait for the
            // writer: a copy goes behind them, in order (counted as gathered).
            return match t.queue_copy(hdr, chunks) {
                Ok(true) => {
                    self.copies.tx_frames += 1;
                    self.copies.kicks += 1;
                    self.copies.tx_gather_bytes += len as u64;
                    Ok(TxOutcome::Sent)
                }
                Ok(false) => Ok(TxOutcome::Full),
                Err(e) => Err(data_err("TX writer thread", e)),
            };
        }
        let (written, gathered) = loop {
            match self.write_frame(&hdr, chunks) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(TxOutcome::Full),
                Err(e) => return Err(data_err("writev", e)),
            }
        };
        // The kernel takes a frame whole or not at all; anything else is a bug.
        if written != VNET_HDR_LEN + len {
            return Err(PortError::Os {
                op: "writev",
                source: io::Error::other(format!(
                    "short write: {written} of {} bytes",
                    VNET_HDR_LEN + len
                )),
            });
        }
        self.copies.tx_frames += 1;
        self.copies.kicks += 1;
        self.copies.tx_gather_bytes += gathered as u64;
        Ok(TxOutcome::Sent)
    }

    /// A large frame (at least [`FLAT_FROM`] bytes: a TSO frame) is read
    /// straight out of the segment into the bounce buffer (whole runs of
    /// sibling lines at a time, no gather list) and written as one iovec;
    /// smaller frames go through [`Port::transmit`] as one iovec per line.
    fn transmit_from(
        &mut self,
        vnet: &VirtioNetHdr,
        frame: &mut Cursor<'_>,
        len: usize,
    ) -> Option<Result<TxOutcome, PortError>> {
        if len < FLAT_FROM {
            return None;
        }
        if let Some(out) = self.refuse(len) {
            return Some(out);
        }
        if self.tx_thread.as_ref().is_some_and(|t| t.in_flight() > 0) {
            // Frames wait for the writer thread: this one goes after them, a copy gathered
            // by [`Port::transmit`].
            return None;
        }
        let n = frame.copy_to_slice(&mut self.wire[..len]);
        if n != len {
            return Some(Err(PortError::Os {
                op: "transmit",
                source: io::Error::other(format!("frame ends after {n} of {len} bytes")),
            }));
        }
        let hdr = vnet.to_bytes();
        let iov = [IoSlice::new(&hdr), IoSlice::new(&self.wire[..len])];
        let written = loop {
            match (&*self.file).write_vectored(&iov) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Some(Ok(TxOutcome::Full))
                }
                Err(e) => return Some(Err(data_err("writev", e))),
            }
        };
        if written != VNET_HDR_LEN + len {
            return Some(Err(PortError::Os {
                op: "writev",
                source: io::Error::other(format!(
                    "short write: {written} of {} bytes",
                    VNET_HDR_LEN + len
                )),
            }));
        }
        self.copies.tx_frames += 1;
        self.copies.kicks += 1;
        self.copies.tx_gather_bytes += len as u64;
        Some(Ok(TxOutcome::Sent))
    }

    /// The pass's frames queued for the writer thread go to it (one wake-up).
    fn flush(&mut self) -> Result<(), PortError> {
        match self.tx_thread.as_mut() {
            Some(t) => t.flush().map_err(|e| data_err("TX writer thread", e)),
            None => Ok(()),
        }
    }

    /// TX: frames written, bytes gathered into the bounce buffers (large
    /// frames), one `writev` each. RX is the NIC's deposit from the
    /// port's read buffer (counted by the NIC), not here.
    fn copies(&self) -> PortCopies {
        let mut c = self.copies;
        if let Some(t) = &self.tx_thread {
            c.tx_threaded = t.written();
            c.tx_thread_errors = t.errors();
            c.tx_gather_bytes += t.gathered();
        }
        c
    }

    /// One `read` into the port's buffer (none while lazy receive knows the
    /// device is empty); the header and the frame are lent to `deposit`. `num_buffers` is 0 (the kernel does not merge buffers).
    fn receive(
        &mut self,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[u8]),
    ) -> Result<bool, PortError> {
        if self.rx_idle {
            self.rx_skipped += 1;
            return Ok(false);
        }
        if self.detached {
            // The kernel answers EBADFD on a detached queue: nothing can arrive.
            return Ok(false);
        }
        // Older kernels write only the 10-byte legacy header and skip the
        // rest: clear `num_buffers` so no stale bytes show through.
        self.rx_buf[10..VNET_HDR_LEN].fill(0);
        let n = loop {
            match (&*self.file).read(&mut self.rx_buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.rx_idle = self.lazy_rx;
                    return Ok(false);
                }
                Err(e) => return Err(data_err("read", e)),
            }
        };
        // The kernel reports the whole length even when it had to truncate.
        if n > self.rx_buf.len() {
            return Err(PortError::TooLarge {
                len: n - VNET_HDR_LEN,
                max: MAX_FRAME,
            });
        }
        let (Some(hdr), Some(frame)) = (
            VirtioNetHdr::from_bytes(&self.rx_buf[..n]),
            self.rx_buf.get(VNET_HDR_LEN..n),
        ) else {
            return Err(PortError::Os {
                op: "read",
                source: io::Error::other(format!("{n}-byte read is shorter than the header")),
            });
        };
        deposit(&hdr, frame);
        Ok(true)
    }

    fn rx_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn max_frame(&self) -> usize {
        MAX_FRAME
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl AsFd for TapPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for TapPort {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_bits() {
        assert_eq!(Offload::DEFAULT.bits(), 0x0f);
        assert!(Offload::DEFAULT.contains(Offload::CSUM | Offload::TSO6));
        assert!(!Offload::CSUM.contains(Offload::TSO4));
        assert_eq!(format!("{:?}", Offload::NONE), "Offload(NONE)");
        assert_eq!(
            format!("{:?}", Offload::CSUM | Offload::TSO4),
            "Offload(CSUM | TSO4)"
        );
    }

    #[test]
    fn small_frames_go_as_iovecs_and_large_ones_are_gathered_once() {
        // Separate lines (scattered slots): iovecs while they are few, else one gather.
        let lines: Vec<[u8; 64]> = (0..2000).map(|k| [k as u8; 64]).collect();
        for n in [1, 7, 8, 64, 127, 128, 1023, 1024, 2000] {
            // Every other line: no two chunks end to end.
            let chunks: Vec<&[u8]> = lines.iter().step_by(2).take(n).map(|l| &l[..]).collect();
            let (iov, copied) = TapPort::plan_iov(&chunks);
            if chunks.len() < GATHER_FROM {
                assert_eq!((iov, copied), (chunks.len() + 1, 0), "{n} chunks: no copy");
            } else {
                assert_eq!(
                    (iov, copied),
                    (2, chunks.len() * 64),
                    "{n} chunks: one gather"
                );
            }
        }
        // Lines that lie end to end (consecutive slots): one iovec per run, no copy.
        let flat = vec![5u8; 64 * 127];
        let run: Vec<&[u8]> = flat.chunks(64).collect();
        assert_eq!(TapPort::plan_iov(&run), (2, 0));
        // A header line, then a run, then a tail line elsewhere: 3 runs.
        let mut mixed = vec![&lines[0][..]];
        mixed.extend(&run[..65]);
        mixed.push(&lines[2][..]);
        assert_eq!(TapPort::plan_iov(&mixed), (4, 0));
        // 128 chunks or more: gathered (the large-frame path), even when end to end.
        let run: Vec<&[u8]> = vec![5u8; 64 * 128].leak().chunks(64).collect();
        assert_eq!(TapPort::plan_iov(&run), (2, 64 * 128));
    }

    /// `sys::writev_runs` writes exactly the chunks' bytes, in order, merged or not.
    #[test]
    fn runs_write_the_chunks_bytes_in_order() {
        let (mut rx, tx) = std::io::pipe().unwrap();
        let mut r = testkit::Rng::new(3);
        let flat = r.bytes(64 * 40);
        let other = r.bytes(64 * 10);
        let mut chunks: Vec<&[u8]> = Vec::new();
        chunks.push(&other[..64]);
        chunks.extend(flat[..64 * 20].chunks(64));
        chunks.push(&[]);
        chunks.push(&other[128..192]);
        chunks.extend(flat[64 * 20..].chunks(64));
        chunks.push(&other[64 * 9..64 * 9 + 10]);
        let want: Vec<u8> = b"HEAD"
            .iter()
            .copied()
            .chain(chunks.iter().flat_map(|c| c.iter().copied()))
            .collect();
        // 1 head + 5 runs: refused below 7 iovecs, written at 7.
        assert!(sys::writev_runs(tx.as_fd(), b"HEAD", &chunks, 6).is_none());
        let n = sys::writev_runs(tx.as_fd(), b"HEAD", &chunks, 7)
            .expect("few runs")
            .unwrap();
        assert_eq!(n, want.len());
        let mut got = vec![0u8; want.len()];
        rx.read_exact(&mut got).unwrap();
        assert!(got == want);
    }

    #[test]
    fn bad_names_are_errors() {
        let long = "a123456789abcdef";
        assert!(matches!(
            TapPort::open(long),
            Err(PortError::Os {
                op: "TUNSETIFF",
                ..
            })
        ));
    }

    #[test]
    fn lazy_receive_skips_reads_until_rearmed() {
        if testkit::require_root("root (a TAP device)") {
            return;
        }
        // The kernel names the device (tapN): no clash with other tests.
        let mut port = TapPort::open("").expect("TAP");
        let mut got = 0;
        let mut rx = |_: &VirtioNetHdr, _: &[u8]| got += 1;
        // Off: every receive reads.
        assert!(!port.receive(&mut rx).unwrap());
        assert!(!port.receive(&mut rx).unwrap());
        assert_eq!(port.rx_skipped(), 0);
        port.set_lazy_rx(true);
        assert!(!port.receive(&mut rx).unwrap()); // reads: EAGAIN
        assert!(!port.receive(&mut rx).unwrap()); // known empty: skipped
        assert!(!port.receive(&mut rx).unwrap());
        assert_eq!(port.rx_skipped(), 2);
        port.rearm();
        assert!(!port.receive(&mut rx).unwrap()); // reads again
        assert_eq!(port.rx_skipped(), 2);
        assert!(!port.receive(&mut rx).unwrap());
        assert_eq!(port.rx_skipped(), 3);
        port.set_lazy_rx(false);
        assert!(!port.receive(&mut rx).unwrap());
        assert_eq!(port.rx_skipped(), 3);
        assert_eq!(got, 0);
    }

    #[test]
    fn a_multi_queue_device_takes_a_second_queue_that_detaches_and_attaches() {
        if testkit::require_root("root (a TAP device)") {
            return;
        }
        let mut first = TapPort::open("").expect("TAP");
        assert!(first.multi_queue());
        let name = first.name().to_owned();
        let mut second = TapPort::open(&name).expect("a second queue of the device");
        assert!(second.multi_queue() && second.attached());
        second.set_attached(false).expect("detach");
        assert!(!second.attached());
        let mut got = 0;
        // Detached: nothing arrives, and a frame transmitted is dropped (counted).
        assert!(!second.receive(&mut |_, _| got += 1).unwrap());
        let out = second
            .transmit(&VirtioNetHdr::default(), &[&[0xff; 60][..]])
            .unwrap();
        assert_eq!(out, TxOutcome::Sent);
        assert_eq!(second.detached_tx_drops(), 1);
        second.set_attached(true).expect("attach");
        assert!(second.attached());
        assert!(!second.receive(&mut |_, _| got += 1).unwrap());
        assert_eq!(got, 0);
        // The first queue is untouched; a single-queue open of the device is refused.
        assert!(first.attached());
        assert!(TapPort::open_with(&name, false).is_err());
        first.set_attached(true).expect("already attached: no call");
    }

    /// The kernel's cost of a TAP `writev` by iovec count, against a gather into one buffer
    /// (the measurement behind [`GATHER_FROM`]): UDP frames to a closed port of the kernel's
    /// address in a namespace, written as one iovec per 64-byte line, as one iovec, and
    /// gathered into a buffer then written as one iovec. Medians of 9 batches, ns per frame.
    /// `cargo test -p nicdma --lib -- --ignored --nocapture tap_tx_iovec_cost`
    #[test]
    #[ignore = "a measurement: needs root, prints figures"]
    fn tap_tx_iovec_cost() {
        if testkit::require(super::netns_supported(), "root and iproute2") {
            return;
        }
        let port = TapPort::open("").expect("TAP");
        let ns = super::NetNs::create().expect("namespace");
        let dev = port.name().to_owned();
        ns.adopt(&dev, Some("10.79.0.1/24")).expect("adopt");
        ns.ip(&["link", "set", "dev", &dev, "address", "02:00:00:79:00:01"])
            .expect("mac");
        ns.ip(&[
            "neigh",
            "add",
            "10.79.0.2",
            "lladdr",
            "02:00:00:79:00:02",
            "dev",
            &dev,
        ])
        .expect("neigh");
        let frame = |len: usize| {
            let mut f = vec![2, 0, 0, 0x79, 0, 1, 2, 0, 0, 0x79, 0, 2, 0x08, 0x00];
            let ip_len = (len - 14) as u16;
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&ip_len.to_be_bytes());
            ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0, 10, 79, 0, 2, 10, 79, 0, 1]);
            let c = crate::checksum::checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&[0x30, 0x39, 0, 9]);
            f.extend_from_slice(&(ip_len - 20).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.resize(len, 0x5a);
            f
        };
        let hdr = [0u8; VNET_HDR_LEN];
        let mut flat = Vec::with_capacity(MAX_FRAME);
        for len in [256usize, 1024, 1500, 4160, 8192] {
            let f = frame(len);
            // Lines in separate allocations, as scattered slots are.
            let lines: Vec<Vec<u8>> = f.chunks(64).map(<[u8]>::to_vec).collect();
            let chunks: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            let file: &File = &port.file;
            let mut once = |mode: usize| {
                let mut file = file;
                let r = match mode {
                    0 => {
                        let mut iov = vec![IoSlice::new(&hdr)];
                        iov.extend(chunks.iter().map(|c| IoSlice::new(c)));
                        file.write_vectored(&iov)
                    }
                    1 => file.write_vectored(&[IoSlice::new(&hdr), IoSlice::new(&f)]),
                    _ => {
                        flat.clear();
                        for c in &chunks {
                            flat.extend_from_slice(c);
                        }
                        file.write_vectored(&[IoSlice::new(&hdr), IoSlice::new(&flat)])
                    }
                };
                assert!(r.is_ok(), "{r:?}");
            };
            // Modes interleaved batch by batch (the host's load moves).
            let n = 1000;
            let mut t = [Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..15 {
                for (mode, t) in t.iter_mut().enumerate() {
                    let t0 = std::time::Instant::now();
                    for _ in 0..n {
                        once(mode);
                    }
                    t.push(t0.elapsed().as_nanos() as f64 / n as f64);
                }
            }
            let [iovs, one, gather] = t.map(|mut t| {
                t.sort_by(f64::total_cmp);
                t[t.len() / 2]
            });
            let k = chunks.len();
            println!(
                "{len:>5} B: {k:>3} iovecs {iovs:>6.0} ns  1 iovec {one:>6.0} ns  gather+1 {gather:>6.0} ns  \
                 per extra iovec {:>5.1} ns",
                (iovs - one) / (k - 1).max(1) as f64
            );
        }
        drop(port);
        drop(ns);
    }
}
