//! Body reads from any thread: blocking pread on read-only segment files.
//! Owns: a small cache of open read-only file descriptors, per reader.
//! May call: std::fs.
//! Never: write, create or delete a segment; touch the writer's state.
//! A body read runs on the delivering shard, which may not be the shard
//! that wrote the segment; segment files are immutable below their synced
//! end, so no coordination is needed. A segment deleted while its fd is
//! cached stays readable through that fd until the cache drops it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::storage::segment_file_name;
use crate::BodyRef;

/// Open segment files a reader keeps. Deliveries read mostly from the
/// newest few segments; eight covers that without holding many fds.
pub const BODY_READER_FILES_MAX: usize = 8;

pub struct BodyReader {
    dir: PathBuf,
    /// Most recently used last; never longer than BODY_READER_FILES_MAX.
    files: Vec<(u64, File)>,
}

impl BodyReader {
    pub fn new(dir: PathBuf) -> Self {
        BodyReader {
            dir,
            files: Vec::with_capacity(BODY_READER_FILES_MAX),
        }
    }

    /// Replaces the contents of `into` with the body bytes.
    pub fn read(&mut self, body: &BodyRef, into: &mut Vec<u8>) -> io::Result<()> {
        let file = self.file(body.segment)?;
        into.clear();
        into.resize(body.len as usize, 0);
        file.read_exact_at(into, body.offset)
    }

    fn file(&mut self, segment: u64) -> io::Result<&File> {
        if let Some(at) = self.files.iter().position(|(s, _)| *s == segment) {
            let entry = self.files.remove(at);
            self.files.push(entry);
        } else {
            let file = File::open(self.dir.join(segment_file_name(segment)))?;
            if self.files.len() == BODY_READER_FILES_MAX {
                self.files.remove(0);
            }
            self.files.push((segment, file));
        }
        Ok(&self.files.last().expect("just pushed").1)
    }
}
