//! virtio-blk in the lab: ivmm gives a stock Debian kernel (its own virtio_pci
//! and virtio_blk modules) disks backed by raw and qcow2 images on the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ivmm_tests::{GuestBoot, Lab, LabOutcome, RunOptions};

fn lab() -> Lab {
    Lab::detect().expect("lab prerequisites (run scripts/setup.sh and scripts/fetch-guest.sh)")
}

/// A scratch directory for one test's images, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ivmm-vblk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Boots the guest with `args` and the `disks` attached to L1, runs `cmd`.
fn boot(lab: &Lab, args: &[&str], disks: &[&Path], cmd: &str) -> LabOutcome {
    let mut opts = RunOptions::new().timeout(Duration::from_secs(240));
    for d in disks {
        opts = opts.disk(*d);
    }
    let boot = GuestBoot::new().command(cmd).args(args);
    lab.boot(&boot, opts).expect("lab run")
}

fn cmd_output(out: &LabOutcome) -> String {
    match out.guest_cmd_ok() {
        Ok(s) => s,
        Err(e) => panic!(
            "guest command failed: {e}\nconsole:\n{}\nL1 log:\n{}",
            out.console, out.l1_log
        ),
    }
}

#[test]
fn raw_and_qcow2_disks_appear_with_size_serial_and_one_queue_per_vcpu() {
    let lab = lab();
    let s = Scratch::new("sizes");
    let raw = s.path("a.raw");
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(3 << 20))
        .expect("raw image");
    let qcow = s.path("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&qcow), "5M"]);
    let out = boot(
        &lab,
        &[
            "--vcpus",
            "2",
            "--disk",
            "{disk0},format=raw,serial=RAW-1",
            "--disk",
            "{disk1},format=qcow2,serial=QCOW-2",
        ],
        &[&raw, &qcow],
        "for d in vda vdb; do echo $d $(cat /sys/block/$d/size) $(cat /sys/block/$d/serial) \
         $(ls /sys/block/$d/mq | wc -l) $(cat /sys/block/$d/ro); done",
    );
    let got = cmd_output(&out);
    assert_eq!(
        got.trim(),
        "vda 6144 RAW-1 2 0\nvdb 10240 QCOW-2 2 0",
        "console:\n{}",
        out.console
    );
}
