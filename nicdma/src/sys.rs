//! Raw Linux bindings for the TAP backend: the TUN/TAP ioctls, `poll`,
//! `setns` and `geteuid`; and, in submodules, for the AF_PACKET and AF_XDP
//! backends: [`mem`] (memory mapped with the kernel), [`sock`] (socket
//! options, binds, kicks, interface look-ups) and [`bpf`] (the `bpf()` system
//! call); for the netmap backend, [`netmap`] (`/dev/netmap`'s ioctls).
//!
//! This is the crate's only module (with its submodules) with `unsafe` code. Each function here is a
//! safe wrapper around one system call: it takes borrowed file descriptors and
//! references (so the kernel never sees a dangling fd or pointer), checks the
//! return value and turns `-1` into [`io::Error::last_os_error`].
//!
//! The constants and `struct ifreq` layout come from the Linux UAPI headers
//! `<linux/if_tun.h>`, `<linux/if.h>` and `<asm-generic/ioctl.h>`.
//!
//! `lib.rs` opts this module out of the crate's `deny(unsafe_code)` where it
//! declares it (`#[allow(unsafe_code)] mod sys;`); an inner `#![allow]` here
//! as well would be a duplicated attribute (clippy).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

pub mod bpf;
pub mod eventfd;
pub mod mem;
pub mod netmap;
pub mod sock;

/// Bytes of an interface name, including the terminating NUL (`IFNAMSIZ`).
pub const IFNAMSIZ: usize = 16;

/// `ifr_flags`: a TAP (Ethernet) device rather than a TUN (IP) device.
pub const IFF_TAP: libc::c_short = 0x0002;
/// `ifr_flags`: no 4-byte packet-information prefix on each frame.
pub const IFF_NO_PI: libc::c_short = 0x1000;
/// `ifr_flags`: each frame carries a virtio-net header first.
pub const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `ifr_flags`: the device has one queue per attached descriptor (the kernel spreads
/// flows over them).
pub const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// `TUNSETQUEUE` flag: attach this descriptor's queue again.
pub const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
/// `TUNSETQUEUE` flag: detach this descriptor's queue (the kernel sends it nothing).
pub const IFF_DETACH_QUEUE: libc::c_short = 0x0400;

/// `TUNSETOFFLOAD` flags: what the kernel may hand us (it always accepts
/// these from us). Partial checksums.
pub const TUN_F_CSUM: libc::c_uint = 0x01;
/// TCP segmentation offload over IPv4 (needs `TUN_F_CSUM`).
pub const TUN_F_TSO4: libc::c_uint = 0x02;
/// TCP segmentation offload over IPv6 (needs `TUN_F_CSUM`).
pub const TUN_F_TSO6: libc::c_uint = 0x04;
/// TSO frames may carry the ECN (CWR) bit.
pub const TUN_F_TSO_ECN: libc::c_uint = 0x08;

// `_IOC` direction and size encoding: the generic layout (x86, arm, riscv, ...)
// has 14 size bits and "write" = 1; powerpc, mips and sparc have 13 size bits
// and "write" = 4. Either way the direction field starts above the size field.
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc64"
))]
const IOC: (u32, u32) = (13, 4);
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc64"
)))]
const IOC: (u32, u32) = (14, 1);

/// `_IOW(ty, nr, size)`.
const fn iow(ty: u8, nr: u8, size: usize) -> u32 {
    let (size_bits, write) = IOC;
    (write << (16 + size_bits)) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `_IOW('T', 202, int)`: attach the fd to a new or existing TUN/TAP device.
pub const TUNSETIFF: u32 = iow(b'T', 202, std::mem::size_of::<libc::c_int>());
/// `_IOW('T', 208, unsigned int)`: offloads the kernel may use towards us.
pub const TUNSETOFFLOAD: u32 = iow(b'T', 208, std::mem::size_of::<libc::c_uint>());
/// `_IOW('T', 216, int)`: size of the virtio-net header on each frame.
pub const TUNSETVNETHDRSZ: u32 = iow(b'T', 216, std::mem::size_of::<libc::c_int>());
/// `_IOW('T', 217, int)`: attach or detach a multi-queue device's queue (an `ifreq`).
pub const TUNSETQUEUE: u32 = iow(b'T', 217, std::mem::size_of::<libc::c_int>());

/// The prefix of `struct ifreq` that the TUN ioctls use: the name and
/// `ifr_flags`, padded to the full size of the union (24 bytes on 64-bit
/// targets, 16 on 32-bit; the kernel copies only `sizeof(struct ifreq)`).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct IfReq {
    /// NUL-terminated interface name.
    pub name: [u8; IFNAMSIZ],
    /// `ifr_flags`.
    pub flags: libc::c_short,
    pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    /// A request for `name` with `flags`; `None` when the name (plus its NUL)
    /// does not fit or contains a NUL.
    pub fn new(name: &str, flags: libc::c_short) -> Option<IfReq> {
        let b = name.as_bytes();
        if b.len() >= IFNAMSIZ || b.contains(&0) {
            return None;
        }
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags,
            pad: [0; 22],
        };
        req.name[..b.len()].copy_from_slice(b);
        Some(req)
    }

    /// The name up to its NUL (lossy if the kernel ever wrote non-UTF-8).
    pub fn name(&self) -> String {
        let len = self.name.iter().position(|&c| c == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(&self.name[..len]).into_owned()
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `ioctl(fd, TUNSETIFF, req)`; the kernel writes the chosen name back.
pub fn tun_set_iff(fd: BorrowedFd<'_>, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: `fd` is a live descriptor for the call's duration (borrowed);
    // TUNSETIFF reads and writes at most `sizeof(struct ifreq)` bytes through
    // the pointer, and `req` is an exclusive reference to 40 bytes, the full
    // size of `struct ifreq`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as libc::Ioctl, req as *mut IfReq) };
    check(ret).map(drop)
}

/// `ioctl(fd, TUNSETQUEUE, req)`: `req.flags` is [`IFF_ATTACH_QUEUE`] or
/// [`IFF_DETACH_QUEUE`].
pub fn tun_set_queue(fd: BorrowedFd<'_>, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: `fd` is live (borrowed); TUNSETQUEUE reads `sizeof(struct ifreq)` bytes
    // through the pointer, which `IfReq` covers (40 bytes, asserted above).
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            TUNSETQUEUE as libc::Ioctl,
            req as *mut IfReq,
        )
    };
    check(ret).map(drop)
}

/// `ioctl(fd, TUNSETVNETHDRSZ, &size)`.
pub fn tun_set_vnet_hdr_sz(fd: BorrowedFd<'_>, size: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is live (borrowed); TUNSETVNETHDRSZ reads one `int` through
    // the pointer, which points at a local `c_int` that outlives the call.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            TUNSETVNETHDRSZ as libc::Ioctl,
            &size as *const libc::c_int,
        )
    };
    check(ret).map(drop)
}

/// `ioctl(fd, TUNSETOFFLOAD, flags)` (the flags are passed by value).
pub fn tun_set_offload(fd: BorrowedFd<'_>, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: `fd` is live (borrowed); TUNSETOFFLOAD takes its argument by
    // value, so no memory is accessed through it.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            TUNSETOFFLOAD as libc::Ioctl,
            libc::c_ulong::from(flags),
        )
    };
    check(ret).map(drop)
}

/// The most iovecs [`writev_runs`] passes (the header's included).
pub const RUNS_MAX: usize = 128;

/// `writev` of `head` then `chunks`, one iovec per run of chunks that lie end to end in
/// memory (consecutive line slots of an arena), if that makes fewer than `max_iov` iovecs
/// (`head`'s included; at most [`RUNS_MAX`]); `None` (nothing written) when it would not.
pub fn writev_runs(
    fd: BorrowedFd<'_>,
    head: &[u8],
    chunks: &[&[u8]],
    max_iov: usize,
) -> Option<io::Result<usize>> {
    let max_iov = max_iov.min(RUNS_MAX);
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [empty; RUNS_MAX];
    iov[0] = libc::iovec {
        iov_base: head.as_ptr() as *mut libc::c_void,
        iov_len: head.len(),
    };
    let mut n = 1;
    for c in chunks.iter().filter(|c| !c.is_empty()) {
        let last = &mut iov[n - 1];
        if n > 1 && (last.iov_base as usize).wrapping_add(last.iov_len) == c.as_ptr() as usize {
            last.iov_len += c.len();
            continue;
        }
        if n + 1 >= max_iov {
            return None;
        }
        iov[n] = libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.len(),
        };
        n += 1;
    }
    // SAFETY: `iov[..n]` describes `head` and runs of `chunks` only: a run is chunks that lie
    // end to end, so its bytes are exactly theirs, all borrowed for this call (readable, and
    // only read: `writev` copies from them). The fd is live because it is borrowed.
    let ret = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), n as libc::c_int) };
    Some(check_size(ret))
}

/// Forks this process has made (a counter the child side of every `fork` bumps), so that a
/// thread's owner learns that it runs in a child, where the thread is not, without a
/// `getpid` system call per check. `None` when the fork handler could not be registered
/// (`pthread_atfork`: ENOMEM): the owner must then compare pids.
pub fn fork_generation() -> Option<u64> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        // SAFETY: `bump` is an `extern "C" fn()` with no preconditions that only touches an
        // atomic; registering it has no memory precondition.
        unsafe { libc::pthread_atfork(None, None, Some(bump)) == 0 }
    });
    ok.then(|| FORK_GEN.load(std::sync::atomic::Ordering::Relaxed))
}

static FORK_GEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn bump() {
    FORK_GEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Polls `fd` alone for `events` up to `timeout_ms` (negative: forever); the
/// events it reported (0: none in time, or the wait was interrupted).
fn poll_one(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout_ms: libc::c_int,
) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid, exclusively borrowed `pollfd` (nfds = 1)
    // that lives across the call; its fd is live because it is borrowed.
    let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    match check(ret) {
        Ok(n) if n > 0 => Ok(pfd.revents),
        Ok(_) => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// Waits up to `timeout_ms` for `fd` to poll writable; returns whether it did.
pub fn poll_writable(fd: BorrowedFd<'_>, timeout_ms: libc::c_int) -> io::Result<bool> {
    Ok(poll_one(fd, libc::POLLOUT, timeout_ms)? != 0)
}

/// Waits up to `timeout_ms` (negative: forever) for `fd` to poll readable.
/// Returns whether it did; an interrupted wait counts as "not yet".
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: libc::c_int) -> io::Result<bool> {
    let r = poll_one(fd, libc::POLLIN, timeout_ms)?;
    Ok(r & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0)
}

/// [`poll_readable`] on a raw descriptor (a port's [`rx_fd`]): `poll` touches
/// no memory through the descriptor, so a stale one only reads as
/// `POLLNVAL` (reported as readable, so the caller looks and finds the
/// error).
///
/// [`rx_fd`]: crate::Port::rx_fd
pub fn poll_raw_readable(fd: std::os::fd::RawFd, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid, exclusively borrowed `pollfd` (nfds = 1)
    // that lives across the call; an invalid fd is reported in `revents`.
    let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    match check(ret) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(any(test, feature = "test-support"))]
/// `setns(fd, CLONE_NEWNET)`: moves the calling thread (only) into the network
/// namespace that `fd` refers to.
pub fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain system call on a live (borrowed) fd; it changes only the
    // calling thread's network namespace and touches no memory of ours.
    let ret = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    check(ret).map(drop)
}

/// The effective user id of the calling thread.
pub fn geteuid() -> u32 {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn ioctl_numbers_match_the_headers() {
        assert_eq!(TUNSETIFF, 0x4004_54ca);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
        assert_eq!(TUNSETVNETHDRSZ, 0x4004_54d8);
        assert_eq!(TUNSETQUEUE, 0x4004_54d9);
    }

    #[test]
    fn ifreq_names() {
        let r = IfReq::new("tap%d", IFF_TAP).unwrap();
        assert_eq!(&r.name[..6], b"tap%d\0");
        assert_eq!(r.name(), "tap%d");
        assert!(IfReq::new("a123456789abcde", 0).is_some(), "15 bytes fit");
        assert!(IfReq::new("a123456789abcdef", 0).is_none(), "16 do not");
        assert!(IfReq::new("a\0b", 0).is_none());
        assert_eq!(IfReq::new("", 0).unwrap().name(), "");
    }
}
