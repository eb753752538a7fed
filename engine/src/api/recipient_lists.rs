//! Stored recipient lists (SparkPost's `/api/v1/recipient-lists`): the
//! bodies checked (each recipient as a transmission's: address, tags,
//! metadata, substitution_data), the SQL of the `recipient_lists` table,
//! and the JSON shapes answered. A transmission's `recipients.list_id`
//! is replaced by the stored recipients before it is checked.
//!
//! Owns: list validation and SQL. May call: `api::transmission`,
//! `api::templates` (ids), rusqlite (on the store's worker thread).
//! Never: I/O of its own, shard state.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};

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

/// Creates the table when missing.
pub fn init(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS recipient_lists (
             id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,
             attributes TEXT NOT NULL, recipients TEXT NOT NULL, total INTEGER NOT NULL);",
    )
}

/// Creates (`create`) or replaces the given fields of a list.
pub fn put(conn: &mut Connection, l: &ListInput, create: bool) -> rusqlite::Result<Written> {
    let id = l.id.clone().expect("an id: from the path or parse(create)");
    let tx = conn.transaction()?;
    let old = tx
        .query_row(
            "SELECT name, description, attributes, recipients, total FROM recipient_lists WHERE id = ?1",
            [&id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            },
        )
        .optional()?;
    let (name, description, attributes, recipients, total) = match (old, create) {
        (Some(_), true) => return Ok(Written::Conflict),
        (None, false) => return Ok(Written::NotFound),
        (None, true) => (String::new(), String::new(), "{}".into(), "[]".into(), 0),
        (Some(o), false) => o,
    };
    let (recipients, total) = match &l.recipients {
        Some(r) => (Value::Array(r.clone()).to_string(), r.len() as i64),
        None => (recipients, total),
    };
    tx.execute(
        "INSERT OR REPLACE INTO recipient_lists (id, name, description, attributes, recipients, total)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id,
            l.name.clone().unwrap_or(name),
            l.description.clone().unwrap_or(description),
            l.attributes
                .as_ref()
                .map_or(attributes, |a| a.to_string()),
            recipients,
            total
        ],
    )?;
    tx.commit()?;
    Ok(Written::Done)
}

/// A list's `results` (with its recipients when asked), or `None`.
pub fn get(conn: &Connection, id: &str, with_recipients: bool) -> rusqlite::Result<Option<Value>> {
    conn.query_row(
        "SELECT id, name, description, attributes, total, recipients FROM recipient_lists WHERE id = ?1",
        [id],
        |r| {
            let mut v = shape(r)?;
            if with_recipients {
                let text: String = r.get(5)?;
                v["recipients"] = serde_json::from_str(&text).unwrap_or(Value::Array(vec![]));
            }
            Ok(v)
        },
    )
    .optional()
}

fn shape(r: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    let attributes: String = r.get(3)?;
    Ok(json!({
        "id": r.get::<_, String>(0)?,
        "name": r.get::<_, String>(1)?,
        "description": r.get::<_, String>(2)?,
        "attributes": serde_json::from_str::<Value>(&attributes).unwrap_or(json!({})),
        "total_accepted_recipients": r.get::<_, i64>(4)?,
    }))
}

/// Every list, without recipients.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Value>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT id, name, description, attributes, total FROM recipient_lists ORDER BY id LIMIT {LISTS_LISTED_MAX}"
    ))?;
    let rows = stmt.query_map([], shape)?.collect();
    rows
}

/// Deletes a list; false when there was none.
pub fn delete(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM recipient_lists WHERE id = ?1", [id])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_created_read_replaced_and_deleted() {
        let mut c = Connection::open_in_memory().unwrap();
        init(&c).unwrap();
        let l = parse(
            br#"{"name":"VIP List","recipients":[
                {"address":{"email":"a@x.example"},"tags":["t"],"substitution_data":{"n":1}},
                {"address":"not an address"}]}"#,
            true,
        )
        .unwrap();
        assert_eq!((l.id.as_deref(), l.rejected), (Some("vip-list"), 1));
        assert_eq!(put(&mut c, &l, true).unwrap(), Written::Done);
        assert_eq!(put(&mut c, &l, true).unwrap(), Written::Conflict);
        let got = get(&c, "vip-list", true).unwrap().unwrap();
        assert_eq!(got["total_accepted_recipients"], 1);
        assert_eq!(got["recipients"][0]["substitution_data"]["n"], 1);
        let mut rename = parse(br#"{"name":"renamed"}"#, false).unwrap();
        rename.id = Some("vip-list".into());
        put(&mut c, &rename, false).unwrap();
        let got = get(&c, "vip-list", false).unwrap().unwrap();
        assert_eq!(
            (got["name"].as_str(), got.get("recipients")),
            (Some("renamed"), None)
        );
        assert_eq!(list(&c).unwrap().len(), 1);
        assert!(delete(&c, "vip-list").unwrap());
        assert!(get(&c, "vip-list", false).unwrap().is_none());
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
}
