//! `ivmm run` end to end on this host's KVM with tiny guests (any KVM runs
//! them, kvm_pvm included), and its handling of bad input. Booting stock
//! kernels is tested in the lab (tests crate).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ivmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ivmm"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ivmm-run-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn run(args: &[&str]) -> Output {
    ivmm()
        .arg("run")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn ivmm")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write fixture");
    p.to_string_lossy().into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// /dev/kvm must be usable for the boot tests; say so instead of skipping.
fn require_kvm() {
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        "these tests need read/write access to /dev/kvm"
    );
}

#[test]
fn pvh_guest_prints_and_reboot_exits_zero() {
    require_kvm();
    let dir = scratch("pvh");
    let kernel = write(&dir, "tiny.elf", &common::tiny_guest::pvh_elf(b'P'));
    let out = run(&["--kernel", &kernel, "--mem", "128M"]);
    assert_eq!(out.stdout, b"P", "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("rebooted"), "{}", stderr(&out));
}

#[test]
fn bzimage_guest_prints_with_several_vcpus() {
    require_kvm();
    let dir = scratch("bz");
    let kernel = write(&dir, "tiny.bz", &common::tiny_guest::bzimage(b'B'));
    let initrd = write(&dir, "initrd", &[0x42; 4096]);
    let log = dir.join("console.log");
    let out = run(&[
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--vcpus",
        "2",
        "--console-log",
        log.to_str().unwrap(),
    ]);
    assert_eq!(out.stdout, b"B", "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(std::fs::read(&log).unwrap(), b"B");
}

#[test]
fn serial_file_mode_appends_output() {
    require_kvm();
    let dir = scratch("serialfile");
    let kernel = write(&dir, "tiny.elf", &common::tiny_guest::pvh_elf(b'F'));
    let path = dir.join("serial.out");
    let serial = format!("file:{}", path.display());
    for _ in 0..2 {
        let out = run(&["--kernel", &kernel, "--serial", &serial]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"FF");
}

/// Each bad input gives one line naming the problem and a non-zero exit.
fn assert_refused(args: &[&str], needle: &str) {
    let out = run(args);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{args:?} was accepted");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err:?}"
    );
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
}

#[test]
fn bad_input_is_refused_by_name() {
    let dir = scratch("bad");
    let kernel = write(&dir, "tiny.elf", &common::tiny_guest::pvh_elf(b'x'));
    let junk = write(&dir, "junk.bin", &[0x90; 10_000]);
    let missing = dir.join("nope").to_string_lossy().into_owned();
    assert_refused(&["--kernel", &missing], "nope");
    assert_refused(&["--kernel", &junk], "not a kernel");
    assert_refused(&["--kernel", &kernel, "--mem", "0"], "--mem");
    assert_refused(&["--kernel", &kernel, "--mem", "12Q"], "--mem");
    assert_refused(&["--kernel", &kernel, "--vcpus", "0"], "--vcpus");
    assert_refused(&["--kernel", &kernel, "--vcpus", "100000"], "--vcpus");
    assert_refused(&["--kernel", &kernel, "--bogus"], "--bogus");
    assert_refused(&["--kernel", &kernel, "--initrd", &missing], "nope");
    assert_refused(&["--kernel", &kernel, "--serial", "tcp:1"], "--serial");
    // An initrd larger than guest RAM.
    let big = dir.join("big.img");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(64 << 20).unwrap();
    assert_refused(
        &[
            "--kernel",
            &kernel,
            "--mem",
            "32M",
            "--initrd",
            big.to_str().unwrap(),
        ],
        "does not fit",
    );
}

#[test]
fn failed_vcpu_exits_one_with_registers_and_explains_pvm_hosts() {
    require_kvm();
    let dir = scratch("fatal");
    let kernel = write(
        &dir,
        "mmio.elf",
        &common::tiny_guest::pvh_elf_executing_mmio(),
    );
    let out = run(&["--kernel", &kernel]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("vCPU 0 stopped"), "{err}");
    assert!(err.contains("rip="), "{err}");
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    assert_eq!(err.contains("cannot run unmodified kernels"), pvm, "{err}");
}

/// Whether this process holds CAP_NET_ADMIN (bit 12 of CapEff).
fn has_cap_net_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    eff & (1 << 12) != 0
}

#[test]
fn tap_without_cap_net_admin_fails_naming_the_tap_and_the_capability() {
    require_kvm();
    let dir = scratch("tap");
    let kernel = write(&dir, "tiny.elf", &common::tiny_guest::pvh_elf(b'P'));
    let ivmm_args = [
        "run",
        "--kernel",
        &kernel,
        "--mem",
        "128M",
        "--net",
        "tap=ivmmnocap0",
    ];
    // Without CAP_NET_ADMIN, TUNSETIFF fails before any interface exists.
    // With it (root), setpriv drops the capability from ivmm's bounding set,
    // inside a network namespace of its own (unshare) so that even a failed
    // drop could not create a TAP among the host's interfaces.
    let mut cmd = if has_cap_net_admin() {
        let mut c = Command::new("unshare");
        c.args(["--net", "setpriv", "--bounding-set=-net_admin"])
            .arg(env!("CARGO_BIN_EXE_ivmm"));
        c
    } else {
        ivmm()
    };
    let out = cmd
        .args(ivmm_args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn unshare/setpriv (util-linux) / ivmm");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("--net tap=ivmmnocap0"), "{err}");
    assert!(err.contains("needs CAP_NET_ADMIN"), "{err}");
    assert!(out.stdout.is_empty(), "the guest must not run");
}
