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
        let thread = spawn_filtered(
            "ivmm-spawner".into(),
            ThreadKind::Spawner,
            mode,
            move || serve(rx, mode),
        )?;
        Ok(FilteredSpawner {
            requests: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }
}

fn serve(requests: mpsc::Receiver<Request>, mode: SeccompMode) {
    for req in requests {
        let kind = match req.kind {
            WorkerKind::Block => ThreadKind::Block,
            WorkerKind::Net => ThreadKind::Net,
        };
        let started = spawn_filtered(req.name, kind, mode, req.work);
        let _ = req.reply.send(started);
    }
}

/// Starts a thread that installs `kind`'s filter and then runs `body`;
/// returns once the filter is in place. A thread whose filter fails never
/// runs its body, and the failure is returned.
fn spawn_filtered(
    name: String,
    kind: ThreadKind,
    mode: SeccompMode,
    body: impl FnOnce() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let what = name.clone();
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let installed = seccomp::install(kind, mode);
        let ok = installed.is_ok();
        let _ = ready_tx.send(installed);
        if ok {
            body();
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
            Err(io::Error::other(format!(
                "thread {what} died while starting"
            )))
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
