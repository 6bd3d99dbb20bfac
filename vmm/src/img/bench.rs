//! `ivmm img bench`: qemu-img bench's flags and output, run on the block
//! layer. Queue depth `-d N` is N I/O threads sharing the request counter.
//! `--random` (ours) picks request offsets pseudo-randomly instead of stepping.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use devices::block::{open_disk, DiskBackend, OpenOptions};
use vm_memory::VolatileSlice;

use super::{opt_format, parse_size, require_file};

/// `bench [-c COUNT] [-d DEPTH] [-f FMT] [-o OFFSET] [-s SIZE] [-S STEP] [-t CACHE] [-w] [--pattern=N] [--random] FILE`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Number of requests.
    #[arg(short = 'c', default_value_t = 75000)]
    count: u64,
    /// Requests in flight.
    #[arg(short = 'd', default_value_t = 64)]
    depth: u64,
    #[arg(short = 'f')]
    format: Option<String>,
    /// Offset of the first request.
    #[arg(short = 'o', default_value = "0")]
    offset: String,
    /// Request size.
    #[arg(short = 's', default_value = "4096")]
    size: String,
    /// Distance between request offsets (default: the request size).
    #[arg(short = 'S')]
    step: Option<String>,
    /// Cache mode: none, directsync, writeback, writethrough, unsafe.
    #[arg(short = 't', default_value = "writeback")]
    cache: String,
    /// Write instead of read.
    #[arg(short = 'w')]
    write: bool,
    /// Byte written by write requests.
    #[arg(long = "pattern", default_value_t = 0)]
    pattern: u8,
    /// Flush after every N requests (0: never).
    #[arg(long = "flush-interval", default_value_t = 0)]
    flush_interval: u64,
    /// Pseudo-random request offsets (aligned to the request size).
    #[arg(long)]
    random: bool,
    /// Do not open the image for writing if only reading; share with others.
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    #[arg(short = 'q')]
    quiet: bool,
    file: PathBuf,
}

/// Offset of request `i`.
fn request_offset(i: u64, start: u64, step: u64, bufsize: u64, disk: u64, random: bool) -> u64 {
    if disk <= bufsize {
        return 0;
    }
    if random {
        // splitmix64 of the request index: reproducible, well spread.
        let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        return (z % (disk / bufsize)) * bufsize;
    }
    // Wrap within whole requests after `start`, keeping offsets aligned.
    let span = (disk.saturating_sub(start) / bufsize) * bufsize;
    if span == 0 {
        return start.min(disk - bufsize);
    }
    start + ((u128::from(i) * u128::from(step)) % u128::from(span)) as u64
}

pub(super) fn bench(a: BenchArgs) -> anyhow::Result<i32> {
    require_file(&a.file)?;
    let bufsize = parse_size(&a.size)?;
    let step = match &a.step {
        Some(s) => parse_size(s)?,
        None => bufsize,
    };
    let start = parse_size(&a.offset)?;
    if bufsize == 0 || bufsize > 64 << 20 {
        bail!("invalid request size {bufsize} (1 byte .. 64 MiB)");
    }
    let (direct, writethrough) = match a.cache.as_str() {
        "none" => (true, false),
        "directsync" => (true, true),
        "writeback" | "unsafe" => (false, false),
        "writethrough" => (false, true),
        o => bail!("invalid cache mode '{o}'"),
    };
    let depth = a.depth.clamp(1, 256);
    let disk: Box<dyn DiskBackend> = open_disk(
        &a.file,
        &OpenOptions {
            format: opt_format(&a.format)?,
            writable: a.write,
            force_share: a.force_share,
            open_backing: true,
            direct,
        },
    )?;
    let size = disk.size();
    if !a.quiet {
        println!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
            a.count,
            if a.write { "write" } else { "read" },
            bufsize,
            depth,
            start,
            if a.random { 0 } else { step }
        );
    }
    let next = AtomicU64::new(0);
    let t0 = Instant::now();
    let disk_ref = disk.as_ref();
    let worker = || -> anyhow::Result<()> {
        // O_DIRECT wants 4 KiB-aligned memory: take an aligned window of a larger Vec.
        let mut backing = vec![a.pattern; bufsize as usize + 4096];
        let skip = backing.as_ptr().align_offset(4096).min(4096);
        let buf = &mut backing[skip..skip + bufsize as usize];
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= a.count {
                return Ok(());
            }
            let off = request_offset(i, start, step, bufsize, size, a.random);
            let len = bufsize.min(size - off.min(size)) as usize;
            if a.write {
                // Straight from the aligned buffer (write_at would copy it).
                let vs = VolatileSlice::from(&mut buf[..len]);
                disk_ref.write_vectored(off, std::slice::from_ref(&vs))?;
                if writethrough {
                    disk_ref.flush()?;
                }
            } else {
                disk_ref.read_at(off, &mut buf[..len])?;
            }
            if a.flush_interval > 0 && (i + 1).is_multiple_of(a.flush_interval) {
                disk_ref.flush()?;
            }
        }
    };
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..depth)
            .map(|n| {
                std::thread::Builder::new()
                    .name(format!("bench-io{n}"))
                    .spawn_scoped(s, worker)
                    .context("cannot spawn I/O thread")
            })
            .collect::<anyhow::Result<_>>()?;
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("I/O thread panicked"))??;
        }
        Ok(())
    })?;
    if a.write {
        disk.flush()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    if !a.quiet {
        println!("Run completed in {secs:.3} seconds.");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::request_offset;

    #[test]
    fn offsets_step_wrap_and_stay_in_bounds() {
        assert_eq!(request_offset(0, 0, 4096, 4096, 1 << 20, false), 0);
        assert_eq!(request_offset(3, 0, 4096, 4096, 1 << 20, false), 3 * 4096);
        for i in 0..10_000 {
            for random in [false, true] {
                let o = request_offset(i, 512, 65536 * 7, 65536, 10 << 20, random);
                assert!(o + 65536 <= 10 << 20);
            }
        }
    }
}
