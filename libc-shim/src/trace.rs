//! Trace mode: the per-process account of socket traffic, the payload capture on the hot path,
//! and the interning thread.
//!
//! ```text
//!  hook (app thread)                     pending (one mutex)          interning thread
//!  real call -> counters (atomics) --->  bytes: [p1 p2 p3 ...]  --->  every 100 ms or 1 MiB:
//!            -> copy payload ---------/  lens:  [n1 n2 n3 ...]        one segment per payload
//!                                                                     per line size, kept alive
//! ```
//!
//! The hot path copies the payload once into a shared buffer; interning (hashing, the dedup
//! index) happens on one background thread, in batches. When the thread falls 256 MiB behind,
//! the application waits for it (the report stays exact; only speed suffers).
//!
//! Every segment is kept alive until the process ends (its handle is forgotten, which keeps its
//! reference and its logical bytes counted), so the memories' statistics describe all the
//! payload the process ever moved: that is the footprint a HICAMP stack would need to hold it.
//!
//! A forked child starts a fresh account (new memories, zero counters, the parent's sockets
//! with fresh per-connection counters): the interning thread does not exist there, the child's
//! traffic is its own, and it writes its own report.

use std::path::PathBuf;
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering::AcqRel, Ordering::Acquire,
    Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hicamp::footprint::{LineSizeReport, ZeroLineCounter};
use hicamp::Memory;
use parking_lot::{Condvar, Mutex};

use crate::config::Config;
use crate::fdtable::{traced, Conn, FdEntry, Kind, Origin, TABLE};
use crate::report::{conn_report, ConnReport, ShimReport};
use crate::{guard, sys};

/// The interning thread wakes at least this often.
const TICK: Duration = Duration::from_millis(100);
/// Pending bytes that wake the interning thread early.
const WAKE_BYTES: usize = 1 << 20;
/// Pending bytes at which the application waits for the interning thread.
const MAX_PENDING: usize = 256 << 20;
/// Connections listed in a report (the totals count every one).
pub const MAX_CONNS: usize = 4096;
/// Arena of each memory (reserved virtually; only used lines cost RAM).
const ARENA_BYTES: u64 = 16 << 30;
/// Payloads up to this size are remembered whole, so that a repeat is a snapshot.
const CACHE_PAYLOAD_MAX: usize = 512;
/// Payloads remembered.
const CACHE_ENTRIES: usize = 1 << 14;

/// Direction of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The process sends.
    Send,
    /// The process receives.
    Recv,
}

macro_rules! calls {
    ($($v:ident = $n:literal,)*) => {
        /// Every interposed function, for the per-call counts of the report.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum Call { $($v,)* }
        /// Names of [`Call`]s, in order.
        pub const CALL_NAMES: &[&str] = &[$($n,)*];
    };
}

calls! {
    Socket = "socket", Socketpair = "socketpair", Bind = "bind", Listen = "listen",
    Accept = "accept", Accept4 = "accept4", Connect = "connect", Shutdown = "shutdown",
    Close = "close", CloseRange = "close_range", Dup = "dup", Dup2 = "dup2", Dup3 = "dup3",
    Fcntl = "fcntl", Fcntl64 = "fcntl64", Ioctl = "ioctl", Getsockopt = "getsockopt",
    Setsockopt = "setsockopt", Send = "send", Sendto = "sendto", Sendmsg = "sendmsg",
    Sendmmsg = "sendmmsg", Write = "write", Writev = "writev", Recv = "recv",
    Recvfrom = "recvfrom", Recvmsg = "recvmsg", Recvmmsg = "recvmmsg", Read = "read",
    Readv = "readv", ReadChk = "__read_chk", RecvChk = "__recv_chk",
    RecvfromChk = "__recvfrom_chk", Sendfile = "sendfile", Sendfile64 = "sendfile64",
    Splice = "splice", Poll = "poll", PollChk = "__poll_chk", Ppoll = "ppoll",
    PpollChk = "__ppoll_chk", Select = "select", Pselect = "pselect",
    EpollCreate = "epoll_create", EpollCreate1 = "epoll_create1", EpollCtl = "epoll_ctl",
    EpollWait = "epoll_wait", EpollPwait = "epoll_pwait", Fork = "fork", Exec = "exec",
    Exit = "_exit",
}

const N_CALLS: usize = CALL_NAMES.len();

/// Payload waiting to be interned.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    lens: Vec<usize>,
}

/// One memory of one line size.
#[derive(Debug)]
struct Sink {
    line_size: usize,
    mem: Option<Memory>,
    zero: ZeroLineCounter,
    error: Option<String>,
}

/// A recent small payload and its segment in each memory (`None` where that memory failed).
///
/// The cached handles are the first occurrence's own references (not extra ones), so the
/// memories' statistics stay exact; an entry that leaves the cache forgets its handles.
#[derive(Debug)]
struct Cached {
    bytes: Vec<u8>,
    segs: Vec<Option<hicamp::Segment>>,
}

impl Drop for Cached {
    fn drop(&mut self) {
        for s in self.segs.drain(..).flatten() {
            std::mem::forget(s);
        }
    }
}

/// The memories and what went into them.
#[derive(Debug, Default)]
struct Interner {
    sinks: Vec<Sink>,
    payloads: u64,
    bytes: u64,
    /// Payloads that repeated a cached one whole (a snapshot per memory, no line lookup).
    snapshot_hits: u64,
    cache: std::collections::HashMap<u64, Cached>,
    spare: Pending,
}

impl Interner {
    fn memory_for(line_size: usize) -> Result<Memory, String> {
        let mut capacity = (ARENA_BYTES / line_size as u64).min(u64::from(u32::MAX - 1));
        loop {
            let config = hicamp::Config {
                line_size,
                capacity_lines: capacity,
                map_capacity: 2,
                ..hicamp::Config::default()
            };
            match Memory::new(config) {
                Ok(m) => return Ok(m),
                Err(e) if capacity <= 1 << 16 => return Err(e.to_string()),
                Err(_) => capacity /= 4,
            }
        }
    }

    fn ingest(&mut self, bytes: &[u8], lens: &[usize]) {
        if self.sinks.is_empty() {
            for &ls in &Config::get().line_sizes {
                let (mem, error) = match Interner::memory_for(ls) {
                    Ok(m) => (Some(m), None),
                    Err(e) => (
                        None,
                        Some(format!("line size {ls}: cannot create a memory: {e}")),
                    ),
                };
                self.sinks.push(Sink {
                    line_size: ls,
                    mem,
                    zero: ZeroLineCounter::new(ls),
                    error,
                });
            }
        }
        let mut off = 0;
        for &n in lens {
            let Some(p) = bytes.get(off..off + n) else {
                break;
            };
            off += n;
            self.payloads += 1;
            self.bytes += n as u64;
            self.ingest_one(p);
        }
    }

    /// Interns one payload into every memory. Every handle made is kept (in the cache) or
    /// forgotten: its reference (and its logical bytes) stay counted for the life of the
    /// process, which is what the report measures.
    fn ingest_one(&mut self, p: &[u8]) {
        let key = (p.len() <= CACHE_PAYLOAD_MAX).then(|| xxhash_rust::xxh3::xxh3_64(p));
        if let Some(c) = key.and_then(|k| self.cache.get(&k)) {
            if c.bytes == p {
                // A repeat: one snapshot per memory, exactly what interning it again would
                // leave behind (the same root, one more reference).
                self.snapshot_hits += 1;
                for (s, seg) in self.sinks.iter_mut().zip(&c.segs) {
                    if let (Some(seg), Some(_)) = (seg, &s.mem) {
                        std::mem::forget(seg.clone());
                        s.zero.feed(p);
                        s.zero.finish_item();
                    }
                }
                return;
            }
        }
        let mut segs = Vec::with_capacity(self.sinks.len());
        for s in &mut self.sinks {
            let Some(mem) = &s.mem else {
                segs.push(None);
                continue;
            };
            match mem.segment(p) {
                Ok(seg) => segs.push(Some(seg)),
                Err(e) => {
                    s.error = Some(format!(
                        "line size {}: interning stopped after {} payload bytes: {e}",
                        s.line_size,
                        mem.stats().logical_bytes
                    ));
                    s.mem = None;
                    segs.push(None);
                    continue;
                }
            }
            s.zero.feed(p);
            s.zero.finish_item();
        }
        match key {
            Some(k) => {
                if self.cache.len() >= CACHE_ENTRIES {
                    self.cache.clear(); // the handles are forgotten, their counts stay
                }
                self.cache.insert(
                    k,
                    Cached {
                        bytes: p.to_vec(),
                        segs,
                    },
                );
            }
            None => segs.into_iter().flatten().for_each(std::mem::forget),
        }
    }

    fn line_sizes(&self) -> Vec<LineSizeReport> {
        self.sinks
            .iter()
            .filter_map(|s| {
                s.mem
                    .as_ref()
                    .map(|m| LineSizeReport::from_stats(&m.stats(), s.zero.zero_bytes()))
            })
            .collect()
    }

    fn errors(&self) -> Vec<String> {
        self.sinks.iter().filter_map(|s| s.error.clone()).collect()
    }
}

/// One process's account (a forked child gets a new one).
#[derive(Debug)]
pub struct Account {
    pid: i32,
    started: Instant,
    started_unix_ms: u64,
    next_conn: AtomicU64,
    conns: Mutex<Vec<Arc<Conn>>>,
    conns_total: AtomicU64,
    sockets_new: AtomicU64,
    calls: [AtomicU64; N_CALLS],
    sent_bytes: AtomicU64,
    received_bytes: AtomicU64,
    send_calls: AtomicU64,
    recv_calls: AtomicU64,
    send_errors: AtomicU64,
    recv_errors: AtomicU64,
    captured_sent: AtomicU64,
    captured_received: AtomicU64,
    uncaptured: AtomicU64,
    sendfile_bytes: AtomicU64,
    splice_bytes: AtomicU64,
    pending: Mutex<Pending>,
    pending_len: AtomicUsize,
    woken: AtomicBool,
    wake: Condvar,
    space: Condvar,
    interner: Mutex<Interner>,
    /// 0: no interning thread yet; 1: running; 2: could not be started (interning inline).
    bg: AtomicU8,
    report_path: Mutex<Option<PathBuf>>,
    finished: AtomicBool,
}

static ACCOUNT: AtomicPtr<Account> = AtomicPtr::new(std::ptr::null_mut());
/// A report was asked for by a signal.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

impl Account {
    fn new() -> Account {
        Account {
            pid: sys::getpid(),
            started: Instant::now(),
            started_unix_ms: sys::unix_millis(),
            next_conn: AtomicU64::new(1),
            conns: Mutex::new(Vec::new()),
            conns_total: AtomicU64::new(0),
            sockets_new: AtomicU64::new(0),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            send_calls: AtomicU64::new(0),
            recv_calls: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            recv_errors: AtomicU64::new(0),
            captured_sent: AtomicU64::new(0),
            captured_received: AtomicU64::new(0),
            uncaptured: AtomicU64::new(0),
            sendfile_bytes: AtomicU64::new(0),
            splice_bytes: AtomicU64::new(0),
            pending: Mutex::new(Pending::default()),
            pending_len: AtomicUsize::new(0),
            woken: AtomicBool::new(false),
            wake: Condvar::new(),
            space: Condvar::new(),
            interner: Mutex::new(Interner::default()),
            bg: AtomicU8::new(0),
            report_path: Mutex::new(None),
            finished: AtomicBool::new(false),
        }
    }

    /// A new connection account, listed in the report (up to [`MAX_CONNS`]).
    pub fn new_conn(
        &self,
        family: crate::fdtable::Family,
        ty: crate::fdtable::SockType,
        origin: Origin,
        fd: i32,
    ) -> Arc<Conn> {
        let c = Arc::new(Conn::new(
            self.next_conn.fetch_add(1, Relaxed),
            family,
            ty,
            origin,
            fd,
        ));
        self.sockets_new.fetch_add(1, Relaxed);
        self.register(&c);
        c
    }

    fn register(&self, c: &Arc<Conn>) {
        self.conns_total.fetch_add(1, Relaxed);
        let mut l = self.conns.lock();
        if l.len() < MAX_CONNS {
            l.push(c.clone());
        }
    }

    /// Counts one call of an interposed function.
    #[inline]
    pub fn count(&self, call: Call) {
        self.calls[call as usize].fetch_add(1, Relaxed);
    }

    fn has_activity(&self) -> bool {
        self.sockets_new.load(Relaxed) > 0
            || self.send_calls.load(Relaxed) > 0
            || self.recv_calls.load(Relaxed) > 0
    }

    /// Appends one payload to the pending buffer (`copy` appends exactly `n` bytes).
    fn capture(&self, n: usize, copy: impl FnOnce(&mut Vec<u8>)) {
        let mut p = self.pending.lock();
        let start = p.bytes.len();
        p.bytes.reserve(n);
        copy(&mut p.bytes);
        let got = p.bytes.len() - start;
        p.lens.push(got);
        self.pending_len.store(p.bytes.len(), Relaxed);
    }

    /// After a capture, with no lock held: start or wake the interning thread, or wait for it.
    fn after_capture(&'static self) {
        let len = self.pending_len.load(Relaxed);
        match self.bg.load(Acquire) {
            1 => {}
            0 => self.start_thread(),
            _ => {
                if len >= WAKE_BYTES {
                    self.flush();
                }
                return;
            }
        }
        if len >= WAKE_BYTES && !self.woken.swap(true, Relaxed) {
            self.wake.notify_one();
        }
        if len >= MAX_PENDING {
            let mut p = self.pending.lock();
            while p.bytes.len() >= MAX_PENDING
                && self.bg.load(Acquire) == 1
                && !self.finished.load(Relaxed)
            {
                self.wake.notify_one();
                self.space.wait_for(&mut p, TICK);
            }
        }
    }

    fn start_thread(&'static self) {
        if self.bg.compare_exchange(0, 1, AcqRel, Acquire).is_err() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("hicamp-shim".into())
            .stack_size(256 << 10)
            .spawn(move || self.thread_main());
        if let Err(e) = spawned {
            self.bg.store(2, Release);
            sys::diag(&format!(
                "cannot start the interning thread ({e}); interning in the application's threads"
            ));
        }
    }

    fn thread_main(&'static self) {
        guard::enter_forever();
        // Interning runs when a CPU would otherwise idle: the application's threads first.
        sys::set_idle_priority();
        let interval = Config::get().interval;
        let mut next_report = interval.map(|d| Instant::now() + d);
        loop {
            {
                let mut p = self.pending.lock();
                if p.bytes.len() < WAKE_BYTES && !SIGNALLED.load(Relaxed) {
                    self.wake.wait_for(&mut p, TICK);
                }
                self.woken.store(false, Relaxed);
            }
            if self.finished.load(Relaxed) {
                return;
            }
            let _ = guard::shielded(|| {
                self.flush();
                let now = Instant::now();
                let periodic = next_report.is_some_and(|t| now >= t);
                if periodic {
                    next_report = interval.map(|d| now + d);
                }
                if SIGNALLED.swap(false, Relaxed) {
                    self.report("signal", false);
                } else if periodic {
                    self.report("periodic", false);
                }
            });
        }
    }

    /// Interns everything pending.
    fn flush(&self) {
        let mut it = self.interner.lock();
        let mut batch = std::mem::take(&mut it.spare);
        {
            let mut p = self.pending.lock();
            std::mem::swap(&mut *p, &mut batch);
            self.pending_len.store(p.bytes.len(), Relaxed);
        }
        self.space.notify_all();
        it.ingest(&batch.bytes, &batch.lens);
        batch.bytes.clear();
        batch.lens.clear();
        if batch.bytes.capacity() <= 2 * MAX_PENDING {
            it.spare = batch;
        }
    }

    /// Builds the report.
    fn build(&self, reason: &str, final_report: bool) -> ShimReport {
        let cfg = Config::get();
        let it = self.interner.lock();
        let mut conns: Vec<ConnReport> = self
            .conns
            .lock()
            .iter()
            .filter(|c| {
                c.sent.load(Relaxed) + c.received.load(Relaxed) > 0
                    || c.origin == Origin::Accept
                    || c.connected.load(Relaxed)
            })
            .filter(|c| !c.listening.load(Relaxed))
            .map(|c| conn_report(c))
            .collect();
        conns.sort_by_key(|c| c.id);
        let total = self.conns_total.load(Relaxed);
        ShimReport {
            tool: "hicamp libc-shim".to_string(),
            mode: "trace".to_string(),
            run_id: cfg.run_id.clone(),
            pid: self.pid,
            ppid: sys::getppid(),
            program: sys::cmdline(),
            reason: reason.to_string(),
            final_report,
            started_unix_ms: self.started_unix_ms,
            duration_secs: self.started.elapsed().as_secs_f64(),
            sent_bytes: self.sent_bytes.load(Relaxed),
            received_bytes: self.received_bytes.load(Relaxed),
            send_calls: self.send_calls.load(Relaxed),
            recv_calls: self.recv_calls.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            recv_errors: self.recv_errors.load(Relaxed),
            captured_sent_bytes: self.captured_sent.load(Relaxed),
            captured_received_bytes: self.captured_received.load(Relaxed),
            uncaptured_bytes: self.uncaptured.load(Relaxed),
            sendfile_bytes: self.sendfile_bytes.load(Relaxed),
            splice_bytes: self.splice_bytes.load(Relaxed),
            copy_avoided_bytes: self.captured_sent.load(Relaxed)
                + self.captured_received.load(Relaxed),
            payloads_interned: it.payloads,
            payload_snapshot_hits: it.snapshot_hits,
            payload_bytes_interned: it.bytes,
            sockets_traced: total,
            connections_omitted: total.saturating_sub(MAX_CONNS as u64),
            calls: CALL_NAMES
                .iter()
                .zip(&self.calls)
                .filter_map(|(n, c)| {
                    let v = c.load(Relaxed);
                    (v > 0).then(|| (n.to_string(), v))
                })
                .collect(),
            connections: conns,
            line_sizes: it.line_sizes(),
            intern_errors: it.errors(),
        }
    }

    /// Interns what is pending and writes the report (files when a prefix is set, else the
    /// summary on stderr for a final report).
    fn report(&self, reason: &str, final_report: bool) {
        self.flush();
        let r = self.build(reason, final_report);
        let text = r.to_text();
        let Some(prefix) = &Config::get().report else {
            if final_report {
                let _ = sys::write_all(2, text.as_bytes());
            }
            return;
        };
        let json = match serde_json::to_vec_pretty(&r) {
            Ok(mut j) => {
                j.push(b'\n');
                j
            }
            Err(e) => {
                sys::diag(&format!("cannot encode the report: {e}"));
                return;
            }
        };
        let mut path = self.report_path.lock();
        if path.is_none() {
            *path = claim_report_path(prefix, self.pid);
        }
        let Some(p) = path.as_ref() else { return };
        if let Err(e) = sys::replace(p, &json) {
            sys::diag(&format!("cannot write the report {}: {e}", p.display()));
            return;
        }
        if let Err(e) = sys::replace(&p.with_extension("txt"), text.as_bytes()) {
            sys::diag(&format!("cannot write the summary: {e}"));
        }
    }
}

/// Picks `PREFIX.PID.json`, or `PREFIX.PID.K.json` when an earlier image of this process (before
/// an exec) took it, creating the file so that no other image takes it.
fn claim_report_path(prefix: &std::path::Path, pid: i32) -> Option<PathBuf> {
    for k in 0..1000 {
        let mut name = prefix.as_os_str().to_owned();
        if k == 0 {
            name.push(format!(".{pid}.json"));
        } else {
            name.push(format!(".{pid}.{k}.json"));
        }
        let p = PathBuf::from(name);
        match sys::create_new(&p, b"") {
            Ok(true) => return Some(p),
            Ok(false) => continue,
            Err(e) => {
                sys::diag(&format!("cannot create the report {}: {e}", p.display()));
                return None;
            }
        }
    }
    sys::diag("cannot find a free report file name");
    None
}

/// This process's account (created on first use).
pub fn account() -> &'static Account {
    let p = ACCOUNT.load(Acquire);
    if !p.is_null() {
        // SAFETY: a non-null ACCOUNT points to a leaked `Box<Account>`, never freed.
        return unsafe { &*p };
    }
    let fresh = Box::into_raw(Box::new(Account::new()));
    match ACCOUNT.compare_exchange(std::ptr::null_mut(), fresh, AcqRel, Acquire) {
        // SAFETY: `fresh` was just leaked and is now published, never freed.
        Ok(_) => unsafe { &*fresh },
        Err(existing) => {
            // SAFETY: `fresh` was never published: this thread owns it.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: as above, a published account is never freed.
            unsafe { &*existing }
        }
    }
}

fn current() -> Option<&'static Account> {
    let p = ACCOUNT.load(Acquire);
    // SAFETY: a non-null ACCOUNT points to a leaked `Box<Account>`, never freed.
    (!p.is_null()).then(|| unsafe { &*p })
}

// ---------------------------------------------------------------------------------------------
// Events from the hooks

/// The entry for a descriptor the shim has not seen born: ask the kernel.
fn found_entry(fd: i32) -> FdEntry {
    match sys::probe(fd) {
        None => FdEntry::kernel(Kind::NotSocket, false),
        Some((family, ty)) => {
            let conn = traced(family, ty).then(|| {
                let c = account().new_conn(family, ty, Origin::Found, fd);
                let a = (sys::sock_addr(fd, false), sys::sock_addr(fd, true));
                c.connected.store(a.1.is_some(), Relaxed);
                *c.addrs.lock() = a;
                c
            });
            FdEntry::kernel(Kind::Socket { family, ty, conn }, false)
        }
    }
}

/// A transfer finished: `ret` is the call's result (bytes, or -1), `captured` the payload bytes
/// `copy` appends (at most `ret`). `uncaptured_kind` says where the bytes not captured went.
pub fn transfer(
    fd: i32,
    dir: Dir,
    ret: isize,
    captured: usize,
    copy: impl FnOnce(&mut Vec<u8>),
    uncaptured: Uncaptured,
) {
    let acct = account();
    if ret < 0 {
        let traced = TABLE.with(fd, |e| e.conn().is_some()).unwrap_or(false);
        if traced {
            match dir {
                Dir::Send => acct.send_errors.fetch_add(1, Relaxed),
                Dir::Recv => acct.recv_errors.fetch_add(1, Relaxed),
            };
        }
        return;
    }
    let total = ret as u64;
    let captured = captured.min(ret as usize);
    let did = TABLE.with_or_insert(
        fd,
        || found_entry(fd),
        |e| {
            let Some(c) = e.conn() else { return false };
            let (bytes, calls, cap) = match dir {
                Dir::Send => (&c.sent, &c.send_calls, &acct.captured_sent),
                Dir::Recv => (&c.received, &c.recv_calls, &acct.captured_received),
            };
            bytes.fetch_add(total, Relaxed);
            calls.fetch_add(1, Relaxed);
            match dir {
                Dir::Send => {
                    acct.sent_bytes.fetch_add(total, Relaxed);
                    acct.send_calls.fetch_add(1, Relaxed);
                }
                Dir::Recv => {
                    acct.received_bytes.fetch_add(total, Relaxed);
                    acct.recv_calls.fetch_add(1, Relaxed);
                }
            }
            let rest = total - captured as u64;
            if rest > 0 {
                acct.uncaptured.fetch_add(rest, Relaxed);
                match uncaptured {
                    Uncaptured::Sendfile => acct.sendfile_bytes.fetch_add(rest, Relaxed),
                    Uncaptured::Splice => acct.splice_bytes.fetch_add(rest, Relaxed),
                    Uncaptured::Other => 0,
                };
            }
            if captured > 0 {
                cap.fetch_add(captured as u64, Relaxed);
                acct.capture(captured, copy);
                true
            } else {
                false
            }
        },
    );
    if did {
        acct.after_capture();
    }
}

/// Where payload that was counted but not captured went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncaptured {
    /// sendfile (the bytes come from a file).
    Sendfile,
    /// splice (the bytes go through a pipe).
    Splice,
    /// Anything else (MSG_TRUNC discards, truncated datagrams).
    Other,
}

/// A new socket (from `socket` or `accept`), or a socketpair end.
pub fn new_socket(
    fd: i32,
    family: i32,
    ty: i32,
    origin: Origin,
    peer: Option<std::net::SocketAddr>,
) {
    let family = crate::fdtable::Family::from_raw(family);
    let nonblocking = ty & libc::SOCK_NONBLOCK != 0;
    let ty = crate::fdtable::SockType::from_raw(ty);
    let conn = traced(family, ty).then(|| {
        let c = account().new_conn(family, ty, origin, fd);
        if origin == Origin::Accept {
            *c.addrs.lock() = (
                sys::sock_addr(fd, false),
                peer.or_else(|| sys::sock_addr(fd, true)),
            );
        }
        c
    });
    TABLE.insert(
        fd,
        FdEntry::kernel(Kind::Socket { family, ty, conn }, nonblocking),
    );
}

/// `connect` returned (0 or EINPROGRESS): remember the addresses.
pub fn connected(fd: i32, peer: Option<std::net::SocketAddr>) {
    let conn = TABLE.with_or_insert(fd, || found_entry(fd), |e| e.conn().cloned());
    if let Some(c) = conn {
        c.connected.store(true, Relaxed);
        *c.addrs.lock() = (sys::sock_addr(fd, false), peer);
    }
}

/// `listen` succeeded.
pub fn listening(fd: i32) {
    if let Some(c) = TABLE.with(fd, |e| e.conn().cloned()).flatten() {
        c.listening.store(true, Relaxed);
    }
}

/// A descriptor is being closed.
pub fn closing(fd: i32) {
    TABLE.remove(fd);
}

/// `close_range` without CLOSE_RANGE_CLOEXEC succeeded or is about to run.
pub fn closing_range(first: u32, last: u32) {
    TABLE.remove_range(first, last);
}

/// `new` is now a duplicate of `old`.
pub fn duplicated(old: i32, new: i32) {
    TABLE.duplicate(old, new, false);
}

/// O_NONBLOCK was set or cleared through the shim.
pub fn set_nonblocking(fd: i32, on: bool) {
    TABLE.update(fd, |e| e.nonblocking = on);
}

// ---------------------------------------------------------------------------------------------
// Process events

/// The process ends (`exit`, `_exit`) or replaces its image (`exec`): write the report when the
/// process traced any socket. After `exec` fails the process goes on and reports again later.
pub fn finish(reason: &str) {
    let Some(acct) = current() else { return };
    if acct.pid != sys::getpid() {
        return; // a vfork child shares the parent's memory: its account is not its own
    }
    let final_report = reason != "exec";
    if final_report && acct.finished.swap(true, Relaxed) {
        return;
    }
    if acct.has_activity() {
        acct.report(reason, true);
    }
}

/// A report was asked for by a signal (async-signal-safe: only sets a flag).
pub fn signal_request() {
    SIGNALLED.store(true, Relaxed);
}

static FORK_UNSAFE: AtomicBool = AtomicBool::new(false);

/// The fork prepare handler: lock the fd table so that the child's copy is consistent.
pub fn fork_prepare() {
    if guard::inside() {
        // fork from a signal handler that interrupted the shim: the table may be mid-change.
        FORK_UNSAFE.store(true, Relaxed);
        return;
    }
    TABLE.lock_all();
}

/// The fork handler in the parent.
pub fn fork_parent() {
    if FORK_UNSAFE.swap(false, Relaxed) {
        return;
    }
    // SAFETY: `fork_prepare` locked the table in this thread and nothing unlocked it.
    unsafe { TABLE.unlock_all() };
}

/// The fork handler in the child: a fresh account; the sockets stay, with fresh counters.
pub fn fork_child() {
    if FORK_UNSAFE.swap(false, Relaxed) {
        crate::disable();
        return;
    }
    // SAFETY: `fork_prepare` locked the table in the thread that forked, which is this
    // process's only thread now.
    unsafe { TABLE.unlock_all() };
    let fresh: &'static Account = Box::leak(Box::new(Account::new()));
    // The parent's account is abandoned, not freed: its locks may be held by threads that do
    // not exist here.
    ACCOUNT.store((fresh as *const Account).cast_mut(), Release);
    SIGNALLED.store(false, Relaxed);
    TABLE.for_each_mut(|_, e| {
        if let Kind::Socket { conn: Some(c), .. } = &mut e.kind {
            let copy = Arc::new(c.fresh_copy(fresh.next_conn.fetch_add(1, Relaxed)));
            fresh.register(&copy);
            *c = copy;
        }
    });
}

/// True when `fd` is known as a stream socket.
pub fn is_stream(fd: i32) -> bool {
    TABLE
        .with(fd, |e| {
            matches!(
                e.kind,
                Kind::Socket {
                    ty: crate::fdtable::SockType::Stream,
                    ..
                }
            )
        })
        .unwrap_or(false)
}

/// `accept`/`accept4` on `lfd` returned `fd`.
pub fn accepted(lfd: i32, fd: i32, flags: i32, peer: Option<std::net::SocketAddr>) {
    let known = TABLE
        .with(lfd, |e| match e.kind {
            Kind::Socket { family, ty, .. } => Some((family, ty)),
            Kind::NotSocket => None,
        })
        .flatten()
        .or_else(|| sys::probe(fd));
    let Some((family, ty)) = known else { return };
    let raw_family = match family {
        crate::fdtable::Family::Inet => libc::AF_INET,
        crate::fdtable::Family::Inet6 => libc::AF_INET6,
        crate::fdtable::Family::Unix => libc::AF_UNIX,
        crate::fdtable::Family::Other(d) => d,
    };
    let raw_ty = match ty {
        crate::fdtable::SockType::Stream => libc::SOCK_STREAM,
        crate::fdtable::SockType::Dgram => libc::SOCK_DGRAM,
        crate::fdtable::SockType::Other(t) => t,
    };
    new_socket(
        fd,
        raw_family,
        raw_ty | (flags & libc::SOCK_NONBLOCK),
        Origin::Accept,
        peer,
    );
}
