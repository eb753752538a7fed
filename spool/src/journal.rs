//! Pure bookkeeping of the spool: where the next batch goes (segment and
//! offset, roll-over, rewriting after a failed write) and which segments
//! hold live messages (and so may not be deleted).
//! Owns: the write cursor of the current segment, the live set index.
//! May call: nothing but std.
//! Never: I/O. The writer task asks it what to write where, does the I/O
//! through `Storage`, and reports back; a simulated storage drives the same
//! code.

use std::collections::{BTreeMap, HashMap};

use crate::record::SEGMENT_HEADER_BYTES;

/// Where one group-commit write goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Create this segment (and make it the current one) before writing.
    pub roll_to: Option<u64>,
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

#[derive(Clone, Copy, Debug)]
struct Cursor {
    segment: u64,
    /// End of the last record covered by a successful fdatasync. New
    /// records go here. Never above `dirty_bytes`.
    synced_bytes: u64,
    /// End of everything ever written to this segment, including writes
    /// that failed: bytes in synced_bytes..dirty_bytes are garbage to
    /// overwrite.
    dirty_bytes: u64,
}

/// The write position and segment roll-over rules.
#[derive(Debug)]
pub struct Journal {
    segment_bytes: u64,
    cursor: Option<Cursor>,
    /// Number of the segment the next roll creates; above every segment
    /// number ever seen in the directory.
    next_segment: u64,
}

impl Journal {
    pub fn new(segment_bytes: u64, next_segment: u64) -> Journal {
        assert!(segment_bytes > SEGMENT_HEADER_BYTES as u64);
        Journal {
            segment_bytes,
            cursor: None,
            next_segment,
        }
    }

    /// Records above this size can never be written.
    pub fn record_bytes_max(&self) -> u64 {
        (self.segment_bytes - SEGMENT_HEADER_BYTES as u64)
            .min(crate::record::RECORD_BYTES_MAX as u64)
    }

    pub fn current_segment(&self) -> Option<u64> {
        self.cursor.map(|c| c.segment)
    }

    /// Plans the next write for records of the given lengths (in order):
    /// as many as fit in the current segment, or a roll to a fresh one.
    pub fn plan(&self, lens: &[u32]) -> ChunkPlan {
        assert!(!lens.is_empty());
        let fit = |start: u64| -> (usize, u64) {
            let mut end = start;
            let mut count = 0;
            for &len in lens {
                if end + len as u64 > self.segment_bytes {
                    break;
                }
                end += len as u64;
                count += 1;
            }
            (count, end - start)
        };
        if let Some(cursor) = self.cursor {
            let with_header = cursor.synced_bytes == 0;
            let start = cursor.synced_bytes.max(SEGMENT_HEADER_BYTES as u64);
            let (records, bytes) = fit(start);
            if records > 0 {
                return ChunkPlan {
                    roll_to: None,
                    segment: cursor.segment,
                    offset: start,
                    records,
                    bytes,
                    with_header,
                    zero_fill: cursor.dirty_bytes.saturating_sub(start + bytes),
                };
            }
        }
        let (records, bytes) = fit(SEGMENT_HEADER_BYTES as u64);
        assert!(records > 0, "record of {} bytes over the limit", lens[0]);
        ChunkPlan {
            roll_to: Some(self.next_segment),
            segment: self.next_segment,
            offset: SEGMENT_HEADER_BYTES as u64,
            records,
            bytes,
            with_header: true,
            zero_fill: 0,
        }
    }

    /// The segment `segment` was created: it becomes the current one.
    /// Returns the segment it replaces.
    pub fn rolled(&mut self, segment: u64) -> Option<u64> {
        assert_eq!(segment, self.next_segment);
        self.next_segment += 1;
        let previous = self.current_segment();
        self.cursor = Some(Cursor {
            segment,
            synced_bytes: 0,
            dirty_bytes: 0,
        });
        previous
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
        assert!(cursor.synced_bytes <= self.segment_bytes);
    }

    /// Writing or syncing the chunk failed: its bytes (up to
    /// `attempted_end`) are garbage the next chunk overwrites.
    pub fn failed(&mut self, plan: &ChunkPlan) {
        if let Some(cursor) = self.cursor.as_mut() {
            if cursor.segment == plan.segment {
                let attempted_end = plan.offset + plan.bytes + plan.zero_fill;
                cursor.dirty_bytes = cursor.dirty_bytes.max(attempted_end);
            }
        }
    }
}

#[derive(Debug, Default)]
struct SegmentState {
    /// Live messages with a record (message or note) in this segment.
    pins: u32,
    /// Complete records in this segment whose message record sits in an
    /// older segment that still exists: deleting this one first would
    /// bring those messages back at recovery.
    guards: u32,
    /// Newer segments holding a guard for this one, once per guard.
    guarded: Vec<u64>,
}

#[derive(Debug)]
struct LiveMessage {
    message_segment: u64,
    /// Segments holding this message's records, each once.
    pinned: Vec<u64>,
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

impl LiveIndex {
    pub fn add_segment(&mut self, segment: u64) {
        self.segments.entry(segment).or_default();
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    pub fn is_live(&self, id: u64) -> bool {
        self.live.contains_key(&id)
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
            for s in old.pinned {
                self.unpin(s);
            }
        }
        self.pin(segment);
        self.live.insert(
            id,
            LiveMessage {
                message_segment: segment,
                pinned: vec![segment],
            },
        );
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
        for s in &message.pinned {
            self.unpin(*s);
        }
        let m = message.message_segment;
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

    #[test]
    fn first_chunk_rolls_to_a_fresh_segment_with_a_header() {
        let journal = Journal::new(1000, 5);
        let plan = journal.plan(&[100, 100]);
        assert_eq!(plan.roll_to, Some(5));
        assert_eq!(plan.offset, HEADER);
        assert_eq!(plan.records, 2);
        assert!(plan.with_header);
    }

    #[test]
    fn records_that_do_not_fit_go_to_the_next_segment() {
        let mut journal = Journal::new(1000, 0);
        let plan = journal.plan(&[400, 400, 400]);
        assert_eq!((plan.records, plan.bytes), (2, 800));
        journal.rolled(0);
        journal.committed(&plan);
        let plan = journal.plan(&[400]);
        assert_eq!(plan.roll_to, Some(1));
        assert_eq!(plan.segment, 1);
    }

    #[test]
    fn a_failed_chunk_is_rewritten_from_the_last_synced_offset_and_zero_filled() {
        let mut journal = Journal::new(10_000, 0);
        let first = journal.plan(&[100]);
        journal.rolled(0);
        journal.committed(&first);
        let failed = journal.plan(&[500, 500]);
        assert_eq!(failed.offset, HEADER + 100);
        assert!(!failed.with_header);
        journal.failed(&failed);
        let retry = journal.plan(&[200]);
        assert_eq!(retry.offset, HEADER + 100);
        assert_eq!(retry.zero_fill, 800);
        journal.committed(&retry);
        // The zero fill covered the garbage; nothing more to clear.
        let next = journal.plan(&[10]);
        assert_eq!(next.offset, HEADER + 300);
        assert_eq!(next.zero_fill, 0);
    }

    #[test]
    fn a_failed_first_chunk_writes_the_header_again() {
        let mut journal = Journal::new(10_000, 3);
        let plan = journal.plan(&[100]);
        journal.rolled(3);
        journal.failed(&plan);
        let retry = journal.plan(&[100]);
        assert_eq!(retry.roll_to, None);
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
