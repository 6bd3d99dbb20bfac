//! The NAT network's masquerade rule, in an nftables table of its own,
//! spoken as nf_tables netlink messages. No well-kept crate with a
//! compatible licence speaks nf_tables without the C libnftnl, and ivmm
//! needs exactly one table, one chain and one rule:
//!
//! ```text
//! table ip <bridge> {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat;
//!         ip saddr <subnet> oifname != <bridge> masquerade
//!     }
//! }
//! ```
//!
//! Deleting the table removes the chain and rule with it.

use std::io;

use super::netlink::Channel;
use super::Ipv4Net;

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NF_INET_POST_ROUTING: u32 = 4;
/// `priority srcnat`.
const NF_IP_PRI_NAT_SRC: i32 = 100;
/// The first 16-byte data register.
const NFT_REG_1: u32 = 1;
const NFT_META_OIFNAME: u32 = 7;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
/// Interface names are compared as IFNAMSIZ bytes, zero-padded.
const IFNAMSIZ: usize = 16;

const CHAIN: &str = "postrouting";

/// Netlink attributes, appended in order; nesting by closure.
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }
    fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(kind, &v)
    }
    fn be32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.put(kind, &v.to_be_bytes())
    }
    fn nest(&mut self, kind: u16, build: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::default();
        build(&mut inner);
        self.put(kind | NLA_F_NESTED, &inner.0)
    }
    /// One rule expression: `name` with its data attributes.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Attrs)) -> &mut Self {
        self.nest(NFTA_LIST_ELEM, |e| {
            e.str(NFTA_EXPR_NAME, name);
            e.nest(NFTA_EXPR_DATA, data);
        })
    }
}

/// An nf_tables batch: messages between BEGIN and END, applied by the
/// kernel all or nothing.
struct Batch {
    bytes: Vec<u8>,
    acks: Vec<u32>,
}

impl Batch {
    fn new(channel: &mut Channel) -> Self {
        let mut b = Batch {
            bytes: Vec::new(),
            acks: Vec::new(),
        };
        let seq = channel.next_seq();
        b.message(NFNL_MSG_BATCH_BEGIN, 0, seq, 0, NFNL_SUBSYS_NFTABLES, &[]);
        b
    }

    fn message(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) {
        let len = 16 + 4 + attrs.len();
        self.bytes.extend_from_slice(&(len as u32).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
        self.bytes.extend_from_slice(&seq.to_ne_bytes());
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id (big-endian).
        self.bytes.push(family);
        self.bytes.push(0);
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
        self.bytes.extend_from_slice(attrs);
    }

    fn add(&mut self, channel: &mut Channel, msg: u16, flags: u16, attrs: &Attrs) {
        let seq = channel.next_seq();
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        let flags = flags | libc::NLM_F_ACK as u16;
        self.message(kind, flags, seq, NFPROTO_IPV4, 0, &attrs.0);
        self.acks.push(seq);
    }

    fn commit(mut self, channel: &mut Channel) -> io::Result<()> {
        let seq = channel.next_seq();
        self.message(NFNL_MSG_BATCH_END, 0, seq, 0, NFNL_SUBSYS_NFTABLES, &[]);
        channel.send(&self.bytes)?;
        channel.wait_acks(&self.acks)
    }
}

fn ifname_bytes(name: &str) -> [u8; IFNAMSIZ] {
    let mut b = [0u8; IFNAMSIZ];
    for (d, s) in b.iter_mut().zip(name.as_bytes().iter().take(IFNAMSIZ - 1)) {
        *d = *s;
    }
    b
}

/// The expressions of `ip saddr <net> oifname != <bridge> masquerade`.
fn masquerade_rule(net: Ipv4Net, bridge: &str) -> Attrs {
    let mut exprs = Attrs::default();
    // reg1 = ip saddr & mask; reg1 == network
    exprs
        .expr("payload", |d| {
            d.be32(1, NFT_REG_1) // DREG
                .be32(2, NFT_PAYLOAD_NETWORK_HEADER) // BASE
                .be32(3, 12) // OFFSET: source address
                .be32(4, 4); // LEN
        })
        .expr("bitwise", |d| {
            d.be32(1, NFT_REG_1) // SREG
                .be32(2, NFT_REG_1) // DREG
                .be32(3, 4) // LEN
                .nest(4, |m| {
                    m.put(NFTA_DATA_VALUE, &net.mask().octets());
                }) // MASK
                .nest(5, |x| {
                    x.put(NFTA_DATA_VALUE, &[0; 4]);
                }); // XOR
        })
        .expr("cmp", |d| {
            d.be32(1, NFT_REG_1).be32(2, NFT_CMP_EQ).nest(3, |v| {
                v.put(NFTA_DATA_VALUE, &net.network().octets());
            });
        })
        // reg1 = oifname; reg1 != bridge
        .expr("meta", |d| {
            d.be32(1, NFT_REG_1).be32(2, NFT_META_OIFNAME);
        })
        .expr("cmp", |d| {
            d.be32(1, NFT_REG_1).be32(2, NFT_CMP_NEQ).nest(3, |v| {
                v.put(NFTA_DATA_VALUE, &ifname_bytes(bridge));
            });
        })
        .expr("masq", |_| {});
    exprs
}

/// nf_tables over a netfilter netlink socket.
pub struct NfTables {
    channel: Channel,
}

impl NfTables {
    pub fn open() -> io::Result<Self> {
        Ok(NfTables {
            channel: Channel::open(NETLINK_NETFILTER)?,
        })
    }

    /// Creates table `name` with the masquerade rule for `net` leaving
    /// through anything but `bridge`. Fails if the table exists.
    pub fn create_masquerade(&mut self, name: &str, net: Ipv4Net, bridge: &str) -> io::Result<()> {
        let ch = &mut self.channel;
        let mut batch = Batch::new(ch);
        let mut table = Attrs::default();
        table.str(NFTA_TABLE_NAME, name);
        batch.add(
            ch,
            NFT_MSG_NEWTABLE,
            libc::NLM_F_CREATE as u16 | libc::NLM_F_EXCL as u16,
            &table,
        );

        let mut chain = Attrs::default();
        chain
            .str(NFTA_CHAIN_TABLE, name)
            .str(NFTA_CHAIN_NAME, CHAIN)
            .nest(NFTA_CHAIN_HOOK, |h| {
                h.be32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING)
                    .be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_SRC as u32);
            })
            .str(NFTA_CHAIN_TYPE, "nat");
        batch.add(ch, NFT_MSG_NEWCHAIN, libc::NLM_F_CREATE as u16, &chain);

        let mut rule = Attrs::default();
        rule.str(NFTA_RULE_TABLE, name)
            .str(NFTA_RULE_CHAIN, CHAIN)
            .put(
                NFTA_RULE_EXPRESSIONS | NLA_F_NESTED,
                &masquerade_rule(net, bridge).0,
            );
        batch.add(
            ch,
            NFT_MSG_NEWRULE,
            libc::NLM_F_CREATE as u16 | libc::NLM_F_APPEND as u16,
            &rule,
        );
        batch.commit(ch)
    }

    /// Deletes table `name` with everything in it; absent is fine.
    pub fn delete_table(&mut self, name: &str) -> io::Result<()> {
        let ch = &mut self.channel;
        let mut batch = Batch::new(ch);
        let mut table = Attrs::default();
        table.str(NFTA_TABLE_NAME, name);
        batch.add(ch, NFT_MSG_DELTABLE, 0, &table);
        match batch.commit(ch) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut a = Attrs::default();
        a.str(1, "ab").nest(2, |n| {
            n.be32(3, 0x01020304);
        });
        assert_eq!(
            a.0,
            [
                7, 0, 1, 0, b'a', b'b', 0, 0, // "ab\0" + pad
                12, 0, 2, 0x80, // nested, 4 + 8
                8, 0, 3, 0, 1, 2, 3, 4,
            ]
        );
    }

    #[test]
    fn interface_names_are_zero_padded_to_ifnamsiz() {
        let b = ifname_bytes("ivmm-0a000200");
        assert_eq!(&b[..13], b"ivmm-0a000200");
        assert!(b[13..].iter().all(|&x| x == 0));
    }
}
