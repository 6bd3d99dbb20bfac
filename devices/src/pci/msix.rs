//! MSI-X (PCI 3.0 §6.8.2): the capability's message control bits, the vector
//! table and the pending-bit array a device exposes in one of its BARs.
//!
//! Delivery goes through [`MsiVectors`], which the VMM implements with one
//! KVM GSI route and one irqfd per vector. Masking is enforced here: a masked
//! vector's message sets its pending bit instead, and unmasking delivers it.

use std::sync::Arc;

/// Bytes per table entry: address low, address high, data, vector control.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable (bit 15) and function mask (bit 14).
pub const MSIX_CTRL_ENABLE: u16 = 1 << 15;
pub const MSIX_CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control bit 0: the entry is masked.
const ENTRY_MASKED: u32 = 1;
/// Capability ID of MSI-X (PCI 3.0 appendix H).
pub const PCI_CAP_ID_MSIX: u8 = 0x11;

/// An MSI message: where the device writes, and what.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// The VMM side of MSI-X delivery for one device.
pub trait MsiVectors: Send + Sync {
    /// Points `vector` at `msg` (a GSI route in KVM).
    fn set_route(&self, vector: u16, msg: MsiMessage) -> std::io::Result<()>;
    /// Sends `vector`'s message (writes its irqfd).
    fn trigger(&self, vector: u16) -> std::io::Result<()>;
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    msg: MsiMessage,
    control: u32,
    /// What the VMM was last told for this vector.
    programmed: Option<MsiMessage>,
}

impl Entry {
    fn masked(&self) -> bool {
        self.control & ENTRY_MASKED != 0
    }
}

/// The MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    control: u16,
    vectors: Arc<dyn MsiVectors>,
}

impl Msix {
    /// A table of `count` (1..=2048) vectors, all masked, MSI-X disabled.
    pub fn new(count: u16, vectors: Arc<dyn MsiVectors>) -> Self {
        let count = count.clamp(1, 2048) as usize;
        Self {
            entries: vec![
                Entry {
                    control: ENTRY_MASKED,
                    ..Default::default()
                };
                count
            ],
            pending: vec![false; count],
            control: 0,
            vectors,
        }
    }

    pub fn vector_count(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Bytes the table occupies in the BAR.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes the PBA occupies (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.entries.len().div_ceil(64) as u64 * 8
    }

    pub fn enabled(&self) -> bool {
        self.control & MSIX_CTRL_ENABLE != 0
    }

    fn function_masked(&self) -> bool {
        self.control & MSIX_CTRL_FUNCTION_MASK != 0
    }

    /// Message control as the capability shows it: enable, mask, table size - 1.
    pub fn message_control(&self) -> u16 {
        self.control | (self.vector_count() - 1)
    }

    /// The guest writes message control; only enable and function mask stick.
    pub fn set_message_control(&mut self, value: u16) {
        self.control = value & (MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
        self.sync_all();
    }

    /// Reads `data.len()` bytes at `offset` in the table.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((index, field)) = self.locate(offset, data.len()) else {
            return;
        };
        let e = &self.entries[index];
        let qword = match field {
            0 => e.msg.address,
            4 => (e.msg.address >> 32) | (u64::from(e.msg.data) << 32),
            8 => u64::from(e.msg.data) | (u64::from(e.control) << 32),
            _ => u64::from(e.control),
        };
        let bytes = qword.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    /// Writes `data` at `offset` in the table (4- or 8-byte aligned accesses).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Some((index, field)) = self.locate(offset, data.len()) else {
            return;
        };
        let mut buf = [0u8; 8];
        buf[..data.len()].copy_from_slice(data);
        let lo = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let hi = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let e = &mut self.entries[index];
        let set_lo_addr = |e: &mut Entry, v: u32| {
            e.msg.address = (e.msg.address & !0xffff_ffff) | u64::from(v);
        };
        let set_hi_addr = |e: &mut Entry, v: u32| {
            e.msg.address = (e.msg.address & 0xffff_ffff) | (u64::from(v) << 32);
        };
        match (field, data.len()) {
            (0, 4) => set_lo_addr(e, lo),
            (0, 8) => {
                set_lo_addr(e, lo);
                set_hi_addr(e, hi);
            }
            (4, _) => set_hi_addr(e, lo),
            (8, 4) => e.msg.data = lo,
            (8, 8) => {
                e.msg.data = lo;
                e.control = hi;
            }
            (12, _) => e.control = lo,
            _ => {}
        }
        self.sync(index);
    }

    /// Reads the pending-bit array.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, out) in data.iter_mut().enumerate() {
            let byte = offset.saturating_add(i as u64);
            let mut v = 0u8;
            for bit in 0..8u64 {
                let vector = byte.saturating_mul(8).saturating_add(bit);
                if usize::try_from(vector)
                    .ok()
                    .and_then(|v| self.pending.get(v))
                    .copied()
                    .unwrap_or(false)
                {
                    v |= 1 << bit;
                }
            }
            *out = v;
        }
    }

    /// Sends `vector` (or marks it pending while masked). Returns false when
    /// MSI-X is disabled, so that the caller falls back to INTx.
    pub fn signal(&mut self, vector: u16) -> bool {
        if !self.enabled() {
            return false;
        }
        let index = usize::from(vector);
        let Some(e) = self.entries.get(index) else {
            // A vector the table does not have (e.g. VIRTIO_MSI_NO_VECTOR):
            // the interrupt is suppressed, as on real hardware.
            return true;
        };
        if e.masked() || self.function_masked() {
            self.pending[index] = true;
        } else if let Err(err) = self.vectors.trigger(vector) {
            log::warn!("MSI-X vector {vector}: cannot signal: {err}");
        }
        true
    }

    /// Clears everything to the reset state (device reset).
    pub fn reset(&mut self) {
        for e in &mut self.entries {
            e.msg = MsiMessage::default();
            e.control = ENTRY_MASKED;
        }
        self.pending.fill(false);
        self.control = 0;
    }

    /// (entry index, byte offset inside the entry) for a naturally aligned
    /// 4- or 8-byte access inside the table.
    fn locate(&self, offset: u64, len: usize) -> Option<(usize, u64)> {
        if !(len == 4 || len == 8) || !offset.is_multiple_of(len as u64) {
            return None;
        }
        let index = usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        (index < self.entries.len()).then_some((index, offset % MSIX_ENTRY_SIZE))
    }

    fn sync_all(&mut self) {
        for i in 0..self.entries.len() {
            self.sync(i);
        }
    }

    /// Tells the VMM about a changed message of an unmasked vector, and
    /// delivers a pending message once the vector is unmasked.
    fn sync(&mut self, index: usize) {
        if !self.enabled() {
            return;
        }
        let e = self.entries[index];
        if e.masked() || self.function_masked() {
            return;
        }
        let vector = index as u16;
        if e.programmed != Some(e.msg) {
            match self.vectors.set_route(vector, e.msg) {
                Ok(()) => self.entries[index].programmed = Some(e.msg),
                Err(err) => log::warn!("MSI-X vector {vector}: cannot route: {err}"),
            }
        }
        if std::mem::take(&mut self.pending[index]) {
            if let Err(err) = self.vectors.trigger(vector) {
                log::warn!("MSI-X vector {vector}: cannot signal: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RecordingMsi;

    fn setup() -> (Msix, Arc<RecordingMsi>) {
        let rec = Arc::new(RecordingMsi::default());
        (Msix::new(3, rec.clone()), rec)
    }

    #[test]
    fn table_round_trips_and_routes_on_unmask() {
        let (mut m, rec) = setup();
        m.set_message_control(MSIX_CTRL_ENABLE);
        m.write_table(16, &0xfee0_1000u32.to_le_bytes());
        m.write_table(20, &0u32.to_le_bytes());
        m.write_table(24, &0x4041u32.to_le_bytes());
        assert!(rec.routes().is_empty(), "still masked");
        m.write_table(28, &0u32.to_le_bytes());
        assert_eq!(
            rec.routes(),
            vec![(
                1,
                MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x4041
                }
            )]
        );
        let mut b = [0u8; 4];
        m.read_table(24, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x4041);
        m.read_table(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1, "entry 0 still masked");
        assert_eq!(m.message_control(), MSIX_CTRL_ENABLE | 2);
    }

    #[test]
    fn masked_vector_is_pending_then_delivered_on_unmask() {
        let (mut m, rec) = setup();
        assert!(!m.signal(0), "disabled: caller uses INTx");
        m.set_message_control(MSIX_CTRL_ENABLE);
        assert!(m.signal(0));
        assert_eq!(rec.triggers(), Vec::<u16>::new());
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1);
        m.write_table(12, &0u32.to_le_bytes());
        assert_eq!(rec.triggers(), vec![0]);
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        // Function mask holds everything back.
        m.set_message_control(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
        assert!(m.signal(0));
        assert_eq!(rec.triggers(), vec![0]);
        m.set_message_control(MSIX_CTRL_ENABLE);
        assert_eq!(rec.triggers(), vec![0, 0]);
        // Out-of-table vectors are dropped, not a panic.
        assert!(m.signal(0xffff));
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let (mut m, _) = setup();
        m.write_table(1, &[1, 2, 3, 4]);
        m.write_table(0, &[1, 2]);
        m.write_table(u64::MAX - 3, &[1, 2, 3, 4]);
        let mut b = [0xffu8; 2];
        m.read_table(0, &mut b);
        assert_eq!(b, [0, 0]);
        let mut big = [0u8; 8];
        m.read_pba(u64::MAX, &mut big);
        assert_eq!(big, [0; 8]);
    }
}
