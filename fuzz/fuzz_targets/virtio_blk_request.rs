//! virtio-blk request handling from arbitrary descriptor chains: the input
//! builds a queue in guest memory (descriptors, indirect tables, request
//! headers, segment lists, ring indices; see `ivmm_fuzz::ring`) and the
//! device serves it with `process_queue`, as its I/O thread does on a kick,
//! against an in-memory disk (which panics on out-of-range requests) or a
//! raw image in a temp file.
//!
//! Input: flags:u8 (bit 0 read-only, 1 discard, 2 raw file, 3 probed,
//! 4 O_DIRECT), disk size:u16 (x16 bytes), queue setup, then ring
//! operations; target operation 0 serves the queue.
//!
//! Run: `fuzz/run.sh virtio_blk_request 600`
#![no_main]

use std::sync::Arc;

use devices::block::{DiskBackend, RawDisk};
use devices::testing::MemDisk;
use devices::virtio::blk::process_queue;
use devices::virtio::blk::request::{DiskLimits, VIRTIO_BLK_ID_BYTES};
use ivmm_fuzz::ring::{Driver, Op, QueueSetup};
use ivmm_fuzz::Input;
use libfuzzer_sys::fuzz_target;

/// Target operation 0: serve the queue (a kick).
const TARGET_OPS: u8 = 1;
/// Bounds on work per input (each serve is bounded by the queue size).
const MAX_OPS: usize = 1024;
const MAX_SERVES: usize = 16;
/// As `Block::new` sets them.
const MAX_DISCARD_SECTORS: u32 = 1 << 22;
const MAX_DISCARD_SEG: u32 = 32;

fn disk(flags: u8, size: usize) -> Option<(Arc<dyn DiskBackend>, Option<tempfile::TempPath>)> {
    let read_only = flags & 1 != 0;
    if flags & 4 == 0 {
        return Some((Arc::new(MemDisk::new(size, read_only)), None));
    }
    let f = tempfile::NamedTempFile::new().ok()?;
    f.as_file().set_len(size as u64).ok()?;
    let path = f.into_temp_path();
    let raw = RawDisk::open_with(&path, !read_only, false, flags & 8 != 0, flags & 16 != 0).ok()?;
    Some((Arc::new(raw), Some(path)))
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input::new(data);
    let flags = i.u8();
    let size = usize::from(i.u16()) * 16;
    let setup = QueueSetup::decode(&mut i);
    let Some((disk, _file)) = disk(flags, size) else {
        return;
    };
    let limits = DiskLimits {
        capacity_sectors: disk.size() / 512,
        read_only: disk.read_only(),
        discard: flags & 2 != 0,
        max_discard_sectors: MAX_DISCARD_SECTORS,
        max_discard_seg: MAX_DISCARD_SEG,
        max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
        max_write_zeroes_seg: MAX_DISCARD_SEG,
    };
    let serial: [u8; VIRTIO_BLK_ID_BYTES] = *b"ivmm-fuzz-disk-00001";
    let Some(mut driver) = Driver::new(&[setup]) else {
        return;
    };
    let Some(mut queue) = driver.device_queue(0) else {
        return;
    };
    let mut serves = 0;
    for _ in 0..MAX_OPS {
        if i.is_empty() || serves == MAX_SERVES {
            break;
        }
        let op = Op::decode(&mut i, TARGET_OPS);
        if driver.apply(&op).is_some() {
            serves += 1;
            let _ = process_queue(&mut queue, &driver.mem, disk.as_ref(), &limits, &serial);
        }
    }
    // Whatever is left, as on the next kick.
    let _ = process_queue(&mut queue, &driver.mem, disk.as_ref(), &limits, &serial);
});
