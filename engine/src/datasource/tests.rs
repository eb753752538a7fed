//! Datasources through the Lua binding, on a plain `mlua::Lua` inside a
//! glommio executor, against real SQLite files and a real PostgreSQL
//! server started by the test.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::{Config, DatasourceConfig};
use ecelerity_testkit::Postgres;

fn on_executor<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ec-ds-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `Datasource` stanzas of `conf`, read by the real config parser.
fn configs(conf: &str) -> Vec<DatasourceConfig> {
    Config::parse(conf, Path::new("t.conf"))
        .unwrap()
        .datasources()
        .to_vec()
}

/// A Lua state with `msys.db` registered over `set`.
fn lua_with(set: Arc<DatasourceSet>) -> (mlua::Lua, Rc<Datasources>) {
    let lua = mlua::Lua::new();
    let msys = lua.create_table().unwrap();
    let sources = Rc::new(Datasources::new(set));
    lua::register(&lua, &msys, sources.clone()).unwrap();
    lua.globals().set("msys", msys).unwrap();
    (lua, sources)
}

async fn eval(lua: &mlua::Lua, src: &str) -> mlua::Result<String> {
    lua.load(src).eval_async::<String>().await
}

/// Goal: the stanza's options come through the real parser with
/// Momentum's defaults, and bad stanzas are `file:line:` errors.
#[test]
fn stanzas_parse_with_defaults_and_bad_ones_are_refused() {
    let c = configs(
        "Datasource \"bl\" {\n  uri = ( \"sqlite:/tmp/bl.db\" )\n}\n\
         datasource \"pg\" {\n  uri = ( \"pgsql:host=/tmp;dbname=m\" )\n  cache_life = 5\n  cache_size = 7\n  max_rows = -1\n  no_cache = true\n  connections = 3\n  query_timeout_ms = 250\n}\n",
    );
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].name, "bl");
    assert_eq!(c[0].uri, DatasourceUri::Sqlite("/tmp/bl.db".into()));
    assert_eq!(
        (
            c[0].cache_life_s,
            c[0].cache_size,
            c[0].max_rows,
            c[0].no_cache
        ),
        (3600, 1000, Some(100), false)
    );
    assert_eq!(
        c[1].uri,
        DatasourceUri::Pgsql("host='/tmp' dbname='m'".into())
    );
    assert_eq!(
        (
            c[1].cache_life_s,
            c[1].cache_size,
            c[1].max_rows,
            c[1].no_cache,
            c[1].connections,
            c[1].query_timeout_ms
        ),
        (5, 7, None, true, 3, 250)
    );
    let bad = |conf: &str| {
        Config::parse(conf, Path::new("t.conf"))
            .unwrap_err()
            .to_string()
    };
    let e = bad("Datasource \"x\" {\n  cache_life = 5\n}\n");
    assert_eq!(e, "t.conf:1: datasource: Datasource `x` has no `uri`");
    let e = bad("Datasource \"x\" {\n  uri = ( \"sqlite:/a\" )\n  cache_lif = 5\n}\n");
    assert!(
        e.starts_with("t.conf:3: datasource: unknown Datasource option `cache_lif`"),
        "{e}"
    );
    let e = bad("Datasource \"x\" {\n  uri = ( \"mysql:db\" )\n}\n");
    assert!(
        e.starts_with("t.conf:2: datasource: unknown datasource uri"),
        "{e}"
    );
    let e = bad("Datasource \"x\" {\n  uri = ( \"sqlite:/a\" )\n}\nDatasource \"x\" {\n  uri = ( \"sqlite:/b\" )\n}\n");
    assert_eq!(e, "t.conf:4: datasource: Datasource `x` appears twice");
    let e = bad("Datasource \"x\" {\n  uri = ( \"sqlite:/a\" )\n  max_rows = 0\n}\n");
    assert!(e.starts_with("t.conf:3: datasource: `max_rows`"), "{e}");
    let e = bad("binding \"b\" {\n  Datasource \"x\" {\n    uri = ( \"sqlite:/a\" )\n  }\n}\n");
    assert!(e.starts_with("t.conf:2:"), "{e}");
}

/// Goal: `config show` (the dump) writes every Datasource option and
/// reads back to the same stanzas.
#[test]
fn the_dump_round_trips_datasources() {
    let conf = "Datasource \"a\" {\n  uri = ( \"pgsql:host=/tmp;dbname=m;password=p\\\"q\" )\n  max_rows = -1\n}\nDatasource \"b\" {\n  uri = ( \"sqlite::memory:\" )\n  cache_life = 9\n}\n";
    let first = Config::parse(conf, Path::new("t.conf")).unwrap();
    let dumped = first.dump();
    assert!(dumped.contains("Datasource \"b\" {\n  uri = ( \"sqlite::memory:\" )\n  cache_size = 1000\n  cache_life = 9\n"), "{dumped}");
    let again = Config::parse(&dumped, Path::new("t.conf")).unwrap();
    let strip = |c: &Config| {
        c.datasources()
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    d.uri.clone(),
                    d.uri_text.clone(),
                    d.max_rows,
                    d.cache_life_s,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&first), strip(&again));
    assert_eq!(first.datasources()[0].max_rows, None);
}

/// Goal: a SQLite file that cannot be opened stops `DatasourceSet::open`
/// with the datasource's name and the reason.
#[test]
fn an_unopenable_sqlite_file_is_an_error() {
    let c = configs("Datasource \"x\" {\n  uri = ( \"sqlite:/nonexistent-dir/q/x.db\" )\n}\n");
    let e = DatasourceSet::open(&c).unwrap_err().to_string();
    assert!(e.starts_with("datasource `x`: cannot open:"), "{e}");
}

/// Goal: Momentum's three functions against SQLite: execute a script and
/// parameterised statements, query rows with `?` and `:name` parameters
/// (types, NULL as an absent key), fetch_row (and nil for no row),
/// max_rows, and errors raised or returned per `raise_error`.
#[test]
fn sqlite_through_lua_query_fetch_row_execute() {
    let dir = temp_dir("lua");
    let conf = format!(
        "Datasource \"ds\" {{\n  uri = ( \"sqlite:{}\" )\n  max_rows = 3\n}}\n",
        dir.join("ds.db").display()
    );
    let set = DatasourceSet::open(&configs(&conf)).unwrap();
    on_executor(move || {
        Box::pin(async move {
            let (lua, _) = lua_with(set);
            let out = eval(
                &lua,
                r#"
                local ok, n = msys.db.execute("ds", [[
                    CREATE TABLE block (rcpt TEXT PRIMARY KEY, score REAL, hits INTEGER, note TEXT);
                    INSERT INTO block VALUES ('a@x.test', 1.5, 3, NULL);
                ]])
                assert(ok == true, "script")
                for i = 1, 4 do
                    local ok, n = msys.db.execute("ds",
                        "INSERT INTO block (rcpt, score, hits, note) VALUES (?, ?, ?, ?)",
                        { "u" .. i .. "@y.test", i / 2, i, "note " .. i })
                    assert(ok == true and n == 1)
                end
                local ok, n = msys.db.execute("ds",
                    "UPDATE block SET hits = hits + :by WHERE rcpt LIKE $pat", { by = 10, pat = "%@y.test" })
                assert(ok and n == 4, "update changed " .. tostring(n))
                local out = {}
                for row in msys.db.query("ds", "SELECT rcpt, score, hits, note FROM block WHERE hits > ? ORDER BY rcpt", { 0 }) do
                    out[#out + 1] = string.format("%s|%s|%s|%s|%s", row.rcpt, row.score, math.type(row.hits), row.hits, tostring(row.note))
                end
                local r = msys.db.fetch_row("ds", "SELECT hits FROM block WHERE rcpt = :rcpt", { rcpt = "a@x.test" })
                out[#out + 1] = "fetch " .. r.hits
                out[#out + 1] = "none " .. tostring(msys.db.fetch_row("ds", "SELECT 1 FROM block WHERE rcpt = ?", { "nobody" }))
                local v, e = msys.db.query("ds", "SELECT * FROM missing", nil, { raise_error = false })
                out[#out + 1] = tostring(v) .. " " .. e
                local ok, e = msys.db.execute("ds", "INSERT INTO block (rcpt) VALUES (?)", { "a@x.test" }, { raise_error = false })
                out[#out + 1] = tostring(ok) .. " " .. e
                local raised, e = pcall(msys.db.fetch_row, "ds", "SELEC 1")
                out[#out + 1] = tostring(raised) .. " " .. tostring(e):match("syntax error") 
                local v, e = msys.db.query("nope", "SELECT 1", nil, { raise_error = false })
                out[#out + 1] = e
                return table.concat(out, "\n")
            "#,
            )
            .await
            .unwrap();
            assert_eq!(
                out,
                "a@x.test|1.5|integer|3|nil\n\
                 u1@y.test|0.5|integer|11|note 1\n\
                 u2@y.test|1.0|integer|12|note 2\n\
                 fetch 3\n\
                 none nil\n\
                 nil datasource `ds`: no such table: missing\n\
                 false datasource `ds`: UNIQUE constraint failed: block.rcpt\n\
                 false syntax error\n\
                 datasource `nope` is not configured"
            );
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Goal: a repeated query is answered from the shard's cache (the
/// database's change is not seen) until `cache_life` passes; `nocache`
/// bypasses it; a `no_cache` datasource never caches.
#[test]
fn the_cache_hits_until_cache_life_expires() {
    let dir = temp_dir("cache");
    let db = dir.join("c.db");
    let conf = format!(
        "Datasource \"c\" {{\n  uri = ( \"sqlite:{0}\" )\n  cache_life = 1\n}}\n\
         Datasource \"raw\" {{\n  uri = ( \"sqlite:{0}\" )\n  no_cache = true\n}}\n",
        db.display()
    );
    let set = DatasourceSet::open(&configs(&conf)).unwrap();
    on_executor(move || {
        Box::pin(async move {
            let (lua, sources) = lua_with(set);
            let q = r#"return tostring(msys.db.fetch_row("c", "SELECT v FROM kv WHERE k = ?", { "a" }).v)"#;
            eval(&lua, r#"msys.db.execute("raw", "CREATE TABLE kv (k TEXT, v INTEGER); INSERT INTO kv VALUES ('a', 1)") return """#).await.unwrap();
            assert_eq!(eval(&lua, q).await.unwrap(), "1");
            assert_eq!((sources.cache_hits(), sources.cache_misses()), (0, 1));
            eval(
                &lua,
                r#"msys.db.execute("raw", "UPDATE kv SET v = 2") return """#,
            )
            .await
            .unwrap();
            let filled = Instant::now();
            assert_eq!(eval(&lua, q).await.unwrap(), "1", "served from the cache");
            assert_eq!(sources.cache_hits(), 1);
            let bypass = r#"return tostring(msys.db.fetch_row("c", "SELECT v FROM kv WHERE k = ?", { "a" }, { nocache = true }).v)"#;
            assert_eq!(eval(&lua, bypass).await.unwrap(), "2");
            let raw = r#"return tostring(msys.db.fetch_row("raw", "SELECT v FROM kv WHERE k = ?", { "a" }).v)"#;
            assert_eq!(eval(&lua, raw).await.unwrap(), "2");
            assert_eq!(eval(&lua, raw).await.unwrap(), "2");
            assert_eq!(sources.cache_hits(), 1, "no_cache and nocache never hit");
            // Another parameter is another entry.
            let other = r#"return tostring(msys.db.fetch_row("c", "SELECT v FROM kv WHERE k = ?", { "b" }))"#;
            assert_eq!(eval(&lua, other).await.unwrap(), "nil");
            glommio::timer::sleep(Duration::from_millis(1100).saturating_sub(filled.elapsed()))
                .await;
            assert_eq!(
                eval(&lua, q).await.unwrap(),
                "2",
                "expired after cache_life"
            );
            assert_eq!(sources.cache_hits(), 1);
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Goal: a slow query on one datasource leaves the shard free (another
/// Lua coroutine's query on another datasource answers meanwhile), a
/// query past `query_timeout_ms` is a timeout error value, and the
/// statement is interrupted so the datasource answers the next query.
#[test]
fn a_slow_query_yields_and_times_out() {
    let dir = temp_dir("slow");
    let conf = format!(
        "Datasource \"slow\" {{\n  uri = ( \"sqlite:{}\" )\n  query_timeout_ms = 300\n}}\n\
         Datasource \"fast\" {{\n  uri = ( \"sqlite::memory:\" )\n}}\n",
        dir.join("s.db").display()
    );
    let set = DatasourceSet::open(&configs(&conf)).unwrap();
    on_executor(move || {
        Box::pin(async move {
            let (lua, _) = lua_with(set);
            // A recursive CTE that counts to 30 million: well over 300 ms.
            let slow = glommio::spawn_local({
                let lua = lua.clone();
                async move {
                    let t = Instant::now();
                    let r = eval(&lua, r#"
                        local v, e = msys.db.query("slow",
                          "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30000000) SELECT count(*) AS n FROM c",
                          nil, { raise_error = false })
                        return tostring(v) .. " " .. tostring(e)"#).await.unwrap();
                    (r, t.elapsed())
                }
            });
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let t = Instant::now();
            let fast = eval(
                &lua,
                r#"return tostring(msys.db.fetch_row("fast", "SELECT 41 + 1 AS n").n)"#,
            )
            .await
            .unwrap();
            assert_eq!(fast, "42");
            assert!(
                t.elapsed() < Duration::from_millis(200),
                "{:?}",
                t.elapsed()
            );
            let (r, took) = slow.await;
            // The runaway statement was interrupted: the datasource answers.
            let t = Instant::now();
            let after = eval(
                &lua,
                r#"return tostring(msys.db.fetch_row("slow", "SELECT 7 AS n").n)"#,
            )
            .await
            .unwrap();
            assert_eq!(after, "7");
            assert!(
                t.elapsed() < Duration::from_millis(200),
                "{:?}",
                t.elapsed()
            );
            assert_eq!(r, "nil datasource `slow`: no answer within 300 ms");
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_secs(3),
                "{took:?}"
            );
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Goal: the same Lua functions against a real PostgreSQL server: a
/// schema script, `$n` parameters converted to the server's types
/// (int4, text, bool, float8, bytea), rows of each type back, NULL,
/// fetch_row, the cache, server errors as values, a named-parameter table
/// refused, a column type ecelerity does not convert refused by name.
#[test]
fn postgresql_through_lua() {
    let started = Instant::now();
    let pg = Postgres::start();
    let conf = format!(
        "Datasource \"pg\" {{\n  uri = ( \"{}\" )\n  connections = 2\n}}\n",
        pg.uri()
    );
    let set = DatasourceSet::open(&configs(&conf)).unwrap();
    let out = on_executor(move || {
        Box::pin(async move {
            let (lua, sources) = lua_with(set);
            let out = eval(
                &lua,
                r#"
                assert(msys.db.execute("pg", [[
                    CREATE TABLE block (rcpt TEXT PRIMARY KEY, hits INT4, big INT8, score FLOAT8,
                                        active BOOL, raw BYTEA, note VARCHAR(20), seen TIMESTAMP);
                ]]))
                local ok, n = msys.db.execute("pg",
                    "INSERT INTO block VALUES ($1, $2, $3, $4, $5, $6, $7, now()), ($8, 1, 1, 0.5, false, NULL, NULL, now())",
                    { "a@x.test", 3, 5000000000, 1.25, true, "\0\1", "first", "b@x.test" })
                assert(ok and n == 2, "insert " .. tostring(n))
                local out = {}
                for row in msys.db.query("pg",
                    "SELECT rcpt, hits, big, score, active, raw, note FROM block WHERE hits >= $1 ORDER BY rcpt", { 1 }) do
                    out[#out + 1] = string.format("%s %s %s %s %s %s %s", row.rcpt, math.type(row.hits), row.big,
                        row.score, tostring(row.active), row.raw and #row.raw or "nil", tostring(row.note))
                end
                local r = msys.db.fetch_row("pg", "SELECT count(*) AS n FROM block WHERE active = $1", { true })
                out[#out + 1] = "active " .. r.n
                out[#out + 1] = "none " .. tostring(msys.db.fetch_row("pg", "SELECT 1 FROM block WHERE rcpt = $1", { "z" }))
                local v, e = msys.db.query("pg", "SELECT * FROM missing", nil, { raise_error = false })
                out[#out + 1] = tostring(v) .. " " .. e
                local v, e = msys.db.query("pg", "SELECT 1 WHERE $1 = 'x'", { x = 1 }, { raise_error = false })
                out[#out + 1] = e
                local v, e = msys.db.query("pg", "SELECT seen FROM block", nil, { raise_error = false })
                out[#out + 1] = e
                local r = msys.db.fetch_row("pg", "SELECT seen::text AS seen FROM block LIMIT 1")
                out[#out + 1] = "cast " .. tostring(r.seen ~= nil)
                -- A repeated query: the second is a cache hit.
                msys.db.fetch_row("pg", "SELECT hits FROM block WHERE rcpt = $1", { "a@x.test" })
                msys.db.fetch_row("pg", "SELECT hits FROM block WHERE rcpt = $1", { "a@x.test" })
                return table.concat(out, "\n")
            "#,
            )
            .await
            .unwrap();
            assert!(sources.cache_hits() >= 1);
            out
        })
    });
    assert_eq!(
        out,
        "a@x.test integer 5000000000 1.25 true 2 first\n\
         b@x.test integer 1 0.5 false nil nil\n\
         active 1\n\
         none nil\n\
         nil datasource `pg`: ERROR: relation \"missing\" does not exist\n\
         datasource `pg`: PostgreSQL datasources take positional parameters ($1, $2, ...): pass a list\n\
         datasource `pg`: column `seen` has type timestamp, which ecelerity does not convert (cast it, e.g. seen::text)\n\
         cast true"
    );
    drop(pg);
    println!("postgresql_through_lua took {:?}", started.elapsed());
}

/// Measures `msys.db.fetch_row` from Lua: a cache hit (no worker) against
/// a miss (`nocache`: a round trip to the SQLite worker and a query of a
/// 1000-row table by primary key). Run with `--no-capture` for numbers.
#[test]
fn lua_fetch_row_cost_hit_and_miss() {
    let conf = "Datasource \"m\" {\n  uri = ( \"sqlite::memory:\" )\n}\n";
    let set = DatasourceSet::open(&configs(conf)).unwrap();
    let (hit, miss) = on_executor(move || {
        Box::pin(async move {
            let (lua, _) = lua_with(set);
            eval(
                &lua,
                r#"msys.db.execute("m", "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
                   for i = 1, 1000 do msys.db.execute("m", "INSERT INTO t VALUES (?, ?)", { i, "v" .. i }) end
                   return """#,
            )
            .await
            .unwrap();
            let run = |opts: &'static str| {
                let lua = lua.clone();
                async move {
                    let src = format!(
                        r#"local n = 0
                           for i = 1, 2000 do
                             n = n + #msys.db.fetch_row("m", "SELECT v FROM t WHERE k = ?", {{ 500 }}, {opts}).v
                           end
                           return tostring(n)"#
                    );
                    let t = Instant::now();
                    assert_eq!(eval(&lua, &src).await.unwrap(), "8000");
                    t.elapsed() / 2000
                }
            };
            let miss = run("{ nocache = true }").await;
            let hit = run("nil").await;
            (hit, miss)
        })
    });
    println!("msys.db.fetch_row per call (debug build): cache hit {hit:?}, miss {miss:?}");
    assert!(hit < miss, "hit {hit:?} miss {miss:?}");
}

/// Goal: a PostgreSQL datasource whose server is not there still lets the
/// daemon start, and each query is an error value naming the cause (the
/// worker tries to connect again on the next one).
#[test]
fn postgresql_down_is_an_error_value() {
    let conf =
        "Datasource \"pg\" {\n  uri = ( \"pgsql:host=/nonexistent-pg-dir;dbname=x;user=x\" )\n}\n";
    let set = DatasourceSet::open(&configs(conf)).unwrap();
    on_executor(move || {
        Box::pin(async move {
            let (lua, _) = lua_with(set);
            for _ in 0..2 {
                let e = eval(
                    &lua,
                    r#"local v, e = msys.db.fetch_row("pg", "SELECT 1", nil, { raise_error = false }) return tostring(v) .. " " .. e"#,
                )
                .await
                .unwrap();
                assert!(e.starts_with("nil datasource `pg`: cannot connect:"), "{e}");
            }
        })
    });
}

/// Goal: a reload keeps the running Datasource stanzas (the workers were
/// opened at start) and names `Datasource` as needing a restart.
#[test]
fn a_reload_keeps_datasources_and_says_restart() {
    let dir = temp_dir("reload");
    let old_text = "Datasource \"a\" {\n  uri = ( \"sqlite::memory:\" )\n}\n";
    let old = Config::parse(old_text, &dir.join("old.conf")).unwrap();
    let path = dir.join("new.conf");
    std::fs::write(
        &path,
        "Datasource \"a\" {\n  uri = ( \"sqlite::memory:\" )\n  cache_life = 5\n}\n",
    )
    .unwrap();
    let (new, kept) = old.reload(&path).unwrap();
    assert!(kept.contains(&"Datasource"), "{kept:?}");
    assert_eq!(new.datasources()[0].cache_life_s, 3600);
    std::fs::write(&path, old_text).unwrap();
    let (_, kept) = old.reload(&path).unwrap();
    assert!(!kept.contains(&"Datasource"), "{kept:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
