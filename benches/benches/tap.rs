//! Frame rate of the TAP backend to the Linux kernel: UDP frames (to a
//! closed port of the kernel's address, so the kernel takes them all the way
//! up to UDP) written through `TapPort::transmit`, as one chunk and gathered
//! from 64-byte lines, 64-byte and 1500-byte frames.
//!
//! Baseline from the same run: a kernel UDP socket sending the same payload
//! over loopback (`send` on a connected socket; the receiver is drained every
//! 64 sends, outside the timing).
//!
//! Needs root (a TAP device and a network namespace); prints why and does
//! nothing otherwise. The receive direction (frames from the kernel) is
//! measured by `cargo test -p nicdma --test tap_ping -- --ignored --nocapture
//! tap_frame_rate`.
#![forbid(unsafe_code)]

use std::net::UdpSocket;
use std::time::Instant;

use criterion::Criterion;
use hicamp_benches::{print_header, print_vs, subject, Group, Profile};
use nicdma::tap::{netns_supported, NetNs, TapPort};
use nicdma::{Port, TxOutcome, VirtioNetHdr};

const KERNEL_MAC: [u8; 6] = [2, 0, 0, 0x78, 0, 1];
const OUR_MAC: [u8; 6] = [2, 0, 0, 0x78, 0, 2];

/// A `len`-byte UDP frame from 10.78.0.2:12345 to the kernel's discard
/// port (no UDP checksum).
fn udp_frame(len: usize) -> Vec<u8> {
    testkit::frame::udp_frame(
        (KERNEL_MAC, OUR_MAC),
        ([10, 78, 0, 2], [10, 78, 0, 1]),
        (12345, 9),
        &vec![0x5a; len - 42],
        testkit::frame::UdpChecksum::Zero,
    )
}

fn benches(c: &mut Criterion) {
    // Skips with a message, or fails under CI=true (`cargo test --benches` runs this once).
    if testkit::require(netns_supported(), "root and iproute2 (the tap bench)") {
        return;
    }
    let port = TapPort::open("").expect("open a TAP device");
    let ns = NetNs::create().expect("namespace");
    let dev = port.name().to_owned();
    ns.adopt(&dev, Some("10.78.0.1/24")).expect("adopt");
    ns.ip(&["link", "set", "dev", &dev, "address", "02:00:00:78:00:01"])
        .expect("mac");
    ns.ip(&[
        "neigh",
        "add",
        "10.78.0.2",
        "lladdr",
        "02:00:00:78:00:02",
        "dev",
        &dev,
    ])
    .expect("neigh");
    let mut port = Some(port);
    let mut g = Group::new(c, "tap", Profile::Small);
    for size in [64usize, 1500] {
        let frame = udp_frame(size);
        for (label, line) in [("one_chunk", size), ("lines64", 64)] {
            let chunks: Vec<&[u8]> = frame.chunks(line).collect();
            let port = port.as_mut().expect("port");
            g.bench(
                &format!("tap_tx_{size}B_{label}"),
                || (),
                |_, iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        while port
                            .transmit(&VirtioNetHdr::default(), &chunks)
                            .expect("transmit")
                            == TxOutcome::Full
                        {}
                    }
                    t.elapsed()
                },
            );
        }
        g.bench(
            &format!("udp_loopback_{size}B"),
            || {
                let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
                let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
                tx.connect(rx.local_addr().expect("addr")).expect("connect");
                rx.set_nonblocking(true).expect("nonblocking");
                (tx, rx, vec![0x5au8; size - 42], vec![0u8; 65536])
            },
            |(tx, rx, payload, buf), iters| {
                let mut spent = std::time::Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(64);
                    let t = Instant::now();
                    for _ in 0..n {
                        tx.send(payload).expect("send");
                    }
                    spent += t.elapsed();
                    while rx.recv(buf).is_ok() {}
                    left -= n;
                }
                spent
            },
        );
    }
    g.finish();
    drop(port); // the device goes before the namespace
    drop(ns);

    print_header("TAP backend, frames written to the kernel (one writev each)");
    for size in [64usize, 1500] {
        let base = subject(
            format!("kernel UDP send over loopback, {size} B frame"),
            format!("tap/udp_loopback_{size}B"),
            None,
        );
        for label in ["one_chunk", "lines64"] {
            let s = subject(
                format!("TAP transmit {size} B ({label})"),
                format!("tap/tap_tx_{size}B_{label}"),
                None,
            );
            print_vs(&s, &base, None);
            if let Some(ns) = hicamp_benches::median_ns(&s.key) {
                println!("  {:.0} frames/s", 1e9 / ns);
            }
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
