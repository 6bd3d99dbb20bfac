//! The queue thread and the request pool: requests reach the disk at once,
//! a driver cannot pile up more than a queue's worth, and a reset waits for
//! the requests in flight. Driven through `activate` with a disk that holds
//! every read at a gate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, GuestAddress, VolatileSlice};

use super::*;
use crate::testing::{chain, wait_until, MemDisk, QueueInterrupts};

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const TABLES: u64 = 0x38_0000;
const USED_RING: u64 = 0x8000;

/// A [`MemDisk`] whose reads wait until the gate opens.
#[derive(Debug)]
struct GatedDisk {
    inner: MemDisk,
    open: Mutex<bool>,
    opened: Condvar,
    /// Reads that have started, and the most running at once.
    started: AtomicUsize,
    running: AtomicUsize,
    most_running: AtomicUsize,
    /// Flushes that came while reads were still held.
    early_flushes: AtomicUsize,
}

impl GatedDisk {
    fn new() -> Self {
        Self {
            inner: MemDisk::new(64 * 1024, false),
            open: Mutex::new(false),
            opened: Condvar::new(),
            started: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
            early_flushes: AtomicUsize::new(0),
        }
    }

    fn open_gate(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl DiskBackend for GatedDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_vectored(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> crate::block::Result<()> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        drop(open);
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.inner.read_vectored(offset, bufs)
    }
    fn write_vectored(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> crate::block::Result<()> {
        self.inner.write_vectored(offset, bufs)
    }
    fn flush(&self) -> crate::block::Result<()> {
        if self.running.load(Ordering::SeqCst) > 0 {
            self.early_flushes.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> crate::block::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> crate::block::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    disk: Arc<GatedDisk>,
    irq: Arc<QueueInterrupts>,
    kick: EventFd,
    block: Block,
    vq_used: GuestAddress,
    vq_avail: GuestAddress,
}

/// A device on a `size`-entry queue holding `requests` reads of sector
/// `i` into `DATA + 512 i`, each through an indirect table (one ring entry
/// per request), activated and kicked.
fn rig(size: u16, requests: u16) -> Rig {
    let (rig, activated) = rig_with(size, requests, spawn::plain());
    activated.unwrap();
    rig
}

/// [`rig`] with the device's threads started by `spawner`; the kick comes
/// before the activation, so the queue thread finds the requests at once.
fn rig_with(
    size: u16,
    requests: u16,
    spawner: Arc<dyn WorkerSpawner>,
) -> (Rig, Result<(), ActivateError>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), size);
    let mut ring = Vec::new();
    for i in 0..u64::from(requests) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        h[8..16].copy_from_slice(&i.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR + 16 * i)).unwrap();
        let table = TABLES + 48 * i;
        let descs = chain(
            &[
                (HDR + 16 * i, 16, false),
                (DATA + 512 * i, 512, true),
                (STATUS + i, 1, true),
            ],
            0,
        );
        for (k, d) in descs.into_iter().enumerate() {
            mem.write_obj(d, GuestAddress(table + 16 * k as u64))
                .unwrap();
        }
        ring.push(RawDescriptor::from(SplitDescriptor::new(table, 48, 4, 0)));
    }
    vq.add_desc_chains(&ring, 0).unwrap();
    // The mock lays a small queue's used ring over its available ring;
    // this one has its own page.
    let (vq_used, vq_avail) = (GuestAddress(USED_RING), vq.avail_addr());
    let mut queue = Queue::new(size).unwrap();
    queue
        .try_set_desc_table_address(vq.desc_table_addr())
        .unwrap();
    queue.try_set_avail_ring_address(vq_avail).unwrap();
    queue.try_set_used_ring_address(vq_used).unwrap();
    queue.set_ready(true);
    let disk = Arc::new(GatedDisk::new());
    let irq = Arc::new(QueueInterrupts::default());
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut block = Block::new(
        disk.clone(),
        BlockOptions {
            name: "blkT".into(),
            serial: String::new(),
            discard: false,
            queues: 1,
        },
    )
    .with_spawner(spawner);
    kick.write(1).unwrap();
    let activated = block.activate(Activation {
        mem: mem.clone(),
        queues: vec![ActiveQueue {
            index: 0,
            queue,
            kick: kick.try_clone().unwrap(),
        }],
        interrupt: irq.clone(),
        features: 0,
    });
    let rig = Rig {
        mem,
        disk,
        irq,
        kick,
        block,
        vq_used,
        vq_avail,
    };
    (rig, activated)
}

impl Drop for Rig {
    /// A failed assertion must not leave the device's threads (joined as
    /// the device drops) waiting at the gate.
    fn drop(&mut self) {
        self.disk.open_gate();
    }
}

impl Rig {
    fn used_idx(&self) -> u16 {
        self.mem.read_obj(self.vq_used.unchecked_add(2)).unwrap()
    }
}

/// Waits for the device's threads (10 s at most).
fn wait(what: &str, cond: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(10), cond);
}

#[test]
fn pending_requests_reach_the_disk_at_once_and_all_complete() {
    let n = REQUEST_THREADS as u16;
    let r = rig(32, n);
    wait("every read is at the disk", || {
        r.disk.most_running.load(Ordering::SeqCst) == REQUEST_THREADS
    });
    assert_eq!(r.used_idx(), 0, "nothing completes while the disk holds");
    r.disk.open_gate();
    wait("every request is used", || r.used_idx() == n);
    assert!(r.irq.count(0) >= 1);
    let disk = r.disk.inner.bytes.lock().unwrap().clone();
    for i in 0..u64::from(n) {
        let status: u8 = r.mem.read_obj(GuestAddress(STATUS + i)).unwrap();
        assert_eq!(status, VIRTIO_BLK_S_OK, "request {i}");
        let mut data = [0u8; 512];
        r.mem
            .read_slice(&mut data, GuestAddress(DATA + 512 * i))
            .unwrap();
        let at = 512 * i as usize;
        assert_eq!(data[..], disk[at..at + 512], "request {i}");
    }
}

#[test]
fn a_driver_cannot_have_more_than_a_queue_in_flight() {
    // Four requests fill a 4-entry queue; the driver then publishes the
    // same four heads again before any came back. The device must wait
    // for room although it has threads to spare.
    let r = rig(4, 4);
    wait("four reads are at the disk", || {
        r.disk.started.load(Ordering::SeqCst) == 4
    });
    for i in 0..4u64 {
        r.mem
            .write_obj(i as u16, r.vq_avail.unchecked_add(4 + 2 * i))
            .unwrap();
    }
    r.mem.write_obj(8u16, r.vq_avail.unchecked_add(2)).unwrap();
    r.kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.disk.started.load(Ordering::SeqCst), 4);
    r.disk.open_gate();
    wait("the re-posted heads are served", || r.used_idx() == 8);
    assert_eq!(r.disk.started.load(Ordering::SeqCst), 8);
}

#[test]
fn reset_waits_for_requests_in_flight_then_flushes() {
    let mut r = rig(32, 4);
    wait("four reads are at the disk", || {
        r.disk.started.load(Ordering::SeqCst) == 4
    });
    let disk = r.disk.clone();
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        disk.open_gate();
    });
    let t = Instant::now();
    r.block.reset();
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "reset returned while the disk still held requests"
    );
    assert_eq!(r.disk.running.load(Ordering::SeqCst), 0);
    assert_eq!(r.disk.inner.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(r.disk.early_flushes.load(Ordering::SeqCst), 0);
    opener.join().unwrap();
}

/// Starts queue threads but no request thread.
struct NoRequestThreads;

impl WorkerSpawner for NoRequestThreads {
    fn spawn(
        &self,
        name: String,
        kind: WorkerKind,
        work: spawn::Work,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        if name.contains("-io") {
            return Err(std::io::Error::other("no threads left"));
        }
        spawn::PlainSpawner.spawn(name, kind, work)
    }
}

#[test]
fn a_half_failed_activation_does_not_hang_the_reset() {
    // The queue thread starts and hands its requests to a pool whose
    // threads never started: the reset must still come back.
    let (mut r, activated) = rig_with(32, 4, Arc::new(NoRequestThreads));
    assert!(activated.is_err());
    r.disk.open_gate();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut block = std::mem::replace(
        &mut r.block,
        Block::new(
            r.disk.clone(),
            BlockOptions {
                name: "spare".into(),
                serial: String::new(),
                discard: false,
                queues: 1,
            },
        ),
    );
    std::thread::spawn(move || {
        block.reset();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("reset hung on requests no thread will run");
    assert_eq!(r.disk.started.load(Ordering::SeqCst), 0);
}
