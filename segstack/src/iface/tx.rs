//! TX: building frames. Headers are written into headroom in front of the
//! payload and the payload's own lines are spliced behind them by nicdma's
//! frame builder ([`nicdma::frame`]); checksums and segmentation are left to
//! the NIC when offload is on.

use std::net::{Ipv4Addr, SocketAddrV4};

use hicamp::Segment;
use nicdma::frame;
use nicdma::meta::{gso, F_NEEDS_CSUM};
use nicdma::{DmaMeta, VirtioNetHdr, META_LEN};

use super::{IfaceError, Inner, ETH_LEN, IP_LEN, MAX_HDRS};
use crate::wire::{
    self, checksum, ethernet, ArpRepr, EthernetAddress, EthernetRepr, Ipv4Repr, TcpRepr,
};
use crate::Payload;

/// The largest interior-line span a frame's headroom is padded to (the
/// frame offset is a `u16`): 16 KiB, 256-byte lines.
const MAX_SPAN: usize = 16 << 10;

impl Inner {
    /// Builds and queues a TCP segment from `local` to `remote`: the header
    /// of `repr`, then the `payload` slices, cut at `gso_mss` by the NIC when
    /// longer.
    pub(super) fn send_tcp(
        &mut self,
        now: u64,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        repr: &TcpRepr,
        payload: &[Payload],
        gso_mss: Option<u16>,
    ) -> Result<(), IfaceError> {
        let plen: usize = payload.iter().map(Payload::len).sum();
        let thl = repr.header_len();
        let mut l4 = [0u8; 60];
        repr.emit(&mut l4[..thl]);
        let tcp_len = (thl + plen) as u32;
        let csum_at = if self.cfg.tx_csum_offload {
            wire::tcp::fill_pseudo_checksum(&mut l4[..thl], *local.ip(), *remote.ip(), tcp_len);
            Some(wire::tcp::CHECKSUM_OFFSET as u16)
        } else {
            let mut acc = checksum::Accumulator::new();
            acc.add_chunks(payload.iter().flat_map(Payload::chunks));
            wire::tcp::fill_checksum(
                &mut l4[..thl],
                *local.ip(),
                *remote.ip(),
                acc.sum(),
                tcp_len,
            );
            None
        };
        let gso = gso_mss.filter(|&m| plen > usize::from(m));
        self.send_ip(
            now,
            *remote.ip(),
            wire::ipv4::protocol::TCP,
            &l4[..thl],
            payload,
            csum_at,
            gso,
        )
    }

    /// Builds one frame: metadata, headroom, Ethernet + IPv4 + `l4` headers,
    /// then the payload's own lines; queues it for the ring (or for ARP).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_ip(
        &mut self,
        now: u64,
        dst: Ipv4Addr,
        protocol: u8,
        l4: &[u8],
        payload: &[Payload],
        csum_at: Option<u16>,
        gso_mss: Option<u16>,
    ) -> Result<(), IfaceError> {
        let plen: usize = payload.iter().map(Payload::len).sum();
        let hop = self.next_hop(dst);
        let mac = self.lookup(hop, now);
        let ip = Ipv4Repr {
            src: self.cfg.ip,
            dst,
            protocol,
            ttl: 64,
            tos: 0,
            ident: self.ident,
            dont_frag: true,
            payload_len: l4.len() + plen,
        };
        self.ident = self.ident.wrapping_add(1);
        let hdr_len = ETH_LEN + IP_LEN + l4.len();
        let mut hdrs = [0u8; MAX_HDRS];
        EthernetRepr {
            dst: mac.unwrap_or(EthernetAddress([0; 6])),
            src: self.cfg.mac,
            ethertype: ethernet::ethertype::IPV4,
        }
        .emit(&mut hdrs[..ETH_LEN]);
        ip.emit(&mut hdrs[ETH_LEN..ETH_LEN + IP_LEN]);
        hdrs[ETH_LEN + IP_LEN..hdr_len].copy_from_slice(l4);
        let mut vnet = VirtioNetHdr::default();
        if let Some(off) = csum_at {
            vnet.flags = F_NEEDS_CSUM;
            vnet.csum_start = (ETH_LEN + IP_LEN) as u16;
            vnet.csum_offset = off;
        }
        if let Some(mss) = gso_mss {
            vnet.gso_type = gso::TCPV4;
            vnet.gso_size = mss;
            vnet.hdr_len = hdr_len as u16;
        }
        let seg = self.frame(vnet, &hdrs[..hdr_len], payload)?;
        self.stats.tx_payload_bytes += plen as u64;
        match mac {
            Some(_) => self.txq.push_back(seg),
            None => {
                let cap = self.cfg.arp_queue;
                let n = self.neighbours.get_mut(&hop).expect("lookup made it");
                if n.waiting.len() < cap {
                    n.waiting.push(seg);
                } else {
                    self.stats.tx_dropped += 1;
                }
            }
        }
        Ok(())
    }

    /// The frame segment: `hdrs` placed so that the first payload byte keeps
    /// its offset within a line, then the payload pieces.
    fn frame(
        &mut self,
        vnet: VirtioNetHdr,
        hdrs: &[u8],
        payload: &[Payload],
    ) -> Result<Segment, IfaceError> {
        let phase = payload.first().map_or(0, |p| p.offset() as usize);
        let plen: usize = payload.iter().map(Payload::len).sum();
        // A payload of at least two interior lines' spans (a TSO frame)
        // keeps its offset modulo that span, so that whole subtrees of its
        // leaves sit where they sit in the payload's segment and the
        // frame's interior lines over them are found, not built (the
        // headroom is zero lines, which cost nothing); a smaller one keeps
        // its line phase.
        let span = self.mem.line_size() * self.mem.fanout();
        let grain = if plen >= 2 * span && span <= MAX_SPAN {
            span
        } else {
            self.mem.line_size()
        };
        let frame_off = frame::aligned_frame_off(grain, hdrs.len(), phase);
        let (seg, counts) = frame::build(&self.mem, vnet, frame_off, hdrs, payload)?;
        self.stats.tx_payload_shared += counts.shared_bytes;
        self.stats.tx_payload_copied += counts.copied_bytes;
        Ok(seg)
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let bits = u32::from(self.cfg.prefix_len.min(32));
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        u32::from(ip) & mask == u32::from(self.cfg.ip) & mask
    }

    fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        if self.in_subnet(dst) {
            dst
        } else {
            self.cfg.gateway.unwrap_or(dst)
        }
    }

    pub(super) fn send_arp(
        &mut self,
        dst: EthernetAddress,
        arp: &ArpRepr,
    ) -> Result<(), IfaceError> {
        let mut f = [0u8; ETH_LEN + 28];
        EthernetRepr {
            dst,
            src: self.cfg.mac,
            ethertype: ethernet::ethertype::ARP,
        }
        .emit(&mut f[..ETH_LEN]);
        arp.emit(&mut f[ETH_LEN..]);
        let seg = self.frame(VirtioNetHdr::default(), &f, &[])?;
        self.txq.push_back(seg);
        Ok(())
    }
}

/// `seg` (a built frame) with its Ethernet destination replaced: a
/// copy-on-write of the one header line.
pub(super) fn patch_dst_mac(seg: &Segment, mac: EthernetAddress) -> Result<Segment, hicamp::Error> {
    let meta = DmaMeta::read(seg).map_err(|_| hicamp::Error::BadOffset {
        offset: 0,
        len: META_LEN as u64,
        seg_len: seg.len(),
    })?;
    let mut m = seg.to_mut();
    m.write_at(u64::from(meta.frame_off), &mac.0)?;
    Ok(m.freeze())
}
