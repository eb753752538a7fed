//! A shard's latency histograms and message rates, kept on the shard.
//!
//! Owns: [`ShardLatency`] (two hdrhistograms, accept and delivery latency,
//! and a short window of counter samples for rates), [`LatencySummary`]
//! and [`Rates`], the plain copies a shard hands to a control request
//! (`ControlRequest::Status`), and the fixed bucket bounds metrics export.
//! May call: hdrhistogram, `stats` (reading a `Figures`). Never: I/O, a
//! lock, another shard's histograms (each shard records into its own, in
//! a `RefCell` of its `ShardEnv`; readers ask the shard for a summary).
//!
//! Accept latency: from a message's final dot to the moment it is durable
//! and routed (what the client waits for its 250). Delivery latency: from
//! reception to a recipient's successful delivery.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::stats::{Counter, Figures};

/// Longest accept latency recorded exactly; longer ones count as this.
pub const ACCEPT_LATENCY_US_MAX: u64 = 3_600_000_000;
/// Longest delivery latency recorded exactly (30 days).
pub const DELIVERY_LATENCY_US_MAX: u64 = 30 * 86_400 * 1_000_000;
/// Significant decimal digits the histograms keep (1% resolution).
const SIGNIFICANT_DIGITS: u8 = 2;
/// Upper bounds (seconds) of the exported accept-latency buckets.
pub const ACCEPT_BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds (seconds) of the exported delivery-latency buckets.
pub const DELIVERY_BUCKETS_S: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    14400.0, 86400.0,
];
/// How often the shard samples its counters for rates.
pub const RATE_SAMPLE_MS: u64 = 1_000;
/// Rates are averaged over this many samples (a 10 s window).
pub const RATE_WINDOW_SAMPLES: usize = 10;

/// One latency histogram and the exact sum of what it holds.
struct Recorder {
    histogram: Histogram<u64>,
    sum_us: u64,
    max_us: u64,
}

impl Recorder {
    fn new(max_us: u64) -> Recorder {
        let histogram = Histogram::new_with_bounds(1, max_us, SIGNIFICANT_DIGITS)
            .expect("valid histogram bounds");
        Recorder {
            histogram,
            sum_us: 0,
            max_us,
        }
    }

    fn record(&mut self, us: u64, count: u64) {
        let us = us.clamp(1, self.max_us);
        self.histogram.saturating_record_n(us, count);
        self.sum_us = self.sum_us.saturating_add(us.saturating_mul(count));
    }

    /// One pass over the recorded values (not over every slot of the
    /// histogram): cumulative bucket counts and percentiles together, so
    /// that answering a status request costs the shard little.
    fn summary(&self, bounds_s: &[f64]) -> LatencySummary {
        let h = &self.histogram;
        let count = h.len();
        let bounds_us: Vec<u64> = bounds_s.iter().map(|b| (b * 1e6) as u64).collect();
        let mut buckets = vec![0u64; bounds_us.len()];
        const QUANTILES: [f64; 4] = [0.50, 0.90, 0.99, 0.999];
        // The rank each percentile needs (at least 1: the smallest value).
        let ranks = QUANTILES.map(|q| ((q * count as f64).ceil() as u64).max(1));
        let mut percentiles = [0u64; 4];
        let mut seen = 0u64;
        for v in h.iter_recorded() {
            let n = v.count_at_value();
            // A slot counts under every bound at or above its lowest value
            // (as `count_between` does); percentiles report its highest
            // (as `value_at_quantile` does).
            let lowest = h.lowest_equivalent(v.value_iterated_to());
            let value = h.highest_equivalent(v.value_iterated_to());
            let first = bounds_us.partition_point(|b| *b < lowest);
            for b in &mut buckets[first..] {
                *b += n;
            }
            for (p, rank) in percentiles.iter_mut().zip(ranks) {
                if seen < rank && seen + n >= rank {
                    *p = value;
                }
            }
            seen += n;
        }
        LatencySummary {
            count,
            sum_us: self.sum_us,
            buckets,
            p50_us: percentiles[0],
            p90_us: percentiles[1],
            p99_us: percentiles[2],
            p999_us: percentiles[3],
            max_us: if count == 0 { 0 } else { h.max() },
        }
    }
}

/// One histogram as a reader sees it: the total count and sum, the
/// cumulative count at each fixed bound, and percentiles (microseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub sum_us: u64,
    /// Cumulative: how many values are at most each bound of the bucket
    /// list it was made for (`ACCEPT_BUCKETS_S` or `DELIVERY_BUCKETS_S`).
    pub buckets: Vec<u64>,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// What the counters gained over the last window (up to
/// `RATE_WINDOW_SAMPLES` seconds): rates without floating point, so that
/// a control reply stays comparable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub window_ms: u64,
    pub received: u64,
    pub delivered: u64,
    pub failed: u64,
    pub transient: u64,
}

impl Rates {
    /// `n` (one of this window's counts) per second; 0 over an empty window.
    pub fn per_s(&self, n: u64) -> f64 {
        if self.window_ms == 0 {
            0.0
        } else {
            n as f64 * 1000.0 / self.window_ms as f64
        }
    }

    /// The sum over shards: counts add, the window is the longest.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Rates>) -> Rates {
        let mut total = Rates::default();
        for r in all {
            // Shards sample at their own instants; their windows differ by
            // at most one sample, and the longest is the fairest divisor.
            total.window_ms = total.window_ms.max(r.window_ms);
            total.received += r.received;
            total.delivered += r.delivered;
            total.failed += r.failed;
            total.transient += r.transient;
        }
        total
    }
}

/// The counters rates are computed from, at one instant.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    received: u64,
    delivered: u64,
    failed: u64,
    transient: u64,
}

/// A shard's histograms and rate window.
pub struct ShardLatency {
    accept: Recorder,
    delivery: Recorder,
    samples: VecDeque<Sample>,
}

impl Default for ShardLatency {
    fn default() -> Self {
        ShardLatency {
            accept: Recorder::new(ACCEPT_LATENCY_US_MAX),
            delivery: Recorder::new(DELIVERY_LATENCY_US_MAX),
            samples: VecDeque::with_capacity(RATE_WINDOW_SAMPLES + 1),
        }
    }
}

impl ShardLatency {
    /// A message was accepted `took` after its final dot.
    pub fn record_accept(&mut self, took: Duration) {
        self.accept.record(took.as_micros() as u64, 1);
    }

    /// `count` recipients were delivered `age_ms` after reception.
    pub fn record_delivery(&mut self, age_ms: u64, count: u64) {
        if count > 0 {
            self.delivery.record(age_ms.saturating_mul(1000), count);
        }
    }

    /// Notes the shard's counters now (every `RATE_SAMPLE_MS`).
    pub fn sample(&mut self, at: Instant, figures: &Figures) {
        if self.samples.len() > RATE_WINDOW_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at,
            received: figures.get(Counter::MessagesReceived),
            delivered: figures.get(Counter::Delivered),
            failed: figures.get(Counter::Failed),
            transient: figures.get(Counter::TransientFailures),
        });
    }

    /// What the counters gained between the oldest and newest sample.
    pub fn rates(&self) -> Rates {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return Rates::default();
        };
        Rates {
            window_ms: last.at.saturating_duration_since(first.at).as_millis() as u64,
            received: last.received.saturating_sub(first.received),
            delivered: last.delivered.saturating_sub(first.delivered),
            failed: last.failed.saturating_sub(first.failed),
            transient: last.transient.saturating_sub(first.transient),
        }
    }

    pub fn accept_summary(&self) -> LatencySummary {
        self.accept.summary(ACCEPT_BUCKETS_S)
    }

    pub fn delivery_summary(&self) -> LatencySummary {
        self.delivery.summary(DELIVERY_BUCKETS_S)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_percentiles_follow_the_values() {
        let mut l = ShardLatency::default();
        for ms in 1..=100u64 {
            l.record_accept(Duration::from_millis(ms));
        }
        let s = l.accept_summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.sum_us, (1..=100u64).sum::<u64>() * 1000);
        assert_eq!(s.buckets.len(), ACCEPT_BUCKETS_S.len());
        assert!(s.buckets.windows(2).all(|w| w[0] <= w[1]), "{s:?}");
        // 1..=10 ms are at most 10 ms; 25 values at most 25 ms.
        let at = |bound: f64| s.buckets[ACCEPT_BUCKETS_S.iter().position(|b| *b == bound).unwrap()];
        assert_eq!(at(0.01), 10);
        assert_eq!(at(0.025), 25);
        assert_eq!(at(10.0), 100);
        assert!((49_000..=51_000).contains(&s.p50_us), "{s:?}");
        assert!((98_000..=101_000).contains(&s.p99_us), "{s:?}");
        assert!(s.max_us >= 99_000);
    }

    #[test]
    fn one_pass_summary_agrees_with_hdrhistograms_own_queries() {
        // Goal: the single pass gives what count_between and
        // value_at_quantile give. Method: random latencies over six
        // decades, both ways.
        let mut rng = ecelerity_testkit::Rng::new(11);
        let mut l = ShardLatency::default();
        for _ in 0..5_000 {
            let decade = 10u64.pow(rng.below(6) as u32 + 1);
            l.record_accept(Duration::from_micros(rng.range(1, decade)));
        }
        let s = l.accept_summary();
        let h = &l.accept.histogram;
        for (bound, got) in ACCEPT_BUCKETS_S.iter().zip(&s.buckets) {
            assert_eq!(
                *got,
                h.count_between(0, (bound * 1e6) as u64),
                "bound {bound}"
            );
        }
        assert_eq!(s.p50_us, h.value_at_quantile(0.5));
        assert_eq!(s.p90_us, h.value_at_quantile(0.9));
        assert_eq!(s.p99_us, h.value_at_quantile(0.99));
        assert_eq!(s.p999_us, h.value_at_quantile(0.999));
    }

    #[test]
    fn empty_histograms_summarise_to_zeroes() {
        let s = ShardLatency::default().delivery_summary();
        assert_eq!(s.count, 0);
        assert_eq!(s.buckets, vec![0; DELIVERY_BUCKETS_S.len()]);
        assert_eq!(s.p99_us, 0);
    }

    #[test]
    fn rates_span_the_window_and_forget_old_samples() {
        let mut l = ShardLatency::default();
        let t0 = Instant::now();
        let mut f = Figures::default();
        assert_eq!(l.rates(), Rates::default());
        for i in 0..=20u64 {
            f.set(Counter::MessagesReceived, i * 50);
            f.set(Counter::Delivered, i * 10);
            l.sample(t0 + Duration::from_secs(i), &f);
        }
        let r = l.rates();
        assert_eq!(r.window_ms, RATE_WINDOW_SAMPLES as u64 * 1000);
        assert!((r.per_s(r.received) - 50.0).abs() < 1e-9, "{r:?}");
        assert!((r.per_s(r.delivered) - 10.0).abs() < 1e-9, "{r:?}");
        let two = Rates::sum([&r, &r]);
        assert!((two.per_s(two.received) - 100.0).abs() < 1e-9, "{two:?}");
        assert!(l.samples.len() <= RATE_WINDOW_SAMPLES + 1);
    }

    #[test]
    fn delivery_latency_counts_each_recipient() {
        let mut l = ShardLatency::default();
        l.record_delivery(2_000, 3);
        l.record_delivery(0, 0);
        let s = l.delivery_summary();
        assert_eq!(s.count, 3);
        assert_eq!(s.sum_us, 6_000_000);
        let at =
            |bound: f64| s.buckets[DELIVERY_BUCKETS_S.iter().position(|b| *b == bound).unwrap()];
        assert_eq!(at(2.5), 3);
        assert_eq!(at(1.0), 0, "2 s is above the 1 s bound");
    }
}
