//! Device I/O threads under their filters, on this host without a guest:
//! this test binary re-runs itself as a child that starts a worker through
//! the VMM's spawner, and the worker makes a call its filter forbids.

use std::process::Command;

use devices::virtio::spawn::{WorkerKind, WorkerSpawner};
use vmm::seccomp::{self, SeccompMode};
use vmm::spawner::FilteredSpawner;

const CHILD_ENV: &str = "IVMM_SECCOMP_WORKER_CHILD";
/// More than glibc's 8 arenas (64-bit) created before it sizes the limit.
const WORKERS_AT_ONCE: usize = 24;

/// Frees enough heap in a thread arena for glibc to shrink that heap,
/// which (unprepared) makes it read /proc/sys/vm/overcommit_memory.
fn churn_heap() {
    let chunks: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 100 << 10]).collect();
    drop(std::hint::black_box(chunks));
}

/// In the child: the spawner and a worker of the named kind that calls
/// uselib (134), allowed by no filter; or (`trim`) one that frees heap.
fn child(kind: &str) {
    if kind == "many" {
        seccomp::prepare_process(SeccompMode::Kill).expect("prepare");
        seccomp::install_sigsys_handler().expect("handler");
        let spawner = FilteredSpawner::start(SeccompMode::Kill).expect("spawner");
        // Workers alive at once, each allocating on its own: more thread
        // arenas than glibc creates before it sizes its arena limit.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(WORKERS_AT_ONCE));
        let workers: Vec<_> = (0..WORKERS_AT_ONCE)
            .map(|i| {
                let barrier = barrier.clone();
                spawner
                    .spawn(
                        format!("ivmm-test-{i}"),
                        WorkerKind::Block,
                        Box::new(move || {
                            let v = std::hint::black_box(vec![i as u8; 4096]);
                            barrier.wait();
                            drop(v);
                        }),
                    )
                    .expect("spawn")
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        std::process::exit(0);
    }
    if kind == "trim" {
        seccomp::prepare_process(SeccompMode::Kill).expect("prepare");
        seccomp::install_sigsys_handler().expect("handler");
        let spawner = FilteredSpawner::start(SeccompMode::Kill).expect("spawner");
        for _ in 0..4 {
            let worker = spawner
                .spawn(
                    "ivmm-test-t".into(),
                    WorkerKind::Block,
                    Box::new(churn_heap),
                )
                .expect("spawn");
            let _ = worker.join();
        }
        std::process::exit(0);
    }
    seccomp::install_sigsys_handler().expect("handler");
    let spawner = FilteredSpawner::start(SeccompMode::Kill).expect("spawner");
    let kind = if kind == "block" {
        WorkerKind::Block
    } else {
        WorkerKind::Net
    };
    let worker = spawner
        .spawn(
            "ivmm-test-w".into(),
            kind,
            Box::new(|| {
                // SAFETY: an obsolete syscall with a null argument.
                unsafe { libc::syscall(libc::SYS_uselib, 0usize) };
            }),
        )
        .expect("spawn");
    let _ = worker.join();
    std::process::exit(0);
}

/// Runs this binary again as the child `kind` (see [`child`]).
fn run_child(kind: &str) -> std::process::Output {
    Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "forbidden_call_in_a_worker_stops_the_process_with_the_message",
            "--nocapture",
        ])
        .env(CHILD_ENV, kind)
        .output()
        .expect("run child")
}

/// The child `kind` must end normally, without a seccomp report.
fn assert_child_succeeds(kind: &str) {
    let out = run_child(kind);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn forbidden_call_in_a_worker_stops_the_process_with_the_message() {
    if let Ok(kind) = std::env::var(CHILD_ENV) {
        child(&kind);
    }
    for (kind, name) in [("block", "block I/O"), ("net", "net I/O")] {
        let out = run_child(kind);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{kind}: {:?} {err}", out.status);
        assert!(
            err.contains(&format!(
                "ivmm: seccomp: the {name} thread 'ivmm-test-w' made system call 134,"
            )),
            "{kind}: {err}"
        );
    }
}

/// glibc shrinks a thread arena's heap lazily on any thread; the first time
/// it opens a /proc file, which no worker filter allows.
#[test]
fn heap_trims_in_filtered_threads_need_no_file_access() {
    if std::env::var(CHILD_ENV).is_ok() {
        return; // the child runs the other test's entry point
    }
    assert_child_succeeds("trim");
}

/// Many filtered threads at once: glibc sizes its arena limit when it
/// creates the ninth arena, which must not need a file (the CPU count).
#[test]
fn many_filtered_threads_at_once_need_no_file_access() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    assert_child_succeeds("many");
}
