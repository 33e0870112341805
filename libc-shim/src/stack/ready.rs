//! Readiness of stack sockets from the stack's own state: epoll without tokens.
//!
//! A stack socket's descriptor is end A of a socket pair, and the kernel sees its readiness
//! only through tokens that the stack writes into end B ([`super::sync`]): a `send` per batch
//! of new data, a drain per read, and a second `epoll_wait` to collect what a pass of the
//! interface made ready. Here an epoll instance of the stack process keeps its stack sockets'
//! registrations in a *shadow* table instead of the kernel's:
//!
//! * `epoll_ctl` on a stack socket ([`ctl`]) records (events, data) in the instance's
//!   [`Set`], with the kernel's errors (`EEXIST`, `ENOENT`, `EINVAL`, `EBADF`); the port and
//!   the kick descriptor join the instance (edge-triggered, filtered out of what the
//!   application sees).
//! * `epoll_wait` ([`wait`]) reports the registered sockets that are ready from their `mask`
//!   (level-triggered; `EPOLLET`: once per wake-up, [`super::Sock::seq`]; `EPOLLONESHOT`:
//!   disarmed until `EPOLL_CTL_MOD`; `EPOLLRDHUP` when asked for; `EPOLLHUP` always), merged
//!   with the kernel's events of the same instance. It looks only at the instance's ready
//!   list (`Set::ready`), fed by `EPOLL_CTL_ADD`/`MOD` and by the sockets whose readiness
//!   rose (`distribute`), not at every registration. With nothing ready it sleeps in the
//!   kernel's `epoll_wait` on the instance (the port, the kick descriptor and the
//!   application's kernel descriptors) for the time left, or until the stack's next timer,
//!   which it then runs itself: the stack thread stays off the per-request path.
//! * A socket whose readiness rose while another thread sleeps in such a wait (a pass on
//!   another thread, the stack thread's timers) wakes it through the kick eventfd, written
//!   when the world's lock is let go ([`kick`]). A pass made by the waiting thread itself
//!   costs no system call.
//! * Sockets registered only this way are *quiet*: no tokens. A socket gets tokens (sticky)
//!   when a thread may wait on its descriptor in the kernel: a blocking call, `poll`,
//!   `select`, a kernel epoll set (a forked child's, or an instance nested in another epoll
//!   instance or passed to `poll`/`select`, which is then *materialized*: its registrations
//!   move into the kernel), and
//!   every socket that exists at a `fork` (children wait on their copies of A in the kernel;
//!   every instance is materialized before the fork, since a child shares it).
//!
//! Not seen (documented limits): `io_uring` on a stack socket (never served anyway),
//! and an epoll descriptor `dup`ed (registrations are kept by number). `epoll_pwait2` waits here
//! too, its timeout rounded up to milliseconds.

use std::cell::Cell;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32};
use std::time::{Duration, Instant};

use libc::c_int;

use super::{inline, internal, is_stack, lock, sync, World, FORKED};
use crate::fdbits::FdBits;
use crate::guard::{self, Guard};
use crate::real;

/// The data of the kick descriptor's registration in an application's epoll instance.
pub const KICK_TAG: u64 = 0x4869_6361_6d70_4b4b;

/// The kick eventfd (-1: none). Edge-triggered in every shadowed instance and never read:
/// each write is one edge (the counter cannot reach its limit at one per write).
static KICK: AtomicI32 = AtomicI32::new(-1);
/// Threads inside [`wait`] (collecting, or asleep in the kernel).
static SLEEPERS: AtomicU32 = AtomicU32::new(0);
/// A quiet socket's readiness rose since the last [`kick`].
static DIRTY: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread is inside [`wait`].
    static SLEEPING: Cell<bool> = const { Cell::new(false) };
    /// This thread has waited in [`wait`]: an event loop, which comes back to its wait.
    static LOOPER: Cell<bool> = const { Cell::new(false) };
    /// Waits whose `maxevents` stack sockets filled ([`wait`]).
    static FULL: Cell<u32> = const { Cell::new(0) };
}

/// Shadow registrations are on: inline polling is (`HICAMP_STACK_INLINE`), the port has a
/// descriptor, and `HICAMP_STACK_SHADOW` is not `0`.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HICAMP_STACK_SHADOW").is_none_or(|v| v != "0"))
        && inline::port_fd() >= 0
        && KICK.load(Relaxed) >= 0
}

/// Makes the kick descriptor (the stack started).
pub(super) fn init() {
    // SAFETY: eventfd has no memory precondition.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd >= 0 {
        internal(fd, true);
        KICK.store(fd, Relaxed);
    }
}

/// The kick descriptor (-1: none).
pub(super) fn kick_fd() -> c_int {
    if FORKED.load(Relaxed) {
        -1
    } else {
        KICK.load(Relaxed)
    }
}

/// A quiet socket's readiness rose (called under the world's lock).
#[inline]
pub(super) fn dirty() {
    DIRTY.store(true, Relaxed);
}

/// The world's lock is let go: when a quiet socket's readiness rose and a thread other than
/// this one is in [`wait`], it is woken.
#[inline]
pub(super) fn kick() {
    if !DIRTY.load(Relaxed) {
        return;
    }
    let me = u32::from(SLEEPING.with(Cell::get));
    if SLEEPERS.load(SeqCst) <= me {
        DIRTY.store(false, Relaxed);
        return;
    }
    DIRTY.store(false, Relaxed);
    let fd = KICK.load(Relaxed);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte buffer for an eventfd write.
        unsafe { real::write(fd, one.as_ptr().cast(), 8) };
    }
}

/// This thread is an event loop (it waited in [`wait`]).
pub(super) fn looper() -> bool {
    LOOPER.with(Cell::get)
}

/// One stack socket's registration in an epoll instance.
#[derive(Debug, Clone, Copy)]
struct Reg {
    events: u32,
    data: u64,
    /// `EPOLLONESHOT`: reported once, then off until `EPOLL_CTL_MOD`.
    armed: bool,
    /// `EPOLLET`: the socket's `seq` last reported.
    seen: u64,
    /// On the instance's ready list.
    listed: bool,
}

impl Reg {
    fn new(e: &libc::epoll_event) -> Reg {
        Reg {
            events: e.events,
            data: e.u64,
            armed: true,
            seen: u64::MAX,
            listed: false,
        }
    }
}

/// The stack sockets registered in one epoll instance.
#[derive(Debug, Default)]
pub struct Set {
    /// By descriptor.
    regs: super::FdMap<Reg>,
    /// The registrations that may be ready, as the kernel's ready list: a registration joins
    /// when it is added or modified and when its socket's readiness rises
    /// ([`super::Engine::changed`], [`distribute`]); a wait ([`collect`]) looks at these only,
    /// and a level-triggered one that it reports stays (at the back: ready sockets beyond
    /// `maxevents` are reported by the next waits, round robin). An entry whose registration
    /// is gone or not `listed` is stale and skipped.
    ready: std::collections::VecDeque<c_int>,
    /// The registrations moved into the kernel (a fork, a nested instance): this instance is
    /// the kernel's from now on.
    materialized: bool,
    /// Scratch for [`collect`]'s level-triggered registrations (kept: no allocation per wait).
    again: Vec<c_int>,
}

impl Set {
    /// Puts `fd`'s registration on the ready list (once).
    fn list(&mut self, fd: c_int) {
        if let Some(r) = self.regs.get_mut(&fd) {
            if !r.listed {
                r.listed = true;
                self.ready.push_back(fd);
            }
        }
    }
}

/// The sockets whose readiness rose ([`super::Engine::changed`]) join the ready lists of the
/// instances they are registered in. Called under the world's lock after a pass and before
/// a wait collects: O(changed sockets x instances).
pub(super) fn distribute(
    e: &mut super::Engine,
    socks: &mut [Option<super::Sock>],
    epolls: &mut super::FdMap<Set>,
) {
    if e.changed.is_empty() {
        return;
    }
    for slot in e.changed.drain(..) {
        let Some(s) = socks.get_mut(slot).and_then(Option::as_mut) else {
            continue;
        };
        if !std::mem::take(&mut s.changed) {
            continue;
        }
        for set in epolls.values_mut() {
            if set.materialized || set.regs.is_empty() {
                continue;
            }
            for &fd in &s.fds {
                set.list(fd);
            }
        }
    }
}

fn fail(e: c_int) -> c_int {
    guard::set_errno(e);
    -1
}

/// Turns tokens on for socket `id` (a thread may wait on its descriptor in the kernel).
fn tokens_on(w: &mut World, id: usize) {
    let World { engine, socks, .. } = w;
    if let (Some(e), Some(Some(s))) = (engine.as_mut(), socks.get_mut(id)) {
        if !s.tokens_on {
            s.tokens_on = true;
            sync(e, s);
        }
    }
}

/// Before a thread waits in the kernel on `fds` (a blocking call, `poll`, `select`): their
/// stack sockets keep their descriptors' readiness with tokens from now on.
pub fn kernel_waits(fds: impl IntoIterator<Item = c_int>) {
    if FORKED.load(Relaxed) {
        // A child waiting on an inherited listener (a prefork server's `poll`/`select` before
        // its `accept`) may get a stack of its own: then its sockets need their tokens.
        if super::rehome::enabled() {
            let fds: Vec<c_int> = fds.into_iter().filter(|&fd| is_stack(fd)).collect();
            for &fd in &fds {
                super::rehome::before_use(fd);
            }
            if !FORKED.load(Relaxed) {
                kernel_waits(fds);
            }
        }
        return;
    }
    // The thread is about to sleep: output deferred by sends leaves first.
    super::flush_deferred();
    if !enabled() {
        return;
    }
    let mut w = None;
    for fd in fds {
        if !is_stack(fd) || tokened(fd) {
            continue;
        }
        let w = w.get_or_insert_with(lock);
        if let Some(&id) = w.fds.get(&fd) {
            if w.socks
                .get(id)
                .and_then(Option::as_ref)
                .is_some_and(|s| !s.tokens_on)
            {
                tokens_on(w, id);
            }
            set_tokened(fd, true);
        }
    }
}

/// Descriptors whose socket is known to have tokens (saves [`kernel_waits`] the lock).
static TOKENED: FdBits = FdBits::new();

/// A forked child starts a stack of its own ([`super::rehome`]): the stack process's marks,
/// copied by fork, name none of its descriptors.
pub(super) fn forget_inherited() {
    TOKENED.drain(|_| ());
}

fn tokened(fd: c_int) -> bool {
    TOKENED.get(fd)
}

fn set_tokened(fd: c_int, on: bool) {
    TOKENED.set(fd, on);
}

/// Before `poll`/`select` waits in the kernel on `fds`: an epoll instance of ours among them
/// is materialized (a poll on an epoll descriptor sees only the kernel's registrations).
pub fn polled(fds: impl IntoIterator<Item = c_int>) {
    if FORKED.load(Relaxed) {
        return;
    }
    for fd in fds {
        if inline::registered(fd) {
            let mut w = lock();
            if w.epolls.get(&fd).is_some_and(|s| !s.materialized) {
                materialize(&mut w, fd);
            }
        }
    }
}

/// `epoll_ctl` in stack mode. `None`: the plain call (not a stack socket, a forked child, a
/// materialized instance, shadowing off); stack sockets that go to a kernel instance get
/// tokens, and an epoll instance of ours added to another one is materialized first.
///
/// # Safety
/// The caller's `epoll_ctl` arguments.
pub unsafe fn ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> Option<c_int> {
    if !super::on() || guard::inside() {
        return None;
    }
    if FORKED.load(Relaxed) && op == libc::EPOLL_CTL_ADD && is_stack(fd) {
        // A child adding an inherited listener may get a stack of its own.
        if let Some(_g) = Guard::enter() {
            guard::shielded(|| super::rehome::before_use(fd));
        }
    }
    if FORKED.load(Relaxed) {
        return None;
    }
    if !is_stack(fd) {
        if op == libc::EPOLL_CTL_ADD && inline::registered(fd) {
            if let Some(_g) = Guard::enter() {
                guard::shielded(|| materialize(&mut lock(), fd));
            }
        }
        return None;
    }
    let _g = Guard::enter()?;
    // SAFETY: the caller's arguments.
    let (r, err) = guard::shielded(|| (unsafe { ctl_locked(epfd, op, fd, ev) }, guard::errno()))?;
    // `shielded` keeps the caller's errno: a failure's is set here.
    if r.is_some_and(|r| r < 0) {
        guard::set_errno(err);
    }
    r
}

/// [`ctl`] for a stack socket.
///
/// # Safety
/// As [`ctl`].
unsafe fn ctl_locked(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut libc::epoll_event,
) -> Option<c_int> {
    let mut w = lock();
    let id = *w.fds.get(&fd)?;
    if !enabled() || w.epolls.get(&epfd).is_some_and(|s| s.materialized) {
        if op == libc::EPOLL_CTL_ADD || op == libc::EPOLL_CTL_MOD {
            tokens_on(&mut w, id);
        }
        return None;
    }
    if epfd == fd {
        return Some(fail(libc::EINVAL));
    }
    let read_ev = || {
        if ev.is_null() {
            None
        } else {
            // SAFETY: the caller's epoll_event (checked for null).
            Some(unsafe { std::ptr::read_unaligned(ev) })
        }
    };
    match op {
        libc::EPOLL_CTL_ADD => {
            let Some(e) = read_ev() else {
                return Some(fail(libc::EFAULT));
            };
            if !inline::registered(epfd) {
                if let Err(e) = inline::register(epfd) {
                    return Some(fail(e));
                }
                // A new instance (a closed one's number may have left a table behind).
                w.epolls.insert(epfd, Set::default());
            }
            let set = w.epolls.entry(epfd).or_default();
            if set.regs.contains_key(&fd) {
                return Some(fail(libc::EEXIST));
            }
            set.regs.insert(fd, Reg::new(&e));
            // The kernel polls a descriptor it adds: a ready socket is reported.
            set.list(fd);
            Some(0)
        }
        libc::EPOLL_CTL_MOD => {
            let Some(e) = read_ev() else {
                return Some(fail(libc::EFAULT));
            };
            let Some(set) = w.epolls.get_mut(&epfd).filter(|s| s.regs.contains_key(&fd)) else {
                return Some(fail(if inline::registered(epfd) {
                    libc::ENOENT
                } else {
                    // An instance we never saw a stack socket in: the kernel's answer.
                    return None;
                }));
            };
            // The kernel polls the descriptor again on a modification: a ready socket is
            // reported (edge-triggered too).
            if let Some(r) = set.regs.get_mut(&fd) {
                *r = Reg {
                    listed: r.listed,
                    ..Reg::new(&e)
                };
            }
            set.list(fd);
            Some(0)
        }
        libc::EPOLL_CTL_DEL => {
            let set = w.epolls.get_mut(&epfd)?;
            Some(if set.regs.remove(&fd).is_some() {
                0
            } else {
                fail(libc::ENOENT)
            })
        }
        _ => Some(fail(libc::EINVAL)),
    }
}

/// `fd` (a stack socket's descriptor) is closed: its registrations go (the kernel drops an
/// epoll registration with its file; a `dup`ed number's registration is not kept here).
pub(super) fn fd_closed(w: &mut World, fd: c_int) {
    set_tokened(fd, false);
    for set in w.epolls.values_mut() {
        set.regs.remove(&fd);
    }
}

/// Epoll instance `epfd` is closed: its registrations go.
pub(super) fn drop_set(epfd: c_int) {
    if FORKED.load(Relaxed) {
        return;
    }
    // Inside the shim (the world's lock may be held): the table stays, and is replaced when
    // the number next becomes a shadowed instance ([`ctl`]).
    if let Some(_g) = Guard::enter() {
        guard::shielded(|| {
            lock().epolls.remove(&epfd);
        });
    }
}

/// Moves instance `epfd`'s registrations into the kernel (tokens on for their sockets): a
/// kernel wait the shim does not see may follow (a fork, a nested instance).
fn materialize(w: &mut World, epfd: c_int) {
    let Some(set) = w.epolls.get_mut(&epfd) else {
        return;
    };
    if set.materialized {
        return;
    }
    set.materialized = true;
    set.ready.clear();
    let regs = std::mem::take(&mut set.regs);
    for (fd, r) in regs {
        let Some(&id) = w.fds.get(&fd) else {
            continue;
        };
        tokens_on(w, id);
        let mut ev = libc::epoll_event {
            // A spent one-shot registration: armed for nothing (the kernel adds ERR and HUP).
            events: if r.armed {
                r.events
            } else {
                libc::EPOLLONESHOT as u32
            },
            u64: r.data,
        };
        // SAFETY: a valid epoll_event; the kernel checks both descriptors.
        unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
}

/// Before a fork of the stack process: every instance is materialized (a child shares the
/// kernel's instance, not this table) and every socket gets tokens (a child waits on A).
pub(super) fn materialize_all() {
    let mut w = lock();
    let sets: Vec<c_int> = w.epolls.keys().copied().collect();
    for epfd in sets {
        materialize(&mut w, epfd);
    }
    let ids: Vec<usize> = (0..w.socks.len()).collect();
    for id in ids {
        tokens_on(&mut w, id);
    }
}

/// Fills `ev` with the ready registrations of `epfd`; returns how many, and the milliseconds
/// until the stack's next timer (`None`: none). Looks at the instance's ready list only
/// ([`Set::ready`]), each entry at most once.
fn collect(epfd: c_int, ev: &mut [libc::epoll_event]) -> (usize, Option<u64>) {
    let max = ev.len();
    let mut w = lock();
    // An event loop's wait: what its sends deferred leaves now, in one pass.
    super::flush_locked(&mut w);
    let World {
        engine,
        socks,
        fds,
        epolls,
        ..
    } = &mut *w;
    let Some(e) = engine.as_mut() else {
        return (0, None);
    };
    distribute(e, socks, epolls);
    let mut n = 0;
    if let Some(set) = epolls.get_mut(&epfd) {
        // Level-triggered registrations reported now: back on the list after this round.
        let mut again = std::mem::take(&mut set.again);
        let mut left = set.ready.len();
        while left > 0 && n < max {
            left -= 1;
            let Some(fd) = set.ready.pop_front() else {
                break;
            };
            let Some(r) = set.regs.get_mut(&fd) else {
                continue;
            };
            if !std::mem::take(&mut r.listed) || !r.armed {
                continue;
            }
            let Some(s) = fds
                .get(&fd)
                .and_then(|&id| socks.get_mut(id))
                .and_then(Option::as_mut)
            else {
                continue;
            };
            sync(e, s);
            let m = s.mask & (r.events | (libc::EPOLLERR | libc::EPOLLHUP) as u32);
            if m == 0 {
                continue;
            }
            if r.events & libc::EPOLLET as u32 != 0 {
                if r.seen == s.seq {
                    continue;
                }
                r.seen = s.seq;
            } else if r.events & libc::EPOLLONESHOT as u32 == 0 {
                again.push(fd);
            }
            if r.events & libc::EPOLLONESHOT as u32 != 0 {
                r.armed = false;
            }
            ev[n] = libc::epoll_event {
                events: m,
                u64: r.data,
            };
            n += 1;
        }
        for &fd in &again {
            set.list(fd);
        }
        again.clear();
        set.again = again;
    }
    let now = e.now();
    let due = e
        .iface
        .poll_at()
        .map(|at| at.saturating_sub(now).div_ceil(1_000_000));
    (n, due)
}

/// A thread inside [`wait`] (counted for [`kick`]).
struct Sleeper;

impl Sleeper {
    fn enter() -> Sleeper {
        SLEEPERS.fetch_add(1, SeqCst);
        SLEEPING.with(|c| c.set(true));
        Sleeper
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        SLEEPING.with(|c| c.set(false));
        SLEEPERS.fetch_sub(1, SeqCst);
    }
}

/// True when [`wait`] serves epoll waits in this process.
pub fn active() -> bool {
    !FORKED.load(Relaxed) && enabled()
}

/// Removes the port's and the kick's events from `ev`; returns how many remain, whether the
/// port fired and whether a kick did.
fn filter(ev: &mut [libc::epoll_event]) -> (usize, bool, bool) {
    let mut kept = 0;
    let (mut fired, mut kicked) = (false, false);
    for i in 0..ev.len() {
        let e = ev[i];
        match e.u64 {
            inline::TAG => fired = true,
            KICK_TAG => kicked = true,
            _ => {
                ev[kept] = e;
                kept += 1;
            }
        }
    }
    (kept, fired, kicked)
}

/// `epoll_pwait` on an instance that holds the port, in the stack process: ready stack
/// sockets from the shadow registrations, merged with the kernel's events; the interface runs
/// here when the port fires, and the stack's timers when they are due first.
///
/// # Safety
/// The caller's `epoll_pwait` arguments.
pub unsafe fn wait(
    epfd: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    if ev.is_null() || max <= 0 {
        // The kernel's EINVAL/EFAULT.
        // SAFETY: the caller's arguments.
        return unsafe { real::epoll_pwait(epfd, ev, max, timeout, mask) };
    }
    LOOPER.with(|c| c.set(true));
    let max = max as usize;
    // SAFETY: the caller's array of `max` events (checked for null); the kernel writes it too.
    let evs = unsafe { std::slice::from_raw_parts_mut(ev, max) };
    let deadline = (timeout >= 0).then(|| Instant::now() + Duration::from_millis(timeout as u64));
    // The kernel's part was asked since the last collection found nothing.
    let mut asked = false;
    let mut timer_rounds = 0u32;
    let room = if max > 1 { max - 1 } else { max };
    // Set before the first sleep (and the look at the stack that precedes it); dropped, so
    // the thread's mask restored, on every return.
    let mut blocked: Option<crate::sys::Blocked> = None;
    loop {
        let sleeper = Sleeper::enter();
        let (n, due) = match Guard::enter() {
            // One slot stays for the kernel's part (with more than one), so that stack
            // sockets that stay ready cannot starve the instance's kernel descriptors and the
            // port.
            Some(_g) => guard::shielded(|| collect(epfd, &mut evs[..room])).unwrap_or((0, None)),
            None => (0, None),
        };
        if n > 0 && asked {
            return n as c_int;
        }
        if n == max {
            // `maxevents` 1, taken by a stack socket: no room for the kernel's part. Every
            // eighth such wait runs the interface (the port's frames would otherwise wait for
            // a wait with room).
            let k = FULL.with(|c| {
                c.set(c.get().wrapping_add(1));
                c.get()
            });
            if k.is_multiple_of(8) {
                drop(sleeper);
                if let Some(_g) = Guard::enter() {
                    inline::run();
                }
            }
            return n as c_int;
        }
        let left = deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .as_nanos()
                .div_ceil(1_000_000)
                .min(i32::MAX as u128) as c_int
        });
        let user = if n > 0 { 0 } else { left.unwrap_or(-1) };
        // The stack's timers, when due first (at least 1 ms after a round that ran them, so
        // that a timer the interface cannot serve yet does not spin).
        let mut t = user;
        let mut timer = false;
        if let Some(d) = due {
            let d = (d.min(i32::MAX as u64) as c_int).max(c_int::from(timer_rounds > 0));
            if t < 0 || d < t {
                t = d;
                timer = true;
            }
        }
        if t != 0 && blocked.is_none() {
            // About to sleep: block signals, then look at the stack again under the block.
            blocked = Some(crate::sys::Blocked::all());
            drop(sleeper);
            continue;
        }
        // The sleep's mask: the caller's (`epoll_pwait`), else the thread's own from before
        // the block; a signal that arrived meanwhile interrupts it at once.
        let sleep_mask = match (&blocked, mask.is_null()) {
            (Some(b), true) => b.old(),
            _ => mask,
        };
        let waiting = inline::LoopWaiting::enter();
        let rest = &mut evs[n..];
        // SAFETY: room for `max - n` events at `rest`; the mask is the caller's or a saved one.
        let k = unsafe {
            real::epoll_pwait(epfd, rest.as_mut_ptr(), rest.len() as c_int, t, sleep_mask)
        };
        let err = guard::errno();
        drop(waiting);
        drop(sleeper);
        if k < 0 {
            if n > 0 {
                return n as c_int;
            }
            guard::set_errno(err);
            return k;
        }
        let room = rest.len();
        let (kept, fired, kicked) = filter(&mut rest[..(k as usize).min(room)]);
        let timer_due = timer && k == 0;
        if fired || timer_due {
            if let Some(_g) = Guard::enter() {
                inline::run();
            }
        }
        let total = n + kept;
        if total > 0 {
            guard::set_errno(err);
            return total as c_int;
        }
        asked = true;
        timer_rounds = if timer_due { timer_rounds + 1 } else { 0 };
        if !(fired || kicked || timer_due) {
            // The caller's time is up (the kernel returned nothing before it).
            return 0;
        }
    }
}

/// `select`/`pselect` on sets holding a stack socket: served as `ppoll` on the same
/// descriptors, which is inline ([`crate::hooks::readiness::ppoll`]: the waiting thread runs
/// the interface when the port fires). Readable means `POLLIN`, `POLLHUP` or `POLLERR`
/// (the kernel's `POLLIN_SET`), writable `POLLOUT` or `POLLERR`, exceptional `POLLPRI`; a
/// closed descriptor in a set is `EBADF`. `update` (plain `select`): `*tv` is left with the
/// time not slept, as Linux leaves it. `None`: no stack socket in the sets (or `n` beyond
/// `FD_SETSIZE`): the plain call.
///
/// # Safety
/// The caller's `select` arguments (sets of `FD_SETSIZE` bits, or null).
pub unsafe fn select(
    n: c_int,
    sets: [*mut libc::fd_set; 3],
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
    update: *mut libc::timeval,
) -> Option<c_int> {
    if !super::on() || guard::inside() || n <= 0 || n > libc::FD_SETSIZE as c_int {
        return None;
    }
    const BITS: [i16; 3] = [libc::POLLIN, libc::POLLOUT, libc::POLLPRI];
    // SAFETY: the caller's sets (null checked), `fd < n <= FD_SETSIZE`.
    let isset = |s: *mut libc::fd_set, fd: c_int| !s.is_null() && unsafe { libc::FD_ISSET(fd, s) };
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    let mut stack = false;
    let mut epolls = false;
    for fd in 0..n {
        let events = sets
            .iter()
            .zip(BITS)
            .filter(|(s, _)| isset(**s, fd))
            .fold(0, |a, (_, b)| a | b);
        if events != 0 {
            stack |= is_stack(fd);
            epolls |= inline::registered(fd);
            pfds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
        }
    }
    if epolls {
        if let Some(_g) = Guard::enter() {
            guard::shielded(|| polled(pfds.iter().map(|p| p.fd)));
        }
    }
    if !stack {
        return None;
    }
    let t0 = Instant::now();
    // SAFETY: `pfds` are valid pollfds; the caller's timeout and mask.
    let r = unsafe {
        crate::hooks::readiness::ppoll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ts, mask)
    };
    if r < 0 {
        return Some(r);
    }
    if pfds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        guard::set_errno(libc::EBADF);
        return Some(-1);
    }
    for s in sets.iter().filter(|s| !s.is_null()) {
        for p in &pfds {
            // SAFETY: the caller's set (not null), `p.fd < n`.
            unsafe { libc::FD_CLR(p.fd, *s) };
        }
    }
    let want = [
        libc::POLLIN | libc::POLLHUP | libc::POLLERR,
        libc::POLLOUT | libc::POLLERR,
        libc::POLLPRI,
    ];
    let mut count = 0;
    for p in &pfds {
        for ((s, bit), w) in sets.iter().zip(BITS).zip(want) {
            if !s.is_null() && p.events & bit != 0 && p.revents & w != 0 {
                // SAFETY: as above.
                unsafe { libc::FD_SET(p.fd, *s) };
                count += 1;
            }
        }
    }
    if !update.is_null() && !ts.is_null() {
        // SAFETY: the caller's timeout, as a timespec (not null).
        let t = unsafe { std::ptr::read(ts) };
        let total = Duration::new(t.tv_sec as u64, t.tv_nsec as u32);
        let left = total.saturating_sub(t0.elapsed());
        let tv = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: left.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: the caller's timeval (not null).
        unsafe { std::ptr::write(update, tv) };
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_takes_out_the_port_and_the_kick() {
        let mk = |u: u64| libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u,
        };
        let mut v = [mk(1), mk(inline::TAG), mk(3), mk(KICK_TAG), mk(5)];
        let (n, fired, kicked) = filter(&mut v);
        assert!(fired && kicked);
        let kept: Vec<u64> = v[..n].iter().map(|e| e.u64).collect();
        assert_eq!(kept, [1, 3, 5]);
        let mut w = [mk(7), mk(KICK_TAG)];
        assert_eq!(filter(&mut w), (1, false, true));
        assert_eq!(filter(&mut []), (0, false, false));
    }

    #[test]
    fn tokened_marks_are_per_descriptor() {
        assert!(!tokened(1200) && !tokened(-1) && !tokened(1 << 20));
        set_tokened(1200, true);
        assert!(tokened(1200) && !tokened(1201));
        set_tokened(1200, false);
        assert!(!tokened(1200));
    }
}
