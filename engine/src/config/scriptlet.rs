//! Momentum's `scriptlet` module stanza, read into `ScriptletConfig`:
//!
//! ```text
//! scriptlet "scriptlet" {
//!   lua_path = "/etc/ecelerity/lua/?.lua"   # default: <config folder>/?.lua
//!   max_instructions = 10000000             # per policy call
//!   timeout_outcome = "tempfail"            # or "reject", "continue"
//!   max_memory = 67108864                   # bytes per Lua state (shard)
//!   script "policy" { source = "policy" }   # a module on lua_path, or a .lua file
//! }
//! ```
//!
//! Owns: the stanza's syntax and checks (`file:line: scriptlet: what is
//! wrong`), the budgets' defaults and limits.
//! May call: `parse` (the tree), `error`. Never: Lua, the script files
//! (the `scriptlet` room loads them on each shard, so a reload re-reads
//! them and a script that does not load keeps the old one).

use std::path::{Path, PathBuf};

use super::error::{ConfigError, ConfigErrorKind};
use super::parse::{FileId, Item, Keyword, Stanza, Tree, Value};

/// Most `script` scopes in one `scriptlet` stanza.
pub const SCRIPTS_MAX: usize = 256;
/// Default `max_instructions`: Lua VM instructions one policy call may run.
pub const MAX_INSTRUCTIONS_DEFAULT: u64 = 10_000_000;
/// `max_instructions` may not be set below this.
pub const MAX_INSTRUCTIONS_MIN: u64 = 10_000;
/// Default `max_memory`: bytes one shard's Lua state may allocate.
pub const MAX_MEMORY_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// `max_memory` may not be set below this (the standard libraries alone
/// take about 100 KiB).
pub const MAX_MEMORY_BYTES_MIN: u64 = 1024 * 1024;

/// What the session answers when a policy call runs out of
/// `max_instructions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutOutcome {
    /// `451 4.3.0` (the default): the client tries again later.
    Tempfail,
    /// `550 5.7.1`: refused for good.
    Reject,
    /// The call's phase goes on as if the script returned `VALIDATE_CONT`.
    Continue,
}

/// Where an option was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub file: PathBuf,
    pub line: u32,
}

impl At {
    pub fn error(&self, reason: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            kind: ConfigErrorKind::Scriptlet { reason },
        }
    }
}

/// One `script "name" { source = ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptConfig {
    pub name: String,
    /// A module name looked up on `lua_path`, or a path to a `.lua` file
    /// (relative ones from the configuration file's folder).
    pub source: String,
    pub at: At,
}

/// The `scriptlet` stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptletConfig {
    pub instance: String,
    pub at: At,
    /// Templates separated by `;`, `?` standing for the module name, as
    /// Lua's `package.path`.
    pub lua_path: String,
    /// The folder of the file the stanza is in (relative `.lua` paths).
    pub folder: PathBuf,
    pub max_instructions: u64,
    pub timeout_outcome: TimeoutOutcome,
    pub max_memory_bytes: u64,
    pub scripts: Vec<ScriptConfig>,
}

impl ScriptletConfig {
    /// Where `script`'s file is: a `.lua` path as written (relative to
    /// `folder`), otherwise the first `lua_path` template that names an
    /// existing file. `Err` lists what was tried.
    pub fn locate(&self, script: &ScriptConfig) -> Result<PathBuf, String> {
        if script.source.ends_with(".lua") || script.source.contains('/') {
            let path = self.folder.join(&script.source);
            return Ok(path);
        }
        let module = script.source.replace('.', "/");
        let mut tried = Vec::new();
        for template in self.lua_path.split(';').filter(|t| !t.is_empty()) {
            let path = self.folder.join(template.replace('?', &module));
            if path.is_file() {
                return Ok(path);
            }
            tried.push(path.display().to_string());
        }
        Err(format!(
            "module `{}` not found on lua_path (tried {})",
            script.source,
            tried.join(", ")
        ))
    }
}

/// Reads a `scriptlet` stanza (top level only; the caller checked).
pub(super) fn read(tree: &Tree, stanza: &Stanza) -> Result<ScriptletConfig, ConfigError> {
    assert_eq!(stanza.keyword, Keyword::Scriptlet);
    let at = |file: FileId, line: u32| At {
        file: tree.files[file].clone(),
        line,
    };
    let stanza_at = at(stanza.file, stanza.line);
    let instance = match &stanza.name {
        Some(name) if !name.text.is_empty() => name.text.clone(),
        _ => {
            return Err(stanza_at.error(
                "the stanza needs an instance name, e.g. `scriptlet \"scriptlet\" { }`".into(),
            ))
        }
    };
    let folder = tree.files[stanza.file]
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut config = ScriptletConfig {
        instance,
        at: stanza_at,
        lua_path: "?.lua".to_string(),
        folder,
        max_instructions: MAX_INSTRUCTIONS_DEFAULT,
        timeout_outcome: TimeoutOutcome::Tempfail,
        max_memory_bytes: MAX_MEMORY_BYTES_DEFAULT,
        scripts: Vec::new(),
    };
    for item in &stanza.items {
        match item {
            Item::Setting {
                file,
                line,
                name,
                value,
            } => set(&mut config, name, value, at(*file, *line))?,
            Item::Stanza(inner) if inner.keyword == Keyword::Script => {
                let inner_at = at(inner.file, inner.line);
                let name = inner
                    .name
                    .as_ref()
                    .map(|w| w.text.clone())
                    .unwrap_or_default();
                if name.is_empty() {
                    return Err(inner_at.error(
                        "script needs a name, e.g. `script \"policy\" { source = \"policy\" }`"
                            .into(),
                    ));
                }
                if config.scripts.iter().any(|s| s.name == name) {
                    return Err(inner_at.error(format!("script `{name}` appears twice")));
                }
                if config.scripts.len() == SCRIPTS_MAX {
                    return Err(inner_at.error(format!("more than {SCRIPTS_MAX} script scopes")));
                }
                let mut source = None;
                for item in &inner.items {
                    match item {
                        Item::Setting {
                            file,
                            line,
                            name: option,
                            value,
                        } if option.eq_ignore_ascii_case("source") => match value {
                            Value::Scalar(word) if !word.text.is_empty() => {
                                source = Some(word.text.clone())
                            }
                            _ => {
                                return Err(at(*file, *line)
                                    .error("`source` must be a non-empty string".into()))
                            }
                        },
                        Item::Setting {
                            file, line, name, ..
                        } => {
                            return Err(at(*file, *line).error(format!(
                                "unknown option `{name}` in script (only `source`)"
                            )))
                        }
                        Item::Stanza(s) => {
                            return Err(at(s.file, s.line).error(format!(
                                "`{}` scope is not allowed inside script",
                                s.keyword_text
                            )))
                        }
                    }
                }
                let Some(source) = source else {
                    return Err(inner_at.error(format!("script `{name}` has no `source`")));
                };
                config.scripts.push(ScriptConfig {
                    name,
                    source,
                    at: inner_at,
                });
            }
            Item::Stanza(s) => {
                return Err(at(s.file, s.line).error(format!(
                    "`{}` scope is not allowed inside scriptlet (only script)",
                    s.keyword_text
                )))
            }
        }
    }
    for script in &config.scripts {
        if let Err(reason) = config.locate(script) {
            return Err(script.at.error(reason));
        }
    }
    Ok(config)
}

fn set(config: &mut ScriptletConfig, name: &str, value: &Value, at: At) -> Result<(), ConfigError> {
    let name = name.to_ascii_lowercase();
    let scalar = || match value {
        Value::Scalar(word) if !word.text.is_empty() => Ok(word.text.clone()),
        _ => Err(at.error(format!("`{name}` must be a non-empty string"))),
    };
    let number = |min: u64| -> Result<u64, ConfigError> {
        let text = scalar()?;
        match text.parse::<u64>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(at.error(format!(
                "`{name}` must be a whole number of at least {min}, got `{text}`"
            ))),
        }
    };
    match name.as_str() {
        "lua_path" => config.lua_path = scalar()?,
        "max_instructions" => config.max_instructions = number(MAX_INSTRUCTIONS_MIN)?,
        "max_memory" => config.max_memory_bytes = number(MAX_MEMORY_BYTES_MIN)?,
        "timeout_outcome" => {
            config.timeout_outcome = match scalar()?.to_ascii_lowercase().as_str() {
                "tempfail" => TimeoutOutcome::Tempfail,
                "reject" => TimeoutOutcome::Reject,
                "continue" => TimeoutOutcome::Continue,
                other => {
                    return Err(at.error(format!(
                "`timeout_outcome` must be \"tempfail\", \"reject\" or \"continue\", got `{other}`"
            )))
                }
            }
        }
        _ => {
            return Err(at.error(format!(
                "unknown option `{name}` (scriptlet takes lua_path, max_instructions, \
                 timeout_outcome, max_memory and script scopes)"
            )))
        }
    }
    Ok(())
}
