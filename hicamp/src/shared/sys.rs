//! The operating-system side of the shared memory: futexes on words of the
//! mapping (process-shared: never `FUTEX_PRIVATE_FLAG`), the liveness of a
//! process by pid and start time, and the fork generation.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

/// Sleeps while `word` holds `expected`, at most `timeout`. Spurious and early
/// returns are allowed: every caller re-checks its condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned 32-bit word (in the shared mapping or
    // the heap); FUTEX_WAIT only reads it and sleeps; `ts` outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `n` sleepers on `word` (in any process that maps it).
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a live, aligned 32-bit word; FUTEX_WAKE does not
    // access memory through it, it only names the wait queue.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), and whether it is a zombie or dead (state `Z`/`X`).
/// `None` if the process does not exist.
fn stat_of(pid: u32) -> Option<(u64, bool)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let dead = state == "Z" || state == "X";
    // rest's fields are 3.. of the line; starttime is field 22.
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((start, dead))
}

/// The start time of a live, non-zombie process `pid`.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    match stat_of(pid)? {
        (s, false) => Some(s),
        _ => None,
    }
}

/// This process's start time (see [`stat_of`]); 0 if /proc is unreadable,
/// in which case liveness falls back to the pid alone.
pub(crate) fn own_start_time() -> u64 {
    stat_of(std::process::id()).map_or(0, |(s, _)| s)
}

/// True while the process `pid` that started at `start` (0 = unknown) runs.
/// A zombie counts as dead: it will never touch the mapping again. A pid
/// reused by a later process is told apart by its start time.
pub(crate) fn alive(pid: u32, start: u64) -> bool {
    if pid == 0 {
        return false;
    }
    match stat_of(pid) {
        Some((s, dead)) => !dead && (start == 0 || s == start),
        None => {
            if std::path::Path::new("/proc/self").exists() {
                // /proc is mounted and has no entry: the process is gone.
                return false;
            }
            // SAFETY: signal 0 sends nothing; it only checks the pid.
            unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
        }
    }
}

static FORK_GEN: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn bump_fork_gen() {
    FORK_GEN.fetch_add(1, Ordering::Relaxed);
}

/// The fork generation of this process: it changes in a child after `fork`,
/// so a handle inherited from the parent knows it is not its own.
pub(crate) fn fork_generation() -> u64 {
    ATFORK.call_once(|| {
        // SAFETY: registers a child handler that only does an atomic add
        // (async-signal-safe); no prepare or parent handler.
        unsafe {
            libc::pthread_atfork(None, None, Some(bump_fork_gen));
        }
    });
    FORK_GEN.load(Ordering::Relaxed)
}
