//! Body reads for delivery, through io_uring on the reading shard's
//! executor: glommio `BufferedFile` opens and `read_at`s (page-cache
//! reads; a miss is served by io_uring's worker, never by the shard's
//! thread blocking in pread).
//! Owns: a small cache of open read-only segment files, per reader.
//! May call: glommio file APIs.
//! Never: write, create or delete a segment; touch the writer's state.
//! A body read runs on the delivering shard, which may not be the shard
//! that wrote the segment; segment files are immutable below their synced
//! end, so no coordination is needed. A segment deleted while its file is
//! cached (or in the middle of a read) stays readable through that open
//! file until the cache drops it; glommio closes a dropped file through
//! io_uring.
//!
//! A body compaction moved (see `compact`) is read where it went once
//! its old segment is gone: a missing file sends the reader to the
//! relocation table (no lookup while the old file is there; its bytes
//! stay valid until it is deleted).
//!
//! A reader is a cheap handle (`Clone` shares the cache), so a delivery
//! task can take one out of a shard's table and await a read without
//! holding a borrow of the table.
//!
//! An open file keeps the space of a deleted segment allocated, so a
//! reader must not hold deleted segments open: the spool's GC bumps a
//! per-directory removal counter (`removal_counter`, shared across
//! threads) after each removal, and a reader that sees it move drops its
//! cache before the next read. Removals are rare (one per segment), so the
//! cache stays warm; the check is one relaxed atomic load per read. A
//! reader that stops reading closes its files after `BODY_READER_LINGER`
//! (a timer task on its executor), so an idle shard never keeps a deleted
//! segment's space: on a full disk that space is what lets the spool
//! accept again.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use glommio::io::BufferedFile;

use crate::bodies::body_file_name;
use crate::storage::segment_file_name;
use crate::BodyRef;

/// Open segment files a reader keeps. Deliveries read mostly from the
/// newest few segments; eight covers that without holding many fds.
pub const BODY_READER_FILES_MAX: usize = 8;
/// A reader closes its cached files once it has not read for this long.
pub const BODY_READER_LINGER: Duration = Duration::from_secs(1);

/// Most bytes one body read asks for: a delivery holds one such chunk of a
/// body (and its encoding for the wire) at a time, whatever the body's size.
pub const BODY_READ_CHUNK_BYTES: usize = 256 * 1024;

/// The rest of one body, read in bounded chunks (`BodyReader::chunks`).
pub struct BodyChunks {
    file: Rc<BufferedFile>,
    /// File name, for errors.
    name: String,
    /// File offset of the next byte to read; never above `end`.
    at: u64,
    /// File offset just past the body.
    end: u64,
}

impl BodyChunks {
    /// Bytes of the body not read yet.
    pub fn remaining(&self) -> u64 {
        self.end - self.at
    }

    /// Replaces the contents of `into` with the next at most `max` bytes
    /// of the body (`max` > 0); returns false, with `into` empty, once the
    /// body is read. A file that ends before the body does is an
    /// `UnexpectedEof` error.
    pub async fn next(&mut self, into: &mut Vec<u8>, max: usize) -> io::Result<bool> {
        assert!(max > 0);
        into.clear();
        if self.at == self.end {
            return Ok(false);
        }
        let want = (self.end - self.at).min(max as u64) as usize;
        // read(2) on a regular file may return less than asked only at
        // its end or for a very large request; loop until done.
        while into.len() < want {
            let chunk = self
                .file
                .read_at(self.at, want - into.len())
                .await
                .map_err(glommio_error)?;
            if chunk.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "spool file {} ends at {}, before the body's end at {}",
                        self.name, self.at, self.end
                    ),
                ));
            }
            into.extend_from_slice(&chunk);
            self.at += chunk.len() as u64;
        }
        Ok(true)
    }
}

/// Reads message bodies from one spool directory. `!Send`: it lives on
/// the executor that reads.
#[derive(Clone)]
pub struct BodyReader {
    inner: Rc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// Most recently used last; never longer than BODY_READER_FILES_MAX.
    files: RefCell<Vec<(u64, Rc<BufferedFile>)>>,
    /// Segments the spool of `dir` has removed so far, and the count the
    /// cache was last checked against.
    removals: Arc<AtomicU64>,
    removals_seen: Cell<u64>,
    /// When the last read started, and whether a task will close the
    /// cache once reads stop for BODY_READER_LINGER.
    last_read: Cell<Instant>,
    closer_armed: Cell<bool>,
}

/// The removal counter of the spool directory `dir` (one per directory in
/// the process; the registry is locked only when a spool or reader is
/// made, never per read).
pub(crate) fn removal_counter(dir: &Path) -> Arc<AtomicU64> {
    static COUNTERS: OnceLock<Mutex<HashMap<PathBuf, Arc<AtomicU64>>>> = OnceLock::new();
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut counters = COUNTERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    counters.entry(dir).or_default().clone()
}

impl BodyReader {
    pub fn new(dir: PathBuf) -> Self {
        let removals = removal_counter(&dir);
        let removals_seen = Cell::new(removals.load(Ordering::Relaxed));
        BodyReader {
            inner: Rc::new(Inner {
                dir,
                files: RefCell::new(Vec::with_capacity(BODY_READER_FILES_MAX)),
                removals,
                removals_seen,
                last_read: Cell::new(Instant::now()),
                closer_armed: Cell::new(false),
            }),
        }
    }

    /// Starts, if none runs, the task that closes the cached files once
    /// this reader has been idle for BODY_READER_LINGER.
    fn arm_closer(&self) {
        if self.inner.closer_armed.replace(true) {
            return;
        }
        let inner = Rc::downgrade(&self.inner);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(BODY_READER_LINGER).await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                if inner.last_read.get().elapsed() >= BODY_READER_LINGER {
                    inner.files.borrow_mut().clear();
                    inner.closer_armed.set(false);
                    return;
                }
            }
        })
        .detach();
    }

    /// Replaces the contents of `into` with the body bytes. Must run on a
    /// glommio executor. A body that ends before `body.len` bytes (a
    /// damaged or truncated segment or body file) is an `UnexpectedEof`
    /// error. Reads the whole body into memory: for a large one, use
    /// `chunks`.
    pub async fn read(&self, body: &BodyRef, into: &mut Vec<u8>) -> io::Result<()> {
        let mut chunks = self.chunks(body).await?;
        into.clear();
        into.reserve(body.len as usize);
        let mut chunk = Vec::new();
        while chunks.next(&mut chunk, BODY_READ_CHUNK_BYTES).await? {
            into.extend_from_slice(&chunk);
        }
        Ok(())
    }

    /// The body as a sequence of bounded reads (`BodyChunks::next`), so
    /// that delivery holds at most one chunk of it at a time. A segment's
    /// file comes from the cache; a body file is opened for the reads and
    /// closed when the `BodyChunks` is dropped (body files are not cached:
    /// one is read once per delivery attempt, and an open file would keep
    /// the space of a completed message). A body file never moves:
    /// compaction copies forward only the record that names it.
    pub async fn chunks(&self, body: &BodyRef) -> io::Result<BodyChunks> {
        self.inner.last_read.set(Instant::now());
        self.arm_closer();
        let (file, start, name) = match body.file_id() {
            Some(id) => {
                let name = body_file_name(id);
                let path = self.inner.dir.join(&name);
                let file = BufferedFile::open(&path).await.map_err(glommio_error)?;
                (Rc::new(file), 0, name)
            }
            None => {
                // Where compaction moved it, once its segment is gone.
                let (body, file) = self.file_of(*body).await?;
                (file, body.offset, segment_file_name(body.segment))
            }
        };
        Ok(BodyChunks {
            file,
            name,
            at: start,
            end: start + body.len as u64,
        })
    }

    /// Where `body` can be read now and the open file there: its own
    /// segment, or where compaction moved it once that segment is gone
    /// (see `compact`).
    async fn file_of(&self, mut body: BodyRef) -> io::Result<(BodyRef, Rc<BufferedFile>)> {
        let mut attempts = 0;
        loop {
            match self.file(body.segment).await {
                Ok(file) => return Ok((body, file)),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    attempts += 1;
                    match crate::relocated(&self.inner.dir, &body) {
                        Some(moved)
                            if attempts < crate::spool::compact::RELOCATION_ATTEMPTS_MAX =>
                        {
                            body = moved
                        }
                        _ => return Err(err),
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The open file of `segment`, from the cache or opened now.
    async fn file(&self, segment: u64) -> io::Result<Rc<BufferedFile>> {
        let removals = self.inner.removals.load(Ordering::Relaxed);
        if removals != self.inner.removals_seen.get() {
            // Segments were deleted: let go of them (their space comes
            // back once no read holds them).
            self.inner.removals_seen.set(removals);
            self.inner.files.borrow_mut().clear();
        }
        {
            let mut files = self.inner.files.borrow_mut();
            if let Some(at) = files.iter().position(|(s, _)| *s == segment) {
                let entry = files.remove(at);
                let file = entry.1.clone();
                files.push(entry);
                return Ok(file);
            }
        }
        let path = self.inner.dir.join(segment_file_name(segment));
        let file = Rc::new(BufferedFile::open(&path).await.map_err(glommio_error)?);
        let mut files = self.inner.files.borrow_mut();
        // Another read may have opened it meanwhile: keep one.
        if let Some(at) = files.iter().position(|(s, _)| *s == segment) {
            return Ok(files[at].1.clone());
        }
        if files.len() == BODY_READER_FILES_MAX {
            files.remove(0);
        }
        files.push((segment, file.clone()));
        Ok(file)
    }
}

/// Keeps the OS error code of a glommio error.
fn glommio_error(err: glommio::GlommioError<()>) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::from(err),
    }
}
