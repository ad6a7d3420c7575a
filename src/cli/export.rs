//! `rainforest export`: readings of some meters over a time range as one
//! CSV, JSON-lines or Parquet file, from the archive and the spool.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::coverage::{parse_kind, parse_meters};
use crate::cloud_id::CloudId;
use crate::config::Config;
use crate::export::{self, Format, Output};
use crate::readback::{Reader, Selection, Source};
use crate::stream::Kind;

/// Arguments of `rainforest export` (the archive comes from the rotator's
/// keys: `archive`, `s3_bucket`, `s3_prefix`, …; the spool from `data_dir`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Meters to export: cloud ids, comma-separated or repeated.
    #[arg(long, required = true, value_delimiter = ',', value_parser = parse_meters)]
    meter: Vec<CloudId>,
    /// Start: RFC 3339 (`2025-01-15T10:00:00Z`) or a UTC day (`2025-01-15`, its midnight).
    #[arg(long, value_parser = parse_from)]
    from: DateTime<Utc>,
    /// End, excluded: RFC 3339, or a UTC day (`2025-01-31`: to the end of that day).
    #[arg(long, value_parser = parse_to)]
    to: DateTime<Utc>,
    /// The stream: demand, summation or price.
    #[arg(long, default_value = "demand", value_parser = parse_kind)]
    kind: Kind,
    /// Output format.
    #[arg(long, value_enum)]
    format: Format,
    /// Output file (default: standard output). Written beside it first and
    /// renamed into place when complete.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Replace --output if it exists.
    #[arg(long)]
    force: bool,
    /// Archive objects read at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// A time given as RFC 3339 or as a UTC day; `end_of_day` picks the
/// midnight after the day instead of the one before.
fn parse_time(s: &str, end_of_day: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2025-01-15T10:00:00Z) nor a day (2025-01-15)")
    })?;
    let day = if end_of_day {
        day.succ_opt().ok_or("day out of range")?
    } else {
        day
    };
    Ok(crate::coverage::day_start(day))
}

fn parse_from(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time(s, false)
}

fn parse_to(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time(s, true)
}

/// Runs the export; exit 1 when some object could not be read (the file is
/// still written with everything else), 2 on bad arguments.
/// SIGINT or SIGTERM (`shutdown`) stops it and removes the partial file.
pub async fn run(
    args: Args,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    if args.from >= args.to {
        eprintln!("error: --from {} is not before --to {}", args.from, args.to);
        return Ok(ExitCode::from(super::EXIT_CONFIG));
    }
    let output = match Output::new(args.output.as_deref(), args.force) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(super::EXIT_CONFIG));
        }
    };
    let source = Source::from_config(config)
        .await
        .context("cannot set up the archive")?
        .with_concurrency(args.concurrency);
    if !source.has_archive() {
        tracing::warn!("No archive configured (archive, s3_bucket): exporting the spool only.");
    }
    let mut reader = Reader::open(
        Arc::new(source),
        Selection {
            meters: Some(args.meter),
            kind: args.kind,
            from: args.from,
            to: args.to,
        },
    )
    .await?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(reader.hours_total());
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} hours, {msg}, eta {eta}")
        {
            bar.set_style(style);
        }
        bar
    });
    let target = output.target();
    let out = output.open()?;
    let exporting = export::export(
        &mut reader,
        args.kind,
        args.format,
        out,
        &target,
        |done, _, rows| {
            if let Some(bar) = &bar {
                bar.set_position(done);
                bar.set_message(format!("{rows} rows"));
            }
        },
    );
    let result = tokio::select! {
        r = exporting => r,
        () = shutdown.cancelled() => {
            output.abandon();
            match &output {
                Output::Stdout => eprintln!("export interrupted; the output is incomplete"),
                Output::File { .. } => eprintln!("export interrupted; {target} was not written"),
            }
            return Ok(ExitCode::from(130));
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            output.abandon();
            return Err(e.into());
        }
    };
    output.commit()?;
    eprintln!(
        "exported {} {} readings to {target}{}",
        summary.rows,
        args.kind,
        if summary.problems.is_empty() {
            String::new()
        } else {
            format!(
                "; {} object(s) could not be read (listed below)",
                summary.problems.len()
            )
        }
    );
    for p in &summary.problems {
        eprintln!("unreadable: {p}");
    }
    Ok(if summary.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
