//! One way to choose a backend wherever a port is made: a [`BackendSpec`]
//! parsed from `sim`, `tap:NAME`, `af_xdp:IFACE[:QUEUE]`, `af_packet:IFACE`
//! or `netmap:PORT`, opened into an [`AnyPort`]; and [`probe`], which says
//! for each backend whether it works on this host, and if not, why.
//!
//! ```
//! use nicdma::backend::BackendSpec;
//!
//! let spec: BackendSpec = "af_xdp:veth1:0".parse()?;
//! assert_eq!(spec, BackendSpec::AfXdp { iface: "veth1".into(), queue: 0 });
//! assert_eq!(spec.to_string(), "af_xdp:veth1:0");
//! assert!("ethernet:eth0".parse::<BackendSpec>().is_err());
//! # Ok::<(), nicdma::backend::BackendError>(())
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::str::FromStr;

use hicamp::Cursor;

use crate::meta::VirtioNetHdr;
use crate::netmap::NetmapPort;
use crate::packet::PacketPort;
use crate::port::{Port, PortCopies, PortError, TxOutcome};
use crate::tap::TapPort;
use crate::xdp::{XdpConfig, XdpPort};

/// Where the netmap device would be.
pub const NETMAP_DEVICE: &str = crate::netmap::NETMAP_DEVICE;

/// A backend, as named on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// The simulated link (in-process, no kernel).
    Sim,
    /// A TAP device (`tap:NAME`; an empty name lets the kernel choose).
    Tap(String),
    /// AF_XDP on one queue of an interface (`af_xdp:IFACE[:QUEUE]`).
    AfXdp {
        /// The interface.
        iface: String,
        /// The queue (0 when not given).
        queue: u32,
    },
    /// AF_PACKET rings on an interface (`af_packet:IFACE`).
    AfPacket(String),
    /// A netmap port (`netmap:PORT`), where `/dev/netmap` exists.
    Netmap(String),
}

/// Errors of backend choice.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The text is not a backend.
    #[error("bad backend {text:?}: {why} (one of: sim, tap:NAME, af_xdp:IFACE[:QUEUE], af_packet:IFACE, netmap:PORT)")]
    Parse {
        /// The text.
        text: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An address was malformed.
    #[error("bad address {0:?} (expected ADDR/PREFIX, like 10.0.0.2/24, or ADDR)")]
    Address(String),
    /// The backend cannot work on this host.
    #[error("{backend}: {why}; backends that work here: {working}")]
    Unavailable {
        /// The backend.
        backend: &'static str,
        /// Why not.
        why: String,
        /// The backends that do work here, comma-separated.
        working: String,
    },
    /// The sim backend is not a port of its own (it comes as a linked pair).
    #[error("the sim backend has no port of its own: make a simulated link (nicdma::sim)")]
    SimHasNoPort,
    /// Opening the port failed.
    #[error("{backend}: {source}")]
    Port {
        /// The backend.
        backend: String,
        /// The error.
        #[source]
        source: PortError,
    },
}

fn iface_name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() < 16 && !s.contains(['/', ' ', '\0', ':'])
}

impl FromStr for BackendSpec {
    type Err = BackendError;

    fn from_str(text: &str) -> Result<BackendSpec, BackendError> {
        let err = |why| BackendError::Parse {
            text: text.to_owned(),
            why,
        };
        let (kind, rest) = match text.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (text, None),
        };
        match (kind, rest) {
            ("sim", None) => Ok(BackendSpec::Sim),
            ("sim", Some(_)) => Err(err("sim takes no argument")),
            ("tap", None) => Ok(BackendSpec::Tap(String::new())),
            ("tap", Some(n)) if n.is_empty() || iface_name_ok(n) || n.ends_with("%d") => {
                Ok(BackendSpec::Tap(n.to_owned()))
            }
            ("af_xdp" | "afxdp" | "xdp", Some(r)) => {
                let (iface, queue) = match r.split_once(':') {
                    Some((i, q)) => (i, q.parse().map_err(|_| err("the queue is not a number"))?),
                    None => (r, 0),
                };
                if !iface_name_ok(iface) {
                    return Err(err("not an interface name"));
                }
                Ok(BackendSpec::AfXdp {
                    iface: iface.to_owned(),
                    queue,
                })
            }
            ("af_packet" | "afpacket" | "packet", Some(i)) if iface_name_ok(i) => {
                Ok(BackendSpec::AfPacket(i.to_owned()))
            }
            ("netmap", Some(p)) if !p.is_empty() => Ok(BackendSpec::Netmap(p.to_owned())),
            (
                "tap" | "af_xdp" | "afxdp" | "xdp" | "af_packet" | "afpacket" | "packet" | "netmap",
                _,
            ) => Err(err("missing or bad interface name")),
            _ => Err(err("unknown backend")),
        }
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSpec::Sim => write!(f, "sim"),
            BackendSpec::Tap(n) => write!(f, "tap:{n}"),
            BackendSpec::AfXdp { iface, queue } => write!(f, "af_xdp:{iface}:{queue}"),
            BackendSpec::AfPacket(i) => write!(f, "af_packet:{i}"),
            BackendSpec::Netmap(p) => write!(f, "netmap:{p}"),
        }
    }
}

impl BackendSpec {
    /// The backend's short name (`sim`, `tap`, `af_xdp`, `af_packet`,
    /// `netmap`).
    pub fn kind(&self) -> &'static str {
        match self {
            BackendSpec::Sim => "sim",
            BackendSpec::Tap(_) => "tap",
            BackendSpec::AfXdp { .. } => "af_xdp",
            BackendSpec::AfPacket(_) => "af_packet",
            BackendSpec::Netmap(_) => "netmap",
        }
    }

    /// Opens the port (in the calling thread's network namespace).
    pub fn open(&self) -> Result<AnyPort, BackendError> {
        let port_err = |source| BackendError::Port {
            backend: self.to_string(),
            source,
        };
        match self {
            BackendSpec::Sim => Err(BackendError::SimHasNoPort),
            BackendSpec::Tap(n) => TapPort::open(n).map(AnyPort::Tap).map_err(port_err),
            BackendSpec::AfXdp { iface, queue } => XdpPort::with_config(
                iface,
                XdpConfig {
                    queue: *queue,
                    ..XdpConfig::default()
                },
            )
            .map(AnyPort::AfXdp)
            .map_err(port_err),
            BackendSpec::AfPacket(i) => {
                PacketPort::open(i).map(AnyPort::AfPacket).map_err(port_err)
            }
            BackendSpec::Netmap(p) => {
                if !std::path::Path::new(NETMAP_DEVICE).exists() {
                    return Err(netmap_unavailable());
                }
                NetmapPort::open(p).map(AnyPort::Netmap).map_err(port_err)
            }
        }
    }
}

/// The error for netmap on a host without the device.
fn netmap_unavailable() -> BackendError {
    BackendError::Unavailable {
        backend: "netmap",
        why: format!("{NETMAP_DEVICE} not found"),
        working: working_here(),
    }
}

/// The backends that work on this host, comma-separated.
pub fn working_here() -> String {
    let w: Vec<&str> = probe()
        .iter()
        .filter(|s| s.works.is_ok())
        .map(|s| s.name)
        .collect();
    if w.is_empty() {
        "none".into()
    } else {
        w.join(", ")
    }
}

/// Whether one backend works on this host.
#[derive(Debug, Clone)]
pub struct BackendStatus {
    /// The backend's short name.
    pub name: &'static str,
    /// How it is named on a command line.
    pub usage: &'static str,
    /// `Ok` when it works here, else why not.
    pub works: Result<(), String>,
}

/// Checks each backend on this host (without touching any interface: it
/// opens and closes the sockets and devices a port would need).
pub fn probe() -> Vec<BackendStatus> {
    vec![
        BackendStatus {
            name: "sim",
            usage: "sim",
            works: Ok(()),
        },
        BackendStatus {
            name: "tap",
            usage: "tap:NAME",
            works: probe_tap(),
        },
        BackendStatus {
            name: "af_packet",
            usage: "af_packet:IFACE",
            works: crate::packet::probe(),
        },
        BackendStatus {
            name: "af_xdp",
            usage: "af_xdp:IFACE[:QUEUE]",
            works: crate::xdp::probe(),
        },
        BackendStatus {
            name: "netmap",
            usage: "netmap:PORT",
            works: crate::netmap::probe(),
        },
    ]
}

fn probe_tap() -> Result<(), String> {
    match std::fs::metadata("/dev/net/tun") {
        Err(e) => Err(format!("/dev/net/tun: {e}")),
        Ok(_) if crate::sys::geteuid() != 0 => Err("needs root (CAP_NET_ADMIN)".into()),
        Ok(_) => Ok(()),
    }
}

/// An address with its prefix length (`ADDR/PREFIX`, see [`parse_cidr`]).
pub type Cidr = (Ipv4Addr, u8);

/// Parses `ADDR/PREFIX` (like `10.0.0.2/24`); a bare `ADDR` means `/24`.
pub fn parse_cidr(text: &str) -> Result<Cidr, BackendError> {
    let bad = || BackendError::Address(text.to_owned());
    let (a, p) = match text.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
        None => (text, 24),
    };
    if p > 32 {
        return Err(bad());
    }
    Ok((a.parse().map_err(|_| bad())?, p))
}

/// A port of any of the kernel backends.
// A port is made once per interface and lives as long as it: the size of
// the largest variant (AF_XDP's rings) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyPort {
    /// A TAP device.
    Tap(TapPort),
    /// AF_PACKET rings.
    AfPacket(PacketPort),
    /// An AF_XDP socket.
    AfXdp(XdpPort),
    /// A netmap port.
    Netmap(NetmapPort),
}

impl AnyPort {
    /// The interface's own MAC address, where the port binds an existing
    /// interface (the stack should use it); `None` for TAP (the stack picks
    /// its own: the kernel side of a TAP has the device's address).
    pub fn mac(&self) -> Option<[u8; 6]> {
        match self {
            AnyPort::Tap(_) => None,
            AnyPort::AfPacket(p) => Some(p.mac()),
            AnyPort::AfXdp(p) => Some(p.mac()),
            AnyPort::Netmap(p) => p.mac(),
        }
    }

    /// The interface's MTU, where the port binds an existing interface.
    pub fn mtu(&self) -> Option<u32> {
        match self {
            AnyPort::Tap(_) => None,
            AnyPort::AfPacket(p) => Some(p.mtu()),
            AnyPort::AfXdp(p) => Some(p.mtu()),
            AnyPort::Netmap(p) => p.mtu(),
        }
    }

    /// Whether frames cross the port with their offload metadata (TAP: the
    /// kernel completes checksums and segments GSO frames); the ring
    /// backends do the offloads in software while gathering.
    pub fn carries_offloads(&self) -> bool {
        matches!(self, AnyPort::Tap(_))
    }

    fn port(&self) -> &dyn Port {
        match self {
            AnyPort::Tap(p) => p,
            AnyPort::AfPacket(p) => p,
            AnyPort::AfXdp(p) => p,
            AnyPort::Netmap(p) => p,
        }
    }

    fn port_mut(&mut self) -> &mut dyn Port {
        match self {
            AnyPort::Tap(p) => p,
            AnyPort::AfPacket(p) => p,
            AnyPort::AfXdp(p) => p,
            AnyPort::Netmap(p) => p,
        }
    }
}

impl Port for AnyPort {
    fn transmit(&mut self, vnet: &VirtioNetHdr, chunks: &[&[u8]]) -> Result<TxOutcome, PortError> {
        self.port_mut().transmit(vnet, chunks)
    }

    fn transmit_from(
        &mut self,
        vnet: &VirtioNetHdr,
        frame: &mut Cursor<'_>,
        len: usize,
    ) -> Option<Result<TxOutcome, PortError>> {
        self.port_mut().transmit_from(vnet, frame, len)
    }

    fn transmit_desc(
        &mut self,
        desc: &mut crate::frame::TxDesc,
    ) -> Option<Result<TxOutcome, PortError>> {
        self.port_mut().transmit_desc(desc)
    }

    fn receive(
        &mut self,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[u8]),
    ) -> Result<bool, PortError> {
        self.port_mut().receive(deposit)
    }

    fn receive_chunks(
        &mut self,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[&[u8]]),
    ) -> Result<bool, PortError> {
        self.port_mut().receive_chunks(deposit)
    }

    fn flush(&mut self) -> Result<(), PortError> {
        self.port_mut().flush()
    }

    fn copies(&self) -> PortCopies {
        self.port().copies()
    }

    fn rx_fd(&self) -> Option<RawFd> {
        self.port().rx_fd()
    }

    fn max_frame(&self) -> usize {
        self.port().max_frame()
    }

    fn name(&self) -> &str {
        self.port().name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        for (text, spec) in [
            ("sim", BackendSpec::Sim),
            ("tap:", BackendSpec::Tap(String::new())),
            ("tap", BackendSpec::Tap(String::new())),
            ("tap:tap7", BackendSpec::Tap("tap7".into())),
            (
                "af_xdp:veth1",
                BackendSpec::AfXdp {
                    iface: "veth1".into(),
                    queue: 0,
                },
            ),
            (
                "af_xdp:veth1:3",
                BackendSpec::AfXdp {
                    iface: "veth1".into(),
                    queue: 3,
                },
            ),
            ("af_packet:eth0", BackendSpec::AfPacket("eth0".into())),
            ("netmap:vale0:1", BackendSpec::Netmap("vale0:1".into())),
        ] {
            assert_eq!(text.parse::<BackendSpec>().unwrap(), spec, "{text}");
            let again: BackendSpec = spec.to_string().parse().unwrap();
            assert_eq!(again, spec);
        }
        for bad in [
            "",
            "sim:x",
            "af_xdp:",
            "af_xdp:veth1:q",
            "af_xdp:a/b",
            "af_packet:",
            "af_packet:0123456789abcdef",
            "netmap:",
            "pcap:eth0",
        ] {
            let e = bad.parse::<BackendSpec>().unwrap_err();
            assert!(e.to_string().contains("one of: sim"), "{bad}: {e}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_cidr("10.0.0.2/24").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 2), 24)
        );
        assert_eq!(
            parse_cidr("10.0.0.2").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 2), 24)
        );
        for bad in ["10.0.0.2/33", "10.0.0/24", "x/1", "10.0.0.2/", "/24"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn netmap_names_the_backends_that_work() {
        if std::path::Path::new(NETMAP_DEVICE).exists() {
            return;
        }
        let e = BackendSpec::Netmap("vale0:0".into()).open().unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("netmap: /dev/netmap not found"), "{msg}");
        assert!(msg.contains("backends that work here: sim"), "{msg}");
        let p = probe();
        assert_eq!(p.len(), 5);
        assert!(p[0].works.is_ok());
        assert!(p[4].works.is_err());
    }
}
