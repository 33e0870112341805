//! `hicamp run`: run a command under the libc shim and merge the reports of its processes.
//!
//! ```text
//! hicamp run [--report FILE] [--mode trace] [--budget SIZE] -- CMD ARGS...
//! hicamp run --mode stack --backend tap:NAME|af_packet:NAME|af_xdp:NAME[:QUEUE]
//!            --ip ADDR/PREFIX [--gateway ADDR] [--host-ip ADDR/PREFIX] [--report FILE] -- CMD ARGS...
//! hicamp run --mode local [--memory PATH] [--report FILE] -- CMD ARGS...
//! hicamp run --mode trace,local [--memory PATH] [--report FILE] -- CMD ARGS...
//! hicamp run --mode stack,local --backend tap:NAME --ip ADDR/PREFIX [--memory PATH] ... -- CMD
//! ```
//!
//! `trace,local` and `stack,local` run local mode beside the other mode: TCP over loopback
//! between processes under the shim goes through the memory (or falls back to kernel TCP, as
//! in local mode), the rest is traced or served by segstack as in trace or stack mode (stack
//! mode leaves 127.0.0.0/8 to the kernel, which is where local mode takes over).
//!
//! In local mode TCP connections between processes under the shim that attach the same shared
//! memory (`--memory`, default `/dev/shm/hicamp-local.EUID.vN`, created if missing) go through it
//! (see the shim's `local` module); the merged report's `local` lists each connection end's
//! route (and a fallback's reason) and the bytes copied into and out of the memory.
//!
//! In stack mode the command's AF_INET sockets are served by segstack over the backend (see the
//! shim's `stack` module). Before the command starts, the launcher checks the settings and the
//! backend, and for `tap:NAME` creates the device if it is missing (persistent, removed again
//! afterwards), gives the kernel's side `--host-ip` and brings it up; for `af_packet:NAME` and
//! `af_xdp:NAME` it makes a missing NAME as a veth pair NAME <-> `NAME-k` (NAME: the stack's,
//! no kernel address; `NAME-k`: the kernel's, with `--host-ip`; removed afterwards) and checks
//! that the kernel does not own the stack's address; any failure is an error and the command
//! does not run. Each process that used the stack writes
//! `FILE.stack.PID.json`; the merged report lists them under `stack`.
//!
//! `--budget` bounds each traced process's shim memory (`HICAMP_SHIM_BUDGET`, default 256M):
//! past it a process's footprint is estimated by content-defined line sampling, and the
//! summary names the method, the sample rate and the 95% error bound.
//!
//! The launcher sets `LD_PRELOAD` to the shim (`liblibc_shim.so`: `$HICAMP_SHIM`, else next to
//! the `hicamp` binary) and `HICAMP_SHIM_REPORT` to a path prefix, runs the command, and when it
//! ends merges the reports its processes wrote.
//!
//! # Report files
//!
//! Every process that traced a socket (the command, its forked children, the programs they
//! exec) writes its own report when it ends: `FILE.PID.json` and the human summary
//! `FILE.PID.txt` (`FILE.PID.K.json` for the K-th program image of one process, after an
//! exec). The launcher then writes the merged report to `FILE` (JSON): the sums of the byte and
//! call totals, every connection tagged with its process id, every process's report under
//! `processes`, and `line_sizes` summed over the processes (each process interns into its own
//! memories: the sum is what the processes' memories hold together, with no dedup across
//! processes). Only reports carrying this run's id are merged, so old files with the same
//! prefix are never mixed in. Without `--report` the files go to a temporary directory that is
//! removed afterwards. A process still running when the command ends (a daemon, found by the
//! run id in its environment) writes its report later; it is not in the merge, the launcher
//! names it and where its report goes, and keeps a temporary directory for it. A `--report`
//! path that cannot be written is an error before the command runs.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use hicamp::footprint::{human_bytes, line_size_table, ConnReport, LineSizeReport, ShimReport};
use serde::Serialize;

/// `--budget`: `256M`, `1G`, `65536` (binary units), at least 1M.
pub fn parse_budget(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (bytes, or with K, M, G)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("'{s}': unknown unit (K, M or G)")),
    };
    let b = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if b < 1 << 20 {
        return Err(format!("'{s}': the budget must be at least 1M"));
    }
    Ok(b)
}

/// File name of the shim library.
pub const SHIM_FILE: &str = "liblibc_shim.so";

/// What the launcher can fail at.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The shim library was not found.
    #[error(
        "cannot find the libc shim: {0}; build it with `cargo build --release -p libc-shim` \
         (or `cargo build -p libc-shim` for a debug hicamp: the library must sit next to the \
         hicamp binary), or set HICAMP_SHIM=/path/to/{SHIM_FILE}"
    )]
    ShimNotFound(String),
    /// The shim's path cannot go into LD_PRELOAD.
    #[error("the shim's path '{0}' contains a space or a colon, which LD_PRELOAD cannot hold")]
    BadShimPath(PathBuf),
    /// No command was given.
    #[error("no command to run (usage: hicamp run [--report FILE] -- CMD ARGS...)")]
    NoCommand,
    /// The command could not be started.
    #[error("cannot run '{cmd}': {source}")]
    Spawn {
        /// The program.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// Local mode cannot start (its memory).
    #[error("local mode: {0}")]
    Local(String),
    /// Stack mode cannot start (settings, privileges, backend).
    #[error("stack mode: {0}")]
    Stack(String),
    /// A report file or directory could not be used.
    #[error("{what} '{}': {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Finds the shim: `env` (the value of `HICAMP_SHIM`) when set, else next to `exe`.
pub fn find_shim(env: Option<OsString>, exe: &Path) -> Result<PathBuf, RunError> {
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RunError::ShimNotFound(format!(
                "HICAMP_SHIM={} is not a file",
                p.display()
            )))
        };
    }
    let dir = exe.parent().unwrap_or(Path::new("."));
    let p = dir.join(SHIM_FILE);
    if p.is_file() {
        Ok(p)
    } else {
        Err(RunError::ShimNotFound(format!(
            "no {SHIM_FILE} in {} and HICAMP_SHIM is not set",
            dir.display()
        )))
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The shim library.
    pub shim: PathBuf,
    /// Merged report path (per-process reports beside it); `None`: a temporary directory.
    pub report: Option<PathBuf>,
    /// The command and its arguments.
    pub command: Vec<OsString>,
    /// Extra environment for the command (tests, line sizes...).
    pub env: Vec<(OsString, OsString)>,
    /// Stack mode, when given.
    pub stack: Option<StackOptions>,
    /// Local mode, when given: the shared memory's path (created if missing).
    pub local: Option<PathBuf>,
    /// With `local`: trace mode beside it (`trace,local`); ignored with `stack` (`stack,local`).
    pub trace: bool,
}

/// The default memory of local mode (the shim's default too):
/// `/dev/shm/hicamp-local.EUID.vVERSION` (the shared format's version: a memory an older
/// build left does not stand in the way).
pub fn default_local_memory() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let euid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    PathBuf::from(format!(
        "/dev/shm/hicamp-local.{euid}.v{}",
        hicamp::shared::FORMAT_VERSION
    ))
}

/// Local mode: the memory at `path` exists (made with the transport settings if missing) and
/// opens; returns the shim's environment.
fn prepare_local(path: &Path, mode: &str) -> Result<Vec<(OsString, OsString)>, RunError> {
    use hicamp::shared::{SharedMemory, SharedOptions};
    let err = |e: String| RunError::Local(format!("{}: {e}", path.display()));
    if !path.exists() {
        match SharedMemory::create(path, SharedOptions::transport()) {
            Ok(_) => {}
            Err(hicamp::shared::SharedError::Io { .. }) if path.exists() => {}
            Err(e) => return Err(err(e.to_string())),
        }
    }
    SharedMemory::open(path).map_err(|e| err(e.to_string()))?;
    Ok(vec![
        ("HICAMP_SHIM_MODE".into(), mode.into()),
        ("HICAMP_LOCAL_MEMORY".into(), path.as_os_str().to_owned()),
    ])
}

/// The local-mode report lines of run `run_id` beside `prefix` (`PREFIX.local.PID.jsonl`).
pub fn local_reports(prefix: &Path, run_id: &str) -> Vec<serde_json::Value> {
    let dir = prefix.parent().unwrap_or(Path::new("."));
    let stem = prefix
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&format!("{stem}.local.")) && n.ends_with(".jsonl")
            })
        })
        .collect();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if v["run"] == run_id {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// `--mode stack`'s settings, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// `--backend`.
    pub backend: String,
    /// `--ip`.
    pub ip: String,
    /// `--gateway`.
    pub gateway: Option<String>,
    /// `--host-ip`.
    pub host_ip: Option<String>,
}

/// A TAP device or veth pair the launcher made (deleted when the run ends: deleting one end
/// of a veth pair deletes both).
#[derive(Debug)]
struct MadeTap(Option<String>);

impl Drop for MadeTap {
    fn drop(&mut self) {
        if let Some(dev) = &self.0 {
            let _ = Command::new("ip")
                .args(["link", "del", "dev", dev])
                .output();
        }
    }
}

fn ip_cmd(args: &[&str]) -> Result<(), RunError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| RunError::Stack(format!("cannot run `ip {}`: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(RunError::Stack(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `ip ARGS`' standard output (empty when it fails).
fn ip_out(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The name of the kernel's end of the veth pair the launcher makes for `af_packet:NAME` and
/// `af_xdp:NAME`: `NAME-k`.
pub fn veth_peer(name: &str) -> String {
    format!("{name}-k")
}

/// Whether `name` can be an interface name (and, with `-k` appended, its peer's): 1-13 bytes
/// of letters, digits, `_`, `-`, `.`.
fn good_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 13
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Writes a sysctl of one interface (`/proc/sys/net/FAMILY/conf/DEV/KEY`), best effort.
fn dev_sysctl(family: &str, dev: &str, key: &str, value: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/{family}/conf/{dev}/{key}"), value);
}

/// Waits (at most 3 s) until the kernel reports `dev` operational: until then it may drop
/// what it sends through it (its queue is turned on by a deferred work item).
fn wait_up(dev: &str) {
    let path = format!("/sys/class/net/{dev}/operstate");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        match std::fs::read_to_string(&path) {
            Ok(s) if s.trim() == "up" => return,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(_) => return,
        }
    }
}

/// For `af_packet:NAME` and `af_xdp:NAME`: makes the veth pair NAME <-> `NAME-k` when NAME is
/// missing (NAME: no kernel address, no IPv6, no forwarding, no ARP answers; `NAME-k`: the
/// kernel's side, `--host-ip`), or checks an existing NAME; either way the kernel must not own
/// the stack's address (it would answer the stack's traffic on NAME: RSTs, ARP replies).
fn prepare_veth(
    spec: &nicdma::backend::BackendSpec,
    name: &str,
    ip: std::net::Ipv4Addr,
    host: Option<&str>,
    made: &mut MadeTap,
) -> Result<(), RunError> {
    let err = |m: String| RunError::Stack(m);
    if !good_ifname(name) {
        return Err(err(format!(
            "--backend {spec}: bad interface name {name:?} (1-13 letters, digits, '_', '-', '.'; \
             the launcher names the kernel's end of the veth pair {name:?}-k)"
        )));
    }
    if !is_root() {
        return Err(err(format!(
            "--backend {spec}: packet sockets (CAP_NET_RAW) and a veth pair (CAP_NET_ADMIN) \
             need root; run as root"
        )));
    }
    let peer = veth_peer(name);
    let exists = Path::new("/sys/class/net").join(name).exists();
    if !exists {
        if Path::new("/sys/class/net").join(&peer).exists() {
            return Err(err(format!(
                "--backend {spec}: {name} is missing but {peer} (its peer's name) exists"
            )));
        }
        ip_cmd(&[
            "link", "add", "dev", name, "type", "veth", "peer", "name", &peer,
        ])?;
        made.0 = Some(name.to_owned());
        // The stack's end: the kernel keeps no address there, sends nothing from it (IPv6
        // would send router and neighbour solicitations), forwards nothing that arrives on it
        // (the stack's own frames to a third address) and answers no ARP on it.
        let _ = ip_cmd(&["link", "set", "dev", name, "addrgenmode", "none"]);
        dev_sysctl("ipv6", name, "disable_ipv6", "1");
        dev_sysctl("ipv4", name, "forwarding", "0");
        dev_sysctl("ipv4", name, "arp_ignore", "8");
        if let Some(h) = host {
            ip_cmd(&["addr", "replace", h, "dev", &peer])?;
        }
        ip_cmd(&["link", "set", "dev", &peer, "up"])?;
        ip_cmd(&["link", "set", "dev", name, "up"])?;
        wait_up(name);
        wait_up(&peer);
    } else {
        let own = ip_out(&["-o", "-4", "addr", "show", "dev", name]);
        if !own.trim().is_empty() {
            return Err(err(format!(
                "--backend {spec}: {name} has kernel IPv4 addresses; the kernel would answer \
                 the stack's traffic on it (remove them, or name a missing interface and the \
                 launcher makes a veth pair)"
            )));
        }
        if let Some(h) = host {
            if !Path::new("/sys/class/net").join(&peer).exists() {
                return Err(err(format!(
                    "--host-ip: {name} exists and has no peer named {peer}; give the kernel's \
                     side its address yourself"
                )));
            }
            ip_cmd(&["addr", "replace", h, "dev", &peer])?;
            ip_cmd(&["link", "set", "dev", &peer, "up"])?;
        }
        ip_cmd(&["link", "set", "dev", name, "up"])?;
    }
    let all = ip_out(&["-o", "-4", "addr", "show"]);
    let mine = format!(" {ip}/");
    if let Some(line) = all.lines().find(|l| l.contains(&mine)) {
        let dev = line.split_whitespace().nth(1).unwrap_or("?");
        return Err(err(format!(
            "--ip {ip} is the kernel's own address (on {dev}); the kernel would answer the \
             stack's traffic"
        )));
    }
    Ok(())
}

/// Turns segmentation and checksum offloads off on `dev` (the kernel's end of an AF_XDP veth
/// pair): an AF_XDP socket would drop a GSO frame larger than the MTU, and it gets a frame the
/// kernel left with a partial checksum with no word of it (the stack drops it as corrupt).
fn offloads_off(dev: &str) -> Result<(), RunError> {
    let args = ["-K", dev, "tso", "off", "gso", "off", "tx", "off"];
    let out = Command::new("ethtool")
        .args(args)
        .output()
        .map_err(|e| RunError::Stack(format!("cannot run `ethtool {}`: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(RunError::Stack(format!(
            "`ethtool {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Checks the stack settings and prepares the backend; returns the environment for the shim.
fn prepare_stack(o: &StackOptions) -> Result<(Vec<(OsString, OsString)>, MadeTap), RunError> {
    use nicdma::backend::{parse_cidr, BackendSpec};
    let err = |m: String| RunError::Stack(m);
    if o.backend.is_empty() {
        return Err(err(
            "--mode stack needs --backend (tap:NAME, af_packet:IFACE, af_xdp:IFACE)".into(),
        ));
    }
    let spec: BackendSpec = o
        .backend
        .parse()
        .map_err(|e| err(format!("--backend: {e}")))?;
    // The shim reads it when the stack starts: a bad value is refused here, before the
    // command runs, not met by the application as EINVAL.
    if let Ok(v) = std::env::var("HICAMP_TAP_TX_THREAD") {
        nicdma::tap::parse_tx_thread(&v).map_err(|e| err(format!("HICAMP_TAP_TX_THREAD: {e}")))?;
    }
    if spec == BackendSpec::Sim {
        return Err(err(
            "--backend sim: the simulated link has no peer for an application".into(),
        ));
    }
    if o.ip.is_empty() {
        return Err(err("--mode stack needs --ip ADDR/PREFIX".into()));
    }
    let (ip, prefix) = parse_cidr(&o.ip).map_err(|e| err(format!("--ip: {e}")))?;
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Err(err(format!("--ip: {ip} cannot be the stack's address")));
    }
    if let Some(g) = &o.gateway {
        g.parse::<std::net::Ipv4Addr>()
            .map_err(|_| err(format!("--gateway: bad address {g:?}")))?;
    }
    let host = match &o.host_ip {
        Some(h) => {
            let (hip, _) = parse_cidr(h).map_err(|e| err(format!("--host-ip: {e}")))?;
            if hip == ip {
                return Err(err(format!(
                    "--host-ip {hip} is the stack's own address (--ip)"
                )));
            }
            Some(h.clone())
        }
        None => None,
    };
    let mut made = MadeTap(None);
    match &spec {
        BackendSpec::Tap(name) => {
            if name.is_empty() || name.contains('%') {
                return Err(err(
                    "--backend tap:NAME needs a fixed device name (the launcher and the \
                     application must agree on it)"
                        .into(),
                ));
            }
            // SAFETY-free check of privileges: the device needs CAP_NET_ADMIN.
            if !is_root() {
                return Err(err(format!(
                    "--backend {spec}: making and using a TAP device needs root \
                     (CAP_NET_ADMIN); run as root"
                )));
            }
            let exists = Path::new("/sys/class/net").join(name).exists();
            if !exists {
                // Multi-queue: forked children of the application may attach queues of their own
                // (libc-shim's re-homed listeners).
                ip_cmd(&["tuntap", "add", "dev", name, "mode", "tap", "multi_queue"])?;
                made.0 = Some(name.clone());
                let _ = ip_cmd(&["link", "set", "dev", name, "addrgenmode", "none"]);
            }
            if let Some(h) = &host {
                ip_cmd(&["addr", "replace", h, "dev", name])?;
            }
            ip_cmd(&["link", "set", "dev", name, "up"])?;
        }
        BackendSpec::AfPacket(name) | BackendSpec::AfXdp { iface: name, .. } => {
            prepare_veth(&spec, name, ip, host.as_deref(), &mut made)?;
        }
        _ => {
            if host.is_some() {
                return Err(err(format!(
                    "--host-ip applies to tap:NAME, af_packet:NAME and af_xdp:NAME only \
                     ({spec} binds an existing interface)"
                )));
            }
        }
    }
    // The backend must open here (a TAP attached by another process, a missing interface,
    // missing privileges): found out before the command starts. Not for a veth pair made just
    // now for AF_PACKET (as root, nothing else holds it): each packet socket's ring set-up and
    // close waits for an RCU grace period, about 100 ms for the two sockets here.
    let fresh_packet = made.0.is_some() && matches!(spec, BackendSpec::AfPacket(_));
    if !fresh_packet {
        let port = spec
            .open()
            .map_err(|e| err(format!("--backend {spec} does not work here: {e}")))?;
        // The veth pair it made: GSO frames and partial checksums from the kernel's end reach
        // an AF_PACKET ring whole (with virtio headers), but not an AF_XDP socket.
        if let Some(name) = &made.0 {
            if matches!(spec, BackendSpec::AfXdp { .. }) {
                offloads_off(&veth_peer(name))?;
            }
        }
        drop(port);
    }
    let mut env: Vec<(OsString, OsString)> = vec![
        ("HICAMP_SHIM_MODE".into(), "stack".into()),
        ("HICAMP_STACK_BACKEND".into(), spec.to_string().into()),
        ("HICAMP_STACK_IP".into(), format!("{ip}/{prefix}").into()),
    ];
    if let Some(g) = &o.gateway {
        env.push(("HICAMP_STACK_GATEWAY".into(), g.into()));
    }
    Ok((env, made))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// The stack reports of run `run_id` beside `prefix` (`PREFIX.stack.PID.json`).
pub fn stack_reports(prefix: &Path, run_id: &str) -> Vec<serde_json::Value> {
    let dir = prefix.parent().unwrap_or(Path::new("."));
    let stem = format!(
        "{}.stack.",
        prefix
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&stem) || !name.ends_with(".json") {
            continue;
        }
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if v["run_id"].as_str() == Some(run_id) {
            out.push(v);
        }
    }
    out.sort_by_key(|v| v["pid"].as_i64());
    out
}

/// The result of a run.
#[derive(Debug)]
pub struct RunOutcome {
    /// How the command ended.
    pub status: ExitStatus,
    /// The merged report.
    pub merged: MergedReport,
    /// Where the merged JSON was written (with `--report`).
    pub merged_path: Option<PathBuf>,
}

/// One process in the merged report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessSummary {
    /// Process id.
    pub pid: i64,
    /// Command line.
    pub program: String,
    /// Its report file.
    pub file: String,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Bytes received.
    pub received_bytes: u64,
    /// Successful send-side calls.
    pub send_calls: u64,
    /// Successful receive-side calls.
    pub recv_calls: u64,
    /// Connections listed.
    pub connections: u64,
}

/// The merged report of all the processes of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergedReport {
    /// The run id every merged report carries.
    pub run_id: String,
    /// The command.
    pub command: Vec<String>,
    /// Exit code of the command (128 + signal when killed by one).
    pub exit_code: i32,
    /// Sum over processes.
    pub sent_bytes: u64,
    /// Sum over processes.
    pub received_bytes: u64,
    /// Sum over processes.
    pub send_calls: u64,
    /// Sum over processes.
    pub recv_calls: u64,
    /// Sum over processes.
    pub copy_avoided_bytes: u64,
    /// One line per process.
    pub process_summaries: Vec<ProcessSummary>,
    /// Every process's connections, each with a `pid` field.
    pub connections: Vec<ProcessConn>,
    /// Per line size, summed over the processes' memories (no dedup across processes).
    pub line_sizes: Vec<LineSizeReport>,
    /// How `line_sizes` were obtained: `exact (HICAMP memories)` when every process's were,
    /// else the estimate's method (some processes estimated theirs).
    pub dedup_method: String,
    /// Processes whose footprint is an estimate (past their budget).
    pub estimated_processes: u64,
    /// The largest 95% error bound of those estimates (relative).
    pub max_rel_err_95: f64,
    /// The processes' own reports, as written.
    pub processes: Vec<ShimReport>,
    /// Processes of the run still alive when the command ended (daemons): they write their
    /// reports when they end, beside the prefix, after this merge.
    pub still_running: Vec<i32>,
    /// The prefix those late reports go to.
    pub late_reports: Option<String>,
    /// Report files of this run that a process claimed (created) but never wrote: killed while
    /// writing, or unable to write.
    pub unwritten_reports: Vec<String>,
    /// Stack mode: the report of each process that used the stack (`FILE.stack.PID.json`):
    /// totals, copies made at the socket API and below it, every connection with its route
    /// (`stack` or `kernel` and why), the interface's and the port's counters, notes on
    /// options the stack does not honour.
    pub stack: Vec<serde_json::Value>,
    /// Local mode: every decision (`event: route`: role, addresses, `route` local, kernel or
    /// broken, and the fallback's `reason`) and every closed local connection (`event: close`:
    /// bytes copied into the shared memory and out of it), from `FILE.local.PID.jsonl`.
    pub local: Vec<serde_json::Value>,
}

/// One connection of the merged report: the process's [`ConnReport`] and its process id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessConn {
    /// The connection, as its process reported it.
    #[serde(flatten)]
    pub conn: ConnReport,
    /// Its process.
    pub pid: i64,
}

/// Exit code of a status as a shell reports it.
pub fn exit_code(status: &ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Runs the command under the shim and merges the reports.
pub fn run(opts: &RunOptions) -> Result<RunOutcome, RunError> {
    let Some((program, args)) = opts.command.split_first() else {
        return Err(RunError::NoCommand);
    };
    let (mut stack_env, _made_tap) = match &opts.stack {
        Some(o) => prepare_stack(o)?,
        None => (Vec::new(), MadeTap(None)),
    };
    if let Some(mem) = &opts.local {
        let mode = match (&opts.stack, opts.trace) {
            (Some(_), _) => "stack,local",
            (None, true) => "trace,local",
            (None, false) => "local",
        };
        // Later entries win: this mode replaces stack mode's `stack`.
        stack_env.extend(prepare_local(mem, mode)?);
    }
    let shim_str = opts.shim.to_string_lossy();
    if shim_str.contains([' ', ':']) {
        return Err(RunError::BadShimPath(opts.shim.clone()));
    }
    let shim = std::fs::canonicalize(&opts.shim).map_err(|source| RunError::Io {
        what: "cannot resolve the shim",
        path: opts.shim.clone(),
        source,
    })?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let run_id = format!("{}-{nanos}", std::process::id());
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    let (prefix, tempdir) = match &opts.report {
        Some(p) => {
            let p = absolute(p)?;
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|source| RunError::Io {
                    what: "cannot create the report directory",
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            // The merged report must be writable: found out before the command runs, not
            // after (which lost the command's status).
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|source| RunError::Io {
                    what: "cannot write the report",
                    path: p.clone(),
                    source,
                })?;
            (p, None)
        }
        None => {
            let dir = std::env::temp_dir().join(format!("hicamp-run-{run_id}"));
            std::fs::create_dir_all(&dir).map_err(|source| RunError::Io {
                what: "cannot create a temporary directory",
                path: dir.clone(),
                source,
            })?;
            (dir.join("trace"), Some(dir))
        }
    };
    let preload = match std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        Some(old) => {
            let mut v = shim.clone().into_os_string();
            v.push(":");
            v.push(old);
            v
        }
        None => shim.clone().into_os_string(),
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LD_PRELOAD", preload)
        .env("HICAMP_SHIM_MODE", "trace")
        .env("HICAMP_SHIM_REPORT", &prefix)
        .env("HICAMP_SHIM_RUN_ID", &run_id);
    for (k, v) in stack_env.iter().chain(&opts.env) {
        cmd.env(k, v);
    }
    let status = cmd.status().map_err(|source| RunError::Spawn {
        cmd: program.to_string_lossy().into_owned(),
        source,
    });
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            if let Some(d) = &tempdir {
                let _ = std::fs::remove_dir_all(d);
            }
            return Err(e);
        }
    };
    let command = opts
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let merged = merge(&prefix, &run_id, command, exit_code(&status));
    let lingering = still_running(&run_id);
    // A temporary report directory stays while processes of the run live on: they write into it
    // when they end.
    let tempdir = tempdir.filter(|_| lingering.is_empty());
    let result = match merged {
        Ok(mut merged) => {
            if !lingering.is_empty() {
                merged.late_reports = Some(format!("{}.PID.json", prefix.display()));
            }
            merged.still_running = lingering;
            merged.stack = stack_reports(&prefix, &run_id);
            merged.local = local_reports(&prefix, &run_id);
            merged.unwritten_reports = unwritten_reports(&prefix, started);
            let mut merged_path = None;
            if opts.report.is_some() {
                let json = serde_json::to_vec_pretty(&merged).map_err(|e| RunError::Io {
                    what: "cannot encode the merged report",
                    path: prefix.clone(),
                    source: e.into(),
                })?;
                std::fs::write(&prefix, json).map_err(|source| RunError::Io {
                    what: "cannot write the merged report",
                    path: prefix.clone(),
                    source,
                })?;
                merged_path = Some(prefix.clone());
            }
            Ok(RunOutcome {
                status,
                merged,
                merged_path,
            })
        }
        Err(e) => Err(e),
    };
    if let Some(d) = &tempdir {
        let _ = std::fs::remove_dir_all(d);
    }
    result
}

fn absolute(p: &Path) -> Result<PathBuf, RunError> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    std::env::current_dir()
        .map(|d| d.join(p))
        .map_err(|source| RunError::Io {
            what: "cannot find the current directory for",
            path: p.to_path_buf(),
            source,
        })
}

/// The per-process report files of prefix `prefix` (`PREFIX.PID.json`, `PREFIX.PID.K.json`).
pub fn report_files(prefix: &Path) -> Result<Vec<PathBuf>, RunError> {
    let dir = prefix.parent().unwrap_or(Path::new("."));
    let stem = prefix
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rd = std::fs::read_dir(dir).map_err(|source| RunError::Io {
        what: "cannot read the report directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix(&stem)
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|r| r.strip_suffix(".json"))
        else {
            continue;
        };
        if !rest.is_empty()
            && rest
                .split('.')
                .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
        {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Merges the reports of run `run_id` found beside `prefix`.
pub fn merge(
    prefix: &Path,
    run_id: &str,
    command: Vec<String>,
    exit_code: i32,
) -> Result<MergedReport, RunError> {
    let mut processes = Vec::new();
    let mut summaries = Vec::new();
    let mut connections = Vec::new();
    for f in report_files(prefix)? {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let Ok(r) = serde_json::from_slice::<ShimReport>(&bytes) else {
            continue; // empty (being claimed) or foreign
        };
        if r.run_id.as_deref() != Some(run_id) {
            continue;
        }
        let pid = i64::from(r.pid);
        summaries.push(ProcessSummary {
            pid,
            program: r.program.clone(),
            file: f.display().to_string(),
            sent_bytes: r.sent_bytes,
            received_bytes: r.received_bytes,
            send_calls: r.send_calls,
            recv_calls: r.recv_calls,
            // The listing stops at the shim's MAX_CONNS; the omitted ones count too.
            connections: r.connections.len() as u64 + r.connections_omitted,
        });
        connections.extend(r.connections.iter().map(|c| ProcessConn {
            conn: c.clone(),
            pid,
        }));
        processes.push(r);
    }
    let line_sizes = LineSizeReport::sum_by_line_size(processes.iter().flat_map(|p| &p.line_sizes));
    let estimates: Vec<_> = processes
        .iter()
        .filter_map(|p| p.dedup_estimate.as_ref())
        .collect();
    let dedup_method = estimates.first().map_or_else(
        || hicamp::footprint::EXACT_METHOD.to_string(),
        |e| e.method.clone(),
    );
    let sum = |f: fn(&ShimReport) -> u64| processes.iter().map(f).sum::<u64>();
    Ok(MergedReport {
        run_id: run_id.to_string(),
        command,
        exit_code,
        sent_bytes: sum(|p| p.sent_bytes),
        received_bytes: sum(|p| p.received_bytes),
        send_calls: sum(|p| p.send_calls),
        recv_calls: sum(|p| p.recv_calls),
        copy_avoided_bytes: sum(|p| p.copy_avoided_bytes),
        process_summaries: summaries,
        connections,
        line_sizes,
        dedup_method,
        estimated_processes: estimates.len() as u64,
        max_rel_err_95: estimates
            .iter()
            .map(|e| e.max_rel_err_95())
            .fold(0.0, f64::max),
        processes,
        still_running: Vec::new(),
        late_reports: None,
        unwritten_reports: Vec::new(),
        stack: Vec::new(),
        local: Vec::new(),
    })
}

/// Report files beside `prefix` that are still empty and were created since `since`: their
/// processes claimed them and never wrote the report.
pub fn unwritten_reports(prefix: &Path, since: std::time::SystemTime) -> Vec<String> {
    report_files(prefix)
        .unwrap_or_default()
        .into_iter()
        .filter(|f| {
            std::fs::metadata(f)
                .is_ok_and(|m| m.len() == 0 && m.modified().is_ok_and(|t| t >= since))
        })
        .map(|f| f.display().to_string())
        .collect()
}

/// The processes, other than this one, that carry this run's id in their environment: the
/// command's descendants still alive (daemons detach from the process group, not from their
/// environment).
pub fn still_running(run_id: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = format!("HICAMP_SHIM_RUN_ID={run_id}\0");
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect();
    pids.sort_unstable();
    pids
}

impl MergedReport {
    /// The note on processes of the run that outlived the command (empty when none).
    fn still_running_note(&self) -> String {
        let mut out = String::new();
        if !self.unwritten_reports.is_empty() {
            let _ =
                writeln!(
                out,
                "hicamp run: {} report{} did not arrive (the process claimed the file and did not \
                 write it: killed, or it could not write): {}",
                self.unwritten_reports.len(),
                if self.unwritten_reports.len() == 1 { "" } else { "s" },
                self.unwritten_reports.join(", ")
            );
        }
        if self.still_running.is_empty() {
            return out;
        }
        let pids: Vec<String> = self.still_running.iter().map(i32::to_string).collect();
        out + &format!(
            "hicamp run: {} process{} of the command still run{} (pid {}): a daemon writes its \
             report when it ends, to {}\n",
            pids.len(),
            if pids.len() == 1 { "" } else { "es" },
            if self.sent_bytes + self.received_bytes == 0 {
                ", which is why no traffic is counted yet"
            } else {
                ""
            },
            pids.join(", "),
            self.late_reports.as_deref().unwrap_or("its report file"),
        )
    }

    /// The stack mode's lines of the summary (empty in trace mode).
    fn stack_text(&self) -> String {
        let mut out = String::new();
        for p in &self.stack {
            let t = &p["totals"];
            let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
            let conns = p["connections"].as_array().map_or(0, Vec::len);
            let stack_conns = p["connections"]
                .as_array()
                .map_or(0, |c| c.iter().filter(|c| c["route"] == "stack").count());
            let _ = writeln!(
                out,
                "hicamp run (stack {} {}): pid {} {}: sent {} B, received {} B; copied at the \
                 socket API {} B in, {} B out; below it {} B; {} sockets ({} on the stack)",
                p["backend"].as_str().unwrap_or("?"),
                p["ip"].as_str().unwrap_or("?"),
                p["pid"],
                p["program"].as_str().unwrap_or("?"),
                n(&t["sent_bytes"]),
                n(&t["received_bytes"]),
                n(&t["api_copy_in_bytes"]),
                n(&t["api_copy_out_bytes"]),
                n(&p["payload_bytes_copied_below_socket_api"]),
                conns,
                stack_conns,
            );
            if let Some(e) = p["stack_error"].as_str() {
                let _ = writeln!(out, "  stack error: {e}");
            }
            if let Some(notes) = p["notes"].as_object() {
                for (k, v) in notes {
                    let _ = writeln!(out, "  note ({v}x): {k}");
                }
            }
        }
        out
    }

    /// The local mode's lines of the summary (empty in other modes).
    fn local_text(&self) -> String {
        let mut out = String::new();
        let routes: Vec<_> = self
            .local
            .iter()
            .filter(|v| v["event"] == "route")
            .collect();
        if routes.is_empty() {
            return out;
        }
        let count = |r: &str| routes.iter().filter(|v| v["route"] == r).count();
        let (copied_in, copied_out) =
            self.local
                .iter()
                .filter(|v| v["event"] == "close")
                .fold((0, 0), |(a, b), v| {
                    (
                        a + v["copied_in"].as_u64().unwrap_or(0),
                        b + v["copied_out"].as_u64().unwrap_or(0),
                    )
                });
        let _ = writeln!(
            out,
            "hicamp run (local): {} connection ends: {} local, {} kernel, {} broken; copied {} B \
             into the shared memory, {} B out of it",
            routes.len(),
            count("local"),
            count("kernel"),
            count("broken"),
            copied_in,
            copied_out,
        );
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        for v in routes.iter().filter(|v| v["route"] != "local") {
            *reasons
                .entry(v["reason"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        for (r, n) in reasons {
            let _ = writeln!(out, "  fallback ({n}x): {r}");
        }
        out
    }

    /// The human summary printed when the command ends.
    pub fn to_text(&self) -> String {
        let mut out = self.stack_text();
        out.push_str(&self.local_text());
        if !self.local.is_empty() && self.process_summaries.is_empty() {
            out.push_str(&self.still_running_note());
            return out;
        }
        if !self.stack.is_empty() && self.process_summaries.is_empty() {
            out.push_str(&self.still_running_note());
            return out;
        }
        let n = self.process_summaries.len();
        if n == 0 {
            if self.exit_code > 128 {
                let _ = writeln!(
                    out,
                    "hicamp run: no report: the command was killed by signal {} (SIGKILL and \
                     signals whose handler the program set leave none)",
                    self.exit_code - 128
                );
            } else {
                let _ = writeln!(
                    out,
                    "hicamp run: no process of the command wrote a report: none traced a socket, \
                     or they still run (a daemon writes its report when it ends), or they are \
                     statically linked (as Go programs are) and bypass the shim"
                );
            }
            out.push_str(&self.still_running_note());
            return out;
        }
        let _ = writeln!(
            out,
            "hicamp run: {n} process{} traced:",
            if n == 1 { "" } else { "es" }
        );
        for p in &self.process_summaries {
            let _ = writeln!(
                out,
                "  pid {} {}: sent {} B in {} calls, received {} B in {} calls, {} connection{}",
                p.pid,
                p.program,
                p.sent_bytes,
                p.send_calls,
                p.received_bytes,
                p.recv_calls,
                p.connections,
                if p.connections == 1 { "" } else { "s" }
            );
        }
        let _ = writeln!(
            out,
            "total: sent {} ({} B), received {} ({} B); payload copies a HICAMP stack avoids: {}",
            human_bytes(self.sent_bytes),
            self.sent_bytes,
            human_bytes(self.received_bytes),
            self.received_bytes,
            human_bytes(self.copy_avoided_bytes)
        );
        if !self.line_sizes.is_empty() {
            let _ = writeln!(
                out,
                "\nPayload in HICAMP memory, summed over the processes' memories{}:\n",
                if self.estimated_processes > 0 {
                    format!(
                        " ({} of {} estimated by {}, within +-{:.2}% at 95%)",
                        self.estimated_processes,
                        self.processes.len(),
                        self.dedup_method,
                        self.max_rel_err_95 * 100.0
                    )
                } else {
                    String::new()
                }
            );
            out.push_str(&line_size_table(&self.line_sizes));
        }
        for p in &self.processes {
            if let Some(e) = &p.dedup_estimate {
                let _ = write!(
                    out,
                    "pid {}: budget {}, {} of the payload not interned; {}",
                    p.pid,
                    human_bytes(p.budget_bytes),
                    human_bytes(p.payload_bytes_not_interned),
                    e.to_text()
                );
            }
        }
        out.push_str(&self.still_running_note());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("hicamp");
        let e = find_shim(None, &exe).unwrap_err().to_string();
        assert!(e.contains("cargo build --release -p libc-shim"), "{e}");
        std::fs::write(dir.path().join(SHIM_FILE), b"").unwrap();
        assert_eq!(find_shim(None, &exe).unwrap(), dir.path().join(SHIM_FILE));
        let e = find_shim(Some("/nonexistent/x.so".into()), &exe).unwrap_err();
        assert!(
            e.to_string().contains("HICAMP_SHIM=/nonexistent/x.so"),
            "{e}"
        );
    }

    #[test]
    fn merge_by_run_id() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("rep");
        let report = |pid: u32, run: &str, sent: u64| {
            serde_json::json!({
                "run_id": run, "pid": pid, "program": "p", "sent_bytes": sent,
                "received_bytes": 1, "send_calls": 2, "recv_calls": 3, "copy_avoided_bytes": 4,
                "connections": [{"id": 1}],
                "line_sizes": [{"line_size": 64, "logical_bytes": 100, "footprint_bytes": 50,
                                "physical_bytes": 40, "metadata_bytes": 10}],
            })
            .to_string()
        };
        std::fs::write(dir.path().join("rep.10.json"), report(10, "A", 5)).unwrap();
        std::fs::write(dir.path().join("rep.11.2.json"), report(11, "A", 7)).unwrap();
        std::fs::write(dir.path().join("rep.12.json"), report(12, "B", 100)).unwrap();
        std::fs::write(dir.path().join("rep.13.json"), b"").unwrap();
        std::fs::write(dir.path().join("rep.x.json"), report(14, "A", 100)).unwrap();
        let m = merge(&prefix, "A", vec!["cmd".into()], 0).unwrap();
        assert_eq!(m.process_summaries.len(), 2);
        assert_eq!(m.sent_bytes, 12);
        assert_eq!(m.connections.len(), 2);
        assert_eq!(m.connections[0].pid, 10);
        assert_eq!(m.line_sizes.len(), 1);
        assert_eq!(m.line_sizes[0].logical_bytes, 200);
        assert_eq!(m.line_sizes[0].dedup_ratio, 2.0);
        assert!(m.to_text().contains("2 processes traced"));
        let empty = merge(&prefix, "C", vec![], 0).unwrap();
        assert!(empty.to_text().contains("no process"));
    }

    #[test]
    fn budget_sizes() {
        assert_eq!(parse_budget("32M"), Ok(32 << 20));
        assert_eq!(parse_budget("1g"), Ok(1 << 30));
        assert!(parse_budget("12").is_err());
        assert!(parse_budget("lots").is_err());
        assert!(parse_budget("5Q").is_err());
    }

    #[test]
    fn no_command() {
        let opts = RunOptions {
            shim: "/x.so".into(),
            report: None,
            command: vec![],
            env: vec![],
            stack: None,
            local: None,
            trace: false,
        };
        assert!(matches!(run(&opts), Err(RunError::NoCommand)));
    }
}
