//! Fuzz target bodies: one per parser, and one for a whole frame.
//!
//! The cargo-fuzz targets in `segstack/fuzz/` call these, and so does
//! `tests/wire_fuzz.rs` on the stable toolchain, so CI exercises the same
//! code without libFuzzer.
//!
//! Each function parses untrusted `data` and, when that succeeds, emits the
//! parsed header, parses the emitted bytes again and checks that the result
//! is the same (and that checksums written by `emit` verify). It returns the
//! parse result; it **panics** only when one of these invariants breaks,
//! which is the bug the fuzzer reports.

use std::net::Ipv4Addr;

use super::checksum;
use super::ethernet::{self, ethertype, EthernetRepr};
use super::icmp::{self, IcmpRepr};
use super::ipv4::{self, protocol, Ipv4Repr};
use super::tcp::{self, TcpRepr};
use super::udp::{self, UdpRepr};
use super::{arp, ArpRepr, WireError};

/// Addresses for the pseudo header when a transport header is fuzzed alone.
const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// Ethernet header: parse, emit (byte-exact), re-parse.
pub fn ethernet(data: &[u8]) -> Result<(), WireError> {
    let r = EthernetRepr::parse(data)?;
    let mut out = [0; ethernet::HEADER_LEN];
    r.emit(&mut out);
    assert_eq!(out[..], data[..ethernet::HEADER_LEN], "{r:?}");
    assert_eq!(EthernetRepr::parse(&out), Ok(r));
    Ok(())
}

/// ARP packet: parse, emit (byte-exact), re-parse.
pub fn arp(data: &[u8]) -> Result<(), WireError> {
    let r = ArpRepr::parse(data)?;
    let mut out = [0; arp::LEN];
    r.emit(&mut out);
    assert_eq!(out[..], data[..arp::LEN], "{r:?}");
    assert_eq!(ArpRepr::parse(&out), Ok(r));
    Ok(())
}

/// IPv4 header: parse, check the payload bounds, emit (20 bytes, options
/// dropped), re-parse.
pub fn ipv4(data: &[u8]) -> Result<(), WireError> {
    let (r, hl) = Ipv4Repr::parse(data)?;
    assert!((ipv4::HEADER_LEN..=60).contains(&hl), "header length {hl}");
    assert!(
        hl + r.payload_len <= data.len(),
        "{r:?} past {}",
        data.len()
    );
    let mut out = vec![0; r.total_len()];
    r.emit(&mut out);
    assert_eq!(Ipv4Repr::parse(&out), Ok((r, ipv4::HEADER_LEN)));
    if hl == ipv4::HEADER_LEN && data[6] & 0x80 == 0 {
        // No options and no reserved flag: emit is byte-exact, but for the
        // checksum, where 0xffff verifies as well as 0x0000 (ones'
        // complement has two zeros) and emit writes 0x0000.
        let mask = |b: &[u8]| [&b[..10], &b[12..hl]].concat();
        assert_eq!(mask(&out), mask(data), "{r:?}");
        let (mine, theirs) = (&out[10..12], &data[10..12]);
        assert!(mine == theirs || (mine, theirs) == (&[0, 0][..], &[0xff, 0xff][..]));
    }
    Ok(())
}

/// ICMP header: parse, emit over the same payload, re-parse, verify the
/// emitted checksum (also verifies the input's, whose result is ignored).
pub fn icmp(data: &[u8]) -> Result<(), WireError> {
    let r = IcmpRepr::parse(data)?;
    let payload = &data[icmp::HEADER_LEN..];
    let _ = icmp::verify(&data[..icmp::HEADER_LEN], [payload]);
    let mut out = [0; icmp::HEADER_LEN];
    r.emit(&mut out, checksum::sum(0, payload));
    assert_eq!(IcmpRepr::parse(&out), Ok(r));
    let (a, b) = payload.split_at(payload.len() / 2);
    assert_eq!(icmp::verify(&out, [a, b]), Ok(()), "{r:?}");
    Ok(())
}

/// UDP header: parse, emit with a checksum over the same data, re-parse,
/// verify.
pub fn udp(data: &[u8]) -> Result<(), WireError> {
    udp_in(data, SRC, DST)
}

fn udp_in(data: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<(), WireError> {
    let r = UdpRepr::parse(data)?;
    let end = usize::from(r.len);
    assert!(end <= data.len() && end >= udp::HEADER_LEN);
    let payload = &data[udp::HEADER_LEN..end];
    let _ = udp::verify(src, dst, &data[..udp::HEADER_LEN], [payload]);
    let mut out = [0; udp::HEADER_LEN];
    r.emit(&mut out, src, dst, checksum::sum(0, payload));
    assert_eq!(UdpRepr::parse(&[&out[..], payload].concat()), Ok(r));
    let (a, b) = payload.split_at(payload.len() / 3);
    assert_eq!(udp::verify(src, dst, &out, [a, b]), Ok(()), "{r:?}");
    Ok(())
}

/// TCP header: parse, emit (options in the Linux layout), re-parse, fill
/// the checksum over the same payload and verify it; the offload form must
/// complete to the same checksum.
pub fn tcp(data: &[u8]) -> Result<(), WireError> {
    tcp_in(data, SRC, DST)
}

fn tcp_in(data: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<(), WireError> {
    let (r, hl) = TcpRepr::parse(data)?;
    assert!((tcp::HEADER_LEN..=60).contains(&hl) && hl <= data.len());
    assert!(r.wscale.unwrap_or(0) <= tcp::MAX_WSCALE);
    let payload = &data[hl..];
    let _ = tcp::verify(src, dst, &data[..hl], [payload]);
    let ohl = r.header_len();
    assert!(ohl % 4 == 0 && ohl <= tcp::MAX_EMITTED_HEADER_LEN);
    let mut out = vec![0; ohl];
    r.emit(&mut out);
    assert_eq!(TcpRepr::parse(&out), Ok((r, ohl)));
    let tcp_len = (ohl + payload.len()) as u32;
    let mut offload = out.clone();
    tcp::fill_checksum(&mut out, src, dst, checksum::sum(0, payload), tcp_len);
    let (a, b) = payload.split_at(payload.len() / 2);
    assert_eq!(tcp::verify(src, dst, &out, [a, b]), Ok(()), "{r:?}");
    tcp::fill_pseudo_checksum(&mut offload, src, dst, tcp_len);
    let mut nic = checksum::Accumulator::new();
    nic.add(&offload);
    nic.add(payload);
    let at = tcp::CHECKSUM_OFFSET;
    offload[at..at + 2].copy_from_slice(&nic.checksum().to_be_bytes());
    assert_eq!(offload, out);
    Ok(())
}

/// A whole Ethernet frame, down through ARP or IPv4 to ICMP, UDP or TCP:
/// every header is parsed (and checked as the per-parser functions do) and
/// every checksum verified, as the interface's receive path does. Returns
/// the first error met.
pub fn frame(data: &[u8]) -> Result<(), WireError> {
    ethernet(data)?;
    let eth = EthernetRepr::parse(data)?;
    let payload = &data[ethernet::HEADER_LEN..];
    match eth.ethertype {
        ethertype::ARP => arp(payload),
        ethertype::IPV4 => {
            ipv4(payload)?;
            let (ip, hl) = Ipv4Repr::parse(payload)?;
            let body = &payload[hl..hl + ip.payload_len];
            match ip.protocol {
                protocol::ICMP => {
                    icmp(body)?;
                    icmp::verify(&body[..icmp::HEADER_LEN], [&body[icmp::HEADER_LEN..]])
                }
                protocol::UDP => {
                    udp_in(body, ip.src, ip.dst)?;
                    let r = UdpRepr::parse(body)?;
                    let end = usize::from(r.len);
                    udp::verify(
                        ip.src,
                        ip.dst,
                        &body[..udp::HEADER_LEN],
                        [&body[udp::HEADER_LEN..end]],
                    )
                }
                protocol::TCP => {
                    tcp_in(body, ip.src, ip.dst)?;
                    let (_, thl) = TcpRepr::parse(body)?;
                    tcp::verify(ip.src, ip.dst, &body[..thl], [&body[thl..]])
                }
                _ => Err(WireError::Unsupported),
            }
        }
        _ => Err(WireError::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EthernetAddress;

    /// A valid Ethernet/IPv4/UDP frame with a correct checksum passes every
    /// layer.
    /// Found by the fuzzer: a header checksum of 0xffff verifies where
    /// 0x0000 is computed.
    #[test]
    fn ipv4_negative_zero_checksum() {
        let h = [
            0x45, 0x00, 0x00, 0x1c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0xff, 0xff, 0x0a, 0x89,
            0x0a, 0x00, 0x00, 0x01, 0x0a, 0x02, 0x00, 0x00, 0x00, 0x09, 0x00, 0x07, 0x00, 0x08,
            0xeb, 0xcb,
        ];
        assert_eq!(ipv4(&h), Ok(()));
    }

    #[test]
    fn a_valid_udp_frame_passes() {
        let payload = b"hello";
        let ip = Ipv4Repr {
            src: SRC,
            dst: DST,
            protocol: protocol::UDP,
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_frag: true,
            payload_len: udp::HEADER_LEN + payload.len(),
        };
        let u = UdpRepr {
            src_port: 9,
            dst_port: 7,
            len: ip.payload_len as u16,
        };
        let eth = EthernetRepr {
            dst: EthernetAddress([2, 0, 0, 0, 0, 1]),
            src: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: ethertype::IPV4,
        };
        let mut f = vec![0; 14 + 20 + 8];
        eth.emit(&mut f);
        ip.emit(&mut f[14..]);
        u.emit(&mut f[34..], SRC, DST, checksum::sum(0, payload));
        f.extend_from_slice(payload);
        f.resize(60, 0); // Ethernet padding
        assert_eq!(frame(&f), Ok(()));
        f[44] ^= 0x20;
        assert_eq!(frame(&f), Err(WireError::Checksum));
    }
}
