//! The `ivmm` binary: parses the command line and hands over to the library.

use clap::{Parser, Subcommand};

/// ivmm: a KVM micro-VMM for building and testing OS images headless.
#[derive(Debug, Parser)]
#[command(name = "ivmm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a kernel in a new VM with a serial console.
    Run(vmm::cli::RunArgs),
    /// Create, inspect, check, resize and convert disk images (qemu-img compatible).
    Img(vmm::img::ImgArgs),
}

fn main() {
    vmm::logger::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => vmm::run::main(args),
        Command::Img(args) => vmm::img::main(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("ivmm: {err:#}");
            std::process::exit(1);
        }
    }
}
