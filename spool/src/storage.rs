//! The spool's only door to the disk: a small `Storage` trait and its
//! glommio implementation.
//! Owns: open file handles of the segment being written and of the spool
//! directory; the segment file naming (`<segment:016x>.seg`).
//! May call: glommio file APIs (io_uring, and glommio's blocking thread for
//! unlink), std::fs and memmap2 for start-up reads (before the spool serves).
//! Never: decide what to write where (that is `journal`) or parse records
//! (that is `record`). A deterministic simulated storage (power cuts, torn
//! writes, EIO, ENOSPC) implements the same trait.

use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use glommio::io::{BufferedFile, Directory, OpenOptions};

/// Suffix of segment file names.
pub const SEGMENT_FILE_SUFFIX: &str = ".seg";
/// Hex digits of the segment number in a file name.
const SEGMENT_NAME_DIGITS: usize = 16;

/// File name of segment `segment` inside the spool directory.
pub fn segment_file_name(segment: u64) -> String {
    format!("{segment:016x}{SEGMENT_FILE_SUFFIX}")
}

/// The segment number a file name stands for, if it names a segment.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_hex_file_name(name, SEGMENT_FILE_SUFFIX)
}

/// The number in a spool file name of exactly 16 lower-case hex digits
/// followed by `suffix` (segments and body files are named so).
pub(crate) fn parse_hex_file_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != SEGMENT_NAME_DIGITS
        || !digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// What the spool needs from a disk. Writes go to the current segment,
/// the one the last `create_segment` or `resume_segment` made. All methods
/// report the `io::Error` the disk gave; the caller decides what a failure
/// means.
///
/// Space: a segment's blocks are reserved (`fallocate`, keep size) before
/// records go to it, and the spool never writes past the reservation, so
/// a write into the current segment never needs new space. That is what
/// lets completions go through on a full disk (see `journal`).
///
/// The trait is used by one task on one executor, hence no `Send` bounds.
#[allow(async_fn_in_trait)]
pub trait Storage {
    /// A whole segment's bytes, read before serving.
    type SegmentBytes: AsRef<[u8]>;
    /// Deletes segments from a task of its own (see `Remover`).
    type Remover: Remover + 'static;

    /// Segment numbers present, ascending.
    fn list_segments(&self) -> io::Result<Vec<u64>>;
    /// The full contents of a segment file (may end in zeros).
    fn read_segment(&self, segment: u64) -> io::Result<Self::SegmentBytes>;
    /// Creates segment `segment` (empty), reserves for it the first of
    /// `sizes` (bytes, descending) the file system can give, makes its name
    /// durable and makes it the write target. Returns the bytes reserved.
    /// When no size fits it fails with ENOSPC and the current segment stays
    /// what it was.
    async fn create_segment(&mut self, segment: u64, sizes: &[u64]) -> io::Result<u64>;
    /// Makes the existing segment `segment` the write target again (after
    /// a restart). Returns its length in bytes (everything ever written to
    /// it, garbage after its last record included).
    async fn resume_segment(&mut self, segment: u64) -> io::Result<u64>;
    /// Reserves for the current segment the first of `sizes` (bytes,
    /// descending) that fits; blocks it already holds count. Returns the
    /// bytes reserved, or ENOSPC when none fits.
    async fn reserve(&mut self, sizes: &[u64]) -> io::Result<u64>;
    /// Writes all of `buf` at `offset` of the current segment.
    async fn write_at(&mut self, buf: Vec<u8>, offset: u64) -> io::Result<()>;
    /// Makes every write to the current segment durable.
    async fn sync(&mut self) -> io::Result<()>;
    /// The same as `sync`, on the calling thread if the storage can (a
    /// blocking fdatasync, for a shard with nothing else to run; see
    /// `sync_choice`).
    async fn sync_inline(&mut self) -> io::Result<()> {
        self.sync().await
    }
    /// A handle that deletes segments, for the spool's GC task.
    fn remover(&self) -> io::Result<Self::Remover>;
    /// `len` bytes at `offset` of segment `segment`, for compaction: the
    /// records of a live message, below the synced end of their segment
    /// (the current one included). The default reads the whole segment.
    async fn read_span(&self, segment: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let bytes = self.read_segment(segment)?;
        let start = offset as usize;
        bytes
            .as_ref()
            .get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("segment {segment:016x} ends before {len} bytes at {offset}"),
                )
            })
    }
    /// Closes the current segment (there is none afterwards).
    async fn close(&mut self) -> io::Result<()>;
}

/// Deletion of segment files, apart from the writer so that a removal and
/// its directory sync never hold up a group commit.
#[allow(async_fn_in_trait)]
pub trait Remover {
    /// Deletes a segment that is not the current one. A missing file is
    /// not an error.
    async fn remove_segment(&mut self, segment: u64) -> io::Result<()>;
    /// Makes creations and deletions of segment files durable.
    async fn sync_dir(&mut self) -> io::Result<()>;
}

fn is_enospc(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Segment bytes read at start-up: a read-only map, or nothing for an
/// empty file (which cannot be mapped).
pub enum MappedSegment {
    Empty,
    Map(memmap2::Mmap),
}

impl AsRef<[u8]> for MappedSegment {
    fn as_ref(&self) -> &[u8] {
        match self {
            MappedSegment::Empty => &[],
            MappedSegment::Map(map) => map,
        }
    }
}

/// Segments on a real file system through glommio's buffered files
/// (appends up to `PWRITE_ON_SHARD_MAX_BYTES` copied into the page cache by
/// pwrite(2) on the shard, larger ones written through io_uring; then
/// fdatasync through io_uring, or on the shard's thread for a lone
/// client's message: `sync_choice`). See the crate documentation for why
/// buffered and not O_DIRECT.
pub struct GlommioStorage {
    dir: PathBuf,
    dir_handle: Directory,
    file_mode: u32,
    current: Option<(u64, BufferedFile)>,
    /// The spool ring that submits segment fdatasyncs at once (`ring`);
    /// None: they go through glommio's reactor.
    ring: Option<crate::ring::SyncRing>,
}

impl GlommioStorage {
    /// Opens (creating it if needed) the spool directory. With
    /// `sync_ring`, segment syncs go through a spool ring of their own
    /// (`ring`); when that ring cannot be made they go through glommio.
    pub async fn open(dir: &Path, file_mode: u32, sync_ring: bool) -> io::Result<GlommioStorage> {
        std::fs::create_dir_all(dir)?;
        let dir_handle = Directory::open(dir).await.map_err(io::Error::from)?;
        let ring = if sync_ring {
            match crate::ring::SyncRing::new() {
                Ok(ring) => Some(ring),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot set up the spool ring; segment syncs go through glommio");
                    None
                }
            }
        } else {
            None
        };
        Ok(GlommioStorage {
            dir: dir.to_path_buf(),
            dir_handle,
            file_mode,
            current: None,
            ring,
        })
    }

    fn path_of(&self, segment: u64) -> PathBuf {
        self.dir.join(segment_file_name(segment))
    }
}

/// Keeps the OS error code of a glommio error (glommio's own conversion
/// of its enhanced errors drops it, and ENOSPC must stay recognisable).
fn os_error(err: glommio::GlommioError<()>) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::from(err),
    }
}

impl GlommioStorage {
    /// Reserves the first of `sizes` that fits for `file`.
    async fn reserve_file(file: &BufferedFile, sizes: &[u64]) -> io::Result<u64> {
        for &size in sizes {
            match file.pre_allocate(size, true).await.map_err(os_error) {
                Ok(()) => return Ok(size),
                Err(err) if is_enospc(&err) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }
}

impl Storage for GlommioStorage {
    type SegmentBytes = MappedSegment;
    type Remover = GlommioRemover;

    fn list_segments(&self) -> io::Result<Vec<u64>> {
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(segment) = entry.file_name().to_str().and_then(parse_segment_file_name) {
                segments.push(segment);
            }
        }
        segments.sort_unstable();
        Ok(segments)
    }

    fn read_segment(&self, segment: u64) -> io::Result<MappedSegment> {
        let file = std::fs::File::open(self.path_of(segment))?;
        if file.metadata()?.len() == 0 {
            return Ok(MappedSegment::Empty);
        }
        // SAFETY: the map is read-only and taken before the spool serves;
        // nothing else writes segment files of this directory (one spool
        // per directory), so the bytes do not change under the map.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MappedSegment::Map(map))
    }

    async fn create_segment(&mut self, segment: u64, sizes: &[u64]) -> io::Result<u64> {
        let path = self.path_of(segment);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(self.file_mode as libc::mode_t)
            .buffered_open(&path)
            .await
            .map_err(os_error)?;
        // Reserve the blocks now so group commits never allocate; the
        // file size stays at what was written (keep_size), so the
        // unwritten tail never exists for readers.
        let reserved = match GlommioStorage::reserve_file(&file, sizes).await {
            Ok(reserved) => reserved,
            Err(err) => {
                // Nothing was written or made durable: drop the empty
                // file (and any blocks a partial fallocate kept) off the
                // shard's thread. Left behind, it is harmless: an empty
                // segment is dead at the next open.
                let _ = file.close().await;
                let _ = glommio::io::remove(&path).await;
                return Err(err);
            }
        };
        self.dir_handle.sync().await.map_err(os_error)?;
        if let Some((_, old)) = self.current.replace((segment, file)) {
            old.close().await.map_err(os_error)?;
        }
        Ok(reserved)
    }

    async fn resume_segment(&mut self, segment: u64) -> io::Result<u64> {
        let file = OpenOptions::new()
            .write(true)
            .buffered_open(self.path_of(segment))
            .await
            .map_err(os_error)?;
        let len = file.file_size().await.map_err(os_error)?;
        if let Some((_, old)) = self.current.replace((segment, file)) {
            old.close().await.map_err(os_error)?;
        }
        Ok(len)
    }

    async fn reserve(&mut self, sizes: &[u64]) -> io::Result<u64> {
        let (_, file) = self.current.as_ref().expect("reserve needs a segment");
        GlommioStorage::reserve_file(file, sizes).await
    }

    async fn write_at(&mut self, buf: Vec<u8>, offset: u64) -> io::Result<()> {
        let (_, file) = self.current.as_ref().expect("write_at needs a segment");
        let len = buf.len();
        let written = if len <= PWRITE_ON_SHARD_MAX_BYTES {
            pwrite_all(file.as_raw_fd(), &buf, offset)?
        } else {
            file.write_at(buf, offset).await.map_err(os_error)?
        };
        if written == len {
            return Ok(());
        }
        // write(2) on a regular file stops short only when the device ran
        // out of space (segment sizes stay far below the file size limit).
        // The caller treats the write as failed and rewrites it from the
        // last synced offset, so the partial bytes never count.
        tracing::debug!(written, len, offset, "short segment write");
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }

    async fn sync(&mut self) -> io::Result<()> {
        let (_, file) = self.current.as_ref().expect("sync needs a segment");
        match self.ring.as_mut() {
            Some(ring) => ring.fdatasync(file.as_raw_fd()).await,
            None => file.fdatasync().await.map_err(os_error),
        }
    }

    async fn sync_inline(&mut self) -> io::Result<()> {
        let (_, file) = self.current.as_ref().expect("sync needs a segment");
        let fd = file.as_raw_fd();
        loop {
            // SAFETY: `fd` is the current segment's open descriptor, kept
            // open by `self.current` for the duration of the call.
            if unsafe { libc::fdatasync(fd) } == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    async fn read_span(&self, segment: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        // A read-only file of its own, through io_uring: never a blocking
        // read (or a page fault of a map) on the shard's thread.
        let file = BufferedFile::open(self.path_of(segment))
            .await
            .map_err(os_error)?;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let at = offset + out.len() as u64;
            let chunk = file.read_at(at, len - out.len()).await.map_err(os_error);
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    let _ = file.close().await;
                    return Err(err);
                }
            };
            if chunk.is_empty() {
                let _ = file.close().await;
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("segment {segment:016x} ends at {at}, before {len} bytes at {offset}"),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        file.close().await.map_err(os_error)?;
        Ok(out)
    }

    fn remover(&self) -> io::Result<GlommioRemover> {
        Ok(GlommioRemover {
            dir: self.dir.clone(),
            dir_handle: self.dir_handle.try_clone().map_err(io::Error::from)?,
            removals: crate::reader::removal_counter(&self.dir),
        })
    }

    async fn close(&mut self) -> io::Result<()> {
        if let Some(ring) = self.ring.take() {
            ring.close().await;
        }
        if let Some((_, file)) = self.current.take() {
            file.close().await.map_err(os_error)?;
        }
        Ok(())
    }
}

/// Largest append `GlommioStorage::write_at` copies into the page cache
/// with pwrite(2) on the shard's own thread. Through io_uring an ext4
/// buffered write is punted to an io-wq worker (`iou-wrk`), which runs on
/// the shard's core: two context switches per group commit for a copy of a
/// few microseconds. 128 KiB: a small batch with the zero fill ahead of
/// it (`SpoolOptions::zero_ahead_bytes`, up to 1.5x its 64 KiB default)
/// stays here. Larger batches (big bodies) still go through io_uring, so a
/// slow page-cache copy never stalls the shard for long.
const PWRITE_ON_SHARD_MAX_BYTES: usize = 128 << 10;

/// pwrite(2) until all of `buf` is written, an error, or a write of 0
/// bytes (no space). Returns the bytes written.
fn pwrite_all(fd: std::os::unix::io::RawFd, buf: &[u8], offset: u64) -> io::Result<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &buf[done..];
        // SAFETY: `rest` is a live, initialised slice of `rest.len()` bytes
        // and `fd` an open file of this storage for the whole call.
        let n = unsafe {
            libc::pwrite(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

/// Deletes segment files through glommio: the unlink runs on glommio's
/// blocking-operation thread (io_uring has no unlink that glommio uses),
/// the directory sync through io_uring.
pub struct GlommioRemover {
    dir: PathBuf,
    dir_handle: Directory,
    /// Bumped after each removal so that body readers close the files
    /// of deleted segments (see `reader`).
    removals: Arc<AtomicU64>,
}

impl Remover for GlommioRemover {
    async fn remove_segment(&mut self, segment: u64) -> io::Result<()> {
        match glommio::io::remove(self.dir.join(segment_file_name(segment))).await {
            Ok(()) => {
                self.removals.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                let err = os_error(err);
                if err.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn sync_dir(&mut self) -> io::Result<()> {
        self.dir_handle.sync().await.map_err(os_error)
    }
}
