//! The loop of a device I/O thread.
//!
//! Every I/O thread runs an `event-manager` loop of its own, with the
//! device's state as the one subscriber: its kick eventfds, its stop
//! eventfd and (per device) a completion eventfd or the TAP fd. One loop per
//! thread rather than one for the VMM, so that a disk stalled on the host
//! never delays the console, another queue or another device.

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

/// A device I/O thread's state.
pub trait DeviceWorker: MutEventSubscriber {
    /// Whether the stop eventfd has fired: the loop ends after the current
    /// batch of events.
    fn stopped(&self) -> bool;
}

/// Serves `worker`'s events until it stops (or its loop breaks, which is
/// logged), and hands it back for the work that follows a stop.
pub fn run<W: DeviceWorker>(name: &str, worker: W) -> Option<W> {
    let mut events = match EventManager::new() {
        Ok(e) => e,
        Err(e) => {
            log::error!("{name}: cannot make an event loop: {e}");
            return Some(worker);
        }
    };
    // `init` registers the worker's fds and serves what is already queued.
    // A worker that could not register its fds stops at once.
    let id = events.add_subscriber(worker);
    loop {
        match events.subscriber_mut(id) {
            Ok(w) if !w.stopped() => {}
            _ => break,
        }
        if let Err(e) = events.run() {
            log::error!("{name}: event loop: {e}");
            break;
        }
    }
    events.remove_subscriber(id).ok()
}
