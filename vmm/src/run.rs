//! `ivmm run`: configuration, the terminal, and the reboot loop around
//! [`crate::vm::run`].

use crate::cli::RunArgs;
use crate::config::{OnReboot, SerialMode, VmConfig};
use crate::control::ExitReason;
use crate::terminal::RawTerminal;
use crate::vm;

/// Exit status for a bad command line (as clap uses).
const USAGE_EXIT_CODE: i32 = 2;

/// Runs `ivmm run`; returns the process exit status.
pub fn main(args: RunArgs) -> anyhow::Result<i32> {
    let config = match VmConfig::try_from(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ivmm: {e}");
            return Ok(USAGE_EXIT_CODE);
        }
    };
    crate::event_loop::block_stop_signals()
        .map_err(|e| anyhow::anyhow!("cannot block the stop signals: {e}"))?;
    let kvm = vm::open_kvm(&config)?;
    // Overlays (if any) are deleted when `_overlays` drops, after the VM.
    let (config, _overlays) = if config.snapshot {
        let (c, o) = crate::snapshot::prepare(&config)?;
        (c, Some(o))
    } else {
        (config, None)
    };
    crate::seccomp::prepare_process(config.seccomp)?;
    if config.seccomp == crate::seccomp::SeccompMode::Kill {
        crate::seccomp::install_sigsys_handler()?;
    }
    // The NAT network (if any) is left when `_nat` drops, after the VM.
    let mut config = config;
    let _nat = crate::nat::join(&mut config)?;
    crate::vcpu::install_kick_handler()
        .map_err(|e| anyhow::anyhow!("cannot install the vCPU kick handler: {e}"))?;
    let terminal = if config.serial == SerialMode::Stdio {
        RawTerminal::enable()
    } else {
        None
    };
    let escape = terminal.is_some();
    let result = loop {
        match vm::run(&kvm, &config, escape) {
            Ok(ExitReason::Reset)
                if config.on_reboot == OnReboot::Restart
                    && !crate::event_loop::shutdown_requested() =>
            {
                eprint!("\r\nivmm: guest rebooted; restarting\r\n");
                continue;
            }
            other => break other,
        }
    };
    drop(terminal);
    let reason = result?;
    match &reason {
        ExitReason::PowerOff => {}
        ExitReason::Reset if crate::event_loop::shutdown_requested() => {
            eprintln!("ivmm: guest rebooted after the stop signal; not restarting")
        }
        ExitReason::Reset => eprintln!("ivmm: guest rebooted (--on-reboot exit)"),
        ExitReason::Panic => eprintln!("ivmm: guest kernel panicked (pvpanic)"),
        ExitReason::Fatal(msg) => eprintln!("ivmm: {msg}"),
        ExitReason::UserQuit => eprintln!("ivmm: quit from the console (Ctrl-A x)"),
        ExitReason::HardStop => eprintln!("ivmm: guest did not power off in time; stopped"),
    }
    Ok(reason.exit_code())
}
