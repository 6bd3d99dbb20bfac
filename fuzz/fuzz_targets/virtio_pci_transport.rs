//! The virtio-PCI transport around a real virtio-blk device: PCI
//! configuration accesses (through port 0xcf8/0xcfc and ECAM, as a guest
//! reaches them) and BAR0 accesses (common cfg, ISR, device cfg, notify,
//! MSI-X table and PBA), with guest memory writes in between so that a
//! driver that completes initialisation can also queue requests. MSI-X and
//! INTx go to test doubles; on DRIVER_OK the device starts its I/O threads,
//! which serve kicks against an in-memory disk that panics on out-of-range
//! requests. Dropping the transport at the end resets the device (joins them).
//!
//! Input: flags:u8 (bit 0 discard, bit 1 read-only, bits 2-3 queues - 1),
//! then operations (`ivmm_fuzz::access`).
//!
//! Run: `fuzz/run.sh virtio_pci_transport 600`
#![no_main]

use std::sync::{Arc, Mutex};

use devices::pci::{PciBus, PciConfigIo, PciConfigMmio, PciDevice};
use devices::testing::MemDisk;
use devices::virtio::blk::{Block, BlockOptions};
use devices::virtio::VirtioPciDevice;
use devices::BusDevice;
use ivmm_fuzz::access::PciOp;
use ivmm_fuzz::doubles::{CheckedMsi, CountingIrq};
use ivmm_fuzz::{ring, Input};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

/// Where the VMM would put BAR0 (any multiple of its size).
const BAR: u64 = 0xc000_0000;
const DISK_SIZE: usize = 64 << 10;
const MAX_OPS: usize = 2048;

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input::new(data);
    let flags = i.u8();
    let queues = 1 + u16::from((flags >> 2) & 3);
    let Some(mem) = ring::guest_memory() else {
        return;
    };
    let disk = Arc::new(MemDisk::new(DISK_SIZE, flags & 2 != 0));
    let block = Block::new(
        disk,
        BlockOptions {
            name: "fuzz".into(),
            serial: "ivmm-fuzz".into(),
            discard: flags & 1 != 0,
            queues,
        },
    );
    let msi = Arc::new(CheckedMsi {
        vectors: queues + 1,
    });
    let intx = Arc::new(CountingIrq::default());
    let Ok(dev) = VirtioPciDevice::new(Box::new(block), mem.clone(), BAR, msi, intx) else {
        return;
    };
    let dev = Arc::new(Mutex::new(dev));
    let mut bus = PciBus::new();
    let as_pci: Arc<Mutex<dyn PciDevice>> = dev.clone();
    if bus.add_at(0, as_pci).is_err() {
        return;
    }
    let bus = Arc::new(Mutex::new(bus));
    let mut cfg_io = PciConfigIo::new(bus.clone());
    let mut ecam = PciConfigMmio::new(bus);

    let mut buf = [0u8; 16];
    for _ in 0..MAX_OPS {
        if i.is_empty() {
            break;
        }
        match PciOp::decode(&mut i) {
            PciOp::CfgIo { port, width, data } => match data {
                Some(d) => cfg_io.write(u64::from(port), &d),
                None => cfg_io.read(u64::from(port), &mut buf[..width]),
            },
            PciOp::Ecam {
                offset,
                width,
                data,
            } => match data {
                Some(d) => ecam.write(u64::from(offset), &d),
                None => ecam.read(u64::from(offset), &mut buf[..width]),
            },
            PciOp::Bar {
                region,
                offset,
                width,
                data,
            } => {
                let at = PciOp::bar_offset(region, offset);
                match data {
                    Some(d) => lock(&dev).write(at, &d),
                    None => lock(&dev).read(at, &mut buf[..width]),
                }
            }
            PciOp::Mem { addr, bytes } => {
                let _ = mem.write_slice(&bytes, GuestAddress(ring::addr(addr)));
            }
            PciOp::Yield => std::thread::yield_now(),
        }
    }
    // Dropping the transport resets the device and joins its threads.
    drop(ecam);
    drop(cfg_io);
    drop(dev);
});
