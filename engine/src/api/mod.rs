//! The REST API on the HTTP_Listener (Momentum 4's message generation,
//! SparkPost's shapes): API keys, `POST /api/v1/transmissions` (inline
//! content or `email_rfc822`, inline recipients) and `GET
//! /api/v1/transmissions[/<id>]`.
//!
//! Owns: the `/api/v1/...` routes other than `/api/v1/status`, request
//! authentication ([`keys`]), SparkPost's error shape ([`ApiError`]), the
//! per-shard generation of a transmission's messages ([`generate`]), the
//! transmission records (`<spoolbase>/transmissions/<id>.json`), and the
//! event fields a generated message carries ([`event_fields`], stored in
//! the spool envelope under [`TAG_EVENT_FIELDS`]).
//! May call: `message` (admit, spool, withdraw, log receptions, entries),
//! `mesh` (route entries), `events` (sandbox injection events), `config`.
//! Never: queues, the network, another shard's state.

pub mod generate;
pub mod keys;
pub mod metrics;
pub mod mime;
pub mod personal;
pub mod recipient_lists;
pub mod store;
pub mod templates;
pub mod tracking;
pub mod transmission;
pub mod webhooks;

use std::fmt::Write as _;

use serde_json::{Map, Value};

pub use generate::ShardApi;

/// Spool envelope extension: the event fields of a generated message
/// (JSON members, each starting with a comma; see [`event_fields`]).
pub const TAG_EVENT_FIELDS: u16 = 16;
/// Spool envelope extension: no delivery attempt before this time (unix
/// ms, 8 bytes little-endian): a transmission's `start_time`.
pub const TAG_NOT_BEFORE: u16 = 17;

/// Answers a request under `/api/v1/`; `working` is set from the moment
/// its body has arrived until it is answered (the connection's watchdog
/// then waits for it: a transmission's spooling may take longer than the
/// request timeout, a slow client's upload may not).
pub async fn serve(
    api: &std::rc::Rc<ShardApi>,
    reach: &Reach<'_>,
    request: hyper::Request<hyper::body::Incoming>,
    working: &std::cell::Cell<bool>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    struct Working<'a>(&'a std::cell::Cell<bool>);
    impl Drop for Working<'_> {
        fn drop(&mut self) {
            self.0.set(false);
        }
    }
    let _working = Working(working);
    // Engagement: the metrics and webhooks API (docs/engagement.md).
    let path = request.uri().path();
    if path == "/api/v1/metrics" || path.starts_with("/api/v1/metrics/") {
        return metrics::serve(reach, request)
            .await
            .unwrap_or_else(|e| reply(&e));
    }
    if path == "/api/v1/webhooks" || path.starts_with("/api/v1/webhooks/") {
        return webhooks::serve(reach, request)
            .await
            .unwrap_or_else(|e| reply(&e));
    }
    api.handle(request, working).await
}

/// What the metrics and webhooks API reach besides the request: the
/// shard's environment (configuration, spool base) and the control plane
/// (to ask every shard).
pub struct Reach<'a> {
    pub env: &'a std::rc::Rc<crate::env::ShardEnv>,
    pub control: &'a crate::control::ControlHandle,
}

/// A JSON answer.
pub fn json_reply(
    status: u16,
    body: String,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    let mut r = hyper::Response::new(http_body_util::Full::new(body.into()));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn reply(e: &ApiError) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    json_reply(e.status, e.json())
}

/// Checks the request's API key for `grant`: 401 without a known key, 403
/// without the grant (SparkPost's shapes).
pub fn authorize(
    spoolbase: &std::path::Path,
    headers: &hyper::HeaderMap,
    grant: &str,
) -> Result<(), ApiError> {
    let presented = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match keys::store(spoolbase).check(presented, grant) {
        keys::Access::Granted(_) => Ok(()),
        keys::Access::Unknown => Err(ApiError::new(
            401,
            "1000",
            "Unauthorized.",
            "an API key is required in the Authorization header".into(),
        )),
        keys::Access::Forbidden(name) => Err(ApiError::new(
            403,
            "1100",
            "Forbidden.",
            format!("API key '{name}' lacks the grant {grant}"),
        )),
    }
}

/// What a spooled envelope says for delivery: its event fields (shared by
/// its queue entries) and the time before which it is not tried (0:
/// none).
pub fn generated_parts(
    envelope: &crate::queue::record::SpooledEnvelope,
) -> (Option<std::sync::Arc<str>>, u64) {
    let fields = envelope
        .extension(TAG_EVENT_FIELDS)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(std::sync::Arc::from);
    let not_before = envelope
        .extension(TAG_NOT_BEFORE)
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    (fields, not_before)
}

/// An error in SparkPost's shape:
/// `{"errors": [{"message", "code", "description"}]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
    pub description: String,
}

impl ApiError {
    pub fn new(
        status: u16,
        code: &'static str,
        message: &'static str,
        description: String,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message,
            description,
        }
    }

    pub fn json(&self) -> String {
        serde_json::json!({"errors": [{
            "message": self.message,
            "code": self.code,
            "description": self.description,
        }]})
        .to_string()
    }
}

/// What a generated message's events carry besides the engine's fields.
pub struct EventFields<'a> {
    pub transmission_id: &'a str,
    pub campaign_id: Option<&'a str>,
    /// The stored template the content came from (`content.template_id`).
    pub template_id: Option<&'a str>,
    pub rcpt_meta: &'a Map<String, Value>,
    pub rcpt_tags: &'a [String],
    /// `rest` or `esmtp`.
    pub recv_method: &'a str,
    pub sandbox: bool,
}

/// The event fields as JSON members, each starting with a comma, in the
/// order every event line shows them.
pub fn event_fields(f: &EventFields<'_>) -> String {
    let mut out = String::new();
    let s = |v: &str| Value::String(v.to_string()).to_string();
    let _ = write!(out, ",\"transmission_id\":{}", s(f.transmission_id));
    if let Some(c) = f.campaign_id {
        let _ = write!(out, ",\"campaign_id\":{}", s(c));
    }
    if let Some(t) = f.template_id {
        let _ = write!(out, ",\"template_id\":{}", s(t));
    }
    let _ = write!(out, ",\"rcpt_meta\":{}", Value::Object(f.rcpt_meta.clone()));
    let _ = write!(out, ",\"rcpt_tags\":{}", serde_json::json!(f.rcpt_tags));
    let _ = write!(out, ",\"recv_method\":{}", s(f.recv_method));
    if f.sandbox {
        out.push_str(",\"sandbox\":\"true\"");
    }
    out
}

/// Transmission metadata with a recipient's on top (the recipient wins).
pub fn merged_metadata(transmission: &Map<String, Value>, rcpt: &Map<String, Value>) -> String {
    merged(transmission, rcpt).to_string()
}

pub fn merged(transmission: &Map<String, Value>, rcpt: &Map<String, Value>) -> Value {
    let mut m = transmission.clone();
    for (k, v) in rcpt {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-12-03T22:00:00Z` of a unix time.
pub fn rfc3339(unix_secs: u64) -> String {
    let secs = unix_secs as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

/// Unix milliseconds of an RFC 3339 time (`2026-12-03T08:00:00-05:00`,
/// `...Z`, fractions of a second allowed), or `None`.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        if at == start {
            return None;
        }
        let frac = &text[start..at.min(start + 3)];
        millis = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_secs = match &text[at..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && matches!(tz.as_bytes()[0], b'+' | b'-')
            && tz.as_bytes()[3] == b':' =>
        {
            let h = num(at + 1..at + 3)?;
            let m = num(at + 4..at + 6)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    u64::try_from(secs * 1000 + millis).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_fields_carry_the_template_for_the_metrics_labels() {
        let meta: Map<String, Value> = serde_json::from_str(r#"{"u":"1"}"#).unwrap();
        let mut f = EventFields {
            transmission_id: "7",
            campaign_id: Some("spring"),
            template_id: Some("news \"v2\""),
            rcpt_meta: &meta,
            rcpt_tags: &[],
            recv_method: "rest",
            sandbox: false,
        };
        let text = event_fields(&f);
        assert_eq!(
            text,
            r#","transmission_id":"7","campaign_id":"spring","template_id":"news \"v2\"","rcpt_meta":{"u":"1"},"rcpt_tags":[],"recv_method":"rest""#
        );
        let member = |t: &str, n: &str| crate::events::generation_member(t, n).into_owned();
        assert_eq!(member(&text, "template_id"), "news \"v2\"");
        assert_eq!(member(&text, "campaign_id"), "spring");
        f.template_id = None;
        assert_eq!(member(&event_fields(&f), "template_id"), "");
    }

    #[test]
    fn rfc3339_times_read_and_written() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-12-03T08:00:00-05:00"),
            Some(1_796_302_800_000)
        );
        assert_eq!(
            parse_rfc3339("2026-12-03T13:00:00.25+00:00"),
            Some(1_796_302_800_250)
        );
        for bad in [
            "2026-13-03T08:00:00Z",
            "2026-12-03 08:00",
            "tomorrow",
            "2026-12-03T08:00:00+5",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(rfc3339(1_796_302_800), "2026-12-03T13:00:00Z");
    }

    #[test]
    fn errors_have_sparkposts_shape() {
        let e = ApiError::new(
            422,
            "1400",
            "required field is missing",
            "content is required".into(),
        );
        assert_eq!(
            e.json(),
            r#"{"errors":[{"code":"1400","description":"content is required","message":"required field is missing"}]}"#
        );
    }
}
