//! The machine's ACPI tables, generated as plain bytes for the VMM to copy
//! into guest memory.
//!
//! ```text
//! ACPI_START  RSDP (rev 2) --> XSDT --> FACP (FADT) --X_DSDT--> DSDT (AML)
//!                                  +--> APIC (MADT)
//!                                  +--> MCFG
//! ```
//!
//! All blobs lie in `ACPI_START..ACPI_START + ACPI_SIZE`, RSDP first, each
//! 16-byte aligned. The VMM writes every blob at its address, keeps the area
//! out of E820 RAM (E820 ACPI or reserved, or no entry: it is in the BIOS
//! hole), and passes `rsdp_addr` in `boot_params.acpi_rsdp_addr` or PVH
//! `rsdp_paddr`. It must *not* put E820 entries over the PCI MMIO windows:
//! without a DMI BIOS date Linux clips host-bridge windows against E820.
//! vCPUs with APIC IDs above 254 get x2APIC entries, which Linux only uses
//! if the guest runs in x2APIC mode (CPUID must offer x2APIC).
//!
//! The machine is hardware-reduced ACPI (ACPI 6.5 §4.1): no SCI, no PM or
//! GPE register blocks, no FACS. What the VMM must implement instead:
//!
//! * **Sleep control** (`ACPI_SLEEP_CONTROL_PORT`, 1 byte, write): on a write
//!   with [`SLP_EN`] set and `(value & SLP_TYP_MASK) >> SLP_TYP_SHIFT ==
//!   ACPI_S5_SLP_TYP`, power the VM off. Linux writes `0x34` for S5. Other
//!   values are ignored (we announce no other sleep state). Reads return 0.
//! * **Sleep status** (`ACPI_SLEEP_STATUS_PORT`, 1 byte): Linux writes
//!   [`WAK_STS`] (write-1-to-clear) before sleeping; ignore writes, read 0.
//!   (Linux only polls it after waking from S1-S4, which we do not offer.)
//! * **Reset** (`ACPI_RESET_PORT`, 1 byte, write): writing
//!   `ACPI_RESET_VALUE` resets the VM; other values are ignored.
//! * **GED** (`GED_PORT`, 4 bytes): a 32-bit event selector. To send an
//!   event, the VMM ORs its bit (`GED_EVENT_POWER_BUTTON` on SIGTERM) into
//!   the selector, then pulses `GED_GSI` ([`irq::GED_IRQ`] is edge: irqfd
//!   write, or `KVM_IRQ_LINE` 1 then 0). A 32-bit guest read returns the
//!   selector and clears it atomically (read-to-clear); the line needs no
//!   deassert-on-read because it is edge-triggered. Writes are ignored.
//!   The AML only ever does one 4-byte read at `GED_PORT`; other widths or
//!   offsets may read 0 without clearing. Bits other than the power button
//!   are reserved and stay 0.
//!   Events raised while `_EVT` runs just set bits and pulse again: the
//!   guest runs `_EVT` once more and sees them.
//! * **pvpanic** (`PVPANIC_PORT`, 1 byte): Linux's driver reads the port to
//!   learn which events are supported (bit 0 PANICKED, bit 1 CRASH_LOADED,
//!   bit 2 SHUTDOWN), then writes an event bit.
//!
//! The interrupt lines and how to raise them are in [`irq`].

mod dsdt;
mod fadt;
pub mod irq;
mod madt;
#[cfg(test)]
mod tests;

use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::layout::{
    ACPI_SIZE, ACPI_START, ECAM_START, PCI_BUS_END, PCI_BUS_START, PCI_SEGMENT, RAM_64BIT_START,
};

/// Sleep control register bits (ACPI 6.5 §4.8.3.7).
pub const SLP_EN: u8 = 1 << 5;
pub const SLP_TYP_SHIFT: u8 = 2;
pub const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;
/// Sleep status register, WAK_STS (ACPI 6.5 §4.8.3.8).
pub const WAK_STS: u8 = 1 << 7;

/// OEM ID in every table header and the RSDP.
const OEM_ID: [u8; 6] = *b"IVMM  ";
/// One OEM table ID for all tables: the FADT's must match the XSDT's
/// (ACPI 6.5 §5.2.9, "OEM Table ID").
const OEM_TABLE_ID: [u8; 8] = *b"IVMMKVM ";
const OEM_REVISION: u32 = 1;

/// Alignment of each table. The spec requires none (only the FACS, which we
/// do not have); 16 keeps the RSDP on the boundary a BIOS-area scan checks.
const TABLE_ALIGN: u64 = 16;
/// Size of an ACPI 2.0+ RSDP (ACPI 6.5 §5.2.5.3).
const RSDP_LEN: u64 = 36;

/// What the VMM decides about the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// APIC ID of each vCPU, in vCPU order; vCPU `i` gets ACPI processor
    /// UID `i`. IDs up to 254 get xAPIC entries, larger ones x2APIC entries.
    pub apic_ids: Vec<u32>,
    /// 64-bit PCI MMIO window `(start, size)`: above 4 GiB, non-empty.
    pub mmio64: (u64, u64),
}

/// The generated tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// Guest-physical address of the RSDP (always `ACPI_START`).
    pub rsdp_addr: u64,
    /// `(guest-physical address, bytes)` of each table, RSDP first, in
    /// ascending, non-overlapping order.
    pub blobs: Vec<(u64, Vec<u8>)>,
}

/// Why the tables could not be built.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AcpiError {
    #[error("no vCPUs")]
    NoVcpus,
    #[error("APIC ID {0:#x} used by more than one vCPU")]
    DuplicateApicId(u32),
    #[error("APIC ID {0:#x} is the broadcast ID")]
    InvalidApicId(u32),
    #[error("vCPU {index} (APIC ID {apic_id}) needs a processor UID above 255")]
    ProcessorUidTooLarge { index: usize, apic_id: u32 },
    #[error("64-bit MMIO window {start:#x}+{size:#x} is empty, wraps or starts below 4 GiB")]
    InvalidMmio64 { start: u64, size: u64 },
    #[error(
        "{table} does not fit the ACPI area: {needed:#x} bytes needed, {available:#x} available"
    )]
    DoesNotFit {
        table: &'static str,
        needed: u64,
        available: u64,
    },
}

/// A validated 64-bit MMIO window, inclusive bounds.
#[derive(Clone, Copy, Debug)]
struct Mmio64Window {
    start: u64,
    end: u64,
}

impl Mmio64Window {
    fn new((start, size): (u64, u64)) -> Result<Self, AcpiError> {
        let invalid = AcpiError::InvalidMmio64 { start, size };
        if size == 0 || start < RAM_64BIT_START {
            return Err(invalid);
        }
        let end = start.checked_add(size - 1).ok_or(invalid)?;
        Ok(Self { start, end })
    }
}

/// Hands out aligned addresses in the ACPI area.
struct Placer {
    next: u64,
}

impl Placer {
    fn place(&mut self, table: &'static str, len: usize) -> Result<u64, AcpiError> {
        let does_not_fit = |needed| AcpiError::DoesNotFit {
            table,
            needed,
            available: ACPI_SIZE,
        };
        let addr = self
            .next
            .checked_next_multiple_of(TABLE_ALIGN)
            .ok_or(does_not_fit(u64::MAX))?;
        let end = u64::try_from(len)
            .ok()
            .and_then(|len| addr.checked_add(len))
            .ok_or(does_not_fit(u64::MAX))?;
        if end > ACPI_START + ACPI_SIZE {
            return Err(does_not_fit(end - ACPI_START));
        }
        self.next = end;
        Ok(addr)
    }
}

/// Builds all tables for `cfg`.
pub fn build(cfg: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    let mmio64 = Mmio64Window::new(cfg.mmio64)?;
    let madt = madt::build(&cfg.apic_ids)?;
    let dsdt = dsdt::build(mmio64);
    let mcfg = mcfg();

    let mut placer = Placer { next: ACPI_START };
    let rsdp_addr = placer.place("RSDP", RSDP_LEN as usize)?;
    let dsdt_addr = placer.place("DSDT", dsdt.len())?;
    let fadt = fadt::build(dsdt_addr);
    let fadt_addr = placer.place("FACP", fadt.len())?;
    let madt_addr = placer.place("APIC", madt.len())?;
    let mcfg_addr = placer.place("MCFG", mcfg.len())?;
    let xsdt = xsdt(&[fadt_addr, madt_addr, mcfg_addr]);
    let xsdt_addr = placer.place("XSDT", xsdt.len())?;
    let rsdp = rsdp(xsdt_addr);

    Ok(AcpiTables {
        rsdp_addr,
        blobs: vec![
            (rsdp_addr, rsdp),
            (dsdt_addr, dsdt),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (mcfg_addr, mcfg),
            (xsdt_addr, xsdt),
        ],
    })
}

/// MCFG (PCI Firmware 3.3 §4.1.2): the ECAM area of our one segment.
fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(ECAM_START, PCI_SEGMENT, PCI_BUS_START, PCI_BUS_END);
    to_bytes(&mcfg)
}

/// XSDT (ACPI 6.5 §5.2.8): 64-bit pointers to every table but the DSDT,
/// which the FADT points to.
fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for &entry in entries {
        xsdt.add_entry(entry);
    }
    to_bytes(&xsdt)
}

/// RSDP revision 2 (ACPI 6.5 §5.2.5.3), pointing at the XSDT only.
fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    to_bytes(&Rsdp::new(OEM_ID, xsdt_addr))
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}
