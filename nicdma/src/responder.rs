//! A small ARP and ICMP echo responder written on the NIC (the full stack is
//! segstack's): it answers ARP requests for its address and ICMP echo
//! requests to it. A reply is the request's RX segment, snapshotted and
//! rewritten in its header lines only (copy-on-write): the echo payload is
//! never copied.

use hicamp::Segment;

use crate::checksum::{checksum, fold, Accumulator};
use crate::meta::{DmaMeta, VirtioNetHdr};
use crate::nic::{Nic, NicError};
use crate::port::Port;

/// What the responder did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponderCounters {
    /// ARP requests answered.
    pub arp_replies: u64,
    /// ICMP echo requests answered.
    pub echo_replies: u64,
    /// Frames ignored (not for us, or not ARP/ICMP echo).
    pub ignored: u64,
    /// Frames dropped as malformed (truncated, bad lengths, bad checksums).
    pub malformed: u64,
}

/// Answers ARP and ICMP echo for one MAC and IPv4 address.
#[derive(Debug)]
pub struct Responder {
    mac: [u8; 6],
    ip: [u8; 4],
    counters: ResponderCounters,
    rx: Vec<Segment>,
}

enum Verdict {
    Reply(Vec<(usize, Vec<u8>)>),
    Ignore,
    Malformed,
}

impl Responder {
    /// A responder for `mac` and `ip`.
    pub fn new(mac: [u8; 6], ip: [u8; 4]) -> Responder {
        Responder {
            mac,
            ip,
            counters: ResponderCounters::default(),
            rx: Vec::new(),
        }
    }

    /// The counters.
    pub fn counters(&self) -> &ResponderCounters {
        &self.counters
    }

    /// One round on `nic`: refill, run the device, answer everything
    /// harvested, ring one doorbell for the replies, reap. Returns the replies
    /// sent.
    pub fn poll<P: Port>(&mut self, nic: &mut Nic<P>) -> Result<u32, NicError> {
        nic.rx_refill()?;
        nic.dma()?;
        self.rx.clear();
        nic.rx_harvest(&mut self.rx, u32::MAX)?;
        nic.ack();
        let mut sent = 0;
        for seg in std::mem::take(&mut self.rx) {
            if let Some(reply) = self.answer(&seg)? {
                if nic.tx_room() == 0 {
                    nic.tx_doorbell()?;
                    nic.dma()?;
                    nic.tx_reap()?;
                }
                if nic.tx_prepare(&reply)? {
                    sent += 1;
                }
            }
        }
        nic.tx_doorbell()?;
        nic.dma()?;
        nic.tx_reap()?;
        nic.ack();
        Ok(sent)
    }

    /// The reply to one received ring segment, if it deserves one.
    pub fn answer(&mut self, seg: &Segment) -> Result<Option<Segment>, NicError> {
        let Ok(meta) = DmaMeta::read(seg) else {
            self.counters.malformed += 1;
            return Ok(None);
        };
        // Headers only: Ethernet + ARP (42) or Ethernet + IPv4 (<= 60) + ICMP (8).
        let mut h = [0u8; 14 + 60 + 8];
        let n = (meta.frame_len as usize).min(h.len());
        seg.read_at(u64::from(meta.frame_off), &mut h[..n])?;
        let verdict = self.decide(&h[..n], meta.frame_len as usize, seg, meta.frame_off)?;
        match verdict {
            Verdict::Ignore => {
                self.counters.ignored += 1;
                Ok(None)
            }
            Verdict::Malformed => {
                self.counters.malformed += 1;
                Ok(None)
            }
            Verdict::Reply(patches) => {
                // Snapshot the request, rewrite header bytes only.
                let mut m = seg.to_mut();
                let out = DmaMeta {
                    vnet: VirtioNetHdr::default(),
                    ..DmaMeta::frame(meta.frame_off, meta.frame_len)
                };
                m.write_at(0, &out.to_bytes())?;
                for (off, bytes) in patches {
                    m.write_at(u64::from(meta.frame_off) + off as u64, &bytes)?;
                }
                Ok(Some(m.freeze()))
            }
        }
    }

    fn decide(
        &mut self,
        h: &[u8],
        len: usize,
        seg: &Segment,
        frame_off: u16,
    ) -> Result<Verdict, NicError> {
        if h.len() < 14 {
            return Ok(Verdict::Malformed);
        }
        let dst_ok = h[0..6] == self.mac || h[0..6] == [0xff; 6];
        if !dst_ok {
            return Ok(Verdict::Ignore);
        }
        let src_mac: [u8; 6] = h[6..12].try_into().expect("6");
        match [h[12], h[13]] {
            [0x08, 0x06] => {
                // ARP: Ethernet/IPv4 request for our address.
                if h.len() < 42 {
                    return Ok(Verdict::Malformed);
                }
                let a = &h[14..42];
                if a[0..6] != [0, 1, 8, 0, 6, 4] {
                    return Ok(Verdict::Malformed);
                }
                if a[6..8] != [0, 1] || a[24..28] != self.ip {
                    return Ok(Verdict::Ignore);
                }
                self.counters.arp_replies += 1;
                let mut eth = src_mac.to_vec();
                eth.extend_from_slice(&self.mac);
                let mut arp = vec![0, 2];
                arp.extend_from_slice(&self.mac);
                arp.extend_from_slice(&self.ip);
                arp.extend_from_slice(&a[8..18]); // sender MAC and IP of the request
                Ok(Verdict::Reply(vec![(0, eth), (20, arp)]))
            }
            [0x08, 0x00] => {
                if h.len() < 34 || h[14] >> 4 != 4 {
                    return Ok(Verdict::Malformed);
                }
                let ihl = usize::from(h[14] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([h[16], h[17]]));
                if ihl < 20 || h.len() < 14 + ihl + 8 || total < ihl + 8 || 14 + total > len {
                    return Ok(Verdict::Malformed);
                }
                if checksum(&h[14..14 + ihl]) != 0 {
                    return Ok(Verdict::Malformed);
                }
                if h[23] != 1 || h[30..34] != self.ip {
                    return Ok(Verdict::Ignore);
                }
                let icmp = 14 + ihl;
                if h[icmp] != 8 || h[icmp + 1] != 0 {
                    return Ok(Verdict::Ignore);
                }
                // The ICMP checksum covers the payload: walk it through the
                // cursor (no copy) to check it.
                let mut acc = Accumulator::new();
                let mut c = seg.cursor_at(u64::from(frame_off) + icmp as u64);
                let mut left = total - ihl;
                while left > 0 {
                    let chunk = &c.chunk()[..c.chunk().len().min(left)];
                    acc.add(chunk);
                    left -= chunk.len();
                    c.advance(chunk.len());
                }
                if acc.checksum() != 0 {
                    return Ok(Verdict::Malformed);
                }
                self.counters.echo_replies += 1;
                let mut eth = src_mac.to_vec();
                eth.extend_from_slice(&self.mac);
                // IPv4: swap addresses, fresh TTL, new header checksum.
                let mut ip = h[14..14 + ihl].to_vec();
                ip.copy_within(12..16, 16);
                ip[12..16].copy_from_slice(&self.ip);
                ip[8] = 64;
                ip[10..12].copy_from_slice(&[0, 0]);
                let c = checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                // ICMP: type 0; the checksum changes by the type's difference.
                let old = u16::from_be_bytes([h[icmp + 2], h[icmp + 3]]);
                let new = !fold(u64::from(!old) + 0xffff - 0x0800);
                let mut icmp_hdr = vec![0u8, 0];
                icmp_hdr.extend_from_slice(&new.to_be_bytes());
                Ok(Verdict::Reply(vec![(0, eth), (14, ip), (icmp, icmp_hdr)]))
            }
            _ => Ok(Verdict::Ignore),
        }
    }
}
