//! Stack mode over AF_PACKET: `hicamp run --mode stack --backend af_packet:NAME` makes the
//! veth pair NAME <-> NAME-k inside a namespace each test creates (NAME: the stack's end, no
//! kernel address; NAME-k: the kernel's, `--host-ip`), and real applications run over it with
//! exact byte totals; the launcher's errors for this backend come before the command runs.
//!
//! Needs root, iproute2, ethtool and the applications (`scripts/setup`): without them a test
//! prints "skipped: ..." and passes, except under `CI=true` or `HICAMP_REQUIRE_ALL=1`, where
//! it fails (`testkit::require`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nicdma::tap::{netns_supported, NetNs};
use serde_json::Value;

const HICAMP: &str = env!("CARGO_BIN_EXE_hicamp");

/// Builds the shim next to the `hicamp` binary under test (once per test binary).
fn shim() -> &'static Path {
    testkit::shim_beside(HICAMP, env!("CARGO"), env!("CARGO_MANIFEST_DIR"))
}

/// True (the test returns) when root, iproute2, ethtool or one of `programs` is missing.
#[track_caller]
fn missing(programs: &[&str]) -> bool {
    testkit::require(netns_supported(), "root and iproute2")
        || testkit::require_program("ethtool", "--version")
        || programs
            .iter()
            .any(|p| testkit::require_program(p, "--version"))
}

struct Lab {
    ns: NetNs,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        shim();
        Lab {
            ns: NetNs::create().expect("create a namespace"),
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `hicamp run --mode stack --backend af_packet:DEV` with the stack at `net.2` and the
    /// kernel (on `DEV-k`) at `net.1`, inside the namespace.
    fn stack(&self, dev: &str, net: &str, report: &str, args: &[&str]) -> Command {
        let mut c = self.ns.command(HICAMP);
        c.args([
            "run",
            "--mode",
            "stack",
            "--backend",
            &format!("af_packet:{dev}"),
            "--ip",
            &format!("{net}.2/24"),
            "--host-ip",
            &format!("{net}.1/24"),
            "--report",
        ])
        .arg(self.path(report))
        .arg("--")
        .args(args);
        c
    }

    fn kernel(&self, program: &str, args: &[&str]) -> Command {
        let mut c = self.ns.command(program);
        c.args(args);
        c
    }

    fn report(&self, name: &str) -> Value {
        let p = self.path(name);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
    }

    /// Whether interface `dev` exists in the namespace.
    fn has_link(&self, dev: &str) -> bool {
        self.ns
            .ip(&["-o", "link", "show", "dev", dev])
            .is_ok_and(|s| !s.trim().is_empty())
    }
}

/// Kills and reaps a child on drop: no process outlives a failed test.
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Reaper {
    fn spawn(mut c: Command) -> Reaper {
        Reaper(Some(
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn"),
        ))
    }

    /// Waits at most `secs` for the end; the output.
    fn finish(mut self, secs: u64) -> Output {
        let mut c = self.0.take().expect("child");
        let deadline = Instant::now() + Duration::from_secs(secs);
        while c.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                let out = c.wait_with_output().expect("output");
                panic!(
                    "did not end within {secs} s:\n{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        c.wait_with_output().expect("output")
    }
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `ip:port` accepts a kernel connection from inside the namespace.
fn wait_port(lab: &Lab, ip: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let probe =
        format!("import socket; socket.create_connection(('{ip}', {port}), timeout=1).close()");
    while Instant::now() < deadline {
        if lab
            .kernel("python3", &["-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {ip}:{port}");
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The one stack report of a run (its process used the stack).
fn stack_report(merged: &Value) -> &Value {
    let s = merged["stack"].as_array().expect("stack reports");
    assert_eq!(s.len(), 1, "one process used the stack: {merged}");
    &s[0]
}

/// The kernel's `Tcp: OutRsts` in the lab's namespace.
fn kernel_out_rsts(lab: &Lab) -> u64 {
    let out = lab.kernel("cat", &["/proc/net/snmp"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(k, _)| *k == "OutRsts")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no Tcp OutRsts in {text}"))
}

fn redis_stat(lab: &Lab, host: &str, key: &str) -> u64 {
    let out = lab
        .kernel("redis-cli", &["-h", host, "info", "stats"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[test]
fn redis_server_over_af_packet_serves_the_kernels_redis_benchmark() {
    if missing(&["redis-server", "redis-benchmark", "redis-cli", "python3"]) {
        return;
    }
    let lab = Lab::new();
    let srv = Reaper::spawn(lab.stack(
        "pred0",
        "10.94.0",
        "redis.json",
        &[
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
        ],
    ));
    wait_port(&lab, "10.94.0.2", 6379);
    // The launcher's link: no kernel address on the stack's end, the host's on the peer.
    let own = lab
        .ns
        .ip(&["-o", "-4", "addr", "show", "dev", "pred0"])
        .unwrap();
    assert!(own.trim().is_empty(), "pred0 has kernel addresses: {own}");
    let peer = lab
        .ns
        .ip(&["-o", "-4", "addr", "show", "dev", "pred0-k"])
        .unwrap();
    assert!(peer.contains("10.94.0.1/24"), "{peer}");
    // ARP: the kernel learned the stack's address at the stack's end's MAC.
    let mac = lab.ns.ip(&["-o", "link", "show", "dev", "pred0"]).unwrap();
    let neigh = lab.ns.ip(&["neigh", "show", "10.94.0.2"]).unwrap();
    let mac = mac
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("pred0's MAC")
        .to_owned();
    assert!(neigh.contains(&mac), "neighbour {neigh:?}, pred0 is {mac}");
    // A port nothing listens on: refused by the stack's RST, never by the kernel (which sees
    // the SYN on pred0 too, and must not take it for its own).
    let rsts0 = kernel_out_rsts(&lab);
    let probe = "import socket\ntry:\n    socket.create_connection(('10.94.0.2', 6380), timeout=5)\n    print('connected')\nexcept ConnectionRefusedError:\n    print('refused')\n";
    let out = lab.kernel("python3", &["-c", probe]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused");
    assert_eq!(kernel_out_rsts(&lab), rsts0, "the kernel sent RSTs");
    for pipeline in ["1", "16"] {
        let out = lab
            .kernel(
                "redis-benchmark",
                &[
                    "-h",
                    "10.94.0.2",
                    "-t",
                    "get,set",
                    "-n",
                    "20000",
                    "-c",
                    "50",
                    "-P",
                    pipeline,
                    "-q",
                ],
            )
            .output()
            .unwrap();
        assert_ok(&out);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("SET: ") && text.contains("GET: "),
            "-P {pipeline}: {text}"
        );
    }
    let commands = redis_stat(&lab, "10.94.0.2", "total_commands_processed");
    assert!(commands >= 80_000, "{commands} commands");
    let input = redis_stat(&lab, "10.94.0.2", "total_net_input_bytes");
    let _ = lab
        .kernel("redis-cli", &["-h", "10.94.0.2", "shutdown", "nosave"])
        .output();
    let out = srv.finish(30);
    assert_ok(&out);
    assert!(!lab.has_link("pred0"), "the launcher left its veth pair");
    let merged = lab.report("redis.json");
    let r = stack_report(&merged);
    let received = n(&r["totals"]["received_bytes"]);
    // redis counts its input up to the INFO that asked; the SHUTDOWN came after it.
    assert!(
        received >= input && received - input < 200,
        "stack received {received} B, redis counted {input} B"
    );
    assert_eq!(n(&r["payload_bytes_copied_below_socket_api"]), 0, "{r}");
}

#[test]
fn curl_downloads_64_mib_byte_exactly_over_af_packet() {
    if missing(&["curl", "python3"]) {
        return;
    }
    let lab = Lab::new();
    let mut rng = testkit::Rng::new(65);
    let data = rng.bytes(64 << 20);
    std::fs::create_dir(lab.path("www")).unwrap();
    std::fs::write(lab.path("www/blob"), &data).unwrap();
    let srv = Reaper::spawn(lab.kernel(
        "python3",
        &[
            "-m",
            "http.server",
            "8000",
            "--bind",
            "0.0.0.0",
            "--directory",
            lab.path("www").to_str().unwrap(),
        ],
    ));
    wait_port(&lab, "127.0.0.1", 8000);
    let out_file = lab.path("got");
    let headers = lab.path("headers");
    let out = lab
        .stack(
            "pcurl0",
            "10.95.0",
            "curl.json",
            &[
                "curl",
                "-sS",
                "--max-time",
                "120",
                "-D",
                headers.to_str().unwrap(),
                "-o",
                out_file.to_str().unwrap(),
                "http://10.95.0.1:8000/blob",
            ],
        )
        .output()
        .unwrap();
    drop(srv);
    assert_ok(&out);
    assert!(!lab.has_link("pcurl0"), "the launcher left its veth pair");
    let got = std::fs::read(&out_file).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the download differs");
    let merged = lab.report("curl.json");
    let r = stack_report(&merged);
    let head_len = std::fs::metadata(&headers).unwrap().len();
    assert_eq!(
        n(&r["totals"]["received_bytes"]),
        data.len() as u64 + head_len,
        "received bytes: the body and the headers, exactly"
    );
    assert_eq!(n(&r["payload_bytes_copied_below_socket_api"]), 0, "{r}");
}

/// Runs the launcher with `args` (and `--ip 10.93.0.2/24` unless given) in the lab's
/// namespace (as `user` when given); it must fail with `want` in its message, the command must
/// not run and no link may be left behind.
#[track_caller]
fn refused(lab: &Lab, user: Option<&str>, args: &[&str], want: &str) {
    let marker = lab.path("ran");
    let before = lab.ns.ip(&["-o", "link", "show"]).unwrap();
    let mut c = match user {
        Some(u) => {
            let mut c = lab.ns.command("setpriv");
            c.args([
                &format!("--reuid={u}"),
                &format!("--regid={u}"),
                "--clear-groups",
                HICAMP,
            ]);
            c
        }
        None => lab.ns.command(HICAMP),
    };
    c.args(["run", "--mode", "stack"]).args(args);
    if !args.contains(&"--ip") {
        c.args(["--ip", "10.93.0.2/24"]);
    }
    let out = c
        .args(["--", "touch", marker.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(err.contains(want), "{args:?}: {err}");
    assert!(!marker.exists(), "{args:?}: the command ran");
    let after = lab.ns.ip(&["-o", "link", "show"]).unwrap();
    let names = |s: &str| -> Vec<String> {
        s.lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
            .collect()
    };
    assert_eq!(names(&before), names(&after), "{args:?} left links");
}

#[test]
fn launcher_refuses_bad_af_packet_settings_before_the_command_runs() {
    if missing(&["setpriv"]) {
        return;
    }
    let lab = Lab::new();
    for name in ["", "abcdefghijklmn", "a/b", "a b", ".."] {
        refused(
            &lab,
            None,
            &["--backend", &format!("af_packet:{name}")],
            "bad interface name",
        );
    }
    refused(
        &lab,
        None,
        &["--backend", "af_xdp:abcdefghijklmn"],
        "bad interface name",
    );
    // Without root: neither packet sockets nor a veth pair.
    refused(
        &lab,
        Some("65534"),
        &["--backend", "af_packet:pbad0"],
        "need root",
    );
    // The kernel owns the stack's address: it would answer the stack's traffic.
    lab.ns
        .ip(&["addr", "add", "10.93.0.2/32", "dev", "lo"])
        .unwrap();
    refused(
        &lab,
        None,
        &["--backend", "af_packet:pbad0"],
        "the kernel's own address",
    );
    // An existing interface with a kernel address, and one without a peer for --host-ip.
    lab.ns
        .ip(&[
            "link", "add", "pdum0", "type", "veth", "peer", "name", "pdx0",
        ])
        .unwrap();
    lab.ns
        .ip(&["addr", "add", "10.92.0.1/24", "dev", "pdum0"])
        .unwrap();
    refused(
        &lab,
        None,
        &["--backend", "af_packet:pdum0", "--ip", "10.92.0.2/24"],
        "has kernel IPv4 addresses",
    );
    lab.ns
        .ip(&[
            "link", "add", "pdum1", "type", "veth", "peer", "name", "pdx1",
        ])
        .unwrap();
    refused(
        &lab,
        None,
        &[
            "--backend",
            "af_packet:pdum1",
            "--ip",
            "10.91.0.2/24",
            "--host-ip",
            "10.91.0.1/24",
        ],
        "no peer named pdum1-k",
    );
    // A backend that does not work on the interface: AF_XDP on a queue the veth does not
    // have (the launcher reports the backend's error).
    refused(
        &lab,
        None,
        &["--backend", "af_xdp:pdum1:7", "--ip", "10.91.0.2/24"],
        "does not work here",
    );
}
