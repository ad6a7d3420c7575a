//! `rainforest rotator`: ship completed spool hours to the archive.

use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::pinger::Exposure;
use crate::archive::ArchiveError;
use crate::config::Config;
use crate::rotator::Rotator;
use crate::stats::Hub;

/// Arguments of `rainforest rotator` (the archive and timings come from the
/// configuration: `archive`, `s3_bucket`, `s3_prefix`, `s3_endpoint`,
/// `s3_region`, `rotate_grace`, `rotate_every`, `upload_concurrency`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Upload every completed hour once and exit; non-zero if any file was
    /// not archived (it stays in the spool, or in quarantine).
    #[arg(long)]
    once: bool,
    /// List what would be uploaded where and exit, touching nothing (no
    /// file, no request to the store).
    #[arg(long, conflicts_with = "once")]
    dry_run: bool,
}

/// Runs the rotator: until SIGINT/SIGTERM, or one pass with `--once`.
pub async fn run(
    args: Args,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let rotator = match Rotator::from_config(config).await {
        Ok(r) => r,
        Err(e @ (ArchiveError::NotConfigured | ArchiveError::Misconfigured(_))) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(super::EXIT_CONFIG));
        }
        Err(e) => return Err(e).context("cannot set up the archive"),
    };
    if args.dry_run {
        return dry_run(&rotator);
    }
    if args.once {
        rotator
            .preflight()
            .await
            .context("the archive is not usable")?;
        let report = rotator.run_once(&shutdown).await;
        if let Some(e) = &report.scan_error {
            return Err(anyhow::anyhow!("{e}"));
        }
        tracing::info!(
            completed = report.completed,
            archived = report.archived,
            merged = report.merged,
            quarantined = report.quarantined,
            pending = report.pending(),
            "Rotator --once finished."
        );
        return Ok(if report.all_archived() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let hub = Hub::new();
    hub.attach_rotator(rotator.stats());
    let shared = crate::stats::remote::shared_redis(config, None);
    let exposure = Exposure::start(&hub, config, "rotator", shared).await?;
    rotator.run(shutdown).await;
    exposure.stop().await;
    Ok(ExitCode::SUCCESS)
}

fn dry_run(rotator: &Rotator) -> anyhow::Result<ExitCode> {
    let (planned, not_yet) = rotator.plan()?;
    let mut bytes = 0;
    for p in &planned {
        bytes += p.file.size;
        println!(
            "{}\t{} bytes\t-> {}",
            p.file.path.display(),
            p.file.size,
            p.location
        );
    }
    println!(
        "dry run: {} completed file(s), {bytes} bytes, would be uploaded to {}; {not_yet} file(s) \
         not ready yet (the current hour, a live writer's unsealed hour, or within rotate_grace) \
         are left alone; nothing was changed",
        planned.len(),
        rotator.archive().describe()
    );
    Ok(ExitCode::SUCCESS)
}
