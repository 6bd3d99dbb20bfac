//! Hardening in the lab, with the stock Debian kernel driving virtio-blk and
//! virtio-net: every ivmm thread runs under its seccomp filter while the
//! guest does disk and network I/O, and a forbidden call in a device I/O
//! thread stops ivmm with the documented message. Always the nested lab:
//! the tests create a TAP, which must not happen on the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ivmm_tests::{GuestBoot, Lab, LabOutcome, Mode, RunOptions};

fn lab() -> Lab {
    Lab::with_mode(Mode::Nested)
        .expect("nested lab prerequisites (run scripts/setup.sh and scripts/fetch-guest.sh)")
}

fn ivmm_command(args: &[&str], cmd: &str) -> String {
    GuestBoot::new()
        .command(cmd)
        .args(args)
        .shell_command()
        .expect("ivmm args")
}

/// A qcow2 image padded to a fixed container size (an L1 block device
/// cannot grow), removed on drop.
struct Image(PathBuf);

impl Image {
    fn qcow2(name: &str, size: &str, container: u64) -> Self {
        let path = std::env::temp_dir().join(format!("ivmm-hard-{name}-{}", std::process::id()));
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg(size)
            .output()
            .expect("qemu-img (scripts/setup.sh)");
        assert!(out.status.success(), "{out:?}");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(container))
            .expect("pad image");
        Image(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn context(out: &LabOutcome) -> String {
    format!("console:\n{}\nL1 log:\n{}", out.console, out.l1_log)
}

#[test]
fn every_thread_is_filtered_while_the_guest_uses_disk_and_network() {
    let lab = lab();
    let img = Image::qcow2("busy", "32M", 48 << 20);
    let run = ivmm_command(
        &[
            "--vcpus",
            "2",
            "--mem",
            "512M",
            "--serial",
            "none",
            "--console-log",
            "/tmp/g.log",
            "--disk",
            "{disk0},format=qcow2",
            "--net",
            "tap=tap0",
        ],
        "dd if=/dev/urandom of=/dev/vda bs=1M count=8 conv=fsync 2>/dev/null && echo DISK-OK; \
         ip link set eth0 up && ip addr add 10.0.5.15/24 dev eth0 && echo READY; sleep 600",
    );
    // The guest's disk writes and L1's pings run every worker; then each
    // thread's Seccomp field, then SIGTERM (power button, clean power-off).
    let script = format!(
        "{run} & P=$!\n\
         i=0; until [ -e /sys/class/net/tap0 ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done\n\
         ip addr add 10.0.5.1/24 dev tap0 && ip link set tap0 up\n\
         i=0; until grep -q READY /tmp/g.log 2>/dev/null; do i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.2; done\n\
         ping -c 3 -W 5 10.0.5.15 | grep 'packets received'\n\
         for t in /proc/$P/task/*; do echo THREAD $(cat $t/comm) $(grep Seccomp: $t/status); done\n\
         kill -TERM $P; wait $P; echo IVMM-RC=$?\n\
         cat /tmp/g.log\n"
    );
    let out = lab
        .run_shell(
            &script,
            RunOptions::new()
                .disk(img.path())
                .timeout(Duration::from_secs(400)),
        )
        .expect("lab run");
    let c = &out.console;
    assert!(c.contains("DISK-OK"), "{}", context(&out));
    assert!(
        c.contains("3 packets transmitted, 3 packets received"),
        "{}",
        context(&out)
    );
    let threads: Vec<(&str, &str)> = c
        .lines()
        .filter_map(|l| l.trim().strip_prefix("THREAD "))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.nth(1).unwrap_or("")))
        })
        .collect();
    for name in [
        "ivmm",
        "vcpu0",
        "vcpu1",
        "ivmm-spawner",
        "ivmm-blk0-q0",
        "ivmm-blk0-q1",
        "ivmm-net0",
    ] {
        assert!(
            threads.iter().any(|(n, _)| *n == name),
            "no thread {name} in {threads:?}\n{}",
            context(&out)
        );
    }
    for (name, seccomp) in &threads {
        assert_eq!(*seccomp, "2", "thread {name}: {threads:?}");
    }
    assert!(c.contains("IVMM-RC=0"), "{}", context(&out));
    assert!(!c.contains("seccomp:"), "{}", context(&out));
    let check = Command::new("qemu-img")
        .args(["check", "-q", "-f", "qcow2"])
        .arg(img.path())
        .output()
        .expect("qemu-img check");
    assert!(check.status.success(), "{check:?}");
}

/// Needs an ivmm built with `--features test-hooks` (scripts/test.sh builds
/// it so); the hook makes the first thread of the named kind call uselib.
#[test]
fn a_forbidden_call_in_a_device_thread_stops_ivmm_with_the_message() {
    let lab = lab();
    let img = Image::qcow2("kill", "8M", 16 << 20);
    // Without the hook the guest just powers off (exit 0), which fails below.
    let blk = ivmm_command(&["--disk", "{disk0},format=qcow2"], "true");
    let net = ivmm_command(&["--net", "tap=tap1"], "true");
    let script = format!(
        "IVMM_TEST_SECCOMP_VIOLATION=block {blk}; echo BLOCK-RC=$?\n\
         IVMM_TEST_SECCOMP_VIOLATION=net {net}; echo NET-RC=$?\n"
    );
    let out = lab
        .run_shell(
            &script,
            RunOptions::new()
                .disk(img.path())
                .timeout(Duration::from_secs(400)),
        )
        .expect("lab run");
    let c = &out.console;
    let hint = if c.contains("seccomp:") {
        ""
    } else {
        "no seccomp report at all: is the ivmm binary built with --features test-hooks \
         (scripts/test.sh builds it so)?\n"
    };
    assert!(c.contains("BLOCK-RC=1"), "{hint}{}", context(&out));
    assert!(
        c.contains("ivmm: seccomp: the block I/O thread 'ivmm-blk0-q0' made system call 134,"),
        "{hint}{}",
        context(&out)
    );
    assert!(c.contains("NET-RC=1"), "{hint}{}", context(&out));
    assert!(
        c.contains("ivmm: seccomp: the net I/O thread 'ivmm-net0' made system call 134,"),
        "{hint}{}",
        context(&out)
    );
}
