//! Hardening in the lab, with the stock Debian kernel driving virtio-blk and
//! virtio-net: every ivmm thread runs under its seccomp filter while the
//! guest does disk and network I/O, and a forbidden call in a device I/O
//! thread stops ivmm with the documented message. Always the nested lab:
//! the tests create a TAP, which must not happen on the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use ivmm_tests::{Lab, LabError, LabOutcome, RunOptions, MARK_GUEST_INIT};

use common::{ivmm_command, nested_lab as lab};

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
    /// `qemu-img check` (the oracle) finds no corruption and no leak.
    fn assert_consistent(&self) {
        let check = Command::new("qemu-img")
            .args(["check", "-q", "-f", "qcow2"])
            .arg(&self.0)
            .output()
            .expect("qemu-img check");
        assert!(check.status.success(), "{check:?}");
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs an L1 script with `img` as `{disk0}`.
fn run_with_disk(lab: &Lab, script: &str, img: &Image) -> LabOutcome {
    lab.run_shell(
        script,
        RunOptions::new()
            .disk(img.path())
            .timeout(Duration::from_secs(400))
            .guest_start_marker(MARK_GUEST_INIT),
    )
    .expect("lab run")
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
    let out = run_with_disk(&lab, &script, &img);
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
        "ivmm-blk0-io0",
        "ivmm-blk0-io7",
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
    img.assert_consistent();
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
    let out = run_with_disk(&lab, &script, &img);
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

/// Compiles `tests/guest/hostile.c` statically and puts it on a raw disk
/// image (padded to whole sectors); returns the image and the binary size.
fn hostile_disk() -> (Image, u64) {
    let mut bytes = common::static_binary("hostile");
    let size = bytes.len() as u64;
    bytes.resize(bytes.len().next_multiple_of(1 << 20), 0);
    let image =
        Image(std::env::temp_dir().join(format!("ivmm-hard-carrier-{}", std::process::id())));
    std::fs::write(image.path(), &bytes).expect("carrier image");
    (image, size)
}

/// `IVMM_HOSTILE_SEED`, else one from the clock.
fn hostile_seed() -> u64 {
    std::env::var("IVMM_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1)
        })
}

/// One hostile run: ivmm in the background in L1, its peak RSS sampled
/// every second; if it still runs [`TERM_AT`] s after the start, SIGTERM, then
/// SIGKILL as "hung" at [`KILL_AT`] s.
fn run_hostile(
    lab: &Lab,
    carrier: &Image,
    target: &Image,
    size: u64,
    seed: u64,
) -> ivmm_tests::Result<LabOutcome> {
    let mem = format!("{HOSTILE_MEM_MIB}M");
    let run = ivmm_command(
        &[
            "--vcpus",
            "2",
            "--mem",
            &mem,
            "--serial",
            "none",
            "--console-log",
            "/tmp/g.log",
            "--shutdown-timeout",
            "10",
            "--disk",
            "{disk0},format=raw,readonly=on,serial=hostile",
            "--disk",
            "{disk1},format=qcow2",
            "--net",
            "tap=tap2",
        ],
        &format!(
            "for b in /sys/block/vd*; do [ \"$(cat $b/serial)\" = hostile ] && D=/dev/${{b##*/}}; done; \
             head -c {size} $D > /tmp/h && chmod +x /tmp/h && /tmp/h 60 {seed}; echo HOSTILE-RC=$?"
        ),
    );
    let script = format!(
        "{run} 2>/tmp/err.log & P=$!\n\
         hwm=0; t=0; verdict=exited\n\
         while [ -d /proc/$P ]; do\n\
           h=$(grep VmHWM /proc/$P/status 2>/dev/null | tr -dc 0-9); [ -n \"$h\" ] && hwm=$h\n\
           t=$((t+1)); [ $((t % 10)) -eq 0 ] && echo {WATCHDOG}$t\n\
           [ $t -eq {TERM_AT} ] && {{ kill -TERM $P; verdict=signalled; }}\n\
           [ $t -eq {KILL_AT} ] && {{ kill -KILL $P; verdict=hung; }}\n\
           sleep 1\n\
         done\n\
         wait $P; echo IVMM-RC=$? VERDICT=$verdict HWM-KIB=$hwm\n\
         echo STDERR-BEGIN; cat /tmp/err.log; echo STDERR-END\n\
         grep -a 'HOSTILE-\\|IVMM-CMD-EXIT\\|Kernel panic\\|BUG\\|Oops' /tmp/g.log | tail -20\n"
    );
    lab.run_shell(
        &script,
        RunOptions::new()
            .disk(carrier.path())
            .disk(target.path())
            .timeout(Duration::from_secs(420))
            // The lab's early SMP fault hits before the attack began: once more then.
            .guest_start_marker("HOSTILE-DEVICES="),
    )
}

/// The hostile run's watchdog in L1: seconds (loop rounds) until SIGTERM and SIGKILL, and
/// the line it prints every ten rounds.
const TERM_AT: u32 = 150;
const KILL_AT: u32 = 200;
const WATCHDOG: &str = "HOSTILE-WATCHDOG-T=";

/// Whether a timed-out hostile run's output shows L1's own shell stopping before its
/// watchdog sent SIGKILL: the script bounds ivmm, so L1 itself stopped running it (the
/// nested lab's wedge, tests/README.md), whatever the guest did to ivmm.
fn l1_shell_stopped(log: &str) -> bool {
    let last = log
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(WATCHDOG)?.parse::<u32>().ok());
    last.is_none_or(|t| t < KILL_AT)
}

/// Guest RAM of the hostile run, and what ivmm may use beyond it.
const HOSTILE_MEM_MIB: u64 = 256;
const HOSTILE_OVERHEAD_MIB: u64 = 96;

/// The hostile guest: 60 s of random register writes and garbage
/// virtio queues from inside L2. ivmm must neither crash nor hang nor grow
/// past a memory bound, and must end the VM in a documented way: the guest
/// powers off when done (0), or, if the attack broke it, the guest powers
/// off or reboots by itself (0) or a kernel panic is reported (3), a vCPU failure is reported with registers (1), or SIGTERM
/// and the shutdown timeout stop it hard (4).
#[test]
fn hostile_guest_cannot_crash_hang_or_bloat_ivmm() {
    let lab = lab();
    let (carrier, size) = hostile_disk();
    let target = Image::qcow2("target", "64M", 80 << 20);
    let mut seed = hostile_seed();
    let mut attempt = 1;
    let out = loop {
        eprintln!("hostile guest seed {seed} (IVMM_HOSTILE_SEED={seed} replays it)");
        match run_hostile(&lab, &carrier, &target, size, seed) {
            // The nested lab's own L1 kernel (KVM on QEMU's emulated SVM)
            // overflows its stack under some attacks (one seed did it twice
            // in a row, the harness's same-seed rerun included): that is
            // not ivmm failing, so once it earns a fresh seed.
            Err(LabError::L1Panic { log }) if attempt == 1 => {
                eprintln!("the lab's L1 kernel panicked (not ivmm); once more:\n{log}");
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                attempt += 1;
            }
            // The run outlived its own watchdog because L1 stopped running the watchdog
            // (seen once: an L1 vCPU held at one L2 address for minutes, the other idle).
            Err(LabError::Timeout { log, diagnosis, .. })
                if attempt == 1 && l1_shell_stopped(&log) =>
            {
                eprintln!(
                    "L1 stopped running the watchdog (not ivmm); once more:\n{log}\n{diagnosis}"
                );
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                attempt += 1;
            }
            other => break other.expect("lab run"),
        }
    };
    let c = &out.console;
    for l in c
        .lines()
        .filter(|l| l.contains("HOSTILE-") || l.contains("IVMM-RC="))
    {
        eprintln!("{l}");
    }
    let field = |key: &str| {
        c.lines()
            .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(key)))
            .unwrap_or_else(|| panic!("no {key}: {}", context(&out)))
            .to_string()
    };
    let devices: u32 = field("HOSTILE-DEVICES=").parse().unwrap_or(0);
    assert!(
        devices >= 3,
        "the attack found {devices} virtio devices: {}",
        context(&out)
    );
    let verdict = field("VERDICT=");
    assert_ne!(
        verdict,
        "hung",
        "ivmm ignored SIGTERM and its own timeout: {}",
        context(&out)
    );
    let stderr = c
        .split_once("STDERR-BEGIN")
        .and_then(|(_, rest)| rest.split_once("STDERR-END"))
        .map(|(e, _)| e)
        .unwrap_or("");
    assert!(
        !stderr.contains("panicked"),
        "ivmm panicked: {}",
        context(&out)
    );
    assert!(
        !stderr.contains("seccomp"),
        "a filter stopped ivmm: {}",
        context(&out)
    );
    // Guest-triggered warnings are rate-limited (one call site printed
    // 20,000 lines a minute before): the log stays readable.
    let stderr_lines = stderr.lines().count();
    assert!(
        stderr_lines < 1000,
        "{stderr_lines} lines on stderr: {}",
        context(&out)
    );
    let rc = field("IVMM-RC=");
    match rc.as_str() {
        // The guest finished and powered off, or the attack made it power
        // off or reboot by itself (its console may be garbled by then).
        "0" => eprintln!(
            "guest {}",
            if c.contains("HOSTILE-DONE") {
                "finished the attack and powered off"
            } else {
                "powered off or rebooted during the attack"
            }
        ),
        "3" => assert!(stderr.contains("pvpanic"), "{}", context(&out)),
        "1" => assert!(
            stderr.contains("stopped:"),
            "exit 1 without a vCPU report: {}",
            context(&out)
        ),
        "4" => assert!(
            verdict == "signalled" && stderr.contains("did not power off in time"),
            "{}",
            context(&out)
        ),
        other => panic!("ivmm exit status {other}: {}", context(&out)),
    }
    let hwm_mib = field("HWM-KIB=").parse::<u64>().unwrap_or(u64::MAX) / 1024;
    eprintln!(
        "ivmm exit {rc} ({verdict}), peak RSS {hwm_mib} MiB with {HOSTILE_MEM_MIB} MiB guest RAM, {stderr_lines} lines on stderr"
    );
    assert!(
        hwm_mib <= HOSTILE_MEM_MIB + HOSTILE_OVERHEAD_MIB,
        "peak RSS {hwm_mib} MiB: {}",
        context(&out)
    );
    // Whatever the guest made the device write, the image stays consistent.
    target.assert_consistent();
}

#[test]
fn a_watchdog_that_stopped_before_its_kill_means_l1_stopped() {
    assert!(l1_shell_stopped("LAB-RUN-START\n"));
    let line = |t: u32| format!("{WATCHDOG}{t}\n");
    assert!(l1_shell_stopped(&format!("{}{}", line(10), line(190))));
    // Past SIGKILL and still no end: ivmm outlived SIGKILL, not the lab's wedge.
    assert!(!l1_shell_stopped(&format!("{}{}", line(190), line(200))));
}
