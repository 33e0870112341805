//! `hicamp`: the command-line tool of the HICAMP memory emulation.
//!
//! ```text
//! hicamp dedup [--json] [--line-sizes 16,32,...] [--threads N] [--memory SIZE] [--exact]
//!              [--tar] [--no-cdc] [-L] [--cross-file-systems] [PATH|-...]
//! hicamp fsck [--json] FILE
//! hicamp stat [--json] FILE
//! hicamp run [--report FILE] [--mode trace|stack|local|trace,local|stack,local ...] -- CMD
//! hicamp backends
//! hicamp put [--create] FILE NAME PATH
//! hicamp grep [--count] [--max-count N] FILE NAME PATTERN
//! hicamp compare [--json FILE] [--plots DIR] [--end-to-end] [--quick] [--no-recovery]
//! ```
//!
//! Policy lives in the experiments and in the memory; this module only parses arguments, wires
//! the progress bar and prints. Exit status: 0 on success (even with files below a directory
//! that could not be read, which are reported on stderr and counted), 1 on an error (an
//! operand that cannot be read, a closed stdout included), 2 on a usage error, 141 when the
//! reader of stdout went away.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::experiments::dedup::{
    self, IngestOptions, InputSet, Method, WalkOptions, DEFAULT_LINE_SIZES,
};
use crate::experiments::report::RunInfo;

mod compare;
pub mod run;
mod window;

#[derive(Debug, Parser)]
#[command(
    name = "hicamp",
    version,
    about = "Experiments on HICAMP deduplicated line memory",
    propagate_version = true
)]
struct Cli {
    /// No progress bar and no informational messages (warnings and errors are still shown).
    #[arg(short, long, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure line-level dedup of files (or of a built-in workload) at several line sizes,
    /// against 4 KiB page dedup (the Linux KSM model) and content-defined chunking (FastCDC).
    Dedup(DedupArgs),
    /// Check a memory file without changing it: reference counts against the references
    /// reachable from the committed roots, canonical DAGs, named segments' digests, orphans.
    /// Exit status 0 when consistent, 3 when not, 1 when the file cannot be examined.
    Fsck(FileArgs),
    /// Print a memory file's footprint and what opening it would recover or repair, without
    /// changing it (a private copy-on-write mapping; a shared lock, as fsck's). With
    /// `--repair`, open it for writing instead, so the recovery and repairs are kept.
    Stat(StatArgs),
    /// Run a command under the libc shim (LD_PRELOAD): every socket payload of its processes
    /// is interned into HICAMP memory; print the merged report when it ends. Exit status: the
    /// command's.
    Run(RunArgs),
    /// List the NIC backends (`--backend` of phttpd and the benches) and whether each works
    /// on this host, and if not, why.
    Backends,
    /// Store a file's bytes in a memory file as a named segment.
    Put(window::PutArgs),
    /// Search a named segment of a memory file for a byte string through a window (the
    /// segment mapped at virtual addresses, paged in on touch); print the match offsets.
    Grep(window::GrepArgs),
    /// Compare HICAMP segments with PASTE's buffer model (zero-copy and copy) and a Linux
    /// epoll server on PASTE's RPC and WAL workloads: tables beside PASTE's published
    /// numbers, JSON, SVG plots, and a SIGKILL recovery experiment.
    Compare(compare::CompareArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ShimMode {
    /// Every call goes to the kernel; payloads are counted and interned.
    Trace,
    /// AF_INET sockets are served by segstack over `--backend` (needs `--ip`); unix sockets,
    /// other families and 127.0.0.0/8 stay in the kernel.
    Stack,
    /// TCP connections between processes under the shim that attach the same shared memory
    /// (`--memory`) exchange snapshots through it; every other connection stays on kernel TCP.
    Local,
    /// Trace mode, with local mode for TCP between processes under the shim.
    #[value(name = "trace,local", alias = "local,trace")]
    TraceLocal,
    /// Stack mode, with local mode for loopback TCP (127.0.0.0/8) between processes under
    /// the shim.
    #[value(name = "stack,local", alias = "local,stack")]
    StackLocal,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Write the merged report (JSON) to FILE; each process writes FILE.PID.json and
    /// FILE.PID.txt beside it. Without it the reports go to a temporary directory.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// What the shim does.
    #[arg(long, value_enum, default_value = "trace")]
    mode: ShimMode,

    /// Memory each traced process's shim may use (`256M`, `1G`, bytes); past it the dedup
    /// footprint is estimated by content-defined line sampling (the report names the method,
    /// the sample rate and the error bound). Default 256M.
    #[arg(long, value_name = "SIZE", value_parser = run::parse_budget)]
    budget: Option<u64>,

    /// Stack mode: the NIC backend: `tap:NAME` (created and brought up if missing),
    /// `af_packet:NAME` or `af_xdp:NAME[:QUEUE]` (a missing NAME is made as a veth pair
    /// NAME <-> NAME-k, the kernel's end being NAME-k).
    #[arg(long, value_name = "BACKEND")]
    backend: Option<String>,

    /// Stack mode: the stack's address, ADDR/PREFIX.
    #[arg(long, value_name = "ADDR/PREFIX")]
    ip: Option<String>,

    /// Stack mode: the default gateway.
    #[arg(long, value_name = "ADDR")]
    gateway: Option<String>,

    /// Local mode: the shared memory file (created if missing). Default
    /// `/dev/shm/hicamp-local.EUID.vN` (N: the shared format's version).
    #[arg(long, value_name = "PATH")]
    memory: Option<PathBuf>,

    /// Stack mode: the kernel's address on the link, ADDR/PREFIX (on the TAP device, or on
    /// NAME-k, the kernel's end of an af_packet/af_xdp veth pair).
    #[arg(long, value_name = "ADDR/PREFIX")]
    host_ip: Option<String>,

    /// The command and its arguments (after `--`).
    #[arg(
        value_name = "CMD",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
struct StatArgs {
    #[command(flatten)]
    file: FileArgs,

    /// Open the file for writing: recovery after a crash and the repairs it reports are
    /// written back (the file must not be in use).
    #[arg(long)]
    repair: bool,
}

#[derive(Debug, Args)]
struct FileArgs {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,

    /// The memory file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Args)]
struct DedupArgs {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,

    /// Line sizes to measure, comma-separated (powers of two from 16 to 4096).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_line_size,
        default_values_t = DEFAULT_LINE_SIZES,
    )]
    line_sizes: Vec<usize>,

    /// Worker threads (default: the number of CPUs). The result does not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,

    /// Follow symbolic links inside directories (operands are always followed).
    #[arg(short = 'L', long)]
    follow_links: bool,

    /// Enter directories on other file systems than their operand's.
    #[arg(long)]
    cross_file_systems: bool,

    /// Line capacity of every memory instead of one sized from the input (for tests).
    #[arg(long, hide = true)]
    capacity_lines: Option<u64>,

    /// Intern every line size into a real HICAMP memory (exact, but it needs many times the
    /// input's size in RAM). The default for files counts by fingerprints within --memory.
    /// The built-in workload is always measured exactly.
    #[arg(long)]
    exact: bool,

    /// Memory budget of the fingerprint sets (bytes, or with a K, M, G or T suffix; default:
    /// half of RAM). Past it, distinct lines are sampled by fingerprint and the report states
    /// the sample rate and the 95% interval.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,

    /// Every file operand (and `-`) is a tar stream: each regular member is one file.
    #[arg(long)]
    tar: bool,

    /// Leave out the content-defined chunking baseline.
    #[arg(long)]
    no_cdc: bool,

    /// Files and directories to ingest (directories recursively; each file is one segment);
    /// `-` is standard input. Without any, a built-in deterministic workload of PASTE-style
    /// traffic is used.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
}

/// `"512M"` -> 512 MiB; a bare number is bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("'{s}': unknown unit '{c}' (K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: f64 = num
        .trim()
        .trim_end_matches(['i', 'I'])
        .parse()
        .map_err(|e| format!("'{s}' is not a size: {e}"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("'{s}' is not a positive size"));
    }
    Ok((n * (1u64 << shift) as f64) as u64)
}

fn parse_line_size(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|e| format!("'{s}' is not a number: {e}"))?;
    dedup::check_line_size(n).map_err(|e| e.to_string())?;
    Ok(n)
}

/// A failure that ends the program with a message.
#[derive(Debug)]
enum Failure {
    /// Print `error: ...` and exit 1.
    Error(String),
    /// stdout went away (`hicamp dedup | head`): exit quietly with 141, the status of a
    /// process that SIGPIPE ended (as `cat` in the same pipe would).
    BrokenPipe,
    /// `fsck` found problems (already printed): exit 3.
    Inconsistent,
}

impl From<hicamp::Error> for Failure {
    fn from(e: hicamp::Error) -> Self {
        Failure::Error(e.to_string())
    }
}

impl From<dedup::DedupError> for Failure {
    fn from(e: dedup::DedupError) -> Self {
        Failure::Error(e.to_string())
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure::BrokenPipe
        } else {
            Failure::Error(format!("cannot write the output: {e}"))
        }
    }
}

/// The `hicamp` program: parses the command line, runs the command, returns the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run(args) = &cli.command {
        return run_command(&cli, args);
    }
    if stdout_was_closed() {
        eprintln!("hicamp: error: standard output is closed: the report has nowhere to go");
        return ExitCode::FAILURE;
    }
    let result = match &cli.command {
        Command::Dedup(args) => run_dedup(&cli, args),
        Command::Fsck(args) => run_fsck(args),
        Command::Stat(args) => run_stat(args),
        Command::Backends => run_backends(),
        Command::Put(args) => window::run_put(args, cli.quiet),
        Command::Grep(args) => window::run_grep(args, cli.quiet),
        Command::Compare(args) => compare::run(args, cli.quiet).map_err(Failure::Error),
        Command::Run(_) => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BrokenPipe) => ExitCode::from(141),
        Err(Failure::Inconsistent) => ExitCode::from(3),
        Err(Failure::Error(msg)) => {
            eprintln!("hicamp: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run_backends() -> Result<(), Failure> {
    let mut out = String::new();
    for b in nicdma::backend::probe() {
        let state = match &b.works {
            Ok(()) => "works here".to_owned(),
            Err(why) => format!("unavailable: {why}"),
        };
        out.push_str(&format!(
            "{:<10} --backend {:<22} {state}\n",
            b.name, b.usage
        ));
    }
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| {
            if e.kind() == io::ErrorKind::BrokenPipe {
                Failure::BrokenPipe
            } else {
                Failure::Error(format!("stdout: {e}"))
            }
        })
}

/// True when the program started with descriptor 1 closed (`hicamp dedup >&-`). Rust's
/// runtime then opens `/dev/null` read-write in its place before `main`, so the report would
/// vanish with status 0. A shell's `>/dev/null` opens it write-only, which this tells apart
/// (through `/proc/self/fdinfo/1`; false where that cannot be read).
fn stdout_was_closed() -> bool {
    use std::os::unix::fs::MetadataExt;
    let same_as_null = match (
        std::fs::metadata("/proc/self/fd/1"),
        std::fs::metadata("/dev/null"),
    ) {
        (Ok(out), Ok(null)) => out.rdev() == null.rdev() && out.dev() == null.dev(),
        _ => false,
    };
    let read_write = std::fs::read_to_string("/proc/self/fdinfo/1").is_ok_and(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .is_some_and(|flags| flags & 0o3 == 0o2)
    });
    same_as_null && read_write
}

fn warn(msg: &str) {
    eprintln!("hicamp: warning: {msg}");
}

/// A progress bar on stderr, or a hidden one when stderr is not a terminal or with `--quiet`.
fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    // Hidden until `ingest` knows the length and draws the first step.
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid progress template"),
    );
    // Bytes read from the input (all line sizes take each byte in together).
    pb.set_message("reading");
    pb
}

fn run_dedup(cli: &Cli, args: &DedupArgs) -> Result<(), Failure> {
    let start = Instant::now();
    let input = if args.paths.is_empty() {
        InputSet::default_workload()
    } else {
        let walk = WalkOptions {
            follow_links: args.follow_links,
            cross_file_systems: args.cross_file_systems,
        };
        InputSet::from_operands(&args.paths, walk, args.tar, &mut |msg: &str| warn(msg))?
    };
    let mut opts = IngestOptions {
        line_sizes: args.line_sizes.clone(),
        capacity_lines: args.capacity_lines,
        method: if args.exact || args.paths.is_empty() {
            Method::Exact
        } else {
            Method::Fingerprint
        },
        cdc: !args.no_cdc,
        ..IngestOptions::default()
    };
    if let Some(m) = args.memory {
        opts.memory_budget = m;
    }
    if let Some(t) = args.threads {
        opts.threads = usize::from(t);
    }
    let pb = progress_bar(cli.quiet);
    // Warnings must not tear the progress bar.
    let mut warn_fn = |msg: &str| pb.suspend(|| warn(msg));
    let report = dedup::ingest(&input, &opts, &pb, &mut warn_fn);
    pb.finish_and_clear();
    let mut report = report?;
    let elapsed = start.elapsed();
    report.run = Some(RunInfo {
        elapsed_seconds: elapsed.as_secs_f64(),
        bytes_per_second: report.input.bytes as f64 / elapsed.as_secs_f64().max(1e-9),
        peak_rss_bytes: peak_rss_bytes(),
        threads: opts.threads as u64,
    });

    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(|e| Failure::from(io::Error::from(e)))?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.to_text())?;
        writeln!(
            out,
            "\n{} line sizes and the baselines in {:.2} s ({}/s), peak resident memory {}",
            report.line_sizes.len(),
            elapsed.as_secs_f64(),
            hicamp::footprint::human_bytes(
                (report.input.bytes as f64 / elapsed.as_secs_f64().max(1e-9)) as u64
            ),
            hicamp::footprint::human_bytes(peak_rss_bytes())
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Peak resident memory of this process (`VmHWM` of `/proc/self/status`), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn print_json(v: &serde_json::Value) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| Failure::from(io::Error::from(e)))?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn run_fsck(args: &FileArgs) -> Result<(), Failure> {
    let r = hicamp::fsck(&args.file)?;
    if args.json {
        print_json(&serde_json::json!({
            "path": r.path,
            "consistent": r.is_consistent(),
            "clean_close": r.clean_close,
            "line_size": r.line_size,
            "entries": r.entries,
            "logical_bytes": r.logical_bytes,
            "leaf_lines": r.leaf_lines,
            "interior_lines": r.interior_lines,
            "orphans": r.orphans,
            "refcount_mismatches": r.refcount_mismatches,
            "kind_mismatches": r.kind_mismatches,
            "non_canonical": r.non_canonical,
            "named": r.named,
            "digests_verified": r.digests_verified,
            "reserved_bytes": r.reserved_bytes,
            "unallocated_bytes": r.unallocated_bytes,
            "damaged": r.damage.is_corrupt(),
            "problem_count": r.problem_count,
            "problems": r.problems,
        }))?;
    } else {
        let mut out = io::stdout().lock();
        writeln!(out, "{}: {} entries, {} logical bytes, {} leaf + {} interior lines, {} named ({} digests verified)",
            r.path, r.entries, r.logical_bytes, r.leaf_lines, r.interior_lines, r.named, r.digests_verified)?;
        writeln!(out, "closed cleanly: {}; orphans: {}; refcount mismatches: {}; kind mismatches: {}; non-canonical: {}",
            if r.clean_close { "yes" } else { "no" }, r.orphans, r.refcount_mismatches, r.kind_mismatches, r.non_canonical)?;
        writeln!(
            out,
            "reserved: {} bytes ({} without blocks); damage: {}",
            r.reserved_bytes,
            r.unallocated_bytes,
            if r.damage.is_corrupt() {
                "yes (see the problems; open salvages, open --strict refuses)"
            } else {
                "none"
            }
        )?;
        for p in &r.problems {
            writeln!(out, "problem: {p}")?;
        }
        if r.problem_count > r.problems.len() as u64 {
            writeln!(
                out,
                "... and {} more problems",
                r.problem_count - r.problems.len() as u64
            )?;
        }
        writeln!(
            out,
            "{}",
            if r.is_consistent() {
                "consistent"
            } else {
                "INCONSISTENT"
            }
        )?;
        out.flush()?;
    }
    if r.is_consistent() {
        Ok(())
    } else {
        Err(Failure::Inconsistent)
    }
}

fn run_stat(stat: &StatArgs) -> Result<(), Failure> {
    let args = &stat.file;
    // Without --repair: what an open would recover is reported and the file
    // is left as it was (it may be read-only, or open in another reader).
    let mem = hicamp::Memory::open_with(
        &args.file,
        hicamp::OpenOptions {
            read_only: !stat.repair,
            ..Default::default()
        },
    )?;
    let rec = mem.recovery().unwrap_or_default();
    let damage = mem.damage().cloned().unwrap_or_default();
    let st = mem.stats();
    let c = mem.config();
    let names = mem.names()?.len();
    if args.json {
        print_json(&serde_json::json!({
            "path": args.file.display().to_string(),
            "line_size": st.line_size,
            "capacity_lines": st.capacity_lines,
            "durability": format!("{:?}", c.durability),
            "map_entries": st.map_entries,
            "named_segments": names,
            "logical_bytes": st.logical_bytes,
            "physical_bytes": st.physical_bytes,
            "metadata_bytes": st.metadata_bytes,
            "footprint_bytes": st.footprint_bytes(),
            "dedup_ratio": st.dedup_ratio(),
            "leaf_lines": st.leaf_lines,
            "interior_lines": st.interior_lines,
            "index_bytes": st.index_bytes,
            "refcount_bytes": st.refcount_bytes,
            "map_bytes": st.map_bytes,
            "recovery": {
                "was_clean": rec.was_clean,
                "orphans_reclaimed": rec.orphans_reclaimed,
                "refcounts_repaired": rec.refcounts_repaired,
                "duplicate_lines": rec.duplicate_lines,
                "open_micros": rec.micros,
            },
            "damage": {
                "corrupt": damage.is_corrupt(),
                "digests_verified": damage.digests_verified,
                "problems": damage.problems(),
            },
        }))?;
    } else {
        let mut out = io::stdout().lock();
        let hb = hicamp::footprint::human_bytes;
        writeln!(
            out,
            "{}: line size {} B, capacity {} lines, durability {:?}",
            args.file.display(),
            st.line_size,
            st.capacity_lines,
            c.durability
        )?;
        writeln!(out, "entries {} ({} named); logical {}, physical {}, metadata {}, footprint {}, ratio {:.3}",
            st.map_entries, names, hb(st.logical_bytes), hb(st.physical_bytes), hb(st.metadata_bytes), hb(st.footprint_bytes()), st.dedup_ratio())?;
        writeln!(
            out,
            "lines: {} leaf, {} interior; metadata: index {}, refcounts {}, map {}",
            st.leaf_lines,
            st.interior_lines,
            hb(st.index_bytes),
            hb(st.refcount_bytes),
            hb(st.map_bytes)
        )?;
        writeln!(
            out,
            "open: {} in {:.1} ms; {} orphans reclaimed, {} counts repaired, {} duplicate lines",
            if rec.was_clean {
                "clean"
            } else {
                "recovered after a crash"
            },
            rec.micros as f64 / 1000.0,
            rec.orphans_reclaimed,
            rec.refcounts_repaired,
            rec.duplicate_lines
        )?;
        writeln!(
            out,
            "checked: {} of {} named digests verified; damage: {}",
            damage.digests_verified,
            damage.named,
            if damage.is_clean() {
                "none"
            } else if damage.is_corrupt() {
                "SALVAGED (below)"
            } else {
                "a torn write rolled back"
            }
        )?;
        for p in damage.problems() {
            writeln!(out, "damage: {p}")?;
        }
        out.flush()?;
    }
    Ok(())
}

/// `hicamp run`: exits with the command's status (1 when the launcher itself fails).
fn run_command(cli: &Cli, args: &RunArgs) -> ExitCode {
    use crate::cli::run;
    let stack = match args.mode {
        ShimMode::Trace | ShimMode::Local | ShimMode::TraceLocal => None,
        ShimMode::Stack | ShimMode::StackLocal => Some(run::StackOptions {
            backend: args.backend.clone().unwrap_or_default(),
            ip: args.ip.clone().unwrap_or_default(),
            gateway: args.gateway.clone(),
            host_ip: args.host_ip.clone(),
        }),
    };
    let exe = std::env::current_exe().unwrap_or_default();
    let result = run::find_shim(std::env::var_os("HICAMP_SHIM"), &exe).and_then(|shim| {
        run::run(&run::RunOptions {
            shim,
            report: args.report.clone(),
            command: args.command.clone(),
            env: args
                .budget
                .map(|b| vec![("HICAMP_SHIM_BUDGET".into(), b.to_string().into())])
                .unwrap_or_default(),
            stack,
            local: matches!(
                args.mode,
                ShimMode::Local | ShimMode::TraceLocal | ShimMode::StackLocal
            )
            .then(|| {
                args.memory
                    .clone()
                    .unwrap_or_else(run::default_local_memory)
            }),
            trace: args.mode == ShimMode::TraceLocal,
        })
    });
    match result {
        Ok(outcome) => {
            if !cli.quiet {
                let mut err = io::stderr().lock();
                let _ = write!(err, "{}", outcome.merged.to_text());
                if let Some(p) = &outcome.merged_path {
                    let _ = writeln!(err, "merged report: {}", p.display());
                }
            }
            ExitCode::from(run::exit_code(&outcome.status).clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("hicamp: error: {e}");
            ExitCode::FAILURE
        }
    }
}
