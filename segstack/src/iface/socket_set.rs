//! The socket set: every socket of an interface and the tables that
//! demultiplex incoming segments to them. It is kept apart from the
//! interface state (addresses, neighbours, the TX queue), as smoltcp keeps
//! its `SocketSet` apart from its `Interface`, so that a socket can emit
//! straight into the frame builder while the set is borrowed.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddrV4;

use crate::tcp::TcpSocket;
use crate::Payload;

use super::IfaceError;

/// A socket of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketHandle(pub usize);

#[derive(Debug)]
pub(super) struct TcpSock {
    pub(super) sock: TcpSocket,
    /// The listener it came from, while the handshake runs.
    pub(super) listener: Option<SocketHandle>,
    /// In a listener's accept queue, not yet accepted.
    pub(super) queued: bool,
    pub(super) want_write: bool,
    /// The application gave it up: free it once TCP is done.
    pub(super) released: bool,
    pub(super) reported_closed: bool,
    /// Something may have changed since the last dispatch (a segment
    /// arrived, or the application touched the socket): the next poll
    /// dispatches it.
    pub(super) dirty: bool,
    /// What `poll_at` said after the last dispatch: when a clean socket
    /// needs a dispatch again (timers), `None` for never.
    pub(super) wake_at: Option<u64>,
}

impl TcpSock {
    /// A connection the application has not touched yet.
    pub(super) fn new(sock: TcpSocket, listener: Option<SocketHandle>) -> Box<TcpSock> {
        Box::new(TcpSock {
            sock,
            listener,
            queued: false,
            want_write: false,
            released: false,
            reported_closed: false,
            dirty: true,
            wake_at: None,
        })
    }
}

#[derive(Debug)]
pub(super) struct Listener {
    pub(super) port: u16,
    pub(super) backlog: usize,
    /// Established connections not yet accepted.
    pub(super) ready: VecDeque<SocketHandle>,
    /// Connections in the handshake.
    pub(super) embryonic: usize,
    /// The secret of its SYN cookies (sent while the queue is full).
    pub(super) cookies: crate::tcp::cookie::SynCookies,
    /// When it last answered a SYN with a cookie (ACKs are checked for
    /// cookies only for a while after).
    pub(super) cookie_sent_at: Option<u64>,
}

#[derive(Debug)]
pub(super) struct UdpSock {
    pub(super) port: u16,
    pub(super) rx: VecDeque<(SocketAddrV4, Payload)>,
}

#[derive(Debug)]
pub(super) enum Sock {
    Tcp(Box<TcpSock>),
    Listener(Listener),
    Udp(UdpSock),
}

/// The hash of the demultiplexing tables: a multiply-and-fold over the key's
/// few bytes, keyed by a random per-table seed (so remote peers cannot aim
/// their ports at one bucket), far cheaper than SipHash on a 12-byte key
/// looked up for every segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct DemuxHash {
    seed: u64,
}

impl Default for DemuxHash {
    fn default() -> DemuxHash {
        DemuxHash {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5e65_u64) | 1,
        }
    }
}

impl BuildHasher for DemuxHash {
    type Hasher = DemuxHasher;
    fn build_hasher(&self) -> DemuxHasher {
        DemuxHasher(self.seed)
    }
}

/// See [`DemuxHash`].
#[derive(Debug, Clone, Copy)]
pub(super) struct DemuxHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl DemuxHasher {
    #[inline]
    fn mix(&mut self, v: u64) {
        let m = u128::from(self.0 ^ v) * u128::from(K);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for DemuxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.mix(u64::from_le_bytes(b) ^ ((c.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0.rotate_left(23) ^ self.0
    }
}

type Table<K> = HashMap<K, SocketHandle, DemuxHash>;

/// The sockets, by handle, and the demultiplexing tables.
#[derive(Debug, Default)]
pub(super) struct SocketSet {
    pub(super) slots: Vec<Option<Sock>>,
    free: Vec<usize>,
    /// Connections by (local, remote).
    pub(super) tcp_demux: Table<(SocketAddrV4, SocketAddrV4)>,
    /// Listeners by local port.
    pub(super) listeners: Table<u16>,
    /// UDP sockets by local port.
    pub(super) udp_ports: Table<u16>,
    /// Slots that may have news or output since the last
    /// `collect_events`: every socket reached through [`SocketSet::get_mut`]
    /// or inserted, plus the sockets that had news at the last collection
    /// (events are level-triggered). A poll dispatches and checks these
    /// slots only, so its cost follows the active sockets, not all of them.
    pub(super) active: Vec<usize>,
    /// `listed[i]`: slot `i` is in `active`.
    listed: Vec<bool>,
    /// No clean socket's timer is due before this (ns; `u64::MAX`: none).
    /// A lower bound: a socket whose timer moved later leaves it early, and
    /// the scan it triggers makes it exact again.
    pub(super) timer_floor: u64,
}

impl SocketSet {
    /// Sockets in use.
    pub(super) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub(super) fn insert(&mut self, s: Sock) -> SocketHandle {
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(s);
                i
            }
            None => {
                self.slots.push(Some(s));
                self.listed.push(false);
                self.slots.len() - 1
            }
        };
        self.mark(i);
        SocketHandle(i)
    }

    /// Puts slot `i` on the active list (once).
    #[inline]
    pub(super) fn mark(&mut self, i: usize) {
        if let Some(l) = self.listed.get_mut(i) {
            if !*l {
                *l = true;
                self.active.push(i);
            }
        }
    }

    /// Takes slot `i` off the active list's flags (the caller rebuilds the
    /// list).
    #[inline]
    pub(super) fn unlist(&mut self, i: usize) {
        if let Some(l) = self.listed.get_mut(i) {
            *l = false;
        }
    }

    /// Adds a TCP connection and its demultiplexing entry.
    pub(super) fn insert_tcp(&mut self, t: Box<TcpSock>) -> SocketHandle {
        let key = (t.sock.local(), t.sock.remote());
        let h = self.insert(Sock::Tcp(t));
        self.tcp_demux.insert(key, h);
        h
    }

    /// Frees the slot of `h` (its demultiplexing entries are the caller's).
    pub(super) fn remove(&mut self, h: SocketHandle) -> Option<Sock> {
        let s = self.slots.get_mut(h.0)?.take()?;
        self.free.push(h.0);
        Some(s)
    }

    /// The socket behind `h`; a socket reached this way goes on the active
    /// list and a TCP socket is marked dirty (dispatched at the next poll),
    /// since the caller may change it.
    pub(super) fn get_mut(&mut self, h: SocketHandle) -> Option<&mut Sock> {
        self.slots.get(h.0)?.as_ref()?;
        self.mark(h.0);
        let s = self.slots.get_mut(h.0)?.as_mut()?;
        if let Sock::Tcp(t) = s {
            t.dirty = true;
        }
        Some(s)
    }

    /// The TCP socket behind `h` without marking it: for calls that change
    /// it only when they succeed ([`SocketSet::touch`] then).
    pub(super) fn tcp_quiet(&mut self, h: SocketHandle) -> Result<&mut TcpSock, IfaceError> {
        match self.slots.get_mut(h.0) {
            Some(Some(Sock::Tcp(t))) => Ok(t),
            _ => Err(IfaceError::BadHandle),
        }
    }

    /// Marks `h` as [`SocketSet::get_mut`] does.
    pub(super) fn touch(&mut self, h: SocketHandle) {
        let _ = self.get_mut(h);
    }

    pub(super) fn tcp(&self, h: SocketHandle) -> Result<&TcpSock, IfaceError> {
        match self.slots.get(h.0) {
            Some(Some(Sock::Tcp(t))) => Ok(t),
            _ => Err(IfaceError::BadHandle),
        }
    }

    pub(super) fn tcp_mut(&mut self, h: SocketHandle) -> Result<&mut TcpSock, IfaceError> {
        match self.get_mut(h) {
            Some(Sock::Tcp(t)) => Ok(t),
            _ => Err(IfaceError::BadHandle),
        }
    }

    pub(super) fn listener_mut(&mut self, h: SocketHandle) -> Option<&mut Listener> {
        match self.get_mut(h) {
            Some(Sock::Listener(l)) => Some(l),
            _ => None,
        }
    }

    pub(super) fn udp_mut(&mut self, h: SocketHandle) -> Result<&mut UdpSock, IfaceError> {
        match self.get_mut(h) {
            Some(Sock::Udp(u)) => Ok(u),
            _ => Err(IfaceError::BadHandle),
        }
    }
}
