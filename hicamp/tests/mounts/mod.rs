//! File systems a test mounts for itself (root only): a size-limited tmpfs
//! or a loop-mounted ext4 image, each under its own temporary directory and
//! unmounted (lazily, if busy) and removed when dropped, however the test
//! ends.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Serialises the tests of one binary that fork (mount, cp, the CLI): a
/// child forked by one test holds, until it execs, the descriptors another
/// test just closed, and with them the file's lock.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `Ok` when running as root.
pub fn root() -> Result<(), &'static str> {
    if testkit::is_root() {
        Ok(())
    } else {
        Err("not root")
    }
}

pub struct Mount {
    dir: tempfile::TempDir,
    mounted: bool,
    _image: Option<tempfile::TempDir>,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Mount {
    /// A tmpfs of `size` (as `mount -o size=`).
    pub fn tmpfs(size: &str) -> Result<Mount, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("hicamp-test")
            .arg(dir.path()))?;
        Ok(Mount {
            dir,
            mounted: true,
            _image: None,
        })
    }

    /// An ext4 file system of `mib` MiB in an image file, loop-mounted.
    pub fn ext4(mib: u64) -> Result<Mount, String> {
        let image = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = image.path().join("fs.img");
        let f = std::fs::File::create(&img).map_err(|e| e.to_string())?;
        f.set_len(mib << 20).map_err(|e| e.to_string())?;
        drop(f);
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(dir.path()))?;
        Ok(Mount {
            dir,
            mounted: true,
            _image: Some(image),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_buf(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Remounts read-only.
    pub fn remount_ro(&self) -> Result<(), String> {
        run(Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.dir.path()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            if run(Command::new("umount").arg(self.dir.path())).is_err() {
                let _ = run(Command::new("umount").arg("-l").arg(self.dir.path()));
            }
            self.mounted = false;
        }
    }
}
