//! SMTP AUTH credentials and their checking: the password file, argon2
//! verification off the shard, the per-address failure limit, and the
//! acctlog `auth:` line.
//!
//! Owns: [`PasswordFile`] (`auth_password_file`: `user:argon2-PHC-hash`
//! lines), [`PasswordFiles`] (every listener's file, read by
//! `Config::load`), [`hash_password`] (what `ec_passwd` prints), the
//! process-wide failure table ([`failures`]); the acctlog line is written
//! by the shard's `log::ShardLogs::acctlog`.
//! May call: `argon2`, `log` (the line format), glommio's blocking pool
//! (an argon2 check takes milliseconds of CPU; the shard awaits it on the
//! pool's thread, placed Unbound by `runtime`, and keeps serving).
//! Never: SMTP replies or session state (the session turns an
//! `AuthOutcome` into a reply), the spool.

pub mod failures;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::config::{ConfigError, ConfigErrorKind, ListenerConfig};

/// Largest password file read, in bytes.
pub const PASSWORD_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Bytes of random salt in a new hash (the PHC recommendation).
pub const SALT_BYTES: usize = 16;

/// The users of one `auth_password_file`: user name to PHC hash string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: HashMap<String, String>,
}

impl PasswordFile {
    /// Reads `text`: `user:hash` per line, blank lines and `#` comments
    /// skipped. Errors name the 1-based line.
    pub fn parse(text: &str) -> Result<PasswordFile, (u32, String)> {
        let mut users = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line_number = index as u32 + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err((line_number, "expected `user:hash`".into()));
            };
            if user.is_empty() || user.chars().any(char::is_control) {
                return Err((line_number, "empty or unprintable user name".into()));
            }
            match PasswordHash::new(hash) {
                Ok(parsed) if parsed.algorithm.as_str().starts_with("argon2") => {}
                _ => {
                    return Err((
                        line_number,
                        format!(
                            "the hash of `{user}` is not an argon2 PHC string \
                             ($argon2id$...; make one with ec_passwd)"
                        ),
                    ))
                }
            }
            if users.insert(user.to_string(), hash.to_string()).is_some() {
                return Err((line_number, format!("user `{user}` appears twice")));
            }
        }
        Ok(PasswordFile { users })
    }

    pub fn load(path: &Path) -> Result<PasswordFile, ConfigError> {
        let error = |line: u32, reason: String| ConfigError {
            file: path.to_path_buf(),
            line,
            kind: ConfigErrorKind::BadPasswordFile { reason },
        };
        let size = std::fs::metadata(path)
            .map_err(|e| error(0, format!("cannot read password file: {e}")))?
            .len();
        if size > PASSWORD_FILE_BYTES_MAX {
            return Err(error(
                0,
                format!("password file is larger than {PASSWORD_FILE_BYTES_MAX} bytes"),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| error(0, format!("cannot read password file: {e}")))?;
        PasswordFile::parse(&text).map_err(|(line, reason)| error(line, reason))
    }

    /// The hash stored for `user`.
    pub fn hash_of(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Every listener's password file, read once by `Config::load`.
#[derive(Debug, Clone, Default)]
pub struct PasswordFiles {
    files: Vec<(PathBuf, Arc<PasswordFile>)>,
}

impl PasswordFiles {
    /// Reads the file of each enabled listener with `enable_authentication`
    /// (each path once). `config_file` is named when such a listener has
    /// no `auth_password_file`.
    pub fn load(
        listeners: &[ListenerConfig],
        config_file: &Path,
    ) -> Result<PasswordFiles, ConfigError> {
        let mut files: Vec<(PathBuf, Arc<PasswordFile>)> = Vec::new();
        for listener in listeners
            .iter()
            .filter(|l| l.enabled && l.enable_authentication)
        {
            let Some(path) = &listener.auth_password_file else {
                return Err(ConfigError {
                    file: config_file.to_path_buf(),
                    line: 0,
                    kind: ConfigErrorKind::AuthWithoutPasswordFile {
                        listener: listener.address.to_string(),
                    },
                });
            };
            if files.iter().any(|(p, _)| p == path) {
                continue;
            }
            files.push((path.clone(), Arc::new(PasswordFile::load(path)?)));
        }
        Ok(PasswordFiles { files })
    }

    pub fn get(&self, path: &Path) -> Option<&Arc<PasswordFile>> {
        self.files.iter().find(|(p, _)| p == path).map(|(_, f)| f)
    }
}

/// Whether `password` matches `hash` (a PHC string). `None` (no such
/// user) spends the same work on a fixed hash and answers false, so the
/// time taken does not tell which user names exist. CPU-heavy: call it
/// off the shard (`verify_off_shard`).
pub fn verify(hash: Option<&str>, password: &str) -> bool {
    let (hash, known) = match hash {
        Some(hash) => (hash, true),
        None => (absent_user_hash(), false),
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let matches = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    matches && known
}

/// `verify` on the shard's blocking pool; the shard serves others meanwhile.
pub async fn verify_off_shard(hash: Option<String>, password: String) -> bool {
    glommio::executor()
        .spawn_blocking(move || verify(hash.as_deref(), &password))
        .await
}

/// A hash no password is checked against for real (see `verify`).
fn absent_user_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        hash_password("no such user").expect("hashing a fixed password with a fresh salt")
    })
}

/// An argon2id PHC string for `password` with Argon2's default cost and a
/// random salt: a line for the password file is `user:` followed by it.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; SALT_BYTES];
    fill_random(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

fn fill_random(buf: &mut [u8]) -> Result<(), String> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: writes at most rest.len() bytes into rest.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("getrandom: {error}"));
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify(Some(&hash), "correct horse"));
        assert!(!verify(Some(&hash), "correct horsE"));
        assert!(
            !verify(None, "no such user"),
            "an unknown user never matches"
        );
        assert!(!verify(Some("not a hash"), "x"));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn a_listener_with_auth_needs_a_readable_password_file() {
        let mut listener = ListenerConfig::builtin();
        listener.enable_authentication = true;
        let config = Path::new("ecelerity.conf");
        let error = PasswordFiles::load(std::slice::from_ref(&listener), config).unwrap_err();
        assert!(matches!(
            error.kind,
            ConfigErrorKind::AuthWithoutPasswordFile { .. }
        ));
        listener.auth_password_file = Some("/nonexistent/ecelerity-passwd".into());
        let error = PasswordFiles::load(std::slice::from_ref(&listener), config).unwrap_err();
        assert_eq!(error.file, Path::new("/nonexistent/ecelerity-passwd"));
        assert!(
            error.to_string().contains("cannot read password file"),
            "{error}"
        );
        listener.enabled = false;
        let none = PasswordFiles::load(&[listener], config).unwrap();
        assert!(none
            .get(Path::new("/nonexistent/ecelerity-passwd"))
            .is_none());
    }

    #[test]
    fn the_password_file_reads_users_and_names_the_bad_line() {
        let hash = hash_password("pw").unwrap();
        let text = format!("# users\n\nalice:{hash}\n bob:{hash} \n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 2);
        assert_eq!(file.hash_of("alice"), Some(hash.as_str()));
        assert_eq!(file.hash_of("carol"), None);
        let bad = |text: &str| PasswordFile::parse(text).unwrap_err();
        assert_eq!(bad("alice").0, 1);
        assert_eq!(bad(&format!("alice:{hash}\nbob:plaintext\n")).0, 2);
        assert_eq!(bad(&format!(":{hash}")).0, 1);
        assert_eq!(bad(&format!("a:{hash}\n#\na:{hash}")).0, 3);
        assert_eq!(
            bad("bob:$2b$12$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ").0,
            1,
            "bcrypt is not read"
        );
    }
}
