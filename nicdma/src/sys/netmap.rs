//! The netmap system calls: opening `/dev/netmap`, `NIOCCTRL` REGISTER with
//! the EXTMEM option, and the `NIOCTXSYNC`/`NIOCRXSYNC` ring syncs. The
//! structs are the ABI in `crate::netmap::abi` (from `sys/net/netmap.h`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::netmap::abi::{
    NmreqHeader, NmreqOptExtmem, NmreqRegister, NETMAP_REQ_OPT_EXTMEM, NETMAP_REQ_REGISTER,
    NIOCCTRL, NIOCRXSYNC, NIOCTXSYNC,
};

/// Opens `path` (the netmap control device) read-write, close-on-exec.
pub fn open_device(path: &str) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `open`
    // reads only the path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ioctl(fd, NIOCCTRL, hdr)` for `NETMAP_REQ_REGISTER` of port
/// `hdr.nr_name`, with `req` as the body and `ext` (an EXTMEM option) as
/// the only option: this function links them into `hdr` itself, so the
/// addresses the kernel follows are those of the live references.
///
/// The kernel carves the port's `netmap_if`, rings and buffers out of the
/// user region `ext.nro_usrptr .. + ext.nro_info.nr_memsize` (it pins those
/// pages and writes into them until the registration ends with the fd).
pub fn register_extmem(
    fd: BorrowedFd<'_>,
    hdr: &mut NmreqHeader,
    req: &mut NmreqRegister,
    ext: &mut NmreqOptExtmem,
) -> io::Result<()> {
    hdr.nr_reqtype = NETMAP_REQ_REGISTER;
    hdr.nr_reserved = 0;
    hdr.nr_body = req as *mut NmreqRegister as u64;
    hdr.nr_options = ext as *mut NmreqOptExtmem as u64;
    ext.nro_opt.nro_reqtype = NETMAP_REQ_OPT_EXTMEM;
    ext.nro_opt.nro_next = 0;
    // SAFETY: `fd` is live (borrowed). NIOCCTRL reads and writes the 88-byte
    // `nmreq_header` behind `hdr` (an exclusive reference), follows
    // `nr_body` to `req` (56 bytes, exclusive) and `nr_options` to `ext`
    // (96 bytes, exclusive, its `nro_next` 0 ends the chain); all three
    // outlive the call. The user region named in `ext` is pinned by the
    // kernel (get_user_pages), so what the kernel writes there later never
    // reaches memory that is not that region's pages, whatever we do with
    // our mapping.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), NIOCCTRL as libc::Ioctl, hdr as *mut _) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sync(fd: BorrowedFd<'_>, req: u32) -> io::Result<()> {
    // SAFETY: `fd` is live (borrowed); NIOCTXSYNC/NIOCRXSYNC take no
    // argument. The kernel reads and writes the registered rings in the
    // region during the call; the caller holds the region exclusively (it
    // passes it by value through `NetmapSync::sync`), so no Rust reference
    // into the ring headers or slots is alive across it.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::Ioctl) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, NIOCTXSYNC)`.
pub fn txsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    sync(fd, NIOCTXSYNC)
}

/// `ioctl(fd, NIOCRXSYNC)`.
pub fn rxsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    sync(fd, NIOCRXSYNC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmap::abi::NmreqPoolsInfo;
    use std::os::fd::AsFd;

    #[test]
    fn the_ioctls_reach_the_kernel_and_fail_cleanly_on_a_non_netmap_device() {
        assert!(open_device("/nonexistent/netmap").is_err());
        assert!(open_device("a\0b").is_err());
        // /dev/null is no netmap device: each ioctl is refused (ENOTTY)
        // without touching our structs.
        let fd = open_device("/dev/null").unwrap();
        let mut hdr = NmreqHeader::new(NETMAP_REQ_REGISTER, "eth0").unwrap();
        let mut req = NmreqRegister::default();
        let mut ext = NmreqOptExtmem {
            nro_info: NmreqPoolsInfo {
                nr_memsize: 4096,
                ..Default::default()
            },
            ..Default::default()
        };
        let e = register_extmem(fd.as_fd(), &mut hdr, &mut req, &mut ext).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
        assert_eq!(hdr.nr_body, &req as *const NmreqRegister as u64);
        assert_eq!(hdr.nr_options, &ext as *const NmreqOptExtmem as u64);
        assert_eq!(ext.nro_opt.nro_reqtype, NETMAP_REQ_OPT_EXTMEM);
        assert_eq!(req, NmreqRegister::default());
        assert_eq!(
            txsync(fd.as_fd()).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
        assert_eq!(
            rxsync(fd.as_fd()).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
    }
}
