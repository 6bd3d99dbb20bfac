//! The L2 test guest: kernel command line and ivmm arguments for booting the fixture kernel
//! and initramfs built by `scripts/fetch-guest.sh`, whose `/init` runs the base64 command from
//! `ivmm.cmd=` and reports `IVMM-CMD-EXIT=<rc>` before powering off.

use crate::error::{LabError, Result};

/// Printed by the guest's `/init` once it runs (userspace reached, modules loaded).
pub const MARK_GUEST_INIT: &str = "IVMM-GUEST-INIT";
/// Printed right before the guest command runs.
pub const MARK_CMD_BEGIN: &str = "IVMM-CMD-BEGIN";
/// Printed after the guest command, followed by its exit code.
pub const MARK_CMD_EXIT: &str = "IVMM-CMD-EXIT=";

/// Default L2 kernel command line: serial console, reboot through the keyboard controller,
/// reboot 1 s after a panic (so a panicking guest ends the VM), few boot messages (each serial
/// line costs ~30 ms in the nested lab). (`nopvspin`, tried against the lab hang, made QEMU's
/// 2-vCPU microvm L2 end before init every time: tests/README.md.)
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet";

/// Linux x86 `COMMAND_LINE_SIZE`, including the terminating NUL.
const COMMAND_LINE_SIZE: usize = 2048;

/// Which form of the fixture kernel ivmm loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestKernel {
    /// `{bzimage}`: the Debian bzImage (Linux boot protocol).
    #[default]
    BzImage,
    /// `{vmlinux}`: the ELF extracted from it (PVH entry).
    Vmlinux,
}

/// A guest boot: builds `ivmm run --kernel … --initrd … --cmdline … <extra args>`.
#[derive(Debug, Clone)]
pub struct GuestBoot {
    kernel: GuestKernel,
    cmdline: String,
    command: Option<String>,
    args: Vec<String>,
}

impl Default for GuestBoot {
    fn default() -> Self {
        Self {
            kernel: GuestKernel::default(),
            cmdline: DEFAULT_CMDLINE.to_string(),
            command: None,
            args: Vec::new(),
        }
    }
}

impl GuestBoot {
    /// The fixture bzImage + initramfs with [`DEFAULT_CMDLINE`] and an interactive shell.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `cmd` (with `sh -c`) in the guest, which then powers off.
    pub fn command(mut self, cmd: &str) -> Self {
        self.command = Some(cmd.to_string());
        self
    }

    /// Loads the kernel as `kernel`.
    pub fn kernel(mut self, kernel: GuestKernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// Replaces the base command line (`ivmm.cmd=` is still appended).
    pub fn cmdline(mut self, cmdline: &str) -> Self {
        self.cmdline = cmdline.to_string();
        self
    }

    /// Appends words to the kernel command line.
    pub fn cmdline_extra(mut self, extra: &str) -> Self {
        self.cmdline.push(' ');
        self.cmdline.push_str(extra);
        self
    }

    /// Adds arguments for `ivmm run` (after the kernel/initrd/cmdline ones).
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// The full kernel command line, `ivmm.cmd=` included.
    pub fn full_cmdline(&self) -> Result<String> {
        let mut cmdline = self.cmdline.trim().to_string();
        if let Some(cmd) = &self.command {
            cmdline.push_str(" ivmm.cmd=");
            cmdline.push_str(&base64(cmd.as_bytes()));
        }
        if cmdline.len() >= COMMAND_LINE_SIZE {
            return Err(LabError::Invalid(format!(
                "guest command line is {} bytes, Linux takes at most {}; shorten the guest command",
                cmdline.len(),
                COMMAND_LINE_SIZE - 1
            )));
        }
        Ok(cmdline)
    }

    /// The arguments for the ivmm binary, with lab placeholders.
    pub fn ivmm_args(&self) -> Result<Vec<String>> {
        let kernel = match self.kernel {
            GuestKernel::BzImage => "{bzimage}",
            GuestKernel::Vmlinux => "{vmlinux}",
        };
        let mut args: Vec<String> = [
            "run",
            "--kernel",
            kernel,
            "--initrd",
            "{initrd}",
            "--cmdline",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(self.full_cmdline()?);
        args.extend(self.args.iter().cloned());
        Ok(args)
    }

    /// The `ivmm run …` line for a [`crate::Lab::run_shell`] script: `{ivmm}` (so the harness
    /// carries the binary into L1) and the quoted arguments.
    pub fn shell_command(&self) -> Result<String> {
        let words: Vec<String> = self
            .ivmm_args()?
            .iter()
            .map(|a| crate::lab::shell_quote(a))
            .collect();
        Ok(format!("{{ivmm}} {}", words.join(" ")))
    }
}

/// Standard base64 (RFC 4648, with padding), as busybox `base64 -d` reads it.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "input {input:?}");
        }
    }

    #[test]
    fn ivmm_args_put_command_in_cmdline() {
        let args = GuestBoot::new()
            .command("nproc")
            .args(&["--vcpus", "2"])
            .ivmm_args()
            .expect("args");
        assert_eq!(
            args[..6],
            [
                "run",
                "--kernel",
                "{bzimage}",
                "--initrd",
                "{initrd}",
                "--cmdline"
            ]
        );
        assert_eq!(args[6], format!("{DEFAULT_CMDLINE} ivmm.cmd=bnByb2M="));
        assert_eq!(args[7..], ["--vcpus", "2"]);
    }

    #[test]
    fn overlong_command_is_rejected() {
        let long = "x".repeat(2000);
        let err = GuestBoot::new()
            .command(&long)
            .ivmm_args()
            .expect_err("too long");
        assert!(matches!(err, LabError::Invalid(_)));
    }
}
