//! PCI devices of the VM: one virtio-blk function per `--disk` (slots 1..),
//! then one virtio-net function per `--net` (the slots after them), each with
//! its BAR allocated in the 64-bit window the DSDT announces, its queue
//! notify addresses bound to KVM ioeventfds, its MSI-X vectors routed
//! through [`GsiRouter`] and its INTx pin on the GSI the DSDT `_PRT` names.

use std::sync::{Arc, Mutex};

use boot::acpi::irq::pci_intx_irq;
use devices::block::{open_disk, OpenOptions};
use devices::pci::{PciBus, DEVICES_PER_BUS};
use devices::virtio::blk::{Block, BlockOptions};
use devices::virtio::net::tap::{Tap, TapError};
use devices::virtio::net::{Net, NetOptions};
use devices::virtio::pci::{IntxResample, BAR_SIZE};
use devices::virtio::spawn::WorkerSpawner;
use devices::virtio::VirtioPciDevice;
use devices::Bus;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{CacheMode, DiscardMode, VmConfig};
use crate::interrupts::{GsiRouter, InterruptError};

/// INTx pin A, as the `_PRT` numbers it.
const PIN_A: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum PciDevicesError {
    #[error("--disk {path}")]
    OpenDisk {
        path: String,
        #[source]
        source: devices::block::BlockError,
    },
    #[error("--net tap={tap}")]
    OpenTap {
        tap: String,
        #[source]
        source: TapError,
    },
    #[error(transparent)]
    Nat(#[from] crate::nat::network::NatError),
    #[error("too many PCI devices: bus 0 has {DEVICES_PER_BUS} slots")]
    NoSlot,
    #[error("no room for a BAR in the 64-bit PCI window: {0}")]
    NoBarSpace(vm_allocator::Error),
    #[error(transparent)]
    Interrupt(#[from] InterruptError),
    #[error("virtio transport: {0}")]
    Transport(#[from] devices::virtio::pci::VirtioPciError),
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("PCI bus: {0}")]
    Bus(String),
}

/// What device wiring needs from the VM being built.
pub struct PciContext<'a> {
    pub vm: &'a Arc<VmFd>,
    pub mem: &'a GuestMemoryMmap,
    pub pci: &'a mut PciBus,
    pub mmio: &'a mut Bus,
    pub router: &'a Arc<GsiRouter>,
    pub bars: &'a mut AddressAllocator,
    /// Starts the devices' I/O threads.
    pub spawner: &'a Arc<dyn WorkerSpawner>,
    /// Each device's INTx resample eventfd and the handle to serve it with
    /// (see `interrupts::IntxResamplers`).
    pub intx_lines: Vec<(EventFd, IntxResample)>,
}

/// An allocator over the 64-bit MMIO window.
pub fn bar_allocator(window: boot::memory_map::Range) -> Result<AddressAllocator, PciDevicesError> {
    AddressAllocator::new(window.start, window.size).map_err(PciDevicesError::NoBarSpace)
}

/// Adds one virtio-blk device per configured disk, in order, at slots 1, 2, ...
pub fn add_disks(ctx: &mut PciContext<'_>, config: &VmConfig) -> Result<(), PciDevicesError> {
    for (index, disk) in config.disks.iter().enumerate() {
        let slot = index + 1;
        if slot >= DEVICES_PER_BUS {
            return Err(PciDevicesError::NoSlot);
        }
        let backend = open_disk(
            &disk.path,
            &OpenOptions {
                format: disk.format,
                writable: !disk.readonly,
                direct: disk.cache == CacheMode::None,
                ..OpenOptions::default()
            },
        )
        .map_err(|source| PciDevicesError::OpenDisk {
            path: disk.path.display().to_string(),
            source,
        })?;
        let block = Block::new(
            Arc::from(backend),
            BlockOptions {
                name: format!("blk{index}"),
                serial: disk.serial.clone(),
                discard: disk.discard == DiscardMode::Unmap,
                queues: config.vcpus.clamp(1, u32::from(u16::MAX)) as u16,
            },
        )
        .with_spawner(ctx.spawner.clone());
        add_virtio(ctx, slot as u8, Box::new(block))?;
    }
    Ok(())
}

/// Adds one virtio-net device per configured NIC, in order, in the slots
/// after the disks.
pub fn add_nets(ctx: &mut PciContext<'_>, config: &VmConfig) -> Result<(), PciDevicesError> {
    for (index, net) in config.nets.iter().enumerate() {
        let slot = config.disks.len() + index + 1;
        if slot >= DEVICES_PER_BUS {
            return Err(PciDevicesError::NoSlot);
        }
        let tap = Tap::open(&net.tap).map_err(|source| PciDevicesError::OpenTap {
            tap: net.tap.clone(),
            source,
        })?;
        // A NAT NIC's TAP is new (the process made it): put it on the bridge.
        if let Some(bridge) = &net.bridge {
            crate::nat::network::attach(bridge, &net.tap)?;
        }
        let device = Net::new(
            Arc::new(tap),
            NetOptions {
                name: format!("net{index}"),
                mac: net.mac,
            },
        )
        .with_spawner(ctx.spawner.clone());
        add_virtio(ctx, slot as u8, Box::new(device))?;
    }
    Ok(())
}

fn add_virtio(
    ctx: &mut PciContext<'_>,
    slot: u8,
    device: Box<dyn devices::virtio::VirtioDevice>,
) -> Result<(), PciDevicesError> {
    let range: RangeInclusive = ctx
        .bars
        .allocate(BAR_SIZE, BAR_SIZE, AllocPolicy::FirstMatch)
        .map_err(PciDevicesError::NoBarSpace)?;
    let bar = range.start();

    let intx_gsi = pci_intx_irq(slot, PIN_A)
        .ok_or(PciDevicesError::NoSlot)?
        .gsi;
    // Level-triggered: KVM lowers the line at the guest's EOI and tells us
    // through `resample`, so we can raise it again while work is pending.
    let intx = EventFd::new(libc::EFD_NONBLOCK).map_err(PciDevicesError::EventFd)?;
    let resample = EventFd::new(libc::EFD_NONBLOCK).map_err(PciDevicesError::EventFd)?;
    ctx.vm
        .register_irqfd_with_resample(&intx, &resample, intx_gsi)
        .map_err(|source| PciDevicesError::Kvm {
            what: "registering an INTx irqfd",
            source,
        })?;

    let queues = device.queue_max_sizes().len() as u16;
    let msi = ctx.router.msi_group(queues + 1)?;
    let dev = VirtioPciDevice::new(device, ctx.mem.clone(), bar, Arc::new(msi), Arc::new(intx))?;
    for (addr, kick) in dev.notify_events() {
        ctx.vm
            .register_ioevent(kick, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|source| PciDevicesError::Kvm {
                what: "registering a queue ioeventfd",
                source,
            })?;
    }
    ctx.intx_lines.push((resample, dev.intx_resample()));
    let dev = Arc::new(Mutex::new(dev));
    ctx.pci
        .add_at(usize::from(slot), dev.clone())
        .map_err(|e| PciDevicesError::Bus(e.to_string()))?;
    ctx.mmio
        .insert(dev, bar, BAR_SIZE)
        .map_err(|e| PciDevicesError::Bus(e.to_string()))?;
    log::debug!("virtio device at 00:{slot:02x}.0, BAR0 {bar:#x}, INTx GSI {intx_gsi}");
    Ok(())
}
