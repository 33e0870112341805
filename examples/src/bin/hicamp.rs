//! `hicamp`: the command-line tool of the HICAMP memory emulation.
//!
//! ```text
//! hicamp dedup [--json] [--line-sizes 16,32,...] [--threads N] [PATH...]
//! ```
//!
//! Policy lives in the library (`hicamp_examples`); this file only parses arguments, wires the
//! progress bar and prints. Exit status: 0 on success (even with skipped files, which are
//! reported on stderr), 1 on an error, 2 on a usage error.
#![forbid(unsafe_code)]

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use hicamp_examples::dedup::{self, IngestOptions, InputSet, DEFAULT_LINE_SIZES};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
    /// against 4 KiB page dedup (the Linux KSM model).
    Dedup(DedupArgs),
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

    /// Line capacity of every memory instead of one sized from the input (for tests).
    #[arg(long, hide = true)]
    capacity_lines: Option<u64>,

    /// Files and directories to ingest (directories recursively; each file is one segment).
    /// Without any, a built-in deterministic workload of PASTE-style traffic is used.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
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
    /// stdout went away (`hicamp dedup | head`): exit quietly.
    BrokenPipe,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Dedup(args) => run_dedup(&cli, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BrokenPipe) => ExitCode::SUCCESS,
        Err(Failure::Error(msg)) => {
            eprintln!("hicamp: error: {msg}");
            ExitCode::FAILURE
        }
    }
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
    // Bytes count once per line size: the total is the input size times the line sizes.
    pb.set_message("ingesting");
    pb
}

fn run_dedup(cli: &Cli, args: &DedupArgs) -> Result<(), Failure> {
    let start = Instant::now();
    let input = if args.paths.is_empty() {
        InputSet::default_workload()
    } else {
        InputSet::from_paths(&args.paths, &mut |msg: &str| warn(msg))?
    };
    let mut opts = IngestOptions {
        line_sizes: args.line_sizes.clone(),
        capacity_lines: args.capacity_lines,
        ..IngestOptions::default()
    };
    if let Some(t) = args.threads {
        opts.threads = usize::from(t);
    }
    let pb = progress_bar(cli.quiet);
    // Warnings must not tear the progress bar.
    let mut warn_fn = |msg: &str| pb.suspend(|| warn(msg));
    let report = dedup::ingest(&input, &opts, &pb, &mut warn_fn);
    pb.finish_and_clear();
    let report = report?;
    let elapsed = start.elapsed();

    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(|e| Failure::from(io::Error::from(e)))?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.to_text())?;
        writeln!(
            out,
            "\n{} line sizes and the page baseline in {:.2} s",
            report.line_sizes.len(),
            elapsed.as_secs_f64()
        )?;
    }
    out.flush()?;
    Ok(())
}
