//! `ivmm cpu list|show`: the named CPU models and their features.

use boot::cpu_model::{self, CpuSpec, MODELS};

/// List CPU models, or show one model's features.
#[derive(Debug, clap::Args)]
pub struct CpuArgs {
    #[command(subcommand)]
    pub command: CpuCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CpuCommand {
    /// List the named CPU models (`host` is always available too).
    List,
    /// Print a model's vendor, signature, model-id and features; with
    /// --json, as a CPU template (see --cpu-template).
    Show {
        /// A model, with optional `,+FEAT`/`,-FEAT` as for `run --cpu`.
        model: String,
        /// Print the model as a JSON CPU template.
        #[arg(long)]
        json: bool,
    },
}

/// Prints to stdout; a closed pipe (`ivmm cpu list | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Runs `ivmm cpu`; returns the process exit status.
pub fn main(args: CpuArgs) -> anyhow::Result<i32> {
    use std::fmt::Write;
    let mut out = String::new();
    match args.command {
        CpuCommand::List => {
            writeln!(
                out,
                "{:<20} {:<13} {:<44} source",
                "model", "vendor", "model-id"
            )?;
            writeln!(
                out,
                "{:<20} {:<13} {:<44} KVM",
                "host", "(host)", "every feature this host's KVM supports"
            )?;
            for m in MODELS {
                let (id, _) = cpu_model::resolve_model(m)?;
                writeln!(
                    out,
                    "{:<20} {:<13} {:<44} {}",
                    m.name,
                    id.vendor.id(),
                    id.model_id,
                    m.source
                )?;
            }
        }
        CpuCommand::Show { model, json } => {
            let spec = match CpuSpec::parse(&model) {
                Ok(spec) => spec,
                Err(e) => {
                    eprintln!("ivmm: {e}");
                    return Ok(2);
                }
            };
            let def = spec.definition()?;
            if json {
                let text = serde_json::to_string_pretty(&cpu_model::template::to_json(&def))?;
                writeln!(out, "{text}")?;
            } else {
                match &def.identity {
                    Some(id) => {
                        writeln!(out, "model:     {}", def.name)?;
                        writeln!(out, "vendor:    {}", id.vendor.id())?;
                        writeln!(
                            out,
                            "family:    {}  model: {}  stepping: {}",
                            id.family, id.model, id.stepping
                        )?;
                        writeln!(out, "model-id:  {}", id.model_id)?;
                        writeln!(out, "level:     {:#x}  xlevel: {:#x}", id.level, id.xlevel)?;
                    }
                    None => writeln!(
                        out,
                        "model:     {} (the host CPU as KVM offers it)",
                        def.name
                    )?,
                }
                writeln!(out, "features:  {}", def.feature_names().join(" "))?;
            }
        }
    }
    emit(&out)?;
    Ok(0)
}
