//! Local mode: TCP connections between two processes under the shim that attach the same
//! shared HICAMP memory ([`hicamp::shared`]) carry their bytes as snapshots in the memory's
//! connection rings; the kernel's TCP connection stays open underneath.
//!
//! # Settings
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `HICAMP_SHIM_MODE=local` | this mode (`hicamp run --mode local` sets it); `trace,local` and `stack,local` run it beside trace or stack mode (below) | |
//! | `HICAMP_LOCAL_MEMORY` | the shared memory file (created with [`SharedOptions::transport`] if missing) | `/dev/shm/hicamp-local.EUID.vN` (N: [`hicamp::shared::FORMAT_VERSION`]) |
//!
//! # Beside trace or stack mode
//!
//! `trace,local`: connections that go local are served here; the ones that stay on kernel TCP
//! (fallbacks, with their reason in this mode's report) are traced and counted as in trace
//! mode. `stack,local`: stack mode decides first; it leaves loopback (127.0.0.0/8) sockets in
//! the kernel, and those negotiate here (a listener bound to a loopback address publishes
//! itself; one bound to `0.0.0.0` is the stack's and is not reachable over loopback); every
//! other AF_INET socket is the stack's, reported in its `PREFIX.stack.PID.json` (AF_INET6
//! sockets, which stack mode leaves in the kernel, negotiate here). So each connection's route
//! is in one of the two reports.
//!
//! # Negotiation (after the kernel's handshake; nothing extra on the wire)
//!
//! ```text
//!  server: listen(fd)   -> names["L/ip:port"] = pid start euid netns
//!  client: connect(fd)  -> live listener in this memory, same netns and euid?
//!                          bind(dst_ip:0) (the 4-tuple is known before the SYN),
//!                          conn = memory.connect(), socketpair (A, B),
//!                          names["O/ip:port/cport"] = pid start conn B-fd;
//!                          real connect (a non-blocking one is waited for, at most 3 s);
//!                          A dup3ed over fd (kernel socket kept at a hidden fd)
//!  server: accept()     -> names["O/..."] found and unbound (the claim);
//!                          pidfd_open + pidfd_getfd(B), memory.accept(conn);
//!                          B dup3ed over the accepted fd (kernel socket hidden)
//! ```
//!
//! **IPv4 and IPv6.** Both families negotiate. Listeners and offers are named by the
//! *normalised* address: an IPv4-mapped one (`::ffff:127.0.0.1`, what a dual-stack socket sees
//! of an IPv4 peer, or an IPv6 client's destination) by its IPv4 form, an IPv6 one as `[::1]:port`
//! without flow label or scope. So an IPv6 client of an IPv4 listener, and an IPv4 client of a
//! dual-stack `[::]` listener, name the 4-tuple as the acceptor does. A client looks up the
//! listener bound to its destination, the wildcard of that family, and for an IPv4 destination
//! `L/[::]:port` if its record says dual-stack (a fifth field: `IPV6_V6ONLY` off). An IPv6
//! client binds to the destination in its own form (port 0) before the SYN, as an IPv4 one does.
//!
//! Why this protocol: the offer is published *before* the SYN, so the accepting process
//! (whichever process accepts: a forked child too) finds it by the 4-tuple the kernel gives
//! it, with no byte on the TCP connection and no wait in either process. A peer not under the
//! shim never sees anything: a client without the shim publishes no offer (the server stays on
//! kernel TCP), a server without it publishes no listener (the client stays on kernel TCP).
//! Another memory, mode off, a dead listener, another network namespace, another user (whose
//! `pidfd_getfd` would be denied), a destination that is not a local address, or an
//! unfinished handshake: kernel TCP, with the reason in the report. The client commits when
//! its connect returns (it may send before the server accepts: the bytes wait in the ring);
//! if the acceptor then cannot take B (`pidfd_getfd` denied: a worker that changed user), it
//! closes its end of the ring, so the client sees EPIPE/EOF, not silence, and the server's
//! application gets the kernel socket: that case is reported as `broken`.
//!
//! # Readiness
//!
//! The application's descriptor is one end of an AF_UNIX socketpair; the peer holds the other.
//! `shutdown(SHUT_WR)` shuts the pair's end down too (EOF and `POLLRDHUP` at the peer), the
//! last close closes it (`POLLHUP`).
//!
//! **From the rings** ([`ready`]): `epoll_wait`/`epoll_pwait`, `poll`/`ppoll` and
//! `select`/`pselect` look at the rings of local descriptors first (shared-memory loads). Each
//! epoll instance holding a local descriptor keeps a shadow registration of it (the
//! application's events and data; `EPOLLET`, `EPOLLONESHOT`, `EPOLLRDHUP` emulated from the
//! ring's sequence words); its kernel registration is the shim's (edge-triggered, a data word
//! of its own), so a kernel event on it is only a wake-up. A wait returns the ready local
//! events at once, with the kernel descriptors' events from a zero-timeout `epoll_wait` every
//! 4th such call or 200 us (so kernel descriptors are not starved; local ones are scanned
//! round-robin). With nothing ready it spins (the adaptive budget of
//! [`hicamp::shared::set_adaptive_spin`]), then *arms* and sleeps in the kernel.
//!
//! **Tokens only for a sleeper**: a writer that publishes puts one token byte into its end of
//! the pair (which makes the reader's descriptor readable to the kernel) only while the ring's
//! `pins` word is nonzero (`Conn::pin`). A waiter about to sleep in a kernel wait that can see
//! the descriptor pins the ring, looks at it again, clears a stale token, and sleeps; the writer
//! publishes before it looks at the pins (both sequentially consistent), so either the waiter
//! sees the data or the writer puts the token. While the reader's process is awake no token is
//! written or read: no system call per message on either side. The token protocol itself is
//! unchanged (`Conn::token_take`/`token_release`: at most one byte per direction, never a
//! byte left behind an empty ring).
//!
//! Waits the hooks do not see keep tokens on for good: a `fork` pins every connection of the
//! process (either process may wait on it, or on an inherited epoll instance); an epoll
//! instance added to another one or polled by `poll`/`select` is *exposed*: its local
//! descriptors stay pinned, their kernel registrations follow the application's trigger mode,
//! and its kick eventfd is set while bytes published before the exposure (no token stands for
//! them) are queued. A process holding an io_uring instance (looked for in `/proc/self/fd` when
//! a connection goes local, at most once a second) pins every connection for good: its waits
//! are not the shim's. `HICAMP_LOCAL_TOKENS=always` pins every connection from the start: for
//! a process that waits through raw system calls, or makes its io_uring after its last
//! connection; so does `stack,local` (stack mode's epoll hooks run its interface inline). A
//! registration added or re-armed while a thread sleeps in the instance kicks it. An
//! edge-triggered waiter that left bytes unread takes its outstanding token back before it
//! sleeps (`Conn::token_reset`, unless tokens are on for good), so that the next publish writes
//! a new byte: a new edge.
//!
//! A reader blocked in `recv` sleeps on the ring's futex, announcing the room it has; a writer
//! that finds it asleep wakes it (no token). Every 50 ms of sleep it checks for a dead or
//! vanished peer. Writability follows the ring: each pair end's send buffer is small (24 KiB);
//! a non-blocking send (or a wait for `EPOLLOUT`/`POLLOUT`) that finds the ring full (4 MiB or
//! 256 entries in flight) writes filler bytes into its end until the end stops polling
//! writable, records their count in the ring (`Conn::fillers_add`), looks at the ring once
//! more (room may have opened meanwhile), and fails with EAGAIN (or sleeps); the reader, after
//! each receive that consumed (room opened), reads exactly that many bytes out
//! (`Conn::fillers_take`: one load when there are none), and the writer's end polls writable
//! again: that is the kernel's wake-up. A blocking send sleeps on the ring's futex.
//!
//! # Data path
//!
//! `send`/`write`/`writev`/`sendmsg`/`sendto`/`sendfile` copy the user's bytes once into lines
//! of the shared memory and publish the snapshot: owned lines (no hash, no index) while the
//! reader keeps up, lines deduplicated across processes once 256 KiB sit unread in the ring
//! and the reader consumed nothing since the previous send
//! (`hicamp::shared::Conn::set_dedup_backlog`, `HICAMP_LOCAL_DEDUP_BACKLOG`);
//! `recv`/`read`/`readv`/`recvmsg`/`recvfrom` copy out of the lines once. Both copies are in
//! the report. `getsockname`, `getpeername`, `getsockopt`, `setsockopt` go to the kernel
//! socket; `FIONREAD` gives the bytes in the ring.
//!
//! # Lifecycle
//!
//! * `shutdown(SHUT_WR)`: FIN in the ring (the peer reads the data, then EOF), the pair's end
//!   and the kernel socket shut down. `close` (the last descriptor of it in the process): FIN,
//!   or RST if bytes sent to us are unread (the peer's read gets ECONNRESET), and the kernel
//!   socket closes. At exit, an `atexit` handler closes this process's connections the same
//!   way.
//! * A peer killed at any moment: its pair end closes, the reader wakes, finds the ring empty
//!   without FIN, and the memory's recovery (its process is dead) closes the dead end: EOF, or
//!   ECONNRESET if the dead process left bytes unread. A writer to a dead reader gets EPIPE.
//! * `fork`: a child that inherits a local connection can use it: its first operation on it
//!   *adopts* the ring end (the memory is reopened in the child, the end's owner becomes the
//!   child). One process at a time: the last process to use an end owns it; a process that
//!   does not own it closes only its descriptor (the forking server's parent closing the
//!   accepted socket does not end the child's connection). The price: the owner's close ends
//!   the connection even while a non-owner still holds the descriptor.
//! * `exec`: the listener records of this process are withdrawn (the new image publishes again
//!   when it listens); its new connections negotiate again. A local descriptor inherited
//!   across exec is a plain unix socket in the new image.
//! * A client's B end stays open in the client until the server has taken it (the client
//!   closes it at its next operation on the connection): a client that idles in `epoll_wait`
//!   right after connecting learns of the server's death only at its next operation.
//! * A server that accepts through a path the shim does not see (io_uring, a statically linked
//!   program after exec) never claims the offer: its client, committed, waits.
//!
//! # Report
//!
//! Each process appends one JSON line per decision and per closed connection to
//! `PREFIX.local.PID.jsonl` (`HICAMP_SHIM_REPORT`, else `$TMPDIR/hicamp-shim`): role, addresses,
//! route (`local`, `kernel`, `broken`) and, for a fallback, the reason; at close the bytes
//! copied into the memory (`copied_in`) and out of it (`copied_out`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::sync::atomic::{
    AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Once};

use hicamp::shared::{Conn, ConnId, SharedError, SharedMemory, SharedOptions};
use libc::{c_int, c_void, sockaddr, socklen_t, ssize_t};
use parking_lot::{Mutex, RwLock};

use crate::guard::{self, Guard};
use crate::{real, sys};

pub mod ready;

use crate::fdbits::{FdBits, MAX_FD};
/// Hidden descriptors (kernel sockets, B ends) are moved at or above this number, out of the
/// way of an application that expects the lowest free numbers.
const HIDDEN_FD_MIN: c_int = 300;
/// Longest wait for a non-blocking connect's handshake before the connection stays on TCP.
const HANDSHAKE_WAIT_MS: c_int = 3000;
/// Largest piece one ring entry takes.
const CHUNK: usize = 1 << 20;

static MARKS: FdBits = FdBits::new();

/// True when `fd` is a local-mode connection of this process.
#[inline]
pub fn marked(fd: c_int) -> bool {
    MARKS.get(fd)
}

fn set_mark(fd: c_int, on: bool) {
    MARKS.set(fd, on);
}

/// 0: not decided; 1: local mode; 2: another mode.
static ON: AtomicU8 = AtomicU8::new(0);

/// True in local mode (alone, or beside trace or stack mode).
#[inline]
pub fn on() -> bool {
    match ON.load(Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = crate::config::Config::get().local;
            ON.store(if on { 1 } else { 2 }, Relaxed);
            if on {
                init();
            }
            on
        }
    }
}

/// The shared memory's path: `HICAMP_LOCAL_MEMORY`, else
/// `/dev/shm/hicamp-local.EUID.vN` (N: the shared format's version, so that a memory an older
/// build left is not in the way).
pub fn memory_path() -> PathBuf {
    std::env::var_os("HICAMP_LOCAL_MEMORY")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || {
                PathBuf::from(format!(
                    "/dev/shm/hicamp-local.{}.v{}",
                    sys::geteuid(),
                    hicamp::shared::FORMAT_VERSION
                ))
            },
            PathBuf::from,
        )
}

/// One local connection of this process (shared by its descriptor numbers after `dup`).
struct Entry {
    /// The ring end (`None` once closed).
    conn: RwLock<Option<Conn>>,
    id: ConnId,
    end: u32,
    /// Serialises this process's senders, and its receivers (each ring is SPSC).
    send_lock: Mutex<()>,
    recv_lock: Mutex<()>,
    /// The kernel TCP socket, kept open underneath.
    hidden: c_int,
    /// Client: its B end until the server has taken it (-1 after).
    held_b: AtomicI32,
    /// Descriptor numbers of this process naming it.
    refs: AtomicU32,
    /// Receives in a row that found nothing (a hang-up check after two).
    empty_reads: AtomicU32,
    /// `O_NONBLOCK` of the descriptor (kept by the `fcntl` and `ioctl` hooks).
    nonblock: std::sync::atomic::AtomicBool,
    /// Registrations of it in exposed epoll instances (see [`ready`]): their tokens serve
    /// waits the shim does not see.
    exposed: AtomicU32,
    /// A fork shared it: this process's last close is not the connection's (the peer sees the
    /// last close anywhere as its pair end's hang-up, and closes our ring end for us).
    forked: std::sync::atomic::AtomicBool,
    copied_in: AtomicU64,
    copied_out: AtomicU64,
    role: &'static str,
    local: String,
    peer: String,
}

struct State {
    fds: HashMap<c_int, Arc<Entry>>,
    /// Listener records this process published: descriptor -> (name, publisher pid).
    listeners: HashMap<c_int, (String, i32)>,
}

static TABLE: Mutex<Option<State>> = Mutex::new(None);
static MEM: Mutex<Option<(i32, Arc<SharedMemory>)>> = Mutex::new(None);

fn with_table<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut g = TABLE.lock();
    let st = g.get_or_insert_with(|| State {
        fds: HashMap::new(),
        listeners: HashMap::new(),
    });
    f(st)
}

/// One descriptor number's entry, for the lookup of every operation without a global lock: a
/// reader announces itself in `readers` before it loads the pointer; a writer swaps the
/// pointer, then waits for the readers before it drops the old reference.
struct Slot {
    p: AtomicPtr<Entry>,
    readers: AtomicU32,
}

static SLOTS: [Slot; MAX_FD] = [const {
    Slot {
        p: AtomicPtr::new(std::ptr::null_mut()),
        readers: AtomicU32::new(0),
    }
}; MAX_FD];

fn entry(fd: c_int) -> Option<Arc<Entry>> {
    let i = fd as u32 as usize;
    if i >= MAX_FD {
        return with_table(|t| t.fds.get(&fd).cloned());
    }
    let s = &SLOTS[i];
    s.readers.fetch_add(1, SeqCst);
    let p = s.p.load(SeqCst);
    let e = (!p.is_null()).then(|| {
        // SAFETY: `p` came from `Arc::into_raw` in `slot_set`, whose reference is dropped only
        // after no reader is announced (this one is, until below).
        unsafe { Arc::increment_strong_count(p) };
        // SAFETY: the strong count just taken for this `Arc`.
        unsafe { Arc::from_raw(p) }
    });
    s.readers.fetch_sub(1, SeqCst);
    e
}

/// Sets descriptor `fd`'s entry (the caller holds TABLE, which it updates too).
fn slot_set(fd: c_int, e: Option<&Arc<Entry>>) {
    let i = fd as u32 as usize;
    if i >= MAX_FD {
        return;
    }
    let s = &SLOTS[i];
    let new = e.map_or(std::ptr::null_mut(), |e| {
        Arc::into_raw(e.clone()).cast_mut()
    });
    let old = s.p.swap(new, SeqCst);
    if old.is_null() {
        return;
    }
    let t0 = std::time::Instant::now();
    while s.readers.load(SeqCst) != 0 {
        if t0.elapsed() > std::time::Duration::from_millis(5) {
            // A reader that never leaves: one copied in by fork, mid-lookup. The old
            // reference is kept (a small leak) rather than freed under it.
            return;
        }
        std::hint::spin_loop();
    }
    // SAFETY: `old` came from `Arc::into_raw` above (an earlier call); no reader can still
    // load it (the swap came before the wait), so this reference is ours to drop.
    unsafe { drop(Arc::from_raw(old)) };
}

unsafe extern "C" fn atfork_prepare() {
    std::mem::forget(MEM.lock());
    std::mem::forget(TABLE.lock());
    // Both processes may wait on a shared connection, or on an epoll instance holding it, in
    // ways the other's hooks do not see: tokens on for good, before the child exists.
    // SAFETY: this thread holds TABLE (locked above, guard forgotten).
    if let Some(st) = unsafe { &*TABLE.data_ptr() } {
        for e in st.fds.values() {
            if !e.forked.load(Relaxed) {
                if let Some(g) = e.conn.try_read() {
                    if let Some(c) = g.as_ref() {
                        c.pin();
                    }
                }
            }
        }
    }
}

unsafe extern "C" fn atfork_release() {
    // SAFETY: `atfork_prepare` locked TABLE and forgot the guard: this thread holds it.
    if let Some(st) = unsafe { &*TABLE.data_ptr() } {
        for e in st.fds.values() {
            e.forked.store(true, Relaxed);
        }
    }
    // SAFETY: `atfork_prepare` locked both and forgot the guards; this thread (the parent's
    // forking thread, or the child's only thread) unlocks them once.
    unsafe { TABLE.force_unlock() };
    // SAFETY: as above.
    unsafe { MEM.force_unlock() };
}

extern "C" fn at_exit() {
    if let Some(_g) = Guard::enter() {
        guard::shielded(close_all);
    }
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: the handlers are plain `unsafe extern "C" fn()`s that never unwind.
        let r = unsafe {
            libc::pthread_atfork(
                Some(atfork_prepare),
                Some(atfork_release),
                Some(atfork_release),
            )
        };
        if r != 0 {
            sys::diag("local mode: pthread_atfork failed");
        }
        // SAFETY: registering a plain `extern "C" fn()`.
        if unsafe { libc::atexit(at_exit) } != 0 {
            sys::diag("local mode: atexit failed");
        }
    });
}

/// This process's attachment to the memory (reopened in a forked child; created if missing).
fn memory() -> Result<Arc<SharedMemory>, String> {
    let pid = sys::getpid();
    let mut g = MEM.lock();
    if let Some((p, m)) = g.as_ref() {
        if *p == pid {
            return Ok(m.clone());
        }
    }
    if let Some((_, old)) = g.take() {
        // A handle inherited through fork is not ours; dropping it does nothing.
        drop(old);
    }
    let path = memory_path();
    let m = match SharedMemory::open(&path) {
        Ok(m) => m,
        Err(SharedError::Io { .. }) if !path.exists() => {
            match SharedMemory::create(&path, SharedOptions::transport()) {
                Ok(m) => m,
                Err(_) => SharedMemory::open(&path)
                    .map_err(|e| format!("memory {}: {e}", path.display()))?,
            }
        }
        Err(e) => return Err(format!("memory {}: {e}", path.display())),
    };
    let m = Arc::new(m);
    *g = Some((pid, m.clone()));
    hicamp::shared::set_adaptive_spin(spin_setting());
    Ok(m)
}

/// `HICAMP_LOCAL_DEDUP_BACKLOG=BYTES`: the unread bytes in a connection's ring from which
/// `send` deduplicates (if the reader is stalled) instead of writing owned lines (0: always,
/// as before owned lines; by default `hicamp::shared::DEDUP_BACKLOG`, 256 KiB).
fn tuned(mut c: Conn) -> Conn {
    static V: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let v = V.get_or_init(|| {
        std::env::var("HICAMP_LOCAL_DEDUP_BACKLOG")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    if let Some(b) = *v {
        c.set_dedup_backlog(b);
    }
    c
}

/// `HICAMP_LOCAL_TOKENS=always`: every connection keeps readiness tokens on (today's
/// protocol before userspace readiness: for a process that waits on its descriptors in ways
/// the hooks do not see, such as io_uring or raw system calls).
fn tokens_always() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("HICAMP_LOCAL_TOKENS").is_ok_and(|v| v.trim() == "always") || !ready::active()
    })
}

/// Set once an io_uring instance was seen among this process's descriptors.
static URING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// When `/proc/self/fd` was last looked through (milliseconds since the first look, plus 1).
static URING_SCAN: AtomicU64 = AtomicU64::new(0);

/// True once the process holds an io_uring instance, whose waits (a poll of a local
/// descriptor, or of an epoll instance holding one) the shim cannot see: every connection then
/// keeps tokens on for good. Looked for when a connection goes local, at most once a second
/// (so an io_uring made after the last look is seen at a later connection). The caller does
/// not hold TABLE.
fn uring_seen() -> bool {
    static T0: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    if URING.load(Relaxed) {
        return true;
    }
    let now = T0
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1;
    let last = URING_SCAN.load(Relaxed);
    if last != 0 && now < last + 1000 {
        return false;
    }
    if URING_SCAN
        .compare_exchange(last, now, Relaxed, Relaxed)
        .is_err()
    {
        return false;
    }
    let found = std::fs::read_dir("/proc/self/fd").is_ok_and(|d| {
        d.flatten().any(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[io_uring]")
        })
    });
    if found && !URING.swap(true, Relaxed) {
        with_table(|t| {
            for e in t.fds.values() {
                if let Some(c) = e.conn.read_recursive().as_ref() {
                    c.pin();
                }
            }
        });
    }
    found
}

/// The adaptive spin of blocked readers and writers: `HICAMP_LOCAL_SPIN_US` (0 turns it
/// off), by default 50 us where more than one CPU is online (with one, a spinning waiter only
/// delays the peer it waits for).
fn spin_setting() -> std::time::Duration {
    let us = std::env::var("HICAMP_LOCAL_SPIN_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
                50
            } else {
                0
            }
        });
    std::time::Duration::from_micros(us)
}

// ----- small system helpers -----

fn last_errno() -> c_int {
    guard::errno()
}

thread_local! {
    /// The errno an operation's result carries, set once [`guard::shielded`] (which keeps the
    /// caller's errno) has returned.
    static PENDING: std::cell::Cell<c_int> = const { std::cell::Cell::new(0) };
}

/// Sets the errno the caller will see.
fn set_err(e: c_int) {
    let _ = PENDING.try_with(|p| p.set(e));
}

fn fail<T: From<i8>>(e: c_int) -> T {
    set_err(e);
    T::from(-1)
}

/// [`guard::shielded`], then the operation's errno, if it set one.
fn run<R>(f: impl FnOnce() -> R) -> Option<R> {
    let _ = PENDING.try_with(|p| p.set(0));
    let r = guard::shielded(f);
    if let Ok(e) = PENDING.try_with(|p| p.replace(0)) {
        if e != 0 {
            guard::set_errno(e);
        }
    }
    r
}

fn sock_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: `v` and `len` are valid for an int option.
    let r = unsafe { real::getsockopt(fd, level, name, (&mut v as *mut c_int).cast(), &mut len) };
    (r == 0).then_some(v)
}

/// The family of a TCP socket (`AF_INET` or `AF_INET6`), or `None` for any other socket.
fn tcp_family(fd: c_int) -> Option<c_int> {
    let f = sock_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    ((f == libc::AF_INET || f == libc::AF_INET6)
        && sock_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM))
    .then_some(f)
}

/// The address both sides name a listener or an offer by: an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, what a dual-stack socket sees of an IPv4 peer) in its IPv4 form; an
/// IPv6 one without flow label and scope.
fn norm(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(_) => a,
        SocketAddr::V6(v) => match v.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, v.port())),
            None => SocketAddr::V6(SocketAddrV6::new(*v.ip(), v.port(), 0, 0)),
        },
    }
}

/// The kernel's name of `fd` (or of its peer), normalised ([`norm`]).
fn sock_name(fd: c_int, peer: bool) -> Option<SocketAddr> {
    sys::sock_addr(fd, peer).map(norm)
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn sockaddr_in6(a: SocketAddrV6) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: a.port().to_be(),
        sin6_flowinfo: a.flowinfo(),
        sin6_addr: libc::in6_addr {
            s6_addr: a.ip().octets(),
        },
        sin6_scope_id: a.scope_id(),
    }
}

/// The wildcard address of `a`'s family, with `a`'s port.
fn unspecified(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(_) => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.port())),
        SocketAddr::V6(_) => {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, a.port(), 0, 0))
        }
    }
}

/// Moves `fd` to a hidden number (close-on-exec); returns it, or -1.
fn hide(fd: c_int) -> c_int {
    // SAFETY: F_DUPFD_CLOEXEC takes an int argument.
    unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, HIDDEN_FD_MIN as libc::c_ulong) }
}

fn close_fd(fd: c_int) {
    if fd >= 0 {
        // SAFETY: closing a descriptor of the shim's own.
        unsafe { real::close(fd) };
    }
}

fn netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    })
}

fn own_start() -> u64 {
    hicamp::shared::process_start_time(sys::getpid() as u32).unwrap_or(0)
}

// ----- the report -----

fn report_path() -> PathBuf {
    let pid = sys::getpid();
    match &crate::config::Config::get().report {
        Some(prefix) => {
            let mut p = prefix.clone().into_os_string();
            p.push(format!(".local.{pid}.jsonl"));
            p.into()
        }
        None => sys::tmp_dir().join(format!("hicamp-shim.local.{pid}.jsonl")),
    }
}

fn report(mut v: serde_json::Value) {
    use std::io::Write;
    if let Some(id) = &crate::config::Config::get().run_id {
        v["run"] = id.clone().into();
    }
    let mut line = v.to_string();
    line.push('\n');
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(report_path())
    {
        let _ = f.write_all(line.as_bytes());
    }
}

fn report_route(role: &str, local: &str, peer: &str, route: &str, reason: Option<&str>) {
    report(serde_json::json!({
        "event": "route",
        "pid": sys::getpid(),
        "role": role,
        "local": local,
        "peer": peer,
        "route": route,
        "reason": reason,
    }));
}

// ----- records in the memory's names table -----

/// `L/1.2.3.4:80` or `L/[::1]:80` (the address normalised: [`norm`]).
fn listener_name(a: SocketAddr) -> String {
    format!("L/{a}")
}

fn offer_name(dst: SocketAddr, cport: u16) -> String {
    format!("O/{dst}/{cport}")
}

fn read_record(mem: &SharedMemory, name: &str) -> Option<Vec<u64>> {
    let seg = mem.lookup(name).ok()??;
    let bytes = seg.to_vec().ok()?;
    let s = String::from_utf8(bytes).ok()?;
    s.split_ascii_whitespace().map(|x| x.parse().ok()).collect()
}

fn write_record(mem: &SharedMemory, name: &str, fields: &[u64]) -> Result<(), SharedError> {
    let s = fields
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let seg = mem.intern(s.as_bytes())?;
    mem.bind(name, &seg)
}

/// `listen` succeeded on `fd`: publish it (local mode).
pub fn listening(fd: c_int) {
    if !on() {
        return;
    }
    let Some(_g) = Guard::enter() else { return };
    guard::shielded(|| {
        let e = last_errno();
        if let Some(family) = tcp_family(fd) {
            if let Some(a) = sock_name(fd, false) {
                if let Ok(mem) = memory() {
                    let name = listener_name(a);
                    // A dual-stack `[::]` listener accepts IPv4 clients too.
                    let dual = family == libc::AF_INET6
                        && a.ip().is_unspecified()
                        && a.is_ipv6()
                        && sock_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) == Some(0);
                    let rec = [
                        sys::getpid() as u64,
                        own_start(),
                        sys::geteuid() as u64,
                        netns(),
                        u64::from(dual),
                    ];
                    match write_record(&mem, &name, &rec) {
                        Ok(()) => with_table(|t| {
                            t.listeners.insert(fd, (name, sys::getpid()));
                        }),
                        Err(err) => sys::diag(&format!("local mode: listener {a}: {err}")),
                    }
                }
            }
        }
        guard::set_errno(e);
    });
}

/// Why a connection to `dst` cannot go local (`None`: it can).
///
/// `dst` is normalised ([`norm`]): the listener bound to it, the wildcard of its family, and
/// for an IPv4 destination a dual-stack `[::]` listener (record field 4 set).
fn listener_check(mem: &SharedMemory, dst: SocketAddr) -> Option<String> {
    let mut names = vec![
        (listener_name(dst), false),
        (listener_name(unspecified(dst)), false),
    ];
    if dst.is_ipv4() {
        let any6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, dst.port(), 0, 0));
        names.push((listener_name(any6), true));
    }
    let mut gone = None;
    for (name, need_dual) in &names {
        let Some(rec) = read_record(mem, name) else {
            continue;
        };
        if rec.len() < 4 || (*need_dual && rec.get(4) != Some(&1)) {
            continue;
        }
        if !hicamp::shared::process_alive(rec[0] as u32, rec[1]) {
            let _ = mem.unbind(name);
            gone = Some(format!("listener process {} gone", rec[0]));
            continue;
        }
        if rec[3] != netns() {
            return Some("listener in another network namespace".into());
        }
        if rec[2] != sys::geteuid() as u64 {
            return Some(format!(
                "listener runs as uid {}, not {} (pidfd_getfd would be denied)",
                rec[2],
                sys::geteuid()
            ));
        }
        return None;
    }
    Some(gone.unwrap_or_else(|| {
        "no listener under the shim in this memory (peer not shimmed, another memory, or mode off)"
            .into()
    }))
}

/// `connect` in local mode (`None`: not a local-mode candidate; the caller connects).
///
/// # Safety
/// `addr` is the caller's address of `len` bytes.
pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> Option<c_int> {
    if !on() {
        return None;
    }
    if marked(fd) {
        // Connected already (hiredis calls connect again to learn that).
        guard::set_errno(libc::EISCONN);
        return Some(-1);
    }
    let _g = Guard::enter()?;
    // SAFETY: the caller's address.
    let raw = unsafe { sys::parse_sockaddr(addr, len) }?;
    let family = tcp_family(fd)?;
    // An address of the other family: the kernel's error (EAFNOSUPPORT, EINVAL).
    if (family == libc::AF_INET) != raw.is_ipv4() {
        return None;
    }
    run(|| {
        // SAFETY: as above.
        unsafe { connect_local(fd, addr, len, raw) }
    })
    .flatten()
}

/// The kernel route, reported, for a client.
fn client_kernel(fd: c_int, dst: SocketAddr, reason: &str) -> Option<c_int> {
    let local = sock_name(fd, false).map_or(String::new(), |a| a.to_string());
    report_route("client", &local, &dst.to_string(), "kernel", Some(reason));
    None
}

/// # Safety
/// As [`connect`].
unsafe fn connect_local(
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
    raw: SocketAddr,
) -> Option<c_int> {
    let dst = norm(raw);
    if dst.is_ipv4()
        && raw.is_ipv6()
        && sock_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) == Some(1)
    {
        // The kernel refuses it (ENETUNREACH): let it say so.
        return client_kernel(
            fd,
            dst,
            "IPv4-mapped destination from an IPV6_V6ONLY socket",
        );
    }
    let mem = match memory() {
        Ok(m) => m,
        Err(e) => return client_kernel(fd, dst, &e),
    };
    if let Some(why) = listener_check(&mem, dst) {
        return client_kernel(fd, dst, &why);
    }
    // The 4-tuple before the SYN: bind to the destination address (a local one) if unbound.
    // (An IPv6 socket binds to the caller's form of the address: `::ffff:a.b.c.d` stays so.)
    let mut local = sock_name(fd, false)?;
    if local.port() == 0 {
        let r = match raw {
            SocketAddr::V4(d) => {
                let sa = sockaddr_in(SocketAddrV4::new(*d.ip(), 0));
                // SAFETY: a valid sockaddr_in of the size given.
                unsafe {
                    real::bind(
                        fd,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as socklen_t,
                    )
                }
            }
            SocketAddr::V6(d) => {
                let sa = sockaddr_in6(SocketAddrV6::new(*d.ip(), 0, 0, d.scope_id()));
                // SAFETY: a valid sockaddr_in6 of the size given.
                unsafe {
                    real::bind(
                        fd,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as socklen_t,
                    )
                }
            }
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            return client_kernel(fd, dst, &format!("destination not a local address ({e})"));
        }
        local = sock_name(fd, false)?;
    }
    let conn = match mem.connect() {
        Ok(c) => tuned(c),
        Err(e) => return client_kernel(fd, dst, &format!("ring: {e}")),
    };
    let mut sv = [-1; 2];
    // SAFETY: `sv` has room for two descriptors.
    if unsafe {
        real::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } != 0
    {
        return client_kernel(fd, dst, "socketpair failed");
    }
    let (a, b0) = (sv[0], sv[1]);
    shrink_sndbuf(a);
    shrink_sndbuf(b0);
    let b = hide(b0);
    close_fd(b0);
    let name = offer_name(dst, local.port());
    let rec = [
        sys::getpid() as u64,
        own_start(),
        conn.id().0 as u64,
        b.max(0) as u64,
    ];
    let withdraw = |conn: Conn| {
        let _ = mem.unbind(&name);
        drop(conn);
        close_fd(a);
        close_fd(b);
    };
    if b < 0 {
        withdraw(conn);
        return client_kernel(fd, dst, "no descriptor for the pair");
    }
    if let Err(e) = write_record(&mem, &name, &rec) {
        withdraw(conn);
        return client_kernel(fd, dst, &format!("offer: {e}"));
    }
    // SAFETY: the caller's address.
    let ret = unsafe { real::connect(fd, addr, len) };
    let err = last_errno();
    if ret != 0 {
        let mut ok = false;
        if err == libc::EINPROGRESS {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { real::poll(&mut p, 1, HANDSHAKE_WAIT_MS) };
            ok = n == 1 && sock_int(fd, libc::SOL_SOCKET, libc::SO_ERROR) == Some(0);
            if ok {
                // The handshake is done; the application will see it through POLLOUT.
            }
        }
        if !ok {
            withdraw(conn);
            let reason = if err == libc::EINPROGRESS {
                "handshake not finished in 3 s".to_string()
            } else {
                format!("connect failed: {}", std::io::Error::from_raw_os_error(err))
            };
            report_route(
                "client",
                &local.to_string(),
                &dst.to_string(),
                "kernel",
                Some(&reason),
            );
            set_err(err);
            return Some(ret);
        }
    }
    // Connected: the pair's end A takes the application's descriptor number.
    let hidden = hide(fd);
    // SAFETY: F_GETFL / F_GETFD take no argument.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    // SAFETY: as above.
    let fdfl = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
    let cloexec = if fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: F_SETFL with an int argument on our own descriptor.
    unsafe {
        real::fcntl(
            a,
            libc::F_SETFL,
            (libc::O_RDWR | (fl.max(0) & libc::O_NONBLOCK)) as libc::c_ulong,
        )
    };
    // SAFETY: `a` is ours; `fd` is the application's socket, now held at `hidden` too.
    if hidden < 0 || unsafe { real::dup3(a, fd, cloexec) } != fd {
        // The peer may take B and attach: close our end so it sees EOF, and stay on TCP.
        close_fd(hidden);
        let _ = mem.unbind(&name);
        drop(conn);
        close_fd(a);
        close_fd(b);
        report_route(
            "client",
            &local.to_string(),
            &dst.to_string(),
            "broken",
            Some("cannot move the pair onto the descriptor"),
        );
        set_err(err);
        return Some(ret);
    }
    close_fd(a);
    if tokens_always() || uring_seen() {
        conn.pin();
    }
    let e = Arc::new(Entry {
        conn: RwLock::new(Some(conn)),
        id: ConnId(rec[2] as u32),
        end: 0,
        send_lock: Mutex::new(()),
        recv_lock: Mutex::new(()),
        hidden,
        held_b: AtomicI32::new(b),
        refs: AtomicU32::new(1),
        empty_reads: AtomicU32::new(0),
        nonblock: std::sync::atomic::AtomicBool::new(fl >= 0 && fl & libc::O_NONBLOCK != 0),
        exposed: AtomicU32::new(0),
        forked: std::sync::atomic::AtomicBool::new(false),
        copied_in: AtomicU64::new(0),
        copied_out: AtomicU64::new(0),
        role: "client",
        local: local.to_string(),
        peer: dst.to_string(),
    });
    with_table(|t| {
        slot_set(fd, Some(&e));
        t.fds.insert(fd, e)
    });
    set_mark(fd, true);
    report_route(
        "client",
        &local.to_string(),
        &dst.to_string(),
        "local",
        None,
    );
    if ret != 0 {
        set_err(err);
    }
    Some(ret)
}

/// `accept`/`accept4` returned `fd` (local mode): claims the client's offer, if any.
pub fn accepted(fd: c_int, flags: c_int) {
    if fd < 0 || !on() {
        return;
    }
    let Some(_g) = Guard::enter() else { return };
    let e = last_errno();
    guard::shielded(|| accept_local(fd, flags));
    guard::set_errno(e);
}

fn pidfd_getfd(pid: u32, target: c_int) -> Result<c_int, String> {
    // SAFETY: pidfd_open(pid, 0) has no memory arguments.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as c_int, 0) } as c_int;
    if pidfd < 0 {
        return Err(format!("pidfd_open: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pidfd_getfd(pidfd, fd, 0) has no memory arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) } as c_int;
    let err = std::io::Error::last_os_error();
    close_fd(pidfd);
    if fd < 0 {
        return Err(format!("pidfd_getfd: {err}"));
    }
    Ok(fd)
}

fn accept_local(fd: c_int, flags: c_int) {
    if tcp_family(fd).is_none() {
        return;
    }
    // Normalised: a dual-stack listener's IPv4 client has the name its offer was made under.
    let (Some(local), Some(peer)) = (sock_name(fd, false), sock_name(fd, true)) else {
        return;
    };
    let (ls, ps) = (local.to_string(), peer.to_string());
    let mem = match memory() {
        Ok(m) => m,
        Err(e) => return report_route("server", &ls, &ps, "kernel", Some(&e)),
    };
    let name = offer_name(local, peer.port());
    let rec = match read_record(&mem, &name) {
        Some(r) if r.len() >= 4 && peer.ip() == local.ip() => r,
        _ => {
            return report_route(
                "server",
                &ls,
                &ps,
                "kernel",
                Some("no offer: peer not under the shim in this memory"),
            )
        }
    };
    if !matches!(mem.unbind(&name), Ok(true)) {
        return report_route("server", &ls, &ps, "kernel", Some("offer taken by another"));
    }
    let (pid, cid, bfd) = (rec[0] as u32, ConnId(rec[2] as u32), rec[3] as c_int);
    let b = match pidfd_getfd(pid, bfd) {
        Ok(b) => b,
        Err(why) => {
            // The client committed: close the ring end so that it sees EOF/EPIPE, not silence.
            if let Ok(c) = mem.accept(cid) {
                let _ = c.close();
            }
            return report_route("server", &ls, &ps, "broken", Some(&why));
        }
    };
    let conn = match mem.accept(cid) {
        Ok(c) => tuned(c),
        Err(e) => {
            close_fd(b);
            return report_route("server", &ls, &ps, "kernel", Some(&format!("ring: {e}")));
        }
    };
    let hidden = hide(fd);
    let nb = if flags & libc::SOCK_NONBLOCK != 0 {
        libc::O_NONBLOCK
    } else {
        0
    };
    // SAFETY: F_SETFL with an int argument on our own descriptor.
    unsafe { real::fcntl(b, libc::F_SETFL, (libc::O_RDWR | nb) as libc::c_ulong) };
    let cloexec = if flags & libc::SOCK_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: `b` is ours; `fd` is the accepted socket, now held at `hidden` too.
    if hidden < 0 || unsafe { real::dup3(b, fd, cloexec) } != fd {
        close_fd(hidden);
        close_fd(b);
        let _ = conn.close();
        return report_route("server", &ls, &ps, "broken", Some("cannot move the pair"));
    }
    close_fd(b);
    if tokens_always() || uring_seen() {
        conn.pin();
    }
    let e = Arc::new(Entry {
        conn: RwLock::new(Some(conn)),
        id: cid,
        end: 1,
        send_lock: Mutex::new(()),
        recv_lock: Mutex::new(()),
        hidden,
        held_b: AtomicI32::new(-1),
        refs: AtomicU32::new(1),
        empty_reads: AtomicU32::new(0),
        nonblock: std::sync::atomic::AtomicBool::new(flags & libc::SOCK_NONBLOCK != 0),
        exposed: AtomicU32::new(0),
        forked: std::sync::atomic::AtomicBool::new(false),
        copied_in: AtomicU64::new(0),
        copied_out: AtomicU64::new(0),
        role: "server",
        local: ls.clone(),
        peer: ps.clone(),
    });
    with_table(|t| {
        slot_set(fd, Some(&e));
        t.fds.insert(fd, e)
    });
    set_mark(fd, true);
    report_route("server", &ls, &ps, "local", None);
}

// ----- per-operation upkeep -----

/// Before an operation: closes the client's B end once the server took it; adopts the ring
/// end if another process owns it (a forked child, or the parent after one).
fn upkeep(e: &Entry) {
    let b = e.held_b.load(Relaxed);
    if b >= 0 {
        let attached = e.conn.read().as_ref().is_some_and(Conn::peer_attached);
        if attached && e.held_b.swap(-1, Relaxed) == b {
            close_fd(b);
        }
    }
    let owned = e.conn.read().as_ref().is_none_or(Conn::owned);
    if !owned {
        let mut w = e.conn.write();
        if w.as_ref().is_some_and(|c| !c.owned()) {
            if let Ok(mem) = memory() {
                match mem.adopt(e.id, e.end) {
                    Ok(c) => {
                        if let Some(old) = w.replace(tuned(c)) {
                            old.disown();
                        }
                    }
                    Err(err) => sys::diag(&format!("local mode: adopt {:?}: {err}", e.id)),
                }
            }
        }
    }
}

fn errno_of(e: &SharedError) -> c_int {
    match e {
        SharedError::Reset => libc::ECONNRESET,
        SharedError::Shutdown => libc::EPIPE,
        SharedError::WouldBlock => libc::EAGAIN,
        _ => libc::EIO,
    }
}

/// Reads the token byte `Conn::token_release` says is ours.
fn drop_token(fd: c_int, c: &Conn) {
    if c.token_release() {
        read_token_byte(fd);
    }
}

/// Reads one token byte out of the pair's end `fd`.
fn read_token_byte(fd: c_int) {
    let mut byte = 0u8;
    // SAFETY: one writable byte.
    unsafe { real::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_DONTWAIT) };
}

fn put_token(fd: c_int, c: &Conn) {
    if c.token_take() {
        let byte = 1u8;
        // SAFETY: one readable byte.
        unsafe {
            real::send(
                fd,
                (&byte as *const u8).cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }
}

/// Send buffer of each end of the pair (the kernel doubles it: 24 KiB): room for the token
/// bytes and the fillers (see [`fill`]).
const PAIR_SNDBUF: c_int = 12288;
/// Filler bytes per send while the ring is full: enough to take the end past a quarter of its
/// send buffer (6 KiB: there it stops polling writable), not past all of it (a token still
/// fits).
const FILL_CHUNK: usize = 8192;

fn shrink_sndbuf(fd: c_int) {
    let v: c_int = PAIR_SNDBUF;
    // SAFETY: an int option of the right size on our own descriptor.
    unsafe {
        real::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const c_int).cast(),
            std::mem::size_of::<c_int>() as socklen_t,
        )
    };
}

fn pollout(fd: c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd; no wait.
    let n = unsafe { real::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLOUT != 0 && p.revents & (libc::POLLHUP | libc::POLLERR) == 0
}

/// The ring is full and a non-blocking send found no room: filler bytes go into `fd` until it
/// stops polling writable, and the ring records them; the reader takes them out when it
/// consumes (room opened), which makes `fd` writable again. So `POLLOUT` follows the ring and
/// an epoll writer sleeps instead of spinning on EAGAIN. Only the number of bytes in the
/// reader's descriptor matters to the token protocol; the reader reads exactly the fillers.
fn fill(fd: c_int, c: &Conn) {
    static ZEROS: [u8; FILL_CHUNK] = [0; FILL_CHUNK];
    let mut n = 0u32;
    for _ in 0..4 {
        if !pollout(fd) {
            break;
        }
        // SAFETY: FILL_CHUNK readable bytes.
        let r = unsafe {
            real::send(
                fd,
                ZEROS.as_ptr().cast(),
                FILL_CHUNK,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if r <= 0 {
            break;
        }
        n += r as u32;
    }
    if n > 0 {
        // A 1-byte tail: the reader reads exactly `n` bytes from the front, so when a token
        // byte sits in front of the fillers one filler byte stays behind: this small one, not
        // a byte of the big chunk (whose memory would keep this end unwritable).
        // SAFETY: one readable byte.
        if unsafe {
            real::send(
                fd,
                ZEROS.as_ptr().cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        } == 1
        {
            n += 1;
        }
    }
    c.fillers_add(n);
}

/// Reads the filler bytes the peer put into our descriptor while its ring was full (after a
/// receive consumed: room opened).
fn drain_fillers(fd: c_int, c: &Conn) {
    let mut left = c.fillers_take() as usize;
    let mut buf = [0u8; 4096];
    while left > 0 {
        // SAFETY: a writable buffer of at least the length given.
        let r = unsafe {
            real::recv(
                fd,
                buf.as_mut_ptr().cast(),
                left.min(buf.len()),
                libc::MSG_DONTWAIT,
            )
        };
        if r <= 0 {
            break;
        }
        left -= r as usize;
    }
}

/// A send of `bufs` on local descriptor `fd` (`None`: not one).
pub fn send(fd: c_int, bufs: &[&[u8]], flags: c_int) -> Option<ssize_t> {
    let e = entry(fd)?;
    // Never a pass-through: the descriptor is the pair's end, whose bytes are tokens.
    let Some(_g) = Guard::enter() else {
        return Some(io_error());
    };
    run(|| send_inner(fd, &e, bufs, flags)).or_else(|| Some(io_error()))
}

/// -1 with EIO: a local descriptor the shim cannot serve (re-entered, or broken by a panic).
fn io_error() -> ssize_t {
    guard::set_errno(libc::EIO);
    -1
}

fn send_inner(fd: c_int, e: &Entry, bufs: &[&[u8]], flags: c_int) -> ssize_t {
    upkeep(e);
    let _s = e.send_lock.lock();
    let r = e.conn.read();
    let Some(c) = r.as_ref() else {
        return fail(libc::EBADF);
    };
    let nb: Option<bool> = (flags & libc::MSG_DONTWAIT != 0).then_some(true);
    let mut total = 0usize;
    let mut filled = false;
    'bufs: for buf in bufs {
        let mut off = 0;
        while off < buf.len() {
            let piece = &buf[off..(off + CHUNK).min(buf.len())];
            match c.send_nb(piece, true) {
                Ok(n) => {
                    off += n;
                    total += n;
                    e.copied_in.fetch_add(n as u64, Relaxed);
                    put_token(fd, c);
                }
                Err(SharedError::WouldBlock) => {
                    if nb.unwrap_or_else(|| e.nonblock.load(Relaxed)) {
                        if total == 0 && !filled {
                            // Not writable until the reader makes room; then look again
                            // (room may have opened before the fillers landed).
                            filled = true;
                            fill(fd, c);
                            continue;
                        }
                        break 'bufs;
                    }
                    if let Err(err) = c.wait_send_room() {
                        if total > 0 {
                            break 'bufs;
                        }
                        return send_error(&err, flags);
                    }
                }
                Err(SharedError::CapacityExhausted { .. }) => {
                    // The memory is full (other connections' bytes in flight): like a full
                    // socket buffer, EAGAIN or a wait.
                    if total > 0 || nb.unwrap_or_else(|| e.nonblock.load(Relaxed)) {
                        break 'bufs;
                    }
                    if pair_hung_up(fd) || matches!(c.check_peer(), Ok(true)) {
                        return send_error(&SharedError::Reset, flags);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(err) => {
                    if total > 0 {
                        break 'bufs;
                    }
                    return send_error(&err, flags);
                }
            }
        }
    }
    if total == 0 && bufs.iter().any(|b| !b.is_empty()) {
        return fail(libc::EAGAIN);
    }
    total as ssize_t
}

fn send_error(err: &SharedError, flags: c_int) -> ssize_t {
    let en = match err {
        SharedError::Reset | SharedError::Shutdown => {
            if flags & libc::MSG_NOSIGNAL == 0 {
                // SAFETY: pthread_self has no precondition.
                let me = unsafe { libc::pthread_self() };
                // SAFETY: raising SIGPIPE on this thread, as the kernel would.
                unsafe { libc::pthread_kill(me, libc::SIGPIPE) };
            }
            libc::EPIPE
        }
        other => errno_of(other),
    };
    fail(en)
}

/// A receive into `bufs` on local descriptor `fd` (`None`: not one).
pub fn recv(fd: c_int, bufs: &mut [&mut [u8]], flags: c_int) -> Option<ssize_t> {
    let e = entry(fd)?;
    let Some(_g) = Guard::enter() else {
        return Some(io_error());
    };
    run(|| recv_inner(fd, &e, bufs, flags)).or_else(|| Some(io_error()))
}

/// True when the peer's end of the pair is closed (everywhere).
fn pair_hung_up(fd: c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd; no wait.
    let n = unsafe { real::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLHUP != 0
}

fn recv_inner(fd: c_int, e: &Entry, bufs: &mut [&mut [u8]], flags: c_int) -> ssize_t {
    upkeep(e);
    let _r = e.recv_lock.lock();
    let r = e.conn.read();
    let Some(c) = r.as_ref() else {
        return fail(libc::EBADF);
    };
    let peek = flags & libc::MSG_PEEK != 0;
    let waitall = flags & libc::MSG_WAITALL != 0 && !peek;
    let want: usize = bufs.iter().map(|b| b.len()).sum();
    if want == 0 {
        return 0;
    }
    let nb: Option<bool> = (flags & libc::MSG_DONTWAIT != 0).then_some(true);
    let mut total = 0usize;
    let mut eof_polls = 0u32;
    loop {
        // Scatter what is queued over the buffers, after the `total` bytes already there.
        let mut skip = total;
        let mut res: Result<usize, SharedError> = Ok(0);
        let mut progressed = 0usize;
        for buf in bufs.iter_mut() {
            if skip >= buf.len() {
                skip -= buf.len();
                continue;
            }
            let dst = &mut buf[skip..];
            skip = 0;
            if peek && total + progressed > 0 {
                break; // peek reads from the front only: one buffer's worth
            }
            match c.recv_nb(dst, true, peek) {
                Ok(0) => {
                    if progressed == 0 {
                        res = Ok(0);
                    }
                    break;
                }
                Ok(n) => {
                    progressed += n;
                    if n < dst.len() {
                        break;
                    }
                }
                Err(x) => {
                    if progressed == 0 {
                        res = Err(x);
                    }
                    break;
                }
            }
        }
        if progressed > 0 {
            e.empty_reads.store(0, Relaxed);
            total += progressed;
            if !peek {
                e.copied_out.fetch_add(progressed as u64, Relaxed);
                drain_fillers(fd, c);
                drop_token(fd, c);
            }
            if !waitall || total >= want {
                return total as ssize_t;
            }
            continue;
        }
        match res {
            Ok(_) => return total as ssize_t, // EOF
            Err(SharedError::WouldBlock) => {
                drop_token(fd, c);
                if nb.unwrap_or_else(|| e.nonblock.load(Relaxed)) {
                    if total > 0 {
                        return total as ssize_t;
                    }
                    // Woken again with nothing to read: is the peer gone (a hang-up without
                    // FIN in the ring)? Checked from the second empty read in a row, so that
                    // the usual read-until-EAGAIN costs no system call.
                    if e.empty_reads.fetch_add(1, Relaxed) >= 1 && eof_polls == 0 {
                        let dead = matches!(c.check_peer(), Ok(true));
                        if dead || pair_hung_up(fd) {
                            if !dead {
                                let _ = c.close_vanished_peer();
                            }
                            eof_polls += 1;
                            continue;
                        }
                    }
                    return fail(libc::EAGAIN);
                }
                // Sleep on the ring's futex: a writer that sees us asleep with room for all
                // it queued wakes us with no token (one system call each side, as TCP).
                let room = (want - total).min(u32::MAX as usize) as u32;
                match c.wait_readable_once(room, std::time::Duration::from_millis(50)) {
                    Ok(true) => {}
                    Ok(false) => {
                        if matches!(c.check_peer(), Ok(true)) {
                            continue;
                        }
                        if pair_hung_up(fd) {
                            // The peer's pair end is closed everywhere with no FIN in the
                            // ring: its last descriptor closed after a fork shared it (or
                            // its process is dying).
                            let _ = c.close_vanished_peer();
                            eof_polls += 1;
                            if eof_polls > 100 {
                                return total as ssize_t;
                            }
                        }
                    }
                    Err(x) => {
                        if total > 0 {
                            return total as ssize_t;
                        }
                        return fail(errno_of(&x));
                    }
                }
            }
            Err(x) => {
                if total > 0 {
                    return total as ssize_t;
                }
                return fail(errno_of(&x));
            }
        }
    }
}

/// `shutdown` of a local descriptor (`None`: not one).
pub fn shutdown(fd: c_int, how: c_int) -> Option<c_int> {
    let e = entry(fd)?;
    let _g = Guard::enter()?;
    run(|| {
        upkeep(&e);
        if how == libc::SHUT_WR || how == libc::SHUT_RDWR {
            if let Some(c) = e.conn.read().as_ref() {
                let _ = c.shutdown_write();
            }
        }
        // SAFETY: our descriptors (the pair's end is the application's number).
        let r = unsafe { real::shutdown(fd, how) };
        let err = last_errno();
        // SAFETY: as above.
        unsafe { real::shutdown(e.hidden, how) };
        if r != 0 {
            set_err(err);
        }
        r
    })
}

fn finish(e: &Entry) {
    // Another thread may be asleep in a receive on it (holding the read lock): then FIN only,
    // and the process's end closes with the process.
    let conn = match e.conn.try_write_for(std::time::Duration::from_millis(200)) {
        Some(mut w) => w.take(),
        None => {
            if let Some(c) = e.conn.read().as_ref() {
                let _ = c.shutdown_write();
            }
            None
        }
    };
    if let Some(c) = conn {
        if c.owned() && !e.forked.load(Relaxed) {
            let _ = c.close();
        } else {
            c.disown();
        }
    }
    close_fd(e.hidden);
    let b = e.held_b.swap(-1, Relaxed);
    close_fd(b);
    report(serde_json::json!({
        "event": "close",
        "pid": sys::getpid(),
        "role": e.role,
        "local": e.local,
        "peer": e.peer,
        "copied_in": e.copied_in.load(Relaxed),
        "copied_out": e.copied_out.load(Relaxed),
    }));
}

/// `fd` is about to be closed (or replaced by `dup2`/`dup3`).
pub fn closing(fd: c_int) {
    if !on() {
        return;
    }
    if let Some(_g) = Guard::enter() {
        let err = last_errno();
        guard::shielded(|| ready::closing(fd));
        guard::set_errno(err);
    }
    let lst = marked(fd) || with_table(|t| t.listeners.contains_key(&fd));
    if !lst {
        return;
    }
    let Some(_g) = Guard::enter() else { return };
    let err = last_errno();
    guard::shielded(|| {
        set_mark(fd, false);
        let (e, listener) = with_table(|t| {
            slot_set(fd, None);
            (t.fds.remove(&fd), t.listeners.remove(&fd))
        });
        if let Some((name, pid)) = listener {
            if pid == sys::getpid() {
                if let Ok(mem) = memory() {
                    let _ = mem.unbind(&name);
                }
            }
        }
        if let Some(e) = e {
            if e.refs.fetch_sub(1, Relaxed) == 1 {
                finish(&e);
            }
        }
    });
    guard::set_errno(err);
}

/// `close_range(first, last)` is about to close these descriptors.
pub fn closing_range(first: u32, last: u32) {
    if !on() {
        return;
    }
    if let Some(_g) = Guard::enter() {
        guard::shielded(|| ready::closing_range(first, last));
    }
    let fds: Vec<c_int> = {
        let Some(_g) = Guard::enter() else { return };
        with_table(|t| {
            t.fds
                .keys()
                .chain(t.listeners.keys())
                .copied()
                .filter(|&f| (first..=last).contains(&(f as u32)))
                .collect()
        })
    };
    for fd in fds {
        closing(fd);
    }
}

/// `new` is a duplicate of `old`.
pub fn duplicated(old: c_int, new: c_int) {
    if on() {
        if let Some(_g) = Guard::enter() {
            guard::shielded(|| ready::duplicated(old, new));
        }
    }
    if new < 0 || old == new || !marked(old) {
        return;
    }
    let Some(_g) = Guard::enter() else { return };
    with_table(|t| {
        if let Some(e) = t.fds.get(&old).cloned() {
            e.refs.fetch_add(1, Relaxed);
            slot_set(new, Some(&e));
            t.fds.insert(new, e);
        }
    });
    set_mark(new, true);
}

/// `fcntl(fd, F_SETFL, flags)` succeeded.
pub fn set_flags(fd: c_int, flags: c_int) {
    if marked(fd) {
        if let Some(e) = entry(fd) {
            e.nonblock.store(flags & libc::O_NONBLOCK != 0, Relaxed);
        }
    }
}

/// `dup2`/`dup3(old, new)` is about to replace `new`.
pub fn dup_onto(old: c_int, new: c_int) {
    if old != new && (marked(new) || ready::is_epoll(new)) {
        closing(new);
    }
}

/// The descriptor socket-level calls (`getsockname`, `getsockopt`...) go to: the kernel socket
/// of a local connection, else `fd` itself.
pub fn kernel_fd(fd: c_int) -> c_int {
    if !marked(fd) {
        return fd;
    }
    entry(fd).map_or(fd, |e| e.hidden)
}

/// `ioctl` on a local descriptor: `FIONREAD` counts the ring's bytes; the rest goes to the
/// kernel socket (`None`: not a local descriptor).
///
/// # Safety
/// `arg` is the caller's argument for `req`.
pub unsafe fn ioctl(fd: c_int, req: libc::c_ulong, arg: libc::c_ulong) -> Option<c_int> {
    let e = entry(fd)?;
    if req == libc::FIONREAD {
        let n = e.conn.read().as_ref().map_or(0, Conn::pending);
        // SAFETY: FIONREAD's argument is a writable int.
        unsafe {
            std::ptr::write(
                arg as usize as *mut c_int,
                n.min(c_int::MAX as u64) as c_int,
            )
        };
        return Some(0);
    }
    if req == libc::FIONBIO {
        // SAFETY: the caller's argument (an int pointer), passed on to the pair's end.
        let r = unsafe { real::ioctl(fd, req, arg) };
        if r == 0 && arg != 0 {
            // SAFETY: FIONBIO's argument is an int the kernel just read.
            let on = unsafe { std::ptr::read(arg as usize as *const c_int) } != 0;
            e.nonblock.store(on, Relaxed);
        }
        return Some(r);
    }
    // SAFETY: as above, on the kernel socket.
    Some(unsafe { real::ioctl(e.hidden, req, arg) })
}

/// `sendfile` to a local descriptor: read from `in_fd`, then send (one copy into the memory).
///
/// # Safety
/// `off` is null or the caller's writable offset.
pub unsafe fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    off: *mut libc::off64_t,
    count: usize,
) -> Option<ssize_t> {
    if !marked(out_fd) {
        return None;
    }
    let n = count.min(CHUNK);
    let mut buf = vec![0u8; n];
    let got = if off.is_null() {
        // SAFETY: `buf` has `n` writable bytes.
        unsafe { libc::read(in_fd, buf.as_mut_ptr().cast::<c_void>(), n) }
    } else {
        // SAFETY: the caller's readable offset.
        let at = unsafe { *off };
        // SAFETY: `buf` has `n` writable bytes.
        unsafe { libc::pread64(in_fd, buf.as_mut_ptr().cast::<c_void>(), n, at) }
    };
    if got <= 0 {
        return Some(got);
    }
    let sent = send(out_fd, &[&buf[..got as usize]], 0)?;
    if sent > 0 {
        if off.is_null() {
            if sent < got {
                // Give back what was read but not sent.
                // SAFETY: lseek on the caller's file.
                unsafe { libc::lseek64(in_fd, (sent - got) as i64, libc::SEEK_CUR) };
            }
        } else {
            // SAFETY: as above.
            unsafe { *off += sent as i64 };
        }
    }
    Some(sent)
}

/// Before `exec`: closes the local connections whose descriptors close on exec (FIN to the
/// peer; unless a fork shared them) and withdraws this process's listener records.
pub fn before_exec() {
    if !on() {
        return;
    }
    let Some(_g) = Guard::enter() else { return };
    guard::shielded(|| {
        let closing: Vec<(c_int, Arc<Entry>)> =
            with_table(|t| t.fds.iter().map(|(fd, e)| (*fd, e.clone())).collect());
        for (fd, e) in closing {
            // SAFETY: F_GETFD takes no argument.
            let fl = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
            if fl >= 0 && fl & libc::FD_CLOEXEC != 0 && !e.forked.load(Relaxed) {
                if let Some(c) = e.conn.read().as_ref() {
                    let _ = c.shutdown_write();
                }
            }
        }
        let pid = sys::getpid();
        let names: Vec<String> = with_table(|t| {
            t.listeners
                .values()
                .filter(|(_, p)| *p == pid)
                .map(|(n, _)| n.clone())
                .collect()
        });
        if let Ok(mem) = memory() {
            for n in names {
                let _ = mem.unbind(&n);
            }
        }
    });
}

/// At exit: closes this process's connections (FIN, or RST with unread data).
fn close_all() {
    let entries: Vec<Arc<Entry>> = with_table(|t| {
        let v: Vec<_> = t
            .fds
            .drain()
            .map(|(fd, e)| {
                set_mark(fd, false);
                slot_set(fd, None);
                e
            })
            .collect();
        v
    });
    let mut seen: Vec<*const Entry> = Vec::new();
    for e in entries {
        let p = Arc::as_ptr(&e);
        if !seen.contains(&p) {
            seen.push(p);
            finish(&e);
        }
    }
    before_exec();
}
