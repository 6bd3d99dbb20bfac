//! L1's own account of a nested run that timed out, asked for over L1's second serial port
//! (`ttyS1`, a socket on the host) just before the kill: where each VMM thread sleeps in L1's
//! kernel, and whether L1's KVM still sees L2 exits. The monitor's register dump
//! ([`crate::monitor`]) tells an idle L1 from a spinning one; this tells a VMM stuck in its
//! own code from an L2 that stopped inside L1's KVM.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::monitor;

/// First and last line of one report.
const BEGIN: &str = "LAB-REPORT-BEGIN";
const END: &str = "LAB-REPORT-END";
/// How long L1 may take to answer one request (busybox forks a few processes per thread).
const ANSWER_LIMIT: Duration = Duration::from_secs(10);
/// Time between the two reports: an L2 whose guest kernel runs at all (even idle, its timer
/// ticks) makes L1's KVM count exits in three seconds.
const REPORT_GAP: Duration = Duration::from_secs(3);

/// Shell for the per-run `run.sh`: defines `lab_report` and answers every line L1 reads on
/// `ttyS1` with one report. `{BEGIN}`/`{END}` frame a report so a late or partial one shows.
pub(crate) fn listener_sh() -> String {
    format!(
        r#"lab_report() {{
	echo "{BEGIN}"
	echo "uptime $(cut -d' ' -f1 /proc/uptime) load $(cut -d' ' -f1-3 /proc/loadavg)"
	line=kvm
	for s in exits halt_exits halt_wakeup irq_injections; do
		[ -r /sys/kernel/debug/kvm/$s ] && line="$line $s=$(cat /sys/kernel/debug/kvm/$s)"
	done
	echo "$line"
	grep -E '^[0-9]+: uart:16550' /proc/tty/driver/serial | sed 's/^/serial /'
	for p in /proc/[0-9]*; do
		read -r name <"$p/comm" 2>/dev/null || continue
		case "$name" in ivmm* | qemu*) ;; *) continue ;; esac
		for t in "$p"/task/*; do
			read -r tname <"$t/comm" 2>/dev/null || continue
			state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "$t/status" 2>/dev/null)
			sys=$(cut -d' ' -f1 "$t/syscall" 2>/dev/null)
			stack=$(head -n 6 "$t/stack" 2>/dev/null | sed 's/^[^]]*] //; s/+.*//' | tr '\n' '<')
			echo "thread $name ${{p##*/}} ${{t##*/}} $tname $state syscall=$sys wchan=$(cat "$t/wchan" 2>/dev/null) stack=${{stack%<}}"
		done
	done
	echo "{END}"
}}
if [ -c /dev/ttyS1 ]; then
	mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
	(
		exec 3<>/dev/ttyS1 </dev/null >/dev/null 2>&1
		stty raw -echo <&3
		while read -r _ <&3; do lab_report >&3 2>&1; done
	) &
fi
"#
    )
}

/// Two reports, [`REPORT_GAP`] apart, or why there were none. Never fails: it only adds to a
/// timeout's report.
pub(crate) fn request(socket: &Path) -> String {
    let mut text = String::new();
    for n in 1..=2 {
        if n > 1 {
            std::thread::sleep(REPORT_GAP);
        }
        match ask(socket) {
            Ok(report) => text.push_str(&report),
            Err(e) => {
                text.push_str(&format!("no L1 report {n} ({}): {e}\n", socket.display()));
                break;
            }
        }
    }
    text
}

fn ask(socket: &Path) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    stream.write_all(b"report\n")?;
    monitor::read_until(&mut stream, ANSWER_LIMIT, |got| {
        framed(&String::from_utf8_lossy(got))
    })?
    .ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no complete answer within {ANSWER_LIMIT:?}"),
        )
    })
}

/// The report between [`BEGIN`] and [`END`] (both lines kept), without carriage returns.
fn framed(text: &str) -> Option<String> {
    let start = text.find(BEGIN)?;
    let len = text[start..].find(END)? + END.len();
    Some(text[start..start + len].replace('\r', "") + "\n")
}

/// One report's parts that matter to [`l2_stopped`].
#[derive(Debug, Default)]
struct Report<'a> {
    kvm_exits: Option<u64>,
    vcpu_threads: Vec<&'a str>,
}

fn reports(text: &str) -> Vec<Report<'_>> {
    let mut out = Vec::new();
    for body in text.split(BEGIN).skip(1) {
        let Some(body) = body.split(END).next() else {
            continue;
        };
        let mut report = Report::default();
        for line in body.lines() {
            if let Some(stats) = line.strip_prefix("kvm ") {
                report.kvm_exits = stats
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("exits="))
                    .and_then(|v| v.parse().ok());
            } else if line.starts_with("thread ivmm ")
                && line.split_whitespace().nth(4).is_some_and(|t| {
                    t.strip_prefix("vcpu")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
            {
                report.vcpu_threads.push(line);
            }
        }
        out.push(report);
    }
    out
}

/// Whether two reports show ivmm's L2 stopped inside L1's KVM: every vCPU thread of the one
/// ivmm asleep in KVM's halt (`kvm_vcpu_block`), in both reports, and L1's KVM counting not a
/// single exit between them. ivmm itself is then waiting on nothing of its own: an L2 whose
/// kernel runs at all, even idle, takes timer interrupts and exits. This is how the nested
/// lab's SMP L2s stop for good (tests/README.md); a guest that halts with interrupts off on
/// purpose looks the same, which is why only runs whose guest had not started yet count.
pub(crate) fn l2_stopped(text: &str) -> bool {
    let reports = reports(text);
    let [first, second] = reports.as_slice() else {
        return false;
    };
    let asleep_in_halt = |r: &Report| {
        !r.vcpu_threads.is_empty()
            && r.vcpu_threads.iter().all(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(5) == Some(&"S")
                    && fields.iter().any(|f| {
                        f.starts_with("stack=kvm_vcpu_block") || f.contains("<kvm_vcpu_block")
                    })
            })
    };
    let same_vcpus = first.vcpu_threads.len() == second.vcpu_threads.len();
    let no_exits = matches!((first.kvm_exits, second.kvm_exits), (Some(a), Some(b)) if a == b);
    asleep_in_halt(first) && asleep_in_halt(second) && same_vcpus && no_exits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(exits: u64, vcpu1: &str) -> String {
        format!(
            "{BEGIN}\nuptime 180.2 load 0.10 0.30 0.20\n\
             kvm exits={exits} halt_exits=901 halt_wakeup=880 irq_injections=4000\n\
             serial 0: uart:16550A port:000003F8 irq:4 tx:20133 rx:0 RTS|DTR\n\
             thread ivmm 212 212 ivmm S syscall=7 wchan=do_sys_poll stack=do_sys_poll<__x64_sys_poll<do_syscall_64\n\
             thread ivmm 212 215 vcpu0 S syscall=16 wchan=kvm_vcpu_block stack=kvm_vcpu_block<kvm_vcpu_halt<kvm_arch_vcpu_ioctl_run<kvm_vcpu_ioctl\n\
             thread ivmm 212 216 {vcpu1}\n\
             thread ivmm 212 217 ivmm-io S syscall=232 wchan=ep_poll stack=ep_poll<do_epoll_wait\n\
             {END}\n"
        )
    }

    const HALTED: &str = "vcpu1 S syscall=16 wchan=kvm_vcpu_block stack=kvm_vcpu_block<kvm_vcpu_halt<kvm_arch_vcpu_ioctl_run";

    #[test]
    fn all_vcpus_halted_and_no_exits_is_a_stopped_l2() {
        let text = report(5000, HALTED) + &report(5000, HALTED);
        assert!(l2_stopped(&text));
    }

    #[test]
    fn exits_moving_a_running_vcpu_or_one_report_is_not() {
        assert!(!l2_stopped(&(report(5000, HALTED) + &report(5012, HALTED))));
        let running = "vcpu1 R syscall=running wchan=0 stack=";
        assert!(!l2_stopped(
            &(report(5000, HALTED) + &report(5000, running))
        ));
        // A vCPU thread waiting on ivmm's own lock is ivmm's hang, not the lab's.
        let futex = "vcpu1 S syscall=202 wchan=futex_wait_queue stack=futex_wait_queue<futex_wait";
        assert!(!l2_stopped(&(report(5000, HALTED) + &report(5000, futex))));
        assert!(!l2_stopped(&report(5000, HALTED)));
        let missing = format!("{}no L1 report 2 (x): timed out\n", report(5000, HALTED));
        assert!(!l2_stopped(&missing));
    }

    #[test]
    fn framed_takes_one_whole_report() {
        let noise = format!("junk\r\n{BEGIN}\r\nkvm exits=1\r\n{END}\r\nmore");
        assert_eq!(
            framed(&noise).as_deref(),
            Some(&*format!("{BEGIN}\nkvm exits=1\n{END}\n"))
        );
        assert_eq!(framed(&format!("{BEGIN}\nkvm exits=1\n")), None);
    }

    #[test]
    fn a_missing_socket_is_reported_not_fatal() {
        let got = request(Path::new("/nonexistent/ivmm-l1-report.sock"));
        assert!(got.contains("no L1 report 1"), "{got}");
    }
}
