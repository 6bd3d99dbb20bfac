//! Guest clusters whose new data mapping has been prepared but not yet committed.
//!
//! (ivmm patch.)  A prepared mapping used to keep its L2 table write-locked across the data
//! write, which serialized every allocating write under the same L2 table (512 MiB of guest
//! space with 64 KiB clusters).  Now the L2 lock is held only while the mapping is prepared and
//! while it is committed; in between, the guest clusters are registered here, so that another
//! request for the same clusters waits for the commit (and then finds them mapped) instead of
//! allocating them a second time, while requests for other clusters go on.

use super::types::GuestCluster;
use crate::sync_primitives::{OwnedRwLock, OwnedRwLockWriteGuard};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The set of guest cluster ranges with a prepared, uncommitted mapping.
#[derive(Default)]
pub(super) struct InFlightAllocations {
    /// Registered ranges; few at a time (at most one per concurrent request), so a list.
    entries: Mutex<Vec<InFlightEntry>>,

    /// Source of entry IDs.
    next_id: AtomicU64,
}

/// One registered range.
struct InFlightEntry {
    /// Identifies the entry for its guard.
    id: u64,

    /// Guest clusters covered.
    clusters: Range<u64>,

    /// Write-locked by the guard until the mapping is committed or dropped.
    done: OwnedRwLock<()>,
}

/// Keeps a range registered; dropping it unregisters the range and wakes its waiters.
///
/// Must be dropped only after the mapping has been entered into the L2 table (or discarded), so
/// that a waiter that wakes up sees the final state.
pub(super) struct InFlightGuard {
    /// The set this range is registered in.
    set: Arc<InFlightAllocations>,

    /// ID of the entry.
    id: u64,

    /// Held until the entry has been removed (field drop order: after `Drop::drop()`).
    _done: OwnedRwLockWriteGuard<()>,
}

/// What [`InFlightAllocations::check()`] found for a range of guest clusters.
pub(super) enum InFlightCheck {
    /// Nothing in the range is in flight.
    Free,

    /// Only the clusters up to (excluding) this one are free.
    FreeUntil(GuestCluster),

    /// The first cluster is in flight: wait on this lock (read-lock it), then look again.
    Wait(OwnedRwLock<()>),
}

impl InFlightAllocations {
    /// The entry list, locked.
    fn entries(&self) -> MutexGuard<'_, Vec<InFlightEntry>> {
        // Entries stay consistent even if a holder panicked: every update is a single push or
        // removal.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Check whether any of `clusters` is in flight.
    ///
    /// Callers must hold the write lock of the L2 table covering `clusters` (all of which must be
    /// in that table) across this check and a following [`InFlightAllocations::register()`], so
    /// that nobody can register an overlapping range in between.
    pub fn check(&self, clusters: Range<GuestCluster>) -> InFlightCheck {
        let first_conflict = self
            .entries()
            .iter()
            .filter(|e| e.clusters.start < clusters.end.0 && clusters.start.0 < e.clusters.end)
            .min_by_key(|e| e.clusters.start)
            .map(|e| (e.clusters.start, e.done.clone()));

        match first_conflict {
            None => InFlightCheck::Free,
            Some((start, _)) if start > clusters.start.0 => {
                InFlightCheck::FreeUntil(GuestCluster(start))
            }
            Some((_, done)) => InFlightCheck::Wait(done),
        }
    }
}

#[maybe_async::maybe_async]
impl InFlightAllocations {
    /// Register `clusters` as in flight until the returned guard is dropped.
    ///
    /// See [`InFlightAllocations::check()`] for the locking the caller must do.
    pub async fn register(self: &Arc<Self>, clusters: Range<GuestCluster>) -> InFlightGuard {
        let done = OwnedRwLock::default();
        // A fresh lock: taking it cannot block.
        let guard = done.write().await;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.entries().push(InFlightEntry {
            id,
            clusters: clusters.start.0..clusters.end.0,
            done,
        });
        InFlightGuard {
            set: Arc::clone(self),
            id,
            _done: guard,
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.entries().retain(|e| e.id != self.id);
    }
}
