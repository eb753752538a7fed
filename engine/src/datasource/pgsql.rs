//! The PostgreSQL driver: `connections` worker threads, each owning one
//! sync `postgres::Client` (which drives its socket on a small runtime of
//! its own, on that thread: nothing async runs on a shard), all fed from
//! one bounded channel. A shard queues a job and awaits its one-slot reply
//! channel, as with the SQLite worker.
//!
//! A worker connects on its first job and again after its connection
//! breaks, so a database that is down at start, or restarts, answers
//! errors meanwhile and nothing more. Each connection sets the server's
//! `statement_timeout` to the datasource's `query_timeout_ms`, so a query
//! the shard gave up on is also cancelled on the server.
//!
//! Parameters are `$1`, `$2`, ... bound by position, converted to the type
//! the server inferred for each placeholder (`int4`, `text`, `bool`,
//! `bytea`, `float8`, ...). Result columns of other types than integers,
//! floats, bool, text and bytea are refused by name: cast them in SQL
//! (`created::text`).
//!
//! Owns: the pool threads and their clients, conversion to and from
//! PostgreSQL types. May call: postgres, flume, glommio's timer. Never:
//! shard state.

use std::error::Error as StdError;
use std::str::FromStr;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, NoTls};

use super::{DsError, Params, Rows, Value};
use crate::config::DatasourceConfig;

/// Longest wait for a TCP connection to the server.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// A PostgreSQL datasource's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgLimits {
    pub connections: usize,
    pub queue_limit_jobs: usize,
    pub query_timeout_ms: u64,
}

impl PgLimits {
    pub fn of(config: &DatasourceConfig) -> PgLimits {
        PgLimits {
            connections: config.connections,
            queue_limit_jobs: config.queue_limit_jobs,
            query_timeout_ms: config.query_timeout_ms,
        }
    }
}

type Job = Box<dyn FnOnce(&mut Conn) + Send + 'static>;

/// A worker's connection, made on demand.
struct Conn {
    config: postgres::Config,
    statement_timeout_ms: u64,
    client: Option<Client>,
}

impl Conn {
    fn client(&mut self) -> Result<&mut Client, String> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut client = self
                .config
                .connect(NoTls)
                .map_err(|e| format!("cannot connect: {}", describe(&e)))?;
            client
                .batch_execute(&format!(
                    "SET statement_timeout = {}",
                    self.statement_timeout_ms
                ))
                .map_err(|e| describe(&e))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Forgets a connection that broke under a job.
    fn check(&mut self) {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
    }
}

/// The server's message when there is one (`ERROR: relation "x" does
/// not exist`), else the client's.
pub(crate) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match e.source() {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// The pool of one PostgreSQL datasource.
pub struct PgPool {
    name: String,
    jobs: flume::Sender<Job>,
    limits: PgLimits,
    _threads: Vec<JoinHandle<()>>,
}

impl PgPool {
    /// Checks `conninfo` and starts the worker threads (they connect on
    /// their first job).
    pub fn open(name: &str, conninfo: &str, limits: PgLimits) -> Result<PgPool, String> {
        assert!(limits.connections > 0 && limits.queue_limit_jobs > 0);
        let mut config = postgres::Config::from_str(conninfo)
            .map_err(|e| format!("bad PostgreSQL connection string: {e}"))?;
        config.connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS));
        config.application_name("ecelerity");
        let (tx, rx) = flume::bounded::<Job>(limits.queue_limit_jobs);
        let mut threads = Vec::with_capacity(limits.connections);
        for i in 0..limits.connections {
            let rx = rx.clone();
            let mut conn = Conn {
                config: config.clone(),
                statement_timeout_ms: limits.query_timeout_ms,
                client: None,
            };
            let thread = std::thread::Builder::new()
                .name(format!("pgsql-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job(&mut conn);
                        conn.check();
                    }
                })
                .map_err(|e| format!("cannot start a worker thread: {e}"))?;
            threads.push(thread);
        }
        Ok(PgPool {
            name: name.to_string(),
            jobs: tx,
            limits,
            _threads: threads,
        })
    }

    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<R, String> + Send + 'static,
    ) -> Result<R, DsError> {
        let name = || self.name.clone();
        let (reply_tx, reply_rx) = flume::bounded(1);
        let job: Job = Box::new(move |conn: &mut Conn| {
            if reply_tx.is_disconnected() {
                return;
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err("the query panicked".to_string()));
            let _ = reply_tx.send(result);
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => {
                return Err(DsError::Busy {
                    name: name(),
                    limit: self.limits.queue_limit_jobs,
                })
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                return Err(DsError::Stopped { name: name() })
            }
        }
        let ms = self.limits.query_timeout_ms;
        match glommio::timer::timeout(Duration::from_millis(ms), async {
            Ok(reply_rx.recv_async().await)
        })
        .await
        {
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(reason))) => Err(DsError::Query {
                name: name(),
                reason,
            }),
            Ok(Err(_)) => Err(DsError::Stopped { name: name() }),
            Err(_) => Err(DsError::Timeout { name: name(), ms }),
        }
    }

    /// Runs `f` with one of the pool's clients, on its worker thread (for
    /// the API store: `api::store`). Errors as a query's.
    pub async fn with_client<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, String> + Send + 'static,
    ) -> Result<R, DsError> {
        self.call(move |conn| f(conn.client()?)).await
    }

    pub(super) async fn query(
        &self,
        sql: &str,
        params: Params,
        max_rows: Option<usize>,
    ) -> Result<Rows, DsError> {
        let sql = sql.to_string();
        self.call(move |conn| {
            let client = conn.client()?;
            run_query(client, &sql, params, max_rows).map_err(|e| describe_any(e.as_ref()))
        })
        .await
    }

    pub(super) async fn execute(&self, sql: &str, params: Params) -> Result<u64, DsError> {
        let sql = sql.to_string();
        self.call(move |conn| {
            let client = conn.client()?;
            if params.is_empty() {
                // A script: several statements, no count.
                return client
                    .batch_execute(&sql)
                    .map(|_| 0)
                    .map_err(|e| describe(&e));
            }
            let stmt = client.prepare(&sql).map_err(|e| describe(&e))?;
            let bound = bind(&stmt, params)?;
            let refs: Vec<&(dyn ToSql + Sync)> =
                bound.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            client.execute(&stmt, &refs).map_err(|e| describe(&e))
        })
        .await
    }
}

fn describe_any(e: &(dyn StdError + 'static)) -> String {
    match e.downcast_ref::<postgres::Error>() {
        Some(pg) => describe(pg),
        None => e.to_string(),
    }
}

/// A parameter converted at bind time to the type of its placeholder.
#[derive(Debug)]
struct PgParam(Value);

impl ToSql for PgParam {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let v = &self.0;
        let wrong = || -> Box<dyn StdError + Sync + Send> {
            format!("cannot bind {v:?} to a parameter of type {ty} (cast it in SQL, e.g. $1::text)")
                .into()
        };
        match (v, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Integer(i), &Type::INT2) => {
                i16::try_from(*i).map_err(|_| wrong())?.to_sql(ty, out)
            }
            (Value::Integer(i), &Type::INT4) => {
                i32::try_from(*i).map_err(|_| wrong())?.to_sql(ty, out)
            }
            (Value::Integer(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Integer(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Integer(i), &Type::FLOAT4) => (*i as f32).to_sql(ty, out),
            (Value::Integer(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Bool(b), &Type::BOOL) => b.to_sql(ty, out),
            (Value::Blob(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (Value::Text(s), &Type::BYTEA) => s.as_bytes().to_sql(ty, out),
            (_, t) if is_text(t) => {
                let text = match v {
                    Value::Text(s) => s.clone(),
                    Value::Integer(i) => i.to_string(),
                    Value::Real(f) => f.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Blob(b) => String::from_utf8(b.clone()).map_err(|_| wrong())?,
                    Value::Null => unreachable!("matched above"),
                };
                text.as_str().to_sql(ty, out)
            }
            _ => Err(wrong()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn is_text(t: &Type) -> bool {
    matches!(
        *t,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

fn bind(stmt: &postgres::Statement, params: Params) -> Result<Vec<PgParam>, String> {
    let Params::Positional(values) = params else {
        return Err(
            "PostgreSQL datasources take positional parameters ($1, $2, ...): pass a list".into(),
        );
    };
    let count = stmt.params().len();
    if values.len() > count {
        return Err(format!(
            "{} parameters given, the query has {count} placeholders",
            values.len()
        ));
    }
    let mut bound: Vec<PgParam> = values.into_iter().map(PgParam).collect();
    // Missing trailing values (Lua nils) are NULL.
    bound.resize_with(count, || PgParam(Value::Null));
    Ok(bound)
}

fn run_query(
    client: &mut Client,
    sql: &str,
    params: Params,
    max_rows: Option<usize>,
) -> Result<Rows, Box<dyn StdError + Send + Sync>> {
    let stmt = client.prepare(sql)?;
    let columns: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
    for (name, ty) in columns.iter().zip(&types) {
        if !readable(ty) {
            return Err(format!(
                "column `{name}` has type {ty}, which ecelerity does not convert (cast it, e.g. {name}::text)"
            )
            .into());
        }
    }
    let bound = bind(&stmt, params)?;
    let mut out = Rows {
        columns,
        rows: Vec::new(),
    };
    let mut iter = client.query_raw(&stmt, bound.iter().map(|p| p as &(dyn ToSql + Sync)))?;
    while max_rows.is_none_or(|max| out.rows.len() < max) {
        let Some(row) = iter.next()? else { break };
        let mut values = Vec::with_capacity(types.len());
        for (i, ty) in types.iter().enumerate() {
            values.push(read(&row, i, ty)?);
        }
        out.rows.push(values);
    }
    Ok(out)
}

fn readable(t: &Type) -> bool {
    is_text(t)
        || matches!(
            *t,
            Type::BOOL
                | Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::OID
                | Type::FLOAT4
                | Type::FLOAT8
                | Type::BYTEA
        )
}

fn read(row: &postgres::Row, i: usize, t: &Type) -> Result<Value, postgres::Error> {
    let v = match *t {
        Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map(Value::Bool),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|n| Value::Integer(n.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|n| Value::Integer(n.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Integer),
        Type::OID => row
            .try_get::<_, Option<u32>>(i)?
            .map(|n| Value::Integer(n.into())),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)?
            .map(|n| Value::Real(n.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
        _ => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
    };
    Ok(v.unwrap_or(Value::Null))
}
