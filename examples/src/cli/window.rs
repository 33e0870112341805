//! `hicamp put` and `hicamp grep`: store a file as a named segment, and run an unmodified
//! search (`memchr::memmem`) over a stored segment through a [`Window`]: the segment is
//! mapped at virtual addresses and its pages fault in from the lines as the search touches
//! them, with no copy-out of the whole segment first.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use clap::Args;
use hicamp::{Config, Memory, Window};

use super::Failure;

#[derive(Debug, Args)]
pub(super) struct PutArgs {
    /// Create the memory file (default configuration) when it does not exist.
    #[arg(long)]
    create: bool,

    /// The memory file.
    #[arg(value_name = "FILE")]
    file: PathBuf,

    /// The name to bind (replaces a previous binding).
    #[arg(value_name = "NAME")]
    name: String,

    /// The file whose bytes to store (`-`: standard input).
    #[arg(value_name = "PATH")]
    input: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct GrepArgs {
    /// Print only the number of matches.
    #[arg(short, long)]
    count: bool,

    /// Stop after this many matches.
    #[arg(short, long, value_name = "N")]
    max_count: Option<u64>,

    /// The memory file.
    #[arg(value_name = "FILE")]
    file: PathBuf,

    /// The named segment to search.
    #[arg(value_name = "NAME")]
    name: String,

    /// The bytes to look for (as given; not a regular expression).
    #[arg(value_name = "PATTERN")]
    pattern: OsString,
}

pub(super) fn run_put(args: &PutArgs, quiet: bool) -> Result<(), Failure> {
    let data = if args.input.as_os_str() == "-" {
        let mut v = Vec::new();
        io::stdin()
            .read_to_end(&mut v)
            .map_err(|e| Failure::Error(format!("standard input: {e}")))?;
        v
    } else {
        std::fs::read(&args.input)
            .map_err(|e| Failure::Error(format!("{}: {e}", args.input.display())))?
    };
    let mem = if args.create && !args.file.exists() {
        Memory::create(&args.file, Config::default())?
    } else {
        Memory::open(&args.file)?
    };
    let id = mem.bind(&args.name, mem.segment(&data)?)?;
    if !quiet {
        eprintln!(
            "{}: bound {:?} to entry {} ({} bytes)",
            args.file.display(),
            args.name,
            id.get(),
            data.len()
        );
    }
    Ok(())
}

pub(super) fn run_grep(args: &GrepArgs, quiet: bool) -> Result<(), Failure> {
    use std::os::unix::ffi::OsStrExt;
    let pattern = args.pattern.as_bytes();
    if pattern.is_empty() {
        return Err(Failure::Error("the pattern is empty".into()));
    }
    // Read-only: grep never writes the file (a private copy-on-write map).
    let mem = Memory::open_with(
        &args.file,
        hicamp::OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )?;
    let seg = mem.get_named(&args.name)?.ok_or_else(|| {
        Failure::Error(format!(
            "{}: no segment named {:?}",
            args.file.display(),
            args.name
        ))
    })?;
    let window = Window::open(&seg).map_err(|e| Failure::Error(e.to_string()))?;
    // The computation sees a plain byte slice; it knows nothing of lines.
    let finder = memchr::memmem::Finder::new(pattern);
    let max = args.max_count.unwrap_or(u64::MAX);
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut n = 0u64;
    for off in finder.find_iter(window.as_slice()) {
        if n == max {
            break;
        }
        n += 1;
        if !args.count {
            writeln!(out, "{off}")?;
        }
    }
    if args.count {
        writeln!(out, "{n}")?;
    }
    out.flush()?;
    if !quiet {
        let st = window.stats();
        eprintln!(
            "{} matches in {} bytes; {} of {} pages faulted in ({} copied, {} zero, {} read ahead) in {} faults",
            n,
            window.len(),
            st.filled_pages,
            window.len().div_ceil(4096),
            st.pages_copied,
            st.zero_pages,
            st.read_ahead_pages,
            st.missing_faults
        );
    }
    Ok(())
}
