//! pvpanic (QEMU's ISA device, ACPI `_HID` QEMU0001): the guest kernel writes
//! a bit to one I/O port when it panics, so the VMM can report a crash
//! instead of waiting for a hung guest.

use std::sync::Arc;

use super::{VmControl, VmRequest};
use crate::BusDevice;

/// The guest kernel panicked (pvpanic spec, bit 0).
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest is about to run a crash (kdump) kernel (bit 1).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

pub struct PvPanic {
    control: Arc<dyn VmControl>,
}

impl PvPanic {
    pub fn new(control: Arc<dyn VmControl>) -> Self {
        Self { control }
    }
}

impl BusDevice for PvPanic {
    /// Reading the port returns the events this device supports.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(byte) = data.first_mut() {
            *byte = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let value = data.first().copied().unwrap_or(0);
        if value & PVPANIC_PANICKED != 0 {
            self.control.request(VmRequest::Panic);
        } else if value & PVPANIC_CRASH_LOADED != 0 {
            log::warn!("guest kernel crashed and is loading its crash kernel");
        }
    }
}
