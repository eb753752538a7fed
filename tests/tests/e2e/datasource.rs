//! Datasources as the operator meets them at start: a `Datasource` whose
//! SQLite file cannot be opened stops the daemon with `file:line:`, and a
//! good one is created (in WAL mode) before the daemon serves. What Lua
//! does with them (`msys.db`) is tested in the engine's unit tests.

use std::process::Command;
use std::time::Duration;

use ecelerity_tests::{run, Daemon, TempDir, TestConfig, CONFIG_FILE_NAME};

/// The 1-based line of `config` that holds `needle`.
fn line_of(config: &str, needle: &str) -> usize {
    config
        .lines()
        .position(|l| l.contains(needle))
        .expect("needle in config")
        + 1
}

/// Goal: a datasource that cannot be opened refuses the start and says
/// where. Method: a SQLite uri under a directory that does not exist;
/// expect exit 1 and `ecelerity.conf:LINE: datasource: ... cannot open`.
#[test]
fn a_datasource_that_cannot_open_stops_the_start() {
    let dir = TempDir::new("ds-bad");
    let mut config = TestConfig::new(1);
    config.extra =
        "Datasource \"blocklist\" {\n  uri = ( \"sqlite:/nonexistent-ds-dir/x/bl.db\" )\n}\n"
            .into();
    let text = config.render();
    let line = line_of(&text, "Datasource \"blocklist\"");
    let mut daemon = Daemon::spawn(dir.path(), &text);
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("a daemon whose datasource cannot open must exit");
    let stderr = daemon.stderr_text();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    let expected =
        format!("{CONFIG_FILE_NAME}:{line}: datasource: datasource `blocklist`: cannot open");
    assert!(
        stderr.contains(&expected),
        "no `{expected}` in stderr:\n{stderr}"
    );
}

/// Goal: a SQLite datasource is opened at start: the file exists, is a
/// SQLite database and is in WAL mode (read back by Python's sqlite3),
/// while the daemon serves SMTP.
#[test]
fn a_sqlite_datasource_is_opened_at_start() {
    let dir = TempDir::new("ds-good");
    let db = dir.join("blocklist.db");
    let mut config = TestConfig::new(1);
    config.extra = format!(
        "Datasource \"blocklist\" {{\n  uri = ( \"sqlite:{}\" )\n  cache_life = 60\n}}\n",
        db.display()
    );
    let daemon = Daemon::start(dir.path(), &config.render());
    assert!(db.exists(), "{} was not created", db.display());
    let script = format!(
        "import sqlite3; c = sqlite3.connect({:?}); print(c.execute('PRAGMA journal_mode').fetchone()[0])",
        db.display().to_string()
    );
    let out = run(
        Command::new("python3").args(["-c", &script]),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "wal");
    let banner = std::net::TcpStream::connect(("127.0.0.1", daemon.smtp_port()));
    assert!(banner.is_ok(), "the daemon does not listen");
}
