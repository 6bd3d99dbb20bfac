//! virtio 1.x devices (virtio spec 1.2) and their PCI transport.
//!
//! ```text
//!   VirtioPciDevice  (pci.rs: config space, BAR with common cfg / ISR /
//!        |            device cfg / notify / MSI-X, feature negotiation)
//!   dyn VirtioDevice (this module: transport-free)
//!        |
//!   Block            (blk/: request parsing, I/O worker threads)
//!        |
//!   dyn DiskBackend  (crate::block)
//!
//!   Net              (net/: receive/transmit, one I/O thread)
//!        |
//!   dyn NetBackend   (net/tap.rs: a TAP device)
//! ```
//!
//! The transport owns the queue configuration while the driver sets it up;
//! on DRIVER_OK it builds `virtio_queue::Queue`s and hands them, the guest
//! memory, one eventfd per queue (the VMM binds them to KVM ioeventfds) and a
//! [`VirtioInterrupt`] to [`VirtioDevice::activate`].

pub mod blk;
pub mod net;
pub mod pci;
pub mod spawn;
pub mod worker;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use pci::VirtioPciDevice;

/// Fails when the ring cannot be served: the driver's available index is
/// more than a queue ahead of the device's, or the available ring is at
/// guest address 0, which virtio-queue takes for "not set up". In both
/// cases `pop_descriptor_chain` yields nothing while `enable_notification`
/// keeps reporting new entries, so a serving loop would spin forever.
pub fn check_avail_index(queue: &Queue, mem: &GuestMemoryMmap) -> Result<(), virtio_queue::Error> {
    if queue.avail_ring() == 0 {
        return Err(virtio_queue::Error::QueueNotReady);
    }
    let idx = queue.avail_idx(mem, Ordering::Acquire)?;
    if idx.0.wrapping_sub(queue.next_avail()) > queue.size() {
        return Err(virtio_queue::Error::InvalidAvailRingIndex);
    }
    Ok(())
}

/// Feature bits of the transport (virtio 1.2 §6).
pub const VIRTIO_F_RING_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_F_RING_EVENT_IDX: u32 = 29;
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Device status bits (virtio 1.2 §2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// Device IDs (virtio 1.2 §5).
pub const TYPE_NET: u16 = 1;
pub const TYPE_BLOCK: u16 = 2;

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not valid in guest memory")]
    BadQueue(usize),
    #[error("no queue is enabled")]
    NoQueues,
    #[error("cannot start a worker thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("queue {0} is not enabled")]
    MissingQueue(u16),
    #[error("device backend: {0}")]
    Backend(#[source] std::io::Error),
}

/// Interrupts a device raises; the transport maps them to MSI-X vectors or
/// INTx plus the ISR register.
pub trait VirtioInterrupt: Send + Sync {
    /// Used buffers were added to queue `queue`.
    fn notify_queue(&self, queue: u16);
    /// The device configuration changed (or the device needs a reset).
    fn notify_config(&self);
}

/// One queue as handed to the device on activation.
pub struct ActiveQueue {
    /// Index of the queue within the device.
    pub index: u16,
    pub queue: virtio_queue::Queue,
    /// Signalled when the driver kicks this queue.
    pub kick: EventFd,
}

/// What [`VirtioDevice::activate`] gets.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    /// Enabled queues only, with the negotiated event-index setting applied.
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Features the driver accepted.
    pub features: u64,
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// virtio device ID (§5).
    fn device_type(&self) -> u16;
    /// Maximum size of each queue (a power of two); its length is the
    /// number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits the device offers (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// Reads device-specific configuration at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device-specific configuration (ignored by devices without
    /// writable fields).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// Starts serving the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops serving the queues and forgets them (device reset, §2.4).
    /// Returns once no worker touches guest memory any more.
    fn reset(&mut self);
}

/// Reads `data.len()` bytes at `offset` of `bytes`; what lies outside reads
/// as zero. Shared by devices that keep their config space as plain bytes.
pub fn read_config_bytes(bytes: &[u8], offset: u64, data: &mut [u8]) {
    for (i, out) in data.iter_mut().enumerate() {
        *out = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|idx| bytes.get(idx).copied())
            .unwrap_or(0);
    }
}
