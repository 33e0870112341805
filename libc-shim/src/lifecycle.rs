//! The library's process handlers: the constructor (run when the library is loaded) registers
//! the exit handler, the fork handlers and the report signal.

use crate::config::Config;
use crate::{disable, enabled, guard, sys, trace};

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
pub(crate) extern "C" fn init() {
    let Some(_g) = guard::Guard::enter() else {
        return;
    };
    guard::shielded(|| {
        if !enabled() {
            return;
        }
        // The standard library's default panic message goes to fd 2, which may be the
        // application's socket: the shim's panics are diagnostics like any other.
        #[cfg(not(test))]
        std::panic::set_hook(Box::new(|info| sys::diag(&format!("panic: {info}"))));
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
