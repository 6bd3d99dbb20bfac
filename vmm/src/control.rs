//! Why the VM stops, decided once: the first request wins, later ones (a
//! vCPU failing while the guest powers off, say) are logged and ignored.

use std::sync::Mutex;

use devices::legacy::{VmControl, VmRequest};
use vmm_sys_util::eventfd::EventFd;

/// How a VM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI S5 from the guest.
    PowerOff,
    /// ACPI reset register, i8042 reset, or a triple fault.
    Reset,
    /// pvpanic.
    Panic,
    /// A vCPU failed; the message says how (with registers).
    Fatal(String),
    /// The user pressed the escape sequence.
    UserQuit,
    /// A signal asked us to stop and the guest did not power off in time.
    HardStop,
}

impl ExitReason {
    /// The process exit status documented in `ivmm run --help`.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::Reset => 0,
            ExitReason::Fatal(_) => 1,
            ExitReason::Panic => 3,
            ExitReason::UserQuit | ExitReason::HardStop => 4,
        }
    }
}

/// Collects the stop decision and wakes the main loop through `event`.
pub struct StopControl {
    reason: Mutex<Option<ExitReason>>,
    pub event: EventFd,
}

impl StopControl {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` if nothing was recorded before, and wakes the loop.
    pub fn stop(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        } else {
            log::debug!("ignoring later stop reason {reason:?}");
        }
        drop(slot);
        if let Err(e) = self.event.write(1) {
            log::error!("cannot wake the main loop: {e}");
        }
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl VmControl for StopControl {
    fn request(&self, request: VmRequest) {
        self.stop(match request {
            VmRequest::PowerOff => ExitReason::PowerOff,
            VmRequest::Reset => ExitReason::Reset,
            VmRequest::Panic => ExitReason::Panic,
        });
    }
}
