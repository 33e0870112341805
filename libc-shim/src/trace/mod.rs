//! Trace mode: the per-process account of socket traffic, the payload capture on the hot path,
//! and the interning thread.
//!
//! ```text
//!  hook (app thread)                         sampler (one mutex)         interning thread
//!  real call -> counters (atomics)
//!            -> fingerprint every line  ---> sampled fingerprints
//!               (no lock; cached for a       (content-defined sample)
//!               repeated large payload)
//!            -> while exact: copy ------>  pending (bounded)  ------>  one segment per payload
//!                                                                     per line size, kept alive
//! ```
//!
//! A payload under 1 KiB goes through its thread's own state first (one uncontended lock): a
//! repeat of one the thread saw recently costs one hash and a compare, its counts are merged
//! into the sampler later, and it travels to the interning thread as a count beside the one
//! copy of its bytes in the thread's batch (handed to the pending buffer every 64 KiB or 64 Ki
//! calls, and by the interning thread's tick and every report, which drain every thread's
//! state first, so the report's numbers stay exact).
//!
//! Every payload's lines are fingerprinted on the calling thread for the estimate of
//! `hicamp::footprint::sampled` (content-defined line sampling), which always sees all the
//! payload and keeps its tables within their share of the budget. While the exact memories fit
//! the budget (`HICAMP_SHIM_BUDGET`), the payload is also copied to a bounded pending buffer
//! and interned by one background thread at idle priority. The application never waits for
//! that thread: when the buffer is full (the thread is behind), when the memories reach their
//! share, or when a final report cannot finish interning within 80 ms, the memories are given
//! up (freed, except at exit) and the report's footprint is the estimate, saying why, with the
//! method, sample rate and 95% bound. Byte, call and per-connection totals are exact always.
//!
//! While exact, every segment is kept alive until the process ends (its handle is given up
//! with `Segment::hold_forever`, which keeps its reference and its logical bytes counted but
//! not the memory itself, so memories given up are freed), so the memories' statistics
//! describe all the payload the process moved: the footprint a HICAMP stack would need to hold
//! it.
//!
//! A forked child starts a fresh account (new memories, zero counters, the parent's sockets
//! with fresh per-connection counters): the interning thread does not exist there, the child's
//! traffic is its own, and it writes its own report.
//!
//! The modules: `interner` (the memories and what goes into them), `account` (one process's
//! counters, the pending buffer, the interning thread and the report), `events` (what the hooks
//! and the process handlers tell the account).

#[allow(unsafe_code)]
mod account;
#[allow(unsafe_code)]
mod events;
mod interner;

pub use account::{account, Account, MAX_CONNS};
pub use events::{
    accepted, bound, closing, closing_range, connected, dropping_privileges, duplicated, finish,
    fork_child, fork_parent, fork_prepare, is_stream, listening, new_socket, set_nonblocking,
    signal_request, terminating, transfer, Uncaptured, TERM_DONE,
};

/// Direction of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The process sends.
    Send,
    /// The process receives.
    Recv,
}

macro_rules! calls {
    ($($v:ident = $n:literal,)*) => {
        /// Every interposed function, for the per-call counts of the report.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum Call { $($v,)* }
        /// Names of [`Call`]s, in order.
        pub const CALL_NAMES: &[&str] = &[$($n,)*];
    };
}

calls! {
    Socket = "socket", Socketpair = "socketpair", Bind = "bind", Listen = "listen",
    Accept = "accept", Accept4 = "accept4", Connect = "connect", Shutdown = "shutdown",
    Close = "close", CloseRange = "close_range", Dup = "dup", Dup2 = "dup2", Dup3 = "dup3",
    Fcntl = "fcntl", Fcntl64 = "fcntl64", Ioctl = "ioctl", Getsockopt = "getsockopt",
    Setsockopt = "setsockopt", Send = "send", Sendto = "sendto", Sendmsg = "sendmsg",
    Sendmmsg = "sendmmsg", Write = "write", Writev = "writev", Recv = "recv",
    Recvfrom = "recvfrom", Recvmsg = "recvmsg", Recvmmsg = "recvmmsg", Read = "read",
    Readv = "readv", ReadChk = "__read_chk", RecvChk = "__recv_chk",
    RecvfromChk = "__recvfrom_chk", Sendfile = "sendfile", Sendfile64 = "sendfile64",
    Splice = "splice", Poll = "poll", PollChk = "__poll_chk", Ppoll = "ppoll",
    PpollChk = "__ppoll_chk", Select = "select", Pselect = "pselect",
    EpollCreate = "epoll_create", EpollCreate1 = "epoll_create1", EpollCtl = "epoll_ctl",
    EpollWait = "epoll_wait", EpollPwait = "epoll_pwait", Fork = "fork", Vfork = "vfork", Prctl = "prctl", Exec = "exec",
    Exit = "_exit",
}

pub(crate) const N_CALLS: usize = CALL_NAMES.len();
