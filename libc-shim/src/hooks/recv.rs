//! Hooks of the receive side: recv, recvfrom, read, readv, recvmsg, recvmmsg and the `_chk`
//! variants.

#![allow(clippy::missing_safety_doc)]

#[allow(clippy::wildcard_imports)]
use super::*;
use std::ptr::null_mut as null;

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn recv(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    // SAFETY: the caller's buffer.
    if let Some(r) = unsafe { stack_recv1(fd, buf, len, flags, null(), null()) } {
        return r;
    }
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
    // SAFETY: the caller's buffer.
    if let Some(r) = unsafe { stack_recv1(fd, buf, len.min(buflen), flags, null(), null()) } {
        return r;
    }
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
    // SAFETY: the caller's buffers.
    if let Some(r) = unsafe { stack_recv1(fd, buf, len, flags, addr, alen) } {
        return r;
    }
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
    // SAFETY: the caller's buffers.
    if let Some(r) = unsafe { stack_recv1(fd, buf, len.min(buflen), flags, addr, alen) } {
        return r;
    }
    // SAFETY: as above.
    let ret = unsafe { real::__recvfrom_chk(fd, buf, len, buflen, flags, addr, alen) };
    received_buf(Call::RecvfromChk, fd, ret, buf, len, flags);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn read(fd: c_int, buf: *mut c_void, len: size_t) -> ssize_t {
    // SAFETY: the caller's buffer.
    if let Some(r) = unsafe { stack_recv1(fd, buf, len, 0, null(), null()) } {
        return r;
    }
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
    // SAFETY: the caller's buffer.
    if let Some(r) = unsafe { stack_recv1(fd, buf, len.min(buflen), 0, null(), null()) } {
        return r;
    }
    // SAFETY: as above.
    let ret = unsafe { real::__read_chk(fd, buf, len, buflen) };
    received_buf(Call::ReadChk, fd, ret, buf, len, 0);
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    if crate::local::marked(fd) {
        // SAFETY: the caller's iovecs.
        if let Some(r) = crate::local::recv(fd, &mut unsafe { iov_slices_mut(iov, cnt) }, 0) {
            return r;
        }
    }
    if crate::stack::marked(fd) {
        // SAFETY: the caller's iovecs.
        let mut bufs = unsafe { iov_slices_mut(iov, cnt) };
        if let Some((r, _)) = stk::recv(fd, &mut bufs, 0, None) {
            return r;
        }
    }
    // SAFETY: as above.
    let ret = unsafe { real::readv(fd, iov, cnt) };
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Readv);
            let n = ret.max(0) as usize;
            // SAFETY: the kernel wrote the first `ret` bytes of the caller's `cnt` iovecs.
            let copy = |out: &mut Vec<u8>| unsafe { copy_iov(out, iov, cnt.max(0) as usize, n) };
            trace::transfer(fd, Dir::Recv, ret, n, None, copy, Uncaptured::Other);
        });
    }
    ret
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    // SAFETY: the caller's msghdr.
    if let Some(r) = unsafe { stack_recvmsg(fd, msg, flags) } {
        return r;
    }
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
    if (crate::stack::marked(fd) || crate::local::marked(fd)) && !msgs.is_null() && vlen > 0 {
        // One message (a blocking first one, as the kernel waits for the first).
        // SAFETY: the caller's first message.
        let m = unsafe { &mut *msgs };
        // SAFETY: a valid msghdr of the caller's.
        if let Some(r) = unsafe { stack_recvmsg(fd, &mut m.msg_hdr, flags) } {
            if r < 0 {
                return -1;
            }
            m.msg_len = r as c_uint;
            return 1;
        }
    }
    // SAFETY: as above.
    let ret = unsafe { real::recvmmsg(fd, msgs, vlen, flags, timeout) };
    // SAFETY: on success the kernel filled the first `ret` of the caller's messages.
    unsafe { mmsg_done(Call::Recvmmsg, fd, Dir::Recv, ret, msgs, flags) };
    ret
}
