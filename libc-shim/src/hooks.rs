//! The interposed functions.
//!
//! Each hook calls the real function first, with the caller's arguments unchanged, then (only
//! when the calling thread is not already inside the shim) does its bookkeeping inside
//! [`guard::shielded`], which keeps errno and turns any internal failure into a pass-through.
//! So return values, errno, short counts, MSG_PEEK, MSG_WAITALL and non-blocking behaviour are
//! the kernel's own. Descriptors leave the table *before* `close` (so that a number reused by
//! another thread at once is never forgotten) and enter it after the call that made them.
//!
//! The hooks use the "C-unwind" ABI so that a thread cancelled inside a blocking call (glibc
//! cancels by unwinding) unwinds through them as through libc; the shim's own code never
//! unwinds into C (see [`guard::shielded`]).
//!
//! Exported names are disabled in the crate's unit tests (`cfg(test)`), whose test binary must
//! keep its own libc.

#![allow(clippy::missing_safety_doc)]

use libc::{
    c_char, c_int, c_uint, c_ulong, c_void, fd_set, iovec, mmsghdr, msghdr, nfds_t, off64_t, off_t,
    pollfd, sigset_t, size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};

use crate::fdtable::Origin;
use crate::guard::{self, Guard};
use crate::real;
use crate::trace::{self, account, Call, Dir, Uncaptured};

/// Enters the shim for bookkeeping, unless it is off, broken, or already entered.
#[inline]
fn active() -> Option<Guard> {
    if !crate::enabled() {
        return None;
    }
    Guard::enter()
}

/// Counts a pass-through call.
#[inline]
fn count(call: Call) {
    if let Some(_g) = active() {
        guard::shielded(|| account().count(call));
    }
}

/// Appends `n` bytes at `buf`.
///
/// # Safety
/// `buf` points to at least `n` readable bytes.
unsafe fn copy_buf(out: &mut Vec<u8>, buf: *const c_void, n: usize) {
    if n == 0 || buf.is_null() {
        return;
    }
    // SAFETY: the caller guarantees `n` readable bytes at `buf`.
    out.extend_from_slice(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n) });
}

/// Appends the first `n` bytes of an iovec array.
///
/// # Safety
/// `iov` points to `cnt` iovecs whose buffers hold at least `n` bytes in all.
unsafe fn copy_iov(out: &mut Vec<u8>, iov: *const iovec, cnt: usize, mut n: usize) {
    if iov.is_null() {
        return;
    }
    for i in 0..cnt {
        if n == 0 {
            break;
        }
        // SAFETY: `i < cnt`, and the caller guarantees `cnt` iovecs.
        let v = unsafe { std::ptr::read(iov.wrapping_add(i)) };
        let take = v.iov_len.min(n);
        // SAFETY: an iovec of the caller's describes `iov_len >= take` bytes.
        unsafe { copy_buf(out, v.iov_base, take) };
        n -= take;
    }
}

/// Total length of an iovec array.
///
/// # Safety
/// `iov` points to `cnt` iovecs (or is null).
unsafe fn iov_len(iov: *const iovec, cnt: usize) -> usize {
    if iov.is_null() {
        return 0;
    }
    (0..cnt)
        // SAFETY: `i < cnt`, and the caller guarantees `cnt` iovecs.
        .map(|i| unsafe { std::ptr::read(iov.wrapping_add(i)) }.iov_len)
        .fold(0usize, usize::saturating_add)
}

/// Bookkeeping of a send-side call that sent from one buffer.
#[inline]
fn sent_buf(call: Call, fd: c_int, ret: ssize_t, buf: *const c_void) {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(call);
            let n = ret.max(0) as usize;
            // SAFETY: the kernel read `ret` bytes from `buf`, so they are readable.
            let copy = |out: &mut Vec<u8>| unsafe { copy_buf(out, buf, n) };
            trace::transfer(fd, Dir::Send, ret, n, copy, Uncaptured::Other);
        });
    }
}

/// Bookkeeping of a receive-side call into one buffer of `len` bytes.
#[inline]
fn received_buf(call: Call, fd: c_int, ret: ssize_t, buf: *const c_void, len: usize, flags: c_int) {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(call);
            if flags & libc::MSG_PEEK != 0 {
                return; // the bytes stay queued: they are counted when really received
            }
            let n = if flags & libc::MSG_TRUNC != 0 && trace::is_stream(fd) {
                0 // a discard: nothing was copied to the buffer
            } else {
                (ret.max(0) as usize).min(len)
            };
            // SAFETY: the kernel wrote `n <= len` bytes into `buf`.
            let copy = |out: &mut Vec<u8>| unsafe { copy_buf(out, buf, n) };
            trace::transfer(fd, Dir::Recv, ret, n, copy, Uncaptured::Other);
        });
    }
}

/// Bookkeeping of a message-based transfer (`sendmsg`, `recvmsg`, one message of the mmsg
/// calls) of `ret` bytes.
///
/// # Safety
/// `msg` is the caller's valid msghdr.
unsafe fn msg_transfer(fd: c_int, dir: Dir, ret: ssize_t, msg: *const msghdr, flags: c_int) {
    if msg.is_null() {
        return trace::transfer(fd, dir, ret, 0, |_| {}, Uncaptured::Other);
    }
    // SAFETY: the caller guarantees a valid msghdr.
    let m = unsafe { std::ptr::read(msg) };
    let cnt = m.msg_iovlen as usize;
    // SAFETY: the msghdr's iovec array has `msg_iovlen` entries.
    let room = unsafe { iov_len(m.msg_iov, cnt) };
    let n = if dir == Dir::Recv && flags & libc::MSG_TRUNC != 0 && trace::is_stream(fd) {
        0
    } else {
        (ret.max(0) as usize).min(room)
    };
    // SAFETY: the kernel read (send) or wrote (receive) the first `n` bytes of the iovecs.
    let copy = |out: &mut Vec<u8>| unsafe { copy_iov(out, m.msg_iov, cnt, n) };
    trace::transfer(fd, dir, ret, n, copy, Uncaptured::Other);
}

// ---------------------------------------------------------------------------------------------
// Sockets and descriptors

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on unchanged (here and in every hook below).
    let ret = unsafe { real::socket(domain, ty, protocol) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Socket);
            if ret >= 0 {
                trace::new_socket(ret, domain, ty, Origin::Socket, None);
            }
        });
    }
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn socketpair(
    domain: c_int,
    ty: c_int,
    protocol: c_int,
    sv: *mut c_int,
) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::socketpair(domain, ty, protocol, sv) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Socketpair);
            if ret == 0 && !sv.is_null() {
                for i in 0..2 {
                    // SAFETY: on success the kernel wrote two descriptors to `sv`.
                    let fd = unsafe { std::ptr::read(sv.wrapping_add(i)) };
                    trace::new_socket(fd, domain, ty, Origin::Socket, None);
                }
            }
        });
    }
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::bind(fd, addr, len) };
    count(Call::Bind);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn listen(fd: c_int, backlog: c_int) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::listen(fd, backlog) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Listen);
            if ret == 0 {
                trace::listening(fd);
            }
        });
    }
    ret
}

/// Bookkeeping of `accept`/`accept4`.
fn accepted(
    call: Call,
    lfd: c_int,
    ret: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(call);
            if ret < 0 {
                return;
            }
            let peer = if addr.is_null() || len.is_null() {
                None
            } else {
                // SAFETY: `len` is the caller's valid socklen_t, updated by the kernel.
                let n = unsafe { std::ptr::read(len) };
                // SAFETY: on success the kernel wrote `n` bytes (at most the buffer's size,
                // which the caller passed in `*len`) of address to `addr`.
                unsafe { crate::sys::parse_sockaddr(addr, n) }
            };
            trace::accepted(lfd, ret, flags, peer);
        });
    }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn accept(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::accept(fd, addr, len) };
    accepted(Call::Accept, fd, ret, addr, len, 0);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::accept4(fd, addr, len, flags) };
    accepted(Call::Accept4, fd, ret, addr, len, flags);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::connect(fd, addr, len) };
    if let Some(_g) = active() {
        let e = guard::errno();
        guard::shielded(|| {
            account().count(Call::Connect);
            if ret == 0 || e == libc::EINPROGRESS {
                // SAFETY: the caller's address of `len` bytes (the kernel accepted it).
                let peer = unsafe { crate::sys::parse_sockaddr(addr, len) };
                trace::connected(fd, peer);
            }
        });
    }
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn shutdown(fd: c_int, how: c_int) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::shutdown(fd, how) };
    count(Call::Shutdown);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn close(fd: c_int) -> c_int {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Close);
            trace::closing(fd);
        });
    }
    // SAFETY: as above.
    unsafe { real::close(fd) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::close_range(first, last, flags) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::CloseRange);
            if ret == 0 && flags & (libc::CLOSE_RANGE_CLOEXEC as c_int) == 0 {
                trace::closing_range(first, last);
            }
        });
    }
    ret
}

fn dup_done(call: Call, old: c_int, ret: c_int) {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(call);
            if ret >= 0 && ret != old {
                trace::duplicated(old, ret);
            }
        });
    }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn dup(fd: c_int) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::dup(fd) };
    dup_done(Call::Dup, fd, ret);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::dup2(old, new) };
    dup_done(Call::Dup2, old, ret);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::dup3(old, new, flags) };
    dup_done(Call::Dup3, old, ret);
    ret
}

fn fcntl_done(call: Call, fd: c_int, cmd: c_int, arg: c_ulong, ret: c_int) {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(call);
            if ret < 0 {
                return;
            }
            match cmd {
                libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => trace::duplicated(fd, ret),
                libc::F_SETFL => trace::set_nonblocking(fd, arg as c_int & libc::O_NONBLOCK != 0),
                _ => {}
            }
        });
    }
}

/// `fcntl` is variadic in C; on the supported ABIs (x86-64 and AArch64 Linux) its optional
/// argument arrives in the same register as a third fixed argument would.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::fcntl(fd, cmd, arg) };
    fcntl_done(Call::Fcntl, fd, cmd, arg, ret);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::fcntl64(fd, cmd, arg) };
    fcntl_done(Call::Fcntl64, fd, cmd, arg, ret);
    ret
}

/// `ioctl` is variadic in C, like [`fcntl`].
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn ioctl(fd: c_int, req: c_ulong, arg: c_ulong) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::ioctl(fd, req, arg) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Ioctl);
            if ret == 0 && req == libc::FIONBIO && arg != 0 {
                // SAFETY: FIONBIO's argument is a pointer to an int, which the kernel just read.
                let on = unsafe { std::ptr::read(arg as usize as *const c_int) } != 0;
                trace::set_nonblocking(fd, on);
            }
        });
    }
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::getsockopt(fd, level, name, val, len) };
    count(Call::Getsockopt);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::setsockopt(fd, level, name, val, len) };
    count(Call::Setsockopt);
    ret
}

// ---------------------------------------------------------------------------------------------
// Sending

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn send(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::send(fd, buf, len, flags) };
    sent_buf(Call::Send, fd, ret, buf);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::sendto(fd, buf, len, flags, addr, alen) };
    sent_buf(Call::Sendto, fd, ret, buf);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn write(fd: c_int, buf: *const c_void, len: size_t) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::write(fd, buf, len) };
    sent_buf(Call::Write, fd, ret, buf);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::writev(fd, iov, cnt) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Writev);
            let n = ret.max(0) as usize;
            // SAFETY: the kernel read the first `ret` bytes of the caller's `cnt` iovecs.
            let copy = |out: &mut Vec<u8>| unsafe { copy_iov(out, iov, cnt.max(0) as usize, n) };
            trace::transfer(fd, Dir::Send, ret, n, copy, Uncaptured::Other);
        });
    }
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::sendmsg(fd, msg, flags) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Sendmsg);
            // SAFETY: the kernel accepted `msg` as a valid msghdr.
            unsafe { msg_transfer(fd, Dir::Send, ret, msg, flags) };
        });
    }
    ret
}

/// Bookkeeping of `sendmmsg`/`recvmmsg`: one transfer per message handled.
///
/// # Safety
/// `msgs` holds at least `ret` valid entries when `ret > 0`.
unsafe fn mmsg_done(call: Call, fd: c_int, dir: Dir, ret: c_int, msgs: *mut mmsghdr, flags: c_int) {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(call);
            if dir == Dir::Recv && flags & libc::MSG_PEEK != 0 {
                return;
            }
            if ret < 0 || msgs.is_null() {
                trace::transfer(fd, dir, -1, 0, |_| {}, Uncaptured::Other);
                return;
            }
            for i in 0..ret as usize {
                // SAFETY: the kernel handled the first `ret` entries and set their `msg_len`.
                let m = unsafe { std::ptr::read(msgs.wrapping_add(i)) };
                // SAFETY: a copy of the caller's valid msghdr (its iovecs are the caller's).
                unsafe { msg_transfer(fd, dir, m.msg_len as ssize_t, &m.msg_hdr, flags) };
            }
        });
    }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn sendmmsg(
    fd: c_int,
    msgs: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::sendmmsg(fd, msgs, vlen, flags) };
    // SAFETY: on success the kernel sent the first `ret` of the caller's messages.
    unsafe { mmsg_done(Call::Sendmmsg, fd, Dir::Send, ret, msgs, flags) };
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    off: *mut off_t,
    count: size_t,
) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::sendfile(out_fd, in_fd, off, count) };
    uncaptured_send(Call::Sendfile, out_fd, ret, Uncaptured::Sendfile);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    off: *mut off64_t,
    count: size_t,
) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::sendfile64(out_fd, in_fd, off, count) };
    uncaptured_send(Call::Sendfile64, out_fd, ret, Uncaptured::Sendfile);
    ret
}

fn uncaptured_send(call: Call, fd: c_int, ret: ssize_t, what: Uncaptured) {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(call);
            trace::transfer(fd, Dir::Send, ret, 0, |_| {}, what);
        });
    }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn splice(
    fd_in: c_int,
    off_in: *mut off64_t,
    fd_out: c_int,
    off_out: *mut off64_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::splice(fd_in, off_in, fd_out, off_out, len, flags) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Splice);
            // One end is a pipe (never traced): the other end, if a traced socket, counts.
            trace::transfer(fd_out, Dir::Send, ret, 0, |_| {}, Uncaptured::Splice);
            trace::transfer(fd_in, Dir::Recv, ret, 0, |_| {}, Uncaptured::Splice);
        });
    }
    ret
}

// ---------------------------------------------------------------------------------------------
// Receiving

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn recv(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::recv(fd, buf, len, flags) };
    received_buf(Call::Recv, fd, ret, buf, len, flags);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::__recv_chk(fd, buf, len, buflen, flags) };
    received_buf(Call::RecvChk, fd, ret, buf, len, flags);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::recvfrom(fd, buf, len, flags, addr, alen) };
    received_buf(Call::Recvfrom, fd, ret, buf, len, flags);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::__recvfrom_chk(fd, buf, len, buflen, flags, addr, alen) };
    received_buf(Call::RecvfromChk, fd, ret, buf, len, flags);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn read(fd: c_int, buf: *mut c_void, len: size_t) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::read(fd, buf, len) };
    received_buf(Call::Read, fd, ret, buf, len, 0);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::__read_chk(fd, buf, len, buflen) };
    received_buf(Call::ReadChk, fd, ret, buf, len, 0);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::readv(fd, iov, cnt) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Readv);
            let n = ret.max(0) as usize;
            // SAFETY: the kernel wrote the first `ret` bytes of the caller's `cnt` iovecs.
            let copy = |out: &mut Vec<u8>| unsafe { copy_iov(out, iov, cnt.max(0) as usize, n) };
            trace::transfer(fd, Dir::Recv, ret, n, copy, Uncaptured::Other);
        });
    }
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    // SAFETY: as above.
    let ret = unsafe { real::recvmsg(fd, msg, flags) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Recvmsg);
            if flags & libc::MSG_PEEK == 0 {
                // SAFETY: the kernel accepted `msg` as a valid msghdr.
                unsafe { msg_transfer(fd, Dir::Recv, ret, msg, flags) };
            }
        });
    }
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn recvmmsg(
    fd: c_int,
    msgs: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
    timeout: *mut timespec,
) -> c_int {
    // SAFETY: as above.
    let ret = unsafe { real::recvmmsg(fd, msgs, vlen, flags, timeout) };
    // SAFETY: on success the kernel filled the first `ret` of the caller's messages.
    unsafe { mmsg_done(Call::Recvmmsg, fd, Dir::Recv, ret, msgs, flags) };
    ret
}

// ---------------------------------------------------------------------------------------------
// Readiness: passed through (the stack mode will serve them)

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

// ---------------------------------------------------------------------------------------------
// Processes

/// `fork`: the child's fresh account is made by the `pthread_atfork` child handler (which also
/// covers forks the shim does not see, such as the ones inside other libraries).
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn fork() -> libc::pid_t {
    count(Call::Fork);
    // SAFETY: as above.
    unsafe { real::fork() }
}

/// Writes this image's report before `exec` replaces it.
fn before_exec() {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Exec);
            trace::finish("exec");
        });
    }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    before_exec();
    // SAFETY: as above.
    unsafe { real::execve(path, argv, envp) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    before_exec();
    // SAFETY: as above.
    unsafe { real::execv(path, argv) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    before_exec();
    // SAFETY: as above.
    unsafe { real::execvp(file, argv) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    before_exec();
    // SAFETY: as above.
    unsafe { real::execvpe(file, argv, envp) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    before_exec();
    // SAFETY: as above.
    unsafe { real::fexecve(fd, argv, envp) }
}

/// `_exit` skips `atexit` handlers: write the report first.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn _exit(code: c_int) -> ! {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Exit);
            trace::finish("_exit");
        });
    }
    real::exit_now(code)
}

/// `_Exit` is `_exit` under another name.
#[allow(non_snake_case)]
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn _Exit(code: c_int) -> ! {
    _exit(code)
}
