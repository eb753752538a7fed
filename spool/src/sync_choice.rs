//! Where a group commit's fdatasync runs: through io_uring, or on the
//! writer's own thread (a blocking fdatasync).
//! Owns: the rule.
//! May call: nothing but std.
//! Never: I/O (the writer asks, then calls `Storage::sync` or
//! `Storage::sync_inline`).
//!
//! Why: io_uring cannot run an fsync without blocking, so it hands every
//! one to an io-wq worker thread on the shard's core. At one message per
//! batch (a client sending one message at a time) that round trip (the
//! worker woken, asleep on the disk, woken again, the shard woken by its
//! completion) costs about 4 context switches and, on this project's
//! machine, about a fifth of the daemon's CPU per message
//! (docs/benchmarks.md, "Inline fdatasync at low concurrency"). A shard
//! that serves one client at most, and whose batch holds that client's one
//! message, has nothing else to run while it waits, so it may as well wait
//! in the fdatasync itself. A shard with more clients keeps the io_uring
//! path, so its sessions go on during the sync and their records form the
//! next batch (an inline sync would hold them back and keep the batches
//! small). Batches without a message (completions, notes: a shard busy
//! delivering) keep it too. The engine says how to count the clients a
//! shard serves, SMTP sessions and HTTP connections
//! (`Spool::set_client_count`); the spool does not know sessions.

/// Inline only for chunks up to this many bytes: a larger chunk's sync
/// writes back that much and would hold the shard for longer.
pub(crate) const INLINE_CHUNK_BYTES_MAX: u64 = 64 * 1024;

/// Whether a chunk of `chunk_bytes` holding `messages` message records
/// syncs on the writer's thread: allowed by the options (`enabled`), the
/// shard serves at most one client (`single_client`), the chunk holds
/// exactly one message and is small.
pub(crate) fn inline_sync(
    enabled: bool,
    single_client: bool,
    messages: usize,
    chunk_bytes: u64,
) -> bool {
    enabled && single_client && messages == 1 && chunk_bytes <= INLINE_CHUNK_BYTES_MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_client_s_message_syncs_inline() {
        assert!(inline_sync(true, true, 1, 1400));
        assert!(inline_sync(true, true, 1, INLINE_CHUNK_BYTES_MAX));
    }

    #[test]
    fn everything_else_keeps_the_io_uring_path() {
        assert!(!inline_sync(false, true, 1, 1400), "switched off");
        assert!(!inline_sync(true, false, 1, 1400), "several clients");
        assert!(!inline_sync(true, true, 2, 2800), "several messages");
        assert!(!inline_sync(true, true, 0, 48), "completions only");
        assert!(
            !inline_sync(true, true, 1, INLINE_CHUNK_BYTES_MAX + 1),
            "large chunk"
        );
    }
}
