//! Bulk TCP transfer between segstack on a TAP device (or, with `--backend
//! af_xdp` / `--backend af_packet`, on a veth through that ring backend) and
//! the Linux kernel, both directions, 64 MiB per iteration:
//!
//! - segstack -> kernel: the payload is one segment sent as snapshots
//!   (headers go into headroom, checksums and segmentation to the "NIC"),
//!   received by a std `TcpStream` in a namespace;
//! - kernel -> segstack: a std `TcpStream` in the namespace writes the bytes,
//!   segstack receives them as payload snapshots of the RX segments (the
//!   kernel hands 64 KiB TSO frames over the TAP) and drops them;
//! - segstack -> kernel again over TAP with the port's TX writer thread
//!   (`TapPort::set_tx_thread`, frames of at least 2048 bytes: what stack mode
//!   uses), so the kernel's receive of each frame runs beside segstack;
//! - baseline, same run: the kernel sending to itself over loopback TCP.
//!
//! Needs root (TAP, namespaces); without it the segstack side is skipped with
//! a message and only the baseline runs (under `CI=true` it fails instead).
//!
//! The segstack loop is the backend-generic one of `hicamp_benches::net`
//! (the `backends` bench runs it too). `BULK_PROFILE=tx:<MiB>[:<reps>]` (with
//! `BULK_TX_THREAD` set: through the writer thread) or
//! `rx:<MiB>[:<reps>]` runs no benchmark: transfers of that size, the
//! segstack side inside `BulkRig::send_once` / `BulkRig::recv_once`, for
//! `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect=*send_once*` (instructions per MiB) or perf; each
//! transfer prints its wall time and segstack's thread's CPU time (which a
//! loaded machine disturbs far less).

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hicamp_benches::net::{self, BulkRig};
use hicamp_benches::{median_ns, print_header, print_vs, random_bytes, subject, Group, Profile};
use nicdma::backend::AnyPort;
use nicdma::packet::PacketPort;
use nicdma::tap::{netns_supported, NetNs, TapPort};
use nicdma::xdp::XdpPort;
use nicdma::Port;
use segstack::iface::Interface;

const LEN: usize = 64 << 20;

fn len() -> usize {
    std::env::var("BULK_PROFILE")
        .ok()
        .and_then(|s| {
            s.split(':')
                .nth(1)
                .map(|m| m.parse::<usize>().expect("MiB") << 20)
        })
        .unwrap_or(LEN)
}

/// The segstack side over `kind`: `tap` (a TAP device whose kernel side is
/// moved into a new namespace, 10.81.0.1/24; segstack is 10.81.0.2), or a
/// ring backend (`af_xdp`, `af_packet`) on the veth lab's `p0` with the
/// kernel peer in namespace A (see [`net::veth_lab`]).
///
/// `tx_thread`: the TAP port writes frames of at least 2048 bytes from its writer thread
/// (`TapPort::set_tx_thread`, as stack mode does), not from segstack's.
fn seg_rig(kind: &str, tx_thread: bool) -> BulkRig<AnyPort> {
    if kind == "tap" {
        let mut tap = TapPort::open("").expect("TAP");
        if tx_thread {
            tap.set_tx_thread(Some(2048));
        }
        let ns = NetNs::create().expect("namespace");
        let dev = tap.name().to_owned();
        ns.adopt(&dev, Some("10.81.0.1/24")).expect("adopt");
        let ip = Ipv4Addr::new(10, 81, 0, 2);
        let cfg = net::bulk_config([2, 0, 0, 0x81, 0, 2], ip, 24);
        let iface = Interface::new(&net::bulk_memory(), AnyPort::Tap(tap), cfg).expect("iface");
        return BulkRig::new(iface, Arc::new(ns), ip, len());
    }
    let lab = net::veth_lab();
    let port = lab
        .b
        .run_in(|| match kind {
            "af_packet" => PacketPort::open("p0").map(AnyPort::AfPacket),
            "af_xdp" => XdpPort::open("p0").map(AnyPort::AfXdp),
            other => panic!("--backend {other}: the bulk bench runs over tap, af_xdp or af_packet"),
        })
        .expect("enter B")
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    let cfg = net::bulk_config(port.mac().expect("mac"), net::SEG_IP, 24);
    let iface = Interface::new(&net::bulk_memory(), port, cfg).expect("iface");
    // The lab lives as long as the rig: A is the peer, B holds the port's
    // device.
    let mut rig = BulkRig::new(iface, Arc::clone(&lab.a), net::SEG_IP, len());
    rig.keep.push(Arc::clone(&lab.b));
    rig
}

fn kernel_once(data: &Arc<Vec<u8>>) -> Duration {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let d = Arc::clone(data);
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.write_all(&d).expect("write");
    });
    let mut s = TcpStream::connect(addr).expect("connect");
    let t = Instant::now();
    let n = net::drain(&mut s);
    let d = t.elapsed();
    server.join().expect("server");
    assert_eq!(n, data.len());
    d
}

fn benches(c: &mut Criterion, kind: &str) {
    let mut g = Group::new(c, "bulk", Profile::Large);
    g.throughput_bytes(LEN as u64);
    // Skips the segstack side with a message, or fails under CI=true.
    if !testkit::require(netns_supported(), "root and iproute2 (segstack over TAP)") {
        g.bench(
            &format!("segstack-{kind}-to-kernel"),
            || seg_rig(kind, false),
            |r, iters| (0..iters).map(|_| r.send_once()).sum(),
        );
        if kind == "tap" {
            g.bench(
                "segstack-tap-txthread-to-kernel",
                || seg_rig(kind, true),
                |r, iters| (0..iters).map(|_| r.send_once()).sum(),
            );
        }
        g.bench(
            &format!("kernel-to-segstack-{kind}"),
            || seg_rig(kind, false),
            |r, iters| (0..iters).map(|_| r.recv_once()).sum(),
        );
    }
    g.bench(
        "kernel-loopback",
        || Arc::new(random_bytes(LEN, 0xb0)),
        |d, iters| (0..iters).map(|_| kernel_once(d)).sum(),
    );
    g.finish();
}

fn main() {
    let kind = net::backend_choice("tap");
    if let Ok(spec) = std::env::var("BULK_PROFILE") {
        let mut r = seg_rig(&kind, std::env::var_os("BULK_TX_THREAD").is_some());
        let n = len();
        let reps: usize = spec
            .split(':')
            .nth(2)
            .map_or(1, |x| x.parse().expect("reps"));
        for _ in 0..reps {
            let d = if spec.starts_with("rx") {
                r.recv_once()
            } else {
                r.send_once()
            };
            let cpu = r.last_cpu.map_or(String::new(), |c| {
                format!(
                    "; segstack's thread on CPU {:.1} ms ({:.2} GB per CPU-second)",
                    c.as_secs_f64() * 1e3,
                    n as f64 / c.as_secs_f64().max(1e-9) / 1e9
                )
            });
            println!(
                "bulk profile {spec}: {n} bytes in {d:?} ({:.2} GB/s){cpu}",
                n as f64 / d.as_secs_f64() / 1e9
            );
        }
        // Skip the teardown (releasing the object) in profiles.
        std::process::exit(0);
    }
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &kind);
    c.final_summary();
    print_header(&format!(
        "Bulk TCP, 64 MiB between segstack (over {kind}) and the kernel"
    ));
    let subjects = [
        (
            format!("segstack over {kind} -> kernel"),
            format!("bulk/segstack-{kind}-to-kernel"),
        ),
        (
            "segstack over tap (TX writer thread) -> kernel".to_string(),
            "bulk/segstack-tap-txthread-to-kernel".to_string(),
        ),
        (
            format!("kernel -> segstack over {kind}"),
            format!("bulk/kernel-to-segstack-{kind}"),
        ),
    ];
    for (label, key) in subjects {
        if median_ns(&key).is_some() {
            print_vs(
                &subject(label, key, Some(LEN as u64)),
                &subject(
                    "kernel -> kernel over loopback",
                    "bulk/kernel-loopback",
                    Some(LEN as u64),
                ),
                None,
            );
        }
    }
}
