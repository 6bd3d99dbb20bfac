//! Raw image backend: disk offset N is file offset N.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::VolatileSlice;

use super::lock::{ImageLock, LockMode};
use super::{check_range, sg_len, BlockError, DiskBackend, Result, QCOW2_MAGIC};

/// A raw disk image file.
#[derive(Debug)]
pub struct RawDisk {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    /// Format was probed, not given: refuse writes that would make it probe as qcow2.
    probed: bool,
    /// A second descriptor opened with O_DIRECT (`cache=none`) for data I/O
    /// whose buffers and offsets are sector aligned; everything else goes
    /// through `file` (Linux keeps the two coherent).
    direct: Option<File>,
    _lock: ImageLock,
}

impl RawDisk {
    /// Opens `path` as a raw image, taking QEMU-compatible locks.
    pub fn open(path: &Path, writable: bool, force_share: bool, probed: bool) -> Result<RawDisk> {
        Self::open_with(path, writable, force_share, probed, false)
    }

    /// Like [`RawDisk::open`]; `direct` adds an O_DIRECT descriptor for
    /// aligned data I/O (bypassing the host page cache).
    pub fn open_with(
        path: &Path,
        writable: bool,
        force_share: bool,
        probed: bool,
        direct: bool,
    ) -> Result<RawDisk> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            return Err(BlockError::Unsupported {
                path: path.to_path_buf(),
                msg: "is a directory".into(),
            });
        }
        let mode = match (writable, force_share) {
            (true, _) => LockMode::ReadWrite,
            (false, false) => LockMode::ReadOnly,
            (false, true) => LockMode::ForceShare,
        };
        let lock = ImageLock::acquire(&file, path, mode)?;
        let size = file_size(&file).map_err(|source| BlockError::Io {
            path: path.to_path_buf(),
            op: "size",
            source,
        })?;
        Ok(RawDisk {
            file,
            path: path.to_path_buf(),
            size,
            read_only: !writable,
            probed,
            direct: if direct {
                Some(open_direct(path, writable)?)
            } else {
                None
            },
            _lock: lock,
        })
    }

    /// The descriptor for one data transfer: the O_DIRECT one when the
    /// buffer, length and offset meet its alignment.
    fn fd_for(&self, ptr: *const u8, len: usize, pos: u64) -> &File {
        match &self.direct {
            Some(d)
                if (ptr as usize).is_multiple_of(DIRECT_ALIGN)
                    && len.is_multiple_of(DIRECT_ALIGN)
                    && pos.is_multiple_of(DIRECT_ALIGN as u64) =>
            {
                d
            }
            _ => &self.file,
        }
    }

    /// Moves the guest buffers `spans` (contiguous on disk from `offset`)
    /// with one preadv/pwritev per run of buffers that go to the same
    /// descriptor: a request split into many guest pages stays one host I/O
    /// (one device request under O_DIRECT) instead of one per page.
    fn transfer(&self, offset: u64, spans: &[Span], dir: Direction) -> std::io::Result<()> {
        let mut pos = offset;
        let mut i = 0;
        while i < spans.len() {
            let fd = self.fd_for(spans[i].0, spans[i].1, pos);
            let start = pos;
            let mut iovs = Vec::with_capacity((spans.len() - i).min(MAX_IOVECS));
            while i < spans.len() && iovs.len() < MAX_IOVECS {
                let (ptr, len) = spans[i];
                if !std::ptr::eq(self.fd_for(ptr, len, pos), fd) {
                    break;
                }
                iovs.push(libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: len,
                });
                pos += len as u64;
                i += 1;
            }
            vectored_all(fd, &mut iovs, start, dir)?;
        }
        Ok(())
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

    /// QEMU's rule for probed raw images: a write must not turn the first
    /// bytes into a format magic.
    fn check_probe_change(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> Result<()> {
        if !self.probed || offset >= QCOW2_MAGIC.len() as u64 {
            return Ok(());
        }
        let mut head = [0u8; 4];
        pread_all(&self.file, head.as_mut_ptr(), head.len(), 0)
            .map_err(|e| self.io_err("read", e))?;
        // Overlay the bytes this request writes into the first 4 bytes.
        let mut pos = offset;
        for b in bufs {
            if pos >= head.len() as u64 {
                break;
            }
            let start = pos as usize;
            let n = (head.len() - start).min(b.len());
            b.subslice(0, n)
                .map_err(|e| self.io_err("write", std::io::Error::other(e)))?
                .copy_to(&mut head[start..start + n]);
            pos += b.len() as u64;
        }
        if head == QCOW2_MAGIC {
            return Err(BlockError::ProbedRawHeader {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        let off = i64::try_from(offset).map_err(std::io::Error::other)?;
        let l = i64::try_from(len).map_err(std::io::Error::other)?;
        // SAFETY: fallocate on an fd we own; no memory is passed.
        let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn write_zero_buffers(&self, mut offset: u64, len: u64) -> Result<()> {
        let zeroes = vec![0u8; 1 << 20];
        let end = offset + len;
        while offset < end {
            let n = ((end - offset) as usize).min(zeroes.len());
            pwrite_all(&self.file, zeroes.as_ptr(), n, offset)
                .map_err(|e| self.io_err("write zeroes", e))?;
            offset += n as u64;
        }
        Ok(())
    }
}

/// Alignment of O_DIRECT transfers: the 512-byte logical sector of
/// practically every host disk (a 4Kn disk makes such requests fail with
/// EINVAL, reported to the guest as an I/O error).
const DIRECT_ALIGN: usize = 512;

fn open_direct(path: &Path, writable: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Size of an open file or block device.
pub(crate) fn file_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // Block devices report 0 in metadata; seeking to the end works for both.
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

/// `pread` until `len` bytes are read; reading past EOF yields zeroes.
pub(crate) fn pread_all(file: &File, ptr: *mut u8, len: usize, offset: u64) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let off = i64::try_from(offset + done as u64).map_err(std::io::Error::other)?;
        // SAFETY: `ptr..ptr+len` is writable memory owned by the caller for the
        // duration of the call (a guest-memory guard or a local buffer).
        let ret = unsafe { libc::pread(file.as_raw_fd(), ptr.add(done).cast(), len - done, off) };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if ret == 0 {
            // SAFETY: same buffer as above, zero-fill the part past EOF.
            unsafe { std::ptr::write_bytes(ptr.add(done), 0, len - done) };
            return Ok(());
        }
        done += ret as usize;
    }
    Ok(())
}

/// A guest buffer: start and length, valid for the request's duration.
type Span = (*mut u8, usize);

/// Most iovecs one preadv/pwritev takes (Linux IOV_MAX).
const MAX_IOVECS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// preadv/pwritev until every iovec is done; a read past EOF zero-fills the
/// rest (as `pread_all` does).
fn vectored_all(
    file: &File,
    iovs: &mut [libc::iovec],
    offset: u64,
    dir: Direction,
) -> std::io::Result<()> {
    let mut first = 0;
    let mut done = 0u64;
    while first < iovs.len() {
        if iovs[first].iov_len == 0 {
            first += 1;
            continue;
        }
        let off = i64::try_from(offset + done).map_err(std::io::Error::other)?;
        let rest = &iovs[first..];
        // At most MAX_IOVECS (1024) entries: fits a c_int.
        let count = rest.len() as libc::c_int;
        // SAFETY: every iovec points into a guest-memory guard or caller
        // buffer that stays valid for this call; preadv writes and pwritev
        // reads only within the iovecs' lengths.
        let ret = unsafe {
            match dir {
                Direction::Read => libc::preadv(file.as_raw_fd(), rest.as_ptr(), count, off),
                Direction::Write => libc::pwritev(file.as_raw_fd(), rest.as_ptr(), count, off),
            }
        };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if ret == 0 {
            if dir == Direction::Write {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            for iov in &iovs[first..] {
                // SAFETY: as above; zero-fill the part past EOF.
                unsafe { std::ptr::write_bytes(iov.iov_base.cast::<u8>(), 0, iov.iov_len) };
            }
            return Ok(());
        }
        let mut n = ret as usize;
        done += n as u64;
        while n > 0 && first < iovs.len() {
            let iov = &mut iovs[first];
            if n >= iov.iov_len {
                n -= iov.iov_len;
                first += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n).cast() };
                iov.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// `pwrite` until all `len` bytes are written.
pub(crate) fn pwrite_all(
    file: &File,
    ptr: *const u8,
    len: usize,
    offset: u64,
) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let off = i64::try_from(offset + done as u64).map_err(std::io::Error::other)?;
        // SAFETY: `ptr..ptr+len` is readable memory owned by the caller for the call.
        let ret = unsafe { libc::pwrite(file.as_raw_fd(), ptr.add(done).cast(), len - done, off) };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if ret == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        done += ret as usize;
    }
    Ok(())
}

impl DiskBackend for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_vectored(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> Result<()> {
        check_range(offset, sg_len(bufs), self.size)?;
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
        let spans: Vec<Span> = guards
            .iter()
            .zip(bufs)
            .map(|(g, b)| (g.as_ptr(), b.len()))
            .collect();
        self.transfer(offset, &spans, Direction::Read)
            .map_err(|e| self.io_err("read", e))
    }

    fn write_vectored(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> Result<()> {
        self.check_writable()?;
        check_range(offset, sg_len(bufs), self.size)?;
        self.check_probe_change(offset, bufs)?;
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard()).collect();
        // pwritev only reads through these pointers.
        let spans: Vec<Span> = guards
            .iter()
            .zip(bufs)
            .map(|(g, b)| (g.as_ptr().cast_mut(), b.len()))
            .collect();
        self.transfer(offset, &spans, Direction::Write)
            .map_err(|e| self.io_err("write", e))
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| self.io_err("flush", e))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        if self
            .fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
            .is_err()
        {
            self.write_zero_buffers(offset, len)?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        if offset < QCOW2_MAGIC.len() as u64 && self.probed {
            // Zeroes never form the magic, nothing to check.
        }
        if self
            .fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, len)
            .is_ok()
            || self
                .fallocate(
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset,
                    len,
                )
                .is_ok()
        {
            return Ok(());
        }
        self.write_zero_buffers(offset, len)
    }

    fn block_status(&self, offset: u64, max_len: u64) -> Result<(bool, u64)> {
        let end = offset.saturating_add(max_len).min(self.size);
        if offset >= end {
            return Ok((false, 0));
        }
        let Ok(off) = i64::try_from(offset) else {
            return Ok((true, end - offset));
        };
        // SAFETY: lseek on an fd we own; pread/pwrite do not use the position.
        let data = unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                return Ok((false, end - offset)); // hole until EOF
            }
            return Ok((true, end - offset)); // SEEK_DATA unsupported: assume data
        }
        let data = data as u64;
        if data > offset {
            return Ok((false, data.min(end) - offset));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_HOLE) };
        if hole < 0 {
            return Ok((true, end - offset));
        }
        Ok((true, (hole as u64).min(end).max(offset + 1) - offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_file(size: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(size).unwrap();
        f
    }

    #[test]
    fn write_read_roundtrip_scatter_gather() {
        let f = raw_file(1 << 20);
        let d = RawDisk::open(f.path(), true, false, false).unwrap();
        let mut a = vec![1u8; 100];
        let mut b = vec![2u8; 4000];
        let sg = [
            VolatileSlice::from(a.as_mut_slice()),
            VolatileSlice::from(b.as_mut_slice()),
        ];
        d.write_vectored(513, &sg).unwrap();
        let mut out = vec![0u8; 4100];
        d.read_at(513, &mut out).unwrap();
        assert!(out[..100].iter().all(|&x| x == 1));
        assert!(out[100..].iter().all(|&x| x == 2));
    }

    #[test]
    fn request_past_end_is_refused() {
        let f = raw_file(4096);
        let d = RawDisk::open(f.path(), true, false, false).unwrap();
        let mut buf = [0u8; 512];
        assert!(matches!(
            d.read_at(4000, &mut buf),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(d.write_at(u64::MAX - 10, &buf).is_err());
        assert!(d.discard(4096, 1).is_err());
    }

    #[test]
    fn probed_raw_cannot_become_qcow2() {
        let f = raw_file(4096);
        let d = RawDisk::open(f.path(), true, false, true).unwrap();
        let err = d.write_at(0, b"QFI\xfbxxxx").unwrap_err();
        assert!(matches!(err, BlockError::ProbedRawHeader { .. }));
        // Split over two writes: the second completes the magic.
        d.write_at(0, b"QF").unwrap();
        assert!(d.write_at(2, b"I\xfb").is_err());
        // Explicit raw allows it.
        drop(d);
        let d = RawDisk::open(f.path(), true, false, false).unwrap();
        d.write_at(0, b"QFI\xfb").unwrap();
    }

    #[test]
    fn discard_and_write_zeroes_read_zero() {
        let f = raw_file(1 << 20);
        let d = RawDisk::open(f.path(), true, false, false).unwrap();
        d.write_at(0, &vec![7u8; 1 << 20]).unwrap();
        d.discard(4096, 8192).unwrap();
        d.write_zeroes(100, 50).unwrap();
        let mut out = vec![0u8; 1 << 20];
        d.read_at(0, &mut out).unwrap();
        assert!(out[4096..12288].iter().all(|&x| x == 0));
        assert!(out[100..150].iter().all(|&x| x == 0));
        assert_eq!(out[99], 7);
        assert_eq!(out[12288], 7);
    }

    #[test]
    fn read_only_refuses_writes() {
        let f = raw_file(4096);
        let d = RawDisk::open(f.path(), false, false, false).unwrap();
        assert!(matches!(
            d.write_at(0, &[1]),
            Err(BlockError::ReadOnly { .. })
        ));
    }

    #[test]
    fn many_scattered_segments_keep_their_order_across_direct_and_buffered_runs() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        let f = tempfile::NamedTempFile::new_in(dir).unwrap();
        f.as_file().set_len(8 << 20).unwrap();
        let d = RawDisk::open_with(f.path(), true, false, false, true).unwrap();
        // 1500 pages (more than one preadv takes), out of order in memory,
        // with a 512-byte unaligned segment in the middle.
        const PAGES: usize = 1500;
        let mut backing = vec![0u8; (PAGES + 2) * 4096];
        let base = backing.as_ptr().align_offset(4096);
        let (_, pages) = backing.split_at_mut(base);
        let mut chunks: Vec<&mut [u8]> = pages.chunks_mut(4096).take(PAGES).collect();
        for (i, c) in chunks.iter_mut().enumerate() {
            c.fill((i % 251) as u8);
        }
        chunks.reverse();
        let mut odd = vec![0x5au8; 513];
        let sg = scatter(&mut chunks, &mut odd[1..]);
        d.write_vectored(4096, &sg).unwrap();
        drop(sg);
        let want = gather(&chunks, &odd[1..]);
        let bytes = std::fs::read(f.path()).unwrap();
        assert!(bytes[4096..4096 + want.len()] == want[..]);
        // Read back into zeroed buffers through the same scatter list.
        for c in chunks.iter_mut() {
            c.fill(0);
        }
        odd.fill(0);
        let sg = scatter(&mut chunks, &mut odd[1..]);
        d.read_vectored(4096, &sg).unwrap();
        drop(sg);
        assert!(gather(&chunks, &odd[1..]) == want);
    }

    /// The scatter list of the test above: the pages, with `odd` in the middle.
    fn scatter<'a>(pages: &'a mut [&mut [u8]], odd: &'a mut [u8]) -> Vec<VolatileSlice<'a>> {
        let middle = pages.len() / 2;
        let mut sg: Vec<VolatileSlice> = pages
            .iter_mut()
            .map(|c| VolatileSlice::from(&mut c[..]))
            .collect();
        sg.insert(middle, VolatileSlice::from(odd));
        sg
    }

    /// What the disk holds after the scatter list was written, in order.
    fn gather(pages: &[&mut [u8]], odd: &[u8]) -> Vec<u8> {
        let middle = pages.len() / 2;
        let mut out = Vec::new();
        for (i, c) in pages.iter().enumerate() {
            if i == middle {
                out.extend_from_slice(odd);
            }
            out.extend_from_slice(c);
        }
        out
    }

    #[test]
    fn direct_io_serves_aligned_and_unaligned_buffers() {
        // tmpfs has no O_DIRECT: use the build directory's file system.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        let f = tempfile::NamedTempFile::new_in(dir).unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let d = RawDisk::open_with(f.path(), true, false, false, true).unwrap();
        assert!(d.direct.is_some());
        // A 4096-aligned buffer goes through O_DIRECT, an odd one through
        // the buffered descriptor; both land.
        let mut aligned = vec![0u8; 8192 + 4096];
        let off = aligned.as_ptr().align_offset(4096);
        let buf = &mut aligned[off..off + 4096];
        buf.fill(0xab);
        d.write_at(4096, buf).unwrap();
        let mut odd = vec![0xcdu8; 513];
        d.write_at(8192, &odd[1..]).unwrap();
        d.flush().unwrap();
        let mut back = vec![0u8; 4096];
        d.read_at(4096, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0xab));
        d.read_at(8192, &mut odd[1..]).unwrap();
        assert!(odd[1..].iter().all(|&b| b == 0xcd));
        let bytes = std::fs::read(f.path()).unwrap();
        assert!(bytes[4096..8192].iter().all(|&b| b == 0xab));
        assert!(bytes[8192..8704].iter().all(|&b| b == 0xcd));
    }
}
