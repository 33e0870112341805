//! Wire formats: checked parsing and emission of Ethernet, ARP, IPv4, ICMP,
//! UDP and TCP headers, and the Internet checksum.
//!
//! Parsers take untrusted bytes and return a typed error, never panic.

pub mod arp;
pub mod checksum;
pub mod ethernet;
#[cfg(any(test, feature = "test-support"))]
pub mod fuzz;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;

pub use arp::{ArpOp, ArpRepr};
pub use checksum::Accumulator;
pub use ethernet::{EthernetAddress, EthernetRepr};
pub use icmp::IcmpRepr;
pub use ipv4::Ipv4Repr;
pub use tcp::{seq_ge, seq_gt, seq_le, seq_lt, TcpFlags, TcpRepr};
pub use udp::UdpRepr;

/// Why a header could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the header (or the length it declares) needs.
    #[error("truncated")]
    Truncated,
    /// A field holds a value the format forbids.
    #[error("malformed")]
    Malformed,
    /// The checksum does not verify.
    #[error("bad checksum")]
    Checksum,
    /// Well-formed but not handled (e.g. IPv4 fragments).
    #[error("unsupported")]
    Unsupported,
}
