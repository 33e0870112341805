//! Receive coalescing (LRO) for the ring backends, as a NIC does it: runs of
//! in-order TCP/IPv4 segments of one flow that wait in the RX ring together
//! are handed to the NIC as one GSO frame (virtio `gso_type` TCPV4, the
//! checksums verified here, `F_DATA_VALID`), so the stack handles one frame
//! and sends one ACK where the wire carried many.
//!
//! No byte is copied for it: the merged headers (the first segment's, with
//! the IPv4 total length and checksum fixed) are built in a small buffer,
//! and the payloads are lent where the kernel wrote them, as chunks, so the
//! NIC's deposit is still the one copy into lines.
//!
//! A segment joins a run when it continues the flow exactly: the same
//! Ethernet header, addresses, ports, ACK number, window, TCP options
//! (timestamps included) and header length; its sequence number follows the
//! previous payload; its flags are ACK (and PSH, which ends the run); every
//! segment but the last carries the first one's payload length (the MSS);
//! its checksums verify. IPv4 with options or fragments is never merged.

use crate::checksum::{checksum, fold, sum};
use crate::meta::{gso, VirtioNetHdr, F_DATA_VALID, F_NEEDS_CSUM};

/// The most segments merged into one frame.
pub(crate) const LRO_MAX: usize = 44;
/// The longest header block of a coalescable frame (Ethernet, IPv4 without
/// options, TCP with options).
pub(crate) const LRO_HDR_MAX: usize = 14 + 20 + 60;

const ETH_IP_LEN: usize = 14 + 20;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// What coalescing needs of one segment.
#[derive(Debug, Clone, Copy)]
struct TcpSeg {
    hdr_len: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

/// Parses `f` as a TCP/IPv4 segment that may be merged (ACK, maybe PSH, a
/// payload, no IP options or fragments, the IP length matching the frame).
fn tcp_seg(f: &[u8]) -> Option<TcpSeg> {
    if f.len() < ETH_IP_LEN + 20 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 || f[23] != 6 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let frag = u16::from_be_bytes([f[20], f[21]]);
    if total + 14 != f.len() || frag & 0x3fff != 0 {
        return None;
    }
    let tcp_len = usize::from(f[ETH_IP_LEN + 12] >> 4) * 4;
    let hdr_len = ETH_IP_LEN + tcp_len;
    if tcp_len < 20 || hdr_len > LRO_HDR_MAX || hdr_len >= f.len() {
        return None;
    }
    let flags = f[ETH_IP_LEN + 13];
    if flags & !(ACK | PSH) != 0 || flags & ACK == 0 {
        return None;
    }
    Some(TcpSeg {
        hdr_len,
        payload: f.len() - hdr_len,
        seq: u32::from_be_bytes(f[ETH_IP_LEN + 4..ETH_IP_LEN + 8].try_into().ok()?),
        flags,
    })
}

/// Whether both checksums of a parsed segment verify.
fn checksums_ok(f: &[u8]) -> bool {
    if checksum(&f[14..ETH_IP_LEN]) != 0 {
        return false;
    }
    let tcp = &f[ETH_IP_LEN..];
    let acc = sum(0, &f[26..34]) + 6 + tcp.len() as u64;
    fold(sum(acc, tcp)) == 0xffff
}

/// Whether `n` continues the flow of `first` (headers alike but for the
/// IPv4 length, id and checksum and the TCP sequence number, flags and
/// checksum).
fn same_flow(first: &[u8], n: &[u8], hdr_len: usize) -> bool {
    let l4 = ETH_IP_LEN;
    first[..16] == n[..16] // Ethernet; IPv4 version, IHL, TOS
        && first[20..24] == n[20..24] // flags/fragment, TTL, protocol
        && first[26..l4 + 4] == n[26..l4 + 4] // addresses, ports
        && first[l4 + 8..l4 + 13] == n[l4 + 8..l4 + 13] // ACK number, data offset
        && first[l4 + 14..l4 + 16] == n[l4 + 14..l4 + 16] // window
        && first[l4 + 20..hdr_len] == n[l4 + 20..hdr_len] // options
}

/// Plans one frame out of the segments `frame(0)`, `frame(1)`, ... (`n` of
/// them wait, `n >= 1`). Returns how many to merge (1: lend `frame(0)` as it
/// is) and, when more than one, the metadata and the merged headers written
/// into `hdr` (of the returned length); the frames' payloads follow them
/// (`frame(i)[hdr_len..]`).
///
/// `trusted(i)`: the kernel vouches for frame `i`'s checksums (AF_PACKET's
/// `TP_STATUS_CSUMNOTREADY`: a locally made frame whose checksum was left
/// partial), so they are not verified.
pub(crate) fn plan<'a>(
    n: usize,
    frame: impl Fn(usize) -> Option<&'a [u8]>,
    trusted: impl Fn(usize) -> bool,
    hdr: &mut [u8; LRO_HDR_MAX],
) -> (usize, Option<(VirtioNetHdr, usize)>) {
    let Some(f0) = frame(0) else {
        return (1, None);
    };
    let Some(s0) = tcp_seg(f0) else {
        return (1, None);
    };
    if n < 2 || s0.flags & PSH != 0 || !(trusted(0) || checksums_ok(f0)) {
        return (1, None);
    }
    let mss = s0.payload;
    let mut k = 1;
    let mut total = s0.payload;
    let mut next_seq = s0.seq.wrapping_add(mss as u32);
    let mut last_flags = s0.flags;
    while k < n.min(LRO_MAX) {
        let Some(f) = frame(k) else { break };
        let Some(s) = tcp_seg(f) else { break };
        if s.hdr_len != s0.hdr_len
            || s.seq != next_seq
            || s.payload > mss
            || s0.hdr_len - 14 + total + s.payload > 65_535
            || !same_flow(f0, f, s0.hdr_len)
            || !(trusted(k) || checksums_ok(f))
        {
            break;
        }
        k += 1;
        total += s.payload;
        next_seq = next_seq.wrapping_add(s.payload as u32);
        last_flags = s.flags;
        // A short segment or PSH ends the run.
        if s.payload < mss || s.flags & PSH != 0 {
            break;
        }
    }
    if k == 1 {
        return (1, None);
    }
    let hl = s0.hdr_len;
    hdr[..hl].copy_from_slice(&f0[..hl]);
    let ip_total = (hl - 14 + total) as u16;
    hdr[16..18].copy_from_slice(&ip_total.to_be_bytes());
    hdr[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&hdr[14..ETH_IP_LEN]);
    hdr[24..26].copy_from_slice(&c.to_be_bytes());
    hdr[ETH_IP_LEN + 13] = s0.flags | (last_flags & PSH);
    let vnet = VirtioNetHdr {
        flags: F_DATA_VALID,
        gso_type: gso::TCPV4,
        gso_size: mss as u16,
        hdr_len: hl as u16,
        ..VirtioNetHdr::default()
    };
    debug_assert_eq!(vnet.flags & F_NEEDS_CSUM, 0);
    (k, Some((vnet, hl)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP/IPv4 frame with timestamps, checksums complete.
    pub(crate) fn seg(seq: u32, payload: &[u8], flags: u8, tsval: u32) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 32];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        let total = (20 + 32 + payload.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[20] = 0x40; // DF
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&80u16.to_be_bytes());
        f[36..38].copy_from_slice(&5555u16.to_be_bytes());
        f[38..42].copy_from_slice(&seq.to_be_bytes());
        f[42..46].copy_from_slice(&77u32.to_be_bytes());
        f[46] = 0x80; // 32-byte header
        f[47] = flags;
        f[48..50].copy_from_slice(&500u16.to_be_bytes());
        f[54..56].copy_from_slice(&[1, 1]);
        f[56..58].copy_from_slice(&[8, 10]);
        f[58..62].copy_from_slice(&tsval.to_be_bytes());
        f.extend_from_slice(payload);
        let c = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let acc = sum(0, &f[26..34]) + 6 + (f.len() - 34) as u64;
        let c = !fold(sum(acc, &f[34..]));
        f[50..52].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn run(frames: &[Vec<u8>]) -> (usize, Option<(VirtioNetHdr, Vec<u8>)>) {
        let mut hdr = [0u8; LRO_HDR_MAX];
        let (k, v) = plan(
            frames.len(),
            |i| frames.get(i).map(|f| &f[..]),
            |_| false,
            &mut hdr,
        );
        (k, v.map(|(vnet, hl)| (vnet, hdr[..hl].to_vec())))
    }

    #[test]
    fn a_run_of_one_flow_merges_into_one_valid_gso_frame() {
        let p: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let frames = vec![
            seg(100, &p, ACK, 9),
            seg(1100, &p, ACK, 9),
            seg(2100, &p[..300], ACK | PSH, 9),
            seg(2400, &p, ACK, 9),
        ];
        let (k, m) = run(&frames);
        assert_eq!(k, 3, "the PSH segment ends the run");
        let (vnet, hdr) = m.unwrap();
        assert_eq!(
            (vnet.gso_type, vnet.gso_size, vnet.hdr_len),
            (gso::TCPV4, 1000, 66)
        );
        assert_eq!(vnet.flags, F_DATA_VALID);
        assert_eq!(u16::from_be_bytes([hdr[16], hdr[17]]) as usize, 52 + 2300);
        assert_eq!(checksum(&hdr[14..34]), 0);
        assert_eq!(hdr[47], ACK | PSH);
        // The merged frame is what a GSO sender would have cut: segmenting
        // it again gives the original segments back.
        let mut whole = hdr.clone();
        for f in &frames[..3] {
            whole.extend_from_slice(&f[66..]);
        }
        let (_, segs) = crate::offload::apply_tx(
            &VirtioNetHdr {
                csum_start: 34,
                csum_offset: 16,
                flags: F_NEEDS_CSUM,
                ..vnet
            },
            whole,
        )
        .unwrap();
        assert_eq!(segs.len(), 3);
        for (s, f) in segs.iter().zip(&frames) {
            assert_eq!(&s[38..42], &f[38..42], "sequence numbers");
            assert_eq!(&s[66..], &f[66..], "payloads");
        }
    }

    #[test]
    fn anything_else_is_lent_alone() {
        let p = vec![7u8; 500];
        // A gap in the sequence, another timestamp, a bad checksum, a SYN,
        // a lone segment.
        for frames in [
            vec![seg(0, &p, ACK, 1), seg(600, &p, ACK, 1)],
            vec![seg(0, &p, ACK, 1), seg(500, &p, ACK, 2)],
            vec![seg(0, &p, ACK, 1), {
                let mut f = seg(500, &p, ACK, 1);
                f[100] ^= 1;
                f
            }],
            vec![seg(0, &p, ACK | 0x02, 1), seg(500, &p, ACK, 1)],
            vec![seg(0, &p, ACK, 1)],
            vec![seg(0, &p, ACK | PSH, 1), seg(500, &p, ACK, 1)],
            vec![seg(0, &p[..100], ACK, 1), seg(100, &p, ACK, 1)],
        ] {
            assert_eq!(run(&frames).0, 1);
        }
        // Not TCP/IPv4 at all.
        assert_eq!(run(&[vec![0u8; 60], vec![0u8; 60]]).0, 1);
        assert_eq!(run(&[vec![0u8; 3]]).0, 1);
    }
}
