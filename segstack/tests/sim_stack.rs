//! The whole stack on two interfaces over the simulated link: ARP, UDP, TCP
//! bulk transfers under loss, reordering and duplication (seeded), many
//! connections, and the zero-copy claim.

use std::net::SocketAddrV4;

use hicamp::{Config, Memory};
use nicdma::sim::LinkConfig;
use segstack::iface::{IfaceError, SocketHandle};
use segstack::sim::{SimPair, A_IP, B_IP};
use segstack::tcp::State;
use segstack::Payload;

fn mem() -> Memory {
    Memory::new(Config {
        capacity_lines: 1 << 21,
        map_capacity: 1 << 16,
        ..Config::default()
    })
    .unwrap()
}

fn data(n: usize, seed: u64) -> Vec<u8> {
    testkit::Rng::new(seed).bytes(n)
}

const PORT: u16 = 5001;

/// Sends `bytes` from a to b over one connection, as line-aligned payload
/// segments of `chunk` bytes (zero-copy API); returns what b received.
fn bulk(pair: &mut SimPair, bytes: &[u8], chunk: usize, max_ns: u64) -> Vec<u8> {
    let mem = pair.a.memory().clone();
    let lst = pair.b.tcp_listen(PORT).unwrap();
    let now = pair.now();
    let c = pair
        .a
        .tcp_connect(SocketAddrV4::new(B_IP, PORT), now)
        .unwrap();
    let mut srv: Option<SocketHandle> = None;
    let mut queued: Vec<Payload> = bytes
        .chunks(chunk)
        .map(|c| Payload::from_bytes(&mem, c).unwrap())
        .collect();
    queued.reverse();
    let mut got = Vec::with_capacity(bytes.len());
    let mut closed = false;
    let deadline = pair.now() + max_ns;
    loop {
        assert!(
            pair.now() < deadline,
            "transfer stalled at {} of {} bytes",
            got.len(),
            bytes.len()
        );
        // Sender: queue as much as the send buffer takes, before the step
        // (a step that finds the network quiet ends the loop: right after
        // the handshake, with a send buffer that took everything at once,
        // nothing would be in flight yet).
        while let Some(p) = queued.pop() {
            match pair.a.send(c, p.clone()) {
                Ok(n) if n == p.len() => {}
                Ok(n) => {
                    queued.push(p.slice(n, p.len()));
                    break;
                }
                Err(IfaceError::WouldBlock) => {
                    queued.push(p);
                    break;
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        // Close once everything is queued and the connection is up (a close
        // in SYN-SENT drops the connection and what was queued, as Linux
        // does: a send buffer that takes the whole transfer at once gets
        // here before the handshake is over).
        if queued.is_empty() && !closed && pair.a.tcp(c).unwrap().state() != State::SynSent {
            pair.a.close(c).unwrap();
            closed = true;
        }
        if !pair.step().unwrap() {
            break;
        }
        if srv.is_none() {
            srv = pair.b.tcp_accept(lst).unwrap();
        }
        if let Some(s) = srv {
            loop {
                match pair.b.recv(s, usize::MAX) {
                    Ok(chunks) if chunks.is_empty() => {
                        pair.b.close(s).unwrap();
                        pair.b.close(lst).unwrap();
                        // Let the FIN handshake finish.
                        for _ in 0..10_000 {
                            if !pair.step().unwrap() {
                                break;
                            }
                        }
                        return got;
                    }
                    Ok(chunks) => {
                        for p in chunks {
                            got.extend_from_slice(&p.to_vec());
                        }
                    }
                    Err(IfaceError::WouldBlock) => break,
                    Err(e) => panic!("recv: {e}"),
                }
            }
        }
    }
    got
}

/// Both TX forms: inline descriptors (the default) and frame segments.
#[test]
fn lossless_bulk_is_byte_exact_and_copies_no_payload() {
    lossless_bulk(true);
    lossless_bulk(false);
}

fn lossless_bulk(inline: bool) {
    let m = mem();
    let mut pair = SimPair::new(&m, LinkConfig::default(), 1, |c| c.tx_inline = inline).unwrap();
    let bytes = data(8 << 20, 7);
    let got = bulk(&mut pair, &bytes, 64 << 10, 60_000_000_000);
    assert_eq!(got.len(), bytes.len());
    assert!(got == bytes, "received bytes differ");
    let s = pair.a.stats();
    assert!(s.tx_payload_bytes >= bytes.len() as u64, "{s:?}");
    assert_eq!(
        s.tx_payload_copied, 0,
        "the stack copied payload bytes: {s:?}"
    );
    assert_eq!(pair.a.nic().counters().payload_bytes_copied, 0);
    assert_eq!(pair.b.nic().counters().payload_bytes_copied, 0);
    assert_eq!(pair.a.config().tx_inline, inline);
    let c = pair.a.nic().counters();
    assert_eq!(c.tx_inline == c.tx_frames, inline, "{c:?}");
}

/// A TSO frame's payload keeps its offset modulo an interior line's span
/// (1 KiB at 64-byte lines) and ends on such a boundary, so the frame's
/// interior lines over the payload are the payload's own: taken whole by
/// the splice (one reference on each, no intern, no leaf touched), not
/// built anew nor even looked up. The sender has its own memory, so its
/// counts are the frames' (and the ACKs' deposits).
#[test]
fn tso_frames_share_the_payloads_interior_lines() {
    let (ma, mb) = (mem(), mem());
    let (net, pa, pb) = nicdma::sim::SimNet::pair(3, LinkConfig::default()).unwrap();
    let ca = segstack::iface::IfaceConfig::new([2, 0, 0, 0, 0, 1], A_IP, 24);
    let cb = segstack::iface::IfaceConfig::new([2, 0, 0, 0, 0, 2], B_IP, 24);
    assert!(ca.tcp.tso_max >= 32 << 10, "TSO is on by default");
    let a = segstack::iface::Interface::new(&ma, pa, ca).unwrap();
    let b = segstack::iface::Interface::new(&mb, pb, cb).unwrap();
    assert_eq!(a.config().tcp.tso_align, 1024);
    let mut pair = SimPair::from_parts(net, a, b);
    let bytes = data(4 << 20, 11);
    let before = ma.stats();
    // One payload segment: its object is built inside `bulk`, so count
    // the object's own interior lines out (64 Ki leaves: 4096 + 256 + 16 + 1).
    let got = bulk(&mut pair, &bytes, 4 << 20, 60_000_000_000);
    assert!(got == bytes, "received bytes differ");
    let after = ma.stats();
    let s = pair.a.stats();
    assert_eq!(s.tx_payload_copied, 0, "{s:?}");
    let subtrees = (bytes.len() / 1024) as u64;
    let hits = after.interior_dedup_hits - before.interior_dedup_hits;
    let created = after.interior_lines_created - before.interior_lines_created;
    // Interior lines interned (created or found): the object's, a few per
    // TSO frame (the header subtree and the levels above it), one per ACK
    // deposit; far fewer than one per payload subtree: every whole KiB of
    // payload went out under the object's own level-1 line, taken whole.
    let frames = pair.a.nic().counters().tx_frames;
    let acks = pair.a.nic().counters().rx_frames;
    assert!(
        frames * 16 < subtrees,
        "{frames} frames: TSO frames expected"
    );
    assert!(
        created + hits <= 4369 + 8 * frames + acks + 64,
        "{created} interior lines created and {hits} found for {frames} frames, \
         {acks} ACKs and {subtrees} payload subtrees"
    );
}

fn lossy(seed: u64, loss: f64) {
    let m = mem();
    let link = LinkConfig {
        loss,
        duplicate: 0.01,
        reorder: 0.02,
        reorder_ns: 200_000,
        latency_ns: 100_000,
        ..LinkConfig::default()
    };
    let mut pair = SimPair::new(&m, link, seed, |_| {}).unwrap();
    let bytes = data(2 << 20, seed);
    let got = bulk(&mut pair, &bytes, 16 << 10, 600_000_000_000);
    assert_eq!(got.len(), bytes.len(), "seed {seed} loss {loss}");
    assert!(got == bytes, "seed {seed} loss {loss}: bytes differ");
}

#[test]
fn bulk_survives_1_percent_loss_reordering_and_duplication() {
    lossy(11, 0.01);
}

#[test]
fn bulk_survives_5_percent_loss_reordering_and_duplication() {
    lossy(12, 0.05);
}

#[test]
fn bulk_survives_other_seeds() {
    for seed in [21, 22, 23] {
        lossy(seed, 0.03);
    }
}

/// Both TX forms; the first datagrams wait for ARP, and the peer's address
/// is patched into them (a descriptor's inline headers, a frame segment's
/// header line).
#[test]
fn udp_datagrams_round_trip() {
    udp_round_trip(true);
    udp_round_trip(false);
}

fn udp_round_trip(inline: bool) {
    let m = mem();
    let mut pair = SimPair::new(&m, LinkConfig::default(), 3, |c| c.tx_inline = inline).unwrap();
    let ua = pair.a.udp_bind(7000).unwrap();
    let ub = pair.b.udp_bind(7001).unwrap();
    let msgs: Vec<Vec<u8>> = (0..50).map(|i| data(1 + i * 29, i as u64)).collect();
    let now = pair.now();
    for msg in &msgs {
        let p = Payload::from_bytes(&m, msg).unwrap();
        pair.a
            .udp_send(ua, SocketAddrV4::new(B_IP, 7001), &p, now)
            .unwrap();
    }
    for _ in 0..1000 {
        pair.step().unwrap();
    }
    for msg in &msgs {
        let (from, p) = pair.b.udp_recv(ub).unwrap();
        assert_eq!(from, SocketAddrV4::new(A_IP, 7000));
        assert_eq!(&p.to_vec(), msg);
    }
    assert!(matches!(pair.b.udp_recv(ub), Err(IfaceError::WouldBlock)));
    assert!(pair.a.stats().arp_requests >= 1);
}

#[test]
fn connection_to_a_closed_port_is_reset() {
    let m = mem();
    let mut pair = SimPair::new(&m, LinkConfig::default(), 4, |_| {}).unwrap();
    let now = pair.now();
    let c = pair.a.tcp_connect(SocketAddrV4::new(B_IP, 9), now).unwrap();
    let mut closed = false;
    for _ in 0..1000 {
        pair.step().unwrap();
        if pair.a.tcp(c).unwrap().is_closed() {
            closed = true;
            break;
        }
    }
    assert!(closed, "state {:?}", pair.a.tcp(c).unwrap().state());
    assert!(pair.b.stats().rx_no_socket >= 1);
}

#[test]
fn hundred_concurrent_connections_echo() {
    let m = mem();
    let mut pair = SimPair::new(&m, LinkConfig::default(), 5, |_| {}).unwrap();
    let lst = pair.b.tcp_listen(80).unwrap();
    let now = pair.now();
    let clients: Vec<SocketHandle> = (0..120)
        .map(|_| {
            pair.a
                .tcp_connect(SocketAddrV4::new(B_IP, 80), now)
                .unwrap()
        })
        .collect();
    let msg = |i: usize| data(100 + i * 37, i as u64 + 100);
    let mut sent = vec![false; clients.len()];
    let mut servers = Vec::new();
    let mut echoed = vec![Vec::new(); clients.len()];
    for _ in 0..200_000 {
        pair.step().unwrap();
        while let Some(s) = pair.b.tcp_accept(lst).unwrap() {
            servers.push(s);
        }
        for &s in &servers {
            // Echo whatever arrived, as the same payload snapshots.
            if let Ok(chunks) = pair.b.recv(s, usize::MAX) {
                for p in chunks {
                    pair.b.send(s, p).unwrap();
                }
            }
        }
        for (i, &c) in clients.iter().enumerate() {
            if !sent[i] && pair.a.tcp(c).unwrap().can_send() {
                let n = pair.a.send_slice(c, &msg(i)).unwrap();
                assert_eq!(n, msg(i).len());
                sent[i] = true;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = pair.a.recv_slice(c, &mut buf) {
                if n == 0 {
                    break;
                }
                echoed[i].extend_from_slice(&buf[..n]);
            }
        }
        if (0..clients.len()).all(|i| echoed[i].len() == msg(i).len()) {
            break;
        }
    }
    assert_eq!(servers.len(), clients.len());
    for (i, e) in echoed.iter().enumerate() {
        assert_eq!(e, &msg(i), "connection {i}");
    }
}

/// A poll works on the sockets that changed since the last one (and those
/// it reported), not on every socket; what it reports must not change.
/// Among 40 idle connections, an unread one is reported readable at every
/// poll until the application reads it, and the TIME-WAIT timer of a
/// closed one still frees it although nothing else touches it.
#[test]
fn idle_sockets_keep_their_events_and_timers() {
    let m = mem();
    let mut pair = SimPair::new(&m, LinkConfig::default(), 9, |_| {}).unwrap();
    let lst = pair.b.tcp_listen(80).unwrap();
    let now = pair.now();
    let clients: Vec<SocketHandle> = (0..40)
        .map(|_| {
            pair.a
                .tcp_connect(SocketAddrV4::new(B_IP, 80), now)
                .unwrap()
        })
        .collect();
    let mut servers = Vec::new();
    for _ in 0..10_000 {
        pair.step().unwrap();
        while let Some(s) = pair.b.tcp_accept(lst).unwrap() {
            servers.push(s);
        }
        let up = |c: &SocketHandle| pair.a.tcp(*c).unwrap().state() == State::Established;
        if servers.len() == clients.len() && clients.iter().all(up) {
            break;
        }
    }
    assert_eq!(servers.len(), clients.len());
    let peer_of = |pair: &SimPair, c: SocketHandle| {
        let local = pair.a.tcp(c).unwrap().local();
        *servers
            .iter()
            .find(|&&s| pair.b.tcp(s).unwrap().remote() == local)
            .unwrap()
    };
    // A message to one server socket, left unread: readable at every poll.
    let (c7, s7) = (clients[7], peer_of(&pair, clients[7]));
    assert_eq!(pair.a.send_slice(c7, b"hello").unwrap(), 5);
    for _ in 0..50 {
        pair.step().unwrap();
    }
    for _ in 0..5 {
        let now = pair.now();
        let ev = pair.b.poll(now).unwrap().to_vec();
        let readable: Vec<SocketHandle> =
            ev.iter().filter(|e| e.readable).map(|e| e.handle).collect();
        assert_eq!(readable, vec![s7], "{ev:?}");
    }
    let mut buf = [0u8; 16];
    assert_eq!(pair.b.recv_slice(s7, &mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
    let now = pair.now();
    assert!(pair.b.poll(now).unwrap().iter().all(|e| !e.readable));
    // The client side of another connection closes first (TIME-WAIT); the
    // server closes on EOF. Both slots are freed by their own timers and
    // ACKs, with the other 38 connections idle throughout.
    let (c3, s3) = (clients[3], peer_of(&pair, clients[3]));
    pair.a.close(c3).unwrap();
    let mut server_closed = false;
    let mut freed = false;
    for _ in 0..100_000 {
        let busy = pair.step().unwrap();
        if !server_closed && matches!(pair.b.recv_slice(s3, &mut buf), Ok(0)) {
            pair.b.close(s3).unwrap();
            server_closed = true;
        }
        if server_closed
            && matches!(pair.a.tcp(c3), Err(IfaceError::BadHandle))
            && matches!(pair.b.tcp(s3), Err(IfaceError::BadHandle))
        {
            freed = true;
            break;
        }
        if !busy {
            break;
        }
    }
    assert!(server_closed, "no EOF at the server");
    assert!(
        freed,
        "client {:?}, server {:?}",
        pair.a.tcp(c3).map(|t| t.state()),
        pair.b.tcp(s3).map(|t| t.state())
    );
    for (&c, _) in clients.iter().zip(0..).filter(|(_, i)| *i != 3) {
        assert_eq!(pair.a.tcp(c).unwrap().state(), State::Established);
    }
}

/// A poll that ingests a long run of received frames acknowledges them
/// while it goes on, not once at its end (the bulk sender would otherwise
/// wait, idle, for the whole run to be deposited): with 2-frame device
/// passes, the poll in which the receiver takes in at least 512 KiB sends
/// more than one frame.
#[test]
fn a_long_receive_is_acknowledged_during_the_poll() {
    let m = mem();
    let mut pair = SimPair::new(&m, LinkConfig::default(), 5, |c| {
        c.nic.rx_batch = 2;
        c.tcp.recv_buf = 8 << 20;
    })
    .unwrap();
    let lst = pair.b.tcp_listen(PORT).unwrap();
    let now = pair.now();
    let c = pair
        .a
        .tcp_connect(SocketAddrV4::new(B_IP, PORT), now)
        .unwrap();
    let bytes = data(16 << 20, 9);
    let mut left = Payload::from_bytes(&m, &bytes).unwrap();
    let mut srv = None;
    let mut chunks = Vec::new();
    let mut best = (0u64, 0u64);
    for _ in 0..100_000 {
        let now = pair.now();
        if !left.is_empty() {
            match pair.a.send_some(c, &mut left) {
                Ok(_) | Err(IfaceError::WouldBlock) => {}
                Err(e) => panic!("send: {e}"),
            }
        }
        pair.a.poll(now).unwrap();
        let rx0 = pair.b.stats().rx_payload_bytes;
        let tx0 = pair.b.stats().tx_frames;
        pair.b.poll(now).unwrap();
        let (rx, tx) = (
            pair.b.stats().rx_payload_bytes - rx0,
            pair.b.stats().tx_frames - tx0,
        );
        if rx > best.0 {
            best = (rx, tx);
        }
        if rx >= 512 << 10 {
            assert!(
                tx >= 2,
                "a poll took in {rx} bytes and sent {tx} frames (one ACK at its end)"
            );
            return;
        }
        if srv.is_none() {
            srv = pair.b.tcp_accept(lst).unwrap();
        }
        // The receiver reads only now and then, so that its window lets
        // runs of frames pile up on the link.
        if let Some(h) = srv {
            if pair.b.tcp(h).unwrap().recv_queue() > 4 << 20 {
                chunks.clear();
                let _ = pair.b.recv_into(h, usize::MAX, &mut chunks);
            }
        }
        let next = [pair.net.next_due(), pair.a.poll_at(), pair.b.poll_at()]
            .into_iter()
            .flatten()
            .min();
        if let Some(t) = next {
            let t = t.max(now + 1_000);
            pair.net.clock().advance(t - now);
        }
    }
    panic!("no poll took in 512 KiB (the largest: {best:?})");
}
