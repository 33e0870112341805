//! The cargo-fuzz targets' bodies (`segstack::wire::fuzz`) on the stable
//! toolchain: a few hundred thousand inputs, random and mutated valid
//! packets (some with their checksums fixed up after mutation so that the
//! deeper layers are reached), from a fixed seed.
//!
//! `WIRE_FUZZ_ITERS` (default 100000 per generator and target) scales it;
//! `WIRE_FUZZ_SEED` changes the seed.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use segstack::wire::{self, checksum, ethernet, fuzz, icmp, ipv4, tcp, udp, WireError};
use segstack::wire::{
    ArpOp, ArpRepr, EthernetAddress, EthernetRepr, IcmpRepr, Ipv4Repr, TcpFlags, TcpRepr, UdpRepr,
};

use testkit::Rng;

fn iters() -> usize {
    std::env::var("WIRE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn rng() -> Rng {
    let seed = std::env::var("WIRE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5e65_7ac4_u64);
    Rng::new(seed)
}

fn maybe<T>(r: &mut Rng, f: impl FnOnce(&mut Rng) -> T) -> Option<T> {
    if r.one_in(2) {
        Some(f(r))
    } else {
        None
    }
}

fn ip(r: &mut Rng) -> Ipv4Addr {
    Ipv4Addr::from(r.next_u64() as u32)
}

fn mac(r: &mut Rng) -> EthernetAddress {
    let mut a = [0; 6];
    a.iter_mut().for_each(|b| *b = r.byte());
    EthernetAddress(a)
}

fn tcp_repr(r: &mut Rng) -> TcpRepr {
    TcpRepr {
        src_port: r.next_u64() as u16,
        dst_port: r.next_u64() as u16,
        seq: r.next_u64() as u32,
        ack: r.next_u64() as u32,
        flags: TcpFlags(r.byte()),
        window: r.next_u64() as u16,
        urgent: if r.one_in(4) { r.next_u64() as u16 } else { 0 },
        mss: maybe(r, |r| r.next_u64() as u16),
        wscale: maybe(r, |r| r.byte() % 16),
        sack_permitted: r.one_in(2),
        timestamp: maybe(r, |r| (r.next_u64() as u32, r.next_u64() as u32)),
    }
}

/// A valid Ethernet frame: ARP, or IPv4 carrying ICMP, UDP or TCP, with
/// correct checksums, sometimes IPv4 options and Ethernet padding.
fn valid_frame(r: &mut Rng) -> Vec<u8> {
    let eth = |ethertype, r: &mut Rng| EthernetRepr {
        dst: if r.one_in(4) {
            EthernetAddress::BROADCAST
        } else {
            mac(r)
        },
        src: mac(r),
        ethertype,
    };
    let mut f = vec![0; ethernet::HEADER_LEN];
    if r.one_in(5) {
        eth(ethernet::ethertype::ARP, r).emit(&mut f);
        let a = ArpRepr {
            op: ArpOp::from(1 + r.index(3) as u16),
            sender_hw: mac(r),
            sender_ip: ip(r),
            target_hw: mac(r),
            target_ip: ip(r),
        };
        let mut p = [0; wire::arp::LEN];
        a.emit(&mut p);
        f.extend_from_slice(&p);
    } else {
        eth(ethernet::ethertype::IPV4, r).emit(&mut f);
        let (src, dst) = (ip(r), ip(r));
        let n = if r.one_in(3) { 0 } else { r.index(200) };
        let payload = r.bytes(n);
        let mut l4 = Vec::new();
        let proto = match r.index(3) {
            0 => {
                let m = match r.index(4) {
                    0 => IcmpRepr::EchoRequest {
                        ident: r.next_u64() as u16,
                        seq_no: r.next_u64() as u16,
                    },
                    1 => IcmpRepr::EchoReply {
                        ident: r.next_u64() as u16,
                        seq_no: r.next_u64() as u16,
                    },
                    2 => IcmpRepr::DestUnreachable {
                        code: r.byte() % 16,
                    },
                    _ => IcmpRepr::Other {
                        kind: 11,
                        code: r.byte() % 2,
                    },
                };
                l4.resize(icmp::HEADER_LEN, 0);
                m.emit(&mut l4, checksum::sum(0, &payload));
                ipv4::protocol::ICMP
            }
            1 => {
                let u = UdpRepr {
                    src_port: r.next_u64() as u16,
                    dst_port: r.next_u64() as u16,
                    len: (udp::HEADER_LEN + payload.len()) as u16,
                };
                l4.resize(udp::HEADER_LEN, 0);
                u.emit(&mut l4, src, dst, checksum::sum(0, &payload));
                ipv4::protocol::UDP
            }
            _ => {
                let t = tcp_repr(r);
                l4.resize(t.header_len(), 0);
                t.emit(&mut l4);
                let len = (l4.len() + payload.len()) as u32;
                tcp::fill_checksum(&mut l4, src, dst, checksum::sum(0, &payload), len);
                ipv4::protocol::TCP
            }
        };
        l4.extend_from_slice(&payload);
        let h = Ipv4Repr {
            src,
            dst,
            protocol: proto,
            ttl: r.byte(),
            tos: r.byte(),
            ident: r.next_u64() as u16,
            dont_frag: r.one_in(2),
            payload_len: l4.len(),
        };
        let mut iph = vec![0; ipv4::HEADER_LEN];
        h.emit(&mut iph);
        if r.one_in(5) {
            // Options: IHL 5 + n words of NOPs ending in EOL.
            let n = 1 + r.index(10);
            iph[0] = 0x45 + n as u8;
            let total = (ipv4::HEADER_LEN + 4 * n + l4.len()) as u16;
            iph[2..4].copy_from_slice(&total.to_be_bytes());
            iph.resize(iph.len() + 4 * n - 1, 1);
            iph.push(0);
            fix_ipv4(&mut iph);
        }
        f.extend_from_slice(&iph);
        f.extend_from_slice(&l4);
    }
    if f.len() < 60 && r.one_in(2) {
        f.resize(60, 0); // Ethernet padding
    }
    f
}

/// Recomputes the IPv4 header checksum of `p` (an IPv4 packet) if its
/// header lies inside it.
fn fix_ipv4(p: &mut [u8]) {
    if p.len() < 20 {
        return;
    }
    let hl = usize::from(p[0] & 0xf) * 4;
    if hl < 20 || hl > p.len() {
        return;
    }
    p[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&p[..hl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Recomputes the transport checksum of the IPv4 packet `p`, if it parses.
fn fix_l4(p: &mut [u8]) {
    let Ok((h, hl)) = Ipv4Repr::parse(p) else {
        return;
    };
    let body = &mut p[hl..hl + h.payload_len];
    match h.protocol {
        ipv4::protocol::ICMP if body.len() >= icmp::HEADER_LEN => {
            body[2..4].copy_from_slice(&[0, 0]);
            let c = checksum::checksum(body);
            body[2..4].copy_from_slice(&c.to_be_bytes());
        }
        ipv4::protocol::UDP => {
            if let Ok(u) = UdpRepr::parse(body) {
                let end = usize::from(u.len);
                let s = checksum::sum(0, &body[udp::HEADER_LEN..end]);
                udp::fill_checksum(&mut body[..udp::HEADER_LEN], h.src, h.dst, s);
            }
        }
        ipv4::protocol::TCP => {
            if let Ok((_, thl)) = TcpRepr::parse(body) {
                let s = checksum::sum(0, &body[thl..]);
                let len = body.len() as u32;
                tcp::fill_checksum(&mut body[..thl], h.src, h.dst, s, len);
            }
        }
        _ => {}
    }
}

/// A few random mutations, as libFuzzer makes them.
fn mutate(r: &mut Rng, p: &mut Vec<u8>, from: usize) {
    for _ in 0..1 + r.index(4) {
        let n = p.len();
        match r.index(9) {
            0 | 1 if n > from => {
                let i = from + r.index(n - from);
                p[i] ^= 1 << r.index(8);
            }
            2 | 3 if n > from => {
                let i = from + r.index(n - from);
                p[i] = [0, 1, 2, 3, 4, 5, 8, 10, 0x0f, 0x40, 0x45, 0x7f, 0x80, 0xff][r.index(14)];
            }
            4 if n > from => {
                let i = from + r.index(n - from);
                p[i] = r.byte();
            }
            5 => p.truncate(from + r.index(n - from + 1)),
            6 => {
                let n = r.index(40);
                let extra = r.bytes(n);
                p.extend_from_slice(&extra);
            }
            7 if n > from => {
                let i = from + r.index(n - from);
                p.remove(i);
            }
            _ => {
                let i = from + r.index(n - from + 1);
                p.insert(i, r.byte());
            }
        }
    }
}

/// A mutated valid frame, its checksums fixed up half of the time.
fn mutated_frame(r: &mut Rng) -> Vec<u8> {
    let mut f = valid_frame(r);
    let from = if r.one_in(3) { 0 } else { ethernet::HEADER_LEN };
    mutate(r, &mut f, from);
    if f.len() > ethernet::HEADER_LEN && r.one_in(2) {
        fix_ipv4(&mut f[ethernet::HEADER_LEN..]);
        if r.one_in(2) {
            fix_l4(&mut f[ethernet::HEADER_LEN..]);
        }
    }
    f
}

/// The layer-`depth` bytes of a valid frame (1: past Ethernet, 2: past IP).
fn layer(f: &[u8], depth: usize) -> &[u8] {
    let p = &f[ethernet::HEADER_LEN..];
    if depth == 1 {
        return p;
    }
    match Ipv4Repr::parse(p) {
        Ok((h, hl)) => &p[hl..hl + h.payload_len],
        Err(_) => p,
    }
}

type Target = fn(&[u8]) -> Result<(), WireError>;

/// Runs `target` over `inputs`, returning the distinct results seen.
fn run(target: Target, inputs: impl Iterator<Item = Vec<u8>>) -> Vec<Result<(), WireError>> {
    let mut seen = Vec::new();
    for i in inputs {
        let res = target(&i);
        if !seen.contains(&res) {
            seen.push(res);
        }
    }
    seen
}

#[test]
fn random_bytes_never_panic() {
    let mut r = rng();
    let targets: [Target; 7] = [
        fuzz::ethernet,
        fuzz::arp,
        fuzz::ipv4,
        fuzz::icmp,
        fuzz::udp,
        fuzz::tcp,
        fuzz::frame,
    ];
    for t in targets {
        for _ in 0..iters() {
            let n = r.index(100);
            let d = r.bytes(n);
            let _ = t(&d);
        }
    }
}

#[test]
fn mutated_frames_reach_every_outcome() {
    let mut r = rng();
    let seen = run(fuzz::frame, (0..iters() * 2).map(|_| mutated_frame(&mut r)));
    for want in [
        Ok(()),
        Err(WireError::Truncated),
        Err(WireError::Malformed),
        Err(WireError::Checksum),
        Err(WireError::Unsupported),
    ] {
        assert!(seen.contains(&want), "never saw {want:?}: {seen:?}");
    }
    // Unmutated valid frames always pass.
    for _ in 0..iters() / 4 {
        let f = valid_frame(&mut r);
        assert_eq!(fuzz::frame(&f), Ok(()), "{f:02x?}");
    }
}

#[test]
fn mutated_headers_per_parser() {
    let mut r = rng();
    let frames: Vec<Vec<u8>> = (0..2000).map(|_| valid_frame(&mut r)).collect();
    let pick = |r: &mut Rng, ethertype: u16, proto: Option<u8>| loop {
        let f = &frames[r.index(frames.len())];
        if u16::from_be_bytes([f[12], f[13]]) != ethertype {
            continue;
        }
        if proto.is_some_and(|p| f[ethernet::HEADER_LEN + 9] != p) {
            continue;
        }
        return f.clone();
    };
    let cases: [(Target, u16, Option<u8>, usize); 6] = [
        (fuzz::ethernet, ethernet::ethertype::IPV4, None, 0),
        (fuzz::arp, ethernet::ethertype::ARP, None, 1),
        (fuzz::ipv4, ethernet::ethertype::IPV4, None, 1),
        (
            fuzz::icmp,
            ethernet::ethertype::IPV4,
            Some(ipv4::protocol::ICMP),
            2,
        ),
        (
            fuzz::udp,
            ethernet::ethertype::IPV4,
            Some(ipv4::protocol::UDP),
            2,
        ),
        (
            fuzz::tcp,
            ethernet::ethertype::IPV4,
            Some(ipv4::protocol::TCP),
            2,
        ),
    ];
    for (target, ethertype, proto, depth) in cases {
        let inputs = (0..iters()).map(|_| {
            let f = pick(&mut r, ethertype, proto);
            let mut p = if depth == 0 {
                f
            } else {
                layer(&f, depth).to_vec()
            };
            if depth == 1 && r.one_in(2) {
                mutate(&mut r, &mut p, 0);
                if r.one_in(2) {
                    fix_ipv4(&mut p);
                }
            } else {
                mutate(&mut r, &mut p, 0);
            }
            p
        });
        let seen = run(target, inputs);
        assert!(seen.contains(&Ok(())), "no input parsed: {seen:?}");
        assert!(seen.len() >= 2, "only {seen:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn frame_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = fuzz::frame(&data);
    }

    #[test]
    fn tcp_never_panics_on_option_soup(
        head in proptest::collection::vec(any::<u8>(), 20),
        opts in proptest::collection::vec(prop_oneof![0u8..12, any::<u8>()], 0..40),
        doff in 0u8..16,
    ) {
        let mut d = head;
        d[12] = doff << 4;
        d.extend_from_slice(&opts);
        let _ = fuzz::tcp(&d);
    }
}

/// The committed seed corpus (`fuzz/seeds/<target>/`, written by
/// `fuzz/seeds/gen.py`) holds valid packets only: each parses, checksums
/// included.
#[test]
fn seed_corpus_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let targets: [(&str, Target); 7] = [
        ("ethernet", fuzz::ethernet),
        ("arp", fuzz::arp),
        ("ipv4", fuzz::ipv4),
        ("icmp", fuzz::icmp),
        ("udp", fuzz::udp),
        ("tcp", fuzz::tcp),
        ("frame", fuzz::frame),
    ];
    for (name, target) in targets {
        let mut n = 0;
        for e in std::fs::read_dir(dir.join(name)).expect("seed directory") {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            assert_eq!(target(&data), Ok(()), "{}", path.display());
            n += 1;
        }
        assert!(n > 0, "no seed for {name}");
    }
    // The frames' checksums are right too (frame verifies every layer).
    let f = std::fs::read(dir.join("frame/seed-07")).unwrap();
    let (ip, hl) = Ipv4Repr::parse(&f[ethernet::HEADER_LEN..]).unwrap();
    let seg = &f[ethernet::HEADER_LEN + hl..ethernet::HEADER_LEN + hl + ip.payload_len];
    let (t, thl) = TcpRepr::parse(seg).unwrap();
    assert_eq!(t.timestamp, Some((5, 6)));
    assert_eq!(
        tcp::verify(ip.src, ip.dst, &seg[..thl], [&seg[thl..]]),
        Ok(())
    );
}

/// The whole interface's ingress (`segstack::iface::IngressFuzzer`, the body
/// of the `ingress` fuzz target): mutated valid frames, readdressed to the
/// interface most of the time so they reach ARP, ICMP, UDP and TCP (the
/// listener, the open connection and the RST path), never panic, and every
/// frame is counted.
#[test]
fn interface_ingress_never_panics() {
    let mut r = rng();
    let mut fz = segstack::iface::IngressFuzzer::new();
    let n = iters() / 8;
    for _ in 0..n {
        let mut f = if r.one_in(8) {
            let k = r.index(120);
            r.bytes(k)
        } else {
            mutated_frame(&mut r)
        };
        if f.len() >= ethernet::HEADER_LEN + 20 && !r.one_in(5) {
            // Our MAC, and (for IPv4) our address, with checksums fixed.
            f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
            if f[12..14] == [0x08, 0x00] {
                f[ethernet::HEADER_LEN + 16..ethernet::HEADER_LEN + 20]
                    .copy_from_slice(&[10, 0, 0, 2]);
                if r.one_in(4) {
                    // A port with a socket behind it.
                    let hl = usize::from(f[ethernet::HEADER_LEN] & 0xf) * 4;
                    let at = ethernet::HEADER_LEN + hl + 2;
                    if f.len() >= at + 2 {
                        let port: u16 = if r.one_in(2) { 80 } else { 53 };
                        f[at..at + 2].copy_from_slice(&port.to_be_bytes());
                    }
                }
                fix_ipv4(&mut f[ethernet::HEADER_LEN..]);
                fix_l4(&mut f[ethernet::HEADER_LEN..]);
            }
        }
        let flags = r.byte();
        let mut input = vec![flags];
        input.extend_from_slice(&f);
        fz.run(&input);
    }
    let s = *fz.stats();
    eprintln!("{s:?}");
    assert!(s.rx_frames > 0 && s.rx_frames <= n as u64, "{s:?}");
    assert!(
        s.rx_malformed > 0 && s.rx_bad_csum > 0 && s.rx_ignored > 0,
        "{s:?}"
    );
    assert!(s.rx_no_socket > 0 && s.echo_replies > 0, "{s:?}");
}

/// A flood of echo requests from ever new addresses keeps the ARP table
/// bounded.
#[test]
fn neighbour_table_stays_bounded() {
    let mut fz = segstack::iface::IngressFuzzer::new();
    let mut r = rng();
    for i in 0..20_000u32 {
        let src = Ipv4Addr::from(0x0a00_0000 | (i + 10));
        let mut f = vec![0u8; ethernet::HEADER_LEN + 20 + 8 + 8];
        EthernetRepr {
            dst: EthernetAddress([2, 0, 0, 0, 0, 2]),
            src: mac(&mut r),
            ethertype: ethernet::ethertype::IPV4,
        }
        .emit(&mut f);
        Ipv4Repr {
            src,
            dst: Ipv4Addr::new(10, 0, 0, 2),
            protocol: ipv4::protocol::ICMP,
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_frag: false,
            payload_len: 16,
        }
        .emit(&mut f[ethernet::HEADER_LEN..]);
        let p = ethernet::HEADER_LEN + 20;
        IcmpRepr::EchoRequest {
            ident: 1,
            seq_no: i as u16,
        }
        .emit(&mut f[p..p + 8], checksum::sum(0, &[0; 8]));
        let mut input = vec![0u8];
        input.extend_from_slice(&f);
        fz.run(&input);
    }
    let s = fz.stats();
    assert_eq!(s.echo_replies, 20_000, "{s:?}");
    assert!(s.tx_dropped > 0, "{s:?}");
    assert!(fz.neighbours() <= 4096);
}
