//! Where read-back finds lines: the archive's hour objects and the spool's
//! hour files, and the reading of one hour of both.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;

use super::lines::{self, Reading};
use super::{HourData, Problem, ReadError};
use crate::archive::{Archive, ArchiveError, ObjectKey};
use crate::cloud_id::CloudId;
use crate::config::Config;
use crate::spool::{HourBucket, parse_file_name};
use crate::stream::Kind;

/// Objects read at once unless configured otherwise: enough to hide S3's
/// latency, few enough to stay polite to a shared bucket.
const DEFAULT_CONCURRENCY: usize = 16;

/// The archive and spool one read-back draws from.
pub struct Source {
    archive: Option<Archive>,
    s3_prefix: String,
    file_prefix: String,
    spool: Option<PathBuf>,
    concurrency: usize,
}

impl Source {
    /// The archive (when one is configured, with the rotator's keys) and the
    /// spool (`data_dir`) of `config`.
    pub async fn from_config(config: &Config) -> Result<Source, ArchiveError> {
        let archive = match Archive::from_config(config).await {
            Ok(a) => Some(a),
            Err(ArchiveError::NotConfigured) => None,
            Err(e) => return Err(e),
        };
        Ok(Source::new(
            archive,
            &config.s3_prefix,
            &config.file_prefix,
            Some(config.data_dir.clone()),
        ))
    }

    /// A source over `archive` and the spool at `spool` (either may be
    /// absent).
    pub fn new(
        archive: Option<Archive>,
        s3_prefix: &str,
        file_prefix: &str,
        spool: Option<PathBuf>,
    ) -> Source {
        Source {
            archive,
            s3_prefix: s3_prefix.to_string(),
            file_prefix: file_prefix.to_string(),
            spool,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// Reads at most `n` objects at once (at least one).
    pub fn with_concurrency(mut self, n: usize) -> Source {
        self.concurrency = n.max(1);
        self
    }

    /// Whether an archive is configured (without one only the spool is read).
    pub fn has_archive(&self) -> bool {
        self.archive.is_some()
    }

    /// The archive as an operator would name it, or `none`.
    pub fn describe(&self) -> String {
        self.archive
            .as_ref()
            .map_or_else(|| "none".into(), Archive::describe)
    }

    pub(super) fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Every meter with a directory in the archive, plus every meter with a
    /// spool file of `kind` in one of `hours`.
    pub(super) async fn meters(
        &self,
        kind: Kind,
        hours: &[HourBucket],
    ) -> Result<Vec<CloudId>, ReadError> {
        let mut found = BTreeSet::new();
        if let Some(a) = &self.archive {
            found.extend(a.meters(&self.s3_prefix).await?);
        }
        for hour in hours {
            for (id, _) in self.spool_files(kind, *hour)? {
                found.insert(id);
            }
        }
        Ok(found.into_iter().collect())
    }

    /// The spool files of `kind` for `hour`, with their meters.
    fn spool_files(
        &self,
        kind: Kind,
        hour: HourBucket,
    ) -> Result<Vec<(CloudId, PathBuf)>, ReadError> {
        let Some(root) = &self.spool else {
            return Ok(Vec::new());
        };
        let dir = root.join(hour.to_string());
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ReadError::Spool { path: dir, source }),
        };
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let parsed = parse_file_name(&self.file_prefix, name.to_str()?)?;
                (parsed.kind == kind && parsed.hour == hour).then(|| (parsed.cloud_id, e.path()))
            })
            .collect())
    }

    /// The readings of `meters` in `hour`'s object and spool files.
    pub(super) async fn read_hour(
        self: Arc<Self>,
        kind: Kind,
        hour: HourBucket,
        meters: &[CloudId],
    ) -> Result<HourData, ReadError> {
        let mut data = HourData {
            readings: Vec::new(),
            problems: Vec::new(),
        };
        if let Some(archive) = &self.archive {
            let per_meter = futures::stream::iter(meters.iter().copied())
                .map(|id| {
                    let key =
                        ObjectKey::for_stream(&self.s3_prefix, &self.file_prefix, kind, id, hour);
                    async move {
                        let got = archive.get(&key).await;
                        (key, got)
                    }
                })
                .buffer_unordered(self.concurrency.min(meters.len().max(1)));
            let mut per_meter = std::pin::pin!(per_meter);
            while let Some((key, got)) = per_meter.next().await {
                match got {
                    Ok(None) => {}
                    Ok(Some(stored)) => {
                        let location = archive.location(&key);
                        let (rs, problem) = tokio::task::spawn_blocking(move || {
                            object_readings(&location, &stored.body)
                        })
                        .await
                        .unwrap_or_else(|e| {
                            (
                                Vec::new(),
                                Some(Problem {
                                    location: key.to_string(),
                                    detail: format!("reading stopped: {e}"),
                                }),
                            )
                        });
                        data.readings.extend(rs);
                        data.problems.extend(problem);
                    }
                    Err(e) if e.needs_operator() => return Err(e.into()),
                    Err(e) => data.problems.push(Problem {
                        location: archive.location(&key),
                        detail: e.to_string(),
                    }),
                }
            }
        }
        let wanted: BTreeSet<CloudId> = meters.iter().copied().collect();
        for (id, path) in self.spool_files(kind, hour)? {
            if !wanted.contains(&id) {
                continue;
            }
            let (rs, problem) = spool_readings(path).await;
            data.readings.extend(rs);
            data.problems.extend(problem);
        }
        Ok(data)
    }
}

/// The readings of one gzipped archive object; a damaged stream or bad
/// lines become a problem, and the lines that did parse are kept.
fn object_readings(location: &str, body: &[u8]) -> (Vec<Reading>, Option<Problem>) {
    let mut text = String::with_capacity(body.len() * 8);
    let unpacked = flate2::read::MultiGzDecoder::new(body).read_to_string(&mut text);
    if let Err(e) = unpacked {
        return (
            Vec::new(),
            Some(Problem {
                location: location.to_string(),
                detail: format!(
                    "not a readable gzip object ({e}); skipped, the other objects are read"
                ),
            }),
        );
    }
    let (good, bad) = lines::parse_text(&text);
    (good, bad_lines(location, &bad))
}

/// The readings of a spool file. A last line without its newline that does
/// not parse is a write in progress, not damage, and is left for later.
async fn spool_readings(path: PathBuf) -> (Vec<Reading>, Option<Problem>) {
    let location = path.display().to_string();
    let text = match tokio::fs::read(&path).await {
        Ok(b) => b,
        // The rotator shipped and removed it since the listing: its lines
        // are in the archive object read for this hour.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), None),
        Err(e) => {
            return (
                Vec::new(),
                Some(Problem {
                    location,
                    detail: format!("cannot read ({e}); skipped"),
                }),
            );
        }
    };
    let text = String::from_utf8_lossy(&text);
    let complete = match text.rfind('\n') {
        Some(i) if !text.ends_with('\n') && lines::parse_line(&text[i + 1..]).is_err() => {
            &text[..=i]
        }
        None if lines::parse_line(&text).is_err() => "",
        _ => &text[..],
    };
    let (good, bad) = lines::parse_text(complete);
    (good, bad_lines(&location, &bad))
}

fn bad_lines(location: &str, bad: &[(usize, lines::LineError)]) -> Option<Problem> {
    let (first, err) = bad.first()?;
    Some(Problem {
        location: location.to_string(),
        detail: format!(
            "{} line(s) skipped, the first at line {first}: {err}; the other lines are kept",
            bad.len()
        ),
    })
}
