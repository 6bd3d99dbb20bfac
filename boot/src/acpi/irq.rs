//! The interrupt lines the ACPI tables announce, with trigger mode and
//! polarity, in one place: the MADT and DSDT are generated from these values
//! and the VMM reads them to decide how to drive each GSI.
//!
//! The VMM does not program the IOAPIC: the guest does, from the MADT, the
//! DSDT `_CRS` descriptors and `_PRT`. What the VMM must match is the way it
//! raises a line: an [`Trigger::Edge`] line is pulsed (KVM irqfd, or
//! `KVM_IRQ_LINE` 1 then 0); a [`Trigger::Level`] line stays asserted until
//! the device is serviced (`KVM_IRQ_LINE` 1/0, or an irqfd with a resample
//! fd). KVM's IOAPIC takes the *logical* level (1 = asserted) for both
//! polarities, so an active-low line is still raised with 1.

use crate::layout::{
    CMOS_GSI, COM1_GSI, GED_GSI, IOAPIC_PINS, PCI_INTX_GSI_BASE, PCI_INTX_GSI_COUNT,
};

/// Trigger mode of an interrupt line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Edge,
    Level,
}

/// Polarity of an interrupt line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    ActiveHigh,
    ActiveLow,
}

/// One IOAPIC input as described to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqLine {
    pub gsi: u32,
    pub trigger: Trigger,
    pub polarity: Polarity,
}

impl IrqLine {
    /// MPS INTI flags of a MADT Interrupt Source Override or NMI entry
    /// (ACPI 6.5 §5.2.12.5): polarity in bits 1:0 (01 = active
    /// high, 11 = active low), trigger mode in bits 3:2 (01 = edge,
    /// 11 = level). We never use "conforms to bus" (00) so the table says
    /// exactly what we mean.
    pub(crate) const fn mps_inti_flags(self) -> u16 {
        let polarity = match self.polarity {
            Polarity::ActiveHigh => 0b01,
            Polarity::ActiveLow => 0b11,
        };
        let trigger = match self.trigger {
            Trigger::Edge => 0b01,
            Trigger::Level => 0b11,
        };
        polarity | (trigger << 2)
    }
}

/// ISA devices are edge-triggered, active high (the ISA convention, which
/// the guest also assumes for ISA IRQs without a MADT override).
const fn isa(gsi: u32) -> IrqLine {
    IrqLine {
        gsi,
        trigger: Trigger::Edge,
        polarity: Polarity::ActiveHigh,
    }
}

/// COM1 (DSDT `\_SB_.COM1`).
pub const COM1_IRQ: IrqLine = isa(COM1_GSI);
/// CMOS RTC update/alarm interrupt (DSDT `\_SB_.RTC_`).
pub const CMOS_IRQ: IrqLine = isa(CMOS_GSI);
/// Generic Event Device (DSDT `\_SB_.GED_`). Edge so that the VMM can raise
/// it with a plain irqfd and never has to track when the guest is done; the
/// event selector register, not the line level, remembers pending events.
pub const GED_IRQ: IrqLine = isa(GED_GSI);

/// ISA IRQ 0 (the PIT) is wired to IOAPIC pin 2 on a PC, and KVM's in-kernel
/// PIT follows that wiring; the MADT says so with an Interrupt Source
/// Override (ACPI 6.5 §5.2.12.5).
pub const TIMER_ISA_IRQ: u8 = 0;
pub const TIMER_IRQ: IrqLine = isa(2);

/// Number of device slots on a PCI bus (PCI Local Bus 3.0 §3.2.2.3.1).
pub const PCI_SLOTS: u8 = 32;
/// INTA# .. INTD#.
pub const PCI_INTX_PINS: u8 = 4;

/// The GSI that slot `slot`, pin `pin` (0 = INTA#) is routed to in `_PRT`:
/// the usual swizzle over [`PCI_INTX_GSI_COUNT`] lines. PCI INTx is
/// level-triggered, active low (PCI Local Bus 3.0 §2.2.6); Linux assumes
/// exactly that for a `_PRT` entry that names a GSI directly (ACPI 6.5
/// §6.2.13, source = 0). `None` if `slot` or `pin` is out of range.
pub const fn pci_intx_irq(slot: u8, pin: u8) -> Option<IrqLine> {
    if slot >= PCI_SLOTS || pin >= PCI_INTX_PINS {
        return None;
    }
    // slot + pin < 36 and the modulus is a non-zero constant: no overflow.
    let gsi = PCI_INTX_GSI_BASE + (slot as u32 + pin as u32) % PCI_INTX_GSI_COUNT;
    Some(IrqLine {
        gsi,
        trigger: Trigger::Level,
        polarity: Polarity::ActiveLow,
    })
}

/// Every line the VMM itself drives (the timer pin is driven by KVM's PIT),
/// one entry per GSI.
pub fn irq_lines() -> Vec<IrqLine> {
    let mut lines = vec![COM1_IRQ, CMOS_IRQ, GED_IRQ];
    lines.extend((0..PCI_INTX_GSI_COUNT).map(|i| IrqLine {
        gsi: PCI_INTX_GSI_BASE + i,
        trigger: Trigger::Level,
        polarity: Polarity::ActiveLow,
    }));
    lines
}

// The layout must keep these lines on the single IOAPIC and apart.
const _: () = assert!(PCI_INTX_GSI_COUNT > 0);
const _: () = assert!(PCI_INTX_GSI_BASE + PCI_INTX_GSI_COUNT <= IOAPIC_PINS);
const _: () = assert!(COM1_GSI < 16 && CMOS_GSI < 16 && GED_GSI < 16);
