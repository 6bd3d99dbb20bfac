//! How devices start their I/O threads.
//!
//! A device activates when the driver writes DRIVER_OK, i.e. on a vCPU
//! thread. A thread inherits its creator's seccomp filter and can only
//! narrow it, so a worker started right there could only do what the vCPU
//! may do. Devices therefore ask a [`WorkerSpawner`] for their threads; the
//! VMM's spawner starts them from a thread of its own and gives each one the
//! filter of its [`WorkerKind`]. Tests and fuzzers use [`PlainSpawner`].

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a worker thread does; decides the syscalls it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    /// Serves virtio-blk queues: disk I/O.
    Block,
    /// Serves a virtio-net device: TAP I/O.
    Net,
}

/// The work a thread runs.
pub type Work = Box<dyn FnOnce() + Send + 'static>;

/// Starts device worker threads.
pub trait WorkerSpawner: Send + Sync {
    /// Runs `work` on a new thread called `name`.
    fn spawn(&self, name: String, kind: WorkerKind, work: Work) -> io::Result<JoinHandle<()>>;
}

/// Starts threads directly, with no filter of their own.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainSpawner;

impl WorkerSpawner for PlainSpawner {
    fn spawn(&self, name: String, _kind: WorkerKind, work: Work) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name(name).spawn(work)
    }
}

/// The spawner devices use unless told otherwise.
pub fn plain() -> Arc<dyn WorkerSpawner> {
    Arc::new(PlainSpawner)
}
