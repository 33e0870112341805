//! The PASTE-style tables beside PASTE's published numbers, and the JSON document.

use std::fmt::Write as _;

use serde::Serialize;

use super::recovery::RecoveryResult;
use super::{FootprintSeries, Run};

/// PASTE's published RPC numbers (wrk, 10 GbE, 1 core): `(connections, Linux req/s, Linux
/// mean us, PASTE req/s, PASTE mean us)`.
pub const PUBLISHED_RPC: [(usize, f64, f64, f64, f64); 3] = [
    (1, 32_504.0, 29.5, 39_692.0, 24.1),
    (50, 351_932.0, 140.3, 521_441.0, 94.6),
    (100, 351_019.0, 286.4, 555_360.0, 178.7),
];

/// PASTE's published WAL numbers (1 core): `(connections, memory, Linux, PASTE with copy,
/// PASTE zero-copy)` in requests/s.
pub const PUBLISHED_WAL: [(usize, &str, f64, f64, f64); 6] = [
    (1, "dram", 28_070.0, 34_033.0, 35_557.0),
    (50, "dram", 271_405.0, 373_523.0, 483_074.0),
    (100, "dram", 278_319.0, 377_239.0, 518_150.0),
    (1, "pm", 21_315.0, 24_314.0, 24_899.0),
    (50, "pm", 71_742.0, 324_804.0, 403_654.0),
    (100, "pm", 72_152.0, 351_032.0, 462_108.0),
];

/// A published figure, for the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// `rpc` or `wal`.
    pub workload: &'static str,
    /// Model.
    pub model: &'static str,
    /// Connections.
    pub connections: usize,
    /// `dram` or `pm`.
    pub memory: &'static str,
    /// Requests/s.
    pub req_per_s: f64,
    /// Mean latency (RPC only).
    pub mean_us: Option<f64>,
}

/// PASTE's published numbers as a list.
pub fn published() -> Vec<Published> {
    let mut v = Vec::new();
    for (n, l, lm, p, pm) in PUBLISHED_RPC {
        v.push(Published {
            workload: "rpc",
            model: "linux",
            connections: n,
            memory: "dram",
            req_per_s: l,
            mean_us: Some(lm),
        });
        v.push(Published {
            workload: "rpc",
            model: "paste",
            connections: n,
            memory: "dram",
            req_per_s: p,
            mean_us: Some(pm),
        });
    }
    for (n, mem, l, c, z) in PUBLISHED_WAL {
        for (model, r) in [("linux", l), ("paste-copy", c), ("paste", z)] {
            v.push(Published {
                workload: "wal",
                model,
                connections: n,
                memory: mem,
                req_per_s: r,
                mean_us: None,
            });
        }
    }
    v
}

/// The JSON document `hicamp compare --json` writes.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Format version.
    pub version: u32,
    /// The cache-line write-back instruction the flushes used.
    pub flush_instruction: &'static str,
    /// Emulated PM latency of the `pm` runs, per barrier.
    pub pm_latency_ns: u32,
    /// Where the memory, pool and log files were.
    pub files_dir: String,
    /// Every run.
    pub runs: Vec<Run>,
    /// Footprint against records logged.
    pub footprint: Vec<FootprintSeries>,
    /// HICAMP's whole software path over the sim link (kind `sim-link`).
    pub sim_link: Vec<super::sim_link::SimRun>,
    /// The recovery experiment.
    pub recovery: Vec<RecoveryResult>,
    /// PASTE's published numbers.
    pub published: Vec<Published>,
    /// Ratios within this run.
    pub ratios: Vec<Ratio>,
}

/// A same-run ratio.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// What it compares.
    pub what: String,
    /// Measured here.
    pub measured: f64,
    /// PASTE's published ratio, if any.
    pub published: Option<f64>,
}

fn find<'a>(
    runs: &'a [Run],
    model: &str,
    w: &str,
    n: usize,
    mem: &str,
    kind: &str,
) -> Option<&'a Run> {
    runs.iter().find(|r| {
        r.model == model
            && r.workload == w
            && r.connections == n
            && r.memory == mem
            && r.kind == kind
    })
}

fn cell(r: Option<&Run>) -> String {
    r.map_or("-".into(), |r| {
        format!("{:>9.0} /{:>7.1}", r.req_per_s, r.mean_us)
    })
}

/// Same-run ratios of requests/s.
pub fn ratios(runs: &[Run], kind: &str) -> Vec<Ratio> {
    let mut v = Vec::new();
    let mut add = |what: String, a: Option<&Run>, b: Option<&Run>, published: Option<f64>| {
        if let (Some(a), Some(b)) = (a, b) {
            if b.req_per_s > 0.0 {
                v.push(Ratio {
                    what,
                    measured: a.req_per_s / b.req_per_s,
                    published,
                });
            }
        }
    };
    let n = 50;
    add(
        format!("rpc {n} conn dram: paste / linux"),
        find(runs, "paste", "rpc", n, "dram", kind),
        find(runs, "linux", "rpc", n, "dram", kind),
        Some(521_441.0 / 351_932.0),
    );
    add(
        format!("rpc {n} conn dram: hicamp / paste"),
        find(runs, "hicamp", "rpc", n, "dram", kind),
        find(runs, "paste", "rpc", n, "dram", kind),
        None,
    );
    for w in ["wal", "wal-repeat"] {
        for mem in ["dram", "pm"] {
            let pubz = |i: usize| {
                PUBLISHED_WAL
                    .iter()
                    .find(|p| p.0 == n && p.1 == mem)
                    .map(|p| match i {
                        0 => p.4 / p.3,
                        _ => p.4 / p.2,
                    })
            };
            add(
                format!("{w} {n} conn {mem}: paste / paste-copy"),
                find(runs, "paste", w, n, mem, kind),
                find(runs, "paste-copy", w, n, mem, kind),
                pubz(0),
            );
            add(
                format!("{w} {n} conn {mem}: paste / linux"),
                find(runs, "paste", w, n, mem, kind),
                find(runs, "linux", w, n, mem, kind),
                pubz(1),
            );
            add(
                format!("{w} {n} conn {mem}: hicamp / paste"),
                find(runs, "hicamp", w, n, mem, kind),
                find(runs, "paste", w, n, mem, kind),
                None,
            );
            add(
                format!("{w} {n} conn {mem}: hicamp / linux"),
                find(runs, "hicamp", w, n, mem, kind),
                find(runs, "linux", w, n, mem, kind),
                None,
            );
        }
    }
    v
}

/// The tables, as text.
pub fn tables(runs: &[Run], kind: &str, connections: &[usize]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n== {kind} runs: requests/s / mean latency (us); PASTE's published figures beside (wrk, 10 GbE) =="
    );
    let _ = writeln!(s, "\nRPC (44 B GET, 151 B response), DRAM");
    let _ = writeln!(
        s,
        "{:>5} | {:>18} {:>18} {:>18} | {:>20} {:>20}",
        "conns", "linux", "paste", "hicamp", "published Linux", "published PASTE"
    );
    for &n in connections {
        let p = PUBLISHED_RPC.iter().find(|p| p.0 == n);
        let _ = writeln!(
            s,
            "{n:>5} | {:>18} {:>18} {:>18} | {:>20} {:>20}",
            cell(find(runs, "linux", "rpc", n, "dram", kind)),
            cell(find(runs, "paste", "rpc", n, "dram", kind)),
            cell(find(runs, "hicamp", "rpc", n, "dram", kind)),
            p.map_or("-".into(), |p| format!("{:.0} /{:.1}", p.1, p.2)),
            p.map_or("-".into(), |p| format!("{:.0} /{:.1}", p.3, p.4)),
        );
    }
    for w in ["wal", "wal-repeat"] {
        for mem in ["dram", "pm"] {
            let title = match (w, mem) {
                ("wal", "dram") if kind == "end-to-end" => {
                    "WAL (wrk's POST with one fixed 1 KiB body, 151 B response), DRAM"
                }
                ("wal", "dram") => "WAL (1156 B POST, unique 1 KiB body, 151 B response), DRAM",
                ("wal", _) => "WAL, 10 us emulated PM write latency per barrier",
                (_, "dram") => "WAL-repeat (the generator's bodies: JSON logs, retries), DRAM",
                _ => "WAL-repeat, 10 us emulated PM write latency per barrier",
            };
            if !runs
                .iter()
                .any(|r| r.workload == w && r.memory == mem && r.kind == kind)
            {
                continue;
            }
            let _ = writeln!(s, "\n{title}");
            let _ = writeln!(
                s,
                "{:>5} | {:>18} {:>18} {:>18} {:>18} | {:>9} {:>9} {:>9}",
                "conns",
                "linux",
                "paste-copy",
                "paste",
                "hicamp",
                "pub Linux",
                "pub copy",
                "pub zc"
            );
            for &n in connections {
                let p = PUBLISHED_WAL.iter().find(|p| p.0 == n && p.1 == mem);
                let f = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.0}"));
                let _ = writeln!(
                    s,
                    "{n:>5} | {:>18} {:>18} {:>18} {:>18} | {:>9} {:>9} {:>9}",
                    cell(find(runs, "linux", w, n, mem, kind)),
                    cell(find(runs, "paste-copy", w, n, mem, kind)),
                    cell(find(runs, "paste", w, n, mem, kind)),
                    cell(find(runs, "hicamp", w, n, mem, kind)),
                    f(p.map(|p| p.2)),
                    f(p.map(|p| p.3)),
                    f(p.map(|p| p.4)),
                );
            }
        }
    }
    let n = connections.iter().copied().max().unwrap_or(1);
    let _ = writeln!(
        s,
        "\nPer request at {n} connections, DRAM: payload bytes copied (header window), response bytes written, lines flushed, fences, p99 us; held per record and footprint after the run"
    );
    let _ = writeln!(
        s,
        "{:<11} {:<10} | {:>13} {:>6} {:>7} {:>6} {:>8} | {:>8} {:>8} {:>12}",
        "model",
        "workload",
        "copied(hdr)",
        "resp",
        "flushed",
        "fences",
        "p99 us",
        "records",
        "B/record",
        "footprint B"
    );
    for w in ["rpc", "wal", "wal-repeat"] {
        for m in ["linux", "paste-copy", "paste", "hicamp"] {
            if let Some(r) = find(runs, m, w, n, "dram", kind) {
                let _ = writeln!(
                    s,
                    "{:<11} {:<10} | {:>6.0} ({:>4.0}) {:>6.0} {:>7.1} {:>6.2} {:>8.1} | {:>8} {:>8} {:>12}",
                    m,
                    w,
                    r.copied_bytes_per_req,
                    r.header_bytes_copied_per_req,
                    r.response_bytes_copied_per_req,
                    r.flushed_lines_per_req,
                    r.fences_per_req,
                    r.p99_us,
                    r.records,
                    r.memory_per_record_bytes
                        .map_or("-".into(), |b| format!("{b:.0}")),
                    r.footprint_bytes
                );
            }
        }
    }
    let hs: Vec<&Run> = runs
        .iter()
        .filter(|r| {
            r.model == "hicamp" && r.connections == n && r.memory == "dram" && r.kind == kind
        })
        .collect();
    if !hs.is_empty() {
        let _ = writeln!(
            s,
            "\nHICAMP line operations per request ({n} connections, DRAM; arrival's deposit included)"
        );
        let _ = writeln!(
            s,
            "{:<10} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>10}",
            "workload", "written", "dedup", "created", "shared", "read", "visited", "arrival ns"
        );
        for r in hs {
            if let Some(o) = r.line_ops {
                let _ = writeln!(
                    s,
                    "{:<10} | {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>10.0}",
                    r.workload,
                    o.lines_written_per_req,
                    o.lines_deduplicated_per_req,
                    o.lines_created_per_req,
                    o.lines_shared_per_req,
                    o.lines_read_per_req,
                    o.dag_nodes_visited_per_req,
                    r.arrival_ns_per_req
                );
            }
        }
    }
    let rs = ratios(runs, kind);
    if !rs.is_empty() {
        let _ = writeln!(
            s,
            "\nSame-run ratios of requests/s (published ratio beside)"
        );
        for r in rs {
            let _ = writeln!(
                s,
                "  {:<42} {:>6.2}x   {}",
                r.what,
                r.measured,
                r.published
                    .map_or(String::new(), |p| format!("(PASTE: {p:.2}x)"))
            );
        }
    }
    s
}

/// The sim-link table.
pub fn sim_table(runs: &[super::sim_link::SimRun]) -> String {
    let mut s = String::new();
    if runs.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "\nHICAMP's whole path over the sim link (phttpd on segstack, server polls timed, client stack not; one durable map insert per record)"
    );
    let _ = writeln!(
        s,
        "{:<4} {:<5} {:>5} | {:>10} {:>9} {:>9} | {:>7} {:>6} {:>8} {:>6} | {:>9}",
        "wl",
        "mem",
        "conns",
        "req/s",
        "mean us",
        "p99 us",
        "copied",
        "hdr",
        "flushed",
        "fences",
        "B/record"
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{:<4} {:<5} {:>5} | {:>10.0} {:>9.1} {:>9.1} | {:>7.1} {:>6.0} {:>8.1} {:>6.2} | {:>9}",
            r.workload,
            r.memory,
            r.connections,
            r.req_per_s,
            r.mean_us,
            r.p99_us,
            r.copied_bytes_per_req,
            r.header_bytes_copied_per_req,
            r.flushed_lines_per_req,
            r.fences_per_req,
            if r.records > 0 {
                format!("{:.0}", r.footprint_bytes as f64 / r.records as f64)
            } else {
                "-".into()
            }
        );
    }
    s
}
