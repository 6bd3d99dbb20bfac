//! virtio-net throughput and latency, ivmm vs QEMU (`-accel kvm -M pc`, virtio-net-pci on a
//! TAP, no vhost), the same stock Debian guest in the same L1 (nested lab on kvm_pvm hosts,
//! directly on hardware-KVM hosts). The guest runs iperf3 (from the host's iperf3 package,
//! carried on a read-only ext4 disk with its libraries) against an iperf3 server in L1 on the
//! TAP's address: guest→host (TX), host→guest (`-R`, RX), and ping RTT (median of 50 pings). Each
//! round boots its own L1 and runs both VMMs in it, one after the other, the first one
//! alternating; a lab fault costs that round only. Everything in the nested lab is emulated
//! and one L1 boot runs faster than the next: the paired ratio of each round is the result,
//! not the absolute numbers.
//!
//! Usage: `cargo run --release -p ivmm-benches --bin lab_net [-- ROUNDS [SECONDS]]`
//! `LAB_NET_PIN=1`: in L1, each VMM's vCPU thread runs on CPU 0 and all its other threads
//! (its network work, and threads they start) on CPU 1, so no run depends on where L1's
//! scheduler happens to wake them.
//! `LAB_NET_QEMU_RX_QUEUE=N`: QEMU's virtio-net gets `rx_queue_size=N` (its default is 256,
//! ivmm's receive queue has 1024 entries), for a like-for-like comparison.
//! Needs `iperf3` installed on the host (`apt-get install iperf3`) and `mkfs.ext4`.

use std::time::Duration;

use ivmm_benches::{median, tool_disk, L1_MARKER_WAIT};
use ivmm_tests::{GuestBoot, Lab, Mode, RunOptions};

const IPERF3: &str = "/usr/bin/iperf3";

fn fail(msg: &str) -> ! {
    eprintln!("lab_net: {msg}");
    std::process::exit(1);
}

/// Guest: mount the iperf3 disk, configure eth0, measure; lines start with `NET-`.
fn guest_command(seconds: u32) -> String {
    format!(
        "mkdir -p /mnt; mount -o ro /dev/vda /mnt || exit 9
I='{iperf3}'
ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0
i=0; until ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 60 ] && break; done
echo NET-RTT $(ping -c 50 -i 0.1 10.0.2.1 | sed -n 's/.* time=\\([0-9.]*\\) ms.*/\\1/p')
echo NET-MARK-TX-BEGIN; $I -c 10.0.2.1 -t {seconds} -f m > /tmp/tx; echo NET-MARK-TX-END
grep receiver /tmp/tx | sed 's/^/NET-TX /'
echo NET-MARK-RX-BEGIN; $I -c 10.0.2.1 -t {seconds} -f m -R > /tmp/rx; echo NET-MARK-RX-END; sleep 1
grep receiver /tmp/rx | sed 's/^/NET-RX /'
echo NET-DONE",
        iperf3 = tool_disk::run_prefix("iperf3")
    )
}

/// `Mbits/sec` of a `NET-TX`/`NET-RX` line; the median of a `NET-RTT` line's ping times
/// (ms). The median, not ping's average: in the nested lab one ping in fifty can take ten
/// times the others, and moved a round's average by a fifth.
fn parse(line: &str) -> Option<f64> {
    if let Some(times) = line.strip_prefix("NET-RTT") {
        let times: Vec<f64> = times
            .split_whitespace()
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        return (!times.is_empty()).then(|| median(times));
    }
    number_before(line, "Mbits/sec")
}

/// The number just before the word `unit` in an iperf3 line.
fn number_before(line: &str, unit: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == unit)?;
    words.get(at.checked_sub(1)?)?.parse().ok()
}

/// (VMM, metric, values): every measurement of a run, per VMM and metric.
type Results = Vec<(String, String, Vec<f64>)>;

fn record(results: &mut Results, vmm: &str, metric: &str, v: f64) {
    match results.iter_mut().find(|(m, k, _)| m == vmm && k == metric) {
        Some((_, _, vals)) => vals.push(v),
        None => results.push((vmm.to_string(), metric.to_string(), vec![v])),
    }
}

/// The median of one VMM's values of `metric` (NaN if it has none).
fn median_of(results: &Results, vmm: &str, metric: &str) -> f64 {
    median(
        results
            .iter()
            .find(|(m, k, _)| m == vmm && k == metric)
            .map(|(_, _, v)| v.clone())
            .unwrap_or_default(),
    )
}

/// Records what one L1 run's console reports: throughput and RTT, and the KVM counter
/// deltas and exit reasons per MByte their direction moved.
fn collect(console: &str, results: &mut Results) {
    let mut current = String::new();
    // MBytes moved by the current VMM's TX and RX, for the per-MB counts.
    let mut moved = [0.0f64; 2];
    for line in console.lines() {
        let line = line.trim();
        if let Some(vmm) = line.strip_prefix("NET-VMM ") {
            current = vmm.to_string();
            moved = [0.0; 2];
            continue;
        }
        for (i, metric) in ["NET-TX", "NET-RX", "NET-RTT"].into_iter().enumerate() {
            if line.starts_with(&format!("{metric} ")) {
                if let Some(v) = parse(line) {
                    record(results, &current, metric, v);
                }
                if let (Some(mb), Some(slot)) = (mbytes(line), moved.get_mut(i)) {
                    *slot = mb;
                }
            }
        }
        let per_mbyte: Option<(&str, Vec<(String, u64)>)> = counts(line)
            .map(|(dir, deltas)| {
                let named = COUNTERS.iter().zip(deltas);
                (dir, named.map(|(n, d)| (format!("{dir} {n}"), d)).collect())
            })
            .or_else(|| {
                let (dir, pairs) = reasons(line)?;
                let named = pairs.into_iter();
                Some((
                    dir,
                    named.map(|(c, n)| (format!("{dir} exit {c}"), n)).collect(),
                ))
            });
        let cpu = cpu_use(line).map(|(dir, u)| {
            // USER_HZ ticks are 10 ms.
            let ms = |ticks: u64| (ticks * 10) as f64;
            let values = vec![
                (format!("{dir} cpu ms vCPU thread"), ms(u.vcpu)),
                (format!("{dir} cpu ms other VMM threads"), ms(u.vmm_other)),
                (format!("{dir} cpu ms L1 iperf3"), ms(u.iperf3)),
            ];
            (dir, values, u.l1_busy_percent)
        });
        if let Some((dir, values, busy)) = cpu {
            record(results, &current, &format!("{dir} L1 busy %"), busy);
            record_per_mbyte(results, &current, moved[usize::from(dir == "RX")], values);
        }
        if let Some((dir, values)) = per_mbyte {
            let values = values.into_iter().map(|(m, n)| (m, n as f64));
            record_per_mbyte(results, &current, moved[usize::from(dir == "RX")], values);
        }
    }
}

/// Records each value divided by the MBytes its direction moved (none if it moved nothing).
fn record_per_mbyte(
    results: &mut Results,
    vmm: &str,
    mbytes: f64,
    values: impl IntoIterator<Item = (String, f64)>,
) {
    if mbytes > 0.0 {
        for (metric, v) in values {
            record(results, vmm, &metric, v / mbytes);
        }
    }
}

/// One round's row of the paired table: both VMMs' throughput each way and the ratios.
fn pair_row(round: usize, first: &str, results: &Results) -> String {
    let get = |vmm: &str, metric: &str| median_of(results, vmm, metric);
    let (ti, tq) = (get("ivmm", "NET-TX"), get("qemu", "NET-TX"));
    let (ri, rq) = (get("ivmm", "NET-RX"), get("qemu", "NET-RX"));
    let rtt = get("qemu", "NET-RTT") / get("ivmm", "NET-RTT");
    format!(
        "| {round} | {first} | {ti:.0} | {tq:.0} | {:.2} | {ri:.0} | {rq:.0} | {:.2} | {rtt:.2} |",
        ti / tq,
        ri / rq
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let seconds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let lab = Lab::detect().unwrap_or_else(|e| fail(&format!("lab: {e}")));
    if lab.mode() == Mode::Direct {
        fail("run this in the nested lab (IVMM_LAB_MODE=nested): it creates TAP devices");
    }
    let dir = std::env::temp_dir().join(format!("ivmm-lab-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&format!("mkdir: {e}")));
    let disk = tool_disk::build(&dir, &[IPERF3]).unwrap_or_else(|e| fail(&e));

    let boot = GuestBoot::new()
        .cmdline("console=ttyS0 reboot=k panic=1 quiet")
        .command(&guest_command(seconds))
        .args(&[
            "--vcpus",
            "1",
            "--mem",
            "512M",
            "--disk",
            "{disk0},format=raw,readonly=on",
            "--net",
            "tap=tapi",
        ]);
    let ivmm = boot
        .shell_command()
        .unwrap_or_else(|e| fail(&format!("{e}")));
    let cmdline = boot
        .full_cmdline()
        .unwrap_or_else(|e| fail(&format!("{e}")));
    // QEMU's receive queue has 256 entries unless told; ivmm's has 1024.
    let qemu_net_options = match std::env::var("LAB_NET_QEMU_RX_QUEUE") {
        Ok(n) if n.parse::<u16>().is_ok() => Some(format!("rx_queue_size={n}")),
        Ok(n) => fail(&format!("LAB_NET_QEMU_RX_QUEUE={n}: not a queue size")),
        Err(_) => None,
    };
    let qemu_rx_queue = qemu_net_options
        .as_ref()
        .map(|o| format!(",{o}"))
        .unwrap_or_default();
    let qemu = format!(
        "/usr/bin/qemu-system-x86_64 -name peer,debug-threads=on -accel kvm -M pc -cpu host -smp 1 \
         -m 512 -nodefaults \
         -no-reboot -display none -serial stdio -kernel /guest/bzImage -initrd /guest/initrd.img \
         -append '{cmdline}' -drive file={{disk0}},format=raw,if=virtio,readonly=on \
         -netdev tap,id=n0,ifname=tapq,script=no,downscript=no,vhost=off \
         -device virtio-net-pci,netdev=n0,romfile={qemu_rx_queue}"
    );
    // Each VMM makes its TAP; L1 gives it the host address once it exists. L1 snapshots KVM's
    // counters (all exits, MMIO exits i.e. kicks, injected interrupts, halts) at the guest's
    // markers around each iperf3 direction, from the console the VMM writes to a file.
    // Each VMM gets a fresh iperf3 server: one whose last client died mid-test (a lab fault
    // in the other VMM's guest) stays busy and refused the next VMM's test.
    // LAB_NET_PIN: pin the VMM's threads once its TAP is up (see PIN_SH).
    let pin = if std::env::var_os("LAB_NET_PIN").is_some() {
        "pin\n"
    } else {
        ""
    };
    let one = |vmm: &str, tap: &str, command: &str| {
        format!(
            "echo NET-VMM {vmm}\n\
             [ -f /tmp/iperf3.pid ] && kill $(cat /tmp/iperf3.pid) && sleep 0.5\n\
             {IPERF3} -s -D -I /tmp/iperf3.pid; sleep 1\n\
             : > /tmp/con.log; {command} > /tmp/con.log 2>&1 & P=$!\n\
             i=0; until [ -e /sys/class/net/{tap} ]; do i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.1; done\n\
             ip addr add 10.0.2.1/24 dev {tap} && ip link set {tap} up\n\
             {pin}\
             w NET-MARK-TX-BEGIN; hist_on; A=$(snap); U1=$(cpu); w NET-MARK-TX-END; B=$(snap); U2=$(cpu); X=$(hist_off)\n\
             w NET-MARK-RX-BEGIN; hist_on; C=$(snap); U3=$(cpu); w NET-MARK-RX-END; D=$(snap); U4=$(cpu); Y=$(hist_off)\n\
             wait $P; echo NET-EXIT $?\n\
             grep -E '^NET-(TX|RX|RTT|DONE)' /tmp/con.log\n\
             grep -q NET-DONE /tmp/con.log || {{ echo NET-FAILED {vmm}; tail -n 40 /tmp/con.log; }}\n\
             echo NET-COUNT TX $A $B; echo NET-COUNT RX $C $D\n\
             echo NET-REASONS TX $X; echo NET-REASONS RX $Y\n\
             echo NET-CPU TX $U1 '|' $U2; echo NET-CPU RX $U3 '|' $U4\n"
        )
    };
    let preamble = format!(
        "{PIN_SH}{CPU_SH}ip link set lo up\n{L1_MARKER_WAIT}\
         K=/sys/kernel/debug/kvm\n\
         snap() {{ echo $(cd $K && cat {counters}); }}\n{HIST_SH}",
        counters = COUNTERS.join(" ")
    );
    let opts = RunOptions::new()
        .disk(&disk)
        .host_binary(IPERF3)
        .host_binary("/usr/bin/qemu-system-x86_64")
        .host_file("/usr/share/seabios/bios-256k.bin")
        .host_file("/usr/share/qemu/linuxboot_dma.bin")
        .host_file("/usr/share/qemu/kvmvapic.bin")
        .timeout(Duration::from_secs(300 + 2 * (60 + 3 * u64::from(seconds))));

    // Each round boots its own L1 and runs both VMMs in it, the first one alternating: a
    // pair shares one L1 boot (whose speed varies from boot to boot), a lab fault costs one
    // round, and neither VMM always goes first.
    let mut results: Results = Vec::new();
    let mut pairs: Vec<String> = Vec::new();
    for round in 1..=rounds {
        let ivmm_first = round % 2 == 1;
        let (a, b) = if ivmm_first {
            (one("ivmm", "tapi", &ivmm), one("qemu", "tapq", &qemu))
        } else {
            (one("qemu", "tapq", &qemu), one("ivmm", "tapi", &ivmm))
        };
        let first = if ivmm_first { "ivmm" } else { "QEMU" };
        match lab.run_shell(&format!("{preamble}{a}{b}"), opts.clone()) {
            Ok(out) => {
                let mut this_round: Results = Vec::new();
                collect(&out.console, &mut this_round);
                pairs.push(pair_row(round, first, &this_round));
                for line in out
                    .console
                    .lines()
                    .filter(|l| l.starts_with("NET-PIN") || l.starts_with("NET-CPU"))
                {
                    eprintln!("round {round}: {line}");
                }
                if out.console.contains("NET-FAILED") {
                    // A VMM without results: show what its guest printed.
                    eprintln!("round {round}:\n{}", out.console);
                }
                for (vmm, metric, values) in this_round {
                    for v in values {
                        record(&mut results, &vmm, &metric, v);
                    }
                }
            }
            Err(e) => {
                eprintln!("lab_net: round {round} lost to the lab: {e}");
                pairs.push(format!("| {round} | {first} | lab fault | | | | | | |"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if results.is_empty() {
        fail("no measurements in any round");
    }

    println!("Each round in its own L1 boot (NaN: that VMM gave no result in the round):");
    println!("| round | first | TX ivmm | TX QEMU | TX ratio | RX ivmm | RX QEMU | RX ratio | RTT QEMU/ivmm |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &pairs {
        println!("{row}");
    }
    println!();
    let get = |vmm: &str, metric: &str| median_of(&results, vmm, metric);
    println!(
        "virtio-net in the {:?} lab: iperf3 TCP {seconds} s each way against L1 over a TAP, ping RTT (median of 50), 1 vCPU, 512 MiB, medians over {rounds} rounds; QEMU's device options: `{}`",
        lab.mode(),
        qemu_net_options.as_deref().unwrap_or("defaults")
    );
    println!("| metric                     |     ivmm |     QEMU | ivmm/QEMU |");
    println!("|----------------------------|----------|----------|-----------|");
    for (metric, label, higher_better) in [
        ("NET-TX", "guest→host Mbit/s", true),
        ("NET-RX", "host→guest Mbit/s", true),
        ("NET-RTT", "ping RTT ms (lower better)", false),
    ] {
        let (i, q) = (get("ivmm", metric), get("qemu", metric));
        let ratio = if higher_better { i / q } else { q / i };
        println!("| {label:<26} | {i:>8.2} | {q:>8.2} | {ratio:>9.2} |");
    }
    println!("(ratio > 1: ivmm better; for RTT the ratio is QEMU/ivmm)");
    println!();
    println!("KVM counters in L1 per MByte moved (median of rounds; fewer is cheaper):");
    println!("| direction, counter           |     ivmm |     QEMU | ivmm/QEMU |");
    println!("|------------------------------|----------|----------|-----------|");
    for dir in ["TX", "RX"] {
        for name in COUNTERS {
            let metric = format!("{dir} {name}");
            let (i, q) = (get("ivmm", &metric), get("qemu", &metric));
            println!("| {metric:<28} | {i:>8.1} | {q:>8.1} | {:>9.2} |", i / q);
        }
    }
    println!();
    println!("CPU time in L1 per MByte moved, and how busy L1 was (median of rounds):");
    println!("| direction, what                   |     ivmm |     QEMU |");
    println!("|------------------------------------|----------|----------|");
    for dir in ["TX", "RX"] {
        for what in [
            "cpu ms vCPU thread",
            "cpu ms other VMM threads",
            "cpu ms L1 iperf3",
            "L1 busy %",
        ] {
            let metric = format!("{dir} {what}");
            let (i, q) = (get("ivmm", &metric), get("qemu", &metric));
            println!("| {metric:<34} | {i:>8.2} | {q:>8.2} |");
        }
    }
    println!();
    println!("KVM exits in L1 by SVM exit reason per MByte moved (median of rounds):");
    println!("| direction, exit reason              |     ivmm |     QEMU |");
    println!("|-------------------------------------|----------|----------|");
    for dir in ["TX", "RX"] {
        let prefix = format!("{dir} exit ");
        let mut codes: Vec<u32> = results
            .iter()
            .filter_map(|(_, k, _)| k.strip_prefix(&prefix)?.parse().ok())
            .collect();
        codes.sort_unstable();
        codes.dedup();
        for code in codes {
            let metric = format!("{prefix}{code}");
            let (i, q) = (get("ivmm", &metric), get("qemu", &metric));
            if i.max(q) < 0.05 {
                continue;
            }
            let label = format!("{dir} {}", svm_exit_name(code));
            println!("| {label:<35} | {i:>8.2} | {q:>8.2} |");
        }
    }
}

/// L1 shell function `pin`: the VMM's (`$P`) first vCPU thread (ivmm `vcpu0`, QEMU
/// `CPU 0/KVM`) to CPU 0, its other threads to CPU 1; threads started later inherit their
/// starter's CPU (ivmm's device threads come from its spawner thread). QEMU names its vCPU
/// thread only with `-name …,debug-threads=on`. A new thread takes its name only once it
/// runs, so `pin` first waits (up to 10 s) for the vCPU thread's name; without that wait ivmm's
/// `vcpu0`, still named after its spawner, was pinned as one of the other threads. A thread
/// taskset could not pin is reported.
const PIN_SH: &str = "pin() { i=0; until grep -qxE 'vcpu0|CPU 0/KVM' /proc/$P/task/*/comm 2>/dev/null; do \
    i=$((i+1)); [ $i -gt 100 ] && { echo NET-PIN-FAILED no vCPU thread named yet; break; }; sleep 0.1; done; \
    for t in /proc/$P/task/*; do case \"$(cat $t/comm)\" in \
    vcpu0|'CPU 0/KVM') m=1;; *) m=2;; esac; \
    taskset -p $m ${t##*/} >/tmp/pin.err 2>&1 || echo NET-PIN-FAILED $(cat $t/comm): $(cat /tmp/pin.err); done; \
    echo NET-PINNED $(for t in /proc/$P/task/*; do echo $(cat $t/comm)@$(taskset -p ${t##*/} | sed 's/.*: //'); done); }\n";

/// L1 shell function `cpu`: CPU time so far, in clock ticks (USER_HZ, 100 a second), as
/// `key:ticks` words: all of L1's CPUs (`all`, `idle`), the iperf3 server (`srv`), and each
/// thread of the VMM (`$P`) as `name@tid` (spaces as `_`: QEMU's `CPU_0/KVM`). A vCPU
/// thread's time includes the time its guest ran.
const CPU_SH: &str =
    "st() { set -- $(sed 's/.*) //' $1/stat 2>/dev/null); echo $((${12:-0}+${13:-0})); }\n\
    cpu() { set -- $(head -n 1 /proc/stat); echo all:$(($2+$3+$4+$5+$6+$7+$8+$9)) idle:$(($5+$6)) \
    srv:$(st /proc/$(cat /tmp/iperf3.pid 2>/dev/null)) \
    $(for t in /proc/$P/task/*; do echo \"$(tr ' ' _ < $t/comm)@${t##*/}:$(st $t)\"; done); }\n";

/// What one direction's `NET-CPU` line gives, from the ticks between its two `cpu` snapshots.
#[derive(Debug, PartialEq)]
struct CpuUse {
    /// Share of L1's CPU time not idle, in percent of all its CPUs.
    l1_busy_percent: f64,
    /// Ticks of the VMM's vCPU thread (the guest's run time included).
    vcpu: u64,
    /// Ticks of all the VMM's other threads.
    vmm_other: u64,
    /// Ticks of L1's iperf3 server.
    iperf3: u64,
}

/// `NET-CPU TX|RX key:ticks ... | key:ticks ...` -> direction and what the ticks between
/// the two snapshots say. A thread that ended between them counts as nothing.
fn cpu_use(line: &str) -> Option<(&str, CpuUse)> {
    let mut words = line.strip_prefix("NET-CPU ")?.split_whitespace();
    let dir = words.next()?;
    let rest: Vec<&str> = words.collect();
    let bar = rest.iter().position(|w| *w == "|")?;
    let parse = |ws: &[&str]| -> Option<Vec<(String, u64)>> {
        ws.iter()
            .map(|w| {
                let (k, v) = w.rsplit_once(':')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    };
    let (before, after) = (parse(&rest[..bar])?, parse(&rest[bar + 1..])?);
    let delta = |key: &str| -> u64 {
        let at = |snap: &[(String, u64)]| snap.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        match (at(&before), at(&after)) {
            (Some(b), Some(a)) => a.saturating_sub(b),
            _ => 0,
        }
    };
    let (all, idle) = (delta("all"), delta("idle"));
    if all == 0 {
        return None;
    }
    let mut vcpu = 0;
    let mut vmm_other = 0;
    for (name, _) in &after {
        let thread = name.split('@').next().unwrap_or_default();
        match thread {
            "all" | "idle" | "srv" => {}
            "vcpu0" | "CPU_0/KVM" => vcpu += delta(name),
            _ => vmm_other += delta(name),
        }
    }
    let use_ = CpuUse {
        l1_busy_percent: 100.0 * all.saturating_sub(idle) as f64 / all as f64,
        vcpu,
        vmm_other,
        iperf3: delta("srv"),
    };
    Some((dir, use_))
}

/// L1 shell functions: `hist_on` starts counting KVM exits by exit reason (a
/// histogram trigger on the `kvm:kvm_exit` tracepoint), `hist_off` prints the
/// counts as `reason:count` words and removes the trigger.
const HIST_SH: &str = "T=/sys/kernel/tracing; [ -d $T/events ] || mount -t tracefs nodev $T 2>/dev/null\n\
    H='hist:keys=exit_reason:vals=hitcount'\n\
    hist_on() { echo \"$H\" > $T/events/kvm/kvm_exit/trigger; }\n\
    hist_off() { echo $(sed -n 's/^{ exit_reason: *\\([0-9]*\\) *} hitcount: *\\([0-9]*\\).*/\\1:\\2/p' $T/events/kvm/kvm_exit/hist); \
    echo \"!$H\" > $T/events/kvm/kvm_exit/trigger; }\n";

/// Names of the SVM exit codes (AMD APM vol. 2, appendix C) that the lab's
/// L2 guests cause; others print as numbers.
fn svm_exit_name(code: u32) -> String {
    let name = match code {
        0x00..=0x0f => return format!("CR{} read", code),
        0x10..=0x1f => return format!("CR{} write", code - 0x10),
        0x40..=0x5f => return format!("exception {}", code - 0x40),
        0x60 => "INTR (host interrupt)",
        0x61 => "NMI",
        0x64 => "VINTR (interrupt window)",
        0x6e => "RDTSC",
        0x72 => "CPUID",
        0x77 => "PAUSE",
        0x78 => "HLT",
        0x7b => "IOIO",
        0x7c => "MSR",
        0x81 => "VMMCALL",
        0x400 => "NPF (MMIO, EPT-style fault)",
        _ => return format!("0x{code:x}"),
    };
    name.to_string()
}

/// `NET-REASONS TX|RX reason:count ...` -> direction and (reason, count) pairs.
fn reasons(line: &str) -> Option<(&str, Vec<(u32, u64)>)> {
    let mut words = line.strip_prefix("NET-REASONS ")?.split_whitespace();
    let dir = words.next()?;
    let pairs = words
        .map(|w| {
            let (r, c) = w.split_once(':')?;
            Some((r.parse().ok()?, c.parse().ok()?))
        })
        .collect::<Option<_>>()?;
    Some((dir, pairs))
}

/// What L1's `snap` reads, in order (files in /sys/kernel/debug/kvm).
const COUNTERS: [&str; 4] = ["exits", "mmio_exits", "irq_injections", "halt_exits"];

/// `MBytes` of a `NET-TX`/`NET-RX` iperf3 receiver line. iperf3 switches units with the
/// amount (binary prefixes), so a fast round reports `GBytes`.
fn mbytes(line: &str) -> Option<f64> {
    [
        ("KBytes", 1.0 / 1024.0),
        ("MBytes", 1.0),
        ("GBytes", 1024.0),
    ]
    .into_iter()
    .find_map(|(unit, scale)| number_before(line, unit).map(|n| n * scale))
}

/// `NET-COUNT TX|RX <before: 4 counters> <after: 4 counters>` -> direction and the deltas.
fn counts(line: &str) -> Option<(&str, Vec<u64>)> {
    let mut words = line.strip_prefix("NET-COUNT ")?.split_whitespace();
    let dir = words.next()?;
    let values: Vec<u64> = words.map(|w| w.parse().ok()).collect::<Option<_>>()?;
    let n = COUNTERS.len();
    if values.len() != 2 * n {
        return None;
    }
    let deltas = (0..n)
        .map(|i| values[n + i].saturating_sub(values[i]))
        .collect();
    Some((dir, deltas))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn iperf_and_ping_lines_parse() {
        let tx =
            "NET-TX [  5]   0.00-8.00   sec   912 MBytes   956 Mbits/sec                  receiver";
        assert_eq!(parse(tx), Some(956.0));
        let rtt = "NET-RTT 0.311 0.455 9.913";
        assert_eq!(parse(rtt), Some(0.455));
        assert_eq!(parse("NET-RTT"), None);
        assert_eq!(parse("NET-RTT 1.0 x"), None);
        assert_eq!(parse("NET-TX nothing"), None);
        assert_eq!(super::mbytes(tx), Some(912.0));
        let fast = "NET-TX [  5]   0.00-8.00   sec  1.50 GBytes  1610 Mbits/sec   receiver";
        assert_eq!(super::mbytes(fast), Some(1536.0));
    }

    #[test]
    fn counter_lines_give_deltas() {
        let line = "NET-COUNT TX 10 5 3 1 110 25 4 1";
        assert_eq!(super::counts(line), Some(("TX", vec![100, 20, 1, 0])));
        assert_eq!(super::counts("NET-COUNT RX 1 2"), None);
    }

    #[test]
    fn a_round_console_gives_both_vmms_results_and_its_pair_row() {
        let console = "NET-VMM qemu
NET-TX [  5]   0.00-8.05   sec   100 MBytes   118 Mbits/sec                  receiver
NET-RX [  5]   0.00-8.01   sec   272 MBytes   285 Mbits/sec                  receiver
NET-RTT 4.807 13.500 27.884
NET-COUNT TX 100 0 0 0 1100 0 0 0
NET-VMM ivmm
NET-TX [  5]   0.00-8.14   sec   200 MBytes   204 Mbits/sec                  receiver
NET-RX [  5]   0.00-8.00   sec   288 MBytes   302 Mbits/sec                  receiver
NET-RTT 2.920 5.400 9.030
NET-COUNT TX 0 0 0 0 1000 0 0 0
NET-REASONS TX 96:400
";
        let mut results = Vec::new();
        super::collect(console, &mut results);
        let get = |vmm, metric| super::median_of(&results, vmm, metric);
        assert_eq!(get("ivmm", "NET-TX"), 204.0);
        assert_eq!(get("qemu", "NET-TX"), 118.0);
        // Counts are per MByte of the same VMM's direction: 1000 exits over 200 MB, 1000 over 100.
        assert_eq!(get("ivmm", "TX exits"), 5.0);
        assert_eq!(get("qemu", "TX exits"), 10.0);
        assert_eq!(get("ivmm", "TX exit 96"), 2.0);
        assert!(get("qemu", "TX exit 96").is_nan());
        assert_eq!(
            super::pair_row(3, "QEMU", &results),
            "| 3 | QEMU | 204 | 118 | 1.73 | 302 | 285 | 1.06 | 2.50 |"
        );
    }

    #[test]
    fn cpu_lines_give_tick_deltas_by_thread_kind() {
        let line = "NET-CPU RX all:1000 idle:600 srv:50 vcpu0@12:100 net@13:10 \
                    | all:1800 idle:800 srv:150 vcpu0@12:500 net@13:60 virtio@14:5";
        let (dir, u) = super::cpu_use(line).expect("parses");
        assert_eq!(dir, "RX");
        assert_eq!(u.l1_busy_percent, 75.0);
        assert_eq!((u.vcpu, u.vmm_other, u.iperf3), (400, 50, 100));
        let qemu = "NET-CPU TX all:0 idle:0 CPU_0/KVM@5:7 | all:10 idle:0 CPU_0/KVM@5:9";
        assert_eq!(super::cpu_use(qemu).map(|(_, u)| u.vcpu), Some(2));
        assert_eq!(super::cpu_use("NET-CPU TX all:1 idle:0"), None);
    }

    #[test]
    fn reason_lines_give_pairs() {
        let line = "NET-REASONS TX 96:120 1024:7";
        assert_eq!(
            super::reasons(line),
            Some(("TX", vec![(96, 120), (1024, 7)]))
        );
        assert_eq!(super::reasons("NET-REASONS RX"), Some(("RX", vec![])));
        assert_eq!(super::reasons("NET-REASONS RX 96"), None);
        assert_eq!(super::svm_exit_name(0x78), "HLT");
        assert_eq!(super::svm_exit_name(0x4e), "exception 14");
    }
}
