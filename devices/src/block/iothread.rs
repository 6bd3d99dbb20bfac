//! I/O threads: the backends block, so the device model hands requests to a
//! named worker thread and gets completions back through the job's closure
//! (e.g. push to a used ring and signal an eventfd). vCPU threads never call a
//! backend directly.

use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::DiskBackend;

/// A job run on the I/O thread with the backend.
pub type IoJob = Box<dyn FnOnce(&dyn DiskBackend) + Send + 'static>;

/// Errors of the I/O thread.
#[derive(Debug, thiserror::Error)]
pub enum IoThreadError {
    #[error("cannot spawn I/O thread '{name}'")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O thread has stopped")]
    Stopped,
}

/// One worker thread owning a reference to a backend.
#[derive(Debug)]
pub struct IoThread {
    tx: Option<Sender<IoJob>>,
    handle: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Spawns a worker named `name` serving `backend`.
    pub fn spawn(name: &str, backend: Arc<dyn DiskBackend>) -> Result<IoThread, IoThreadError> {
        let (tx, rx) = channel::<IoJob>();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(backend.as_ref());
                }
                // Channel closed: make everything durable before exiting.
                if let Err(e) = backend.flush() {
                    log::error!("final flush failed: {e}");
                }
            })
            .map_err(|source| IoThreadError::Spawn {
                name: name.to_string(),
                source,
            })?;
        Ok(IoThread {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Queues a job; it runs in submission order.
    pub fn submit(&self, job: IoJob) -> Result<(), IoThreadError> {
        self.tx
            .as_ref()
            .ok_or(IoThreadError::Stopped)?
            .send(job)
            .map_err(|_| IoThreadError::Stopped)
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::RawDisk;

    #[test]
    fn jobs_run_off_thread_in_order() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8192).unwrap();
        let disk: Arc<dyn DiskBackend> =
            Arc::new(RawDisk::open(f.path(), true, false, false).unwrap());
        let t = IoThread::spawn("io-test", disk).unwrap();
        let (tx, rx) = channel();
        let caller = std::thread::current().id();
        t.submit(Box::new(|d| d.write_at(0, &[9; 512]).unwrap()))
            .unwrap();
        t.submit(Box::new(move |d| {
            let mut b = [0u8; 512];
            d.read_at(0, &mut b).unwrap();
            tx.send((b[511], std::thread::current().id() != caller))
                .unwrap();
        }))
        .unwrap();
        assert_eq!(rx.recv().unwrap(), (9, true));
    }
}
