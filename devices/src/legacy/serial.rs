//! COM1: a 16550A UART (register model from vm-superio) with interrupt-driven
//! input. Output goes to any `Write` (the terminal, a log file, both);
//! input is pushed in by the event loop as far as the receive FIFO has room,
//! and the `input_drained` interrupt tells it when the guest made room again.

use std::io::Write;
use std::sync::Arc;

use crate::{BusDevice, Interrupt};

/// Adapts our [`Interrupt`] to vm-superio's trigger trait.
pub struct IrqTrigger(Arc<dyn Interrupt>);

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

/// Forwards "receive FIFO became empty" to whoever feeds input.
pub struct InputDrained(Option<Arc<dyn Interrupt>>);

impl vm_superio::serial::SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(irq) = &self.0 {
            if let Err(e) = irq.trigger() {
                log::warn!("serial: cannot signal input drain: {e}");
            }
        }
    }
}

type Uart = vm_superio::Serial<IrqTrigger, InputDrained, Box<dyn Write + Send>>;

pub struct Serial {
    uart: Uart,
}

impl Serial {
    /// `irq` is the UART's interrupt line; `input_drained` (optional) fires
    /// whenever the guest has read every queued input byte.
    pub fn new(
        irq: Arc<dyn Interrupt>,
        out: Box<dyn Write + Send>,
        input_drained: Option<Arc<dyn Interrupt>>,
    ) -> Self {
        Self {
            uart: Uart::with_events(IrqTrigger(irq), InputDrained(input_drained), out),
        }
    }

    /// Queues input bytes for the guest; returns how many fit into the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(reg), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(reg), Some(&value)) = (u8::try_from(offset), data.first()) {
            // An output error (terminal gone, disk full) loses the byte; it
            // must not stop the guest.
            if let Err(e) = self.uart.write(reg, value) {
                log::debug!("serial: write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CountingInterrupt;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn output_bytes_reach_the_writer() {
        let out = Shared::default();
        let irq = Arc::new(CountingInterrupt::default());
        let mut s = Serial::new(irq, Box::new(out.clone()), None);
        for b in b"ok\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"ok\n");
    }

    #[test]
    fn input_interrupts_and_drain_is_signalled() {
        let irq = Arc::new(CountingInterrupt::default());
        let drained = Arc::new(CountingInterrupt::default());
        let mut s = Serial::new(
            irq.clone(),
            Box::new(std::io::sink()),
            Some(drained.clone()),
        );
        s.write(IER, &[0x01]); // enable "received data available"
        assert_eq!(s.enqueue_input(b"hi"), 2);
        assert!(irq.count() >= 1);
        let mut lsr = [0u8];
        s.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'h');
        s.read(0, &mut b);
        assert_eq!(b[0], b'i');
        assert_eq!(drained.count(), 1);
    }

    #[test]
    fn full_fifo_takes_only_what_fits() {
        let irq = Arc::new(CountingInterrupt::default());
        let mut s = Serial::new(irq, Box::new(std::io::sink()), None);
        let big = vec![b'x'; 1000];
        let n = s.enqueue_input(&big);
        assert!(n > 0 && n < 1000);
        assert_eq!(s.enqueue_input(&big), 0);
    }

    #[test]
    fn odd_offsets_and_widths_do_not_panic() {
        let irq = Arc::new(CountingInterrupt::default());
        let mut s = Serial::new(irq, Box::new(std::io::sink()), None);
        let mut wide = [0u8; 8];
        s.read(300, &mut wide);
        s.write(u64::MAX, &[1, 2, 3, 4]);
        s.write(3, &[]);
        s.read(3, &mut []);
    }
}
