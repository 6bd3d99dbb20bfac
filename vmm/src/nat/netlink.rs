//! Route netlink (links, addresses, routes) for the NAT network, through
//! `netlink-packet-route` on a blocking `netlink-sys` socket: the bridge,
//! its address, attaching TAPs to it, and the host's IPv4 networks (to
//! avoid subnets already in use).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::Ipv4Net;

/// Largest reply datagram read at once (dumps come in several).
const RECV_BUF: usize = 64 * 1024;

/// A netlink socket of one protocol with a request counter.
pub struct Channel {
    socket: Socket,
    seq: u32,
}

impl Channel {
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // A kernel that never answers must not hang ivmm.
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: the fd is the open socket; the option value is a valid
        // timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Channel { socket, seq: 0 })
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.socket.send(bytes, 0).map(|_| ())
    }

    /// Reads replies until every sequence number in `acks` has been
    /// acknowledged; the first error the kernel reports is returned.
    pub fn wait_acks(&self, acks: &[u32]) -> io::Result<()> {
        let mut pending: Vec<u32> = acks.to_vec();
        let mut buf = vec![0u8; RECV_BUF];
        while !pending.is_empty() {
            let n = self.socket.recv(&mut &mut buf[..], 0)?;
            for (seq, msg_type, payload) in raw_messages(&buf[..n.min(buf.len())]) {
                if msg_type != libc::NLMSG_ERROR as u16 {
                    continue;
                }
                pending.retain(|&s| s != seq);
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(-libc::EPROTO);
                // A failed batch message may leave later ones unanswered.
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
            }
        }
        Ok(())
    }

    fn recv_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.socket.recv(&mut &mut buf[..], 0)?;
        Ok(n.min(buf.len()))
    }
}

/// The messages in one netlink datagram: (sequence number, type, payload).
/// Stops at the first malformed length.
pub fn raw_messages(mut data: &[u8]) -> Vec<(u32, u16, &[u8])> {
    const HEADER: usize = 16;
    let mut out = Vec::new();
    while data.len() >= HEADER {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < HEADER || len > data.len() {
            break;
        }
        let msg_type = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        out.push((seq, msg_type, &data[HEADER..len]));
        let aligned = (len + 3) & !3;
        data = data.get(aligned..).unwrap_or_default();
    }
    out
}

/// Route netlink: the calls the NAT network needs.
pub struct RouteNetlink {
    channel: Channel,
}

/// A link as the host reports it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
}

impl RouteNetlink {
    pub fn open() -> io::Result<Self> {
        Ok(RouteNetlink {
            channel: Channel::open(NETLINK_ROUTE)?,
        })
    }

    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.channel.next_seq();
        self.channel
            .send(&encode(message, flags | NLM_F_ACK, seq))?;
        self.channel.wait_acks(&[seq])
    }

    fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.channel.next_seq();
        self.channel.send(&encode(message, NLM_F_DUMP, seq))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let n = self.channel.recv_some(&mut buf)?;
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = (msg.header.length as usize + 3) & !3;
                rest = rest.get(len.max(16)..).unwrap_or_default();
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return Err(e.code.map_or_else(
                            || io::Error::other("netlink dump failed"),
                            |c| io::Error::from_raw_os_error(-c.get()),
                        ))
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Every link on the host (in this network namespace).
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => {
                    let name = link.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })?;
                    Some(Link {
                        index: link.header.index,
                        name,
                    })
                }
                _ => None,
            })
            .collect())
    }

    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self
            .links()?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index))
    }

    /// Creates a bridge; fails with `AlreadyExists` if the name is taken.
    pub fn create_bridge(&mut self, name: &str, alias: &str) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.to_owned()));
        link.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        // The kernel ignores an alias given at creation; set it after.
        let index = self
            .link_index(name)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes
            .push(LinkAttribute::IfAlias(alias.to_owned()));
        self.request(RouteNetlinkMessage::SetLink(link), 0)
    }

    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(link), 0)
    }

    /// Brings a link up and, with `controller`, makes it a port of that
    /// bridge.
    pub fn set_up(&mut self, index: u32, controller: Option<u32>) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        if let Some(c) = controller {
            link.attributes.push(LinkAttribute::Controller(c));
        }
        self.request(RouteNetlinkMessage::SetLink(link), 0)
    }

    pub fn add_address(&mut self, index: u32, net: Ipv4Net, address: Ipv4Addr) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = net.prefix_len();
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(address)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(address)));
        msg.attributes
            .push(AddressAttribute::Broadcast(net.broadcast()));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The IPv4 networks the host already uses: its addresses' subnets
    /// and its routes' destinations (default routes left out), each with
    /// the link it is on.
    pub fn ipv4_networks(&mut self) -> io::Result<Vec<(Ipv4Net, u32)>> {
        let mut out = Vec::new();
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        for reply in self.dump(RouteNetlinkMessage::GetAddress(msg))? {
            if let RouteNetlinkMessage::NewAddress(a) = reply {
                for attr in &a.attributes {
                    if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                        if let Some(net) = Ipv4Net::new(*ip, a.header.prefix_len) {
                            out.push((net, a.header.index));
                        }
                    }
                }
            }
        }
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        for reply in self.dump(RouteNetlinkMessage::GetRoute(msg))? {
            if let RouteNetlinkMessage::NewRoute(r) = reply {
                let prefix = r.header.destination_prefix_length;
                let mut dest = None;
                let mut oif = 0;
                for attr in &r.attributes {
                    match attr {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => dest = Some(*ip),
                        RouteAttribute::Oif(i) => oif = *i,
                        _ => {}
                    }
                }
                // Local/broadcast table entries repeat the addresses above.
                if prefix == 0 || r.header.table != libc::RT_TABLE_MAIN {
                    continue;
                }
                if let Some(net) = dest.and_then(|d| Ipv4Net::new(d, prefix)) {
                    out.push((net, oif));
                }
            }
        }
        Ok(out)
    }
}

fn encode(message: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_messages_stop_at_bad_lengths() {
        let mut d = Vec::new();
        d.extend_from_slice(&20u32.to_ne_bytes());
        d.extend_from_slice(&2u16.to_ne_bytes());
        d.extend_from_slice(&0u16.to_ne_bytes());
        d.extend_from_slice(&7u32.to_ne_bytes());
        d.extend_from_slice(&0u32.to_ne_bytes());
        d.extend_from_slice(&0i32.to_ne_bytes());
        // A second header claiming more bytes than there are.
        d.extend_from_slice(&999u32.to_ne_bytes());
        d.extend_from_slice(&[0; 12]);
        let msgs = raw_messages(&d);
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].0, msgs[0].1, msgs[0].2.len()), (7, 2, 4));
        assert!(raw_messages(&[1, 2, 3]).is_empty());
    }
}
