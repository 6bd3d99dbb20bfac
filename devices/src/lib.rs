//! Device models of an ivmm machine. Devices see guest memory only through
//! vm-memory traits and raise interrupts through [`Interrupt`], so every model
//! here runs in unit tests without `/dev/kvm`.

pub mod block;
pub mod bus;
pub mod legacy;
pub mod pci;
#[cfg(any(test, feature = "test-doubles"))]
pub mod testing;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};

/// An interrupt line a device can pulse (an irqfd bound to a GSI in the VMM,
/// a counter in tests).
pub trait Interrupt: Send + Sync {
    fn trigger(&self) -> std::io::Result<()>;
}

impl Interrupt for vmm_sys_util::eventfd::EventFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.write(1)
    }
}
