//! The loop of a device I/O thread.
//!
//! Every I/O thread runs an `event-manager` loop of its own, with the
//! device's state as the one subscriber: its kick eventfds, its stop
//! eventfd and (per device) a completion eventfd or the TAP fd. One loop per
//! thread rather than one for the VMM, so that a disk stalled on the host
//! never delays the console, another queue or another device.

use std::os::fd::RawFd;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

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

/// Watches `fds` for input, in a worker's `init`. On the first fd that
/// cannot be added it logs why and returns false: the worker should then
/// count itself stopped, since it would miss its kicks or its stop.
pub fn watch(ops: &mut EventOps, name: &str, fds: &[RawFd]) -> bool {
    for &fd in fds {
        if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
            log::error!("{name}: cannot watch fd {fd}: {e}");
            return false;
        }
    }
    true
}
