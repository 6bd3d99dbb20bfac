//! The boot information block the kernel reads first: `boot_params` (the
//! "zero page", for a bzImage) or `hvm_start_info` (for PVH), plus the
//! command line they point at.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::kernel::LoadedInitrd;
use crate::layout::*;
use crate::memory_map::MapEntry;

/// `type_of_loader` 0xff: "undefined" boot loader (boot protocol §"Details
/// of header fields").
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `loadflags` bit: the heap_end_ptr field is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// Magic the PVH entry checks in `hvm_start_info.magic` ("xEn3" with the
/// high bit set).
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// `boot_params.e820_table` holds at most this many entries.
const E820_MAX_ENTRIES: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("too many memory map entries ({0})")]
    TooManyMapEntries(usize),
    #[error("cannot write boot information to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Writes the NUL-terminated command line at CMDLINE_START. `max_len`
/// excludes the NUL (the kernel's `cmdline_size`).
pub fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    max_len: usize,
) -> Result<(), ParamsError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(ParamsError::CmdlineNul);
    }
    let max = max_len.min(CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(ParamsError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))?;
    Ok(())
}

/// Longest command line a bzImage with this header accepts.
pub fn cmdline_limit(header: &setup_header) -> usize {
    // Protocol >= 2.06 states the limit; older kernels take 255 bytes.
    if header.version >= 0x0206 {
        header.cmdline_size as usize
    } else {
        255
    }
}

/// Fills and writes `boot_params` for a bzImage.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    header: &setup_header,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
    map: &[MapEntry],
    rsdp_addr: u64,
) -> Result<(), ParamsError> {
    let mut params = boot_params {
        hdr: *header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.loadflags |= CAN_USE_HEAP;
    // heap_end_ptr is relative to the real-mode segment; unused by the 64-bit
    // entry but expected to be sane.
    params.hdr.heap_end_ptr = 0xfe00;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    if map.len() > E820_MAX_ENTRIES {
        return Err(ParamsError::TooManyMapEntries(map.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: entry.range.start,
            size: entry.range.size,
            r#type: entry.kind as u32,
        };
    }
    params.e820_entries = map.len() as u8;
    params.acpi_rsdp_addr = rsdp_addr;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

/// Writes `hvm_start_info`, its module list (the initrd) and memory map
/// for a PVH entry.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<LoadedInitrd>,
    map: &[MapEntry],
    rsdp_addr: u64,
) -> Result<(), ParamsError> {
    let max_entries = ((ZERO_PAGE_START - PVH_MEMMAP_START) as usize)
        / std::mem::size_of::<hvm_memmap_table_entry>();
    if map.len() > max_entries {
        return Err(ParamsError::TooManyMapEntries(map.len()));
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr.0,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, entry) in map.iter().enumerate() {
        let e = hvm_memmap_table_entry {
            addr: entry.range.start,
            size: entry.range.size,
            type_: entry.kind as u32,
            reserved: 0,
        };
        mem.write_obj(e, GuestAddress(PVH_MEMMAP_START + i as u64 * entry_size))?;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_map::guest_memory_map;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn cmdline_is_nul_terminated_and_bounded() {
        let m = mem();
        write_cmdline(&m, "console=ttyS0", 100).unwrap();
        let mut buf = [0u8; 14];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        assert!(matches!(
            write_cmdline(&m, "abcdef", 5),
            Err(ParamsError::CmdlineTooLong { len: 6, max: 5 })
        ));
        assert!(matches!(
            write_cmdline(&m, "a\0b", 100),
            Err(ParamsError::CmdlineNul)
        ));
    }

    #[test]
    fn boot_params_carry_initrd_e820_and_rsdp() {
        let m = mem();
        let header = setup_header {
            version: 0x020f,
            ..Default::default()
        };
        let initrd = LoadedInitrd {
            addr: GuestAddress(0x80_0000),
            size: 0x1234,
        };
        let map = guest_memory_map(16 << 20);
        write_boot_params(&m, &header, 10, Some(initrd), &map, ACPI_START).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.ramdisk_image }, 0x80_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!(usize::from(p.e820_entries), map.len());
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_START);
        assert_eq!({ p.e820_table[2].addr }, HIGH_RAM_START);
    }

    #[test]
    fn pvh_start_info_has_magic_module_and_map() {
        let m = mem();
        let initrd = LoadedInitrd {
            addr: GuestAddress(0x80_0000),
            size: 0x1000,
        };
        let map = guest_memory_map(16 << 20);
        write_pvh_start_info(&m, Some(initrd), &map, ACPI_START).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.memmap_entries as usize, map.len());
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!(module.paddr, 0x80_0000);
    }
}
