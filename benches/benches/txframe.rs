//! TX frame build and release, per frame, the way segstack builds them
//! (`segstack::iface::tx_frame`): frames' own lines (metadata, headroom,
//! headers, interior lines above them) as owned lines (the default on a
//! volatile memory) against interned ones (`IfaceConfig::tx_dedup`,
//! `HICAMP_TX_DEDUP=1`), and against no frame segment at all: a TX
//! descriptor with the headers inline and snapshots of the payload
//! (`segstack::iface::tx_desc`, `IfaceConfig::tx_inline`, the default), in
//! the same binary. Two shapes:
//!
//! * `reply`: a 200-byte reply (redis, a small RPC) behind 66 bytes of
//!   Ethernet + IPv4 + TCP-with-timestamps headers;
//! * `page`: a 240-byte HTTP header and a 4 KiB page (one segment, as
//!   `writev` copies them; one TSO frame), behind the same 66 bytes.
//!
//! Every frame's headers differ (IP ident, sequence number, timestamp), as
//! on the wire; the payload segments are built once and referenced. Frames
//! are built 32 at a time (a TX batch) and then released together.
//!
//! Without arguments: median wall-clock ns per frame over rounds, both
//! modes interleaved. For instruction counts (deterministic on a loaded
//! host), run one configuration under callgrind with
//! `TXFRAME_MODE=owned|dedup|inline TXFRAME_CASE=reply|page TXFRAME_N=frames`,
//! twice with different N, and divide the difference by the difference of N.
//! `TXFRAME_GATHER=1` adds what the device does with each frame before the
//! port's system call: read the metadata and gather the frame's chunks
//! (a segment's lines through its cursor; a descriptor's inline headers and
//! its payload's lines), as `Nic::dma` does.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Instant;

use hicamp::{Config, Memory, Segment, SegmentSlice};
use nicdma::frame::TxDesc;
use nicdma::VirtioNetHdr;
use segstack::iface::{tx_desc, tx_frame};

const HDRS: usize = 66;
const BATCH: usize = 32;

struct Case {
    name: &'static str,
    payload: Vec<SegmentSlice>,
}

fn cases(mem: &Memory) -> Vec<Case> {
    let reply: Vec<u8> = (0..200u32).map(|i| (i * 31 + 7) as u8).collect();
    let http: Vec<u8> = (0..240u32).map(|i| (i * 17 + 3) as u8 | 0x20).collect();
    let page: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8 | 1).collect();
    // As `writev` copies them: one segment.
    let resp: Vec<u8> = http.iter().chain(&page).copied().collect();
    let slice = |b: &[u8]| {
        let s = mem.segment(b).expect("payload");
        SegmentSlice::new(s, 0, b.len())
    };
    vec![
        Case {
            name: "reply",
            payload: vec![slice(&reply)],
        },
        Case {
            name: "page",
            payload: vec![slice(&resp)],
        },
    ]
}

/// How a frame reaches the NIC.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// A frame segment, its own lines interned.
    Dedup,
    /// A frame segment, its own lines owned.
    Owned,
    /// A descriptor with inline headers, no frame segment.
    Inline,
}

const MODES: [Mode; 3] = [Mode::Dedup, Mode::Owned, Mode::Inline];

/// The device's read of a frame segment: the metadata, then the frame's
/// lines into `chunks` (as `Nic::dma` gathers them). Returns the chunks.
fn gather_segment(seg: &Segment, chunks: &mut Vec<&'static [u8]>) -> usize {
    let (meta, mut c) = nicdma::frame::open_frame(seg).expect("meta");
    let mut v = reuse(std::mem::take(chunks));
    c.gather(meta.frame_len as usize, &mut v);
    let n = black_box(v.len());
    *chunks = reuse(v);
    n
}

/// The device's read of a descriptor: its headers, then its payload's
/// lines into `chunks`.
fn gather_desc(d: &TxDesc, chunks: &mut Vec<&'static [u8]>) -> usize {
    let mut v = reuse(std::mem::take(chunks));
    d.gather(&mut v);
    let n = black_box(v.len());
    *chunks = reuse(v);
    n
}

/// An empty vector of slices with the allocation of `v` (as `Nic` reuses
/// its gather list).
fn reuse<'b>(mut v: Vec<&[u8]>) -> Vec<&'b [u8]> {
    v.clear();
    v.into_iter().map(|_| -> &'b [u8] { &[] }).collect()
}

/// Builds and releases `n` frames (a multiple of [`BATCH`] rounded up),
/// gathering each one first when `gather`.
fn run(mem: &Memory, mode: Mode, gather: bool, payload: &[SegmentSlice], n: usize, salt: u32) {
    let mut hdrs = [0u8; HDRS];
    for (i, b) in hdrs.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(29) | 1;
    }
    let mut frames: Vec<Segment> = Vec::with_capacity(BATCH);
    let mut descs: Vec<TxDesc> = Vec::with_capacity(BATCH);
    let mut chunks: Vec<&'static [u8]> = Vec::with_capacity(256);
    let mut k = salt;
    for _ in 0..n.div_ceil(BATCH) {
        for _ in 0..BATCH {
            k = k.wrapping_add(1);
            // IP ident, TCP sequence number, TS value.
            hdrs[18..20].copy_from_slice(&(k as u16).to_be_bytes());
            hdrs[38..42].copy_from_slice(&k.wrapping_mul(4336).to_be_bytes());
            hdrs[58..62].copy_from_slice(&(k >> 3).to_be_bytes());
            if mode == Mode::Inline {
                let d = tx_desc(VirtioNetHdr::default(), &hdrs, payload).expect("desc");
                descs.push(black_box(d));
            } else {
                let owned = mode == Mode::Owned;
                let (seg, counts) =
                    tx_frame(mem, owned, VirtioNetHdr::default(), &hdrs, payload).expect("frame");
                debug_assert_eq!(counts.copied_bytes, 0);
                frames.push(black_box(seg));
            }
        }
        if gather {
            for d in &descs {
                gather_desc(d, &mut chunks);
            }
            for s in &frames {
                gather_segment(s, &mut chunks);
            }
        }
        frames.clear();
        descs.clear();
    }
}

fn main() {
    let mem = Memory::new(Config {
        line_size: 64,
        capacity_lines: 1 << 18,
        ..Config::default()
    })
    .expect("memory");
    assert!(
        mem.owned_lines_enabled(),
        "a volatile memory makes owned lines"
    );
    let cases = cases(&mem);
    // Zero copies below the socket API in every mode, and the same bytes.
    for c in &cases {
        let hdrs = [1u8; HDRS];
        let d = tx_desc(VirtioNetHdr::default(), &hdrs, &c.payload).expect("desc");
        for owned in [false, true] {
            let (seg, counts) =
                tx_frame(&mem, owned, VirtioNetHdr::default(), &hdrs, &c.payload).expect("frame");
            assert_eq!(counts.copied_bytes, 0, "{}: payload copied", c.name);
            let (_, bytes) = nicdma::frame_bytes(&seg).expect("frame bytes");
            assert_eq!(bytes, d.to_vec(), "{}: descriptor's frame differs", c.name);
        }
    }
    let gather = std::env::var_os("TXFRAME_GATHER").is_some_and(|v| v == "1");
    if let Ok(mode) = std::env::var("TXFRAME_MODE") {
        let m = match mode.as_str() {
            "owned" => Mode::Owned,
            "dedup" => Mode::Dedup,
            "inline" => Mode::Inline,
            m => panic!("TXFRAME_MODE={m}: owned, dedup or inline"),
        };
        let name = std::env::var("TXFRAME_CASE").unwrap_or_else(|_| "reply".into());
        let n: usize = std::env::var("TXFRAME_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        let c = cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("TXFRAME_CASE={name}: reply or page"));
        run(&mem, m, gather, &c.payload, n, 0);
        println!("txframe {name} {mode} gather={gather} frames={n}");
        return;
    }
    let n = 20_000;
    let rounds = 9;
    println!(
        "TX frame build + release{}, ns per frame (median of {rounds} rounds of {n} frames)",
        if gather { " + gather" } else { "" }
    );
    for c in &cases {
        let mut t = [Vec::new(), Vec::new(), Vec::new()];
        for r in 0..rounds {
            for (i, m) in MODES.into_iter().enumerate() {
                let start = Instant::now();
                run(&mem, m, gather, &c.payload, n, r * n as u32);
                t[i].push(start.elapsed().as_nanos() as f64 / n as f64);
            }
        }
        for v in &mut t {
            v.sort_by(f64::total_cmp);
        }
        let [d, o, i] = [0, 1, 2].map(|k| t[k][rounds as usize / 2]);
        println!(
            "  {:5}  interned (tx_dedup) {d:7.1}  owned {o:7.1}  inline {i:7.1}  inline/owned {:.2}",
            c.name,
            i / o
        );
    }
}
