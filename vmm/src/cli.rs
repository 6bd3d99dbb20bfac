//! `ivmm run` command-line arguments (clap). Everything here is turned into
//! a typed [`crate::config::VmConfig`] before anything else looks at it.

use std::path::PathBuf;

/// Boot a kernel in a new virtual machine.
#[derive(Debug, clap::Args)]
#[command(after_long_help = RUN_AFTER_HELP)]
pub struct RunArgs {
    /// Kernel to boot: a bzImage, or an ELF vmlinux with a PVH entry note.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Initial ramdisk (initramfs) to hand to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line, passed exactly as given.
    #[arg(long, value_name = "STRING", default_value = "console=ttyS0")]
    pub cmdline: String,

    /// Guest RAM: a number with an optional K, M, G or T suffix (binary
    /// units; no suffix = bytes). RAM above 3 GiB is placed above 4 GiB,
    /// around the 32-bit PCI hole.
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    pub mem: String,

    /// Number of vCPUs (one socket, one thread per core unless
    /// --cpu-topology says otherwise).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,

    /// CPU model: `host` (every feature this host's KVM supports) or a named
    /// model as QEMU defines it (`ivmm cpu list`), with optional `,+FEATURE`,
    /// `,-FEATURE` (names as in /proc/cpuinfo) and `,check=warn` to run
    /// without features KVM cannot provide instead of refusing. `+vmx`/`+svm`
    /// give the guest nested virtualization.
    #[arg(long, value_name = "MODEL[,+FEAT][,-FEAT]", default_value = "host")]
    pub cpu: String,

    /// Guest CPU topology, e.g. `sockets=1,cores=2,threads=2`; the product
    /// must equal --vcpus.
    #[arg(long, value_name = "sockets=S,cores=C,threads=T")]
    pub cpu_topology: Option<String>,

    /// CPU template (JSON: CPUID register bitmaps and MSR values; `ivmm cpu
    /// show MODEL --json` prints one to start from). Replaces --cpu.
    #[arg(long, value_name = "FILE.json", conflicts_with = "cpu")]
    pub cpu_template: Option<PathBuf>,

    /// Where COM1 (the guest console, ttyS0) goes: `stdio` (this terminal;
    /// input is forwarded), `file:PATH` (output appended to PATH, no input),
    /// or `none`.
    #[arg(long, value_name = "MODE", default_value = "stdio")]
    pub serial: String,

    /// Also copy everything the guest prints on COM1 into PATH (created or
    /// truncated), for scripted builds.
    #[arg(long, value_name = "PATH")]
    pub console_log: Option<PathBuf>,

    /// What a guest reboot does: `exit` ends ivmm with status 0, `restart`
    /// boots the same kernel again in a fresh VM.
    #[arg(long, value_name = "ACTION", default_value = "exit")]
    pub on_reboot: String,

    /// A virtio-blk disk: `PATH[,format=raw|qcow2][,readonly=on][,serial=ID]
    /// [,cache=writeback|none][,discard=unmap|ignore]`. Repeatable; disks
    /// appear in order as /dev/vda, /dev/vdb, ... The format is probed when
    /// not given (a probed raw image may not be turned into qcow2 by the guest).
    #[arg(long, value_name = "SPEC")]
    pub disk: Vec<String>,

    /// A virtio-net NIC: `nat[,subnet=CIDR][,mac=…]` or
    /// `tap=NAME[,mac=52:54:00:xx:xx:xx]`. Repeatable; NICs appear in order as
    /// eth0, eth1, ... `nat`: ivmm's NAT network (a bridge shared by every
    /// ivmm on the subnet, masquerading, DHCP and a DNS forwarder on the
    /// gateway; default subnet 10.0.2.0/24, gateway 10.0.2.1; needs
    /// CAP_NET_ADMIN). `tap=`: an existing TAP, or one created for this run
    /// (CAP_NET_ADMIN unless NAME is a persistent TAP owned by this user).
    /// Default MACs are 52:54:00 plus three bytes derived from NAME (tap) or
    /// the first disk's path (nat), the same on every run.
    #[arg(long, value_name = "SPEC")]
    pub net: Vec<String>,

    /// Run every disk on a temporary qcow2 overlay that is deleted on exit;
    /// the images themselves are only read.
    #[arg(long)]
    pub snapshot: bool,

    /// Seconds to wait after SIGTERM (which presses the ACPI power button)
    /// for the guest to power off before stopping it hard.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub shutdown_timeout: u64,

    /// System-call filters on every ivmm thread (each kind of thread has
    /// its own allow-list): `kill` stops ivmm with a message naming the
    /// thread and the call, `log` lets the call through and the kernel logs
    /// it (dmesg), `off` installs none.
    #[arg(long, value_name = "MODE", value_enum, default_value = "kill")]
    pub seccomp: crate::seccomp::SeccompMode,
}

const RUN_AFTER_HELP: &str = "\
Console:
  With --serial stdio on a terminal, the terminal is put in raw mode and every
  key goes to the guest. Press Ctrl-A then x to quit ivmm (the guest is
  stopped at once); Ctrl-A Ctrl-A sends a literal Ctrl-A. The terminal is
  restored on every exit.

Exit status:
  0   the guest powered off, or rebooted with --on-reboot exit
  1   ivmm failed (KVM error, a file that is not a kernel, a vCPU failed, a
      thread made a system call its seccomp filter forbids)
  2   bad command line: an invalid option value or a missing file
  3   the guest kernel panicked (reported through pvpanic)
  4   stopped by Ctrl-A x, or hard-stopped after a signal and the timeout

Signals:
  SIGTERM, SIGINT and SIGHUP press the ACPI power button; if the guest has not
  powered off after --shutdown-timeout seconds (or on a second signal), ivmm
  stops it hard and exits with status 4. A guest that reboots after the
  signal is not restarted, whatever --on-reboot says.

Logging:
  IVMM_LOG=error|warn|info|debug|trace sets how much ivmm reports on stderr
  (default warn).

Example:
  ivmm run --kernel bzImage --initrd initrd.img --mem 1G --vcpus 2 \\
      --cmdline 'console=ttyS0 quiet'";
