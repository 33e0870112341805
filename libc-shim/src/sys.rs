//! System calls the shim makes for itself: diagnostics, report files, asking the kernel what a
//! descriptor is, socket addresses. Everything goes through the real functions, so nothing here
//! re-enters a hook.

use std::ffi::CString;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libc::{c_int, c_void, sockaddr, sockaddr_storage, socklen_t};

use crate::fdtable::{Family, SockType};
use crate::real;

/// Writes all of `bytes` to `fd` with the real `write`.
pub fn write_all(fd: c_int, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live slice of `bytes.len()` readable bytes.
        let n = unsafe { real::write(fd, bytes.as_ptr().cast::<c_void>(), bytes.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// A diagnostic line, `hicamp-shim[pid]: msg`, appended to this process's diagnostics file
/// ([`diag_path`]). The shim never writes to a descriptor of the application's: fd 2 may be a
/// socket (an inetd-style service, `socat ... EXEC:cmd,stderr`) or a file the application
/// opened under that number. The one exception is a terminal on fd 2 ([`stderr_is_terminal`]),
/// which gets the line too, so that an interactive user sees it.
pub fn diag(msg: &str) {
    let line = format!("hicamp-shim[{}]: {msg}\n", getpid());
    if let Ok(fd) = open_for_write(&diag_path(), libc::O_APPEND) {
        let _ = write_all(fd, line.as_bytes());
        close_fd(fd);
    }
    if stderr_is_terminal() {
        let _ = write_all(2, line.as_bytes());
    }
}

/// True when fd 2 is a terminal (never a socket, and not a data channel of the application).
pub fn stderr_is_terminal() -> bool {
    // SAFETY: isatty has no precondition.
    unsafe { libc::isatty(2) == 1 }
}

/// The directory for the shim's files when no report prefix is set: `$TMPDIR`, else `/tmp`.
pub fn tmp_dir() -> std::path::PathBuf {
    std::env::var_os("TMPDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| "/tmp".into(), std::path::PathBuf::from)
}

/// Where this process's diagnostics go: `PREFIX.PID.log` beside its reports
/// (`HICAMP_SHIM_REPORT`), else `$TMPDIR/hicamp-shim.PID.log`. (Read from the environment
/// directly: the settings' parser itself reports through here.)
pub fn diag_path() -> std::path::PathBuf {
    let pid = getpid();
    match std::env::var_os("HICAMP_SHIM_REPORT").filter(|p| !p.is_empty()) {
        Some(prefix) => {
            let mut p = prefix;
            p.push(format!(".{pid}.log"));
            p.into()
        }
        None => tmp_dir().join(format!("hicamp-shim.{pid}.log")),
    }
}

/// The signals a thread had blocked before [`Blocked::all`] blocked them all, restored on drop.
///
/// A shadow wait (stack or local mode) that goes to sleep blocks every signal first and sleeps
/// in `epoll_pwait` with the thread's own mask ([`Blocked::old`]), as `pselect` does: a signal
/// that arrives while the wait looks at its rings or runs the interface stays pending until
/// the sleep, which it then interrupts (`EINTR` to the application, whose handler has run).
/// Without it, a handler that ran between two of the wait's own sleeps (an event loop's quit
/// flag: nginx's `SIGQUIT`) was followed by a sleep with no timeout, and the application never
/// got back to its loop.
pub struct Blocked(libc::sigset_t);

impl Blocked {
    /// Blocks every signal of this thread.
    pub fn all() -> Blocked {
        // SAFETY: an all-zero `sigset_t` is a valid (empty) set.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: a pointer to a set we own.
        unsafe { libc::sigfillset(&mut all) };
        // SAFETY: pointers to sets we own; no other precondition.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) };
        Blocked(old)
    }

    /// The thread's mask from before the block (for the sleep's `epoll_pwait`).
    pub fn old(&self) -> *const libc::sigset_t {
        &self.0
    }
}

impl std::fmt::Debug for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blocked")
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        // SAFETY: the mask saved by `all`; `pthread_sigmask` does not touch errno.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// When a wait with timeout `ts` ends: `Some(None)` for a null `ts` (no timeout), `None` for
/// a timespec the kernel would refuse (the caller leaves the plain call to give its `EINVAL`).
///
/// # Safety
/// `ts` is null or points to a readable `timespec`.
pub unsafe fn deadline(ts: *const libc::timespec) -> Option<Option<std::time::Instant>> {
    if ts.is_null() {
        return Some(None);
    }
    // SAFETY: the caller's timespec, not null.
    let t = unsafe { std::ptr::read(ts) };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return None;
    }
    let d = std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32);
    Some(std::time::Instant::now().checked_add(d))
}

/// The calling process's id (a system call each time: never a value cached across fork).
pub fn getpid() -> i32 {
    // SAFETY: getpid has no precondition.
    unsafe { libc::getpid() }
}

/// The parent's process id.
pub fn getppid() -> i32 {
    // SAFETY: getppid has no precondition.
    unsafe { libc::getppid() }
}

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
}

fn close_fd(fd: c_int) {
    // SAFETY: closing a descriptor this module opened.
    unsafe { real::close(fd) };
}

/// Opens `path` for writing, created with mode 0644 if absent, close-on-exec, with `flags`
/// (`O_EXCL`, `O_TRUNC`) added.
fn open_for_write(path: &Path, flags: libc::c_int) -> std::io::Result<libc::c_int> {
    let c = cpath(path)?;
    // SAFETY: `c` is a NUL-terminated path; open has no other precondition.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | flags,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// Creates `path` exclusively (it must not exist) and writes `bytes`. `Ok(false)` when it exists.
pub fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let fd = match open_for_write(path, libc::O_EXCL) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    let r = write_all(fd, bytes);
    close_fd(fd);
    r.map(|()| true)
}

/// Replaces `path` with `bytes` atomically (a temporary file renamed over it).
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", getpid()));
    let tmp = std::path::PathBuf::from(tmp);
    let ctmp = cpath(&tmp)?;
    let fd = open_for_write(&tmp, libc::O_TRUNC)?;
    let r = write_all(fd, bytes);
    close_fd(fd);
    r?;
    let cpath = cpath(path)?;
    // SAFETY: both are NUL-terminated paths.
    if unsafe { libc::rename(ctmp.as_ptr(), cpath.as_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: a NUL-terminated path.
        unsafe { libc::unlink(ctmp.as_ptr()) };
        return Err(e);
    }
    Ok(())
}

/// A report file kept open across a change of user (`setuid` to an unprivileged user): its
/// descriptor and identity. The shim writes through it only while `fd` still is that file
/// (device and inode checked first): an application that closed the number and reused it
/// gets nothing written into its own descriptor.
#[derive(Debug)]
pub struct HeldFile {
    fd: c_int,
    dev: u64,
    ino: u64,
}

impl HeldFile {
    /// Opens `path` (created if absent) for later rewrites, close-on-exec.
    pub fn open(path: &Path) -> std::io::Result<HeldFile> {
        let fd = open_for_write(path, 0)?;
        match identity(fd) {
            Some((dev, ino)) => Ok(HeldFile { fd, dev, ino }),
            None => {
                let e = std::io::Error::last_os_error();
                close_fd(fd);
                Err(e)
            }
        }
    }

    /// Replaces the file's contents with `bytes`; an error when the descriptor is no longer
    /// this file.
    pub fn rewrite(&self, bytes: &[u8]) -> std::io::Result<()> {
        if identity(self.fd) != Some((self.dev, self.ino)) {
            return Err(std::io::Error::other(
                "the held report descriptor was closed by the application",
            ));
        }
        // SAFETY: the descriptor is the shim's own file (checked above).
        if unsafe { libc::ftruncate(self.fd, 0) } != 0
            // SAFETY: as above.
            || unsafe { libc::lseek(self.fd, 0, libc::SEEK_SET) } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        write_all(self.fd, bytes)
    }
}

/// Device and inode of an open descriptor.
fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat`.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

/// The effective user id.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no precondition.
    unsafe { libc::geteuid() }
}

/// What the kernel says `fd` is: `None` when it is not a socket (or not open).
pub fn probe(fd: c_int) -> Option<(Family, SockType)> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat`.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    let domain = sockopt_int(fd, libc::SO_DOMAIN)?;
    let ty = sockopt_int(fd, libc::SO_TYPE)?;
    Some((Family::from_raw(domain), SockType::from_raw(ty)))
}

fn sockopt_int(fd: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: `v` and `len` are valid for writes and `len` is `v`'s size.
    let r = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut v as *mut c_int).cast::<c_void>(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

/// A socket's local (`peer == false`) or peer address.
pub fn sock_addr(fd: c_int, peer: bool) -> Option<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut ss: sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<sockaddr_storage>() as socklen_t;
    let p = (&mut ss as *mut sockaddr_storage).cast::<sockaddr>();
    let r = if peer {
        // SAFETY: `p` points to a sockaddr_storage of `len` bytes, `len` is writable.
        unsafe { real::getpeername(fd, p, &mut len) }
    } else {
        // SAFETY: as above.
        unsafe { real::getsockname(fd, p, &mut len) }
    };
    if r != 0 {
        return None;
    }
    // SAFETY: the kernel filled `len` bytes of `ss`.
    unsafe { parse_sockaddr(p, len) }
}

/// Reads an AF_INET / AF_INET6 socket address.
///
/// # Safety
/// `p` is null or points to `len` readable bytes.
pub unsafe fn parse_sockaddr(p: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if p.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: the family field (first in every sockaddr) is readable (checked above);
    // read_unaligned allows any alignment of the caller's buffer.
    let family = unsafe { std::ptr::read_unaligned(p.cast::<libc::sa_family_t>()) };
    match c_int::from(family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: `len` covers a sockaddr_in.
            let a = unsafe { std::ptr::read_unaligned(p.cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: `len` covers a sockaddr_in6.
            let a = unsafe { std::ptr::read_unaligned(p.cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The program's command line (`/proc/self/cmdline`, arguments joined by spaces, at most
/// 200 bytes).
pub fn cmdline() -> String {
    let mut out = String::new();
    if let Ok(raw) = std::fs::read("/proc/self/cmdline") {
        for (i, arg) in raw.split(|&b| b == 0).filter(|a| !a.is_empty()).enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&String::from_utf8_lossy(arg));
            if out.len() > 200 {
                let mut cut = 200;
                while !out.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.truncate(cut);
                out.push_str("...");
                break;
            }
        }
    }
    out
}

/// Starts one of the shim's own threads with every asynchronous signal blocked from its first
/// instruction (the mask is inherited from the creating thread, which blocks them around the
/// spawn), so that the kernel never delivers the application's process-directed signals
/// (SIGCHLD, SIGQUIT, SIGTERM...) to it. A handler run on a shim thread would leave the
/// application's own threads waiting: nginx's master sleeps in `sigsuspend` until a signal
/// arrives on its thread, and stayed asleep with its workers gone when their SIGCHLD went to a
/// shim thread. Synchronous signals (faults) stay deliverable.
pub fn spawn_quiet<F, T>(
    name: &str,
    stack_size: Option<usize>,
    f: F,
) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // SAFETY: an all-zero sigset_t is valid storage; sigfillset/sigdelset initialise and edit it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigfillset(&mut set) };
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGILL,
        libc::SIGTRAP,
    ] {
        // SAFETY: as above.
        unsafe { libc::sigdelset(&mut set, sig) };
    }
    // SAFETY: changes only the calling thread's mask; `old` receives the previous one.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    let mut b = std::thread::Builder::new().name(name.into());
    if let Some(n) = stack_size {
        b = b.stack_size(n);
    }
    let r = b.spawn(f);
    // SAFETY: restores the calling thread's own mask, saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r
}

/// Puts the calling thread in the SCHED_IDLE class (best effort).
pub fn set_idle_priority() {
    // SAFETY: an all-zero sched_param is valid (priority 0, the only one SCHED_IDLE takes).
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: pthread_self has no precondition.
    let me = unsafe { libc::pthread_self() };
    // SAFETY: `me` is this live thread and `param` a valid sched_param.
    let _ = unsafe { libc::pthread_setschedparam(me, libc::SCHED_IDLE, &param) };
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        let a = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 8080u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `a` is a live sockaddr_in of the given size.
        let got = unsafe {
            parse_sockaddr(
                (&a as *const libc::sockaddr_in).cast(),
                std::mem::size_of_val(&a) as socklen_t,
            )
        };
        assert_eq!(got, Some("127.0.0.1:8080".parse().unwrap()));
        // SAFETY: null is allowed.
        assert_eq!(unsafe { parse_sockaddr(std::ptr::null(), 16) }, None);
    }

    #[test]
    fn probe_tells_sockets_from_files() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(probe(l.as_raw_fd()), Some((Family::Inet, SockType::Stream)));
        let f = std::fs::File::open("/proc/self/cmdline").unwrap();
        assert_eq!(probe(f.as_raw_fd()), None);
        assert_eq!(probe(-1), None);
        assert!(sock_addr(l.as_raw_fd(), false).is_some());
    }

    #[test]
    fn files_exclusive_and_replaced() {
        let dir = std::env::temp_dir().join(format!("shim-sys-{}", getpid()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.json");
        let _ = std::fs::remove_file(&p);
        assert!(create_new(&p, b"one").unwrap());
        assert!(!create_new(&p, b"two").unwrap());
        replace(&p, b"three").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
