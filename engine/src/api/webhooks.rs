//! `POST/GET /api/v1/webhooks`, `GET/PUT/DELETE /api/v1/webhooks/<id>`
//! (SparkPost's Webhooks API; grants `webhooks:modify` and
//! `webhooks:view`): webhooks made at run time, posted to by the same
//! sender as the `webhook` stanzas (`events::webhook`: batches from the
//! event log, a cursor file each, kept across restarts).
//!
//! Owns: the webhook records (`<spoolbase>/webhooks.json`, a JSON array
//! written atomically like `api_keys`: a crash leaves the old file or the
//! new one), their checks (pure: [`check`]), and feeding the active ones
//! to `events::webhook::REGISTRY` after every change and at start.
//! May call: `events::webhook` (the registry, cursors), `config` (event
//! names, the target parser), `api::{keys, ApiError}`.
//! Never: a shard's state; the network (the sender thread posts).
//!
//! Why a file rather than SQLite: at most [`WEBHOOKS_MAX`] small records,
//! read once at start and rewritten whole on a change (rare, an operator's
//! act), as the API keys are; no worker thread or schema to keep.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, Response};
use serde_json::{json, Map, Value};

use super::{authorize, json_reply, keys::write_atomically, ApiError, Reach};
use crate::config::{parse_webhook_target, WEBHOOK_EVENT_GROUPINGS, WEBHOOK_EVENT_TYPES};
use crate::events::webhook::{self, Endpoint, API_ENDPOINT_PREFIX, REGISTRY};

/// The records' file under the spool base.
pub const WEBHOOKS_FILE: &str = "webhooks.json";
/// Webhooks the API keeps at most.
pub const WEBHOOKS_MAX: usize = 100;
/// Largest request body read.
pub const WEBHOOK_REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;
pub const WEBHOOK_NAME_BYTES_MAX: usize = 1024;
pub const WEBHOOK_TARGET_BYTES_MAX: usize = 2048;
pub const WEBHOOK_AUTH_TOKEN_BYTES_MAX: usize = 1024;
/// Events (types and groupings) one webhook may list.
pub const WEBHOOK_EVENTS_MAX: usize = 64;
/// Events per POST of an API webhook (the stanzas' default).
pub const API_WEBHOOK_BATCH_SIZE: usize = crate::config::WEBHOOK_BATCH_SIZE_DEFAULT as usize;
/// Backlog an API webhook may have (the stanzas' default).
pub const API_WEBHOOK_BACKLOG_BYTES: u64 = crate::config::WEBHOOK_BACKLOG_BYTES_DEFAULT;

type Reply = Response<Full<Bytes>>;

/// One webhook, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// 32 hex digits.
    pub id: String,
    pub name: String,
    pub target: String,
    pub events: Vec<String>,
    pub auth_token: Option<String>,
    pub active: bool,
}

impl Webhook {
    fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("name".into(), json!(self.name));
        o.insert("target".into(), json!(self.target));
        o.insert("events".into(), json!(self.events));
        o.insert(
            "auth_type".into(),
            json!(if self.auth_token.is_some() {
                "token"
            } else {
                "none"
            }),
        );
        if let Some(t) = &self.auth_token {
            o.insert("auth_token".into(), json!(t));
        }
        o.insert("active".into(), json!(self.active));
        Value::Object(o)
    }

    /// The sender's endpoint (named `api-<id>`).
    pub fn endpoint(&self) -> Endpoint {
        let (host, port, path) = parse_webhook_target(&self.target).expect("checked");
        Endpoint {
            name: format!("{API_ENDPOINT_PREFIX}{}", self.id),
            host,
            port,
            path,
            events: self.events.clone(),
            auth_token: self.auth_token.clone(),
            batch_size: API_WEBHOOK_BATCH_SIZE,
            max_backlog_bytes: API_WEBHOOK_BACKLOG_BYTES,
        }
    }
}

fn invalid(description: String) -> ApiError {
    ApiError::new(422, "1300", "invalid data format/type", description)
}

fn missing(field: &str) -> ApiError {
    ApiError::new(
        422,
        "1400",
        "required field is missing",
        format!("{field} is required"),
    )
}

/// A webhook from a request body: `base` is the one a PUT changes (its
/// fields stay where the body has none); `None` for a POST, where name,
/// target and events are required.
pub fn check(body: &Value, id: &str, base: Option<&Webhook>) -> Result<Webhook, ApiError> {
    let o = body
        .as_object()
        .ok_or_else(|| invalid("the body must be a JSON object".into()))?;
    let text = |field: &str, max: usize| -> Result<Option<String>, ApiError> {
        match o.get(field) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(Some(s.clone())),
            Some(_) => Err(invalid(format!(
                "{field} must be a string of 1 to {max} bytes"
            ))),
        }
    };
    let name = match (text("name", WEBHOOK_NAME_BYTES_MAX)?, base) {
        (Some(n), _) => n,
        (None, Some(b)) => b.name.clone(),
        (None, None) => return Err(missing("name")),
    };
    let target = match (text("target", WEBHOOK_TARGET_BYTES_MAX)?, base) {
        (Some(t), _) => {
            parse_webhook_target(&t).map_err(|e| invalid(format!("target: {e}")))?;
            t
        }
        (None, Some(b)) => b.target.clone(),
        (None, None) => return Err(missing("target")),
    };
    let events = match (o.get("events"), base) {
        (Some(v), _) => check_events(v)?,
        (None, Some(b)) => b.events.clone(),
        (None, None) => return Err(missing("events")),
    };
    let auth_token = match o.get("auth_token") {
        None => base.and_then(|b| b.auth_token.clone()),
        Some(Value::Null) => None,
        Some(Value::String(t))
            if t.len() <= WEBHOOK_AUTH_TOKEN_BYTES_MAX
                && t.bytes().all(|b| b.is_ascii_graphic() || b == b' ') =>
        {
            (!t.is_empty()).then(|| t.clone())
        }
        Some(_) => {
            return Err(invalid(format!(
                "auth_token must be printable ASCII, at most {WEBHOOK_AUTH_TOKEN_BYTES_MAX} bytes"
            )))
        }
    };
    let active = match o.get("active") {
        None => base.is_none_or(|b| b.active),
        Some(Value::Bool(a)) => *a,
        Some(_) => return Err(invalid("active must be true or false".into())),
    };
    Ok(Webhook {
        id: id.to_string(),
        name,
        target,
        events,
        auth_token,
        active,
    })
}

fn check_events(v: &Value) -> Result<Vec<String>, ApiError> {
    let known = || {
        WEBHOOK_EVENT_TYPES
            .iter()
            .chain(WEBHOOK_EVENT_GROUPINGS)
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let list = v
        .as_array()
        .filter(|a| !a.is_empty() && a.len() <= WEBHOOK_EVENTS_MAX)
        .ok_or_else(|| {
            invalid(format!(
                "events must be a list of 1 to {WEBHOOK_EVENTS_MAX} of: {}",
                known()
            ))
        })?;
    let mut events: Vec<String> = Vec::new();
    for e in list {
        let name = e.as_str().unwrap_or("");
        let ok = WEBHOOK_EVENT_TYPES
            .iter()
            .chain(WEBHOOK_EVENT_GROUPINGS)
            .any(|k| *k == name);
        if !ok {
            return Err(invalid(format!("unknown event '{e}'; known: {}", known())));
        }
        if !events.iter().any(|x| x == name) {
            events.push(name.to_string());
        }
    }
    Ok(events)
}

/// The records, process-wide (every shard's API changes the one set).
pub struct WebhookStore {
    path: PathBuf,
    hooks: Mutex<Arc<Vec<Webhook>>>,
}

static STORE: OnceLock<WebhookStore> = OnceLock::new();

/// Reads the records and hands the active ones to the sender. Called once
/// at start, before the sender starts; a damaged file stops the start.
pub fn load_at_start(spoolbase: &Path) -> Result<(), String> {
    let path = spoolbase.join(WEBHOOKS_FILE);
    let hooks = match std::fs::read_to_string(&path) {
        Ok(text) => parse_file(&text).map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    publish(&hooks);
    let _ = STORE.set(WebhookStore {
        path,
        hooks: Mutex::new(Arc::new(hooks)),
    });
    Ok(())
}

fn store(spoolbase: &Path) -> &'static WebhookStore {
    STORE.get_or_init(|| WebhookStore {
        path: spoolbase.join(WEBHOOKS_FILE),
        hooks: Mutex::new(Arc::new(Vec::new())),
    })
}

/// The file's records (what [`render_file`] wrote).
pub fn parse_file(text: &str) -> Result<Vec<Webhook>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let list = v.as_array().ok_or("not a JSON array")?;
    list.iter()
        .map(|h| {
            let id = h.get("id").and_then(Value::as_str).unwrap_or("");
            if !valid_id(id) {
                return Err(format!("bad id '{id}'"));
            }
            check(h, id, None).map_err(|e| format!("webhook {id}: {}", e.description))
        })
        .collect()
}

pub fn render_file(hooks: &[Webhook]) -> String {
    let list: Vec<Value> = hooks.iter().map(Webhook::to_json).collect();
    let mut text = serde_json::to_string_pretty(&list).expect("JSON serialises");
    text.push('\n');
    text
}

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn publish(hooks: &[Webhook]) {
    REGISTRY.replace(
        hooks
            .iter()
            .filter(|h| h.active)
            .map(Webhook::endpoint)
            .collect(),
    );
}

impl WebhookStore {
    fn current(&self) -> Arc<Vec<Webhook>> {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies `f` to a copy, writes the file, then swaps it in and tells
    /// the sender.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Vec<Webhook>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut guard = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        let mut hooks = (**guard).clone();
        let out = f(&mut hooks)?;
        write_atomically(&self.path, render_file(&hooks).as_bytes()).map_err(|e| {
            ApiError::new(
                500,
                "1902",
                "internal error",
                format!("cannot write {}: {e}", self.path.display()),
            )
        })?;
        publish(&hooks);
        *guard = Arc::new(hooks);
        Ok(out)
    }
}

/// A new id: 16 random bytes in hex.
fn new_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ApiError::new(500, "1902", "internal error", "no randomness".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn links(id: &str) -> Value {
    json!([{
        "href": format!("/api/v1/webhooks/{id}"),
        "rel": "urn.msys.webhooks.webhook",
        "method": ["GET", "PUT", "DELETE"],
    }])
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        404,
        "1600",
        "resource not found",
        format!("no webhook {id}"),
    )
}

/// Answers one webhooks request.
pub async fn serve<B>(reach: &Reach<'_>, request: Request<B>) -> Result<Reply, ApiError>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let config = reach.env.config.get();
    let spoolbase = config.spoolbase().to_path_buf();
    let path = request.uri().path().trim_end_matches('/').to_string();
    let id = path
        .strip_prefix("/api/v1/webhooks")
        .and_then(|r| r.strip_prefix('/'))
        .map(str::to_string);
    let method = request.method().clone();
    let grant = match method {
        Method::GET => "webhooks:view",
        _ => "webhooks:modify",
    };
    authorize(&spoolbase, request.headers(), grant)?;
    let store = store(&spoolbase);
    match (&method, id.as_deref()) {
        (&Method::GET, None) => {
            let list: Vec<Value> = store.current().iter().map(Webhook::to_json).collect();
            Ok(json_reply(200, json!({ "results": list }).to_string()))
        }
        (&Method::GET, Some(id)) => {
            let hooks = store.current();
            let h = hooks
                .iter()
                .find(|h| h.id == id)
                .ok_or_else(|| not_found(id))?;
            Ok(json_reply(
                200,
                json!({ "results": h.to_json() }).to_string(),
            ))
        }
        (&Method::POST, None) => {
            let Some(log) = config.logs().eventlog.clone() else {
                return Err(ApiError::new(
                    422,
                    "1902",
                    "webhooks need an eventlog",
                    "set the eventlog option: webhooks are fed from it".into(),
                ));
            };
            let body = read_json(request).await?;
            let id = new_id()?;
            let hook = check(&body, &id, None)?;
            let dir = spoolbase.join("webhooks");
            store.change(|hooks| {
                if hooks.len() >= WEBHOOKS_MAX {
                    return Err(ApiError::new(
                        422,
                        "1902",
                        "too many webhooks",
                        format!("at most {WEBHOOKS_MAX} webhooks"),
                    ));
                }
                start_cursor(&dir, &log, &hook)?;
                hooks.push(hook.clone());
                Ok(())
            })?;
            let results = json!({"id": id, "links": links(&id)});
            Ok(json_reply(200, json!({ "results": results }).to_string()))
        }
        (&Method::PUT, Some(id)) => {
            let id = id.to_string();
            let body = read_json(request).await?;
            let dir = spoolbase.join("webhooks");
            let log = config.logs().eventlog.clone();
            store.change(|hooks| {
                let at = hooks
                    .iter()
                    .position(|h| h.id == id)
                    .ok_or_else(|| not_found(&id))?;
                let changed = check(&body, &id, Some(&hooks[at]))?;
                if changed.active && !hooks[at].active {
                    // Made active again: events from now on.
                    if let Some(log) = &log {
                        start_cursor(&dir, log, &changed)?;
                    }
                }
                hooks[at] = changed;
                Ok(())
            })?;
            let results = json!({"id": id, "links": links(&id)});
            Ok(json_reply(200, json!({ "results": results }).to_string()))
        }
        (&Method::DELETE, Some(id)) => {
            store.change(|hooks| {
                let before = hooks.len();
                hooks.retain(|h| h.id != id);
                if hooks.len() == before {
                    return Err(not_found(id));
                }
                Ok(())
            })?;
            let mut r = json_reply(204, String::new());
            r.headers_mut().remove(hyper::header::CONTENT_TYPE);
            Ok(r)
        }
        _ => Err(ApiError::new(
            405,
            "1001",
            "method not allowed",
            format!("{method} {path}"),
        )),
    }
}

fn start_cursor(dir: &Path, log: &Path, hook: &Webhook) -> Result<(), ApiError> {
    webhook::start_cursor_at_end(dir, log, &hook.endpoint().name).map_err(|e| {
        ApiError::new(
            500,
            "1902",
            "internal error",
            format!("cannot write the webhook's cursor: {e}"),
        )
    })
}

async fn read_json<B>(request: Request<B>) -> Result<Value, ApiError>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let body = Limited::new(request.into_body(), WEBHOOK_REQUEST_BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    413,
                    "1300",
                    "request too large",
                    format!("the body is over {WEBHOOK_REQUEST_BODY_BYTES_MAX} bytes"),
                )
            } else {
                ApiError::new(400, "1300", "bad request", e.to_string())
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            400,
            "1300",
            "invalid data format/type",
            format!("the body is not JSON: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_post_needs_name_target_and_known_events() {
        let ok = json!({"name": "n", "target": "http://127.0.0.1:9/hook",
                        "events": ["open", "click", "track_event", "open"],
                        "auth_token": "s3cret"});
        let h = check(&ok, ID, None).unwrap();
        assert_eq!(h.events, vec!["open", "click", "track_event"]);
        assert!(h.active);
        assert_eq!(h.auth_token.as_deref(), Some("s3cret"));
        assert_eq!(h.endpoint().name, format!("api-{ID}"));
        assert_eq!(
            (h.endpoint().port, h.endpoint().path.as_str()),
            (9, "/hook")
        );
        for (body, status) in [
            (json!({"target": "http://h/", "events": ["open"]}), 422),
            (json!({"name": "n", "events": ["open"]}), 422),
            (
                json!({"name": "n", "target": "ftp://h/", "events": ["open"]}),
                422,
            ),
            (
                json!({"name": "n", "target": "http://h/", "events": ["nope"]}),
                422,
            ),
            (
                json!({"name": "n", "target": "http://h/", "events": []}),
                422,
            ),
            (
                json!({"name": "n", "target": "http://h/", "events": ["open"], "auth_token": "a\r\nb"}),
                422,
            ),
            (json!([1]), 422),
        ] {
            assert_eq!(check(&body, ID, None).unwrap_err().status, status, "{body}");
        }
    }

    #[test]
    fn a_put_changes_only_what_it_names() {
        let base = check(
            &json!({"name": "n", "target": "http://h/", "events": ["open"], "auth_token": "t"}),
            ID,
            None,
        )
        .unwrap();
        let h = check(&json!({"active": false}), ID, Some(&base)).unwrap();
        assert_eq!(
            (h.name.as_str(), h.active, h.auth_token.as_deref()),
            ("n", false, Some("t"))
        );
        let h = check(&json!({"auth_token": null}), ID, Some(&base)).unwrap();
        assert_eq!(h.auth_token, None);
    }

    #[test]
    fn the_file_round_trips_and_refuses_damage() {
        let h = check(
            &json!({"name": "n", "target": "http://h:8/x", "events": ["delivery"]}),
            ID,
            None,
        )
        .unwrap();
        let text = render_file(std::slice::from_ref(&h));
        assert_eq!(parse_file(&text).unwrap(), vec![h]);
        assert!(parse_file("{").is_err());
        assert!(parse_file("[{\"id\": \"x\"}]").is_err());
    }
}
