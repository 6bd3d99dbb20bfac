//! Several requests of a device in flight at once.
//!
//! A queue thread that ran each request itself would hand a guest's 32
//! outstanding 4 KiB reads to the host disk one after another. Instead the
//! queue thread pops chains and hands them to a small pool of threads
//! shared by the device's queues (as QEMU's `aio=threads` does); each
//! finished request comes back to its queue's [`Completions`], and only the
//! queue thread touches the rings. virtio lets requests complete in any
//! order (§2.7.13); a FLUSH covers the writes completed before it, and a
//! driver waits for those completions before it sends one.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::handle_chain;
use super::request::{Desc, DiskLimits, VIRTIO_BLK_ID_BYTES};
use crate::block::DiskBackend;
use crate::virtio::spawn::{WorkerKind, WorkerSpawner};

/// What every request of a device needs besides its chain.
pub struct RequestContext {
    pub mem: GuestMemoryMmap,
    pub disk: Arc<dyn DiskBackend>,
    pub limits: DiskLimits,
    pub serial: [u8; VIRTIO_BLK_ID_BYTES],
}

impl RequestContext {
    /// Runs one chain; returns the used length.
    pub fn run(&self, descs: &[Desc], complete: bool) -> u32 {
        handle_chain(
            descs,
            complete,
            &self.mem,
            self.disk.as_ref(),
            &self.limits,
            &self.serial,
        )
    }
}

/// A popped chain on its way to a pool thread.
pub struct Job {
    pub head: u16,
    pub descs: Vec<Desc>,
    pub complete: bool,
    /// Where the result goes.
    pub done: Arc<Completions>,
}

/// One queue's finished requests, as (head index, used length).
pub struct Completions {
    finished: Mutex<Vec<(u16, u32)>>,
    changed: Condvar,
    /// Signalled on every completion; the queue thread polls it.
    pub ready: EventFd,
}

impl Completions {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            finished: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            ready: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    fn push(&self, head: u16, len: u32) {
        lock(&self.finished).push((head, len));
        self.changed.notify_all();
        let _ = self.ready.write(1);
    }

    /// Takes what has finished so far.
    pub fn take(&self) -> Vec<(u16, u32)> {
        std::mem::take(&mut *lock(&self.finished))
    }

    /// Takes what has finished, waiting for at least one.
    pub fn wait(&self) -> Vec<(u16, u32)> {
        let mut finished = lock(&self.finished);
        while finished.is_empty() {
            finished = self
                .changed
                .wait(finished)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        std::mem::take(&mut *finished)
    }
}

#[derive(Default)]
struct JobQueue {
    jobs: VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<JobQueue>,
    available: Condvar,
}

/// Hands jobs to the pool; cheap to clone, one per queue thread.
#[derive(Clone)]
pub struct Submitter(Arc<Shared>);

impl Submitter {
    /// Queues `job`. A pool that is stopping takes no more work: the job
    /// comes back at once as failed (used length 0), so that the queue
    /// thread, itself about to stop, is not left waiting for it.
    pub fn submit(&self, job: Job) {
        let mut queue = lock(&self.0.queue);
        if queue.closed {
            drop(queue);
            job.done.push(job.head, 0);
            return;
        }
        queue.jobs.push_back(job);
        drop(queue);
        self.0.available.notify_one();
    }
}

/// The threads and their job queue.
pub struct RequestPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl RequestPool {
    /// A pool with no threads yet; jobs submitted now wait for [`start`].
    ///
    /// [`start`]: RequestPool::start
    pub fn new() -> Self {
        Self {
            shared: Arc::default(),
            threads: Vec::new(),
        }
    }

    pub fn submitter(&self) -> Submitter {
        Submitter(self.shared.clone())
    }

    /// Starts `count` threads named `<prefix><n>`.
    pub fn start(
        &mut self,
        prefix: &str,
        count: usize,
        spawner: &dyn WorkerSpawner,
        ctx: Arc<RequestContext>,
    ) -> io::Result<()> {
        for n in 0..count {
            let shared = self.shared.clone();
            let ctx = ctx.clone();
            let handle = spawner.spawn(
                format!("{prefix}{n}"),
                WorkerKind::Block,
                Box::new(move || serve(&shared, &ctx)),
            )?;
            self.threads.push(handle);
        }
        Ok(())
    }

    /// Lets the threads finish every queued job, then joins them. Jobs no
    /// thread ran (none was started: activation failed half-way) come back
    /// as failed, so no queue thread waits for them forever.
    pub fn stop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.available.notify_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("virtio-blk: a request thread panicked");
            }
        }
        let left = std::mem::take(&mut lock(&self.shared.queue).jobs);
        for job in left {
            job.done.push(job.head, 0);
        }
    }
}

impl Default for RequestPool {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RequestPool {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(shared: &Shared, ctx: &RequestContext) {
    loop {
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                q = shared
                    .available
                    .wait(q)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        let len = ctx.run(&job.descs, job.complete);
        job.done.push(job.head, len);
    }
}

/// A lock whose holder cannot leave the data half-changed: every critical
/// section here is a push or a take, so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
