//! `eventfd(2)`, for the sim link's wake-ups: a counter the sender adds to
//! and the receiver reads (which resets it), with no socket buffer behind
//! it (a Unix datagram allocated and freed an skb per wake-up).

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// A new non-blocking, close-on-exec eventfd at 0, as a `File` (reads and
/// writes of 8 bytes through `std`).
pub fn eventfd() -> io::Result<File> {
    // SAFETY: eventfd takes no pointers; the result is checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd, is valid and owned by no one
    // else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
