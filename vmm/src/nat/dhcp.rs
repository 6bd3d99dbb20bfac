//! The DHCPv4 server of a NAT network: protocol logic only (the caller owns the sockets).
//!
//! Every ivmm process on a bridge runs one and sees every broadcast, so a server answers only
//! for the MACs of its own guest NICs. Unicast messages from a guest that already has an
//! address (renewal REQUEST, RELEASE, INFORM) reach whichever process the kernel picks, so
//! those are answered for any MAC whose recorded lease matches `ciaddr`. Addresses are
//! allocated through a [`LeaseStore`] shared by all the processes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use dhcproto::v4::{
    Decodable, Decoder, DhcpOption, Encodable, HType, Message, MessageType, Opcode, OptionCode,
    MAGIC,
};

use super::leases::fmt_mac;
pub use super::leases::{FileLeases, Lease, LeaseState, LeaseStore, Leases, MemoryLeases};

/// How long an OFFER reserves its address: long enough for the client's REQUEST, short
/// enough that an unanswered offer does not hold an address.
const OFFER_HOLD_SECS: u64 = 60;
/// How long an address a guest declined (someone else answers ARP for it) stays unused.
const DECLINE_HOLD_SECS: u64 = 600;
/// BOOTP's minimum message size; some clients drop shorter replies.
const MIN_REPLY_LEN: usize = 300;
/// Fixed BOOTP header plus the magic cookie: where the options start.
const OPTIONS_OFFSET: usize = 240;

/// What the server hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The bridge's address: router, server identifier, and the subnet's anchor.
    pub gateway: Ipv4Addr,
    /// Subnet prefix, 1..=30; anything else leaves the pool empty.
    pub prefix_len: u8,
    pub dns: Ipv4Addr,
    pub mtu: u16,
    pub lease_secs: u32,
    pub domain: Option<String>,
}

/// A guest NIC this process owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    pub mac: [u8; 6],
    /// Sent as option 12; empty sends none.
    pub hostname: String,
}

/// Where the caller sends a reply (from the gateway's port 67).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    /// 255.255.255.255:68 on the bridge.
    Broadcast,
    /// The client's own address, port 68: it has one (renewal, INFORM).
    Unicast(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpReply {
    pub payload: Vec<u8>,
    pub to: ReplyTo,
}

/// The subnet's numbers, as host-order integers.
#[derive(Debug, Clone, Copy)]
struct Subnet {
    network: u32,
    broadcast: u32,
    mask: u32,
    gateway: u32,
    prefix_len: u8,
}

impl Subnet {
    fn new(gateway: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if !(1..=30).contains(&prefix_len) {
            return None;
        }
        let mask = u32::MAX << (32 - prefix_len);
        let gateway = u32::from(gateway);
        let network = gateway & mask;
        let broadcast = network | !mask;
        (gateway != network && gateway != broadcast).then_some(Self {
            network,
            broadcast,
            mask,
            gateway,
            prefix_len,
        })
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip & self.mask == self.network
            && ip != self.network
            && ip != self.broadcast
            && ip != self.gateway
    }

    /// The lowest address not in `used`, searching upward from the gateway and wrapping to
    /// the first host address.
    fn lowest_free(&self, used: &BTreeSet<u32>) -> Option<Ipv4Addr> {
        let hosts = self.broadcast - self.network - 1;
        let first = self.gateway - self.network; // gateway's index among hosts, 1-based
                                                 // Among used.len() + 2 distinct candidates one is neither used nor the gateway.
        let tries = hosts.min(
            u32::try_from(used.len())
                .unwrap_or(u32::MAX)
                .saturating_add(2),
        );
        (0..tries)
            .map(|k| self.network + 1 + (first + k) % hosts)
            .find(|ip| *ip != self.gateway && !used.contains(ip))
            .map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix_len)
    }
}

/// One process's DHCP server.
pub struct DhcpServer {
    config: DhcpConfig,
    subnet: Option<Subnet>,
    guests: Vec<Guest>,
    store: Box<dyn LeaseStore>,
}

impl DhcpServer {
    pub fn new(config: DhcpConfig, guests: Vec<Guest>, store: impl LeaseStore + 'static) -> Self {
        let subnet = Subnet::new(config.gateway, config.prefix_len);
        if subnet.is_none() {
            log::warn!(
                "DHCP: {}/{} is no usable subnet; no addresses will be handed out",
                config.gateway,
                config.prefix_len
            );
        }
        Self {
            config,
            subnet,
            guests,
            store: Box::new(store),
        }
    }

    /// Answers one datagram received on port 67, or `None` (not ours, malformed, nothing to
    /// say). `now_unix` is the wall clock: leases are shared with other processes.
    pub fn handle(&mut self, datagram: &[u8], now_unix: u64) -> Option<DhcpReply> {
        let msg = parse_request(datagram)?;
        let mac: [u8; 6] = msg.chaddr().try_into().ok()?;
        let owned = self.guests.iter().position(|g| g.mac == mac);
        match msg.opts().msg_type()? {
            MessageType::Discover => self.discover(&msg, mac, owned?, now_unix),
            MessageType::Request => self.request(&msg, mac, owned, now_unix),
            MessageType::Release => {
                self.release(&msg, mac, now_unix);
                None
            }
            MessageType::Decline => {
                owned?;
                self.decline(&msg, mac, now_unix);
                None
            }
            MessageType::Inform => self.inform(&msg, mac, owned, now_unix),
            _ => None,
        }
    }

    fn discover(
        &mut self,
        msg: &Message,
        mac: [u8; 6],
        guest: usize,
        now: u64,
    ) -> Option<DhcpReply> {
        let subnet = self.subnet?;
        let requested = requested_ip(msg);
        let mut offered = None;
        self.update(now, &mut |leases| {
            offered = choose_offer(&subnet, leases, mac, requested, now);
        })?;
        let Some(ip) = offered else {
            log::warn!(
                "DHCP pool of {subnet} exhausted: no address for {}",
                fmt_mac(&mac)
            );
            return None;
        };
        let payload = self.reply(msg, MessageType::Offer, ip, Some(guest))?;
        Some(DhcpReply {
            payload,
            to: ReplyTo::Broadcast,
        })
    }

    fn request(
        &mut self,
        msg: &Message,
        mac: [u8; 6],
        owned: Option<usize>,
        now: u64,
    ) -> Option<DhcpReply> {
        let ciaddr = msg.ciaddr();
        match server_id(msg) {
            Some(id) if id != self.config.gateway => {
                // The client took another server's offer: release ours.
                owned?;
                self.update(now, &mut |leases| {
                    if leases
                        .get(&mac)
                        .is_some_and(|l| l.state == LeaseState::Offered)
                    {
                        leases.remove(&mac);
                    }
                });
                None
            }
            // SELECTING (server id is ours) or INIT-REBOOT: the address is in option 50.
            Some(_) => self.confirm(msg, mac, owned?, requested_ip(msg), now),
            None if ciaddr.is_unspecified() => {
                self.confirm(msg, mac, owned?, requested_ip(msg), now)
            }
            // RENEWING or REBINDING.
            None => match owned {
                Some(guest) => self.confirm(msg, mac, guest, Some(ciaddr), now),
                None => self.renew_foreign(msg, mac, ciaddr, now),
            },
        }
    }

    /// ACK when `ip` is leased or offered to `mac` and nobody else holds it, else NAK.
    fn confirm(
        &mut self,
        msg: &Message,
        mac: [u8; 6],
        guest: usize,
        ip: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<DhcpReply> {
        let bound = match ip {
            Some(ip) => self.bind(mac, ip, now)?,
            None => false,
        };
        match (bound, ip) {
            (true, Some(ip)) => self.ack(msg, ip, Some(guest)),
            _ => self.nak(msg),
        }
    }

    /// A renewal for a MAC another process owns: ACK if its lease matches, else stay quiet
    /// (the owner answers the broadcast REBIND that follows).
    fn renew_foreign(
        &mut self,
        msg: &Message,
        mac: [u8; 6],
        ciaddr: Ipv4Addr,
        now: u64,
    ) -> Option<DhcpReply> {
        if self.bind(mac, ciaddr, now)? {
            self.ack(msg, ciaddr, None)
        } else {
            None
        }
    }

    /// Marks `ip` bound to `mac` for a full lease if it is that MAC's leased or offered
    /// address. `None` when the store failed.
    fn bind(&mut self, mac: [u8; 6], ip: Ipv4Addr, now: u64) -> Option<bool> {
        let subnet = self.subnet?;
        let expiry = now.saturating_add(u64::from(self.config.lease_secs));
        let mut bound = false;
        self.update(now, &mut |leases| {
            bound = subnet.in_pool(ip)
                && leases.get(&mac).is_some_and(|l| l.ip == ip)
                && leases.is_free_for(ip, &mac, now);
            if bound {
                let state = LeaseState::Bound;
                leases.set(mac, Lease { ip, expiry, state });
            }
        })?;
        Some(bound)
    }

    fn release(&mut self, msg: &Message, mac: [u8; 6], now: u64) {
        if server_id(msg).is_some_and(|id| id != self.config.gateway) {
            return;
        }
        let ciaddr = msg.ciaddr();
        self.update(now, &mut |leases| {
            if leases.get(&mac).is_some_and(|l| l.ip == ciaddr) {
                leases.remove(&mac);
            }
        });
    }

    fn decline(&mut self, msg: &Message, mac: [u8; 6], now: u64) {
        if server_id(msg).is_some_and(|id| id != self.config.gateway) {
            return;
        }
        // Only the address we gave this MAC: a guest must not quarantine others' addresses.
        let Some(ip) = requested_ip(msg) else { return };
        let until = now.saturating_add(DECLINE_HOLD_SECS);
        self.update(now, &mut |leases| {
            if leases.get(&mac).is_some_and(|l| l.ip == ip) {
                leases.decline(ip, until);
            }
        });
        log::warn!(
            "DHCP: {} declined {ip}: address in use on the bridge?",
            fmt_mac(&mac)
        );
    }

    /// INFORM: configuration without an address, for a guest that configured its own.
    fn inform(
        &mut self,
        msg: &Message,
        mac: [u8; 6],
        owned: Option<usize>,
        now: u64,
    ) -> Option<DhcpReply> {
        let ciaddr = msg.ciaddr();
        if owned.is_none() {
            let mut matches = false;
            self.update(now, &mut |leases| {
                matches =
                    !ciaddr.is_unspecified() && leases.get(&mac).is_some_and(|l| l.ip == ciaddr);
            })?;
            if !matches {
                return None;
            }
        }
        let payload = self.reply(msg, MessageType::Inform, Ipv4Addr::UNSPECIFIED, owned)?;
        Some(DhcpReply {
            payload,
            to: reply_to(ciaddr),
        })
    }

    fn ack(&self, msg: &Message, ip: Ipv4Addr, guest: Option<usize>) -> Option<DhcpReply> {
        let payload = self.reply(msg, MessageType::Ack, ip, guest)?;
        Some(DhcpReply {
            payload,
            to: reply_to(msg.ciaddr()),
        })
    }

    fn nak(&self, msg: &Message) -> Option<DhcpReply> {
        let mut reply = reply_header(msg, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED);
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::MessageType(MessageType::Nak));
        opts.insert(DhcpOption::ServerIdentifier(self.config.gateway));
        copy_client_id(msg, &mut reply);
        Some(DhcpReply {
            payload: encode(&reply)?,
            to: ReplyTo::Broadcast,
        })
    }

    /// An OFFER or ACK with the full configuration; `kind` Inform means an ACK without
    /// address or lease times.
    fn reply(
        &self,
        msg: &Message,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        guest: Option<usize>,
    ) -> Option<Vec<u8>> {
        let subnet = self.subnet?;
        let c = &self.config;
        let mut reply = reply_header(msg, yiaddr, c.gateway);
        if kind != MessageType::Offer {
            reply.set_ciaddr(msg.ciaddr());
        }
        let opts = reply.opts_mut();
        let is_inform = kind == MessageType::Inform;
        let kind = if is_inform { MessageType::Ack } else { kind };
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(c.gateway));
        if !is_inform {
            let lease = u64::from(c.lease_secs);
            opts.insert(DhcpOption::AddressLeaseTime(c.lease_secs));
            opts.insert(DhcpOption::Renewal(u32::try_from(lease / 2).ok()?));
            opts.insert(DhcpOption::Rebinding(u32::try_from(lease * 7 / 8).ok()?));
        }
        opts.insert(DhcpOption::SubnetMask(Ipv4Addr::from(subnet.mask)));
        opts.insert(DhcpOption::Router(vec![c.gateway]));
        opts.insert(DhcpOption::DomainNameServer(vec![c.dns]));
        opts.insert(DhcpOption::BroadcastAddr(Ipv4Addr::from(subnet.broadcast)));
        opts.insert(DhcpOption::InterfaceMtu(c.mtu));
        if let Some(domain) = c.domain.as_ref().filter(|d| !d.is_empty()) {
            opts.insert(DhcpOption::DomainName(domain.clone()));
        }
        if let Some(g) = guest.and_then(|i| self.guests.get(i)) {
            if !g.hostname.is_empty() {
                opts.insert(DhcpOption::Hostname(g.hostname.clone()));
            }
        }
        copy_client_id(msg, &mut reply);
        encode(&reply)
    }

    /// Runs `f` on the shared leases; `None` (and a warning) when the store failed.
    fn update(&mut self, now: u64, f: &mut dyn FnMut(&mut Leases)) -> Option<()> {
        match self.store.update(now, f) {
            Ok(()) => Some(()),
            Err(e) => {
                log::warn!("DHCP lease store: {e}");
                None
            }
        }
    }
}

/// The address to offer `mac`: its own lease's, else the one it asked for, else the lowest
/// free one; reserved for [`OFFER_HOLD_SECS`] unless it is bound already.
fn choose_offer(
    subnet: &Subnet,
    leases: &mut Leases,
    mac: [u8; 6],
    requested: Option<Ipv4Addr>,
    now: u64,
) -> Option<Ipv4Addr> {
    let usable =
        |leases: &Leases, ip: Ipv4Addr| subnet.in_pool(ip) && leases.is_free_for(ip, &mac, now);
    let current = leases.get(&mac).copied().filter(|l| usable(leases, l.ip));
    if let Some(l) = current.filter(|l| l.state == LeaseState::Bound && l.is_active(now)) {
        return Some(l.ip);
    }
    let ip = match (current, requested) {
        (Some(l), _) => l.ip,
        (None, Some(r)) if usable(leases, r) => r,
        _ => subnet.lowest_free(&leases.unavailable_for(&mac, now))?,
    };
    let expiry = now.saturating_add(OFFER_HOLD_SECS);
    let state = LeaseState::Offered;
    leases.set(mac, Lease { ip, expiry, state });
    Some(ip)
}

/// Decodes a client message, or `None` for anything that is not a well-formed BOOTREQUEST
/// from an Ethernet client with a message type.
fn parse_request(d: &[u8]) -> Option<Message> {
    let header_ok = d.len() >= OPTIONS_OFFSET
        && d[0] == 1 // BOOTREQUEST
        && d[1] == 1 // Ethernet
        && d[2] == 6
        && d[236..OPTIONS_OFFSET] == MAGIC;
    if !header_ok {
        return None;
    }
    let msg = Message::decode(&mut Decoder::new(&sanitized(d)?)).ok()?;
    (msg.opcode() == Opcode::BootRequest && msg.htype() == HType::Eth).then_some(msg)
}

/// `d` with only the options the server reads, each checked for its length, or `None` when
/// an option runs past the end or END is missing.
///
/// dhcproto is not given the rest: several of its option decoders assert on lengths (a
/// short client-FQDN option underflows), and it silently keeps the options before a broken
/// one where a truncated packet should be refused whole.
fn sanitized(d: &[u8]) -> Option<Vec<u8>> {
    let mut out = d.get(..OPTIONS_OFFSET)?.to_vec();
    let mut seen = [false; 256];
    let mut o = d.get(OPTIONS_OFFSET..)?;
    loop {
        o = match o {
            [255, ..] => break,
            [0, rest @ ..] => rest,
            [code, len, rest @ ..] if rest.len() >= usize::from(*len) => {
                let (value, rest) = rest.split_at(usize::from(*len));
                let wanted = match *code {
                    53 => value.len() == 1,      // message type
                    50 | 54 => value.len() == 4, // requested address, server id
                    61 => !value.is_empty(),     // client identifier
                    _ => false,
                };
                // Only the first instance: the server's options are never concatenated.
                if wanted && !seen[usize::from(*code)] {
                    seen[usize::from(*code)] = true;
                    out.extend_from_slice(&[*code, *len]);
                    out.extend_from_slice(value);
                }
                rest
            }
            _ => return None,
        }
    }
    out.push(255);
    Some(out)
}

fn server_id(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

fn requested_ip(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn reply_to(ciaddr: Ipv4Addr) -> ReplyTo {
    if ciaddr.is_unspecified() {
        ReplyTo::Broadcast
    } else {
        ReplyTo::Unicast(ciaddr)
    }
}

/// A BOOTREPLY carrying the request's xid, flags, giaddr and chaddr.
fn reply_header(msg: &Message, yiaddr: Ipv4Addr, siaddr: Ipv4Addr) -> Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut reply = Message::new_with_id(
        msg.xid(),
        unspecified,
        yiaddr,
        siaddr,
        msg.giaddr(),
        msg.chaddr(),
    );
    reply
        .set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(msg.flags());
    reply
}

/// RFC 6842: a reply carries the client identifier the client sent.
fn copy_client_id(msg: &Message, reply: &mut Message) {
    if let Some(id @ DhcpOption::ClientIdentifier(_)) = msg.opts().get(OptionCode::ClientIdentifier)
    {
        reply.opts_mut().insert(id.clone());
    }
}

fn encode(msg: &Message) -> Option<Vec<u8>> {
    let mut payload = msg.to_vec().ok()?;
    if payload.len() < MIN_REPLY_LEN {
        payload.resize(MIN_REPLY_LEN, 0);
    }
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::Flags;

    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
    const XID: u32 = 0x1234_5678;
    const T0: u64 = 1_700_000_000;

    fn mac(n: u8) -> [u8; 6] {
        [0x52, 0x54, 0, 0x12, 0x34, n]
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 100, last)
    }

    fn config(prefix_len: u8) -> DhcpConfig {
        DhcpConfig {
            gateway: GW,
            prefix_len,
            dns: GW,
            mtu: 1500,
            lease_secs: 3600,
            domain: Some("ivmm.internal".into()),
        }
    }

    fn guests(ids: &[u8]) -> Vec<Guest> {
        ids.iter()
            .map(|&n| Guest {
                mac: mac(n),
                hostname: format!("vm{n}"),
            })
            .collect()
    }

    fn server(ids: &[u8]) -> DhcpServer {
        DhcpServer::new(config(24), guests(ids), MemoryLeases::default())
    }

    /// A client message from guest `n`.
    fn client(n: u8, kind: MessageType, ciaddr: Ipv4Addr, opts: &[DhcpOption]) -> Vec<u8> {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut m =
            Message::new_with_id(XID, ciaddr, unspecified, unspecified, unspecified, &mac(n));
        m.set_flags(Flags::default().set_broadcast());
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o.clone());
        }
        m.to_vec().unwrap()
    }

    fn discover(n: u8) -> Vec<u8> {
        client(n, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[])
    }

    /// REQUEST in SELECTING state: our server id and the offered address.
    fn select(n: u8, addr: Ipv4Addr) -> Vec<u8> {
        let opts = [
            DhcpOption::ServerIdentifier(GW),
            DhcpOption::RequestedIpAddress(addr),
        ];
        client(n, MessageType::Request, Ipv4Addr::UNSPECIFIED, &opts)
    }

    fn renew(n: u8, ciaddr: Ipv4Addr) -> Vec<u8> {
        client(n, MessageType::Request, ciaddr, &[])
    }

    fn release(n: u8, ciaddr: Ipv4Addr) -> Vec<u8> {
        client(
            n,
            MessageType::Release,
            ciaddr,
            &[DhcpOption::ServerIdentifier(GW)],
        )
    }

    fn decode(r: &DhcpReply) -> Message {
        Message::decode(&mut Decoder::new(&r.payload)).unwrap()
    }

    fn kind(r: &DhcpReply) -> MessageType {
        decode(r).opts().msg_type().unwrap()
    }

    /// DISCOVER then REQUEST for guest `n`: the address acknowledged.
    fn lease(s: &mut DhcpServer, n: u8, now: u64) -> Option<Ipv4Addr> {
        let offer = s.handle(&discover(n), now)?;
        let addr = decode(&offer).yiaddr();
        let ack = s.handle(&select(n, addr), now)?;
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(decode(&ack).yiaddr(), addr);
        Some(addr)
    }

    fn opt(m: &Message, code: OptionCode) -> Option<DhcpOption> {
        m.opts().get(code).cloned()
    }

    fn check_config_options(m: &Message, hostname: &str) {
        use DhcpOption as O;
        use OptionCode as C;
        assert_eq!(opt(m, C::ServerIdentifier), Some(O::ServerIdentifier(GW)));
        assert_eq!(opt(m, C::AddressLeaseTime), Some(O::AddressLeaseTime(3600)));
        assert_eq!(opt(m, C::Renewal), Some(O::Renewal(1800)));
        assert_eq!(opt(m, C::Rebinding), Some(O::Rebinding(3150)));
        let mask = Ipv4Addr::new(255, 255, 255, 0);
        assert_eq!(opt(m, C::SubnetMask), Some(O::SubnetMask(mask)));
        assert_eq!(opt(m, C::Router), Some(O::Router(vec![GW])));
        assert_eq!(
            opt(m, C::DomainNameServer),
            Some(O::DomainNameServer(vec![GW]))
        );
        assert_eq!(opt(m, C::Hostname), Some(O::Hostname(hostname.into())));
        assert_eq!(opt(m, C::InterfaceMtu), Some(O::InterfaceMtu(1500)));
        let domain = O::DomainName("ivmm.internal".into());
        assert_eq!(opt(m, C::DomainName), Some(domain));
        assert_eq!(opt(m, C::BroadcastAddr), Some(O::BroadcastAddr(ip(255))));
    }

    fn check_reply_header(m: &Message, n: u8, yiaddr: Ipv4Addr) {
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.htype(), HType::Eth);
        assert_eq!(m.xid(), XID);
        assert_eq!(m.chaddr(), &mac(n));
        assert!(m.flags().broadcast());
        assert_eq!(m.yiaddr(), yiaddr);
        assert_eq!(m.siaddr(), GW);
        assert_eq!(m.giaddr(), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn discover_offer_request_ack() {
        let mut s = server(&[1]);
        let client_id = DhcpOption::ClientIdentifier(vec![1, 0x52, 0x54, 0, 0x12, 0x34, 1]);
        let d = client(
            1,
            MessageType::Discover,
            Ipv4Addr::UNSPECIFIED,
            std::slice::from_ref(&client_id),
        );
        let offer = s.handle(&d, T0).unwrap();
        assert_eq!(offer.to, ReplyTo::Broadcast);
        assert!(offer.payload.len() >= MIN_REPLY_LEN);
        let m = decode(&offer);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        check_reply_header(&m, 1, ip(2));
        check_config_options(&m, "vm1");
        assert_eq!(opt(&m, OptionCode::ClientIdentifier), Some(client_id));

        let ack = s.handle(&select(1, ip(2)), T0 + 1).unwrap();
        assert_eq!(ack.to, ReplyTo::Broadcast);
        let m = decode(&ack);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        check_reply_header(&m, 1, ip(2));
        check_config_options(&m, "vm1");
    }

    #[test]
    fn relay_address_is_copied() {
        let mut s = server(&[1]);
        let mut m = Message::decode(&mut Decoder::new(&discover(1))).unwrap();
        m.set_giaddr(ip(77));
        let offer = s.handle(&m.to_vec().unwrap(), T0).unwrap();
        assert_eq!(decode(&offer).giaddr(), ip(77));
    }

    #[test]
    fn offers_are_stable_and_honour_requested_address() {
        let mut s = server(&[1, 2]);
        let d = client(
            1,
            MessageType::Discover,
            Ipv4Addr::UNSPECIFIED,
            &[DhcpOption::RequestedIpAddress(ip(50))],
        );
        assert_eq!(decode(&s.handle(&d, T0).unwrap()).yiaddr(), ip(50));
        // A second DISCOVER gets the same offer; another guest the lowest free address.
        assert_eq!(
            decode(&s.handle(&discover(1), T0).unwrap()).yiaddr(),
            ip(50)
        );
        assert_eq!(decode(&s.handle(&discover(2), T0).unwrap()).yiaddr(), ip(2));
        // Outside the pool, or someone else's: ignored.
        for bad in [GW, ip(0), ip(255), Ipv4Addr::new(10, 0, 0, 5), ip(50)] {
            let d = client(
                2,
                MessageType::Discover,
                Ipv4Addr::UNSPECIFIED,
                &[DhcpOption::RequestedIpAddress(bad)],
            );
            assert_eq!(decode(&s.handle(&d, T0).unwrap()).yiaddr(), ip(2), "{bad}");
        }
    }

    #[test]
    fn bound_guest_keeps_its_address() {
        let mut s = server(&[1, 2]);
        assert_eq!(lease(&mut s, 1, T0), Some(ip(2)));
        assert_eq!(lease(&mut s, 2, T0), Some(ip(3)));
        assert_eq!(lease(&mut s, 1, T0 + 100), Some(ip(2)));
    }

    #[test]
    fn release_frees_the_address_for_reuse() {
        let mut s = server(&[1, 2]);
        assert_eq!(lease(&mut s, 1, T0), Some(ip(2)));
        // A RELEASE naming an address that is not its lease changes nothing.
        assert_eq!(s.handle(&release(1, ip(9)), T0), None);
        assert_eq!(lease(&mut s, 2, T0), Some(ip(3)));
        assert_eq!(s.handle(&release(1, ip(2)), T0), None);
        assert_eq!(s.handle(&release(2, ip(3)), T0), None);
        assert_eq!(lease(&mut s, 2, T0), Some(ip(2)));
    }

    #[test]
    fn pool_of_five_runs_out_and_recovers_after_release() {
        let mut s = DhcpServer::new(
            config(29),
            guests(&[1, 2, 3, 4, 5, 6]),
            MemoryLeases::default(),
        );
        let got: Vec<_> = (1..=5).map(|n| lease(&mut s, n, T0).unwrap()).collect();
        assert_eq!(got, [ip(2), ip(3), ip(4), ip(5), ip(6)]);
        assert_eq!(s.handle(&discover(6), T0), None);
        assert_eq!(s.handle(&release(3, ip(4)), T0 + 10), None);
        assert_eq!(lease(&mut s, 6, T0 + 10), Some(ip(4)));
    }

    #[test]
    fn search_starts_above_the_gateway_and_wraps() {
        let mut c = config(29);
        c.gateway = ip(3);
        let mut s = DhcpServer::new(c, guests(&[1, 2, 3, 4, 5]), MemoryLeases::default());
        let got: Vec<_> = (1..=5).map(|n| lease_via(&mut s, n, ip(3))).collect();
        assert_eq!(got, [ip(4), ip(5), ip(6), ip(1), ip(2)]);
    }

    fn lease_via(s: &mut DhcpServer, n: u8, gw: Ipv4Addr) -> Ipv4Addr {
        let addr = decode(&s.handle(&discover(n), T0).unwrap()).yiaddr();
        let opts = [
            DhcpOption::ServerIdentifier(gw),
            DhcpOption::RequestedIpAddress(addr),
        ];
        let req = client(n, MessageType::Request, Ipv4Addr::UNSPECIFIED, &opts);
        assert_eq!(kind(&s.handle(&req, T0).unwrap()), MessageType::Ack);
        addr
    }

    #[test]
    fn unusable_subnets_hand_out_nothing() {
        for (gateway, prefix_len) in [
            (GW, 31),
            (GW, 32),
            (GW, 0),
            (GW, 40),
            (ip(0), 24),
            (ip(255), 24),
        ] {
            let c = DhcpConfig {
                gateway,
                prefix_len,
                ..config(24)
            };
            let mut s = DhcpServer::new(c, guests(&[1]), MemoryLeases::default());
            assert_eq!(s.handle(&discover(1), T0), None, "{gateway}/{prefix_len}");
            assert_eq!(s.handle(&select(1, ip(2)), T0), None);
        }
    }

    #[test]
    fn two_processes_share_one_lease_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases");
        let mut a = DhcpServer::new(config(24), guests(&[1, 2, 3]), FileLeases::new(&path));
        let mut b = DhcpServer::new(config(24), guests(&[4, 5, 6]), FileLeases::new(&path));
        let mut offered = Vec::new();
        // Every broadcast reaches both processes; only the owner answers.
        for n in [1, 4, 2, 5, 3, 6] {
            let (owner, other) = if n <= 3 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            assert_eq!(other.handle(&discover(n), T0), None);
            let offer = owner.handle(&discover(n), T0).unwrap();
            offered.push(decode(&offer).yiaddr());
        }
        let mut acked = Vec::new();
        for (i, n) in [1, 4, 2, 5, 3, 6].into_iter().enumerate() {
            let (owner, other) = if n <= 3 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            assert_eq!(other.handle(&select(n, offered[i]), T0), None);
            let ack = owner.handle(&select(n, offered[i]), T0).unwrap();
            assert_eq!(kind(&ack), MessageType::Ack);
            acked.push(decode(&ack).yiaddr());
        }
        assert_eq!(acked, offered);
        let mut unique = acked.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 6, "{acked:?}");
        // Asking for another guest's address gets a different one.
        let d = client(
            1,
            MessageType::Discover,
            Ipv4Addr::UNSPECIFIED,
            &[DhcpOption::RequestedIpAddress(acked[1])],
        );
        assert_eq!(decode(&a.handle(&d, T0).unwrap()).yiaddr(), acked[0]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.ends_with(" bound")).count(),
            6,
            "{text}"
        );
    }

    #[test]
    fn renewal_is_acked_by_unicast_by_any_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases");
        let mut owner = DhcpServer::new(config(24), guests(&[1]), FileLeases::new(&path));
        let mut other = DhcpServer::new(config(24), guests(&[2]), FileLeases::new(&path));
        assert_eq!(lease(&mut owner, 1, T0), Some(ip(2)));

        let ack = owner.handle(&renew(1, ip(2)), T0 + 1800).unwrap();
        assert_eq!(ack.to, ReplyTo::Unicast(ip(2)));
        let m = decode(&ack);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!((m.yiaddr(), m.ciaddr()), (ip(2), ip(2)));
        check_config_options(&m, "vm1");

        // The unicast may land at the other process: it answers from the lease file.
        let ack = other.handle(&renew(1, ip(2)), T0 + 3000).unwrap();
        assert_eq!(ack.to, ReplyTo::Unicast(ip(2)));
        let m = decode(&ack);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(
            opt(&m, OptionCode::AddressLeaseTime),
            Some(DhcpOption::AddressLeaseTime(3600))
        );
        // The renewal extended the lease in the shared file.
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains(&format!("{}", T0 + 3000 + 3600)));

        // A renewal for an address the MAC does not hold: the owner NAKs, the other is quiet.
        assert_eq!(other.handle(&renew(1, ip(9)), T0 + 3000), None);
        assert_eq!(
            kind(&owner.handle(&renew(1, ip(9)), T0 + 3000).unwrap()),
            MessageType::Nak
        );
        // Unknown MACs get nothing from anyone.
        assert_eq!(other.handle(&renew(7, ip(2)), T0 + 3000), None);
    }

    #[test]
    fn init_reboot_confirms_or_naks() {
        let mut s = server(&[1]);
        assert_eq!(lease(&mut s, 1, T0), Some(ip(2)));
        let reboot = |addr| {
            client(
                1,
                MessageType::Request,
                Ipv4Addr::UNSPECIFIED,
                &[DhcpOption::RequestedIpAddress(addr)],
            )
        };
        let ack = s.handle(&reboot(ip(2)), T0 + 5).unwrap();
        assert_eq!((kind(&ack), ack.to), (MessageType::Ack, ReplyTo::Broadcast));
        let nak = s.handle(&reboot(ip(3)), T0 + 5).unwrap();
        assert_eq!((kind(&nak), nak.to), (MessageType::Nak, ReplyTo::Broadcast));
    }

    #[test]
    fn request_for_a_wrong_address_is_naked() {
        let mut s = server(&[1, 2]);
        assert_eq!(decode(&s.handle(&discover(1), T0).unwrap()).yiaddr(), ip(2));
        for wrong in [ip(3), GW, ip(255), Ipv4Addr::new(10, 1, 1, 1)] {
            let nak = s.handle(&select(1, wrong), T0).unwrap();
            assert_eq!(nak.to, ReplyTo::Broadcast);
            let m = decode(&nak);
            assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
            assert_eq!(
                opt(&m, OptionCode::ServerIdentifier),
                Some(DhcpOption::ServerIdentifier(GW))
            );
            assert_eq!((m.yiaddr(), m.xid()), (Ipv4Addr::UNSPECIFIED, XID));
            assert_eq!(opt(&m, OptionCode::AddressLeaseTime), None);
        }
        // Another guest's address is no better.
        assert_eq!(lease(&mut s, 2, T0), Some(ip(3)));
        assert_eq!(
            kind(&s.handle(&select(1, ip(3)), T0).unwrap()),
            MessageType::Nak
        );
        // Without an address at all.
        let bare = client(1, MessageType::Request, Ipv4Addr::UNSPECIFIED, &[]);
        assert_eq!(kind(&s.handle(&bare, T0).unwrap()), MessageType::Nak);
    }

    #[test]
    fn request_naming_another_server_forgets_the_offer() {
        let mut s = server(&[1, 2]);
        assert_eq!(decode(&s.handle(&discover(1), T0).unwrap()).yiaddr(), ip(2));
        let opts = [
            DhcpOption::ServerIdentifier(ip(254)),
            DhcpOption::RequestedIpAddress(ip(2)),
        ];
        let elsewhere = client(1, MessageType::Request, Ipv4Addr::UNSPECIFIED, &opts);
        assert_eq!(s.handle(&elsewhere, T0), None);
        assert_eq!(decode(&s.handle(&discover(2), T0).unwrap()).yiaddr(), ip(2));
    }

    #[test]
    fn offers_expire() {
        let mut s = server(&[1, 2]);
        assert_eq!(decode(&s.handle(&discover(1), T0).unwrap()).yiaddr(), ip(2));
        assert_eq!(
            decode(&s.handle(&discover(2), T0 + 59).unwrap()).yiaddr(),
            ip(3)
        );
        let mut s = server(&[1, 2]);
        assert_eq!(decode(&s.handle(&discover(1), T0).unwrap()).yiaddr(), ip(2));
        assert_eq!(
            decode(&s.handle(&discover(2), T0 + 60).unwrap()).yiaddr(),
            ip(2)
        );
        // The first client's late REQUEST now names someone else's offer.
        assert_eq!(
            kind(&s.handle(&select(1, ip(2)), T0 + 61).unwrap()),
            MessageType::Nak
        );
    }

    #[test]
    fn expired_lease_is_reused() {
        let mut s = server(&[1, 2]);
        assert_eq!(lease(&mut s, 1, T0), Some(ip(2)));
        assert_eq!(lease(&mut s, 2, T0 + 3599), Some(ip(3)));
        assert_eq!(s.handle(&release(2, ip(3)), T0 + 3599), None);
        assert_eq!(lease(&mut s, 2, T0 + 3600), Some(ip(2)));
        // Guest 1 comes back late: its old address is gone.
        assert_eq!(
            kind(&s.handle(&renew(1, ip(2)), T0 + 3601).unwrap()),
            MessageType::Nak
        );
        assert_eq!(lease(&mut s, 1, T0 + 3601), Some(ip(3)));
    }

    #[test]
    fn expired_but_untaken_lease_can_be_renewed() {
        let mut s = server(&[1]);
        assert_eq!(lease(&mut s, 1, T0), Some(ip(2)));
        let ack = s.handle(&renew(1, ip(2)), T0 + 4000).unwrap();
        assert_eq!(kind(&ack), MessageType::Ack);
    }

    #[test]
    fn corrupt_lease_file_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases");
        let text = format!(
            "\u{1}\u{2}garbage\n52:54:00:12:34:01 192.168.100.7 {} bound\n\
             52:54:00:12:34:02 192.168.100.2 notanumber bound\n\
             52:54:00:12:34:03 192.168.100.3\n{}\n",
            T0 + 100,
            "x".repeat(10_000)
        );
        std::fs::write(&path, text).unwrap();
        let mut s = DhcpServer::new(config(24), guests(&[1, 2]), FileLeases::new(&path));
        assert_eq!(decode(&s.handle(&discover(1), T0).unwrap()).yiaddr(), ip(7));
        assert_eq!(decode(&s.handle(&discover(2), T0).unwrap()).yiaddr(), ip(2));
        // The rewritten file holds only well-formed lines.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().skip(1).all(|l| l.split(' ').count() == 4),
            "{text}"
        );
    }

    #[test]
    fn unwritable_store_answers_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("leases");
        let mut s = DhcpServer::new(config(24), guests(&[1]), FileLeases::new(path));
        assert_eq!(s.handle(&discover(1), T0), None);
        assert_eq!(s.handle(&select(1, ip(2)), T0), None);
    }

    #[test]
    fn decline_quarantines_the_address() {
        let mut s = server(&[1, 2]);
        assert_eq!(lease(&mut s, 1, T0), Some(ip(2)));
        let decline = |addr| {
            client(
                1,
                MessageType::Decline,
                Ipv4Addr::UNSPECIFIED,
                &[
                    DhcpOption::ServerIdentifier(GW),
                    DhcpOption::RequestedIpAddress(addr),
                ],
            )
        };
        // Declining an address that is not its own does nothing.
        assert_eq!(lease(&mut s, 2, T0), Some(ip(3)));
        assert_eq!(s.handle(&decline(ip(3)), T0), None);
        assert_eq!(lease(&mut s, 2, T0), Some(ip(3)));
        assert_eq!(s.handle(&decline(ip(2)), T0), None);
        assert_eq!(lease(&mut s, 1, T0 + 1), Some(ip(4)));
        assert_eq!(s.handle(&release(1, ip(4)), T0 + 1), None);
        assert_eq!(lease(&mut s, 1, T0 + DECLINE_HOLD_SECS), Some(ip(2)));
    }

    #[test]
    fn inform_gets_configuration_without_a_lease() {
        let mut s = server(&[1]);
        let inform = client(1, MessageType::Inform, ip(77), &[]);
        let ack = s.handle(&inform, T0).unwrap();
        assert_eq!(ack.to, ReplyTo::Unicast(ip(77)));
        let m = decode(&ack);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!((m.yiaddr(), m.ciaddr()), (Ipv4Addr::UNSPECIFIED, ip(77)));
        for code in [
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ] {
            assert_eq!(opt(&m, code), None);
        }
        assert_eq!(
            opt(&m, OptionCode::Router),
            Some(DhcpOption::Router(vec![GW]))
        );
        // A MAC of another process: only when its lease matches ciaddr.
        let mut other = server(&[2]);
        assert_eq!(other.handle(&inform, T0), None);
    }

    #[test]
    fn foreign_macs_are_ignored() {
        let mut s = server(&[1]);
        assert_eq!(s.handle(&discover(2), T0), None);
        assert_eq!(s.handle(&select(2, ip(2)), T0), None);
        let decline = client(
            2,
            MessageType::Decline,
            Ipv4Addr::UNSPECIFIED,
            &[DhcpOption::RequestedIpAddress(ip(2))],
        );
        assert_eq!(s.handle(&decline, T0), None);
        // Nothing was reserved for them.
        assert_eq!(lease(&mut s, 1, T0), Some(ip(2)));
    }

    #[test]
    fn server_messages_and_odd_types_are_ignored() {
        let mut s = server(&[1]);
        for t in [
            MessageType::Offer,
            MessageType::Ack,
            MessageType::Nak,
            MessageType::LeaseQuery,
        ] {
            assert_eq!(
                s.handle(&client(1, t, Ipv4Addr::UNSPECIFIED, &[]), T0),
                None
            );
        }
    }

    #[test]
    fn malformed_packets_are_dropped() {
        let mut s = server(&[1]);
        let good = discover(1);
        assert!(s.handle(&good, T0).is_some());
        let mut cases: Vec<Vec<u8>> =
            vec![vec![], vec![1], good[..239].to_vec(), good[..240].to_vec()];
        // Wrong op, htype, hlen, magic.
        for (at, value) in [(0, 2), (1, 6), (2, 16), (2, 0), (236, 0)] {
            let mut p = good.clone();
            p[at] = value;
            cases.push(p);
        }
        // The options: [53, 1, 1] then END at 243.
        assert_eq!(&good[240..244], &[53, 1, 1, 255]);
        cases.push(good[..243].to_vec()); // no END
        cases.push(good[..242].to_vec()); // value cut
        let mut long = good[..244].to_vec();
        long[241] = 200; // length past the end
        cases.push(long);
        let mut no_type = good[..240].to_vec();
        no_type.extend_from_slice(&[12, 2, b'h', b'i', 255]);
        cases.push(no_type);
        let mut bad_type = good[..240].to_vec();
        bad_type.extend_from_slice(&[53, 0, 255]);
        cases.push(bad_type);
        for (i, p) in cases.iter().enumerate() {
            assert_eq!(s.handle(p, T0), None, "case {i}");
        }
    }

    #[test]
    fn options_the_server_does_not_read_are_not_decoded() {
        let mut s = server(&[1]);
        let mut p = discover(1);
        assert_eq!(p.pop(), Some(255));
        // A client FQDN shorter than its fixed part (dhcproto asserts on it), a classless
        // route with a bad prefix, a repeated message type and a one-byte server id.
        p.extend_from_slice(&[81, 1, 0, 121, 3, 40, 1, 2, 53, 1, 3, 54, 1, 9, 255]);
        let offer = s.handle(&p, T0).unwrap();
        assert_eq!(kind(&offer), MessageType::Offer);
    }

    use crate::nat::XorShift;

    #[test]
    fn random_and_mutated_packets_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut s = server(&[1, 2]);
        let seeds = [
            discover(1),
            select(1, ip(2)),
            renew(2, ip(3)),
            release(1, ip(2)),
            client(
                1,
                MessageType::Inform,
                ip(9),
                &[DhcpOption::Hostname("x".into())],
            ),
        ];
        for i in 0..2000u64 {
            let p: Vec<u8> = match i % 4 {
                // Pure noise of any length.
                0 => (0..rng.below(600)).map(|_| rng.next() as u8).collect(),
                // A valid header followed by random option bytes: reaches every option decoder.
                1 => {
                    let mut p = seeds[0][..240].to_vec();
                    p.extend((0..rng.below(300)).map(|_| rng.next() as u8));
                    p
                }
                // Random options that are well-formed as TLVs, ending in END.
                2 => {
                    let mut p = seeds[0][..240].to_vec();
                    p.extend_from_slice(&[53, 1, 1 + rng.below(8) as u8]);
                    for _ in 0..rng.below(8) {
                        let len = rng.below(20);
                        p.push(rng.below(256) as u8);
                        p.push(len as u8);
                        p.extend((0..len).map(|_| rng.next() as u8));
                    }
                    p.push(255);
                    p
                }
                // A valid message with a few bytes flipped, truncated or extended.
                _ => {
                    let mut p = seeds[rng.below(seeds.len())].clone();
                    for _ in 0..1 + rng.below(6) {
                        let at = rng.below(p.len());
                        p[at] = rng.next() as u8;
                    }
                    match rng.below(3) {
                        0 => p.truncate(rng.below(p.len() + 1)),
                        1 => p.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
                        _ => {}
                    }
                    p
                }
            };
            let _ = s.handle(&p, T0 + i);
        }
        // Still serving afterwards.
        let mut s2 = server(&[1]);
        assert!(s2.handle(&discover(1), T0).is_some());
    }
}
