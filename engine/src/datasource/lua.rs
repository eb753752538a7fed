//! Momentum's `msys.db` for Lua: `query`, `fetch_row`, `execute`, each an
//! async function that awaits the datasource on the shard (the Lua
//! coroutine yields; the shard runs other tasks meanwhile).
//!
//! - `msys.db.query(cache, sql [, params [, opts]])` returns an iterator
//!   over the rows (`for row in rowset do ... end`), each row a table keyed
//!   by column name (a NULL column is absent, as Lua's nil).
//! - `msys.db.fetch_row(cache, sql [, params [, opts]])` returns the first
//!   row as such a table, or nil when there is none.
//! - `msys.db.execute(cache, sql [, params [, opts]])` returns `true` (and
//!   the number of rows changed) on success.
//!
//! `params` is a list (`{ a, b }` for `?`/`$1` placeholders) or a table of
//! names (`{ name = v }` for `:name`/`$name`; a leading `:` or `$` in a
//! key is dropped). `opts` takes Momentum's `nocache` (bypass the cache)
//! and `raise_error` (default true: a failure raises a Lua error; false:
//! `query`/`fetch_row` return `nil, errmsg` and `execute` `false, errmsg`).
//!
//! Owns: the conversion between Lua values and [`Value`], the functions'
//! shapes. May call: [`Datasources`], mlua. Never: the scriptlet engine
//! (it calls [`register`]).

use std::cell::Cell;
use std::rc::Rc;

use mlua::{Function, IntoLuaMulti, Lua, MultiValue, Table, Value as LuaValue};

use super::{Datasources, Params, QueryOptions, Rows, Value, PARAMS_MAX};

/// Installs `msys.db.query`, `msys.db.fetch_row` and `msys.db.execute`
/// (creating `msys.db` if it is not there yet).
pub fn register(lua: &Lua, msys: &Table, sources: Rc<Datasources>) -> mlua::Result<()> {
    let db: Table = match msys.get::<Option<Table>>("db")? {
        Some(db) => db,
        None => {
            let db = lua.create_table()?;
            msys.set("db", db.clone())?;
            db
        }
    };
    let s = sources.clone();
    db.set(
        "query",
        lua.create_async_function(move |lua, args: Args| {
            let s = s.clone();
            async move {
                let call = args.decode()?;
                match s
                    .query(&call.cache, &call.sql, call.params, call.options)
                    .await
                {
                    Ok(rows) => iterator(&lua, rows)?.into_lua_multi(&lua),
                    Err(e) => failure(&lua, call.raise_error, LuaValue::Nil, e.to_string()),
                }
            }
        })?,
    )?;
    let s = sources.clone();
    db.set(
        "fetch_row",
        lua.create_async_function(move |lua, args: Args| {
            let s = s.clone();
            async move {
                let call = args.decode()?;
                match s
                    .query(&call.cache, &call.sql, call.params, call.options)
                    .await
                {
                    Ok(rows) if rows.rows.is_empty() => LuaValue::Nil.into_lua_multi(&lua),
                    Ok(rows) => row_table(&lua, &rows, 0)?.into_lua_multi(&lua),
                    Err(e) => failure(&lua, call.raise_error, LuaValue::Nil, e.to_string()),
                }
            }
        })?,
    )?;
    let s = sources;
    db.set(
        "execute",
        lua.create_async_function(move |lua, args: Args| {
            let s = s.clone();
            async move {
                let call = args.decode()?;
                match s.execute(&call.cache, &call.sql, call.params).await {
                    Ok(changed) => (true, changed as i64).into_lua_multi(&lua),
                    Err(e) => failure(
                        &lua,
                        call.raise_error,
                        LuaValue::Boolean(false),
                        e.to_string(),
                    ),
                }
            }
        })?,
    )?;
    Ok(())
}

/// The arguments as Lua passed them.
type Args = (String, String, Option<Table>, Option<Table>);

struct Call {
    cache: String,
    sql: String,
    params: Params,
    options: QueryOptions,
    raise_error: bool,
}

trait Decode {
    fn decode(self) -> mlua::Result<Call>;
}

impl Decode for Args {
    fn decode(self) -> mlua::Result<Call> {
        let (cache, sql, params, opts) = self;
        let params = match params {
            Some(t) => params_of(&t)?,
            None => Params::none(),
        };
        let mut options = QueryOptions::default();
        let mut raise_error = true;
        if let Some(opts) = opts {
            for pair in opts.pairs::<String, LuaValue>() {
                let (key, value) = pair?;
                let flag = match value {
                    LuaValue::Boolean(b) => b,
                    LuaValue::Nil => false,
                    other => {
                        return Err(mlua::Error::runtime(format!(
                            "msys.db: option `{key}` takes a boolean, got a {}",
                            other.type_name()
                        )))
                    }
                };
                match key.as_str() {
                    "nocache" => options.nocache = flag,
                    "raise_error" => raise_error = flag,
                    _ => {
                        return Err(mlua::Error::runtime(format!(
                            "msys.db: unknown option `{key}` (known: nocache, raise_error)"
                        )))
                    }
                }
            }
        }
        Ok(Call {
            cache,
            sql,
            params,
            options,
            raise_error,
        })
    }
}

fn failure(lua: &Lua, raise: bool, first: LuaValue, message: String) -> mlua::Result<MultiValue> {
    if raise {
        return Err(mlua::Error::runtime(message));
    }
    (first, message).into_lua_multi(lua)
}

fn value_of(v: LuaValue) -> mlua::Result<Value> {
    Ok(match v {
        LuaValue::Nil => Value::Null,
        LuaValue::Boolean(b) => Value::Bool(b),
        LuaValue::Integer(i) => Value::Integer(i),
        LuaValue::Number(f) => Value::Real(f),
        LuaValue::String(s) => match s.to_str() {
            Ok(text) => Value::Text(text.to_string()),
            Err(_) => Value::Blob(s.as_bytes().to_vec()),
        },
        other => {
            return Err(mlua::Error::runtime(format!(
                "msys.db: a query parameter cannot be a {}",
                other.type_name()
            )))
        }
    })
}

/// A list (`{ a, b }`, holes are NULL) or a table of names.
fn params_of(t: &Table) -> mlua::Result<Params> {
    let mut positional: Vec<(usize, Value)> = Vec::new();
    let mut named: Vec<(String, Value)> = Vec::new();
    for pair in t.pairs::<LuaValue, LuaValue>() {
        let (key, value) = pair?;
        if positional.len() + named.len() >= PARAMS_MAX {
            return Err(mlua::Error::runtime(format!(
                "msys.db: more than {PARAMS_MAX} query parameters"
            )));
        }
        match key {
            LuaValue::Integer(i) if (1..=PARAMS_MAX as i64).contains(&i) => {
                positional.push((i as usize, value_of(value)?))
            }
            LuaValue::String(s) => {
                let name = s.to_str()?.to_string();
                let bare = name.trim_start_matches([':', '$', '@']).to_string();
                named.push((bare, value_of(value)?));
            }
            other => {
                return Err(mlua::Error::runtime(format!(
                    "msys.db: query parameter keys are 1..{PARAMS_MAX} or names, got {}",
                    other
                        .to_string()
                        .unwrap_or_else(|_| other.type_name().into())
                )))
            }
        }
    }
    if !positional.is_empty() && !named.is_empty() {
        return Err(mlua::Error::runtime(
            "msys.db: query parameters are either a list or a table of names, not both",
        ));
    }
    if !named.is_empty() {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(Params::Named(named));
    }
    let len = positional.iter().map(|(i, _)| *i).max().unwrap_or(0);
    let mut values = vec![Value::Null; len];
    for (i, v) in positional {
        values[i - 1] = v;
    }
    Ok(Params::Positional(values))
}

fn lua_value(lua: &Lua, v: &Value) -> mlua::Result<LuaValue> {
    Ok(match v {
        Value::Null => LuaValue::Nil,
        Value::Integer(i) => LuaValue::Integer(*i),
        Value::Real(f) => LuaValue::Number(*f),
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Text(s) => LuaValue::String(lua.create_string(s)?),
        Value::Blob(b) => LuaValue::String(lua.create_string(b)?),
    })
}

fn row_table(lua: &Lua, rows: &Rows, index: usize) -> mlua::Result<Table> {
    let row = &rows.rows[index];
    let table = lua.create_table_with_capacity(0, row.len())?;
    for (column, value) in rows.columns.iter().zip(row) {
        if *value != Value::Null {
            table.set(column.as_str(), lua_value(lua, value)?)?;
        }
    }
    Ok(table)
}

/// Momentum's `rowiter`: each call returns the next row table, then nil.
fn iterator(lua: &Lua, rows: Rc<Rows>) -> mlua::Result<Function> {
    let next = Cell::new(0usize);
    lua.create_function(move |lua, ()| {
        let i = next.get();
        if i >= rows.rows.len() {
            return Ok(LuaValue::Nil);
        }
        next.set(i + 1);
        Ok(LuaValue::Table(row_table(lua, &rows, i)?))
    })
}
