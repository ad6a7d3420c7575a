//! Placeholder replaced by the simulator work in progress.

/// Arguments of `rainforest simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {}

/// Runs the simulator until `shutdown`.
pub async fn run(_args: SimulateArgs, _shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
