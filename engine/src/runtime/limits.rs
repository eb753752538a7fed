//! Process limits the runtime sizes itself by: glommio registers its
//! `io_memory` three times per executor, and as any user but root all of
//! it must fit the locked-memory limit (`ulimit -l`).
//!
//! Owns: [`io_memory_bytes`]. May call: libc's getrlimit. Never: anything
//! else.

/// glommio's default registered I/O memory per executor; we use less when
/// the locked-memory limit would not fit 3 x this per shard.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 10 << 20;
/// Least registered I/O memory we ask for.
pub const IO_MEMORY_BYTES_MIN: usize = 256 << 10;

/// Registered I/O memory per executor that fits the locked-memory limit:
/// glommio registers `io_memory` three times per executor, and as any user
/// but root all of it must fit `ulimit -l`. Returns (bytes, limit_bytes).
pub fn io_memory_bytes(shards: usize) -> (usize, Option<u64>) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    if !ok || limit.rlim_cur == libc::RLIM_INFINITY {
        return (IO_MEMORY_BYTES_DEFAULT, None);
    }
    let per_shard = (limit.rlim_cur as usize) / (3 * shards.max(1));
    let bytes =
        (per_shard / (64 << 10) * (64 << 10)).clamp(IO_MEMORY_BYTES_MIN, IO_MEMORY_BYTES_DEFAULT);
    (bytes, Some(limit.rlim_cur))
}
