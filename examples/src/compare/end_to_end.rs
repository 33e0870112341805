//! `--end-to-end` (root, `wrk`): each server answers the kernel's `wrk -t N -c N` (PASTE's
//! client, threads = connections) through a virtual link in network namespaces this module
//! creates and removes.
//!
//! - `hicamp`: phttpd on segstack over a TAP device (the kernel's end, 10.79.0.1, is in the
//!   client namespace; the server, 10.79.0.2, is this process). WAL bodies are logged by
//!   phttpd's own policy: one durable segment-map insert per record, on a file memory with
//!   cache-line durability and the memory kind's emulated latency per barrier.
//! - `linux`: a kernel epoll server (mio) in a second namespace, reached over a veth pair,
//!   `read()`ing requests and, for the WAL, copying each body into a log file mapped shared,
//!   flushing it line by line with a fence and the emulated latency per request (PASTE's
//!   socket mode), then `write()`ing the answer.
//! - `paste` and `paste-copy` have no end-to-end run: PASTE needs its kernel module (netmap
//!   with PASTE's TCP integration), which this machine cannot load.
//!
//! `wrk` sends one fixed body for the WAL (PASTE's `post1024.lua` did too), so `wal-repeat`
//! is not run end to end.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hicamp::{Config, Durability};
use mio::net::{TcpListener as MioListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll, Token};
use nicdma::backend::AnyPort;
use nicdma::tap::{NetNs, TapPort};
use nicdma::Port;
use segstack::iface::{IfaceConfig, Interface};

use super::paste::{copy_entry_len, CopyLog};
use super::region::Region;
use super::{MemKind, Run};
use crate::phttpd::http::{head_end, parse_head};
use crate::phttpd::{persistent_interface, rpc_response, Phttpd};

/// Seconds of each `wrk` run.
pub const WRK_SECONDS: u32 = 2;

/// Whether the end-to-end runs can work here: root and `wrk`.
pub fn available() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("id: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("--end-to-end needs root (network namespaces, TAP)".into());
    }
    Command::new("wrk")
        .arg("--version")
        .output()
        .map_err(|e| format!("--end-to-end needs wrk: {e}"))?;
    Ok(())
}

/// What `wrk --latency` reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkResult {
    /// Requests/s.
    pub req_per_s: f64,
    /// Mean latency, us.
    pub mean_us: f64,
    /// 99th percentile, us.
    pub p99_us: f64,
    /// Requests completed.
    pub requests: u64,
}

fn to_us(v: &str) -> Option<f64> {
    let (num, mul) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * mul)
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(out: &str) -> Option<WrkResult> {
    let mut r = WrkResult {
        req_per_s: 0.0,
        mean_us: 0.0,
        p99_us: 0.0,
        requests: 0,
    };
    let mut seen = false;
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["Latency", avg, ..] if to_us(avg).is_some() => r.mean_us = to_us(avg)?,
            ["99%", v] => r.p99_us = to_us(v)?,
            ["Requests/sec:", v] => {
                r.req_per_s = v.parse().ok()?;
                seen = true;
            }
            [n, "requests", "in", ..] => r.requests = n.parse().ok()?,
            _ => {}
        }
    }
    seen.then_some(r)
}

fn wrk(ns: &NetNs, url: &str, n: usize, script: Option<&Path>) -> Result<WrkResult, String> {
    let mut cmd = ns.command("wrk");
    cmd.args([
        "-t",
        &n.to_string(),
        "-c",
        &n.to_string(),
        "-d",
        &WRK_SECONDS.to_string(),
        "--latency",
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(url);
    let out = cmd.output().map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).ok_or_else(|| {
        format!(
            "wrk gave no result: {} {}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// The kernel epoll server: answers every request with PASTE's response, logging POST bodies
/// (see the module documentation), until `stop`.
fn linux_server(
    l: TcpListener,
    stop: Arc<AtomicBool>,
    mut log: Option<CopyLog>,
) -> io::Result<ServerCounts> {
    let mut c = ServerCounts::default();
    l.set_nonblocking(true)?;
    let mut l = MioListener::from_std(l);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut l, Token(usize::MAX), Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Option<(MioStream, Vec<u8>)>> = Vec::new();
    let resp = rpc_response();
    let mut buf = vec![0u8; 16 << 10];
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for ev in events.iter() {
            if ev.token() == Token(usize::MAX) {
                while let Ok((mut s, _)) = l.accept() {
                    s.set_nodelay(true)?;
                    let t = Token(conns.len());
                    poll.registry().register(&mut s, t, Interest::READABLE)?;
                    conns.push(Some((s, Vec::new())));
                }
                continue;
            }
            let i = ev.token().0;
            let Some(Some((s, pending))) = conns.get_mut(i) else {
                continue;
            };
            let mut closed = false;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        pending.extend_from_slice(&buf[..n]);
                        c.copied += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            while let Ok(Some(end)) = head_end(pending, 0) {
                let Ok(req) = parse_head(&pending[..end]) else {
                    closed = true;
                    break;
                };
                let need = end + req.content_length as usize;
                if pending.len() < need {
                    break;
                }
                if let Some(log) = &mut log {
                    if need > end && log.append(&pending[end..need]).is_ok() {
                        log.log.fence();
                        c.copied += (need - end) as u64;
                        c.records += 1;
                    }
                }
                pending.drain(..need);
                if s.write_all(&resp).is_err() {
                    closed = true;
                    break;
                }
                c.requests += 1;
            }
            if closed {
                conns[i] = None;
            }
        }
    }
    if let Some(log) = &log {
        c.flushed_lines = log.log.counts.flushed_lines;
        c.fences = log.log.counts.fences;
        c.footprint = c.records * copy_entry_len(1024) as u64;
    }
    Ok(c)
}

/// What a server counted during an end-to-end run.
#[derive(Debug, Clone, Copy, Default)]
struct ServerCounts {
    requests: u64,
    records: u64,
    copied: u64,
    header_copied: u64,
    flushed_lines: u64,
    fences: u64,
    footprint: u64,
}

/// The end-to-end runs for `connections`, workloads rpc and wal, memories dram and pm.
pub fn run_all(connections: &[usize], dir: &Path) -> Result<Vec<Run>, String> {
    available()?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let script = dir.join("post1024.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{}\"\nwrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n",
            "a=".to_string() + &"x".repeat(1022)
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut runs = Vec::new();
    for wal in [false, true] {
        for mem in [MemKind::Dram, MemKind::Pm] {
            if !wal && mem == MemKind::Pm {
                continue;
            }
            for &n in connections {
                runs.push(hicamp_run(n, wal, mem, dir, &script)?);
                runs.push(linux_run(n, wal, mem, dir, &script)?);
            }
        }
    }
    Ok(runs)
}

fn run_of(
    model: &'static str,
    n: usize,
    wal: bool,
    mem: MemKind,
    w: WrkResult,
    c: ServerCounts,
) -> Run {
    let per = |x: u64| x as f64 / c.requests.max(1) as f64;
    Run {
        model,
        workload: if wal { "wal" } else { "rpc" },
        connections: n,
        memory: mem.name(),
        kind: "end-to-end",
        includes: if model == "hicamp" {
            "wrk -t N -c N in a namespace -> TAP -> phttpd on segstack (this process, one thread); WAL: one durable map insert per record"
        } else {
            "wrk -t N -c N in a namespace -> veth -> kernel epoll server in a second namespace; WAL: memcpy into an mmap'd log + clwb + sfence + PM latency per request"
        },
        requests: w.requests,
        req_per_s: w.req_per_s,
        req_per_s_total: w.req_per_s,
        batches: 0,
        mean_us: w.mean_us,
        p99_us: w.p99_us,
        copied_bytes_per_req: per(c.copied),
        header_bytes_copied_per_req: per(c.header_copied),
        response_bytes_copied_per_req: if model == "hicamp" { 0.0 } else { 151.0 },
        flushed_lines_per_req: per(c.flushed_lines),
        fences_per_req: per(c.fences),
        records: c.records,
        footprint_bytes: c.footprint,
        memory_per_record_bytes: (c.records > 0).then(|| c.footprint as f64 / c.records as f64),
        arrival_ns_per_req: 0.0,
        line_ops: None,
        commit: (model == "hicamp" && wal).then_some("per-record"),
    }
}

fn hicamp_run(n: usize, wal: bool, mem: MemKind, dir: &Path, script: &Path) -> Result<Run, String> {
    let cfg = Config {
        capacity_lines: 1 << 24,
        map_capacity: 1 << 21,
        durability: Durability::CacheLine,
        pm_write_latency_ns: if mem == MemKind::Pm {
            super::PM_LATENCY_NS
        } else {
            0
        },
        ..Config::default()
    };
    let file = dir.join("e2e-hicamp.mem");
    let memory = super::server_memory(&file, cfg, wal)?;
    let port = TapPort::open("").map_err(|e| format!("TAP: {e}"))?;
    let ns = NetNs::create().map_err(|e| format!("namespace: {e}"))?;
    let dev = port.name().to_owned();
    ns.adopt(&dev, Some("10.79.0.1/24"))
        .map_err(|e| format!("namespace: {e}"))?;
    let ip = Ipv4Addr::new(10, 79, 0, 2);
    let mut icfg = IfaceConfig::new([2, 0, 0, 0x79, 0, 2], ip, 24);
    icfg.tcp.nagle = false;
    let mut iface = if wal {
        persistent_interface(&memory, AnyPort::Tap(port), icfg)
    } else {
        Interface::new(&memory, AnyPort::Tap(port), icfg)
    }
    .map_err(|e| e.to_string())?;
    let mut server = Phttpd::new(&mut iface, 80, 0, wal).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let base = memory.stats();
    let t = std::thread::spawn(move || -> Result<crate::phttpd::PhttpdStats, String> {
        let t0 = Instant::now();
        while !s2.load(Ordering::Relaxed) {
            let now = t0.elapsed().as_nanos() as u64;
            server.poll(&mut iface, now).map_err(|e| e.to_string())?;
            // Answers queued by that poll leave on the next one: poll again at once rather
            // than after the wait.
            let now = t0.elapsed().as_nanos() as u64;
            server.poll(&mut iface, now).map_err(|e| e.to_string())?;
            let wait = iface.poll_at().map_or(Duration::from_millis(2), |t| {
                Duration::from_nanos(t.saturating_sub(now)).min(Duration::from_millis(2))
            });
            let _ = nicdma::port::wait_readable(iface.nic().port(), wait);
        }
        Ok(*server.stats())
    });
    let r = wrk(&ns, &format!("http://{ip}:80/"), n, wal.then_some(script));
    stop.store(true, Ordering::Relaxed);
    let served = t.join().map_err(|_| "hicamp server panicked".to_string())?;
    drop(ns);
    let st = memory.stats();
    drop(memory);
    let _ = std::fs::remove_file(&file);
    let ps = served?;
    let created = (st.leaf_lines_created + st.interior_lines_created)
        - (base.leaf_lines_created + base.interior_lines_created);
    let records = if wal { ps.posts } else { 0 };
    let c = ServerCounts {
        requests: ps.requests,
        records,
        copied: ps.wal_copied,
        header_copied: ps.header_bytes_copied,
        flushed_lines: if wal { created + records } else { 0 },
        fences: 2 * records,
        footprint: if wal {
            st.footprint_bytes().saturating_sub(base.footprint_bytes())
        } else {
            0
        },
    };
    Ok(run_of("hicamp", n, wal, mem, r?, c))
}

fn linux_run(n: usize, wal: bool, mem: MemKind, dir: &Path, script: &Path) -> Result<Run, String> {
    let client = NetNs::create().map_err(|e| format!("namespace: {e}"))?;
    let server_ns = NetNs::create().map_err(|e| format!("namespace: {e}"))?;
    let e = |x: nicdma::tap::NetNsError| format!("namespace: {x}");
    client
        .veth_pair("cmpc0", "cmps0", "10.80.0.1/24", false)
        .map_err(e)?;
    client
        .ip(&["link", "set", "dev", "cmps0", "netns", server_ns.name()])
        .map_err(e)?;
    server_ns
        .ip(&["addr", "add", "10.80.0.2/24", "dev", "cmps0"])
        .map_err(e)?;
    server_ns
        .ip(&["link", "set", "dev", "cmps0", "up"])
        .map_err(e)?;
    let l = server_ns
        .run_in(|| TcpListener::bind("10.80.0.2:8080"))
        .map_err(e)?
        .map_err(|x| format!("bind: {x}"))?;
    let log_path = dir.join("e2e-linux.log");
    let _ = std::fs::remove_file(&log_path);
    let log = if wal {
        let lat = if mem == MemKind::Pm {
            super::PM_LATENCY_NS
        } else {
            0
        };
        Some(CopyLog::new(
            Region::file(
                &log_path,
                65_536 * copy_entry_len(1024),
                Durability::CacheLine,
                lat,
            )
            .map_err(|x| format!("{}: {x}", log_path.display()))?,
        ))
    } else {
        None
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let t = std::thread::spawn(move || linux_server(l, s2, log));
    let r = wrk(&client, "http://10.80.0.2:8080/", n, wal.then_some(script));
    stop.store(true, Ordering::Relaxed);
    let served = t.join().map_err(|_| "linux server panicked".to_string())?;
    drop(server_ns);
    drop(client);
    let _ = std::fs::remove_file(&log_path);
    let c = served.map_err(|x| x.to_string())?;
    Ok(run_of("linux", n, wal, mem, r?, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 2s test @ http://10.79.0.2:80/\n  1 threads and 1 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency    52.10us   10.00us   1.20ms   90.00%\n    Req/Sec    18.00k     1.00k   19.00k    70.00%\n  Latency Distribution\n     50%   50.00us\n     75%   55.00us\n     90%   60.00us\n     99%    1.50ms\n  36000 requests in 2.00s, 5.19MB read\nRequests/sec:  18000.50\nTransfer/sec:      2.60MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.req_per_s, 18000.5);
        assert!((r.mean_us - 52.1).abs() < 1e-9);
        assert!((r.p99_us - 1500.0).abs() < 1e-9);
        assert_eq!(r.requests, 36000);
        let out = out.replace(
            "Latency Distribution",
            "Latency Distribution (HdrHistogram)",
        );
        assert_eq!(parse_wrk(&out).unwrap().req_per_s, 18000.5);
        assert!(parse_wrk("garbage").is_none());
    }
}
