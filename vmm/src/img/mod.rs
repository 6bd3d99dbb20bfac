//! `ivmm img`: create, inspect, check, resize, convert, compare, commit,
//! rebase and benchmark disk images with the verbs, flags and exit codes of
//! `qemu-img`.

mod bench;
mod chain_ops;
mod convert;
mod info;
mod opts;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use devices::block::check::{check_qcow2, Repair};
use devices::block::create::{create_qcow2, create_raw, Qcow2Options};
use devices::block::{open_disk, probe_format, DiskBackend, ImageFormat, OpenOptions, Qcow2Disk};

pub use opts::parse_size;

/// Arguments of `ivmm img`.
#[derive(Debug, Args)]
pub struct ImgArgs {
    #[command(subcommand)]
    pub cmd: ImgCmd,
}

/// The qemu-img verbs.
#[derive(Debug, Subcommand)]
pub enum ImgCmd {
    /// Create a new image.
    Create(CreateArgs),
    /// Show information about an image.
    Info(InfoArgs),
    /// Check (and repair) the metadata of a qcow2 image.
    Check(CheckArgs),
    /// Change the virtual size of an image.
    Resize(ResizeArgs),
    /// Convert an image to another format (flattening its backing chain).
    Convert(convert::ConvertArgs),
    /// Compare the guest-visible contents of two images.
    Compare(CompareArgs),
    /// Write the contents of an overlay into its backing file.
    Commit(chain_ops::CommitArgs),
    /// Change the backing file of an overlay.
    Rebase(chain_ops::RebaseArgs),
    /// Benchmark sequential or random I/O on an image.
    Bench(bench::BenchArgs),
}

/// `create [-f FMT] [-o OPTS] [-b BACKING -F FMT] FILE [SIZE]`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image format (raw or qcow2).
    #[arg(short = 'f', default_value = "raw")]
    format: String,
    /// Format options, comma separated (cluster_size=, compat=, lazy_refcounts=, refcount_bits=, preallocation=).
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Backing file (stored as given; relative names are relative to FILE).
    #[arg(short = 'b')]
    backing: Option<String>,
    /// Backing file format.
    #[arg(short = 'F')]
    backing_format: Option<String>,
    /// Do not open the backing file (size must be given).
    #[arg(short = 'u')]
    unsafe_backing: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    file: PathBuf,
    /// Size with optional k, M, G, T, P, E suffix.
    #[arg(allow_hyphen_values = true)]
    size: Option<String>,
}

/// `info [-f FMT] [--output human|json] [--backing-chain] [-U] FILE`
#[derive(Debug, Args)]
pub struct InfoArgs {
    #[arg(short = 'f')]
    format: Option<String>,
    #[arg(long = "output", default_value = "human")]
    output: String,
    #[arg(long = "backing-chain")]
    backing_chain: bool,
    /// Open even if another process uses the image (no locks checked).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    file: PathBuf,
}

/// `check [-f FMT] [-r leaks|all] [--output human|json] [-U] FILE`
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(short = 'f')]
    format: Option<String>,
    #[arg(short = 'r')]
    repair: Option<String>,
    #[arg(long = "output", default_value = "human")]
    output: String,
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    #[arg(short = 'q')]
    quiet: bool,
    file: PathBuf,
}

/// `resize [-f FMT] [--shrink] FILE [+|-]SIZE`
#[derive(Debug, Args)]
pub struct ResizeArgs {
    #[arg(short = 'f')]
    format: Option<String>,
    #[arg(long)]
    shrink: bool,
    #[arg(short = 'q')]
    quiet: bool,
    file: PathBuf,
    #[arg(allow_hyphen_values = true)]
    size: String,
}

/// `compare [-f FMT] [-F FMT] [-s] [-U] [-p] A B`
#[derive(Debug, Args)]
pub struct CompareArgs {
    #[arg(short = 'f')]
    format_a: Option<String>,
    #[arg(short = 'F')]
    format_b: Option<String>,
    /// Strict: images of different sizes differ.
    #[arg(short = 's')]
    strict: bool,
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    #[arg(short = 'p')]
    progress: bool,
    #[arg(short = 'q')]
    quiet: bool,
    a: PathBuf,
    b: PathBuf,
}

/// Runs an `ivmm img` verb; returns the process exit code.
pub fn main(args: ImgArgs) -> anyhow::Result<i32> {
    match args.cmd {
        ImgCmd::Create(a) => create(a),
        ImgCmd::Info(a) => info::info(a),
        ImgCmd::Check(a) => check(a),
        ImgCmd::Resize(a) => resize(a),
        ImgCmd::Convert(a) => convert::convert(a),
        ImgCmd::Compare(a) => compare(a),
        ImgCmd::Commit(a) => chain_ops::commit(a),
        ImgCmd::Rebase(a) => chain_ops::rebase(a),
        ImgCmd::Bench(a) => bench::bench(a),
    }
}

/// Parses a format name given on the command line.
pub(crate) fn parse_format(s: &str) -> anyhow::Result<ImageFormat> {
    Ok(s.parse::<ImageFormat>()?)
}

/// Parses an optional `-f` argument.
pub(crate) fn opt_format(s: &Option<String>) -> anyhow::Result<Option<ImageFormat>> {
    s.as_deref().map(parse_format).transpose()
}

/// Fails with a one-line error if `path` is missing or a directory.
pub(crate) fn require_file(path: &Path) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("could not open '{}'", path.display()))?;
    if meta.is_dir() {
        bail!("could not open '{}': is a directory", path.display());
    }
    Ok(())
}

/// Opens an image for the CLI.
pub(crate) fn open(
    path: &Path,
    format: Option<ImageFormat>,
    writable: bool,
    force_share: bool,
) -> anyhow::Result<Box<dyn DiskBackend>> {
    require_file(path)?;
    Ok(open_disk(
        path,
        &OpenOptions {
            format,
            writable,
            force_share,
            open_backing: true,
            direct: false,
        },
    )?)
}

/// Progress output for `-p`: only on a terminal, never in scripts.
pub(crate) struct Progress {
    enabled: bool,
    last: f64,
}

impl Progress {
    pub(crate) fn new(requested: bool) -> Progress {
        let enabled = requested && std::io::stdout().is_terminal();
        let p = Progress {
            enabled,
            last: -1.0,
        };
        p.print(0.0);
        p
    }

    fn print(&self, pct: f64) {
        if self.enabled {
            print!("    ({pct:.2}/100%)\r");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
    }

    pub(crate) fn update(&mut self, done: u64, total: u64) {
        let pct = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        if pct - self.last >= 1.0 || (pct >= 100.0 && self.last < 100.0) {
            self.last = pct;
            self.print(pct);
        }
    }

    pub(crate) fn finish(&mut self) {
        if self.enabled {
            self.print(100.0);
            println!();
        }
    }
}

fn create(a: CreateArgs) -> anyhow::Result<i32> {
    let format = parse_format(&a.format)?;
    let opts = opts::parse_create_options(&a.options, format)?;
    let mut size = match &a.size {
        Some(s) => Some(parse_size(s)?),
        None => None,
    };
    if let Some(dir) = a.file.parent() {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            bail!(
                "could not create '{}': directory '{}' does not exist",
                a.file.display(),
                dir.display()
            );
        }
    }
    if a.file.is_dir() {
        bail!("could not create '{}': is a directory", a.file.display());
    }
    let backing = match &a.backing {
        None => None,
        Some(b) => {
            if format != ImageFormat::Qcow2 {
                bail!("backing files are only supported with -f qcow2");
            }
            let resolved = devices::block::qcow2::resolve_backing(&a.file, b);
            let bfmt = match &a.backing_format {
                Some(f) => parse_format(f)?,
                None if a.unsafe_backing => bail!("-u requires -F to name the backing file format"),
                None => probe_format(&resolved).with_context(|| {
                    format!("could not open backing file '{}'", resolved.display())
                })?,
            };
            if !a.unsafe_backing {
                let disk = open(&resolved, Some(bfmt), false, true).with_context(|| {
                    format!("could not open backing file '{}'", resolved.display())
                })?;
                if size.is_none() {
                    size = Some(disk.size());
                }
            }
            Some((b.clone(), bfmt))
        }
    };
    let Some(size) = size else {
        bail!("image creation needs a size parameter");
    };
    match format {
        ImageFormat::Raw => {
            if !a.quiet {
                println!("Formatting '{}', fmt=raw size={size}", a.file.display());
            }
            create_raw(&a.file, size, opts.prealloc)?;
        }
        ImageFormat::Qcow2 => {
            let q = Qcow2Options {
                size,
                backing,
                ..opts
            };
            q.validate()?;
            if !a.quiet {
                println!(
                    "Formatting '{}', fmt=qcow2 cluster_size={} compat={} size={size}",
                    a.file.display(),
                    q.cluster_size,
                    if q.version == 2 { "0.10" } else { "1.1" }
                );
            }
            let existed = a.file.exists();
            if let Err(e) = create_qcow2(&a.file, &q) {
                // Never delete a file we did not create (it may be in use).
                if !existed {
                    let _ = std::fs::remove_file(&a.file);
                }
                return Err(e.into());
            }
        }
    }
    Ok(0)
}

fn check(a: CheckArgs) -> anyhow::Result<i32> {
    let repair = match a.repair.as_deref() {
        None => Repair::None,
        Some("leaks") => Repair::Leaks,
        Some("all") => Repair::All,
        Some(o) => bail!("invalid -r argument '{o}' (expected leaks or all)"),
    };
    let json = match a.output.as_str() {
        "human" => false,
        "json" => true,
        o => bail!("--output must be human or json, not '{o}'"),
    };
    require_file(&a.file)?;
    let format = match opt_format(&a.format)? {
        Some(f) => f,
        None => probe_format(&a.file)?,
    };
    if format != ImageFormat::Qcow2 {
        // qemu-img's exit code for "format does not support checks".
        eprintln!(
            "ivmm: '{}': this image format does not support checks",
            a.file.display()
        );
        return Ok(63);
    }
    // Hold the same locks as a reader (or writer when repairing) while checking.
    let mode = match (repair, a.force_share) {
        (Repair::None, true) => devices::block::LockMode::ForceShare,
        (Repair::None, false) => devices::block::LockMode::ReadOnly,
        _ => devices::block::LockMode::ReadWrite,
    };
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(repair != Repair::None)
        .open(&a.file)
        .with_context(|| format!("could not open '{}'", a.file.display()))?;
    let _lock = devices::block::ImageLock::acquire(&lock_file, &a.file, mode)?;
    let r = match check_qcow2(&a.file, repair) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ivmm: {:#}", anyhow::Error::from(e));
            if json {
                println!(
                    "{}",
                    serde_json::json!({"filename": a.file.display().to_string(), "format": "qcow2", "check-errors": 1})
                );
            } else {
                println!(
                    "1 errors occurred during the check. Check the image for corruption with care."
                );
            }
            return Ok(1);
        }
    };
    if json {
        let mut m = serde_json::Map::new();
        m.insert("image-end-offset".into(), r.image_end_offset.into());
        m.insert("total-clusters".into(), r.total_clusters.into());
        m.insert("check-errors".into(), r.check_errors.into());
        for (k, v) in [
            ("allocated-clusters", r.allocated_clusters),
            ("fragmented-clusters", r.fragmented_clusters),
            ("compressed-clusters", r.compressed_clusters),
            ("corruptions", r.corruptions),
            ("leaks", r.leaks),
            ("corruptions-fixed", r.corruptions_fixed),
            ("leaks-fixed", r.leaks_fixed),
        ] {
            if v != 0 {
                m.insert(k.into(), v.into());
            }
        }
        m.insert("filename".into(), a.file.display().to_string().into());
        m.insert("format".into(), "qcow2".into());
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Object(m))?
        );
    } else if !a.quiet {
        for msg in &r.messages {
            eprintln!("{msg}");
        }
        if r.leaks_fixed > 0 || r.corruptions_fixed > 0 {
            println!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n",
                r.leaks_fixed, r.corruptions_fixed
            );
        }
        if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
            println!("No errors were found on the image.");
        }
        if r.corruptions > 0 {
            println!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
                r.corruptions
            );
        }
        if r.leaks > 0 {
            println!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.",
                r.leaks
            );
        }
        if r.total_clusters > 0 && r.allocated_clusters > 0 {
            let t = r.total_clusters as f64;
            println!(
                "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
                r.allocated_clusters,
                r.total_clusters,
                r.allocated_clusters as f64 * 100.0 / t,
                r.fragmented_clusters as f64 * 100.0 / r.allocated_clusters as f64,
                r.compressed_clusters as f64 * 100.0 / r.allocated_clusters as f64
            );
        }
        println!("Image end offset: {}", r.image_end_offset);
    }
    Ok(r.exit_code())
}

fn resize(a: ResizeArgs) -> anyhow::Result<i32> {
    require_file(&a.file)?;
    let format = match opt_format(&a.format)? {
        Some(f) => f,
        None => probe_format(&a.file)?,
    };
    let (rel, text) = match a.size.as_bytes().first() {
        Some(b'+') => (1i8, &a.size[1..]),
        Some(b'-') => (-1, &a.size[1..]),
        _ => (0, a.size.as_str()),
    };
    let delta = parse_size(text).with_context(|| format!("invalid size '{}'", a.size))?;
    let disk = open(&a.file, Some(format), true, false)?;
    let cur = disk.size();
    let new = match rel {
        1 => cur.checked_add(delta).context("size overflow")?,
        -1 => cur
            .checked_sub(delta)
            .with_context(|| format!("new size would be negative ({cur} - {delta})"))?,
        _ => delta,
    };
    if new < cur && !a.shrink {
        bail!("use the --shrink option to perform a shrink operation");
    }
    drop(disk);
    match format {
        ImageFormat::Raw => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&a.file)
                .with_context(|| format!("could not open '{}'", a.file.display()))?;
            let _lock = devices::block::ImageLock::acquire(
                &f,
                &a.file,
                devices::block::LockMode::ReadWrite,
            )?;
            f.set_len(new)
                .with_context(|| format!("could not resize '{}'", a.file.display()))?;
        }
        ImageFormat::Qcow2 => {
            let q = Qcow2Disk::open(
                &a.file,
                &OpenOptions {
                    format: Some(ImageFormat::Qcow2),
                    writable: true,
                    force_share: false,
                    open_backing: false,
                    direct: false,
                },
            )?;
            q.resize(new)?;
        }
    }
    if !a.quiet {
        println!("Image resized.");
    }
    Ok(0)
}

/// Chunk size for whole-image passes.
pub(crate) const CHUNK: u64 = 2 << 20;

fn compare(a: CompareArgs) -> anyhow::Result<i32> {
    let run = || -> anyhow::Result<i32> {
        let da = open(&a.a, opt_format(&a.format_a)?, false, a.force_share)?;
        let db = open(&a.b, opt_format(&a.format_b)?, false, a.force_share)?;
        let (sa, sb) = (da.size(), db.size());
        if a.strict && sa != sb {
            if !a.quiet {
                println!("Strict mode: Image size mismatch!");
            }
            return Ok(1);
        }
        let common = sa.min(sb);
        let total = sa.max(sb);
        let mut progress = Progress::new(a.progress);
        let mut ba = vec![0u8; CHUNK as usize];
        let mut bb = vec![0u8; CHUNK as usize];
        let mut off = 0;
        while off < common {
            let n = (common - off).min(CHUNK) as usize;
            let (da_data, la) = da.block_status(off, n as u64)?;
            let (db_data, lb) = db.block_status(off, n as u64)?;
            if !da_data && !db_data {
                off += la.min(lb).max(1);
                continue;
            }
            da.read_at(off, &mut ba[..n])?;
            db.read_at(off, &mut bb[..n])?;
            if ba[..n] != bb[..n] {
                let i = ba[..n]
                    .iter()
                    .zip(&bb[..n])
                    .position(|(x, y)| x != y)
                    .unwrap_or(0);
                let at = (off + i as u64) & !511;
                if !a.quiet {
                    println!("Content mismatch at offset {at}!");
                }
                return Ok(1);
            }
            off += n as u64;
            progress.update(off, total);
        }
        // The larger image must be zero past the smaller one.
        let (big, _) = if sa > sb { (&da, sa) } else { (&db, sb) };
        let mut off = common;
        while off < total {
            let n = (total - off).min(CHUNK) as usize;
            big.read_at(off, &mut ba[..n])?;
            if let Some(i) = ba[..n].iter().position(|&x| x != 0) {
                if !a.quiet {
                    println!("Content mismatch at offset {}!", (off + i as u64) & !511);
                }
                return Ok(1);
            }
            off += n as u64;
            progress.update(off, total);
        }
        progress.finish();
        if sa != sb && !a.quiet {
            println!("Warning: Image size mismatch!");
        }
        if !a.quiet {
            println!("Images are identical.");
        }
        Ok(0)
    };
    match run() {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("ivmm: {e:#}");
            Ok(2)
        }
    }
}
