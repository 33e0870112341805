//! A SYN flood over the sim link: 2000 spoofed SYNs from random addresses
//! and ports (never ACKed) fill the listener's backlog (1024); with SYN
//! cookies a real client still connects and exchanges data at once, and
//! without them it does not (its SYNs are dropped until the embryonic
//! connections time out, about two minutes later).

use std::net::{Ipv4Addr, SocketAddrV4};

use hicamp::{Config, Memory};
use nicdma::sim::LinkConfig;
use nicdma::{Port, VirtioNetHdr};
use segstack::iface::{IfaceError, SocketHandle};
use segstack::sim::{SimPair, B_IP};
use segstack::wire::{
    ethernet, ipv4, tcp, EthernetAddress, EthernetRepr, Ipv4Repr, TcpFlags, TcpRepr,
};
use testkit::Rng;

/// B's MAC (`SimPair`'s side b).
const B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// An Ethernet frame holding a SYN from `src` to B:80, checksums filled.
fn syn_frame(src: SocketAddrV4, seq: u32) -> Vec<u8> {
    let t = TcpRepr {
        src_port: src.port(),
        dst_port: 80,
        seq,
        ack: 0,
        flags: TcpFlags::SYN,
        window: 64_240,
        urgent: 0,
        mss: Some(1460),
        wscale: Some(7),
        sack_permitted: true,
        timestamp: Some((seq, 0)),
    };
    let tl = t.header_len();
    let ip = Ipv4Repr {
        src: *src.ip(),
        dst: B_IP,
        protocol: ipv4::protocol::TCP,
        ttl: 64,
        tos: 0,
        ident: 1,
        dont_frag: true,
        payload_len: tl,
    };
    let mut f = vec![0u8; ethernet::HEADER_LEN + ipv4::HEADER_LEN + tl];
    EthernetRepr {
        dst: EthernetAddress(B_MAC),
        src: EthernetAddress([2, 0, 0, 0, 0x66, 0x66]),
        ethertype: ethernet::ethertype::IPV4,
    }
    .emit(&mut f);
    ip.emit(&mut f[ethernet::HEADER_LEN..]);
    let th = &mut f[ethernet::HEADER_LEN + ipv4::HEADER_LEN..];
    t.emit(th);
    tcp::fill_checksum(th, *src.ip(), B_IP, 0, tl as u32);
    f
}

/// Sends 2000 spoofed SYNs (10.0.0.3-254, random ports and sequence
/// numbers) from side a's wire in one burst, and lets b take them.
fn flood(pair: &mut SimPair, rng: &mut Rng) {
    for _ in 0..2000 {
        let ip = Ipv4Addr::new(10, 0, 0, 3 + rng.below(252) as u8);
        let src = SocketAddrV4::new(ip, 1024 + rng.below(60_000) as u16);
        let f = syn_frame(src, rng.next_u64() as u32);
        let port = pair.a.nic_mut().port_mut();
        port.transmit(&VirtioNetHdr::default(), &[&f]).unwrap();
    }
    // b takes the burst (the link delivers it within a millisecond).
    for _ in 0..200 {
        let now = pair.now();
        pair.b.poll(now).unwrap();
        pair.net.clock().advance(10_000);
    }
}

/// Connects from a to b:80 and exchanges "ping"/"pong"; the virtual time
/// it took (ns), or `None` if it did not within `limit` ns.
fn exchange(pair: &mut SimPair, l: SocketHandle, limit: u64) -> Option<u64> {
    let t0 = pair.now();
    let c = pair.a.tcp_connect(SocketAddrV4::new(B_IP, 80), t0).unwrap();
    let mut server = None;
    let mut sent = false;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while pair.now() - t0 < limit {
        let now = pair.now();
        pair.b.poll(now).unwrap();
        pair.a.poll(now).unwrap();
        if server.is_none() {
            server = pair.b.tcp_accept(l).unwrap();
        }
        if let Some(s) = server {
            let mut b = [0u8; 16];
            if let Ok(n) = pair.b.recv_slice(s, &mut b) {
                if &b[..n] == b"ping" {
                    pair.b.send_slice(s, b"pong").unwrap();
                }
            }
        }
        if !sent && pair.a.tcp(c).unwrap().can_send() {
            pair.a.send_slice(c, b"ping").unwrap();
            sent = true;
        }
        match pair.a.recv_slice(c, &mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(IfaceError::WouldBlock) => {}
            Err(e) => panic!("{e}"),
        }
        if got == b"pong" {
            return Some(pair.now() - t0);
        }
        pair.step().unwrap();
    }
    None
}

fn lab(cookies: bool) -> (SimPair, SocketHandle, Memory) {
    let m = Memory::new(Config {
        capacity_lines: 1 << 20,
        map_capacity: 1 << 14,
        ..Config::default()
    })
    .unwrap();
    let mut pair = SimPair::new(&m, LinkConfig::default(), 9, |c| c.syn_cookies = cookies).unwrap();
    let l = pair.b.tcp_listen(80).unwrap();
    (pair, l, m)
}

#[test]
fn a_client_connects_at_once_after_a_syn_flood_with_cookies() {
    let (mut pair, l, _m) = lab(true);
    let mut rng = Rng::new(11);
    flood(&mut pair, &mut rng);
    let st = *pair.b.stats();
    assert!(st.syn_cookies_sent >= 2000 - 1024, "{st:?}");
    assert_eq!(st.rx_backlog_full, 0, "{st:?}");
    // Within 2 s of virtual time (it takes a few round trips).
    let took = exchange(&mut pair, l, 2_000_000_000);
    assert!(
        took.is_some(),
        "no exchange within 2 s: {:?}",
        pair.b.stats()
    );
    let st = *pair.b.stats();
    assert_eq!(st.syn_cookies_accepted, 1, "{st:?}");
}

#[test]
fn without_cookies_the_flood_denies_the_client() {
    let (mut pair, l, _m) = lab(false);
    let mut rng = Rng::new(11);
    flood(&mut pair, &mut rng);
    assert!(pair.b.stats().rx_backlog_full >= 2000 - 1024);
    assert_eq!(exchange(&mut pair, l, 2_000_000_000), None);
}
