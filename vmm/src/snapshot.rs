//! `--snapshot`: every disk runs on a fresh qcow2 overlay whose backing file
//! is the image (opened read-only); the overlays live in a private temporary
//! directory that is removed when ivmm exits (like QEMU's `-snapshot`).

use std::path::{Path, PathBuf};

use devices::block::create::{create_qcow2, CreateError, Qcow2Options};
use devices::block::{open_disk, probe_format, ImageFormat, OpenOptions};

use crate::config::{DiskConfig, VmConfig};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("--snapshot: cannot create a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("--snapshot: --disk {path}")]
    Base {
        path: String,
        #[source]
        source: devices::block::BlockError,
    },
    #[error("--snapshot: cannot create the overlay for {path}")]
    Overlay {
        path: String,
        #[source]
        source: CreateError,
    },
}

/// The temporary directory holding the overlays; removed on drop.
#[derive(Debug)]
pub struct Overlays {
    dir: PathBuf,
}

impl Drop for Overlays {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            log::warn!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

fn temp_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!("ivmm-snapshot-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary directory name"))
}

/// Returns `config` with every disk replaced by an overlay on it.
pub fn prepare(config: &VmConfig) -> Result<(VmConfig, Overlays), SnapshotError> {
    let dir = temp_dir().map_err(SnapshotError::TempDir)?;
    let overlays = Overlays { dir };
    let mut out = config.clone();
    for (i, disk) in config.disks.iter().enumerate() {
        let overlay = overlays.dir.join(format!("disk{i}.qcow2"));
        out.disks[i] = overlay_for(disk, &overlay)?;
    }
    Ok((out, overlays))
}

fn overlay_for(disk: &DiskConfig, overlay: &Path) -> Result<DiskConfig, SnapshotError> {
    let shown = disk.path.display().to_string();
    let base_err = |source| SnapshotError::Base {
        path: shown.clone(),
        source,
    };
    let base = std::fs::canonicalize(&disk.path).map_err(|source| {
        base_err(devices::block::BlockError::Open {
            path: disk.path.clone(),
            source,
        })
    })?;
    let format: ImageFormat = match disk.format {
        Some(f) => f,
        None => probe_format(&base).map_err(base_err)?,
    };
    let size = open_disk(
        &base,
        &OpenOptions {
            format: Some(format),
            ..OpenOptions::default()
        },
    )
    .map_err(base_err)?
    .size();
    create_qcow2(
        overlay,
        &Qcow2Options {
            size,
            backing: Some((base.display().to_string(), format)),
            ..Qcow2Options::default()
        },
    )
    .map_err(|source| SnapshotError::Overlay {
        path: shown.clone(),
        source,
    })?;
    Ok(DiskConfig {
        path: overlay.to_path_buf(),
        format: Some(ImageFormat::Qcow2),
        ..disk.clone()
    })
}
