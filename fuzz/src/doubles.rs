//! Network backend and interrupt sinks for the device models (the disk is
//! `devices::testing::MemDisk`). They double as oracles: a device that
//! sends a frame no guest can legally build is a bug even if nothing
//! crashes.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use devices::pci::msix::{MsiMessage, MsiVectors};
use devices::virtio::net::{NetBackend, MAX_FRAME_LEN, NET_HDR_LEN};
use devices::Interrupt;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
