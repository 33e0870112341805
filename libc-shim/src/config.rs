//! The shim's settings, from the environment (read once per process image).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `HICAMP_SHIM_MODE` | `trace`, `stack` (AF_INET sockets served by segstack: see [`crate::stack`] for its settings), `local` (TCP between shimmed processes through a shared memory: see [`crate::local`]), `trace,local` or `stack,local` (local mode beside the other: loopback TCP between shimmed processes goes local, the rest as in trace or stack mode), or `off` (every call a plain pass-through) | `trace` |
//! | `HICAMP_SHIM_REPORT` | report path prefix: each process writes `PREFIX.PID.json` and `PREFIX.PID.txt` | none: the summary goes to `$TMPDIR/hicamp-shim.PID.txt` (never to fd 2, which may be a socket), diagnostics to `hicamp-shim.PID.log` there (`PREFIX.PID.log` with a prefix) |
//! | `HICAMP_SHIM_LINE_SIZES` | line sizes to intern at, comma-separated | `64,256,1024,4096` |
//! | `HICAMP_SHIM_INTERVAL` | seconds between periodic reports (0 = none) | 0 |
//! | `HICAMP_SHIM_SIGNAL` | a signal (number or name such as `USR2`) that writes a report | none |
//! | `HICAMP_SHIM_RUN_ID` | copied into every report (the launcher merges by it) | none |
//! | `HICAMP_SHIM_BUDGET` | memory the shim may use per process (`256M`, `1G`, `65536`...); past it dedup is estimated by content-defined line sampling | `256M` |

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// What the shim does with each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass every call to the kernel; count and intern the payload.
    Trace,
    /// Serve AF_INET stream and datagram sockets with segstack over a nicdma port
    /// ([`crate::stack`]); everything else goes to the kernel unchanged.
    Stack,
    /// TCP connections between processes under the shim that attach the same shared memory
    /// exchange snapshots through it ([`crate::local`]); everything else goes to the kernel.
    Local,
    /// Pass every call to the kernel and do nothing else.
    Off,
}

/// Parsed settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The mode: [`Mode::Local`] alone, or the mode local mode runs beside (`trace,local`,
    /// `stack,local`).
    pub mode: Mode,
    /// Local mode is on: alone ([`Mode::Local`]) or beside trace or stack mode.
    pub local: bool,
    /// Report path prefix.
    pub report: Option<PathBuf>,
    /// Line sizes, ascending, without repeats.
    pub line_sizes: Vec<usize>,
    /// Periodic report interval.
    pub interval: Option<Duration>,
    /// Signal that asks for a report.
    pub signal: Option<i32>,
    /// Run id of the launcher.
    pub run_id: Option<String>,
    /// Memory budget of the shim's tracing data (memories, buffers, sample tables), bytes.
    pub budget: u64,
}

/// Memory budget when none is given.
pub const DEFAULT_BUDGET: u64 = 256 << 20;
/// Smallest budget accepted.
pub const MIN_BUDGET: u64 = 1 << 20;

/// Line sizes when none are given.
pub const DEFAULT_LINE_SIZES: [usize; 4] = [64, 256, 1024, 4096];

impl Config {
    /// Parses settings from `get` (an environment lookup); bad values are reported through
    /// `warn` and replaced by the default.
    pub fn parse(get: impl Fn(&str) -> Option<String>, warn: &mut dyn FnMut(String)) -> Config {
        let (mode, local) = match get("HICAMP_SHIM_MODE").as_deref().map(parse_mode) {
            None => (Mode::Trace, false),
            Some(Ok(m)) => m,
            Some(Err(other)) => {
                warn(format!(
                    "HICAMP_SHIM_MODE={other}: unknown mode (trace, stack, local, trace,local, \
                     stack,local or off); using trace"
                ));
                (Mode::Trace, false)
            }
        };
        let report = get("HICAMP_SHIM_REPORT")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let line_sizes = match get("HICAMP_SHIM_LINE_SIZES") {
            None => DEFAULT_LINE_SIZES.to_vec(),
            Some(s) => match parse_line_sizes(&s) {
                Ok(v) => v,
                Err(e) => {
                    warn(format!(
                        "HICAMP_SHIM_LINE_SIZES={s}: {e}; using {DEFAULT_LINE_SIZES:?}"
                    ));
                    DEFAULT_LINE_SIZES.to_vec()
                }
            },
        };
        let interval = match get("HICAMP_SHIM_INTERVAL") {
            None => None,
            Some(s) => match s.trim().parse::<f64>() {
                Ok(0.0) => None,
                Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Some(Duration::from_secs_f64(v)),
                _ => {
                    warn(format!(
                        "HICAMP_SHIM_INTERVAL={s}: not a number of seconds; no periodic report"
                    ));
                    None
                }
            },
        };
        let signal = match get("HICAMP_SHIM_SIGNAL") {
            None => None,
            Some(s) => match parse_signal(&s) {
                Some(n) => Some(n),
                None => {
                    warn(format!(
                        "HICAMP_SHIM_SIGNAL={s}: not a signal this shim may catch (USR1, USR2, \
                         HUP, or a real-time signal number); ignored"
                    ));
                    None
                }
            },
        };
        let run_id = get("HICAMP_SHIM_RUN_ID").filter(|s| !s.is_empty());
        let budget = match get("HICAMP_SHIM_BUDGET") {
            None => DEFAULT_BUDGET,
            Some(s) => match parse_size(&s) {
                Some(b) if b >= MIN_BUDGET => b,
                Some(_) => {
                    warn(format!(
                        "HICAMP_SHIM_BUDGET={s}: below the minimum of 1M; using 1M"
                    ));
                    MIN_BUDGET
                }
                None => {
                    warn(format!(
                        "HICAMP_SHIM_BUDGET={s}: not a size (bytes, or with K, M, G); using 256M"
                    ));
                    DEFAULT_BUDGET
                }
            },
        };
        Config {
            mode,
            local,
            report,
            line_sizes,
            interval,
            signal,
            run_id,
            budget,
        }
    }

    /// The settings of this process image.
    pub fn get() -> &'static Config {
        static CONFIG: OnceLock<Config> = OnceLock::new();
        CONFIG.get_or_init(|| {
            Config::parse(
                |k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()),
                &mut |msg| crate::sys::diag(&msg),
            )
        })
    }
}

/// `HICAMP_SHIM_MODE`'s value -> (mode, local mode on); the value back when it is not a mode.
/// `local` may be combined with `trace` or `stack` (`stack,local`, in either order).
pub fn parse_mode(s: &str) -> Result<(Mode, bool), &str> {
    let mut base = None;
    let mut local = false;
    for part in s.split(',').map(str::trim) {
        let m = match part {
            "local" if !local => {
                local = true;
                continue;
            }
            "trace" | "" if s.trim().is_empty() => Mode::Trace,
            "trace" => Mode::Trace,
            "stack" => Mode::Stack,
            "off" => Mode::Off,
            _ => return Err(s),
        };
        if base.replace(m).is_some() {
            return Err(s);
        }
    }
    match (base, local) {
        (None, false) => Ok((Mode::Trace, false)),
        (None, true) => Ok((Mode::Local, true)),
        (Some(Mode::Off), true) => Err(s),
        (Some(m), l) => Ok((m, l)),
    }
}

/// `"64, 256"` -> `[64, 256]`: powers of two in HICAMP's range, sorted, without repeats.
pub fn parse_line_sizes(s: &str) -> Result<Vec<usize>, String> {
    let mut v = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let n: usize = part
            .parse()
            .map_err(|_| format!("'{part}' is not a number"))?;
        hicamp::Config::check_line_size(n).map_err(|e| e.to_string())?;
        v.push(n);
    }
    v.sort_unstable();
    v.dedup();
    if v.is_empty() {
        return Err("no line size".into());
    }
    Ok(v)
}

/// `"256M"`, `"1GiB"`, `"4096"`, `"64k"` -> bytes (binary units); `None` when not a size.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// A signal the shim may take for on-demand reports.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    let name = s.strip_prefix("SIG").unwrap_or(s);
    let n = match name {
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "HUP" => libc::SIGHUP,
        _ => name.parse().ok()?,
    };
    let allowed = n == libc::SIGUSR1
        || n == libc::SIGUSR2
        || n == libc::SIGHUP
        || (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n);
    allowed.then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> (Config, Vec<String>) {
        let mut warnings = Vec::new();
        let c = Config::parse(
            |k| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            },
            &mut |m| warnings.push(m),
        );
        (c, warnings)
    }

    #[test]
    fn defaults() {
        let (c, w) = parse(&[]);
        assert_eq!(c.mode, Mode::Trace);
        assert_eq!(c.line_sizes, DEFAULT_LINE_SIZES);
        assert_eq!(c.budget, DEFAULT_BUDGET);
        assert!(c.report.is_none() && c.interval.is_none() && c.signal.is_none());
        assert!(w.is_empty());
    }

    #[test]
    fn values_and_bad_values() {
        let (c, w) = parse(&[
            ("HICAMP_SHIM_MODE", "off"),
            ("HICAMP_SHIM_LINE_SIZES", "4096, 16,16"),
            ("HICAMP_SHIM_INTERVAL", "0.5"),
            ("HICAMP_SHIM_SIGNAL", "SIGUSR2"),
            ("HICAMP_SHIM_REPORT", "/tmp/r"),
            ("HICAMP_SHIM_BUDGET", "32M"),
        ]);
        assert_eq!(c.budget, 32 << 20);
        assert_eq!(c.mode, Mode::Off);
        assert_eq!(c.line_sizes, vec![16, 4096]);
        assert_eq!(c.interval, Some(Duration::from_millis(500)));
        assert_eq!(c.signal, Some(libc::SIGUSR2));
        assert_eq!(c.report, Some(PathBuf::from("/tmp/r")));
        assert!(w.is_empty());
        assert_eq!(parse(&[("HICAMP_SHIM_MODE", "local")]).0.mode, Mode::Local);
        assert_eq!(parse_mode("local"), Ok((Mode::Local, true)));
        assert_eq!(parse_mode("stack,local"), Ok((Mode::Stack, true)));
        assert_eq!(parse_mode(" local , stack"), Ok((Mode::Stack, true)));
        assert_eq!(parse_mode("trace,local"), Ok((Mode::Trace, true)));
        assert_eq!(parse_mode("stack"), Ok((Mode::Stack, false)));
        assert_eq!(parse_mode(""), Ok((Mode::Trace, false)));
        for bad in [
            "off,local",
            "stack,trace",
            "local,local",
            "stack,",
            "nearby,local",
        ] {
            assert_eq!(parse_mode(bad), Err(bad), "{bad}");
        }
        let (c, w) = parse(&[("HICAMP_SHIM_MODE", "stack,local")]);
        assert!(c.mode == Mode::Stack && c.local && w.is_empty());
        assert!(!parse(&[("HICAMP_SHIM_MODE", "stack")]).0.local);

        let (c, w) = parse(&[
            ("HICAMP_SHIM_MODE", "nearby"),
            ("HICAMP_SHIM_LINE_SIZES", "63"),
            ("HICAMP_SHIM_INTERVAL", "soon"),
            ("HICAMP_SHIM_SIGNAL", "KILL"),
            ("HICAMP_SHIM_BUDGET", "lots"),
        ]);
        assert_eq!(c.mode, Mode::Trace);
        assert_eq!(c.budget, DEFAULT_BUDGET);
        assert_eq!(c.line_sizes, DEFAULT_LINE_SIZES);
        assert!(c.interval.is_none() && c.signal.is_none());
        assert_eq!(w.len(), 5, "{w:?}");
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("64 KiB"), Some(64 << 10));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("99999999999999T"), None);
    }
}
