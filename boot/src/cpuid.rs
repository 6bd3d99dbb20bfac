//! Per-vCPU CPUID facts: APIC IDs, the topology leaves (0x1, 0x4,
//! 0xB/0x1F, 0x8000_0008, 0x8000_001E), HTT/CmpLegacy and the hypervisor
//! bit, applied after the CPU model (see [`crate::cpu_model`]). APIC IDs
//! come from [`Topology`], the one place they are computed (the MADT uses
//! [`Topology::apic_ids`] too): thread, core and socket IDs packed into
//! bit fields as wide as each count needs, as Intel SDM "Hierarchical
//! Mapping of Shared Resources" and QEMU describe.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: the package has more than one logical processor.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 0xB/0x1F level types (ECX[15:8]).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
/// Leaf 0x8000_0001 ECX bit 1: CmpLegacy (AMD: cores are reported by
/// 0x8000_0008, HTT means multi-core).
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
/// Leaf 0x8000_0001 ECX bit 22: TopologyExtensions.
const EXT1_ECX_TOPOEXT: u32 = 1 << 22;
/// "GenuineIntel" EBX word in leaf 0.
const INTEL_EBX: u32 = u32::from_le_bytes(*b"Genu");

/// Number of bits needed to hold IDs 0..count.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("--cpu-topology {0:?}: expected sockets=N,cores=N,threads=N (each optional, N >= 1)")]
    Syntax(String),
    #[error("--cpu-topology: sockets*cores*threads = {product}, but --vcpus is {vcpus}")]
    Mismatch { product: u32, vcpus: u32 },
}

/// Sockets × cores per socket × threads per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

impl Topology {
    /// One socket of `vcpus` single-threaded cores (the default).
    pub fn flat(vcpus: u32) -> Topology {
        Topology {
            sockets: 1,
            cores: vcpus.max(1),
            threads: 1,
        }
    }

    /// Parses `sockets=S,cores=C,threads=T` (missing = 1, except that a
    /// missing `cores` takes what is left of `vcpus`) and checks the
    /// product against `vcpus`.
    pub fn parse(s: &str, vcpus: u32) -> Result<Topology, TopologyError> {
        let bad = || TopologyError::Syntax(s.to_owned());
        let (mut sockets, mut cores, mut threads) = (None, None, None);
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            let n: u32 = v.parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(bad());
            }
            let slot = match k {
                "sockets" => &mut sockets,
                "cores" => &mut cores,
                "threads" => &mut threads,
                _ => return Err(bad()),
            };
            if slot.replace(n).is_some() {
                return Err(bad());
            }
        }
        let sockets = sockets.unwrap_or(1);
        let threads = threads.unwrap_or(1);
        let cores = cores.unwrap_or_else(|| (vcpus / sockets.saturating_mul(threads)).max(1));
        let t = Topology {
            sockets,
            cores,
            threads,
        };
        let product = sockets.saturating_mul(cores).saturating_mul(threads);
        if product != vcpus {
            return Err(TopologyError::Mismatch { product, vcpus });
        }
        Ok(t)
    }

    fn thread_bits(&self) -> u32 {
        id_bits(self.threads)
    }
    fn core_bits(&self) -> u32 {
        id_bits(self.cores)
    }
    /// Bits of the APIC ID below the socket (package) ID.
    fn package_shift(&self) -> u32 {
        self.thread_bits() + self.core_bits()
    }
    fn threads_per_package(&self) -> u32 {
        self.cores.saturating_mul(self.threads)
    }

    /// (socket, core, thread) of vCPU `index`.
    pub fn position(&self, index: u32) -> (u32, u32, u32) {
        let thread = index % self.threads;
        let core = (index / self.threads) % self.cores;
        let socket = index / self.threads_per_package().max(1);
        (socket, core, thread)
    }

    /// The APIC ID of vCPU `index`.
    pub fn apic_id(&self, index: u32) -> u32 {
        let (socket, core, thread) = self.position(index);
        (socket << self.package_shift()) | (core << self.thread_bits()) | thread
    }

    /// APIC IDs of vCPUs 0..count, in vCPU order.
    pub fn apic_ids(&self, count: u32) -> Vec<u32> {
        (0..count).map(|i| self.apic_id(i)).collect()
    }
}

/// Fixes up `entries` (KVM's supported CPUID, after the CPU model) for
/// vCPU `index` of a machine with topology `topo`.
pub fn patch_for_vcpu(entries: &mut [kvm_cpuid_entry2], index: u32, topo: &Topology) {
    let apic_id = topo.apic_id(index);
    let (socket, core, _) = topo.position(index);
    let per_pkg = topo.threads_per_package();
    let intel = entries
        .iter()
        .any(|e| e.function == 0 && e.ebx == INTEL_EBX);
    let topoext = entries
        .iter()
        .any(|e| e.function == 0x8000_0001 && e.ecx & EXT1_ECX_TOPOEXT != 0);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX: [31:24] initial APIC ID, [23:16] logical processors
                // per package, [15:8] CLFLUSH line size in 8-byte units.
                let logical = per_pkg.min(255);
                e.ebx = ((apic_id & 0xff) << 24) | (logical << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if per_pkg > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // Deterministic cache parameters: EAX[31:26] = core IDs per
                // package - 1; EAX[25:14] = thread IDs sharing the cache - 1
                // (L1/L2 per core, L3 per package).
                if e.eax & 0x1f == 0 {
                    continue;
                }
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing_bits = if cache_level >= 3 {
                    topo.package_shift()
                } else {
                    topo.thread_bits()
                };
                let sharing = (1u32 << sharing_bits) - 1;
                let cores = (1u32 << topo.core_bits()) - 1;
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | ((cores & 0x3f) << 26);
            }
            0xb | 0x1f => {
                // Extended topology: subleaf 0 = SMT level, subleaf 1 =
                // core level (the whole package), others invalid.
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = topo.thread_bits();
                        e.ebx = topo.threads;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = topo.package_shift();
                        e.ebx = per_pkg;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            // As QEMU: CmpLegacy for multi-thread packages, not on Intel
            // (Linux then ignores the thread information). QEMU only ever
            // adds the bit, so a host that has it keeps it.
            0x8000_0001 if per_pkg > 1 && !intel => e.ecx |= EXT1_ECX_CMP_LEGACY,
            0x8000_0008 => {
                // AMD: ECX[7:0] = threads per package - 1, ECX[15:12] =
                // APIC ID bits below the package ID.
                e.ecx = (e.ecx & !0xf0ff)
                    | ((topo.package_shift() & 0xf) << 12)
                    | (per_pkg.saturating_sub(1) & 0xff);
            }
            0x8000_001d => {
                // AMD cache topology: EAX[25:14] = threads sharing - 1 (L1
                // and L2 per core, L3 per package).
                let level = (e.eax >> 5) & 0x7;
                if level == 0 {
                    continue;
                }
                let sharing = if level >= 3 { per_pkg } else { topo.threads };
                e.eax = (e.eax & !(0xfff << 14)) | ((sharing.saturating_sub(1) & 0xfff) << 14);
            }
            0x8000_001e => {
                // AMD extended APIC ID; EBX = threads per core - 1 and core
                // ID; ECX = node ID (one node per socket). Filled when the
                // CPU has topoext (or KVM already filled it in).
                if !topoext && e.eax == 0 && e.ebx == 0 && e.ecx == 0 && e.edx == 0 {
                    continue;
                }
                e.eax = apic_id;
                e.ebx = ((topo.threads - 1) << 8) | (core & 0xff);
                e.ecx = socket & 0xff;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_counts_follow_the_vcpu() {
        let mut e = vec![entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        patch_for_vcpu(&mut e, 3, &Topology::flat(4));
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].edx), (1, 3));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx >> 8), (2, 4, LEVEL_TYPE_CORE));
        assert_eq!(e[3].ecx >> 8, 0, "subleaf 2 is invalid");
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = vec![entry(1, 0)];
        e[0].edx = LEAF1_EDX_HTT;
        patch_for_vcpu(&mut e, 0, &Topology::flat(1));
        assert_eq!(e[0].edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn id_bits_cover_the_count() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn apic_ids_pack_thread_core_socket() {
        let t = Topology::parse("sockets=2,cores=3,threads=2", 12).unwrap();
        // 1 thread bit, 2 core bits: socket 1 starts at 8.
        assert_eq!(t.apic_ids(12), [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]);
        let t = Topology::parse("sockets=1,cores=2,threads=2", 4).unwrap();
        assert_eq!(t.apic_ids(4), [0, 1, 2, 3]);
        let mut e = vec![entry(0xb, 0), entry(0xb, 1)];
        patch_for_vcpu(&mut e, 3, &t);
        assert_eq!((e[0].eax, e[0].ebx, e[0].edx), (1, 2, 3));
        assert_eq!((e[1].eax, e[1].ebx), (2, 4));
    }

    #[test]
    fn topology_errors_name_the_problem() {
        assert_eq!(
            Topology::parse("sockets=1,cores=2,threads=2", 2),
            Err(TopologyError::Mismatch {
                product: 4,
                vcpus: 2
            })
        );
        for bad in ["cores", "cores=0", "dies=2", "cores=x", "cores=1,cores=2"] {
            assert!(
                matches!(Topology::parse(bad, 2), Err(TopologyError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(Topology::parse("threads=2", 4).unwrap().cores, 2);
    }
}
