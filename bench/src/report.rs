//! Result types shared by the generator, the sink and the scenarios:
//! latency summaries from hdrhistogram, value distributions (`1024` or
//! `1024:70,10240:30`) and text rendering.
//! Owns: the JSON shape of every ecbench report.
//! May call: hdrhistogram, serde.
//! Never: sockets or processes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records, in microseconds (10 minutes).
pub const LATENCY_US_MAX: u64 = 600_000_000;
/// Significant decimal digits kept by every latency histogram.
const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;
/// Points kept from a histogram for a CDF plot.
const CDF_POINTS: usize = 60;

/// A new latency histogram in microseconds.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, HISTOGRAM_SIGNIFICANT_DIGITS)
        .expect("static histogram bounds are valid")
}

/// Record one latency, clamped into the histogram's range.
pub fn record_us(histogram: &mut Histogram<u64>, us: u64) {
    let _ = histogram.record(us.clamp(1, LATENCY_US_MAX));
}

/// Percentiles of one latency histogram, in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// (quantile, microseconds) pairs for a CDF plot.
    pub cdf: Vec<(f64, u64)>,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let mut cdf = Vec::with_capacity(CDF_POINTS + 1);
        for i in 0..=CDF_POINTS {
            // Dense near the tail: q = 1 - 10^(-4 i / N).
            let q = 1.0 - 10f64.powf(-4.0 * i as f64 / CDF_POINTS as f64);
            let q = if i == 0 { 0.0 } else { q };
            cdf.push((q, h.value_at_quantile(q)));
        }
        cdf.push((1.0, h.max()));
        LatencySummary {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            cdf,
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            fmt_us(self.max_us),
            self.count
        )
    }
}

/// "850us", "12.3ms", "1.20s".
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// A fixed value or a weighted choice: `10` or `1:80,10:20` (value:weight).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    pub choices: Vec<(u64, u32)>,
}

impl Dist {
    pub fn fixed(value: u64) -> Dist {
        Dist {
            choices: vec![(value, 1)],
        }
    }

    pub fn parse(text: &str) -> Result<Dist, String> {
        let mut choices = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let (value, weight) = match part.split_once(':') {
                Some((v, w)) => (v, w),
                None => (part, "1"),
            };
            let value = parse_size(value)?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("bad weight in `{part}`"))?;
            if weight == 0 {
                return Err(format!("zero weight in `{part}`"));
            }
            choices.push((value, weight));
        }
        if choices.is_empty() {
            return Err("empty distribution".into());
        }
        Ok(Dist { choices })
    }

    pub fn values(&self) -> Vec<u64> {
        self.choices.iter().map(|c| c.0).collect()
    }

    /// Index of the choice drawn by `roll` (any u64).
    pub fn pick_index(&self, roll: u64) -> usize {
        let total: u64 = self.choices.iter().map(|c| c.1 as u64).sum();
        let mut r = roll % total;
        for (i, c) in self.choices.iter().enumerate() {
            if r < c.1 as u64 {
                return i;
            }
            r -= c.1 as u64;
        }
        self.choices.len() - 1
    }
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = if self.choices.len() == 1 {
            vec![self.choices[0].0.to_string()]
        } else {
            self.choices
                .iter()
                .map(|(v, w)| format!("{v}:{w}"))
                .collect()
        };
        f.write_str(&parts.join(","))
    }
}

/// `1024`, `10k`, `10KiB`, `1m` → bytes (k = 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (digits, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1024),
        Some('m') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .map(|v| v * mult)
        .map_err(|_| format!("bad number `{text}`"))
}

/// What one load run (client side) saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub target: String,
    pub sessions: usize,
    pub size_bytes: String,
    pub recipients: String,
    /// Open-loop rate asked for, messages/s; None = closed loop.
    pub rate_per_s: Option<f64>,
    pub new_connection_per_message: bool,
    pub elapsed_s: f64,
    /// Messages whose body was sent (DATA end reached).
    pub sent: u64,
    /// Messages answered 250 after DATA.
    pub accepted: u64,
    /// Recipients of accepted messages that were accepted.
    pub recipients_accepted: u64,
    /// Messages that failed (any reason).
    pub failed: u64,
    pub bytes_accepted: u64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    /// Open loop: messages that started more than 1 ms behind schedule.
    pub late_starts: u64,
    /// From end of DATA (final ".") to the 250.
    pub accept_latency: LatencySummary,
    /// Error counts by reply code ("451", "550") or kind ("connect", "io", "timeout").
    pub errors: BTreeMap<String, u64>,
}

impl LoadReport {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let mode = match self.rate_per_s {
            Some(r) => format!("open loop at {r:.0} msgs/s"),
            None => "closed loop".into(),
        };
        let _ = writeln!(
            s,
            "load -> {}: {} sessions, {mode}, size {} B, recipients {}{}",
            self.target,
            self.sessions,
            self.size_bytes,
            self.recipients,
            if self.new_connection_per_message {
                ", new connection per message"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "  sent {} accepted {} failed {} in {:.2}s: {:.0} msgs/s, {:.2} MB/s",
            self.sent, self.accepted, self.failed, self.elapsed_s, self.msgs_per_s, self.mb_per_s
        );
        let _ = writeln!(
            s,
            "  accept latency (DATA end -> 250): {}",
            self.accept_latency.one_line()
        );
        if self.late_starts > 0 {
            let _ = writeln!(
                s,
                "  late starts (open loop fell behind): {}",
                self.late_starts
            );
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "  errors: {:?}", self.errors);
        }
        s
    }
}

/// What a sink saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SinkReport {
    pub connections: u64,
    /// Transactions answered 250 after DATA.
    pub messages: u64,
    /// Recipients accepted in those transactions.
    pub recipients: u64,
    pub bytes: u64,
    pub rcpt_rejected_5xx: u64,
    pub rcpt_deferred_4xx: u64,
    /// Seconds from the sink's reset to its last arrival.
    pub last_arrival_s: f64,
    /// From the X-Ecbench-Ts header to end of DATA at the sink.
    pub end_to_end_latency: LatencySummary,
}

impl SinkReport {
    pub fn text(&self) -> String {
        format!(
            "sink: {} connections, {} messages, {} recipients, {} bytes; rcpt 5xx {} 4xx {}\n  end-to-end latency: {}\n",
            self.connections,
            self.messages,
            self.recipients,
            self.bytes,
            self.rcpt_rejected_5xx,
            self.rcpt_deferred_4xx,
            self.end_to_end_latency.one_line()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributions_parse_fixed_and_weighted_values() {
        assert_eq!(Dist::parse("10").unwrap(), Dist::fixed(10));
        let d = Dist::parse("1:80,10:20").unwrap();
        assert_eq!(d.values(), vec![1, 10]);
        assert_eq!(d.pick_index(79), 0);
        assert_eq!(d.pick_index(80), 1);
        assert_eq!(Dist::parse("10k").unwrap(), Dist::fixed(10240));
        assert!(Dist::parse("1:0").is_err());
        assert!(Dist::parse("x").is_err());
    }

    #[test]
    fn summary_orders_percentiles() {
        let mut h = latency_histogram();
        for v in 1..=10_000u64 {
            record_us(&mut h, v);
        }
        let s = LatencySummary::from_histogram(&h);
        assert!(s.p50_us <= s.p90_us && s.p90_us <= s.p99_us && s.p99_us <= s.max_us);
        assert_eq!(s.count, 10_000);
        assert!(s.cdf.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
