//! Building a VM from a [`VmConfig`] and running it until it stops:
//! KVM VM and memory, in-kernel IRQ chip and PIT, devices on the buses, ACPI
//! tables, the kernel, vCPU threads, and the main-thread event loop.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boot::kernel::{self, EntryPoint};
use boot::layout::*;
use boot::memory_map;
use devices::legacy::{AcpiPm, Cmos, PvPanic, Serial, I8042};
use devices::pci::{HostBridge, PciBus, PciConfigIo, PciConfigMmio};
use devices::virtio::spawn::WorkerSpawner;
use devices::Bus;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{SerialMode, VmConfig};
use crate::control::{ExitReason, StopControl};
use crate::event_loop::{ConsoleInput, Lifecycle};
use crate::interrupts::IntxResamplers;
use crate::seccomp::{self, ThreadKind};
use crate::spawner::{FilteredSpawner, NoWorkers};
use crate::vcpu;

/// KVM needs three pages for the TSS just below 4 GiB on Intel; keep them
/// clear of the IOAPIC/LAPIC windows.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Said after a fatal vCPU error when the host's /dev/kvm is kvm_pvm.
const PVM_HINT: &str = "This host's /dev/kvm is kvm_pvm, a software virtualizer that cannot run \
unmodified kernels (it stops on instructions such as cmpxchg16b, xrstor and int3). Run ivmm on a \
host with hardware KVM, or inside the nested-KVM lab: see `scripts/lab` in the ivmm README.";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you in the kvm group?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("--vcpus {requested}: this host's KVM allows at most {max}")]
    TooManyVcpus { requested: u32, max: usize },
    #[error("cannot allocate {mib} MiB of guest memory: {detail}")]
    Memory { mib: u64, detail: String },
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Params(#[from] boot::params::ParamsError),
    #[error("cannot build ACPI tables: {0}")]
    Acpi(String),
    #[error("cannot write boot structures to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("device setup: {0}")]
    Device(String),
    #[error(transparent)]
    PciDevices(#[from] crate::pci_devices::PciDevicesError),
    #[error("--serial file:{path}: {source}")]
    SerialFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--console-log {path}: {source}")]
    ConsoleLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error(transparent)]
    Cpu(#[from] boot::cpu_model::CpuModelError),
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("cannot start the device spawner thread: {0}")]
    Spawner(#[source] std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn is_pvm_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Opens KVM and checks the vCPU count against it (also used before any
/// file is touched, so bad arguments fail fast).
pub fn open_kvm(config: &VmConfig) -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let max = kvm.get_max_vcpus();
    if config.vcpus as usize > max {
        return Err(VmError::TooManyVcpus {
            requested: config.vcpus,
            max,
        });
    }
    Ok(kvm)
}

/// Writes everything COM1 prints to the console and/or a log file.
struct SerialOutput {
    sinks: Vec<File>,
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for sink in &mut self.sinks {
            // A failing sink (closed terminal) must not silence the others.
            let _ = sink.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn serial_output(config: &VmConfig) -> Result<SerialOutput, VmError> {
    let mut sinks = Vec::new();
    match &config.serial {
        SerialMode::Stdio => {
            // SAFETY: dup of our own stdout; the new fd is owned by the File.
            let fd = unsafe { libc::dup(libc::STDOUT_FILENO) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            // SAFETY: fd is a fresh descriptor we own.
            sinks.push(unsafe { File::from_raw_fd(fd) });
        }
        SerialMode::File(path) => sinks.push(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| VmError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
        ),
        SerialMode::None => {}
    }
    if let Some(path) = &config.console_log {
        sinks.push(File::create(path).map_err(|source| VmError::ConsoleLog {
            path: path.clone(),
            source,
        })?);
    }
    Ok(SerialOutput { sinks })
}

/// Maps guest RAM in this process (lazily backed: nothing is touched yet).
fn allocate_memory(mem_bytes: u64) -> Result<GuestMemoryMmap, VmError> {
    let ranges: Vec<(GuestAddress, usize)> = memory_map::ram_regions(mem_bytes)
        .iter()
        .map(|r| (GuestAddress(r.start), r.size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmError::Memory {
        mib: mem_bytes >> 20,
        detail: e.to_string(),
    })
}

/// Hands guest RAM to KVM, one memslot per region. Each slot costs KVM a
/// grace-period wait (milliseconds on some hosts), so `run` does this on a
/// thread of its own while the rest of the VM is built.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmError::Memory {
                mib: region.len() >> 20,
                detail: e.to_string(),
            })?;
        let kvm_region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives
        // the VM (the VM fd is dropped before `mem` in `run`), and slots do
        // not overlap.
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(kvm_err("registering guest memory"))?;
    }
    Ok(())
}

/// Devices the main loop needs handles to.
struct Platform {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<Serial>>,
    serial_drained: EventFd,
    acpi_pm: Arc<Mutex<AcpiPm>>,
    /// Served by the main loop (`interrupts::IntxResamplers`).
    intx_lines: Vec<(EventFd, devices::virtio::pci::IntxResample)>,
}

fn irq_line(vm: &VmFd, gsi: u32) -> Result<Arc<EventFd>, VmError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.register_irqfd(&evt, gsi)
        .map_err(kvm_err("registering an interrupt line"))?;
    Ok(Arc::new(evt))
}

fn create_platform(
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    control: &Arc<StopControl>,
    spawner: &Arc<dyn WorkerSpawner>,
) -> Result<Platform, VmError> {
    let dev_err = |e: devices::BusError| VmError::Device(e.to_string());
    let mut pio = Bus::new();
    let mut mmio = Bus::new();

    let serial_drained = EventFd::new(libc::EFD_NONBLOCK)?;
    let serial = Arc::new(Mutex::new(Serial::new(
        irq_line(vm, COM1_GSI)?,
        Box::new(serial_output(config)?),
        Some(Arc::new(serial_drained.try_clone()?)),
    )));
    pio.insert(
        serial.clone(),
        u64::from(COM1_PORT),
        u64::from(COM1_PORT_LEN),
    )
    .map_err(dev_err)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(control.clone()))),
        u64::from(I8042_DATA_PORT),
        u64::from(I8042_COMMAND_PORT - I8042_DATA_PORT + 1),
    )
    .map_err(dev_err)?;
    pio.insert(
        Arc::new(Mutex::new(Cmos::new())),
        u64::from(CMOS_PORT),
        u64::from(CMOS_PORT_LEN),
    )
    .map_err(dev_err)?;
    pio.insert(
        Arc::new(Mutex::new(PvPanic::new(control.clone()))),
        u64::from(PVPANIC_PORT),
        1,
    )
    .map_err(dev_err)?;
    let acpi_pm = Arc::new(Mutex::new(AcpiPm::new(
        control.clone(),
        ACPI_S5_SLP_TYP,
        ACPI_RESET_VALUE,
        irq_line(vm, GED_GSI)?,
    )));
    pio.insert(
        acpi_pm.clone(),
        u64::from(ACPI_SLEEP_CONTROL_PORT),
        devices::legacy::acpi_pm::ACPI_PM_PORT_LEN,
    )
    .map_err(dev_err)?;

    let mut pci = PciBus::new();
    pci.add_at(0, Arc::new(Mutex::new(HostBridge::new())))
        .map_err(|e| VmError::Device(e.to_string()))?;
    let router = Arc::new(crate::interrupts::GsiRouter::new(vm.clone()));
    let mut bars = crate::pci_devices::bar_allocator(memory_map::mmio64_window(config.mem_bytes))?;
    let mut pci_ctx = crate::pci_devices::PciContext {
        vm,
        mem,
        pci: &mut pci,
        mmio: &mut mmio,
        router: &router,
        bars: &mut bars,
        spawner,
        intx_lines: Vec::new(),
    };
    crate::pci_devices::add_disks(&mut pci_ctx, config)?;
    crate::pci_devices::add_nets(&mut pci_ctx, config)?;
    let intx_lines = std::mem::take(&mut pci_ctx.intx_lines);
    let pci = Arc::new(Mutex::new(pci));
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
        u64::from(PCI_CONFIG_PORT),
        u64::from(PCI_CONFIG_PORT_LEN),
    )
    .map_err(dev_err)?;
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio::new(pci))),
        ECAM_START,
        ECAM_SIZE,
    )
    .map_err(dev_err)?;

    Ok(Platform {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        serial,
        serial_drained,
        acpi_pm,
        intx_lines,
    })
}

/// Loads kernel, initrd, command line, ACPI tables and boot parameters.
fn load_guest(mem: &GuestMemoryMmap, config: &VmConfig) -> Result<EntryPoint, VmError> {
    let kernel = kernel::load_kernel(mem, &config.kernel)?;
    let low_end = memory_map::low_ram_end(config.mem_bytes);
    let initrd = match &config.initrd {
        Some(path) => Some(kernel::load_initrd(
            mem,
            path,
            kernel.end,
            kernel::initrd_limit(&kernel.entry, low_end),
        )?),
        None => None,
    };
    let cmdline_max = match &kernel.entry {
        EntryPoint::Linux64 { header, .. } => boot::params::cmdline_limit(header),
        EntryPoint::Pvh { .. } => CMDLINE_MAX_SIZE - 1,
    };
    boot::params::write_cmdline(mem, &config.cmdline, cmdline_max)?;

    let mmio64 = memory_map::mmio64_window(config.mem_bytes);
    let tables = boot::acpi::build(&boot::acpi::AcpiConfig {
        apic_ids: config.topology.apic_ids(config.vcpus),
        mmio64: (mmio64.start, mmio64.size),
    })
    .map_err(|e| VmError::Acpi(e.to_string()))?;
    for (addr, bytes) in &tables.blobs {
        mem.write_slice(bytes, GuestAddress(*addr))?;
    }

    let map = memory_map::guest_memory_map(config.mem_bytes);
    match &kernel.entry {
        EntryPoint::Linux64 { header, .. } => boot::params::write_boot_params(
            mem,
            header,
            config.cmdline.len(),
            initrd,
            &map,
            tables.rsdp_addr,
        )?,
        EntryPoint::Pvh { .. } => {
            boot::params::write_pvh_start_info(mem, initrd, &map, tables.rsdp_addr)?
        }
    }
    boot::regs::write_boot_tables(mem, &kernel.entry)?;
    Ok(kernel.entry)
}

/// The host CPU's brand string registers (CPUID 0x8000_0002..4).
fn host_brand() -> [[u32; 4]; 3] {
    let mut out = [[0; 4]; 3];
    for (i, regs) in out.iter_mut().enumerate() {
        // `__cpuid` is a safe function on current Rust but unsafe on the
        // workspace's minimum (1.80).
        #[allow(unused_unsafe)]
        // SAFETY: CPUID is available on every x86_64 CPU and has no side
        // effects; leaves past the host's maximum return other data, not
        // faults.
        let r = unsafe { std::arch::x86_64::__cpuid(0x8000_0002 + i as u32) };
        *regs = [r.eax, r.ebx, r.ecx, r.edx];
    }
    out
}

/// In-kernel IRQ chip and PIT, devices, guest image and configured vCPUs:
/// everything but the memslots.
fn build_machine(
    kvm: &Kvm,
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    control: &Arc<StopControl>,
    spawner: &Arc<dyn WorkerSpawner>,
) -> Result<(Platform, Vec<VcpuFd>), VmError> {
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("setting the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("creating the IRQ chip"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(kvm_err("creating the PIT"))?;
    let platform = create_platform(vm, mem, config, control, spawner)?;
    let entry = load_guest(mem, config)?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("reading supported CPUID"))?;
    let cpu = &config.cpu;
    let mut built = boot::cpu_model::build_cpuid(supported.as_slice(), &cpu.definition, cpu.check)?;
    if cpu.definition.identity.is_none() {
        boot::cpu_model::fill_host_brand(&mut built.entries, host_brand());
    }
    if !built.dropped.is_empty() {
        eprintln!(
            "ivmm: warning: --cpu {}: running without {} (this host's KVM cannot provide them)",
            cpu.definition.name,
            built.dropped.join(" ")
        );
    }
    let model_cpuid = CpuId::from_entries(&built.entries).map_err(|_| {
        VmError::Device(format!(
            "{} CPUID entries are too many",
            built.entries.len()
        ))
    })?;
    let mut vcpu_fds = Vec::new();
    for index in 0..config.vcpus {
        let fd = vm
            .create_vcpu(u64::from(config.topology.apic_id(index)))
            .map_err(kvm_err("creating a vCPU"))?;
        let mut cpuid = model_cpuid.clone();
        boot::cpuid::patch_for_vcpu(cpuid.as_mut_slice(), index, &config.topology);
        vcpu::configure(&fd, index, &cpuid, (index == 0).then_some(&entry))?;
        vcpu::set_msrs(&fd, index, &cpu.definition.msrs)?;
        vcpu_fds.push(fd);
    }
    Ok((platform, vcpu_fds))
}

/// Builds the VM described by `config`, runs it to the end, and says why
/// it ended. `console_escape` enables the Ctrl-A escape on stdin.
pub fn run(kvm: &Kvm, config: &VmConfig, console_escape: bool) -> Result<ExitReason, VmError> {
    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("creating the VM"))?);
    let mem = allocate_memory(config.mem_bytes)?;
    let control = Arc::new(StopControl::new()?);
    let spawner: Arc<dyn WorkerSpawner> = if config.disks.is_empty() && config.nets.is_empty() {
        Arc::new(NoWorkers)
    } else {
        Arc::new(FilteredSpawner::start(config.seccomp).map_err(VmError::Spawner)?)
    };
    let (mut platform, vcpu_fds) = std::thread::scope(|scope| {
        let registration = std::thread::Builder::new()
            .name("memslots".into())
            .spawn_scoped(scope, || register_memory(&vm, &mem))?;
        let built = build_machine(kvm, &vm, &mem, config, &control, &spawner);
        let registered = registration
            .join()
            .unwrap_or_else(|_| Err(VmError::EventLoop("memory registration panicked".into())));
        registered.and(built)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    // Before any vCPU exists, so the guest never runs beside an unfiltered
    // VMM thread (a no-op when an earlier boot installed it).
    seccomp::install(ThreadKind::Vmm, config.seccomp)?;

    let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(|e| VmError::EventLoop(format!("{e:?}")))?;
    events.add_subscriber(Arc::new(Mutex::new(Lifecycle::new(
        control.clone(),
        platform.acpi_pm.clone(),
        GED_EVENT_POWER_BUTTON,
        Duration::from_secs(config.shutdown_timeout_secs),
    )?)));
    if !platform.intx_lines.is_empty() {
        let lines = std::mem::take(&mut platform.intx_lines);
        events.add_subscriber(Arc::new(Mutex::new(IntxResamplers::new(lines))));
    }
    if config.serial == SerialMode::Stdio {
        events.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
            platform.serial.clone(),
            platform.serial_drained.try_clone()?,
            console_escape,
            control.clone(),
        ))));
    }

    let hint = is_pvm_host().then_some(PVM_HINT);
    let mut threads = Vec::new();
    for (index, fd) in vcpu_fds.into_iter().enumerate() {
        let ctx = vcpu::VcpuContext {
            pio: platform.pio.clone(),
            mmio: platform.mmio.clone(),
            control: control.clone(),
            stop: stop.clone(),
            fatal_hint: hint,
            seccomp: config.seccomp,
        };
        match vcpu::spawn(index as u32, fd, ctx) {
            Ok(t) => threads.push(t),
            Err(e) => {
                vcpu::stop_all(&stop, threads);
                return Err(e.into());
            }
        }
    }

    let mut loop_error = None;
    while control.reason().is_none() {
        if let Err(e) = events.run() {
            loop_error = Some(VmError::EventLoop(format!("{e:?}")));
            break;
        }
    }
    vcpu::stop_all(&stop, threads);
    drop(vm);
    drop(mem);
    match (control.reason(), loop_error) {
        (Some(reason), _) => Ok(reason),
        (None, Some(e)) => Err(e),
        (None, None) => Err(VmError::EventLoop("stopped without a reason".into())),
    }
}
