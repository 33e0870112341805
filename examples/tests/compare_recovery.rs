//! The recovery experiment: SIGKILL each WAL server mid-run, reopen its files, count the
//! acknowledged records that come back intact. HICAMP must return every one; PASTE's
//! zero-copy log loses the bodies whose held buffers circular reuse recycled.

use std::path::Path;

use hicamp_examples::compare::models::ModelKind;
use hicamp_examples::compare::recovery::experiment;

#[test]
fn hicamp_recovers_every_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_hicamp"));
    for group in [true, false] {
        let r = experiment(exe, ModelKind::Hicamp, tmp.path(), 9, 300, group).unwrap();
        assert!(r.acknowledged >= 300, "{r:?}");
        assert_eq!(r.recovered, r.acknowledged, "{r:?}");
        assert_eq!(r.stale_records, 0, "{r:?}");
    }
}

#[test]
fn paste_zero_copy_loses_recycled_buffers() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_hicamp"));
    // 2400 acknowledgements: 800 extra buffers + 1024 RX slots keep fewer bodies than that.
    let r = experiment(exe, ModelKind::Paste, tmp.path(), 9, 2400, true).unwrap();
    assert!(r.acknowledged >= 2400, "{r:?}");
    assert!(r.lost > 0, "{r:?}");
    assert!(r.stale_records > 0, "{r:?}");
    assert!(r.recovered >= 800, "{r:?}");
    let r = experiment(exe, ModelKind::PasteCopy, tmp.path(), 9, 300, true).unwrap();
    assert_eq!(r.recovered, r.acknowledged, "{r:?}");
}
