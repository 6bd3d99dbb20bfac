//! `lab`: run ivmm in the lab by hand (wrapped by `scripts/lab`).
//!
//! ```text
//! lab run [--] IVMM-ARGS...   run `ivmm IVMM-ARGS...` (placeholders {bzimage} {vmlinux}
//!                             {initrd}) in the lab with the terminal attached
//! lab shell                   an interactive shell where ivmm would run (L1, or here)
//! lab mode                    print the mode the lab would use
//! ```

use std::process::ExitCode;

use ivmm_tests::Lab;

const USAGE: &str = "usage: lab run [--] IVMM-ARGS... | lab shell | lab mode\n\
    placeholders in IVMM-ARGS: {bzimage} {vmlinux} {initrd}\n\
    example: scripts/lab run run --kernel {bzimage} --initrd {initrd} --cmdline console=ttyS0\n\
    nested mode: Ctrl-A x quits QEMU (L1) at once, Ctrl-A Ctrl-A x sends ivmm its Ctrl-A x";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((cmd, rest)) => (cmd.as_str(), rest),
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rest: &[String] = match rest.split_first() {
        Some((dashdash, tail)) if dashdash == "--" => tail,
        _ => rest,
    };
    let lab = match Lab::detect() {
        Ok(lab) => lab,
        Err(err) => return fail(&err),
    };
    let result = match cmd {
        "run" => lab.run_interactive(rest, false),
        "shell" => lab.run_interactive(&[], true),
        "mode" => {
            println!("{:?}", lab.mode());
            Ok(0)
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => fail(&err),
    }
}

fn fail(err: &dyn std::error::Error) -> ExitCode {
    eprintln!("lab: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    ExitCode::from(1)
}
