//! Forked children of the stack process: their stack operations are served by the stack
//! process, over a control connection (unless the child re-homed its listeners into a stack
//! of its own: [`super::rehome`]; then it asks only that, here).
//!
//! The process that made the stack stays the *stack process*: its stack thread and port are
//! the only ones. A child forked from it (or from such a child) keeps its copies of the stack
//! descriptors (each the A end of a socketpair whose B end only the stack process holds: the
//! child closes its copies of the stack process's own descriptors at fork), so readiness keeps
//! working in the kernel across processes: the stack thread writes tokens into B and every
//! process's `epoll`/`poll` on A sees them.
//!
//! * **Channel.** At its first stack operation a child connects an AF_UNIX `SOCK_SEQPACKET`
//!   socket to the abstract name `hicamp-stack.PID` (the stack process's pid; the stack
//!   process listens from its first `fork`). One connection per child thread, one server
//!   thread per connection in the stack process; a request is one message and its reply one
//!   message.
//! * **Requests.** Each request carries the child's own descriptor (`SCM_RIGHTS`). The stack
//!   process recognises it by its inode (A's inode is recorded when the socket is made), lends
//!   it to the socket for the call, and runs the very same operation as for its own threads
//!   ([`super::ops`]), non-blocking; a child blocks on its own descriptor (`poll` on A) and
//!   asks again. A non-blocking receive or accept whose A holds no token is answered `EAGAIN`
//!   in the child, without a round trip (the stack writes a token the moment it has data).
//! * **Posted sends.** Every answer on a connected TCP socket reports its send room (for
//!   `accept`, the new socket's); the child keeps it per descriptor and posts a send that
//!   fits (at most [`CHUNK`] bytes) without waiting for its answer, returning its length at
//!   once: the stack process serves a channel's requests in order, so the next call on the
//!   socket finds it done. Room only grows meanwhile (acknowledgements) unless another process
//!   sends on the socket; a posted send that then finds less waits in the stack process for
//!   room (`posted_send_waits`), and one that meets a reset (or a connection already gone) is
//!   dropped as the kernel drops its send buffer (`posted_lost_bytes`; the error goes to the
//!   child's next call). Room is reported only while both sides are open (`ESTABLISHED`):
//!   after the peer's FIN, sends wait for their answers and errors come as the kernel's. Only
//!   while one thread of the child talks to the stack process (one channel): another thread's
//!   call would cross another channel and could overtake a post. Before a `fork` or an `exec`
//!   the thread waits until its posts are served ([`barrier`]). A server thread runs the
//!   interface once for the requests queued together on its channel (up to 8), before it
//!   sleeps or waits for room, not once per request. nginx's
//!   response (header `writev` + body through `sendfile`) so costs no round trip, and with
//!   pushed receives (below) neither does its request.
//! * **Posted sendfile.** A child's `sendfile` from a regular file that fits the room is
//!   posted as well, without its bytes: the request carries the file's descriptor next to the
//!   socket's (`SCM_RIGHTS`), the offset, the count (what the file holds from the offset, at
//!   most the asked count) and the child's `fstat` key; the stack process reads the range
//!   straight into segments or queues it from its sendfile cache ([`super::filecache`],
//!   keyed by that `fstat`), as for its own `sendfile`. The child moves the offset and returns
//!   the count at once. A file truncated meanwhile, or an error, drops the rest
//!   (`posted_lost_bytes`). `HICAMP_STACK_SENDFILE=copy` keeps the buffered path.
//! * **Pending sockets.** A child's new AF_INET socket is pending in the child; the first `bind`,
//!   `connect`, `listen` or `sendto` sends the kernel socket itself, the stack process routes it
//!   and, when it goes to the stack, sends back the new A end that the child `dup3`s over its
//!   number. `accept` passes the accepted socket's A end back, installed at the lowest free
//!   number as the kernel's would be.
//! * **Pushed receives.** A child's first receive on a TCP connection that no descriptor of
//!   the stack process refers to (one the child accepted, or one its parent closed after the
//!   fork) switches the socket to *pushed* ([`switch_on`], answered with `Rep::pushed`): under
//!   the stack's lock the token bytes in A are drained, and from then on every pass that syncs
//!   the socket writes its received bytes into B instead of tokens ([`push`]). The child's
//!   `recv`/`read`/`readv`/`recvmsg` on A is then its own kernel call, with no round trip:
//!   `MSG_PEEK` and `MSG_WAITALL` as the kernel's socket pair does them, a blocking call waits
//!   on A with the socket's `SO_RCVTIMEO` (each answer carries it), `FIONREAD` adds A's bytes
//!   to the stack's (one request). B full: the rest stays in segstack's receive queue (the
//!   window closes as a kernel socket's would) and B's `EPOLLOUT` is armed once in an epoll
//!   set the stack thread polls ([`spilled`]). The end: `shutdown(B, SHUT_WR)` once the
//!   peer's FIN came and every byte went; at A's end of stream the child asks the stack's own
//!   receive once (`Req::b` = 1): 0, or the connection's error (`ECONNRESET`, `ETIMEDOUT`)
//!   once and then 0, after bytes the stack still held when it failed. A reset also shuts
//!   only B's write side (B must hang up only when every A is closed: a reset orphan released
//!   at once would answer the child's question with a plain end of stream), so a child's
//!   `poll` on a reset pushed socket sees `POLLIN|POLLRDHUP`, not the kernel's
//!   `POLLHUP|POLLERR`; the error comes with the next receive. Never switched back: the
//!   stack process has no descriptor of it (one it received later over a unix socket is a
//!   plain socket pair end there), and another child's receive request is answered `pushed`
//!   (it then reads A too). Tokens never reach a pushed A; accept, `EPOLLOUT` (A's fill) and
//!   the other calls are as before. `HICAMP_STACK_PUSH=0` (read at load) turns it off.
//! * **Data.** Sends and receives not pushed carry the payload in the message (posted
//!   `sendfile`s carry none); pushed bytes go through B and A. Either way twice copied below the socket API per byte (into the kernel's
//!   socket buffer and out of it), counted in the stack process's report (`proxy`:
//!   `payload_from_stack_bytes` includes `pushed_bytes`; and in
//!   `payload_bytes_copied_below_socket_api`); a push's copy out of the received segments is
//!   counted as a receive's (`api_copy_out_bytes`). Rings of segment references in memory
//!   shared by the processes would remove both copies.
//! * **Lifetime.** A socket of the stack process that existed at a fork, or that a child used,
//!   is *shared*: when the stack process closes its last descriptor of it, the socket stays
//!   (an *orphan*) until its B end hangs up, which the kernel does when the last A copy in any
//!   process is closed; only then does its connection close. So a `ForkingTCPServer` parent
//!   closing its copy of an accepted connection leaves the child's connection alone.
//! * **Stack process exit.** The stack process's exit closes B ends, the port and the
//!   listener: children's stack descriptors then read end of stream and writes fail with
//!   `EPIPE`; a child's later stack operations fail (`ENETDOWN`, `EPIPE` for sends, end of
//!   stream for receives).
//! * **Exec.** A child that execs hands its stack descriptors to the new image:
//!   `HICAMP_STACK_PROXY=PID:FD/INODE,...` in its environment (added by the exec hooks), taken
//!   out again by the new image's constructor, which marks each descriptor whose inode still
//!   matches and reaches the same stack process.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use libc::{c_int, c_void, sockaddr, socklen_t};

use super::{
    filecache, internal, is_stack, lock, mark, mark_pending, ops, unmark, Kind, Opts, Pending,
    PMARKS,
};
use crate::guard;
use crate::real;

/// This process's pid when it made the stack.
pub(super) static STACK_SELF: AtomicI32 = AtomicI32::new(0);
/// In a child: the stack process it reaches.
pub(super) static STACK_PID: AtomicI32 = AtomicI32::new(0);
/// Bumped in every forked child: a thread's control connection made before is its parent's.
pub(super) static FORK_GEN: AtomicU64 = AtomicU64::new(1);
/// The stack process's control listener (-1: none yet).
static LISTENER: AtomicI32 = AtomicI32::new(-1);
/// In a child: the stack process cannot be reached any more.
static GONE: AtomicBool = AtomicBool::new(false);

static CHILDREN: AtomicU64 = AtomicU64::new(0);
static REQUESTS: AtomicU64 = AtomicU64::new(0);
static TO_STACK: AtomicU64 = AtomicU64::new(0);
static FROM_STACK: AtomicU64 = AtomicU64::new(0);
static POSTED: AtomicU64 = AtomicU64::new(0);
static POSTED_WAITS: AtomicU64 = AtomicU64::new(0);
static POSTED_LOST: AtomicU64 = AtomicU64::new(0);
static PUSHED_SOCKETS: AtomicU64 = AtomicU64::new(0);
static PUSHED_BYTES: AtomicU64 = AtomicU64::new(0);
static PUSHES: AtomicU64 = AtomicU64::new(0);
static SPILLS_ARMED: AtomicU64 = AtomicU64::new(0);
static SENDFILES: AtomicU64 = AtomicU64::new(0);
static POSTED_SENDFILES: AtomicU64 = AtomicU64::new(0);
static SENDFILE_BYTES: AtomicU64 = AtomicU64::new(0);

/// The control channel's counters (the stack process's report).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(super) struct Stats {
    /// Control connections children made.
    pub children: u64,
    /// Requests served.
    pub requests: u64,
    /// Payload children sent through the channel.
    pub payload_to_stack_bytes: u64,
    /// Payload children received through the channel.
    pub payload_from_stack_bytes: u64,
    /// Payload copies below the socket API the channel made (two per byte).
    pub copied_bytes: u64,
    /// Of the requests, sends the child posted without waiting for an answer.
    pub posted_sends: u64,
    /// Posted sends that found less room than the child counted on (another process sent
    /// on the socket meanwhile): the stack process waited for room before its next request.
    pub posted_send_waits: u64,
    /// Bytes of posted sends the connection's error (reset, timeout) dropped, as the kernel
    /// drops what a reset finds in its send buffer.
    pub posted_lost_bytes: u64,
    /// Connections switched to pushed receives (a child's first receive on a connection no
    /// descriptor of the stack process refers to).
    pub pushed_sockets: u64,
    /// Of `payload_from_stack_bytes`, bytes the stack pushed into B ends (a child then reads
    /// them from A with no request).
    pub pushed_bytes: u64,
    /// Writes into B ends that pushed them.
    pub pushes: u64,
    /// Times B was full with bytes left in the stack: its writability was watched.
    pub push_spills: u64,
    /// Requests that were children's `sendfile`s from regular files: the file's descriptor
    /// came with the request and the stack process read the file in place (or queued its
    /// range from the sendfile cache); no byte of it crossed the channel.
    pub sendfiles: u64,
    /// Of those, posted (the transfer fitted the socket's room; also in `posted_sends`).
    pub posted_sendfiles: u64,
    /// The bytes they queued (in the totals' `sendfile_bytes`, not in the payload counts).
    pub sendfile_bytes: u64,
}

/// The channel's counters.
pub(super) fn stats() -> Stats {
    let (to, from) = (TO_STACK.load(Relaxed), FROM_STACK.load(Relaxed));
    Stats {
        children: CHILDREN.load(Relaxed),
        requests: REQUESTS.load(Relaxed),
        payload_to_stack_bytes: to,
        payload_from_stack_bytes: from,
        copied_bytes: 2 * (to + from),
        posted_sends: POSTED.load(Relaxed),
        posted_send_waits: POSTED_WAITS.load(Relaxed),
        posted_lost_bytes: POSTED_LOST.load(Relaxed),
        pushed_sockets: PUSHED_SOCKETS.load(Relaxed),
        pushed_bytes: PUSHED_BYTES.load(Relaxed),
        pushes: PUSHES.load(Relaxed),
        push_spills: SPILLS_ARMED.load(Relaxed),
        sendfiles: SENDFILES.load(Relaxed),
        posted_sendfiles: POSTED_SENDFILES.load(Relaxed),
        sendfile_bytes: SENDFILE_BYTES.load(Relaxed),
    }
}

/// Payload per message (at least the largest UDP datagram).
const CHUNK: usize = 64 * 1024;

const BIND: u32 = 1;
const LISTEN: u32 = 2;
const ACCEPT: u32 = 3;
const CONNECT: u32 = 4;
const SEND: u32 = 5;
const RECV: u32 = 6;
const SHUTDOWN: u32 = 7;
const NAME: u32 = 8;
const SETOPT: u32 = 9;
const GETOPT: u32 = 10;
const IOCTL: u32 = 11;
const SETNB: u32 = 12;
/// A child's `sendfile` from a regular file, posted: the file's descriptor travels with the
/// socket's, its key (the child's `fstat`) as the payload; the bytes never cross the channel.
const SENDFILE: u32 = 13;
/// A child asks whether it may make a listener again in a stack of its own (`a` = 0), or says
/// it did (`a` = 1); `b` = 1 on its first question (see [`super::rehome`]). The answer: the
/// port (`ret`), the address (`addr`), the backlog (`addrlen`), the options (`mflags`), the
/// child's stack index (`errno`).
const REHOME: u32 = 14;

/// The sendfile cache's key of a file as a child's `fstat` saw it (a [`SENDFILE`]'s payload).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: i64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl FileKey {
    fn of(st: &libc::stat) -> FileKey {
        let (f, v) = filecache::of_stat(st);
        FileKey {
            dev: f.dev,
            ino: f.ino,
            size: v.size,
            mtime_ns: v.mtime_ns,
            ctime_ns: v.ctime_ns,
        }
    }

    fn key(&self) -> (filecache::FileId, filecache::Version) {
        (
            filecache::FileId {
                dev: self.dev,
                ino: self.ino,
            },
            filecache::Version {
                size: self.size,
                mtime_ns: self.mtime_ns,
                ctime_ns: self.ctime_ns,
            },
        )
    }

    fn from_bytes(b: &[u8]) -> Option<FileKey> {
        let mut k = FileKey::default();
        let dst = head_bytes_mut(&mut k);
        (b.len() == dst.len()).then(|| dst.copy_from_slice(b))?;
        Some(k)
    }
}

/// A request's head (the payload follows it in the message).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct Req {
    op: u32,
    flags: i32,
    a: i64,
    b: i64,
    c: i64,
    addrlen: u32,
    /// The descriptor is a pending socket of the child's.
    pending: u32,
    /// A send of `sendfile`'s.
    sendfile: u32,
    /// [`NOREPLY`]: the child does not wait for an answer (a posted send).
    mode: u32,
    addr: [u8; 16],
}

/// A request the child does not wait for: a send that fits the room the stack process last
/// reported for the socket (see [`Rep::room`]).
const NOREPLY: u32 = 1;

/// A reply's head.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct Rep {
    ret: i64,
    errno: i32,
    mflags: i32,
    /// [`ANSWERED`], [`REAL`] or [`KERNEL`].
    pass: u32,
    nonblock: u32,
    rcvtimeo_ms: u32,
    sndtimeo_ms: u32,
    /// Bytes the socket's send buffer takes now (0 for anything but a connected TCP socket);
    /// for `accept`, the accepted socket's. The child posts sends up to it without waiting.
    room: u32,
    /// The socket's receives are pushed ([`push`]): the child reads A itself.
    pushed: u32,
    addrlen: u32,
    dgram: u32,
    addr: [u8; 16],
}

const HEAD: usize = 64;
const _: () = assert!(std::mem::size_of::<Req>() == HEAD && std::mem::size_of::<Rep>() == HEAD);

/// The stack process answered.
const ANSWERED: u32 = 0;
/// Not the stack's call: the child makes the real call.
const REAL: u32 = 1;
/// As [`REAL`], and the socket is the kernel's from now on (no longer pending).
const KERNEL: u32 = 2;

fn head_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: `Req`/`Rep` are `repr(C)` integers and byte arrays without padding (asserted
    // size), so all their bytes are initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

fn head_bytes_mut<T: Copy>(v: &mut T) -> &mut [u8] {
    // SAFETY: as above; every bit pattern is a valid `Req`/`Rep`.
    unsafe { std::slice::from_raw_parts_mut((v as *mut T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// The inode of a descriptor (0 when fstat fails).
pub(super) fn inode(fd: c_int) -> u64 {
    // SAFETY: an all-zero stat is valid; fstat writes it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return 0;
    }
    st.st_ino
}

/// The control socket's abstract address for the stack process `pid`.
fn address(pid: c_int) -> (libc::sockaddr_un, socklen_t) {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let name = format!("hicamp-stack.{pid}");
    for (i, b) in name.bytes().enumerate() {
        a.sun_path[i + 1] = b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    (a, len as socklen_t)
}

/// Moves `fd` to the upper half of the descriptor numbers (close-on-exec).
fn move_high(fd: c_int) -> c_int {
    // SAFETY: F_DUPFD_CLOEXEC with an integer lower bound.
    let high = unsafe {
        real::fcntl(
            fd,
            libc::F_DUPFD_CLOEXEC,
            ops::high_floor() as libc::c_ulong,
        )
    };
    if high < 0 {
        return fd;
    }
    // SAFETY: our own descriptor, now duplicated.
    unsafe { real::close(fd) };
    high
}

/// Sends `head` and `data` in one message, with `fd` (when >= 0).
fn send_msg(c: c_int, head: &[u8], data: &[&[u8]], fd: c_int) -> Result<(), c_int> {
    send_msg_fds(c, head, data, &[fd])
}

/// Sends `head` and `data` in one message, with the descriptors of `fds` that are >= 0 (at
/// most two).
fn send_msg_fds(c: c_int, head: &[u8], data: &[&[u8]], fds: &[c_int]) -> Result<(), c_int> {
    let mut joined = Vec::new();
    let data: Vec<&[u8]> = if data.len() > 256 {
        for d in data {
            joined.extend_from_slice(d);
        }
        vec![&joined[..]]
    } else {
        data.to_vec()
    };
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(1 + data.len());
    for d in std::iter::once(&head).chain(data.iter()) {
        if !d.is_empty() {
            iov.push(libc::iovec {
                iov_base: d.as_ptr() as *mut c_void,
                iov_len: d.len(),
            });
        }
    }
    let mut pass = [0 as c_int; 2];
    let mut k = 0usize;
    for &f in fds.iter().filter(|&&f| f >= 0).take(2) {
        pass[k] = f;
        k += 1;
    }
    let mut cbuf = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    if k > 0 {
        let bytes = (4 * k) as u32;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as _;
        // SAFETY: `msg` has a control buffer of `msg_controllen` bytes.
        let cm = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        let hdr = libc::cmsghdr {
            // SAFETY: CMSG_LEN is arithmetic.
            cmsg_len: unsafe { libc::CMSG_LEN(bytes) } as _,
            cmsg_level: libc::SOL_SOCKET,
            cmsg_type: libc::SCM_RIGHTS,
        };
        // SAFETY: the 64-byte, 8-aligned buffer holds a header at its start.
        unsafe { std::ptr::write(cm, hdr) };
        // SAFETY: and `k` (<= 2) ints after it (CMSG_SPACE(8) <= 64).
        let data = unsafe { libc::CMSG_DATA(cm) }.cast::<c_int>();
        for (i, &f) in pass.iter().take(k).enumerate() {
            // SAFETY: as above.
            unsafe { std::ptr::write_unaligned(data.wrapping_add(i), f) };
        }
    }
    loop {
        // SAFETY: a valid msghdr whose buffers live across the call.
        let r = unsafe { real::sendmsg(c, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(());
        }
        let e = guard::errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Receives one message into `head` and `out`: the payload's length and the descriptor it
/// carried (-1: none). 0 bytes: the peer is gone. A second descriptor is closed.
fn recv_msg(
    c: c_int,
    head: &mut [u8],
    out: &mut [&mut [u8]],
    cloexec: bool,
) -> Result<(usize, c_int, bool), c_int> {
    let (n, [fd, extra], trunc) = recv_msg_fds(c, head, out, cloexec, 0)?;
    if extra >= 0 {
        // SAFETY: an unexpected extra descriptor: ours to close.
        unsafe { real::close(extra) };
    }
    Ok((n, fd, trunc))
}

/// [`recv_msg`] with up to two descriptors (-1: none; any more are closed) and more `flags`
/// (`MSG_DONTWAIT`).
fn recv_msg_fds(
    c: c_int,
    head: &mut [u8],
    out: &mut [&mut [u8]],
    cloexec: bool,
    flags: c_int,
) -> Result<(usize, [c_int; 2], bool), c_int> {
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(1 + out.len());
    iov.push(libc::iovec {
        iov_base: head.as_mut_ptr().cast(),
        iov_len: head.len(),
    });
    for o in out.iter_mut() {
        if !o.is_empty() {
            iov.push(libc::iovec {
                iov_base: o.as_mut_ptr().cast(),
                iov_len: o.len(),
            });
        }
    }
    let mut cbuf = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let flags = flags | if cloexec { libc::MSG_CMSG_CLOEXEC } else { 0 };
    let n = loop {
        // SAFETY: a valid msghdr whose buffers live across the call.
        let r = unsafe { real::recvmsg(c, &mut msg, flags) };
        if r >= 0 {
            break r as usize;
        }
        let e = guard::errno();
        if e != libc::EINTR {
            return Err(e);
        }
    };
    let mut fds = [-1 as c_int; 2];
    let mut k = 0usize;
    // SAFETY: `msg` describes the control messages the kernel wrote into `cbuf`.
    let mut cm = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cm.is_null() {
        // SAFETY: a header inside `cbuf` (CMSG_FIRSTHDR/CMSG_NXTHDR check the bounds).
        let hdr = unsafe { std::ptr::read_unaligned(cm) };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN is arithmetic.
            let base = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize).saturating_sub(base) / 4;
            // SAFETY: an SCM_RIGHTS message carries `count` ints after its header, inside
            // `cbuf` (the kernel truncates what does not fit, setting MSG_CTRUNC).
            let p = unsafe { libc::CMSG_DATA(cm) }.cast::<c_int>();
            for i in 0..count {
                // SAFETY: as above.
                let v = unsafe { std::ptr::read_unaligned(p.wrapping_add(i)) };
                if k < 2 {
                    fds[k] = v;
                    k += 1;
                } else {
                    // SAFETY: an unexpected extra descriptor: ours to close.
                    unsafe { real::close(v) };
                }
            }
        }
        // SAFETY: as above.
        cm = unsafe { libc::CMSG_NXTHDR(&msg, cm) };
    }
    let trunc = msg.msg_flags & libc::MSG_TRUNC != 0;
    Ok((n, fds, trunc))
}

// ---- the stack process's side --------------------------------------------------------------

/// Called before a fork of the stack process: listens for its children (once).
pub(super) fn listen_for_children() {
    if LISTENER.load(Relaxed) >= 0 || !super::STARTED.load(Relaxed) {
        return;
    }
    let Some(_g) = guard::Guard::enter() else {
        return;
    };
    // SAFETY: plain socket calls on our own descriptor.
    let fd = unsafe { real::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return;
    }
    let fd = move_high(fd);
    let (a, len) = address(crate::sys::getpid());
    // SAFETY: a valid sockaddr_un of `len` bytes.
    let ok = unsafe { real::bind(fd, (&a as *const libc::sockaddr_un).cast(), len) } == 0
        // SAFETY: our own descriptor.
        && unsafe { real::listen(fd, 128) } == 0;
    if !ok {
        crate::sys::diag(&format!(
            "stack mode: control listener: {}",
            std::io::Error::from_raw_os_error(guard::errno())
        ));
        // SAFETY: our own descriptor.
        unsafe { real::close(fd) };
        return;
    }
    internal(fd, true);
    LISTENER.store(fd, Relaxed);
    let t = crate::sys::spawn_quiet("hicamp-proxy", None, move || acceptor(fd));
    if t.is_err() {
        crate::sys::diag("stack mode: no thread for the control listener");
    }
}

/// Accepts children's control connections; a thread serves each.
fn acceptor(l: c_int) {
    loop {
        // SAFETY: accept on our own listener, no address wanted.
        let c = unsafe {
            real::accept4(
                l,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            match guard::errno() {
                libc::EINTR | libc::ECONNABORTED => continue,
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                _ => return,
            }
        }
        let c = move_high(c);
        internal(c, true);
        CHILDREN.fetch_add(1, Relaxed);
        let t = crate::sys::spawn_quiet("hicamp-proxy-conn", None, move || serve(c));
        if t.is_err() {
            internal(c, false);
            // SAFETY: our own descriptor.
            unsafe { real::close(c) };
        }
    }
}

/// Serves one child's control connection until the child closes it.
fn serve(c: c_int) {
    let mut buf = vec![0u8; CHUNK + 1024];
    let mut batch = 0u32;
    loop {
        // The interface runs once for the requests that were queued together (at most 8),
        // before this thread sleeps: a request already queued is taken without a wait (no
        // poll first: one system call per request).
        batch += 1;
        if batch >= 8 {
            super::pump_owed();
            batch = 0;
        }
        let mut req = Req::default();
        let mut r = {
            let mut out = [&mut buf[..]];
            recv_msg_fds(
                c,
                head_bytes_mut(&mut req),
                &mut out,
                true,
                libc::MSG_DONTWAIT,
            )
        };
        if matches!(r, Err(libc::EAGAIN)) {
            super::pump_owed();
            batch = 0;
            let mut out = [&mut buf[..]];
            r = recv_msg_fds(c, head_bytes_mut(&mut req), &mut out, true, 0);
        }
        let Ok((n, [fd, file], trunc)) = r else {
            break;
        };
        if fd >= 0 {
            // Lent for the request: a child forked meanwhile must not keep a copy (it would
            // hold the socket open).
            internal(fd, true);
        }
        // A posted sendfile's file, read for the request and closed after it.
        if file >= 0 {
            internal(file, true);
        }
        let close_file = || {
            if file >= 0 {
                internal(file, false);
                // SAFETY: the file the child passed: ours to close.
                unsafe { real::close(file) };
            }
        };
        if n == 0 {
            if fd >= 0 {
                internal(fd, false);
                // SAFETY: a descriptor that came with no request: ours to close.
                unsafe { real::close(fd) };
            }
            close_file();
            break;
        }
        REQUESTS.fetch_add(1, Relaxed);
        let payload = &buf[..n.saturating_sub(HEAD).min(buf.len())];
        let done = if n < HEAD || trunc || fd < 0 {
            let e = if fd < 0 { libc::EBADF } else { libc::EMSGSIZE };
            Done::error(e)
        } else {
            super::defer_pumps(true);
            let d = guard::shielded(|| handle(&req, payload, fd, file));
            super::defer_pumps(false);
            d.unwrap_or_else(|| Done::error(libc::EIO))
        };
        let sent = if req.mode & NOREPLY != 0 {
            POSTED.fetch_add(1, Relaxed);
            Ok(())
        } else {
            send_msg(c, head_bytes(&done.rep), &[&done.out], done.pass_fd)
        };
        for f in done.lent.iter().copied() {
            unlend(f);
        }
        if fd >= 0 {
            if !done.unlent {
                unlend(fd);
            }
            internal(fd, false);
            // SAFETY: the descriptor the child passed: ours to close.
            unsafe { real::close(fd) };
        }
        for f in done.lent.iter().copied().filter(|&f| f != fd) {
            internal(f, false);
            // SAFETY: a descriptor this thread made for the child: ours to close.
            unsafe { real::close(f) };
        }
        close_file();
        if sent.is_err() {
            break;
        }
    }
    internal(c, false);
    // SAFETY: our own descriptor.
    unsafe { real::close(c) };
}

/// A served request: the reply, its payload, the descriptor it carries, and descriptors of this
/// process lent to sockets for the request (forgotten and closed once the reply is out).
struct Done {
    rep: Rep,
    out: Vec<u8>,
    pass_fd: c_int,
    lent: Vec<c_int>,
    /// The child's descriptor is back from its socket ([`unlend`] done).
    unlent: bool,
}

impl Done {
    fn error(e: c_int) -> Done {
        Done {
            rep: Rep {
                ret: -1,
                errno: e,
                ..Rep::default()
            },
            out: Vec::new(),
            pass_fd: -1,
            lent: Vec::new(),
            unlent: false,
        }
    }
}

/// What the child's descriptor is to the stack process.
#[derive(PartialEq, Eq)]
enum Lent {
    Stack,
    Pending,
    Unknown,
}

/// Lends the child's descriptor `y` (received here) to its socket for the request.
fn lend(y: c_int, pending: bool) -> Lent {
    let ino = inode(y);
    let mut w = lock();
    if let Some(&id) = w.inos.get(&ino) {
        if let Some(s) = w.socks.get_mut(id).and_then(Option::as_mut) {
            s.fds.push(y);
            s.proxied = true;
            w.fds.insert(y, id);
            mark(y);
            return Lent::Stack;
        }
    }
    if pending {
        if let Some(dgram) = inet_type(y) {
            w.pending.insert(
                y,
                Pending {
                    dgram,
                    opts: kernel_opts(y),
                },
            );
            mark_pending(y, true);
            return Lent::Pending;
        }
    }
    Lent::Unknown
}

/// Takes a lent descriptor back from its socket. A socket left without a descriptor in this
/// process is an orphan: it lives while the child's copies do.
fn unlend(y: c_int) {
    unlend_in(&mut lock(), y);
}

/// [`unlend`] under the caller's lock.
fn unlend_in(w: &mut super::World, y: c_int) {
    if w.pending.remove(&y).is_some() {
        mark_pending(y, false);
    }
    if let Some(id) = w.fds.remove(&y) {
        unmark(y);
        let empty = match w.socks.get_mut(id).and_then(Option::as_mut) {
            Some(s) => {
                s.fds.retain(|&f| f != y);
                s.proxied = true;
                s.fds.is_empty()
            }
            None => false,
        };
        if empty {
            ops::orphan(w, id);
        }
    }
}

/// `Some(dgram)` for an AF_INET stream or datagram socket.
fn inet_type(fd: c_int) -> Option<bool> {
    let dom = int_opt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let ty = int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    (dom == libc::AF_INET && (ty == libc::SOCK_STREAM || ty == libc::SOCK_DGRAM))
        .then_some(ty == libc::SOCK_DGRAM)
}

fn int_opt(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut l = 4 as socklen_t;
    // SAFETY: an int-sized option buffer.
    let r = unsafe { real::getsockopt(fd, level, name, (&mut v as *mut c_int).cast(), &mut l) };
    (r == 0).then_some(v)
}

fn timeo_opt(fd: c_int, name: c_int) -> Option<Duration> {
    // SAFETY: an all-zero timeval is valid.
    let mut t: libc::timeval = unsafe { std::mem::zeroed() };
    let mut l = std::mem::size_of::<libc::timeval>() as socklen_t;
    // SAFETY: a timeval-sized option buffer.
    let r = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut t as *mut libc::timeval).cast(),
            &mut l,
        )
    };
    let d = Duration::from_secs(t.tv_sec.max(0) as u64)
        + Duration::from_micros(t.tv_usec.max(0) as u64);
    (r == 0 && !d.is_zero()).then_some(d)
}

/// The options a child set on its pending socket, read back from the kernel socket.
fn kernel_opts(fd: c_int) -> Opts {
    let on = |level, name| int_opt(fd, level, name).is_some_and(|v| v != 0);
    // SAFETY: an all-zero linger is valid.
    let mut lg: libc::linger = unsafe { std::mem::zeroed() };
    let mut l = std::mem::size_of::<libc::linger>() as socklen_t;
    // SAFETY: a linger-sized option buffer.
    let lr = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&mut lg as *mut libc::linger).cast(),
            &mut l,
        )
    };
    Opts {
        reuseaddr: on(libc::SOL_SOCKET, libc::SO_REUSEADDR),
        reuseport: on(libc::SOL_SOCKET, libc::SO_REUSEPORT),
        keepalive: on(libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        nodelay: on(libc::IPPROTO_TCP, libc::TCP_NODELAY),
        linger: (lr == 0 && lg.l_onoff != 0).then_some(lg),
        rcvtimeo: timeo_opt(fd, libc::SO_RCVTIMEO),
        sndtimeo: timeo_opt(fd, libc::SO_SNDTIMEO),
        ..Opts::default()
    }
}

fn sockaddr_bytes(sin: &libc::sockaddr_in) -> [u8; 16] {
    let mut b = [0u8; 16];
    b.copy_from_slice(head_bytes(sin));
    b
}

/// A send the child posted without waiting: the child already returned its length to the
/// application, so all of it must go. It fits the room the last answer reported, unless
/// another process sent on the socket meanwhile: then this thread waits for room (the child's
/// next request on this channel waits with it). An error drops the rest, as a reset drops
/// the kernel's send buffer; the socket keeps the error for the child's next call.
fn posted_send(y: c_int, payload: &[u8], flags: c_int) -> Option<isize> {
    let mut off = 0usize;
    let limit = Instant::now() + Duration::from_secs(60);
    loop {
        let r = ops::send(y, &[&payload[off..]], flags, None)?;
        if r >= 0 {
            off += r as usize;
            if off >= payload.len() {
                return Some(off as isize);
            }
        } else if guard::errno() != libc::EAGAIN {
            let e = guard::errno();
            POSTED_LOST.fetch_add((payload.len() - off) as u64, Relaxed);
            park_error(y, e);
            return Some(r);
        }
        POSTED_WAITS.fetch_add(1, Relaxed);
        // What this thread queued must leave (and the interface run) for room to come.
        super::pump_owed();
        if ops::wait(y, libc::POLLOUT, Some(limit)).is_err() {
            POSTED_LOST.fetch_add((payload.len() - off) as u64, Relaxed);
            return Some(off as isize);
        }
    }
}

/// A posted send or sendfile failed after the child had returned: nobody saw the error, so a
/// reset or timeout is left on the socket (`SO_ERROR`) for the child's next call to report.
fn park_error(y: c_int, e: c_int) {
    if !matches!(e, libc::ECONNRESET | libc::ETIMEDOUT) {
        return;
    }
    let mut w = lock();
    if let Some(s) = w
        .fds
        .get(&y)
        .copied()
        .and_then(|id| w.socks.get_mut(id))
        .and_then(Option::as_mut)
    {
        s.so_error = e;
        s.err_taken = false;
    }
}

/// One non-blocking step of a child's `sendfile` (see [`SENDFILE`]): at most `req.b` bytes of
/// the file `file` at offset `req.a` into the socket lent as `y`, read in place into segments
/// or queued from the sendfile cache under the child's key (its `fstat`). The bytes queued
/// (0 at the file's end), or -1 with errno (`EAGAIN`: no room). `None`: not a TCP socket of
/// the stack's.
fn sendfile_once(y: c_int, file: c_int, req: &Req, payload: &[u8]) -> Option<isize> {
    let (Some(key), true, Ok(count)) = (
        FileKey::from_bytes(payload),
        file >= 0 && req.a >= 0,
        usize::try_from(req.b),
    ) else {
        guard::set_errno(libc::EINVAL);
        return Some(-1);
    };
    if count == 0 {
        return Some(0);
    }
    let r = ops::sendfile_posted(y, file, req.a, count, key.key());
    if let Some(n) = r {
        if n > 0 {
            SENDFILE_BYTES.fetch_add(n as u64, Relaxed);
        }
    }
    r
}

/// A `sendfile` the child posted (see [`SENDFILE`]): the child already returned `req.b`, so
/// all of it must go. As [`posted_send`]: waits for room when another process sent meanwhile,
/// and an error (or a file that ended early: truncated since the child's `fstat`) drops the
/// rest, counted in `posted_lost_bytes`. Returns the bytes queued.
fn posted_sendfile(y: c_int, file: c_int, req: &Req, payload: &[u8]) -> i64 {
    POSTED_SENDFILES.fetch_add(1, Relaxed);
    let count = req.b.max(0) as usize;
    let mut sent = 0usize;
    let limit = Instant::now() + Duration::from_secs(60);
    let lost = |sent: usize| {
        POSTED_LOST.fetch_add((count - sent) as u64, Relaxed);
        sent as i64
    };
    while sent < count {
        let step = Req {
            a: req.a + sent as i64,
            b: (count - sent) as i64,
            ..*req
        };
        let r = match sendfile_once(y, file, &step, payload) {
            Some(r) => r,
            // Not a TCP socket of the stack's (any more): its connection is over.
            None => return lost(sent),
        };
        if r > 0 {
            sent += r as usize;
            continue;
        }
        if r == 0 {
            // The file ended before `count` (truncated since the child looked).
            return lost(sent);
        }
        let e = guard::errno();
        if e != libc::EAGAIN {
            park_error(y, e);
            return lost(sent);
        }
        POSTED_WAITS.fetch_add(1, Relaxed);
        super::pump_owed();
        if ops::wait(y, libc::POLLOUT, Some(limit)).is_err() {
            return lost(sent);
        }
    }
    sent as i64
}

/// Bytes the send buffer of the socket on this process's descriptor `fd` takes now (0 for
/// anything but a connected TCP socket).
fn room(w: &super::World, fd: c_int) -> u32 {
    let Some(e) = w.engine.as_ref() else {
        return 0;
    };
    let Some(s) = w
        .fds
        .get(&fd)
        .and_then(|&id| w.socks.get(id))
        .and_then(Option::as_ref)
    else {
        return 0;
    };
    let Kind::Tcp(super::Tcp::Connected(h)) = s.kind else {
        return 0;
    };
    match e.iface.tcp(h) {
        // Only while both sides are open: after the peer's FIN (or a reset) the child's sends
        // wait for their answers, so that an error reaches the application as the kernel's
        // would.
        Ok(t)
            if t.state() == segstack::tcp::State::Established
                && t.can_send()
                && !s.wr_shut
                && s.so_error == 0 =>
        {
            let free = t.config().send_buf.saturating_sub(t.send_queue());
            free.min(u32::MAX as usize) as u32
        }
        _ => 0,
    }
}

/// `HICAMP_STACK_PUSH=0` keeps children's receives as requests (for comparisons).
fn push_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HICAMP_STACK_PUSH").is_none_or(|v| v != "0"))
}

/// For the socket on this process's descriptor `y`: `Some(eof)` when it is pushed (`eof`: B's
/// write side is shut, every byte went), `None` otherwise.
fn pushed_state(y: c_int) -> Option<bool> {
    let w = lock();
    let s = w
        .fds
        .get(&y)
        .and_then(|&id| w.socks.get(id))
        .and_then(Option::as_ref)?;
    s.pushed.then_some(s.eof_sig)
}

/// A child's receive on the socket lent as `y` switches it to pushed receives, when the
/// socket is a TCP connection, still receiving, and no descriptor of the stack process refers
/// to it (only the lent one): nothing but children read it then, and they read A. The token
/// bytes A holds go first (a child must never read them as data), then what the stack holds
/// is pushed. Never switched back. True when the socket is pushed.
fn switch_on(w: &mut super::World, y: c_int) -> bool {
    let super::World {
        engine, socks, fds, ..
    } = w;
    let Some(s) = fds
        .get(&y)
        .and_then(|&id| socks.get_mut(id))
        .and_then(Option::as_mut)
    else {
        return false;
    };
    if s.pushed {
        return true;
    }
    let Some(e) = engine.as_mut() else {
        return false;
    };
    if !push_enabled()
        || !matches!(s.kind, Kind::Tcp(super::Tcp::Connected(_)))
        || s.fds.as_slice() != [y]
        || s.eof_sig
        || s.rd_shut
    {
        return false;
    }
    // Under the lock: no token can be written meanwhile. A holds nothing but tokens (B wrote
    // nothing else into it).
    super::drain(y);
    s.tokens = 0;
    s.pushed = true;
    PUSHED_SOCKETS.fetch_add(1, Relaxed);
    super::sync(e, s);
    true
}

thread_local! {
    /// The buffer [`push`] copies received bytes through on this thread.
    static PUSH_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Pushes what the pushed socket `s` received into its B end: each byte is copied out of the
/// received segments once (as a receive copies it: counted as `api_copy_out_bytes`), into
/// the kernel's socket pair (B), and out again by the child's own receive on A: the two
/// copies below the socket API that the channel made before (`copied_bytes`). What B does not
/// take stays in the stack's receive queue (its window closes as a kernel socket's would),
/// and B's writability is watched ([`spilled`]). Returns the bytes left in the stack.
pub(super) fn push(e: &mut super::Engine, s: &mut super::Sock) -> usize {
    let Kind::Tcp(super::Tcp::Connected(h)) = s.kind else {
        return 0;
    };
    let left = PUSH_BUF.with(|b| {
        let mut buf = b.borrow_mut();
        if buf.len() < CHUNK {
            buf.resize(CHUNK, 0);
        }
        loop {
            let n = match e.iface.peek_slice(h, &mut buf[..]) {
                Ok(n) if n > 0 => n,
                _ => return 0,
            };
            let k = super::send_raw(s.b, &buf[..n]);
            if k <= 0 {
                return n;
            }
            let k = k as usize;
            // Taken out of the queue: snapshots dropped, nothing copied.
            let _ = e.iface.recv(h, k);
            PUSHES.fetch_add(1, Relaxed);
            PUSHED_BYTES.fetch_add(k as u64, Relaxed);
            FROM_STACK.fetch_add(k as u64, Relaxed);
            s.rec.received_bytes += k as u64;
            if k < n {
                return n - k;
            }
        }
    });
    if left > 0 {
        arm_spill(s);
    }
    left
}

/// Watches B's writability once (bytes wait in the stack for room in B).
fn arm_spill(s: &mut super::Sock) {
    let ep = super::SPILLS.load(Relaxed);
    if ep < 0 {
        return;
    }
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLOUT | libc::EPOLLONESHOT) as u32,
        u64: s.slot as u64,
    };
    let op = if s.spill_reg {
        libc::EPOLL_CTL_MOD
    } else {
        libc::EPOLL_CTL_ADD
    };
    // SAFETY: a valid epoll_event; both descriptors are ours.
    if unsafe { libc::epoll_ctl(ep, op, s.b, &mut ev) } == 0 {
        s.spill_reg = true;
        SPILLS_ARMED.fetch_add(1, Relaxed);
    }
}

/// The stack thread, when a watched B end has room: pushes the rest.
pub(super) fn spilled(w: &mut super::World) {
    let ep = super::SPILLS.load(Relaxed);
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
    // SAFETY: `evs` has room for 64 events; no wait.
    let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 64, 0) };
    let super::World { engine, socks, .. } = w;
    let Some(e) = engine.as_mut() else {
        return;
    };
    for ev in evs.iter().take(n.max(0) as usize) {
        if let Some(s) = socks.get_mut(ev.u64 as usize).and_then(Option::as_mut) {
            if s.pushed {
                super::sync(e, s);
            }
        }
    }
}

/// Serves one request on the child's descriptor `y`.
fn handle(req: &Req, payload: &[u8], y: c_int, file: c_int) -> Done {
    let lent = lend(y, req.pending != 0);
    let mut done = Done {
        rep: Rep::default(),
        out: Vec::new(),
        pass_fd: -1,
        lent: Vec::new(),
        unlent: false,
    };
    if lent == Lent::Unknown {
        // Not (any more) a socket of the stack's: its connection is over.
        if req.op == SEND && req.mode & NOREPLY != 0 {
            // The child already told the application it went: dropped, as a reset drops it.
            POSTED_LOST.fetch_add(payload.len() as u64, Relaxed);
        }
        if req.op == SENDFILE {
            POSTED_LOST.fetch_add(req.b.max(0) as u64, Relaxed);
        }
        match req.op {
            RECV => done.rep.ret = 0,
            SETNB => done.rep.ret = 0,
            _ if req.pending != 0 => done.rep.pass = KERNEL,
            SEND => (done.rep.ret, done.rep.errno) = (-1, libc::EPIPE),
            _ => (done.rep.ret, done.rep.errno) = (-1, libc::ENOTCONN),
        }
        return done;
    }
    let addr = if req.addrlen == 0 {
        std::ptr::null()
    } else {
        req.addr.as_ptr().cast::<sockaddr>()
    };
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut slen = std::mem::size_of::<libc::sockaddr_in>() as socklen_t;
    let sinp = (&mut sin as *mut libc::sockaddr_in).cast::<sockaddr>();
    let mut with_addr = false;
    let r: Option<i64> = ops::non_blocking(|| match req.op {
        // SAFETY: `addr` is null or `req.addr` (addrlen <= 16 bytes).
        BIND => unsafe { ops::bind(y, addr, req.addrlen) }.map(i64::from),
        LISTEN => ops::listen(y, req.a as c_int).map(i64::from),
        ACCEPT => {
            with_addr = true;
            // SAFETY: `sinp` is `sin`, of `slen` bytes.
            let r = unsafe { ops::accept4(y, sinp, &mut slen, req.flags) };
            if let Some(na) = r.filter(|&na| na >= 0) {
                internal(na, true);
                done.pass_fd = na;
                done.lent.push(na);
            }
            r.map(i64::from)
        }
        // SAFETY: `addr` is null or `req.addr` (addrlen <= 16 bytes).
        CONNECT => unsafe { ops::connect(y, addr, req.addrlen) }.map(i64::from),
        SEND => {
            TO_STACK.fetch_add(payload.len() as u64, Relaxed);
            let dst = (!addr.is_null()).then_some((addr, req.addrlen));
            let flags = req.flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
            let r = if req.mode & NOREPLY != 0 {
                posted_send(y, payload, flags)
            } else {
                ops::send(y, &[payload], flags, dst)
            };
            if req.sendfile != 0 {
                if let Some(n) = r.filter(|&n| n > 0) {
                    lock().counters.sendfile_bytes += n as u64;
                }
            }
            r.map(|n| n as i64)
        }
        // Pushed: what arrived is in A (or on its way there); the child reads it itself. Only
        // once everything went into B and B's write side is shut does the stack's own receive
        // say how the stream ended (0, or the reset's error once): `req.b` asks that.
        RECV if pushed_state(y).is_some_and(|eof| req.b == 0 || !eof) => {
            done.rep.pushed = 1;
            guard::set_errno(libc::EAGAIN);
            Some(-1)
        }
        RECV => {
            let want = (req.a.max(0) as usize).min(CHUNK);
            let mut data = vec![0u8; want];
            let flags = (req.flags & !libc::MSG_WAITALL) | libc::MSG_DONTWAIT;
            let r = ops::recv(y, &mut [&mut data[..]], flags, Some((sinp, &mut slen)));
            if let Some((n, mf)) = r {
                if n >= 0 {
                    data.truncate((n as usize).min(want));
                    FROM_STACK.fetch_add(data.len() as u64, Relaxed);
                    done.out = data;
                    done.rep.mflags = mf;
                }
            }
            with_addr = true;
            r.map(|(n, _)| n as i64)
        }
        SHUTDOWN => ops::shutdown(y, req.a as c_int).map(i64::from),
        NAME => {
            with_addr = true;
            // SAFETY: `sinp` is `sin`, of `slen` bytes.
            unsafe { ops::name(y, sinp, &mut slen, req.a != 0) }.map(i64::from)
        }
        // SAFETY: `payload` holds the option's bytes.
        SETOPT => unsafe {
            ops::setsockopt(
                y,
                req.a as c_int,
                req.b as c_int,
                payload.as_ptr().cast(),
                payload.len() as socklen_t,
            )
        }
        .map(i64::from),
        GETOPT => {
            let mut v = vec![0u8; (req.c.max(0) as usize).min(1024)];
            let mut l = v.len() as socklen_t;
            // SAFETY: `v` has `l` writable bytes.
            let r = unsafe {
                ops::getsockopt(
                    y,
                    req.a as c_int,
                    req.b as c_int,
                    v.as_mut_ptr().cast(),
                    &mut l,
                )
            };
            if r == Some(0) {
                v.truncate(l as usize);
                done.out = v;
            }
            r.map(i64::from)
        }
        IOCTL => {
            let mut v: c_int = 0;
            let p = &mut v as *mut c_int as usize as libc::c_ulong;
            // SAFETY: `p` points to an int (FIONREAD and SIOCOUTQ write one).
            let r = unsafe { ops::ioctl(y, req.a as libc::c_ulong, p) };
            if r == Some(0) {
                done.out = v.to_ne_bytes().to_vec();
            }
            r.map(i64::from)
        }
        SETNB => {
            ops::set_nonblocking(y, req.a != 0);
            Some(0)
        }
        SENDFILE if req.mode & NOREPLY != 0 => {
            SENDFILES.fetch_add(1, Relaxed);
            Some(posted_sendfile(y, file, req, payload))
        }
        REHOME => match super::rehome::serve(y, req.a != 0, req.b != 0) {
            Ok(l) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: l.addr.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*l.addr.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                done.rep.addr = sockaddr_bytes(&sin);
                done.rep.addrlen = l.backlog as u32;
                done.rep.mflags = l.opts as i32;
                done.rep.errno = l.index as i32;
                Some(i64::from(l.addr.port()))
            }
            Err(e) => {
                guard::set_errno(e);
                Some(-1)
            }
        },
        SENDFILE => {
            SENDFILES.fetch_add(1, Relaxed);
            sendfile_once(y, file, req, payload).map(|n| n as i64)
        }
        _ => {
            guard::set_errno(libc::EINVAL);
            Some(-1)
        }
    });
    let errno = guard::errno();
    match r {
        Some(v) => {
            done.rep.ret = v;
            if v < 0 {
                done.rep.errno = errno;
            }
        }
        None => {
            done.rep.pass = if lent == Lent::Pending && !lock().pending.contains_key(&y) {
                KERNEL
            } else {
                REAL
            };
        }
    }
    if with_addr && done.rep.ret >= 0 && r.is_some() {
        done.rep.addr = sockaddr_bytes(&sin);
        done.rep.addrlen = slen.min(16);
    }
    // A pending socket the call moved to the stack: its new A end goes back to the child.
    if lent == Lent::Pending && is_stack(y) {
        done.pass_fd = y;
    }
    // What the child needs to wait by itself: the socket's mode and timeouts; and the room
    // it may post sends into (the accepted socket's for an accept). Then the descriptor goes
    // back, under the same lock (one lock less per request: the stack thread and the other
    // server threads contend for it).
    let mut w = lock();
    if req.op == RECV && r.is_some() {
        done.rep.pushed = u32::from(switch_on(&mut w, y));
    }
    done.rep.room = room(&w, if req.op == ACCEPT { done.pass_fd } else { y });
    if let Some(s) = w
        .fds
        .get(&y)
        .and_then(|&id| w.socks.get(id))
        .and_then(Option::as_ref)
        .filter(|_| req.mode & NOREPLY == 0)
    {
        let ms =
            |d: Option<Duration>| d.map_or(0, |d| d.as_millis().clamp(1, u32::MAX as u128) as u32);
        done.rep.nonblock = u32::from(s.nonblock);
        done.rep.rcvtimeo_ms = ms(s.opts.rcvtimeo);
        done.rep.sndtimeo_ms = ms(s.opts.sndtimeo);
        done.rep.dgram = u32::from(matches!(s.kind, Kind::Udp { .. }));
    }
    unlend_in(&mut w, y);
    done.unlent = true;
    done
}

// ---- the child's side ----------------------------------------------------------------------

/// In a child: per descriptor, the send room the stack process's last answer on it reported,
/// less what the child posted since (0: unknown or none; a send then waits for its answer).
/// Room only grows meanwhile (acknowledgements), unless another process sends on the socket.
static ROOM: [AtomicU32; crate::fdbits::MAX_FD] =
    [const { AtomicU32::new(0) }; crate::fdbits::MAX_FD];

fn room_of(fd: c_int) -> Option<&'static AtomicU32> {
    ROOM.get(usize::try_from(fd).ok()?)
}

fn set_room(fd: c_int, v: u32) {
    if let Some(r) = room_of(fd) {
        r.store(v, Relaxed);
    }
}

/// In a child: per descriptor, its socket's receives are pushed (the child reads A itself).
static PUSHED: [AtomicBool; crate::fdbits::MAX_FD] =
    [const { AtomicBool::new(false) }; crate::fdbits::MAX_FD];
/// In a child: per descriptor, the socket's `SO_RCVTIMEO` in milliseconds (0: none), as the
/// stack process's last answer on it said (a pushed receive waits by itself).
static RCVTIMEO: [AtomicU32; crate::fdbits::MAX_FD] =
    [const { AtomicU32::new(0) }; crate::fdbits::MAX_FD];

fn is_pushed(fd: c_int) -> bool {
    usize::try_from(fd)
        .ok()
        .and_then(|i| PUSHED.get(i))
        .is_some_and(|p| p.load(Relaxed))
}

fn set_pushed(fd: c_int, on: bool, rcvtimeo_ms: u32) {
    if let Some(i) = usize::try_from(fd).ok().filter(|&i| i < PUSHED.len()) {
        PUSHED[i].store(on, Relaxed);
        RCVTIMEO[i].store(rcvtimeo_ms, Relaxed);
    }
}

fn rcvtimeo_of(fd: c_int) -> u32 {
    usize::try_from(fd)
        .ok()
        .and_then(|i| RCVTIMEO.get(i))
        .map_or(0, |t| t.load(Relaxed))
}

/// Takes `n` bytes of `fd`'s room, if it has them.
fn take_room(fd: c_int, n: usize) -> bool {
    let (Some(r), Ok(n)) = (room_of(fd), u32::try_from(n)) else {
        return false;
    };
    r.fetch_update(Relaxed, Relaxed, |v| v.checked_sub(n))
        .is_ok()
}

thread_local! {
    /// This thread's control connection and the fork generation it was made in.
    static CTL: Cell<(u64, c_int)> = const { Cell::new((0, -1)) };
    /// This thread posted sends since its last answered request.
    static UNCONFIRMED: Cell<bool> = const { Cell::new(false) };
}

/// The fork generation in which [`CHANNELS`] counts.
static CHANNELS_GEN: AtomicU64 = AtomicU64::new(0);
/// Control connections this process made in that generation.
static CHANNELS: AtomicU64 = AtomicU64::new(0);

/// Sends are posted only while one thread of this process talks to the stack process: the
/// channel keeps one thread's calls in order, but a posted send of one thread and a later
/// call of another on the same socket would cross different channels (and server threads).
/// From a process's second channel on, every send waits for its answer (a send posted by the
/// first thread just before the second thread's first call is the one case left unordered).
fn posting_allowed() -> bool {
    CHANNELS_GEN.load(Relaxed) == FORK_GEN.load(Relaxed) && CHANNELS.load(Relaxed) <= 1
}

/// Waits until the stack process has served this thread's posted sends (a request without a
/// descriptor, answered `EBADF` after them): before a `fork` (a child's calls on the same
/// sockets go over its own channels) and an `exec` (the new image's too).
pub(super) fn barrier() {
    if !UNCONFIRMED.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    let _ = UNCONFIRMED.try_with(|u| u.set(false));
    let gen = FORK_GEN.load(Relaxed);
    let Some((g, c)) = CTL.try_with(Cell::get).ok() else {
        return;
    };
    if g != gen || c < 0 {
        return;
    }
    let req = Req::default();
    if send_msg(c, head_bytes(&req), &[], -1).is_ok() {
        let mut rep = Rep::default();
        let _ = recv_msg(c, head_bytes_mut(&mut rep), &mut [], true);
    }
}

/// `pthread_atfork`'s prepare handler in an image a child exec'ed.
extern "C" fn atfork_prepare_exec() {
    barrier();
}

/// This thread's control connection, made at its first use in this process.
fn ctl() -> Result<c_int, c_int> {
    let gen = FORK_GEN.load(Relaxed);
    let (g, fd) = CTL.try_with(Cell::get).unwrap_or((0, -1));
    if g == gen && fd >= 0 {
        return Ok(fd);
    }
    if fd >= 0 {
        // The parent's connection, inherited: not ours to talk on.
        // SAFETY: our copy of it.
        unsafe { real::close(fd) };
        let _ = CTL.try_with(|c| c.set((0, -1)));
    }
    if GONE.load(Relaxed) {
        return Err(libc::ENETDOWN);
    }
    // SAFETY: plain socket calls on our own descriptor.
    let s = unsafe { real::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(guard::errno());
    }
    let s = move_high(s);
    let (a, len) = address(STACK_PID.load(Relaxed));
    loop {
        // SAFETY: a valid sockaddr_un of `len` bytes.
        let r = unsafe { real::connect(s, (&a as *const libc::sockaddr_un).cast(), len) };
        if r == 0 {
            break;
        }
        if guard::errno() == libc::EINTR {
            continue;
        }
        GONE.store(true, Relaxed);
        // SAFETY: our own descriptor.
        unsafe { real::close(s) };
        return Err(libc::ENETDOWN);
    }
    let _ = CTL.try_with(|c| c.set((gen, s)));
    if CHANNELS_GEN.swap(gen, Relaxed) != gen {
        CHANNELS.store(0, Relaxed);
    }
    CHANNELS.fetch_add(1, Relaxed);
    Ok(s)
}

/// A reply.
struct Answer {
    rep: Rep,
    /// Payload bytes received into the caller's buffers.
    len: usize,
}

/// One request on the child's descriptor `fd`: `data` after the head, the reply's payload into
/// `out`. A descriptor the reply carries: an accepted socket's (returned), or the new A end of
/// a pending socket the stack took (installed over `fd` here).
fn exchange(
    fd: c_int,
    req: &mut Req,
    data: &[&[u8]],
    out: &mut [&mut [u8]],
    cloexec: bool,
) -> Result<(Answer, c_int), c_int> {
    let pending = PMARKS.get(fd);
    req.pending = u32::from(pending);
    let c = ctl()?;
    let gone = |e: c_int| {
        if matches!(e, libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) {
            GONE.store(true, Relaxed);
        }
        libc::ENETDOWN
    };
    send_msg(c, head_bytes(req), data, fd).map_err(gone)?;
    let mut rep = Rep::default();
    let (n, passed, _) = recv_msg(c, head_bytes_mut(&mut rep), out, cloexec).map_err(gone)?;
    // Served in order: whatever this thread posted before is done.
    let _ = UNCONFIRMED.try_with(|u| u.set(false));
    if n == 0 {
        GONE.store(true, Relaxed);
        return Err(libc::ENETDOWN);
    }
    if n < HEAD {
        return Err(libc::EIO);
    }
    if rep.pass == KERNEL {
        mark_pending(fd, false);
    }
    if rep.pass == ANSWERED && req.op != ACCEPT {
        set_room(fd, rep.room);
        // Pushed is sticky; the receive timeout follows the socket's option.
        set_pushed(fd, is_pushed(fd) || rep.pushed != 0, rep.rcvtimeo_ms);
    }
    let mut extra = -1;
    if passed >= 0 {
        if req.op == ACCEPT {
            extra = passed;
            set_room(passed, rep.room);
            set_pushed(passed, false, 0);
        } else {
            // SAFETY: F_GETFD on the caller's descriptor.
            let fl = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
            let flags = if fl >= 0 && fl & libc::FD_CLOEXEC != 0 {
                libc::O_CLOEXEC
            } else {
                0
            };
            // SAFETY: the received A end replaces the pending kernel socket at its number.
            let r = unsafe { real::dup3(passed, fd, flags) };
            // SAFETY: the received descriptor, now duplicated (or useless).
            unsafe { real::close(passed) };
            if r >= 0 {
                mark_pending(fd, false);
                mark(fd);
                set_room(fd, rep.room);
            }
        }
    }
    Ok((Answer { rep, len: n - HEAD }, extra))
}

/// Posts a send the stack process's last answer said fits: the request goes out and the child
/// does not wait for its answer (the stack process serves the channel's requests in order, so
/// a later call on the socket sees it done). `None`: not posted (no room known, or no channel).
fn post(fd: c_int, bufs: &[&[u8]], flags: c_int, sendfile: bool) -> Option<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if total == 0 || total > CHUNK || flags & libc::MSG_OOB != 0 || PMARKS.get(fd) {
        return None;
    }
    let c = ctl().ok()?;
    if !posting_allowed() || !take_room(fd, total) {
        return None;
    }
    let req = Req {
        op: SEND,
        flags: flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        sendfile: u32::from(sendfile),
        mode: NOREPLY,
        ..Req::default()
    };
    match send_msg(c, head_bytes(&req), bufs, fd) {
        Ok(()) => {
            let _ = UNCONFIRMED.try_with(|u| u.set(true));
            Some(total)
        }
        Err(e) => {
            set_room(fd, 0);
            if matches!(e, libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) {
                GONE.store(true, Relaxed);
            }
            None
        }
    }
}

/// `sendfile` in a child from a regular file into a stack socket, without its bytes: each
/// request carries the file's descriptor and its key (this `fstat`) instead of the data (see
/// [`SENDFILE`]), and the stack process reads the file into segments itself (or queues the
/// range from its sendfile cache): no byte crosses the channel, none is copied by the shim.
/// When the socket's room (see [`post`]) takes the whole transfer (`count`, or what the file
/// holds from the offset on) the request is posted and the count returned at once; otherwise
/// it is answered with what was queued, and a blocking socket waits on its own descriptor for
/// room and asks again, as [`send`] does. The offset (`*off`, or the file position) moves by
/// what was queued. `None`: not served here (a file that is not regular or not open for
/// reading, an offset at or past the end, a pending socket: the buffered path decides).
///
/// # Safety
/// The C contract of `sendfile`.
pub(super) unsafe fn sendfile(
    out: c_int,
    inf: c_int,
    off: *mut i64,
    count: usize,
) -> Option<isize> {
    if count == 0 || PMARKS.get(out) {
        return None;
    }
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid stat buffer.
    if unsafe { libc::fstat(inf, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    // SAFETY: F_GETFL takes no argument.
    let fl = unsafe { real::fcntl(inf, libc::F_GETFL, 0) };
    if fl < 0 || fl & libc::O_ACCMODE == libc::O_WRONLY {
        return None;
    }
    let start = if off.is_null() {
        // SAFETY: lseek on the caller's descriptor (no change of position).
        unsafe { libc::lseek(inf, 0, libc::SEEK_CUR) }
    } else {
        // SAFETY: the caller's offset.
        unsafe { std::ptr::read(off) }
    };
    let n = count
        .min(ops::MAX_RW_COUNT)
        .min(usize::try_from(st.st_size.saturating_sub(start)).unwrap_or(0));
    if start < 0 || n == 0 {
        return None;
    }
    let key = FileKey::of(&st);
    let c = ctl().ok()?;
    let moved = |done: usize| {
        let end = start + done as i64;
        if off.is_null() {
            // SAFETY: lseek on the caller's descriptor.
            unsafe { libc::lseek(inf, end, libc::SEEK_SET) };
        } else {
            // SAFETY: the caller's offset.
            unsafe { std::ptr::write(off, end) };
        }
    };
    let mut done = 0usize;
    let mut dl: Option<Option<Instant>> = None;
    while done < n {
        let mut req = Req {
            op: SENDFILE,
            flags: libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            a: start + done as i64,
            b: (n - done) as i64,
            ..Req::default()
        };
        if posting_allowed() && take_room(out, n - done) {
            req.mode = NOREPLY;
            match send_msg_fds(c, head_bytes(&req), &[head_bytes(&key)], &[out, inf]) {
                Ok(()) => {
                    let _ = UNCONFIRMED.try_with(|u| u.set(true));
                    done = n;
                    break;
                }
                Err(e) => {
                    set_room(out, 0);
                    if matches!(e, libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) {
                        GONE.store(true, Relaxed);
                    }
                    if done > 0 {
                        break;
                    }
                    return Some(send_failed(libc::EPIPE, 0));
                }
            }
        }
        let a = match exchange_fds(out, inf, &mut req, &[head_bytes(&key)]) {
            Ok(a) => a,
            Err(_) if done > 0 => break,
            Err(_) => return Some(send_failed(libc::EPIPE, 0)),
        };
        if a.rep.pass != ANSWERED {
            if done > 0 {
                break;
            }
            return None;
        }
        if a.rep.ret > 0 {
            let asked = n - done;
            done += a.rep.ret as usize;
            if a.rep.nonblock != 0 && (a.rep.ret as usize) < asked {
                // What fitted: a non-blocking call returns it.
                break;
            }
            continue;
        }
        if a.rep.ret == 0 {
            // The file ended early (truncated since the `fstat`).
            break;
        }
        let e = a.rep.errno;
        let block = a.rep.nonblock == 0;
        if e == libc::EAGAIN && block {
            let d = *dl.get_or_insert_with(|| deadline(a.rep.sndtimeo_ms));
            if let Err(x) = ops::wait(out, libc::POLLOUT, d) {
                if done > 0 {
                    break;
                }
                return Some(fail(x));
            }
            continue;
        }
        if done > 0 {
            break;
        }
        // sendfile has no MSG_NOSIGNAL: EPIPE raises SIGPIPE, as the kernel's.
        return Some(send_failed(e, 0));
    }
    moved(done);
    Some(done as isize)
}

/// [`exchange`] for a request that carries a second descriptor (a file) and `data`.
fn exchange_fds(fd: c_int, file: c_int, req: &mut Req, data: &[&[u8]]) -> Result<Answer, c_int> {
    let c = ctl()?;
    let gone = |e: c_int| {
        if matches!(e, libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) {
            GONE.store(true, Relaxed);
        }
        libc::ENETDOWN
    };
    send_msg_fds(c, head_bytes(req), data, &[fd, file]).map_err(gone)?;
    let mut rep = Rep::default();
    let (n, _, _) = recv_msg(c, head_bytes_mut(&mut rep), &mut [], true).map_err(gone)?;
    // Served in order: whatever this thread posted before is done.
    let _ = UNCONFIRMED.try_with(|u| u.set(false));
    if n == 0 {
        GONE.store(true, Relaxed);
        return Err(libc::ENETDOWN);
    }
    if n < HEAD {
        return Err(libc::EIO);
    }
    if rep.pass == ANSWERED {
        set_room(fd, rep.room);
    }
    Ok(Answer { rep, len: n - HEAD })
}

fn fail<T: From<i8>>(e: c_int) -> T {
    guard::set_errno(e);
    T::from(-1)
}

/// An answer as a call's int result (`None`: make the real call).
fn int_result(r: Result<(Answer, c_int), c_int>) -> Option<c_int> {
    match r {
        Err(e) => Some(fail(e)),
        Ok((a, _)) if a.rep.pass != ANSWERED => None,
        Ok((a, _)) if a.rep.ret < 0 => Some(fail(a.rep.errno)),
        Ok((a, _)) => Some(a.rep.ret as c_int),
    }
}

/// Copies the caller's address into the request (at most a sockaddr_in's 16 bytes).
///
/// # Safety
/// `addr` points to `len` readable bytes (or is null).
unsafe fn put_addr(req: &mut Req, addr: *const sockaddr, len: socklen_t) {
    if addr.is_null() {
        return;
    }
    let n = (len as usize).min(16);
    // SAFETY: `n <= len` readable bytes at `addr`.
    unsafe { std::ptr::copy_nonoverlapping(addr.cast::<u8>(), req.addr.as_mut_ptr(), n) };
    req.addrlen = n.max(1) as u32;
}

/// Writes a reply's address to the caller's buffer (truncated as the kernel truncates).
///
/// # Safety
/// `addr`/`len` are null or the caller's buffer and its length.
unsafe fn get_addr(rep: &Rep, addr: *mut sockaddr, len: *mut socklen_t) {
    if addr.is_null() || len.is_null() {
        return;
    }
    // SAFETY: the caller's socklen_t.
    let room = unsafe { std::ptr::read(len) } as usize;
    let n = room.min(rep.addrlen as usize);
    // SAFETY: `room >= n` writable bytes at `addr`.
    unsafe { std::ptr::copy_nonoverlapping(rep.addr.as_ptr(), addr.cast::<u8>(), n) };
    // SAFETY: as above.
    unsafe { std::ptr::write(len, rep.addrlen as socklen_t) };
}

/// True when a non-blocking receive or accept on the child's `fd` would find nothing: A holds
/// no token (the stack had nothing to read at its last look, and would write one the moment it
/// has) and no end-of-stream or hang-up, and the call does not block. The child then answers
/// `EAGAIN` itself, without a round trip (nginx's receive after each response, a worker
/// that lost the race for a connection).
fn nothing_yet(fd: c_int, dontwait: bool) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    if unsafe { real::poll(&mut p, 1, 0) } != 0 {
        return false;
    }
    // SAFETY: F_GETFL takes no argument.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    dontwait || (fl >= 0 && fl & libc::O_NONBLOCK != 0)
}

fn deadline(ms: u32) -> Option<Instant> {
    (ms > 0).then(|| Instant::now() + Duration::from_millis(u64::from(ms)))
}

/// After `socket()` in a child: an AF_INET stream or datagram socket is pending.
pub(super) fn socket_made(fd: c_int, domain: c_int, ty: c_int) {
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    if domain == libc::AF_INET && (base == libc::SOCK_STREAM || base == libc::SOCK_DGRAM) {
        mark_pending(fd, true);
    }
}

/// A child closes `fd`: only its marks go (the kernel counts the A end's copies).
pub(super) fn forget(fd: c_int) {
    set_room(fd, 0);
    set_pushed(fd, false, 0);
    unmark(fd);
    mark_pending(fd, false);
}

/// A child duplicated `old` to `new`.
pub(super) fn duplicated(old: c_int, new: c_int) {
    set_room(new, 0);
    set_pushed(new, is_pushed(old), rcvtimeo_of(old));
    if is_stack(old) {
        mark(new);
    } else if PMARKS.get(old) {
        // Two numbers of one kernel socket cannot both move: both stay in the kernel.
        mark_pending(old, false);
    }
}

/// A child's [`REHOME`] request on its stack descriptor `fd`: `None` when the stack process
/// says no (or cannot be asked).
pub(super) fn rehome(fd: c_int, commit: bool, first: bool) -> Option<super::rehome::Listener> {
    let mut req = Req {
        op: REHOME,
        a: i64::from(commit),
        b: i64::from(first),
        ..Req::default()
    };
    let (a, _) = exchange(fd, &mut req, &[], &mut [], true).ok()?;
    if a.rep.pass != ANSWERED || a.rep.ret < 0 {
        return None;
    }
    let port = u16::from_be_bytes([a.rep.addr[2], a.rep.addr[3]]);
    let ip = std::net::Ipv4Addr::new(a.rep.addr[4], a.rep.addr[5], a.rep.addr[6], a.rep.addr[7]);
    Some(super::rehome::Listener {
        addr: std::net::SocketAddrV4::new(ip, port),
        backlog: (a.rep.addrlen as usize).max(1),
        opts: a.rep.mflags as u32,
        nonblock: a.rep.nonblock != 0,
        rcvtimeo_ms: a.rep.rcvtimeo_ms,
        index: a.rep.errno.max(0) as u32,
    })
}

/// A child starts a stack of its own ([`super::rehome`]): it listens for its own children when
/// it forks, and its report counts its own channel.
pub(super) fn new_stack() {
    LISTENER.store(-1, Relaxed);
    for c in [
        &CHILDREN,
        &REQUESTS,
        &TO_STACK,
        &FROM_STACK,
        &POSTED,
        &POSTED_WAITS,
        &POSTED_LOST,
        &PUSHED_SOCKETS,
        &PUSHED_BYTES,
        &PUSHES,
        &SPILLS_ARMED,
        &SENDFILES,
        &POSTED_SENDFILES,
        &SENDFILE_BYTES,
    ] {
        c.store(0, Relaxed);
    }
}

/// `bind` in a child.
///
/// # Safety
/// `addr` points to `len` readable bytes (or is null).
pub(super) unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> Option<c_int> {
    let mut req = Req {
        op: BIND,
        ..Req::default()
    };
    // SAFETY: the caller's address.
    unsafe { put_addr(&mut req, addr, len) };
    int_result(exchange(fd, &mut req, &[], &mut [], true))
}

/// `listen` in a child.
pub(super) fn listen(fd: c_int, backlog: c_int) -> Option<c_int> {
    let mut req = Req {
        op: LISTEN,
        a: i64::from(backlog),
        ..Req::default()
    };
    int_result(exchange(fd, &mut req, &[], &mut [], true))
}

/// `accept4` in a child: the accepted socket's A end arrives at the lowest free number.
///
/// # Safety
/// `addr`/`len` are null or the caller's buffer and its length.
pub(super) unsafe fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> Option<c_int> {
    let mut dl: Option<Option<Instant>> = None;
    if !PMARKS.get(fd) && nothing_yet(fd, false) {
        return Some(fail(libc::EAGAIN));
    }
    loop {
        let mut req = Req {
            op: ACCEPT,
            flags,
            ..Req::default()
        };
        let cloexec = flags & libc::SOCK_CLOEXEC != 0;
        let (a, nfd) = match exchange(fd, &mut req, &[], &mut [], cloexec) {
            Ok(x) => x,
            Err(e) => return Some(fail(e)),
        };
        if a.rep.pass != ANSWERED {
            return None;
        }
        if a.rep.ret >= 0 {
            if nfd < 0 {
                return Some(fail(libc::EMFILE));
            }
            mark(nfd);
            // SAFETY: the caller's buffers.
            unsafe { get_addr(&a.rep, addr, len) };
            return Some(nfd);
        }
        if a.rep.errno != libc::EAGAIN || a.rep.nonblock != 0 {
            return Some(fail(a.rep.errno));
        }
        let d = *dl.get_or_insert_with(|| deadline(a.rep.rcvtimeo_ms));
        if let Err(e) = ops::wait(fd, libc::POLLIN, d) {
            return Some(fail(e));
        }
    }
}

/// `connect` in a child: a blocking one waits on its own descriptor, then asks for SO_ERROR.
///
/// # Safety
/// `addr` points to `len` readable bytes (or is null).
pub(super) unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> Option<c_int> {
    let mut req = Req {
        op: CONNECT,
        ..Req::default()
    };
    // SAFETY: the caller's address.
    unsafe { put_addr(&mut req, addr, len) };
    let (a, _) = match exchange(fd, &mut req, &[], &mut [], true) {
        Ok(x) => x,
        Err(e) => return Some(fail(e)),
    };
    if a.rep.pass != ANSWERED {
        return None;
    }
    if a.rep.ret >= 0 {
        return Some(0);
    }
    if a.rep.errno != libc::EINPROGRESS || a.rep.nonblock != 0 {
        return Some(fail(a.rep.errno));
    }
    if let Err(e) = ops::wait(fd, libc::POLLOUT, deadline(a.rep.sndtimeo_ms)) {
        return Some(fail(if e == libc::EAGAIN {
            libc::EINPROGRESS
        } else {
            e
        }));
    }
    let mut v: c_int = 0;
    let mut l = 4 as socklen_t;
    // SAFETY: an int-sized option buffer.
    let r = unsafe {
        getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut v as *mut c_int).cast(),
            &mut l,
        )
    };
    match r {
        Some(0) if v == 0 => Some(0),
        Some(0) => Some(fail(v)),
        other => other,
    }
}

/// A send-family call in a child: the payload goes in messages of at most [`CHUNK`] bytes; a
/// blocking call waits on its own descriptor while the stack's send buffer is full.
pub(super) fn send(
    fd: c_int,
    bufs: &[&[u8]],
    flags: c_int,
    dst: Option<(*const sockaddr, socklen_t)>,
    sendfile: bool,
) -> Option<isize> {
    if dst.is_none_or(|d| d.0.is_null()) {
        if let Some(n) = post(fd, bufs, flags, sendfile) {
            return Some(n as isize);
        }
    }
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let dontwait = flags & libc::MSG_DONTWAIT != 0;
    let (mut bi, mut off, mut sent) = (0usize, 0usize, 0usize);
    let mut dl: Option<Option<Instant>> = None;
    loop {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut n = 0usize;
        let (mut i, mut o) = (bi, off);
        while i < bufs.len() && n < CHUNK {
            let b = &bufs[i][o..];
            let take = b.len().min(CHUNK - n);
            if take > 0 {
                parts.push(&b[..take]);
            }
            n += take;
            if take == b.len() {
                i += 1;
                o = 0;
            } else {
                o += take;
            }
        }
        let mut req = Req {
            op: SEND,
            flags: flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            sendfile: u32::from(sendfile),
            ..Req::default()
        };
        if let Some((a, l)) = dst.filter(|d| !d.0.is_null()) {
            // SAFETY: the caller's address of `l` bytes.
            unsafe { put_addr(&mut req, a, l) };
        }
        let (a, _) = match exchange(fd, &mut req, &parts, &mut [], true) {
            Ok(x) => x,
            Err(_) if sent > 0 => break,
            Err(_) => return Some(send_failed(libc::EPIPE, flags)),
        };
        if a.rep.pass != ANSWERED {
            return None;
        }
        let block = a.rep.nonblock == 0 && !dontwait;
        if a.rep.ret >= 0 {
            let mut r = a.rep.ret as usize;
            sent += r;
            while r > 0 && bi < bufs.len() {
                let left = bufs[bi].len() - off;
                if r >= left {
                    r -= left;
                    bi += 1;
                    off = 0;
                } else {
                    off += r;
                    r = 0;
                }
            }
            while bi < bufs.len() && bufs[bi].len() == off {
                bi += 1;
                off = 0;
            }
            if sent >= total || a.rep.dgram != 0 {
                break;
            }
            if (a.rep.ret as usize) < n {
                if !block {
                    break;
                }
                let d = *dl.get_or_insert_with(|| deadline(a.rep.sndtimeo_ms));
                if ops::wait(fd, libc::POLLOUT, d).is_err() {
                    break;
                }
            }
            continue;
        }
        let e = a.rep.errno;
        if e == libc::EAGAIN && block {
            let d = *dl.get_or_insert_with(|| deadline(a.rep.sndtimeo_ms));
            if let Err(x) = ops::wait(fd, libc::POLLOUT, d) {
                if sent > 0 {
                    break;
                }
                return Some(fail(x));
            }
            continue;
        }
        if sent > 0 {
            break;
        }
        return Some(send_failed(e, flags));
    }
    Some(sent as isize)
}

fn send_failed(e: c_int, flags: c_int) -> isize {
    if e == libc::EPIPE && flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: raise has no precondition.
        unsafe { libc::raise(libc::SIGPIPE) };
    }
    fail(e)
}

/// A receive-family call in a child: at most [`CHUNK`] bytes per message; a blocking call waits
/// on its own descriptor.
pub(super) fn recv(
    fd: c_int,
    bufs: &mut [&mut [u8]],
    flags: c_int,
    from: Option<(*mut sockaddr, *mut socklen_t)>,
) -> Option<(isize, c_int)> {
    let room: usize = bufs.iter().map(|b| b.len()).sum();
    let peek = flags & libc::MSG_PEEK != 0;
    let waitall = flags & libc::MSG_WAITALL != 0 && !peek;
    let dontwait = flags & libc::MSG_DONTWAIT != 0;
    let mut got = 0usize;
    let mut dl: Option<Option<Instant>> = None;
    if is_pushed(fd) {
        return Some(pushed_recv(fd, bufs, flags, 0));
    }
    if !PMARKS.get(fd) && nothing_yet(fd, dontwait) {
        return Some((fail(libc::EAGAIN), 0));
    }
    loop {
        let want = (room - got).min(CHUNK);
        let mut req = Req {
            op: RECV,
            flags: (flags & !libc::MSG_WAITALL) | libc::MSG_DONTWAIT,
            a: want as i64,
            ..Req::default()
        };
        let r = {
            let mut outs: Vec<&mut [u8]> = Vec::new();
            let (mut skip, mut left) = (got, want);
            for b in bufs.iter_mut() {
                if left == 0 {
                    break;
                }
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                let s = &mut b[skip..];
                skip = 0;
                let take = s.len().min(left);
                outs.push(&mut s[..take]);
                left -= take;
            }
            exchange(fd, &mut req, &[], &mut outs, true)
        };
        let a = match r {
            Ok((a, _)) => a,
            // The stack process is gone: end of stream.
            Err(_) => return Some((got as isize, 0)),
        };
        if a.rep.pass != ANSWERED {
            return None;
        }
        if a.rep.ret >= 0 {
            if let Some((fa, fl)) = from {
                if a.rep.addrlen > 0 && a.rep.dgram != 0 {
                    // SAFETY: the caller's address buffer.
                    unsafe { get_addr(&a.rep, fa, fl) };
                }
            }
            if a.rep.dgram != 0 || peek {
                return Some((a.rep.ret as isize, a.rep.mflags));
            }
            got += a.len.min(want);
            if a.rep.ret == 0 || !waitall || got >= room {
                return Some((got as isize, 0));
            }
            continue;
        }
        let e = a.rep.errno;
        if e == libc::EAGAIN && a.rep.pushed != 0 && a.rep.dgram == 0 {
            // From now on the bytes come through A.
            if got > 0 && !waitall {
                return Some((got as isize, 0));
            }
            return Some(pushed_recv(fd, bufs, flags, got));
        }
        if e == libc::EAGAIN {
            if got > 0 && !waitall {
                return Some((got as isize, 0));
            }
            if a.rep.nonblock != 0 || dontwait {
                return Some(if got > 0 {
                    (got as isize, 0)
                } else {
                    (fail(e), 0)
                });
            }
            let d = *dl.get_or_insert_with(|| deadline(a.rep.rcvtimeo_ms));
            if let Err(x) = ops::wait(fd, libc::POLLIN, d) {
                return Some(if got > 0 {
                    (got as isize, 0)
                } else {
                    (fail(x), 0)
                });
            }
            continue;
        }
        if got > 0 {
            return Some((got as isize, 0));
        }
        return Some((fail(e), 0));
    }
}

/// A receive on a pushed socket in a child: the kernel's socket pair holds the bytes (the
/// stack pushes them into B as they arrive), so this is A's own receive, without a request:
/// `MSG_PEEK` and `MSG_WAITALL` as the kernel's, a blocking call waits on A (with the
/// socket's `SO_RCVTIMEO`: `EAGAIN` when it expires). A's end of stream (the stack shut B's
/// write side once every byte was pushed, or shut it all at a reset) asks the stack process
/// how the stream ended: 0, or the connection's error once (`ECONNRESET`, `ETIMEDOUT`), then
/// 0, as the kernel reports them after the bytes that came before. `got` bytes are in `bufs`
/// already.
fn pushed_recv(fd: c_int, bufs: &mut [&mut [u8]], flags: c_int, mut got: usize) -> (isize, c_int) {
    let room: usize = bufs.iter().map(|b| b.len()).sum();
    let peek = flags & libc::MSG_PEEK != 0;
    let waitall = flags & libc::MSG_WAITALL != 0 && !peek;
    // SAFETY: F_GETFL takes no argument.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    let nonblock = flags & libc::MSG_DONTWAIT != 0 || (fl >= 0 && fl & libc::O_NONBLOCK != 0);
    let mut dl: Option<Option<Instant>> = None;
    loop {
        if got >= room {
            return (got as isize, 0);
        }
        let r = {
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len());
            let mut skip = got;
            for b in bufs.iter_mut() {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                let s = &mut b[skip..];
                skip = 0;
                iov.push(libc::iovec {
                    iov_base: s.as_mut_ptr().cast(),
                    iov_len: s.len(),
                });
            }
            // SAFETY: an all-zero msghdr is valid.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len() as _;
            // SAFETY: a valid msghdr whose buffers are the caller's, live across the call.
            unsafe { real::recvmsg(fd, &mut msg, (flags & libc::MSG_PEEK) | libc::MSG_DONTWAIT) }
        };
        if r > 0 {
            if peek {
                return (r, 0);
            }
            got += r as usize;
            if !waitall || got >= room {
                return (got as isize, 0);
            }
            continue;
        }
        if r == 0 && room > 0 {
            if got > 0 {
                return (got as isize, 0);
            }
            return end_of_pushed(fd, bufs, flags);
        }
        let e = if r == 0 { libc::EAGAIN } else { guard::errno() };
        if e == libc::EINTR {
            continue;
        }
        if e != libc::EAGAIN || nonblock || room == 0 {
            return if got > 0 {
                (got as isize, 0)
            } else {
                (fail(e), 0)
            };
        }
        let d = *dl.get_or_insert_with(|| deadline(rcvtimeo_of(fd)));
        if let Err(x) = ops::wait(fd, libc::POLLIN, d) {
            return if got > 0 {
                (got as isize, 0)
            } else {
                (fail(x), 0)
            };
        }
    }
}

/// A pushed socket's A is at its end: the stack process's own receive says how the stream
/// ended (every byte was pushed before B's write side was shut). A stack process that is gone
/// ended it.
fn end_of_pushed(fd: c_int, bufs: &mut [&mut [u8]], flags: c_int) -> (isize, c_int) {
    let mut left = CHUNK;
    let mut outs: Vec<&mut [u8]> = Vec::new();
    for b in bufs.iter_mut() {
        if left == 0 {
            break;
        }
        let take = b.len().min(left);
        outs.push(&mut b[..take]);
        left -= take;
    }
    let mut req = Req {
        op: RECV,
        flags: (flags & !(libc::MSG_WAITALL | libc::MSG_PEEK)) | libc::MSG_DONTWAIT,
        a: (CHUNK - left) as i64,
        b: 1,
        ..Req::default()
    };
    // Bytes the stack still held when the connection failed come here, in order (A is
    // empty), then the error.
    match exchange(fd, &mut req, &[], &mut outs, true) {
        Ok((a, _)) if a.rep.pass == ANSWERED && a.rep.ret < 0 && a.rep.errno != libc::EAGAIN => {
            (fail(a.rep.errno), 0)
        }
        Ok((a, _)) if a.rep.pass == ANSWERED && a.rep.ret > 0 => (a.len as isize, 0),
        _ => (0, 0),
    }
}

/// `shutdown` in a child.
pub(super) fn shutdown(fd: c_int, how: c_int) -> Option<c_int> {
    let mut req = Req {
        op: SHUTDOWN,
        a: i64::from(how),
        ..Req::default()
    };
    int_result(exchange(fd, &mut req, &[], &mut [], true))
}

/// `getsockname`/`getpeername` in a child.
///
/// # Safety
/// `addr`/`len` are null or the caller's buffer and its length.
pub(super) unsafe fn name(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    peer: bool,
) -> Option<c_int> {
    let mut req = Req {
        op: NAME,
        a: i64::from(peer),
        ..Req::default()
    };
    let r = exchange(fd, &mut req, &[], &mut [], true);
    if let Ok((a, _)) = &r {
        if a.rep.pass == ANSWERED && a.rep.ret >= 0 {
            // SAFETY: the caller's buffers.
            unsafe { get_addr(&a.rep, addr, len) };
        }
    }
    int_result(r)
}

/// `setsockopt` in a child (a pending socket's options stay in the kernel socket, read back
/// when the stack takes it).
///
/// # Safety
/// `val` points to `len` readable bytes (or is null).
pub(super) unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> Option<c_int> {
    if PMARKS.get(fd) {
        return None;
    }
    if val.is_null() {
        return Some(fail(libc::EFAULT));
    }
    // SAFETY: `len` readable bytes at `val`.
    let v = unsafe { std::slice::from_raw_parts(val.cast::<u8>(), (len as usize).min(1024)) };
    let mut req = Req {
        op: SETOPT,
        a: i64::from(level),
        b: i64::from(name),
        ..Req::default()
    };
    int_result(exchange(fd, &mut req, &[v], &mut [], true))
}

/// `getsockopt` in a child.
///
/// # Safety
/// `val`/`len` are the caller's valid buffer and its length.
pub(super) unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Option<c_int> {
    if PMARKS.get(fd) {
        return None;
    }
    if val.is_null() || len.is_null() {
        return Some(fail(libc::EFAULT));
    }
    // SAFETY: the caller's socklen_t.
    let room = unsafe { std::ptr::read(len) } as usize;
    // SAFETY: `room` writable bytes at `val`.
    let out = unsafe { std::slice::from_raw_parts_mut(val.cast::<u8>(), room) };
    let mut req = Req {
        op: GETOPT,
        a: i64::from(level),
        b: i64::from(name),
        c: room as i64,
        ..Req::default()
    };
    let r = exchange(fd, &mut req, &[], &mut [out], true);
    if let Ok((a, _)) = &r {
        if a.rep.pass == ANSWERED && a.rep.ret == 0 {
            // SAFETY: the caller's socklen_t.
            unsafe { std::ptr::write(len, a.len as socklen_t) };
        }
    }
    int_result(r)
}

/// `ioctl` in a child: FIONREAD/SIOCOUTQ asked, FIONBIO told (the A end takes it too).
///
/// # Safety
/// `p` is the caller's int pointer for these requests.
pub(super) unsafe fn ioctl(fd: c_int, req: libc::c_ulong, p: *mut c_int) -> Option<c_int> {
    match req {
        libc::FIONBIO => {
            if !p.is_null() {
                // SAFETY: FIONBIO's argument is an int pointer.
                set_nonblocking(fd, unsafe { std::ptr::read(p) } != 0);
            }
            None
        }
        libc::FIONREAD | libc::TIOCOUTQ => {
            if p.is_null() {
                return Some(fail(libc::EFAULT));
            }
            let mut v = [0u8; 4];
            let mut r = Req {
                op: IOCTL,
                a: req as i64,
                ..Req::default()
            };
            let res = exchange(fd, &mut r, &[], &mut [&mut v[..]], true);
            let out = int_result(res);
            if out == Some(0) {
                let mut n = c_int::from_ne_bytes(v);
                if req == libc::FIONREAD && is_pushed(fd) {
                    // Pushed: the bytes in A, and those still waiting in the stack.
                    let mut in_a: c_int = 0;
                    // SAFETY: FIONREAD writes an int.
                    if unsafe {
                        real::ioctl(
                            fd,
                            libc::FIONREAD,
                            &mut in_a as *mut c_int as usize as libc::c_ulong,
                        )
                    } == 0
                    {
                        n = n.saturating_add(in_a);
                    }
                }
                // SAFETY: an int pointer.
                unsafe { std::ptr::write(p, n) };
            }
            out
        }
        _ => None,
    }
}

/// `O_NONBLOCK` set or cleared in a child: the stack process's socket learns it.
pub(super) fn set_nonblocking(fd: c_int, on: bool) {
    let mut req = Req {
        op: SETNB,
        a: i64::from(on),
        ..Req::default()
    };
    let _ = exchange(fd, &mut req, &[], &mut [], true);
}

// ---- across exec ---------------------------------------------------------------------------

/// The variable that hands a child's stack descriptors to the image it execs:
/// `PID:FD/INODE,FD/INODE,...` (the stack process, and each descriptor that stays open).
const EXEC_VAR: &str = "HICAMP_STACK_PROXY";

/// Before `exec` in a child of a stack process: the environment entry for the new image (its
/// stack descriptors without close-on-exec, and the stack process to reach), or `None` outside
/// such a child.
pub fn exec_entry() -> Option<std::ffi::CString> {
    if !super::FORKED.load(Relaxed) || guard::in_vfork_child() {
        return None;
    }
    barrier();
    let pid = STACK_PID.load(Relaxed);
    let mut list = Vec::new();
    for fd in super::MARKS.members() {
        // SAFETY: F_GETFD takes no argument.
        let fl = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
        if fl >= 0 && fl & libc::FD_CLOEXEC == 0 {
            list.push(format!("{fd}/{}", inode(fd)));
        }
    }
    std::ffi::CString::new(format!("{EXEC_VAR}={pid}:{}", list.join(","))).ok()
}

/// True for an environment entry of [`EXEC_VAR`].
pub fn is_exec_entry(entry: &[u8]) -> bool {
    entry.starts_with(EXEC_VAR.as_bytes()) && entry.get(EXEC_VAR.len()) == Some(&b'=')
}

/// At load (the library's constructor): an image exec'ed by a child of a stack process takes
/// over the stack descriptors the previous image handed down (each checked by its inode: a
/// stale entry marks nothing) and reaches the same stack process.
#[cfg_attr(test, allow(dead_code))]
extern "C" fn inherit() {
    // Read at load: an application may replace its environment later (nginx does).
    let _ = push_enabled();
    let Ok(v) = std::env::var(EXEC_VAR) else {
        return;
    };
    std::env::remove_var(EXEC_VAR);
    let Some((pid, fds)) = v.split_once(':') else {
        return;
    };
    let Ok(pid) = pid.parse::<c_int>() else {
        return;
    };
    if pid <= 0 || crate::config::Config::get().mode != crate::config::Mode::Stack {
        return;
    }
    STACK_PID.store(pid, Relaxed);
    super::FORKED.store(true, Relaxed);
    for e in fds.split(',').filter(|e| !e.is_empty()) {
        let Some((fd, ino)) = e.split_once('/') else {
            continue;
        };
        if let (Ok(fd), Ok(ino)) = (fd.parse::<c_int>(), ino.parse::<u64>()) {
            if ino != 0 && inode(fd) == ino {
                mark(fd);
            }
        }
    }
    // Its own children get their own control connections.
    // SAFETY: the handler is an `extern "C" fn()` that never unwinds.
    unsafe { libc::pthread_atfork(Some(atfork_prepare_exec), None, Some(super::atfork_child)) };
}

#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INHERIT: extern "C" fn() = inherit;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_64_bytes_and_round_trip() {
        let r = Req {
            op: SEND,
            flags: -3,
            a: 1 << 40,
            addrlen: 16,
            addr: [7; 16],
            ..Req::default()
        };
        let mut back = Req::default();
        head_bytes_mut(&mut back).copy_from_slice(head_bytes(&r));
        assert_eq!(
            (back.op, back.flags, back.a, back.addr),
            (SEND, -3, 1 << 40, [7; 16])
        );
        assert_eq!(head_bytes(&Rep::default()).len(), HEAD);
    }

    #[test]
    fn exec_entries_are_recognised_by_name_only() {
        assert!(is_exec_entry(b"HICAMP_STACK_PROXY=12:3/99"));
        assert!(is_exec_entry(b"HICAMP_STACK_PROXY="));
        assert!(!is_exec_entry(b"HICAMP_STACK_PROXYX=1"));
        assert!(!is_exec_entry(b"PATH=/bin"));
    }

    #[test]
    fn a_file_key_round_trips_and_a_wrong_length_is_refused() {
        // SAFETY: an all-zero stat is valid for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        // SAFETY: `st` is writable; the file is open.
        let r = unsafe { libc::fstat(fd, &mut st) };
        assert_eq!(r, 0);
        let k = FileKey::of(&st);
        let back = FileKey::from_bytes(head_bytes(&k)).unwrap();
        assert_eq!(back.key(), filecache::of_stat(&st));
        assert!(FileKey::from_bytes(&head_bytes(&k)[1..]).is_none());
        assert!(FileKey::from_bytes(&[0u8; 41]).is_none());
    }

    /// The inode of a descriptor, and closes it.
    fn ino_and_close(fd: c_int) -> u64 {
        let i = inode(fd);
        // SAFETY: a descriptor the test owns.
        unsafe { libc::close(fd) };
        i
    }

    #[test]
    fn a_message_carries_two_descriptors_and_recv_msg_closes_the_second() {
        let mut sp = [-1; 2];
        // SAFETY: `sp` has room for two descriptors.
        let r =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, sp.as_mut_ptr()) };
        assert_eq!(r, 0);
        // Two pipes: their read ends are two files (a pipe's ends share one inode).
        let (mut p, mut q) = ([-1; 2], [-1; 2]);
        // SAFETY: `p` and `q` have room for two descriptors each.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::pipe(q.as_mut_ptr()) }, 0);
        let p = [p[0], q[0], p[1], q[1]];
        let (ia, ib) = (inode(p[0]), inode(p[1]));
        assert_ne!(ia, ib);
        let req = Req {
            op: SENDFILE,
            ..Req::default()
        };
        // Nothing queued: a non-blocking receive says so.
        let mut head = Req::default();
        let mut buf = [0u8; 16];
        let got = recv_msg_fds(
            sp[1],
            head_bytes_mut(&mut head),
            &mut [&mut buf[..]],
            true,
            libc::MSG_DONTWAIT,
        );
        assert_eq!(got.err(), Some(libc::EAGAIN));
        send_msg_fds(sp[0], head_bytes(&req), &[b"key"], &[p[0], -1, p[1]]).unwrap();
        let (n, [x, y], trunc) = recv_msg_fds(
            sp[1],
            head_bytes_mut(&mut head),
            &mut [&mut buf[..]],
            true,
            libc::MSG_DONTWAIT,
        )
        .unwrap();
        assert_eq!(
            (n, head.op, &buf[..3], trunc),
            (HEAD + 3, SENDFILE, &b"key"[..], false)
        );
        assert_eq!((ino_and_close(x), ino_and_close(y)), (ia, ib));
        // recv_msg keeps the first and closes the second.
        send_msg_fds(sp[0], head_bytes(&req), &[], &[p[1], p[0]]).unwrap();
        let (n, x, _) = recv_msg(sp[1], head_bytes_mut(&mut head), &mut [], true).unwrap();
        assert_eq!(n, HEAD);
        assert_eq!(ino_and_close(x), ib);
        for fd in sp.into_iter().chain(p) {
            // SAFETY: descriptors the test owns.
            unsafe { libc::close(fd) };
        }
    }

    #[test]
    fn the_control_address_is_abstract_and_names_the_pid() {
        let (a, len) = address(4321);
        assert_eq!(a.sun_path[0], 0);
        let name: Vec<u8> = a.sun_path[1..len as usize - 2]
            .iter()
            .map(|&c| c as u8)
            .collect();
        assert_eq!(name, b"hicamp-stack.4321");
    }
}
