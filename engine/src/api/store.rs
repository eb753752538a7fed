//! Where templates and recipient lists live, and the routes that manage
//! them: `/api/v1/templates[/<id>[/preview]]` and
//! `/api/v1/recipient-lists[/<id>]`.
//!
//! Storage is SQLite in `<spoolbase>/api.sqlite` ([`STORE_FILE`]),
//! opened on first use on its own [`SqliteWorker`] thread (shards send it
//! closures and await the answer; nothing blocks a shard). Compiled
//! template versions are kept per shard ([`ShardApi`]'s cache, keyed by
//! the version number, which never names two contents), so a shard
//! compiles a version once and renders it per recipient without a lock.
//!
//! Owns: the store's worker, the routes above, the resolution of a
//! transmission's `content.template_id` and `recipients.list_id`.
//! May call: `sqlite`, `api::{templates, recipient_lists, keys}`,
//! `msggen`. Never: the spool, queues.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use ecelerity_msggen::content::Rendered;
use ecelerity_msggen::template::{Context, Scope};
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::{json, Value};

use super::generate::{error_reply, json_reply, read_body, Reply};
use super::recipient_lists::{self as lists, ListInput};
use super::templates::{self, valid_id, Compiled, TemplateOptions, Which, Written};
use super::{ApiError, ShardApi};
use crate::clock::now_unix_ms;
use crate::sqlite::{SqliteLimits, SqliteWorker};

/// The database file under the spool base.
pub const STORE_FILE: &str = "api.sqlite";
/// Compiled template versions a shard keeps (all dropped when full).
pub const COMPILED_PER_SHARD_MAX: usize = 256;

static STORE: OnceLock<Result<SqliteWorker, String>> = OnceLock::new();

/// The store's worker, opened (tables made) on first use.
pub fn worker(spoolbase: &Path) -> Result<&'static SqliteWorker, ApiError> {
    let opened = STORE.get_or_init(|| {
        let path = spoolbase.join(STORE_FILE);
        let init = rusqlite::Connection::open(&path).and_then(|c| {
            templates::init(&c)?;
            lists::init(&c)
        });
        init.map_err(|e| format!("{}: {e}", path.display()))?;
        SqliteWorker::open(&path, SqliteLimits::default()).map_err(|e| e.to_string())
    });
    opened.as_ref().map_err(|e| unavailable(e.clone()))
}

fn unavailable(what: String) -> ApiError {
    tracing::error!("api store: {what}");
    ApiError::new(503, "1901", "storage unavailable", what)
}

/// Runs `f` on the store's connection.
async fn call<R: Send + 'static>(
    spoolbase: &Path,
    f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
) -> Result<R, ApiError> {
    match worker(spoolbase)?.call(f).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(unavailable(format!("sqlite: {e}"))),
        Err(e) => Err(unavailable(e.to_string())),
    }
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(
        404,
        "1600",
        "resource not found",
        format!("no {what} '{id}'"),
    )
}

fn conflict(what: &str, id: &str) -> ApiError {
    ApiError::new(
        409,
        "1602",
        "resource conflict",
        format!("{what} '{id}' already exists"),
    )
}

/// `key=value` of the query string (no decoding: the values used are
/// `true`/`false`).
fn query_flag(request: &Request<Incoming>, key: &str) -> Option<bool> {
    request
        .uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.eq_ignore_ascii_case("true"))
}

/// The shard's compiled template versions.
#[derive(Default)]
pub struct CompiledCache {
    by_version: RefCell<HashMap<i64, Arc<Compiled>>>,
}

/// A transmission's stored parts, resolved.
pub struct Resolved {
    /// The stored template's compiled content and options.
    pub template: Option<(String, Arc<Compiled>, TemplateOptions)>,
    pub list_id: Option<String>,
}

enum Kind {
    Templates,
    Lists,
}

impl ShardApi {
    /// True for the paths [`stored`](Self::stored) answers.
    pub(super) fn is_stored_path(path: &str) -> bool {
        let under = |base: &str| {
            path == base || path.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
        };
        under("/api/v1/templates") || under("/api/v1/recipient-lists")
    }

    /// Answers a request under `/api/v1/templates` or
    /// `/api/v1/recipient-lists`.
    pub(super) async fn stored(
        self: &Rc<Self>,
        request: Request<Incoming>,
        path: &str,
        working: &std::cell::Cell<bool>,
    ) -> Reply {
        let (kind, rest) = match path.strip_prefix("/api/v1/templates") {
            Some(r) => (Kind::Templates, r),
            None => (
                Kind::Lists,
                path.strip_prefix("/api/v1/recipient-lists").unwrap_or(""),
            ),
        };
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        let method = request.method().clone();
        let modify = !matches!(method, Method::GET) && !(parts.len() == 2 && parts[1] == "preview");
        let grant = match (&kind, modify) {
            (Kind::Templates, true) => "templates:modify",
            (Kind::Templates, false) => "templates:view",
            (Kind::Lists, true) => "recipient_lists:modify",
            (Kind::Lists, false) => "recipient_lists:view",
        };
        if let Err(reply) = self.authorize(&request, grant) {
            return reply;
        }
        if let Some(id) = parts.first() {
            if !valid_id(id) {
                return error_reply(&not_found("such resource", id));
            }
        }
        let spoolbase = self.env.config.get().spoolbase().to_path_buf();
        let result = match (kind, &method, parts.as_slice()) {
            (Kind::Templates, &Method::GET, []) => call(&spoolbase, |c| templates::list(c))
                .await
                .map(|rows| json!({ "results": rows })),
            (Kind::Templates, &Method::POST, []) => {
                self.template_create(request, &spoolbase, working).await
            }
            (Kind::Templates, &Method::GET, [id]) => {
                let which = match query_flag(&request, "draft") {
                    Some(true) => Which::Draft,
                    Some(false) => Which::Published,
                    None => Which::Latest,
                };
                template_get(&spoolbase, id, which).await
            }
            (Kind::Templates, &Method::PUT, [id]) => {
                self.template_update(request, &spoolbase, id, working).await
            }
            (Kind::Templates, &Method::DELETE, [id]) => {
                let id = id.to_string();
                let idc = id.clone();
                match call(&spoolbase, move |c| templates::delete(c, &idc)).await {
                    Ok(true) => Ok(json!({ "results": {} })),
                    Ok(false) => Err(not_found("template", &id)),
                    Err(e) => Err(e),
                }
            }
            (Kind::Templates, &Method::POST, [id, "preview"]) => {
                self.template_preview(request, &spoolbase, id, working)
                    .await
            }
            (Kind::Lists, &Method::GET, []) => call(&spoolbase, |c| lists::list(c))
                .await
                .map(|rows| json!({ "results": rows })),
            (Kind::Lists, &Method::POST, []) => {
                self.list_put(request, &spoolbase, None, working).await
            }
            (Kind::Lists, &Method::PUT, [id]) => {
                self.list_put(request, &spoolbase, Some(id), working).await
            }
            (Kind::Lists, &Method::GET, [id]) => {
                let with = query_flag(&request, "show_recipients").unwrap_or(false);
                let id = id.to_string();
                let idc = id.clone();
                match call(&spoolbase, move |c| lists::get(c, &idc, with)).await {
                    Ok(Some(v)) => Ok(json!({ "results": v })),
                    Ok(None) => Err(not_found("recipient list", &id)),
                    Err(e) => Err(e),
                }
            }
            (Kind::Lists, &Method::DELETE, [id]) => {
                let id = id.to_string();
                let idc = id.clone();
                match call(&spoolbase, move |c| lists::delete(c, &idc)).await {
                    Ok(true) => Ok(json!({ "results": {} })),
                    Ok(false) => Err(not_found("recipient list", &id)),
                    Err(e) => Err(e),
                }
            }
            (_, _, parts) if parts.len() <= 2 => Err(ApiError::new(
                405,
                "1001",
                "method not allowed",
                format!("{method} {path}"),
            )),
            _ => Err(ApiError::new(
                404,
                "1600",
                "resource not found",
                format!("no endpoint {path}"),
            )),
        };
        match result {
            Ok(v) => json_reply(200, v.to_string()),
            Err(e) => error_reply(&e),
        }
    }

    async fn template_create(
        &self,
        request: Request<Incoming>,
        spoolbase: &Path,
        working: &std::cell::Cell<bool>,
    ) -> Result<Value, ApiError> {
        let body = read_body(request, working).await?;
        let f = templates::parse_fields(&body, true)?;
        let id = f.id.clone().expect("set by parse_fields");
        let now = now_unix_ms() / 1000;
        match call(spoolbase, move |c| templates::create(c, &f, now)).await? {
            Written::Done => Ok(json!({ "results": { "id": id } })),
            _ => Err(conflict("template", &id)),
        }
    }

    async fn template_update(
        &self,
        request: Request<Incoming>,
        spoolbase: &Path,
        id: &str,
        working: &std::cell::Cell<bool>,
    ) -> Result<Value, ApiError> {
        let update_published = query_flag(&request, "update_published").unwrap_or(false);
        let body = read_body(request, working).await?;
        let f = templates::parse_fields(&body, false)?;
        let now = now_unix_ms() / 1000;
        let idc = id.to_string();
        match call(spoolbase, move |c| {
            templates::update(c, &idc, &f, update_published, now)
        })
        .await?
        {
            Written::Done => Ok(json!({ "results": { "id": id } })),
            _ if update_published => Err(not_found("published template", id)),
            _ => Err(not_found("template", id)),
        }
    }

    async fn template_preview(
        &self,
        request: Request<Incoming>,
        spoolbase: &Path,
        id: &str,
        working: &std::cell::Cell<bool>,
    ) -> Result<Value, ApiError> {
        let which = match query_flag(&request, "draft") {
            Some(true) => Which::Draft,
            Some(false) => Which::Published,
            None => Which::Latest,
        };
        let body = read_body(request, working).await?;
        let v = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            super::transmission::json_body(&body)?
        };
        let data = match v.get("substitution_data") {
            None | Some(Value::Null) => Value::Null,
            Some(d @ Value::Object(_)) => d.clone(),
            Some(_) => {
                return Err(ApiError::new(
                    422,
                    "1300",
                    "invalid data format/type",
                    "substitution_data: must be a JSON object".into(),
                ))
            }
        };
        let (compiled, _, _) = self.compiled_template(spoolbase, id, which).await?;
        let layers = [&data];
        let scope = Scope {
            layers: &layers,
            ..Default::default()
        };
        let mut out = Rendered::default();
        compiled
            .content
            .render(&scope, None, &mut out)
            .map_err(|e| render_error(&e.to_string()))?;
        let mut name = Vec::new();
        if let Some(t) = &compiled.from_name {
            t.render(&scope, Context::Text, &mut name)
                .map_err(|e| render_error(&format!("from.name: {e}")))?;
        }
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let headers: serde_json::Map<String, Value> = out
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), Value::String(s(v))))
            .collect();
        Ok(json!({ "results": {
            "from": {
                "email": out.from.as_deref().map(s),
                "name": compiled.from_name.as_ref().map(|_| s(&name)),
            },
            "subject": s(&out.subject),
            "reply_to": out.reply_to.as_deref().map(s),
            "headers": headers,
            "text": out.text.as_deref().map(s),
            "html": out.html.as_deref().map(s),
        }}))
    }

    async fn list_put(
        &self,
        request: Request<Incoming>,
        spoolbase: &Path,
        id: Option<&str>,
        working: &std::cell::Cell<bool>,
    ) -> Result<Value, ApiError> {
        let create = id.is_none();
        let body = read_body(request, working).await?;
        let mut l: ListInput = lists::parse(&body, create)?;
        if let Some(id) = id {
            l.id = Some(id.to_string());
        }
        let id = l.id.clone().expect("an id");
        let (accepted, rejected, name) = (
            l.recipients.as_ref().map(Vec::len),
            l.rejected,
            l.name.clone(),
        );
        match call(spoolbase, move |c| lists::put(c, &l, create)).await? {
            Written::Done => Ok(json!({ "results": {
                "id": id,
                "name": name,
                "total_accepted_recipients": accepted,
                "total_rejected_recipients": rejected,
            }})),
            Written::Conflict => Err(conflict("recipient list", &id)),
            Written::NotFound => Err(not_found("recipient list", &id)),
        }
    }

    /// A template version compiled: from this shard's cache, or read and
    /// compiled (then cached).
    async fn compiled_template(
        &self,
        spoolbase: &Path,
        id: &str,
        which: Which,
    ) -> Result<(Arc<Compiled>, TemplateOptions, Value), ApiError> {
        let idc = id.to_string();
        let row = call(spoolbase, move |c| templates::get(c, &idc, which))
            .await?
            .ok_or_else(|| match which {
                Which::Published => not_found("published template", id),
                Which::Draft => not_found("draft template", id),
                Which::Latest => not_found("template", id),
            })?;
        let cache = &self.compiled.by_version;
        if let Some(c) = cache.borrow().get(&row.version) {
            return Ok((c.clone(), row.options, row.content));
        }
        let compiled = templates::compile(&templates::inline_of(&row)?)?;
        let mut cache = cache.borrow_mut();
        if cache.len() >= COMPILED_PER_SHARD_MAX {
            cache.clear();
        }
        cache.insert(row.version, compiled.clone());
        Ok((compiled, row.options, row.content))
    }

    /// Puts a transmission's stored template content and list recipients
    /// in place of `content.template_id` and `recipients.list_id`.
    pub(super) async fn resolve_stored(&self, body: &mut Value) -> Result<Resolved, ApiError> {
        let spoolbase = self.env.config.get().spoolbase().to_path_buf();
        let mut resolved = Resolved {
            template: None,
            list_id: None,
        };
        let template = body
            .get("content")
            .and_then(|c| c.get("template_id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(id) = template {
            let use_draft = body["content"]
                .get("use_draft_template")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let which = if use_draft {
                Which::Draft
            } else {
                Which::Published
            };
            if !valid_id(&id) {
                return Err(stored_missing("content.template_id", "template", &id));
            }
            let what = if use_draft {
                "draft template"
            } else {
                "published template"
            };
            let (compiled, options, content) = self
                .compiled_template(&spoolbase, &id, which)
                .await
                .map_err(|e| match e.status {
                    404 => stored_missing("content.template_id", what, &id),
                    _ => e,
                })?;
            // The stored content is what the transmission is checked with.
            body["content"] = content;
            resolved.template = Some((id, compiled, options));
        }
        let list = body
            .get("recipients")
            .and_then(|r| r.get("list_id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(id) = list {
            if !valid_id(&id) {
                return Err(stored_missing("recipients.list_id", "recipient list", &id));
            }
            let idc = id.clone();
            let text = call(&spoolbase, move |c| {
                c.query_row(
                    "SELECT recipients FROM recipient_lists WHERE id = ?1",
                    [&idc],
                    |r| r.get::<_, String>(0),
                )
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })
            })
            .await?
            .ok_or_else(|| stored_missing("recipients.list_id", "recipient list", &id))?;
            body["recipients"] = serde_json::from_str(&text).unwrap_or(Value::Array(vec![]));
            resolved.list_id = Some(id);
        }
        Ok(resolved)
    }
}

impl ShardApi {
    /// A new, empty cache for [`ShardApi::new`].
    pub(super) fn new_cache() -> CompiledCache {
        CompiledCache::default()
    }
}

/// `GET /templates/<id>`: the version asked for, with what other
/// versions there are.
async fn template_get(spoolbase: &Path, id: &str, which: Which) -> Result<Value, ApiError> {
    let idc = id.to_string();
    let found = call(spoolbase, move |c| {
        let draft = templates::get(c, &idc, Which::Draft)?;
        let published = templates::get(c, &idc, Which::Published)?;
        Ok((draft, published))
    })
    .await?;
    let (has_draft, has_published) = (found.0.is_some(), found.1.is_some());
    let row = match which {
        Which::Draft => found.0,
        Which::Published => found.1,
        Which::Latest => found.0.or(found.1),
    };
    match row {
        Some(r) => Ok(json!({ "results": templates::shape(&r, has_draft, has_published) })),
        None => Err(not_found(
            match which {
                Which::Draft => "draft template",
                Which::Published => "published template",
                Which::Latest => "template",
            },
            id,
        )),
    }
}

fn stored_missing(field: &str, what: &str, id: &str) -> ApiError {
    ApiError::new(
        422,
        "1600",
        "resource not found",
        format!("{field}: no {what} '{id}'"),
    )
}

fn render_error(what: &str) -> ApiError {
    ApiError::new(
        422,
        "3001",
        "substitution language rendering error",
        what.to_string(),
    )
}
