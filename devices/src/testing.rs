//! Test doubles shared by device unit tests and the fuzz targets (feature
//! `test-doubles`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};

use crate::legacy::{VmControl, VmRequest};
use crate::Interrupt;

/// Records every request a device makes of the VM.
#[derive(Default)]
pub struct RecordingControl(Mutex<Vec<VmRequest>>);

impl RecordingControl {
    pub fn requests(&self) -> Vec<VmRequest> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl VmControl for RecordingControl {
    fn request(&self, request: VmRequest) {
        if let Ok(mut v) = self.0.lock() {
            v.push(request);
        }
    }
}

/// Counts interrupt pulses.
#[derive(Default)]
pub struct CountingInterrupt(AtomicUsize);

impl CountingInterrupt {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingInterrupt {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Records a virtio device's queue interrupts, in the order raised.
#[derive(Default)]
pub struct QueueInterrupts(Mutex<Vec<u16>>);

impl QueueInterrupts {
    /// Interrupts raised for `queue` so far.
    pub fn count(&self, queue: u16) -> usize {
        self.0
            .lock()
            .map_or(0, |v| v.iter().filter(|&&q| q == queue).count())
    }

    /// The queues interrupts were raised for, in order.
    pub fn order(&self) -> Vec<u16> {
        self.0.lock().map_or_else(|_| Vec::new(), |v| v.clone())
    }
}

impl crate::virtio::VirtioInterrupt for QueueInterrupts {
    fn notify_queue(&self, queue: u16) {
        if let Ok(mut v) = self.0.lock() {
            v.push(queue);
        }
    }
    fn notify_config(&self) {}
}

/// Polls `cond` every 2 ms until it holds; fails the test after `limit`.
/// For tests that watch a device's own threads.
pub fn wait_until(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Records MSI-X routes and triggers.
#[derive(Default)]
pub struct RecordingMsi {
    routes: Mutex<Vec<(u16, crate::pci::msix::MsiMessage)>>,
    triggers: Mutex<Vec<u16>>,
}

impl RecordingMsi {
    pub fn routes(&self) -> Vec<(u16, crate::pci::msix::MsiMessage)> {
        self.routes.lock().unwrap().clone()
    }
    pub fn triggers(&self) -> Vec<u16> {
        self.triggers.lock().unwrap().clone()
    }
}

impl crate::pci::msix::MsiVectors for RecordingMsi {
    fn set_route(&self, vector: u16, msg: crate::pci::msix::MsiMessage) -> std::io::Result<()> {
        self.routes.lock().unwrap().push((vector, msg));
        Ok(())
    }
    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        self.triggers.lock().unwrap().push(vector);
        Ok(())
    }
}

/// A disk in host memory that records flushes. Panics on any request past
/// its end or any write to a read-only disk: the device must have refused
/// them, so such a request is a device bug even if nothing else breaks.
#[derive(Debug)]
pub struct MemDisk {
    pub bytes: Mutex<Vec<u8>>,
    pub read_only: bool,
    pub flushes: AtomicUsize,
}

impl MemDisk {
    /// A disk of `size` bytes holding a recognisable pattern.
    pub fn new(size: usize, read_only: bool) -> Self {
        Self {
            bytes: Mutex::new((0..size).map(|i| (i % 251) as u8).collect()),
            read_only,
            flushes: AtomicUsize::new(0),
        }
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The byte range of a request, which must lie inside a `len`-byte disk.
    fn range(len: usize, offset: u64, total: u64, what: &str) -> std::ops::Range<usize> {
        let end = offset.checked_add(total);
        assert!(
            matches!(end, Some(e) if e <= len as u64),
            "device sent a {what} of {total} bytes at {offset} to a {len}-byte disk"
        );
        offset as usize..(offset + total) as usize
    }
}

fn total_len(bufs: &[vm_memory::VolatileSlice<'_>]) -> u64 {
    bufs.iter().map(|s| s.len() as u64).sum()
}

impl crate::block::DiskBackend for MemDisk {
    fn size(&self) -> u64 {
        self.bytes().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_vectored(
        &self,
        offset: u64,
        bufs: &[vm_memory::VolatileSlice<'_>],
    ) -> crate::block::Result<()> {
        let b = self.bytes();
        let mut at = Self::range(b.len(), offset, total_len(bufs), "read").start;
        for s in bufs {
            s.copy_from(&b[at..at + s.len()]);
            at += s.len();
        }
        Ok(())
    }
    fn write_vectored(
        &self,
        offset: u64,
        bufs: &[vm_memory::VolatileSlice<'_>],
    ) -> crate::block::Result<()> {
        assert!(!self.read_only, "device wrote a read-only disk");
        let mut b = self.bytes();
        let mut at = Self::range(b.len(), offset, total_len(bufs), "write").start;
        for s in bufs {
            s.copy_to(&mut b[at..at + s.len()]);
            at += s.len();
        }
        Ok(())
    }
    fn flush(&self) -> crate::block::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> crate::block::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> crate::block::Result<()> {
        assert!(!self.read_only, "device zeroed a read-only disk");
        let mut b = self.bytes();
        let r = Self::range(b.len(), offset, len, "write-zeroes");
        b[r].fill(0);
        Ok(())
    }
}

/// A network backend over a Unix datagram socket pair: frames the device
/// sends arrive at `peer`, frames written to `peer` are received.
pub struct SocketNet {
    sock: std::os::unix::net::UnixDatagram,
    /// Where sent frames go instead of `sock`'s peer ([`SocketNet::loopback`]).
    send_to: Option<std::os::unix::net::UnixDatagram>,
    pub offload: Mutex<Option<u32>>,
    /// How often the device tried to read a frame.
    pub recv_calls: AtomicUsize,
    /// How many of those were straight into guest buffers.
    pub slice_reads: AtomicUsize,
}

impl SocketNet {
    /// The backend and the test's end of the pair.
    pub fn pair() -> (std::sync::Arc<SocketNet>, std::os::unix::net::UnixDatagram) {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        (Self::on(a, None), b)
    }

    /// A backend whose sent frames come straight back, as a ping's reply
    /// is in the TAP by the time the write returns.
    pub fn loopback() -> std::sync::Arc<SocketNet> {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        Self::on(a, Some(b))
    }

    fn on(
        sock: std::os::unix::net::UnixDatagram,
        send_to: Option<std::os::unix::net::UnixDatagram>,
    ) -> std::sync::Arc<SocketNet> {
        sock.set_nonblocking(true).unwrap();
        std::sync::Arc::new(SocketNet {
            sock,
            send_to,
            offload: Mutex::new(None),
            recv_calls: AtomicUsize::new(0),
            slice_reads: AtomicUsize::new(0),
        })
    }
}

impl crate::virtio::net::NetBackend for SocketNet {
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.recv_calls.fetch_add(1, Ordering::SeqCst);
        self.sock.recv(buf)
    }
    fn send(&self, frame: &[u8]) -> std::io::Result<usize> {
        self.send_to.as_ref().unwrap_or(&self.sock).send(frame)
    }
    /// Like a TAP's readv: the datagram spread over the slices in order
    /// (cut at their end).
    fn recv_slices(&self, slices: &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<usize> {
        self.recv_calls.fetch_add(1, Ordering::SeqCst);
        self.slice_reads.fetch_add(1, Ordering::SeqCst);
        let mut buf = vec![0u8; crate::virtio::net::MAX_FRAME_LEN + 1];
        let n = self.sock.recv(&mut buf)?;
        let mut rest = &buf[..n];
        let mut written = 0;
        for s in slices {
            let k = rest.len().min(s.len());
            s.copy_from(&rest[..k]);
            rest = &rest[k..];
            written += k;
        }
        Ok(written)
    }
    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        *self.offload.lock().unwrap() = Some(flags);
        Ok(())
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sock.as_raw_fd()
    }
}

/// Split-ring descriptor flags (virtio 1.2 §2.7.5).
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// (addr, len, device-writable) list → descriptors linked from `start`.
pub fn chain(descs: &[(u64, u32, bool)], start: u16) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, w))| {
            let last = i + 1 == descs.len();
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            let next = if last { 0 } else { start + i as u16 + 1 };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect()
}
