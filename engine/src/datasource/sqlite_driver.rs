//! The SQLite driver's jobs, run on the datasource's [`SqliteWorker`]
//! thread: bind the parameters (by position or by name), step the rows up
//! to `max_rows`, convert values. Errors come back as strings.
//!
//! Owns: binding and conversion for SQLite. May call: rusqlite. Never:
//! anything on a shard (these run on the worker thread).
//!
//! [`SqliteWorker`]: crate::sqlite::SqliteWorker

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, Statement, ToSql};

use super::{Params, Rows, Value};

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(SqlValue::Null),
            Value::Integer(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Owned(SqlValue::Real(*f)),
            Value::Bool(b) => ToSqlOutput::Owned(SqlValue::Integer(*b as i64)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn value_of(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Text(s.to_string()),
            Err(_) => Value::Blob(t.to_vec()),
        },
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Binds `params` to `stmt`. Positional values fill `?1..`; fewer values
/// than placeholders leave the rest NULL (a Lua nil at the end of a table
/// is no entry). Named values fill `:name`, `$name`, `@name`; a name the
/// table lacks is NULL; a table name the SQL lacks is an error.
fn bind(stmt: &mut Statement<'_>, params: &Params) -> Result<(), String> {
    let count = stmt.parameter_count();
    match params {
        Params::Positional(values) => {
            if values.len() > count {
                return Err(format!(
                    "{} parameters given, the query has {count} placeholders",
                    values.len()
                ));
            }
            for (i, v) in values.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, v)
                    .map_err(|e| e.to_string())?;
            }
        }
        Params::Named(pairs) => {
            for (name, _) in pairs {
                let found = (1..=count).any(|i| {
                    stmt.parameter_name(i)
                        .is_some_and(|p| p.len() > 1 && &p[1..] == name)
                });
                if !found {
                    return Err(format!("the query has no parameter named `{name}`"));
                }
            }
            for i in 1..=count {
                let Some(placeholder) = stmt.parameter_name(i).map(str::to_string) else {
                    return Err(format!(
                        "placeholder {i} is positional but the parameters are named"
                    ));
                };
                let bare = &placeholder[1..];
                let value = pairs
                    .iter()
                    .find(|(n, _)| n == bare)
                    .map(|(_, v)| v)
                    .unwrap_or(&Value::Null);
                stmt.raw_bind_parameter(i, value)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// Runs one statement and collects up to `max_rows` rows.
pub(super) fn query(
    conn: &mut Connection,
    sql: &str,
    params: &Params,
    max_rows: Option<usize>,
) -> Result<Rows, String> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| e.to_string())?;
    bind(&mut stmt, params)?;
    let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
    let width = columns.len();
    let mut out = Rows {
        columns,
        rows: Vec::new(),
    };
    let mut rows = stmt.raw_query();
    while max_rows.is_none_or(|max| out.rows.len() < max) {
        let Some(row) = rows.next().map_err(|e| e.to_string())? else {
            break;
        };
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(value_of(row.get_ref(i).map_err(|e| e.to_string())?));
        }
        out.rows.push(values);
    }
    Ok(out)
}

/// Runs `sql` for its effect; returns the rows changed. Without
/// parameters every `;`-separated statement runs (schema scripts).
pub(super) fn execute(conn: &mut Connection, sql: &str, params: &Params) -> Result<u64, String> {
    if params.is_empty() {
        let before = conn.total_changes();
        conn.execute_batch(sql).map_err(|e| e.to_string())?;
        return Ok(conn.total_changes().saturating_sub(before));
    }
    let mut stmt = conn.prepare_cached(sql).map_err(|e| e.to_string())?;
    bind(&mut stmt, params)?;
    stmt.raw_execute()
        .map(|n| n as u64)
        .map_err(|e| e.to_string())
}
