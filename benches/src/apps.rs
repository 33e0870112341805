//! For the benches that run applications under the shim: the `hicamp` launcher and the shim
//! of this build's profile, and a child process that cannot outlive its bench.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// `hicamp` of this build's profile (the directory of the running bench's executable), with
/// the shim beside it; both are built first (`cargo build`, `--release` for a release
/// directory). Two builds: `--bin hicamp` alone would leave the shim's library out.
pub fn hicamp_with_shim() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace")?;
    for args in [
        &["build", "-q", "-p", "libc-shim"][..],
        &["build", "-q", "-p", "hicamp-examples", "--bin", "hicamp"][..],
    ] {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(args).current_dir(workspace);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo build failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let h = dir.join("hicamp");
    if h.is_file() && dir.join("liblibc_shim.so").is_file() {
        Ok(h)
    } else {
        Err(format!("{} or the shim was not built", h.display()))
    }
}

/// Kills and reaps a child on drop.
#[derive(Debug)]
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
