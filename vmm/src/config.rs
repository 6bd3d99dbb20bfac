//! The typed VM configuration, built from the command line and validated
//! once; nothing past this module parses strings.

use std::path::PathBuf;

use boot::cpu_model::{CheckMode, CpuDefinition, CpuModelError, CpuSpec};
use boot::cpuid::{Topology, TopologyError};

use crate::cli::RunArgs;

/// Smallest guest we boot: the kernel, its page tables and an initrd need
/// some room, and below this no Linux kernel gets to init.
pub const MIN_MEM_BYTES: u64 = 16 << 20;
/// xAPIC MADT entries and CPUID leaf 1 hold 8-bit APIC IDs; 0xff is the
/// broadcast ID.
pub const MAX_VCPUS_XAPIC: u32 = 254;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--mem {0:?}: expected a size like 512M or 4G")]
    BadMemSize(String),
    #[error("--mem {0}: must be at least {min} MiB", min = MIN_MEM_BYTES >> 20)]
    MemTooSmall(String),
    #[error("--mem {requested}: more than this host's {host_mib} MiB of RAM")]
    MemTooLarge { requested: String, host_mib: u64 },
    #[error("--vcpus 0: a VM needs at least one vCPU")]
    NoVcpus,
    #[error("--vcpus {requested}: at most {max} vCPUs are possible here ({why})")]
    TooManyVcpus {
        requested: u32,
        max: u32,
        why: &'static str,
    },
    #[error("--serial {0:?}: expected stdio, file:PATH or none")]
    BadSerial(String),
    #[error("--on-reboot {0:?}: expected exit or restart")]
    BadOnReboot(String),
    #[error("--kernel {0}: no such file")]
    KernelMissing(PathBuf),
    #[error("--initrd {0}: no such file")]
    InitrdMissing(PathBuf),
    #[error(transparent)]
    Cpu(#[from] CpuModelError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("--cpu-template {path}: {message}")]
    Template { path: PathBuf, message: String },
    #[error("--cpu-topology {topology}: APIC ID {apic_id} is too large for xAPIC (at most 254)")]
    ApicIdTooLarge { topology: String, apic_id: u32 },
    #[error("--disk {arg:?}: {why}")]
    BadDisk { arg: String, why: String },
    #[error("--net {arg:?}: {why}")]
    BadNet { arg: String, why: String },
}

/// Host page-cache use of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Through the host page cache; guest flushes make data durable.
    Writeback,
    /// O_DIRECT: bypass the host page cache.
    None,
}

/// What guest discard requests do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardMode {
    /// Offer DISCARD and give the space back to the host.
    Unmap,
    /// Do not offer DISCARD.
    Ignore,
}

/// One `--disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// `None`: probe.
    pub format: Option<devices::block::ImageFormat>,
    pub readonly: bool,
    /// GET_ID answer (at most 20 bytes).
    pub serial: String,
    pub cache: CacheMode,
    pub discard: DiscardMode,
}

/// Longest serial virtio-blk can report (VIRTIO_BLK_ID_BYTES).
pub const MAX_SERIAL_LEN: usize = 20;

impl DiskConfig {
    /// Parses `PATH[,key=value]...`.
    pub fn parse(arg: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::BadDisk {
            arg: arg.to_owned(),
            why,
        };
        let mut parts = arg.split(',');
        let path = parts.next().unwrap_or_default();
        let path = path.strip_prefix("path=").unwrap_or(path);
        if path.is_empty() {
            return Err(bad("expected PATH[,key=value...]".into()));
        }
        let mut disk = DiskConfig {
            path: PathBuf::from(path),
            format: None,
            readonly: false,
            serial: String::new(),
            cache: CacheMode::Writeback,
            discard: DiscardMode::Unmap,
        };
        for opt in parts {
            let Some((key, value)) = opt.split_once('=') else {
                return Err(bad(format!("option {opt:?} is not key=value")));
            };
            match key {
                "format" => {
                    disk.format = Some(value.parse().map_err(|e| bad(format!("{e}")))?);
                }
                "readonly" => {
                    disk.readonly = match value {
                        "on" | "true" | "yes" => true,
                        "off" | "false" | "no" => false,
                        _ => return Err(bad(format!("readonly={value}: expected on or off"))),
                    }
                }
                "serial" => {
                    if value.len() > MAX_SERIAL_LEN || !value.bytes().all(|b| b.is_ascii_graphic())
                    {
                        return Err(bad(format!(
                            "serial={value}: at most {MAX_SERIAL_LEN} printable ASCII characters"
                        )));
                    }
                    disk.serial = value.to_owned();
                }
                "cache" => {
                    disk.cache = match value {
                        "writeback" => CacheMode::Writeback,
                        "none" => CacheMode::None,
                        _ => return Err(bad(format!("cache={value}: expected writeback or none"))),
                    }
                }
                "discard" => {
                    disk.discard = match value {
                        "unmap" | "on" => DiscardMode::Unmap,
                        "ignore" | "off" => DiscardMode::Ignore,
                        _ => return Err(bad(format!("discard={value}: expected unmap or ignore"))),
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "unknown option {key:?} (format, readonly, serial, cache, discard)"
                    )))
                }
            }
        }
        if !disk.path.exists() {
            return Err(bad("no such file".into()));
        }
        Ok(disk)
    }
}

/// One `--net`: a virtio-net NIC on a host TAP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// TAP interface name (for `nat`, one ivmm makes: `ivmm<pid>n<index>`).
    pub tap: String,
    pub mac: [u8; 6],
    /// `nat`: the TAP joins ivmm's NAT network on this subnet (`None`: the
    /// default choice).
    pub nat: Option<Option<crate::nat::Ipv4Net>>,
    /// For `nat`: the bridge the TAP joins, once the network is joined.
    pub bridge: Option<String>,
}

impl NetConfig {
    /// Parses `tap=NAME[,mac=XX:XX:XX:XX:XX:XX]`.
    pub fn parse(arg: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::BadNet {
            arg: arg.to_owned(),
            why,
        };
        let mut parts = arg.split(',');
        let first = parts.next().unwrap_or_default();
        let (tap, mut nat) = match first.split_once('=') {
            Some(("tap", name)) => (name, None),
            _ if first == "nat" => ("", Some(None)),
            _ => {
                return Err(bad(
                    "expected nat[,subnet=CIDR][,mac=…] or tap=NAME[,mac=52:54:00:xx:xx:xx]".into(),
                ))
            }
        };
        if nat.is_none() && !devices::virtio::net::tap::valid_name(tap) {
            return Err(bad(format!(
                "tap={tap}: an interface name is 1 to 15 characters without '/', ':' or spaces"
            )));
        }
        let mut mac = None;
        for opt in parts {
            let Some((key, value)) = opt.split_once('=') else {
                return Err(bad(format!("option {opt:?} is not key=value")));
            };
            match key {
                "mac" => {
                    let m = parse_mac(value).ok_or_else(|| {
                        bad(format!(
                            "mac={value}: expected six hex bytes like 52:54:00:12:34:56"
                        ))
                    })?;
                    if m[0] & 1 != 0 {
                        return Err(bad(format!(
                            "mac={value}: a multicast address cannot name a NIC"
                        )));
                    }
                    if m == [0; 6] {
                        return Err(bad(format!(
                            "mac={value}: the all-zero address is not valid"
                        )));
                    }
                    mac = Some(m);
                }
                "subnet" if nat.is_some() => {
                    let net = value
                        .parse::<crate::nat::Ipv4Net>()
                        .map_err(|why| bad(format!("subnet={value}: {why}")))?;
                    nat = Some(Some(net));
                }
                _ if nat.is_some() => {
                    return Err(bad(format!("unknown option {key:?} (subnet, mac)")))
                }
                _ => return Err(bad(format!("unknown option {key:?} (mac)"))),
            }
        }
        Ok(NetConfig {
            tap: tap.to_owned(),
            // For `nat`, all-zero until VmConfig picks one (it knows the index).
            mac: mac.unwrap_or_else(|| {
                if nat.is_some() {
                    [0; 6]
                } else {
                    default_mac(tap)
                }
            }),
            nat,
            bridge: None,
        })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (also with `-`).
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `52:54:00` (locally administered, unicast: QEMU's prefix) and three
/// bytes of a FNV-1a hash of the TAP name, so a NIC keeps its MAC across
/// runs (DHCP leases, neighbour caches) without configuration.
pub fn default_mac(tap: &str) -> [u8; 6] {
    let mut h: u32 = 0x811c_9dc5;
    for b in tap.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let [a, b, c, _] = h.to_be_bytes();
    [0x52, 0x54, 0x00, a, b, c]
}

/// The guest CPU: what to expose and what to do about features KVM lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuConfig {
    pub definition: CpuDefinition,
    pub check: CheckMode,
}

impl CpuConfig {
    pub fn host() -> CpuConfig {
        CpuConfig {
            definition: CpuDefinition::host(),
            check: CheckMode::Enforce,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    Stdio,
    File(PathBuf),
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReboot {
    Exit,
    Restart,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_bytes: u64,
    pub vcpus: u32,
    pub serial: SerialMode,
    pub console_log: Option<PathBuf>,
    pub on_reboot: OnReboot,
    pub shutdown_timeout_secs: u64,
    pub cpu: CpuConfig,
    pub topology: Topology,
    /// virtio-blk disks in guest order (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// Run the disks on throw-away overlays.
    pub snapshot: bool,
    /// virtio-net NICs in guest order (eth0, eth1, ...).
    pub nets: Vec<NetConfig>,
    pub seccomp: crate::seccomp::SeccompMode,
}

/// Parses `512M`, `4G`, `1024` (bytes), `2T`; binary units.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

fn host_mem_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

impl TryFrom<&RunArgs> for VmConfig {
    type Error = ConfigError;

    fn try_from(args: &RunArgs) -> Result<Self, ConfigError> {
        let mem_bytes =
            parse_size(&args.mem).ok_or_else(|| ConfigError::BadMemSize(args.mem.clone()))?;
        let serial = match args.serial.as_str() {
            "stdio" => SerialMode::Stdio,
            "none" => SerialMode::None,
            s => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => SerialMode::File(path.into()),
                _ => return Err(ConfigError::BadSerial(s.to_owned())),
            },
        };
        let on_reboot = match args.on_reboot.as_str() {
            "exit" => OnReboot::Exit,
            "restart" => OnReboot::Restart,
            s => return Err(ConfigError::BadOnReboot(s.to_owned())),
        };
        let cpu = match &args.cpu_template {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Template {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let definition = boot::cpu_model::template::parse(&text).map_err(|message| {
                    ConfigError::Template {
                        path: path.clone(),
                        message,
                    }
                })?;
                CpuConfig {
                    definition,
                    check: CheckMode::Enforce,
                }
            }
            None => {
                let spec = CpuSpec::parse(&args.cpu)?;
                CpuConfig {
                    definition: spec.definition()?,
                    check: spec.check,
                }
            }
        };
        let topology = match &args.cpu_topology {
            Some(t) => Topology::parse(t, args.vcpus)?,
            None => Topology::flat(args.vcpus),
        };
        // Gaps in the APIC ID space can push IDs past the xAPIC limit even
        // when --vcpus is within it (the flat default has no gaps: that
        // case is --vcpus's own check in `validate`).
        if let Some(topo_arg) = &args.cpu_topology {
            let max = topology.apic_id(args.vcpus.saturating_sub(1));
            if max > MAX_VCPUS_XAPIC {
                return Err(ConfigError::ApicIdTooLarge {
                    topology: topo_arg.clone(),
                    apic_id: max,
                });
            }
        }
        let mut config = VmConfig {
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
            mem_bytes,
            vcpus: args.vcpus,
            serial,
            console_log: args.console_log.clone(),
            on_reboot,
            shutdown_timeout_secs: args.shutdown_timeout,
            cpu,
            topology,
            disks: args
                .disk
                .iter()
                .map(|d| DiskConfig::parse(d))
                .collect::<Result<_, _>>()?,
            snapshot: args.snapshot,
            nets: args
                .net
                .iter()
                .map(|n| NetConfig::parse(n))
                .collect::<Result<_, _>>()?,
            seccomp: args.seccomp,
        };
        config.name_nat_nics();
        config.validate(&args.mem)?;
        Ok(config)
    }
}

impl VmConfig {
    /// Names the TAPs of `nat` NICs (`ivmm<pid>n<index>`: unique on the
    /// host while this process runs) and gives those without `mac=` a MAC
    /// derived from the first disk's path and the NIC's index: stable
    /// across runs of the same image (its DHCP lease too), and different
    /// for two ivmm on one network, which cannot share a writable disk.
    /// Without a disk the process id takes the path's place.
    fn name_nat_nics(&mut self) {
        let identity = self
            .disks
            .first()
            .map(|d| {
                std::fs::canonicalize(&d.path)
                    .unwrap_or_else(|_| d.path.clone())
                    .display()
                    .to_string()
            })
            .unwrap_or_else(|| format!("pid {}", std::process::id()));
        for (index, net) in self.nets.iter_mut().enumerate() {
            if net.nat.is_none() {
                continue;
            }
            net.tap = format!("ivmm{}n{index}", std::process::id());
            if net.mac == [0; 6] {
                net.mac = default_mac(&format!("nat {index} {identity}"));
            }
        }
    }

    /// Cross-field and host checks that need no KVM.
    fn validate(&self, mem_arg: &str) -> Result<(), ConfigError> {
        if self.mem_bytes < MIN_MEM_BYTES {
            return Err(ConfigError::MemTooSmall(mem_arg.to_owned()));
        }
        if let Some(host) = host_mem_bytes() {
            if self.mem_bytes > host {
                return Err(ConfigError::MemTooLarge {
                    requested: mem_arg.to_owned(),
                    host_mib: host >> 20,
                });
            }
        }
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus > MAX_VCPUS_XAPIC {
            return Err(ConfigError::TooManyVcpus {
                requested: self.vcpus,
                max: MAX_VCPUS_XAPIC,
                why: "xAPIC IDs are 8 bits",
            });
        }
        for (i, n) in self.nets.iter().enumerate() {
            if let Some(other) = self.nets[..i]
                .iter()
                .find(|o| o.tap == n.tap || o.mac == n.mac)
            {
                let what = if other.tap == n.tap {
                    "TAP"
                } else {
                    "MAC address"
                };
                return Err(ConfigError::BadNet {
                    arg: format!("tap={}", n.tap),
                    why: format!("another --net uses the same {what}"),
                });
            }
        }
        let mut subnets = self.nets.iter().filter_map(|n| n.nat);
        if let Some(first) = subnets.next() {
            if subnets.any(|s| s != first) {
                return Err(ConfigError::BadNet {
                    arg: "nat".into(),
                    why: "all nat NICs of one ivmm must be on the same subnet".into(),
                });
            }
        }
        if !self.kernel.is_file() {
            return Err(ConfigError::KernelMissing(self.kernel.clone()));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(ConfigError::InitrdMissing(initrd.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4g"), Some(4 << 30));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        for bad in [
            "",
            "M",
            "-5G",
            "1.5G",
            "12X",
            "99999999999999999999G",
            "0x10",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    fn args() -> RunArgs {
        RunArgs {
            kernel: "/proc/self/exe".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            mem: "128M".into(),
            vcpus: 1,
            serial: "stdio".into(),
            console_log: None,
            on_reboot: "exit".into(),
            shutdown_timeout: 30,
            cpu: "host".into(),
            cpu_topology: None,
            cpu_template: None,
            disk: Vec::new(),
            snapshot: false,
            net: Vec::new(),
            seccomp: crate::seccomp::SeccompMode::Kill,
        }
    }

    #[test]
    fn bad_values_name_the_option() {
        let mut a = args();
        a.mem = "0".into();
        assert_eq!(
            VmConfig::try_from(&a),
            Err(ConfigError::MemTooSmall("0".into()))
        );
        let mut a = args();
        a.vcpus = 0;
        assert_eq!(VmConfig::try_from(&a), Err(ConfigError::NoVcpus));
        let mut a = args();
        a.serial = "file:".into();
        assert!(VmConfig::try_from(&a)
            .unwrap_err()
            .to_string()
            .contains("--serial"));
        let mut a = args();
        a.on_reboot = "poweroff".into();
        assert!(VmConfig::try_from(&a)
            .unwrap_err()
            .to_string()
            .contains("--on-reboot"));
        let mut a = args();
        a.kernel = "/nonexistent/bzImage".into();
        assert!(VmConfig::try_from(&a)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/bzImage"));
    }

    #[test]
    fn good_arguments_become_typed_values() {
        let mut a = args();
        a.serial = "file:/tmp/x.log".into();
        a.on_reboot = "restart".into();
        let c = VmConfig::try_from(&a).unwrap();
        assert_eq!(c.mem_bytes, 128 << 20);
        assert_eq!(c.serial, SerialMode::File("/tmp/x.log".into()));
        assert_eq!(c.on_reboot, OnReboot::Restart);
    }

    #[test]
    fn cpu_options_become_a_definition_and_topology() {
        let mut a = args();
        a.cpu = "EPYC,-avx2,check=warn".into();
        a.vcpus = 4;
        a.cpu_topology = Some("sockets=1,cores=2,threads=2".into());
        let c = VmConfig::try_from(&a).unwrap();
        assert_eq!(c.cpu.check, CheckMode::Warn);
        assert!(!c.cpu.definition.has("avx2"));
        assert_eq!(c.topology.threads, 2);
        let mut a = args();
        a.cpu = "Pentium9".into();
        assert!(VmConfig::try_from(&a)
            .unwrap_err()
            .to_string()
            .contains("Pentium9"));
        let mut a = args();
        a.cpu_topology = Some("cores=2".into());
        assert!(VmConfig::try_from(&a)
            .unwrap_err()
            .to_string()
            .contains("--vcpus is 1"));
        let mut a = args();
        a.cpu_template = Some("/nonexistent/t.json".into());
        assert!(VmConfig::try_from(&a)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/t.json"));
    }

    #[test]
    fn disk_options_parse_into_typed_values() {
        let d = DiskConfig::parse(
            "/proc/self/exe,format=qcow2,readonly=on,serial=abc-1,cache=none,discard=ignore",
        )
        .unwrap();
        assert_eq!(d.path, PathBuf::from("/proc/self/exe"));
        assert_eq!(d.format, Some(devices::block::ImageFormat::Qcow2));
        assert!(d.readonly);
        assert_eq!(d.serial, "abc-1");
        assert_eq!(d.cache, CacheMode::None);
        assert_eq!(d.discard, DiscardMode::Ignore);
        let d = DiskConfig::parse("/proc/self/exe").unwrap();
        assert_eq!(
            (d.format, d.readonly, d.cache, d.discard),
            (None, false, CacheMode::Writeback, DiscardMode::Unmap)
        );
    }

    #[test]
    fn bad_disk_options_name_the_argument() {
        for (arg, needle) in [
            ("", "expected PATH"),
            ("/proc/self/exe,format=vmdk", "vmdk"),
            ("/proc/self/exe,readonly=maybe", "readonly=maybe"),
            ("/proc/self/exe,serial=123456789012345678901", "serial="),
            ("/proc/self/exe,serial=a b", "serial="),
            ("/proc/self/exe,cache=unsafe", "cache=unsafe"),
            ("/proc/self/exe,discard=maybe", "discard=maybe"),
            ("/proc/self/exe,bogus=1", "bogus"),
            ("/proc/self/exe,noequals", "noequals"),
            ("/nonexistent/disk.img", "no such file"),
        ] {
            let msg = DiskConfig::parse(arg).unwrap_err().to_string();
            assert!(msg.starts_with("--disk "), "{msg}");
            assert!(msg.contains(needle), "{arg}: {msg}");
        }
    }

    #[test]
    fn net_options_parse_into_typed_values() {
        let n = NetConfig::parse("tap=tap0,mac=52:54:00:ab:CD:0e").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, [0x52, 0x54, 0, 0xab, 0xcd, 0x0e]);
        let n = NetConfig::parse("tap=tap0").unwrap();
        assert_eq!(n.mac, default_mac("tap0"));
    }

    #[test]
    fn default_mac_is_stable_local_unicast_and_differs_per_tap() {
        let a = default_mac("tap0");
        assert_eq!(a, default_mac("tap0"));
        assert_eq!(a[..3], [0x52, 0x54, 0x00]);
        assert_eq!(a[0] & 1, 0, "unicast");
        assert_ne!(a, default_mac("tap1"));
        // FNV-1a of "tap0" is 0xb54a63d6: pinned so the MAC never changes
        // between releases.
        assert_eq!(a, [0x52, 0x54, 0x00, 0xb5, 0x4a, 0x63]);
    }

    #[test]
    fn bad_net_options_name_the_argument() {
        for (arg, needle) in [
            ("", "or tap=NAME"),
            ("nat,subnet=10.0.2.1/24", "host bits"),
            ("nat,tap=x", "unknown option"),
            ("tap0", "or tap=NAME"),
            ("tap=", "tap="),
            ("tap=a/b", "tap=a/b"),
            ("tap=sixteen-chars-xx", "15 characters"),
            ("tap=t0,mac=52:54:00:00:00", "mac="),
            ("tap=t0,mac=52:54:00:00:00:0g", "mac="),
            ("tap=t0,mac=52:54:00:00:00:00:00", "mac="),
            ("tap=t0,mac=01:00:5e:00:00:01", "multicast"),
            ("tap=t0,mac=00:00:00:00:00:00", "all-zero"),
            ("tap=t0,queues=2", "queues"),
            ("tap=t0,noequals", "noequals"),
        ] {
            let msg = NetConfig::parse(arg).unwrap_err().to_string();
            assert!(msg.starts_with("--net "), "{msg}");
            assert!(msg.contains(needle), "{arg}: {msg}");
        }
    }

    #[test]
    fn two_nets_on_one_tap_or_mac_are_refused() {
        let mut a = args();
        a.net = vec!["tap=t0".into(), "tap=t0".into()];
        let msg = VmConfig::try_from(&a).unwrap_err().to_string();
        assert!(msg.contains("same TAP"), "{msg}");
        let mut a = args();
        a.net = vec![
            "tap=t0,mac=52:54:00:00:00:01".into(),
            "tap=t1,mac=52:54:00:00:00:01".into(),
        ];
        let msg = VmConfig::try_from(&a).unwrap_err().to_string();
        assert!(msg.contains("same MAC"), "{msg}");
        let mut a = args();
        a.net = vec!["tap=t0".into(), "tap=t1".into()];
        assert_eq!(VmConfig::try_from(&a).unwrap().nets.len(), 2);
    }
}
