//! The buffer-model runs in process: zero-copy models copy no WAL payload byte, copy models at
//! least the body; PASTE holds a whole buffer per record.

use std::time::Duration;

use hicamp_examples::compare::models::ModelKind;
use hicamp_examples::compare::traffic::{Traffic, Workload};
use hicamp_examples::compare::{run_one, MemKind, Options};

#[test]
fn copies_and_flushes_per_model() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = Options::quick_in(tmp.path().to_path_buf());
    opts.max_requests = 400;
    opts.budget = Duration::from_secs(5);
    for w in [Workload::Wal, Workload::WalRepeat] {
        let traffic = Traffic::new(w, 400, 3);
        for m in ModelKind::ALL {
            let (r, series) = run_one(m, w, 10, MemKind::Dram, &traffic, &opts).unwrap();
            assert_eq!(r.requests, 400, "{r:?}");
            assert_eq!(r.records, 400, "{r:?}");
            match m {
                ModelKind::Hicamp | ModelKind::Paste => {
                    assert_eq!(r.copied_bytes_per_req, 0.0, "{r:?}")
                }
                ModelKind::PasteCopy => assert_eq!(r.copied_bytes_per_req, 1024.0, "{r:?}"),
                ModelKind::Linux => assert_eq!(r.copied_bytes_per_req, 1156.0 + 1024.0, "{r:?}"),
            }
            // The 1 KiB body covers at least 16 lines.
            assert!(r.flushed_lines_per_req >= 16.0, "{r:?}");
            assert!(r.fences_per_req > 0.0, "{r:?}");
            if m == ModelKind::Paste {
                assert_eq!(r.footprint_bytes, 400 * (2048 + 8), "{r:?}");
                // One fence per batch of 10.
                assert!((r.fences_per_req - 0.1).abs() < 1e-9, "{r:?}");
            }
            assert!(series.points.last().unwrap().1 == r.footprint_bytes);
        }
    }
}

#[test]
fn rpc_logs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = Options::quick_in(tmp.path().to_path_buf());
    opts.max_requests = 200;
    let traffic = Traffic::new(Workload::Rpc, 0, 3);
    for m in ModelKind::ALL {
        let (r, _) = run_one(m, Workload::Rpc, 5, MemKind::Pm, &traffic, &opts).unwrap();
        assert_eq!(r.records, 0, "{r:?}");
        assert_eq!(r.fences_per_req, 0.0, "{r:?}");
    }
}
