//! Two interfaces joined by a simulated link on a virtual clock: the harness
//! of the loss tests, the RPC benchmark and the examples' sim backend.

use std::net::Ipv4Addr;

use hicamp::Memory;
use nicdma::sim::{LinkConfig, SimNet, SimPort};

use crate::iface::{IfaceConfig, IfaceError, Interface};

/// Address of side `a`.
pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Address of side `b`.
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// Two interfaces on one simulated link.
#[derive(Debug)]
pub struct SimPair {
    /// The network (its clock is the pair's clock).
    pub net: SimNet,
    /// Side a, 10.0.0.1.
    pub a: Interface<SimPort>,
    /// Side b, 10.0.0.2.
    pub b: Interface<SimPort>,
    moved: u64,
}

fn moved(i: &Interface<SimPort>) -> u64 {
    let c = i.nic().counters();
    c.tx_frames + c.rx_frames
}

impl SimPair {
    /// Two interfaces in `mem` on a link with `link` in both directions and
    /// faults drawn from `seed`; `tweak` adjusts both configurations.
    pub fn new(
        mem: &Memory,
        link: LinkConfig,
        seed: u64,
        tweak: impl Fn(&mut IfaceConfig),
    ) -> Result<SimPair, IfaceError> {
        let (net, pa, pb) = SimNet::pair(seed, link).map_err(|e| {
            IfaceError::Nic(nicdma::NicError::Port(nicdma::PortError::Os {
                op: "sim pair",
                source: e,
            }))
        })?;
        let mut ca = IfaceConfig::new([2, 0, 0, 0, 0, 1], A_IP, 24);
        ca.seed = seed;
        tweak(&mut ca);
        let mut cb = IfaceConfig::new([2, 0, 0, 0, 0, 2], B_IP, 24);
        cb.seed = seed.wrapping_add(1);
        tweak(&mut cb);
        Ok(SimPair {
            a: Interface::new(mem, pa, ca)?,
            b: Interface::new(mem, pb, cb)?,
            net,
            moved: 0,
        })
    }

    /// A pair of interfaces the caller made on `net`'s ports (in memories of
    /// its choice: a file-backed server facing a DRAM client, say).
    pub fn from_parts(net: SimNet, a: Interface<SimPort>, b: Interface<SimPort>) -> SimPair {
        SimPair {
            net,
            a,
            b,
            moved: 0,
        }
    }

    /// The virtual time in ns.
    pub fn now(&self) -> u64 {
        self.net.clock().now()
    }

    /// Polls both sides once; when no frame moved, advances the clock to the
    /// next frame due on the link or the next socket timer. Returns false when
    /// nothing at all is pending (the network is quiet and no timer is set).
    pub fn step(&mut self) -> Result<bool, IfaceError> {
        let now = self.now();
        self.a.poll(now)?;
        self.b.poll(now)?;
        let m = moved(&self.a) + moved(&self.b);
        if m != self.moved {
            self.moved = m;
            return Ok(true);
        }
        let next = [self.net.next_due(), self.a.poll_at(), self.b.poll_at()]
            .into_iter()
            .flatten()
            .min();
        match next {
            None => Ok(false),
            Some(t) => {
                // Always move forward, so a timer due "now" cannot spin.
                let t = t.max(now + 1_000);
                self.net.clock().advance(t - now);
                Ok(true)
            }
        }
    }
}
