//! PC platform devices on port I/O: the COM1 UART, the i8042 reset line, the
//! CMOS RTC, pvpanic and the hardware-reduced ACPI registers.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod pvpanic;
pub mod serial;

pub use acpi_pm::AcpiPm;
pub use cmos::Cmos;
pub use i8042::I8042;
pub use pvpanic::PvPanic;
pub use serial::Serial;

/// What a device can ask of the machine as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmRequest {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (ACPI reset register, i8042 0xFE).
    Reset,
    /// The guest reported a kernel panic through pvpanic.
    Panic,
}

/// Receives [`VmRequest`]s; implemented by the VMM (which stops the vCPUs)
/// and by tests (which record them).
pub trait VmControl: Send + Sync {
    fn request(&self, request: VmRequest);
}
