//! Pure bookkeeping of the spool: where the next batch goes (segment and
//! offset, roll-over, rewriting after a failed write), how much of a
//! segment each kind of record may use (the reserve that lets completions
//! through on a full disk) and which segments hold live messages (and so
//! may not be deleted).
//! Owns: the write cursor of the current segment, the reserve rules, the
//! live set index.
//! May call: nothing but std.
//! Never: I/O. The writer task asks it what to write where, does the I/O
//! through `Storage`, and reports back; a simulated storage drives the same
//! code.
//!
//! The reserve. Every segment is preallocated before records go to it,
//! and records never go past that reservation (`capacity`), so writing
//! into the current segment never needs new space. Of a segment's
//! capacity, message records leave free the complete reserve (one
//! `COMPLETE_RECORD_BYTES` per live message, at most a
//! `COMPLETE_RESERVE_DIVISOR`th of the segment) plus the note reserve (a
//! `NOTE_RESERVE_DIVISOR`th); notes leave free the complete reserve;
//! completes of live messages may use everything. So when the disk is full
//! and no new segment can be made, messages are refused but every live
//! message can still be completed, and completions free whole segments.

use std::collections::{BTreeMap, HashMap};

use crate::record::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// Bytes of a complete record (a header without payload).
pub const COMPLETE_RECORD_BYTES: u64 = RECORD_HEADER_BYTES as u64;
/// The complete reserve is at most 1/4 of a segment: with 64 MiB segments,
/// completes for 699,050 live messages. Past that many live messages a
/// full disk may refuse some completes until segments are freed.
pub const COMPLETE_RESERVE_DIVISOR: u64 = 4;
/// Notes (retry schedules, partial outcomes) may use 1/32 of a segment
/// that messages may not: 2 MiB of a 64 MiB segment.
pub const NOTE_RESERVE_DIVISOR: u64 = 32;
/// Granularity of a reduced segment reservation.
pub const RESERVE_ALIGN_BYTES: u64 = 4096;

const _: () = assert!(COMPLETE_RESERVE_DIVISOR >= 2 && NOTE_RESERVE_DIVISOR >= 2);
// Messages keep at least half of a segment: 1/c + 1/n < 1/2.
const _: () = assert!(
    2 * (COMPLETE_RESERVE_DIVISOR + NOTE_RESERVE_DIVISOR)
        < COMPLETE_RESERVE_DIVISOR * NOTE_RESERVE_DIVISOR
);

/// What a record may use of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A message record: leaves both reserves free, and adds one live
    /// message (one complete to reserve).
    Message,
    /// A note, or a complete of a message that is not live: leaves the
    /// complete reserve free.
    Note,
    /// A complete of a live message: uses the space reserved for it.
    Complete,
}

/// One record offered to `Journal::plan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Encoded bytes, header included.
    pub len: u32,
    pub class: Class,
}

/// The bytes a segment of `capacity` keeps for completes of `live` messages.
pub fn complete_reserve_bytes(capacity: u64, live: u64) -> u64 {
    live.saturating_mul(COMPLETE_RECORD_BYTES)
        .min(capacity / COMPLETE_RESERVE_DIVISOR)
}

/// The bytes a segment of `capacity` keeps for notes.
pub fn note_reserve_bytes(capacity: u64) -> u64 {
    capacity / NOTE_RESERVE_DIVISOR
}

/// Whether a record of `class` ending at `end` fits a segment of
/// `capacity` with `live` live messages before it.
fn fits(class: Class, end: u64, capacity: u64, live: u64) -> bool {
    match class {
        Class::Complete => end <= capacity,
        Class::Note => end.saturating_add(complete_reserve_bytes(capacity, live)) <= capacity,
        Class::Message => {
            end.saturating_add(complete_reserve_bytes(capacity, live + 1))
                .saturating_add(note_reserve_bytes(capacity))
                <= capacity
        }
    }
}

/// Where one group-commit write goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    pub segment: u64,
    /// File offset of the first record of the chunk.
    pub offset: u64,
    /// How many of the offered records go into this chunk (at least one).
    pub records: usize,
    /// Bytes of those records.
    pub bytes: u64,
    /// The segment header must be written in front of the records (at
    /// offset 0): true for the first chunk of a segment.
    pub with_header: bool,
    /// Zero bytes to write after the records so that leftovers of an
    /// earlier failed write can never be read as records.
    pub zero_fill: u64,
}

/// What to do with the records offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Write a prefix of them into the current segment.
    Write(ChunkPlan),
    /// The first does not fit the current segment (or there is none):
    /// create `segment` with a reservation of `bytes_min` bytes or more.
    Roll { segment: u64, bytes_min: u64 },
}

#[derive(Clone, Copy, Debug)]
struct Cursor {
    segment: u64,
    /// Bytes reserved for this segment; nothing is written past them.
    capacity: u64,
    /// End of the last record covered by a successful fdatasync. New
    /// records go here. Never above `dirty_bytes`.
    synced_bytes: u64,
    /// End of everything ever written to this segment, including writes
    /// that failed: bytes in synced_bytes..dirty_bytes are garbage to
    /// overwrite. Never above `capacity`.
    dirty_bytes: u64,
    /// End of the zeros written and synced ahead of the records (see
    /// `Journal::zero_ahead_bytes`): past `dirty_bytes`, the bytes below it
    /// are durable zeros in blocks the file system has already written.
    /// Never above `capacity`.
    zeroed_bytes: u64,
    /// A chunk with zeros ahead of its records failed: no more zeros
    /// ahead in this segment, so that a file system that cannot write them
    /// (ENOSPC inside the reservation) costs one failed batch, not every
    /// one after it.
    zero_ahead_failed: bool,
}

/// The write position and segment roll-over rules.
#[derive(Debug)]
pub struct Journal {
    segment_bytes: u64,
    cursor: Option<Cursor>,
    /// Number of the segment the next roll creates; above every segment
    /// number ever seen in the directory.
    next_segment: u64,
    /// Zero fill ahead of the records (0: none). A chunk whose records end
    /// past the zeros already written also writes zeros up to the next
    /// multiple of this after its records (within the reservation). The
    /// chunks after it then overwrite blocks that are already written,
    /// inside the file's size: their fdatasync writes the data and no
    /// metadata (no unwritten-extent conversion, no new file size, so no
    /// inode write). Recovery already ends a segment at its first zeroed
    /// record, so the zeros read as the clean end they are.
    zero_ahead_bytes: u64,
}

/// Largest `zero_ahead_bytes`: the zeros ride in a group commit's write.
pub const ZERO_AHEAD_BYTES_MAX: u64 = 1 << 20;

impl Journal {
    pub fn new(segment_bytes: u64, next_segment: u64) -> Journal {
        assert!(segment_bytes > SEGMENT_HEADER_BYTES as u64);
        Journal {
            segment_bytes,
            cursor: None,
            next_segment,
            zero_ahead_bytes: 0,
        }
    }

    /// Zero fill ahead of the records in steps of `bytes` (0: none); see
    /// the field.
    pub fn with_zero_ahead(mut self, bytes: u64) -> Journal {
        assert!(bytes <= ZERO_AHEAD_BYTES_MAX && bytes.is_multiple_of(RESERVE_ALIGN_BYTES));
        self.zero_ahead_bytes = bytes;
        self
    }

    /// Where the zeros of a chunk whose records end at `end` must end: past
    /// the garbage of failed writes, and past the next multiple of
    /// `zero_ahead_bytes` when the records leave the zeros written so far.
    fn zero_end(&self, cursor: &Cursor, end: u64) -> u64 {
        let mut zero_end = cursor.dirty_bytes.max(end);
        if self.zero_ahead_bytes > 0 && !cursor.zero_ahead_failed && end > cursor.zeroed_bytes {
            let ahead = (end + self.zero_ahead_bytes / 2).next_multiple_of(self.zero_ahead_bytes);
            zero_end = zero_end.max(ahead.min(cursor.capacity));
        }
        debug_assert!(zero_end <= cursor.capacity);
        zero_end
    }

    /// Records above this size can never be written: a message must fit
    /// a fresh full-size segment with its reserves.
    pub fn record_bytes_max(&self) -> u64 {
        let reserves = note_reserve_bytes(self.segment_bytes) + COMPLETE_RECORD_BYTES;
        (self.segment_bytes - SEGMENT_HEADER_BYTES as u64)
            .saturating_sub(reserves)
            .min(crate::record::RECORD_BYTES_MAX as u64)
    }

    pub fn current_segment(&self) -> Option<u64> {
        self.cursor.map(|c| c.segment)
    }

    /// Plans the next write for records (in order), with `live` messages
    /// live before them: as many as fit in the current segment, or a roll.
    pub fn plan(&self, slots: &[Slot], live: u64) -> Plan {
        assert!(!slots.is_empty());
        if let Some(cursor) = self.cursor {
            let with_header = cursor.synced_bytes == 0;
            let start = cursor.synced_bytes.max(SEGMENT_HEADER_BYTES as u64);
            let mut end = start;
            let mut live = live;
            let mut records = 0;
            for slot in slots {
                let record_end = end + slot.len as u64;
                if !fits(slot.class, record_end, cursor.capacity, live) {
                    break;
                }
                end = record_end;
                records += 1;
                match slot.class {
                    Class::Message => live += 1,
                    Class::Complete => live = live.saturating_sub(1),
                    Class::Note => {}
                }
            }
            if records > 0 {
                return Plan::Write(ChunkPlan {
                    segment: cursor.segment,
                    offset: start,
                    records,
                    bytes: end - start,
                    with_header,
                    zero_fill: self.zero_end(&cursor, end) - end,
                });
            }
        }
        Plan::Roll {
            segment: self.next_segment,
            bytes_min: self.bytes_min(SEGMENT_HEADER_BYTES as u64, slots[0], live),
        }
    }

    /// The smallest reservation (a multiple of RESERVE_ALIGN_BYTES) in
    /// which a record `slot` fits after `used` bytes.
    fn bytes_min(&self, used: u64, slot: Slot, live: u64) -> u64 {
        let mut bytes = (used + slot.len as u64).next_multiple_of(RESERVE_ALIGN_BYTES);
        while !fits(slot.class, used + slot.len as u64, bytes, live) {
            bytes += RESERVE_ALIGN_BYTES;
        }
        bytes
    }

    /// Reservations to ask for, largest first: the segment size, then
    /// halves of it down to `bytes_min`, then `bytes_min` itself. Empty
    /// when `bytes_min` is above the segment size.
    pub fn reserve_sizes(&self, bytes_min: u64) -> Vec<u64> {
        let mut sizes = Vec::new();
        let mut size = self.segment_bytes;
        while size >= bytes_min && size >= RESERVE_ALIGN_BYTES {
            sizes.push(size);
            size /= 2;
        }
        if bytes_min <= self.segment_bytes && sizes.last() != Some(&bytes_min) {
            sizes.push(bytes_min);
        }
        sizes
    }

    /// The reservation to ask for when resuming a segment whose records
    /// end at `end` and whose file is `len` bytes long, with `live` live
    /// messages: room for a complete of each (within the limits of the
    /// reserve) and one small note, but no more than a segment (a full one
    /// still takes some completes), and never less than the file.
    pub fn resume_bytes_min(&self, end: u64, len: u64, live: u64) -> u64 {
        let note = Slot {
            len: COMPLETE_RECORD_BYTES as u32,
            class: Class::Note,
        };
        self.bytes_min(end, note, live)
            .min(self.segment_bytes)
            .max(len.next_multiple_of(RESERVE_ALIGN_BYTES))
    }

    /// The segment `segment` was created with `capacity` bytes reserved:
    /// it becomes the current one. Returns the segment it replaces.
    pub fn rolled(&mut self, segment: u64, capacity: u64) -> Option<u64> {
        assert_eq!(segment, self.next_segment);
        assert!(
            segment < crate::BODY_FILE_SEGMENT,
            "segment numbers exhausted"
        );
        assert!(capacity > SEGMENT_HEADER_BYTES as u64 && capacity <= self.segment_bytes);
        self.next_segment += 1;
        let previous = self.current_segment();
        self.cursor = Some(Cursor {
            segment,
            capacity,
            synced_bytes: 0,
            dirty_bytes: 0,
            zeroed_bytes: 0,
            zero_ahead_failed: false,
        });
        previous
    }

    /// After a restart: appends continue in `segment` (below
    /// `next_segment`), whose valid records end at `end`, whose file is
    /// `len` bytes long (garbage past `end` is zeroed by the first write)
    /// and for which `capacity` bytes are reserved.
    pub fn resume(&mut self, segment: u64, end: u64, len: u64, capacity: u64) {
        assert!(self.cursor.is_none());
        assert!(segment < self.next_segment);
        assert!(end >= SEGMENT_HEADER_BYTES as u64 && end <= len && len <= capacity);
        assert!(capacity <= self.segment_bytes);
        self.cursor = Some(Cursor {
            segment,
            capacity,
            synced_bytes: end,
            dirty_bytes: len,
            // Past `end` nothing is known to be zero: the first chunk
            // zero-fills up to `len` at least.
            zeroed_bytes: end,
            zero_ahead_failed: false,
        });
    }

    /// The current segment is closed for good (it holds nothing live and
    /// is about to be deleted): the next write rolls.
    pub fn retire(&mut self) -> Option<u64> {
        self.cursor.take().map(|c| c.segment)
    }

    /// Garbage of failed writes past the last synced record, as (offset,
    /// bytes), to zero before the segment is closed so that the next open
    /// finds a clean end there and may resume the segment.
    pub fn dirty_tail(&self) -> Option<(u64, u64)> {
        let cursor = self.cursor?;
        let start = cursor.synced_bytes.max(SEGMENT_HEADER_BYTES as u64);
        (cursor.synced_bytes > 0 && cursor.dirty_bytes > start)
            .then(|| (start, cursor.dirty_bytes - start))
    }

    /// The dirty tail was zeroed and synced.
    pub fn tail_cleaned(&mut self) {
        let cursor = self.cursor.as_mut().expect("a segment");
        cursor.dirty_bytes = cursor.synced_bytes;
    }

    /// The chunk was written and synced.
    pub fn committed(&mut self, plan: &ChunkPlan) {
        let cursor = self.cursor.as_mut().expect("a chunk needs a segment");
        assert_eq!(cursor.segment, plan.segment);
        assert!(plan.offset >= cursor.synced_bytes);
        // The zero fill reached the old dirty end, so everything past the
        // new synced end reads as zeros now.
        assert!(plan.offset + plan.bytes + plan.zero_fill >= cursor.dirty_bytes);
        cursor.synced_bytes = plan.offset + plan.bytes;
        cursor.dirty_bytes = cursor.synced_bytes;
        cursor.zeroed_bytes = cursor
            .zeroed_bytes
            .max(plan.offset + plan.bytes + plan.zero_fill);
        assert!(cursor.synced_bytes <= cursor.capacity);
        assert!(cursor.zeroed_bytes <= cursor.capacity);
    }

    /// Writing or syncing the chunk failed: its records are garbage the
    /// next chunk overwrites. Its zeros are not: those up to the old dirty
    /// end lie inside garbage already counted, and those past it (zeros
    /// ahead) went over bytes that read as zeros already (never written
    /// since the segment was made or resumed, or zeros written before), so
    /// whatever part of them landed changes nothing.
    pub fn failed(&mut self, plan: &ChunkPlan) {
        if let Some(cursor) = self.cursor.as_mut() {
            if cursor.segment == plan.segment {
                let attempted_end = plan.offset + plan.bytes + plan.zero_fill;
                assert!(attempted_end <= cursor.capacity);
                let garbage_end = cursor.dirty_bytes.max(plan.offset + plan.bytes);
                if attempted_end > garbage_end {
                    cursor.zero_ahead_failed = true;
                }
                cursor.dirty_bytes = garbage_end;
            }
        }
    }
}

/// Where one record sits: `len` bytes at `offset` of segment `segment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

#[derive(Debug, Default)]
struct SegmentState {
    /// Live messages with a record (message or note) in this segment.
    pins: u32,
    /// Bytes of the records of live messages in this segment (their
    /// message or moved record and their notes since): what compaction
    /// would copy out of it.
    live_bytes: u64,
    /// Complete records in this segment whose message record sits in an
    /// older segment that still exists: deleting this one first would
    /// bring those messages back at recovery.
    guards: u32,
    /// Newer segments holding a guard for this one, once per guard.
    guarded: Vec<u64>,
}

#[derive(Debug)]
struct LiveMessage {
    /// Segments holding a message or moved record of this id, oldest
    /// first, each once: a complete must outlive every one of them (see
    /// `complete`). More than one only after compaction moved it.
    message_segments: Vec<u64>,
    /// Segments holding this message's records, each once.
    pinned: Vec<u64>,
    /// Its current message (or moved) record, then its notes since, in
    /// the order written: what compaction copies (see `locate`).
    spans: Vec<Span>,
}

/// Which segments exist and which live messages keep them.
#[derive(Debug, Default)]
pub struct LiveIndex {
    segments: BTreeMap<u64, SegmentState>,
    live: HashMap<u64, LiveMessage>,
}

/// Records pinned per message: beyond this a message's notes stop adding
/// entries (the segment list is scanned linearly).
const PINNED_SEGMENTS_MAX: usize = 1024;
/// Records located per message (its message record and notes); a message
/// with more is never moved by compaction, so its segments stay.
pub const SPANS_PER_MESSAGE_MAX: usize = 256;

impl LiveIndex {
    pub fn add_segment(&mut self, segment: u64) {
        self.segments.entry(segment).or_default();
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn newest_segment(&self) -> Option<u64> {
        self.segments.keys().next_back().copied()
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    pub fn is_live(&self, id: u64) -> bool {
        self.live.contains_key(&id)
    }

    /// Whether `segment` exists and neither a live message nor a guard
    /// keeps it.
    pub fn is_free(&self, segment: u64) -> bool {
        self.segments
            .get(&segment)
            .is_some_and(|state| state.pins == 0 && state.guards == 0)
    }

    fn pin(&mut self, segment: u64) {
        self.segments
            .get_mut(&segment)
            .expect("records only go to existing segments")
            .pins += 1;
    }

    fn unpin(&mut self, segment: u64) {
        let state = self.segments.get_mut(&segment).expect("pinned segment");
        assert!(state.pins > 0);
        state.pins -= 1;
    }

    /// A message record for `id` is durable in `segment`. A second message
    /// record for a live id (a copy made forward) replaces the first.
    pub fn message(&mut self, id: u64, segment: u64) {
        if let Some(old) = self.live.remove(&id) {
            self.release(&old);
        }
        self.pin(segment);
        self.live.insert(
            id,
            LiveMessage {
                message_segments: vec![segment],
                pinned: vec![segment],
                spans: Vec::new(),
            },
        );
    }

    /// A moved record for `id` is durable in `segment`: it supersedes
    /// every earlier record of the id. The segments of earlier message
    /// records are remembered (a complete must outlive them too). An id
    /// that is not live had its older records deleted after the copy was
    /// durable (at recovery only: the writer never moves a dead id), so it
    /// is live again from here.
    pub fn moved(&mut self, id: u64, segment: u64) {
        let mut message_segments = Vec::new();
        if let Some(old) = self.live.remove(&id) {
            self.release(&old);
            message_segments = old.message_segments;
            message_segments.retain(|s| self.segments.contains_key(s));
        }
        // Records are read and written in segment order, so every earlier
        // copy sits in this segment or an older one (two copies in one
        // segment only where the pieces of failed writes landed).
        assert!(message_segments.iter().all(|&s| s <= segment));
        if message_segments.last() != Some(&segment) {
            message_segments.push(segment);
        }
        self.pin(segment);
        self.live.insert(
            id,
            LiveMessage {
                message_segments,
                pinned: vec![segment],
                spans: Vec::new(),
            },
        );
    }

    /// The record of `span` (the message, moved or note record the caller
    /// just reported for `id`) is where compaction will find it. Ignored
    /// for an id that is not live.
    pub fn locate(&mut self, id: u64, span: Span) {
        let Some(message) = self.live.get_mut(&id) else {
            return;
        };
        if message.spans.len() >= SPANS_PER_MESSAGE_MAX {
            // A message with this many notes is not moved (see
            // `movable_spans`): it keeps its segments.
            message.spans.push(span);
            message.spans.truncate(SPANS_PER_MESSAGE_MAX + 1);
            return;
        }
        message.spans.push(span);
        if let Some(state) = self.segments.get_mut(&span.segment) {
            state.live_bytes += span.len as u64;
        }
    }

    /// Unpins what a message that stops being live (or is superseded)
    /// held.
    fn release(&mut self, message: &LiveMessage) {
        for s in &message.pinned {
            self.unpin(*s);
        }
        for span in message.spans.iter().take(SPANS_PER_MESSAGE_MAX) {
            if let Some(state) = self.segments.get_mut(&span.segment) {
                assert!(state.live_bytes >= span.len as u64);
                state.live_bytes -= span.len as u64;
            }
        }
    }

    /// The records to copy to move `id`: its message record, then its
    /// notes. None when it is not live, is not located, or has more notes
    /// than a move carries.
    pub fn movable_spans(&self, id: u64) -> Option<&[Span]> {
        let message = self.live.get(&id)?;
        if message.spans.is_empty() || message.spans.len() > SPANS_PER_MESSAGE_MAX {
            return None;
        }
        Some(&message.spans)
    }

    /// Whether live message `id` has a record in `segment`.
    pub fn pins(&self, id: u64, segment: u64) -> bool {
        self.live
            .get(&id)
            .is_some_and(|message| message.pinned.contains(&segment))
    }

    /// The oldest segment other than `current` that live messages keep
    /// but whose live records take no more than `live_bytes_max` bytes:
    /// the next to compact.
    pub fn compaction_candidate(
        &self,
        current: Option<u64>,
        live_bytes_max: u64,
        skip: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        self.segments
            .iter()
            .find(|(&segment, state)| {
                Some(segment) != current
                    && state.pins > 0
                    && state.live_bytes <= live_bytes_max
                    && !skip(segment)
            })
            .map(|(&segment, _)| segment)
    }

    /// Live messages with a record in `segment`, ascending. Scans the live
    /// set: called once per segment compacted.
    pub fn live_in(&self, segment: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, message)| message.pinned.contains(&segment))
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Bytes of live records in `segment` (0 for one that does not exist).
    pub fn live_bytes(&self, segment: u64) -> u64 {
        self.segments.get(&segment).map_or(0, |s| s.live_bytes)
    }

    /// A note for `id` is durable in `segment`. Returns false (and changes
    /// nothing) for an id that is not live.
    pub fn note(&mut self, id: u64, segment: u64) -> bool {
        let Some(message) = self.live.get_mut(&id) else {
            return false;
        };
        if !message.pinned.contains(&segment) && message.pinned.len() < PINNED_SEGMENTS_MAX {
            message.pinned.push(segment);
            self.segments
                .get_mut(&segment)
                .expect("records only go to existing segments")
                .pins += 1;
        }
        true
    }

    /// A complete record for `id` is durable in `segment`. Returns false
    /// for an id that is not live.
    pub fn complete(&mut self, id: u64, segment: u64) -> bool {
        let Some(message) = self.live.remove(&id) else {
            return false;
        };
        self.release(&message);
        // Every segment that still holds a message or moved record of the
        // id would bring it back if it outlived this complete.
        for &m in &message.message_segments {
            if m != segment && self.segments.contains_key(&m) {
                self.segments
                    .get_mut(&segment)
                    .expect("records only go to existing segments")
                    .guards += 1;
                self.segments
                    .get_mut(&m)
                    .expect("checked")
                    .guarded
                    .push(segment);
            }
        }
        true
    }

    /// Removes and returns, oldest first, every segment other than
    /// `current` that no live message needs and no complete record guards.
    /// Deleting them in the returned order is safe: a guard always points
    /// from a newer segment to an older one, so one ascending pass releases
    /// every cascade.
    pub fn take_deletable(&mut self, current: Option<u64>) -> Vec<u64> {
        let candidates: Vec<u64> = self.segments.keys().copied().collect();
        let mut deleted = Vec::new();
        for segment in candidates {
            if Some(segment) == current {
                continue;
            }
            let state = &self.segments[&segment];
            if state.pins != 0 || state.guards != 0 {
                continue;
            }
            let state = self.segments.remove(&segment).expect("listed");
            for newer in state.guarded {
                assert!(newer > segment);
                if let Some(newer_state) = self.segments.get_mut(&newer) {
                    assert!(newer_state.guards > 0);
                    newer_state.guards -= 1;
                }
            }
            deleted.push(segment);
        }
        deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: u64 = SEGMENT_HEADER_BYTES as u64;

    fn messages(lens: &[u32]) -> Vec<Slot> {
        lens.iter()
            .map(|&len| Slot {
                len,
                class: Class::Message,
            })
            .collect()
    }

    fn write(plan: Plan) -> ChunkPlan {
        match plan {
            Plan::Write(chunk) => chunk,
            Plan::Roll { .. } => panic!("expected a write, got {plan:?}"),
        }
    }

    /// A journal with segment `segment` current, `capacity` reserved.
    fn rolled(segment_bytes: u64, segment: u64, capacity: u64) -> Journal {
        let mut journal = Journal::new(segment_bytes, segment);
        journal.rolled(segment, capacity);
        journal
    }

    #[test]
    fn first_chunk_rolls_to_a_fresh_segment_with_a_header() {
        let journal = Journal::new(8192, 5);
        let Plan::Roll { segment, bytes_min } = journal.plan(&messages(&[100, 100]), 0) else {
            panic!("no segment yet");
        };
        assert_eq!(segment, 5);
        assert_eq!(bytes_min, 4096);
        let mut journal = journal;
        journal.rolled(5, 8192);
        let plan = write(journal.plan(&messages(&[100, 100]), 0));
        assert_eq!(plan.offset, HEADER);
        assert_eq!(plan.records, 2);
        assert!(plan.with_header);
    }

    #[test]
    fn records_that_do_not_fit_go_to_the_next_segment() {
        let mut journal = rolled(8192, 0, 8192);
        // 8192 - 32 header - 256 note reserve - 24 per live message.
        let plan = write(journal.plan(&messages(&[3000, 3000, 3000]), 0));
        assert_eq!((plan.records, plan.bytes), (2, 6000));
        journal.committed(&plan);
        let Plan::Roll { segment, .. } = journal.plan(&messages(&[3000]), 2) else {
            panic!("the segment is full");
        };
        assert_eq!(segment, 1);
    }

    #[test]
    fn messages_leave_the_reserves_free_and_completes_may_use_them() {
        // Goal: on a segment that messages filled, notes still fit until
        // only the complete reserve is left, and a complete of every live
        // message still fits after that.
        let capacity = 8192;
        let mut journal = rolled(capacity, 0, capacity);
        let mut live = 0;
        while let Plan::Write(plan) = journal.plan(&messages(&[500]), live) {
            journal.committed(&plan);
            live += 1;
        }
        assert_eq!(live, 15);
        let note = Slot {
            len: 40,
            class: Class::Note,
        };
        let mut notes = 0;
        while let Plan::Write(plan) = journal.plan(&[note], live) {
            journal.committed(&plan);
            notes += 1;
        }
        assert!(notes >= note_reserve_bytes(capacity) / 40, "{notes}");
        let complete = Slot {
            len: COMPLETE_RECORD_BYTES as u32,
            class: Class::Complete,
        };
        while live > 0 {
            let plan = write(journal.plan(&[complete], live));
            journal.committed(&plan);
            live -= 1;
        }
    }

    #[test]
    fn reservations_halve_down_to_the_least_that_fits() {
        let journal = Journal::new(64 * 1024, 0);
        assert_eq!(
            journal.reserve_sizes(10_000),
            vec![65536, 32768, 16384, 10_000]
        );
        assert_eq!(journal.reserve_sizes(16384), vec![65536, 32768, 16384]);
        assert!(journal.reserve_sizes(70_000).is_empty());
        // A message needs room for itself and both reserves.
        let bytes_min = journal.bytes_min(HEADER, messages(&[5000])[0], 0);
        assert_eq!(bytes_min % RESERVE_ALIGN_BYTES, 0);
        assert!(fits(Class::Message, HEADER + 5000, bytes_min, 0));
        assert!(!fits(
            Class::Message,
            HEADER + 5000,
            bytes_min - RESERVE_ALIGN_BYTES,
            0
        ));
    }

    #[test]
    fn a_resumed_segment_continues_after_its_records_and_zeroes_the_rest() {
        let mut journal = Journal::new(8192, 4);
        journal.resume(3, 1000, 1500, 8192);
        let plan = write(journal.plan(&messages(&[100]), 0));
        assert_eq!((plan.segment, plan.offset), (3, 1000));
        assert!(!plan.with_header);
        assert_eq!(plan.zero_fill, 400);
        journal.committed(&plan);
        assert_eq!(journal.retire(), Some(3));
        let Plan::Roll { segment, .. } = journal.plan(&messages(&[100]), 1) else {
            panic!("retired");
        };
        assert_eq!(segment, 4);
    }

    #[test]
    fn a_failed_chunk_is_rewritten_from_the_last_synced_offset_and_zero_filled() {
        let mut journal = rolled(10_000, 0, 10_000);
        let first = write(journal.plan(&messages(&[100]), 0));
        journal.committed(&first);
        let failed = write(journal.plan(&messages(&[500, 500]), 1));
        assert_eq!(failed.offset, HEADER + 100);
        assert!(!failed.with_header);
        journal.failed(&failed);
        let retry = write(journal.plan(&messages(&[200]), 1));
        assert_eq!(retry.offset, HEADER + 100);
        assert_eq!(retry.zero_fill, 800);
        journal.committed(&retry);
        // The zero fill covered the garbage; nothing more to clear.
        let next = write(journal.plan(&messages(&[10]), 2));
        assert_eq!(next.offset, HEADER + 300);
        assert_eq!(next.zero_fill, 0);
    }

    #[test]
    fn zeros_are_written_ahead_in_steps_and_only_when_the_records_leave_them() {
        // Goal: with a zero-ahead step, a chunk whose records end past the
        // zeros written so far zero-fills to a step boundary at least half
        // a step beyond them, never past the reservation; chunks inside the
        // zeros write none.
        let mut journal = rolled(16384, 0, 12288).with_zero_ahead(4096);
        let first = write(journal.plan(&messages(&[100]), 0));
        assert!(first.with_header);
        assert_eq!(first.offset + first.bytes + first.zero_fill, 4096);
        journal.committed(&first);
        let inside = write(journal.plan(&messages(&[100]), 1));
        assert_eq!((inside.offset, inside.zero_fill), (HEADER + 100, 0));
        journal.committed(&inside);
        // Crosses 4096: zeros up to 8192 (4232 + 2048 rounded up).
        let crossing = write(journal.plan(&messages(&[4000]), 2));
        assert_eq!(crossing.offset + crossing.bytes, 4232);
        assert_eq!(crossing.offset + crossing.bytes + crossing.zero_fill, 8192);
        journal.committed(&crossing);
        // Inside the zeros again: no fill.
        let inside = write(journal.plan(&messages(&[2000, 1000]), 3));
        assert_eq!((inside.offset + inside.bytes, inside.zero_fill), (7232, 0));
        journal.committed(&inside);
        // Near the end of the reservation the fill stops at the capacity
        // (10232 + 2048 rounds up to 12288, which is the capacity).
        let last = write(journal.plan(&messages(&[3000]), 5));
        assert_eq!(last.offset + last.bytes, 10232);
        assert_eq!(last.offset + last.bytes + last.zero_fill, 12288);
        journal.committed(&last);
        let after = write(journal.plan(&messages(&[10]), 6));
        assert_eq!(after.zero_fill, 0);
        assert!(after.offset + after.bytes <= 12288);
    }

    #[test]
    fn a_failed_chunk_with_zeros_ahead_leaves_its_records_as_garbage_and_stops_the_zeros() {
        // Goal: the garbage a failed chunk may leave is its records (its
        // zeros fell on zeros), the retry zeroes exactly that, and no zeros
        // ahead are written again in the segment: a file system that
        // refuses them (ENOSPC) fails one batch, not every batch after it.
        let mut journal = rolled(16384, 0, 16384).with_zero_ahead(4096);
        let first = write(journal.plan(&messages(&[100]), 0));
        assert_eq!(first.offset + first.bytes + first.zero_fill, 4096);
        journal.committed(&first);
        let crossing = write(journal.plan(&messages(&[4000]), 1));
        assert_eq!(crossing.offset + crossing.bytes, HEADER + 4100);
        assert_eq!(crossing.offset + crossing.bytes + crossing.zero_fill, 8192);
        journal.failed(&crossing);
        let retry = write(journal.plan(&messages(&[50]), 1));
        assert_eq!(retry.offset, HEADER + 100);
        assert_eq!(retry.offset + retry.bytes + retry.zero_fill, HEADER + 4100);
        // Failing again changes nothing: the same garbage end.
        journal.failed(&retry);
        let again = write(journal.plan(&messages(&[50]), 1));
        assert_eq!(again.offset + again.bytes + again.zero_fill, HEADER + 4100);
        journal.committed(&again);
        // Past the garbage and the old zeros: records only.
        let past = write(journal.plan(&messages(&[6000]), 2));
        assert_eq!(past.zero_fill, 0);
        journal.committed(&past);
        // A new segment writes zeros ahead again.
        journal.rolled(1, 16384);
        let fresh = write(journal.plan(&messages(&[100]), 3));
        assert_eq!(fresh.offset + fresh.bytes + fresh.zero_fill, 4096);
    }

    #[test]
    fn a_resumed_segment_with_zero_ahead_zeroes_its_old_tail_and_more() {
        let mut journal = Journal::new(8192, 4).with_zero_ahead(4096);
        journal.resume(3, 1000, 1500, 8192);
        let plan = write(journal.plan(&messages(&[100]), 0));
        assert_eq!(plan.offset, 1000);
        assert_eq!(plan.offset + plan.bytes + plan.zero_fill, 4096);
        journal.committed(&plan);
        let next = write(journal.plan(&messages(&[100]), 1));
        assert_eq!((next.offset, next.zero_fill), (1100, 0));
    }

    #[test]
    fn a_failed_first_chunk_writes_the_header_again() {
        let mut journal = rolled(10_000, 3, 10_000);
        let plan = write(journal.plan(&messages(&[100]), 0));
        journal.failed(&plan);
        let retry = write(journal.plan(&messages(&[100]), 0));
        assert!(retry.with_header);
        assert_eq!(retry.offset, HEADER);
    }

    #[test]
    fn a_segment_is_deletable_once_no_live_message_needs_it() {
        let mut index = LiveIndex::default();
        index.add_segment(1);
        index.add_segment(2);
        index.message(10, 1);
        index.message(11, 1);
        assert!(index.take_deletable(Some(2)).is_empty());
        index.complete(10, 2);
        assert!(index.take_deletable(Some(2)).is_empty());
        index.complete(11, 2);
        assert_eq!(index.take_deletable(Some(2)), vec![1]);
    }

    #[test]
    fn a_note_in_a_newer_segment_keeps_that_segment_while_the_message_lives() {
        let mut index = LiveIndex::default();
        for s in 1..=3 {
            index.add_segment(s);
        }
        index.message(10, 1);
        assert!(index.note(10, 2));
        assert!(!index.note(99, 2));
        assert!(index.take_deletable(Some(3)).is_empty());
        index.complete(10, 3);
        assert_eq!(index.take_deletable(Some(3)), vec![1, 2]);
    }

    #[test]
    fn a_complete_of_a_moved_message_outlives_every_segment_holding_a_copy() {
        // Goal: after compaction moved message 10 from segment 1 to 2 and
        // it completed in 3, segment 3 stays while segment 1 (still kept
        // by message 11) holds the original: deleting 3 first would bring
        // 10 back at recovery. Method: drive the index, check deletables.
        let mut index = LiveIndex::default();
        for s in 1..=4 {
            index.add_segment(s);
        }
        index.message(10, 1);
        index.message(11, 1);
        index.moved(10, 2);
        assert!(!index.pins(10, 1) && index.pins(10, 2));
        index.complete(10, 3);
        // Segment 2 (the copy) is free and goes; 3 still guards 1.
        assert_eq!(index.take_deletable(Some(4)), vec![2]);
        index.complete(11, 4);
        assert_eq!(index.take_deletable(Some(4)), vec![1, 3]);
    }

    #[test]
    fn live_bytes_follow_located_records_through_moves_and_completes() {
        let mut index = LiveIndex::default();
        for s in 1..=2 {
            index.add_segment(s);
        }
        let span = |segment, offset, len| Span {
            segment,
            offset,
            len,
        };
        index.message(10, 1);
        index.locate(10, span(1, 32, 500));
        assert!(index.note(10, 1));
        index.locate(10, span(1, 532, 40));
        index.message(11, 1);
        index.locate(11, span(1, 572, 300));
        assert_eq!(index.live_bytes(1), 840);
        assert_eq!(index.compaction_candidate(Some(2), 839, |_| false), None);
        assert_eq!(index.compaction_candidate(Some(2), 840, |_| false), Some(1));
        assert_eq!(index.live_in(1), vec![10, 11]);
        assert_eq!(index.movable_spans(10).map(<[Span]>::len), Some(2));
        index.moved(10, 2);
        index.locate(10, span(2, 32, 560));
        assert_eq!((index.live_bytes(1), index.live_bytes(2)), (300, 560));
        index.complete(11, 2);
        index.complete(10, 2);
        assert_eq!((index.live_bytes(1), index.live_bytes(2)), (0, 0));
    }

    #[test]
    fn a_complete_record_outlives_the_segment_of_its_message() {
        let mut index = LiveIndex::default();
        for s in 1..=3 {
            index.add_segment(s);
        }
        index.message(10, 1);
        index.message(11, 1);
        index.complete(10, 2);
        // Segment 2 holds nothing live, but deleting it would resurrect 10.
        assert!(index.take_deletable(Some(3)).is_empty());
        index.complete(11, 3);
        assert_eq!(index.take_deletable(Some(3)), vec![1, 2]);
    }
}
