//! seccomp filters: one allow-list per kind of thread, installed by each
//! thread itself before it touches guest state.
//!
//! A filter is inherited by the threads a thread creates and can only be
//! narrowed, so a thread that starts others must allow what they need too:
//! - `vcpu`, `block` and `net` threads have minimal lists of their own;
//! - the `spawner` starts the device I/O threads (devices activate on a vCPU
//!   thread, which must not need disk or TAP syscalls), so it allows the
//!   `block` and `net` lists plus thread creation;
//! - the `vmm` thread (main: event loop, building and rebuilding the VM on
//!   `--on-reboot restart`, shutdown) starts everything, so its list is the
//!   union of all others plus what building a VM takes.
//!
//! `kill` mode traps a forbidden call: a SIGSYS handler names the thread and
//! the syscall, restores the terminal and ends the process. `log` mode lets
//! the call through and the kernel logs it (`dmesg`, audit type 1326).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `--seccomp`: what a forbidden syscall does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// No filters.
    Off,
    /// Allow the call; the kernel logs it.
    Log,
    /// Stop ivmm with a message naming the thread and the syscall.
    Kill,
}

/// The kinds of thread ivmm runs; each has its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vmm,
    Vcpu,
    Spawner,
    Block,
    Net,
    Nat,
}

const ALL_KINDS: [ThreadKind; 6] = [
    ThreadKind::Vmm,
    ThreadKind::Vcpu,
    ThreadKind::Spawner,
    ThreadKind::Block,
    ThreadKind::Net,
    ThreadKind::Nat,
];

/// Every kind's program, compiled once on the main thread by
/// [`prepare_process`] (indexed by `ThreadKind as usize`): threads then
/// only install one, which keeps compiling allocations out of their
/// malloc arenas.
static PRECOMPILED: OnceLock<(SeccompMode, Vec<BpfProgram>)> = OnceLock::new();

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Spawner => "spawner",
            ThreadKind::Block => "block I/O",
            ThreadKind::Net => "net I/O",
            ThreadKind::Nat => "NAT DHCP/DNS",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {kind} seccomp filter: {source}")]
    Build {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot compile the {kind} seccomp filter: {source}")]
    Compile {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {kind} seccomp filter: {source}")]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
}

/// Room for a thread name as the kernel keeps it (`comm`).
const NAME_LEN: usize = 16;

thread_local! {
    /// This thread's kind and name, for the SIGSYS report (read there
    /// without a syscall: the filter may forbid `prctl(PR_GET_NAME)`).
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
    static NAME: Cell<[u8; NAME_LEN]> = const { Cell::new([0; NAME_LEN]) };
}

/// What a call outside the allow-list does; `None`: no filters.
fn mismatch_action(mode: SeccompMode) -> Option<SeccompAction> {
    match mode {
        SeccompMode::Off => None,
        SeccompMode::Log => Some(SeccompAction::Log),
        SeccompMode::Kill => Some(SeccompAction::Trap),
    }
}

/// Installs `kind`'s filter on the calling thread (nothing in `Off` mode).
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(mismatch) = mismatch_action(mode) else {
        return Ok(());
    };
    if KIND.with(|k| k.get()) == Some(kind) {
        return Ok(()); // the VMM thread on a restart: already filtered
    }
    let compiled;
    let program = match PRECOMPILED.get() {
        Some((m, programs)) if *m == mode => &programs[kind as usize],
        _ => {
            compiled = compile(kind, mismatch)?;
            &compiled
        }
    };
    let mut name = [0u8; NAME_LEN];
    if let Some(n) = std::thread::current().name() {
        let n = n.as_bytes();
        let len = n.len().min(NAME_LEN);
        name[..len].copy_from_slice(&n[..len]);
    }
    NAME.with(|c| c.set(name));
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
        kind: kind.name(),
        source,
    })?;
    KIND.with(|k| k.set(Some(kind)));
    #[cfg(feature = "test-hooks")]
    test_hooks::violate_if_asked(kind);
    Ok(())
}

/// Test-only: `IVMM_TEST_SECCOMP_VIOLATION=<kind>` makes the first thread
/// of that kind (`vmm`, `vcpu`, `spawner`, `block`, `net`) make a syscall
/// no filter allows, right after its filter is in place.
#[cfg(feature = "test-hooks")]
mod test_hooks {
    use super::ThreadKind;

    pub fn violate_if_asked(kind: ThreadKind) {
        let Ok(wanted) = std::env::var("IVMM_TEST_SECCOMP_VIOLATION") else {
            return;
        };
        let short = kind.name().split(' ').next().unwrap_or("");
        if wanted == short {
            // uselib(NULL): obsolete, harmless, allowed by no filter.
            // SAFETY: a raw syscall with a null argument; the kernel
            // checks it (and the filter stops it before that).
            unsafe { libc::syscall(libc::SYS_uselib, 0usize) };
        }
    }
}

fn compile(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules(kind).map_err(|source| SeccompError::Build {
            kind: kind.name(),
            source,
        })?,
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|source| SeccompError::Build {
        kind: kind.name(),
        source,
    })?;
    filter.try_into().map_err(|source| SeccompError::Compile {
        kind: kind.name(),
        source,
    })
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;
type BuildResult<T> = Result<T, seccompiler::BackendError>;

/// Every thread: memory, futexes, signals, plain reads/writes on fds it
/// already has (eventfds, stderr, the console), thread exit.
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Creating threads (std + glibc: clone3, then the child's own set-up,
/// which runs under the creator's filter, up to installing its filter).
const THREAD_START: &[i64] = &[
    libc::SYS_seccomp,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
];

/// vCPU: device emulation runs here, so it also creates the eventfds a
/// device activation needs and joins workers on reset.
const VCPU: &[i64] = &[libc::SYS_eventfd2, libc::SYS_dup, libc::SYS_fcntl];

/// Waiting on eventfds and the TAP.
const EPOLL: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
];

/// Disk I/O (raw and qcow2).
const BLOCK: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
];

/// TAP I/O, and the transmit re-poll timer (made and armed by the thread).
const NET: &[i64] = &[
    libc::SYS_readv,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
];

/// The NAT network's DHCP/DNS thread: datagrams on its sockets, and the
/// lease file shared with other ivmm processes (opened, locked, rewritten
/// per change).
const NAT: &[i64] = &[
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_openat,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_ftruncate,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
];

/// Route and nf_tables netlink on the VMM thread: a NAT NIC's TAP joins
/// the bridge at every (re)build, and the last user removes the network
/// at exit. `socket` itself is allowed for AF_NETLINK only.
const NETLINK: &[i64] = &[
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_setsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
];

/// The VMM thread on top of everything it starts: opening and creating
/// files (kernel, disks, overlays, TAP), KVM set-up, the event loop's
/// signalfd and timers, signals to vCPUs, temporary files.
const VMM: &[i64] = &[
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_flock,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_signalfd4,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_rt_sigaction,
    libc::SYS_kill,
    libc::SYS_sysinfo,
    libc::SYS_uname,
    libc::SYS_prlimit64,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_getuid,
    libc::SYS_geteuid,
];

// ioctl request numbers (asm-generic/ioctl.h encoding).
const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVMIO: u64 = 0xae;
const KVM_RUN: u64 = ioc(0, KVMIO, 0x80, 0);
const KVM_GET_REGS: u64 = ioc(IOC_READ, KVMIO, 0x81, 144);
const KVM_GET_SREGS: u64 = ioc(IOC_READ, KVMIO, 0x83, 312);
const KVM_SET_GSI_ROUTING: u64 = ioc(IOC_WRITE, KVMIO, 0x6a, 8);
const TUNSETOFFLOAD: u64 = ioc(IOC_WRITE, b'T' as u64, 208, 4);
const TUNSETIFF: u64 = ioc(IOC_WRITE, b'T' as u64, 202, 4);
const TUNSETVNETHDRSZ: u64 = ioc(IOC_WRITE, b'T' as u64, 216, 4);
const TUNGETFEATURES: u64 = ioc(IOC_READ, b'T' as u64, 207, 4);
/// What glibc's `tcsetattr(TCSANOW)` uses (it reads the settings back):
/// every thread may restore the terminal, from the SIGSYS handler.
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;
const TIOCGWINSZ: u64 = 0x5413;
const FIONBIO: u64 = 0x5421;
/// Raw disks on block devices: size and sector size.
const BLKGETSIZE64: u64 = ioc(IOC_READ, 0x12, 114, 8);
const BLKSSZGET: u64 = 0x1268;

fn ioctl_request_is(request: u64) -> BuildResult<SeccompRule> {
    SeccompRule::new(vec![SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        request,
    )?])
}

fn ioctl_rules(kind: ThreadKind) -> BuildResult<Vec<SeccompRule>> {
    let mut requests = vec![TCGETS, TCSETS];
    if matches!(kind, ThreadKind::Vcpu | ThreadKind::Vmm) {
        requests.extend([
            KVM_RUN,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            KVM_SET_GSI_ROUTING,
            TUNSETOFFLOAD,
        ]);
    }
    if kind == ThreadKind::Vmm {
        requests.extend([
            TUNSETIFF,
            TUNSETVNETHDRSZ,
            TUNGETFEATURES,
            TIOCGWINSZ,
            FIONBIO,
            BLKGETSIZE64,
            BLKSSZGET,
        ]);
    }
    let mut rules = requests
        .into_iter()
        .map(ioctl_request_is)
        .collect::<BuildResult<Vec<_>>>()?;
    if kind == ThreadKind::Vmm {
        // Building a VM takes some twenty KVM ioctls; all share type 0xAE.
        rules.push(SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(0xff00),
            KVMIO << 8,
        )?])?);
    }
    Ok(rules)
}

/// New threads name themselves (`PR_SET_NAME`) and set `no_new_privs`
/// before installing their filter; both run under the creator's filter.
fn prctl_rules() -> BuildResult<Vec<SeccompRule>> {
    [libc::PR_SET_NAME, libc::PR_SET_NO_NEW_PRIVS]
        .into_iter()
        .map(|option| {
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                option as u64,
            )?])
        })
        .collect()
}

fn rules(kind: ThreadKind) -> BuildResult<Rules> {
    let mut lists: Vec<&[i64]> = vec![BASE];
    match kind {
        ThreadKind::Vcpu => lists.push(VCPU),
        ThreadKind::Block => lists.extend([EPOLL, BLOCK]),
        ThreadKind::Net => lists.extend([EPOLL, NET]),
        ThreadKind::Spawner => lists.extend([THREAD_START, EPOLL, BLOCK, NET]),
        ThreadKind::Vmm => lists.extend([THREAD_START, VCPU, EPOLL, BLOCK, NET, NETLINK, VMM]),
        ThreadKind::Nat => lists.extend([EPOLL, NAT]),
    }
    let mut rules: Rules = lists
        .into_iter()
        .flatten()
        .map(|&nr| (nr, Vec::new()))
        .collect();
    rules.insert(libc::SYS_ioctl, ioctl_rules(kind)?);
    if kind == ThreadKind::Vmm {
        rules.insert(
            libc::SYS_socket,
            vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_NETLINK as u64,
            )?])?],
        );
    }
    if matches!(kind, ThreadKind::Spawner | ThreadKind::Vmm) {
        rules.insert(libc::SYS_prctl, prctl_rules()?);
    }
    Ok(rules)
}

/// Compiles every filter, and prepares the C library for filtered threads;
/// call before the first thread starts. glibc opens files lazily, on whatever thread happens to need
/// it, in two places a filter would trap:
/// - sizing its arena limit when a ninth thread arena is made (it reads
///   the CPU count from /sys): an explicit limit, glibc's own default of
///   8 per CPU, is taken instead;
/// - shrinking a thread arena's heap the first time (it reads
///   /proc/sys/vm/overcommit_memory; seen on a vCPU at guest power-off):
///   with a trim threshold no heap reaches it never shrinks one. ivmm's
///   heap is small (guest RAM is a separate mapping), so keeping freed
///   heap memory costs little.
pub fn prepare_process(mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(mismatch) = mismatch_action(mode) else {
        return Ok(());
    };
    let programs = ALL_KINDS
        .iter()
        .map(|&kind| compile(kind, mismatch.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let _ = PRECOMPILED.set((mode, programs));
    const NEVER_TRIM: libc::c_int = libc::c_int::MAX;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
    for (param, value, what) in [
        (libc::M_ARENA_MAX, arenas, "arena limit"),
        (libc::M_TRIM_THRESHOLD, NEVER_TRIM, "trim threshold"),
    ] {
        // SAFETY: mallopt only changes allocator tuning; it returns 0 on
        // an unknown parameter (then nothing changed).
        if unsafe { libc::mallopt(param, value) } == 0 {
            log::warn!("cannot set the malloc {what}; a seccomp filter may stop ivmm");
        }
    }
    Ok(())
}

/// Installs the SIGSYS handler that reports a trapped syscall. Call once,
/// before the first filter in `kill` mode.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: sigaction is plain data; zeroed is a valid empty mask and
        // flags, then the fields we need are set.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: installs a handler that only makes async-signal-safe calls
        // (write, tcsetattr, _exit) on data it does not allocate.
        let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    result.map_err(|errno| SeccompError::Handler(std::io::Error::from_raw_os_error(errno)))
}

/// Exit status after a trapped syscall (the documented "ivmm failed").
const SIGSYS_EXIT_CODE: i32 = 1;

/// The SIGSYS layout of `siginfo_t` (`_sigsys` in the kernel's union).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: usize,
    syscall: i32,
    arch: u32,
}

extern "C" fn on_sigsys(_signal: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for
    // SIGSYS it has the `_sigsys` layout above.
    let syscall = unsafe { (*(info as *const SigsysInfo)).syscall };
    let kind = KIND
        .with(|k| k.get())
        .map_or("unfiltered", ThreadKind::name);
    let mut msg = SignalSafeBuf::new();
    msg.push(b"\r\nivmm: seccomp: the ");
    msg.push(kind.as_bytes());
    msg.push(b" thread '");
    msg.push_thread_name();
    msg.push(b"' made system call ");
    msg.push_number(i64::from(syscall));
    msg.push(b", which its filter forbids; stopping (run with --seccomp=log to find more)\r\n");
    crate::terminal::restore_from_signal_handler();
    // SAFETY: write and _exit are async-signal-safe and allowed by every
    // filter (a forbidden call here would kill us without a word); the
    // buffer is ours.
    unsafe {
        libc::write(libc::STDERR_FILENO, msg.as_ptr(), msg.len());
        libc::_exit(SIGSYS_EXIT_CODE);
    }
}

/// A fixed buffer for building the report without allocating.
struct SignalSafeBuf {
    bytes: [u8; 256],
    len: usize,
}

impl SignalSafeBuf {
    fn new() -> Self {
        Self {
            bytes: [0; 256],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: i64) {
        if v < 0 {
            self.push(b"-");
            v = -v;
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    /// The calling thread's name, as recorded by [`install`].
    fn push_thread_name(&mut self) {
        let name = NAME.with(|c| c.get());
        let n = name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        self.push(&name[..n]);
    }

    fn as_ptr(&self) -> *const libc::c_void {
        self.bytes.as_ptr().cast()
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_both_modes() {
        for kind in ALL_KINDS {
            for action in [SeccompAction::Log, SeccompAction::Trap] {
                let program = compile(kind, action).unwrap();
                assert!(!program.is_empty(), "{kind:?}");
            }
        }
    }

    #[test]
    fn inherited_lists_cover_what_their_children_need() {
        let allowed = |kind| rules(kind).unwrap().into_keys().collect::<Vec<_>>();
        let vmm = allowed(ThreadKind::Vmm);
        let spawner = allowed(ThreadKind::Spawner);
        for child in [
            ThreadKind::Vcpu,
            ThreadKind::Spawner,
            ThreadKind::Block,
            ThreadKind::Net,
        ] {
            for nr in allowed(child) {
                assert!(vmm.contains(&nr), "vmm lacks {nr} of {child:?}");
            }
        }
        for child in [ThreadKind::Block, ThreadKind::Net] {
            for nr in allowed(child) {
                assert!(spawner.contains(&nr), "spawner lacks {nr} of {child:?}");
            }
        }
    }

    #[test]
    fn precompiled_programs_are_indexed_by_kind() {
        for (i, kind) in ALL_KINDS.iter().enumerate() {
            assert_eq!(*kind as usize, i);
        }
    }

    #[test]
    fn report_numbers_are_decimal() {
        let mut b = SignalSafeBuf::new();
        b.push_number(0);
        b.push(b" ");
        b.push_number(435);
        b.push(b" ");
        b.push_number(-1);
        assert_eq!(&b.bytes[..b.len], b"0 435 -1");
    }
}
