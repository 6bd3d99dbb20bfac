//! `ivmm img convert`: copies the guest-visible contents of an image (its
//! backing chain flattened) into a new raw or qcow2 image. Zero areas are not
//! written, so outputs stay sparse; qcow2 output goes through the streaming
//! writer, which also implements `-c` (zlib-compressed clusters).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use devices::block::create::{create_raw, Prealloc, Qcow2Options};
use devices::block::qcow2::resolve_backing;
use devices::block::writer::{compress_cluster, ClusterData, Qcow2StreamWriter};
use devices::block::{probe_format, DiskBackend, ImageFormat, RawDisk};

use super::{open, opt_format, opts, parse_format, Progress};

/// `convert [-f FMT] [-O FMT] [-c] [-o OPTS] [-B BACKING [-F FMT]] [-p] SRC DST`
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Source format (probed if omitted).
    #[arg(short = 'f')]
    format: Option<String>,
    /// Output format.
    #[arg(short = 'O', default_value = "raw")]
    out_format: String,
    /// Write compressed clusters (qcow2 only).
    #[arg(short = 'c')]
    compress: bool,
    /// Output format options.
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Make the output an overlay of this backing file (only differences are written).
    #[arg(short = 'B')]
    backing: Option<String>,
    /// Format of the -B backing file.
    #[arg(short = 'F')]
    backing_format: Option<String>,
    /// Show progress on a terminal.
    #[arg(short = 'p')]
    progress: bool,
    /// Target cache mode: unsafe (default, no flush, as qemu-img), writeback,
    /// writethrough, none, directsync (flush at the end).
    #[arg(short = 't', default_value = "unsafe")]
    cache: String,
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    #[arg(short = 'q')]
    quiet: bool,
    src: PathBuf,
    dst: PathBuf,
}

fn is_zero(b: &[u8]) -> bool {
    // Compare 16 bytes at a time; the tail byte-wise.
    let (pre, mid, post) = {
        // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets bytes.
        unsafe { b.align_to::<u128>() }
    };
    pre.iter().all(|&x| x == 0) && mid.iter().all(|&x| x == 0) && post.iter().all(|&x| x == 0)
}

pub(super) fn convert(a: ConvertArgs) -> anyhow::Result<i32> {
    let out_format = parse_format(&a.out_format)?;
    let co = opts::parse_create_options(&a.options, out_format)?;
    if a.compress && out_format != ImageFormat::Qcow2 {
        bail!("compression is only supported with -O qcow2");
    }
    if a.backing.is_some() && out_format != ImageFormat::Qcow2 {
        bail!("-B is only supported with -O qcow2");
    }
    if co.prealloc != Prealloc::Off && out_format == ImageFormat::Qcow2 {
        bail!("preallocation is not supported by ivmm img convert for qcow2 output");
    }
    let sync = match a.cache.as_str() {
        "unsafe" => false,
        "writeback" | "writethrough" | "none" | "directsync" => true,
        o => bail!("invalid cache mode '{o}'"),
    };
    if a.dst.is_dir() {
        bail!("could not create '{}': is a directory", a.dst.display());
    }
    let src = open(&a.src, opt_format(&a.format)?, false, a.force_share)?;
    let existed = a.dst.exists();
    let size = src.size();
    let mut progress = Progress::new(a.progress && !a.quiet);
    match out_format {
        ImageFormat::Raw => {
            create_raw(&a.dst, size, co.prealloc)?;
            let dst = RawDisk::open(&a.dst, true, false, false)?;
            convert_to_raw(src.as_ref(), &dst, &mut progress)?;
            if sync {
                dst.flush()?;
            }
        }
        ImageFormat::Qcow2 => {
            let backing = match &a.backing {
                None => None,
                Some(b) => {
                    let resolved = resolve_backing(&a.dst, b);
                    let fmt = match opt_format(&a.backing_format)? {
                        Some(f) => f,
                        None => probe_format(&resolved).with_context(|| {
                            format!("could not open backing file '{}'", resolved.display())
                        })?,
                    };
                    let disk = open(&resolved, Some(fmt), false, true).with_context(|| {
                        format!("could not open backing file '{}'", resolved.display())
                    })?;
                    Some((b.clone(), fmt, disk))
                }
            };
            let q = Qcow2Options {
                size,
                backing: backing.as_ref().map(|(n, f, _)| (n.clone(), *f)),
                ..co
            };
            let res = convert_to_qcow2(
                src.as_ref(),
                &a.dst,
                &q,
                a.compress,
                backing.as_ref().map(|b| b.2.as_ref()),
                &mut progress,
                sync,
            );
            if let Err(e) = res {
                // Never delete a file we did not create (it may be in use).
                if !existed {
                    let _ = std::fs::remove_file(&a.dst);
                }
                return Err(e);
            }
        }
    }
    progress.finish();
    Ok(0)
}

fn convert_to_raw(
    src: &dyn DiskBackend,
    dst: &RawDisk,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    const BLOCK: usize = 64 << 10;
    let size = src.size();
    let mut buf = vec![0u8; super::CHUNK as usize];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(super::CHUNK);
        let (data, len) = src.block_status(off, n)?;
        if !data {
            off += len.clamp(1, n);
            progress.update(off, size);
            continue;
        }
        let n = len.clamp(1, n) as usize;
        src.read_at(off, &mut buf[..n])?;
        let mut i = 0;
        while i < n {
            let e = (i + BLOCK).min(n);
            // Extend a run of non-zero blocks into one write.
            if is_zero(&buf[i..e]) {
                i = e;
                continue;
            }
            let mut j = e;
            while j < n {
                let k = (j + BLOCK).min(n);
                if is_zero(&buf[j..k]) {
                    break;
                }
                j = k;
            }
            dst.write_at(off + i as u64, &buf[i..j])?;
            i = j;
        }
        off += n as u64;
        progress.update(off, size);
    }
    Ok(())
}

/// What to store for one cluster, decided on a worker thread.
enum Decision {
    Skip,
    Zero,
    Data,
    Compressed(Vec<u8>),
}

fn convert_to_qcow2(
    src: &dyn DiskBackend,
    dst: &std::path::Path,
    q: &Qcow2Options,
    compress: bool,
    backing: Option<&dyn DiskBackend>,
    progress: &mut Progress,
    sync: bool,
) -> anyhow::Result<()> {
    let size = src.size();
    let cs = q.cluster_size;
    let mut w = Qcow2StreamWriter::create(dst, q)?;
    let chunk = super::CHUNK.max(cs).next_multiple_of(cs);
    let mut buf = vec![0u8; chunk as usize];
    let mut bbuf = vec![0u8; chunk as usize];
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(chunk);
        let (data, len) = src.block_status(off, n)?;
        let aligned_len = len.next_multiple_of(cs).min(n);
        if !data && backing.is_none() && len >= cs {
            // Skip whole unallocated clusters without reading them.
            let skip = len / cs * cs;
            off += skip;
            progress.update(off, size);
            continue;
        }
        let n = if data { n } else { aligned_len.max(cs).min(n) };
        let nu = n as usize;
        src.read_at(off, &mut buf[..nu])?;
        let have_backing = if let Some(b) = backing {
            let bsize = b.size();
            bbuf[..nu].fill(0);
            if off < bsize {
                let bn = (bsize - off).min(n) as usize;
                b.read_at(off, &mut bbuf[..bn])?;
            }
            true
        } else {
            false
        };
        let clusters: Vec<(usize, usize)> = (0..nu)
            .step_by(cs as usize)
            .map(|s| (s, (s + cs as usize).min(nu)))
            .collect();
        let decide = |&(s, e): &(usize, usize)| -> Decision {
            let d = &buf[s..e];
            if have_backing && d == &bbuf[s..e] {
                return Decision::Skip;
            }
            if is_zero(d) {
                return if have_backing {
                    Decision::Zero
                } else {
                    Decision::Skip
                };
            }
            if compress {
                let mut full;
                let input = if d.len() < cs as usize {
                    full = d.to_vec();
                    full.resize(cs as usize, 0);
                    &full[..]
                } else {
                    d
                };
                if let Some(z) = compress_cluster(input, cs as usize) {
                    return Decision::Compressed(z);
                }
            }
            Decision::Data
        };
        let decisions: Vec<Decision> = if compress && threads > 1 && clusters.len() > 1 {
            let per = clusters.len().div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = clusters
                    .chunks(per)
                    .map(|part| s.spawn(move || part.iter().map(decide).collect::<Vec<_>>()))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        } else {
            clusters.iter().map(decide).collect()
        };
        if decisions.len() != clusters.len() {
            bail!("compression worker failed");
        }
        for ((s, e), d) in clusters.iter().zip(decisions) {
            let gc = (off + *s as u64) / cs;
            match d {
                Decision::Skip => {}
                Decision::Zero => w.write_cluster(gc, ClusterData::Zero)?,
                Decision::Data => w.write_cluster(gc, ClusterData::Data(&buf[*s..*e]))?,
                Decision::Compressed(z) => w.write_cluster(gc, ClusterData::Compressed(&z))?,
            }
        }
        off += n;
        progress.update(off, size);
    }
    w.finish(sync)?;
    Ok(())
}
