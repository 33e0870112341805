//! segstack: an ARP/IPv4/ICMP/UDP/TCP stack whose packets are HICAMP
//! segments ("Rethinking Network Stack Design with Memory Snapshots",
//! section 3).
//!
//! # The problem
//!
//! A conventional stack copies payload from the application into socket
//! buffers, keeps another copy for retransmission, and copies again into
//! DMA buffers. Here a payload is a snapshot of the application's segment:
//! sockets queue and retransmit snapshots, the interface writes headers into
//! headroom in front of the payload's own lines, and the NIC reads them
//! through the memory. On receive, the payload a socket hands out is a range
//! of the very segment the NIC deposited.
//!
//! # Layers
//!
//! In the smoltcp spirit, top to bottom:
//!
//! - the interface ([`iface`]): the socket set, the ARP cache, IPv4
//!   routing, ICMP echo, UDP and TCP demultiplexing, batch RX/TX over a
//!   nicdma port;
//! - [`tcp`]: the TCP state machine (sans-IO: segments in, segments out);
//! - [`wire`]: zero-copy views and checked parsing of Ethernet, ARP, IPv4,
//!   ICMP, UDP and TCP headers, and the Internet checksum (nicdma's);
//! - [`Payload`] (hicamp's [`SegmentSlice`](hicamp::SegmentSlice)): a byte
//!   range of a segment snapshot, the unit in which data moves between the
//!   application, the sockets and the NIC without its bytes being copied.
//!
//! ```text
//!  application   send(Payload) / recv() -> Vec<Payload>
//!  iface         sockets | neighbours | tx: headers + spliced payload lines
//!  tcp           send queue = retransmission queue (snapshots)
//!  nicdma        ring segments: DmaMeta | headroom | frame
//! ```
//!
//! # Example
//!
//! Two interfaces on a simulated link (virtual clock): a TCP connection
//! carries a greeting from side a to side b.
//!
//! ```
//! use std::net::SocketAddrV4;
//!
//! use hicamp::{Config, Memory};
//! use nicdma::sim::LinkConfig;
//! use segstack::iface::IfaceError;
//! use segstack::sim::{SimPair, B_IP};
//! use segstack::tcp::State;
//!
//! let mem = Memory::new(Config::default())?;
//! let mut net = SimPair::new(&mem, LinkConfig::default(), 7, |_| {})?;
//! let listener = net.b.tcp_listen(80)?;
//! let client = net.a.tcp_connect(SocketAddrV4::new(B_IP, 80), net.now())?;
//! let (mut server, mut sent, mut got) = (None, false, Vec::new());
//! while got.len() < 5 {
//!     assert!(net.step()?, "the network went quiet");
//!     if !sent && net.a.tcp(client)?.state() == State::Established {
//!         net.a.send_slice(client, b"hello")?;
//!         sent = true;
//!     }
//!     if server.is_none() {
//!         server = net.b.tcp_accept(listener)?;
//!     }
//!     if let Some(s) = server {
//!         let mut buf = [0u8; 16];
//!         match net.b.recv_slice(s, &mut buf) {
//!             Ok(n) => got.extend_from_slice(&buf[..n]),
//!             Err(IfaceError::WouldBlock) => {}
//!             Err(e) => return Err(e.into()),
//!         }
//!     }
//! }
//! assert_eq!(got, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Unsafe code and test support
//!
//! The crate has no unsafe code (`deny(unsafe_code)`, no exception). The
//! `test-support` feature (on in its own tests) builds the fuzz bodies
//! (`wire::fuzz`) and the ingress harness (`iface::IngressFuzzer`) for the
//! fuzz crate and the tests; they are not part of the API.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod iface;
pub mod sim;
pub mod tcp;
pub mod wire;

/// A payload is a byte range of a segment snapshot: hicamp's view type,
/// under the name the stack's APIs read best with.
pub use hicamp::SegmentSlice as Payload;
