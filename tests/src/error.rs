//! Errors of the lab harness. Each names the step or file that failed and, for failures inside
//! L1 or the guest, carries the tail of the relevant log so a failing test explains itself.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while preparing or running a lab run.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A prerequisite (tool, fixture, binary) is not there.
    #[error("{what} not found at {}: {hint}", path.display())]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    /// A host-side I/O step failed.
    #[error("{step}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    /// A helper command on the host (e.g. `ldd`) failed.
    #[error("{step}: {detail}")]
    Host { step: String, detail: String },
    /// The caller asked for something the harness cannot do (bad placeholder, cmdline too long).
    #[error("invalid lab request: {0}")]
    Invalid(String),
    /// L1 booted but `kvm_amd` gave it no `/dev/kvm`.
    #[error("L1 has no /dev/kvm (kvm/kvm_amd did not load under QEMU TCG); L1 log tail:\n{log}")]
    L1NoKvm { log: String },
    /// The L1 kernel panicked.
    #[error("L1 kernel panicked; L1 log tail:\n{log}")]
    L1Panic { log: String },
    /// QEMU exited without L1 reporting `LAB-EXIT=`.
    #[error("L1 ended without reporting LAB-EXIT (QEMU {status}); L1 log tail:\n{log}")]
    L1Died { status: String, log: String },
    /// ivmm exited 0 after its L2 triple-faulted before the guest's init ran (the nested lab's
    /// early SMP fault; ivmm resets on a triple fault, and the guest exits on a reset).
    #[error("the L2 guest triple-faulted before its init ran; console tail:\n{console}")]
    L2EarlyTripleFault { console: String },
    /// A nested run timed out before its guest started, with every L2 vCPU asleep in L1's KVM
    /// and L1's KVM seeing no exits at all (the nested lab's SMP stop; tests/README.md).
    #[error("timed out after {after:?}: the L2 stopped inside L1's KVM before its guest started (all vCPU threads halted in KVM, no exits); console tail:\n{console}\n{diagnosis}")]
    L2StoppedBeforeStart {
        after: Duration,
        console: String,
        diagnosis: String,
    },
    /// The run did not finish in time; the QEMU or ivmm process was killed.
    #[error("timed out after {after:?} while {phase}; output tail:\n{log}\n{diagnosis}")]
    Timeout {
        after: Duration,
        phase: &'static str,
        log: String,
        /// What the run could still find out before the kill (the L1 vCPUs' state, L1's
        /// report on the VMM's threads).
        diagnosis: String,
        /// The whole console up to the kill (not printed; it tells whether the guest started).
        console: String,
    },
    /// The guest kernel stopped (halt, power-off or restart message) but ivmm kept running.
    #[error("the guest kernel stopped but ivmm was still running {grace:?} later (killed; \"System halted\" instead of \"Power down\" means the guest found no ACPI power-off); console tail:\n{console}")]
    VmmDidNotExit { grace: Duration, console: String },
    /// The guest never printed the result of its command (`IVMM-CMD-EXIT=`).
    #[error("guest command gave no result (no IVMM-CMD-EXIT line; ivmm exit {ivmm_exit}); console tail:\n{console}")]
    NoGuestResult { ivmm_exit: i32, console: String },
    /// The guest command exited non-zero.
    #[error("guest command exited with {exit}; its output:\n{output}")]
    GuestCmdFailed { exit: i32, output: String },
}

impl LabError {
    pub(crate) fn io(step: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            step: step.into(),
            source,
        }
    }
}

/// Result alias for the harness.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// The last `n` lines of `text`, for error messages.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}
