//! DHCP lease records shared by every ivmm process on one NAT network.
//!
//! Each process runs its own DHCP server, so address allocation is coordinated through one
//! lease file per bridge, read and rewritten under `flock(LOCK_EX)` for every change. The file
//! is plain text, one lease a line: `MAC IP EXPIRY STATE` (EXPIRY in unix seconds, STATE one
//! of `offered`, `bound`, `declined`). A line that does not parse is skipped: a damaged file
//! costs at most some leases, never the server.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// A lease file larger than this is not ours (a few thousand leases are ~200 KiB): only its
/// first part is read.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// Leases expired longer ago than this are dropped when the file is written, so MACs that
/// never come back do not grow it forever.
const FORGET_AFTER_SECS: u64 = 24 * 60 * 60;

/// How far a lease has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Reserved by an OFFER for a short time, so no other server offers it too.
    Offered,
    /// Acknowledged: the guest uses it.
    Bound,
}

/// One MAC's address and until when it holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// Unix seconds; at or after this the address is free for others.
    pub expiry: u64,
    pub state: LeaseState,
}

impl Lease {
    pub fn is_active(&self, now: u64) -> bool {
        now < self.expiry
    }
}

/// Every lease of one network: one per MAC, plus addresses a guest declined (in use by
/// someone we do not know), which nobody gets until the quarantine ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    by_mac: BTreeMap<[u8; 6], Lease>,
    /// Declined address → unix seconds when it may be handed out again.
    declined: BTreeMap<Ipv4Addr, u64>,
}

impl Leases {
    pub fn get(&self, mac: &[u8; 6]) -> Option<&Lease> {
        self.by_mac.get(mac)
    }

    /// Records `lease` for `mac`, replacing that MAC's previous one. Any other MAC's expired
    /// lease on the same address is forgotten, so one address never has two records.
    pub fn set(&mut self, mac: [u8; 6], lease: Lease) {
        self.by_mac.retain(|m, l| *m == mac || l.ip != lease.ip);
        self.by_mac.insert(mac, lease);
    }

    pub fn remove(&mut self, mac: &[u8; 6]) -> Option<Lease> {
        self.by_mac.remove(mac)
    }

    /// Keeps `ip` from being handed out until `until` (unix seconds).
    pub fn decline(&mut self, ip: Ipv4Addr, until: u64) {
        self.by_mac.retain(|_, l| l.ip != ip);
        self.declined.insert(ip, until);
    }

    /// Whether `ip` may be given to `mac` now: no other MAC holds an unexpired lease on it
    /// and it is not quarantined after a DECLINE.
    pub fn is_free_for(&self, ip: Ipv4Addr, mac: &[u8; 6], now: u64) -> bool {
        if self.declined.get(&ip).is_some_and(|&until| now < until) {
            return false;
        }
        !self
            .by_mac
            .iter()
            .any(|(m, l)| m != mac && l.ip == ip && l.is_active(now))
    }

    /// Addresses nobody but `mac` may be given now.
    pub fn unavailable_for(&self, mac: &[u8; 6], now: u64) -> std::collections::BTreeSet<u32> {
        let held = self
            .by_mac
            .iter()
            .filter(|(m, l)| *m != mac && l.is_active(now))
            .map(|(_, l)| u32::from(l.ip));
        let declined = self
            .declined
            .iter()
            .filter(|(_, &until)| now < until)
            .map(|(ip, _)| u32::from(*ip));
        held.chain(declined).collect()
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// Parses the file format; lines that do not parse are skipped, and a line whose address
    /// an earlier line already holds is skipped too (one address, one record).
    pub fn parse(text: &str) -> Self {
        let mut leases = Leases::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((mac, ip, expiry, state)) = parse_line(line) else {
                log::debug!("lease file: skipping malformed line {line:?}");
                continue;
            };
            let taken =
                leases.by_mac.values().any(|l| l.ip == ip) || leases.declined.contains_key(&ip);
            if taken {
                continue;
            }
            match state {
                Some(state) => {
                    leases
                        .by_mac
                        .entry(mac)
                        .or_insert(Lease { ip, expiry, state });
                }
                None => {
                    leases.declined.insert(ip, expiry);
                }
            }
        }
        leases
    }

    /// The file text; records expired for over a day are left out.
    pub fn serialize(&self, now: u64) -> String {
        let keep = |expiry: u64| expiry.saturating_add(FORGET_AFTER_SECS) > now;
        let mut out = String::from("# ivmm NAT leases: MAC IP EXPIRY STATE\n");
        for (mac, l) in self.by_mac.iter().filter(|(_, l)| keep(l.expiry)) {
            let state = match l.state {
                LeaseState::Offered => "offered",
                LeaseState::Bound => "bound",
            };
            let _ = writeln!(out, "{} {} {} {}", fmt_mac(mac), l.ip, l.expiry, state);
        }
        for (ip, until) in self.declined.iter().filter(|(_, &u)| keep(u)) {
            let _ = writeln!(out, "{} {} {} declined", fmt_mac(&[0; 6]), ip, until);
        }
        out
    }
}

/// One line: MAC, address, expiry and state (`None` for a declined address).
fn parse_line(line: &str) -> Option<([u8; 6], Ipv4Addr, u64, Option<LeaseState>)> {
    let mut it = line.split_whitespace();
    let mac = parse_mac(it.next()?)?;
    let ip = it.next()?.parse().ok()?;
    let expiry = it.next()?.parse().ok()?;
    let state = match it.next()? {
        "offered" => Some(LeaseState::Offered),
        "bound" => Some(LeaseState::Bound),
        "declined" => None,
        _ => return None,
    };
    if it.next().is_some() {
        return None;
    }
    Some((mac, ip, expiry, state))
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn fmt_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Where leases live. `update` runs `f` on the current leases and makes its changes visible
/// to every other server sharing the store, atomically with respect to them.
pub trait LeaseStore: Send {
    fn update(&mut self, now: u64, f: &mut dyn FnMut(&mut Leases)) -> io::Result<()>;
}

/// Leases of this process only: for tests.
#[derive(Debug, Default)]
pub struct MemoryLeases(pub Leases);

impl LeaseStore for MemoryLeases {
    fn update(&mut self, _now: u64, f: &mut dyn FnMut(&mut Leases)) -> io::Result<()> {
        f(&mut self.0);
        Ok(())
    }
}

/// The lease file shared by all ivmm processes on one bridge. Every update opens it
/// (creating it with mode 0600), locks it exclusively, reads, applies and, when something
/// changed, rewrites it; closing the file drops the lock.
#[derive(Debug, Clone)]
pub struct FileLeases {
    pub path: PathBuf,
}

impl FileLeases {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl LeaseStore for FileLeases {
    fn update(&mut self, now: u64, f: &mut dyn FnMut(&mut Leases)) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            // The directory is ours, but never write through a planted symlink.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)?;
        lock_exclusive(&file)?;
        let mut bytes = Vec::new();
        (&mut file).take(MAX_FILE_BYTES).read_to_end(&mut bytes)?;
        let before = Leases::parse(&String::from_utf8_lossy(&bytes));
        let mut leases = before.clone();
        f(&mut leases);
        if leases != before {
            let text = leases.serialize(now);
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(text.as_bytes())?;
        }
        Ok(())
    }
}

/// Waits for an exclusive `flock` on `file`; it is released when the file is closed.
fn lock_exclusive(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock only takes a file descriptor and flags; `file` keeps the descriptor
        // open for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    fn lease(ip: [u8; 4], expiry: u64, state: LeaseState) -> Lease {
        Lease {
            ip: ip.into(),
            expiry,
            state,
        }
    }

    #[test]
    fn serialize_parse_round_trip() {
        let mut l = Leases::default();
        l.set(A, lease([10, 0, 2, 3], 1000, LeaseState::Bound));
        l.set(B, lease([10, 0, 2, 4], 900, LeaseState::Offered));
        l.decline([10, 0, 2, 9].into(), 1200);
        let text = l.serialize(500);
        assert!(
            text.contains("52:54:00:00:00:01 10.0.2.3 1000 bound"),
            "{text}"
        );
        assert_eq!(Leases::parse(&text), l);
    }

    #[test]
    fn corrupt_lines_are_skipped() {
        let text = "garbage\n\
                    52:54:00:00:00:01 10.0.2.3 1000 bound\n\
                    52:54:00:00:00:0 10.0.2.4 1000 bound\n\
                    52:54:00:00:00:02 10.0.2.300 1000 bound\n\
                    52:54:00:00:00:02 10.0.2.4 -5 bound\n\
                    52:54:00:00:00:02 10.0.2.4 99999999999999999999999 bound\n\
                    52:54:00:00:00:02 10.0.2.4 1000 stolen\n\
                    52:54:00:00:00:02 10.0.2.4 1000 bound extra\n\
                    52:54:00:00:00:02 10.0.2.3 1000 bound\n\
                    zz:54:00:00:00:02 10.0.2.5 1000 bound\n\
                    \u{0}\u{ff}\n\
                    52:54:00:00:00:02 10.0.2.6 1000 offered\n";
        let l = Leases::parse(text);
        assert_eq!(l.len(), 2);
        assert_eq!(
            l.get(&A),
            Some(&lease([10, 0, 2, 3], 1000, LeaseState::Bound))
        );
        // The line reusing A's address was skipped; B's first valid line counts.
        assert_eq!(
            l.get(&B),
            Some(&lease([10, 0, 2, 6], 1000, LeaseState::Offered))
        );
    }

    #[test]
    fn expired_leases_are_free_and_old_ones_forgotten() {
        let mut l = Leases::default();
        l.set(A, lease([10, 0, 2, 3], 1000, LeaseState::Bound));
        let ip = Ipv4Addr::new(10, 0, 2, 3);
        assert!(!l.is_free_for(ip, &B, 999));
        assert!(l.is_free_for(ip, &B, 1000));
        assert!(l.is_free_for(ip, &A, 999));
        l.set(B, lease([10, 0, 2, 3], 2000, LeaseState::Bound));
        assert_eq!(l.get(&A), None);
        assert!(Leases::parse(&l.serialize(2000 + FORGET_AFTER_SECS)).is_empty());
    }

    #[test]
    fn declined_address_is_quarantined() {
        let mut l = Leases::default();
        let ip = Ipv4Addr::new(10, 0, 2, 3);
        l.set(A, lease([10, 0, 2, 3], 1000, LeaseState::Bound));
        l.decline(ip, 500);
        assert_eq!(l.get(&A), None);
        assert!(!l.is_free_for(ip, &A, 499));
        assert!(l.unavailable_for(&A, 499).contains(&u32::from(ip)));
        assert!(l.is_free_for(ip, &A, 500));
    }

    #[test]
    fn file_store_creates_0600_and_persists() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases");
        let mut store = FileLeases::new(&path);
        store
            .update(10, &mut |l| {
                l.set(A, lease([10, 0, 2, 3], 1000, LeaseState::Bound))
            })
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut seen = None;
        FileLeases::new(&path)
            .update(10, &mut |l| seen = l.get(&A).copied())
            .unwrap();
        assert_eq!(seen, Some(lease([10, 0, 2, 3], 1000, LeaseState::Bound)));
    }

    #[test]
    fn file_store_survives_garbage_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases");
        let mut garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        garbage.extend_from_slice(b"\n52:54:00:00:00:01 10.0.2.3 1000 bound\n");
        std::fs::write(&path, &garbage).unwrap();
        let mut seen = None;
        FileLeases::new(&path)
            .update(10, &mut |l| seen = l.get(&A).copied())
            .unwrap();
        assert_eq!(seen, Some(lease([10, 0, 2, 3], 1000, LeaseState::Bound)));
    }

    #[test]
    fn file_store_refuses_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("leases");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(FileLeases::new(&link).update(0, &mut |_| {}).is_err());
    }
}
