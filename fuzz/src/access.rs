//! Register accesses (port I/O, MMIO, PCI configuration) as the transport
//! and serial targets decode them.
//!
//! ```text
//! width        w:u8 -> WIDTHS[w % 8]: the four a vCPU can issue, plus
//!              0, 3, 16 and 4 again (devices must tolerate any width)
//! PCI op       code:u8 % 8, then:
//!   0/1 config port read/write   port:u8 (0xcf8 + port % 8) width [data]
//!   2/3 ECAM read/write          offset:u16 (device 0, functions 0..7) width [data]
//!   4/5 BAR0 read/write          region:u8 offset:u16 width [data]
//!   6   guest memory write       addr:u32 (ring::addr) n:u8 bytes
//!   7   yield to the device's I/O threads
//! serial op    code:u8 % 3, then:
//!   0/1 register read/write      offset:u8 (% 16) width [data]
//!   2   input                    n:u8 bytes
//! ```
//!
//! BAR regions (region % 7): common cfg, ISR, device cfg, notify, MSI-X
//! table, MSI-X PBA, anywhere; the offset is taken modulo the region's span.

use crate::{Input, Output};

pub const WIDTHS: [usize; 8] = [1, 2, 4, 8, 0, 3, 16, 4];

/// (start, span) of the BAR0 regions of the virtio-PCI transport
/// (devices/src/virtio/pci/mod.rs), a little past each region's end.
pub const BAR_REGIONS: [(u64, u16); 7] = [
    (0x0000, 0x40),
    (0x1000, 0x8),
    (0x2000, 0x48),
    (0x3000, 0x20),
    (0x4000, 0x60),
    (0x6000, 0x10),
    (0x0000, 0x8000),
];
pub const COMMON: u8 = 0;
pub const ISR: u8 = 1;
pub const DEVICE: u8 = 2;
pub const NOTIFY: u8 = 3;
pub const MSIX_TABLE: u8 = 4;
pub const MSIX_PBA: u8 = 5;

fn width(i: &mut Input) -> usize {
    WIDTHS[usize::from(i.u8() % 8)]
}

fn encode_width(o: &mut Output, w: usize) {
    let idx = WIDTHS.iter().position(|&x| x == w).unwrap_or(0);
    o.u8(idx as u8);
}

/// `width` bytes of write data, zero-padded.
fn data(i: &mut Input, width: usize) -> Vec<u8> {
    let mut d = i.bytes(width).to_vec();
    d.resize(width, 0);
    d
}

#[derive(Debug, Clone)]
pub enum PciOp {
    /// Read (`data` empty) or write at 0xcf8 + port.
    CfgIo {
        port: u8,
        width: usize,
        data: Option<Vec<u8>>,
    },
    Ecam {
        offset: u16,
        width: usize,
        data: Option<Vec<u8>>,
    },
    /// `offset` within the region (reduced modulo its span on decode).
    Bar {
        region: u8,
        offset: u16,
        width: usize,
        data: Option<Vec<u8>>,
    },
    Mem {
        addr: u32,
        bytes: Vec<u8>,
    },
    Yield,
}

impl PciOp {
    pub fn decode(i: &mut Input) -> Self {
        let code = i.u8() % 8;
        let write = code % 2 == 1;
        match code {
            0 | 1 => {
                let port = i.u8() % 8;
                let width = width(i);
                let data = write.then(|| data(i, width));
                PciOp::CfgIo { port, width, data }
            }
            2 | 3 => {
                let offset = i.u16();
                let width = width(i);
                let data = write.then(|| data(i, width));
                PciOp::Ecam {
                    offset,
                    width,
                    data,
                }
            }
            4 | 5 => {
                let region = i.u8() % BAR_REGIONS.len() as u8;
                let offset = i.u16() % BAR_REGIONS[usize::from(region)].1;
                let width = width(i);
                let data = write.then(|| data(i, width));
                PciOp::Bar {
                    region,
                    offset,
                    width,
                    data,
                }
            }
            6 => {
                let addr = i.u32();
                let n = i.u8();
                PciOp::Mem {
                    addr,
                    bytes: i.bytes(usize::from(n)).to_vec(),
                }
            }
            _ => PciOp::Yield,
        }
    }

    /// BAR0 offset of a `Bar` access.
    pub fn bar_offset(region: u8, offset: u16) -> u64 {
        BAR_REGIONS[usize::from(region) % BAR_REGIONS.len()].0 + u64::from(offset)
    }

    pub fn encode(&self, o: &mut Output) {
        let rw = |d: &Option<Vec<u8>>| u8::from(d.is_some());
        match self {
            PciOp::CfgIo { port, width, data } => {
                o.u8(rw(data)).u8(*port);
                encode_width(o, *width);
                o.bytes(data.as_deref().unwrap_or(&[]));
            }
            PciOp::Ecam {
                offset,
                width,
                data,
            } => {
                o.u8(2 + rw(data)).u16(*offset);
                encode_width(o, *width);
                o.bytes(data.as_deref().unwrap_or(&[]));
            }
            PciOp::Bar {
                region,
                offset,
                width,
                data,
            } => {
                o.u8(4 + rw(data)).u8(*region).u16(*offset);
                encode_width(o, *width);
                o.bytes(data.as_deref().unwrap_or(&[]));
            }
            PciOp::Mem { addr, bytes } => {
                for (k, chunk) in bytes.chunks(255).enumerate() {
                    o.u8(6)
                        .u32(addr + 255 * k as u32)
                        .u8(chunk.len() as u8)
                        .bytes(chunk);
                }
            }
            PciOp::Yield => {
                o.u8(7);
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum SerialOp {
    Read {
        offset: u8,
        width: usize,
    },
    Write {
        offset: u8,
        width: usize,
        data: Vec<u8>,
    },
    Input(Vec<u8>),
}

impl SerialOp {
    pub fn decode(i: &mut Input) -> Self {
        match i.u8() % 3 {
            0 => SerialOp::Read {
                offset: i.u8() % 16,
                width: width(i),
            },
            1 => {
                let offset = i.u8() % 16;
                let width = width(i);
                SerialOp::Write {
                    offset,
                    width,
                    data: data(i, width),
                }
            }
            _ => {
                let n = i.u8();
                SerialOp::Input(i.bytes(usize::from(n)).to_vec())
            }
        }
    }

    pub fn encode(&self, o: &mut Output) {
        match self {
            SerialOp::Read { offset, width } => {
                o.u8(0).u8(*offset);
                encode_width(o, *width);
            }
            SerialOp::Write {
                offset,
                width,
                data,
            } => {
                o.u8(1).u8(*offset);
                encode_width(o, *width);
                o.bytes(data);
            }
            SerialOp::Input(bytes) => {
                o.u8(2).u8(bytes.len() as u8).bytes(bytes);
            }
        }
    }
}
