//! Socket calls for the AF_PACKET and AF_XDP backends: `socket`,
//! `setsockopt`/`getsockopt` and `bind` with option and address structs
//! passed as byte arrays (built field by field by the callers, so no
//! `repr(C)` layout is trusted blindly), the kick system calls, and
//! interface look-ups.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `socket(domain, ty | SOCK_CLOEXEC, protocol)`.
pub fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with integer arguments; no memory is passed.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(fd, level, name, value, value.len())`.
pub fn setsockopt(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(value.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "option too long"))?;
    // SAFETY: the kernel reads at most `len` bytes from `value`, a live
    // slice of that length; `fd` is borrowed for the call.
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), len) };
    check(ret).map(drop)
}

/// `setsockopt` of one `int`.
pub fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    setsockopt(fd, level, name, &value.to_ne_bytes())
}

/// `getsockopt(fd, level, name, out, &len)`; returns the length the kernel
/// wrote.
pub fn getsockopt(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    out: &mut [u8],
) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(out.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "option too long"))?;
    // SAFETY: the kernel writes at most `len` bytes into `out`, an exclusive
    // slice of that length, and writes the length back into a local.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            out.as_mut_ptr().cast(),
            &mut len,
        )
    };
    check(ret)?;
    Ok(len as usize)
}

/// `bind(fd, addr, addr.len())` with a socket address built as bytes
/// (`sockaddr_ll`, `sockaddr_xdp`).
pub fn bind(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    let len = libc::socklen_t::try_from(addr.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "address too long"))?;
    // SAFETY: the kernel copies at most `len` bytes from `addr`, a live slice
    // (it copies into an aligned kernel buffer, so `addr`'s alignment does not
    // matter).
    let ret = unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr().cast(), len) };
    check(ret).map(drop)
}

/// `sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0)`: the TX kick of a ring
/// socket (AF_PACKET's TX ring, AF_XDP's TX ring).
pub fn kick_tx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length send with null buffers: the kernel reads no user
    // memory (the ring socket takes its frames from the mapped ring).
    let ret = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL)`: the RX/fill wake-up
/// of an AF_XDP socket with need_wakeup.
pub fn kick_rx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length receive with null buffers: the kernel writes no
    // user memory.
    let ret = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The index of interface `name` in the calling thread's network namespace;
/// `None` when there is none (or the name cannot be one).
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    if name.is_empty() || name.len() >= super::IFNAMSIZ {
        return None;
    }
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The hardware (MAC) address of interface `name`, asked through `fd` (a
/// socket in the interface's namespace) with `SIOCGIFHWADDR`.
pub fn hw_addr(fd: BorrowedFd<'_>, name: &str) -> io::Result<[u8; 6]> {
    let mut req = [0u8; 40]; // struct ifreq: name[16], then sockaddr ifr_hwaddr
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= super::IFNAMSIZ || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name",
        ));
    }
    req[..b.len()].copy_from_slice(b);
    // SAFETY: SIOCGIFHWADDR reads the name and writes the `sockaddr` of a
    // `struct ifreq` (at most 40 bytes); `req` is an exclusive 40-byte buffer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR as _, req.as_mut_ptr()) };
    check(ret)?;
    // sockaddr: sa_family (2 bytes), then sa_data holding the address.
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req[18..24]);
    Ok(mac)
}

/// The MTU of interface `name` (`SIOCGIFMTU` through `fd`).
pub fn mtu(fd: BorrowedFd<'_>, name: &str) -> io::Result<u32> {
    let mut req = [0u8; 40];
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= super::IFNAMSIZ || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name",
        ));
    }
    req[..b.len()].copy_from_slice(b);
    // SAFETY: SIOCGIFMTU reads the name and writes an `int` after it, inside
    // the exclusive 40-byte `struct ifreq` buffer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU as _, req.as_mut_ptr()) };
    check(ret)?;
    Ok(u32::from_ne_bytes(req[16..20].try_into().expect("4 bytes")))
}
