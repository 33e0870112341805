//! phttpd on segstack over TAP, with the kernel's own clients in a namespace
//! the test creates: `curl` downloads a 64 MiB object byte-exactly, the RPC
//! and WAL requests answer as PASTE's do, and `wrk` (when installed) runs
//! against it.
//!
//! Needs root, iproute2 and curl (scripts/setup installs them); without them
//! the tests print "skipped: ..." and pass, except under `CI=true` or
//! `HICAMP_REQUIRE_ALL=1`, where they fail (`testkit::skip`).

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hicamp::{Config, Memory};
use hicamp_examples::phttpd::{object, Limits, Phttpd, PhttpdStats, RESPONSE_LEN};
use nicdma::tap::{netns_supported, NetNs, TapPort};
use nicdma::Port;
use segstack::iface::{IfaceConfig, IfaceStats, Interface};

/// True (the test returns) when root and iproute2 are missing.
#[track_caller]
fn skip() -> bool {
    testkit::require(netns_supported(), "root and iproute2")
}

/// Runs phttpd on a TAP device whose kernel side is 10.80.k.1 in a fresh
/// namespace, on a thread, until `stop`; returns the namespace and the
/// server thread (which hands back its statistics).
fn serve(
    k: u8,
    object_len: usize,
    stop: Arc<AtomicBool>,
) -> (
    NetNs,
    Ipv4Addr,
    std::thread::JoinHandle<(PhttpdStats, IfaceStats)>,
) {
    serve_with(k, object_len, 1 << 16, false, Limits::default(), stop)
}

/// [`serve`] with a map of `map_capacity` entries, WAL records logged in
/// it (`log_to_map`), and request limits.
fn serve_with(
    k: u8,
    object_len: usize,
    map_capacity: u32,
    log_to_map: bool,
    limits: Limits,
    stop: Arc<AtomicBool>,
) -> (
    NetNs,
    Ipv4Addr,
    std::thread::JoinHandle<(PhttpdStats, IfaceStats)>,
) {
    let port = TapPort::open("").expect("TAP");
    let ns = NetNs::create().expect("namespace");
    let dev = port.name().to_owned();
    ns.adopt(&dev, Some(&format!("10.80.{k}.1/24")))
        .expect("adopt");
    let ip = Ipv4Addr::new(10, 80, k, 2);
    let h = std::thread::spawn(move || {
        let mem = Memory::new(Config {
            capacity_lines: 1 << 22,
            map_capacity,
            ..Config::default()
        })
        .unwrap();
        let mut iface =
            Interface::new(&mem, port, IfaceConfig::new([2, 0, 0, 0x80, 0, 2], ip, 24)).unwrap();
        let mut server = Phttpd::new(&mut iface, 80, object_len, log_to_map).unwrap();
        server.set_limits(limits);
        let t0 = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let now = t0.elapsed().as_nanos() as u64;
            server.poll(&mut iface, now).unwrap();
            let wait = iface.poll_at().map_or(Duration::from_millis(2), |t| {
                Duration::from_nanos(t.saturating_sub(now)).min(Duration::from_millis(2))
            });
            iface.nic().port().wait_readable(wait).unwrap();
        }
        (*server.stats(), *iface.stats())
    });
    (ns, ip, h)
}

/// Runs `cmd` to its end, its output captured; asserts that it exited 0.
#[track_caller]
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn curl_downloads_64_mib_byte_exactly_and_rpc_wal_answer() {
    if skip() || testkit::require_program("curl", "--version") {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let len = 64 << 20;
    let (ns, ip, server) = serve(1, len, Arc::clone(&stop));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("obj");
    run(ns
        .command("curl")
        .args(["-sS", "--max-time", "60", "-o"])
        .arg(&file)
        .arg(format!("http://{ip}/obj/{len}")));
    let got = std::fs::read(&file).unwrap();
    assert_eq!(got.len(), len);
    assert!(got == object(len), "downloaded object differs");

    // RPC: the 151-byte response (curl -i prints header and body).
    let out = run(ns
        .command("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .arg(format!("http://{ip}/")));
    assert_eq!(
        out.stdout.len(),
        RESPONSE_LEN,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // WAL: a 1 KiB POST is logged and answered.
    run(ns
        .command("curl")
        .args(["-sS", "--max-time", "10", "-H", "Expect:", "--data-binary"])
        .arg(format!("@{}", write_body(&dir)))
        .arg(format!("http://{ip}/log")));
    stop.store(true, Ordering::SeqCst);
    let (stats, istats) = server.join().unwrap();
    assert!(stats.gets >= 2 && stats.posts >= 1, "{stats:?}");
    assert_eq!(stats.wal_bytes, 1024);
    // The object's HTTP header is its own small segment, so TCP segments cut
    // at MSS multiples of the stream start mid-line in the object: the stack
    // copies at most the partial first line of each frame, nothing else.
    assert!(
        istats.tx_payload_copied < istats.tx_frames * 64,
        "{istats:?}"
    );
    assert!(
        istats.tx_payload_shared > istats.tx_payload_bytes / 100 * 99,
        "{istats:?}"
    );
}

fn write_body(dir: &tempfile::TempDir) -> String {
    let p = dir.path().join("body");
    std::fs::write(&p, vec![b'w'; 1024]).unwrap();
    p.display().to_string()
}

#[test]
fn wrk_runs_against_phttpd() {
    // `wrk -v` prints its version but exits 1: it is there if it starts.
    let wrk = Command::new("wrk").arg("-v").output().map(drop);
    if skip() || testkit::require(wrk, "wrk") {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ns, ip, server) = serve(2, 4096, Arc::clone(&stop));
    let out = run(ns
        .command("wrk")
        .args(["-t", "1", "-c", "20", "-d", "2"])
        .arg(format!("http://{ip}/")));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    stop.store(true, Ordering::SeqCst);
    let (stats, _) = server.join().unwrap();
    assert!(text.contains("Requests/sec"), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    assert!(stats.requests > 100, "{stats:?}\n{text}");
    eprintln!("{text}");
}

/// `curl`'s status code for a request (its exit status is not looked at:
/// the server may close while curl still sends).
fn curl_status(ns: &NetNs, args: &[&str], url: &str) -> String {
    let out = ns
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn kernel_client_gets_413_for_an_oversized_body_and_the_server_serves_on() {
    if skip() || testkit::require_program("curl", "--version") {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let limits = Limits {
        max_body: 1 << 20,
        ..Limits::default()
    };
    let (ns, ip, server) = serve_with(3, 4096, 1 << 16, false, limits, Arc::clone(&stop));
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'b'; 4 << 20]).unwrap();
    let url = format!("http://{ip}/log");
    // A body over the limit (4 MiB > 1 MiB): 413, the body is not read.
    let code = curl_status(
        &ns,
        &[
            "-H",
            "Expect:",
            "--data-binary",
            &format!("@{}", big.display()),
        ],
        &url,
    );
    assert_eq!(code, "413");
    // A declared length far over it, as the hostile probe sent.
    let code = curl_status(
        &ns,
        &[
            "-H",
            "Expect:",
            "-H",
            "Content-Length: 99999999999",
            "--data-binary",
            "abc",
        ],
        &url,
    );
    assert_eq!(code, "413");
    // The server serves on.
    assert_eq!(curl_status(&ns, &[], &format!("http://{ip}/")), "200");
    let body = write_body(&dir);
    let code = curl_status(
        &ns,
        &["-H", "Expect:", "--data-binary", &format!("@{body}")],
        &url,
    );
    assert_eq!(code, "200");
    stop.store(true, Ordering::SeqCst);
    let (stats, _) = server.join().unwrap();
    assert_eq!(stats.too_large, 2, "{stats:?}");
}

#[test]
fn kernel_client_gets_507_from_a_full_map_and_the_server_serves_on() {
    if skip() || testkit::require_program("curl", "--version") {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    // The directory (entry 0), the rings (2 x 1024) and three WAL records.
    let (ns, ip, server) = serve_with(
        4,
        4096,
        1 + 2048 + 3,
        true,
        Limits::default(),
        Arc::clone(&stop),
    );
    let dir = tempfile::tempdir().unwrap();
    let body = write_body(&dir);
    let url = format!("http://{ip}/log");
    let codes: Vec<String> = (0..6)
        .map(|_| {
            curl_status(
                &ns,
                &["-H", "Expect:", "--data-binary", &format!("@{body}")],
                &url,
            )
        })
        .collect();
    assert_eq!(codes, ["200", "200", "200", "507", "507", "507"]);
    assert_eq!(curl_status(&ns, &[], &format!("http://{ip}/")), "200");
    stop.store(true, Ordering::SeqCst);
    let (stats, _) = server.join().unwrap();
    assert_eq!(stats.storage_full, 3, "{stats:?}");
}

/// Namespaces `ip netns list` shows.
fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn sigint_and_sigterm_remove_the_namespace() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    if skip() || testkit::require_program("kill", "-l") {
        return;
    }
    for sig in ["INT", "TERM"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_phttpd"))
            .args(["--tap", "--port", "8080", "--object", "4096"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // "phttpd: serving on ... (device D in namespace NS)"
        let ns = line
            .trim_end()
            .trim_end_matches(')')
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string();
        assert!(line.contains("serving"), "{line}");
        assert!(netns_list().contains(&ns), "{ns} not created");
        let kill = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = child.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert!(status.success(), "SIG{sig}: {status:?}\n{rest}");
        assert!(rest.contains("interrupted"), "{rest}");
        assert!(
            !netns_list().split_whitespace().any(|w| w == ns),
            "SIG{sig}: namespace {ns} left behind"
        );
    }
}
