//! Pure renderers of the engine's status: Prometheus text format
//! (`/metrics`), JSON (`/api/v1/status`) and the console's `shards`.
//!
//! Owns: [`StatusView`] (every shard's counters and `Status` part) and the
//! metric names: `ecelerity_<counter>` for every entry of the `stats`
//! table (counters end in `_total`), labelled `shard="N"` per shard and
//! `shard="total"` for the sum; `ecelerity_queue_active` and
//! `ecelerity_queue_delayed` per (binding_group, binding, domain);
//! `ecelerity_accept_latency_seconds` and
//! `ecelerity_delivery_latency_seconds` histograms with the fixed buckets
//! of `latency`.
//! May call: `stats`, `latency`, `control` (types), serde_json. Never: I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::control::{ControlReply, QueueRow, ShardStatus};
use crate::latency::{LatencySummary, Rates, ACCEPT_BUCKETS_S, DELIVERY_BUCKETS_S};
use crate::stats::{Counter, Figures, Kind};

/// One shard as the renderers see it.
#[derive(Debug, Clone, Default)]
pub struct ShardView {
    pub figures: Figures,
    pub status: ShardStatus,
}

/// The whole engine.
#[derive(Debug, Clone, Default)]
pub struct StatusView {
    pub uptime_secs: u64,
    pub shards: Vec<ShardView>,
}

impl StatusView {
    fn total_figures(&self) -> Figures {
        Figures::sum(self.shards.iter().map(|s| &s.figures))
    }

    fn total_rates(&self) -> Rates {
        Rates::sum(self.shards.iter().map(|s| &s.status.rates))
    }

    fn total_latency(&self, pick: fn(&ShardStatus) -> &LatencySummary) -> LatencySummary {
        sum_latency(self.shards.iter().map(|s| pick(&s.status)))
    }

    /// Every queue, the shards' parts of each added up, in key order.
    fn queues(&self) -> Vec<QueueRow> {
        let mut merged: BTreeMap<(String, String, String), QueueRow> = BTreeMap::new();
        for row in self.shards.iter().flat_map(|s| &s.status.queues) {
            let key = (
                row.binding_group.clone(),
                row.binding.clone(),
                row.domain.clone(),
            );
            let entry = merged.entry(key).or_insert_with(|| QueueRow {
                active: 0,
                delayed: 0,
                suspended: false,
                ..row.clone()
            });
            entry.active += row.active;
            entry.delayed += row.delayed;
            entry.suspended |= row.suspended;
        }
        merged.into_values().collect()
    }
}

/// Sum of histograms with the same buckets (percentiles: the largest of
/// the parts, an upper bound; the exact ones are per shard).
fn sum_latency<'a>(parts: impl Iterator<Item = &'a LatencySummary>) -> LatencySummary {
    let mut total = LatencySummary::default();
    for p in parts {
        total.count += p.count;
        total.sum_us += p.sum_us;
        if total.buckets.len() < p.buckets.len() {
            total.buckets.resize(p.buckets.len(), 0);
        }
        for (t, v) in total.buckets.iter_mut().zip(&p.buckets) {
            *t += v;
        }
        total.p50_us = total.p50_us.max(p.p50_us);
        total.p90_us = total.p90_us.max(p.p90_us);
        total.p99_us = total.p99_us.max(p.p99_us);
        total.p999_us = total.p999_us.max(p.p999_us);
        total.max_us = total.max_us.max(p.max_us);
    }
    total
}

/// The Prometheus name of a counter from the `stats` table: counters end
/// in `_total`; a counter whose stem would be a gauge's name (the gauge
/// `inbound_connections` and the counter `inbound_connections_total`)
/// gets `_accepted` before `_total`, so no two families share a name.
pub fn metric_name(counter: Counter) -> String {
    let name = counter.name();
    match counter.kind() {
        Kind::Gauge => format!("ecelerity_{name}"),
        Kind::Counter => {
            let stem = name.strip_suffix("_total").unwrap_or(name);
            let clashes = Counter::ALL
                .iter()
                .any(|c| c.kind() == Kind::Gauge && c.name() == stem);
            if clashes {
                format!("ecelerity_{stem}_accepted_total")
            } else {
                format!("ecelerity_{stem}_total")
            }
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `s` in seconds as Prometheus writes a number.
fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// A bucket bound as Prometheus clients write it (`1.0`, `0.005`).
fn le_label(bound: f64) -> String {
    if bound.fract() == 0.0 {
        format!("{bound:.1}")
    } else {
        format!("{bound}")
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    parts: &[(String, LatencySummary)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (shard, h) in parts {
        for (i, bound) in bounds.iter().enumerate() {
            let n = h.buckets.get(i).copied().unwrap_or(0);
            let le = le_label(*bound);
            let _ = writeln!(out, "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {}", seconds(h.sum_us));
        let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {}", h.count);
    }
}

/// `/metrics`: Prometheus text exposition format 0.0.4.
pub fn prometheus(view: &StatusView) -> String {
    let mut out = String::with_capacity(4096);
    let _ = writeln!(out, "# HELP ecelerity_up 1 while the daemon serves.");
    let _ = writeln!(out, "# TYPE ecelerity_up gauge\necelerity_up 1");
    let _ = writeln!(
        out,
        "# HELP ecelerity_uptime_seconds Seconds since the engine started."
    );
    let _ = writeln!(out, "# TYPE ecelerity_uptime_seconds gauge");
    let _ = writeln!(out, "ecelerity_uptime_seconds {}", view.uptime_secs);
    let _ = writeln!(
        out,
        "# HELP ecelerity_shards Shards (one event loop per core)."
    );
    let _ = writeln!(out, "# TYPE ecelerity_shards gauge");
    let _ = writeln!(out, "ecelerity_shards {}", view.shards.len());
    let total = view.total_figures();
    for &counter in Counter::ALL {
        let name = metric_name(counter);
        let kind = match counter.kind() {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {name} {}", counter.help());
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (i, s) in view.shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", s.figures.get(counter));
        }
        let _ = writeln!(out, "{name}{{shard=\"total\"}} {}", total.get(counter));
    }
    let queues = view.queues();
    for (side, help) in [
        (
            "active",
            "Entries in the active queue of a (binding, domain).",
        ),
        (
            "delayed",
            "Entries in the delayed queue of a (binding, domain).",
        ),
    ] {
        let name = format!("ecelerity_queue_{side}");
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for q in &queues {
            let n = if side == "active" {
                q.active
            } else {
                q.delayed
            };
            let _ = writeln!(
                out,
                "{name}{{binding_group=\"{}\",binding=\"{}\",domain=\"{}\"}} {n}",
                label(&q.binding_group),
                label(&q.binding),
                label(&q.domain)
            );
        }
    }
    let with_total = |pick: fn(&ShardStatus) -> &LatencySummary| {
        let mut parts: Vec<(String, LatencySummary)> = view
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (i.to_string(), pick(&s.status).clone()))
            .collect();
        parts.push(("total".into(), view.total_latency(pick)));
        parts
    };
    histogram(
        &mut out,
        "ecelerity_accept_latency_seconds",
        "From a message's final dot to its 250 (spooled, fdatasync'd and routed).",
        ACCEPT_BUCKETS_S,
        &with_total(|s| &s.accept),
    );
    histogram(
        &mut out,
        "ecelerity_delivery_latency_seconds",
        "From reception to a recipient's delivery.",
        DELIVERY_BUCKETS_S,
        &with_total(|s| &s.delivery),
    );
    out
}

fn counters_json(figures: &Figures) -> Value {
    let mut map = Map::new();
    for &c in Counter::ALL {
        map.insert(c.name().to_string(), json!(figures.get(c)));
    }
    Value::Object(map)
}

fn rates_json(r: &Rates) -> Value {
    json!({
        "window_seconds": r.window_ms as f64 / 1000.0,
        "received_per_second": r.per_s(r.received),
        "delivered_per_second": r.per_s(r.delivered),
        "failed_per_second": r.per_s(r.failed),
        "transient_failures_per_second": r.per_s(r.transient),
    })
}

fn latency_json(h: &LatencySummary, bounds: &[f64]) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    let buckets: Vec<Value> = bounds
        .iter()
        .enumerate()
        .map(|(i, b)| json!({"le": b, "count": h.buckets.get(i).copied().unwrap_or(0)}))
        .collect();
    json!({
        "count": h.count,
        "sum_seconds": seconds(h.sum_us),
        "p50_ms": ms(h.p50_us),
        "p90_ms": ms(h.p90_us),
        "p99_ms": ms(h.p99_us),
        "p999_ms": ms(h.p999_us),
        "max_ms": ms(h.max_us),
        "buckets": buckets,
    })
}

fn queue_sizes(queues: &[QueueRow]) -> (u64, u64) {
    queues
        .iter()
        .fold((0, 0), |(a, d), q| (a + q.active, d + q.delayed))
}

/// `/api/v1/status`.
pub fn status_json(view: &StatusView) -> String {
    let shards: Vec<Value> = view
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (active, delayed) = queue_sizes(&s.status.queues);
            json!({
                "shard": i,
                "counters": counters_json(&s.figures),
                "rates": rates_json(&s.status.rates),
                "queues": {"active": active, "delayed": delayed, "count": s.status.queues.len()},
                "accept_latency": latency_json(&s.status.accept, ACCEPT_BUCKETS_S),
                "delivery_latency": latency_json(&s.status.delivery, DELIVERY_BUCKETS_S),
            })
        })
        .collect();
    let queues = view.queues();
    let (active, delayed) = queue_sizes(&queues);
    let queue_rows: Vec<Value> = queues
        .iter()
        .map(|q| {
            json!({
                "binding_group": q.binding_group,
                "binding": q.binding,
                "domain": q.domain,
                "active": q.active,
                "delayed": q.delayed,
                "suspended": q.suspended,
            })
        })
        .collect();
    let total = json!({
        "counters": counters_json(&view.total_figures()),
        "rates": rates_json(&view.total_rates()),
        "queues": {"active": active, "delayed": delayed, "count": queues.len()},
        "accept_latency": latency_json(&view.total_latency(|s| &s.accept), ACCEPT_BUCKETS_S),
        "delivery_latency": latency_json(&view.total_latency(|s| &s.delivery), DELIVERY_BUCKETS_S),
    });
    let doc = json!({
        "version": crate::VERSION,
        "uptime_seconds": view.uptime_secs,
        "shard_count": view.shards.len(),
        "total": total,
        "shards": shards,
        "queues": queue_rows,
    });
    doc.to_string()
}

/// Console `shards`: one line per shard and a total: rates over the last
/// window, queue sizes and accept-latency percentiles.
pub fn render_shards(parts: &[ControlReply]) -> String {
    let statuses: Vec<&ShardStatus> = parts
        .iter()
        .filter_map(|p| match p {
            ControlReply::Status(s) => Some(&**s),
            _ => None,
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5} {:>10} {:>11} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10}",
        "Shard",
        "Recv/s",
        "Deliv/s",
        "Fail/s",
        "Active",
        "Delayed",
        "Acc p50",
        "Acc p99",
        "Acc p99.9"
    );
    let ms = |us: u64| format!("{:.2}ms", us as f64 / 1000.0);
    let line = |out: &mut String, name: &str, r: &Rates, q: (u64, u64), h: &LatencySummary| {
        let _ = writeln!(
            out,
            "{name:>5} {:>10.1} {:>11.1} {:>8.1} {:>8} {:>8} {:>9} {:>9} {:>10}",
            r.per_s(r.received),
            r.per_s(r.delivered),
            r.per_s(r.failed),
            q.0,
            q.1,
            ms(h.p50_us),
            ms(h.p99_us),
            ms(h.p999_us),
        );
    };
    for (i, s) in statuses.iter().enumerate() {
        line(
            &mut out,
            &i.to_string(),
            &s.rates,
            queue_sizes(&s.queues),
            &s.accept,
        );
    }
    let rates = Rates::sum(statuses.iter().map(|s| &s.rates));
    let (mut a, mut d) = (0, 0);
    for s in &statuses {
        let (sa, sd) = queue_sizes(&s.queues);
        a += sa;
        d += sd;
    }
    let accept = sum_latency(statuses.iter().map(|s| &s.accept));
    line(&mut out, "total", &rates, (a, d), &accept);
    let _ = writeln!(
        out,
        "Rates over the last {:.0} s; accept latency: final dot to 250 (total percentiles: the highest shard's).",
        rates.window_ms as f64 / 1000.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::ShardLatency;

    fn view() -> StatusView {
        let mut a = ShardView::default();
        a.figures.set(Counter::MessagesReceived, 3);
        a.figures.set(Counter::ActiveQueue, 2);
        let mut latency = ShardLatency::default();
        latency.record_accept(std::time::Duration::from_millis(3));
        a.status.accept = latency.accept_summary();
        a.status.delivery = latency.delivery_summary();
        a.status.queues.push(QueueRow {
            binding_group: "default".into(),
            binding: "default".into(),
            domain: "ex\"ample.com".into(),
            active: 2,
            delayed: 1,
            suspended: false,
        });
        let mut b = a.clone();
        b.figures.set(Counter::MessagesReceived, 4);
        StatusView {
            uptime_secs: 9,
            shards: vec![a, b],
        }
    }

    #[test]
    fn metrics_have_per_shard_and_total_samples_and_escaped_labels() {
        let text = prometheus(&view());
        assert!(
            text.contains("ecelerity_messages_received_total{shard=\"0\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("ecelerity_messages_received_total{shard=\"1\"} 4\n"));
        assert!(text.contains("ecelerity_messages_received_total{shard=\"total\"} 7\n"));
        assert!(text.contains("# TYPE ecelerity_active_queue gauge\n"));
        assert!(text.contains("# TYPE ecelerity_inbound_connections gauge\n"));
        assert!(text.contains("# TYPE ecelerity_inbound_connections_accepted_total counter\n"));
        assert!(text.contains(
            "ecelerity_queue_active{binding_group=\"default\",binding=\"default\",domain=\"ex\\\"ample.com\"} 4\n"
        ), "{text}");
        // 3 ms is in the 5 ms bucket, not the 2.5 ms one, on each shard.
        assert!(
            text.contains("ecelerity_accept_latency_seconds_bucket{shard=\"0\",le=\"0.0025\"} 0\n")
        );
        assert!(
            text.contains("ecelerity_accept_latency_seconds_bucket{shard=\"0\",le=\"0.005\"} 1\n")
        );
        assert!(text
            .contains("ecelerity_accept_latency_seconds_bucket{shard=\"total\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("ecelerity_accept_latency_seconds_count{shard=\"total\"} 2\n"));
        assert!(text.contains("ecelerity_delivery_latency_seconds_count{shard=\"1\"} 0\n"));
    }

    #[test]
    fn json_status_sums_queues_and_counters() {
        let doc: Value = serde_json::from_str(&status_json(&view())).unwrap();
        assert_eq!(doc["shard_count"], 2);
        assert_eq!(doc["total"]["counters"]["messages_received"], 7);
        assert_eq!(doc["shards"][1]["counters"]["messages_received"], 4);
        assert_eq!(doc["queues"][0]["domain"], "ex\"ample.com");
        assert_eq!(doc["queues"][0]["active"], 4);
        assert_eq!(doc["total"]["queues"]["delayed"], 2);
        assert_eq!(doc["total"]["accept_latency"]["count"], 2);
        let p50 = doc["shards"][0]["accept_latency"]["p50_ms"]
            .as_f64()
            .unwrap();
        assert!((2.9..=3.1).contains(&p50), "{p50}");
    }

    #[test]
    fn shards_table_has_a_line_per_shard_and_a_total() {
        let parts: Vec<ControlReply> = view()
            .shards
            .into_iter()
            .map(|s| ControlReply::Status(Box::new(s.status)))
            .collect();
        let text = render_shards(&parts);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("Shard"), "{text}");
        assert!(lines[1].trim_start().starts_with("0 "), "{text}");
        assert!(lines[2].trim_start().starts_with("1 "), "{text}");
        assert!(lines[3].trim_start().starts_with("total"), "{text}");
        assert!(
            lines[3].contains(" 4 ") && lines[3].contains(" 2 "),
            "{text}"
        );
        assert!(lines[1].contains("3.0"), "{text}");
    }
}
