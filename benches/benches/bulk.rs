//! Bulk TCP transfer between segstack on a TAP device and the Linux kernel,
//! both directions, 64 MiB per iteration:
//!
//! - segstack -> kernel: the payload is one segment sent as snapshots
//!   (headers go into headroom, checksums and segmentation to the "NIC"),
//!   received by a std `TcpStream` in a namespace;
//! - kernel -> segstack: a std `TcpStream` in the namespace writes the bytes,
//!   segstack receives them as payload snapshots of the RX segments (the
//!   kernel hands 64 KiB TSO frames over the TAP) and drops them;
//! - baseline, same run: the kernel sending to itself over loopback TCP.
//!
//! Needs root (TAP, namespaces); without it the segstack side is skipped with
//! a message and only the baseline runs (under `CI=true` it fails instead).
//!
//! `BULK_PROFILE=tx:<MiB>[:<reps>]` or `rx:<MiB>[:<reps>]` runs no benchmark:
//! transfers of that size, the segstack side inside `seg_once` / `seg_rx_once`, for
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=*seg_once*`
//! (instructions per MiB) or perf.

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
    let mut cfg = IfaceConfig::new([2, 0, 0, 0x81, 0, 2], Ipv4Addr::new(10, 81, 0, 2), 24);
    // Send and receive buffers of 4 MiB (`BULK_BUF_KIB` overrides): the send
    // queue holds snapshots, so depth costs references, not bytes. With the
    // default 256 KiB a bulk sender over TAP spends most of its time waiting
    // for the ACK that frees the next 64 KiB (about 4 TSO frames per poll;
    // 45 with 4 MiB, 1.4-1.8x the throughput both ways). 4 MiB is also the
    // interface's default send buffer now (the receive buffer's default
    // stays 256 KiB); set here so that `BULK_BUF_KIB` moves both.
    let kib = std::env::var("BULK_BUF_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(4096);
    cfg.tcp.send_buf = kib << 10;
    cfg.tcp.recv_buf = kib << 10;
    let iface = Interface::new(&mem, tap, cfg).expect("iface");
    let object = Payload::from_bytes(&mem, &random_bytes(len(), 0xb0)).expect("object");
    SegRig {
        iface,
        object,
        ns: Arc::new(ns),
        t0: Instant::now(),
        port: 5000,
    }
}

/// One 64 MiB download by the kernel from segstack; returns its duration.
#[inline(never)]
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
    if std::env::var_os("BULK_DEBUG").is_some() {
        if let Some(c) = conn {
            if let Ok(t) = r.iface.tcp(c) {
                eprintln!("{:?}", t.stats());
            }
        }
        eprintln!("{:?}\n{:?}", r.iface.stats(), r.iface.nic().counters());
    }
    assert_eq!(n, r.object.len());
    r.iface.close(lst).expect("close listener");
    settle(r);
    d
}

/// Lets the closing handshakes finish.
fn settle(r: &mut SegRig) {
    for _ in 0..50 {
        let now = r.t0.elapsed().as_nanos() as u64;
        r.iface.poll(now).expect("poll");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// One upload of `data` by the kernel into segstack, which receives it as
/// payload snapshots and drops them; returns the time from the kernel's
/// connect to segstack's end of stream.
#[inline(never)]
fn seg_rx_once(r: &mut SegRig, data: &Arc<Vec<u8>>) -> Duration {
    r.port += 1;
    let port = r.port;
    let lst = r.iface.tcp_listen(port).expect("listen");
    let ns = Arc::clone(&r.ns);
    let d = Arc::clone(data);
    let t = Instant::now();
    let client = std::thread::spawn(move || {
        ns.enter_current_thread().expect("enter namespace");
        let mut s = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::new(10, 81, 0, 2), port))
            .expect("connect");
        s.write_all(&d).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        // Wait for segstack's FIN, so the socket is not reset.
        let mut b = [0u8; 16];
        let _ = s.read(&mut b);
    });
    let mut conn = None;
    let mut got = 0usize;
    let elapsed = loop {
        let now = r.t0.elapsed().as_nanos() as u64;
        r.iface.poll(now).expect("poll");
        if conn.is_none() {
            conn = r.iface.tcp_accept(lst).expect("accept");
        }
        if let Some(c) = conn {
            match r.iface.recv(c, usize::MAX) {
                Ok(chunks) if chunks.is_empty() => {
                    let e = t.elapsed();
                    r.iface.close(c).expect("close");
                    break e;
                }
                Ok(chunks) => got += chunks.iter().map(Payload::len).sum::<usize>(),
                Err(segstack::iface::IfaceError::WouldBlock) => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
        let wait = r.iface.poll_at().map_or(Duration::from_millis(1), |t| {
            Duration::from_nanos(t.saturating_sub(now)).min(Duration::from_millis(1))
        });
        r.iface.nic().port().wait_readable(wait).expect("wait");
    };
    // Send our FIN, then let the client see it.
    for _ in 0..5 {
        let now = r.t0.elapsed().as_nanos() as u64;
        r.iface.poll(now).expect("poll");
    }
    client.join().expect("client");
    assert_eq!(got, data.len());
    r.iface.close(lst).expect("close listener");
    settle(r);
    elapsed
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
    assert_eq!(n, data.len());
    d
}

fn benches(c: &mut Criterion) {
    let mut g = Group::new(c, "bulk", Profile::Large);
    g.throughput_bytes(LEN as u64);
    // Skips the segstack side with a message, or fails under CI=true.
    if !testkit::require(netns_supported(), "root and iproute2 (segstack over TAP)") {
        g.bench("segstack-tap-to-kernel", seg_rig, |r, iters| {
            (0..iters).map(|_| seg_once(r)).sum()
        });
        g.bench(
            "kernel-to-segstack-tap",
            || (seg_rig(), Arc::new(random_bytes(LEN, 0xb1))),
            |(r, d), iters| (0..iters).map(|_| seg_rx_once(r, d)).sum(),
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
    if let Ok(spec) = std::env::var("BULK_PROFILE") {
        let mut r = seg_rig();
        let n = len();
        let reps: usize = spec
            .split(':')
            .nth(2)
            .map_or(1, |x| x.parse().expect("reps"));
        let data = Arc::new(random_bytes(n, 0xb1));
        for _ in 0..reps {
            let d = if spec.starts_with("rx") {
                seg_rx_once(&mut r, &data)
            } else {
                seg_once(&mut r)
            };
            println!(
                "bulk profile {spec}: {n} bytes in {d:?} ({:.2} GB/s)",
                n as f64 / d.as_secs_f64() / 1e9
            );
        }
        // Skip the teardown (releasing the object) in profiles.
        std::process::exit(0);
    }
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    print_header("Bulk TCP, 64 MiB between segstack and the kernel");
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
    if median_ns("bulk/kernel-to-segstack-tap").is_some() {
        print_vs(
            &subject(
                "kernel -> segstack over TAP",
                "bulk/kernel-to-segstack-tap",
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
