//! The console's configuration and log commands: `config reload [path]`,
//! `config show`, `config eval [scope ...] <option>`, `reopen logs`; the
//! same reload and reopen serve SIGHUP and SIGUSR1 (the daemon calls
//! [`reload`] and [`reopen_logs`]).
//!
//! Owns: [`RunningConfig`] (the configuration the daemon runs now, which a
//! reload replaces; reloads run one at a time under its lock, never on a
//! shard's path), the parsing of those commands ([`command`], pure) and
//! their texts. May call: `config`, `control` (every shard is handed the
//! new configuration, or told to reopen its logs, by message), `log` (the
//! paniclog, which no shard owns). Never: a shard's state directly.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::Config;
use crate::control::{ControlHandle, ControlReply, ControlRequest, NewConfig, CONTROL_TIMEOUT_MS};

/// Momentum's first line when a reload is refused.
pub const RECONFIGURE_FAILED: &str = "Reconfigure failed";

/// The configuration the daemon runs now.
pub struct RunningConfig {
    current: Mutex<Arc<Config>>,
}

impl RunningConfig {
    pub fn new(config: Arc<Config>) -> RunningConfig {
        RunningConfig {
            current: Mutex::new(config),
        }
    }

    /// The configuration in effect (waits while a reload is being handed
    /// to the shards).
    pub fn get(&self) -> Arc<Config> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Arc<Config>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A console command this file serves.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// `config reload [path]`.
    Reload(Option<PathBuf>),
    /// `reopen logs`.
    ReopenLogs,
    /// `config show|eval ...`: the answer, already rendered.
    Text(String),
}

const CONFIG_USAGE: &str = "Usage: config reload [path] | config show [scope ...] [option] | \
                            config eval [scope ...] <option>\n";

/// `Some` when `line` is one of this file's commands (`config ...` or
/// `reopen logs`); `config show`/`eval` are answered from `config`.
pub fn command(line: &str, config: &Config) -> Option<Command> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let is = |w: &str, word: &str| w.eq_ignore_ascii_case(word);
    match words.as_slice() {
        [r, l] if is(r, "reopen") && is(l, "logs") => Some(Command::ReopenLogs),
        [c, rest @ ..] if is(c, "config") => Some(match rest {
            [r] if is(r, "reload") => Command::Reload(None),
            [r, path] if is(r, "reload") => Command::Reload(Some(PathBuf::from(path))),
            [s] if is(s, "show") => Command::Text(config.dump()),
            [s, args @ ..] if is(s, "show") || is(s, "eval") => {
                Command::Text(config.eval(args).unwrap_or_else(|e| format!("{e}\n")))
            }
            _ => Command::Text(CONFIG_USAGE.into()),
        }),
        _ => None,
    }
}

/// Carries out `command` (see [`command`]).
pub fn run(command: Command, running: &RunningConfig, control: &ControlHandle) -> String {
    match command {
        Command::Reload(path) => reload(running, control, path.as_deref()),
        Command::ReopenLogs => reopen_logs(control),
        Command::Text(text) => text,
    }
}

/// Re-reads the configuration (`path`, else the file the daemon runs
/// from), checks it as start-up does, and hands it to every shard. A bad
/// file changes nothing: `Reconfigure failed` and `file:line: what is
/// wrong`. Options that need a restart keep their running value and are
/// named.
pub fn reload(running: &RunningConfig, control: &ControlHandle, path: Option<&Path>) -> String {
    let mut current = running.lock();
    let path = path
        .map(Path::to_path_buf)
        .or_else(|| current.source().map(Path::to_path_buf));
    let Some(path) = path else {
        return format!(
            "{RECONFIGURE_FAILED}\nthe daemon runs on its embedded default configuration: \
             name a file (config reload <path>)\n"
        );
    };
    let (new, kept) = match current.reload(&path) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!("config reload: {e}; the running configuration is kept");
            return format!("{RECONFIGURE_FAILED}\n{e}\n");
        }
    };
    let new = Arc::new(new);
    let asked = control.ask_all(
        ControlRequest::Reload(NewConfig(new.clone())),
        Duration::from_millis(CONTROL_TIMEOUT_MS),
    );
    // Every shard has it (or has it queued): it is the running one now.
    *current = new;
    let mut out = format!("Reconfigured from {}\n", path.display());
    match asked {
        Ok(parts) => {
            for part in parts {
                if let ControlReply::Reloaded { errors } = part {
                    for e in errors {
                        out.push_str(&format!("Error: {e}\n"));
                    }
                }
            }
        }
        Err(e) => out.push_str(&format!("Error: not every shard confirmed: {e}\n")),
    }
    if !kept.is_empty() {
        out.push_str(&format!(
            "Restart needed to change: {} (the running value is kept)\n",
            kept.join(", ")
        ));
    }
    tracing::info!("config reload: {}", out.trim_end().replace('\n', "; "));
    out
}

/// `reopen logs` / SIGUSR1: every shard flushes its buffered lines to the
/// files it has open and opens the paths again; so does the paniclog.
pub fn reopen_logs(control: &ControlHandle) -> String {
    let mut errors = Vec::new();
    if let Err(e) = crate::log::reopen_paniclog() {
        errors.push(format!("paniclog: {e}"));
    }
    match control.ask_all(
        ControlRequest::ReopenLogs,
        Duration::from_millis(CONTROL_TIMEOUT_MS),
    ) {
        Ok(parts) => {
            for (shard, part) in parts.into_iter().enumerate() {
                if let ControlReply::LogsReopened { error: Some(e) } = part {
                    errors.push(format!("shard {shard}: {e}"));
                }
            }
        }
        Err(e) => errors.push(format!("not every shard confirmed: {e}")),
    }
    if errors.is_empty() {
        tracing::info!("logs reopened");
        "Logs reopened\n".into()
    } else {
        let text = errors.join("; ");
        tracing::error!("reopen logs: {text}");
        format!("Error: {text}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_commands_parse_and_show_eval_answer_from_the_config() {
        let config = Config::parse("max_outbound_connections = 3\n", Path::new("t.conf")).unwrap();
        let run = |line: &str| command(line, &config);
        assert_eq!(run("config reload"), Some(Command::Reload(None)));
        assert_eq!(
            run("config reload /etc/x.conf"),
            Some(Command::Reload(Some("/etc/x.conf".into())))
        );
        assert_eq!(run("reopen logs"), Some(Command::ReopenLogs));
        assert_eq!(
            run("config eval max_outbound_connections"),
            Some(Command::Text("max_outbound_connections = 3\n".into()))
        );
        let Some(Command::Text(show)) = run("config show") else {
            panic!("config show answers with text");
        };
        assert!(show.contains("max_outbound_connections = 3"), "{show}");
        assert_eq!(run("config"), Some(Command::Text(CONFIG_USAGE.into())));
        assert_eq!(run("summary"), None);
    }
}
