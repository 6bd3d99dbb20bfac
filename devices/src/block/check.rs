//! `ivmm img check`: our own qcow2 metadata walker, independent of imago.
//!
//! It recomputes every cluster's reference count from the header, the L1/L2
//! tables (active and snapshot), and the refcount structures, and compares with
//! the stored refcounts: stored < computed is a corruption (data may be
//! overwritten), stored > computed is a leak (wasted space). It also checks
//! alignment/bounds of every table pointer and the OFLAG_COPIED bits. Repairs:
//! leaks are zeroed in place; `-r all` also fixes refcounts in place, or
//! rebuilds the whole refcount structure at the end of the file when the
//! existing one cannot hold the result, fixes OFLAG_COPIED bits and clears the
//! dirty bit. Bad table pointers are never "repaired" by guessing.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::create::{get_refcount, set_refcount};
use super::header::{validate_tables, QcowHeader, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::raw::{pread_all, pwrite_all};

/// L1/L2/refcount-table entry offset mask (bits 9..=55).
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63: OFLAG_COPIED (refcount is exactly one).
const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: compressed cluster.
const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Reserved bits of an L1 entry (1..=8 and 56..=62) and bit 0.
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Reserved bits of a standard L2 entry (1..=8 and 56..=61).
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Most host clusters `check` accounts for (2 GiB of counters).
const MAX_CHECK_CLUSTERS: u64 = 1 << 28;
/// QEMU's limit for L1 tables (QCOW_MAX_L1_SIZE, 32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's limit for the refcount table (QCOW_MAX_REFTABLE_SIZE, 8 MiB).
const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// What to repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    None,
    Leaks,
    All,
}

/// Errors that stop the check (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot open '{path}'")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("'{path}': {msg}")]
    Header { path: PathBuf, msg: String },
    #[error("'{path}': I/O error")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result of a check, with qemu-img's counters.
#[derive(Debug, Default, Clone)]
pub struct CheckReport {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    pub image_end_offset: u64,
    pub total_clusters: u64,
    pub allocated_clusters: u64,
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
    /// One line per problem found, QEMU-style ("ERROR ...", "Leaked cluster ...").
    pub messages: Vec<String>,
}

impl CheckReport {
    /// qemu-img's exit code: 0 clean, 2 corruptions, 3 leaks only, 1 check errors.
    pub fn exit_code(&self) -> i32 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }
}

/// A position of an OFLAG_COPIED fix: (table offset in file, entry index, new value).
type EntryFix = (u64, u64, u64);

struct Walker<'a> {
    file: &'a File,
    path: &'a Path,
    h: QcowHeader,
    cs: u64,
    file_len: u64,
    nb_clusters: u64,
    /// Computed references per host cluster.
    refs: Vec<u64>,
    report: CheckReport,
    /// (L1/L2 table offset, index) of entries whose COPIED flag must be checked,
    /// with the cluster they point to and the raw entry.
    copied: Vec<(u64, u64, u64, u64)>,
    /// Clusters pointed to by active L1/L2 entries (for fragmentation).
    last_data: u64,
}

fn ioe(path: &Path) -> impl Fn(std::io::Error) -> CheckError + '_ {
    move |source| CheckError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl<'a> Walker<'a> {
    fn read(&self, off: u64, len: u64) -> Result<Vec<u8>, CheckError> {
        let mut b = vec![0u8; len as usize];
        pread_all(self.file, b.as_mut_ptr(), b.len(), off).map_err(ioe(self.path))?;
        Ok(b)
    }

    fn err(&mut self, msg: String) {
        self.report.corruptions += 1;
        self.report.messages.push(format!("ERROR {msg}"));
    }

    /// Adds a reference to each cluster of `[off, off+len)`; false if out of the file.
    fn inc(&mut self, off: u64, len: u64, what: &str) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = off.checked_add(len) else {
            self.err(format!("{what} at offset 0x{off:x} overflows"));
            return false;
        };
        let first = off / self.cs;
        let last = (end - 1) / self.cs;
        if last >= self.nb_clusters {
            self.err(format!(
                "{what} at offset 0x{off:x} (length {len}) is beyond the end of the image file ({} bytes)",
                self.file_len
            ));
            return false;
        }
        for c in first..=last {
            self.refs[c as usize] += 1;
        }
        true
    }

    fn check_table(&mut self, off: u64, bytes: u64, max: u64, what: &str) -> bool {
        if off & (self.cs - 1) != 0 {
            self.err(format!("{what} offset 0x{off:x} is not cluster aligned"));
            return false;
        }
        if bytes > max {
            self.err(format!("{what} is too large ({bytes} bytes)"));
            return false;
        }
        self.inc(off, bytes, what)
    }

    /// Walks one L1 table and its L2 tables; `active` counts allocation stats.
    fn walk_l1(&mut self, l1_off: u64, l1_size: u64, active: bool) -> Result<(), CheckError> {
        let bytes = l1_size.saturating_mul(8);
        if !self.check_table(l1_off, bytes, MAX_L1_BYTES, "L1 table") {
            return Ok(());
        }
        let l1 = self.read(l1_off, bytes)?;
        let cb = self.h.cluster_bits;
        let l2_entries = self.cs / 8;
        for i in 0..l1_size {
            let e = be64(&l1, i as usize * 8);
            if e & L1_RESERVED != 0 {
                self.err(format!("found L1 entry with reserved bits set: {e:x}"));
                continue;
            }
            let l2_off = e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            if l2_off & (self.cs - 1) != 0 {
                self.err(format!(
                    "L2 table offset 0x{l2_off:x} unaligned (L1 index: {i:#x})"
                ));
                continue;
            }
            if !self.inc(l2_off, self.cs, "L2 table") {
                continue;
            }
            if active {
                self.copied.push((l1_off, i, l2_off, e));
            }
            let l2 = self.read(l2_off, self.cs)?;
            self.last_data = 0;
            for j in 0..l2_entries {
                let e = be64(&l2, j as usize * 8);
                if e & OFLAG_COMPRESSED != 0 {
                    let x = 62 - (cb - 8);
                    let coff = e & ((1u64 << x) - 1);
                    let nsec = ((e >> x) & ((1u64 << (cb - 8)) - 1)) + 1;
                    let csize = (nsec * 512).saturating_sub(coff & 511);
                    if e & OFLAG_COPIED != 0 {
                        self.err(format!(
                            "compressed cluster at L2 index {j:#x} has OFLAG_COPIED set"
                        ));
                    }
                    self.inc(coff, csize, "compressed cluster");
                    if active {
                        // Compressed clusters count as fragmented by nature (as QEMU).
                        self.report.allocated_clusters += 1;
                        self.report.compressed_clusters += 1;
                        self.report.fragmented_clusters += 1;
                    }
                    continue;
                }
                if e & L2_RESERVED != 0 {
                    self.err(format!("found l2 entry with reserved bits set: {e:x}"));
                    continue;
                }
                let off = e & OFFSET_MASK;
                if off == 0 {
                    continue;
                }
                if off & (self.cs - 1) != 0 {
                    self.err(format!(
                        "offset=0x{off:x}: cluster is not properly aligned; L2 entry corrupted."
                    ));
                    continue;
                }
                if !self.inc(off, self.cs, "data cluster") {
                    continue;
                }
                if active {
                    self.copied.push((l2_off, j, off, e));
                    self.report.allocated_clusters += 1;
                    if self.last_data != 0 && off != self.last_data + self.cs {
                        self.report.fragmented_clusters += 1;
                    }
                    self.last_data = off;
                }
            }
        }
        Ok(())
    }

    fn walk_snapshots(&mut self) -> Result<(), CheckError> {
        let n = u64::from(self.h.nb_snapshots);
        if n == 0 {
            return Ok(());
        }
        let mut off = self.h.snapshots_offset;
        if off & (self.cs - 1) != 0 || off >= self.file_len {
            self.err(format!("snapshot table offset 0x{off:x} invalid"));
            return Ok(());
        }
        let start = off;
        for _ in 0..n {
            if off + 40 > self.file_len {
                self.err("snapshot table extends beyond the end of the image file".into());
                return Ok(());
            }
            let hdr = self.read(off, 40)?;
            let l1_off = be64(&hdr, 0);
            let l1_size = u64::from(be32(&hdr, 8));
            let id_len = u64::from(u16::from_be_bytes([hdr[12], hdr[13]]));
            let name_len = u64::from(u16::from_be_bytes([hdr[14], hdr[15]]));
            let extra = u64::from(be32(&hdr, 36));
            off = (off + 40 + extra + id_len + name_len).next_multiple_of(8);
            self.walk_l1(l1_off, l1_size, false)?;
        }
        self.inc(start, off - start, "snapshot table");
        Ok(())
    }
}

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

fn be32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}

/// Stored refcounts: per refcount-table entry, the block offset (if sane).
struct Stored {
    table: Vec<Option<u64>>,
    /// Refcount-table indexes whose block pointer is unaligned: unreadable.
    unreadable: Vec<usize>,
    blocks: std::collections::HashMap<u64, Vec<u8>>,
    per_block: u64,
    bits: u32,
}

impl Stored {
    fn get(&self, cluster: u64) -> u64 {
        let ti = (cluster / self.per_block) as usize;
        match self.table.get(ti).copied().flatten() {
            Some(b) => self
                .blocks
                .get(&b)
                .map(|blk| get_refcount(blk, (cluster % self.per_block) as usize, self.bits))
                .unwrap_or(0),
            None => 0,
        }
    }
}

/// Checks (and optionally repairs) the qcow2 image at `path`.
pub fn check_qcow2(path: &Path, repair: Repair) -> Result<CheckReport, CheckError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(repair != Repair::None)
        .open(path)
        .map_err(|source| CheckError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let first = analyse(&file, path, repair)?;
    if repair == Repair::None {
        return Ok(first.report);
    }
    let needs_flag_clear = repair == Repair::All
        && first.h.version >= 3
        && first.h.incompatible_features & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT) != 0;
    if first.report.leaks == 0 && first.report.corruptions == 0 && !needs_flag_clear {
        return Ok(first.report);
    }
    // Refcounts first; OFLAG_COPIED is then judged against the repaired refcounts.
    apply(&file, path, repair, &first, false)?;
    if repair == Repair::All {
        let second = analyse(&file, path, Repair::All)?;
        apply(&file, path, repair, &second, true)?;
    }
    // Re-check: what remains is what we could not fix.
    let mut after = analyse(&file, path, Repair::None)?.report;
    if needs_flag_clear && after.corruptions == 0 {
        let feats = first.h.incompatible_features & !(INCOMPAT_DIRTY | INCOMPAT_CORRUPT);
        pwrite_all(&file, feats.to_be_bytes().as_ptr(), 8, 72).map_err(ioe(path))?;
        file.sync_all().map_err(ioe(path))?;
    }
    after.leaks_fixed = first.report.leaks.saturating_sub(after.leaks);
    after.corruptions_fixed = first.report.corruptions.saturating_sub(after.corruptions);
    let mut messages = first.report.messages;
    messages.extend(
        after
            .messages
            .drain(..)
            .filter(|m| m.starts_with("ERROR") && !m.starts_with("ERROR cluster")),
    );
    messages.dedup();
    after.messages = messages;
    Ok(after)
}

/// Everything one walk found, with the repairs it would make.
struct Analysis {
    report: CheckReport,
    h: QcowHeader,
    refs: Vec<u64>,
    nb_clusters: u64,
    stored: Stored,
    refcount_structure_ok: bool,
    /// Clusters holding the current refcount table and blocks.
    rc_clusters: Vec<u64>,
    /// (cluster, new refcount)
    fixes: Vec<(u64, u64)>,
    copied_fixes: Vec<EntryFix>,
}

fn analyse(file: &File, path: &Path, repair: Repair) -> Result<Analysis, CheckError> {
    let h = QcowHeader::read(file, path).map_err(|e| CheckError::Header {
        path: path.to_path_buf(),
        msg: e.detail(),
    })?;
    validate_tables(&h).map_err(|msg| CheckError::Header {
        path: path.to_path_buf(),
        msg,
    })?;
    let file_len = file.metadata().map_err(ioe(path))?.len();
    let cs = h.cluster_size();
    let nb_clusters = file_len.div_ceil(cs);
    // One counter per host cluster is kept in memory; refuse absurd (sparse,
    // crafted) files instead of exhausting memory.
    if nb_clusters > MAX_CHECK_CLUSTERS {
        return Err(CheckError::Header {
            path: path.to_path_buf(),
            msg: format!("file too large to check ({nb_clusters} clusters of {cs} bytes)"),
        });
    }
    let mut w = Walker {
        file,
        path,
        cs,
        file_len,
        nb_clusters,
        refs: vec![0; nb_clusters as usize],
        report: CheckReport::default(),
        copied: Vec::new(),
        last_data: 0,
        h: h.clone(),
    };
    w.report.total_clusters = h.size.div_ceil(cs);

    // Header cluster.
    w.inc(0, cs, "header");
    // Active L1 and the snapshots.
    w.walk_l1(h.l1_table_offset, u64::from(h.l1_size), true)?;
    w.walk_snapshots()?;

    // Refcount table and blocks.
    let bits = h.refcount_bits();
    let per_block = cs * 8 / u64::from(bits);
    let rt_bytes = u64::from(h.refcount_table_clusters) * cs;
    let mut stored = Stored {
        table: Vec::new(),
        unreadable: Vec::new(),
        blocks: Default::default(),
        per_block,
        bits,
    };
    let mut refcount_structure_ok = true;
    let mut rc_clusters = Vec::new();
    if !w.check_table(
        h.refcount_table_offset,
        rt_bytes,
        MAX_REFTABLE_BYTES,
        "refcount table",
    ) {
        refcount_structure_ok = false;
    } else {
        let rt = w.read(h.refcount_table_offset, rt_bytes)?;
        for k in 0..u64::from(h.refcount_table_clusters) {
            rc_clusters.push(h.refcount_table_offset / cs + k);
        }
        for i in 0..rt_bytes / 8 {
            let e = be64(&rt, i as usize * 8);
            if e & 511 != 0 {
                w.err(format!("refcount table entry {i} has reserved bits set"));
                stored.table.push(None);
                refcount_structure_ok = false;
                continue;
            }
            let off = e;
            if off == 0 {
                stored.table.push(None);
                continue;
            }
            if off & (cs - 1) != 0 {
                w.err(format!(
                    "refcount block {i} is not cluster aligned; refcount table entry corrupted"
                ));
                stored.unreadable.push(i as usize);
                stored.table.push(None);
                refcount_structure_ok = false;
                continue;
            }
            if !w.inc(off, cs, "refcount block") {
                stored.table.push(None);
                refcount_structure_ok = false;
                continue;
            }
            rc_clusters.push(off / cs);
            let blk = w.read(off, cs)?;
            stored.blocks.insert(off, blk);
            stored.table.push(Some(off));
        }
    }

    // Compare stored and computed refcounts.
    let mut fixes: Vec<(u64, u64)> = Vec::new();
    let covered = stored.table.len() as u64 * per_block;
    let max_ref = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let mut highest = 0u64;
    for c in 0..nb_clusters {
        let want = w.refs[c as usize];
        if stored.unreadable.contains(&((c / per_block) as usize)) {
            // As QEMU: the refcount cannot be read, an internal check error.
            w.report.check_errors += 1;
            w.report
                .messages
                .push(format!("Can't get refcount for cluster {c}"));
            if repair == Repair::All {
                refcount_structure_ok = false;
            }
            continue;
        }
        let have = stored.get(c);
        if have > 0 || want > 0 {
            highest = c;
        }
        if want > max_ref {
            w.err(format!(
                "cluster {c} is referenced {want} times, more than refcount_bits allows"
            ));
            continue;
        }
        if have == want {
            continue;
        }
        if have < want {
            w.report.corruptions += 1;
            w.report.messages.push(format!(
                "ERROR cluster {c} refcount={have} reference={want}"
            ));
            if c >= covered {
                refcount_structure_ok = false;
            }
            if repair == Repair::All {
                fixes.push((c, want));
            }
        } else {
            w.report.leaks += 1;
            w.report.messages.push(format!(
                "Leaked cluster {c} refcount={have} reference={want}"
            ));
            if repair != Repair::None {
                fixes.push((c, want));
            }
        }
    }
    // Like QEMU, refcounts of clusters past the end of the file are not looked at.
    // OFLAG_COPIED must be set exactly when the refcount is one.
    let mut copied_fixes: Vec<EntryFix> = Vec::new();
    for &(table, idx, target, entry) in &w.copied {
        let refs = stored.get(target / cs);
        let want_copied = refs == 1;
        if (entry & OFLAG_COPIED != 0) != want_copied {
            w.report.corruptions += 1;
            w.report.messages.push(format!(
                "ERROR OFLAG_COPIED: offset=0x{entry:x} refcount={refs} (table 0x{table:x} index {idx})"
            ));
            if repair == Repair::All {
                let new = if want_copied {
                    entry | OFLAG_COPIED
                } else {
                    entry & !OFLAG_COPIED
                };
                copied_fixes.push((table, idx, new));
            }
        }
    }
    w.report.image_end_offset = (highest + 1) * cs;
    let report = w.report;
    let refs = w.refs;
    Ok(Analysis {
        report,
        h,
        refs,
        nb_clusters,
        stored,
        refcount_structure_ok,
        rc_clusters,
        fixes,
        copied_fixes,
    })
}

/// Applies the repairs an analysis found.
fn apply(
    file: &File,
    path: &Path,
    repair: Repair,
    a: &Analysis,
    copied_only: bool,
) -> Result<(), CheckError> {
    let write =
        |off: u64, data: &[u8]| pwrite_all(file, data.as_ptr(), data.len(), off).map_err(ioe(path));
    if copied_only {
        for &(table, idx, v) in &a.copied_fixes {
            write(table + idx * 8, &v.to_be_bytes())?;
        }
        return file.sync_all().map_err(ioe(path));
    }
    let per_block = a.stored.per_block;
    let bits = a.stored.bits;
    let all_in_place = a.refcount_structure_ok
        && a.fixes
            .iter()
            .all(|(c, _)| matches!(a.stored.table.get((c / per_block) as usize), Some(Some(_))));
    if all_in_place {
        let mut blocks = a.stored.blocks.clone();
        let mut dirty: Vec<u64> = Vec::new();
        for &(c, v) in &a.fixes {
            let Some(Some(b)) = a.stored.table.get((c / per_block) as usize).copied() else {
                continue;
            };
            if let Some(blk) = blocks.get_mut(&b) {
                set_refcount(blk, (c % per_block) as usize, bits, v);
                dirty.push(b);
            }
        }
        dirty.sort_unstable();
        dirty.dedup();
        for b in dirty {
            if let Some(blk) = blocks.get(&b) {
                write(b, blk)?;
            }
        }
    } else if repair == Repair::All {
        // The old refcount structures are dropped by the rebuild.
        let mut refs = a.refs.clone();
        for &c in &a.rc_clusters {
            if let Some(r) = refs.get_mut(c as usize) {
                *r = r.saturating_sub(1);
            }
        }
        rebuild_refcounts(file, path, &a.h, &refs, a.nb_clusters)?;
    }
    file.sync_all().map_err(ioe(path))
}

/// Writes a fresh refcount table and blocks after the end of the file holding
/// `refs` (plus the new structures), then points the header at them.
/// Returns the new image end offset.
fn rebuild_refcounts(
    file: &File,
    path: &Path,
    h: &QcowHeader,
    refs: &[u64],
    nb_clusters: u64,
) -> Result<u64, CheckError> {
    let cs = h.cluster_size();
    let bits = h.refcount_bits();
    let per_block = cs * 8 / u64::from(bits);
    // Clusters still referenced after the rebuild: the old refcount structures
    // are no longer referenced (they keep refcount 0).
    // Append after everything, so a crash mid-rebuild leaves the old structure valid.
    let start = nb_clusters;
    let mut nb_blocks = 1u64;
    let mut nb_table;
    loop {
        nb_table = (nb_blocks * 8).div_ceil(cs);
        let total = start + nb_blocks + nb_table;
        let need = total.div_ceil(per_block);
        if need <= nb_blocks {
            break;
        }
        nb_blocks = need;
    }
    let blocks_off = start * cs;
    let table_off = (start + nb_blocks) * cs;
    let mut table = vec![0u8; (nb_table * cs) as usize];
    for b in 0..nb_blocks {
        let mut blk = vec![0u8; cs as usize];
        for i in 0..per_block {
            let c = b * per_block + i;
            let v = if c < start {
                refs.get(c as usize).copied().unwrap_or(0)
            } else if c < start + nb_blocks + nb_table {
                1
            } else {
                0
            };
            if v != 0 {
                set_refcount(&mut blk, i as usize, bits, v);
            }
        }
        let off = blocks_off + b * cs;
        pwrite_all(file, blk.as_ptr(), blk.len(), off).map_err(ioe(path))?;
        table[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
    }
    pwrite_all(file, table.as_ptr(), table.len(), table_off).map_err(ioe(path))?;
    let end = table_off + nb_table * cs;
    file.set_len(end).map_err(ioe(path))?;
    file.sync_all().map_err(ioe(path))?;
    let mut hdr = [0u8; 12];
    hdr[..8].copy_from_slice(&table_off.to_be_bytes());
    hdr[8..].copy_from_slice(&(nb_table as u32).to_be_bytes());
    pwrite_all(file, hdr.as_ptr(), hdr.len(), 48).map_err(ioe(path))?;
    Ok(end)
}
