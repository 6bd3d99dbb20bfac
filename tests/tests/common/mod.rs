//! Helpers shared by lab test files.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use ivmm_tests::{GuestBoot, Lab, LabOutcome, Mode};

/// The nested lab, even where a direct one exists: for tests that create
/// network interfaces, which must never happen on the host.
pub fn nested_lab() -> Lab {
    Lab::with_mode(Mode::Nested)
        .expect("nested lab prerequisites (run scripts/setup.sh and scripts/fetch-guest.sh)")
}

/// `ivmm run ...` for a shell script, the guest running `cmd`; the harness
/// brings the binary into L1 because the line names `{ivmm}`.
pub fn ivmm_command(args: &[&str], cmd: &str) -> String {
    GuestBoot::new()
        .command(cmd)
        .args(args)
        .shell_command()
        .expect("ivmm args")
}

/// Shell function for L1 scripts: `wait_log FILE PATTERN PID` waits (up to
/// 300 s) until FILE has a line matching PATTERN, and gives up as soon as
/// process PID (the ivmm writing FILE) is gone, so a guest that ended early
/// fails the test at once with its log instead of running into the timeout.
pub const WAIT_LOG_SH: &str = r#"wait_log() { i=0; until grep -q "$2" "$1" 2>/dev/null; do
  kill -0 "$3" 2>/dev/null || { grep -q "$2" "$1" 2>/dev/null; return; }
  i=$((i+1)); [ $i -gt 1500 ] && return 1; sleep 0.2; done; }
"#;

/// `netns`: a sleeper in a network namespace of its own, its pid printed once the namespace
/// exists (shared with the host NAT tests, whose full run once lost the lab NAT test to `$!`
/// handed out before unshare(2) ran).
pub const NETNS_SH: &str = include_str!("../../../vmm/tests/common/netns.sh");

/// The value after `KEY=` on the first console line that has it.
pub fn value<'a>(out: &'a LabOutcome, key: &str) -> &'a str {
    out.console
        .lines()
        .find_map(|l| l.split_once(key).map(|(_, v)| v.trim()))
        .unwrap_or_else(|| {
            panic!(
                "no {key} in console:\n{}\nL1 log:\n{}",
                out.console, out.l1_log
            )
        })
}

/// Compiles `tests/guest/NAME.c` statically (gcc -O2) and returns the binary.
pub fn static_binary(name: &str) -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("guest/{name}.c"));
    let bin = std::env::temp_dir().join(format!("ivmm-{name}-{}", std::process::id()));
    let out = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("gcc (with static glibc: libc6-dev)");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&bin).expect("compiled binary");
    let _ = std::fs::remove_file(&bin);
    bytes
}
