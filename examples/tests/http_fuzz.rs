//! The cargo-fuzz target's body (`phttpd::http::fuzz_one`) on the stable
//! toolchain: random bytes, mutated valid requests and requests assembled
//! from risky pieces (signs, commas, folds, bare CR/LF, TE and CL), from a
//! fixed seed (about 800k inputs, under a second).
//!
//! `HTTP_FUZZ_ITERS` (default 200000 per generator) scales it;
//! `HTTP_FUZZ_SEED` changes the seed.

use hicamp_examples::phttpd::http::{self, fuzz_one};
use testkit::Rng;

fn iters() -> usize {
    std::env::var("HTTP_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

fn rng() -> Rng {
    let seed = std::env::var("HTTP_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x4854_5450_u64);
    Rng::new(seed)
}

const VALID: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: 192.168.11.2:60000\r\n\r\n",
    b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n",
    b"GET /obj/100 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"\r\nPOST /upload HTTP/1.1\r\nhost: a\r\nX-A: b\tc\r\ncontent-length: 5, 5\r\n\r\nhello",
];

const PIECES: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b",",
    b"+",
    b"-",
    b"0",
    b"5",
    b"99999999999999999999",
    b"Content-Length",
    b"Transfer-Encoding",
    b"chunked",
    b"Host",
    b"GET",
    b"POST",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"/",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"Connection",
    b"close",
];

fn mutate(r: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + r.below(4) {
        let at = r.index(v.len() + 1);
        match r.below(5) {
            0 if !v.is_empty() => {
                let i = r.index(v.len());
                v[i] = r.byte();
            }
            1 if !v.is_empty() => {
                let i = r.index(v.len());
                v.remove(i);
            }
            2 => {
                let p = PIECES[r.index(PIECES.len())];
                v.splice(at..at, p.iter().copied());
            }
            3 if !v.is_empty() => {
                // Duplicate a stretch (a field line, say).
                let i = r.index(v.len());
                let j = (i + 1 + r.index(40)).min(v.len());
                let s = v[i..j].to_vec();
                v.splice(at..at, s);
            }
            _ => v.insert(at, r.byte()),
        }
    }
    v
}

fn assemble(r: &mut Rng) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..r.below(24) {
        v.extend_from_slice(PIECES[r.index(PIECES.len())]);
    }
    if r.one_in(2) {
        v.extend_from_slice(b"\r\n\r\n");
    }
    v
}

#[test]
fn the_parser_keeps_its_promises_on_random_input() {
    let mut r = rng();
    let n = iters();
    for _ in 0..n {
        let len = r.index(200);
        fuzz_one(&r.bytes(len));
    }
    for _ in 0..n {
        let base = VALID[r.index(VALID.len())];
        fuzz_one(&mutate(&mut r, base));
    }
    for _ in 0..n {
        let mut head = b"POST /log HTTP/1.1\r\nHost: x\r\n".to_vec();
        head.extend_from_slice(&assemble(&mut r));
        fuzz_one(&head);
        fuzz_one(&assemble(&mut r));
    }
    // The valid ones parse.
    for v in VALID {
        assert!(matches!(http::parse(v, 1 << 16), Ok(Some(_))), "{v:?}");
    }
}
