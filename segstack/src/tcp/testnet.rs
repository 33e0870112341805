//! Test harness: two sockets joined by a seeded, lossy "link" on a virtual
//! clock. Segments travel as `(TcpRepr, Payload)`: the receiver gets the
//! sender's snapshots, as it would after a zero-copy NIC.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use hicamp::{Config, Memory};

use super::{reply_rst, TcpConfig, TcpSocket};
use crate::wire::{TcpFlags, TcpRepr};
use crate::Payload;

pub(crate) const MS: u64 = 1_000_000;

pub(crate) use testkit::Rng;

/// The test PRNG for `seed` (the sequences the seeded tests were tuned on).
pub(crate) fn rng(seed: u64) -> Rng {
    Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15)
}

/// Uniform in `0..n` by remainder, as the link model has always drawn its
/// losses, duplicates and delays: the seeds of the lossy tests were tuned on
/// this reduction (`testkit::Rng::below` multiplies and shifts instead).
fn draw(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

/// True with probability `permille / 1000`, drawn as [`draw`] does.
fn roll(rng: &mut Rng, permille: u32) -> bool {
    draw(rng, 1000) < u64::from(permille)
}

/// Impairments of the link (both directions).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Link {
    /// One-way delay.
    pub delay: u64,
    /// Extra random delay in `0..jitter` for reordered segments.
    pub jitter: u64,
    /// Loss, per mille.
    pub loss: u32,
    /// Duplication, per mille.
    pub dup: u32,
    /// Reordering (a segment gets extra delay), per mille.
    pub reorder: u32,
}

impl Link {
    pub(crate) fn clean(delay: u64) -> Link {
        Link {
            delay,
            ..Link::default()
        }
    }

    pub(crate) fn lossy(delay: u64, loss: u32) -> Link {
        Link {
            delay,
            jitter: 3 * delay,
            loss,
            dup: 10,
            reorder: 20,
        }
    }
}

/// A segment on the wire (after "NIC" segmentation).
#[derive(Debug, Clone)]
pub(crate) struct Seg {
    pub to: usize,
    pub repr: TcpRepr,
    pub payload: Payload,
}

type Filter = Box<dyn FnMut(u64, &Seg) -> bool>;

/// Two endpoints (0 = client, 1 = server) and the link between them.
pub(crate) struct Net {
    pub mem: Memory,
    pub now: u64,
    pub socks: [Option<TcpSocket>; 2],
    pub addrs: [SocketAddrV4; 2],
    pub cfgs: [TcpConfig; 2],
    pub link: Link,
    pub rng: Rng,
    queue: BTreeMap<(u64, u64), Seg>,
    counter: u64,
    /// Drops a segment when it returns false (applied before the link).
    pub filter: Option<Filter>,
    /// Every segment emitted, after segmentation: (time, segment).
    pub trace: Vec<(u64, Seg)>,
    pub keep_trace: bool,
    /// RSTs the "interface" sent for segments matching no socket.
    pub unmatched_rsts: u64,
    /// Emitted payload slices that did not start on a line boundary.
    pub unaligned_slices: u64,
    /// Refuse the next n emits (TX ring full).
    pub refuse: u32,
    pub iss: [u32; 2],
    /// Endpoint 1 accepts SYNs when it has no socket.
    pub listen: bool,
    /// Wake the application at least this often (0: only on events).
    pub tick: u64,
    /// The last segment emitted towards each endpoint.
    pub last: [Option<Seg>; 2],
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("now", &self.now)
            .field("socks", &self.socks)
            .finish_non_exhaustive()
    }
}

impl Net {
    pub(crate) fn new(cfg_client: TcpConfig, cfg_server: TcpConfig, link: Link, seed: u64) -> Net {
        let mut rng = rng(seed);
        let iss = [rng.next_u64() as u32, rng.next_u64() as u32];
        Net {
            mem: Memory::new(Config::default()).expect("memory"),
            now: 1_000 * MS,
            socks: [None, None],
            addrs: [
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40_000),
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80),
            ],
            cfgs: [cfg_client, cfg_server],
            link,
            rng,
            queue: BTreeMap::new(),
            counter: 0,
            filter: None,
            trace: Vec::new(),
            keep_trace: false,
            unmatched_rsts: 0,
            unaligned_slices: 0,
            refuse: 0,
            iss,
            listen: true,
            tick: 0,
            last: [None, None],
        }
    }

    /// Client 0 connects to server 1 (which accepts on the SYN).
    pub(crate) fn connect(&mut self) {
        self.socks[0] = Some(TcpSocket::connect(
            self.cfgs[0].clone(),
            self.addrs[0],
            self.addrs[1],
            self.iss[0],
            self.now,
        ));
    }

    /// Both ends connect to each other (simultaneous open).
    pub(crate) fn connect_both(&mut self) {
        for i in 0..2 {
            self.socks[i] = Some(TcpSocket::connect(
                self.cfgs[i].clone(),
                self.addrs[i],
                self.addrs[1 - i],
                self.iss[i],
                self.now,
            ));
        }
    }

    pub(crate) fn sock(&mut self, i: usize) -> &mut TcpSocket {
        self.socks[i].as_mut().expect("socket")
    }

    pub(crate) fn payload(&self, data: &[u8]) -> Payload {
        Payload::from_bytes(&self.mem, data).expect("intern")
    }

    fn enqueue(&mut self, seg: Seg, extra: u64) {
        let link = self.link;
        if let Some(f) = self.filter.as_mut() {
            if !f(self.now, &seg) {
                return;
            }
        }
        if roll(&mut self.rng, link.loss) {
            return;
        }
        let copies = if roll(&mut self.rng, link.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut at = self.now + link.delay + extra;
            if link.jitter > 0 && roll(&mut self.rng, link.reorder) {
                at += draw(&mut self.rng, link.jitter);
            }
            self.counter += 1;
            self.queue.insert((at, self.counter), seg.clone());
        }
    }

    /// Dispatches endpoint `i` and puts what it emits on the link.
    pub(crate) fn dispatch(&mut self, i: usize) {
        let Some(mut s) = self.socks[i].take() else {
            return;
        };
        let mut out: Vec<(TcpRepr, Vec<Payload>, Option<u16>)> = Vec::new();
        let refuse = &mut self.refuse;
        s.dispatch(self.now, &mut |r, p, gso| {
            if *refuse > 0 {
                *refuse -= 1;
                return false;
            }
            out.push((*r, p.to_vec(), gso));
            true
        });
        self.socks[i] = Some(s);
        for (r, slices, gso) in out {
            if std::env::var_os("TCP_TRACE").is_some() {
                let n: usize = slices.iter().map(Payload::len).sum();
                eprintln!(
                    "{:>8} {}-> {:?} seq={} ack={} len={} rto={}",
                    self.now / 1000,
                    i,
                    r.flags,
                    r.seq,
                    r.ack,
                    n,
                    self.socks[i].as_ref().map_or(0, |s| s.rto_ns() / 1000)
                );
            }
            for p in &slices {
                if p.offset() % self.mem.line_size() as u64 != 0 {
                    self.unaligned_slices += 1;
                }
            }
            for seg in self.segment(1 - i, r, slices, gso) {
                if self.keep_trace {
                    self.trace.push((self.now, seg.clone()));
                }
                self.last[seg.to] = Some(seg.clone());
                self.enqueue(seg, 0);
            }
        }
    }

    /// The "NIC": TSO cuts a big payload into MSS-sized segments. The test
    /// link joins slices by copying (a real NIC gathers them).
    fn segment(&self, to: usize, r: TcpRepr, slices: Vec<Payload>, gso: Option<u16>) -> Vec<Seg> {
        let bytes: usize = slices.iter().map(Payload::len).sum();
        let whole = if slices.len() == 1 {
            slices[0].clone()
        } else if slices.is_empty() {
            Payload::empty(&self.mem)
        } else {
            let mut v = Vec::with_capacity(bytes);
            for p in &slices {
                v.extend(p.to_vec());
            }
            self.payload(&v)
        };
        let Some(mss) = gso.map(usize::from) else {
            return vec![Seg {
                to,
                repr: r,
                payload: whole,
            }];
        };
        let mut segs = Vec::new();
        let mut off = 0;
        while off < bytes {
            let n = mss.min(bytes - off);
            let mut rr = r;
            rr.seq = r.seq.wrapping_add(off as u32);
            let last = off + n == bytes;
            if !last {
                rr.flags = TcpFlags(r.flags.0 & !(TcpFlags::FIN.0 | TcpFlags::PSH.0));
            }
            segs.push(Seg {
                to,
                repr: rr,
                payload: whole.slice(off, off + n),
            });
            off += n;
        }
        segs
    }

    /// Delivers one segment to its endpoint, as the interface would.
    pub(crate) fn deliver(&mut self, seg: Seg) {
        let to = seg.to;
        if std::env::var_os("TCP_TRACE").is_some() {
            eprintln!(
                "{:>8} ->{} {:?} seq={} ack={} len={} win={} | {:?}",
                self.now / 1000,
                to,
                seg.repr.flags,
                seg.repr.seq,
                seg.repr.ack,
                seg.payload.len(),
                seg.repr.window,
                self.socks[to].as_ref().map(|s| s.state())
            );
        }
        match self.socks[to].as_mut() {
            Some(s) => s.process(self.now, &seg.repr, seg.payload),
            None if to == 1 && self.listen && seg.repr.flags == TcpFlags::SYN => {
                self.socks[1] = TcpSocket::accept(
                    self.cfgs[1].clone(),
                    self.addrs[1],
                    self.addrs[0],
                    &seg.repr,
                    self.iss[1],
                    self.now,
                );
            }
            None => {
                if let Some(rst) = reply_rst(&seg.repr, seg.payload.len()) {
                    self.unmatched_rsts += 1;
                    let seg = Seg {
                        to: 1 - to,
                        repr: rst,
                        payload: Payload::empty(&self.mem),
                    };
                    self.enqueue(seg, 0);
                }
            }
        }
    }

    /// The last segment emitted towards `to`.
    pub(crate) fn trace_last(&self, to: usize) -> Option<Seg> {
        self.last[to].clone()
    }

    /// Puts a forged segment on the wire, arriving after the link delay.
    pub(crate) fn inject(&mut self, to: usize, repr: TcpRepr, payload: Payload) {
        self.counter += 1;
        let at = self.now + self.link.delay;
        self.queue
            .insert((at, self.counter), Seg { to, repr, payload });
    }

    /// One round: `app`, dispatch both, then advance the clock to the next
    /// event (no later than `until`) and deliver what is due. Returns false
    /// when nothing is left to happen before `until`.
    pub(crate) fn step(&mut self, until: u64) -> bool {
        self.dispatch(0);
        self.dispatch(1);
        let mut next = self.queue.keys().next().map(|k| k.0);
        for s in self.socks.iter().flatten() {
            if let Some(t) = s.poll_at() {
                let t = t.max(self.now);
                next = Some(next.map_or(t, |n: u64| n.min(t)));
            }
        }
        if self.tick > 0 {
            let t = self.now + self.tick;
            next = Some(next.map_or(t, |n: u64| n.min(t)));
        }
        let Some(next) = next else {
            return false;
        };
        if next > until {
            self.now = until;
            return false;
        }
        self.now = self.now.max(next);
        while let Some((&k, _)) = self.queue.iter().next() {
            if k.0 > self.now {
                break;
            }
            if let Some(seg) = self.queue.remove(&k) {
                self.deliver(seg);
            }
        }
        true
    }

    /// Steps until `done` holds or `limit` ns pass; panics on a livelock.
    pub(crate) fn run(&mut self, limit: u64, mut app: impl FnMut(&mut Net) -> bool) -> bool {
        let until = self.now + limit;
        let mut still = 0u32;
        loop {
            if app(self) {
                return true;
            }
            let before = self.now;
            let more = self.step(until);
            if !more && self.now >= until {
                return app(self);
            }
            if self.now == before {
                still += 1;
                assert!(
                    still < 100_000,
                    "livelock at {}: {:?}",
                    self.now,
                    self.socks
                );
            } else {
                still = 0;
            }
            if !more && self.queue.is_empty() {
                // Idle: let the app act once more, then jump to the end.
                if app(self) {
                    return true;
                }
                let quiet = self.socks.iter().flatten().all(|s| s.poll_at().is_none());
                if quiet {
                    self.now = until;
                    return app(self);
                }
            }
        }
    }

    /// Runs until both sockets are established (or `limit`).
    pub(crate) fn establish(&mut self) {
        self.connect();
        let ok = self.run(10_000 * MS, |n| {
            n.socks.iter().flatten().count() == 2
                && n.socks
                    .iter()
                    .flatten()
                    .all(|s| s.state() == super::State::Established)
        });
        assert!(ok, "not established: {:?}", self.socks);
    }
}

/// One direction of a bulk transfer through the payload API: the source is
/// one interned segment, sent in `chunk`-byte slices.
#[derive(Debug)]
pub(crate) struct Flow {
    pub from: usize,
    pub src: Payload,
    pub data: Vec<u8>,
    pub sent: usize,
    pub recvd: usize,
    pub chunk: usize,
    pub close_when_done: bool,
    pub eof: bool,
    pub read_max: usize,
    /// The receiver reads only when this is set.
    pub reading: bool,
}

impl Flow {
    pub(crate) fn new(net: &Net, from: usize, data: Vec<u8>, chunk: usize) -> Flow {
        let src = net.payload(&data);
        Flow {
            from,
            src,
            data,
            sent: 0,
            recvd: 0,
            chunk,
            close_when_done: true,
            eof: false,
            read_max: usize::MAX,
            reading: true,
        }
    }

    /// Sends what fits, reads what arrived (checking every byte). True when
    /// every byte arrived and (if closing) the EOF was seen.
    pub(crate) fn pump(&mut self, net: &mut Net) -> bool {
        let to = 1 - self.from;
        if net.socks[self.from].is_some() {
            while self.sent < self.data.len() {
                let n = self.chunk.min(self.data.len() - self.sent);
                let p = self.src.slice(self.sent, self.sent + n);
                match net.sock(self.from).send(p) {
                    Ok(k) => self.sent += k,
                    Err(super::TcpError::WouldBlock) => break,
                    Err(e) => panic!("send: {e}"),
                }
            }
            if self.sent == self.data.len() && self.close_when_done {
                net.sock(self.from).close();
            }
        }
        if net.socks[to].is_some() && !self.eof && self.reading {
            loop {
                match net.sock(to).recv(self.read_max) {
                    Ok(chunks) => {
                        for c in chunks {
                            let got = c.to_vec();
                            assert_eq!(
                                got,
                                &self.data[self.recvd..self.recvd + got.len()],
                                "corrupt at {}",
                                self.recvd
                            );
                            self.recvd += got.len();
                        }
                        if self.read_max != usize::MAX {
                            break;
                        }
                    }
                    Err(super::TcpError::WouldBlock) => break,
                    Err(super::TcpError::Finished) => {
                        self.eof = true;
                        break;
                    }
                    Err(e) => panic!("recv: {e} at {}/{}", self.recvd, self.data.len()),
                }
            }
        }
        self.recvd == self.data.len() && (self.eof || !self.close_when_done)
    }
}
