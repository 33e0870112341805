//! phttpd over the AF_XDP and AF_PACKET backends (`phttpd --backend
//! af_xdp:p0 --ip ...`), with the kernel's own clients on the other end of a
//! veth pair in a namespace each test makes and removes:
//!
//! - the kernel's `ping` is answered (by segstack);
//! - `curl` downloads 64 MiB byte-exactly, and uploads 16 MiB (the server
//!   answers with the digest of what it received, checked here);
//! - 100 concurrent connections each get their response;
//! - after the server is SIGKILLed, no XDP program stays on the interface.
//!
//! Needs root, iproute2, ethtool, ping and curl (scripts/setup installs
//! them); without them the tests say "skipped: ..." (and fail under CI).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hicamp::{Config, Memory, Piece};
use hicamp_examples::phttpd::{object, rpc_request, RESPONSE_LEN};
use nicdma::tap::{netns_supported, NetNs};

fn skip() -> bool {
    testkit::require(netns_supported(), "root and iproute2")
        || testkit::require_program("ethtool", "--version")
        || testkit::require_program("ping", "-V")
        || testkit::require_program("curl", "--version")
}

/// A namespace with a veth pair (`k0`: the kernel, 10.82.<k>.1/24, offloads
/// off; `p0`: phttpd's) and phttpd serving 10.82.<k>.2 on `p0` through
/// `backend`; the server is killed (SIGKILL) on drop.
struct Lab {
    server: Child,
    ns: NetNs,
    ip: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn lab(k: u8, backend: &str) -> Lab {
    lab_with(k, backend, false)
}

/// [`lab`]; with `peer_csum`, the kernel's end keeps its checksum offload
/// (segmentation stays off): its frames arrive with partial checksums.
fn lab_with(k: u8, backend: &str, peer_csum: bool) -> Lab {
    lab_mtu(k, backend, peer_csum, 1500)
}

/// [`lab_with`] with both veth ends at `mtu`.
fn lab_mtu(k: u8, backend: &str, peer_csum: bool, mtu: u32) -> Lab {
    let ns = NetNs::create().expect("namespace");
    ns.veth_pair("k0", "p0", &format!("10.82.{k}.1/24"), !peer_csum)
        .expect("veth pair");
    if mtu != 1500 {
        for dev in ["k0", "p0"] {
            ns.ip(&["link", "set", "dev", dev, "mtu", &mtu.to_string()])
                .expect("mtu");
        }
    }
    if peer_csum {
        run(ns
            .command("ethtool")
            .args(["-K", "k0", "tso", "off", "gso", "off"]));
    }
    let ip = format!("10.82.{k}.2");
    let mut server = ns
        .command(env!("CARGO_BIN_EXE_phttpd"))
        .args([
            "--backend",
            &format!("{backend}:p0"),
            "--ip",
            &format!("{ip}/24"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn phttpd");
    // Wait for "serving" (or its exit with an error).
    let out = server.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        let mut told = false;
        for l in lines.by_ref().map_while(Result::ok) {
            eprintln!("[phttpd] {l}");
            if !told && l.contains("serving") {
                told = true;
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = server.kill();
        let mut err = String::new();
        if let Some(mut e) = server.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!("phttpd --backend {backend}:p0 did not start: {err}");
    }
    Lab { server, ns, ip }
}

#[track_caller]
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn xdp_attached(ns: &NetNs) -> bool {
    let link = ns.ip(&["link", "show", "dev", "p0"]).expect("ip link show");
    link.contains("xdp")
}

/// Downloads 64 MiB (byte-exact) and uploads 16 MiB (digest-exact).
fn download_and_upload(lab: &Lab) {
    let ip = &lab.ip;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("obj");
    let len = 64 << 20;
    run(lab
        .ns
        .command("curl")
        .args(["-sS", "--max-time", "120", "-o"])
        .arg(&file)
        .arg(format!("http://{ip}/obj/{len}")));
    let got = std::fs::read(&file).unwrap();
    assert_eq!(got.len(), len);
    assert!(got == object(len), "downloaded object differs");
    drop(got);

    // 16 MiB upload: the answer is the digest of the segment received.
    let body: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let up = dir.path().join("up");
    std::fs::write(&up, &body).unwrap();
    let out = run(lab
        .ns
        .command("curl")
        .args(["-sS", "--max-time", "120", "-H", "Expect:", "--data-binary"])
        .arg(format!("@{}", up.display()))
        .arg(format!("http://{ip}/upload")));
    let mem = Memory::new(Config::default()).unwrap();
    let (seg, _) = mem.splice(&[Piece::Bytes(&body)]).unwrap();
    let want: String = seg.digest().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        want,
        "uploaded bytes differ"
    );
}

/// The whole sequence for one backend.
fn exercise(k: u8, backend: &str) {
    let mut lab = lab(k, backend);
    let ip = lab.ip.clone();
    if backend == "af_xdp" {
        assert!(xdp_attached(&lab.ns), "the redirect program is attached");
    }

    // ping
    let out = run(lab
        .ns
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", &ip]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 3 received"), "{text}");

    download_and_upload(&lab);

    // 100 concurrent connections: all open at once, then each gets its answer.
    let addr: SocketAddrV4 = format!("{ip}:80").parse().unwrap();
    let done = lab
        .ns
        .run_in(move || {
            let mut conns: Vec<TcpStream> = (0..100)
                .map(|_| {
                    let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(10))
                        .expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    s
                })
                .collect();
            for c in &mut conns {
                c.write_all(&rpc_request()).expect("send");
            }
            let mut ok = 0;
            for c in &mut conns {
                let mut buf = vec![0u8; RESPONSE_LEN];
                c.read_exact(&mut buf).expect("response");
                if buf.starts_with(b"HTTP/1.1 200") {
                    ok += 1;
                }
            }
            ok
        })
        .expect("enter namespace");
    assert_eq!(done, 100);

    // SIGKILL: nothing stays attached.
    lab.server.kill().expect("SIGKILL");
    lab.server.wait().expect("wait");
    assert!(!xdp_attached(&lab.ns), "an XDP program outlived the server");
}

#[test]
fn phttpd_over_af_packet() {
    if skip() {
        return;
    }
    exercise(1, "af_packet");
}

#[test]
fn phttpd_over_af_xdp() {
    if skip() {
        return;
    }
    exercise(2, "af_xdp");
}

/// At MTU 64000 the AF_XDP port sends and receives multi-buffer frames
/// (one 64000-byte frame in 16-17 UMEM frames); the download and the upload
/// stay byte-exact.
#[test]
fn phttpd_over_af_xdp_with_jumbo_frames() {
    if skip() {
        return;
    }
    let lab = lab_mtu(4, "af_xdp", false, 64_000);
    assert!(xdp_attached(&lab.ns), "the redirect program is attached");
    download_and_upload(&lab);
}

#[test]
fn backend_choice_errors_are_clear_and_backends_are_listed() {
    let phttpd = env!("CARGO_BIN_EXE_phttpd");
    let out = Command::new(phttpd)
        .args(["--backend", "netmap:vale0:0", "--ip", "10.0.0.2/24"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    if !std::path::Path::new("/dev/netmap").exists() {
        assert!(
            err.contains("netmap: /dev/netmap not found; backends that work here: sim"),
            "{err}"
        );
    }
    let out = Command::new(phttpd)
        .args(["--backend", "pcap:eth0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("af_xdp:IFACE[:QUEUE]"), "{err}");
    let out = Command::new(phttpd)
        .args(["--backend", "af_packet:lo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --ip"));

    let out = Command::new(env!("CARGO_BIN_EXE_hicamp"))
        .arg("backends")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        ["sim", "tap", "af_packet", "af_xdp", "netmap"],
        "{text}"
    );
    assert!(
        text.lines().next().unwrap().ends_with("works here"),
        "{text}"
    );
}

/// AF_PACKET also takes frames whose checksums the kernel left partial
/// (passed on as `F_NEEDS_CSUM`, and coalesced).
#[test]
fn phttpd_over_af_packet_with_partial_checksums() {
    if skip() {
        return;
    }
    let lab = lab_with(3, "af_packet", true);
    download_and_upload(&lab);
}
