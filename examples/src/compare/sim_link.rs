//! HICAMP through its whole software path, without root: phttpd on segstack (the server's
//! NIC deposits frames into segments, segstack's TCP, phttpd's parse, splice and durable
//! map insert per record) against a client segstack interface over the sim link, both in
//! this thread. Only the server's polls are timed; a round sends one request per connection
//! and ends when every answer is back.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use hicamp::{Config, Durability};
use segstack::iface::IfaceError;
use segstack::sim::B_IP;
use serde::Serialize;

use super::traffic::{Traffic, Workload};
use super::{MemKind, Options};
use crate::phttpd::{is_transient, sim_pair, Phttpd, RESPONSE_LEN};

/// One sim-link run of HICAMP.
#[derive(Debug, Clone, Serialize)]
pub struct SimRun {
    /// Always `hicamp`.
    pub model: &'static str,
    /// `rpc` or `wal`.
    pub workload: &'static str,
    /// Connections.
    pub connections: usize,
    /// `dram` or `pm`.
    pub memory: &'static str,
    /// Always `sim-link`.
    pub kind: &'static str,
    /// What the timed part includes.
    pub includes: &'static str,
    /// Requests answered.
    pub requests: u64,
    /// Connections over the median round's server time.
    pub req_per_s: f64,
    /// Mean server time per round, us (every request of a round waits for it).
    pub mean_us: f64,
    /// 99th percentile of the rounds' server time, us.
    pub p99_us: f64,
    /// Body bytes phttpd copied while splicing records (its partial first lines).
    pub copied_bytes_per_req: f64,
    /// Header bytes copied into phttpd's parse window.
    pub header_bytes_copied_per_req: f64,
    /// Lines created (each flushed by the next barrier) and the map entries' lines.
    pub flushed_lines_per_req: f64,
    /// Two sfences per committed record.
    pub fences_per_req: f64,
    /// Records logged.
    pub records: u64,
    /// Footprint growth of the server's memory.
    pub footprint_bytes: u64,
}

fn e(x: IfaceError) -> String {
    x.to_string()
}

/// One run.
pub fn run_one(
    workload: Workload,
    n: usize,
    mem: MemKind,
    traffic: &Traffic,
    opts: &Options,
) -> Result<SimRun, String> {
    let wal = workload.is_wal();
    let cfg = Config {
        capacity_lines: 1 << 22,
        map_capacity: (opts.max_requests + 4096) as u32,
        durability: Durability::CacheLine,
        pm_write_latency_ns: mem.latency_ns(),
        ..Config::default()
    };
    std::fs::create_dir_all(&opts.dir).map_err(|x| x.to_string())?;
    let file = opts.dir.join("sim-hicamp.mem");
    let memory = super::server_memory(&file, cfg, wal)?;
    let mut pair = sim_pair(&memory, wal)?;
    let mut server = Phttpd::new(&mut pair.b, 80, 0, wal).map_err(e)?;
    let now = pair.now();
    let conns: Vec<_> = (0..n)
        .map(|_| pair.a.tcp_connect(SocketAddrV4::new(B_IP, 80), now))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let base = memory.stats();
    let mut rounds: Vec<u64> = Vec::new();
    let mut served = Duration::ZERO;
    let wall = Instant::now();
    let mut k = 0u64;
    let mut buf = [0u8; 1024];
    let mut requests = 0u64;
    while k < opts.max_requests && served < opts.budget && wall.elapsed() < opts.budget * 10 {
        let reqs: Vec<Vec<u8>> = (0..n)
            .map(|c| traffic.payload(k + c as u64, c).into_owned())
            .collect();
        k += n as u64;
        let mut sent = vec![0usize; n];
        let mut got = vec![0usize; n];
        let mut done = 0;
        let mut round = Duration::ZERO;
        let round_wall = Instant::now();
        while done < n {
            if round_wall.elapsed() > Duration::from_secs(10) {
                return Err("sim link: a round did not complete in 10 s".into());
            }
            let now = pair.now();
            let t = Instant::now();
            server.poll(&mut pair.b, now).map_err(e)?;
            round += t.elapsed();
            pair.a.poll(now).map_err(e)?;
            let mut progress = false;
            for (i, &c) in conns.iter().enumerate() {
                if sent[i] < reqs[i].len() && pair.a.tcp(c).map_err(e)?.can_send() {
                    match pair.a.send_slice(c, &reqs[i][sent[i]..]) {
                        Ok(m) => {
                            sent[i] += m;
                            progress |= m > 0;
                        }
                        Err(IfaceError::WouldBlock) => {}
                        Err(x) => return Err(x.to_string()),
                    }
                }
                while let Ok(m) = pair.a.recv_slice(c, &mut buf) {
                    if m == 0 {
                        return Err("sim link: the server closed a connection".into());
                    }
                    got[i] += m;
                    progress = true;
                    if got[i] == RESPONSE_LEN {
                        done += 1;
                    }
                }
            }
            if !progress {
                match pair.step() {
                    Err(x) if is_transient(&x) => {}
                    r => {
                        r.map_err(e)?;
                    }
                }
            }
        }
        served += round;
        rounds.push(round.as_nanos() as u64);
        requests += n as u64;
    }
    let st = memory.stats();
    let ps = *server.stats();
    drop(server);
    drop(pair);
    drop(memory);
    let _ = std::fs::remove_file(&file);
    rounds.sort_unstable();
    let median = rounds.get(rounds.len() / 2).copied().unwrap_or(0).max(1);
    let p99 = rounds
        .get(((rounds.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0);
    let per = |x: u64| x as f64 / requests.max(1) as f64;
    let records = if wal { ps.posts } else { 0 };
    let created = (st.leaf_lines_created + st.interior_lines_created)
        - (base.leaf_lines_created + base.interior_lines_created);
    Ok(SimRun {
        model: "hicamp",
        workload: workload.name(),
        connections: n,
        memory: mem.name(),
        kind: "sim-link",
        includes: "phttpd on segstack: server NIC deposit, TCP, parse window, splice (phttpd's layout), one durable map insert per record, answer by snapshot; the client stack's work is not timed",
        requests,
        req_per_s: n as f64 * 1e9 / median as f64,
        mean_us: served.as_nanos() as f64 / rounds.len().max(1) as f64 / 1e3,
        p99_us: p99 as f64 / 1e3,
        copied_bytes_per_req: per(ps.wal_copied),
        header_bytes_copied_per_req: per(ps.header_bytes_copied),
        flushed_lines_per_req: if wal { per(created + records) } else { 0.0 },
        fences_per_req: per(2 * records),
        records,
        footprint_bytes: if wal {
            st.footprint_bytes().saturating_sub(base.footprint_bytes())
        } else {
            0
        },
    })
}

/// Every sim-link run: rpc (DRAM), wal (DRAM and PM), at each connection count.
pub fn run_all(opts: &Options, mut progress: impl FnMut(&SimRun)) -> Result<Vec<SimRun>, String> {
    let mut v = Vec::new();
    for (w, mem) in [
        (Workload::Rpc, MemKind::Dram),
        (Workload::Wal, MemKind::Dram),
        (Workload::Wal, MemKind::Pm),
    ] {
        if !opts.workloads.contains(&w) {
            continue;
        }
        let traffic = Traffic::new(w, opts.posts.min(2000), opts.seed);
        for &n in &opts.connections {
            let r = run_one(w, n, mem, &traffic, opts)?;
            progress(&r);
            v.push(r);
        }
    }
    Ok(v)
}
