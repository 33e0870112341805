//! TCP (RFC 9293), sans-IO: segments in, segments out, time passed in.
//!
//! A [`TcpSocket`] is one connection. The interface demultiplexes incoming
//! segments by 4-tuple and hands each to [`TcpSocket::process`] with its
//! payload; it calls [`TcpSocket::dispatch`] to collect what the socket wants
//! to send (headers as [`TcpRepr`](crate::wire::TcpRepr), payloads as
//! [`Payload`](crate::Payload) slices) and
//! [`TcpSocket::poll_at`] to learn when the next timer fires. Listeners,
//! backlogs and segments that match no socket stay in the interface, which
//! answers the latter with [`reply_rst`] and opens passive connections with
//! [`TcpSocket::accept`].
//!
//! ```text
//!  app: send(Payload) ──► send queue = retransmission queue (snapshots)
//!                              │ slices, never copies
//!                              ▼
//!  dispatch(now, emit) ──► emit(&TcpRepr, &[Payload], gso_mss) ──► interface
//!  process(now, &TcpRepr, Payload) ◄──────────────────────────────── interface
//!        │ in order              │ ahead of a hole
//!        ▼                       ▼
//!  receive queue ◄── merge ── out-of-order ranges (snapshots, by offset)
//!        │
//!  app: recv(max) -> Vec<Payload>   (the chunks as they arrived)
//! ```
//!
//! # Zero copy
//!
//! The send queue holds the application's payload snapshots and is also the
//! retransmission queue; every emitted segment is a list of slices of them.
//! Headers go in front of a payload for free only if the payload starts on a
//! line boundary of its segment, so segment sizes are whole lines (an MSS of
//! 1448 becomes 1408 with 64-byte lines: 2.8% more packets, no copy), a
//! segment is cut where the next queued chunk would break the line phase,
//! and segment ends are pulled back to line boundaries. Whatever still
//! starts mid-line is counted in [`TcpStats::tx_unaligned_bytes`]. The byte
//! API ([`TcpSocket::send_slice`], [`TcpSocket::recv_slice`]) copies once
//! and counts it in [`TcpStats::bytes_copied`].
//!
//! # What is implemented
//!
//! Active, passive and simultaneous open and close, half-close, TIME-WAIT
//! (and [`TcpSocket::accepts_reopen`] for a SYN that may end it); RFC 5961
//! (exact-sequence RST, challenge ACKs for in-window RST and any SYN,
//! ACK-value checks, rate limit); MSS, window scaling and timestamps (RTTM,
//! PAWS) of RFC 7323; RFC 6298 RTO with Karn's rule and backoff; slow
//! start, congestion avoidance, fast retransmit, limited transmit and
//! NewReno (RFC 5681, RFC 3042, RFC 6582) with an initial window of 10
//! segments and a restart window after idleness; delayed ACKs (every second
//! full segment, a timer otherwise, at once on reordering, one duplicate ACK
//! per out-of-order segment); Nagle; sender and receiver silly-window
//! avoidance; zero-window probes; keepalive; out-of-order reassembly;
//! bounded buffers with back-pressure. SACK is not implemented and not
//! offered.
//!
//! # Reading and end of stream
//!
//! [`TcpSocket::recv`] hands out the received payload snapshots; it returns
//! [`TcpError::WouldBlock`] while the stream is open and empty, and
//! [`TcpError::Finished`] once the peer's FIN arrived and every byte before
//! it was read ([`TcpSocket::recv_slice`] likewise; neither returns `Ok`
//! with nothing unless asked for nothing).
//!
//! # Example
//!
//! ```
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use segstack::tcp::{State, TcpConfig, TcpSocket};
//! use segstack::Payload;
//!
//! let mem = hicamp::Memory::new(hicamp::Config::default()).unwrap();
//! let a = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000);
//! let b = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
//! let mut client = TcpSocket::connect(TcpConfig::default(), a, b, 1000, 0);
//! let mut server = None;
//! // Shuttle segments between the two until both are established.
//! for _ in 0..4 {
//!     let mut out = Vec::new();
//!     client.dispatch(0, &mut |r, p, _| { out.push((*r, p.to_vec())); true });
//!     for (r, _) in &out {
//!         match server.as_mut() {
//!             None => server = TcpSocket::accept(TcpConfig::default(), b, a, r, 5000, 0),
//!             Some(s) => s.process(0, r, Payload::empty(&mem)),
//!         }
//!     }
//!     let mut back = Vec::new();
//!     if let Some(s) = server.as_mut() {
//!         s.dispatch(0, &mut |r, _, _| { back.push(*r); true });
//!     }
//!     for r in &back {
//!         client.process(0, r, Payload::empty(&mem));
//!     }
//! }
//! assert_eq!(client.state(), State::Established);
//! assert_eq!(server.unwrap().state(), State::Established);
//! ```

mod assembler;
pub mod cookie;
mod rtt;
mod sendq;
mod seq;
mod socket;

pub use socket::{reply_rst, Emit, Keepalive, State, TcpConfig, TcpError, TcpSocket, TcpStats};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testnet;
#[cfg(test)]
mod tests;
