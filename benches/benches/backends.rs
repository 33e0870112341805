//! The kernel backends over one veth pair, against the kernel's own socket
//! path over the same veth, in the same run:
//!
//! - TX and RX frames/s at 64 B and 1500 B for AF_PACKET and AF_XDP (the
//!   port's transmit: the gather into the kernel-shared ring, offloads, the
//!   batched kick; its receive: the frame lent out of the ring and copied
//!   once, as the NIC's deposit copies it into lines), against a kernel UDP
//!   socket sending, or receiving, the same frames over the veth;
//! - segstack bulk TCP over AF_XDP (`--backend af_packet`: AF_PACKET), 64
//!   MiB each way, against kernel TCP over the same veth pair; the segstack
//!   loop is the backend-generic one of `hicamp_benches::net`, which the
//!   `bulk` bench runs over TAP.
//!
//! The lab: namespace A holds `k0` (the kernel peer, 10.83.0.1/24,
//! offloads off: the ring backends see wire frames), namespace B holds `p0`,
//! where the ports bind (segstack is 10.83.0.2) and where B's own kernel,
//! for the baselines, is 10.83.0.3. RX is measured against a sender thread
//! (one `send` per frame), so both sides are sender-limited on a 2-CPU VM:
//! read the RX ratios as "keeps up", not as headroom.
//!
//! Needs root, iproute2 and ethtool; without them it says why and skips (it
//! fails under CI=true). Under `cargo test --benches` every routine runs once
//! with 1 MiB transfers.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hicamp_benches::net::{
    self, veth_lab as lab, BulkRig, VethLab as Lab, KERNEL_A, KERNEL_B, SEG_IP,
};
use hicamp_benches::{
    median_ns, print_header, print_vs, random_bytes, run_mode, subject, Group, Profile, RunMode,
};
use nicdma::backend::AnyPort;
use nicdma::packet::PacketPort;
use nicdma::tap::{netns_supported, NetNs};
use nicdma::xdp::{XdpConfig, XdpMode, XdpPort};
use nicdma::{Port, TxOutcome, VirtioNetHdr};
use segstack::iface::Interface;

/// The last copy counters of each port bench, printed in the summary.
static COPIES: std::sync::Mutex<Vec<(String, nicdma::PortCopies)>> =
    std::sync::Mutex::new(Vec::new());

/// The kernel's drop counters of each AF_XDP port bench.
static XDP_STATS: std::sync::Mutex<Vec<(String, nicdma::xdp::XdpStats)>> =
    std::sync::Mutex::new(Vec::new());

fn record_copies(key: String, port: &AnyPort) {
    if let AnyPort::AfXdp(p) = port {
        if let Ok(st) = p.stats() {
            let mut v = XDP_STATS.lock().unwrap_or_else(|e| e.into_inner());
            v.retain(|(k, _)| *k != key);
            v.push((key.clone(), st));
        }
    }
    let mut v = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    v.retain(|(k, _)| *k != key);
    v.push((key, port.copies()));
}

fn bulk_len() -> usize {
    if run_mode() == RunMode::Test {
        1 << 20
    } else {
        64 << 20
    }
}

/// A `len`-byte UDP frame from segstack's address to the kernel's discard
/// port (no UDP checksum).
fn udp_frame(lab: &Lab, len: usize) -> Vec<u8> {
    testkit::frame::udp_frame(
        (lab.k0_mac, lab.p0_mac),
        (SEG_IP.octets(), KERNEL_A.octets()),
        (12345, 9),
        &vec![0x5a; len - 42],
        testkit::frame::UdpChecksum::Zero,
    )
}

fn open_port(lab: &Lab, kind: &str) -> AnyPort {
    lab.b
        .run_in(|| match kind {
            "af_packet" => PacketPort::open("p0").map(AnyPort::AfPacket),
            _ => XdpPort::with_config("p0", xdp_config()).map(AnyPort::AfXdp),
        })
        .expect("enter B")
        .unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// The AF_XDP ports' configuration: the defaults, but for `XDP_SG=0` (no
/// multi-buffer: the port then refuses the jumbo round's MTU, so use it
/// with `BACKENDS_JUMBO_MTU=0`), `XDP_CSUM=0` (no TX checksum offload) and
/// `XDP_MODE=native|auto` (where the program attaches), for comparisons.
fn xdp_config() -> XdpConfig {
    let off = |var: &str| std::env::var(var).is_ok_and(|v| v == "0");
    XdpConfig {
        multi_buffer: !off("XDP_SG"),
        csum_offload: !off("XDP_CSUM"),
        mode: match std::env::var("XDP_MODE").as_deref() {
            Ok("native") => XdpMode::Native,
            Ok("auto") => XdpMode::Auto,
            _ => XdpMode::Generic,
        },
        ..XdpConfig::default()
    }
}

/// Transmits `iters` copies of `frame`, one flush per 64; returns the time.
fn port_tx(port: &mut AnyPort, frame: &[u8], iters: u64) -> Duration {
    let vnet = VirtioNetHdr::default();
    let chunks: Vec<&[u8]> = frame.chunks(64).collect();
    let t = Instant::now();
    let mut sent = 0;
    while sent < iters {
        let mut batch = 0;
        while batch < 64 && sent < iters {
            match port.transmit(&vnet, &chunks).expect("transmit") {
                TxOutcome::Sent => {
                    sent += 1;
                    batch += 1;
                }
                TxOutcome::Full => break,
            }
        }
        port.flush().expect("flush");
    }
    t.elapsed()
}

/// A kernel UDP socket in `ns` sending `payload`-byte datagrams to `to`
/// until `stop`.
fn sender(ns: Arc<NetNs>, to: SocketAddrV4, payload: usize, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        ns.enter_current_thread().expect("enter");
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect(to).expect("connect");
        let buf = vec![0x5au8; payload];
        while !stop.load(Ordering::Relaxed) {
            let _ = s.send(&buf);
        }
    });
}

/// Receives `iters` frames through `port` (each copied once, as the NIC's
/// deposit copies it); returns the time.
fn port_rx(port: &mut AnyPort, iters: u64) -> Duration {
    let mut sink = vec![0u8; 2048];
    let t = Instant::now();
    let mut got = 0;
    let mut idle = Instant::now();
    while got < iters {
        let took = port
            .receive(&mut |_, f| {
                let n = f.len().min(sink.len());
                sink[..n].copy_from_slice(&f[..n]);
            })
            .expect("receive");
        if took {
            got += 1;
            idle = Instant::now();
        } else {
            assert!(
                idle.elapsed() < Duration::from_secs(10),
                "no frames for 10 s"
            );
            nicdma::port::wait_readable(&*port, Duration::from_millis(1)).expect("poll");
        }
    }
    t.elapsed()
}

/// The jumbo MTU of the second bulk round (`BACKENDS_JUMBO_MTU`, default
/// 64000; 0 skips the round): AF_XDP sends and receives it as multi-buffer
/// frames (16-17 UMEM frames, one descriptor each).
fn jumbo_mtu() -> u32 {
    std::env::var("BACKENDS_JUMBO_MTU")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64_000)
}

/// Sets the MTU of both veth ends.
fn set_mtu(lab: &Lab, mtu: u32) {
    let m = mtu.to_string();
    lab.a
        .ip(&["link", "set", "dev", "k0", "mtu", &m])
        .expect("k0 mtu");
    lab.b
        .ip(&["link", "set", "dev", "p0", "mtu", &m])
        .expect("p0 mtu");
}

/// segstack over the `kind` port on the lab's `p0`, the kernel peer in A;
/// its MTU and MSS follow the interface's.
fn bulk_rig(lab: &Lab, kind: &str) -> BulkRig<AnyPort> {
    let port = open_port(lab, kind);
    let mut cfg = net::bulk_config(port.mac().expect("mac"), SEG_IP, 24);
    let mtu = port.mtu().map_or(1500, |m| m as usize);
    cfg.mtu = mtu.min(port.max_frame().saturating_sub(14));
    cfg.tcp.mss = (cfg.mtu - 40).min(65_495) as u16;
    let iface = Interface::new(&net::bulk_memory(), port, cfg).expect("iface");
    let mut r = BulkRig::new(iface, Arc::clone(&lab.a), SEG_IP, bulk_len());
    r.port = 6000;
    r
}

/// Kernel TCP over the same veth: B's kernel (`from_b`) or A's sends the
/// data to the other; returns the receiver's time.
fn kernel_tcp_once(lab: &Lab, data: &Arc<Vec<u8>>, from_b: bool) -> Duration {
    let (srv_ns, cli_ns) = if from_b {
        (Arc::clone(&lab.b), Arc::clone(&lab.a))
    } else {
        (Arc::clone(&lab.a), Arc::clone(&lab.b))
    };
    let srv_ip = if from_b { KERNEL_B } else { KERNEL_A };
    let (ltx, lrx) = std::sync::mpsc::channel();
    let d = Arc::clone(data);
    let server = std::thread::spawn(move || {
        srv_ns.enter_current_thread().expect("enter");
        let l = TcpListener::bind(SocketAddrV4::new(srv_ip, 0)).expect("bind");
        ltx.send(l.local_addr().expect("addr")).expect("send addr");
        let (mut s, _) = l.accept().expect("accept");
        s.write_all(&d).expect("write");
    });
    let addr = lrx.recv().expect("addr");
    let client = std::thread::spawn(move || {
        cli_ns.enter_current_thread().expect("enter");
        let mut s = TcpStream::connect(addr).expect("connect");
        let t = Instant::now();
        let n = net::drain(&mut s);
        (n, t.elapsed())
    });
    let (n, d) = client.join().expect("client");
    server.join().expect("server");
    assert_eq!(n, data.len());
    d
}

fn benches(c: &mut Criterion, kind: &str) {
    if testkit::require(netns_supported(), "root and iproute2 (the backends bench)")
        || testkit::require_program("ethtool", "--version")
    {
        return;
    }
    let lab = lab();
    let mut g = Group::new(c, "backends", Profile::Small);
    for size in [64usize, 1500] {
        // TX: the kernel's UDP socket in B sends to A over the veth.
        let payload = size - 42;
        g.bench(
            &format!("tx-kernel-udp-{size}"),
            || {
                let b = Arc::clone(&lab.b);
                let s = b
                    .run_in(|| UdpSocket::bind(SocketAddrV4::new(KERNEL_B, 0)))
                    .expect("enter")
                    .expect("bind");
                s.connect(SocketAddrV4::new(KERNEL_A, 9)).expect("connect");
                (s, vec![0x5au8; payload])
            },
            |(s, buf), iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    let _ = s.send(buf);
                }
                t.elapsed()
            },
        );
        for kind in ["af_packet", "af_xdp"] {
            g.bench(
                &format!("tx-{kind}-{size}"),
                || (open_port(&lab, kind), udp_frame(&lab, size)),
                |(p, f), iters| {
                    let d = port_tx(p, f, iters);
                    record_copies(format!("tx {kind} {size} B"), p);
                    d
                },
            );
        }
        // RX: A's kernel sends UDP to B over the veth.
        g.bench(
            &format!("rx-kernel-udp-{size}"),
            || {
                let s = lab
                    .b
                    .run_in(|| UdpSocket::bind(SocketAddrV4::new(KERNEL_B, 7000)))
                    .expect("enter")
                    .expect("bind");
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let stop = Arc::new(AtomicBool::new(false));
                sender(
                    Arc::clone(&lab.a),
                    SocketAddrV4::new(KERNEL_B, 7000),
                    payload,
                    Arc::clone(&stop),
                );
                (s, StopOnDrop(stop), vec![0u8; 2048])
            },
            |(s, _, buf), iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    s.recv(buf).expect("recv");
                }
                t.elapsed()
            },
        );
        for kind in ["af_packet", "af_xdp"] {
            g.bench(
                &format!("rx-{kind}-{size}"),
                || {
                    let p = open_port(&lab, kind);
                    let stop = Arc::new(AtomicBool::new(false));
                    sender(
                        Arc::clone(&lab.a),
                        SocketAddrV4::new(SEG_IP, 7000),
                        payload,
                        Arc::clone(&stop),
                    );
                    (p, StopOnDrop(stop))
                },
                |(p, _), iters| {
                    let d = port_rx(p, iters);
                    record_copies(format!("rx {kind} {size} B"), p);
                    d
                },
            );
        }
    }
    g.finish();

    let data = Arc::new(random_bytes(bulk_len(), 0xb2));
    let jumbo = jumbo_mtu();
    for mtu in [1500, jumbo] {
        if mtu == 0 {
            continue;
        }
        set_mtu(&lab, mtu);
        bulk_group(c, &lab, kind, &data, &bulk_group_name(mtu));
    }
    set_mtu(&lab, 1500);
}

/// The bulk group's name at `mtu` (`backends-bulk` at 1500).
fn bulk_group_name(mtu: u32) -> String {
    if mtu == 1500 {
        "backends-bulk".into()
    } else {
        format!("backends-bulk-mtu{mtu}")
    }
}

/// segstack over `kind` both ways, and kernel TCP both ways, over the lab's
/// veth at its current MTU.
fn bulk_group(c: &mut Criterion, lab: &Lab, kind: &str, data: &Arc<Vec<u8>>, name: &str) {
    let mut g = Group::new(c, name, Profile::Large);
    g.throughput_bytes(bulk_len() as u64);
    g.bench(
        "kernel-tcp-veth-b-to-a",
        || (),
        |(), iters| (0..iters).map(|_| kernel_tcp_once(lab, data, true)).sum(),
    );
    g.bench(
        "kernel-tcp-veth-a-to-b",
        || (),
        |(), iters| (0..iters).map(|_| kernel_tcp_once(lab, data, false)).sum(),
    );
    g.bench(
        &format!("segstack-{kind}-to-kernel"),
        || bulk_rig(lab, kind),
        |r, iters| {
            let d = (0..iters).map(|_| r.send_once()).sum();
            record_copies(format!("{name} segstack -> kernel"), r.iface.nic().port());
            d
        },
    );
    g.bench(
        &format!("kernel-to-segstack-{kind}"),
        || bulk_rig(lab, kind),
        |r, iters| {
            let d = (0..iters).map(|_| r.recv_once()).sum();
            record_copies(format!("{name} kernel -> segstack"), r.iface.nic().port());
            d
        },
    );
    g.finish();
}

/// Stops a sender thread when the bench's state drops.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    // The bulk transfers' backend (`--backend af_packet` for the other).
    let kind = net::backend_choice("af_xdp");
    let kind = match kind.as_str() {
        "af_xdp" | "af_packet" => kind,
        other => {
            eprintln!("--backend {other}: the backends bench runs its bulk transfers over af_xdp or af_packet (TAP: the bulk bench)");
            std::process::exit(2);
        }
    };
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &kind);
    c.final_summary();
    print_header("Backends over one veth pair vs the kernel's socket path over the same veth");
    for size in [64, 1500] {
        for dir in ["tx", "rx"] {
            for kind in ["af_packet", "af_xdp"] {
                let key = format!("backends/{dir}-{kind}-{size}");
                let base = format!("backends/{dir}-kernel-udp-{size}");
                if let (Some(n), Some(b)) = (median_ns(&key), median_ns(&base)) {
                    println!(
                        "{dir} {size} B: {kind} {:.0} frames/s ; kernel UDP socket {:.0} frames/s ; ratio {:.2}x",
                        1e9 / n,
                        1e9 / b,
                        b / n
                    );
                }
            }
        }
    }
    let len = Some(bulk_len() as u64);
    if hicamp_benches::measuring() {
        println!("port copy counters (cumulative per port; rx_copy_bytes: the one RX copy out of the kernel-shared region into lines; tx_gather_bytes: the DMA gather into it):");
        for (k, c) in COPIES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            println!(
                "  {k}: rx {} frames ({} coalesced into GSO frames), {} B copied, {} dropped; tx {} frames, {} B gathered, {} TSO segments, {} checksums left to the kernel; {} kicks",
                c.rx_frames, c.rx_coalesced, c.rx_copy_bytes, c.rx_dropped, c.tx_frames, c.tx_gather_bytes, c.tx_tso_segments, c.tx_csum_offloaded, c.kicks
            );
        }
        println!("AF_XDP sockets' kernel counters (XDP_STATISTICS, cumulative per port):");
        for (k, st) in XDP_STATS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            println!("  {k}: {st:?}");
        }
    }
    for mtu in [1500, jumbo_mtu()] {
        if mtu == 0 {
            continue;
        }
        let g = bulk_group_name(mtu);
        println!("bulk 64 MiB over the veth at MTU {mtu}:");
        print_vs(
            &subject(
                format!("segstack over {kind} -> kernel (MTU {mtu})"),
                format!("{g}/segstack-{kind}-to-kernel"),
                len,
            ),
            &subject(
                format!("kernel TCP over the veth (B -> A, MTU {mtu})"),
                format!("{g}/kernel-tcp-veth-b-to-a"),
                len,
            ),
            Some(hicamp_benches::Target::MinRatio(1.0)),
        );
        print_vs(
            &subject(
                format!("kernel -> segstack over {kind} (MTU {mtu})"),
                format!("{g}/kernel-to-segstack-{kind}"),
                len,
            ),
            &subject(
                format!("kernel TCP over the veth (A -> B, MTU {mtu})"),
                format!("{g}/kernel-tcp-veth-a-to-b"),
                len,
            ),
            Some(hicamp_benches::Target::MinRatio(1.0)),
        );
    }
}
