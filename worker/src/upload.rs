//! Uploads of part files to an object store with the bytes waiting on local disk, not in memory.
//!
//! S3 takes a multipart upload's parts at 5 MiB at least (all but the last), so a part file being written must
//! collect 5 MiB before any of it can go up, and a file smaller than that goes up whole when it is complete. Held
//! in memory, that is up to 5 MiB for every open partition — at 5 M rows of the bench input, all of silver (26
//! partitions of ~2.7 MB each) until the end of the run. Here the bytes of the part being filled wait in a spill
//! file instead (unnamed: it disappears with the process, even on SIGKILL), and memory holds only the parts in
//! flight, at most [`PARTS_IN_FLIGHT`] across the whole run. Hadoop's S3A does the same by default
//! (`fs.s3a.fast.upload.buffer=disk`).
//!
//! A local lake does not come here: its files are written in place.

use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Bytes of every part of a multipart upload but its last: S3's minimum, and equal sizes (some S3-compatible
/// stores want every part but the last the same size).
pub const PART_BYTES: usize = 5 * 1024 * 1024;
/// Part uploads (and whole-file PUTs) in flight at once across a run: each holds its bytes in memory until the
/// store has them, so this bounds the memory uploads take (4 × 5 MiB). An encoder that fills a part while all
/// are busy waits for one to finish.
pub const PARTS_IN_FLIGHT: usize = 4;
/// The most uploads in flight once a run's key state is freed (see [`Spill::widen`]): at its end, every open
/// partition's last part goes up at once, and with [`PARTS_IN_FLIGHT`] slots and a remote store's round trips
/// they queued — 26 files in 7 rounds at 5 M rows of the bench input.
pub const MAX_PARTS_IN_FLIGHT: usize = 16;

/// Where the bytes of part files wait for their upload, and the run's bound on uploads in flight.
#[derive(Debug, Clone)]
pub struct Spill {
    dir: Arc<PathBuf>,
    slots: Arc<Semaphore>,
    widened: Arc<AtomicBool>,
}

impl Spill {
    /// A spill area in `dir`, checked by creating (and at once removing) a file in it, so that a directory the
    /// worker cannot write fails the run before anything is written. The message names the directory.
    pub fn new(dir: &FsPath) -> Result<Spill, String> {
        tempfile::tempfile_in(dir).map_err(|e| format!("cannot create a spill file in {}: {e}", dir.display()))?;
        Ok(Spill::unchecked(dir))
    }

    /// A spill area in `dir`, not checked: for a run that writes in place and never spills.
    pub fn unchecked(dir: &FsPath) -> Spill {
        Spill {
            dir: Arc::new(dir.to_path_buf()),
            slots: Arc::new(Semaphore::new(PARTS_IN_FLIGHT)),
            widened: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Lets the uploads at a run's end use memory the run has freed: `freed` bytes (its key state, dropped before
    /// the writers finish) become one more slot per [`PART_BYTES`], up to [`MAX_PARTS_IN_FLIGHT`] in all, so the
    /// end never holds more than the run gave back and the run's peak stays where it was. Only the first call
    /// widens; returns the slots added.
    pub fn widen(&self, freed: usize) -> usize {
        if self.widened.swap(true, Ordering::Relaxed) {
            return 0;
        }
        let more = (freed / PART_BYTES).min(MAX_PARTS_IN_FLIGHT - PARTS_IN_FLIGHT);
        self.slots.add_permits(more);
        more
    }

    /// The directory spill files are made in.
    pub fn dir(&self) -> &FsPath {
        &self.dir
    }

    fn slot(&self, handle: &Handle) -> io::Result<OwnedSemaphorePermit> {
        handle.block_on(self.slots.clone().acquire_owned()).map_err(|_| io::Error::other("upload slots closed"))
    }
}

/// One object being written: its bytes go to a spill file and up to the store in [`PART_BYTES`] parts; a file
/// that never reaches a part goes up in one PUT when finished. Nothing becomes visible before [`finish`]; an
/// upload dropped unfinished is aborted.
///
/// [`finish`]: SpilledUpload::finish
pub struct SpilledUpload {
    store: Arc<dyn ObjectStore>,
    path: Path,
    spill: Spill,
    handle: Handle,
    /// The bytes of the part being filled, from offset 0.
    file: File,
    filled: usize,
    upload: Option<Box<dyn MultipartUpload>>,
    in_flight: Vec<JoinHandle<object_store::Result<()>>>,
}

impl SpilledUpload {
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, spill: &Spill, handle: &Handle) -> io::Result<SpilledUpload> {
        let file = tempfile::tempfile_in(spill.dir()).map_err(|e| spill_error(spill, e))?;
        Ok(SpilledUpload {
            store,
            path,
            spill: spill.clone(),
            handle: handle.clone(),
            file,
            filled: 0,
            upload: None,
            in_flight: Vec::new(),
        })
    }

    /// Reads back the part being filled and empties the spill file.
    fn take_filled(&mut self) -> io::Result<PutPayload> {
        let mut bytes = vec![0; self.filled];
        self.file.read_exact_at(&mut bytes, 0).map_err(|e| spill_error(&self.spill, e))?;
        self.file.set_len(0).map_err(|e| spill_error(&self.spill, e))?;
        self.filled = 0;
        Ok(PutPayload::from(bytes))
    }

    /// Sends the part being filled, once a slot is free; its upload goes on while the caller encodes.
    fn send_part(&mut self) -> io::Result<()> {
        self.surface_failed_parts()?;
        let slot = self.spill.slot(&self.handle)?;
        let payload = self.take_filled()?;
        let upload = match &mut self.upload {
            Some(upload) => upload,
            none => none.insert(self.handle.block_on(self.store.put_multipart(&self.path)).map_err(io::Error::other)?),
        };
        let part = upload.put_part(payload);
        self.in_flight.push(self.handle.spawn(async move {
            let sent = part.await;
            drop(slot);
            sent
        }));
        Ok(())
    }

    /// Returns the error of a part that has already failed, so that a failed upload stops the run early.
    fn surface_failed_parts(&mut self) -> io::Result<()> {
        let mut still = Vec::with_capacity(self.in_flight.len());
        for task in self.in_flight.drain(..) {
            if task.is_finished() {
                joined(self.handle.block_on(task))?;
            } else {
                still.push(task);
            }
        }
        self.in_flight = still;
        Ok(())
    }

    /// Uploads what is left and makes the object visible, in a task of its own: the caller goes on (closing the
    /// next file) while it completes, and learns the outcome from [`Finishing::wait`]. A whole-file PUT waits for
    /// an upload slot inside the task, so finishing many files at once holds no more memory than the slots.
    pub fn finish(mut self) -> io::Result<Finishing> {
        let task = if self.upload.is_none() {
            let (store, path, slots, spill) =
                (self.store.clone(), self.path.clone(), self.spill.slots.clone(), self.spill.clone());
            let (file, filled) = (self.file.try_clone().map_err(|e| spill_error(&spill, e))?, self.filled);
            self.handle.spawn(async move {
                let _slot = slots.acquire_owned().await.map_err(|_| io::Error::other("upload slots closed"))?;
                let mut bytes = vec![0; filled];
                file.read_exact_at(&mut bytes, 0).map_err(|e| spill_error(&spill, e))?;
                store.put(&path, PutPayload::from(bytes)).await.map_err(io::Error::other)?;
                Ok(())
            })
        } else {
            if self.filled > 0 {
                self.send_part()?;
            }
            let parts = std::mem::take(&mut self.in_flight);
            let mut upload = self.upload.take().ok_or_else(|| io::Error::other("multipart upload missing"))?;
            self.handle.spawn(async move {
                let mut failed = None;
                for part in parts {
                    if let Err(e) = joined(part.await) {
                        failed.get_or_insert(e);
                    }
                }
                let completed = match failed {
                    None => upload.complete().await.map(drop).map_err(io::Error::other),
                    Some(e) => Err(e),
                };
                if completed.is_err() {
                    // Best effort, as when dropped: never a visible object from a failed upload.
                    let _ = upload.abort().await;
                }
                completed
            })
        };
        Ok(Finishing { task: Some(task), handle: self.handle.clone() })
    }
}

/// An upload completing in the background (see [`SpilledUpload::finish`]). One dropped unwaited — a run failing
/// on another file — is waited for all the same: it completes or aborts itself, whereas a task left behind would be
/// cut off when the run's runtime shuts down, leaving an incomplete multipart upload in the bucket.
pub struct Finishing {
    task: Option<JoinHandle<io::Result<()>>>,
    handle: Handle,
}

impl Finishing {
    /// Waits until the object is visible, or the upload has failed (and was aborted).
    pub fn wait(mut self) -> io::Result<()> {
        let task = self.task.take().ok_or_else(|| io::Error::other("upload already waited for"))?;
        match self.handle.block_on(task) {
            Ok(done) => done,
            Err(e) => Err(io::Error::other(TaskFailed::new("upload", e))),
        }
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = self.handle.block_on(task);
        }
    }
}

/// An upload task that panicked or was cancelled: the worker's own failure, not the store's, so not worth a
/// retry as a transient one would be (see `sink::upload_error`).
#[derive(Debug, thiserror::Error)]
#[error("{what} task failed: {source}")]
pub struct TaskFailed {
    what: &'static str,
    source: tokio::task::JoinError,
}

impl TaskFailed {
    pub fn new(what: &'static str, source: tokio::task::JoinError) -> TaskFailed {
        TaskFailed { what, source }
    }
}

fn joined(task: Result<object_store::Result<()>, tokio::task::JoinError>) -> io::Result<()> {
    match task {
        Ok(sent) => sent.map_err(io::Error::other),
        Err(e) => Err(io::Error::other(TaskFailed::new("part upload", e))),
    }
}

/// A spill file's I/O error, naming the directory (a full or read-only disk is the usual cause).
fn spill_error(spill: &Spill, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("spill file in {}: {err}", spill.dir().display()))
}

impl Write for SpilledUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(PART_BYTES - self.filled);
        self.file.write_all_at(&buf[..n], self.filled as u64).map_err(|e| spill_error(&self.spill, e))?;
        self.filled += n;
        if self.filled == PART_BYTES {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SpilledUpload {
    fn drop(&mut self) {
        for task in self.in_flight.drain(..) {
            task.abort();
        }
        if let Some(mut upload) = self.upload.take() {
            // Best effort: a failed abort leaves an incomplete multipart upload, never a visible object.
            let _ = self.handle.block_on(upload.abort());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    /// A spill directory and an in-memory store, with a runtime to drive them.
    struct Fixture {
        rt: tokio::runtime::Runtime,
        dir: tempfile::TempDir,
        spill: Spill,
        store: Arc<dyn ObjectStore>,
    }

    impl Fixture {
        fn new() -> std::result::Result<Fixture, Box<dyn std::error::Error>> {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let dir = tempfile::tempdir()?;
            let spill = Spill::new(dir.path())?;
            Ok(Fixture { rt, dir, spill, store: Arc::new(InMemory::new()) })
        }

        fn upload(&self, key: &str) -> io::Result<SpilledUpload> {
            SpilledUpload::new(self.store.clone(), Path::from(key), &self.spill, self.rt.handle())
        }

        fn stored(&self, key: &str) -> object_store::Result<bytes::Bytes> {
            self.rt.block_on(async { self.store.get(&Path::from(key)).await?.bytes().await })
        }

        fn visible(&self, key: &str) -> bool {
            self.rt.block_on(self.store.head(&Path::from(key))).is_ok()
        }
    }

    /// Bytes that differ at every offset, written in uneven pieces as an encoder would.
    fn write_uneven(upload: &mut SpilledUpload, total: usize) -> io::Result<Vec<u8>> {
        let bytes: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut at = 0;
        let mut piece = 1;
        while at < bytes.len() {
            let end = (at + piece).min(bytes.len());
            upload.write_all(&bytes[at..end])?;
            at = end;
            piece = piece * 3 % 70_001 + 1;
        }
        Ok(bytes)
    }

    #[test]
    fn a_file_of_several_parts_arrives_whole_and_in_order() -> TestResult {
        let f = Fixture::new()?;
        let key = "silver/part-00000.parquet";
        let mut upload = f.upload(key)?;
        let written = write_uneven(&mut upload, 2 * PART_BYTES + 12_345)?;
        assert!(upload.upload.is_some(), "parts went up while the file was written");
        assert_eq!(upload.filled, 12_345, "the spill file holds only the part being filled");
        assert!(!f.visible(key), "nothing is visible before finish");
        upload.finish()?.wait()?;
        let stored = f.stored(key)?;
        assert_eq!(stored.len(), written.len());
        assert!(stored == written, "the object holds exactly the bytes written, in order");
        assert_eq!(f.spill.slots.available_permits(), PARTS_IN_FLIGHT, "every upload slot is back");
        Ok(())
    }

    #[test]
    fn a_file_below_one_part_goes_up_in_one_put() -> TestResult {
        let f = Fixture::new()?;
        let key = "quarantine/part-00000.parquet";
        let mut upload = f.upload(key)?;
        let written = write_uneven(&mut upload, 300_000)?;
        assert!(upload.upload.is_none(), "no multipart upload for a file below one part");
        upload.finish()?.wait()?;
        assert!(f.stored(key)? == written);
        Ok(())
    }

    #[test]
    fn an_upload_dropped_unfinished_leaves_no_object() -> TestResult {
        let f = Fixture::new()?;
        let key = "silver/part-00001.parquet";
        let mut upload = f.upload(key)?;
        write_uneven(&mut upload, PART_BYTES + 10)?;
        assert!(upload.upload.is_some(), "a part went up");
        drop(upload);
        assert!(!f.visible(key), "an aborted upload is never visible");
        assert!(std::fs::read_dir(f.dir.path())?.next().is_none(), "spill files leave nothing in the directory");
        Ok(())
    }

    #[test]
    fn freed_memory_widens_the_slots_once_and_no_further_than_the_cap() -> TestResult {
        let f = Fixture::new()?;
        assert_eq!(f.spill.widen(3 * PART_BYTES + 1), 3, "one slot per part of freed memory");
        assert_eq!(f.spill.slots.available_permits(), PARTS_IN_FLIGHT + 3);
        assert_eq!(f.spill.clone().widen(100 * PART_BYTES), 0, "only the first call widens, through any clone");
        assert_eq!(f.spill.slots.available_permits(), PARTS_IN_FLIGHT + 3);

        let g = Fixture::new()?;
        assert_eq!(g.spill.widen(100 * PART_BYTES), MAX_PARTS_IN_FLIGHT - PARTS_IN_FLIGHT, "capped");
        let mut finishing = Vec::new();
        for i in 0..(2 * MAX_PARTS_IN_FLIGHT) {
            let key = format!("silver/part-{i:05}.parquet");
            let mut upload = g.upload(&key)?;
            upload.write_all(&vec![i as u8; 1000 + i])?;
            finishing.push((key, i, upload.finish()?));
        }
        for (key, i, done) in finishing {
            done.wait()?;
            assert_eq!(g.stored(&key)?.to_vec(), vec![i as u8; 1000 + i], "{key} arrived whole");
        }
        assert_eq!(g.spill.slots.available_permits(), MAX_PARTS_IN_FLIGHT, "every widened slot is back");
        Ok(())
    }

    #[test]
    fn a_spill_directory_that_cannot_be_written_is_refused_naming_it() {
        let missing = std::path::Path::new("/nonexistent/silverline-spill");
        match Spill::new(missing) {
            Ok(_) => panic!("a missing directory was accepted"),
            Err(message) => {
                assert!(message.contains("/nonexistent/silverline-spill"), "{message}");
                assert!(message.starts_with("cannot create a spill file in"), "{message}");
            }
        }
    }
}
