//! What the hooks and the process handlers tell the account: transfers, sockets born and
//! closed, exit, exec, signals and fork.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;

pub use super::account::TERM_DONE;
use super::account::{account, current, Account, ACCOUNT, SIGNALLED, TERMINATING};
use super::Dir;
use crate::fdtable::{traced, FdEntry, Kind, Origin, TABLE};
use crate::{guard, sys};

/// The entry for a descriptor the shim has not seen born: ask the kernel.
fn found_entry(fd: i32) -> FdEntry {
    match sys::probe(fd) {
        None => FdEntry::kernel(Kind::NotSocket, false),
        Some((family, ty)) => {
            let conn = traced(family, ty).then(|| {
                let c = account().new_conn(family, ty, Origin::Found, fd);
                let a = (sys::sock_addr(fd, false), sys::sock_addr(fd, true));
                c.connected.store(a.1.is_some(), Relaxed);
                *c.addrs.lock() = a;
                c
            });
            FdEntry::kernel(Kind::Socket { family, ty, conn }, false)
        }
    }
}

/// A transfer finished: `ret` is the call's result (bytes, or -1), `captured` the payload bytes
/// `copy` appends (at most `ret`), or `direct` holds in place. `uncaptured_kind` says where the bytes not captured went.
pub fn transfer(
    fd: i32,
    dir: Dir,
    ret: isize,
    captured: usize,
    direct: Option<&[u8]>,
    copy: impl FnOnce(&mut Vec<u8>),
    uncaptured: Uncaptured,
) {
    let acct = account();
    if ret < 0 {
        let traced = TABLE.with(fd, |e| e.conn().is_some()).unwrap_or(false);
        if traced {
            match dir {
                Dir::Send => acct.send_errors.fetch_add(1, Relaxed),
                Dir::Recv => acct.recv_errors.fetch_add(1, Relaxed),
            };
        }
        return;
    }
    let total = ret as u64;
    let captured = captured.min(ret as usize);
    let did = TABLE.with_or_insert(
        fd,
        || found_entry(fd),
        |e| {
            let Some(c) = e.conn() else { return false };
            let (bytes, calls, cap) = match dir {
                Dir::Send => (&c.sent, &c.send_calls, &acct.captured_sent),
                Dir::Recv => (&c.received, &c.recv_calls, &acct.captured_received),
            };
            bytes.fetch_add(total, Relaxed);
            calls.fetch_add(1, Relaxed);
            match dir {
                Dir::Send => {
                    acct.sent_bytes.fetch_add(total, Relaxed);
                    acct.send_calls.fetch_add(1, Relaxed);
                }
                Dir::Recv => {
                    acct.received_bytes.fetch_add(total, Relaxed);
                    acct.recv_calls.fetch_add(1, Relaxed);
                }
            }
            let rest = total - captured as u64;
            if rest > 0 {
                acct.uncaptured.fetch_add(rest, Relaxed);
                match uncaptured {
                    Uncaptured::Sendfile => acct.sendfile_bytes.fetch_add(rest, Relaxed),
                    Uncaptured::Splice => acct.splice_bytes.fetch_add(rest, Relaxed),
                    Uncaptured::Other => 0,
                };
            }
            if captured > 0 {
                cap.fetch_add(captured as u64, Relaxed);
                true
            } else {
                false
            }
        },
    );
    // The payload's bookkeeping runs without the fd table's lock.
    if did {
        acct.capture(captured, direct, copy);
        acct.after_capture();
    }
}

/// Where payload that was counted but not captured went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncaptured {
    /// sendfile (the bytes come from a file).
    Sendfile,
    /// splice (the bytes go through a pipe).
    Splice,
    /// Anything else (MSG_TRUNC discards, truncated datagrams).
    Other,
}

/// A new socket (from `socket` or `accept`), or a socketpair end.
pub fn new_socket(
    fd: i32,
    family: i32,
    ty: i32,
    origin: Origin,
    peer: Option<std::net::SocketAddr>,
) {
    let family = crate::fdtable::Family::from_raw(family);
    let nonblocking = ty & libc::SOCK_NONBLOCK != 0;
    let ty = crate::fdtable::SockType::from_raw(ty);
    let conn = traced(family, ty).then(|| {
        let c = account().new_conn(family, ty, origin, fd);
        if origin == Origin::Accept {
            *c.addrs.lock() = (
                sys::sock_addr(fd, false),
                peer.or_else(|| sys::sock_addr(fd, true)),
            );
        }
        c
    });
    TABLE.insert(
        fd,
        FdEntry::kernel(Kind::Socket { family, ty, conn }, nonblocking),
    );
}

/// `connect` returned (0 or EINPROGRESS): remember the addresses.
pub fn connected(fd: i32, peer: Option<std::net::SocketAddr>) {
    let conn = TABLE.with_or_insert(fd, || found_entry(fd), |e| e.conn().cloned());
    if let Some(c) = conn {
        c.connected.store(true, Relaxed);
        *c.addrs.lock() = (sys::sock_addr(fd, false), peer);
    }
}

/// `bind` succeeded: the local address (a datagram socket's, which no `connect` or `accept`
/// reports) is known now, with the port the kernel picked for port 0.
pub fn bound(fd: i32) {
    if let Some(c) = TABLE.with(fd, |e| e.conn().cloned()).flatten() {
        c.addrs.lock().0 = sys::sock_addr(fd, false);
    }
}

/// `listen` succeeded.
pub fn listening(fd: i32) {
    if let Some(c) = TABLE.with(fd, |e| e.conn().cloned()).flatten() {
        c.listening.store(true, Relaxed);
    }
}

/// A descriptor is being closed.
pub fn closing(fd: i32) {
    TABLE.remove(fd);
}

/// `close_range` without CLOSE_RANGE_CLOEXEC succeeded or is about to run.
pub fn closing_range(first: u32, last: u32) {
    TABLE.remove_range(first, last);
}

/// `new` is now a duplicate of `old`.
pub fn duplicated(old: i32, new: i32) {
    TABLE.duplicate(old, new, false);
}

/// O_NONBLOCK was set or cleared through the shim.
pub fn set_nonblocking(fd: i32, on: bool) {
    TABLE.update(fd, |e| e.nonblocking = on);
}

// ---------------------------------------------------------------------------------------------
// Process events

/// The process ends (`exit`, `_exit`) or replaces its image (`exec`): write the report when the
/// process traced any socket. After `exec` fails the process goes on and reports again later.
pub fn finish(reason: &str) {
    let Some(acct) = current() else { return };
    if acct.pid != sys::getpid() {
        return; // a vfork child shares the parent's memory: its account is not its own
    }
    let final_report = reason != "exec";
    if final_report && acct.finished.swap(true, Relaxed) {
        return;
    }
    // A process that opened its report files ahead (before giving up root) fills them even
    // without traffic: an empty report file tells the launcher that a report did not arrive.
    if acct.has_activity() || acct.held.lock().is_some() {
        acct.report(reason, true);
    }
}

/// SIGTERM or SIGINT arrived, with the default action (termination) pending. Returns true when
/// the interning thread will write the final report ([`TERM_DONE`] says when); async-signal-safe
/// (atomics, and `getpid`).
pub fn terminating(sig: i32) -> bool {
    let Some(acct) = current() else { return false };
    if !crate::enabled() || !acct.thread_running() || acct.finished.load(Relaxed) {
        return false;
    }
    TERMINATING.store(sig, Relaxed);
    true
}

/// The process (running as root) is about to switch to user `uid`: open its report files now.
pub fn dropping_privileges(uid: u32) {
    if sys::geteuid() != 0 || uid == 0 {
        return;
    }
    let acct = account();
    if acct.pid == sys::getpid() {
        acct.hold_report_files();
    }
}

/// A report was asked for by a signal (async-signal-safe: only sets a flag).
pub fn signal_request() {
    SIGNALLED.store(true, Relaxed);
}

static FORK_UNSAFE: AtomicBool = AtomicBool::new(false);

/// The fork prepare handler: lock the fd table so that the child's copy is consistent.
pub fn fork_prepare() {
    if guard::inside() {
        // fork from a signal handler that interrupted the shim: the table may be mid-change.
        FORK_UNSAFE.store(true, Relaxed);
        return;
    }
    TABLE.lock_all();
}

/// The fork handler in the parent.
pub fn fork_parent() {
    if FORK_UNSAFE.swap(false, Relaxed) {
        return;
    }
    // SAFETY: `fork_prepare` locked the table in this thread and nothing unlocked it.
    unsafe { TABLE.unlock_all() };
}

/// The fork handler in the child: a fresh account; the sockets stay, with fresh counters.
pub fn fork_child() {
    if FORK_UNSAFE.swap(false, Relaxed) {
        crate::disable();
        return;
    }
    // SAFETY: `fork_prepare` locked the table in the thread that forked, which is this
    // process's only thread now.
    unsafe { TABLE.unlock_all_in_child() };
    let fresh: &'static Account = Box::leak(Box::new(Account::new()));
    // The parent's account is abandoned, not freed: its locks may be held by threads that do
    // not exist here.
    ACCOUNT.store((fresh as *const Account).cast_mut(), Release);
    SIGNALLED.store(false, Relaxed);
    TABLE.for_each_mut(|_, e| {
        if let Kind::Socket { conn: Some(c), .. } = &mut e.kind {
            let copy = Arc::new(c.fresh_copy(fresh.next_conn.fetch_add(1, Relaxed)));
            fresh.register(&copy);
            *c = copy;
        }
    });
}

/// True when `fd` is known as a stream socket.
pub fn is_stream(fd: i32) -> bool {
    TABLE
        .with(fd, |e| {
            matches!(
                e.kind,
                Kind::Socket {
                    ty: crate::fdtable::SockType::Stream,
                    ..
                }
            )
        })
        .unwrap_or(false)
}

/// `accept`/`accept4` on `lfd` returned `fd`.
pub fn accepted(lfd: i32, fd: i32, flags: i32, peer: Option<std::net::SocketAddr>) {
    let known = TABLE
        .with(lfd, |e| match e.kind {
            Kind::Socket { family, ty, .. } => Some((family, ty)),
            Kind::NotSocket => None,
        })
        .flatten()
        .or_else(|| sys::probe(fd));
    let Some((family, ty)) = known else { return };
    let raw_family = match family {
        crate::fdtable::Family::Inet => libc::AF_INET,
        crate::fdtable::Family::Inet6 => libc::AF_INET6,
        crate::fdtable::Family::Unix => libc::AF_UNIX,
        crate::fdtable::Family::Other(d) => d,
    };
    let raw_ty = match ty {
        crate::fdtable::SockType::Stream => libc::SOCK_STREAM,
        crate::fdtable::SockType::Dgram => libc::SOCK_DGRAM,
        crate::fdtable::SockType::Other(t) => t,
    };
    new_socket(
        fd,
        raw_family,
        raw_ty | (flags & libc::SOCK_NONBLOCK),
        Origin::Accept,
        peer,
    );
}
