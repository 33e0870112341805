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
use crate::wire::EthernetAddress;
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
    let mem = Memory::new(hicamp::Config {
        capacity_lines: 1 << 16,
        map_capacity: 1 << 12,
        ..hicamp::Config::default()
    })
    .expect("memory");
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
