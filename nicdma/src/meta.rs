//! The DMA metadata embedded in each ring segment's first bytes
//! ("Rethinking Network Stack Design with Memory Snapshots", section 3.2:
//! "metadata is embedded within the segments instead of being stored in a
//! separate descriptor ring").
//!
//! ```text
//!  offset 0   virtio-net header (12 bytes, the TAP backend's own format):
//!             flags u8 | gso_type u8 | hdr_len u16 | gso_size u16 |
//!             csum_start u16 | csum_offset u16 | num_buffers u16
//!  offset 12  frame_off u16   where the frame starts in the segment
//!  offset 14  status u16      completion status (the NIC writes errors)
//!  offset 16  frame_len u32   bytes of the frame
//!  offset 20  gso_segs u16    segments the NIC cut a GSO frame into
//!  offset 22  reserved (0) up to META_LEN
//!  frame_off  the frame (Ethernet header first); the bytes between
//!             META_LEN and frame_off are headroom for protocol headers
//! ```
//!
//! All fields are little-endian, except that the virtio-net header is in the
//! host's order (as the kernel expects over TAP without VNET_LE tweaks; this
//! model runs on little-endian hosts).

use hicamp::Segment;

/// Bytes reserved for the metadata at the start of every ring segment.
pub const META_LEN: usize = 32;

/// Where each field of the metadata lies in a ring segment (see the layout
/// above).
pub mod offset {
    /// The virtio-net header ([`VNET_HDR_LEN`](super::VNET_HDR_LEN) bytes).
    pub const VNET: u64 = 0;
    /// `frame_off`, u16.
    pub const FRAME_OFF: u64 = 12;
    /// `status`, u16: the field the NIC writes on completion when there is
    /// something to report (see [`status`](super::status)).
    pub const STATUS: u64 = 14;
    /// `frame_len`, u32.
    pub const FRAME_LEN: u64 = 16;
    /// `gso_segs`, u16.
    pub const GSO_SEGS: u64 = 20;
}

/// `flags`: the frame needs a checksum computed from `csum_start`, stored at
/// `csum_start + csum_offset` (VIRTIO_NET_HDR_F_NEEDS_CSUM).
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was verified (VIRTIO_NET_HDR_F_DATA_VALID).
pub const F_DATA_VALID: u8 = 2;

/// `gso_type` values (VIRTIO_NET_HDR_GSO_*).
pub mod gso {
    /// Not a GSO frame.
    pub const NONE: u8 = 0;
    /// TCP over IPv4, to be cut into `gso_size` segments.
    pub const TCPV4: u8 = 1;
    /// UDP (fragmentation offload).
    pub const UDP: u8 = 3;
    /// TCP over IPv6.
    pub const TCPV6: u8 = 4;
    /// Explicit congestion notification bit.
    pub const ECN: u8 = 0x80;
}

/// Completion status values.
///
/// A TX segment is prepared with `PENDING`. Completion is the ring's tail
/// moving past the slot; the device rewrites the status (copy-on-write, so
/// the driver's own snapshot keeps its bytes) only to report an error, or to
/// set `OK` over a stale error status. So a completed slot reading `PENDING`
/// or `OK` was sent, and success costs no new line. RX segments are
/// deposited with `OK`.
pub mod status {
    /// Not completed yet (on a completed TX slot: sent without error).
    pub const PENDING: u16 = 0;
    /// Done.
    pub const OK: u16 = 1;
    /// The metadata or the frame was malformed; the NIC dropped it.
    pub const BAD_FRAME: u16 = 2;
    /// The port refused the frame (an error, not back-pressure).
    pub const PORT_ERROR: u16 = 3;
}

/// The virtio-net header (`struct virtio_net_hdr_v1`, 12 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VirtioNetHdr {
    /// `F_NEEDS_CSUM`, `F_DATA_VALID`.
    pub flags: u8,
    /// One of [`gso`].
    pub gso_type: u8,
    /// Length of the headers to repeat in every GSO segment.
    pub hdr_len: u16,
    /// Payload bytes per GSO segment (the MSS).
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Buffers merged for this frame (RX with mergeable buffers).
    pub num_buffers: u16,
}

/// Size of [`VirtioNetHdr`] on the wire.
pub const VNET_HDR_LEN: usize = 12;

impl VirtioNetHdr {
    /// Encodes into 12 bytes (host order, little-endian here).
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Decodes 12 bytes (a shorter slice is `None`).
    pub fn from_bytes(b: &[u8]) -> Option<VirtioNetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        })
    }
}

/// The whole metadata block of a ring segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DmaMeta {
    /// Offloads (checksum, segmentation), as virtio-net says them.
    pub vnet: VirtioNetHdr,
    /// Offset of the frame in the segment (at least [`META_LEN`]).
    pub frame_off: u16,
    /// Completion status ([`status`]).
    pub status: u16,
    /// Frame length in bytes.
    pub frame_len: u32,
    /// Segments a GSO frame was cut into (written by the NIC).
    pub gso_segs: u16,
}

/// Why metadata could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Fewer than [`META_LEN`] bytes.
    #[error("segment of {0} bytes is shorter than the {META_LEN}-byte metadata")]
    Short(usize),
    /// The frame does not lie inside the segment.
    #[error("frame at {off}+{len} lies outside a segment of {seg_len} bytes")]
    FrameOutside {
        /// frame_off
        off: u16,
        /// frame_len
        len: u32,
        /// Segment length.
        seg_len: u64,
    },
    /// Checksum offsets point outside the frame.
    #[error("checksum at {start}+{offset} lies outside a frame of {len} bytes")]
    CsumOutside {
        /// csum_start
        start: u16,
        /// csum_offset
        offset: u16,
        /// frame_len
        len: u32,
    },
}

impl DmaMeta {
    /// Metadata for a plain frame at `frame_off` of `frame_len` bytes.
    pub fn frame(frame_off: u16, frame_len: u32) -> DmaMeta {
        DmaMeta {
            frame_off,
            frame_len,
            ..DmaMeta::default()
        }
    }

    /// Encodes into [`META_LEN`] bytes.
    pub fn to_bytes(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        let mut put = |at: u64, v: &[u8]| b[at as usize..at as usize + v.len()].copy_from_slice(v);
        put(offset::VNET, &self.vnet.to_bytes());
        put(offset::FRAME_OFF, &self.frame_off.to_le_bytes());
        put(offset::STATUS, &self.status.to_le_bytes());
        put(offset::FRAME_LEN, &self.frame_len.to_le_bytes());
        put(offset::GSO_SEGS, &self.gso_segs.to_le_bytes());
        b
    }

    /// Decodes and checks metadata against the segment length: the frame
    /// must lie inside the segment and the checksum fields inside the frame.
    pub fn parse(b: &[u8], seg_len: u64) -> Result<DmaMeta, MetaError> {
        if b.len() < META_LEN {
            return Err(MetaError::Short(b.len()));
        }
        let u16_at = |i: u64| u16::from_le_bytes([b[i as usize], b[i as usize + 1]]);
        let f = offset::FRAME_LEN as usize;
        let m = DmaMeta {
            vnet: VirtioNetHdr::from_bytes(&b[offset::VNET as usize..])
                .ok_or(MetaError::Short(b.len()))?,
            frame_off: u16_at(offset::FRAME_OFF),
            status: u16_at(offset::STATUS),
            frame_len: u32::from_le_bytes([b[f], b[f + 1], b[f + 2], b[f + 3]]),
            gso_segs: u16_at(offset::GSO_SEGS),
        };
        let end = u64::from(m.frame_off) + u64::from(m.frame_len);
        if (m.frame_off as usize) < META_LEN || end > seg_len {
            return Err(MetaError::FrameOutside {
                off: m.frame_off,
                len: m.frame_len,
                seg_len,
            });
        }
        if m.vnet.flags & F_NEEDS_CSUM != 0
            && u32::from(m.vnet.csum_start) + u32::from(m.vnet.csum_offset) + 2 > m.frame_len
        {
            return Err(MetaError::CsumOutside {
                start: m.vnet.csum_start,
                offset: m.vnet.csum_offset,
                len: m.frame_len,
            });
        }
        Ok(m)
    }

    /// Reads and [`parse`](DmaMeta::parse)s the metadata at the start of a
    /// ring segment.
    pub fn read(seg: &Segment) -> Result<DmaMeta, MetaError> {
        // The metadata normally lies in the first line: parse it in place.
        let first = seg.cursor().chunk();
        if first.len() >= META_LEN {
            return DmaMeta::parse(&first[..META_LEN], seg.len());
        }
        let mut head = [0u8; META_LEN];
        let n = seg.read_at(0, &mut head).map_err(|_| MetaError::Short(0))?;
        DmaMeta::parse(&head[..n], seg.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sizes() {
        assert_eq!(std::mem::size_of::<VirtioNetHdr>(), VNET_HDR_LEN);
        assert_eq!(META_LEN, 32);
    }

    #[test]
    fn roundtrip_and_checks() {
        let mut m = DmaMeta::frame(64, 100);
        m.vnet = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: gso::TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        m.status = status::OK;
        m.gso_segs = 3;
        let b = m.to_bytes();
        assert_eq!(DmaMeta::parse(&b, 164), Ok(m));
        assert!(matches!(
            DmaMeta::parse(&b, 163),
            Err(MetaError::FrameOutside { .. })
        ));
        assert!(matches!(
            DmaMeta::parse(&b[..10], 164),
            Err(MetaError::Short(10))
        ));
        m.vnet.csum_start = 99;
        assert!(matches!(
            DmaMeta::parse(&m.to_bytes(), 164),
            Err(MetaError::CsumOutside { .. })
        ));
        let mut bad = DmaMeta::frame(8, 10).to_bytes();
        assert!(
            DmaMeta::parse(&bad, 100).is_err(),
            "frame inside the metadata"
        );
        bad[12] = 0xff;
        assert!(DmaMeta::parse(&bad, 100).is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the parser; what parses is in bounds.
        #[test]
        fn parse_never_panics(b in prop::collection::vec(any::<u8>(), 0..64), seg_len in 0u64..100_000) {
            if let Ok(m) = DmaMeta::parse(&b, seg_len) {
                prop_assert!(m.frame_off as usize >= META_LEN);
                prop_assert!(u64::from(m.frame_off) + u64::from(m.frame_len) <= seg_len);
                prop_assert_eq!(DmaMeta::parse(&m.to_bytes(), seg_len), Ok(m));
            }
        }
    }
}
