//! The i8042 keyboard controller, reduced to what guests use on a VM: the
//! "pulse reset line" command (0xFE on port 0x64) that Linux's `reboot=k`
//! and many boot loaders use to reset the machine.

use std::sync::Arc;

use super::{VmControl, VmRequest};
use crate::BusDevice;

/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;
/// i8042 command: pulse output line 0 (the CPU reset line) low.
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    control: Arc<dyn VmControl>,
}

impl I8042 {
    pub fn new(control: Arc<dyn VmControl>) -> Self {
        Self { control }
    }
}

impl BusDevice for I8042 {
    /// Status 0: output buffer empty, input buffer empty, so a guest waiting
    /// for the controller to be ready proceeds at once.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.control.request(VmRequest::Reset);
        }
    }
}
