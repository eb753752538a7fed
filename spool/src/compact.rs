//! Compaction: a sealed segment kept alive by a few long-lived messages (a
//! domain deferred for days) has those messages copied forward into the
//! current segment, so it can be deleted and the spool's size tracks its
//! live data, not its oldest message.
//! Owns: the choice of segment to compact, the building of moved records,
//! the body relocation table readers consult, the pacing task.
//! May call: the writer's `Storage` reads, `journal::LiveIndex` (read-only
//! queries), `record`, the writer's `write_batch` and `collect_garbage`.
//! Never: write a moved record for an id that is not live at the moment
//! it is written (the writer runs the whole step, so no complete can slip
//! in between the check and the write); delete anything itself (the GC
//! task does, once the index says a segment is free).
//!
//! One step (`Writer::compact`), run by the writer between group commits:
//! pick the oldest sealed segment whose live records take at most
//! `live_percent_max` of a segment, read the records of each live message
//! it holds (its message or moved record and its notes since, which may
//! sit in other segments), encode one moved record per message (envelope,
//! notes, body), write and fdatasync them like a batch, then hand the
//! segments left without live messages to the GC. Crash safety follows
//! from the recovery rule: a moved record supersedes every earlier record
//! of its id, and it never follows a complete of its id in the log, so
//! at any crash point (before the write, between write and sync, between
//! sync and delete, in the middle of deletes) recovery finds exactly one
//! live copy. A complete of a moved message guards (see `LiveIndex::
//! complete`) every segment that still holds a copy, so a complete is
//! never deleted before an older copy that would bring the message back.
//!
//! Bounded I/O: a step copies at most its budget of bytes (one message at
//! least), and `Spool::compaction_task` paces steps at
//! `bytes_per_second`, never in the path of a message.
//!
//! Bodies in files of their own (`bodies`, a message-file record): such
//! a message is copied forward as a moved-file record (envelope, notes,
//! body length and CRC32C); its body file is never read nor copied, its
//! `BodyRef::file` stays valid, and its id stays in the writer's
//! `body_files`, so the file goes when the message completes. Recovery
//! of a moved-file record gives `BodyRef::file` again, and the sweep of
//! orphan body files at open keeps its file.
//!
//! Body references: the engine holds a `BodyRef` per message for delivery.
//! When a message moves, its old reference is mapped to the new one in a
//! per-directory table (`relocated`) that `BodyReader` consults when the
//! old segment is gone; an entry goes when its message completes.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Waker;
use std::time::Duration;

use crate::journal::Span;
use crate::record::{self, Record};
use crate::storage::Storage;
use crate::{BodyRef, SpoolError};

/// Default pace of compaction, in bytes copied per second: a small share
/// of a disk's bandwidth (a deferred domain's messages trickle forward
/// rather than compete with reception).
pub const COMPACTION_BYTES_PER_SECOND_DEFAULT: u64 = 4 * 1024 * 1024;
/// Default threshold: a sealed segment whose live records take at most
/// this percentage of a segment is compacted.
pub const COMPACTION_LIVE_PERCENT_DEFAULT: u32 = 25;
/// How often the compaction task runs a step when the pace allows.
pub const COMPACTION_PERIOD: Duration = Duration::from_millis(100);
/// Bytes one step may copy at most, whatever the pace: bounds the time a
/// step holds the writer (one write + fdatasync of this size).
pub const COMPACTION_STEP_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Reads of a relocated body that may find its newest copy moved again
/// and deleted before they open it.
pub(crate) const RELOCATION_ATTEMPTS_MAX: usize = 3;

const _: () = assert!(COMPACTION_LIVE_PERCENT_DEFAULT <= 100);
const _: () = assert!(COMPACTION_BYTES_PER_SECOND_DEFAULT > 0);

/// How the compaction task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionOptions {
    /// Bytes copied per second, on average, at most. 0 turns compaction off.
    pub bytes_per_second: u64,
    /// A sealed segment whose live records take at most this percentage of
    /// a segment (0..=100) is compacted.
    pub live_percent_max: u32,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            bytes_per_second: COMPACTION_BYTES_PER_SECOND_DEFAULT,
            live_percent_max: COMPACTION_LIVE_PERCENT_DEFAULT,
        }
    }
}

/// What one compaction step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Bytes of moved records made durable.
    pub bytes_copied: u64,
    /// Messages copied forward.
    pub messages_moved: u64,
    /// Segments whose every live message was moved (each then deleted by
    /// the GC unless a guard still holds it).
    pub segments_compacted: u64,
    /// Messages that cannot be moved (too many notes, or a moved record
    /// above the record limit): their segments are left alone.
    pub messages_skipped: u64,
    /// The step did nothing: the last roll failed for lack of space, and
    /// copies would take space completions need.
    pub disk_full: bool,
}

/// Steps asked of the writer and not yet run; past this many a caller
/// gets an empty report at once (the steps queued do its work).
pub(crate) const COMPACTION_REQUESTS_MAX: usize = 4;

/// The answer to one step asked for.
#[derive(Default)]
pub(crate) struct Answer {
    result: Option<Result<CompactReport, SpoolError>>,
    waker: Option<Waker>,
}

/// A step asked of the writer: budget in bytes, threshold in percent.
pub(crate) struct Request {
    budget_bytes: u64,
    live_percent_max: u32,
    answer: Rc<RefCell<Answer>>,
}

impl Request {
    pub(crate) fn resolve(self, result: Result<CompactReport, SpoolError>) {
        let mut answer = self.answer.borrow_mut();
        answer.result = Some(result);
        if let Some(waker) = answer.waker.take() {
            waker.wake();
        }
    }
}

/// The segment being compacted and the messages of it not yet looked at.
struct Target {
    segment: u64,
    ids: VecDeque<u64>,
    /// Messages found not movable: the segment stays.
    skipped: u64,
}

/// The writer's compaction state.
pub(crate) struct Compactor {
    target: Option<Target>,
    /// Segments left alone because a message in them cannot be moved;
    /// dropped once the segment is gone.
    stuck: BTreeSet<u64>,
    /// Old body references of each moved message that is still live.
    moved_refs: HashMap<u64, Vec<BodyRef>>,
    relocations: Arc<Mutex<HashMap<BodyRef, BodyRef>>>,
}

type Relocations = Arc<Mutex<HashMap<BodyRef, BodyRef>>>;

/// The relocation table of spool directory `dir` (one per directory in
/// the process, like the reader's removal counter; locked when a message
/// moves or completes after a move, and by a reader only when the segment
/// it wants is gone).
fn relocations(dir: &Path) -> Relocations {
    static TABLES: OnceLock<Mutex<HashMap<PathBuf, Relocations>>> = OnceLock::new();
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut tables = TABLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tables.entry(dir).or_default().clone()
}

fn lock(table: &Relocations) -> std::sync::MutexGuard<'_, HashMap<BodyRef, BodyRef>> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the body `body` of spool directory `dir` sits now, when
/// compaction moved it (and its message is not complete).
pub fn relocated(dir: &Path, body: &BodyRef) -> Option<BodyRef> {
    lock(&relocations(dir)).get(body).copied()
}

impl Compactor {
    /// The compactor of a spool just opened in `dir`: references of an
    /// earlier spool of the directory mean nothing now (recovery handed
    /// out fresh ones), so its table starts empty.
    pub(crate) fn new(dir: &Path) -> Compactor {
        let relocations = relocations(dir);
        lock(&relocations).clear();
        Compactor {
            target: None,
            stuck: BTreeSet::new(),
            moved_refs: HashMap::new(),
            relocations,
        }
    }

    /// Message `id` moved: its body at `old` is at `new` now, and so is
    /// every body reference that pointed at `old`.
    fn relocate(&mut self, id: u64, old: BodyRef, new: BodyRef) {
        let olds = self.moved_refs.entry(id).or_default();
        olds.push(old);
        let mut table = lock(&self.relocations);
        for o in olds.iter() {
            table.insert(*o, new);
        }
    }

    /// Message `id` is complete: nobody reads its body any more.
    pub(crate) fn forget(&mut self, id: u64) {
        if let Some(olds) = self.moved_refs.remove(&id) {
            let mut table = lock(&self.relocations);
            for o in olds {
                table.remove(&o);
            }
        }
    }
}

/// One moved record about to be written, and where its body was.
struct Move {
    id: u64,
    old_body: BodyRef,
    record: Vec<u8>,
    body_offset: u32,
    body_len: u32,
    /// The body is in a file of its own (`BodyRef::file`): the record is a
    /// moved-file one, the body stays where it is and nothing relocates.
    in_file: bool,
}

/// Where a message's body is, as its first record says.
enum Body<'a> {
    Inline(&'a [u8]),
    File { len: u64, crc32c: u32 },
}

/// Builds the moved record of a message from its records' bytes (its
/// message or moved record, then its notes). None when the bytes are not
/// what the index says (a programmer error upstream, reported by the
/// caller as a skip rather than a crash: the message stays where it is).
/// A message whose body is in a file of its own (message-file or
/// moved-file record) gets a moved-file record: the body file is neither
/// read nor copied, only the record naming it moves.
fn build_move(id: u64, spans: &[Span], records: &[Vec<u8>]) -> Option<Move> {
    assert_eq!(spans.len(), records.len());
    let (first, used) = record::decode(&records[0]).ok()?;
    if used != records[0].len() || first.id() != id {
        return None;
    }
    let mut notes = Vec::new();
    let (envelope, body) = match first {
        Record::Message { envelope, body, .. } => (envelope, Body::Inline(body)),
        Record::MessageFile {
            envelope,
            body_len,
            body_crc32c,
            ..
        } => (
            envelope,
            Body::File {
                len: body_len,
                crc32c: body_crc32c,
            },
        ),
        Record::Moved {
            envelope,
            notes: earlier,
            body,
            ..
        } => {
            for note in record::notes_of(earlier) {
                record::encode_note(note, &mut notes);
            }
            (envelope, Body::Inline(body))
        }
        Record::MovedFile {
            envelope,
            notes: earlier,
            body_len,
            body_crc32c,
            ..
        } => {
            for note in record::notes_of(earlier) {
                record::encode_note(note, &mut notes);
            }
            (
                envelope,
                Body::File {
                    len: body_len,
                    crc32c: body_crc32c,
                },
            )
        }
        _ => return None,
    };
    let old_body = match body {
        Body::Inline(body) => BodyRef {
            segment: spans[0].segment,
            offset: spans[0].offset + first.body_offset().expect("message kinds") as u64,
            len: body.len() as u32,
        },
        // Recovery refuses a body file of 4 GiB or more.
        Body::File { len, .. } => BodyRef::file(id, u32::try_from(len).ok()?),
    };
    for bytes in &records[1..] {
        match record::decode(bytes).ok()? {
            (Record::Note { id: note_id, data }, used) if note_id == id && used == bytes.len() => {
                record::encode_note(data, &mut notes)
            }
            _ => return None,
        }
    }
    let moved = match body {
        Body::Inline(body) => Record::Moved {
            id,
            envelope,
            notes: &notes,
            body,
        },
        Body::File { len, crc32c } => Record::MovedFile {
            id,
            envelope,
            notes: &notes,
            body_len: len,
            body_crc32c: crc32c,
        },
    };
    if moved.encoded_len() > record::RECORD_BYTES_MAX {
        return None;
    }
    // A moved-file record has no body bytes: its offset is unused.
    let body_offset = moved.body_offset().unwrap_or(0) as u32;
    let mut encoded = Vec::with_capacity(moved.encoded_len());
    record::encode(&moved, &mut encoded);
    Some(Move {
        id,
        old_body,
        record: encoded,
        body_offset,
        body_len: old_body.len,
        in_file: old_body.file_id().is_some(),
    })
}

impl<S: Storage> super::Writer<S> {
    /// Runs one compaction step if one was asked for, and answers it.
    pub(crate) async fn compact_if_asked(&mut self) {
        let Some(request) = self.shared.borrow_mut().compaction.pop_front() else {
            return;
        };
        let result = self
            .compact(request.budget_bytes, request.live_percent_max)
            .await;
        request.resolve(result);
    }

    /// One step: moves live messages out of the segments worth
    /// compacting, up to `budget_bytes` of moved records (at least one
    /// message when there is work).
    async fn compact(
        &mut self,
        budget_bytes: u64,
        live_percent_max: u32,
    ) -> Result<CompactReport, SpoolError> {
        assert!(live_percent_max <= 100);
        let mut report = CompactReport::default();
        if self.roll_blocked {
            // The disk is full: completions free space; copies would take it.
            report.disk_full = true;
            return Ok(report);
        }
        // The segment the copies go to and those made during this step
        // (full of them) are not compacted by it.
        let Some(newest) = self.index.newest_segment() else {
            return Ok(report);
        };
        let first_new = self.journal.current_segment().unwrap_or(newest + 1);
        let segment_bytes = self.shared.borrow().options.segment_bytes;
        let live_bytes_max = segment_bytes * live_percent_max as u64 / 100;
        let record_bytes_max = self.shared.borrow().record_bytes_max;
        while report.bytes_copied < budget_bytes {
            if self.compactor.target.is_none() && !self.choose_target(live_bytes_max, first_new) {
                break;
            }
            let budget_left = budget_bytes - report.bytes_copied;
            // One message at least per step, however large.
            let over_budget_ok = report.messages_moved == 0;
            let moves = self
                .next_moves(budget_left, over_budget_ok, record_bytes_max, &mut report)
                .await;
            let result = match moves {
                Ok(None) => {
                    self.finish_target(&mut report);
                    Ok(())
                }
                Ok(Some(moves)) if moves.is_empty() => break,
                Ok(Some(moves)) => self.write_moves(moves, &mut report).await,
                Err(err) => Err(err),
            };
            if let Err(err) = result {
                // What was moved is durable and reported; the failure
                // recurs (or not) at the next step.
                if report.messages_moved == 0 {
                    return Err(err);
                }
                break;
            }
        }
        self.collect_garbage().await;
        Ok(report)
    }

    /// Picks the oldest segment worth compacting. False when there is none.
    fn choose_target(&mut self, live_bytes_max: u64, first_new: u64) -> bool {
        let current = self.journal.current_segment();
        let compactor = &mut self.compactor;
        compactor
            .stuck
            .retain(|&segment| self.index.live_bytes(segment) > 0);
        let stuck = &compactor.stuck;
        let candidate = self
            .index
            .compaction_candidate(current, live_bytes_max, |segment| {
                segment >= first_new || stuck.contains(&segment)
            });
        let Some(segment) = candidate else {
            return false;
        };
        compactor.target = Some(Target {
            segment,
            ids: self.index.live_in(segment).into(),
            skipped: 0,
        });
        true
    }

    /// The target's messages are all looked at.
    fn finish_target(&mut self, report: &mut CompactReport) {
        let target = self.compactor.target.take().expect("a target");
        if target.skipped > 0 || self.index.live_bytes(target.segment) > 0 {
            self.compactor.stuck.insert(target.segment);
        } else {
            report.segments_compacted += 1;
        }
    }

    /// Reads and encodes the next messages of the target, up to
    /// `budget_left` bytes (the first one beyond it when
    /// `over_budget_ok`). None once the target has no message left.
    async fn next_moves(
        &mut self,
        budget_left: u64,
        over_budget_ok: bool,
        record_bytes_max: u64,
        report: &mut CompactReport,
    ) -> Result<Option<Vec<Move>>, SpoolError> {
        let mut moves: Vec<Move> = Vec::new();
        let mut bytes = 0u64;
        loop {
            let target = self.compactor.target.as_mut().expect("a target");
            let Some(&id) = target.ids.front() else {
                if moves.is_empty() {
                    return Ok(None);
                }
                break;
            };
            if !self.index.pins(id, target.segment) {
                // Completed or moved since the target was chosen.
                target.ids.pop_front();
                continue;
            }
            let Some(spans) = self.index.movable_spans(id) else {
                target.ids.pop_front();
                target.skipped += 1;
                report.messages_skipped += 1;
                continue;
            };
            let spans = spans.to_vec();
            let records = match self.read_spans(&spans).await {
                Ok(records) => records,
                // Write what was read; the failed read is tried again by
                // the next step (the message is still first in line).
                Err(_) if !moves.is_empty() => break,
                Err(err) => return Err(err),
            };
            let target = self.compactor.target.as_mut().expect("a target");
            let built = build_move(id, &spans, &records)
                .filter(|m| m.record.len() as u64 <= record_bytes_max);
            let Some(built) = built else {
                tracing::warn!(
                    segment = target.segment,
                    id,
                    "spool compaction cannot move a message (too large with its notes, \
                     or its records do not read back as indexed); its segment stays \
                     until it completes"
                );
                target.ids.pop_front();
                target.skipped += 1;
                report.messages_skipped += 1;
                continue;
            };
            let len = built.record.len() as u64;
            if (!moves.is_empty() || !over_budget_ok) && bytes + len > budget_left {
                break;
            }
            target.ids.pop_front();
            bytes += len;
            moves.push(built);
            if bytes >= budget_left {
                break;
            }
        }
        Ok(Some(moves))
    }

    /// The bytes of each of `spans`.
    async fn read_spans(&self, spans: &[Span]) -> Result<Vec<Vec<u8>>, SpoolError> {
        let mut records = Vec::with_capacity(spans.len());
        for span in spans {
            let bytes = self
                .storage
                .read_span(span.segment, span.offset, span.len as usize)
                .await
                .map_err(SpoolError::from_io)?;
            records.push(bytes);
        }
        Ok(records)
    }

    /// Writes and syncs the moved records as one batch and points the old
    /// body references at the copies.
    async fn write_moves(
        &mut self,
        moves: Vec<Move>,
        report: &mut CompactReport,
    ) -> Result<(), SpoolError> {
        let mut batch = Vec::with_capacity(moves.iter().map(|m| m.record.len()).sum());
        let mut pending = Vec::with_capacity(moves.len());
        for m in &moves {
            assert!(
                self.index.is_live(m.id),
                "compaction moves live messages only"
            );
            batch.extend_from_slice(&m.record);
            pending.push(super::Pending::moved(
                m.id,
                m.record.len() as u32,
                m.body_offset,
                m.body_len,
                m.in_file,
            ));
        }
        let waiters: Vec<_> = pending.iter().map(|p| p.waiter.clone()).collect();
        self.write_batch(batch, pending).await;
        for (m, waiter) in moves.into_iter().zip(waiters) {
            let result = waiter
                .borrow_mut()
                .result
                .take()
                .expect("write_batch resolves all");
            match result {
                Ok(Some(new_body)) => {
                    assert_eq!(new_body.len, m.old_body.len);
                    report.bytes_copied += m.record.len() as u64;
                    report.messages_moved += 1;
                    if m.in_file {
                        // Its body file stays: every reference still holds.
                        assert_eq!(new_body, m.old_body);
                    } else {
                        self.compactor.relocate(m.id, m.old_body, new_body);
                    }
                }
                Ok(None) => unreachable!("a moved record yields a body reference"),
                Err(err) => {
                    // Not durable: the message stays where it was. The
                    // target is looked at again from the start next time.
                    self.compactor.target = None;
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}

/// The shared part of `Spool::compact`: asks the writer for a step and
/// waits for its report.
pub(super) async fn ask_for_step(
    shared: &Rc<RefCell<super::Shared>>,
    budget_bytes: u64,
    live_percent_max: u32,
) -> Result<CompactReport, SpoolError> {
    let answer = Rc::new(RefCell::new(Answer::default()));
    {
        let mut shared = shared.borrow_mut();
        if shared.closing || shared.writer_done {
            return Err(SpoolError::Closed);
        }
        if shared.compaction.len() >= COMPACTION_REQUESTS_MAX {
            return Ok(CompactReport::default());
        }
        shared.compaction.push_back(Request {
            budget_bytes,
            live_percent_max,
            answer: answer.clone(),
        });
        if let Some(waker) = shared.writer_waker.take() {
            waker.wake();
        }
    }
    super::PollFn(|cx: &mut std::task::Context<'_>| {
        let mut answer = answer.borrow_mut();
        match answer.result.take() {
            Some(result) => std::task::Poll::Ready(result),
            None => {
                answer.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    })
    .await
}

/// The pacing loop of `Spool::compaction_task`: a step per period, its
/// budget what the pace allows since the last one, until the spool closes
/// or is dropped.
pub(super) async fn pace(spool: Weak<super::Handle>, options: CompactionOptions) {
    if options.bytes_per_second == 0 {
        return;
    }
    let period_budget = (options.bytes_per_second * COMPACTION_PERIOD.as_millis() as u64 / 1000)
        .clamp(1, COMPACTION_STEP_BYTES_MAX);
    loop {
        glommio::timer::sleep(COMPACTION_PERIOD).await;
        let Some(handle) = spool.upgrade() else {
            return;
        };
        let result = ask_for_step(&handle.shared, period_budget, options.live_percent_max).await;
        drop(handle);
        match result {
            Ok(report) => {
                if report.segments_compacted > 0 {
                    tracing::debug!(?report, "spool compaction step");
                }
                // A step that copied more than a period's worth (one large
                // message) waits it off, so the average stays at the pace.
                let owed_ms = report.bytes_copied.saturating_sub(period_budget) * 1000
                    / options.bytes_per_second;
                if owed_ms > 0 {
                    glommio::timer::sleep(Duration::from_millis(owed_ms)).await;
                }
            }
            Err(SpoolError::Closed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "spool compaction step failed; retried later");
                glommio::timer::sleep(COMPACTION_PERIOD * 10).await;
            }
        }
    }
}
