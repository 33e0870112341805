//! `hicamp compare --end-to-end` (root and wrk): wrk against phttpd on segstack over TAP and a
//! kernel epoll server over veth, in namespaces the command creates and removes.

use std::process::Command;

use hicamp_examples::compare::end_to_end::available;
use serde_json::Value;

#[test]
fn end_to_end_runs_have_wrk_figures() {
    if testkit::require(available(), "root and wrk") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("c.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hicamp"))
        .args([
            "compare",
            "--quick",
            "--no-recovery",
            "--end-to-end",
            "--json",
        ])
        .arg(&json)
        .arg("--files")
        .arg(tmp.path().join("files"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let e2e: Vec<&Value> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "end-to-end")
        .collect();
    // hicamp and linux; rpc dram, wal dram, wal pm; 1, 50, 100 connections.
    assert_eq!(e2e.len(), 18);
    for r in e2e {
        assert!(r["req_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["p99_us"].as_f64().unwrap() > 0.0, "{r}");
        if r["workload"] == "wal" {
            assert!(r["records"].as_u64().unwrap() > 0, "{r}");
        }
    }
}
