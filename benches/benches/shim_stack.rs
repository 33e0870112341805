//! Stack mode against the kernel, same run, same kind of virtual link:
//!
//! - **stack**: the server (or curl) runs under `hicamp run --mode stack` in namespace A over
//!   the backend `SHIM_STACK_BACKEND` names: `tap` (the default: a TAP device the launcher
//!   makes; the best of the three in every workload measured), `af_packet` (AF_PACKET rings on
//!   a veth pair the launcher makes, the link closest to the kernel's), `af_xdp` (AF_XDP,
//!   generic mode, on a veth pair), a comma-separated list, or `all`; the load generator is the
//!   kernel's, in A, across that link;
//! - **kernel**: the same server (or curl) runs on the kernel in namespace B, reached from A
//!   over a veth pair.
//!
//! Workloads: redis-benchmark GET and SET (50 connections, pipelining 1 and 16; requests/s),
//! nginx with a master and 2 worker processes serving wrk (a 4 KiB page, `sendfile on`, 50
//! connections, 2 threads; requests/s, and the server's CPU time and system calls per request
//! over its life, counted with `perf stat -e raw_syscalls:sys_enter` when perf can: in stack
//! mode each worker re-homes the listener into a stack of its own on its own TAP queue; the
//! backend `tap-norehome` is the same with `HICAMP_STACK_REHOME=0`, the workers reaching the
//! master's stack over the control channel), the same nginx in one process (`master_process off`: the direct path) and a 64 MiB download by curl from python's `http.server` (MB/s from the process's start to
//! its exit, and the transfer alone by curl's own clock).
//! The backend `tap-notxthread` is `tap` with `HICAMP_TAP_TX_THREAD=0`: every frame written to
//! the TAP by the thread that runs the interface, not large ones by the port's writer thread.
//! Each round runs the kernel and every backend asked for, in a rotating order; each line
//! prints a backend's median, the kernel's median of the same rounds and the ratio stack/kernel
//! (the issue's target for redis and nginx is >= 1.2), and for redis and nginx the median of
//! the rounds' own ratios with their range ("paired": the host's speed drifts by more than the
//! gap between the sides over a run, and a round's two sides run back to back); for redis also
//! the server's CPU time per request (less noisy than the rates on a loaded host).
//! `HICAMP_STACK_BENCH_ONLY=nginx` (or `redis`, `curl`, comma-separated) runs only those
//! workloads.
//!
//! ```sh
//! cargo bench -p hicamp-benches --bench shim_stack     # 3 rounds, 50000 requests
//! HICAMP_STACK_BENCH_ROUNDS=5 HICAMP_STACK_BENCH_REQUESTS=100000 cargo bench -p hicamp-benches --bench shim_stack
//! HICAMP_STACK_BENCH_IDLE=500 HICAMP_STACK_BENCH_ONLY=redis cargo bench -p hicamp-benches --bench shim_stack
//! SHIM_STACK_BACKEND=all cargo bench -p hicamp-benches --bench shim_stack   # tap, af_packet, af_xdp
//! SHIM_STACK_BACKEND=tap,tap-norehome HICAMP_STACK_BENCH_ONLY=nginx cargo bench -p hicamp-benches --bench shim_stack
//! ```
//!
//! Needs root, iproute2, python3, curl, redis-server, redis-benchmark, nginx and wrk; a missing one skips
//! the workload with a message (a failure under `CI=true`). Under `cargo test --benches`
//! nothing runs. Not a criterion benchmark: the subjects are processes, timed by the load
//! generators themselves. `hicamp` and the shim are built first (release for `cargo bench`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hicamp_benches::apps::{hicamp_with_shim, Reaper};
use hicamp_benches::{median, run_mode, stat_field, RunMode};
use nicdma::tap::{netns_supported, NetNs};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The lab: namespace A (load generators, the TAP for stack mode) and B (kernel servers),
/// joined by a veth pair 10.121.0.1 (A) <-> 10.121.0.2 (B); the TAP link is 10.120.0.1 (A's
/// kernel) <-> 10.120.0.2 (the stack).
struct Lab {
    a: NetNs,
    b: NetNs,
    hicamp: PathBuf,
    dir: PathBuf,
}

const TAP: &str = "hsbench0";
/// The TAP device was made single-queue by [`Lab::stack`] (`tap-1q`): the next call removes
/// it without a word.
static ONE_QUEUE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The stack's end of the veth pair the launcher makes for `af_packet`/`af_xdp` (the kernel's
/// end, `hsbv0-k`, gets [`A_TAP_IP`]).
const VETH: &str = "hsbv0";
const STACK_IP: &str = "10.120.0.2";
const A_TAP_IP: &str = "10.120.0.1";
const A_VETH_IP: &str = "10.121.0.1";
const B_IP: &str = "10.121.0.2";

impl Lab {
    fn new(hicamp: PathBuf, dir: PathBuf) -> Result<Lab, String> {
        let a = NetNs::create().map_err(|e| e.to_string())?;
        let b = NetNs::create().map_err(|e| e.to_string())?;
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        ip(&[
            "link",
            "add",
            "hsva",
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            "hsvb",
            "netns",
            b.name(),
        ])?;
        a.ip(&["addr", "add", &format!("{A_VETH_IP}/24"), "dev", "hsva"])
            .map_err(|e| e.to_string())?;
        b.ip(&["addr", "add", &format!("{B_IP}/24"), "dev", "hsvb"])
            .map_err(|e| e.to_string())?;
        a.ip(&["link", "set", "hsva", "up"])
            .map_err(|e| e.to_string())?;
        b.ip(&["link", "set", "hsvb", "up"])
            .map_err(|e| e.to_string())?;
        Ok(Lab { a, b, hicamp, dir })
    }

    /// `hicamp run --mode stack` in A over `backend` (`tap`, `af_packet`, `af_xdp`).
    fn stack(&self, backend: &str, args: &[&str]) -> Command {
        // `NAME-old`: the same backend with the shim `SHIM_STACK_OLD` names (a build kept
        // aside: a same-run baseline for a change).
        let (base, old) = match backend.strip_suffix("-old") {
            Some(b) => (b, true),
            None => (backend, false),
        };
        // `NAME-nodefer`: the same backend with deferred transmit off (`HICAMP_STACK_DEFER=0`);
        // `NAME-norehome`: forked children do not re-home listeners (`HICAMP_STACK_REHOME=0`:
        // nginx's workers reach the master's stack over the control channel).
        let (name, nodefer) = match base.strip_suffix("-nodefer") {
            Some(b) => (b, true),
            None => (base, false),
        };
        let (name, norehome) = match name.strip_suffix("-norehome") {
            Some(b) => (b, true),
            None => (name, false),
        };
        // `NAME-notxthread`: no TAP writer thread (`HICAMP_TAP_TX_THREAD=0`): every frame
        // written by the thread that runs the interface.
        let (name, notxthread) = match name.strip_suffix("-notxthread") {
            Some(b) => (b, true),
            None => (name, false),
        };
        // `NAME-txdedup`: TX frames' own lines interned, not owned (`HICAMP_TX_DEDUP=1`).
        let (name, txdedup) = match name.strip_suffix("-txdedup") {
            Some(b) => (b, true),
            None => (name, false),
        };
        // `tap-1q`: the TAP device made single-queue here first (the launcher makes it
        // multi-queue), so that one queue is compared with one queue of a multi-queue device;
        // forked children then cannot re-home.
        let (name, one_queue) = match name.strip_suffix("-1q") {
            Some(b) => (b, true),
            None => (name, false),
        };
        let spec = match name {
            "tap" => format!("tap:{TAP}"),
            other => format!("{other}:{VETH}"),
        };
        // The stack's report (frame counters): removed before the run, read after it.
        let report = self.report(backend);
        for (_, f) in stack_reports(&report) {
            let _ = std::fs::remove_file(f);
        }
        // A link an earlier launcher left (it was killed before it could remove it) would
        // hold the same addresses.
        for dev in [TAP, VETH] {
            if self.a.ip(&["-o", "link", "show", "dev", dev]).is_ok() {
                if !(dev == TAP && ONE_QUEUE.swap(false, std::sync::atomic::Ordering::Relaxed)) {
                    eprintln!("shim_stack: {dev} was left behind; removing it");
                }
                let _ = self.a.ip(&["link", "del", "dev", dev]);
            }
        }
        if one_queue
            && self
                .a
                .ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])
                .is_ok()
        {
            // Left for the next round to remove (the launcher removes only what it made).
            ONE_QUEUE.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = self
                .a
                .ip(&["link", "set", "dev", TAP, "addrgenmode", "none"]);
        }
        let mut c = self.a.command(self.hicamp.to_str().unwrap_or("hicamp"));
        if nodefer {
            c.env("HICAMP_STACK_DEFER", "0");
        }
        if old {
            if let Some(so) = std::env::var_os("SHIM_STACK_OLD") {
                c.env("HICAMP_SHIM", so);
            }
        }
        if norehome {
            c.env("HICAMP_STACK_REHOME", "0");
        }
        if notxthread {
            c.env("HICAMP_TAP_TX_THREAD", "0");
        }
        if txdedup {
            c.env("HICAMP_TX_DEDUP", "1");
        }
        c.args([
            "-q",
            "run",
            "--report",
            report.to_str().unwrap_or_default(),
            "--mode",
            "stack",
            "--backend",
            &spec,
            "--ip",
            &format!("{STACK_IP}/24"),
            "--host-ip",
            &format!("{A_TAP_IP}/24"),
            "--",
        ])
        .args(args);
        c
    }
}

impl Lab {
    /// The report path of a stack-side run on `backend`.
    fn report(&self, backend: &str) -> PathBuf {
        self.dir.join(format!("report-{backend}.json"))
    }

    /// Frames the stack sent and port kicks (TX flushes), summed over the run's stack reports
    /// (0 when there are none).
    fn frames(&self, backend: &str) -> (f64, f64) {
        let mut out = (0.0, 0.0);
        for (text, _) in stack_reports(&self.report(backend)) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            out.0 += v["iface"]["tx_frames"].as_f64().unwrap_or(0.0);
            out.1 += v["port_copies"]["kicks"].as_f64().unwrap_or(0.0);
        }
        out
    }
}

/// The stack reports `PREFIX.stack.PID.json` next to `prefix`: (contents, path).
fn stack_reports(prefix: &std::path::Path) -> Vec<(String, PathBuf)> {
    let (Some(dir), Some(name)) = (prefix.parent(), prefix.file_name()) else {
        return Vec::new();
    };
    let start = format!("{}.stack.", name.to_string_lossy());
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&start))
        .filter_map(|e| Some((std::fs::read_to_string(e.path()).ok()?, e.path())))
        .collect()
}

/// Where the servers' standard error goes (shown when one does not listen).
fn server_log() -> PathBuf {
    std::env::temp_dir().join(format!("hicamp-stack-bench-{}.err", std::process::id()))
}

/// A server in its own process group, killed whole on drop: a launcher killed alone would
/// leave its application running on the stack and its link in place.
struct Group(Reaper);

impl Drop for Group {
    fn drop(&mut self) {
        if self.0 .0.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0 .0.id())])
                .output();
        }
    }
}

fn spawn(mut c: Command) -> Result<Group, String> {
    use std::os::unix::process::CommandExt as _;
    c.process_group(0);
    let err = std::fs::File::create(server_log())
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    c.stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map(|c| Group(Reaper(c)))
        .map_err(|e| e.to_string())
}

/// Waits until `ip:port` accepts a connection from namespace `ns`; an error as soon as
/// `server` (when given) has exited without listening.
fn wait_port(
    ns: &NetNs,
    ip: &str,
    port: u16,
    mut server: Option<&mut Group>,
) -> Result<(), String> {
    let probe =
        format!("import socket; socket.create_connection(('{ip}', {port}), timeout=1).close()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(Ok(Some(st))) = server.as_mut().map(|s| s.0 .0.try_wait()) {
            let log = std::fs::read_to_string(server_log()).unwrap_or_default();
            return Err(format!(
                "the server exited ({st}) before listening on {ip}:{port}: {}",
                log.trim()
            ));
        }
        let ok = ns
            .command("python3")
            .args(["-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(server_log()).unwrap_or_default();
    Err(format!("nothing listens on {ip}:{port}: {}", log.trim()))
}

fn redis_args() -> Vec<String> {
    [
        "redis-server",
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// redis-benchmark from A against `host`: (GET, SET) requests/s at pipelining `p`.
fn redis_bench(lab: &Lab, host: &str, p: u32, n: u64) -> Result<(f64, f64), String> {
    let out = lab
        .a
        .command("redis-benchmark")
        .args([
            "-h",
            host,
            "-t",
            "get,set",
            "-c",
            "50",
            "-P",
            &p.to_string(),
            "-n",
            &n.to_string(),
            "-q",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rate = |name: &str| -> Option<f64> {
        let line = text
            .rsplit('\r')
            .find(|l| l.trim_start().starts_with(name))?;
        let l = line.trim_start().strip_prefix(name)?;
        l.split_whitespace().next()?.parse().ok()
    };
    match (rate("GET:"), rate("SET:")) {
        (Some(g), Some(s)) => Ok((g, s)),
        _ => Err(format!("redis-benchmark said: {text}")),
    }
}

/// CPU seconds (user + system) of this process's reaped children: `cutime` + `cstime` of
/// `/proc/self/stat`, in USER_HZ (100 on Linux).
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    (stat_field(&stat, 16).unwrap_or(0.0) + stat_field(&stat, 17).unwrap_or(0.0)) / 100.0
}

/// CPU seconds (user + system) of the live processes of process group `pgid` (a server and
/// everything it started: the launcher, the application, its children), from `/proc`.
fn group_cpu(pgid: u32) -> f64 {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0.0;
    for e in rd.flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pgrp is field 5, utime 14, stime 15.
        if stat_field(&stat, 5) == Some(f64::from(pgid)) {
            ticks += stat_field(&stat, 14).unwrap_or(0.0) + stat_field(&stat, 15).unwrap_or(0.0);
        }
    }
    ticks / 100.0
}

/// Holds `idle` connections to `host:6379` open from namespace A (`HICAMP_STACK_BENCH_IDLE`:
/// a server with many quiet clients and a few busy ones); returns once they are open.
fn idle_clients(lab: &Lab, host: &str, idle: u64) -> Result<Option<Reaper>, String> {
    if idle == 0 {
        return Ok(None);
    }
    let prog = format!(
        "import socket, sys, time\n\
         s = [socket.create_connection(('{host}', 6379)) for _ in range({idle})]\n\
         print('open', flush=True)\n\
         time.sleep(3600)\n"
    );
    let mut c = lab.a.command("python3");
    c.args(["-c", &prog])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut r = Reaper(c.spawn().map_err(|e| e.to_string())?);
    let mut line = String::new();
    if let Some(out) = r.0.stdout.take() {
        use std::io::BufRead;
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    if line.trim() != "open" {
        return Err(format!("{idle} idle connections did not open"));
    }
    Ok(Some(r))
}

/// One redis round on one side: (GET p1, SET p1, GET p16, SET p16, the server's CPU
/// microseconds per request over the four runs, the stack's frames and kicks per request, then
/// CPU microseconds per request at pipelining 1: the server's, the load generator's; the same
/// at 16).
fn redis_round(lab: &Lab, stack: Option<&str>, n: u64) -> Result<[f64; 11], String> {
    let args = redis_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut server, host) = if let Some(b) = stack {
        (spawn(lab.stack(b, &args))?, STACK_IP)
    } else {
        let mut c = lab.b.command(args[0]);
        c.args(&args[1..]);
        (spawn(c)?, B_IP)
    };
    wait_port(&lab.a, host, 6379, Some(&mut server))?;
    let idle = idle_clients(lab, host, env_u64("HICAMP_STACK_BENCH_IDLE", 0))?;
    // Each pipelining level's CPU per request: the server's (its process group, live) and
    // the load generator's (reaped, so in this process's children's times).
    let pgid = server.0 .0.id();
    let cpu = || (group_cpu(pgid), children_cpu());
    let a = cpu();
    let (g1, s1) = redis_bench(lab, host, 1, n)?;
    let b = cpu();
    let (g16, s16) = redis_bench(lab, host, 16, n * 4)?;
    let c = cpu();
    drop(idle);
    let per = |d: f64, reqs: u64| d * 1e6 / (2 * reqs) as f64;
    let split = [
        per(b.0 - a.0, n),
        per(b.1 - a.1, n),
        per(c.0 - b.0, n * 4),
        per(c.1 - b.1, n * 4),
    ];
    let _ = lab
        .a
        .command("redis-cli")
        .args(["-h", host, "shutdown", "nosave"])
        .output();
    // The server's CPU: what its reaping adds to the children's (it exits by itself first).
    let c0 = children_cpu();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.0 .0.try_wait().is_ok_and(|s| s.is_none()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    let cpu_us = (children_cpu() - c0) * 1e6 / (10 * n) as f64;
    let (frames, kicks) = stack.map_or((0.0, 0.0), |b| lab.frames(b));
    let reqs = (10 * n) as f64;
    Ok([
        g1,
        s1,
        g16,
        s16,
        cpu_us,
        frames / reqs,
        kicks / reqs,
        split[0],
        split[1],
        split[2],
        split[3],
    ])
}

/// One 64 MiB download: (MB/s from the spawn to the exit, MB/s by curl's own clock). The
/// server is python's http.server on A's kernel; the client is what changes: curl in stack
/// mode in A over the TAP, or curl on the kernel in B over the veth pair. The first figure
/// includes the process's start and exit, which in stack mode is the launcher's work too
/// (the TAP made and brought up, the memory, the stack's report: 60-90 ms here, about a
/// quarter of a 64 MiB download); the second is the transfer alone (`%{speed_download}`).
fn curl_round(lab: &Lab, stack: Option<&str>) -> Result<(f64, f64), String> {
    let out_file = lab.dir.join("got");
    let url_host = if stack.is_some() { A_TAP_IP } else { A_VETH_IP };
    let url = format!("http://{url_host}:8000/blob");
    let args = [
        "curl",
        "-sS",
        "--max-time",
        "120",
        "-o",
        out_file.to_str().unwrap_or("/dev/null"),
        "-w",
        "%{speed_download}",
        url.as_str(),
    ];
    let t0 = Instant::now();
    let out = if let Some(b) = stack {
        lab.stack(b, &args).output()
    } else {
        let mut c = lab.b.command("curl");
        c.args(&args[1..]);
        c.output()
    }
    .map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let len = std::fs::metadata(&out_file)
        .map_err(|e| e.to_string())?
        .len();
    if len != 64 << 20 {
        return Err(format!("curl got {len} bytes, not 64 MiB"));
    }
    let own = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .map_err(|e| format!("curl's speed_download: {e}"))?;
    Ok((len as f64 / secs / 1e6, own / 1e6))
}

/// A workload `HICAMP_STACK_BENCH_ONLY` selects (all when it is unset).
fn wanted(name: &str) -> bool {
    std::env::var("HICAMP_STACK_BENCH_ONLY")
        .map(|v| v.split(',').any(|w| w.trim() == name))
        .unwrap_or(true)
}

/// `c` run under `perf stat`, counting the system calls of it and every process it forks
/// (`raw_syscalls:sys_enter`) into `out`; `c` itself when perf cannot count them here.
fn count_syscalls(c: Command, out: &std::path::Path) -> Command {
    let _ = std::fs::remove_file(out);
    let works = Command::new("perf")
        .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        return c;
    }
    let mut p = Command::new("perf");
    p.args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-o"])
        .arg(out)
        .arg("--")
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => p.env(k, v),
            None => p.env_remove(k),
        };
    }
    p
}

/// The count `perf stat -x,` wrote to `out` (NaN when none).
fn syscalls_counted(out: &std::path::Path) -> f64 {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))
        .and_then(|l| l.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// One nginx round on one side, with a master and 2 workers (`workers`) or in one process:
/// (wrk's requests/s, the stack's TX frames and kicks per request, the server's CPU
/// microseconds and system calls per request, counted over its whole life: every process of
/// it, the launcher's included on the stack side).
fn nginx_round(
    lab: &Lab,
    stack: Option<&str>,
    secs: u64,
    workers: bool,
) -> Result<(f64, f64, f64, f64, f64), String> {
    let side = stack.unwrap_or("kernel");
    let procs = if workers {
        "master_process on; worker_processes 2;"
    } else {
        "master_process off; worker_processes 1;"
    };
    let root = lab.dir.join(format!("ngx-{side}"));
    let _ = std::fs::create_dir_all(root.join("logs"));
    let r = root.display();
    let www = lab.dir.join("www").display().to_string();
    let conf = format!(
        "user root; daemon off; {procs} \
         error_log {r}/logs/error.log; pid {r}/nginx.pid; \
         events {{ worker_connections 1024; }} \
         http {{ access_log off; sendfile on; server {{ listen 8080; root {www}; }} }}"
    );
    let conf_path = root.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let (conf_s, prefix) = (
        conf_path.to_str().unwrap_or_default().to_string(),
        root.to_str().unwrap_or_default().to_string(),
    );
    let args = ["nginx", "-c", conf_s.as_str(), "-p", prefix.as_str()];
    let counts = root.join("syscalls.txt");
    let (mut server, host, ns) = if let Some(b) = stack {
        (
            spawn(count_syscalls(lab.stack(b, &args), &counts))?,
            STACK_IP,
            &lab.a,
        )
    } else {
        let mut c = lab.b.command("nginx");
        c.args(&args[1..]);
        (spawn(count_syscalls(c, &counts))?, B_IP, &lab.b)
    };
    let result = (|| {
        wait_port(&lab.a, host, 8080, Some(&mut server))?;
        // One answered request: the workers serve (in stack mode, a connection the master
        // queued before its workers re-homed the listener is reset when its queue detaches).
        let probe = format!(
            "import socket\n\
             c = socket.create_connection(('{host}', 8080), timeout=2)\n\
             c.sendall(b'GET /page HTTP/1.0\\r\\n\\r\\n')\n\
             assert c.recv(100).startswith(b'HTTP/1.1 200')\n"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !lab
            .a
            .command("python3")
            .args(["-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            if Instant::now() > deadline {
                return Err("nginx answered no request".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = lab
            .a
            .command("wrk")
            .args([
                "-t2",
                "-c50",
                &format!("-d{secs}s"),
                &format!("http://{host}:8080/page"),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("Non-2xx") {
            return Err(format!("wrk saw errors: {text}"));
        }
        let rate = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("wrk said: {text}"))?;
        // "N requests in Ts, ..."
        let reqs = text
            .lines()
            .find_map(|l| l.trim().split_once(" requests in"))
            .and_then(|(v, _)| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        Ok((rate, reqs))
    })();
    let _ = ns
        .command("nginx")
        .args(["-s", "quit", "-c", conf_s.as_str(), "-p", prefix.as_str()])
        .output();
    // The stack side's launcher removes its TAP once nginx is gone: wait for it. The server's
    // CPU time is what its reaping adds to the children's (wrk and the quit are reaped).
    let c0 = children_cpu();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && server.0 .0.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu = children_cpu() - c0;
    let (rate, reqs) = result?;
    // Frames and kicks per request (curl's request in the report too: negligible).
    let (frames, kicks) = stack.map_or((0.0, 0.0), |b| lab.frames(b));
    Ok((
        rate,
        frames / reqs,
        kicks / reqs,
        cpu * 1e6 / reqs,
        syscalls_counted(&counts) / reqs,
    ))
}

/// The backends `SHIM_STACK_BACKEND` asks for (default `tap`; `all`: every one).
fn backends() -> Result<Vec<&'static str>, String> {
    const ALL: [&str; 3] = ["tap", "af_packet", "af_xdp"];
    // Also accepted: `tap-nodefer`, `af_packet-nodefer` (deferred transmit off: a same-run
    // baseline for it).
    // `tap-norehome`: nginx's workers through the master's stack (the control channel), the
    // baseline of re-homed listeners.
    // `tap-1q`: a single-queue TAP device (made by the bench), against the launcher's
    // multi-queue one.
    const MORE: [&str; 10] = [
        "tap-nodefer",
        "af_packet-nodefer",
        "af_xdp-nodefer",
        "tap-old",
        "af_packet-old",
        "af_xdp-old",
        "tap-norehome",
        "tap-1q",
        "tap-txdedup",
        "tap-notxthread",
    ];
    let v = std::env::var("SHIM_STACK_BACKEND").unwrap_or_else(|_| "tap".into());
    if v.trim() == "all" {
        return Ok(ALL.to_vec());
    }
    let mut out = Vec::new();
    for w in v.split(',').map(str::trim) {
        match ALL.iter().chain(&MORE).find(|b| **b == w) {
            Some(b) if !out.contains(b) => out.push(*b),
            Some(_) => {}
            None => {
                return Err(format!(
                    "SHIM_STACK_BACKEND: unknown backend {w:?} (tap, af_packet, af_xdp, all; NAME-nodefer, NAME-old, tap-norehome, tap-1q, tap-txdedup, tap-notxthread)"
                ))
            }
        }
    }
    Ok(out)
}

/// `rounds` rounds of `one` on the kernel and on each backend (the order rotating each
/// round); the results: the kernel's, then each backend's.
fn rounds_of<T>(
    what: &str,
    rounds: u64,
    backends: &[&str],
    mut one: impl FnMut(Option<&str>) -> Result<T, String>,
) -> (Vec<Option<T>>, Vec<Vec<Option<T>>>) {
    let sides: Vec<Option<&str>> = std::iter::once(None)
        .chain(backends.iter().map(|b| Some(*b)))
        .collect();
    let mut out: Vec<Vec<Option<T>>> = sides.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds as usize {
        for j in 0..sides.len() {
            let i = (r + j) % sides.len();
            out[i].push(None);
            match one(sides[i]) {
                Ok(v) => out[i][r] = Some(v),
                Err(e) => eprintln!(
                    "shim_stack: {what} round ({}): {e}",
                    sides[i].unwrap_or("kernel")
                ),
            }
        }
    }
    let kernel = out.remove(0);
    (kernel, out)
}

/// The rounds that gave a result.
fn done<T: Copy>(v: &[Option<T>]) -> Vec<T> {
    v.iter().flatten().copied().collect()
}

/// The median of the per-round ratios stack / kernel of figure `f` over the rounds where both
/// gave one (each round runs both sides back to back, so the host's drift over a run, which
/// moves both, cancels), with their range.
fn paired<T>(s: &[Option<T>], k: &[Option<T>], f: impl Fn(&T) -> f64) -> String {
    let mut r: Vec<f64> = s
        .iter()
        .zip(k)
        .filter_map(|(a, b)| Some(f(a.as_ref()?) / f(b.as_ref()?)))
        .filter(|x| x.is_finite())
        .collect();
    if r.is_empty() {
        return "paired -".into();
    }
    let (lo, hi) = hicamp_benches::range(&r);
    format!("paired {:.3} ({lo:.3}-{hi:.3})", median(&mut r))
}

fn main() {
    if run_mode() != RunMode::Measure && run_mode() != RunMode::Quick {
        return;
    }
    if testkit::require(netns_supported(), "root and iproute2") {
        return;
    }
    let backends = match backends() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("shim_stack: {e}");
            std::process::exit(2);
        }
    };
    let hicamp = match hicamp_with_shim() {
        Ok(h) => h,
        Err(e) => {
            testkit::skip(format_args!("shim_stack: {e}"));
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("hicamp-stack-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(dir.join("www"));
    let lab = match Lab::new(hicamp, dir.clone()) {
        Ok(l) => l,
        Err(e) => {
            testkit::skip(format_args!("shim_stack: lab: {e}"));
            return;
        }
    };
    let rounds = env_u64("HICAMP_STACK_BENCH_ROUNDS", 3);
    let n = env_u64("HICAMP_STACK_BENCH_REQUESTS", 50_000);
    println!(
        "shim_stack: {rounds} rounds of the kernel and {} in rotating order; medians, ratio stack/kernel",
        backends.join(", ")
    );

    if wanted("redis")
        && !testkit::require_program("redis-benchmark", "--version")
        && !testkit::require_program("redis-server", "--version")
    {
        let idle = env_u64("HICAMP_STACK_BENCH_IDLE", 0);
        if idle > 0 {
            println!("shim_stack: redis with {idle} more connections open and idle");
        }
        let (ko, pero) = rounds_of("redis", rounds, &backends, |b| redis_round(&lab, b, n));
        let k = done(&ko);
        let names = ["GET -P 1", "SET -P 1", "GET -P 16", "SET -P 16"];
        for (b, so) in backends.iter().zip(&pero) {
            let s = &done(so);
            for (i, name) in names.iter().enumerate() {
                let ms = median(&mut s.iter().map(|v| v[i]).collect::<Vec<_>>());
                let mk = median(&mut k.iter().map(|v| v[i]).collect::<Vec<_>>());
                println!(
                    "redis {name:<10} (50 conns)  {b:<9} {ms:>10.0} req/s  kernel {mk:>10.0} req/s  ratio {:.3}  {}",
                    ms / mk,
                    paired(so, &ko, |v| v[i])
                );
            }
            let ms = median(&mut s.iter().map(|v| v[4]).collect::<Vec<_>>());
            let mk = median(&mut k.iter().map(|v| v[4]).collect::<Vec<_>>());
            println!(
                "redis server CPU per request (all four runs)  {b:<9} {ms:>6.2} us  kernel {mk:>6.2} us  ratio {:.3}",
                ms / mk
            );
            let f = median(&mut s.iter().map(|v| v[5]).collect::<Vec<_>>());
            let kk = median(&mut s.iter().map(|v| v[6]).collect::<Vec<_>>());
            println!(
                "redis stack TX per request (all four runs)    {b:<9} {f:>6.3} frames  {kk:>6.3} kicks"
            );
            // Both ends share this machine's cores: where both are busy, the rate follows
            // the CPU the two spend per request together, the load generator's included.
            for (p, i) in [(1, 7), (16, 9)] {
                let m = |v: &[[f64; 11]], j: usize| {
                    median(&mut v.iter().map(|x| x[j]).collect::<Vec<_>>())
                };
                let (ss, sc) = (m(s, i), m(s, i + 1));
                let (ks, kc) = (m(&k, i), m(&k, i + 1));
                println!(
                    "redis -P {p:<2} CPU per request  {b:<9} server {ss:>5.2} us + load generator {sc:>5.2} us = {:>5.2} us  kernel {ks:>5.2} + {kc:>5.2} = {:>5.2} us",
                    ss + sc,
                    ks + kc
                );
            }
        }
    }

    // nginx -v and wrk -v print their versions (wrk exits 1): there if they start.
    let starts = |p: &str| Command::new(p).arg("-v").output().map(drop);
    if (wanted("nginx") || wanted("nginx1") || wanted("nginx2"))
        && !testkit::require(starts("nginx"), "nginx")
        && !testkit::require(starts("wrk"), "wrk")
    {
        let page: Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect();
        if std::fs::write(dir.join("www/page"), page).is_ok() {
            let secs = env_u64("HICAMP_STACK_BENCH_SECS", 5);
            // `nginx1`/`nginx2` in HICAMP_STACK_BENCH_ONLY: only the one-process or the
            // 2-worker nginx.
            let which = |w: bool| {
                let only = std::env::var("HICAMP_STACK_BENCH_ONLY").unwrap_or_default();
                let (one, two) = (
                    only.split(',').any(|x| x.trim() == "nginx1"),
                    only.split(',').any(|x| x.trim() == "nginx2"),
                );
                (!one && !two) || (w && two) || (!w && one)
            };
            for workers in [true, false].into_iter().filter(|w| which(*w)) {
                let (ko, pero) = rounds_of("nginx", rounds, &backends, |b| {
                    nginx_round(&lab, b, secs, workers)
                });
                let k = done(&ko);
                let mk = median(&mut k.iter().map(|v| v.0).collect::<Vec<_>>());
                let ck = median(&mut k.iter().map(|v| v.3).collect::<Vec<_>>());
                let sk = median(&mut k.iter().map(|v| v.4).collect::<Vec<_>>());
                let what = if workers {
                    "nginx 2 workers"
                } else {
                    "nginx 1 process"
                };
                for (b, so) in backends.iter().zip(&pero) {
                    let s = done(so);
                    let ms = median(&mut s.iter().map(|v| v.0).collect::<Vec<_>>());
                    let f = median(&mut s.iter().map(|v| v.1).collect::<Vec<_>>());
                    let kk = median(&mut s.iter().map(|v| v.2).collect::<Vec<_>>());
                    let cs = median(&mut s.iter().map(|v| v.3).collect::<Vec<_>>());
                    let ss = median(&mut s.iter().map(|v| v.4).collect::<Vec<_>>());
                    println!(
                        "{what} + wrk (50 conns, 4 KiB)  {b:<12} {ms:>10.0} req/s  kernel {mk:>10.0} req/s  ratio {:.3}  {}  {f:.3} frames/req  {kk:.3} kicks/req",
                        ms / mk,
                        paired(so, &ko, |v| v.0)
                    );
                    println!(
                        "{what} server per request          {b:<12} {cs:>6.1} us CPU {ss:>5.1} syscalls  kernel {ck:>6.1} us CPU {sk:>5.1} syscalls"
                    );
                }
            }
        }
    }

    if wanted("curl")
        && !testkit::require_program("curl", "--version")
        && !testkit::require_program("python3", "--version")
    {
        let blob: Vec<u8> = (0..64u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        if std::fs::write(dir.join("www/blob"), blob).is_ok() {
            let srv = lab
                .a
                .command("python3")
                .args([
                    "-m",
                    "http.server",
                    "8000",
                    "--bind",
                    "0.0.0.0",
                    "--directory",
                ])
                .arg(dir.join("www"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map(Reaper);
            if let Ok(_srv) = srv {
                let _ = wait_port(&lab.a, "127.0.0.1", 8000, None);
                let (ko, pero) = rounds_of("curl", rounds, &backends, |b| curl_round(&lab, b));
                let k = done(&ko);
                let per: Vec<Vec<_>> = pero.iter().map(|s| done(s)).collect();
                let mk = median(&mut k.iter().map(|v| v.0).collect::<Vec<_>>());
                let mko = median(&mut k.iter().map(|v| v.1).collect::<Vec<_>>());
                for (b, s) in backends.iter().zip(&per) {
                    let ms = median(&mut s.iter().map(|v| v.0).collect::<Vec<_>>());
                    let mso = median(&mut s.iter().map(|v| v.1).collect::<Vec<_>>());
                    println!(
                        "curl 64 MiB download        {b:<9} {ms:>10.1} MB/s   kernel {mk:>10.1} MB/s   ratio {:.3}",
                        ms / mk
                    );
                    println!(
                        "  transfer (curl's clock)   {b:<9} {mso:>10.1} MB/s   kernel {mko:>10.1} MB/s   ratio {:.3}",
                        mso / mko
                    );
                }
            }
        }
    }
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(server_log());
}
