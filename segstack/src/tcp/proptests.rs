//! Property tests: random application schedules against a model (every
//! byte accepted by `send` arrives once, in order, then EOF), and hostile
//! segments that must never panic.

use proptest::prelude::*;

use super::testnet::{rng, Link, Net, Rng, MS};
use super::*;
use crate::wire::{TcpFlags, TcpRepr};
use crate::Payload;

#[derive(Debug, Clone)]
enum Op {
    /// Send `len` bytes from `side` through the payload (or byte) API.
    Send {
        side: usize,
        len: usize,
        bytes: bool,
    },
    /// Read up to `max` bytes at `side`.
    Recv { side: usize, max: usize },
    /// Let virtual time pass.
    Wait { ms: u64 },
    /// Half-close `side`.
    Close { side: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 1..30_000usize, any::<bool>())
            .prop_map(|(side, len, bytes)| Op::Send { side, len, bytes }),
        3 => (0..2usize, 1..40_000usize).prop_map(|(side, max)| Op::Recv { side, max }),
        3 => (0..300u64).prop_map(|ms| Op::Wait { ms }),
        1 => (0..2usize).prop_map(|side| Op::Close { side }),
    ]
}

/// The model of one direction: what `send` accepted, what `recv` returned.
#[derive(Debug, Default)]
struct Dir {
    sent: Vec<u8>,
    got: Vec<u8>,
    closed: bool,
    eof: bool,
}

fn read(net: &mut Net, side: usize, max: usize, d: &mut Dir) {
    match net.sock(side).recv(max) {
        Ok(chunks) => {
            let n: usize = chunks.iter().map(Payload::len).sum();
            assert!(n > 0 && n <= max);
            for c in chunks {
                d.got.extend(c.to_vec());
            }
            assert!(d.got.len() <= d.sent.len(), "more received than sent");
            assert_eq!(d.got[..], d.sent[..d.got.len()], "received bytes differ");
        }
        Err(TcpError::WouldBlock) => assert!(!d.eof),
        Err(TcpError::Finished) => {
            assert!(d.closed, "EOF before the peer closed");
            assert_eq!(d.got.len(), d.sent.len(), "EOF before all data");
            d.eof = true;
        }
        Err(e) => panic!("recv: {e}"),
    }
}

fn schedule(ops: Vec<Op>, seed: u64, loss: u32, delay_ms: u64) {
    let cfg = TcpConfig {
        send_buf: 64 * 1024,
        recv_buf: 48 * 1024,
        // Longer than any retransmission backoff a few losses cause.
        time_wait_ns: 60_000 * MS,
        ..TcpConfig::default()
    };
    let link = Link {
        delay: delay_ms * MS + 1,
        jitter: 2 * delay_ms * MS + 1,
        loss,
        dup: loss / 2,
        reorder: 3 * loss,
    };
    let mut net = Net::new(cfg.clone(), cfg, link, seed);
    net.establish();
    let mut rng = rng(seed ^ 0xabcd);
    let mem = net.mem.clone();
    // dirs[i]: data sent by side i.
    let mut dirs = [Dir::default(), Dir::default()];
    for op in ops {
        match op {
            Op::Send { side, len, bytes } => {
                let data = rng.bytes(len);
                let r = if bytes {
                    net.sock(side).send_slice(&mem, &data)
                } else {
                    let p = Payload::from_bytes(&mem, &data).unwrap();
                    net.sock(side).send(p)
                };
                match r {
                    Ok(n) => {
                        assert!(!dirs[side].closed);
                        assert!(n > 0 && n <= len);
                        dirs[side].sent.extend_from_slice(&data[..n]);
                    }
                    Err(TcpError::WouldBlock) => {
                        assert!(!dirs[side].closed);
                        assert!(net.sock(side).send_queue() > 0);
                    }
                    Err(TcpError::Closed) => assert!(dirs[side].closed),
                    Err(e) => panic!("send: {e}"),
                }
                assert!(net.sock(side).send_queue() <= 64 * 1024);
            }
            Op::Recv { side, max } => {
                let (a, b) = dirs.split_at_mut(1);
                let d = if side == 0 { &mut b[0] } else { &mut a[0] };
                read(&mut net, side, max, d);
            }
            Op::Wait { ms } => {
                net.run(ms * MS, |_| false);
            }
            Op::Close { side } => {
                net.sock(side).close();
                dirs[side].closed = true;
            }
        }
        net.step(net.now);
    }
    // Drain: both close, both read everything, both end up closed.
    for (side, d) in dirs.iter_mut().enumerate() {
        net.sock(side).close();
        d.closed = true;
    }
    let ok = net.run(3_600_000 * MS, |n| {
        for side in 0..2 {
            let (a, b) = dirs.split_at_mut(1);
            let d = if side == 0 { &mut b[0] } else { &mut a[0] };
            while !d.eof && n.sock(side).can_recv() {
                read(n, side, 1 << 20, d);
            }
            if !d.eof {
                read(n, side, 1 << 20, d);
            }
        }
        dirs.iter().all(|d| d.eof) && n.socks.iter().flatten().all(TcpSocket::is_closed)
    });
    assert!(ok, "did not finish: {:?}", net.socks);
    for (i, d) in dirs.iter().enumerate() {
        assert_eq!(d.got, d.sent, "direction {i}");
        assert_eq!(net.sock(i).error(), None);
    }
}

/// A legitimate segment, mangled: flags flipped, numbers moved near or far.
fn mangle(rng: &mut Rng, r: &TcpRepr) -> TcpRepr {
    let mut m = *r;
    let delta = |rng: &mut Rng| -> u32 {
        match rng.below(4) {
            0 => 0,
            1 => rng.below(3000) as u32,
            2 => (rng.below(3000) as u32).wrapping_neg(),
            _ => rng.next_u64() as u32,
        }
    };
    m.seq = m.seq.wrapping_add(delta(rng));
    m.ack = m.ack.wrapping_add(delta(rng));
    m.flags = TcpFlags(m.flags.0 ^ (rng.below(64) as u8));
    if rng.chance(300) {
        m.window = rng.next_u64() as u16;
    }
    if rng.chance(200) {
        m.mss = Some(rng.next_u64() as u16);
        m.wscale = Some(rng.below(256) as u8);
    }
    if rng.chance(200) {
        m.timestamp = Some((rng.next_u64() as u32, rng.next_u64() as u32));
    }
    m
}

proptest! {
    // PROPTEST_CASES overrides the count (e.g. 2000 for a long run).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_schedules_deliver_exactly_once(
        ops in prop::collection::vec(op(), 1..50),
        seed in any::<u64>(),
        loss in prop_oneof![Just(0u32), 0..60u32],
        delay_ms in 0..20u64,
    ) {
        schedule(ops, seed, loss, delay_ms);
    }

    #[test]
    fn hostile_segments_never_panic(seed in any::<u64>(), rate in 1..500u32) {
        let cfg = TcpConfig { time_wait_ns: 500 * MS, max_retries: 4, ..TcpConfig::default() };
        let mut net = Net::new(cfg.clone(), cfg, Link::lossy(MS, 20), seed);
        net.connect();
        let mut rng2 = rng(seed ^ 1);
        let data = rng2.bytes(100_000);
        let src = net.payload(&data);
        let mut sent = 0;
        let mut k = 0u32;
        net.run(30_000 * MS, |n| {
            k += 1;
            if let Some(s) = n.socks[0].as_mut() {
                if sent < data.len() {
                    if let Ok(m) = s.send(src.slice(sent, data.len())) {
                        sent += m;
                    }
                } else {
                    s.close();
                }
            }
            if let Some(s) = n.socks[1].as_mut() {
                let _ = s.recv(usize::MAX);
                if k > 200 {
                    s.close();
                }
            }
            // Inject mangled copies of live traffic at both ends.
            for to in 0..2 {
                if n.socks[to].is_some() && rng2.chance(rate) {
                    let base = n.trace_last(to);
                    if let Some(b) = base {
                        let m = mangle(&mut rng2, &b.repr);
                        let len = rng2.below(3000) as usize;
                        let p = n.payload(&rng2.bytes(len));
                        n.inject(to, m, p);
                    }
                }
            }
            n.socks.iter().flatten().all(TcpSocket::is_closed) && n.socks.iter().flatten().count() == 2
        });
    }
}

/// Found by the property test: after a timeout rewound SND.NXT on both
/// sides, pure ACKs carried SND.NXT, below the peer's RCV.NXT, and were
/// rejected as out of window on both sides forever.
#[test]
fn regression_acks_after_rewind() {
    let ops = vec![
        Op::Send {
            side: 1,
            len: 26753,
            bytes: false,
        },
        Op::Wait { ms: 101 },
        Op::Send {
            side: 1,
            len: 8448,
            bytes: false,
        },
        Op::Send {
            side: 1,
            len: 15488,
            bytes: false,
        },
        Op::Send {
            side: 1,
            len: 7041,
            bytes: false,
        },
        Op::Recv { side: 1, max: 1 },
        Op::Send {
            side: 0,
            len: 12737,
            bytes: false,
        },
        Op::Send {
            side: 0,
            len: 16768,
            bytes: false,
        },
        Op::Send {
            side: 0,
            len: 1,
            bytes: false,
        },
    ];
    schedule(ops, 11585181528827580635, 54, 8);
}

/// Found by the property test: a lost SYN-ACK made the server echo the
/// first SYN's timestamp, and the client's first RTT sample was 1 s.
#[test]
fn regression_retransmitted_syn_timestamp() {
    let ops = vec![
        Op::Send {
            side: 0,
            len: 1,
            bytes: false,
        },
        Op::Wait { ms: 47 },
        Op::Send {
            side: 1,
            len: 9856,
            bytes: false,
        },
        Op::Close { side: 1 },
        Op::Send {
            side: 0,
            len: 23233,
            bytes: false,
        },
        Op::Send {
            side: 0,
            len: 17683,
            bytes: false,
        },
        Op::Send {
            side: 0,
            len: 17255,
            bytes: true,
        },
    ];
    schedule(ops, 10611901236556027143, 42, 6);
}
