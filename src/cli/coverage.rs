//! `rainforest coverage`: per meter and day, the share of expected slots
//! holding a reading, the longest gap and the gaps, from the archive and
//! the spool.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::NaiveDate;

use crate::cloud_id::CloudId;
use crate::config::Config;
use crate::coverage::{self, Report, Request};
use crate::readback::Source;
use crate::stream::Kind;

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns for people.
    Table,
    /// One row per meter and day; gaps as `from/to` ISO 8601 intervals
    /// joined by `;`.
    Csv,
    /// The report as `GET /api/coverage` answers it.
    Json,
}

/// Arguments of `rainforest coverage`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// First UTC day (`2025-01-15`).
    #[arg(long)]
    from: NaiveDate,
    /// Last UTC day, included.
    #[arg(long)]
    to: NaiveDate,
    /// Meters (comma-separated or repeated); default every meter found
    /// in the archive and the spool.
    #[arg(long, value_delimiter = ',', value_parser = parse_meters)]
    meter: Vec<CloudId>,
    /// The stream: demand, summation or price.
    #[arg(long, default_value = "demand", value_parser = parse_kind)]
    kind: Kind,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,
}

/// A cloud id flag value.
pub(super) fn parse_meters(s: &str) -> Result<CloudId, String> {
    CloudId::parse(s.trim()).map_err(|e| e.to_string())
}

/// A kind flag value.
pub(super) fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
        .map_err(|e: crate::stream::UnknownKind| e.to_string())
}

/// Prints the report; exit 1 when some object could not be read (the
/// report is printed all the same), 2 on bad arguments.
pub async fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    if args.from > args.to {
        eprintln!("error: --from {} is after --to {}", args.from, args.to);
        return Ok(ExitCode::from(super::EXIT_CONFIG));
    }
    let source = Source::from_config(config)
        .await
        .context("cannot set up the archive")?;
    if !source.has_archive() {
        tracing::warn!("No archive configured (archive, s3_bucket): counting the spool only.");
    }
    let request = Request {
        meters: (!args.meter.is_empty()).then_some(args.meter),
        kind: args.kind,
        from: args.from,
        to: args.to,
        cadence: coverage::cadence(config, args.kind),
    };
    let report = coverage::report(Arc::new(source), &request, chrono::Utc::now()).await?;
    print!(
        "{}",
        match args.format {
            ReportFormat::Table => table(&report),
            ReportFormat::Csv => csv(&report),
            ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        }
    );
    for p in &report.problems {
        eprintln!("unreadable: {p}");
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Gaps listed in a table row before "+N more".
const TABLE_GAPS: usize = 3;

fn table(report: &Report) -> String {
    let mut out = format!(
        "{:<8} {:<10} {:<9} {:>7} {:>13} {:>12}  gaps\n",
        "meter", "day", "kind", "share", "slots", "longest gap"
    );
    for d in &report.days {
        let mut gaps = String::new();
        for g in d.gaps.iter().take(TABLE_GAPS) {
            let _ = write!(gaps, "{}..{} ", short(&g.from), short(&g.to));
        }
        if d.gaps.len() > TABLE_GAPS {
            let _ = write!(gaps, "+{} more", d.gaps.len() - TABLE_GAPS);
        }
        let _ = writeln!(
            out,
            "{:<8} {:<10} {:<9} {:>6.2}% {:>13} {:>12}  {}",
            d.cloud_id.as_str(),
            d.day,
            d.kind,
            d.share * 100.0,
            format!("{}/{}", d.present, d.expected),
            humantime::format_duration(std::time::Duration::from_secs(d.longest_gap_s)).to_string(),
            gaps.trim_end()
        );
    }
    out
}

/// `HH:MM:SS` of an RFC 3339 time (the day is in its own column).
fn short(t: &str) -> &str {
    t.get(11..19).unwrap_or(t)
}

fn csv(report: &Report) -> String {
    let mut out =
        String::from("cloud_id,day,kind,cadence_s,expected,present,share,longest_gap_s,gaps\n");
    for d in &report.days {
        let gaps: Vec<String> = d
            .gaps
            .iter()
            .map(|g| format!("{}/{}", g.from, g.to))
            .collect();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{:.6},{},{}",
            d.cloud_id,
            d.day,
            d.kind,
            d.cadence_s,
            d.expected,
            d.present,
            d.share,
            d.longest_gap_s,
            gaps.join(";")
        );
    }
    out
}
