//! Parser for ecelerity.conf: tokens to a syntax tree of settings and
//! stanzas, with `include` files spliced in where they appear.
//! Owns: the grammar (`name = value`, `name = ( list )`,
//! `keyword ["name"] { ... }`, `include "path"`), include resolution
//! (relative to the including file; a directory means its non-hidden files
//! in name order, no recursion), include-cycle detection, depth limits.
//! May call: `lexer`, `error`, the file system (reading includes only).
//! Never: option meaning or scope nesting rules (that is `model`).

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{ConfigError, ConfigErrorKind};
use super::lexer::{tokenize, Token, TokenKind};

/// Largest configuration file read, top-level or included.
pub(super) const CONFIG_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Deepest chain of includes. Cycles are caught separately; this bounds
/// long acyclic chains and directory fan-in.
pub(super) const INCLUDE_DEPTH_MAX: usize = 16;
/// Deepest scope nesting. The deepest legal nesting is 3
/// (binding_group > binding > domain); the limit keeps the recursive parser
/// safe from hostile input before `model` rejects the nesting.
pub(super) const SCOPE_DEPTH_MAX: usize = 8;

/// Index into `Tree::files`.
pub(super) type FileId = usize;

/// The scope keywords the grammar knows, matched case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keyword {
    BindingGroup,
    Binding,
    Domain,
    EsmtpListener,
    ControlListener,
    HttpListener,
    Listen,
    EcLogger,
    Security,
    Host,
    /// Momentum's `opendkim "name" { }` module stanza (read by `dkim`).
    Opendkim,
    /// `dkim_domain "name" { }`, inside `opendkim` only.
    DkimDomain,
    Peer,
    Webhook,
    /// Momentum's `Datasource "name" { }` (read by `config::datasource`).
    Datasource,
    /// Momentum's `scriptlet "name" { }` module stanza (read by `scriptlet`).
    Scriptlet,
    /// `script "name" { source = ... }`, inside `scriptlet` only.
    Script,
}

impl Keyword {
    pub(super) fn from_word(word: &str) -> Option<Keyword> {
        const KEYWORDS: [(&str, Keyword); 17] = [
            ("binding_group", Keyword::BindingGroup),
            ("binding", Keyword::Binding),
            ("domain", Keyword::Domain),
            ("esmtp_listener", Keyword::EsmtpListener),
            ("control_listener", Keyword::ControlListener),
            ("http_listener", Keyword::HttpListener),
            ("listen", Keyword::Listen),
            ("ec_logger", Keyword::EcLogger),
            ("security", Keyword::Security),
            ("host", Keyword::Host),
            ("opendkim", Keyword::Opendkim),
            ("dkim_domain", Keyword::DkimDomain),
            ("peer", Keyword::Peer),
            ("webhook", Keyword::Webhook),
            ("datasource", Keyword::Datasource),
            ("scriptlet", Keyword::Scriptlet),
            ("script", Keyword::Script),
        ];
        KEYWORDS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(word))
            .map(|(_, k)| *k)
    }
}

/// A value as written: its text, whether it was quoted, and its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Word {
    pub(super) text: String,
    pub(super) quoted: bool,
    pub(super) line: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Scalar(Word),
    List(Vec<Word>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Item {
    Setting {
        file: FileId,
        line: u32,
        name: String,
        value: Value,
    },
    Stanza(Stanza),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stanza {
    pub(super) file: FileId,
    pub(super) line: u32,
    pub(super) keyword: Keyword,
    /// The keyword as written, for messages.
    pub(super) keyword_text: String,
    pub(super) name: Option<Word>,
    pub(super) items: Vec<Item>,
}

/// The whole configuration: every file read, and the top-level items.
#[derive(Debug, Clone)]
pub(super) struct Tree {
    /// Paths as opened (joined onto the including file's directory).
    pub(super) files: Vec<PathBuf>,
    pub(super) items: Vec<Item>,
}

impl Tree {
    pub(super) fn error(&self, file: FileId, line: u32, kind: ConfigErrorKind) -> ConfigError {
        ConfigError {
            file: self.files[file].clone(),
            line,
            kind,
        }
    }
}

/// Parses `text`, read from `file` (which need not exist; includes are
/// resolved against its directory).
pub(super) fn parse_tree(text: &str, file: &Path) -> Result<Tree, ConfigError> {
    let mut reader = Reader {
        files: Vec::new(),
        reading: Vec::new(),
    };
    // Knowing the top file's real path lets a file that includes itself be
    // caught as a cycle.
    let identity = fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let items = reader.read_text(text, file.to_path_buf(), identity, 0)?;
    Ok(Tree {
        files: reader.files,
        items,
    })
}

struct Reader {
    files: Vec<PathBuf>,
    /// Canonical paths of the files being read, outermost first.
    reading: Vec<PathBuf>,
}

struct Cursor {
    tokens: Vec<Token>,
    position: usize,
}

impl Cursor {
    fn peek(&self, ahead: usize) -> Option<&Token> {
        self.tokens.get(self.position + ahead)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        if token.is_some() {
            self.position += 1;
        }
        token
    }
}

/// The open scope a body belongs to, for the "unterminated" message.
struct Open {
    label: String,
    line: u32,
}

fn describe(token: Option<&Token>) -> String {
    match token {
        Some(token) => token.kind.describe(),
        None => "end of file".into(),
    }
}

fn as_word(token: &Token) -> Option<Word> {
    match &token.kind {
        TokenKind::Word(text) => Some(Word {
            text: text.clone(),
            quoted: false,
            line: token.line,
        }),
        TokenKind::Quoted(text) => Some(Word {
            text: text.clone(),
            quoted: true,
            line: token.line,
        }),
        _ => None,
    }
}

impl Reader {
    fn error(&self, file: FileId, line: u32, kind: ConfigErrorKind) -> ConfigError {
        ConfigError {
            file: self.files[file].clone(),
            line,
            kind,
        }
    }

    fn read_text(
        &mut self,
        text: &str,
        path: PathBuf,
        identity: PathBuf,
        scope_depth: usize,
    ) -> Result<Vec<Item>, ConfigError> {
        let file = self.files.len();
        self.files.push(path);
        if text.len() as u64 > CONFIG_FILE_BYTES_MAX {
            let kind = ConfigErrorKind::FileTooLarge {
                max_bytes: CONFIG_FILE_BYTES_MAX,
            };
            return Err(self.error(file, 0, kind));
        }
        let tokens = tokenize(text).map_err(|(line, kind)| self.error(file, line, kind))?;
        self.reading.push(identity);
        let mut cursor = Cursor {
            tokens,
            position: 0,
        };
        let items = self.parse_body(&mut cursor, file, None, scope_depth)?;
        self.reading.pop();
        Ok(items)
    }

    fn parse_body(
        &mut self,
        cursor: &mut Cursor,
        file: FileId,
        open: Option<Open>,
        scope_depth: usize,
    ) -> Result<Vec<Item>, ConfigError> {
        let mut items = Vec::new();
        loop {
            let Some(token) = cursor.next() else {
                return match open {
                    None => Ok(items),
                    Some(open) => Err(self.error(
                        file,
                        open.line,
                        ConfigErrorKind::UnterminatedScope { scope: open.label },
                    )),
                };
            };
            let line = token.line;
            let word = match token.kind {
                TokenKind::CloseBrace if open.is_some() => return Ok(items),
                TokenKind::Word(word) => word,
                other => {
                    let kind = ConfigErrorKind::UnexpectedToken {
                        found: other.describe(),
                        expected: "an option name or a scope keyword",
                    };
                    return Err(self.error(file, line, kind));
                }
            };
            if word.eq_ignore_ascii_case("include") || word.eq_ignore_ascii_case("readonly_include")
            {
                let token = cursor.next();
                let Some(path) = token.as_ref().and_then(as_word) else {
                    let kind = ConfigErrorKind::UnexpectedToken {
                        found: describe(token.as_ref()),
                        expected: "a file or directory path after `include`",
                    };
                    return Err(self.error(file, line, kind));
                };
                items.extend(self.include(file, &path, scope_depth)?);
            } else if let Some(keyword) = Keyword::from_word(&word) {
                items.push(Item::Stanza(self.parse_stanza(
                    cursor,
                    file,
                    line,
                    keyword,
                    word,
                    scope_depth,
                )?));
            } else {
                let next_is_brace = |ahead: usize, cursor: &Cursor| matches!(cursor.peek(ahead), Some(t) if t.kind == TokenKind::OpenBrace);
                match cursor.peek(0).map(|t| &t.kind) {
                    Some(TokenKind::Equals) => {
                        cursor.next();
                        let value = self.parse_value(cursor, file, line, &word)?;
                        items.push(Item::Setting {
                            file,
                            line,
                            name: word,
                            value,
                        });
                    }
                    Some(TokenKind::OpenBrace) => {
                        return Err(self.error(
                            file,
                            line,
                            ConfigErrorKind::UnknownScope { keyword: word },
                        ));
                    }
                    Some(TokenKind::Word(_) | TokenKind::Quoted(_)) if next_is_brace(1, cursor) => {
                        return Err(self.error(
                            file,
                            line,
                            ConfigErrorKind::UnknownScope { keyword: word },
                        ));
                    }
                    _ => {
                        let kind = ConfigErrorKind::MissingEquals {
                            option: word,
                            found: describe(cursor.peek(0)),
                        };
                        return Err(self.error(file, line, kind));
                    }
                }
            }
        }
    }

    fn parse_stanza(
        &mut self,
        cursor: &mut Cursor,
        file: FileId,
        line: u32,
        keyword: Keyword,
        keyword_text: String,
        scope_depth: usize,
    ) -> Result<Stanza, ConfigError> {
        if scope_depth >= SCOPE_DEPTH_MAX {
            let kind = ConfigErrorKind::ScopesTooDeep {
                max_depth: SCOPE_DEPTH_MAX,
            };
            return Err(self.error(file, line, kind));
        }
        let name = cursor.peek(0).and_then(as_word);
        if name.is_some() {
            cursor.next();
        }
        match cursor.next() {
            Some(Token {
                kind: TokenKind::OpenBrace,
                ..
            }) => {}
            other => {
                let expected = if name.is_some() {
                    "`{`"
                } else {
                    "a scope name or `{`"
                };
                let kind = ConfigErrorKind::UnexpectedToken {
                    found: describe(other.as_ref()),
                    expected,
                };
                let blamed = other.map_or(line, |t| t.line);
                return Err(self.error(file, blamed, kind));
            }
        }
        let label = match &name {
            Some(name) => format!("{keyword_text} \"{}\"", name.text),
            None => keyword_text.clone(),
        };
        let open = Open { label, line };
        let items = self.parse_body(cursor, file, Some(open), scope_depth + 1)?;
        Ok(Stanza {
            file,
            line,
            keyword,
            keyword_text,
            name,
            items,
        })
    }

    fn parse_value(
        &mut self,
        cursor: &mut Cursor,
        file: FileId,
        line: u32,
        option: &str,
    ) -> Result<Value, ConfigError> {
        let token = cursor.next();
        if let Some(word) = token.as_ref().and_then(as_word) {
            return Ok(Value::Scalar(word));
        }
        match token {
            Some(Token {
                kind: TokenKind::OpenParen,
                ..
            }) => {}
            other => {
                let kind = ConfigErrorKind::UnexpectedToken {
                    found: describe(other.as_ref()),
                    expected: "a value after `=`",
                };
                return Err(self.error(file, other.map_or(line, |t| t.line), kind));
            }
        }
        let mut list = Vec::new();
        loop {
            let token = cursor.next();
            if let Some(word) = token.as_ref().and_then(as_word) {
                list.push(word);
                continue;
            }
            match token {
                Some(Token {
                    kind: TokenKind::CloseParen,
                    ..
                }) => return Ok(Value::List(list)),
                None => {
                    let kind = ConfigErrorKind::UnterminatedList {
                        option: option.to_string(),
                    };
                    return Err(self.error(file, line, kind));
                }
                Some(other) => {
                    let kind = ConfigErrorKind::UnexpectedToken {
                        found: other.kind.describe(),
                        expected: "a list item or `)`",
                    };
                    return Err(self.error(file, other.line, kind));
                }
            }
        }
    }

    /// Reads the file or directory named by an `include` in `file` and
    /// returns its items, to be spliced where the include stood.
    fn include(
        &mut self,
        file: FileId,
        path: &Word,
        scope_depth: usize,
    ) -> Result<Vec<Item>, ConfigError> {
        if self.reading.len() >= INCLUDE_DEPTH_MAX {
            let kind = ConfigErrorKind::IncludesTooDeep {
                max_depth: INCLUDE_DEPTH_MAX,
            };
            return Err(self.error(file, path.line, kind));
        }
        let base = self.files[file]
            .parent()
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let resolved = base.join(&path.text);
        let metadata = match fs::metadata(&resolved) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let kind = ConfigErrorKind::IncludeNotFound {
                    path: path.text.clone(),
                    resolved: resolved.display().to_string(),
                };
                return Err(self.error(file, path.line, kind));
            }
            Err(error) => return Err(self.unreadable(file, path, &error)),
        };
        let targets = if metadata.is_dir() {
            let entries = fs::read_dir(&resolved).map_err(|e| self.unreadable(file, path, &e))?;
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| self.unreadable(file, path, &e))?;
                let name = entry.file_name();
                let hidden = name.to_string_lossy().starts_with('.');
                let is_file = fs::metadata(entry.path())
                    .map(|m| m.is_file())
                    .unwrap_or(false);
                if !hidden && is_file {
                    names.push(name);
                }
            }
            names.sort();
            names.into_iter().map(|name| resolved.join(name)).collect()
        } else {
            vec![resolved]
        };
        let mut items = Vec::new();
        for target in targets {
            let identity =
                fs::canonicalize(&target).map_err(|e| self.unreadable(file, path, &e))?;
            if self.reading.contains(&identity) {
                let kind = ConfigErrorKind::IncludeCycle {
                    path: target.display().to_string(),
                };
                return Err(self.error(file, path.line, kind));
            }
            let size = fs::metadata(&target)
                .map_err(|e| self.unreadable(file, path, &e))?
                .len();
            if size > CONFIG_FILE_BYTES_MAX {
                let kind = ConfigErrorKind::FileTooLarge {
                    max_bytes: CONFIG_FILE_BYTES_MAX,
                };
                return Err(self.error(file, path.line, kind));
            }
            let text = fs::read_to_string(&target).map_err(|e| self.unreadable(file, path, &e))?;
            items.extend(self.read_text(&text, target, identity, scope_depth)?);
        }
        Ok(items)
    }

    fn unreadable(&self, file: FileId, path: &Word, error: &std::io::Error) -> ConfigError {
        let kind = ConfigErrorKind::IncludeUnreadable {
            path: path.text.clone(),
            reason: error.to_string(),
        };
        self.error(file, path.line, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Item>, String> {
        parse_tree(text, Path::new("t.conf"))
            .map(|t| t.items)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn settings_lists_and_named_and_unnamed_stanzas_parse() {
        let items = parse(
            "a = 1\nb = ( \"x\" y )\nDOMAIN \"d\" { c = z }\nESMTP_Listener { Listen :25 { } }",
        )
        .unwrap();
        assert_eq!(items.len(), 4);
        match &items[1] {
            Item::Setting {
                name,
                value: Value::List(list),
                line: 2,
                ..
            } => {
                assert_eq!(name, "b");
                assert_eq!(list.len(), 2);
                assert!(list[0].quoted && !list[1].quoted);
            }
            other => panic!("{other:?}"),
        }
        match &items[2] {
            Item::Stanza(stanza) => {
                assert_eq!(stanza.keyword, Keyword::Domain);
                assert_eq!(stanza.name.as_ref().unwrap().text, "d");
                assert_eq!(stanza.items.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unterminated_scope_blames_the_line_that_opened_it() {
        assert_eq!(
            parse("a = 1\ndomain \"d\" {\n  b = 2\n").unwrap_err(),
            "t.conf:2: unterminated scope `domain \"d\"`: `{` without `}`"
        );
    }

    #[test]
    fn unterminated_list_blames_the_option() {
        assert_eq!(
            parse("\nrelay_hosts = ( \"a\"\n\"b\"\n").unwrap_err(),
            "t.conf:2: unterminated list for `relay_hosts`: `(` without `)`"
        );
    }

    #[test]
    fn stray_tokens_are_unexpected() {
        assert_eq!(
            parse("a = 1\n}\n").unwrap_err(),
            "t.conf:2: unexpected `}`, expected an option name or a scope keyword"
        );
        assert_eq!(
            parse("a = 1;\n").unwrap_err(),
            "t.conf:1: unexpected `;` (ecelerity.conf has no statement separator), \
             expected an option name or a scope keyword"
        );
        assert_eq!(
            parse("a =\n").unwrap_err(),
            "t.conf:1: unexpected end of file, expected a value after `=`"
        );
        assert_eq!(
            parse("a = ( b { )").unwrap_err(),
            "t.conf:1: unexpected `{`, expected a list item or `)`"
        );
        assert_eq!(
            parse("\ndomain \"d\" = 3").unwrap_err(),
            "t.conf:2: unexpected `=`, expected `{`"
        );
    }

    #[test]
    fn missing_equals_names_the_option() {
        assert_eq!(
            parse("x = 1\nmax_retries 5\n").unwrap_err(),
            "t.conf:2: missing `=` after option `max_retries` (found `5`)"
        );
    }

    #[test]
    fn unknown_scope_keywords_are_named() {
        assert_eq!(
            parse("\n\nThreadPool \"IO\" { Concurrency = 5 }").unwrap_err(),
            "t.conf:3: unknown scope keyword `ThreadPool`"
        );
        assert_eq!(
            parse("pathway { }").unwrap_err(),
            "t.conf:1: unknown scope keyword `pathway`"
        );
    }

    #[test]
    fn hostile_nesting_stops_at_the_depth_limit() {
        let text = "domain d { ".repeat(1000);
        assert_eq!(
            parse(&text).unwrap_err(),
            "t.conf:1: scopes nested deeper than 8"
        );
    }
}
