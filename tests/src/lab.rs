//! The lab: where ivmm runs against a real KVM. `Direct` on a host with hardware KVM;
//! `Nested` on hosts whose `/dev/kvm` is `kvm_pvm` (no stock kernels): a QEMU TCG guest (L1)
//! with emulated AMD SVM loads the stock `kvm_amd` and runs ivmm, which boots L2.
//! See `shared/LAB.md` for the measured recipe and `scripts/fetch-guest.sh` for the fixtures.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cpio::CpioWriter;
use crate::error::{tail, LabError, Result};
use crate::guest::{GuestBoot, MARK_GUEST_INIT};
use crate::host::{self, LabLock, TempDir};
use crate::l1_report;
use crate::monitor;
use crate::outcome::{normalize_console, timed_lines, LabOutcome};
use crate::runner::{self, Framing, RunSpec, StdinStep, Trigger, MARK_RUN_EXIT, MARK_RUN_START};

/// Default timeout of a nested run: a whole L2 boot takes 9–17 s on 2 shared cores (LAB.md);
/// this leaves room for a busy machine without a hung VMM costing many minutes.
pub const NESTED_TIMEOUT: Duration = Duration::from_secs(150);
/// How long ivmm may keep running after the guest kernel said it stopped.
pub const GUEST_END_GRACE: Duration = Duration::from_secs(20);
/// Default timeout of a direct run.
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(60);

const SETUP_HINT: &str = "run scripts/setup.sh";
const FETCH_HINT: &str = "run scripts/fetch-guest.sh";
/// L1 paths of the L2 artifacts: L1's `/init` mounts the guest disk (`guest.ext4`) on `/guest`.
const L1_BZIMAGE: &str = "/guest/bzImage";
const L1_VMLINUX: &str = "/guest/vmlinux";
const L1_INITRD: &str = "/guest/initrd.img";
/// Per-run directory in L1; `{files}` is `/lab/files`.
const L1_FILES: &str = "/lab/files";
const L1_IVMM: &str = "/lab/bin/ivmm";
/// Extra disks carry the virtio serial `lab-disk-N`; `run.sh` links `/dev/lab-disk-N` to them
/// (the guest disk and PCI probing order make `vdX` names unreliable).
const DISK_SERIAL_PREFIX: &str = "lab-disk-";
/// L1 kernel command line: `panic=-1` + QEMU's `-no-reboot` turn an L1 panic into a QEMU exit.
const L1_CMDLINE: &str = "console=ttyS0 panic=-1 quiet rdinit=/init";
/// L1 memory: L2 guests get a few hundred MiB; the initramfs lives in RAM too.
const L1_MEM_MIB: u32 = 6144;

/// Where ivmm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Hardware KVM on this host: ivmm runs here.
    Direct,
    /// QEMU TCG L1 with nested SVM: ivmm runs inside it.
    Nested,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Direct => write!(f, "direct (hardware /dev/kvm on this host)"),
            Mode::Nested => write!(f, "nested (QEMU TCG L1 with emulated SVM, stock kvm_amd)"),
        }
    }
}

/// Fixture files on the host (from `scripts/fetch-guest.sh`).
#[derive(Debug, Clone)]
struct Fixtures {
    bzimage: PathBuf,
    vmlinux: PathBuf,
    initrd: PathBuf,
    l1_base: PathBuf,
    guest_disk: PathBuf,
}

/// Options of one run. `RunOptions::default()` uses the mode's default timeout.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    timeout: Option<Duration>,
    stdin: Vec<StdinStep>,
    files: Vec<(String, Vec<u8>, u32)>,
    host_files: Vec<(PathBuf, bool)>,
    disks: Vec<PathBuf>,
    keep_running_after_guest_end: bool,
    guest_start_marker: Option<String>,
}

impl RunOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Kill the run and fail after `timeout` (default [`NESTED_TIMEOUT`]/[`DIRECT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends `data` to ivmm's stdin once the console shows `marker` (searched after the
    /// previous stdin step).
    pub fn send_after_marker(mut self, marker: &str, data: &[u8]) -> Self {
        self.stdin.push(StdinStep {
            trigger: Trigger::Marker(marker.to_string()),
            data: data.to_vec(),
        });
        self
    }

    /// Sends `data` to ivmm's stdin `delay` after the previous step (or ivmm's start).
    pub fn send_after_delay(mut self, delay: Duration, data: &[u8]) -> Self {
        self.stdin.push(StdinStep {
            trigger: Trigger::Delay(delay),
            data: data.to_vec(),
        });
        self
    }

    /// Puts a small file at `{files}/name` (executable if `executable`).
    pub fn file(mut self, name: &str, data: &[u8], executable: bool) -> Self {
        let mode = if executable { 0o755 } else { 0o644 };
        self.files.push((name.to_string(), data.to_vec(), mode));
        self
    }

    /// Makes a host file available at the same absolute path (Nested: copied into L1).
    pub fn host_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.host_files.push((path.into(), false));
        self
    }

    /// Makes a host binary and every shared library it links available at the same absolute
    /// paths (Nested: copied into L1), e.g. a peer VMM to compare with.
    pub fn host_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.host_files.push((path.into(), true));
        self
    }

    /// Do not fail a run whose ivmm keeps running more than [`GUEST_END_GRACE`] after the
    /// guest kernel printed that it halted, powered off or restarted (e.g. `--on-reboot
    /// restart` tests). Shell jobs never get that grace check.
    pub fn keep_running_after_guest_end(mut self) -> Self {
        self.keep_running_after_guest_end = true;
        self
    }

    /// For a script: its guests' consoles reach the run's console, and `marker` there means a
    /// guest got as far as its own code (e.g. [`MARK_GUEST_INIT`]). A nested run whose console
    /// then has ivmm's [`TRIPLE_FAULT_WARNING`] and no `marker` hit the lab's early SMP fault
    /// and runs once more, as a lone ivmm run always does (tests/README.md).
    pub fn guest_start_marker(mut self, marker: &str) -> Self {
        self.guest_start_marker = Some(marker.to_string());
        self
    }

    /// Only a lone ivmm is expected to exit when its guest ends: a shell job may run several
    /// VMs in a row, and its own timeout bounds it.
    fn guest_end_grace(&self, job: &Job) -> Option<Duration> {
        let lone_ivmm = matches!(job, Job::Ivmm(_));
        (lone_ivmm && !self.keep_running_after_guest_end).then_some(GUEST_END_GRACE)
    }

    /// Attaches a raw disk image: `{disk0}`, `{disk1}`, … in arguments (Nested: a virtio disk
    /// of L1 seen as `/dev/lab-disk-0`, `/dev/lab-disk-1`, …; Direct: the image path itself).
    pub fn disk(mut self, image: impl Into<PathBuf>) -> Self {
        self.disks.push(image.into());
        self
    }
}

/// The lab. `Lab::detect()` picks the mode and checks its prerequisites.
#[derive(Debug, Clone)]
pub struct Lab {
    mode: Mode,
    root: PathBuf,
    fixtures: Fixtures,
    qemu: Option<PathBuf>,
    l1_smp: u32,
}

impl Lab {
    /// Picks `Direct` if `/dev/kvm` exists and is not `kvm_pvm`, `Nested` otherwise
    /// (`IVMM_LAB_MODE=direct|nested` overrides), and checks that the mode's prerequisites are
    /// present. Prints the mode on stderr.
    pub fn detect() -> Result<Self> {
        let mode = match std::env::var("IVMM_LAB_MODE").as_deref() {
            Ok("direct") => Mode::Direct,
            Ok("nested") => Mode::Nested,
            Ok(other) => {
                return Err(LabError::Invalid(format!(
                    "IVMM_LAB_MODE={other}: expected 'direct' or 'nested'"
                )))
            }
            Err(_) => {
                if Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists() {
                    Mode::Direct
                } else {
                    Mode::Nested
                }
            }
        };
        let lab = Self::with_mode(mode)?;
        eprintln!("ivmm lab: mode {mode}");
        Ok(lab)
    }

    /// A lab in the given mode, prerequisites checked.
    pub fn with_mode(mode: Mode) -> Result<Self> {
        let root = workspace_root();
        let guest = root.join("target/guest");
        let lab_dir = root.join("target/lab");
        let fixtures = Fixtures {
            bzimage: guest.join("bzImage"),
            vmlinux: guest.join("vmlinux"),
            initrd: guest.join("initrd.img"),
            l1_base: lab_dir.join("l1-base.cpio"),
            guest_disk: lab_dir.join("guest.ext4"),
        };
        let mut needed = vec![
            ("guest kernel (bzImage)", &fixtures.bzimage),
            ("guest kernel (vmlinux)", &fixtures.vmlinux),
            ("guest initramfs", &fixtures.initrd),
        ];
        let mut qemu = None;
        if mode == Mode::Nested {
            needed.push(("L1 lab initramfs", &fixtures.l1_base));
            needed.push(("L1 guest disk", &fixtures.guest_disk));
            qemu = Some(host::which("qemu-system-x86_64").ok_or(LabError::Missing {
                what: "qemu-system-x86_64",
                path: PathBuf::from("$PATH"),
                hint: SETUP_HINT,
            })?);
        } else if !Path::new("/dev/kvm").exists() {
            return Err(LabError::Missing {
                what: "/dev/kvm (direct mode)",
                path: PathBuf::from("/dev/kvm"),
                hint: "use a host with hardware KVM, or IVMM_LAB_MODE=nested",
            });
        }
        for (what, path) in needed {
            if !path.is_file() {
                return Err(LabError::Missing {
                    what,
                    path: path.clone(),
                    hint: FETCH_HINT,
                });
            }
        }
        let l1_smp = match std::env::var("IVMM_LAB_L1_SMP") {
            Ok(v) => v
                .parse()
                .ok()
                .filter(|n| (1..=8).contains(n))
                .ok_or_else(|| LabError::Invalid(format!("IVMM_LAB_L1_SMP={v}: expected 1..8")))?,
            Err(_) => 2,
        };
        Ok(Self {
            mode,
            root,
            fixtures,
            qemu,
            l1_smp,
        })
    }

    /// The mode in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Number of L1 vCPUs (Nested mode; `IVMM_LAB_L1_SMP`, default 2 with multi-threaded TCG).
    pub fn l1_vcpus(&self) -> u32 {
        self.l1_smp
    }

    /// The ivmm binary: `$IVMM_BIN`, else `<workspace>/target/release/ivmm`.
    pub fn ivmm_binary(&self) -> Result<PathBuf> {
        let path = match std::env::var_os("IVMM_BIN") {
            Some(p) => PathBuf::from(p),
            None => self.root.join("target/release/ivmm"),
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(LabError::Missing {
                what: "ivmm binary",
                path,
                hint: "build it with `cargo build --release -p vmm` (or set IVMM_BIN)",
            })
        }
    }

    /// Runs ivmm with `args` (placeholders `{bzimage}`, `{vmlinux}`, `{initrd}`, `{files}`,
    /// `{disk0}`… are replaced with this mode's paths) and returns what it printed.
    pub fn run_ivmm<S: AsRef<str>>(&self, args: &[S], opts: RunOptions) -> Result<LabOutcome> {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        self.run(Job::Ivmm(args), &opts, false)
    }

    /// Runs a shell script (busybox sh in L1; `sh` on the host in Direct mode) where ivmm would
    /// run, in `{files}`, with the same placeholders as [`Lab::run_ivmm`] plus `{ivmm}` (the
    /// binary, brought into L1 when the script names it: e.g. to signal a running ivmm);
    /// `ivmm_exit` of the outcome is the script's exit status.
    pub fn run_shell(&self, script: &str, opts: RunOptions) -> Result<LabOutcome> {
        self.run(Job::Shell(script.to_string()), &opts, false)
    }

    /// Boots the fixture guest with `ivmm run`, extra `ivmm_args`, and `guest_cmd` as the
    /// guest's command; see [`LabOutcome::guest_cmd_ok`] for its output.
    pub fn boot_guest<S: AsRef<str>>(
        &self,
        ivmm_args: &[S],
        guest_cmd: &str,
    ) -> Result<LabOutcome> {
        let boot = GuestBoot::new().command(guest_cmd).args(ivmm_args);
        self.boot(&boot, RunOptions::default())
    }

    /// Boots the guest described by `boot`.
    pub fn boot(&self, boot: &GuestBoot, opts: RunOptions) -> Result<LabOutcome> {
        self.run_ivmm(&boot.ivmm_args()?, opts)
    }

    /// Runs ivmm (or, with `shell`, a shell) with the terminal attached: console output goes
    /// to stdout as it comes, stdin goes to ivmm. Returns ivmm's exit status. For humans
    /// (`scripts/lab`); in Nested mode `Ctrl-A x` quits QEMU, `Ctrl-A Ctrl-A` sends `Ctrl-A`.
    pub fn run_interactive(&self, args: &[String], shell: bool) -> Result<i32> {
        let job = if shell {
            // In L1 the console is no controlling tty yet: cttyhack makes it one (job control,
            // Ctrl-C). On the host the terminal already is.
            Job::Shell(match self.mode {
                Mode::Nested => "exec setsid cttyhack sh".to_string(),
                Mode::Direct => "exec \"${SHELL:-sh}\" -i".to_string(),
            })
        } else {
            Job::Ivmm(args.to_vec())
        };
        if self.mode == Mode::Direct {
            let tmp = TempDir::new("ivmm-lab")?;
            let mut cmd = self.direct_command(&job, &RunOptions::default(), tmp.path())?;
            let status = cmd.status().map_err(|e| LabError::io("starting ivmm", e))?;
            return Ok(exit_code(status));
        }
        let opts = RunOptions::default();
        let outcome = self.run(job, &opts, true)?;
        Ok(outcome.ivmm_exit)
    }

    fn run(&self, job: Job, opts: &RunOptions, interactive: bool) -> Result<LabOutcome> {
        match self.mode {
            Mode::Direct => self.run_direct(&job, opts),
            Mode::Nested if interactive => self.run_nested(&job, opts, true),
            Mode::Nested => once_more_after_lab_fault(|| {
                self.run_nested(&job, opts, false)
                    .map_err(|err| name_l2_stopped_before_start(&job, opts, err))
                    .and_then(|out| refuse_early_triple_fault(&job, opts, out))
            }),
        }
    }

    /// Placeholder values for this mode.
    fn placeholders(&self, opts: &RunOptions, files_dir: &Path) -> Vec<(String, String)> {
        let mut map: Vec<(String, String)> = match self.mode {
            Mode::Direct => vec![
                (
                    "bzimage".into(),
                    self.fixtures.bzimage.display().to_string(),
                ),
                (
                    "vmlinux".into(),
                    self.fixtures.vmlinux.display().to_string(),
                ),
                ("initrd".into(), self.fixtures.initrd.display().to_string()),
                ("files".into(), files_dir.display().to_string()),
                (
                    "ivmm".into(),
                    self.ivmm_binary()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| "{ivmm}".into()),
                ),
            ],
            Mode::Nested => vec![
                ("bzimage".into(), L1_BZIMAGE.into()),
                ("vmlinux".into(), L1_VMLINUX.into()),
                ("initrd".into(), L1_INITRD.into()),
                ("files".into(), L1_FILES.into()),
                ("ivmm".into(), L1_IVMM.into()),
            ],
        };
        for (i, disk) in opts.disks.iter().enumerate() {
            let value = match self.mode {
                Mode::Direct => disk.display().to_string(),
                Mode::Nested => format!("/dev/{DISK_SERIAL_PREFIX}{i}"),
            };
            map.push((format!("disk{i}"), value));
        }
        map
    }

    fn direct_command(&self, job: &Job, opts: &RunOptions, files_dir: &Path) -> Result<Command> {
        for (name, data, mode) in &opts.files {
            let path = files_dir.join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| LabError::io(format!("creating {}", parent.display()), e))?;
            }
            fs::write(&path, data)
                .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
            set_mode(&path, *mode)?;
        }
        let map = self.placeholders(opts, files_dir);
        let mut cmd = match job {
            Job::Ivmm(args) => {
                let mut cmd = Command::new(self.ivmm_binary()?);
                for arg in args {
                    cmd.arg(expand(arg, &map)?);
                }
                cmd
            }
            Job::Shell(script) => {
                if script.contains("{ivmm}") {
                    self.ivmm_binary()?;
                }
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(expand(script, &map)?);
                cmd
            }
        };
        cmd.current_dir(files_dir);
        Ok(cmd)
    }

    fn run_direct(&self, job: &Job, opts: &RunOptions) -> Result<LabOutcome> {
        let tmp = TempDir::new("ivmm-lab")?;
        let mut cmd = self.direct_command(job, opts, tmp.path())?;
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if opts.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        });
        let spec = RunSpec {
            framing: Framing::Direct,
            timeout: Some(opts.timeout.unwrap_or(DIRECT_TIMEOUT)),
            stdin: &opts.stdin,
            passthrough: false,
            merge_stderr: true,
            guest_end_grace: opts.guest_end_grace(job),
            diagnose: None,
        };
        let raw = runner::run(cmd, job.name(), &spec)?;
        let chunks: Vec<(usize, Duration)> = raw
            .chunks
            .iter()
            .map(|&(off, t)| (off, t.saturating_duration_since(raw.started)))
            .collect();
        Ok(LabOutcome {
            console: normalize_console(&raw.out),
            ivmm_exit: exit_code(raw.status),
            elapsed: raw.finished.saturating_duration_since(raw.started),
            l1_log: String::new(),
            l1_boot: None,
            lines: timed_lines(&raw.out, &chunks),
        })
    }

    /// Puts the ivmm binary at [`L1_IVMM`] and its shared libraries at their host paths.
    fn add_ivmm(&self, cpio: &mut CpioWriter) -> Result<()> {
        let ivmm = self.ivmm_binary()?;
        add_host_file(cpio, &ivmm, Some(L1_IVMM))?;
        for lib in host::shared_libs(&ivmm)? {
            add_host_file(cpio, &lib, None)?;
        }
        Ok(())
    }

    /// The per-run cpio: `/lab/run.sh`, the job, its files, and host files/binaries.
    fn run_cpio(&self, job: &Job, opts: &RunOptions) -> Result<Vec<u8>> {
        let mut cpio = CpioWriter::new();
        cpio.dir(L1_FILES);
        let map = self.placeholders(opts, Path::new(L1_FILES));
        let command = match job {
            Job::Ivmm(args) => {
                self.add_ivmm(&mut cpio)?;
                let mut words = vec![L1_IVMM.to_string()];
                for arg in args {
                    words.push(shell_quote(&expand(arg, &map)?));
                }
                words.join(" ")
            }
            Job::Shell(script) => {
                if script.contains("{ivmm}") {
                    self.add_ivmm(&mut cpio)?;
                }
                let script = expand(script, &map)?;
                cpio.file("/lab/script.sh", 0o755, script.as_bytes());
                "sh /lab/script.sh".to_string()
            }
        };
        for (path, is_binary) in &opts.host_files {
            add_host_file(&mut cpio, path, None)?;
            if *is_binary {
                for lib in host::shared_libs(path)? {
                    add_host_file(&mut cpio, &lib, None)?;
                }
            }
        }
        for (name, data, mode) in &opts.files {
            cpio.file(&format!("{L1_FILES}/{name}"), *mode, data);
        }
        // The console is a tty in L1: raw mode passes bytes both ways unchanged (no echo, no
        // line buffering, no \n -> \r\n), so ivmm's stdin/stdout behave like a pipe.
        let run_sh = format!(
            "#!/bin/sh\n\
             # Generated per run by the ivmm test harness.\n\
             stty raw -echo 2>/dev/null\n\
             for b in /sys/block/vd*; do\n\
             \x20 s=$(cat \"$b/serial\" 2>/dev/null)\n\
             \x20 case \"$s\" in {DISK_SERIAL_PREFIX}*) ln -sf \"/dev/${{b##*/}}\" \"/dev/$s\" ;; esac\n\
             done\n\
             {listener}\
             cd {L1_FILES}\n\
             echo {MARK_RUN_START}\n\
             {command}\n\
             rc=$?\n\
             printf '\\n{MARK_RUN_EXIT}%d\\n' \"$rc\"\n\
             exit \"$rc\"\n",
            listener = l1_report::listener_sh(),
        );
        cpio.file("/lab/run.sh", 0o755, run_sh.as_bytes());
        Ok(cpio.finish())
    }

    fn run_nested(&self, job: &Job, opts: &RunOptions, interactive: bool) -> Result<LabOutcome> {
        let qemu = self.qemu.clone().ok_or(LabError::Missing {
            what: "qemu-system-x86_64",
            path: PathBuf::from("$PATH"),
            hint: SETUP_HINT,
        })?;
        let run_cpio = self.run_cpio(job, opts)?;
        let tmp = TempDir::new("ivmm-lab")?;
        let initrd = tmp.path().join("l1-initrd.cpio");
        let base = &self.fixtures.l1_base;
        let mut image = fs::read(base)
            .map_err(|e| LabError::io(format!("reading {} ({FETCH_HINT}?)", base.display()), e))?;
        image.extend_from_slice(&run_cpio);
        fs::write(&initrd, &image)
            .map_err(|e| LabError::io(format!("writing {}", initrd.display()), e))?;

        let mut cmd = Command::new(&qemu);
        let accel = if self.l1_smp > 1 {
            "tcg,thread=multi"
        } else {
            "tcg"
        };
        cmd.args(["-accel", accel, "-cpu", "EPYC-Rome"])
            .args([
                "-smp",
                &self.l1_smp.to_string(),
                "-m",
                &L1_MEM_MIB.to_string(),
            ])
            .args(["-nodefaults", "-no-reboot", "-display", "none"])
            .args(["-serial", if interactive { "mon:stdio" } else { "stdio" }])
            .arg("-kernel")
            .arg(&self.fixtures.bzimage)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", L1_CMDLINE]);
        // The monitor serves only the timeout report (the interactive lab has it on stdio).
        let monitor = tmp.path().join("l1-monitor.sock");
        if !interactive {
            let mut spec = std::ffi::OsString::from("unix:");
            spec.push(monitor.as_os_str());
            spec.push(",server=on,wait=off");
            cmd.arg("-monitor").arg(spec);
        }
        // L1's ttyS1: `run.sh` answers each line with a report on ivmm's threads (l1_report).
        let report = tmp.path().join("l1-report.sock");
        let mut spec = std::ffi::OsString::from("socket,id=labreport,server=on,wait=off,path=");
        spec.push(report.as_os_str());
        cmd.arg("-chardev")
            .arg(spec)
            .args(["-serial", "chardev:labreport"]);
        let mut guest_disk = std::ffi::OsString::from("if=virtio,format=raw,readonly=on,file=");
        guest_disk.push(self.fixtures.guest_disk.as_os_str());
        cmd.arg("-drive").arg(guest_disk);
        for (i, disk) in opts.disks.iter().enumerate() {
            if !disk.is_file() {
                return Err(LabError::Missing {
                    what: "disk image",
                    path: disk.clone(),
                    hint: "create it before the run",
                });
            }
            let mut spec = std::ffi::OsString::from(format!(
                "if=none,id=labdisk{i},format=raw,cache=unsafe,file="
            ));
            spec.push(disk.as_os_str());
            cmd.arg("-drive").arg(spec).arg("-device").arg(format!(
                "virtio-blk-pci,drive=labdisk{i},serial={DISK_SERIAL_PREFIX}{i}"
            ));
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if interactive {
            Stdio::inherit()
        } else if opts.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        });

        let _lock = LabLock::acquire()?;
        let spec = RunSpec {
            framing: Framing::Nested,
            timeout: if interactive {
                None
            } else {
                Some(opts.timeout.unwrap_or(NESTED_TIMEOUT))
            },
            stdin: &opts.stdin,
            passthrough: interactive,
            merge_stderr: false,
            guest_end_grace: opts.guest_end_grace(job),
            diagnose: Some(&|| {
                format!(
                    "L1 vCPUs at the timeout:\n{}L1's report:\n{}",
                    monitor::vcpu_state(&monitor),
                    l1_report::request(&report)
                )
            }),
        };
        let raw = runner::run(cmd, "qemu-system-x86_64 (L1)", &spec)?;
        nested_outcome(&raw)
    }
}

/// What runs where ivmm runs.
#[derive(Debug, Clone)]
enum Job {
    Ivmm(Vec<String>),
    Shell(String),
}

impl Job {
    fn name(&self) -> &'static str {
        match self {
            Job::Ivmm(_) => "ivmm",
            Job::Shell(_) => "sh",
        }
    }
}

/// Runs `run` again, once, after one of the nested lab's own faults (tests/README.md), printing
/// it: L1's kernel panicked (KVM on QEMU's emulated SVM overflowing L1's stack) or L1 vanished
/// without reporting (a triple fault), which nothing a run does in L1 userspace can cause; the
/// L2 triple-faulted before its init ran; or the run timed out with the L2 kernel reporting a
/// vCPU that stopped (RCU stall or soft lockup), the lab hang seen with QEMU as the L2's VMM as
/// well as with ivmm, or before its guest started with every L2 vCPU halted in L1's KVM and no
/// exits (the same hang with no vCPU left to report it). An ivmm bug doing such things now and then would get a second chance
/// too: hence the whole report on stderr. A second fault fails the run.
fn once_more_after_lab_fault<T>(mut run: impl FnMut() -> Result<T>) -> Result<T> {
    match run() {
        Err(err) if is_lab_fault(&err) => {
            eprintln!("ivmm lab: RETRY after a lab fault (tests/README.md):\n{err}");
            run()
        }
        other => other,
    }
}

/// What ivmm prints when a vCPU triple-faults (vmm/src/vcpu.rs).
pub const TRIPLE_FAULT_WARNING: &str = "triple fault (KVM_EXIT_SHUTDOWN)";

/// Turns a nested run whose L2 triple-faulted before the guest's own code ran into
/// [`LabError::L2EarlyTripleFault`], a lab fault: SMP L2s triple-fault early now and then in
/// the nested lab, whichever VMM runs them (QEMU's end the same way, silently under
/// `-no-reboot`; tests/README.md). A lone ivmm run counts if ivmm exited 0 (its reset ends the
/// run) without [`MARK_GUEST_INIT`]; a script only if it named its guests' start marker (a
/// script may make a guest triple-fault on purpose, after that marker). Only nested runs:
/// under a hardware KVM an early triple fault is a bug to see.
fn refuse_early_triple_fault(job: &Job, opts: &RunOptions, out: LabOutcome) -> Result<LabOutcome> {
    let early =
        |marker: &str| out.console.contains(TRIPLE_FAULT_WARNING) && !out.console.contains(marker);
    let lab_fault = match (job, guest_start_marker(job, opts)) {
        (Job::Ivmm(_), Some(marker)) => out.ivmm_exit == 0 && early(marker),
        (_, Some(marker)) => early(marker),
        (_, None) => false,
    };
    if lab_fault {
        return Err(LabError::L2EarlyTripleFault {
            console: tail(&out.console, 40),
        });
    }
    Ok(out)
}

/// What a run's console shows once its guest started: the guest init's marker for a lone
/// ivmm run, the marker a script named, or nothing (a script that named none).
fn guest_start_marker<'a>(job: &Job, opts: &'a RunOptions) -> Option<&'a str> {
    match job {
        Job::Ivmm(_) => Some(MARK_GUEST_INIT),
        Job::Shell(_) => opts.guest_start_marker.as_deref(),
    }
}

/// Turns a nested run that timed out before its guest started, with L1's report showing the
/// L2 stopped inside L1's KVM ([`l1_report::l2_stopped`]), into
/// [`LabError::L2StoppedBeforeStart`], a lab fault: CI lost a 2- or 4-vCPU boot of
/// `boot::vcpu_count_is_what_the_guest_sees` that way (stop 17), no L2 output, L1 idle. A
/// guest that started and then stopped stays a plain timeout: a guest may halt on purpose.
fn name_l2_stopped_before_start(job: &Job, opts: &RunOptions, err: LabError) -> LabError {
    match err {
        LabError::Timeout {
            after,
            console,
            diagnosis,
            ..
        } if guest_start_marker(job, opts).is_some_and(|m| !console.contains(m))
            && l1_report::l2_stopped(&diagnosis) =>
        {
            LabError::L2StoppedBeforeStart {
                after,
                console: tail(&console, 40),
                diagnosis,
            }
        }
        other => other,
    }
}

/// L2 kernel messages saying a vCPU stopped responding.
const L2_STALL_SIGNS: [&str; 3] = [
    "detected stalls on CPUs",
    "self-detected stall on CPU",
    "watchdog: BUG: soft lockup",
];

fn is_lab_fault(err: &LabError) -> bool {
    match err {
        // L1 gone without a word (QEMU exits 0 on L1's triple fault, with -no-reboot).
        LabError::L1Panic { .. }
        | LabError::L1Died { .. }
        | LabError::L2EarlyTripleFault { .. }
        | LabError::L2StoppedBeforeStart { .. } => true,
        LabError::Timeout { log, diagnosis, .. } => {
            L2_STALL_SIGNS.iter().any(|s| log.contains(s)) || vcpu_wedged(diagnosis)
        }
        _ => false,
    }
}

/// Whether the timeout report's two samples, a second apart, show an L1 vCPU at the same RIP,
/// not halted, either with interrupts off (RFLAGS.IF clear) or in the kernel with CR2 equal to
/// RIP (faulting on fetching its own instruction, over and over): L1's kernel (or, while it
/// runs one, an L2's) wedged for a second or more. Both seen with no L2 output at all and the
/// RIP or CR2 in an L1 module; the first also in a `lab_net` run whose L1 hung that way.
fn vcpu_wedged(diagnosis: &str) -> bool {
    let Some((first, second)) = diagnosis.split_once("sample 2:") else {
        return false;
    };
    let stuck = |line: &str| -> Option<(String, String)> {
        let cpu = line
            .split_whitespace()
            .next()?
            .strip_prefix("CPU#")?
            .to_string();
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        };
        let flags = u64::from_str_radix(&field("RFL=")?, 16).ok()?;
        let rip = field("RIP=")?;
        let interrupts_off = flags & 0x200 == 0;
        let refetch_fault =
            field("CPL=").as_deref() == Some("0") && field("CR2=") == Some(rip.clone());
        let running = field("HLT=").as_deref() == Some("0");
        (running && (interrupts_off || refetch_fault)).then_some((cpu, rip))
    };
    let early: Vec<_> = first.lines().filter_map(stuck).collect();
    second.lines().filter_map(stuck).any(|s| early.contains(&s))
}

/// Interprets QEMU's output: L1 log, console between the run markers, exit codes.
fn nested_outcome(raw: &runner::RawRun) -> Result<LabOutcome> {
    let text = String::from_utf8_lossy(&raw.out);
    let stderr = String::from_utf8_lossy(&raw.err);
    let full_log = || {
        let mut log = tail(&text, 80);
        let qemu_err = runner::noise_free(&stderr);
        if !qemu_err.is_empty() {
            log.push_str("\n[qemu stderr]\n");
            log.push_str(&qemu_err);
        }
        log
    };
    if text.contains("LAB-ERROR: no /dev/kvm") {
        return Err(LabError::L1NoKvm { log: full_log() });
    }
    let lab_exit = last_value(&text, "LAB-EXIT=");
    let Some(lab_exit) = lab_exit else {
        if text.contains("Kernel panic") {
            return Err(LabError::L1Panic { log: full_log() });
        }
        return Err(LabError::L1Died {
            status: raw.status.to_string(),
            log: full_log(),
        });
    };
    let out = &raw.out;
    let start = runner::find(out, MARK_RUN_START.as_bytes())
        .and_then(|p| out[p..].iter().position(|&b| b == b'\n').map(|n| p + n + 1));
    let Some(start) = start else {
        return Err(LabError::L1Died {
            status: format!("LAB-EXIT={lab_exit} but the run never started"),
            log: full_log(),
        });
    };
    let exit_marker = format!("\n{MARK_RUN_EXIT}");
    let end = runner::find(&out[start..], exit_marker.as_bytes()).map_or(out.len(), |p| start + p);
    let ivmm_exit = last_value(&text, MARK_RUN_EXIT).unwrap_or(lab_exit);
    let console = &out[start..end];

    // Host times of the console relative to the chunk that brought the start marker.
    let started_at = raw
        .chunks
        .iter()
        .take_while(|&&(off, _)| off < start)
        .last()
        .map_or(raw.started, |&(_, t)| t);
    let chunks: Vec<(usize, Duration)> = raw
        .chunks
        .iter()
        .filter_map(|&(off, t)| {
            let rel = t.saturating_duration_since(started_at);
            if off < start {
                None
            } else {
                Some((off - start, rel))
            }
        })
        .collect();
    // The chunk holding the start marker may also hold the first console bytes.
    let mut chunks = chunks;
    chunks.insert(0, (0, Duration::ZERO));

    let mut l1_log = String::from_utf8_lossy(&out[..start]).into_owned();
    l1_log.push_str(&String::from_utf8_lossy(&out[end..]));
    l1_log.push_str(&runner::noise_free(&stderr));
    Ok(LabOutcome {
        console: normalize_console(console),
        ivmm_exit,
        elapsed: raw.finished.saturating_duration_since(raw.started),
        l1_log,
        l1_boot: Some(started_at.saturating_duration_since(raw.started)),
        lines: timed_lines(console, &chunks),
    })
}

/// The integer after the last occurrence of `key` in `text`.
fn last_value(text: &str, key: &str) -> Option<i32> {
    let pos = text.rfind(key)?;
    let digits: String = text[pos + key.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// Replaces `{name}` placeholders; an unknown `{disk…}` is an error (a disk not attached).
fn expand(arg: &str, map: &[(String, String)]) -> Result<String> {
    let mut out = arg.to_string();
    for (name, value) in map {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    if let Some(pos) = out.find("{disk") {
        let rest = &out[pos..];
        let name = rest.split('}').next().unwrap_or(rest);
        return Err(LabError::Invalid(format!(
            "{name}}} in '{arg}': only {} disk(s) attached (RunOptions::disk)",
            map.iter().filter(|(n, _)| n.starts_with("disk")).count()
        )));
    }
    Ok(out)
}

pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn add_host_file(cpio: &mut CpioWriter, path: &Path, at: Option<&str>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let data =
        fs::read(path).map_err(|e| LabError::io(format!("reading {}", path.display()), e))?;
    let mode = fs::metadata(path)
        .map_err(|e| LabError::io(format!("stat {}", path.display()), e))?
        .permissions()
        .mode();
    let dest = match at {
        Some(at) => at.to_string(),
        None => path.display().to_string(),
    };
    cpio.file(&dest, mode & 0o777, &data);
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| LabError::io(format!("chmod {}", path.display()), e))
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The workspace root (this crate's parent directory), or `$IVMM_ROOT`.
fn workspace_root() -> PathBuf {
    if let Some(root) = std::env::var_os("IVMM_ROOT") {
        return PathBuf::from(root);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Vec<(String, String)> {
        vec![
            ("bzimage".into(), "/guest/bzImage".into()),
            ("disk0".into(), "/dev/lab-disk-0".into()),
        ]
    }

    #[test]
    fn expand_replaces_placeholders_inside_words() {
        let got = expand("path={bzimage},x={disk0}", &map()).expect("expands");
        assert_eq!(got, "path=/guest/bzImage,x=/dev/lab-disk-0");
    }

    #[test]
    fn expand_rejects_unattached_disk() {
        assert!(matches!(
            expand("{disk1}", &map()),
            Err(LabError::Invalid(_))
        ));
    }

    #[test]
    fn shell_quote_handles_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    fn raw(out: &str) -> runner::RawRun {
        use std::os::unix::process::ExitStatusExt;
        let now = std::time::Instant::now();
        let mid = out.find(MARK_RUN_START).map_or(0, |p| p + 3);
        runner::RawRun {
            out: out.as_bytes().to_vec(),
            err: b"qemu: warning: TCG doesn't support requested feature: x\n".to_vec(),
            chunks: vec![(0, now), (mid, now + Duration::from_secs(4))],
            started: now,
            finished: now + Duration::from_secs(9),
            status: std::process::ExitStatus::from_raw(0),
        }
    }

    #[test]
    fn nested_outcome_splits_console_from_l1_log() {
        let out = "LAB-L1-INIT\nLAB-KVM-READY\nLAB-RUN-START\nhello\r\nworld\nLAB-RUN-EXIT=3\nLAB-EXIT=3\n";
        let o = nested_outcome(&raw(out)).expect("outcome");
        assert_eq!(o.console, "hello\nworld");
        assert_eq!(o.ivmm_exit, 3);
        assert_eq!(o.l1_boot, Some(Duration::from_secs(4)));
        assert_eq!(o.marker_at("world"), Some(Duration::ZERO));
        assert!(o.l1_log.contains("LAB-KVM-READY") && !o.l1_log.contains("TCG"));
    }

    #[test]
    fn nested_outcome_names_l1_failures() {
        let no_kvm = "LAB-L1-INIT\nLAB-ERROR: no /dev/kvm in L1\nLAB-EXIT=125\n";
        assert!(matches!(
            nested_outcome(&raw(no_kvm)),
            Err(LabError::L1NoKvm { .. })
        ));
        let panic = "LAB-L1-INIT\n[ 1.0] Kernel panic - not syncing: VFS\n";
        assert!(matches!(
            nested_outcome(&raw(panic)),
            Err(LabError::L1Panic { .. })
        ));
        let died = "LAB-L1-INIT\nLAB-KVM-READY\n";
        assert!(matches!(
            nested_outcome(&raw(died)),
            Err(LabError::L1Died { .. })
        ));
    }

    /// Runs `once_more_after_lab_fault` over a run that fails with `fault()` the first
    /// `failures` times and then succeeds; returns the outcome and how many runs were made.
    fn rerun(fault: impl Fn() -> LabError, failures: usize) -> (Result<()>, usize) {
        let mut calls = 0;
        let out = once_more_after_lab_fault(|| {
            calls += 1;
            if calls <= failures {
                Err(fault())
            } else {
                Ok(())
            }
        });
        (out, calls)
    }

    #[test]
    fn a_lab_fault_runs_once_more_and_a_second_one_fails() {
        let panic = || LabError::L1Panic {
            log: "Kernel panic".into(),
        };
        let died = || LabError::L1Died {
            status: "exit status: 0".into(),
            log: String::new(),
        };
        let (out, calls) = rerun(panic, 1);
        assert!(out.is_ok() && calls == 2);
        let (out, calls) = rerun(died, 1);
        assert!(out.is_ok() && calls == 2);
        let (out, calls) = rerun(panic, 2);
        assert!(matches!(out, Err(LabError::L1Panic { .. })));
        assert_eq!(calls, 2);
        // The run's own failures: no second run.
        let (out, calls) = rerun(|| LabError::L1NoKvm { log: String::new() }, 1);
        assert!(matches!(out, Err(LabError::L1NoKvm { .. })));
        assert_eq!(calls, 1);
    }

    #[test]
    fn an_l2_triple_fault_before_init_is_a_lab_fault() {
        let outcome = |console: &str, ivmm_exit| LabOutcome {
            console: console.into(),
            ivmm_exit,
            elapsed: Duration::ZERO,
            l1_log: String::new(),
            l1_boot: None,
            lines: Vec::new(),
        };
        let early = "ivmm: warning: vCPU 2: triple fault (KVM_EXIT_SHUTDOWN); resetting the \
                     machine\nivmm: guest rebooted (--on-reboot exit)\n";
        let ivmm = Job::Ivmm(Vec::new());
        let none = RunOptions::new();
        let err = refuse_early_triple_fault(&ivmm, &none, outcome(early, 0)).map(|_| ());
        assert!(matches!(&err, Err(e) if is_lab_fault(e)), "{err:?}");
        // After init (reboot=triple), with another exit status, or without one: the run's.
        let late = format!("{MARK_GUEST_INIT}\n{early}");
        assert!(refuse_early_triple_fault(&ivmm, &none, outcome(&late, 0)).is_ok());
        assert!(refuse_early_triple_fault(&ivmm, &none, outcome(early, 1)).is_ok());
        let quiet = outcome("ivmm: guest rebooted\n", 0);
        assert!(refuse_early_triple_fault(&ivmm, &none, quiet).is_ok());
        // A script: only with a start marker, and then whatever its exit status.
        let script = Job::Shell(String::new());
        let marked = RunOptions::new().guest_start_marker("ATTACK-BEGAN");
        assert!(refuse_early_triple_fault(&script, &none, outcome(early, 0)).is_ok());
        let err = refuse_early_triple_fault(&script, &marked, outcome(early, 1)).map(|_| ());
        assert!(matches!(&err, Err(e) if is_lab_fault(e)), "{err:?}");
        let late = format!("ATTACK-BEGAN\n{early}");
        assert!(refuse_early_triple_fault(&script, &marked, outcome(&late, 0)).is_ok());
    }

    #[test]
    fn a_timeout_with_the_l2_stopped_in_kvm_before_start_is_a_lab_fault() {
        let one = "LAB-REPORT-BEGIN\nkvm exits=7345 halt_exits=90\n\
                   thread ivmm 212 212 ivmm S syscall=7 wchan=do_sys_poll stack=do_sys_poll\n\
                   thread ivmm 212 215 vcpu0 S syscall=16 wchan=kvm_vcpu_block \
                   stack=kvm_vcpu_block<kvm_vcpu_halt<kvm_arch_vcpu_ioctl_run\n\
                   LAB-REPORT-END\n";
        let stopped = format!("L1 vCPUs at the timeout:\n...\nL1's report:\n{one}{one}");
        let timeout = |console: &str, diagnosis: &str| LabError::Timeout {
            after: Duration::from_secs(150),
            phase: "running in L1",
            log: String::new(),
            diagnosis: diagnosis.into(),
            console: console.into(),
        };
        let ivmm = Job::Ivmm(Vec::new());
        let none = RunOptions::new();
        let err = name_l2_stopped_before_start(&ivmm, &none, timeout("", &stopped));
        assert!(
            matches!(err, LabError::L2StoppedBeforeStart { .. }),
            "{err:?}"
        );
        assert!(is_lab_fault(&err));
        // After the guest started, or with L1's report missing: the run's own timeout.
        let started = format!("{MARK_GUEST_INIT}\n");
        let err = name_l2_stopped_before_start(&ivmm, &none, timeout(&started, &stopped));
        assert!(!is_lab_fault(&err), "{err:?}");
        let err = name_l2_stopped_before_start(&ivmm, &none, timeout("", "no L1 report 1"));
        assert!(!is_lab_fault(&err), "{err:?}");
        // A script only with a start marker.
        let script = Job::Shell(String::new());
        let err = name_l2_stopped_before_start(&script, &none, timeout("", &stopped));
        assert!(!is_lab_fault(&err), "{err:?}");
        let marked = RunOptions::new().guest_start_marker("ATTACK-BEGAN");
        let err = name_l2_stopped_before_start(&script, &marked, timeout("", &stopped));
        assert!(is_lab_fault(&err), "{err:?}");
    }

    #[test]
    fn only_a_timeout_with_a_stalled_l2_is_a_lab_fault() {
        let timeout = |log: &str| LabError::Timeout {
            after: Duration::from_secs(1),
            phase: "running in L1",
            log: log.into(),
            diagnosis: String::new(),
            console: String::new(),
        };
        let stalled = "[ 26.2] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n";
        assert!(is_lab_fault(&timeout(stalled)));
        assert!(is_lab_fault(&timeout(
            "[ 80.7] watchdog: BUG: soft lockup - CPU#2 stuck"
        )));
        // A plain hang (ivmm or the guest command stuck, the L2 kernel fine) is the run's.
        assert!(!is_lab_fault(&timeout("IVMM-GUEST-INIT\nIVMM-CMD-BEGIN\n")));
    }

    #[test]
    fn a_vcpu_wedged_with_interrupts_off_is_a_lab_fault() {
        let report = |rfl0: &str, rip0b: &str| {
            format!(
                "L1 vCPUs at the timeout:\nsample 1:\n\
                 CPU#0 RIP=ffffffffaf2656b5 RFL={rfl0} [-------] CPL=0 II=0 HLT=0 CR0=80050033\n\
                 CPU#1 RIP=ffffffffafc17a0b RFL=00000212 [----A--] CPL=0 II=0 HLT=1 CR0=80050033\n\
                 sample 2:\n\
                 CPU#0 RIP={rip0b} RFL={rfl0} [-------] CPL=0 II=0 HLT=0 CR0=80050033\n\
                 CPU#1 RIP=ffffffffafc17a0b RFL=00000212 [----A--] CPL=0 II=0 HLT=1 CR0=80050033\n"
            )
        };
        assert!(vcpu_wedged(&report("00000002", "ffffffffaf2656b5")));
        // Interrupts on, or moving, or only halted vCPUs: not this fault.
        assert!(!vcpu_wedged(&report("00000202", "ffffffffaf2656b5")));
        assert!(!vcpu_wedged(&report("00000002", "ffffffffaf2656c0")));
        assert!(!vcpu_wedged(""));
    }

    #[test]
    fn a_kernel_vcpu_refaulting_on_its_own_rip_is_a_lab_fault() {
        // CI's virtio_blk mkfs run, 2026-11-28: CPU 0 stuck at CR2 == RIP, interrupts on.
        let report = |cr2: &str, hlt: &str| {
            format!(
                "L1 vCPUs at the timeout:\nsample 1:\n\
                 CPU#0 RIP=ffffffffc0400dcc RFL=00010246 [---Z-P-] CPL=0 II=0 HLT={hlt} CR2={cr2}\n\
                 CPU#1 RIP=ffffffff86273914 RFL=00000002 [-------] CPL=0 II=0 HLT=0 CR2=ffff8e1b53800000\n\
                 sample 2:\n\
                 CPU#0 RIP=ffffffffc0400dcc RFL=00010246 [---Z-P-] CPL=0 II=0 HLT={hlt} CR2={cr2}\n\
                 CPU#1 RIP=ffffffff84217a0b RFL=00000212 [----A--] CPL=0 II=0 HLT=1 CR2=ffff8e1b53800000\n"
            )
        };
        assert!(vcpu_wedged(&report("ffffffffc0400dcc", "0")));
        // A fault elsewhere, or a halted vCPU: not this fault.
        assert!(!vcpu_wedged(&report("ffff8e1b53800000", "0")));
        assert!(!vcpu_wedged(&report("ffffffffc0400dcc", "1")));
    }

    #[test]
    fn last_value_reads_the_last_marker() {
        assert_eq!(
            last_value("LAB-EXIT=1\nLAB-EXIT=42\r\n", "LAB-EXIT="),
            Some(42)
        );
        assert_eq!(last_value("nothing", "LAB-EXIT="), None);
    }
}
