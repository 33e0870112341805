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
//! The hooks go by call family: `sockets` (sockets and descriptors), `send`, `recv`,
//! `readiness` (poll, select, epoll: passed through) and `process` (fork, exec, `_exit`). This
//! module holds the bookkeeping they share.
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
use crate::stack::ops as stk;
use crate::trace::{self, account, Call, Dir, Uncaptured};

/// Enters the shim for bookkeeping, unless it is off, broken, or already entered.
#[inline]
fn active() -> Option<Guard> {
    if !crate::enabled() || guard::in_vfork_child() {
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

/// The `n` bytes at `buf` (`None` when there are none).
///
/// # Safety
/// `buf` points to at least `n` readable bytes that stay unchanged while the slice lives.
unsafe fn slice<'a>(buf: *const c_void, n: usize) -> Option<&'a [u8]> {
    if n == 0 || buf.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees `n` readable bytes at `buf`.
    Some(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n) })
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

/// The buffers of an iovec array (stack mode: the caller's, for the duration of the call).
///
/// # Safety
/// `iov` points to `cnt` iovecs (or is null) whose buffers are readable.
unsafe fn iov_slices<'a>(iov: *const iovec, cnt: c_int) -> Vec<&'a [u8]> {
    if iov.is_null() || cnt <= 0 {
        return Vec::new();
    }
    (0..cnt as usize)
        .map(|i| {
            // SAFETY: `i < cnt`, and the caller guarantees `cnt` iovecs.
            let v = unsafe { std::ptr::read(iov.wrapping_add(i)) };
            // SAFETY: an iovec of the caller's describes readable bytes.
            unsafe { slice(v.iov_base, v.iov_len) }.unwrap_or(&[])
        })
        .collect()
}

/// The writable buffers of an iovec array.
///
/// # Safety
/// `iov` points to `cnt` iovecs (or is null) whose buffers are writable and do not overlap.
unsafe fn iov_slices_mut<'a>(iov: *const iovec, cnt: c_int) -> Vec<&'a mut [u8]> {
    if iov.is_null() || cnt <= 0 {
        return Vec::new();
    }
    (0..cnt as usize)
        .map(|i| {
            // SAFETY: `i < cnt`, and the caller guarantees `cnt` iovecs.
            let v = unsafe { std::ptr::read(iov.wrapping_add(i)) };
            if v.iov_base.is_null() || v.iov_len == 0 {
                return &mut [][..];
            }
            // SAFETY: an iovec of the caller's describes writable bytes.
            unsafe { std::slice::from_raw_parts_mut(v.iov_base.cast::<u8>(), v.iov_len) }
        })
        .collect()
}

/// A receive into one buffer on a stack socket (`None`: not one).
///
/// # Safety
/// `buf` has `len` writable bytes; `addr`/`alen` are null or the caller's.
unsafe fn stack_recv1(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> Option<ssize_t> {
    if !crate::stack::marked(fd) && !crate::local::marked(fd) {
        return None;
    }
    let b: &mut [u8] = if buf.is_null() || len == 0 {
        &mut []
    } else {
        // SAFETY: the caller's buffer of `len` writable bytes.
        unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) }
    };
    if crate::local::marked(fd) {
        return crate::local::recv(fd, &mut [b], flags);
    }
    let from = (!addr.is_null()).then_some((addr, alen));
    stk::recv(fd, &mut [b], flags, from).map(|r| r.0)
}

/// A message receive on a stack socket.
///
/// # Safety
/// `msg` is the caller's valid msghdr.
unsafe fn stack_recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> Option<ssize_t> {
    if !crate::stack::marked(fd) && !crate::local::marked(fd) || msg.is_null() {
        return None;
    }
    // SAFETY: the caller's valid msghdr.
    let m = unsafe { &mut *msg };
    // SAFETY: its iovecs are the caller's writable buffers.
    let mut bufs = unsafe { iov_slices_mut(m.msg_iov, m.msg_iovlen as c_int) };
    if crate::local::marked(fd) {
        let r = crate::local::recv(fd, &mut bufs, flags)?;
        if r >= 0 {
            (m.msg_controllen, m.msg_flags) = (0, 0);
        }
        return Some(r);
    }
    let name = m.msg_name.cast::<sockaddr>();
    let from = (!name.is_null()).then_some((name, &mut m.msg_namelen as *mut socklen_t));
    let (r, mf) = stk::recv(fd, &mut bufs, flags, from)?;
    if r >= 0 {
        m.msg_controllen = 0;
        m.msg_flags = mf;
    }
    Some(r)
}

/// A message send on a stack socket.
///
/// # Safety
/// `msg` is the caller's valid msghdr.
unsafe fn stack_sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> Option<ssize_t> {
    if !crate::stack::marked(fd) && !crate::local::marked(fd) || msg.is_null() {
        return None;
    }
    // SAFETY: the caller's valid msghdr.
    let m = unsafe { &*msg };
    // SAFETY: its iovecs are the caller's readable buffers.
    let bufs = unsafe { iov_slices(m.msg_iov, m.msg_iovlen as c_int) };
    if crate::local::marked(fd) {
        return crate::local::send(fd, &bufs, flags);
    }
    let dst = (!m.msg_name.is_null())
        .then_some((m.msg_name.cast::<sockaddr>().cast_const(), m.msg_namelen));
    stk::send(fd, &bufs, flags, dst)
}

/// Bookkeeping of a send-side call that sent from one buffer.
#[inline]
fn sent_buf(call: Call, fd: c_int, ret: ssize_t, buf: *const c_void) {
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(call);
            let n = ret.max(0) as usize;
            // SAFETY: the kernel read `ret` bytes from `buf`, so they are readable (and the
            // caller does not change them during its own call).
            let direct = unsafe { slice(buf, n) };
            trace::transfer(fd, Dir::Send, ret, n, direct, |_| {}, Uncaptured::Other);
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
            let direct = unsafe { slice(buf, n) };
            trace::transfer(fd, Dir::Recv, ret, n, direct, |_| {}, Uncaptured::Other);
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
        return trace::transfer(fd, dir, ret, 0, None, |_| {}, Uncaptured::Other);
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
    // One buffer (the usual case) is read in place.
    let direct = if cnt == 1 && n > 0 && !m.msg_iov.is_null() {
        // SAFETY: the msghdr has one iovec (not null: checked).
        let v = unsafe { std::ptr::read(m.msg_iov) };
        // SAFETY: the kernel read or wrote `n <= iov_len` bytes of that iovec.
        unsafe { slice(v.iov_base, n) }
    } else {
        None
    };
    trace::transfer(fd, dir, ret, n, direct, copy, Uncaptured::Other);
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
                trace::transfer(fd, dir, -1, 0, None, |_| {}, Uncaptured::Other);
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

pub mod process;
pub mod readiness;
pub mod recv;
pub mod send;
pub mod sockets;
