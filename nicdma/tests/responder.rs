//! The ARP/ICMP responder on the NIC, over the sim backend: a client NIC sends
//! ARP requests and pings and checks the replies byte by byte.

use hicamp::{Config, Memory, Segment};
use nicdma::checksum::checksum;
use nicdma::responder::Responder;
use nicdma::sim::{LinkConfig, SimNet, SimPort};
use nicdma::{frame_bytes, tx_segment, Nic, NicConfig, VirtioNetHdr};

const R_MAC: [u8; 6] = [2, 0, 0, 0x77, 0, 2];
const R_IP: [u8; 4] = [10, 77, 0, 2];
const C_MAC: [u8; 6] = [2, 0, 0, 0x77, 0, 1];
const C_IP: [u8; 4] = [10, 77, 0, 1];

fn setup() -> (Memory, Nic<SimPort>, Nic<SimPort>) {
    let (_net, pr, pc) = SimNet::pair(1, LinkConfig::default()).unwrap();
    let mem = Memory::new(Config {
        capacity_lines: 1 << 16,
        map_capacity: 2048,
        ..Config::default()
    })
    .unwrap();
    let r = Nic::new(&mem, pr, NicConfig::default()).unwrap();
    let c = Nic::new(&mem, pc, NicConfig::default()).unwrap();
    (mem, r, c)
}

fn send(mem: &Memory, nic: &mut Nic<SimPort>, frame: &[u8]) {
    let s = tx_segment(mem, VirtioNetHdr::default(), 64, frame).unwrap();
    assert!(nic.tx_prepare(&s).unwrap());
    nic.tx_doorbell().unwrap();
    nic.dma().unwrap();
    nic.tx_reap().unwrap();
}

fn recv(nic: &mut Nic<SimPort>) -> Vec<Vec<u8>> {
    nic.rx_refill().unwrap();
    nic.dma().unwrap();
    let mut out: Vec<Segment> = Vec::new();
    nic.rx_harvest(&mut out, 100).unwrap();
    out.iter().map(|s| frame_bytes(s).unwrap().1).collect()
}

fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&C_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&C_MAC);
    f.extend_from_slice(&C_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    f
}

fn echo_request(payload: &[u8], id: u16, seq: u16) -> Vec<u8> {
    let mut f = R_MAC.to_vec();
    f.extend_from_slice(&C_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 9, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&C_IP);
    ip.extend_from_slice(&R_IP);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&icmp);
    f
}

#[test]
fn answers_arp_for_its_address_only() {
    let (mem, mut r, mut c) = setup();
    let mut resp = Responder::new(R_MAC, R_IP);
    send(&mem, &mut c, &arp_request(R_IP));
    send(&mem, &mut c, &arp_request([10, 77, 0, 99]));
    assert_eq!(resp.poll(&mut r).unwrap(), 1);
    let got = recv(&mut c);
    assert_eq!(got.len(), 1);
    let a = &got[0];
    assert_eq!(&a[0..6], &C_MAC);
    assert_eq!(&a[6..12], &R_MAC);
    assert_eq!(&a[20..22], &[0, 2], "a reply");
    assert_eq!(&a[22..28], &R_MAC);
    assert_eq!(&a[28..32], &R_IP);
    assert_eq!(&a[32..38], &C_MAC);
    assert_eq!(&a[38..42], &C_IP);
    assert_eq!(resp.counters().arp_replies, 1);
    assert_eq!(resp.counters().ignored, 1);
}

#[test]
fn answers_pings_without_copying_the_payload() {
    let (mem, mut r, mut c) = setup();
    let mut resp = Responder::new(R_MAC, R_IP);
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
    for seq in 0..5u16 {
        send(&mem, &mut c, &echo_request(&payload, 0x4242, seq));
    }
    // The requests now sit in R's RX ring: count the lines the replies add.
    r.rx_refill().unwrap();
    r.dma().unwrap();
    // (Lines created, not lines live: the poll releases the requests,
    // whose owned lines then leave.)
    let created = |s: hicamp::Stats| s.leaf_lines_created;
    let before = created(mem.stats());
    assert_eq!(resp.poll(&mut r).unwrap(), 5);
    let added = created(mem.stats()) - before;
    // Per reply: the metadata line and the header lines it rewrites (at most
    // the first two lines of the frame), never the 1000-byte payload.
    assert!(added <= 5 * 3, "{added} new leaf lines for 5 replies");
    let got = recv(&mut c);
    assert_eq!(got.len(), 5);
    for (seq, g) in got.iter().enumerate() {
        assert_eq!(&g[0..6], &C_MAC);
        assert_eq!(&g[6..12], &R_MAC);
        assert_eq!(checksum(&g[14..34]), 0, "IPv4 checksum");
        assert_eq!(&g[26..30], &R_IP);
        assert_eq!(&g[30..34], &C_IP);
        assert_eq!(g[34], 0, "echo reply");
        assert_eq!(checksum(&g[34..]), 0, "ICMP checksum");
        assert_eq!(u16::from_be_bytes([g[40], g[41]]), seq as u16);
        assert_eq!(&g[42..], &payload[..]);
    }
    assert_eq!(resp.counters().echo_replies, 5);
    assert_eq!(r.counters().payload_bytes_copied, 0);
}

#[test]
fn garbage_is_counted_not_answered() {
    let (mem, mut r, mut c) = setup();
    let mut resp = Responder::new(R_MAC, R_IP);
    let mut bad_ip = echo_request(b"xyz", 1, 1);
    bad_ip[24] ^= 0xff; // IPv4 checksum broken
    let mut bad_icmp = echo_request(b"xyz", 1, 2);
    let n = bad_icmp.len();
    bad_icmp[n - 1] ^= 1; // ICMP checksum broken
    let mut short = echo_request(b"", 1, 3);
    short.truncate(30);
    let mut lying = echo_request(b"abc", 1, 4);
    lying[16..18].copy_from_slice(&9000u16.to_be_bytes()); // total length past the frame
    for f in [
        bad_ip,
        bad_icmp,
        short,
        lying,
        vec![0xff; 14],
        arp_request(R_IP)[..30].to_vec(),
    ] {
        send(&mem, &mut c, &f);
    }
    assert_eq!(resp.poll(&mut r).unwrap(), 0);
    // The all-0xff frame is a well-formed broadcast of an unknown type: ignored.
    assert_eq!(resp.counters().malformed, 5);
    assert_eq!(resp.counters().ignored, 1);
    assert!(recv(&mut c).is_empty());
}
