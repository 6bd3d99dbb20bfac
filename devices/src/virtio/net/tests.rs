//! virtio-net fed crafted descriptor chains through driver-side mock queues,
//! with a Unix datagram socket in place of the TAP, without a VM.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::rxtx::RxResult;
use super::*;
use crate::testing::{chain, wait_until, QueueInterrupts, SocketNet, F_NEXT, F_WRITE};

const MEM_SIZE: usize = 0x40_0000;
const RXQ: u64 = 0;
const TXQ: u64 = 0x8000;
const BUF: u64 = 0x10_0000;
const CANARY: u8 = 0x5a;
const QSIZE: u16 = 16;

fn memory() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&vec![CANARY; MEM_SIZE - 0x10_0000], GuestAddress(0x10_0000))
        .unwrap();
    mem
}

/// One-descriptor chains, each on its own, from table index `start`.
fn singles(descs: &[(u64, u32, bool)]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .map(|&(addr, len, w)| {
            RawDescriptor::from(SplitDescriptor::new(
                addr,
                len,
                if w { F_WRITE } else { 0 },
                0,
            ))
        })
        .collect()
}

fn used(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let idx: u16 = mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
    (0..u64::from(idx))
        .map(|i| {
            let at = vq.used_addr().unchecked_add(4 + i * 8);
            (
                mem.read_obj::<u32>(at).unwrap(),
                mem.read_obj::<u32>(at.unchecked_add(4)).unwrap(),
            )
        })
        .collect()
}

fn used_lens(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<u32> {
    used(mem, vq).into_iter().map(|(_, len)| len).collect()
}

fn bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// A frame as the TAP delivers it: a header (num_buffers left as junk) and
/// a recognisable payload.
fn frame(payload_len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN + payload_len];
    f[0] = 1; // NEEDS_CSUM: must reach the guest unchanged
    f[4..6].copy_from_slice(&1448u16.to_le_bytes());
    f[10] = 0xee;
    f[11] = 0xee;
    for (i, b) in f[NET_HDR_LEN..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(seed);
    }
    f
}

fn with_num_buffers(mut f: Vec<u8>, n: u16) -> Vec<u8> {
    f[10..12].copy_from_slice(&n.to_le_bytes());
    f
}

fn assert_untouched_except(mem: &GuestMemoryMmap, allowed: &[(u64, usize)]) {
    let all = bytes(mem, 0x10_0000, MEM_SIZE - 0x10_0000);
    for (i, b) in all.iter().enumerate() {
        let a = 0x10_0000 + i as u64;
        if !allowed.iter().any(|&(s, l)| a >= s && a < s + l as u64) {
            assert_eq!(*b, CANARY, "guest byte {a:#x} was touched");
        }
    }
}

fn received(peer: &UnixDatagram) -> Vec<Vec<u8>> {
    peer.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    while let Ok(n) = peer.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

// ---------------------------------------------------------------- transmit

fn run_tx(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (Vec<u32>, Vec<Vec<u8>>) {
    let (backend, peer) = SocketNet::pair();
    let vq = MockSplitQueue::create(mem, GuestAddress(TXQ), QSIZE);
    vq.add_desc_chains(descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let mut buf = Vec::new();
    let notify = process_tx(&mut q, mem, backend.as_ref(), &mut buf).unwrap();
    assert!(notify, "the driver must be told about completions");
    (used_lens(mem, &vq), received(&peer))
}

/// The used ring's flags word: bit 0 (VRING_USED_F_NO_NOTIFY) set means the
/// device asks the driver not to kick.
fn used_flags(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    mem.read_obj(vq.used_addr()).unwrap()
}

#[test]
fn a_transmit_batch_leaves_kicks_off_and_process_tx_turns_them_back_on() {
    let mem = memory();
    let (backend, peer) = SocketNet::pair();
    let vq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QSIZE);
    let f = frame(60, 4);
    mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    vq.add_desc_chains(&singles(&[(BUF, f.len() as u32, false)]), 0)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let mut buf = Vec::new();

    let (sent, notify) = transmit_batch(&mut q, &mem, backend.as_ref(), &mut buf).unwrap();
    assert_eq!((sent, notify), (1, true));
    assert_eq!(used_flags(&mem, &vq) & 1, 1, "kicks must stay off");
    assert_eq!(received(&peer), vec![f]);

    // Nothing new: no chain, no interrupt; kicks still off.
    let (sent, notify) = transmit_batch(&mut q, &mem, backend.as_ref(), &mut buf).unwrap();
    assert_eq!((sent, notify), (0, false));
    assert_eq!(used_flags(&mem, &vq) & 1, 1);

    process_tx(&mut q, &mem, backend.as_ref(), &mut buf).unwrap();
    assert_eq!(used_flags(&mem, &vq) & 1, 0, "kicks must be back on");
}

#[test]
fn transmit_sends_header_and_frame_unchanged() {
    let mem = memory();
    let f = frame(100, 3);
    mem.write_slice(&f[..NET_HDR_LEN], GuestAddress(BUF))
        .unwrap();
    mem.write_slice(&f[NET_HDR_LEN..], GuestAddress(BUF + 0x1000))
        .unwrap();
    // Header and data apart, then both in one descriptor (VERSION_1 any layout).
    let mut descs = chain(&[(BUF, 12, false), (BUF + 0x1000, 100, false)], 0);
    mem.write_slice(&f, GuestAddress(BUF + 0x2000)).unwrap();
    descs.extend(singles(&[(BUF + 0x2000, f.len() as u32, false)]));
    let (used, sent) = run_tx(&mem, &descs);
    assert_eq!(used, vec![0, 0]);
    assert_eq!(sent, vec![f.clone(), f]);
}

#[test]
fn bad_transmit_chains_are_returned_unsent_and_the_queue_keeps_serving() {
    let mem = memory();
    let good = frame(60, 9);
    mem.write_slice(&good, GuestAddress(BUF)).unwrap();
    let descs = singles(&[
        // device-writable buffer in a transmit chain
        (BUF, 72, true),
        // outside guest RAM, straddling its end, wrapping the address space
        (0x7000_0000, 72, false),
        (MEM_SIZE as u64 - 8, 72, false),
        (u64::MAX - 10, 72, false),
        // shorter than the virtio-net header
        (BUF, 11, false),
        // longer than a maximal frame
        (BUF, MAX_FRAME_LEN as u32 + 1, false),
        (BUF, u32::MAX, false),
        // and a good one
        (BUF, 72, false),
    ]);
    let (used, sent) = run_tx(&mem, &descs);
    assert_eq!(used, vec![0; 8]);
    assert_eq!(sent, vec![good]);
    assert_untouched_except(&mem, &[(BUF, 72)]);
}

#[test]
fn transmit_chain_too_long_across_descriptors_is_dropped() {
    let mem = memory();
    let descs = chain(
        &[
            (BUF, 12, false),
            (BUF + 0x1_0000, 65_000, false),
            (BUF + 0x3_0000, 1_000, false),
        ],
        0,
    );
    let (used, sent) = run_tx(&mem, &descs);
    assert_eq!(used, vec![0]);
    assert!(sent.is_empty());
}

#[test]
fn looping_transmit_chain_is_dropped_after_a_good_one_is_sent() {
    let mem = memory();
    let good = frame(20, 1);
    mem.write_slice(&good, GuestAddress(BUF + 0x1000)).unwrap();
    // A good chain at 0, then 1 -> 2 -> 1 -> ...
    let descs = vec![
        RawDescriptor::from(SplitDescriptor::new(BUF + 0x1000, 32, 0, 0)),
        RawDescriptor::from(SplitDescriptor::new(BUF, 12, F_NEXT, 2)),
        RawDescriptor::from(SplitDescriptor::new(BUF, 12, F_NEXT, 1)),
    ];
    let (used, sent) = run_tx(&mem, &descs);
    assert_eq!(used, vec![0, 0]);
    assert_eq!(sent, vec![good]);
}

#[test]
fn transmit_ring_at_address_zero_is_an_error_not_an_endless_loop() {
    // Found by fuzz/virtio_net_tx_rx: virtio-queue pops nothing from an
    // available ring at 0 while enable_notification sees its entries.
    let mem = memory();
    let mut q = Queue::new(QSIZE).unwrap();
    q.try_set_desc_table_address(GuestAddress(TXQ)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(0)).unwrap();
    q.try_set_used_ring_address(GuestAddress(TXQ + 0x1000))
        .unwrap();
    q.set_ready(true);
    mem.write_obj::<u16>(1, GuestAddress(2)).unwrap();
    let (backend, _peer) = SocketNet::pair();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let res = process_tx(&mut q, &mem, backend.as_ref(), &mut Vec::new());
        let _ = done_tx.send(res.is_err());
    });
    let failed = done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("process_tx must return on a ring at address 0");
    assert!(failed);
}

// ----------------------------------------------------------------- receive

struct RxRig {
    mem: GuestMemoryMmap,
    backend: Arc<SocketNet>,
    peer: UnixDatagram,
    rx: Rx,
}

impl RxRig {
    fn new(mergeable: bool) -> Self {
        let (backend, peer) = SocketNet::pair();
        RxRig {
            mem: memory(),
            backend,
            peer,
            rx: Rx::new(mergeable),
        }
    }

    fn send(&self, f: &[u8]) {
        self.peer.send(f).unwrap();
    }

    fn process(&mut self, q: &mut Queue) -> RxResult {
        self.rx
            .process(q, &self.mem, self.backend.as_ref())
            .unwrap()
    }
}

#[test]
fn receive_without_mergeable_buffers_writes_one_chain_with_num_buffers_1() {
    let mut r = RxRig::new(false);
    let mem = r.mem.clone();
    let vq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    vq.add_desc_chains(&singles(&[(BUF, 1526, true)]), 0)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let f = frame(60, 5);
    r.send(&f);
    let res = r.process(&mut q);
    assert!(res.notify && !res.starved);
    assert_eq!(used_lens(&r.mem, &vq), vec![72]);
    assert_eq!(bytes(&r.mem, BUF, 72), with_num_buffers(f, 1));
    assert_untouched_except(&r.mem, &[(BUF, 72)]);
}

#[test]
fn receive_with_mergeable_buffers_spreads_a_frame_and_counts_them() {
    let mut r = RxRig::new(true);
    let mem = r.mem.clone();
    let vq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    // Three 1500-byte chains, the second made of two descriptors.
    let mut descs = singles(&[(BUF, 1500, true)]);
    descs.extend(chain(
        &[(BUF + 0x1000, 700, true), (BUF + 0x2000, 800, true)],
        1,
    ));
    descs.extend(singles(&[
        (BUF + 0x3000, 1500, true),
        (BUF + 0x4000, 1500, true),
    ]));
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let f = frame(3000, 11); // 3012 bytes: 1500 + 1500 + 12
    r.send(&f);
    let res = r.process(&mut q);
    assert!(res.notify && !res.starved);
    assert_eq!(
        used(&r.mem, &vq),
        vec![(0, 1500), (1, 1500), (3, 12)],
        "heads and lengths"
    );
    let want = with_num_buffers(f, 3);
    let mut got = bytes(&r.mem, BUF, 1500);
    got.extend(bytes(&r.mem, BUF + 0x1000, 700));
    got.extend(bytes(&r.mem, BUF + 0x2000, 800));
    got.extend(bytes(&r.mem, BUF + 0x3000, 12));
    assert_eq!(got, want);
    assert_untouched_except(
        &r.mem,
        &[
            (BUF, 1500),
            (BUF + 0x1000, 700),
            (BUF + 0x2000, 800),
            (BUF + 0x3000, 12),
        ],
    );
    // The fourth chain is still available for the next frame.
    let small = frame(10, 2);
    r.send(&small);
    r.process(&mut q);
    assert_eq!(used(&r.mem, &vq)[3], (4, 22));
    assert_eq!(bytes(&r.mem, BUF + 0x4000, 22), with_num_buffers(small, 1));
}

/// A frame that needs more mergeable buffers than are posted waits; the
/// driver must then be asked to kick at its *current* avail index. An
/// event index left at our position (behind the posted buffers) is never
/// crossed again, and receive stalled for good (seen with iperf3 -R).
#[test]
fn a_frame_waiting_for_more_buffers_asks_for_a_kick_at_the_drivers_index() {
    use virtio_queue::QueueT;
    let mut r = RxRig::new(true);
    let mem = r.mem.clone();
    let vq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    vq.add_desc_chains(
        &singles(&[(BUF, 1500, true), (BUF + 0x1000, 1500, true)]),
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_event_idx(true);
    r.send(&frame(4000, 3));
    let res = r.process(&mut q);
    assert!(res.starved && !res.notify, "{res:?}");
    assert!(used(&r.mem, &vq).is_empty(), "nothing consumed");
    assert_eq!(q.next_avail(), 0, "our position stays at the waiting frame");
    let avail_event_at = vq.used_addr().unchecked_add(4 + 8 * u64::from(QSIZE));
    let avail_event: u16 = r.mem.read_obj(avail_event_at).unwrap();
    assert_eq!(
        avail_event, 2,
        "kick when the driver adds buffer #2 (its next)"
    );
}

/// With a maximal frame's worth of buffers posted, frames are read
/// straight into them: the first chains get the frame, the rest stay
/// available for the next one, and num_buffers is set in guest memory.
#[test]
fn frames_are_read_straight_into_posted_buffers_and_the_rest_kept() {
    let mut r = RxRig::new(true);
    let mem = r.mem.clone();
    let vq = MockSplitQueue::create(&mem, GuestAddress(RXQ), 32);
    // Twelve 8 KiB buffers: 96 KiB, more than a maximal frame.
    let chunks: Vec<(u64, u32, bool)> = (0..12).map(|i| (BUF + i * 0x2000, 8192, true)).collect();
    vq.add_desc_chains(&singles(&chunks), 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    // The first large frame is copied (and switches to reading in place),
    // the second is read in place, the small one after it too (and
    // switches back).
    let big = frame(5000, 7);
    let big2 = frame(4500, 9);
    let small = frame(100, 8);
    r.send(&big);
    r.send(&big2);
    r.send(&small);
    let res = r.process(&mut q);
    assert!(res.notify && !res.starved, "{res:?}");
    assert_eq!(used(&r.mem, &vq), vec![(0, 5012), (1, 4512), (2, 112)]);
    assert_eq!(bytes(&r.mem, BUF, 5012), with_num_buffers(big, 1));
    assert_eq!(bytes(&r.mem, BUF + 0x2000, 4512), with_num_buffers(big2, 1));
    assert_eq!(bytes(&r.mem, BUF + 0x4000, 112), with_num_buffers(small, 1));
    use virtio_queue::QueueT;
    assert_eq!(q.next_avail(), 3, "nine chains still posted");
    assert_eq!(
        r.backend.slice_reads.load(Ordering::SeqCst),
        2,
        "big2 and small in place"
    );
}

#[test]
fn a_maximal_frame_fits_mergeable_pages() {
    let mut r = RxRig::new(true);
    let mem = r.mem.clone();
    let vq = MockSplitQueue::create(&mem, GuestAddress(RXQ), 32);
    let pages: Vec<(u64, u32, bool)> = (0..17).map(|i| (BUF + i * 0x1000, 4096, true)).collect();
    vq.add_desc_chains(&singles(&pages), 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let f = frame(MAX_FRAME_LEN - NET_HDR_LEN, 4);
    r.send(&f);
    let res = r.process(&mut q);
    assert!(res.notify && !res.starved);
    let mut want = vec![4096; 16];
    want.push((MAX_FRAME_LEN - 16 * 4096) as u32);
    assert_eq!(used_lens(&r.mem, &vq), want);
    assert_eq!(bytes(&r.mem, BUF, MAX_FRAME_LEN), with_num_buffers(f, 17));
}

#[test]
fn no_receive_buffers_keeps_the_frame_until_the_driver_adds_some() {
    let mut r = RxRig::new(true);
    let mem = r.mem.clone();
    let vq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    let mut q: Queue = vq.create_queue().unwrap();
    let f = frame(2000, 8);
    r.send(&f);
    let res = r.process(&mut q);
    assert_eq!(
        res,
        RxResult {
            notify: false,
            starved: true,
            backend_failed: false
        }
    );
    assert!(r.rx.has_pending());
    // Only one buffer: still not enough for 2012 bytes, nothing consumed.
    vq.add_desc_chains(&singles(&[(BUF, 1500, true)]), 0)
        .unwrap();
    assert!(r.process(&mut q).starved);
    assert!(used_lens(&r.mem, &vq).is_empty());
    assert_untouched_except(&r.mem, &[]);
    // A second buffer: the same frame is delivered, and the queue asks
    // nothing more of the backend than needed.
    vq.add_desc_chains(&singles(&[(BUF + 0x1000, 1500, true)]), 1)
        .unwrap();
    let res = r.process(&mut q);
    assert!(res.notify && !res.starved && !r.rx.has_pending());
    assert_eq!(used_lens(&r.mem, &vq), vec![1500, 512]);
    let mut got = bytes(&r.mem, BUF, 1500);
    got.extend(bytes(&r.mem, BUF + 0x1000, 512));
    assert_eq!(got, with_num_buffers(f, 2));
}

#[test]
fn bad_receive_chains_drop_the_frame_and_return_with_length_0() {
    for (bad, what) in [
        ((BUF + 0x8000, 1500, false), "device-readable"),
        ((0x7000_0000, 1500, true), "outside RAM"),
        (
            (MEM_SIZE as u64 - 100, 1500, true),
            "straddles the end of RAM",
        ),
        ((BUF + 0x8000, 11, true), "shorter than the header"),
    ] {
        for mergeable in [false, true] {
            let mut r = RxRig::new(mergeable);
            let mem = r.mem.clone();
            let vq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
            vq.add_desc_chains(&singles(&[bad, (BUF, 1500, true)]), 0)
                .unwrap();
            let mut q: Queue = vq.create_queue().unwrap();
            let (dropped, kept) = (frame(100, 1), frame(50, 2));
            r.send(&dropped);
            r.send(&kept);
            let res = r.process(&mut q);
            assert!(res.notify && !res.starved, "{what}");
            assert_eq!(used_lens(&r.mem, &vq), vec![0, 62], "{what}");
            assert_eq!(bytes(&r.mem, BUF, 62), with_num_buffers(kept, 1), "{what}");
            assert_untouched_except(&r.mem, &[(BUF, 62)]);
        }
    }
}

#[test]
fn a_bad_chain_in_the_middle_of_a_mergeable_frame_returns_all_its_chains() {
    let mut r = RxRig::new(true);
    let mem = r.mem.clone();
    let vq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    vq.add_desc_chains(
        &singles(&[
            (BUF, 1000, true),
            (BUF + 0x1000, 1000, false),
            (BUF + 0x2000, 1000, true),
        ]),
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    r.send(&frame(1500, 1));
    r.send(&frame(20, 2));
    r.process(&mut q);
    assert_eq!(used(&r.mem, &vq), vec![(0, 0), (1, 0), (2, 32)]);
    assert_untouched_except(&r.mem, &[(BUF + 0x2000, 32)]);
}

#[test]
fn looping_receive_chain_is_returned_with_length_0() {
    let mut r = RxRig::new(false);
    let mem = r.mem.clone();
    let vq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    // A good chain at 0, then 1 -> 2 -> 1 -> ...
    let descs = vec![
        RawDescriptor::from(SplitDescriptor::new(BUF + 0x2000, 1500, F_WRITE, 0)),
        RawDescriptor::from(SplitDescriptor::new(BUF, 100, F_WRITE | F_NEXT, 2)),
        RawDescriptor::from(SplitDescriptor::new(BUF + 0x1000, 100, F_WRITE | F_NEXT, 1)),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    r.send(&frame(30, 1));
    r.send(&frame(30, 2));
    let res = r.process(&mut q);
    assert!(res.notify);
    assert_eq!(used(&r.mem, &vq), vec![(0, 42), (1, 0)]);
    assert_untouched_except(&r.mem, &[(BUF + 0x2000, 42)]);
}

#[test]
fn without_mergeable_buffers_a_frame_too_big_for_the_chain_is_dropped_and_the_chain_kept() {
    let mut r = RxRig::new(false);
    let mem = r.mem.clone();
    let vq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    vq.add_desc_chains(&singles(&[(BUF, 1526, true)]), 0)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    r.send(&frame(4000, 1));
    r.send(&frame(40, 2));
    let res = r.process(&mut q);
    assert!(!res.starved);
    assert_eq!(used_lens(&r.mem, &vq), vec![52]);
    assert_eq!(bytes(&r.mem, BUF, 52), with_num_buffers(frame(40, 2), 1));
}

#[test]
fn backend_frames_outside_the_size_limits_are_dropped() {
    let mut r = RxRig::new(true);
    let mem = r.mem.clone();
    let vq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    let pages: Vec<(u64, u32, bool)> = (0..16).map(|i| (BUF + i * 0x1000, 4096, true)).collect();
    vq.add_desc_chains(&singles(&pages), 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    r.send(&[0u8; 5]);
    r.send(&vec![0u8; MAX_FRAME_LEN + 1]);
    r.send(&frame(10, 3));
    r.process(&mut q);
    assert_eq!(used_lens(&r.mem, &vq), vec![22]);
}

#[test]
fn offloads_follow_the_accepted_guest_features() {
    let f = |bits: &[u32]| bits.iter().fold(0u64, |f, b| f | 1 << b);
    assert_eq!(offload_flags(0), 0);
    assert_eq!(
        offload_flags(f(&[
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6
        ])),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    );
    // TSO without checksum offload is not a valid combination for a TAP.
    assert_eq!(offload_flags(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
    // Host-side (transmit) features change nothing on the TAP.
    assert_eq!(
        offload_flags(f(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4])),
        0
    );
}

#[test]
fn config_space_has_mac_and_link_up_and_features_are_offered() {
    let (backend, _peer) = SocketNet::pair();
    let net = Net::new(
        backend,
        NetOptions {
            name: "net0".into(),
            mac: [0x52, 0x54, 0, 1, 2, 3],
        },
    );
    assert_eq!(net.device_type(), TYPE_NET);
    assert_eq!(net.queue_max_sizes(), vec![RX_QUEUE_SIZE, TX_QUEUE_SIZE]);
    let mut c = [0u8; 10];
    net.read_config(0, &mut c);
    assert_eq!(c, [0x52, 0x54, 0, 1, 2, 3, 1, 0, 1, 0]);
    let mut past = [0xffu8; 4];
    net.read_config(8, &mut past);
    assert_eq!(past, [1, 0, 0, 0]);
    let f = net.features();
    for bit in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_STATUS,
        VIRTIO_F_RING_EVENT_IDX,
    ] {
        assert_ne!(f & 1 << bit, 0, "feature {bit}");
    }
    // No control queue, no multiqueue.
    assert_eq!(f & (1 << 17 | 1 << 22), 0);
}

// ------------------------------------------------------- the I/O thread

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(5), cond);
}

/// A device named `net-test` on `backend`, not yet activated.
fn test_net(backend: Arc<dyn NetBackend>) -> Net {
    Net::new(
        backend,
        NetOptions {
            name: "net-test".into(),
            mac: [0x52, 0x54, 0, 0, 0, 1],
        },
    )
}

/// Activates `net` on the mock receive and transmit queues without
/// EVENT_IDX (every used buffer asks for an interrupt); returns the
/// queues' kicks.
fn activate_without_event_idx(
    net: &mut Net,
    mem: &GuestMemoryMmap,
    [rxq, txq]: [&MockSplitQueue<GuestMemoryMmap>; 2],
    interrupt: Arc<dyn VirtioInterrupt>,
) -> [EventFd; 2] {
    let rx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let tx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let features = net.features() | 1 << VIRTIO_F_VERSION_1;
    let features = features & !(1 << VIRTIO_F_RING_EVENT_IDX);
    net.activate(Activation {
        mem: mem.clone(),
        queues: vec![
            ActiveQueue {
                index: RX_QUEUE,
                queue: rxq.create_queue().unwrap(),
                kick: rx_kick.try_clone().unwrap(),
            },
            ActiveQueue {
                index: TX_QUEUE,
                queue: txq.create_queue().unwrap(),
                kick: tx_kick.try_clone().unwrap(),
            },
        ],
        interrupt,
        features,
    })
    .unwrap();
    [rx_kick, tx_kick]
}

#[test]
fn io_thread_moves_frames_both_ways_and_does_not_spin_without_buffers() {
    let mem = memory();
    let (backend, peer) = SocketNet::pair();
    let mut net = test_net(backend.clone());
    let rxq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QSIZE);
    let irqs = Arc::new(QueueInterrupts::default());
    let [rx_kick, tx_kick] = activate_without_event_idx(&mut net, &mem, [&rxq, &txq], irqs.clone());
    assert_eq!(
        *backend.offload.lock().unwrap(),
        Some(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    );

    // A frame arrives while the driver has no receive buffers: the thread
    // reads it once and then sleeps instead of polling the backend.
    let f = frame(100, 6);
    peer.send(&f).unwrap();
    wait_for("the frame to be read", || {
        backend.recv_calls.load(Ordering::SeqCst) >= 1
    });
    std::thread::sleep(Duration::from_millis(100));
    let calls = backend.recv_calls.load(Ordering::SeqCst);
    assert!(
        calls <= 2,
        "the I/O thread polled the backend {calls} times"
    );
    // More frames arriving do not wake it either.
    peer.send(&frame(10, 7)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(backend.recv_calls.load(Ordering::SeqCst), calls);

    // Buffers and a kick: both frames come in.
    rxq.add_desc_chains(
        &singles(&[(BUF, 2048, true), (BUF + 0x1000, 2048, true)]),
        0,
    )
    .unwrap();
    rx_kick.write(1).unwrap();
    wait_for("two used receive buffers", || {
        used_lens(&mem, &rxq).len() == 2
    });
    assert_eq!(used_lens(&mem, &rxq), vec![112, 22]);
    assert_eq!(bytes(&mem, BUF, 112), with_num_buffers(f, 1));
    wait_for("a receive interrupt", || irqs.count(RX_QUEUE) >= 1);

    // Transmit: a kick sends the frame to the backend.
    let out = frame(64, 9);
    mem.write_slice(&out, GuestAddress(BUF + 0x8000)).unwrap();
    txq.add_desc_chains(&singles(&[(BUF + 0x8000, 76, false)]), 0)
        .unwrap();
    let kicked_at = std::time::Instant::now();
    tx_kick.write(1).unwrap();
    peer.set_nonblocking(false).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 256];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(buf[..n], out[..]);

    // The ring stays quiet: after TX_QUIET_LOOKS empty looks the thread
    // turns the driver's kicks back on, and the next frame goes out at its
    // kick. Not before: the looks' timer starts after the kick and never
    // fires early. Watched closely, so that kicks back on after a single
    // look would be seen as too early.
    while used_flags(&mem, &txq) & 1 != 0 {
        assert!(
            kicked_at.elapsed() < Duration::from_secs(5),
            "transmit kicks never came back on"
        );
        std::thread::yield_now();
    }
    let quiet = kicked_at.elapsed();
    assert!(
        quiet >= TX_REPOLL * TX_QUIET_LOOKS,
        "kicks back on {quiet:?} after the kick, before {TX_QUIET_LOOKS} looks"
    );
    wait_for("a transmit interrupt", || irqs.count(TX_QUEUE) >= 1);
    let out = frame(80, 10);
    mem.write_slice(&out, GuestAddress(BUF + 0x9000)).unwrap();
    txq.add_desc_chains(&singles(&[(BUF + 0x9000, 92, false)]), 1)
        .unwrap();
    tx_kick.write(1).unwrap();
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(buf[..n], out[..]);

    // Reset stops the thread; the device can be dropped.
    net.reset();
}

#[test]
fn activation_without_both_queues_fails() {
    let mem = memory();
    let (backend, _peer) = SocketNet::pair();
    let mut net = test_net(backend);
    let rxq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    let err = net
        .activate(Activation {
            mem: mem.clone(),
            queues: vec![ActiveQueue {
                index: RX_QUEUE,
                queue: rxq.create_queue().unwrap(),
                kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            }],
            interrupt: Arc::new(QueueInterrupts::default()),
            features: 0,
        })
        .expect_err("activation must fail");
    assert!(
        matches!(err, ActivateError::MissingQueue(TX_QUEUE)),
        "{err}"
    );
}

#[test]
fn an_avail_index_more_than_a_queue_ahead_is_an_error_not_a_hang() {
    let mem = memory();
    let (backend, peer) = SocketNet::pair();
    for (base, is_tx) in [(TXQ, true), (RXQ, false)] {
        let vq = MockSplitQueue::create(&mem, GuestAddress(base), QSIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        mem.write_obj(QSIZE + 1, vq.avail_addr().unchecked_add(2))
            .unwrap();
        let err = if is_tx {
            process_tx(&mut q, &mem, backend.as_ref(), &mut Vec::new()).unwrap_err()
        } else {
            peer.send(&frame(10, 1)).unwrap();
            Rx::new(true)
                .process(&mut q, &mem, backend.as_ref())
                .unwrap_err()
        };
        assert!(
            matches!(err, virtio_queue::Error::InvalidAvailRingIndex),
            "{err}"
        );
    }
}

// ------------------------------------------------- arbitrary guest rings

/// xorshift64: deterministic pseudo-random input.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes a random split ring (descriptor table, avail ring, indirect
/// tables, buffers) biased towards almost-valid values.
fn random_ring(mem: &GuestMemoryMmap, base: u64, rnd: &mut Rand) {
    let addr = |rnd: &mut Rand| match rnd.below(6) {
        0 => rnd.next(),
        1 => MEM_SIZE as u64 - rnd.below(64),
        2 => base + rnd.below(0x3000), // the ring itself
        _ => BUF + rnd.below(0x4_0000),
    };
    let len = |rnd: &mut Rand| match rnd.below(6) {
        0 => rnd.next() as u32,
        1 => 12,
        2 => 0,
        3 => MAX_FRAME_LEN as u32 + 1,
        _ => rnd.below(4096) as u32,
    };
    for i in 0..u64::from(QSIZE) {
        let (a, l) = (addr(rnd), len(rnd));
        let d = SplitDescriptor::new(a, l, rnd.below(8) as u16, rnd.below(20) as u16);
        mem.write_obj(RawDescriptor::from(d), GuestAddress(base + 16 * i))
            .unwrap();
    }
    // Indirect tables land in the buffer area: fill some of it with descriptors.
    for i in 0..64u64 {
        let (a, l) = (addr(rnd), len(rnd));
        let d = SplitDescriptor::new(a, l, rnd.below(8) as u16, rnd.below(20) as u16);
        mem.write_obj(
            RawDescriptor::from(d),
            GuestAddress(BUF + 16 * rnd.below(0x4000) + i % 16),
        )
        .unwrap();
    }
    let avail = base + 0x1000;
    mem.write_obj(0u16, GuestAddress(avail)).unwrap();
    let idx = if rnd.below(8) == 0 {
        rnd.next() as u16
    } else {
        rnd.below(u64::from(QSIZE) + 1) as u16
    };
    mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
    for i in 0..u64::from(QSIZE) {
        mem.write_obj(rnd.below(20) as u16, GuestAddress(avail + 4 + 2 * i))
            .unwrap();
    }
}

fn ring_queue(mem: &GuestMemoryMmap, base: u64, event_idx: bool) -> Queue {
    use virtio_queue::QueueT;
    let mut q = Queue::new(QSIZE).unwrap();
    q.try_set_desc_table_address(GuestAddress(base)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(base + 0x1000))
        .unwrap();
    q.try_set_used_ring_address(GuestAddress(base + 0x2000))
        .unwrap();
    q.set_event_idx(event_idx);
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

#[test]
fn arbitrary_rings_and_frames_never_panic_or_hang() {
    let mut rnd = Rand(0x1234_5678_9abc_def1);
    for round in 0..400 {
        let mem = memory();
        random_ring(&mem, TXQ, &mut rnd);
        random_ring(&mem, RXQ, &mut rnd);
        let (backend, peer) = SocketNet::pair();
        let event_idx = round % 2 == 0;
        let mut tx = ring_queue(&mem, TXQ, event_idx);
        let mut buf = Vec::new();
        // Errors (an avail index too far ahead) are fine; panics are not.
        let _ = process_tx(&mut tx, &mem, backend.as_ref(), &mut buf);
        for f in received(&peer) {
            assert!((NET_HDR_LEN..=MAX_FRAME_LEN).contains(&f.len()));
        }
        let mut rx_queue = ring_queue(&mem, RXQ, event_idx);
        let mut rx = Rx::new(round % 3 != 0);
        for _ in 0..3 {
            let n = match rnd.below(4) {
                0 => rnd.below(NET_HDR_LEN as u64 + 1),
                1 => MAX_FRAME_LEN as u64 - rnd.below(2),
                _ => rnd.below(6000),
            };
            peer.send(&vec![0xab; n as usize]).unwrap();
        }
        let _ = rx.process(&mut rx_queue, &mem, backend.as_ref());
    }
}

#[test]
fn what_a_transmit_brings_back_is_received_before_the_completion_is_signalled() {
    let mem = memory();
    let backend = SocketNet::loopback();
    let mut net = test_net(backend.clone());
    let rxq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QSIZE);
    rxq.add_desc_chains(&singles(&[(BUF, 2048, true)]), 0)
        .unwrap();
    let irqs = Arc::new(QueueInterrupts::default());
    let [_, tx_kick] = activate_without_event_idx(&mut net, &mem, [&rxq, &txq], irqs.clone());
    // The I/O thread's start-up looks at the (empty) backend once and then
    // polls it; a kick is only handled after that.
    wait_for("the first look at the backend", || {
        backend.recv_calls.load(Ordering::SeqCst) >= 1
    });

    let ping = frame(84, 3);
    mem.write_slice(&ping, GuestAddress(BUF + 0x8000)).unwrap();
    txq.add_desc_chains(&singles(&[(BUF + 0x8000, ping.len() as u32, false)]), 0)
        .unwrap();
    tx_kick.write(1).unwrap();
    wait_for("the reply and both interrupts", || irqs.order().len() >= 2);
    assert_eq!(used_lens(&mem, &rxq), vec![ping.len() as u32]);
    assert_eq!(bytes(&mem, BUF, ping.len()), with_num_buffers(ping, 1));
    let order = irqs.order();
    assert_eq!(order[..2], [RX_QUEUE, TX_QUEUE], "reply first: {order:?}");
    net.reset();
}
