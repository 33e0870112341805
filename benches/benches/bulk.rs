//! Bulk TCP transfer into the Linux kernel: a segstack sender on a TAP device
//! (the payload is one segment sent as snapshots; headers go into headroom,
//! checksums and segmentation to the "NIC"), received by a std `TcpStream`
//! in a namespace; against the kernel sending to itself over loopback TCP in
//! the same run. 64 MiB per iteration.
//!
//! Needs root (TAP, namespaces); without it the segstack side is skipped with
//! a message and only the baseline runs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hicamp::{Config, Memory};
use hicamp_benches::{median_ns, print_header, print_vs, random_bytes, subject, Group, Profile};
use nicdma::tap::{netns_supported, NetNs, TapPort};
use nicdma::Port;
use segstack::iface::{IfaceConfig, Interface};
use segstack::Payload;

const LEN: usize = 64 << 20;

struct SegRig {
    iface: Interface<TapPort>,
    object: Payload,
    ns: Arc<NetNs>,
    t0: Instant,
    port: u16,
}

fn seg_rig() -> SegRig {
    let tap = TapPort::open("").expect("TAP");
    let ns = NetNs::create().expect("namespace");
    let dev = tap.name().to_owned();
    ns.adopt(&dev, Some("10.81.0.1/24")).expect("adopt");
    let mem = Memory::new(Config {
        capacity_lines: 1 << 22,
        map_capacity: 1 << 16,
        ..Config::default()
    })
    .expect("memory");
    let iface = Interface::new(
        &mem,
        tap,
        IfaceConfig::new([2, 0, 0, 0x81, 0, 2], Ipv4Addr::new(10, 81, 0, 2), 24),
    )
    .expect("iface");
    let object = Payload::from_bytes(&mem, &random_bytes(LEN, 0xb0)).expect("object");
    SegRig {
        iface,
        object,
        ns: Arc::new(ns),
        t0: Instant::now(),
        port: 5000,
    }
}

/// One 64 MiB download by the kernel from segstack; returns its duration.
fn seg_once(r: &mut SegRig) -> Duration {
    r.port += 1;
    let port = r.port;
    let lst = r.iface.tcp_listen(port).expect("listen");
    let ns = Arc::clone(&r.ns);
    let (tx, rx) = mpsc::channel();
    let client = std::thread::spawn(move || {
        ns.enter_current_thread().expect("enter namespace");
        let mut s = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::new(10, 81, 0, 2), port))
            .expect("connect");
        let t = Instant::now();
        let n = drain(&mut s);
        tx.send(()).ok();
        (n, t.elapsed())
    });
    let mut conn = None;
    let mut left = r.object.clone();
    let mut closed = false;
    loop {
        let now = r.t0.elapsed().as_nanos() as u64;
        r.iface.poll(now).expect("poll");
        if conn.is_none() {
            conn = r.iface.tcp_accept(lst).expect("accept");
        }
        if let Some(c) = conn {
            r.iface.send_some(c, &mut left).expect("send");
            if left.is_empty() && !closed {
                r.iface.close(c).expect("close");
                closed = true;
            }
        }
        if rx.try_recv().is_ok() {
            break;
        }
        let wait = r.iface.poll_at().map_or(Duration::from_millis(1), |t| {
            Duration::from_nanos(t.saturating_sub(now)).min(Duration::from_millis(1))
        });
        r.iface.nic().port().wait_readable(wait).expect("wait");
    }
    let (n, d) = client.join().expect("client");
    assert_eq!(n, LEN);
    r.iface.close(lst).expect("close listener");
    // Let the closing handshakes finish.
    for _ in 0..50 {
        let now = r.t0.elapsed().as_nanos() as u64;
        r.iface.poll(now).expect("poll");
        std::thread::sleep(Duration::from_micros(200));
    }
    d
}

/// Reads `s` to its end; returns the bytes read.
fn drain(s: &mut TcpStream) -> usize {
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return n,
            Ok(k) => n += k,
            Err(e) => panic!("read: {e}"),
        }
    }
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
    let n = drain(&mut s);
    let d = t.elapsed();
    server.join().expect("server");
    assert_eq!(n, LEN);
    d
}

fn benches(c: &mut Criterion) {
    let mut g = Group::new(c, "bulk", Profile::Large);
    g.throughput_bytes(LEN as u64);
    if let Err(e) = netns_supported() {
        eprintln!("bulk: segstack over TAP skipped: {e} (needs root)");
    } else {
        g.bench("segstack-tap-to-kernel", seg_rig, |r, iters| {
            (0..iters).map(|_| seg_once(r)).sum()
        });
    }
    g.bench(
        "kernel-loopback",
        || Arc::new(random_bytes(LEN, 0xb0)),
        |d, iters| (0..iters).map(|_| kernel_once(d)).sum(),
    );
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    print_header("Bulk TCP, 64 MiB into the kernel");
    if median_ns("bulk/segstack-tap-to-kernel").is_some() {
        print_vs(
            &subject(
                "segstack over TAP -> kernel",
                "bulk/segstack-tap-to-kernel",
                Some(LEN as u64),
            ),
            &subject(
                "kernel -> kernel over loopback",
                "bulk/kernel-loopback",
                Some(LEN as u64),
            ),
            None,
        );
    }
}
