//! The virtio 1.x modern PCI transport (virtio 1.2 §4.1).
//!
//! Configuration space: vendor 0x1af4, device 0x1040 + type, one 64-bit
//! memory BAR (BAR0/1), a capability list with MSI-X and the four virtio
//! vendor capabilities. BAR0 layout (all offsets are this module's choice):
//!
//! ```text
//! 0x0000  common configuration (§4.1.4.3)
//! 0x1000  ISR status (§4.1.4.5)
//! 0x2000  device-specific configuration (§4.1.4.6)
//! 0x3000  notifications: queue N at 0x3000 + 4 * N (§4.1.4.4)
//! 0x4000  MSI-X table, 0x6000 MSI-X PBA
//! ```
//!
//! The BAR address is chosen by the VMM and shown as the BAR's reset value;
//! a guest that keeps it (Linux does, when it lies inside the host bridge
//! window) never needs the bus to move. A guest that moves it is logged.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::pci::msix::{MsiVectors, Msix, PCI_CAP_ID_MSIX};
use crate::pci::PciDevice;
use crate::{BusDevice, Interrupt};

/// PCI vendor ID of virtio devices (§4.1.2).
const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device ID (§4.1.2.1).
const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;
/// Revision 1 marks a modern-only (non-transitional) device (§4.1.2.1).
const REVISION: u32 = 1;
/// "No vector" for config_msix_vector / queue_msix_vector (§4.1.4.3).
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// Size and region offsets of BAR0.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_SIZE: u64 = 0x38;
const ISR_OFFSET: u64 = 0x1000;
const ISR_SIZE: u64 = 4;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_SIZE: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_SIZE: u64 = 0x1000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_TABLE_SIZE: u64 = 0x2000;
const MSIX_PBA_OFFSET: u64 = 0x6000;
const MSIX_PBA_SIZE: u64 = 0x1000;
/// Most queues the notify region and the MSI-X table can serve.
pub const MAX_QUEUES: usize = 256;

/// Capability list layout in configuration space.
const CAP_START: usize = 0x40;
const MSIX_CAP: usize = 0x40;
const COMMON_CAP: usize = 0x50;
const NOTIFY_CAP: usize = 0x60;
const ISR_CAP: usize = 0x74;
const DEVICE_CAP: usize = 0x84;
const CAP_END: usize = 0x94;
/// Vendor-specific capability ID and virtio cfg_type values (§4.1.4).
const PCI_CAP_ID_VNDR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

/// Status register bit 4: a capability list is present.
const PCI_STATUS_CAP_LIST: u32 = 1 << 4;
/// BAR type bits: memory, 64-bit, not prefetchable.
const BAR_MEM64: u32 = 0b100;
/// Interrupt pin INTA#.
const INTX_PIN_A: u32 = 1;

/// ISR bits (§4.1.4.5).
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// Errors setting up the transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("cannot create a queue eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("a virtio device has {0} queues; at most {MAX_QUEUES} are supported")]
    TooManyQueues(usize),
    #[error("virtio BAR address {0:#x} is not aligned to its size")]
    BadBar(u64),
}

/// Interrupt routing shared with the device's worker threads: they never
/// lock the transport itself, so a reset (which joins them) cannot deadlock.
struct InterruptState {
    msix: Mutex<Msix>,
    isr: AtomicU8,
    intx: Arc<dyn Interrupt>,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
}

impl InterruptState {
    fn msix(&self) -> MutexGuard<'_, Msix> {
        self.msix.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn raise(&self, vector: u16, isr_bit: u8) {
        if self.msix().signal(vector) {
            return;
        }
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        if let Err(e) = self.intx.trigger() {
            log::warn!("virtio INTx: {e}");
        }
    }
}

impl VirtioInterrupt for InterruptState {
    fn notify_queue(&self, queue: u16) {
        let vector = self
            .queue_vectors
            .get(usize::from(queue))
            .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::SeqCst));
        self.raise(vector, ISR_QUEUE);
    }

    fn notify_config(&self) {
        self.raise(self.config_vector.load(Ordering::SeqCst), ISR_CONFIG);
    }
}

/// Keeps the INTx line up while the ISR has bits set, as a level-triggered
/// PCI interrupt must be. The VMM registers the line as a KVM resample
/// irqfd: a trigger raises it, KVM lowers it at the guest's EOI and signals
/// the resample eventfd, and the VMM then calls [`IntxResample::line_lowered`].
/// Without this, a completion that arrives after the guest's handler read
/// the ISR but before its EOI would raise a line the IOAPIC still sees in
/// service, and the interrupt would be lost for good.
#[derive(Clone)]
pub struct IntxResample(Arc<InterruptState>);

impl IntxResample {
    /// The guest acknowledged the line: raise it again if work is pending.
    pub fn line_lowered(&self) {
        if self.0.isr.load(Ordering::SeqCst) != 0 {
            if let Err(e) = self.0.intx.trigger() {
                log::warn!("virtio INTx: {e}");
            }
        }
    }
}

/// A queue's configuration as the driver writes it.
#[derive(Debug, Clone, Copy)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// A virtio device behind the modern PCI transport. Register it both on the
/// PCI bus (configuration space) and on the MMIO bus at [`Self::bar_address`].
pub struct VirtioPciDevice {
    device: Box<dyn VirtioDevice>,
    device_type: u16,
    mem: GuestMemoryMmap,
    caps: [u8; CAP_END],
    command: u16,
    bar: u64,
    bar_registered: u64,
    interrupt_line: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueConfig>,
    kicks: Vec<EventFd>,
    irq: Arc<InterruptState>,
    active: bool,
    warned_bar_move: bool,
}

impl VirtioPciDevice {
    /// Wraps `device`, its BAR at `bar` (aligned to [`BAR_SIZE`]).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        bar: u64,
        msi: Arc<dyn MsiVectors>,
        intx: Arc<dyn Interrupt>,
    ) -> Result<Self, VirtioPciError> {
        if !bar.is_multiple_of(BAR_SIZE) {
            return Err(VirtioPciError::BadBar(bar));
        }
        let sizes = device.queue_max_sizes();
        if sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::TooManyQueues(sizes.len()));
        }
        let kicks = sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioPciError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        // One vector per queue plus one for configuration changes.
        let msix = Msix::new(sizes.len() as u16 + 1, msi);
        let irq = Arc::new(InterruptState {
            msix: Mutex::new(msix),
            isr: AtomicU8::new(0),
            intx,
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: sizes
                .iter()
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
        });
        let device_type = device.device_type();
        let mut dev = Self {
            device,
            device_type,
            mem,
            caps: [0; CAP_END],
            command: 0,
            bar,
            bar_registered: bar,
            interrupt_line: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queues: sizes.iter().map(|&s| QueueConfig::new(s)).collect(),
            kicks,
            irq,
            active: false,
            warned_bar_move: false,
        };
        dev.build_caps();
        Ok(dev)
    }

    /// Guest-physical address of BAR0 (as the VMM placed it).
    pub fn bar_address(&self) -> u64 {
        self.bar_registered
    }

    /// For each queue, the guest-physical notify address and the eventfd a
    /// KVM ioeventfd there should signal.
    /// What the VMM calls when KVM lowers this device's INTx line.
    pub fn intx_resample(&self) -> IntxResample {
        IntxResample(self.irq.clone())
    }

    pub fn notify_events(&self) -> Vec<(u64, &EventFd)> {
        self.kicks
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let off = NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_MULTIPLIER);
                (self.bar_registered + off, e)
            })
            .collect()
    }

    /// Number of MSI-X vectors (the VMM allocates a GSI for each).
    pub fn msix_vectors(&self) -> u16 {
        self.irq.msix().vector_count()
    }

    /// Device status as the driver last set it (tests, logs).
    pub fn status(&self) -> u8 {
        self.status
    }

    fn build_caps(&mut self) {
        let c = &mut self.caps;
        // MSI-X: ID, next, message control (dynamic), table and PBA in BAR0.
        c[MSIX_CAP] = PCI_CAP_ID_MSIX;
        c[MSIX_CAP + 1] = COMMON_CAP as u8;
        c[MSIX_CAP + 4..MSIX_CAP + 8].copy_from_slice(&(MSIX_TABLE_OFFSET as u32).to_le_bytes());
        c[MSIX_CAP + 8..MSIX_CAP + 12].copy_from_slice(&(MSIX_PBA_OFFSET as u32).to_le_bytes());
        let vendor = [
            (
                COMMON_CAP,
                NOTIFY_CAP,
                CFG_COMMON,
                COMMON_OFFSET,
                COMMON_SIZE,
            ),
            (NOTIFY_CAP, ISR_CAP, CFG_NOTIFY, NOTIFY_OFFSET, NOTIFY_SIZE),
            (ISR_CAP, DEVICE_CAP, CFG_ISR, ISR_OFFSET, ISR_SIZE),
            (DEVICE_CAP, 0, CFG_DEVICE, DEVICE_OFFSET, DEVICE_SIZE),
        ];
        for (at, next, cfg_type, offset, len) in vendor {
            // struct virtio_pci_cap (§4.1.4): vndr, next, len, cfg_type,
            // bar, id, padding[2], offset, length.
            let cap_len = if cfg_type == CFG_NOTIFY { 20 } else { 16 };
            c[at] = PCI_CAP_ID_VNDR;
            c[at + 1] = next as u8;
            c[at + 2] = cap_len;
            c[at + 3] = cfg_type;
            c[at + 4] = 0; // BAR0
            c[at + 8..at + 12].copy_from_slice(&(offset as u32).to_le_bytes());
            c[at + 12..at + 16].copy_from_slice(&(len as u32).to_le_bytes());
            if cfg_type == CFG_NOTIFY {
                c[at + 16..at + 20].copy_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
            }
        }
    }

    fn config_register(&self, reg: usize) -> u32 {
        let bar_mask = !(BAR_SIZE - 1);
        match reg {
            0 => {
                u32::from(VIRTIO_PCI_DEVICE_BASE + self.device_type) << 16
                    | u32::from(VIRTIO_PCI_VENDOR)
            }
            1 => PCI_STATUS_CAP_LIST << 16 | u32::from(self.command),
            2 => class_code(self.device_type) << 8 | REVISION,
            3 => 0,
            4 => (self.bar & bar_mask) as u32 | BAR_MEM64,
            5 => (self.bar >> 32) as u32,
            // Subsystem vendor and ID (§4.1.2.1: may reflect the device ID).
            11 => u32::from(self.device_type + 0x40) << 16 | u32::from(VIRTIO_PCI_VENDOR),
            13 => CAP_START as u32,
            15 => INTX_PIN_A << 8 | u32::from(self.interrupt_line),
            r if (CAP_START / 4..CAP_END / 4).contains(&r) => {
                let at = r * 4;
                let mut v = [0u8; 4];
                v.copy_from_slice(&self.caps[at..at + 4]);
                let mut value = u32::from_le_bytes(v);
                if at == MSIX_CAP {
                    value |= u32::from(self.irq.msix().message_control()) << 16;
                }
                value
            }
            _ => 0,
        }
    }

    fn bar_moved(&mut self) {
        let bar = self.bar & !(BAR_SIZE - 1);
        // Sizing writes all ones; only a real address that differs matters,
        // and only while memory decoding is on.
        if bar != self.bar_registered && self.command & 0x2 != 0 && !self.warned_bar_move {
            self.warned_bar_move = true;
            log::warn!(
                "guest moved virtio BAR0 from {:#x} to {bar:#x}; this transport keeps serving the old address",
                self.bar_registered
            );
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        self.irq.isr.store(0, Ordering::SeqCst);
        self.irq
            .config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        for v in &self.irq.queue_vectors {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        }
    }

    fn device_features(&self) -> u64 {
        self.device.features() | 1 << VIRTIO_F_VERSION_1
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features() == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let newly = value & !self.status;
        if newly & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            log::warn!(
                "virtio: driver features {:#x} refused (offered {:#x}, VERSION_1 required)",
                self.driver_features,
                self.device_features()
            );
            value &= !STATUS_FEATURES_OK;
        }
        if newly & STATUS_DRIVER_OK != 0 && value & STATUS_FEATURES_OK != 0 && !self.active {
            self.status = value;
            if let Err(e) = self.activate() {
                log::error!("virtio device type {}: {e}", self.device_type);
                self.status |= STATUS_NEEDS_RESET;
                self.irq.notify_config();
            }
            return;
        }
        self.status = value;
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.driver_features & (1 << VIRTIO_F_RING_EVENT_IDX) != 0;
        let mut queues = Vec::new();
        for (i, cfg) in self.queues.iter().enumerate() {
            if !cfg.ready {
                continue;
            }
            let queue = build_queue(cfg, event_idx, &self.mem).ok_or(ActivateError::BadQueue(i))?;
            let kick = self.kicks[i].try_clone().map_err(ActivateError::Thread)?;
            queues.push(ActiveQueue {
                index: i as u16,
                queue,
                kick,
            });
        }
        if queues.is_empty() {
            return Err(ActivateError::NoQueues);
        }
        self.device.activate(Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.irq.clone(),
            features: self.driver_features,
        })?;
        self.active = true;
        Ok(())
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn read_common(&mut self, offset: u64) -> u64 {
        let q = self.queues.get(usize::from(self.queue_select)).copied();
        let qv = self
            .irq
            .queue_vectors
            .get(usize::from(self.queue_select))
            .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::SeqCst));
        match offset {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => self.device_features() & 0xffff_ffff,
                1 => self.device_features() >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.irq.config_vector.load(Ordering::SeqCst)),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(self.status),
            0x15 => 0, // config_generation: the config never changes under the driver
            0x16 => u64::from(self.queue_select),
            0x18 => q.map_or(0, |q| u64::from(q.size)),
            0x1a => u64::from(qv),
            0x1c => q.map_or(0, |q| u64::from(q.ready)),
            0x1e => u64::from(self.queue_select), // queue_notify_off
            0x20 => q.map_or(0, |q| q.desc),
            0x24 => q.map_or(0, |q| q.desc >> 32),
            0x28 => q.map_or(0, |q| q.driver),
            0x2c => q.map_or(0, |q| q.driver >> 32),
            0x30 => q.map_or(0, |q| q.device),
            0x34 => q.map_or(0, |q| q.device >> 32),
            _ => 0,
        }
    }

    fn write_common(&mut self, offset: u64, value: u64, len: usize) {
        let active = self.active;
        let set_lo = |field: &mut u64, v: u64| *field = (*field & !0xffff_ffff) | (v & 0xffff_ffff);
        let set_hi = |field: &mut u64, v: u64| *field = (*field & 0xffff_ffff) | (v << 32);
        match offset {
            0x00 => self.device_feature_select = value as u32,
            0x08 => self.driver_feature_select = value as u32,
            0x0c if self.status & STATUS_FEATURES_OK == 0 => match self.driver_feature_select {
                0 => set_lo(&mut self.driver_features, value),
                1 => set_hi(&mut self.driver_features, value & 0xffff_ffff),
                _ => {}
            },
            0x10 => {
                let v = self.checked_vector(value as u16);
                self.irq.config_vector.store(v, Ordering::SeqCst);
            }
            0x14 => self.write_status(value as u8),
            0x16 => self.queue_select = value as u16,
            // Queue registers are frozen once the device runs (§4.1.4.3.2).
            _ if active => {}
            0x18 => {
                if let Some(q) = self.selected_queue() {
                    q.size = value as u16;
                }
            }
            0x1a => {
                let v = self.checked_vector(value as u16);
                if let Some(slot) = self.irq.queue_vectors.get(usize::from(self.queue_select)) {
                    slot.store(v, Ordering::SeqCst);
                }
            }
            0x1c => {
                if let Some(q) = self.selected_queue() {
                    // Writing 0 is not allowed (§4.1.4.3.2); only enable sticks.
                    q.ready |= value & 1 == 1;
                }
            }
            0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34 => {
                let Some(q) = self.selected_queue() else {
                    return;
                };
                let field = match offset & !7 {
                    0x20 => &mut q.desc,
                    0x28 => &mut q.driver,
                    _ => &mut q.device,
                };
                if len == 8 {
                    *field = value;
                } else if offset & 4 == 0 {
                    set_lo(field, value);
                } else {
                    set_hi(field, value & 0xffff_ffff);
                }
            }
            _ => {}
        }
    }

    /// A vector outside the MSI-X table reads back as NO_VECTOR, which is
    /// how the driver learns the assignment failed (§4.1.5.1.2).
    fn checked_vector(&self, v: u16) -> u16 {
        if v < self.irq.msix().vector_count() {
            v
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }
}

fn build_queue(
    cfg: &QueueConfig,
    event_idx: bool,
    mem: &GuestMemoryMmap,
) -> Option<virtio_queue::Queue> {
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;
    // virtio-queue never pops from an available ring at address 0 (its
    // "not set up" value); refuse it here so the driver sees NEEDS_RESET.
    if cfg.driver == 0 {
        return None;
    }
    let mut q = virtio_queue::Queue::new(cfg.max_size).ok()?;
    q.try_set_size(cfg.size).ok()?;
    q.try_set_desc_table_address(GuestAddress(cfg.desc)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(cfg.driver))
        .ok()?;
    q.try_set_used_ring_address(GuestAddress(cfg.device)).ok()?;
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

/// PCI class code for a virtio device type.
fn class_code(device_type: u16) -> u32 {
    match device_type {
        TYPE_BLOCK => 0x01_00_00, // mass storage, SCSI (as QEMU does)
        TYPE_NET => 0x02_00_00,   // network controller, Ethernet
        _ => 0xff_00_00,
    }
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl PciDevice for VirtioPciDevice {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        self.config_register(reg)
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let Ok(offset) = usize::try_from(offset) else {
            return;
        };
        if offset >= 4 || data.is_empty() || offset + data.len() > 4 {
            return;
        }
        let mut bytes = self.config_register(reg).to_le_bytes();
        bytes[offset..offset + data.len()].copy_from_slice(data);
        let value = u32::from_le_bytes(bytes);
        match reg {
            1 => self.command = value as u16,
            4 => {
                self.bar = (self.bar & !0xffff_ffff) | u64::from(value & !(BAR_SIZE as u32 - 1));
                self.bar_moved();
            }
            5 => {
                self.bar = (self.bar & 0xffff_ffff) | (u64::from(value) << 32);
                self.bar_moved();
            }
            15 => self.interrupt_line = value as u8,
            r if r * 4 == MSIX_CAP => {
                self.irq.msix().set_message_control((value >> 16) as u16);
            }
            _ => {}
        }
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => {
                if matches!(data.len(), 1 | 2 | 4 | 8) {
                    let v = self.read_common(o - COMMON_OFFSET);
                    let n = data.len();
                    data.copy_from_slice(&v.to_le_bytes()[..n]);
                }
            }
            o if (ISR_OFFSET..ISR_OFFSET + ISR_SIZE).contains(&o) => {
                // Reading the ISR clears it and deasserts INTx (§4.1.4.5).
                if let Some(first) = data.first_mut() {
                    *first = self.irq.isr.swap(0, Ordering::SeqCst);
                }
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.read_config(o - DEVICE_OFFSET, data);
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + MSIX_TABLE_SIZE).contains(&o) => {
                self.irq.msix().read_table(o - MSIX_TABLE_OFFSET, data);
            }
            o if (MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + MSIX_PBA_SIZE).contains(&o) => {
                self.irq.msix().read_pba(o - MSIX_PBA_OFFSET, data);
            }
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => {
                if matches!(data.len(), 1 | 2 | 4 | 8) {
                    self.write_common(o - COMMON_OFFSET, le_value(data), data.len());
                }
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.write_config(o - DEVICE_OFFSET, data);
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + NOTIFY_SIZE).contains(&o) => {
                // Reached only without a KVM ioeventfd at this address.
                let queue = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER);
                if let Some(kick) = usize::try_from(queue).ok().and_then(|q| self.kicks.get(q)) {
                    let _ = kick.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + MSIX_TABLE_SIZE).contains(&o) => {
                self.irq.msix().write_table(o - MSIX_TABLE_OFFSET, data);
            }
            _ => {}
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}

#[cfg(test)]
mod tests;
