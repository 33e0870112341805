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

    /// Lends the next received frame to `deposit`; returns false when none is
    /// waiting.
    fn receive(&mut self, deposit: &mut dyn FnMut(&VirtioNetHdr, &[u8]))
        -> Result<bool, PortError>;

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
