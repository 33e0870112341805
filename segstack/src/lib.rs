//! segstack: an ARP/IPv4/ICMP/UDP/TCP stack whose packets are HICAMP
//! segments (seed 004, section 3).
//!
//! Layers, in the smoltcp spirit:
//!
//! - [`wire`]: zero-copy views and checked parsing of Ethernet, ARP, IPv4,
//!   ICMP, UDP and TCP headers, and the Internet checksum;
//! - [`Payload`] (hicamp's [`SegmentSlice`](hicamp::SegmentSlice)) is a byte range of a segment snapshot, the
//!   unit in which data moves between the application, the sockets and the
//!   NIC without its bytes being copied;
//! - [`tcp`]: the TCP state machine (sans-IO: segments in, segments out);
//! - the interface: ARP cache, IPv4 routing, ICMP echo, UDP and TCP
//!   demultiplexing, batch RX/TX over a nicdma port.
#![deny(unsafe_code)]

pub mod iface;
pub mod sim;
pub mod tcp;
pub mod wire;

/// A payload is a byte range of a segment snapshot: hicamp's view type,
/// under the name the stack's APIs read best with.
pub use hicamp::SegmentSlice as Payload;
