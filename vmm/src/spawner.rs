//! The thread that starts the devices' I/O threads, each under the seccomp
//! filter of its kind. Devices activate on a vCPU thread; a thread started
//! there would inherit the vCPU's narrow filter (see `seccomp.rs`).

use std::io;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use devices::virtio::spawn::{Work, WorkerKind, WorkerSpawner};

use crate::seccomp::{self, SeccompMode, ThreadKind};

struct Request {
    name: String,
    kind: WorkerKind,
    work: Work,
    reply: mpsc::SyncSender<io::Result<JoinHandle<()>>>,
}

/// Hands spawn requests to the spawner thread; dropping it ends that thread.
pub struct FilteredSpawner {
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl FilteredSpawner {
    /// Starts the spawner thread, which installs its own filter first.
    pub fn start(mode: SeccompMode) -> io::Result<FilteredSpawner> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("ivmm-spawner".into())
            .spawn(move || {
                let installed = seccomp::install(ThreadKind::Spawner, mode);
                let ok = installed.is_ok();
                let _ = ready_tx.send(installed.map_err(io::Error::other));
                if ok {
                    serve(rx, mode);
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the spawner thread died while starting"))??;
        Ok(FilteredSpawner {
            requests: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }
}

fn serve(requests: mpsc::Receiver<Request>, mode: SeccompMode) {
    for req in requests {
        let _ = req
            .reply
            .send(start_worker(req.name, req.kind, req.work, mode));
    }
}

/// Starts one worker and waits until its filter is in place; a worker
/// whose filter fails never runs its work.
fn start_worker(
    name: String,
    kind: WorkerKind,
    work: Work,
    mode: SeccompMode,
) -> io::Result<JoinHandle<()>> {
    let thread_kind = match kind {
        WorkerKind::Block => ThreadKind::Block,
        WorkerKind::Net => ThreadKind::Net,
    };
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let installed = seccomp::install(thread_kind, mode);
        let ok = installed.is_ok();
        let _ = ready_tx.send(installed);
        if ok {
            work();
        }
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(io::Error::other(e))
        }
        Err(_) => {
            let _ = handle.join();
            Err(io::Error::other("a worker thread died while starting"))
        }
    }
}

impl WorkerSpawner for FilteredSpawner {
    fn spawn(&self, name: String, kind: WorkerKind, work: Work) -> io::Result<JoinHandle<()>> {
        let (reply, reply_rx) = mpsc::sync_channel(1);
        let sender = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| io::Error::other("the spawner has stopped"))?;
        sender
            .send(Request {
                name,
                kind,
                work,
                reply,
            })
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        reply_rx
            .recv()
            .map_err(|_| io::Error::other("the spawner thread is gone"))?
    }
}

impl Drop for FilteredSpawner {
    fn drop(&mut self) {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                log::error!("the spawner thread panicked");
            }
        }
    }
}

/// For a VM without virtio devices: nothing ever asks for a worker, so no
/// spawner thread is started (it would only cost memory).
pub struct NoWorkers;

impl WorkerSpawner for NoWorkers {
    fn spawn(&self, name: String, _kind: WorkerKind, _work: Work) -> io::Result<JoinHandle<()>> {
        Err(io::Error::other(format!(
            "{name}: this VM has no device that runs I/O threads"
        )))
    }
}
