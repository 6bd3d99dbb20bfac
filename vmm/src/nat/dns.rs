//! A small UDP DNS forwarder for the NAT network's gateway address (protocol logic only; the
//! caller owns the sockets).
//!
//! Guests' queries go to the host's resolvers with a fresh random ID each, so the guest's
//! own IDs never reach the outside and an off-path attacker has to guess ours. An answer is
//! taken only from the upstream the query went to, with a pending ID and the same question;
//! the client's ID is put back before it goes to the guest.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// glibc reads at most three `nameserver` lines.
const MAX_UPSTREAMS: usize = 3;
/// Queries waiting for an answer; past this new ones are dropped (the client retries).
pub const MAX_PENDING: usize = 512;
/// How long a query waits for its answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_LEN: usize = 12;
/// A query without EDNS fits the classic UDP limit.
const MAX_PLAIN_QUERY: usize = 512;
/// With EDNS (an additional record), queries up to this size are forwarded.
const MAX_EDNS_QUERY: usize = 4096;
/// Longest name on the wire (RFC 1035 2.3.4).
const MAX_NAME: usize = 255;
const MAX_LABEL: usize = 63;

/// The upstream resolvers in resolv.conf text: `nameserver` lines with an IPv4 or IPv6
/// address (port 53), at most three. Link-local IPv6 addresses with a zone are skipped:
/// the zone names an interface this parser cannot resolve.
pub fn upstream_servers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .take(MAX_UPSTREAMS)
        .collect()
}

#[derive(Debug)]
struct Pending {
    client: SocketAddr,
    client_id: u16,
    upstream: SocketAddr,
    /// The question section exactly as the client sent it.
    question: Vec<u8>,
    deadline: Instant,
}

/// Forwards guest queries to upstream resolvers and their answers back.
#[derive(Debug)]
pub struct DnsForwarder {
    upstreams: Vec<SocketAddr>,
    /// Index of the upstream new queries go to; moves on when one of its queries times out.
    preferred: usize,
    /// By the ID we gave the query upstream.
    pending: HashMap<u16, Pending>,
    ids: IdSource,
}

impl DnsForwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            upstreams,
            preferred: 0,
            pending: HashMap::new(),
            ids: IdSource::new(),
        }
    }

    /// A query from a guest: the datagram to send upstream and where, or `None` when it is
    /// malformed, the table is full or there is no upstream.
    pub fn from_guest(
        &mut self,
        query: &[u8],
        client: SocketAddr,
        now: Instant,
    ) -> Option<(Vec<u8>, SocketAddr)> {
        let question = valid_query(query)?;
        let upstream = *self.upstreams.get(self.preferred)?;
        if self.pending.len() >= MAX_PENDING {
            log::debug!("DNS: {MAX_PENDING} queries pending, dropping one from {client}");
            return None;
        }
        let id = self.fresh_id()?;
        let pending = Pending {
            client,
            client_id: u16::from_be_bytes([query[0], query[1]]),
            upstream,
            question: question.to_vec(),
            deadline: now + QUERY_TIMEOUT,
        };
        self.pending.insert(id, pending);
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&id.to_be_bytes());
        Some((out, upstream))
    }

    /// An answer from an upstream: the datagram for the guest and its address, or `None`
    /// when it answers nothing we asked (wrong source, unknown ID, other question).
    pub fn from_upstream(
        &mut self,
        response: &[u8],
        from: SocketAddr,
        _now: Instant,
    ) -> Option<(Vec<u8>, SocketAddr)> {
        if response.len() < HEADER_LEN || response[2] & 0x80 == 0 {
            return None;
        }
        let id = u16::from_be_bytes([response[0], response[1]]);
        let p = self.pending.get(&id)?;
        let question = response.get(HEADER_LEN..HEADER_LEN + p.question.len());
        let matches =
            p.upstream == from && qdcount(response) == 1 && question == Some(p.question.as_slice());
        if !matches {
            // Leave the entry: the real answer may still come.
            return None;
        }
        let p = self.pending.remove(&id)?;
        let mut out = response.to_vec();
        out[..2].copy_from_slice(&p.client_id.to_be_bytes());
        Some((out, p.client))
    }

    /// Drops queries past their deadline; a timeout at the preferred upstream moves new
    /// queries to the next one.
    pub fn expire(&mut self, now: Instant) {
        let mut preferred_timed_out = false;
        let preferred = self.upstreams.get(self.preferred).copied();
        self.pending.retain(|_, p| {
            let live = p.deadline > now;
            if !live && Some(p.upstream) == preferred {
                preferred_timed_out = true;
            }
            live
        });
        if preferred_timed_out && !self.upstreams.is_empty() {
            self.preferred = (self.preferred + 1) % self.upstreams.len();
            log::debug!(
                "DNS: upstream timed out; now using {}",
                self.upstreams[self.preferred]
            );
        }
    }

    /// When [`Self::expire`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// A random ID no pending query uses.
    fn fresh_id(&mut self) -> Option<u16> {
        // With at most 512 of 65536 IDs taken, 32 draws all colliding is about 1 in 2^224.
        (0..32)
            .map(|_| self.ids.next())
            .find(|id| !self.pending.contains_key(id))
    }
}

fn qdcount(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[4], packet[5]])
}

/// The question section of a query we are willing to forward, or `None`.
fn valid_query(q: &[u8]) -> Option<&[u8]> {
    if q.len() < HEADER_LEN {
        return None;
    }
    let flags = q[2];
    let is_response = flags & 0x80 != 0;
    let opcode = (flags >> 3) & 0x0f;
    if is_response || opcode != 0 || qdcount(q) != 1 {
        return None;
    }
    let arcount = u16::from_be_bytes([q[10], q[11]]);
    let max = if arcount > 0 {
        MAX_EDNS_QUERY
    } else {
        MAX_PLAIN_QUERY
    };
    if q.len() > max {
        return None;
    }
    let name_len = name_len(&q[HEADER_LEN..])?;
    // QTYPE and QCLASS follow the name.
    q.get(HEADER_LEN..HEADER_LEN + name_len + 4)
}

/// Length of the uncompressed name at the start of `b`, terminating zero included.
fn name_len(b: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let len = usize::from(*b.get(pos)?);
        if len > MAX_LABEL {
            return None; // a compression pointer (none belongs in a query) or reserved bits
        }
        pos += 1 + len;
        if pos > MAX_NAME {
            return None;
        }
        if len == 0 {
            return Some(pos);
        }
    }
}

/// Unpredictable query IDs from the kernel's random pool, fetched in batches.
#[derive(Debug)]
struct IdSource {
    buf: [u8; 128],
    used: usize,
    /// Backup when getrandom fails: a per-process random SipHash key over a counter.
    fallback: std::collections::hash_map::RandomState,
    counter: u64,
}

impl IdSource {
    fn new() -> Self {
        Self {
            buf: [0; 128],
            used: 128,
            fallback: std::collections::hash_map::RandomState::new(),
            counter: 0,
        }
    }

    fn next(&mut self) -> u16 {
        if self.used + 2 > self.buf.len() {
            if fill_random(&mut self.buf) {
                self.used = 0;
            } else {
                self.counter = self.counter.wrapping_add(1);
                let mut h = self.fallback.build_hasher();
                h.write_u64(self.counter);
                return h.finish() as u16;
            }
        }
        let id = u16::from_ne_bytes([self.buf[self.used], self.buf[self.used + 1]]);
        self.used += 2;
        id
    }
}

/// Fills `buf` from getrandom(2); false if the kernel would not.
fn fill_random(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which is valid
        // and exclusively borrowed for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn up0() -> SocketAddr {
        addr("192.0.2.53:53")
    }

    fn up1() -> SocketAddr {
        addr("[2001:db8::53]:53")
    }

    fn guest() -> SocketAddr {
        addr("192.168.100.2:40000")
    }

    /// A standard query for `name` (dot-separated), type A, class IN.
    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    /// The upstream's answer to `forwarded`: same ID and question, one A record.
    fn answer(forwarded: &[u8]) -> Vec<u8> {
        let mut a = forwarded.to_vec();
        a[2] |= 0x80;
        a[3] = 0x80;
        a[7] = 1; // ANCOUNT
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 93, 184, 216, 34]);
        a
    }

    fn forwarder() -> DnsForwarder {
        DnsForwarder::new(vec![up0(), up1()])
    }

    #[test]
    fn resolv_conf_parsing() {
        let conf = "# comment\n; nameserver 9.9.9.9\nsearch example.com\n\
                    nameserver 192.0.2.1\n  nameserver\t2001:db8::1  # trailing\n\
                    nameserver fe80::1%eth0\nnameserver not-an-ip\nnameserver\n\
                    nameservers 192.0.2.9\noptions edns0\n\
                    nameserver 192.0.2.2\nnameserver 192.0.2.3\n";
        assert_eq!(
            upstream_servers(conf),
            [
                addr("192.0.2.1:53"),
                addr("[2001:db8::1]:53"),
                addr("192.0.2.2:53")
            ]
        );
        assert!(upstream_servers("").is_empty());
        assert!(upstream_servers("\u{0}\u{ff}garbage").is_empty());
    }

    #[test]
    fn round_trip_restores_id_and_client() {
        let mut f = forwarder();
        let now = Instant::now();
        let q = query(0xabcd, "example.com");
        let (out, to) = f.from_guest(&q, guest(), now).unwrap();
        assert_eq!(to, up0());
        assert_eq!(out[2..], q[2..]);
        assert_eq!(f.pending_len(), 1);
        let (back, client) = f.from_upstream(&answer(&out), up0(), now).unwrap();
        assert_eq!(client, guest());
        assert_eq!(back, answer(&q));
        assert_eq!(f.pending_len(), 0);
        assert_eq!(f.next_deadline(), None);
        // Answered once: a replay is dropped.
        assert_eq!(f.from_upstream(&answer(&out), up0(), now), None);
    }

    #[test]
    fn upstream_ids_are_fresh() {
        let mut f = forwarder();
        let now = Instant::now();
        let ids: std::collections::HashSet<u16> = (0..200)
            .map(|_| {
                let (out, _) = f.from_guest(&query(7, "a.example"), guest(), now).unwrap();
                u16::from_be_bytes([out[0], out[1]])
            })
            .collect();
        assert_eq!(ids.len(), 200);
        assert_eq!(f.pending_len(), 200);
    }

    #[test]
    fn answers_that_do_not_match_are_dropped() {
        let mut f = forwarder();
        let now = Instant::now();
        let q = query(1, "example.com");
        let (out, _) = f.from_guest(&q, guest(), now).unwrap();
        let good = answer(&out);
        // From another address, or the right IP on another port.
        assert_eq!(f.from_upstream(&good, up1(), now), None);
        assert_eq!(f.from_upstream(&good, addr("192.0.2.53:5353"), now), None);
        // Unknown ID.
        let mut other_id = good.clone();
        other_id[0] ^= 0xff;
        assert_eq!(f.from_upstream(&other_id, up0(), now), None);
        // Another question (one letter, or its case), or no question.
        let mut other_q = good.clone();
        other_q[13] = b'f';
        assert_eq!(f.from_upstream(&other_q, up0(), now), None);
        let mut case = good.clone();
        case[13] = b'E';
        assert_eq!(f.from_upstream(&case, up0(), now), None);
        let mut no_q = good.clone();
        no_q[5] = 0;
        assert_eq!(f.from_upstream(&no_q, up0(), now), None);
        assert_eq!(f.from_upstream(&good[..20], up0(), now), None);
        // Not a response.
        let mut query_bit = good.clone();
        query_bit[2] &= 0x7f;
        assert_eq!(f.from_upstream(&query_bit, up0(), now), None);
        // The real answer still gets through.
        assert_eq!(
            f.from_upstream(&good, up0(), now).map(|(_, c)| c),
            Some(guest())
        );
    }

    #[test]
    fn queries_time_out_and_move_to_the_next_upstream() {
        let mut f = forwarder();
        let t0 = Instant::now();
        let (out, to) = f.from_guest(&query(1, "example.com"), guest(), t0).unwrap();
        assert_eq!(to, up0());
        assert_eq!(f.next_deadline(), Some(t0 + QUERY_TIMEOUT));
        f.expire(t0 + QUERY_TIMEOUT - Duration::from_millis(1));
        assert_eq!(f.pending_len(), 1);
        f.expire(t0 + QUERY_TIMEOUT);
        assert_eq!(f.pending_len(), 0);
        assert_eq!(f.next_deadline(), None);
        assert_eq!(
            f.from_upstream(&answer(&out), up0(), t0 + QUERY_TIMEOUT),
            None
        );
        // The next query goes to the second upstream, and after its timeout back to the first.
        let t1 = t0 + QUERY_TIMEOUT;
        let (_, to) = f.from_guest(&query(2, "example.com"), guest(), t1).unwrap();
        assert_eq!(to, up1());
        f.expire(t1 + QUERY_TIMEOUT);
        let (_, to) = f.from_guest(&query(3, "example.com"), guest(), t1).unwrap();
        assert_eq!(to, up0());
    }

    #[test]
    fn only_a_timeout_at_the_preferred_upstream_moves_on() {
        let mut f = forwarder();
        let t0 = Instant::now();
        f.from_guest(&query(1, "x.example"), guest(), t0).unwrap();
        f.expire(t0 + QUERY_TIMEOUT);
        // Now preferring up1; a stale up0 timeout must not move it again.
        let (_, to) = f.from_guest(&query(2, "x.example"), guest(), t0).unwrap();
        assert_eq!(to, up1());
        f.upstreams.swap(0, 1); // pretend the pending query went to the non-preferred one
        f.expire(t0 + QUERY_TIMEOUT);
        assert_eq!(f.preferred, 1);
    }

    #[test]
    fn full_table_drops_new_queries() {
        let mut f = forwarder();
        let now = Instant::now();
        let mut first = None;
        for i in 0..MAX_PENDING {
            let out = f.from_guest(&query(i as u16, "example.com"), guest(), now);
            first = first.or(out);
        }
        assert_eq!(
            f.from_guest(&query(9999, "example.com"), guest(), now),
            None
        );
        let (out, _) = first.unwrap();
        assert!(f.from_upstream(&answer(&out), up0(), now).is_some());
        assert!(f
            .from_guest(&query(9999, "example.com"), guest(), now)
            .is_some());
    }

    #[test]
    fn no_upstream_no_forwarding() {
        let mut f = DnsForwarder::new(Vec::new());
        assert_eq!(
            f.from_guest(&query(1, "example.com"), guest(), Instant::now()),
            None
        );
        f.expire(Instant::now());
    }

    #[test]
    fn malformed_queries_are_dropped() {
        let mut f = forwarder();
        let now = Instant::now();
        let good = query(1, "example.com");
        let mut cases: Vec<Vec<u8>> = vec![vec![], good[..11].to_vec(), good[..12].to_vec()];
        // Truncated anywhere in the question.
        for n in 13..good.len() {
            cases.push(good[..n].to_vec());
        }
        let mut qr = good.clone();
        qr[2] |= 0x80;
        cases.push(qr);
        let mut opcode = good.clone();
        opcode[2] |= 0x10; // opcode 2, STATUS
        cases.push(opcode);
        for qd in [0u8, 2] {
            let mut p = good.clone();
            p[5] = qd;
            cases.push(p);
        }
        cases.push(query(1, &"a".repeat(64)));
        // 5 labels of 63: a 321-byte name.
        cases.push(query(1, &vec!["b".repeat(63); 5].join(".")));
        // A pointer to itself, and a pointer to the header.
        let mut pointer_loop = good[..12].to_vec();
        pointer_loop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        cases.push(pointer_loop);
        let mut pointer = good[..12].to_vec();
        pointer.extend_from_slice(&[1, b'a', 0xc0, 0, 0, 1, 0, 1]);
        cases.push(pointer);
        // Reserved label type 0x40.
        let mut reserved = good[..12].to_vec();
        reserved.extend_from_slice(&[0x41, b'a', 0, 0, 1, 0, 1]);
        cases.push(reserved);
        // Too big without EDNS; too big even with it.
        let mut big = good.clone();
        big.resize(513, 0);
        cases.push(big);
        let mut huge = good.clone();
        huge[11] = 1;
        huge.resize(MAX_EDNS_QUERY + 1, 0);
        cases.push(huge);
        for (i, p) in cases.iter().enumerate() {
            assert_eq!(f.from_guest(p, guest(), now), None, "case {i}");
        }
        assert_eq!(f.pending_len(), 0);
    }

    #[test]
    fn edge_sized_queries_are_forwarded() {
        let mut f = forwarder();
        let now = Instant::now();
        // Longest legal name: 3 labels of 63 + one of 61 = 255 bytes on the wire.
        let longest = [
            "c".repeat(63),
            "c".repeat(63),
            "c".repeat(63),
            "c".repeat(61),
        ]
        .join(".");
        assert_eq!(name_len(&query(1, &longest)[12..]), Some(255));
        assert!(f.from_guest(&query(1, &longest), guest(), now).is_some());
        // The root name.
        let mut root = query(1, "x")[..12].to_vec();
        root.extend_from_slice(&[0, 0, 2, 0, 1]);
        assert!(f.from_guest(&root, guest(), now).is_some());
        // A large EDNS query (ARCOUNT 1).
        let mut edns = query(1, "example.com");
        edns[11] = 1;
        edns.resize(1200, 0);
        assert!(f.from_guest(&edns, guest(), now).is_some());
    }

    use crate::nat::XorShift;

    #[test]
    fn random_and_mutated_packets_never_panic() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut f = forwarder();
        let now = Instant::now();
        let mut forwarded: Vec<Vec<u8>> = Vec::new();
        for i in 0..2000 {
            let mut p = match i % 3 {
                0 => (0..rng.below(700)).map(|_| rng.next() as u8).collect(),
                1 => query(rng.next() as u16, "www.example.com"),
                _ => match forwarded.last() {
                    Some(out) => answer(out.as_slice()),
                    None => query(1, "example.org"),
                },
            };
            if i % 3 != 0 {
                for _ in 0..rng.below(5) {
                    let at = rng.below(p.len());
                    p[at] = rng.next() as u8;
                }
                if rng.below(4) == 0 {
                    p.truncate(rng.below(p.len() + 1));
                }
            }
            if let Some((out, _)) = f.from_guest(&p, guest(), now) {
                forwarded.push(out);
            }
            let from = if rng.below(2) == 0 { up0() } else { up1() };
            let _ = f.from_upstream(&p, from, now);
            if i % 100 == 0 {
                f.expire(now + QUERY_TIMEOUT);
            }
        }
        assert!(!forwarded.is_empty());
    }
}
