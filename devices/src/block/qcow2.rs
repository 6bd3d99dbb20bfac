//! qcow2 backend on top of imago, with the backing chain opened by us (paths
//! resolved relative to the overlay like QEMU, loops refused, formats checked)
//! and QEMU-compatible locks on every file of the chain.

use std::collections::HashSet;
use std::fs::File as StdFile;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use imago::file::File as ImagoFile;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, ShallowMapping, StorageOpenOptions,
};
use vm_memory::VolatileSlice;

use super::header::{refusal_reason, validate_tables, QcowHeader};
use super::lock::{ImageLock, LockMode};
use super::raw::pread_all;
use super::{
    check_range, probe_format, sg_len, BlockError, DiskBackend, ImageFormat, OpenOptions, Result,
};

/// Deepest backing chain we open (QEMU has no fixed limit; this bounds
/// recursion on crafted chains).
pub const MAX_CHAIN_DEPTH: usize = 64;

type Access = FormatAccess<ImagoFile>;

/// One layer of a resolved backing chain.
#[derive(Debug, Clone)]
pub struct ChainLayer {
    pub path: PathBuf,
    pub format: ImageFormat,
}

/// Allocation status of a range in the top image only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopStatus {
    /// Data stored in this image (plain or compressed).
    Data,
    /// Explicitly zero in this image.
    Zero,
    /// Not allocated here: the backing file (or zeroes) shows through.
    Unallocated,
}

/// A qcow2 image (with its backing chain) opened through imago.
#[derive(Debug)]
pub struct Qcow2Disk {
    access: RwLock<Access>,
    path: PathBuf,
    size: AtomicU64,
    read_only: bool,
    header: QcowHeader,
    /// Which L1 entries are known to point at an L2 table (writable images).
    l1_shadow: std::sync::Mutex<L1Shadow>,
    /// Page-cached fd of the top image for our own metadata reads.
    meta_file: StdFile,
    _locks: Vec<ImageLock>,
}

/// Shadow of the on-disk L1 table: see [`Qcow2Disk::order_new_l2_tables`].
#[derive(Debug, Default)]
struct L1Shadow {
    offset: u64,
    known: Vec<bool>,
}

impl L1Shadow {
    fn load(file: &StdFile, h: &QcowHeader) -> L1Shadow {
        let n = h.l1_size as usize;
        let mut buf = vec![0u8; n * 8];
        let known = if pread_all(file, buf.as_mut_ptr(), buf.len(), h.l1_table_offset).is_ok() {
            buf.chunks_exact(8)
                .map(|c| c.iter().any(|&b| b != 0))
                .collect()
        } else {
            vec![false; n]
        };
        L1Shadow {
            offset: h.l1_table_offset,
            known,
        }
    }
}

/// Resolves a backing file name as QEMU does: relative names are relative to
/// the directory of the overlay (not the current directory).
pub fn resolve_backing(overlay: &Path, backing: &str) -> PathBuf {
    let b = Path::new(backing);
    if b.is_absolute() {
        return b.to_path_buf();
    }
    match overlay.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(b),
        _ => b.to_path_buf(),
    }
}

fn open_err(path: &Path, source: std::io::Error) -> BlockError {
    BlockError::Open {
        path: path.to_path_buf(),
        source,
    }
}

/// Maps an imago open error to a clear block error.
fn imago_open_err(path: &Path, e: std::io::Error) -> BlockError {
    match e.kind() {
        ErrorKind::InvalidData
        | ErrorKind::Unsupported
        | ErrorKind::InvalidInput
        | ErrorKind::Other => BlockError::Unsupported {
            path: path.to_path_buf(),
            msg: format!("cannot open image: {e}"),
        },
        _ => open_err(path, e),
    }
}

fn lock_mode(writable: bool, force_share: bool) -> LockMode {
    match (writable, force_share) {
        (true, _) => LockMode::ReadWrite,
        (false, false) => LockMode::ReadOnly,
        (false, true) => LockMode::ForceShare,
    }
}

/// A writable qcow2 file grows this far ahead of its last cluster (the vendored imago's grow-ahead,
/// after QEMU's `preallocate` filter): new clusters are then written inside the file rather
/// than extending it one by one, and their COW from zeroes is free. What is left unused is
/// cut off when the image is closed (a killed ivmm leaves it as trailing zeroes, which qcow2
/// readers and `qemu-img check` accept).
const GROW_AHEAD: u64 = 32 << 20;

/// Opens a file (not a directory), locks it and wraps it as imago storage.
fn open_storage(
    path: &Path,
    writable: bool,
    force_share: bool,
    direct: bool,
) -> Result<(ImagoFile, StdFile, ImageLock)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(if direct { libc::O_DIRECT } else { 0 })
        .open(path)
        .map_err(|e| open_err(path, e))?;
    let meta = file.metadata().map_err(|e| open_err(path, e))?;
    if meta.is_dir() {
        return Err(BlockError::Unsupported {
            path: path.to_path_buf(),
            msg: "is a directory".into(),
        });
    }
    let lock = ImageLock::acquire(&file, path, lock_mode(writable, force_share))?;
    // Our own metadata reads use unaligned buffers: give them a page-cached fd.
    let dup = if direct {
        std::fs::File::open(path).map_err(|e| open_err(path, e))?
    } else {
        file.try_clone().map_err(|e| open_err(path, e))?
    };
    let opts = StorageOpenOptions::new()
        .write(writable)
        .direct(direct)
        .filename(path);
    let storage = ImagoFile::from_open_file(file, opts).map_err(|e| open_err(path, e))?;
    Ok((storage, dup, lock))
}

/// Reads and vets the qcow2 header: refuses what imago cannot handle with a
/// message saying what the image has and what to do.
pub fn vet_header(file: &StdFile, path: &Path) -> Result<QcowHeader> {
    let h = QcowHeader::read(file, path).map_err(|e| BlockError::Unsupported {
        path: path.to_path_buf(),
        msg: e.detail(),
    })?;
    validate_tables(&h).map_err(|msg| BlockError::NeedsRepair {
        path: path.to_path_buf(),
        msg,
    })?;
    validate_pointers(file, path, &h)?;
    if let Some((msg, repairable)) = refusal_reason(&h) {
        return Err(if repairable {
            BlockError::NeedsRepair {
                path: path.to_path_buf(),
                msg,
            }
        } else {
            BlockError::Unsupported {
                path: path.to_path_buf(),
                msg,
            }
        });
    }
    Ok(h)
}

/// Cheap pointer sanity on open (L1 and refcount-table entries only: a few
/// KiB to read): every L2 table and refcount block must be cluster aligned,
/// free of reserved bits and inside the file, so imago never follows a
/// pointer out of the image. Deeper damage is `ivmm img check`'s job.
fn validate_pointers(file: &StdFile, path: &Path, h: &QcowHeader) -> Result<()> {
    let cs = h.cluster_size();
    let file_len = super::raw::file_size(file).map_err(|e| open_err(path, e))?;
    let bad = |msg: String| BlockError::NeedsRepair {
        path: path.to_path_buf(),
        msg,
    };
    let tables = [
        (
            h.l1_table_offset,
            u64::from(h.l1_size) * 8,
            0x7f00_0000_0000_01ffu64,
            "L1 table",
        ),
        (
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters) * cs,
            0x1ff,
            "refcount table",
        ),
    ];
    // Metadata clusters L2 tables must not overlap: header, L1, refcount table/blocks.
    let mut meta: Vec<(u64, u64)> = vec![(0, cs)];
    let mut l2s = Vec::new();
    for (n, (off, len, reserved, what)) in tables.into_iter().enumerate() {
        if len == 0 {
            continue;
        }
        let in_file =
            matches!(off.checked_add(len), Some(end) if end <= file_len.next_multiple_of(cs));
        if !in_file {
            return Err(bad(format!(
                "{what} at 0x{off:x} extends beyond the end of the file"
            )));
        }
        meta.push((off, len));
        let mut buf = vec![0u8; len as usize];
        pread_all(file, buf.as_mut_ptr(), buf.len(), off).map_err(|e| open_err(path, e))?;
        for (i, chunk) in buf.chunks_exact(8).enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(chunk);
            let e = u64::from_be_bytes(a);
            let target = e & 0x00ff_ffff_ffff_fe00;
            if e & reserved != 0 || target & (cs - 1) != 0 {
                return Err(bad(format!("{what} entry {i} (0x{e:x}) is invalid")));
            }
            if target != 0 && target >= file_len {
                return Err(bad(format!(
                    "{what} entry {i} points beyond the end of the file (0x{target:x})"
                )));
            }
            if target != 0 {
                if n == 0 {
                    l2s.push((i, target));
                } else {
                    meta.push((target, cs));
                }
            }
        }
    }
    for (i, l2) in l2s {
        if let Some((m, _)) = meta.iter().find(|(m, len)| l2 >= *m && l2 < m + len) {
            return Err(bad(format!(
                "L2 table {i} at 0x{l2:x} overlaps other metadata at 0x{m:x}"
            )));
        }
    }
    Ok(())
}

/// Lists the backing chain of `path` (top first) without opening it through
/// imago: resolves names, formats, and refuses loops and missing files.
pub fn backing_chain(path: &Path, format: ImageFormat) -> Result<Vec<ChainLayer>> {
    let mut chain = vec![ChainLayer {
        path: path.to_path_buf(),
        format,
    }];
    let mut seen = HashSet::new();
    seen.insert(std::fs::canonicalize(path).map_err(|e| open_err(path, e))?);
    let mut cur = path.to_path_buf();
    let mut fmt = format;
    while fmt == ImageFormat::Qcow2 {
        let h = QcowHeader::read_path(&cur).map_err(|e| BlockError::Unsupported {
            path: cur.clone(),
            msg: e.detail(),
        })?;
        let Some(name) = h.backing_file else { break };
        let next = resolve_backing(&cur, &name);
        let canon = std::fs::canonicalize(&next).map_err(|e| BlockError::Backing {
            path: cur.clone(),
            msg: format!("cannot open backing file '{}': {e}", next.display()),
        })?;
        if !seen.insert(canon) {
            return Err(BlockError::Backing {
                path: cur.clone(),
                msg: format!(
                    "backing file '{}' loops back into the chain",
                    next.display()
                ),
            });
        }
        if chain.len() >= MAX_CHAIN_DEPTH {
            return Err(BlockError::Backing {
                path: path.to_path_buf(),
                msg: format!("chain deeper than {MAX_CHAIN_DEPTH} images"),
            });
        }
        fmt = match h.backing_format.as_deref() {
            Some(f) => f
                .parse()
                .map_err(|e: super::UnknownFormat| BlockError::Backing {
                    path: cur.clone(),
                    msg: e.to_string(),
                })?,
            None => probe_format(&next)?,
        };
        chain.push(ChainLayer {
            path: next.clone(),
            format: fmt,
        });
        cur = next;
    }
    Ok(chain)
}

impl Qcow2Disk {
    /// Opens a qcow2 image and (if `opts.open_backing`) its backing chain
    /// read-only.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Qcow2Disk> {
        let chain = if opts.open_backing {
            backing_chain(path, ImageFormat::Qcow2)?
        } else {
            vec![ChainLayer {
                path: path.to_path_buf(),
                format: ImageFormat::Qcow2,
            }]
        };
        let mut locks = Vec::new();
        // Open bottom-up so each layer gets its backing.
        let mut backing: Option<Access> = None;
        let mut top_header = None;
        let mut top_file = None;
        for (i, layer) in chain.iter().enumerate().rev() {
            let top = i == 0;
            let writable = top && opts.writable;
            let (storage, std_file, lock) =
                open_storage(&layer.path, writable, opts.force_share, opts.direct)?;
            locks.push(lock);
            if top {
                top_file = Some(std_file.try_clone().map_err(|e| open_err(path, e))?);
            }
            let access = match layer.format {
                ImageFormat::Raw => {
                    let raw = Raw::builder(storage)
                        .write(writable)
                        .open(DenyImplicitOpenGate::default())
                        .map_err(|e| imago_open_err(&layer.path, e))?;
                    FormatAccess::new(raw)
                }
                ImageFormat::Qcow2 => {
                    let header = vet_header(&std_file, &layer.path)?;
                    if writable {
                        storage.set_grow_ahead(GROW_AHEAD);
                    }
                    let q = Qcow2::<ImagoFile>::builder(storage)
                        .write(writable)
                        .backing(backing.take())
                        .open(DenyImplicitOpenGate::default())
                        .map_err(|e| imago_open_err(&layer.path, e))?;
                    if top {
                        top_header = Some(header);
                    }
                    FormatAccess::new(q)
                }
            };
            backing = Some(access);
        }
        let (Some(access), Some(header), Some(meta_file)) = (backing, top_header, top_file) else {
            return Err(BlockError::Unsupported {
                path: path.to_path_buf(),
                msg: "not a qcow2 image".into(),
            });
        };
        Ok(Qcow2Disk {
            size: AtomicU64::new(access.size()),
            access: RwLock::new(access),
            path: path.to_path_buf(),
            read_only: !opts.writable,
            l1_shadow: std::sync::Mutex::new(L1Shadow::load(&meta_file, &header)),
            meta_file,
            header,
            _locks: locks,
        })
    }

    /// Crash-consistency workaround for imago 0.2.6: when imago allocates a new
    /// L2 table it writes the L1 entry at once but keeps the refcount increment
    /// of the new cluster in its refblock cache, so a process killed before the
    /// next flush leaves an L2 table with refcount 0 (a corruption). After each
    /// write we look (in the page-cached file, 8 bytes per not-yet-seen L1
    /// entry) whether an L1 entry appeared, and if so write back imago's caches
    /// right away. This shrinks the window from "until the next guest flush" to
    /// the time between imago's L1 write and our flush. The patched imago in
    /// `third_party/` closes it (it writes the refblocks before the L1 entry);
    /// this stays until an imago release has that fix, so that a build against
    /// the unpatched crate is not left with the whole window.
    fn order_new_l2_tables(&self, access: &Access, offset: u64, len: u64) -> Result<()> {
        if self.read_only || len == 0 {
            return Ok(());
        }
        let span_bits = 2 * self.header.cluster_bits - 3;
        let first = (offset >> span_bits) as usize;
        let last = ((offset + len - 1) >> span_bits) as usize;
        let mut shadow = self.l1_shadow.lock().unwrap_or_else(|p| p.into_inner());
        let mut appeared = false;
        for i in first..=last {
            if shadow.known.get(i).copied().unwrap_or(true) {
                continue;
            }
            let mut e = [0u8; 8];
            let at = shadow.offset + i as u64 * 8;
            pread_all(&self.meta_file, e.as_mut_ptr(), 8, at)
                .map_err(|e| self.io_err("read", e))?;
            if e != [0u8; 8] {
                shadow.known[i] = true;
                appeared = true;
            }
        }
        drop(shadow);
        if appeared {
            access.flush().map_err(|e| self.io_err("flush", e))?;
        }
        Ok(())
    }

    /// The header as read at open time.
    pub fn header(&self) -> &QcowHeader {
        &self.header
    }

    fn io_err(&self, op: &'static str, source: std::io::Error) -> BlockError {
        BlockError::Io {
            path: self.path.clone(),
            op,
            source,
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn access(&self) -> std::sync::RwLockReadGuard<'_, Access> {
        // A poisoned lock only means another thread panicked mid-request;
        // imago's own state stays consistent, so keep serving.
        self.access.read().unwrap_or_else(|p| p.into_inner())
    }

    fn access_mut(&self) -> std::sync::RwLockWriteGuard<'_, Access> {
        self.access.write().unwrap_or_else(|p| p.into_inner())
    }

    fn write_zero_buffers(&self, access: &Access, mut offset: u64, len: u64) -> Result<()> {
        let zeroes = vec![0u8; 1 << 20];
        let end = offset + len;
        while offset < end {
            let n = ((end - offset) as usize).min(zeroes.len());
            access
                .write(&zeroes[..n], offset)
                .map_err(|e| self.io_err("write zeroes", e))?;
            self.order_new_l2_tables(access, offset, n as u64)?;
            offset += n as u64;
        }
        Ok(())
    }

    /// Host ranges of the data clusters lying wholly inside the guest range
    /// `[offset, offset+len)`: discard_to_zero frees exactly these, and no
    /// other guest range maps them (no internal snapshot shares clusters).
    fn whole_data_clusters(&self, access: &Access, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let cs = self.header.cluster_size();
        if self.read_only || self.header.nb_snapshots != 0 || cs == 0 {
            return Vec::new();
        }
        let Some(end) = offset.checked_add(len) else {
            return Vec::new();
        };
        let mut pos = offset.div_ceil(cs).saturating_mul(cs);
        let end = end / cs * cs;
        let mut out = Vec::new();
        while pos < end {
            let Ok((m, mlen)) = access.get_shallow_mapping(pos, end - pos) else {
                break;
            };
            let mlen = mlen.max(1).min(end - pos);
            if let ShallowMapping::Raw { offset: host, .. } = m {
                // Only whole clusters: the mapping starts cluster-aligned
                // here, and its length is rounded down to clusters.
                let whole = mlen / cs * cs;
                if whole > 0 && host % cs == 0 {
                    out.push((host, whole));
                }
            }
            pos = pos.saturating_add(mlen.div_ceil(cs).max(1).saturating_mul(cs));
        }
        out
    }

    /// Gives the host space of clusters about to be freed back (best effort:
    /// failure only costs space).
    fn punch_freed(&self, ranges: &[(u64, u64)]) {
        let file = &self.meta_file;
        for &(host, len) in ranges {
            let (Ok(off), Ok(l)) = (i64::try_from(host), i64::try_from(len)) else {
                continue;
            };
            // SAFETY: fallocate on a descriptor we own; no memory is passed.
            let ret = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    l,
                )
            };
            if ret < 0 {
                log::debug!(
                    "{}: punching freed clusters: {}",
                    self.path.display(),
                    std::io::Error::last_os_error()
                );
                return;
            }
        }
    }

    /// Whether `[offset, offset+len)` is allocated in this image (not in the
    /// backing chain), and for how long that holds.
    pub fn allocated_in_top(&self, offset: u64, max_len: u64) -> Result<(bool, u64)> {
        let (s, len) = self.top_status(offset, max_len)?;
        Ok((s != TopStatus::Unallocated, len))
    }

    /// Allocation status of `offset` in this image alone.
    pub fn top_status(&self, offset: u64, max_len: u64) -> Result<(TopStatus, u64)> {
        let access = self.access();
        let (m, len) = access
            .get_shallow_mapping(offset, max_len)
            .map_err(|e| self.io_err("map", e))?;
        let s = match m {
            ShallowMapping::Indirect { .. } => TopStatus::Unallocated,
            ShallowMapping::Zero {
                explicit: false, ..
            } => TopStatus::Unallocated,
            ShallowMapping::Zero { explicit: true, .. } => TopStatus::Zero,
            ShallowMapping::Eof { .. } => TopStatus::Unallocated,
            _ => TopStatus::Data,
        };
        Ok((s, len.max(1).min(max_len)))
    }

    /// Drops every allocation of this image so the backing file shows through
    /// (what `qemu-img commit` does to the overlay afterwards).
    pub fn make_empty(&self) -> Result<()> {
        self.check_writable()?;
        let mut access = self.access_mut();
        let size = access.size();
        access
            .discard_to_backing(0, size)
            .map_err(|e| self.io_err("discard", e))?;
        access.flush().map_err(|e| self.io_err("flush", e))?;
        access.sync().map_err(|e| self.io_err("flush", e))
    }

    /// Grows or shrinks the virtual disk.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        self.check_writable()?;
        let mut access = self.access_mut();
        access
            .resize(new_size, imago::format::PreallocateMode::None)
            .map_err(|e| self.io_err("resize", e))?;
        access.flush().map_err(|e| self.io_err("flush", e))?;
        self.size.store(access.size(), Ordering::Release);
        // The L1 table may have moved or grown.
        if let Ok(h) = QcowHeader::read(&self.meta_file, &self.path) {
            *self.l1_shadow.lock().unwrap_or_else(|p| p.into_inner()) =
                L1Shadow::load(&self.meta_file, &h);
        }
        Ok(())
    }
}

impl DiskBackend for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_vectored(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> Result<()> {
        check_range(offset, sg_len(bufs), self.size())?;
        let (iov, _guard) = IoVectorMut::from_volatile_slice(bufs.iter());
        self.access()
            .readv(iov, offset)
            .map_err(|e| self.io_err("read", e))
    }

    fn write_vectored(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> Result<()> {
        self.check_writable()?;
        check_range(offset, sg_len(bufs), self.size())?;
        let (iov, _guard) = IoVector::from_volatile_slice(bufs.iter());
        let access = self.access();
        access
            .writev(iov, offset)
            .map_err(|e| self.io_err("write", e))?;
        self.order_new_l2_tables(&access, offset, sg_len(bufs))
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let access = self.access();
        access.flush().map_err(|e| self.io_err("flush", e))?;
        access.sync().map_err(|e| self.io_err("flush", e))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(offset, len, self.size())?;
        let mut access = self.access_mut();
        // Punch before imago frees the clusters: once freed, the same call
        // may reuse them (copy-on-write of a partial compressed cluster at
        // either end, a new L2 table), and punching afterwards would zero
        // live data. Punching first is safe: these clusters belong to this
        // guest range alone and the guest asked for them to read zeroes.
        let whole = self.whole_data_clusters(&access, offset, len);
        self.punch_freed(&whole);
        match access.discard_to_zero(offset, len) {
            Ok(()) => self.order_new_l2_tables(&access, offset, len),
            // qcow2 v2 has no zero clusters: write zeroes instead.
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                self.write_zero_buffers(&access, offset, len)
            }
            Err(e) => Err(self.io_err("discard", e)),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(offset, len, self.size())?;
        let access = self.access();
        match access.write_zeroes(offset, len) {
            Ok(()) => self.order_new_l2_tables(&access, offset, len),
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                self.write_zero_buffers(&access, offset, len)
            }
            Err(e) => Err(self.io_err("write zeroes", e)),
        }
    }

    fn block_status(&self, offset: u64, max_len: u64) -> Result<(bool, u64)> {
        let access = self.access();
        let (m, len) = access
            .get_mapping(offset, max_len)
            .map_err(|e| self.io_err("map", e))?;
        let len = len.min(max_len);
        Ok(match m {
            imago::Mapping::Zero { .. } => (false, len.max(1)),
            imago::Mapping::Eof { .. } => (false, max_len),
            _ => (true, len.max(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::check::{check_qcow2, Repair};
    use crate::block::create::{create_qcow2, create_raw, Prealloc, Qcow2Options};

    fn rw() -> OpenOptions {
        OpenOptions {
            format: Some(ImageFormat::Qcow2),
            writable: true,
            ..Default::default()
        }
    }

    #[test]
    fn discard_frees_host_space_of_whole_clusters_and_keeps_the_rest() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.qcow2");
        create_qcow2(
            &path,
            &Qcow2Options {
                size: 8 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        let d = Qcow2Disk::open(&path, &rw()).unwrap();
        let data = pattern(6 << 20, 3);
        d.write_at(0, &data).unwrap();
        d.flush().unwrap();
        let before = std::fs::metadata(&path).unwrap().blocks();
        // Not cluster aligned at either end: the partial clusters are zeroed.
        d.discard((1 << 20) + 512, (4 << 20) - 1024).unwrap();
        d.flush().unwrap();
        let after = std::fs::metadata(&path).unwrap().blocks();
        assert!(
            after * 512 + (3 << 20) < before * 512,
            "{before} -> {after}"
        );
        let mut back = vec![0u8; 6 << 20];
        d.read_at(0, &mut back).unwrap();
        let mut want = data.clone();
        want[(1 << 20) + 512..(5 << 20) - 512].fill(0);
        assert!(back == want);
        drop(d);
        let r = check_qcow2(&path, Repair::None).unwrap();
        assert_eq!(
            (r.corruptions, r.leaks, r.check_errors),
            (0, 0, 0),
            "{:?}",
            r.messages
        );
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn create_write_read_check_every_cluster_size() {
        let dir = tempfile::tempdir().unwrap();
        for (cs, version, bits) in [
            (512u64, 3u32, 1u32),
            (4096, 2, 16),
            (65536, 3, 64),
            (2 << 20, 3, 16),
        ] {
            let p = dir.path().join(format!("t{cs}.qcow2"));
            let opts = Qcow2Options {
                size: 8 << 20,
                cluster_size: cs,
                version,
                refcount_bits: bits,
                ..Default::default()
            };
            create_qcow2(&p, &opts).unwrap();
            {
                let d = Qcow2Disk::open(&p, &rw()).unwrap();
                d.write_at(1000, &pattern(100_000, 3)).unwrap();
                d.write_zeroes(4096, 8192).unwrap();
                d.discard(200_000, 70_000).unwrap();
                d.flush().unwrap();
                let mut out = vec![0u8; 100_000];
                d.read_at(1000, &mut out).unwrap();
                let mut want = pattern(100_000, 3);
                want[3096..11288].fill(0);
                assert_eq!(out, want, "cluster size {cs}");
            }
            let r = check_qcow2(&p, Repair::None).unwrap();
            assert_eq!(
                (r.corruptions, r.leaks),
                (0, 0),
                "cluster size {cs}: {:?}",
                r.messages
            );
        }
    }

    #[test]
    fn backing_chain_reads_through_and_is_resolved_relative_to_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        create_raw(&base, 1 << 20, Prealloc::Off).unwrap();
        std::fs::write(&base, pattern(1 << 20, 9)).unwrap();
        let top = dir.path().join("top.qcow2");
        create_qcow2(
            &top,
            &Qcow2Options {
                size: 1 << 20,
                backing: Some(("base.raw".into(), ImageFormat::Raw)),
                ..Default::default()
            },
        )
        .unwrap();
        let d = Qcow2Disk::open(&top, &rw()).unwrap();
        d.write_at(70_000, &[1u8; 10]).unwrap();
        let mut out = vec![0u8; 1 << 20];
        d.read_at(0, &mut out).unwrap();
        let mut want = pattern(1 << 20, 9);
        want[70_000..70_010].fill(1);
        assert_eq!(out, want);
        let (alloc, _) = d.allocated_in_top(0, 65536).unwrap();
        assert!(!alloc);
    }

    #[test]
    fn backing_loop_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loop.qcow2");
        create_qcow2(
            &p,
            &Qcow2Options {
                size: 1 << 20,
                backing: Some(("loop.qcow2".into(), ImageFormat::Qcow2)),
                ..Default::default()
            },
        )
        .unwrap();
        let err = Qcow2Disk::open(&p, &rw()).unwrap_err();
        assert!(err.to_string().contains("loops"), "{err}");
    }

    #[test]
    fn dirty_image_is_refused_with_repair_hint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dirty.qcow2");
        create_qcow2(
            &p,
            &Qcow2Options {
                size: 1 << 20,
                lazy_refcounts: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[79] |= 1; // incompatible_features bit 0
        std::fs::write(&p, &bytes).unwrap();
        let err = Qcow2Disk::open(&p, &rw()).unwrap_err();
        assert!(err.to_string().contains("ivmm img check -r all"), "{err}");
        check_qcow2(&p, Repair::All).unwrap();
        Qcow2Disk::open(&p, &rw()).unwrap();
    }

    #[test]
    fn leaked_cluster_is_found_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leak.qcow2");
        create_qcow2(
            &p,
            &Qcow2Options {
                size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        // Refcount block is at cluster 2 (16-bit entries): mark cluster 10 used, grow file.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(11 * 65536).unwrap();
        crate::block::raw::pwrite_all(&f, [0u8, 1].as_ptr(), 2, 2 * 65536 + 20).unwrap();
        let r = check_qcow2(&p, Repair::None).unwrap();
        assert_eq!((r.leaks, r.corruptions, r.exit_code()), (1, 0, 3));
        let r = check_qcow2(&p, Repair::Leaks).unwrap();
        assert_eq!((r.leaks, r.leaks_fixed, r.exit_code()), (0, 1, 0));
    }
}
