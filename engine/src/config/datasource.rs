//! Momentum's `Datasource` stanzas (its `ds_core` module), read into
//! [`DatasourceConfig`]:
//!
//! ```text
//! Datasource "blocklist" {
//!   uri = ( "sqlite:/var/lib/ecelerity/blocklist.db" )
//!   cache_size = 1000        # entries per shard
//!   cache_life = 3600        # seconds
//!   max_rows = 100           # -1: no limit
//!   no_cache = false
//! }
//! Datasource "accounts" {
//!   uri = ( "pgsql:host=127.0.0.1;port=5432;dbname=mail;user=ecelerity" )
//!   connections = 2
//! }
//! ```
//!
//! `cache_size`, `cache_life`, `max_rows`, `no_cache` are Momentum's, with
//! its defaults. `connections`, `query_timeout_ms` and `queue_limit_jobs`
//! are ecelerity's (Momentum runs datasource queries in its IO pool).
//! Owns: the stanza's syntax and checks (`file:line: datasource: what is
//! wrong`). May call: `parse` (the tree), `error`. Never: opening anything
//! (the `datasource` room does, at start).

use std::path::PathBuf;

use super::error::{ConfigError, ConfigErrorKind};
use super::model::parse_bool;
use super::parse::{FileId, Item, Stanza, Tree, Value};

/// Momentum's default `cache_life`, in seconds.
pub const DEFAULT_CACHE_LIFE_S: u64 = 3600;
/// Momentum's default `cache_size`, in entries.
pub const DEFAULT_CACHE_SIZE_ENTRIES: usize = 1000;
/// Momentum's default `max_rows`.
pub const DEFAULT_MAX_ROWS: usize = 100;
/// Default PostgreSQL connections (worker threads) per datasource.
pub const DEFAULT_CONNECTIONS: usize = 2;
/// Most PostgreSQL connections per datasource.
pub const CONNECTIONS_MAX: usize = 64;
/// Default wait for a query's answer, queueing included.
pub const DEFAULT_QUERY_TIMEOUT_MS: u64 = 5_000;
/// Default bound of a datasource's job queue.
pub const DEFAULT_QUEUE_LIMIT_JOBS: usize = 1024;
/// Most `Datasource` stanzas.
pub const DATASOURCES_MAX: usize = 256;

/// Where a datasource connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasourceUri {
    /// `sqlite:/path/to/file.db`, or `sqlite::memory:` (a private,
    /// in-memory database).
    Sqlite(PathBuf),
    /// `pgsql:host=...;port=...;dbname=...;user=...;password=...` (Momentum's
    /// form, `;`-separated libpq keywords) or a `postgresql://` URL; held as
    /// a libpq connection string.
    Pgsql(String),
}

/// One `Datasource "name" { }` stanza. Equal when the options are (where
/// it was written does not count: moving a stanza changes nothing).
#[derive(Debug, Clone)]
pub struct DatasourceConfig {
    /// The cache name Lua's `msys.db.query(name, ...)` uses.
    pub name: String,
    pub file: PathBuf,
    pub line: u32,
    pub uri: DatasourceUri,
    /// `uri` as written (for `config show`).
    pub uri_text: String,
    /// Result entries kept per shard; the oldest go first.
    pub cache_size: usize,
    /// Seconds a cached result is served.
    pub cache_life_s: u64,
    /// Rows fetched per query at most; `None` is Momentum's `-1`.
    pub max_rows: Option<usize>,
    pub no_cache: bool,
    /// PostgreSQL: connections, each on a worker thread of its own.
    pub connections: usize,
    pub query_timeout_ms: u64,
    pub queue_limit_jobs: usize,
}

impl PartialEq for DatasourceConfig {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.uri == other.uri
            && self.uri_text == other.uri_text
            && self.cache_size == other.cache_size
            && self.cache_life_s == other.cache_life_s
            && self.max_rows == other.max_rows
            && self.no_cache == other.no_cache
            && self.connections == other.connections
            && self.query_timeout_ms == other.query_timeout_ms
            && self.queue_limit_jobs == other.queue_limit_jobs
    }
}

impl Eq for DatasourceConfig {}

fn error(tree: &Tree, file: FileId, line: u32, reason: String) -> ConfigError {
    ConfigError {
        file: tree.files[file].clone(),
        line,
        kind: ConfigErrorKind::Datasource { reason },
    }
}

/// Parses a `uri` value (Momentum's list of one, or a plain string).
pub fn parse_uri(text: &str) -> Result<DatasourceUri, String> {
    if let Some(rest) = text.strip_prefix("sqlite:") {
        if rest.is_empty() {
            return Err("`sqlite:` needs a path, e.g. `sqlite:/var/lib/ecelerity/ds.db` or `sqlite::memory:`".into());
        }
        return Ok(DatasourceUri::Sqlite(PathBuf::from(rest)));
    }
    if let Some(rest) = text.strip_prefix("pgsql:") {
        let pairs: Vec<&str> = rest
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if pairs.is_empty() {
            return Err("`pgsql:` needs connection keywords, e.g. `pgsql:host=127.0.0.1;dbname=mail;user=ecelerity`".into());
        }
        for pair in &pairs {
            let Some((key, _)) = pair.split_once('=') else {
                return Err(format!("`{pair}` in the pgsql uri is not `keyword=value`"));
            };
            if key.trim().is_empty() {
                return Err(format!("`{pair}` in the pgsql uri has no keyword"));
            }
        }
        // libpq's form: space-separated, values quoted when they hold spaces.
        let conninfo = pairs
            .iter()
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let v = v.trim().replace('\\', "\\\\").replace('\'', "\\'");
                format!("{}='{}'", k.trim(), v)
            })
            .collect::<Vec<_>>()
            .join(" ");
        return Ok(DatasourceUri::Pgsql(conninfo));
    }
    if text.starts_with("postgresql://") || text.starts_with("postgres://") {
        return Ok(DatasourceUri::Pgsql(text.to_string()));
    }
    Err(format!(
        "unknown datasource uri `{text}` (expected `sqlite:/path`, `pgsql:host=...;dbname=...` or `postgresql://...`)"
    ))
}

fn number(text: &str, option: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .map_err(|_| format!("`{option}` takes a whole number, got `{text}`"))
}

/// Reads a `Datasource` stanza (top level only; the caller checked).
pub(super) fn read(tree: &Tree, stanza: &Stanza) -> Result<DatasourceConfig, ConfigError> {
    let name = match &stanza.name {
        Some(name) if !name.text.is_empty() => name.text.clone(),
        _ => {
            return Err(error(
                tree,
                stanza.file,
                stanza.line,
                "the stanza needs a name, e.g. `Datasource \"blocklist\" { uri = ( \"sqlite:/path\" ) }`"
                    .into(),
            ))
        }
    };
    let mut config = DatasourceConfig {
        name,
        file: tree.files[stanza.file].clone(),
        line: stanza.line,
        uri: DatasourceUri::Sqlite(PathBuf::new()),
        uri_text: String::new(),
        cache_size: DEFAULT_CACHE_SIZE_ENTRIES,
        cache_life_s: DEFAULT_CACHE_LIFE_S,
        max_rows: Some(DEFAULT_MAX_ROWS),
        no_cache: false,
        connections: DEFAULT_CONNECTIONS,
        query_timeout_ms: DEFAULT_QUERY_TIMEOUT_MS,
        queue_limit_jobs: DEFAULT_QUEUE_LIMIT_JOBS,
    };
    let mut have_uri = false;
    for item in &stanza.items {
        let (file, line, option, value) = match item {
            Item::Setting {
                file,
                line,
                name,
                value,
            } => (*file, *line, name.to_ascii_lowercase(), value),
            Item::Stanza(s) => {
                return Err(error(
                    tree,
                    s.file,
                    s.line,
                    format!(
                        "`{}` scope is not allowed inside Datasource",
                        s.keyword_text
                    ),
                ))
            }
        };
        let fail = |reason: String| error(tree, file, line, reason);
        let scalar = || match value {
            Value::Scalar(word) => Ok(word.text.as_str()),
            Value::List(_) => Err(fail(format!("`{option}` takes one value, not a list"))),
        };
        match option.as_str() {
            "uri" => {
                let text = match value {
                    Value::Scalar(word) => word.text.as_str(),
                    Value::List(words) if words.len() == 1 => words[0].text.as_str(),
                    Value::List(words) if words.is_empty() => {
                        return Err(fail("`uri` is an empty list".into()))
                    }
                    Value::List(_) => {
                        return Err(fail(
                            "`uri` lists more than one datasource; ecelerity uses one (fail-over between several is not supported yet)".into(),
                        ))
                    }
                };
                config.uri = parse_uri(text).map_err(fail)?;
                config.uri_text = text.to_string();
                have_uri = true;
            }
            "cache_size" => {
                let n = number(scalar()?, &option).map_err(fail)?;
                if n < 0 {
                    return Err(fail(format!("`cache_size` must be 0 or more, got {n}")));
                }
                config.cache_size = n as usize;
            }
            "cache_life" => {
                let n = number(scalar()?, &option).map_err(fail)?;
                if n < 0 {
                    return Err(fail(format!("`cache_life` must be 0 or more seconds, got {n}")));
                }
                config.cache_life_s = n as u64;
            }
            "max_rows" => {
                let n = number(scalar()?, &option).map_err(fail)?;
                config.max_rows = match n {
                    -1 => None,
                    n if n > 0 => Some(n as usize),
                    n => return Err(fail(format!("`max_rows` must be -1 (no limit) or more than 0, got {n}"))),
                };
            }
            "no_cache" => {
                let text = scalar()?;
                config.no_cache = parse_bool(text)
                    .ok_or_else(|| fail(format!("`no_cache` takes true or false, got `{text}`")))?;
            }
            "connections" => {
                let n = number(scalar()?, &option).map_err(fail)?;
                if !(1..=CONNECTIONS_MAX as i64).contains(&n) {
                    return Err(fail(format!(
                        "`connections` must be 1 to {CONNECTIONS_MAX}, got {n}"
                    )));
                }
                config.connections = n as usize;
            }
            "query_timeout_ms" => {
                let n = number(scalar()?, &option).map_err(fail)?;
                if n <= 0 {
                    return Err(fail(format!("`query_timeout_ms` must be more than 0, got {n}")));
                }
                config.query_timeout_ms = n as u64;
            }
            "queue_limit_jobs" => {
                let n = number(scalar()?, &option).map_err(fail)?;
                if n <= 0 {
                    return Err(fail(format!("`queue_limit_jobs` must be more than 0, got {n}")));
                }
                config.queue_limit_jobs = n as usize;
            }
            "pool" => {
                return Err(fail(
                    "`pool` is not supported: each datasource has its own worker threads (see `connections`)".into(),
                ))
            }
            _ => {
                return Err(fail(format!(
                    "unknown Datasource option `{option}` (known: uri, cache_size, cache_life, max_rows, no_cache, connections, query_timeout_ms, queue_limit_jobs)"
                )))
            }
        }
    }
    if !have_uri {
        return Err(error(
            tree,
            stanza.file,
            stanza.line,
            format!("Datasource `{}` has no `uri`", config.name),
        ));
    }
    Ok(config)
}

impl DatasourceConfig {
    /// The stanza's options as `name = value` lines, every one written
    /// (defaults included), in a form the parser reads back.
    pub(super) fn lines(&self) -> Vec<String> {
        let quoted = self.uri_text.replace('\\', "\\\\").replace('"', "\\\"");
        vec![
            format!("uri = ( \"{quoted}\" )"),
            format!("cache_size = {}", self.cache_size),
            format!("cache_life = {}", self.cache_life_s),
            format!("max_rows = {}", self.max_rows.map_or(-1, |n| n as i64)),
            format!("no_cache = {}", self.no_cache),
            format!("connections = {}", self.connections),
            format!("query_timeout_ms = {}", self.query_timeout_ms),
            format!("queue_limit_jobs = {}", self.queue_limit_jobs),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_to_drivers() {
        assert_eq!(
            parse_uri("sqlite:/tmp/x.db").unwrap(),
            DatasourceUri::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            parse_uri("sqlite::memory:").unwrap(),
            DatasourceUri::Sqlite(":memory:".into())
        );
        assert_eq!(
            parse_uri("pgsql:host=127.0.0.1;port=5433; dbname=mail;user=ec").unwrap(),
            DatasourceUri::Pgsql("host='127.0.0.1' port='5433' dbname='mail' user='ec'".into())
        );
        assert!(parse_uri("mysql:x")
            .unwrap_err()
            .contains("unknown datasource uri"));
        assert!(parse_uri("pgsql:host")
            .unwrap_err()
            .contains("keyword=value"));
        assert!(parse_uri("sqlite:").is_err());
    }
}
