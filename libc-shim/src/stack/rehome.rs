//! Re-homed listeners: a forked child that accepts on an inherited listening socket gets a
//! stack of its own, on its own queue of the same multi-queue TAP device.
//!
//! Without this, a forked child reaches the one stack (in the *stack process*, the process
//! that made it) over the control channel ([`super::proxy`]): nginx with 2 workers in stack
//! mode spent 45.8-52.9 us of CPU and 21.2 system calls per request (6.1 in one process),
//! and ran at 0.45x the kernel's requests/s.
//!
//! * **When.** A child whose first stack operation on an inherited descriptor is `accept`/
//!   `accept4`, adding it to an epoll set (`EPOLL_CTL_ADD`: nginx's workers add their
//!   listeners, then `epoll_wait` and `accept4`) or a kernel wait on it (`poll`, `ppoll`,
//!   `select`: a prefork server's wait before its `accept`), asks the stack process about *every* stack
//!   descriptor it holds ([`REHOME`](super::proxy) request, query). It re-homes only when all
//!   of them are listening TCP sockets that the stack process does not accept on itself
//!   (a `ForkingTCPServer` parent accepts and its children serve: that path stays the proxy),
//!   and it holds no pending socket; else it asks no more and stays a proxied child
//!   (`refused` in the stack process's report). Re-homing the first listener re-homes them
//!   all: a process has one stack.
//! * **How.** The child becomes a stack process of its own: its inherited world (the stack
//!   process's, copied by `fork`; the world's lock is held across the fork so that the copy is
//!   unlocked) is set aside, never dropped; the stack starts with the stack process's settings
//!   (an application may have cleared its environment: nginx keeps only TZ) on a new queue
//!   of the same TAP device (`IFF_MULTI_QUEUE`: the launcher makes the device so), with the
//!   same address and MAC (`tun` gives every queue the device's MAC). Each listener is made
//!   again in the new stack on the same port with the same backlog and options, and its new A
//!   end is `dup3`ed over the descriptor's number (the same `O_NONBLOCK`/`FD_CLOEXEC`). The
//!   stack process is told (commit) and counts it. Connections the child accepts live in its
//!   own stack: no control channel, no pushed receives, as in a single process.
//! * **Steering.** The kernel spreads the flows it sends over the attached queues
//!   (`tun_automq_select_queue`, drivers/net/tun.c): a flow goes to the queue that last
//!   transmitted it (`tun_flow_update` in `tun_get_user`, only while `numqueues > 1`; an
//!   entry ages out after 3 s without a transmit, `TUN_FLOW_EXPIRE`), else to `hash * n >>
//!   32` of the flow's symmetric hash over the `n` attached queues. A SYN so reaches one of
//!   the stacks listening on the port; the SYN-ACK pins the flow to that stack's queue.
//! * **The stack process's queue.** It never accepts on a re-homed listener, so a SYN hashed
//!   to its queue would wait in its backlog for ever: while every socket it has is a re-homed
//!   listener (no connection, no UDP socket, no closed connection with data or a FIN not yet
//!   acknowledged), it *detaches* its queue
//!   (`TUNSETQUEUE`, `IFF_DETACH_QUEUE`; connections queued in those listeners' backlogs
//!   meanwhile are reset first), and it attaches it again (`IFF_ATTACH_QUEUE`) as soon as it
//!   makes a stack socket or accepts on a listener (its own, or a proxied child's). While
//!   detached its stack thread does not poll the port (a detached queue polls as an error) and
//!   frames it transmits are dropped (counted by the port).
//! * **Unknown flows.** `__tun_detach` moves the last queue into the freed index and changes
//!   `n`: flows pinned to the freed index now go to the moved queue, flows pinned to the old
//!   last index are capped to queue 0 by the core, and unpinned flows hash anew. So a stack
//!   may receive a segment of a connection another stack holds. Every stack of a device with
//!   re-homing on therefore drops a segment of an unknown connection instead of answering it
//!   with a reset (segstack's `rst_unknown` off; counted as `rx_no_socket`): the peer
//!   retransmits, and the owner's next transmit pins the flow back to its queue. The price:
//!   a connection to a port nobody listens on is not refused but times out.
//! * **Ageing.** A flow the owner does not transmit on for 3 s loses its entry: the peer's next
//!   segment is hashed, and when the hash names another queue it is dropped until the owner
//!   transmits (its retransmission or keepalive timer, or a delayed ACK). Busy connections
//!   (wrk, redis-benchmark) always transmit; an idle keep-alive connection whose client speaks
//!   first after 3 s may stall until the owner's keepalive. A steering eBPF program
//!   (`TUNSETSTEERINGEBPF`) would pin flows for good; not done.
//! * **Ephemeral ports.** Outgoing connections of different stacks must never pick the same
//!   4-tuple: with re-homing on the stack process takes local ports 49152-57343, re-homed
//!   child `k` (k = 1, 2, ...) 57344 + 2048 * ((k - 1) mod 4) and the next 2047 (a fifth
//!   child alive at once shares the first child's range). Replies are steered by the flow
//!   table after the first transmit (the SYN): ageing as above.
//! * **Limits.** Only the TAP backend (af_packet/af_xdp keep the proxy). A re-homed child's
//!   own children reach its stack (not the original one). Connections the stack process
//!   queued before its children re-homed a listener (between its `listen` and their first
//!   use) are reset when its queue detaches. `HICAMP_STACK_REHOME=0` (read by the stack
//!   process when its stack starts) turns it off.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use libc::c_int;
use nicdma::backend::AnyPort;
use segstack::iface::IfaceConfig;
use segstack::tcp::State;

use super::{is_stack, lock, proxy, Kind, Opts, Settings, Tcp, World, FORKED, MARKS, PMARKS};
use crate::fdbits::FdBits;
use crate::real;

/// Re-homing is on in this process tree: the stack process's port is a queue of a
/// multi-queue TAP device and `HICAMP_STACK_REHOME` is not `0` (decided when the stack
/// process's stack starts; children inherit it).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// This process's stack index: 0 for the stack process, `k` for re-homed child `k`.
static INDEX: AtomicU32 = AtomicU32::new(0);
/// Re-homing is on in this process tree.
pub(super) fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// In a new child (a fork handler: atomics only): it has asked nothing yet.
pub(super) fn forked() {
    GAVE_UP.store(false, Relaxed);
    ASKED.drain(|_| ());
}

/// The stack process: the next index it hands out.
static NEXT_INDEX: AtomicU32 = AtomicU32::new(1);
/// The stack process: some listener of its was re-homed (the queue may detach).
static ANY: AtomicBool = AtomicBool::new(false);
/// The queue of this process's port is detached.
static DETACHED: AtomicBool = AtomicBool::new(false);
/// In a child: descriptors asked about already (never asked again).
static ASKED: FdBits = FdBits::new();
/// In a child: re-homing was refused or failed once; the process stays proxied (no more
/// questions: a proxied child's later connections would each cost one).
static GAVE_UP: AtomicBool = AtomicBool::new(false);
/// In a child about to start its own stack: the stack process's settings.
static CHILD_SETTINGS: Mutex<Option<Settings>> = Mutex::new(None);

static REHOMED: AtomicU64 = AtomicU64::new(0);
static CHILD_STACKS: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static OWN: AtomicU64 = AtomicU64::new(0);
static ATTACHES: AtomicU64 = AtomicU64::new(0);
static DETACHES: AtomicU64 = AtomicU64::new(0);
static RESET_QUEUED: AtomicU64 = AtomicU64::new(0);

/// The stack process: listeners (by A's inode) re-homed by a child, and listeners some
/// process accepted on through this stack (these keep the queue attached).
static INOS: Mutex<(Vec<u64>, Vec<u64>)> = Mutex::new((Vec::new(), Vec::new()));

/// Re-homing's counters (each process's report).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(super) struct Stats {
    /// Re-homing is on (TAP backend, multi-queue device, `HICAMP_STACK_REHOME` not 0).
    pub enabled: bool,
    /// This stack's index (0: the stack process; k: re-homed child k).
    pub index: u32,
    /// The stack process: listeners children re-homed (one per child and listener).
    pub rehomed_listeners: u64,
    /// The stack process: children that made a stack of their own (per-process stacks).
    pub child_stacks: u64,
    /// The stack process: children whose re-homing it refused (a descriptor that is not a
    /// listener, or a listener it accepts on itself).
    pub refused: u64,
    /// A re-homed child: the listeners it made again in its own stack.
    pub own_listeners: u64,
    /// This process's queue attached again / detached.
    pub queue_attaches: u64,
    /// Queue detaches.
    pub queue_detaches: u64,
    /// Connections queued in re-homed listeners' backlogs that were reset before a detach.
    pub queued_resets: u64,
    /// The queue is detached now.
    pub detached: bool,
}

pub(super) fn stats() -> Stats {
    Stats {
        enabled: ENABLED.load(Relaxed),
        index: INDEX.load(Relaxed),
        rehomed_listeners: REHOMED.load(Relaxed),
        child_stacks: CHILD_STACKS.load(Relaxed),
        refused: REFUSED.load(Relaxed),
        own_listeners: OWN.load(Relaxed),
        queue_attaches: ATTACHES.load(Relaxed),
        queue_detaches: DETACHES.load(Relaxed),
        queued_resets: RESET_QUEUED.load(Relaxed),
        detached: DETACHED.load(Relaxed),
    }
}

// ---- start-up ------------------------------------------------------------------------------

/// The settings a starting stack uses: the stack process's, in a child that re-homes.
pub(super) fn child_settings() -> Option<Settings> {
    CHILD_SETTINGS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// A stack starts on `port`: decides whether re-homing is on (the first stack process) and
/// sets the configuration's ephemeral range and unknown-flow answer (see the module docs).
pub(super) fn configure(port: &AnyPort, cfg: &mut IfaceConfig) {
    let child = INDEX.load(Relaxed) > 0;
    if !child {
        let mq = matches!(port, AnyPort::Tap(t) if t.multi_queue());
        let env = std::env::var_os("HICAMP_STACK_REHOME").is_none_or(|v| v != "0");
        ENABLED.store(mq && env, Relaxed);
    }
    if !ENABLED.load(Relaxed) {
        return;
    }
    cfg.ephemeral = ephemeral_range(INDEX.load(Relaxed));
    // A child's stack shares the link from the start; the stack process's from its first
    // re-homed listener ([`serve`]).
    cfg.rst_unknown = !child;
}

/// Stack `k`'s local ports for outgoing connections (inclusive).
fn ephemeral_range(k: u32) -> (u16, u16) {
    if k == 0 {
        (49_152, 57_343)
    } else {
        let lo = 57_344 + 2048 * ((k - 1) % 4) as u16;
        (lo, lo + 2047)
    }
}

// ---- the child's side ----------------------------------------------------------------------

/// What the stack process said about one listener.
pub(super) struct Listener {
    pub addr: SocketAddrV4,
    pub backlog: usize,
    pub opts: u32,
    pub nonblock: bool,
    pub rcvtimeo_ms: u32,
    pub index: u32,
}

const O_REUSEADDR: u32 = 1;
const O_REUSEPORT: u32 = 2;
const O_NODELAY: u32 = 4;
const O_KEEPALIVE: u32 = 8;

/// Before a child's `accept`/`accept4` or `EPOLL_CTL_ADD` on `fd`: re-homes its listeners
/// when it can (see the module docs). Afterwards [`FORKED`] says whether the process still
/// proxies. Called inside the shim (a [`crate::guard::Guard`] held).
pub(super) fn before_use(fd: c_int) {
    if !ENABLED.load(Relaxed)
        || !FORKED.load(Relaxed)
        || GAVE_UP.load(Relaxed)
        || !is_stack(fd)
        || ASKED.get(fd)
    {
        return;
    }
    // Whatever happens below, this process asks at most once.
    GAVE_UP.store(true, Relaxed);
    let fds: Vec<c_int> = MARKS.members().collect();
    for &f in &fds {
        ASKED.set(f, true);
    }
    if PMARKS.members().next().is_some() {
        return;
    }
    let mut found: Vec<(c_int, Listener)> = Vec::with_capacity(fds.len());
    // Numbers `dup`ed from one another (one A end): made once, then duplicated again.
    let (mut inos, mut dups) = (Vec::new(), Vec::new());
    for &f in &fds {
        let ino = proxy::inode(f);
        if let Some(&(_, g)) = inos.iter().find(|(i, _)| *i == ino) {
            dups.push((f, g));
            continue;
        }
        inos.push((ino, f));
        match proxy::rehome(f, false, found.is_empty()) {
            Some(l) => found.push((f, l)),
            None => return,
        }
    }
    let Some(index) = found.first().map(|(_, l)| l.index) else {
        return;
    };
    if become_stack(index).is_err() {
        return;
    }
    for (i, (f, l)) in found.into_iter().enumerate() {
        let _ = proxy::rehome(f, true, i == 0);
        if let Err(e) = listen_again(f, &l) {
            crate::sys::diag(&format!(
                "stack mode: re-homing descriptor {f} ({}): errno {e}",
                l.addr
            ));
        }
    }
    for (f, g) in dups {
        dup_again(f, g);
    }
}

/// `fd` was a `dup` of `g`'s inherited A end: it becomes one of `g`'s new one.
fn dup_again(fd: c_int, g: c_int) {
    // SAFETY: F_GETFD on the caller's descriptor.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
    let flags = if fl >= 0 && fl & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: `g`'s new A end replaces the inherited one at `fd`.
    if unsafe { real::dup3(g, fd, flags) } < 0 {
        return;
    }
    proxy::forget(fd);
    let mut w = lock();
    if let Some(&id) = w.fds.get(&g) {
        if let Some(s) = w.socks.get_mut(id).and_then(Option::as_mut) {
            s.fds.push(fd);
        }
        w.fds.insert(fd, id);
        super::mark(fd);
    }
}

/// Sets the inherited world aside and starts this process's own stack. On failure the world
/// is put back and the process stays a proxied child.
fn become_stack(index: u32) -> Result<(), c_int> {
    let mut w = lock();
    let Some(settings) = w.engine.as_ref().map(|e| e.settings.clone()) else {
        return Err(libc::ENETDOWN);
    };
    *CHILD_SETTINGS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(settings);
    let old = std::mem::replace(&mut *w, World::empty());
    let defer = super::DEFER_ON.load(Relaxed);
    INDEX.store(index, Relaxed);
    FORKED.store(false, Relaxed);
    proxy::new_stack();
    super::ready::forget_inherited();
    super::inline::forget_inherited();
    match w.engine() {
        Ok(e) => {
            // The shim's own choices (`bind` to port 0, UDP) start in this stack's range.
            e.next_port = ephemeral_range(index).0;
            super::DEFER_ON.store(defer && super::inline::port_fd() >= 0, Relaxed);
            // The stack process's world, copied by fork: its descriptors are closed here, its
            // memory is the stack process's copy-on-write image. Never dropped (its port and
            // ring buffers are not this process's to release).
            std::mem::forget(old);
            Ok(())
        }
        Err(e) => {
            let mine = std::mem::replace(&mut *w, old);
            std::mem::forget(mine);
            FORKED.store(true, Relaxed);
            INDEX.store(0, Relaxed);
            Err(e)
        }
    }
}

/// Makes listener `l` in this process's stack and installs its A end at `fd`.
fn listen_again(fd: c_int, l: &Listener) -> Result<(), c_int> {
    let (na, nb) = super::ops::pair(l.nonblock)?;
    // SAFETY: F_GETFD on the caller's descriptor.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
    let flags = if fl >= 0 && fl & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: the new A end replaces the inherited one at the application's number.
    let r = unsafe { real::dup3(na, fd, flags) };
    // SAFETY: our own descriptor, now duplicated (or useless).
    unsafe { real::close(na) };
    if r < 0 {
        let e = crate::guard::errno();
        super::internal(nb, false);
        // SAFETY: our own descriptor.
        unsafe { real::close(nb) };
        return Err(e);
    }
    proxy::forget(fd);
    let opts = Opts {
        reuseaddr: l.opts & O_REUSEADDR != 0,
        reuseport: l.opts & O_REUSEPORT != 0,
        nodelay: l.opts & O_NODELAY != 0,
        keepalive: l.opts & O_KEEPALIVE != 0,
        rcvtimeo: (l.rcvtimeo_ms > 0).then(|| Duration::from_millis(u64::from(l.rcvtimeo_ms))),
        ..Opts::default()
    };
    let mut w = lock();
    let h = w
        .engine()?
        .iface
        .tcp_listen(l.addr.port())
        .map_err(|_| libc::EADDRINUSE)?;
    let id = w.new_sock(
        Kind::Tcp(Tcp::Listening(h, l.backlog, Default::default())),
        fd,
        nb,
        l.nonblock,
        opts,
    );
    if let Some(s) = w.socks.get_mut(id).and_then(Option::as_mut) {
        s.bound_ip = *l.addr.ip();
        s.rec.local = Some(l.addr.to_string());
        s.rec.why = "AF_INET listener, re-homed from the stack process";
    }
    OWN.fetch_add(1, Relaxed);
    Ok(())
}

// ---- the stack process's side --------------------------------------------------------------

/// A child's [`REHOME`](super::proxy) request on its descriptor `y` (lent to its socket):
/// a query (`commit` false) answers whether the socket is a listener the child may make
/// again, with its address, backlog and options; a commit records it as re-homed. `first`:
/// the child's first query (it gets its stack index) or commit (a child stack counted).
pub(super) fn serve(y: c_int, commit: bool, first: bool) -> Result<Listener, c_int> {
    if !ENABLED.load(Relaxed) {
        return Err(libc::EOPNOTSUPP);
    }
    let mut w = lock();
    let id = *w.fds.get(&y).ok_or(libc::EBADF)?;
    let s = w
        .socks
        .get(id)
        .and_then(Option::as_ref)
        .ok_or(libc::EBADF)?;
    let Kind::Tcp(Tcp::Listening(_, backlog, _)) = &s.kind else {
        if !commit {
            REFUSED.fetch_add(1, Relaxed);
        }
        return Err(libc::EINVAL);
    };
    let addr: SocketAddrV4 = s
        .rec
        .local
        .as_deref()
        .and_then(|a| a.parse().ok())
        .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let mut inos = INOS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if inos.1.contains(&s.ino) {
        if !commit {
            REFUSED.fetch_add(1, Relaxed);
        }
        return Err(libc::EBUSY);
    }
    let o = &s.opts;
    let opts = [
        (o.reuseaddr, O_REUSEADDR),
        (o.reuseport, O_REUSEPORT),
        (o.nodelay, O_NODELAY),
        (o.keepalive, O_KEEPALIVE),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .fold(0, |a, (_, bit)| a | bit);
    let l = Listener {
        addr,
        backlog: *backlog,
        opts,
        nonblock: s.nonblock,
        rcvtimeo_ms: o
            .rcvtimeo
            .map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32),
        index: if first && !commit {
            NEXT_INDEX.fetch_add(1, Relaxed)
        } else {
            0
        },
    };
    if commit {
        REHOMED.fetch_add(1, Relaxed);
        if first {
            CHILD_STACKS.fetch_add(1, Relaxed);
        }
        if !inos.0.contains(&s.ino) {
            inos.0.push(s.ino);
        }
        drop(inos);
        if !ANY.swap(true, Relaxed) {
            if let Some(e) = w.engine.as_mut() {
                e.iface.set_rst_unknown(false);
            }
        }
        maybe_detach(&mut w);
    }
    Ok(l)
}

/// An accept (the stack process's own, or a proxied child's) on listener slot `id`: the
/// listener is active here; the queue attaches if it was detached.
pub(super) fn accepting(w: &mut World, id: usize) {
    if !ENABLED.load(Relaxed) || super::FORKED.load(Relaxed) || INDEX.load(Relaxed) > 0 {
        return;
    }
    let Some(ino) = w.socks.get(id).and_then(Option::as_ref).map(|s| s.ino) else {
        return;
    };
    {
        let mut inos = INOS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !inos.1.contains(&ino) {
            inos.1.push(ino);
        }
    }
    need_network(w);
}

/// The stack needs its queue (a new stack socket, an accept): attaches it if detached.
pub(super) fn need_network(w: &mut World) {
    if !DETACHED.load(Relaxed) {
        return;
    }
    let Some(e) = w.engine.as_mut() else {
        return;
    };
    if let AnyPort::Tap(t) = e.iface.nic_mut().port_mut() {
        match t.set_attached(true) {
            Ok(()) => {
                ATTACHES.fetch_add(1, Relaxed);
                DETACHED.store(false, Relaxed);
                super::inline::set_port(t.as_raw_fd());
                super::wake_raw();
            }
            Err(err) => crate::sys::diag(&format!("stack mode: queue attach: {err}")),
        }
    }
}

/// The stack process's queue detaches while every socket it has is a re-homed listener
/// nobody accepts on through it, and no closed connection has data or a FIN unacknowledged. Connections its re-homed
/// listeners queued meanwhile are reset first (their resets leave before the detach).
pub(super) fn maybe_detach(w: &mut World) {
    if !ANY.load(Relaxed) || DETACHED.load(Relaxed) {
        return;
    }
    {
        let inos = INOS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let only_rehomed = w.socks.iter().flatten().all(|s| {
            matches!(s.kind, Kind::Tcp(Tcp::Listening(..)))
                && inos.0.contains(&s.ino)
                && !inos.1.contains(&s.ino)
        });
        if !only_rehomed {
            return;
        }
    }
    let World { engine, socks, .. } = &mut *w;
    let Some(e) = engine.as_mut() else {
        return;
    };
    // Closed connections whose FIN is acknowledged (TIME-WAIT, FIN-WAIT-2) do not hold the
    // queue: a retransmitted FIN of the peer is then dropped, as the kernel would drop it
    // after the time-wait.
    let busy = e.closing.iter().any(|&h| {
        e.iface.tcp(h).is_ok_and(|t| {
            !matches!(t.state(), State::Closed | State::TimeWait | State::FinWait2)
                || t.send_queue() > 0
        })
    });
    if busy {
        return;
    }
    for s in socks.iter_mut().flatten() {
        super::sync(e, s);
        if let Kind::Tcp(Tcp::Listening(_, _, q)) = &mut s.kind {
            for h in q.drain(..) {
                let _ = e.iface.abort(h);
                RESET_QUEUED.fetch_add(1, Relaxed);
            }
        }
    }
    let now = e.now();
    let _ = e.iface.poll(now);
    if let AnyPort::Tap(t) = e.iface.nic_mut().port_mut() {
        match t.set_attached(false) {
            Ok(()) => {
                DETACHES.fetch_add(1, Relaxed);
                DETACHED.store(true, Relaxed);
                super::inline::set_port(-1);
            }
            Err(err) => crate::sys::diag(&format!("stack mode: queue detach: {err}")),
        }
    }
}

/// The stack thread may poll the port (its queue is attached).
#[inline]
pub(super) fn attached() -> bool {
    !DETACHED.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_ranges_are_disjoint_per_stack() {
        let r: Vec<(u16, u16)> = (0..6).map(ephemeral_range).collect();
        for (i, a) in r.iter().enumerate().take(5) {
            assert!(a.0 >= 49_152 && a.0 <= a.1, "{a:?}");
            for b in r.iter().take(5).skip(i + 1) {
                assert!(a.1 < b.0 || b.1 < a.0, "{a:?} {b:?}");
            }
        }
        // A fifth child alive at once shares the first child's range.
        assert_eq!(r[5], r[1]);
        assert_eq!(r[4].1, u16::MAX);
    }
}
