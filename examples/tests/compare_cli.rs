//! `hicamp compare --quick --json --plots`: the JSON's shape, the copy counts of each model,
//! the plots, and the recovery experiment's counts.

use std::process::Command;

use serde_json::Value;

#[test]
fn compare_quick_writes_json_plots_and_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("compare.json");
    let plots = tmp.path().join("plots");
    let files = tmp.path().join("files");
    let out = Command::new(env!("CARGO_BIN_EXE_hicamp"))
        .args(["compare", "--quick", "--json"])
        .arg(&json)
        .arg("--plots")
        .arg(&plots)
        .arg("--files")
        .arg(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("published PASTE"), "{stdout}");
    assert!(stdout.contains("Recovery"), "{stdout}");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    // 4 models x 3 workloads x 3 connection counts x 2 memories.
    assert_eq!(runs.len(), 72);
    for r in runs {
        let model = r["model"].as_str().unwrap();
        let workload = r["workload"].as_str().unwrap();
        assert!(["hicamp", "paste", "paste-copy", "linux"].contains(&model));
        assert!(["rpc", "wal", "wal-repeat"].contains(&workload));
        assert!([1, 50, 100].contains(&r["connections"].as_u64().unwrap()));
        assert!(["dram", "pm"].contains(&r["memory"].as_str().unwrap()));
        assert_eq!(r["kind"], "buffer-model");
        for k in [
            "req_per_s",
            "p99_us",
            "copied_bytes_per_req",
            "flushed_lines_per_req",
            "footprint_bytes",
        ] {
            assert!(r[k].is_number(), "{k} missing in {r}");
        }
        assert!(r["req_per_s"].as_f64().unwrap() > 0.0);
        let copied = r["copied_bytes_per_req"].as_f64().unwrap();
        if workload != "rpc" {
            match model {
                "hicamp" | "paste" => assert_eq!(copied, 0.0, "{r}"),
                _ => assert!(copied >= 1024.0, "{r}"),
            }
            assert!(r["flushed_lines_per_req"].as_f64().unwrap() >= 16.0, "{r}");
            assert!(r["footprint_bytes"].as_u64().unwrap() > 0, "{r}");
        }
        if model == "hicamp" {
            let ops = &r["line_ops"];
            assert!(ops["lines_written_per_req"].as_f64().unwrap() > 0.0);
            // Every request's parse window reads at least one line, on a path from the root.
            assert!(ops["lines_read_per_req"].as_f64().unwrap() >= 1.0, "{r}");
            assert!(
                ops["dag_nodes_visited_per_req"].as_f64().unwrap() >= 1.0,
                "{r}"
            );
        }
    }
    // PASTE holds whole 2 KiB buffers per record.
    let zc = runs
        .iter()
        .find(|r| r["model"] == "paste" && r["workload"] == "wal")
        .unwrap();
    assert!(zc["memory_per_record_bytes"].as_f64().unwrap() >= 2048.0);
    for f in ["reqs-wal-dram-buffer-model.svg", "footprint-wal.svg"] {
        let svg = std::fs::read_to_string(plots.join(f)).unwrap();
        assert!(svg.starts_with("<svg"), "{f}");
    }
    // HICAMP's whole path over the sim link: rpc, wal DRAM, wal PM at 1, 50, 100.
    let sim = v["sim_link"].as_array().unwrap();
    assert_eq!(sim.len(), 9);
    for r in sim {
        assert!(r["req_per_s"].as_f64().unwrap() > 0.0, "{r}");
        if r["workload"] == "wal" {
            assert!(r["records"].as_u64().unwrap() > 0, "{r}");
            assert!(r["fences_per_req"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    let rec = v["recovery"].as_array().unwrap();
    assert_eq!(rec.len(), 4);
    for r in rec {
        let acked = r["acknowledged"].as_u64().unwrap();
        assert!(acked > 0, "{r}");
        if r["model"] == "hicamp" {
            assert_eq!(r["recovered"].as_u64().unwrap(), acked, "{r}");
            assert_eq!(r["restarts"].as_u64().unwrap(), 1, "{r}");
        }
    }
}

#[test]
fn compare_rejects_an_unknown_child_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hicamp"))
        .args(["compare", "--serve-wal", "nosuch", "--files"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model"));
}

#[test]
fn a_run_killed_before_its_clean_up_leaves_nothing_for_long() {
    // A directory of a run that Ctrl-C stopped before its clean-up: named for
    // a process that has exited.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let stale = base.join(format!("hicamp-compare-{dead}"));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("paste.pool"), b"left behind").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hicamp"))
        .args(["compare", "--quick", "--no-recovery"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stale.exists(), "{} is still there", stale.display());
}
