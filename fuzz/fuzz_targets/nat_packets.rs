//! The NAT network's packet handlers, fed what a guest (or a hostile
//! upstream) could send: the DHCP server (one guest MAC owned, leases in
//! memory) and the DNS forwarder in both directions.
//!
//! Input: records `kind:u8 len:u16le payload[len]`; kind % 3: 0 a datagram
//! to the DHCP server, 1 a DNS query from the guest, 2 a DNS answer from the
//! upstream resolver. State carries over between records (offers, leases,
//! pending queries), so sequences reach the later protocol steps.
//!
//! Run: `fuzz/run.sh nat_packets 600`
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vmm::nat::dhcp::{DhcpConfig, DhcpServer, Guest};
use vmm::nat::dns::DnsForwarder;
use vmm::nat::leases::MemoryLeases;

const MAX_RECORDS: usize = 256;

fuzz_target!(|data: &[u8]| {
    let mut dhcp = DhcpServer::new(
        DhcpConfig {
            gateway: Ipv4Addr::new(10, 0, 2, 1),
            prefix_len: 29,
            dns: Ipv4Addr::new(10, 0, 2, 1),
            mtu: 1500,
            lease_secs: 3600,
            domain: Some("ivmm.test".into()),
        },
        vec![Guest {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            hostname: "guest".into(),
        }],
        MemoryLeases::default(),
    );
    let upstream: SocketAddr = "192.0.2.53:53".parse().unwrap();
    let client: SocketAddr = "10.0.2.2:40000".parse().unwrap();
    let mut dns = DnsForwarder::new(vec![upstream]);
    let start = Instant::now();
    let mut rest = data;
    for step in 0..MAX_RECORDS {
        let [kind, lo, hi, tail @ ..] = rest else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        let now = start + Duration::from_secs(step as u64);
        match kind % 3 {
            0 => {
                let _ = dhcp.handle(payload, 1_000_000 + step as u64 * 30);
            }
            1 => {
                let _ = dns.from_guest(payload, client, now);
            }
            _ => {
                let _ = dns.from_upstream(payload, upstream, now);
            }
        }
        dns.expire(now);
    }
});
