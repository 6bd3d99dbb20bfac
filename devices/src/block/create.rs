//! Creating raw and qcow2 images.
//!
//! imago can only create qcow2 v3 without lazy refcounts, so we write the
//! initial qcow2 layout ourselves (header, refcount table, one refcount block,
//! as QEMU lays them out) and let imago grow it to the requested size, which
//! also implements the preallocation modes.

use std::fs::File;
use std::path::Path;

use imago::file::File as ImagoFile;
use imago::format::PreallocateMode;
use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, StorageOpenOptions};

use super::header::{QcowHeader, COMPAT_LAZY_REFCOUNTS, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};
use super::lock::{ImageLock, LockMode};
use super::raw::pwrite_all;
use super::{BlockError, ImageFormat};

/// Preallocation modes of `qemu-img create -o preallocation=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prealloc {
    #[default]
    Off,
    Metadata,
    Falloc,
    Full,
}

impl std::str::FromStr for Prealloc {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "off" => Prealloc::Off,
            "metadata" => Prealloc::Metadata,
            "falloc" => Prealloc::Falloc,
            "full" => Prealloc::Full,
            o => {
                return Err(format!(
                    "invalid preallocation mode '{o}' (off, metadata, falloc, full)"
                ))
            }
        })
    }
}

/// Options for a new qcow2 image.
#[derive(Debug, Clone)]
pub struct Qcow2Options {
    pub size: u64,
    pub cluster_size: u64,
    /// 2 for compat=0.10, 3 for compat=1.1.
    pub version: u32,
    pub lazy_refcounts: bool,
    pub refcount_bits: u32,
    pub prealloc: Prealloc,
    /// Backing file name as stored in the header, and its format.
    pub backing: Option<(String, ImageFormat)>,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options {
            size: 0,
            cluster_size: 65536,
            version: 3,
            lazy_refcounts: false,
            refcount_bits: 16,
            prealloc: Prealloc::Off,
            backing: None,
        }
    }
}

/// Errors creating an image.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("invalid option: {0}")]
    Invalid(String),
    #[error("cannot create '{path}'")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Block(#[from] BlockError),
}

impl Qcow2Options {
    /// Checks the option combination like qemu-img does.
    pub fn validate(&self) -> std::result::Result<(), CreateError> {
        let inv = |m: &str| Err(CreateError::Invalid(m.to_string()));
        let cs = self.cluster_size;
        if !cs.is_power_of_two()
            || !(1u64 << MIN_CLUSTER_BITS..=1u64 << MAX_CLUSTER_BITS).contains(&cs)
        {
            return inv("cluster size must be a power of two between 512 and 2M");
        }
        if !self.refcount_bits.is_power_of_two() || self.refcount_bits > 64 {
            return inv("refcount_bits must be a power of two between 1 and 64");
        }
        if self.version == 2 && self.refcount_bits != 16 {
            return inv("refcount widths other than 16 bits require compat=1.1 or above");
        }
        if self.version == 2 && self.lazy_refcounts {
            return inv("lazy refcounts only supported with compat=1.1 and above");
        }
        if self.backing.is_some() && self.prealloc != Prealloc::Off {
            return inv("backing file and preallocation can only be used at the same time with preallocation=off");
        }
        Ok(())
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CreateError + '_ {
    move |source| CreateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens (creating) `path` for a new image: takes the write locks first, so an
/// image in use by QEMU or another ivmm is never truncated, then empties it.
pub(crate) fn open_new(path: &Path) -> std::result::Result<(File, ImageLock), CreateError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))?;
    let lock = ImageLock::acquire(&f, path, LockMode::ReadWrite)?;
    f.set_len(0).map_err(io_err(path))?;
    Ok((f, lock))
}

/// Creates (or truncates) a raw image of `size` bytes.
pub fn create_raw(
    path: &Path,
    size: u64,
    prealloc: Prealloc,
) -> std::result::Result<(), CreateError> {
    if prealloc == Prealloc::Metadata {
        return Err(CreateError::Invalid(
            "preallocation=metadata is not supported for raw".into(),
        ));
    }
    let (f, _lock) = open_new(path)?;
    f.set_len(size).map_err(io_err(path))?;
    match prealloc {
        Prealloc::Off | Prealloc::Metadata => {}
        Prealloc::Falloc => fallocate(&f, size).map_err(io_err(path))?,
        Prealloc::Full => write_zeroes(&f, 0, size).map_err(io_err(path))?,
    }
    f.sync_all().map_err(io_err(path))
}

fn fallocate(f: &File, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = i64::try_from(size).map_err(std::io::Error::other)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn write_zeroes(f: &File, mut off: u64, len: u64) -> std::io::Result<()> {
    let z = vec![0u8; 1 << 20];
    let end = off + len;
    while off < end {
        let n = ((end - off) as usize).min(z.len());
        pwrite_all(f, z.as_ptr(), n, off)?;
        off += n as u64;
    }
    Ok(())
}

/// Stores refcount `val` at index `idx` of a refcount block of `bits`-wide
/// big-endian entries.
pub fn set_refcount(block: &mut [u8], idx: usize, bits: u32, val: u64) {
    match bits {
        64 => block[idx * 8..idx * 8 + 8].copy_from_slice(&val.to_be_bytes()),
        32 => block[idx * 4..idx * 4 + 4].copy_from_slice(&(val as u32).to_be_bytes()),
        16 => block[idx * 2..idx * 2 + 2].copy_from_slice(&(val as u16).to_be_bytes()),
        8 => block[idx] = val as u8,
        _ => {
            // 1, 2, 4 bits: entries packed from the least significant bit of each byte.
            let per_byte = 8 / bits as usize;
            let byte = idx / per_byte;
            let shift = (idx % per_byte) as u32 * bits;
            let mask = ((1u16 << bits) - 1) as u8;
            block[byte] = (block[byte] & !(mask << shift)) | (((val as u8) & mask) << shift);
        }
    }
}

/// Reads refcount index `idx` of a refcount block (see [`set_refcount`]).
pub fn get_refcount(block: &[u8], idx: usize, bits: u32) -> u64 {
    let rd = |n: usize| {
        let mut v = 0u64;
        for b in &block[idx * n..idx * n + n] {
            v = (v << 8) | u64::from(*b);
        }
        v
    };
    match bits {
        64 => rd(8),
        32 => rd(4),
        16 => rd(2),
        8 => rd(1),
        _ => {
            let per_byte = 8 / bits as usize;
            let byte = block[idx / per_byte];
            let shift = (idx % per_byte) as u32 * bits;
            u64::from((byte >> shift) & (((1u16 << bits) - 1) as u8))
        }
    }
}

/// Writes an empty qcow2 image of virtual size 0 (header, refcount table,
/// one refcount block).
pub fn write_empty_qcow2(path: &Path, opts: &Qcow2Options) -> std::result::Result<(), CreateError> {
    opts.validate()?;
    let cs = opts.cluster_size;
    let header = QcowHeader {
        version: opts.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: cs.trailing_zeros(),
        size: 0,
        crypt_method: 0,
        l1_size: 0,
        l1_table_offset: 0,
        refcount_table_offset: cs,
        refcount_table_clusters: 1,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: 0,
        compatible_features: if opts.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear_features: 0,
        refcount_order: opts.refcount_bits.trailing_zeros(),
        header_length: 112,
        compression_type: 0,
        backing_file: opts.backing.as_ref().map(|b| b.0.clone()),
        backing_format: opts.backing.as_ref().map(|b| b.1.name().to_string()),
        data_file: None,
        extensions_end: 0,
    };
    let mut bytes = header.to_bytes();
    if bytes.len() as u64 > cs {
        return Err(CreateError::Invalid(
            "backing file name too long for the cluster size".into(),
        ));
    }
    bytes.resize(cs as usize * 3, 0);
    // Refcount table entry 0 -> refcount block at cluster 2.
    let rt = cs as usize;
    bytes[rt..rt + 8].copy_from_slice(&(2 * cs).to_be_bytes());
    let rb = 2 * cs as usize;
    for i in 0..3 {
        set_refcount(&mut bytes[rb..rb + cs as usize], i, opts.refcount_bits, 1);
    }
    let (f, _lock) = open_new(path)?;
    pwrite_all(&f, bytes.as_ptr(), bytes.len(), 0).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Creates a qcow2 image with the given options.
pub fn create_qcow2(path: &Path, opts: &Qcow2Options) -> std::result::Result<(), CreateError> {
    write_empty_qcow2(path, opts)?;
    if opts.size == 0 {
        return Ok(());
    }
    let ioe = io_err(path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(&ioe)?;
    let storage =
        ImagoFile::from_open_file(file, StorageOpenOptions::new().write(true).filename(path))
            .map_err(&ioe)?;
    let q = Qcow2::<ImagoFile>::builder(storage)
        .write(true)
        .backing(None)
        .open(DenyImplicitOpenGate::default())
        .map_err(&ioe)?;
    let access = FormatAccess::new(q);
    let mode = match opts.prealloc {
        Prealloc::Off => PreallocateMode::None,
        Prealloc::Metadata => PreallocateMode::FormatAllocate,
        Prealloc::Falloc => PreallocateMode::FullAllocate,
        Prealloc::Full => PreallocateMode::WriteData,
    };
    access.resize_grow(opts.size, mode).map_err(&ioe)?;
    access.flush().map_err(&ioe)?;
    access.sync().map_err(&ioe)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_entries_roundtrip_every_width() {
        for bits in [1u32, 2, 4, 8, 16, 32, 64] {
            let mut block = vec![0u8; 512];
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            for i in 0..64 {
                set_refcount(&mut block, i, bits, (i as u64) & max);
            }
            for i in 0..64 {
                assert_eq!(
                    get_refcount(&block, i, bits),
                    (i as u64) & max,
                    "bits {bits} idx {i}"
                );
            }
        }
    }

    #[test]
    fn invalid_combinations_are_refused() {
        let o = Qcow2Options {
            version: 2,
            refcount_bits: 1,
            ..Default::default()
        };
        assert!(o.validate().is_err());
        let o = Qcow2Options {
            cluster_size: 1000,
            ..Default::default()
        };
        assert!(o.validate().is_err());
    }
}
