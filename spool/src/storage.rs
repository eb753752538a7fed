//! The spool's only door to the disk: a small `Storage` trait and its
//! glommio implementation.
//! Owns: open file handles of the segment being written and of the spool
//! directory; the segment file naming (`<segment:016x>.seg`).
//! May call: glommio file APIs, std::fs and memmap2 for start-up reads.
//! Never: decide what to write where (that is `journal`) or parse records
//! (that is `record`). A deterministic simulated storage (power cuts, torn
//! writes, EIO, ENOSPC) implements the same trait.

use std::io;
use std::path::{Path, PathBuf};

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
    let digits = name.strip_suffix(SEGMENT_FILE_SUFFIX)?;
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
/// the one the last `create_segment` made. All methods report the
/// `io::Error` the disk gave; the caller decides what a failure means.
///
/// The trait is used by one task on one executor, hence no `Send` bounds.
#[allow(async_fn_in_trait)]
pub trait Storage {
    /// A whole segment's bytes, read before serving.
    type SegmentBytes: AsRef<[u8]>;

    /// Segment numbers present, ascending.
    fn list_segments(&self) -> io::Result<Vec<u64>>;
    /// The full contents of a segment file (may end in zeros).
    fn read_segment(&self, segment: u64) -> io::Result<Self::SegmentBytes>;
    /// Creates segment `segment` (empty, space reserved for `bytes`), makes
    /// its name durable and makes it the write target.
    async fn create_segment(&mut self, segment: u64, bytes: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` of the current segment.
    async fn write_at(&mut self, buf: Vec<u8>, offset: u64) -> io::Result<()>;
    /// Makes every write to the current segment durable.
    async fn sync(&mut self) -> io::Result<()>;
    /// Deletes a segment that is not the current one.
    async fn remove_segment(&mut self, segment: u64) -> io::Result<()>;
    /// Makes creations and deletions of segment files durable.
    async fn sync_dir(&mut self) -> io::Result<()>;
    /// Closes the current segment.
    async fn close(&mut self) -> io::Result<()>;
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
/// (io_uring writes into the page cache, then fdatasync). See the crate
/// documentation for why buffered and not O_DIRECT.
pub struct GlommioStorage {
    dir: PathBuf,
    dir_handle: Directory,
    file_mode: u32,
    current: Option<(u64, BufferedFile)>,
}

impl GlommioStorage {
    /// Opens (creating it if needed) the spool directory.
    pub async fn open(dir: &Path, file_mode: u32) -> io::Result<GlommioStorage> {
        std::fs::create_dir_all(dir)?;
        let dir_handle = Directory::open(dir).await.map_err(io::Error::from)?;
        Ok(GlommioStorage {
            dir: dir.to_path_buf(),
            dir_handle,
            file_mode,
            current: None,
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

impl Storage for GlommioStorage {
    type SegmentBytes = MappedSegment;

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

    async fn create_segment(&mut self, segment: u64, bytes: u64) -> io::Result<()> {
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
        //
        // With less free space than a whole segment, preallocation fails
        // with ENOSPC although records still fit: go on without it, so the
        // spool keeps accepting until the space is really gone (a write
        // then fails with ENOSPC and the append reports StorageFull).
        if let Err(err) = file.pre_allocate(bytes, true).await.map_err(os_error) {
            if err.raw_os_error() != Some(libc::ENOSPC) {
                return Err(err);
            }
            tracing::warn!(
                segment,
                bytes,
                "spool: not enough free space to reserve a whole segment; \
                 writing without the reservation (free space on the spool's \
                 file system, or lower the segment size)"
            );
        }
        self.dir_handle.sync().await.map_err(os_error)?;
        if let Some((_, old)) = self.current.replace((segment, file)) {
            old.close().await.map_err(os_error)?;
        }
        Ok(())
    }

    async fn write_at(&mut self, buf: Vec<u8>, offset: u64) -> io::Result<()> {
        let (_, file) = self.current.as_ref().expect("write_at needs a segment");
        let len = buf.len();
        let written = file.write_at(buf, offset).await.map_err(os_error)?;
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
        file.fdatasync().await.map_err(os_error)
    }

    async fn remove_segment(&mut self, segment: u64) -> io::Result<()> {
        assert_ne!(self.current.as_ref().map(|(s, _)| *s), Some(segment));
        match std::fs::remove_file(self.path_of(segment)) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn sync_dir(&mut self) -> io::Result<()> {
        self.dir_handle.sync().await.map_err(os_error)
    }

    async fn close(&mut self) -> io::Result<()> {
        if let Some((_, file)) = self.current.take() {
            file.close().await.map_err(os_error)?;
        }
        Ok(())
    }
}
