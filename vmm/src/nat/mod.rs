//! `--net nat`: a NAT network built in. ivmm makes (or joins) a host
//! bridge with the gateway address, masquerades the subnet in an
//! nftables table of its own, attaches each guest's TAP to the bridge,
//! and serves DHCP and DNS on the gateway address from a thread of its
//! own. Several ivmm processes share one network; the last one to leave
//! removes it, and leftovers of a killed ivmm go at the next start.

pub mod dhcp;
pub mod dns;
pub mod leases;
pub mod netlink;
pub mod network;
pub mod nftables;
pub mod service;

/// Small deterministic PRNG for the packet-mutation tests of `dhcp` and `dns`.
#[cfg(test)]
pub(crate) struct XorShift(pub u64);

#[cfg(test)]
impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::config::VmConfig;

/// This process's part in a NAT network, for as long as it lives: the
/// DHCP/DNS service stops, then the network is left (and removed if this
/// was its last user).
pub struct NatSession {
    // Field order is drop order.
    _service: service::NatService,
    network: network::NatNetwork,
}

impl NatSession {
    pub fn network(&self) -> &network::NatNetwork {
        &self.network
    }
}

/// Joins the NAT network if any NIC asks for one, records the bridge in
/// those NICs' configuration, and starts DHCP/DNS for them.
pub fn join(config: &mut VmConfig) -> anyhow::Result<Option<NatSession>> {
    let Some(subnet) = config.nets.iter().find_map(|n| n.nat) else {
        return Ok(None);
    };
    let network = network::NatNetwork::join(subnet)?;
    let hostname = guest_hostname(config);
    let mut guests = Vec::new();
    for net in config.nets.iter_mut().filter(|n| n.nat.is_some()) {
        net.bridge = Some(network.bridge.clone());
        guests.push(dhcp::Guest {
            mac: net.mac,
            hostname: hostname.clone(),
        });
    }
    let service = service::start(&network, guests, config.seccomp)?;
    log::info!(
        "NAT network {} on bridge {} (gateway, DHCP and DNS at {})",
        network.net,
        network.bridge,
        network.net.gateway()
    );
    Ok(Some(NatSession {
        _service: service,
        network,
    }))
}

/// The host name DHCP gives the guest: its first disk's file name without
/// extension (letters, digits and '-'), or `ivmm-guest`.
fn guest_hostname(config: &VmConfig) -> String {
    let stem = config
        .disks
        .first()
        .and_then(|d| d.path.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() {
        "ivmm-guest".into()
    } else {
        name
    }
}

/// An IPv4 subnet: a network address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Net {
    /// The subnet `address` is in; `None` for a prefix over 32.
    pub fn new(address: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if prefix_len > 32 {
            return None;
        }
        let mask = mask_bits(prefix_len);
        Some(Ipv4Net {
            network: Ipv4Addr::from(u32::from(address) & mask),
            prefix_len,
        })
    }

    pub fn network(self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(self) -> u8 {
        self.prefix_len
    }

    pub fn mask(self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len))
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask_bits(self.prefix_len))
    }

    /// The gateway (and DHCP/DNS server) address: the first host address.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(1))
    }

    pub fn contains(self, address: Ipv4Addr) -> bool {
        u32::from(address) & mask_bits(self.prefix_len) == u32::from(self.network)
    }

    pub fn overlaps(self, other: Ipv4Net) -> bool {
        let shorter = self.prefix_len.min(other.prefix_len);
        let mask = mask_bits(shorter);
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }
}

fn mask_bits(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    /// `A.B.C.D/N`; host bits must be zero (a typo, not a wish).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a subnet like 10.0.2.0/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("/{len} is not a prefix length (0 to 32)"))?;
        let net = Ipv4Net::new(addr, len).ok_or_else(|| format!("bad subnet {s:?}"))?;
        if net.network != addr {
            return Err(format!("{s} has host bits set; the subnet is {net}"));
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_compute_their_addresses() {
        let n: Ipv4Net = "10.0.2.0/24".parse().unwrap();
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 0, 2, 255));
        assert_eq!(n.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(n.contains(Ipv4Addr::new(10, 0, 2, 77)));
        assert!(!n.contains(Ipv4Addr::new(10, 0, 3, 1)));
        assert!(n.overlaps("10.0.0.0/16".parse().unwrap()));
        assert!(!n.overlaps("10.0.3.0/24".parse().unwrap()));
        assert_eq!(n.to_string(), "10.0.2.0/24");
        for bad in [
            "10.0.2.1/24",
            "10.0.2.0",
            "10.0.2.0/33",
            "x/24",
            "10.0.2.0/x",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
    }
}
