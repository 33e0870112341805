//! The report the `LD_PRELOAD` shim writes for one process, and reads back.
//!
//! The shim (`libc-shim`) writes it as `PREFIX.PID.json`; the launcher
//! (`hicamp run`, in `hicamp-examples`) reads those files back and merges
//! them. One typed struct serves both sides, so a field renamed on one side
//! cannot silently read as 0 on the other. It lives here, beside the
//! [`LineSizeReport`] it contains, because the memory crate is the only crate
//! both sides depend on: the shim must not link the examples (their
//! network stack and command-line dependencies would be loaded into every
//! traced process).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{human_bytes, line_size_table, LineSizeReport, SizeEstimate};

/// One traced socket in the report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default)
)]
pub struct ConnReport {
    /// Number within the process.
    pub id: u64,
    /// Last descriptor seen for it.
    pub fd: i32,
    /// `inet` or `inet6`.
    pub family: String,
    /// `stream` or `dgram`.
    #[cfg_attr(feature = "serde", serde(rename = "type"))]
    pub ty: String,
    /// `socket`, `accept` or `found`.
    pub origin: String,
    /// Local address, when known.
    pub local: Option<String>,
    /// Peer address, when known.
    pub peer: Option<String>,
    /// Payload bytes sent.
    pub sent_bytes: u64,
    /// Payload bytes received.
    pub received_bytes: u64,
    /// Successful send-side calls.
    pub send_calls: u64,
    /// Successful receive-side calls.
    pub recv_calls: u64,
    /// A descriptor is still open on it.
    pub open: bool,
}

/// How a report's `line_sizes` were estimated, when the payload outgrew the memory budget (or
/// the interning fell behind, or exit came before it finished).
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default)
)]
pub struct DedupEstimate {
    /// The method ([`super::sampled::METHOD`]).
    pub method: String,
    /// Why the exact memories were given up.
    pub reason: String,
    /// Per line size: sampling level and rate, sampled and estimated lines, 95% error bound.
    pub per_line_size: Vec<SizeEstimate>,
}

impl DedupEstimate {
    /// The largest relative error bound (95%) over the line sizes.
    pub fn max_rel_err_95(&self) -> f64 {
        self.per_line_size
            .iter()
            .map(|e| e.rel_err_95)
            .fold(0.0, f64::max)
    }

    /// One line per line size: rate and bound.
    pub fn to_text(&self) -> String {
        let mut out = format!("dedup estimated by {} ({})\n", self.method, self.reason);
        for e in &self.per_line_size {
            let sampled = e.sampled_leaf_lines + e.sampled_interior_lines;
            if e.level == 0 {
                let _ = writeln!(
                    out,
                    "  {} B lines: sample rate 1/1, all {sampled} distinct lines counted (exact \
                     up to fingerprint collisions)",
                    e.line_size
                );
            } else {
                let _ = writeln!(
                    out,
                    "  {} B lines: sample rate 1/{} (level {}), {sampled} distinct lines \
                     sampled, estimate within +-{:.2}% (95%)",
                    e.line_size,
                    1u64 << e.level.min(63),
                    e.level,
                    e.rel_err_95 * 100.0
                );
            }
        }
        out
    }
}

/// What `dedup_method` says when the footprint comes from real memories.
pub const EXACT_METHOD: &str = "exact (HICAMP memories)";

/// The report of one process traced by the shim.
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default)
)]
pub struct ShimReport {
    /// Always `hicamp libc-shim`.
    pub tool: String,
    /// Always `trace` for now.
    pub mode: String,
    /// The launcher's run id (`HICAMP_SHIM_RUN_ID`).
    pub run_id: Option<String>,
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Command line.
    pub program: String,
    /// Why it was written: `exit`, `_exit`, `exec`, `signal`, `periodic`.
    pub reason: String,
    /// True for the report written when the process ended (or replaced its image).
    pub final_report: bool,
    /// When the account started (process start, or fork), Unix milliseconds.
    pub started_unix_ms: u64,
    /// Seconds since then.
    pub duration_secs: f64,
    /// Payload bytes sent on AF_INET/AF_INET6 stream and datagram sockets (all send-side calls,
    /// including sendfile and splice).
    pub sent_bytes: u64,
    /// Payload bytes received on them (MSG_PEEK reads are not counted: the bytes stay queued).
    pub received_bytes: u64,
    /// Successful send-side calls.
    pub send_calls: u64,
    /// Successful receive-side calls.
    pub recv_calls: u64,
    /// Send-side calls that failed (EAGAIN included).
    pub send_errors: u64,
    /// Receive-side calls that failed (EAGAIN included).
    pub recv_errors: u64,
    /// Sent bytes whose payload was interned.
    pub captured_sent_bytes: u64,
    /// Received bytes whose payload was interned.
    pub captured_received_bytes: u64,
    /// Counted bytes whose payload the shim did not see (sendfile, splice, MSG_TRUNC discards).
    pub uncaptured_bytes: u64,
    /// Bytes sent by sendfile/sendfile64 (part of `sent_bytes`).
    pub sendfile_bytes: u64,
    /// Bytes moved by splice to or from a socket (part of the totals).
    pub splice_bytes: u64,
    /// Payload bytes the application copied through the socket API that a HICAMP stack would
    /// have passed as segment references (one copy each way avoided per byte).
    pub copy_avoided_bytes: u64,
    /// Payloads interned (one segment per call and line size).
    pub payloads_interned: u64,
    /// Their bytes.
    pub payload_bytes_interned: u64,
    /// Payloads equal to a recent one, stored as a snapshot of it (one reference per memory,
    /// no line lookup: the `dedup_hits` of `line_sizes` do not count them).
    pub payload_snapshot_hits: u64,
    /// Traced sockets of this account.
    pub sockets_traced: u64,
    /// Traced sockets left out of `connections` (beyond the list's limit).
    pub connections_omitted: u64,
    /// Calls of each interposed function (all descriptors).
    pub calls: BTreeMap<String, u64>,
    /// Per-connection totals (listening sockets and idle sockets left out).
    pub connections: Vec<ConnReport>,
    /// Footprint of all the payload, one memory per line size (as `hicamp dedup --json`).
    pub line_sizes: Vec<LineSizeReport>,
    /// Why some line size stopped interning, if it did.
    pub intern_errors: Vec<String>,
    /// How `line_sizes` were obtained: [`EXACT_METHOD`] or the estimate's method.
    pub dedup_method: String,
    /// The estimate, when `line_sizes` are estimated.
    pub dedup_estimate: Option<DedupEstimate>,
    /// The shim's memory budget (`HICAMP_SHIM_BUDGET`), bytes.
    pub budget_bytes: u64,
    /// Captured payload bytes that did not go into the memories (past the budget, or while
    /// the interning thread was behind); the estimate counts them.
    pub payload_bytes_not_interned: u64,
}

impl ShimReport {
    /// The short human summary.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "hicamp libc-shim trace: pid {} ({}), {:.2} s, report at {}",
            self.pid, self.program, self.duration_secs, self.reason
        );
        let _ = writeln!(
            out,
            "sent {} ({} B) in {} calls, received {} ({} B) in {} calls, {} connection{}",
            human_bytes(self.sent_bytes),
            self.sent_bytes,
            self.send_calls,
            human_bytes(self.received_bytes),
            self.received_bytes,
            self.recv_calls,
            self.connections.len(),
            if self.connections.len() == 1 { "" } else { "s" }
        );
        if self.uncaptured_bytes > 0 {
            let _ = writeln!(
                out,
                "not seen by the shim: {} (sendfile {}, splice {})",
                human_bytes(self.uncaptured_bytes),
                human_bytes(self.sendfile_bytes),
                human_bytes(self.splice_bytes)
            );
        }
        let _ = writeln!(
            out,
            "payload copies a HICAMP stack avoids (segment references instead): {}",
            human_bytes(self.copy_avoided_bytes)
        );
        let mut top: Vec<&ConnReport> = self.connections.iter().collect();
        top.sort_by_key(|c| std::cmp::Reverse(c.sent_bytes + c.received_bytes));
        for c in top.iter().take(5) {
            let _ = writeln!(
                out,
                "  conn {} {} {} {} -> {}: sent {} / {} calls, received {} / {} calls",
                c.id,
                c.family,
                c.ty,
                c.local.as_deref().unwrap_or("?"),
                c.peer.as_deref().unwrap_or("?"),
                c.sent_bytes,
                c.send_calls,
                c.received_bytes,
                c.recv_calls
            );
        }
        if self.connections.len() > 5 {
            let _ = writeln!(out, "  ... and {} more", self.connections.len() - 5);
        }
        if !self.line_sizes.is_empty() && self.dedup_estimate.is_some() {
            let _ = writeln!(
                out,
                "\nPayload in HICAMP memory, estimated (memory budget {}; {} of the payload \
                 not interned):\n",
                human_bytes(self.budget_bytes),
                human_bytes(self.payload_bytes_not_interned)
            );
            out.push_str(&line_size_table(&self.line_sizes));
        } else if !self.line_sizes.is_empty() {
            let _ = writeln!(
                out,
                "\nPayload in HICAMP memory ({} payloads, one segment each; {} repeats of a \
                 recent payload stored as snapshots):\n",
                self.payloads_interned, self.payload_snapshot_hits
            );
            out.push_str(&line_size_table(&self.line_sizes));
        }
        if let Some(e) = &self.dedup_estimate {
            out.push_str(&e.to_text());
        }
        for e in &self.intern_errors {
            let _ = writeln!(out, "warning: {e}");
        }
        out
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    #[test]
    fn partial_reports_read_with_defaults() {
        let json = r#"{"run_id": "A", "pid": 10, "connections": [{"id": 1, "type": "dgram"}],
                       "line_sizes": [{"line_size": 64, "logical_bytes": 100}]}"#;
        let r: ShimReport = serde_json::from_str(json).unwrap();
        assert_eq!(r.run_id.as_deref(), Some("A"));
        assert_eq!((r.pid, r.sent_bytes), (10, 0));
        assert_eq!(r.connections[0].ty, "dgram");
        assert_eq!(r.line_sizes[0].logical_bytes, 100);
        let back: ShimReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
