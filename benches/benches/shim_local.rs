//! The shim's local mode against kernel TCP loopback, same run, real processes:
//!
//! - **stream**: 64 KiB writes one way over one connection (std `TcpStream` in two processes of
//!   this bench binary), GB/s from the first write to the receiver's one-byte ack;
//! - **ping-pong**: 14-byte messages echoed, round-trip time;
//! - **redis**: redis-benchmark SET and GET (50 connections, 100-byte values) against
//!   redis-server, requests/s;
//! - **nginx**: wrk (1 thread, 50 connections, a 4 KiB file) against nginx (one process),
//!   requests/s.
//!
//! Each workload runs alternately with every process under the shim in local mode
//! (`LD_PRELOAD`, `HICAMP_SHIM_MODE=local`, a memory of this run under /dev/shm) and with no
//! shim; each line prints the medians and the ratio local/kernel with the issue's target.
//!
//! ```sh
//! cargo bench -p hicamp-benches --bench shim_local               # 5 rounds
//! cargo bench -p hicamp-benches --bench shim_local -- --quick    # 3 short rounds
//! cargo bench -p hicamp-benches --bench shim_local -- --no-apps  # stream and ping-pong only
//! ```
//!
//! A missing redis or nginx/wrk skips that workload with a message. Under `cargo test
//! --benches` one short round of the stream and ping-pong runs (data checked, nothing timed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hicamp_benches::apps::Reaper;
use hicamp_benches::median;
use std::time::{Duration, Instant};

const MSG: usize = 64 * 1024;
const PING: usize = 14;

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

/// The shim of this build's profile (built first).
fn shim() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("ws");
    testkit::build_shim(env!("CARGO"), workspace, dir)
}

/// How a process runs: under the shim in local mode (with this memory), or plain.
#[derive(Clone)]
struct Mode {
    local: Option<(PathBuf, PathBuf)>,
}

impl Mode {
    fn apply(&self, c: &mut Command) {
        if let Some((so, mem)) = &self.local {
            c.env("LD_PRELOAD", so)
                .env("HICAMP_SHIM_MODE", "local")
                .env("HICAMP_LOCAL_MEMORY", mem)
                .env("HICAMP_SHIM_REPORT", format!("{}.report", mem.display()));
        } else {
            c.env_remove("LD_PRELOAD");
        }
    }
}

// --- the bench binary's own peers -------------------------------------------

fn child(role: &str) {
    match role {
        "server" => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            println!("{}", l.local_addr().unwrap().port());
            std::io::stdout().flush().unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let echo = var("PEER_ECHO") == "1";
            let total: u64 = var("PEER_TOTAL").parse().unwrap_or(0);
            let mut buf = vec![0u8; MSG];
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got += n as u64;
                if echo {
                    s.write_all(&buf[..n]).unwrap();
                } else if got == total {
                    s.write_all(b"k").unwrap();
                }
            }
        }
        "client" => {
            let mut s =
                TcpStream::connect(("127.0.0.1", var("PEER_PORT").parse().unwrap())).unwrap();
            s.set_nodelay(true).unwrap();
            let r = if var("PEER_ECHO") == "1" {
                let rounds: u64 = var("PEER_ROUNDS").parse().unwrap();
                let mut msg = [0u8; PING];
                let mut back = [0u8; PING];
                let t0 = Instant::now();
                for i in 0..rounds {
                    msg[..8].copy_from_slice(&i.to_le_bytes());
                    s.write_all(&msg).unwrap();
                    s.read_exact(&mut back).unwrap();
                    assert_eq!(back, msg);
                }
                t0.elapsed().as_nanos() as f64 / rounds as f64
            } else {
                let total: u64 = var("PEER_TOTAL").parse().unwrap();
                let data = hicamp_benches::random_bytes(64 << 20, 0x10ca1);
                let t0 = Instant::now();
                let (mut sent, mut off) = (0u64, 0usize);
                while sent < total {
                    if off + MSG > data.len() {
                        off = 0;
                    }
                    s.write_all(&data[off..off + MSG]).unwrap();
                    off += MSG;
                    sent += MSG as u64;
                }
                let mut k = [0u8; 1];
                s.read_exact(&mut k).unwrap();
                assert_eq!(&k, b"k");
                total as f64 / t0.elapsed().as_secs_f64()
            };
            println!("{r}");
        }
        r => panic!("unknown role {r}"),
    }
}

/// One sample: a server and a client of this binary in `mode`; the client's figure.
fn pair(mode: &Mode, echo: bool, total: u64, rounds: u64) -> f64 {
    let exe = std::env::current_exe().unwrap();
    let mut sc = Command::new(&exe);
    sc.env("LOCAL_PEER", "server")
        .env("PEER_ECHO", if echo { "1" } else { "0" })
        .env("PEER_TOTAL", total.to_string())
        .stdout(Stdio::piped());
    mode.apply(&mut sc);
    let mut srv = Reaper(sc.spawn().expect("server"));
    let mut port = String::new();
    BufReader::new(srv.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let mut cc = Command::new(&exe);
    cc.env("LOCAL_PEER", "client")
        .env("PEER_PORT", port.trim())
        .env("PEER_ECHO", if echo { "1" } else { "0" })
        .env("PEER_TOTAL", total.to_string())
        .env("PEER_ROUNDS", rounds.to_string());
    mode.apply(&mut cc);
    let out = cc.output().expect("client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = srv.0.wait();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when `p` runs (whatever its status: `wrk -v` exits with 1).
fn have(p: &str, arg: &str) -> bool {
    let ok = Command::new(p)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        println!("shim_local: {p} missing: its workload is skipped");
    }
    ok
}

/// redis-benchmark SET and GET requests/s.
fn redis(mode: &Mode, n: u64) -> (f64, f64) {
    let port = free_port();
    let mut sc = Command::new("redis-server");
    sc.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ])
    .args(["--appendonly", "no", "--protected-mode", "no"])
    .stdout(Stdio::null());
    mode.apply(&mut sc);
    let _srv = Reaper(sc.spawn().expect("redis-server"));
    wait_port(port);
    let mut bc = Command::new("redis-benchmark");
    bc.args(["-p", &port.to_string(), "-n", &n.to_string(), "-c", "50"])
        .args(["-d", "100", "-t", "set,get", "--csv"]);
    mode.apply(&mut bc);
    let out = bc.output().expect("redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = |t: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("\"{t}\"")))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|v| v.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no {t} in {text}"))
    };
    (rps("SET"), rps("GET"))
}

/// wrk requests/s against one nginx process serving a 4 KiB file.
fn nginx(mode: &Mode, dir: &Path, secs: u64) -> f64 {
    let port = free_port();
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), vec![b'h'; 4096]).unwrap();
    let conf = dir.join(format!("nginx.{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.{port}.pid;\n\
             error_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; server {{ listen 127.0.0.1:{port}; root {r};\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
             uwsgi_temp_path {d}; scgi_temp_path {d}; }} }}\n",
            d = dir.display(),
            r = root.display()
        ),
    )
    .unwrap();
    let mut sc = Command::new("nginx");
    sc.arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stderr(Stdio::null());
    mode.apply(&mut sc);
    let _srv = Reaper(sc.spawn().expect("nginx"));
    wait_port(port);
    let mut wc = Command::new("wrk");
    wc.args(["-t1", "-c50", &format!("-d{secs}s")])
        .arg(format!("http://127.0.0.1:{port}/"));
    mode.apply(&mut wc);
    let out = wc.output().expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "{text}");
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in {text}"))
}

fn line(what: &str, unit: &str, k: f64, l: f64, target: &str, met: bool) {
    println!(
        "  {what:<28} kernel {k:>10.2} {unit:<5} local {l:>10.2} {unit:<5} ratio {:5.2}x ; target {target}: {}",
        l / k,
        if met { "met" } else { "NOT met" }
    );
}

fn main() {
    let role = var("LOCAL_PEER");
    if !role.is_empty() {
        child(&role);
        return;
    }
    let measuring = std::env::args().any(|a| a == "--bench");
    let quick = std::env::args().any(|a| a == "--quick");
    let so = shim();
    let dir = tempfile_dir();
    let mem = PathBuf::from(format!(
        "/dev/shm/hicamp-shim-local-bench.{}",
        std::process::id()
    ));
    let local = Mode {
        local: Some((so, mem.clone())),
    };
    let kernel = Mode { local: None };
    let (rounds, stream, pings, reqs, secs) = match (measuring, quick) {
        (false, _) => (1, 8u64 << 20, 200u64, 0u64, 0u64),
        (true, true) => (3, 256 << 20, 5000, 20_000, 3),
        (true, false) => (5, 1 << 30, 20_000, 100_000, 5),
    };
    // `--no-apps`: the stream and the ping-pong only (no redis, no nginx).
    let apps = measuring && !std::env::args().any(|a| a == "--no-apps");
    let do_redis =
        apps && have("redis-server", "--version") && have("redis-benchmark", "--version");
    let do_nginx = apps && have("nginx", "-v") && have("wrk", "-v");
    let load_before = loadavg();
    let mut r: [Vec<f64>; 10] = Default::default();
    for i in 0..rounds {
        let order = if i % 2 == 0 {
            [&kernel, &local]
        } else {
            [&local, &kernel]
        };
        for m in order {
            let k = usize::from(m.local.is_some());
            r[k].push(pair(m, false, stream, 0));
            r[2 + k].push(pair(m, true, 0, pings));
            if do_redis {
                let (s, g) = redis(m, reqs);
                r[4 + k].push(s);
                r[6 + k].push(g);
            }
            if do_nginx {
                r[8 + k].push(nginx(m, &dir, secs));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Ok(m) = hicamp::shared::SharedMemory::open(&mem) {
        let c = m.check().expect("check");
        assert!(c.is_clean(), "{c:?}");
    }
    let _ = std::fs::remove_file(&mem);
    for e in std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!(
            "hicamp-shim-local-bench.{}.report",
            std::process::id()
        )) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if !measuring {
        println!("shim_local: test mode, stream and ping-pong checked");
        return;
    }
    let m = |i: usize| median(&mut r[i].clone());
    println!(
        "shim_local: local mode against kernel TCP loopback, medians of {rounds} rounds \
         (load average {load_before} before, {} after)",
        loadavg()
    );
    let (ks, ls) = (m(0) / 1e9, m(1) / 1e9);
    line(
        "stream 64 KiB writes",
        "GB/s",
        ks,
        ls,
        ">= 2x",
        ls / ks >= 2.0,
    );
    let (kp, lp) = (m(2) / 1e3, m(3) / 1e3);
    line(
        "ping-pong 14 B round trip",
        "us",
        kp,
        lp,
        "<= 0.5x",
        lp / kp <= 0.5,
    );
    if do_redis {
        let (ks, ls, kg, lg) = (m(4), m(5), m(6), m(7));
        line("redis SET", "req/s", ks, ls, ">= 1.5x", ls / ks >= 1.5);
        line("redis GET", "req/s", kg, lg, ">= 1.5x", lg / kg >= 1.5);
    }
    if do_nginx {
        let (k, l) = (m(8), m(9));
        line("nginx + wrk 4 KiB", "req/s", k, l, "(none)", true);
    }
}

/// The 1-minute load average (`/proc/loadavg`), or `?`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("hicamp-shim-local-bench.{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
