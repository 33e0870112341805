//! The real libc functions, resolved lazily with `dlsym(RTLD_NEXT)`.
//!
//! Each function has a static slot holding its address (0 = not resolved yet). Resolution is
//! race-free without a lock: two threads that race resolve the same address and store the same
//! value. A symbol that libc lacks (an old glibc without `close_range`) resolves to a stub
//! that fails with `ENOSYS`, as the missing function would have from the caller's point of view.
//!
//! Every wrapper here is a thin `unsafe fn` with the C signature; the hooks call them.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{
    c_char, c_int, c_uint, c_ulong, c_void, fd_set, iovec, mmsghdr, msghdr, nfds_t, off64_t, off_t,
    pollfd, sigset_t, size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};

/// Address of a symbol in the libraries after this one, or 0.
fn lookup(name: &'static [u8]) -> usize {
    debug_assert_eq!(name.last(), Some(&0));
    // SAFETY: `name` is a NUL-terminated byte string (every caller passes a literal ending in
    // `\0`), and dlsym with RTLD_NEXT has no other precondition.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast::<c_char>()) };
    p as usize
}

/// Resolves `slot` on first use.
#[inline]
fn resolve(slot: &AtomicUsize, name: &'static [u8]) -> usize {
    let p = slot.load(Ordering::Acquire);
    if p != 0 {
        return p;
    }
    let p = lookup(name);
    if p != 0 {
        slot.store(p, Ordering::Release);
    }
    p
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location has no precondition.
    let p = unsafe { libc::__errno_location() };
    // SAFETY: it returns the calling thread's errno, always valid for writes.
    unsafe { *p = e };
}

/// Declares `pub unsafe fn NAME(args) -> ret` calling the next definition of `NAME`.
macro_rules! real {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty ; )*) => {
        $(
            #[doc = concat!("The next `", stringify!($name), "` after this library (libc's).")]
            #[doc = ""]
            #[doc = "# Safety"]
            #[doc = "The C function's contract."]
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                static SLOT: AtomicUsize = AtomicUsize::new(0);
                let p = resolve(&SLOT, concat!(stringify!($name), "\0").as_bytes());
                if p == 0 {
                    set_errno(libc::ENOSYS);
                    return -1 as $ret;
                }
                type F = unsafe extern "C-unwind" fn($($ty),*) -> $ret;
                // SAFETY: `p` is the address dlsym gave for this very symbol name, whose C type is the one declared here.
                let f = unsafe { std::mem::transmute::<usize, F>(p) };
                // SAFETY: the caller upholds the C function's contract.
                unsafe { f($($arg),*) }
            }
        )*
    };
}

real! {
    setuid(uid: libc::uid_t) -> c_int;
    setreuid(r: libc::uid_t, e: libc::uid_t) -> c_int;
    setresuid(r: libc::uid_t, e: libc::uid_t, s: libc::uid_t) -> c_int;
    sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
    socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    socketpair(domain: c_int, ty: c_int, protocol: c_int, sv: *mut c_int) -> c_int;
    bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    listen(fd: c_int, backlog: c_int) -> c_int;
    accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    shutdown(fd: c_int, how: c_int) -> c_int;
    close(fd: c_int) -> c_int;
    close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int;
    dup(fd: c_int) -> c_int;
    dup2(old: c_int, new: c_int) -> c_int;
    dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t;
    sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, alen: socklen_t) -> ssize_t;
    sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    sendmmsg(fd: c_int, msgs: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int;
    write(fd: c_int, buf: *const c_void, len: size_t) -> ssize_t;
    writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t;
    recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t;
    recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    recvmmsg(fd: c_int, msgs: *mut mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut timespec) -> c_int;
    read(fd: c_int, buf: *mut c_void, len: size_t) -> ssize_t;
    readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    __read_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t) -> ssize_t;
    __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int) -> ssize_t;
    __recvfrom_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t;
    sendfile(out_fd: c_int, in_fd: c_int, off: *mut off_t, count: size_t) -> ssize_t;
    sendfile64(out_fd: c_int, in_fd: c_int, off: *mut off64_t, count: size_t) -> ssize_t;
    splice(fd_in: c_int, off_in: *mut off64_t, fd_out: c_int, off_out: *mut off64_t, len: size_t, flags: c_uint) -> ssize_t;
    poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int;
    __poll_chk(fds: *mut pollfd, n: nfds_t, timeout: c_int, fdslen: size_t) -> c_int;
    ppoll(fds: *mut pollfd, n: nfds_t, ts: *const timespec, mask: *const sigset_t) -> c_int;
    __ppoll_chk(fds: *mut pollfd, n: nfds_t, ts: *const timespec, mask: *const sigset_t, fdslen: size_t) -> c_int;
    select(n: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, tv: *mut timeval) -> c_int;
    pselect(n: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, ts: *const timespec, mask: *const sigset_t) -> c_int;
    epoll_create(size: c_int) -> c_int;
    epoll_create1(flags: c_int) -> c_int;
    epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int;
    epoll_wait(epfd: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int;
    epoll_pwait(epfd: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const sigset_t) -> c_int;
    epoll_pwait2(epfd: c_int, ev: *mut libc::epoll_event, max: c_int, ts: *const timespec, mask: *const sigset_t) -> c_int;
    fork() -> libc::pid_t;
    execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    execv(path: *const c_char, argv: *const *const c_char) -> c_int;
    execvp(file: *const c_char, argv: *const *const c_char) -> c_int;
    execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
}

/// The next `fcntl` (variadic in C: the optional third argument is an int, a long or a
/// pointer, all passed in one integer register on the supported ABIs).
///
/// # Safety
/// The C function's contract.
pub unsafe fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    variadic3(&FCNTL, b"fcntl\0", fd, cmd as c_ulong, arg)
}

/// The next `fcntl64` (see [`fcntl`]).
///
/// # Safety
/// The C function's contract.
pub unsafe fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    variadic3(&FCNTL64, b"fcntl64\0", fd, cmd as c_ulong, arg)
}

/// The next `ioctl` (variadic in C like [`fcntl`]).
///
/// # Safety
/// The C function's contract.
pub unsafe fn ioctl(fd: c_int, req: c_ulong, arg: c_ulong) -> c_int {
    variadic3(&IOCTL, b"ioctl\0", fd, req, arg)
}

static FCNTL: AtomicUsize = AtomicUsize::new(0);
static FCNTL64: AtomicUsize = AtomicUsize::new(0);
static IOCTL: AtomicUsize = AtomicUsize::new(0);

/// Calls a variadic `int f(int, <integer>, ...)` with one variadic integer argument.
fn variadic3(slot: &AtomicUsize, name: &'static [u8], fd: c_int, b: c_ulong, c: c_ulong) -> c_int {
    let p = resolve(slot, name);
    if p == 0 {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `p` is the address of `fcntl`, `fcntl64` or `ioctl`, whose C type is
    // `int (int, <int or unsigned long>, ...)`; an int second argument passed as unsigned
    // long occupies the same register, whose upper half the callee ignores.
    let f: unsafe extern "C-unwind" fn(c_int, c_ulong, ...) -> c_int = unsafe {
        std::mem::transmute::<usize, unsafe extern "C-unwind" fn(c_int, c_ulong, ...) -> c_int>(p)
    };
    // SAFETY: the caller's arguments, passed on as they came.
    unsafe { f(fd, b, c) }
}

/// `_exit` never returns; resolved like the others.
pub fn exit_now(code: c_int) -> ! {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let p = resolve(&SLOT, b"_exit\0");
    if p != 0 {
        // SAFETY: `p` is libc's `_exit`, of type `void (int)`, which never returns.
        let f: extern "C" fn(c_int) -> ! =
            unsafe { std::mem::transmute::<usize, extern "C" fn(c_int) -> !>(p) };
        f(code);
    }
    // SAFETY: the raw exit_group system call has no precondition and does not return.
    unsafe { libc::syscall(libc::SYS_exit_group, code as libc::c_long) };
    std::process::abort()
}

/// Address of libc's `vfork` (0 when there is none): the `vfork` hook jumps to it.
pub fn vfork_address() -> usize {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    resolve(&SLOT, b"vfork\0")
}

/// Address of libc's `fork` (the `vfork` hook's fallback).
pub fn fork_address() -> usize {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    resolve(&SLOT, b"fork\0")
}

/// The next `prctl` (`int prctl(int option, ...)`: four unsigned long arguments follow, as
/// glibc reads them).
///
/// # Safety
/// The C function's contract.
pub unsafe fn prctl(option: c_int, a2: c_ulong, a3: c_ulong, a4: c_ulong, a5: c_ulong) -> c_int {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let p = resolve(&SLOT, b"prctl\0");
    if p == 0 {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `p` is libc's `prctl`, of C type `int (int, ...)`.
    let f: unsafe extern "C-unwind" fn(c_int, ...) -> c_int = unsafe {
        std::mem::transmute::<usize, unsafe extern "C-unwind" fn(c_int, ...) -> c_int>(p)
    };
    // SAFETY: the caller's arguments, passed on as they came.
    unsafe { f(option, a2, a3, a4, a5) }
}

/// The next `signal` (`SIG_ERR` with ENOSYS when there is none).
///
/// # Safety
/// The C function's contract.
pub unsafe fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let p = resolve(&SLOT, b"signal\0");
    if p == 0 {
        set_errno(libc::ENOSYS);
        return libc::SIG_ERR;
    }
    type F = unsafe extern "C-unwind" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
    // SAFETY: `p` is libc's `signal`, of this C type.
    let f = unsafe { std::mem::transmute::<usize, F>(p) };
    // SAFETY: the caller upholds the contract.
    unsafe { f(sig, handler) }
}
