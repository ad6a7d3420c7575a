//! The export's output: a temporary file beside the final name, renamed
//! into place only when the export finished, so a failed or interrupted
//! export never leaves a half file under the name a script expects, and an
//! existing file is never replaced unless asked.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::ExportError;

/// Where an export goes.
pub enum Output {
    /// Standard output.
    Stdout,
    /// A file, written as `tmp` until [`Output::commit`].
    File {
        /// The final name.
        path: PathBuf,
        /// The temporary file beside it.
        tmp: PathBuf,
        /// Whether an existing `path` may be replaced.
        force: bool,
    },
}

impl Output {
    /// Prepares writing to `path` (stdout when `None`); fails at once when
    /// `path` exists and `force` is false.
    pub fn new(path: Option<&Path>, force: bool) -> Result<Output, ExportError> {
        let Some(path) = path else {
            return Ok(Output::Stdout);
        };
        if !force && path.exists() {
            return Err(ExportError::Exists(path.to_path_buf()));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "export".into());
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        Ok(Output::File {
            path: path.to_path_buf(),
            tmp,
            force,
        })
    }

    /// The name for messages.
    pub fn target(&self) -> String {
        match self {
            Output::Stdout => "stdout".into(),
            Output::File { path, .. } => path.display().to_string(),
        }
    }

    /// Opens the writer.
    pub fn open(&self) -> Result<Box<dyn Write + Send>, ExportError> {
        match self {
            Output::Stdout => Ok(Box::new(std::io::stdout())),
            Output::File { tmp, .. } => File::create(tmp)
                .map(|f| Box::new(f) as Box<dyn Write + Send>)
                .map_err(|source| ExportError::Io {
                    target: tmp.display().to_string(),
                    source,
                }),
        }
    }

    /// Moves the finished file into place (checking again that nothing
    /// appeared under its name meanwhile, unless forced).
    pub fn commit(&self) -> Result<(), ExportError> {
        let Output::File { path, tmp, force } = self else {
            return Ok(());
        };
        let io = |source| ExportError::Io {
            target: path.display().to_string(),
            source,
        };
        File::open(tmp).and_then(|f| f.sync_all()).map_err(io)?;
        if *force {
            std::fs::rename(tmp, path).map_err(io)
        } else {
            // A hard link fails if the name exists: no window in which a
            // file that appeared meanwhile could be replaced.
            match std::fs::hard_link(tmp, path) {
                Ok(()) => std::fs::remove_file(tmp).map_err(io),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(ExportError::Exists(path.clone()))
                }
                Err(e) => Err(io(e)),
            }
        }
    }

    /// Removes the temporary file after a failure.
    pub fn abandon(&self) {
        if let Output::File { tmp, .. } = self {
            let _ = std::fs::remove_file(tmp);
        }
    }
}
