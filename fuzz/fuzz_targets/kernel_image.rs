//! Kernel images from arbitrary bytes through ivmm's loader (bzImage setup
//! header, ELF with a PVH note) into a 64 MiB guest, followed by everything
//! the VMM derives from the result before the first instruction: the initrd
//! limit and placement (a real 64 KiB initrd is loaded), the command line
//! limit, boot_params or hvm_start_info, the boot page tables and registers.
//! Errors are fine; panics are not.
//!
//! Run: `fuzz/run.sh kernel_image 600`
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use boot::kernel::{self, EntryPoint};
use boot::layout::{ACPI_START, CMDLINE_MAX_SIZE};
use boot::{memory_map, params, regs};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 64 << 20;
/// Larger inputs are not more interesting, only slower.
const MAX_IMAGE: usize = 4 << 20;
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Built once: nothing the loader does depends on what memory held before.
fn memory() -> Option<&'static GuestMemoryMmap> {
    static MEM: OnceLock<Option<GuestMemoryMmap>> = OnceLock::new();
    MEM.get_or_init(|| {
        let ranges: Vec<_> = memory_map::ram_regions(MEM_SIZE)
            .iter()
            .map(|r| (GuestAddress(r.start), r.size as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).ok()
    })
    .as_ref()
}

fn initrd() -> Option<&'static tempfile::TempPath> {
    static INITRD: OnceLock<Option<tempfile::TempPath>> = OnceLock::new();
    INITRD
        .get_or_init(|| {
            let mut f = tempfile::NamedTempFile::new().ok()?;
            f.write_all(&[0x5a; 64 << 10]).ok()?;
            Some(f.into_temp_path())
        })
        .as_ref()
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_IMAGE {
        return;
    }
    let (Some(mem), Some(initrd_path)) = (memory(), initrd()) else {
        return;
    };
    let Ok(mut f) = tempfile::NamedTempFile::new() else {
        return;
    };
    if f.write_all(data).is_err() {
        return;
    }
    let Ok(loaded) = kernel::load_kernel(mem, f.path()) else {
        return;
    };
    let low_end = memory_map::low_ram_end(MEM_SIZE);
    let limit = kernel::initrd_limit(&loaded.entry, low_end);
    for size in [0, 1, 64 << 10, MEM_SIZE, u64::MAX] {
        let _ = kernel::initrd_placement(size, loaded.end, limit);
    }
    let initrd = kernel::load_initrd(mem, initrd_path, loaded.end, limit).ok();
    let cmdline_max = match &loaded.entry {
        EntryPoint::Linux64 { header, .. } => params::cmdline_limit(header),
        EntryPoint::Pvh { .. } => CMDLINE_MAX_SIZE - 1,
    };
    let _ = params::write_cmdline(mem, CMDLINE, cmdline_max);
    let map = memory_map::guest_memory_map(MEM_SIZE);
    let _ = match &loaded.entry {
        EntryPoint::Linux64 { header, .. } => {
            params::write_boot_params(mem, header, CMDLINE.len(), initrd, &map, ACPI_START)
        }
        EntryPoint::Pvh { .. } => params::write_pvh_start_info(mem, initrd, &map, ACPI_START),
    };
    let _ = regs::write_boot_tables(mem, &loaded.entry);
    let _ = regs::boot_regs(&loaded.entry);
    let _ = regs::boot_sregs(&kvm_bindings::kvm_sregs::default(), &loaded.entry);
});
