//! FADT ("FACP") of a hardware-reduced machine (ACPI 6.5 §5.2.9, §4.1).
//!
//! Hardware-reduced means: no PM1/PM2/GPE blocks, no PM timer, no SCI, no
//! FACS. What is left are the sleep control/status registers (used for S5,
//! soft off) and the reset register, all 1-byte I/O ports, plus `X_DSDT`.
//! Everything the spec tells OSPM to ignore in this mode stays zero, which
//! is also what keeps Linux's ACPICA (`tbfadt.c`) from warning: it converts
//! no legacy blocks when `HW_REDUCED_ACPI` is set, and only checks that the
//! table is not longer than it knows (276 bytes for 6.x) and that `DSDT`
//! and `X_DSDT` do not disagree (the 32-bit one is 0).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::Aml;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
};

/// FADT length for ACPI 6.x (ACPI 6.5 §5.2.9, up to the Hypervisor Vendor
/// Identity field).
pub(super) const FADT_LEN: usize = 276;

// IA-PC boot architecture flags (ACPI 6.5 §5.2.9.3).
/// No VGA: the guest must not probe legacy VGA ranges.
pub(super) const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// No PCIe links to manage: OSPM must not enable ASPM (the bus is virtual).
pub(super) const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
/// The boot architecture flags we set. Deliberately clear:
/// - LEGACY_DEVICES (bit 0): every ISA device is enumerated by the DSDT;
///   Linux only uses the bit to skip PnP BIOS probing.
/// - 8042 (bit 1): the i8042 only implements the reset command, so there is
///   no keyboard for a driver to find; with the bit clear and no PNP0303
///   device Linux skips i8042 probing. Reboot does not need the driver: the
///   FADT reset register comes first and Linux's fallback writes 0xfe to
///   port 0x64 directly.
/// - MSI_NOT_SUPPORTED (bit 3): virtio-pci uses MSI-X.
/// - CMOS_RTC_NOT_PRESENT (bit 5): the RTC exists (DSDT `RTC_`).
pub(super) const IAPC_BOOT_ARCH: u16 = IAPC_VGA_NOT_PRESENT | IAPC_PCIE_ASPM_CONTROLS;

/// "Hypervisor Vendor Identity" (§5.2.9): lets a guest know whose VM it
/// runs in.
pub(super) const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"IVMM-KVM";

/// FADT fixed feature flags (§5.2.9) we set:
/// - WBINVD: required of new systems; KVM implements the instruction.
/// - PWR_BUTTON / SLP_BUTTON: the power button is a control-method device
///   (PNP0C0C driven by the GED); no fixed-feature buttons exist. With the
///   bits clear Linux would also create fixed button devices.
/// - FIX_RTC: there is no fixed register space, so no RTC wake status in
///   it. Linux's rtc-cmos then leaves the (absent) ACPI RTC event alone.
/// - RESET_REG_SUP: the reset register below works.
/// - HW_REDUCED_ACPI.
const FLAGS: [Flags; 6] = [
    Flags::Wbinvd,
    Flags::PwrButton,
    Flags::SlpButton,
    Flags::FixRtc,
    Flags::ResetRegSup,
    Flags::HwReducedAcpi,
];

/// A 1-byte register in I/O space (GAS, §5.2.3.2).
fn io_byte_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// Builds the FADT pointing at the DSDT at `dsdt_addr`.
pub(super) fn build(dsdt_addr: u64) -> Vec<u8> {
    // FADTBuilder::new fills signature, length (276), revision 6, minor 5.
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION).dsdt_64(dsdt_addr);
    for flag in FLAGS {
        fadt = fadt.flag(flag);
    }
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_byte_register(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_byte_register(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_byte_register(ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();

    let mut bytes = Vec::with_capacity(FADT_LEN);
    fadt.finalize().to_aml_bytes(&mut bytes);
    bytes
}
