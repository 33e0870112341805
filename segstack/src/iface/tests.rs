//! Interface poll-loop tests on a scripted port.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};

use hicamp::Memory;
use nicdma::{Port, PortError, TxOutcome, VirtioNetHdr};

use super::{IfaceConfig, Interface};
use crate::wire::checksum;
use crate::wire::ethernet::{ethertype, EthernetRepr};
use crate::wire::ipv4::{protocol, Ipv4Repr};
use crate::wire::udp::{self, UdpRepr};
use crate::wire::{icmp, EthernetAddress, IcmpRepr};
use crate::Payload;

const US: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const US_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// A port whose peer answers while we transmit: each frame sent lets the next
/// scripted frame arrive (as a frame from the kernel lands in a TAP device
/// while the stack writes its ACKs).
#[derive(Default)]
struct LatePort {
    script: VecDeque<Vec<u8>>,
    arrived: VecDeque<Vec<u8>>,
    sent: usize,
}

impl Port for LatePort {
    fn transmit(&mut self, _: &VirtioNetHdr, _: &[&[u8]]) -> Result<TxOutcome, PortError> {
        self.sent += 1;
        if let Some(f) = self.script.pop_front() {
            self.arrived.push_back(f);
        }
        Ok(TxOutcome::Sent)
    }

    fn receive(
        &mut self,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[u8]),
    ) -> Result<bool, PortError> {
        match self.arrived.pop_front() {
            Some(f) => {
                deposit(&VirtioNetHdr::default(), &f);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn name(&self) -> &str {
        "late"
    }
}

/// A volatile memory of 64 Ki lines and 4 Ki map entries (what these tests need).
fn small_memory() -> Memory {
    Memory::new(hicamp::Config {
        capacity_lines: 1 << 16,
        map_capacity: 1 << 12,
        ..hicamp::Config::default()
    })
    .expect("memory")
}

/// The Ethernet and IPv4 headers of a frame from the peer to us.
fn headers(proto: u8, payload_len: usize) -> Vec<u8> {
    let ip = Ipv4Repr {
        src: PEER,
        dst: US,
        protocol: proto,
        ttl: 64,
        tos: 0,
        ident: 1,
        dont_frag: true,
        payload_len,
    };
    let eth = EthernetRepr {
        dst: EthernetAddress(US_MAC),
        src: EthernetAddress(PEER_MAC),
        ethertype: ethertype::IPV4,
    };
    let mut f = vec![0; 14 + 20];
    eth.emit(&mut f);
    ip.emit(&mut f[14..]);
    f
}

/// An ICMP echo request from the peer.
fn ping(seq_no: u16) -> Vec<u8> {
    let data = [0x5au8; 32];
    let mut f = headers(protocol::ICMP, icmp::HEADER_LEN + data.len());
    let mut h = [0u8; 8];
    IcmpRepr::EchoRequest { ident: 7, seq_no }.emit(&mut h, checksum::sum(0, &data));
    f.extend_from_slice(&h);
    f.extend_from_slice(&data);
    f
}

/// An Ethernet/IPv4/UDP frame from the peer's port 9 to our port 7.
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let ip = Ipv4Repr {
        src: PEER,
        dst: US,
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
        dst: EthernetAddress(US_MAC),
        src: EthernetAddress(PEER_MAC),
        ethertype: ethertype::IPV4,
    };
    let mut f = vec![0; 14 + 20 + 8];
    eth.emit(&mut f);
    ip.emit(&mut f[14..]);
    u.emit(&mut f[34..], PEER, US, checksum::sum(0, payload));
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// A frame that arrives during the poll's own transmission is deposited by
/// the flush's device pass into the RX ring, out of the port: a caller that
/// sleeps on the port's descriptor would never be woken for it. The poll
/// ingests it (and `poll_at` would say `Some(0)` if it could not). Without
/// this, the shim's stack mode stalled a download from the kernel over TAP
/// until the kernel's retransmission timer fired.
#[test]
fn a_frame_deposited_by_the_flush_is_ingested_by_the_same_poll() {
    let mem = small_memory();
    let port = LatePort {
        script: VecDeque::from([udp_frame(b"late news")]),
        ..LatePort::default()
    };
    let mut iface =
        Interface::new(&mem, port, IfaceConfig::new(US_MAC, US, 24)).expect("interface");
    iface.add_neighbour(PEER, PEER_MAC, 0);
    let h = iface.udp_bind(7).expect("bind");
    let hello = Payload::from_bytes(&mem, b"hello").expect("payload");
    iface
        .udp_send(h, SocketAddrV4::new(PEER, 9), &hello, 0)
        .expect("send");
    let events = iface.poll(1).expect("poll").to_vec();
    assert_eq!(iface.nic().port().sent, 1, "the datagram went out");
    assert!(
        iface.nic().port().arrived.is_empty(),
        "the answer left the port during the poll"
    );
    let got = iface.udp_recv(h);
    assert!(
        got.is_ok(),
        "the answer waits in the RX ring after the poll: {events:?}, poll_at {:?}",
        iface.poll_at()
    );
    let (from, p) = got.unwrap();
    assert_eq!(from, SocketAddrV4::new(PEER, 9));
    assert_eq!(p.to_vec(), b"late news");
    assert!(events.iter().any(|e| e.handle == h && e.readable));
    assert_eq!(iface.poll_at(), None, "nothing left to do");
}

/// A peer that answers every frame at once (each echo reply lets the next
/// echo request arrive) keeps the flush depositing: a poll stops after a few
/// rounds, and `poll_at` says `Some(0)` while frames wait in the RX ring, so
/// a caller sleeping until `poll_at` polls again instead of sleeping on a
/// descriptor that will not turn readable.
#[test]
fn poll_at_is_due_while_received_frames_wait_in_the_ring() {
    let mem = small_memory();
    let port = LatePort {
        script: (1..12).map(ping).collect(),
        arrived: VecDeque::from([ping(0)]),
        sent: 0,
    };
    let mut iface =
        Interface::new(&mem, port, IfaceConfig::new(US_MAC, US, 24)).expect("interface");
    iface.add_neighbour(PEER, PEER_MAC, 0);
    iface.poll(1).expect("poll");
    let first = iface.stats().echo_replies;
    assert!(
        (1..12).contains(&first),
        "one poll answers some of the chain: {first}"
    );
    assert_eq!(iface.poll_at(), Some(0), "frames wait in the RX ring");
    let mut polls = 1;
    while iface.poll_at() == Some(0) && polls < 100 {
        iface.poll(1).expect("poll");
        polls += 1;
    }
    assert_eq!(iface.stats().echo_replies, 12, "every request answered");
    assert_eq!(iface.nic().port().sent, 12);
    assert_eq!(iface.poll_at(), None, "nothing left after {polls} polls");
}

/// A received frame is released by the next poll once the application has
/// dropped what it took (the interface keeps each frame of a poll until
/// then, to release them together): the frame's own lines (metadata,
/// headers, interior) die, and a frame still held by the application
/// lives on.
#[test]
fn received_frames_are_released_by_the_next_poll() {
    let mem = small_memory();
    let port = LatePort::default();
    let mut iface =
        Interface::new(&mem, port, IfaceConfig::new(US_MAC, US, 24)).expect("interface");
    iface.add_neighbour(PEER, PEER_MAC, 0);
    let h = iface.udp_bind(7).expect("bind");
    iface.poll(1).expect("poll");
    let idle = mem.live_lines();
    for round in 0..3u8 {
        // A datagram of 200 distinct bytes: lines no other frame has.
        let body: Vec<u8> = (0..200u32)
            .map(|i| (i as u8).wrapping_mul(31) ^ round.wrapping_mul(97))
            .collect();
        iface
            .nic_mut()
            .port_mut()
            .arrived
            .push_back(udp_frame(&body));
        iface.poll(2).expect("poll");
        let (_, p) = iface.udp_recv(h).expect("datagram");
        assert_eq!(p.to_vec(), body);
        let held = mem.live_lines();
        assert!(held > idle, "the frame is in memory");
        // Still held by the application: the next poll lets go of the
        // interface's reference only.
        iface.poll(3).expect("poll");
        assert_eq!(p.to_vec(), body, "the payload outlives the poll");
        drop(p);
        iface.poll(4).expect("poll");
        assert_eq!(
            mem.live_lines(),
            idle,
            "round {round}: the frame's lines died"
        );
    }
    // Taken and dropped before the next poll: that poll releases them (one
    // frame, and a batch of three).
    for n in [1u8, 3] {
        for k in 0..n {
            let body = [0xc3 ^ k ^ (n << 4); 300];
            iface
                .nic_mut()
                .port_mut()
                .arrived
                .push_back(udp_frame(&body));
        }
        iface.poll(5).expect("poll");
        for _ in 0..n {
            drop(iface.udp_recv(h).expect("datagram"));
        }
        assert!(
            mem.live_lines() > idle,
            "the interface still holds the frames"
        );
        iface.poll(6).expect("poll");
        assert_eq!(mem.live_lines(), idle, "{n} frames");
    }
}

/// Owned TX frames (the default on a volatile memory) die when their TX
/// slots are reaped: an interface that sends more distinct datagrams than
/// its ring has slots keeps none of them alive once they are out. (Each
/// slot used to keep its frame until its next prepare: a lap of the ring,
/// free with interned frames, whose lines repeat, but ~24k live lines for
/// phttpd answering 20k POSTs with owned ones.)
#[test]
fn owned_tx_frames_die_once_transmitted() {
    let mem = small_memory();
    let mut cfg = IfaceConfig::new(US_MAC, US, 24);
    cfg.tx_dedup = false;
    // Frame segments.
    cfg.tx_inline = false;
    cfg.nic.tx_slots = 16;
    let mut iface = Interface::new(&mem, LatePort::default(), cfg).expect("interface");
    iface.add_neighbour(PEER, PEER_MAC, 0);
    let h = iface.udp_bind(7).expect("bind");
    iface.poll(1).expect("poll");
    let idle = mem.live_lines();
    for k in 0..64u32 {
        // 100 bytes no other datagram has.
        let body: Vec<u8> = (0..100u32)
            .map(|i| ((k << 8 | i).wrapping_mul(0x9e37_79b9) >> 24) as u8)
            .collect();
        let p = crate::Payload::from_bytes(&mem, &body).expect("payload");
        iface
            .udp_send(h, SocketAddrV4::new(PEER, 9), &p, 2)
            .expect("send");
        drop(p);
        iface.poll(2).expect("poll");
        assert!(mem.stats().owned_lines_created > 0, "owned frame lines");
        assert_eq!(mem.live_lines(), idle, "datagram {k}: its frame died");
    }
    assert_eq!(iface.nic().port().sent, 64);
}

/// A datagram sent as an inline TX descriptor (`IfaceConfig::tx_inline`)
/// makes no frame line at all, and its payload, which the application let
/// go of, lives until its slot is reaped and no longer: the descriptor's
/// payload references die once it is transmitted (fails with a ring that
/// keeps descriptors for a lap: 64 datagrams through 16 slots).
#[test]
fn inline_tx_descriptors_die_once_transmitted() {
    let mem = small_memory();
    let mut cfg = IfaceConfig::new(US_MAC, US, 24);
    cfg.tx_inline = true;
    cfg.nic.tx_slots = 16;
    let mut iface = Interface::new(&mem, LatePort::default(), cfg).expect("interface");
    assert!(
        iface.config().tx_inline,
        "a volatile memory keeps descriptors"
    );
    iface.add_neighbour(PEER, PEER_MAC, 0);
    let h = iface.udp_bind(7).expect("bind");
    iface.poll(1).expect("poll");
    let idle = mem.live_lines();
    let made = mem.stats().owned_lines_created;
    for k in 0..64u32 {
        // 300 bytes no other datagram has.
        let body: Vec<u8> = (0..300u32)
            .map(|i| ((k << 9 | i).wrapping_mul(0x9e37_79b9) >> 24) as u8)
            .collect();
        let p = crate::Payload::from_bytes(&mem, &body).expect("payload");
        iface
            .udp_send(h, SocketAddrV4::new(PEER, 9), &p, 2)
            .expect("send");
        drop(p);
        assert!(mem.live_lines() > idle, "datagram {k}: queued, alive");
        iface.poll(2).expect("poll");
        assert_eq!(mem.live_lines(), idle, "datagram {k}: its payload died");
    }
    assert_eq!(iface.nic().port().sent, 64);
    assert_eq!(iface.nic().counters().tx_inline, 64);
    assert_eq!(mem.stats().owned_lines_created, made, "no frame lines");
    assert_eq!(iface.stats().tx_payload_copied, 0);
}
