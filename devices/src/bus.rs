//! Address-range dispatch of port I/O and MMIO exits to device models.
//!
//! A [`Bus`] is built once before the vCPUs start and then shared read-only
//! between vCPU threads; each device sits behind its own mutex so that
//! accesses to different devices never serialize.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a range of port-I/O or MMIO addresses.
///
/// `offset` is relative to the start of the range the device was registered
/// at. `data.len()` is the access width (1, 2, 4 or 8 bytes, as the guest
/// issued it); devices must tolerate any width and any offset in their range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps a registered device")]
    Overlap { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((&prev_base, prev)) = self.ranges.range(..end).next_back() {
            if prev_base + prev.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    fn resolve(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then_some((offset, entry))
    }

    /// Dispatches a read; returns false (and leaves `data` alone) when no
    /// device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, entry)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, entry)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if a previous holder panicked: device state is plain
/// register values, and one failed access must not take the VM down.
fn lock<'a>(
    device: &'a Mutex<dyn BusDevice + 'static>,
) -> std::sync::MutexGuard<'a, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_reaches_device_with_relative_offset() {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut buf = [0u8; 1];
        assert!(bus.read(0x3fd, &mut buf));
        assert_eq!(buf, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.lock().unwrap().0, vec![(0, vec![0x41])]);
        assert!(!bus.read(0x400, &mut buf));
        assert!(!bus.read(0x3f7, &mut buf));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(Vec::new()))), 0x100, 0x10)
            .unwrap();
        for (base, len) in [(0xf8, 0x10), (0x10f, 1), (0x100, 0x10)] {
            let r = bus.insert(Arc::new(Mutex::new(Echo(Vec::new()))), base, len);
            assert_eq!(r, Err(BusError::Overlap { base, len }));
        }
        bus.insert(Arc::new(Mutex::new(Echo(Vec::new()))), 0x110, 1)
            .unwrap();
        let r = bus.insert(Arc::new(Mutex::new(Echo(Vec::new()))), u64::MAX, 2);
        assert!(matches!(r, Err(BusError::InvalidRange { .. })));
        let r = bus.insert(Arc::new(Mutex::new(Echo(Vec::new()))), 0x200, 0);
        assert!(matches!(r, Err(BusError::InvalidRange { .. })));
    }
}
