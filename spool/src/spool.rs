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

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::journal::{ChunkPlan, Journal, LiveIndex};
use crate::record::{self, Record, SEGMENT_HEADER_BYTES};
use crate::storage::{GlommioStorage, Storage};
use crate::{BodyRef, Recovery, SpoolError, SpoolOptions, SpoolStats};

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
    /// Body offset from the start of the record, and body length.
    Message {
        body_offset: u32,
        body_len: u32,
    },
    Note,
    Complete,
}

/// One record in the open batch, waiting for the sync that covers it.
struct Pending {
    id: u64,
    /// Encoded bytes, header included.
    len: u32,
    kind: PendingKind,
    waiter: Rc<RefCell<Waiter>>,
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
    /// No append is accepted once set; the writer drains and exits.
    closing: bool,
    writer_done: bool,
    close_result: Option<io::Result<()>>,
    writer_waker: Option<Waker>,
    /// Appenders held back because the batch is full, and close() callers.
    space_waiters: Vec<Waker>,
    done_waiters: Vec<Waker>,
    stats: SpoolStats,
}

impl Shared {
    fn wake_space_waiters(&mut self) {
        for waker in self.space_waiters.drain(..) {
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
        let storage = GlommioStorage::open(&dir, options.file_mode)
            .await
            .map_err(SpoolError::from_io)?;
        Spool::open_with_storage(&dir, storage, options).await
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
        let (deleted, failure) = remove_in_order(&mut storage, &recovered.dead_segments).await;
        recovery.segments_deleted += deleted as u32;
        if let Some(err) = failure {
            return Err(SpoolError::from_io(err));
        }
        let journal = Journal::new(options.segment_bytes, recovered.next_segment);
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
            closing: false,
            writer_done: false,
            close_result: None,
            writer_waker: None,
            space_waiters: Vec::new(),
            done_waiters: Vec::new(),
            stats,
        }));
        let writer = Writer {
            storage,
            journal,
            index,
            removals: Vec::new(),
            shared: shared.clone(),
        };
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
            },
            Record::Note { .. } => PendingKind::Note,
            Record::Complete { .. } => PendingKind::Complete,
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
            if shared.writer_done {
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

/// Initial capacity reserved for the batch buffer; it grows to the batch
/// limit only under load.
const BATCH_CAPACITY_BYTES_MAX: usize = 1024 * 1024;

/// The group-commit task: sole owner of the storage and the bookkeeping.
struct Writer<S: Storage> {
    storage: S,
    journal: Journal,
    index: LiveIndex,
    /// Dead segments (gone from `index`) whose removal has not completed
    /// yet, ascending. Removed oldest first and never past a failure: a
    /// newer one may hold the complete records that keep messages of an
    /// older one dead.
    removals: Vec<u64>,
    shared: Rc<RefCell<Shared>>,
}

impl<S: Storage> Writer<S> {
    async fn run(mut self) {
        while let Some((batch, pending)) = self.next_batch().await {
            self.write_batch(batch, pending).await;
        }
        let result = self.storage.close().await;
        let mut shared = self.shared.borrow_mut();
        shared.writer_done = true;
        shared.close_result = Some(result);
        shared.wake_space_waiters();
        for waker in shared.done_waiters.drain(..) {
            waker.wake();
        }
    }

    /// Takes the open batch, or None once closing and drained.
    async fn next_batch(&mut self) -> Option<(Vec<u8>, Vec<Pending>)> {
        let shared = self.shared.clone();
        PollFn(move |cx: &mut Context<'_>| {
            let mut shared = shared.borrow_mut();
            if !shared.pending.is_empty() {
                let capacity = shared.batch.len().min(BATCH_CAPACITY_BYTES_MAX);
                let batch = std::mem::replace(&mut shared.batch, Vec::with_capacity(capacity));
                let pending = std::mem::take(&mut shared.pending);
                shared.wake_space_waiters();
                return Poll::Ready(Some((batch, pending)));
            }
            if shared.closing {
                return Poll::Ready(None);
            }
            shared.writer_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Writes a batch as one chunk per segment it touches (one, unless it
    /// crosses a roll-over), each with one write and one fdatasync.
    async fn write_batch(&mut self, batch: Vec<u8>, pending: Vec<Pending>) {
        let lens: Vec<u32> = pending.iter().map(|p| p.len).collect();
        assert_eq!(lens.iter().map(|&l| l as usize).sum::<usize>(), batch.len());
        let mut batch = Some(batch);
        let mut record_start = 0;
        let mut byte_start = 0;
        while record_start < pending.len() {
            let plan = self.journal.plan(&lens[record_start..]);
            if let Some(segment) = plan.roll_to {
                let segment_bytes = self.shared.borrow().options.segment_bytes;
                if let Err(err) = self.storage.create_segment(segment, segment_bytes).await {
                    tracing::warn!(segment, error = %err, "cannot create spool segment");
                    fail(&pending[record_start..], &err);
                    return;
                }
                self.journal.rolled(segment);
                self.index.add_segment(segment);
                // The previous segment may hold nothing live any more.
                self.collect_garbage().await;
            }
            let record_end = record_start + plan.records;
            let byte_end = byte_start + plan.bytes as usize;
            let whole = record_start == 0 && record_end == pending.len();
            let (offset, data) = chunk_bytes(&plan, &mut batch, byte_start, byte_end, whole);
            check_records(&data, &plan, offset, &lens[record_start..record_end]);
            let started = Instant::now();
            let mut result = self.storage.write_at(data, offset).await;
            if result.is_ok() {
                result = self.storage.sync().await;
            }
            let sync_us = started.elapsed().as_micros() as u64;
            {
                let mut shared = self.shared.borrow_mut();
                shared.stats.syncs += 1;
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
            if completed || !self.removals.is_empty() {
                self.collect_garbage().await;
            }
            record_start = record_end;
            byte_start = byte_end;
        }
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
                } => {
                    self.index.message(p.id, plan.segment);
                    Some(BodyRef {
                        segment: plan.segment,
                        offset: offset + body_offset as u64,
                        len: body_len,
                    })
                }
                PendingKind::Note => {
                    self.index.note(p.id, plan.segment);
                    None
                }
                PendingKind::Complete => {
                    completed |= self.index.complete(p.id, plan.segment);
                    None
                }
            };
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

    /// Deletes every segment no live message needs, oldest first. A
    /// failed removal stops the pass; it and the newer ones are retried at
    /// the next pass (or decided anew by the next open).
    async fn collect_garbage(&mut self) {
        let dead = self.index.take_deletable(self.journal.current_segment());
        self.removals.extend(dead);
        self.removals.sort_unstable();
        self.removals.dedup();
        // Counted as gone from here; a failed removal counts them again.
        self.shared.borrow_mut().stats.segments = self.index.segment_count() as u32;
        let (removed, failure) = remove_in_order(&mut self.storage, &self.removals).await;
        self.removals.drain(..removed);
        if let Some(err) = failure {
            tracing::warn!(
                segment = self.removals[0],
                error = %err,
                "cannot delete spool segment; retried after the next sync",
            );
            self.shared.borrow_mut().stats.segments =
                (self.index.segment_count() + self.removals.len()) as u32;
        }
    }
}

/// Removes `segments` (ascending) one by one, syncing the directory after
/// each removal so that no removal becomes durable before an older one: a
/// newer dead segment may hold the complete records of messages in an
/// older one, and losing only the older removal at a power cut would bring
/// those messages back. Stops at the first failure. Returns how many were
/// removed, and the failure.
async fn remove_in_order<S: Storage>(
    storage: &mut S,
    segments: &[u64],
) -> (usize, Option<io::Error>) {
    debug_assert!(segments.windows(2).all(|w| w[0] < w[1]));
    if segments.is_empty() {
        return (0, None);
    }
    // A removal an earlier pass (or an earlier process, whose last
    // directory sync failed) made may still be pending: make it durable
    // before any newer one.
    if let Err(err) = storage.sync_dir().await {
        return (0, Some(err));
    }
    for (done, &segment) in segments.iter().enumerate() {
        let mut result = storage.remove_segment(segment).await;
        if result.is_ok() {
            result = storage.sync_dir().await;
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
fn check_records(data: &[u8], plan: &ChunkPlan, offset: u64, lens: &[u32]) {
    let mut at = (plan.offset - offset) as usize;
    for &len in lens {
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
