//! The namespace lab (test support, built for tests and with the
//! `test-support` feature): a private network namespace per test, made and
//! removed with iproute2's `ip`, that a TAP device moves into.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::sys;

/// Errors of the namespace helper.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// Namespaces and TAP devices need root here.
    #[error("not root (effective uid {0})")]
    NotRoot(u32),
    /// A command could not be started (iproute2 missing?).
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A command failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// How it ended.
        status: ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// A command's output was not what was expected.
    #[error("`{cmd}`: unexpected output: {output}")]
    Parse {
        /// The command line.
        cmd: String,
        /// The output.
        output: String,
    },
    /// Opening or entering the namespace failed.
    #[error("entering namespace {ns}: {source}")]
    Enter {
        /// The namespace.
        ns: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Checks that [`NetNs`] and [`TapPort`] can work here: root and iproute2's
/// `ip`. Tests skip (with a message) when this fails.
pub fn netns_supported() -> Result<(), NetNsError> {
    let euid = sys::geteuid();
    if euid != 0 {
        return Err(NetNsError::NotRoot(euid));
    }
    ip(&["-V"]).map(drop)
}

/// Runs `ip args...`; returns its standard output.
fn ip(args: &[&str]) -> Result<String, NetNsError> {
    let cmd = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetNsError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetNsError::Failed {
            cmd,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const NETNS_PREFIX: &str = "nicdma-";

/// Deletes namespaces `nicdma-<pid>-<n>` left behind by processes that are gone
/// (killed before their `Drop` ran).
fn reap_stale_namespaces() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Counters of a link as its namespace's kernel counts them: `rx` is what
/// the kernel received (frames a [`TapPort`] transmitted), `tx` what it sent
/// (frames for the port to receive; `tx_dropped` overflowed its queue).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames received by the kernel.
    pub rx_packets: u64,
    /// Frames the kernel dropped on receive.
    pub rx_dropped: u64,
    /// Frames sent by the kernel.
    pub tx_packets: u64,
    /// Frames the kernel dropped on send (queue full).
    pub tx_dropped: u64,
}

/// Finds `"key":<number>` after `"section":{` in iproute2's JSON.
fn json_counter(json: &str, section: &str, key: &str) -> Option<u64> {
    let rest = &json[json.find(&format!("\"{section}\":{{"))?..];
    let rest = &rest[rest.find(&format!("\"{key}\":"))? + key.len() + 3..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A private network namespace `nicdma-<pid>-<n>`, deleted on drop (also
/// when a test panics). Creating one needs root and iproute2
/// ([`netns_supported`]).
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    /// Creates a namespace (with its loopback up), first deleting the
    /// namespaces of earlier runs that were killed.
    pub fn create() -> Result<NetNs, NetNsError> {
        reap_stale_namespaces();
        let n = NEXT_NETNS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> args...` and returns its standard output.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetNsError> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec <ns> program`); add arguments and spawn it.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Moves the device `dev` (e.g. a [`TapPort`]'s, whose descriptor keeps
    /// working) into the namespace, gives it the address `cidr` if any (like
    /// `"10.77.1.1/24"`) and brings it up. IPv6 address generation is turned
    /// off on it, so the only traffic is what the caller makes.
    pub fn adopt(&self, dev: &str, cidr: Option<&str>) -> Result<(), NetNsError> {
        ip(&["link", "set", "dev", dev, "netns", &self.name])?;
        self.ip(&["link", "set", "dev", dev, "addrgenmode", "none"])?;
        if let Some(cidr) = cidr {
            self.ip(&["addr", "add", cidr, "dev", dev])?;
        }
        self.ip(&["link", "set", "dev", dev, "up"])?;
        Ok(())
    }

    /// Makes a veth pair inside the namespace: `kernel` (the kernel's end,
    /// with address `kernel_cidr`) and `ours` (no address: a port binds it).
    /// Both are up, with IPv6 address generation off. With `no_offloads`,
    /// the kernel end's checksum and segmentation offloads are turned off
    /// (`ethtool -K kernel tx off tso off gso off`), so that frames cross as
    /// wire frames with full checksums, as AF_XDP in copy mode needs.
    pub fn veth_pair(
        &self,
        kernel: &str,
        ours: &str,
        kernel_cidr: &str,
        no_offloads: bool,
    ) -> Result<(), NetNsError> {
        self.ip(&["link", "add", kernel, "type", "veth", "peer", "name", ours])?;
        for dev in [kernel, ours] {
            self.ip(&["link", "set", "dev", dev, "addrgenmode", "none"])?;
        }
        self.ip(&["addr", "add", kernel_cidr, "dev", kernel])?;
        if no_offloads {
            let mut cmd = self.command("ethtool");
            cmd.args(["-K", kernel, "tx", "off", "tso", "off", "gso", "off"]);
            let line = format!(
                "ip netns exec {} ethtool -K {kernel} tx off tso off gso off",
                self.name
            );
            let out = cmd.output().map_err(|source| NetNsError::Spawn {
                cmd: line.clone(),
                source,
            })?;
            if !out.status.success() {
                return Err(NetNsError::Failed {
                    cmd: line,
                    status: out.status,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
        for dev in [ours, kernel] {
            self.ip(&["link", "set", "dev", dev, "up"])?;
        }
        Ok(())
    }

    /// Runs `f` on a helper thread inside the namespace and returns its
    /// result: sockets and ports it opens live in the namespace (and keep
    /// working from any thread afterwards).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetNsError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter_current_thread()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// The counters of `dev` in the namespace.
    pub fn link_stats(&self, dev: &str) -> Result<LinkStats, NetNsError> {
        let json = self.ip(&["-j", "-s", "link", "show", "dev", dev])?;
        let get = |section, key| {
            json_counter(&json, section, key).ok_or_else(|| NetNsError::Parse {
                cmd: format!("ip -n {} -j -s link show dev {dev}", self.name),
                output: json.clone(),
            })
        };
        Ok(LinkStats {
            rx_packets: get("rx", "packets")?,
            rx_dropped: get("rx", "dropped")?,
            tx_packets: get("tx", "packets")?,
            tx_dropped: get("tx", "dropped")?,
        })
    }

    /// Moves the calling thread (only) into the namespace: sockets it opens
    /// afterwards live there. Meant for a helper thread made for that.
    pub fn enter_current_thread(&self) -> Result<(), NetNsError> {
        let path = format!("/run/netns/{}", self.name);
        let enter_err = |source| NetNsError::Enter {
            ns: self.name.clone(),
            source,
        };
        let file = File::open(&path).map_err(enter_err)?;
        sys::setns_net(file.as_fd()).map_err(enter_err)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("nicdma: could not delete namespace {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_counters() {
        let j = r#"[{"ifname":"tap0","stats64":{"rx":{"bytes":3193,"packets":29,"errors":0,"dropped":4},"tx":{"bytes":1,"packets":7,"dropped":0}}}]"#;
        assert_eq!(json_counter(j, "rx", "packets"), Some(29));
        assert_eq!(json_counter(j, "rx", "dropped"), Some(4));
        assert_eq!(json_counter(j, "tx", "packets"), Some(7));
        assert_eq!(json_counter(j, "tx", "missing"), None);
    }
}
