//! A NIC DMA model on HICAMP memory (seed 004, sections 3.2 and 3.3).
//!
//! The NIC addresses memory by segment id. Its TX and RX rings are contiguous
//! ranges of segment ids with a head and a tail; the DMA metadata (frame
//! length, checksum and segmentation offload, completion status) lives in each
//! segment's first bytes. The driver prepares a batch of segments and rings one
//! doorbell; the NIC reads them through the memory (the "memory controller")
//! and writes frames to a [`Port`]; received frames are deposited into RX
//! segments, where line deduplication happens.
#![deny(unsafe_code)]

pub mod checksum;
pub mod frame;
pub mod meta;
pub mod nic;
pub mod offload;
pub mod port;
#[cfg(any(test, feature = "test-support"))]
pub mod responder;
pub mod ring;
pub mod sim;
#[allow(unsafe_code)]
mod sys;
pub mod tap;

pub use frame::{frame_bytes, tx_segment};
pub use meta::{DmaMeta, MetaError, VirtioNetHdr, META_LEN};
pub use nic::{Nic, NicConfig, NicCounters, NicError, Work};
pub use port::{Port, PortError, TxOutcome};
pub use ring::{Owner, RingError, SegRing};
