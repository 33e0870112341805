//! The recovery experiment: each server runs the WAL workload (unique bodies) in a child
//! process on files, printing `ack K` for every request it has answered (after its durability
//! point: the commit for HICAMP, the batch's fence for PASTE, the per-request fence for Linux);
//! the parent SIGKILLs it mid-run, then reopens its files (HICAMP: `Memory::open`, which
//! recovers the memory) and counts which acknowledged records come back intact.
//!
//! PASTE's own code has no recovery path (its server deletes its files at start). What its
//! files allow is read here: the zero-copy log's 8-byte records point into held buffers, which
//! the circular reuse of the extra buffers recycles (only the last `extra` bodies can still be
//! there), and nothing in a record tells a current one from a stale one (no sequence number,
//! no checksum, no persisted head): a stale record returns another request's bytes. The copy
//! log keeps its bodies until it wraps, but has no head either.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hicamp::{Durability, Memory};
use serde::Serialize;

use super::models::{
    entry_bodies, HicampModel, LinuxModel, Model, ModelError, ModelKind, PasteModel,
};
use super::paste::{copy_entry_len, decode_record, CopyLog, ZeroCopyLog, BUF_SIZE};
use super::region::Region;
use super::traffic::{unique_body, Traffic, Workload};
use crate::workload::WAL_BODY_LEN;

/// Connections (requests per batch) of the recovery runs.
pub const RECOVERY_CONNECTIONS: usize = 10;

/// How a child server is set up.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    /// The model.
    pub model: ModelKind,
    /// Its files.
    pub dir: PathBuf,
    /// Traffic seed.
    pub seed: u64,
    /// PASTE's extra buffers.
    pub extra: u32,
    /// Log records (zero-copy log slots; copy-log entries).
    pub log_records: usize,
    /// Stop after this many records (the parent kills it earlier).
    pub limit: u64,
    /// HICAMP: one commit per batch.
    pub group_commit: bool,
    /// First request number (a restarted server continues after the acknowledged ones).
    pub first: u64,
}

/// One model's recovery result.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryResult {
    /// Model.
    pub model: &'static str,
    /// Requests the server acknowledged before SIGKILL.
    pub acknowledged: u64,
    /// Of those, records found intact after the restart.
    pub recovered: u64,
    /// Acknowledged records not found.
    pub lost: u64,
    /// Log records whose data is another request's, or garbage (returned wrongly by a
    /// recovery that trusts the log).
    pub stale_records: u64,
    /// Log records or map entries found.
    pub records_found: u64,
    /// Restarts after the first kill that logged more before being killed again.
    pub restarts: u32,
    /// Setup and explanation.
    pub note: String,
}

fn file_region(dir: &Path, name: &str, len: usize) -> io::Result<Region> {
    Region::file(&dir.join(name), len, Durability::CacheLine, 0)
}

/// The child: serves WAL batches and prints `ack K` lines until `limit` records or killed.
pub fn serve_wal(spec: &ServeSpec, out: &mut impl Write) -> Result<(), ModelError> {
    std::fs::create_dir_all(&spec.dir)?;
    let dir = spec.dir.clone();
    let mut m: Box<dyn Model> = match spec.model {
        ModelKind::Hicamp => {
            let path = spec.dir.join("hicamp.mem");
            let mem = if path.exists() {
                // A restart: opening the file recovers it after the kill.
                Memory::open(&path)?
            } else {
                HicampModel::memory(&spec.dir, true, 0, spec.limit.max(1024) * 2)?
            };
            let mut h = HicampModel::new(mem, true)?;
            h.set_group_commit(spec.group_commit);
            Box::new(h)
        }
        ModelKind::Paste | ModelKind::PasteCopy => Box::new(PasteModel::new(
            Some(spec.model == ModelKind::Paste),
            spec.extra,
            spec.log_records,
            |name, len| file_region(&dir, name, len),
        )?),
        ModelKind::Linux => Box::new(LinuxModel::new(
            RECOVERY_CONNECTIONS,
            Some(file_region(
                &dir,
                "linux.log",
                spec.log_records * copy_entry_len(WAL_BODY_LEN),
            )?),
        )?),
    };
    let traffic = Traffic::new(Workload::Wal, 64, spec.seed);
    let conns: Vec<usize> = (0..RECOVERY_CONNECTIONS).collect();
    let mut done = Vec::new();
    let mut k = spec.first;
    while k < spec.first + spec.limit {
        let frames: Vec<(usize, Vec<u8>)> = conns
            .iter()
            .map(|&c| (c, traffic.frame(k + c as u64, c)))
            .collect();
        m.arrive(&frames)?;
        m.serve(Instant::now(), &mut done)?;
        done.clear();
        let mut s = String::new();
        for i in 0..conns.len() as u64 {
            s.push_str(&format!("ack {}\n", k + i));
        }
        out.write_all(s.as_bytes())?;
        out.flush()?;
        m.settle(&conns)?;
        k += conns.len() as u64;
    }
    Ok(())
}

/// `k` of a recovered body if it is exactly request `k`'s body.
fn verify(seed: u64, body: &[u8]) -> Option<u64> {
    if body.len() != WAL_BODY_LEN {
        return None;
    }
    let k = u64::from_le_bytes(body[..8].try_into().ok()?);
    (unique_body(seed, k) == body).then_some(k)
}

/// What the files of a killed server give back: (records found, verified `k`s, stale).
///
/// The logs are written in request order and sized not to wrap, so log slot `j` should hold
/// request `j`: a slot whose bytes are not request `j`'s body is stale (its buffer was
/// recycled and overwritten). A map entry is whole or absent.
pub fn recover(spec: &ServeSpec) -> Result<(u64, HashSet<u64>, u64), ModelError> {
    let mut ok = HashSet::new();
    let mut found = 0;
    let mut stale = 0;
    let mut count = |expect: Option<u64>, body: Option<&[u8]>| {
        found += 1;
        match body.and_then(|b| verify(spec.seed, b)) {
            Some(k) if expect.map_or(true, |e| e == k) => {
                ok.insert(k);
            }
            _ => stale += 1,
        }
    };
    match spec.model {
        ModelKind::Hicamp => {
            let mem = Memory::open(spec.dir.join("hicamp.mem"))?;
            let map = mem.map();
            for id in map.ids() {
                let Ok(seg) = map.get(id) else { continue };
                for body in entry_bodies(&seg) {
                    count(None, Some(&body));
                }
            }
        }
        ModelKind::Paste => {
            let pool = std::fs::read(spec.dir.join("paste.pool"))?;
            let log = std::fs::read(spec.dir.join("paste.log"))?;
            for (j, r) in ZeroCopyLog::scan(&log).into_iter().enumerate() {
                let (idx, off, len) = decode_record(r);
                let at = idx as usize * BUF_SIZE + off;
                count(Some(j as u64), pool.get(at..at + len));
            }
        }
        ModelKind::PasteCopy | ModelKind::Linux => {
            let name = if spec.model == ModelKind::Linux {
                "linux.log"
            } else {
                "paste-copy.log"
            };
            let log = std::fs::read(spec.dir.join(name))?;
            for (j, b) in CopyLog::scan(&log, WAL_BODY_LEN).into_iter().enumerate() {
                count(Some(j as u64), Some(b));
            }
        }
    }
    Ok((found, ok, stale))
}

/// Runs the child server (requests from `first` on) until `acked` holds `kill_after`
/// acknowledgements, then SIGKILLs it; acknowledgements written before the kill count.
fn run_and_kill(
    exe: &Path,
    spec: &ServeSpec,
    first: u64,
    kill_after: u64,
    acked: &mut HashSet<u64>,
) -> Result<(), String> {
    let mut child = Command::new(exe)
        .args([
            "compare",
            "--serve-wal",
            spec.model.name(),
            "--files",
            &spec.dir.to_string_lossy(),
            "--seed",
            &spec.seed.to_string(),
            "--extra",
            &spec.extra.to_string(),
            "--log-records",
            &spec.log_records.to_string(),
            "--limit",
            &spec.limit.to_string(),
            "--first",
            &first.to_string(),
            "--hicamp-commit",
            if spec.group_commit { "batch" } else { "record" },
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let t = Instant::now();
    let mut killed = false;
    let parse = |line: &str| {
        line.strip_prefix("ack ")
            .and_then(|k| k.parse::<u64>().ok())
    };
    for line in lines.by_ref() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(k) = parse(&line) {
            acked.insert(k);
        }
        if acked.len() as u64 >= kill_after || t.elapsed() > Duration::from_secs(60) {
            // SIGKILL, mid-run: the server is still serving.
            child.kill().map_err(|e| e.to_string())?;
            killed = true;
            break;
        }
    }
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(k) = parse(&line) {
            acked.insert(k);
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !killed {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = io::Read::read_to_string(&mut e, &mut err);
        }
        return Err(format!(
            "{} server ended before the kill ({status}): {}",
            spec.model.name(),
            err.trim()
        ));
    }
    Ok(())
}

/// Runs the experiment for `model`: `exe` is the `hicamp` binary (its hidden
/// `compare --serve-wal` mode is the child); killed after `kill_after` acknowledgements.
pub fn experiment(
    exe: &Path,
    model: ModelKind,
    base: &Path,
    seed: u64,
    kill_after: u64,
    group_commit: bool,
) -> Result<RecoveryResult, String> {
    let dir = base.join(format!("recovery-{}", model.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let spec = ServeSpec {
        model,
        dir: dir.clone(),
        seed,
        extra: (kill_after / 3).max(16) as u32,
        log_records: (kill_after * 5) as usize,
        limit: kill_after * 4,
        group_commit,
        first: 0,
    };
    let mut acked = HashSet::new();
    run_and_kill(exe, &spec, 0, kill_after, &mut acked)?;
    // HICAMP: restart on the same file (Memory::open recovers it), log more, kill again.
    let mut restarts = 0;
    if model == ModelKind::Hicamp {
        let first = acked.iter().max().map_or(0, |k| k + 1);
        let before = acked.len() as u64;
        run_and_kill(exe, &spec, first, before + kill_after / 2, &mut acked)?;
        restarts = 1;
    }
    let (found, ok, stale) = recover(&spec).map_err(|e| e.to_string())?;
    let recovered = acked.iter().filter(|k| ok.contains(k)).count() as u64;
    let acknowledged = acked.len() as u64;
    let note = match model {
        ModelKind::Hicamp => format!(
            "killed, restarted on its file (Memory::open recovers it), killed again; each map entry committed before its ack holds {} (phttpd's record layout)",
            if group_commit { "one RX batch of records" } else { "one record" }
        ),
        ModelKind::Paste => format!(
            "{} extra buffers + {} RX slots: a body survives until its recycled buffer is overwritten by a later frame; older records then point at other requests' bytes and nothing marks them stale (no head, sequence or checksum); PASTE has no recovery code",
            spec.extra, super::models::RING_SLOTS
        ),
        ModelKind::PasteCopy => format!(
            "copy log of {} entries, scanned from its start until an empty entry; without a persisted head a wrapped log cannot be ordered",
            spec.log_records
        ),
        ModelKind::Linux => format!(
            "the same copy log ({} entries) written by the epoll server",
            spec.log_records
        ),
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RecoveryResult {
        model: model.name(),
        acknowledged,
        recovered,
        lost: acknowledged - recovered,
        stale_records: stale,
        records_found: found,
        restarts,
        note,
    })
}
