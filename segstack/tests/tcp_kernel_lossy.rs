//! segstack's TCP against the Linux kernel's over TAP, with seeded loss of
//! TCP frames in both directions between them (the kernel here has no
//! netem, so a wrapper port drops frames on our side of the TAP): the kernel
//! downloads from a segstack sender and uploads to a segstack receiver,
//! byte-exactly, while both stacks recover from the losses.
//!
//! Needs root and iproute2; without them each test prints "skipped: ..." and
//! passes.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nicdma::meta::VirtioNetHdr;
use nicdma::tap::{Offload, TapPort};
use nicdma::{Port, PortError, TxOutcome};
use segstack::iface::{IfaceError, SocketHandle};
use segstack::tcp::TcpStats;
use segstack::Payload;

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0x79, 0, 2];

/// A port that drops TCP frames at random (per mille, seeded), both ways.
struct LossyPort {
    inner: TapPort,
    rng: testkit::Rng,
    tx_loss: u32,
    rx_loss: u32,
    dropped_tx: u64,
    dropped_rx: u64,
}

/// Whether the frame's first bytes are IPv4 carrying TCP.
fn is_tcp(head: &[u8]) -> bool {
    head.len() >= 24 && head[12] == 0x08 && head[13] == 0x00 && head[23] == 6
}

impl Port for LossyPort {
    fn transmit(&mut self, vnet: &VirtioNetHdr, chunks: &[&[u8]]) -> Result<TxOutcome, PortError> {
        let mut head = [0u8; 24];
        let mut n = 0;
        for c in chunks {
            let k = (head.len() - n).min(c.len());
            head[n..n + k].copy_from_slice(&c[..k]);
            n += k;
            if n == head.len() {
                break;
            }
        }
        if is_tcp(&head[..n]) && self.rng.chance(self.tx_loss) {
            self.dropped_tx += 1;
            return Ok(TxOutcome::Sent);
        }
        self.inner.transmit(vnet, chunks)
    }

    fn receive(
        &mut self,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[u8]),
    ) -> Result<bool, PortError> {
        // The NIC expects a deposit when a frame is reported: skip dropped
        // frames until one is kept or none is left.
        loop {
            let rng = &mut self.rng;
            let loss = self.rx_loss;
            let mut dropped = false;
            let got = self.inner.receive(&mut |h, f| {
                if is_tcp(f) && rng.chance(loss) {
                    dropped = true;
                } else {
                    deposit(h, f);
                }
            })?;
            if !got {
                return Ok(false);
            }
            if !dropped {
                return Ok(true);
            }
            self.dropped_rx += 1;
        }
    }

    fn rx_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.rx_fd()
    }

    fn max_frame(&self) -> usize {
        self.inner.max_frame()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

type Lab = common::Lab<LossyPort>;

impl common::OnTap for LossyPort {
    fn tap(&self) -> &TapPort {
        &self.inner
    }
}

fn lab(k: u8, tx_loss: u32, rx_loss: u32, seed: u64) -> Lab {
    let mut tap = TapPort::open("").expect("open a TAP device");
    // The kernel hands us single segments (no TSO super-frames), so a drop
    // loses one segment.
    tap.set_offload(Offload::CSUM).expect("TUNSETOFFLOAD");
    let port = |inner| LossyPort {
        inner,
        rng: testkit::Rng::new(seed),
        tx_loss,
        rx_loss,
        dropped_tx: 0,
        dropped_rx: 0,
    };
    // Our side too: one loss per segment, not per 44-segment TSO burst.
    Lab::new(tap, [10, 79, k], OUR_MAC, port, |cfg| cfg.tcp.tso_max = 0)
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed).rotate_left(seed % 29) as u8)
        .collect()
}

/// The kernel downloads `data` from a segstack sender; returns our stats.
fn download(lab: &mut Lab, port: u16, data: &[u8]) -> TcpStats {
    let mem = lab.iface.memory().clone();
    let mut left = Payload::from_bytes(&mem, data).unwrap();
    let lst = lab.iface.tcp_listen(port).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    let our_ip = lab.our_ip;
    let n = data.len();
    let client = lab.kernel(move || {
        let mut s = TcpStream::connect(SocketAddrV4::new(our_ip, port)).expect("connect");
        let mut got = Vec::with_capacity(n);
        s.read_to_end(&mut got).expect("read");
        flag.store(true, Ordering::SeqCst);
        got
    });
    let mut conn: Option<SocketHandle> = None;
    let mut stats = None;
    lab.run(|i, _, _| {
        if conn.is_none() {
            conn = i.tcp_accept(lst).unwrap();
        }
        if let Some(c) = conn {
            i.send_some(c, &mut left).expect("send");
            if left.is_empty() && stats.is_none() {
                i.close(c).unwrap();
                stats = Some(());
            }
            if let Ok(t) = i.tcp(c) {
                if done.load(Ordering::SeqCst) {
                    eprintln!("download: {:?}", t.stats());
                }
            }
        }
        !done.load(Ordering::SeqCst)
    });
    let got = client.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "downloaded bytes differ");
    let c = conn.unwrap();
    lab.iface
        .tcp(c)
        .map(|t| t.stats().clone())
        .unwrap_or_default()
}

/// The kernel uploads `data` to a segstack receiver; returns our stats.
fn upload(lab: &mut Lab, port: u16, data: Vec<u8>) -> TcpStats {
    let lst = lab.iface.tcp_listen(port).unwrap();
    let our_ip = lab.our_ip;
    let want = data.clone();
    let client = lab.kernel(move || {
        let mut s = TcpStream::connect(SocketAddrV4::new(our_ip, port)).expect("connect");
        s.write_all(&data).expect("write");
        s.shutdown(Shutdown::Write).unwrap();
        let mut ok = Vec::new();
        s.read_to_end(&mut ok).expect("read the verdict");
        ok
    });
    let mut conn = None;
    let mut got: Vec<u8> = Vec::with_capacity(want.len());
    let mut answered = false;
    let mut stats = TcpStats::default();
    lab.run(|i, _, _| {
        if conn.is_none() {
            conn = i.tcp_accept(lst).unwrap();
        }
        let Some(c) = conn else { return true };
        if answered {
            return !client.is_finished();
        }
        loop {
            match i.recv(c, usize::MAX) {
                Ok(chunks) if chunks.is_empty() => {
                    let verdict: &[u8] = if got == want { b"ok" } else { b"bad" };
                    stats = i.tcp(c).unwrap().stats().clone();
                    i.send_slice(c, verdict).unwrap();
                    i.close(c).unwrap();
                    answered = true;
                    break;
                }
                Ok(chunks) => {
                    for p in chunks {
                        got.extend(p.to_vec());
                    }
                }
                Err(IfaceError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
        }
        true
    });
    assert_eq!(client.join().unwrap(), b"ok", "uploaded bytes differ");
    stats
}

#[test]
fn kernel_transfers_through_2_percent_loss() {
    if common::skip() {
        return;
    }
    let mut lab = lab(1, 20, 20, 0x1055);
    let t = Instant::now();
    let down = download(&mut lab, 7100, &pattern(4 << 20, 5));
    eprintln!("download: {down:?} in {:?}", t.elapsed());
    assert!(down.retransmits > 0, "{down:?}");
    assert_eq!(down.bytes_copied, 0);
    assert_eq!(down.tx_unaligned_bytes, 0);
    let t = Instant::now();
    let up = upload(&mut lab, 7101, pattern(4 << 20, 6));
    eprintln!("upload: {up:?} in {:?}", t.elapsed());
    assert!(up.out_of_order > 0, "{up:?}");
    let p = lab.iface.nic().port();
    eprintln!("dropped: tx {} rx {}", p.dropped_tx, p.dropped_rx);
    assert!(p.dropped_tx > 20 && p.dropped_rx > 20);
}

#[test]
fn kernel_transfers_through_heavy_loss() {
    if common::skip() {
        return;
    }
    let mut lab = lab(2, 60, 60, 0x2077);
    let down = download(&mut lab, 7200, &pattern(1 << 20, 7));
    eprintln!("download: {down:?}");
    let up = upload(&mut lab, 7201, pattern(1 << 20, 8));
    eprintln!("upload: {up:?}");
}
