//! ecelerity's durable spool: append-only segment files, a versioned and
//! checksummed record codec, group commit, recovery, segment GC, and the
//! reserve that lets a full disk heal by itself.
//! Owns: the files under one shard's spool directory.
//! May call: glommio (file I/O through io_uring on the executor that
//! writes or reads), std::fs and memmap2 (start-up reads only).
//! Never: SMTP, queues or policy; envelopes and notes are opaque bytes.
//!
//! Layout: `<dir>/<segment:016x>.seg`, each a segment header then records
//! (see `record`). A message is live from its durable `Message` record
//! until its durable `Complete` record; a segment is deleted once no live
//! message has a record in it and no complete record in it still hides a
//! message of an older segment (see `journal::LiveIndex`). Each segment is
//! reserved before records go to it and part of it is kept for notes and
//! completes (see `journal`), so a spool that cannot get a new segment
//! still completes its messages and frees the space.
//!
//! Modules: `record` (pure codec), `journal` (pure write-position, reserve
//! and live-set bookkeeping), `recovery` (pure over `Storage` reads),
//! `storage` (the only I/O, behind traits a simulated disk can implement),
//! `spool` (handle, group-commit writer task, GC task), `compact` (moves
//! the live messages of sparse old segments forward, paced, so the spool's
//! size follows its live data; a body in a file of its own stays there),
//! `reader` (body reads through io_uring, on any shard), `bodies` (large
//! bodies in files of their own, written while DATA arrives),
//! `sync_choice` (pure: whether a group commit syncs through io_uring or
//! on the writer's thread).
//!
//! File access choice: glommio `BufferedFile` (io_uring `write` into the
//! page cache, then `fdatasync`), segments reserved with
//! `pre_allocate(segment_bytes, keep_size = true)`. MEASURED.md found
//! buffered write + fdatasync as fast as O_DIRECT for group commit on this
//! machine (62k vs 64-75k records/s of 8 KiB at 32 per sync) and it packs
//! records without keeping a partial tail block in memory; O_DIRECT writes
//! that extend a file stall ~4 ms after an fdatasync, which preallocation
//! avoids.
//!
//! Measured here (`throughput_of_1k_appends_with_64_appenders`, release
//! build, 2 cores shared with other builds, ext4 on a virtual disk): 64
//! appenders of 1 KiB bodies reach about 210,000-310,000 appends/s, 64
//! records per write + fdatasync, 3,300-4,800 syncs/s, slowest sync under
//! 1 ms (one run under a parallel compile: 21,600/s at 338 syncs/s).
//! `pre_allocate` with keep_size = false measured the same within the
//! noise (220,000/s), so the file keeps its written size. Zeros are
//! written ahead of the records in 64 KiB steps (`zero_ahead_bytes`), so
//! a segment file ends in up to ~96 KiB of zeros past its last record:
//! group commits then overwrite blocks already written inside the file
//! size and their fdatasync has no new size or extent to write (on ext4:
//! no journal commit; without a journal, as on this machine, no inode
//! write but for a new mtime), which cut fdatasync CPU by 25-45 % and its
//! p50 by 30-45 % here (docs/benchmarks.md, "Zero fill ahead").
//! Recovery stops at the first zeroed record header, so the zeros read as
//! the clean end they are. A lone append waits for one write + sync.

pub mod bodies;
pub mod journal;
pub mod latency;
pub mod reader;
pub mod record;
pub mod recovery;
mod ring;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod spool;
pub mod storage;
mod sync_choice;

use std::io;

pub use bodies::{BodyWriter, FileBody};
pub use reader::{BodyReader, BODY_READ_CHUNK_BYTES};
pub use record::{DecodeError, Record, RECORD_BYTES_MAX};
pub use spool::compact::{
    relocated, COMPACTION_BYTES_PER_SECOND_DEFAULT, COMPACTION_LIVE_PERCENT_DEFAULT,
};
pub use spool::{CompactReport, CompactionOptions, Spool};
pub use storage::{GlommioStorage, Storage};

/// Default size of a segment file.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest segment accepted: a header and a few small records.
pub const SEGMENT_BYTES_MIN: u64 = 4 * 1024;
/// Largest segment accepted (preallocated whole on creation).
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Default limit of bytes waiting in the open batch; past it appenders
/// wait for the writer to take the batch (back-pressure).
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Smallest batch limit accepted.
pub const BATCH_BYTES_MIN: usize = 4 * 1024;
/// Largest batch limit accepted: one write of this size per sync.
pub const BATCH_BYTES_CEILING: usize = 256 * 1024 * 1024;
/// Default permission bits of segment files.
pub const FILE_MODE_DEFAULT: u32 = 0o640;

const _: () = assert!(SEGMENT_BYTES_MIN > record::SEGMENT_HEADER_BYTES as u64);
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= SEGMENT_BYTES_MIN);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MIN <= BATCH_BYTES_MAX && BATCH_BYTES_MAX <= BATCH_BYTES_CEILING);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolOptions {
    /// Size of each segment file, in bytes.
    pub segment_bytes: u64,
    /// Bytes of appended records that may wait for the writer.
    pub batch_bytes_max: usize,
    /// Permission bits of new segment files.
    pub file_mode: u32,
    /// How long a batch of notes and completions only may wait for a
    /// message to share its fdatasync, in milliseconds (0: sync at once).
    /// Nothing waits on such records for a reply, and a crash that loses
    /// them only delivers again (never loses), so the daemon lingers;
    /// tests and the simulator sync at once.
    pub progress_linger_ms: u64,
    /// Segment fdatasyncs go through a spool ring of their own, submitted
    /// as soon as the batch is written (`ring`), instead of through
    /// glommio's reactor (submitted at its next turn). Off by default: on
    /// this project's shared test machine the two measured the same
    /// (docs/benchmarks.md, "Latency tail"), and the reactor path costs
    /// one io_uring operation per sync instead of two.
    pub sync_ring: bool,
    /// Zeros written ahead of the records, in steps of this many bytes
    /// (0: none; a multiple of 4096, at most `ZERO_AHEAD_BYTES_MAX`): the
    /// group commits after such a step overwrite blocks that are already
    /// written, inside the file's size, so their fdatasync writes no
    /// metadata (see `journal`, docs/benchmarks.md "Zero fill ahead").
    pub zero_ahead_bytes: u64,
    /// A group commit of one message (at most 64 KiB) syncs on the
    /// writer's own thread (a blocking fdatasync) while the shard serves at
    /// most one client (`Spool::set_client_count`), instead of through
    /// io_uring, which hands every fsync to an io-wq worker (`sync_choice`,
    /// docs/benchmarks.md "Inline fdatasync at low concurrency"). On by
    /// default.
    pub inline_sync: bool,
}

/// Default `zero_ahead_bytes`: one step every ~45 relayed 1 KiB messages.
pub const ZERO_AHEAD_BYTES_DEFAULT: u64 = 64 * 1024;
pub use journal::ZERO_AHEAD_BYTES_MAX;

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX,
            file_mode: FILE_MODE_DEFAULT,
            progress_linger_ms: 0,
            sync_ring: false,
            zero_ahead_bytes: ZERO_AHEAD_BYTES_DEFAULT,
            inline_sync: true,
        }
    }
}

/// Longest `progress_linger_ms` accepted.
pub const PROGRESS_LINGER_MS_MAX: u64 = 1_000;

impl SpoolOptions {
    pub fn validate(&self) -> Result<(), SpoolError> {
        if self.zero_ahead_bytes > ZERO_AHEAD_BYTES_MAX
            || !self
                .zero_ahead_bytes
                .is_multiple_of(journal::RESERVE_ALIGN_BYTES)
        {
            return Err(SpoolError::InvalidOptions {
                reason: format!(
                    "zero_ahead_bytes must be a multiple of {} up to {ZERO_AHEAD_BYTES_MAX}, got {}",
                    journal::RESERVE_ALIGN_BYTES,
                    self.zero_ahead_bytes
                ),
            });
        }
        if self.progress_linger_ms > PROGRESS_LINGER_MS_MAX {
            return Err(SpoolError::InvalidOptions {
                reason: format!(
                    "progress_linger_ms must be at most {PROGRESS_LINGER_MS_MAX}, got {}",
                    self.progress_linger_ms
                ),
            });
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(SpoolError::InvalidOptions {
                reason: format!(
                    "segment_bytes must lie in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}, got {}",
                    self.segment_bytes
                ),
            });
        }
        if !(BATCH_BYTES_MIN..=BATCH_BYTES_CEILING).contains(&self.batch_bytes_max) {
            return Err(SpoolError::InvalidOptions {
                reason: format!(
                    "batch_bytes_max must lie in {BATCH_BYTES_MIN}..={BATCH_BYTES_CEILING}, got {}",
                    self.batch_bytes_max
                ),
            });
        }
        if self.file_mode & !0o7777 != 0 {
            return Err(SpoolError::InvalidOptions {
                reason: format!("file_mode {:o} has bits beyond 0o7777", self.file_mode),
            });
        }
        Ok(())
    }
}

/// Where a message body sits: `len` bytes at `offset` of segment file
/// `segment`, or, when `segment` is `BODY_FILE_SEGMENT`, the first `len`
/// bytes of the body file of message `offset` (`bodies`). Plain data,
/// sendable to the shard that delivers; kept at three words because
/// every queue entry carries one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BodyRef {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// The `segment` of a `BodyRef` whose body has a file of its own. Segment
/// numbers stay below it (`Journal::rolled` asserts it).
pub const BODY_FILE_SEGMENT: u64 = u64::MAX;

impl BodyRef {
    /// The body of message `id`, `len` bytes in its own file.
    pub fn file(id: u64, len: u32) -> BodyRef {
        BodyRef {
            segment: BODY_FILE_SEGMENT,
            offset: id,
            len,
        }
    }

    /// The message id whose body file holds this body, if it has one.
    pub fn file_id(&self) -> Option<u64> {
        (self.segment == BODY_FILE_SEGMENT).then_some(self.offset)
    }
}

/// A message found live at open, with its notes in the order written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredMessage {
    pub id: u64,
    pub envelope: Vec<u8>,
    pub body: BodyRef,
    pub notes: Vec<Vec<u8>>,
}

/// Where recovery stopped reading a segment before its end, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u64,
    pub offset: u64,
    pub reason: String,
}

/// What `Spool::open` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Live messages, in the order they were spooled.
    pub messages: Vec<RecoveredMessage>,
    /// Largest message id in any readable record (live or not).
    pub max_id: u64,
    pub segments_read: u32,
    pub segments_deleted: u32,
    pub records_read: u64,
    pub truncated: Vec<TornTail>,
    /// Body files without a durable message record (a DATA cut short by a
    /// crash, or a completed message whose unlink was lost), deleted at
    /// open.
    pub body_files_deleted: u32,
    /// Live messages whose body file is missing (removed by hand, or a
    /// media fault): kept live, their delivery fails on the read.
    pub body_files_missing: Vec<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Segment files present (including the one being written).
    pub segments: u32,
    /// Record bytes made durable since open.
    pub bytes_appended: u64,
    pub records_appended: u64,
    /// Write + fdatasync rounds attempted since open.
    pub syncs: u64,
    /// Of `syncs`, those made on the writer's thread (`sync_choice`).
    pub inline_syncs: u64,
    pub live_messages: u64,
    /// Longest write + fdatasync round, in microseconds.
    pub sync_latency_us_max: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool storage is full (no space left on the device or quota exceeded)")]
    StorageFull,
    #[error("spool I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("record of {bytes} bytes exceeds the spool's limit of {limit} bytes")]
    TooLarge { bytes: u64, limit: u64 },
    #[error("spool is closed")]
    Closed,
    #[error("invalid spool options: {reason}")]
    InvalidOptions { reason: String },
}

#[cfg(test)]
mod tests;
