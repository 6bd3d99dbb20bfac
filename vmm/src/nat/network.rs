//! Making, sharing and removing NAT networks on the host.
//!
//! A network is a bridge `ivmm-<network address in hex>` with the
//! gateway address, an nftables table of the same name, and a directory
//! `/run/ivmm/nat/<bridge>/` holding its subnet, the DHCP leases and one
//! file per ivmm process using it (`users/<pid>`, holding the process's
//! start time so a reused pid is not mistaken for a live user). All of it
//! is changed only under an exclusive `flock` on `/run/ivmm/nat/lock`.
//! TAPs are not registered: they are non-persistent and vanish with the
//! process that opened them, even after SIGKILL.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::netlink::RouteNetlink;
use super::nftables::NfTables;
use super::Ipv4Net;

/// Where the networks' state lives (tmpfs: gone with a host reboot, as
/// the bridges are).
pub const RUN_DIR: &str = "/run/ivmm/nat";

/// Bridge names start with this; anything else is never touched.
const BRIDGE_PREFIX: &str = "ivmm-";

/// Subnets tried in order when `--net nat` names none: QEMU's user-mode
/// network first, as scripts expect it, then its neighbours.
const DEFAULT_SUBNETS: [[u8; 4]; 8] = [
    [10, 0, 2, 0],
    [10, 0, 3, 0],
    [10, 0, 4, 0],
    [10, 0, 5, 0],
    [10, 0, 6, 0],
    [10, 0, 7, 0],
    [10, 0, 8, 0],
    [10, 0, 9, 0],
];

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("--net nat: {what}: {source}{hint}", hint = permission_hint(source))]
    Host {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("--net nat,subnet={subnet}: the host already uses {used} (on {link}); choose another subnet")]
    Collision {
        subnet: Ipv4Net,
        used: Ipv4Net,
        link: String,
    },
    #[error("--net nat: every default subnet (10.0.2.0/24 to 10.0.9.0/24) is in use on this host; name one with --net nat,subnet=CIDR")]
    NoFreeSubnet,
    #[error("--net nat,subnet={subnet}: {why}")]
    BadSubnet { subnet: Ipv4Net, why: String },
}

fn permission_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (making the NAT network needs root or CAP_NET_ADMIN; use --net tap=NAME with a TAP made for you instead)"
        }
        Some(libc::EAFNOSUPPORT) | Some(libc::EPROTONOSUPPORT) | Some(libc::EOPNOTSUPP) => {
            " (the kernel lacks bridge or nftables NAT support: modules bridge, nf_tables, nft_chain_nat, nft_masq)"
        }
        _ => "",
    }
}

fn host(what: impl Into<String>) -> impl FnOnce(io::Error) -> NatError {
    let what = what.into();
    move |source| NatError::Host { what, source }
}

/// The bridge (and nftables table) name of a subnet.
pub fn bridge_name(net: Ipv4Net) -> String {
    format!("{BRIDGE_PREFIX}{:08x}", u32::from(net.network()))
}

fn is_ivmm_bridge(name: &str) -> bool {
    name.len() == BRIDGE_PREFIX.len() + 8
        && name.starts_with(BRIDGE_PREFIX)
        && name[BRIDGE_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

/// This process's membership in a NAT network; leaving (on drop) removes
/// the network if no other ivmm uses it.
#[derive(Debug)]
pub struct NatNetwork {
    pub net: Ipv4Net,
    pub bridge: String,
    dir: PathBuf,
    me: PathBuf,
}

/// The exclusive registry lock; released on drop (close).
struct RegistryLock(#[allow(dead_code)] fs::File);

impl RegistryLock {
    fn take(run_dir: &Path) -> Result<Self, NatError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_dir)
            .map_err(host(format!("cannot create {}", run_dir.display())))?;
        let path = run_dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(host(format!("cannot open {}", path.display())))?;
        // SAFETY: flock on an fd this function owns; no memory involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(host(format!("cannot lock {}", path.display()))(
                io::Error::last_os_error(),
            ));
        }
        Ok(RegistryLock(file))
    }
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), if it
/// runs.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and ')': skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `users/<pid>` names a live process started at the recorded time.
fn user_alive(file: &Path) -> bool {
    let Some(pid) = file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse::<u32>().ok())
    else {
        return false;
    };
    let recorded = fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    recorded.is_some() && start_time(pid) == recorded
}

/// Removes dead users' files; returns how many live users remain.
fn prune_users(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir.join("users")) else {
        return 0;
    };
    let mut live = 0;
    for e in entries.flatten() {
        if user_alive(&e.path()) {
            live += 1;
        } else {
            let _ = fs::remove_file(e.path());
        }
    }
    live
}

/// Removes a network's bridge, table and directory (each if present).
fn remove_network(
    rt: &mut RouteNetlink,
    nft: &mut NfTables,
    bridge: &str,
    dir: &Path,
) -> Result<(), NatError> {
    nft.delete_table(bridge)
        .map_err(host(format!("cannot delete nftables table ip {bridge}")))?;
    if let Some(index) = rt
        .link_index(bridge)
        .map_err(host("cannot list network links"))?
    {
        rt.delete_link(index)
            .map_err(host(format!("cannot delete bridge {bridge}")))?;
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(host(format!("cannot remove {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Removes every network no live process uses, and ivmm bridges with no
/// registry entry (a crash between creating one and recording it).
fn sweep(run_dir: &Path, rt: &mut RouteNetlink, nft: &mut NfTables) -> Result<(), NatError> {
    let mut registered = Vec::new();
    if let Ok(entries) = fs::read_dir(run_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_ivmm_bridge(&name) || !e.path().is_dir() {
                continue;
            }
            if prune_users(&e.path()) == 0 {
                log::info!("removing NAT network {name}: no ivmm uses it any more");
                remove_network(rt, nft, &name, &e.path())?;
            } else {
                registered.push(name);
            }
        }
    }
    for link in rt.links().map_err(host("cannot list network links"))? {
        if is_ivmm_bridge(&link.name) && !registered.contains(&link.name) {
            log::info!("removing stale NAT bridge {}", link.name);
            remove_network(rt, nft, &link.name, &run_dir.join(&link.name))?;
        }
    }
    Ok(())
}

impl NatNetwork {
    /// Joins the network for `requested` (or the first default subnet
    /// that is free or already an ivmm network), creating it if needed.
    pub fn join(requested: Option<Ipv4Net>) -> Result<Self, NatError> {
        Self::join_in(Path::new(RUN_DIR), requested)
    }

    fn join_in(run_dir: &Path, requested: Option<Ipv4Net>) -> Result<Self, NatError> {
        if let Some(net) = requested {
            if !(8..=29).contains(&net.prefix_len()) {
                return Err(NatError::BadSubnet {
                    subnet: net,
                    why: "the prefix must be /8 to /29 (room for the gateway and guests)".into(),
                });
            }
        }
        let _lock = RegistryLock::take(run_dir)?;
        let mut rt = RouteNetlink::open().map_err(host("cannot open a route netlink socket"))?;
        let mut nft = NfTables::open().map_err(host("cannot open an nftables netlink socket"))?;
        sweep(run_dir, &mut rt, &mut nft)?;

        let candidates: Vec<Ipv4Net> = match requested {
            Some(net) => vec![net],
            None => DEFAULT_SUBNETS
                .iter()
                .filter_map(|a| Ipv4Net::new(Ipv4Addr::from(*a), 24))
                .collect(),
        };
        let links = rt.links().map_err(host("cannot list network links"))?;
        let used = rt
            .ipv4_networks()
            .map_err(host("cannot list the host's IPv4 networks"))?;
        let link_name = |index: u32| {
            links
                .iter()
                .find(|l| l.index == index)
                .map_or_else(|| format!("link {index}"), |l| l.name.clone())
        };
        for net in &candidates {
            let bridge = bridge_name(*net);
            let dir = run_dir.join(&bridge);
            let ours = dir.join("subnet").exists();
            let collision = used.iter().find(|(u, link)| {
                u.overlaps(*net) && !(ours && link_name(*link) == bridge && *u == *net)
            });
            if ours {
                let recorded = fs::read_to_string(dir.join("subnet")).unwrap_or_default();
                if recorded.trim() == net.to_string() && collision.is_none() {
                    return Self::register(dir, *net, bridge);
                }
            }
            match collision {
                Some((u, link)) if requested.is_some() => {
                    return Err(NatError::Collision {
                        subnet: *net,
                        used: *u,
                        link: link_name(*link),
                    })
                }
                Some(_) => continue,
                None => {
                    create(&mut rt, &mut nft, &dir, *net, &bridge)?;
                    return Self::register(dir, *net, bridge);
                }
            }
        }
        Err(NatError::NoFreeSubnet)
    }

    fn register(dir: PathBuf, net: Ipv4Net, bridge: String) -> Result<Self, NatError> {
        let pid = std::process::id();
        let started = start_time(pid).ok_or_else(|| {
            host("cannot read this process's start time")(io::Error::from(io::ErrorKind::NotFound))
        })?;
        let me = dir.join("users").join(pid.to_string());
        fs::write(&me, format!("{started}\n"))
            .map_err(host(format!("cannot write {}", me.display())))?;
        Ok(NatNetwork {
            net,
            bridge,
            dir,
            me,
        })
    }

    /// The shared DHCP lease file.
    pub fn lease_file(&self) -> PathBuf {
        self.dir.join("leases")
    }

    fn leave(&self) -> Result<(), NatError> {
        let run_dir = self.dir.parent().unwrap_or(Path::new(RUN_DIR));
        let _lock = RegistryLock::take(run_dir)?;
        let _ = fs::remove_file(&self.me);
        if prune_users(&self.dir) == 0 {
            let mut rt =
                RouteNetlink::open().map_err(host("cannot open a route netlink socket"))?;
            let mut nft =
                NfTables::open().map_err(host("cannot open an nftables netlink socket"))?;
            remove_network(&mut rt, &mut nft, &self.bridge, &self.dir)?;
        }
        Ok(())
    }
}

impl Drop for NatNetwork {
    fn drop(&mut self) {
        if let Err(e) = self.leave() {
            eprintln!("ivmm: leaving NAT network {}: {e}", self.bridge);
        }
    }
}

/// Makes `tap` a port of `bridge` and brings it up.
pub fn attach(bridge: &str, tap: &str) -> Result<(), NatError> {
    let mut rt = RouteNetlink::open().map_err(host("cannot open a route netlink socket"))?;
    let vanished = |what: String| host(what)(io::Error::from(io::ErrorKind::NotFound));
    let bridge_index = rt
        .link_index(bridge)
        .map_err(host("cannot list network links"))?
        .ok_or_else(|| vanished(format!("bridge {bridge} vanished")))?;
    let index = rt
        .link_index(tap)
        .map_err(host("cannot list network links"))?
        .ok_or_else(|| vanished(format!("TAP {tap} vanished")))?;
    rt.set_up(index, Some(bridge_index))
        .map_err(host(format!("cannot add {tap} to bridge {bridge}")))
}

/// Creates the bridge with the gateway address, the masquerade table and
/// the registry directory; undoes what it did if a step fails.
fn create(
    rt: &mut RouteNetlink,
    nft: &mut NfTables,
    dir: &Path,
    net: Ipv4Net,
    bridge: &str,
) -> Result<(), NatError> {
    let result = (|| {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("users"))
            .map_err(host(format!("cannot create {}", dir.display())))?;
        rt.create_bridge(bridge, &format!("ivmm NAT network {net}"))
            .map_err(host(format!("cannot create bridge {bridge}")))?;
        let index = rt
            .link_index(bridge)
            .map_err(host("cannot list network links"))?
            .ok_or_else(|| {
                host(format!("bridge {bridge} vanished"))(io::Error::from(io::ErrorKind::NotFound))
            })?;
        rt.add_address(index, net, net.gateway())
            .map_err(host(format!(
                "cannot give {bridge} the address {}",
                net.gateway()
            )))?;
        rt.set_up(index, None)
            .map_err(host(format!("cannot bring {bridge} up")))?;
        nft.create_masquerade(bridge, net, bridge)
            .map_err(host(format!("cannot create nftables table ip {bridge}")))?;
        enable_forwarding()?;
        fs::write(dir.join("subnet"), format!("{net}\n"))
            .map_err(host(format!("cannot write {}", dir.display())))
    })();
    if result.is_err() {
        let _ = remove_network(rt, nft, bridge, dir);
    }
    result
}

/// Turns on IPv4 forwarding, as libvirt does for its NAT networks; it is
/// left on when the network goes (other software may rely on it by then).
fn enable_forwarding() -> Result<(), NatError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if fs::read_to_string(PATH)
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
    {
        return Ok(());
    }
    log::info!("turning on IPv4 forwarding ({PATH}) for the NAT network");
    fs::write(PATH, "1\n").map_err(host(format!("cannot turn on IPv4 forwarding ({PATH})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_ifnamsiz_and_are_recognised() {
        let b = bridge_name("10.0.2.0/24".parse().unwrap());
        assert_eq!(b, "ivmm-0a000200");
        assert!(b.len() <= 15);
        assert!(is_ivmm_bridge(&b));
        for other in ["ivmm-0a00020", "ivmm-0a00020g", "virbr0", "ivmm-0a0002000"] {
            assert!(!is_ivmm_bridge(other), "{other}");
        }
    }

    #[test]
    fn this_process_counts_as_alive_only_with_its_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let me = dir.path().join(std::process::id().to_string());
        let started = start_time(std::process::id()).unwrap();
        fs::write(&me, format!("{started}\n")).unwrap();
        assert!(user_alive(&me));
        fs::write(&me, format!("{}\n", started + 1)).unwrap();
        assert!(!user_alive(&me), "a reused pid is not the recorded process");
        let junk = dir.path().join("not-a-pid");
        fs::write(&junk, "1\n").unwrap();
        assert!(!user_alive(&junk));
    }
}
