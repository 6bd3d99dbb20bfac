//! The L1 QEMU's human monitor, read when a nested run times out: where the L1 vCPUs are (in
//! L1's kernel, halted, or running L2 under the emulated SVM) tells a hung guest from a hung
//! lab, which the console alone cannot.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The monitor prompt that ends every reply.
const PROMPT: &str = "(qemu) ";
/// How long one monitor command may take before we give up on it.
const REPLY_LIMIT: Duration = Duration::from_secs(3);

/// Two samples of every L1 vCPU's instruction pointer and flags, a second apart, or why they
/// could not be read. Never fails: it only adds to a timeout's report.
pub(crate) fn vcpu_state(socket: &Path) -> String {
    let mut report = String::new();
    for sample in 1..=2 {
        if sample > 1 {
            std::thread::sleep(Duration::from_secs(1));
        }
        match command(socket, "info registers -a") {
            Ok(reply) => {
                report.push_str(&format!("sample {sample}:\n"));
                report.push_str(&summarize_registers(&reply));
            }
            Err(e) => {
                report.push_str(&format!("L1 monitor {}: {e}\n", socket.display()));
                break;
            }
        }
    }
    report
}

/// Sends one command and returns what the monitor printed up to its next prompt.
fn command(socket: &Path, cmd: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    read_until_prompt(&mut stream)?;
    stream.write_all(format!("{cmd}\n").as_bytes())?;
    read_until_prompt(&mut stream)
}

fn read_until_prompt(stream: &mut UnixStream) -> std::io::Result<String> {
    read_until(stream, REPLY_LIMIT, |got| {
        got.ends_with(PROMPT.as_bytes())
            .then(|| String::from_utf8_lossy(got).into_owned())
    })?
    .ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no prompt within {REPLY_LIMIT:?}"),
        )
    })
}

/// Reads one of L1 QEMU's sockets (read timeout set) until `complete` finds a whole reply in
/// what came so far, the socket closes, or `limit` passes (then `None`).
pub(crate) fn read_until<T>(
    stream: &mut UnixStream,
    limit: Duration,
    complete: impl Fn(&[u8]) -> Option<T>,
) -> std::io::Result<Option<T>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        if let Some(reply) = complete(&got) {
            return Ok(Some(reply));
        }
    }
    Ok(None)
}

/// One line per vCPU from `info registers -a`: its number, the RIP/flags line (CPL, HLT) and
/// the control registers, which is what tells idle, spinning and guest-mode vCPUs apart.
fn summarize_registers(reply: &str) -> String {
    let mut vcpus: Vec<Vec<&str>> = Vec::new();
    for line in reply.lines().map(str::trim) {
        if line.starts_with("CPU#") {
            vcpus.push(vec![line]);
        } else if line.starts_with("RIP=") || line.starts_with("CR0=") {
            if let Some(vcpu) = vcpus.last_mut() {
                vcpu.push(line);
            }
        }
    }
    vcpus.iter().map(|v| v.join(" ") + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_dump_becomes_one_line_per_vcpu() {
        let reply = "info registers -a\r\n\r\nCPU#0\r\nRAX=0 RBX=1\r\n\
            RIP=ffffffff81e3c0ff RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\n\
            ES =0000 0000000000000000 00000000 00000000\r\n\
            CR0=80050033 CR2=0 CR3=1000 CR4=3506f0\r\n\
            CPU#1\r\nRIP=000000000040100c RFL=00000202 [-------] CPL=3 II=0 A20=1 SMM=0 HLT=0\r\n\
            ES =0000 0000000000000000 00000000 00000000\r\n(qemu) ";
        let got = summarize_registers(reply);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), 2, "{got}");
        assert!(lines[0].starts_with("CPU#0 RIP=ffffffff81e3c0ff"), "{got}");
        assert!(lines[0].contains("HLT=1"), "{got}");
        assert!(
            lines[0].ends_with("CR0=80050033 CR2=0 CR3=1000 CR4=3506f0"),
            "{got}"
        );
        assert!(lines[1].starts_with("CPU#1 RIP=000000000040100c"), "{got}");
    }

    #[test]
    fn a_missing_monitor_is_reported_not_fatal() {
        let got = vcpu_state(Path::new("/nonexistent/ivmm-l1-monitor.sock"));
        assert!(got.contains("L1 monitor /nonexistent"), "{got}");
    }
}
