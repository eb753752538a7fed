//! `GET /api/v1/metrics/deliverability[/domain|/campaign|/template|/binding
//! |/binding-group]` (SparkPost's Metrics API, grant `metrics:view`): the
//! `count_*` sums of every shard's counters (`events::metrics`) over
//! `[from, to)`, optionally grouped and filtered.
//!
//! Owns: the query's parsing (pure: [`parse_query`]), the gather over the
//! shards (a `Metrics` control request, polled like the status page's),
//! and the answer's JSON ([`render`], pure).
//! May call: `control`, `events::metrics`, `api::{keys, ApiError}`.
//! Never: a shard's state directly (each shard answers for its own).

use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response};
use serde_json::{Map, Value};

use super::{authorize, days_from_civil, json_reply, ApiError, Reach};
use crate::control::{ControlReply, ControlRequest};
use crate::events::metrics::{merge, Dimension, Metric, MetricsQuery, MetricsRows};

/// Values one filter (`domains=...`) may list.
pub const METRICS_FILTER_VALUES_MAX: usize = 100;
/// Rows an answer holds at most (`limit`'s default and largest value).
pub const METRICS_ROWS_MAX: usize = 10_000;
/// How long a request waits for every shard's sums.
pub const METRICS_GATHER_TIMEOUT_MS: u64 = 3_000;
/// How often the waiting request looks for the shards' parts.
const METRICS_POLL_MS: u64 = 5;

const BASE: &str = "/api/v1/metrics/deliverability";

type Reply = Response<Full<Bytes>>;

fn bad(description: String) -> ApiError {
    ApiError::new(400, "1200", "invalid params", description)
}

/// A parsed request: what to ask the shards, and how many rows to show.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub query: MetricsQuery,
    pub limit: usize,
}

/// Answers one metrics request.
pub async fn serve<B>(reach: &Reach<'_>, request: Request<B>) -> Result<Reply, ApiError> {
    let config = reach.env.config.get();
    authorize(config.spoolbase(), request.headers(), "metrics:view")?;
    if request.method() != Method::GET {
        return Err(ApiError::new(
            405,
            "1001",
            "method not allowed",
            format!("{} {}", request.method(), request.uri().path()),
        ));
    }
    let now_min = (crate::clock::now_unix_ms() / 60_000) as u32;
    let parsed = parse_query(
        request.uri().path(),
        request.uri().query().unwrap_or(""),
        now_min,
    )?;
    let rows = gather(reach, &parsed.query).await?;
    Ok(json_reply(200, render(&parsed, &rows)))
}

/// Every shard's rows for `query`, added up.
async fn gather(reach: &Reach<'_>, query: &MetricsQuery) -> Result<MetricsRows, ApiError> {
    let unavailable = |e: String| ApiError::new(503, "1901", "service unavailable", e);
    let count = reach.control.shard_count();
    let parts = reach
        .control
        .start(ControlRequest::Metrics(Box::new(query.clone())))
        .map_err(|e| unavailable(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_millis(METRICS_GATHER_TIMEOUT_MS);
    let mut got: Vec<Option<MetricsRows>> = vec![None; count];
    let mut answered = 0;
    while answered < count {
        while let Ok((shard, part)) = parts.try_recv() {
            if let (true, ControlReply::Metrics(rows)) = (shard < count, part) {
                if got[shard].is_none() {
                    got[shard] = Some(rows);
                    answered += 1;
                }
            }
        }
        if answered == count {
            break;
        }
        if Instant::now() >= deadline {
            return Err(unavailable(format!(
                "only {answered} of {count} shards answered in time"
            )));
        }
        glommio::timer::sleep(Duration::from_millis(METRICS_POLL_MS)).await;
    }
    Ok(merge(got.into_iter().flatten(), query.metrics.len()))
}

/// The answer: `{"results": [{"<group field>": name, "count_...": n}]}`;
/// without grouping, one row (zeros when nothing was counted).
pub fn render(parsed: &Parsed, rows: &MetricsRows) -> String {
    let q = &parsed.query;
    let row = |name: Option<&str>, sums: &[u64]| {
        let mut o = Map::new();
        if let (Some(d), Some(name)) = (q.group_by, name) {
            o.insert(d.field().into(), Value::String(name.into()));
        }
        for (m, n) in q.metrics.iter().zip(sums) {
            o.insert(m.name().into(), Value::from(*n));
        }
        Value::Object(o)
    };
    let results: Vec<Value> = match q.group_by {
        None => {
            let zeros = vec![0; q.metrics.len()];
            let sums = rows.first().map_or(&zeros[..], |(_, s)| &s[..]);
            vec![row(None, sums)]
        }
        Some(_) => rows
            .iter()
            .take(parsed.limit)
            .map(|(name, sums)| row(Some(name), sums))
            .collect(),
    };
    serde_json::json!({ "results": results }).to_string()
}

/// Parses the path's grouping and the query string.
pub fn parse_query(path: &str, query: &str, now_min: u32) -> Result<Parsed, ApiError> {
    let path = path.trim_end_matches('/');
    let group_by = match path.strip_prefix(BASE) {
        Some("") => None,
        Some("/domain") => Some(Dimension::Domain),
        Some("/campaign") => Some(Dimension::Campaign),
        Some("/template") => Some(Dimension::Template),
        Some("/binding") => Some(Dimension::Binding),
        Some("/binding-group") => Some(Dimension::BindingGroup),
        _ => {
            return Err(ApiError::new(
                404,
                "1600",
                "resource not found",
                format!("no endpoint {path}"),
            ))
        }
    };
    let mut from = None;
    let mut to = None;
    let mut metrics = None;
    let mut filters: [Vec<String>; 5] = Default::default();
    let mut limit = METRICS_ROWS_MAX;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| bad(format!("{name}: bad escape")))?;
        match name {
            "from" => from = Some(parse_time(&value).ok_or_else(|| bad(time_error("from")))?),
            "to" => to = Some(parse_time(&value).ok_or_else(|| bad(time_error("to")))?),
            "metrics" => {
                let list: Result<Vec<Metric>, ApiError> = list(&value)
                    .map(|n| Metric::parse(n).ok_or_else(|| bad(format!("unknown metric '{n}'"))))
                    .collect();
                metrics = Some(list?);
            }
            "domains" | "campaigns" | "templates" | "bindings" | "binding_groups" => {
                let i = [
                    "domains",
                    "campaigns",
                    "templates",
                    "bindings",
                    "binding_groups",
                ]
                .iter()
                .position(|n| *n == name)
                .expect("listed");
                let values: Vec<String> = list(&value).map(str::to_string).collect();
                if values.len() > METRICS_FILTER_VALUES_MAX {
                    return Err(bad(format!(
                        "{name}: more than {METRICS_FILTER_VALUES_MAX} values"
                    )));
                }
                filters[i] = values;
            }
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=METRICS_ROWS_MAX).contains(n))
                    .ok_or_else(|| bad(format!("limit: 1 to {METRICS_ROWS_MAX}")))?;
            }
            // SparkPost's other parameters (timezone, order_by, ...) are
            // not supported; they are ignored rather than refused.
            _ => {}
        }
    }
    let from_min = from.ok_or_else(|| bad("from is required (YYYY-MM-DDTHH:MM)".into()))?;
    // Without `to`, the current minute is included.
    let to_min = to.unwrap_or(now_min.saturating_add(1));
    if from_min >= to_min {
        return Err(bad("from must be before to".into()));
    }
    let metrics = metrics
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("metrics is required (count_injected,...)".into()))?;
    Ok(Parsed {
        query: MetricsQuery {
            from_min,
            to_min,
            group_by,
            filters,
            metrics,
        },
        limit,
    })
}

fn time_error(name: &str) -> String {
    format!("{name}: expected YYYY-MM-DDTHH:MM (UTC)")
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

/// Unix minutes of SparkPost's `YYYY-MM-DDTHH:MM` (UTC); an RFC 3339 time
/// is taken too.
pub fn parse_time(text: &str) -> Option<u32> {
    if text.len() > 16 {
        return super::parse_rfc3339(text).map(|ms| (ms / 60_000) as u32);
    }
    let b = text.as_bytes();
    if b.len() != 16 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &text[r];
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute) = (num(11..13)?, num(14..16)?);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
    {
        return None;
    }
    let days = days_from_civil(year, month as u32, day as u32);
    u32::try_from(days * 1440 + hour * 60 + minute).ok()
}

/// `%XX` escapes and `+` for a space; `None` for a bad escape or bytes
/// that are not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_parses_with_grouping_filters_and_metrics() {
        let p = parse_query(
            "/api/v1/metrics/deliverability/domain",
            "from=2026-12-03T08:00&to=2026-12-03T09:30&metrics=count_injected,count_clicked\
             &domains=a.example,b.example&campaigns=spring%20sale&limit=5&timezone=UTC",
            0,
        )
        .unwrap();
        let q = &p.query;
        assert_eq!(q.group_by, Some(Dimension::Domain));
        assert_eq!(q.metrics, vec![Metric::Injected, Metric::Clicked]);
        assert_eq!(q.filters[0], vec!["a.example", "b.example"]);
        assert_eq!(q.filters[1], vec!["spring sale"]);
        assert_eq!(q.to_min - q.from_min, 90);
        assert_eq!(u64::from(q.from_min) * 60, 1_796_284_800);
        assert_eq!(p.limit, 5);
    }

    #[test]
    fn bad_queries_get_sparkposts_errors() {
        let base = "/api/v1/metrics/deliverability";
        let status = |path: &str, query: &str| parse_query(path, query, 100).unwrap_err().status;
        assert_eq!(status(base, "metrics=count_injected"), 400, "no from");
        assert_eq!(status(base, "from=1970-01-01T00:00"), 400, "no metrics");
        assert_eq!(status(base, "from=1970-01-01T00:00&metrics=count_x"), 400);
        assert_eq!(
            status(base, "from=2026-13-01T00:00&metrics=count_sent"),
            400
        );
        assert_eq!(
            status(
                base,
                "from=1970-01-01T01:00&to=1970-01-01T00:00&metrics=count_sent"
            ),
            400
        );
        assert_eq!(
            status(
                &format!("{base}/link-name"),
                "from=1970-01-01T00:00&metrics=count_sent"
            ),
            404
        );
        let many = vec!["d"; METRICS_FILTER_VALUES_MAX + 1].join(",");
        assert_eq!(
            status(
                base,
                &format!("from=1970-01-01T00:00&metrics=count_sent&domains={many}")
            ),
            400
        );
        let p = parse_query(base, "from=1970-01-01T00:00&metrics=count_sent", 100).unwrap();
        assert_eq!(
            p.query.to_min, 101,
            "to defaults to now, this minute included"
        );
    }

    #[test]
    fn answers_render_grouped_and_whole() {
        let mut p = parse_query(
            "/api/v1/metrics/deliverability/campaign",
            "from=1970-01-01T00:00&metrics=count_injected,count_clicked",
            100,
        )
        .unwrap();
        let rows = vec![("spring".to_string(), vec![2, 1])];
        assert_eq!(
            render(&p, &rows),
            r#"{"results":[{"campaign_id":"spring","count_clicked":1,"count_injected":2}]}"#
        );
        p.query.group_by = None;
        assert_eq!(
            render(&p, &Vec::new()),
            r#"{"results":[{"count_clicked":0,"count_injected":0}]}"#
        );
    }

    #[test]
    fn percent_decoding_refuses_bad_escapes() {
        assert_eq!(percent_decode("a%2Cb+c").as_deref(), Some("a,b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
