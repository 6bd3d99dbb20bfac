//! A minimal writer for "newc" cpio archives, the format Linux unpacks as an initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`). The kernel accepts several
//! archives one after another, which is how the lab appends a small per-run archive to the
//! prebuilt L1 base archive.

use std::collections::BTreeSet;

/// newc header magic.
const MAGIC: &str = "070701";
/// File type bits of `c_mode` (see `stat(2)`).
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// An in-memory newc archive under construction. Parent directories are added on demand.
#[derive(Debug, Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    dirs: BTreeSet<String>,
    next_ino: u32,
}

impl CpioWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a regular file at `path` (absolute or relative; stored relative to the root) with
    /// permission bits `perm` (e.g. `0o755`), creating missing parent directories.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> &mut Self {
        let name = normalize(path);
        self.parents(&name);
        self.entry(&name, S_IFREG | (perm & 0o7777), data);
        self
    }

    /// Adds a directory (and its parents) if it is not in the archive yet.
    pub fn dir(&mut self, path: &str) -> &mut Self {
        let name = normalize(path);
        self.parents(&name);
        self.add_dir(&name);
        self
    }

    /// Finishes the archive with the `TRAILER!!!` entry and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }

    fn parents(&mut self, name: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            let dir = prefix.clone();
            self.add_dir(&dir);
        }
    }

    fn add_dir(&mut self, name: &str) {
        if !name.is_empty() && self.dirs.insert(name.to_string()) {
            self.entry(name, S_IFDIR | 0o755, &[]);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        // Name length includes the terminating NUL.
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so archives are reproducible
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0, // check
        ];
        self.buf.extend_from_slice(MAGIC.as_bytes());
        for field in fields {
            self.buf
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(data);
        self.pad4();
    }

    fn pad4(&mut self) {
        let padded = self.buf.len().next_multiple_of(4);
        self.buf.resize(padded, 0);
    }
}

fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_in_subdir_adds_parents_once_and_aligns() {
        let mut w = CpioWriter::new();
        w.file("/lab/bin/a", 0o755, b"abc")
            .file("lab/bin/b", 0o644, b"");
        let bytes = w.finish();
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("lab/bin\0").count(), 1);
        assert_eq!(text.matches("070701").count(), 5); // lab, lab/bin, a, b, trailer
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(bytes.len(), bytes.len().next_multiple_of(4));
    }

    #[test]
    fn header_fields_are_hex_with_name_size_including_nul() {
        let mut w = CpioWriter::new();
        w.file("x", 0o600, b"hello");
        let bytes = w.finish();
        let header = std::str::from_utf8(&bytes[..110]).expect("ascii header");
        assert_eq!(&header[14..22], "00008180"); // S_IFREG | 0600
        assert_eq!(&header[54..62], "00000005"); // file size
        assert_eq!(&header[94..102], "00000002"); // "x" + NUL
        assert_eq!(&bytes[110..112], b"x\0");
    }
}
