//! The guest-physical and I/O-port map of an ivmm x86_64 machine.
//!
//! Every address that two components must agree on (the kernel loader, the
//! ACPI tables that describe the machine, and the devices the VMM registers)
//! lives here, once. Nothing else in the workspace hard-codes these numbers.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (left alone)
//! 0x0000_0500  GDT, IDT                      (long-mode entry for bzImage)
//! 0x0000_6000  PVH start_info + memory map   (ELF/PVH entry)
//! 0x0000_7000  boot_params ("zero page")     (bzImage entry)
//! 0x0000_8000  boot stack top (grows down)
//! 0x0000_9000  PML4, PDPTE, PDE              (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA start: end of the first usable low-memory range
//! 0x000e_0000  ACPI tables (RSDP first, inside the BIOS search area)
//! 0x0010_0000  kernel (1 MiB), initrd placed at the top of low RAM
//! 0xc000_0000  32-bit PCI MMIO window                    (MMIO32_*)
//! 0xe000_0000  PCI ECAM, bus 0 only                       (ECAM_*)
//! 0xfec0_0000  IOAPIC
//! 0xfee0_0000  local APICs
//! 4 GiB        RAM above the hole, then the 64-bit PCI MMIO window
//! ```

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 0x1000;

// --- Boot structures in low memory -------------------------------------------

/// Global descriptor table used for the 64-bit bzImage entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty) for the 64-bit bzImage entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after `hvm_start_info`.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries, after the module list.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page tables identity-mapping the first GiB with 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept (the boot protocol allows the kernel to say
/// less through `cmdline_size`).
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// End of the first usable RAM range (start of the EBDA), as on a PC.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the ACPI tables go; the RSDP is first so that a kernel that scans
/// the BIOS area (0xe0000..0x100000) finds it too.
pub const ACPI_START: u64 = 0xe0000;
/// Space reserved for all ACPI tables.
pub const ACPI_SIZE: u64 = 0x20000;
/// Where a bzImage's protected-mode kernel is loaded.
pub const HIGH_RAM_START: u64 = 0x10_0000;

// --- The 32-bit hole ------------------------------------------------------------

/// Guest RAM below 4 GiB ends here; everything above up to 4 GiB is MMIO.
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// First address above the 32-bit hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// 32-bit PCI MMIO window, announced in the DSDT `_CRS` of the host bridge.
pub const MMIO32_START: u64 = 0xc000_0000;
pub const MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration space (ECAM), bus 0 only: 32 devices x
/// 8 functions x 4 KiB. Announced in MCFG and as a reserved resource in DSDT.
pub const ECAM_START: u64 = 0xe000_0000;
pub const ECAM_SIZE: u64 = 0x10_0000;
pub const PCI_SEGMENT: u16 = 0;
pub const PCI_BUS_START: u8 = 0;
pub const PCI_BUS_END: u8 = 0;
/// IOAPIC registers and its GSI count (KVM's in-kernel IOAPIC has 24 pins).
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const IOAPIC_ID: u8 = 0;
pub const IOAPIC_PINS: u32 = 24;
/// Local APIC base (all vCPUs).
pub const APIC_START: u64 = 0xfee0_0000;
/// Size of the 64-bit PCI MMIO window placed above the end of high RAM.
pub const MMIO64_SIZE: u64 = 0x10_0000_0000;
/// Alignment of the 64-bit window's start.
pub const MMIO64_ALIGN: u64 = 0x4000_0000;

// --- I/O ports and interrupt lines ----------------------------------------------

/// 16550 UART, COM1, ISA IRQ 4.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_LEN: u16 = 8;
pub const COM1_GSI: u32 = 4;
/// i8042 keyboard controller: data port 0x60, command/status port 0x64
/// (only reset is implemented).
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// CMOS RTC, index port 0x70, data port 0x71, ISA IRQ 8.
pub const CMOS_PORT: u16 = 0x70;
pub const CMOS_PORT_LEN: u16 = 2;
pub const CMOS_GSI: u32 = 8;
/// pvpanic at QEMU's default ISA port, ACPI `_HID` "QEMU0001".
pub const PVPANIC_PORT: u16 = 0x505;
/// PCI configuration mechanism #1 (CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at 0xcfc).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_PORT_LEN: u16 = 8;
/// I/O port window the PCI host bridge forwards to PCI I/O BARs, announced in
/// the DSDT `_CRS` of the host bridge. Every platform port (COM1, CMOS,
/// pvpanic, 0xcf8, the ACPI registers) lies below it.
pub const PCI_IO_START: u16 = 0x1000;
pub const PCI_IO_SIZE: u32 = 0xf000;
/// Hardware-reduced ACPI registers, all one byte wide, in a block of our own:
/// FADT sleep control, FADT sleep status, FADT reset register.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to the reset register to reset the machine.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// SLP_TYP value of the `\_S5` package (soft off). The guest writes
/// `SLP_EN | (SLP_TYP << 2)` to the sleep control register.
pub const ACPI_S5_SLP_TYP: u8 = 5;
/// Generic Event Device (ACPI0013): a 4-byte event-selector register that the
/// `_EVT` method reads when GED_GSI fires. Bit 0 = power button.
pub const GED_PORT: u16 = 0x604;
pub const GED_PORT_LEN: u16 = 4;
pub const GED_GSI: u32 = 9;
pub const GED_EVENT_POWER_BUTTON: u32 = 1;
/// PCI INTx lines: slot N, pin P goes to GSI PCI_INTX_GSI_BASE + (N + P) % 4
/// (the usual swizzle over four lines).
pub const PCI_INTX_GSI_BASE: u32 = 16;
pub const PCI_INTX_GSI_COUNT: u32 = 4;
