//! The socket calls of stack mode. Each returns `None` when the descriptor is not the stack's
//! (the hook then makes the real call), else the call's result with errno set as the kernel
//! would set it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use libc::{c_int, c_void, sockaddr, socklen_t};
use segstack::iface::IfaceError;
use segstack::tcp::{Keepalive, TcpError};
use segstack::Payload;

use super::filecache;
use super::{
    internal, is_stack, lock, mark, mark_pending, marked, note, on, proxy, pump, pump_send, sync,
    unmark, ConnRecord, Kind, Opts, Pending, Sock, Tcp, World, WorldGuard, FORKED, ORPHANS,
};
use crate::guard::{self, Guard};
use crate::real;

/// True in a forked child of the stack process: the call goes to the stack process.
#[inline]
fn child() -> bool {
    FORKED.load(std::sync::atomic::Ordering::Relaxed)
}

thread_local! {
    /// Set while the stack process serves a child's request: no call may block (the child
    /// waits on its own descriptor).
    static FORCE_NB: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every call non-blocking (a child's request).
pub(super) fn non_blocking<R>(f: impl FnOnce() -> R) -> R {
    FORCE_NB.with(|c| c.set(true));
    let r = f();
    FORCE_NB.with(|c| c.set(false));
    r
}

/// This thread serves a child's request ([`non_blocking`]).
pub(super) fn forced_nb() -> bool {
    FORCE_NB.with(std::cell::Cell::get)
}

/// A socket's calls do not block (its mode, or a child's request).
fn nb(s: &Sock) -> bool {
    s.nonblock || FORCE_NB.with(std::cell::Cell::get)
}

/// Enters the shim for a marked descriptor.
#[inline]
fn enter(fd: c_int) -> Option<Guard> {
    if !marked(fd) {
        return None;
    }
    Guard::enter()
}

fn fail<T: From<i8>>(e: c_int) -> T {
    guard::set_errno(e);
    T::from(-1)
}

fn done(r: Result<usize, c_int>) -> isize {
    match r {
        Ok(n) => n as isize,
        Err(e) => fail::<isize>(e),
    }
}

fn done_int(r: Result<(), c_int>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => fail::<c_int>(e),
    }
}

/// Reads an AF_INET address.
///
/// # Safety
/// `addr` points to `len` readable bytes (or is null).
unsafe fn read_addr(addr: *const sockaddr, len: socklen_t) -> Result<SocketAddrV4, c_int> {
    if addr.is_null() {
        return Err(libc::EFAULT);
    }
    if (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return Err(libc::EINVAL);
    }
    // SAFETY: at least the family field is readable (checked above).
    let fam = unsafe { std::ptr::read_unaligned(addr.cast::<libc::sa_family_t>()) };
    if c_int::from(fam) == libc::AF_UNSPEC {
        return Err(libc::EAFNOSUPPORT);
    }
    if c_int::from(fam) != libc::AF_INET {
        return Err(libc::EAFNOSUPPORT);
    }
    if (len as usize) < std::mem::size_of::<libc::sockaddr_in>() {
        return Err(libc::EINVAL);
    }
    // SAFETY: `len` covers a sockaddr_in (checked above).
    let sin = unsafe { std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in>()) };
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        u16::from_be(sin.sin_port),
    ))
}

/// Writes an AF_INET address to the caller's buffer (truncated as the kernel truncates).
///
/// # Safety
/// `addr`/`len` are null or the caller's valid buffer and its length.
unsafe fn write_addr(a: SocketAddrV4, addr: *mut sockaddr, len: *mut socklen_t) {
    if addr.is_null() || len.is_null() {
        return;
    }
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = a.port().to_be();
    sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    let full = std::mem::size_of::<libc::sockaddr_in>();
    // SAFETY: the caller's valid socklen_t.
    let room = unsafe { std::ptr::read(len) } as usize;
    // SAFETY: `room` writable bytes at `addr` (the caller's contract); we write at most that.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&sin as *const libc::sockaddr_in).cast::<u8>(),
            addr.cast::<u8>(),
            room.min(full),
        )
    };
    // SAFETY: as above.
    unsafe { std::ptr::write(len, full as socklen_t) };
}

/// Waits until `fd` shows `events` (or hangs up), or the deadline passes (`EAGAIN`). The
/// caller holds no lock: when this thread can hold the port, it waits on it too and runs the
/// interface itself when a frame arrives ([`super::inline`]).
pub(super) fn wait(fd: c_int, events: i16, deadline: Option<Instant>) -> Result<(), c_int> {
    // The wait is on the descriptor, in the kernel: the socket needs its tokens.
    super::ready::kernel_waits([fd]);
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(libc::EAGAIN);
                }
                left.as_millis().clamp(1, i32::MAX as u128) as c_int
            }
        };
        let poller = super::inline::Poller::take();
        let mut p = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: poller.as_ref().map_or(-1, |p| p.fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds (a negative descriptor is skipped).
        let r = unsafe { real::poll(p.as_mut_ptr(), 2, timeout) };
        let err = guard::errno();
        drop(poller);
        if p[1].revents != 0 {
            super::inline::run();
        }
        if p[0].revents != 0 {
            return Ok(());
        }
        if r < 0 && err != libc::EINTR {
            return Err(err);
        }
    }
}

fn deadline(t: Option<Duration>) -> Option<Instant> {
    t.map(|d| Instant::now() + d)
}

// ---- creation and routing ------------------------------------------------------------------

/// After a successful `socket()`: an AF_INET stream or datagram socket is pending.
pub fn socket_made(fd: c_int, domain: c_int, ty: c_int) {
    if !on() || fd < 0 {
        return;
    }
    if child() {
        proxy::socket_made(fd, domain, ty);
        return;
    }
    let Some(_g) = Guard::enter() else {
        return;
    };
    guard::shielded(|| {
        let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
        let mut w = lock();
        if domain == libc::AF_INET && (base == libc::SOCK_STREAM || base == libc::SOCK_DGRAM) {
            w.pending.insert(
                fd,
                Pending {
                    dgram: base == libc::SOCK_DGRAM,
                    opts: Opts::default(),
                },
            );
            mark_pending(fd, true);
        } else {
            w.counters.kernel_other_sockets += 1;
        }
    });
}

/// After a successful `socketpair()` (unix sockets: the kernel's).
pub fn socketpair_made(domain: c_int) {
    if !on() || child() {
        return;
    }
    let Some(_g) = Guard::enter() else {
        return;
    };
    guard::shielded(|| {
        let _ = domain;
        lock().counters.kernel_other_sockets += 2;
    });
}

/// A pending socket stays in the kernel: forget it.
fn to_kernel(w: &mut World, fd: c_int, why: &'static str) {
    if let Some(p) = w.pending.remove(&fd) {
        mark_pending(fd, false);
        w.counters.kernel_inet_sockets += 1;
        let id = w.next_id;
        w.next_id += 1;
        w.records.push(ConnRecord {
            id,
            fd,
            route: "kernel",
            why,
            ty: if p.dgram { "dgram" } else { "stream" },
            ..ConnRecord::default()
        });
    }
}

/// Moves a pending socket to the stack: a socketpair's end A takes the descriptor's number.
fn to_stack(w: &mut World, fd: c_int) -> Result<usize, c_int> {
    let Some(p) = w.pending.get(&fd).cloned() else {
        return Err(libc::EBADF);
    };
    w.engine()?;
    // SAFETY: F_GETFL/F_GETFD take no argument.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    // SAFETY: as above.
    let fdfl = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
    let (a, b) = pair(fl >= 0 && fl & libc::O_NONBLOCK != 0)?;
    let cloexec = fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0;
    // SAFETY: both descriptors are ours/the caller's, open.
    let r = unsafe { real::dup3(a, fd, if cloexec { libc::O_CLOEXEC } else { 0 }) };
    let e = guard::errno();
    // SAFETY: our own descriptor, now duplicated.
    unsafe { real::close(a) };
    if r < 0 {
        // SAFETY: our own descriptor.
        unsafe { real::close(b) };
        return Err(e);
    }
    w.pending.remove(&fd);
    mark_pending(fd, false);
    let kind = if p.dgram {
        Kind::Udp {
            h: None,
            port: 0,
            peer: None,
            queue: Default::default(),
        }
    } else {
        Kind::Tcp(Tcp::Unbound)
    };
    let nonblock = fl >= 0 && fl & libc::O_NONBLOCK != 0;
    Ok(w.new_sock(kind, fd, b, nonblock, p.opts))
}

/// A socketpair for a stack socket: (A, B). A's send buffer is the smallest (it is filled to
/// make A unwritable); B is the stack's (non-blocking, close-on-exec).
pub(super) fn pair(nonblock: bool) -> Result<(c_int, c_int), c_int> {
    let mut sv = [-1; 2];
    let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    // SAFETY: `sv` has room for two descriptors.
    if unsafe { real::socketpair(libc::AF_UNIX, ty, 0, sv.as_mut_ptr()) } != 0 {
        return Err(guard::errno());
    }
    let one: c_int = 1;
    // SAFETY: a valid int option.
    unsafe {
        real::setsockopt(
            sv[0],
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&one as *const c_int).cast(),
            4,
        )
    };
    // B moves to a high number, so that the application's own descriptors stay where the
    // kernel would have put them (below FD_SETSIZE when theirs would be).
    // SAFETY: F_DUPFD_CLOEXEC with an int lower bound.
    let high = unsafe { real::fcntl(sv[1], libc::F_DUPFD_CLOEXEC, high_floor() as libc::c_ulong) };
    if high >= 0 {
        // SAFETY: our own descriptor, now duplicated.
        unsafe { real::close(sv[1]) };
        sv[1] = high;
    }
    // SAFETY: F_SETFL with an int flag word.
    unsafe { real::fcntl(sv[1], libc::F_SETFL, libc::O_NONBLOCK as libc::c_ulong) };
    if nonblock {
        // SAFETY: as above.
        unsafe { real::fcntl(sv[0], libc::F_SETFL, libc::O_NONBLOCK as libc::c_ulong) };
    }
    Ok((sv[0], sv[1]))
}

/// Where the stack's own descriptors go: the upper half of the soft descriptor limit (at most
/// 32768), above the numbers an application takes first.
pub(super) fn high_floor() -> u64 {
    static FLOOR: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *FLOOR.get_or_init(|| {
        // SAFETY: an all-zero rlimit is valid.
        let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: `r` is writable.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
            return 0;
        }
        (r.rlim_cur / 2).min(32_768)
    })
}

fn sock_id(w: &World, fd: c_int) -> Result<usize, c_int> {
    w.fds.get(&fd).copied().ok_or(libc::EBADF)
}

/// Runs `f` on the stack socket of `fd` with the engine.
fn with<R>(
    w: &mut World,
    id: usize,
    f: impl FnOnce(&mut super::Engine, &mut Sock, &mut super::Counters) -> R,
) -> Result<R, c_int> {
    let World {
        engine,
        socks,
        counters,
        ..
    } = w;
    let e = engine.as_mut().ok_or(libc::ENETDOWN)?;
    let s = socks
        .get_mut(id)
        .and_then(Option::as_mut)
        .ok_or(libc::EBADF)?;
    Ok(f(e, s, counters))
}

fn routable(w: &mut World, dst: Ipv4Addr) -> Result<(), c_int> {
    let e = w.engine()?;
    let s = &e.settings;
    let mask = if s.prefix == 0 {
        0
    } else {
        u32::MAX << (32 - s.prefix)
    };
    if s.gateway.is_none() && u32::from(dst) & mask != u32::from(s.ip) & mask {
        return Err(libc::ENETUNREACH);
    }
    Ok(())
}

fn ephemeral(e: &mut super::Engine) -> u16 {
    let p = e.next_port;
    e.next_port = if p >= 65_000 { 49_152 } else { p + 1 };
    p
}

fn apply_opts(e: &mut super::Engine, h: segstack::iface::SocketHandle, o: &Opts) {
    if o.nodelay {
        let _ = e.iface.set_nagle(h, false);
    }
    if o.keepalive {
        let _ = e.iface.set_keepalive(h, Some(keepalive(o)));
    }
}

fn keepalive(o: &Opts) -> Keepalive {
    let d = Keepalive::default();
    Keepalive {
        idle_ns: o
            .keepidle
            .map_or(d.idle_ns, |s| u64::from(s) * 1_000_000_000),
        interval_ns: o
            .keepintvl
            .map_or(d.interval_ns, |s| u64::from(s) * 1_000_000_000),
        probes: o.keepcnt.unwrap_or(d.probes),
    }
}

// ---- bind, listen, accept, connect -------------------------------------------------------------

/// `bind`.
///
/// # Safety
/// The C contract of `bind`.
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> Option<c_int> {
    let _g = enter(fd)?;
    if child() {
        // SAFETY: the caller's address of `len` bytes.
        return unsafe { proxy::bind(fd, addr, len) };
    }
    let mut w = lock();
    if w.pending.contains_key(&fd) {
        // SAFETY: the caller's address of `len` bytes.
        let a = match unsafe { read_addr(addr, len) } {
            Ok(a) => a,
            Err(_) => {
                to_kernel(&mut w, fd, "bind: not an AF_INET address");
                return None;
            }
        };
        if a.ip().is_loopback() {
            to_kernel(&mut w, fd, "loopback (127.0.0.0/8)");
            return None;
        }
        let ours = match w.engine() {
            Ok(e) => e.settings.ip,
            Err(e) => return Some(fail(e)),
        };
        if !a.ip().is_unspecified() && *a.ip() != ours {
            return Some(fail(libc::EADDRNOTAVAIL));
        }
        let id = match to_stack(&mut w, fd) {
            Ok(id) => id,
            Err(e) => return Some(fail(e)),
        };
        let r = with(&mut w, id, |e, s, _| {
            s.bound_ip = *a.ip();
            let port = if a.port() == 0 {
                ephemeral(e)
            } else {
                a.port()
            };
            match &mut s.kind {
                Kind::Tcp(t) => {
                    *t = Tcp::Bound(port);
                    Ok(())
                }
                Kind::Udp { h, port: p, .. } => match e.iface.udp_bind(port) {
                    Ok(x) => {
                        *h = Some(x);
                        *p = port;
                        Ok(())
                    }
                    Err(_) => Err(libc::EADDRINUSE),
                },
            }
        })
        .and_then(|r| r);
        return Some(done_int(r));
    }
    Some(fail(libc::EINVAL)) // a stack socket is bound already
}

/// `listen`.
pub fn listen(fd: c_int, backlog: c_int) -> Option<c_int> {
    let _g = enter(fd)?;
    if child() {
        return proxy::listen(fd, backlog);
    }
    let mut w = lock();
    if w.pending.get(&fd).is_some_and(|p| !p.dgram) {
        // listen without bind: any address, an ephemeral port.
        if let Err(e) = to_stack(&mut w, fd) {
            return Some(fail(e));
        }
    } else if w.pending.contains_key(&fd) {
        return None;
    }
    let id = match sock_id(&w, fd) {
        Ok(id) => id,
        Err(e) => return Some(fail(e)),
    };
    let r = with(&mut w, id, |e, s, _| {
        let backlog = backlog.clamp(1, 4096) as usize;
        match &mut s.kind {
            Kind::Tcp(Tcp::Listening(_, b, _)) => {
                *b = backlog;
                Ok(())
            }
            Kind::Tcp(t @ (Tcp::Unbound | Tcp::Bound(_))) => {
                let port = match t {
                    Tcp::Bound(p) => *p,
                    _ => ephemeral(e),
                };
                match e.iface.tcp_listen(port) {
                    Ok(h) => {
                        *t = Tcp::Listening(h, backlog, Default::default());
                        s.rec.local = Some(SocketAddrV4::new(s.bound_ip, port).to_string());
                        s.rec.why = "AF_INET listener, not loopback";
                        Ok(())
                    }
                    Err(_) => Err(libc::EADDRINUSE),
                }
            }
            Kind::Tcp(_) => Err(libc::EINVAL),
            Kind::Udp { .. } => Err(libc::EOPNOTSUPP),
        }
    })
    .and_then(|r| r);
    Some(done_int(r))
}

/// `accept`/`accept4`.
///
/// # Safety
/// The C contract of `accept4`.
pub unsafe fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> Option<c_int> {
    let _g = enter(fd)?;
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Some(fail(libc::EINVAL));
    }
    if child() {
        // A child's first accept on an inherited listener may give it a stack of its own.
        super::rehome::before_use(fd);
    }
    if child() {
        // SAFETY: the caller's buffers.
        return unsafe { proxy::accept4(fd, addr, len, flags) };
    }
    loop {
        let mut w = lock();
        if w.pending.contains_key(&fd) {
            return None;
        }
        let id = match sock_id(&w, fd) {
            Ok(id) => id,
            Err(e) => return Some(fail(e)),
        };
        super::rehome::accepting(&mut w, id);
        let got = with(&mut w, id, |e, s, _| {
            if !matches!(s.kind, Kind::Tcp(Tcp::Listening(..))) {
                return Err(libc::EINVAL);
            }
            sync(e, s);
            let Kind::Tcp(Tcp::Listening(_, _, q)) = &mut s.kind else {
                return Err(libc::EINVAL);
            };
            let h = q.pop_front();
            let nb = nb(s);
            sync(e, s);
            Ok((h, nb, s.a(), s.opts.clone()))
        })
        .and_then(|r| r);
        let (h, nonblock, a, opts) = match got {
            Ok(x) => x,
            Err(e) => return Some(fail(e)),
        };
        let Some(h) = h else {
            if nonblock {
                return Some(fail(libc::EAGAIN));
            }
            drop(w);
            if let Err(e) = wait(a, libc::POLLIN, deadline(opts.rcvtimeo)) {
                return Some(fail(e));
            }
            continue;
        };
        let (na, nb) = match pair(flags & libc::SOCK_NONBLOCK != 0) {
            Ok(p) => p,
            Err(e) => return Some(fail(e)),
        };
        if flags & libc::SOCK_CLOEXEC == 0 {
            // SAFETY: F_SETFD with an int flag word.
            unsafe { real::fcntl(na, libc::F_SETFD, 0) };
        }
        // Accepted sockets inherit the listener's options that carry over in Linux.
        let o = Opts {
            nodelay: opts.nodelay,
            keepalive: opts.keepalive,
            linger: opts.linger,
            ..Opts::default()
        };
        let nid = w.new_sock(
            Kind::Tcp(Tcp::Connected(h)),
            na,
            nb,
            flags & libc::SOCK_NONBLOCK != 0,
            o,
        );
        let peer = with(&mut w, nid, |e, s, _| {
            s.established = true;
            let o = s.opts.clone();
            apply_opts(e, h, &o);
            sync(e, s);
            e.iface.tcp(h).map(|t| t.remote()).ok()
        })
        .ok()
        .flatten();
        if let Some(p) = peer {
            // SAFETY: the caller's address buffer.
            unsafe { write_addr(p, addr, len) };
        } else if !len.is_null() {
            // SAFETY: the caller's socklen_t.
            unsafe { std::ptr::write(len, 0) };
        }
        return Some(na);
    }
}

/// `connect`.
///
/// # Safety
/// The C contract of `connect`.
pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> Option<c_int> {
    let _g = enter(fd)?;
    if child() {
        // SAFETY: the caller's address of `len` bytes.
        return unsafe { proxy::connect(fd, addr, len) };
    }
    // SAFETY: the caller's address of `len` bytes.
    let dst = unsafe { read_addr(addr, len) };
    let mut w = lock();
    if w.pending.contains_key(&fd) {
        let dst = match dst {
            Ok(d) => d,
            Err(_) => {
                to_kernel(&mut w, fd, "connect: not an AF_INET address");
                return None;
            }
        };
        if dst.ip().is_loopback() {
            to_kernel(&mut w, fd, "loopback (127.0.0.0/8)");
            return None;
        }
        if let Err(e) = routable(&mut w, *dst.ip()) {
            return Some(fail(e));
        }
        if let Err(e) = to_stack(&mut w, fd) {
            return Some(fail(e));
        }
    }
    let id = match sock_id(&w, fd) {
        Ok(id) => id,
        Err(e) => return Some(fail(e)),
    };
    let step = with(&mut w, id, |e, s, _| {
        let now = e.now();
        match &mut s.kind {
            Kind::Udp { h, port, peer, .. } => {
                let d = match dst {
                    Ok(d) => d,
                    Err(libc::EAFNOSUPPORT) => {
                        *peer = None; // AF_UNSPEC dissolves the association
                        return Ok(None);
                    }
                    Err(x) => return Err(x),
                };
                if h.is_none() {
                    let p = ephemeral(e);
                    *h = Some(e.iface.udp_bind(p).map_err(|_| libc::EADDRINUSE)?);
                    *port = p;
                }
                *peer = Some(d);
                s.rec.peer = Some(d.to_string());
                Ok(None)
            }
            Kind::Tcp(Tcp::Connecting(_)) => Err(libc::EALREADY),
            Kind::Tcp(Tcp::Connected(_)) => Err(libc::EISCONN),
            Kind::Tcp(Tcp::Listening(..)) => Err(libc::EISCONN),
            Kind::Tcp(t) => {
                let d = dst?;
                let h = e.iface.tcp_connect(d, now).map_err(|err| match err {
                    IfaceError::NoPorts => libc::EADDRNOTAVAIL,
                    _ => libc::ENOBUFS,
                })?;
                *t = Tcp::Connecting(h);
                let o = s.opts.clone();
                apply_opts(e, h, &o);
                Ok(Some((nb(s), s.a(), s.opts.sndtimeo)))
            }
        }
    })
    .and_then(|r| r);
    let (nonblock, a, timeo) = match step {
        Ok(None) => return Some(0),
        Ok(Some(x)) => x,
        Err(e) => return Some(fail(e)),
    };
    pump(&mut w);
    if nonblock {
        return Some(fail(libc::EINPROGRESS));
    }
    let dl = deadline(timeo);
    loop {
        let r = with(&mut w, id, |e, s, _| {
            sync(e, s);
            match s.kind {
                Kind::Tcp(Tcp::Connected(_)) if s.so_error == 0 => Some(Ok(())),
                Kind::Tcp(Tcp::Connected(_)) => {
                    s.err_taken = true;
                    Some(Err(std::mem::take(&mut s.so_error)))
                }
                _ => None,
            }
        });
        match r {
            Ok(Some(r)) => return Some(done_int(r)),
            Ok(None) => {}
            Err(e) => return Some(fail(e)),
        }
        drop(w);
        if let Err(e) = wait(a, libc::POLLOUT, dl) {
            return Some(fail(if e == libc::EAGAIN {
                libc::EINPROGRESS
            } else {
                e
            }));
        }
        w = lock();
    }
}

// ---- data ----------------------------------------------------------------------------------

/// Which call sends (for SIGPIPE: every send-side call raises it unless MSG_NOSIGNAL).
pub fn send(
    fd: c_int,
    bufs: &[&[u8]],
    flags: c_int,
    dst: Option<(*const sockaddr, socklen_t)>,
) -> Option<isize> {
    let _g = enter(fd)?;
    if child() {
        return proxy::send(fd, bufs, flags, dst, false);
    }
    let mut w = lock();
    if w.pending.contains_key(&fd) {
        // sendto on a pending datagram socket decides its route.
        let (addr, len) = dst.filter(|d| !d.0.is_null())?;
        // SAFETY: the caller's address of `len` bytes.
        match unsafe { read_addr(addr, len) } {
            Ok(d) if !d.ip().is_loopback() && w.pending[&fd].dgram => {
                if let Err(e) = routable(&mut w, *d.ip()) {
                    return Some(fail::<isize>(e));
                }
                if let Err(e) = to_stack(&mut w, fd) {
                    return Some(fail::<isize>(e));
                }
            }
            Ok(d) if d.ip().is_loopback() => {
                to_kernel(&mut w, fd, "loopback (127.0.0.0/8)");
                return None;
            }
            _ => return None,
        }
    }
    let id = match sock_id(&w, fd) {
        Ok(id) => id,
        Err(e) => return Some(fail::<isize>(e)),
    };
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let is_udp = matches!(
        w.socks.get(id).and_then(Option::as_ref).map(|s| &s.kind),
        Some(Kind::Udp { .. })
    );
    if is_udp {
        let d = match dst.filter(|d| !d.0.is_null()) {
            // SAFETY: the caller's address of `l` bytes.
            Some((a, l)) => match unsafe { read_addr(a, l) } {
                Ok(d) => Some(d),
                Err(e) => return Some(fail::<isize>(e)),
            },
            None => None,
        };
        let r = with(&mut w, id, |e, s, c| {
            let Kind::Udp { h, port, peer, .. } = &mut s.kind else {
                return Err(libc::EINVAL);
            };
            let to = d.or(*peer).ok_or(libc::EDESTADDRREQ)?;
            if h.is_none() {
                let p = ephemeral(e);
                *h = Some(e.iface.udp_bind(p).map_err(|_| libc::EADDRINUSE)?);
                *port = p;
            }
            let mut data = Vec::with_capacity(total);
            for b in bufs {
                data.extend_from_slice(b);
            }
            let p = Payload::from_bytes(&e.mem, &data).map_err(|_| libc::ENOBUFS)?;
            if super::debug() {
                crate::sys::diag(&format!(
                    "debug: udp send fd {fd} {:?} port {port} to {to}",
                    h
                ));
            }
            let now = e.now();
            let hh = h.ok_or(libc::EINVAL)?;
            e.iface.udp_send(hh, to, &p, now).map_err(|err| match err {
                IfaceError::TooLarge => libc::EMSGSIZE,
                _ => libc::ENOBUFS,
            })?;
            c.api_copy_in_bytes += total as u64;
            c.sent_bytes += total as u64;
            c.send_calls += 1;
            s.rec.sent_bytes += total as u64;
            s.rec.send_calls += 1;
            if s.rec.local.is_none() {
                s.rec.local = Some(SocketAddrV4::new(s.bound_ip, *port).to_string());
            }
            Ok(total)
        })
        .and_then(|r| r);
        pump(&mut w);
        return Some(done(r));
    }
    // TCP: blocking sends take everything; non-blocking ones what fits.
    let mut sent = 0usize;
    let mut bi = 0usize;
    let mut off = 0usize;
    let dontwait = flags & libc::MSG_DONTWAIT != 0;
    let mut dl: Option<Option<Instant>> = None;
    loop {
        use SendStep as Step;
        let step = with(&mut w, id, |e, s, c| {
            let h = match s.kind {
                Kind::Tcp(Tcp::Connected(h)) => h,
                Kind::Tcp(Tcp::Connecting(_)) => {
                    return if nb(s) || dontwait {
                        Step::Err(libc::EAGAIN)
                    } else {
                        Step::Block(s.a(), s.opts.sndtimeo)
                    };
                }
                _ => return Step::Err(libc::EPIPE),
            };
            if s.so_error != 0 && !s.err_taken {
                s.err_taken = true;
                return Step::Err(std::mem::take(&mut s.so_error));
            }
            if s.wr_shut {
                return Step::Err(libc::EPIPE);
            }
            while bi < bufs.len() {
                let b = &bufs[bi][off..];
                if b.is_empty() {
                    bi += 1;
                    off = 0;
                    continue;
                }
                match e.iface.send_slice(h, b) {
                    Ok(0) | Err(IfaceError::WouldBlock) => {
                        sync(e, s);
                        return if nb(s) || dontwait {
                            Step::Done
                        } else {
                            Step::Block(s.a(), s.opts.sndtimeo)
                        };
                    }
                    Ok(n) => {
                        c.api_copy_in_bytes += n as u64;
                        sent += n;
                        off += n;
                        if off == bufs[bi].len() {
                            bi += 1;
                            off = 0;
                        }
                    }
                    Err(err) => return Step::Err(send_errno(s, &err)),
                }
            }
            Step::Done
        });
        let step = match step {
            Ok(s) => s,
            Err(e) => Step::Err(e),
        };
        match after_step(w, step, sent, &mut dl, flags & libc::MSG_NOSIGNAL == 0) {
            AfterStep::Again(g) => w = g,
            AfterStep::Stop(g) => {
                w = g;
                break;
            }
            AfterStep::Fail(e) => return Some(fail::<isize>(e)),
        }
    }
    if sent == 0 && total > 0 {
        return Some(fail::<isize>(libc::EAGAIN));
    }
    let _ = with(&mut w, id, |_, s, c| {
        c.sent_bytes += sent as u64;
        c.send_calls += 1;
        s.rec.sent_bytes += sent as u64;
        s.rec.send_calls += 1;
    });
    pump_send(&mut w, sent);
    Some(sent as isize)
}

/// One step of a TCP send loop (`send`, `sendfile`), taken under the lock.
enum SendStep {
    /// Part queued, more to come: let the frames out, then go on.
    More,
    /// Finished (everything queued, or what fits without blocking).
    Done,
    /// No room: wait on this descriptor for `POLLOUT`, with the socket's send timeout.
    Block(c_int, Option<Duration>),
    /// Failed with this errno.
    Err(c_int),
}

/// What a send loop does after a step.
enum AfterStep {
    /// Take the next step (the lock is held again).
    Again(WorldGuard),
    /// Stop and report what was sent (the lock is held).
    Stop(WorldGuard),
    /// Fail with this errno (nothing was sent).
    Fail(c_int),
}

/// The part `send` and `sendfile` share after a step: runs the interface and lets the stack
/// thread in between steps, waits (unlocked) for room until the first wait's deadline, and
/// turns an error into a short count when something was sent already, else into the error
/// (raising `SIGPIPE` for `EPIPE` when `sigpipe`).
fn after_step(
    mut w: WorldGuard,
    step: SendStep,
    sent: usize,
    dl: &mut Option<Option<Instant>>,
    sigpipe: bool,
) -> AfterStep {
    match step {
        SendStep::More => {
            pump(&mut w);
            drop(w);
            AfterStep::Again(lock())
        }
        SendStep::Done => AfterStep::Stop(w),
        SendStep::Block(a, timeo) => {
            pump(&mut w);
            drop(w);
            let d = *dl.get_or_insert_with(|| deadline(timeo));
            let r = wait(a, libc::POLLOUT, d);
            let w = lock();
            match r {
                Ok(()) => AfterStep::Again(w),
                Err(_) if sent > 0 => AfterStep::Stop(w),
                Err(e) => AfterStep::Fail(e),
            }
        }
        SendStep::Err(_) if sent > 0 => AfterStep::Stop(w),
        SendStep::Err(e) => {
            if e == libc::EPIPE && sigpipe {
                // SAFETY: raise has no precondition.
                unsafe { libc::raise(libc::SIGPIPE) };
            }
            AfterStep::Fail(e)
        }
    }
}

/// The errno of a TCP send the stack refused (not for lack of room), as the kernel gives it:
/// a reset or a timeout once (its `sk_err`, which `SO_ERROR` then no longer reports), then
/// `EPIPE`; no memory for the segment is `ENOBUFS`. For `send` and `sendfile` alike.
fn send_errno(s: &mut Sock, err: &IfaceError) -> c_int {
    match err {
        IfaceError::Tcp(TcpError::Reset | TcpError::TimedOut) if s.err_taken => libc::EPIPE,
        IfaceError::Tcp(e @ (TcpError::Reset | TcpError::TimedOut)) => {
            s.err_taken = true;
            s.so_error = 0;
            if matches!(e, TcpError::Reset) {
                libc::ECONNRESET
            } else {
                libc::ETIMEDOUT
            }
        }
        IfaceError::Tcp(TcpError::NoMemory) => libc::ENOBUFS,
        _ => libc::EPIPE,
    }
}

/// A receive: into `bufs`; `from` receives the sender's address. Returns the bytes and the
/// `msg_flags` (MSG_TRUNC for a truncated datagram).
pub fn recv(
    fd: c_int,
    bufs: &mut [&mut [u8]],
    flags: c_int,
    from: Option<(*mut sockaddr, *mut socklen_t)>,
) -> Option<(isize, c_int)> {
    let _g = enter(fd)?;
    if child() {
        return proxy::recv(fd, bufs, flags, from);
    }
    let mut w = lock();
    if w.pending.contains_key(&fd) {
        return None;
    }
    let id = match sock_id(&w, fd) {
        Ok(id) => id,
        Err(e) => return Some((fail::<isize>(e), 0)),
    };
    let room: usize = bufs.iter().map(|b| b.len()).sum();
    let peek = flags & libc::MSG_PEEK != 0;
    let waitall = flags & libc::MSG_WAITALL != 0 && !peek;
    let dontwait = flags & libc::MSG_DONTWAIT != 0;
    let mut got = 0usize;
    let mut dl: Option<Option<Instant>> = None;
    let mut pumped = false;
    loop {
        enum Step {
            Done(c_int),
            Block(c_int, Option<Duration>),
            Err(c_int),
        }
        let step = with(&mut w, id, |e, s, c| {
            match &mut s.kind {
                Kind::Udp { .. } => {
                    sync(e, s);
                    let Kind::Udp { queue, .. } = &mut s.kind else {
                        return Step::Err(libc::EINVAL);
                    };
                    let Some((src, p)) = (if peek {
                        queue.front().cloned()
                    } else {
                        queue.pop_front()
                    }) else {
                        return if s.rd_shut {
                            Step::Done(0)
                        } else if nb(s) || dontwait {
                            Step::Err(libc::EAGAIN)
                        } else {
                            Step::Block(s.a(), s.opts.rcvtimeo)
                        };
                    };
                    let mut pos = 0usize;
                    let mut data = p.clone();
                    for b in bufs.iter_mut() {
                        if data.is_empty() {
                            break;
                        }
                        let n = data.copy_to(b);
                        data.advance(n);
                        pos += n;
                    }
                    c.api_copy_out_bytes += pos as u64;
                    got = if flags & libc::MSG_TRUNC != 0 {
                        p.len()
                    } else {
                        pos
                    };
                    if let Some((a, l)) = from {
                        // SAFETY: the caller's address buffer.
                        unsafe { write_addr(src, a, l) };
                    }
                    if !peek {
                        c.received_bytes += pos as u64;
                        c.recv_calls += 1;
                        s.rec.received_bytes += pos as u64;
                        s.rec.recv_calls += 1;
                    }
                    sync(e, s);
                    Step::Done(if p.len() > pos { libc::MSG_TRUNC } else { 0 })
                }
                Kind::Tcp(Tcp::Connected(h)) => {
                    let h = *h;
                    if s.rd_shut {
                        return Step::Done(0);
                    }
                    let mut any_eof = false;
                    let mut err = None;
                    // Fill the buffers in order from `got`.
                    let mut skip = got;
                    for b in bufs.iter_mut() {
                        if skip >= b.len() {
                            skip -= b.len();
                            continue;
                        }
                        let target = &mut b[skip..];
                        skip = 0;
                        let r = if peek {
                            // A peek copies from the start of the queue each time.
                            e.iface.peek_slice(h, target)
                        } else {
                            e.iface.recv_slice(h, target)
                        };
                        match r {
                            Ok(0) => {
                                any_eof = true;
                                break;
                            }
                            Ok(n) => {
                                got += n;
                                c.api_copy_out_bytes += n as u64;
                                if n < target.len() || peek {
                                    break;
                                }
                            }
                            Err(IfaceError::WouldBlock) => break,
                            Err(IfaceError::Tcp(TcpError::Reset)) => {
                                err = Some(libc::ECONNRESET);
                                break;
                            }
                            Err(IfaceError::Tcp(TcpError::TimedOut)) => {
                                err = Some(libc::ETIMEDOUT);
                                break;
                            }
                            Err(IfaceError::Tcp(TcpError::NotConnected)) => {
                                err = Some(libc::ENOTCONN);
                                break;
                            }
                            Err(_) => {
                                any_eof = true;
                                break;
                            }
                        }
                    }
                    // A read that opened the window owes the peer an update now.
                    if !peek && got > 0 && e.iface.tcp(h).is_ok_and(|t| t.poll_at() == Some(0)) {
                        pumped = true;
                    }
                    sync(e, s);
                    if let Some(x) = err {
                        if got > 0 {
                            return Step::Done(0);
                        }
                        // The error is reported once, as the kernel's sk_err; then end of stream.
                        if s.err_taken {
                            return Step::Done(0);
                        }
                        s.err_taken = true;
                        s.so_error = 0;
                        return Step::Err(x);
                    }
                    if any_eof || got == room || (got > 0 && !waitall) {
                        return Step::Done(0);
                    }
                    if nb(s) || dontwait {
                        return if got > 0 {
                            Step::Done(0)
                        } else {
                            Step::Err(libc::EAGAIN)
                        };
                    }
                    Step::Block(s.a(), s.opts.rcvtimeo)
                }
                Kind::Tcp(Tcp::Connecting(_)) => {
                    if nb(s) || dontwait {
                        Step::Err(libc::EAGAIN)
                    } else {
                        Step::Block(s.a(), s.opts.rcvtimeo)
                    }
                }
                Kind::Tcp(_) => Step::Err(libc::ENOTCONN),
            }
        });
        let step = step.unwrap_or_else(Step::Err);
        match step {
            Step::Done(mf) => {
                if pumped {
                    pump(&mut w);
                }
                let tcp = matches!(
                    w.socks.get(id).and_then(Option::as_ref).map(|s| &s.kind),
                    Some(Kind::Tcp(_))
                );
                if tcp && !peek {
                    let _ = with(&mut w, id, |_, s, c| {
                        c.received_bytes += got as u64;
                        c.recv_calls += 1;
                        s.rec.received_bytes += got as u64;
                        s.rec.recv_calls += 1;
                    });
                }
                return Some((got as isize, mf));
            }
            Step::Err(e) => return Some((fail::<isize>(e), 0)),
            Step::Block(a, timeo) => {
                if pumped {
                    pump(&mut w);
                    pumped = false;
                }
                drop(w);
                let d = *dl.get_or_insert_with(|| deadline(timeo));
                let r = wait(a, libc::POLLIN, d);
                w = lock();
                if let Err(e) = r {
                    if got > 0 {
                        return Some((got as isize, 0));
                    }
                    return Some((fail::<isize>(e), 0));
                }
            }
        }
    }
}

/// `sendfile` from a file into a stack socket. From a regular file into a TCP socket of the
/// stack process the file is read straight into segments ([`sendfile_in_place`]: one copy,
/// the kernel's `preadv` into free line slots of the stack's memory); from other files, into
/// UDP sockets and in forked children it is read into a buffer and sent from there
/// ([`sendfile_copy`]).
///
/// # Safety
/// The C contract of `sendfile`.
pub unsafe fn sendfile(out: c_int, inf: c_int, off: *mut i64, count: usize) -> Option<isize> {
    if !is_stack(out) {
        return None;
    }
    if child() && !sendfile_copies() {
        if let Some(_g) = Guard::enter() {
            // SAFETY: the caller's contract.
            if let Some(r) = unsafe { proxy::sendfile(out, inf, off, count) } {
                return Some(r);
            }
        }
    } else if !sendfile_copies() {
        // SAFETY: the caller's contract.
        if let Some(r) = unsafe { sendfile_in_place(out, inf, off, count, None, true, false) } {
            return Some(r);
        }
    }
    // SAFETY: the caller's contract.
    unsafe { sendfile_copy(out, inf, off, count) }
}

/// Reads sendfile's settings from the environment (`HICAMP_STACK_SENDFILE`,
/// `HICAMP_SENDFILE_CACHE`) when the stack starts, before an application may clear it.
pub(super) fn sendfile_settings() {
    sendfile_copies();
    drop(filecache::cache());
}

/// `HICAMP_STACK_SENDFILE=copy` keeps every `sendfile` on the buffered path (the way it was
/// before the in-place one: for same-run comparisons).
fn sendfile_copies() -> bool {
    static COPY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COPY.get_or_init(|| std::env::var_os("HICAMP_STACK_SENDFILE").is_some_and(|v| v == "copy"))
}

/// The most one step of [`sendfile_in_place`] reads under the stack's lock before it lets
/// the frames out and the stack thread in.
const SENDFILE_STEP: usize = 1 << 20;

/// The kernel's cap on one transfer (`MAX_RW_COUNT`).
pub(super) const MAX_RW_COUNT: usize = 0x7fff_f000;

/// `sendfile` from a regular file into a TCP socket of the stack process, in place: the
/// kernel's `preadv` writes the file's bytes into free line slots of the stack's memory
/// (`hicamp::Memory::segment_from_vectored_reader`: lines deduplicated where they lie, no copy by
/// hicamp), and the segment is queued as a snapshot. Nothing is counted at the socket API
/// (`api_copy_in_bytes`) or below it; the bytes count in `sendfile_bytes`. A range read
/// before from the same unchanged file is queued from the sendfile cache ([`filecache`]):
/// no read, no intern (`sendfile_cache.hit_bytes`; `read_bytes` counts what was read).
///
/// Reads at most what the send buffer takes, so the offset (`*off`, or the file position
/// when `off` is null, moved with `lseek`) advances by exactly what was queued: a full
/// non-blocking socket gives `EAGAIN` (or what was queued before it filled) and moves nothing
/// more; a blocking one waits for room until `count` is queued. A short file ends the call with what
/// was there (0 at its end); a read error after some bytes returns those, before any its errno.
/// `None` (the copying path decides) for other files, a pending or UDP socket, or `count` 0.
///
/// `known`: the file's key from the caller's `fstat` (a forked child's; else this call's).
/// `sigpipe`: `EPIPE` raises `SIGPIPE` (not for a child's request). `phased`: a small range
/// is queued at the line phase of the bytes written since the last sendfile (a child's
/// posted header and page leave in one frame).
///
/// # Safety
/// The C contract of `sendfile`.
unsafe fn sendfile_in_place(
    out: c_int,
    inf: c_int,
    off: *mut i64,
    count: usize,
    known: Option<(filecache::FileId, filecache::Version)>,
    sigpipe: bool,
    phased: bool,
) -> Option<isize> {
    if count == 0 {
        return None;
    }
    // The cache's key (from the caller's `fstat` when known: a forked child's, made just
    // before it posted the call), and the clock the file's times are compared with (a file
    // changed in the last second is not kept: see `filecache`).
    let (file, version) = match known {
        Some(k) => k,
        None => {
            // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `st` is a valid stat buffer.
            if unsafe { libc::fstat(inf, &mut st) } != 0
                || st.st_mode & libc::S_IFMT != libc::S_IFREG
            {
                return None;
            }
            filecache::of_stat(&st)
        }
    };
    let read_at = filecache::now_ns();
    let _g = enter(out)?;
    let mut w = lock();
    if w.pending.contains_key(&out) {
        return None;
    }
    let id = sock_id(&w, out).ok()?;
    if !matches!(
        w.socks.get(id).and_then(Option::as_ref).map(|s| &s.kind),
        Some(Kind::Tcp(_))
    ) {
        return None;
    }
    let start = if off.is_null() {
        // SAFETY: lseek on the caller's descriptor (no change of position).
        let p = unsafe { libc::lseek(inf, 0, libc::SEEK_CUR) };
        if p < 0 {
            return None;
        }
        p
    } else {
        // SAFETY: the caller's offset.
        let p = unsafe { std::ptr::read(off) };
        if p < 0 {
            return Some(fail::<isize>(libc::EINVAL));
        }
        p
    };
    let count = count.min(MAX_RW_COUNT);
    let mut sent = 0usize;
    let mut dl: Option<Option<Instant>> = None;
    loop {
        use SendStep as Step;
        let step = with(&mut w, id, |e, s, c| {
            let h = match s.kind {
                Kind::Tcp(Tcp::Connected(h)) => h,
                Kind::Tcp(Tcp::Connecting(_)) => {
                    return if nb(s) {
                        Step::Err(libc::EAGAIN)
                    } else {
                        Step::Block(s.a(), s.opts.sndtimeo)
                    };
                }
                _ => return Step::Err(libc::EPIPE),
            };
            if s.so_error != 0 && !s.err_taken {
                s.err_taken = true;
                return Step::Err(std::mem::take(&mut s.so_error));
            }
            if s.wr_shut {
                return Step::Err(libc::EPIPE);
            }
            let space = match e.iface.tcp(h) {
                Ok(t) => t.config().send_buf.saturating_sub(t.send_queue()),
                Err(_) => return Step::Err(libc::EPIPE),
            };
            let whole = (count - sent).min(SENDFILE_STEP);
            let want = space.min(whole);
            let r = if want == 0 {
                // Full: a zero-length segment (no line) whose send fails with WouldBlock
                // tells the stack that a writer waits (a writable event follows).
                e.mem
                    .zeroed(1)
                    .map(Payload::from_segment)
                    .map_err(|_| ReadStop::Memory)
            } else {
                let at = start + sent as i64;
                // A range the send buffer did not cut is looked up in (and kept by) the
                // cache: a hit is queued as it is, with no read and no intern.
                let cached = want == whole;
                let mut fc = filecache::cache();
                // A forked child's small range behind bytes written since the last sendfile
                // (an HTTP header, posted just before it: the server thread's one pass sends
                // both in one frame) is kept at their line phase: then that frame shares the
                // range's lines instead of copying them (segstack keeps the phase of a
                // frame's first byte; only the line where the two meet is assembled). Built
                // once per cached range. In the stack process's own calls only while sends
                // defer (the header is still queued: both leave in the pass of its next
                // wait); without deferral its header leaves in a frame of its own first, and
                // a body starting off a line would cost that line's copy in the next.
                // (A range read at a phase costs no copy: [`read_range_at`]; with the cache off
                // too.)
                let phased = (phased && cached && fc.enabled()) || super::deferring();
                let phase = if phased && sent == 0 && want <= PHASED_MAX {
                    let line = e.mem.line_size().max(1) as u64;
                    (s.rec.sent_bytes.wrapping_sub(s.sendfile_end) % line) as u32
                } else {
                    0
                };
                let range = (at, want as u64, phase);
                let hit = if cached {
                    fc.get_at(file, version, range)
                } else {
                    None
                };
                match hit {
                    Some((seg, kept)) => {
                        fc.stats.hit_bytes += seg.len() - u64::from(kept);
                        drop(fc);
                        let n = (seg.len() - u64::from(kept)) as usize;
                        Ok(Payload::new(seg, u64::from(kept), n))
                    }
                    None => {
                        drop(fc);
                        match read_range_at(&e.mem, inf, at, want, phase) {
                            Ok(r) => {
                                if r.segment.len() <= u64::from(phase) {
                                    // End of file.
                                    return Step::Done;
                                }
                                let seg = r.segment;
                                let off = u64::from(phase);
                                if cached && r.stopped.is_none() {
                                    filecache::cache().put_at(
                                        file,
                                        version,
                                        (at, want as u64, off as u32),
                                        &seg,
                                        read_at,
                                    );
                                }
                                let n = (seg.len() - off) as usize;
                                Ok(Payload::new(seg, off, n))
                            }
                            Err(hicamp::ReadError::Read(err)) => {
                                Err(ReadStop::Errno(err.raw_os_error().unwrap_or(libc::EIO)))
                            }
                            Err(hicamp::ReadError::Memory(_)) => Err(ReadStop::Memory),
                        }
                    }
                }
            };
            let payload = match r {
                Ok(p) => p,
                Err(_) if sent > 0 => return Step::Done,
                Err(ReadStop::Errno(x)) => return Step::Err(x),
                Err(ReadStop::Memory) => return Step::Err(libc::ENOBUFS),
            };
            let len = if want == 0 { 0 } else { payload.len() };
            match e.iface.send(h, payload) {
                Ok(n) if want > 0 => {
                    c.sendfile_bytes += n as u64;
                    sent += n;
                    if n < len || len < want || sent == count {
                        // Short (end of file, a read error or a full memory: the next call
                        // tells), or all of it.
                        sync(e, s);
                        Step::Done
                    } else {
                        Step::More
                    }
                }
                Ok(_) | Err(IfaceError::WouldBlock) => {
                    sync(e, s);
                    // A blocking socket waits for room as the kernel's sendfile does (a
                    // timeout or a signal then returns what was queued).
                    if nb(s) && sent > 0 {
                        Step::Done
                    } else if nb(s) {
                        Step::Err(libc::EAGAIN)
                    } else {
                        Step::Block(s.a(), s.opts.sndtimeo)
                    }
                }
                Err(err) => Step::Err(send_errno(s, &err)),
            }
        });
        let step = match step {
            Ok(s) => s,
            Err(e) => Step::Err(e),
        };
        // sendfile has no MSG_NOSIGNAL: a broken connection raises SIGPIPE, as the kernel's
        // (in the caller's process: not for a child's posted call).
        match after_step(w, step, sent, &mut dl, sigpipe) {
            AfterStep::Again(g) => w = g,
            AfterStep::Stop(g) => {
                w = g;
                break;
            }
            AfterStep::Fail(e) => return Some(fail::<isize>(e)),
        }
    }
    let _ = with(&mut w, id, |_, s, c| {
        c.sent_bytes += sent as u64;
        c.send_calls += 1;
        s.rec.sent_bytes += sent as u64;
        s.rec.send_calls += 1;
        s.sendfile_end = s.rec.sent_bytes;
    });
    pump_send(&mut w, sent);
    drop(w);
    let end = start + sent as i64;
    if off.is_null() {
        // SAFETY: lseek on the caller's descriptor.
        unsafe { libc::lseek(inf, end, libc::SEEK_SET) };
    } else {
        // SAFETY: the caller's offset.
        unsafe { std::ptr::write(off, end) };
    }
    Some(sent as isize)
}

/// The longest file range [`sendfile_in_place`] queues at the line phase of the bytes before
/// it (one TSO frame's worth: longer ones share every frame but the first anyway).
const PHASED_MAX: usize = 64 << 10;

/// [`read_range`] with `phase` zero bytes in front, so that the file's bytes start at that
/// line phase: the zeros are written into the first slots, then `preadv` reads the file
/// behind them (no copy: `sendfile_cache.phased_copy_bytes` stays 0). The segment holds
/// `phase` more bytes than were read; `read_bytes` counts the file's only.
fn read_range_at(
    mem: &hicamp::Memory,
    inf: c_int,
    at: i64,
    want: usize,
    phase: u32,
) -> Result<hicamp::ReadSegment, hicamp::ReadError> {
    if phase == 0 {
        return read_range(mem, inf, at, want);
    }
    let mut pos = 0i64;
    let mut zeros = phase as usize;
    let mut iov: Vec<libc::iovec> = Vec::new();
    let r = mem.segment_from_vectored_reader(want as u64 + u64::from(phase), |bufs| {
        let mut filled = 0usize;
        iov.clear();
        for b in bufs.iter_mut() {
            let z = zeros.min(b.len());
            if z > 0 {
                b[..z].fill(0);
                zeros -= z;
                filled += z;
            }
            if z < b.len() && iov.len() < 1024 {
                let rest = &mut b[z..];
                iov.push(libc::iovec {
                    iov_base: rest.as_mut_ptr().cast(),
                    iov_len: rest.len(),
                });
            }
        }
        if iov.is_empty() {
            return Ok(filled);
        }
        // SAFETY: each iovec describes a writable part of a buffer borrowed for the call (at
        // most IOV_MAX of them).
        let n = unsafe { libc::preadv(inf, iov.as_ptr(), iov.len() as c_int, at + pos) };
        if n < 0 {
            if filled > 0 {
                return Ok(filled);
            }
            return Err(std::io::Error::last_os_error());
        }
        pos += n as i64;
        Ok(filled + n as usize)
    });
    if let Ok(r) = &r {
        let mut fc = filecache::cache();
        fc.stats.read_bytes += r.counts.bytes.saturating_sub(u64::from(phase));
        fc.stats.read_calls += r.counts.reads;
    }
    r
}

/// A forked child's posted `sendfile` ([`proxy`]), in the stack process: `count` bytes of
/// `inf` (the child's file, passed with the request) at `at` into the socket lent as `out`,
/// read in place or queued from the sendfile cache under the child's key (its `fstat` of
/// the file). Non-blocking (as every request of a child), no `SIGPIPE` (the child's call
/// returned already). `None`: not a TCP socket of the stack's.
pub(super) fn sendfile_posted(
    out: c_int,
    inf: c_int,
    at: i64,
    count: usize,
    key: (filecache::FileId, filecache::Version),
) -> Option<isize> {
    let mut off = at;
    // SAFETY: `off` is a valid offset for the call; `inf` a descriptor this process holds.
    unsafe { sendfile_in_place(out, inf, &mut off, count, Some(key), false, true) }
}

/// `want` bytes of `inf` at `at`, `preadv` straight into line slots of `mem`; counted in the
/// sendfile cache's `read_bytes`/`read_calls`. A memory too full for them empties the sendfile
/// cache (its snapshots may hold the lines) and tries once more.
pub(super) fn read_range(
    mem: &hicamp::Memory,
    inf: c_int,
    at: i64,
    want: usize,
) -> Result<hicamp::ReadSegment, hicamp::ReadError> {
    let mut retried = false;
    loop {
        let mut pos = 0i64;
        // One `preadv` fills every run of free slots of a chunk (scattered reused slots made
        // 16-26 `pread`s of a 4 KiB page).
        let r = mem.segment_from_vectored_reader(want as u64, |bufs| {
            let cnt = bufs.len().min(1024) as c_int;
            // SAFETY: `IoSliceMut` is ABI-compatible with `struct iovec` on Unix; the first
            // `cnt` (at most IOV_MAX) describe writable buffers borrowed for the call.
            let n = unsafe { libc::preadv(inf, bufs.as_mut_ptr().cast(), cnt, at + pos) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            pos += n as i64;
            Ok(n as usize)
        });
        let full = match &r {
            Ok(r) => matches!(r.stopped, Some(hicamp::ReadError::Memory(_))),
            Err(e) => matches!(e, hicamp::ReadError::Memory(_)),
        };
        if let Ok(r) = &r {
            let mut fc = filecache::cache();
            fc.stats.read_bytes += r.counts.bytes;
            fc.stats.read_calls += r.counts.reads;
        }
        if full && !retried && filecache::cache().clear() > 0 {
            retried = true;
            continue;
        }
        return r;
    }
}

/// Why [`sendfile_in_place`] read nothing.
enum ReadStop {
    Errno(c_int),
    Memory,
}

/// `sendfile` through a buffer: the file is read into it, then sent (the one counted copy
/// into segments, `api_copy_in_bytes`). For files that are not regular, UDP sockets and
/// forked children (whose sends cross the control channel).
///
/// # Safety
/// The C contract of `sendfile`.
unsafe fn sendfile_copy(out: c_int, inf: c_int, off: *mut i64, count: usize) -> Option<isize> {
    let mut buf = vec![0u8; count.min(1 << 20)];
    let mut pos = if off.is_null() {
        None
    } else {
        // SAFETY: the caller's offset.
        Some(unsafe { std::ptr::read(off) })
    };
    let mut total = 0usize;
    while total < count {
        let want = (count - total).min(buf.len());
        // SAFETY: `buf` has `want` writable bytes.
        let n = match pos {
            // SAFETY: `buf` has `want` writable bytes.
            Some(p) => unsafe { libc::pread(inf, buf.as_mut_ptr().cast(), want, p) },
            // SAFETY: as above.
            None => unsafe { real::read(inf, buf.as_mut_ptr().cast(), want) },
        };
        if n < 0 {
            if total > 0 {
                break;
            }
            return Some(-1);
        }
        if n == 0 {
            break;
        }
        let n = n as usize;
        let r = if child() {
            let _g = Guard::enter()?;
            proxy::send(out, &[&buf[..n]], 0, None, true)?
        } else {
            send(out, &[&buf[..n]], 0, None)?
        };
        if r < 0 {
            if total > 0 {
                break;
            }
            return Some(r);
        }
        let r = r as usize;
        total += r;
        if let Some(p) = pos.as_mut() {
            *p += r as i64;
        } else if r < n {
            // Give back what was read but not sent.
            // SAFETY: lseek on the caller's descriptor.
            unsafe { libc::lseek(inf, -((n - r) as i64), libc::SEEK_CUR) };
        }
        if r < n {
            break;
        }
    }
    if let Some(p) = pos {
        // SAFETY: the caller's offset.
        unsafe { std::ptr::write(off, p) };
    }
    if child() {
        // The stack process counted the bytes as sendfile's.
    } else if let Some(_g) = Guard::enter() {
        lock().counters.sendfile_bytes += total as u64;
    }
    Some(total as isize)
}

// ---- descriptors ---------------------------------------------------------------------------

/// Forgets `fd` as a descriptor of its socket; closes the socket with its last descriptor, or,
/// when copies of its A end may live in forked children, when the last of them closes (the
/// kernel counts them: B hangs up then; see [`reap_orphans`]).
fn release(w: &mut World, fd: c_int) {
    if w.pending.remove(&fd).is_some() {
        mark_pending(fd, false);
        return;
    }
    let Some(id) = w.fds.remove(&fd) else {
        return;
    };
    unmark(fd);
    super::ready::fd_closed(w, fd);
    let (last, shared) = {
        let Some(s) = w.socks.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        s.fds.retain(|&f| f != fd);
        (s.fds.is_empty(), s.shared())
    };
    if !last {
        return;
    }
    if shared {
        orphan(w, id);
        return;
    }
    finalize(w, id);
}

/// A socket no descriptor of this process refers to any more, whose A end a child may still
/// hold: it lives until B hangs up (every copy of A is closed).
pub(super) fn orphan(w: &mut World, id: usize) {
    let Some(s) = w.socks.get_mut(id).and_then(Option::as_mut) else {
        return;
    };
    if s.orphan {
        return;
    }
    s.orphan = true;
    let mut ev = libc::epoll_event {
        events: 0, // EPOLLHUP is always reported
        u64: id as u64,
    };
    let ep = ORPHANS.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: a valid epoll_event; both descriptors are ours.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.b, &mut ev) } != 0 {
        // No watch: close it now rather than never.
        finalize(w, id);
    }
}

/// True when every copy of the socket's A end is closed (B hangs up). A socket whose B end
/// the stack shut down itself (a reset) hangs up at once: it is over in any case.
fn hung_up(b: c_int) -> bool {
    let mut p = libc::pollfd {
        fd: b,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let r = unsafe { real::poll(&mut p, 1, 0) };
    r == 1 && p.revents & libc::POLLHUP != 0
}

/// The stack thread, when the orphan set is readable: closes orphans whose every A is closed.
pub(super) fn reap_orphans(w: &mut World) {
    let ep = ORPHANS.load(std::sync::atomic::Ordering::Relaxed);
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
    // SAFETY: `evs` has room for 64 events; no wait.
    let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 64, 0) };
    for ev in evs.iter().take(n.max(0) as usize) {
        let id = ev.u64 as usize;
        let done = w
            .socks
            .get(id)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.orphan && s.fds.is_empty() && hung_up(s.b));
        if done {
            finalize(w, id);
        }
    }
}

/// Closes the stack side of a socket: its connection (FIN, or a reset under `SO_LINGER` 0),
/// its listener or port, and its B end.
fn finalize(w: &mut World, id: usize) {
    let Some(mut s) = w.socks.get_mut(id).and_then(Option::take) else {
        return;
    };
    if s.ino != 0 && w.inos.get(&s.ino) == Some(&id) {
        w.inos.remove(&s.ino);
    }
    if s.orphan {
        let ep = ORPHANS.load(std::sync::atomic::Ordering::Relaxed);
        // SAFETY: removing our own descriptor from our own epoll set.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, s.b, std::ptr::null_mut()) };
    }
    if super::debug() {
        let what = format!("debug: release {:?}", s.kind);
        note(w, what);
    }
    if let Some(e) = w.engine.as_mut() {
        match &mut s.kind {
            Kind::Tcp(Tcp::Connected(h)) | Kind::Tcp(Tcp::Connecting(h)) => {
                let h = *h;
                s.rec.tcp = super::tcp_summary(e, h);
                if s.opts
                    .linger
                    .is_some_and(|l| l.l_onoff != 0 && l.l_linger == 0)
                {
                    let _ = e.iface.abort(h);
                } else {
                    let _ = e.iface.close(h);
                    e.closing.push(h);
                }
            }
            Kind::Tcp(Tcp::Listening(l, _, q)) => {
                for h in q.drain(..) {
                    let _ = e.iface.abort(h);
                }
                let _ = e.iface.close(*l);
            }
            Kind::Udp { h: Some(h), .. } => {
                let _ = e.iface.close(*h);
            }
            _ => {}
        }
    }
    internal(s.b, false);
    // SAFETY: our own descriptor.
    unsafe { real::close(s.b) };
    s.rec.open = false;
    w.records.push(s.rec);
    pump(w);
}

/// `close`: the stack side first; the hook then closes the descriptor itself.
pub fn closing(fd: c_int) {
    super::inline::forget(fd);
    let Some(_g) = enter(fd) else {
        return;
    };
    if child() {
        proxy::forget(fd);
        return;
    }
    let mut w = lock();
    release(&mut w, fd);
}

/// `close_range` (not with CLOSE_RANGE_CLOEXEC): every marked descriptor in the range.
pub fn closing_range(first: u32, last: u32) {
    if !on() {
        return;
    }
    for fd in first..=last.min(super::MAX_FD as u32) {
        super::inline::forget(fd as c_int);
    }
    if child() {
        for fd in first..=last.min(super::MAX_FD as u32) {
            proxy::forget(fd as c_int);
        }
        return;
    }
    let Some(_g) = Guard::enter() else {
        return;
    };
    let mut w = lock();
    let fds: Vec<c_int> = w
        .fds
        .keys()
        .chain(w.pending.keys())
        .copied()
        .filter(|&f| f >= 0 && (first..=last).contains(&(f as u32)))
        .collect();
    for fd in fds {
        release(&mut w, fd);
    }
}

/// Before `dup2`/`dup3` onto `new`: `new` is closed by the call.
pub fn dup_onto(old: c_int, new: c_int) {
    if old != new {
        super::inline::forget(new);
        if marked(new) {
            closing(new);
        }
    }
}

/// After a successful `dup`/`dup2`/`dup3`/`F_DUPFD`: `new` is one more descriptor of `old`'s
/// socket.
pub fn duplicated(old: c_int, new: c_int) {
    if old == new || new < 0 || !marked(old) {
        return;
    }
    let Some(_g) = Guard::enter() else {
        return;
    };
    if child() {
        proxy::duplicated(old, new);
        return;
    }
    let mut w = lock();
    if w.pending.contains_key(&old) {
        // Two numbers of one kernel socket cannot both move: both stay in the kernel.
        to_kernel(&mut w, old, "dup'd before its route was decided");
        return;
    }
    if let Some(&id) = w.fds.get(&old) {
        if let Some(s) = w.socks.get_mut(id).and_then(Option::as_mut) {
            s.fds.push(new);
        }
        w.fds.insert(new, id);
        mark(new);
    }
}

/// After `fcntl(F_SETFL)` on a stack socket: its non-blocking mode.
pub fn set_nonblocking(fd: c_int, on: bool) {
    if !is_stack(fd) {
        return;
    }
    let Some(_g) = Guard::enter() else {
        return;
    };
    if child() {
        proxy::set_nonblocking(fd, on);
        return;
    }
    let mut w = lock();
    if let Ok(id) = sock_id(&w, fd) {
        let _ = with(&mut w, id, |_, s, _| s.nonblock = on);
    }
}

/// `ioctl` on a stack socket: FIONBIO, FIONREAD (SIOCINQ), SIOCOUTQ; others go to the A end.
///
/// # Safety
/// The C contract of `ioctl` for these requests (an int pointer argument).
pub unsafe fn ioctl(fd: c_int, req: libc::c_ulong, arg: libc::c_ulong) -> Option<c_int> {
    if !is_stack(fd) {
        return None;
    }
    let _g = Guard::enter()?;
    let p = arg as usize as *mut c_int;
    if child() {
        // SAFETY: the caller's int pointer.
        return unsafe { proxy::ioctl(fd, req, p) };
    }
    let mut w = lock();
    let id = sock_id(&w, fd).ok()?;
    match req {
        libc::FIONBIO => {
            if p.is_null() {
                return Some(fail(libc::EFAULT));
            }
            // SAFETY: FIONBIO's argument is an int pointer.
            let on = unsafe { std::ptr::read(p) } != 0;
            let _ = with(&mut w, id, |_, s, _| s.nonblock = on);
            None // the A end gets it too (F_GETFL shows it)
        }
        libc::FIONREAD | libc::TIOCOUTQ => {
            if p.is_null() {
                return Some(fail(libc::EFAULT));
            }
            let n = with(&mut w, id, |e, s, _| {
                sync(e, s);
                match &s.kind {
                    Kind::Tcp(Tcp::Connected(h)) => e.iface.tcp(*h).map_or(0, |t| {
                        if req == libc::FIONREAD {
                            t.recv_queue()
                        } else {
                            t.send_queue()
                        }
                    }),
                    Kind::Udp { queue, .. } if req == libc::FIONREAD => {
                        queue.front().map_or(0, |d| d.1.len())
                    }
                    _ => 0,
                }
            })
            .unwrap_or(0);
            // SAFETY: an int pointer.
            unsafe { std::ptr::write(p, n.min(c_int::MAX as usize) as c_int) };
            Some(0)
        }
        _ => None,
    }
}

/// `shutdown`.
pub fn shutdown(fd: c_int, how: c_int) -> Option<c_int> {
    let _g = enter(fd)?;
    if child() {
        return proxy::shutdown(fd, how);
    }
    let mut w = lock();
    if w.pending.contains_key(&fd) {
        return None;
    }
    let id = match sock_id(&w, fd) {
        Ok(id) => id,
        Err(e) => return Some(fail(e)),
    };
    if !(libc::SHUT_RD..=libc::SHUT_RDWR).contains(&how) {
        return Some(fail(libc::EINVAL));
    }
    let r = with(&mut w, id, |e, s, _| {
        let h = match s.kind {
            Kind::Tcp(Tcp::Connected(h)) | Kind::Tcp(Tcp::Connecting(h)) => Some(h),
            Kind::Udp { .. } => None,
            _ => return Err(libc::ENOTCONN),
        };
        if how == libc::SHUT_RD || how == libc::SHUT_RDWR {
            s.rd_shut = true;
        }
        if how == libc::SHUT_WR || how == libc::SHUT_RDWR {
            s.wr_shut = true;
            if let Some(h) = h {
                let _ = e.iface.shutdown(h);
            }
        }
        sync(e, s);
        Ok(())
    })
    .and_then(|r| r);
    pump(&mut w);
    Some(done_int(r))
}

/// `getsockname` (`peer` false) and `getpeername` (`peer` true).
///
/// # Safety
/// The C contract of `getsockname`.
pub unsafe fn name(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    peer: bool,
) -> Option<c_int> {
    if !is_stack(fd) {
        return None;
    }
    let _g = Guard::enter()?;
    if child() {
        // SAFETY: the caller's buffers.
        return unsafe { proxy::name(fd, addr, len, peer) };
    }
    let mut w = lock();
    let id = sock_id(&w, fd).ok()?;
    let a = with(&mut w, id, |e, s, _| {
        let ip = s.bound_ip;
        match &s.kind {
            Kind::Tcp(Tcp::Connected(h)) | Kind::Tcp(Tcp::Connecting(h)) => e
                .iface
                .tcp(*h)
                .map(|t| if peer { t.remote() } else { t.local() })
                .map_err(|_| libc::ENOTCONN),
            _ if peer => match &s.kind {
                Kind::Udp { peer: Some(p), .. } => Ok(*p),
                _ => Err(libc::ENOTCONN),
            },
            Kind::Tcp(Tcp::Bound(p)) => Ok(SocketAddrV4::new(ip, *p)),
            Kind::Tcp(Tcp::Listening(l, ..)) => {
                let _ = l;
                let port = s
                    .rec
                    .local
                    .as_deref()
                    .and_then(|x| x.parse::<SocketAddrV4>().ok())
                    .map_or(0, |x| x.port());
                Ok(SocketAddrV4::new(ip, port))
            }
            Kind::Udp { port, .. } => Ok(SocketAddrV4::new(ip, *port)),
            Kind::Tcp(_) => Ok(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        }
    })
    .and_then(|r| r);
    match a {
        Ok(a) => {
            // SAFETY: the caller's buffer.
            unsafe { write_addr(a, addr, len) };
            Some(0)
        }
        Err(e) => Some(fail(e)),
    }
}

fn timeval(d: Option<Duration>) -> libc::timeval {
    let d = d.unwrap_or_default();
    libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    }
}

/// Records an option of a pending socket (set on the kernel socket too).
///
/// # Safety
/// `val` points to `len` readable bytes.
unsafe fn record(
    o: &mut Opts,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> bool {
    let int = || -> Option<c_int> {
        if val.is_null() || (len as usize) < 4 {
            return None;
        }
        // SAFETY: at least 4 readable bytes.
        Some(unsafe { std::ptr::read_unaligned(val.cast::<c_int>()) })
    };
    let tv = || -> Option<Duration> {
        if val.is_null() || (len as usize) < std::mem::size_of::<libc::timeval>() {
            return None;
        }
        // SAFETY: a timeval's bytes are readable.
        let t = unsafe { std::ptr::read_unaligned(val.cast::<libc::timeval>()) };
        let d = Duration::from_secs(t.tv_sec.max(0) as u64)
            + Duration::from_micros(t.tv_usec.max(0) as u64);
        Some(d)
    };
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_REUSEADDR) => o.reuseaddr = int().unwrap_or(0) != 0,
        (libc::SOL_SOCKET, libc::SO_REUSEPORT) => o.reuseport = int().unwrap_or(0) != 0,
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => o.keepalive = int().unwrap_or(0) != 0,
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => o.sndbuf = int(),
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => o.rcvbuf = int(),
        (libc::SOL_SOCKET, libc::SO_RCVTIMEO) => {
            o.rcvtimeo = tv().filter(|d| !d.is_zero());
        }
        (libc::SOL_SOCKET, libc::SO_SNDTIMEO) => {
            o.sndtimeo = tv().filter(|d| !d.is_zero());
        }
        (libc::SOL_SOCKET, libc::SO_LINGER) => {
            if !val.is_null() && (len as usize) >= std::mem::size_of::<libc::linger>() {
                // SAFETY: a linger's bytes are readable.
                o.linger = Some(unsafe { std::ptr::read_unaligned(val.cast::<libc::linger>()) });
            }
        }
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => o.nodelay = int().unwrap_or(0) != 0,
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) => o.keepidle = int().map(|v| v.max(1) as u32),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) => o.keepintvl = int().map(|v| v.max(1) as u32),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) => o.keepcnt = int().map(|v| v.max(1) as u32),
        _ => return false,
    }
    true
}

/// `setsockopt`.
///
/// # Safety
/// The C contract of `setsockopt`.
pub unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> Option<c_int> {
    let _g = enter(fd)?;
    if child() {
        // SAFETY: the caller's option bytes.
        return unsafe { proxy::setsockopt(fd, level, name, val, len) };
    }
    let mut w = lock();
    if let Some(p) = w.pending.get_mut(&fd) {
        // SAFETY: the caller's option bytes.
        unsafe { record(&mut p.opts, level, name, val, len) };
        return None; // the kernel socket takes it too (its answer is the answer)
    }
    let id = sock_id(&w, fd).ok()?;
    if (level == libc::SOL_SOCKET || level == libc::IPPROTO_TCP) && val.is_null() {
        return Some(fail(libc::EFAULT));
    }
    let known = with(&mut w, id, |e, s, _| {
        // SAFETY: the caller's option bytes.
        let ok = unsafe { record(&mut s.opts, level, name, val, len) };
        if ok {
            if let Kind::Tcp(Tcp::Connected(h)) | Kind::Tcp(Tcp::Connecting(h)) = s.kind {
                let _ = e.iface.set_nagle(h, !s.opts.nodelay);
                let ka = s.opts.keepalive.then(|| keepalive(&s.opts));
                let _ = e.iface.set_keepalive(h, ka);
            }
        }
        ok
    })
    .unwrap_or(false);
    if known {
        if matches!(name, libc::SO_SNDBUF | libc::SO_RCVBUF) && level == libc::SOL_SOCKET {
            note(
                &mut w,
                "SO_SNDBUF/SO_RCVBUF: recorded; the stack's buffers keep their size".into(),
            );
        }
        return Some(0);
    }
    note(
        &mut w,
        format!(
            "setsockopt(level {level}, option {name}): not supported by the stack (ENOPROTOOPT)"
        ),
    );
    Some(fail(libc::ENOPROTOOPT))
}

/// `getsockopt`.
///
/// # Safety
/// The C contract of `getsockopt`.
pub unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Option<c_int> {
    if !is_stack(fd) {
        return None;
    }
    let _g = Guard::enter()?;
    if val.is_null() || len.is_null() {
        return Some(fail(libc::EFAULT));
    }
    if child() {
        // SAFETY: the caller's buffers.
        return unsafe { proxy::getsockopt(fd, level, name, val, len) };
    }
    let mut w = lock();
    let id = sock_id(&w, fd).ok()?;
    enum V {
        Int(c_int),
        Tv(libc::timeval),
        Linger(libc::linger),
        Info(Box<libc::tcp_info>),
        No,
    }
    let v = with(&mut w, id, |e, s, _| {
        sync(e, s);
        let b = |x: bool| V::Int(c_int::from(x));
        let tcp = matches!(s.kind, Kind::Tcp(_));
        match (level, name) {
            (libc::SOL_SOCKET, libc::SO_ERROR) => {
                s.err_taken = s.so_error != 0 || s.err_taken;
                V::Int(std::mem::take(&mut s.so_error))
            }
            (libc::SOL_SOCKET, libc::SO_TYPE) => V::Int(if tcp {
                libc::SOCK_STREAM
            } else {
                libc::SOCK_DGRAM
            }),
            (libc::SOL_SOCKET, libc::SO_DOMAIN) => V::Int(libc::AF_INET),
            (libc::SOL_SOCKET, libc::SO_PROTOCOL) => V::Int(if tcp {
                libc::IPPROTO_TCP
            } else {
                libc::IPPROTO_UDP
            }),
            (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => {
                b(matches!(s.kind, Kind::Tcp(Tcp::Listening(..))))
            }
            (libc::SOL_SOCKET, libc::SO_REUSEADDR) => b(s.opts.reuseaddr),
            (libc::SOL_SOCKET, libc::SO_REUSEPORT) => b(s.opts.reuseport),
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => b(s.opts.keepalive),
            (libc::SOL_SOCKET, libc::SO_SNDBUF) => {
                V::Int(e.iface.config().tcp.send_buf.min(c_int::MAX as usize) as c_int)
            }
            (libc::SOL_SOCKET, libc::SO_RCVBUF) => {
                V::Int(e.iface.config().tcp.recv_buf.min(c_int::MAX as usize) as c_int)
            }
            (libc::SOL_SOCKET, libc::SO_RCVTIMEO) => V::Tv(timeval(s.opts.rcvtimeo)),
            (libc::SOL_SOCKET, libc::SO_SNDTIMEO) => V::Tv(timeval(s.opts.sndtimeo)),
            (libc::SOL_SOCKET, libc::SO_LINGER) => {
                V::Linger(s.opts.linger.unwrap_or(libc::linger {
                    l_onoff: 0,
                    l_linger: 0,
                }))
            }
            (libc::IPPROTO_TCP, libc::TCP_NODELAY) if tcp => b(s.opts.nodelay),
            (libc::IPPROTO_TCP, libc::TCP_MAXSEG) if tcp => V::Int(match s.kind {
                Kind::Tcp(Tcp::Connected(h)) => {
                    e.iface.tcp(h).map_or(536, |t| t.send_mss()) as c_int
                }
                _ => c_int::from(e.iface.config().tcp.mss),
            }),
            (libc::IPPROTO_TCP, libc::TCP_INFO) if tcp => {
                // SAFETY: an all-zero tcp_info is valid.
                let mut i: Box<libc::tcp_info> = Box::new(unsafe { std::mem::zeroed() });
                if let Kind::Tcp(Tcp::Connected(h) | Tcp::Connecting(h)) = s.kind {
                    if let Ok(t) = e.iface.tcp(h) {
                        use segstack::tcp::State as S;
                        i.tcpi_state = match t.state() {
                            S::Established => 1,
                            S::SynSent => 2,
                            S::SynReceived => 3,
                            S::FinWait1 => 4,
                            S::FinWait2 => 5,
                            S::TimeWait => 6,
                            S::Closed => 7,
                            S::CloseWait => 8,
                            S::LastAck => 9,
                            S::Closing => 11,
                        };
                        i.tcpi_snd_mss = t.send_mss() as u32;
                        i.tcpi_rto = (t.rto_ns() / 1000) as u32;
                        i.tcpi_rtt = t.srtt_ns().map_or(0, |r| (r / 1000) as u32);
                        i.tcpi_snd_cwnd = (t.cwnd() / t.send_mss().max(1)) as u32;
                        i.tcpi_total_retrans = t.stats().retransmits as u32;
                    }
                } else if let Kind::Tcp(Tcp::Listening(..)) = s.kind {
                    i.tcpi_state = 10;
                }
                V::Info(i)
            }
            _ => V::No,
        }
    })
    .unwrap_or(V::No);
    // SAFETY: the caller's socklen_t.
    let room = unsafe { std::ptr::read(len) } as usize;
    let put = |bytes: &[u8]| {
        let n = room.min(bytes.len());
        // SAFETY: `room` writable bytes at `val` (the caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), val.cast::<u8>(), n) };
        // SAFETY: the caller's socklen_t.
        unsafe { std::ptr::write(len, n as socklen_t) };
    };
    fn raw<T>(v: &T) -> &[u8] {
        // SAFETY: a plain C struct's bytes (no padding read as anything but bytes).
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
    }
    match v {
        V::Int(x) => put(&x.to_ne_bytes()),
        V::Tv(t) => put(raw(&t)),
        V::Linger(l) => put(raw(&l)),
        V::Info(i) => put(raw(&*i)),
        V::No => {
            note(
                &mut w,
                format!("getsockopt(level {level}, option {name}): not supported by the stack (ENOPROTOOPT)"),
            );
            return Some(fail(libc::ENOPROTOOPT));
        }
    }
    Some(0)
}
