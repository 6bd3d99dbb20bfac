//! Guest memory with split virtqueues (virtio 1.2 §2.7) that the fuzz input
//! drives the way a (hostile) driver would: it writes descriptors, buffers
//! and ring entries into guest memory, moves the available index, and lets
//! the device model run. Ring and buffer addresses come from the input.
//!
//! Encoding (all little endian; missing bytes read as zero):
//!
//! ```text
//! queue setup  flags:u8 (bit 0 EVENT_IDX, bit 1 own ring addresses)
//!              size_log:u8 (size = 1 << size_log % 9)  next_avail:u16
//!              [desc:u16 (x16) avail:u16 (x2) used:u16 (x4)]  if bit 1
//! op           code:u8, then by code (code % (OPS + target ops)):
//!   0 publish    queue:u8 count:u8 head:u8 * count
//!   1 desc       queue:u8 index:u8 addr:u32 len:u32 flags:u8 next:u8
//!   2 mem        addr:u32 len:u8 bytes
//!   3 avail idx  queue:u8 idx:u16     (any value: a broken ring)
//!   4 used event queue:u8 value:u16
//!   5..          the target's own operations
//! ```
//!
//! `addr` values below 2^31 map to `v % ADDR_SPAN` (RAM, the hole and past
//! the end), others to `u64::MAX - (v & 0x7fff_ffff)` (overflow checks).
//! `len` values below 2^31 map to `v % 0x20000`, others are used as they are.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::{Input, Output};

/// Guest RAM: two adjacent regions (buffers may straddle them) and an
/// island past a hole.
pub const RAM: [(u64, usize); 3] = [(0, 0x2_0000), (0x2_0000, 0x1_0000), (0x4_0000, 0x1_0000)];
/// Decoded low addresses fall below this: RAM, the hole, and beyond.
pub const ADDR_SPAN: u32 = 0x6_0000;
/// Default ring addresses of queue `q`: desc at `q * QUEUE_STRIDE`, avail
/// 0x1000 and used 0x2000 above it.
pub const QUEUE_STRIDE: u64 = 0x4000;
/// Where seeds put request data (above the default rings of two queues).
pub const DATA_START: u64 = 0x8000;
/// Largest queue (the devices' QUEUE_SIZE).
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Ring operations; target operations are numbered from here.
pub const OPS: u8 = 5;

pub const F_NEXT: u8 = 1;
pub const F_WRITE: u8 = 2;
pub const F_INDIRECT: u8 = 4;

pub fn guest_memory() -> Option<GuestMemoryMmap> {
    GuestMemoryMmap::from_ranges(&RAM.map(|(a, l)| (GuestAddress(a), l))).ok()
}

/// Input value → guest address (see the module docs).
pub fn addr(v: u32) -> u64 {
    if v & 0x8000_0000 == 0 {
        u64::from(v % ADDR_SPAN)
    } else {
        u64::MAX - u64::from(v & 0x7fff_ffff)
    }
}

/// Input value → descriptor length (see the module docs).
pub fn len(v: u32) -> u32 {
    if v & 0x8000_0000 == 0 {
        v % 0x2_0000
    } else {
        v
    }
}

/// Input byte → descriptor flags: the three defined bits, the other five
/// go to the top of the field.
pub fn flags(b: u8) -> u16 {
    u16::from(b & 7) | (u16::from(b & 0xf8) << 8)
}

/// A descriptor as encoded in the input.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u32,
    pub len: u32,
    pub flags: u8,
    pub next: u8,
}

impl Desc {
    pub fn new(addr: u64, len: u32, flags: u8, next: u8) -> Self {
        Self {
            addr: u32::try_from(addr).expect("seed address below 2^31"),
            len,
            flags,
            next,
        }
    }

    fn decode(i: &mut Input) -> Self {
        Self {
            addr: i.u32(),
            len: i.u32(),
            flags: i.u8(),
            next: i.u8(),
        }
    }

    fn encode(&self, o: &mut Output) {
        o.u32(self.addr).u32(self.len).u8(self.flags).u8(self.next);
    }

    /// struct virtq_desc as it lies in guest memory.
    fn raw(&self) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[0..8].copy_from_slice(&addr(self.addr).to_le_bytes());
        r[8..12].copy_from_slice(&len(self.len).to_le_bytes());
        r[12..14].copy_from_slice(&flags(self.flags).to_le_bytes());
        r[14..16].copy_from_slice(&u16::from(self.next).to_le_bytes());
        r
    }

    /// The 16 guest-memory bytes of this descriptor (for indirect tables
    /// that seeds write with a `mem` op).
    pub fn guest_bytes(&self) -> [u8; 16] {
        self.raw()
    }
}

/// How one queue is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueSetup {
    pub event_idx: bool,
    /// (desc / 16, avail / 2, used / 4) instead of the defaults.
    pub rings: Option<(u16, u16, u16)>,
    pub size_log: u8,
    pub next_avail: u16,
}

impl QueueSetup {
    pub fn decode(i: &mut Input) -> Self {
        let flags = i.u8();
        let size_log = i.u8();
        let next_avail = i.u16();
        let rings = (flags & 2 != 0).then(|| (i.u16(), i.u16(), i.u16()));
        Self {
            event_idx: flags & 1 != 0,
            rings,
            size_log,
            next_avail,
        }
    }

    pub fn encode(&self, o: &mut Output) {
        o.u8(u8::from(self.event_idx) | if self.rings.is_some() { 2 } else { 0 })
            .u8(self.size_log)
            .u16(self.next_avail);
        if let Some((d, a, u)) = self.rings {
            o.u16(d).u16(a).u16(u);
        }
    }
}

/// One operation of the driver.
#[derive(Debug, Clone)]
pub enum Op {
    Publish {
        queue: u8,
        heads: Vec<u8>,
    },
    Desc {
        queue: u8,
        index: u8,
        desc: Desc,
    },
    Mem {
        addr: u32,
        bytes: Vec<u8>,
    },
    AvailIdx {
        queue: u8,
        idx: u16,
    },
    UsedEvent {
        queue: u8,
        value: u16,
    },
    /// A target operation (code - OPS); its arguments follow in the input.
    Target(u8),
}

impl Op {
    /// Decodes one operation; `target_ops` is how many the target has.
    pub fn decode(i: &mut Input, target_ops: u8) -> Self {
        let code = i.u8() % (OPS + target_ops);
        match code {
            0 => {
                let queue = i.u8();
                let count = i.u8();
                Op::Publish {
                    queue,
                    heads: i.bytes(usize::from(count)).to_vec(),
                }
            }
            1 => Op::Desc {
                queue: i.u8(),
                index: i.u8(),
                desc: Desc::decode(i),
            },
            2 => {
                let addr = i.u32();
                let n = i.u8();
                Op::Mem {
                    addr,
                    bytes: i.bytes(usize::from(n)).to_vec(),
                }
            }
            3 => Op::AvailIdx {
                queue: i.u8(),
                idx: i.u16(),
            },
            4 => Op::UsedEvent {
                queue: i.u8(),
                value: i.u16(),
            },
            c => Op::Target(c - OPS),
        }
    }

    pub fn encode(&self, o: &mut Output) {
        match self {
            Op::Publish { queue, heads } => {
                o.u8(0).u8(*queue).u8(heads.len() as u8).bytes(heads);
            }
            Op::Desc { queue, index, desc } => {
                o.u8(1).u8(*queue).u8(*index);
                desc.encode(o);
            }
            Op::Mem { addr, bytes } => {
                for (k, chunk) in bytes.chunks(255).enumerate() {
                    o.u8(2)
                        .u32(addr + 255 * k as u32)
                        .u8(chunk.len() as u8)
                        .bytes(chunk);
                }
            }
            Op::AvailIdx { queue, idx } => {
                o.u8(3).u8(*queue).u16(*idx);
            }
            Op::UsedEvent { queue, value } => {
                o.u8(4).u8(*queue).u16(*value);
            }
            Op::Target(t) => {
                o.u8(OPS + t);
            }
        }
    }
}

/// The driver's view of one queue.
struct DriverQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    /// The available index the driver last published.
    avail_idx: u16,
    setup: QueueSetup,
}

/// Guest memory and the driver side of `n` queues.
pub struct Driver {
    pub mem: GuestMemoryMmap,
    queues: Vec<DriverQueue>,
}

impl Driver {
    /// Sets up one queue per entry of `setups` (queue `q` gets the default
    /// rings at `q * QUEUE_STRIDE`).
    pub fn new(setups: &[QueueSetup]) -> Option<Self> {
        let mem = guest_memory()?;
        let queues = setups
            .iter()
            .enumerate()
            .map(|(q, s)| {
                let base = q as u64 * QUEUE_STRIDE;
                let (desc, avail, used) = match s.rings {
                    Some((d, a, u)) => (u64::from(d) * 16, u64::from(a) * 2, u64::from(u) * 4),
                    None => (base, base + 0x1000, base + 0x2000),
                };
                DriverQueue {
                    size: 1 << (s.size_log % 9).min(8),
                    desc,
                    avail,
                    used,
                    avail_idx: s.next_avail,
                    setup: *s,
                }
            })
            .collect::<Vec<_>>();
        let d = Self { mem, queues };
        for q in &d.queues {
            // Both rings start where the device starts.
            d.write(q.avail + 2, &q.avail_idx.to_le_bytes());
            d.write(q.used + 2, &q.avail_idx.to_le_bytes());
        }
        Some(d)
    }

    /// Guest writes outside RAM are dropped, like a DMA to nowhere.
    fn write(&self, addr: u64, bytes: &[u8]) {
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    /// The device's queue `q` as the transport would build it on DRIVER_OK,
    /// or `None` when the transport would refuse it.
    pub fn device_queue(&self, q: usize) -> Option<Queue> {
        let dq = self.queues.get(q)?;
        let mut queue = Queue::new(MAX_QUEUE_SIZE).ok()?;
        queue.try_set_size(dq.size).ok()?;
        queue
            .try_set_desc_table_address(GuestAddress(dq.desc))
            .ok()?;
        queue
            .try_set_avail_ring_address(GuestAddress(dq.avail))
            .ok()?;
        queue
            .try_set_used_ring_address(GuestAddress(dq.used))
            .ok()?;
        queue.set_event_idx(dq.setup.event_idx);
        queue.set_ready(true);
        if !queue.is_valid(&self.mem) {
            return None;
        }
        queue.set_next_avail(dq.setup.next_avail);
        queue.set_next_used(dq.setup.next_avail);
        Some(queue)
    }

    /// Applies a ring operation; returns `Some(t)` for target operation `t`.
    pub fn apply(&mut self, op: &Op) -> Option<u8> {
        let n = self.queues.len();
        let pick = |q: u8| usize::from(q) % n;
        match op {
            Op::Publish { queue, heads } => {
                let q = &mut self.queues[pick(*queue)];
                let (avail, size) = (q.avail, q.size);
                let mut idx = q.avail_idx;
                for &h in heads {
                    let slot = u64::from(idx % size);
                    let _ = self.mem.write_slice(
                        &u16::from(h).to_le_bytes(),
                        GuestAddress(avail + 4 + 2 * slot),
                    );
                    idx = idx.wrapping_add(1);
                }
                q.avail_idx = idx;
                self.write(avail + 2, &idx.to_le_bytes());
            }
            Op::Desc { queue, index, desc } => {
                let q = &self.queues[pick(*queue)];
                let at = q.desc + 16 * u64::from(u16::from(*index) % q.size);
                self.write(at, &desc.raw());
            }
            Op::Mem { addr: a, bytes } => self.write(addr(*a), bytes),
            Op::AvailIdx { queue, idx } => {
                let q = &mut self.queues[pick(*queue)];
                q.avail_idx = *idx;
                let at = q.avail + 2;
                self.write(at, &idx.to_le_bytes());
            }
            Op::UsedEvent { queue, value } => {
                let q = &self.queues[pick(*queue)];
                self.write(q.avail + 4 + 2 * u64::from(q.size), &value.to_le_bytes());
            }
            Op::Target(t) => return Some(*t),
        }
        None
    }
}
