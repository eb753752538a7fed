//! Momentum's `opendkim` module stanza, read into `OpendkimConfig`:
//!
//! ```text
//! opendkim "opendkim1" {
//!   header_canon = "relaxed"            # or "simple"
//!   body_canon = "relaxed"
//!   headerlist = ("from", "to", "subject", "date", "message-id")
//!   digest = "rsa-sha256"               # or "ed25519-sha256"
//!   base_domain = "example.com"
//!   key = "/etc/ecelerity/dkim/%{d}/%{s}.key"
//!   dkim_domain "example.com" { selector = "s1" }
//! }
//! ```
//!
//! Every option but `dkim_domain` may be written in the module (the
//! default of its `dkim_domain`s) or in a `dkim_domain` (for that domain).
//! Whether a message is signed at all is the `opendkim_sign` option of its
//! binding and recipient domain (an outbound option, `options`).
//! Owns: the stanza's syntax and checks (`file:line: what is wrong`).
//! May call: `parse` (the tree), `error`. Never: key files (the `dkim`
//! room loads them, so a reload re-reads them), the message.

use std::path::PathBuf;

use super::error::{ConfigError, ConfigErrorKind};
use super::parse::{FileId, Item, Keyword, Stanza, Tree, Value};

/// Most `dkim_domain` scopes in one `opendkim` stanza.
pub const DKIM_DOMAINS_MAX: usize = 10_000;
/// Most header names in `headerlist`.
pub const HEADERLIST_NAMES_MAX: usize = 64;
/// The headers signed when `headerlist` is not set (RFC 6376 5.4.1's
/// list, less the trace and list headers).
pub const HEADERLIST_DEFAULT: [&str; 13] = [
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "in-reply-to",
    "references",
];

/// Momentum options of the stanza ecelerity does not act on yet: refused
/// by name rather than ignored.
const NOT_YET: [&str; 6] = [
    "sign_condition",
    "identity",
    "keybuffer",
    "body_length_limit",
    "lifetime",
    "signing_stats",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canon {
    Relaxed,
    Simple,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    RsaSha256,
    Ed25519Sha256,
}

impl Digest {
    pub fn name(self) -> &'static str {
        match self {
            Digest::RsaSha256 => "rsa-sha256",
            Digest::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// Where an option was written, for the errors of the key loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub file: PathBuf,
    pub line: u32,
}

impl At {
    /// `file:line: opendkim: reason`, as every configuration error.
    pub fn error(&self, reason: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            kind: ConfigErrorKind::Opendkim { reason },
        }
    }
}

/// One `dkim_domain`, the module's options filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimDomain {
    /// The From header domain it signs for, lowercase.
    pub name: String,
    pub at: At,
    pub selector: String,
    /// The signing domain (`d=`) for mail from `name` or its subdomains
    /// when set and `name` is it or one of its subdomains.
    pub base_domain: Option<String>,
    /// As written, `%{d}` and `%{s}` not yet expanded.
    pub key: String,
    /// Where `key` was written (the loader's errors name it).
    pub key_at: At,
    pub header_canon: Canon,
    pub body_canon: Canon,
    /// Lowercase names; always holds `from`.
    pub headerlist: Vec<String>,
    pub digest: Digest,
}

impl DkimDomain {
    /// The signing domain (`d=`): `base_domain` when `name` is it or a
    /// subdomain of it, else `name`.
    pub fn signing_domain(&self) -> &str {
        match &self.base_domain {
            Some(base) if is_within(&self.name, base) => base,
            _ => &self.name,
        }
    }

    /// `key` with `%{d}` (the signing domain) and `%{s}` (the selector)
    /// expanded.
    pub fn key_path(&self) -> PathBuf {
        PathBuf::from(
            self.key
                .replace("%{d}", self.signing_domain())
                .replace("%{s}", &self.selector),
        )
    }
}

/// Whether `domain` is `parent` or one of its subdomains (ASCII case
/// already folded).
pub fn is_within(domain: &str, parent: &str) -> bool {
    domain == parent
        || (domain.len() > parent.len()
            && domain.ends_with(parent)
            && domain.as_bytes()[domain.len() - parent.len() - 1] == b'.')
}

/// The `opendkim` stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpendkimConfig {
    /// The instance name (`opendkim "opendkim1"`).
    pub instance: String,
    pub at: At,
    pub domains: Vec<DkimDomain>,
}

/// Options as read in one scope; `None` falls back to the module's.
#[derive(Debug, Clone, Default)]
struct Partial {
    selector: Option<String>,
    base_domain: Option<String>,
    key: Option<(String, At)>,
    header_canon: Option<Canon>,
    body_canon: Option<Canon>,
    headerlist: Option<Vec<String>>,
    digest: Option<Digest>,
}

impl Partial {
    fn over(&self, module: &Partial) -> Partial {
        Partial {
            selector: self.selector.clone().or_else(|| module.selector.clone()),
            base_domain: self
                .base_domain
                .clone()
                .or_else(|| module.base_domain.clone()),
            key: self.key.clone().or_else(|| module.key.clone()),
            header_canon: self.header_canon.or(module.header_canon),
            body_canon: self.body_canon.or(module.body_canon),
            headerlist: self
                .headerlist
                .clone()
                .or_else(|| module.headerlist.clone()),
            digest: self.digest.or(module.digest),
        }
    }
}

/// Reads an `opendkim` stanza (top level only; the caller checked).
pub(super) fn read(tree: &Tree, stanza: &Stanza) -> Result<OpendkimConfig, ConfigError> {
    assert_eq!(stanza.keyword, Keyword::Opendkim);
    let at = |file: FileId, line: u32| At {
        file: tree.files[file].clone(),
        line,
    };
    let stanza_at = at(stanza.file, stanza.line);
    let instance = match &stanza.name {
        Some(name) if !name.text.is_empty() => name.text.clone(),
        _ => {
            return Err(stanza_at.error(
                "the stanza needs an instance name, e.g. `opendkim \"opendkim1\" { }`".into(),
            ))
        }
    };
    let mut module = Partial::default();
    let mut scopes: Vec<(String, At, Partial)> = Vec::new();
    for item in &stanza.items {
        match item {
            Item::Setting {
                file,
                line,
                name,
                value,
            } => set(&mut module, name, value, at(*file, *line))?,
            Item::Stanza(inner) if inner.keyword == Keyword::DkimDomain => {
                let inner_at = at(inner.file, inner.line);
                let name = match &inner.name {
                    Some(name) => name.text.to_ascii_lowercase(),
                    None => String::new(),
                };
                if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '@') {
                    return Err(inner_at.error(format!(
                        "dkim_domain needs a domain name, e.g. `dkim_domain \"example.com\" {{ }}`, got `{name}`"
                    )));
                }
                if scopes.iter().any(|(n, _, _)| *n == name) {
                    return Err(inner_at.error(format!("dkim_domain `{name}` appears twice")));
                }
                if scopes.len() == DKIM_DOMAINS_MAX {
                    return Err(
                        inner_at.error(format!("more than {DKIM_DOMAINS_MAX} dkim_domain scopes"))
                    );
                }
                let mut partial = Partial::default();
                for item in &inner.items {
                    match item {
                        Item::Setting {
                            file,
                            line,
                            name,
                            value,
                        } => set(&mut partial, name, value, at(*file, *line))?,
                        Item::Stanza(s) => {
                            return Err(at(s.file, s.line).error(format!(
                                "`{}` scope is not allowed inside dkim_domain",
                                s.keyword_text
                            )))
                        }
                    }
                }
                scopes.push((name, inner_at, partial));
            }
            Item::Stanza(s) => {
                return Err(at(s.file, s.line).error(format!(
                    "`{}` scope is not allowed inside opendkim (only dkim_domain)",
                    s.keyword_text
                )))
            }
        }
    }
    let mut domains = Vec::with_capacity(scopes.len());
    for (name, at, partial) in scopes {
        domains.push(settle(name, at, partial.over(&module))?);
    }
    Ok(OpendkimConfig {
        instance,
        at: stanza_at,
        domains,
    })
}

/// A `dkim_domain` with everything it needs, or what it lacks.
fn settle(name: String, at: At, p: Partial) -> Result<DkimDomain, ConfigError> {
    let Some(selector) = p.selector else {
        return Err(at.error(format!(
            "dkim_domain `{name}` has no selector (set `selector` in it or in the module)"
        )));
    };
    let Some((key, key_at)) = p.key else {
        return Err(at.error(format!(
            "dkim_domain `{name}` has no key (set `key` in it or in the module)"
        )));
    };
    let base_domain = p.base_domain.map(|b| b.to_ascii_lowercase());
    Ok(DkimDomain {
        name,
        at,
        selector,
        base_domain,
        key,
        key_at,
        header_canon: p.header_canon.unwrap_or(Canon::Relaxed),
        body_canon: p.body_canon.unwrap_or(Canon::Relaxed),
        headerlist: p
            .headerlist
            .unwrap_or_else(|| HEADERLIST_DEFAULT.iter().map(|h| h.to_string()).collect()),
        digest: p.digest.unwrap_or(Digest::RsaSha256),
    })
}

fn set(p: &mut Partial, name: &str, value: &Value, at: At) -> Result<(), ConfigError> {
    let name = name.to_ascii_lowercase();
    let scalar = || match value {
        Value::Scalar(word) if !word.text.is_empty() => Ok(word.text.clone()),
        _ => Err(at.error(format!("`{name}` must be a non-empty string"))),
    };
    match name.as_str() {
        "selector" => {
            let selector = scalar()?;
            if !selector
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(at.error(format!(
                    "selector `{selector}` must be letters, digits, `-`, `_` and `.`"
                )));
            }
            p.selector = Some(selector);
        }
        "base_domain" => {
            let domain = scalar()?;
            if domain.contains(|c: char| c.is_whitespace() || c == '@') {
                return Err(at.error(format!("base_domain `{domain}` is not a domain")));
            }
            p.base_domain = Some(domain);
        }
        "key" => p.key = Some((scalar()?, at.clone())),
        "header_canon" | "body_canon" => {
            let canon = match scalar()?.to_ascii_lowercase().as_str() {
                "relaxed" => Canon::Relaxed,
                "simple" => Canon::Simple,
                other => {
                    return Err(at.error(format!(
                        "`{name}` must be \"relaxed\" or \"simple\", got `{other}`"
                    )))
                }
            };
            if name == "header_canon" {
                p.header_canon = Some(canon);
            } else {
                p.body_canon = Some(canon);
            }
        }
        "digest" => {
            p.digest = Some(match scalar()?.to_ascii_lowercase().as_str() {
                "rsa-sha256" => Digest::RsaSha256,
                "ed25519-sha256" => Digest::Ed25519Sha256,
                "rsa-sha1" => {
                    return Err(at.error(
                        "digest rsa-sha1 is not allowed for signing (RFC 8301); use rsa-sha256"
                            .into(),
                    ))
                }
                other => {
                    return Err(at.error(format!(
                        "digest must be \"rsa-sha256\" or \"ed25519-sha256\", got `{other}`"
                    )))
                }
            });
        }
        "headerlist" => {
            // Momentum's examples separate the names with commas as well.
            let words: Vec<&str> = match value {
                Value::Scalar(word) => vec![word.text.as_str()],
                Value::List(words) => words.iter().map(|w| w.text.as_str()).collect(),
            };
            let words: Vec<&str> = words
                .iter()
                .flat_map(|w| w.split(','))
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .collect();
            if words.len() > HEADERLIST_NAMES_MAX {
                return Err(at.error(format!(
                    "headerlist has {} names, at most {HEADERLIST_NAMES_MAX}",
                    words.len()
                )));
            }
            let mut list: Vec<String> = Vec::with_capacity(words.len());
            for word in words {
                let header = word.to_ascii_lowercase();
                if header.is_empty() || !header.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                    return Err(at.error(format!("headerlist: `{word}` is not a header name")));
                }
                if !list.contains(&header) {
                    list.push(header);
                }
            }
            if !list.iter().any(|h| h == "from") {
                return Err(at.error(
                    "headerlist must name \"from\" (RFC 6376 5.4: From is always signed)".into(),
                ));
            }
            p.headerlist = Some(list);
        }
        other if NOT_YET.contains(&other) => {
            return Err(at.error(format!("option `{other}` is not supported yet")))
        }
        other => return Err(at.error(format!("unknown option `{other}`"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.conf"))
    }

    #[test]
    fn the_stanza_fills_its_domains_from_the_module() {
        let config = parse(
            "opendkim \"opendkim1\" {\n\
             base_domain = \"example.com\"\n\
             key = \"/k/%{d}/%{s}.key\"\n\
             header_canon = \"simple\"\n\
             headerlist = (\"From\", \"to\")\n\
             dkim_domain \"Mail.Example.com\" { selector = \"s1\" }\n\
             dkim_domain \"other.org\" { selector = \"s2\" digest = \"ed25519-sha256\" body_canon = simple }\n\
             }\n",
        )
        .unwrap();
        let dkim = config.opendkim().unwrap();
        assert_eq!(dkim.instance, "opendkim1");
        let a = &dkim.domains[0];
        assert_eq!(a.name, "mail.example.com");
        assert_eq!(a.signing_domain(), "example.com");
        assert_eq!(a.key_path(), PathBuf::from("/k/example.com/s1.key"));
        assert_eq!(a.header_canon, Canon::Simple);
        assert_eq!(a.body_canon, Canon::Relaxed);
        assert_eq!(a.headerlist, vec!["from", "to"]);
        assert_eq!(a.digest, Digest::RsaSha256);
        let b = &dkim.domains[1];
        assert_eq!(b.signing_domain(), "other.org");
        assert_eq!(b.key_path(), PathBuf::from("/k/other.org/s2.key"));
        assert_eq!(b.digest, Digest::Ed25519Sha256);
        assert_eq!(b.body_canon, Canon::Simple);
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            (
                "opendkim \"o\" {\nkey = \"/k\"\ndkim_domain \"a.org\" { }\n}\n",
                3,
                "no selector",
            ),
            (
                "opendkim \"o\" {\nselector = s\n\ndkim_domain \"a.org\" { }\n}\n",
                4,
                "no key",
            ),
            (
                "opendkim \"o\" {\ndigest = \"rsa-sha1\"\n}\n",
                2,
                "RFC 8301",
            ),
            (
                "opendkim \"o\" {\nheaderlist = (\"to\")\n}\n",
                2,
                "must name \"from\"",
            ),
            (
                "opendkim \"o\" {\nsign_condition = \"x\"\n}\n",
                2,
                "not supported yet",
            ),
            ("opendkim \"o\" {\nfrobnicate = 1\n}\n", 2, "unknown option"),
            ("opendkim \"o\" {\nheader_canon = nope\n}\n", 2, "relaxed"),
            ("binding b {\nopendkim \"o\" { }\n}\n", 2, "not allowed"),
            (
                "opendkim \"o\" { }\nopendkim \"p\" { }\n",
                2,
                "one opendkim",
            ),
        ];
        for (text, line, what) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text}: {err}");
            assert!(err.to_string().contains(what), "{text}: {err}");
            assert!(
                err.to_string().starts_with(&format!("t.conf:{line}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn opendkim_sign_falls_back_from_domain_to_global() {
        let config = parse(
            "opendkim_sign = true\n\
             binding b { domain \"x.org\" { opendkim_sign = false } }\n",
        )
        .unwrap();
        assert!(config.delivery("default", "y.org").opendkim_sign);
        assert!(config.delivery("b", "y.org").opendkim_sign);
        assert!(!config.delivery("b", "x.org").opendkim_sign);
    }

    #[test]
    fn within_means_the_domain_or_a_subdomain() {
        assert!(is_within("example.com", "example.com"));
        assert!(is_within("a.example.com", "example.com"));
        assert!(!is_within("badexample.com", "example.com"));
        assert!(!is_within("example.com", "a.example.com"));
    }
}
