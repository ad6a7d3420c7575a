//! The local-directory archive: the bucket's key layout under a directory,
//! for the embedded default and for on-premises users without S3.
//!
//! Writes are atomic (temporary file, fsync, rename, fsync of the
//! directory), so a reader or a crash never sees half an object. Conditional
//! writes are checked under an exclusive `flock` on
//! `<root>/.rainforest-archive.lock`, which the kernel releases when a
//! holder dies, so a `kill -9` cannot leave the archive locked.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use super::{ArchiveError, Condition, ObjectKey, Stored};

/// A directory holding objects at `<root>/<key>`.
#[derive(Debug, Clone)]
pub struct DirArchive {
    root: PathBuf,
}

impl DirArchive {
    /// An archive rooted at `root` (created on first use).
    pub fn new(root: PathBuf) -> DirArchive {
        DirArchive { root }
    }

    /// `dir:<root>`, as configured.
    pub fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    /// The file holding `key`. Keys never contain `..` or empty segments
    /// (see [`ObjectKey`]), so this stays under the root.
    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// Creates the root, so a wrong path or permission shows at start-up.
    pub(super) async fn prepare(&self) -> Result<(), ArchiveError> {
        let root = self.root.clone();
        blocking(move || {
            fs::create_dir_all(&root).map_err(|source| ArchiveError::Io {
                action: "create",
                path: root.clone(),
                source,
            })
        })
        .await
    }

    /// Reads an object; `None` when the file does not exist.
    pub async fn get(&self, key: &ObjectKey) -> Result<Option<Stored>, ArchiveError> {
        let path = self.path_of(key);
        blocking(move || match fs::read(&path) {
            Ok(body) => {
                let etag = etag(&body);
                Ok(Some(Stored { body, etag }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ArchiveError::Io {
                action: "read",
                path,
                source,
            }),
        })
        .await
    }

    /// The names of the directories at `<root>/<under>` (no directory: none).
    pub(super) async fn list_dirs(&self, under: &str) -> Result<Vec<String>, ArchiveError> {
        let dir = self.root.join(under);
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(source) => {
                    return Err(ArchiveError::Io {
                        action: "list",
                        path: dir,
                        source,
                    });
                }
            };
            Ok(entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect())
        })
        .await
    }

    /// Writes an object atomically if `condition` holds.
    pub async fn put(
        &self,
        key: &ObjectKey,
        body: Vec<u8>,
        condition: Condition,
    ) -> Result<(), ArchiveError> {
        let root = self.root.clone();
        let path = self.path_of(key);
        let key = key.clone();
        blocking(move || write_if(&root, &path, &key, &body, &condition)).await
    }
}

/// The object's version tag: its MD5 in hex, quoted like S3's ETag.
fn etag(body: &[u8]) -> String {
    format!("\"{:x}\"", Md5::digest(body))
}

fn write_if(
    root: &Path,
    path: &Path,
    key: &ObjectKey,
    body: &[u8],
    condition: &Condition,
) -> Result<(), ArchiveError> {
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(root).map_err(io_err("create", root))?;
    let lock_path = root.join(".rainforest-archive.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("open", &lock_path))?;
    lock.lock().map_err(io_err("lock", &lock_path))?;

    let current = match fs::read(path) {
        Ok(b) => Some(etag(&b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ArchiveError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let holds = match condition {
        Condition::Absent => current.is_none(),
        Condition::Matches(expected) => current.as_deref() == Some(expected.as_str()),
    };
    if !holds {
        return Err(ArchiveError::Conflict { key: key.clone() });
    }

    let dir = path.parent().unwrap_or(root);
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A dot name that does not end in .gz: nothing scanning the archive
    // mistakes a leftover from a crash for an object.
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(ArchiveError::Io {
            action: "write",
            path: tmp,
            source,
        });
    }
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(ArchiveError::Io {
            action: "rename into",
            path: path.to_path_buf(),
            source,
        });
    }
    // The rename is durable only once the directory entry is on disk.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))?;
    drop(lock);
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Result<T, ArchiveError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(ArchiveError::Io {
            action: "finish",
            path: PathBuf::from("(archive task)"),
            source: io::Error::other(e.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud_id::CloudId;
    use crate::spool::HourBucket;

    fn key() -> ObjectKey {
        ObjectKey::for_hour(
            "p",
            "f",
            CloudId::parse("00ce69").unwrap(),
            HourBucket(480_000),
        )
    }

    #[tokio::test]
    async fn conditional_writes_refuse_stale_versions() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirArchive::new(dir.path().join("archive"));
        let k = key();
        assert!(a.get(&k).await.unwrap().is_none());
        a.put(&k, b"one".to_vec(), Condition::Absent).await.unwrap();
        let Err(ArchiveError::Conflict { .. }) =
            a.put(&k, b"two".to_vec(), Condition::Absent).await
        else {
            panic!("create over an existing object must conflict");
        };
        let v1 = a.get(&k).await.unwrap().unwrap();
        assert_eq!(v1.body, b"one");
        a.put(&k, b"two".to_vec(), Condition::Matches(v1.etag.clone()))
            .await
            .unwrap();
        let Err(ArchiveError::Conflict { .. }) = a
            .put(&k, b"three".to_vec(), Condition::Matches(v1.etag))
            .await
        else {
            panic!("replace of a stale version must conflict");
        };
        assert_eq!(a.get(&k).await.unwrap().unwrap().body, b"two");
        // No temporary file is left next to the object.
        let names: Vec<_> = fs::read_dir(a.path_of(&k).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
