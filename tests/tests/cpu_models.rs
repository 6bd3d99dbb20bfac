//! CPU models against QEMU as the oracle: the same L2 kernel booted by ivmm and by QEMU
//! (`-accel kvm -cpu MODEL,enforce`) inside the same L1 must show the same /proc/cpuinfo
//! vendor, model name and flags; models this KVM cannot provide must fail in both, with the
//! same missing features. All comparisons run in one L1 boot (one script) to keep the lab
//! cheap; each comparison is reported separately in the failure message.

use std::collections::BTreeSet;
use std::time::Duration;

use ivmm_tests::{GuestBoot, Lab, Mode, RunOptions, MARK_GUEST_INIT};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const CPUINFO_CMD: &str = "grep -m3 -E '^(vendor_id|model name|flags)' /proc/cpuinfo";

/// (ivmm --cpu, QEMU -cpu) pairs. Unversioned QEMU names depend on the machine type (microvm
/// takes the newest version); ivmm's names mean version 1, as on QEMU's pc/q35 machines.
const MODEL_PAIRS: &[(&str, &str)] = &[
    ("host", "host"),
    ("qemu64", "qemu64-v1"),
    ("kvm64", "kvm64-v1"),
    ("EPYC", "EPYC-v1"),
    ("EPYC-Rome", "EPYC-Rome-v1"),
    ("x86-64-v2", "qemu64-v1,-svm,+popcnt,+sse4.1,+sse4.2,+ssse3"),
    ("Skylake-Server", "Skylake-Server-v1"),
    ("host,-avx2", "host,-avx2"),
    // libvirt starts cpu64-rhel6 as qemu64 plus the model's feature list.
    ("cpu64-rhel6", "qemu64-v1,-svm,+x2apic"),
    ("x86-64-v1", "qemu64-v1,-svm"),
    (
        "x86-64-v3",
        "qemu64-v1,-svm,+popcnt,+sse4.1,+sse4.2,+ssse3,+avx,+avx2,+bmi1,+bmi2,+f16c,+fma,\
         +abm,+movbe,+xsave",
    ),
    (
        "x86-64-v4",
        "qemu64-v1,-svm,+popcnt,+sse4.1,+sse4.2,+ssse3,+avx,+avx2,+bmi1,+bmi2,+f16c,+fma,\
         +abm,+movbe,+xsave,+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl",
    ),
    ("Nehalem", "Nehalem-v1"),
    ("Westmere", "Westmere-v1"),
    ("SandyBridge", "SandyBridge-v1"),
    ("IvyBridge", "IvyBridge-v1"),
    ("Haswell-noTSX", "Haswell-v2"),
    ("Broadwell-noTSX", "Broadwell-v2"),
    ("Skylake-Client", "Skylake-Client-v1"),
    ("Cascadelake-Server", "Cascadelake-Server-v1"),
    ("Icelake-Server", "Icelake-Server-v1"),
    ("EPYC-Milan", "EPYC-Milan-v1"),
];

fn lab() -> Lab {
    Lab::detect().expect("lab prerequisites (run scripts/setup.sh and scripts/fetch-guest.sh)")
}

fn cmdline(cmd: &str) -> String {
    GuestBoot::new()
        .command(cmd)
        .full_cmdline()
        .expect("guest cmdline")
}

/// Seconds one L2 boot may take before the script kills it. A boot takes 4-10 s in the
/// nested lab (47 boots and the L1 boot in 205-450 s, depending on the machine); the bound
/// is for the lab's known hang (tests/README.md), where an L2 vCPU stops for good inside
/// L1's KVM and its VMM, ivmm or QEMU, waits forever. Small enough that a hang and its rerun
/// fit in the whole run's timeout on a slow machine.
const RUN_BOUND_SECS: u32 = 60;

/// The script's `run NAME CMD...`: runs one L2 boot between `=== RUN` and `=== END rc=`
/// markers. A boot killed at [`RUN_BOUND_SECS`] (rc 137), or one that ended "cleanly" (rc 0)
/// before the guest's init ran — the lab's L2 triple-faulting early, seen with QEMU's
/// microvm L2 (`-no-reboot` then exits 0 without a word) — runs once more after an
/// `=== AGAIN` marker; the test reports every such retry, and a second failure fails it.
/// (Refusals exit 1 and are never retried.)
fn run_function() -> String {
    format!(
        "run() {{ name=$1; shift; echo \"=== RUN $name ===\"; \
         {{ timeout -s KILL {RUN_BOUND_SECS} \"$@\" 2>&1; echo $? >/tmp/run.rc; }} | tee /tmp/run.out; \
         rc=$(cat /tmp/run.rc); \
         why=''; [ $rc -eq 137 ] && why=\"killed after {RUN_BOUND_SECS} s\"; \
         [ $rc -eq 0 ] && ! grep -q {MARK_GUEST_INIT} /tmp/run.out && why='ended before init'; \
         if [ -n \"$why\" ]; then \
         echo \"=== AGAIN $name: $why, running it again ===\"; \
         timeout -s KILL {RUN_BOUND_SECS} \"$@\" 2>&1; rc=$?; fi; \
         echo \"=== END $name rc=$rc ===\"; }}\n"
    )
}

fn ivmm_run(ivmm: &str, cpu: &str, extra: &str, cmd: &str) -> String {
    ivmm_run_initrd(ivmm, cpu, extra, cmd, "{initrd}")
}

fn ivmm_run_initrd(ivmm: &str, cpu: &str, extra: &str, cmd: &str, initrd: &str) -> String {
    format!(
        "{ivmm} run --kernel {{bzimage}} --initrd {initrd} --mem 256M --cpu {cpu} {extra} \
         --cmdline '{}'",
        cmdline(cmd)
    )
}

/// The fixture L2 initrd with a second cpio appended that holds the L2 kernel's KVM modules
/// under /kvm, so the guest can load kvm_amd (the fixture initrd has no KVM modules).
fn initrd_with_kvm_modules() -> Vec<u8> {
    let guest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest");
    let mut initrd = std::fs::read(guest.join("initrd.img")).expect("guest initrd.img");
    let release = std::fs::read_dir(guest.join("modules"))
        .expect("guest modules (scripts/fetch-guest.sh)")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("a module tree");
    let mut cpio = ivmm_tests::cpio::CpioWriter::new();
    cpio.dir("kvm");
    for (name, rel) in [
        ("irqbypass.ko", "kernel/virt/lib/irqbypass.ko"),
        ("kvm.ko", "kernel/arch/x86/kvm/kvm.ko"),
        ("kvm-amd.ko", "kernel/arch/x86/kvm/kvm-amd.ko"),
    ] {
        let data = std::fs::read(release.join(rel)).expect("KVM module in the guest modules");
        cpio.file(&format!("kvm/{name}"), 0o644, &data);
    }
    // Concatenated newc archives must start 4-byte aligned.
    initrd.resize(initrd.len().next_multiple_of(512), 0);
    initrd.extend_from_slice(&cpio.finish());
    initrd
}

/// QEMU booting the L2 kernel as `machine` (microvm, or pc for the SMP topology boots).
fn qemu_run(machine: &str, cpu: &str, extra: &str, cmd: &str) -> String {
    format!(
        "{QEMU} -accel kvm -M {machine} -cpu {cpu},enforce {extra} -m 256 -nodefaults -no-reboot \
         -display none -serial stdio -kernel {{bzimage}} -initrd {{initrd}} -append '{}'",
        cmdline(cmd)
    )
}

/// One named section of the script's output.
struct Section {
    rc: i32,
    /// The output of the last attempt.
    text: String,
    /// The first attempt's output and why it was run again, if it was.
    first_attempt: Option<String>,
}

fn sections(console: &str) -> Vec<(String, Section)> {
    let mut out = Vec::new();
    let mut rest = console;
    while let Some(start) = rest.find("=== RUN ") {
        let after = &rest[start + 8..];
        let Some(eol) = after.find(" ===") else { break };
        let name = after[..eol].to_string();
        let body = &after[eol + 4..];
        let end_marker = format!("=== END {name} rc=");
        let Some(end) = body.find(&end_marker) else {
            break;
        };
        let rc_text = &body[end + end_marker.len()..];
        let rc = rc_text
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or(-1);
        let text = &body[..end];
        let again_marker = format!("=== AGAIN {name}:");
        let (text, first_attempt) = match text.find(&again_marker) {
            Some(at) => {
                let retry = &text[at..];
                let eol = retry.find('\n').unwrap_or(retry.len());
                let why = retry[again_marker.len()..eol].trim();
                let why = why.strip_suffix(" ===").unwrap_or(why);
                let why = why.strip_suffix(", running it again").unwrap_or(why);
                let second = retry.get(eol + 1..).unwrap_or("");
                let first = format!("({why}){}", &text[..at]);
                (second.to_string(), Some(first))
            }
            None => (text.to_string(), None),
        };
        out.push((
            name,
            Section {
                rc,
                text,
                first_attempt,
            },
        ));
        rest = &body[end..];
    }
    out
}

/// The guest command's output in a section.
fn guest_output(text: &str) -> Option<String> {
    let begin = text.find("IVMM-CMD-BEGIN")?;
    let body = &text[begin..];
    let body = &body[body.find('\n')? + 1..];
    let end = body.find("IVMM-CMD-EXIT=")?;
    Some(body[..end].to_string())
}

#[derive(Debug, PartialEq, Eq)]
struct CpuInfo {
    vendor: String,
    model_name: String,
    flags: BTreeSet<String>,
}

fn cpuinfo(out: &str) -> Option<CpuInfo> {
    let field = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    Some(CpuInfo {
        vendor: field("vendor_id")?,
        model_name: field("model name")?,
        flags: field("flags")?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    })
}

/// QEMU's "host doesn't support requested feature: CPUID.07H:EBX.avx512f [bit 16]" lines as
/// Linux-style names (as ivmm prints them).
fn qemu_missing(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.contains("doesn't support requested feature") && l.contains("[bit"))
        .filter_map(|l| l.split(" [bit").next())
        .filter_map(|l| l.rsplit('.').next())
        .map(|n| match n {
            "tsc-deadline" => "tsc_deadline_timer".to_string(),
            "cr8legacy" => "cr8_legacy".to_string(),
            // "sse4.1" was split at its dot above.
            "1" => "sse4_1".to_string(),
            "2" => "sse4_2".to_string(),
            other => other.replace('-', "_"),
        })
        .collect()
}

fn ivmm_missing(text: &str) -> Option<BTreeSet<String>> {
    let line = text.lines().find(|l| l.contains("cannot provide:"))?;
    let list = line.split("cannot provide:").nth(1)?;
    let list = list.split(" (").next()?;
    Some(list.split_whitespace().map(str::to_string).collect())
}

fn diff(a: &BTreeSet<String>, b: &BTreeSet<String>) -> String {
    let only_a: Vec<_> = a.difference(b).collect();
    let only_b: Vec<_> = b.difference(a).collect();
    format!("only ivmm: {only_a:?}; only QEMU: {only_b:?}")
}

/// Run options that bring both VMMs into L1: QEMU (with microvm's firmware) and ivmm.
fn both_vmms(ivmm_host: &std::path::Path) -> RunOptions {
    RunOptions::new()
        .host_binary(QEMU)
        .host_binary(ivmm_host)
        .host_file("/usr/share/seabios/bios-microvm.bin")
        .host_file("/usr/share/qemu/linuxboot_dma.bin")
}

/// Topologies compared, as (name, ivmm's `--cpu-topology`, QEMU's `-smp`). Two vCPUs each:
/// the L2 never has more vCPUs than L1 has CPUs, because an overcommitted SMP L2 is where the
/// lab breaks (4 vCPUs on L1's 2: QEMU's L2 hung with L1's kernel wedged, interrupts off, or
/// L1 panicked, in most runs; ivmm's triple-faulted now and then; tests/README.md). One case
/// shows packages, one shows how threads read on AMD without topoext (as separate cores).
const TOPOLOGIES: &[(&str, &str, &str)] = &[
    (
        "sockets2",
        "--vcpus 2 --cpu-topology sockets=2,cores=1,threads=1",
        "-smp 2,sockets=2,cores=1,threads=1",
    ),
    (
        "threads2",
        "--vcpus 2 --cpu-topology sockets=1,cores=1,threads=2",
        "-smp 2,sockets=1,cores=1,threads=2",
    ),
];

/// The topology boots, in a lab run of their own (rerun once, printed, if it fails) so that a
/// lab fault there costs one short run instead of the whole comparison. QEMU boots them as a
/// `pc` machine: its SMP microvm L2 stopped after "PCI: Fatal: No config space access
/// function found" with both vCPU counts tried, its `pc` L2 did not.
fn topology_console(
    lab: &Lab,
    ivmm: &str,
    ivmm_host: &std::path::Path,
    topo_cmd: &str,
) -> Result<String, String> {
    let mut script = run_function();
    for (name, ours, theirs) in TOPOLOGIES {
        script += &format!(
            "run ivmm-{name} {}\n",
            ivmm_run(ivmm, "host", ours, topo_cmd)
        );
        script += &format!(
            "run qemu-{name} {}\n",
            qemu_run("pc", "host", theirs, topo_cmd)
        );
    }
    // L1's boot and four boots, one of them run again at most.
    let opts = || {
        both_vmms(ivmm_host)
            .host_file("/usr/share/seabios/bios-256k.bin")
            .host_file("/usr/share/qemu/kvmvapic.bin")
            .timeout(Duration::from_secs(500))
    };
    match lab.run_shell(&script, opts()) {
        Ok(out) => Ok(out.console),
        Err(first) => {
            eprintln!("RETRY: the topology boots' lab run failed (tests/README.md): {first:?}");
            lab.run_shell(&script, opts())
                .map(|out| out.console)
                .map_err(|e| format!("topology lab run failed twice:\n{first:?}\n---\n{e:?}"))
        }
    }
}

#[test]
fn cpu_models_match_qemu_in_the_same_l1() {
    let lab = lab();
    let ivmm_host = lab
        .ivmm_binary()
        .expect("ivmm binary (cargo build --release -p vmm)");
    let ivmm = ivmm_host.display().to_string();
    let topo_cmd = "for c in /sys/devices/system/cpu/cpu[0-9]*; do echo $(basename $c) \
                    $(cat $c/topology/physical_package_id $c/topology/core_id \
                    $c/topology/thread_siblings_list $c/topology/core_siblings_list); done";
    let svm_cmd = "grep -c -w svm /proc/cpuinfo; ls /kvm; dmesg | grep -iE 'initr|unpack'; insmod /kvm/irqbypass.ko; insmod /kvm/kvm.ko; \
                   insmod /kvm/kvm-amd.ko; dmesg | grep -iE 'nested|svm' | head -5; ls /dev/kvm";

    let mut script = run_function();
    for (i, (ours, theirs)) in MODEL_PAIRS.iter().enumerate() {
        script += &format!("run ivmm{i} {}\n", ivmm_run(&ivmm, ours, "", CPUINFO_CMD));
        script += &format!(
            "run qemu{i} {}\n",
            qemu_run("microvm", theirs, "", CPUINFO_CMD)
        );
    }
    script += &format!(
        "run ivmm-svm {}\n",
        ivmm_run_initrd(&ivmm, "qemu64,+svm", "", svm_cmd, "{files}/l2-kvm.img")
    );
    let opts = both_vmms(&ivmm_host)
        .file("l2-kvm.img", &initrd_with_kvm_modules(), false)
        .timeout(Duration::from_secs(1200));
    let out = lab.run_shell(&script, opts).expect("lab run");
    let log = std::env::temp_dir().join("ivmm-cpu-models-console.log");
    let _ = std::fs::write(&log, &out.console);
    eprintln!("whole console: {}", log.display());
    let topology = topology_console(&lab, &ivmm, &ivmm_host, topo_cmd);
    let console = format!("{}{}", out.console, topology.as_deref().unwrap_or_default());
    let console = console.replace('\r', "");
    let secs = sections(&console);
    let get = |name: &str| secs.iter().find(|(n, _)| n == name).map(|(_, s)| s);

    for (name, section) in &secs {
        if let Some(first) = &section.first_attempt {
            eprintln!(
                "RETRIED {name}: its first boot failed the lab's way (tests/README.md); its \
                 output:\n{first}"
            );
        }
    }
    let mut failures: Vec<String> = secs
        .iter()
        .filter(|(_, s)| s.first_attempt.is_some())
        .filter_map(|(name, s)| match s.rc {
            137 => Some(format!(
                "{name}: killed after {RUN_BOUND_SECS} s on its second try"
            )),
            0 if !s.text.contains(MARK_GUEST_INIT) => {
                Some(format!("{name}: ended before init on its second try too"))
            }
            _ => None,
        })
        .collect();
    if let Err(e) = &topology {
        failures.push(e.clone());
    }
    let mut passed = Vec::new();
    for (i, (ours, theirs)) in MODEL_PAIRS.iter().enumerate() {
        let (Some(a), Some(b)) = (get(&format!("ivmm{i}")), get(&format!("qemu{i}"))) else {
            failures.push(format!("{ours}: no output (lab console:\n{})", out.console));
            continue;
        };
        let qemu_boot = guest_output(&b.text).and_then(|o| cpuinfo(&o));
        let ivmm_boot = guest_output(&a.text).and_then(|o| cpuinfo(&o));
        match (ivmm_boot, qemu_boot) {
            (Some(x), Some(y)) => {
                if x == y {
                    passed.push(format!("{ours} = QEMU {theirs}"));
                } else {
                    failures.push(format!(
                        "{ours} vs QEMU {theirs}: vendor {:?}/{:?}, model name {:?}/{:?}, flags {}",
                        x.vendor,
                        y.vendor,
                        x.model_name,
                        y.model_name,
                        diff(&x.flags, &y.flags)
                    ));
                }
            }
            (None, None) => {
                let theirs_missing = qemu_missing(&b.text);
                match ivmm_missing(&a.text) {
                    Some(m) if m == theirs_missing && a.rc != 0 => {
                        passed.push(format!("{ours}: both refuse, missing {m:?}"))
                    }
                    Some(m) => failures.push(format!(
                        "{ours}: missing lists differ: {}\nivmm:\n{}\nQEMU:\n{}",
                        diff(&m, &theirs_missing),
                        a.text,
                        b.text
                    )),
                    None => failures.push(format!(
                        "{ours}: QEMU refused ({theirs_missing:?}) but ivmm neither booted nor \
                         listed missing features:\n{}",
                        a.text
                    )),
                }
            }
            (x, y) => failures.push(format!(
                "{ours}: ivmm booted={} QEMU booted={}\nivmm:\n{}\nQEMU:\n{}",
                x.is_some(),
                y.is_some(),
                a.text,
                b.text
            )),
        }
    }
    let flags_of = |ours: &str| {
        let i = MODEL_PAIRS.iter().position(|(o, _)| *o == ours)?;
        get(&format!("ivmm{i}"))
            .and_then(|s| guest_output(&s.text))
            .and_then(|o| cpuinfo(&o))
            .map(|c| c.flags)
    };
    match (flags_of("host"), flags_of("host,-avx2")) {
        (Some(host), Some(minus)) if host.contains("avx2") && !minus.contains("avx2") => {
            passed.push("host,-avx2: avx2 gone, everything else as host".into());
            let mut expect = host.clone();
            expect.remove("avx2");
            if expect != minus {
                failures.push(format!("host,-avx2 vs host: {}", diff(&minus, &expect)));
            }
        }
        (h, m) => failures.push(format!(
            "-avx2: host has avx2: {:?}, host,-avx2 has avx2: {:?}",
            h.map(|f| f.contains("avx2")),
            m.map(|f| f.contains("avx2"))
        )),
    }

    match get("ivmm-svm").and_then(|s| guest_output(&s.text)) {
        Some(o) if o.lines().next().is_some_and(|l| l.trim() != "0") => {
            if o.to_lowercase().contains("nested") {
                passed.push("qemu64,+svm: svm in L2, L2 kvm_amd reports nested".into());
            } else {
                failures.push(format!(
                    "+svm: svm shown but no nested report from L2:\n{o}"
                ));
            }
        }
        other => failures.push(format!("+svm: no svm in L2: {other:?}")),
    }

    let topo = |name: &str| get(name).and_then(|s| guest_output(&s.text));
    for (name, ours, _) in TOPOLOGIES {
        match (topo(&format!("ivmm-{name}")), topo(&format!("qemu-{name}"))) {
            (Some(a), Some(b)) if a == b && a.lines().count() == 2 => {
                passed.push(format!("topology {ours}:\n{a}"))
            }
            (a, b) => failures.push(format!(
                "topology {ours} differs:\nivmm: {a:?}\nQEMU: {b:?}"
            )),
        }
    }

    eprintln!("passed:\n  {}", passed.join("\n  "));
    assert!(
        failures.is_empty(),
        "{} comparisons failed:\n{}\n(mode {:?}, whole run {:?})",
        failures.len(),
        failures.join("\n\n"),
        matches!(lab.mode(), Mode::Nested),
        out.elapsed
    );
}

#[test]
fn a_retried_boot_reports_its_last_attempt_and_keeps_the_first() {
    let console = "=== RUN a ===\nok\n=== END a rc=0 ===\n=== RUN b ===\nhung\n\
                   === AGAIN b: killed after 60 s, running it again ===\nsecond\n\
                   === END b rc=0 ===\n";
    let secs = sections(console);
    assert_eq!(secs.len(), 2);
    assert_eq!(
        (secs[0].1.text.as_str(), secs[0].1.first_attempt.is_none()),
        ("\nok\n", true)
    );
    assert_eq!(secs[1].1.text, "second\n");
    assert_eq!(
        secs[1].1.first_attempt.as_deref(),
        Some("(killed after 60 s)\nhung\n")
    );
    let console = "=== RUN c ===\nPCI: Fatal\n\
                   === AGAIN c: ended before init, running it again ===\nIVMM-GUEST-INIT\n\
                   === END c rc=0 ===\n";
    let secs = sections(console);
    assert_eq!(secs[0].1.text, "IVMM-GUEST-INIT\n");
    assert_eq!(
        secs[0].1.first_attempt.as_deref(),
        Some("(ended before init)\nPCI: Fatal\n")
    );
}
