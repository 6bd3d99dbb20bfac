//! vCPU threads: initial state, the KVM_RUN loop, exit dispatch to the
//! port-I/O and MMIO buses, and a race-free way to stop them.
//!
//! Stopping: the main thread sets the shared `stop` flag and sends
//! [`KICK_SIGNAL`] to every vCPU thread. The handler sets `immediate_exit`
//! in that thread's `kvm_run`, so a KVM_RUN that starts after the flag check
//! returns at once with EINTR, and one already running is interrupted.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::Bus;
use kvm_bindings::{
    kvm_msr_entry, kvm_run, CpuId, Msrs, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable};

use crate::control::{ExitReason, StopControl};
use crate::seccomp::{self, SeccompMode, ThreadKind};
use boot::kernel::EntryPoint;

/// Real-time signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run` page, for the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let ptr = run.get();
        if !ptr.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, set
            // by `VcpuThread::run` and valid until the VcpuFd is dropped at
            // the end of that function, after which it is reset to null.
            unsafe { (*ptr).immediate_exit = 1 };
        }
    });
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), handle_kick)
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot set up vCPU {index}: {what}: {source}")]
    Setup {
        index: u32,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM refused the template's MSR {msr:#x}")]
    TemplateMsr { index: u32, msr: u32 },
    #[error("cannot start the thread for vCPU {index}: {source}")]
    Spawn { index: u32, source: std::io::Error },
}

/// Programs a vCPU's CPUID, MSRs, FPU, LAPIC and, for the boot vCPU, the
/// entry registers.
pub fn configure(
    fd: &VcpuFd,
    index: u32,
    cpuid: &CpuId,
    entry: Option<&EntryPoint>,
) -> Result<(), VcpuError> {
    let err = |what| {
        move |source| VcpuError::Setup {
            index,
            what,
            source,
        }
    };
    fd.set_cpuid2(cpuid).map_err(err("CPUID"))?;
    let entries: Vec<kvm_msr_entry> = boot::regs::boot_msrs()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Setup {
        index,
        what: "MSR list",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    let written = fd.set_msrs(&msrs).map_err(err("MSRs"))?;
    if written != entries.len() {
        log::debug!(
            "vCPU {index}: KVM took {written} of {} boot MSRs",
            entries.len()
        );
    }
    fd.set_fpu(&boot::regs::boot_fpu()).map_err(err("FPU"))?;
    let mut lapic = fd.get_lapic().map_err(err("LAPIC read"))?;
    // SAFETY: kvm_lapic_state.regs is a plain [c_char; 1024]; viewing it as
    // bytes of the same length is sound.
    let regs = unsafe {
        std::slice::from_raw_parts_mut(lapic.regs.as_mut_ptr().cast::<u8>(), lapic.regs.len())
    };
    boot::regs::set_lint_modes(regs);
    fd.set_lapic(&lapic).map_err(err("LAPIC write"))?;
    if let Some(entry) = entry {
        let sregs = fd.get_sregs().map_err(err("special registers read"))?;
        fd.set_sregs(&boot::regs::boot_sregs(&sregs, entry))
            .map_err(err("special registers"))?;
        fd.set_regs(&boot::regs::boot_regs(entry))
            .map_err(err("registers"))?;
    }
    Ok(())
}

/// Writes MSR values from a CPU template; KVM must take all of them.
pub fn set_msrs(fd: &VcpuFd, index: u32, values: &[(u32, u64)]) -> Result<(), VcpuError> {
    if values.is_empty() {
        return Ok(());
    }
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Setup {
        index,
        what: "template MSR list",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    let written = fd.set_msrs(&msrs).map_err(|source| VcpuError::Setup {
        index,
        what: "template MSRs",
        source,
    })?;
    if let Some((msr, _)) = values.get(written) {
        return Err(VcpuError::TemplateMsr { index, msr: *msr });
    }
    Ok(())
}

/// What a vCPU thread shares with the rest of the VM.
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: Arc<StopControl>,
    pub stop: Arc<AtomicBool>,
    /// Appended to fatal-error reports (e.g. the kvm_pvm explanation).
    pub fatal_hint: Option<&'static str>,
    pub seccomp: SeccompMode,
}

/// Starts vCPU `index` on a thread named `vcpu<index>`.
pub fn spawn(index: u32, fd: VcpuFd, ctx: VcpuContext) -> Result<JoinHandle<()>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || run(index, fd, ctx))
        .map_err(|source| VcpuError::Spawn { index, source })
}

/// Stops all vCPU threads and waits for them.
pub fn stop_all(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::SeqCst);
    for t in &threads {
        if let Err(e) = t.kill(kick_signal()) {
            log::debug!("kick failed (thread already gone?): {e}");
        }
    }
    for t in threads {
        if t.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

fn run(index: u32, mut fd: VcpuFd, ctx: VcpuContext) {
    // The guest must not run a single instruction on an unfiltered vCPU.
    if let Err(e) = seccomp::install(ThreadKind::Vcpu, ctx.seccomp) {
        ctx.control
            .stop(ExitReason::Fatal(format!("vCPU {index}: {e}")));
        return;
    }
    KVM_RUN.with(|run| run.set(fd.get_kvm_run() as *mut kvm_run));
    let result = run_loop(index, &mut fd, &ctx);
    KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
    if let Some(reason) = result {
        ctx.control.stop(reason);
    }
}

/// Runs until the VM is stopped (None) or this vCPU decides the VM's fate.
fn run_loop(index: u32, fd: &mut VcpuFd, ctx: &VcpuContext) -> Option<ExitReason> {
    loop {
        if ctx.stop.load(Ordering::SeqCst) {
            return None;
        }
        match fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !ctx.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                ctx.pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !ctx.mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ctx.mmio.write(addr, data);
            }
            Ok(VcpuExit::Hlt) => {
                // Only reachable without an in-kernel LAPIC; treat as idle.
                std::thread::yield_now();
            }
            Ok(VcpuExit::Shutdown) => {
                // A triple fault resets the machine, as on hardware (and in
                // QEMU); say so, since the guest asked for no reboot.
                log::warn!("vCPU {index}: triple fault (KVM_EXIT_SHUTDOWN); resetting the machine");
                return Some(ExitReason::Reset);
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return Some(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    other => {
                        ExitReason::Fatal(format!("vCPU {index}: unknown KVM system event {other}"))
                    }
                });
            }
            Ok(VcpuExit::InternalError) => {
                return Some(fatal(index, fd, "KVM_EXIT_INTERNAL_ERROR", ctx.fatal_hint));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                let what = format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})");
                return Some(fatal(index, fd, &what, ctx.fatal_hint));
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                let what = format!("unexpected exit {other:?}");
                return Some(fatal(index, fd, &what, ctx.fatal_hint));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
            }
            Err(e) => {
                let what = format!("KVM_RUN failed: {e}");
                return Some(fatal(index, fd, &what, ctx.fatal_hint));
            }
        }
    }
}

/// A fatal vCPU error with a register dump for the report.
fn fatal(index: u32, fd: &VcpuFd, what: &str, hint: Option<&str>) -> ExitReason {
    let mut msg = format!("vCPU {index} stopped: {what}");
    match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) => {
            msg.push_str(&format!(
                "\n  rip={:#018x} rsp={:#018x} rflags={:#x}\n  rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}\n  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}(l={} db={}) ss={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi,
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.l, s.cs.db, s.ss.selector
            ));
        }
        _ => msg.push_str("\n  (registers unavailable)"),
    }
    if let Some(hint) = hint {
        msg.push('\n');
        msg.push_str(hint);
    }
    ExitReason::Fatal(msg)
}
