//! A NIC DMA model on HICAMP memory ("Rethinking Network Stack Design with
//! Memory Snapshots", sections 3.2 and 3.3).
//!
//! # The problem
//!
//! A NIC normally reads descriptors from one ring and payload bytes from
//! buffers the driver pinned for it, so a packet is copied into a DMA buffer
//! and its metadata lives apart from it. On HICAMP memory a packet is a
//! segment: an immutable, deduplicated snapshot that the NIC can be handed
//! by id, with no copy and no pinning.
//!
//! # Concepts
//!
//! * A [`SegRing`] is a contiguous range of segment ids with a head and a
//!   tail; the NIC owns the slots between them. The ring's region of the
//!   segment map is held by the ring itself ([`SlotMap`]: slot id -> the
//!   segment bound to it), so a slot changes hands between driver and
//!   device with no map lock, as a NIC's descriptor ring is its own memory.
//! * Each ring segment carries its DMA metadata ([`DmaMeta`]: offloads,
//!   frame offset, completion status) in its first [`META_LEN`] bytes (the
//!   device writes a TX status only to report an error: a completed slot
//!   whose status still reads `PENDING` was sent); the
//!   frame follows after some headroom. [`frame`] builds and reads these
//!   segments (the layout is drawn there), splicing the payload's own lines
//!   behind the headers. A TX slot may instead hold a descriptor with the
//!   headers inline and snapshots of the payload ([`frame::TxDesc`], as an
//!   mlx5 WQE carries inline headers): the same metadata with the slot, no
//!   frame segment to build or release (see [`nic`]).
//! * The [`Nic`] is the driver's batch interface and the DMA engine: the
//!   driver prepares a batch of segments and rings one doorbell; the NIC
//!   reads them through the memory (the "memory controller") and writes
//!   frames to a [`Port`]; received frames are deposited into RX segments,
//!   where line deduplication happens.
//! * Ports: [`sim`] (a simulated link with loss, delay and reordering on a
//!   virtual clock, applying the [`offload`]s in software), [`tap`] (a
//!   Linux TAP device, the kernel as the link partner), [`packet`]
//!   (AF_PACKET rings on an interface, the fallback), [`xdp`] (AF_XDP:
//!   a UMEM and its four rings, with the redirect program this crate loads
//!   and attaches itself) and [`netmap`] (the netmap user ABI: one ring
//!   pair whose rings and buffers live in a region the port maps and
//!   registers as extmem, with PASTE's buffer swaps; tested against an
//!   in-process model of netmap's kernel side where `/dev/netmap` is
//!   missing). The ring backends count what they copy in
//!   [`PortCopies`]: one RX copy out of the kernel-shared region into lines,
//!   and the TX gather into it, apart from the stack's copies.
//! * [`backend`]: one way to choose a backend (`sim`, `tap:NAME`,
//!   `af_xdp:IFACE[:QUEUE]`, `af_packet:IFACE`, `netmap:PORT`) and to
//!   learn which work on this host.
//! * [`checksum`] is the workspace's one Internet checksum.
//!
//! # Example
//!
//! Two NICs on a simulated link exchange one frame:
//!
//! ```
//! use hicamp::{Config, Memory};
//! use nicdma::sim::{LinkConfig, SimNet};
//! use nicdma::{frame_bytes, tx_segment, Nic, NicConfig, VirtioNetHdr};
//!
//! let mem = Memory::new(Config::default())?;
//! let (net, port_a, port_b) = SimNet::pair(1, LinkConfig::default())?;
//! let mut a = Nic::new(&mem, port_a, NicConfig::default())?;
//! let mut b = Nic::new(&mem, port_b, NicConfig::default())?;
//!
//! // Destination, source, an experimental ethertype, then the payload.
//! let mut frame = vec![0xff; 6];
//! frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
//! frame.extend_from_slice(b"hello, segments");
//! let seg = tx_segment(&mem, VirtioNetHdr::default(), 64, &frame)?;
//!
//! b.rx_refill()?; // post B's empty RX slots
//! assert!(a.tx_prepare(&seg)?); // a snapshot into A's TX ring
//! a.tx_doorbell()?; // one doorbell for the batch
//! a.dma()?; // A's device transmits onto the link
//! net.clock().advance(1_000);
//! b.dma()?; // B's device deposits the frame into an RX segment
//! let mut rx = Vec::new();
//! assert_eq!(b.rx_harvest(&mut rx, 16)?, 1);
//! let (_meta, got) = frame_bytes(&rx[0]).expect("a well-formed RX segment");
//! assert_eq!(got, frame);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Unsafe code
//!
//! The crate denies unsafe code except in one private module, `sys` (the
//! TAP ioctls, `poll`, `setns` and `geteuid`) and its submodules (`mem`:
//! memory mapped with the kernel; `sock`: socket options, binds and kicks;
//! `bpf`: the `bpf()` system call; `netmap`: `/dev/netmap`'s ioctls),
//! where every block carries a `// SAFETY:` comment.
//!
//! # Test support
//!
//! With the `test-support` feature (and in this crate's tests), the
//! namespace lab `tap::NetNs` and the ARP/ICMP `responder` are built: test
//! doubles for tests, benches and tools, not part of the API.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod checksum;
pub mod frame;
pub mod meta;
pub mod netmap;
pub mod nic;
pub mod offload;
pub mod packet;
pub mod port;
#[cfg(any(test, feature = "test-support"))]
pub mod responder;
pub mod ring;
mod ringport;
mod ringrx;
mod ringtx;
pub mod sim;
#[allow(unsafe_code)]
mod sys;
pub mod tap;
pub mod xdp;

pub use frame::{frame_bytes, tx_segment};
pub use meta::{DmaMeta, MetaError, VirtioNetHdr, META_LEN};
pub use nic::{Nic, NicConfig, NicCounters, NicError, Work};
pub use port::{Port, PortCopies, PortError, TxOutcome};
pub use ring::{Owner, RingError, SegRing, SlotMap};
