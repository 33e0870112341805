//! `LD_PRELOAD` interposer of the libc socket API, on HICAMP memory.
//!
//! # The problem
//!
//! To know what a zero-copy stack on deduplicated memory would save for real applications, one
//! has to see their real traffic, unmodified. This library is preloaded into dynamically linked
//! programs (`hicamp run -- CMD`, or `LD_PRELOAD=liblibc_shim.so CMD`), interposes the socket
//! calls, and routes each descriptor: to the kernel (trace mode), or AF_INET sockets to segstack
//! (stack mode, [`stack`]).
//!
//! # Trace mode
//!
//! Every call goes to the kernel unchanged. The payload of every send and receive on AF_INET and
//! AF_INET6 stream and datagram sockets is fingerprinted line by line on the calling thread (the
//! estimate by content-defined line sampling) and, while the memory budget allows and the
//! background thread keeps up, copied to a bounded buffer that thread interns into one HICAMP
//! memory per line size (one segment per call). When the process ends (`exit`, `_exit`,
//! `exec`), on a signal or periodically, it writes a report: bytes and calls per direction,
//! per-connection totals, the footprint of all that payload in HICAMP memory at each line size
//! (the `line_sizes` of `hicamp dedup --json`: exact, or estimated past the budget with the
//! method, rate and error bound named), and the payload copies a HICAMP stack would not have
//! made. See [`config`] for the settings.
//!
//! ```text
//!   application --call--> hook --real call (dlsym RTLD_NEXT)--> libc --> kernel
//!                          |  fd table: fd -> Route::Kernel, socket kind, account
//!                          |-> line fingerprints -> sampled set (the estimate)
//!                          '-> payload copy -> pending buffer -> interning thread -> memories
//! ```
//!
//! # Stack mode
//!
//! `HICAMP_SHIM_MODE=stack`: the application's AF_INET stream and datagram sockets (except
//! 127.0.0.0/8) are served by segstack over a nicdma port in this process; each is a real
//! descriptor whose readiness the stack drives, so kernel `epoll`/`poll`/`select` work on
//! mixed sets. See [`stack`]. Trace mode's hooks pay one bitmap load for it.
//!
//! # Local mode
//!
//! `HICAMP_SHIM_MODE=local`: a TCP connection between two processes under the shim that
//! attach the same shared HICAMP memory switches to that memory's connection rings after the
//! kernel's handshake, the kernel connection staying open underneath; every other connection
//! stays on kernel TCP. See [`local`].
//!
//! # Rules the hooks keep
//!
//! * The real functions are resolved lazily with `dlsym(RTLD_NEXT)`, race-free (`real`).
//! * A thread already inside the shim passes straight through (`guard`): the shim's own I/O,
//!   a signal handler interrupting a hook, the interning thread.
//! * No application-visible change: results, errno, short counts, flags are the kernel's.
//! * Any internal failure (a panic) is caught at the hook, disables the shim and falls back to
//!   the real call; nothing unwinds into C.
//! * Thread-locals are const-initialised and have no destructor.
//! * The shim never writes to a descriptor of the application's (fd 2 may be a socket):
//!   diagnostics go to a file of their own (`sys::diag`), the summary without a report prefix too.
//! * Fork: the fd table's fork-safe lock is taken for writing across `fork`
//!   (`pthread_atfork`), the child starts a fresh account. vfork: hooks in the child (which runs
//!   on the parent's memory) change nothing (`guard::in_vfork_child`). Exec: the report is
//!   written before the image goes.
//! * A process that sandboxes itself (`prctl(PR_SET_SECCOMP)`) gets its report first, then the
//!   shim passes everything through: no system call of its own afterwards. A root process
//!   switching user opens its report files first. SIGTERM/SIGINT with the default action write
//!   the final report before they kill.
//!
//! The crate denies unsafe code except in these modules, each block with a `// SAFETY:`
//! comment: `real` (symbol lookup), `hooks` (the C entry points), `sys` (the shim's own system
//! calls), `lifecycle` (the constructor, exit, fork and signal handlers), `fdtable` (the fd
//! table's lock held across `fork`), `guard` (errno kept across the bookkeeping), `local` (its descriptors and system calls),
//! `stack` (the
//! stack's descriptors, its fork handler and the socket calls it serves) and, in `trace`,
//! `account` (the process's one account, published once) and `events` (the fork handlers). The
//! `vfork` hook is a naked function (x86-64).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod fdbits;
#[allow(unsafe_code)]
pub mod fdtable;
#[allow(unsafe_code)]
pub mod guard;
// Each hook is the libc function of its name, with libc's documented contract: the module
// documents the rules they all keep instead of repeating the man pages.
#[allow(unsafe_code, missing_docs)]
pub mod hooks;
#[allow(unsafe_code)]
mod lifecycle;
#[allow(unsafe_code)]
pub mod local;
#[allow(unsafe_code)]
pub mod real;
pub mod report;
#[allow(unsafe_code)]
pub mod stack;
#[allow(unsafe_code)]
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

#[cfg(test)]
mod tests {
    use crate::config::{Config, Mode};

    #[test]
    fn state_follows_the_mode_and_disable_is_final() {
        // The constructor is not registered in tests; calling it registers handlers that
        // write nothing (no socket was traced through hooks here).
        crate::lifecycle::init();
        assert_eq!(super::enabled(), Config::get().mode == Mode::Trace);
        super::disable();
        assert!(!super::enabled());
        // A later look at the settings does not turn it back on.
        crate::lifecycle::init();
        assert!(!super::enabled());
    }
}
