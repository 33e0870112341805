//! `hicamp compare`: HICAMP segments against PASTE's buffer model, PASTE with copy and a
//! Linux epoll server on PASTE's RPC and WAL workloads (see [`crate::compare`]).

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::compare::models::ModelKind;
use crate::compare::recovery::{self, ServeSpec};
use crate::compare::report::{published, ratios, sim_table, tables, Report};
use crate::compare::traffic::Workload;
use crate::compare::{default_dir, end_to_end, plots, run_all, sim_link, Options, PM_LATENCY_NS};

/// Arguments of `hicamp compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Write the results as JSON to FILE (`runs`: model, workload, connections, memory, kind
    /// and the metrics).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write SVG plots into DIR (requests/s against connections; footprint against records).
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Also run each server under `wrk` over a TAP link (needs root and wrk).
    #[arg(long)]
    end_to_end: bool,
    /// A reduced, fast setting (tests).
    #[arg(long)]
    quick: bool,
    /// Skip the recovery experiment.
    #[arg(long)]
    no_recovery: bool,
    /// Directory for the memory, pool and log files (default: a new directory on /dev/shm).
    #[arg(long, value_name = "DIR")]
    files: Option<PathBuf>,
    /// Traffic seed.
    #[arg(long)]
    seed: Option<u64>,
    /// HICAMP's durable commits: one per RX batch (as PASTE fences once per batch), or one per
    /// record (phttpd's policy).
    #[arg(long, value_enum, default_value_t = Commit::Batch)]
    hicamp_commit: Commit,
    /// (internal) Be the recovery experiment's server: MODEL serves WAL batches and prints
    /// `ack K` per answered request.
    #[arg(long, hide = true, value_name = "MODEL")]
    serve_wal: Option<String>,
    /// (internal) Extra buffers of a PASTE child.
    #[arg(long, hide = true, default_value_t = 1024)]
    extra: u32,
    /// (internal) Log records of a child.
    #[arg(long, hide = true, default_value_t = 16_384)]
    log_records: usize,
    /// (internal) First request number of a child.
    #[arg(long, hide = true, default_value_t = 0)]
    first: u64,
    /// (internal) Records a child logs at most.
    #[arg(long, hide = true, default_value_t = 100_000)]
    limit: u64,
}

/// HICAMP's commit policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Commit {
    /// One durable map commit per RX batch.
    Batch,
    /// One per record.
    Record,
}

fn model_of(s: &str) -> Option<ModelKind> {
    ModelKind::ALL.into_iter().find(|m| m.name() == s)
}

fn bar(quiet: bool, total: u64) -> ProgressBar {
    if quiet || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{msg:<40} {wide_bar} {pos}/{len} runs, eta {eta}")
            .expect("valid progress template"),
    );
    pb
}

/// Runs `hicamp compare`; errors are messages.
pub fn run(args: &CompareArgs, quiet: bool) -> Result<(), String> {
    if let Some(m) = &args.serve_wal {
        let model = model_of(m).ok_or_else(|| format!("unknown model '{m}'"))?;
        let dir = args.files.clone().ok_or("--serve-wal needs --files DIR")?;
        let spec = ServeSpec {
            model,
            dir,
            seed: args.seed.unwrap_or(1),
            extra: args.extra,
            log_records: args.log_records,
            limit: args.limit,
            group_commit: args.hicamp_commit == Commit::Batch,
            first: args.first,
        };
        let mut out = io::stdout().lock();
        return recovery::serve_wal(&spec, &mut out).map_err(|e| e.to_string());
    }
    let start = Instant::now();
    let made_dir = args.files.is_none();
    let dir = args.files.clone().unwrap_or_else(default_dir);
    let mut opts = if args.quick {
        Options::quick_in(dir.clone())
    } else {
        Options::default_in(dir.clone())
    };
    if let Some(s) = args.seed {
        opts.seed = s;
    }
    opts.hicamp_group_commit = args.hicamp_commit == Commit::Batch;
    let total =
        opts.workloads.len() * opts.connections.len() * opts.memories.len() * opts.models.len();
    let sims = 3 * opts.connections.len() as u64;
    let pb = bar(
        quiet,
        total as u64 + sims + if args.no_recovery { 0 } else { 4 },
    );
    let result = (|| -> Result<Report, String> {
        let (mut runs, series) = run_all(&opts, |_, _, r| {
            pb.set_message(format!(
                "{} {} {}c {}",
                r.model, r.workload, r.connections, r.memory
            ));
            pb.inc(1);
        })
        .map_err(|e| e.to_string())?;
        let sim = sim_link::run_all(&opts, |r| {
            pb.set_message(format!(
                "sim link: {} {}c {}",
                r.workload, r.connections, r.memory
            ));
            pb.inc(1);
        })?;
        let mut rec = Vec::new();
        if !args.no_recovery {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            for m in ModelKind::ALL {
                pb.set_message(format!("recovery: {}", m.name()));
                rec.push(recovery::experiment(
                    &exe,
                    m,
                    &opts.dir,
                    opts.seed,
                    opts.recovery_records,
                    opts.hicamp_group_commit,
                )?);
                pb.inc(1);
            }
        }
        if args.end_to_end {
            pb.set_message("end-to-end");
            runs.extend(end_to_end::run_all(&opts.connections, &opts.dir)?);
        }
        let mut r = ratios(&runs, "buffer-model");
        r.extend(ratios(&runs, "end-to-end"));
        Ok(Report {
            version: 1,
            flush_instruction: hicamp::flush_instruction(),
            pm_latency_ns: PM_LATENCY_NS,
            files_dir: opts.dir.display().to_string(),
            runs,
            footprint: series,
            sim_link: sim,
            recovery: rec,
            published: published(),
            ratios: r,
        })
    })();
    pb.finish_and_clear();
    if made_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = result?;
    let mut text = String::new();
    text.push_str(&format!(
        "hicamp compare: HICAMP segments vs PASTE's buffer model vs Linux on PASTE's workloads\n\
         flushes: {} per cache line + sfence per barrier; pm = {} us spun per barrier; files in {}\n\
         requests/s = connections / median batch service time (one thread; arrival timed apart); latency = batch start to answer queued\n",
        report.flush_instruction,
        PM_LATENCY_NS / 1000,
        report.files_dir
    ));
    text.push_str(&tables(&report.runs, "buffer-model", &opts.connections));
    text.push_str(&sim_table(&report.sim_link));
    if report.runs.iter().any(|r| r.kind == "end-to-end") {
        text.push_str(&tables(&report.runs, "end-to-end", &opts.connections));
    }
    if !report.recovery.is_empty() {
        text.push_str("\nRecovery: SIGKILL mid-run (WAL, unique bodies), restart, acknowledged vs recovered intact\n");
        text.push_str(&format!(
            "{:<11} {:>6} {:>9} {:>6} {:>6} {:>7} {:>8}  note\n",
            "model", "acked", "recovered", "lost", "stale", "found", "restarts"
        ));
        for r in &report.recovery {
            text.push_str(&format!(
                "{:<11} {:>6} {:>9} {:>6} {:>6} {:>7} {:>8}  {}\n",
                r.model,
                r.acknowledged,
                r.recovered,
                r.lost,
                r.stale_records,
                r.records_found,
                r.restarts,
                r.note
            ));
        }
    }
    if let Some(p) = &args.json {
        let j = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(p, j).map_err(|e| format!("{}: {e}", p.display()))?;
        text.push_str(&format!("\nwrote {}\n", p.display()));
    }
    if let Some(d) = &args.plots {
        let mut files = plots::write_plots(d, &report.runs, "buffer-model", &report.footprint)?;
        if report.runs.iter().any(|r| r.kind == "end-to-end") {
            files.extend(plots::write_plots(d, &report.runs, "end-to-end", &[])?);
        }
        text.push_str(&format!("wrote {} plots in {}\n", files.len(), d.display()));
    }
    text.push_str(&format!("done in {:.1} s\n", start.elapsed().as_secs_f64()));
    let _ = Workload::ALL;
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}
