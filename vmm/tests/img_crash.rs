//! Crash consistency: a writer process doing random writes and periodic
//! flushes through the block layer is SIGKILLed at random moments; afterwards
//! qemu-img check must find no corruption (leaks are fine) and every flushed
//! write must be intact.
//!
//! The writer is this test binary re-executed with `IVMM_CRASH_CHILD` set
//! (running only `crash_writer_child`), so no helper binary is needed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use devices::block::create::{create_qcow2, Qcow2Options};
use devices::block::{open_disk, ImageFormat, OpenOptions};

const SIZE: u64 = 16 << 20;
const KILLS: usize = 60;
const FLUSH_EVERY: u64 = 8;

/// The i-th write of a run: (offset, length, fill byte).
fn nth_write(seed: u64, i: u64) -> (u64, u64, u8) {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (i + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9)
        | 1);
    r.next();
    let len = if r.below(4) == 0 {
        r.below(256 << 10) + 1
    } else {
        r.below(16 << 10) + 1
    };
    let off = r.below(SIZE - len);
    (off, len, (i % 251) as u8 + 1)
}

/// Child side: write forever, announcing each write before it starts ("W i")
/// and each completed flush ("F i": writes 0..=i are durable).
#[test]
fn crash_writer_child() {
    let Ok(spec) = std::env::var("IVMM_CRASH_CHILD") else {
        return; // Only runs when re-executed by the parent test.
    };
    let (path, seed) = spec.split_once(':').expect("path:seed");
    let seed: u64 = seed.parse().expect("seed");
    let disk = open_disk(
        Path::new(path),
        &OpenOptions {
            format: Some(ImageFormat::Qcow2),
            writable: true,
            ..Default::default()
        },
    )
    .expect("open");
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let (off, len, fill) = nth_write(seed, i);
        writeln!(out, "W {i}").unwrap();
        out.flush().unwrap();
        disk.write_at(off, &vec![fill; len as usize])
            .expect("write");
        if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
            disk.flush().expect("flush");
            writeln!(out, "F {i}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn sigkilled_writer_leaves_consistent_image_with_flushed_data() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("crash.qcow2");
    let raw = dir.path().join("crash.raw");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0xc0ffee);
    let mut total_flushed = 0u64;
    for round in 0..KILLS {
        let opts = Qcow2Options {
            size: SIZE,
            cluster_size: if round % 2 == 0 { 4096 } else { 65536 },
            refcount_bits: if round % 3 == 0 { 1 } else { 16 },
            lazy_refcounts: round % 4 == 1,
            ..Default::default()
        };
        create_qcow2(&img, &opts).unwrap();
        let seed = rng.next();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("IVMM_CRASH_CHILD", format!("{}:{seed}", img.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut started, mut flushed) = (None::<u64>, None::<u64>);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(i) = line.strip_prefix("W ").and_then(|s| s.parse().ok()) {
                    started = Some(i);
                } else if let Some(i) = line.strip_prefix("F ").and_then(|s| s.parse().ok()) {
                    flushed = Some(i);
                }
            }
            (started, flushed)
        });
        // Kill at a random moment: a deliberate random delay, not a poll.
        std::thread::sleep(Duration::from_millis(5 + rng.below(60)));
        let early_exit = child.try_wait().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let (started, flushed) = reader.join().unwrap();
        if let Some(st) = early_exit {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("round {round}: writer exited by itself ({st}): {err}");
        }
        assert!(!status.success());

        // No corruption (leaks are allowed after a crash).
        let (code, v) = qemu_check(&img);
        if code != 0 && code != 3 {
            if let Ok(keep) = std::env::var("IVMM_CRASH_KEEP") {
                std::fs::copy(&img, keep).unwrap();
            }
        }
        assert!(
            code == 0 || code == 3,
            "round {round}: qemu-img check {code}: {v}"
        );
        let o = ivmm(&["check", p(&img)]);
        assert!(
            matches!(o.status.code(), Some(0 | 3)),
            "round {round}: ivmm check: {}",
            String::from_utf8_lossy(&o.stderr)
        );

        // Every flushed write is intact; bytes touched by unflushed writes may be either.
        ok(
            "qemu-img",
            &["convert", "-f", "qcow2", "-O", "raw", p(&img), p(&raw)],
        );
        let data = std::fs::read(&raw).unwrap();
        let mut want = vec![0u8; SIZE as usize];
        let mut uncertain = vec![false; SIZE as usize];
        let last_flushed = flushed.map(|f| f as i64).unwrap_or(-1);
        for i in 0..=started.unwrap_or(0) {
            let (off, len, fill) = nth_write(seed, i);
            let r = off as usize..(off + len) as usize;
            if (i as i64) <= last_flushed {
                want[r].fill(fill);
            } else {
                uncertain[r].fill(true);
            }
        }
        if let Some(pos) = (0..SIZE as usize).find(|&k| !uncertain[k] && data[k] != want[k]) {
            panic!(
                "round {round}: byte {pos} is {} but flushed data says {} (flushed up to {last_flushed}, started {started:?})",
                data[pos], want[pos]
            );
        }
        total_flushed += (last_flushed + 1) as u64;
    }
    eprintln!("{KILLS} kills, {total_flushed} flushed writes verified");
    assert!(
        total_flushed > 0,
        "the writer never got to flush: kills too early"
    );
}
