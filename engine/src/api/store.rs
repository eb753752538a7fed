//! Where templates and recipient lists live, and the routes that manage
//! them: `/api/v1/templates[/<id>[/preview]]` and
//! `/api/v1/recipient-lists[/<id>]`.
//!
//! Storage ([`Backend`]) is SQLite in `<spoolbase>/api.sqlite`
//! ([`STORE_FILE`]) on its own [`SqliteWorker`] thread, or, when
//! `api_store_datasource` names one, a PostgreSQL `Datasource` on its
//! pool's client threads. Shards send either a closure over [`Db`] (the
//! two tables' SQL, `templates::TemplateSql` and `lists::ListSql`, one
//! impl per backend) and await the answer; nothing blocks a shard, and
//! the semantics are written once. Tables are made on first use. Compiled
//! template versions are kept per shard ([`ShardApi`]'s cache, keyed by
//! the version number, which never names two contents), so a shard
//! compiles a version once and renders it per recipient without a lock.
//!
//! Owns: the store's worker, the routes above, the resolution of a
//! transmission's `content.template_id` and `recipients.list_id`.
//! May call: `sqlite`, `datasource` (the PostgreSQL pools),
//! `api::{templates, recipient_lists, keys}`, `msggen`. Never: the
//! spool, queues.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::datasource::pgsql::describe;
use crate::datasource::DatasourceSet;
use crate::env::ShardEnv;
use crate::sqlite::{SqliteLimits, SqliteWorker};

/// The database file under the spool base.
pub const STORE_FILE: &str = "api.sqlite";
/// Compiled template versions a shard keeps (all dropped when full).
pub const COMPILED_PER_SHARD_MAX: usize = 256;
/// The PostgreSQL advisory lock key the schema is made under (two
/// connections making the tables at once would otherwise collide).
const PG_SCHEMA_LOCK_KEY: i64 = 0x6563_6170_6973_746f;

/// What a store query fails with: the database's message.
pub type DbResult<T> = Result<T, String>;

/// Both tables of the store, in one transaction of one backend.
pub trait Db: templates::TemplateSql + lists::ListSql {}
impl<T: templates::TemplateSql + lists::ListSql + ?Sized> Db for T {}

/// Where the store is: SQLite by default, or the PostgreSQL `Datasource`
/// named by `api_store_datasource` (its client threads run the queries).
enum Where {
    Sqlite(SqliteWorker),
    Pgsql {
        set: Arc<DatasourceSet>,
        name: String,
    },
}

/// The store: one backend, its tables made on first use.
pub struct Backend {
    at: Where,
    schema_made: AtomicBool,
}

impl Backend {
    /// SQLite at `path` (a file, or `:memory:`), on its own worker thread.
    pub fn sqlite(path: &Path) -> Result<Backend, String> {
        let worker = SqliteWorker::open(path, SqliteLimits::default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Backend {
            at: Where::Sqlite(worker),
            schema_made: AtomicBool::new(false),
        })
    }

    /// PostgreSQL datasource `name` of `set`.
    pub fn pgsql(set: Arc<DatasourceSet>, name: &str) -> Backend {
        Backend {
            at: Where::Pgsql {
                set,
                name: name.to_string(),
            },
            schema_made: AtomicBool::new(false),
        }
    }

    /// Runs `f` in one transaction on the backend's worker thread (never
    /// on the calling shard), committed when it returns `Ok`.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Db) -> DbResult<R> + Send + 'static,
    ) -> Result<R, ApiError> {
        let init = !self.schema_made.load(Ordering::Acquire);
        let done = match &self.at {
            Where::Sqlite(worker) => match worker.call(move |c| in_sqlite(c, init, f)).await {
                Ok(r) => r,
                Err(e) => Err(format!("sqlite: {e}")),
            },
            Where::Pgsql { set, name } => {
                let pool = set
                    .pgsql(name)
                    .ok_or_else(|| unavailable(format!("no PostgreSQL Datasource `{name}`")))?;
                match pool.with_client(move |c| in_pgsql(c, init, f)).await {
                    Ok(r) => Ok(r),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match done {
            Ok(r) => {
                self.schema_made.store(true, Ordering::Release);
                Ok(r)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

fn in_sqlite<R>(
    conn: &mut rusqlite::Connection,
    init: bool,
    f: impl FnOnce(&mut dyn Db) -> DbResult<R>,
) -> DbResult<R> {
    let lite = |e: rusqlite::Error| format!("sqlite: {e}");
    let mut tx = conn.transaction().map_err(lite)?;
    if init {
        templates::TemplateSql::init_templates(&mut tx)?;
        lists::ListSql::init_lists(&mut tx)?;
    }
    let r = f(&mut tx)?;
    tx.commit().map_err(lite)?;
    Ok(r)
}

fn in_pgsql<R>(
    client: &mut postgres::Client,
    init: bool,
    f: impl FnOnce(&mut dyn Db) -> DbResult<R>,
) -> DbResult<R> {
    let pg = |e: postgres::Error| format!("postgresql: {}", describe(&e));
    let mut tx = client.transaction().map_err(pg)?;
    if init {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PG_SCHEMA_LOCK_KEY])
            .map_err(pg)?;
        templates::TemplateSql::init_templates(&mut tx)?;
        lists::ListSql::init_lists(&mut tx)?;
    }
    let r = f(&mut tx)?;
    tx.commit().map_err(pg)?;
    Ok(r)
}

static STORE: OnceLock<Result<Backend, String>> = OnceLock::new();

/// The process's store, chosen on first use from `api_store_datasource`
/// (a restart-only option, so the choice never changes while running).
fn store(env: &ShardEnv) -> Result<&'static Backend, ApiError> {
    let opened = STORE.get_or_init(|| {
        let config = env.config.get();
        match config.api_store_datasource() {
            Some(name) => Ok(Backend::pgsql(env.datasources.set().clone(), name)),
            None => Backend::sqlite(&config.spoolbase().join(STORE_FILE)),
        }
    });
    opened.as_ref().map_err(|e| unavailable(e.clone()))
}

fn unavailable(what: String) -> ApiError {
    tracing::error!("api store: {what}");
    ApiError::new(503, "1901", "storage unavailable", what)
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
        let modify =
            !(matches!(method, Method::GET) || (parts.len() == 2 && parts[1] == "preview"));
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
        let db = match store(&self.env) {
            Ok(db) => db,
            Err(e) => return error_reply(&e),
        };
        let result = match (kind, &method, parts.as_slice()) {
            (Kind::Templates, &Method::GET, []) => db
                .call(|c| templates::list(c))
                .await
                .map(|rows| json!({ "results": rows })),
            (Kind::Templates, &Method::POST, []) => {
                self.template_create(request, db, working).await
            }
            (Kind::Templates, &Method::GET, [id]) => {
                let which = match query_flag(&request, "draft") {
                    Some(true) => Which::Draft,
                    Some(false) => Which::Published,
                    None => Which::Latest,
                };
                template_get(db, id, which).await
            }
            (Kind::Templates, &Method::PUT, [id]) => {
                self.template_update(request, db, id, working).await
            }
            (Kind::Templates, &Method::DELETE, [id]) => {
                let id = id.to_string();
                let idc = id.clone();
                match db.call(move |c| templates::delete(c, &idc)).await {
                    Ok(true) => Ok(json!({ "results": {} })),
                    Ok(false) => Err(not_found("template", &id)),
                    Err(e) => Err(e),
                }
            }
            (Kind::Templates, &Method::POST, [id, "preview"]) => {
                self.template_preview(request, db, id, working).await
            }
            (Kind::Lists, &Method::GET, []) => db
                .call(|c| lists::list(c))
                .await
                .map(|rows| json!({ "results": rows })),
            (Kind::Lists, &Method::POST, []) => self.list_put(request, db, None, working).await,
            (Kind::Lists, &Method::PUT, [id]) => {
                self.list_put(request, db, Some(id), working).await
            }
            (Kind::Lists, &Method::GET, [id]) => {
                let with = query_flag(&request, "show_recipients").unwrap_or(false);
                let id = id.to_string();
                let idc = id.clone();
                match db.call(move |c| lists::get(c, &idc, with)).await {
                    Ok(Some(v)) => Ok(json!({ "results": v })),
                    Ok(None) => Err(not_found("recipient list", &id)),
                    Err(e) => Err(e),
                }
            }
            (Kind::Lists, &Method::DELETE, [id]) => {
                let id = id.to_string();
                let idc = id.clone();
                match db.call(move |c| lists::delete(c, &idc)).await {
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
        db: &Backend,
        working: &std::cell::Cell<bool>,
    ) -> Result<Value, ApiError> {
        let body = read_body(request, working).await?;
        let f = templates::parse_fields(&body, true)?;
        let id = f.id.clone().expect("set by parse_fields");
        let now = now_unix_ms() / 1000;
        match db.call(move |c| templates::create(c, &f, now)).await? {
            Written::Done => Ok(json!({ "results": { "id": id } })),
            _ => Err(conflict("template", &id)),
        }
    }

    async fn template_update(
        &self,
        request: Request<Incoming>,
        db: &Backend,
        id: &str,
        working: &std::cell::Cell<bool>,
    ) -> Result<Value, ApiError> {
        let update_published = query_flag(&request, "update_published").unwrap_or(false);
        let body = read_body(request, working).await?;
        let f = templates::parse_fields(&body, false)?;
        let now = now_unix_ms() / 1000;
        let idc = id.to_string();
        match db
            .call(move |c| templates::update(c, &idc, &f, update_published, now))
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
        db: &Backend,
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
        let (compiled, _, _) = self.compiled_template(db, id, which).await?;
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
        db: &Backend,
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
        match db.call(move |c| lists::put(c, &l, create)).await? {
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
        db: &Backend,
        id: &str,
        which: Which,
    ) -> Result<(Arc<Compiled>, TemplateOptions, Value), ApiError> {
        let idc = id.to_string();
        let row = db
            .call(move |c| templates::get(c, &idc, which))
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
        let db = store(&self.env)?;
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
                .compiled_template(db, &id, which)
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
            body["recipients"] = db
                .call(move |c| lists::recipients(c, &idc))
                .await?
                .ok_or_else(|| stored_missing("recipients.list_id", "recipient list", &id))?;
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
async fn template_get(db: &Backend, id: &str, which: Which) -> Result<Value, ApiError> {
    let idc = id.to_string();
    let found = db
        .call(move |c| {
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

#[cfg(test)]
pub(crate) mod testing {
    use std::future::Future;
    use std::pin::Pin;
    use std::rc::Rc;

    use super::*;
    use crate::config::Config;
    use ecelerity_testkit::Postgres;

    /// `db.call(f)`, which must succeed.
    pub async fn run<R: Send + 'static>(
        db: &Backend,
        f: impl FnOnce(&mut dyn Db) -> DbResult<R> + Send + 'static,
    ) -> R {
        db.call(f).await.unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// Runs `scenario` on a fresh SQLite store (in memory), then on a
    /// fresh PostgreSQL server of the test's own, each on a glommio
    /// executor as a shard would.
    pub fn on_both_backends(
        scenario: impl Fn(Rc<Backend>) -> Pin<Box<dyn Future<Output = ()>>> + Send + 'static,
    ) {
        with_postgres(move |pg| {
            Box::pin(async move {
                let sqlite = Backend::sqlite(Path::new(":memory:")).unwrap();
                scenario(Rc::new(sqlite)).await;
                scenario(pg).await;
            })
        });
    }

    /// Runs `f` on a glommio executor with a store on a fresh PostgreSQL
    /// server (a Datasource of 2 connections, read by the real config
    /// parser with `api_store_datasource` naming it).
    pub fn with_postgres(
        f: impl FnOnce(Rc<Backend>) -> Pin<Box<dyn Future<Output = ()>>> + Send + 'static,
    ) {
        let pg = Postgres::start();
        let conf = format!(
            "Datasource \"store\" {{\n  uri = ( \"{}\" )\n  connections = 2\n}}\napi_store_datasource = \"store\"\n",
            pg.uri()
        );
        let config = Config::parse(&conf, Path::new("t.conf")).unwrap();
        assert_eq!(config.api_store_datasource(), Some("store"));
        let set = DatasourceSet::open(config.datasources()).unwrap();
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move {
                f(Rc::new(Backend::pgsql(set, "store"))).await;
            })
            .unwrap()
            .join()
            .unwrap();
        drop(pg);
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::testing::{run, with_postgres};
    use super::*;

    /// Goal: on PostgreSQL, whose two connections run transactions at
    /// once, concurrent writers behave as SQLite's single writer: of
    /// eight creates of one template exactly one succeeds (twenty times), eight concurrent updates take eight
    /// distinct version numbers, and of eight creates of one list one
    /// succeeds; eight first uses at once all make the tables without
    /// an error. (With PostgreSQL's `lock_templates` a no-op, or without
    /// the schema's advisory lock, this test failed 3 runs of 3.)
    #[test]
    fn concurrent_writers_on_postgresql_neither_collide_nor_repeat() {
        const WRITERS: usize = 8;
        const ROUNDS: usize = 20;
        with_postgres(|db| {
            Box::pin(async move {
                // First use from every writer at once: each makes the
                // tables (under the advisory lock), none fails. After it,
                // nothing serializes the writers below but their locks.
                let firsts: Vec<_> = (0..WRITERS)
                    .map(|_| {
                        let db = db.clone();
                        glommio::spawn_local(async move { run(&db, |c| lists::list(c)).await })
                    })
                    .collect();
                for t in firsts {
                    assert!(t.await.is_empty());
                }
                let spawn_all = |job: &dyn Fn(usize) -> glommio::Task<Written>| {
                    (0..WRITERS).map(job).collect::<Vec<_>>()
                };
                // Rounds, so that both connections are up and racing.
                for round in 0..ROUNDS {
                    let body = format!(
                        r#"{{"id":"t{round}","name":"T","content":{{"from":"a@x.example","subject":"s","text":"x"}}}}"#
                    );
                    let f = templates::parse_fields(body.as_bytes(), true).unwrap();
                    let creates = spawn_all(&|_| {
                        let (db, f) = (db.clone(), f.clone());
                        glommio::spawn_local(async move {
                            run(&db, move |c| templates::create(c, &f, 1)).await
                        })
                    });
                    let mut done = 0;
                    for t in creates {
                        match t.await {
                            Written::Done => done += 1,
                            w => assert_eq!(w, Written::Conflict),
                        }
                    }
                    assert_eq!(done, 1, "round {round}");
                }
                let edit = templates::parse_fields(br#"{"description":"d"}"#, false).unwrap();
                let versions: Rc<std::cell::RefCell<Vec<i64>>> = Rc::default();
                let updates = spawn_all(&|i| {
                    let (db, edit, versions) = (db.clone(), edit.clone(), versions.clone());
                    glommio::spawn_local(async move {
                        let (w, v) = run(&db, move |c| {
                            let w = templates::update(c, "t0", &edit, false, i as u64)?;
                            let v = templates::get(c, "t0", Which::Draft)?.map(|r| r.version);
                            Ok((w, v))
                        })
                        .await;
                        versions.borrow_mut().push(v.unwrap());
                        w
                    })
                });
                for t in updates {
                    assert_eq!(t.await, Written::Done);
                }
                let mut seen = versions.borrow().clone();
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(seen.len(), WRITERS, "{:?}", versions.borrow());
                let l = lists::parse(
                    br#"{"id":"l","recipients":[{"address":"a@x.example"}]}"#,
                    true,
                )
                .unwrap();
                let puts = spawn_all(&|_| {
                    let (db, l) = (db.clone(), l.clone());
                    glommio::spawn_local(
                        async move { run(&db, move |c| lists::put(c, &l, true)).await },
                    )
                });
                let mut done = 0;
                for t in puts {
                    match t.await {
                        Written::Done => done += 1,
                        w => assert_eq!(w, Written::Conflict),
                    }
                }
                assert_eq!(done, 1);
            })
        });
    }
}
