//! phttpd against hostile clients, over the sim link (in-process): request
//! size limits (413, 431), strict parsing (a GET's body is not a request;
//! bad Content-Length, Transfer-Encoding, field lines: 400/501), a full
//! segment map or memory (507, or the hog reset, while the server keeps
//! serving), bodies released without `--wal`, and ring entries reused
//! across restarts of a file-backed server (also after SIGKILL).

use std::net::SocketAddrV4;

use hicamp::{Config, Memory};
use hicamp_examples::phttpd::{persistent_interface, rpc_request, Limits, Phttpd};
use nicdma::sim::{LinkConfig, SimNet, SimPort};
use segstack::iface::{IfaceConfig, IfaceError, Interface, SocketHandle};
use segstack::sim::{SimPair, A_IP, B_IP};

/// A server on side b (in `mem`), a client on side a (in a DRAM memory of
/// its own).
struct Lab {
    pair: SimPair,
    server: Phttpd,
    _client_mem: Memory,
}

/// One answer: status, body, and whether the connection ended after it.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

fn configs() -> (IfaceConfig, IfaceConfig) {
    let mut ca = IfaceConfig::new([2, 0, 0, 0, 0, 1], A_IP, 24);
    ca.seed = 7;
    let mut cb = IfaceConfig::new([2, 0, 0, 0, 0, 2], B_IP, 24);
    cb.seed = 8;
    (ca, cb)
}

impl Lab {
    fn new(mem: &Memory, wal: bool, limits: Limits) -> Lab {
        Self::with_object(mem, wal, limits, 4096)
    }

    fn with_object(mem: &Memory, wal: bool, limits: Limits, object_len: usize) -> Lab {
        let (net, pa, pb) = SimNet::pair(3, LinkConfig::default()).unwrap();
        let (ca, cb) = configs();
        let b = if wal {
            persistent_interface(mem, pb, cb).unwrap()
        } else {
            Interface::new(mem, pb, cb).unwrap()
        };
        Self::with(net, pa, ca, b, wal, limits, object_len)
    }

    fn with(
        net: SimNet,
        pa: SimPort,
        ca: IfaceConfig,
        b: Interface<SimPort>,
        wal: bool,
        limits: Limits,
        object_len: usize,
    ) -> Lab {
        let client_mem = Memory::new(Config::default()).unwrap();
        let a = Interface::new(&client_mem, pa, ca).unwrap();
        let mut pair = SimPair::from_parts(net, a, b);
        let mut server = Phttpd::new(&mut pair.b, 80, object_len, wal).unwrap();
        server.set_limits(limits);
        Lab {
            pair,
            server,
            _client_mem: client_mem,
        }
    }

    /// One round: server poll, client poll, then the link and clock move.
    fn turn(&mut self) {
        let now = self.pair.now();
        self.server.poll(&mut self.pair.b, now).unwrap();
        self.pair.a.poll(now).unwrap();
        match self.pair.step() {
            Ok(_) => {}
            Err(IfaceError::Memory(_) | IfaceError::Nic(nicdma::NicError::Memory(_))) => {}
            Err(e) => panic!("{e}"),
        }
    }

    fn connect(&mut self) -> SocketHandle {
        let now = self.pair.now();
        let c = self
            .pair
            .a
            .tcp_connect(SocketAddrV4::new(B_IP, 80), now)
            .unwrap();
        for _ in 0..10_000 {
            if self.pair.a.tcp(c).unwrap().state() == segstack::tcp::State::Established {
                return c;
            }
            self.turn();
        }
        panic!("no connection");
    }

    /// Sends all of `data` (as the window allows); stops early if the
    /// connection ends. Returns the bytes sent.
    fn send(&mut self, c: SocketHandle, data: &[u8]) -> usize {
        let mut at = 0;
        let mut idle = 0;
        while at < data.len() && idle < 20_000 {
            match self.pair.a.send_slice(c, &data[at..]) {
                Ok(n) if n > 0 => {
                    at += n;
                    idle = 0;
                }
                Ok(_) | Err(IfaceError::WouldBlock) => idle += 1,
                Err(_) => break,
            }
            if self.ended(c) {
                break;
            }
            self.turn();
        }
        at
    }

    /// True once the connection is reset or the server's FIN arrived.
    fn ended(&self, c: SocketHandle) -> bool {
        self.pair.a.tcp(c).map_or(true, |t| !t.may_recv())
    }

    /// Reads what the server sent on `c` until `n` answers are complete or
    /// the connection ends (or nothing more comes).
    fn answers(&mut self, c: SocketHandle, n: usize) -> (Vec<Answer>, bool) {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let mut out = Vec::new();
        let mut ended = false;
        for _ in 0..50_000 {
            loop {
                match self.pair.a.recv_slice(c, &mut tmp) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(k) => buf.extend_from_slice(&tmp[..k]),
                    Err(IfaceError::WouldBlock) => break,
                    Err(_) => {
                        ended = true;
                        break;
                    }
                }
            }
            while let Some((a, used)) = parse_answer(&buf) {
                out.push(a);
                buf.drain(..used);
            }
            if ended || out.len() > n {
                break;
            }
            if out.len() >= n {
                // Give a stray extra answer a chance to show up.
                for _ in 0..50 {
                    self.turn();
                }
                while let Ok(k) = self.pair.a.recv_slice(c, &mut tmp) {
                    if k == 0 {
                        ended = true;
                        break;
                    }
                    buf.extend_from_slice(&tmp[..k]);
                }
                while let Some((a, used)) = parse_answer(&buf) {
                    out.push(a);
                    buf.drain(..used);
                }
                break;
            }
            self.turn();
        }
        (out, ended)
    }

    /// Sends `req` on a new connection; the answers and whether the
    /// connection ended.
    fn ask(&mut self, req: &[u8], n: usize) -> (Vec<Answer>, bool) {
        let c = self.connect();
        self.send(c, req);
        self.answers(c, n)
    }
}

/// One complete answer at the start of `b`: (answer, bytes used).
fn parse_answer(b: &[u8]) -> Option<(Answer, usize)> {
    let end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&b[..end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let body = b.get(end..end + len)?.to_vec();
    Some((Answer { status, body }, end + len))
}

fn statuses(a: &[Answer]) -> Vec<u16> {
    a.iter().map(|a| a.status).collect()
}

fn dram() -> Memory {
    Memory::new(Config {
        capacity_lines: 1 << 20,
        map_capacity: 1 << 14,
        ..Config::default()
    })
    .unwrap()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn a_gets_body_is_not_served_as_a_second_request() {
    let mem = dram();
    let mut lab = Lab::new(&mem, false, Limits::default());
    // The body is itself a valid GET: served as a request, it would give a
    // second answer.
    let inner = rpc_request();
    let mut req = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        inner.len()
    )
    .into_bytes();
    req.extend_from_slice(&inner);
    let (a, ended) = lab.ask(&req, 1);
    assert_eq!(statuses(&a), [200], "one answer");
    assert!(!ended);
    assert_eq!(lab.server.stats().gets, 1);
}

#[test]
fn bad_framing_is_answered_400_and_closed() {
    let mem = dram();
    let mut lab = Lab::new(&mem, false, Limits::default());
    for (head, want) in [
        ("Content-Length: +5", 400),
        ("Content-Length: -1", 400),
        ("Content-Length: 5, 6", 400),
        ("Content-Length: 5\r\nContent-Length: 6", 400),
        ("Content-Length: 5x", 400),
        ("Content-Length: 5\r\nTransfer-Encoding: chunked", 400),
        ("Transfer-Encoding: chunked", 501),
        ("NoColon", 400),
        ("X : y", 400),
        ("X: y\r\n folded", 400),
    ] {
        let req = format!("POST /log HTTP/1.1\r\nHost: t\r\n{head}\r\n\r\nhello");
        let (a, ended) = lab.ask(req.as_bytes(), 1);
        assert_eq!(statuses(&a), [want], "{head:?}");
        assert!(ended, "{head:?}: the connection closes");
    }
    // Bare LF.
    let (a, ended) = lab.ask(b"GET / HTTP/1.1\nHost: t\n\n", 1);
    assert_eq!(statuses(&a), [400]);
    assert!(ended);
    // The server still serves.
    let (a, _) = lab.ask(&rpc_request(), 1);
    assert_eq!(statuses(&a), [200]);
    assert!(lab.server.stats().bad_requests >= 11);
}

#[test]
fn an_oversized_body_is_413_without_being_buffered() {
    let mem = dram();
    let mut lab = Lab::new(&mem, false, Limits::default());
    let before = mem.live_lines();
    let c = lab.connect();
    lab.send(
        c,
        b"POST /log HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999\r\n\r\n",
    );
    // 2 MiB of body follow (the server reads and drops them).
    let sent = lab.send(c, &vec![b'b'; 2 << 20]);
    let (a, ended) = lab.answers(c, 1);
    assert_eq!(statuses(&a), [413]);
    assert!(ended);
    assert!(sent > 0);
    // Nothing of the body stayed (the RX ring holds at most its slots).
    let grown = mem.live_lines().saturating_sub(before);
    assert!(grown < 4096, "{grown} lines kept");
    assert_eq!(lab.server.stats().too_large, 1);
    let (a, _) = lab.ask(&rpc_request(), 1);
    assert_eq!(statuses(&a), [200]);
}

#[test]
fn limits_are_configurable_and_exact() {
    let mem = dram();
    let limits = Limits {
        max_header: 1024,
        max_body: 10_000,
    };
    let mut lab = Lab::new(&mem, false, limits);
    let (a, ended) = lab.ask(&post("/upload", &vec![7u8; 10_000]), 1);
    assert_eq!(statuses(&a), [200]);
    assert!(!ended);
    let (a, ended) = lab.ask(&post("/upload", &vec![7u8; 10_001]), 1);
    assert_eq!(statuses(&a), [413]);
    assert!(ended);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let (a, ended) = lab.ask(big.as_bytes(), 1);
    assert_eq!(statuses(&a), [431]);
    assert!(ended);
}

#[test]
fn a_full_map_is_507_per_request_and_the_server_keeps_serving() {
    // Room for the rings (2 x 1024), the directory, the ring record and a
    // few WAL records.
    let mem = Memory::new(Config {
        capacity_lines: 1 << 18,
        map_capacity: 2048 + 2 + 5,
        ..Config::default()
    })
    .unwrap();
    let mut lab = Lab::new(&mem, true, Limits::default());
    let c = lab.connect();
    let mut req = Vec::new();
    for _ in 0..12 {
        req.extend_from_slice(&post("/log", &[b'w'; 1024]));
    }
    req.extend_from_slice(&rpc_request());
    lab.send(c, &req);
    let (a, ended) = lab.answers(c, 13);
    let s = statuses(&a);
    assert_eq!(s.len(), 13, "{s:?}");
    assert!(!ended, "a 507 keeps the connection");
    assert_eq!(&s[..5], [200; 5], "{s:?}");
    assert_eq!(&s[5..12], [507; 7], "{s:?}");
    assert_eq!(s[12], 200, "{s:?}");
    assert_eq!(lab.server.stats().storage_full, 7);
}

#[test]
fn a_full_memory_costs_the_hog_its_connection_not_the_server() {
    // 2 MiB of lines: the rings' frames, the server's answers, and little
    // more; one client streams a 16 MiB body (under the 64 MiB limit).
    let mem = Memory::new(Config {
        capacity_lines: 1 << 15,
        map_capacity: 1 << 13,
        ..Config::default()
    })
    .unwrap();
    let mut lab = Lab::new(&mem, false, Limits::default());
    let hog = lab.connect();
    lab.send(
        hog,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 16777216\r\n\r\n",
    );
    // Bytes that do not deduplicate.
    let mut rng = testkit::Rng::new(5);
    let body = rng.bytes(16 << 20);
    lab.send(hog, &body);
    let s = *lab.server.stats();
    assert!(s.memory_full > 0 && s.resets > 0, "{s:?}");
    assert!(lab.ended(hog));
    // The server answers a new client.
    let (a, _) = lab.ask(&rpc_request(), 1);
    assert_eq!(statuses(&a), [200]);
    let (a, _) = lab.ask(&post("/upload", b"abc"), 1);
    assert_eq!(statuses(&a), [200]);
    assert_eq!(
        String::from_utf8_lossy(&a[0].body),
        blake3_hex(&mem, b"abc")
    );
}

fn blake3_hex(mem: &Memory, b: &[u8]) -> String {
    let seg = mem.segment(b).unwrap();
    seg.digest().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn without_wal_bodies_are_released_once_answered() {
    let mem = dram();
    let mut lab = Lab::new(&mem, false, Limits::default());
    let c = lab.connect();
    let mut rng = testkit::Rng::new(0x20_000);
    let mut body = vec![0u8; 4096];
    let mut post_some = |lab: &mut Lab, count: usize| {
        for _ in 0..count / 50 {
            let mut req = Vec::new();
            for _ in 0..50 {
                // Random bodies: nothing deduplicates.
                rng.fill(&mut body);
                req.extend_from_slice(&post("/log", &body));
            }
            let sent = lab.send(c, &req);
            let (a, ended) = lab.answers(c, 50);
            assert_eq!(
                a.len(),
                50,
                "sent {sent} of {}, ended {ended}, {:?}",
                req.len(),
                lab.server.stats()
            );
            assert!(a.iter().all(|a| a.status == 200));
        }
    };
    post_some(&mut lab, 1000);
    let warm = mem.live_lines();
    post_some(&mut lab, 20_000);
    let after = mem.live_lines();
    eprintln!("live lines after 1k POSTs: {warm}, after 20k more: {after}");
    // 20k x 4 KiB kept would be 1.28M lines of 64 bytes.
    assert!(
        after < warm + 20_000,
        "live lines grew from {warm} to {after}"
    );
    assert_eq!(lab.server.stats().posts, 21_000);
}

#[test]
fn a_file_servers_rings_are_reused_after_a_map_filling_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.mem");
    let mem = Memory::create(
        &path,
        Config {
            capacity_lines: 1 << 18,
            map_capacity: 2048 + 2 + 20,
            ..Config::default()
        },
    )
    .unwrap();
    // Run 1 fills the map with WAL records.
    {
        let mut lab = Lab::new(&mem, true, Limits::default());
        let c = lab.connect();
        let mut req = Vec::new();
        for _ in 0..30 {
            req.extend_from_slice(&post("/log", &[b'w'; 100]));
        }
        lab.send(c, &req);
        let (a, _) = lab.answers(c, 30);
        assert_eq!(a.iter().filter(|a| a.status == 507).count(), 10);
    }
    let full = mem.map().len();
    drop(mem);
    // Runs 2..4 start on the full map (as after a kill: nothing given
    // back), reuse the rings and leak nothing.
    for _ in 0..3 {
        let mem = Memory::open(&path).unwrap();
        assert_eq!(mem.map().len(), full);
        let mut lab = Lab::new(&mem, true, Limits::default());
        let (a, _) = lab.ask(&rpc_request(), 1);
        assert_eq!(statuses(&a), [200]);
        let (a, _) = lab.ask(&post("/log", b"x"), 1);
        assert_eq!(statuses(&a), [507]);
        drop(lab);
        assert_eq!(mem.map().len(), full);
    }
}

#[test]
fn sigkilled_wal_servers_leak_no_ring_entries() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.mem");
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_phttpd"))
            .arg("--wal")
            .arg(&path)
            .args(["--connections", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The first line comes after the RPC run: the rings are in place.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("RPC"), "{line}");
        child.kill().unwrap();
        child.wait().unwrap();
        let mem = Memory::open(&path).unwrap();
        let names = mem.names().unwrap();
        assert!(names.iter().any(|n| n.name == "phttpd.rings"), "{names:?}");
        // Ring entries are bound to the empty segment; WAL records and the
        // directory are not.
        let map = mem.map();
        let empty = map
            .ids()
            .into_iter()
            .filter(|&id| map.entry(id).unwrap().len == 0)
            .count();
        sizes.push(empty);
    }
    // One TX and one RX ring of 1024, the same ones after every kill.
    assert_eq!(sizes, [2048; 3]);
}

#[test]
fn a_memory_too_full_for_the_object_still_starts_and_serves() {
    // 2 MiB of lines; the object wants 64 MiB.
    let mem = Memory::new(Config {
        capacity_lines: 1 << 15,
        map_capacity: 1 << 13,
        ..Config::default()
    })
    .unwrap();
    let mut lab = Lab::with_object(&mem, false, Limits::default(), 64 << 20);
    let (a, ended) = lab.ask(b"GET /obj/100 HTTP/1.1\r\nHost: t\r\n\r\n", 1);
    assert_eq!(statuses(&a), [507]);
    assert!(!ended);
    let (a, _) = lab.ask(&rpc_request(), 1);
    assert_eq!(statuses(&a), [200]);
}

#[test]
fn rings_taken_over_by_someone_else_are_left_alone() {
    let mem = dram();
    let record = |mem: &Memory| {
        let seg = mem.get_named("phttpd.rings").unwrap().unwrap();
        let mut b = [0u8; 16];
        seg.read_at(0, &mut b).unwrap();
        b
    };
    drop(Lab::new(&mem, true, Limits::default()));
    let first = record(&mem);
    // Someone deletes a ring entry and the id is reused for data.
    let tx = u32::from_le_bytes(first[..4].try_into().unwrap());
    mem.map().delete(hicamp::SegmentId(tx + 5)).unwrap();
    let id = mem.map().create(b"someone else's").unwrap();
    assert_eq!(id.get(), tx + 5);
    let mut lab = Lab::new(&mem, true, Limits::default());
    assert_ne!(record(&mem), first, "new rings recorded");
    let (a, _) = lab.ask(&rpc_request(), 1);
    assert_eq!(statuses(&a), [200]);
    let mut b = [0u8; 14];
    mem.map().read_at(id, 0, &mut b).unwrap();
    assert_eq!(&b, b"someone else's");
}

/// Request streams built from valid requests, cut, mutated and pipelined:
/// every answer the server gives is a well-formed HTTP/1.1 response, the
/// server never fails, and it still answers afterwards.
#[test]
fn random_request_streams_get_well_formed_answers() {
    let mem = dram();
    let limits = Limits {
        max_header: 2048,
        max_body: 4096,
    };
    let mut lab = Lab::new(&mem, false, limits);
    let mut rng = testkit::Rng::new(0x57_4e);
    let valid: Vec<Vec<u8>> = vec![
        rpc_request(),
        post("/log", b"hello"),
        post("/upload", &[7u8; 300]),
        b"GET /obj/77 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
    ];
    let pieces: [&[u8]; 12] = [
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b":",
        b"+",
        b"-1",
        b"99999",
        b"Content-Length: ",
        b"Transfer-Encoding: chunked\r\n",
        b"\x00",
        b"Connection: close\r\n",
    ];
    for _ in 0..150 {
        let mut stream = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let mut r = valid[rng.index(valid.len())].clone();
            for _ in 0..rng.below(3) {
                let at = rng.index(r.len() + 1);
                match rng.below(3) {
                    0 if !r.is_empty() => {
                        let i = rng.index(r.len());
                        r[i] = rng.byte();
                    }
                    1 => {
                        let p = pieces[rng.index(pieces.len())];
                        r.splice(at..at, p.iter().copied());
                    }
                    _ => r.truncate(at),
                }
            }
            stream.extend_from_slice(&r);
        }
        let c = lab.connect();
        lab.send(c, &stream);
        // Half-close: the server sees the end of what we send.
        lab.pair.a.shutdown(c).unwrap();
        let (answers, _) = lab.answers(c, 8);
        for a in &answers {
            assert!(
                [200, 400, 413, 431, 501, 505, 507].contains(&a.status),
                "{} for {:?}",
                a.status,
                String::from_utf8_lossy(&stream)
            );
        }
        let _ = lab.pair.a.close(c);
    }
    let s = *lab.server.stats();
    assert!(s.bad_requests > 0 && s.requests > s.bad_requests, "{s:?}");
    let (a, _) = lab.ask(&rpc_request(), 1);
    assert_eq!(statuses(&a), [200]);
}

/// A tmpfs of `size` that this test mounts and unmounts (lazily, however the
/// test ends).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "phttpd-test"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Issue: `phttpd --wal` on a full tmpfs died by SIGBUS after 456 POSTs.
/// Now the file's space is reserved before it is touched: a POST that finds
/// the file system full is refused (507, or its connection reset when the
/// body could not even be received), the server goes on answering what needs
/// no new space, and every acknowledged record is in the file when it is
/// opened again.
#[test]
fn a_full_file_system_under_wal_refuses_posts_and_the_server_keeps_serving() {
    if testkit::require_root("root (mounts a tmpfs)") {
        return;
    }
    let fs = Tmpfs::mount("24m").expect("mount tmpfs");
    let path = fs.0.path().join("wal.hicamp");
    // The file could grow to 256 MiB of lines: far more than the tmpfs.
    let mem = Memory::create(
        &path,
        Config {
            capacity_lines: 1 << 22,
            map_capacity: 1 << 14,
            ..Config::default()
        },
    )
    .expect("create on the tmpfs");
    let mut lab = Lab::new(&mem, true, Limits::default());
    let mut c = lab.connect();
    let mut rng = testkit::Rng::new(11);
    let (mut ok, mut refused, mut resets) = (0u32, 0u32, 0u32);
    // 4 KiB bodies that do not deduplicate, one at a time, until 5 in a row
    // are refused (24 MiB holds a few thousand). A body is received straight
    // into the memory's lines, so a full file system shows while receiving
    // (the connection holding the most unanswered bytes is reset, and the
    // client reconnects) or while logging (507).
    let mut refused_in_a_row = 0;
    for _ in 0..20_000 {
        lab.send(c, &post("/log", &rng.bytes(4096)));
        let (a, ended) = lab.answers(c, 1);
        match (&statuses(&a)[..], ended) {
            ([200], false) => {
                ok += 1;
                refused_in_a_row = 0;
                continue;
            }
            ([507], false) => refused += 1,
            ([] | [507], true) => {
                resets += 1;
                c = lab.connect();
            }
            (s, e) => panic!("unexpected answers {s:?} (ended: {e}) after {ok} records"),
        }
        refused_in_a_row += 1;
        if refused_in_a_row == 5 {
            break;
        }
    }
    eprintln!("{ok} records logged, then {refused} answered 507 and {resets} connections reset");
    assert!(ok > 100, "only {ok} records fit");
    assert_eq!(
        refused_in_a_row, 5,
        "the file system never filled ({ok} records)"
    );
    assert!(lab.server.stats().storage_full >= u64::from(refused));
    // What needs no new space is still served, on this connection and a new one.
    lab.send(c, &rpc_request());
    let (a, _) = lab.answers(c, 1);
    assert_eq!(statuses(&a), [200]);
    let (a, _) = lab.ask(&rpc_request(), 1);
    assert_eq!(statuses(&a), [200]);
    drop(lab);
    mem.sync().expect("sync");
    drop(mem);
    // Reopened: every acknowledged record is there.
    let mem = Memory::open(&path).expect("reopen after the file system filled");
    let used = mem.map().len();
    assert!(
        used >= u64::from(ok),
        "{used} live map entries for {ok} acknowledged records"
    );
}
