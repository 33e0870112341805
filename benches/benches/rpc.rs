//! The PASTE RPC workload: closed-loop clients send a 44-byte HTTP request
//! and wait for the 151-byte response, over 1, 50 and 100 connections.
//!
//! - segstack: the phttpd-like server (examples/src/phttpd.rs) on one
//!   interface, the clients on another, joined by the sim backend; both
//!   stacks run in this thread, as a single-core user-space stack would.
//! - baseline, same run: the Linux kernel over loopback TCP, an epoll
//!   server thread answering the same bytes, driven by the same client logic
//!   over non-blocking sockets.
//!
//! One iteration is one request answered; the summary prints requests per
//! second and the ratio.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hicamp::{Config, Memory};
use hicamp_benches::{median_ns, print_header, print_vs, subject, Group, Profile};
use hicamp_examples::phttpd::{rpc_request, rpc_response, Phttpd, RESPONSE_LEN};
use mio::net::{TcpListener as MioListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll, Token};
use nicdma::sim::LinkConfig;
use segstack::iface::IfaceError;
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

// ---- segstack over sim ---------------------------------------------------------

struct SegRig {
    pair: SimPair,
    server: Phttpd,
    conns: Vec<segstack::iface::SocketHandle>,
    state: Vec<RpcConn>,
}

fn seg_rig(n: usize) -> SegRig {
    let mem = Memory::new(Config {
        capacity_lines: 1 << 21,
        map_capacity: 1 << 16,
        ..Config::default()
    })
    .expect("memory");
    let mut pair = SimPair::new(&mem, LinkConfig::default(), 7, |c| {
        c.tcp.nagle = false;
    })
    .expect("sim pair");
    let server = Phttpd::new(&mut pair.b, 80, 0, false).expect("server");
    let now = pair.now();
    let conns = (0..n)
        .map(|_| {
            pair.a
                .tcp_connect(SocketAddrV4::new(B_IP, 80), now)
                .expect("connect")
        })
        .collect();
    let mut rig = SegRig {
        pair,
        server,
        conns,
        state: vec![RpcConn::default(); n],
    };
    // Warm up: every connection established and one request answered.
    seg_run(&mut rig, n as u64);
    rig
}

fn seg_step(r: &mut SegRig) -> u64 {
    let now = r.pair.now();
    let ev = r.pair.b.poll(now).expect("poll").to_vec();
    r.server.handle(&mut r.pair.b, &ev).expect("serve");
    r.pair.a.poll(now).expect("poll");
    let a = &mut r.pair.a;
    let conns = &r.conns;
    let done = {
        let cell = std::cell::RefCell::new(a);
        pump(
            &mut r.state,
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
        )
    };
    if done == 0 {
        // Nothing completed: let the sim clock move to the next event.
        r.pair.step().expect("step");
    }
    done
}

fn seg_run(r: &mut SegRig, iters: u64) -> Duration {
    let t = Instant::now();
    let mut done = 0;
    while done < iters {
        done += seg_step(r);
    }
    t.elapsed()
}

// ---- the kernel over loopback ------------------------------------------------

struct KernelRig {
    poll: Poll,
    events: Events,
    conns: Vec<MioStream>,
    state: Vec<RpcConn>,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
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

/// An epoll server answering every complete request with the response.
fn kernel_server(l: TcpListener, stop: Arc<AtomicBool>) {
    l.set_nonblocking(true).expect("nonblocking");
    let mut l = MioListener::from_std(l);
    let mut poll = Poll::new().expect("epoll");
    poll.registry()
        .register(&mut l, Token(usize::MAX), Interest::READABLE)
        .expect("register");
    let resp = rpc_response();
    let mut events = Events::with_capacity(256);
    let mut conns: Vec<(MioStream, Vec<u8>)> = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(20)))
            .expect("poll");
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

fn kernel_rig(n: usize) -> KernelRig {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let server = std::thread::spawn(move || kernel_server(l, s2));
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
        poll,
        events: Events::with_capacity(1024),
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
            r.poll
                .poll(&mut r.events, Some(Duration::from_millis(50)))
                .expect("poll");
        }
    }
    t.elapsed()
}

fn benches(c: &mut Criterion) {
    let mut g = Group::new(c, "rpc", Profile::Small);
    for n in [1usize, 50, 100] {
        g.bench(&format!("segstack-sim/{n}"), || seg_rig(n), seg_run);
        g.bench(
            &format!("kernel-loopback/{n}"),
            || kernel_rig(n),
            kernel_run,
        );
    }
    g.finish();
}

fn summary() {
    print_header("RPC workload (44 B request, 151 B response), requests/s");
    for n in [1usize, 50, 100] {
        let seg = format!("rpc/segstack-sim/{n}");
        let ker = format!("rpc/kernel-loopback/{n}");
        if median_ns(&seg).is_none() || median_ns(&ker).is_none() {
            continue;
        }
        for (label, key) in [("segstack over sim", &seg), ("kernel loopback", &ker)] {
            if let Some(ns) = median_ns(key) {
                println!(
                    "  {n:>3} connections  {label:<18} {:>10.0} requests/s",
                    1e9 / ns
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
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    summary();
}
