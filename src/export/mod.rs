//! Export: readings of a meter set and time range as one CSV, JSON-lines or
//! Parquet file for analysis tools.
//!
//! Owns the output formats ([`columns`] is the schema) and the output file
//! (written beside its final name and renamed into place, never over an
//! existing file unless asked). The readings come from
//! [`crate::readback`], already merged, deduplicated by (cloud_id, slot)
//! and in time order; this module writes them as they come, an hour at a
//! time, so memory stays flat whatever the range.

pub mod columns;
mod output;
mod parquet;

use std::io::Write;

pub use output::Output;

use crate::readback::{Problem, ReadError, Reader, Reading};
use crate::record::format_time;
use crate::stream::Kind;
use columns::Type;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated, a header line, ISO 8601 UTC times.
    Csv,
    /// The records as archived, one JSON object a line.
    Jsonl,
    /// Apache Parquet (Snappy), the schema of [`columns`].
    Parquet,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the archive or spool failed as a whole.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The output file exists and `--force` was not given.
    #[error("{} exists; choose another --output or pass --force to replace it", .0.display())]
    Exists(std::path::PathBuf),
    /// Writing the output failed.
    #[error("cannot write {target}: {source}; check free space and permissions")]
    Io {
        /// The file (or `stdout`).
        target: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Parquet encoder refused a batch.
    #[error("cannot encode Parquet for {target}: {detail}")]
    Parquet {
        /// The file (or `stdout`).
        target: String,
        /// The encoder's message.
        detail: String,
    },
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct Summary {
    /// Readings written.
    pub rows: u64,
    /// Objects and files skipped, with why.
    pub problems: Vec<Problem>,
}

/// Writes every reading `reader` yields to `out` in `format`. `progress`
/// is told after each hour (hours read, hours in all, rows so far). `out`
/// is only written to, never finished: the caller commits it.
pub async fn export(
    reader: &mut Reader,
    kind: Kind,
    format: Format,
    out: Box<dyn Write + Send>,
    target: &str,
    mut progress: impl FnMut(u64, u64, u64),
) -> Result<Summary, ExportError> {
    let io = |source| ExportError::Io {
        target: target.to_string(),
        source,
    };
    let mut sink = match format {
        Format::Csv => Sink::Csv(std::io::BufWriter::with_capacity(1 << 16, out)),
        Format::Jsonl => Sink::Jsonl(std::io::BufWriter::with_capacity(1 << 16, out)),
        Format::Parquet => Sink::Parquet(Box::new(parquet::Writer::new(out, kind, target)?)),
    };
    if let Sink::Csv(w) = &mut sink {
        let header: Vec<&str> = columns::all(kind).iter().map(|c| c.name).collect();
        writeln!(w, "{}", header.join(",")).map_err(io)?;
    }
    let mut summary = Summary::default();
    while let Some(batch) = reader.next_batch().await {
        let batch = batch?;
        summary.problems.extend(batch.problems);
        summary.rows += batch.readings.len() as u64;
        match &mut sink {
            Sink::Csv(w) => {
                for r in &batch.readings {
                    csv_row(w, kind, r).map_err(io)?;
                }
            }
            Sink::Jsonl(w) => {
                for r in &batch.readings {
                    w.write_all(r.line.as_bytes()).map_err(io)?;
                    w.write_all(b"\n").map_err(io)?;
                }
            }
            Sink::Parquet(p) => p.write(&batch.readings)?,
        }
        progress(reader.hours_read(), reader.hours_total(), summary.rows);
    }
    match sink {
        Sink::Csv(mut w) | Sink::Jsonl(mut w) => w.flush().map_err(io)?,
        Sink::Parquet(p) => p.finish()?,
    }
    Ok(summary)
}

enum Sink {
    Csv(std::io::BufWriter<Box<dyn Write + Send>>),
    Jsonl(std::io::BufWriter<Box<dyn Write + Send>>),
    Parquet(Box<parquet::Writer>),
}

/// The parsed record behind a reading, an empty map if it is not an object
/// (read-back only hands out objects, so that does not happen).
fn record(r: &Reading) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(&r.line).unwrap_or_default()
}

fn csv_row(w: &mut impl Write, kind: Kind, r: &Reading) -> std::io::Result<()> {
    let rec = record(r);
    let time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(format_time)
            .unwrap_or_default()
    };
    write!(
        w,
        "{},{},{}",
        r.cloud_id,
        time(r.slot_ms),
        time(r.polled_ms)
    )?;
    for c in columns::values(kind) {
        let cell = match c.ty {
            Type::Float => columns::float(&rec, c.name).map(|v| v.to_string()),
            Type::Int => columns::int(&rec, c.name).map(|v| v.to_string()),
            Type::Time => columns::time(&rec, c.name).map(time),
            Type::Text => columns::text(&rec, c.name).map(|s| csv_quote(&s)),
        };
        write!(w, ",{}", cell.unwrap_or_default())?;
    }
    writeln!(w)
}

/// RFC 4180 quoting: only when the text holds a comma, quote or newline.
fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_quote_only_what_needs_it_and_times_are_iso_utc() {
        let r = crate::readback::lines::parse_line(
            r#"{"cloud_id":"00ce69","slot":"2025-01-15T10:00:06.000Z","polled_at":"2025-01-15T10:00:06.120+00:00","demand_kw":1.25,"source":"re,lay","latency_ms":120}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        csv_row(&mut out, Kind::Demand, &r).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "00ce69,2025-01-15T10:00:06.000Z,2025-01-15T10:00:06.120Z,1.25,,\"re,lay\",120\n"
        );
    }
}
