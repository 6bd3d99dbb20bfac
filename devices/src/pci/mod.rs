//! PCI: the bus (segment 0, bus 0), its two configuration access methods
//! (port I/O mechanism #1 at 0xcf8/0xcfc and the PCIe ECAM window), and the
//! host bridge at 00:00.0.

mod config_access;
mod host_bridge;
pub mod msix;

pub use config_access::{PciConfigIo, PciConfigMmio};
pub use host_bridge::HostBridge;

use std::sync::{Arc, Mutex};

/// Devices per bus (PCI 3.0 §3.2.2.3.1).
pub const DEVICES_PER_BUS: usize = 32;
/// Size of a function's configuration space reachable through ECAM.
pub const CONFIG_SPACE_SIZE: usize = 4096;

/// A PCI function as the configuration-space accessors see it.
pub trait PciDevice: Send {
    /// Reads the aligned 32-bit register `reg` (byte offset `reg * 4`).
    fn read_config_register(&mut self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` within register `reg`.
    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("PCI slot {0} is taken")]
    SlotTaken(usize),
    #[error("no free PCI slot left (bus 0 has {DEVICES_PER_BUS})")]
    BusFull,
}

/// Bus 0 of segment 0: one function (function 0) per slot.
#[derive(Default)]
pub struct PciBus {
    slots: Vec<Option<Arc<Mutex<dyn PciDevice>>>>,
}

impl PciBus {
    pub fn new() -> Self {
        Self {
            slots: (0..DEVICES_PER_BUS).map(|_| None).collect(),
        }
    }

    /// Puts `device` at `slot`.
    pub fn add_at(
        &mut self,
        slot: usize,
        device: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<(), PciError> {
        match self.slots.get_mut(slot) {
            Some(s @ None) => {
                *s = Some(device);
                Ok(())
            }
            Some(Some(_)) => Err(PciError::SlotTaken(slot)),
            None => Err(PciError::BusFull),
        }
    }

    /// Puts `device` at the first free slot and returns the slot.
    pub fn add(&mut self, device: Arc<Mutex<dyn PciDevice>>) -> Result<usize, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::BusFull)?;
        self.add_at(slot, device)?;
        Ok(slot)
    }

    fn device(&self, bus: u8, slot: usize, function: u8) -> Option<&Arc<Mutex<dyn PciDevice>>> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(slot)?.as_ref()
    }

    /// Config read; absent functions read as all ones (PCI 3.0 §6.1).
    pub fn read_config(&self, bus: u8, slot: usize, function: u8, reg: usize) -> u32 {
        match self.device(bus, slot, function) {
            Some(dev) => lock(dev).read_config_register(reg),
            None => u32::MAX,
        }
    }

    /// Config write; writes to absent functions are dropped.
    pub fn write_config(
        &self,
        bus: u8,
        slot: usize,
        function: u8,
        reg: usize,
        offset: u64,
        data: &[u8],
    ) {
        if let Some(dev) = self.device(bus, slot, function) {
            lock(dev).write_config_register(reg, offset, data);
        }
    }
}

fn lock<'a>(
    dev: &'a Mutex<dyn PciDevice + 'static>,
) -> std::sync::MutexGuard<'a, dyn PciDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

/// Extracts the `data.len()` bytes at byte `offset` of a 32-bit register
/// value into `data` (little endian); bytes past the register read as ones.
pub(crate) fn split_register(value: u32, offset: u64, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, out) in data.iter_mut().enumerate() {
        *out = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|idx| bytes.get(idx).copied())
            .unwrap_or(0xff);
    }
}
