//! The two ways a guest reaches PCI configuration space.

use std::sync::{Arc, Mutex};

use super::{split_register, PciBus, CONFIG_SPACE_SIZE};
use crate::BusDevice;

/// Configuration mechanism #1 (PCI 3.0 §3.2.2.3.2): CONFIG_ADDRESS at port
/// 0xcf8 selects bus/device/function/register, CONFIG_DATA at 0xcfc..0xcff
/// accesses it. Reaches the first 256 bytes of each function.
pub struct PciConfigIo {
    bus: Arc<Mutex<PciBus>>,
    address: u32,
}

const ENABLE_BIT: u32 = 1 << 31;
const DATA_OFFSET: u64 = 4;

impl PciConfigIo {
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus, address: 0 }
    }

    /// Decodes CONFIG_ADDRESS: (bus, device, function, register index).
    fn selected(&self) -> Option<(u8, usize, u8, usize)> {
        if self.address & ENABLE_BIT == 0 {
            return None;
        }
        let bus = ((self.address >> 16) & 0xff) as u8;
        let device = ((self.address >> 11) & 0x1f) as usize;
        let function = ((self.address >> 8) & 0x7) as u8;
        let reg = ((self.address >> 2) & 0x3f) as usize;
        Some((bus, device, function, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset < DATA_OFFSET {
            split_register(self.address, offset, data);
            return;
        }
        let value = match self.selected() {
            Some((b, d, f, r)) => lock(&self.bus).read_config(b, d, f, r),
            None => u32::MAX,
        };
        split_register(value, offset - DATA_OFFSET, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < DATA_OFFSET {
            // Only full-width writes set CONFIG_ADDRESS; byte writes to 0xcf9
            // and friends are other legacy registers, not ours.
            if offset == 0 && data.len() == 4 {
                let mut v = [0u8; 4];
                v.copy_from_slice(data);
                self.address = u32::from_le_bytes(v);
            }
            return;
        }
        if let Some((b, d, f, r)) = self.selected() {
            lock(&self.bus).write_config(b, d, f, r, offset - DATA_OFFSET, data);
        }
    }
}

/// PCIe enhanced configuration access (ECAM, PCIe 5.0 §7.2.2): each function
/// gets 4 KiB at `bus << 20 | device << 15 | function << 12`.
pub struct PciConfigMmio {
    bus: Arc<Mutex<PciBus>>,
}

impl PciConfigMmio {
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus }
    }

    fn decode(offset: u64) -> (u8, usize, u8, usize, u64) {
        let bus = ((offset >> 20) & 0xff) as u8;
        let device = ((offset >> 15) & 0x1f) as usize;
        let function = ((offset >> 12) & 0x7) as u8;
        let byte = offset & (CONFIG_SPACE_SIZE as u64 - 1);
        (bus, device, function, (byte / 4) as usize, byte % 4)
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (b, d, f, r, o) = Self::decode(offset);
        let value = lock(&self.bus).read_config(b, d, f, r);
        split_register(value, o, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (b, d, f, r, o) = Self::decode(offset);
        lock(&self.bus).write_config(b, d, f, r, o, data);
    }
}

fn lock(bus: &Mutex<PciBus>) -> std::sync::MutexGuard<'_, PciBus> {
    bus.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::HostBridge;
    use super::*;

    fn bus() -> Arc<Mutex<PciBus>> {
        let mut bus = PciBus::new();
        bus.add_at(0, Arc::new(Mutex::new(HostBridge::new())))
            .unwrap();
        Arc::new(Mutex::new(bus))
    }

    #[test]
    fn io_mechanism_reads_host_bridge_ids_and_absent_slots() {
        let mut io = PciConfigIo::new(bus());
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut id = [0u8; 4];
        io.read(4, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0008_1b36);
        let mut vendor = [0u8; 2];
        io.read(4, &mut vendor);
        assert_eq!(u16::from_le_bytes(vendor), 0x1b36);
        io.read(6, &mut vendor);
        assert_eq!(u16::from_le_bytes(vendor), 0x0008);
        io.write(0, &(0x8000_0000u32 | (3 << 11)).to_le_bytes());
        io.read(4, &mut id);
        assert_eq!(u32::from_le_bytes(id), u32::MAX);
        // Disabled address: all ones.
        io.write(0, &0u32.to_le_bytes());
        io.read(4, &mut id);
        assert_eq!(u32::from_le_bytes(id), u32::MAX);
    }

    #[test]
    fn ecam_reads_same_space_and_ignores_other_buses() {
        let mut mmio = PciConfigMmio::new(bus());
        let mut class = [0u8; 4];
        mmio.read(8, &mut class);
        assert_eq!(u32::from_le_bytes(class) >> 8, 0x06_00_00);
        mmio.read(1 << 20, &mut class);
        assert_eq!(u32::from_le_bytes(class), u32::MAX);
        // Wild offsets and widths must not panic.
        let mut wide = [0u8; 8];
        mmio.read(u64::MAX, &mut wide);
        mmio.write(0xfff, &[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
