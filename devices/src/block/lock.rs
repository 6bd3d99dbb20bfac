//! QEMU-compatible image locking.
//!
//! QEMU's file-posix driver expresses block-layer permissions as shared
//! open-file-description (OFD) byte-range locks:
//! - byte `100 + bit` is read-locked while the holder *uses* permission `bit`;
//! - byte `200 + bit` is read-locked while the holder *refuses to share* it.
//!
//! A new user first takes its own locks, then tests for conflicts: a permission
//! it wants is refused if someone locks `200 + bit`; a permission it refuses to
//! share conflicts with anyone locking `100 + bit`. Because all locks are shared
//! (read) locks, holders never block each other, only the explicit tests fail.
//! We take exactly the bytes QEMU 10 takes (observed in /proc/locks):
//! writer `100,101,103` + `201,203`; reader `100` + `201,203`; `-U` reader `100`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{BlockError, Result};

/// Base offset of "permission in use" lock bytes.
const LOCK_PERM_BASE: i64 = 100;
/// Base offset of "permission not shared" lock bytes.
const LOCK_SHARED_BASE: i64 = 200;

/// QEMU permission bits (include/block/block-common.h).
const PERM_CONSISTENT_READ: u32 = 1 << 0;
const PERM_WRITE: u32 = 1 << 1;
const PERM_WRITE_UNCHANGED: u32 = 1 << 2;
const PERM_RESIZE: u32 = 1 << 3;
/// All permissions QEMU 10 knows.
const PERM_ALL: u32 = PERM_CONSISTENT_READ | PERM_WRITE | PERM_WRITE_UNCHANGED | PERM_RESIZE;
/// Number of permission bits.
const PERM_BITS: u32 = 4;

/// Names QEMU prints for the permission bits.
const PERM_NAMES: [&str; PERM_BITS as usize] =
    ["consistent read", "write", "write unchanged", "resize"];

/// How an image is going to be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Read and write; refuse other writers and resizers.
    ReadWrite,
    /// Read only; refuse other writers and resizers (a consistent view).
    ReadOnly,
    /// Read only, share everything (`-U`, `--force-share`).
    ForceShare,
}

impl LockMode {
    /// (permissions used, permissions shared) in QEMU's terms.
    fn perms(self) -> (u32, u32) {
        match self {
            LockMode::ReadWrite => (
                PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE,
                PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED,
            ),
            LockMode::ReadOnly => (
                PERM_CONSISTENT_READ,
                PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED,
            ),
            LockMode::ForceShare => (PERM_CONSISTENT_READ, PERM_ALL),
        }
    }
}

/// Holds the permission locks of one open image. The locks live as long as
/// the open file description, i.e. until every duplicate of the fd is closed.
#[derive(Debug)]
pub struct ImageLock {
    _file: File,
}

fn flock(kind: libc::c_int, start: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: 1,
        l_pid: 0,
    }
}

impl ImageLock {
    /// Takes the locks of `mode` on `file` (an fd whose description is shared
    /// with the one doing the I/O) and fails if another process conflicts.
    pub fn acquire(file: &File, path: &Path, mode: LockMode) -> Result<ImageLock> {
        let dup = file.try_clone().map_err(|source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let (perm, shared) = mode.perms();
        let io_err = |source: std::io::Error| BlockError::Io {
            path: path.to_path_buf(),
            op: "lock",
            source,
        };
        for bit in 0..PERM_BITS {
            let mask = 1u32 << bit;
            if perm & mask != 0 {
                set_lock(&dup, LOCK_PERM_BASE + i64::from(bit)).map_err(io_err)?;
            }
            if shared & mask == 0 {
                set_lock(&dup, LOCK_SHARED_BASE + i64::from(bit)).map_err(io_err)?;
            }
        }
        for bit in 0..PERM_BITS {
            let mask = 1u32 << bit;
            let name = PERM_NAMES[bit as usize];
            if perm & mask != 0
                && is_locked_by_other(&dup, LOCK_SHARED_BASE + i64::from(bit)).map_err(io_err)?
            {
                return Err(locked(path, format!("it refuses to share \"{name}\"")));
            }
            if shared & mask == 0
                && is_locked_by_other(&dup, LOCK_PERM_BASE + i64::from(bit)).map_err(io_err)?
            {
                return Err(locked(path, format!("it holds \"{name}\"")));
            }
        }
        Ok(ImageLock { _file: dup })
    }
}

fn locked(path: &Path, what: String) -> BlockError {
    BlockError::Locked {
        path: PathBuf::from(path),
        what,
    }
}

fn set_lock(file: &File, byte: i64) -> std::io::Result<()> {
    let fl = flock(libc::F_RDLCK, byte);
    // SAFETY: F_OFD_SETLK reads a valid, initialised `flock` we own; the fd is open.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn is_locked_by_other(file: &File, byte: i64) -> std::io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, byte);
    // SAFETY: F_OFD_GETLK writes into the valid `flock` we own; the fd is open.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn second_writer_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let a = open(f.path());
        let _la = ImageLock::acquire(&a, f.path(), LockMode::ReadWrite).unwrap();
        let b = open(f.path());
        let err = ImageLock::acquire(&b, f.path(), LockMode::ReadWrite).unwrap_err();
        assert!(matches!(err, BlockError::Locked { .. }));
        let err = ImageLock::acquire(&b, f.path(), LockMode::ReadOnly).unwrap_err();
        assert!(err.to_string().contains("force-share"));
        ImageLock::acquire(&b, f.path(), LockMode::ForceShare).unwrap();
    }

    #[test]
    fn readers_share_and_block_writers() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let a = open(f.path());
        let _la = ImageLock::acquire(&a, f.path(), LockMode::ReadOnly).unwrap();
        let b = open(f.path());
        let _lb = ImageLock::acquire(&b, f.path(), LockMode::ReadOnly).unwrap();
        let c = open(f.path());
        assert!(ImageLock::acquire(&c, f.path(), LockMode::ReadWrite).is_err());
    }

    #[test]
    fn lock_is_released_on_close() {
        let f = tempfile::NamedTempFile::new().unwrap();
        {
            let a = open(f.path());
            let _la = ImageLock::acquire(&a, f.path(), LockMode::ReadWrite).unwrap();
        }
        let b = open(f.path());
        ImageLock::acquire(&b, f.path(), LockMode::ReadWrite).unwrap();
    }
}
