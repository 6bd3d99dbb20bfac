//! Black-box test harness for ivmm.
//!
//! Tests run the `ivmm` binary where a real KVM is: directly on a host with hardware KVM, or,
//! on hosts whose `/dev/kvm` is `kvm_pvm` (which cannot run stock kernels), inside a QEMU TCG
//! guest "L1" that loads the stock `kvm_amd` on emulated SVM (see `shared/LAB.md`).
//!
//! ```no_run
//! use ivmm_tests::{Lab, RunOptions};
//! let lab = Lab::detect().expect("lab");          // prints the mode; fails with a hint
//! let out = lab.boot_guest(&["--vcpus", "2"], "nproc").expect("boot");
//! assert_eq!(out.guest_cmd_ok().expect("guest cmd").trim(), "2");
//! let sh = lab.run_shell("ls /dev/kvm", RunOptions::new()).expect("L1 shell");
//! assert_eq!(sh.ivmm_exit, 0);
//! ```
//!
//! Fixtures come from `scripts/fetch-guest.sh`, host tools from `scripts/setup.sh`.

pub mod cpio;
mod error;
mod guest;
mod host;
mod l1_report;
mod lab;
mod monitor;
mod outcome;
mod runner;

pub use error::{LabError, Result};
pub use guest::{
    base64, GuestBoot, GuestKernel, DEFAULT_CMDLINE, MARK_CMD_BEGIN, MARK_CMD_EXIT, MARK_GUEST_INIT,
};
pub use host::shared_libs;
pub use lab::{
    Lab, Mode, RunOptions, DIRECT_TIMEOUT, GUEST_END_GRACE, NESTED_TIMEOUT, TRIPLE_FAULT_WARNING,
};
pub use outcome::{ConsoleLine, GuestCmd, LabOutcome};
