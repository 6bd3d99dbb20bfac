//! Moving frames between the virtqueues and a [`NetBackend`] (virtio 1.2
//! §5.1.6). Pure queue logic: no threads, no epoll, so unit tests drive it
//! with crafted chains.
//!
//! Frames are copied through a host buffer: on receive the frame's length
//! (hence how many buffers it needs with MRG_RXBUF) is only known once it has
//! been read, and the copy keeps guest memory behind vm-memory's checks.
//!
//! Guest faults never stop the queue: a transmit chain that is not all
//! device-readable, lies outside RAM, loops, is shorter than the header or
//! longer than [`MAX_FRAME_LEN`] is returned unsent; a receive chain that is
//! not all device-writable, lies outside RAM or is shorter than the header
//! is returned with length 0 and the frame it was meant for is dropped.

use std::io::ErrorKind;
use std::ops::Deref;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::{NetBackend, MAX_FRAME_LEN, NET_HDR_LEN};

/// Frames up to this size are copied: cheaper than gathering a maximal
/// frame's worth of receive chains to read them in place.
const SMALL_FRAME: usize = 4096;
/// Offset of `num_buffers` in `virtio_net_hdr_v1` (§5.1.6).
const NUM_BUFFERS_OFFSET: usize = 10;
/// Frames moved per wake-up before other work (and the other queue) get a
/// turn; the TAP stays readable, so epoll wakes the worker again.
const BUDGET: usize = 256;

/// A guest buffer: address and length, checked to lie in guest RAM.
type Segment = (GuestAddress, u32);

fn in_ram(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    len == 0 || GuestMemoryBackend::check_range(mem, addr, len as usize)
}

/// The chain's buffers if they all lie in RAM and have direction
/// `write_only`, with their total length; otherwise why not.
fn segments<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    write_only: bool,
) -> Result<(Vec<Segment>, usize), &'static str>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut segs = Vec::new();
    let mut total = 0usize;
    let mut complete = false;
    for d in chain {
        complete = !d.has_next();
        if d.is_write_only() != write_only {
            return Err(if write_only {
                "receive buffer is device-readable"
            } else {
                "transmit buffer is device-writable"
            });
        }
        if !in_ram(mem, d.addr(), d.len()) {
            return Err("buffer outside guest RAM");
        }
        total = total
            .checked_add(d.len() as usize)
            .ok_or("chain length overflows")?;
        // No chain needs more than a maximal frame; stop early on absurd ones.
        if !write_only && total > MAX_FRAME_LEN {
            return Err("transmit frame longer than 65562 bytes");
        }
        if d.len() > 0 {
            segs.push((d.addr(), d.len()));
        }
    }
    if !complete {
        return Err("descriptor chain loops or is too long");
    }
    Ok((segs, total))
}

/// Serves every available transmit chain: each frame (header included) is
/// written to `backend` as it is; then asks the driver to kick again for the
/// next one. Returns whether the driver wants an interrupt (event-index
/// aware).
pub fn process_tx(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &dyn NetBackend,
    buf: &mut Vec<u8>,
) -> Result<bool, virtio_queue::Error> {
    let mut used_any = false;
    loop {
        used_any |= send_available(queue, mem, backend, buf)? > 0;
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(used_any && queue.needs_notification(mem)?)
}

/// Serves every available transmit chain and leaves the driver's kicks off:
/// for a caller that looks at the ring again soon anyway. Returns how many
/// chains were served and whether the driver wants an interrupt.
pub fn transmit_batch(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &dyn NetBackend,
    buf: &mut Vec<u8>,
) -> Result<(usize, bool), virtio_queue::Error> {
    let sent = send_available(queue, mem, backend, buf)?;
    Ok((sent, sent > 0 && queue.needs_notification(mem)?))
}

/// Sends each available chain's frame (a bad chain is dropped) and returns
/// the chains to the driver; kicks are left off. Returns the chain count.
fn send_available(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &dyn NetBackend,
    buf: &mut Vec<u8>,
) -> Result<usize, virtio_queue::Error> {
    crate::virtio::check_avail_index(queue, mem)?;
    queue.disable_notification(mem)?;
    let mut served = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        match frame_slices(chain, mem) {
            Ok(slices) => {
                if let Err(e) = backend.send_slices(&slices, buf) {
                    log::debug!("virtio-net: transmit dropped: {e}");
                }
            }
            Err(why) => log::debug!("virtio-net: bad transmit chain: {why}"),
        }
        // The device writes nothing into transmit buffers.
        queue.add_used(mem, head, 0)?;
        served += 1;
    }
    Ok(served)
}

/// A transmit chain's buffers as guest-memory slices (a buffer that
/// crosses a memory-region boundary gives several).
fn frame_slices<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
) -> Result<Vec<VolatileSlice<'_>>, &'static str>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let (segs, total) = segments(chain, mem, false)?;
    if total < NET_HDR_LEN {
        return Err("transmit chain shorter than the virtio-net header");
    }
    let mut slices = Vec::with_capacity(segs.len());
    for (addr, len) in segs {
        for slice in GuestMemoryBackend::get_slices(mem, addr, len as usize) {
            slices.push(slice.map_err(|_| "transmit buffer unreadable")?);
        }
    }
    Ok(slices)
}

/// What happened to one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Written into the receive queue.
    Delivered,
    /// Dropped; `used` says whether chains were returned to the driver.
    Dropped { used: bool },
    /// Not enough receive buffers: the frame waits, nothing was consumed.
    NoBuffers,
}

/// Receive-side state of one device: the host buffer and a frame that is
/// waiting for the driver to add buffers.
pub struct Rx {
    buf: Vec<u8>,
    pending: Option<usize>,
    /// The last frame was large: read the next one straight into guest
    /// buffers. Small frames (ACKs, pings) take the copying path, which
    /// looks at one receive chain instead of a maximal frame's worth.
    direct: bool,
    /// VIRTIO_NET_F_MRG_RXBUF was negotiated.
    pub mergeable: bool,
}

/// What one [`Rx::process`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxResult {
    /// The driver wants an interrupt for used receive buffers.
    pub notify: bool,
    /// A frame waits for receive buffers: stop polling the backend until
    /// the driver kicks the receive queue.
    pub starved: bool,
    /// The backend failed (not just "nothing to read"): stop polling it.
    pub backend_failed: bool,
}

impl Rx {
    pub fn new(mergeable: bool) -> Self {
        Self {
            // One byte more than a maximal frame, so an oversized one shows.
            buf: vec![0; MAX_FRAME_LEN + 1],
            pending: None,
            direct: false,
            mergeable,
        }
    }

    /// Whether a frame waits for buffers.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Moves frames from `backend` into the receive queue until the backend
    /// has none, the queue has no buffers, or the budget is spent.
    pub fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        backend: &dyn NetBackend,
    ) -> Result<RxResult, virtio_queue::Error> {
        let mut used_any = false;
        let mut starved = false;
        let mut backend_failed = false;
        crate::virtio::check_avail_index(queue, mem)?;
        for _ in 0..BUDGET {
            if self.pending.is_none() && self.direct {
                match receive_direct(queue, mem, backend, self.mergeable)? {
                    Direct::Delivered(len) => {
                        used_any = true;
                        self.direct = len > SMALL_FRAME;
                        continue;
                    }
                    Direct::Dropped => continue,
                    Direct::Empty => break,
                    Direct::Failed => {
                        backend_failed = true;
                        break;
                    }
                    Direct::NotPossible => {}
                }
            }
            let len = match self.pending {
                Some(len) => len,
                None => match backend.recv(&mut self.buf) {
                    Ok(n) if (NET_HDR_LEN..=MAX_FRAME_LEN).contains(&n) => n,
                    Ok(n) => {
                        log::debug!("virtio-net: backend frame of {n} bytes dropped");
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("virtio-net: reading the backend: {e}; receive stopped");
                        backend_failed = true;
                        break;
                    }
                },
            };
            self.pending = Some(len);
            let mut outcome = deliver(queue, mem, &mut self.buf[..len], self.mergeable)?;
            if outcome == Delivery::NoBuffers && arm_kick(queue, mem)? {
                // Buffers arrived while notifications were off.
                outcome = deliver(queue, mem, &mut self.buf[..len], self.mergeable)?;
            }
            match outcome {
                Delivery::Delivered => {
                    self.pending = None;
                    used_any = true;
                    self.direct = len > SMALL_FRAME;
                }
                Delivery::Dropped { used } => {
                    self.pending = None;
                    used_any |= used;
                }
                Delivery::NoBuffers => {
                    starved = true;
                    break;
                }
            }
        }
        let notify = used_any && queue.needs_notification(mem)?;
        Ok(RxResult {
            notify,
            starved,
            backend_failed,
        })
    }
}

/// What [`receive_direct`] did.
enum Direct {
    /// A frame of this many bytes went straight into the receive queue.
    Delivered(usize),
    /// A frame too short to carry the header was read and dropped.
    Dropped,
    /// The backend has no frame.
    Empty,
    /// The backend failed for good.
    Failed,
    /// Not enough (or bad) buffers posted, or the backend cannot: use the
    /// copying path. Nothing was consumed.
    NotPossible,
}

/// Reads one frame from the backend straight into the guest's receive
/// buffers (one copy fewer than through `Rx::buf`). Only when the posted
/// buffers hold a maximal frame, so a read can never be cut short: chains
/// are popped until they do, the frame fills the first ones, and the rest
/// are put back.
fn receive_direct(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &dyn NetBackend,
    mergeable: bool,
) -> Result<Direct, virtio_queue::Error> {
    let start = queue.next_avail();
    let mut chains: Vec<(u16, Vec<Segment>, usize)> = Vec::new();
    let mut capacity = 0usize;
    while capacity < MAX_FRAME_LEN {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        match segments(chain, mem, true) {
            Ok((segs, total)) if total >= NET_HDR_LEN => {
                capacity = capacity.saturating_add(total);
                chains.push((head, segs, total));
            }
            // The copying path deals with bad chains.
            _ => break,
        }
        if !mergeable {
            break;
        }
    }
    let give_back = |queue: &mut Queue| queue.set_next_avail(start);
    if capacity < MAX_FRAME_LEN {
        give_back(queue);
        return Ok(Direct::NotPossible);
    }
    let mut slices = Vec::new();
    for (_, segs, _) in &chains {
        for &(addr, len) in segs {
            for slice in GuestMemoryBackend::get_slices(mem, addr, len as usize) {
                match slice {
                    Ok(s) => slices.push(s),
                    Err(_) => {
                        give_back(queue);
                        return Ok(Direct::NotPossible);
                    }
                }
            }
        }
    }
    let n = match backend.recv_slices(&slices) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            give_back(queue);
            return Ok(Direct::Empty);
        }
        Err(e) if matches!(e.kind(), ErrorKind::Unsupported | ErrorKind::Interrupted) => {
            give_back(queue);
            return Ok(Direct::NotPossible);
        }
        Err(e) => {
            log::error!("virtio-net: reading the backend: {e}; receive stopped");
            give_back(queue);
            return Ok(Direct::Failed);
        }
    };
    drop(slices);
    if n < NET_HDR_LEN {
        // A runt: the buffers were scribbled on but are given back unused.
        log::debug!("virtio-net: backend frame of {n} bytes dropped");
        give_back(queue);
        return Ok(Direct::Dropped);
    }
    // The frame fills chains in order; count them and set num_buffers.
    let mut rest = n;
    let mut used = Vec::new();
    for (head, _, total) in &chains {
        if rest == 0 {
            break;
        }
        let len = rest.min(*total);
        used.push((*head, len as u32));
        rest -= len;
    }
    let num_buffers = u16::try_from(used.len()).unwrap_or(u16::MAX);
    write_at(
        mem,
        &chains[0].1,
        NUM_BUFFERS_OFFSET,
        &num_buffers.to_le_bytes(),
    );
    for (head, len) in &used {
        queue.add_used(mem, *head, *len)?;
    }
    queue.set_next_avail(start.wrapping_add(num_buffers));
    Ok(Direct::Delivered(n))
}

/// Writes `bytes` at `offset` into the buffer described by `segs` (which
/// holds at least `offset + bytes.len()` bytes).
fn write_at(mem: &GuestMemoryMmap, segs: &[Segment], mut offset: usize, mut bytes: &[u8]) {
    for &(addr, len) in segs {
        let len = len as usize;
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = bytes.len().min(len - offset);
        let _ = mem.write_slice(&bytes[..n], addr.unchecked_add(offset as u64));
        bytes = &bytes[n..];
        offset = 0;
        if bytes.is_empty() {
            return;
        }
    }
}

/// Asks the driver to kick the receive queue when it adds its next buffer;
/// true if buffers arrived meanwhile. With EVENT_IDX the event index must
/// be the driver's current avail index, not our next one: a large frame
/// may wait while some buffers are already posted (mergeable receive), and
/// an event index behind those would never be crossed, so the driver would
/// never kick and receive would stall for good.
fn arm_kick(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, virtio_queue::Error> {
    let ours = queue.next_avail();
    let theirs = queue.avail_idx(mem, Ordering::Acquire)?;
    queue.set_next_avail(theirs.0);
    let arrived = queue.enable_notification(mem);
    queue.set_next_avail(ours);
    arrived
}

/// Writes one frame (header first) into as many receive chains as it needs
/// (one without MRG_RXBUF) and sets the header's `num_buffers`.
fn deliver(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &mut [u8],
    mergeable: bool,
) -> Result<Delivery, virtio_queue::Error> {
    let start = queue.next_avail();
    let mut chains: Vec<(u16, Vec<Segment>, usize)> = Vec::new();
    let mut capacity = 0usize;
    while capacity < frame.len() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            queue.set_next_avail(start);
            return Ok(Delivery::NoBuffers);
        };
        let head = chain.head_index();
        match segments(chain, mem, true) {
            Ok((segs, total)) if total >= NET_HDR_LEN => {
                capacity = capacity.saturating_add(total);
                chains.push((head, segs, total));
            }
            bad => {
                let why = bad
                    .err()
                    .unwrap_or("receive buffer shorter than the header");
                log::debug!("virtio-net: bad receive chain: {why}; frame dropped");
                for (h, _, _) in &chains {
                    queue.add_used(mem, *h, 0)?;
                }
                queue.add_used(mem, head, 0)?;
                return Ok(Delivery::Dropped { used: true });
            }
        }
        if !mergeable {
            break;
        }
    }
    if capacity < frame.len() {
        // Without MRG_RXBUF one chain must hold the frame; keep the chain
        // for a smaller frame.
        log::debug!(
            "virtio-net: {}-byte frame does not fit a {capacity}-byte receive buffer; dropped",
            frame.len()
        );
        queue.set_next_avail(start);
        return Ok(Delivery::Dropped { used: false });
    }
    // At most the queue size (≤ 32768) chains were popped.
    let num_buffers = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&num_buffers.to_le_bytes());

    let mut rest: &[u8] = frame;
    for (head, segs, _) in chains {
        let mut written = 0u32;
        for (addr, len) in segs {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(len as usize);
            if mem.write_slice(&rest[..n], addr).is_err() {
                // Checked in RAM above; treat a failure like a bad chain.
                break;
            }
            rest = &rest[n..];
            written += n as u32;
        }
        queue.add_used(mem, head, written)?;
    }
    Ok(Delivery::Delivered)
}
