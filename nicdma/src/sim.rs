//! `sim`: in-process wires between NICs, deterministic from a seed.
//!
//! A [`SimNet`] is a learning switch (a pair of ports is a switch of two)
//! driven by a virtual [`SimClock`]: nothing happens by itself, frames are
//! delivered when the clock reaches their time. Each port's ingress link has
//! knobs for latency, rate (serialization delay and queueing), loss,
//! duplication, reordering and corruption, drawn from one seeded generator.
//! The same seed and the same sequence of calls give the same trace.
//!
//! The wire holds each frame as bytes (the frame leaves the memory when the
//! sending NIC puts it on the wire); those byte buffers are recycled through
//! pools, so a frame in flight costs one copy onto the wire and no
//! allocation. A port's wake-up channel is written only once someone asked
//! for its [`Port::rx_fd`] to poll.
//!
//! Locks: the switch (learning table, fault generator, counters, trace) is
//! one mutex a sender holds to decide where a frame goes; each port's
//! ingress queue is its own mutex, held only to push or pop. A receiver
//! takes only its ingress lock, and no system call is made under any lock.
//!
//! Wake-ups (a futex-like protocol on the flag `Ingress::want`): a receiver
//! that may sleep stores `want = true` and then checks its queue under the
//! ingress lock; a sender pushes under that lock and, after unlocking,
//! swaps `want` to false and writes a wake-up (an eventfd count) only if it
//! was true. Either the receiver's check comes after the push (it sees the
//! frame and does not sleep), or it comes before: then its store of `want`
//! happens before its unlock, which happens before the sender's lock, so
//! the sender sees `want` and writes. A receiver drains the channel only before it stores
//! `want` and checks again, so a drain never eats the wake-up of a frame it
//! has not seen. Spurious wake-ups are possible; lost ones are not.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use hicamp::Cursor;

use crate::meta::{VirtioNetHdr, F_DATA_VALID, F_NEEDS_CSUM};
use crate::port::{Port, PortError, TxOutcome};

/// Virtual time of a simulated network, in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct SimClock(Arc<AtomicU64>);

impl SimClock {
    /// A clock at time 0.
    pub fn new() -> SimClock {
        SimClock::default()
    }

    /// The time now.
    pub fn now(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// Moves the time forward.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Relaxed);
    }
}

/// The ingress link of a simulated port.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Propagation delay.
    pub latency_ns: u64,
    /// Bits per second (0: unlimited): frames queue behind each other.
    pub rate_bps: u64,
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Probability that a frame arrives twice.
    pub duplicate: f64,
    /// Probability that a frame is held back by up to `reorder_ns`.
    pub reorder: f64,
    /// The most a reordered frame is held back.
    pub reorder_ns: u64,
    /// Probability that one bit of the frame is flipped.
    pub corrupt: f64,
    /// Frames the link holds before it drops (and pushes back on a sender
    /// whose every destination is full).
    pub queue_frames: usize,
    /// Largest frame carried.
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency_ns: 0,
            rate_bps: 0,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_ns: 100_000,
            corrupt: 0.0,
            queue_frames: 4096,
            mtu: 65_535,
        }
    }
}

/// Counters of one simulated port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Frames sent by this port.
    pub tx_frames: u64,
    /// Frames delivered to this port.
    pub rx_frames: u64,
    /// Frames lost on this port's link.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Frames held back.
    pub reordered: u64,
    /// Frames with a flipped bit.
    pub corrupted: u64,
    /// Frames dropped because the link's queue was full.
    pub overflow: u64,
}

/// One event of a trace (for determinism checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    /// A frame left port `from` at `at`.
    Sent {
        /// Virtual time (ns).
        at: u64,
        /// The sending port.
        from: usize,
        /// Frame length in bytes.
        len: usize,
    },
    /// A frame for port `to` was lost.
    Lost {
        /// Virtual time (ns).
        at: u64,
        /// The port it was for.
        to: usize,
    },
    /// A frame was queued for `to`, due at `due`.
    Queued {
        /// Virtual time (ns).
        at: u64,
        /// The receiving port.
        to: usize,
        /// When it is delivered (ns).
        due: u64,
        /// The frame's sequence number on the link.
        seq: u64,
        /// A hash of the frame's bytes (as queued, after any corruption).
        digest: u64,
    },
    /// Port `to` received frame `seq` at `at`.
    Delivered {
        /// Virtual time (ns).
        at: u64,
        /// The receiving port.
        to: usize,
        /// The frame's sequence number on the link.
        seq: u64,
    },
}

struct InFlight {
    due: u64,
    seq: u64,
    vnet: VirtioNetHdr,
    frame: Vec<u8>,
}

struct PortState {
    cfg: LinkConfig,
    busy_until: u64,
    /// Every counter but `rx_frames` (kept by the receiver in its ingress).
    counters: SimCounters,
    ingress: Arc<Ingress>,
}

/// What the ingress lock guards: the frames in flight to the port, by
/// (due, seq), and the wire buffers its receiver is done with (senders take
/// them back when they push, so buffers circulate without allocation).
#[derive(Default)]
struct RxQueue {
    frames: VecDeque<InFlight>,
    free: Vec<Vec<u8>>,
    /// Frames the receiver took.
    rx_frames: u64,
}

/// A port's ingress: its queue and its wake-up state (see the module's
/// documentation for the protocol).
struct Ingress {
    queue: Mutex<RxQueue>,
    /// The receiver may sleep on its channel: the next sender to push
    /// writes a wake-up (and clears this).
    want: AtomicBool,
    /// A wake-up may be waiting in the channel (so the receiver makes
    /// the system call to drain it only then). Set after it is written.
    armed: AtomicBool,
    /// Wake-ups are on: someone asked for the port's `rx_fd` and the port
    /// does not busy-poll (then only `arm_wakeup` sets `want`).
    polled: AtomicBool,
    /// Busy-poll mode.
    busy_poll: AtomicBool,
    /// The wake-up channel: an eventfd the sender adds 1 to and the
    /// receiver polls and reads (resetting it).
    wake: File,
}

fn lock_q(m: &Mutex<RxQueue>) -> MutexGuard<'_, RxQueue> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ingress {
    /// After a push: wakes the receiver if it may sleep. No lock is held.
    fn notify(&self) {
        if self.want.load(SeqCst) && self.want.swap(false, SeqCst) {
            let _ = (&self.wake).write(&1u64.to_ne_bytes());
            self.armed.store(true, SeqCst);
        }
    }

    /// Drains the channel if a wake-up may be in it (one read resets the
    /// eventfd's count).
    fn drain(&self) {
        if self.armed.swap(false, SeqCst) {
            let mut b = [0u8; 8];
            let _ = (&self.wake).read(&mut b);
        }
    }

    /// Asks for a wake-up (the receiver may sleep), then checks the queue:
    /// true when a frame is waiting after all (a wake-up is then written
    /// unless a sender already did or will).
    fn arm(&self) -> bool {
        self.want.store(true, SeqCst);
        let waiting = !lock_q(&self.queue).frames.is_empty();
        if waiting {
            self.notify();
        }
        waiting
    }
}

/// Hashes a MAC address key (6 bytes, written as one slice) in a few
/// instructions: the switch's table is small and not exposed to attackers.
#[derive(Default)]
struct MacHasher(u64);

impl Hasher for MacHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).rotate_left(3);
        }
    }
}

/// The frames one transmission puts on the wire: one, or the segments of a
/// GSO frame.
enum Frames {
    One(Vec<u8>),
    Many(Vec<Vec<u8>>),
}

impl Frames {
    fn first(&self) -> &[u8] {
        match self {
            Frames::One(f) => f,
            Frames::Many(v) => v.first().map_or(&[], |f| f),
        }
    }

    fn for_each(self, mut f: impl FnMut(Vec<u8>)) {
        match self {
            Frames::One(b) => f(b),
            Frames::Many(v) => v.into_iter().for_each(f),
        }
    }
}

/// Frames up to this many bytes are copied onto the wire chunk by chunk;
/// longer ones by the cursor's run copy (after zero-filling the buffer).
const SMALL_FRAME: usize = 256;

/// Most wire buffers kept for reuse.
const POOL_MAX: usize = 4096;

struct NetState {
    rng: u64,
    seq: u64,
    ports: Vec<PortState>,
    macs: HashMap<[u8; 6], usize, BuildHasherDefault<MacHasher>>,
    trace: Option<Vec<TraceEvent>>,
}

/// A sender's wire buffers, for reuse (its own: no lock).
#[derive(Default)]
struct Pool(Vec<Vec<u8>>);

impl Pool {
    /// An empty wire buffer.
    fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.0.pop().unwrap_or_default();
        b.clear();
        b
    }

    fn recycle(&mut self, b: Vec<u8>) {
        if self.0.len() < POOL_MAX && b.capacity() > 0 {
            self.0.push(b);
        }
    }
}

/// What a network's ports share.
struct Shared {
    net: Mutex<NetState>,
    /// A trace is being recorded (receivers take the switch lock only then).
    tracing: AtomicBool,
}

impl NetState {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn log(&mut self, e: TraceEvent) {
        if let Some(t) = self.trace.as_mut() {
            t.push(e);
        }
    }
}

/// A simulated network: a learning switch of ports on one virtual clock.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Shared>,
    clock: SimClock,
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNet")
            .field("now", &self.clock.now())
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<NetState>) -> MutexGuard<'_, NetState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimNet {
    /// A network whose faults are drawn from `seed`.
    pub fn new(seed: u64, clock: SimClock) -> SimNet {
        SimNet {
            state: Arc::new(Shared {
                net: Mutex::new(NetState {
                    rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                    seq: 0,
                    ports: Vec::new(),
                    macs: HashMap::default(),
                    trace: None,
                }),
                tracing: AtomicBool::new(false),
            }),
            clock,
        }
    }

    /// Two ports joined by links with `cfg` in both directions.
    pub fn pair(seed: u64, cfg: LinkConfig) -> std::io::Result<(SimNet, SimPort, SimPort)> {
        let net = SimNet::new(seed, SimClock::new());
        let a = net.add_port(cfg.clone())?;
        let b = net.add_port(cfg)?;
        Ok((net, a, b))
    }

    /// The clock.
    pub fn clock(&self) -> &SimClock {
        &self.clock
    }

    /// Starts recording a trace of every event.
    pub fn record_trace(&self) {
        lock(&self.state.net).trace = Some(Vec::new());
        self.state.tracing.store(true, SeqCst);
    }

    /// The trace recorded so far.
    pub fn trace(&self) -> Vec<TraceEvent> {
        lock(&self.state.net).trace.clone().unwrap_or_default()
    }

    /// Counters of port `i`.
    pub fn counters(&self, i: usize) -> SimCounters {
        let st = lock(&self.state.net);
        let p = &st.ports[i];
        let rx_frames = lock_q(&p.ingress.queue).rx_frames;
        SimCounters {
            rx_frames,
            ..p.counters
        }
    }

    /// The earliest time a queued frame is due (to advance the clock to).
    pub fn next_due(&self) -> Option<u64> {
        let st = lock(&self.state.net);
        st.ports
            .iter()
            .filter_map(|p| lock_q(&p.ingress.queue).frames.front().map(|f| f.due))
            .min()
    }

    /// Attaches a port whose ingress link has `cfg`.
    pub fn add_port(&self, cfg: LinkConfig) -> std::io::Result<SimPort> {
        let wake = crate::sys::eventfd::eventfd()?;
        let ingress = Arc::new(Ingress {
            queue: Mutex::new(RxQueue::default()),
            want: AtomicBool::new(false),
            armed: AtomicBool::new(false),
            polled: AtomicBool::new(false),
            busy_poll: AtomicBool::new(false),
            wake,
        });
        let mtu = cfg.mtu;
        let mut st = lock(&self.state.net);
        st.ports.push(PortState {
            cfg,
            busy_until: 0,
            counters: SimCounters::default(),
            ingress: Arc::clone(&ingress),
        });
        let index = st.ports.len() - 1;
        Ok(SimPort {
            state: Arc::clone(&self.state),
            ingress,
            clock: self.clock.clone(),
            index,
            mtu,
            name: format!("sim{index}"),
            spare: None,
            pool: Pool::default(),
            pushed: Vec::new(),
            peers: Vec::new(),
        })
    }
}

/// A port of a [`SimNet`].
pub struct SimPort {
    state: Arc<Shared>,
    /// This port's ingress (also in the switch's table).
    ingress: Arc<Ingress>,
    clock: SimClock,
    index: usize,
    mtu: usize,
    name: String,
    /// The wire buffer of the last frame received, returned to the ingress'
    /// free list on the next receive (under the lock taken anyway).
    spare: Option<Vec<u8>>,
    /// Wire buffers for transmits.
    pool: Pool,
    /// The ports a transmit pushed to (to notify after unlocking).
    pushed: Vec<usize>,
    /// Every port's ingress, by index (refreshed when ports are added), so
    /// a transmit takes no reference per frame.
    peers: Vec<Arc<Ingress>>,
}

impl std::fmt::Debug for SimPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPort").field("name", &self.name).finish()
    }
}

impl SimPort {
    /// This port's index in its network.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Queues `frame` for port `to` through its link's faults (the buffer
    /// moves onto the link, or back to `pool` if the link drops it). The
    /// switch lock is held; the port's ingress lock is taken here. Returns
    /// whether a frame was pushed (to notify after unlocking).
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        st: &mut NetState,
        pool: &mut Pool,
        peers: &[Arc<Ingress>],
        now: u64,
        to: usize,
        vnet: &VirtioNetHdr,
        frame: Vec<u8>,
    ) -> bool {
        let cfg = &st.ports[to].cfg;
        let (loss, duplicate, corrupt, reorder) =
            (cfg.loss, cfg.duplicate, cfg.corrupt, cfg.reorder);
        let (queue_frames, rate_bps, latency_ns, reorder_ns) = (
            cfg.queue_frames,
            cfg.rate_bps,
            cfg.latency_ns,
            cfg.reorder_ns,
        );
        if st.chance(loss) {
            st.ports[to].counters.lost += 1;
            st.log(TraceEvent::Lost { at: now, to });
            pool.recycle(frame);
            return false;
        }
        let copies = if st.chance(duplicate) {
            st.ports[to].counters.duplicated += 1;
            2
        } else {
            1
        };
        let mut q = lock_q(&peers[to].queue);
        // Take back the buffers the receiver is done with.
        if pool.0.is_empty() {
            std::mem::swap(&mut pool.0, &mut q.free);
        }
        let mut pushed = false;
        let mut frame = Some(frame);
        for copy in 0..copies {
            if q.frames.len() >= queue_frames {
                st.ports[to].counters.overflow += 1;
                continue;
            }
            let mut f = if copy + 1 == copies {
                frame.take().expect("the last copy")
            } else {
                let mut b = pool.buffer();
                b.extend_from_slice(frame.as_deref().expect("not the last copy"));
                b
            };
            if !f.is_empty() && st.chance(corrupt) {
                let bit = st.next() % (f.len() as u64 * 8);
                f[(bit / 8) as usize] ^= 1 << (bit % 8);
                st.ports[to].counters.corrupted += 1;
            }
            let mut due = now;
            if rate_bps > 0 {
                let start = st.ports[to].busy_until.max(now);
                let ser = (f.len() as u64 * 8 * 1_000_000_000).div_ceil(rate_bps);
                st.ports[to].busy_until = start + ser;
                due = start + ser;
            }
            due += latency_ns;
            if st.chance(reorder) {
                due += 1 + st.next() % reorder_ns.max(1);
                st.ports[to].counters.reordered += 1;
            }
            let seq = st.seq;
            st.seq += 1;
            if st.trace.is_some() {
                let digest = f.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                });
                st.log(TraceEvent::Queued {
                    at: now,
                    to,
                    due,
                    seq,
                    digest,
                });
            }
            let item = InFlight {
                due,
                seq,
                vnet: *vnet,
                frame: f,
            };
            // In order of (due, seq): usually the end of the queue.
            let fr = &mut q.frames;
            if fr.back().is_none_or(|x| (x.due, x.seq) <= (due, seq)) {
                fr.push_back(item);
            } else {
                let at = fr.partition_point(|x| (x.due, x.seq) <= (due, seq));
                fr.insert(at, item);
            }
            pushed = true;
        }
        drop(q);
        if let Some(f) = frame {
            pool.recycle(f);
        }
        pushed
    }
}

impl SimPort {
    /// Busy-poll mode (NAPI's interrupt mitigation): the sender writes no
    /// wake-up per burst to a receiver that is polling anyway (a `send` on
    /// the sender's side and a `recv` on the receiver's per burst). The
    /// receiver calls [`SimPort::arm_wakeup`] just before it sleeps on
    /// [`Port::rx_fd`]; that arms one wake-up.
    pub fn set_busy_poll(&self, on: bool) {
        let ing = &self.ingress;
        ing.busy_poll.store(on, SeqCst);
        ing.polled.store(!on, SeqCst);
        if on {
            ing.want.store(false, SeqCst);
        } else {
            ing.arm();
        }
    }

    /// Before sleeping on [`Port::rx_fd`] in busy-poll mode: arms one
    /// wake-up for the next frame. Returns true (and writes the wake-up at
    /// once) when a frame is already waiting, so the caller need not sleep.
    pub fn arm_wakeup(&self) -> bool {
        self.ingress.arm()
    }
}

impl Port for SimPort {
    fn transmit(&mut self, vnet: &VirtioNetHdr, chunks: &[&[u8]]) -> Result<TxOutcome, PortError> {
        let len: usize = chunks.iter().map(|c| c.len()).sum();
        self.transmit_with(vnet, len, |wire| {
            for c in chunks {
                wire.extend_from_slice(c);
            }
        })
    }

    /// Copies the frame from the segment into the wire buffer in one pass
    /// (the cursor copies whole runs of sibling lines): no gather list, no
    /// second copy.
    fn transmit_from(
        &mut self,
        vnet: &VirtioNetHdr,
        frame: &mut Cursor<'_>,
        len: usize,
    ) -> Option<Result<TxOutcome, PortError>> {
        Some(self.transmit_with(vnet, len, |wire| {
            if len <= SMALL_FRAME {
                // A few lines: appended chunk by chunk (no zero fill first).
                while wire.len() < len {
                    let c = frame.chunk();
                    if c.is_empty() {
                        break;
                    }
                    let take = c.len().min(len - wire.len());
                    wire.extend_from_slice(&c[..take]);
                    frame.advance(take);
                }
            } else {
                wire.resize(len, 0);
                let n = frame.copy_to_slice(wire);
                wire.truncate(n);
            }
        }))
    }

    fn receive(
        &mut self,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[u8]),
    ) -> Result<bool, PortError> {
        self.receive_one(deposit)
    }

    /// Asking for it turns the port's wake-ups on (and wakes at once if
    /// frames are already waiting), unless the port busy-polls
    /// ([`SimPort::set_busy_poll`]): then only [`SimPort::arm_wakeup`] does.
    fn rx_fd(&self) -> Option<RawFd> {
        let ing = &self.ingress;
        if !ing.busy_poll.load(SeqCst) && !ing.polled.swap(true, SeqCst) {
            ing.arm();
        }
        Some(self.ingress.wake.as_raw_fd())
    }

    fn max_frame(&self) -> usize {
        self.mtu
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl SimPort {
    /// Transmits a frame of `len` bytes that `fill` writes into an empty
    /// wire buffer.
    fn transmit_with(
        &mut self,
        vnet: &VirtioNetHdr,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<TxOutcome, PortError> {
        let now = self.clock.now();
        let mtu = self.mtu;
        if len > mtu {
            return Err(PortError::TooLarge { len, max: mtu });
        }
        // The wire: the frame leaves the memory here (copied into a wire
        // buffer), and the port's "hardware" does the offloads the metadata
        // asks for. No lock is held for this.
        let mut wire = self.pool.buffer();
        fill(&mut wire);
        let needs_offload =
            vnet.flags & F_NEEDS_CSUM != 0 || vnet.gso_type & !crate::meta::gso::ECN != 0;
        let in_place = if needs_offload {
            crate::offload::apply_tx_in_place(vnet, &mut wire)
        } else {
            None
        };
        let (vnet, frames) = if let Some(done) = in_place {
            // Checksum only: completed in the wire buffer, no new buffer.
            match done {
                Ok(vnet) => (vnet, Frames::One(wire)),
                Err(_) => {
                    self.pool.recycle(wire);
                    return Err(PortError::BadOffload);
                }
            }
        } else if needs_offload {
            match crate::offload::apply_tx(vnet, wire) {
                Ok((vnet, frames)) => (vnet, Frames::Many(frames)),
                Err(_) => return Err(PortError::BadOffload),
            }
        } else {
            let vnet = VirtioNetHdr {
                flags: vnet.flags & F_DATA_VALID,
                ..VirtioNetHdr::default()
            };
            (vnet, Frames::One(wire))
        };
        let pool = &mut self.pool;
        let pushed = &mut self.pushed;
        let me = self.index;
        let mut guard = lock(&self.state.net);
        let st = &mut *guard;
        if self.peers.len() != st.ports.len() {
            self.peers = st.ports.iter().map(|p| Arc::clone(&p.ingress)).collect();
        }
        let peers = &self.peers[..];
        let first = frames.first();
        let (one, flood) = match first.get(0..6).and_then(|d| st.macs.get(d)) {
            Some(&to) if to != me => (Some(to), false),
            Some(_) => (None, false),
            None => (None, true),
        };
        let full = |st: &NetState, d: usize| {
            lock_q(&st.ports[d].ingress.queue).frames.len() >= st.ports[d].cfg.queue_frames
        };
        let others = (0..st.ports.len()).filter(|&i| i != me);
        let blocked = match one {
            Some(d) => full(st, d),
            None => flood && others.clone().next().is_some() && others.clone().all(|d| full(st, d)),
        };
        if blocked {
            frames.for_each(|f| pool.recycle(f));
            return Ok(TxOutcome::Full);
        }
        if let Some(src) = first.get(6..12) {
            let src: [u8; 6] = src.try_into().expect("6 bytes");
            if src[0] & 1 == 0 && st.macs.get(&src) != Some(&me) {
                st.macs.insert(src, me);
            }
        }
        let last = others.clone().next_back();
        let mut note = |d: usize, done: bool| {
            if done && !pushed.contains(&d) {
                pushed.push(d);
            }
        };
        frames.for_each(|frame| {
            st.ports[me].counters.tx_frames += 1;
            st.log(TraceEvent::Sent {
                at: now,
                from: me,
                len: frame.len(),
            });
            if let Some(d) = one {
                note(d, SimPort::deliver(st, pool, peers, now, d, &vnet, frame));
            } else if let (true, Some(last)) = (flood, last) {
                // Every other port gets a copy; the last one the buffer.
                for d in others.clone() {
                    if d != last {
                        let mut b = pool.buffer();
                        b.extend_from_slice(&frame);
                        note(d, SimPort::deliver(st, pool, peers, now, d, &vnet, b));
                    }
                }
                note(
                    last,
                    SimPort::deliver(st, pool, peers, now, last, &vnet, frame),
                );
            } else {
                pool.recycle(frame);
            }
        });
        drop(guard);
        // Wake-ups outside every lock, only to receivers that may sleep.
        for d in pushed.drain(..) {
            self.peers[d].notify();
        }
        Ok(TxOutcome::Sent)
    }

    fn receive_one(
        &mut self,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[u8]),
    ) -> Result<bool, PortError> {
        let now = self.clock.now();
        let ing = &*self.ingress;
        let mut f = Self::pop_due(ing, &mut self.spare, now);
        if f.is_none() {
            if ing.busy_poll.load(Relaxed) {
                // Busy-poll: `arm_wakeup` stores `want` and checks again
                // before the receiver sleeps.
                ing.drain();
            } else if ing.polled.load(Relaxed) && (!ing.want.load(SeqCst) || ing.armed.load(SeqCst))
            {
                // The receiver may sleep after this: drain, ask for a
                // wake-up, then check again (see the module's protocol).
                // While `want` stays set and nothing is in the channel no
                // sender has pushed since the last check, so there is
                // nothing to do (a wake-up whose sender set `armed` late is
                // drained here, so level-triggered polls do not spin).
                ing.drain();
                ing.want.store(true, SeqCst);
                f = Self::pop_due(ing, &mut None, now);
            }
        }
        let Some(f) = f else {
            return Ok(false);
        };
        if self.state.tracing.load(Relaxed) {
            lock(&self.state.net).log(TraceEvent::Delivered {
                at: now,
                to: self.index,
                seq: f.seq,
            });
        }
        deposit(&f.vnet, &f.frame);
        self.spare = Some(f.frame);
        Ok(true)
    }

    /// Pops the first frame due at `now` under the ingress lock (returning
    /// `spare` to the free list under it).
    fn pop_due(ing: &Ingress, spare: &mut Option<Vec<u8>>, now: u64) -> Option<InFlight> {
        let mut q = lock_q(&ing.queue);
        if let Some(b) = spare.take() {
            if q.free.len() < POOL_MAX {
                q.free.push(b);
            }
        }
        if q.frames.front().is_none_or(|f| f.due > now) {
            return None;
        }
        q.rx_frames += 1;
        q.frames.pop_front()
    }
}
