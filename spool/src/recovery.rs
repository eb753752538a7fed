//! Start-up recovery: reads every segment of a spool directory in order
//! and rebuilds the live set.
//! Owns: the rules for where a segment's valid records end (the first
//! torn, corrupt or zeroed record) and for which messages are live: a
//! message record makes its id live, a note joins a live id, a complete
//! ends it, and a moved record (compaction's copy) replaces whatever came
//! before for its id, notes included, or makes it live again when the
//! segment of the original is gone.
//! May call: `Storage::list_segments` / `read_segment`, `record`, `journal`.
//! Never: write or delete (the caller deletes what it is told is dead, so
//! this stays a pure function of the bytes on disk).

use std::collections::HashMap;
use std::io;

use crate::journal::{LiveIndex, Span};
use crate::record::{self, DecodeError, HeaderError, Record, SEGMENT_HEADER_BYTES};
use crate::storage::Storage;
use crate::{BodyRef, RecoveredMessage, Recovery, TornTail};

/// What recovery hands the spool: the report for the engine, the live
/// index the writer continues from, the first free segment number, the
/// segments to delete (oldest first) and where appends may continue.
pub struct Recovered {
    pub recovery: Recovery,
    pub index: LiveIndex,
    pub next_segment: u64,
    pub dead_segments: Vec<u64>,
    /// The newest segment and the end of its records, when its header is
    /// sound, its records end cleanly (a zeroed header, no cut) and it is
    /// not dead: appends may continue there, in space it already holds.
    pub tail: Option<(u64, u64)>,
}

pub fn recover<S: Storage>(storage: &S) -> io::Result<Recovered> {
    let segments = storage.list_segments()?;
    let mut index = LiveIndex::default();
    let mut live: HashMap<u64, RecoveredMessage> = HashMap::new();
    let mut recovery = Recovery::default();
    // Where the records of each segment that ends cleanly end.
    let mut clean_ends: HashMap<u64, u64> = HashMap::new();
    // Segment and offset of each message record seen.
    let mut spooled_at: HashMap<u64, (u64, usize)> = HashMap::new();
    for &segment in &segments {
        let bytes = storage.read_segment(segment)?;
        let bytes = bytes.as_ref();
        recovery.segments_read += 1;
        match record::decode_segment_header(bytes, segment) {
            Ok(()) => index.add_segment(segment),
            Err(HeaderError::Empty) => {
                index.add_segment(segment);
                continue;
            }
            Err(err) => {
                // A damaged header is a media fault, not a torn tail: the
                // segment stays on disk outside the live index, so GC never
                // deletes it, and it is reported at every start (its records
                // may be salvageable by hand).
                recovery.truncated.push(TornTail {
                    segment,
                    offset: 0,
                    reason: format!("{err}; segment kept on disk for inspection, not read"),
                });
                continue;
            }
        }
        let mut offset = SEGMENT_HEADER_BYTES;
        loop {
            let (record, used) = match record::decode(&bytes[offset..]) {
                Ok(decoded) => decoded,
                Err(DecodeError::End) => {
                    clean_ends.insert(segment, offset as u64);
                    break;
                }
                Err(err) => {
                    recovery.truncated.push(TornTail {
                        segment,
                        offset: offset as u64,
                        reason: err.to_string(),
                    });
                    break;
                }
            };
            recovery.records_read += 1;
            recovery.max_id = recovery.max_id.max(record.id());
            match record {
                Record::Message { id, envelope, body } => {
                    let body_offset = record.body_offset().expect("a message has a body");
                    index.message(id, segment);
                    spooled_at.insert(id, (segment, offset));
                    live.insert(
                        id,
                        RecoveredMessage {
                            id,
                            envelope: envelope.to_vec(),
                            body: BodyRef {
                                segment,
                                offset: (offset + body_offset) as u64,
                                len: body.len() as u32,
                            },
                            notes: Vec::new(),
                        },
                    );
                }
                Record::MessageFile {
                    id,
                    envelope,
                    body_len,
                    ..
                } => {
                    let Ok(len) = u32::try_from(body_len) else {
                        recovery.truncated.push(TornTail {
                            segment,
                            offset: offset as u64,
                            reason: format!(
                                "message {id} names a body of {body_len} bytes, over 4 GiB"
                            ),
                        });
                        break;
                    };
                    index.message(id, segment);
                    spooled_at.insert(id, (segment, offset));
                    live.insert(
                        id,
                        RecoveredMessage {
                            id,
                            envelope: envelope.to_vec(),
                            body: BodyRef::file(id, len),
                            notes: Vec::new(),
                        },
                    );
                }
                Record::Note { id, data } => {
                    if index.note(id, segment) {
                        live.get_mut(&id)
                            .expect("indexed")
                            .notes
                            .push(data.to_vec());
                    }
                }
                Record::Complete { id } => {
                    if index.complete(id, segment) {
                        live.remove(&id);
                    }
                }
                Record::Moved {
                    id,
                    envelope,
                    notes,
                    body,
                } => {
                    let body_offset = record.body_offset().expect("a moved record has a body");
                    index.moved(id, segment);
                    live.insert(
                        id,
                        RecoveredMessage {
                            id,
                            envelope: envelope.to_vec(),
                            body: BodyRef {
                                segment,
                                offset: (offset + body_offset) as u64,
                                len: body.len() as u32,
                            },
                            notes: record::notes_of(notes).map(<[u8]>::to_vec).collect(),
                        },
                    );
                }
                Record::MovedFile {
                    id,
                    envelope,
                    notes,
                    body_len,
                    ..
                } => {
                    let Ok(len) = u32::try_from(body_len) else {
                        recovery.truncated.push(TornTail {
                            segment,
                            offset: offset as u64,
                            reason: format!(
                                "moved message {id} names a body of {body_len} bytes, over 4 GiB"
                            ),
                        });
                        break;
                    };
                    // Like a moved record; the body stays in its file.
                    index.moved(id, segment);
                    live.insert(
                        id,
                        RecoveredMessage {
                            id,
                            envelope: envelope.to_vec(),
                            body: BodyRef::file(id, len),
                            notes: record::notes_of(notes).map(<[u8]>::to_vec).collect(),
                        },
                    );
                }
            }
            if !matches!(record, Record::Complete { .. }) {
                let span = Span {
                    segment,
                    offset: offset as u64,
                    len: used as u32,
                };
                index.locate(record.id(), span);
            }
            offset += used;
        }
    }
    assert_eq!(index.live_count(), live.len());
    let next_segment = match segments.last() {
        None => 0,
        Some(&last) => last.checked_add(1).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "segment numbers exhausted")
        })?,
    };
    let dead_segments = index.take_deletable(None);
    // The newest segment that stays (a dead or empty one newer than it is
    // deleted now; one with a damaged header is not in the index).
    let tail = index
        .newest_segment()
        .and_then(|segment| clean_ends.get(&segment).map(|&end| (segment, end)));
    recovery.messages = live.into_values().collect();
    // In the order they were spooled: where their message records sit.
    recovery
        .messages
        .sort_unstable_by_key(|m| spooled_at.get(&m.id).copied().unwrap_or_default());
    Ok(Recovered {
        recovery,
        index,
        next_segment,
        dead_segments,
        tail,
    })
}
