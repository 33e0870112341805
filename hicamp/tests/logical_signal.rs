//! Logical bytes stay exact when a signal handler on a thread takes
//! snapshots while that thread itself makes and drops handles: a thread's
//! own stripe of the counter adds with a load and a store, and a handler
//! that lands between the two must not have its add overwritten (a shim's
//! `write` on a stack socket is async-signal-safe, so a handler may make
//! segments).
//!
//! The test's thread clones and drops one segment in a loop while a second
//! thread sends it SIGUSR1 (`pthread_kill`) every few microseconds; the
//! handler takes one snapshot of a second segment (`hold_snapshots`: its
//! count and its logical bytes stay).
//! At the end the logical bytes must be the two segments plus one snapshot
//! per handled signal.
//!
//! The real window is two instructions between locked ones, and about 10 K
//! signals here have not landed in it in the runs made. With 20 spin hints
//! put between the stripe's load and store, the add without the thread's
//! busy flag lost 9.5 K of 10.2 K handler adds (this test failed) and the
//! add with it lost none: the test checks the protocol, and any lost add.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hicamp::{Config, Memory, Segment};

static HELD: OnceLock<Segment> = OnceLock::new();
static HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(s) = HELD.get() {
        // The looping thread never moves this segment's count, so the escape
        // to the overflow table (past 63) only ever locks in this handler.
        s.hold_snapshots(1);
        HANDLED.fetch_add(1, Relaxed);
    }
}

#[test]
fn a_signal_handlers_snapshots_are_never_lost() {
    let mem = Memory::new(Config::default()).unwrap();
    let looped = mem.segment(&[7u8; 1000]).unwrap();
    let held = mem.segment(&[9u8; 3000]).unwrap();
    let (a, b) = (looped.len(), held.len());
    HELD.set(held).map_err(drop).unwrap();
    // SAFETY: an all-zero sigaction is a valid value (no handler, no flags).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa_mask` is a sigset_t this function owns.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: a valid sigaction whose handler only touches statics set
    // above; SA_RESTART keeps interrupted system calls going.
    let r = unsafe { libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) };
    assert_eq!(r, 0, "sigaction");
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let done = AtomicBool::new(false);
    let n = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Relaxed) {
                // SAFETY: `me` is the test's thread, alive until `done`
                // is set (the scope joins this thread before it returns).
                unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
                std::thread::sleep(Duration::from_micros(20));
            }
        });
        let end = Instant::now() + Duration::from_millis(800);
        let mut n = 0u64;
        while Instant::now() < end {
            for _ in 0..1000 {
                drop(std::hint::black_box(looped.clone()));
            }
            n += 1000;
        }
        done.store(true, Relaxed);
        n
    });
    let handled = HANDLED.load(Relaxed);
    eprintln!("{n} clones and drops, {handled} signals handled");
    assert!(handled > 100, "only {handled} signals were handled");
    assert_eq!(
        mem.stats().logical_bytes,
        a + b * (1 + handled),
        "{n} clones and drops, {handled} snapshots taken in the handler"
    );
}
