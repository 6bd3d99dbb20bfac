//! Boot time of the stock Debian cloud kernel to the L2 init marker, ivmm vs QEMU (`-accel kvm`,
//! `-M microvm` and `-M pc`) booting the same kernel and initramfs in the same lab (nested L1
//! on kvm_pvm hosts, directly on hardware-KVM hosts). Times are host-side, from the VMM's start
//! to the marker line; everything in the nested lab is emulated, so the ratio is the result.
//!
//! Usage: `cargo run --release -p ivmm-benches --bin lab_boot [-- RUNS]`

use std::time::Duration;

use ivmm_tests::{GuestBoot, Lab, Mode, RunOptions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let lab = match Lab::detect() {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("lab: {e}");
            std::process::exit(1);
        }
    };
    let boot = GuestBoot::new()
        .cmdline("console=ttyS0 reboot=k panic=1 quiet")
        .command("true")
        .args(&["--vcpus", "1", "--mem", "512M"]);
    let cmdline = boot.full_cmdline().unwrap_or_default();

    let mut ivmm = Vec::new();
    for _ in 0..runs {
        match lab.boot(&boot, RunOptions::new()) {
            Ok(out) => match out.guest_init_at() {
                Some(t) => ivmm.push(t.as_secs_f64()),
                None => eprintln!("ivmm run without init marker:\n{}", out.console),
            },
            Err(e) => eprintln!("ivmm run failed: {e}"),
        }
    }

    let (kernel, initrd) = match lab.mode() {
        Mode::Nested => (
            "/guest/bzImage".to_string(),
            "/guest/initrd.img".to_string(),
        ),
        Mode::Direct => {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest");
            (
                root.join("bzImage").display().to_string(),
                root.join("initrd.img").display().to_string(),
            )
        }
    };
    let qemu = "/usr/bin/qemu-system-x86_64";
    let mut peers: Vec<(&str, Vec<f64>)> = Vec::new();
    for machine in ["microvm", "pc"] {
        let mut times = Vec::new();
        for _ in 0..runs {
            let script = format!(
                "{qemu} -accel kvm -M {machine} -cpu host -smp 1 -m 512 -nodefaults -no-reboot \
                 -display none -serial stdio -kernel {kernel} -initrd {initrd} -append '{cmdline}'"
            );
            let opts = RunOptions::new()
                .host_binary(qemu)
                .host_file("/usr/share/seabios/bios-microvm.bin")
                .host_file("/usr/share/seabios/bios-256k.bin")
                .host_file("/usr/share/qemu/linuxboot_dma.bin")
                .host_file("/usr/share/qemu/kvmvapic.bin")
                .timeout(Duration::from_secs(180));
            match lab.run_shell(&script, opts) {
                Ok(out) => match out.guest_init_at() {
                    Some(t) => times.push(t.as_secs_f64()),
                    None => eprintln!("QEMU {machine} without init marker:\n{}", out.console),
                },
                Err(e) => eprintln!("QEMU {machine} run failed: {e}"),
            }
        }
        peers.push((machine, times));
    }

    println!("Boot to L2 init marker ({:?} lab, stock Debian cloud kernel, quiet, 1 vCPU, 512 MiB), {runs} runs", lab.mode());
    println!("| VMM                      | median s | ivmm / this |");
    println!("|--------------------------|----------|-------------|");
    let ivmm_median = if ivmm.is_empty() {
        f64::NAN
    } else {
        median(ivmm)
    };
    println!("| ivmm                     | {ivmm_median:>8.2} |        1.00 |");
    for (machine, times) in peers {
        if times.is_empty() {
            println!("| qemu -M {machine:<16} |   failed |             |");
            continue;
        }
        let m = median(times);
        println!(
            "| qemu -M {machine:<16} | {m:>8.2} | {:>11.2} |",
            ivmm_median / m
        );
    }
}
