//! `ivmm img bench` (placeholder until implemented).

use clap::Args;

/// `bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {}

pub(super) fn bench(_a: BenchArgs) -> anyhow::Result<i32> {
    anyhow::bail!("bench is not implemented yet")
}
