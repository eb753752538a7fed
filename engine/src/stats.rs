//! Per-shard counters and gauges, in one schema.
//!
//! Owns: the [`Counter`] table (name, kind, help text: the only place a
//! counter is declared), each shard's block of values ([`ShardStats`]) and
//! the engine-wide array of blocks ([`EngineStats`]), and [`Figures`], a
//! plain copy of one block that the console (and later the HTTP metrics)
//! render by walking the table.
//! May call: std and crossbeam's `CachePadded`. Never: shard state; a
//! read-modify-write atomic or a lock.
//!
//! Each shard writes only its own block (single writer: a relaxed load and
//! store), and any thread may read every block. Blocks are cache-padded so
//! two shards never share a line.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crossbeam::utils::CachePadded;

/// Whether a value only grows (a counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

macro_rules! counters {
    ($($variant:ident => $name:literal, $kind:ident, $help:literal;)*) => {
        /// Every value a shard publishes. The discriminant is its index in
        /// a block.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter { $($variant,)* }

        impl Counter {
            /// Every counter, in schema order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// Snake-case name, as metrics and tests use it.
            pub fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }

            pub fn kind(self) -> Kind {
                match self { $(Counter::$variant => Kind::$kind,)* }
            }

            pub fn help(self) -> &'static str {
                match self { $(Counter::$variant => $help,)* }
            }
        }
    };
}

counters! {
    InboundConnections => "inbound_connections", Gauge, "Open inbound SMTP connections.";
    InboundConnectionsTotal => "inbound_connections_total", Counter, "Inbound SMTP connections accepted.";
    OutboundConnections => "outbound_connections", Gauge, "Open (or opening) outbound SMTP connections.";
    MessagesReceived => "messages_received", Counter, "Messages received and spooled.";
    BytesReceived => "bytes_received", Counter, "Bytes read from inbound SMTP clients.";
    Rejections => "rejections", Counter, "4xx/5xx replies sent to inbound clients.";
    Delivered => "delivered", Counter, "Recipients delivered by this shard's queues.";
    Failed => "failed", Counter, "Recipients failed permanently by this shard's queues.";
    TransientFailures => "transient_failures", Counter, "Transient delivery failures (each is retried).";
    ActiveQueue => "active_queue", Gauge, "Entries in this shard's active queues.";
    DelayedQueue => "delayed_queue", Gauge, "Entries in this shard's delayed queue.";
    SpoolSegments => "spool_segments", Gauge, "Segment files in this shard's spool.";
    SpoolSyncs => "spool_syncs", Counter, "fdatasync calls of this shard's spool.";
    SpoolInlineSyncs => "spool_inline_syncs", Counter, "Of spool_syncs, those made on the shard's thread (one client on the shard).";
    HttpConnections => "http_connections", Gauge, "Open HTTP_Listener connections on this shard.";
    LiveMessages => "live_messages", Gauge, "Messages spooled here and not yet final.";
    DkimMessagesProcessed => "dkim_messages_processed", Counter, "Messages opendkim_sign asked to sign.";
    DkimMessagesSigned => "dkim_messages_signed", Counter, "Messages given a DKIM-Signature.";
    DkimSigningFailures => "dkim_signing_failures", Counter, "Messages to sign that could not be (no signer for the From domain, no header to sign, a key error).";
    DkimSigningMicros => "dkim_signing_us", Counter, "Microseconds spent hashing and signing for DKIM.";
    ActiveDomains => "active_domains", Gauge, "Queues (binding, domain) of this shard holding a message.";
    DnsAQueries => "dns_a_queries", Counter, "DNS A questions sent to nameservers.";
    DnsMxQueries => "dns_mx_queries", Counter, "DNS MX questions sent to nameservers.";
    DnsPending => "dns_pending", Gauge, "DNS questions waiting for an answer.";
    ShardTicks => "shard_ticks", Counter, "Clock ticks of this shard (the systemd watchdog checks they move).";
    WebhookEndpoints => "webhook_endpoints", Gauge, "Configured webhook endpoints (shard 0 only).";
    WebhookEndpointsFailing => "webhook_endpoints_failing", Gauge, "Webhook endpoints whose last POST failed (shard 0 only).";
    WebhookEventsSent => "webhook_events_sent", Counter, "Events accepted by webhook endpoints (shard 0 only).";
    WebhookPostFailures => "webhook_post_failures", Counter, "Webhook POSTs that failed: no connection, timeout or non-2xx (shard 0 only).";
    WebhookBacklogBytes => "webhook_backlog_bytes", Gauge, "Event log bytes not yet sent, over every webhook endpoint (shard 0 only).";
    WebhookBytesSkipped => "webhook_bytes_skipped", Counter, "Event log bytes skipped because an endpoint lagged more than its max_backlog_bytes (shard 0 only).";
    TrackOpens => "track_opens", Counter, "Open pixels fetched with a valid token (open events recorded).";
    TrackClicks => "track_clicks", Counter, "Tracked links followed with a valid token (click events recorded).";
    TrackRefused => "track_refused", Counter, "Tracking requests refused with 404: a forged, altered, malformed or wrong-kind token.";
    TrackExpired => "track_expired", Counter, "Tracking requests with an expired token: answered without an event.";
}

/// How many values a block holds.
pub const COUNTERS: usize = Counter::ALL.len();

/// One shard's values. Written only by that shard.
#[derive(Debug)]
pub struct ShardStats {
    values: [AtomicU64; COUNTERS],
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            values: [const { AtomicU64::new(0) }; COUNTERS],
        }
    }
}

impl ShardStats {
    /// Adds `n` (single writer: no read-modify-write needed).
    pub fn add(&self, counter: Counter, n: u64) {
        let v = &self.values[counter as usize];
        v.store(v.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn sub(&self, counter: Counter, n: u64) {
        let v = &self.values[counter as usize];
        v.store(v.load(Relaxed).saturating_sub(n), Relaxed);
    }

    pub fn set(&self, counter: Counter, n: u64) {
        self.values[counter as usize].store(n, Relaxed);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Relaxed)
    }

    /// A plain copy, for rendering.
    pub fn figures(&self) -> Figures {
        Figures(std::array::from_fn(|i| self.values[i].load(Relaxed)))
    }
}

/// A copy of one block (or the sum of several).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures(pub [u64; COUNTERS]);

impl Default for Figures {
    fn default() -> Self {
        Figures([0; COUNTERS])
    }
}

impl Figures {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    pub fn set(&mut self, counter: Counter, n: u64) {
        self.0[counter as usize] = n;
    }

    /// The element-wise sum.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Figures>) -> Figures {
        let mut total = Figures::default();
        for f in all {
            for (t, v) in total.0.iter_mut().zip(f.0) {
                *t = t.wrapping_add(v);
            }
        }
        total
    }
}

/// Every shard's block, shared read-only with the console.
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

    /// The sum of one value over every shard.
    pub fn total(&self, counter: Counter) -> u64 {
        self.shards.iter().map(|s| s.get(counter)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indices_follow_the_table() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert!(Counter::ALL[i + 1..].iter().all(|o| o.name() != c.name()));
        }
    }

    #[test]
    fn single_writer_arithmetic_and_sums() {
        let s = ShardStats::default();
        s.add(Counter::Delivered, 3);
        s.sub(Counter::Delivered, 1);
        s.sub(Counter::Failed, 5);
        s.set(Counter::ActiveQueue, 9);
        let f = s.figures();
        assert_eq!(f.get(Counter::Delivered), 2);
        assert_eq!(f.get(Counter::Failed), 0, "a gauge never goes below zero");
        let total = Figures::sum([&f, &f]);
        assert_eq!(total.get(Counter::ActiveQueue), 18);
    }
}
