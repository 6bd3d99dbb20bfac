//! Nothing is left behind across VM lifecycles: file descriptors, threads,
//! temporary files. In-process through the library API the binary uses
//! (`vm::run` once per boot), and across the restarts of one `ivmm run`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use vmm::cli::RunArgs;
use vmm::config::VmConfig;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

fn scratch(name: &str) -> common::Scratch {
    common::Scratch::new("leaks", name)
}

fn count_entries(dir: impl AsRef<Path>) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn fds(pid: &str) -> usize {
    count_entries(format!("/proc/{pid}/fd"))
}

fn threads(pid: &str) -> usize {
    count_entries(format!("/proc/{pid}/task"))
}

/// `ivmm-*` entries in the temporary directory (the --snapshot overlay directory).
fn ivmm_temp_files(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ivmm-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The two tests count descriptors; the restart test's sampling opens
/// /proc directories in this process, so they must not overlap.
static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn repeated_boots_in_one_process_leave_no_fd_or_thread() {
    let _alone = COUNTING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch("inproc");
    let kernel = dir.join("tiny.elf");
    std::fs::write(&kernel, common::tiny_guest::pvh_elf(b'x')).expect("kernel");
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let cli = Cli::parse_from([
        "ivmm",
        "--kernel",
        kernel.to_str().expect("utf-8"),
        "--vcpus",
        "2",
        "--serial",
        "none",
        "--disk",
        &format!("{},format=raw", disk.display()),
        // Filters would apply to this test process itself.
        "--seccomp",
        "off",
    ]);
    let config = VmConfig::try_from(&cli.run).expect("config");
    let kvm = vmm::vm::open_kvm(&config).expect("/dev/kvm");
    vmm::vcpu::install_kick_handler().expect("kick handler");
    let boot = || {
        let reason = vmm::vm::run(&kvm, &config, false).expect("run");
        assert_eq!(reason, vmm::control::ExitReason::Reset);
    };
    boot(); // first boot: one-time set-up (signal handlers)
    let (fds_before, threads_before) = (fds("self"), threads("self"));
    for _ in 0..20 {
        boot();
    }
    assert_eq!(
        fds("self"),
        fds_before,
        "file descriptors leaked over 20 boots"
    );
    assert_eq!(
        threads("self"),
        threads_before,
        "threads leaked over 20 boots"
    );
}

#[test]
fn restarts_of_one_ivmm_keep_fds_and_threads_flat_and_exit_removes_overlays() {
    let _alone = COUNTING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch("restart");
    let kernel = dir.join("tiny.elf");
    std::fs::write(&kernel, common::tiny_guest::pvh_elf(b'r')).expect("kernel");
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let boots = dir.join("boots"); // one byte per boot
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ivmm"))
        .args(["run", "--kernel", kernel.to_str().expect("utf-8")])
        .args(["--vcpus", "2", "--on-reboot", "restart"])
        .args(["--serial", &format!("file:{}", boots.display())])
        .args([
            "--disk",
            &format!("{},format=raw", disk.display()),
            "--snapshot",
        ])
        .args(["--shutdown-timeout", "1"])
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ivmm");
    let pid = child.id().to_string();
    // Samples while the guest reboots many times. A VM being built or torn
    // down has more fds and threads, so the minima are compared; sampling
    // may miss the emptiest instant by one fd, which a leak (one or more
    // per boot, over dozens of boots) would exceed by far.
    let sample = |secs: u64| {
        let end = Instant::now() + Duration::from_secs(secs);
        let (mut min_fds, mut min_threads) = (usize::MAX, usize::MAX);
        while Instant::now() < end {
            min_fds = min_fds.min(fds(&pid));
            min_threads = min_threads.min(threads(&pid));
            std::thread::sleep(Duration::from_millis(5));
        }
        (min_fds, min_threads)
    };
    sample(1); // past the first boot
    let early = sample(2);
    let boots_at_early = std::fs::metadata(&boots).map(|m| m.len()).unwrap_or(0);
    let overlays_while_running = ivmm_temp_files(&tmp);
    let late = sample(3);
    let boots_between = std::fs::metadata(&boots).map(|m| m.len()).unwrap_or(0) - boots_at_early;
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.wait().expect("wait");
    assert!(matches!(status.code(), Some(0) | Some(4)), "{status:?}");
    assert!(
        early.0 > 0 && early.0 < usize::MAX,
        "no samples of /proc/{pid}/fd"
    );
    assert!(
        boots_between >= 20,
        "only {boots_between} boots between the samples"
    );
    assert!(
        late.0 <= early.0 + 1 && late.1 <= early.1,
        "(fds, threads) minimum grew from {early:?} to {late:?} over {boots_between} boots"
    );
    assert!(
        !overlays_while_running.is_empty(),
        "no overlay seen in $TMPDIR while running: does --snapshot use it?"
    );
    assert_eq!(
        ivmm_temp_files(&tmp),
        Vec::<String>::new(),
        "overlay left after exit"
    );
}
