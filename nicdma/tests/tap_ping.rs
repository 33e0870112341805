//! The TAP backend against the real kernel, inside private network namespaces.
//!
//! - `kernel_pings_a_responder_on_the_port`: the kernel's `ping` (run in the
//!   namespace) reaches an ARP + ICMP echo responder written directly on the
//!   [`Port`] trait, through a [`TapPort`].
//! - `bridge_completes_partial_checksums_and_segments_gso`: frames with
//!   partial checksums and a TCP GSO super-frame go in through one TAP port,
//!   across a bridge in the namespace, and out of another TAP port; the kernel
//!   completes the checksums and cuts the super-frame where the receiving
//!   port has no offloads, and hands the offload metadata over where it has.
//! - `lifecycle_down_link_and_vanished_device`: a down link refuses frames
//!   (EIO), frames of 500 and 4001 chunks go out (iovecs and the flattening
//!   fallback), and a device deleted with its namespace reads `Disconnected`.
//! - `open_without_privileges_is_not_permitted` (as root: in a thread that
//!   dropped to uid 65534).
//! - `tap_frame_rate` (`#[ignore]`; run with `--ignored --nocapture`): frames/s
//!   written to and read from the kernel.
//!
//! These need root and iproute2 (`ip`), and `ping` from iputils; without root
//! or `ip` they print "skipped: needs root and iproute2" and pass.

use std::net::{Ipv4Addr, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nicdma::checksum::{checksum, fold, pseudo_header, sum};
use nicdma::meta::{gso, F_NEEDS_CSUM};
use nicdma::tap::{netns_supported, NetNs, Offload, TapPort};
use nicdma::{Port, PortError, TxOutcome, VirtioNetHdr};
use testkit::frame::{eth, ipv4, udp, UdpChecksum};

/// The MAC address the user-space responder answers with.
const OUR_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x77, 0x00, 0x02];
/// The kernel side's MAC address (set on the TAP device in the namespace).
const KERNEL_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x77, 0x00, 0x01];

const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
const IP_ICMP: u8 = 1;
const IP_TCP: u8 = 6;
const IP_UDP: u8 = 17;

/// True (after saying why; a failure under CI) when the test cannot make
/// namespaces.
fn skip() -> bool {
    testkit::require(netns_supported(), "root and iproute2")
}

/// True (likewise) when the kernel's `ping` is missing (scripts/setup
/// installs it).
fn skip_ping() -> bool {
    testkit::require_program("ping", "-V")
}

/// A TAP port whose device lives in a fresh namespace as `10.77.<k>.1/24`.
/// (Fields drop in order: the device goes first, then the namespace.)
struct Lab {
    port: TapPort,
    ns: NetNs,
    kernel_ip: [u8; 4],
    our_ip: [u8; 4],
}

fn lab(k: u8) -> Lab {
    let port = TapPort::open("").expect("open a TAP device");
    let ns = NetNs::create().expect("create a namespace");
    let name = port.name().to_owned();
    ns.adopt(&name, Some(&format!("10.77.{k}.1/24")))
        .unwrap_or_else(|e| panic!("move {name} into {}: {e}", ns.name()));
    ns.ip(&["link", "set", "dev", &name, "address", &mac_str(KERNEL_MAC)])
        .expect("set the TAP's MAC");
    Lab {
        port,
        ns,
        kernel_ip: [10, 77, k, 1],
        our_ip: [10, 77, k, 2],
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ip_str(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

// ---- wire formats, by hand ----------------------------------------------

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Sum of the IPv4 pseudo-header for TCP/UDP.
fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u64 {
    pseudo_header(src.into(), dst.into(), proto, len as u32)
}

/// Completes a partial checksum (virtio `F_NEEDS_CSUM`): the field holds the
/// pseudo-header sum; the checksum covers `csum_start..` of the frame.
fn complete_csum(hdr: &VirtioNetHdr, frame: &mut [u8]) {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return;
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    assert!(at + 2 <= frame.len(), "checksum field outside the frame");
    let mut c = checksum(&frame[start..]);
    // (These tests carry only untagged IPv4: byte 23 is the protocol.)
    if c == 0 && frame.get(23) == Some(&IP_UDP) {
        c = 0xffff; // UDP says "no checksum" with 0
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Checks an IPv4 packet's header (returns header length and total length).
fn check_ipv4(ip: &[u8]) -> Option<(usize, usize)> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2));
    if ihl < 20 || total < ihl || total > ip.len() || checksum(&ip[..ihl]) != 0 {
        return None;
    }
    Some((ihl, total))
}

/// What the responder answered.
#[derive(Debug, Default)]
struct Answered {
    arp: u32,
    echo: u32,
    other: u32,
}

/// The reply to `frame` (if it is an ARP request or ICMP echo request for
/// `ip`), built from scratch with correct checksums.
fn respond(frame: &[u8], mac: [u8; 6], ip: [u8; 4], answered: &mut Answered) -> Option<Vec<u8>> {
    if frame.len() < 14 {
        answered.other += 1;
        return None;
    }
    let src_mac: [u8; 6] = frame[6..12].try_into().unwrap();
    let body = &frame[14..];
    match be16(frame, 12) {
        ETH_ARP
            if body.len() >= 28
                && be16(body, 0) == 1
                && be16(body, 2) == ETH_IPV4
                && body[4] == 6
                && body[5] == 4
                && be16(body, 6) == 1
                && body[24..28] == ip =>
        {
            let mut arp = Vec::with_capacity(28);
            arp.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
            arp.extend_from_slice(&mac);
            arp.extend_from_slice(&ip);
            arp.extend_from_slice(&body[8..14]); // requester's MAC
            arp.extend_from_slice(&body[14..18]); // requester's IP
            answered.arp += 1;
            Some(eth(src_mac, mac, ETH_ARP, &arp))
        }
        ETH_IPV4 => {
            let (ihl, total) = check_ipv4(body)?;
            let frag = be16(body, 6) & 0x3fff;
            if body[9] != IP_ICMP || body[16..20] != ip || frag != 0 {
                answered.other += 1;
                return None;
            }
            let icmp = &body[ihl..total];
            if icmp.len() < 8 || icmp[0] != 8 || icmp[1] != 0 || checksum(icmp) != 0 {
                answered.other += 1;
                return None;
            }
            let mut reply = icmp.to_vec();
            reply[0] = 0; // echo reply
            reply[2..4].copy_from_slice(&[0, 0]);
            let c = checksum(&reply);
            reply[2..4].copy_from_slice(&c.to_be_bytes());
            let peer: [u8; 4] = body[12..16].try_into().unwrap();
            answered.echo += 1;
            Some(eth(
                src_mac,
                mac,
                ETH_IPV4,
                &ipv4(ip, peer, IP_ICMP, be16(body, 4), &reply),
            ))
        }
        _ => {
            answered.other += 1;
            None
        }
    }
}

/// Sends `frame` gathered from `line`-byte chunks, like a segment's lines.
fn send_lines(port: &mut TapPort, hdr: &VirtioNetHdr, frame: &[u8], line: usize) {
    let chunks: Vec<&[u8]> = frame.chunks(line).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match port.transmit(hdr, &chunks) {
            Ok(TxOutcome::Sent) => return,
            Ok(TxOutcome::Full) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            other => panic!("transmit: {other:?}"),
        }
    }
}

/// Takes one frame from the port, if one is waiting.
fn recv_one(port: &mut TapPort) -> Option<(VirtioNetHdr, Vec<u8>)> {
    let mut got = None;
    let more = port
        .receive(&mut |hdr, frame| got = Some((*hdr, frame.to_vec())))
        .expect("receive");
    assert_eq!(more, got.is_some());
    got
}

/// Answers ARP and ICMP echo on `port` until `child` exits; returns its
/// output and what was answered.
fn serve_until_exit(
    port: &mut TapPort,
    ip: [u8; 4],
    mut child: Child,
) -> (std::process::Output, Answered) {
    let mut answered = Answered::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child did not finish in 30 s ({answered:?})");
        }
        if !port.wait_readable(Duration::from_millis(10)).expect("poll") {
            continue;
        }
        while let Some((hdr, mut frame)) = recv_one(port) {
            complete_csum(&hdr, &mut frame);
            if let Some(reply) = respond(&frame, OUR_MAC, ip, &mut answered) {
                send_lines(port, &VirtioNetHdr::default(), &reply, 64);
            }
        }
    }
    (child.wait_with_output().expect("child output"), answered)
}

#[test]
fn kernel_pings_a_responder_on_the_port() {
    if skip() || skip_ping() {
        return;
    }
    let mut lab = lab(1);
    let child = lab
        .ns
        .command("ping")
        .args(["-c", "5", "-i", "0.2", "-W", "1", &ip_str(lab.our_ip)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping in the namespace");
    let (out, answered) = serve_until_exit(&mut lab.port, lab.our_ip, child);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    println!("responder: {answered:?}");
    assert!(out.status.success(), "ping failed: {:?}", out.status);
    assert!(stdout.contains(" 5 received"), "not 5 replies:\n{stdout}");
    assert_eq!(answered.echo, 5);
    assert!(answered.arp >= 1, "the kernel never asked for our MAC");
}

/// Two TAP ports in one bridge: frames written to `a` come out of `b`.
struct Bridge {
    a: TapPort,
    b: TapPort,
    _ns: NetNs,
}

fn bridge() -> Bridge {
    // Open both before moving either: a name the kernel picks is only unique
    // in the namespace it is picked in.
    let a = TapPort::open("").expect("open TAP a");
    let b = TapPort::open("").expect("open TAP b");
    let ns = NetNs::create().expect("create a namespace");
    ns.ip(&["link", "add", "br0", "type", "bridge"])
        .expect("add bridge");
    ns.ip(&["link", "set", "dev", "br0", "addrgenmode", "none"])
        .expect("br0 addrgenmode");
    for dev in [a.name(), b.name()] {
        ns.adopt(dev, None).expect("move into the namespace");
        ns.ip(&["link", "set", "dev", dev, "master", "br0"])
            .expect("enslave");
    }
    ns.ip(&["link", "set", "dev", "br0", "up"]).expect("br0 up");
    Bridge { a, b, _ns: ns }
}

/// Writes `frame` to `a` until something matching `want` comes out of `b`
/// (the bridge ports may need a moment to forward); returns all matching
/// frames that came out within 200 ms of the first.
fn through_bridge(
    br: &mut Bridge,
    hdr: &VirtioNetHdr,
    frame: &[u8],
    want: impl Fn(&[u8]) -> bool,
) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        // Odd chunk sizes: the gather must keep the order across iovecs.
        send_lines(&mut br.a, hdr, frame, 37);
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            if let Some((h, f)) = recv_one(&mut br.b) {
                if want(&f) {
                    got.push((h, f));
                }
            } else {
                br.b.wait_readable(Duration::from_millis(5)).expect("poll");
            }
        }
        if !got.is_empty() {
            return got;
        }
    }
    panic!("nothing came through the bridge in 5 s");
}

const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x77, 0x00, 0x0a];
const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x77, 0x00, 0x0b];
const SRC_IP: [u8; 4] = [10, 77, 2, 10];
const DST_IP: [u8; 4] = [10, 77, 2, 11];

fn is_proto(proto: u8) -> impl Fn(&[u8]) -> bool {
    move |f: &[u8]| f.len() > 34 && be16(f, 12) == ETH_IPV4 && f[23] == proto && f[6..12] == SRC_MAC
}

/// A TCP/IPv4 frame carrying `payload`, with its TCP checksum left partial.
fn tcp_frame(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5001u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x18; // PSH | ACK
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let pseudo = fold(pseudo_sum(SRC_IP, DST_IP, IP_TCP, 20 + payload.len()));
    t[16..18].copy_from_slice(&pseudo.to_be_bytes());
    t.extend_from_slice(payload);
    eth(
        DST_MAC,
        SRC_MAC,
        ETH_IPV4,
        &ipv4(SRC_IP, DST_IP, IP_TCP, 7, &t),
    )
}

/// Checks a received TCP/IPv4 frame's checksums; returns (seq, payload).
fn tcp_segment(frame: &[u8]) -> (u32, Vec<u8>) {
    let ip = &frame[14..];
    let (ihl, total) = check_ipv4(ip).expect("valid IPv4 header");
    let tcp = &ip[ihl..total];
    let acc = sum(pseudo_sum(SRC_IP, DST_IP, IP_TCP, tcp.len()), tcp);
    assert_eq!(fold(acc), 0xffff, "TCP checksum");
    let doff = usize::from(tcp[12] >> 4) * 4;
    (be32(tcp, 4), tcp[doff..].to_vec())
}

#[test]
fn bridge_completes_partial_checksums_and_segments_gso() {
    if skip() {
        return;
    }
    let mut br = bridge();
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 251) as u8).collect();

    // 1. UDP with a partial checksum; b has no offloads, so the kernel
    //    completes it on the way out.
    br.b.set_offload(Offload::NONE).expect("offload none");
    let datagram = udp(
        SRC_IP,
        DST_IP,
        (40000, 9),
        &payload[..500],
        UdpChecksum::Partial,
    );
    let frame = eth(
        DST_MAC,
        SRC_MAC,
        ETH_IPV4,
        &ipv4(SRC_IP, DST_IP, IP_UDP, 1, &datagram),
    );
    let partial = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VirtioNetHdr::default()
    };
    let got = through_bridge(&mut br, &partial, &frame, is_proto(IP_UDP));
    let (hdr, out) = &got[0];
    assert_eq!(hdr.flags & F_NEEDS_CSUM, 0, "b has no CSUM offload");
    let udp_out = &out[34..];
    let acc = sum(pseudo_sum(SRC_IP, DST_IP, IP_UDP, udp_out.len()), udp_out);
    assert_eq!(fold(acc), 0xffff, "the kernel completed the UDP checksum");
    assert_eq!(&udp_out[8..], &payload[..500]);
    assert_eq!(out.len(), frame.len());

    // 2. The same with b offering CSUM: the frame arrives still partial,
    //    with the metadata to complete it.
    br.b.set_offload(Offload::DEFAULT).expect("offload default");
    let got = through_bridge(&mut br, &partial, &frame, is_proto(IP_UDP));
    let (hdr, mut out) = got[0].clone();
    assert_ne!(hdr.flags & F_NEEDS_CSUM, 0, "b has CSUM offload");
    assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 6));
    assert_eq!(out, frame, "handed over untouched");
    complete_csum(&hdr, &mut out);
    let udp_out = &out[34..];
    let acc = sum(pseudo_sum(SRC_IP, DST_IP, IP_UDP, udp_out.len()), udp_out);
    assert_eq!(fold(acc), 0xffff);

    // 3. A TCP GSO super-frame (3000 bytes, MSS 1000) in; with b's offloads
    //    off it comes out as three complete segments.
    let gso_hdr = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: gso::TCPV4,
        hdr_len: 54,
        gso_size: 1000,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let frame = tcp_frame(1000, &payload);
    for offload in [Offload::NONE, Offload::DEFAULT] {
        br.b.set_offload(offload).expect("set offload");
        let got = through_bridge(&mut br, &gso_hdr, &frame, is_proto(IP_TCP));
        let mut pieces = Vec::new();
        for (hdr, mut out) in got {
            if offload == Offload::NONE {
                assert_eq!(hdr.flags & F_NEEDS_CSUM, 0);
                assert_eq!(hdr.gso_type, gso::NONE);
            }
            if hdr.gso_type != gso::NONE {
                assert_eq!(hdr.gso_type & !gso::ECN, gso::TCPV4);
                assert_eq!(hdr.gso_size, 1000);
            } else {
                assert!(
                    out.len() <= 14 + 40 + 1000,
                    "segment of {} bytes",
                    out.len()
                );
            }
            complete_csum(&hdr, &mut out);
            pieces.push(tcp_segment(&out));
        }
        pieces.sort();
        println!(
            "GSO frame through the bridge, b {offload:?}: {} frame(s) out",
            pieces.len()
        );
        if offload == Offload::NONE {
            assert_eq!(pieces.len(), 3, "cut into MSS-sized segments");
        }
        let mut seq = 1000;
        let mut joined = Vec::new();
        for (s, p) in pieces {
            assert_eq!(s, seq, "segments in sequence");
            seq += p.len() as u32;
            joined.extend_from_slice(&p);
        }
        assert_eq!(joined, payload);
    }
}

#[test]
fn lifecycle_down_link_and_vanished_device() {
    if skip() {
        return;
    }
    let mut port = TapPort::open("").expect("open");
    assert!(
        port.name().starts_with("tap"),
        "kernel-picked name {}",
        port.name()
    );
    assert_eq!(port.rx_fd(), Some(std::os::fd::AsRawFd::as_raw_fd(&port)));
    assert_eq!(port.offload(), Offload::DEFAULT);
    assert!(!port.wait_readable(Duration::ZERO).expect("poll"));
    assert!(
        recv_one(&mut port).is_none(),
        "nothing arrives on a down link"
    );
    let frame = eth(KERNEL_MAC, OUR_MAC, 0x88b5, &[0u8; 50]);
    let tx = port.transmit(&VirtioNetHdr::default(), &[&frame]);
    println!("transmit on a down link: {tx:?}");
    assert!(
        matches!(&tx, Err(PortError::Os { source, .. }) if source.raw_os_error() == Some(libc::EIO)),
        "a down link refuses frames with EIO: {tx:?}"
    );
    let big = vec![0u8; nicdma::tap::MAX_FRAME + 1];
    assert!(matches!(
        port.transmit(&VirtioNetHdr::default(), &[&big]),
        Err(PortError::TooLarge { .. })
    ));

    // Up in a namespace: frames go; many chunks (more than IOV_MAX) too.
    let ns = NetNs::create().expect("namespace");
    ns.adopt(port.name(), None).expect("adopt");
    let big = vec![0x11u8; 4000];
    let one_byte_chunks: Vec<&[u8]> = big.chunks(1).collect();
    let eth_hdr = eth(KERNEL_MAC, OUR_MAC, 0x88b5, &[]);
    let chunks: Vec<&[u8]> = std::iter::once(&eth_hdr[..])
        .chain(one_byte_chunks)
        .collect();
    assert_eq!(
        port.transmit(&VirtioNetHdr::default(), &chunks)
            .expect("4001 chunks"),
        TxOutcome::Sent
    );
    assert_eq!(
        port.transmit(&VirtioNetHdr::default(), &chunks[..500])
            .expect("500 chunks"),
        TxOutcome::Sent
    );
    let stats = ns.link_stats(port.name()).expect("stats");
    assert_eq!(stats.rx_packets, 2, "{stats:?}");

    // Deleting the namespace deletes the device; the port says so.
    drop(ns);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match port.transmit(&VirtioNetHdr::default(), &[&frame]) {
            Err(PortError::Disconnected) => break,
            other if Instant::now() < deadline => {
                println!("after the namespace went: {other:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
    assert!(matches!(
        port.receive(&mut |_, _| ()),
        Err(PortError::Disconnected)
    ));
}

#[test]
fn open_without_privileges_is_not_permitted() {
    if euid() != 0 {
        assert!(matches!(TapPort::open(""), Err(PortError::NotPermitted(_))));
        return;
    }
    // As root: drop to "nobody" in a thread of our own. The raw system call
    // changes only the calling thread's credentials (glibc's `setresuid`
    // would change every thread's), and the thread ends right after.
    let res = std::thread::spawn(|| {
        // SAFETY: `setresuid` takes three integers and touches no memory; as
        // a raw system call it affects only this short-lived thread.
        let ret = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        if ret != 0 {
            return None;
        }
        Some(TapPort::open("").map(|p| p.name().to_owned()))
    })
    .join()
    .expect("thread");
    match res {
        None => eprintln!("skipped: running as root and could not drop privileges"),
        Some(r) => assert!(
            matches!(r, Err(PortError::NotPermitted(_))),
            "expected NotPermitted, got {r:?}"
        ),
    }
}

fn euid() -> u32 {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Transmits `frame` (gathered from `line`-byte chunks) for `secs`; returns
/// (sent, full, seconds).
fn blast(port: &mut TapPort, frame: &[u8], line: usize, secs: f64) -> (u64, u64, f64) {
    let chunks: Vec<&[u8]> = frame.chunks(line).collect();
    let hdr = VirtioNetHdr::default();
    let (mut sent, mut full) = (0u64, 0u64);
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    while start.elapsed() < limit {
        for _ in 0..256 {
            match port.transmit(&hdr, &chunks).expect("transmit") {
                TxOutcome::Sent => sent += 1,
                TxOutcome::Full => full += 1,
            }
        }
    }
    (sent, full, start.elapsed().as_secs_f64())
}

/// The namespace kernel's UDP counters `NoPorts` and `InCsumErrors`.
fn udp_counters(ns: &NetNs) -> (u64, u64) {
    let out = ns
        .command("cat")
        .arg("/proc/net/snmp")
        .output()
        .expect("read /proc/net/snmp");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        udp.next().expect("Udp names"),
        udp.next().expect("Udp values"),
    );
    let get = |key: &str| {
        let i = names.split_whitespace().position(|n| n == key).expect(key);
        values
            .split_whitespace()
            .nth(i)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    (get("NoPorts"), get("InCsumErrors"))
}

/// Frame rates through a TAP port, both ways, for 64- and 1500-byte frames.
#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn tap_frame_rate() {
    if skip() {
        return;
    }
    let secs = std::env::var("TAP_RATE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let mut lab = lab(3);
    let dev = lab.port.name().to_owned();
    // The kernel sends to us without asking ARP.
    lab.ns
        .ip(&[
            "neigh",
            "replace",
            &ip_str(lab.our_ip),
            "lladdr",
            &mac_str(OUR_MAC),
            "dev",
            &dev,
            "nud",
            "permanent",
        ])
        .expect("static neighbour");
    // Drain whatever the kernel sent so far.
    while recv_one(&mut lab.port).is_some() {}

    println!("TAP frame rates over {secs} s each (one writev / read per frame):");
    for frame_len in [64usize, 1500] {
        // To the kernel: UDP to a closed port of its address (full IP and UDP
        // receive, checksum check, then dropped; the ICMP errors it answers
        // with are rate-limited).
        let payload = vec![0x5a; frame_len - 42];
        let datagram = udp(
            lab.our_ip,
            lab.kernel_ip,
            (40000, 9),
            &payload,
            UdpChecksum::Full,
        );
        let frame = eth(
            KERNEL_MAC,
            OUR_MAC,
            ETH_IPV4,
            &ipv4(lab.our_ip, lab.kernel_ip, IP_UDP, 1, &datagram),
        );
        assert_eq!(frame.len(), frame_len);
        let lines: &[usize] = if frame_len > 64 {
            &[64, frame_len]
        } else {
            &[64]
        };
        for &line in lines {
            let before = lab.ns.link_stats(&dev).expect("stats");
            let udp_before = udp_counters(&lab.ns);
            let (sent, full, elapsed) = blast(&mut lab.port, &frame, line, secs);
            let after = lab.ns.link_stats(&dev).expect("stats");
            let udp_after = udp_counters(&lab.ns);
            let counted = after.rx_packets - before.rx_packets;
            let no_ports = udp_after.0 - udp_before.0;
            println!(
                "  transmit {frame_len:>4} B in {:>2} chunk(s): {:>9.0} frames/s ({:.2} Gbit/s), \
                 {sent} sent, {full} full; kernel: {counted} received, {} dropped, \
                 {no_ports} reached UDP, {} bad checksums",
                frame_len.div_ceil(line),
                sent as f64 / elapsed,
                sent as f64 * frame_len as f64 * 8.0 / elapsed / 1e9,
                after.rx_dropped - before.rx_dropped,
                udp_after.1 - udp_before.1,
            );
            assert_eq!(counted, sent, "the kernel received every frame written");
            assert_eq!(no_ports, sent, "every frame reached UDP");
        }
        while recv_one(&mut lab.port).is_some() {}

        // From the kernel: a thread in the namespace floods UDP to our
        // address through an ordinary socket; we read as fast as we can.
        let before = lab.ns.link_stats(&dev).expect("stats");
        let stop = AtomicBool::new(false);
        let (kernel_ip, our_ip) = (lab.kernel_ip, lab.our_ip);
        let (ns, port) = (&lab.ns, &mut lab.port);
        let (received, elapsed, generated) = std::thread::scope(|s| {
            let stop = &stop;
            let sender = s.spawn(move || {
                ns.enter_current_thread().expect("enter the namespace");
                let sock = UdpSocket::bind((Ipv4Addr::from(kernel_ip), 0)).expect("bind");
                sock.connect((Ipv4Addr::from(our_ip), 9)).expect("connect");
                let buf = vec![0xa5; frame_len - 42];
                let (mut sent, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match sock.send(&buf) {
                        Ok(_) => sent += 1,
                        Err(_) => failed += 1,
                    }
                }
                (sent, failed)
            });
            let mut received = 0u64;
            let is_ours = |f: &[u8]| {
                f.len() == frame_len
                    && be16(f, 12) == ETH_IPV4
                    && f[23] == IP_UDP
                    && be16(f, 36) == 9
            };
            let start = Instant::now();
            let limit = Duration::from_secs_f64(secs);
            while start.elapsed() < limit {
                let mut any = false;
                for _ in 0..256 {
                    let got = port
                        .receive(&mut |_, f| received += u64::from(is_ours(f)))
                        .expect("receive");
                    any |= got;
                    if !got {
                        break;
                    }
                }
                if !any {
                    port.wait_readable(Duration::from_millis(1)).expect("poll");
                }
            }
            let elapsed = start.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            (received, elapsed, sender.join().expect("sender"))
        });
        std::thread::sleep(Duration::from_millis(50));
        while recv_one(&mut lab.port).is_some() {}
        let after = lab.ns.link_stats(&dev).expect("stats");
        println!(
            "  receive  {frame_len:>4} B: {:>9.0} frames/s ({:.2} Gbit/s), {received} read; \
             sender {} sent ({} errors), kernel sent {} dropped {} (queue full)",
            received as f64 / elapsed,
            received as f64 * frame_len as f64 * 8.0 / elapsed / 1e9,
            generated.0,
            generated.1,
            after.tx_packets - before.tx_packets,
            after.tx_dropped - before.tx_dropped,
        );
        assert!(received > 0, "nothing received");
    }
}

/// The same ping, answered by the NIC-level responder: frames go through the
/// RX ring (deposited into segments), replies are copy-on-write snapshots of
/// the requests posted on the TX ring and gathered line by line into writev.
#[test]
fn kernel_pings_the_nic_responder_through_the_rings() {
    if skip() || skip_ping() {
        return;
    }
    let Lab {
        port, ns, our_ip, ..
    } = lab(3);
    let mem = hicamp::Memory::new(hicamp::Config {
        capacity_lines: 1 << 16,
        map_capacity: 1024,
        ..hicamp::Config::default()
    })
    .expect("memory");
    let mut nic = nicdma::Nic::new(&mem, port, nicdma::NicConfig::default()).expect("nic");
    let mut resp = nicdma::responder::Responder::new(OUR_MAC, our_ip);
    let mut child = ns
        .command("ping")
        .args(["-c", "5", "-i", "0.2", "-W", "1", &ip_str(our_ip)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping in the namespace");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "ping did not finish in 30 s");
        nic.port()
            .wait_readable(Duration::from_millis(10))
            .expect("poll");
        resp.poll(&mut nic).expect("responder");
    }
    let out = child.wait_with_output().expect("ping output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    println!(
        "responder: {:?}; nic: {:?}",
        resp.counters(),
        nic.counters()
    );
    assert!(
        out.status.success() && stdout.contains(" 5 received"),
        "{stdout}"
    );
    assert_eq!(resp.counters().echo_replies, 5);
    assert!(resp.counters().arp_replies >= 1);
    assert_eq!(nic.counters().payload_bytes_copied, 0);
    assert!(nic.counters().tx_frames >= 6 && nic.counters().rx_frames >= 6);
    drop(nic); // the device goes before the namespace
    drop(ns);
}
