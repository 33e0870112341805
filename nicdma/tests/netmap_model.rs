//! The netmap port's ring protocol against the in-process model of
//! netmap's kernel side (`nicdma::netmap::model`): a thread that owns the
//! region during each sync, takes TX `[hwcur, head)`, swaps buffers from TX
//! slots into free RX slots as a netmap pipe does (NS_BUF_CHANGED), and
//! advances `tail` by random amounts.
//!
//! The property, over random ring sizes, spare counts, buffer sizes and
//! schedules (`testkit::Rng`): every frame sent (gathered copies and
//! zero-copy swaps of kept buffers alike) arrives exactly once, in order,
//! byte-exact; kept buffers keep their bytes until released; the kernel
//! sees no protocol violation and no buffer index in two places; at the
//! end every buffer is accounted for exactly once. And a `Nic` on a model
//! port moves segments through the rings with one counted copy each way.

use nicdma::netmap::model::{loopback, ModelConfig};
use nicdma::netmap::Kept;
use nicdma::{Port, PortError, TxOutcome, VirtioNetHdr};
use testkit::Rng;

fn frame(rng: &mut Rng, seq: u64, max: usize) -> Vec<u8> {
    let len = if rng.one_in(4) {
        max
    } else {
        8 + rng.index(max - 8 + 1)
    };
    let mut f = rng.bytes(len);
    f[..8].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Splits `f` into 1..=4 chunks at random points (as a segment's lines are
/// gathered).
fn chunks<'a>(rng: &mut Rng, f: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = f;
    for _ in 0..rng.below(4) {
        let at = rng.index(rest.len() + 1);
        let (a, b) = rest.split_at(at);
        out.push(a);
        rest = b;
    }
    out.push(rest);
    out
}

fn run(seed: u64) -> Coverage {
    let mut rng = Rng::new(seed);
    let cfg = ModelConfig {
        slots: 2 + rng.below(40) as u32,
        extra_bufs: rng.below(12) as u32,
        buf_size: [64, 256, 2048][rng.index(3)],
        seed: rng.next_u64(),
        fragments: true,
    };
    let (mut port, model) = loopback(cfg).expect("model port");
    let max = port.max_frame();
    assert_eq!(max, cfg.buf_size as usize);
    let total = 150 + rng.index(150);
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut kept: Vec<(Kept, Vec<u8>)> = Vec::new();
    let mut seq = 0u64;
    let mut pending: Option<Vec<u8>> = None;
    let ctx = format!("seed {seed}, {cfg:?}");
    let (mut zc_bytes, mut zc_frames, mut full, mut no_spare) = (0u64, 0u64, 0u64, 0u64);
    let mut chunked = 0usize;

    for _ in 0..50_000 {
        if seq as usize >= total && pending.is_none() && got.len() == sent.len() {
            break;
        }
        let draining = seq as usize >= total;
        match rng.below(10) {
            0..=2 if !draining => {
                let f = pending.take().unwrap_or_else(|| frame(&mut rng, seq, max));
                let parts = chunks(&mut rng, &f);
                match port
                    .transmit(&VirtioNetHdr::default(), &parts)
                    .expect("transmit")
                {
                    TxOutcome::Sent => {
                        sent.push(f);
                        seq += 1;
                    }
                    TxOutcome::Full => {
                        full += 1;
                        pending = Some(f);
                    }
                }
            }
            3 => port.flush().expect("flush"),
            4 | 5 => {
                let mut one = None;
                if rng.one_in(2) {
                    port.receive(&mut |_, f| one = Some(f.to_vec()))
                        .expect("receive");
                } else {
                    port.receive_chunks(&mut |_, c| {
                        chunked = chunked.max(c.len());
                        one = Some(c.concat());
                    })
                    .expect("receive_chunks");
                }
                got.extend(one);
            }
            6 => match port.receive_keep() {
                Ok(Some(k)) => {
                    let b = port.kept_bytes(&k).expect("kept bytes").to_vec();
                    got.push(b.clone());
                    kept.push((k, b));
                }
                Ok(None) => {}
                Err(PortError::Os { op, source }) if op.contains("keep") => {
                    if source.kind() == std::io::ErrorKind::Unsupported {
                        // A packet of several slots: take it as chunks.
                        assert!(port
                            .receive_chunks(&mut |_, c| got.push(c.concat()))
                            .expect("receive_chunks"));
                    } else {
                        assert_eq!(
                            port.spares(),
                            0,
                            "{ctx}: no spare, yet the list is not empty"
                        );
                        no_spare += 1;
                    }
                }
                Err(e) => panic!("{ctx}: {e}"),
            },
            7 if !kept.is_empty() => {
                let (k, b) = kept.swap_remove(rng.index(kept.len()));
                assert_eq!(
                    port.kept_bytes(&k).unwrap(),
                    &b[..],
                    "{ctx}: a kept buffer changed"
                );
                port.release(k).expect("release");
            }
            8 if !kept.is_empty() && !draining => {
                let (k, b) = kept.swap_remove(rng.index(kept.len()));
                assert_eq!(
                    port.kept_bytes(&k).unwrap(),
                    &b[..],
                    "{ctx}: a kept buffer changed"
                );
                match port.transmit_kept(k).expect("transmit_kept") {
                    None => {
                        zc_bytes += b.len() as u64;
                        zc_frames += 1;
                        sent.push(b);
                    }
                    Some(k) => kept.push((k, b)),
                }
            }
            9 => port.rxsync().expect("rxsync"),
            _ => {
                // Draining: push everything out and take everything in.
                port.flush().expect("flush");
                // Bounded: a port that never advances must fail, not eat
                // memory.
                for _ in 0..=2 * cfg.slots {
                    if !port
                        .receive(&mut |_, f| got.push(f.to_vec()))
                        .expect("receive")
                    {
                        break;
                    }
                }
            }
        }
    }
    assert_eq!(seq as usize, total, "{ctx}: not all frames were sent");
    assert_eq!(got.len(), sent.len(), "{ctx}: frames lost or duplicated");
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        assert!(
            g == s,
            "{ctx}: frame {i} differs (len {} vs {})",
            g.len(),
            s.len()
        );
    }
    for (k, b) in kept.drain(..) {
        assert_eq!(
            port.kept_bytes(&k).unwrap(),
            &b[..],
            "{ctx}: a kept buffer changed"
        );
        port.release(k).unwrap();
    }
    let v = model.violations();
    assert!(v.is_empty(), "{ctx}: {v:?}");
    model.request_audit();
    port.rxsync().unwrap();
    assert_eq!(model.audit(), Some(Ok(())), "{ctx}");
    let c = port.copies();
    let s = port.swaps();
    assert_eq!(c.tx_frames as usize, sent.len(), "{ctx}");
    assert_eq!(c.rx_frames as usize, got.len(), "{ctx}");
    let all: u64 = sent.iter().map(|f| f.len() as u64).sum();
    assert_eq!(
        c.tx_gather_bytes + zc_bytes,
        all,
        "{ctx}: gathers and swaps add up"
    );
    assert_eq!(s.tx_swapped, zc_frames, "{ctx}");
    assert!(model.moved() as usize >= sent.len(), "{ctx}");
    Coverage {
        kept: s.rx_kept,
        swapped: s.tx_swapped,
        full,
        no_spare,
        fragmented: u64::from(chunked > 1),
    }
}

#[derive(Debug, Default)]
struct Coverage {
    kept: u64,
    swapped: u64,
    full: u64,
    no_spare: u64,
    fragmented: u64,
}

#[test]
fn every_frame_arrives_once_in_order_byte_exact_under_random_schedules() {
    let mut all = Coverage::default();
    for seed in 0..60 {
        let c = run(seed);
        all.kept += c.kept;
        all.swapped += c.swapped;
        all.full += c.full;
        all.no_spare += c.no_spare;
        all.fragmented += c.fragmented;
    }
    // The schedules reached every path: keeps, zero-copy sends, a full TX
    // ring, an empty spare list, packets of two slots lent as chunks.
    assert!(
        all.kept > 0 && all.swapped > 0 && all.full > 0 && all.no_spare > 0 && all.fragmented > 0,
        "{all:?}"
    );
}

#[test]
fn a_one_slot_ring_pair_still_moves_frames() {
    // Two slots: one is always empty, so one frame at a time in flight.
    let (mut port, model) = loopback(ModelConfig {
        slots: 2,
        extra_bufs: 0,
        buf_size: 128,
        seed: 7,
        fragments: true,
    })
    .unwrap();
    for i in 0..20u8 {
        let f = vec![i; 100];
        let mut tries = 0;
        while port.transmit(&VirtioNetHdr::default(), &[&f]).unwrap() == TxOutcome::Full {
            port.flush().unwrap();
            tries += 1;
            assert!(tries < 1000, "TX never drains");
        }
        port.flush().unwrap();
        let mut got = None;
        let mut tries = 0;
        while got.is_none() {
            port.receive(&mut |_, b| got = Some(b.to_vec())).unwrap();
            tries += 1;
            assert!(tries < 1000, "frame {i} never arrives");
        }
        assert_eq!(got.unwrap(), f);
    }
    assert!(matches!(
        port.receive_keep(),
        Ok(None) | Err(PortError::Os { .. })
    ));
    assert!(model.violations().is_empty());
}

#[test]
fn a_nic_on_the_model_port_moves_segments_through_the_rings() {
    use nicdma::{frame_bytes, tx_segment, Nic, NicConfig};
    let mem = hicamp::Memory::new(hicamp::Config {
        capacity_lines: 1 << 16,
        map_capacity: 1024,
        ..hicamp::Config::default()
    })
    .unwrap();
    let (port, model) = loopback(ModelConfig {
        slots: 16,
        extra_bufs: 4,
        buf_size: 2048,
        seed: 3,
        fragments: true,
    })
    .unwrap();
    let mut nic = Nic::new(&mem, port, NicConfig::default()).unwrap();
    let mut rng = Rng::new(99);
    let frames: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
            f.push(i as u8);
            let n = 50 + rng.index(1400);
            f.extend(rng.bytes(n));
            f
        })
        .collect();
    nic.rx_refill().unwrap();
    let mut next = 0;
    let mut rx = Vec::new();
    for _ in 0..10_000 {
        if rx.len() == frames.len() {
            break;
        }
        while next < frames.len() {
            let seg = tx_segment(&mem, nicdma::VirtioNetHdr::default(), 64, &frames[next]).unwrap();
            if !nic.tx_prepare(&seg).unwrap() {
                break;
            }
            next += 1;
        }
        nic.tx_doorbell().unwrap();
        nic.dma().unwrap();
        nic.tx_reap().unwrap();
        nic.rx_harvest(&mut rx, 64).unwrap();
        nic.rx_refill().unwrap();
    }
    assert_eq!(rx.len(), frames.len());
    for (seg, f) in rx.iter().zip(&frames) {
        let (_, got) = frame_bytes(seg).expect("a well-formed RX segment");
        assert_eq!(&got, f);
    }
    let c = nic.port().copies();
    let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
    // One gather into the TX buffers, one copy out of the RX buffers into
    // lines, per frame: counted apart from the stack's copies.
    assert_eq!((c.tx_frames, c.rx_frames), (40, 40));
    assert_eq!((c.tx_gather_bytes, c.rx_copy_bytes), (bytes, bytes));
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}
