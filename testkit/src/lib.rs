//! Test support for the workspace: not part of any library's API.
//!
//! * [`Rng`]: the one seedable test PRNG (splitmix64), so a failing seed
//!   reproduces everywhere.
//! * [`skip`] and [`require`]: the one way a test says that a prerequisite
//!   (root, namespaces, an installed application) is missing. Outside CI the
//!   test prints `skipped: ...` and returns; with `CI=true` or
//!   `HICAMP_REQUIRE_ALL=1` it **fails** instead, so a CI machine that lacks
//!   root or the applications cannot lose kernel coverage quietly.
//! * [`frame`]: Ethernet/IPv4/UDP frames for tests that send to a kernel
//!   peer.
//!
//! ```
//! fn kernel_test() {
//!     if testkit::require(Ok::<(), &str>(()), "namespaces") {
//!         return; // skipped (never in CI)
//!     }
//!     // ... the test ...
//! }
//! # kernel_test();
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::fmt::Display;

pub mod frame;

/// True when a missing prerequisite must fail the test instead of skipping
/// it: `CI` is `true` or `1`, or `HICAMP_REQUIRE_ALL` is `1`.
pub fn strict() -> bool {
    let set = |k: &str, vals: &[&str]| {
        std::env::var(k).is_ok_and(|v| vals.iter().any(|x| v.eq_ignore_ascii_case(x)))
    };
    set("CI", &["true", "1"]) || set("HICAMP_REQUIRE_ALL", &["1", "true"])
}

/// Reports that the calling test cannot run because `why`, and returns
/// `true` so the caller can `return`. Panics instead under [`strict`].
#[track_caller]
pub fn skip(why: impl Display) -> bool {
    if strict() {
        panic!(
            "a prerequisite is missing: {why} \
             (CI=true or HICAMP_REQUIRE_ALL=1: tests may not skip; run scripts/setup as root)"
        );
    }
    eprintln!("skipped: {why}");
    true
}

/// [`skip`]s (returns `true`) when `prereq` is an error, naming `what` needs
/// it; returns `false` when the test can run.
#[track_caller]
pub fn require<E: Display>(prereq: Result<(), E>, what: &str) -> bool {
    match prereq {
        Ok(()) => false,
        Err(e) => skip(format_args!("needs {what} ({e})")),
    }
}

/// [`skip`]s (returns `true`) unless `program` runs with `arg` and exits 0.
#[track_caller]
pub fn require_program(program: &str, arg: &str) -> bool {
    let ok = std::process::Command::new(program)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        false
    } else {
        skip(format_args!(
            "{program} is not installed (scripts/setup installs it when run as root)"
        ))
    }
}

/// [`require`] of root (`what`: what needs it, e.g. "root (a TAP device)").
pub fn require_root(what: &str) -> bool {
    require(if is_root() { Ok(()) } else { Err("not root") }, what)
}

/// True when the process runs as root.
pub fn is_root() -> bool {
    // The effective uid of `/proc/self` is ours; reading it needs no unsafe.
    std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    })
}

/// The one test PRNG: splitmix64 (Steele, Lea and Flood, "Fast splittable
/// pseudorandom number generators", 2014). Small, seedable, and good enough
/// to pick losses, mutations and contents; not for anything secret.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `0..n` as a `usize`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `1 / n` (never when `n` is 0).
    pub fn one_in(&mut self, n: u64) -> bool {
        n != 0 && self.below(n) == 0
    }

    /// True with probability `permille / 1000`.
    pub fn chance(&mut self, permille: u32) -> bool {
        self.below(1000) < u64::from(permille)
    }

    /// One random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }

    /// A new generator whose sequence is independent of this one's.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64() ^ 0xd6e8_feb8_6659_fd93)
    }
}

/// Builds the LD_PRELOAD shim (`cargo build -p libc-shim`, `--release` when
/// `bin_dir` is a release directory) with `cargo` in `workspace`, and returns
/// its path in `bin_dir`; panics with cargo's output when the build fails.
/// For the tests that run applications under `hicamp run`: pass
/// `env!("CARGO")`, the workspace root and the directory of
/// `env!("CARGO_BIN_EXE_hicamp")`.
pub fn build_shim(
    cargo: &str,
    workspace: &std::path::Path,
    bin_dir: &std::path::Path,
) -> std::path::PathBuf {
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-q", "-p", "libc-shim"])
        .current_dir(workspace);
    if bin_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build -p libc-shim failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let so = bin_dir.join("liblibc_shim.so");
    assert!(so.is_file(), "{} was not built", so.display());
    so
}

/// [`build_shim`] for the tests that run `hicamp run`, once per test binary:
/// pass `env!("CARGO_BIN_EXE_hicamp")`, `env!("CARGO")` and
/// `env!("CARGO_MANIFEST_DIR")` of a crate at the workspace's top level.
pub fn shim_beside(hicamp: &str, cargo: &str, manifest_dir: &str) -> &'static std::path::Path {
    static SHIM: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| {
        let bin_dir = std::path::Path::new(hicamp)
            .parent()
            .expect("binary directory");
        let workspace = std::path::Path::new(manifest_dir)
            .parent()
            .expect("workspace");
        build_shim(cargo, workspace, bin_dir)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // First outputs of splitmix64 seeded with 1234567 (the reference
        // implementation's test vector).
        let mut r = Rng::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn below_stays_in_range_and_fill_covers_tails() {
        let mut r = Rng::new(7);
        for n in 1..200 {
            assert!(r.below(n) < n);
        }
        assert_eq!(r.below(0), 0);
        for len in 0..20 {
            assert_eq!(r.bytes(len).len(), len);
        }
    }
}
