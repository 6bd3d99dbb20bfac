//! virtio-net (virtio 1.2 §5.1) on a [`NetBackend`] (a TAP device in the
//! VMM, a socket in tests).
//!
//! One receive queue (0) and one transmit queue (1), no control queue. The
//! 12-byte `virtio_net_hdr_v1` travels unchanged between the guest and the
//! backend, so checksum offload and TSO work end to end; the offloads the
//! driver accepts for receive are handed to the backend (TUNSETOFFLOAD).
//!
//! Both queues are served by one I/O thread (`ivmm-net<N>`) whose event
//! loop ([`worker`]) waits on the backend fd and the two queue kick
//! eventfds (KVM ioeventfds in the VMM). When a frame arrives and the driver has no receive buffers,
//! the thread keeps the frame, stops polling the backend and waits for the
//! receive queue's kick, so it never spins.

pub mod rxtx;
pub mod tap;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::spawn::{self, WorkerKind, WorkerSpawner};
use super::worker::{self, DeviceWorker};
use super::*;
use rxtx::{process_tx, transmit_batch, Rx};

/// Feature bits (§5.1.3).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
pub const VIRTIO_NET_F_MAC: u32 = 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Link status bit of the config `status` field (§5.1.4).
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// struct virtio_net_hdr_v1 (§5.1.6): flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers.
pub const NET_HDR_LEN: usize = 12;
/// Largest frame with its header: 12 + 65550 (a 64 KiB GSO frame, its
/// Ethernet header and a VLAN tag), the receive buffer size Linux uses
/// without MRG_RXBUF.
pub const MAX_FRAME_LEN: usize = 65562;
/// Entries of the receive queue. Larger than the transmit queue: Linux
/// posts one buffer of at most a page per entry, so 1024 entries hold 4 MiB
/// of received data, and frames keep arriving while the guest is busy
/// with earlier ones instead of waiting in the TAP for it to refill.
pub const RX_QUEUE_SIZE: u16 = 1024;
/// Entries of the transmit queue.
pub const TX_QUEUE_SIZE: u16 = 256;
/// Queue indices (§5.1.2).
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
/// Size of struct virtio_net_config up to max_virtqueue_pairs (§5.1.4).
const CONFIG_LEN: usize = 10;

/// TUNSETOFFLOAD bits (linux/if_tun.h).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// Where frames come from and go to. Frames start with the 12-byte
/// virtio-net header. Knows nothing of virtio queues.
pub trait NetBackend: Send + Sync {
    /// Reads one frame without blocking; `WouldBlock` when none waits.
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn send(&self, frame: &[u8]) -> std::io::Result<usize>;
    /// Writes one frame given as slices of guest memory, in order. This
    /// default copies them into `scratch` and calls [`Self::send`]; the TAP
    /// writes them directly with `writev` (no copy through ivmm).
    fn send_slices(
        &self,
        slices: &[vm_memory::VolatileSlice<'_>],
        scratch: &mut Vec<u8>,
    ) -> std::io::Result<usize> {
        self.send(gather_slices(slices, scratch))
    }
    /// Reads one frame without blocking straight into slices of guest
    /// memory (together at least [`MAX_FRAME_LEN`] bytes, so nothing is
    /// cut off). `Unsupported` (the default) makes the caller read into its
    /// own buffer with [`Self::recv`] instead.
    fn recv_slices(&self, _slices: &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
    /// Which offloads (TUN_F_* bits) frames given to [`Self::recv`] may use.
    fn set_offload(&self, flags: u32) -> std::io::Result<()>;
    /// Polls readable when [`Self::recv`] has a frame.
    fn raw_fd(&self) -> RawFd;
}

/// Copies guest-memory slices, in order, into `scratch` (cleared first).
pub fn gather_slices<'a>(
    slices: &[vm_memory::VolatileSlice<'_>],
    scratch: &'a mut Vec<u8>,
) -> &'a [u8] {
    scratch.clear();
    for s in slices {
        let at = scratch.len();
        scratch.resize(at + s.len(), 0);
        s.copy_to(&mut scratch[at..]);
    }
    scratch
}

/// The receive offloads a driver accepted, as TUN_F_* bits.
pub fn offload_flags(features: u64) -> u32 {
    let has = |bit: u32| features & (1u64 << bit) != 0;
    let mut flags = 0;
    // Segmentation offloads need checksum offload (Linux refuses TSO
    // without CSUM, and so does the driver's feature validation).
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= TUN_F_TSO6;
        }
    }
    flags
}

/// How a virtio-net device is set up.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Thread-name suffix, e.g. `net0`.
    pub name: String,
    pub mac: [u8; 6],
}

struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

/// A virtio network device.
pub struct Net {
    backend: Arc<dyn NetBackend>,
    opts: NetOptions,
    config: [u8; CONFIG_LEN],
    worker: Option<Worker>,
    spawner: Arc<dyn WorkerSpawner>,
}

impl Net {
    pub fn new(backend: Arc<dyn NetBackend>, opts: NetOptions) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[0..6].copy_from_slice(&opts.mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        Self {
            backend,
            opts,
            config,
            worker: None,
            spawner: spawn::plain(),
        }
    }

    /// Starts the I/O thread through `spawner` (which gives it its seccomp
    /// filter) instead of directly.
    pub fn with_spawner(mut self, spawner: Arc<dyn WorkerSpawner>) -> Self {
        self.spawner = spawner;
        self
    }

    fn stop_worker(&mut self) {
        if let Some(mut w) = self.worker.take() {
            let _ = w.stop.write(1);
            if let Some(h) = w.handle.take() {
                if h.join().is_err() {
                    log::error!("{}: the I/O thread panicked", self.opts.name);
                }
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        // Indexed by queue: RX_QUEUE, TX_QUEUE.
        vec![RX_QUEUE_SIZE, TX_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_F_RING_INDIRECT_DESC,
            VIRTIO_F_RING_EVENT_IDX,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_STATUS,
        ]
        .iter()
        .fold(0u64, |f, bit| f | 1u64 << bit)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.stop_worker();
        let Activation {
            mem,
            queues,
            interrupt,
            features,
        } = activation;
        let mut rx = None;
        let mut tx = None;
        for aq in queues {
            match aq.index {
                RX_QUEUE => rx = Some(aq),
                TX_QUEUE => tx = Some(aq),
                _ => {}
            }
        }
        let rx = rx.ok_or(ActivateError::MissingQueue(RX_QUEUE))?;
        let tx = tx.ok_or(ActivateError::MissingQueue(TX_QUEUE))?;
        self.backend
            .set_offload(offload_flags(features))
            .map_err(ActivateError::Backend)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::Thread)?;
        let ctx = NetWorker {
            name: self.opts.name.clone(),
            rx_queue: rx.queue,
            rx_kick: rx.kick,
            tx_queue: tx.queue,
            tx_kick: tx.kick,
            tx_repoll: None,
            tx_quiet_looks: 0,
            stop: stop.try_clone().map_err(ActivateError::Thread)?,
            mem,
            backend: self.backend.clone(),
            interrupt,
            rx: Rx::new(features & (1u64 << VIRTIO_NET_F_MRG_RXBUF) != 0),
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN),
            backend_polled: false,
            backend_failed: false,
            stopped: false,
        };
        let handle = self
            .spawner
            .spawn(
                format!("ivmm-{}", self.opts.name),
                WorkerKind::Net,
                Box::new(move || {
                    let name = ctx.name.clone();
                    worker::run(&name, ctx);
                }),
            )
            .map_err(ActivateError::Thread)?;
        self.worker = Some(Worker {
            stop,
            handle: Some(handle),
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// How long the transmit side waits before looking at a busy ring again.
/// Short: the guest's TCP stack stops queueing until completions come back
/// (TCP small queues), so a longer wait stalls it (in the lab, 200 µs took
/// twice the exits per MByte of 50 µs).
const TX_REPOLL: std::time::Duration = std::time::Duration::from_micros(50);

/// How many looks in a row must find the transmit ring empty before kicks
/// are turned back on. A guest sending at the pace of its peer's ACKs
/// leaves gaps longer than one [`TX_REPOLL`] between its bursts; each kick
/// costs it a VM exit, a look costs only the I/O thread a wake-up.
const TX_QUIET_LOOKS: u32 = 4;

/// What made the I/O thread look at the transmit ring.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Look {
    /// The driver's kick (or the worker's start).
    Kick,
    /// The re-poll timer, with kicks off.
    Repoll,
}

/// The I/O thread of one device.
struct NetWorker {
    name: String,
    rx_queue: Queue,
    rx_kick: EventFd,
    tx_queue: Queue,
    tx_kick: EventFd,
    /// Armed while the driver is transmitting: see [`NetWorker::serve_tx`].
    /// Made in `init`, on the I/O thread (its seccomp filter allows that,
    /// the activating vCPU thread's does not); without it, every frame is
    /// kicked.
    tx_repoll: Option<TimerFd>,
    /// Re-polls in a row that found nothing new.
    tx_quiet_looks: u32,
    stop: EventFd,
    mem: GuestMemoryMmap,
    backend: Arc<dyn NetBackend>,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Rx,
    tx_buf: Vec<u8>,
    /// The backend fd is in the event loop's set.
    backend_polled: bool,
    /// The backend failed for good; it is not polled again.
    backend_failed: bool,
    stopped: bool,
}

impl MutEventSubscriber for NetWorker {
    fn init(&mut self, ops: &mut EventOps) {
        self.tx_repoll = TimerFd::new()
            .map_err(|e| log::warn!("{}: transmit timer: {e}; a kick per frame", self.name))
            .ok();
        let mut fds = vec![
            self.rx_kick.as_raw_fd(),
            self.tx_kick.as_raw_fd(),
            self.stop.as_raw_fd(),
        ];
        fds.extend(self.tx_repoll.as_ref().map(|t| t.as_raw_fd()));
        if !worker::watch(ops, &self.name, &fds) {
            self.stopped = true;
            return;
        }
        // Whatever the driver queued before its first kick; this also
        // starts polling the backend.
        self.serve_tx(ops, Look::Kick);
        self.serve_rx(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.stopped {
            return;
        }
        let fd = events.fd();
        if fd == self.stop.as_raw_fd() {
            self.stopped = true;
        } else if fd == self.tx_kick.as_raw_fd() {
            let _ = self.tx_kick.read();
            self.serve_tx(ops, Look::Kick);
        } else if let Some(timer) = self.tx_repoll.as_mut().filter(|t| t.as_raw_fd() == fd) {
            let _ = timer.wait();
            self.serve_tx(ops, Look::Repoll);
        } else {
            // The receive kick (new buffers) or the backend (new frames).
            if fd == self.rx_kick.as_raw_fd() {
                let _ = self.rx_kick.read();
            }
            self.serve_rx(ops);
        }
    }
}

impl DeviceWorker for NetWorker {
    fn stopped(&self) -> bool {
        self.stopped
    }
}

impl NetWorker {
    /// Starts or stops polling the backend fd.
    fn poll_backend(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.backend_polled {
            return;
        }
        let events = Events::new_raw(self.backend.raw_fd(), EventSet::IN);
        let changed = if on {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match changed {
            Ok(()) => self.backend_polled = on,
            Err(e) => log::error!("{}: event loop: {e}", self.name),
        }
    }

    /// Sends what the driver queued. While it keeps queueing frames, its
    /// kicks stay off and the ring is looked at again [`TX_REPOLL`] later,
    /// so a stream of frames costs a VM exit per batch rather than per frame
    /// (and completions go back in batches, with fewer interrupts); once
    /// [`TX_QUIET_LOOKS`] looks in a row find nothing new, kicks are turned
    /// back on. A lone frame (a ping) is still sent at its kick.
    ///
    /// What the frames sent have already brought back (a ping's reply, the
    /// ACKs of an upload: the peer answers inside the write) is received
    /// before the driver hears about the sent frames, so the guest wakes
    /// for the answer it waits on, not first for a completion.
    fn serve_tx(&mut self, ops: &mut EventOps, look: Look) {
        let served = transmit_batch(
            &mut self.tx_queue,
            &self.mem,
            self.backend.as_ref(),
            &mut self.tx_buf,
        );
        if matches!(served, Ok((sent, _)) if sent > 0) && self.backend_polled {
            self.serve_rx(ops);
        }
        match served {
            Ok((sent, notify)) if sent > 0 && self.arm_tx_repoll() => {
                self.tx_quiet_looks = 0;
                self.finish_tx(Ok(notify));
            }
            Ok((0, _)) if look == Look::Repoll && self.another_quiet_look() => {}
            // Nothing new (or no timer): ask for kicks again.
            Ok((_, notify)) => self.rearm_tx_kicks(notify),
            Err(e) => self.finish_tx(Err(e)),
        }
    }

    /// Counts an empty re-poll; true if the ring is to be looked at once
    /// more (timer armed) before kicks go back on.
    fn another_quiet_look(&mut self) -> bool {
        self.tx_quiet_looks += 1;
        self.tx_quiet_looks < TX_QUIET_LOOKS && self.arm_tx_repoll()
    }

    /// Arms the re-poll timer; false if there is none or it failed.
    fn arm_tx_repoll(&mut self) -> bool {
        let Some(timer) = self.tx_repoll.as_mut() else {
            return false;
        };
        timer
            .reset(TX_REPOLL, None)
            .map_err(|e| log::error!("{}: transmit timer: {e}", self.name))
            .is_ok()
    }

    /// Turns the driver's transmit kicks back on (serving what raced in).
    fn rearm_tx_kicks(&mut self, notify: bool) {
        let result = process_tx(
            &mut self.tx_queue,
            &self.mem,
            self.backend.as_ref(),
            &mut self.tx_buf,
        )
        .map(|more| notify || more);
        self.finish_tx(result);
    }

    fn finish_tx(&mut self, result: Result<bool, virtio_queue::Error>) {
        match result {
            Ok(true) => self.interrupt.notify_queue(TX_QUEUE),
            Ok(false) => {}
            Err(e) => log::error!("{}: transmit queue: {e}", self.name),
        }
    }

    fn serve_rx(&mut self, ops: &mut EventOps) {
        if self.backend_failed {
            return;
        }
        let result = match self
            .rx
            .process(&mut self.rx_queue, &self.mem, self.backend.as_ref())
        {
            Ok(r) => r,
            Err(e) => {
                // A broken ring: wait for the driver's next kick (or reset)
                // rather than spin on a readable backend.
                log::error!("{}: receive queue: {e}", self.name);
                self.poll_backend(ops, false);
                return;
            }
        };
        if result.notify {
            self.interrupt.notify_queue(RX_QUEUE);
        }
        self.backend_failed |= result.backend_failed;
        // A waiting frame: sleep until the driver adds buffers (its kick).
        let poll = !result.starved && !self.backend_failed;
        self.poll_backend(ops, poll);
    }
}

#[cfg(test)]
mod tests;
