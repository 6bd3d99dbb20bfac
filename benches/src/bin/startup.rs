//! Start-up benchmark on this host's KVM: time from process start to the
//! guest's first console byte, and peak RSS, for a tiny PVH guest (an ELF
//! whose 32-bit entry writes one byte to COM1 and resets through the
//! i8042), side by side with QEMU (`-accel kvm`) when it is installed.
//!
//! Usage: `cargo run --release -p ivmm-benches --bin startup [-- RUNS]`
//! (ivmm from `target/release/ivmm` or `$IVMM_BIN`).

#[path = "../../../vmm/tests/common/tiny_guest.rs"]
mod tiny_guest;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Sample {
    first_byte: Duration,
    max_rss_kib: i64,
}

/// Runs `cmd` once; returns the time to its first stdout byte and its peak
/// RSS (from wait4's rusage).
fn sample(cmd: &mut Command) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut byte = [0u8; 1];
    stdout
        .read_exact(&mut byte)
        .map_err(|e| format!("no output byte: {e}"))?;
    let first_byte = start.elapsed();
    // Reap with wait4 to read the child's peak RSS. A VMM that does not
    // exit on the guest's reset (QEMU microvm) is killed after a grace time;
    // its peak RSS is still what it reached.
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        // SAFETY: valid pid of our own child, valid out-pointers.
        let pid = unsafe { libc::wait4(child.id() as i32, &mut status, libc::WNOHANG, &mut usage) };
        if pid < 0 {
            return Err(format!("wait4: {}", std::io::Error::last_os_error()));
        }
        if pid > 0 {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let exit = std::process::ExitStatus::from_raw(status);
    if !exit.success() && exit.signal() != Some(libc::SIGKILL) {
        return Err(format!("exited with {exit}"));
    }
    Ok(Sample {
        first_byte,
        max_rss_kib: usage.ru_maxrss,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn measure(name: &str, runs: usize, mut make: impl FnMut() -> Command) {
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        match sample(&mut make()) {
            Ok(s) => {
                times.push(s.first_byte.as_secs_f64() * 1000.0);
                rss.push(s.max_rss_kib as f64 / 1024.0);
            }
            Err(e) => {
                println!("| {name:<28} | failed: {e} |");
                return;
            }
        }
    }
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "| {name:<28} | {:>9.2} | {:>9.2} | {:>12.2} |",
        median(times),
        min,
        median(rss)
    );
}

fn main() {
    // startup [RUNS] [--ivmm-only]
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ivmm = std::env::var_os("IVMM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/ivmm"));
    if !ivmm.exists() {
        eprintln!(
            "{} not found: run `cargo build --release -p vmm` first",
            ivmm.display()
        );
        std::process::exit(1);
    }
    let dir = std::env::temp_dir().join(format!("ivmm-bench-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let kernel = dir.join("tiny.elf");
    std::fs::write(&kernel, tiny_guest::pvh_elf(b'K')).expect("write tiny guest");

    println!("Start-up to first guest byte, tiny PVH guest, 128 MiB RAM, {runs} runs each");
    println!("| VMM                          | median ms |    min ms | peak RSS MiB |");
    println!("|------------------------------|-----------|-----------|--------------|");
    measure("ivmm", runs, || {
        let mut c = Command::new(&ivmm);
        c.args(["run", "--mem", "128M", "--kernel"]).arg(&kernel);
        c
    });
    // What the per-thread seccomp filters cost (built and installed by
    // every thread before it runs).
    measure("ivmm --seccomp off", runs, || {
        let mut c = Command::new(&ivmm);
        c.args(["run", "--mem", "128M", "--seccomp", "off", "--kernel"])
            .arg(&kernel);
        c
    });
    let ivmm_only = std::env::args().nth(2).as_deref() == Some("--ivmm-only");
    if !ivmm_only
        && Command::new("qemu-system-x86_64")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok()
    {
        measure("qemu-system-x86_64 -M microvm", runs, || {
            let mut c = Command::new("qemu-system-x86_64");
            c.args([
                "-accel",
                "kvm",
                "-M",
                "microvm",
                "-m",
                "128M",
                "-nodefaults",
                "-no-reboot",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-kernel",
            ])
            .arg(&kernel);
            c
        });
        measure("qemu-system-x86_64 -M pc", runs, || {
            let mut c = Command::new("qemu-system-x86_64");
            c.args([
                "-accel",
                "kvm",
                "-M",
                "pc",
                "-m",
                "128M",
                "-nodefaults",
                "-no-reboot",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-kernel",
            ])
            .arg(&kernel);
            c
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}
