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
use nicdma::xdp::{XdpConfig, XdpPort};
use nicdma::{Port, PortCopies, PortError};

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
    println!(
        "{stdout}\nresponder: {:?}\nnic: {:?}\nport: {copies:?}",
        resp.counters(),
        nic.counters()
    );
    assert!(
        out.status.success() && stdout.contains(" 5 received"),
        "{stdout}"
    );
    assert_eq!(resp.counters().echo_replies, 5);
    assert!(copies.rx_frames >= 6 && copies.tx_frames >= 6, "{copies:?}");
    // Every received frame was copied once out of the shared region, every
    // sent one gathered once into it.
    assert!(copies.rx_copy_bytes >= 6 * 42, "{copies:?}");
    assert_eq!(
        copies.tx_gather_bytes,
        nic.counters().tx_bytes,
        "{copies:?}"
    );
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

#[test]
fn af_xdp_kernel_pings_the_nic_responder() {
    if skip() {
        return;
    }
    let ns = lab(2);
    let port = ns
        .run_in(|| XdpPort::open("p0"))
        .expect("enter")
        .expect("AF_XDP port");
    let mac = port.mac();
    let link = ns.ip(&["link", "show", "dev", "p0"]).expect("ip link");
    assert!(
        link.contains("xdpgeneric"),
        "program attached in SKB mode:\n{link}"
    );
    ping_through(&ns, port, mac, [10, 78, 2, 2]);
    // The port is gone: so is its program.
    let link = ns.ip(&["link", "show", "dev", "p0"]).expect("ip link");
    assert!(!link.contains("xdp"), "program detached:\n{link}");
}

#[test]
fn af_xdp_errors_are_typed() {
    if skip() {
        return;
    }
    // A veth with two queues: a second port on queue 1 binds, but the
    // interface already has the first port's program.
    let ns = NetNs::create().expect("namespace");
    ns.ip(&[
        "link",
        "add",
        "k0",
        "numrxqueues",
        "2",
        "numtxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        "p0",
        "numrxqueues",
        "2",
        "numtxqueues",
        "2",
    ])
    .expect("veth");
    for dev in ["p0", "k0"] {
        ns.ip(&["link", "set", "dev", dev, "up"]).expect("up");
    }
    let (missing, busy) = ns
        .run_in(|| {
            let missing = XdpPort::open("nonesuch0").map(drop);
            let first = XdpPort::open("p0").expect("the first port");
            let busy = XdpPort::with_config(
                "p0",
                XdpConfig {
                    queue: 1,
                    ..XdpConfig::default()
                },
            )
            .map(drop);
            drop(first);
            (missing, busy)
        })
        .expect("enter");
    assert!(
        matches!(missing, Err(PortError::NoSuchInterface(ref n)) if n == "nonesuch0"),
        "{missing:?}"
    );
    assert!(
        matches!(busy, Err(PortError::XdpBusy(ref n)) if n == "p0"),
        "{busy:?}"
    );
    let msg = busy.unwrap_err().to_string();
    assert!(msg.contains("already has an XDP program"), "{msg}");
    // With the first port gone, queue 1 works.
    let again = ns
        .run_in(|| {
            XdpPort::with_config(
                "p0",
                XdpConfig {
                    queue: 1,
                    ..XdpConfig::default()
                },
            )
            .map(drop)
        })
        .expect("enter");
    assert!(again.is_ok(), "{again:?}");
}

#[test]
fn without_privileges_ports_are_not_permitted() {
    if skip() {
        return;
    }
    let ns = lab(4);
    let (xdp, packet) = ns
        .run_in(|| {
            // Drop to nobody in this thread only (setresuid on the thread,
            // through the raw system call: glibc's setuid changes all threads).
            let r = drop_privileges_in_this_thread();
            assert!(r, "setresuid");
            (
                XdpPort::open("p0").map(drop),
                PacketPort::open("p0").map(drop),
            )
        })
        .expect("enter");
    assert!(matches!(xdp, Err(PortError::NotPermitted(_))), "{xdp:?}");
    assert!(
        matches!(packet, Err(PortError::NotPermitted(_))),
        "{packet:?}"
    );
}

/// Drops this thread (only) to uid/gid 65534 with the raw system calls
/// (glibc's wrappers would change every thread); the thread ends soon after.
fn drop_privileges_in_this_thread() -> bool {
    // SAFETY: `setresgid` takes integers and touches no memory; as a raw
    // system call it affects only this short-lived helper thread.
    let gid = unsafe { libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) };
    // SAFETY: likewise for `setresuid`.
    let uid = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
    gid == 0 && uid == 0
}

/// A UDP frame from 10.78.<k>.2:9 to 10.78.<k>.1:9 with `payload` bytes
/// (0, 1, 2, ...) and a complete checksum.
fn udp_frame(k: u8, src_mac: [u8; 6], dst_mac: [u8; 6], payload: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    testkit::frame::udp_frame(
        (dst_mac, src_mac),
        ([10, 78, k, 2], [10, 78, k, 1]),
        (9, 9),
        &data,
        testkit::frame::UdpChecksum::Full,
    )
}

/// Sends `n` frames through `port` (flushing as a NIC pass would), returns
/// how many the port took.
fn blast<P: Port>(port: &mut P, frame: &[u8], n: usize) -> usize {
    let vnet = nicdma::VirtioNetHdr::default();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent < n && Instant::now() < deadline {
        for _ in 0..64 {
            match port.transmit(&vnet, &[frame]).expect("transmit") {
                nicdma::TxOutcome::Sent => sent += 1,
                nicdma::TxOutcome::Full => break,
            }
            if sent == n {
                break;
            }
        }
        port.flush().expect("flush");
    }
    port.flush().expect("flush");
    sent
}

#[test]
fn tx_frames_are_recycled_through_many_rings_worth() {
    if skip() {
        return;
    }
    let ns = lab(5);
    let kmac = {
        let out = ns.ip(&["-br", "link", "show", "dev", "k0"]).expect("ip");
        out.split_whitespace().nth(2).unwrap_or("").to_owned()
    };
    let kmac: Vec<u8> = kmac
        .split(['@', ':'])
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    let kmac: [u8; 6] = kmac[..6].try_into().expect("MAC of k0");
    let n = 3 * 2048 + 100;
    let before = ns.link_stats("k0").expect("stats").rx_packets;
    let mut xdp = ns.run_in(|| XdpPort::open("p0")).unwrap().expect("AF_XDP");
    let frame = udp_frame(5, xdp.mac(), kmac, 1000);
    assert_eq!(blast(&mut xdp, &frame, n), n, "AF_XDP: {:?}", xdp.copies());
    drop(xdp);
    let mut pk = ns
        .run_in(|| PacketPort::open("p0"))
        .unwrap()
        .expect("AF_PACKET");
    assert_eq!(blast(&mut pk, &frame, n), n, "AF_PACKET: {:?}", pk.copies());
    std::thread::sleep(Duration::from_millis(100));
    let after = ns.link_stats("k0").expect("stats").rx_packets;
    assert!(after - before >= 2 * n as u64, "{before} -> {after}");
}
