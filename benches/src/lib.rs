//! Benchmarks of the block layer against qemu-img, printed as a table.
//!
//! Rows: sequential 64 KiB write/read at depth 1, and 4 KiB write/read at
//! depth 1 and 32 with a scattered access pattern, on a raw image (fully
//! allocated), an empty raw image (sparse, as `qemu-img create` makes it: the
//! baseline an empty qcow2 is fairly compared with, both paying the file
//! system's first write), an empty qcow2 and a preallocated qcow2, all with
//! `-t none` (O_DIRECT). qemu-img
//! bench has no random mode, so "rand" rows use a large prime stride
//! (`-S 4096*7919`) for both tools, visiting blocks in a scattered order.
//! Then `convert` (with and without `-c`) of a mostly-full image, both tools
//! with their defaults (target cache `unsafe`: no flush at the end).

pub mod tool_disk;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// One benchmark row definition.
struct Row {
    name: &'static str,
    write: bool,
    bs: u64,
    depth: u64,
    stride: bool,
}

const ROWS: &[Row] = &[
    Row {
        name: "seq 64K write d1",
        write: true,
        bs: 65536,
        depth: 1,
        stride: false,
    },
    Row {
        name: "seq 64K read d1",
        write: false,
        bs: 65536,
        depth: 1,
        stride: false,
    },
    Row {
        name: "rand 4K write d1",
        write: true,
        bs: 4096,
        depth: 1,
        stride: true,
    },
    Row {
        name: "rand 4K read d1",
        write: false,
        bs: 4096,
        depth: 1,
        stride: true,
    },
    Row {
        name: "rand 4K write d32",
        write: true,
        bs: 4096,
        depth: 32,
        stride: true,
    },
    Row {
        name: "rand 4K read d32",
        write: false,
        bs: 4096,
        depth: 32,
        stride: true,
    },
];

/// Prime stride (in blocks) for the scattered pattern.
const STRIDE_BLOCKS: u64 = 7919;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sh(prog: &str, args: &[&str]) -> Result<String, String> {
    let o = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{prog} {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Seconds reported by "Run completed in X seconds."
fn bench_secs(out: &str) -> Result<f64, String> {
    out.lines()
        .find_map(|l| l.strip_prefix("Run completed in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no timing in bench output: {out}"))
}

struct Ctx {
    ivmm: String,
    dir: PathBuf,
    size: u64,
}

impl Ctx {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Creates image `kind` ("raw", "raw-empty", "qcow2", "qcow2-prealloc") named `name`.
    fn make(&self, kind: &str, name: &str) -> Result<(String, &'static str), String> {
        let p = self.path(name);
        let size = self.size.to_string();
        let (fmt, opts) = match kind {
            "raw" => ("raw", "preallocation=full"),
            "raw-empty" => ("raw", "preallocation=off"),
            "qcow2" => ("qcow2", "preallocation=off"),
            _ => ("qcow2", "preallocation=full"),
        };
        sh(
            "qemu-img",
            &["create", "-q", "-f", fmt, "-o", opts, &p, &size],
        )?;
        Ok((p, fmt))
    }

    /// Runs one row with one tool; returns the rate (MB/s or IOPS).
    fn run(&self, tool: &str, row: &Row, img: &str, fmt: &str) -> Result<f64, String> {
        let count = if row.stride {
            20_000
        } else {
            (self.size / row.bs).min(16_384)
        };
        let (c, d, s) = (count.to_string(), row.depth.to_string(), row.bs.to_string());
        let step = if row.stride {
            row.bs * STRIDE_BLOCKS
        } else {
            row.bs
        }
        .to_string();
        let mut args = vec![
            "bench", "-t", "none", "-f", fmt, "-c", &c, "-d", &d, "-s", &s, "-S", &step,
        ];
        if row.write {
            args.push("-w");
        }
        args.push(img);
        let out = if tool == "ivmm" {
            let mut a = vec!["img"];
            a.extend_from_slice(&args);
            sh(&self.ivmm, &a)?
        } else {
            sh("qemu-img", &args)?
        };
        let secs = bench_secs(&out)?.max(1e-6);
        Ok(if row.stride {
            count as f64 / secs
        } else {
            (count * row.bs) as f64 / secs / 1e6
        })
    }
}

/// Writes a mostly-full image: 7 of 8 MiB-sized areas hold half-compressible data.
fn make_convert_source(path: &Path, size: u64) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut x: u64 = 0x1234_5678;
    let mut buf = vec![0u8; 1 << 20];
    for mib in 0..size >> 20 {
        if mib % 8 == 7 {
            buf.fill(0);
        } else {
            for chunk in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Letters from a 16-symbol alphabet: compresses to about half.
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b = b'a' + ((x >> (i * 4)) & 15) as u8;
                }
            }
        }
        f.write_all(&buf).map_err(|e| e.to_string())?;
    }
    f.sync_all().map_err(|e| e.to_string())
}

fn time_cmd(prog: &str, args: &[&str]) -> Result<f64, String> {
    let t = Instant::now();
    sh(prog, args)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs everything and prints the table.
pub fn run() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ivmm = std::env::var("IVMM_BIN")
        .unwrap_or_else(|_| root.join("target/release/ivmm").display().to_string());
    if !Path::new(&ivmm).exists() {
        return Err(format!(
            "{ivmm} not found: run `cargo build --release -p vmm` first"
        ));
    }
    let dir = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/bench-tmp"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let ctx = Ctx {
        ivmm,
        dir,
        size: env_u64("BENCH_SIZE_MIB", 1024) << 20,
    };

    // BENCH_ONLY=convert or BENCH_ONLY=io runs one half.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only != "convert" {
        io_table(&ctx)?;
    }
    if only != "io" {
        println!();
        convert_table(&ctx)?;
    }
    Ok(())
}

fn io_table(ctx: &Ctx) -> Result<(), String> {
    println!("| test | image | ivmm | qemu-img | ivmm/qemu |");
    println!("|---|---|---:|---:|---:|");
    let mut ivmm_rates: Vec<(String, String, f64)> = Vec::new();
    for kind in ["raw", "raw-empty", "qcow2", "qcow2-prealloc"] {
        let (img, fmt) = ctx.make(kind, "bench.img")?;
        for row in ROWS {
            let mut rates = [0.0f64; 2];
            for (i, tool) in ["ivmm", "qemu"].iter().enumerate() {
                // Empty-image write rows start from a fresh image for both tools.
                if matches!(kind, "qcow2" | "raw-empty") && row.write {
                    ctx.make(kind, "bench.img")?;
                }
                rates[i] = ctx.run(tool, row, &img, fmt)?;
            }
            let unit = if row.stride { "IOPS" } else { "MB/s" };
            println!(
                "| {} | {kind} | {:.0} {unit} | {:.0} {unit} | {:.2} |",
                row.name,
                rates[0],
                rates[1],
                rates[0] / rates[1]
            );
            ivmm_rates.push((row.name.to_string(), kind.to_string(), rates[0]));
        }
        let _ = std::fs::remove_file(&img);
    }
    println!();
    println!("| test | ivmm qcow2/raw | ivmm qcow2/raw-empty | ivmm qcow2-prealloc/raw |");
    println!("|---|---:|---:|---:|");
    for row in ROWS {
        let get = |k: &str| {
            ivmm_rates
                .iter()
                .find(|(n, kk, _)| n == row.name && kk == k)
                .map(|r| r.2)
                .unwrap_or(0.0)
        };
        let raw = get("raw").max(1e-9);
        println!(
            "| {} | {:.2} | {:.2} | {:.2} |",
            row.name,
            get("qcow2") / raw,
            get("qcow2") / get("raw-empty").max(1e-9),
            get("qcow2-prealloc") / raw
        );
    }
    Ok(())
}

fn convert_table(ctx: &Ctx) -> Result<(), String> {
    let csize = env_u64("CONVERT_SIZE_MIB", 2048) << 20;
    let src = ctx.path("convert-src.raw");
    make_convert_source(Path::new(&src), csize)?;
    let dst = ctx.path("convert-dst.qcow2");
    println!(
        "| convert {} MiB mostly-full raw -> qcow2 | ivmm (s) | qemu-img (s) | qemu/ivmm |",
        csize >> 20
    );
    println!("|---|---:|---:|---:|");
    for (name, extra) in [("convert", None), ("convert -c", Some("-c"))] {
        let mut a = vec!["img", "convert", "-f", "raw", "-O", "qcow2"];
        a.extend(extra);
        a.extend([src.as_str(), dst.as_str()]);
        let ti = time_cmd(&ctx.ivmm, &a)?;
        let _ = std::fs::remove_file(&dst);
        let tq = time_cmd("qemu-img", &a[1..])?;
        let _ = std::fs::remove_file(&dst);
        println!("| {name} | {ti:.2} | {tq:.2} | {:.2} |", tq / ti.max(1e-9));
    }
    let _ = std::fs::remove_file(&src);
    Ok(())
}

/// The median of `v` (the upper one of an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// L1 shell preamble for benchmarks that sample KVM's counters at guest markers: mounts
/// debugfs and defines `w MARKER`, which waits until MARKER is in `/tmp/con.log` (where the
/// VMM's console goes) or the VMM (`$P`) has exited, at most 400 s.
pub const L1_MARKER_WAIT: &str = "mount -t debugfs none /sys/kernel/debug 2>/dev/null\n\
    w() { i=0; until grep -q \"$1\" /tmp/con.log || ! kill -0 $P 2>/dev/null; do i=$((i+1)); [ $i -gt 20000 ] && break; usleep 20000; done; }\n";
