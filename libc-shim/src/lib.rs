//! `LD_PRELOAD` interposer of the libc socket API, on HICAMP memory.
//!
//! # The problem
//!
//! To know what a zero-copy stack on deduplicated memory would save for real applications, one
//! has to see their real traffic, unmodified. This library is preloaded into dynamically linked
//! programs (`hicamp run -- CMD`, or `LD_PRELOAD=liblibc_shim.so CMD`), interposes the socket
//! calls, and routes each descriptor (for now always to the kernel).
//!
//! # Trace mode
//!
//! Every call goes to the kernel unchanged. The payload of every send and receive on AF_INET and
//! AF_INET6 stream and datagram sockets is copied into a buffer on the calling thread and
//! interned by a background thread into one HICAMP memory per line size (one segment per call).
//! When the process ends (`exit`, `_exit`, `exec`), on a signal or periodically, it writes a
//! report: bytes and calls per direction, per-connection totals, the footprint of all that
//! payload in HICAMP memory at each line size (the `line_sizes` of `hicamp dedup --json`), and
//! the payload copies a HICAMP stack would not have made. See [`config`] for the settings.
//!
//! ```text
//!   application --call--> hook --real call (dlsym RTLD_NEXT)--> libc --> kernel
//!                          |  fd table: fd -> Route::Kernel, socket kind, account
//!                          '-> payload copy -> pending buffer -> interning thread -> memories
//! ```
//!
//! # Rules the hooks keep
//!
//! * The real functions are resolved lazily with `dlsym(RTLD_NEXT)`, race-free (`real`).
//! * A thread already inside the shim passes straight through (`guard`): the shim's own I/O,
//!   a signal handler interrupting a hook, the interning thread.
//! * No application-visible change: results, errno, short counts, flags are the kernel's.
//! * Any internal failure (a panic) is caught at the hook, disables the shim and falls back to
//!   the real call; nothing unwinds into C.
//! * Thread-locals are const-initialised and have no destructor; diagnostics go through the
//!   real `write`.
//! * Fork: the fd table is locked across `fork` (`pthread_atfork`), the child starts a fresh
//!   account. Exec: the report is written before the image goes.
//!
//! Unsafe code lives in `real` (symbol lookup), `hooks` (the C entry points), `sys` (the shim's
//! own system calls) and the process hooks below; every block says why it is sound.

pub mod config;
pub mod fdtable;
pub mod guard;
pub mod hooks;
pub mod real;
pub mod report;
pub mod sys;
pub mod trace;

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use config::{Config, Mode};

/// 0: not decided yet; 1: tracing; 2: off (mode off, or disabled in a child forked at a bad
/// moment).
static STATE: AtomicU8 = AtomicU8::new(0);

/// True when the hooks should do their bookkeeping.
#[inline]
pub fn enabled() -> bool {
    match STATE.load(Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = Config::get().mode == Mode::Trace;
            let _ = STATE.compare_exchange(0, if on { 1 } else { 2 }, Relaxed, Relaxed);
            STATE.load(Relaxed) == 1
        }
    }
}

/// Turns the shim into a plain pass-through for the rest of the process image.
pub fn disable() {
    STATE.store(2, Relaxed);
}

extern "C" fn on_exit() {
    if let Some(_g) = guard::Guard::enter() {
        guard::shielded(|| trace::finish("exit"));
    }
}

extern "C" fn on_signal(_sig: libc::c_int) {
    trace::signal_request();
}

unsafe extern "C" fn atfork_prepare() {
    guard::shielded(trace::fork_prepare);
}

unsafe extern "C" fn atfork_parent() {
    guard::shielded(trace::fork_parent);
}

unsafe extern "C" fn atfork_child() {
    guard::shielded(trace::fork_child);
}

/// Registers the exit, fork and signal handlers (the library's constructor).
extern "C" fn init() {
    let Some(_g) = guard::Guard::enter() else {
        return;
    };
    guard::shielded(|| {
        if !enabled() {
            return;
        }
        // SAFETY: registering a plain `extern "C" fn()` with no precondition.
        if unsafe { libc::atexit(on_exit) } != 0 {
            sys::diag("atexit failed: no report at exit");
        }
        // SAFETY: the three handlers are `unsafe extern "C" fn()` that never unwind.
        let r = unsafe {
            libc::pthread_atfork(
                Some(atfork_prepare),
                Some(atfork_parent),
                Some(atfork_child),
            )
        };
        if r != 0 {
            sys::diag("pthread_atfork failed: tracing disabled");
            disable();
            return;
        }
        if let Some(sig) = Config::get().signal {
            // SAFETY: an all-zero sigaction is a valid value of the C struct.
            let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            // SAFETY: `sa` is a valid sigaction whose handler only stores to an atomic
            // (async-signal-safe); the old action is not wanted.
            if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
                sys::diag(&format!("cannot catch signal {sig}: no report on it"));
            }
        }
    });
}

#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

#[cfg(test)]
mod tests {
    #[test]
    fn init_is_harmless_in_tests() {
        // The constructor is not registered in tests; calling it registers handlers that
        // write nothing (no socket was traced through hooks here).
        super::init();
        assert!(super::enabled() || !super::enabled());
    }
}
