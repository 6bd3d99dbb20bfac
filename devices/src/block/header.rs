//! Our own qcow2 header parser/serialiser (qcow2 spec, docs/interop/qcow2.txt
//! in QEMU), independent of imago. Used by `create`, `info`, `check` and to
//! explain images imago refuses.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::raw::pread_all;
use super::QCOW2_MAGIC;

/// Incompatible feature bits (spec "incompatible_features").
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Compatible feature bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// Header extension types.
pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Size of the v2 header; the v3 header is at least 104 bytes.
pub const V2_HEADER_LEN: usize = 72;
pub const V3_HEADER_LEN: usize = 104;
/// Limits of cluster_bits we accept (512 B .. 2 MiB, as QEMU).
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Longest backing file name QEMU accepts.
pub const MAX_BACKING_NAME: u32 = 1023;

/// Errors parsing a qcow2 header.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("cannot read '{path}'")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("'{path}' is not a qcow2 image (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("'{path}': {msg}")]
    Invalid { path: PathBuf, msg: String },
}

/// A parsed qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QcowHeader {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    /// Offset just past the last header extension (end marker included).
    pub extensions_end: u64,
}

fn be32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

impl QcowHeader {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1u32 << self.refcount_order
    }

    /// qemu-img's "compat" string.
    pub fn compat(&self) -> &'static str {
        if self.version == 2 {
            "0.10"
        } else {
            "1.1"
        }
    }

    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    pub fn dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    pub fn corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }

    /// Reads and validates the header of `path`.
    pub fn read_path(path: &Path) -> Result<QcowHeader, HeaderError> {
        let file = File::open(path).map_err(|source| HeaderError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::read(&file, path)
    }

    /// Reads and validates the header of an open image file.
    pub fn read(file: &File, path: &Path) -> Result<QcowHeader, HeaderError> {
        let mut b = vec![0u8; V3_HEADER_LEN];
        let io = |source| HeaderError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file_len = super::raw::file_size(file).map_err(io)?;
        pread_all(file, b.as_mut_ptr(), b.len(), 0).map_err(io)?;
        Self::parse(&b, path, file_len, |off, buf: &mut [u8]| {
            pread_all(file, buf.as_mut_ptr(), buf.len(), off)
        })
        .map_err(|e| match e {
            ParseFail::Io(source) => HeaderError::Io {
                path: path.to_path_buf(),
                source,
            },
            ParseFail::Magic => HeaderError::BadMagic {
                path: path.to_path_buf(),
            },
            ParseFail::Invalid(msg) => HeaderError::Invalid {
                path: path.to_path_buf(),
                msg,
            },
        })
    }

    fn parse(
        b: &[u8],
        _path: &Path,
        file_len: u64,
        mut read: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<QcowHeader, ParseFail> {
        let inv = |m: String| ParseFail::Invalid(m);
        if file_len < V2_HEADER_LEN as u64 || b[0..4] != QCOW2_MAGIC {
            if b[0..4] == QCOW2_MAGIC {
                return Err(inv(format!(
                    "file is truncated ({file_len} bytes, header needs 72)"
                )));
            }
            return Err(ParseFail::Magic);
        }
        let version = be32(b, 4);
        if version != 2 && version != 3 {
            return Err(inv(format!("unsupported qcow2 version {version}")));
        }
        let cluster_bits = be32(b, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(inv(format!(
                "unsupported cluster size: 2^{cluster_bits} bytes (must be 512 B .. 2 MiB)"
            )));
        }
        let mut h = QcowHeader {
            version,
            backing_file_offset: be64(b, 8),
            backing_file_size: be32(b, 16),
            cluster_bits,
            size: be64(b, 24),
            crypt_method: be32(b, 32),
            l1_size: be32(b, 36),
            l1_table_offset: be64(b, 40),
            refcount_table_offset: be64(b, 48),
            refcount_table_clusters: be32(b, 56),
            nb_snapshots: be32(b, 60),
            snapshots_offset: be64(b, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            compression_type: 0,
            backing_file: None,
            backing_format: None,
            data_file: None,
            extensions_end: 0,
        };
        let cs = h.cluster_size();
        if version == 3 {
            h.incompatible_features = be64(b, 72);
            h.compatible_features = be64(b, 80);
            h.autoclear_features = be64(b, 88);
            h.refcount_order = be32(b, 96);
            h.header_length = be32(b, 100);
            if h.refcount_order > 6 {
                return Err(inv(format!("invalid refcount order {}", h.refcount_order)));
            }
            if (h.header_length as usize) < V3_HEADER_LEN || u64::from(h.header_length) > cs {
                return Err(inv(format!("invalid header length {}", h.header_length)));
            }
            if h.header_length > 104 {
                let mut ct = [0u8; 1];
                read(104, &mut ct).map_err(ParseFail::Io)?;
                h.compression_type = ct[0];
            }
        }
        if h.crypt_method != 0 {
            return Err(inv("encrypted images are not supported".into()));
        }
        // Header extensions (v3 only; v2 images may carry them too after byte 72).
        let mut off = u64::from(h.header_length);
        loop {
            if off + 8 > cs || off + 8 > file_len {
                break;
            }
            let mut eh = [0u8; 8];
            read(off, &mut eh).map_err(ParseFail::Io)?;
            let ty = be32(&eh, 0);
            let len = u64::from(be32(&eh, 4));
            off += 8;
            if ty == EXT_END {
                break;
            }
            let end = off + len;
            if end > cs {
                return Err(inv("header extension exceeds the first cluster".into()));
            }
            let mut data = vec![0u8; len as usize];
            read(off, &mut data).map_err(ParseFail::Io)?;
            match ty {
                EXT_BACKING_FORMAT => {
                    h.backing_format = Some(String::from_utf8_lossy(&data).into())
                }
                EXT_DATA_FILE => h.data_file = Some(String::from_utf8_lossy(&data).into()),
                _ => {}
            }
            off = end.next_multiple_of(8);
        }
        h.extensions_end = off;
        if h.backing_file_offset != 0 {
            let len = h.backing_file_size;
            if len > MAX_BACKING_NAME {
                return Err(inv(format!("backing file name too long ({len} bytes)")));
            }
            let end = h.backing_file_offset.checked_add(u64::from(len));
            match end {
                Some(e) if e <= cs && e <= file_len => {}
                _ => {
                    return Err(inv(
                        "backing file name lies outside the header cluster".into()
                    ))
                }
            }
            let mut name = vec![0u8; len as usize];
            read(h.backing_file_offset, &mut name).map_err(ParseFail::Io)?;
            h.backing_file = Some(
                String::from_utf8(name)
                    .map_err(|_| inv("backing file name is not UTF-8".into()))?,
            );
        }
        Ok(h)
    }

    /// Serialises the header and its extensions into the first `cluster` bytes.
    /// The backing file name is placed after the extensions.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(512);
        b.extend_from_slice(&QCOW2_MAGIC);
        b.extend_from_slice(&self.version.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes()); // backing offset, patched below
        b.extend_from_slice(&0u32.to_be_bytes()); // backing size, patched below
        b.extend_from_slice(&self.cluster_bits.to_be_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&self.crypt_method.to_be_bytes());
        b.extend_from_slice(&self.l1_size.to_be_bytes());
        b.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        b.extend_from_slice(&self.refcount_table_offset.to_be_bytes());
        b.extend_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b.extend_from_slice(&self.nb_snapshots.to_be_bytes());
        b.extend_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version >= 3 {
            b.extend_from_slice(&self.incompatible_features.to_be_bytes());
            b.extend_from_slice(&self.compatible_features.to_be_bytes());
            b.extend_from_slice(&self.autoclear_features.to_be_bytes());
            b.extend_from_slice(&self.refcount_order.to_be_bytes());
            b.extend_from_slice(&112u32.to_be_bytes());
            b.push(self.compression_type);
            b.extend_from_slice(&[0u8; 7]);
        }
        let ext = |b: &mut Vec<u8>, ty: u32, data: &[u8]| {
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            while b.len() & 7 != 0 {
                b.push(0);
            }
        };
        if let Some(fmt) = &self.backing_format {
            ext(&mut b, EXT_BACKING_FORMAT, fmt.as_bytes());
        }
        if self.version >= 3 {
            let mut table = Vec::new();
            for (ty, bit, name) in [
                (0u8, 0u8, "dirty bit"),
                (0, 1, "corrupt bit"),
                (0, 2, "external data file"),
                (0, 3, "compression type"),
                (0, 4, "extended L2 entries"),
                (1, 0, "lazy refcounts"),
                (2, 0, "bitmaps"),
                (2, 1, "raw external data"),
            ] {
                let mut entry = [0u8; 48];
                entry[0] = ty;
                entry[1] = bit;
                entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
                table.extend_from_slice(&entry);
            }
            ext(&mut b, EXT_FEATURE_TABLE, &table);
        }
        b.extend_from_slice(&[0u8; 8]); // end of extensions
        if let Some(name) = &self.backing_file {
            let off = b.len() as u64;
            b[8..16].copy_from_slice(&off.to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            b.extend_from_slice(name.as_bytes());
        }
        b
    }
}

/// Rewrites the backing file name and format in the header of `file`
/// (`rebase -u`, `rebase`). Unknown header extensions would be lost, so images
/// with autoclear features (e.g. persistent bitmaps) are refused.
pub fn rewrite_backing(
    file: &File,
    path: &Path,
    backing: Option<(String, String)>,
) -> Result<(), HeaderError> {
    let mut h = QcowHeader::read(file, path)?;
    let inv = |msg: String| HeaderError::Invalid {
        path: path.to_path_buf(),
        msg,
    };
    if h.autoclear_features != 0 || h.data_file.is_some() {
        return Err(inv(
            "cannot rewrite the header of an image with bitmaps or an external data file".into(),
        ));
    }
    let old_end = h
        .extensions_end
        .max(h.backing_file_offset + u64::from(h.backing_file_size))
        .max(h.header_length.into());
    match backing {
        Some((name, fmt)) => {
            h.backing_file = Some(name);
            h.backing_format = Some(fmt);
        }
        None => {
            h.backing_file = None;
            h.backing_format = None;
        }
    }
    let mut bytes = h.to_bytes();
    if bytes.len() as u64 > h.cluster_size() {
        return Err(inv(
            "backing file name too long for the header cluster".into()
        ));
    }
    if (bytes.len() as u64) < old_end {
        bytes.resize(old_end as usize, 0);
    }
    super::raw::pwrite_all(file, bytes.as_ptr(), bytes.len(), 0).map_err(|source| {
        HeaderError::Io {
            path: path.to_path_buf(),
            source,
        }
    })?;
    file.sync_all().map_err(|source| HeaderError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl HeaderError {
    /// The message without the file name (for errors that add it themselves).
    pub fn detail(&self) -> String {
        match self {
            HeaderError::Io { source, .. } => source.to_string(),
            HeaderError::BadMagic { .. } => "not a qcow2 image (bad magic)".into(),
            HeaderError::Invalid { msg, .. } => msg.clone(),
        }
    }
}

/// QEMU's open-time sanity checks of the table pointers in the header
/// (qcow2_open): images failing them cannot be opened or checked.
pub fn validate_tables(h: &QcowHeader) -> Result<(), String> {
    let cs = h.cluster_size();
    let l2_span = cs * (cs / 8);
    if u64::from(h.l1_size) * 8 > 32 << 20 {
        return Err(format!("active L1 table too large ({} entries)", h.l1_size));
    }
    if u64::from(h.l1_size) < h.size.div_ceil(l2_span) {
        return Err(format!(
            "L1 table is too small ({} entries) for the disk size {}",
            h.l1_size, h.size
        ));
    }
    if h.l1_size > 0 && (h.l1_table_offset == 0 || h.l1_table_offset & (cs - 1) != 0) {
        return Err(format!(
            "active L1 table offset 0x{:x} invalid",
            h.l1_table_offset
        ));
    }
    if h.refcount_table_offset == 0 || h.refcount_table_offset & (cs - 1) != 0 {
        return Err(format!(
            "reference count table offset 0x{:x} invalid",
            h.refcount_table_offset
        ));
    }
    if u64::from(h.refcount_table_clusters) * cs > 8 << 20 || h.refcount_table_clusters == 0 {
        return Err(format!(
            "reference count table size invalid ({} clusters)",
            h.refcount_table_clusters
        ));
    }
    if h.nb_snapshots > 0 && h.snapshots_offset & (cs - 1) != 0 {
        return Err(format!(
            "snapshot table offset 0x{:x} invalid",
            h.snapshots_offset
        ));
    }
    Ok(())
}

enum ParseFail {
    Io(std::io::Error),
    Magic,
    Invalid(String),
}

/// Explains why imago (or we) cannot open this image read/write, if a header
/// feature is the reason.
pub fn refusal_reason(h: &QcowHeader) -> Option<(String, bool)> {
    // (message, repairable by `ivmm img check -r all`)
    if h.corrupt() {
        return Some(("image is marked corrupt (corrupt bit set)".into(), true));
    }
    if h.dirty() {
        return Some((
            "image has the dirty bit set (lazy refcounts not yet written back)".into(),
            true,
        ));
    }
    if h.incompatible_features & INCOMPAT_EXTL2 != 0 {
        return Some((
            "image uses extended L2 entries (subclusters), which ivmm does not support; convert it with 'ivmm img convert -O qcow2'".into(),
            false,
        ));
    }
    if h.incompatible_features & INCOMPAT_COMPRESSION != 0 || h.compression_type != 0 {
        return Some((
            format!(
                "image uses compression type {} (zstd), ivmm supports only zlib; convert it with 'qemu-img convert -O qcow2 -o compression_type=zlib'",
                h.compression_type
            ),
            false,
        ));
    }
    if h.incompatible_features & INCOMPAT_DATA_FILE != 0 {
        return Some((
            "images with an external data file are not supported".into(),
            false,
        ));
    }
    let unknown = h.incompatible_features & !0x1f;
    if unknown != 0 {
        return Some((
            format!("unknown incompatible features 0x{unknown:x}"),
            false,
        ));
    }
    if h.nb_snapshots != 0 {
        // Readable, but writing would need snapshot-aware refcounting.
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QcowHeader {
        QcowHeader {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 30,
            crypt_method: 0,
            l1_size: 2,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: COMPAT_LAZY_REFCOUNTS,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 112,
            compression_type: 0,
            backing_file: Some("base.raw".into()),
            backing_format: Some("raw".into()),
            data_file: None,
            extensions_end: 0,
        }
    }

    #[test]
    fn serialise_then_parse_roundtrips() {
        let h = sample();
        let mut bytes = h.to_bytes();
        bytes.resize(65536, 0);
        let parsed = QcowHeader::parse(&bytes, Path::new("x"), 65536, |off, buf| {
            buf.copy_from_slice(&bytes[off as usize..off as usize + buf.len()]);
            Ok(())
        });
        let Ok(mut p) = parsed else {
            panic!("parse failed")
        };
        assert_eq!(p.backing_file.as_deref(), Some("base.raw"));
        assert_eq!(p.backing_format.as_deref(), Some("raw"));
        p.extensions_end = 0;
        p.backing_file_offset = 0;
        p.backing_file_size = 0;
        assert_eq!(p, h);
    }

    #[test]
    fn bad_cluster_bits_are_refused() {
        for bits in [8u32, 22, 63] {
            let mut h = sample();
            h.cluster_bits = 16;
            let mut bytes = h.to_bytes();
            bytes[20..24].copy_from_slice(&bits.to_be_bytes());
            bytes.resize(65536, 0);
            let r = QcowHeader::parse(&bytes, Path::new("x"), 65536, |off, buf| {
                buf.copy_from_slice(&bytes[off as usize..off as usize + buf.len()]);
                Ok(())
            });
            assert!(matches!(r, Err(ParseFail::Invalid(m)) if m.contains("cluster size")));
        }
    }
}
