//! The AF_XDP backend's multi-buffer frames and TX checksum offload against
//! the real kernel, on a veth pair inside a private network namespace each
//! test makes and removes.
//!
//! - `jumbo_frames_cross_both_ways`: at MTU 64000, a 60000-byte UDP
//!   datagram of the kernel arrives as one multi-buffer frame (several RX
//!   descriptors), byte-exact, and one the port sends (several TX
//!   descriptors) reaches a kernel UDP socket byte-exact.
//! - `a_jumbo_mtu_without_multi_buffer_is_a_clear_error`: a port that
//!   could not receive the interface's largest frames refuses to open.
//! - `partial_checksums_are_completed_by_the_kernel`: a frame sent with its
//!   checksum left partial (TX metadata) reaches the kernel's socket, and
//!   the kernel counts no invalid descriptor.
//!
//! Needs root, iproute2 and ethtool (scripts/setup installs them).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use nicdma::meta::F_NEEDS_CSUM;
use nicdma::tap::{netns_supported, NetNs};
use nicdma::xdp::{XdpConfig, XdpPort};
use nicdma::{Port, PortError, TxOutcome, VirtioNetHdr};
use testkit::frame::{self, UdpChecksum};

fn skip() -> bool {
    testkit::require(netns_supported(), "root and iproute2")
        || testkit::require_program("ethtool", "--version")
}

/// A namespace with a veth pair: `k0` (the kernel, 10.79.<k>.1/24, offloads
/// off) and `p0` (ours), both at `mtu`; a static neighbour for our
/// 10.79.<k>.2 (its MAC: `p0`'s). Returns it and `k0`'s MAC.
fn lab(k: u8, mtu: u32) -> (NetNs, [u8; 6]) {
    let ns = NetNs::create().expect("namespace");
    ns.veth_pair("k0", "p0", &format!("10.79.{k}.1/24"), true)
        .expect("veth pair");
    for dev in ["k0", "p0"] {
        ns.ip(&["link", "set", "dev", dev, "mtu", &mtu.to_string()])
            .expect("mtu");
    }
    let mac = |dev: &str| -> [u8; 6] {
        let out = ns.ip(&["-br", "link", "show", "dev", dev]).expect("ip");
        let v: Vec<u8> = out
            .split_whitespace()
            .nth(2)
            .unwrap_or("")
            .split(':')
            .filter_map(|h| u8::from_str_radix(h, 16).ok())
            .collect();
        v[..6].try_into().expect("MAC")
    };
    let (k0, p0) = (mac("k0"), mac("p0"));
    let p0s: Vec<String> = p0.iter().map(|b| format!("{b:02x}")).collect();
    ns.ip(&[
        "neigh",
        "replace",
        &format!("10.79.{k}.2"),
        "lladdr",
        &p0s.join(":"),
        "dev",
        "k0",
    ])
    .expect("neigh");
    (ns, k0)
}

/// A UDP frame from 10.79.<k>.2:7 to 10.79.<k>.1:`port` carrying `data`;
/// the UDP checksum complete, or (`partial`) the pseudo-header sum only, as
/// a stack asking for checksum offload leaves it.
fn udp_frame(k: u8, src: [u8; 6], dst: [u8; 6], port: u16, data: &[u8], partial: bool) -> Vec<u8> {
    let csum = if partial {
        UdpChecksum::Partial
    } else {
        UdpChecksum::Full
    };
    frame::udp_frame(
        (dst, src),
        ([10, 79, k, 2], [10, 79, k, 1]),
        (7, port),
        data,
        csum,
    )
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Sends `frame` through `port` with `vnet`, flushed.
fn send<P: Port>(port: &mut P, vnet: &VirtioNetHdr, frame: &[u8]) {
    let chunks: Vec<&[u8]> = frame.chunks(64).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match port.transmit(vnet, &chunks).expect("transmit") {
            TxOutcome::Sent => break,
            TxOutcome::Full => {
                assert!(Instant::now() < deadline, "TX ring stayed full");
                port.flush().expect("flush");
            }
        }
    }
    port.flush().expect("flush");
}

#[test]
fn jumbo_frames_cross_both_ways() {
    if skip() {
        return;
    }
    let (ns, kmac) = lab(1, 64_000);
    let mut xdp = ns.run_in(|| XdpPort::open("p0")).unwrap().expect("AF_XDP");
    if testkit::require(
        if xdp.multi_buffer() {
            Ok(())
        } else {
            Err("XDP_USE_SG refused")
        },
        "a kernel with multi-buffer AF_XDP (6.6+)",
    ) {
        return;
    }
    let sock = ns
        .run_in(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 79, 1, 1), 9000)))
        .unwrap()
        .expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");

    // Port -> kernel: 60000 bytes in one frame of 15 descriptors.
    let out = pattern(60_000, 1);
    let frame = udp_frame(1, xdp.mac(), kmac, 9000, &out, false);
    send(&mut xdp, &VirtioNetHdr::default(), &frame);
    let mut buf = vec![0u8; 65_536];
    let n = sock
        .recv(&mut buf)
        .expect("the kernel got the jumbo datagram");
    assert!(buf[..n] == out[..], "{n} bytes, not the ones sent");

    // Kernel -> port: one 60000-byte datagram, lent as several pieces.
    let inn = pattern(60_000, 2);
    sock.send_to(&inn, SocketAddrV4::new(Ipv4Addr::new(10, 79, 1, 2), 7))
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got: Option<(usize, Vec<u8>)> = None;
    while got.is_none() {
        assert!(Instant::now() < deadline, "no jumbo frame in 10 s");
        nicdma::port::wait_readable(&xdp, Duration::from_millis(5)).expect("poll");
        xdp.receive_chunks(&mut |_, pieces| {
            let f: Vec<u8> = pieces.concat();
            if f.len() > 1000 {
                got = Some((pieces.len(), f));
            }
        })
        .expect("receive");
    }
    let (pieces, f) = got.expect("frame");
    assert!(pieces > 1, "a {}-byte frame in one piece", f.len());
    assert_eq!(f.len(), 42 + inn.len());
    assert!(f[42..] == inn[..], "the jumbo frame's payload differs");
    let st = xdp.stats().expect("stats");
    assert_eq!(st.rx_dropped + st.tx_invalid_descs, 0, "{st:?}");
}

#[test]
fn a_jumbo_mtu_without_multi_buffer_is_a_clear_error() {
    if skip() {
        return;
    }
    let (ns, _) = lab(3, 9000);
    let r = ns
        .run_in(|| {
            XdpPort::with_config(
                "p0",
                XdpConfig {
                    multi_buffer: false,
                    ..XdpConfig::default()
                },
            )
            .map(drop)
        })
        .unwrap();
    let Err(e) = r else {
        panic!("a port without multi-buffer opened at MTU 9000");
    };
    assert!(
        matches!(
            e,
            PortError::Unsupported {
                backend: "af_xdp",
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("MTU 9000") && msg.contains("3826"), "{msg}");
    // Nothing stays attached after the refusal.
    let link = ns.ip(&["link", "show", "dev", "p0"]).expect("ip link");
    assert!(!link.contains("xdp"), "{link}");
}

#[test]
fn partial_checksums_are_completed_by_the_kernel() {
    if skip() {
        return;
    }
    let (ns, kmac) = lab(2, 1500);
    let mut xdp = ns.run_in(|| XdpPort::open("p0")).unwrap().expect("AF_XDP");
    if testkit::require(
        if xdp.csum_offload() {
            Ok(())
        } else {
            Err("tx_metadata_len refused")
        },
        "a kernel with AF_XDP TX metadata (6.11+)",
    ) {
        return;
    }
    let sock = ns
        .run_in(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 79, 2, 1), 9000)))
        .unwrap()
        .expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let data = pattern(1000, 3);
    let frame = udp_frame(2, xdp.mac(), kmac, 9000, &data, true);
    let vnet = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VirtioNetHdr::default()
    };
    send(&mut xdp, &vnet, &frame);
    let mut buf = vec![0u8; 2048];
    let n = sock.recv(&mut buf).expect("the kernel got the datagram");
    assert!(buf[..n] == data[..]);
    assert_eq!(xdp.copies().tx_csum_offloaded, 1);
    let st = xdp.stats().expect("stats");
    assert_eq!(st.tx_invalid_descs, 0, "{st:?}");
}
