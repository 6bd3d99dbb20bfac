//! Helpers shared by lab test files.
#![allow(dead_code)]

use ivmm_tests::{GuestBoot, Lab, Mode};

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
