//! Hooks of the send side: send, sendto, write, writev, sendmsg, sendmmsg, sendfile, splice.

#![allow(clippy::missing_safety_doc)]

#[allow(clippy::wildcard_imports)]
use super::*;

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn send(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    if crate::local::marked(fd) {
        // SAFETY: the caller's buffer of `len` bytes.
        if let Some(r) = crate::local::send(fd, &[unsafe { slice(buf, len) }.unwrap_or(&[])], flags)
        {
            return r;
        }
    }
    if crate::stack::marked(fd) {
        // SAFETY: the caller's buffer of `len` bytes.
        let b = unsafe { slice(buf, len) }.unwrap_or(&[]);
        if let Some(r) = stk::send(fd, &[b], flags, None) {
            return r;
        }
    }
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
    if crate::local::marked(fd) {
        // SAFETY: the caller's buffer of `len` bytes.
        if let Some(r) = crate::local::send(fd, &[unsafe { slice(buf, len) }.unwrap_or(&[])], flags)
        {
            return r;
        }
    }
    if crate::stack::marked(fd) {
        // SAFETY: the caller's buffer of `len` bytes.
        let b = unsafe { slice(buf, len) }.unwrap_or(&[]);
        let dst = (!addr.is_null()).then_some((addr, alen));
        if let Some(r) = stk::send(fd, &[b], flags, dst) {
            return r;
        }
    }
    // SAFETY: as above.
    let ret = unsafe { real::sendto(fd, buf, len, flags, addr, alen) };
    sent_buf(Call::Sendto, fd, ret, buf);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn write(fd: c_int, buf: *const c_void, len: size_t) -> ssize_t {
    if crate::local::marked(fd) {
        // SAFETY: the caller's buffer of `len` bytes.
        if let Some(r) = crate::local::send(fd, &[unsafe { slice(buf, len) }.unwrap_or(&[])], 0) {
            return r;
        }
    }
    if crate::stack::marked(fd) {
        // SAFETY: the caller's buffer of `len` bytes.
        let b = unsafe { slice(buf, len) }.unwrap_or(&[]);
        if let Some(r) = stk::send(fd, &[b], 0, None) {
            return r;
        }
    }
    // SAFETY: as above.
    let ret = unsafe { real::write(fd, buf, len) };
    sent_buf(Call::Write, fd, ret, buf);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    if crate::local::marked(fd) {
        // SAFETY: the caller's iovecs.
        if let Some(r) = crate::local::send(fd, &unsafe { iov_slices(iov, cnt) }, 0) {
            return r;
        }
    }
    if crate::stack::marked(fd) {
        // SAFETY: the caller's iovecs.
        let bufs = unsafe { iov_slices(iov, cnt) };
        if let Some(r) = stk::send(fd, &bufs, 0, None) {
            return r;
        }
    }
    // SAFETY: as above.
    let ret = unsafe { real::writev(fd, iov, cnt) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Writev);
            let n = ret.max(0) as usize;
            // SAFETY: the kernel read the first `ret` bytes of the caller's `cnt` iovecs.
            let copy = |out: &mut Vec<u8>| unsafe { copy_iov(out, iov, cnt.max(0) as usize, n) };
            trace::transfer(fd, Dir::Send, ret, n, None, copy, Uncaptured::Other);
        });
    }
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    // SAFETY: the caller's msghdr.
    if let Some(r) = unsafe { stack_sendmsg(fd, msg, flags) } {
        return r;
    }
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

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn sendmmsg(
    fd: c_int,
    msgs: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
) -> c_int {
    if (crate::stack::marked(fd) || crate::local::marked(fd)) && !msgs.is_null() {
        let mut n = 0;
        for i in 0..vlen as usize {
            // SAFETY: the caller's `vlen` messages.
            let m = unsafe { &mut *msgs.wrapping_add(i) };
            // SAFETY: a valid msghdr of the caller's.
            match unsafe { stack_sendmsg(fd, &m.msg_hdr, flags) } {
                None => break,
                Some(r) if r < 0 => return if n > 0 { n } else { -1 },
                Some(r) => {
                    m.msg_len = r as c_uint;
                    n += 1;
                }
            }
        }
        if n > 0 || vlen == 0 {
            return n;
        }
    }
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
    // SAFETY: the caller's offset pointer (off_t is 64-bit here).
    if let Some(r) = unsafe { crate::local::sendfile(out_fd, in_fd, off.cast(), count) } {
        return r;
    }
    // SAFETY: the caller's offset pointer (off_t is 64-bit here).
    if let Some(r) = unsafe { stk::sendfile(out_fd, in_fd, off.cast(), count) } {
        return r;
    }
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
    // SAFETY: the caller's offset pointer.
    if let Some(r) = unsafe { crate::local::sendfile(out_fd, in_fd, off, count) } {
        return r;
    }
    // SAFETY: the caller's offset pointer.
    if let Some(r) = unsafe { stk::sendfile(out_fd, in_fd, off, count) } {
        return r;
    }
    // SAFETY: as above.
    let ret = unsafe { real::sendfile64(out_fd, in_fd, off, count) };
    uncaptured_send(Call::Sendfile64, out_fd, ret, Uncaptured::Sendfile);
    ret
}

fn uncaptured_send(call: Call, fd: c_int, ret: ssize_t, what: Uncaptured) {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(call);
            trace::transfer(fd, Dir::Send, ret, 0, None, |_| {}, what);
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
            trace::transfer(fd_out, Dir::Send, ret, 0, None, |_| {}, Uncaptured::Splice);
            trace::transfer(fd_in, Dir::Recv, ret, 0, None, |_| {}, Uncaptured::Splice);
        });
    }
    ret
}
