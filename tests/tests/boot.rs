//! Issue 2's boot scenarios: the stock Debian cloud kernel under ivmm, in the nested-KVM lab
//! (or directly on a hardware-KVM host). Every check reads what the guest itself saw.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ivmm_tests::{GuestBoot, GuestKernel, Lab, LabOutcome, Mode, RunOptions, TRIPLE_FAULT_WARNING};

fn lab() -> Lab {
    Lab::detect().expect("lab prerequisites (run scripts/setup.sh and scripts/fetch-guest.sh)")
}

fn explain(out: &LabOutcome) -> String {
    format!(
        "ivmm exit {}\n--- console ---\n{}\n--- L1 log ---\n{}",
        out.ivmm_exit, out.console, out.l1_log
    )
}

/// Runs `cmd` in a guest booted with `args`; asserts a clean power-off and
/// returns what the command printed.
fn guest_output(lab: &Lab, boot: GuestBoot) -> (String, LabOutcome) {
    let out = lab.boot(&boot, RunOptions::new()).expect("lab run");
    assert_eq!(out.ivmm_exit, 0, "{}", explain(&out));
    let cmd = out
        .guest_cmd_ok()
        .unwrap_or_else(|e| panic!("guest command: {e}\n{}", explain(&out)));
    (cmd, out)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The kernel log lines that mean our firmware (ACPI tables, e820) is wrong.
const FIRMWARE_COMPLAINTS: &str = "ACPI BIOS Error|ACPI Error|ACPI Warning|Firmware Bug|FW_BUG|\
                                   ACPI: \\[Firmware|MMCONFIG.*not reserved|TSC.*unstable";

fn boot_checks(kernel: GuestKernel) {
    let lab = lab();
    let cmd = format!(
        "cat /proc/cmdline; echo CLOCK $(date +%s) $(cat /sys/class/rtc/rtc0/since_epoch); \
         dmesg | grep -iE '{FIRMWARE_COMPLAINTS}' | sed 's/^/COMPLAINT /'; true"
    );
    let boot = GuestBoot::new()
        .kernel(kernel)
        .command(&cmd)
        .args(&["--mem", "512M"]);
    let expected_cmdline = boot.full_cmdline().expect("cmdline");
    let (output, out) = guest_output(&lab, boot);
    let after = unix_now();
    let mut lines = output.lines();
    assert_eq!(
        lines.next(),
        Some(expected_cmdline.as_str()),
        "/proc/cmdline"
    );
    let complaints: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("COMPLAINT"))
        .collect();
    assert!(
        complaints.is_empty(),
        "kernel log complains about firmware: {complaints:#?}"
    );

    // Clock: the guest's date (kvmclock) and its CMOS RTC against the host's time when
    // the line arrived: run start (now - elapsed) + L1 boot + arrival since ivmm start.
    let clock_line = out
        .lines
        .iter()
        .find(|l| l.text.starts_with("CLOCK "))
        .expect("clock line");
    let host_at = after - out.elapsed.as_secs_f64()
        + out.l1_boot.unwrap_or_default().as_secs_f64()
        + clock_line.at.as_secs_f64();
    let fields: Vec<f64> = clock_line
        .text
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().expect("clock value"))
        .collect();
    assert_eq!(fields.len(), 2, "{}", clock_line.text);
    for (what, guest) in ["date", "CMOS RTC"].iter().zip(&fields) {
        let skew = (guest - host_at).abs();
        assert!(
            skew < 5.0,
            "{what}: guest {guest} vs host {host_at:.0}: {skew:.1} s apart"
        );
    }
    eprintln!(
        "{kernel:?}: guest init {:?} after ivmm start, whole run {:?}",
        out.guest_init_at(),
        out.elapsed
    );
}

#[test]
fn bzimage_boots_with_exact_cmdline_clean_acpi_and_right_clock() {
    boot_checks(GuestKernel::BzImage);
}

#[test]
fn elf_vmlinux_boots_through_pvh_with_exact_cmdline() {
    boot_checks(GuestKernel::Vmlinux);
}

#[test]
fn vcpu_count_is_what_the_guest_sees() {
    let lab = lab();
    for n in [1u32, 2, 4] {
        let boot = GuestBoot::new()
            .command("nproc; cat /sys/devices/system/cpu/online; grep -c ^processor /proc/cpuinfo")
            .args(&["--vcpus", &n.to_string()]);
        let (output, _) = guest_output(&lab, boot);
        let online = if n == 1 {
            "0".to_string()
        } else {
            format!("0-{}", n - 1)
        };
        let want = format!("{n}\n{online}\n{n}");
        assert_eq!(output.trim(), want, "--vcpus {n}");
    }
}

#[test]
fn memory_size_is_what_the_guest_sees() {
    let lab = lab();
    for (arg, mib) in [("256M", 256u64), ("1G", 1024), ("3G", 3072), ("5G", 5120)] {
        // "Memory: avail/totalK available" gives the RAM the kernel found in the e820 map.
        let boot = GuestBoot::new()
            .command("dmesg | grep -o 'Memory: [0-9]*K/[0-9]*K'; grep MemTotal /proc/meminfo")
            .args(&["--mem", arg]);
        let (output, _) = guest_output(&lab, boot);
        let seen_kib: u64 = output
            .split('/')
            .nth(1)
            .and_then(|s| s.split('K').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no Memory: line in {output}"));
        let mem_total_kib: u64 = output
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no MemTotal in {output}"));
        let want_kib = mib * 1024;
        let ratio = seen_kib as f64 / want_kib as f64;
        assert!(
            (0.99..=1.0).contains(&ratio),
            "--mem {arg}: kernel found {seen_kib} KiB of {want_kib} KiB"
        );
        // MemTotal excludes what the kernel keeps for itself: its image (~30 MiB for this
        // kernel) and the page structures (64 bytes per 4 KiB page, ~1.6 %).
        let kernel_share = 48 * 1024 + seen_kib * 3 / 100;
        assert!(
            mem_total_kib + kernel_share >= seen_kib && mem_total_kib <= seen_kib,
            "--mem {arg}: MemTotal {mem_total_kib} KiB vs {seen_kib} KiB found"
        );
    }
}

#[test]
fn console_input_reaches_the_guest_shell() {
    let lab = lab();
    // No guest command: init starts an interactive shell on ttyS0.
    let boot = GuestBoot::new();
    // Type only once the prompt is there: busybox's line editor asks the terminal for the
    // cursor position first and would take earlier input as the answer.
    let opts = RunOptions::new()
        .send_after_marker("/ # ", b"echo answer-$((6*7))\n")
        .send_after_marker("answer-42", b"poweroff -f\n")
        .timeout(Duration::from_secs(240));
    let out = lab.boot(&boot, opts).expect("lab run");
    assert!(out.console.contains("answer-42"), "{}", explain(&out));
    assert_eq!(out.ivmm_exit, 0, "{}", explain(&out));
}

#[test]
fn reboot_exits_zero_for_acpi_keyboard_and_triple_fault_resets() {
    let lab = lab();
    for method in ["acpi", "kbd", "triple"] {
        let boot = GuestBoot::new()
            .cmdline(&format!("console=ttyS0 quiet reboot={method}"))
            .command("echo rebooting; reboot -f");
        let out = lab.boot(&boot, RunOptions::new()).expect("lab run");
        assert_eq!(out.ivmm_exit, 0, "reboot={method}\n{}", explain(&out));
        assert!(
            out.console.contains("guest rebooted (--on-reboot exit)"),
            "reboot={method}\n{}",
            explain(&out)
        );
        // ivmm names a triple fault, and only that.
        assert_eq!(
            out.console.contains(TRIPLE_FAULT_WARNING),
            method == "triple",
            "reboot={method}\n{}",
            explain(&out)
        );
    }
}

/// `--on-reboot restart` boots the guest again; the script stops ivmm after the second boot.
#[test]
fn reboot_restart_boots_the_guest_again() {
    let lab = lab();
    let cmdline = GuestBoot::new()
        .command("echo BOOTED; reboot -f")
        .full_cmdline()
        .expect("cmdline");
    let script = format!(
        "{{ivmm}} run --kernel {{bzimage}} --initrd {{initrd}} --on-reboot restart \
           --serial file:boot.log --cmdline '{cmdline}' </dev/null & pid=$!; \
         n=0; while [ $n -lt 900 ]; do \
           c=$(grep -c '^BOOTED' boot.log 2>/dev/null); [ \"${{c:-0}}\" -ge 2 ] && break; \
           sleep 0.2; n=$((n+1)); done; \
         kill -0 $pid && echo STILL-RUNNING; kill -9 $pid; \
         echo BOOTS=$(grep -c '^BOOTED' boot.log); echo '--- boot.log tail'; tail -n 30 boot.log",
    );
    let opts = RunOptions::new().timeout(Duration::from_secs(300));
    let out = lab.run_shell(&script, opts).expect("lab run");
    assert!(out.console.contains("STILL-RUNNING"), "{}", explain(&out));
    assert!(out.console.contains("BOOTS=2"), "{}", explain(&out));
}

#[test]
fn guest_panic_is_reported_through_pvpanic() {
    let lab = lab();
    let boot = GuestBoot::new().command("echo c > /proc/sysrq-trigger; sleep 30");
    let out = lab.boot(&boot, RunOptions::new()).expect("lab run");
    assert_eq!(out.ivmm_exit, 3, "{}", explain(&out));
    assert!(
        out.console.contains("guest kernel panicked"),
        "{}",
        explain(&out)
    );
}

/// SIGTERM presses the ACPI power button; the guest's acpid powers off; ivmm exits 0.
#[test]
fn sigterm_presses_the_power_button_and_the_guest_powers_off() {
    let lab = lab();
    let cmdline = GuestBoot::new().full_cmdline().expect("cmdline");
    let script = format!(
        "{{ivmm}} run --kernel {{bzimage}} --initrd {{initrd}} --serial file:boot.log \
           --shutdown-timeout 120 --cmdline '{cmdline}' </dev/null 2>err.log & pid=$!; \
         n=0; until grep -q IVMM-GUEST-INIT boot.log 2>/dev/null || [ $n -ge 900 ]; do \
           sleep 0.2; n=$((n+1)); done; sleep 2; \
         kill -TERM $pid; wait $pid; echo IVMM-RC=$?; cat err.log; \
         grep -c 'reboot: Power down' boot.log",
    );
    let opts = RunOptions::new().timeout(Duration::from_secs(300));
    let out = lab.run_shell(&script, opts).expect("lab run");
    assert!(out.console.contains("IVMM-RC=0"), "{}", explain(&out));
    assert!(
        out.console.contains("pressing the power button"),
        "{}",
        explain(&out)
    );
}

/// On a terminal, Ctrl-A x quits ivmm (status 4) and the terminal settings are restored.
#[test]
fn escape_key_quits_and_the_terminal_is_restored() {
    let lab = lab();
    let cmdline = GuestBoot::new().full_cmdline().expect("cmdline");
    // In the nested lab ivmm's stdin is L1's console, a terminal. Run directly, the harness
    // pipes stdin, so util-linux `script` provides a pseudo-terminal.
    let run = format!(
        "[ -t 0 ] && echo STDIN-IS-TTY; before=$(stty -g); \
         {{ivmm}} run --kernel {{bzimage}} --initrd {{initrd}} --cmdline '{cmdline}'; rc=$?; \
         [ \"$before\" = \"$(stty -g)\" ] && echo TTY-RESTORED; echo IVMM-RC=$rc"
    );
    let launcher = match lab.mode() {
        Mode::Nested => "sh escape-test.sh",
        Mode::Direct => "script -qec 'sh escape-test.sh' /dev/null",
    };
    // The harness expands placeholders in the whole script, here-document included.
    let script = format!("cat > escape-test.sh <<'EOS'\n{run}\nEOS\n{launcher}\n");
    let opts = RunOptions::new()
        .send_after_marker("IVMM-GUEST-INIT", b"\x01x")
        .timeout(Duration::from_secs(240));
    let out = lab.run_shell(&script, opts).expect("lab run");
    assert!(out.console.contains("STDIN-IS-TTY"), "{}", explain(&out));
    assert!(out.console.contains("IVMM-RC=4"), "{}", explain(&out));
    assert!(
        out.console.contains("quit from the console"),
        "{}",
        explain(&out)
    );
    assert!(out.console.contains("TTY-RESTORED"), "{}", explain(&out));
}
