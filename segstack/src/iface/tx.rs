//! TX: building frames. Headers are written into headroom in front of the
//! payload and the payload's own lines are spliced behind them; checksums
//! and segmentation are left to the NIC when offload is on. The frame's own
//! lines (metadata, headroom, headers, the interior lines above them) are
//! owned lines on a volatile memory ([`hicamp::Memory::splice_owned`]: no
//! hash, no index, freed straight back when the NIC is done), or interned
//! by nicdma's frame builder ([`nicdma::frame`]) with
//! `IfaceConfig::tx_dedup`.
//!
//! By default (`IfaceConfig::tx_inline`) no frame segment is built: the
//! frame goes to the NIC as a TX descriptor with the headers inline and
//! snapshots of the payload ([`nicdma::frame::TxDesc`], as an mlx5 WQE
//! carries inline headers and points at the payload's buffers), and the
//! port gathers [headers, payload lines] into its iovec.

use std::net::{Ipv4Addr, SocketAddrV4};

use hicamp::Segment;
use nicdma::frame::{self, TxDesc, TxFrame};
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

    /// The frame: a descriptor with inline headers ([`tx_desc`]) when
    /// `IfaceConfig::tx_inline`, else a frame segment ([`tx_frame`]),
    /// counted.
    fn frame(
        &mut self,
        vnet: VirtioNetHdr,
        hdrs: &[u8],
        payload: &[Payload],
    ) -> Result<TxFrame, IfaceError> {
        if self.cfg.tx_inline && hdrs.len() <= frame::INLINE_MAX {
            if let Ok(d) = tx_desc(vnet, hdrs, payload) {
                // Every payload byte is referenced where it lies.
                self.stats.tx_payload_shared += (d.frame_len() - hdrs.len()) as u64;
                return Ok(TxFrame::Inline(d));
            }
        }
        let (seg, counts) = tx_frame(&self.mem, self.tx_owned, vnet, hdrs, payload)?;
        self.stats.tx_payload_shared += counts.shared_bytes;
        self.stats.tx_payload_copied += counts.copied_bytes;
        Ok(TxFrame::Segment(seg))
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

/// A TX frame segment as the interface builds it: `vnet` in the metadata,
/// `hdrs` placed so that the first payload byte keeps its offset within a
/// line (within an interior line's span for a payload of at least two
/// spans), then the payload pieces, shared where they line up. `owned`:
/// the frame's own lines are owned lines (`IfaceConfig::tx_dedup` off on a
/// volatile memory), else interned. Public for the TX frame bench.
pub fn tx_frame(
    mem: &hicamp::Memory,
    owned: bool,
    vnet: VirtioNetHdr,
    hdrs: &[u8],
    payload: &[Payload],
) -> Result<(Segment, hicamp::SpliceCounts), hicamp::Error> {
    let phase = payload.first().map_or(0, |p| p.offset() as usize);
    let plen: usize = payload.iter().map(Payload::len).sum();
    // A payload of at least two interior lines' spans (a TSO frame) keeps
    // its offset modulo that span, so that whole subtrees of its leaves sit
    // where they sit in the payload's segment and the frame's interior
    // lines over them are found, not built (the headroom is zero lines,
    // which cost nothing); a smaller one keeps its line phase.
    let span = mem.line_size() * mem.fanout();
    let grain = if plen >= 2 * span && span <= MAX_SPAN {
        span
    } else {
        mem.line_size()
    };
    let frame_off = frame::aligned_frame_off(grain, hdrs.len(), phase);
    frame::build_lines(mem, owned, vnet, frame_off, hdrs, payload)
}

/// A TX descriptor with `hdrs` inline and snapshots of `payload` (no frame
/// segment; see [`TxDesc`]). Public for the TX frame bench.
pub fn tx_desc(
    vnet: VirtioNetHdr,
    hdrs: &[u8],
    payload: &[Payload],
) -> Result<TxDesc, frame::DescError> {
    TxDesc::new(vnet, hdrs, payload)
}

/// `f` (a built frame) with its Ethernet destination replaced: in a
/// descriptor's inline headers, or a copy-on-write of a frame segment's one
/// header line.
pub(super) fn patch_dst_mac(f: TxFrame, mac: EthernetAddress) -> Result<TxFrame, hicamp::Error> {
    let seg = match f {
        TxFrame::Inline(mut d) => {
            let h = d.headers_mut();
            let n = h.len().min(mac.0.len());
            h[..n].copy_from_slice(&mac.0[..n]);
            return Ok(TxFrame::Inline(d));
        }
        TxFrame::Segment(seg) => seg,
    };
    let meta = DmaMeta::read(&seg).map_err(|_| hicamp::Error::BadOffset {
        offset: 0,
        len: META_LEN as u64,
        seg_len: seg.len(),
    })?;
    let mut m = seg.to_mut();
    m.write_at(u64::from(meta.frame_off), &mac.0)?;
    Ok(TxFrame::Segment(m.freeze()))
}

#[cfg(test)]
mod tests {
    use hicamp::{Config, Memory, SegmentSlice};
    use nicdma::{frame_bytes, VirtioNetHdr};

    use super::tx_frame;

    /// Owned and interned frames: the same bytes and metadata, the payload
    /// shared (not copied) either way, the owned frame's own lines out of
    /// the index and all of them back when the frames are released.
    #[test]
    fn owned_frames_match_interned_ones_and_free() {
        let mem = Memory::new(Config {
            line_size: 64,
            capacity_lines: 1 << 14,
            ..Config::default()
        })
        .unwrap();
        assert!(mem.owned_lines_enabled());
        let reply: Vec<u8> = (0..200u32).map(|i| (i * 31 + 7) as u8).collect();
        let http: Vec<u8> = (0..240u32).map(|i| (i * 17 + 3) as u8 | 0x20).collect();
        let page: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8 | 1).collect();
        let hdrs: Vec<u8> = (0..66u8).map(|i| i.wrapping_mul(29) | 1).collect();
        let seg = |b: &[u8]| SegmentSlice::new(mem.segment(b).unwrap(), 0, b.len());
        // A page behind its HTTP header as `writev` copies them: one
        // segment (two slices of it, as a send queue may hold them).
        let resp: Vec<u8> = http.iter().chain(&page).copied().collect();
        let r = mem.segment(&resp).unwrap();
        let halves = vec![
            SegmentSlice::new(r.clone(), 0, 1024),
            SegmentSlice::new(r, 1024, resp.len() - 1024),
        ];
        let cases = [vec![], vec![seg(&reply)], vec![seg(&resp)], halves];
        let live = mem.live_lines();
        for payload in &cases {
            let vnet = VirtioNetHdr {
                gso_size: 1448,
                ..VirtioNetHdr::default()
            };
            let (o, oc) = tx_frame(&mem, true, vnet, &hdrs, payload).unwrap();
            let (d, dc) = tx_frame(&mem, false, vnet, &hdrs, payload).unwrap();
            assert!(!o.is_canonical() && d.is_canonical());
            assert_eq!(frame_bytes(&o), frame_bytes(&d));
            let (meta, bytes) = frame_bytes(&o).unwrap();
            assert_eq!(meta.vnet, vnet);
            let want: Vec<u8> = hdrs
                .iter()
                .chain(
                    payload
                        .iter()
                        .flat_map(|p| p.to_vec())
                        .collect::<Vec<_>>()
                        .iter(),
                )
                .copied()
                .collect();
            assert_eq!(bytes, want);
            assert_eq!(oc.copied_bytes, 0);
            assert_eq!(oc, dc);
            let st = mem.stats();
            assert!(st.owned_leaf_lines >= 1, "{st:?}");
            drop((o, d));
            let st = mem.stats();
            assert_eq!((st.owned_leaf_lines, st.owned_interior_lines), (0, 0));
            assert_eq!(mem.live_lines(), live);
        }
    }
}
