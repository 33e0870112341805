//! Overhead of the libc shim in trace mode against the same programs untraced in the same
//! run (rounds alternate, so drift hits both sides alike; iperf3 and nginx + wrk trace both
//! ends):
//!
//! - iperf3 TCP over loopback (`iperf3 -c -t SECS`): Gbit/s;
//! - nginx (one worker, `sendfile off`: the body goes through `write`, which the shim sees)
//!   serving a 38 KiB page to wrk (`-t1 -c8 -d SECS`): requests/s;
//! - redis-server traced (the client untraced) serving redis-benchmark GET and SET at 50
//!   connections, pipelining 1 and 16: requests/s (target >= 0.90).
//!
//! Each prints the median of each side, their ratio (target >= 0.75 for iperf3 and nginx +
//! wrk), and the exit delay: the median wall time of the traced client (iperf3, wrk)
//! less the untraced one's, which is what writing the report at exit adds
//! (target <= 100 ms). A workload whose programs are missing is skipped with a message
//! (`testkit::require_program`: a failure under `CI=true`).
//!
//! ```sh
//! cargo bench -p hicamp-benches --bench shim          # 3 rounds of 3 s (or 100000 requests, 10x at -P 16)
//! HICAMP_SHIM_BENCH_ROUNDS=5 HICAMP_SHIM_BENCH_SECS=5 cargo bench -p hicamp-benches --bench shim
//! HICAMP_SHIM_BENCH_ONLY=redis cargo bench -p hicamp-benches --bench shim   # one workload
//! ```
//!
//! Not a criterion benchmark: the subject is two processes talking over loopback, timed by
//! the load generators themselves. The shim (`liblibc_shim.so`) is built first (release for
//! `cargo bench`). Under `cargo test --benches` one short iperf3 round each way runs as a smoke
//! test (the debug shim), nothing is measured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hicamp_benches::{median, run_mode, stat_field, RunMode};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// The shim of this build's profile (target/release or target/debug), built when missing.
fn shim() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HICAMP_SHIM") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/shim-HASH -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let so = dir.join("liblibc_shim.so");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace")?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "-p", "libc-shim"])
        .current_dir(workspace);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build -p libc-shim failed: {}",
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

/// True when a TCP socket listens on `port` (read from /proc/net/tcp*: a probing connection
/// would use up `iperf3 -s -1`'s one session).
fn listening(port: u16) -> bool {
    let want = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&want) && cols[3] == "0A"
            })
        })
    })
}

fn wait_port(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listening(port) {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A server process, stopped (the signal) and reaped on drop.
struct Server(Child, &'static str);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args([self.1, &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// The shim's environment, or none.
#[derive(Clone, Copy)]
struct Preload<'a>(Option<(&'a Path, &'a Path)>);

impl Preload<'_> {
    fn apply(self, c: &mut Command) -> &mut Command {
        if let Some((so, report)) = self.0 {
            c.env("LD_PRELOAD", so)
                .env("HICAMP_SHIM_REPORT", report)
                .env("HICAMP_SHIM_MODE", "trace");
        }
        c
    }
}

/// One round's result: the rates (one or two figures) and the client's wall time.
type Round = Result<(Vec<f64>, f64), String>;

/// A number after `"key":` in `text` (iperf3's JSON, read without a parser).
fn json_number(text: &str, key: &str) -> Option<f64> {
    text.split(&format!("\"{key}\":"))
        .nth(1)?
        .split([',', '\n', '}'])
        .next()?
        .trim()
        .parse()
        .ok()
}

/// iperf3 TCP for `secs`: Gbit/s received, and the CPU seconds both ends spent per GB (from
/// iperf3's own `cpu_utilization_percent`: a cost that a loaded machine disturbs less than
/// the rate).
fn iperf3_round(p: Preload, secs: u64) -> Round {
    let port = free_port().to_string();
    let mut server = Command::new("iperf3");
    server
        .args(["-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Server(
        p.apply(&mut server).spawn().map_err(|e| e.to_string())?,
        "-TERM",
    );
    wait_port(port.parse().unwrap_or(0))?;
    let mut client = Command::new("iperf3");
    client
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .stderr(Stdio::null());
    let t = Instant::now();
    let out = p.apply(&mut client).output().map_err(|e| e.to_string())?;
    let wall = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("iperf3 client failed: {:?}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .split("\"sum_received\"")
        .nth(1)
        .ok_or_else(|| "no sum_received in iperf3's JSON".to_string())?;
    let rate = json_number(received, "bits_per_second").ok_or("no bits_per_second")?;
    let bytes = json_number(received, "bytes").ok_or("no bytes")?;
    let seconds = json_number(received, "seconds").ok_or("no seconds")?;
    let cpu = text
        .split("\"cpu_utilization_percent\"")
        .nth(1)
        .ok_or("no cpu_utilization_percent")?;
    let host = json_number(cpu, "host_total").ok_or("no host_total")?;
    let remote = json_number(cpu, "remote_total").ok_or("no remote_total")?;
    let cpu_s_per_gb = (host + remote) / 100.0 * seconds / (bytes / 1e9);
    Ok((vec![rate / 1e9, cpu_s_per_gb], wall))
}

/// nginx (one worker) and wrk for `secs`: requests/s.
fn nginx_round(p: Preload, secs: u64, dir: &Path) -> Round {
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 1; pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{ access_log off; sendfile off;\n\
               client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;\n\
               uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;\n\
               server {{ listen 127.0.0.1:{port}; root {d}/www; }} }}\n",
            d = dir.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut server = Command::new("nginx");
    server
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Server(
        p.apply(&mut server).spawn().map_err(|e| e.to_string())?,
        "-QUIT",
    );
    wait_port(port)?;
    let mut client = Command::new("wrk");
    client
        .args(["-t1", "-c8", &format!("-d{secs}s")])
        .arg(format!("http://127.0.0.1:{port}/page.html"))
        .stderr(Stdio::null());
    let t = Instant::now();
    let out = p.apply(&mut client).output().map_err(|e| e.to_string())?;
    let wall = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        return Err(format!("wrk saw errors: {text}"));
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output: {text}"))?;
    Ok((vec![rps], wall))
}

/// redis-server (traced or not) serving the untraced redis-benchmark GET/SET at 50
/// connections, pipelining 1 and 16: requests/s of GET and SET at each depth.
fn redis_round(p: Preload, requests: u64) -> Round {
    let port = free_port().to_string();
    let mut server = Command::new("redis-server");
    server
        .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Server(
        p.apply(&mut server).spawn().map_err(|e| e.to_string())?,
        "-TERM",
    );
    wait_port(port.parse().unwrap_or(0))?;
    let cpu0 = cpu_secs(server.0.id())?;
    let mut figs = Vec::new();
    let mut wall = 0.0;
    // Pipelined requests are cheaper: ten times as many keep that run as long.
    for (depth, n) in [("1", requests), ("16", requests * 10)] {
        // The client is never traced: the figure is the traced server's cost alone.
        let mut bench = Command::new("redis-benchmark");
        bench
            .args(["-p", &port, "-c", "50", "-P", depth, "-t", "get,set"])
            .args(["-n", &n.to_string(), "--csv"])
            .stderr(Stdio::null());
        let t = Instant::now();
        let out = bench.output().map_err(|e| e.to_string())?;
        wall += t.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!("redis-benchmark failed: {:?}", out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        for name in ["GET", "SET"] {
            let v = text
                .lines()
                .find(|l| l.starts_with(&format!("\"{name}\"")))
                .and_then(|l| l.split(',').nth(1))
                .and_then(|v| v.trim_matches('"').parse().ok())
                .ok_or_else(|| format!("no {name} line in redis-benchmark's output: {text}"))?;
            figs.push(v);
        }
    }
    // The server's CPU time (all its threads, the interning one too) per request.
    let cpu = cpu_secs(server.0.id())? - cpu0;
    figs.push(cpu * 1e6 / (2 * 11 * requests) as f64);
    Ok((figs, wall))
}

/// CPU seconds (user and system, all threads) process `pid` has used.
fn cpu_secs(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let (Some(u), Some(s)) = (stat_field(&stat, 14), stat_field(&stat, 15)) else {
        return Err(format!("cannot read the CPU time in /proc/{pid}/stat"));
    };
    // /proc counts in USER_HZ ticks, 100 per second on Linux whatever the kernel's HZ.
    Ok((u + s) / 100.0)
}

/// The rounds of one workload, alternating sides; prints each round, returns per side the
/// per-figure samples and the wall times.
struct Sides {
    base: (Vec<Vec<f64>>, Vec<f64>),
    shim: (Vec<Vec<f64>>, Vec<f64>),
}

fn rounds(
    name: &str,
    n: u64,
    so: &Path,
    prefix: &Path,
    mut round: impl FnMut(Preload) -> Round,
) -> Sides {
    let mut s = Sides {
        base: (Vec::new(), Vec::new()),
        shim: (Vec::new(), Vec::new()),
    };
    for r in 0..n {
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            let p = Preload(with.then_some((so, prefix)));
            match round(p) {
                Ok((figs, wall)) => {
                    println!(
                        "{name} round {r} {:<8} {}  client {wall:.3} s",
                        if with { "shim" } else { "baseline" },
                        figs.iter()
                            .map(|f| format!("{f:>10.2}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                    let side = if with { &mut s.shim } else { &mut s.base };
                    side.0.push(figs);
                    side.1.push(wall);
                }
                Err(e) => println!("{name} round {r}: {e}"),
            }
        }
    }
    s
}

/// Table rows: (workload, unit, baseline, shim, ratio, exit delay ms, target).
fn rows(name: &str, figures: &[&str], unit: &str, target: &str, s: &mut Sides) -> Vec<[String; 7]> {
    if s.base.0.is_empty() || s.shim.0.is_empty() {
        return vec![[
            name.to_string(),
            unit.to_string(),
            "-".into(),
            "-".into(),
            "no complete round".into(),
            "-".into(),
            target.into(),
        ]];
    }
    let delay = (median(&mut s.shim.1) - median(&mut s.base.1)) * 1e3;
    figures
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut b: Vec<f64> = s.base.0.iter().map(|v| v[i]).collect();
            let mut w: Vec<f64> = s.shim.0.iter().map(|v| v[i]).collect();
            let (b, w) = (median(&mut b), median(&mut w));
            [
                format!("{name}{f}"),
                unit.to_string(),
                format!("{b:.2}"),
                format!("{w:.2}"),
                format!("{:.3}", w / b),
                format!("{delay:+.0}"),
                target.to_string(),
            ]
        })
        .collect()
}

fn smoke(so: &Path, prefix: &Path) {
    if testkit::require_program("iperf3", "-v") {
        return;
    }
    let base = iperf3_round(Preload(None), 1).expect("iperf3 without the shim");
    let shim = iperf3_round(Preload(Some((so, prefix))), 1).expect("iperf3 under the shim");
    println!(
        "shim overhead: test mode, one 1 s iperf3 round each way ({:.2} vs {:.2} Gbit/s): \
         nothing measured",
        shim.0[0], base.0[0]
    );
}

fn main() {
    let mode = run_mode();
    if mode == RunMode::Other {
        return;
    }
    let so = match shim() {
        Ok(p) => p,
        Err(e) => {
            testkit::skip(format_args!(
                "shim overhead: the shim could not be built: {e}"
            ));
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("hicamp-shim-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(dir.join("www")) {
        testkit::skip(format_args!(
            "shim overhead: cannot create {}: {e}",
            dir.display()
        ));
        return;
    }
    let prefix = dir.join("r");
    if mode == RunMode::Test {
        smoke(&so, &prefix);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let n = env_u64("HICAMP_SHIM_BENCH_ROUNDS", 3);
    let secs = env_u64("HICAMP_SHIM_BENCH_SECS", 3);
    let requests = env_u64("HICAMP_SHIM_BENCH_REQUESTS", 100_000);
    println!();
    println!(
        "=== libc shim, trace mode vs untraced (redis: the server alone traced): {n} rounds ==="
    );
    let mut table: Vec<[String; 7]> = vec![[
        "workload".into(),
        "unit".into(),
        "baseline".into(),
        "shim".into(),
        "ratio".into(),
        "exit delay ms".into(),
        "target".into(),
    ]];
    // HICAMP_SHIM_BENCH_ONLY=iperf3|nginx|redis runs one workload.
    let only = std::env::var("HICAMP_SHIM_BENCH_ONLY").ok();
    let want = |w: &str| only.as_deref().is_none_or(|o| o == w);
    if want("iperf3") && !testkit::require_program("iperf3", "-v") {
        let mut s = rounds("iperf3", n, &so, &prefix, |p| iperf3_round(p, secs));
        let mut r = rows(
            "iperf3 TCP",
            &["", " CPU (both ends)"],
            "Gbit/s",
            ">= 0.75, <= 100 ms",
            &mut s,
        );
        if let Some(cpu) = r.get_mut(1) {
            cpu[1] = "s/GB".into();
            cpu[6] = "(cost ratio)".into();
        }
        table.extend(r);
    }
    // `wrk -v` exits 1 after printing its version: run it at all is the test.
    let wrk = want("nginx")
        && (Command::new("wrk")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
            || !testkit::skip("wrk is not installed (scripts/setup installs it when run as root)"));
    if wrk && !testkit::require_program("nginx", "-v") {
        let page: Vec<u8> = (0..38 * 1024u32)
            .map(|i| b'a' + (i * 7 % 26) as u8)
            .collect();
        match std::fs::write(dir.join("www/page.html"), page) {
            Ok(()) => {
                let mut s = rounds("nginx+wrk", n, &so, &prefix, |p| nginx_round(p, secs, &dir));
                table.extend(rows(
                    "nginx + wrk (38 KiB)",
                    &[""],
                    "req/s",
                    ">= 0.75, <= 100 ms",
                    &mut s,
                ));
            }
            Err(e) => println!("nginx+wrk: cannot write the page: {e}"),
        }
    }
    if want("redis")
        && !testkit::require_program("redis-server", "--version")
        && !testkit::require_program("redis-benchmark", "--version")
    {
        let mut s = rounds("redis", n, &so, &prefix, |p| redis_round(p, requests));
        table.extend(rows(
            "redis-server traced, -c 50 ",
            &[
                "-P 1 GET",
                "-P 1 SET",
                "-P 16 GET",
                "-P 16 SET",
                "server CPU",
            ],
            "req/s",
            ">= 0.90",
            &mut s,
        ));
        if let Some(cpu) = table.last_mut() {
            cpu[1] = "us/req".into();
            cpu[6] = "(cost ratio)".into();
        }
    }
    println!();
    let widths: Vec<usize> = (0..7)
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for (i, r) in table.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, w))| {
                if c == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        println!("{}", line.join("  "));
        if i == 0 {
            println!("{}", "-".repeat(widths.iter().sum::<usize>() + 12));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
