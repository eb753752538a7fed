//! Stored recipient lists (SparkPost's `/api/v1/recipient-lists`): the
//! bodies checked (each recipient as a transmission's: address, tags,
//! metadata, substitution_data), the SQL of the `recipient_lists` table,
//! and the JSON shapes answered. A transmission's `recipients.list_id`
//! is replaced by the stored recipients before it is checked.
//!
//! Owns: list validation and the list SQL of both backends ([`ListSql`]:
//! SQLite and PostgreSQL side by side). May call: `api::transmission`,
//! `api::templates` (ids), rusqlite and postgres (on the store's worker
//! threads). Never: I/O of its own, shard state.

use rusqlite::{params, OptionalExtension};
use serde_json::{json, Map, Value};

use super::store::DbResult;
use super::templates::{id_from_name, valid_id, Written, TEMPLATE_NAME_BYTES_MAX};
use super::transmission::{self, API_RECIPIENTS_PER_TRANSMISSION_MAX};
use super::ApiError;

/// Most recipients one list holds (what one transmission may send to).
pub const LIST_RECIPIENTS_MAX: usize = API_RECIPIENTS_PER_TRANSMISSION_MAX;
/// Most lists `GET /api/v1/recipient-lists` shows.
pub const LISTS_LISTED_MAX: usize = 10_000;

fn invalid(field: &str, what: &str) -> ApiError {
    ApiError::new(
        422,
        "1300",
        "invalid data format/type",
        format!("{field}: {what}"),
    )
}

/// A list as a create or update gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListInput {
    pub id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub attributes: Option<Value>,
    /// The accepted recipients, as given (JSON objects).
    pub recipients: Option<Vec<Value>>,
    pub rejected: usize,
}

fn text(m: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= TEMPLATE_NAME_BYTES_MAX => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(invalid(
            key,
            &format!("longer than {TEMPLATE_NAME_BYTES_MAX} bytes"),
        )),
        Some(_) => Err(invalid(key, "must be a string")),
    }
}

/// Checks a `POST` (`create`: recipients required, id from the name when
/// missing) or `PUT` body.
pub fn parse(body: &[u8], create: bool) -> Result<ListInput, ApiError> {
    let Value::Object(m) = transmission::json_body(body)? else {
        return Err(invalid("body", "must be a JSON object"));
    };
    let name = text(&m, "name")?;
    let mut id = text(&m, "id")?;
    if create && id.is_none() {
        id = Some(id_from_name(name.as_deref().unwrap_or("list")));
    }
    if id.as_deref().is_some_and(|i| !valid_id(i)) {
        return Err(invalid("id", "1 to 64 letters, digits, '-' or '_'"));
    }
    let attributes = match m.get("attributes") {
        None | Some(Value::Null) => None,
        Some(a @ Value::Object(_)) => Some(a.clone()),
        Some(_) => return Err(invalid("attributes", "must be a JSON object")),
    };
    let (recipients, rejected) = match m.get("recipients") {
        None | Some(Value::Null) if create => {
            return Err(ApiError::new(
                422,
                "1400",
                "required field is missing",
                "recipients is required".into(),
            ))
        }
        None | Some(Value::Null) => (None, 0),
        Some(Value::Array(list)) => {
            if list.len() > LIST_RECIPIENTS_MAX {
                return Err(invalid(
                    "recipients",
                    &format!("at most {LIST_RECIPIENTS_MAX} per list"),
                ));
            }
            let mut kept = Vec::with_capacity(list.len());
            let mut rejected = 0;
            for (i, v) in list.iter().enumerate() {
                let r = transmission::recipient(v, i)?;
                let rp_ok = r
                    .return_path
                    .as_deref()
                    .is_none_or(transmission::usable_address);
                if transmission::usable_address(&r.address.email) && rp_ok {
                    kept.push(v.clone());
                } else {
                    rejected += 1;
                }
            }
            if create && kept.is_empty() {
                return Err(ApiError::new(
                    422,
                    "5001",
                    "at least one valid recipient is required",
                    format!("recipients: none of the {} is usable", list.len()),
                ));
            }
            (Some(kept), rejected)
        }
        Some(_) => return Err(invalid("recipients", "must be an array")),
    };
    Ok(ListInput {
        id,
        name,
        description: text(&m, "description")?,
        attributes,
        recipients,
        rejected,
    })
}

/// A list as stored: `attributes` and `recipients` are JSON text
/// (`recipients` empty when not read).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub attributes: String,
    pub recipients: String,
    pub total: i64,
}

/// The `recipient_lists` table as each backend reads and writes it, inside
/// the transaction of one [`Backend::call`](super::store::Backend::call);
/// the semantics are the functions below, written once over this trait.
pub trait ListSql {
    /// Creates the table when missing.
    fn init_lists(&mut self) -> DbResult<()>;
    /// A list, with its recipients when `with_recipients`; `for_update`
    /// locks its row until the transaction ends (PostgreSQL).
    fn read_list(
        &mut self,
        id: &str,
        with_recipients: bool,
        for_update: bool,
    ) -> DbResult<Option<ListRow>>;
    /// Inserts `l`; false when its id is taken.
    fn insert_list(&mut self, l: &ListRow) -> DbResult<bool>;
    /// Replaces list `l.id`; false when there is none.
    fn update_list(&mut self, l: &ListRow) -> DbResult<bool>;
    fn delete_list(&mut self, id: &str) -> DbResult<bool>;
    /// Up to `limit` lists by id (byte order), without recipients.
    fn list_rows(&mut self, limit: usize) -> DbResult<Vec<ListRow>>;
}

fn lite(e: rusqlite::Error) -> String {
    format!("sqlite: {e}")
}

fn pg(e: postgres::Error) -> String {
    format!("postgresql: {}", crate::datasource::pgsql::describe(&e))
}

/// The columns read, in [`ListRow`]'s order; `recipients` is empty text
/// unless asked for.
fn columns(with_recipients: bool) -> &'static str {
    if with_recipients {
        "id, name, description, attributes, recipients, total"
    } else {
        "id, name, description, attributes, CAST('' AS TEXT), total"
    }
}

fn lite_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ListRow> {
    Ok(ListRow {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        attributes: r.get(3)?,
        recipients: r.get(4)?,
        total: r.get(5)?,
    })
}

fn pg_row(r: &postgres::Row) -> Result<ListRow, postgres::Error> {
    Ok(ListRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        description: r.try_get(2)?,
        attributes: r.try_get(3)?,
        recipients: r.try_get(4)?,
        total: r.try_get(5)?,
    })
}

/// SQLite: table `recipient_lists` of `<spoolbase>/api.sqlite`.
impl ListSql for rusqlite::Transaction<'_> {
    fn init_lists(&mut self) -> DbResult<()> {
        self.execute_batch(
            "CREATE TABLE IF NOT EXISTS recipient_lists (
                 id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,
                 attributes TEXT NOT NULL, recipients TEXT NOT NULL, total INTEGER NOT NULL);",
        )
        .map_err(lite)
    }

    fn read_list(&mut self, id: &str, with: bool, _for_update: bool) -> DbResult<Option<ListRow>> {
        // One connection on one worker thread: no other writer to lock out.
        self.query_row(
            &format!(
                "SELECT {} FROM recipient_lists WHERE id = ?1",
                columns(with)
            ),
            [id],
            lite_row,
        )
        .optional()
        .map_err(lite)
    }

    fn insert_list(&mut self, l: &ListRow) -> DbResult<bool> {
        self.execute(
            "INSERT OR IGNORE INTO recipient_lists (id, name, description, attributes, recipients, total)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![l.id, l.name, l.description, l.attributes, l.recipients, l.total],
        )
        .map(|n| n > 0)
        .map_err(lite)
    }

    fn update_list(&mut self, l: &ListRow) -> DbResult<bool> {
        self.execute(
            "UPDATE recipient_lists SET name = ?2, description = ?3, attributes = ?4,
                 recipients = ?5, total = ?6 WHERE id = ?1",
            params![
                l.id,
                l.name,
                l.description,
                l.attributes,
                l.recipients,
                l.total
            ],
        )
        .map(|n| n > 0)
        .map_err(lite)
    }

    fn delete_list(&mut self, id: &str) -> DbResult<bool> {
        self.execute("DELETE FROM recipient_lists WHERE id = ?1", [id])
            .map(|n| n > 0)
            .map_err(lite)
    }

    fn list_rows(&mut self, limit: usize) -> DbResult<Vec<ListRow>> {
        let mut stmt = self
            .prepare(&format!(
                "SELECT {} FROM recipient_lists ORDER BY id LIMIT {limit}",
                columns(false)
            ))
            .map_err(lite)?;
        let rows = stmt.query_map([], lite_row).map_err(lite)?;
        rows.collect::<Result<_, _>>().map_err(lite)
    }
}

/// A list row as PostgreSQL parameters $1..$6 (insert and update alike).
fn pg_params(l: &ListRow) -> [&(dyn postgres::types::ToSql + Sync); 6] {
    [
        &l.id,
        &l.name,
        &l.description,
        &l.attributes,
        &l.recipients,
        &l.total,
    ]
}

/// PostgreSQL: table `api_recipient_lists` of the `api_store_datasource`.
impl ListSql for postgres::Transaction<'_> {
    fn init_lists(&mut self) -> DbResult<()> {
        self.batch_execute(
            "CREATE TABLE IF NOT EXISTS api_recipient_lists (
                 id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,
                 attributes TEXT NOT NULL, recipients TEXT NOT NULL, total BIGINT NOT NULL);",
        )
        .map_err(pg)
    }

    fn read_list(&mut self, id: &str, with: bool, for_update: bool) -> DbResult<Option<ListRow>> {
        let lock = if for_update { " FOR UPDATE" } else { "" };
        self.query_opt(
            &format!(
                "SELECT {} FROM api_recipient_lists WHERE id = $1{lock}",
                columns(with)
            ),
            &[&id],
        )
        .and_then(|r| r.as_ref().map(pg_row).transpose())
        .map_err(pg)
    }

    fn insert_list(&mut self, l: &ListRow) -> DbResult<bool> {
        self.execute(
            "INSERT INTO api_recipient_lists (id, name, description, attributes, recipients, total)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            &pg_params(l),
        )
        .map(|n| n > 0)
        .map_err(pg)
    }

    fn update_list(&mut self, l: &ListRow) -> DbResult<bool> {
        self.execute(
            "UPDATE api_recipient_lists SET name = $2, description = $3, attributes = $4,
                 recipients = $5, total = $6 WHERE id = $1",
            &pg_params(l),
        )
        .map(|n| n > 0)
        .map_err(pg)
    }

    fn delete_list(&mut self, id: &str) -> DbResult<bool> {
        self.execute("DELETE FROM api_recipient_lists WHERE id = $1", &[&id])
            .map(|n| n > 0)
            .map_err(pg)
    }

    fn list_rows(&mut self, limit: usize) -> DbResult<Vec<ListRow>> {
        self.query(
            &format!(
                "SELECT {} FROM api_recipient_lists ORDER BY id COLLATE \"C\" LIMIT {limit}",
                columns(false)
            ),
            &[],
        )
        .and_then(|rows| rows.iter().map(pg_row).collect())
        .map_err(pg)
    }
}

/// Creates (`create`) or replaces the given fields of a list.
pub fn put<D: ListSql + ?Sized>(db: &mut D, l: &ListInput, create: bool) -> DbResult<Written> {
    let id = l.id.clone().expect("an id: from the path or parse(create)");
    let old = if create {
        None
    } else {
        match db.read_list(&id, true, true)? {
            Some(old) => Some(old),
            None => return Ok(Written::NotFound),
        }
    };
    let old = old.unwrap_or_else(|| ListRow {
        attributes: "{}".into(),
        recipients: "[]".into(),
        ..ListRow::default()
    });
    let (recipients, total) = match &l.recipients {
        Some(r) => (Value::Array(r.clone()).to_string(), r.len() as i64),
        None => (old.recipients, old.total),
    };
    let row = ListRow {
        id,
        name: l.name.clone().unwrap_or(old.name),
        description: l.description.clone().unwrap_or(old.description),
        attributes: l
            .attributes
            .as_ref()
            .map_or(old.attributes, |a| a.to_string()),
        recipients,
        total,
    };
    let written = if create {
        db.insert_list(&row)?
    } else {
        db.update_list(&row)?
    };
    Ok(match (written, create) {
        (true, _) => Written::Done,
        (false, true) => Written::Conflict,
        (false, false) => Written::NotFound,
    })
}

/// A list's `results` (with its recipients when asked), or `None`.
pub fn get<D: ListSql + ?Sized>(
    db: &mut D,
    id: &str,
    with_recipients: bool,
) -> DbResult<Option<Value>> {
    Ok(db.read_list(id, with_recipients, false)?.map(|r| {
        let mut v = shape(&r);
        if with_recipients {
            v["recipients"] = recipients_of(&r);
        }
        v
    }))
}

/// A list's recipients (what a transmission's `list_id` stands for), or
/// `None`.
pub fn recipients<D: ListSql + ?Sized>(db: &mut D, id: &str) -> DbResult<Option<Value>> {
    Ok(db.read_list(id, true, false)?.map(|r| recipients_of(&r)))
}

fn recipients_of(r: &ListRow) -> Value {
    serde_json::from_str(&r.recipients).unwrap_or(Value::Array(vec![]))
}

fn shape(r: &ListRow) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "description": r.description,
        "attributes": serde_json::from_str::<Value>(&r.attributes).unwrap_or(json!({})),
        "total_accepted_recipients": r.total,
    })
}

/// Every list, without recipients.
pub fn list<D: ListSql + ?Sized>(db: &mut D) -> DbResult<Vec<Value>> {
    Ok(db.list_rows(LISTS_LISTED_MAX)?.iter().map(shape).collect())
}

/// Deletes a list; false when there was none.
pub fn delete<D: ListSql + ?Sized>(db: &mut D, id: &str) -> DbResult<bool> {
    db.delete_list(id)
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::api::store::testing::{on_both_backends, run};
    use crate::api::store::Backend;

    /// The same scenario on SQLite and on PostgreSQL.
    async fn list_scenario(db: Rc<Backend>) {
        let l = parse(
            br#"{"name":"VIP List","recipients":[
                {"address":{"email":"a@x.example"},"tags":["t"],"substitution_data":{"n":1}},
                {"address":"not an address"}]}"#,
            true,
        )
        .unwrap();
        assert_eq!((l.id.as_deref(), l.rejected), (Some("vip-list"), 1));
        let lc = l.clone();
        assert_eq!(run(&db, move |c| put(c, &lc, true)).await, Written::Done);
        let lc = l.clone();
        assert_eq!(
            run(&db, move |c| put(c, &lc, true)).await,
            Written::Conflict
        );
        let got = run(&db, |c| get(c, "vip-list", true)).await.unwrap();
        assert_eq!(got["total_accepted_recipients"], 1);
        assert_eq!(got["recipients"][0]["substitution_data"]["n"], 1);
        let mut rename = parse(br#"{"name":"renamed"}"#, false).unwrap();
        rename.id = Some("vip-list".into());
        let r = rename.clone();
        assert_eq!(run(&db, move |c| put(c, &r, false)).await, Written::Done);
        let got = run(&db, |c| get(c, "vip-list", false)).await.unwrap();
        assert_eq!(
            (got["name"].as_str(), got.get("recipients")),
            (Some("renamed"), None)
        );
        let kept = run(&db, |c| recipients(c, "vip-list")).await.unwrap();
        assert_eq!(kept[0]["address"]["email"], "a@x.example");
        assert_eq!(run(&db, |c| list(c)).await.len(), 1);
        assert!(run(&db, |c| delete(c, "vip-list")).await);
        assert!(run(&db, |c| get(c, "vip-list", false)).await.is_none());
        assert_eq!(
            run(&db, move |c| put(c, &rename, false)).await,
            Written::NotFound
        );
        let e = parse(br#"{"recipients":[{"address":"bad"}]}"#, true).unwrap_err();
        assert_eq!(e.status, 422);
        let e = parse(
            br#"{"recipients":[{"address":{"email":"a@x.example"},"substitution_data":3}]}"#,
            true,
        )
        .unwrap_err();
        assert!(
            e.description.contains("recipients[0].substitution_data"),
            "{e:?}"
        );
    }

    #[test]
    fn a_list_is_created_read_replaced_and_deleted() {
        on_both_backends(|db| Box::pin(list_scenario(db)));
    }
}
