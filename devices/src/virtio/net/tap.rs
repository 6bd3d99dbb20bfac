//! A TAP device as a virtio-net backend: `/dev/net/tun` opened with
//! IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, so every frame read or written starts
//! with the 12-byte `virtio_net_hdr_v1` the guest and the host kernel
//! exchange unchanged (checksum and segmentation offloads included).
//!
//! Attaching to an interface that does not exist creates it (a
//! non-persistent TAP that disappears when ivmm exits), as QEMU does; both
//! need CAP_NET_ADMIN unless the TAP was made persistent for this user.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{NetBackend, NET_HDR_LEN};

/// Where the TUN/TAP driver lives.
const TUN_PATH: &str = "/dev/net/tun";

/// Errors opening a TAP device; each names the interface.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap {0:?}: a TAP name is 1 to 15 characters without '/', ':' or spaces")]
    BadName(String),
    #[error("tap {name}: cannot open {TUN_PATH}: {source} (is the tun module loaded?)")]
    OpenTun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tap {name}: creating or attaching a TAP device needs CAP_NET_ADMIN (or a persistent TAP owned by this user)")]
    Permission { name: String },
    #[error(
        "tap {name}: the interface is busy (another process holds it, or it is not a TAP device)"
    )]
    Busy { name: String },
    #[error("tap {name}: {what}: {source}")]
    Ioctl {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// An open TAP device, non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Whether `name` can name a network interface (IFNAMSIZ, no separators).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl Tap {
    /// Opens (creating it if absent) the TAP interface `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_owned()));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission {
                    name: name.to_owned(),
                },
                _ => TapError::OpenTun {
                    name: name.to_owned(),
                    source,
                },
            })?;

        // SAFETY: ifreq is plain old data (a name array and a union of
        // integers/arrays/pointers); all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one struct ifreq; `ifr` is a
        // live, properly sized one and the fd is an open /dev/net/tun.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            let source = std::io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission {
                    name: name.to_owned(),
                },
                Some(libc::EBUSY) | Some(libc::EINVAL) => TapError::Busy {
                    name: name.to_owned(),
                },
                _ => TapError::Ioctl {
                    name: name.to_owned(),
                    what: "TUNSETIFF",
                    source,
                },
            });
        }

        let hdr_len = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at a live c_int.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if rc < 0 {
            return Err(TapError::Ioctl {
                name: name.to_owned(),
                what: "TUNSETVNETHDRSZ",
                source: std::io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name: name.to_owned(),
        };
        // No offloads until a guest driver accepts some.
        tap.set_offload(0).map_err(|source| TapError::Ioctl {
            name: name.to_owned(),
            what: "TUNSETOFFLOAD",
            source,
        })?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }

    fn recv_slices(&self, slices: &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<usize> {
        if slices.len() > 1024 {
            return Err(std::io::ErrorKind::Unsupported.into());
        }
        // The guards keep the pointers valid until readv returns.
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
        let iov: Vec<libc::iovec> = guards
            .iter()
            .zip(slices)
            .map(|(g, s)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        // SAFETY: each iovec points into guest memory that the slices (and
        // their guards) keep mapped for this call; readv writes at most
        // their lengths. At most 1024 iovecs (checked above).
        let n = unsafe {
            libc::readv(
                self.file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn send_slices(
        &self,
        slices: &[vm_memory::VolatileSlice<'_>],
        scratch: &mut Vec<u8>,
    ) -> std::io::Result<usize> {
        // writev takes at most IOV_MAX (1024) pieces; drivers never send
        // that many, a hostile one gets the copying path.
        if slices.len() > 1024 {
            return self.send(super::gather_slices(slices, scratch));
        }
        // The guards keep the pointers valid until writev returns.
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
        let iov: Vec<libc::iovec> = guards
            .iter()
            .zip(slices)
            .map(|(g, s)| libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            })
            .collect();
        let count = libc::c_int::try_from(iov.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: each iovec points into guest memory that the slices (and
        // their guards) keep mapped for this call; writev only reads them.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), count) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (no pointer);
        // the fd is an open TAP.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_touching_the_system() {
        for name in ["", "a/b", "sixteen-chars-xx", "tap 0", "a:1"] {
            let err = Tap::open(name).unwrap_err();
            assert!(matches!(err, TapError::BadName(_)), "{name}: {err}");
            assert!(err.to_string().contains("tap "), "{err}");
        }
        assert!(valid_name("tap0"));
        assert!(valid_name("fifteen-chars-x"));
    }
}
