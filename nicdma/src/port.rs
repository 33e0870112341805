//! The wire side of a NIC: a [`Port`] moves whole frames, with the virtio-net
//! metadata that describes their offloads.
//!
//! Transmit gathers a frame from chunks (the lines of a segment, read through
//! the memory without flattening it); receive lends a received frame to a
//! closure that deposits it (the DMA write into an RX segment). Backends where
//! the kernel writes into a registered region (AF_XDP's UMEM, netmap extmem)
//! fit the same shape: their `receive` lends a slice of that region.

use std::os::fd::RawFd;

use hicamp::Cursor;

use crate::meta::VirtioNetHdr;

/// Errors of a port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// An operating-system call failed.
    #[error("{op}: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The port needs privileges the process does not have.
    #[error("{0}: needs root (CAP_NET_ADMIN)")]
    NotPermitted(&'static str),
    /// The frame is larger than the port's MTU allows.
    #[error("frame of {len} bytes exceeds the port's maximum of {max}")]
    TooLarge {
        /// Frame length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The offloads the metadata asks for cannot be applied to the frame.
    #[error("the frame's offload request is malformed")]
    BadOffload,
    /// The other end is gone.
    #[error("the port's peer is gone")]
    Disconnected,
    /// The network interface the port was to bind does not exist (in the
    /// calling thread's network namespace).
    #[error("no network interface {0:?} here")]
    NoSuchInterface(String),
    /// The interface already has an XDP program (or link) attached.
    #[error("{0}: the interface already has an XDP program attached (detach it with `ip link set dev {0} xdp off`, or use another interface)")]
    XdpBusy(String),
    /// The kernel lacks what the backend needs.
    #[error("{backend}: not supported by this kernel: {why}")]
    Unsupported {
        /// The backend.
        backend: &'static str,
        /// What is missing.
        why: String,
    },
}

/// Bytes a backend moves between its kernel-shared region and the segment
/// lines, counted apart from the stack's own copies: what a real NIC's DMA
/// would do, and what a backend forces on top of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCopies {
    /// Frames received out of the kernel-shared region.
    pub rx_frames: u64,
    /// Bytes copied by the CPU out of the kernel-shared region into lines on
    /// receive (the backend's one RX copy: the region is not line memory).
    pub rx_copy_bytes: u64,
    /// Of the frames received, those merged into a preceding frame's GSO
    /// frame (receive coalescing: no copy, fewer frames for the stack).
    pub rx_coalesced: u64,
    /// Frames the kernel handed over that the port dropped (truncated or
    /// malformed descriptors).
    pub rx_dropped: u64,
    /// Frames placed into the kernel-shared TX region.
    pub tx_frames: u64,
    /// Bytes gathered from a segment's lines into the kernel-shared TX
    /// region (the emulated DMA gather).
    pub tx_gather_bytes: u64,
    /// Wire frames made by software segmentation (TSO) in the port.
    pub tx_tso_segments: u64,
    /// Frames handed to the kernel with their checksum left partial (the
    /// kernel completes it or its local peer takes it as verified: AF_XDP
    /// TX metadata), not completed by the port.
    pub tx_csum_offloaded: u64,
    /// System calls made to kick the kernel (TX sends, RX/fill wake-ups).
    pub kicks: u64,
    /// Of the frames sent, those a TX writer thread wrote (the TAP port's
    /// [`crate::tap::TxThread`]: the kernel's work beside the application's).
    pub tx_threaded: u64,
    /// Frames a TX writer thread's write failed on (dropped).
    pub tx_thread_errors: u64,
}

/// What happened to a frame offered for transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    /// The port took the frame.
    Sent,
    /// The port is full right now: offer it again later (back-pressure).
    Full,
}

/// A network port: the wire under a NIC.
pub trait Port: Send {
    /// Sends one frame gathered from `chunks` (in order), with its metadata.
    fn transmit(&mut self, vnet: &VirtioNetHdr, chunks: &[&[u8]]) -> Result<TxOutcome, PortError>;

    /// Sends one frame of `len` bytes read through `frame` (a cursor at the
    /// frame's first byte), for a port that copies frames out of the memory
    /// anyway (the sim's wire): it reads the segment in one pass (whole runs
    /// of sibling lines at a time) with no gather list. `None`: the port has
    /// no such path (it gathers the lines, e.g. into an iovec), and the NIC
    /// calls [`Port::transmit`].
    fn transmit_from(
        &mut self,
        vnet: &VirtioNetHdr,
        frame: &mut Cursor<'_>,
        len: usize,
    ) -> Option<Result<TxOutcome, PortError>> {
        let _ = (vnet, frame, len);
        None
    }

    /// Offers an inline TX descriptor whole, for a port whose device reads
    /// it later (a writer thread). A port that sends it takes it
    /// ([`crate::frame::TxDesc::take`]: the payload's references move to the
    /// device, which gathers the lines itself and drops them once written).
    /// `None`: the port takes no descriptors (the default), and the NIC
    /// gathers the frame now and calls [`Port::transmit`].
    fn transmit_desc(
        &mut self,
        _desc: &mut crate::frame::TxDesc,
    ) -> Option<Result<TxOutcome, PortError>> {
        None
    }

    /// Lends the next received frame to `deposit`; returns false when none is
    /// waiting.
    fn receive(&mut self, deposit: &mut dyn FnMut(&VirtioNetHdr, &[u8]))
        -> Result<bool, PortError>;

    /// Lends the next received frame to `deposit` as chunks in order (a
    /// port that coalesces frames lends the merged headers and the frames'
    /// payloads where they lie, so the one copy into lines stays one);
    /// returns false when none is waiting. The default lends
    /// [`Port::receive`]'s frame as one chunk.
    fn receive_chunks(
        &mut self,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[&[u8]]),
    ) -> Result<bool, PortError> {
        self.receive(&mut |h, f| deposit(h, &[f]))
    }

    /// Hands everything [`Port::transmit`] queued since the last flush to
    /// the kernel (one kick per batch); the NIC calls it at the end of each
    /// TX pass. Ports that send immediately need not override it.
    fn flush(&mut self) -> Result<(), PortError> {
        Ok(())
    }

    /// The port's copy counters (zero for ports that do not count).
    fn copies(&self) -> PortCopies {
        PortCopies::default()
    }

    /// A file descriptor that polls readable when frames may be waiting (for
    /// poll/epoll), if the port has one.
    fn rx_fd(&self) -> Option<RawFd> {
        None
    }

    /// The largest frame the port carries (without the metadata).
    fn max_frame(&self) -> usize {
        65_535
    }

    /// A short name for diagnostics.
    fn name(&self) -> &str;
}

/// Waits up to `timeout` until `port` may have a frame to receive (its
/// [`Port::rx_fd`] polls readable); a port without a descriptor just sleeps
/// a little. Returns whether it may have one.
pub fn wait_readable<P: Port + ?Sized>(
    port: &P,
    timeout: std::time::Duration,
) -> Result<bool, PortError> {
    match port.rx_fd() {
        Some(fd) => {
            let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
            crate::sys::poll_raw_readable(fd, ms)
                .map_err(|source| PortError::Os { op: "poll", source })
        }
        None => {
            std::thread::sleep(timeout.min(std::time::Duration::from_millis(1)));
            Ok(true)
        }
    }
}
