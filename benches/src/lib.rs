//! Shared helpers of the benchmarks.
//!
//! * [`random_bytes`]: pseudo-random data from splitmix64 (no `rand`).
//! * [`config_for`] / [`memory_for`]: a [`hicamp::Config`] sized for a working
//!   set.
//! * [`Group`]: a criterion group whose benchmarks time themselves
//!   (`iter_custom`) and keep every sample criterion asks for. After the
//!   criterion groups, [`print_vs`] and [`print_one`] print medians, ratios and
//!   targets to stdout from those very samples: criterion's report and the
//!   summary describe the same measurements, and nothing is timed twice.
//!
//! * [`apps`]: the `hicamp` launcher and shim of this build, and [`apps::Reaper`] for the
//!   benches that run applications.
//! * [`net`]: the network benches' backend choice (`--backend`), veth lab and
//!   backend-generic segstack bulk loop.
//!
//! Every benchmark file has its own `main`: it runs the criterion groups, then
//! prints its summary. `cargo test --benches` (and so `cargo test
//! --all-targets`) runs each routine once in criterion's test mode; there the
//! large working sets are skipped and no summary is printed.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use hicamp::{Config, Memory};

pub mod apps;
pub mod net;

/// One kibibyte.
pub const KIB: usize = 1 << 10;
/// One mebibyte.
pub const MIB: usize = 1 << 20;
/// The small working set of every benchmark.
pub const SMALL: usize = MIB;
/// The large working set of the intern benchmark.
pub const LARGE: usize = 256 * MIB;

// ---------------------------------------------------------------------------
// Data

/// One step of splitmix64 (Steele, Lea, Flood 2014).
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` pseudo-random bytes. Two 64-bit words collide with probability
/// 2^-64, so every line of 16 bytes or more is unique and non-zero in practice
/// (the benchmarks check it where it matters).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut v = vec![0u8; len];
    let mut words = v.chunks_exact_mut(8);
    for w in words.by_ref() {
        w.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    let tail = words.into_remainder();
    let last = splitmix64(&mut state).to_le_bytes();
    let n = tail.len();
    tail.copy_from_slice(&last[..n]);
    v
}

/// XOR of all bytes, folded 8 at a time (the "consume the data" step of the
/// read benchmarks; vectorised by the compiler on a contiguous slice).
#[inline]
pub fn xor_bytes(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut acc = words.by_ref().fold(0u64, |a, w| {
        a ^ u64::from_le_bytes(w.try_into().expect("8-byte chunk"))
    });
    for &b in words.remainder() {
        acc ^= u64::from(b);
    }
    acc
}

/// "1MiB", "256MiB", "4KiB", "64B".
pub fn size_label(bytes: usize) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{}MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{}KiB", bytes / KIB)
    } else {
        format!("{bytes}B")
    }
}

// ---------------------------------------------------------------------------
// Memory configs

/// A config for `bytes` of unique data on `line_size`-byte lines: room for two
/// full copies (leaves and interior lines) plus `extra_lines`, and a slack of
/// 2^16 lines for the slots the store hands out 64 at a time per shard. The
/// arena is only reserved virtually, so a generous capacity costs no RAM.
pub fn config_for(bytes: usize, line_size: usize, extra_lines: u64) -> Config {
    let leaves = bytes.div_ceil(line_size) as u64;
    let fanout = (line_size / 4) as u64;
    let interior = leaves / (fanout - 1) + 64;
    Config {
        line_size,
        capacity_lines: 2 * (leaves + interior) + extra_lines + (1 << 16),
        map_capacity: 1 << 16,
        ..Config::default()
    }
}

/// A new memory sized by [`config_for`].
pub fn memory_for(bytes: usize, line_size: usize, extra_lines: u64) -> Memory {
    Memory::new(config_for(bytes, line_size, extra_lines)).expect("memory config")
}

// ---------------------------------------------------------------------------
// Run mode

/// How the bench binary was started (mirrors criterion's own argument rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// `cargo bench`: full measurement.
    Measure,
    /// `cargo bench -- --quick`: criterion's quick mode (doubling batches until
    /// two agree within the significance level).
    Quick,
    /// `cargo test --benches`: every routine runs once; nothing is measured.
    Test,
    /// `--list`, `--profile-time`: nothing to summarise.
    Other,
}

/// The run mode of this process.
pub fn run_mode() -> RunMode {
    static MODE: OnceLock<RunMode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        if has("--list") || args.iter().any(|a| a.starts_with("--profile-time")) {
            RunMode::Other
        } else if !has("--bench") || has("--test") {
            RunMode::Test
        } else if has("--quick") {
            RunMode::Quick
        } else {
            RunMode::Measure
        }
    })
}

/// True when timings are real (full or quick measurement).
pub fn measuring() -> bool {
    matches!(run_mode(), RunMode::Measure | RunMode::Quick)
}

/// The working sets of the intern benchmark: 1 MiB and 256 MiB, or only
/// 1 MiB in test mode (a smoke test must stay cheap).
pub fn working_sets() -> &'static [usize] {
    if run_mode() == RunMode::Test {
        &[SMALL]
    } else {
        &[SMALL, LARGE]
    }
}

// ---------------------------------------------------------------------------
// Groups and samples

/// How much time a group spends per benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Working sets of a few MiB: 20 samples, 0.3 s warm-up, 1 s measured.
    Small,
    /// Hundreds of MiB: 10 flat samples of (about) one iteration each; the
    /// warm-up is a single call.
    Large,
}

impl Profile {
    /// `Large` from 64 MiB on.
    pub fn for_bytes(bytes: usize) -> Profile {
        if bytes >= 64 * MIB {
            Profile::Large
        } else {
            Profile::Small
        }
    }

    fn sample_size(self) -> usize {
        match self {
            Profile::Small => 20,
            Profile::Large => 10,
        }
    }
}

struct Record {
    /// Nanoseconds per iteration of each call criterion made, in order.
    per_iter_ns: Vec<f64>,
    /// How many trailing calls are criterion's measured samples.
    measured: usize,
}

static RECORDS: Mutex<BTreeMap<String, Record>> = Mutex::new(BTreeMap::new());

fn records() -> std::sync::MutexGuard<'static, BTreeMap<String, Record>> {
    RECORDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A criterion benchmark group whose benchmarks keep their samples for the
/// summary. Benchmarks are keyed `"group/id"`.
pub struct Group<'c> {
    inner: BenchmarkGroup<'c, WallTime>,
    name: String,
    measured: usize,
}

impl std::fmt::Debug for Group<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("name", &self.name).finish()
    }
}

impl<'c> Group<'c> {
    /// A group configured by `profile`.
    pub fn new(c: &'c mut Criterion, name: &str, profile: Profile) -> Group<'c> {
        let mut inner = c.benchmark_group(name);
        inner.sample_size(profile.sample_size());
        inner.nresamples(20_000);
        match profile {
            Profile::Small => {
                inner
                    .warm_up_time(Duration::from_millis(300))
                    .measurement_time(Duration::from_secs(1));
            }
            Profile::Large => {
                inner
                    .sampling_mode(SamplingMode::Flat)
                    .warm_up_time(Duration::from_millis(1))
                    .measurement_time(Duration::from_secs(1));
            }
        }
        let measured = match run_mode() {
            // Quick mode ends on two batches (n and 2n iterations) that agree.
            RunMode::Quick => 2,
            _ => profile.sample_size(),
        };
        Group {
            inner,
            name: name.to_owned(),
            measured,
        }
    }

    /// The key of benchmark `id` of this group.
    pub fn key(&self, id: &str) -> String {
        format!("{}/{}", self.name, id)
    }

    /// Reports throughput as `bytes` per iteration for the benchmarks that
    /// follow.
    pub fn throughput_bytes(&mut self, bytes: u64) -> &mut Self {
        self.inner.throughput(Throughput::Bytes(bytes));
        self
    }

    /// Registers benchmark `id`. `setup` runs once, lazily (only if the
    /// benchmark passes criterion's filter), and its state is dropped when the
    /// benchmark ends. `routine(state, iters)` runs `iters` iterations and
    /// returns the time they took, leaving out whatever it does not time
    /// (as criterion's `iter_custom`).
    pub fn bench<S>(
        &mut self,
        id: &str,
        setup: impl FnOnce() -> S,
        mut routine: impl FnMut(&mut S, u64) -> Duration,
    ) -> &mut Self {
        let key = self.key(id);
        records().insert(
            key.clone(),
            Record {
                per_iter_ns: Vec::new(),
                measured: self.measured,
            },
        );
        let mut setup = Some(setup);
        let mut state: Option<S> = None;
        self.inner.bench_function(id, |b| {
            let s = state.get_or_insert_with(|| (setup.take().expect("setup runs once"))());
            b.iter_custom(|iters| {
                let d = routine(s, iters);
                if let Some(r) = records().get_mut(&key) {
                    r.per_iter_ns
                        .push(d.as_nanos() as f64 / iters.max(1) as f64);
                }
                d
            });
        });
        self
    }

    /// Ends the group (criterion's summary of the group).
    pub fn finish(self) {
        self.inner.finish();
    }
}

/// Times `iters` calls of `f` as one batch; each output is dropped inside the
/// timing (use for outputs whose drop is free or part of the cost).
#[inline]
pub fn time_loop<O>(iters: u64, mut f: impl FnMut() -> O) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        black_box(f());
    }
    t.elapsed()
}

/// Times `iters` calls of `f`; the outputs are kept and dropped after the
/// timing (criterion's `iter_with_large_drop`). They go, 2^14 at a time, into
/// a buffer whose pages were touched before the clock starts, so the timing
/// holds neither page faults nor reallocation.
#[inline]
pub fn time_loop_keep<O>(iters: u64, mut f: impl FnMut() -> O) -> Duration {
    const CHUNK: u64 = 1 << 14;
    let mut out: Vec<Option<O>> = (0..iters.min(CHUNK)).map(|_| None).collect();
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK) as usize;
        left -= n as u64;
        let t = Instant::now();
        for slot in &mut out[..n] {
            *slot = Some(f());
        }
        total += t.elapsed();
        for slot in &mut out[..n] {
            drop(black_box(slot.take()));
        }
    }
    total
}

/// The median of `v` (sorted in place; the mean of the middle two for an even
/// count; NaN when empty).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The lowest and highest of `v` (`(inf, -inf)` when empty): the spread
/// printed beside a median.
pub fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// Field `i` (1-based, as proc(5) numbers them; 3 or more) of a `/proc/PID/stat` text.
pub fn stat_field(stat: &str, i: usize) -> Option<f64> {
    // Fields after the command name (which may hold spaces), starting at field 3.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    rest.split_whitespace().nth(i.checked_sub(3)?)?.parse().ok()
}

/// The median time per iteration of benchmark `key` over criterion's measured
/// samples (in quick mode, its last two batches), in nanoseconds. `None` when
/// nothing was measured (test mode, filtered out).
pub fn median_ns(key: &str) -> Option<f64> {
    if !measuring() {
        return None;
    }
    let recs = records();
    let r = recs.get(key)?;
    let n = r.per_iter_ns.len();
    if n == 0 {
        return None;
    }
    let mut v = r.per_iter_ns[n - r.measured.min(n)..].to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len();
    Some(if m % 2 == 1 {
        v[m / 2]
    } else {
        (v[m / 2 - 1] + v[m / 2]) / 2.0
    })
}

// ---------------------------------------------------------------------------
// Summary

/// One measured subject of the summary.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Name printed.
    pub label: String,
    /// Benchmark key (`"group/id"`).
    pub key: String,
    /// Bytes per iteration, for a throughput; `None` for none.
    pub bytes: Option<u64>,
}

/// A [`Subject`].
pub fn subject(label: impl Into<String>, key: impl Into<String>, bytes: Option<u64>) -> Subject {
    Subject {
        label: label.into(),
        key: key.into(),
        bytes,
    }
}

/// A target printed beside the measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Throughput at least this many GB/s (10^9 bytes per second).
    MinGbps(f64),
    /// Median at most this many nanoseconds.
    MaxNs(f64),
    /// Ratio (baseline median / subject median) at least this.
    MinRatio(f64),
}

/// Prints the title of a summary block, with how to read it.
pub fn print_header(title: &str) {
    match run_mode() {
        RunMode::Measure | RunMode::Quick => {
            println!();
            println!("=== {title} ===");
            println!(
                "medians per iteration of criterion's measured samples{}; \
                 GB/s = 10^9 B/s; ratio = baseline median / subject median (> 1: subject faster)",
                if run_mode() == RunMode::Quick {
                    " (quick mode: its last two batches)"
                } else {
                    ""
                }
            );
        }
        RunMode::Test => println!("{title}: test mode, nothing measured, no summary"),
        RunMode::Other => {}
    }
}

/// "612.4 us", "1.21 ms", "18.3 ns".
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn describe(s: &Subject, ns: f64) -> String {
    let mut out = format!("{}: median {}", s.label, fmt_ns(ns));
    if let Some(b) = s.bytes {
        let _ = write!(out, " ({:.2} GB/s)", b as f64 / ns);
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "NOT MET"
    }
}

fn describe_target(t: Target, s: &Subject, ns: f64, ratio: Option<f64>) -> String {
    match t {
        Target::MinGbps(g) => match s.bytes {
            Some(b) => format!("target >= {g} GB/s: {}", verdict(b as f64 / ns >= g)),
            None => format!("target >= {g} GB/s: no byte count"),
        },
        Target::MaxNs(max) => format!("target < {}: {}", fmt_ns(max), verdict(ns < max)),
        Target::MinRatio(r) => match ratio {
            Some(x) => format!("target ratio >= {r}x: {}", verdict(x >= r)),
            None => format!("target ratio >= {r}x: no baseline"),
        },
    }
}

/// Prints `subject: median ... ; baseline: median ... ; ratio ...x` and the
/// target when given. Prints nothing when either side was not measured.
pub fn print_vs(x: &Subject, base: &Subject, target: Option<Target>) {
    let (Some(nx), Some(nb)) = (median_ns(&x.key), median_ns(&base.key)) else {
        return;
    };
    let ratio = nb / nx;
    let mut line = format!(
        "{} ; baseline {} ; ratio {}",
        describe(x, nx),
        describe(base, nb),
        fmt_ratio(ratio)
    );
    if let Some(t) = target {
        let _ = write!(line, " ; {}", describe_target(t, x, nx, Some(ratio)));
    }
    println!("{line}");
}

/// Prints `subject: median ...` and the target when given.
pub fn print_one(x: &Subject, target: Option<Target>) {
    let Some(nx) = median_ns(&x.key) else {
        return;
    };
    let mut line = describe(x, nx);
    if let Some(t) = target {
        let _ = write!(line, " ; {}", describe_target(t, x, nx, None));
    }
    println!("{line}");
}

fn fmt_ratio(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}x")
    } else if r >= 1.0 {
        format!("{r:.2}x")
    } else {
        format!("{r:.3}x")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_lines_are_unique_and_nonzero() {
        let d = random_bytes(MIB + 3, 1);
        assert_eq!(d.len(), MIB + 3);
        let mut lines: Vec<&[u8]> = d.chunks_exact(64).collect();
        assert!(lines.iter().all(|l| l.iter().any(|b| *b != 0)));
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), MIB / 64);
    }

    #[test]
    fn xor_matches_bytewise() {
        let d = random_bytes(1000, 7);
        let words = xor_bytes(&d);
        let folded = words.to_le_bytes().iter().fold(0u8, |a, b| a ^ b);
        assert_eq!(folded, d.iter().fold(0u8, |a, b| a ^ b));
    }

    #[test]
    fn labels() {
        assert_eq!(size_label(MIB), "1MiB");
        assert_eq!(size_label(256 * MIB), "256MiB");
        assert_eq!(size_label(4 * KIB), "4KiB");
        assert_eq!(size_label(64), "64B");
    }

    #[test]
    fn config_is_valid() {
        for ls in [16, 64, 256, 4096] {
            config_for(LARGE, ls, 0).validate().unwrap();
        }
    }
}
