//! The trace report of one process: the typed [`ShimReport`] of the memory crate
//! (`hicamp::footprint`), which `hicamp run` reads back with the same type. This module fills
//! in its per-connection part.

use std::sync::atomic::Ordering::Relaxed;

pub use hicamp::footprint::{ConnReport, ShimReport};

use crate::fdtable::Conn;

/// The report of one connection's account.
pub fn conn_report(c: &Conn) -> ConnReport {
    let (local, peer) = c.addrs.try_lock().map_or((None, None), |g| *g);
    ConnReport {
        id: c.id,
        fd: c.fd.load(Relaxed),
        family: c.family.name().to_string(),
        ty: c.ty.name().to_string(),
        origin: c.origin.name().to_string(),
        local: local.map(|a| a.to_string()),
        peer: peer.map(|a| a.to_string()),
        sent_bytes: c.sent.load(Relaxed),
        received_bytes: c.received.load(Relaxed),
        send_calls: c.send_calls.load(Relaxed),
        recv_calls: c.recv_calls.load(Relaxed),
        open: c.open_fds.load(Relaxed) > 0,
    }
}
