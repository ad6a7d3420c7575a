//! The spool's writer thread: buffers per file, a bounded pool of open
//! descriptors, whole-line writes only.
//!
//! It runs on its own OS thread with blocking file I/O, so a slow disk never
//! stalls the async runtime that drives the polls.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;

use super::bucket::{HourBucket, SpoolName};
use super::{Inbox, Msg, SpoolOptions, SpoolStats};
use crate::cloud_id::CloudId;
use crate::stream::Kind;

/// Bytes of unwritten lines kept for retry while the disk fails; beyond
/// this, new lines are dropped (and counted) rather than exhausting memory.
const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;
/// A closed hour's file is fsynced and closed this long after the hour ends,
/// leaving room for polls that started just before the hour turned.
const CLOSE_AFTER: Duration = Duration::from_secs(10);

type FileKey = (Kind, CloudId, HourBucket);

struct OpenFile {
    file: File,
    /// Length of the file up to the last whole line we wrote.
    len: u64,
    last_used: u64,
}

struct Writer {
    opts: SpoolOptions,
    stats: Arc<SpoolStats>,
    pending: HashMap<FileKey, Vec<u8>>,
    pending_bytes: usize,
    pool: HashMap<FileKey, OpenFile>,
    dirs: HashSet<HourBucket>,
    clock: u64,
    last_error_log: HashMap<PathBuf, Instant>,
    /// Pool size in force: `open_files`, lowered when the process runs out
    /// of descriptors (sockets compete for the same limit).
    cap: usize,
}

pub(super) fn spawn(
    opts: SpoolOptions,
    mut rx: mpsc::Receiver<Msg>,
    inbox: Arc<Inbox>,
    stats: Arc<SpoolStats>,
) -> io::Result<()> {
    let mut w = Writer {
        opts,
        stats,
        pending: HashMap::new(),
        pending_bytes: 0,
        pool: HashMap::new(),
        dirs: HashSet::new(),
        clock: 0,
        last_error_log: HashMap::new(),
        cap: 0,
    };
    w.cap = w.opts.open_files.max(2);
    std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || {
            while let Some(msg) = rx.blocking_recv() {
                for q in inbox.take() {
                    w.buffer(q.kind, q.cloud_id, q.hour, q.line);
                }
                match msg {
                    Msg::Flush(done) => {
                        w.flush_all();
                        w.close_finished_hours();
                        let _ = done.send(());
                    }
                    Msg::Close(done) => {
                        for q in inbox.take_and_close() {
                            w.buffer(q.kind, q.cloud_id, q.hour, q.line);
                        }
                        w.flush_all();
                        // A failing disk gets a few more chances before
                        // lines are given up at shutdown.
                        for _ in 0..10 {
                            if w.pending_bytes == 0 {
                                break;
                            }
                            w.pool.clear();
                            std::thread::sleep(Duration::from_millis(200));
                            w.flush_all();
                        }
                        w.close_all();
                        rx.close();
                        let _ = done.send(());
                        return;
                    }
                }
            }
            for q in inbox.take_and_close() {
                w.buffer(q.kind, q.cloud_id, q.hour, q.line);
            }
            w.flush_all();
            w.close_all();
        })?;
    Ok(())
}

impl Writer {
    fn buffer(&mut self, kind: Kind, cloud_id: CloudId, hour: HourBucket, line: Vec<u8>) {
        if self.pending_bytes + line.len() > MAX_PENDING_BYTES {
            self.stats.lines_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.pending_bytes += line.len();
        self.pending
            .entry((kind, cloud_id, hour))
            .or_default()
            .extend_from_slice(&line);
    }

    fn path(&self, key: FileKey) -> PathBuf {
        let (kind, cloud_id, hour) = key;
        SpoolName {
            kind,
            cloud_id,
            hour,
            writer: None,
        }
        .path(&self.opts.data_dir, &self.opts.prefix)
    }

    fn flush_all(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for (key, buf) in pending {
            if buf.is_empty() {
                continue;
            }
            match self.write(key, &buf) {
                Ok(()) => {
                    self.pending_bytes = self.pending_bytes.saturating_sub(buf.len());
                    let lines = buf.iter().filter(|b| **b == b'\n').count() as u64;
                    self.stats.lines_written.fetch_add(lines, Ordering::Relaxed);
                    self.stats
                        .bytes_written
                        .fetch_add(buf.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    let path = self.path(key);
                    self.log_error(&path, &e);
                    // Keep the lines for the next flush; the file was cut back
                    // to its last whole line, so the retry cannot interleave.
                    self.pending.entry(key).or_default().splice(0..0, buf);
                    self.pool.remove(&key);
                }
            }
        }
    }

    fn log_error(&mut self, path: &Path, e: &io::Error) {
        let now = Instant::now();
        let quiet = self
            .last_error_log
            .get(path)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60));
        if !quiet {
            tracing::error!(path = %path.display(), error = %e, "Cannot write spool file; keeping the lines in memory and retrying every second. Check free space and permissions.");
            self.last_error_log.insert(path.to_path_buf(), now);
        }
    }

    fn write(&mut self, key: FileKey, buf: &[u8]) -> io::Result<()> {
        self.clock += 1;
        if !self.pool.contains_key(&key) {
            let opened = match self.open(key) {
                // Out of descriptors: give back half the pool for good and
                // retry, rather than fail every line until the restart.
                Err(e) if is_out_of_descriptors(&e) && self.pool.len() >= 4 => {
                    self.cap = (self.pool.len() / 2).max(2);
                    tracing::warn!(
                        open_files = self.cap,
                        "Out of file descriptors; keeping fewer spool files open."
                    );
                    self.make_room_for(self.cap / 2);
                    self.open(key)?
                }
                other => other?,
            };
            self.make_room();
            self.pool.insert(key, opened);
        }
        let clock = self.clock;
        let Some(entry) = self.pool.get_mut(&key) else {
            return Err(io::Error::other("spool pool lost an entry"));
        };
        entry.last_used = clock;
        match entry.file.write_all(buf) {
            Ok(()) => {
                entry.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Drop any partial write so the file ends on a whole line.
                let _ = entry.file.set_len(entry.len);
                Err(e)
            }
        }
    }

    fn open(&mut self, key: FileKey) -> io::Result<OpenFile> {
        let path = self.path(key);
        if !self.dirs.contains(&key.2) {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.dirs.insert(key.2);
        }
        let open = || {
            OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
        };
        let mut file = match open() {
            // The rotator removes an hour's directory once it shipped its
            // last file, and a line for that hour can still come (a late
            // poll, or the wall clock stepped back): create it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                open()?
            }
            other => other?,
        };
        self.stats.files_opened.fetch_add(1, Ordering::Relaxed);
        let len = cut_torn_tail(&mut file, &path)?;
        Ok(OpenFile {
            file,
            len,
            last_used: self.clock,
        })
    }

    /// Closes the least recently used half of the pool when it is full, so
    /// eviction costs O(log n) per miss instead of a scan each time.
    fn make_room(&mut self) {
        if self.pool.len() >= self.cap {
            self.make_room_for(self.cap / 2);
        }
    }

    /// Closes the `n` least recently used files.
    fn make_room_for(&mut self, n: usize) {
        let mut ages: Vec<(u64, FileKey)> =
            self.pool.iter().map(|(k, f)| (f.last_used, *k)).collect();
        ages.sort_unstable();
        for (_, key) in ages.into_iter().take(n.max(1)) {
            self.pool.remove(&key);
        }
    }

    fn close_finished_hours(&mut self) {
        let now = Utc::now();
        let finished: Vec<FileKey> = self
            .pool
            .keys()
            .filter(|(_, _, h)| {
                h.end() + chrono::Duration::from_std(CLOSE_AFTER).unwrap_or_default() <= now
            })
            .copied()
            .collect();
        for key in finished {
            if self.pending.get(&key).is_some_and(|b| !b.is_empty()) {
                continue;
            }
            if let Some(f) = self.pool.remove(&key) {
                let synced = f.file.sync_all();
                self.sealed(key, synced);
            }
        }
        let current = crate::spool::HourBucket::of(now);
        self.dirs.retain(|h| h.0 >= current.0 - 1);
        self.last_error_log
            .retain(|_, t| t.elapsed() < Duration::from_secs(3600));
    }

    /// Counts and reports a failed fsync of a file being closed: the page
    /// cache holds its lines, but a power cut before the kernel writes them
    /// back would lose them, and the next fsync would not report it again.
    fn sealed(&mut self, key: FileKey, synced: io::Result<()>) {
        if let Err(e) = synced {
            self.stats.fsync_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                path = %self.path(key).display(),
                error = %e,
                "Cannot fsync the spool file while closing it; its lines may not survive a \
                 power cut. Check the disk (dmesg) and free space."
            );
        }
    }

    fn close_all(&mut self) {
        let open: Vec<(FileKey, OpenFile)> = self.pool.drain().collect();
        for (key, f) in open {
            let synced = f.file.sync_all();
            self.sealed(key, synced);
        }
        if self.pending_bytes > 0 {
            tracing::error!(
                bytes = self.pending_bytes,
                "Spool closed with unwritten lines (the disk kept failing); they are lost."
            );
        }
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (process limit) or ENFILE (system limit).
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

/// A crash can leave a torn last line. Appending after it would glue the
/// next record onto the fragment, so the fragment is cut off when a file is
/// first opened.
fn cut_torn_tail(file: &mut File, path: &Path) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    // Find the last newline, reading backwards in chunks.
    let mut end = len;
    let mut chunk = vec![0u8; 4096];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    tracing::warn!(path = %path.display(), dropped_bytes = len - keep, "Spool file ended in a torn line (earlier crash); cut it before appending.");
    file.set_len(keep)?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path) -> Writer {
        Writer {
            opts: SpoolOptions {
                data_dir: dir.to_path_buf(),
                prefix: "pre".into(),
                open_files: 8,
                flush_every: Duration::from_secs(1),
            },
            stats: Arc::new(SpoolStats::default()),
            pending: HashMap::new(),
            pending_bytes: 0,
            pool: HashMap::new(),
            dirs: HashSet::new(),
            clock: 0,
            last_error_log: HashMap::new(),
            cap: 8,
        }
    }

    fn key() -> FileKey {
        (
            Kind::Demand,
            CloudId::parse("00000a").expect("id"),
            HourBucket::of(Utc::now()),
        )
    }

    #[test]
    fn a_failed_fsync_at_the_seal_is_counted_not_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = writer(dir.path());
        w.sealed(key(), Ok(()));
        assert_eq!(w.stats.fsync_errors.load(Ordering::Relaxed), 0);
        w.sealed(key(), Err(io::Error::from_raw_os_error(5)));
        assert_eq!(w.stats.fsync_errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_line_for_an_hour_whose_directory_the_rotator_removed_recreates_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = writer(dir.path());
        let k = key();
        w.write(k, b"{}\n").expect("first write");
        w.pool.clear();
        let path = w.path(k);
        std::fs::remove_file(&path).expect("rm file");
        std::fs::remove_dir(path.parent().expect("dir")).expect("rm dir");
        // The writer still remembers the directory as made.
        assert!(w.dirs.contains(&k.2));
        w.write(k, b"{\"late\":1}\n")
            .expect("write after the rotator removed the hour");
        assert_eq!(std::fs::read(&path).expect("read"), b"{\"late\":1}\n");
    }
}
