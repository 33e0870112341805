//! The reentrancy guard, errno preservation and the shield around every entry point.
//!
//! A hook does its own work only when the calling thread is not already inside the shim: the
//! shim's own I/O (report files, diagnostics, the standard library's writes during a report),
//! a signal handler that interrupts a hook, and the interning thread all go straight to libc.
//! The flag is a const-initialised thread-local without a destructor, so it works in every
//! thread at every moment, including `atexit` handlers after the thread-local destructors ran.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

thread_local! {
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
    /// The process id of this thread's process when it called `vfork`, until its first hook
    /// after the child is gone (0: no vfork pending).
    static VFORK_PARENT: Cell<i32> = const { Cell::new(0) };
}

/// Set once an internal failure (a panic) happened: every hook is then a plain pass-through.
static BROKEN: AtomicBool = AtomicBool::new(false);

/// Proof that this thread is inside the shim; leaving clears the flag.
#[derive(Debug)]
pub struct Guard(());

impl Guard {
    /// Enters the shim, or `None` when this thread already is inside it (or the shim is broken).
    #[inline]
    pub fn enter() -> Option<Guard> {
        if BROKEN.load(Relaxed) {
            return None;
        }
        IN_SHIM
            .try_with(|c| {
                if c.get() {
                    None
                } else {
                    c.set(true);
                    Some(Guard(()))
                }
            })
            .ok()
            .flatten()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = IN_SHIM.try_with(|c| c.set(false));
    }
}

/// True when this thread is inside the shim.
pub fn inside() -> bool {
    IN_SHIM.try_with(Cell::get).unwrap_or(true)
}

/// This thread is about to `vfork` (process `pid`): until it is seen back in that process, a
/// hook on it may run in the vfork child.
pub fn vforking(pid: i32) {
    let _ = VFORK_PARENT.try_with(|c| c.set(pid));
}

/// True when this thread runs in a `vfork` child, which shares the parent's memory until it
/// execs or exits: the hooks then change nothing (the fd table, the account and even this
/// thread-local are the parent's). Costs a `getpid` only on the first hook after a `vfork`:
/// the parent resumes only once the child is gone, so a thread that sees its own process id
/// again is the parent, and forgets the vfork.
#[inline]
pub fn in_vfork_child() -> bool {
    let p = VFORK_PARENT.try_with(Cell::get).unwrap_or(0);
    if p == 0 {
        return false;
    }
    if crate::sys::getpid() != p {
        return true;
    }
    let _ = VFORK_PARENT.try_with(|c| c.set(0));
    false
}

/// Marks this thread as inside the shim for good (the interning thread).
pub fn enter_forever() {
    let _ = IN_SHIM.try_with(|c| c.set(true));
}

/// True once an internal failure disabled the shim.
pub fn broken() -> bool {
    BROKEN.load(Relaxed)
}

/// The calling thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Sets the calling thread's errno.
pub fn set_errno(e: i32) {
    // SAFETY: __errno_location has no precondition.
    let p = unsafe { libc::__errno_location() };
    // SAFETY: it returns the calling thread's errno, always valid for writes.
    unsafe { *p = e };
}

/// Runs the shim's bookkeeping `f`, keeping the caller's errno, and never lets a panic out:
/// a panic disables the shim (every later call is a pass-through) and `f`'s result is lost.
#[inline]
pub fn shielded<R>(f: impl FnOnce() -> R) -> Option<R> {
    let e = errno();
    let r = catch_unwind(AssertUnwindSafe(f));
    set_errno(e);
    match r {
        Ok(v) => Some(v),
        Err(_) => {
            if !BROKEN.swap(true, Relaxed) {
                crate::sys::diag("internal failure: the shim is now a plain pass-through");
            }
            None
        }
    }
}
