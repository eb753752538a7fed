//! A fixed-size latency histogram (quarter-octave buckets of
//! microseconds), for the spool's own commit timing: no allocation after
//! creation, O(1) to record.
//! Owns: its counts. May call: nothing. Never: I/O.

/// Buckets per doubling of the latency.
const BUCKETS_PER_OCTAVE: u32 = 4;
/// Enough buckets for any u64 microseconds.
const BUCKETS: usize = 64 * BUCKETS_PER_OCTAVE as usize;

/// Counts of latencies by quarter-octave bucket.
#[derive(Clone)]
pub struct LatencyHistogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} p50={}us p99={}us p99.9={}us",
            self.total,
            self.quantile_us(0.5),
            self.quantile_us(0.99),
            self.quantile_us(0.999)
        )
    }
}

/// Below 4 us a bucket per microsecond (buckets 0-3); from there four
/// per octave (bucket 8 is 4 us).
fn bucket_of(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros();
    let frac = (us >> (octave - 2)) & 3;
    (octave * BUCKETS_PER_OCTAVE) as usize + frac as usize
}

/// The largest microseconds that fall into `bucket` (upper bound).
fn upper_us(bucket: usize) -> u64 {
    if bucket < 4 {
        return bucket as u64;
    }
    let octave = bucket as u32 / BUCKETS_PER_OCTAVE;
    let frac = bucket as u64 % BUCKETS_PER_OCTAVE as u64;
    let base = 1u64 << octave;
    base + (frac + 1) * (base / 4) - 1
}

impl LatencyHistogram {
    pub fn record(&mut self, us: u64) {
        self.counts[bucket_of(us)] += 1;
        self.total += 1;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The bucket bound below which a fraction `q` of the samples fall
    /// (0 when empty); at most a quarter octave above the true quantile.
    pub fn quantile_us(&self, q: f64) -> u64 {
        assert!((0.0..=1.0).contains(&q), "a fraction");
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper_us(bucket);
            }
        }
        unreachable!("rank <= total")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_their_values() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = bucket_of(us);
            assert!(b >= last, "monotonic at {us}");
            last = b;
            assert!(
                upper_us(b) >= us,
                "{us} above its bucket's bound {}",
                upper_us(b)
            );
            assert!(upper_us(b) <= us + us / 4 + 1, "bound of {us} too loose");
        }
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let mut h = LatencyHistogram::default();
        for us in 1..=1000 {
            h.record(us);
        }
        let p50 = h.quantile_us(0.5);
        assert!((500..=640).contains(&p50), "p50 {p50}");
        let p99 = h.quantile_us(0.99);
        assert!((990..=1280).contains(&p99), "p99 {p99}");
        assert_eq!(LatencyHistogram::default().quantile_us(0.99), 0);
    }
}
