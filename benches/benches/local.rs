//! Local mode's transport against kernel TCP loopback, in the same run: two
//! processes exchanging over `hicamp::shared` connection rings, and the
//! same two processes over a loopback TCP connection.
//!
//! * stream: 64 KiB messages, one way, from a 64 MiB buffer of random bytes
//!   cycled (so lines repeat only after 64 MiB, long after they were freed);
//!   the time runs from the first send to the receiver's one-byte ack after
//!   the last byte. Local mode on 4 KiB lines (and, for information, 64 B).
//! * ping-pong: 14-byte messages echoed by the peer; the round-trip time
//!   (the latency: SMC-lo's 3.4 us against TCP's 6.2 us are
//!   round-trip figures of sockperf ping-pong). Local mode with the default
//!   (a waiter sleeps on the futex at once), and with a 20 us poll that
//!   yields the core between polls before sleeping (`LOCAL_BENCH_SPIN_US`).
//!
//! Each figure is the median of several samples, taken alternately for the
//! two transports. The peer process is this bench binary run again with
//! `LOCAL_BENCH_CHILD` set. Not a criterion bench: criterion times one
//! process, and these routines need two. `cargo test --benches` runs a tiny
//! version that checks the data only.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hicamp::shared::{Conn, ConnId, SharedMemory, SharedOptions};
use hicamp_benches::median;

const MSG: usize = 64 * 1024;
const PING: usize = 14;

struct Plan {
    stream_bytes: u64,
    rounds: u64,
    samples: usize,
    measuring: bool,
}

fn plan() -> Plan {
    let measuring = std::env::args().any(|a| a == "--bench");
    let quick = std::env::args().any(|a| a == "--quick");
    if !measuring {
        return Plan {
            stream_bytes: 8 << 20,
            rounds: 200,
            samples: 1,
            measuring,
        };
    }
    Plan {
        stream_bytes: if quick { 256 << 20 } else { 1 << 30 },
        rounds: if quick { 5_000 } else { 20_000 },
        samples: if quick { 3 } else { 7 },
        measuring,
    }
}

fn spawn(role: &str, vars: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("LOCAL_BENCH_CHILD", role);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn the peer process")
}

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

fn spin_of() -> Duration {
    Duration::from_micros(var("LOCAL_SPIN_US").parse().unwrap_or(10))
}

// --- the peer process -------------------------------------------------------

fn child(role: &str) {
    match role {
        "shm_sink" | "shm_echo" => {
            let mem = SharedMemory::open(var("LOCAL_PATH")).unwrap();
            let mut c = mem
                .accept(ConnId(var("LOCAL_CONN").parse().unwrap()))
                .unwrap();
            c.set_spin(spin_of());
            let mut buf = vec![0u8; MSG];
            if role == "shm_sink" {
                let total: u64 = var("LOCAL_TOTAL").parse().unwrap();
                let mut got = 0u64;
                loop {
                    let n = c.recv(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                    if got == total {
                        c.send(b"k").unwrap();
                    }
                }
            } else {
                loop {
                    let n = c.recv(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    c.send(&buf[..n]).unwrap();
                }
            }
        }
        "tcp_sink" | "tcp_echo" => {
            let mut s = TcpStream::connect(var("LOCAL_ADDR")).unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = vec![0u8; MSG];
            let total: u64 = var("LOCAL_TOTAL").parse().unwrap_or(0);
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got += n as u64;
                if role == "tcp_echo" {
                    s.write_all(&buf[..n]).unwrap();
                } else if got == total {
                    s.write_all(b"k").unwrap();
                }
            }
        }
        r => panic!("unknown role {r}"),
    }
}

// --- transports -------------------------------------------------------------

/// What a sample needs from a transport.
trait Link {
    fn send_all(&mut self, b: &[u8]);
    fn recv_exact(&mut self, b: &mut [u8]);
}

impl Link for Conn {
    fn send_all(&mut self, b: &[u8]) {
        assert_eq!(self.send(b).unwrap(), b.len());
    }
    fn recv_exact(&mut self, b: &mut [u8]) {
        let mut got = 0;
        while got < b.len() {
            let n = self.recv(&mut b[got..]).unwrap();
            assert!(n > 0, "early EOF");
            got += n;
        }
    }
}

impl Link for TcpStream {
    fn send_all(&mut self, b: &[u8]) {
        self.write_all(b).unwrap();
    }
    fn recv_exact(&mut self, b: &mut [u8]) {
        self.read_exact(b).unwrap();
    }
}

/// The sink acks with one byte once it has received `total` bytes.
fn stream_sample(l: &mut dyn Link, data: &[u8], total: u64) -> f64 {
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut off = 0usize;
    while sent < total {
        if off + MSG > data.len() {
            off = 0;
        }
        l.send_all(&data[off..off + MSG]);
        off += MSG;
        sent += MSG as u64;
    }
    let mut k = [0u8; 1];
    l.recv_exact(&mut k);
    assert_eq!(&k, b"k");
    total as f64 / t0.elapsed().as_secs_f64()
}

fn pingpong_sample(l: &mut dyn Link, rounds: u64) -> f64 {
    let mut msg = [0u8; PING];
    let mut back = [0u8; PING];
    let t0 = Instant::now();
    for i in 0..rounds {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        l.send_all(&msg);
        l.recv_exact(&mut back);
        assert_eq!(back, msg);
    }
    t0.elapsed().as_nanos() as f64 / rounds as f64
}

struct Local {
    path: PathBuf,
    mem: SharedMemory,
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn local(line: usize) -> Local {
    let dir = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let path = PathBuf::from(format!(
        "{dir}/hicamp-local-bench-{}-{line}",
        std::process::id()
    ));
    // 64 MiB of lines at either size.
    let mem = SharedMemory::create(
        &path,
        SharedOptions {
            line_size: line,
            capacity_lines: ((64 << 20) / line) as u32,
            ..SharedOptions::default()
        },
    )
    .unwrap();
    Local { path, mem }
}

fn with_local<T>(
    lm: &Local,
    role: &str,
    spin: Duration,
    total: u64,
    f: impl FnOnce(&mut Conn) -> T,
) -> T {
    let mut c = lm.mem.connect().unwrap();
    c.set_spin(spin);
    let mut kid = spawn(
        role,
        &[
            ("LOCAL_PATH", lm.path.display().to_string()),
            ("LOCAL_CONN", c.id().0.to_string()),
            ("LOCAL_SPIN_US", spin.as_micros().to_string()),
            ("LOCAL_TOTAL", total.to_string()),
        ],
    );
    let r = f(&mut c);
    drop(c);
    assert!(kid.wait().unwrap().success());
    r
}

fn with_tcp<T>(role: &str, total: u64, f: impl FnOnce(&mut TcpStream) -> T) -> T {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut kid = spawn(
        role,
        &[
            ("LOCAL_ADDR", l.local_addr().unwrap().to_string()),
            ("LOCAL_TOTAL", total.to_string()),
        ],
    );
    let (mut s, _) = l.accept().unwrap();
    s.set_nodelay(true).unwrap();
    let r = f(&mut s);
    drop(s);
    assert!(kid.wait().unwrap().success());
    r
}

fn main() {
    let role = var("LOCAL_BENCH_CHILD");
    if !role.is_empty() {
        child(&role);
        return;
    }
    let p = plan();
    let data = hicamp_benches::random_bytes(64 << 20, 0x10ca1);
    let l4k = local(4096);
    let l64 = local(64);
    let spin = Duration::from_micros(var("LOCAL_BENCH_SPIN_US").parse().unwrap_or(20));

    let (mut s_tcp, mut s_4k, mut s_64) = (Vec::new(), Vec::new(), Vec::new());
    let mut s_poll = Vec::new();
    let (mut p_tcp, mut p_spin, mut p_sleep) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..p.samples {
        // Alternate which transport goes first.
        let tcp = || {
            with_tcp("tcp_sink", p.stream_bytes, |s| {
                stream_sample(s, &data, p.stream_bytes)
            })
        };
        if i % 2 == 0 {
            s_tcp.push(tcp());
        }
        s_4k.push(with_local(
            &l4k,
            "shm_sink",
            Duration::ZERO,
            p.stream_bytes,
            |c| stream_sample(c, &data, p.stream_bytes),
        ));
        if i % 2 == 1 {
            s_tcp.push(tcp());
        }
        s_poll.push(with_local(&l4k, "shm_sink", spin, p.stream_bytes, |c| {
            stream_sample(c, &data, p.stream_bytes)
        }));
        s_64.push(with_local(
            &l64,
            "shm_sink",
            Duration::ZERO,
            p.stream_bytes / 4,
            |c| stream_sample(c, &data, p.stream_bytes / 4),
        ));
        p_tcp.push(with_tcp("tcp_echo", 0, |s| pingpong_sample(s, p.rounds)));
        p_spin.push(with_local(&l4k, "shm_echo", Duration::ZERO, 0, |c| {
            pingpong_sample(c, p.rounds)
        }));
        p_sleep.push(with_local(&l4k, "shm_echo", spin, 0, |c| {
            pingpong_sample(c, p.rounds)
        }));
    }
    for l in [&l4k, &l64] {
        let chk = l.mem.check().unwrap();
        assert!(chk.is_clean() && chk.reachable == 0, "{chk:?}");
    }
    if !p.measuring {
        println!("local: test mode, transports checked");
        return;
    }
    let gbs = |x: f64| x / 1e9;
    let (st, s4, s6) = (median(&mut s_tcp), median(&mut s_4k), median(&mut s_64));
    let sp = median(&mut s_poll);
    let (pt, ps, pz) = (
        median(&mut p_tcp),
        median(&mut p_spin),
        median(&mut p_sleep),
    );
    println!(
        "local: stream of 64 KiB messages, {} MiB per sample, median of {} samples",
        p.stream_bytes >> 20,
        p.samples
    );
    println!("  kernel TCP loopback          {:6.2} GB/s", gbs(st));
    println!(
        "  shared rings, 4 KiB lines    {:6.2} GB/s ; ratio {:.2}x ; target >= 2x: {}",
        gbs(s4),
        s4 / st,
        if s4 / st >= 2.0 { "met" } else { "NOT met" }
    );
    println!(
        "  4 KiB lines, {:2} us poll      {:6.2} GB/s ; ratio {:.2}x (information)",
        spin.as_micros(),
        gbs(sp),
        sp / st
    );
    println!(
        "  shared rings, 64 B lines     {:6.2} GB/s ; ratio {:.2}x (information)",
        gbs(s6),
        s6 / st
    );
    println!(
        "local: 14 B ping-pong round trip, {} rounds per sample",
        p.rounds
    );
    println!("  kernel TCP loopback          {:8.2} us", pt / 1e3);
    println!(
        "  shared rings (futex sleep)   {:8.2} us ; ratio {:.2}x ; target <= 0.5x: {}",
        ps / 1e3,
        ps / pt,
        if ps / pt <= 0.5 { "met" } else { "NOT met" }
    );
    println!(
        "  shared rings, {:2} us poll     {:8.2} us ; ratio {:.2}x (information)",
        spin.as_micros(),
        pz / 1e3,
        pz / pt
    );
}
