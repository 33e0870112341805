//! The [`Port`](crate::Port) half shared by the ring backends (AF_PACKET,
//! AF_XDP): each supplies its rings through [`RingBackend`] (its TX slots,
//! its kick, its receive path) and [`ring_port!`] makes the port of it, so
//! the transmit (gather, then kick when the ring is full), the receive
//! wrappers and the accessors are written once.

use std::os::fd::RawFd;

use crate::meta::VirtioNetHdr;
use crate::port::{PortCopies, PortError, TxOutcome};
use crate::ringtx::{self, TxSlots};

/// What a ring backend supplies to be a [`Port`](crate::Port).
pub(crate) trait RingBackend: TxSlots {
    /// The copy counters (moved out while the gather borrows the slots).
    fn counters(&mut self) -> &mut PortCopies;
    /// Frames gathered and not yet handed to the kernel by a kick.
    fn tx_queued(&self) -> bool;
    /// Hands the queued frames to the kernel (the port's flush).
    fn kick(&mut self) -> Result<(), PortError>;
    /// The receive path: lends the next frame (or, with `lro`, a run of TCP
    /// segments coalesced into one GSO frame) as chunks of the ring.
    fn lend(
        &mut self,
        lro: bool,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[&[u8]]),
    ) -> Result<bool, PortError>;
    /// Whether `receive_chunks` coalesces (the backend's `lro` setting).
    fn lro(&self) -> bool;
    /// The descriptor that polls readable when frames arrive.
    fn fd(&self) -> RawFd;
    /// The interface's name.
    fn iface_name(&self) -> &str;
}

/// Gathers the frame (offloads applied) into free ring buffers; when the
/// ring is full and frames are queued, kicks them out to make room (the
/// caller retries on `Full`).
pub(crate) fn transmit<B: RingBackend>(
    b: &mut B,
    vnet: &VirtioNetHdr,
    chunks: &[&[u8]],
) -> Result<TxOutcome, PortError> {
    let mut copies = std::mem::take(b.counters());
    let r = ringtx::place(vnet, chunks, b, &mut copies);
    *b.counters() = copies;
    if matches!(r, Ok(TxOutcome::Full)) && b.tx_queued() {
        b.kick()?;
    }
    r
}

/// Lends the next frame whole (never coalesced).
pub(crate) fn receive<B: RingBackend>(
    b: &mut B,
    deposit: &mut dyn FnMut(&VirtioNetHdr, &[u8]),
) -> Result<bool, PortError> {
    b.lend(false, &mut |h, chunks| match chunks {
        [f] => deposit(h, f),
        // A multi-buffer frame (AF_XDP with XDP_USE_SG): joined, as a
        // caller of `receive` wants one slice.
        _ => deposit(h, &chunks.concat()),
    })
}

/// `impl Port for $t` from its [`RingBackend`] implementation.
macro_rules! ring_port {
    ($t:ty) => {
        impl $crate::port::Port for $t {
            /// Gathers the frame (offloads applied) into free ring buffers,
            /// queued for the kernel until [`Port::flush`](crate::Port::flush);
            /// `Full` when the ring has no room.
            fn transmit(
                &mut self,
                vnet: &$crate::meta::VirtioNetHdr,
                chunks: &[&[u8]],
            ) -> Result<$crate::port::TxOutcome, $crate::port::PortError> {
                $crate::ringport::transmit(self, vnet, chunks)
            }

            fn flush(&mut self) -> Result<(), $crate::port::PortError> {
                $crate::ringport::RingBackend::kick(self)
            }

            /// Lends the next frame of the ring; never coalesces.
            fn receive(
                &mut self,
                deposit: &mut dyn FnMut(&$crate::meta::VirtioNetHdr, &[u8]),
            ) -> Result<bool, $crate::port::PortError> {
                $crate::ringport::receive(self, deposit)
            }

            /// Lends the next frame, or (with the backend's `lro`) a run of
            /// TCP segments coalesced into one GSO frame, as chunks of the
            /// ring.
            fn receive_chunks(
                &mut self,
                deposit: &mut dyn FnMut(&$crate::meta::VirtioNetHdr, &[&[u8]]),
            ) -> Result<bool, $crate::port::PortError> {
                let lro = $crate::ringport::RingBackend::lro(self);
                $crate::ringport::RingBackend::lend(self, lro, deposit)
            }

            fn copies(&self) -> $crate::port::PortCopies {
                self.copies
            }

            fn rx_fd(&self) -> Option<std::os::fd::RawFd> {
                Some($crate::ringport::RingBackend::fd(self))
            }

            fn max_frame(&self) -> usize {
                $crate::ringtx::TxSlots::capacity(self)
            }

            fn name(&self) -> &str {
                $crate::ringport::RingBackend::iface_name(self)
            }
        }
    };
}
pub(crate) use ring_port;
