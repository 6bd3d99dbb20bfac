//! virtio-blk (virtio 1.2 §5.2) on a [`DiskBackend`].
//!
//! Each enabled queue gets its own thread (`ivmm-blk<N>-q<Q>`) that
//! sleeps on the queue's kick eventfd (a KVM ioeventfd in the VMM, so a
//! guest kick never stops its vCPU) and pops the requests. A lone request
//! runs right there; when several are pending they go to the device's
//! request threads (`ivmm-blk<N>-io<K>`, see [`pool`]) so that they reach
//! the disk at once. The queue thread puts completions on the used ring and
//! signals them through [`VirtioInterrupt`].

pub mod pool;
pub mod request;

use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::spawn::{self, WorkerKind, WorkerSpawner};
use super::worker::{self, DeviceWorker};
use super::*;
use crate::block::DiskBackend;
use pool::{Completions, Job, RequestContext, RequestPool, Submitter};
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
/// Request threads per device, shared by its queues: up to 8 of a guest's
/// requests reach the host disk at once (QEMU's pool grows to 64 threads;
/// in the lab, 8 put queue depth 32 at parity with it, `benches/RESULTS.md`).
pub const REQUEST_THREADS: usize = 8;
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
    pool: RequestPool,
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
            pool: RequestPool::new(),
            spawner: spawn::plain(),
        }
    }

    /// Starts the queue threads through `spawner` (which gives them their
    /// seccomp filter) instead of directly.
    pub fn with_spawner(mut self, spawner: Arc<dyn WorkerSpawner>) -> Self {
        self.spawner = spawner;
        self
    }

    /// Stops the queue threads and the request threads. The request
    /// threads finish every request handed to them before they exit; each
    /// queue thread waits for its requests in flight, then flushes the disk.
    fn stop_workers(&mut self) {
        for w in &self.workers {
            let _ = w.stop.write(1);
        }
        self.pool.stop();
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
        let ctx = Arc::new(RequestContext {
            mem,
            disk: self.disk.clone(),
            limits: self.limits.clone(),
            serial: self.serial,
        });
        self.pool = RequestPool::new();
        for aq in queues {
            let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::Thread)?;
            let worker = QueueWorker {
                index: aq.index,
                queue: aq.queue,
                kick: aq.kick,
                stop: stop.try_clone().map_err(ActivateError::Thread)?,
                ctx: ctx.clone(),
                pool: self.pool.submitter(),
                done: Arc::new(Completions::new().map_err(ActivateError::Thread)?),
                in_flight: 0,
                interrupt: interrupt.clone(),
                stopped: false,
            };
            let name = format!("ivmm-{}-q{}", self.opts.name, aq.index);
            let handle = self
                .spawner
                .spawn(name, WorkerKind::Block, Box::new(move || worker.run()))
                .map_err(ActivateError::Thread)?;
            self.workers.push(Worker {
                stop,
                handle: Some(handle),
            });
        }
        // After the queue threads, so that the first block thread is
        // still `-q0` (the seccomp test hook picks the first of a kind).
        let prefix = format!("ivmm-{}-io", self.opts.name);
        self.pool
            .start(&prefix, REQUEST_THREADS, self.spawner.as_ref(), ctx)
            .map_err(ActivateError::Thread)?;
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

/// One queue's thread: pops chains, runs a lone one itself, hands the
/// rest to the request pool, and puts completions on the used ring.
/// Events: the queue's kick, the pool's completions, and stop.
struct QueueWorker {
    index: u16,
    queue: Queue,
    kick: EventFd,
    stop: EventFd,
    ctx: Arc<RequestContext>,
    pool: Submitter,
    done: Arc<Completions>,
    /// Chains handed to the pool and not yet on the used ring.
    in_flight: usize,
    interrupt: Arc<dyn VirtioInterrupt>,
    stopped: bool,
}

impl MutEventSubscriber for QueueWorker {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            self.kick.as_raw_fd(),
            self.stop.as_raw_fd(),
            self.done.ready.as_raw_fd(),
        ];
        if !worker::watch(ops, &self.name(), &fds) {
            self.stopped = true;
            return;
        }
        // Requests queued before the first kick (none, normally).
        self.serve();
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self.stopped {
            return;
        }
        let fd = events.fd();
        if fd == self.stop.as_raw_fd() {
            self.stopped = true;
            return;
        }
        if fd == self.done.ready.as_raw_fd() {
            let _ = self.done.ready.read();
            self.complete();
        } else {
            let _ = self.kick.read();
        }
        // Also after completions: a full queue may have room again.
        self.serve();
    }
}

impl DeviceWorker for QueueWorker {
    fn stopped(&self) -> bool {
        self.stopped
    }
}

impl QueueWorker {
    /// How log lines name this queue.
    fn name(&self) -> String {
        format!("virtio-blk queue {}", self.index)
    }

    fn run(self) {
        let name = self.name();
        let Some(mut worker) = worker::run(&name, self) else {
            return;
        };
        // The pool must not write guest memory after a reset returns, and
        // the flush below must cover every write the guest saw complete.
        while worker.in_flight > 0 {
            let finished = worker.done.wait();
            worker.in_flight = worker.in_flight.saturating_sub(finished.len());
        }
        if let Err(e) = worker.ctx.disk.flush() {
            log::error!("{name}: flush on stop: {e}");
        }
    }

    /// Pops what the driver made available, up to a queue's worth in
    /// flight (a driver that re-posts heads it has not got back cannot pile
    /// up work). The first chain is held back: if no other follows and none
    /// is in flight it runs here, sparing a queue-depth-1 request two
    /// thread hand-offs.
    fn serve(&mut self) {
        let room = usize::from(self.queue.size());
        let (in_flight, pool, done) = (&mut self.in_flight, &self.pool, &self.done);
        let mut held: Option<(u16, Vec<Desc>, bool)> = None;
        let popped = pop_chains(
            &mut self.queue,
            &self.ctx.mem,
            *in_flight < room,
            |_, head, descs, complete| {
                if held.is_none() && *in_flight == 0 {
                    held = Some((head, descs, complete));
                } else {
                    let first = held.take();
                    for (head, descs, complete) in
                        first.into_iter().chain([(head, descs, complete)])
                    {
                        *in_flight += 1;
                        pool.submit(Job {
                            head,
                            descs,
                            complete,
                            done: done.clone(),
                        });
                    }
                }
                Ok(*in_flight + usize::from(held.is_some()) < room)
            },
        );
        if let Err(e) = popped {
            log::error!("{}: {e}", self.name());
        }
        if let Some((head, descs, complete)) = held {
            let len = self.ctx.run(&descs, complete);
            self.put_used(&[(head, len)]);
        }
    }

    fn complete(&mut self) {
        let finished = self.done.take();
        self.in_flight = self.in_flight.saturating_sub(finished.len());
        self.put_used(&finished);
    }

    /// Adds finished chains to the used ring and interrupts the driver if
    /// it asked to be (event index).
    fn put_used(&mut self, finished: &[(u16, u32)]) {
        if finished.is_empty() {
            return;
        }
        let mem = &self.ctx.mem;
        let added = finished
            .iter()
            .try_for_each(|&(head, len)| self.queue.add_used(mem, head, len));
        match added.and_then(|()| self.queue.needs_notification(mem)) {
            Ok(true) => self.interrupt.notify_queue(self.index),
            Ok(false) => {}
            Err(e) => log::error!("{}: {e}", self.name()),
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

/// Pops the chains the driver made available and hands each to `take`
/// (with the queue, for its used ring), which returns whether there is
/// room for another; `room` says whether there is room for the first.
/// Notifications stay off while popping. When the ring runs empty they are
/// re-enabled and the ring checked once more (a chain published meanwhile
/// is not missed); when there is no room they stay off, and the caller is
/// woken by its completions instead of by kicks.
fn pop_chains(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut room: bool,
    mut take: impl FnMut(&mut Queue, u16, Vec<Desc>, bool) -> Result<bool, virtio_queue::Error>,
) -> Result<(), virtio_queue::Error> {
    loop {
        check_avail_index(queue, mem)?;
        queue.disable_notification(mem)?;
        while room {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let (descs, complete) = collect_chain(chain);
            room = take(queue, head, descs, complete)?;
        }
        if !room || !queue.enable_notification(mem)? {
            return Ok(());
        }
    }
}

/// Serves every available chain of `queue` on the calling thread (tests
/// and fuzzing; the device's queue thread shares [`pop_chains`] with it).
/// Returns whether the driver wants an interrupt (event-index aware).
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    disk: &dyn DiskBackend,
    limits: &DiskLimits,
    serial: &[u8; VIRTIO_BLK_ID_BYTES],
) -> Result<bool, virtio_queue::Error> {
    let mut used_any = false;
    pop_chains(queue, mem, true, |queue, head, descs, complete| {
        let len = handle_chain(&descs, complete, mem, disk, limits, serial);
        queue.add_used(mem, head, len)?;
        used_any = true;
        Ok(true)
    })?;
    Ok(used_any && queue.needs_notification(mem)?)
}

#[cfg(test)]
mod inflight_tests;
#[cfg(test)]
mod tests;
