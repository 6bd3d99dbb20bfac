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

/// A fresh qcow2 image of virtual size `size`, its file padded to
/// `container` bytes: in the nested lab an image reaches ivmm as a fixed-size
/// block device in L1, so new clusters must fit inside the file's length
/// (qcow2 allocates free clusters below the end first).
fn qcow2_image(path: &Path, size: &str, container: u64) {
    qemu_img(&["create", "-q", "-f", "qcow2", p(path), size]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(container))
        .expect("pad qcow2 container");
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

const MIB: usize = 1 << 20;

/// Deterministic, incompressible-looking bytes (xorshift64).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn md5_hex(path: &Path) -> String {
    let out = Command::new("md5sum").arg(path).output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The raw bytes of any image, through qemu-img.
fn image_bytes(s: &Scratch, image: &Path, format: &str) -> Vec<u8> {
    let raw = s.path("export.raw");
    qemu_img(&["convert", "-f", format, "-O", "raw", p(image), p(&raw)]);
    let bytes = std::fs::read(&raw).expect("exported image");
    let _ = std::fs::remove_file(&raw);
    bytes
}

#[test]
fn guest_reads_host_bytes_and_host_gets_guest_writes_exactly() {
    let lab = lab();
    let s = Scratch::new("data");
    let src = pattern(64 * MIB, 0x5eed);
    let src_raw = s.path("src.raw");
    std::fs::write(&src_raw, &src).expect("src.raw");
    let src_qcow = s.path("src.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        p(&src_raw),
        p(&src_qcow),
    ]);
    let out_raw = s.path("out.raw");
    std::fs::File::create(&out_raw)
        .and_then(|f| f.set_len(16 * MIB as u64))
        .expect("out.raw");
    let out_qcow = s.path("out.qcow2");
    qcow2_image(&out_qcow, "16M", 32 * MIB as u64);
    let want_md5 = md5_hex(&src_raw);

    let out = boot(
        &lab,
        &[
            "--vcpus",
            "2",
            "--disk",
            "{disk0},format=raw,readonly=on",
            "--disk",
            "{disk1},format=qcow2,readonly=on",
            "--disk",
            "{disk2},format=raw",
            "--disk",
            "{disk3},format=qcow2",
        ],
        &[&src_raw, &src_qcow, &out_raw, &out_qcow],
        "md5sum /dev/vda /dev/vdb && \
         dd if=/dev/vda of=/dev/vdc bs=1M count=8 seek=4 conv=fsync 2>/dev/null && \
         dd if=/dev/vdb of=/dev/vdd bs=1M skip=8 count=8 seek=2 conv=fsync 2>/dev/null && \
         dd if=/dev/vda of=/dev/vdd bs=512 skip=3 count=1 seek=77 conv=fsync 2>/dev/null && \
         echo written",
    );
    let got = cmd_output(&out);
    let sums: Vec<&str> = got
        .lines()
        .filter(|l| l.contains("/dev/vd"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(sums, vec![want_md5.as_str(); 2], "{got}");
    assert!(got.contains("written"), "{got}");

    let mut want = vec![0u8; 16 * MIB];
    want[4 * MIB..12 * MIB].copy_from_slice(&src[..8 * MIB]);
    assert!(
        std::fs::read(&out_raw).expect("out.raw") == want,
        "raw disk bytes differ"
    );

    qemu_img(&["check", "-q", "-f", "qcow2", p(&out_qcow)]);
    let mut want = vec![0u8; 16 * MIB];
    want[2 * MIB..10 * MIB].copy_from_slice(&src[8 * MIB..16 * MIB]);
    want[77 * 512..78 * 512].copy_from_slice(&src[3 * 512..4 * 512]);
    let reference = s.path("ref.raw");
    std::fs::write(&reference, &want).expect("ref.raw");
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        p(&out_qcow),
        p(&reference),
    ]);
    assert!(image_bytes(&s, &out_qcow, "qcow2") == want);
}

#[test]
fn readonly_disk_refuses_guest_writes_and_stays_untouched() {
    let lab = lab();
    let s = Scratch::new("ro");
    let img = s.path("ro.raw");
    let bytes = pattern(4 * MIB, 7);
    std::fs::write(&img, &bytes).expect("ro.raw");
    let mtime = std::fs::metadata(&img)
        .and_then(|m| m.modified())
        .expect("mtime");
    let out = boot(
        &lab,
        &["--disk", "{disk0},format=raw,readonly=on"],
        &[&img],
        "cat /sys/block/vda/ro; \
         dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync 2>/dev/null; echo dd=$?; \
         blkdiscard /dev/vda 2>/dev/null; echo discard=$?",
    );
    let got = cmd_output(&out);
    let lines: Vec<&str> = got.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&"1"), "{got}");
    assert!(!got.contains("dd=0"), "{got}");
    assert!(!got.contains("discard=0"), "{got}");
    assert!(std::fs::read(&img).expect("ro.raw") == bytes);
    assert_eq!(
        std::fs::metadata(&img)
            .and_then(|m| m.modified())
            .expect("mtime"),
        mtime
    );
}

/// `ivmm run ...` for a shell script, the guest running `cmd`.
fn ivmm_command(_lab: &Lab, args: &[&str], cmd: &str) -> String {
    GuestBoot::new()
        .command(cmd)
        .args(args)
        .shell_command()
        .expect("ivmm args")
}

#[test]
fn second_writer_is_refused_with_a_clear_message() {
    let lab = lab();
    let s = Scratch::new("lock");
    let img = s.path("shared.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&img), "8M"]);
    let first = ivmm_command(
        &lab,
        &[
            "--serial",
            "none",
            "--console-log",
            "/tmp/first.log",
            "--disk",
            "{disk0},format=qcow2",
        ],
        "echo FIRST-UP; sleep 600",
    );
    let second = ivmm_command(&lab, &["--disk", "{disk0},format=qcow2"], "true");
    let readonly = ivmm_command(
        &lab,
        &["--disk", "{disk0},format=qcow2,readonly=on"],
        "true",
    );
    let script = format!(
        "{first} & P=$!\n\
         i=0; until grep -q FIRST-UP /tmp/first.log 2>/dev/null; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.2; done\n\
         {second}; echo second-rc=$?\n\
         {readonly}; echo readonly-rc=$?\n\
         kill -9 $P; wait $P; echo done"
    );
    let out = lab
        .run_shell(
            &script,
            RunOptions::new()
                .disk(&img)
                .timeout(Duration::from_secs(300)),
        )
        .expect("lab run");
    let c = &out.console;
    assert!(c.contains("second-rc=1"), "{c}\n{}", out.l1_log);
    assert!(c.contains("in use by another process"), "{c}");
    assert!(c.contains("--disk /dev/lab-disk-0"), "{c}");
    // A reader is refused too while a writer holds the image (QEMU's rule).
    assert!(c.contains("readonly-rc=1"), "{c}");
}

#[test]
fn mkfs_files_and_poweroff_leave_a_clean_ext2_on_qcow2() {
    let lab = lab();
    let s = Scratch::new("fs");
    let img = s.path("fs.qcow2");
    qcow2_image(&img, "64M", 96 * MIB as u64);
    let out = boot(
        &lab,
        &["--vcpus", "2", "--disk", "{disk0},format=qcow2"],
        &[&img],
        "(modprobe ext4 2>/dev/null || true) && mke2fs -q /dev/vda && mkdir -p /mnt && mount -t ext2 /dev/vda /mnt && \
         echo hello-ivmm > /mnt/hello.txt && \
         dd if=/dev/urandom of=/mnt/big bs=1M count=20 2>/dev/null && \
         md5sum /mnt/big && umount /mnt && echo unmounted",
    );
    let got = cmd_output(&out);
    assert!(got.contains("unmounted"), "{got}");
    let guest_md5 = got
        .lines()
        .find(|l| l.contains("/mnt/big"))
        .and_then(|l| l.split_whitespace().next())
        .expect("md5 line")
        .to_string();
    qemu_img(&["check", "-q", "-f", "qcow2", p(&img)]);
    let raw = s.path("fs.raw");
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", p(&img), p(&raw)]);
    let fsck = Command::new("e2fsck")
        .args(["-fn", p(&raw)])
        .output()
        .expect("e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let cat = |file: &str| {
        Command::new("debugfs")
            .args(["-R", &format!("cat {file}"), p(&raw)])
            .output()
            .expect("debugfs")
            .stdout
    };
    assert_eq!(cat("/hello.txt"), b"hello-ivmm\n");
    let big = s.path("big");
    std::fs::write(&big, cat("/big")).expect("big");
    assert_eq!(md5_hex(&big), guest_md5);
}

#[test]
fn synced_data_survives_kill_9_of_ivmm() {
    let lab = lab();
    let s = Scratch::new("kill");
    let img = s.path("d.qcow2");
    qcow2_image(&img, "32M", 48 * MIB as u64);
    let run = ivmm_command(
        &lab,
        &[
            "--serial",
            "none",
            "--console-log",
            "/tmp/g.log",
            "--disk",
            "{disk0},format=qcow2",
        ],
        // Data written through the page cache, then fsync of the device
        // (`sync FILE`): only the guest's flush makes it durable. A plain
        // `sync` flushes filesystems but sends no FLUSH for a raw device.
        "dd if=/dev/urandom of=/dev/vda bs=1M count=12 seek=3 2>/dev/null && sync /dev/vda && \
         echo SUM=$(dd if=/dev/vda bs=1M skip=3 count=12 2>/dev/null | md5sum) && \
         echo SYNCED; sleep 600",
    );
    let script = format!(
        "{run} & P=$!\n\
         i=0; until grep -q SYNCED /tmp/g.log 2>/dev/null; do i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.2; done\n\
         kill -9 $P; wait $P; echo killed-rc=$?; grep SUM= /tmp/g.log
         /usr/bin/qemu-img check /dev/lab-disk-0; echo check-rc=$?
         /usr/bin/qemu-img convert -O raw /dev/lab-disk-0 /tmp/back.raw && \
         echo L1SUM=$(dd if=/tmp/back.raw bs=1M skip=3 count=12 2>/dev/null | md5sum)"
    );
    let out = lab
        .run_shell(
            &script,
            RunOptions::new()
                .disk(&img)
                .host_binary("/usr/bin/qemu-img")
                .timeout(Duration::from_secs(300)),
        )
        .expect("lab run");
    let c = &out.console;
    assert!(c.contains("killed-rc=137"), "{c}\n{}", out.l1_log);
    let sum = c
        .lines()
        .find_map(|l| l.trim().strip_prefix("SUM="))
        .and_then(|l| l.split_whitespace().next())
        .expect("guest checksum")
        .to_string();
    // L1's own view right after the kill, then the host file's.
    assert!(c.contains("check-rc=0"), "{c}");
    assert!(c.contains(&format!("L1SUM={sum}")), "{c}");
    let bytes = image_bytes(&s, &img, "qcow2");
    let region = s.path("region");
    std::fs::write(&region, &bytes[3 * MIB..15 * MIB]).expect("region");
    assert_eq!(md5_hex(&region), sum);
}

#[test]
fn discard_shrinks_qcow2_and_reads_back_zeroes() {
    // The image lives in L1's tmpfs (which punches holes), not on a lab
    // disk: the lab's L1 disks do not pass discards to the host file.
    let lab = lab();
    let guest =
        "dd if=/dev/urandom of=/dev/vda bs=1M count=48 conv=fsync 2>/dev/null && echo filled && \
         blkdiscard -o 4194304 -l 33554432 /dev/vda && sync && \
         echo Z=$(dd if=/dev/vda bs=1M skip=4 count=32 2>/dev/null | tr -d '\\000' | wc -c) && \
         echo N=$(dd if=/dev/vda bs=1M skip=36 count=12 2>/dev/null | tr -d '\\000' | wc -c)";
    let run = ivmm_command(&lab, &["--disk", "/tmp/t.qcow2,format=qcow2"], guest);
    let qemu_img = "/usr/bin/qemu-img";
    let script = format!(
        "{qemu_img} create -q -f qcow2 /tmp/t.qcow2 64M && {run}; echo ivmm-rc=$?\n\
         {qemu_img} check /tmp/t.qcow2; echo check-rc=$?\n\
         echo ACTUAL=$({qemu_img} info --output=json /tmp/t.qcow2 | grep actual-size)"
    );
    let out = lab
        .run_shell(
            &script,
            RunOptions::new()
                .host_binary(qemu_img)
                .timeout(Duration::from_secs(300)),
        )
        .expect("lab run");
    let c = &out.console;
    assert!(c.contains("ivmm-rc=0"), "{c}\n{}", out.l1_log);
    assert!(c.contains("Z=0"), "discarded range must read zeroes: {c}");
    assert!(!c.contains("N=0"), "the rest keeps its data: {c}");
    assert!(c.contains("check-rc=0"), "{c}");
    let actual: u64 = c
        .lines()
        .find_map(|l| l.trim().strip_prefix("ACTUAL="))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("actual-size in: {c}"));
    assert!(
        actual < 20 * MIB as u64,
        "48 MiB written, 32 MiB discarded: qcow2 actual size {actual}"
    );
}

#[test]
fn intx_fallback_serves_a_guest_without_msi() {
    let lab = lab();
    let s = Scratch::new("intx");
    let img = s.path("i.raw");
    let bytes = pattern(8 * MIB, 99);
    std::fs::write(&img, &bytes).expect("i.raw");
    let want = md5_hex(&img);
    let boot = GuestBoot::new()
        .cmdline_extra("pci=nomsi")
        .command(
            "md5sum /dev/vda; grep -c virtio /proc/interrupts; \
             grep -E 'virtio.*(MSI|PCI-MSI)' /proc/interrupts | wc -l",
        )
        .args(&["--disk", "{disk0},format=raw"]);
    let out = lab
        .boot(
            &boot,
            RunOptions::new()
                .disk(&img)
                .timeout(Duration::from_secs(240)),
        )
        .expect("lab run");
    let got = cmd_output(&out);
    let lines: Vec<&str> = got.lines().map(str::trim).collect();
    assert!(lines.first().is_some_and(|l| l.starts_with(&want)), "{got}");
    assert_eq!(
        lines.last(),
        Some(&"0"),
        "no MSI interrupts expected: {got}"
    );
}

#[test]
fn snapshot_discards_guest_writes_and_leaves_the_image_alone() {
    let lab = lab();
    let s = Scratch::new("snap");
    let img = s.path("base.qcow2");
    let raw = s.path("base.raw");
    let bytes = pattern(4 * MIB, 5);
    std::fs::write(&raw, &bytes).expect("base.raw");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", p(&raw), p(&img)]);
    let before = std::fs::read(&img).expect("image");
    let out = boot(
        &lab,
        &[
            "--snapshot",
            "--disk",
            "{disk0},format=qcow2",
            "--disk",
            "{disk1},format=raw",
        ],
        &[&img, &raw],
        "dd if=/dev/zero of=/dev/vda bs=1M count=2 conv=fsync 2>/dev/null && \
         dd if=/dev/zero of=/dev/vdb bs=1M count=2 conv=fsync 2>/dev/null && \
         echo A=$(dd if=/dev/vda bs=1M count=2 2>/dev/null | tr -d '\\000' | wc -c) && \
         echo B=$(dd if=/dev/vda bs=1M skip=2 count=2 2>/dev/null | md5sum)",
    );
    let got = cmd_output(&out);
    // The guest sees its own writes, and the rest of the image below them.
    assert!(got.contains("A=0"), "{got}");
    let tail = s.path("tail");
    std::fs::write(&tail, &bytes[2 * MIB..]).expect("tail");
    assert!(got.contains(&format!("B={}", md5_hex(&tail))), "{got}");
    assert!(
        std::fs::read(&img).expect("image") == before,
        "image changed"
    );
    assert!(
        std::fs::read(&raw).expect("raw") == bytes,
        "raw image changed"
    );
}

#[test]
fn concurrent_writers_on_two_queues_lose_nothing() {
    let lab = lab();
    let s = Scratch::new("mq");
    let img = s.path("mq.raw");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(32 * MIB as u64))
        .expect("mq.raw");
    let out = boot(
        &lab,
        &["--vcpus", "2", "--disk", "{disk0},format=raw"],
        &[&img],
        "ls /sys/block/vda/mq; \
         taskset 1 dd if=/dev/urandom of=/dev/vda bs=64k count=200 oflag=direct 2>/dev/null & \
         taskset 2 dd if=/dev/urandom of=/dev/vda bs=64k count=200 seek=256 oflag=direct 2>/dev/null & \
         wait; sync; \
         echo S1=$(dd if=/dev/vda bs=64k count=200 iflag=direct 2>/dev/null | md5sum); \
         echo S2=$(dd if=/dev/vda bs=64k skip=256 count=200 iflag=direct 2>/dev/null | md5sum); \
         grep -E 'virtio[0-9]-req' /proc/interrupts",
    );
    let got = cmd_output(&out);
    let bytes = std::fs::read(&img).expect("mq.raw");
    let k64 = 64 * 1024;
    for (key, start) in [("S1=", 0usize), ("S2=", 256 * k64)] {
        let sum = got
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("{key} missing: {got}"));
        let region = s.path("region");
        std::fs::write(&region, &bytes[start..start + 200 * k64]).expect("region");
        assert_eq!(md5_hex(&region), sum, "{key}");
    }
    // Both request queues took interrupts (both vCPUs submitted).
    let busy_queues = got
        .lines()
        .filter(|l| l.contains("-req"))
        .filter(|l| {
            l.split_whitespace()
                .skip(1)
                .take(2)
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>()
                > 0
        })
        .count();
    assert_eq!(busy_queues, 2, "{got}");
}
