//! Record and segment-header codec: bytes in, typed records out, no I/O.
//! Owns: the on-disk layout of a record and of a segment header, their
//! limits and checksums.
//! May call: `crc32c`.
//! Never: files, the journal, the live set. Decoding never panics on any
//! input; it returns a typed `DecodeError` that recovery turns into a cut.
//!
//! Record layout (little endian), `RECORD_HEADER_BYTES` then the payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | CRC32C over bytes 4..end of record |
//! | 4 | 2 | magic `RECORD_MAGIC` (never zero: a zero magic marks the end) |
//! | 6 | 1 | format version `RECORD_VERSION` |
//! | 7 | 1 | kind (1 message, 2 note, 3 complete, 4 moved, 5 message with its body in a file, 6 moved with its body in a file) |
//! | 8 | 4 | payload length in bytes |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | message id |
//!
//! Payload: message = envelope length (u32) + envelope + body; note = the
//! note bytes; complete = empty; moved = envelope length (u32), envelope,
//! notes length (u32), notes, body, where notes is the message's notes
//! in the order written, each a length (u32) then its bytes. A moved record
//! is a live message copied forward by compaction (see `compact`): it
//! supersedes every earlier record of its id, and it is never written for
//! an id that is not live, so no complete precedes it in the log. Message
//! with its body in a file (a large body streamed while DATA arrived, see
//! `bodies`) = envelope length (u32) + envelope + body length (u64) +
//! CRC32C of the body (u32). Moved with its body in a file = a moved
//! record of such a message: envelope length (u32), envelope, notes length
//! (u32), notes, body length (u64), CRC32C of the body (u32); the body
//! stays in its file, which compaction never reads nor copies.
//!
//! Segment header (`SEGMENT_HEADER_BYTES`): magic `SEGMENT_MAGIC` (8),
//! version (u32), reserved (u32), segment number (u64), reserved (u32),
//! CRC32C over bytes 0..28 (u32).

use std::fmt;

/// Bytes of the fixed record header.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Never zero, so that a zeroed (preallocated, never written) tail reads
/// as the end of the segment.
pub const RECORD_MAGIC: u16 = 0xEC5A;
pub const RECORD_VERSION: u8 = 1;
/// Bytes of the segment file header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
pub const SEGMENT_MAGIC: [u8; 8] = *b"ECSPOOL\0";
pub const SEGMENT_VERSION: u32 = 1;
/// Largest record, header included, the codec accepts. A spool with
/// smaller segments has a smaller limit (segment bytes minus the segment
/// header); this one is the ceiling for every spool, and it keeps record
/// lengths and body lengths inside a u32.
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024 - SEGMENT_HEADER_BYTES;
/// Bytes of the envelope-length prefix in a message payload.
const ENVELOPE_LENGTH_BYTES: usize = 4;

const _: () = assert!(RECORD_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(RECORD_HEADER_BYTES + ENVELOPE_LENGTH_BYTES <= RECORD_BYTES_MAX);
const _: () = assert!(RECORD_MAGIC != 0);

const KIND_MESSAGE: u8 = 1;
const KIND_NOTE: u8 = 2;
const KIND_COMPLETE: u8 = 3;
const KIND_MOVED: u8 = 4;
/// Bytes of a length prefix in a moved record (notes length, each note's
/// length).
const NOTE_LENGTH_BYTES: usize = 4;
const KIND_MESSAGE_FILE: u8 = 5;
const KIND_MOVED_FILE: u8 = 6;
/// Bytes after the envelope in a message-file payload (after the notes in
/// a moved-file one): body length (u64) and body CRC32C (u32).
const BODY_FILE_FIELDS_BYTES: usize = 12;

/// One decoded record, borrowing from the buffer it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Message {
        id: u64,
        envelope: &'a [u8],
        body: &'a [u8],
    },
    Note {
        id: u64,
        data: &'a [u8],
    },
    Complete {
        id: u64,
    },
    /// A message whose body sits in its own file (`bodies::body_file_name`),
    /// written and synced before this record.
    MessageFile {
        id: u64,
        envelope: &'a [u8],
        body_len: u64,
        body_crc32c: u32,
    },
    /// A live message copied forward: its envelope, its notes (encoded by
    /// `encode_notes`, checked by `decode`) and its body.
    Moved {
        id: u64,
        envelope: &'a [u8],
        notes: &'a [u8],
        body: &'a [u8],
    },
    /// A live message whose body sits in its own file, copied forward by
    /// compaction: like `Moved`, but the body stays in its file.
    MovedFile {
        id: u64,
        envelope: &'a [u8],
        notes: &'a [u8],
        body_len: u64,
        body_crc32c: u32,
    },
}

impl Record<'_> {
    pub fn id(&self) -> u64 {
        match *self {
            Record::Message { id, .. }
            | Record::Note { id, .. }
            | Record::Complete { id }
            | Record::MessageFile { id, .. }
            | Record::Moved { id, .. }
            | Record::MovedFile { id, .. } => id,
        }
    }

    /// Bytes this record takes when encoded, header included. Saturates
    /// instead of overflowing, so a caller can compare it with a limit.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES.saturating_add(self.payload_len())
    }

    fn payload_len(&self) -> usize {
        match *self {
            Record::Message { envelope, body, .. } => ENVELOPE_LENGTH_BYTES
                .saturating_add(envelope.len())
                .saturating_add(body.len()),
            Record::Note { data, .. } => data.len(),
            Record::Complete { .. } => 0,
            Record::MessageFile { envelope, .. } => ENVELOPE_LENGTH_BYTES
                .saturating_add(envelope.len())
                .saturating_add(BODY_FILE_FIELDS_BYTES),
            Record::Moved {
                envelope,
                notes,
                body,
                ..
            } => (ENVELOPE_LENGTH_BYTES + NOTE_LENGTH_BYTES)
                .saturating_add(envelope.len())
                .saturating_add(notes.len())
                .saturating_add(body.len()),
            Record::MovedFile {
                envelope, notes, ..
            } => (ENVELOPE_LENGTH_BYTES + NOTE_LENGTH_BYTES + BODY_FILE_FIELDS_BYTES)
                .saturating_add(envelope.len())
                .saturating_add(notes.len()),
        }
    }

    /// Offset of the body bytes from the start of the record, for messages.
    pub fn body_offset(&self) -> Option<usize> {
        match *self {
            Record::Message { envelope, .. } => {
                Some(RECORD_HEADER_BYTES + ENVELOPE_LENGTH_BYTES + envelope.len())
            }
            Record::Moved {
                envelope, notes, ..
            } => Some(
                RECORD_HEADER_BYTES
                    + ENVELOPE_LENGTH_BYTES
                    + envelope.len()
                    + NOTE_LENGTH_BYTES
                    + notes.len(),
            ),
            _ => None,
        }
    }
}

/// Why a buffer does not start with a valid record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header is zero (or the buffer is empty): the clean end of the
    /// written part of a segment.
    #[error("end of records (zeroed header)")]
    End,
    #[error("torn record: needs {needed} bytes, {available} present")]
    Truncated { needed: usize, available: usize },
    #[error("bad record magic {found:#06x}")]
    BadMagic { found: u16 },
    #[error("unsupported record version {found}")]
    UnsupportedVersion { found: u8 },
    #[error("unknown record kind {found}")]
    UnknownKind { found: u8 },
    #[error("record of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("malformed record payload: {reason}")]
    BadPayload { reason: &'static str },
}

/// Appends the encoding of `record` to `out`.
///
/// The caller checks the record against its limit first; passing a record
/// above `RECORD_BYTES_MAX` is a programmer error.
pub fn encode(record: &Record<'_>, out: &mut Vec<u8>) {
    let total = record.encoded_len();
    assert!(
        total <= RECORD_BYTES_MAX,
        "record of {total} bytes over limit"
    );
    let start = out.len();
    out.reserve(total);
    let (kind, id) = match *record {
        Record::Message { id, .. } => (KIND_MESSAGE, id),
        Record::Note { id, .. } => (KIND_NOTE, id),
        Record::Complete { id } => (KIND_COMPLETE, id),
        Record::MessageFile { id, .. } => (KIND_MESSAGE_FILE, id),
        Record::Moved { id, .. } => (KIND_MOVED, id),
        Record::MovedFile { id, .. } => (KIND_MOVED_FILE, id),
    };
    out.extend_from_slice(&[0u8; 4]); // CRC, filled below.
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.push(RECORD_VERSION);
    out.push(kind);
    out.extend_from_slice(&(record.payload_len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    match *record {
        Record::Message { envelope, body, .. } => {
            out.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
            out.extend_from_slice(envelope);
            out.extend_from_slice(body);
        }
        Record::Note { data, .. } => out.extend_from_slice(data),
        Record::Complete { .. } => {}
        Record::MessageFile {
            envelope,
            body_len,
            body_crc32c,
            ..
        } => {
            out.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
            out.extend_from_slice(envelope);
            out.extend_from_slice(&body_len.to_le_bytes());
            out.extend_from_slice(&body_crc32c.to_le_bytes());
        }
        Record::Moved {
            envelope,
            notes,
            body,
            ..
        } => {
            out.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
            out.extend_from_slice(envelope);
            out.extend_from_slice(&(notes.len() as u32).to_le_bytes());
            out.extend_from_slice(notes);
            out.extend_from_slice(body);
        }
        Record::MovedFile {
            envelope,
            notes,
            body_len,
            body_crc32c,
            ..
        } => {
            out.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
            out.extend_from_slice(envelope);
            out.extend_from_slice(&(notes.len() as u32).to_le_bytes());
            out.extend_from_slice(notes);
            out.extend_from_slice(&body_len.to_le_bytes());
            out.extend_from_slice(&body_crc32c.to_le_bytes());
        }
    }
    assert_eq!(out.len() - start, total);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Decodes the record at the start of `buf`; returns it and the bytes it
/// used. Never panics.
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    if buf.len() < 6 {
        return if buf.iter().all(|&b| b == 0) {
            Err(DecodeError::End)
        } else {
            Err(DecodeError::Truncated {
                needed: RECORD_HEADER_BYTES,
                available: buf.len(),
            })
        };
    }
    let magic = read_u16(buf, 4);
    if magic == 0 {
        return Err(DecodeError::End);
    }
    if magic != RECORD_MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    if buf.len() < RECORD_HEADER_BYTES {
        return Err(DecodeError::Truncated {
            needed: RECORD_HEADER_BYTES,
            available: buf.len(),
        });
    }
    let payload_len = read_u32(buf, 8) as usize;
    let total = RECORD_HEADER_BYTES + payload_len;
    if total > RECORD_BYTES_MAX {
        return Err(DecodeError::TooLarge {
            bytes: total,
            limit: RECORD_BYTES_MAX,
        });
    }
    if buf.len() < total {
        return Err(DecodeError::Truncated {
            needed: total,
            available: buf.len(),
        });
    }
    let stored = read_u32(buf, 0);
    let computed = crc32c::crc32c(&buf[4..total]);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let version = buf[6];
    if version != RECORD_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    if read_u32(buf, 12) != 0 {
        return Err(DecodeError::BadPayload {
            reason: "reserved header bytes are not zero",
        });
    }
    let id = read_u64(buf, 16);
    let payload = &buf[RECORD_HEADER_BYTES..total];
    let record = match buf[7] {
        KIND_MESSAGE => {
            if payload.len() < ENVELOPE_LENGTH_BYTES {
                return Err(DecodeError::BadPayload {
                    reason: "message payload shorter than its envelope length",
                });
            }
            let envelope_len = read_u32(payload, 0) as usize;
            let rest = &payload[ENVELOPE_LENGTH_BYTES..];
            if envelope_len > rest.len() {
                return Err(DecodeError::BadPayload {
                    reason: "envelope length beyond the record",
                });
            }
            let (envelope, body) = rest.split_at(envelope_len);
            Record::Message { id, envelope, body }
        }
        KIND_NOTE => Record::Note { id, data: payload },
        KIND_COMPLETE => {
            if !payload.is_empty() {
                return Err(DecodeError::BadPayload {
                    reason: "complete record with a payload",
                });
            }
            Record::Complete { id }
        }
        KIND_MESSAGE_FILE => {
            if payload.len() < ENVELOPE_LENGTH_BYTES + BODY_FILE_FIELDS_BYTES {
                return Err(DecodeError::BadPayload {
                    reason: "message-file payload shorter than its fixed fields",
                });
            }
            let envelope_len = read_u32(payload, 0) as usize;
            let rest = &payload[ENVELOPE_LENGTH_BYTES..];
            if envelope_len != rest.len() - BODY_FILE_FIELDS_BYTES {
                return Err(DecodeError::BadPayload {
                    reason: "message-file envelope length does not match the record",
                });
            }
            Record::MessageFile {
                id,
                envelope: &rest[..envelope_len],
                body_len: read_u64(rest, envelope_len),
                body_crc32c: read_u32(rest, envelope_len + 8),
            }
        }
        KIND_MOVED => decode_moved(id, payload)?,
        KIND_MOVED_FILE => decode_moved_file(id, payload)?,
        found => return Err(DecodeError::UnknownKind { found }),
    };
    Ok((record, total))
}

/// The payload of a moved record: envelope, notes (each checked), body.
fn decode_moved(id: u64, payload: &[u8]) -> Result<Record<'_>, DecodeError> {
    let short = DecodeError::BadPayload {
        reason: "moved payload shorter than its lengths say",
    };
    if payload.len() < ENVELOPE_LENGTH_BYTES {
        return Err(short);
    }
    let envelope_len = read_u32(payload, 0) as usize;
    let rest = &payload[ENVELOPE_LENGTH_BYTES..];
    if envelope_len > rest.len() {
        return Err(short);
    }
    let (envelope, rest) = rest.split_at(envelope_len);
    if rest.len() < NOTE_LENGTH_BYTES {
        return Err(short);
    }
    let notes_len = read_u32(rest, 0) as usize;
    let rest = &rest[NOTE_LENGTH_BYTES..];
    if notes_len > rest.len() {
        return Err(short);
    }
    let (notes, body) = rest.split_at(notes_len);
    if Notes(notes).any(|note| note.is_err()) {
        return Err(DecodeError::BadPayload {
            reason: "moved record notes do not parse",
        });
    }
    Ok(Record::Moved {
        id,
        envelope,
        notes,
        body,
    })
}

/// The payload of a moved record of a message with its body in a file:
/// the payload of a moved record whose "body" is the body file's length
/// (u64) and CRC32C (u32).
fn decode_moved_file(id: u64, payload: &[u8]) -> Result<Record<'_>, DecodeError> {
    let Record::Moved {
        envelope,
        notes,
        body: fields,
        ..
    } = decode_moved(id, payload)?
    else {
        unreachable!("decode_moved decodes a moved record")
    };
    if fields.len() != BODY_FILE_FIELDS_BYTES {
        return Err(DecodeError::BadPayload {
            reason: "moved-file record without exactly its body length and CRC32C",
        });
    }
    Ok(Record::MovedFile {
        id,
        envelope,
        notes,
        body_len: read_u64(fields, 0),
        body_crc32c: read_u32(fields, 8),
    })
}

/// Appends `note` to the notes of a moved record being built in `out`.
pub fn encode_note(note: &[u8], out: &mut Vec<u8>) {
    assert!(note.len() <= RECORD_BYTES_MAX);
    out.extend_from_slice(&(note.len() as u32).to_le_bytes());
    out.extend_from_slice(note);
}

/// The notes of a moved record, in order (`decode` checked them, so each
/// item of a decoded record's notes is `Ok`).
pub fn notes_of(notes: &[u8]) -> impl Iterator<Item = &[u8]> {
    Notes(notes).map_while(Result::ok)
}

/// Iterates the notes of a moved record; an item is `Err` (and the last)
/// where the bytes do not parse.
struct Notes<'a>(&'a [u8]);

impl<'a> Iterator for Notes<'a> {
    type Item = Result<&'a [u8], ()>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        if self.0.len() < NOTE_LENGTH_BYTES {
            self.0 = &[];
            return Some(Err(()));
        }
        let len = read_u32(self.0, 0) as usize;
        let rest = &self.0[NOTE_LENGTH_BYTES..];
        if len > rest.len() {
            self.0 = &[];
            return Some(Err(()));
        }
        let (note, rest) = rest.split_at(len);
        self.0 = rest;
        Some(Ok(note))
    }
}

/// Why a segment file does not start with a valid header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Shorter than a header and all zero, or a zero header: the file was
    /// created and never written.
    #[error("segment never written")]
    Empty,
    #[error("segment header torn ({available} of {SEGMENT_HEADER_BYTES} bytes)")]
    Truncated { available: usize },
    #[error("bad segment magic")]
    BadMagic,
    #[error("unsupported segment version {found}")]
    UnsupportedVersion { found: u32 },
    #[error("segment header checksum mismatch")]
    BadChecksum,
    #[error("segment header names segment {found:016x}, file name says {expected:016x}")]
    WrongSegment { found: u64, expected: u64 },
}

/// The header that starts segment file `segment`.
pub fn encode_segment_header(segment: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&segment.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks the header at the start of `buf` for segment `expected`.
pub fn decode_segment_header(buf: &[u8], expected: u64) -> Result<(), HeaderError> {
    let head = &buf[..buf.len().min(SEGMENT_HEADER_BYTES)];
    if head.iter().all(|&b| b == 0) {
        return Err(HeaderError::Empty);
    }
    if buf.len() < SEGMENT_HEADER_BYTES {
        return Err(HeaderError::Truncated {
            available: buf.len(),
        });
    }
    if buf[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    if read_u32(buf, 28) != crc32c::crc32c(&buf[0..28]) {
        return Err(HeaderError::BadChecksum);
    }
    let version = read_u32(buf, 8);
    if version != SEGMENT_VERSION {
        return Err(HeaderError::UnsupportedVersion { found: version });
    }
    let found = read_u64(buf, 16);
    if found != expected {
        return Err(HeaderError::WrongSegment { found, expected });
    }
    Ok(())
}

impl fmt::Display for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Message { id, envelope, body } => write!(
                f,
                "message {id} (envelope {} bytes, body {} bytes)",
                envelope.len(),
                body.len()
            ),
            Record::Note { id, data } => write!(f, "note {id} ({} bytes)", data.len()),
            Record::Complete { id } => write!(f, "complete {id}"),
            Record::MessageFile {
                id,
                envelope,
                body_len,
                ..
            } => write!(
                f,
                "message {id} (envelope {} bytes, body {body_len} bytes in its file)",
                envelope.len()
            ),
            Record::Moved {
                id,
                envelope,
                notes,
                body,
            } => write!(
                f,
                "moved {id} (envelope {} bytes, {} notes, body {} bytes)",
                envelope.len(),
                notes_of(notes).count(),
                body.len()
            ),
            Record::MovedFile {
                id,
                envelope,
                notes,
                body_len,
                ..
            } => write!(
                f,
                "moved {id} (envelope {} bytes, {} notes, body {body_len} bytes in its file)",
                envelope.len(),
                notes_of(notes).count()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record<'static>> {
        vec![
            Record::Message {
                id: 7,
                envelope: b"MAIL FROM:<a@b>",
                body: b"Subject: x\r\n\r\nhello\r\n",
            },
            Record::Message {
                id: u64::MAX,
                envelope: b"",
                body: b"",
            },
            Record::Note {
                id: 9,
                data: b"rcpt 0: 250 ok",
            },
            Record::Note { id: 0, data: b"" },
            Record::Complete { id: 12345 },
            Record::MessageFile {
                id: 8,
                envelope: b"MAIL FROM:<a@b>",
                body_len: 50 * 1024 * 1024,
                body_crc32c: 0xdead_beef,
            },
            Record::MessageFile {
                id: 0,
                envelope: b"",
                body_len: 0,
                body_crc32c: 0,
            },
            Record::Moved {
                id: 8,
                envelope: b"MAIL FROM:<a@b>",
                notes: b"\x03\0\0\0one\0\0\0\0",
                body: b"Subject: y\r\n\r\nmoved\r\n",
            },
            Record::Moved {
                id: 1,
                envelope: b"",
                notes: b"",
                body: b"",
            },
            Record::MovedFile {
                id: 9,
                envelope: b"MAIL FROM:<a@b>",
                notes: b"\x03\0\0\0one\0\0\0\0",
                body_len: 50 * 1024 * 1024,
                body_crc32c: 0xdead_beef,
            },
            Record::MovedFile {
                id: 2,
                envelope: b"",
                notes: b"",
                body_len: 0,
                body_crc32c: 0,
            },
        ]
    }

    #[test]
    fn moved_notes_round_trip_and_damaged_ones_are_refused() {
        let mut notes = Vec::new();
        for note in [&b"first"[..], b"", b"third note"] {
            encode_note(note, &mut notes);
        }
        let record = Record::Moved {
            id: 3,
            envelope: b"env",
            notes: &notes,
            body: b"body",
        };
        let mut buf = Vec::new();
        encode(&record, &mut buf);
        let (decoded, _) = decode(&buf).expect("decodes");
        let Record::Moved { notes: got, .. } = decoded else {
            panic!("kind changed: {decoded}");
        };
        let got: Vec<&[u8]> = notes_of(got).collect();
        assert_eq!(got, vec![&b"first"[..], b"", b"third note"]);
        // A notes blob whose last length runs past it never decodes, even
        // with a valid checksum.
        let bad = Record::Moved {
            id: 3,
            envelope: b"env",
            notes: b"\x09\0\0\0short",
            body: b"",
        };
        let mut buf = Vec::new();
        encode(&bad, &mut buf);
        assert!(matches!(decode(&buf), Err(DecodeError::BadPayload { .. })));
    }

    /// Goal: the kind numbers on disk are main's (4 is compaction's moved
    /// record, as deployed) and the body-file kinds come after them.
    #[test]
    fn kind_numbers_on_disk_do_not_collide() {
        let kind_of = |record: Record<'_>| {
            let mut buf = Vec::new();
            encode(&record, &mut buf);
            buf[7]
        };
        let kinds: Vec<u8> = samples().into_iter().map(kind_of).collect();
        assert_eq!(kinds, vec![1, 1, 2, 2, 3, 5, 5, 4, 4, 6, 6]);
    }

    #[test]
    fn every_kind_round_trips_and_reports_its_length() {
        for record in samples() {
            let mut buf = Vec::new();
            encode(&record, &mut buf);
            assert_eq!(buf.len(), record.encoded_len());
            buf.extend_from_slice(b"trailing");
            let (decoded, used) = decode(&buf).expect("decodes");
            assert_eq!(decoded, record);
            assert_eq!(used, record.encoded_len());
            if let (Some(at), Record::Message { body, .. }) = (record.body_offset(), record) {
                assert_eq!(&buf[at..at + body.len()], body);
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for record in samples() {
            let mut buf = Vec::new();
            encode(&record, &mut buf);
            for len in 0..buf.len() {
                let result = decode(&buf[..len]);
                assert!(result.is_err(), "{record}: prefix of {len} decoded");
                if len > 0 {
                    assert_ne!(result, Err(DecodeError::End), "{record}: prefix {len}");
                }
            }
        }
    }

    #[test]
    fn every_single_bit_flip_is_an_error_not_a_panic() {
        for record in samples() {
            let mut clean = Vec::new();
            encode(&record, &mut clean);
            for bit in 0..clean.len() * 8 {
                let mut buf = clean.clone();
                buf[bit / 8] ^= 1 << (bit % 8);
                assert!(decode(&buf).is_err(), "{record}: flip of bit {bit} decoded");
            }
        }
    }

    #[test]
    fn zeroed_and_empty_input_read_as_the_end() {
        assert_eq!(decode(&[]), Err(DecodeError::End));
        assert_eq!(decode(&[0u8; 3]), Err(DecodeError::End));
        assert_eq!(decode(&[0u8; 4096]), Err(DecodeError::End));
    }

    #[test]
    fn arbitrary_garbage_never_panics() {
        let mut rng = ecelerity_testkit::Rng::new(0x9E37_79B9_7F4A_7C15);
        let mut buf = vec![0u8; 256];
        for _ in 0..20_000 {
            for byte in buf.iter_mut() {
                *byte = rng.byte();
            }
            let draw = rng.next_u64();
            // Make some inputs pass the magic check to reach deeper paths.
            if draw & 1 == 0 {
                buf[4..6].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
                buf[8..12].copy_from_slice(&((draw % 300) as u32).to_le_bytes());
            }
            let len = (draw % 257) as usize;
            let _ = decode(&buf[..len]);
        }
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let header = encode_segment_header(0x42);
        assert_eq!(decode_segment_header(&header, 0x42), Ok(()));
        assert_eq!(
            decode_segment_header(&header, 0x43),
            Err(HeaderError::WrongSegment {
                found: 0x42,
                expected: 0x43
            })
        );
        assert_eq!(decode_segment_header(&[], 1), Err(HeaderError::Empty));
        assert_eq!(
            decode_segment_header(&[0u8; 64], 1),
            Err(HeaderError::Empty)
        );
        for len in 1..SEGMENT_HEADER_BYTES {
            assert!(decode_segment_header(&header[..len], 0x42).is_err());
        }
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut buf = header;
            buf[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_segment_header(&buf, 0x42).is_err(), "bit {bit}");
        }
    }
}
