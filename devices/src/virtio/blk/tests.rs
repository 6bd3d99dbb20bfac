//! virtio-blk fed crafted descriptor chains through a driver-side mock
//! queue, without a VM. Every test checks the status byte and that guest
//! memory outside the chain's writable buffers is untouched.

use std::sync::atomic::Ordering;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, GuestAddress};

use super::*;
use crate::testing::{chain, MemDisk, F_NEXT, F_WRITE};

const MEM_SIZE: usize = 0x40_0000;
const DISK_SIZE: usize = 64 * 1024;
const F_INDIRECT: u16 = 4;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
/// Canary value of untouched guest memory.
const CANARY: u8 = 0x5a;

struct Rig {
    mem: GuestMemoryMmap,
    disk: Arc<MemDisk>,
    limits: DiskLimits,
    serial: [u8; VIRTIO_BLK_ID_BYTES],
}

fn rig_with(read_only: bool, discard: bool) -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&vec![CANARY; MEM_SIZE - 0x10_0000], GuestAddress(0x10_0000))
        .unwrap();
    let disk = Arc::new(MemDisk::new(DISK_SIZE, read_only));
    let mut serial = [0u8; VIRTIO_BLK_ID_BYTES];
    serial[..6].copy_from_slice(b"disk-7");
    Rig {
        mem,
        limits: DiskLimits {
            capacity_sectors: DISK_SIZE as u64 / 512,
            read_only,
            discard,
            max_discard_sectors: 64,
            max_discard_seg: 2,
            max_write_zeroes_sectors: 64,
            max_write_zeroes_seg: 2,
        },
        disk,
        serial,
    }
}

fn rig() -> Rig {
    rig_with(false, true)
}

fn header(mem: &GuestMemoryMmap, req_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

impl Rig {
    /// Puts `descs` (one or more chains) on a fresh queue and serves it.
    /// Returns the used lengths in completion order.
    fn run(&self, descs: &[RawDescriptor]) -> Vec<u32> {
        let vq = MockSplitQueue::create(&self.mem, GuestAddress(0), 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let notify = process_queue(
            &mut q,
            &self.mem,
            self.disk.as_ref(),
            &self.limits,
            &self.serial,
        )
        .unwrap();
        assert!(notify, "the driver must be told about completions");
        let used_idx: u16 = self.mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        (0..u64::from(used_idx))
            .map(|i| {
                self.mem
                    .read_obj::<u32>(vq.used_addr().unchecked_add(4 + i * 8 + 4))
                    .unwrap()
            })
            .collect()
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Asserts guest memory from 1 MiB up is canary except `[addr, addr+len)` ranges.
    fn assert_untouched_except(&self, allowed: &[(u64, usize)]) {
        let all = self.bytes(0x10_0000, MEM_SIZE - 0x10_0000);
        for (i, b) in all.iter().enumerate() {
            let a = 0x10_0000 + i as u64;
            let in_allowed = allowed.iter().any(|&(s, l)| a >= s && a < s + l as u64);
            let is_header = (HDR..HDR + 16).contains(&a);
            if !in_allowed && !is_header {
                assert_eq!(*b, CANARY, "guest byte {a:#x} was touched");
            }
        }
    }

    fn disk_bytes(&self) -> Vec<u8> {
        self.disk.bytes.lock().unwrap().clone()
    }
}

fn pattern() -> Vec<u8> {
    (0..DISK_SIZE).map(|i| (i % 251) as u8).collect()
}

#[test]
fn read_copies_disk_bytes_and_reports_ok() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_IN, 2);
    let used = r.run(&chain(
        &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
        0,
    ));
    assert_eq!(used, vec![1025]);
    assert_eq!(r.status(), VIRTIO_BLK_S_OK);
    assert_eq!(r.bytes(DATA, 1024), pattern()[1024..2048]);
    r.assert_untouched_except(&[(DATA, 1024), (STATUS, 1)]);
}

#[test]
fn write_stores_guest_bytes_and_reports_ok() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_OUT, 1);
    let used = r.run(&chain(
        &[
            (HDR, 16, false),
            (DATA, 512, false),
            (DATA + 0x1000, 512, false),
            (STATUS, 1, true),
        ],
        0,
    ));
    assert_eq!(used, vec![1]);
    assert_eq!(r.status(), VIRTIO_BLK_S_OK);
    let mut want = pattern();
    want[512..1536].fill(CANARY);
    assert_eq!(r.disk_bytes(), want);
}

#[test]
fn indirect_chain_is_served() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_IN, 0);
    let table = 0x38_0000u64;
    for (i, d) in chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)], 0)
        .into_iter()
        .enumerate()
    {
        r.mem
            .write_obj(d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    let used = r.run(&[RawDescriptor::from(SplitDescriptor::new(
        table, 48, F_INDIRECT, 0,
    ))]);
    assert_eq!(used, vec![513]);
    assert_eq!(r.status(), VIRTIO_BLK_S_OK);
    assert_eq!(r.bytes(DATA, 512), pattern()[..512]);
}

#[test]
fn short_header_fails_with_ioerr() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_OUT, 0);
    let used = r.run(&chain(
        &[(HDR, 8, false), (DATA, 512, false), (STATUS, 1, true)],
        0,
    ));
    assert_eq!(used, vec![1]);
    assert_eq!(r.status(), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.disk_bytes(), pattern());
}

#[test]
fn data_outside_guest_ram_fails_and_touches_nothing() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_IN, 0);
    for (addr, len) in [
        (0x7000_0000u64, 512u32),
        (MEM_SIZE as u64 - 256, 512),
        (u64::MAX - 100, 512),
        (DATA, 0x8000_0000),
    ] {
        let used = r.run(&chain(
            &[(HDR, 16, false), (addr, len, true), (STATUS, 1, true)],
            0,
        ));
        assert_eq!(used, vec![1], "{addr:#x}+{len:#x}");
        assert_eq!(r.status(), VIRTIO_BLK_S_IOERR);
    }
    // A chain of 2^32 bytes or more is illegal (§2.7.5.2): no status at all.
    let used = r.run(&chain(
        &[(HDR, 16, false), (DATA, u32::MAX, true), (STATUS, 1, true)],
        0,
    ));
    assert_eq!(used, vec![0]);
    r.assert_untouched_except(&[(STATUS, 1)]);
}

#[test]
fn sectors_past_the_end_fail() {
    let r = rig();
    let last = DISK_SIZE as u64 / 512;
    for sector in [last, last - 1, u64::MAX, u64::MAX / 512] {
        header(&r.mem, VIRTIO_BLK_T_IN, sector);
        let used = r.run(&chain(
            &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
            0,
        ));
        assert_eq!(used, vec![1], "sector {sector}");
        assert_eq!(r.status(), VIRTIO_BLK_S_IOERR);
    }
    r.assert_untouched_except(&[(STATUS, 1)]);
}

#[test]
fn read_into_device_readable_buffer_fails() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_IN, 0);
    let used = r.run(&chain(
        &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        0,
    ));
    assert_eq!(used, vec![1]);
    assert_eq!(r.status(), VIRTIO_BLK_S_IOERR);
    r.assert_untouched_except(&[(STATUS, 1)]);
}

#[test]
fn unaligned_length_fails() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_OUT, 0);
    let used = r.run(&chain(
        &[(HDR, 16, false), (DATA, 100, false), (STATUS, 1, true)],
        0,
    ));
    assert_eq!(used, vec![1]);
    assert_eq!(r.status(), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.disk_bytes(), pattern());
}

#[test]
fn looping_chain_completes_without_status_and_the_queue_keeps_serving() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_IN, 0);
    // A good chain at 0..3, then 3 -> 4 -> 3 -> ..., then another good one.
    let mut descs = chain(
        &[
            (HDR, 16, false),
            (DATA + 0x1000, 512, true),
            (STATUS, 1, true),
        ],
        0,
    );
    descs.push(RawDescriptor::from(SplitDescriptor::new(
        HDR, 16, F_NEXT, 4,
    )));
    descs.push(RawDescriptor::from(SplitDescriptor::new(
        DATA,
        512,
        F_NEXT | F_WRITE,
        3,
    )));
    let used = r.run(&descs);
    assert_eq!(used, vec![513, 0]);
    assert_eq!(r.status(), VIRTIO_BLK_S_OK);
    r.assert_untouched_except(&[(DATA + 0x1000, 512), (STATUS, 1)]);
}

#[test]
fn next_index_outside_the_table_is_a_bad_chain() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_IN, 0);
    let used = r.run(&[
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, F_NEXT | F_WRITE, 999)),
    ]);
    assert_eq!(used, vec![0]);
    r.assert_untouched_except(&[]);
}

#[test]
fn readable_status_descriptor_is_not_written() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_IN, 0);
    let used = r.run(&chain(
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)],
        0,
    ));
    assert_eq!(used, vec![0]);
    r.assert_untouched_except(&[]);
    // Header alone (no status at all).
    let used = r.run(&chain(&[(HDR, 16, false)], 0));
    assert_eq!(used, vec![0]);
    r.assert_untouched_except(&[]);
}

#[test]
fn get_id_returns_the_serial() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_GET_ID, 0);
    let used = r.run(&chain(
        &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
        0,
    ));
    assert_eq!(used, vec![21]);
    assert_eq!(r.status(), VIRTIO_BLK_S_OK);
    assert_eq!(&r.bytes(DATA, 20)[..8], b"disk-7\0\0");
    // A smaller buffer gets a prefix and nothing past it.
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_GET_ID, 0);
    let used = r.run(&chain(
        &[(HDR, 16, false), (DATA, 4, true), (STATUS, 1, true)],
        0,
    ));
    assert_eq!(used, vec![5]);
    assert_eq!(r.bytes(DATA, 4), b"disk");
    r.assert_untouched_except(&[(DATA, 4), (STATUS, 1)]);
}

#[test]
fn flush_reaches_the_backend() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_FLUSH, 0);
    let used = r.run(&chain(&[(HDR, 16, false), (STATUS, 1, true)], 0));
    assert_eq!(used, vec![1]);
    assert_eq!(r.status(), VIRTIO_BLK_S_OK);
    assert_eq!(r.disk.flushes.load(Ordering::SeqCst), 1);
}

#[test]
fn unknown_type_is_unsupported() {
    let r = rig();
    header(&r.mem, 77, 0);
    let used = r.run(&chain(&[(HDR, 16, false), (STATUS, 1, true)], 0));
    assert_eq!(used, vec![1]);
    assert_eq!(r.status(), VIRTIO_BLK_S_UNSUPP);
}

fn segment(mem: &GuestMemoryMmap, at: u64, sector: u64, num: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&s, GuestAddress(at)).unwrap();
}

#[test]
fn discard_and_write_zeroes_zero_the_ranges() {
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_DISCARD, 0);
    segment(&r.mem, DATA, 1, 2, 0);
    segment(&r.mem, DATA + 16, 10, 1, 0);
    let used = r.run(&chain(
        &[(HDR, 16, false), (DATA, 32, false), (STATUS, 1, true)],
        0,
    ));
    assert_eq!(used, vec![1]);
    assert_eq!(r.status(), VIRTIO_BLK_S_OK);
    let mut want = pattern();
    want[512..1536].fill(0);
    want[5120..5632].fill(0);
    assert_eq!(r.disk_bytes(), want);

    header(&r.mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&r.mem, DATA, 0, 1, 1);
    r.run(&chain(
        &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)],
        0,
    ));
    assert_eq!(r.status(), VIRTIO_BLK_S_OK);
    want[..512].fill(0);
    assert_eq!(r.disk_bytes(), want);
}

#[test]
fn bad_discard_segments_fail_without_touching_the_disk() {
    let cases: [(u64, u32, u32, u8); 5] = [
        (0, 1, 1, VIRTIO_BLK_S_UNSUPP),       // unmap flag on discard
        (0, 1, 4, VIRTIO_BLK_S_UNSUPP),       // reserved flag
        (127, 2, 0, VIRTIO_BLK_S_IOERR),      // past the end
        (u64::MAX, 2, 0, VIRTIO_BLK_S_IOERR), // overflow
        (0, 65, 0, VIRTIO_BLK_S_IOERR),       // above max_discard_sectors
    ];
    for (sector, num, flags, status) in cases {
        let r = rig();
        header(&r.mem, VIRTIO_BLK_T_DISCARD, 0);
        segment(&r.mem, DATA, sector, num, flags);
        r.run(&chain(
            &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)],
            0,
        ));
        assert_eq!(r.status(), status, "{sector} {num} {flags}");
        assert_eq!(r.disk_bytes(), pattern());
    }
    // Too many segments, and a length that is not whole segments.
    let r = rig();
    header(&r.mem, VIRTIO_BLK_T_DISCARD, 0);
    for len in [48, 17] {
        r.run(&chain(
            &[(HDR, 16, false), (DATA, len, false), (STATUS, 1, true)],
            0,
        ));
        assert_eq!(r.status(), VIRTIO_BLK_S_IOERR);
    }
    // Discard not enabled.
    let r = rig_with(false, false);
    header(&r.mem, VIRTIO_BLK_T_DISCARD, 0);
    segment(&r.mem, DATA, 0, 1, 0);
    r.run(&chain(
        &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)],
        0,
    ));
    assert_eq!(r.status(), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(r.disk_bytes(), pattern());
}

#[test]
fn read_only_disk_refuses_writes_and_still_reads() {
    let r = rig_with(true, true);
    for t in [
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_WRITE_ZEROES,
        VIRTIO_BLK_T_DISCARD,
    ] {
        header(&r.mem, t, 0);
        segment(&r.mem, DATA, 0, 1, 0);
        r.run(&chain(
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
            0,
        ));
        assert_eq!(r.status(), VIRTIO_BLK_S_IOERR, "type {t}");
    }
    header(&r.mem, VIRTIO_BLK_T_IN, 0);
    r.run(&chain(
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        0,
    ));
    assert_eq!(r.status(), VIRTIO_BLK_S_OK);
}

#[test]
fn config_space_and_features_follow_the_options() {
    let disk = Arc::new(MemDisk::new(DISK_SIZE, false));
    let blk = Block::new(
        disk,
        BlockOptions {
            name: "blk0".into(),
            serial: "x".into(),
            discard: true,
            queues: 4,
        },
    );
    let f = blk.features();
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_F_RING_EVENT_IDX,
        VIRTIO_F_RING_INDIRECT_DESC,
    ] {
        assert_ne!(f & (1 << bit), 0, "bit {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    let mut cap = [0u8; 8];
    blk.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SIZE as u64 / 512);
    let mut nq = [0u8; 2];
    blk.read_config(34, &mut nq);
    assert_eq!(u16::from_le_bytes(nq), 4);
    assert_eq!(blk.queue_max_sizes().len(), 4);

    let ro = Block::new(
        Arc::new(MemDisk::new(DISK_SIZE, true)),
        BlockOptions {
            name: "blk1".into(),
            serial: String::new(),
            discard: true,
            queues: 1,
        },
    );
    let f = ro.features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_MQ), 0);
}

#[test]
fn avail_index_more_than_a_queue_ahead_is_an_error_not_an_endless_loop() {
    let r = rig();
    let vq = MockSplitQueue::create(&r.mem, GuestAddress(0), 16);
    let q: Queue = vq.create_queue().unwrap();
    // The driver claims 17 new entries on a 16-entry ring.
    r.mem
        .write_obj::<u16>(17, vq.avail_addr().unchecked_add(2))
        .unwrap();
    assert_broken_ring_is_refused(&r, q);
}

#[test]
fn avail_ring_at_address_zero_is_an_error_not_an_endless_loop() {
    // virtio-queue pops nothing from a ring at 0 while enable_notification
    // sees the published entry (found by fuzz/virtio_blk_request).
    let r = rig();
    let mut q = Queue::new(16).unwrap();
    q.try_set_desc_table_address(GuestAddress(0x1000)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(0)).unwrap();
    q.try_set_used_ring_address(GuestAddress(0x2000)).unwrap();
    q.set_ready(true);
    r.mem.write_obj::<u16>(1, GuestAddress(2)).unwrap();
    assert_broken_ring_is_refused(&r, q);
}

/// `process_queue` returns an error on `q` (on a thread, so that a serving
/// loop that spins fails the test instead of hanging it).
fn assert_broken_ring_is_refused(r: &Rig, mut q: Queue) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (mem, disk, limits, serial) = (r.mem.clone(), r.disk.clone(), r.limits.clone(), r.serial);
    std::thread::spawn(move || {
        let res = process_queue(&mut q, &mem, disk.as_ref(), &limits, &serial);
        let _ = done_tx.send(res.is_err());
    });
    let failed = done_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("process_queue must return on a broken ring");
    assert!(failed);
}
