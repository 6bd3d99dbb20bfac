//! virtio-blk requests (virtio 1.2 §5.2.6): parsing a descriptor chain into
//! a typed [`Request`] (a pure function of the chain, guest memory and the
//! disk's limits) and executing it on a [`DiskBackend`].
//!
//! Chain shape accepted: the 16-byte header in the first descriptor
//! (device-readable), data descriptors, and the status byte as the last
//! byte of the last descriptor (device-writable). This is what Linux and
//! every other driver we know produce.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use crate::block::DiskBackend;

/// Request types (§5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// Status values (§5.2.6).
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Length of the GET_ID string (§5.2.6: VIRTIO_BLK_ID_BYTES).
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// Sector size of the protocol, whatever the disk's block size (§5.2.6).
pub const SECTOR_SIZE: u64 = 512;
/// struct virtio_blk_outhdr: type, ioprio, sector.
const HEADER_LEN: u32 = 16;
/// struct virtio_blk_discard_write_zeroes: sector, num_sectors, flags.
const SEGMENT_LEN: u64 = 16;
/// Segment flag: the device may unmap (write zeroes) / must not (discard).
const SEGMENT_FLAG_UNMAP: u32 = 1;

/// A descriptor as the parser sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: GuestAddress,
    pub len: u32,
    pub write_only: bool,
}

/// What the device is willing to do, from its configuration.
#[derive(Debug, Clone)]
pub struct DiskLimits {
    pub capacity_sectors: u64,
    pub read_only: bool,
    pub discard: bool,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
}

/// A byte range of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskRange {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    Read { offset: u64 },
    Write { offset: u64 },
    Flush,
    GetId,
    Discard(Vec<DiskRange>),
    WriteZeroes(Vec<DiskRange>),
}

/// A validated request: every address lies in guest RAM, every range on
/// the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    /// Data buffers (device-writable for reads and GET_ID, readable otherwise).
    pub data: Vec<(GuestAddress, u32)>,
    pub status: GuestAddress,
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// There is no usable status byte (no writable last descriptor in RAM,
    /// a looping or cut chain): the request completes with nothing written.
    NoStatus(&'static str),
    /// The request fails with `status` written at `at`.
    Failed {
        at: GuestAddress,
        status: u8,
        why: &'static str,
    },
}

fn in_ram(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    len == 0 || GuestMemoryBackend::check_range(mem, addr, len as usize)
}

/// Parses a chain. `complete` is false when the chain was cut short (a
/// loop, a chain longer than the queue, an unreadable descriptor table).
pub fn parse(
    descs: &[Desc],
    complete: bool,
    mem: &GuestMemoryMmap,
    limits: &DiskLimits,
) -> Result<Request, ParseError> {
    if !complete {
        return Err(ParseError::NoStatus(
            "descriptor chain loops or is too long",
        ));
    }
    let (Some(last), Some(first)) = (descs.last(), descs.first()) else {
        return Err(ParseError::NoStatus("empty descriptor chain"));
    };
    if descs.len() < 2 {
        return Err(ParseError::NoStatus("chain has no header and status"));
    }
    if !last.write_only || last.len == 0 {
        return Err(ParseError::NoStatus("status descriptor is not writable"));
    }
    let status = last
        .addr
        .0
        .checked_add(u64::from(last.len) - 1)
        .map(GuestAddress)
        .filter(|a| in_ram(mem, *a, 1))
        .ok_or(ParseError::NoStatus("status byte outside guest RAM"))?;
    let fail = |status_code, why| ParseError::Failed {
        at: status,
        status: status_code,
        why,
    };
    let ioerr = |why| fail(VIRTIO_BLK_S_IOERR, why);

    if first.write_only {
        return Err(ioerr("request header is device-writable"));
    }
    if first.len < HEADER_LEN {
        return Err(ioerr("request header is too short"));
    }
    if !in_ram(mem, first.addr, HEADER_LEN) {
        return Err(ioerr("request header outside guest RAM"));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut header, first.addr)
        .map_err(|_| ioerr("request header unreadable"))?;
    let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);

    // The status descriptor may carry data in front of the status byte.
    let mut data: Vec<(GuestAddress, u32)> = Vec::with_capacity(descs.len());
    let middle = &descs[1..descs.len() - 1];
    for d in middle {
        if !in_ram(mem, d.addr, d.len) {
            return Err(ioerr("data buffer outside guest RAM"));
        }
    }
    let status_data = (last.len > 1).then_some((last.addr, last.len - 1));
    let data_len: u64 = middle.iter().map(|d| u64::from(d.len)).sum::<u64>()
        + status_data.map_or(0, |(_, l)| u64::from(l));
    let all_writable = middle.iter().all(|d| d.write_only);
    let all_readable = middle.iter().all(|d| !d.write_only) && status_data.is_none();
    data.extend(middle.iter().map(|d| (d.addr, d.len)));
    data.extend(status_data);
    data.retain(|(_, l)| *l > 0);

    let disk_range = |len: u64| -> Result<u64, ParseError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(ioerr("data length is not a multiple of 512"));
        }
        let offset = sector
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| ioerr("sector past the end of the disk"))?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| ioerr("sector past the end of the disk"))?;
        if end > limits.capacity_sectors.saturating_mul(SECTOR_SIZE) {
            return Err(ioerr("sector past the end of the disk"));
        }
        Ok(offset)
    };

    let kind = match req_type {
        VIRTIO_BLK_T_IN => {
            if !all_writable {
                return Err(ioerr("read into a device-readable buffer"));
            }
            RequestKind::Read {
                offset: disk_range(data_len)?,
            }
        }
        VIRTIO_BLK_T_OUT => {
            if !all_readable {
                return Err(ioerr("write from a device-writable buffer"));
            }
            if limits.read_only {
                return Err(ioerr("write to a read-only disk"));
            }
            RequestKind::Write {
                offset: disk_range(data_len)?,
            }
        }
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => {
            if !all_writable {
                return Err(ioerr("GET_ID into a device-readable buffer"));
            }
            RequestKind::GetId
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = req_type == VIRTIO_BLK_T_DISCARD;
            if discard && !limits.discard {
                return Err(fail(VIRTIO_BLK_S_UNSUPP, "discard is not enabled"));
            }
            if limits.read_only {
                return Err(ioerr("discard or write-zeroes on a read-only disk"));
            }
            if !all_readable {
                return Err(ioerr("segments in a device-writable buffer"));
            }
            let (max_seg, max_sectors) = if discard {
                (limits.max_discard_seg, limits.max_discard_sectors)
            } else {
                (limits.max_write_zeroes_seg, limits.max_write_zeroes_sectors)
            };
            if data_len == 0 || !data_len.is_multiple_of(SEGMENT_LEN) {
                return Err(ioerr("segment list has a bad length"));
            }
            if data_len / SEGMENT_LEN > u64::from(max_seg) {
                return Err(ioerr("too many segments"));
            }
            let bytes = read_buffers(mem, &data).ok_or_else(|| ioerr("segments unreadable"))?;
            let mut ranges = Vec::new();
            for seg in bytes.chunks_exact(SEGMENT_LEN as usize) {
                let mut s = [0u8; 8];
                s.copy_from_slice(&seg[0..8]);
                let seg_sector = u64::from_le_bytes(s);
                let num = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
                let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
                if flags & !SEGMENT_FLAG_UNMAP != 0 || (discard && flags != 0) {
                    return Err(fail(VIRTIO_BLK_S_UNSUPP, "unsupported segment flags"));
                }
                if num > max_sectors {
                    return Err(ioerr("segment larger than the device allows"));
                }
                let end = seg_sector.checked_add(u64::from(num));
                if !matches!(end, Some(e) if e <= limits.capacity_sectors) {
                    return Err(ioerr("segment past the end of the disk"));
                }
                ranges.push(DiskRange {
                    offset: seg_sector * SECTOR_SIZE,
                    len: u64::from(num) * SECTOR_SIZE,
                });
            }
            if discard {
                RequestKind::Discard(ranges)
            } else {
                RequestKind::WriteZeroes(ranges)
            }
        }
        _ => return Err(fail(VIRTIO_BLK_S_UNSUPP, "unknown request type")),
    };
    Ok(Request { kind, data, status })
}

/// Copies guest buffers (already checked to be in RAM) into one vector.
fn read_buffers(mem: &GuestMemoryMmap, data: &[(GuestAddress, u32)]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for &(addr, len) in data {
        let start = out.len();
        out.resize(start + len as usize, 0);
        mem.read_slice(&mut out[start..], addr).ok()?;
    }
    Some(out)
}

/// Volatile slices of guest RAM for the data buffers.
fn slices<'m>(
    mem: &'m GuestMemoryMmap,
    data: &[(GuestAddress, u32)],
) -> Option<Vec<VolatileSlice<'m>>> {
    let mut out = Vec::with_capacity(data.len());
    for &(addr, len) in data {
        for s in GuestMemoryBackend::get_slices(mem, addr, len as usize) {
            out.push(s.ok()?);
        }
    }
    Some(out)
}

/// Runs a parsed request. Returns the status and how many bytes the device
/// wrote into the data buffers.
pub fn execute(
    req: &Request,
    mem: &GuestMemoryMmap,
    disk: &dyn DiskBackend,
    serial: &[u8; VIRTIO_BLK_ID_BYTES],
) -> (u8, u32) {
    let data_len = || {
        req.data
            .iter()
            .map(|(_, l)| *l)
            .fold(0u32, u32::saturating_add)
    };
    let result = match &req.kind {
        RequestKind::Read { offset } => match slices(mem, &req.data) {
            Some(s) => disk.read_vectored(*offset, &s).map(|()| data_len()),
            None => return (VIRTIO_BLK_S_IOERR, 0),
        },
        RequestKind::Write { offset } => match slices(mem, &req.data) {
            Some(s) => disk.write_vectored(*offset, &s).map(|()| 0),
            None => return (VIRTIO_BLK_S_IOERR, 0),
        },
        RequestKind::Flush => disk.flush().map(|()| 0),
        RequestKind::GetId => {
            let mut left: &[u8] = serial;
            let mut written = 0u32;
            for &(addr, len) in &req.data {
                let n = left.len().min(len as usize);
                if n == 0 {
                    break;
                }
                if mem.write_slice(&left[..n], addr).is_err() {
                    return (VIRTIO_BLK_S_IOERR, written);
                }
                left = &left[n..];
                written += n as u32;
            }
            Ok(written)
        }
        RequestKind::Discard(ranges) => ranges
            .iter()
            .try_for_each(|r| disk.discard(r.offset, r.len))
            .map(|()| 0),
        RequestKind::WriteZeroes(ranges) => ranges
            .iter()
            .try_for_each(|r| disk.write_zeroes(r.offset, r.len))
            .map(|()| 0),
    };
    match result {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(e) => {
            log::warn!("virtio-blk: {e}");
            (VIRTIO_BLK_S_IOERR, 0)
        }
    }
}
