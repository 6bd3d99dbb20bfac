//! Tests of the lab itself: that the place where ivmm runs really has a working KVM, and that
//! the harness carries files, stdin, exit codes and the ivmm binary there and back.

use ivmm_tests::{Lab, Mode, RunOptions};

fn lab() -> Lab {
    Lab::detect().expect("lab prerequisites (run scripts/setup.sh and scripts/fetch-guest.sh)")
}

#[test]
fn l1_has_hardware_kvm() {
    let lab = lab();
    match lab.mode() {
        Mode::Nested => {
            let out = lab
                .run_shell(
                    "ls -l /dev/kvm && dmesg | grep -iE 'Nested (Paging|Virtualization) enabled' \
                     && grep -c svm /proc/cpuinfo && lsmod | grep -E '^kvm_amd'",
                    RunOptions::new(),
                )
                .expect("L1 shell run");
            assert_eq!(
                out.ivmm_exit, 0,
                "L1 console:\n{}\nL1 log:\n{}",
                out.console, out.l1_log
            );
            assert!(out.console.contains("/dev/kvm"), "{}", out.console);
            assert!(
                out.console.contains("SVM: kvm: Nested Paging enabled"),
                "{}",
                out.console
            );
            assert!(out.console.contains("kvm_amd"), "{}", out.console);
            let boot = out.l1_boot.expect("nested runs time the L1 boot");
            eprintln!("L1 boot to run.sh: {boot:?}, whole run: {:?}", out.elapsed);
        }
        Mode::Direct => {
            let out = lab
                .run_shell(
                    "test -c /dev/kvm && exec 3<>/dev/kvm && echo kvm-opened",
                    RunOptions::new(),
                )
                .expect("host shell run");
            assert_eq!(out.ivmm_exit, 0, "{}", out.console);
            assert!(out.console.contains("kvm-opened"));
        }
    }
}

#[test]
fn lab_run_carries_files_disks_guest_artifacts_stdin_and_exit_code() {
    let lab = lab();
    let disk = std::env::temp_dir().join(format!("ivmm-lab-test-disk-{}", std::process::id()));
    let mut image = b"DISK-SIGNATURE-0".to_vec();
    image.resize(1 << 20, 0);
    std::fs::write(&disk, &image).expect("write disk image");
    let guest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest");
    let sizes: Vec<u64> = ["bzImage", "vmlinux", "initrd.img"]
        .iter()
        .map(|f| std::fs::metadata(guest.join(f)).expect("fixture").len())
        .collect();
    let opts = RunOptions::new()
        .file("data.txt", b"payload-from-host\n", false)
        .disk(&disk)
        .send_after_marker("ready>", b"typed-line\n");
    let out = lab.run_shell(
        "cat data.txt; head -c 16 {disk0}; echo; \
         echo sizes: $(wc -c < {bzimage}) $(wc -c < {vmlinux}) $(wc -c < {initrd}); \
         printf 'ready>\\n'; read line; echo \"got:$line\"; exit 7",
        opts,
    );
    let _ = std::fs::remove_file(&disk);
    let out = out.expect("shell run");
    assert_eq!(out.ivmm_exit, 7, "{}\n{}", out.console, out.l1_log);
    assert!(out.console.contains("payload-from-host"), "{}", out.console);
    assert!(out.console.contains("DISK-SIGNATURE-0"), "{}", out.console);
    let want = format!("sizes: {} {} {}", sizes[0], sizes[1], sizes[2]);
    assert!(
        out.console.contains(&want),
        "want '{want}' in:\n{}",
        out.console
    );
    assert!(out.console.contains("got:typed-line"), "{}", out.console);
    eprintln!(
        "L1 boot with vmlinux and a disk: {:?}, whole run {:?}",
        out.l1_boot, out.elapsed
    );
    assert!(out.marker_at("got:").is_some());
    assert!(out.first_output_at() <= out.marker_at("got:"));
}

#[test]
fn ivmm_binary_runs_in_the_lab() {
    let lab = lab();
    lab.ivmm_binary()
        .expect("ivmm binary (cargo build --release -p vmm)");
    let out = lab
        .run_ivmm(&["--version"], RunOptions::new())
        .expect("ivmm run");
    assert_eq!(out.ivmm_exit, 0, "{}\n{}", out.console, out.l1_log);
    assert!(out.console.contains("ivmm"), "{}", out.console);
}

/// The L2 fixtures boot under a real KVM where ivmm runs, with QEMU as the VMM: this checks the
/// fixtures and the lab independently of ivmm, and is the comparison peer for ivmm's boots.
/// One vCPU: QEMU's SMP microvm L2 is the lab's least stable run (tests/README.md); ivmm's
/// SMP boots are `boot`'s and `cpu_models`' to show.
#[test]
fn l2_fixture_boots_under_qemu_kvm_in_the_lab() {
    let lab = lab();
    let qemu = "/usr/bin/qemu-system-x86_64";
    let guest_cmd = "nproc; cat /proc/cmdline; ls /sys/bus/virtio/drivers";
    let cmdline = ivmm_tests::GuestBoot::new()
        .command(guest_cmd)
        .full_cmdline()
        .expect("cmdline");
    let script = format!(
        "{qemu} -accel kvm -M microvm -cpu host -smp 1 -m 256 -nodefaults -no-reboot \
         -display none -serial stdio -kernel {{bzimage}} -initrd {{initrd}} -append '{cmdline}'"
    );
    let opts = RunOptions::new()
        .host_binary(qemu)
        .host_file("/usr/share/seabios/bios-microvm.bin")
        .host_file("/usr/share/qemu/linuxboot_dma.bin")
        .timeout(std::time::Duration::from_secs(120));
    // (QEMU's L2 hit the lab hang here twice in about 25 runs, once in CI: the harness runs
    // such a run once more, loudly; tests/README.md.)
    let mut out = lab
        .run_shell(&script, opts.clone())
        .expect("QEMU in the lab");
    // The lab's other L2 fault: QEMU's microvm L2 dying early without a word (a triple fault,
    // which `-no-reboot` turns into exit 0), seen in stop 14 here and in `cpu_models`.
    if out.ivmm_exit == 0 && out.guest_init_at().is_none() {
        eprintln!(
            "RETRY: QEMU's L2 ended before init (tests/README.md); its console:\n{}",
            out.console
        );
        out = lab.run_shell(&script, opts).expect("QEMU in the lab");
    }
    assert_eq!(
        out.ivmm_exit, 0,
        "console:\n{}\nL1 log:\n{}",
        out.console, out.l1_log
    );
    let init_at = out.guest_init_at().unwrap_or_else(|| {
        panic!(
            "the guest never reached init under QEMU:\nconsole:\n{}\nL1 log:\n{}",
            out.console, out.l1_log
        )
    });
    let cmd = out.guest_cmd_ok().expect("guest command result");
    let mut lines = cmd.lines();
    assert_eq!(lines.next(), Some("1"), "{cmd}");
    assert!(cmd.contains("ivmm.cmd="), "{cmd}");
    assert!(cmd.contains("virtio_blk"), "{cmd}");
    eprintln!(
        "QEMU/KVM peer: L1 boot {:?}, L2 init after {init_at:?}, whole run {:?}",
        out.l1_boot, out.elapsed
    );
}
