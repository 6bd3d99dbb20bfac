//! The COM1 16550A: register reads and writes at offsets 0..16 (COM1 has 8;
//! the rest checks that stray offsets are harmless) of any width, mixed
//! with input bytes pushed in as the event loop does.
//!
//! Input: flags:u8 (bit 0 output fails, bit 1 no drain notifier), then
//! operations (`ivmm_fuzz::access`).
//!
//! Run: `fuzz/run.sh serial_16550 600`
#![no_main]

use std::io::Write;
use std::sync::Arc;

use devices::legacy::Serial;
use devices::BusDevice;
use ivmm_fuzz::access::SerialOp;
use ivmm_fuzz::doubles::CountingIrq;
use ivmm_fuzz::Input;
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 4096;

/// Output that discards bytes or fails like a closed terminal.
struct Out(bool);

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0 {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.0 {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input::new(data);
    let flags = i.u8();
    let irq = Arc::new(CountingIrq::default());
    let drained = (flags & 2 == 0).then(|| Arc::new(CountingIrq::default()) as _);
    let mut serial = Serial::new(irq, Box::new(Out(flags & 1 != 0)), drained);
    let mut buf = [0u8; 16];
    for _ in 0..MAX_OPS {
        if i.is_empty() {
            break;
        }
        match SerialOp::decode(&mut i) {
            SerialOp::Read { offset, width } => serial.read(u64::from(offset), &mut buf[..width]),
            SerialOp::Write { offset, data, .. } => serial.write(u64::from(offset), &data),
            SerialOp::Input(bytes) => {
                let n = serial.enqueue_input(&bytes);
                assert!(n <= bytes.len(), "took {n} of {} input bytes", bytes.len());
            }
        }
    }
});
