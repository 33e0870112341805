//! Readiness hooks (poll, select, epoll): passed through and counted (the stack mode will
//! serve them).

#![allow(clippy::missing_safety_doc)]

#[allow(clippy::wildcard_imports)]
use super::*;

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    count(Call::Poll);
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
    // SAFETY: as above.
    unsafe { real::pselect(n, r, w, e, ts, mask) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn epoll_create(size: c_int) -> c_int {
    count(Call::EpollCreate);
    // SAFETY: as above.
    unsafe { real::epoll_create(size) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn epoll_create1(flags: c_int) -> c_int {
    count(Call::EpollCreate1);
    // SAFETY: as above.
    unsafe { real::epoll_create1(flags) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut libc::epoll_event,
) -> c_int {
    count(Call::EpollCtl);
    // SAFETY: as above.
    unsafe { real::epoll_ctl(epfd, op, fd, ev) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn epoll_wait(
    epfd: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    count(Call::EpollWait);
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
    // SAFETY: as above.
    unsafe { real::epoll_pwait(epfd, ev, max, timeout, mask) }
}
