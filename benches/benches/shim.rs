//! Overhead of the libc shim in trace mode: redis-benchmark GET and SET throughput with
//! redis-server and redis-benchmark both under the shim, against both without it, in the same
//! run (rounds alternate, so drift hits both sides alike).
//!
//! ```sh
//! cargo bench -p hicamp-benches --bench shim            # 7 rounds of 100000 requests each way
//! HICAMP_SHIM_BENCH_ROUNDS=3 HICAMP_SHIM_BENCH_REQUESTS=50000 cargo bench -p hicamp-benches --bench shim
//! ```
//!
//! Not a criterion benchmark: the subject is two processes talking over loopback, timed by
//! redis-benchmark itself. It prints the median requests/s of each side and their ratio. The
//! shim (`liblibc_shim.so`, release profile) is built first when missing. Skips, saying so,
//! when redis-server or redis-benchmark is missing; does nothing in test mode.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hicamp_benches::{run_mode, RunMode};

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// The release shim, built when missing.
fn shim() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HICAMP_SHIM") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/release/deps/shim-HASH -> target/release
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let so = dir.join("liblibc_shim.so");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace")?;
    let out = Command::new(env!("CARGO"))
        .args(["build", "-q", "--release", "-p", "libc-shim"])
        .current_dir(workspace)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build --release -p libc-shim failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if so.is_file() {
        Ok(so)
    } else {
        Err(format!("{} was not built", so.display()))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(6399, |a| a.port())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// One redis-server + redis-benchmark round; returns (GET, SET) requests per second.
fn round(preload: Option<(&Path, &Path)>, requests: u64) -> Result<(f64, f64), String> {
    let port = free_port().to_string();
    let with_shim = |c: &mut Command| {
        if let Some((so, report)) = preload {
            c.env("LD_PRELOAD", so)
                .env("HICAMP_SHIM_REPORT", report)
                .env("HICAMP_SHIM_MODE", "trace");
        }
    };
    let mut server = Command::new("redis-server");
    server
        .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    with_shim(&mut server);
    let _server = Server(server.spawn().map_err(|e| e.to_string())?);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap_or(0))).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut bench = Command::new("redis-benchmark");
    bench
        .args([
            "-p",
            &port,
            "-t",
            "get,set",
            "-n",
            &requests.to_string(),
            "--csv",
        ])
        .stderr(Stdio::null());
    with_shim(&mut bench);
    let out = bench.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("redis-benchmark failed: {:?}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = |name: &str| -> Result<f64, String> {
        text.lines()
            .find(|l| l.starts_with(&format!("\"{name}\"")))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|v| v.trim_matches('"').parse().ok())
            .ok_or_else(|| format!("no {name} line in redis-benchmark's output: {text}"))
    };
    Ok((rps("GET")?, rps("SET")?))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    match run_mode() {
        RunMode::Measure | RunMode::Quick => {}
        RunMode::Test => {
            println!(
                "shim overhead: test mode, nothing measured (the shim tests run the applications)"
            );
            return;
        }
        RunMode::Other => return,
    }
    for app in ["redis-server", "redis-benchmark"] {
        if !have(app) {
            println!("shim overhead: SKIPPED: {app} is not installed (scripts/setup installs it as root)");
            return;
        }
    }
    let so = match shim() {
        Ok(p) => p,
        Err(e) => {
            println!("shim overhead: SKIPPED: {e}");
            return;
        }
    };
    let rounds = env_u64("HICAMP_SHIM_BENCH_ROUNDS", 7);
    let requests = env_u64("HICAMP_SHIM_BENCH_REQUESTS", 100_000);
    let reports = std::env::temp_dir().join(format!("hicamp-shim-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&reports) {
        println!(
            "shim overhead: SKIPPED: cannot create {}: {e}",
            reports.display()
        );
        return;
    }
    let prefix = reports.join("r");
    let (mut base_get, mut base_set, mut shim_get, mut shim_set) = (vec![], vec![], vec![], vec![]);
    println!();
    println!(
        "=== libc shim, trace mode: redis-benchmark -t get,set -n {requests}, {rounds} rounds ==="
    );
    for r in 0..rounds {
        // Alternate which side goes first.
        let order: [bool; 2] = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            let res = round(with.then_some((so.as_path(), prefix.as_path())), requests);
            match res {
                Ok((get, set)) => {
                    println!(
                        "round {r} {:<8} GET {get:>10.0} req/s  SET {set:>10.0} req/s",
                        if with { "shim" } else { "baseline" }
                    );
                    if with {
                        shim_get.push(get);
                        shim_set.push(set);
                    } else {
                        base_get.push(get);
                        base_set.push(set);
                    }
                }
                Err(e) => println!("round {r}: {e}"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&reports);
    if base_get.is_empty() || shim_get.is_empty() {
        println!("shim overhead: no complete round");
        return;
    }
    for (name, base, shim) in [
        ("GET", &mut base_get, &mut shim_get),
        ("SET", &mut base_set, &mut shim_set),
    ] {
        let (b, s) = (median(base), median(shim));
        println!(
            "{name}: shim {s:.0} req/s ; baseline {b:.0} req/s ; ratio {:.3} ; overhead {:+.1}% (target < 10%)",
            s / b,
            (1.0 - s / b) * 100.0
        );
    }
}
