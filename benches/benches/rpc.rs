//! The PASTE RPC workload: closed-loop clients send a 44-byte HTTP request
//! and wait for the 151-byte response, over 1, 50 and 100 connections.
//!
//! Server core against server core: for both stacks the server runs on its
//! own thread and the clients on another (the bench's main thread), both
//! busy-polling (PASTE's `phttpd -b 0`, which is also how its Linux
//! baseline ran) for up to 50 us after their last work, then blocking in
//! epoll (see [`Waiter`]).
//!
//! - segstack: the phttpd-like server (examples/src/phttpd/) on one
//!   interface in a server thread, the clients on a second interface in the
//!   main thread, joined by the sim backend. The sim link has no latency, so
//!   its virtual clock is never advanced: a frame is due as soon as it is
//!   sent, and the stacks' timers run on the wall clock. Both interfaces
//!   share one memory, as two cores of one HICAMP machine would. The sim
//!   ports busy-poll (`SimPort::set_busy_poll`): no wake-up is written
//!   while a thread polls, and a thread arms one just before it blocks
//!   (`RPC_SEG_BUSY_POLL=0` turns this off).
//! - baseline, same run: the Linux kernel over loopback TCP, an epoll server
//!   thread answering the same bytes, the clients on non-blocking sockets in
//!   the main thread with the same client logic; twice, blocking in epoll at
//!   once and spinning 50 us first like segstack.
//!
//! Both stacks run in both modes (`segstack-sim` spins 50 us first,
//! `segstack-sim-block` arms its wake-up and blocks at once, as
//! `kernel-loopback` does), and the ratio is each stack's better mode of
//! the run against the other's: spinning starves the other thread (and the
//! kernel's softirq work) on two shared cores, so blocking often wins.
//!
//! One iteration is one request answered; the summary prints requests per
//! second (median, and min / median / max of the samples) and the ratio.
//!
//! `RPC_PROFILE=<connections>:<requests>` runs no benchmark: it serves that
//! many requests with both stacks in this thread, the server's work inside
//! `server_step` and the clients' inside `client_step`, for
//! `valgrind --tool=callgrind --toggle-collect=*server_step*` (instructions
//! per request of the server alone).
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hicamp::{Config, Memory};
use hicamp_benches::{
    median_ns, print_header, print_vs, run_mode, subject, Group, Profile, RunMode,
};
use hicamp_examples::phttpd::{rpc_request, rpc_response, Phttpd, RESPONSE_LEN};
use mio::net::{TcpListener as MioListener, TcpStream as MioStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nicdma::sim::{LinkConfig, SimPort};
use nicdma::Port;
use segstack::iface::{Event, IfaceError, Interface, SocketHandle};
use segstack::sim::{SimPair, B_IP};

/// The client logic both stacks run: per connection, send the request, read
/// the whole response, repeat.
#[derive(Debug, Default, Clone)]
struct RpcConn {
    sent: usize,
    got: usize,
}

/// One pass over every connection; returns the responses completed.
fn pump(
    conns: &mut [RpcConn],
    mut send: impl FnMut(usize, &[u8]) -> io::Result<usize>,
    mut recv: impl FnMut(usize, &mut [u8]) -> io::Result<usize>,
) -> u64 {
    let req = rpc_request();
    let mut done = 0;
    let mut buf = [0u8; 512];
    for (i, c) in conns.iter_mut().enumerate() {
        while c.sent < req.len() {
            match send(i, &req[c.sent..]) {
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        loop {
            match recv(i, &mut buf) {
                Ok(0) => panic!("server closed"),
                Ok(n) => {
                    c.got += n;
                    if c.got >= RESPONSE_LEN {
                        assert_eq!(c.got, RESPONSE_LEN, "pipelining is not used");
                        done += 1;
                        c.got = 0;
                        c.sent = 0;
                        while c.sent < req.len() {
                            match send(i, &req[c.sent..]) {
                                Ok(n) => c.sent += n,
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) => panic!("send: {e}"),
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
    done
}

fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

fn ns_since(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

/// How long a thread that found nothing to do keeps busy-polling before it
/// blocks (in epoll, at most 1 ms) until its descriptor is readable. Pure
/// busy-polling on a machine whose two cores are shared with other jobs
/// turns every preemption into a millisecond stall; this bounds the spin the
/// same way for both stacks.
const SPIN: Duration = Duration::from_micros(50);

/// The segstack threads' spin (`RPC_SEG_SPIN_US` overrides [`SPIN`]).
fn seg_spin() -> Duration {
    std::env::var("RPC_SEG_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(SPIN, Duration::from_micros)
}

/// Busy-poll mode for the segstack threads' sim ports (`RPC_SEG_BUSY_POLL=0`
/// turns it off: the port then writes a wake-up per burst and the threads
/// make an epoll call per round, as before).
fn seg_busy_poll() -> bool {
    std::env::var("RPC_SEG_BUSY_POLL").map_or(true, |v| v != "0")
}

/// Spin-then-block on one epoll instance.
struct Waiter {
    poll: Poll,
    events: Events,
    idle_since: Option<Instant>,
    /// The caller reads `events` (the kernel's sockets): poll even after a
    /// round that worked.
    always: bool,
    /// How long to spin before blocking.
    spin: Duration,
    /// The sim port is in busy-poll mode ([`Waiter::after_sim`]).
    busy_poll: bool,
}

impl Waiter {
    /// On the sockets registered in `poll`, whose events the caller reads.
    fn new(poll: Poll, spin: Duration) -> Waiter {
        Waiter {
            poll,
            events: Events::with_capacity(1024),
            idle_since: None,
            always: true,
            spin,
            busy_poll: false,
        }
    }

    /// On the sim port's wake-up channel, spinning `spin` before it blocks,
    /// in busy-poll mode unless `RPC_SEG_BUSY_POLL=0` (see
    /// [`Waiter::after_sim`]).
    fn on_port(port: &SimPort, spin: Duration) -> Waiter {
        let busy_poll = seg_busy_poll();
        port.set_busy_poll(busy_poll);
        Waiter {
            busy_poll,
            ..Waiter::on_fd(port.rx_fd().expect("sim fd"), spin)
        }
    }

    /// On a descriptor of the stack (the sim port's wake-up channel).
    fn on_fd(fd: std::os::fd::RawFd, spin: Duration) -> Waiter {
        let poll = Poll::new().expect("epoll");
        poll.registry()
            .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
            .expect("register");
        Waiter {
            always: false,
            ..Waiter::new(poll, spin)
        }
    }

    /// After one round of a segstack thread: a round that worked, or one
    /// within the spin, makes no system call (the port wakes no one while
    /// its receiver polls); past the spin, one wake-up is armed and the
    /// thread sleeps in epoll unless a frame is already waiting.
    ///
    /// `due`: the stack has work due now (output queued, a timer): poll
    /// again at once.
    fn after_sim(&mut self, worked: bool, due: bool, port: &SimPort) {
        if !self.busy_poll {
            return self.after(worked || due);
        }
        if due {
            self.idle_since = None;
            return;
        }
        if worked {
            self.idle_since = None;
            return;
        }
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.spin || port.arm_wakeup() {
            return;
        }
        self.poll
            .poll(&mut self.events, Some(Duration::from_millis(1)))
            .expect("epoll");
    }

    /// After one round: `worked` says whether it did something.
    fn after(&mut self, worked: bool) {
        let timeout = if worked {
            self.idle_since = None;
            if !self.always {
                return;
            }
            Duration::ZERO
        } else {
            let since = *self.idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < self.spin {
                Duration::ZERO
            } else {
                Duration::from_millis(1)
            }
        };
        self.poll
            .poll(&mut self.events, Some(timeout))
            .expect("epoll");
    }
}

/// Frames the interface's NIC moved so far.
fn moved(iface: &Interface<SimPort>) -> u64 {
    let c = iface.nic().counters();
    c.tx_frames + c.rx_frames
}

// ---- segstack over sim ---------------------------------------------------------

/// The server's share of one round: a poll of its interface and the
/// answers to what it brought.
#[inline(never)]
fn server_step(iface: &mut Interface<SimPort>, server: &mut Phttpd, ev: &mut Vec<Event>, now: u64) {
    ev.clear();
    ev.extend_from_slice(iface.poll(now).expect("poll"));
    server.handle(iface, ev).expect("serve");
    // Run to completion: the answers leave in this step, as a kernel
    // server's `write` sends at once (the events of this poll come again at
    // the next one: they are level-triggered).
    if due(iface, now) {
        iface.poll(now).expect("poll");
    }
}

/// The interface has output or a timer due at `now`.
fn due(iface: &Interface<SimPort>, now: u64) -> bool {
    iface.poll_at().is_some_and(|t| t <= now)
}

/// The clients' share of one round: a poll of their interface, then every
/// connection's send and receive. Returns the responses completed.
#[inline(never)]
fn client_step(
    iface: &mut Interface<SimPort>,
    conns: &[SocketHandle],
    state: &mut [RpcConn],
    now: u64,
) -> u64 {
    iface.poll(now).expect("poll");
    let cell = std::cell::RefCell::new(&mut *iface);
    let done = pump(
        state,
        |i, b| match cell.borrow_mut().send_slice(conns[i], b) {
            Ok(n) => Ok(n),
            Err(IfaceError::WouldBlock) => Err(would_block()),
            Err(e) => Err(io::Error::other(e.to_string())),
        },
        |i, b| match cell.borrow_mut().recv_slice(conns[i], b) {
            Ok(n) => Ok(n),
            Err(IfaceError::WouldBlock) => Err(would_block()),
            Err(e) => Err(io::Error::other(e.to_string())),
        },
    );
    // The requests leave in this step (see `server_step`).
    if due(iface, now) {
        iface.poll(now).expect("poll");
    }
    done
}

/// Both stacks, built and connected (nothing sent yet).
struct SegParts {
    client: Interface<SimPort>,
    server_iface: Interface<SimPort>,
    server: Phttpd,
    conns: Vec<SocketHandle>,
    t0: Instant,
}

fn seg_parts(n: usize) -> SegParts {
    let mem = Memory::new(Config {
        capacity_lines: 1 << 21,
        map_capacity: 1 << 16,
        ..Config::default()
    })
    .expect("memory");
    let SimPair { a, mut b, .. } = SimPair::new(&mem, LinkConfig::default(), 7, |c| {
        c.tcp.nagle = false;
    })
    .expect("sim pair");
    let mut client = a;
    let server = Phttpd::new(&mut b, 80, 0, false).expect("server");
    let t0 = Instant::now();
    let now = ns_since(t0);
    let conns = (0..n)
        .map(|_| {
            client
                .tcp_connect(SocketAddrV4::new(B_IP, 80), now)
                .expect("connect")
        })
        .collect();
    SegParts {
        client,
        server_iface: b,
        server,
        conns,
        t0,
    }
}

struct SegRig {
    client: Interface<SimPort>,
    waiter: Waiter,
    conns: Vec<SocketHandle>,
    state: Vec<RpcConn>,
    t0: Instant,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl Drop for SegRig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

/// The segstack rig with both threads spinning `spin` before they block.
fn seg_rig(n: usize, spin: Duration) -> SegRig {
    let p = seg_parts(n);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let (mut iface, mut server, t0) = (p.server_iface, p.server, p.t0);
    let handle = std::thread::Builder::new()
        .name("rpc-server".into())
        .spawn(move || {
            let mut w = Waiter::on_port(iface.nic().port(), spin);
            let mut ev = Vec::new();
            while !s2.load(Ordering::Relaxed) {
                let m = moved(&iface);
                server_step(&mut iface, &mut server, &mut ev, ns_since(t0));
                let now = ns_since(t0);
                w.after_sim(moved(&iface) != m, due(&iface, now), iface.nic().port());
            }
        })
        .expect("server thread");
    let mut rig = SegRig {
        waiter: Waiter::on_port(p.client.nic().port(), spin),
        client: p.client,
        conns: p.conns,
        state: vec![RpcConn::default(); n],
        t0,
        stop,
        server: Some(handle),
    };
    // Warm up: every connection established and one request answered.
    seg_run(&mut rig, n as u64);
    rig
}

fn seg_run(r: &mut SegRig, iters: u64) -> Duration {
    let t = Instant::now();
    let mut done = 0;
    while done < iters {
        let m = moved(&r.client);
        let d = client_step(&mut r.client, &r.conns, &mut r.state, ns_since(r.t0));
        done += d;
        r.waiter.after_sim(
            d > 0 || moved(&r.client) != m,
            due(&r.client, ns_since(r.t0)),
            r.client.nic().port(),
        );
    }
    t.elapsed()
}

/// `RPC_PROFILE`: `requests` answered over `n` connections, both stacks in
/// this thread (see the module documentation).
fn profile(n: usize, requests: u64) {
    let mut p = seg_parts(n);
    let mut state = vec![RpcConn::default(); n];
    let mut ev = Vec::new();
    let mut round = |p: &mut SegParts| {
        let now = ns_since(p.t0);
        server_step(&mut p.server_iface, &mut p.server, &mut ev, now);
        client_step(&mut p.client, &p.conns, &mut state, now)
    };
    let mut done = 0;
    while done < n as u64 {
        done += round(&mut p);
    }
    let mut done = 0;
    let (c0, s0) = (p.client.stats().tx_frames, p.server_iface.stats().tx_frames);
    let t = Instant::now();
    while done < requests {
        done += round(&mut p);
    }
    let d = t.elapsed();
    let per = |x: u64| x as f64 / done.max(1) as f64;
    println!(
        "rpc profile: {done} requests over {n} connections in {d:?} ({:.0} requests/s, both stacks on one thread); frames per request: client {:.2}, server {:.2}",
        done as f64 / d.as_secs_f64(),
        per(p.client.stats().tx_frames - c0),
        per(p.server_iface.stats().tx_frames - s0),
    );
    if std::env::var_os("RPC_PROFILE_STATS").is_some() {
        println!(
            "server {:?}\nserver nic {:?}",
            p.server_iface.stats(),
            p.server_iface.nic().counters()
        );
        println!(
            "client {:?}\nclient nic {:?}",
            p.client.stats(),
            p.client.nic().counters()
        );
    }
}

// ---- the kernel over loopback ------------------------------------------------

struct KernelRig {
    waiter: Waiter,
    conns: Vec<MioStream>,
    state: Vec<RpcConn>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl Drop for KernelRig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.conns.clear();
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

/// An epoll server answering every complete request with the response,
/// spinning then blocking in epoll like the segstack server ([`Waiter`]).
fn kernel_server(l: TcpListener, stop: Arc<AtomicBool>, spin: Duration) {
    l.set_nonblocking(true).expect("nonblocking");
    let mut l = MioListener::from_std(l);
    let poll = Poll::new().expect("epoll");
    poll.registry()
        .register(&mut l, Token(usize::MAX), Interest::READABLE)
        .expect("register");
    let resp = rpc_response();
    let mut w = Waiter::new(poll, spin);
    let mut conns: Vec<(MioStream, Vec<u8>)> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut worked = true;
    while !stop.load(Ordering::Relaxed) {
        w.after(worked);
        worked = !w.events.is_empty();
        let (poll, events) = (&w.poll, &w.events);
        for ev in events.iter() {
            if ev.token() == Token(usize::MAX) {
                while let Ok((mut s, _)) = l.accept() {
                    s.set_nodelay(true).expect("nodelay");
                    let t = Token(conns.len());
                    poll.registry()
                        .register(&mut s, t, Interest::READABLE)
                        .expect("register");
                    conns.push((s, Vec::new()));
                }
                continue;
            }
            let (s, pending) = &mut conns[ev.token().0];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            s.write_all(&resp).expect("write");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
    }
}

fn kernel_rig(n: usize, spin: Duration) -> KernelRig {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let server = std::thread::Builder::new()
        .name("rpc-kserver".into())
        .spawn(move || kernel_server(l, s2, spin))
        .expect("server thread");
    let poll = Poll::new().expect("epoll");
    let conns = (0..n)
        .map(|i| {
            let s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s.set_nonblocking(true).expect("nonblocking");
            let mut s = MioStream::from_std(s);
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)
                .expect("register");
            s
        })
        .collect();
    let mut rig = KernelRig {
        waiter: Waiter::new(poll, spin),
        conns,
        state: vec![RpcConn::default(); n],
        stop,
        server: Some(server),
    };
    kernel_run(&mut rig, n as u64);
    rig
}

fn kernel_run(r: &mut KernelRig, iters: u64) -> Duration {
    let t = Instant::now();
    let mut done = 0;
    while done < iters {
        let conns = std::cell::RefCell::new(&mut r.conns);
        done += pump(
            &mut r.state,
            |i, b| conns.borrow_mut()[i].write(b),
            |i, b| conns.borrow_mut()[i].read(b),
        );
        if done < iters {
            // Spin, then block, as the segstack clients do (epoll's events
            // are only a hint: every connection is tried each round).
            let worked = !r.waiter.events.is_empty();
            r.waiter.after(worked);
        }
    }
    t.elapsed()
}

const CONNS: [usize; 3] = [1, 50, 100];

/// Every call's ns per iteration, by benchmark key (for the spreads).
static SAMPLES: std::sync::Mutex<std::collections::BTreeMap<String, Vec<f64>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// `run`, recording each call's time per iteration under `key`.
fn recorded<S>(
    key: String,
    mut run: impl FnMut(&mut S, u64) -> Duration,
) -> impl FnMut(&mut S, u64) -> Duration {
    move |s, iters| {
        let d = run(s, iters);
        let mut m = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(key.clone())
            .or_default()
            .push(d.as_nanos() as f64 / iters.max(1) as f64);
        d
    }
}

/// The measured samples of `key` (criterion's last 20, or 2 in quick
/// mode), sorted.
fn samples_ns(key: &str) -> Vec<f64> {
    let m = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    let Some(v) = m.get(key) else {
        return Vec::new();
    };
    let keep = if run_mode() == RunMode::Quick { 2 } else { 20 };
    let mut v = v[v.len().saturating_sub(keep)..].to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn benches(c: &mut Criterion) {
    let mut g = Group::new(c, "rpc", Profile::Small);
    for n in CONNS {
        let id = format!("segstack-sim/{n}");
        let run = recorded(g.key(&id), seg_run);
        g.bench(&id, || seg_rig(n, seg_spin()), run);
        let id = format!("segstack-sim-block/{n}");
        let run = recorded(g.key(&id), seg_run);
        g.bench(&id, || seg_rig(n, Duration::ZERO), run);
        let id = format!("kernel-loopback/{n}");
        let run = recorded(g.key(&id), kernel_run);
        g.bench(&id, || kernel_rig(n, Duration::ZERO), run);
        let id = format!("kernel-loopback-spin/{n}");
        let run = recorded(g.key(&id), kernel_run);
        g.bench(&id, || kernel_rig(n, SPIN), run);
    }
    g.finish();
}

fn summary() {
    print_header(
        "RPC workload (44 B request, 151 B response), server thread + client thread, requests/s",
    );
    for n in CONNS {
        let seg_spin = format!("rpc/segstack-sim/{n}");
        let seg_block = format!("rpc/segstack-sim-block/{n}");
        let block = format!("rpc/kernel-loopback/{n}");
        let spin = format!("rpc/kernel-loopback-spin/{n}");
        let (Some(ss), Some(sb), Some(b), Some(s)) = (
            median_ns(&seg_spin),
            median_ns(&seg_block),
            median_ns(&block),
            median_ns(&spin),
        ) else {
            continue;
        };
        // Each stack's better mode in this run (spinning starves the other
        // thread on two shared cores, so blocking often wins for both).
        let seg = if sb <= ss {
            seg_block.clone()
        } else {
            seg_spin.clone()
        };
        let ker = if b <= s { block.clone() } else { spin.clone() };
        for (label, key) in [
            ("segstack, spin 50us", &seg_spin),
            ("segstack, blocks", &seg_block),
            ("kernel, epoll blocks", &block),
            ("kernel, spin 50us", &spin),
        ] {
            let s = samples_ns(key);
            if let (Some(ns), Some(lo), Some(hi)) = (median_ns(key), s.first(), s.last()) {
                println!(
                    "  {n:>3} connections  {label:<20} {:>10.0} requests/s  (samples min {:.0} / median {:.0} / max {:.0}, n={})",
                    1e9 / ns,
                    1e9 / hi,
                    1e9 / ns,
                    1e9 / lo,
                    s.len()
                );
            }
        }
        print_vs(
            &subject(format!("segstack, {n} connections"), seg, None),
            &subject(format!("kernel, {n} connections"), ker, None),
            None,
        );
    }
}

fn main() {
    // Both stacks live in this process, joined by the sim link: `--backend
    // sim` is the only choice (the ring backends' bulk figures are in the
    // `bulk` and `backends` benches).
    let kind = hicamp_benches::net::backend_choice("sim");
    if kind != "sim" {
        eprintln!(
            "--backend {kind}: the rpc bench runs both stacks in one process over the sim link (--backend sim); \
             bulk over tap, af_xdp or af_packet: --bench bulk -- --backend KIND"
        );
        std::process::exit(2);
    }
    if let Ok(spec) = std::env::var("RPC_PROFILE") {
        let mut it = spec.split(':').map(|x| {
            x.parse::<u64>()
                .expect("RPC_PROFILE=<connections>:<requests>")
        });
        let n = it.next().unwrap_or(50) as usize;
        let reqs = it.next().unwrap_or(100_000);
        profile(n, reqs);
        return;
    }
    if let Ok(spec) = std::env::var("RPC_THREADED") {
        let mut it = spec.split(':').map(|x| {
            x.parse::<u64>()
                .expect("RPC_THREADED=<connections>:<requests>")
        });
        let n = it.next().unwrap_or(50) as usize;
        let reqs = it.next().unwrap_or(100_000);
        let mut r = seg_rig(n, seg_spin());
        let d = seg_run(&mut r, reqs);
        println!(
            "rpc threaded: {reqs} requests over {n} connections in {d:?} ({:.0} requests/s)",
            reqs as f64 / d.as_secs_f64()
        );
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    summary();
}
