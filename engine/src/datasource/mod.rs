//! Datasources: Momentum's `ds_core`. Named SQL sources (`Datasource
//! "name" { uri = ... }`) that policy code (Lua's `msys.db.*`) queries with
//! bound parameters, and a result cache per shard.
//!
//! Two halves, so a shard never takes a lock per query:
//! - [`DatasourceSet`] (one per process, `Send + Sync`, behind an `Arc`):
//!   the drivers. A SQLite datasource is one [`SqliteWorker`] thread; a
//!   PostgreSQL datasource is `connections` worker threads, each owning a
//!   sync client, fed from one bounded channel ([`pgsql`]).
//! - [`Datasources`] (one per shard, `!Send`, behind an `Rc`): the set plus
//!   this shard's result caches ([`cache`]), bounded by `cache_size`
//!   entries and `cache_life` seconds. Shards do not share cached results:
//!   a hit costs a hash lookup, no atomic, no lock.
//!
//! Parameters are always bound by the driver, never spliced into SQL.
//! Errors are values ([`DsError`]); the Lua binding ([`lua`]) turns them
//! into Momentum's `nil, errmsg` or a raised error.
//!
//! Owns: the registry, the drivers' query code, the caches.
//! May call: [`crate::sqlite`], `config` (the stanzas), rusqlite, postgres,
//! flume, glommio's timer. Never: shard state, the spool, queues, SMTP.

pub mod cache;
pub mod lua;
pub mod pgsql;
mod sqlite_driver;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{DatasourceConfig, DatasourceUri};
use crate::sqlite::{SqliteLimits, SqliteWorker, WorkerError};

use cache::ResultCache;

/// Most parameters bound to one query.
pub const PARAMS_MAX: usize = 256;

/// One SQL value, as it crosses to and from a driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Bool(bool),
}

/// A query's parameters: by position (`?`, `?NNN`, `$1`) or by name
/// (`:name`, `$name`, `@name`; the name without its sigil).
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    Positional(Vec<Value>),
    Named(Vec<(String, Value)>),
}

impl Params {
    pub fn none() -> Params {
        Params::Positional(Vec::new())
    }

    pub fn len(&self) -> usize {
        match self {
            Params::Positional(v) => v.len(),
            Params::Named(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A query's result: column names and up to `max_rows` rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// What can go wrong with a datasource query.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DsError {
    #[error("datasource `{0}` is not configured")]
    Unknown(String),
    #[error("datasource `{name}`: cannot open: {reason}")]
    Open { name: String, reason: String },
    #[error("datasource `{name}`: busy ({limit} queries waiting)")]
    Busy { name: String, limit: usize },
    #[error("datasource `{name}`: no answer within {ms} ms")]
    Timeout { name: String, ms: u64 },
    #[error("datasource `{name}`: its worker has stopped")]
    Stopped { name: String },
    #[error("datasource `{name}`: {reason}")]
    Query { name: String, reason: String },
    #[error("datasource `{name}`: more than {PARAMS_MAX} parameters")]
    TooManyParams { name: String },
}

/// Per-call options (Momentum's `opts` table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Bypass the cache (neither read nor fill it).
    pub nocache: bool,
}

enum Driver {
    Sqlite(SqliteWorker),
    Pgsql(pgsql::PgPool),
}

struct Source {
    config: DatasourceConfig,
    driver: Driver,
}

/// Every configured datasource's driver, shared by all shards.
pub struct DatasourceSet {
    sources: Vec<Source>,
}

impl std::fmt::Debug for DatasourceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.sources.iter().map(|s| &s.config.name))
            .finish()
    }
}

impl DatasourceSet {
    /// Opens every datasource: SQLite files are opened (created) now, so a
    /// bad path stops the start; PostgreSQL connection strings are checked
    /// now and connected on first use (a database that is down at start
    /// answers errors until it is up).
    pub fn open(configs: &[DatasourceConfig]) -> Result<Arc<DatasourceSet>, DsError> {
        let mut sources = Vec::with_capacity(configs.len());
        for config in configs {
            let driver = match &config.uri {
                DatasourceUri::Sqlite(path) => {
                    let limits = SqliteLimits {
                        queue_limit_jobs: config.queue_limit_jobs,
                        call_timeout_ms: config.query_timeout_ms,
                        ..SqliteLimits::default()
                    };
                    Driver::Sqlite(SqliteWorker::open(path, limits).map_err(|e| DsError::Open {
                        name: config.name.clone(),
                        reason: e.to_string(),
                    })?)
                }
                DatasourceUri::Pgsql(conninfo) => Driver::Pgsql(
                    pgsql::PgPool::open(&config.name, conninfo, pgsql::PgLimits::of(config))
                        .map_err(|reason| DsError::Open {
                            name: config.name.clone(),
                            reason,
                        })?,
                ),
            };
            sources.push(Source {
                config: config.clone(),
                driver,
            });
        }
        Ok(Arc::new(DatasourceSet { sources }))
    }

    /// [`open`](Self::open) for the daemon's start: a datasource that
    /// cannot be opened is reported at its stanza, `file:line: datasource:
    /// ...`, as every configuration error.
    pub fn open_at_start(
        configs: &[DatasourceConfig],
    ) -> Result<Arc<DatasourceSet>, crate::config::ConfigError> {
        DatasourceSet::open(configs).map_err(|e| {
            let name = match &e {
                DsError::Open { name, .. } => name.as_str(),
                _ => "",
            };
            let at = configs.iter().find(|c| c.name == name).or(configs.first());
            crate::config::ConfigError {
                file: at.map(|c| c.file.clone()).unwrap_or_default(),
                line: at.map_or(0, |c| c.line),
                kind: crate::config::ConfigErrorKind::Datasource {
                    reason: e.to_string(),
                },
            }
        })
    }

    /// The configured names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| s.config.name.as_str())
    }

    /// The pool of PostgreSQL datasource `name` (`None`: no such
    /// datasource, or a SQLite one).
    pub fn pgsql(&self, name: &str) -> Option<&pgsql::PgPool> {
        match self.find(name).map(|(_, s)| &s.driver) {
            Some(Driver::Pgsql(pool)) => Some(pool),
            _ => None,
        }
    }

    fn find(&self, name: &str) -> Option<(usize, &Source)> {
        self.sources
            .iter()
            .enumerate()
            .find(|(_, s)| s.config.name == name)
    }
}

/// A shard's view of the datasources: the shared drivers and this shard's
/// result caches.
pub struct Datasources {
    set: Arc<DatasourceSet>,
    caches: RefCell<Vec<ResultCache>>,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl Datasources {
    pub fn new(set: Arc<DatasourceSet>) -> Datasources {
        let caches = set
            .sources
            .iter()
            .map(|s| {
                ResultCache::new(
                    s.config.cache_size,
                    Duration::from_secs(s.config.cache_life_s),
                )
            })
            .collect();
        Datasources {
            set,
            caches: RefCell::new(caches),
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    pub fn set(&self) -> &Arc<DatasourceSet> {
        &self.set
    }

    /// Queries answered from this shard's caches.
    pub fn cache_hits(&self) -> u64 {
        self.hits.get()
    }

    /// Queries sent to a driver (cache missed, bypassed or off).
    pub fn cache_misses(&self) -> u64 {
        self.misses.get()
    }

    /// Runs `sql` on datasource `name` and returns its rows (at most the
    /// datasource's `max_rows`), from this shard's cache when a fresh
    /// entry holds the same SQL and parameters.
    pub async fn query(
        &self,
        name: &str,
        sql: &str,
        params: Params,
        options: QueryOptions,
    ) -> Result<Rc<Rows>, DsError> {
        let (index, source) = self
            .set
            .find(name)
            .ok_or_else(|| DsError::Unknown(name.to_string()))?;
        if params.len() > PARAMS_MAX {
            return Err(DsError::TooManyParams { name: name.into() });
        }
        let cached = !source.config.no_cache && !options.nocache && source.config.cache_size > 0;
        let key = cached.then(|| cache::key(sql, &params));
        if let Some(key) = &key {
            let now = Instant::now();
            if let Some(rows) = self.caches.borrow_mut()[index].get(key, now) {
                self.hits.set(self.hits.get() + 1);
                return Ok(rows);
            }
        }
        self.misses.set(self.misses.get() + 1);
        let rows = Rc::new(self.run_query(source, sql, params).await?);
        if let Some(key) = key {
            self.caches.borrow_mut()[index].insert(key, rows.clone(), Instant::now());
        }
        Ok(rows)
    }

    /// Runs `sql` on datasource `name` for its effect (no rows expected;
    /// never cached) and returns the number of rows changed. Without
    /// parameters, SQLite runs every `;`-separated statement in `sql`.
    pub async fn execute(&self, name: &str, sql: &str, params: Params) -> Result<u64, DsError> {
        let (_, source) = self
            .set
            .find(name)
            .ok_or_else(|| DsError::Unknown(name.to_string()))?;
        if params.len() > PARAMS_MAX {
            return Err(DsError::TooManyParams { name: name.into() });
        }
        let name = source.config.name.clone();
        match &source.driver {
            Driver::Sqlite(worker) => {
                let sql = sql.to_string();
                let done = worker
                    .call(move |conn| sqlite_driver::execute(conn, &sql, &params))
                    .await;
                flatten(&name, worker_result(&name, done))
            }
            Driver::Pgsql(pool) => pool.execute(sql, params).await,
        }
    }

    async fn run_query(&self, source: &Source, sql: &str, params: Params) -> Result<Rows, DsError> {
        let name = source.config.name.clone();
        let max_rows = source.config.max_rows;
        match &source.driver {
            Driver::Sqlite(worker) => {
                let sql = sql.to_string();
                let done = worker
                    .call(move |conn| sqlite_driver::query(conn, &sql, &params, max_rows))
                    .await;
                flatten(&name, worker_result(&name, done))
            }
            Driver::Pgsql(pool) => pool.query(sql, params, max_rows).await,
        }
    }
}

fn worker_result<R>(name: &str, done: Result<R, WorkerError>) -> Result<R, DsError> {
    let name = name.to_string();
    done.map_err(|e| match e {
        WorkerError::Busy { limit } => DsError::Busy { name, limit },
        WorkerError::Timeout(ms) => DsError::Timeout { name, ms },
        WorkerError::Stopped | WorkerError::Spawn(_) => DsError::Stopped { name },
        other => DsError::Query {
            name,
            reason: other.to_string(),
        },
    })
}

fn flatten<R>(name: &str, r: Result<Result<R, String>, DsError>) -> Result<R, DsError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(reason)) => Err(DsError::Query {
            name: name.to_string(),
            reason,
        }),
        Err(e) => Err(e),
    }
}
