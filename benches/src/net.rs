//! The network benches' shared parts: the backend choice (`--backend`), the
//! veth lab of the ring backends, and one backend-generic segstack bulk
//! loop (send to the kernel, receive from it) over any [`Port`], which the
//! `bulk` bench runs over TAP, AF_XDP or AF_PACKET and the `backends` bench
//! over AF_XDP.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hicamp::{Config, Memory};
use nicdma::tap::NetNs;
use nicdma::Port;
use segstack::iface::{IfaceConfig, IfaceError, Interface};
use segstack::Payload;

/// The environment variable that carries `--backend` (criterion's own
/// argument parser rejects options it does not know).
pub const BACKEND_ENV: &str = "HICAMP_BENCH_BACKEND";

/// The backend a network bench runs segstack over: `--backend SPEC` (or
/// `--backend=SPEC`) on the command line, else `HICAMP_BENCH_BACKEND`, else
/// `default`. Only the kind counts (`tap`, `af_xdp`, `af_packet`, `sim`):
/// each bench makes its own namespaces and devices, so an interface named
/// after the kind is ignored.
///
/// Criterion rejects options it does not know, so when `--backend` is on
/// the command line this re-runs the bench without it (the choice in the
/// environment) and exits with that run's status.
pub fn backend_choice(default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    let mut choice = None;
    let mut rest = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--backend" {
            choice = it.next().cloned();
        } else if let Some(v) = a.strip_prefix("--backend=") {
            choice = Some(v.to_owned());
        } else {
            rest.push(a.clone());
        }
    }
    if let Some(spec) = choice {
        let exe = std::env::current_exe().expect("the bench's own path");
        let status = std::process::Command::new(exe)
            .args(&rest)
            .env(BACKEND_ENV, &spec)
            .status()
            .expect("re-run the bench");
        std::process::exit(status.code().unwrap_or(1));
    }
    let spec = std::env::var(BACKEND_ENV).unwrap_or_else(|_| default.to_owned());
    spec.split(':').next().unwrap_or(default).to_owned()
}

/// Kernel A's address on the lab's veth.
pub const KERNEL_A: Ipv4Addr = Ipv4Addr::new(10, 83, 0, 1);
/// segstack's address on `p0`.
pub const SEG_IP: Ipv4Addr = Ipv4Addr::new(10, 83, 0, 2);
/// Kernel B's own address on `p0` (the baselines).
pub const KERNEL_B: Ipv4Addr = Ipv4Addr::new(10, 83, 0, 3);

/// One veth pair: namespace A holds `k0` (the kernel peer, offloads off,
/// [`KERNEL_A`]), namespace B holds `p0`, where the ring ports bind
/// (segstack is [`SEG_IP`]; B's own kernel is [`KERNEL_B`]). Static
/// neighbours on both sides: no ARP in the measured paths.
#[derive(Debug)]
pub struct VethLab {
    /// Namespace A (the kernel peer).
    pub a: Arc<NetNs>,
    /// Namespace B (the ports' side).
    pub b: Arc<NetNs>,
    /// `k0`'s MAC.
    pub k0_mac: [u8; 6],
    /// `p0`'s MAC.
    pub p0_mac: [u8; 6],
}

fn mac_of(ns: &NetNs, dev: &str) -> [u8; 6] {
    let out = ns
        .ip(&["-br", "link", "show", "dev", dev])
        .expect("ip link");
    let text = out.split_whitespace().nth(2).unwrap_or("");
    let v: Vec<u8> = text
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    v.get(..6)
        .and_then(|m| m.try_into().ok())
        .unwrap_or_else(|| panic!("MAC of {dev}: {out}"))
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Builds the lab (needs root and iproute2; the namespaces go when the
/// last reference drops).
pub fn veth_lab() -> VethLab {
    let a = NetNs::create().expect("namespace A");
    let b = NetNs::create().expect("namespace B");
    a.veth_pair("k0", "p0", &format!("{KERNEL_A}/24"), true)
        .expect("veth");
    a.ip(&["link", "set", "dev", "p0", "netns", b.name()])
        .expect("move p0");
    b.ip(&["link", "set", "dev", "p0", "addrgenmode", "none"])
        .expect("p0");
    b.ip(&["addr", "add", &format!("{KERNEL_B}/24"), "dev", "p0"])
        .expect("p0 address");
    b.ip(&["link", "set", "dev", "p0", "up"]).expect("p0 up");
    let k0_mac = mac_of(&a, "k0");
    let p0_mac = mac_of(&b, "p0");
    for ip in [SEG_IP, KERNEL_B] {
        a.ip(&[
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            &mac_str(p0_mac),
            "dev",
            "k0",
        ])
        .expect("neigh");
    }
    b.ip(&[
        "neigh",
        "replace",
        &KERNEL_A.to_string(),
        "lladdr",
        &mac_str(k0_mac),
        "dev",
        "p0",
    ])
    .expect("neigh");
    VethLab {
        a: Arc::new(a),
        b: Arc::new(b),
        k0_mac,
        p0_mac,
    }
}

/// The memory of a bulk rig (4 Mi lines of 64 bytes: a 64 MiB object, the
/// frames in flight and the index). `BULK_LINE=<bytes>` picks another line
/// size (the same capacity in bytes), for the line-size comparison in
/// benches/README.md.
pub fn bulk_memory() -> Memory {
    let line = std::env::var("BULK_LINE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(64);
    Memory::new(Config {
        line_size: line,
        capacity_lines: (1 << 28) / line as u64,
        map_capacity: 1 << 16,
        ..Config::default()
    })
    .expect("memory")
}

/// The interface configuration of a bulk rig: send and receive buffers of
/// 4 MiB (`BULK_BUF_KIB` overrides). The send queue holds snapshots, so
/// depth costs references, not bytes; with 256 KiB a bulk sender over TAP
/// spends most of its time waiting for the ACK that frees the next 64 KiB.
pub fn bulk_config(mac: [u8; 6], ip: Ipv4Addr, prefix: u8) -> IfaceConfig {
    let mut cfg = IfaceConfig::new(mac, ip, prefix);
    let kib = std::env::var("BULK_BUF_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(4096);
    cfg.tcp.send_buf = kib << 10;
    cfg.tcp.recv_buf = kib << 10;
    cfg
}

/// segstack on a port, a kernel peer in a namespace, and the bytes each
/// way.
#[derive(Debug)]
pub struct BulkRig<P: Port> {
    /// segstack.
    pub iface: Interface<P>,
    /// What segstack sends (one segment, sent as snapshots).
    pub object: Payload,
    /// What the kernel sends.
    pub data: Arc<Vec<u8>>,
    /// The kernel peer's namespace.
    pub peer: Arc<NetNs>,
    /// segstack's address (the peer connects to it).
    pub seg_ip: Ipv4Addr,
    /// The stack's clock origin.
    pub t0: Instant,
    /// The last listening port used (each transfer takes the next).
    pub port: u16,
    /// Namespaces that must outlive the port (the one its device is in).
    pub keep: Vec<Arc<NetNs>>,
    /// CPU time of segstack's thread in the last transfer (see [`thread_cpu`]),
    /// when the kernel reports it.
    pub last_cpu: Option<Duration>,
}

/// Time the calling thread has spent on a CPU (`/proc/thread-self/schedstat`,
/// nanoseconds), or `None` where the kernel does not report it. On a loaded
/// machine a transfer's CPU time varies far less than its wall clock.
pub fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = s.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ns))
}

impl<P: Port> BulkRig<P> {
    /// A rig on `iface`, `len` bytes each way.
    pub fn new(iface: Interface<P>, peer: Arc<NetNs>, seg_ip: Ipv4Addr, len: usize) -> Self {
        let object =
            Payload::from_bytes(iface.memory(), &crate::random_bytes(len, 0xb0)).expect("object");
        BulkRig {
            iface,
            object,
            data: Arc::new(crate::random_bytes(len, 0xb1)),
            peer,
            seg_ip,
            t0: Instant::now(),
            port: 5000,
            keep: Vec::new(),
            last_cpu: None,
        }
    }

    /// One round of the stack: a poll, then a wait for a frame or the next
    /// timer (at most 1 ms).
    pub fn step(&mut self) {
        let now = self.t0.elapsed().as_nanos() as u64;
        self.iface.poll(now).expect("poll");
        let wait = self.iface.poll_at().map_or(Duration::from_millis(1), |t| {
            Duration::from_nanos(t.saturating_sub(now)).min(Duration::from_millis(1))
        });
        nicdma::port::wait_readable(self.iface.nic().port(), wait).expect("wait");
    }

    /// Lets the closing handshakes finish.
    pub fn settle(&mut self) {
        for _ in 0..50 {
            self.step();
        }
    }

    fn debug(&self, conn: Option<segstack::iface::SocketHandle>) {
        if std::env::var_os("BULK_DEBUG").is_none() {
            return;
        }
        if let Some(t) = conn.and_then(|c| self.iface.tcp(c).ok()) {
            eprintln!("{:?}", t.stats());
        }
        let m = self.iface.memory().stats();
        eprintln!(
            "{:?}\n{:?}\ninterior lines created {} / dedup hits {}",
            self.iface.stats(),
            self.iface.nic().counters(),
            m.interior_lines_created,
            m.interior_dedup_hits
        );
    }

    /// The kernel peer downloads the object from segstack; returns the
    /// peer's time from connect to end of stream.
    #[inline(never)]
    pub fn send_once(&mut self) -> Duration {
        self.port += 1;
        let port = self.port;
        let lst = self.iface.tcp_listen(port).expect("listen");
        let peer = Arc::clone(&self.peer);
        let to = SocketAddrV4::new(self.seg_ip, port);
        let (tx, rx) = mpsc::channel();
        let client = std::thread::spawn(move || {
            peer.enter_current_thread().expect("enter namespace");
            let mut s = TcpStream::connect(to).expect("connect");
            let t = Instant::now();
            let n = drain(&mut s);
            tx.send(()).ok();
            (n, t.elapsed())
        });
        let mut conn = None;
        let mut left = self.object.clone();
        let mut closed = false;
        let cpu0 = thread_cpu();
        while rx.try_recv().is_err() {
            self.step();
            if conn.is_none() {
                conn = self.iface.tcp_accept(lst).expect("accept");
            }
            if let Some(c) = conn {
                self.iface.send_some(c, &mut left).expect("send");
                if left.is_empty() && !closed {
                    self.iface.close(c).expect("close");
                    closed = true;
                }
            }
        }
        self.last_cpu = thread_cpu().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
        let (n, d) = client.join().expect("client");
        self.debug(conn);
        assert_eq!(n, self.object.len());
        self.iface.close(lst).expect("close listener");
        self.settle();
        d
    }

    /// The kernel peer uploads the data into segstack, which receives it as
    /// payload snapshots and drops them; returns the time from the peer's
    /// connect to segstack's end of stream.
    #[inline(never)]
    pub fn recv_once(&mut self) -> Duration {
        self.port += 1;
        let port = self.port;
        let lst = self.iface.tcp_listen(port).expect("listen");
        let peer = Arc::clone(&self.peer);
        let d = Arc::clone(&self.data);
        let to = SocketAddrV4::new(self.seg_ip, port);
        let t = Instant::now();
        let client = std::thread::spawn(move || {
            peer.enter_current_thread().expect("enter namespace");
            let mut s = TcpStream::connect(to).expect("connect");
            s.write_all(&d).expect("write");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            // Wait for segstack's FIN, so the socket is not reset.
            let mut b = [0u8; 16];
            let _ = s.read(&mut b);
        });
        let mut conn = None;
        let mut got = 0usize;
        let mut chunks = Vec::new();
        let cpu0 = thread_cpu();
        let elapsed = loop {
            self.step();
            if conn.is_none() {
                conn = self.iface.tcp_accept(lst).expect("accept");
            }
            if let Some(c) = conn {
                chunks.clear();
                match self.iface.recv_into(c, usize::MAX, &mut chunks) {
                    Ok(0) => {
                        let e = t.elapsed();
                        self.last_cpu = thread_cpu().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
                        self.iface.close(c).expect("close");
                        break e;
                    }
                    Ok(n) => got += n,
                    Err(IfaceError::WouldBlock) => {}
                    Err(e) => panic!("recv: {e}"),
                }
            }
        };
        // Send our FIN, then let the client see it.
        for _ in 0..5 {
            self.step();
        }
        client.join().expect("client");
        self.debug(conn);
        assert_eq!(got, self.data.len());
        self.iface.close(lst).expect("close listener");
        self.settle();
        elapsed
    }
}

/// Reads `s` to its end; returns the bytes read.
pub fn drain(s: &mut TcpStream) -> usize {
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
