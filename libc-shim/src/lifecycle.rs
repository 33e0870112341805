//! The library's process handlers: the constructor (run when the library is loaded) registers
//! the exit handler, the fork handlers and the report signal.

use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Relaxed};

use crate::config::Config;
use crate::{disable, enabled, guard, real, sys, trace};

/// The terminating signals whose default action the shim takes over (to write the report
/// first): SIGTERM and SIGINT.
pub(crate) const TERM_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// Per [`TERM_SIGNALS`]: the shim's handler is installed (the application's disposition is the
/// default). The `sigaction`/`signal` hooks keep the application's view: it sees `SIG_DFL`,
/// setting `SIG_DFL` keeps the shim's handler, setting anything else replaces it for good.
static OURS: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// Index of `sig` in [`TERM_SIGNALS`] when the shim's handler holds it.
pub(crate) fn ours(sig: libc::c_int) -> Option<usize> {
    let i = TERM_SIGNALS.iter().position(|&s| s == sig)?;
    OURS[i].load(Relaxed).then_some(i)
}

/// The application replaced the shim's handler of `TERM_SIGNALS[i]`.
pub(crate) fn forget_ours(i: usize) {
    OURS[i].store(false, Relaxed);
}

/// SIGTERM/SIGINT with the default action: let the interning thread write the final report
/// (at most 3 s), then die of the signal as the default action would (the signal is blocked
/// while this runs; with the default disposition back, it terminates the process on return).
/// Only async-signal-safe calls: atomics, nanosleep, sigaction, raise.
extern "C" fn on_term(sig: libc::c_int) {
    if trace::terminating(sig) {
        let nap = libc::timespec {
            tv_sec: 0,
            tv_nsec: 5_000_000,
        };
        for _ in 0..600 {
            if trace::TERM_DONE.load(Acquire) {
                break;
            }
            // SAFETY: `nap` is a valid timespec; the remainder is not wanted.
            unsafe { libc::nanosleep(&nap, std::ptr::null_mut()) };
        }
    }
    // SAFETY: an all-zero sigaction with SIG_DFL (0) is the default disposition.
    let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `dfl` is a valid sigaction; the real function was resolved by `init`.
    unsafe { real::sigaction(sig, &dfl, std::ptr::null_mut()) };
    // SAFETY: raise has no precondition; the signal stays pending until this handler returns.
    unsafe { libc::raise(sig) };
}

/// Installs [`on_term`] for the terminating signals whose disposition is the default (an
/// ignored or handled signal is the application's, inherited across exec).
fn catch_terminating_signals() {
    for (i, &sig) in TERM_SIGNALS.iter().enumerate() {
        // SAFETY: an all-zero sigaction is a valid value of the C struct.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: querying only; `old` is writable.
        if unsafe { real::sigaction(sig, std::ptr::null(), &mut old) } != 0
            || old.sa_sigaction != libc::SIG_DFL
        {
            continue;
        }
        // SAFETY: as above.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_term as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: `sa` is a valid sigaction whose handler is async-signal-safe.
        if unsafe { real::sigaction(sig, &sa, std::ptr::null_mut()) } == 0 {
            OURS[i].store(true, Relaxed);
        }
    }
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
        catch_terminating_signals();
        if let Some(sig) = Config::get().signal {
            // SAFETY: an all-zero sigaction is a valid value of the C struct.
            let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            // SAFETY: `sa` is a valid sigaction whose handler only stores to an atomic
            // (async-signal-safe); the old action is not wanted.
            if unsafe { real::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
                sys::diag(&format!("cannot catch signal {sig}: no report on it"));
            }
        }
    });
}

#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;
