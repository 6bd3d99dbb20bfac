//! KVM interrupt routing for MSI-X: one GSI (above the IOAPIC's 24 pins)
//! and one irqfd per device vector. Also the level-triggered INTx lines of
//! the virtio devices ([`IntxResamplers`]).
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so every update re-sends
//! the routes KVM installs by default with the in-kernel irqchip (GSI 0..15
//! to the PIC and the IOAPIC, GSI 16..23 to the IOAPIC) followed by all MSI
//! routes. Without the defaults, the serial port, the RTC and the PCI INTx
//! lines would go dead.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use boot::layout::IOAPIC_PINS;
use devices::pci::msix::{MsiMessage, MsiVectors};
use devices::virtio::pci::IntxResample;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vm_allocator::IdAllocator;
use vmm_sys_util::eventfd::EventFd;

/// Highest GSI we hand out (KVM allows up to KVM_MAX_IRQ_ROUTES routes).
const MAX_GSI: u32 = 1023;
/// The legacy PIC pair serves GSI 0..15.
const PIC_GSIS: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("no free GSI left for MSI-X vectors")]
    NoGsi,
    #[error("cannot create an irqfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("KVM: registering an MSI irqfd: {0}")]
    Irqfd(#[source] kvm_ioctls::Error),
}

/// The VM's GSI routing table.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

struct RouterState {
    ids: IdAllocator,
    msi: BTreeMap<u32, MsiMessage>,
}

impl GsiRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            state: Mutex::new(RouterState {
                // IOAPIC_PINS < MAX_GSI: the range is valid.
                ids: IdAllocator::new(IOAPIC_PINS, MAX_GSI).expect("static GSI range"),
                msi: BTreeMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn allocate(&self) -> Result<u32, InterruptError> {
        self.state()
            .ids
            .allocate_id()
            .map_err(|_| InterruptError::NoGsi)
    }

    /// Points `gsi` at `msg` and pushes the whole table to KVM.
    fn set_msi(&self, gsi: u32, msg: MsiMessage) -> std::io::Result<()> {
        let mut state = self.state();
        state.msi.insert(gsi, msg);
        let routing = routing_table(&state.msi)?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    /// A group of `count` MSI vectors for one device: a GSI and an irqfd each.
    pub fn msi_group(self: &Arc<Self>, count: u16) -> Result<MsiGroup, InterruptError> {
        let mut vectors = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let gsi = self.allocate()?;
            let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(InterruptError::EventFd)?;
            self.vm
                .register_irqfd(&irqfd, gsi)
                .map_err(InterruptError::Irqfd)?;
            vectors.push((gsi, irqfd));
        }
        Ok(MsiGroup {
            router: self.clone(),
            vectors,
        })
    }
}

/// The default x86 routes plus `msi`.
fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> std::io::Result<KvmIrqRouting> {
    let mut entries = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
        e.u.irqchip.pin = gsi;
        entries.push(e);
        if gsi < PIC_GSIS {
            let mut p = e;
            p.u.irqchip.irqchip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            p.u.irqchip.pin = gsi % 8;
            entries.push(p);
        }
    }
    for (&gsi, msg) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = msg.address as u32;
        e.u.msi.address_hi = (msg.address >> 32) as u32;
        e.u.msi.data = msg.data;
        entries.push(e);
    }
    KvmIrqRouting::from_entries(&entries)
        .map_err(|e| std::io::Error::other(format!("GSI routing table: {e:?}")))
}

/// One device's MSI-X vectors.
pub struct MsiGroup {
    router: Arc<GsiRouter>,
    vectors: Vec<(u32, EventFd)>,
}

impl MsiVectors for MsiGroup {
    fn set_route(&self, vector: u16, msg: MsiMessage) -> std::io::Result<()> {
        match self.vectors.get(usize::from(vector)) {
            Some((gsi, _)) => self.router.set_msi(*gsi, msg),
            None => Ok(()),
        }
    }

    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        match self.vectors.get(usize::from(vector)) {
            Some((_, irqfd)) => irqfd.write(1),
            None => Ok(()),
        }
    }
}

/// The virtio devices' INTx lines are KVM resample irqfds: KVM lowers a
/// line at the guest's EOI and signals its resample eventfd; this main-loop
/// subscriber then lets the device raise the line again while its ISR has
/// bits set (level-triggered, as PCI INTx is).
pub struct IntxResamplers {
    lines: Vec<(EventFd, IntxResample)>,
}

impl IntxResamplers {
    /// `lines`: each device's resample eventfd and its transport's handle.
    pub fn new(lines: Vec<(EventFd, IntxResample)>) -> Self {
        Self { lines }
    }
}

impl MutEventSubscriber for IntxResamplers {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, _) in &self.lines {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                log::error!("cannot watch an INTx resample eventfd: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if let Some((evt, line)) = self.lines.iter().find(|(e, _)| e.as_raw_fd() == fd) {
            let _ = evt.read();
            line.line_lowered();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keeps_default_routes_and_adds_msi() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x41,
            },
        );
        let t = routing_table(&msi).unwrap();
        let entries = t.as_slice();
        // 24 IOAPIC + 16 PIC + 1 MSI.
        assert_eq!(entries.len(), 41);
        let ioapic: Vec<u32> = entries
            .iter()
            .filter(|e| {
                e.type_ == KVM_IRQ_ROUTING_IRQCHIP
                    // SAFETY: irqchip is the active union member for IRQCHIP routes.
                    && unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_IOAPIC
            })
            .map(|e| e.gsi)
            .collect();
        assert_eq!(ioapic, (0..24).collect::<Vec<_>>());
        let last = entries.last().unwrap();
        assert_eq!((last.gsi, last.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: msi is the active union member for MSI routes.
        let m = unsafe { last.u.msi };
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xfee0_1000, 1, 0x41));
    }
}
