//! Bodies of large messages in files of their own, written while DATA
//! arrives so that a body never sits whole in memory.
//! Owns: the body file naming (`<id:016x>.body`, in the spool directory
//! next to the segments), the writer of one body file, and its removal.
//! May call: glommio file APIs (io_uring writes into the page cache,
//! `fdatasync`, directory sync; unlink on glommio's blocking thread),
//! `crc32c`.
//! Never: the segments, the journal or the live index. A body file is
//! only a message once a `MessageFile` record naming it is durable in a
//! segment; until then it is garbage that recovery removes.
//!
//! Why a file per large body, not chunk records in the segments: a body
//! streamed into a segment would interleave with other records, pin that
//! segment for the message's whole life and have to be copied by
//! compaction (tens of MiB per long-lived message); a file of its own is
//! freed the moment its message completes, is never copied (compaction
//! moves the small record only, as a `MovedFile` record), keeps the group-commit
//! batch free of bulk data, and lets a message be larger than a segment.
//! The cost is a file create, an `fdatasync` of the file and one of the
//! directory per large message, small next to moving the body itself.
//!
//! Commit order (the invariant: 250 only for a message that survives a
//! crash): the body is written (unsynced) chunk by chunk, then `finish`
//! syncs the file and the directory, then the `MessageFile` record goes
//! through the group commit, and only after that sync does the client get
//! 250. A crash before the record is durable leaves a body file without a
//! record: not a message; `Spool::open` deletes it. A crash after the
//! message's `Complete` record is durable but before its file is unlinked
//! leaves the same kind of orphan.

use std::io;
use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, Directory, OpenOptions};

use crate::SpoolError;

/// Suffix of body file names.
pub const BODY_FILE_SUFFIX: &str = ".body";

/// File name of the body of message `id` inside the spool directory.
pub fn body_file_name(id: u64) -> String {
    format!("{id:016x}{BODY_FILE_SUFFIX}")
}

/// The message id a file name stands for, if it names a body file.
pub fn parse_body_file_name(name: &str) -> Option<u64> {
    crate::storage::parse_hex_file_name(name, BODY_FILE_SUFFIX)
}

/// Ids of the body files in `dir`, ascending. A start-up read (readdir),
/// like `Storage::list_segments`.
pub fn list_body_files(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_body_file_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// A body file written and synced: what its `MessageFile` record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileBody {
    pub id: u64,
    /// Bytes of the body.
    pub len: u64,
    /// CRC32C of the body, checked again when delivery has read it.
    pub crc32c: u32,
}

/// Writes the body of one message to its own file, chunk by chunk, as it
/// arrives. `!Send`: it lives on the executor of the session that writes.
/// A writer neither finished nor discarded (its task was cancelled) leaves
/// its file behind; the next `Spool::open` removes it.
pub struct BodyWriter {
    path: PathBuf,
    dir: PathBuf,
    id: u64,
    file: Option<BufferedFile>,
    /// Bytes written so far; the offset of the next chunk.
    len: u64,
    /// CRC32C of the bytes written so far (after the head, if reserved).
    crc32c: u32,
    /// The first bytes of the file, left free by `reserve_head` for
    /// `fill_head`: their length and, once written, their CRC32C.
    head: Option<(u64, Option<u32>)>,
}

/// Keeps the OS error code of a glommio error (ENOSPC must stay
/// recognisable).
fn os_error(err: glommio::GlommioError<()>) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::from(err),
    }
}

impl BodyWriter {
    /// Creates the body file of message `id` in the spool directory `dir`
    /// (absolute). A file of that name already there is an error: ids
    /// never repeat.
    pub async fn create(dir: &Path, id: u64, file_mode: u32) -> Result<BodyWriter, SpoolError> {
        let path = dir.join(body_file_name(id));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file_mode as libc::mode_t)
            .buffered_open(&path)
            .await
            .map_err(|e| SpoolError::from_io(os_error(e)))?;
        Ok(BodyWriter {
            path,
            dir: dir.to_path_buf(),
            id,
            file: Some(file),
            len: 0,
            crc32c: 0,
            head: None,
        })
    }

    /// Leaves the first `len` bytes of the file free for [`fill_head`]
    /// (a header whose length is known before its content, such as a DKIM
    /// signature made once the whole body was hashed). Only before the
    /// first write; `fill_head` must come before `finish`.
    ///
    /// [`fill_head`]: BodyWriter::fill_head
    pub fn reserve_head(&mut self, len: usize) {
        assert!(
            self.len == 0 && self.head.is_none(),
            "a head is reserved first, once"
        );
        self.len = len as u64;
        self.head = Some((len as u64, None));
    }

    /// Writes the head `reserve_head` left free: exactly that many bytes.
    pub async fn fill_head(&mut self, head: Vec<u8>) -> Result<(), SpoolError> {
        let Some((len, None)) = self.head else {
            panic!("fill_head needs a reserved, unfilled head");
        };
        assert_eq!(
            head.len() as u64,
            len,
            "the head fills its reservation exactly"
        );
        let file = self
            .file
            .as_ref()
            .expect("a body writer is open until finished");
        let crc32c = crc32c::crc32c(&head);
        let written = file
            .write_at(head, 0)
            .await
            .map_err(|e| SpoolError::from_io(os_error(e)))?;
        if written as u64 != len {
            return Err(SpoolError::StorageFull);
        }
        self.head = Some((len, Some(crc32c)));
        Ok(())
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `chunk` (into the page cache, not synced). The buffer goes
    /// to io_uring and is freed after the write.
    pub async fn write(&mut self, chunk: Vec<u8>) -> Result<(), SpoolError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let file = self
            .file
            .as_ref()
            .expect("a body writer is open until finished");
        let len = chunk.len();
        let crc32c = crc32c::crc32c_append(self.crc32c, &chunk);
        let written = file
            .write_at(chunk, self.len)
            .await
            .map_err(|e| SpoolError::from_io(os_error(e)))?;
        if written != len {
            // A short write to a regular file: the device is full.
            return Err(SpoolError::StorageFull);
        }
        self.len += len as u64;
        self.crc32c = crc32c;
        Ok(())
    }

    /// Makes the file and its name durable (`fdatasync` of the file, then
    /// of the directory) and closes it. On error the file is removed.
    pub async fn finish(mut self) -> Result<FileBody, SpoolError> {
        let crc32c = match self.head {
            None => self.crc32c,
            Some((len, Some(head))) => {
                crc32c::crc32c_combine(head, self.crc32c, (self.len - len) as usize)
            }
            Some((_, None)) => panic!("a reserved head is filled before finish"),
        };
        let file = self.file.take().expect("finished once");
        let result = sync_and_close(file, &self.dir).await;
        if let Err(err) = result {
            let _ = glommio::io::remove(&self.path).await;
            return Err(SpoolError::from_io(err));
        }
        Ok(FileBody {
            id: self.id,
            len: self.len,
            crc32c,
        })
    }

    /// Closes and removes the file: the message will not be spooled.
    pub async fn discard(mut self) {
        if let Some(file) = self.file.take() {
            let _ = file.close().await;
        }
        if let Err(err) = glommio::io::remove(&self.path).await {
            tracing::warn!(
                path = %self.path.display(),
                error = %err,
                "cannot remove an abandoned body file; the next start removes it",
            );
        }
    }
}

/// `fdatasync` of `file`, close, then a sync of the directory `dir` that
/// holds its name.
async fn sync_and_close(file: BufferedFile, dir: &Path) -> io::Result<()> {
    let synced = file.fdatasync().await.map_err(os_error);
    let closed = file.close().await.map_err(os_error);
    synced.and(closed)?;
    let dir = Directory::open(dir).await.map_err(os_error)?;
    let synced = dir.sync().await.map_err(os_error);
    let _ = dir.close().await;
    synced
}

/// Removes the body file of message `id` from `dir` (on glommio's blocking
/// thread). A missing file is not an error.
pub async fn remove_body_file(dir: &Path, id: u64) -> io::Result<()> {
    match glommio::io::remove(dir.join(body_file_name(id))).await {
        Ok(()) => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_file_names_round_trip_and_reject_others() {
        assert_eq!(body_file_name(0x2a), "000000000000002a.body");
        assert_eq!(
            parse_body_file_name(&body_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_body_file_name(&body_file_name(7)), Some(7));
        assert_eq!(parse_body_file_name("000000000000002a.seg"), None);
        assert_eq!(parse_body_file_name("2a.body"), None);
        assert_eq!(parse_body_file_name("000000000000002A.body"), None);
        assert_eq!(parse_body_file_name("00000000000000zz.body"), None);
    }
}
