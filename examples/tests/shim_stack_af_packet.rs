//! Stack mode over AF_PACKET: `hicamp run --mode stack --backend af_packet:NAME` makes the
//! veth pair NAME <-> NAME-k inside a namespace each test creates (NAME: the stack's end, no
//! kernel address; NAME-k: the kernel's, `--host-ip`), and real applications run over it with
//! exact byte totals; the launcher's errors for this backend come before the command runs.
//!
//! Needs root, iproute2, ethtool and the applications (`scripts/setup`): without them a test
//! prints "skipped: ..." and passes, except under `CI=true` or `HICAMP_REQUIRE_ALL=1`, where
//! it fails (`testkit::require`).

mod stacklab;

use std::process::Command;

use stacklab::*;

/// The launcher on `af_packet:DEV` (it makes the veth pair DEV <-> DEV-k).
trait AfPacket {
    fn af_packet(&self, dev: &str, net: &str, report: &str, args: &[&str]) -> Command;
}

impl AfPacket for Lab {
    fn af_packet(&self, dev: &str, net: &str, report: &str, args: &[&str]) -> Command {
        self.stack_on(&format!("af_packet:{dev}"), net, report, &[], args)
    }
}

/// [`stacklab::missing`], and ethtool (this file's doc names it as a prerequisite).
#[track_caller]
fn missing_af(programs: &[&str]) -> bool {
    missing(&[&["ethtool"], programs].concat())
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

#[test]
fn redis_server_over_af_packet_serves_the_kernels_redis_benchmark() {
    if missing_af(&["redis-server", "redis-benchmark", "redis-cli", "python3"]) {
        return;
    }
    let lab = Lab::new();
    let srv = Reaper::spawn(lab.af_packet(
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
    if missing_af(&["curl", "python3"]) {
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
        .af_packet(
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
    if missing_af(&["setpriv"]) {
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
