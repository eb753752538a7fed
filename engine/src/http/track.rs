//! The engagement-tracking endpoints, on every HTTP_Listener, for any Host
//! and without an API key (docs/engagement.md): `GET /q/<token>` answers a
//! 1x1 transparent GIF and records an `open`; `GET /f/<token>` and
//! `/f/<sublink>/<token>` answer 302 to the token's target and record a
//! `click` (SparkPost's `track_event` grouping, through the shard's event
//! log, so webhooks get them, and into its metrics). HEAD is GET without
//! the body.
//!
//! A token that does not open under the daemon's secret (forged, altered,
//! cut, another key), is malformed, or is of the other kind than its path
//! says is answered 404 with no redirect and no event, counted in
//! `track_refused`. A genuine token past its `tracking_link_expiry` is
//! answered as usual (the redirect, the GIF) without an event, counted in
//! `track_expired`, as msggen's docs say.
//!
//! Owns: the answers (pure: [`answer`]) and the event of a request.
//! May call: `events` (the shard's log), `api::tracking` (the secret),
//! `stats`, msggen's `tracking`. Never: queues, the spool, an await (a
//! request is answered at once).

use std::net::IpAddr;

use ecelerity_msggen::tracking::{parse_path, Token, TokenError, TokenKind, TrackingKey};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::clock::now_unix_ms;
use crate::env::ShardEnv;
use crate::events::TrackEvent;
use crate::stats::Counter;

/// Longest request path looked at (a longer one is answered 414); the
/// request head limit (`HTTP_REQUEST_HEAD_BYTES_MAX`) is the outer bound.
pub const TRACK_PATH_BYTES_MAX: usize = 12 * 1024;
/// Bytes of `User-Agent` kept in an event (cut at a character boundary).
pub const TRACK_USER_AGENT_BYTES_MAX: usize = 1024;
/// Bytes of `Accept-Language` kept in an event.
pub const TRACK_ACCEPT_LANGUAGE_BYTES_MAX: usize = 256;

/// A 1x1 transparent GIF (GIF89a, one transparent colour), 43 bytes.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

type Reply = Response<Full<Bytes>>;

/// Whether `path` is one the tracking endpoints answer (`/q/...`, `/f/...`).
pub fn is_tracking_path(path: &str) -> bool {
    path.starts_with("/q/") || path.starts_with("/f/")
}

/// What a tracking request gets, decided without I/O.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The token opened: answer and record its event.
    Record(Token),
    /// Expired: answer as usual, no event.
    Expired(Token),
    /// 404, counted.
    Refused(&'static str),
    /// 414.
    TooLong,
    /// 405.
    Method,
}

/// Decides the answer to `method path` at `now` (unix seconds).
pub fn answer(key: Option<&TrackingKey>, method: &Method, path: &str, now: u64) -> Answer {
    if method != Method::GET && method != Method::HEAD {
        return Answer::Method;
    }
    if path.len() > TRACK_PATH_BYTES_MAX {
        return Answer::TooLong;
    }
    let Some(parsed) = parse_path(path) else {
        return Answer::Refused("not a tracking path");
    };
    let Some(key) = key else {
        return Answer::Refused("no tracking secret loaded");
    };
    let token = match key.decode(parsed.token.as_bytes(), now) {
        Ok(t) => Answer::Record(t),
        Err(TokenError::Expired(t)) => Answer::Expired(*t),
        Err(_) => return Answer::Refused("token does not open"),
    };
    let (Answer::Record(t) | Answer::Expired(t)) = &token else {
        unreachable!()
    };
    if t.kind != parsed.kind {
        return Answer::Refused("token of the other kind");
    }
    if t.kind == TokenKind::Click && !redirectable(&t.target_url) {
        return Answer::Refused("target is not an http(s) URL");
    }
    token
}

/// An absolute http(s) URL that fits in a header.
fn redirectable(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://"))
        && HeaderValue::from_str(url).is_ok()
}

/// Answers a tracking request on this shard (and records its event).
pub fn serve<B>(env: &ShardEnv, request: &Request<B>, peer: Option<IpAddr>) -> Reply {
    let now = now_unix_ms() / 1000;
    let path = request.uri().path();
    match answer(crate::api::tracking::key(), request.method(), path, now) {
        Answer::Record(token) => {
            record(env, &token, request.headers(), peer, now);
            success(&token)
        }
        Answer::Expired(token) => {
            env.stats().add(Counter::TrackExpired, 1);
            success(&token)
        }
        Answer::Refused(why) => {
            env.stats().add(Counter::TrackRefused, 1);
            tracing::debug!("tracking request refused: {why}");
            plain(StatusCode::NOT_FOUND, "404 Not Found\n")
        }
        Answer::TooLong => plain(StatusCode::URI_TOO_LONG, "414 URI Too Long\n"),
        Answer::Method => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
            r.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
    }
}

/// The redirect or the pixel, never cached.
fn success(token: &Token) -> Reply {
    let mut r = match token.kind {
        TokenKind::Open => {
            let mut r = Response::new(Full::new(Bytes::from_static(&PIXEL_GIF)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("image/gif"),
            );
            r
        }
        TokenKind::Click => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::FOUND;
            let location = HeaderValue::from_str(&token.target_url).expect("checked by answer");
            r.headers_mut().insert(hyper::header::LOCATION, location);
            r
        }
    };
    let h = r.headers_mut();
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate, max-age=0"),
    );
    h.insert(hyper::header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(hyper::header::EXPIRES, HeaderValue::from_static("0"));
    r
}

fn plain(status: StatusCode, body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A header's text, cut to `max` bytes at a character boundary (lossy
/// for bytes that are not UTF-8).
fn header_text(headers: &HeaderMap, name: hyper::header::HeaderName, max: usize) -> String {
    let Some(v) = headers.get(name) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(v.as_bytes());
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Writes the open or click event of `token` and counts it.
fn record(env: &ShardEnv, token: &Token, headers: &HeaderMap, peer: Option<IpAddr>, now: u64) {
    let user_agent = header_text(
        headers,
        hyper::header::USER_AGENT,
        TRACK_USER_AGENT_BYTES_MAX,
    );
    let accept_language = header_text(
        headers,
        hyper::header::ACCEPT_LANGUAGE,
        TRACK_ACCEPT_LANGUAGE_BYTES_MAX,
    );
    let ip = peer
        .map(|ip| ip.to_canonical().to_string())
        .unwrap_or_default();
    // Sealed by us, but only an object goes into the line as it is.
    let meta_ok = token.metadata.starts_with('{')
        && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&token.metadata)
            .is_ok();
    let (kind, counter) = match token.kind {
        TokenKind::Open => ("open", Counter::TrackOpens),
        TokenKind::Click => ("click", Counter::TrackClicks),
    };
    let events = &env.events;
    let e = TrackEvent {
        kind,
        event_id: events.next_id(),
        unix_secs: now,
        message_id: &token.message_id,
        transmission_id: &token.transmission_id,
        campaign_id: &token.campaign_id,
        rcpt_to: &token.recipient,
        rcpt_meta: if meta_ok { &token.metadata } else { "" },
        user_agent: &user_agent,
        accept_language: &accept_language,
        ip_address: &ip,
        target_link_url: &token.target_url,
        target_link_name: &token.link_name,
    };
    events.record_track(&e);
    env.stats().add(counter, 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecelerity_msggen::tracking::Link;

    fn key() -> TrackingKey {
        TrackingKey::new(&[7u8; 32]).unwrap()
    }

    fn token(key: &TrackingKey, kind: TokenKind, target: &str, expires_at: u64) -> String {
        let link = Link {
            kind,
            expires_at,
            target_url: target,
            link_name: "buy",
            transmission_id: "42",
            message_id: "00/00-1-2",
            recipient: "a@example.com",
            campaign_id: "spring",
            metadata: "{\"k\":\"v\"}",
            ..Link::default()
        };
        let mut out = Vec::new();
        key.encode(&link, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn genuine_tokens_are_recorded_and_others_refused() {
        let k = key();
        let click = token(&k, TokenKind::Click, "https://example.com/x?y=1", 2000);
        let open = token(&k, TokenKind::Open, "", 2000);
        let get = Method::GET;
        let ok = |a: Answer| matches!(a, Answer::Record(_));
        assert!(ok(answer(Some(&k), &get, &format!("/f/{click}"), 1000)));
        assert!(ok(answer(
            Some(&k),
            &get,
            &format!("/f/promo/{click}"),
            1000
        )));
        assert!(ok(answer(
            Some(&k),
            &Method::HEAD,
            &format!("/q/{open}"),
            1000
        )));
        assert!(matches!(
            answer(Some(&k), &get, &format!("/f/{click}"), 3000),
            Answer::Expired(_)
        ));
        let refused = |p: &str| matches!(answer(Some(&k), &get, p, 1000), Answer::Refused(_));
        assert!(refused(&format!("/q/{click}")), "wrong kind");
        assert!(refused(&format!("/f/{open}")), "wrong kind");
        let mut bad = click.clone().into_bytes();
        bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
        assert!(refused(&format!("/f/{}", String::from_utf8(bad).unwrap())));
        assert!(refused("/f/"));
        assert!(refused("/f/a/b/c"));
        let other = TrackingKey::new(&[8u8; 32]).unwrap();
        assert!(matches!(
            answer(Some(&other), &get, &format!("/f/{click}"), 1000),
            Answer::Refused(_)
        ));
        assert!(matches!(
            answer(None, &get, &format!("/f/{click}"), 1000),
            Answer::Refused(_)
        ));
        let js = token(&k, TokenKind::Click, "javascript:alert(1)", 2000);
        assert!(refused(&format!("/f/{js}")));
        assert_eq!(
            answer(Some(&k), &Method::POST, &format!("/f/{click}"), 1000),
            Answer::Method
        );
        let long = format!("/f/{}", "A".repeat(TRACK_PATH_BYTES_MAX));
        assert_eq!(answer(Some(&k), &get, &long, 1000), Answer::TooLong);
    }

    #[test]
    fn the_pixel_is_a_gif_and_the_redirect_has_no_cache() {
        assert!(PIXEL_GIF.starts_with(b"GIF89a") && PIXEL_GIF.ends_with(b";"));
        let t = Token {
            kind: TokenKind::Click,
            target_url: "https://example.com/".into(),
            ..Token::default()
        };
        let r = success(&t);
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()["location"], "https://example.com/");
        assert!(r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store"));
    }
}
