//! Per-shard counters the console reads.
//!
//! Each shard writes only its own [`ShardStats`] (single writer: a relaxed
//! load and store, no read-modify-write, no lock) and the console, on any
//! thread, reads every shard's. Each block is cache-padded so two shards
//! never share a line.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crossbeam::utils::CachePadded;

/// Counters and gauges of one shard.
#[derive(Default, Debug)]
pub struct ShardStats {
    pub inbound_connections: AtomicU64,
    pub inbound_connections_total: AtomicU64,
    pub outbound_connections: AtomicU64,
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub rejections: AtomicU64,
    /// Recipients delivered by this shard's queues.
    pub delivered: AtomicU64,
    /// Recipients failed permanently by this shard's queues.
    pub failed: AtomicU64,
    /// Transient failures (each is retried).
    pub transient_failures: AtomicU64,
    pub active_queue: AtomicU64,
    pub delayed_queue: AtomicU64,
    pub spool_segments: AtomicU64,
    pub spool_syncs: AtomicU64,
    /// Messages this shard spooled that are not yet fully delivered.
    pub live_messages: AtomicU64,
}

impl ShardStats {
    /// Adds `n` to a counter this shard owns (single writer).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).saturating_sub(n), Relaxed);
    }
    pub fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Relaxed);
    }
}

/// Every shard's counters, shared read-only with the console.
#[derive(Debug)]
pub struct EngineStats {
    pub shards: Vec<CachePadded<ShardStats>>,
    pub started: Instant,
}

impl EngineStats {
    pub fn new(shard_count: usize) -> Arc<EngineStats> {
        Arc::new(EngineStats {
            shards: (0..shard_count)
                .map(|_| CachePadded::new(ShardStats::default()))
                .collect(),
            started: Instant::now(),
        })
    }
}
