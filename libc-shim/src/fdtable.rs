//! The fd table: what the shim knows about each file descriptor, and where its I/O goes.
//!
//! ```text
//!   fd % 32 -> shard: RwLock<HashMap<fd, FdEntry>>
//!   FdEntry { route: Kernel | (later) Stack | Local,  kind: NotSocket | Socket { conn? } }
//! ```
//!
//! Entries are added when the shim sees a descriptor born (`socket`, `accept`, `dup`, ...) or
//! the first time it sees I/O on one it does not know (inherited across `exec`, opened by a
//! call the shim does not interpose): then it asks the kernel what the descriptor is. Entries
//! leave on `close`, `close_range` and `dup2`/`dup3` over them.
//!
//! Across `fork` the table is locked in the prepare handler, so the child's copy is consistent;
//! the child keeps the entries (its descriptors are the parent's) with fresh accounts.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};

use parking_lot::{Mutex, RwLock};

const SHARDS: usize = 32;

/// Where a descriptor's operations are served.
///
/// Only `Kernel` exists in trace mode. The stack mode will add a route to a segstack socket
/// and the local mode a route to a peer shim process exchanging segment references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The Linux kernel serves it (every call passes through).
    Kernel,
}

/// Address family of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// AF_INET.
    Inet,
    /// AF_INET6.
    Inet6,
    /// AF_UNIX.
    Unix,
    /// Anything else.
    Other(i32),
}

impl Family {
    /// From the C constant.
    pub fn from_raw(d: i32) -> Family {
        match d {
            libc::AF_INET => Family::Inet,
            libc::AF_INET6 => Family::Inet6,
            libc::AF_UNIX => Family::Unix,
            d => Family::Other(d),
        }
    }

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Inet6 => "inet6",
            Family::Unix => "unix",
            Family::Other(_) => "other",
        }
    }
}

/// Socket type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockType {
    /// SOCK_STREAM.
    Stream,
    /// SOCK_DGRAM.
    Dgram,
    /// Anything else.
    Other(i32),
}

impl SockType {
    /// From the C constant (flags such as SOCK_NONBLOCK are masked off).
    pub fn from_raw(t: i32) -> SockType {
        match t & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) {
            libc::SOCK_STREAM => SockType::Stream,
            libc::SOCK_DGRAM => SockType::Dgram,
            t => SockType::Other(t),
        }
    }

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            SockType::Stream => "stream",
            SockType::Dgram => "dgram",
            SockType::Other(_) => "other",
        }
    }
}

/// True for the sockets whose payload trace mode records: AF_INET/AF_INET6 stream and datagram.
pub fn traced(family: Family, ty: SockType) -> bool {
    matches!(family, Family::Inet | Family::Inet6)
        && matches!(ty, SockType::Stream | SockType::Dgram)
}

/// How the shim learnt of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `socket()`.
    Socket,
    /// `accept()` / `accept4()`.
    Accept,
    /// Found open (inherited across exec, or made by a call the shim does not see).
    Found,
}

impl Origin {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Socket => "socket",
            Origin::Accept => "accept",
            Origin::Found => "found",
        }
    }
}

/// One traced socket's account: a "connection" of the report (a datagram socket is one too).
/// Shared by every descriptor that refers to the socket (`dup`).
#[derive(Debug)]
pub struct Conn {
    /// Number in this process's report.
    pub id: u64,
    /// Address family.
    pub family: Family,
    /// Socket type.
    pub ty: SockType,
    /// How the shim learnt of it.
    pub origin: Origin,
    /// The descriptor most recently seen for it.
    pub fd: AtomicI32,
    /// Local and peer addresses, when known.
    pub addrs: Mutex<(Option<std::net::SocketAddr>, Option<std::net::SocketAddr>)>,
    /// `connect()` was called on it.
    pub connected: AtomicBool,
    /// `listen()` was called on it (a listening socket is no connection).
    pub listening: AtomicBool,
    /// Payload bytes sent (including sendfile/splice).
    pub sent: AtomicU64,
    /// Payload bytes received.
    pub received: AtomicU64,
    /// Successful send-side calls.
    pub send_calls: AtomicU64,
    /// Successful receive-side calls.
    pub recv_calls: AtomicU64,
    /// Descriptors still open on it.
    pub open_fds: AtomicU32,
}

impl Conn {
    /// A new account for a socket open on one descriptor.
    pub fn new(id: u64, family: Family, ty: SockType, origin: Origin, fd: i32) -> Conn {
        Conn {
            id,
            family,
            ty,
            origin,
            fd: AtomicI32::new(fd),
            addrs: Mutex::new((None, None)),
            connected: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            send_calls: AtomicU64::new(0),
            recv_calls: AtomicU64::new(0),
            open_fds: AtomicU32::new(1),
        }
    }

    /// The same socket with zeroed counters (a forked child's fresh account).
    pub fn fresh_copy(&self, id: u64) -> Conn {
        let c = Conn::new(id, self.family, self.ty, self.origin, self.fd.load(Relaxed));
        // try_lock: in a forked child the lock may be held by a thread that is not there.
        *c.addrs.lock() = self.addrs.try_lock().map_or((None, None), |g| *g);
        c.connected.store(self.connected.load(Relaxed), Relaxed);
        c.listening.store(self.listening.load(Relaxed), Relaxed);
        c.open_fds.store(self.open_fds.load(Relaxed), Relaxed);
        c
    }
}

/// What a descriptor is.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Not a socket (a file, a pipe, a terminal...).
    NotSocket,
    /// A socket; `conn` is its account when it is traced.
    Socket {
        /// Address family.
        family: Family,
        /// Socket type.
        ty: SockType,
        /// The account of a traced socket.
        conn: Option<Arc<Conn>>,
    },
}

/// One descriptor's entry.
#[derive(Debug, Clone)]
pub struct FdEntry {
    /// Where its operations go.
    pub route: Route,
    /// What it is.
    pub kind: Kind,
    /// O_NONBLOCK as last set through the shim (SOCK_NONBLOCK, fcntl, FIONBIO). Informational in
    /// trace mode (the kernel keeps the real flag); the stack mode will serve it.
    pub nonblocking: bool,
}

impl FdEntry {
    /// An entry routed to the kernel.
    pub fn kernel(kind: Kind, nonblocking: bool) -> FdEntry {
        FdEntry {
            route: Route::Kernel,
            kind,
            nonblocking,
        }
    }

    /// The traced account, if any.
    pub fn conn(&self) -> Option<&Arc<Conn>> {
        match &self.kind {
            Kind::Socket { conn, .. } => conn.as_ref(),
            Kind::NotSocket => None,
        }
    }
}

/// Descriptors are small integers: hash them as they are.
#[derive(Debug, Default)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_i32(&mut self, i: i32) {
        self.0 = i as u32 as u64;
    }
}

type Shard = HashMap<i32, FdEntry, BuildHasherDefault<FdHasher>>;

/// The table.
#[derive(Debug)]
pub struct FdTable {
    shards: Vec<RwLock<Shard>>,
}

/// The process's table.
pub static TABLE: LazyLock<FdTable> = LazyLock::new(FdTable::new);

impl Default for FdTable {
    fn default() -> Self {
        FdTable::new()
    }
}

impl FdTable {
    /// An empty table.
    pub fn new() -> FdTable {
        FdTable {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, fd: i32) -> &RwLock<Shard> {
        &self.shards[(fd as u32 as usize) % SHARDS]
    }

    /// Runs `f` on the entry of `fd`, if there is one.
    #[inline]
    pub fn with<R>(&self, fd: i32, f: impl FnOnce(&FdEntry) -> R) -> Option<R> {
        let s = self.shard(fd).read();
        s.get(&fd).map(f)
    }

    /// Runs `f` on the entry of `fd`, creating it with `make` first when there is none (`make`
    /// runs without any lock held: it may ask the kernel).
    #[inline]
    pub fn with_or_insert<R>(
        &self,
        fd: i32,
        make: impl FnOnce() -> FdEntry,
        f: impl FnOnce(&FdEntry) -> R,
    ) -> R {
        {
            let s = self.shard(fd).read();
            if let Some(e) = s.get(&fd) {
                return f(e);
            }
        }
        let made = make();
        let mut s = self.shard(fd).write();
        let e = s.entry(fd).or_insert(made);
        f(e)
    }

    /// Sets the entry of `fd`, returning the one it replaces (whose descriptor is gone).
    pub fn insert(&self, fd: i32, e: FdEntry) -> Option<FdEntry> {
        let old = self.shard(fd).write().insert(fd, e);
        old.inspect(release)
    }

    /// Removes the entry of `fd` (the descriptor is being closed).
    pub fn remove(&self, fd: i32) -> Option<FdEntry> {
        let old = self.shard(fd).write().remove(&fd);
        old.inspect(release)
    }

    /// Removes every entry in `first..=last`.
    pub fn remove_range(&self, first: u32, last: u32) {
        for s in &self.shards {
            let mut s = s.write();
            s.retain(|&fd, e| {
                let gone = (first..=last).contains(&(fd as u32));
                if gone {
                    release(e);
                }
                !gone
            });
        }
    }

    /// Changes the entry of `fd` in place.
    pub fn update(&self, fd: i32, f: impl FnOnce(&mut FdEntry)) {
        if let Some(e) = self.shard(fd).write().get_mut(&fd) {
            f(e);
        }
    }

    /// Makes `new` a duplicate of `old` (after a successful dup): same socket, same account.
    pub fn duplicate(&self, old: i32, new: i32, cloexec_only: bool) {
        let _ = cloexec_only;
        let e = self.with(old, |e| e.clone());
        match e {
            Some(e) => {
                if let Some(c) = e.conn() {
                    c.open_fds.fetch_add(1, Relaxed);
                    c.fd.store(new, Relaxed);
                }
                self.insert(new, e);
            }
            None => {
                // Unknown source: forget whatever `new` was; it will be probed on first use.
                self.remove(new);
            }
        }
    }

    /// Every entry, for a forked child's fresh accounts (single-threaded there).
    pub fn for_each_mut(&self, mut f: impl FnMut(i32, &mut FdEntry)) {
        for s in &self.shards {
            for (fd, e) in s.write().iter_mut() {
                f(*fd, e);
            }
        }
    }

    /// Locks every shard for writing and keeps them locked (the fork prepare handler).
    pub fn lock_all(&self) {
        for s in &self.shards {
            std::mem::forget(s.write());
        }
    }

    /// Undoes [`FdTable::lock_all`].
    ///
    /// # Safety
    /// Only after `lock_all` in this process image, once, in the thread that locked (the fork
    /// parent) or the only thread there is (the fork child).
    pub unsafe fn unlock_all(&self) {
        for s in &self.shards {
            // SAFETY: the caller guarantees `lock_all` locked this shard and nobody unlocked it.
            unsafe { s.force_unlock_write() };
        }
    }
}

/// Bookkeeping for an entry leaving the table.
fn release(e: &FdEntry) {
    if let Some(c) = e.conn() {
        let _ = c
            .open_fds
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traced_entry(fd: i32) -> FdEntry {
        FdEntry::kernel(
            Kind::Socket {
                family: Family::Inet,
                ty: SockType::Stream,
                conn: Some(Arc::new(Conn::new(
                    1,
                    Family::Inet,
                    SockType::Stream,
                    Origin::Socket,
                    fd,
                ))),
            },
            false,
        )
    }

    #[test]
    fn insert_dup_close() {
        let t = FdTable::new();
        t.insert(5, traced_entry(5));
        t.duplicate(5, 40, false);
        let c = t.with(40, |e| e.conn().cloned()).flatten().unwrap();
        assert_eq!(c.open_fds.load(Relaxed), 2);
        t.remove(5);
        assert_eq!(c.open_fds.load(Relaxed), 1);
        assert!(t.with(5, |_| ()).is_none());
        t.remove_range(30, u32::MAX);
        assert_eq!(c.open_fds.load(Relaxed), 0);
        assert!(t.with(40, |_| ()).is_none());
    }

    #[test]
    fn dup_of_unknown_forgets_target() {
        let t = FdTable::new();
        t.insert(7, FdEntry::kernel(Kind::NotSocket, false));
        t.duplicate(3, 7, false);
        assert!(t.with(7, |_| ()).is_none());
    }

    #[test]
    fn fork_lock_cycle() {
        let t = FdTable::new();
        t.insert(1, traced_entry(1));
        t.lock_all();
        // SAFETY: locked just above, in this thread.
        unsafe { t.unlock_all() };
        assert!(t.with(1, |_| ()).is_some());
    }

    #[test]
    fn types_and_families() {
        assert_eq!(
            SockType::from_raw(libc::SOCK_STREAM | libc::SOCK_NONBLOCK),
            SockType::Stream
        );
        assert!(traced(Family::Inet6, SockType::Dgram));
        assert!(!traced(Family::Unix, SockType::Stream));
        assert!(!traced(Family::Inet, SockType::Other(3)));
    }
}
