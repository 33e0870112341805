//! Connection tests over the seeded test link (see `testnet`).

use super::testnet::{rng, Flow, Link, Net, Seg, MS};
use super::*;
use crate::wire::{TcpFlags, TcpRepr};
use crate::Payload;

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
    let mut rng = rng(up as u64 ^ (down as u64) << 20);
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
    let mut f = Flow::new(&net, 0, rng(7).bytes(300_000), 10_000);
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
    bulk(&mut net, 4 << 20, 2 << 20, 600_000 * MS);
    for i in 0..2 {
        let s = net.sock(i).stats().clone();
        assert!(s.retransmits > 0 && s.fast_retransmits > 0, "{s:?}");
        // Retransmissions stay near the loss rate (go-back-N after a
        // timeout resends some segments the receiver already holds).
        assert!(s.retransmitted_bytes * 100 < s.bytes_out * 4, "{s:?}");
        assert_eq!(s.tx_unaligned_bytes, 0, "{s:?}");
        assert_eq!(s.bytes_copied, 0);
    }
}

#[test]
fn bulk_lossy_5_percent() {
    for seed in [12, 13] {
        let mut net = Net::new(cfg(), cfg(), Link::lossy(2 * MS, 50), seed);
        bulk(&mut net, 2 << 20, 2 << 20, 3_600_000 * MS);
        for i in 0..2 {
            let s = net.sock(i).stats().clone();
            assert!(s.retransmitted_bytes * 100 < s.bytes_out * 15, "{s:?}");
            assert_eq!(s.tx_unaligned_bytes, 0, "{s:?}");
        }
    }
}

#[test]
fn restart_window_after_idle() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 14);
    net.establish();
    let mut f = Flow::new(&net, 0, rng(1).bytes(1 << 20), 1 << 20);
    f.close_when_done = false;
    assert!(net.run(10_000 * MS, |n| f.pump(n)));
    let mss = net.sock(0).send_mss();
    assert!(net.sock(0).cwnd() > 20 * mss);
    net.run(2_000 * MS, |_| false);
    let p = net.payload(&[0; 100]);
    net.sock(0).send(p).unwrap();
    net.dispatch(0);
    assert_eq!(net.sock(0).cwnd(), 10 * mss);
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
    let mut f = Flow::new(&net, 0, rng(3).bytes(200_000), 20_000);
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

fn data_segs(net: &Net, to: usize) -> usize {
    net.trace
        .iter()
        .filter(|(_, s)| s.to == to && !s.payload.is_empty())
        .count()
}

#[test]
fn simultaneous_open_and_close() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 31);
    net.connect_both();
    assert!(net.run(5_000 * MS, |n| st(n, 0) == State::Established
        && st(n, 1) == State::Established));
    assert_eq!(
        net.sock(0).stats().retransmits,
        1,
        "the SYN-ACK re-sends the SYN"
    );
    // Data both ways, then both close at once.
    let mut f0 = Flow::new(&net, 0, rng(1).bytes(50_000), 4096);
    let mut f1 = Flow::new(&net, 1, rng(2).bytes(70_000), 4096);
    f0.close_when_done = false;
    f1.close_when_done = false;
    assert!(net.run(5_000 * MS, |n| {
        let a = f0.pump(n);
        let b = f1.pump(n);
        a && b
    }));
    net.sock(0).close();
    net.sock(1).close();
    let mut saw_closing = [false; 2];
    assert!(net.run(10_000 * MS, |n| {
        for (i, seen) in saw_closing.iter_mut().enumerate() {
            *seen |= st(n, i) == State::Closing;
        }
        st(n, 0) == State::TimeWait && st(n, 1) == State::TimeWait
    }));
    assert_eq!(saw_closing, [true, true]);
    assert!(net.run(10_000 * MS, |n| n
        .socks
        .iter()
        .flatten()
        .all(TcpSocket::is_closed)));
    for i in 0..2 {
        assert_eq!(net.sock(i).error(), None);
        assert_eq!(net.sock(i).recv(1), Err(TcpError::Finished));
    }
}

#[test]
fn half_close_then_data() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(2 * MS), 32);
    net.establish();
    let mut up = Flow::new(&net, 0, rng(3).bytes(100_000), 8192);
    let mut down = Flow::new(&net, 1, rng(4).bytes(500_000), 8192);
    let mut client_was_fw2 = false;
    assert!(net.run(20_000 * MS, |n| {
        if !up.pump(n) {
            return false;
        }
        // The client half-closed; the server saw EOF and now sends.
        client_was_fw2 |= st(n, 0) == State::FinWait2;
        assert!(!n.sock(0).can_send());
        down.pump(n)
    }));
    assert!(client_was_fw2);
    assert!(!net.sock(0).may_recv());
    assert!(net.run(10_000 * MS, |n| n
        .socks
        .iter()
        .flatten()
        .all(TcpSocket::is_closed)));
    assert_eq!(
        {
            let x = net.payload(b"late");
            net.sock(0).send(x)
        },
        Err(TcpError::Closed)
    );
}

#[test]
fn time_wait_reacks_a_retransmitted_fin() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 33);
    net.keep_trace = true;
    let mut fin_end = None;
    let mut dropped = 0;
    net.filter = Some(Box::new(move |_, s| {
        if s.to == 0 && s.repr.flags.contains(TcpFlags::FIN) {
            fin_end = Some(s.repr.seq.wrapping_add(1));
        }
        if s.to == 1 && s.repr.flags == TcpFlags::ACK && Some(s.repr.ack) == fin_end && dropped == 0
        {
            dropped += 1;
            return false;
        }
        true
    }));
    net.establish();
    net.sock(0).close();
    assert!(net.run(1_000 * MS, |n| st(n, 0) == State::FinWait2));
    net.sock(1).close();
    assert!(net.run(1_000 * MS, |n| st(n, 0) == State::TimeWait));
    // The server's FIN is retransmitted after its RTO and re-ACKed.
    assert!(net.run(5_000 * MS, |n| st(n, 1) == State::Closed));
    assert_eq!(net.sock(1).error(), None);
    assert!(net.sock(1).stats().retransmits >= 1);
    assert_eq!(st(&net, 0), State::TimeWait);
    // A new SYN for the same pair may reopen it only with a higher sequence
    // number (or a newer timestamp).
    let rcv_nxt = net.sock(0).rcv_nxt_seq();
    let mut syn = TcpRepr {
        src_port: 80,
        dst_port: 40_000,
        seq: rcv_nxt.wrapping_add(100_000),
        flags: TcpFlags::SYN,
        ..TcpRepr::default()
    };
    assert!(net.sock(0).accepts_reopen(&syn));
    syn.seq = rcv_nxt.wrapping_sub(10);
    assert!(!net.sock(0).accepts_reopen(&syn));
    syn.flags = TcpFlags::SYN | TcpFlags::ACK;
    syn.seq = rcv_nxt.wrapping_add(100_000);
    assert!(!net.sock(0).accepts_reopen(&syn));
    assert!(!net.sock(1).accepts_reopen(&syn));
    assert!(net.run(10_000 * MS, |n| st(n, 0) == State::Closed));
}

#[test]
fn rst_to_syn_sent_needs_an_acceptable_ack() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 34);
    net.listen = false;
    net.connect();
    net.dispatch(0);
    let c = net.sock(0);
    let iss = c.snd_nxt_seq().wrapping_sub(1);
    let base = TcpRepr {
        src_port: 80,
        dst_port: 40_000,
        flags: TcpFlags::RST,
        ..TcpRepr::default()
    };
    let empty = net.payload(&[]);
    // RST without ACK, and RST with a wrong ACK: ignored.
    net.socks[0]
        .as_mut()
        .unwrap()
        .process(net.now, &base, empty.clone());
    let bad = TcpRepr {
        flags: TcpFlags::RST | TcpFlags::ACK,
        ack: iss.wrapping_add(7),
        ..base
    };
    net.socks[0]
        .as_mut()
        .unwrap()
        .process(net.now, &bad, empty.clone());
    assert_eq!(st(&net, 0), State::SynSent);
    // A bare ACK with a wrong ACK number is answered with a RST.
    let stray = TcpRepr {
        flags: TcpFlags::ACK,
        ack: iss.wrapping_add(7),
        ..base
    };
    net.socks[0]
        .as_mut()
        .unwrap()
        .process(net.now, &stray, empty.clone());
    let mut out = Vec::new();
    net.socks[0]
        .as_mut()
        .unwrap()
        .dispatch(net.now, &mut |r, _, _| {
            out.push(*r);
            true
        });
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].flags, out[0].seq),
        (TcpFlags::RST, iss.wrapping_add(7))
    );
    assert_eq!(st(&net, 0), State::SynSent);
    // The interface's reply to the SYN (RST|ACK, ACK = ISS + 1) resets.
    assert!(net.run(1_000 * MS, |n| st(n, 0) == State::Closed));
    assert_eq!(net.unmatched_rsts, 1);
    assert_eq!(net.sock(0).error(), Some(TcpError::Reset));
    assert!(net.sock(0).is_closed());
}

#[test]
fn blind_data_injection_is_rejected() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 35);
    net.establish();
    let mut f = Flow::new(&net, 0, rng(5).bytes(10_000), 10_000);
    f.close_when_done = false;
    assert!(net.run(1_000 * MS, |n| f.pump(n)));
    let junk = net.payload(b"junk");
    // In-window data whose ACK acknowledges what was never sent.
    let mut r = forged(&mut net, TcpFlags::ACK | TcpFlags::PSH, 0);
    r.ack = r.ack.wrapping_add(1 << 20);
    net.inject(1, r, junk.clone());
    // ... and one whose ACK is far too old.
    let mut r = forged(&mut net, TcpFlags::ACK | TcpFlags::PSH, 0);
    r.ack = r.ack.wrapping_sub(1 << 30);
    net.inject(1, r, junk);
    net.run(200 * MS, |_| false);
    assert_eq!(net.sock(1).recv_queue(), 0);
    assert_eq!(net.sock(1).stats().challenge_acks, 2);
    assert_eq!(st(&net, 1), State::Established);
}

#[test]
fn zero_window_persist_and_slow_reader() {
    let small = TcpConfig {
        recv_buf: 16 * 1024,
        ..cfg()
    };
    let mut net = Net::new(cfg(), small, Link::clean(MS), 36);
    net.establish();
    let mut f = Flow::new(&net, 0, rng(6).bytes(200_000), 32 * 1024);
    f.read_max = 4096;
    net.tick = 10 * MS;
    let start = net.now;
    let mut last_read = 0;
    let mut min_wnd = u64::MAX;
    assert!(net.run(120_000 * MS, |n| {
        min_wnd = min_wnd.min(n.sock(0).send_window());
        // The reader sleeps 3 s, then reads 4 KiB every 50 ms.
        f.reading = n.now >= start + 3_000 * MS && n.now >= last_read + 50 * MS;
        if f.reading {
            last_read = n.now;
        }
        f.pump(n)
    }));
    assert_eq!(min_wnd, 0);
    let s = net.sock(0).stats().clone();
    assert!(s.window_probes >= 2, "{s:?}");
    assert_eq!(net.sock(0).error(), None);
    assert!(net.sock(1).stats().bytes_in >= 200_000);
}

#[test]
fn nagle_coalesces_small_writes() {
    for nagle in [true, false] {
        let c = TcpConfig { nagle, ..cfg() };
        let mut net = Net::new(c, cfg(), Link::clean(5 * MS), 37);
        net.keep_trace = true;
        net.establish();
        let before = data_segs(&net, 1);
        let mem = net.mem.clone();
        for i in 0..10u8 {
            net.sock(0).send_slice(&mem, &[i; 100]).unwrap();
            net.dispatch(0);
        }
        net.run(1_000 * MS, |_| false);
        let segs = data_segs(&net, 1) - before;
        if nagle {
            assert_eq!(
                segs, 2,
                "one 100-byte segment, then 900 bytes after the ACK"
            );
        } else {
            assert_eq!(segs, 10);
        }
        let mut buf = [0u8; 2000];
        assert_eq!(net.sock(1).recv_slice(&mut buf), Ok(1000));
        assert!(buf[..1000]
            .chunks(100)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        assert_eq!(net.sock(1).stats().bytes_copied, 1000);
        assert!(net.sock(0).stats().bytes_copied >= 1000);
    }
}

#[test]
fn send_back_pressure() {
    let c = TcpConfig {
        send_buf: 64 * 1024,
        ..cfg()
    };
    let mut net = Net::new(c, cfg(), Link::clean(10 * MS), 38);
    net.establish();
    let data = rng(8).bytes(1 << 20);
    let src = net.payload(&data);
    let mut sent = 0;
    loop {
        match net.sock(0).send(src.slice(sent, data.len())) {
            Ok(n) => sent += n,
            Err(TcpError::WouldBlock) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(sent, 64 * 1024);
    assert_eq!(net.sock(0).send_queue(), 64 * 1024);
    assert!(!net.sock(0).can_send());
    let mut f = Flow::new(&net, 0, data, 1 << 20);
    f.src = src;
    f.sent = sent;
    let mut blocked = 0;
    assert!(net.run(60_000 * MS, |n| {
        if !n.sock(0).can_send() {
            blocked += 1;
        }
        assert!(n.sock(0).send_queue() <= 64 * 1024);
        f.pump(n)
    }));
    assert!(blocked > 10);
}

#[test]
fn retransmission_timeout_aborts() {
    let c = TcpConfig {
        max_retries: 5,
        ..cfg()
    };
    let mut net = Net::new(c, cfg(), Link::clean(MS), 39);
    net.establish();
    net.link.loss = 1000;
    let p = net.payload(&[1; 5000]);
    net.sock(0).send(p).unwrap();
    let start = net.now;
    assert!(net.run(3_600_000 * MS, |n| st(n, 0) == State::Closed));
    let s = net.sock(0).stats().clone();
    assert_eq!(net.sock(0).error(), Some(TcpError::TimedOut));
    assert_eq!(s.timeouts, 6);
    assert_eq!(s.retransmits, 5);
    // 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 6.4 s of backoff
    let took = net.now - start;
    assert!((12_000 * MS..13_000 * MS).contains(&took), "{took}");
    assert_eq!(
        {
            let x = net.payload(b"x");
            net.sock(0).send(x)
        },
        Err(TcpError::TimedOut)
    );
}

#[test]
fn syn_timeout() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 40);
    net.link.loss = 1000;
    net.connect();
    assert!(net.run(3_600_000 * MS, |n| st(n, 0) == State::Closed));
    assert_eq!(net.sock(0).error(), Some(TcpError::TimedOut));
    assert_eq!(net.sock(0).stats().segs_out, 7);
}

#[test]
fn single_loss_is_fast_retransmitted() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(5 * MS), 41);
    let mut n_data = 0;
    net.filter = Some(Box::new(move |_, s| {
        if s.to == 1 && !s.payload.is_empty() {
            n_data += 1;
            return n_data != 40;
        }
        true
    }));
    net.establish();
    let mut f = Flow::new(&net, 0, rng(9).bytes(1 << 20), 64 * 1024);
    assert!(net.run(60_000 * MS, |n| f.pump(n)));
    let s = net.sock(0).stats().clone();
    assert_eq!(s.timeouts, 0, "{s:?} {:?}", net.sock(1).stats());
    assert_eq!(s.fast_retransmits, 1, "{s:?}");
    assert_eq!(s.retransmits, 1, "{s:?}");
    assert!(s.dup_acks >= 3);
    assert!(net.sock(1).stats().out_of_order >= 3);
}

#[test]
fn delayed_ack_timer_and_every_second_segment() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 42);
    net.keep_trace = true;
    net.establish();
    net.run(100 * MS, |_| false);
    let t0 = net.now;
    let p = net.payload(&[1; 100]);
    net.sock(0).send(p).unwrap();
    let n0 = net.trace.len();
    net.run(200 * MS, |_| false);
    let acks: Vec<u64> = net.trace[n0..]
        .iter()
        .filter(|(_, s)| s.to == 0)
        .map(|(t, _)| *t - t0)
        .collect();
    assert_eq!(acks, vec![41 * MS]);
    // Two full segments: acknowledged at once.
    let t1 = net.now;
    let mss = net.sock(0).send_mss();
    let p = net.payload(&vec![2; 2 * mss]);
    net.sock(0).send(p).unwrap();
    let n1 = net.trace.len();
    net.run(200 * MS, |_| false);
    let acks: Vec<u64> = net.trace[n1..]
        .iter()
        .filter(|(_, s)| s.to == 0)
        .map(|(t, _)| *t - t1)
        .collect();
    assert_eq!(acks, vec![MS]);
}

#[test]
fn rtt_and_window_scaling() {
    let big = TcpConfig {
        send_buf: 2 << 20,
        recv_buf: 2 << 20,
        ..cfg()
    };
    let mut net = Net::new(big.clone(), big, Link::clean(20 * MS), 43);
    net.establish();
    let mut f = Flow::new(&net, 0, rng(10).bytes(8 << 20), 256 * 1024);
    let mut max_wnd = 0;
    assert!(net.run(60_000 * MS, |n| {
        max_wnd = max_wnd.max(n.sock(0).send_window());
        f.pump(n)
    }));
    assert!(max_wnd > 1 << 20, "{max_wnd}");
    let srtt = net.sock(0).srtt_ns().unwrap();
    assert!((40 * MS..45 * MS).contains(&srtt), "{srtt}");
    assert_eq!(net.sock(0).rto_ns(), srtt + 200 * MS);
}

#[test]
fn without_options() {
    let plain = TcpConfig {
        window_scale: false,
        timestamps: false,
        ..cfg()
    };
    let mut net = Net::new(plain, cfg(), Link::lossy(MS, 10), 44);
    net.establish();
    assert_eq!(net.sock(0).send_mss(), 1408);
    assert_eq!(net.sock(1).send_mss(), 1408);
    let mut f = Flow::new(&net, 1, rng(11).bytes(1 << 20), 64 * 1024);
    assert!(net.run(60_000 * MS, |n| f.pump(n)));
    assert!(net.sock(1).send_window() <= 65535);
}

#[test]
fn tso_bulk() {
    let tso = TcpConfig {
        tso_max: 64 * 1024,
        ..cfg()
    };
    for (loss, seed) in [(0, 45), (10, 46)] {
        let mut net = Net::new(tso.clone(), tso.clone(), Link::lossy(MS, loss), seed);
        bulk(&mut net, 2 << 20, 1 << 20, 600_000 * MS);
        assert_eq!(net.sock(0).stats().tx_unaligned_bytes, 0);
        assert!(net.sock(0).stats().segs_out < 1500);
    }
}

#[test]
fn unaligned_payloads_are_cut_at_chunk_ends() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 47);
    net.establish();
    // 1000-byte payloads, each starting at offset 0 of its own segment.
    let data = rng(12).bytes(200_000);
    let mut f = Flow::new(&net, 0, data.clone(), 1000);
    let pieces: Vec<Payload> = data.chunks(1000).map(|c| net.payload(c)).collect();
    let mut next = 0;
    assert!(net.run(60_000 * MS, |n| {
        while next < pieces.len() && n.sock(0).send(pieces[next].clone()) == Ok(1000) {
            next += 1;
        }
        f.sent = data.len();
        f.pump(n)
    }));
    let s = net.sock(0).stats().clone();
    assert_eq!(s.tx_unaligned_bytes, 0, "{s:?}");
    assert_eq!(s.bytes_copied, 0);
}

#[test]
fn byte_api_small_writes_stay_aligned() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 48);
    net.establish();
    let data = rng(13).bytes(300_000);
    let mem = net.mem.clone();
    let mut sent = 0;
    let mut got = Vec::new();
    assert!(net.run(60_000 * MS, |n| {
        while sent < data.len() {
            let k = 700.min(data.len() - sent);
            match n.sock(0).send_slice(&mem, &data[sent..sent + k]) {
                Ok(m) => sent += m,
                Err(TcpError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let mut buf = [0u8; 5000];
        while let Ok(m) = n.sock(1).recv_slice(&mut buf) {
            got.extend_from_slice(&buf[..m]);
        }
        got.len() == data.len()
    }));
    assert_eq!(got, data);
    let s = net.sock(0).stats().clone();
    // Appends rewrite at most one partial line each.
    assert!(s.bytes_copied >= data.len() as u64);
    assert!(s.bytes_copied < data.len() as u64 * 11 / 10, "{s:?}");
    assert!(s.tx_unaligned_bytes < data.len() as u64 / 100, "{s:?}");
}

#[test]
fn keepalive_probes_and_gives_up() {
    let ka = TcpConfig {
        keepalive: Some(Keepalive {
            idle_ns: 10_000 * MS,
            interval_ns: 1_000 * MS,
            probes: 3,
        }),
        ..cfg()
    };
    let mut net = Net::new(ka, cfg(), Link::clean(MS), 50);
    net.establish();
    // Answered probes keep the connection up.
    net.run(35_000 * MS, |_| false);
    assert_eq!(st(&net, 0), State::Established);
    assert_eq!(net.sock(0).stats().keepalive_probes, 3);
    // A dead peer: three unanswered probes, then the connection is dropped.
    net.link.loss = 1000;
    let t0 = net.now;
    assert!(net.run(60_000 * MS, |n| n.socks[0]
        .as_ref()
        .is_some_and(TcpSocket::is_closed)));
    let s = net.sock(0).stats().clone();
    assert_eq!(s.keepalive_probes, 6);
    assert_eq!(s.rst_out, 1);
    assert_eq!(net.sock(0).error(), Some(TcpError::TimedOut));
    // The last answered probe was at 31 s; then probes at 41, 42, 43 s and
    // the abort at 44 s (t0 = 36 s).
    let took = net.now - t0;
    assert!((7_900 * MS..8_100 * MS).contains(&took), "{took}");
    assert_eq!(net.sock(1).stats().keepalive_probes, 0);
}

#[test]
fn paws_rejects_old_timestamps() {
    let mut net = Net::new(cfg(), cfg(), Link::clean(MS), 51);
    net.keep_trace = true;
    net.establish();
    let mut f = Flow::new(&net, 0, rng(14).bytes(20_000), 20_000);
    f.close_when_done = false;
    assert!(net.run(1_000 * MS, |n| f.pump(n)));
    // Replay the client's first data segment with new numbers but its old
    // timestamp: PAWS drops it (and answers with an ACK).
    let (_, old) = net
        .trace
        .iter()
        .find(|(_, s)| s.to == 1 && !s.payload.is_empty())
        .cloned()
        .unwrap();
    let mut r = forged(&mut net, TcpFlags::ACK | TcpFlags::PSH, 0);
    let (tsval, tsecr) = old.repr.timestamp.unwrap();
    r.timestamp = Some((tsval.wrapping_sub(1000), tsecr));
    net.inject(1, r, old.payload.clone());
    net.run(100 * MS, |_| false);
    assert_eq!(net.sock(1).stats().paws_rejected, 1);
    assert_eq!(net.sock(1).recv_queue(), 0);
    // With a current timestamp the same bytes are taken.
    let mut r = forged(&mut net, TcpFlags::ACK | TcpFlags::PSH, 0);
    r.timestamp = Some((tsval.wrapping_add(100_000), tsecr));
    net.inject(1, r, old.payload.clone());
    net.run(100 * MS, |_| false);
    assert_eq!(net.sock(1).recv_queue(), old.payload.len());
}
