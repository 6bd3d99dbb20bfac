//! virtio-blk throughput, ivmm vs QEMU (`-accel kvm`, virtio-blk-pci, `cache=none`,
//! `aio=threads`) on the same images in the same lab (nested L1 on kvm_pvm hosts), the same
//! Debian kernel and initramfs. The guest runs the host's fio (carried on a read-only ext4
//! disk with its libraries, see `tool_disk`) against `/dev/vda` with O_DIRECT and libaio:
//! sequential 1 MiB read/write and random 4 KiB read/write at queue depth 1 and 32, each
//! for a fixed time. KVM exits per 4 KiB request come from L1's
//! `/sys/kernel/debug/kvm/exits`, sampled around a 4 KiB read job (idle timer exits of the
//! sampling window included). Everything in the nested lab is emulated: read the ratios.
//!
//! Usage: `cargo run --release -p ivmm-benches --bin blk [-- SECONDS [raw|qcow2]]`
//! Needs `fio` installed on the host (`apt-get install fio`) and `mkfs.ext4`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ivmm_benches::tool_disk;
use ivmm_tests::{GuestBoot, Lab, Mode, RunOptions};

const MIB: u64 = 1 << 20;
/// Image size; every job stays inside it.
const IMAGE_MIB: u64 = 64;
const EXIT_REQS: u64 = 2048;

/// (image format, VMM, (job, MiB/s) list, KVM exits during the exit-counting job).
type Row = (String, String, Vec<(String, f64)>, u64);

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

/// L1 side: start the VMM in the background with its console in /tmp/con.log, sample KVM's
/// exit counter at the guest's markers, wait for it to end.
fn l1_script(vmm: &str) -> String {
    format!(
        "mount -t debugfs none /sys/kernel/debug 2>/dev/null\n\
         X=/sys/kernel/debug/kvm/exits\n\
         {vmm} > /tmp/con.log 2>&1 &\nP=$!\n\
         w() {{ i=0; until grep -q \"$1\" /tmp/con.log; do i=$((i+1)); [ $i -gt 20000 ] && break; usleep 20000; done; }}\n\
         w EXITS-BEGIN; A=$(cat $X)\n\
         w EXITS-END; B=$(cat $X)\n\
         wait $P; echo VMM-RC=$?\n\
         grep -E '^FIO|BENCH-DONE' /tmp/con.log\n\
         echo EXITS $((B-A))\n"
    )
}

fn parse(console: &str) -> Option<(Vec<(String, f64)>, u64)> {
    let mut jobs = Vec::new();
    let mut exits = None;
    for line in console.lines().map(str::trim) {
        if let Some(fio) = line.strip_prefix("FIO ") {
            let f: Vec<&str> = fio.split(';').collect();
            if let [name, read, write] = f.as_slice() {
                let kib: f64 = read.parse::<f64>().ok()? + write.parse::<f64>().ok()?;
                jobs.push((name.to_string(), kib / 1024.0));
            }
        } else if let Some(n) = line.strip_prefix("EXITS ") {
            exits = n.trim().parse().ok();
        }
    }
    Some((jobs, exits?))
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

    let mut rows: Vec<Row> = Vec::new();
    let only = std::env::args().nth(2);
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
        for (vmm, script) in [("ivmm", ivmm), ("qemu", qemu_cmd)] {
            // `{ivmm}` in a script makes the harness carry ivmm and its libraries.
            let opts = RunOptions::new()
                .disk(image.as_path())
                .disk(tools.as_path())
                .host_binary(qemu)
                .host_file("/usr/share/seabios/bios-256k.bin")
                .host_file("/usr/share/qemu/linuxboot_dma.bin")
                .host_file("/usr/share/qemu/kvmvapic.bin")
                .timeout(Duration::from_secs(900));
            match lab.run_shell(&l1_script(&script), opts) {
                Ok(out) => match parse(&out.console) {
                    Some((jobs, exits))
                        if !jobs.is_empty() && out.console.contains("BENCH-DONE") =>
                    {
                        rows.push((format.into(), vmm.into(), jobs, exits))
                    }
                    _ => eprintln!("{vmm} {format}: no results:\n{}", out.console),
                },
                Err(e) => eprintln!("{vmm} {format}: {e}"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!("fio, {seconds} s per job, O_DIRECT, libaio, {IMAGE_MIB} MiB images, 2 vCPUs, 512 MiB ({:?} lab)", lab.mode());
    println!("| image | job | ivmm MiB/s | QEMU MiB/s | ivmm/QEMU |");
    println!("|---|---|---|---|---|");
    for format in ["raw", "qcow2"] {
        let find = |vmm: &str| rows.iter().find(|r| r.0 == format && r.1 == vmm);
        let (Some(i), Some(q)) = (find("ivmm"), find("qemu")) else {
            continue;
        };
        for (job, mbs) in &i.2 {
            let peer = q.2.iter().find(|(j, _)| j == job).map_or(0.0, |(_, v)| *v);
            println!(
                "| {format} | {job} | {mbs:.1} | {peer:.1} | {:.2} |",
                if peer > 0.0 { mbs / peer } else { 0.0 }
            );
        }
        println!(
            "| {format} | KVM exits per 4 KiB read ({EXIT_REQS} reads + ~2 s idle) | {:.2} | {:.2} | {:.2} |",
            i.3 as f64 / EXIT_REQS as f64,
            q.3 as f64 / EXIT_REQS as f64,
            i.3 as f64 / q.3.max(1) as f64
        );
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
