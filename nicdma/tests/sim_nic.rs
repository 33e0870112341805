//! Two (or more) NICs on the sim backend: batches of segment frames
//! exchanged byte-exactly under every fault knob, deterministic traces, the
//! counters, back-pressure and notifications.

use hicamp::{Config, Memory, Segment};
use nicdma::sim::{LinkConfig, SimNet, SimPort};
use nicdma::{frame_bytes, tx_segment, Nic, NicConfig, VirtioNetHdr};
use testkit::Rng;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

fn mem() -> Memory {
    Memory::new(Config {
        capacity_lines: 1 << 18,
        map_capacity: 4096,
        ..Config::default()
    })
    .unwrap()
}

/// An Ethernet frame from A to B carrying `seq`: 60..1514 bytes, partly
/// repetitive (so RX lines deduplicate), partly unique.
fn frame(seq: u32, rng: &mut Rng) -> Vec<u8> {
    let x = rng.next_u64();
    let len = 60 + (x % 1455) as usize;
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        let i = f.len();
        f.push(if (i / 64) % 2 == 0 {
            b'x'
        } else {
            (x >> (i % 56)) as u8 ^ i as u8
        });
    }
    f
}

struct Pair {
    net: SimNet,
    a: Nic<SimPort>,
    b: Nic<SimPort>,
    mem: Memory,
}

fn pair(seed: u64, link: LinkConfig, cfg: NicConfig) -> Pair {
    let (net, pa, pb) = SimNet::pair(seed, link).unwrap();
    let mem = mem();
    let a = Nic::new(&mem, pa, cfg).unwrap();
    let b = Nic::new(&mem, pb, cfg).unwrap();
    Pair { net, a, b, mem }
}

/// Sends `frames` from A in batches of `batch` (prepare, one doorbell, DMA),
/// moving the clock; B refills, runs its DMA and harvests. Returns the frames
/// B received, in order.
fn exchange(p: &mut Pair, frames: &[Vec<u8>], batch: usize) -> Vec<Vec<u8>> {
    let segs: Vec<Segment> = frames
        .iter()
        .map(|f| tx_segment(&p.mem, VirtioNetHdr::default(), 64, f).unwrap())
        .collect();
    let mut got = Vec::new();
    let mut out = Vec::new();
    let mut next = 0;
    let mut idle = 0;
    while idle < 50 {
        // Prepare up to one batch, then ring one doorbell.
        let mut progress = false;
        for _ in 0..batch {
            if next == segs.len() || !p.a.tx_prepare(&segs[next]).unwrap() {
                break;
            }
            next += 1;
            progress = true;
        }
        p.a.tx_doorbell().unwrap();
        p.a.dma().unwrap();
        p.a.tx_reap().unwrap();
        p.a.ack();
        p.net.clock().advance(50_000);
        p.b.rx_refill().unwrap();
        let w = p.b.dma().unwrap();
        out.clear();
        p.b.rx_harvest(&mut out, u32::MAX).unwrap();
        p.b.ack();
        for s in &out {
            got.push(frame_bytes(s).expect("a well-formed RX segment").1);
        }
        if progress || w.rx > 0 || w.tx > 0 {
            idle = 0;
        } else {
            idle += 1;
        }
    }
    got
}

fn frames(n: u32, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| frame(i, &mut rng)).collect()
}

fn hamming(a: &[u8], b: &[u8]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

#[test]
fn batches_arrive_byte_exact_and_in_order() {
    let cfg = NicConfig {
        rx_dedup_counts: true,
        ..NicConfig::default()
    };
    let mut p = pair(1, LinkConfig::default(), cfg);
    let sent = frames(1000, 7);
    let got = exchange(&mut p, &sent, 32);
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "byte-exact, in order");
    let ca = *p.a.counters();
    let cb = *p.b.counters();
    assert_eq!(ca.tx_frames, 1000);
    assert_eq!(cb.rx_frames, 1000);
    assert_eq!(
        ca.tx_bytes,
        sent.iter().map(|f| f.len() as u64).sum::<u64>()
    );
    assert_eq!(cb.rx_bytes, ca.tx_bytes);
    assert!(
        ca.doorbells <= 1000 / 32 + 2,
        "one doorbell per batch: {}",
        ca.doorbells
    );
    assert!(ca.tx_lines_read >= 1000 * 2);
    assert!(
        cb.rx_lines_dedup > 0,
        "repeated frame lines deduplicate on receive"
    );
    assert_eq!(ca.payload_bytes_copied + cb.payload_bytes_copied, 0);
    // Every ring segment was recycled: only the frames' own segments (dropped
    // by now) held lines.
    assert_eq!(p.a.tx_ring().nic_owned(), 0);
}

#[test]
fn loss_drops_whole_frames_only() {
    let link = LinkConfig {
        loss: 0.05,
        ..LinkConfig::default()
    };
    let mut p = pair(2, link, NicConfig::default());
    let sent = frames(2000, 8);
    let got = exchange(&mut p, &sent, 64);
    let lost = p.net.counters(1).lost;
    assert!(lost > 40 && lost < 200, "about 5% lost: {lost}");
    assert_eq!(got.len() as u64, 2000 - lost);
    // What arrives is an in-order subsequence of what was sent.
    let mut it = sent.iter();
    for g in &got {
        assert!(
            it.any(|s| s == g),
            "a received frame is a sent frame, in order"
        );
    }
}

#[test]
fn duplicates_and_reordering_keep_every_byte() {
    let link = LinkConfig {
        duplicate: 0.03,
        reorder: 0.05,
        reorder_ns: 200_000,
        ..LinkConfig::default()
    };
    let mut p = pair(3, link, NicConfig::default());
    let sent = frames(2000, 9);
    let got = exchange(&mut p, &sent, 16);
    let c = p.net.counters(1);
    assert!(c.duplicated > 20 && c.reordered > 40, "{c:?}");
    assert_eq!(got.len() as u64, 2000 + c.duplicated);
    // Every frame arrived, once or twice, with no byte changed.
    let mut count = std::collections::HashMap::new();
    for g in &got {
        *count.entry(g.clone()).or_insert(0) += 1;
    }
    for s in &sent {
        let n = count.get(s).copied().unwrap_or(0);
        assert!(
            n == 1 || n == 2,
            "each sent frame arrives once or twice, got {n}"
        );
    }
    assert_eq!(count.len(), sent.len(), "nothing that was not sent");
    let mut firsts = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for g in &got {
        if seen.insert(g.clone()) {
            firsts.push(g.clone());
        }
    }
    assert_ne!(firsts, sent, "some arrived out of order");
}

#[test]
fn corruption_flips_single_bits_and_nothing_else() {
    let link = LinkConfig {
        corrupt: 0.05,
        ..LinkConfig::default()
    };
    let mut p = pair(4, link, NicConfig::default());
    let sent = frames(2000, 10);
    let got = exchange(&mut p, &sent, 32);
    assert_eq!(got.len(), sent.len());
    let flipped: Vec<u32> = got.iter().zip(&sent).map(|(g, s)| hamming(g, s)).collect();
    assert!(flipped.iter().all(|d| *d <= 1));
    let n = flipped.iter().filter(|d| **d == 1).count() as u64;
    assert_eq!(n, p.net.counters(1).corrupted);
    assert!(n > 40);
}

#[test]
fn latency_and_rate_delay_delivery() {
    // 10 Mbit/s and 1 ms: a 1000-byte frame takes 800 us on the wire.
    let link = LinkConfig {
        latency_ns: 1_000_000,
        rate_bps: 10_000_000,
        ..LinkConfig::default()
    };
    let mut p = pair(5, link, NicConfig::default());
    let f = vec![0x55u8; 1000];
    for _ in 0..3 {
        let s = tx_segment(&p.mem, VirtioNetHdr::default(), 64, &f).unwrap();
        assert!(p.a.tx_prepare(&s).unwrap());
    }
    p.a.tx_doorbell().unwrap();
    p.a.dma().unwrap();
    p.b.rx_refill().unwrap();
    let mut out = Vec::new();
    p.net.clock().advance(1_799_999);
    p.b.dma().unwrap();
    assert_eq!(
        p.b.rx_harvest(&mut out, 10).unwrap(),
        0,
        "not before 800 us + 1 ms"
    );
    p.net.clock().advance(1);
    p.b.dma().unwrap();
    assert_eq!(p.b.rx_harvest(&mut out, 10).unwrap(), 1);
    p.net.clock().advance(1_600_000);
    p.b.dma().unwrap();
    assert_eq!(
        p.b.rx_harvest(&mut out, 10).unwrap(),
        2,
        "queued behind each other"
    );
}

#[test]
fn every_knob_at_once_is_survivable() {
    let link = LinkConfig {
        latency_ns: 20_000,
        rate_bps: 1_000_000_000,
        loss: 0.02,
        duplicate: 0.02,
        reorder: 0.02,
        reorder_ns: 100_000,
        corrupt: 0.02,
        queue_frames: 256,
        mtu: 1514,
    };
    let mut p = pair(6, link, NicConfig::default());
    let sent = frames(3000, 11);
    let got = exchange(&mut p, &sent, 32);
    let c = p.net.counters(1);
    assert_eq!(got.len() as u64, 3000 - c.lost - c.overflow + c.duplicated);
    for g in &got {
        assert!(sent
            .iter()
            .any(|s| s.len() == g.len() && hamming(s, g) <= 1));
    }
}

fn run_trace(seed: u64) -> (Vec<nicdma::sim::TraceEvent>, Vec<Vec<u8>>) {
    let link = LinkConfig {
        latency_ns: 10_000,
        loss: 0.05,
        duplicate: 0.05,
        reorder: 0.05,
        corrupt: 0.05,
        ..LinkConfig::default()
    };
    let mut p = pair(seed, link, NicConfig::default());
    p.net.record_trace();
    let got = exchange(&mut p, &frames(500, 12), 16);
    (p.net.trace(), got)
}

#[test]
fn same_seed_same_trace() {
    let (t1, g1) = run_trace(42);
    let (t2, g2) = run_trace(42);
    assert!(!t1.is_empty());
    assert_eq!(t1, t2);
    assert_eq!(g1, g2);
    let (t3, _) = run_trace(43);
    assert_ne!(t1, t3, "another seed, another trace");
}

#[test]
fn back_pressure_loses_nothing() {
    // A tiny link queue: the sender is pushed back and retries.
    let link = LinkConfig {
        queue_frames: 4,
        ..LinkConfig::default()
    };
    let mut p = pair(7, link, NicConfig::default());
    let sent = frames(300, 13);
    let got = exchange(&mut p, &sent, 64);
    assert!(p.a.counters().tx_full > 0, "the port pushed back");
    assert_eq!(got, sent);
}

#[test]
fn a_switch_of_three_learns_and_delivers() {
    let net = SimNet::new(9, nicdma::sim::SimClock::new());
    let mem = mem();
    let mut nics: Vec<Nic<SimPort>> = (0..3)
        .map(|_| {
            Nic::new(
                &mem,
                net.add_port(LinkConfig::default()).unwrap(),
                NicConfig::default(),
            )
            .unwrap()
        })
        .collect();
    let mac = |i: u8| [2, 0, 0, 0, 1, i];
    let send = |nics: &mut Vec<Nic<SimPort>>, from: usize, to: u8| {
        let mut f = mac(to).to_vec();
        f.extend_from_slice(&mac(from as u8));
        f.extend_from_slice(&[0x88, 0xb5, from as u8, to]);
        f.resize(60, 0);
        let s = tx_segment(&mem, VirtioNetHdr::default(), 64, &f).unwrap();
        nics[from].tx_prepare(&s).unwrap();
        nics[from].tx_doorbell().unwrap();
        nics[from].dma().unwrap();
    };
    let recv = |nics: &mut Vec<Nic<SimPort>>| -> Vec<usize> {
        nics.iter_mut()
            .map(|n| {
                n.rx_refill().unwrap();
                n.dma().unwrap();
                let mut out = Vec::new();
                n.rx_harvest(&mut out, 100).unwrap() as usize
            })
            .collect()
    };
    send(&mut nics, 0, 1); // unknown destination: flooded to 1 and 2
    assert_eq!(recv(&mut nics), vec![0, 1, 1]);
    send(&mut nics, 1, 0); // 0 was learned: only 0
    assert_eq!(recv(&mut nics), vec![1, 0, 0]);
    send(&mut nics, 2, 0);
    assert_eq!(recv(&mut nics), vec![1, 0, 0]);
}

/// The plain deposit (one splice) and the counted one (with dedup counts)
/// give the very same RX segments and the same written and zero line counts.
#[test]
fn both_deposits_give_the_same_segments() {
    let mut got = Vec::new();
    for count in [false, true] {
        for off in [64u16, 62, 32, 100] {
            let cfg = NicConfig {
                rx_dedup_counts: count,
                rx_frame_off: off,
                ..NicConfig::default()
            };
            let mut p = pair(2, LinkConfig::default(), cfg);
            let mut sent = frames(64, 5);
            // Zero runs, so that whole zero lines occur at every offset.
            for f in sent.iter_mut().step_by(3) {
                let n = f.len();
                f[20..n].fill(0);
            }
            let segs: Vec<Segment> = sent
                .iter()
                .map(|f| tx_segment(&p.mem, VirtioNetHdr::default(), 64, f).unwrap())
                .collect();
            for s in &segs {
                assert!(p.a.tx_prepare(s).unwrap());
            }
            p.a.tx_doorbell().unwrap();
            p.a.dma().unwrap();
            p.b.rx_refill().unwrap();
            p.b.dma().unwrap();
            let mut out = Vec::new();
            assert_eq!(p.b.rx_harvest(&mut out, 100).unwrap(), 64);
            for (s, f) in out.iter().zip(&sent) {
                let (meta, g) = frame_bytes(s).unwrap();
                assert_eq!((meta.frame_off, &g), (off, f));
                // The canonical segment of the same bytes, however written.
                let mut want = meta.to_bytes().to_vec();
                want.resize(usize::from(off), 0);
                want.extend_from_slice(f);
                assert_eq!(s, &p.mem.segment(&want).unwrap());
            }
            let c = *p.b.counters();
            assert!(c.rx_lines_zero > 0);
            assert_eq!(c.rx_lines_dedup > 0, count);
            got.push((off, c.rx_lines_zero, c.rx_lines_written));
        }
    }
    let (plain, counted) = got.split_at(4);
    assert_eq!(
        plain, counted,
        "the same zero and written lines at every offset"
    );
}

#[test]
fn driver_rules_and_notifications() {
    let cfg = NicConfig {
        tx_slots: 8,
        rx_slots: 4,
        ..NicConfig::default()
    };
    let mut p = pair(10, LinkConfig::default(), cfg);
    let s = tx_segment(&p.mem, VirtioNetHdr::default(), 64, &frames(1, 1)[0]).unwrap();
    for _ in 0..8 {
        assert!(p.a.tx_prepare(&s).unwrap());
    }
    assert!(!p.a.tx_prepare(&s).unwrap(), "the ring is full");
    assert_eq!(p.a.tx_doorbell().unwrap(), 8);
    assert_eq!(p.a.tx_ring().nic_owned(), 8);
    assert!(!p.a.notified());
    let w = p.a.dma().unwrap();
    assert_eq!(w.tx, 8);
    assert!(p.a.notified(), "one notification for the batch");
    assert_eq!(p.a.counters().notifications, 1);
    assert_eq!(p.a.tx_reap().unwrap(), (8, 0));
    p.a.ack();
    assert!(!p.a.notified());
    // B has 4 RX slots: 4 frames now, 4 after the driver refills.
    p.b.rx_refill().unwrap();
    assert_eq!(p.b.dma().unwrap().rx, 4);
    assert!(p.b.counters().rx_no_slot >= 1);
    let mut out = Vec::new();
    assert_eq!(p.b.rx_harvest(&mut out, 10).unwrap(), 4);
    p.b.rx_refill().unwrap();
    assert_eq!(p.b.dma().unwrap().rx, 4);
    // A malformed TX segment is dropped with a status, not sent.
    let bad = p.mem.segment(&[0xffu8; 40]).unwrap();
    assert!(p.a.tx_prepare(&bad).unwrap());
    p.a.tx_doorbell().unwrap();
    p.a.dma().unwrap();
    assert_eq!(p.a.tx_reap().unwrap(), (0, 1));
    assert_eq!(p.a.counters().tx_bad, 1);
}

/// Success writes no status: the TX slot still holds the driver's very
/// segment. Errors are written into the slot's copy (copy-on-write), and a
/// stale error status on a segment that is sent is cleared.
#[test]
fn the_device_writes_a_status_only_to_report_something() {
    let mut p = pair(13, LinkConfig::default(), NicConfig::default());
    let s = tx_segment(&p.mem, VirtioNetHdr::default(), 64, &frames(1, 2)[0]).unwrap();
    let live = p.mem.live_lines();
    assert!(p.a.tx_prepare(&s).unwrap());
    let slot = p.a.tx_ring().head();
    p.a.tx_doorbell().unwrap();
    p.a.dma().unwrap();
    assert_eq!(p.a.tx_slots().get(slot), Some(&s), "the very segment");
    assert_eq!(p.mem.live_lines(), live, "no line written on success");
    assert_eq!(p.a.tx_reap().unwrap(), (1, 0));

    // A segment carrying an error status from an earlier attempt.
    let mut m = s.to_mut();
    m.write_at(
        nicdma::meta::offset::STATUS,
        &nicdma::meta::status::PORT_ERROR.to_le_bytes(),
    )
    .unwrap();
    let stale = m.freeze();
    p.a.tx_prepare(&stale).unwrap();
    let slot = p.a.tx_ring().head();
    p.a.tx_doorbell().unwrap();
    p.a.dma().unwrap();
    assert_eq!(p.a.tx_reap().unwrap(), (1, 0));
    let meta = nicdma::DmaMeta::read(p.a.tx_slots().get(slot).unwrap()).unwrap();
    assert_eq!(meta.status, nicdma::meta::status::OK);
    assert_eq!(
        nicdma::DmaMeta::read(&stale).unwrap().status,
        nicdma::meta::status::PORT_ERROR,
        "the driver's snapshot keeps its bytes"
    );

    // A segment of another memory is refused at prepare.
    let other = mem();
    let foreign = tx_segment(&other, VirtioNetHdr::default(), 64, &frames(1, 2)[0]).unwrap();
    assert!(p.a.tx_prepare(&foreign).is_err());
}

#[test]
fn dropping_the_nics_releases_everything() {
    let mem = mem();
    let lines = mem.live_lines();
    {
        let (_net, pa, pb) = SimNet::pair(11, LinkConfig::default()).unwrap();
        let mut a = Nic::new(&mem, pa, NicConfig::default()).unwrap();
        let mut b = Nic::new(&mem, pb, NicConfig::default()).unwrap();
        for f in frames(100, 3) {
            let s = tx_segment(&mem, VirtioNetHdr::default(), 64, &f).unwrap();
            a.tx_prepare(&s).unwrap();
        }
        a.tx_doorbell().unwrap();
        a.dma().unwrap();
        b.rx_refill().unwrap();
        b.dma().unwrap();
        assert!(mem.live_lines() > lines);
    }
    assert_eq!(
        mem.live_lines(),
        lines,
        "ring slots released their segments"
    );
    assert_eq!(mem.map().len(), 1, "ring entries returned to the map");
}

#[test]
fn the_sim_nic_does_checksum_and_segmentation_offload() {
    use nicdma::checksum::{checksum, fold, sum};
    let mut p = pair(12, LinkConfig::default(), NicConfig::default());
    // Ethernet/IPv4/TCP with 4000 bytes of payload, TCP checksum field
    // holding only the pseudo-header sum (as Linux hands it to a NIC).
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let mut f = MAC_B.to_vec();
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[
        0x08, 0x00, 0x45, 0, 0, 0, 0, 1, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    f.extend_from_slice(&[
        0x30, 0x39, 0, 80, 0, 0, 0, 100, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    f.extend_from_slice(&payload);
    let total = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    let vnet = VirtioNetHdr {
        flags: nicdma::meta::F_NEEDS_CSUM,
        gso_type: nicdma::meta::gso::TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let s = tx_segment(&p.mem, vnet, 64, &f).unwrap();
    p.a.tx_prepare(&s).unwrap();
    p.a.tx_doorbell().unwrap();
    p.a.dma().unwrap();
    assert_eq!(p.a.tx_reap().unwrap(), (1, 0));
    p.b.rx_refill().unwrap();
    p.b.dma().unwrap();
    let mut out = Vec::new();
    assert_eq!(
        p.b.rx_harvest(&mut out, 10).unwrap(),
        3,
        "4000 bytes at an MSS of 1448"
    );
    let mut joined = Vec::new();
    for seg in &out {
        let (meta, g) = frame_bytes(seg).unwrap();
        assert_eq!(meta.vnet.flags, nicdma::meta::F_DATA_VALID);
        assert_eq!(checksum(&g[14..34]), 0, "IPv4 header checksum");
        let acc = sum(0, &g[26..34]) + 6 + (g.len() - 34) as u64;
        assert_eq!(!fold(sum(acc, &g[34..])), 0, "TCP checksum");
        joined.extend_from_slice(&g[54..]);
    }
    assert_eq!(joined, payload);
}

/// Busy-poll mode: no wake-up is written while the receiver polls; one armed
/// wake-up is written for the next frame; arming with a frame waiting says
/// so (and wakes at once).
#[test]
fn busy_poll_wakes_only_when_armed() {
    use nicdma::{Port, TxOutcome};
    let (_net, mut a, b) = SimNet::pair(1, LinkConfig::default()).unwrap();
    b.set_busy_poll(true);
    let fd = b.rx_fd().unwrap();
    let readable = || fd_readable(fd);
    let f = [0xffu8; 60];
    let send = |a: &mut SimPort| {
        assert_eq!(
            a.transmit(&VirtioNetHdr::default(), &[&f]).unwrap(),
            TxOutcome::Sent
        )
    };
    let mut b = b;
    let drain = |b: &mut SimPort| {
        let mut n = 0;
        while b.receive(&mut |_, _| n += 1).unwrap() {}
        n
    };
    // Polling: frames arrive, no wake-up is written.
    send(&mut a);
    assert!(!readable());
    assert_eq!(drain(&mut b), 1);
    // Armed on an empty queue: the next frame wakes once.
    assert!(!b.arm_wakeup());
    send(&mut a);
    assert!(readable());
    send(&mut a);
    assert_eq!(drain(&mut b), 2);
    assert!(
        !readable(),
        "the receive that emptied the queue drains the wake-up"
    );
    send(&mut a);
    assert!(!readable(), "one-shot");
    // Armed with a frame waiting: says so, and the descriptor is readable.
    assert!(b.arm_wakeup());
    assert!(readable());
    assert_eq!(drain(&mut b), 1);
    assert!(!readable());
}

/// Whether `fd` polls readable now (`poll(2)`, zero timeout).
fn fd_readable(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    #[allow(unsafe_code)]
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLIN != 0
}

/// Polls `fd` readable for up to `ms` (`poll(2)`); false on a timeout.
fn wait_readable(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    #[allow(unsafe_code)]
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n == 1
}

/// One side of a ping-pong over the sim link, sleeping on its wake-up
/// descriptor whenever its queue is empty: `rounds` frames sent and as many
/// received, with random pauses on both sides so that pushes land before,
/// during and after the receiver's arm-and-check. A lost wake-up shows as a
/// frame waiting after a long sleep that nothing ended (the sleep is only
/// a backstop so that a lost wake-up fails the test instead of hanging it).
fn ping_pong_side(mut port: SimPort, busy_poll: bool, first: bool, rounds: u32, seed: u64) {
    use nicdma::{Port, TxOutcome};
    let mut rng = Rng::new(seed);
    port.set_busy_poll(busy_poll);
    let fd = port.rx_fd().unwrap();
    let pause = |rng: &mut Rng| match rng.below(8) {
        0 => std::thread::sleep(std::time::Duration::from_micros(rng.below(200))),
        1 | 2 => std::thread::yield_now(),
        3 => (0..rng.below(2000)).for_each(|i| {
            std::hint::black_box(i);
        }),
        _ => {}
    };
    let mut frame = [0u8; 60];
    frame[..6].copy_from_slice(if first { &MAC_B } else { &MAC_A });
    frame[6..12].copy_from_slice(if first { &MAC_A } else { &MAC_B });
    let mut send = |port: &mut SimPort, i: u32| {
        frame[12..16].copy_from_slice(&i.to_le_bytes());
        assert_eq!(
            port.transmit(&VirtioNetHdr::default(), &[&frame]).unwrap(),
            TxOutcome::Sent
        );
    };
    if first {
        send(&mut port, 0);
    }
    for i in 0..rounds {
        // Wait for frame i.
        loop {
            let mut got = None;
            port.receive(&mut |_, f| got = Some(u32::from_le_bytes(f[12..16].try_into().unwrap())))
                .unwrap();
            if let Some(n) = got {
                assert_eq!(n, i, "frames in order");
                break;
            }
            pause(&mut rng);
            if busy_poll && port.arm_wakeup() {
                continue;
            }
            if !wait_readable(fd, 20_000) {
                let mut waiting = false;
                port.receive(&mut |_, _| waiting = true).unwrap();
                assert!(!waiting, "lost wake-up: a frame waited through a sleep");
                panic!("no frame in 20 s: the peer is stuck");
            }
        }
        pause(&mut rng);
        if first {
            if i + 1 < rounds {
                send(&mut port, i + 1);
            }
        } else {
            send(&mut port, i);
        }
    }
}

/// Many round trips between two threads that each sleep on the wake-up
/// descriptor when idle, in both wake-up modes: every frame wakes its
/// receiver (no lost wake-up in the sender's push / receiver's arm race).
#[test]
fn no_lost_wakeup_in_many_round_trips() {
    for busy_poll in [true, false] {
        for seed in 0..4u64 {
            let (_net, a, b) = SimNet::pair(seed, LinkConfig::default()).unwrap();
            let rounds = 3000;
            let t = std::thread::spawn(move || ping_pong_side(b, busy_poll, false, rounds, seed));
            ping_pong_side(a, busy_poll, true, rounds, seed + 100);
            t.join().expect("peer");
        }
    }
}

/// A harvested RX segment moves out of its slot: the ring keeps no
/// reference, so the frame's lines die when the stack drops it, not a lap
/// of the ring later.
#[test]
fn harvest_leaves_the_rx_slots_empty() {
    let mut p = pair(9, LinkConfig::default(), NicConfig::default());
    let mut rng = Rng::new(9);
    p.b.rx_refill().unwrap();
    let mut sent = Vec::new();
    for seq in 0..8 {
        let f = frame(seq, &mut rng);
        let seg = tx_segment(&p.mem, VirtioNetHdr::default(), 64, &f).unwrap();
        assert!(p.a.tx_prepare(&seg).unwrap());
        sent.push(f);
    }
    p.a.tx_doorbell().unwrap();
    p.a.dma().unwrap();
    p.net.clock().advance(1_000);
    p.b.dma().unwrap();
    let mut rx: Vec<Segment> = Vec::new();
    assert_eq!(p.b.rx_harvest(&mut rx, 64).unwrap(), 8);
    let ring = p.b.rx_ring();
    for id in ring.ids() {
        assert!(
            p.b.rx_slots().get(hicamp::SegmentId(id)).is_none(),
            "slot {id} kept a segment after the harvest"
        );
    }
    for (seg, f) in rx.iter().zip(&sent) {
        assert_eq!(&frame_bytes(seg).unwrap().1, f);
    }
    // Dropping them frees what only they held (their metadata lines and
    // interior lines: the frame lines are shared with A's TX slots).
    let live = p.mem.live_lines();
    drop(rx);
    assert!(p.mem.live_lines() < live);
    // The slots take new frames as before.
    p.b.rx_refill().unwrap();
    let f = frame(99, &mut rng);
    let seg = tx_segment(&p.mem, VirtioNetHdr::default(), 64, &f).unwrap();
    p.a.tx_reap().unwrap();
    assert!(p.a.tx_prepare(&seg).unwrap());
    p.a.tx_doorbell().unwrap();
    p.a.dma().unwrap();
    p.net.clock().advance(1_000);
    p.b.dma().unwrap();
    let mut rx = Vec::new();
    assert_eq!(p.b.rx_harvest(&mut rx, 64).unwrap(), 1);
    assert_eq!(frame_bytes(&rx[0]).unwrap().1, f);
}
