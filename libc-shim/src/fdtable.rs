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
//!
//! The shards' lock is [`ForkRwLock`], not a general-purpose one: a waiting thread leaves no
//! trace in the lock word except a "someone may sleep" bit, and a release never hands the lock
//! over to waiters. So in a forked child, the thread that forked (the prepare handler took every
//! shard for writing, waiting for the readers to leave) releases what it really holds, and no
//! reader of the parent's, absent in the child, is counted as holding the lock. (A
//! `parking_lot::RwLock` forced open in the child handed the lock to the parent's parked readers,
//! which do not exist there: the child's next `write` waited for them forever.)

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

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

/// The hasher of the shim's maps keyed by descriptor: the descriptor times a large odd
/// constant (Fibonacci hashing), so that the high bits the table's tags use differ between
/// neighbouring descriptors (SipHash was 0.3-0.4% of a stack-mode redis-server's samples, in
/// `send`, `recv` and the epoll wait's lookups).
#[derive(Debug, Default)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_i32(&mut self, i: i32) {
        self.0 = u64::from(i as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Shard = HashMap<i32, FdEntry, BuildHasherDefault<FdHasher>>;

/// A readers-writer lock whose state is one word and whose waiters leave nothing in it but the
/// [`SLEEPERS`] bit: safe to take in a fork prepare handler and release in the child.
///
/// Readers enter only while no writer holds or waits; a writer announces itself
/// ([`WRITER_WAITING`]) so that a steady stream of readers cannot starve it (the fork prepare
/// handler must get every shard while the application's threads do I/O). Waiting spins briefly,
/// then sleeps on the word with `futex` (a system call every sandbox allows: glibc's own locks
/// use it).
pub struct ForkRwLock<T> {
    state: AtomicU32,
    data: std::cell::UnsafeCell<T>,
}

/// The lock is held for writing.
const WRITER: u32 = 1 << 31;
/// A writer waits: readers stay out.
const WRITER_WAITING: u32 = 1 << 30;
/// A thread may sleep on the word: an unlock wakes them.
const SLEEPERS: u32 = 1 << 29;
/// The number of readers inside.
const READERS: u32 = SLEEPERS - 1;

// SAFETY: the lock gives `&T` to many threads only while no `&mut T` exists, and `&mut T` to one
// thread at a time, like `std::sync::RwLock`; so it is Sync when `T` is Send + Sync.
unsafe impl<T: Send + Sync> Sync for ForkRwLock<T> {}
// SAFETY: moving the lock moves the `T`.
unsafe impl<T: Send> Send for ForkRwLock<T> {}

impl<T: std::fmt::Debug> std::fmt::Debug for ForkRwLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkRwLock")
            .field("state", &self.state.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// Shared access; released on drop.
#[derive(Debug)]
pub struct ReadGuard<'a, T>(&'a ForkRwLock<T>);
/// Exclusive access; released on drop.
#[derive(Debug)]
pub struct WriteGuard<'a, T>(&'a ForkRwLock<T>);

impl<T> std::ops::Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a read guard exists only while the lock counts this reader, so no writer
        // holds it and no `&mut T` exists.
        unsafe { &*self.0.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        let prev = self.0.state.fetch_sub(1, Release);
        if prev & READERS == 1 && prev & SLEEPERS != 0 {
            self.0.wake_all();
        }
    }
}

impl<T> std::ops::Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the write guard is the only access to the data while it lives.
        unsafe { &*self.0.data.get() }
    }
}

impl<T> std::ops::DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above; `&mut self` makes this borrow unique.
        unsafe { &mut *self.0.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        self.0.unlock_write();
    }
}

impl<T> ForkRwLock<T> {
    /// An unlocked lock around `v`.
    pub const fn new(v: T) -> ForkRwLock<T> {
        ForkRwLock {
            state: AtomicU32::new(0),
            data: std::cell::UnsafeCell::new(v),
        }
    }

    /// Shared access.
    #[inline]
    pub fn read(&self) -> ReadGuard<'_, T> {
        let mut s = self.state.load(Relaxed);
        let mut spins = 0u32;
        loop {
            if s & (WRITER | WRITER_WAITING) == 0 && s & READERS < READERS {
                match self.state.compare_exchange_weak(s, s + 1, Acquire, Relaxed) {
                    Ok(_) => return ReadGuard(self),
                    Err(now) => s = now,
                }
                continue;
            }
            s = self.wait(s, &mut spins);
        }
    }

    /// Exclusive access.
    pub fn write(&self) -> WriteGuard<'_, T> {
        let mut s = self.state.load(Relaxed);
        let mut spins = 0u32;
        loop {
            if s & (WRITER | READERS) == 0 {
                // Taking the lock clears WRITER_WAITING: another waiting writer sets it again.
                match self
                    .state
                    .compare_exchange_weak(s, (s & SLEEPERS) | WRITER, Acquire, Relaxed)
                {
                    Ok(_) => return WriteGuard(self),
                    Err(now) => s = now,
                }
                continue;
            }
            if s & WRITER_WAITING == 0 {
                s = self.state.fetch_or(WRITER_WAITING, Relaxed) | WRITER_WAITING;
                continue;
            }
            s = self.wait(s, &mut spins);
        }
    }

    fn unlock_write(&self) {
        let prev = self.state.fetch_and(!WRITER, Release);
        if prev & SLEEPERS != 0 {
            self.wake_all();
        }
    }

    /// Waits for the word to change from `seen`; returns its new value.
    #[cold]
    fn wait(&self, seen: u32, spins: &mut u32) -> u32 {
        if *spins < 100 {
            *spins += 1;
            std::hint::spin_loop();
            return self.state.load(Relaxed);
        }
        let want = seen | SLEEPERS;
        if seen & SLEEPERS == 0
            && self
                .state
                .compare_exchange(seen, want, Relaxed, Relaxed)
                .is_err()
        {
            return self.state.load(Relaxed);
        }
        // SAFETY: FUTEX_WAIT on a live, aligned u32 of this process with no timeout: it
        // sleeps only while the word still holds `want`, until a FUTEX_WAKE on it.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.state.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                want,
                std::ptr::null::<libc::timespec>(),
            )
        };
        self.state.load(Relaxed)
    }

    #[cold]
    fn wake_all(&self) {
        self.state.fetch_and(!SLEEPERS, Relaxed);
        // SAFETY: FUTEX_WAKE on a live, aligned u32 of this process.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.state.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            )
        };
    }

    /// In a forked child, releases the write lock that the forking thread took in the prepare
    /// handler (`guard` is that lock, kept across `fork`). The marks that other threads of the
    /// parent left (a writer waiting, sleepers) describe threads that do not exist in the child:
    /// they go too. No reader is counted: the writer held the lock.
    fn unlock_write_in_child(&self) {
        debug_assert_eq!(self.state.load(Relaxed) & (WRITER | READERS), WRITER);
        self.state.store(0, Release);
    }
}

/// The table.
#[derive(Debug)]
pub struct FdTable {
    shards: Vec<ForkRwLock<Shard>>,
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
            shards: (0..SHARDS)
                .map(|_| ForkRwLock::new(Shard::default()))
                .collect(),
        }
    }

    fn shard(&self, fd: i32) -> &ForkRwLock<Shard> {
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

    /// Locks every shard for writing and keeps them locked (the fork prepare handler): waits,
    /// as any writer, for the readers inside to leave.
    pub fn lock_all(&self) {
        for s in &self.shards {
            std::mem::forget(s.write());
        }
    }

    /// Undoes [`FdTable::lock_all`] in the fork parent.
    ///
    /// # Safety
    /// Only after `lock_all` in this thread, once.
    pub unsafe fn unlock_all(&self) {
        for s in &self.shards {
            s.unlock_write();
        }
    }

    /// Undoes [`FdTable::lock_all`] in a forked child, releasing what the forking thread (the
    /// child's only thread) took.
    ///
    /// # Safety
    /// Only in the child of a `fork` whose prepare handler ran `lock_all` in the forking
    /// thread, once.
    pub unsafe fn unlock_all_in_child(&self) {
        for s in &self.shards {
            s.unlock_write_in_child();
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
        t.lock_all();
        // SAFETY: as in a fork child: locked above, by this thread.
        unsafe { t.unlock_all_in_child() };
        t.update(1, |e| e.nonblocking = true);
        assert_eq!(t.with(1, |e| e.nonblocking), Some(true));
    }

    #[test]
    fn lock_excludes_and_writers_are_not_starved() {
        let l = Arc::new(ForkRwLock::new(0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (l, stop) = (l.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Relaxed) {
                        let g = l.read();
                        assert_eq!(*g % 2, 0, "a reader saw a write half done");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for _ in 0..2000 {
            let mut g = l.write();
            *g += 1;
            std::hint::spin_loop();
            *g += 1;
        }
        stop.store(true, Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(*l.read(), 4000);
        assert_eq!(l.state.load(Relaxed) & !SLEEPERS, 0);
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
