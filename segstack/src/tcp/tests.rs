//! Connection tests over the seeded test link (see `testnet`).

use super::testnet::{Flow, Link, Net, Rng, Seg, MS};
use super::*;
use crate::wire::{TcpFlags, TcpRepr};

fn cfg() -> TcpConfig {
    TcpConfig {
        time_wait_ns: 2_000 * MS,
        ..TcpConfig::default()
    }
}

fn st(net: &Net, i: usize) -> State {
    net.socks[i]
        .as_ref()
        .map_or(State::Closed, TcpSocket::state)
}

/// Runs two flows (client->server, server->client) to completion and both
/// closes through TIME-WAIT.
fn bulk(net: &mut Net, up: usize, down: usize, limit: u64) -> (Flow, Flow) {
    net.establish();
    let mut rng = Rng::new(up as u64 ^ (down as u64) << 20);
    let mut f0 = Flow::new(net, 0, rng.bytes(up), 64 * 1024);
    let mut f1 = Flow::new(net, 1, rng.bytes(down), 48 * 1024);
    let ok = net.run(limit, |n| {
        let a = f0.pump(n);
        let b = f1.pump(n);
        a && b
    });
    assert!(
        ok,
        "transfer incomplete: up {}/{} down {}/{}: {:?}",
        f0.recvd, up, f1.recvd, down, net.socks
    );
    let ok = net.run(limit, |n| {
        n.socks.iter().flatten().all(TcpSocket::is_closed)
    });
    assert!(ok, "not closed: {:?}", net.socks);
    (f0, f1)
}

#[test]
fn handshake_transfer_close() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 1);
    net.establish();
    let (c, s) = (net.sock(0).send_mss(), net.sock(1).send_mss());
    // 1460 - 12 (timestamps) = 1448, rounded down to 64-byte lines
    assert_eq!((c, s), (1408, 1408));
    let mut f = Flow::new(&net, 0, Rng::new(7).bytes(300_000), 10_000);
    assert!(net.run(10_000 * MS, |n| f.pump(n)));
    assert!(net.run(100 * MS, |n| st(n, 0) == State::FinWait2));
    assert_eq!(st(&net, 1), State::CloseWait);
    net.sock(1).close();
    assert!(net.run(100 * MS, |n| st(n, 0) == State::TimeWait
        && st(n, 1) == State::Closed));
    assert!(net.sock(1).is_closed());
    // TIME-WAIT lasts time_wait_ns.
    let entered = net.now;
    assert!(net.run(10_000 * MS, |n| n.socks[0]
        .as_ref()
        .is_some_and(TcpSocket::is_closed)));
    assert!(net.now - entered >= 2_000 * MS - 2 * MS);
    assert_eq!(net.sock(0).stats().retransmits, 0);
    assert_eq!(net.sock(0).error(), None);
}

#[test]
fn bulk_both_directions_clean() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 2);
    let (f0, f1) = bulk(&mut net, 3 << 20, 2 << 20, 60_000 * MS);
    assert!(f0.eof && f1.eof);
    for i in 0..2 {
        let s = net.sock(i).stats().clone();
        assert_eq!(s.retransmits, 0, "{s:?}");
        assert_eq!(s.bytes_copied, 0);
        assert_eq!(s.tx_unaligned_bytes, 0, "{s:?}");
    }
    assert_eq!(net.unaligned_slices, 0);
}

#[test]
fn bulk_lossy_1_percent() {
    let mut net = Net::new(cfg(), cfg(), Link::lossy(2 * MS, 10), 11);
    bulk(&mut net, 2 << 20, 1 << 20, 600_000 * MS);
    let s = net.sock(0).stats().clone();
    assert!(s.retransmits > 0 && s.fast_retransmits > 0, "{s:?}");
}

#[test]
fn bulk_lossy_5_percent() {
    let mut net = Net::new(cfg(), cfg(), Link::lossy(2 * MS, 50), 12);
    bulk(&mut net, 1 << 20, 1 << 20, 600_000 * MS);
}

#[test]
fn reply_rst_rules() {
    let syn = TcpRepr {
        src_port: 1,
        dst_port: 2,
        seq: 100,
        flags: TcpFlags::SYN,
        ..TcpRepr::default()
    };
    let r = reply_rst(&syn, 0).unwrap();
    assert_eq!((r.src_port, r.dst_port), (2, 1));
    assert_eq!(r.flags, TcpFlags::RST | TcpFlags::ACK);
    assert_eq!((r.seq, r.ack), (0, 101));
    let data = TcpRepr {
        seq: u32::MAX,
        flags: TcpFlags::ACK | TcpFlags::FIN,
        ack: 555,
        ..syn
    };
    let r = reply_rst(&data, 10).unwrap();
    assert_eq!((r.flags, r.seq), (TcpFlags::RST, 555));
    let nack = TcpRepr {
        flags: TcpFlags::FIN,
        seq: u32::MAX,
        ..syn
    };
    assert_eq!(reply_rst(&nack, 10).unwrap().ack, 10);
    let rst = TcpRepr {
        flags: TcpFlags::RST,
        ..syn
    };
    assert!(reply_rst(&rst, 0).is_none());
}

#[test]
fn accept_needs_a_plain_syn() {
    let net = Net::new(cfg(), cfg(), Link::clean(MS), 3);
    let mut syn = TcpRepr {
        src_port: 40_000,
        dst_port: 80,
        seq: 7,
        flags: TcpFlags::SYN,
        window: 100,
        ..TcpRepr::default()
    };
    let ok = TcpSocket::accept(cfg(), net.addrs[1], net.addrs[0], &syn, 9, 0);
    assert_eq!(ok.map(|s| s.state()), Some(State::SynReceived));
    for bad in [TcpFlags::ACK, TcpFlags::RST, TcpFlags::FIN] {
        syn.flags = TcpFlags::SYN | bad;
        assert!(TcpSocket::accept(cfg(), net.addrs[1], net.addrs[0], &syn, 9, 0).is_none());
    }
    syn.flags = TcpFlags::ACK;
    assert!(TcpSocket::accept(cfg(), net.addrs[1], net.addrs[0], &syn, 9, 0).is_none());
}

#[test]
fn refused_emit_is_not_sent() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 4);
    net.establish();
    let mut f = Flow::new(&net, 0, Rng::new(3).bytes(200_000), 20_000);
    let mut k = 0;
    assert!(net.run(10_000 * MS, |n| {
        k += 1;
        if k % 3 == 0 {
            n.refuse = 2;
        }
        f.pump(n)
    }));
    assert_eq!(net.sock(0).stats().retransmits, 0);
}

/// A segment from the client (0) to the server (1) with the client's
/// current numbers.
fn forged(net: &mut Net, flags: TcpFlags, seq_delta: i32) -> TcpRepr {
    let c = net.sock(0);
    TcpRepr {
        src_port: 40_000,
        dst_port: 80,
        seq: c.snd_nxt_seq().wrapping_add(seq_delta as u32),
        ack: c.rcv_nxt_seq(),
        flags,
        window: 1000,
        ..TcpRepr::default()
    }
}

#[test]
fn rst_in_window_gets_challenge_ack_exact_resets() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 21);
    net.establish();
    net.run(100 * MS, |_| false);
    let empty = net.payload(&[]);
    // In the window but not exact: challenge ACK, no reset.
    let r = forged(&mut net, TcpFlags::RST, 1000);
    net.inject(1, r, empty.clone());
    net.run(100 * MS, |_| false);
    assert_eq!(st(&net, 1), State::Established);
    assert_eq!(net.sock(1).stats().challenge_acks, 1);
    // Out of the window: silently dropped.
    let r = forged(&mut net, TcpFlags::RST, 1 << 30);
    net.inject(1, r, empty.clone());
    net.run(100 * MS, |_| false);
    assert_eq!(st(&net, 1), State::Established);
    assert_eq!(net.sock(1).stats().challenge_acks, 1);
    assert_eq!(net.sock(1).stats().out_of_window, 1);
    // A SYN in a synchronized state: challenge ACK.
    let r = forged(&mut net, TcpFlags::SYN, 0);
    net.inject(1, r, empty.clone());
    net.run(100 * MS, |_| false);
    assert_eq!(st(&net, 1), State::Established);
    assert_eq!(net.sock(1).stats().challenge_acks, 2);
    // Exact sequence: reset.
    let r = forged(&mut net, TcpFlags::RST, 0);
    net.inject(1, r, empty);
    net.run(100 * MS, |_| false);
    assert_eq!(st(&net, 1), State::Closed);
    assert_eq!(net.sock(1).error(), Some(TcpError::Reset));
    assert_eq!(net.sock(1).recv(10), Err(TcpError::Reset));
    let x = net.payload(b"x");
    assert_eq!(net.sock(1).send(x), Err(TcpError::Reset));
}

#[test]
fn trace_flags_are_recorded() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 22);
    net.keep_trace = true;
    net.establish();
    let t = trace_flags(&net);
    assert_eq!(t[0], (1, TcpFlags::SYN, 0));
    assert_eq!(t[1], (0, TcpFlags::SYN | TcpFlags::ACK, 0));
    assert_eq!(t[2], (1, TcpFlags::ACK, 0));
}

fn trace_flags(net: &Net) -> Vec<(usize, TcpFlags, usize)> {
    net.trace
        .iter()
        .map(|(_, s): &(u64, Seg)| (s.to, s.repr.flags, s.payload.len()))
        .collect()
}
