//! Unbinding works in a full memory (issue 12, item 8): fill a memory of
//! 16-byte lines with named segments until it is full, then unbind every
//! name. Anonymous and file-backed.

use hicamp::{Config, Durability, Error, Memory};

fn cfg() -> Config {
    Config {
        line_size: 16,
        capacity_lines: 3000,
        map_capacity: 4096,
        durability: Durability::None,
        pm_write_latency_ns: 0,
    }
}

fn fill_then_unbind(m: &Memory) {
    let mut rng = testkit::Rng::new(8);
    let mut names = Vec::new();
    for i in 0.. {
        let name = format!("segment-number-{i:04}");
        let seg = match m.segment(&rng.bytes(300)) {
            Ok(s) => s,
            Err(Error::CapacityExhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        };
        match m.bind(&name, seg) {
            Ok(_) => names.push(name),
            Err(Error::CapacityExhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(names.len() >= 20, "{} names", names.len());
    // Fill the last lines with one-line entries: really full.
    let mut unnamed = 0;
    loop {
        match m.map().create(&rng.bytes(16)) {
            Ok(_) => unnamed += 1,
            Err(Error::CapacityExhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(
        m.segment(&rng.bytes(16)),
        Err(Error::CapacityExhausted { .. })
    ));
    // Unbind from the front: every later record moves, so each new
    // directory needs new lines.
    for n in &names {
        assert!(m.unbind(n).unwrap_or_else(|e| panic!("unbind {n}: {e}")));
    }
    assert!(m.names().unwrap().is_empty());
    assert_eq!(m.map().len(), 1 + unnamed, "the directory and the unnamed");
    // And the memory is usable again.
    m.bind("again", m.segment(&rng.bytes(300)).unwrap())
        .unwrap();
}

#[test]
fn unbind_every_name_in_a_full_anonymous_memory() {
    fill_then_unbind(&Memory::new(cfg()).unwrap());
}

#[test]
fn unbind_every_name_in_a_full_memory_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.hicamp");
    fill_then_unbind(&Memory::create(&p, cfg()).unwrap());
    let r = hicamp::fsck(&p).unwrap();
    assert!(r.is_consistent(), "{:?}", r.problems);
}
