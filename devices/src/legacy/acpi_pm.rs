//! The registers of a hardware-reduced ACPI machine (ACPI 6.5 §4.1): the
//! sleep control/status registers that take the guest to S5 (power off), the
//! reset register, and the event selector of the Generic Event Device
//! (ACPI0013) that delivers the power button.
//!
//! Port layout (offsets from `layout::ACPI_SLEEP_CONTROL_PORT`):
//! 0 sleep control, 1 sleep status, 2 reset, 4..8 GED event selector.

use std::sync::Arc;

use super::{VmControl, VmRequest};
use crate::{BusDevice, Interrupt};

const SLEEP_CONTROL: u64 = 0;
const RESET: u64 = 2;
const GED_SELECTOR: u64 = 4;
/// Number of ports this device spans.
pub const ACPI_PM_PORT_LEN: u64 = 8;

/// SLP_EN, bit 5 of the sleep control register (ACPI 6.5 §4.8.3.7).
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP, bits 2..4 of the sleep control register.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

pub struct AcpiPm {
    control: Arc<dyn VmControl>,
    s5_slp_typ: u8,
    reset_value: u8,
    ged_irq: Arc<dyn Interrupt>,
    ged_pending: u32,
}

impl AcpiPm {
    pub fn new(
        control: Arc<dyn VmControl>,
        s5_slp_typ: u8,
        reset_value: u8,
        ged_irq: Arc<dyn Interrupt>,
    ) -> Self {
        Self {
            control,
            s5_slp_typ,
            reset_value,
            ged_irq,
            ged_pending: 0,
        }
    }

    /// Latches a GED event (e.g. the power button) and interrupts the guest;
    /// its `_EVT` method reads (and so clears) the selector.
    pub fn raise_ged_event(&mut self, event_bits: u32) -> std::io::Result<()> {
        self.ged_pending |= event_bits;
        self.ged_irq.trigger()
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The sleep registers read as 0: we only implement S5, which ends
        // the VM, so there is never a wake status to report.
        data.fill(0);
        if offset == GED_SELECTOR {
            let bytes = self.ged_pending.to_le_bytes();
            let n = data.len().min(bytes.len());
            data[..n].copy_from_slice(&bytes[..n]);
            self.ged_pending = 0;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL if value & SLP_EN != 0 => {
                let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if slp_typ == self.s5_slp_typ {
                    self.control.request(VmRequest::PowerOff);
                } else {
                    log::warn!("guest asked for unsupported sleep type {slp_typ}");
                }
            }
            RESET if value == self.reset_value => self.control.request(VmRequest::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{CountingInterrupt, RecordingControl};

    fn pm() -> (AcpiPm, Arc<RecordingControl>, Arc<CountingInterrupt>) {
        let control = Arc::new(RecordingControl::default());
        let irq = Arc::new(CountingInterrupt::default());
        (
            AcpiPm::new(control.clone(), 5, 1, irq.clone()),
            control,
            irq,
        )
    }

    #[test]
    fn s5_with_slp_en_powers_off_other_values_do_not() {
        let (mut pm, control, _) = pm();
        pm.write(SLEEP_CONTROL, &[5 << 2]); // no SLP_EN
        pm.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3
        assert!(control.requests().is_empty());
        pm.write(SLEEP_CONTROL, &[(5 << 2) | SLP_EN]);
        assert_eq!(control.requests(), vec![VmRequest::PowerOff]);
    }

    #[test]
    fn reset_register_needs_the_reset_value() {
        let (mut pm, control, _) = pm();
        pm.write(RESET, &[2]);
        pm.write(RESET, &[]);
        assert!(control.requests().is_empty());
        pm.write(RESET, &[1]);
        assert_eq!(control.requests(), vec![VmRequest::Reset]);
    }

    #[test]
    fn ged_selector_reports_then_clears_and_interrupts() {
        let (mut pm, _, irq) = pm();
        pm.raise_ged_event(1).unwrap();
        assert_eq!(irq.count(), 1);
        let mut sel = [0u8; 4];
        pm.read(GED_SELECTOR, &mut sel);
        assert_eq!(u32::from_le_bytes(sel), 1);
        pm.read(GED_SELECTOR, &mut sel);
        assert_eq!(u32::from_le_bytes(sel), 0);
    }
}
