//! Stored templates (SparkPost's `/api/v1/templates`): the request
//! bodies checked, the content compiled with `msggen` (once per template
//! version), the SQL of the `templates` table, and the JSON shapes
//! answered.
//!
//! A template has up to two rows: its published version and its draft.
//! Every write gives the row a new `version` (one counter for the whole
//! table), which is what shards key their compiled copies by: a version
//! never names two contents, even across a delete and a re-create.
//!
//! Owns: template validation, `Compiled`, the template SQL of both
//! backends ([`TemplateSql`]: SQLite and PostgreSQL side by side). May
//! call: `api::transmission` (the content rules), `msggen`, rusqlite and
//! postgres (on the store's worker threads). Never: I/O of its own,
//! shard state.

use std::sync::Arc;

use ecelerity_msggen::content::{Content as Parts, ContentSource};
use ecelerity_msggen::template::Template;
use rusqlite::{params, OptionalExtension};
use serde_json::{json, Map, Value};

use super::store::DbResult;
use super::transmission::{self, Content, Inline};
use super::{rfc3339, ApiError};

/// Longest template id (SparkPost's 64).
pub const TEMPLATE_ID_BYTES_MAX: usize = 64;
/// Longest template name and description.
pub const TEMPLATE_NAME_BYTES_MAX: usize = 1024;
/// Most templates `GET /api/v1/templates` lists.
pub const TEMPLATES_LISTED_MAX: usize = 10_000;

/// A template's content compiled: what generation renders per recipient.
pub struct Compiled {
    pub content: Parts,
    /// The From display name as a template (the address is `content`'s).
    pub from_name: Option<Template>,
    /// No part holds a tag: every recipient gets the same text.
    pub is_static: bool,
    /// The content as given (MIME layout, attachments).
    pub inline: Inline,
}

fn syntax_error(description: String) -> ApiError {
    ApiError::new(
        422,
        "3000",
        "substitution language syntax error in template content",
        description,
    )
}

/// Compiles inline content (a stored template's or a transmission's):
/// every part is a template.
pub fn compile(c: &Inline) -> Result<Arc<Compiled>, ApiError> {
    let headers: Vec<(&str, &str)> = c
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let source = ContentSource {
        subject: &c.subject,
        from: Some(&c.from.email),
        reply_to: c.reply_to.as_deref(),
        headers: &headers,
        text: c.text.as_deref(),
        html: c.html.as_deref(),
    };
    let content = Parts::compile(&source).map_err(|e| syntax_error(format!("content.{e}")))?;
    let from_name = c
        .from
        .name
        .as_deref()
        .map(|n| Template::compile(n).map_err(|e| syntax_error(format!("content.from.name: {e}"))))
        .transpose()?;
    let has_tag = |s: &str| s.contains("{{");
    let is_static = !(has_tag(&c.subject)
        || has_tag(&c.from.email)
        || c.from.name.as_deref().is_some_and(has_tag)
        || c.reply_to.as_deref().is_some_and(has_tag)
        || c.headers.iter().any(|(_, v)| has_tag(v))
        || c.text.as_deref().is_some_and(has_tag)
        || c.html.as_deref().is_some_and(has_tag));
    Ok(Arc::new(Compiled {
        content,
        from_name,
        is_static,
        inline: c.clone(),
    }))
}

fn invalid(field: &str, what: &str) -> ApiError {
    ApiError::new(
        422,
        "1300",
        "invalid data format/type",
        format!("{field}: {what}"),
    )
}

/// `[A-Za-z0-9_-]`, 1 to 64 bytes: a template or list id (it goes in URL
/// paths as it is).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= TEMPLATE_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An id made from a name (SparkPost: lower case, spaces to dashes).
pub fn id_from_name(name: &str) -> String {
    let mut id: String = name
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    id.truncate(TEMPLATE_ID_BYTES_MAX);
    id
}

fn text(m: &Map<String, Value>, key: &str, max: usize) -> Result<Option<String>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(invalid(key, &format!("longer than {max} bytes"))),
        Some(_) => Err(invalid(key, "must be a string")),
    }
}

fn flag(m: &Map<String, Value>, key: &str, field: &str) -> Result<Option<bool>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(field, "must be true or false")),
    }
}

/// A template's `options`: open_tracking, click_tracking, transactional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TemplateOptions {
    pub open_tracking: Option<bool>,
    pub click_tracking: Option<bool>,
    pub transactional: Option<bool>,
}

impl TemplateOptions {
    pub fn json(&self) -> Value {
        json!({
            "open_tracking": self.open_tracking.unwrap_or(false),
            "click_tracking": self.click_tracking.unwrap_or(false),
            "transactional": self.transactional.unwrap_or(false),
        })
    }

    /// Read back from the stored JSON (written by [`json`](Self::json)).
    pub fn from_json(v: &Value) -> TemplateOptions {
        let get = |k: &str| v.get(k).and_then(Value::as_bool);
        TemplateOptions {
            open_tracking: get("open_tracking"),
            click_tracking: get("click_tracking"),
            transactional: get("transactional"),
        }
    }
}

fn options(v: Option<&Value>) -> Result<Option<TemplateOptions>, ApiError> {
    let m = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(invalid("options", "must be a JSON object")),
    };
    Ok(Some(TemplateOptions {
        open_tracking: flag(m, "open_tracking", "options.open_tracking")?,
        click_tracking: flag(m, "click_tracking", "options.click_tracking")?,
        transactional: flag(m, "transactional", "options.transactional")?,
    }))
}

/// Checks a template's `content` object: SparkPost's inline content rules,
/// then every part compiled. Stored as given.
pub fn check_content(v: &Value) -> Result<(), ApiError> {
    match transmission::content(Some(v))? {
        Content::Inline(c) => compile(&c).map(|_| ()),
        Content::Rfc822(_) => Err(ApiError::new(
            422,
            "1200",
            "unsupported field",
            "content.email_rfc822: a stored template holds inline content (from, subject, text, html)".into(),
        )),
    }
}

/// What a create or update carries; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct TemplateFields {
    pub id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub content: Option<Value>,
    pub options: Option<TemplateOptions>,
    pub published: bool,
}

/// Checks a `POST` or `PUT` body; `create` requires name and content.
pub fn parse_fields(body: &[u8], create: bool) -> Result<TemplateFields, ApiError> {
    let Value::Object(m) = transmission::json_body(body)? else {
        return Err(invalid("body", "must be a JSON object"));
    };
    let name = text(&m, "name", TEMPLATE_NAME_BYTES_MAX)?;
    let mut id = text(&m, "id", TEMPLATE_ID_BYTES_MAX)?;
    if create {
        let Some(n) = &name else {
            return Err(ApiError::new(
                422,
                "1400",
                "required field is missing",
                "name is required".into(),
            ));
        };
        if id.is_none() {
            id = Some(id_from_name(n));
        }
        if !m.contains_key("content") {
            return Err(ApiError::new(
                422,
                "1400",
                "required field is missing",
                "content is required".into(),
            ));
        }
    }
    if let Some(i) = &id {
        if !valid_id(i) {
            return Err(invalid("id", "1 to 64 letters, digits, '-' or '_'"));
        }
    }
    let content = m.get("content").filter(|c| !c.is_null()).cloned();
    if let Some(c) = &content {
        check_content(c)?;
    }
    Ok(TemplateFields {
        id,
        name,
        description: text(&m, "description", TEMPLATE_NAME_BYTES_MAX)?,
        content,
        options: options(m.get("options"))?,
        published: flag(&m, "published", "published")?.unwrap_or(false),
    })
}

/// One stored row: a template's draft or published version.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateRow {
    pub id: String,
    pub draft: bool,
    pub version: i64,
    pub name: String,
    pub description: String,
    pub content: Value,
    pub options: TemplateOptions,
    pub updated_unix: u64,
}

/// Which version a read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Draft,
    Published,
    /// The draft when there is one, else the published version.
    Latest,
}

/// The `templates` table as each backend reads and writes it. Every
/// method runs inside the transaction of one [`Backend::call`](super::store::Backend::call);
/// the semantics (drafts, publishing, version numbers) are the functions
/// below, written once over this trait.
pub trait TemplateSql {
    /// Creates the table and the version counter when missing.
    fn init_templates(&mut self) -> DbResult<()>;
    /// Makes this transaction the only template writer until it ends
    /// (PostgreSQL: the counter's row is locked; SQLite has one writer).
    fn lock_templates(&mut self) -> DbResult<()>;
    /// The next version number (one counter for the whole table).
    fn next_version(&mut self) -> DbResult<i64>;
    fn read_template(&mut self, id: &str, draft: bool) -> DbResult<Option<TemplateRow>>;
    /// Inserts or replaces the row `(r.id, r.draft)`.
    fn write_template(&mut self, r: &TemplateRow) -> DbResult<()>;
    /// Deletes the draft (`Some(true)`), the published version
    /// (`Some(false)`) or both (`None`); the rows deleted.
    fn delete_template(&mut self, id: &str, draft: Option<bool>) -> DbResult<u64>;
    /// Up to `limit` rows, by id (byte order) and the published one first.
    fn template_rows(&mut self, limit: usize) -> DbResult<Vec<TemplateRow>>;
}

/// A row from its columns (`content` and `options` are JSON text).
#[allow(clippy::too_many_arguments)]
fn row_of(
    id: String,
    draft: bool,
    version: i64,
    name: String,
    description: String,
    content: &str,
    options: &str,
    updated: i64,
) -> TemplateRow {
    TemplateRow {
        id,
        draft,
        version,
        name,
        description,
        content: serde_json::from_str(content).unwrap_or(Value::Null),
        options: TemplateOptions::from_json(&serde_json::from_str(options).unwrap_or(Value::Null)),
        updated_unix: updated.max(0) as u64,
    }
}

const COLUMNS: &str = "id, draft, version, name, description, content, options, updated";

fn lite(e: rusqlite::Error) -> String {
    format!("sqlite: {e}")
}

fn pg(e: postgres::Error) -> String {
    format!("postgresql: {}", crate::datasource::pgsql::describe(&e))
}

fn lite_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TemplateRow> {
    Ok(row_of(
        r.get(0)?,
        r.get::<_, i64>(1)? != 0,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        &r.get::<_, String>(5)?,
        &r.get::<_, String>(6)?,
        r.get(7)?,
    ))
}

fn pg_row(r: &postgres::Row) -> Result<TemplateRow, postgres::Error> {
    Ok(row_of(
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get::<_, &str>(5)?,
        r.try_get::<_, &str>(6)?,
        r.try_get(7)?,
    ))
}

/// SQLite: `<spoolbase>/api.sqlite`, tables `templates` and `versions`.
impl TemplateSql for rusqlite::Transaction<'_> {
    fn init_templates(&mut self) -> DbResult<()> {
        self.execute_batch(
            "CREATE TABLE IF NOT EXISTS templates (
                 id TEXT NOT NULL, draft INTEGER NOT NULL, version INTEGER NOT NULL,
                 name TEXT NOT NULL, description TEXT NOT NULL, content TEXT NOT NULL,
                 options TEXT NOT NULL, updated INTEGER NOT NULL,
                 PRIMARY KEY (id, draft));
             CREATE TABLE IF NOT EXISTS versions (n INTEGER NOT NULL);
             INSERT INTO versions (n) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM versions);",
        )
        .map_err(lite)
    }

    fn lock_templates(&mut self) -> DbResult<()> {
        // One connection on one worker thread: transactions never overlap.
        Ok(())
    }

    fn next_version(&mut self) -> DbResult<i64> {
        self.query_row("UPDATE versions SET n = n + 1 RETURNING n", [], |r| {
            r.get(0)
        })
        .map_err(lite)
    }

    fn read_template(&mut self, id: &str, draft: bool) -> DbResult<Option<TemplateRow>> {
        self.query_row(
            &format!("SELECT {COLUMNS} FROM templates WHERE id = ?1 AND draft = ?2"),
            params![id, draft as i64],
            lite_row,
        )
        .optional()
        .map_err(lite)
    }

    fn write_template(&mut self, r: &TemplateRow) -> DbResult<()> {
        self.execute(
            &format!(
                "INSERT OR REPLACE INTO templates ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                r.id,
                r.draft as i64,
                r.version,
                r.name,
                r.description,
                r.content.to_string(),
                r.options.json().to_string(),
                r.updated_unix as i64
            ],
        )
        .map(|_| ())
        .map_err(lite)
    }

    fn delete_template(&mut self, id: &str, draft: Option<bool>) -> DbResult<u64> {
        match draft {
            Some(d) => self.execute(
                "DELETE FROM templates WHERE id = ?1 AND draft = ?2",
                params![id, d as i64],
            ),
            None => self.execute("DELETE FROM templates WHERE id = ?1", [id]),
        }
        .map(|n| n as u64)
        .map_err(lite)
    }

    fn template_rows(&mut self, limit: usize) -> DbResult<Vec<TemplateRow>> {
        let mut stmt = self
            .prepare(&format!(
                "SELECT {COLUMNS} FROM templates ORDER BY id, draft LIMIT {limit}"
            ))
            .map_err(lite)?;
        let rows = stmt.query_map([], lite_row).map_err(lite)?;
        rows.collect::<Result<_, _>>().map_err(lite)
    }
}

/// PostgreSQL: the `api_store_datasource`'s database, tables
/// `api_templates` and `api_template_versions` (prefixed: the database
/// may hold the operator's own tables).
impl TemplateSql for postgres::Transaction<'_> {
    fn init_templates(&mut self) -> DbResult<()> {
        self.batch_execute(
            "CREATE TABLE IF NOT EXISTS api_templates (
                 id TEXT NOT NULL, draft BOOLEAN NOT NULL, version BIGINT NOT NULL,
                 name TEXT NOT NULL, description TEXT NOT NULL, content TEXT NOT NULL,
                 options TEXT NOT NULL, updated BIGINT NOT NULL,
                 PRIMARY KEY (id, draft));
             CREATE TABLE IF NOT EXISTS api_template_versions (n BIGINT NOT NULL);
             INSERT INTO api_template_versions (n)
                 SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM api_template_versions);",
        )
        .map_err(pg)
    }

    fn lock_templates(&mut self) -> DbResult<()> {
        self.execute("SELECT n FROM api_template_versions FOR UPDATE", &[])
            .map(|_| ())
            .map_err(pg)
    }

    fn next_version(&mut self) -> DbResult<i64> {
        self.query_one(
            "UPDATE api_template_versions SET n = n + 1 RETURNING n",
            &[],
        )
        .and_then(|r| r.try_get(0))
        .map_err(pg)
    }

    fn read_template(&mut self, id: &str, draft: bool) -> DbResult<Option<TemplateRow>> {
        self.query_opt(
            &format!("SELECT {COLUMNS} FROM api_templates WHERE id = $1 AND draft = $2"),
            &[&id, &draft],
        )
        .and_then(|r| r.as_ref().map(pg_row).transpose())
        .map_err(pg)
    }

    fn write_template(&mut self, r: &TemplateRow) -> DbResult<()> {
        self.execute(
            &format!(
                "INSERT INTO api_templates ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id, draft) DO UPDATE SET version = EXCLUDED.version,
                     name = EXCLUDED.name, description = EXCLUDED.description,
                     content = EXCLUDED.content, options = EXCLUDED.options,
                     updated = EXCLUDED.updated"
            ),
            &[
                &r.id,
                &r.draft,
                &r.version,
                &r.name,
                &r.description,
                &r.content.to_string(),
                &r.options.json().to_string(),
                &(r.updated_unix as i64),
            ],
        )
        .map(|_| ())
        .map_err(pg)
    }

    fn delete_template(&mut self, id: &str, draft: Option<bool>) -> DbResult<u64> {
        match draft {
            Some(d) => self.execute(
                "DELETE FROM api_templates WHERE id = $1 AND draft = $2",
                &[&id, &d],
            ),
            None => self.execute("DELETE FROM api_templates WHERE id = $1", &[&id]),
        }
        .map_err(pg)
    }

    fn template_rows(&mut self, limit: usize) -> DbResult<Vec<TemplateRow>> {
        self.query(
            &format!(
                "SELECT {COLUMNS} FROM api_templates ORDER BY id COLLATE \"C\", draft LIMIT {limit}"
            ),
            &[],
        )
        .and_then(|rows| rows.iter().map(pg_row).collect())
        .map_err(pg)
    }
}

/// A template's version as `which` asks.
pub fn get<D: TemplateSql + ?Sized>(
    db: &mut D,
    id: &str,
    which: Which,
) -> DbResult<Option<TemplateRow>> {
    match which {
        Which::Draft => db.read_template(id, true),
        Which::Published => db.read_template(id, false),
        Which::Latest => match db.read_template(id, true)? {
            Some(r) => Ok(Some(r)),
            None => db.read_template(id, false),
        },
    }
}

/// What a write to the store came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Done,
    Conflict,
    NotFound,
}

/// Creates template `f.id` (a draft, or published when `f.published`).
pub fn create<D: TemplateSql + ?Sized>(
    db: &mut D,
    f: &TemplateFields,
    now_unix: u64,
) -> DbResult<Written> {
    let id = f.id.clone().expect("parse_fields(create) sets the id");
    db.lock_templates()?;
    if db.read_template(&id, true)?.is_some() || db.read_template(&id, false)?.is_some() {
        return Ok(Written::Conflict);
    }
    let r = TemplateRow {
        version: db.next_version()?,
        id,
        draft: !f.published,
        name: f.name.clone().unwrap_or_default(),
        description: f.description.clone().unwrap_or_default(),
        content: f.content.clone().unwrap_or(Value::Null),
        options: f.options.unwrap_or_default(),
        updated_unix: now_unix,
    };
    db.write_template(&r)?;
    Ok(Written::Done)
}

/// `PUT /templates/<id>`: with `update_published` the published version
/// is changed in place; else the draft (made from the published version
/// when there is none) is, and `f.published` then publishes it (the draft
/// goes).
pub fn update<D: TemplateSql + ?Sized>(
    db: &mut D,
    id: &str,
    f: &TemplateFields,
    update_published: bool,
    now_unix: u64,
) -> DbResult<Written> {
    db.lock_templates()?;
    let base = if update_published {
        db.read_template(id, false)?
    } else {
        get(db, id, Which::Latest)?
    };
    let Some(mut r) = base else {
        return Ok(Written::NotFound);
    };
    if let Some(n) = &f.name {
        r.name = n.clone();
    }
    if let Some(d) = &f.description {
        r.description = d.clone();
    }
    if let Some(c) = &f.content {
        r.content = c.clone();
    }
    if let Some(o) = f.options {
        r.options = o;
    }
    r.version = db.next_version()?;
    r.updated_unix = now_unix;
    r.draft = !(update_published || f.published);
    db.write_template(&r)?;
    if f.published && !update_published {
        db.delete_template(id, Some(true))?;
    }
    Ok(Written::Done)
}

/// Deletes every version; false when there was none.
pub fn delete<D: TemplateSql + ?Sized>(db: &mut D, id: &str) -> DbResult<bool> {
    db.lock_templates()?;
    Ok(db.delete_template(id, None)? > 0)
}

/// Every template, one summary each (SparkPost's list shape).
pub fn list<D: TemplateSql + ?Sized>(db: &mut D) -> DbResult<Vec<Value>> {
    let rows = db.template_rows(TEMPLATES_LISTED_MAX * 2)?;
    let mut out: Vec<Value> = Vec::new();
    let mut at = 0;
    while at < rows.len() {
        let same = rows[at..]
            .iter()
            .take_while(|r| r.id == rows[at].id)
            .count();
        let group = &rows[at..at + same];
        let latest = group.iter().find(|r| r.draft).unwrap_or(&group[0]);
        out.push(json!({
            "id": latest.id,
            "name": latest.name,
            "description": latest.description,
            "published": group.iter().any(|r| !r.draft) && !latest.draft,
            "has_draft": group.iter().any(|r| r.draft),
            "has_published": group.iter().any(|r| !r.draft),
            "last_update_time": rfc3339(latest.updated_unix),
        }));
        at += same;
    }
    Ok(out)
}

/// `GET /templates/<id>`'s `results`.
pub fn shape(r: &TemplateRow, has_draft: bool, has_published: bool) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "description": r.description,
        "published": !r.draft,
        "has_draft": has_draft,
        "has_published": has_published,
        "last_update_time": rfc3339(r.updated_unix),
        "options": r.options.json(),
        "content": r.content,
    })
}

/// Inline content of a stored row (it was checked when stored).
pub fn inline_of(r: &TemplateRow) -> Result<Inline, ApiError> {
    match transmission::content(Some(&r.content))? {
        Content::Inline(c) => Ok(*c),
        Content::Rfc822(_) => Err(invalid("content", "not inline content")),
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::api::store::testing::{on_both_backends, run};
    use crate::api::store::Backend;

    fn fields(body: &str, create_: bool) -> TemplateFields {
        parse_fields(body.as_bytes(), create_).unwrap_or_else(|e| panic!("{e:?}"))
    }

    const CONTENT: &str = r#"{"from":"me@x.example","subject":"Hi {{name}}","text":"t"}"#;

    async fn read(db: &Backend, which: Which) -> Option<TemplateRow> {
        run(db, move |c| get(c, "spring-sale", which)).await
    }

    /// The same scenario on SQLite and on PostgreSQL.
    async fn drafts_scenario(db: Rc<Backend>) {
        let f = fields(
            &format!(r#"{{"name":"Spring Sale","content":{CONTENT}}}"#),
            true,
        );
        assert_eq!(f.id.as_deref(), Some("spring-sale"));
        let fc = f.clone();
        assert_eq!(run(&db, move |c| create(c, &fc, 1)).await, Written::Done);
        let fc = f.clone();
        assert_eq!(
            run(&db, move |c| create(c, &fc, 1)).await,
            Written::Conflict
        );
        assert!(read(&db, Which::Published).await.is_none());
        let d1 = read(&db, Which::Latest).await.unwrap();
        assert!(d1.draft);
        assert_eq!(d1.content["subject"], "Hi {{name}}");
        let publish = fields(r#"{"published":true}"#, false);
        run(&db, move |c| update(c, "spring-sale", &publish, false, 2)).await;
        assert!(read(&db, Which::Draft).await.is_none());
        let p = read(&db, Which::Published).await.unwrap();
        assert!(p.version > d1.version);
        let edit = fields(r#"{"description":"new"}"#, false);
        let e = edit.clone();
        run(&db, move |c| update(c, "spring-sale", &e, false, 3)).await;
        let d2 = read(&db, Which::Draft).await.unwrap();
        assert_eq!(
            (d2.description.as_str(), d2.name.as_str(), d2.updated_unix),
            ("new", "Spring Sale", 3)
        );
        assert_eq!(read(&db, Which::Published).await.unwrap().description, "");
        let listed = run(&db, |c| list(c)).await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0]["has_draft"], true);
        assert_eq!(listed[0]["has_published"], true);
        assert!(run(&db, |c| delete(c, "spring-sale")).await);
        assert!(!run(&db, |c| delete(c, "spring-sale")).await);
        let e = edit.clone();
        assert_eq!(
            run(&db, move |c| update(c, "spring-sale", &e, false, 4)).await,
            Written::NotFound
        );
        run(&db, move |c| create(c, &f, 5)).await;
        let again = read(&db, Which::Latest).await.unwrap();
        assert!(
            again.version > d2.version,
            "a re-created template is a new version"
        );
    }

    #[test]
    fn drafts_publish_and_versions_never_repeat() {
        on_both_backends(|db| Box::pin(drafts_scenario(db)));
    }

    #[test]
    fn a_template_that_does_not_compile_names_the_part_and_place() {
        let e = parse_fields(
            br#"{"name":"n","content":{"from":"me@x.example","subject":"s","html":"ok\n{{if x}}"}}"#,
            true,
        )
        .unwrap_err();
        assert_eq!((e.status, e.code), (422, "3000"));
        assert_eq!(
            e.description,
            "content.html: line 2, column 1: '{{if' without a matching '{{end}}'"
        );
        let e = parse_fields(br#"{"content":{}}"#, true).unwrap_err();
        assert_eq!(e.code, "1400");
        let e = parse_fields(br#"{"name":"n","id":"a/b","content":{}}"#, true).unwrap_err();
        assert!(e.description.starts_with("id:"), "{e:?}");
    }
}
