//! `hicamp dedup`, run as a program.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use hicamp::footprint::zero_line_bytes;
use serde_json::Value;
use testkit::Rng;

const ALL_LINE_SIZES: [u64; 9] = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

fn hicamp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hicamp"))
        .args(args)
        .output()
        .expect("run the hicamp binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs with `--json`, checks success and no panic, and parses stdout.
fn dedup_json(args: &[&str]) -> (Value, String) {
    let mut all = vec!["dedup", "--json"];
    all.extend_from_slice(args);
    let o = hicamp(&all);
    let err = stderr(&o);
    assert!(o.status.success(), "{args:?} failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let text = String::from_utf8(o.stdout).expect("UTF-8 output");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    (v, err)
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a u64 in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"));
    assert!(x.is_finite(), "{key} = {x}");
    x
}

fn line_sizes(v: &Value) -> &Vec<Value> {
    v["line_sizes"].as_array().expect("line_sizes array")
}

/// A memory big enough for the tests (`Config::with_line_size` reserves 2^24 lines, 64 GiB of
/// address space at 4 KiB lines).
fn config(line_size: usize) -> hicamp::Config {
    hicamp::Config {
        line_size,
        capacity_lines: 1 << 20,
        map_capacity: 16,
        ..hicamp::Config::default()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

#[test]
fn same_file_twice_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let data = Rng::new(1).bytes(1 << 20);
    fs::write(dir.path().join("a.bin"), &data).unwrap();
    fs::write(dir.path().join("b.bin"), &data).unwrap();
    let small = Rng::new(2).bytes(3000);
    fs::write(dir.path().join("small.bin"), &small).unwrap();
    let total = 2 * data.len() as u64 + small.len() as u64;

    let (v, _) = dedup_json(&[path_str(dir.path())]);
    assert_eq!(u(&v["input"], "files"), 3);
    assert_eq!(u(&v["input"], "bytes"), total);
    assert_eq!(u(&v["input"], "skipped"), 0);
    let ls = line_sizes(&v);
    assert_eq!(ls.len(), 9);
    for (r, want) in ls.iter().zip(ALL_LINE_SIZES) {
        let line = u(r, "line_size");
        assert_eq!(line, want);
        assert_eq!(u(r, "logical_bytes"), total, "line size {line}");
        assert_eq!(
            u(r, "footprint_bytes"),
            u(r, "physical_bytes") + u(r, "metadata_bytes")
        );
        if line >= 1024 {
            // The second copy costs no line: physical is one copy plus a few lines.
            let unique = data.len() as u64 + small.len() as u64;
            assert!(
                u(r, "physical_bytes") <= unique + unique / 50,
                "line size {line}: {r}"
            );
            // ~1.9: two copies over one, less the memory's fixed metadata (its dedup index
            // and reference-count batches, ~64 KiB whatever the data) on a 1 MiB payload.
            let ratio = f(r, "dedup_ratio");
            assert!(ratio >= 1.85, "line size {line}: ratio {ratio}");
        }
    }
    let p = &v["page_baseline"];
    assert_eq!(u(p, "logical_bytes"), total);
    assert_eq!(u(p, "pages"), 2 * 256 + 1);
    assert_eq!(u(p, "unique_pages"), 256 + 1);
    assert!(f(p, "dedup_ratio") > 1.9);
}

#[test]
fn default_workload_is_deterministic() {
    let a = hicamp(&["dedup", "--json"]);
    assert!(a.status.success(), "{}", stderr(&a));
    let b = hicamp(&["dedup", "--json", "--threads", "1"]);
    assert!(b.status.success(), "{}", stderr(&b));
    // Everything but the run's time and memory.
    let without_run = |o: &Output| {
        let mut v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(v["run"]["elapsed_seconds"].as_f64().is_some(), "{v}");
        let o = v.as_object_mut().unwrap();
        o.remove("run");
        let cpu = o.remove("cpu").expect("a cpu report on Linux");
        assert!(
            cpu["ns_per_byte"].as_f64().is_some_and(|x| x > 0.0),
            "{cpu}"
        );
        v
    };
    assert_eq!(
        without_run(&a),
        without_run(&b),
        "same JSON across runs and thread counts"
    );
    let v: Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(v["input"]["source"], "default_workload");
    let files = u(&v["input"], "files");
    let bytes = u(&v["input"], "bytes");
    assert!(files > 100 && bytes > 16 << 20, "{}", v["input"]);
    let ls = line_sizes(&v);
    let got: Vec<u64> = ls.iter().map(|r| u(r, "line_size")).collect();
    assert_eq!(got, ALL_LINE_SIZES);
    for r in ls {
        assert_eq!(u(r, "logical_bytes"), bytes);
        let ratio = f(r, "dedup_ratio");
        let excl = f(r, "dedup_ratio_excl_zero");
        assert!(ratio > 1.0 && excl <= ratio, "{r}");
        assert!(u(r, "zero_bytes") <= bytes);
        for key in [
            "leaf_lines",
            "interior_lines",
            "dedup_hits",
            "metadata_bytes",
        ] {
            u(r, key);
        }
    }
    let p = &v["page_baseline"];
    assert_eq!(u(p, "page_size"), 4096);
    assert_eq!(u(p, "logical_bytes"), bytes);
    f(p, "dedup_ratio");
    f(p, "dedup_ratio_excl_zero");
}

#[test]
fn human_output_describes_the_input() {
    let o = hicamp(&["dedup", "--line-sizes", "64,4096"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("built-in default workload"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("64 B ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("4096 B ")), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("16 B ")), "{text}");
    assert!(text.contains("KSM"), "{text}");
}

#[test]
fn nonexistent_path_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-file");
    let o = hicamp(&["dedup", path_str(&missing)]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("no-such-file"), "{err}");
    assert!(err.contains("cannot access"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn empty_directory_has_finite_ratios() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub/empty-file"), b"").unwrap();
    let o = hicamp(&["dedup", "--json", path_str(dir.path())]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    for bad in ["NaN", "null", "inf"] {
        assert!(!text.contains(bad), "{bad} in {text}");
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(u(&v["input"], "bytes"), 0);
    assert_eq!(u(&v["input"], "files"), 1);
    assert_eq!(line_sizes(&v).len(), 9);
    for r in line_sizes(&v) {
        assert_eq!(u(r, "logical_bytes"), 0);
        assert_eq!(f(r, "dedup_ratio"), 1.0);
        assert_eq!(f(r, "dedup_ratio_excl_zero"), 1.0);
    }
    let p = &v["page_baseline"];
    assert_eq!(f(p, "dedup_ratio"), 1.0);
    assert_eq!(u(p, "pages"), 0);
}

/// A file longer than one read chunk (4 MiB), with repeats and zero runs: the streamed
/// segments hold exactly the lines of the one-shot canonical DAG, and the zero bytes match.
#[test]
fn streamed_big_file_matches_one_shot() {
    let dir = tempfile::tempdir().unwrap();
    let block = Rng::new(3).bytes(1 << 20);
    let mut data = Vec::new();
    for i in 0..9 {
        if i % 3 == 2 {
            data.resize(data.len() + 700_001, 0);
        } else {
            data.extend_from_slice(&block);
        }
    }
    data.extend_from_slice(&Rng::new(4).bytes(12_345));
    let tail = [0u8; 100];
    fs::write(dir.path().join("big"), &data).unwrap();
    fs::write(dir.path().join("tail"), tail).unwrap();

    let (v, _) = dedup_json(&["--line-sizes", "16,64,4096", path_str(dir.path())]);
    let ls = line_sizes(&v);
    assert_eq!(ls.len(), 3);
    for r in ls {
        let line = u(r, "line_size") as usize;
        let mem = hicamp::Memory::new(config(line)).unwrap();
        let _a = mem.segment(&data).unwrap();
        let _b = mem.segment(&tail).unwrap();
        let s = mem.stats();
        assert_eq!(u(r, "logical_bytes"), s.logical_bytes);
        assert_eq!(u(r, "leaf_lines"), s.leaf_lines, "line size {line}");
        assert_eq!(u(r, "interior_lines"), s.interior_lines, "line size {line}");
        assert_eq!(u(r, "physical_bytes"), s.physical_bytes);
        let zero = zero_line_bytes(&data, line) + zero_line_bytes(&tail, line);
        assert_eq!(u(r, "zero_bytes"), zero, "line size {line}");
    }
    let p = &v["page_baseline"];
    let mut pd = hicamp_examples::experiments::pagededup::PageDedup::new(4096);
    pd.add(&data);
    pd.add(&tail);
    let want = pd.report();
    assert_eq!(u(p, "pages"), want.pages);
    assert_eq!(u(p, "unique_pages"), want.unique_pages);
    assert_eq!(u(p, "zero_pages"), want.zero_pages);
    assert_eq!(u(p, "logical_bytes"), want.logical_bytes);
    assert!((f(p, "dedup_ratio") - want.dedup_ratio).abs() < 1e-12);
    assert!((f(p, "dedup_ratio_excl_zero") - want.dedup_ratio_excl_zero).abs() < 1e-12);
}

#[test]
fn capacity_exhausted_is_an_error_not_a_panic() {
    let o = hicamp(&[
        "dedup",
        "--line-sizes",
        "64",
        "--capacity-lines",
        "100",
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("capacity exhausted"), "{err}");
    assert!(err.contains("line size 64"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_line_size_is_a_usage_error() {
    for bad in ["48", "8", "8192", "x"] {
        let o = hicamp(&["dedup", "--line-sizes", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains("--line-sizes"), "{bad}: {}", stderr(&o));
    }
}

#[cfg(unix)]
#[test]
fn links_loops_and_unreadable_files_are_handled() {
    use std::os::unix::fs::{symlink, PermissionsExt};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("sub")).unwrap();
    let data = Rng::new(5).bytes(10_000);
    fs::write(root.join("sub/file"), &data).unwrap();
    symlink("..", root.join("sub/up")).unwrap(); // a loop
    symlink("file", root.join("sub/alias")).unwrap(); // the same file again
    fs::hard_link(root.join("sub/file"), root.join("hard")).unwrap(); // and again
    symlink("nowhere", root.join("dangling")).unwrap();
    let secret = root.join("secret");
    fs::write(&secret, b"unreadable").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    // Privileged users read it anyway; then it is ingested.
    let secret_readable = fs::read(&secret).is_ok();

    // By default the three links below the operand are not followed.
    let (v, _) = dedup_json(&["--line-sizes", "64", path_str(root)]);
    assert_eq!(u(&v["input"], "links_not_followed"), 3, "{}", v["input"]);
    assert_eq!(u(&v["input"], "duplicates"), 1, "the hard link");

    let (v, err) = dedup_json(&["--line-sizes", "64", "--follow-links", path_str(root)]);
    let input = &v["input"];
    assert_eq!(u(input, "duplicates"), 3, "{input}");
    assert!(err.contains("dangling"), "{err}");
    assert!(err.contains("loop"), "{err}");
    if secret_readable {
        assert_eq!(u(input, "files"), 2);
        assert_eq!(u(input, "skipped"), 1, "the dangling link");
    } else {
        assert!(err.contains("secret"), "{err}");
        assert_eq!(u(input, "files"), 1);
        assert_eq!(
            u(input, "skipped"),
            2,
            "the dangling link and the unreadable file"
        );
    }
    let expect = data.len() as u64 + if secret_readable { 10 } else { 0 };
    assert_eq!(u(input, "bytes"), expect);
    assert_eq!(u(&line_sizes(&v)[0], "logical_bytes"), expect);
}

/// `/proc/self` is followed (an operand), but its `root` link to `/` is not: the walk stays
/// small, its pseudo-files (size 0) are read to their end, and links are counted.
#[test]
fn proc_self_does_not_walk_the_machine() {
    let (v, _err) = dedup_json(&["--line-sizes", "64", "/proc/self"]);
    let input = &v["input"];
    assert!(u(input, "links_not_followed") > 0, "{input}");
    assert!(
        u(input, "bytes") < 64 << 20,
        "read {} bytes: the walk left /proc/self",
        u(input, "bytes")
    );
    // /proc/self/status reports size 0 but has content: read to EOF.
    assert!(u(input, "bytes") > 0, "{input}");
}

/// Links below an operand are followed only with --follow-links; other file systems are
/// entered only with --cross-file-systems.
#[test]
fn links_below_operands_are_not_followed_by_default() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let target = tempfile::tempdir().unwrap();
    fs::write(target.path().join("f"), Rng::new(9).bytes(10_000)).unwrap();
    symlink(target.path(), root.join("elsewhere")).unwrap();
    fs::write(root.join("own"), Rng::new(10).bytes(5_000)).unwrap();

    let (v, _) = dedup_json(&["--line-sizes", "64", path_str(root)]);
    assert_eq!(u(&v["input"], "bytes"), 5_000);
    assert_eq!(u(&v["input"], "links_not_followed"), 1);
    let (v, _) = dedup_json(&["--line-sizes", "64", "-L", path_str(root)]);
    assert_eq!(u(&v["input"], "bytes"), 15_000);
    assert_eq!(u(&v["input"], "links_not_followed"), 0);
}

/// An operand that cannot be read, and a closed stdout, end with a non-zero status.
#[test]
fn unreadable_operand_and_closed_stdout_fail() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret");
    fs::write(&f, b"x").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o000)).unwrap();
    if fs::read(&f).is_err() {
        let out = hicamp(&["dedup", "-q", path_str(&f)]);
        assert!(!out.status.success(), "an unreadable sole operand exits 0");
    }
    // Root reads every file: a path through a file fails for everyone.
    let out = hicamp(&["dedup", "-q", &format!("{}/under", f.display())]);
    assert!(!out.status.success());

    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' dedup -q --line-sizes 64 '{}' >&-",
            env!("CARGO_BIN_EXE_hicamp"),
            dir.path().display()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a closed stdout exits 0");
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard output is closed"));
}

/// Runs `hicamp dedup --json ARGS` with `input` on standard input.
fn dedup_stdin(args: &[&str], input: Vec<u8>) -> Value {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hicamp"))
        .args(["dedup", "--json"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn stdin_and_tar_streams() {
    let mut rng = Rng::new(11);
    let a: Vec<u8> = (0..50_000).map(|_| rng.byte()).collect();
    // Standard input is one file.
    let v = dedup_stdin(&["--line-sizes", "64", "-"], a.clone());
    assert_eq!(u(&v["input"], "files"), 1);
    assert_eq!(u(&v["input"], "bytes"), a.len() as u64);
    assert_eq!(v["method"], "fingerprint");
    // A tar stream: each regular member is one file; the same member twice dedups.
    let mut tar = tar::Builder::new(Vec::new());
    for name in ["x/a", "x/b"] {
        let mut h = tar::Header::new_gnu();
        h.set_size(a.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, &a[..]).unwrap();
    }
    let archive = tar.into_inner().unwrap();
    let v = dedup_stdin(&["--tar", "--line-sizes", "64", "-"], archive.clone());
    assert_eq!(u(&v["input"], "files"), 2);
    assert_eq!(u(&v["input"], "bytes"), 2 * a.len() as u64);
    let r = &line_sizes(&v)[0];
    assert_eq!(u(r, "leaf_lines"), (a.len() as u64).div_ceil(64));
    let cdc = v["cdc"].as_array().unwrap();
    assert_eq!(cdc.len(), 3);
    for c in cdc {
        assert_eq!(u(c, "chunks"), 2 * u(c, "unique_chunks"), "{c}");
    }
    // The same archive as a file operand.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.tar");
    fs::write(&path, &archive).unwrap();
    let (w, _) = dedup_json(&["--tar", "--line-sizes", "64", path_str(&path)]);
    assert_eq!(w["line_sizes"], v["line_sizes"]);
}

#[test]
fn skipped_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("data"), vec![7u8; 10_000]).unwrap();
    let fifo = dir.path().join("a-fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) && testkit::skip("mkfifo failed") {
        return;
    }
    let (v, _) = dedup_json(&["--line-sizes", "64", path_str(dir.path())]);
    assert_eq!(u(&v["input"], "skipped"), 1);
    let names = v["input"]["unreadable"].as_array().unwrap();
    assert_eq!(names.len(), 1);
    assert!(names[0].as_str().unwrap().ends_with("a-fifo"), "{names:?}");
    let o = hicamp(&["dedup", "--line-sizes", "64", path_str(dir.path())]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("unreadable: '") && text.contains("a-fifo"),
        "{text}"
    );
    assert!(text.contains("CDC (FastCDC)"), "{text}");
}

/// A directory on another file system (here one on /dev/shm, reached through a followed
/// link) is not entered unless --cross-file-systems is given; it is counted either way.
#[test]
fn other_file_systems_are_entered_only_when_asked() {
    use std::os::unix::fs::{symlink, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let shm = match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(e) => {
            testkit::skip(format!("needs a directory on /dev/shm: {e}"));
            return;
        }
    };
    let dev = |p: &Path| fs::metadata(p).unwrap().dev();
    if dev(dir.path()) == dev(shm.path())
        && testkit::skip("the temporary directory and /dev/shm are on one file system")
    {
        return;
    }
    fs::write(dir.path().join("own"), Rng::new(11).bytes(5_000)).unwrap();
    fs::write(shm.path().join("there"), Rng::new(12).bytes(7_000)).unwrap();
    symlink(shm.path(), dir.path().join("to-shm")).unwrap();
    let root = path_str(dir.path());

    let (v, err) = dedup_json(&["--line-sizes", "64", "-L", root]);
    assert_eq!(u(&v["input"], "bytes"), 5_000, "{}", v["input"]);
    assert_eq!(u(&v["input"], "other_file_systems"), 1, "{}", v["input"]);
    assert!(err.contains("another file system"), "{err}");
    let (v, _) = dedup_json(&["--line-sizes", "64", "-L", "--cross-file-systems", root]);
    assert_eq!(u(&v["input"], "bytes"), 12_000, "{}", v["input"]);
    assert_eq!(u(&v["input"], "other_file_systems"), 0, "{}", v["input"]);
    // Without -L the link is not followed at all.
    let (v, _) = dedup_json(&["--line-sizes", "64", "--cross-file-systems", root]);
    assert_eq!(u(&v["input"], "bytes"), 5_000);
    assert_eq!(u(&v["input"], "links_not_followed"), 1);
}

/// Files (whose sizes are known, so the sets are sized from them) stay under the memory
/// budget too: 256 MiB of generated data, half of it distinct, with a budget that forces
/// sampling.
#[test]
fn files_stay_under_the_budget() {
    const TOTAL: usize = 256 << 20;
    let budget: u64 = 120 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(fs::File::create(&path).unwrap());
        let block = 4 << 20;
        let mut rng = Rng::new(21);
        let mut first = Vec::new();
        for i in 0..TOTAL / block {
            match i % 4 {
                0 | 1 => {
                    let b = rng.bytes(block);
                    if first.is_empty() {
                        first = b.clone();
                    }
                    f.write_all(&b).unwrap();
                }
                2 => f.write_all(&first).unwrap(),
                _ => f.write_all(&vec![0u8; block]).unwrap(),
            }
        }
    }
    let (v, _) = dedup_json(&[
        "-q",
        "--line-sizes",
        "16,64,4096",
        "--memory",
        &budget.to_string(),
        path_str(&path),
    ]);
    assert_eq!(u(&v["input"], "bytes"), TOTAL as u64);
    assert_eq!(v["sampled"], Value::Bool(true), "{}", v["line_estimates"]);
    let rss = u(&v["run"], "peak_rss_bytes");
    assert!(
        rss > 0 && rss <= budget,
        "peak RSS {rss} over the budget {budget}"
    );
    assert!(u(&v, "set_peak_bytes") <= budget);
    // The 16 B lines: 1/2 of 16 Mi lines distinct, plus interior lines; within the interval.
    let e = &v["line_estimates"][0];
    assert!(f(e, "sample_rate") < 1.0, "{e}");
    let l = &line_sizes(&v)[0];
    let leaves = u(l, "leaf_lines") as f64;
    let want = (TOTAL / 2 / 16) as f64;
    assert!(
        (leaves - want).abs() / want <= 3.0 * f(e, "rel_err_95"),
        "{leaves} leaves, want {want}: {e}"
    );
}

/// On a terminal the progress bar shows the bytes read, the rate and an ETA (run under
/// `script`, which gives the program a pseudo-terminal).
#[test]
fn progress_bar_shows_rate_and_eta() {
    if testkit::require_program("script", "--version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    fs::write(&path, Rng::new(31).bytes(48 << 20)).unwrap();
    let cmd = format!(
        "'{}' dedup --line-sizes 16,4096 '{}' >/dev/null",
        env!("CARGO_BIN_EXE_hicamp"),
        path_str(&path)
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let screen = String::from_utf8_lossy(&o.stdout);
    let bar = screen
        .split(['\r', '\n'])
        .find(|l| l.contains("reading") && l.contains("/48.00 MiB"))
        .unwrap_or_else(|| panic!("no progress line with the input's size in {screen:?}"));
    assert!(bar.contains("/s"), "no rate in {bar:?}");
    assert!(bar.contains("eta "), "no ETA in {bar:?}");
}
