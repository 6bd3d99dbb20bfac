//! Backends and interrupt sinks for the device models. They double as
//! oracles: a device that asks a disk for bytes past its end, or sends a
//! frame no guest can legally build, is a bug even if nothing crashes.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use devices::block::DiskBackend;
use devices::pci::msix::{MsiMessage, MsiVectors};
use devices::virtio::net::{NetBackend, MAX_FRAME_LEN, NET_HDR_LEN};
use devices::Interrupt;
use vm_memory::VolatileSlice;

/// A disk in host memory. Panics on requests past its end: the device
/// must have refused them.
#[derive(Debug)]
pub struct MemDisk {
    bytes: Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemDisk {
    pub fn new(size: usize, read_only: bool) -> Self {
        Self {
            bytes: Mutex::new(vec![0; size]),
            read_only,
        }
    }

    fn range(&self, len: usize, offset: u64, total: u64, what: &str) -> std::ops::Range<usize> {
        let end = offset.checked_add(total);
        assert!(
            matches!(end, Some(e) if e <= len as u64),
            "device sent a {what} of {total} bytes at {offset} to a {len}-byte disk"
        );
        offset as usize..(offset + total) as usize
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DiskBackend for MemDisk {
    fn size(&self) -> u64 {
        lock(&self.bytes).len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_vectored(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> devices::block::Result<()> {
        let b = lock(&self.bytes);
        let total: u64 = bufs.iter().map(|s| s.len() as u64).sum();
        let mut at = self.range(b.len(), offset, total, "read").start;
        for s in bufs {
            s.copy_from(&b[at..at + s.len()]);
            at += s.len();
        }
        Ok(())
    }
    fn write_vectored(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> devices::block::Result<()> {
        assert!(!self.read_only, "device wrote a read-only disk");
        let mut b = lock(&self.bytes);
        let total: u64 = bufs.iter().map(|s| s.len() as u64).sum();
        let len = b.len();
        let mut at = self.range(len, offset, total, "write").start;
        for s in bufs {
            s.copy_to(&mut b[at..at + s.len()]);
            at += s.len();
        }
        Ok(())
    }
    fn flush(&self) -> devices::block::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> devices::block::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> devices::block::Result<()> {
        assert!(!self.read_only, "device zeroed a read-only disk");
        let mut b = lock(&self.bytes);
        let r = self.range(b.len(), offset, len, "write-zeroes");
        b[r].fill(0);
        Ok(())
    }
}

/// Counts pulses of an interrupt line.
#[derive(Default)]
pub struct CountingIrq(pub AtomicUsize);

impl Interrupt for CountingIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Accepts every MSI-X route and trigger; a vector beyond the table is a
/// device bug.
pub struct CheckedMsi {
    pub vectors: u16,
}

impl MsiVectors for CheckedMsi {
    fn set_route(&self, vector: u16, _msg: MsiMessage) -> std::io::Result<()> {
        assert!(vector < self.vectors, "route for vector {vector}");
        Ok(())
    }
    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        assert!(vector < self.vectors, "trigger of vector {vector}");
        Ok(())
    }
}

/// A network backend fed by the input: frames (or errors) to receive, and
/// whether sending fails. Checks that transmitted frames have a legal size.
#[derive(Default)]
pub struct ScriptedNet {
    pub rx: Mutex<VecDeque<Result<Vec<u8>, ErrorKind>>>,
    pub send_fails: bool,
    pub sent: AtomicUsize,
}

impl NetBackend for ScriptedNet {
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match lock(&self.rx).pop_front() {
            None => Err(ErrorKind::WouldBlock.into()),
            Some(Err(kind)) => Err(kind.into()),
            Some(Ok(frame)) => {
                // A TAP truncates frames to the buffer, so does this.
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                Ok(n)
            }
        }
    }
    fn send(&self, frame: &[u8]) -> std::io::Result<usize> {
        assert!(
            (NET_HDR_LEN..=MAX_FRAME_LEN).contains(&frame.len()),
            "device sent a {}-byte frame",
            frame.len()
        );
        self.sent.fetch_add(1, Ordering::Relaxed);
        if self.send_fails {
            return Err(ErrorKind::BrokenPipe.into());
        }
        Ok(frame.len())
    }
    fn set_offload(&self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        // Only the I/O thread polls it; the targets call the queue logic directly.
        -1
    }
}
