//! The spool handle and its group-commit writer task.
//! Owns: the in-memory batch, the waiters of appended records, the writer
//! task (one per spool) with its `Storage`, `Journal` and `LiveIndex`.
//! May call: `journal` (what goes where), `storage` (the I/O), `record`,
//! `recovery` (at open), glommio's `spawn_local`.
//! Never: SMTP or queue decisions; envelopes and notes are opaque bytes.
//!
//! Group commit: `append_*` encode their record into the open batch and
//! wait. The writer loops: take the whole batch, write it with one
//! `write_at`, `fdatasync`, then resolve every record that sync covered.
//! Records appended while a sync runs form the next batch, so batches grow
//! with load and a lone record waits for exactly one sync.
//!
//! Full disk: the writer never writes past a segment's reservation and
//! keeps part of it for notes and completes (`journal`). When a new segment
//! cannot be reserved, the records that needed it fail with `StorageFull`
//! and the rest of the batch still goes into the current segment, so
//! completions keep flowing; once the current segment holds nothing live it
//! is retired and deleted too, and the next roll finds the space again.
//!
//! Segment GC runs in a task of its own (`run_gc`), fed dead segments in
//! ascending order by the writer: a removal and its directory syncs never
//! delay a group commit.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use std::time::Instant;

use crate::journal::{ChunkPlan, Class, Journal, LiveIndex, Plan, Slot, Span};
use crate::record::{self, Record, SEGMENT_HEADER_BYTES};
use crate::storage::{GlommioStorage, Remover, Storage};
use crate::{BodyRef, Recovery, SpoolError, SpoolOptions, SpoolStats};
pub use compact::{CompactReport, CompactionOptions};

#[path = "compact.rs"]
pub(crate) mod compact;

/// The outcome handed to one waiting appender.
type AppendResult = Result<Option<BodyRef>, SpoolError>;

#[derive(Default)]
struct Waiter {
    result: Option<AppendResult>,
    waker: Option<Waker>,
}

impl Waiter {
    fn resolve(waiter: &RefCell<Waiter>, result: AppendResult) {
        let mut waiter = waiter.borrow_mut();
        waiter.result = Some(result);
        if let Some(waker) = waiter.waker.take() {
            waker.wake();
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum PendingKind {
    /// Body offset from the start of the record, and body length; or,
    /// `in_file`, the body's length in its own file (offset unused).
    Message {
        body_offset: u32,
        body_len: u32,
        in_file: bool,
    },
    Note,
    Complete,
    /// A live message copied forward by compaction (written by the writer
    /// itself, never appended); `in_file` as for `Message` (a moved-file
    /// record: the body stays in its file).
    Moved {
        body_offset: u32,
        body_len: u32,
        in_file: bool,
    },
}

/// One record in the open batch, waiting for the sync that covers it.
struct Pending {
    id: u64,
    /// Encoded bytes, header included.
    len: u32,
    kind: PendingKind,
    waiter: Rc<RefCell<Waiter>>,
}

impl Pending {
    /// A moved record of `len` bytes for `id`, for compaction (`in_file`:
    /// a moved-file record, `body_offset` unused).
    fn moved(id: u64, len: u32, body_offset: u32, body_len: u32, in_file: bool) -> Pending {
        Pending {
            id,
            len,
            kind: PendingKind::Moved {
                body_offset,
                body_len,
                in_file,
            },
            waiter: Rc::new(RefCell::new(Waiter::default())),
        }
    }
}

/// State shared by the handles and the writer task (same executor).
struct Shared {
    options: SpoolOptions,
    /// Largest record this spool accepts, header included.
    record_bytes_max: u64,
    /// Encoded records not yet taken by the writer. Above
    /// options.batch_bytes_max only when it holds a single record.
    batch: Vec<u8>,
    /// The records of `batch`, in order.
    pending: Vec<Pending>,
    /// When the first record of the open batch was appended.
    batch_opened: Option<Instant>,
    /// Per batch: from its first record's append to the start of its
    /// write (waiting for the sync before it, and for the writer to run).
    commit_wait: crate::latency::LatencyHistogram,
    /// Per batch: write + fdatasync.
    commit_sync: crate::latency::LatencyHistogram,
    /// No append is accepted once set; the writer drains and exits.
    closing: bool,
    writer_done: bool,
    close_result: Option<io::Result<()>>,
    writer_waker: Option<Waker>,
    /// Appenders held back because the batch is full, and close() callers.
    space_waiters: Vec<Waker>,
    done_waiters: Vec<Waker>,
    stats: SpoolStats,
    /// Dead segments (gone from the live index) whose removal has not
    /// completed yet, ascending. The GC task removes them oldest first and
    /// never past a failure: a newer one may hold the complete records
    /// that keep messages of an older one dead.
    removals: Vec<u64>,
    /// The spool directory, where body files live.
    body_dir: PathBuf,
    /// Ids of messages whose `Complete` is durable and whose body file is
    /// to be removed (no order needed: a lost unlink only leaves an orphan
    /// that the next open removes).
    body_removals: Vec<u64>,
    /// Set by the writer when `removals` changed or a failed removal is
    /// worth another try; taken by the GC task.
    gc_kick: bool,
    gc_waker: Option<Waker>,
    /// GC passes finished, and the writer waiting for the next one.
    gc_passes: u64,
    gc_pass_waiter: Option<Waker>,
    gc_done: bool,
    /// Compaction steps asked of the writer, oldest first; never more
    /// than COMPACTION_REQUESTS_MAX.
    compaction: std::collections::VecDeque<compact::Request>,
    /// How many clients the engine serves on this shard now
    /// (`Spool::set_client_count`; see `sync_choice`); None: not known,
    /// taken as many.
    client_count: Option<Box<dyn Fn() -> usize>>,
}

impl Shared {
    fn wake_space_waiters(&mut self) {
        for waker in self.space_waiters.drain(..) {
            waker.wake();
        }
    }

    fn kick_gc(&mut self) {
        self.gc_kick = true;
        if let Some(waker) = self.gc_waker.take() {
            waker.wake();
        }
    }
}

struct Handle {
    shared: Rc<RefCell<Shared>>,
    dir: PathBuf,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The last handle is gone: let the writer flush and exit.
        let mut shared = self.shared.borrow_mut();
        shared.closing = true;
        if let Some(waker) = shared.writer_waker.take() {
            waker.wake();
        }
    }
}

/// A shard's spool. `!Send`: it lives on the glommio executor that opened
/// it. Clones share one writer.
#[derive(Clone)]
pub struct Spool {
    handle: Rc<Handle>,
}

/// Resolves when `f` returns Ready; a tiny stand-in for `poll_fn` that
/// keeps the borrow rules visible.
struct PollFn<F>(F);

impl<T, F: FnMut(&mut Context<'_>) -> Poll<T> + Unpin> Future for PollFn<F> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        (self.0)(cx)
    }
}

fn is_storage_full(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(
            err.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

impl SpoolError {
    /// Turns a storage error into the spool's error, keeping a full disk
    /// recognisable.
    pub(crate) fn from_io(err: io::Error) -> SpoolError {
        if is_storage_full(&err) {
            SpoolError::StorageFull
        } else {
            SpoolError::Io(err)
        }
    }
}

/// A copy of `err` for each waiter of a failed batch (io::Error is not Clone).
fn copy_error(err: &io::Error) -> SpoolError {
    if is_storage_full(err) {
        return SpoolError::StorageFull;
    }
    match err.raw_os_error() {
        Some(code) => SpoolError::Io(io::Error::from_raw_os_error(code)),
        None => SpoolError::Io(io::Error::new(err.kind(), err.to_string())),
    }
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, recovers what it
    /// holds, deletes segments without live messages and starts the writer.
    /// Must run inside a glommio `LocalExecutor`.
    pub async fn open(dir: &Path, options: SpoolOptions) -> Result<(Spool, Recovery), SpoolError> {
        options.validate()?;
        // glommio opens a relative directory path with a bad dirfd (EBADF):
        // always hand it an absolute one.
        let dir = std::path::absolute(dir).map_err(SpoolError::Io)?;
        let storage = GlommioStorage::open(&dir, options.file_mode, options.sync_ring)
            .await
            .map_err(SpoolError::from_io)?;
        let (spool, mut recovery) = Spool::open_with_storage(&dir, storage, options).await?;
        sweep_body_files(&dir, &mut recovery).await?;
        Ok((spool, recovery))
    }

    /// `open` over any storage (a simulated disk in tests).
    pub async fn open_with_storage<S: Storage + 'static>(
        dir: &Path,
        mut storage: S,
        options: SpoolOptions,
    ) -> Result<(Spool, Recovery), SpoolError> {
        options.validate()?;
        let recovered = crate::recovery::recover(&storage).map_err(SpoolError::from_io)?;
        let mut recovery = recovered.recovery;
        let index = recovered.index;
        for cut in &recovery.truncated {
            tracing::warn!(
                dir = %dir.display(),
                segment = format_args!("{:016x}", cut.segment),
                offset = cut.offset,
                reason = %cut.reason,
                "spool segment cut at a torn or corrupt record: records from here on \
                 were never acknowledged or are damaged; the segment is kept until its \
                 live messages complete",
            );
        }
        let mut remover = storage.remover().map_err(SpoolError::from_io)?;
        let (deleted, failure) = remove_in_order(&mut remover, &recovered.dead_segments).await;
        recovery.segments_deleted += deleted as u32;
        if let Some(err) = failure {
            return Err(SpoolError::from_io(err));
        }
        let mut journal = Journal::new(options.segment_bytes, recovered.next_segment)
            .with_zero_ahead(options.zero_ahead_bytes);
        if let Some((segment, end)) = recovered.tail {
            resume(
                &mut storage,
                &mut journal,
                segment,
                end,
                index.live_count() as u64,
            )
            .await;
        }
        let stats = SpoolStats {
            segments: index.segment_count() as u32,
            live_messages: index.live_count() as u64,
            ..SpoolStats::default()
        };
        let shared = Rc::new(RefCell::new(Shared {
            record_bytes_max: journal.record_bytes_max(),
            batch: Vec::with_capacity(options.batch_bytes_max.min(BATCH_CAPACITY_BYTES_MAX)),
            options,
            pending: Vec::new(),
            batch_opened: None,
            commit_wait: Default::default(),
            commit_sync: Default::default(),
            closing: false,
            writer_done: false,
            close_result: None,
            writer_waker: None,
            space_waiters: Vec::new(),
            done_waiters: Vec::new(),
            stats,
            removals: Vec::new(),
            body_removals: Vec::new(),
            body_dir: dir.to_path_buf(),
            gc_kick: false,
            gc_waker: None,
            gc_passes: 0,
            gc_pass_waiter: None,
            gc_done: false,
            compaction: std::collections::VecDeque::new(),
            client_count: None,
        }));
        let body_files = recovery
            .messages
            .iter()
            .filter_map(|m| m.body.file_id())
            .collect();
        let writer = Writer {
            storage,
            journal,
            index,
            body_files,
            roll_blocked: false,
            shared: shared.clone(),
            compactor: compact::Compactor::new(dir),
            batch_opened: None,
        };
        glommio::spawn_local(run_gc(remover, shared.clone())).detach();
        glommio::spawn_local(writer.run()).detach();
        let spool = Spool {
            handle: Rc::new(Handle {
                shared,
                dir: dir.to_path_buf(),
            }),
        };
        Ok((spool, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.handle.dir
    }

    /// Tells the spool how to count the clients its shard serves (SMTP
    /// sessions, HTTP connections): while it counts at most one, a group
    /// commit of one message syncs on this thread instead of through
    /// io_uring (`sync_choice`). Read at every group commit: keep it cheap.
    pub fn set_client_count(&self, count: impl Fn() -> usize + 'static) {
        self.handle.shared.borrow_mut().client_count = Some(Box::new(count));
    }

    pub fn stats(&self) -> SpoolStats {
        self.handle.shared.borrow().stats
    }

    /// Appends a message; resolves once it is durable, with where its body
    /// sits for `BodyReader`.
    pub async fn append_message(
        &self,
        id: u64,
        envelope: &[u8],
        body: &[u8],
    ) -> Result<BodyRef, SpoolError> {
        let body_ref = self.append(Record::Message { id, envelope, body }).await?;
        Ok(body_ref.expect("a message record yields a body reference"))
    }

    /// Appends a message whose body was written to its own file (`bodies`)
    /// and synced there; resolves once the record is durable, with the
    /// body's reference. Only from then on is the body file a message's;
    /// on an error it is the caller's to remove (`bodies::remove_body_file`).
    pub async fn append_message_file(
        &self,
        envelope: &[u8],
        body: &crate::FileBody,
    ) -> Result<BodyRef, SpoolError> {
        let record = Record::MessageFile {
            id: body.id,
            envelope,
            body_len: body.len,
            body_crc32c: body.crc32c,
        };
        if body.len > u32::MAX as u64 {
            return Err(SpoolError::TooLarge {
                bytes: body.len,
                limit: u32::MAX as u64,
            });
        }
        let body_ref = self.append(record).await?;
        Ok(body_ref.expect("a message record yields a body reference"))
    }

    /// A writer for the body file of message `id` in this spool's
    /// directory (see `bodies`).
    pub async fn body_writer(&self, id: u64) -> Result<crate::BodyWriter, SpoolError> {
        let file_mode = self.handle.shared.borrow().options.file_mode;
        crate::BodyWriter::create(&self.handle.dir, id, file_mode).await
    }

    /// Removes the body file of message `id`, one that never became a
    /// message (its record failed).
    pub async fn discard_body_file(&self, id: u64) {
        if let Err(err) = crate::bodies::remove_body_file(&self.handle.dir, id).await {
            tracing::warn!(id, error = %err, "cannot remove an unused body file; the next start removes it");
        }
    }

    /// Appends a note (opaque to the spool) for message `id`; resolves once
    /// it is durable. Notes for an id that is not live are kept on disk but
    /// ignored by recovery.
    pub async fn append_note(&self, id: u64, note: &[u8]) -> Result<(), SpoolError> {
        self.append(Record::Note { id, data: note }).await?;
        Ok(())
    }

    /// Marks message `id` complete; resolves once that is durable. Segments
    /// left without live messages are deleted after the sync.
    pub async fn complete(&self, id: u64) -> Result<(), SpoolError> {
        self.append(Record::Complete { id }).await?;
        Ok(())
    }

    async fn append(&self, record: Record<'_>) -> AppendResult {
        let len = record.encoded_len();
        let shared = &self.handle.shared;
        let limit = shared.borrow().record_bytes_max;
        if len as u64 > limit {
            return Err(SpoolError::TooLarge {
                bytes: len as u64,
                limit,
            });
        }
        let kind = match record {
            Record::Message { body, .. } => PendingKind::Message {
                body_offset: record.body_offset().expect("message") as u32,
                body_len: body.len() as u32,
                in_file: false,
            },
            Record::MessageFile { body_len, .. } => PendingKind::Message {
                body_offset: 0,
                body_len: body_len as u32,
                in_file: true,
            },
            Record::Note { .. } => PendingKind::Note,
            Record::Complete { .. } => PendingKind::Complete,
            Record::Moved { .. } | Record::MovedFile { .. } => {
                unreachable!("moved records are written by compaction only")
            }
        };
        let waiter = Rc::new(RefCell::new(Waiter::default()));
        PollFn(|cx: &mut Context<'_>| {
            let mut shared = shared.borrow_mut();
            if shared.closing {
                return Poll::Ready(Err(SpoolError::Closed));
            }
            // Back-pressure: a full batch holds appenders until the writer
            // takes it. A record larger than the batch limit still goes
            // through, alone.
            if !shared.pending.is_empty()
                && shared.batch.len() + len > shared.options.batch_bytes_max
            {
                shared.space_waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            record::encode(&record, &mut shared.batch);
            if shared.pending.is_empty() {
                shared.batch_opened = Some(Instant::now());
            }
            shared.pending.push(Pending {
                id: record.id(),
                len: len as u32,
                kind,
                waiter: waiter.clone(),
            });
            if let Some(waker) = shared.writer_waker.take() {
                waker.wake();
            }
            Poll::Ready(Ok(()))
        })
        .await?;
        PollFn(|cx: &mut Context<'_>| {
            let mut waiter = waiter.borrow_mut();
            match waiter.result.take() {
                Some(result) => Poll::Ready(result),
                None => {
                    waiter.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Runs one compaction step (see `compact`): moves live messages out
    /// of sealed segments whose live records take at most
    /// `live_percent_max` percent of a segment, up to `budget_bytes` of
    /// copies (one message at least), and hands the segments it empties to
    /// the GC. Runs on the writer between group commits.
    pub async fn compact(
        &self,
        budget_bytes: u64,
        live_percent_max: u32,
    ) -> Result<CompactReport, SpoolError> {
        assert!(live_percent_max <= 100, "a percentage");
        compact::ask_for_step(&self.handle.shared, budget_bytes, live_percent_max).await
    }

    /// The background task that compacts this spool at the pace `options`
    /// set, until the spool closes (spawn it on the spool's executor, in a
    /// task queue that does not serve clients). It holds no handle while
    /// it sleeps, so dropping the spool still closes it.
    pub fn compaction_task(&self, options: CompactionOptions) -> impl Future<Output = ()> {
        compact::pace(Rc::downgrade(&self.handle), options)
    }

    /// Writes and syncs everything appended so far, stops the writer and
    /// closes the segment. Later appends fail with `Closed`.
    pub async fn close(&self) -> Result<(), SpoolError> {
        let shared = &self.handle.shared;
        {
            let mut shared = shared.borrow_mut();
            shared.closing = true;
            if let Some(waker) = shared.writer_waker.take() {
                waker.wake();
            }
        }
        PollFn(|cx: &mut Context<'_>| {
            let mut shared = shared.borrow_mut();
            if shared.writer_done && shared.gc_done {
                Poll::Ready(())
            } else {
                shared.done_waiters.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let result = shared.borrow_mut().close_result.take();
        match result {
            Some(Err(err)) => Err(SpoolError::from_io(err)),
            Some(Ok(())) | None => Ok(()),
        }
    }
}

/// Removes the body files no live message names (a DATA cut short by a
/// crash, or a completed message whose unlink was lost) and reports live
/// messages whose body file is missing. Runs at open, before any body
/// file is written.
async fn sweep_body_files(dir: &Path, recovery: &mut Recovery) -> Result<(), SpoolError> {
    let files = crate::bodies::list_body_files(dir).map_err(SpoolError::Io)?;
    let live: std::collections::HashSet<u64> = recovery
        .messages
        .iter()
        .filter_map(|m| m.body.file_id())
        .collect();
    for &id in &files {
        if live.contains(&id) {
            continue;
        }
        match crate::bodies::remove_body_file(dir, id).await {
            Ok(()) => recovery.body_files_deleted += 1,
            Err(err) => tracing::warn!(
                dir = %dir.display(),
                id,
                error = %err,
                "cannot delete a body file no message names; tried again at the next start",
            ),
        }
    }
    if recovery.body_files_deleted > 0 {
        tracing::info!(
            dir = %dir.display(),
            "removed {} body file(s) that no message names (a DATA cut short by a \
             restart, or a completed message's file)",
            recovery.body_files_deleted
        );
    }
    let present: std::collections::HashSet<u64> = files.into_iter().collect();
    for id in live {
        if !present.contains(&id) {
            tracing::error!(
                dir = %dir.display(),
                id,
                "spool: the body file of a live message is missing (removed by hand or a \
                 media fault); its delivery fails until the message expires and bounces",
            );
            recovery.body_files_missing.push(id);
        }
    }
    recovery.body_files_missing.sort_unstable();
    Ok(())
}

/// Initial capacity reserved for the batch buffer; it grows to the batch
/// limit only under load.
const BATCH_CAPACITY_BYTES_MAX: usize = 1024 * 1024;

/// Message records (the ones a client waits on for its 250) in `pending`.
fn count_messages(pending: &[Pending]) -> usize {
    pending
        .iter()
        .filter(|p| matches!(p.kind, PendingKind::Message { .. }))
        .count()
}

/// Continues appending in the newest segment after a restart, in the space
/// it already holds, so that completions go through even when the disk is
/// full at start-up. On any failure the spool goes on without it: the
/// first append rolls to a fresh segment.
async fn resume<S: Storage>(
    storage: &mut S,
    journal: &mut Journal,
    segment: u64,
    end: u64,
    live: u64,
) {
    let len = match storage.resume_segment(segment).await {
        Ok(len) => len,
        Err(err) => {
            tracing::warn!(segment, error = %err, "cannot reopen the newest spool segment; appends go to a new one");
            return;
        }
    };
    let sizes = journal.reserve_sizes(journal.resume_bytes_min(end, len, live));
    match storage.reserve(&sizes).await {
        Ok(capacity) => journal.resume(segment, end, len, capacity),
        Err(err) => {
            tracing::warn!(segment, error = %err, "cannot reserve space in the newest spool segment; appends go to a new one");
            let _ = storage.close().await;
        }
    }
}

/// The group-commit task: sole owner of the storage and the bookkeeping.
struct Writer<S: Storage> {
    storage: S,
    journal: Journal,
    index: LiveIndex,
    /// Live messages whose body is in a file of its own: their file goes
    /// once their `Complete` is durable.
    body_files: std::collections::HashSet<u64>,
    /// The last roll failed for lack of space: a current segment that holds
    /// nothing live is retired (and deleted) rather than kept for appends.
    roll_blocked: bool,
    shared: Rc<RefCell<Shared>>,
    compactor: compact::Compactor,
    /// When the first record of the batch being written was appended.
    batch_opened: Option<Instant>,
}

impl<S: Storage> Writer<S> {
    async fn run(mut self) {
        while let Some((batch, pending)) = self.next_batch().await {
            if !pending.is_empty() {
                self.write_batch(batch, pending).await;
            }
            self.compact_if_asked().await;
        }
        let unanswered = std::mem::take(&mut self.shared.borrow_mut().compaction);
        for request in unanswered {
            request.resolve(Err(SpoolError::Closed));
        }
        self.clean_tail().await;
        let result = self.storage.close().await;
        let mut shared = self.shared.borrow_mut();
        if shared.commit_sync.count() > 0 {
            tracing::info!(
                "spool group commit: wait before write {:?}; write + fdatasync {:?}",
                shared.commit_wait,
                shared.commit_sync
            );
        }
        shared.writer_done = true;
        shared.close_result = Some(result);
        shared.wake_space_waiters();
        if let Some(waker) = shared.gc_waker.take() {
            waker.wake();
        }
        for waker in shared.done_waiters.drain(..) {
            waker.wake();
        }
    }

    /// Zeroes what failed writes left past the last record of the current
    /// segment, so that the next open sees a clean end and resumes there
    /// (on a full disk, that is where completions find their reserve).
    async fn clean_tail(&mut self) {
        let Some((offset, bytes)) = self.journal.dirty_tail() else {
            return;
        };
        let mut result = self.storage.write_at(vec![0; bytes as usize], offset).await;
        if result.is_ok() {
            result = self.storage.sync().await;
        }
        match result {
            Ok(()) => self.journal.tail_cleaned(),
            Err(err) => tracing::warn!(
                offset,
                bytes,
                error = %err,
                "cannot clear the tail of the spool segment at close; the next start \
                 reports a cut there and begins a new segment"
            ),
        }
    }

    /// Takes the open batch (empty when only a compaction step was asked
    /// for), or None once closing and drained. A batch of
    /// notes and completions only (no message waits on it for its 250)
    /// lingers up to `options.progress_linger_ms` for a message to share
    /// its sync: with one client sending one message at a time, each
    /// message's completion then rides the next message's fdatasync
    /// instead of costing one of its own.
    async fn next_batch(&mut self) -> Option<(Vec<u8>, Vec<Pending>)> {
        // Wait for records (or the close) without taking them yet.
        let shared = self.shared.clone();
        PollFn(move |cx: &mut Context<'_>| {
            let mut shared = shared.borrow_mut();
            if !shared.pending.is_empty() || shared.closing || !shared.compaction.is_empty() {
                return Poll::Ready(());
            }
            shared.writer_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        self.linger_for_a_message().await;
        let mut shared = self.shared.borrow_mut();
        if shared.pending.is_empty() {
            if shared.closing {
                return None;
            }
            assert!(
                !shared.compaction.is_empty(),
                "woken with nothing to write only to close or compact"
            );
            return Some((Vec::new(), Vec::new()));
        }
        let capacity = shared.batch.len().min(BATCH_CAPACITY_BYTES_MAX);
        let batch = std::mem::replace(&mut shared.batch, Vec::with_capacity(capacity));
        let pending = std::mem::take(&mut shared.pending);
        self.batch_opened = shared.batch_opened.take();
        shared.wake_space_waiters();
        Some((batch, pending))
    }

    /// Waits while the open batch holds progress records only, until a
    /// message joins it, the spool closes, or the linger runs out. Returns
    /// at once when the batch is empty (the caller waits for records) or
    /// lingering is off.
    async fn linger_for_a_message(&self) {
        let linger_ms = self.shared.borrow().options.progress_linger_ms;
        let only_progress = |shared: &Shared| {
            !shared.closing
                && !shared.pending.is_empty()
                && shared
                    .pending
                    .iter()
                    .all(|p| !matches!(p.kind, PendingKind::Message { .. }))
        };
        if linger_ms == 0 || !only_progress(&self.shared.borrow()) {
            return;
        }
        let shared = self.shared.clone();
        let message_joined = PollFn(move |cx: &mut Context<'_>| {
            let mut shared = shared.borrow_mut();
            if only_progress(&shared) {
                shared.writer_waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        });
        let linger = glommio::timer::sleep(Duration::from_millis(linger_ms));
        futures_lite::future::or(message_joined, linger).await;
    }

    /// What each record of a batch may use of a segment (see `journal`):
    /// a complete counts as one of a live message when its message is live
    /// or comes earlier in the batch.
    fn classify(&self, pending: &[Pending]) -> Vec<Slot> {
        let mut batch_messages: Option<std::collections::HashSet<u64>> = None;
        pending
            .iter()
            .map(|p| {
                let class = match p.kind {
                    // A moved record leaves both reserves free, like a
                    // message (it counts one live message too many in the
                    // reserve: conservative).
                    PendingKind::Message { .. } | PendingKind::Moved { .. } => Class::Message,
                    PendingKind::Note => Class::Note,
                    PendingKind::Complete if self.index.is_live(p.id) => Class::Complete,
                    PendingKind::Complete => {
                        let ids = batch_messages.get_or_insert_with(|| {
                            pending
                                .iter()
                                .filter(|q| matches!(q.kind, PendingKind::Message { .. }))
                                .map(|q| q.id)
                                .collect()
                        });
                        if ids.remove(&p.id) {
                            Class::Complete
                        } else {
                            Class::Note
                        }
                    }
                };
                Slot { len: p.len, class }
            })
            .collect()
    }

    /// Writes a batch as one chunk per segment it touches (one, unless it
    /// crosses a roll-over), each with one write and one fdatasync. A
    /// record that needs a new segment when none can be reserved fails
    /// with `StorageFull` alone; the records after it still go into the
    /// current segment if they fit there.
    async fn write_batch(&mut self, batch: Vec<u8>, pending: Vec<Pending>) {
        let slots = self.classify(&pending);
        assert_eq!(
            slots.iter().map(|s| s.len as usize).sum::<usize>(),
            batch.len()
        );
        let mut batch = Some(batch);
        let mut record_start = 0;
        let mut byte_start = 0;
        // A roll in this batch failed for lack of space: later records that
        // need one fail at once instead of asking the disk again.
        let mut roll_failed = false;
        // The last step created a segment: the next record must fit it.
        let mut rolled = false;
        while record_start < pending.len() {
            let live = self.index.live_count() as u64;
            let plan = match self.journal.plan(&slots[record_start..], live) {
                Plan::Write(plan) => plan,
                Plan::Roll { segment, bytes_min } => {
                    let sizes = self.journal.reserve_sizes(bytes_min);
                    if roll_failed || rolled || sizes.is_empty() {
                        Waiter::resolve(
                            &pending[record_start].waiter,
                            Err(SpoolError::StorageFull),
                        );
                        byte_start += pending[record_start].len as usize;
                        record_start += 1;
                        rolled = false;
                        continue;
                    }
                    match self.roll(segment, &sizes).await {
                        Ok(()) => rolled = true,
                        Err(err) if is_storage_full(&err) => roll_failed = true,
                        Err(err) => {
                            tracing::warn!(segment, error = %err, "cannot create spool segment");
                            fail(&pending[record_start..], &err);
                            return;
                        }
                    }
                    continue;
                }
            };
            rolled = false;
            let record_end = record_start + plan.records;
            let byte_end = byte_start + plan.bytes as usize;
            let whole = record_start == 0 && record_end == pending.len();
            let (offset, data) = chunk_bytes(&plan, &mut batch, byte_start, byte_end, whole);
            check_records(&data, &plan, offset, &slots[record_start..record_end]);
            let started = Instant::now();
            let opened = self.batch_opened.take();
            let inline = {
                let shared = self.shared.borrow();
                crate::sync_choice::inline_sync(
                    shared.options.inline_sync,
                    shared
                        .client_count
                        .as_ref()
                        .is_some_and(|count| count() <= 1),
                    count_messages(&pending[record_start..record_end]),
                    plan.bytes,
                )
            };
            let mut result = self.storage.write_at(data, offset).await;
            if result.is_ok() {
                result = if inline {
                    self.storage.sync_inline().await
                } else {
                    self.storage.sync().await
                };
            }
            let sync_us = started.elapsed().as_micros() as u64;
            {
                let mut shared = self.shared.borrow_mut();
                if let Some(opened) = opened {
                    let wait = started.saturating_duration_since(opened);
                    shared.commit_wait.record(wait.as_micros() as u64);
                }
                shared.commit_sync.record(sync_us);
                shared.stats.syncs += 1;
                shared.stats.inline_syncs += u64::from(inline);
                shared.stats.sync_latency_us_max = shared.stats.sync_latency_us_max.max(sync_us);
            }
            if let Err(err) = result {
                tracing::warn!(
                    segment = plan.segment,
                    offset = plan.offset,
                    bytes = plan.bytes,
                    error = %err,
                    "spool write failed: its records are not durable and will be \
                     overwritten by the next batch",
                );
                self.journal.failed(&plan);
                fail(&pending[record_start..], &err);
                return;
            }
            self.journal.committed(&plan);
            let completed = self.commit(&plan, &pending[record_start..record_end]);
            if completed || !self.shared.borrow().removals.is_empty() {
                self.collect_garbage().await;
            }
            record_start = record_end;
            byte_start = byte_end;
        }
    }

    /// Creates segment `segment` with the first of `sizes` the disk can
    /// reserve and makes it current. When the disk has no room, first
    /// lets the GC task finish removals that would free some, then asks
    /// once more.
    async fn roll(&mut self, segment: u64, sizes: &[u64]) -> io::Result<()> {
        let mut result = self.storage.create_segment(segment, sizes).await;
        if matches!(&result, Err(err) if is_storage_full(err)) {
            // A full disk: the current segment may hold nothing live any
            // more (retire it), and segments may be waiting for removal.
            self.roll_blocked = true;
            self.collect_garbage().await;
            if self.wait_for_gc().await {
                result = self.storage.create_segment(segment, sizes).await;
            }
        }
        match result {
            Ok(capacity) => {
                self.journal.rolled(segment, capacity);
                self.index.add_segment(segment);
                if self.roll_blocked {
                    tracing::info!(
                        segment,
                        capacity,
                        "spool has room again: new segment reserved"
                    );
                }
                self.roll_blocked = false;
                self.update_segment_count();
                // The previous segment may hold nothing live any more.
                self.collect_garbage().await;
                Ok(())
            }
            Err(err) => {
                if is_storage_full(&err) {
                    tracing::debug!(
                        segment,
                        "no space to reserve a new spool segment: messages are refused \
                         until completions free a segment"
                    );
                }
                Err(err)
            }
        }
    }

    /// Waits for the GC task to run a pass over the removals now queued.
    /// Returns false when nothing was queued.
    async fn wait_for_gc(&mut self) -> bool {
        let target = {
            let mut shared = self.shared.borrow_mut();
            if shared.removals.is_empty() {
                return false;
            }
            shared.kick_gc();
            shared.gc_passes + 1
        };
        let shared = self.shared.clone();
        PollFn(move |cx: &mut Context<'_>| {
            let mut shared = shared.borrow_mut();
            if shared.gc_passes >= target || shared.gc_done {
                Poll::Ready(())
            } else {
                shared.gc_pass_waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        true
    }

    /// Updates the live index for a durable chunk and wakes its waiters.
    /// Returns whether it held a complete record.
    fn commit(&mut self, plan: &ChunkPlan, pending: &[Pending]) -> bool {
        let mut completed = false;
        let mut offset = plan.offset;
        for p in pending {
            let result = match p.kind {
                PendingKind::Message {
                    body_offset,
                    body_len,
                    in_file,
                } => {
                    self.index.message(p.id, plan.segment);
                    if in_file {
                        self.body_files.insert(p.id);
                        Some(BodyRef::file(p.id, body_len))
                    } else {
                        Some(BodyRef {
                            segment: plan.segment,
                            offset: offset + body_offset as u64,
                            len: body_len,
                        })
                    }
                }
                PendingKind::Note => {
                    self.index.note(p.id, plan.segment);
                    None
                }
                PendingKind::Complete => {
                    completed |= self.index.complete(p.id, plan.segment);
                    // A moved message keeps its id in `body_files`: its
                    // body file goes when its message completes, however
                    // often its record was copied forward.
                    if !self.index.is_live(p.id) && self.body_files.remove(&p.id) {
                        let mut shared = self.shared.borrow_mut();
                        shared.body_removals.push(p.id);
                        shared.kick_gc();
                    }
                    self.compactor.forget(p.id);
                    None
                }
                PendingKind::Moved {
                    body_offset,
                    body_len,
                    in_file,
                } => {
                    assert!(self.index.is_live(p.id), "moved only while live");
                    self.index.moved(p.id, plan.segment);
                    if in_file {
                        // The body stays in its file: only its record moved.
                        assert!(
                            self.body_files.contains(&p.id),
                            "a body file of a live message"
                        );
                        Some(BodyRef::file(p.id, body_len))
                    } else {
                        Some(BodyRef {
                            segment: plan.segment,
                            offset: offset + body_offset as u64,
                            len: body_len,
                        })
                    }
                }
            };
            if !matches!(p.kind, PendingKind::Complete) {
                let span = Span {
                    segment: plan.segment,
                    offset,
                    len: p.len,
                };
                self.index.locate(p.id, span);
            }
            offset += p.len as u64;
            Waiter::resolve(&p.waiter, Ok(result));
        }
        assert_eq!(offset, plan.offset + plan.bytes);
        let mut shared = self.shared.borrow_mut();
        shared.stats.records_appended += pending.len() as u64;
        shared.stats.bytes_appended += plan.bytes;
        shared.stats.live_messages = self.index.live_count() as u64;
        completed
    }

    /// Hands every segment no live message needs to the GC task, oldest
    /// first. With the disk full, a current segment that holds nothing
    /// live is retired and handed over too, so its space comes back.
    async fn collect_garbage(&mut self) {
        let mut dead = self.index.take_deletable(self.journal.current_segment());
        if self.roll_blocked {
            if let Some(current) = self.journal.current_segment() {
                if self.index.is_free(current) {
                    self.journal.retire();
                    if let Err(err) = self.storage.close().await {
                        tracing::warn!(segment = current, error = %err, "closing a retired spool segment failed");
                    }
                    dead.extend(self.index.take_deletable(None));
                }
            }
        }
        let mut shared = self.shared.borrow_mut();
        shared.removals.extend(dead);
        shared.removals.sort_unstable();
        shared.removals.dedup();
        if !shared.removals.is_empty() {
            shared.kick_gc();
        }
        drop(shared);
        self.update_segment_count();
    }

    /// Segment files present: those in the live index and those waiting
    /// for removal.
    fn update_segment_count(&self) {
        let mut shared = self.shared.borrow_mut();
        shared.stats.segments = (self.index.segment_count() + shared.removals.len()) as u32;
    }
}

/// The GC task: removes the segments the writer hands over, oldest first,
/// one pass per kick. A failed removal stops the pass; it and the newer
/// ones are tried again at the next kick (or decided anew by the next
/// open). Ends once the writer is done and no kick is left.
async fn run_gc<R: Remover>(mut remover: R, shared: Rc<RefCell<Shared>>) {
    loop {
        let go = {
            let shared = shared.clone();
            PollFn(move |cx: &mut Context<'_>| {
                let mut shared = shared.borrow_mut();
                if shared.gc_kick {
                    shared.gc_kick = false;
                    Poll::Ready(true)
                } else if shared.writer_done {
                    Poll::Ready(false)
                } else {
                    shared.gc_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await
        };
        if !go {
            break;
        }
        let bodies = std::mem::take(&mut shared.borrow_mut().body_removals);
        if !bodies.is_empty() {
            let dir = shared.borrow().body_dir.clone();
            for id in bodies {
                if let Err(err) = crate::bodies::remove_body_file(&dir, id).await {
                    tracing::warn!(id, error = %err, "cannot delete a completed message's body file; the next start removes it");
                }
            }
        }
        let removals = shared.borrow().removals.clone();
        let (removed, failure) = remove_in_order(&mut remover, &removals).await;
        let mut shared = shared.borrow_mut();
        // The writer may have queued older segments meanwhile (their last
        // live message completed later): those removed go by value.
        // Removing a newer one before them is safe: a segment is queued
        // only once no older segment depends on it (its guards are 0), and
        // a segment that depends on a queued one sorts after it.
        shared.removals.retain(|s| !removals[..removed].contains(s));
        shared.stats.segments = shared.stats.segments.saturating_sub(removed as u32);
        if let Some(err) = failure {
            tracing::warn!(
                segment = removals[removed],
                error = %err,
                "cannot delete spool segment; retried after the next sync",
            );
        }
        shared.gc_passes += 1;
        if let Some(waker) = shared.gc_pass_waiter.take() {
            waker.wake();
        }
    }
    let mut shared = shared.borrow_mut();
    shared.gc_done = true;
    if let Some(waker) = shared.gc_pass_waiter.take() {
        waker.wake();
    }
    for waker in shared.done_waiters.drain(..) {
        waker.wake();
    }
}

/// Removes `segments` (ascending) one by one, syncing the directory after
/// each removal so that no removal becomes durable before an older one: a
/// newer dead segment may hold the complete records of messages in an
/// older one, and losing only the older removal at a power cut would bring
/// those messages back. Stops at the first failure. Returns how many were
/// removed, and the failure.
async fn remove_in_order<R: Remover>(
    remover: &mut R,
    segments: &[u64],
) -> (usize, Option<io::Error>) {
    debug_assert!(segments.windows(2).all(|w| w[0] < w[1]));
    if segments.is_empty() {
        return (0, None);
    }
    // A removal an earlier pass (or an earlier process, whose last
    // directory sync failed) made may still be pending: make it durable
    // before any newer one.
    if let Err(err) = remover.sync_dir().await {
        return (0, Some(err));
    }
    for (done, &segment) in segments.iter().enumerate() {
        let mut result = remover.remove_segment(segment).await;
        if result.is_ok() {
            result = remover.sync_dir().await;
        }
        if let Err(err) = result {
            return (done, Some(err));
        }
    }
    (segments.len(), None)
}

/// The bytes of one chunk and the file offset they go to: the segment
/// header first when the chunk opens a segment, zeros after the records
/// when an earlier failed write left garbage there. Moves the batch buffer
/// out when the chunk is the whole batch and needs nothing around it.
fn chunk_bytes(
    plan: &ChunkPlan,
    batch: &mut Option<Vec<u8>>,
    byte_start: usize,
    byte_end: usize,
    whole: bool,
) -> (u64, Vec<u8>) {
    if whole && !plan.with_header && plan.zero_fill == 0 {
        return (plan.offset, batch.take().expect("taken once"));
    }
    let records = &batch.as_ref().expect("whole batch not taken yet")[byte_start..byte_end];
    let header_len = if plan.with_header {
        assert_eq!(plan.offset, SEGMENT_HEADER_BYTES as u64);
        SEGMENT_HEADER_BYTES
    } else {
        0
    };
    let mut data = Vec::with_capacity(header_len + records.len() + plan.zero_fill as usize);
    if plan.with_header {
        data.extend_from_slice(&record::encode_segment_header(plan.segment));
    }
    data.extend_from_slice(records);
    data.resize(data.len() + plan.zero_fill as usize, 0);
    (plan.offset - header_len as u64, data)
}

/// Checks every record's length and CRC just before it is written, the
/// twin of the check recovery makes when it reads the record back.
fn check_records(data: &[u8], plan: &ChunkPlan, offset: u64, slots: &[Slot]) {
    let mut at = (plan.offset - offset) as usize;
    for slot in slots {
        let len = slot.len;
        match record::decode(&data[at..]) {
            Ok((_, used)) => assert_eq!(used, len as usize, "record length changed"),
            Err(err) => panic!("spool is about to write a bad record: {err}"),
        }
        at += len as usize;
    }
    assert_eq!(at as u64, plan.offset - offset + plan.bytes);
}

fn fail(pending: &[Pending], err: &io::Error) {
    for p in pending {
        Waiter::resolve(&p.waiter, Err(copy_error(err)));
    }
}
