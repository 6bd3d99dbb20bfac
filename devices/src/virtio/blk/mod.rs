//! virtio-blk (virtio 1.2 §5.2) on a [`DiskBackend`].
//!
//! Each enabled queue gets its own I/O thread (`ivmm-blk<N>-q<Q>`) that
//! sleeps on the queue's kick eventfd (a KVM ioeventfd in the VMM, so a
//! guest kick never stops its vCPU), runs the requests synchronously on
//! the backend, and signals completions through [`VirtioInterrupt`].

pub mod request;

use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::spawn::{self, WorkerKind, WorkerSpawner};
use super::*;
use crate::block::DiskBackend;
use request::*;

/// Feature bits (§5.2.3).
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
pub const VIRTIO_BLK_F_RO: u32 = 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
pub const VIRTIO_BLK_F_TOPOLOGY: u32 = 10;
pub const VIRTIO_BLK_F_MQ: u32 = 12;
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest discard / write-zeroes segment, in sectors (2 GiB), and segments
/// per request.
const MAX_DISCARD_SECTORS: u32 = 1 << 22;
const MAX_DISCARD_SEG: u32 = 32;
/// Discard granularity in sectors (4 KiB: a file system block).
const DISCARD_ALIGNMENT: u32 = 8;
/// Size of struct virtio_blk_config up to write_zeroes_may_unmap (§5.2.4).
const CONFIG_LEN: usize = 60;

/// How a virtio-blk device is set up.
#[derive(Debug, Clone)]
pub struct BlockOptions {
    /// Thread-name prefix, e.g. `blk0`.
    pub name: String,
    /// GET_ID answer; at most 20 bytes are used.
    pub serial: String,
    /// Offer DISCARD (`discard=unmap`).
    pub discard: bool,
    /// Number of request queues (MQ when > 1).
    pub queues: u16,
}

struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

/// A virtio block device.
pub struct Block {
    disk: Arc<dyn DiskBackend>,
    opts: BlockOptions,
    limits: DiskLimits,
    serial: [u8; VIRTIO_BLK_ID_BYTES],
    config: [u8; CONFIG_LEN],
    workers: Vec<Worker>,
    spawner: Arc<dyn WorkerSpawner>,
}

impl Block {
    pub fn new(disk: Arc<dyn DiskBackend>, opts: BlockOptions) -> Self {
        let queues = opts.queues.clamp(1, pci::MAX_QUEUES as u16);
        let opts = BlockOptions { queues, ..opts };
        let limits = DiskLimits {
            capacity_sectors: disk.size() / SECTOR_SIZE,
            read_only: disk.read_only(),
            discard: opts.discard,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: MAX_DISCARD_SEG,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_seg: MAX_DISCARD_SEG,
        };
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES];
        let id = opts.serial.as_bytes();
        let n = id.len().min(VIRTIO_BLK_ID_BYTES);
        serial[..n].copy_from_slice(&id[..n]);
        let config = config_space(&limits, queues);
        Self {
            disk,
            opts,
            limits,
            serial,
            config,
            workers: Vec::new(),
            spawner: spawn::plain(),
        }
    }

    /// Starts the queue threads through `spawner` (which gives them their
    /// seccomp filter) instead of directly.
    pub fn with_spawner(mut self, spawner: Arc<dyn WorkerSpawner>) -> Self {
        self.spawner = spawner;
        self
    }

    fn stop_workers(&mut self) {
        for w in &self.workers {
            let _ = w.stop.write(1);
        }
        for mut w in self.workers.drain(..) {
            if let Some(h) = w.handle.take() {
                if h.join().is_err() {
                    log::error!("{}: an I/O thread panicked", self.opts.name);
                }
            }
        }
    }
}

/// struct virtio_blk_config (§5.2.4), little endian.
fn config_space(l: &DiskLimits, queues: u16) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &l.capacity_sectors.to_le_bytes());
    put(12, &u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
    put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
                                                  // topology: physical_block_exp 0, alignment_offset 0, min_io_size 1, opt_io_size 0.
    put(26, &1u16.to_le_bytes());
    put(34, &queues.to_le_bytes());
    put(36, &l.max_discard_sectors.to_le_bytes());
    put(40, &l.max_discard_seg.to_le_bytes());
    put(44, &DISCARD_ALIGNMENT.to_le_bytes());
    put(48, &l.max_write_zeroes_sectors.to_le_bytes());
    put(52, &l.max_write_zeroes_seg.to_le_bytes());
    put(56, &[u8::from(l.discard)]);
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; usize::from(self.opts.queues)]
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_RING_INDIRECT_DESC
            | 1 << VIRTIO_F_RING_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_TOPOLOGY;
        if self.opts.queues > 1 {
            f |= 1 << VIRTIO_BLK_F_MQ;
        }
        if self.limits.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
            if self.limits.discard {
                f |= 1 << VIRTIO_BLK_F_DISCARD;
            }
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.stop_workers();
        let Activation {
            mem,
            queues,
            interrupt,
            ..
        } = activation;
        for aq in queues {
            let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::Thread)?;
            let ctx = QueueWorker {
                index: aq.index,
                queue: aq.queue,
                kick: aq.kick,
                stop: stop.try_clone().map_err(ActivateError::Thread)?,
                mem: mem.clone(),
                disk: self.disk.clone(),
                limits: self.limits.clone(),
                serial: self.serial,
                interrupt: interrupt.clone(),
            };
            let name = format!("ivmm-{}-q{}", self.opts.name, aq.index);
            let handle = self
                .spawner
                .spawn(name, WorkerKind::Block, Box::new(move || ctx.run()))
                .map_err(ActivateError::Thread)?;
            self.workers.push(Worker {
                stop,
                handle: Some(handle),
            });
        }
        Ok(())
    }

    fn reset(&mut self) {
        // Everything the guest wrote so far becomes durable at reset: each
        // worker flushes the disk as it stops (on its own thread, so the
        // vCPU that wrote the reset needs no disk syscalls).
        self.stop_workers();
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.stop_workers();
        if let Err(e) = self.disk.flush() {
            log::error!("{}: final flush: {e}", self.opts.name);
        }
    }
}

/// One queue's I/O thread.
struct QueueWorker {
    index: u16,
    queue: Queue,
    kick: EventFd,
    stop: EventFd,
    mem: GuestMemoryMmap,
    disk: Arc<dyn DiskBackend>,
    limits: DiskLimits,
    serial: [u8; VIRTIO_BLK_ID_BYTES],
    interrupt: Arc<dyn VirtioInterrupt>,
}

const KICK: u64 = 0;
const STOP: u64 = 1;

impl QueueWorker {
    fn run(mut self) {
        self.serve_until_stopped();
        if let Err(e) = self.disk.flush() {
            log::error!("virtio-blk queue {}: flush on stop: {e}", self.index);
        }
    }

    fn serve_until_stopped(&mut self) {
        let epoll = match self.epoll() {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtio-blk queue {}: epoll: {e}", self.index);
                return;
            }
        };
        let mut events = [EpollEvent::default(); 2];
        // Requests queued before the first kick (none, normally).
        self.serve();
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-blk queue {}: epoll wait: {e}", self.index);
                    return;
                }
            };
            for ev in &events[..n] {
                if ev.data() == STOP {
                    return;
                }
            }
            let _ = self.kick.read();
            self.serve();
        }
    }

    fn epoll(&self) -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            self.kick.as_raw_fd(),
            EpollEvent::new(EventSet::IN, KICK),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            self.stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        Ok(epoll)
    }

    fn serve(&mut self) {
        match process_queue(
            &mut self.queue,
            &self.mem,
            self.disk.as_ref(),
            &self.limits,
            &self.serial,
        ) {
            Ok(true) => self.interrupt.notify_queue(self.index),
            Ok(false) => {}
            Err(e) => log::error!("virtio-blk queue {}: {e}", self.index),
        }
    }
}

/// Collects a chain's descriptors; the flag says whether it ended properly
/// (false: it looped, was longer than the queue, or the table was unreadable).
fn collect_chain<M>(chain: DescriptorChain<M>) -> (Vec<Desc>, bool)
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut descs = Vec::new();
    let mut complete = false;
    for d in chain {
        complete = !d.has_next();
        descs.push(Desc {
            addr: d.addr(),
            len: d.len(),
            write_only: d.is_write_only(),
        });
    }
    (descs, complete)
}

/// Runs one chain: parse, execute, write the status. Returns the used length.
pub fn handle_chain(
    descs: &[Desc],
    complete: bool,
    mem: &GuestMemoryMmap,
    disk: &dyn DiskBackend,
    limits: &DiskLimits,
    serial: &[u8; VIRTIO_BLK_ID_BYTES],
) -> u32 {
    let (status, at, written) = match parse(descs, complete, mem, limits) {
        Ok(req) => {
            let (status, written) = execute(&req, mem, disk, serial);
            (status, req.status, written)
        }
        Err(ParseError::Failed { at, status, why }) => {
            log::debug!("virtio-blk: bad request: {why}");
            (status, at, 0)
        }
        Err(ParseError::NoStatus(why)) => {
            log::debug!("virtio-blk: bad chain: {why}");
            return 0;
        }
    };
    match mem.write_obj(status, at) {
        Ok(()) => written.saturating_add(1),
        Err(_) => 0,
    }
}

/// Serves every available chain of `queue`. Returns whether the driver
/// wants an interrupt (event-index aware).
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    disk: &dyn DiskBackend,
    limits: &DiskLimits,
    serial: &[u8; VIRTIO_BLK_ID_BYTES],
) -> Result<bool, virtio_queue::Error> {
    let mut used_any = false;
    loop {
        check_avail_index(queue, mem)?;
        queue.disable_notification(mem)?;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let (descs, complete) = collect_chain(chain);
            let len = handle_chain(&descs, complete, mem, disk, limits, serial);
            queue.add_used(mem, head, len)?;
            used_any = true;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(used_any && queue.needs_notification(mem)?)
}

#[cfg(test)]
mod tests;
