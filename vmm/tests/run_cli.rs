//! `ivmm run` end to end on this host's KVM with tiny guests (any KVM runs
//! them, kvm_pvm included), and its handling of bad input. Booting stock
//! kernels is tested in the lab (tests crate).

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn ivmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ivmm"))
}

fn scratch(name: &str) -> common::Scratch {
    common::Scratch::new("run-cli", name)
}

fn run(args: &[&str]) -> Output {
    ivmm()
        .arg("run")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn ivmm")
}

/// Starts `ivmm run ARGS --shutdown-timeout 1` with stdin closed and
/// stdout/stderr piped.
fn spawn_run(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    ivmm()
        .arg("run")
        .args(args)
        .args(["--shutdown-timeout", "1"])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
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

/// Starts ivmm on an idle guest with a raw disk and waits for the guest's
/// first byte, so every thread the VM starts before the guest runs exists.
fn start_idle_vm(name: &str) -> std::process::Child {
    use std::io::Read;
    let dir = scratch(name);
    let kernel = write(&dir, "idle.elf", &common::tiny_guest::pvh_elf_idle(b'I'));
    let disk = write(&dir, "disk.raw", &vec![0u8; 1 << 20]);
    let disk = format!("{disk},format=raw");
    let mut child = spawn_run(
        &[
            "--kernel", &kernel, "--mem", "128M", "--vcpus", "2", "--disk", &disk,
        ],
        &[],
    );
    let mut first = [0u8; 1];
    let read = child.stdout.as_mut().expect("stdout").read(&mut first);
    if read.ok() != Some(1) || first != *b"I" {
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        panic!("the idle guest did not print: {}", stderr(&out));
    }
    child
}

/// (thread name, `Seccomp:` value) of every thread of `pid`.
fn seccomp_of_threads(pid: u32) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("read tasks") {
        let status = std::fs::read_to_string(task.expect("task").path().join("status"))
            .expect("read status");
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        threads.push((field("Name:"), field("Seccomp:")));
    }
    threads.sort();
    threads
}

#[test]
fn every_thread_runs_under_its_seccomp_filter() {
    require_kvm();
    let child = start_idle_vm("seccomp-threads");
    // vCPU 0 may print before vCPU 1's thread exists.
    let expected = ["ivmm", "vcpu0", "vcpu1", "ivmm-spawner"];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let threads = loop {
        let threads = seccomp_of_threads(child.id());
        let all = expected.iter().all(|e| threads.iter().any(|(n, _)| n == e));
        if all || std::time::Instant::now() > deadline {
            break threads;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    send_sigterm(child.id());
    let out = child.wait_with_output().expect("wait");
    for name in expected {
        assert!(
            threads.iter().any(|(n, _)| n == name),
            "no {name} thread in {threads:?}"
        );
    }
    for (name, mode) in &threads {
        assert_eq!(mode, "2", "thread {name} is not filtered: {threads:?}");
    }
    // SIGTERM presses the power button; the idle guest ignores it, so ivmm
    // stops it hard after --shutdown-timeout (exit 4), with no seccomp stop.
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!stderr(&out).contains("seccomp"), "{}", stderr(&out));
}

#[test]
fn seccomp_off_installs_no_filter() {
    require_kvm();
    let dir = scratch("seccomp-off");
    let kernel = write(&dir, "idle.elf", &common::tiny_guest::pvh_elf_idle(b'O'));
    let mut child = spawn_run(&["--kernel", &kernel, "--seccomp", "off"], &[]);
    let mut first = [0u8; 1];
    std::io::Read::read_exact(child.stdout.as_mut().expect("stdout"), &mut first).expect("byte");
    let threads = seccomp_of_threads(child.id());
    send_sigterm(child.id());
    let out = child.wait_with_output().expect("wait");
    assert!(threads.iter().all(|(_, m)| m == "0"), "{threads:?}");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

/// The test hook makes the first thread of a kind call `uselib` (134) right
/// after its filter is in place: ivmm must stop with the documented message.
#[test]
fn a_forbidden_syscall_stops_ivmm_naming_the_thread_and_the_call() {
    require_kvm();
    for (kind, thread) in [
        ("vcpu", "vcpu"),
        ("vmm", "main"),
        ("spawner", "ivmm-spawner"),
    ] {
        let dir = scratch(&format!("seccomp-kill-{kind}"));
        let kernel = write(&dir, "idle.elf", &common::tiny_guest::pvh_elf_idle(b'K'));
        // A disk, so that the spawner thread exists.
        let disk = write(&dir, "disk.raw", &[0u8; 4096]);
        let disk = format!("{disk},format=raw");
        let mut child = spawn_run(
            &["--kernel", &kernel, "--disk", &disk],
            &[("IVMM_TEST_SECCOMP_VIOLATION", kind)],
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().expect("try_wait").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "{kind}: ivmm kept running"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("wait");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{kind}: {err}");
        assert!(
            err.contains(&format!("ivmm: seccomp: the {kind} thread '{thread}"))
                && err.contains("made system call 134,"),
            "{kind}: {err}"
        );
    }
}

#[test]
fn seccomp_log_mode_lets_a_forbidden_call_through() {
    require_kvm();
    let dir = scratch("seccomp-log");
    let kernel = write(&dir, "tiny.elf", &common::tiny_guest::pvh_elf(b'L'));
    let out = ivmm()
        .args(["run", "--kernel", &kernel, "--seccomp", "log"])
        .env("IVMM_TEST_SECCOMP_VIOLATION", "vcpu")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn ivmm");
    assert_eq!(out.stdout, b"L", "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

fn send_sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// `--on-reboot restart` rebuilds the whole VM (memory, devices, disks,
/// vCPUs) on the VMM thread, which by then runs under its filter.
#[test]
fn restarting_guest_is_rebuilt_under_the_vmm_filter() {
    use std::io::Read;
    require_kvm();
    let dir = scratch("seccomp-restart");
    let kernel = write(&dir, "tiny.elf", &common::tiny_guest::pvh_elf(b'R'));
    let disk = write(&dir, "disk.raw", &vec![0u8; 1 << 20]);
    let disk = format!("{disk},format=raw");
    let mut child = spawn_run(
        &[
            "--kernel",
            &kernel,
            "--on-reboot",
            "restart",
            "--disk",
            &disk,
            "--snapshot",
        ],
        &[],
    );
    let mut boots = [0u8; 3];
    let read = child
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut boots);
    send_sigterm(child.id());
    let out = child.wait_with_output().expect("wait");
    assert!(read.is_ok(), "fewer than 3 boots: {}", stderr(&out));
    assert_eq!(&boots, b"RRR");
    assert!(!stderr(&out).contains("seccomp"), "{}", stderr(&out));
    // The signal stops the reboot loop: the next reboot is not restarted
    // (0), or the hard stop comes first (4).
    assert!(
        matches!(out.status.code(), Some(0) | Some(4)),
        "{:?}: {}",
        out.status,
        stderr(&out)
    );
}

/// On a terminal ivmm is in raw mode when a filter stops it: the SIGSYS
/// handler restores the terminal (its own calls must pass every filter,
/// or the kernel kills ivmm without a word). `script` gives ivmm a pty.
#[test]
fn a_forbidden_syscall_on_a_terminal_is_reported_and_the_terminal_restored() {
    require_kvm();
    let dir = scratch("seccomp-tty");
    let kernel = write(&dir, "idle.elf", &common::tiny_guest::pvh_elf_idle(b'T'));
    let ivmm = env!("CARGO_BIN_EXE_ivmm");
    let inner = format!(
        "stty -g; IVMM_TEST_SECCOMP_VIOLATION=vcpu {ivmm} run --kernel {kernel} \
         --shutdown-timeout 1; echo RC=$?; stty -g"
    );
    let out = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RC=1"), "{text}");
    assert!(
        text.contains("ivmm: seccomp: the vcpu thread 'vcpu0' made system call 134,"),
        "{text}"
    );
    let settings: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.split(':').count() > 30)
        .collect();
    assert_eq!(settings.len(), 2, "{text}");
    assert_eq!(settings[0], settings[1], "terminal not restored: {text}");
}

/// `ivmm run` without --net needs no privilege beyond /dev/kvm: as user
/// nobody with no capabilities, in a private mount namespace where a
/// nobody-owned node for KVM is bound over /dev/kvm (the host's node and
/// its permissions are untouched).
#[test]
fn runs_as_an_unprivileged_user_with_only_dev_kvm_access() {
    require_kvm();
    let dir = scratch("nonroot");
    let kernel = write(&dir, "tiny.elf", &common::tiny_guest::pvh_elf(b'U'));
    let disk = write(&dir, "disk.raw", &vec![0u8; 1 << 20]);
    let node = dir.join("kvm");
    let _ = std::fs::remove_file(&node);
    let rdev = std::fs::metadata("/dev/kvm").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.rdev()
    });
    let rdev = rdev.expect("stat /dev/kvm");
    let made = Command::new("mknod")
        .arg(&node)
        .args([
            "c",
            &dev_major(rdev).to_string(),
            &dev_minor(rdev).to_string(),
        ])
        .status()
        .expect("mknod");
    assert!(made.success());
    let ivmm = env!("CARGO_BIN_EXE_ivmm");
    let nobody = "65534";
    for path in [
        node.to_str().unwrap(),
        &disk,
        &kernel,
        dir.to_str().unwrap(),
    ] {
        assert!(Command::new("chown")
            .args([&format!("{nobody}:{nobody}"), path])
            .status()
            .unwrap()
            .success());
    }
    let script = format!(
        "mount --bind {node} /dev/kvm && exec setpriv --reuid {nobody} --regid {nobody} \
         --clear-groups --inh-caps=-all {ivmm} run --kernel {kernel} --disk {disk},format=raw",
        node = node.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("unshare");
    assert_eq!(out.stdout, b"U", "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// glibc's major()/minor() split of a device number.
fn dev_major(rdev: u64) -> u64 {
    ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)
}

fn dev_minor(rdev: u64) -> u64 {
    ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)
}

#[test]
fn more_devices_than_pci_slots_are_refused_before_the_vm_starts() {
    let dir = scratch("slots");
    let kernel = write(&dir, "tiny.elf", &common::tiny_guest::pvh_elf(b'x'));
    let disk = write(&dir, "d.raw", &vec![0u8; 4096]);
    let spec = format!("{disk},format=raw,readonly=on");
    let mut args = vec!["--kernel", kernel.as_str()];
    for _ in 0..32 {
        args.extend(["--disk", spec.as_str()]);
    }
    assert_refused(&args, "too many PCI devices");
}
