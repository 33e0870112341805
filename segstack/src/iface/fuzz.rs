//! The ingress fuzz harness (test support: built for tests and with the
//! `test-support` feature).

use std::net::{Ipv4Addr, SocketAddrV4};

use hicamp::Memory;
use nicdma::meta::F_DATA_VALID;
use nicdma::VirtioNetHdr;

use super::{IfaceConfig, IfaceStats, Interface};

/// The body of the `ingress` fuzz target: arbitrary bytes become a received
/// frame (with and without checksum-valid metadata) on an interface that has a
/// listener, a UDP socket and an open connection, so the bytes reach every
/// protocol path.
#[derive(Debug)]
pub struct IngressFuzzer {
    iface: Interface<nicdma::sim::SimPort>,
    now: u64,
}

impl IngressFuzzer {
    /// An interface at 10.0.0.2 with sockets on TCP port 80 and UDP port 53,
    /// and a connection to 10.0.0.1:80.
    pub fn new() -> IngressFuzzer {
        let mem = Memory::new(hicamp::Config {
            capacity_lines: 1 << 18,
            map_capacity: 1 << 12,
            ..hicamp::Config::default()
        })
        .expect("memory");
        let (_net, port, _peer) =
            nicdma::sim::SimNet::pair(1, nicdma::sim::LinkConfig::default()).expect("sim");
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let mut iface = Interface::new(&mem, port, IfaceConfig::new([2, 0, 0, 0, 0, 2], ip, 24))
            .expect("iface");
        iface.tcp_listen(80).expect("listen");
        iface.udp_bind(53).expect("bind");
        iface.add_neighbour(Ipv4Addr::new(10, 0, 0, 1), [2, 0, 0, 0, 0, 1], 0);
        iface
            .tcp_connect(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80), 0)
            .expect("connect");
        IngressFuzzer { iface, now: 0 }
    }

    /// The interface's counters.
    pub fn stats(&self) -> &IfaceStats {
        self.iface.stats()
    }

    /// Entries in the interface's ARP table.
    pub fn neighbours(&self) -> usize {
        self.iface.inner.neighbours.len()
    }

    /// Feeds `data` as one frame. The first byte picks the metadata flags.
    pub fn run(&mut self, data: &[u8]) {
        let Some((&flags, frame)) = data.split_first() else {
            return;
        };
        let vnet = VirtioNetHdr {
            flags: flags & F_DATA_VALID,
            ..VirtioNetHdr::default()
        };
        let mem = self.iface.memory().clone();
        let Ok(seg) = nicdma::tx_segment(&mem, vnet, self.iface.config().nic.rx_frame_off, frame)
        else {
            return;
        };
        self.now += 1_000_000;
        self.iface.inject(self.now, &seg);
        let _ = self.iface.poll(self.now);
    }
}

impl Default for IngressFuzzer {
    fn default() -> Self {
        IngressFuzzer::new()
    }
}
