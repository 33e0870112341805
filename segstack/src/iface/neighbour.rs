//! The neighbour (ARP) cache: addresses learnt with their expiry, requests
//! rate-limited per address, frames held while an address is unresolved,
//! and a bound on the table's size.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use nicdma::frame::TxFrame;

use super::tx::patch_dst_mac;
use super::Inner;
use crate::wire::{ArpOp, ArpRepr, EthernetAddress};

/// Most entries in the ARP table.
const MAX_NEIGHBOURS: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Neighbour {
    pub(super) mac: Option<EthernetAddress>,
    expires: u64,
    last_request: Option<u64>,
    /// Frames waiting for the address (their destination MAC is patched in).
    pub(super) waiting: Vec<TxFrame>,
}

/// The neighbour table.
pub(super) type Neighbours = HashMap<Ipv4Addr, Neighbour>;

impl Inner {
    /// The MAC of `ip`, or None after (rate-limited) asking for it.
    pub(super) fn lookup(&mut self, ip: Ipv4Addr, now: u64) -> Option<EthernetAddress> {
        let retry = self.cfg.arp_retry_ns;
        self.make_room(ip, now);
        let n = self.neighbours.entry(ip).or_default();
        if n.mac.is_some() && n.expires > now {
            return n.mac;
        }
        // A stale entry keeps working while we ask again.
        let known = n.mac;
        if n.last_request
            .is_none_or(|t| now.saturating_sub(t) >= retry)
        {
            n.last_request = Some(now);
            let req = ArpRepr {
                op: ArpOp::Request,
                sender_hw: self.cfg.mac,
                sender_ip: self.cfg.ip,
                target_hw: EthernetAddress([0; 6]),
                target_ip: ip,
            };
            self.stats.arp_requests += 1;
            if self.send_arp(EthernetAddress::BROADCAST, &req).is_err() {
                self.stats.tx_dropped += 1;
            }
        }
        known
    }

    /// Keeps the neighbour table bounded (peers can make us answer any
    /// address): before adding `ip` to a full table, forget expired and
    /// unresolved entries (their waiting frames are dropped and counted).
    fn make_room(&mut self, ip: Ipv4Addr, now: u64) {
        if self.neighbours.len() < MAX_NEIGHBOURS || self.neighbours.contains_key(&ip) {
            return;
        }
        let mut dropped = 0;
        self.neighbours.retain(|_, n| {
            let keep = n.mac.is_some() && n.expires > now;
            if !keep {
                dropped += n.waiting.len() as u64;
            }
            keep
        });
        if self.neighbours.len() >= MAX_NEIGHBOURS {
            // All live: forget them all rather than grow without bound.
            dropped += self
                .neighbours
                .values()
                .map(|n| n.waiting.len() as u64)
                .sum::<u64>();
            self.neighbours.clear();
        }
        self.stats.tx_dropped += dropped;
    }

    pub(super) fn learn(&mut self, ip: Ipv4Addr, mac: EthernetAddress, now: u64) {
        let ttl = self.cfg.arp_ttl_ns;
        self.make_room(ip, now);
        let n = self.neighbours.entry(ip).or_default();
        n.mac = Some(mac);
        n.expires = now.saturating_add(ttl);
        let waiting = std::mem::take(&mut n.waiting);
        for f in waiting {
            // Patch the destination MAC into the frame's header line (a
            // descriptor's inline headers).
            match patch_dst_mac(f, mac) {
                Ok(s) => self.txq.push_back(s),
                Err(_) => self.stats.tx_dropped += 1,
            }
        }
    }
}
