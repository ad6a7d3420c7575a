//! The spool's writer thread: buffers per file, a bounded pool of open
//! descriptors, whole-line writes only.
//!
//! It runs on its own OS thread with blocking file I/O, so a slow disk never
//! stalls the async runtime that drives the polls. It also keeps the
//! writer's heartbeat (see `heartbeat`): a beat at every flush, and the
//! seal of each finished hour once its files are fsynced and closed.
//!
//! Files are made durable in batches: one `syncfs(2)` on the spool's file
//! system, then every file of the batch is closed. A pinger with more
//! meters than open descriptors evicts a file on nearly every write
//! (100,000 meters through a pool of 15,000 is ~16,700 evictions a
//! second); an fsync each, at ~5 ms on a real disk, would be ~80 s of
//! fsync per second of polls. The pool evicts its least recently used half
//! at once and that half is one batch, so one syncfs covers thousands of
//! files. The cost: a syncfs flushes everything dirty on the file system,
//! other processes' data included, so the spool is best on a volume of
//! its own.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;

use super::bucket::{HourBucket, SpoolName, WriterId};
use super::heartbeat::Heartbeat;
use super::{CLOSE_AFTER, Inbox, Msg, SpoolOptions, SpoolStats};
use crate::cloud_id::CloudId;
use crate::stream::Kind;

/// Bytes of unwritten lines kept for retry while the disk fails; beyond
/// this, new lines are dropped (and counted) rather than exhausting memory.
const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;

type FileKey = (Kind, CloudId, HourBucket);

struct OpenFile {
    file: File,
    /// Length of the file up to the last whole line we wrote.
    len: u64,
    last_used: u64,
}

struct Writer {
    opts: SpoolOptions,
    writer: WriterId,
    /// Created just before the writer's first file, so a spool that never
    /// writes leaves nothing behind; no file of this writer exists without it.
    heartbeat: Option<Heartbeat>,
    /// Hours up to this one are sealed: their files are closed for good.
    sealed: Option<HourBucket>,
    /// Late segments written so far (numbers their names).
    late_segments: u32,
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
    /// The data directory, held open for `syncfs`: the kernel reports a
    /// write-back error to each descriptor once, so a descriptor used for
    /// nothing else sees every error since its previous sync, whichever
    /// file it hit.
    sync_fd: File,
}

pub(super) fn spawn(
    opts: SpoolOptions,
    writer: WriterId,
    mut rx: mpsc::Receiver<Msg>,
    inbox: Arc<Inbox>,
    stats: Arc<SpoolStats>,
) -> io::Result<()> {
    let sync_fd = File::open(&opts.data_dir)?;
    let mut w = Writer {
        opts,
        writer,
        heartbeat: None,
        sealed: None,
        late_segments: 0,
        stats,
        pending: HashMap::new(),
        pending_bytes: 0,
        pool: HashMap::new(),
        dirs: HashSet::new(),
        clock: 0,
        last_error_log: HashMap::new(),
        cap: 0,
        sync_fd,
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
                            w.sync_pool();
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

    fn name(&self, key: FileKey) -> SpoolName {
        let (kind, cloud_id, hour) = key;
        SpoolName {
            kind,
            cloud_id,
            hour,
            writer: Some(self.writer.clone()),
        }
    }

    fn path(&self, key: FileKey) -> PathBuf {
        self.name(key).path(&self.opts.data_dir, &self.opts.prefix)
    }

    fn is_sealed(&self, hour: HourBucket) -> bool {
        self.sealed.is_some_and(|s| hour <= s)
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
                    // Closed unsynced: a sync per failed write would cost a
                    // disk flush per file per second on a full disk, and the
                    // next batch's syncfs covers this file's lines too.
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
        if self.is_sealed(key.2) {
            return self.write_late(key, buf);
        }
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

    /// Lines for a sealed hour: a new late segment, written whole under a
    /// hidden name, fsynced, and renamed into place, so the rotator sees it
    /// complete or not at all, and the sealed file (which it may be
    /// shipping right now) is never touched again.
    fn write_late(&mut self, key: FileKey, buf: &[u8]) -> io::Result<()> {
        self.ensure_heartbeat()?;
        self.late_segments += 1;
        let name = self.name(key);
        let Some(file_name) = name.late_file_name(&self.opts.prefix, self.late_segments) else {
            return Err(io::Error::other("a late segment needs a writer id"));
        };
        let dir = self.opts.data_dir.join(key.2.to_string());
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{file_name}.tmp"));
        let written = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(&file_name))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        self.stats.files_opened.fetch_add(1, Ordering::Relaxed);
        written
    }

    /// Creates the heartbeat before the writer's first file. Failing to is a
    /// write error (the lines wait and are retried): a file without its
    /// writer's heartbeat would look like a gone writer's to the rotator.
    fn ensure_heartbeat(&mut self) -> io::Result<()> {
        if self.heartbeat.is_none() {
            self.heartbeat = Some(Heartbeat::create(&self.opts.data_dir, &self.writer)?);
        }
        Ok(())
    }

    fn open(&mut self, key: FileKey) -> io::Result<OpenFile> {
        self.ensure_heartbeat()?;
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

    /// Syncs and closes the `n` least recently used files, as one batch.
    /// Closing a descriptor leaves its lines in the page cache only, where
    /// a power cut before write-back would lose them unseen; the batch is
    /// the whole evicted half of the pool because the descriptor budget
    /// allows no larger one without shrinking the pool.
    fn make_room_for(&mut self, n: usize) {
        let mut ages: Vec<(u64, FileKey)> =
            self.pool.iter().map(|(k, f)| (f.last_used, *k)).collect();
        if ages.is_empty() {
            return;
        }
        let n = n.max(1).min(ages.len());
        // The n oldest first, in O(len) rather than a sort.
        ages.select_nth_unstable(n - 1);
        let batch: Vec<(FileKey, OpenFile)> = ages
            .into_iter()
            .take(n)
            .filter_map(|(_, key)| self.pool.remove_entry(&key))
            .collect();
        self.sync_and_close(batch);
    }

    /// Makes every file of `batch` durable with one `syncfs` on the spool's
    /// file system, then closes them (by dropping). An fsync per file costs
    /// a disk flush each; one syncfs flushes the whole batch (and anything
    /// else dirty on the volume) in one go.
    fn sync_and_close(&mut self, batch: Vec<(FileKey, OpenFile)>) {
        let Some((first, _)) = batch.first() else {
            return;
        };
        let first = *first;
        let synced = rustix::fs::syncfs(&self.sync_fd).map_err(io::Error::from);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.report_sync(first, batch.len() as u64, synced);
        drop(batch);
    }

    fn close_finished_hours(&mut self) {
        self.close_finished_hours_at(Utc::now());
    }

    fn close_finished_hours_at(&mut self, now: chrono::DateTime<Utc>) {
        let finished: Vec<FileKey> = self
            .pool
            .keys()
            .filter(|(_, _, h)| {
                h.end() + chrono::Duration::from_std(CLOSE_AFTER).unwrap_or_default() <= now
            })
            .copied()
            .collect();
        // At the turn of the hour most of the pool belongs to the hour just
        // ended: thousands of files, synced as one batch like an eviction.
        let batch: Vec<(FileKey, OpenFile)> = finished
            .into_iter()
            .filter(|key| self.pending.get(key).is_none_or(|b| b.is_empty()))
            .filter_map(|key| self.pool.remove_entry(&key))
            .collect();
        self.sync_and_close(batch);
        self.seal_finished_hours(now);
        if let Some(hb) = &self.heartbeat
            && let Err(e) = hb.beat()
        {
            tracing::warn!(error = %e, "Cannot update the spool writer's heartbeat; the rotator may take this writer for gone after rotate_grace. Check the data directory.");
        }
        let current = crate::spool::HourBucket::of(now);
        self.dirs.retain(|h| h.0 >= current.0 - 1);
        self.last_error_log
            .retain(|_, t| t.elapsed() < Duration::from_secs(3600));
    }

    /// Seals every hour that ended `CLOSE_AFTER` ago once none of its files
    /// is open or has lines waiting (a failing disk holds the seal back, so
    /// the rotator waits for the lines instead of shipping without them).
    fn seal_finished_hours(&mut self, now: chrono::DateTime<Utc>) {
        let close_after = chrono::Duration::from_std(CLOSE_AFTER).unwrap_or_default();
        let through = HourBucket(HourBucket::of(now - close_after).0 - 1);
        if self.sealed.is_some_and(|s| s >= through) {
            return;
        }
        let open = self.pool.keys().any(|k| k.2 <= through)
            || self
                .pending
                .iter()
                .any(|(k, b)| k.2 <= through && !b.is_empty());
        if open {
            return;
        }
        let Some(hb) = &self.heartbeat else { return };
        match hb.seal(through) {
            Ok(()) => self.sealed = Some(through),
            Err(e) => {
                tracing::warn!(hour = %through, error = %e, "Cannot record the seal of an hour in the spool writer's heartbeat; its files wait for the rotator until the seal succeeds.")
            }
        }
    }

    /// Counts the sync of `files` files being closed (`first` names one of
    /// them) and reports a failure: the page cache holds their lines (they
    /// were written), but a power cut before the kernel writes them back
    /// would lose them, and no later sync reports the error again. A failed
    /// syncfs cannot tell which file it failed on, so the whole batch counts.
    fn report_sync(&mut self, first: FileKey, files: u64, synced: io::Result<()>) {
        match synced {
            Ok(()) => {
                self.stats.files_synced.fetch_add(files, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.fsync_errors.fetch_add(files, Ordering::Relaxed);
                tracing::error!(
                    data_dir = %self.opts.data_dir.display(),
                    files,
                    first = %self.path(first).display(),
                    error = %e,
                    "Cannot sync the spool's file system while closing files; their lines \
                     may not survive a power cut. Check the disk (dmesg) and free space."
                );
            }
        }
    }

    /// Syncs and closes every open file, as one batch.
    fn sync_pool(&mut self) {
        let open: Vec<(FileKey, OpenFile)> = self.pool.drain().collect();
        self.sync_and_close(open);
    }

    fn close_all(&mut self) {
        self.sync_pool();
        // Every file is closed: the writer is gone, and the rotator ships
        // its hours once they are rotate_grace old.
        if let Some(hb) = self.heartbeat.take() {
            hb.remove();
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
            writer: WriterId::parse("test-1-00000001").expect("id"),
            heartbeat: Heartbeat::create(dir, &WriterId::parse("test-1-00000001").expect("id"))
                .ok(),
            sealed: None,
            late_segments: 0,
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
            sync_fd: File::open(dir).expect("open the data directory"),
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
    fn a_failed_sync_counts_every_file_of_its_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = writer(dir.path());
        w.report_sync(key(), 3, Ok(()));
        assert_eq!(w.stats.fsync_errors.load(Ordering::Relaxed), 0);
        assert_eq!(w.stats.files_synced.load(Ordering::Relaxed), 3);
        w.report_sync(key(), 5, Err(io::Error::from_raw_os_error(5)));
        assert_eq!(w.stats.fsync_errors.load(Ordering::Relaxed), 5);
        assert_eq!(w.stats.files_synced.load(Ordering::Relaxed), 3);
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

    #[test]
    fn a_line_for_a_sealed_hour_goes_to_a_late_segment_not_the_sealed_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = writer(dir.path());
        let k = key();
        let hour = k.2;
        w.write(k, b"{\"a\":1}\n").expect("write");
        let main = w.path(k);
        // An hour later the writer closes and seals this hour.
        w.close_finished_hours_at(hour.end() + chrono::Duration::seconds(11));
        assert!(w.pool.is_empty());
        assert_eq!(w.sealed, Some(hour));
        let state = &crate::spool::heartbeat::writers(dir.path()).expect("writers")[&w.writer];
        assert_eq!(state.sealed, Some(hour));
        w.write(k, b"{\"late\":1}\n").expect("late write");
        w.write(k, b"{\"late\":2}\n").expect("late write");
        assert_eq!(std::fs::read(&main).expect("main"), b"{\"a\":1}\n");
        let name = w.name(k);
        let late1 = main.with_file_name(name.late_file_name("pre", 1).expect("late name"));
        let late2 = main.with_file_name(name.late_file_name("pre", 2).expect("late name"));
        assert_eq!(std::fs::read(late1).expect("late 1"), b"{\"late\":1}\n");
        assert_eq!(std::fs::read(late2).expect("late 2"), b"{\"late\":2}\n");
        // No hidden temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(main.parent().expect("dir"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn an_hour_with_lines_still_waiting_is_not_sealed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = writer(dir.path());
        let k = key();
        w.pending.insert(k, b"{}\n".to_vec());
        w.close_finished_hours_at(k.2.end() + chrono::Duration::seconds(11));
        assert_eq!(w.sealed, None);
        w.pending.clear();
        w.close_finished_hours_at(k.2.end() + chrono::Duration::seconds(11));
        assert_eq!(w.sealed, Some(k.2));
    }

    #[test]
    fn a_file_evicted_from_the_pool_is_fsynced_before_it_is_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = writer(dir.path());
        w.cap = 2;
        let hour = HourBucket::of(Utc::now());
        for i in 0..6u32 {
            let k = (Kind::Demand, CloudId::from_index(i), hour);
            w.write(k, b"{}\n").expect("write");
        }
        // Six files through a pool of two: every file closed so far was
        // evicted, and each was synced on the way out.
        let closed = 6 - w.pool.len() as u64;
        assert!(closed >= 4, "{closed}");
        assert_eq!(w.stats.files_synced.load(Ordering::Relaxed), closed);
    }

    #[test]
    fn evicted_files_are_synced_in_batches_of_half_the_pool_not_one_by_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = writer(dir.path());
        w.cap = 64;
        let hour = HourBucket::of(Utc::now());
        for i in 0..640u32 {
            let k = (Kind::Demand, CloudId::from_index(i), hour);
            w.write(k, b"{}\n").expect("write");
            assert!(w.pool.len() <= w.cap, "the pool outgrew its budget");
        }
        let closed = 640 - w.pool.len() as u64;
        let syncs = w.stats.syncs.load(Ordering::Relaxed);
        assert_eq!(w.stats.files_synced.load(Ordering::Relaxed), closed);
        assert_eq!(w.stats.fsync_errors.load(Ordering::Relaxed), 0);
        // 576 files closed, 32 at a time: 18 syncs, not 576.
        assert_eq!(closed, 576);
        assert_eq!(syncs, 18);
        // Closing the hour syncs what is left in one more batch.
        w.close_finished_hours_at(hour.end() + chrono::Duration::seconds(11));
        assert!(w.pool.is_empty());
        assert_eq!(w.stats.files_synced.load(Ordering::Relaxed), 640);
        assert_eq!(w.stats.syncs.load(Ordering::Relaxed), 19);
    }
}
