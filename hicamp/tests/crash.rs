//! Crash consistency. A child process (this test binary, re-executed) opens a
//! memory file and commits segments in a loop, logging an intent before and a
//! record after every durable operation; the parent SIGKILLs it at a random
//! moment, reopens the file (recovery), and checks that
//!
//! * every operation whose call returned is there, with exactly its bytes;
//! * an operation in flight left either the old or the new state;
//! * fsck is clean after recovery and a clean close;
//! * nothing leaks: live lines stay bounded round after round.
//!
//! `HICAMP_CRASH_ROUNDS` sets the number of kill points (default 200).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hicamp::{fsck, Config, Durability, Error, Memory, SegmentId};
use testkit::Rng;

const KEYS: u64 = 12;
const MAX_LIVE_LINES: u64 = 12_000;

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len)
        .map(|i| {
            let x = rng.byte();
            match (i / 64 + seed as usize) % 6 {
                0 => 0,
                1 => b'=',
                _ => x,
            }
        })
        .collect()
}

fn config() -> Config {
    Config {
        line_size: 64,
        capacity_lines: 1 << 15,
        map_capacity: 512,
        durability: Durability::CacheLine,
        pm_write_latency_ns: 0,
    }
}

/// The child: runs until killed. A no-op when run as an ordinary test.
#[test]
fn crash_child() {
    let (Ok(file), Ok(log), Ok(seed)) = (
        std::env::var("HICAMP_CRASH_FILE"),
        std::env::var("HICAMP_CRASH_LOG"),
        std::env::var("HICAMP_CRASH_SEED"),
    ) else {
        return;
    };
    let mem = if Path::new(&file).exists() {
        Memory::open(&file).unwrap()
    } else {
        Memory::create(&file, config()).unwrap()
    };
    let history = std::fs::read_to_string(&log).unwrap_or_default();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    // The log is only ever appended to (a rewrite could itself be killed). A
    // record torn by the last kill is closed with "~", which no parser
    // accepts, so replay skips it.
    if !history.is_empty() && !history.ends_with('\n') {
        log.write_all(b"~\n").unwrap();
    }
    let mut rec = |s: String| log.write_all(s.as_bytes()).unwrap();
    // Resolve the operation the last kill interrupted: look at what the file
    // holds and log whether it happened ("D"/"w"/"x") or not ("C"/"c").
    let model = replay(&history);
    for (k, (_, pending)) in &model.keys {
        if let Some(p) = pending {
            let actual = mem.get_named(&format!("k{k}")).unwrap().map(|s| s.to_vec());
            rec(if actual == *p {
                format!("D {k}\n")
            } else {
                format!("C {k}\n")
            });
        }
    }
    let mut scratch = HashSet::new();
    for (id, (_, pending)) in &model.scratch {
        let actual = mem.map().get(SegmentId(*id)).ok().map(|s| s.to_vec());
        match pending {
            Some(p) if actual == *p => {
                rec(format!("{} {id}\n", if p.is_some() { "w" } else { "x" }));
            }
            Some(_) => rec(format!("c {id}\n")),
            None => {}
        }
        if actual.is_some() {
            scratch.insert(*id);
        }
    }
    // Entries a crash left between their creation and the log record (or
    // between a bind's insert and its directory commit) are unknown: drop them.
    let named: HashSet<SegmentId> = mem.names().unwrap().into_iter().map(|n| n.id).collect();
    for id in mem.map().ids() {
        if id.get() != 0 && !named.contains(&id) && !scratch.contains(&id.get()) {
            mem.map().delete(id).unwrap();
        }
    }
    let mut rng = Rng::new(seed.parse::<u64>().unwrap());
    loop {
        let s = rng.next_u64() >> 16;
        let len = rng.below(6000) as usize;
        match rng.below(10) {
            0..=4 => {
                let k = rng.below(KEYS);
                rec(format!("I {k} {s} {len}\n"));
                mem.bind(&format!("k{k}"), mem.segment(&content(s, len)).unwrap())
                    .unwrap();
                rec(format!("D {k}\n"));
            }
            5 => {
                let k = rng.below(KEYS);
                rec(format!("R {k}\n"));
                mem.unbind(&format!("k{k}")).unwrap();
                rec(format!("r {k}\n"));
            }
            6 if scratch.len() < 12 => {
                let id = mem.map().create(&content(s, len)).unwrap();
                scratch.insert(id.get());
                rec(format!("N {} {s} {len}\n", id.get()));
            }
            7 | 8 if !scratch.is_empty() => {
                let mut ids: Vec<u32> = scratch.iter().copied().collect();
                ids.sort();
                let id = ids[rng.below(ids.len() as u64) as usize];
                let off = rng.below(8000);
                let wl = rng.below(300) as usize;
                rec(format!("W {id} {off} {s} {wl}\n"));
                mem.map()
                    .write_at(SegmentId(id), off, &content(s, wl))
                    .unwrap();
                rec(format!("w {id}\n"));
            }
            _ if !scratch.is_empty() => {
                let id = *scratch.iter().min().unwrap();
                rec(format!("X {id}\n"));
                mem.map().delete(SegmentId(id)).unwrap();
                scratch.remove(&id);
                rec(format!("x {id}\n"));
            }
            _ => {}
        }
    }
}

/// A state an operation in flight may have left: `None` is "absent".
type InFlight = Option<Option<Vec<u8>>>;

/// What the log says the file must hold.
#[derive(Default, Debug)]
struct Model {
    /// key -> (committed value, value of an operation in flight).
    keys: HashMap<u64, (Option<Vec<u8>>, InFlight)>,
    /// scratch id -> (committed bytes, state of an operation in flight).
    scratch: HashMap<u32, (Vec<u8>, InFlight)>,
}

fn replay(log: &str) -> Model {
    let mut m = Model::default();
    // A record torn by the kill has no newline: ignore it.
    let complete = match log.rfind('\n') {
        Some(i) => &log[..=i],
        None => "",
    };
    for line in complete.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let arity = match f[0] {
            "I" => 4,
            "N" => 4,
            "W" => 5,
            _ => 2,
        };
        if line.ends_with('~')
            || f.len() != arity
            || f[1..].iter().any(|x| x.parse::<u64>().is_err())
        {
            continue; // a record torn by a kill
        }
        let n = |i: usize| f[i].parse::<u64>().unwrap();
        match f[0] {
            "I" => {
                m.keys.entry(n(1)).or_default().1 = Some(Some(content(n(2), n(3) as usize)));
            }
            "R" => m.keys.entry(n(1)).or_default().1 = Some(None),
            "D" | "r" => {
                let e = m.keys.get_mut(&n(1)).unwrap();
                e.0 = e.1.take().unwrap();
            }
            "C" => m.keys.get_mut(&n(1)).unwrap().1 = None,
            "c" => m.scratch.get_mut(&(n(1) as u32)).unwrap().1 = None,
            "N" => {
                m.scratch
                    .insert(n(1) as u32, (content(n(2), n(3) as usize), None));
            }
            "W" => {
                let e = m.scratch.get_mut(&(n(1) as u32)).unwrap();
                let mut v = e.0.clone();
                let (off, data) = (n(2) as usize, content(n(3), n(4) as usize));
                if v.len() < off + data.len() {
                    v.resize(off + data.len(), 0);
                }
                v[off..off + data.len()].copy_from_slice(&data);
                e.1 = Some(Some(v));
            }
            "w" => {
                let e = m.scratch.get_mut(&(n(1) as u32)).unwrap();
                e.0 = e.1.take().unwrap().unwrap();
            }
            "X" => m.scratch.get_mut(&(n(1) as u32)).unwrap().1 = Some(None),
            "x" => {
                m.scratch.remove(&(n(1) as u32));
            }
            other => panic!("bad log record {other:?}"),
        }
    }
    m
}

fn verify(mem: &Memory, model: &Model) -> Result<(), String> {
    for (k, (done, pending)) in &model.keys {
        let actual = mem.get_named(&format!("k{k}")).unwrap().map(|s| s.to_vec());
        let ok = actual == *done || pending.as_ref().is_some_and(|p| actual == *p);
        if !ok {
            return Err(format!(
                "key {k}: found {:?} bytes, committed {:?}, in flight {:?}",
                actual.as_ref().map(Vec::len),
                done.as_ref().map(Vec::len),
                pending.as_ref().map(|p| p.as_ref().map(Vec::len))
            ));
        }
    }
    for (id, (done, pending)) in &model.scratch {
        let actual = match mem.map().get(SegmentId(*id)) {
            Ok(s) => Some(s.to_vec()),
            Err(Error::NoSuchSegment(_)) => None,
            Err(e) => return Err(e.to_string()),
        };
        let ok = actual.as_ref() == Some(done) || pending.as_ref().is_some_and(|p| actual == *p);
        if !ok {
            return Err(format!("scratch {id}: content differs from the log"));
        }
    }
    Ok(())
}

#[test]
fn crash_recovery() {
    let rounds: u32 = std::env::var("HICAMP_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crash.hicamp");
    let log = dir.path().join("crash.log");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(0x00C0_FFEE);
    let mut recovered_ops = 0usize;
    let t0 = Instant::now();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("HICAMP_CRASH_FILE", &file)
            .env("HICAMP_CRASH_LOG", &log)
            .env("HICAMP_CRASH_SEED", rng.next_u64().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(2_000 + rng.below(40_000)));
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "round {round}: the child exited by itself ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let history = std::fs::read_to_string(&log).unwrap_or_default();
        recovered_ops = history.lines().count();
        let model = replay(&history);
        if !file.exists() {
            continue; // killed before the file was created
        }
        let mem = match Memory::open(&file) {
            Ok(m) => m,
            // Killed inside create, before the directory entry was written.
            Err(Error::Corrupt { .. }) if model.keys.is_empty() && model.scratch.is_empty() => {
                std::fs::remove_file(&file).unwrap();
                continue;
            }
            Err(e) => panic!("round {round}: open after kill: {e}"),
        };
        if let Err(e) = verify(&mem, &model) {
            panic!("round {round}: {e}");
        }
        let live = mem.live_lines();
        assert!(
            live < MAX_LIVE_LINES,
            "round {round}: {live} live lines: a leak"
        );
        drop(mem);
        let report = fsck(&file).unwrap();
        assert!(
            report.is_consistent(),
            "round {round}: fsck after recovery: {:?}",
            report.problems
        );
    }
    eprintln!(
        "{rounds} kill points, {recovered_ops} logged operations, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(recovered_ops > 100, "the children did some work");
}
