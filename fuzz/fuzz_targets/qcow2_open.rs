//! Opens arbitrary bytes as a qcow2 image: our header parser, the open-time
//! validation, imago's metadata handling (reads), and the independent `check`
//! walker. Backing files named by the input are never opened.
//!
//! Run: `fuzz/run.sh qcow2_open 600` (or cargo-fuzz: `cargo +nightly fuzz run qcow2_open`)
#![no_main]

use std::io::Write;

use devices::block::check::{check_qcow2, Repair};
use devices::block::{DiskBackend, ImageFormat, OpenOptions, Qcow2Disk};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut f) = tempfile::NamedTempFile::new() else {
        return;
    };
    if f.write_all(data).is_err() {
        return;
    }
    let path = f.path().to_path_buf();
    // The walker must never panic, whatever it finds.
    let _ = check_qcow2(&path, Repair::None);
    let opts = OpenOptions {
        format: Some(ImageFormat::Qcow2),
        open_backing: false,
        ..Default::default()
    };
    if let Ok(disk) = Qcow2Disk::open(&path, &opts) {
        let size = disk.size();
        let mut buf = vec![0u8; 65536];
        for off in [0, size / 2, size.saturating_sub(65536)] {
            let len = (size - off.min(size)).min(65536) as usize;
            let _ = disk.read_at(off, &mut buf[..len]);
        }
        let _ = disk.block_status(0, size);
    }
    // Repairs must not panic either (they write only inside the temp file).
    let _ = check_qcow2(&path, Repair::All);
});
