//! MADT ("APIC"): the local APICs, the IOAPIC, ISA overrides and LINT1 NMI.
//!
//! Built by hand on `acpi_tables::sdt::Sdt` because the crate's `MADT` type
//! cannot set the PCAT_COMPAT flag and has no x2APIC, override or NMI
//! entries. Layouts are ACPI 6.5 §5.2.12.

use std::collections::HashSet;

use acpi_tables::sdt::Sdt;

use super::irq::{IrqLine, Polarity, Trigger, TIMER_IRQ, TIMER_ISA_IRQ};
use super::{AcpiError, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::{ACPI_SIZE, APIC_START, IOAPIC_ID, IOAPIC_START};

/// MADT revision defined by ACPI 6.5 (§5.2.12).
const MADT_REVISION: u8 = 6;
/// Header (36) + Local Interrupt Controller Address (4) + Flags (4).
const MADT_HEADER_LEN: usize = 44;
/// MADT flags, bit 0 PCAT_COMPAT (§5.2.12): KVM's in-kernel irqchip
/// includes a dual 8259 that the guest must mask, so the bit is honest.
/// Linux in hardware-reduced mode ignores the PIC either way.
const MADT_FLAG_PCAT_COMPAT: u32 = 1;

// Interrupt controller structure types (§5.2.12).
const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IO_APIC: u8 = 1;
const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_NMI: u8 = 4;
const TYPE_LOCAL_X2APIC: u8 = 9;
const TYPE_LOCAL_X2APIC_NMI: u8 = 0xa;

/// Local APIC flags bit 0, Enabled (§5.2.12.2).
const LAPIC_ENABLED: u32 = 1;
/// xAPIC IDs go up to 254; 255 is the broadcast ID, so 255 and above need a
/// Processor Local x2APIC entry, and IDs below 255 must use a Local APIC
/// entry (§5.2.12.12).
const MAX_XAPIC_ID: u32 = 254;
/// "All processors" in the NMI entries (§5.2.12.7, §5.2.12.13).
const ALL_PROCESSORS_UID8: u8 = 0xff;
const ALL_PROCESSORS_UID32: u32 = 0xffff_ffff;
/// The x2APIC broadcast ID, which no vCPU may have.
const X2APIC_BROADCAST_ID: u32 = 0xffff_ffff;
/// NMI is wired to LINT1 on a PC; edge-triggered, active high.
const NMI_LINT: u8 = 1;
const NMI_LINE: IrqLine = IrqLine {
    gsi: 0,
    trigger: Trigger::Edge,
    polarity: Polarity::ActiveHigh,
};
/// Bus 0 = ISA in an Interrupt Source Override (§5.2.12.5).
const BUS_ISA: u8 = 0;
/// The MADT holds 32-bit addresses; checked at compile time.
const APIC_ADDR: u32 = mmio32(APIC_START);
const IOAPIC_ADDR: u32 = mmio32(IOAPIC_START);

/// Builds the MADT for vCPUs with the given APIC IDs, in vCPU order. The
/// ACPI processor UID of vCPU `i` is `i`.
pub(super) fn build(apic_ids: &[u32]) -> Result<Vec<u8>, AcpiError> {
    if apic_ids.is_empty() {
        return Err(AcpiError::NoVcpus);
    }
    let mut seen = HashSet::with_capacity(apic_ids.len());
    let mut body = Vec::new();
    let mut any_x2apic = false;
    for (index, &apic_id) in apic_ids.iter().enumerate() {
        if apic_id == X2APIC_BROADCAST_ID {
            return Err(AcpiError::InvalidApicId(apic_id));
        }
        if !seen.insert(apic_id) {
            return Err(AcpiError::DuplicateApicId(apic_id));
        }
        if apic_id <= MAX_XAPIC_ID {
            let (Ok(uid), Ok(id)) = (u8::try_from(index), u8::try_from(apic_id)) else {
                return Err(AcpiError::ProcessorUidTooLarge { index, apic_id });
            };
            // §5.2.12.2.
            body.extend_from_slice(&[TYPE_LOCAL_APIC, 8, uid, id]);
            body.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
        } else {
            let uid = u32::try_from(index)
                .map_err(|_| AcpiError::ProcessorUidTooLarge { index, apic_id })?;
            // §5.2.12.12.
            body.extend_from_slice(&[TYPE_LOCAL_X2APIC, 16, 0, 0]);
            body.extend_from_slice(&apic_id.to_le_bytes());
            body.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
            body.extend_from_slice(&uid.to_le_bytes());
            any_x2apic = true;
        }
        // Stop early rather than build a huge table that cannot be placed.
        check_fits(body.len())?;
    }

    // §5.2.12.3: the only IOAPIC, serving GSIs from 0.
    body.extend_from_slice(&[TYPE_IO_APIC, 12, IOAPIC_ID, 0]);
    body.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());

    // §5.2.12.5: ISA IRQ 0 -> GSI 2. The other ISA lines we use
    // (COM1 4, RTC 8, GED 9) are identity-mapped, edge, active high, which
    // is what an OS assumes without an override, so they get none.
    body.extend_from_slice(&[TYPE_INTERRUPT_SOURCE_OVERRIDE, 10, BUS_ISA, TIMER_ISA_IRQ]);
    body.extend_from_slice(&TIMER_IRQ.gsi.to_le_bytes());
    body.extend_from_slice(&TIMER_IRQ.mps_inti_flags().to_le_bytes());

    // §5.2.12.7: NMI on LINT1 of every processor.
    body.extend_from_slice(&[TYPE_LOCAL_APIC_NMI, 6, ALL_PROCESSORS_UID8]);
    body.extend_from_slice(&NMI_LINE.mps_inti_flags().to_le_bytes());
    body.push(NMI_LINT);
    if any_x2apic {
        // §5.2.12.13: the same for processors described by
        // x2APIC entries.
        body.extend_from_slice(&[TYPE_LOCAL_X2APIC_NMI, 12]);
        body.extend_from_slice(&NMI_LINE.mps_inti_flags().to_le_bytes());
        body.extend_from_slice(&ALL_PROCESSORS_UID32.to_le_bytes());
        body.extend_from_slice(&[NMI_LINT, 0, 0, 0]);
    }
    check_fits(body.len())?;

    // Lengths are bounded by ACPI_SIZE above, so the crate's u32 casts hold.
    let mut sdt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN as u32,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.write_u32(36, APIC_ADDR);
    sdt.write_u32(40, MADT_FLAG_PCAT_COMPAT);
    sdt.append_slice(&body);
    Ok(sdt.as_slice().to_vec())
}

fn check_fits(body_len: usize) -> Result<(), AcpiError> {
    let needed = (MADT_HEADER_LEN as u64).saturating_add(body_len as u64);
    if needed > ACPI_SIZE {
        return Err(AcpiError::DoesNotFit {
            table: "APIC",
            needed,
            available: ACPI_SIZE,
        });
    }
    Ok(())
}

/// Narrows a layout address to the MADT's 32-bit fields (used in consts
/// only, so a bad layout fails to compile).
const fn mmio32(addr: u64) -> u32 {
    assert!(addr <= u32::MAX as u64);
    addr as u32
}
