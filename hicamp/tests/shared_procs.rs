//! The shared memory across processes: a multi-process stress with a
//! check of every count at the end, SIGKILL at random moments (the others
//! lose nothing, the dead ones' references are reclaimed, the checker finds
//! no leak), and connection rings between processes: a stream checked by
//! digest, ping-pong over many connections, a peer killed mid-transfer.
//!
//! The children are this test binary run again with `SHM_CHILD` set (the
//! `child` test dispatches on it), so no process forks with threads around.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hicamp::shared::{ConnId, SharedError, SharedMemory, SharedOptions, SharedSegment};
use testkit::Rng;

fn spawn(role: &str, path: &Path, args: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("SHM_CHILD", role)
        .env("SHM_PATH", path)
        .stdout(std::process::Stdio::null());
    for (k, v) in args {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

fn env_u64(k: &str) -> u64 {
    env(k).parse().unwrap()
}

fn kill(c: &mut Child) {
    // SAFETY: c.id() is our own child, not yet waited for.
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    let _ = c.wait();
}

/// Content from a small family (`kind`), shared across processes: every
/// 16-byte word says its kind, so a read can check itself.
fn content(kind: u64, lines: usize, line: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(lines * line);
    for i in 0..lines {
        let w = (kind * 1000 + (i % 5) as u64).to_le_bytes();
        for _ in 0..line / 8 {
            v.extend_from_slice(&w);
        }
    }
    v
}

fn self_consistent(v: &[u8], line: usize) -> bool {
    v.chunks(line).all(|c| c.chunks(8).all(|w| w == &c[..8]))
        && v.chunks(line)
            .enumerate()
            .all(|(i, c)| u64::from_le_bytes(c[..8].try_into().unwrap()) % 1000 == (i % 5) as u64)
}

const LINE: usize = 64;

fn create(dir: &Path, line: usize, cap: u32) -> (PathBuf, SharedMemory) {
    let path = dir.join("shm");
    let mem = SharedMemory::create(
        &path,
        SharedOptions {
            line_size: line,
            capacity_lines: cap,
            ..SharedOptions::default()
        },
    )
    .unwrap();
    (path, mem)
}

/// The stress loop of one child: intern from the shared family, snapshot,
/// read and check, drop, bind and look up names. Runs `iters` steps (or
/// until killed, when 0).
fn stress(mem: &SharedMemory, seed: u64, iters: u64) {
    let mut rng = Rng::new(seed);
    let mut held: Vec<(SharedSegment, u64)> = Vec::new();
    let mut step = 0u64;
    while iters == 0 || step < iters {
        step += 1;
        match rng.below(10) {
            0..=3 => {
                let kind = rng.below(12);
                let lines = 1 + rng.index(40);
                let c = content(kind, lines, LINE);
                match mem.intern(&c) {
                    Ok(s) => held.push((s, kind)),
                    Err(SharedError::CapacityExhausted { .. }) => held.clear(),
                    Err(e) => panic!("intern: {e}"),
                }
            }
            4 if !held.is_empty() => {
                let i = rng.index(held.len());
                let s = held[i].0.snapshot().unwrap();
                let k = held[i].1;
                held.push((s, k));
            }
            5 | 6 if !held.is_empty() => {
                let i = rng.index(held.len());
                held.swap_remove(i);
            }
            7 if !held.is_empty() => {
                let i = rng.index(held.len());
                mem.bind(&format!("name{}", rng.below(4)), &held[i].0)
                    .unwrap();
            }
            8 => {
                if let Some(s) = mem.lookup(&format!("name{}", rng.below(4))).unwrap() {
                    let v = s.to_vec().unwrap();
                    assert!(self_consistent(&v, LINE), "named segment damaged");
                }
            }
            _ => {}
        }
        for (s, kind) in held.iter().rev().take(2) {
            let v = s.to_vec().unwrap();
            assert!(self_consistent(&v, LINE), "held segment damaged");
            assert_eq!(u64::from_le_bytes(v[..8].try_into().unwrap()) / 1000, *kind);
        }
        if held.len() > 50 {
            held.drain(..25);
        }
    }
}

fn stream_bytes(seed: u64, total: u64, mut f: impl FnMut(&[u8])) {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 65_536];
    let mut left = total;
    let mut i = 0u64;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        // A quarter of the chunks repeat an earlier one: dedup in flight.
        if i % 4 != 3 {
            rng.fill(&mut buf[..n]);
        }
        f(&buf[..n]);
        left -= n as u64;
        i += 1;
    }
}

#[test]
fn child() {
    let role = env("SHM_CHILD");
    if role.is_empty() {
        return;
    }
    let mem = SharedMemory::open(env("SHM_PATH")).unwrap();
    match role.as_str() {
        "stress" => {
            // Two threads on one attachment: the in-operation counter and
            // lock words shared by the threads of a process.
            let seed = env_u64("SHM_SEED");
            let iters = env_u64("SHM_ITERS");
            std::thread::scope(|sc| {
                sc.spawn(|| stress(&mem, seed ^ 0x5555, iters));
                stress(&mem, seed, iters);
            });
        }
        "hold_locks" => {
            let s = mem.intern(b"held by the lock holder").unwrap();
            std::mem::forget(s);
            mem.test_hold_locks_forever(|| {
                std::fs::write(format!("{}.held", env("SHM_PATH")), b"").unwrap();
            });
        }
        "send" => {
            let c = mem.accept(ConnId(env_u64("SHM_CONN") as u32)).unwrap();
            let total = env_u64("SHM_BYTES");
            stream_bytes(env_u64("SHM_SEED"), total, |b| {
                assert_eq!(c.send(b).unwrap(), b.len());
            });
            c.shutdown_write().unwrap();
            // Wait for the reader's close.
            let mut x = [0u8; 1];
            assert_eq!(c.recv(&mut x).unwrap(), 0);
        }
        "send_forever" => {
            let mut c = mem.accept(ConnId(env_u64("SHM_CONN") as u32)).unwrap();
            if let Ok(b) = std::env::var("SHM_DEDUP_BACKLOG") {
                c.set_dedup_backlog(b.parse().unwrap());
            }
            stream_bytes(1, u64::MAX, |b| {
                c.send(b).unwrap();
            });
        }
        "recv_forever" => {
            let c = mem.accept(ConnId(env_u64("SHM_CONN") as u32)).unwrap();
            let mut buf = vec![0u8; 65_536];
            loop {
                if c.recv(&mut buf).unwrap() == 0 {
                    break;
                }
            }
        }
        "echo" => {
            let ids: Vec<u32> = env("SHM_CONNS")
                .split(',')
                .map(|x| x.parse().unwrap())
                .collect();
            let conns: Vec<_> = ids
                .iter()
                .map(|&i| mem.accept(ConnId(i)).unwrap())
                .collect();
            let mut buf = vec![0u8; 4096];
            let mut open = conns.len();
            while open > 0 {
                open = 0;
                for c in &conns {
                    let n = c.recv(&mut buf).unwrap();
                    if n == 0 {
                        continue;
                    }
                    open += 1;
                    buf[..n].reverse();
                    c.send(&buf[..n]).unwrap();
                }
            }
        }
        r => panic!("unknown role {r}"),
    }
}

#[test]
fn processes_share_lines_names_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mem) = create(dir.path(), LINE, 1 << 15);
    let kids: Vec<Child> = (0..4)
        .map(|i| {
            spawn(
                "stress",
                &path,
                &[
                    ("SHM_SEED", (100 + i).to_string()),
                    ("SHM_ITERS", "3000".into()),
                ],
            )
        })
        .collect();
    // The parent takes part too.
    stress(&mem, 99, 1500);
    for mut k in kids {
        assert!(k.wait().unwrap().success(), "a stress child failed");
    }
    let c = mem.check().unwrap();
    assert!(c.is_clean(), "{c:?}");
    assert_eq!(c.dead_processes, 0);
    for i in 0..4 {
        mem.unbind(&format!("name{i}")).unwrap();
    }
    let c = mem.check().unwrap();
    assert!(c.is_clean() && c.reachable == 0, "{c:?}");
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mem) = create(dir.path(), LINE, 1 << 15);
    let a = mem.intern(&content(77, 30, LINE)).unwrap();
    mem.bind("anchor", &a).unwrap();
    let mut rng = Rng::new(5);
    let mut kids: Vec<Child> = (0..3)
        .map(|i| {
            spawn(
                "stress",
                &path,
                &[("SHM_SEED", i.to_string()), ("SHM_ITERS", "0".into())],
            )
        })
        .collect();
    let rounds = 30;
    for r in 0..rounds {
        std::thread::sleep(Duration::from_millis(10 + rng.below(100)));
        let i = rng.index(kids.len());
        if let Ok(Some(st)) = kids[i].try_wait() {
            panic!("a stress child exited by itself: {st}");
        }
        kill(&mut kids[i]);
        kids[i] = spawn(
            "stress",
            &path,
            &[
                ("SHM_SEED", (1000 + r).to_string()),
                ("SHM_ITERS", "0".into()),
            ],
        );
        // The survivors (and we) go on; our segment is intact.
        assert!(self_consistent(&a.to_vec().unwrap(), LINE));
        if r % 3 == 0 {
            mem.reclaim().unwrap();
            assert!(self_consistent(&a.to_vec().unwrap(), LINE));
        }
    }
    // Let the last children attach, so that they die holding references.
    mem.reclaim().unwrap();
    while mem.stats().processes < 1 + kids.len() as u64 {
        for k in &mut kids {
            if let Ok(Some(st)) = k.try_wait() {
                panic!("a stress child exited by itself: {st}");
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    for k in &mut kids {
        if let Ok(Some(st)) = k.try_wait() {
            panic!("a stress child exited by itself: {st}");
        }
        kill(k);
    }
    // The check counts the dead children's ledgers as roots. (If one was
    // killed in the middle of a recovery of its own, the check first takes
    // that recovery over, which reclaims them all.)
    let recoveries = mem.stats().recoveries;
    let c = mem.check().unwrap();
    if mem.stats().recoveries == recoveries {
        assert_eq!(c.dead_processes, kids.len() as u64, "{c:?}");
        let n = mem.reclaim().unwrap();
        assert_eq!(n as usize, kids.len(), "the last children died unreclaimed");
    } else {
        assert_eq!(c.dead_processes, 0, "{c:?}");
    }
    let c = mem.check().unwrap();
    assert!(c.is_clean(), "{c:?}");
    assert_eq!(c.dead_processes, 0);
    assert!(mem.stats().recoveries >= 1);
    for i in 0..4 {
        if let Some(s) = mem.lookup(&format!("name{i}")).unwrap() {
            assert!(self_consistent(&s.to_vec().unwrap(), LINE));
        }
        mem.unbind(&format!("name{i}")).unwrap();
    }
    assert_eq!(mem.lookup("anchor").unwrap().unwrap(), a);
    mem.unbind("anchor").unwrap();
    drop(a);
    let c = mem.check().unwrap();
    assert!(c.is_clean() && c.reachable == 0, "{c:?}");
}

fn stream_test(total: u64, line: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (path, mem) = create(dir.path(), line, 1 << 14);
    let c = mem.connect().unwrap();
    let mut kid = spawn(
        "send",
        &path,
        &[
            ("SHM_CONN", c.id().0.to_string()),
            ("SHM_BYTES", total.to_string()),
            ("SHM_SEED", "42".into()),
        ],
    );
    let t0 = Instant::now();
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 17];
    let mut got = 0u64;
    loop {
        let n = c.recv(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(c);
    assert!(kid.wait().unwrap().success());
    let mut want = blake3::Hasher::new();
    stream_bytes(42, total, |b| {
        want.update(b);
    });
    assert_eq!(got, total);
    assert_eq!(h.finalize(), want.finalize(), "stream digest");
    eprintln!(
        "stream {} MiB at {} B lines: {:.0} MiB/s",
        total >> 20,
        line,
        total as f64 / secs / 1048576.0
    );
    let chk = mem.check().unwrap();
    assert!(chk.is_clean() && chk.reachable == 0, "{chk:?}");
}

#[test]
fn stream_between_processes_by_digest() {
    stream_test(48 << 20, 4096);
    stream_test(8 << 20, 64);
}

/// The full 1 GiB stream of the issue (`cargo test --release -p hicamp
/// --test shared_procs -- --ignored`).
#[test]
#[ignore]
fn stream_1gib_between_processes_by_digest() {
    stream_test(1 << 30, 4096);
}

#[test]
fn ping_pong_over_many_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mem) = create(dir.path(), LINE, 1 << 14);
    let conns: Vec<_> = (0..24).map(|_| mem.connect().unwrap()).collect();
    let ids: Vec<String> = conns.iter().map(|c| c.id().0.to_string()).collect();
    let mut kid = spawn("echo", &path, &[("SHM_CONNS", ids.join(","))]);
    let mut rng = Rng::new(9);
    let mut buf = vec![0u8; 4096];
    for round in 0..200u32 {
        for (i, c) in conns.iter().enumerate() {
            let n = 1 + rng.index(300);
            let mut msg = format!("c{i} r{round} ").into_bytes();
            msg.resize(n.max(msg.len()), b'a' + (round % 26) as u8);
            c.send(&msg).unwrap();
            let mut got = 0;
            while got < msg.len() {
                got += c.recv(&mut buf[got..msg.len()]).unwrap();
            }
            msg.reverse();
            assert_eq!(&buf[..msg.len()], &msg[..], "conn {i} round {round}");
        }
    }
    for c in &conns {
        c.shutdown_write().unwrap();
    }
    assert!(kid.wait().unwrap().success());
    drop(conns);
    let chk = mem.check().unwrap();
    assert!(chk.is_clean() && chk.reachable == 0, "{chk:?}");
}

#[test]
fn writer_killed_mid_transfer_gives_eof_and_no_leak() {
    // The default (owned lines, interned past a backlog), then owned lines only
    // (no index: the killed writer's slots are freed by the recount alone).
    for backlog in [hicamp::shared::DEDUP_BACKLOG, u64::MAX] {
        writer_killed(backlog);
    }
}

fn writer_killed(backlog: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (path, mem) = create(dir.path(), 4096, 1 << 13);
    let c = mem.connect().unwrap();
    let mut kid = spawn(
        "send_forever",
        &path,
        &[
            ("SHM_CONN", c.id().0.to_string()),
            ("SHM_DEDUP_BACKLOG", backlog.to_string()),
        ],
    );
    let mut buf = vec![0u8; 65_536];
    let mut got = 0u64;
    while got < 32 << 20 {
        got += c.recv(&mut buf).unwrap() as u64;
    }
    kill(&mut kid);
    // Drain what it had sent, then EOF (as TCP gives after a killed sender).
    loop {
        match c.recv(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(got >= 32 << 20);
    assert!(mem.stats().recoveries >= 1);
    drop(c);
    let chk = mem.check().unwrap();
    assert!(chk.is_clean() && chk.reachable == 0, "{chk:?}");
}

#[test]
fn reader_killed_mid_transfer_resets_the_writer_and_no_leak() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mem) = create(dir.path(), 4096, 1 << 13);
    let c = mem.connect().unwrap();
    let mut kid = spawn("recv_forever", &path, &[("SHM_CONN", c.id().0.to_string())]);
    let mut rng = Rng::new(2);
    let chunk = rng.bytes(65_536);
    for _ in 0..200 {
        c.send(&chunk).unwrap();
    }
    kill(&mut kid);
    let t0 = Instant::now();
    let err = loop {
        match c.send(&chunk) {
            Ok(_) => assert!(t0.elapsed() < Duration::from_secs(60), "no reset"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, SharedError::Reset);
    drop(c);
    let chk = mem.check().unwrap();
    assert!(chk.is_clean() && chk.reachable == 0, "{chk:?}");
}

#[test]
fn locks_held_by_a_killed_process_are_recovered_by_the_next_locker() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mem) = create(dir.path(), LINE, 1 << 14);
    let a = mem.intern(&content(5, 10, LINE)).unwrap();
    mem.bind("a", &a).unwrap();
    let mut kid = spawn("hold_locks", &path, &[]);
    // Wait until it holds them.
    let flag = PathBuf::from(format!("{}.held", path.display()));
    while !flag.exists() {
        if let Ok(Some(st)) = kid.try_wait() {
            panic!("the lock holder exited: {st}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(&mut kid);
    // No explicit reclaim: the intern, the bind and the lookup meet the dead
    // owner's locks, give up their operation, recover and retry.
    let recoveries = mem.stats().recoveries;
    let b = mem.intern(&content(6, 40, LINE)).unwrap();
    mem.bind("b", &b).unwrap();
    assert_eq!(mem.lookup("a").unwrap().unwrap(), a);
    assert!(
        mem.stats().recoveries > recoveries,
        "recovered by the locker"
    );
    assert_eq!(b.to_vec().unwrap(), content(6, 40, LINE));
    drop((a, b));
    mem.unbind("a").unwrap();
    mem.unbind("b").unwrap();
    let c = mem.check().unwrap();
    assert!(
        c.is_clean() && c.reachable == 0 && c.dead_processes == 0,
        "{c:?}"
    );
}

#[test]
fn a_dead_process_slot_is_taken_over_when_all_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shm");
    let mem = SharedMemory::create(
        &path,
        SharedOptions {
            line_size: LINE,
            capacity_lines: 1 << 12,
            procs: 2,
            ..SharedOptions::default()
        },
    )
    .unwrap();
    let mut kid = spawn("hold_locks", &path, &[]);
    let flag = PathBuf::from(format!("{}.held", path.display()));
    while !flag.exists() {
        if let Ok(Some(st)) = kid.try_wait() {
            panic!("the child exited: {st}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Both slots are used; a third attachment fails while the child lives.
    assert!(matches!(
        SharedMemory::open(&path),
        Err(SharedError::TooManyProcesses(2))
    ));
    kill(&mut kid);
    let second = SharedMemory::open(&path).unwrap();
    let s = second.intern(b"after the takeover").unwrap();
    assert_eq!(s.to_vec().unwrap(), b"after the takeover");
    drop(s);
    drop(second);
    let c = mem.check().unwrap();
    assert!(
        c.is_clean() && c.reachable == 0 && c.dead_processes == 0,
        "{c:?}"
    );
}

#[test]
fn a_forked_child_must_open_the_memory_again() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mem) = create(dir.path(), LINE, 1 << 12);
    let a = mem.intern(b"the parent's").unwrap();
    // SAFETY: the child only calls this crate's functions (which touch the
    // mapping, /proc and the allocator, all fork-safe in glibc) and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = (|| {
            // The inherited handle refuses to work, its segment too.
            if !matches!(mem.intern(b"x"), Err(SharedError::Forked)) {
                return 1;
            }
            if !matches!(a.snapshot(), Err(SharedError::Forked)) {
                return 2;
            }
            // A fresh attachment works.
            let Ok(own) = SharedMemory::open(&path) else {
                return 3;
            };
            match own.intern(b"the parent's") {
                Ok(s) if s.root() == a.root() => {}
                _ => return 4,
            }
            0
        })();
        // Skip every destructor: the inherited handles must not detach the
        // parent (their drops would be no-ops anyway).
        // SAFETY: _exit ends the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child died: {status}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "child step failed");
    // The parent's handle still works, and the child's attachment (which
    // exited without detaching) is reclaimed.
    assert_eq!(a.snapshot().unwrap().to_vec().unwrap(), b"the parent's");
    mem.reclaim().unwrap();
    drop(a);
    let c = mem.check().unwrap();
    assert!(
        c.is_clean() && c.reachable == 0 && c.dead_processes == 0,
        "{c:?}"
    );
}
