//! The spool's own io_uring for its fdatasync (the spool ring).
//! Owns: one small io_uring per spool and the eventfd its completions
//! signal.
//! May call: the io-uring crate (submission), glommio (an io_uring read of
//! the eventfd, so the writer task sleeps like any other glommio task).
//! Never: decide what to sync or when (that is the writer in `spool`).
//!
//! Why a ring of its own: an fdatasync handed to glommio is only queued in
//! glommio's submission queue; the kernel sees it at the executor's next
//! reactor turn, after the task queue that is running (sessions, delivery)
//! has used up its slice. Here the submission is an `io_uring_enter` at
//! once, so the sync starts as soon as the batch is written, ahead of
//! whatever else the shard has to do; its completion signals an eventfd
//! that a glommio read waits on.

use std::io;
use std::os::unix::io::{FromRawFd, RawFd};

use glommio::io::BufferedFile;
use io_uring::{opcode, types, IoUring};

/// Submission queue entries of the spool ring: one sync is in flight at a
/// time (the writer waits for it), the rest is slack.
const SPOOL_RING_ENTRIES: u32 = 4;
/// Bytes of one eventfd read (the counter is a u64).
const EVENTFD_READ_BYTES: usize = 8;

/// One spool's ring (see the module comment).
pub(crate) struct SyncRing {
    ring: IoUring,
    /// The eventfd registered with `ring`, read through glommio.
    wake: BufferedFile,
    /// user_data of the last submitted sync; completions of earlier ones
    /// (a dropped wait) are skipped.
    sequence: u64,
}

impl SyncRing {
    /// A new ring with its eventfd. Fails where io_uring is unavailable
    /// (the caller then syncs through glommio).
    pub(crate) fn new() -> io::Result<SyncRing> {
        let ring = IoUring::new(SPOOL_RING_ENTRIES)?;
        // Blocking eventfd: io_uring then waits for it by polling instead
        // of failing the read with EAGAIN.
        // SAFETY: plain syscall with constant flags.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Err(err) = ring.submitter().register_eventfd(efd) {
            // SAFETY: `efd` was just created and is owned here.
            unsafe { libc::close(efd) };
            return Err(err);
        }
        // SAFETY: `efd` is a fresh descriptor owned by nothing else; the
        // BufferedFile closes it.
        let wake = unsafe { BufferedFile::from_raw_fd(efd) };
        Ok(SyncRing {
            ring,
            wake,
            sequence: 0,
        })
    }

    /// fdatasync of `fd`, submitted to the kernel before this returns its
    /// first Pending; resolves when the kernel completed it.
    pub(crate) async fn fdatasync(&mut self, fd: RawFd) -> io::Result<()> {
        self.sequence += 1;
        let want = self.sequence;
        let sqe = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(want);
        // SAFETY: the entry refers to no memory, only to `fd`, which the
        // caller keeps open until the sync completed (the writer awaits
        // this before anything closes the segment).
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("spool ring submission queue full"))?;
        loop {
            match self.ring.submit() {
                Ok(_) => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        }
        loop {
            // Read first: a sync takes far longer than this takes to get
            // here, and each completion signals the eventfd once, so a
            // read never finds a count left over from an earlier sync.
            self.wake
                .read_at(0, EVENTFD_READ_BYTES)
                .await
                .map_err(io::Error::from)?;
            while let Some(cqe) = self.ring.completion().next() {
                if cqe.user_data() != want {
                    continue;
                }
                let res = cqe.result();
                return if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(())
                };
            }
        }
    }

    /// Closes the eventfd through glommio (the ring goes with `self`).
    pub(crate) async fn close(self) {
        let _ = self.wake.close().await;
    }
}
