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

/// How often each (fds, threads) pair was seen in one sampling window.
#[derive(Debug, Default)]
struct Samples(std::collections::BTreeMap<(usize, usize), usize>);

impl Samples {
    fn add(&mut self, fds: usize, threads: usize) {
        if fds > 0 {
            // (0 when the process is gone or /proc unreadable: not a sample)
            *self.0.entry((fds, threads)).or_default() += 1;
        }
    }

    fn count(&self) -> usize {
        self.0.values().sum()
    }

    /// The pair seen most often.
    fn most_common(&self) -> Option<(usize, usize)> {
        self.0
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(pair, _)| *pair)
    }
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
    // Each boot lingers (tens to hundreds of ms) before its reset, so a sample
    // mostly finds the VM fully built rather than being built or torn down.
    let kernel_bytes = common::tiny_guest::pvh_elf_lingering(b'r', 15_000);
    std::fs::write(&kernel, kernel_bytes).expect("kernel");
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
    // Samples while the guest reboots many times. Most samples find the VM
    // fully built (the guest lingering), and a VM that leaks nothing holds
    // the same fds and threads when fully built in every boot: the most
    // common pair is the same in both windows. A leak of even one fd or
    // thread per boot makes every boot's pair differ and the late window's
    // larger. (The emptiest instant, between two boots, is too short to
    // sample reliably on a busy machine.)
    let sample = |secs: u64| {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut samples = Samples::default();
        while Instant::now() < end {
            samples.add(fds(&pid), threads(&pid));
            std::thread::sleep(Duration::from_millis(5));
        }
        samples
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
    eprintln!("early {early:?}\nlate {late:?}\n{boots_between} boots between");
    let (Some(early_built), Some(late_built)) = (early.most_common(), late.most_common()) else {
        panic!("no samples of /proc/{pid}/fd");
    };
    assert!(
        boots_between >= 3,
        "only {boots_between} boots between the samples"
    );
    // The main thread and both vCPUs: the VM was up in most samples.
    assert!(
        early_built.1 >= 3,
        "the most common state {early_built:?} is not a built VM ({} samples)",
        early.count()
    );
    assert_eq!(
        late_built, early_built,
        "(fds, threads) of the built VM changed over {boots_between} boots"
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
