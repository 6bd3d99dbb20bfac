//! Test doubles shared by device unit tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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
