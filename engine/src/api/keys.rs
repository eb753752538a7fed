//! REST API keys: created, listed and revoked from the console (`api_key
//! create NAME [grant ...]`, `api_key list`, `api_key revoke NAME`), kept
//! hashed (SHA-256 of a random 160-bit key) in one file under the
//! spoolbase, and checked by every shard's HTTP listener.
//!
//! Owns: the key file (`<spoolbase>/api_keys`, one line per key, replaced
//! atomically: written beside, synced, renamed), the process-wide key set
//! every shard reads (a change is seen by the next request on every shard:
//! no restart, no reload), the grant names, and the console commands.
//! May call: std, `ring` (digest, random). Never: the spool, queues, a
//! shard's state.
//!
//! A request's key is looked up by its hash: the file never holds a key,
//! and `api_key list` never shows one; the key is shown once, on the last
//! line of `api_key create`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// File name of the key set under the spoolbase.
pub const API_KEYS_FILE: &str = "api_keys";
/// Random bytes of a key (160 bits, shown as 40 hex digits).
pub const API_KEY_BYTES: usize = 20;
/// Most keys the set holds.
pub const API_KEYS_MAX: usize = 1_000;
/// Longest key name.
pub const API_KEY_NAME_BYTES_MAX: usize = 64;

/// Every grant a key may carry (SparkPost's names).
pub const GRANTS: &[&str] = &[
    "transmissions:modify",
    "transmissions:view",
    "templates:modify",
    "templates:view",
    "recipient_lists:modify",
    "recipient_lists:view",
    "metrics:view",
    "webhooks:modify",
    "webhooks:view",
];

/// One key, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    pub grants: Vec<String>,
    pub created_unix_secs: u64,
}

/// What a presented key may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// No key, or one this set does not hold.
    Unknown,
    /// A known key without the grant asked for (its name).
    Forbidden(String),
    Granted(String),
}

/// The key set and the file it lives in.
pub struct KeyStore {
    path: PathBuf,
    keys: RwLock<Arc<Vec<ApiKey>>>,
}

static STORE: OnceLock<KeyStore> = OnceLock::new();

/// The daemon's key set (loaded from `<spoolbase>/api_keys` on first use).
pub fn store(spoolbase: &Path) -> &'static KeyStore {
    STORE.get_or_init(|| KeyStore::open(spoolbase.join(API_KEYS_FILE)))
}

fn hash(key: &str) -> [u8; 32] {
    let d = digest(&SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= API_KEY_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Parses the key file: `name TAB sha256-hex TAB created TAB grant,grant`
/// per line. A bad line is an error naming it.
pub fn parse_file(text: &str) -> Result<Vec<ApiKey>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = || format!("line {}: not `name, hash, created, grants`", n + 1);
        let parts: Vec<&str> = line.split('\t').collect();
        let [name, h, created, grants] = parts[..] else {
            return Err(bad());
        };
        let hash = unhex(h).ok_or_else(bad)?;
        let created_unix_secs = created.parse().map_err(|_| bad())?;
        if !valid_name(name) {
            return Err(bad());
        }
        keys.push(ApiKey {
            name: name.to_string(),
            hash,
            grants: grants
                .split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
            created_unix_secs,
        });
    }
    Ok(keys)
}

fn render_file(keys: &[ApiKey]) -> String {
    let mut out = String::new();
    for k in keys {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}",
            k.name,
            hex(&k.hash),
            k.created_unix_secs,
            k.grants.join(",")
        );
    }
    out
}

/// Writes `text` to `path` so that a crash leaves the old file or the new
/// one: written beside, synced, renamed, directory synced.
pub fn write_atomically(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl KeyStore {
    /// Loads the set from `path` (none yet: empty). An unreadable file
    /// leaves the set empty (every request refused) and says why.
    pub fn open(path: PathBuf) -> KeyStore {
        let keys = match std::fs::read_to_string(&path) {
            Ok(text) => parse_file(&text).unwrap_or_else(|e| {
                tracing::error!(
                    "api: {}: {e}; no API key is accepted until it is fixed",
                    path.display()
                );
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!("api: cannot read {}: {e}", path.display());
                Vec::new()
            }
        };
        KeyStore {
            path,
            keys: RwLock::new(Arc::new(keys)),
        }
    }

    fn current(&self) -> Arc<Vec<ApiKey>> {
        self.keys.read().expect("key set lock").clone()
    }

    /// What the key presented (the raw `Authorization` value) may do with
    /// `grant`.
    pub fn check(&self, presented: Option<&str>, grant: &str) -> Access {
        let Some(presented) = presented.map(str::trim).filter(|k| !k.is_empty()) else {
            return Access::Unknown;
        };
        let h = hash(presented);
        let keys = self.current();
        match keys.iter().find(|k| k.hash == h) {
            None => Access::Unknown,
            Some(k) if k.grants.iter().any(|g| g == grant) => Access::Granted(k.name.clone()),
            Some(k) => Access::Forbidden(k.name.clone()),
        }
    }

    /// Replaces the set with `f`'s change of it, file first.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Vec<ApiKey>) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut guard = self.keys.write().expect("key set lock");
        let mut keys = (**guard).clone();
        let out = f(&mut keys)?;
        write_atomically(&self.path, render_file(&keys).as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        *guard = Arc::new(keys);
        Ok(out)
    }

    /// Creates key `name` with `grants` (none: every grant); returns the
    /// key, which is stored only as its hash.
    pub fn create(
        &self,
        name: &str,
        grants: &[&str],
        now_unix_secs: u64,
    ) -> Result<String, String> {
        if !valid_name(name) {
            return Err(format!(
                "bad key name '{name}': 1 to {API_KEY_NAME_BYTES_MAX} of A-Z a-z 0-9 _ - ."
            ));
        }
        if let Some(bad) = grants.iter().find(|g| !GRANTS.contains(g)) {
            return Err(format!(
                "unknown grant '{bad}'; grants: {}",
                GRANTS.join(" ")
            ));
        }
        let grants: Vec<String> = if grants.is_empty() {
            GRANTS.iter().map(|g| g.to_string()).collect()
        } else {
            grants.iter().map(|g| g.to_string()).collect()
        };
        let mut raw = [0u8; API_KEY_BYTES];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| "no randomness available".to_string())?;
        let key = hex(&raw);
        self.change(|keys| {
            if keys.iter().any(|k| k.name == name) {
                return Err(format!(
                    "an API key named '{name}' exists (revoke it first)"
                ));
            }
            if keys.len() >= API_KEYS_MAX {
                return Err(format!("{API_KEYS_MAX} API keys exist: revoke one first"));
            }
            keys.push(ApiKey {
                name: name.to_string(),
                hash: hash(&key),
                grants,
                created_unix_secs: now_unix_secs,
            });
            Ok(())
        })?;
        Ok(key)
    }

    /// Removes key `name`.
    pub fn revoke(&self, name: &str) -> Result<(), String> {
        self.change(|keys| {
            let before = keys.len();
            keys.retain(|k| k.name != name);
            if keys.len() == before {
                return Err(format!("no API key named '{name}'"));
            }
            Ok(())
        })
    }

    pub fn list(&self) -> Arc<Vec<ApiKey>> {
        self.current()
    }
}

/// The console's `api_key` commands, or `None` for another command.
pub fn console(line: &str, spoolbase: &Path, now_unix_secs: u64) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (first, rest) = words.split_first()?;
    if !first.eq_ignore_ascii_case("api_key") {
        return None;
    }
    let store = store(spoolbase);
    Some(run(store, rest, now_unix_secs))
}

/// One `api_key` command against `store`.
pub fn run(store: &KeyStore, args: &[&str], now_unix_secs: u64) -> String {
    const USAGE: &str =
        "Usage: api_key create NAME [grant ...] | api_key list | api_key revoke NAME\n";
    match args {
        [cmd, name, grants @ ..] if cmd.eq_ignore_ascii_case("create") => {
            match store.create(name, grants, now_unix_secs) {
                Ok(key) => {
                    let shown = store
                        .list()
                        .iter()
                        .find(|k| k.name == *name)
                        .map(|k| k.grants.join(" "))
                        .unwrap_or_default();
                    format!("API key '{name}' created with grants: {shown}\n{key}\n")
                }
                Err(e) => format!("Error: {e}\n"),
            }
        }
        [cmd] if cmd.eq_ignore_ascii_case("list") => {
            let keys = store.list();
            if keys.is_empty() {
                return "No API keys.\n".to_string();
            }
            let mut out = format!("{:<24} {:<20} {}\n", "Name", "Created", "Grants");
            for k in keys.iter() {
                let _ = writeln!(
                    out,
                    "{:<24} {:<20} {}",
                    k.name,
                    crate::api::rfc3339(k.created_unix_secs),
                    k.grants.join(" ")
                );
            }
            out
        }
        [cmd, name] if cmd.eq_ignore_ascii_case("revoke") => match store.revoke(name) {
            Ok(()) => format!("API key '{name}' revoked\n"),
            Err(e) => format!("Error: {e}\n"),
        },
        _ => USAGE.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(label: &str) -> (KeyStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("ec-keys-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (KeyStore::open(dir.join(API_KEYS_FILE)), dir)
    }

    #[test]
    fn a_created_key_is_granted_what_it_carries_and_survives_a_reopen() {
        let (store, dir) = temp_store("create");
        let out = run(
            &store,
            &["create", "app", "transmissions:modify"],
            1_700_000_000,
        );
        let key = out.lines().last().unwrap().to_string();
        assert_eq!(key.len(), 40, "{out}");
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            store.check(Some(&key), "transmissions:modify"),
            Access::Granted("app".into())
        );
        assert_eq!(
            store.check(Some(&key), "metrics:view"),
            Access::Forbidden("app".into())
        );
        assert_eq!(store.check(Some("nope"), "metrics:view"), Access::Unknown);
        assert_eq!(store.check(None, "metrics:view"), Access::Unknown);
        let file = std::fs::read_to_string(dir.join(API_KEYS_FILE)).unwrap();
        assert!(!file.contains(&key), "the key itself is never stored");
        let again = KeyStore::open(dir.join(API_KEYS_FILE));
        assert_eq!(
            again.check(Some(&key), "transmissions:modify"),
            Access::Granted("app".into())
        );
        let listed = run(&again, &["list"], 0);
        assert!(listed.contains("app") && !listed.contains(&key), "{listed}");
        assert_eq!(
            run(&again, &["revoke", "app"], 0),
            "API key 'app' revoked\n"
        );
        assert_eq!(
            again.check(Some(&key), "transmissions:modify"),
            Access::Unknown
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_names_grants_and_duplicates_are_refused() {
        let (store, dir) = temp_store("bad");
        assert!(run(&store, &["create", "a b/c"], 0).starts_with("Error: bad key name"));
        assert!(run(&store, &["create", "x", "root:all"], 0).starts_with("Error: unknown grant"));
        let out = run(&store, &["create", "x"], 0);
        assert!(
            out.contains("webhooks:modify"),
            "no grant given: every grant: {out}"
        );
        assert!(run(&store, &["create", "x"], 0).contains("exists"));
        assert!(run(&store, &["revoke", "y"], 0).starts_with("Error: no API key"));
        assert!(run(&store, &["frob"], 0).starts_with("Usage"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_the_line() {
        assert!(parse_file("a\tzz\t1\tx\n")
            .unwrap_err()
            .starts_with("line 1"));
        let good = format!("a\t{}\t5\tmetrics:view\n", hex(&hash("k")));
        assert_eq!(parse_file(&good).unwrap()[0].grants, vec!["metrics:view"]);
    }
}
