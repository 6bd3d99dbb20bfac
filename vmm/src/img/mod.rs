//! `ivmm img`: create, inspect, check, resize and convert disk images with the
//! verbs, flags and exit codes of `qemu-img`.

/// Arguments of `ivmm img`.
#[derive(Debug, clap::Args)]
pub struct ImgArgs {
    /// The qemu-img style verb and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

/// Runs an `ivmm img` verb; returns the process exit code.
pub fn main(_args: ImgArgs) -> anyhow::Result<i32> {
    anyhow::bail!("ivmm img: not implemented yet")
}
