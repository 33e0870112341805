//! `sendfile` in stack mode (`hicamp run --mode stack`): from a regular file into a stack TCP
//! socket the file's bytes reach segments with one copy, the kernel's `pread` into the
//! stack's line slots, so the report counts none of them at the socket API
//! (`api_copy_in_bytes`) or below it, and the offset semantics are the kernel's.
//!
//! Needs root, iproute2, python3 and curl (`scripts/setup`): without them a test prints
//! "skipped: ..." and passes, except under `CI=true` or `HICAMP_REQUIRE_ALL=1`
//! (`testkit::require`). Each test makes its own namespace and TAP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nicdma::tap::{netns_supported, NetNs};
use serde_json::Value;

const HICAMP: &str = env!("CARGO_BIN_EXE_hicamp");

fn shim() -> &'static Path {
    testkit::shim_beside(HICAMP, env!("CARGO"), env!("CARGO_MANIFEST_DIR"))
}

#[track_caller]
fn missing(programs: &[&str]) -> bool {
    testkit::require(netns_supported(), "root and iproute2")
        || programs
            .iter()
            .any(|p| testkit::require_program(p, "--version"))
}

/// A namespace the test makes, and a directory for its files.
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

    /// `hicamp run --mode stack` on TAP `tap`, the stack at `net.2`, the kernel at `net.1`.
    fn stack(&self, tap: &str, net: &str, report: &str, args: &[&str]) -> Command {
        let mut c = self.ns.command(HICAMP);
        c.args([
            "run",
            "--mode",
            "stack",
            "--backend",
            &format!("tap:{tap}"),
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
}

/// Kills and reaps a child on drop.
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

    /// Kills it; its output.
    fn kill(mut self) -> Output {
        let mut c = self.0.take().expect("child");
        let _ = c.kill();
        c.wait_with_output().expect("output")
    }

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

/// Waits until `ip:port` accepts a kernel connection (the probe sends nothing).
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

/// An HTTP server that answers each request with a header (`sendall`: the one counted
/// copy) and a file body through `os.sendfile`, in the mode the path names:
/// `/blocking` (offset argument), `/position` (offset None: the file position moves and
/// must end at the file's end), `/nonblocking` (offset argument on a non-blocking socket:
/// `EAGAIN` while the send buffer is full, the offset moving only by what was queued). It
/// checks the kernel's offset semantics as it goes (and, first, its errors: `EBADF` for a file
/// not open for reading, `EINVAL` for a negative offset), serves `argv[3]` requests and prints
/// the header bytes it sent.
const SERVER: &str = r#"
import errno, os, select, socket, sys
ip, path, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = os.path.getsize(path)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, 8080)); s.listen(8)
served = 0
header_bytes = 0
while served < want:
    c, _ = s.accept()
    req = b""
    while b"\r\n\r\n" not in req:
        d = c.recv(4096)
        if not d:
            break
        req += d
    if not req:
        c.close()
        continue
    mode = req.split(b" ")[1].decode()
    if served == 0:
        # The kernel's errors, nothing sent: a file not open for reading, a negative offset.
        with open(path, "ab") as w:
            try:
                os.sendfile(c.fileno(), w.fileno(), 0, 100)
                raise SystemExit("sendfile from a write-only file succeeded")
            except OSError as e:
                assert e.errno == errno.EBADF, e
        with open(path, "rb") as f:
            try:
                os.sendfile(c.fileno(), f.fileno(), -1, 100)
                raise SystemExit("sendfile at a negative offset succeeded")
            except OSError as e:
                assert e.errno == errno.EINVAL, e
        print("errors ok", flush=True)
    head = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    c.sendall(head)
    header_bytes += len(head)
    with open(path, "rb") as f:
        if mode == "/position":
            f.seek(0)
            sent = 0
            while sent < size:
                n = os.sendfile(c.fileno(), f.fileno(), None, size - sent + 4096)
                assert n > 0, n
                sent += n
                assert f.tell() == sent, (f.tell(), sent)
            assert os.sendfile(c.fileno(), f.fileno(), None, 4096) == 0
        elif mode == "/blocking":
            sent = 0
            while sent < size:
                n = os.sendfile(c.fileno(), f.fileno(), sent, size - sent)
                assert n > 0, n
                sent += n
            assert f.tell() == 0, f.tell()
            assert os.sendfile(c.fileno(), f.fileno(), size, 4096) == 0
        else:
            c.setblocking(False)
            sent = 0
            eagain = 0
            while sent < size:
                try:
                    n = os.sendfile(c.fileno(), f.fileno(), sent, size - sent)
                    assert n > 0, n
                    sent += n
                except BlockingIOError:
                    eagain += 1
                    select.select([], [c], [], 10)
            c.setblocking(True)
            print("eagain", eagain, flush=True)
    c.shutdown(socket.SHUT_WR)
    while c.recv(4096):
        pass
    c.close()
    served += 1
print("header_bytes", header_bytes, flush=True)
"#;

#[test]
fn sendfile_serves_64_mib_to_curl_with_no_byte_copied_by_the_shim() {
    if missing(&["curl", "python3"]) {
        return;
    }
    let lab = Lab::new();
    let mut rng = testkit::Rng::new(0x5e4d);
    // Repeated and zero lines among random ones, and a tail that is not line-aligned.
    let block = rng.bytes(1 << 20);
    let mut data = Vec::with_capacity(64 << 20);
    for k in 0..64 {
        match k % 4 {
            0 => data.extend_from_slice(&block),
            1 => data.extend(std::iter::repeat_n(0u8, 1 << 20)),
            _ => data.extend(rng.bytes(1 << 20)),
        }
    }
    data.truncate((64 << 20) - 37);
    let file = lab.path("blob");
    std::fs::write(&file, &data).unwrap();
    let modes = ["/blocking", "/position", "/nonblocking"];
    let srv = Reaper::spawn(lab.stack(
        "tsendf0",
        "10.121.0",
        "sendfile.json",
        &[
            "python3",
            "-c",
            SERVER,
            "10.121.0.2",
            file.to_str().unwrap(),
            &modes.len().to_string(),
        ],
    ));
    wait_port(&lab, "10.121.0.2", 8080);
    for mode in modes {
        let got = lab.path("got");
        // The non-blocking server meets a full send buffer often behind a slow reader.
        let rate: &[&str] = if mode == "/nonblocking" {
            &["--limit-rate", "64M"]
        } else {
            &[]
        };
        let out = lab
            .kernel("curl", rate)
            .args([
                "-sS",
                "--max-time",
                "120",
                "-o",
                got.to_str().unwrap(),
                &format!("http://10.121.0.2:8080{mode}"),
            ])
            .output()
            .unwrap();
        if !out.status.success() {
            let srv = srv.kill();
            panic!(
                "{mode}: {}\nserver: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&srv.stdout),
                String::from_utf8_lossy(&srv.stderr)
            );
        }
        let body = std::fs::read(&got).unwrap();
        assert_eq!(body.len(), data.len(), "{mode}");
        assert!(body == data, "{mode}: the body differs");
    }
    let out = srv.finish(60);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let header_bytes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("header_bytes "))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    eprintln!("{text}");
    assert!(text.contains("errors ok"), "{text}");
    let eagain: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("eagain "))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    assert!(
        eagain > 0,
        "the non-blocking sender never met a full buffer: {text}"
    );
    let merged = lab.report("sendfile.json");
    let stacks = merged["stack"].as_array().expect("stack reports");
    assert_eq!(stacks.len(), 1, "{merged}");
    let r = &stacks[0];
    let bodies = data.len() as u64 * modes.len() as u64;
    assert_eq!(n(&r["totals"]["sendfile_bytes"]), bodies, "{r}");
    assert_eq!(n(&r["totals"]["sent_bytes"]), bodies + header_bytes, "{r}");
    // The headers are the only bytes copied at the socket API: the bodies' one copy was the
    // kernel's pread into line slots.
    assert_eq!(n(&r["totals"]["api_copy_in_bytes"]), header_bytes, "{r}");
    assert_eq!(n(&r["payload_bytes_copied_below_socket_api"]), 0, "{r}");
}
