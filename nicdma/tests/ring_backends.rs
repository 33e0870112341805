//! The AF_PACKET and AF_XDP backends against the real kernel, on a veth pair
//! inside a private network namespace each test makes and removes.
//!
//! - `*_kernel_pings_the_nic_responder`: the kernel's `ping` reaches the
//!   NIC-level ARP/ICMP responder through the backend's rings, and the
//!   port's copy counters show the one RX copy and the TX gather.
//! - `af_xdp_errors_are_typed`: a missing interface, an interface that
//!   already has an XDP program.
//!
//! Needs root, iproute2, ethtool and ping (scripts/setup installs them).

use std::process::Stdio;
use std::time::{Duration, Instant};

use nicdma::packet::PacketPort;
use nicdma::tap::{netns_supported, NetNs};
use nicdma::{Port, PortCopies};

fn skip() -> bool {
    testkit::require(netns_supported(), "root and iproute2")
        || testkit::require_program("ping", "-V")
        || testkit::require_program("ethtool", "--version")
}

/// A namespace with a veth pair: `k0` (the kernel, 10.78.<k>.1/24) and `p0`
/// (ours).
fn lab(k: u8) -> NetNs {
    let ns = NetNs::create().expect("namespace");
    ns.veth_pair("k0", "p0", &format!("10.78.{k}.1/24"), true)
        .expect("veth pair");
    ns
}

/// Runs `ping -c 5` from the namespace's kernel at `our_ip` while the
/// responder answers through `port`; returns the port's copy counters.
fn ping_through<P: Port>(ns: &NetNs, port: P, mac: [u8; 6], our_ip: [u8; 4]) -> PortCopies {
    let mem = hicamp::Memory::new(hicamp::Config {
        capacity_lines: 1 << 16,
        map_capacity: 1024,
        ..hicamp::Config::default()
    })
    .expect("memory");
    let mut nic = nicdma::Nic::new(&mem, port, nicdma::NicConfig::default()).expect("nic");
    let mut resp = nicdma::responder::Responder::new(mac, our_ip);
    let ip = format!("{}.{}.{}.{}", our_ip[0], our_ip[1], our_ip[2], our_ip[3]);
    let mut child = ns
        .command("ping")
        .args(["-c", "5", "-i", "0.2", "-W", "1", &ip])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "ping did not finish in 30 s");
        nicdma::port::wait_readable(nic.port(), Duration::from_millis(5)).expect("poll");
        resp.poll(&mut nic).expect("responder");
    }
    let out = child.wait_with_output().expect("ping output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let copies = nic.port().copies();
    println!("{stdout}\nresponder: {:?}\nnic: {:?}\nport: {copies:?}", resp.counters(), nic.counters());
    assert!(out.status.success() && stdout.contains(" 5 received"), "{stdout}");
    assert_eq!(resp.counters().echo_replies, 5);
    assert!(copies.rx_frames >= 6 && copies.tx_frames >= 6, "{copies:?}");
    // Every received frame was copied once out of the shared region, every
    // sent one gathered once into it.
    assert!(copies.rx_copy_bytes >= 6 * 42, "{copies:?}");
    assert_eq!(copies.tx_gather_bytes, nic.counters().tx_bytes, "{copies:?}");
    copies
}

#[test]
fn af_packet_kernel_pings_the_nic_responder() {
    if skip() {
        return;
    }
    let ns = lab(1);
    let port = ns
        .run_in(|| PacketPort::open("p0"))
        .expect("enter")
        .expect("AF_PACKET port");
    let mac = port.mac();
    ping_through(&ns, port, mac, [10, 78, 1, 2]);
}
