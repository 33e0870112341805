//! Property tests: random operation sequences against `Vec<u8>` models.
//!
//! Checked after every step: each handle's bytes equal its model; two handles
//! have the same (root, length) exactly when their bytes are equal; snapshots
//! never change when the segment they came from is written. Checked at the
//! end: with every handle dropped the memory holds no line.

use hicamp::{Config, Memory, SegmentMut};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Create(Vec<u8>),
    Write(usize, u32, Vec<u8>),
    Append(usize, Vec<u8>),
    Truncate(usize, u32),
    Resize(usize, u32),
    Snapshot(usize),
    Drop(usize),
}

/// Bytes from a tiny alphabet so that lines repeat and zero lines occur.
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(2u8)], 0..max),
        prop::collection::vec(any::<u8>(), 0..max),
        (0..max, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let i = any::<prop::sample::Index>().prop_map(|x| x.index(1 << 16));
    prop_oneof![
        2 => bytes(700).prop_map(Op::Create),
        4 => (i.clone(), 0u32..1200, bytes(300)).prop_map(|(h, o, d)| Op::Write(h, o, d)),
        2 => (i.clone(), bytes(400)).prop_map(|(h, d)| Op::Append(h, d)),
        1 => (i.clone(), 0u32..900).prop_map(|(h, l)| Op::Truncate(h, l)),
        1 => (i.clone(), 0u32..1500).prop_map(|(h, l)| Op::Resize(h, l)),
        2 => i.clone().prop_map(Op::Snapshot),
        1 => i.prop_map(Op::Drop),
    ]
}

fn check(pool: &[(SegmentMut, Vec<u8>)]) -> Result<(), TestCaseError> {
    for (s, model) in pool {
        let mut buf = vec![0u8; model.len()];
        prop_assert_eq!(s.len(), model.len() as u64);
        prop_assert_eq!(s.read_at(0, &mut buf).unwrap(), model.len());
        prop_assert_eq!(&buf, model);
    }
    for (a, ma) in pool {
        for (b, mb) in pool {
            let same_id = a.root() == b.root() && a.len() == b.len();
            prop_assert_eq!(same_id, ma == mb, "(root, len) equal iff contents equal");
        }
    }
    Ok(())
}

fn run(line_size: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mem = Memory::new(Config {
        line_size,
        capacity_lines: 1 << 16,
        map_capacity: 64,
        ..Config::default()
    })
    .unwrap();
    let mut pool: Vec<(SegmentMut, Vec<u8>)> = Vec::new();
    for op in ops {
        let n = pool.len();
        match op {
            Op::Create(d) => pool.push((mem.segment(&d).unwrap().into_mut(), d)),
            _ if n == 0 => continue,
            Op::Write(h, off, d) => {
                let (s, m) = &mut pool[h % n];
                s.write_at(u64::from(off), &d).unwrap();
                let off = off as usize;
                if m.len() < off + d.len() {
                    m.resize(off + d.len(), 0);
                }
                m[off..off + d.len()].copy_from_slice(&d);
            }
            Op::Append(h, d) => {
                let (s, m) = &mut pool[h % n];
                s.append(&d).unwrap();
                m.extend_from_slice(&d);
            }
            Op::Truncate(h, l) => {
                let (s, m) = &mut pool[h % n];
                s.truncate(u64::from(l)).unwrap();
                m.truncate(l as usize);
            }
            Op::Resize(h, l) => {
                let (s, m) = &mut pool[h % n];
                s.resize(u64::from(l)).unwrap();
                m.resize(l as usize, 0);
            }
            Op::Snapshot(h) => {
                let (s, m) = &pool[h % n];
                let snap = (s.snapshot().into_mut(), m.clone());
                pool.push(snap);
            }
            Op::Drop(h) => {
                pool.swap_remove(h % n);
            }
        }
        check(&pool)?;
    }
    // Rebuilding every model from scratch gives the very same roots.
    for (s, m) in &pool {
        let fresh = mem.segment(m).unwrap();
        prop_assert_eq!(fresh.root(), s.root());
        prop_assert_eq!(fresh.digest(), *blake3::hash(m).as_bytes());
    }
    drop(pool);
    prop_assert_eq!(mem.live_lines(), 0, "every line is released");
    prop_assert_eq!(mem.stats().logical_bytes, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn model_16(ops in prop::collection::vec(op(), 1..40)) { run(16, ops)?; }

    #[test]
    fn model_64(ops in prop::collection::vec(op(), 1..40)) { run(64, ops)?; }

    #[test]
    fn model_256(ops in prop::collection::vec(op(), 1..25)) { run(256, ops)?; }

    /// The DAG shape does not depend on history: any split of the content
    /// into appends gives the root of a direct build.
    #[test]
    fn history_independent(data in bytes(3000), cuts in prop::collection::vec(0usize..3000, 0..8), ls in prop::sample::select(vec![16usize, 32, 64, 128])) {
        let mem = Memory::new(Config { line_size: ls, capacity_lines: 1 << 14, map_capacity: 8, ..Config::default() }).unwrap();
        let direct = mem.segment(&data).unwrap();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        cuts.sort();
        let mut b = mem.builder();
        let mut at = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            b.append(&data[at..c]).unwrap();
            at = c;
        }
        let built = b.freeze();
        prop_assert_eq!(built.root(), direct.root());
        prop_assert_eq!(built.height(), direct.height());
        prop_assert_eq!(built.to_vec(), data);
    }
}

mod map_model {
    use std::collections::HashMap;

    use hicamp::{Config, Error, Memory, SegmentId};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum MapOp {
        Create(Vec<u8>),
        Write(usize, u16, Vec<u8>),
        Snapshot(usize),
        Delete(usize),
        Commit(usize, bool, Vec<u8>),
    }

    fn op() -> impl Strategy<Value = MapOp> {
        let d = || prop::collection::vec(prop_oneof![Just(0u8), Just(7u8), any::<u8>()], 0..200);
        let i = any::<prop::sample::Index>().prop_map(|x| x.index(1 << 16));
        prop_oneof![
            d().prop_map(MapOp::Create),
            (i.clone(), 0u16..300, d()).prop_map(|(a, b, c)| MapOp::Write(a, b, c)),
            i.clone().prop_map(MapOp::Snapshot),
            i.clone().prop_map(MapOp::Delete),
            (i, any::<bool>(), d()).prop_map(|(a, b, c)| MapOp::Commit(a, b, c)),
        ]
    }

    proptest! {
        #[test]
        fn segment_map_matches_model(ops in prop::collection::vec(op(), 1..50)) {
            let mem = Memory::new(Config { line_size: 32, capacity_lines: 1 << 14, map_capacity: 64, ..Config::default() }).unwrap();
            let map = mem.map();
            let mut model: HashMap<SegmentId, (Vec<u8>, u64)> = HashMap::new();
            for op in ops {
                let mut ids: Vec<SegmentId> = model.keys().copied().collect();
                ids.sort();
                match op {
                    MapOp::Create(d) => match map.create(&d) {
                        Ok(id) => { let v = map.entry(id).unwrap().version; model.insert(id, (d, v)); }
                        Err(e) => { let full = matches!(e, Error::MapFull { .. }); prop_assert!(full, "unexpected {}", e); }
                    },
                    _ if ids.is_empty() => {}
                    MapOp::Write(i, off, d) => {
                        let id = ids[i % ids.len()];
                        let v = map.write_at(id, u64::from(off), &d).unwrap();
                        let (m, mv) = model.get_mut(&id).unwrap();
                        prop_assert_eq!(v, *mv + 1);
                        *mv = v;
                        let off = off as usize;
                        if m.len() < off + d.len() { m.resize(off + d.len(), 0); }
                        m[off..off + d.len()].copy_from_slice(&d);
                    }
                    MapOp::Snapshot(i) => {
                        let id = ids[i % ids.len()];
                        if let Ok(s) = map.snapshot(id) {
                            let v = map.entry(s).unwrap().version;
                            let bytes = model[&id].0.clone();
                            model.insert(s, (bytes, v));
                        }
                    }
                    MapOp::Delete(i) => {
                        let id = ids[i % ids.len()];
                        map.delete(id).unwrap();
                        model.remove(&id);
                        prop_assert!(map.get(id).is_err());
                    }
                    MapOp::Commit(i, stale, d) => {
                        let id = ids[i % ids.len()];
                        let (m, mv) = model.get_mut(&id).unwrap();
                        let expected = if stale { *mv + 1 } else { *mv };
                        let seg = mem.segment(&d).unwrap();
                        match map.commit(id, expected, seg) {
                            Ok(v) => { prop_assert!(!stale); *mv = v; *m = d; }
                            Err(Error::Conflict { actual, .. }) => { prop_assert!(stale); prop_assert_eq!(actual, *mv); }
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                }
                for (id, (bytes, v)) in &model {
                    prop_assert_eq!(&map.get(*id).unwrap().to_vec(), bytes);
                    prop_assert_eq!(map.entry(*id).unwrap().version, *v);
                }
            }
            let ids: Vec<SegmentId> = model.keys().copied().collect();
            for id in ids { map.delete(id).unwrap(); }
            prop_assert_eq!(mem.live_lines(), 0);
            prop_assert_eq!(map.len(), 1, "only the directory is left");
        }
    }
}
