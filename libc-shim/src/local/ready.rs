//! Readiness of local descriptors from their rings: `epoll`, `poll` and `select` look at the
//! rings first (shared-memory loads) and block in the kernel only when nothing is ready; the
//! writer puts a token byte only while a reader may be blocked in a kernel wait (the ring's
//! pins: [`Conn::pin`]). See the parent module's doc, "Readiness".
//!
//! Per epoll instance that holds a local descriptor, a shadow registration keeps the
//! application's events and data; the kernel registration of a local descriptor is the shim's
//! (`EPOLLET`, `EPOLLIN`/`EPOLLOUT` as the application asks, and a data word of its own), so a
//! kernel event on it is only a wake-up, and the events the application gets come from the ring.
//! An instance the shim cannot see every wait of (added to another epoll instance, or polled by
//! `poll`/`select`) is *exposed*: its local descriptors keep tokens on for good, and an eventfd
//! (the kick) in it keeps it readable while a level-triggered local registration is ready.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hicamp::shared::{Conn, PollBits};
use libc::{c_int, epoll_event, pollfd, sigset_t, timespec};
use parking_lot::{Mutex, RwLock};

use super::{marked, Entry};
use crate::fdbits::FdBits;
use crate::guard::{self, Guard};
use crate::real;

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const RDHUP: u32 = libc::EPOLLRDHUP as u32;
const HUP: u32 = libc::EPOLLHUP as u32;
const ERR: u32 = libc::EPOLLERR as u32;
const ET: u32 = libc::EPOLLET as u32;
const ONESHOT: u32 = libc::EPOLLONESHOT as u32;
const RDNORM: u32 = libc::EPOLLRDNORM as u32;
const WRNORM: u32 = libc::EPOLLWRNORM as u32;

/// The high half of the data word of the shim's kernel registrations (a user-space pointer
/// never has these bits; the low half is the descriptor).
const MAGIC: u64 = 0xB10C_A1FD_0000_0000;
/// The kick's data word.
const KICK: u64 = MAGIC | 0xFFFF_FFFF;
/// Kernel descriptors of an instance are looked at (a zero-timeout `epoll_wait`) at least every
/// this many calls that found local events ready, and at least this often.
const KERNEL_EVERY: u32 = 4;
const KERNEL_EVERY_TIME: Duration = Duration::from_micros(200);
/// Longest kernel sleep before the rings are looked at again (a backstop: every wake-up the
/// protocol owes is a token, a filler drain or a hang-up).
const BACKSTOP: Duration = Duration::from_secs(1);

/// Descriptors created by `epoll_create`/`epoll_create1` in this process.
static EPOLL_FDS: FdBits = FdBits::new();
/// Epoll descriptors seen inside another wait (nested, or polled).
static EXPOSED: FdBits = FdBits::new();

/// One local descriptor's registration in an instance.
struct Reg {
    fd: c_int,
    e: Arc<Entry>,
    /// The application's events (with `EPOLLET`, `EPOLLONESHOT`) and data.
    events: u32,
    data: u64,
    /// `EPOLLONESHOT` fired (until `EPOLL_CTL_MOD`).
    disabled: bool,
    /// Edge-triggered: the ring sequences at the last report (`None`: report what is ready).
    last: Option<(u32, u32)>,
    /// Hang-up bits the kernel gave for the pair's end (the peer's end closed everywhere).
    hup: u32,
    /// Holds a pin for good (the instance is exposed).
    pinned: bool,
}

struct Inst {
    regs: Vec<Reg>,
    /// Kernel descriptors added through the hook (an over-count after a close is harmless).
    kernel: u32,
    exposed: bool,
    /// The kick eventfd (-1: none yet).
    kick: c_int,
    /// Threads asleep in the kernel on it (a registration added or re-armed meanwhile kicks
    /// them: their pins do not cover it).
    sleepers: u32,
    calls: u32,
    last_kernel: Instant,
    /// Where the next scan starts (fairness among local descriptors).
    rr: usize,
}

type Insts = HashMap<c_int, Arc<Mutex<Inst>>>;
static INSTS: RwLock<Option<Insts>> = RwLock::new(None);

fn inst(epfd: c_int) -> Option<Arc<Mutex<Inst>>> {
    INSTS.read().as_ref()?.get(&epfd).cloned()
}

fn inst_or_new(epfd: c_int) -> Arc<Mutex<Inst>> {
    let mut g = INSTS.write();
    g.get_or_insert_with(HashMap::new)
        .entry(epfd)
        .or_insert_with(|| {
            Arc::new(Mutex::new(Inst {
                regs: Vec::new(),
                kernel: 0,
                exposed: false,
                kick: -1,
                sleepers: 0,
                calls: 0,
                last_kernel: Instant::now(),
                rr: 0,
            }))
        })
        .clone()
}

fn conn_of<R>(e: &Entry, f: impl FnOnce(&Conn) -> R) -> Option<R> {
    // Recursive: a spin holds the read guards of every registration it watches.
    e.conn.read_recursive().as_ref().map(f)
}

/// The epoll bits a ring state gives (before the application's mask).
fn bits_of(p: &PollBits, hup: u32) -> u32 {
    let mut m = 0;
    if p.data || p.fin || p.rst {
        m |= IN | RDNORM;
    }
    if p.writable {
        m |= OUT | WRNORM;
    }
    if p.fin || p.rst {
        m |= RDHUP;
    }
    if p.rst || (p.fin && (p.write_shut || p.peer_closed)) {
        m |= HUP;
    }
    if p.rst {
        m |= ERR;
    }
    if hup != 0 {
        m |= IN | RDNORM | RDHUP | (hup & (HUP | ERR));
    }
    m
}

/// What an edge-triggered registration compares with its last report: the sequences of the
/// directions it asked for (a new publish, FIN or RST in; a consume or close out).
fn edge_key(p: &PollBits, events: u32) -> (u32, u32) {
    (
        if events & (IN | RDHUP) != 0 {
            p.in_seq
        } else {
            0
        },
        if events & OUT != 0 { p.out_seq } else { 0 },
    )
}

/// Readiness from the rings: local mode alone or beside trace mode. Beside stack mode (whose
/// epoll hooks run the interface inline) every local connection keeps tokens on for good
/// (`super::tokens_always`), and the kernel's readiness is the application's.
#[inline]
pub fn active() -> bool {
    super::on() && !crate::stack::on()
}

/// `epoll_create`/`epoll_create1` returned `fd`.
pub fn created(fd: c_int) {
    if fd >= 0 && active() {
        EPOLL_FDS.set(fd, true);
        EXPOSED.set(fd, false);
    }
}

/// `fd` is about to be closed: an epoll instance's shadow goes, a local descriptor leaves the
/// instances that hold it.
pub fn closing(fd: c_int) {
    if EPOLL_FDS.get(fd) {
        EPOLL_FDS.set(fd, false);
        EXPOSED.set(fd, false);
        let gone = INSTS.write().as_mut().and_then(|m| {
            let i = m.remove(&fd)?;
            // Another number (a `dup`) still names the instance: it stays.
            (!m.values().any(|v| Arc::ptr_eq(v, &i))).then_some(i)
        });
        if let Some(i) = gone {
            let mut i = i.lock();
            for r in i.regs.drain(..) {
                release(&r);
            }
            if i.kick >= 0 {
                super::close_fd(i.kick);
                i.kick = -1;
            }
        }
    }
    if marked(fd) {
        let all: Vec<Arc<Mutex<Inst>>> = INSTS
            .read()
            .as_ref()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for i in all {
            let mut i = i.lock();
            i.regs.retain(|r| {
                if r.fd == fd {
                    release(r);
                    false
                } else {
                    true
                }
            });
        }
    }
}

/// True when `fd` is an epoll instance created in this process (local mode).
pub fn is_epoll(fd: c_int) -> bool {
    EPOLL_FDS.get(fd)
}

/// `new` is a duplicate of `old`: an epoll instance answers to both numbers.
pub fn duplicated(old: c_int, new: c_int) {
    if new < 0 || old == new || !EPOLL_FDS.get(old) {
        return;
    }
    EPOLL_FDS.set(new, true);
    EXPOSED.set(new, EXPOSED.get(old));
    let mut g = INSTS.write();
    if let Some(m) = g.as_mut() {
        if let Some(i) = m.get(&old).cloned() {
            m.insert(new, i);
        }
    }
}

/// `close_range(first, last)` is about to close these descriptors: the epoll instances among
/// them lose their shadows.
pub fn closing_range(first: u32, last: u32) {
    let fds: Vec<c_int> = INSTS
        .read()
        .as_ref()
        .map(|m| {
            m.keys()
                .copied()
                .filter(|&f| (first..=last).contains(&(f as u32)))
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        closing(fd);
    }
}

fn release(r: &Reg) {
    if r.pinned {
        conn_of(&r.e, Conn::unpin);
        r.e.exposed.fetch_sub(1, Relaxed);
    }
}

/// Takes a pin for good on `r` (an exposed instance's registration).
fn pin_for_good(e: &Entry) {
    conn_of(e, Conn::pin);
    e.exposed.fetch_add(1, Relaxed);
}

/// True when the tokens of `e`'s ring may serve a wait the shim does not see (after a fork, in
/// an exposed instance, or tokens always on): then a token stays while bytes are queued.
fn tokens_shared(e: &Entry) -> bool {
    super::tokens_always()
        || super::URING.load(Relaxed)
        || e.forked.load(Relaxed)
        || e.exposed.load(Relaxed) > 0
}

/// The shim's kernel registration of a local descriptor: edge-triggered (a wake-up per token,
/// filler drain or hang-up), or in an exposed instance triggered as the application asked (so
/// that the instance itself polls readable while a token says the ring holds data).
fn kernel_event(fd: c_int, events: u32, disabled: bool, exposed: bool) -> epoll_event {
    let want = if disabled { 0 } else { events & (IN | OUT) };
    let et = if exposed { events & ET } else { ET };
    epoll_event {
        events: et | RDHUP | want,
        u64: MAGIC | fd as u32 as u64,
    }
}

/// Makes an instance exposed: its local descriptors keep tokens on for good, and its kick
/// eventfd is set while a level-triggered registration is ready.
fn expose(epfd: c_int) {
    EXPOSED.set(epfd, true);
    let Some(i) = inst(epfd) else { return };
    let mut i = i.lock();
    if i.exposed {
        return;
    }
    i.exposed = true;
    for r in &mut i.regs {
        if !r.pinned {
            pin_for_good(&r.e);
            r.pinned = true;
        }
        let mut kev = kernel_event(r.fd, r.events, r.disabled, true);
        // SAFETY: a valid event for a registered descriptor.
        unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, r.fd, &mut kev) };
    }
    ensure_kick(epfd, &mut i);
    kick_if_ready(&mut i);
}

/// Gives instance `epfd` its kick: an eventfd in it (level-triggered), set to wake a thread
/// asleep in it when a registration changes, or (exposed) to keep it readable.
fn ensure_kick(epfd: c_int, i: &mut Inst) {
    if i.kick >= 0 {
        return;
    }
    // SAFETY: eventfd has no memory arguments.
    let k = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if k < 0 {
        return;
    }
    let kk = super::hide(k);
    super::close_fd(k);
    let mut ev = epoll_event {
        events: IN,
        u64: KICK,
    };
    // SAFETY: a valid event for our own eventfd.
    if kk >= 0 && unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, kk, &mut ev) } == 0 {
        i.kick = kk;
    } else {
        super::close_fd(kk);
    }
}

fn kick(i: &Inst) {
    if i.kick >= 0 {
        let one: u64 = 1;
        // SAFETY: eight readable bytes into our eventfd.
        unsafe { libc::write(i.kick, (&one as *const u64).cast(), 8) };
    }
}

/// An exposed instance: sets the kick while a level-triggered registration has bytes no token
/// stands for (published while no pin was held: the kernel's view misses them), and fills the
/// rings of registrations waiting for room (so that the drain wakes the instance).
fn kick_if_ready(i: &mut Inst) {
    if !i.exposed {
        return;
    }
    let mut ready = false;
    for r in &i.regs {
        if r.disabled {
            continue;
        }
        let Some((p, held)) = conn_of(&r.e, |c| (c.poll_bits(), c.token_held())) else {
            continue;
        };
        if r.events & IN != 0 && r.events & ET == 0 && p.data && !held {
            ready = true;
        }
        if r.events & OUT != 0 && !p.writable {
            conn_of(&r.e, |c| super::fill(r.fd, c));
            if conn_of(&r.e, Conn::writable).unwrap_or(false) && r.events & ET == 0 {
                ready = true;
            }
        }
    }
    if ready {
        kick(i);
    }
}

fn unkick(kick: c_int) {
    let mut v: u64 = 0;
    // SAFETY: eight writable bytes from our eventfd.
    unsafe { libc::read(kick, (&mut v as *mut u64).cast(), 8) };
}

/// `epoll_ctl` (`None`: not the shim's business; the caller makes the plain call).
///
/// # Safety
/// The caller's `epoll_ctl` arguments.
pub unsafe fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> Option<c_int> {
    if !active() || guard::inside() {
        return None;
    }
    let nested = op == libc::EPOLL_CTL_ADD && EPOLL_FDS.get(fd);
    if !marked(fd) {
        if nested {
            if let Some(_g) = Guard::enter() {
                guard::shielded(|| expose(fd));
            }
        } else if op == libc::EPOLL_CTL_ADD && EPOLL_FDS.get(epfd) {
            if let Some(i) = inst(epfd) {
                i.lock().kernel += 1;
            } else {
                // Counted once the instance gets a local descriptor: start with one.
                inst_or_new(epfd).lock().kernel += 1;
            }
        }
        return None;
    }
    let e = super::entry(fd)?;
    let _g = Guard::enter()?;
    // SAFETY: the caller's event, when the operation reads one.
    let app = (!ev.is_null() && op != libc::EPOLL_CTL_DEL).then(|| unsafe { std::ptr::read(ev) });
    let r = super::run(|| ctl_local(epfd, op, fd, e, app));
    r.or_else(|| {
        guard::set_errno(libc::EIO);
        Some(-1)
    })
}

fn ctl_local(epfd: c_int, op: c_int, fd: c_int, e: Arc<Entry>, app: Option<epoll_event>) -> c_int {
    match op {
        libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD => {
            let Some(app) = app else {
                super::set_err(libc::EFAULT);
                return -1;
            };
            let mut kev = kernel_event(fd, app.events, false, EXPOSED.get(epfd));
            // SAFETY: a valid event.
            let r = unsafe { real::epoll_ctl(epfd, op, fd, &mut kev) };
            if r != 0 {
                super::set_err(guard::errno());
                return r;
            }
            let i = inst_or_new(epfd);
            EPOLL_FDS.set(epfd, true);
            let exposed = EXPOSED.get(epfd);
            if exposed && !i.lock().exposed {
                expose(epfd);
            }
            let mut g = i.lock();
            if let Some(reg) = g.regs.iter_mut().find(|r| r.fd == fd) {
                reg.events = app.events;
                reg.data = app.u64;
                reg.disabled = false;
                reg.last = None;
                reg.e = e;
            } else {
                let pinned = g.exposed;
                if pinned {
                    pin_for_good(&e);
                }
                g.regs.push(Reg {
                    fd,
                    e,
                    events: app.events,
                    data: app.u64,
                    disabled: false,
                    last: None,
                    hup: 0,
                    pinned,
                });
            }
            ensure_kick(epfd, &mut g);
            if g.sleepers > 0 {
                kick(&g);
            }
            kick_if_ready(&mut g);
            0
        }
        _ => {
            let mut dummy = epoll_event { events: 0, u64: 0 };
            // SAFETY: a valid event (ignored by DEL).
            let r = unsafe { real::epoll_ctl(epfd, op, fd, &mut dummy) };
            let err = guard::errno();
            if let Some(i) = inst(epfd) {
                i.lock().regs.retain(|x| {
                    if x.fd == fd {
                        release(x);
                        false
                    } else {
                        true
                    }
                });
            }
            if r != 0 {
                super::set_err(err);
            }
            r
        }
    }
}

/// True when `epfd` is an instance holding local descriptors (its waits go to [`epoll_wait`]).
#[inline]
pub fn shadowed(epfd: c_int) -> bool {
    EPOLL_FDS.get(epfd)
        && INSTS
            .read()
            .as_ref()
            .and_then(|m| m.get(&epfd))
            .is_some_and(|i| !i.lock().regs.is_empty())
}

/// Collects the ready local events of `i` into `out` (at most `room`); applies edge-triggered
/// and one-shot bookkeeping.
fn collect(epfd: c_int, i: &mut Inst, out: &mut Vec<epoll_event>, room: usize) {
    let n = i.regs.len();
    if n == 0 || room == 0 {
        return;
    }
    let start = i.rr % n;
    let exposed = i.exposed;
    let mut taken = 0;
    for k in 0..n {
        if taken >= room {
            break;
        }
        let idx = (start + k) % n;
        let r = &mut i.regs[idx];
        if r.disabled {
            continue;
        }
        let Some(p) = conn_of(&r.e, |c| {
            // A level-triggered reader: one look at the ring decides most of the time.
            (r.events & (OUT | ET) != 0 || r.hup != 0 || c.readable()).then(|| c.poll_bits())
        })
        .flatten() else {
            continue;
        };
        let m = bits_of(&p, r.hup) & (r.events | HUP | ERR);
        if m == 0 {
            continue;
        }
        if r.events & ET != 0 {
            let now = edge_key(&p, r.events);
            if r.last == Some(now) {
                continue;
            }
            r.last = Some(now);
        }
        if r.events & ONESHOT != 0 {
            r.disabled = true;
            let mut kev = kernel_event(r.fd, r.events, true, exposed);
            // SAFETY: a valid event for a registered descriptor.
            unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, r.fd, &mut kev) };
        }
        out.push(epoll_event {
            events: m,
            u64: r.data,
        });
        taken += 1;
    }
    i.rr = i.rr.wrapping_add(1);
}

/// Filters the kernel's events: the shim's wake-ups (local descriptors, the kick) go; the
/// hang-up bits of a local descriptor's pair are kept in its registration. Returns the count
/// of the application's kernel events, now at the front.
fn filter(i: &mut Inst, ev: &mut [epoll_event]) -> usize {
    let mut kept = 0;
    for k in 0..ev.len() {
        let e = ev[k];
        let d = e.u64;
        if d & 0xFFFF_FFFF_0000_0000 == MAGIC {
            if d == KICK {
                if i.kick >= 0 {
                    unkick(i.kick);
                }
            } else {
                let fd = (d & 0xFFFF_FFFF) as c_int;
                if e.events & (HUP | ERR) != 0 {
                    if let Some(r) = i.regs.iter_mut().find(|r| r.fd == fd) {
                        r.hup |= e.events & (HUP | ERR);
                    }
                }
            }
            continue;
        }
        ev[kept] = e;
        kept += 1;
    }
    kept
}

/// A local registration to wait on.
struct Want {
    fd: c_int,
    e: Arc<Entry>,
    events: u32,
    last: Option<(u32, u32)>,
    hup: u32,
}

impl Want {
    /// True when the ring has something to report (edge-triggered: something new since the
    /// last report).
    fn ready(&self, p: &PollBits) -> bool {
        let m = bits_of(p, self.hup) & (self.events | HUP | ERR);
        m != 0 && (self.events & ET == 0 || self.last != Some(edge_key(p, self.events)))
    }
}

fn wanted(i: &Inst) -> Vec<Want> {
    i.regs
        .iter()
        .filter(|r| !r.disabled)
        .map(|r| Want {
            fd: r.fd,
            e: r.e.clone(),
            events: r.events,
            last: r.last,
            hup: r.hup,
        })
        .collect()
}

/// Spins (the adaptive budget of the first registration's ring) until a registration is
/// ready; true when one was.
fn spin(w: &[Want]) -> bool {
    let guards: Vec<_> = w.iter().map(|x| x.e.conn.read_recursive()).collect();
    let conns: Vec<(&Want, &Conn)> = w
        .iter()
        .zip(&guards)
        .filter_map(|(x, g)| g.as_ref().map(|c| (x, c)))
        .collect();
    let Some((_, first)) = conns.first() else {
        return false;
    };
    first.spin_until_ready(&|| {
        conns.iter().any(|(x, c)| {
            if x.events & (OUT | ET) == 0 && x.hup == 0 {
                c.readable()
            } else {
                x.ready(&c.poll_bits())
            }
        })
    })
}

/// Before a kernel sleep: pins the rings of readers (tokens on), clears a stale token of an empty ring
/// (so that the next token is a new edge), fills the rings of writers waiting for room (so
/// that the drain is one). True when something is ready after all (the caller unpins and does
/// not sleep).
fn arm(w: &[Want]) -> bool {
    let mut ready = false;
    for x in w {
        conn_of(&x.e, |c| {
            if x.events & IN != 0 {
                c.pin();
            }
            let p = c.poll_bits();
            if x.ready(&p) {
                ready = true;
                return;
            }
            if x.events & IN != 0 && c.token_held() {
                if !p.data {
                    super::drop_token(x.fd, c);
                } else if x.events & ET != 0 && !tokens_shared(&x.e) && c.token_reset() {
                    // Edge-triggered with bytes left unread (reported already) and a token
                    // out: the next publish must write a new byte (a new edge), so the token
                    // goes now; no wait the shim does not see relies on it.
                    super::read_token_byte(x.fd);
                }
            }
            if x.events & OUT != 0 && !p.writable {
                super::fill(x.fd, c);
                if x.ready(&c.poll_bits()) {
                    ready = true;
                }
            }
        });
    }
    ready
}

/// Drops the pins [`arm`] took (only a reader needs tokens: writability and hang-ups reach the
/// kernel through the pair's send buffer and its shutdown).
fn disarm(w: &[Want]) {
    for x in w.iter().filter(|x| x.events & IN != 0) {
        conn_of(&x.e, Conn::unpin);
    }
}

/// Milliseconds until `deadline` (rounded up), capped by the backstop; -1 never.
fn ms_left(deadline: Option<Instant>) -> c_int {
    let cap = BACKSTOP.as_millis() as c_int;
    match deadline {
        None => cap,
        Some(d) => {
            let l = d.saturating_duration_since(Instant::now());
            (l.as_nanos().div_ceil(1_000_000).min(cap as u128)) as c_int
        }
    }
}

/// `epoll_wait`/`epoll_pwait` on a shadowed instance (`None`: not one; the caller makes the
/// plain call).
///
/// # Safety
/// The caller's `epoll_pwait` arguments.
pub unsafe fn epoll_wait(
    epfd: c_int,
    ev: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> Option<c_int> {
    if !active() || guard::inside() || !EPOLL_FDS.get(epfd) || ev.is_null() || max <= 0 {
        return None;
    }
    let i = inst(epfd)?;
    if i.lock().regs.is_empty() {
        return None;
    }
    let g = Guard::enter()?;
    // SAFETY: the caller's arguments.
    super::run(|| unsafe { wait_shadow(epfd, &i, g, ev, max as usize, timeout, mask) })
}

/// [`epoll_wait`] on shadowed instance `i`; `g` is dropped while the thread sleeps in the
/// kernel (a signal handler may then use the hooks).
///
/// # Safety
/// The caller's `epoll_pwait` arguments (`max` > 0).
unsafe fn wait_shadow(
    epfd: c_int,
    i: &Arc<Mutex<Inst>>,
    g: Guard,
    ev: *mut epoll_event,
    max: usize,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    let mut guard_held = Some(g);
    // SAFETY: the caller's array of `max` events.
    let out = unsafe { std::slice::from_raw_parts_mut(ev, max) };
    let deadline = (timeout >= 0).then(|| Instant::now() + Duration::from_millis(timeout as u64));
    let mut local: Vec<epoll_event> = Vec::new();
    let mut spun = false;
    // Set before the first spin or sleep (see `sys::Blocked`); the thread's mask comes back
    // on every return.
    let mut blocked: Option<crate::sys::Blocked> = None;
    {
        let g = i.lock();
        if g.exposed && g.kick >= 0 {
            unkick(g.kick);
        }
    }
    loop {
        // 1. The rings, and every 4th call or 200 us the kernel descriptors (one slot kept
        //    for them, so that local descriptors always ready cannot starve them).
        local.clear();
        let (due, exposed) = {
            let mut g = i.lock();
            g.calls = g.calls.wrapping_add(1);
            let due = (g.kernel > 0 || g.exposed)
                && (g.calls.is_multiple_of(KERNEL_EVERY)
                    || g.last_kernel.elapsed() >= KERNEL_EVERY_TIME);
            if due {
                g.last_kernel = Instant::now();
            }
            collect(epfd, &mut g, &mut local, if due { max - 1 } else { max });
            (due, g.exposed)
        };
        if !local.is_empty() || due {
            let mut nk = 0;
            if due {
                let room = max - local.len();
                // SAFETY: `room` events at the front of the caller's array.
                let k = unsafe { real::epoll_pwait(epfd, ev, room as c_int, 0, mask) };
                let mut g = i.lock();
                if k > 0 {
                    nk = filter(&mut g, &mut out[..k as usize]);
                }
                if nk == 0 && local.is_empty() {
                    // The slot kept for the kernel (all of a 1-event array) went unused.
                    collect(epfd, &mut g, &mut local, max);
                }
            }
            let n = nk + local.len();
            if n > 0 {
                out[nk..n].copy_from_slice(&local);
                if exposed {
                    kick_if_ready(&mut i.lock());
                }
                return n as c_int;
            }
        }
        // 2. Nothing local ready: a look at the kernel, or a wait. Signals are blocked
        //    first and the rings looked at again under the block, so that a handler that
        //    runs meanwhile interrupts the sleep instead of preceding it.
        if timeout != 0 && blocked.is_none() {
            blocked = Some(crate::sys::Blocked::all());
            continue;
        }
        let w = wanted(&i.lock());
        if timeout != 0 && !spun {
            spun = true;
            if spin(&w) {
                continue;
            }
        }
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        let sleep = timeout != 0 && !expired;
        let t = if sleep {
            if arm(&w) {
                disarm(&w);
                continue;
            }
            i.lock().sleepers += 1;
            guard_held = None;
            ms_left(deadline)
        } else {
            0
        };
        // The sleep's mask: the caller's, else the thread's own from before the block.
        let m = match (&blocked, mask.is_null()) {
            (Some(b), true) => b.old(),
            _ => mask,
        };
        // SAFETY: the caller's arguments; `m` is the caller's mask or a saved one.
        let k = unsafe { real::epoll_pwait(epfd, ev, max as c_int, t, m) };
        let err = guard::errno();
        if sleep {
            guard_held = Guard::enter();
            let mut g = i.lock();
            g.sleepers = g.sleepers.saturating_sub(1);
            drop(g);
            disarm(&w);
        }
        if k < 0 {
            super::set_err(err);
            return k;
        }
        let mut g = i.lock();
        let nk = filter(&mut g, &mut out[..k as usize]);
        local.clear();
        collect(epfd, &mut g, &mut local, max - nk);
        out[nk..nk + local.len()].copy_from_slice(&local);
        let n = nk + local.len();
        if g.exposed {
            kick_if_ready(&mut g);
        }
        drop(g);
        if n > 0 || !sleep {
            drop(guard_held);
            return n as c_int;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return 0;
        }
    }
}

// ----- poll and select -----

/// A local descriptor of a poll set: its index and entry.
type Locals = Vec<(usize, Arc<Entry>)>;

fn poll_bits_of(p: &PollBits, kernel: i16) -> i16 {
    let hup = if kernel & (libc::POLLHUP | libc::POLLERR) != 0 {
        HUP
    } else {
        0
    };
    let m = bits_of(p, hup);
    let mut r: i16 = 0;
    if m & IN != 0 {
        r |= libc::POLLIN | libc::POLLRDNORM;
    }
    if m & OUT != 0 {
        r |= libc::POLLOUT | libc::POLLWRNORM;
    }
    if m & RDHUP != 0 {
        r |= libc::POLLRDHUP;
    }
    if m & HUP != 0 {
        r |= libc::POLLHUP;
    }
    if m & ERR != 0 {
        r |= libc::POLLERR;
    }
    r | (kernel & libc::POLLNVAL)
}

/// `poll`/`ppoll` on a set holding a local descriptor or an epoll instance of this process
/// (`None`: not such a set; the caller makes the plain call).
///
/// # Safety
/// The caller's `ppoll` arguments.
pub unsafe fn ppoll(
    fds: *mut pollfd,
    n: libc::nfds_t,
    ts: *const timespec,
    mask: *const sigset_t,
) -> Option<c_int> {
    if !active() || guard::inside() || fds.is_null() || n == 0 || n > 1 << 20 {
        return None;
    }
    // SAFETY: the caller's `n` pollfds.
    let set = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    let mut any = false;
    for p in set.iter() {
        if EPOLL_FDS.get(p.fd) && !EXPOSED.get(p.fd) {
            if let Some(_g) = Guard::enter() {
                guard::shielded(|| expose(p.fd));
            }
        }
        any |= marked(p.fd);
    }
    if !any {
        return None;
    }
    // SAFETY: the caller's timespec (or null).
    let deadline = unsafe { crate::sys::deadline(ts) }?;
    let g = Guard::enter()?;
    // SAFETY: the caller's arguments.
    super::run(|| unsafe { poll_shadow(fds, n, deadline, mask, g) })
}

/// [`ppoll`] on a set holding local descriptors; `g` is dropped while the thread sleeps in the
/// kernel (a signal handler may then use the hooks).
///
/// # Safety
/// The caller's `ppoll` arguments (`n` > 0 pollfds at `fds`).
unsafe fn poll_shadow(
    fds: *mut pollfd,
    n: libc::nfds_t,
    deadline: Option<Instant>,
    mask: *const sigset_t,
    g: Guard,
) -> c_int {
    let mut held = Some(g);
    // SAFETY: the caller's `n` pollfds.
    let set = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    let locals: Locals = set
        .iter()
        .enumerate()
        .filter(|(_, p)| marked(p.fd))
        .filter_map(|(k, p)| super::entry(p.fd).map(|e| (k, e)))
        .collect();
    let w: Vec<Want> = locals
        .iter()
        .map(|(k, e)| {
            let ev = set[*k].events;
            let mut m = 0;
            if ev & (libc::POLLIN | libc::POLLRDNORM) != 0 {
                m |= IN;
            }
            if ev & (libc::POLLOUT | libc::POLLWRNORM) != 0 {
                m |= OUT;
            }
            if ev & libc::POLLRDHUP != 0 {
                m |= RDHUP;
            }
            Want {
                fd: set[*k].fd,
                e: e.clone(),
                events: m,
                last: None,
                hup: 0,
            }
        })
        .collect();
    loop {
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        let zero = expired || arm(&w);
        let left = if zero {
            Some(Duration::ZERO)
        } else {
            Some(
                deadline
                    .map_or(BACKSTOP, |d| d.saturating_duration_since(Instant::now()))
                    .min(BACKSTOP),
            )
        };
        let lts = left.map(|l| timespec {
            tv_sec: l.as_secs() as libc::time_t,
            tv_nsec: l.subsec_nanos() as libc::c_long,
        });
        let lp = lts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const timespec);
        if !zero {
            held = None;
        }
        // SAFETY: the caller's pollfds and mask; `lp` points to `lts`.
        let r = unsafe { real::ppoll(fds, n, lp, mask) };
        let err = guard::errno();
        if held.is_none() {
            held = Guard::enter();
        }
        disarm(&w);
        if r < 0 {
            super::set_err(err);
            return r;
        }
        for (k, e) in &locals {
            let p = &mut set[*k];
            let bits =
                conn_of(e, |c| poll_bits_of(&c.poll_bits(), p.revents)).unwrap_or(libc::POLLNVAL);
            p.revents = bits & (p.events | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL);
        }
        let count = set.iter().filter(|p| p.revents != 0).count() as c_int;
        if count > 0 || expired || deadline.is_some_and(|d| Instant::now() >= d) {
            return count;
        }
        if zero && !expired {
            // Ready at the arm but not now (another thread took it): wait again.
            continue;
        }
    }
}

/// `select`/`pselect` on sets holding a local descriptor or an epoll instance of this process,
/// through [`ppoll`] (`None`: not such a set).
///
/// # Safety
/// The caller's `pselect` arguments.
pub unsafe fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    x: *mut libc::fd_set,
    ts: *const timespec,
    mask: *const sigset_t,
) -> Option<c_int> {
    if !active() || guard::inside() || !(1..=libc::FD_SETSIZE as c_int).contains(&nfds) {
        return None;
    }
    let isset = |s: *mut libc::fd_set, fd: c_int| {
        // SAFETY: the caller's set, `fd` below FD_SETSIZE.
        !s.is_null() && unsafe { libc::FD_ISSET(fd, s) }
    };
    let mut set: Vec<pollfd> = Vec::new();
    let mut any = false;
    for fd in 0..nfds {
        let mut ev = 0;
        if isset(r, fd) {
            ev |= libc::POLLIN;
        }
        if isset(w, fd) {
            ev |= libc::POLLOUT;
        }
        if isset(x, fd) {
            ev |= libc::POLLPRI;
        }
        if ev != 0 {
            any |= marked(fd) || EPOLL_FDS.get(fd);
            set.push(pollfd {
                fd,
                events: ev,
                revents: 0,
            });
        }
    }
    if !any {
        return None;
    }
    // SAFETY: our own pollfds; the caller's timespec and mask.
    let n = unsafe { ppoll(set.as_mut_ptr(), set.len() as libc::nfds_t, ts, mask) }?;
    if n < 0 {
        return Some(n);
    }
    if set.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        guard::set_errno(libc::EBADF);
        return Some(-1);
    }
    let mut count = 0;
    for s in [r, w, x] {
        if !s.is_null() {
            // SAFETY: the caller's set.
            unsafe { libc::FD_ZERO(s) };
        }
    }
    for p in &set {
        let rv = p.revents;
        let mut mark = |s: *mut libc::fd_set, on: bool| {
            if on && !s.is_null() {
                // SAFETY: the caller's set, `fd` below FD_SETSIZE.
                unsafe { libc::FD_SET(p.fd, s) };
                count += 1;
            }
        };
        mark(
            r,
            p.events & libc::POLLIN != 0
                && rv & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0,
        );
        mark(
            w,
            p.events & libc::POLLOUT != 0 && rv & (libc::POLLOUT | libc::POLLERR) != 0,
        );
        mark(x, p.events & libc::POLLPRI != 0 && rv & libc::POLLPRI != 0);
    }
    Some(count)
}
