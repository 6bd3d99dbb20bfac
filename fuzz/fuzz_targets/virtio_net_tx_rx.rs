//! virtio-net transmit chain parsing and receive buffer filling: the input
//! builds the receive (0) and transmit (1) queues in guest memory (see
//! `ivmm_fuzz::ring`), queues frames and errors on a scripted backend, and
//! runs `process_tx` / `Rx::process` as the device's I/O thread does. The
//! backend panics on a transmitted frame of illegal size.
//!
//! Input: flags:u8 (bit 0 MRG_RXBUF, bit 1 sends fail), receive queue
//! setup, transmit queue setup, then ring operations and target operations
//! 0 serve TX, 1 serve RX, 2 queue a frame (len:u32 % 65564, n:u8, n bytes
//! zero-padded to len), 3 queue a backend error (kind:u8).
//!
//! Run: `fuzz/run.sh virtio_net_tx_rx 600`
#![no_main]

use std::io::ErrorKind;

use devices::virtio::net::rxtx::{process_tx, Rx};
use devices::virtio::net::MAX_FRAME_LEN;
use ivmm_fuzz::doubles::ScriptedNet;
use ivmm_fuzz::ring::{Driver, Op, QueueSetup};
use ivmm_fuzz::Input;
use libfuzzer_sys::fuzz_target;

const SERVE_TX: u8 = 0;
const SERVE_RX: u8 = 1;
const FRAME: u8 = 2;
const ERROR: u8 = 3;
const TARGET_OPS: u8 = 4;
/// Bounds on work and memory per input.
const MAX_OPS: usize = 1024;
const MAX_SERVES: usize = 32;
const MAX_FRAME_BYTES: usize = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let mut i = Input::new(data);
    let flags = i.u8();
    let setups = [QueueSetup::decode(&mut i), QueueSetup::decode(&mut i)];
    let Some(mut driver) = Driver::new(&setups) else {
        return;
    };
    let (Some(mut rxq), Some(mut txq)) = (driver.device_queue(0), driver.device_queue(1)) else {
        return;
    };
    let backend = ScriptedNet {
        send_fails: flags & 2 != 0,
        ..Default::default()
    };
    let mut rx = Rx::new(flags & 1 != 0);
    let mut tx_buf = Vec::with_capacity(MAX_FRAME_LEN);
    let (mut serves, mut frame_bytes) = (0, 0);
    for _ in 0..MAX_OPS {
        if i.is_empty() || serves == MAX_SERVES {
            break;
        }
        let op = Op::decode(&mut i, TARGET_OPS);
        match driver.apply(&op) {
            None => {}
            Some(SERVE_TX) => {
                serves += 1;
                let _ = process_tx(&mut txq, &driver.mem, &backend, &mut tx_buf);
            }
            Some(SERVE_RX) => {
                serves += 1;
                let _ = rx.process(&mut rxq, &driver.mem, &backend);
            }
            Some(FRAME) => {
                let len = (i.u32() % (MAX_FRAME_LEN as u32 + 2)) as usize;
                let n = i.u8();
                let mut frame = i.bytes(usize::from(n)).to_vec();
                frame.resize(len, 0);
                frame_bytes += len;
                if frame_bytes > MAX_FRAME_BYTES {
                    break;
                }
                lock(&backend).push_back(Ok(frame));
            }
            Some(ERROR) => {
                let kind = match i.u8() % 4 {
                    0 => ErrorKind::Interrupted,
                    1 => ErrorKind::WouldBlock,
                    2 => ErrorKind::ConnectionReset,
                    _ => ErrorKind::Other,
                };
                lock(&backend).push_back(Err(kind));
            }
            Some(_) => {}
        }
    }
    // A last round, as after the next kicks.
    let _ = process_tx(&mut txq, &driver.mem, &backend, &mut tx_buf);
    let _ = rx.process(&mut rxq, &driver.mem, &backend);
});

fn lock(
    b: &ScriptedNet,
) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Result<Vec<u8>, ErrorKind>>> {
    b.rx.lock().unwrap_or_else(|p| p.into_inner())
}
