//! The boot vCPU's initial architectural state for each entry protocol, the
//! descriptor tables and page tables it relies on, and the MSR/FPU/LAPIC
//! values every vCPU starts with.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::kernel::EntryPoint;
use crate::layout::*;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// GDT: null, 64-bit code, 32-bit code, flat data, TSS (selector = index * 8).
const GDT: [u64; 5] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code: L=1, P, DPL0, execute/read
    gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code: D=1, 4 KiB granularity
    gdt_entry(0xc093, 0, 0xfffff), // data: read/write, 4 KiB granularity
    gdt_entry(0x808b, 0, 0xfffff), // busy 32-bit TSS
];
const CODE64_INDEX: u16 = 1;
const CODE32_INDEX: u16 = 2;
const DATA_INDEX: u16 = 3;
const TSS_INDEX: u16 = 4;

/// Packs a segment descriptor (Intel SDM vol. 3, §3.4.5).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Unpacks a descriptor into the form KVM takes.
fn segment(index: u16) -> kvm_segment {
    let entry = GDT[usize::from(index)];
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT and an empty IDT, and for the 64-bit entry the identity
/// page tables of the first GiB (2 MiB pages) that the boot protocol asks for.
pub fn write_boot_tables(
    mem: &GuestMemoryMmap,
    entry: &EntryPoint,
) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    if let EntryPoint::Linux64 { .. } = entry {
        // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> 2 MiB page i.
        const PRESENT_RW: u64 = 0x3;
        const PAGE_SIZE_2M: u64 = 0x80;
        mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))?;
        mem.write_obj(PDE_START | PRESENT_RW, GuestAddress(PDPTE_START))?;
        for i in 0..512u64 {
            mem.write_obj(
                (i << 21) | PRESENT_RW | PAGE_SIZE_2M,
                GuestAddress(PDE_START + i * 8),
            )?;
        }
    }
    Ok(())
}

/// Special registers for the entry: long mode with paging for a bzImage,
/// flat 32-bit protected mode without paging for PVH.
pub fn boot_sregs(base: &kvm_sregs, entry: &EntryPoint) -> kvm_sregs {
    let mut sregs = *base;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data = segment(DATA_INDEX);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_INDEX);
    match entry {
        EntryPoint::Linux64 { .. } => {
            sregs.cs = segment(CODE64_INDEX);
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh { .. } => {
            sregs.cs = segment(CODE32_INDEX);
            sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_ET) & !X86_CR0_PG;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General registers for the entry (boot protocol: `rsi` = boot_params;
/// PVH: `ebx` = hvm_start_info).
pub fn boot_regs(entry: &EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match entry {
        EntryPoint::Linux64 { entry, .. } => {
            regs.rip = entry.0;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryPoint::Pvh { entry } => {
            regs.rip = entry.0;
            regs.rbx = PVH_INFO_START;
        }
    }
    regs
}

/// x87/SSE state at reset: FCW 0x37f (all exceptions masked, 64-bit
/// precision), MXCSR 0x1f80 (Intel SDM vol. 1, §8.1.5 and §10.2.3).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MISC_ENABLE bit 0: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default type write-back, so the guest does
/// not run RAM uncached.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// MSR values every vCPU starts with. The TSC is left alone: KVM
/// synchronises it across vCPUs at creation, and writing it per vCPU at
/// different moments makes Linux mark it unstable.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// Offsets of the LVT LINT0/LINT1 registers in the LAPIC register page.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// Programs LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a PC BIOS does,
/// in a LAPIC register page (`kvm_lapic_state.regs`).
pub fn set_lint_modes(regs: &mut [u8]) {
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        if let Some(reg) = regs.get_mut(offset..offset + 4) {
            let mut v = [0u8; 4];
            v.copy_from_slice(reg);
            let value = (u32::from_le_bytes(v) & !0x700) | (mode << 8);
            reg.copy_from_slice(&value.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_from_the_gdt() {
        let cs = segment(CODE64_INDEX);
        assert_eq!((cs.l, cs.db, cs.present, cs.type_, cs.s), (1, 0, 1, 0xb, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment(CODE32_INDEX);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let ds = segment(DATA_INDEX);
        assert_eq!((ds.type_, ds.selector), (3, 24));
    }

    #[test]
    fn long_mode_entry_maps_low_memory_and_points_rsi_at_zero_page() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let entry = EntryPoint::Linux64 {
            entry: GuestAddress(0x100200),
            header: Default::default(),
        };
        write_boot_tables(&mem, &entry).unwrap();
        let pde1: u64 = mem.read_obj(GuestAddress(PDE_START + 8)).unwrap();
        assert_eq!(pde1, 0x20_0083);
        let sregs = boot_sregs(&kvm_sregs::default(), &entry);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr3, PML4_START);
        let regs = boot_regs(&entry);
        assert_eq!((regs.rip, regs.rsi), (0x100200, ZERO_PAGE_START));
    }

    #[test]
    fn pvh_entry_is_flat_protected_mode_without_paging() {
        let entry = EntryPoint::Pvh {
            entry: GuestAddress(0x1000000),
        };
        let sregs = boot_sregs(&kvm_sregs::default(), &entry);
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.cr0 & X86_CR0_PE, 1);
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(boot_regs(&entry).rbx, PVH_INFO_START);
    }

    #[test]
    fn lint_modes_are_set_without_touching_other_bits() {
        let mut page = vec![0u8; 0x400];
        page[APIC_LVT_LINT1..APIC_LVT_LINT1 + 4].copy_from_slice(&0x0001_0700u32.to_le_bytes());
        set_lint_modes(&mut page);
        let lint0 = u32::from_le_bytes(page[0x350..0x354].try_into().unwrap());
        let lint1 = u32::from_le_bytes(page[0x360..0x364].try_into().unwrap());
        assert_eq!(lint0, 0x700);
        assert_eq!(lint1, 0x0001_0400);
    }
}
