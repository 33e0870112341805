//! What the TAP tests share: a segstack interface on a TAP device whose
//! kernel side lives in a namespace the test creates, a poll loop on the
//! wall clock, and kernel clients run inside the namespace.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hicamp::{Config, Memory};
use nicdma::tap::{netns_supported, NetNs, TapPort};
use nicdma::Port;
use segstack::iface::{Event, IfaceConfig, Interface};

/// True (after saying why; a failure under CI) when the test cannot make
/// namespaces.
pub fn skip() -> bool {
    testkit::require(netns_supported(), "root and iproute2")
}

/// A port with a TAP device underneath, whose descriptor the loop waits on.
pub trait OnTap: Port {
    /// The TAP device.
    fn tap(&self) -> &TapPort;
}

impl OnTap for TapPort {
    fn tap(&self) -> &TapPort {
        self
    }
}

/// An interface at `<net>.2` whose kernel peer is `<net>.1/24` in a fresh
/// namespace.
pub struct Lab<P: OnTap> {
    pub iface: Interface<P>,
    pub ns: Arc<NetNs>,
    pub kernel_ip: Ipv4Addr,
    pub our_ip: Ipv4Addr,
    pub t0: Instant,
}

impl<P: OnTap> Lab<P> {
    /// Moves `tap` into a new namespace as `net.1/24` (net = [a, b, c]) and
    /// puts an interface at `net.2` on `port(tap)`; `tweak` adjusts its
    /// configuration.
    pub fn new(
        tap: TapPort,
        net: [u8; 3],
        mac: [u8; 6],
        port: impl FnOnce(TapPort) -> P,
        tweak: impl FnOnce(&mut IfaceConfig),
    ) -> Lab<P> {
        let ns = NetNs::create().expect("create a namespace");
        let name = tap.name().to_owned();
        let [a, b, c] = net;
        ns.adopt(&name, Some(&format!("{a}.{b}.{c}.1/24")))
            .expect("move the TAP device into the namespace");
        let mem = Memory::new(Config {
            capacity_lines: 1 << 23,
            map_capacity: 1 << 16,
            ..Config::default()
        })
        .unwrap();
        let our_ip = Ipv4Addr::new(a, b, c, 2);
        let mut cfg = IfaceConfig::new(mac, our_ip, 24);
        tweak(&mut cfg);
        let iface = Interface::new(&mem, port(tap), cfg).unwrap();
        Lab {
            iface,
            ns: Arc::new(ns),
            kernel_ip: Ipv4Addr::new(a, b, c, 1),
            our_ip,
            t0: Instant::now(),
        }
    }

    /// Nanoseconds since the lab was made.
    pub fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Polls until `f` says stop (or 120 s pass, which fails the test).
    pub fn run(&mut self, mut f: impl FnMut(&mut Interface<P>, &[Event], u64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(Instant::now() < deadline, "no completion within 120 s");
            let now = self.now();
            let ev = self.iface.poll(now).unwrap().to_vec();
            if !f(&mut self.iface, &ev, now) {
                return;
            }
            let wait = match self.iface.poll_at() {
                Some(t) => {
                    Duration::from_nanos(t.saturating_sub(self.now())).min(Duration::from_millis(2))
                }
                None => Duration::from_millis(2),
            };
            self.iface.nic().port().tap().wait_readable(wait).unwrap();
        }
    }

    /// Runs `client` on a thread inside the namespace.
    pub fn kernel<T: Send + 'static>(
        &self,
        client: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = Arc::clone(&self.ns);
        std::thread::spawn(move || {
            ns.enter_current_thread().expect("enter the namespace");
            client()
        })
    }
}
