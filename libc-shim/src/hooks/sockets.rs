//! Hooks of sockets and descriptors: creation, addresses, close, dup, fcntl, ioctl, options.

#![allow(clippy::missing_safety_doc)]

#[allow(clippy::wildcard_imports)]
use super::*;

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on unchanged (here and in every hook below).
    let ret = unsafe { real::socket(domain, ty, protocol) };
    if ret >= 0 {
        stk::socket_made(ret, domain, ty);
    }
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
    if ret == 0 {
        stk::socketpair_made(domain);
    }
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
    // SAFETY: the caller's address.
    if let Some(r) = unsafe { stk::bind(fd, addr, len) } {
        return r;
    }
    // SAFETY: as above.
    let ret = unsafe { real::bind(fd, addr, len) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Bind);
            if ret == 0 {
                trace::bound(fd);
            }
        });
    }
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn listen(fd: c_int, backlog: c_int) -> c_int {
    if let Some(r) = stk::listen(fd, backlog) {
        return r;
    }
    // SAFETY: as above.
    let ret = unsafe { real::listen(fd, backlog) };
    if ret == 0 {
        crate::local::listening(fd);
    }
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
    // SAFETY: the caller's buffers.
    if let Some(r) = unsafe { stk::accept4(fd, addr, len, 0) } {
        return r;
    }
    // SAFETY: as above.
    let ret = unsafe { real::accept(fd, addr, len) };
    crate::local::accepted(ret, 0);
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
    // SAFETY: the caller's buffers.
    if let Some(r) = unsafe { stk::accept4(fd, addr, len, flags) } {
        return r;
    }
    // SAFETY: as above.
    let ret = unsafe { real::accept4(fd, addr, len, flags) };
    crate::local::accepted(ret, flags);
    accepted(Call::Accept4, fd, ret, addr, len, flags);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the caller's address.
    if let Some(r) = unsafe { stk::connect(fd, addr, len) } {
        return r;
    }
    // SAFETY: the caller's address.
    if let Some(r) = unsafe { crate::local::connect(fd, addr, len) } {
        return r;
    }
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
    if let Some(r) = stk::shutdown(fd, how).or_else(|| crate::local::shutdown(fd, how)) {
        return r;
    }
    // SAFETY: as above.
    let ret = unsafe { real::shutdown(fd, how) };
    count(Call::Shutdown);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn close(fd: c_int) -> c_int {
    stk::closing(fd);
    crate::local::closing(fd);
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
    if flags & (libc::CLOSE_RANGE_CLOEXEC as c_int) == 0 {
        stk::closing_range(first, last);
        crate::local::closing_range(first, last);
    }
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
    stk::duplicated(old, ret);
    crate::local::duplicated(old, ret);
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
    let ret = {
        stk::dup_onto(old, new);
        crate::local::dup_onto(old, new);
        // SAFETY: as above.
        unsafe { real::dup2(old, new) }
    };
    dup_done(Call::Dup2, old, ret);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: as above.
    let ret = {
        stk::dup_onto(old, new);
        crate::local::dup_onto(old, new);
        // SAFETY: as above.
        unsafe { real::dup3(old, new, flags) }
    };
    dup_done(Call::Dup3, old, ret);
    ret
}

fn fcntl_done(call: Call, fd: c_int, cmd: c_int, arg: c_ulong, ret: c_int) {
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => crate::local::duplicated(fd, ret),
        libc::F_SETFL if ret >= 0 => crate::local::set_flags(fd, arg as c_int),
        _ => {}
    }
    if ret >= 0 && crate::stack::marked(fd) {
        match cmd {
            libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => stk::duplicated(fd, ret),
            libc::F_SETFL => stk::set_nonblocking(fd, arg as c_int & libc::O_NONBLOCK != 0),
            _ => {}
        }
    }
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
    // SAFETY: the caller's argument for this request.
    if let Some(r) = unsafe { crate::local::ioctl(fd, req, arg) } {
        return r;
    }
    // SAFETY: the caller's argument for this request.
    if let Some(r) = unsafe { stk::ioctl(fd, req, arg) } {
        return r;
    }
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
    let fd = crate::local::kernel_fd(fd);
    // SAFETY: the caller's buffers.
    if let Some(r) = unsafe { stk::getsockopt(fd, level, name, val, len) } {
        return r;
    }
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
    let fd = crate::local::kernel_fd(fd);
    // SAFETY: the caller's option bytes.
    if let Some(r) = unsafe { stk::setsockopt(fd, level, name, val, len) } {
        return r;
    }
    // SAFETY: as above.
    let ret = unsafe { real::setsockopt(fd, level, name, val, len) };
    count(Call::Setsockopt);
    ret
}

/// `getsockname`: passed through, except on stack sockets.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn getsockname(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    let fd = crate::local::kernel_fd(fd);
    // SAFETY: the caller's buffers.
    if let Some(r) = unsafe { stk::name(fd, addr, len, false) } {
        return r;
    }
    // SAFETY: as above.
    unsafe { real::getsockname(fd, addr, len) }
}

/// `getpeername`: passed through, except on stack sockets.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn getpeername(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    let fd = crate::local::kernel_fd(fd);
    // SAFETY: the caller's buffers.
    if let Some(r) = unsafe { stk::name(fd, addr, len, true) } {
        return r;
    }
    // SAFETY: as above.
    unsafe { real::getpeername(fd, addr, len) }
}
