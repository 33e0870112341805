//! Wire formats: checked parsing and emission of Ethernet, ARP, IPv4, ICMP,
//! UDP and TCP headers, and the Internet checksum.
//!
//! Parsers take untrusted bytes and return a typed error, never panic.

pub mod tcp;

pub use tcp::{TcpFlags, TcpRepr};

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
