//! The rig of the stack-mode application tests (`shim_stack.rs`, `shim_stack_af_packet.rs`):
//! a namespace per test, the launcher run inside it on a backend, kernel programs beside it,
//! and the checks the tests share.
#![allow(dead_code)] // each test file uses its own part of the rig

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nicdma::tap::{netns_supported, NetNs};
use serde_json::Value;

pub const HICAMP: &str = env!("CARGO_BIN_EXE_hicamp");

/// Builds the shim next to the `hicamp` binary under test (once per test binary).
pub fn shim() -> &'static Path {
    testkit::shim_beside(HICAMP, env!("CARGO"), env!("CARGO_MANIFEST_DIR"))
}

/// True (the test returns) when root, iproute2 or one of `programs` is missing.
#[track_caller]
pub fn missing(programs: &[&str]) -> bool {
    testkit::require(netns_supported(), "root and iproute2")
        || programs
            .iter()
            .any(|p| testkit::require_program(p, "--version"))
}

/// A namespace with one or more TAP links the launcher makes: link `k` is `10.9k.n.0/24`
/// with the kernel at `.1` and the stack at `.2`.
pub struct Lab {
    pub ns: NetNs,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        shim();
        Lab {
            ns: NetNs::create().expect("create a namespace"),
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `hicamp run --mode stack` on TAP `tap` with the stack at `net.2` and the kernel at
    /// `net.1`, inside the namespace.
    pub fn stack(&self, tap: &str, net: &str, report: &str, args: &[&str]) -> Command {
        self.stack_with(tap, net, report, &[], args)
    }

    /// [`Lab::stack`] with more launcher options (`--gateway ...`).
    pub fn stack_with(
        &self,
        tap: &str,
        net: &str,
        report: &str,
        more: &[&str],
        args: &[&str],
    ) -> Command {
        self.stack_on(&format!("tap:{tap}"), net, report, more, args)
    }

    /// `hicamp run --mode stack --backend BACKEND` (`tap:NAME`, `af_packet:NAME`, ...) with
    /// the stack at `net.2`, the kernel at `net.1` and more launcher options, inside the
    /// namespace.
    pub fn stack_on(
        &self,
        backend: &str,
        net: &str,
        report: &str,
        more: &[&str],
        args: &[&str],
    ) -> Command {
        let mut c = self.ns.command(HICAMP);
        c.args([
            "run",
            "--mode",
            "stack",
            "--backend",
            backend,
            "--ip",
            &format!("{net}.2/24"),
            "--host-ip",
            &format!("{net}.1/24"),
            "--report",
        ])
        .arg(self.path(report))
        .args(more)
        .arg("--")
        .args(args);
        c
    }

    /// A kernel program in the namespace.
    pub fn kernel(&self, program: &str, args: &[&str]) -> Command {
        let mut c = self.ns.command(program);
        c.args(args);
        c
    }

    pub fn report(&self, name: &str) -> Value {
        let p = self.path(name);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
    }

    /// Whether interface `dev` exists in the namespace.
    pub fn has_link(&self, dev: &str) -> bool {
        self.ns
            .ip(&["-o", "link", "show", "dev", dev])
            .is_ok_and(|s| !s.trim().is_empty())
    }
}

/// Kills and reaps a child on drop: no process outlives a failed test.
pub struct Reaper(pub Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Reaper {
    pub fn spawn(mut c: Command) -> Reaper {
        Reaper(Some(
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn"),
        ))
    }

    /// Kills it; its output.
    pub fn kill(mut self) -> Output {
        let mut c = self.0.take().expect("child");
        let _ = c.kill();
        c.wait_with_output().expect("output")
    }

    /// Waits at most `secs` for the end; the output.
    pub fn finish(mut self, secs: u64) -> Output {
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
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`assert_ok`], and the program printed `marker` (both streams shown when it did not).
#[track_caller]
pub fn assert_printed(out: &Output, marker: &str) {
    assert_ok(out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(marker),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kernel's curl gets `page` byte-exactly from the nginx on `ip`, wrk (`threads`,
/// `conns`, 2 s) gets no error, then `nginx -s quit` with nginx's `conf` and `prefix`.
pub fn serve_page_then_quit(
    lab: &Lab,
    ip: &str,
    page: &[u8],
    threads: &str,
    conns: &str,
    conf: &str,
    prefix: &str,
) {
    let url = format!("http://{ip}:8080/page");
    let got = lab.path("got");
    let out = lab
        .kernel(
            "curl",
            &["-sS", "--max-time", "30", "-o", got.to_str().unwrap(), &url],
        )
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(std::fs::read(&got).unwrap() == page, "the page differs");
    let out = lab
        .kernel("wrk", &[threads, conns, "-d2s", &url])
        .output()
        .unwrap();
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Requests/sec"), "{text}");
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "{text}"
    );
    let quit = lab
        .kernel("nginx", &["-s", "quit", "-c", conf, "-p", prefix])
        .output()
        .unwrap();
    assert_ok(&quit);
}

/// Waits until `ip:port` accepts a kernel connection from inside the namespace.
pub fn wait_port(lab: &Lab, ip: &str, port: u16) {
    // Timeout 3 s, past the kernel's first SYN retransmission (1 s): a probe whose first
    // SYN found no stack yet then connects once, instead of giving up at the very moment
    // the retransmitted SYN is answered and leaving the server a connection it counts (a
    // thread-per-connection test once saw 10 connections served where 9 were made).
    let probe =
        format!("import socket; socket.create_connection(('{ip}', {port}), timeout=3).close()");
    if !probe_until(lab, &probe) {
        panic!("nothing listens on {ip}:{port}");
    }
}

/// Runs the python program `probe` in the kernel's namespace every 100 ms until it exits 0
/// (true) or 30 s passed (false).
fn probe_until(lab: &Lab, probe: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if lab
            .kernel("python3", &["-c", probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Waits until a server forked workers that re-homed its listener: a request (`request`,
/// on `ip:port`) is answered (`expect` in the reply). Connections the stack process queued
/// before its children re-homed the listener are reset when its queue detaches; one answered
/// request means a worker serves from a stack of its own and the stack process's queue is
/// detached.
pub fn wait_served(lab: &Lab, ip: &str, port: u16, request: &str, expect: &str) {
    let probe = format!(
        "import socket, sys\n\
         c = socket.create_connection(('{ip}', {port}), timeout=2)\n\
         c.sendall({request:?}.encode())\n\
         got = b''\n\
         while True:\n    d = c.recv(65536)\n    got += d\n    \
         if not d or {expect:?}.encode() in got: break\n\
         sys.exit(0 if {expect:?}.encode() in got else 1)\n"
    );
    if !probe_until(lab, &probe) {
        panic!("no answer from {ip}:{port}");
    }
}

pub fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The one stack report of a run (its process used the stack).
pub fn stack_report(merged: &Value) -> &Value {
    let s = merged["stack"].as_array().expect("stack reports");
    assert_eq!(s.len(), 1, "one process used the stack: {merged}");
    &s[0]
}

/// `redis-cli INFO stats` field.
pub fn redis_stat(lab: &Lab, host: &str, key: &str) -> u64 {
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
