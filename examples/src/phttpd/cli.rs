//! The `phttpd` command: the PASTE RPC and WAL server (see [`super`]) on
//! the sim backend or over TAP.
//!
//! - `phttpd` (no arguments, the built-in default): the sim backend, with a
//!   built-in closed-loop client on the other side of the simulated link
//!   running the RPC and WAL workloads for a few seconds; prints requests/s.
//! - `phttpd --tap [--port 80]`: needs root. A TAP device in a fresh network
//!   namespace whose kernel side is 10.79.0.1/24; the server is 10.79.0.2.
//!   It prints the `ip netns exec` command to reach it with curl or wrk and
//!   serves until interrupted (or `--seconds N`); SIGINT or SIGTERM stops it
//!   and removes the namespace.
//! - `phttpd --backend SPEC --ip ADDR/PREFIX [--gateway ADDR]`: needs root.
//!   Serves on an existing interface through the chosen backend
//!   (`af_xdp:IFACE[:QUEUE]`, `af_packet:IFACE`, `tap:NAME`; `sim` is the
//!   built-in run; see `nicdma::backend`), as `ADDR`, until interrupted or
//!   `--seconds N`. On a veth, turn the peer's offloads off first
//!   (`ethtool -K PEER tx off tso off gso off`): AF_XDP and AF_PACKET see
//!   wire frames only.
//! - `--wal FILE`: the memory is a file; POST bodies are logged in its
//!   segment map and survive a restart.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hicamp::{Config, Memory};
use nicdma::backend::{parse_cidr, AnyPort, BackendSpec};
use nicdma::tap::{NetNs, TapPort};
use nicdma::Port;
use segstack::iface::{IfaceConfig, IfaceError, Interface};
use segstack::sim::B_IP;

use super::{is_transient, rpc_request, server_interface, sim_pair, Limits, Phttpd, RESPONSE_LEN};

#[derive(Parser, Debug)]
#[command(about = "A PASTE-phttpd-like HTTP server on segstack")]
struct Args {
    /// Serve the Linux kernel over a TAP device in a new namespace (root):
    /// the shortcut for a TAP lab of its own.
    #[arg(long, conflicts_with = "backend")]
    tap: bool,
    /// The backend: sim, tap:NAME, af_xdp:IFACE[:QUEUE], af_packet:IFACE or
    /// netmap:PORT (`hicamp backends` lists what works here).
    #[arg(long, value_parser = |s: &str| s.parse::<BackendSpec>().map_err(|e| e.to_string()))]
    backend: Option<BackendSpec>,
    /// Our address and prefix on the backend's link (ADDR/PREFIX).
    #[arg(long)]
    ip: Option<String>,
    /// Where packets outside the subnet go.
    #[arg(long)]
    gateway: Option<std::net::Ipv4Addr>,
    /// TCP port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// Bytes of the object served at GET /obj/N.
    #[arg(long, default_value_t = 64 << 20)]
    object: usize,
    /// Log POST bodies into this memory file's segment map.
    #[arg(long)]
    wal: Option<std::path::PathBuf>,
    /// Stop after this many seconds (TAP mode; default: run until killed).
    #[arg(long)]
    seconds: Option<u64>,
    /// Connections of the built-in sim client.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Longest request body accepted (413 and close past it).
    #[arg(long, default_value_t = 64 << 20)]
    max_body: u64,
    /// Longest request head accepted (431 and close past it).
    #[arg(long, default_value_t = super::MAX_HEADER)]
    max_header: usize,
}

impl Args {
    fn limits(&self) -> Limits {
        Limits {
            max_header: self.max_header,
            max_body: self.max_body,
        }
    }
}

/// The server's interface: with `--wal`, on the rings the file records
/// (reused across restarts and kills, see [`persistent_interface`]).
fn memory(args: &Args) -> Result<Memory, String> {
    let cfg = Config {
        capacity_lines: 1 << 24,
        map_capacity: 1 << 20,
        ..Config::default()
    };
    match &args.wal {
        Some(p) if p.exists() => Memory::open(p).map_err(|e| format!("{}: {e}", p.display())),
        Some(p) => Memory::create(p, cfg).map_err(|e| format!("{}: {e}", p.display())),
        None => Memory::new(cfg).map_err(|e| e.to_string()),
    }
}

/// The `phttpd` program: exits 1 with a message on an error.
pub fn main() {
    let args = Args::parse();
    let r = match &args.backend {
        _ if args.tap => tap(&args),
        None | Some(BackendSpec::Sim) => sim(&args),
        Some(spec) => backend(&args, spec),
    };
    if let Err(e) = r {
        eprintln!("phttpd: {e}");
        std::process::exit(1);
    }
}

/// A flag that SIGINT and SIGTERM raise (a second one of either ends the
/// process at once, as an unhandled one would).
fn stop_flag() -> Result<Arc<AtomicBool>, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop)))
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    Ok(stop)
}

/// Serves on a port of the chosen backend, on an interface that exists.
fn backend(args: &Args, spec: &BackendSpec) -> Result<(), String> {
    let Some(cidr) = &args.ip else {
        return Err(format!("--backend {spec} needs --ip ADDR/PREFIX"));
    };
    let (ip, prefix) = parse_cidr(cidr).map_err(|e| e.to_string())?;
    let stop = stop_flag()?;
    let mem = memory(args)?;
    let port = spec.open().map_err(|e| e.to_string())?;
    // The interface's own MAC where the port binds one; else a local one.
    let mac = port.mac().unwrap_or([2, 0, 0, 0x79, 0, 2]);
    let mut cfg = IfaceConfig::new(mac, ip, prefix);
    cfg.gateway = args.gateway;
    if let Some(mtu) = port.mtu() {
        // The MTU the port can carry, and segments as large as it (a jumbo
        // MTU on a veth: AF_XDP multi-buffer frames), as the kernel's MSS
        // follows its MTU.
        cfg.mtu = (mtu as usize).min(nicdma::Port::max_frame(&port).saturating_sub(14));
        cfg.tcp.mss = cfg.mtu.saturating_sub(40).clamp(536, 65_495) as u16;
    }
    let iface = server_interface(&mem, args.wal.is_some(), port, cfg).map_err(|e| e.to_string())?;
    println!("phttpd: serving on {ip}:{} through {spec}", args.port);
    serve(args, iface, &stop)
}

fn tap(args: &Args) -> Result<(), String> {
    // Before the namespace exists: an interrupt from here on ends the poll
    // loop, and the namespace is deleted on the way out.
    let stop = stop_flag()?;
    let mem = memory(args)?;
    let port = TapPort::open("").map_err(|e| format!("TAP: {e}"))?;
    let ns = NetNs::create().map_err(|e| format!("namespace: {e}"))?;
    let dev = port.name().to_owned();
    ns.adopt(&dev, Some("10.79.0.1/24"))
        .map_err(|e| format!("namespace: {e}"))?;
    let ip = Ipv4Addr::new(10, 79, 0, 2);
    let cfg = IfaceConfig::new([2, 0, 0, 0x79, 0, 2], ip, 24);
    let iface = server_interface(&mem, args.wal.is_some(), AnyPort::Tap(port), cfg)
        .map_err(|e| e.to_string())?;
    println!(
        "phttpd: serving on {ip}:{} (device {dev} in namespace {})",
        args.port,
        ns.name()
    );
    println!(
        "  try: ip netns exec {} curl -s http://{ip}:{}/ ; ip netns exec {} wrk -c 50 -d 5 http://{ip}:{}/",
        ns.name(),
        args.port,
        ns.name(),
        args.port
    );
    let r = serve(args, iface, &stop);
    if stop.load(Ordering::Relaxed) {
        println!("phttpd: interrupted; removing namespace {}", ns.name());
    }
    r
}

/// The server loop (TAP or another backend) until `--seconds` runs out or
/// SIGINT/SIGTERM raises `stop`.
fn serve(args: &Args, mut iface: Interface<AnyPort>, stop: &AtomicBool) -> Result<(), String> {
    let mut server = Phttpd::new(&mut iface, args.port, args.object, args.wal.is_some())
        .map_err(|e| e.to_string())?;
    server.set_limits(args.limits());
    let t0 = Instant::now();
    let end = args.seconds.map(|s| t0 + Duration::from_secs(s));
    let mut last = Instant::now();
    loop {
        if end.is_some_and(|e| Instant::now() >= e) || stop.load(Ordering::Relaxed) {
            break;
        }
        let now = t0.elapsed().as_nanos() as u64;
        server.poll(&mut iface, now).map_err(|e| e.to_string())?;
        let wait = iface.poll_at().map_or(Duration::from_millis(5), |t| {
            Duration::from_nanos(t.saturating_sub(now)).min(Duration::from_millis(5))
        });
        if let Err(e) = nicdma::port::wait_readable(iface.nic().port(), wait) {
            // A signal may interrupt the wait: the flag says which.
            if !stop.load(Ordering::Relaxed) {
                return Err(e.to_string());
            }
        }
        if last.elapsed() >= Duration::from_secs(5) {
            last = Instant::now();
            println!("phttpd: {:?}", server.stats());
            println!("phttpd: {:?}", iface.nic().counters());
            println!("phttpd: port copies {:?}", iface.nic().port().copies());
        }
    }
    println!("phttpd: {:?}", server.stats());
    println!("phttpd: {:?}", iface.stats());
    println!("phttpd: port copies {:?}", iface.nic().port().copies());
    if args.wal.is_some() {
        iface.nic().memory().sync().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The built-in run: server on one sim interface, closed-loop clients on the
/// other (RPC for 2 s, then WAL with 1 KiB bodies for 2 s).
fn sim(args: &Args) -> Result<(), String> {
    let mem = memory(args)?;
    let e = |e: IfaceError| e.to_string();
    let mut pair = sim_pair(&mem, args.wal.is_some())?;
    let mut server = Phttpd::new(&mut pair.b, args.port, 1 << 20, args.wal.is_some()).map_err(e)?;
    server.set_limits(args.limits());
    let now = pair.now();
    let conns: Vec<_> = (0..args.connections.max(1))
        .map(|_| pair.a.tcp_connect(SocketAddrV4::new(B_IP, args.port), now))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let body = vec![b'w'; 1024];
    let wal_req = {
        let mut r = format!(
            "POST /log HTTP/1.1\r\nHost: phttpd\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        r
    };
    for (name, req) in [
        ("RPC (GET, 44 B -> 151 B)", rpc_request()),
        ("WAL (POST 1 KiB)", wal_req),
    ] {
        let mut got = vec![0usize; conns.len()];
        let mut need_send = vec![true; conns.len()];
        let mut done = 0u64;
        let t = Instant::now();
        let mut buf = [0u8; 1024];
        while t.elapsed() < Duration::from_secs(2) {
            let now = pair.now();
            server.poll(&mut pair.b, now).map_err(e)?;
            pair.a.poll(now).map_err(e)?;
            let mut progress = false;
            for (i, &c) in conns.iter().enumerate() {
                if need_send[i] && pair.a.tcp(c).map_err(e)?.can_send() {
                    match pair.a.send_slice(c, &req) {
                        Ok(n) if n == req.len() => need_send[i] = false,
                        Ok(_) => return Err("short send of a small request".into()),
                        Err(IfaceError::WouldBlock) => {}
                        Err(x) => return Err(x.to_string()),
                    }
                }
                while let Ok(n) = pair.a.recv_slice(c, &mut buf) {
                    if n == 0 {
                        return Err("server closed a connection".into());
                    }
                    got[i] += n;
                    progress = true;
                    if got[i] >= RESPONSE_LEN {
                        got[i] -= RESPONSE_LEN;
                        done += 1;
                        need_send[i] = true;
                    }
                }
            }
            if !progress {
                match pair.step() {
                    Err(x) if is_transient(&x) => {}
                    r => {
                        r.map_err(e)?;
                    }
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{name}: {} connections, {done} requests in {secs:.2} s: {:.0} requests/s (sim backend, both stacks in one thread)",
            conns.len(),
            done as f64 / secs
        );
    }
    let s = server.stats();
    println!(
        "server: {} requests, {} WAL bytes logged ({} copied), {} header bytes parsed",
        s.requests, s.wal_bytes, s.wal_copied, s.header_bytes_copied
    );
    let st = pair.b.stats();
    println!(
        "stack: tx payload {} B ({} shared, {} copied), rx payload {} B delivered as snapshots",
        st.tx_payload_bytes, st.tx_payload_shared, st.tx_payload_copied, st.rx_payload_bytes
    );
    if args.wal.is_some() {
        mem.sync().map_err(|e| e.to_string())?;
    }
    Ok(())
}
