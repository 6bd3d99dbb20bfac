//! `ivmm img commit` and `ivmm img rebase`: operations on backing chains.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use devices::block::header::rewrite_backing;
use devices::block::qcow2::{backing_chain, resolve_backing, TopStatus};
use devices::block::{
    probe_format, DiskBackend, ImageFormat, ImageLock, LockMode, OpenOptions, Qcow2Disk,
};

use super::{open, opt_format, require_file, Progress, CHUNK};

/// `commit [-f FMT] [-d] [-p] OVERLAY`
#[derive(Debug, Args)]
pub struct CommitArgs {
    #[arg(short = 'f')]
    format: Option<String>,
    /// Do not empty the overlay afterwards.
    #[arg(short = 'd')]
    keep: bool,
    #[arg(short = 'p')]
    progress: bool,
    #[arg(short = 'q')]
    quiet: bool,
    file: PathBuf,
}

/// `rebase [-u] [-f FMT] -b NEWBASE [-F FMT] [-p] OVERLAY`
#[derive(Debug, Args)]
pub struct RebaseArgs {
    #[arg(short = 'f')]
    format: Option<String>,
    /// Unsafe: only rewrite the header, do not copy data.
    #[arg(short = 'u')]
    unsafe_mode: bool,
    /// New backing file ("" for none); relative names are relative to OVERLAY.
    #[arg(short = 'b')]
    backing: String,
    /// Format of the new backing file.
    #[arg(short = 'F')]
    backing_format: Option<String>,
    #[arg(short = 'p')]
    progress: bool,
    #[arg(short = 'q')]
    quiet: bool,
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    file: PathBuf,
}

fn top_only(path: &Path, writable: bool) -> anyhow::Result<Qcow2Disk> {
    Ok(Qcow2Disk::open(
        path,
        &OpenOptions {
            format: Some(ImageFormat::Qcow2),
            writable,
            force_share: false,
            open_backing: false,
            direct: false,
        },
    )?)
}

/// Grows `path` (raw or qcow2) to at least `size` bytes.
fn grow(path: &Path, format: ImageFormat, size: u64) -> anyhow::Result<()> {
    match format {
        ImageFormat::Raw => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .with_context(|| format!("could not open '{}'", path.display()))?;
            let _l = ImageLock::acquire(&f, path, LockMode::ReadWrite)?;
            if f.metadata()?.len() < size {
                f.set_len(size)?;
            }
        }
        ImageFormat::Qcow2 => {
            let q = top_only(path, true)?;
            if q.size() < size {
                q.resize(size)?;
            }
        }
    }
    Ok(())
}

pub(super) fn commit(a: CommitArgs) -> anyhow::Result<i32> {
    require_file(&a.file)?;
    let format = match opt_format(&a.format)? {
        Some(f) => f,
        None => probe_format(&a.file)?,
    };
    if format != ImageFormat::Qcow2 {
        bail!(
            "'{}': only qcow2 images have a backing file to commit to",
            a.file.display()
        );
    }
    let chain = backing_chain(&a.file, format)?;
    let Some(base) = chain.get(1) else {
        bail!("'{}' does not have a backing file", a.file.display());
    };
    let top = top_only(&a.file, !a.keep)?;
    let size = top.size();
    grow(&base.path, base.format, size)?;
    let dst = open(&base.path, Some(base.format), true, false)?;
    let mut progress = Progress::new(a.progress && !a.quiet);
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0;
    while off < size {
        let (st, len) = top.top_status(off, (size - off).min(CHUNK))?;
        match st {
            TopStatus::Unallocated => {}
            TopStatus::Zero => dst.write_zeroes(off, len)?,
            TopStatus::Data => {
                let n = len as usize;
                top.read_at(off, &mut buf[..n])?;
                dst.write_at(off, &buf[..n])?;
            }
        }
        off += len;
        progress.update(off, size);
    }
    dst.flush()?;
    drop(dst);
    if !a.keep {
        top.make_empty()?;
    }
    progress.finish();
    if !a.quiet {
        println!("Image committed.");
    }
    Ok(0)
}

pub(super) fn rebase(a: RebaseArgs) -> anyhow::Result<i32> {
    require_file(&a.file)?;
    let format = match opt_format(&a.format)? {
        Some(f) => f,
        None => probe_format(&a.file)?,
    };
    if format != ImageFormat::Qcow2 {
        bail!("'{}': only qcow2 images can be rebased", a.file.display());
    }
    let new_backing = if a.backing.is_empty() {
        None
    } else {
        let resolved = resolve_backing(&a.file, &a.backing);
        let fmt = match opt_format(&a.backing_format)? {
            Some(f) => f,
            None if a.unsafe_mode => bail!("-u requires -F to name the new backing file format"),
            None => probe_format(&resolved).with_context(|| {
                format!("could not open new backing file '{}'", resolved.display())
            })?,
        };
        Some((resolved, fmt))
    };
    if !a.unsafe_mode {
        let overlay = Qcow2Disk::open(
            &a.file,
            &OpenOptions {
                format: Some(ImageFormat::Qcow2),
                writable: true,
                force_share: false,
                open_backing: true,
                direct: false,
            },
        )?;
        let new: Option<Box<dyn DiskBackend>> = match &new_backing {
            Some((p, f)) => {
                Some(open(p, Some(*f), false, a.force_share).with_context(|| {
                    format!("could not open new backing file '{}'", p.display())
                })?)
            }
            None => None,
        };
        let size = overlay.size();
        let mut progress = Progress::new(a.progress && !a.quiet);
        let mut old_buf = vec![0u8; CHUNK as usize];
        let mut new_buf = vec![0u8; CHUNK as usize];
        let mut off = 0;
        while off < size {
            let (st, len) = overlay.top_status(off, (size - off).min(CHUNK))?;
            if st == TopStatus::Unallocated {
                let n = len as usize;
                overlay.read_at(off, &mut old_buf[..n])?;
                new_buf[..n].fill(0);
                if let Some(nb) = &new {
                    let nsize = nb.size();
                    if off < nsize {
                        let m = (nsize - off).min(len) as usize;
                        nb.read_at(off, &mut new_buf[..m])?;
                    }
                }
                // Copy the old view wherever the new base differs (512-byte granularity).
                let mut i = 0;
                while i < n {
                    let e = (i + 65536).min(n);
                    if old_buf[i..e] != new_buf[i..e] {
                        overlay.write_at(off + i as u64, &old_buf[i..e])?;
                    }
                    i = e;
                }
            }
            off += len;
            progress.update(off, size);
        }
        overlay.flush()?;
        progress.finish();
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&a.file)
        .with_context(|| format!("could not open '{}'", a.file.display()))?;
    let _lock = ImageLock::acquire(&f, &a.file, LockMode::ReadWrite)?;
    rewrite_backing(
        &f,
        &a.file,
        new_backing.map(|(_, fmt)| (a.backing.clone(), fmt.name().to_string())),
    )?;
    Ok(0)
}
