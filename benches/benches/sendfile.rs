//! `sendfile` into segments, in place against the copy it replaces, same run:
//!
//! - **into segments**: a 64 MiB file (page cache warm; random lines, a quarter of them
//!   repeats of one MiB, a quarter zero) made into 64 segments of 1 MiB, as the shim's
//!   `sendfile` makes them: in place (`Memory::segment_from_reader` with `pread` writing into
//!   line slots) against `pread` into a 1 MiB buffer then `Memory::segment` of it (the copy),
//!   in a fresh memory (fresh runs of slots) and in a memory whose slots were used and freed
//!   before (slots reused, read run by run); rounds alternate, medians and the ratio;
//! - **download**: the kernel's curl fetching the file from a python server in stack mode that
//!   sends it with `os.sendfile` (in place), against the same with
//!   `HICAMP_STACK_SENDFILE=copy` (the buffered path: `pread`, then the counted copy); MB/s
//!   medians and the ratio. Needs root, iproute2, python3 and curl (skipped with a message
//!   otherwise; a failure under `CI=true`).
//!
//! ```sh
//! cargo bench -p hicamp-benches --bench sendfile      # 9 rounds
//! HICAMP_SENDFILE_BENCH_ROUNDS=15 cargo bench -p hicamp-benches --bench sendfile
//! HICAMP_SENDFILE_BENCH_ONLY=segments cargo bench -p hicamp-benches --bench sendfile  # or download
//! ```
//!
//! Under `cargo test --benches` every routine runs once on 4 MiB and the download is skipped.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hicamp::{Config, Memory, Segment};
use hicamp_benches::apps::{hicamp_with_shim, Reaper};
use hicamp_benches::{median, run_mode, RunMode};
use nicdma::tap::{netns_supported, NetNs};

const STEP: usize = 1 << 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The file's content: random MiBs, repeats of one MiB and zero MiBs.
fn content(len: usize) -> Vec<u8> {
    let block = hicamp_benches::random_bytes(STEP, 1);
    let mut v = Vec::with_capacity(len);
    let mut k = 0u64;
    while v.len() < len {
        match k % 4 {
            0 => v.extend_from_slice(&block),
            1 => v.resize(v.len() + STEP, 0),
            _ => v.extend(hicamp_benches::random_bytes(STEP, 100 + k)),
        }
        k += 1;
    }
    v.truncate(len);
    v
}

fn memory(len: usize) -> Memory {
    Memory::new(Config {
        capacity_lines: (len as u64 / 64) * 3,
        ..Config::default()
    })
    .expect("memory")
}

/// Builds the file's segments in place; the time.
fn in_place(mem: &Memory, f: &std::fs::File, len: usize) -> (Duration, Vec<Segment>) {
    let t = Instant::now();
    let mut reads = 0;
    let mut segs = Vec::with_capacity(len / STEP + 1);
    let mut at = 0u64;
    while (at as usize) < len {
        let want = STEP.min(len - at as usize) as u64;
        let mut pos = at;
        let r = mem
            .segment_from_reader(want, |buf| {
                let n = f.read_at(buf, pos)?;
                pos += n as u64;
                Ok(n)
            })
            .expect("in place");
        assert_eq!(r.counts.copied_bytes, 0);
        reads += r.counts.reads;
        at += r.segment.len();
        segs.push(r.segment);
    }
    let t = t.elapsed();
    READS.store(reads, std::sync::atomic::Ordering::Relaxed);
    (t, segs)
}

/// Reader calls of the last in-place build.
static READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Builds them through a buffer; the time.
fn copied(mem: &Memory, f: &std::fs::File, len: usize) -> (Duration, Vec<Segment>) {
    let t = Instant::now();
    let mut segs = Vec::with_capacity(len / STEP + 1);
    let mut buf = vec![0u8; STEP];
    let mut at = 0usize;
    while at < len {
        let want = STEP.min(len - at);
        let mut got = 0;
        while got < want {
            let n = f
                .read_at(&mut buf[got..want], (at + got) as u64)
                .expect("pread");
            assert!(n > 0);
            got += n;
        }
        segs.push(mem.segment(&buf[..want]).expect("segment"));
        at += want;
    }
    (t.elapsed(), segs)
}

fn into_segments(rounds: u64, len: usize) {
    let dir = tempfile_dir();
    let path = dir.join("sendfile-bench.bin");
    let data = content(len);
    std::fs::write(&path, &data).expect("write the file");
    let f = std::fs::File::open(&path).expect("open");
    // Warm the page cache.
    let mut sink = vec![0u8; STEP];
    let mut at = 0;
    while at < len {
        at += f.read_at(&mut sink, at as u64).expect("read").max(1);
    }
    for warm in [false, true] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (ma, mb) = (memory(len), memory(len));
        if warm {
            // Use and free every slot the file needs: the builds then reuse them.
            for m in [&ma, &mb] {
                drop(
                    m.segment(&hicamp_benches::random_bytes(len, 7))
                        .expect("fill"),
                );
            }
        }
        for r in 0..rounds {
            let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
            for k in order {
                if k == 0 {
                    let (t, segs) = in_place(&ma, &f, len);
                    if r == 0 {
                        let v: Vec<u8> = segs.iter().flat_map(|s| s.to_vec()).collect();
                        assert!(v == data, "in-place segments differ from the file");
                    }
                    a.push(t.as_secs_f64());
                    ma.release_segments(segs);
                } else {
                    let (t, segs) = copied(&mb, &f, len);
                    b.push(t.as_secs_f64());
                    mb.release_segments(segs);
                }
            }
        }
        let (ia, cb) = (median(&mut a), median(&mut b));
        let mib = len as f64 / (1 << 20) as f64;
        println!(
            "into segments, {} memory, {} MiB: in place {:.1} ms ({:.0} MiB/s, {} preads), pread + copy {:.1} ms ({:.0} MiB/s), in place / copy time {:.2}",
            if warm { "reused" } else { "fresh" },
            mib,
            ia * 1e3,
            mib / ia,
            READS.load(std::sync::atomic::Ordering::Relaxed),
            cb * 1e3,
            mib / cb,
            ia / cb
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("hicamp-sendfile-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temporary directory");
    d
}

/// Serves `argv[2]` once with `os.sendfile` (a probe connection that sends nothing is
/// skipped).
const SERVER: &str = r#"
import os, socket, sys
ip, path = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, 8080)); s.listen(8)
while True:
    c, _ = s.accept()
    req = b""
    while b"\r\n\r\n" not in req:
        d = c.recv(4096)
        if not d:
            break
        req += d
    if not req:
        c.close()
        continue
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    with open(path, "rb") as f:
        sent = 0
        while sent < size:
            sent += os.sendfile(c.fileno(), f.fileno(), sent, size - sent)
    c.shutdown(socket.SHUT_WR)
    while c.recv(4096):
        pass
    c.close()
    break
"#;

/// One download of `file` by the kernel's curl from the stack-mode server; seconds.
fn download_once(ns: &NetNs, hicamp: &Path, file: &Path, copy: bool) -> Result<f64, String> {
    let (tap, net) = ("tsfbench0", "10.122.0");
    let mut c = ns.command(hicamp.to_str().ok_or("path")?);
    c.args([
        "run",
        "--mode",
        "stack",
        "--backend",
        &format!("tap:{tap}"),
        "--ip",
        &format!("{net}.2/24"),
        "--host-ip",
        &format!("{net}.1/24"),
        "--",
        "python3",
        "-c",
        SERVER,
        &format!("{net}.2"),
        file.to_str().ok_or("path")?,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if copy {
        c.env("HICAMP_STACK_SENDFILE", "copy");
    } else {
        c.env_remove("HICAMP_STACK_SENDFILE");
    }
    let mut srv = Reaper(c.spawn().map_err(|e| e.to_string())?);
    let probe =
        format!("import socket; socket.create_connection(('{net}.2', 8080), timeout=1).close()");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = ns
            .command("python3")
            .args(["-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
        if Instant::now() > deadline {
            return Err("the server never listened".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = ns
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "120",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total} %{size_download}",
            &format!("http://{net}.2:8080/blob"),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = text.split_whitespace();
    let secs: f64 = it.next().and_then(|s| s.parse().ok()).ok_or(text.clone())?;
    let size: u64 = it.next().and_then(|s| s.parse().ok()).ok_or(text.clone())?;
    let want = std::fs::metadata(file).map_err(|e| e.to_string())?.len();
    if size != want {
        return Err(format!("downloaded {size} of {want} bytes"));
    }
    let _ = srv.0.wait();
    Ok(secs)
}

fn download(rounds: u64, len: usize) {
    if testkit::require(netns_supported(), "root and iproute2")
        || testkit::require_program("curl", "--version")
        || testkit::require_program("python3", "--version")
    {
        return;
    }
    let hicamp = match hicamp_with_shim() {
        Ok(h) => h,
        Err(e) => panic!("{e}"),
    };
    let ns = NetNs::create().expect("namespace");
    let dir = tempfile_dir();
    let file = dir.join("blob");
    std::fs::write(&file, content(len)).expect("write the file");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for copy in order {
            let t = download_once(&ns, &hicamp, &file, copy).expect("download");
            if copy {
                b.push(t);
            } else {
                a.push(t);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mb = len as f64 / 1e6;
    let (ia, cb) = (median(&mut a), median(&mut b));
    println!(
        "download {} MiB, sendfile in stack mode to the kernel's curl: in place {:.0} MB/s, copy {:.0} MB/s, ratio {:.2}",
        len >> 20,
        mb / ia,
        mb / cb,
        cb / ia
    );
}

fn main() {
    let test = run_mode() == RunMode::Test;
    let rounds = if test {
        1
    } else {
        env_u64("HICAMP_SENDFILE_BENCH_ROUNDS", 9)
    };
    let len = if test { 4 << 20 } else { 64 << 20 };
    let only = std::env::var("HICAMP_SENDFILE_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "segments" {
        into_segments(rounds, len);
    }
    if !test && (only.is_empty() || only == "download") {
        download(rounds, len);
    }
}
