//! CPUID for each vCPU: KVM's supported set ("host" model) with the
//! per-vCPU facts fixed up: APIC IDs, the topology leaves, and the
//! hypervisor bit. The topology is one socket of `vcpus` cores with one
//! thread each, and APIC ID = vCPU index.

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

/// Number of bits needed to hold IDs 0..count.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Fixes up `entries` (KVM's supported CPUID, as returned by
/// `KVM_GET_SUPPORTED_CPUID`) for vCPU `index` of `vcpus`.
pub fn patch_for_vcpu(entries: &mut [kvm_cpuid_entry2], index: u32, vcpus: u32) {
    let apic_id = index;
    let core_bits = id_bits(vcpus);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX: [31:24] initial APIC ID, [23:16] logical processors
                // per package, [15:8] CLFLUSH line size in 8-byte units.
                let logical = vcpus.min(255);
                e.ebx = (apic_id << 24) | (logical << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if vcpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // Deterministic cache parameters: EAX[31:26] = cores per
                // package - 1; EAX[25:14] = threads sharing this cache - 1
                // (one thread per core: only the L3 is shared by all).
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 {
                    vcpus.saturating_sub(1)
                } else {
                    0
                };
                e.eax = (e.eax & 0x3fff)
                    | ((sharing & 0xfff) << 14)
                    | ((vcpus.saturating_sub(1) & 0x3f) << 26);
            }
            0xb | 0x1f => {
                // Extended topology: subleaf 0 = SMT level (1 thread),
                // subleaf 1 = core level (all vCPUs), others invalid.
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = vcpus;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0001 => {
                if vcpus > 1 {
                    e.ecx |= EXT1_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !EXT1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 => {
                // AMD: ECX[7:0] = cores - 1, ECX[15:12] = APIC ID bits for
                // the core ID.
                e.ecx = (e.ecx & !0xf0ff)
                    | ((core_bits & 0xf) << 12)
                    | (vcpus.saturating_sub(1) & 0xff);
            }
            0x8000_001e => {
                // AMD extended APIC ID; compute unit = core, one thread each.
                e.eax = apic_id;
                e.ebx = index & 0xff;
                e.ecx = 0;
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
        patch_for_vcpu(&mut e, 3, 4);
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
        patch_for_vcpu(&mut e, 0, 1);
        assert_eq!(e[0].edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn id_bits_cover_the_count() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
