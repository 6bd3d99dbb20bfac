//! The PCIe host bridge at 00:00.0. It has no BARs; it exists so that the
//! guest finds a root complex function where ACPI says the bus starts.

use super::PciDevice;

/// Red Hat, Inc. — the vendor QEMU uses for its generic PCIe host bridge.
const VENDOR_ID: u16 = 0x1b36;
/// "QEMU PCIe Host bridge" (pci-ids), known to guests' drivers as harmless.
const DEVICE_ID: u16 = 0x0008;
/// Class 06 (bridge), subclass 00 (host bridge), prog-if 00.
const CLASS_CODE: u32 = 0x06_00_00;
const REVISION: u32 = 0;

pub struct HostBridge {
    /// Command and status register; only the command half is writable.
    command: u16,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    pub fn new() -> Self {
        Self { command: 0 }
    }
}

impl PciDevice for HostBridge {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        match reg {
            0 => u32::from(DEVICE_ID) << 16 | u32::from(VENDOR_ID),
            1 => u32::from(self.command),
            2 => CLASS_CODE << 8 | REVISION,
            // Header type 0, single function.
            3 => 0,
            _ => 0,
        }
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        if reg == 1 && offset == 0 && data.len() >= 2 {
            self.command = u16::from_le_bytes([data[0], data[1]]);
        }
    }
}
