//! virtio-blk throughput, ivmm vs QEMU (`-accel kvm`, virtio-blk-pci, `cache=none`,
//! `aio=threads`) on the same images in the same lab (nested L1 on kvm_pvm hosts), the same
//! Debian kernel and initramfs. The guest runs the host's fio (carried on a read-only ext4
//! disk with its libraries, see `tool_disk`) against `/dev/vda` with O_DIRECT and libaio:
//! sequential 1 MiB read/write and random 4 KiB read/write at queue depth 1 and 32, each
//! for a fixed time. KVM exits per 4 KiB request come from L1's
//! `/sys/kernel/debug/kvm/exits`, sampled around a 4 KiB read job (idle timer exits of the
//! sampling window included). Everything in the nested lab is emulated: read the ratios.
//! Both VMMs alternate, ROUNDS times, in one L1 boot per image format, so that the L1's
//! boot-to-boot speed differences do not land on one side; the table gives the median of
//! the rounds for each VMM and each round's ratio.
//!
//! Usage: `cargo run --release -p ivmm-benches --bin blk [-- SECONDS [raw|qcow2|both [ROUNDS]]]`
//! Needs `fio` installed on the host (`apt-get install fio`) and `mkfs.ext4`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ivmm_benches::{median, tool_disk, L1_MARKER_WAIT};
use ivmm_tests::{GuestBoot, Lab, Mode, RunOptions};

const MIB: u64 = 1 << 20;
/// Image size; every job stays inside it.
const IMAGE_MIB: u64 = 64;
const EXIT_REQS: u64 = 2048;

/// fio jobs: (rw, block size, queue depth).
const JOBS: [(&str, &str, u32); 6] = [
    ("read", "1M", 1),
    ("write", "1M", 1),
    ("randread", "4k", 1),
    ("randwrite", "4k", 1),
    ("randread", "4k", 32),
    ("randwrite", "4k", 32),
];

/// Guest side: `FIO <job>;<read KiB/s>;<write KiB/s>` lines (fio's terse output, fields 3,
/// 7 and 48), and markers for the exit sampling. Kept short: it travels base64-encoded on
/// the kernel command line (2 KiB at most).
fn guest_script(seconds: u32) -> String {
    let jobs: Vec<String> = JOBS
        .iter()
        .map(|(rw, bs, qd)| format!("\"{rw} {bs} {qd}\""))
        .collect();
    format!(
        "mkdir -p /mnt; mount -o ro /dev/vdb /mnt || exit 9; \
         for j in {jobs}; do set -- $j; {fio} --name=$1-$2-QD$3 --rw=$1 --bs=$2 --iodepth=$3 \
         --thread --direct=1 --ioengine=libaio --filename=/dev/vda --size={m}M --time_based \
         --runtime={seconds} --minimal 2>/tmp/e | cut -d';' -f3,7,48 | sed 's/^/FIO /'; \
         head -c 300 /tmp/e | sed 's/^/FIO-ERR /'; done; \
         echo EXITS-BEGIN; sleep 1; dd if=/dev/vda of=/dev/null bs=4k count={EXIT_REQS} iflag=direct 2>/dev/null; \
         echo EXITS-END; sleep 1; echo BENCH-DONE",
        jobs = jobs.join(" "),
        fio = tool_disk::run_prefix("fio"),
        m = IMAGE_MIB - 4,
    )
}

/// L1 side: define both VMMs as shell functions, then for each round run ivmm and QEMU one
/// after the other (console in /tmp/con.log), sample KVM's exit counter at the guest's
/// markers, and print the results with the VMM's name in front. A VMM still running after
/// 300 s is killed and reported (`<vmm> STALLED` and its console's last lines), so one stuck
/// run cannot eat the whole L1 timeout unseen.
fn l1_script(ivmm: &str, qemu: &str, rounds: usize) -> String {
    let runs = "bench ivmm; bench qemu; ".repeat(rounds);
    format!(
        "{L1_MARKER_WAIT}\
         X=/sys/kernel/debug/kvm/exits\n\
         vm_ivmm() {{ {ivmm}; }}\n\
         vm_qemu() {{ {qemu}; }}\n\
         bench() {{ : > /tmp/con.log; vm_$1 > /tmp/con.log 2>&1 & P=$!\n\
           ( sleep 300; kill -0 $P 2>/dev/null && {{ echo \"$1 STALLED\"; tail -n 30 /tmp/con.log | sed \"s/^/$1 TAIL /\"; kill -9 $P; }} ) &\n\
           w EXITS-BEGIN; A=$(cat $X); w EXITS-END; B=$(cat $X)\n\
           wait $P; echo \"$1 VMM-RC=$?\"\n\
           grep -E '^FIO|BENCH-DONE' /tmp/con.log | sed \"s/^/$1 /\"\n\
           echo \"$1 EXITS $((B-A))\"; }}\n\
         {runs}\n"
    )
}

/// One VMM run: (job, MiB/s) list and KVM exits during the exit-counting job.
#[derive(Default)]
struct VmmRun {
    jobs: Vec<(String, f64)>,
    exits: u64,
    done: bool,
}

/// The completed runs of `vmm` in the L1 console, in order.
fn parse(console: &str, vmm: &str) -> Vec<VmmRun> {
    let mut runs = Vec::new();
    let mut cur = VmmRun::default();
    for line in console.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix(vmm).and_then(|l| l.strip_prefix(' ')) else {
            continue;
        };
        if let Some(fio) = rest.strip_prefix("FIO ") {
            let f: Vec<&str> = fio.split(';').collect();
            if let [name, read, write] = f.as_slice() {
                if let (Ok(r), Ok(w)) = (read.parse::<f64>(), write.parse::<f64>()) {
                    cur.jobs.push((name.to_string(), (r + w) / 1024.0));
                }
            }
        } else if rest == "BENCH-DONE" {
            cur.done = true;
        } else if let Some(n) = rest.strip_prefix("EXITS ") {
            cur.exits = n.trim().parse().unwrap_or(0);
            let run = std::mem::take(&mut cur);
            if run.done && !run.jobs.is_empty() {
                runs.push(run);
            }
        }
    }
    runs
}

fn qemu_img(args: &[&str]) {
    let ok = Command::new("qemu-img")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "qemu-img {args:?}");
}

fn main() {
    let lab = match Lab::detect() {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("lab: {e}");
            std::process::exit(1);
        }
    };
    let seconds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("ivmm-bench-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let tools = tool_disk::build(&dir, &["/usr/bin/fio"]).unwrap_or_else(|e| {
        eprintln!("blk: {e}");
        std::process::exit(1);
    });
    let raw = dir.join("b.raw");
    let data: Vec<u8> = (0..IMAGE_MIB * MIB).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&raw, &data).expect("raw image");
    let qcow = dir.join("b.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow)]);
    // Room for the qcow2 to grow inside the fixed-size L1 disk.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&qcow)
        .and_then(|f| f.set_len(2 * IMAGE_MIB * MIB))
        .expect("pad qcow2");

    let boot = GuestBoot::new()
        .cmdline("console=ttyS0 reboot=k panic=1 quiet")
        .command(&guest_script(seconds))
        .args(&["--vcpus", "2", "--mem", "512M"]);
    let cmdline = boot.full_cmdline().expect("cmdline");
    let (kernel, initrd) = match lab.mode() {
        Mode::Nested => (
            "/guest/bzImage".to_string(),
            "/guest/initrd.img".to_string(),
        ),
        Mode::Direct => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest");
            (
                root.join("bzImage").display().to_string(),
                root.join("initrd.img").display().to_string(),
            )
        }
    };
    let qemu = "/usr/bin/qemu-system-x86_64";
    let only = std::env::args().nth(2).filter(|o| o != "both");
    let rounds: usize = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);

    println!(
        "fio, {seconds} s per job, O_DIRECT, libaio, {IMAGE_MIB} MiB images, 2 vCPUs, 512 MiB, \
         {rounds} alternating rounds per L1 boot ({:?} lab)",
        lab.mode()
    );
    println!("| image | job | ivmm MiB/s (median) | QEMU MiB/s (median) | ivmm/QEMU | per round |");
    println!("|---|---|---:|---:|---:|---|");
    for (format, image) in [("raw", &raw), ("qcow2", &qcow)] {
        if only.as_deref().is_some_and(|o| o != format) {
            continue;
        }
        let ivmm = format!(
            "{{ivmm}} run --kernel {kernel} --initrd {initrd} --vcpus 2 --mem 512M \
             --serial stdio --cmdline '{cmdline}' --disk {{disk0}},format={format},cache=none \
             --disk {{disk1}},format=raw,readonly=on"
        );
        let qemu_cmd = format!(
            "{qemu} -accel kvm -M pc -cpu host -smp 2 -m 512 -nodefaults -no-reboot \
             -display none -serial stdio -kernel {kernel} -initrd {initrd} -append '{cmdline}' \
             -drive file={{disk0}},if=none,id=d0,format={format},cache=none,aio=threads \
             -device virtio-blk-pci,drive=d0,num-queues=2 \
             -drive file={{disk1}},if=virtio,format=raw,readonly=on"
        );
        // `{ivmm}` in a script makes the harness carry ivmm and its libraries.
        let opts = RunOptions::new()
            .disk(image.as_path())
            .disk(tools.as_path())
            .host_binary(qemu)
            .host_file("/usr/share/seabios/bios-256k.bin")
            .host_file("/usr/share/qemu/linuxboot_dma.bin")
            .host_file("/usr/share/qemu/kvmvapic.bin")
            .timeout(Duration::from_secs(300 + 600 * rounds as u64));
        let console = match lab.run_shell(&l1_script(&ivmm, &qemu_cmd, rounds), opts) {
            Ok(out) => out.console,
            Err(e) => {
                eprintln!("{format}: {e}");
                continue;
            }
        };
        for line in console
            .lines()
            .filter(|l| l.contains(" STALLED") || l.contains(" TAIL "))
        {
            eprintln!("{format}: {line}");
        }
        let (mine, peer) = (parse(&console, "ivmm"), parse(&console, "qemu"));
        if mine.is_empty() || peer.is_empty() {
            eprintln!("{format}: no results:\n{console}");
            continue;
        }
        print_rows(format, &mine, &peer);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One table row per job: medians over the rounds, their ratio, and each round's ratio
/// (ivmm's round k against QEMU's round k, which ran right after it).
fn print_rows(format: &str, mine: &[VmmRun], peer: &[VmmRun]) {
    let value = |run: &VmmRun, job: &str| run.jobs.iter().find(|(j, _)| j == job).map(|(_, v)| *v);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    for (job, _) in &mine[0].jobs {
        let a: Vec<f64> = mine.iter().filter_map(|r| value(r, job)).collect();
        let b: Vec<f64> = peer.iter().filter_map(|r| value(r, job)).collect();
        let rounds: Vec<String> = mine
            .iter()
            .zip(peer)
            .filter_map(|(m, p)| Some(format!("{:.2}", ratio(value(m, job)?, value(p, job)?))))
            .collect();
        let (ma, mb) = (median(a), median(b));
        println!(
            "| {format} | {job} | {ma:.1} | {mb:.1} | {:.2} | {} |",
            ratio(ma, mb),
            rounds.join(" ")
        );
    }
    let per_read = |runs: &[VmmRun]| {
        median(
            runs.iter()
                .map(|r| r.exits as f64 / EXIT_REQS as f64)
                .collect(),
        )
    };
    let (ea, eb) = (per_read(mine), per_read(peer));
    println!(
        "| {format} | KVM exits per 4 KiB read ({EXIT_REQS} reads + ~2 s idle) | {ea:.2} | {eb:.2} | {:.2} | |",
        ratio(ea, eb)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
