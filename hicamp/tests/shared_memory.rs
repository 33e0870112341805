//! The shared memory in one process: intern, dedup, snapshots, names,
//! reads, bad files, a property test against a model (content -> count),
//! and connections between two threads.

use std::collections::HashMap;
use std::path::PathBuf;

use hicamp::shared::{SharedError, SharedMemory, SharedOptions, SharedSegment};
use proptest::prelude::*;
use testkit::Rng;

fn opts(line: usize, cap: u32) -> SharedOptions {
    SharedOptions {
        line_size: line,
        capacity_lines: cap,
        ..SharedOptions::default()
    }
}

fn fresh(line: usize, cap: u32) -> (tempfile::TempDir, PathBuf, SharedMemory) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shm");
    let mem = SharedMemory::create(&path, opts(line, cap)).unwrap();
    (dir, path, mem)
}

fn clean(mem: &SharedMemory) {
    let c = mem.check().unwrap();
    assert!(c.is_clean(), "{c:?}");
}

#[test]
fn intern_dedups_and_reads_back() {
    let (_d, path, mem) = fresh(64, 1 << 14);
    let mut rng = Rng::new(1);
    for len in [1usize, 63, 64, 65, 1000, 4096, 4097, 70_000] {
        let data = rng.bytes(len);
        let a = mem.intern(&data).unwrap();
        assert_eq!(a.len(), len as u64);
        assert_eq!(a.to_vec().unwrap(), data);
        let other = SharedMemory::open(&path).unwrap();
        let b = other.intern(&data).unwrap();
        assert_eq!(a.root(), b.root(), "equal content, equal root (len {len})");
        let mut mid = vec![0u8; len / 2];
        b.read_at((len / 4) as u64, &mut mid).unwrap();
        assert_eq!(mid, &data[len / 4..len / 4 + len / 2]);
        let hw = mem.stats().high_water;
        let c = mem.intern(&data).unwrap();
        assert_eq!(mem.stats().high_water, hw, "a duplicate takes no slot");
        drop((b, c));
        clean(&mem);
    }
    clean(&mem);
    let c = mem.check().unwrap();
    assert_eq!(c.reachable, 0, "everything released: {c:?}");
}

#[test]
fn check_finds_a_leaked_reference_and_repairs_it() {
    let (_d, _p, mem) = fresh(64, 1024);
    let a = mem.intern(&[3u8; 200]).unwrap();
    mem.test_leak_reference(&a).unwrap();
    let c = mem.check().unwrap();
    assert_eq!(c.count_mismatches, 1, "{c:?}");
    assert!(!c.is_clean());
    // The check rebuilt the counts from the roots.
    clean(&mem);
    drop(a);
    let c = mem.check().unwrap();
    assert!(c.is_clean() && c.reachable == 0, "{c:?}");
}

#[test]
fn zeros_and_empty_cost_nothing() {
    let (_d, _p, mem) = fresh(64, 1024);
    let z = mem.intern(&vec![0u8; 1 << 20]).unwrap();
    assert_eq!(z.root().get(), 0);
    assert_eq!(z.to_vec().unwrap(), vec![0u8; 1 << 20]);
    let e = mem.intern(b"").unwrap();
    assert!(e.is_empty());
    let mut part = vec![0u8; 100];
    part[99] = 1;
    let p = mem.intern(&part).unwrap();
    assert_eq!(p.to_vec().unwrap(), part);
    let s = p.snapshot().unwrap();
    drop(p);
    assert_eq!(s.to_vec().unwrap(), part);
    drop(s);
    clean(&mem);
    assert_eq!(mem.check().unwrap().reachable, 0);
}

#[test]
fn bad_ranges_and_files_give_errors() {
    let (d, path, mem) = fresh(64, 1024);
    let a = mem.intern(b"0123456789").unwrap();
    let mut buf = [0u8; 4];
    assert!(matches!(
        a.read_at(8, &mut buf),
        Err(SharedError::BadRange { .. })
    ));
    assert!(matches!(
        a.read_at(u64::MAX, &mut buf),
        Err(SharedError::BadRange { .. })
    ));
    assert!(
        SharedMemory::create(&path, opts(64, 1024)).is_err(),
        "exists"
    );
    let junk = d.path().join("junk");
    std::fs::write(&junk, vec![7u8; 10_000]).unwrap();
    assert!(matches!(
        SharedMemory::open(&junk),
        Err(SharedError::NotShared { .. })
    ));
    std::fs::write(&junk, b"x").unwrap();
    assert!(matches!(
        SharedMemory::open(&junk),
        Err(SharedError::NotShared { .. })
    ));
    // A truncated copy of a real memory.
    let bytes = std::fs::read(&path).unwrap();
    let short = d.path().join("short");
    std::fs::write(&short, &bytes[..bytes.len() / 2]).unwrap();
    assert!(SharedMemory::open(&short).is_err());
    assert!(matches!(
        SharedMemory::create(d.path().join("bad"), opts(100, 1024)),
        Err(SharedError::BadParameter(_))
    ));
    assert!(matches!(mem.bind("", &a), Err(SharedError::BadName(_))));
    assert!(matches!(
        mem.bind(&"x".repeat(81), &a),
        Err(SharedError::BadName(_))
    ));
}

#[test]
fn capacity_exhaustion_is_an_error_and_leaves_nothing() {
    let (_d, _p, mem) = fresh(64, 512);
    let mut rng = Rng::new(7);
    let mut held = Vec::new();
    let err = loop {
        match mem.intern(&rng.bytes(64 * 20)) {
            Ok(s) => held.push(s),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, SharedError::CapacityExhausted { .. }),
        "{err}"
    );
    clean(&mem);
    held.clear();
    clean(&mem);
    assert_eq!(mem.check().unwrap().reachable, 0);
    // Usable again.
    let s = mem.intern(&rng.bytes(64 * 20)).unwrap();
    drop(s);
    clean(&mem);
}

#[test]
fn names_bind_rebind_lookup_unbind() {
    let (_d, path, mem) = fresh(64, 4096);
    let a = mem.intern(&[1u8; 300]).unwrap();
    mem.bind("x", &a).unwrap();
    drop(a);
    let other = SharedMemory::open(&path).unwrap();
    let b = other.intern(&[2u8; 500]).unwrap();
    assert!(matches!(
        mem.bind("y", &b),
        Err(SharedError::BadParameter(_))
    ));
    assert_eq!(
        other.lookup("x").unwrap().unwrap().to_vec().unwrap(),
        [1u8; 300]
    );
    other.bind("x", &b).unwrap();
    assert_eq!(
        mem.lookup("x").unwrap().unwrap().to_vec().unwrap(),
        [2u8; 500]
    );
    assert_eq!(mem.names(), vec!["x".to_string()]);
    assert!(mem.lookup("nope").unwrap().is_none());
    drop(b);
    clean(&mem);
    assert!(mem.unbind("x").unwrap());
    assert!(!mem.unbind("x").unwrap());
    clean(&mem);
    assert_eq!(mem.check().unwrap().reachable, 0);
}

#[test]
fn names_survive_their_processes_detaching() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shm");
    {
        let mem = SharedMemory::create(&path, opts(64, 4096)).unwrap();
        let a = mem.intern(b"kept across attachments").unwrap();
        mem.bind("kept", &a).unwrap();
    }
    let mem = SharedMemory::open(&path).unwrap();
    let a = mem.lookup("kept").unwrap().unwrap();
    assert_eq!(a.to_vec().unwrap(), b"kept across attachments");
    drop(a);
    clean(&mem);
}

#[derive(Debug, Clone)]
enum Op {
    Intern(u8, usize),
    Snapshot(usize),
    Drop(usize),
    Bind(u8, usize),
    Unbind(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 0usize..400).prop_map(|(k, n)| Op::Intern(k, n)),
        (0usize..64).prop_map(Op::Snapshot),
        (0usize..64).prop_map(Op::Drop),
        (0u8..3, 0usize..64).prop_map(|(k, i)| Op::Bind(k, i)),
        (0u8..3).prop_map(Op::Unbind),
    ]
}

/// Content of kind `k` and length `n`: kinds share lines with each other.
fn content(k: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i / 16) % 3) as u8 + k / 2).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Against a model: the held segments (content) and, per content, how
    /// many handles and names refer to it. Every read matches, and after
    /// every step the checker finds counts equal to references.
    #[test]
    fn model(ops in proptest::collection::vec(op(), 1..40)) {
        let (_d, _p, mem) = fresh(16, 4096);
        let mut held: Vec<(SharedSegment, Vec<u8>)> = Vec::new();
        let mut names: HashMap<u8, Vec<u8>> = HashMap::new();
        for op in ops {
            match op {
                Op::Intern(k, n) => {
                    let c = content(k, n);
                    let s = mem.intern(&c).unwrap();
                    held.push((s, c));
                }
                Op::Snapshot(i) if !held.is_empty() => {
                    let (s, c) = &held[i % held.len()];
                    let t = s.snapshot().unwrap();
                    let c = c.clone();
                    held.push((t, c));
                }
                Op::Drop(i) if !held.is_empty() => {
                    let n = held.len();
                    held.swap_remove(i % n);
                }
                Op::Bind(k, i) if !held.is_empty() => {
                    let (s, c) = &held[i % held.len()];
                    mem.bind(&format!("n{k}"), s).unwrap();
                    names.insert(k, c.clone());
                }
                Op::Unbind(k) => {
                    prop_assert_eq!(mem.unbind(&format!("n{k}")).unwrap(), names.remove(&k).is_some());
                }
                _ => {}
            }
            for (s, c) in &held {
                prop_assert_eq!(&s.to_vec().unwrap(), c);
            }
            for (k, c) in &names {
                prop_assert_eq!(&mem.lookup(&format!("n{k}")).unwrap().unwrap().to_vec().unwrap(), c);
            }
            let chk = mem.check().unwrap();
            prop_assert!(chk.is_clean(), "{:?}", chk);
        }
        // Equal content, equal root, across the handles of the model.
        let mut roots: HashMap<Vec<u8>, u32> = HashMap::new();
        for (s, c) in &held {
            let r = *roots.entry(c.clone()).or_insert(s.root().get());
            prop_assert_eq!(r, s.root().get());
        }
        held.clear();
        for k in 0..3u8 {
            mem.unbind(&format!("n{k}")).unwrap();
        }
        let chk = mem.check().unwrap();
        prop_assert!(chk.is_clean() && chk.reachable == 0, "{:?}", chk);
    }
}

#[test]
fn connection_between_threads_streams_and_closes() {
    let (_d, path, mem) = fresh(4096, 1 << 12);
    let a = mem.connect().unwrap();
    let id = a.id();
    let p2 = path.clone();
    let total = 8 << 20;
    let reader = std::thread::spawn(move || {
        let mem = SharedMemory::open(&p2).unwrap();
        let b = mem.accept(id).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 70_000];
        loop {
            let n = b.recv(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        b.send(b"done").unwrap();
        got
    });
    let mut rng = Rng::new(3);
    let data = rng.bytes(total);
    for chunk in data.chunks(65_536) {
        assert_eq!(a.send(chunk).unwrap(), chunk.len());
    }
    a.shutdown_write().unwrap();
    let got = reader.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    let mut buf = [0u8; 16];
    let n = a.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"done");
    assert_eq!(a.recv(&mut buf).unwrap(), 0, "EOF after the peer closed");
    assert!(matches!(a.send(b"x"), Err(SharedError::Shutdown)));
    drop(a);
    clean(&mem);
    assert_eq!(mem.check().unwrap().reachable, 0);
}

#[test]
fn connection_segments_pass_without_copy_and_resets() {
    let (_d, _p, mem) = fresh(64, 1 << 12);
    let a = mem.connect().unwrap();
    let mut b = mem.accept(a.id()).unwrap();
    assert!(matches!(
        mem.accept(a.id()),
        Err(SharedError::NotAcceptable(_))
    ));
    let seg = mem.intern(&[9u8; 1000]).unwrap();
    a.send_segment(&seg, 100, 500).unwrap();
    assert!(matches!(
        a.send_segment(&seg, 900, 500),
        Err(SharedError::BadRange { .. })
    ));
    let (s, off, n) = b.recv_segment().unwrap().unwrap();
    assert_eq!((s.root(), off, n), (seg.root(), 100, 500));
    b.set_nonblocking(true);
    let mut buf = [0u8; 8];
    assert!(matches!(b.recv(&mut buf), Err(SharedError::WouldBlock)));
    assert!(!b.readable());
    // b closes with data unread: a's reads of b's direction see RST only if
    // b had sent; here a sent data that b leaves unread -> a's writes fail.
    a.send(b"unread").unwrap();
    drop(b);
    assert!(matches!(a.send(b"more"), Err(SharedError::Reset)));
    drop((a, s, seg));
    clean(&mem);
    assert_eq!(mem.check().unwrap().reachable, 0);
}

#[test]
fn close_with_unread_data_resets_the_peer() {
    let (_d, _p, mem) = fresh(64, 1 << 12);
    let a = mem.connect().unwrap();
    let b = mem.accept(a.id()).unwrap();
    a.send(b"for b").unwrap();
    b.send(b"for a, never read").unwrap();
    drop(a);
    let mut buf = [0u8; 32];
    assert!(matches!(b.recv(&mut buf), Err(SharedError::Reset)));
    drop(b);
    clean(&mem);
    assert_eq!(mem.check().unwrap().reachable, 0);
}

/// The shim's readiness tokens: none while the reader holds no pin; then
/// one outstanding per direction, taken by the writer only when the ring
/// gained data and none is out, released by the reader only when the ring is
/// empty.
#[test]
fn readiness_tokens_follow_the_ring() {
    let (_d, _p, mem) = fresh(64, 1 << 12);
    let a = mem.connect().unwrap();
    let b = mem.accept(a.id()).unwrap();
    a.send(b"unpinned").unwrap();
    assert!(
        !a.token_take(),
        "no pin: the reader looks at the ring itself"
    );
    assert!(b.readable() && b.poll_bits().data);
    let mut big = [0u8; 16];
    assert_eq!(b.recv_nb(&mut big, true, false).unwrap(), 8);
    b.pin();
    b.pin();
    b.unpin();
    assert!(!b.token_release(), "no token yet");
    assert!(!b.token_held());
    a.send(b"one").unwrap();
    assert!(a.token_take(), "first data: a token");
    a.send(b"two").unwrap();
    assert!(!a.token_take(), "one token at a time");
    assert!(!b.token_release(), "data queued: the token stays");
    assert_eq!(b.pending(), 6);
    let mut buf = [0u8; 4];
    assert_eq!(b.recv_nb(&mut buf, true, true).unwrap(), 4, "peek");
    assert_eq!(b.pending(), 6, "a peek consumes nothing");
    assert_eq!(b.recv_nb(&mut buf, true, false).unwrap(), 4);
    assert!(!b.token_release(), "2 bytes still queued");
    assert_eq!(b.recv_nb(&mut buf, true, false).unwrap(), 2);
    assert!(b.token_release(), "empty: the reader takes the token out");
    assert!(!b.token_release());
    assert!(matches!(
        b.recv_nb(&mut buf, true, false),
        Err(SharedError::WouldBlock)
    ));
    a.send(b"three").unwrap();
    assert!(a.token_take(), "new data after an empty ring: a new token");
    assert!(b.token_held());
    assert_eq!(b.recv_nb(&mut buf, true, false).unwrap(), 4);
    assert_eq!(b.recv_nb(&mut buf, true, false).unwrap(), 1);
    assert!(b.token_release());
    b.unpin();
    b.unpin(); // one too many: stays at zero
    a.send(b"four").unwrap();
    assert!(!a.token_take(), "unpinned again: no token");
    let p = b.poll_bits();
    assert!(p.data && p.writable && !p.fin && !p.rst);
    let seq = p.in_seq;
    a.shutdown_write().unwrap();
    let p = b.poll_bits();
    assert!(
        p.fin && p.in_seq != seq,
        "FIN is an event of the incoming ring"
    );
    drop(a);
    drop(b);
    clean(&mem);
}

/// A forked process takes an end over (`adopt`); a peer whose descriptors
/// vanished is closed on its behalf (FIN, then the connection is freed).
#[test]
fn adopt_and_close_a_vanished_peer() {
    let (_d, _p, mem) = fresh(64, 1 << 12);
    let a = mem.connect().unwrap();
    assert!(!a.peer_attached());
    let b = mem.accept(a.id()).unwrap();
    assert!(a.peer_attached() && a.owned() && b.owned());
    let other = SharedMemory::open(_p.as_path()).unwrap();
    let b2 = other.adopt(b.id(), b.end()).unwrap();
    assert!(!b.owned() && b2.owned());
    b.disown();
    a.send(b"to b2").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(b2.recv(&mut buf).unwrap(), 5);
    a.close_vanished_peer().unwrap();
    assert!(matches!(a.send_nb(b"x", true), Err(SharedError::Reset)));
    assert_eq!(
        a.recv_nb(&mut buf, true, false).unwrap(),
        0,
        "FIN from the vanished peer"
    );
    drop(b2);
    drop(a);
    drop(other);
    clean(&mem);
    assert_eq!(mem.check().unwrap().reachable, 0);
}

/// Profiling aid (`valgrind --tool=callgrind` on it): intern and release
/// 4 MiB of unique data at 64-byte lines, 64 KiB at a time.
#[test]
#[ignore]
fn profile_intern_release_64b() {
    let (_d, _p, mem) = fresh(64, 1 << 17);
    let data = Rng::new(11).bytes(4 << 20);
    for c in data.chunks(65_536) {
        let s = mem.intern(c).unwrap();
        drop(s);
    }
    clean(&mem);
}

/// Stream bytes go into owned lines (no index) while the reader keeps up: a
/// stream several times the memory's size stays byte-exact while the reader's
/// released slots are reused by the writer, and nothing leaks.
#[test]
fn owned_stream_lines_are_byte_exact_across_slot_reuse() {
    let cap = 1 << 11; // 8 MiB of 4 KiB lines
    let (_d, path, mem) = fresh(4096, cap);
    let a = mem.connect().unwrap();
    // One message, unread: owned lines, outside the index, and the check is clean.
    assert_eq!(a.send(&vec![7u8; 65_536]).unwrap(), 65_536);
    let c = mem.check().unwrap();
    assert!(c.is_clean(), "{c:?}");
    assert_eq!(
        (c.owned, c.reachable),
        (17, 17),
        "16 leaves + 1 interior, owned"
    );
    let id = a.id();
    let total: usize = 64 << 20;
    let mut rng = Rng::new(11);
    let data = rng.bytes(total);
    let want = data.clone();
    let reader = std::thread::spawn(move || {
        let mem = SharedMemory::open(&path).unwrap();
        let b = mem.accept(id).unwrap();
        let mut first = vec![0u8; 65_536];
        let mut got = 0;
        while got < first.len() {
            got += b.recv(&mut first[got..]).unwrap();
        }
        assert!(first.iter().all(|&x| x == 7));
        let mut buf = vec![0u8; 50_000];
        let mut off = 0usize;
        loop {
            let n = b.recv(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            assert!(buf[..n] == want[off..off + n], "bytes differ at {off}");
            off += n;
        }
        assert_eq!(off, want.len());
    });
    // Sizes that do and do not fill lines, and a message longer than one entry.
    let mut off = 0;
    let mut k = 0usize;
    while off < total {
        let n = [65_536, 1, 4096, 100_000, 3_000_000, 7][k % 6].min(total - off);
        let mut sent = 0;
        while sent < n {
            sent += a.send(&data[off + sent..off + n]).unwrap();
        }
        off += n;
        k += 1;
    }
    a.shutdown_write().unwrap();
    reader.join().unwrap();
    let st = mem.stats();
    assert!(st.high_water <= cap as u64, "{st:?}");
    drop(a);
    let c = mem.check().unwrap();
    assert!(c.is_clean(), "{c:?}");
    assert_eq!((c.reachable, c.owned), (0, 0));
    assert_eq!(c.free, c.high_water - 1, "every used slot is free again");
}

/// Once a backlog sits in the ring, `send` interns: a payload repeated while
/// the reader does not read is stored once past the backlog threshold.
#[test]
fn repeated_payload_is_deduplicated_once_a_backlog_sits() {
    let (_d, path, mem) = fresh(4096, 1 << 12);
    let a = mem.connect().unwrap();
    let b = mem.accept(a.id()).unwrap();
    let msg = Rng::new(5).bytes(65_536);
    let sends = 48u64; // 3 MiB: under the ring's 4 MiB
    for _ in 0..sends {
        assert_eq!(a.send(&msg).unwrap(), msg.len());
    }
    let c = mem.check().unwrap();
    assert!(c.is_clean(), "{c:?}");
    // Below the threshold (256 KiB = 4 messages): owned, 17 lines each; from
    // there on one interned copy (17 lines) shared by every later message.
    let owned_msgs = hicamp::shared::DEDUP_BACKLOG / msg.len() as u64;
    assert_eq!(c.owned, owned_msgs * 17, "{c:?}");
    assert_eq!(c.reachable, owned_msgs * 17 + 17, "{c:?}");
    assert!(c.reachable * 8 < sends * 17);
    let mut buf = vec![0u8; 65_536];
    let read_one = |buf: &mut Vec<u8>| {
        let mut got = 0;
        while got < buf.len() {
            got += b.recv(&mut buf[got..]).unwrap();
        }
        assert!(*buf == msg);
    };
    // A reader that consumed is active: the next 256 KiB of sends go into owned
    // lines whatever the backlog; past them with no consumption, dedup again.
    // (A check wakes every ring's waiters, which counts as a move: check after.)
    read_one(&mut buf);
    for _ in 0..6 {
        a.send(&msg).unwrap();
    }
    assert_eq!(
        mem.check().unwrap().owned,
        (owned_msgs - 1) * 17 + owned_msgs * 17
    );
    // Mixed entries read back byte-exact and release cleanly.
    for _ in 0..sends + 5 {
        read_one(&mut buf);
    }
    // Dedup off (0) and always-owned (MAX) are honoured.
    let mut a = a;
    a.set_dedup_backlog(0);
    a.send(&msg).unwrap();
    a.send(&msg).unwrap();
    assert_eq!(mem.check().unwrap().owned, 0);
    a.set_dedup_backlog(u64::MAX);
    a.send(&msg).unwrap();
    assert_eq!(mem.check().unwrap().owned, 17);
    drop(b);
    drop(a);
    let _ = path;
    let c = mem.check().unwrap();
    assert!(c.is_clean(), "{c:?}");
    assert_eq!(c.reachable, 0);
}

/// CPU time of each side of a 64 KiB stream between two threads (4 KiB
/// lines, the shim's transport memory shape), with every send interned
/// (dedup backlog 0: the path before owned lines) and with the default policy.
/// CPU time, unlike wall time, hardly moves with the machine's load.
/// `cargo test -p hicamp --test shared_memory -- --ignored --nocapture cpu_per`
#[test]
#[ignore]
fn stream_cpu_per_message_interned_against_owned() {
    fn cpu_ns() -> u64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for clock_gettime to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    }
    let msgs = 8192u64; // 512 MiB
    for round in 0..2 {
        for backlog in [0, hicamp::shared::DEDUP_BACKLOG] {
            let (_d, path, mem) = fresh(4096, 1 << 16);
            let mut a = mem.connect().unwrap();
            a.set_dedup_backlog(backlog);
            let id = a.id();
            let reader = std::thread::spawn(move || {
                let mem = SharedMemory::open(&path).unwrap();
                let b = mem.accept(id).unwrap();
                let mut buf = vec![0u8; 65_536];
                let t0 = cpu_ns();
                let mut n = 0u64;
                loop {
                    let k = b.recv(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
                (n, cpu_ns() - t0)
            });
            let mut rng = Rng::new(1);
            // More distinct messages than the ring holds (4 MiB): no dedup hits.
            let bufs: Vec<Vec<u8>> = (0..128).map(|_| rng.bytes(65_536)).collect();
            let t0 = cpu_ns();
            let w0 = std::time::Instant::now();
            for i in 0..msgs {
                a.send(&bufs[i as usize % 128]).unwrap();
            }
            a.shutdown_write().unwrap();
            let wcpu = cpu_ns() - t0;
            let (n, rcpu) = reader.join().unwrap();
            let wall = w0.elapsed();
            assert_eq!(n, msgs * 65_536);
            println!(
                "round {round} dedup backlog {backlog:>7}: writer {:>6.2} us, reader {:>6.2} us CPU per 64 KiB; {:.2} GB/s wall",
                wcpu as f64 / msgs as f64 / 1e3,
                rcpu as f64 / msgs as f64 / 1e3,
                n as f64 / wall.as_secs_f64() / 1e9
            );
            drop(a);
            clean(&mem);
        }
    }
}

/// A memory smaller than the ring: owned builds that find too few free-stack
/// slots fall back to interning (which can use the stripe caches), and a full
/// memory makes the writer wait for the reader; the stream stays byte-exact.
#[test]
fn owned_builds_fall_back_when_the_memory_is_nearly_full() {
    let (_d, path, mem) = fresh(4096, 80); // 320 KiB of lines
    let a = mem.connect().unwrap();
    let id = a.id();
    let mut rng = Rng::new(21);
    let data = rng.bytes(8 << 20);
    let want = data.clone();
    let reader = std::thread::spawn(move || {
        let mem = SharedMemory::open(&path).unwrap();
        let b = mem.accept(id).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 10_000];
        loop {
            let n = b.recv(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == want);
    });
    for chunk in data.chunks(65_536) {
        let mut sent = 0;
        while sent < chunk.len() {
            sent += a.send(&chunk[sent..]).unwrap();
        }
    }
    a.shutdown_write().unwrap();
    reader.join().unwrap();
    drop(a);
    let c = mem.check().unwrap();
    assert!(c.is_clean() && c.reachable == 0, "{c:?}");
}
