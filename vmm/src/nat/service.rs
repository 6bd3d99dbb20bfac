//! The NAT network's DHCP server and DNS forwarder, on one thread with
//! its own seccomp filter: UDP 67 on the bridge and UDP 53 on the gateway
//! address, both shared (SO_REUSEPORT) with any other ivmm on the same
//! network. Broadcast DHCP reaches every process; each answers its own
//! guests (see [`super::dhcp`]).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::dhcp::{DhcpConfig, DhcpServer, Guest, ReplyTo};
use super::dns::{upstream_servers, DnsForwarder};
use super::leases::FileLeases;
use super::network::NatNetwork;
use crate::seccomp::{SeccompMode, ThreadKind};

const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
const DNS_PORT: u16 = 53;
/// Lease time handed to guests.
const LEASE_SECS: u32 = 3600;
/// The bridge's MTU (guests get the same).
const MTU: u16 = 1500;
/// Largest datagram read (DNS over UDP with EDNS stays below this).
const DATAGRAM: usize = 4096;

const TOKEN_STOP: u64 = 0;
const TOKEN_DHCP: u64 = 1;
const TOKEN_DNS: u64 = 2;
const TOKEN_UPSTREAM_V4: u64 = 3;
const TOKEN_UPSTREAM_V6: u64 = 4;

/// The running service; stops and joins its thread on drop.
pub struct NatService {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Drop for NatService {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket with SO_REUSEADDR/SO_REUSEPORT (and optionally bound to
/// `device`, with broadcast allowed), bound to `addr`.
fn shared_udp_socket(addr: SocketAddrV4, device: Option<&str>) -> io::Result<UdpSocket> {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let mut options = vec![
        (libc::SO_REUSEADDR, one.to_ne_bytes().to_vec()),
        (libc::SO_REUSEPORT, one.to_ne_bytes().to_vec()),
    ];
    if let Some(dev) = device {
        options.push((libc::SO_BROADCAST, one.to_ne_bytes().to_vec()));
        options.push((libc::SO_BINDTODEVICE, dev.as_bytes().to_vec()));
    }
    for (name, value) in options {
        // SAFETY: the option value points at `value.len()` valid bytes.
        let rc = unsafe {
            libc::setsockopt(
                owned.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                value.as_ptr().cast(),
                value.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in of the size passed.
    let rc = unsafe {
        libc::bind(
            owned.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(owned))
}

struct Sockets {
    dhcp: UdpSocket,
    dns: UdpSocket,
    upstream_v4: UdpSocket,
    upstream_v6: Option<UdpSocket>,
}

fn open_sockets(network: &NatNetwork) -> io::Result<Sockets> {
    let gateway = network.net.gateway();
    let dhcp = shared_udp_socket(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DHCP_SERVER_PORT),
        Some(&network.bridge),
    )?;
    let dns = shared_udp_socket(SocketAddrV4::new(gateway, DNS_PORT), None)?;
    let upstream_v4 = UdpSocket::bind("0.0.0.0:0")?;
    upstream_v4.set_nonblocking(true)?;
    // A host without IPv6 simply has no IPv6 resolvers to reach.
    let upstream_v6 = UdpSocket::bind("[::]:0").ok();
    if let Some(s) = &upstream_v6 {
        s.set_nonblocking(true)?;
    }
    Ok(Sockets {
        dhcp,
        dns,
        upstream_v4,
        upstream_v6,
    })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Starts DHCP (for `guests`) and DNS on `network`. The resolvers are read
/// from `/etc/resolv.conf` now.
pub fn start(
    network: &NatNetwork,
    guests: Vec<Guest>,
    seccomp: SeccompMode,
) -> anyhow::Result<NatService> {
    let sockets = open_sockets(network).map_err(|e| {
        anyhow::anyhow!(
            "--net nat: cannot open the DHCP/DNS sockets on {} ({}): {e}",
            network.bridge,
            network.net.gateway()
        )
    })?;
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstreams = upstream_servers(&resolv);
    if upstreams.is_empty() {
        log::warn!("--net nat: /etc/resolv.conf names no nameserver; guests' DNS queries will go unanswered");
    }
    let dhcp = DhcpServer::new(
        DhcpConfig {
            gateway: network.net.gateway(),
            prefix_len: network.net.prefix_len(),
            dns: network.net.gateway(),
            mtu: MTU,
            lease_secs: LEASE_SECS,
            domain: None,
        },
        guests,
        FileLeases::new(network.lease_file()),
    );
    let dns = DnsForwarder::new(upstreams);
    let stop = EventFd::new(EFD_NONBLOCK)?;
    let stop_clone = stop.try_clone()?;
    let thread = std::thread::Builder::new()
        .name("ivmm-nat".into())
        .spawn(move || {
            if let Err(e) = crate::seccomp::install(ThreadKind::Nat, seccomp) {
                eprintln!("ivmm: {e}");
                return;
            }
            let mut state = Service {
                sockets,
                dhcp,
                dns,
                buf: vec![0u8; DATAGRAM],
            };
            if let Err(e) = state.run(&stop_clone) {
                log::error!("NAT DHCP/DNS service stopped: {e}");
            }
        })?;
    Ok(NatService {
        stop,
        thread: Some(thread),
    })
}

struct Service {
    sockets: Sockets,
    dhcp: DhcpServer,
    dns: DnsForwarder,
    buf: Vec<u8>,
}

impl Service {
    fn run(&mut self, stop: &EventFd) -> io::Result<()> {
        let epoll = Epoll::new()?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(stop.as_raw_fd(), TOKEN_STOP)?;
        add(self.sockets.dhcp.as_raw_fd(), TOKEN_DHCP)?;
        add(self.sockets.dns.as_raw_fd(), TOKEN_DNS)?;
        add(self.sockets.upstream_v4.as_raw_fd(), TOKEN_UPSTREAM_V4)?;
        if let Some(s) = &self.sockets.upstream_v6 {
            add(s.as_raw_fd(), TOKEN_UPSTREAM_V6)?;
        }
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let timeout = self.dns.next_deadline().map_or(-1, |d| {
                d.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(60_000) as i32
                    + 1
            });
            let n = match epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.dns.expire(Instant::now());
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_DHCP => self.serve_dhcp(),
                    TOKEN_DNS => self.serve_dns_queries(),
                    TOKEN_UPSTREAM_V4 => self.relay_answers(false),
                    TOKEN_UPSTREAM_V6 => self.relay_answers(true),
                    _ => {}
                }
            }
        }
    }

    fn serve_dhcp(&mut self) {
        while let Ok((n, _from)) = self.sockets.dhcp.recv_from(&mut self.buf) {
            let Some(reply) = self.dhcp.handle(&self.buf[..n], now_unix()) else {
                continue;
            };
            let to = match reply.to {
                ReplyTo::Broadcast => Ipv4Addr::BROADCAST,
                ReplyTo::Unicast(ip) => ip,
            };
            if let Err(e) = self
                .sockets
                .dhcp
                .send_to(&reply.payload, SocketAddrV4::new(to, DHCP_CLIENT_PORT))
            {
                log::warn!("DHCP reply to {to}: {e}");
            }
        }
    }

    fn serve_dns_queries(&mut self) {
        while let Ok((n, client)) = self.sockets.dns.recv_from(&mut self.buf) {
            let Some((query, upstream)) =
                self.dns.from_guest(&self.buf[..n], client, Instant::now())
            else {
                continue;
            };
            let socket = match upstream {
                SocketAddr::V4(_) => Some(&self.sockets.upstream_v4),
                SocketAddr::V6(_) => self.sockets.upstream_v6.as_ref(),
            };
            if let Some(s) = socket {
                if let Err(e) = s.send_to(&query, upstream) {
                    log::warn!("DNS query to {upstream}: {e}");
                }
            }
        }
    }

    fn relay_answers(&mut self, v6: bool) {
        loop {
            let socket = if v6 {
                match &self.sockets.upstream_v6 {
                    Some(s) => s,
                    None => return,
                }
            } else {
                &self.sockets.upstream_v4
            };
            let Ok((n, from)) = socket.recv_from(&mut self.buf) else {
                return;
            };
            if let Some((answer, client)) =
                self.dns.from_upstream(&self.buf[..n], from, Instant::now())
            {
                if let Err(e) = self.sockets.dns.send_to(&answer, client) {
                    log::warn!("DNS answer to {client}: {e}");
                }
            }
        }
    }
}
