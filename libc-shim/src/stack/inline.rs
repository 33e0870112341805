//! Inline polling: an application thread that waits for a stack socket also waits on the
//! port's descriptor, and when a frame arrives it runs the interface itself, on its own way to
//! the application, as the kernel runs its receive path in softirq context. Without it each
//! request crossed two thread hand-offs (TAP -> stack thread -> token -> application thread).
//!
//! * **Blocking calls** (`recv`, `accept`, `connect`, `send` on a full buffer: [`super::ops`]'s
//!   wait) poll the port beside their own descriptor; one such thread at a time holds the port
//!   ([`Poller`]), the others sleep on their descriptors only (the poller's pass writes their
//!   tokens).
//! * **`poll`/`ppoll`** on a set holding a stack socket: a copy of the set with the port
//!   appended, when no other thread holds the port (else the plain call); `select`/`pselect`
//!   are served as `ppoll` ([`super::ready::select`]).
//! * **epoll**: when the first stack socket is added to an epoll instance, the port joins it
//!   (edge-triggered, data [`TAG`]); the stack sockets' registrations are the stack's own and
//!   `epoll_wait` runs the interface when the port fires ([`super::ready`]). A forked child
//!   sharing such an instance drops the tag's events and never runs the interface (it has
//!   none).
//! * **The stack thread** leaves the port and the timers to an event loop that waited within
//!   the last 10 ms ([`LoopWaiting`]). Otherwise it keeps the timers, and the port whenever
//!   no application thread waits on it: while one does ([`WAITERS`] > 0) it sleeps on its eventfd and the next timer only
//!   (at most 10 ms, a safety net), the last waiter to leave wakes it, and it then waits 1 ms
//!   more without the port (an event loop is usually back in its wait by then) before it takes
//!   the port again. A frame that arrives while no thread waits is thus served at most 1 ms
//!   late, and only when the application is not waiting for the stack anyway.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};

use libc::c_int;

use super::{lock, pump, FORKED};
use crate::fdbits::FdBits;
use crate::real;

/// The data of the port's registration in an application's epoll instance.
pub const TAG: u64 = 0x4869_6361_6d70_5054;

/// The port's descriptor (-1: none, or not the stack process).
static PORT: AtomicI32 = AtomicI32::new(-1);
/// Application threads in a wait that includes the port.
static WAITERS: AtomicU32 = AtomicU32::new(0);
/// The stack thread sleeps without the port: the last waiter to leave wakes it.
static WANT_WAKE: AtomicBool = AtomicBool::new(false);
/// A blocking call's wait holds the port.
static POLLER: AtomicBool = AtomicBool::new(false);
/// Epoll instances (by descriptor) the port was added to.
static REG: FdBits = FdBits::new();

/// A forked child starts a stack of its own ([`super::rehome`]): the epoll instances the
/// stack process added its port to are not this process's.
pub(super) fn forget_inherited() {
    REG.drain(|_| ());
    PORT.store(-1, Relaxed);
}

/// Inline polling is on unless `HICAMP_STACK_INLINE=0`.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HICAMP_STACK_INLINE").is_none_or(|v| v != "0"))
}

/// Records the port's descriptor (the stack started).
pub(super) fn set_port(fd: c_int) {
    if enabled() {
        PORT.store(fd, Relaxed);
    }
}

/// The port's descriptor for this process's waits (-1 in a forked child, or with inline
/// polling off).
pub(super) fn port_fd() -> c_int {
    port()
}

/// The port's descriptor for this process's waits (-1 in a forked child).
fn port() -> c_int {
    if FORKED.load(Relaxed) {
        -1
    } else {
        PORT.load(Relaxed)
    }
}

/// True when the port was added to epoll instance `epfd`.
#[inline]
pub fn registered(epfd: c_int) -> bool {
    REG.get(epfd)
}

/// `fd` is closed (or replaced): it is no epoll instance of ours any more (its stack
/// sockets' registrations go with it).
#[inline]
pub fn forget(fd: c_int) {
    if REG.take(fd) {
        super::ready::drop_set(fd);
    }
}

/// After a stack socket was added to epoll instance `epfd` (or before one is registered
/// there): the port joins it, and [`super::ready`]'s kick descriptor (once). Errors are the
/// kernel's for `epfd` (`EBADF`, `EINVAL`: not an epoll instance).
pub fn register(epfd: c_int) -> Result<(), c_int> {
    let port = port();
    if port < 0 || registered(epfd) {
        return Ok(());
    }
    for (fd, tag) in [
        (port, TAG),
        (super::ready::kick_fd(), super::ready::KICK_TAG),
    ] {
        if fd < 0 {
            continue;
        }
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: tag,
        };
        // SAFETY: a valid epoll_event; the kernel checks both descriptors.
        let r = unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r != 0 && crate::guard::errno() != libc::EEXIST {
            return Err(crate::guard::errno());
        }
    }
    REG.set(epfd, true);
    Ok(())
}

/// An application thread's wait that includes the port (dropped when it returns).
#[derive(Debug)]
pub struct Waiting(());

impl Waiting {
    /// Enters a wait on the port (`None` in a process without the port).
    pub fn enter() -> Option<Waiting> {
        if port() < 0 {
            return None;
        }
        // Output deferred by this process's sends leaves before the thread sleeps.
        super::flush_deferred();
        WAITERS.fetch_add(1, SeqCst);
        Some(Waiting(()))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if WAITERS.fetch_sub(1, SeqCst) == 1 && WANT_WAKE.swap(false, SeqCst) {
            wake_stack();
        }
    }
}

/// An event loop's wait ([`super::ready::wait`]): holds the port like [`Waiting`], but leaving
/// it does not wake the stack thread: the loop comes back to its wait and sees what arrived
/// meanwhile (the port's edge waits in its epoll set), and it runs the timers there. The stack
/// thread stays off the port while a loop waited within the last [`LOOP_QUIET_MS`].
#[derive(Debug)]
pub struct LoopWaiting(());

/// Milliseconds after an event loop's last wait during which the stack thread leaves the
/// port (and the timers) to it; it looks again at the end of each such period.
const LOOP_QUIET_MS: c_int = 10;

/// Event loops in their wait now.
static LOOPS_IN: AtomicU32 = AtomicU32::new(0);

/// `Instant` of the last event loop wait, as ms since the stack's start (0: none yet).
static LOOP_SEEN: AtomicU64 = AtomicU64::new(0);

impl LoopWaiting {
    /// Enters an event loop's wait (`None` in a process without the port).
    pub fn enter() -> Option<LoopWaiting> {
        if port() < 0 {
            return None;
        }
        WAITERS.fetch_add(1, SeqCst);
        LOOPS_IN.fetch_add(1, SeqCst);
        LOOP_SEEN.store(now_ms().max(1), Relaxed);
        Some(LoopWaiting(()))
    }
}

impl Drop for LoopWaiting {
    fn drop(&mut self) {
        LOOP_SEEN.store(now_ms().max(1), Relaxed);
        LOOPS_IN.fetch_sub(1, SeqCst);
        WAITERS.fetch_sub(1, SeqCst);
    }
}

fn now_ms() -> u64 {
    static T0: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    T0.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// True while an event loop waited on the port within the last [`LOOP_QUIET_MS`].
fn loop_active() -> bool {
    if LOOPS_IN.load(SeqCst) > 0 {
        return true;
    }
    let seen = LOOP_SEEN.load(Relaxed);
    seen != 0 && now_ms().saturating_sub(seen) < LOOP_QUIET_MS as u64
}

fn wake_stack() {
    super::wake_stack();
}

/// A blocking call's hold on the port: only one such wait polls it at a time.
#[derive(Debug)]
pub struct Poller {
    _w: Waiting,
    /// The port's descriptor.
    pub fd: c_int,
}

impl Poller {
    /// Takes the port for one wait (`None`: another thread holds it, or no port here).
    pub fn take() -> Option<Poller> {
        let fd = port();
        if fd < 0 || POLLER.swap(true, SeqCst) {
            return None;
        }
        match Waiting::enter() {
            Some(w) => Some(Poller { _w: w, fd }),
            None => {
                POLLER.store(false, SeqCst);
                None
            }
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        POLLER.store(false, SeqCst);
    }
}

/// The port fired in an application thread's wait: runs the interface here (and again while
/// work is due at once: frames left in the port, a window update owed). The caller is inside
/// the shim (holds a [`crate::guard::Guard`]) and holds no lock.
pub fn run() {
    if port() < 0 {
        return;
    }
    let _ = crate::guard::shielded(|| {
        let mut w = lock();
        super::rearm(&mut w);
        for _ in 0..8 {
            pump(&mut w);
            let Some(e) = w.engine.as_ref() else {
                break;
            };
            let now = e.now();
            if e.iface.poll_at().is_none_or(|at| at > now) {
                break;
            }
        }
    });
}

/// The stack thread's plan for its next sleep: whether it waits on the port, the longest
/// sleep in milliseconds (-1: until the next timer), and whether it runs the timers. `grace`
/// carries "woken by the last waiter" from one call to the next.
pub(super) fn stack_plan(grace: &mut bool) -> (bool, c_int, bool) {
    if PORT.load(Relaxed) < 0 {
        return (true, -1, true);
    }
    if loop_active() {
        // An event loop holds the port and runs the timers when it waits; the stack thread
        // looks again in a while (the loop may have gone to sleep elsewhere).
        *grace = false;
        return (false, LOOP_QUIET_MS, false);
    }
    if WAITERS.load(SeqCst) > 0 {
        WANT_WAKE.store(true, SeqCst);
        if WAITERS.load(SeqCst) > 0 {
            *grace = true;
            return (false, 10, true);
        }
        WANT_WAKE.store(false, SeqCst);
    }
    if std::mem::take(grace) {
        return (false, 1, true);
    }
    (true, -1, true)
}

/// Removes the port's events from `n` events at `ev`; returns how many remain and whether the
/// port fired.
///
/// # Safety
/// `ev` points to `n` initialised events.
pub unsafe fn filter(ev: *mut libc::epoll_event, n: usize) -> (usize, bool) {
    if ev.is_null() || n == 0 {
        return (0, false);
    }
    // SAFETY: `n` initialised events at `ev` (the caller's contract).
    let evs = unsafe { std::slice::from_raw_parts_mut(ev, n) };
    let mut kept = 0;
    let mut fired = false;
    for i in 0..n {
        let e = evs[i];
        if e.u64 == TAG {
            fired = true;
            continue;
        }
        evs[kept] = e;
        kept += 1;
    }
    (kept, fired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_drops_only_the_tag() {
        let mk = |u: u64| libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u,
        };
        let mut v = [mk(1), mk(TAG), mk(3), mk(TAG), mk(5)];
        // SAFETY: five initialised events.
        let (n, fired) = unsafe { filter(v.as_mut_ptr(), v.len()) };
        assert!(fired);
        assert_eq!(n, 3);
        let kept: Vec<u64> = v[..n].iter().map(|e| e.u64).collect();
        assert_eq!(kept, [1, 3, 5]);
        let mut w = [mk(7)];
        // SAFETY: one initialised event.
        assert_eq!(unsafe { filter(w.as_mut_ptr(), 1) }, (1, false));
    }

    #[test]
    fn registrations_are_per_descriptor() {
        assert!(!registered(900) && !registered(-1) && !registered(1 << 20));
        REG.set(900, true);
        assert!(registered(900) && !registered(901));
        forget(900);
        assert!(!registered(900));
    }
}
