//! Stack mode: the application's AF_INET stream and datagram sockets are served by segstack over
//! a nicdma port, in this process.
//!
//! # Settings (environment; `hicamp run --mode stack` sets them)
//!
//! | variable | meaning |
//! |---|---|
//! | `HICAMP_SHIM_MODE=stack` | this mode |
//! | `HICAMP_STACK_BACKEND` | `tap:NAME` (an existing TAP device: the launcher makes it), `af_packet:IFACE`, `af_xdp:IFACE[:QUEUE]` |
//! | `HICAMP_STACK_IP` | the stack's `ADDR/PREFIX` |
//! | `HICAMP_STACK_GATEWAY` | default gateway (optional) |
//! | `HICAMP_STACK_REHOME=0` | forked children never re-home listeners ([`rehome`]) |
//! | `HICAMP_TAP_TX_THREAD` | TAP frames of at least this many bytes (default 2048) are written by a writer thread, beside the application; `0`: none |
//!
//! # Design
//!
//! ```text
//!   app fd N (a real descriptor: one end A of an AF_UNIX socketpair)   stack thread
//!     read/write/send/recv/... hooks --lock--> World { Interface<AnyPort>, socks }  <--lock--
//!     poll/epoll/select on N: kernel, natively        ^ B end: tokens (readable), drain (writable)
//! ```
//!
//! * **Routing.** `socket(AF_INET, STREAM|DGRAM)` makes a kernel socket, *pending*: options set
//!   on it are recorded. The first `bind`, `listen`, `connect` or `sendto` decides: a loopback
//!   address (127.0.0.0/8) keeps it in the kernel unchanged (and forgotten); any other address
//!   moves it to the stack: a socketpair is made and its end A is `dup3`ed over the
//!   application's descriptor number (same number, same `O_NONBLOCK`/`FD_CLOEXEC`). Unix
//!   sockets and other families never leave the kernel.
//! * **Readiness.** A stack socket *is* a real descriptor, so kernel `epoll`, `poll`, `select`
//!   on sets mixing kernel and stack descriptors work and sleep in the kernel. In the stack
//!   process, epoll registrations of stack sockets are the stack's own ([`ready`]: readiness
//!   from the stack's state, no system call per event), and a socket no kernel wait can see
//!   (registered only there) has no tokens. For the others the stack drives A's readiness
//!   from the B end: a token byte written into A makes it readable
//!   (one more byte per batch of new data, so that `EPOLLET` sees an edge), `shutdown(B,
//!   SHUT_WR)` is end of stream (`POLLIN|POLLRDHUP`), `shutdown(B, SHUT_RDWR)` a reset or
//!   refused connection (`POLLHUP`). A's send buffer is shrunk to the minimum and filled while
//!   the stack socket cannot take data (connecting, send buffer full), so `POLLOUT` means
//!   what it means for a kernel socket; the B end drains it when room opens.
//! * **One stack per process**, behind one lock: application threads call into it directly
//!   (a send queues its data; the pass that transmits it runs at the thread's next wait in
//!   the shim, a full batch, or the stack thread's tick: *deferred transmit*,
//!   `pump_send`, `HICAMP_STACK_DEFER=0` turns it off), and a stack thread sleeps in `poll`
//!   on the port's descriptor and an eventfd with the next timer as timeout, so
//!   retransmission, delayed ACK, keepalive and TIME-WAIT run while the application sleeps in
//!   a blocking call.
//! * **Inline polling** ([`inline`]): an application thread waiting for a stack socket
//!   (blocking call, `poll`, `epoll_wait`) also waits on the port and runs the interface
//!   itself when a frame arrives; the stack thread then sleeps on its timers and eventfd only.
//! * **Data path.** `send`, `write`, `writev`, `sendmsg`, `sendto` copy the user's bytes into
//!   a segment once (segstack's byte API: small writes append to the socket's tail segment, and
//!   the memory deduplicates lines); from there only snapshots move (send queue =
//!   retransmission queue, headers spliced in front of the payload's own lines). `recv`,
//!   `read`, `readv`, `recvmsg`, `recvfrom` copy out of the received segments once. Both copies
//!   are counted in the report, beside the interface's `tx_payload_copied` (bytes copied below
//!   the socket API: 0 when the payload stays line-aligned).
//! * **Processes.** The process that made the stack is the *stack process*. A child forked
//!   from it keeps its stack descriptors (A ends: readiness keeps working, since the stack
//!   thread writes into B and A is one kernel object in every process) and sends its stack
//!   calls to the stack process over a control connection ([`proxy`]): each request carries
//!   the child's descriptor, recognised by A's inode and lent to its socket for one
//!   non-blocking run of the same call ([`ops`]); a connection only children hold has its
//!   received bytes *pushed* into B, so a child's receive reads A with no request
//!   ([`proxy::push`]). The child closes its copies of the stack
//!   process's own descriptors at fork. A socket that existed at a fork, or that a child used,
//!   is *shared*: the stack process's last close leaves it an orphan until its B end hangs up
//!   (the kernel's count of A copies in all processes reached 0), and only then closes its
//!   connection. Chosen over a stack in shared memory because the stack, its lock and its port
//!   stay in one address space (a child killed mid-call cannot corrupt them), a process that
//!   never forked keeps its direct path, and the kernel already counts who holds a socket;
//!   the price is two copies per byte of a child's payload through the channel (counted;
//!   shared segment rings would remove them). When the stack process exits, children's stack
//!   descriptors read end of stream and their stack calls fail. A child that execs hands its
//!   stack descriptors (number and inode) and the stack's pid to the new image in the
//!   environment (`HICAMP_STACK_PROXY`), which proxies them in turn; the stack process
//!   execing ends its stack. A child that accepts on inherited listeners (nginx's workers)
//!   instead *re-homes* them into a stack of its own on its own queue of the TAP device
//!   ([`rehome`]): no channel for its connections.
//! * **Exit.** At `exit` the stack keeps running up to 2 s so that data and FINs of closed
//!   connections leave (the kernel would send them after the process is gone), then writes the
//!   report `PREFIX.stack.PID.json`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use hicamp::Memory;
use libc::c_int;
use nicdma::backend::{parse_cidr, AnyPort, BackendSpec};
use nicdma::Port;
use segstack::iface::{IfaceConfig, Interface, SocketHandle};
use segstack::tcp::State;
use segstack::Payload;
use std::sync::{Mutex, MutexGuard};

use crate::real;

mod filecache;
pub mod inline;
pub mod ops;
pub mod proxy;
pub mod ready;
mod rehome;

use crate::fdbits::{FdBits, MAX_FD};

/// One bit per stack socket descriptor; [`PMARKS`]: one per pending AF_INET kernel socket.
/// All zero outside stack mode: the hooks' only cost there is two loads.
static MARKS: FdBits = FdBits::new();
static PMARKS: FdBits = FdBits::new();

/// True when `fd` is a pending or stack socket.
#[inline]
pub fn marked(fd: c_int) -> bool {
    MARKS.get(fd) || PMARKS.get(fd)
}

/// True when `fd` is a stack socket.
#[inline]
pub fn is_stack(fd: c_int) -> bool {
    MARKS.get(fd)
}

fn mark(fd: c_int) {
    MARKS.set(fd, true);
}

fn unmark(fd: c_int) {
    MARKS.set(fd, false);
}

fn mark_pending(fd: c_int, on: bool) {
    PMARKS.set(fd, on);
}

/// 0: not decided; 1: stack mode; 2: another mode.
static ON: AtomicU8 = AtomicU8::new(0);

/// True in stack mode.
#[inline]
pub fn on() -> bool {
    match ON.load(Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = crate::config::Config::get().mode == crate::config::Mode::Stack;
            ON.store(if on { 1 } else { 2 }, Relaxed);
            on
        }
    }
}

/// Set in a forked child of a stack process (or of such a child): its stack operations go to
/// the stack process over the control channel ([`proxy`]).
static FORKED: AtomicBool = AtomicBool::new(false);

/// Forks this stack process made (a socket created before the latest fork may have copies in
/// children: [`Sock::shared`]).
static FORKS: AtomicU64 = AtomicU64::new(0);

/// The stack process's own descriptors (B ends, the port, the eventfd, the orphan epoll, the
/// control listener): a forked child closes its copies of them at once, so that a stack
/// process's exit is seen by its children's A ends and the TAP is released with it.
static INTERNAL: FdBits = FdBits::new();

/// Marks (or clears) one of the stack process's own descriptors.
fn internal(fd: c_int, on: bool) {
    INTERNAL.set(fd, on);
}

/// The epoll set of orphans' B ends (sockets no descriptor of this process refers to, which
/// live while a child holds their A end): -1 until the stack exists.
static ORPHANS: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
/// An epoll set of pushed sockets' B ends (`EPOLLOUT | EPOLLONESHOT`, armed while bytes wait
/// in the stack because B was full): the stack thread pushes the rest when B has room.
static SPILLS: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// The stack mode's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The backend.
    pub backend: BackendSpec,
    /// Our address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: Option<Ipv4Addr>,
}

impl Settings {
    /// Parses the settings from `get` (an environment lookup).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let backend = get("HICAMP_STACK_BACKEND")
            .filter(|s| !s.is_empty())
            .ok_or("HICAMP_STACK_BACKEND is not set (tap:NAME, af_packet:IFACE, af_xdp:IFACE)")?;
        let backend: BackendSpec = backend
            .parse()
            .map_err(|e| format!("HICAMP_STACK_BACKEND: {e}"))?;
        if backend == BackendSpec::Sim {
            return Err("HICAMP_STACK_BACKEND=sim: the sim backend has no wire to a peer".into());
        }
        let ip = get("HICAMP_STACK_IP")
            .filter(|s| !s.is_empty())
            .ok_or("HICAMP_STACK_IP is not set (ADDR/PREFIX, like 10.0.0.2/24)")?;
        let (ip, prefix) = parse_cidr(&ip).map_err(|e| format!("HICAMP_STACK_IP: {e}"))?;
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(format!(
                "HICAMP_STACK_IP: {ip} cannot be the stack's address"
            ));
        }
        let gateway = match get("HICAMP_STACK_GATEWAY").filter(|s| !s.is_empty()) {
            None => None,
            Some(g) => Some(
                g.parse::<Ipv4Addr>()
                    .map_err(|_| format!("HICAMP_STACK_GATEWAY: bad address {g:?}"))?,
            ),
        };
        Ok(Settings {
            backend,
            ip,
            prefix,
            gateway,
        })
    }

    fn from_env() -> Result<Settings, String> {
        Settings::parse(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }
}

/// Socket options recorded for a socket.
#[derive(Debug, Clone, Default)]
struct Opts {
    reuseaddr: bool,
    reuseport: bool,
    keepalive: bool,
    keepidle: Option<u32>,
    keepintvl: Option<u32>,
    keepcnt: Option<u32>,
    nodelay: bool,
    linger: Option<libc::linger>,
    rcvtimeo: Option<Duration>,
    sndtimeo: Option<Duration>,
    sndbuf: Option<c_int>,
    rcvbuf: Option<c_int>,
}

/// A kernel AF_INET socket whose route is not decided yet.
#[derive(Debug, Clone)]
struct Pending {
    dgram: bool,
    opts: Opts,
}

/// A TCP socket's life in the stack.
#[derive(Debug)]
enum Tcp {
    /// Not bound (only after a bind that failed to decide, kept for symmetry).
    Unbound,
    /// Bound to a port, not listening.
    Bound(u16),
    /// Listening: the stack's handle, the backlog, connections taken from the stack's queue.
    Listening(SocketHandle, usize, VecDeque<SocketHandle>),
    /// Our SYN is out.
    Connecting(SocketHandle),
    /// Connected (or was).
    Connected(SocketHandle),
}

#[derive(Debug)]
enum Kind {
    Tcp(Tcp),
    Udp {
        h: Option<SocketHandle>,
        port: u16,
        peer: Option<SocketAddrV4>,
        queue: VecDeque<(SocketAddrV4, Payload)>,
    },
}

/// One connection's line in the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct ConnRecord {
    id: u64,
    fd: c_int,
    route: &'static str,
    why: &'static str,
    #[serde(rename = "type")]
    ty: &'static str,
    local: Option<String>,
    peer: Option<String>,
    sent_bytes: u64,
    received_bytes: u64,
    send_calls: u64,
    recv_calls: u64,
    open: bool,
    /// The TCP connection's state and counters when its descriptor closed (or at exit).
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<String>,
}

/// A stack socket.
#[derive(Debug)]
struct Sock {
    kind: Kind,
    /// The application's descriptors on it (dup'd ones too); the first is used for A-side work.
    fds: Vec<c_int>,
    /// The B end (the stack's).
    b: c_int,
    nonblock: bool,
    opts: Opts,
    bound_ip: Ipv4Addr,
    tokens: u32,
    last_rxq: usize,
    eof_sig: bool,
    hup_sig: bool,
    filled: bool,
    so_error: c_int,
    err_taken: bool,
    established: bool,
    rd_shut: bool,
    wr_shut: bool,
    rec: ConnRecord,
    /// A's inode: how a forked child's copy of A is recognised ([`proxy`]).
    ino: u64,
    /// [`FORKS`] when the socket was made.
    epoch: u64,
    /// A forked child has used it (or it was made for one).
    proxied: bool,
    /// No descriptor of this process refers to it, but a child's may: its B end waits in
    /// [`ORPHANS`] for the hang-up that says every A copy is closed.
    orphan: bool,
    /// A's readiness is kept up to date with tokens: a thread may wait on A in the kernel
    /// (a blocking call, `poll`, `select`, a kernel epoll set). Sticky. Without it (and
    /// while no other process holds A) the socket is *quiet*: only [`ready`]'s epoll
    /// registrations see its readiness, from `mask` and `seq`, without system calls.
    tokens_on: bool,
    /// Its readiness as epoll bits, as of the last [`sync`].
    mask: u32,
    /// Raised by [`sync`] at each wake-up an edge-triggered registration reports (new
    /// data, a readiness bit that rose).
    seq: u64,
    /// Its slot in [`World::socks`].
    slot: usize,
    /// In [`Engine::watch`]: a pass syncs it whether or not the interface reports it.
    watched: bool,
    /// In [`Engine::changed`]: its readiness rose since [`ready`] last looked.
    changed: bool,
    /// Pushed: received bytes go into B as they arrive (no tokens), so a forked child reads
    /// them from A with its own kernel call ([`proxy::push`]). Sticky.
    pushed: bool,
    /// B is in [`SPILLS`] (armed or not).
    spill_reg: bool,
    /// `rec.sent_bytes` at the end of its last `sendfile`: the bytes written since then lie
    /// in one tail segment from a line boundary on ([`ops`]'s `sendfile` queues a small file
    /// range at their line phase, so that it shares a frame with them without a copy).
    sendfile_end: u64,
}

impl Sock {
    /// This process's descriptor of A (-1: none; the stack then leaves A-side work, a token
    /// drain or a fill, to the next call that has one).
    fn a(&self) -> c_int {
        self.fds.first().copied().unwrap_or(-1)
    }

    /// Copies of A may live in other processes: its last close here must not close it.
    fn shared(&self) -> bool {
        self.proxied || FORKS.load(Relaxed) > self.epoch
    }

    /// A's readiness must be kept in the kernel (tokens, fill): see [`Sock::tokens_on`].
    fn tokens(&self) -> bool {
        self.tokens_on || self.shared()
    }
}

/// Totals of the process.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Counters {
    sent_bytes: u64,
    received_bytes: u64,
    send_calls: u64,
    recv_calls: u64,
    /// Bytes copied from the application's buffers into segments (the one copy POSIX forces).
    api_copy_in_bytes: u64,
    /// Bytes copied out of received segments into the application's buffers.
    api_copy_out_bytes: u64,
    /// Bytes sendfile read from files into segments.
    sendfile_bytes: u64,
    stack_sockets: u64,
    kernel_inet_sockets: u64,
    kernel_other_sockets: u64,
}

/// The stack and its port.
struct Engine {
    iface: Interface<AnyPort>,
    mem: Memory,
    t0: Instant,
    next_port: u16,
    settings: Settings,
    /// Handles closed by the application that TCP may still be finishing.
    closing: Vec<SocketHandle>,
    /// A handle's index -> the slot of the socket that last synced it (checked on use: a
    /// handle may be reused).
    by_handle: Vec<usize>,
    /// Slots a pass syncs although the interface may not report them ([`watched`]).
    watch: Vec<usize>,
    /// The other buffer of [`Engine::watch`] ([`sync_touched`] swaps them: no allocation per
    /// pass).
    watch_spare: Vec<usize>,
    /// Slots whose readiness rose ([`set_mask`]), for [`ready`]'s ready lists.
    changed: Vec<usize>,
    /// The handles a pass reported (scratch).
    touched: Vec<usize>,
}

impl Engine {
    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }
}

/// Everything of the stack mode, behind one lock.
struct World {
    pending: FdMap<Pending>,
    fds: FdMap<usize>,
    socks: Vec<Option<Sock>>,
    engine: Option<Engine>,
    failed: Option<(c_int, String)>,
    records: Vec<ConnRecord>,
    counters: Counters,
    notes: BTreeMap<String, u64>,
    next_id: u64,
    /// A's inode -> socket slot (for forked children's requests).
    inos: HashMap<u64, usize>,
    /// Epoll instances (by descriptor) holding stack sockets' registrations ([`ready`]).
    epolls: FdMap<ready::Set>,
}

/// A map keyed by descriptor, with one multiplication as its hash
/// ([`crate::fdtable::FdHasher`]).
type FdMap<V> = HashMap<c_int, V, std::hash::BuildHasherDefault<crate::fdtable::FdHasher>>;

static WORLD: LazyLock<Mutex<World>> = LazyLock::new(|| Mutex::new(World::empty()));

/// The stack thread's wake-up eventfd (-1 until the stack exists).
static WAKE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
/// When the stack thread will wake by itself (engine ns; `u64::MAX`: never).
static SLEEP_UNTIL: AtomicU64 = AtomicU64::new(u64::MAX);
/// The engine's clock origin, for the stack thread's plans that need nothing else of the
/// world: nanoseconds after [`PLAN_BASE`] (`u64::MAX`: no stack yet). Set whenever a stack
/// starts, a re-homed child's included (its engine's clock starts anew), and read without a
/// lock, so a fork in the middle of a read leaves nothing locked in the child.
static PLAN_T0: AtomicU64 = AtomicU64::new(u64::MAX);
/// The instant [`PLAN_T0`] counts from (set once per process tree; a child inherits it).
static PLAN_BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The engine's clock (as `Engine::now`) from [`PLAN_T0`], if a stack started.
fn plan_now() -> Option<u64> {
    let t0 = PLAN_T0.load(Relaxed);
    let base = PLAN_BASE.get()?;
    (t0 != u64::MAX).then(|| (base.elapsed().as_nanos() as u64).saturating_sub(t0))
}

/// The world's lock. A futex lock (std's), not a spinning one: the application's threads and
/// the stack thread hand it back and forth on every frame, and a lock that yields while it
/// spins spent a fifth of redis-server's time in the scheduler. A panic inside cannot leave
/// the world half-changed in a way the next call could not live with (every hook is
/// shielded), so a poisoned lock is taken as it is.
fn lock() -> WorldGuard {
    WorldGuard(
        WORLD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// The world's lock held. When it is let go after a quiet socket's readiness rose while
/// another thread sleeps in an epoll wait of [`ready`], that thread is woken ([`ready::kick`]).
struct WorldGuard(MutexGuard<'static, World>);

impl std::ops::Deref for WorldGuard {
    type Target = World;
    fn deref(&self) -> &World {
        &self.0
    }
}

impl std::ops::DerefMut for WorldGuard {
    fn deref_mut(&mut self) -> &mut World {
        &mut self.0
    }
}

impl Drop for WorldGuard {
    fn drop(&mut self) {
        ready::kick();
    }
}

fn note(w: &mut World, what: String) {
    *w.notes.entry(what).or_insert(0) += 1;
}

impl World {
    /// A world without a stack yet.
    fn empty() -> World {
        World {
            pending: FdMap::default(),
            fds: FdMap::default(),
            socks: Vec::new(),
            engine: None,
            failed: None,
            records: Vec::new(),
            counters: Counters::default(),
            notes: BTreeMap::new(),
            next_id: 1,
            inos: HashMap::new(),
            epolls: FdMap::default(),
        }
    }

    /// The engine, made on first use (opens the port, starts the stack thread).
    fn engine(&mut self) -> Result<&mut Engine, c_int> {
        if self.engine.is_none() {
            if let Some((e, _)) = &self.failed {
                return Err(*e);
            }
            match start() {
                Ok(e) => self.engine = Some(e),
                Err((errno, msg)) => {
                    crate::sys::diag(&format!("stack mode: {msg}"));
                    self.failed = Some((errno, msg));
                    return Err(errno);
                }
            }
        }
        self.engine.as_mut().ok_or(libc::ENETDOWN)
    }

    fn new_sock(&mut self, kind: Kind, a: c_int, b: c_int, nonblock: bool, opts: Opts) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        let ty = match kind {
            Kind::Tcp(_) => "stream",
            Kind::Udp { .. } => "dgram",
        };
        let bound_ip = self
            .engine
            .as_ref()
            .map_or(Ipv4Addr::UNSPECIFIED, |e| e.settings.ip);
        let s = Sock {
            kind,
            fds: vec![a],
            b,
            nonblock,
            opts,
            bound_ip,
            tokens: 0,
            pushed: false,
            spill_reg: false,
            sendfile_end: 0,
            last_rxq: 0,
            eof_sig: false,
            hup_sig: false,
            filled: false,
            so_error: 0,
            err_taken: false,
            established: false,
            rd_shut: false,
            wr_shut: false,
            ino: proxy::inode(a),
            epoch: FORKS.load(Relaxed),
            proxied: false,
            orphan: false,
            tokens_on: !ready::enabled(),
            mask: 0,
            seq: 0,
            slot: 0,
            // Synced by the next pass (which also learns its handle): see [`watched`].
            watched: true,
            changed: false,
            rec: ConnRecord {
                id,
                fd: a,
                route: "stack",
                why: "AF_INET, not loopback",
                ty,
                open: true,
                ..ConnRecord::default()
            },
        };
        self.counters.stack_sockets += 1;
        // A stack process whose queue is detached ([`rehome`]) needs the network again.
        rehome::need_network(self);
        let slot = match self.socks.iter().position(Option::is_none) {
            Some(i) => {
                self.socks[i] = Some(Sock { slot: i, ..s });
                i
            }
            None => {
                let i = self.socks.len();
                self.socks.push(Some(Sock { slot: i, ..s }));
                i
            }
        };
        match self.engine.as_mut() {
            Some(e) => e.watch.push(slot),
            None => {
                if let Some(s) = self.socks[slot].as_mut() {
                    s.watched = false;
                }
            }
        }
        self.fds.insert(a, slot);
        mark(a);
        if let Some(s) = self.socks[slot].as_ref() {
            internal(s.b, true);
            if s.ino != 0 {
                self.inos.insert(s.ino, slot);
            }
        }
        slot
    }
}

/// Opens the port and makes the interface; starts the stack thread.
fn start() -> Result<Engine, (c_int, String)> {
    if FORKED.load(Relaxed) {
        return Err((
            libc::EIO,
            "a forked child cannot use the parent's stack".into(),
        ));
    }
    // A forked child starting its own stack ([`rehome`]) takes the stack process's settings.
    let settings = match rehome::child_settings() {
        Some(s) => s,
        None => Settings::from_env().map_err(|e| (libc::EINVAL, e))?,
    };
    // Read now: an application may clear its environment later (nginx keeps only TZ).
    ops::sendfile_settings();
    let tx_thread = tap_tx_thread().map_err(|e| (libc::EINVAL, e))?;
    let mem = Memory::new(hicamp::Config {
        capacity_lines: 1 << 24,
        map_capacity: 1 << 20,
        ..hicamp::Config::default()
    })
    .map_err(|e| (libc::ENOMEM, format!("memory: {e}")))?;
    let port = settings.backend.open().map_err(|e| {
        let s = e.to_string();
        let errno = if s.contains("permitted") || s.contains("root") {
            libc::EACCES
        } else {
            libc::ENETDOWN
        };
        (errno, format!("{}: {s}", settings.backend))
    })?;
    if let BackendSpec::Tap(name) = &settings.backend {
        wait_operational(name);
    }
    let mac = port.mac().unwrap_or([2, 0x68, 0x63, 0x61, 0x6d, 0x70]);
    let mut cfg = IfaceConfig::new(mac, settings.ip, settings.prefix);
    cfg.gateway = settings.gateway;
    rehome::configure(&port, &mut cfg);
    if let Some(mtu) = port.mtu() {
        cfg.mtu = mtu as usize;
    }
    let iface =
        Interface::new(&mem, port, cfg).map_err(|e| (libc::ENETDOWN, format!("interface: {e}")))?;
    // SAFETY: eventfd has no memory precondition.
    let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if wake < 0 {
        return Err((crate::guard::errno(), "eventfd failed".into()));
    }
    WAKE.store(wake, Relaxed);
    internal(wake, true);
    // SAFETY: epoll_create1 has no memory precondition.
    let orphans = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if orphans < 0 {
        return Err((crate::guard::errno(), "epoll_create1 failed".into()));
    }
    ORPHANS.store(orphans, Relaxed);
    internal(orphans, true);
    // SAFETY: epoll_create1 has no memory precondition.
    let spills = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if spills >= 0 {
        SPILLS.store(spills, Relaxed);
        internal(spills, true);
    }
    let mut iface = iface;
    if let AnyPort::Tap(t) = iface.nic_mut().port_mut() {
        t.set_tx_thread(tx_thread);
    }
    if let Some(fd) = iface.nic().port().rx_fd() {
        internal(fd, true);
        inline::set_port(fd);
        if inline::port_fd() >= 0 {
            if let AnyPort::Tap(t) = iface.nic_mut().port_mut() {
                // Every arrival is seen by a waiter that rearms ([`inline::run`]) or by the
                // stack thread, which rearms before each pass.
                t.set_lazy_rx(true);
            }
            ready::init();
        }
    }
    defer_init();
    proxy::STACK_SELF.store(crate::sys::getpid(), Relaxed);
    let seed = crate::sys::getpid() as u64 ^ crate::sys::unix_millis();
    let t0 = Instant::now();
    let base = *PLAN_BASE.get_or_init(|| t0);
    PLAN_T0.store(t0.duration_since(base).as_nanos() as u64, Relaxed);
    let engine = Engine {
        iface,
        mem,
        t0,
        next_port: 49_152 + (seed % 8_000) as u16 * 2,
        settings,
        closing: Vec::new(),
        by_handle: Vec::new(),
        watch: Vec::new(),
        watch_spare: Vec::new(),
        changed: Vec::new(),
        touched: Vec::new(),
    };
    // The standard library's panic message would go to fd 2, which may be a socket.
    std::panic::set_hook(Box::new(|info| crate::sys::diag(&format!("panic: {info}"))));
    STARTED.store(true, Relaxed);
    crate::sys::spawn_quiet("hicamp-stack", None, stack_thread)
        .map_err(|e| (libc::EAGAIN, format!("stack thread: {e}")))?;
    // Once: a forked child that starts a stack of its own ([`rehome`]) inherited them.
    if !HOOKED.swap(true, Relaxed) {
        // SAFETY: registering a plain `extern "C" fn()` with no precondition.
        unsafe { libc::atexit(at_exit) };
        // SAFETY: the handlers are `extern "C" fn()` that never unwind.
        unsafe {
            libc::pthread_atfork(
                Some(atfork_prepare),
                Some(atfork_parent),
                Some(atfork_child),
            )
        };
    }
    Ok(engine)
}

/// Before a fork of the stack process: the control listener its children will reach it on
/// (in a forked child: [`proxy::barrier`]). The world's lock is then held across the fork,
/// so that the child's copy of it is unlocked: a child may start a stack of its own
/// ([`rehome`]).
unsafe extern "C" fn atfork_prepare() {
    if !FORKED.load(Relaxed) {
        let _ = crate::guard::shielded(flush_deferred);
        let _ = crate::guard::shielded(ready::materialize_all);
        let _ = crate::guard::shielded(proxy::listen_for_children);
        let _ = crate::guard::shielded(|| {
            let g = WORLD
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            HELD.with(|h| *h.borrow_mut() = Some(g));
        });
    } else {
        // A child forking: its posted sends are served before its own child's calls.
        let _ = crate::guard::shielded(proxy::barrier);
    }
}

thread_local! {
    /// The world's lock, held by the forking thread across a fork ([`atfork_prepare`]).
    static HELD: std::cell::RefCell<Option<MutexGuard<'static, World>>> =
        const { std::cell::RefCell::new(None) };
}

/// Lets go of the world's lock held across a fork.
fn release_held() {
    let _ = HELD.try_with(|h| h.borrow_mut().take());
}

/// After a fork, in the stack process: every socket that exists now may have copies in the
/// child.
unsafe extern "C" fn atfork_parent() {
    release_held();
    FORKS.fetch_add(1, Relaxed);
}

/// Waits (at most 3 s) until the kernel has the TAP device operational again after this
/// process attached it: the kernel turns its queue on from a deferred work item (up to a
/// second after the carrier came back), and until then it drops what it sends to us.
fn wait_operational(name: &str) {
    let path = format!("/sys/class/net/{name}/operstate");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match std::fs::read_to_string(&path) {
            Ok(s) if s.trim() == "up" => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return,
        }
    }
}

/// In a forked child: the stack (its thread, its port, its lock) stayed with the stack
/// process, which serves this process's stack operations from now on ([`proxy`]): the
/// descriptor marks stay (every stack descriptor is the A end of a pair whose B end the stack
/// process keeps), the stack process's own descriptors (B ends, port, eventfd, listener) are
/// closed here, and the control connection is made at the first operation. Only system calls
/// and atomics: the world's lock is never touched in a child.
unsafe extern "C" fn atfork_child() {
    // The lock's copy is released by the only thread: no waiter exists in this process.
    release_held();
    rehome::forked();
    if !FORKED.load(Relaxed) {
        proxy::STACK_PID.store(proxy::STACK_SELF.load(Relaxed), Relaxed);
        FORKED.store(true, Relaxed);
    }
    proxy::FORK_GEN.fetch_add(1, Relaxed);
    INTERNAL.drain(|fd| {
        // A descriptor lent to a socket for a request is marked there, not here.
        unmark(fd);
        mark_pending(fd, false);
        // SAFETY: the stack process's descriptor, copied into this child: ours to close.
        unsafe { real::close(fd) };
    });
}

extern "C" fn at_exit() {
    exiting("exit");
}

/// Called at exit and by the `_exit` and exec hooks: the final report (once). The work runs on
/// a thread of its own: the exiting thread's thread-locals (the memory's epoch pin) may be
/// gone already.
pub fn exiting(reason: &'static str) {
    if ON.load(Relaxed) == 1 && !FORKED.load(Relaxed) && STARTED.load(Relaxed) {
        if let Some(_g) = crate::guard::Guard::enter() {
            crate::guard::shielded(|| {
                let t = crate::sys::spawn_quiet("hicamp-stack-exit", None, move || {
                    crate::guard::enter_forever();
                    let _ = crate::guard::shielded(|| finish(reason));
                });
                if let Ok(t) = t {
                    let _ = t.join();
                }
            });
        }
    }
}

/// Set once the stack started in this process.
static STARTED: AtomicBool = AtomicBool::new(false);

/// The exit and fork handlers are registered (inherited by a forked child).
static HOOKED: AtomicBool = AtomicBool::new(false);

static FINISHED: AtomicBool = AtomicBool::new(false);

/// Lets closing connections finish (at most 2 s), then writes the report.
fn finish(reason: &str) {
    if FINISHED.swap(true, Relaxed) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut w = lock();
        let World { engine, socks, .. } = &mut *w;
        let Some(e) = engine.as_mut() else {
            break;
        };
        // Connections still open close as the kernel would close them at exit.
        for s in socks.iter_mut().flatten() {
            if let Kind::Tcp(Tcp::Connected(h)) = s.kind {
                s.rec.tcp = tcp_summary(e, h);
                let _ = e.iface.close(h);
                e.closing.push(h);
            }
        }
        let now = e.now();
        let _ = e.iface.poll(now);
        e.closing.retain(|&h| {
            e.iface.tcp(h).is_ok_and(|t| {
                !matches!(t.state(), State::Closed | State::TimeWait | State::FinWait2)
                    || t.send_queue() > 0
            })
        });
        if e.closing.is_empty() || Instant::now() >= deadline {
            break;
        }
        drop(w);
        std::thread::sleep(Duration::from_millis(2));
    }
    // Frames the TAP port's writer thread still holds (the last ACKs and FINs) are written
    // before the process ends it (at most 200 ms more).
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        let waiting = match lock().engine.as_ref().map(|e| e.iface.nic().port()) {
            Some(AnyPort::Tap(t)) => t.tx_thread().map_or(0, |x| x.in_flight()),
            _ => 0,
        };
        if waiting == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    write_report(reason);
}

/// A connection's state and counters, for the report.
fn tcp_summary(e: &Engine, h: SocketHandle) -> Option<String> {
    e.iface
        .tcp(h)
        .ok()
        .map(|t| format!("{} {:?}", t.state(), t.stats()))
}

/// The report as JSON.
fn report_json(reason: &str) -> serde_json::Value {
    let w = lock();
    let mut conns: Vec<ConnRecord> = w.records.clone();
    for s in w.socks.iter().flatten() {
        conns.push(s.rec.clone());
    }
    conns.sort_by_key(|c| c.id);
    let (iface, copies, mem, backend, ip) = match &w.engine {
        Some(e) => {
            let st = e.iface.stats();
            let c = e.iface.nic().port().copies();
            let m = e.mem.stats();
            (
                serde_json::json!({
                    "rx_frames": st.rx_frames, "tx_frames": st.tx_frames,
                    "rx_malformed": st.rx_malformed, "rx_bad_csum": st.rx_bad_csum,
                    "rx_no_socket": st.rx_no_socket, "tx_dropped": st.tx_dropped,
                    "arp_requests": st.arp_requests,
                    "tx_payload_bytes": st.tx_payload_bytes,
                    "tx_payload_shared": st.tx_payload_shared,
                    "tx_payload_copied": st.tx_payload_copied,
                    "rx_payload_bytes": st.rx_payload_bytes,
                }),
                serde_json::json!({
                    "rx_frames": c.rx_frames, "rx_copy_bytes": c.rx_copy_bytes,
                    "tx_frames": c.tx_frames, "tx_gather_bytes": c.tx_gather_bytes,
                    "kicks": c.kicks, "tx_threaded": c.tx_threaded,
                    "tx_thread_errors": c.tx_thread_errors,
                }),
                serde_json::json!({"memory": format!("{m:?}"), "nic": format!("{:?}", e.iface.nic().counters()), "iface": format!("{st:?}")}),
                e.settings.backend.to_string(),
                format!("{}/{}", e.settings.ip, e.settings.prefix),
            )
        }
        None => (
            serde_json::Value::Null,
            serde_json::Value::Null,
            serde_json::Value::Null,
            String::new(),
            String::new(),
        ),
    };
    // A forked child's payload crosses the control channel: copied into the kernel and out
    // again, twice per byte below the socket API (counted here, where it arrives or leaves).
    let proxied = proxy::stats();
    // Bytes pushed into B ends were taken out of the received segments by a copy, as a
    // receive takes them ([`proxy::push`]).
    let mut totals = w.counters;
    totals.api_copy_out_bytes += proxied.pushed_bytes;
    totals.received_bytes += proxied.pushed_bytes;
    let below = match &w.engine {
        Some(e) => e.iface.stats().tx_payload_copied,
        None => 0,
    } + proxied.copied_bytes
        + filecache::cache().stats.phased_copy_bytes;
    serde_json::json!({
        "tool": "hicamp libc-shim",
        "mode": "stack",
        "run_id": crate::config::Config::get().run_id,
        "pid": crate::sys::getpid(),
        "program": crate::sys::cmdline(),
        "reason": reason,
        "backend": backend,
        "ip": ip,
        "stack_error": w.failed.as_ref().map(|f| f.1.clone()),
        "totals": totals,
        "sendfile_cache": filecache::report(),
        "payload_bytes_copied_below_socket_api": below,
        "connections": conns,
        "proxy": proxied,
        "rehome": rehome::stats(),
        "defer": {
            "on": DEFER_ON.load(Relaxed),
            "deferred_sends": DEFERS.load(Relaxed),
            "passes_with_deferred_output": DEFER_FLUSHES.load(Relaxed),
            "safety_net_passes": DEFER_NET_PASSES.load(Relaxed),
            "ticks": DEFER_TICKS.load(Relaxed),
            "idle_ticks": DEFER_IDLE_TICKS.load(Relaxed),
        },
        "notes": w.notes,
        "iface": iface,
        "port_copies": copies,
        "memory": mem,
    })
}

fn write_report(reason: &str) {
    let json = report_json(reason);
    let pid = crate::sys::getpid();
    let path = match &crate::config::Config::get().report {
        Some(p) => std::path::PathBuf::from(format!("{}.stack.{pid}.json", p.display())),
        None => crate::sys::tmp_dir().join(format!("hicamp-shim-stack.{pid}.json")),
    };
    let bytes = serde_json::to_vec_pretty(&json).unwrap_or_default();
    if let Err(e) = crate::sys::replace(&path, &bytes) {
        crate::sys::diag(&format!("stack report {}: {e}", path.display()));
    }
}

// ---- deferred transmit ---------------------------------------------------------------------

/// Deferred transmit is on: `HICAMP_STACK_DEFER` is not `0` and inline polling has the port
/// (so that the application's waits are the shim's). Decided when the stack starts.
static DEFER_ON: AtomicBool = AtomicBool::new(false);
/// A send queued output that no pass has transmitted yet (set and cleared under the world's
/// lock; read without it by the stack thread's tick and by the wait points).
static PENDING: AtomicBool = AtomicBool::new(false);
/// When [`PENDING`] was set ([`defer_now`]).
static PENDING_SINCE: AtomicU64 = AtomicU64::new(0);
/// Bytes the sends queued since the last pass.
static PENDING_BYTES: AtomicU64 = AtomicU64::new(0);
/// Sends deferred so far (the stack thread's tick looks whether it moved).
static DEFERS: AtomicU64 = AtomicU64::new(0);
/// The stack thread ticks every [`DEFER_TICK_NS`] (sends defer): the safety net.
static TICKING: AtomicBool = AtomicBool::new(false);
/// The stack thread's eventfd was written for a reason other than starting its ticks.
static WAKE_OTHER: AtomicBool = AtomicBool::new(false);
/// Passes the stack thread's tick made for output left pending (report).
static DEFER_NET_PASSES: AtomicU64 = AtomicU64::new(0);
/// Sends that deferred, and passes that found output pending (report).
static DEFER_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Bytes after which a send runs its pass at once (a full batch).
const DEFER_BATCH: u64 = 64 << 10;
/// The stack thread's shortest tick while sends defer, and the age after which output left
/// pending is transmitted by it. A tick that finds nothing to transmit (the application's
/// waits in the shim flushed its output, the common case of an event loop) doubles the next
/// one, up to [`DEFER_TICK_MAX_NS`]; a tick that transmits output left pending makes them
/// short again. So output waits at most about 1.5 short ticks (750 us) while a thread keeps
/// leaving it (it computes or sleeps outside the shim), and at most about one long tick
/// (4.25 ms) the first time after a run of ticks that found nothing; an event loop's process
/// is woken about 250 times a second instead of 2000.
const DEFER_TICK_NS: u64 = 500_000;
/// The longest tick ([`DEFER_TICK_NS`]).
const DEFER_TICK_MAX_NS: u64 = 4_000_000;
/// The stack thread's tick now (between [`DEFER_TICK_NS`] and [`DEFER_TICK_MAX_NS`]).
static TICK_NS: AtomicU64 = AtomicU64::new(DEFER_TICK_NS);
/// Ticks that found nothing to transmit (report).
static DEFER_IDLE_TICKS: AtomicU64 = AtomicU64::new(0);
/// Ticks (report).
static DEFER_TICKS: AtomicU64 = AtomicU64::new(0);

fn defer_now() -> u64 {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Frames of at least this many bytes go to the TAP port's writer thread by default
/// (`TapPort::set_tx_thread`): TSO frames and full-size segments, not ACKs or small replies.
pub(crate) const TAP_TX_THREAD_MIN: usize = 2048;

/// The TAP writer thread's threshold: `HICAMP_TAP_TX_THREAD` (bytes; `0` or `off`: no
/// writer thread), else [`TAP_TX_THREAD_MIN`]; an error for a value that is neither. Read
/// when the stack starts, as an application may clear its environment later.
fn tap_tx_thread() -> Result<Option<usize>, String> {
    match std::env::var("HICAMP_TAP_TX_THREAD") {
        Err(_) => Ok(Some(TAP_TX_THREAD_MIN)),
        Ok(v) => nicdma::tap::parse_tx_thread(&v).map_err(|e| format!("HICAMP_TAP_TX_THREAD: {e}")),
    }
}

/// Decides [`DEFER_ON`] (the stack starts; the environment is read now, as an application may
/// clear it later).
fn defer_init() {
    let env = std::env::var_os("HICAMP_STACK_DEFER").is_none_or(|v| v != "0");
    DEFER_ON.store(env && inline::port_fd() >= 0, Relaxed);
    defer_now();
}

/// After a send queued `bytes`: its pass runs at the thread's next wait in the shim (or any
/// call that runs a pass), when a full batch waits, or from the stack thread's tick; at once
/// with deferral off, on a control-channel server thread and for a child's request.
fn pump_send(w: &mut World, bytes: usize) {
    let served = PUMPS_DEFERRED.with(std::cell::Cell::get) != 0 || ops::forced_nb();
    if !DEFER_ON.load(Relaxed) || served {
        pump(w);
        return;
    }
    let total = PENDING_BYTES.fetch_add(bytes as u64, Relaxed) + bytes as u64;
    if total >= DEFER_BATCH {
        pump(w);
        return;
    }
    DEFERS.fetch_add(1, Relaxed);
    if !PENDING.load(Relaxed) {
        PENDING_SINCE.store(defer_now(), Relaxed);
        PENDING.store(true, SeqCst);
        if !TICKING.swap(true, SeqCst) {
            // The stack thread sleeps without a tick: it starts ticking (no pass).
            wake_raw();
        }
    }
}

/// Output deferred by sends waits for a pass (called under the world's lock).
fn deferring() -> bool {
    PENDING.load(Relaxed)
}

/// Before a thread waits (or calls anything that must see the output out): runs the pass
/// deferred sends owe. The caller holds no lock.
fn flush_deferred() {
    if PENDING.load(Relaxed) {
        let mut w = lock();
        flush_locked(&mut w);
    }
}

/// [`flush_deferred`] with the lock held.
fn flush_locked(w: &mut World) {
    if PENDING.load(Relaxed) {
        pump(w);
    }
}

/// Writes the stack thread's eventfd.
fn wake_raw() {
    let fd = WAKE.load(Relaxed);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte buffer for an eventfd write.
        unsafe { real::write(fd, one.as_ptr().cast(), 8) };
    }
}

/// Wakes the stack thread for its ordinary work (a pass).
fn wake_stack() {
    WAKE_OTHER.store(true, SeqCst);
    wake_raw();
}

/// The stack thread's tick: transmits output left pending for at least a tick; stops ticking
/// after a tick in which no send deferred. `seen`: [`DEFERS`] at the last tick.
fn defer_tick(seen: &mut u64) {
    DEFER_TICKS.fetch_add(1, Relaxed);
    let mut idle = true;
    if PENDING.load(SeqCst) {
        if defer_now().saturating_sub(PENDING_SINCE.load(Relaxed)) >= DEFER_TICK_NS / 2 {
            let mut w = lock();
            if PENDING.load(Relaxed) {
                DEFER_NET_PASSES.fetch_add(1, Relaxed);
                pump_from(&mut w, false);
                idle = false;
            }
        }
    } else {
        let d = DEFERS.load(Relaxed);
        if d == *seen {
            TICKING.store(false, SeqCst);
            if PENDING.load(SeqCst) {
                TICKING.store(true, SeqCst);
            } else {
                // Ticking stops: the next run of deferred sends starts with short ticks.
                TICK_NS.store(DEFER_TICK_NS, Relaxed);
                *seen = DEFERS.load(Relaxed);
                return;
            }
        }
    }
    let t = if idle {
        DEFER_IDLE_TICKS.fetch_add(1, Relaxed);
        (TICK_NS.load(Relaxed) * 2).min(DEFER_TICK_MAX_NS)
    } else {
        DEFER_TICK_NS
    };
    TICK_NS.store(t, Relaxed);
    *seen = DEFERS.load(Relaxed);
}

/// Runs the interface once and brings every socket's descriptor up to date; wakes the stack
/// thread when a timer became due earlier than it planned.
fn pump(w: &mut World) {
    let deferred = PUMPS_DEFERRED.with(|d| match d.get() {
        1 | 2 => {
            d.set(2);
            true
        }
        // Not deferring, one owed: this pump is it.
        3 => {
            d.set(0);
            false
        }
        _ => false,
    });
    if !deferred {
        pump_from(w, true);
    }
}

thread_local! {
    /// A control-channel server thread serving a child's request ([`proxy`]): 0 pumps at once,
    /// 1 defers them, 2 defers one owed, 3 pumps at once and owes one.
    static PUMPS_DEFERRED: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Defers (`true`) this thread's pumps, or stops deferring them (the one owed stays owed
/// until [`pump_owed`]): a server thread runs the interface once for the requests a child
/// queued (nginx's header `writev` and page, posted together, leave in one pass).
pub(super) fn defer_pumps(on: bool) {
    PUMPS_DEFERRED.with(|d| match (on, d.get()) {
        (true, 0) => d.set(1),
        (false, 1) => d.set(0),
        (false, 2) => d.set(3),
        _ => {}
    });
}

/// Runs the pump this thread owes (deferred), if any; deferral ends.
pub(super) fn pump_owed() {
    let owed = PUMPS_DEFERRED.with(|d| d.replace(0) >= 2);
    if owed {
        pump(&mut lock());
    }
}

/// [`pump`]; `app` is false on the stack thread, which computes its own next wake-up.
fn pump_from(w: &mut World, app: bool) {
    let World {
        engine,
        socks,
        notes,
        epolls,
        ..
    } = w;
    let Some(e) = engine.as_mut() else {
        return;
    };
    // This pass transmits what sends deferred.
    if PENDING.swap(false, Relaxed) {
        DEFER_FLUSHES.fetch_add(1, Relaxed);
    }
    PENDING_BYTES.store(0, Relaxed);
    let now = e.now();
    let mut touched = std::mem::take(&mut e.touched);
    touched.clear();
    match e.iface.poll(now) {
        Ok(events) => touched.extend(events.iter().map(|ev| ev.handle.0)),
        Err(err) => {
            *notes.entry(format!("interface poll: {err}")).or_insert(0) += 1;
            // What the pass did before it failed is not reported: every socket is synced.
            touched.clear();
            for s in socks.iter_mut().flatten() {
                sync(e, s);
            }
        }
    }
    sync_touched(e, socks, &touched);
    e.touched = touched;
    ready::distribute(e, socks, epolls);
    if !app {
        return;
    }
    let at = e.iface.poll_at().unwrap_or(u64::MAX);
    // A thread that waits in [`ready::wait`] runs the timers itself when it is back there.
    // The stack thread's sleep is rounded up to a whole millisecond, so a timer less than one
    // before its wake-up is the one it sleeps for (or as late as that one may be anyway): no
    // kick. Without the slack a forked child's every request woke the stack thread (a
    // server thread's pass found the same earliest timer, a fraction of a millisecond before
    // the rounded wake-up), and it then fought the server threads for the lock.
    if at.saturating_add(1_000_000) < SLEEP_UNTIL.load(Relaxed) && !ready::looper() {
        wake_stack();
    }
}

/// Syncs the sockets a pass may have changed: those the interface reported (`touched`
/// handles: new data, EOF, a reset, room after back-pressure) and the watched ones, whose
/// readiness can change without a report ([`watched`]). The rest kept their state: the work
/// is proportional to what changed, not to the sockets.
fn sync_touched(e: &mut Engine, socks: &mut [Option<Sock>], touched: &[usize]) {
    for &h in touched {
        let Some(&slot) = e.by_handle.get(h) else {
            continue;
        };
        // A handle no socket holds (a connection in a listener's queue, a closed one) or one
        // reused since: skipped (a socket made for it is watched until its first sync).
        if let Some(s) = socks.get_mut(slot).and_then(Option::as_mut) {
            if handle(&s.kind) == Some(h) {
                sync(e, s);
            }
        }
    }
    // Off the list first (a slot may be on it twice: a socket closed, its slot reused), then
    // synced: those that stay watched go back on it (the spare buffer, empty).
    let spare = std::mem::take(&mut e.watch_spare);
    let mut watch = std::mem::replace(&mut e.watch, spare);
    watch.retain(|&slot| {
        socks
            .get_mut(slot)
            .and_then(Option::as_mut)
            .is_some_and(|s| std::mem::take(&mut s.watched))
    });
    for &slot in &watch {
        if let Some(s) = socks.get_mut(slot).and_then(Option::as_mut) {
            sync(e, s);
        }
    }
    watch.clear();
    e.watch_spare = watch;
}

/// The index of a socket's stack handle, if it has one.
fn handle(k: &Kind) -> Option<usize> {
    match k {
        Kind::Tcp(Tcp::Connecting(h) | Tcp::Connected(h) | Tcp::Listening(h, ..))
        | Kind::Udp { h: Some(h), .. } => Some(h.0),
        _ => None,
    }
}

/// A pass syncs this socket whether or not the interface reports it: a listener (its accept
/// queue fills without a report), a connection under way (its handshake ends without one),
/// UDP, a socket without a handle yet, and a connection that is not writable (the ACK that
/// opens room is reported only after a send that would have blocked).
fn watched(s: &Sock) -> bool {
    !matches!(s.kind, Kind::Tcp(Tcp::Connected(_))) || s.mask & libc::EPOLLOUT as u32 == 0
}

/// The stack thread: sleeps until a frame arrives, a timer is due, or an application thread
/// moved a timer earlier; then runs the interface and syncs the descriptors.
fn stack_thread() {
    crate::guard::enter_forever();
    let mut grace = false;
    let mut defers_seen = 0u64;
    loop {
        if FINISHED.load(Relaxed) {
            return;
        }
        // While an application thread waits on the port, it runs the interface ([`inline`]);
        // while an event loop waits, it also runs the timers ([`ready::wait`]).
        let (with_port, cap, timers) = inline::stack_plan(&mut grace);
        let quick = (!with_port && !timers && cap >= 0).then(plan_now).flatten();
        let (port_fd, timeout) = if let Some(now) = quick {
            // An event loop holds the port and runs the timers: this sleep needs nothing of
            // the world, and its lock (which the loop's thread holds most of the time under
            // load) is not taken: with the defer tick's 2000 wake-ups a second, that was a
            // futex wait here and a futex wake in the application per wake-up.
            // (The port is not polled: the loop's thread holds it.)
            SLEEP_UNTIL.store(now.saturating_add(cap as u64 * 1_000_000), Relaxed);
            (-1, cap)
        } else {
            let w = lock();
            let Some(e) = w.engine.as_ref() else {
                return;
            };
            let now = e.now();
            let mut at = if timers { e.iface.poll_at() } else { None };
            if PENDING.load(Relaxed) {
                // Output deferred by sends makes `poll_at` say now: it is the tick's
                // ([`defer_tick`]), not a reason to run a pass at once.
                at = at.map(|a| a.max(now.saturating_add(DEFER_TICK_NS)));
            }
            // The thread sleeps until a frame, a timer, or an application thread's wake-up:
            // no periodic tick. Frames the interface already took out of the port (the
            // device pass of its flush deposits what arrived meanwhile into the RX ring,
            // and the TAP descriptor is then no longer readable) are ingested by the same
            // `poll`, and any left make `poll_at` say `Some(0)` (a stall of a download from
            // the kernel once needed a 2 ms busy tick here).
            let t = match at {
                None => -1,
                Some(at) => at.saturating_sub(now).div_ceil(1_000_000).min(60_000) as c_int,
            };
            let t = match (t, cap) {
                (_, -1) => t,
                (-1, c) => c,
                (t, c) => t.min(c),
            };
            let until = if t < 0 {
                u64::MAX
            } else {
                now.saturating_add(t as u64 * 1_000_000)
            };
            SLEEP_UNTIL.store(until, Relaxed);
            (e.iface.nic().port().rx_fd().unwrap_or(-1), t)
        };
        let mut fds = [
            libc::pollfd {
                // A detached queue ([`rehome`]) polls as an error: not watched.
                fd: if with_port && rehome::attached() {
                    port_fd
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: WAKE.load(Relaxed),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ORPHANS.load(Relaxed),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: SPILLS.load(Relaxed),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // A port without a descriptor is polled every millisecond.
        let timeout = if port_fd < 0 && !(0..=1).contains(&timeout) {
            1
        } else {
            timeout
        };
        // While sends defer, the sleep is cut to the tick ([`defer_tick`]).
        let tick = TICKING.load(SeqCst);
        let tick_ns = TICK_NS.load(Relaxed);
        let tick_first = tick && (timeout < 0 || timeout as u64 * 1_000_000 > tick_ns);
        let ts = if tick_first {
            Some(libc::timespec {
                tv_sec: 0,
                tv_nsec: tick_ns as libc::c_long,
            })
        } else if timeout >= 0 {
            Some(libc::timespec {
                tv_sec: libc::time_t::from(timeout / 1000),
                tv_nsec: libc::c_long::from(timeout % 1000) * 1_000_000,
            })
        } else {
            None
        };
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: four valid pollfds (a negative descriptor is skipped); `tsp` is null or
        // `ts`; no signal mask.
        let r = unsafe { real::ppoll(fds.as_mut_ptr(), 4, tsp, std::ptr::null()) };
        let mut other = true;
        if fds[1].revents != 0 {
            let mut buf = [0u8; 8];
            // SAFETY: an 8-byte buffer for an eventfd read.
            unsafe { real::read(fds[1].fd, buf.as_mut_ptr().cast(), 8) };
            // Only woken to start ticking: no pass.
            other = WAKE_OTHER.swap(false, SeqCst);
        }
        let only_tick = if r == 0 {
            tick_first
        } else {
            !other && fds.iter().filter(|p| p.revents != 0).count() == 1
        };
        if only_tick {
            defer_tick(&mut defers_seen);
            continue;
        }
        if tick {
            defer_tick(&mut defers_seen);
        }
        let mut w = lock();
        if fds[2].revents != 0 {
            ops::reap_orphans(&mut w);
        }
        if fds[3].revents != 0 {
            proxy::spilled(&mut w);
        }
        // Lazy receive: this pass may not have seen the port (it slept without it).
        rearm(&mut w);
        let rx0 = w.engine.as_ref().map_or(0, |e| e.iface.stats().rx_frames);
        pump_from(&mut w, false);
        rehome::maybe_detach(&mut w);
        let rx1 = w.engine.as_ref().map_or(0, |e| e.iface.stats().rx_frames);
        if debug() {
            let why = match (fds[0].revents != 0, fds[1].revents != 0, rx1 > rx0) {
                (false, false, true) => "timer found frames",
                (true, _, false) => "port readable, no frame",
                (true, _, true) => "port readable, frames",
                (false, true, _) => "woken",
                (false, false, false) => "timer",
            };
            note(&mut w, format!("debug: {why}"));
        }
    }
}

/// Lets the next pass read the port (lazy receive: see `TapPort::set_lazy_rx`).
fn rearm(w: &mut World) {
    if let Some(e) = w.engine.as_mut() {
        if let AnyPort::Tap(t) = e.iface.nic_mut().port_mut() {
            t.rearm();
        }
    }
}

// ---- the descriptor side -------------------------------------------------------------------

const TOKEN_CAP: u32 = 16;

fn send_raw(fd: c_int, buf: &[u8]) -> isize {
    // SAFETY: a valid buffer of `buf.len()` bytes.
    unsafe {
        real::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    }
}

/// Reads and discards what `fd` holds (tokens, or the bytes that filled a send buffer); stops
/// at a short read, without the extra call that would only say `EAGAIN`.
fn drain(fd: c_int) {
    let mut buf = [0u8; 4096];
    for _ in 0..64 {
        // SAFETY: a valid buffer.
        let n = unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n <= 0 || (n as usize) < buf.len() {
            break;
        }
    }
}

/// `HICAMP_STACK_DEBUG` is set: the report notes what woke the stack thread, and each release.
pub(crate) fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("HICAMP_STACK_DEBUG").is_some())
}

fn shutdown_raw(fd: c_int, how: c_int) {
    // SAFETY: shutdown on our own descriptor.
    unsafe { real::shutdown(fd, how) };
}

/// What the stack says of a socket now.
struct Now {
    readable: bool,
    eof: bool,
    error: bool,
    writable: bool,
    rxq: usize,
}

/// Records a socket's readiness `m`; a bit that rose, or `more` (new data), is a wake-up for
/// edge-triggered registrations, and puts the socket on [`Engine::changed`].
fn set_mask(e: &mut Engine, s: &mut Sock, m: u32, more: bool) {
    if m & !s.mask != 0 || more {
        s.seq = s.seq.wrapping_add(1);
        ready::dirty();
        if !s.changed {
            s.changed = true;
            e.changed.push(s.slot);
        }
    }
    s.mask = m;
}

/// Brings a socket's A end up to date with its stack state; records its handle, and keeps
/// it in [`Engine::watch`] while it is [`watched`].
fn sync(e: &mut Engine, s: &mut Sock) {
    sync_state(e, s);
    if let Some(h) = handle(&s.kind) {
        if e.by_handle.len() <= h {
            e.by_handle.resize(h + 1, usize::MAX);
        }
        e.by_handle[h] = s.slot;
    }
    if !s.watched && watched(s) {
        s.watched = true;
        e.watch.push(s.slot);
    }
}

/// [`sync`] without the bookkeeping.
fn sync_state(e: &mut Engine, s: &mut Sock) {
    let st = match &mut s.kind {
        Kind::Tcp(Tcp::Connecting(h)) | Kind::Tcp(Tcp::Connected(h)) => {
            let h = *h;
            match e.iface.tcp(h) {
                Err(_) => Now {
                    readable: true,
                    eof: true,
                    error: false,
                    writable: true,
                    rxq: 0,
                },
                Ok(t) => {
                    let state = t.state();
                    let connecting = matches!(state, State::SynSent | State::SynReceived);
                    if !connecting && !s.established && state != State::Closed {
                        s.established = true;
                    }
                    if !connecting {
                        s.kind = Kind::Tcp(Tcp::Connected(h));
                        if s.rec.local.is_none() {
                            s.rec.local = Some(t.local().to_string());
                            s.rec.peer = Some(t.remote().to_string());
                        }
                    }
                    let error = state == State::Closed && t.error().is_some();
                    if error && !s.err_taken && s.so_error == 0 {
                        s.so_error = match t.error() {
                            Some(segstack::tcp::TcpError::TimedOut) => libc::ETIMEDOUT,
                            _ if !s.established => libc::ECONNREFUSED,
                            _ => libc::ECONNRESET,
                        };
                    }
                    let full =
                        matches!(state, State::Established | State::CloseWait) && !t.can_send();
                    Now {
                        readable: t.can_recv() || !t.may_recv() || s.rd_shut,
                        eof: !t.may_recv() || s.rd_shut,
                        error,
                        writable: !connecting && !full,
                        rxq: t.recv_queue(),
                    }
                }
            }
        }
        Kind::Tcp(Tcp::Listening(l, backlog, q)) => {
            while q.len() < *backlog {
                match e.iface.tcp_accept(*l) {
                    Ok(Some(h)) => q.push_back(h),
                    _ => break,
                }
            }
            Now {
                readable: !q.is_empty(),
                eof: false,
                error: false,
                writable: true,
                rxq: q.len(),
            }
        }
        Kind::Udp {
            h: Some(h), queue, ..
        } => {
            while queue.len() < 4096 {
                match e.iface.udp_recv(*h) {
                    Ok(d) => queue.push_back(d),
                    Err(_) => break,
                }
            }
            Now {
                readable: !queue.is_empty() || s.rd_shut,
                eof: s.rd_shut,
                error: false,
                writable: true,
                rxq: queue.iter().map(|d| d.1.len()).sum(),
            }
        }
        _ => {
            // Not connected yet: A is an empty socket pair end, writable.
            set_mask(e, s, libc::EPOLLOUT as u32, false);
            return;
        }
    };
    {
        let hup = st.error || s.hup_sig;
        let eof = st.eof || s.eof_sig || hup;
        let mut m = 0u32;
        if st.readable || eof {
            m |= libc::EPOLLIN as u32;
        }
        if eof {
            m |= libc::EPOLLRDHUP as u32;
        }
        if hup {
            m |= (libc::EPOLLHUP | libc::EPOLLOUT) as u32;
        }
        if st.writable {
            m |= libc::EPOLLOUT as u32;
        }
        set_mask(e, s, m, st.rxq > s.last_rxq);
    }
    // Work on B needs nothing else; work on A (a drain, a fill) needs a descriptor of A in this
    // process, which an orphan or a socket only children hold has not: the next call that
    // brings one (a child's request lends its own) does it.
    let a = s.a();
    // A pushed socket's bytes go into B first; its end of stream waits until all went.
    let left = if s.pushed && !s.hup_sig {
        proxy::push(e, s)
    } else {
        0
    };
    if st.error && !s.hup_sig {
        s.hup_sig = true;
        s.eof_sig = true;
        // A pushed socket's child learns the error from the stack's receive, asked when A
        // ends: B's read side stays open, so that B hangs up only when every A is closed (a
        // reset orphan would otherwise be released before the child asked).
        shutdown_raw(
            s.b,
            if s.pushed {
                libc::SHUT_WR
            } else {
                libc::SHUT_RDWR
            },
        );
    } else if st.eof && !s.eof_sig && (left == 0 || s.rd_shut) {
        s.eof_sig = true;
        shutdown_raw(s.b, libc::SHUT_WR);
    }
    if !s.tokens() {
        // Quiet: its readiness is read from `mask` ([`ready`]).
        s.last_rxq = st.rxq;
        return;
    }
    if !s.eof_sig && !s.pushed {
        if st.readable {
            if (s.tokens == 0 || st.rxq > s.last_rxq)
                && s.tokens < TOKEN_CAP
                && send_raw(s.b, &[1]) == 1
            {
                s.tokens += 1;
            }
        } else if s.tokens > 0 && a >= 0 {
            drain(a);
            s.tokens = 0;
        }
    }
    s.last_rxq = st.rxq;
    if st.writable && s.filled {
        drain(s.b);
        s.filled = false;
    } else if !st.writable && !s.filled && !s.hup_sig && a >= 0 {
        let zeros = [0u8; 2048];
        for _ in 0..32 {
            if send_raw(a, &zeros) <= 0 {
                break;
            }
        }
        s.filled = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        Settings::parse(|k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn settings_from_the_environment() {
        let s = parse(&[
            ("HICAMP_STACK_BACKEND", "tap:t0"),
            ("HICAMP_STACK_IP", "10.1.2.3/16"),
            ("HICAMP_STACK_GATEWAY", "10.1.0.1"),
        ])
        .unwrap();
        assert_eq!(s.backend, BackendSpec::Tap("t0".into()));
        assert_eq!((s.ip, s.prefix), (Ipv4Addr::new(10, 1, 2, 3), 16));
        assert_eq!(s.gateway, Some(Ipv4Addr::new(10, 1, 0, 1)));
        for (pairs, want) in [
            (
                &[("HICAMP_STACK_IP", "10.0.0.2/24")][..],
                "HICAMP_STACK_BACKEND",
            ),
            (&[("HICAMP_STACK_BACKEND", "tap:t0")][..], "HICAMP_STACK_IP"),
            (
                &[
                    ("HICAMP_STACK_BACKEND", "sim"),
                    ("HICAMP_STACK_IP", "10.0.0.2"),
                ][..],
                "sim",
            ),
            (
                &[
                    ("HICAMP_STACK_BACKEND", "tap:t0"),
                    ("HICAMP_STACK_IP", "127.0.0.2/8"),
                ][..],
                "cannot be",
            ),
            (
                &[
                    ("HICAMP_STACK_BACKEND", "tap:t0"),
                    ("HICAMP_STACK_IP", "10.0.0.2"),
                    ("HICAMP_STACK_GATEWAY", "x"),
                ][..],
                "GATEWAY",
            ),
        ] {
            let e = parse(pairs).unwrap_err();
            assert!(e.contains(want), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn marks_are_per_descriptor() {
        assert!(!marked(70_000) && !marked(-1));
        mark(1000);
        assert!(marked(1000) && is_stack(1000) && !marked(1001));
        unmark(1000);
        mark_pending(1001, true);
        assert!(marked(1001) && !is_stack(1001));
        mark_pending(1001, false);
        assert!(!marked(1000) && !marked(1001));
    }
}
