//! Loading a kernel image and an initrd into guest memory.
//!
//! Two formats: a bzImage (Linux boot protocol, entered in 64-bit mode at
//! `load address + 0x200`) and an ELF vmlinux, entered in 32-bit protected
//! mode through its PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`). The format is
//! recognised by its magic numbers; anything else is refused by name.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::layout::{HIGH_RAM_START, PAGE_SIZE};

/// Offset of the 64-bit entry point from a bzImage's load address
/// (Linux boot protocol, "64-bit BOOT PROTOCOL").
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// "HdrS" at offset 0x202 marks a Linux boot-protocol header.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: [u8; 4] = *b"HdrS";
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// Highest initrd end address when the kernel does not say (boot protocol
/// < 2.03).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot open kernel {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a kernel: neither a bzImage (no \"HdrS\" boot header) nor an ELF vmlinux"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path} is an ELF file without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); boot its bzImage instead or build with CONFIG_PVH=y")]
    NoPvhEntry { path: PathBuf },
    #[error("cannot load kernel {path}: {detail}")]
    Load { path: PathBuf, detail: String },
    #[error("cannot open initrd {path}: {source}")]
    InitrdOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest RAM below {limit:#x} above the kernel; give the guest more --mem")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot read initrd {path} into guest memory: {detail}")]
    InitrdLoad { path: PathBuf, detail: String },
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy)]
pub enum EntryPoint {
    /// bzImage: 64-bit entry with `rsi` pointing at `boot_params`.
    Linux64 {
        entry: GuestAddress,
        header: setup_header,
    },
    /// ELF with a PVH note: 32-bit entry with `ebx` pointing at
    /// `hvm_start_info`.
    Pvh { entry: GuestAddress },
}

#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: EntryPoint,
    /// First byte after the loaded image.
    pub end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: GuestAddress,
    pub size: u64,
}

fn read_magic(file: &mut File, offset: u64) -> Option<[u8; 4]> {
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(offset)).ok()?;
    file.read_exact(&mut magic).ok()?;
    Some(magic)
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, KernelError> {
    let mut file = File::open(path).map_err(|source| KernelError::Open {
        path: path.to_owned(),
        source,
    })?;
    let load_err = |e: linux_loader::loader::Error| KernelError::Load {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    if read_magic(&mut file, 0) == Some(ELF_MAGIC) {
        let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIGH_RAM_START)))
            .map_err(load_err)?;
        return match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
                entry: EntryPoint::Pvh { entry },
                end: result.kernel_end,
            }),
            _ => Err(KernelError::NoPvhEntry {
                path: path.to_owned(),
            }),
        };
    }
    if read_magic(&mut file, BZIMAGE_MAGIC_OFFSET) == Some(BZIMAGE_MAGIC) {
        let result = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIGH_RAM_START)))
            .map_err(load_err)?;
        let header = result.setup_header.ok_or_else(|| KernelError::Load {
            path: path.to_owned(),
            detail: "bzImage loader returned no setup header".into(),
        })?;
        let entry = result
            .kernel_load
            .0
            .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
            .map(GuestAddress)
            .ok_or_else(|| KernelError::Load {
                path: path.to_owned(),
                detail: "entry point overflows".into(),
            })?;
        return Ok(LoadedKernel {
            entry: EntryPoint::Linux64 { entry, header },
            end: result.kernel_end,
        });
    }
    Err(KernelError::UnknownFormat {
        path: path.to_owned(),
    })
}

/// Where an initrd of `size` bytes goes: page-aligned, as high as possible
/// below `limit` (exclusive) but above `kernel_end`, as the boot protocol
/// recommends (it keeps the initrd out of the kernel's decompression area).
pub fn initrd_placement(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !(PAGE_SIZE - 1);
    // An ELF segment's memsz is not checked against RAM: the end may be
    // within a page of u64::MAX.
    (start >= kernel_end.checked_next_multiple_of(PAGE_SIZE)?).then_some(start)
}

/// Highest address (exclusive) the kernel accepts for the initrd's end.
pub fn initrd_limit(entry: &EntryPoint, low_ram_end: u64) -> u64 {
    let kernel_max = match entry {
        EntryPoint::Linux64 { header, .. } if header.version >= 0x0203 => {
            u64::from(header.initrd_addr_max)
        }
        EntryPoint::Linux64 { .. } => DEFAULT_INITRD_ADDR_MAX,
        // PVH: any address the kernel's early mapping covers; stay below 4G.
        EntryPoint::Pvh { .. } => u64::from(u32::MAX),
    };
    low_ram_end.min(kernel_max.saturating_add(1))
}

/// Loads the initrd at `path` into `mem` at the highest fitting address.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<LoadedInitrd, KernelError> {
    let mut file = File::open(path).map_err(|source| KernelError::InitrdOpen {
        path: path.to_owned(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| KernelError::InitrdOpen {
            path: path.to_owned(),
            source,
        })?
        .len();
    let addr = initrd_placement(size, kernel_end, limit).ok_or(KernelError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        limit,
    })?;
    let len = usize::try_from(size).map_err(|_| KernelError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        limit,
    })?;
    read_into(mem, GuestAddress(addr), &mut file, len).map_err(|detail| {
        KernelError::InitrdLoad {
            path: path.to_owned(),
            detail,
        }
    })?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

fn read_into<F: ReadVolatile>(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    file: &mut F,
    len: usize,
) -> Result<(), String> {
    mem.read_exact_volatile_from(addr, file, len)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_to_the_top_page_aligned() {
        assert_eq!(
            initrd_placement(0x1800, 0x20_0000, 0x100_0000),
            Some(0xff_e000)
        );
        assert_eq!(
            initrd_placement(0x1000, 0x20_0000, 0x100_0000),
            Some(0xff_f000)
        );
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_refused() {
        assert_eq!(initrd_placement(0x100_0000, 0x20_0000, 0x100_0000), None);
        assert_eq!(initrd_placement(u64::MAX, 0, 0x100_0000), None);
    }

    #[test]
    fn kernel_ending_in_the_last_page_of_the_address_space_gets_no_initrd() {
        // An ELF whose PT_LOAD memsz reaches u64::MAX overflowed the
        // page rounding (found writing fuzz/kernel_image, which hits it).
        assert_eq!(initrd_placement(0x1000, u64::MAX, 0x100_0000), None);
        assert_eq!(initrd_placement(0x1000, u64::MAX - 0xffe, 0x100_0000), None);
    }

    #[test]
    fn non_kernel_file_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("ivmm-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-a-kernel");
        std::fs::write(&path, vec![0x55u8; 8192]).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let err = load_kernel(&mem, &path).unwrap_err();
        assert!(matches!(err, KernelError::UnknownFormat { .. }), "{err}");
        assert!(err.to_string().contains("not-a-kernel"));
        let err = load_kernel(&mem, &dir.join("missing")).unwrap_err();
        assert!(matches!(err, KernelError::Open { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
