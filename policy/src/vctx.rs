//! The validation context (Momentum's vctx): two dictionaries of string
//! keys and values a policy reads and writes as a reception goes on. The
//! connection scope (`msys.core.VCTX_CONN`) lives as long as the session;
//! the message scope (`msys.core.VCTX_MESS`) is emptied when a new
//! transaction starts (MAIL, RSET, a new EHLO/HELO), so what one message
//! set never leaks into the next, yet it stays readable while the message
//! that set it is spooled.
//!
//! The session's own facts (EHLO domain, reverse and forward paths) are
//! not copied in here for every command; a policy reads them from the
//! [`crate::Validation`] it is given. The Lua layer maps Momentum's
//! built-in keys (`ehlo_domain`, `mailfrom_string`, ...) onto those, and
//! `vctx:get/set` onto [`ValidationContext::get`]/[`ValidationContext::set`].
//!
//! Owns: both dictionaries and their limits.
//! May call: std only.
//! Never: I/O; deciding when the message scope ends (the session does).

use std::collections::HashMap;
use std::fmt;

/// Keys in one scope.
pub const VCTX_KEYS_PER_SCOPE_MAX: usize = 1024;
/// Longest key, in bytes.
pub const VCTX_KEY_BYTES_MAX: usize = 255;
/// Keys and values of one scope together, in bytes, so a runaway script
/// cannot make one connection hold unbounded memory.
pub const VCTX_SCOPE_BYTES_MAX: usize = 256 * 1024;

/// Which dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Lives for the session (`VCTX_CONN`).
    Connection,
    /// Emptied at each new transaction (`VCTX_MESS`).
    Message,
}

/// Why a `set` was refused; the dictionary is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VctxError {
    KeyEmpty,
    KeyTooLong { key_bytes: usize },
    TooManyKeys { scope: Scope },
    ScopeFull { scope: Scope, bytes: usize },
}

impl fmt::Display for VctxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VctxError::KeyEmpty => f.write_str("a validation context key may not be empty"),
            VctxError::KeyTooLong { key_bytes } => write!(
                f,
                "validation context key of {key_bytes} bytes is over {VCTX_KEY_BYTES_MAX} bytes"
            ),
            VctxError::TooManyKeys { scope } => write!(
                f,
                "{scope:?} validation context already holds {VCTX_KEYS_PER_SCOPE_MAX} keys"
            ),
            VctxError::ScopeFull { scope, bytes } => write!(
                f,
                "{scope:?} validation context would hold {bytes} bytes, over \
                 {VCTX_SCOPE_BYTES_MAX} bytes"
            ),
        }
    }
}

impl std::error::Error for VctxError {}

/// One scope's keys and values.
#[derive(Debug, Default, Clone)]
struct Dictionary {
    entries: HashMap<String, String>,
    /// Sum of the lengths of every key and value; at most
    /// VCTX_SCOPE_BYTES_MAX.
    bytes: usize,
}

/// Both scopes of one session. Empty until a policy writes to it; an empty
/// context allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct ValidationContext {
    connection: Dictionary,
    message: Dictionary,
}

impl ValidationContext {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, scope: Scope, key: &str) -> Option<&str> {
        self.scope(scope).entries.get(key).map(String::as_str)
    }

    pub fn contains(&self, scope: Scope, key: &str) -> bool {
        self.scope(scope).entries.contains_key(key)
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn set(&mut self, scope: Scope, key: &str, value: &str) -> Result<(), VctxError> {
        if key.is_empty() {
            return Err(VctxError::KeyEmpty);
        }
        if key.len() > VCTX_KEY_BYTES_MAX {
            return Err(VctxError::KeyTooLong {
                key_bytes: key.len(),
            });
        }
        let dictionary = self.scope_mut(scope);
        let old_bytes = dictionary.entries.get(key).map(|v| key.len() + v.len());
        if old_bytes.is_none() && dictionary.entries.len() >= VCTX_KEYS_PER_SCOPE_MAX {
            return Err(VctxError::TooManyKeys { scope });
        }
        let bytes = dictionary.bytes - old_bytes.unwrap_or(0) + key.len() + value.len();
        if bytes > VCTX_SCOPE_BYTES_MAX {
            return Err(VctxError::ScopeFull { scope, bytes });
        }
        dictionary.bytes = bytes;
        match dictionary.entries.get_mut(key) {
            Some(old) => {
                old.clear();
                old.push_str(value);
            }
            None => {
                dictionary.entries.insert(key.to_owned(), value.to_owned());
            }
        }
        debug_assert_eq!(
            dictionary.bytes,
            dictionary
                .entries
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
        );
        Ok(())
    }

    /// Removes `key`; true when it was there.
    pub fn remove(&mut self, scope: Scope, key: &str) -> bool {
        let dictionary = self.scope_mut(scope);
        match dictionary.entries.remove(key) {
            Some(value) => {
                dictionary.bytes -= key.len() + value.len();
                true
            }
            None => false,
        }
    }

    pub fn len(&self, scope: Scope) -> usize {
        self.scope(scope).entries.len()
    }

    pub fn is_empty(&self, scope: Scope) -> bool {
        self.scope(scope).entries.is_empty()
    }

    /// Every key and value of `scope`, in no particular order.
    pub fn iter(&self, scope: Scope) -> impl Iterator<Item = (&str, &str)> {
        self.scope(scope)
            .entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Empties the message scope (a new transaction starts). Keeps the
    /// table's capacity for the next message.
    pub fn reset_message(&mut self) {
        self.message.entries.clear();
        self.message.bytes = 0;
    }

    fn scope(&self, scope: Scope) -> &Dictionary {
        match scope {
            Scope::Connection => &self.connection,
            Scope::Message => &self.message,
        }
    }

    fn scope_mut(&mut self, scope: Scope) -> &mut Dictionary {
        match scope {
            Scope::Connection => &mut self.connection,
            Scope::Message => &mut self.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_apart_and_reset_message_keeps_the_connection_scope() {
        let mut vctx = ValidationContext::new();
        vctx.set(Scope::Connection, "trusted", "yes").unwrap();
        vctx.set(Scope::Message, "campaign", "7").unwrap();
        vctx.set(Scope::Message, "campaign", "8").unwrap();
        assert_eq!(vctx.get(Scope::Message, "campaign"), Some("8"));
        assert_eq!(vctx.get(Scope::Connection, "campaign"), None);
        vctx.reset_message();
        assert!(vctx.is_empty(Scope::Message));
        assert_eq!(vctx.get(Scope::Connection, "trusted"), Some("yes"));
        assert!(vctx.remove(Scope::Connection, "trusted"));
        assert!(!vctx.remove(Scope::Connection, "trusted"));
    }

    #[test]
    fn limits_refuse_and_leave_the_scope_unchanged() {
        let mut vctx = ValidationContext::new();
        assert_eq!(vctx.set(Scope::Message, "", "v"), Err(VctxError::KeyEmpty));
        let long_key = "k".repeat(VCTX_KEY_BYTES_MAX + 1);
        assert!(matches!(
            vctx.set(Scope::Message, &long_key, "v"),
            Err(VctxError::KeyTooLong { .. })
        ));
        let big = "v".repeat(VCTX_SCOPE_BYTES_MAX);
        let error = vctx.set(Scope::Message, "k", &big).unwrap_err();
        assert!(error.to_string().contains("over"), "{error}");
        assert!(vctx.is_empty(Scope::Message));
        for i in 0..VCTX_KEYS_PER_SCOPE_MAX {
            vctx.set(Scope::Connection, &i.to_string(), "").unwrap();
        }
        assert_eq!(
            vctx.set(Scope::Connection, "one more", ""),
            Err(VctxError::TooManyKeys {
                scope: Scope::Connection
            })
        );
        // Replacing a key is not adding one.
        vctx.set(Scope::Connection, "0", "x").unwrap();
        assert_eq!(vctx.len(Scope::Connection), VCTX_KEYS_PER_SCOPE_MAX);
    }
}
