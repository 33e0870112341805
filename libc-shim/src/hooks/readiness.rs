//! Readiness hooks (poll, select, epoll): passed through and counted. In stack mode, an
//! epoll instance holding a stack socket also holds the port, and `epoll_wait` runs the
//! interface inline when it fires ([`crate::stack::inline`]).

#![allow(clippy::missing_safety_doc)]

#[allow(clippy::wildcard_imports)]
use super::*;

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    count(Call::Poll);
    let ts = (timeout >= 0).then(|| timespec {
        tv_sec: (timeout / 1000) as libc::time_t,
        tv_nsec: (timeout % 1000) as libc::c_long * 1_000_000,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const timespec);
    // SAFETY: the caller's arguments; `tsp` is null or points to `ts`.
    if let Some(r) = unsafe { poll_inline(fds, n, tsp, std::ptr::null()) } {
        return r;
    }
    // SAFETY: as above.
    if let Some(r) = unsafe { crate::local::ready::ppoll(fds, n, tsp, std::ptr::null()) } {
        return r;
    }
    // SAFETY: as above.
    unsafe { real::poll(fds, n, timeout) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn __poll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_int {
    count(Call::PollChk);
    if fdslen / std::mem::size_of::<pollfd>() >= n as usize {
        let ts = (timeout >= 0).then(|| timespec {
            tv_sec: (timeout / 1000) as libc::time_t,
            tv_nsec: (timeout % 1000) as libc::c_long * 1_000_000,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const timespec);
        // SAFETY: the caller's arguments (the array's size checked); `tsp` is null or `ts`.
        if let Some(r) = unsafe { poll_inline(fds, n, tsp, std::ptr::null()) } {
            return r;
        }
        // SAFETY: as above.
        if let Some(r) = unsafe { crate::local::ready::ppoll(fds, n, tsp, std::ptr::null()) } {
            return r;
        }
    }
    // SAFETY: as above.
    unsafe { real::__poll_chk(fds, n, timeout, fdslen) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn ppoll(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    count(Call::Ppoll);
    // SAFETY: the caller's arguments.
    if let Some(r) = unsafe { poll_inline(fds, n, ts, mask) } {
        return r;
    }
    // SAFETY: as above.
    if let Some(r) = unsafe { crate::local::ready::ppoll(fds, n, ts, mask) } {
        return r;
    }
    // SAFETY: as above.
    unsafe { real::ppoll(fds, n, ts, mask) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn __ppoll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const timespec,
    mask: *const sigset_t,
    fdslen: size_t,
) -> c_int {
    count(Call::PpollChk);
    if fdslen / std::mem::size_of::<pollfd>() >= n as usize {
        // SAFETY: the caller's arguments (the array's size checked).
        if let Some(r) = unsafe { poll_inline(fds, n, ts, mask) } {
            return r;
        }
        // SAFETY: as above.
        if let Some(r) = unsafe { crate::local::ready::ppoll(fds, n, ts, mask) } {
            return r;
        }
    }
    // SAFETY: as above.
    unsafe { real::__ppoll_chk(fds, n, ts, mask, fdslen) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn select(
    n: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    tv: *mut timeval,
) -> c_int {
    count(Call::Select);
    // Stack sockets in the sets: served as an inline ppoll ([`crate::stack::ready::select`]).
    let ts = if tv.is_null() {
        None
    } else {
        // SAFETY: the caller's timeval (not null).
        let t = unsafe { *tv };
        (t.tv_sec >= 0 && (0..1_000_000).contains(&t.tv_usec)).then(|| timespec {
            tv_sec: t.tv_sec,
            tv_nsec: t.tv_usec as libc::c_long * 1000,
        })
    };
    if tv.is_null() || ts.is_some() {
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const timespec);
        // SAFETY: the caller's sets and timeval; `tsp` is null or points to `ts`.
        let s = unsafe { crate::stack::ready::select(n, [r, w, e], tsp, std::ptr::null(), tv) };
        if let Some(r) = s {
            return r;
        }
        // Local connections in the sets: from their rings ([`crate::local::ready::pselect`]).
        // SAFETY: the caller's sets; `tsp` is null or points to `ts`.
        if let Some(x) = unsafe { crate::local::ready::pselect(n, r, w, e, tsp, std::ptr::null()) }
        {
            return x;
        }
    }
    // SAFETY: as above.
    unsafe { real::select(n, r, w, e, tv) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn pselect(
    n: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    ts: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    count(Call::Pselect);
    // SAFETY: the caller's arguments (pselect leaves its timeout alone).
    let s = unsafe { crate::stack::ready::select(n, [r, w, e], ts, mask, std::ptr::null_mut()) };
    if let Some(r) = s {
        return r;
    }
    // SAFETY: the caller's arguments.
    if let Some(x) = unsafe { crate::local::ready::pselect(n, r, w, e, ts, mask) } {
        return x;
    }
    // SAFETY: as above.
    unsafe { real::pselect(n, r, w, e, ts, mask) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn epoll_create(size: c_int) -> c_int {
    count(Call::EpollCreate);
    // SAFETY: as above.
    let fd = unsafe { real::epoll_create(size) };
    crate::local::ready::created(fd);
    fd
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn epoll_create1(flags: c_int) -> c_int {
    count(Call::EpollCreate1);
    // SAFETY: as above.
    let fd = unsafe { real::epoll_create1(flags) };
    crate::local::ready::created(fd);
    fd
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut libc::epoll_event,
) -> c_int {
    count(Call::EpollCtl);
    // Stack sockets' registrations are the stack's own ([`crate::stack::ready`]).
    // SAFETY: the caller's arguments.
    if let Some(r) = unsafe { crate::stack::ready::ctl(epfd, op, fd, ev) } {
        return r;
    }
    // Local connections' registrations are shadowed too ([`crate::local::ready`]).
    // SAFETY: the caller's arguments.
    if let Some(r) = unsafe { crate::local::ready::epoll_ctl(epfd, op, fd, ev) } {
        return r;
    }
    // SAFETY: as above.
    let r = unsafe { real::epoll_ctl(epfd, op, fd, ev) };
    if r == 0 && op == libc::EPOLL_CTL_ADD && crate::stack::is_stack(fd) {
        if let Some(_g) = Guard::enter() {
            let _ = guard::shielded(|| crate::stack::inline::register(epfd));
        }
    }
    r
}

/// `ppoll` on a set holding a stack socket, when this thread can hold the port: the port joins
/// a copy of the set, and when it fires the interface runs here; the wait resumes for the time
/// left when none of the caller's descriptors is ready. `None`: not such a set (or another
/// thread holds the port): the caller makes the plain call.
///
/// # Safety
/// The caller's `ppoll` arguments.
unsafe fn poll_inline(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const timespec,
    mask: *const sigset_t,
) -> Option<c_int> {
    use crate::stack::inline;
    use std::time::Instant;
    if fds.is_null() || n == 0 || n > 65_536 || !crate::stack::on() || guard::inside() {
        return None;
    }
    // SAFETY: the caller's `n` pollfds.
    let app = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    if app.iter().any(|p| crate::stack::inline::registered(p.fd)) {
        if let Some(_g) = Guard::enter() {
            guard::shielded(|| crate::stack::ready::polled(app.iter().map(|p| p.fd)));
        }
    }
    if !app.iter().any(|p| crate::stack::is_stack(p.fd)) {
        return None;
    }
    if let Some(_g) = Guard::enter() {
        guard::shielded(|| crate::stack::ready::kernel_waits(app.iter().map(|p| p.fd)));
    }
    // SAFETY: the caller's timespec (or null).
    let deadline = unsafe { crate::sys::deadline(ts) }?;
    let mut set: Vec<pollfd> = Vec::with_capacity(app.len() + 1);
    let mut retried = false;
    let mut first = true;
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let lts = left.map(|l| timespec {
            tv_sec: l.as_secs() as libc::time_t,
            tv_nsec: l.subsec_nanos() as libc::c_long,
        });
        let lp = lts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const timespec);
        let Some(p) = inline::Poller::take() else {
            if first {
                return None;
            }
            // SAFETY: the caller's arguments, the time left.
            return Some(unsafe { real::ppoll(fds, n, lp, mask) });
        };
        first = false;
        set.clear();
        set.extend_from_slice(app);
        set.push(pollfd {
            fd: p.fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `n + 1` valid pollfds; `lp` is null or `lts`.
        let r = unsafe { real::ppoll(set.as_mut_ptr(), n + 1, lp, mask) };
        let err = guard::errno();
        drop(p);
        if r < 0 {
            guard::set_errno(err);
            return Some(r);
        }
        let fired = set[app.len()].revents != 0;
        for (a, s) in app.iter_mut().zip(&set) {
            a.revents = s.revents;
        }
        let ready = r - c_int::from(fired);
        if fired {
            if let Some(_g) = Guard::enter() {
                inline::run();
            }
        }
        if ready > 0 || r == 0 {
            guard::set_errno(err);
            return Some(ready);
        }
        if left.is_some_and(|l| l.is_zero()) {
            if retried {
                return Some(0);
            }
            retried = true;
        }
    }
}

/// `epoll_pwait` on an instance that holds the port: the port's events are removed from what
/// the caller sees; when it fired, the interface runs here, and the wait resumes for the time
/// left when none of the caller's events remain.
///
/// # Safety
/// The caller's `epoll_pwait` arguments.
unsafe fn epoll_inline(
    epfd: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    use crate::stack::inline;
    let deadline = (timeout >= 0)
        .then(|| std::time::Instant::now() + std::time::Duration::from_millis(timeout as u64));
    let mut last = false;
    let mut retried = false;
    loop {
        let t = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    last = true;
                    0
                } else {
                    // Rounded up, as the kernel rounds.
                    left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as c_int
                }
            }
        };
        let waiting = inline::Waiting::enter();
        // SAFETY: the caller's arguments.
        let n = unsafe { real::epoll_pwait(epfd, ev, max, t, mask) };
        let err = guard::errno();
        drop(waiting);
        if n <= 0 {
            guard::set_errno(err);
            return n;
        }
        // SAFETY: the kernel wrote `n` events at `ev`.
        let (kept, fired) = unsafe { inline::filter(ev, n as usize) };
        if fired {
            if let Some(_g) = Guard::enter() {
                inline::run();
            }
        }
        if kept > 0 {
            guard::set_errno(err);
            return kept as c_int;
        }
        if last {
            if fired && !retried {
                // One more look, for what the pass just made ready.
                retried = true;
                continue;
            }
            return 0;
        }
    }
}

/// The shim's own wait on epoll instance `epfd` (timeout in milliseconds): through the stack's
/// shadow table (or inline polling) when the port is registered there, stack sockets being
/// known to no kernel set, else through local mode's rings; `None`: the kernel's call.
///
/// # Safety
/// The caller's `epoll_pwait` arguments.
unsafe fn shim_wait(
    epfd: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> Option<c_int> {
    if crate::stack::inline::registered(epfd) && !guard::inside() {
        if crate::stack::ready::active() {
            // SAFETY: the caller's arguments.
            return Some(unsafe { crate::stack::ready::wait(epfd, ev, max, timeout, mask) });
        }
        // SAFETY: the caller's arguments.
        return Some(unsafe { epoll_inline(epfd, ev, max, timeout, mask) });
    }
    // SAFETY: the caller's arguments.
    unsafe { crate::local::ready::epoll_wait(epfd, ev, max, timeout, mask) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn epoll_wait(
    epfd: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    count(Call::EpollWait);
    // SAFETY: the caller's arguments, no mask.
    if let Some(r) = unsafe { shim_wait(epfd, ev, max, timeout, std::ptr::null()) } {
        return r;
    }
    // SAFETY: as above.
    unsafe { real::epoll_wait(epfd, ev, max, timeout) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn epoll_pwait(
    epfd: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    count(Call::EpollPwait);
    // SAFETY: the caller's arguments.
    if let Some(r) = unsafe { shim_wait(epfd, ev, max, timeout, mask) } {
        return r;
    }
    // SAFETY: as above.
    unsafe { real::epoll_pwait(epfd, ev, max, timeout, mask) }
}

/// `epoll_pwait2`: counted as `epoll_pwait`; an instance holding a local-mode descriptor waits
/// through [`crate::local::ready`] (the timeout rounded up to milliseconds).
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn epoll_pwait2(
    epfd: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    ts: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    count(Call::EpollPwait);
    if crate::stack::inline::registered(epfd) || crate::local::ready::is_epoll(epfd) {
        let ms = if ts.is_null() {
            Some(-1)
        } else {
            // SAFETY: the caller's timespec.
            let t = unsafe { std::ptr::read(ts) };
            (t.tv_sec >= 0 && (0..1_000_000_000).contains(&t.tv_nsec)).then(|| {
                let ns = t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128;
                ns.div_ceil(1_000_000).min(i32::MAX as u128) as c_int
            })
        };
        if let Some(ms) = ms {
            // SAFETY: the caller's arguments, the timeout in milliseconds.
            if let Some(r) = unsafe { shim_wait(epfd, ev, max, ms, mask) } {
                return r;
            }
        }
    }
    // SAFETY: as above.
    unsafe { real::epoll_pwait2(epfd, ev, max, ts, mask) }
}
