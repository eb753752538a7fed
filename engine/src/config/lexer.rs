//! Lexer for ecelerity.conf: turns one file's text into tokens, each with
//! the line it starts on.
//! Owns: comment skipping (`#` to end of line, `/* */` without nesting),
//! double-quoted strings with `\"` and `\\` escapes, bare-word boundaries.
//! May call: `error` only.
//! Never: file I/O, includes, scope or option meaning (that is `parse` and
//! `model`).
//!
//! A bare word runs until whitespace, one of `" = # { } ( ) ;`, or the start
//! of a `/*` comment, so `10.0.0.0/8`, `[::1]:25` and `example.com` need no
//! quotes. A string may not span lines: a missing `"` is reported on the
//! line it opened, not at the end of the file. A backslash before anything
//! but `"` or `\` is kept as written.

use super::error::ConfigErrorKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TokenKind {
    /// Unquoted text: a name, keyword, number or value.
    Word(String),
    /// Double-quoted text with escapes resolved.
    Quoted(String),
    Equals,
    OpenBrace,
    CloseBrace,
    OpenParen,
    CloseParen,
    /// Not part of the syntax; lexed so the parser can say so plainly.
    Semicolon,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    pub(super) kind: TokenKind,
    /// 1-based line the token starts on.
    pub(super) line: u32,
}

impl TokenKind {
    /// How a token is named in "unexpected ..." messages.
    pub(super) fn describe(&self) -> String {
        match self {
            TokenKind::Word(word) => format!("`{word}`"),
            TokenKind::Quoted(text) => format!("\"{text}\""),
            TokenKind::Equals => "`=`".into(),
            TokenKind::OpenBrace => "`{`".into(),
            TokenKind::CloseBrace => "`}`".into(),
            TokenKind::OpenParen => "`(`".into(),
            TokenKind::CloseParen => "`)`".into(),
            TokenKind::Semicolon => "`;` (ecelerity.conf has no statement separator)".into(),
        }
    }
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

fn ends_word(byte: u8) -> bool {
    is_space(byte) || matches!(byte, b'"' | b'=' | b'#' | b'{' | b'}' | b'(' | b')' | b';')
}

/// Splits `text` into tokens. On error returns the line to blame and what
/// is wrong; the caller adds the file name.
pub(super) fn tokenize(text: &str) -> Result<Vec<Token>, (u32, ConfigErrorKind)> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut line: u32 = 1;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let single = match byte {
            b'=' => Some(TokenKind::Equals),
            b'{' => Some(TokenKind::OpenBrace),
            b'}' => Some(TokenKind::CloseBrace),
            b'(' => Some(TokenKind::OpenParen),
            b')' => Some(TokenKind::CloseParen),
            b';' => Some(TokenKind::Semicolon),
            _ => None,
        };
        if let Some(kind) = single {
            tokens.push(Token { kind, line });
            i += 1;
        } else if byte == b'\n' {
            line = line.saturating_add(1);
            i += 1;
        } else if is_space(byte) {
            i += 1;
        } else if byte == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if byte == b'/' && bytes.get(i + 1) == Some(&b'*') {
            let opened_line = line;
            i += 2;
            let mut closed = false;
            while i < bytes.len() {
                if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                    i += 2;
                    closed = true;
                    break;
                }
                if bytes[i] == b'\n' {
                    line = line.saturating_add(1);
                }
                i += 1;
            }
            if !closed {
                return Err((opened_line, ConfigErrorKind::UnterminatedComment));
            }
        } else if byte == b'"' {
            i += 1;
            let mut value = String::new();
            let mut run_start = i;
            loop {
                match bytes.get(i) {
                    None | Some(b'\n') => {
                        return Err((line, ConfigErrorKind::UnterminatedString));
                    }
                    Some(b'"') => {
                        value.push_str(&text[run_start..i]);
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        value.push_str(&text[run_start..i]);
                        match bytes.get(i + 1) {
                            Some(b'"') => {
                                value.push('"');
                                i += 2;
                            }
                            Some(b'\\') => {
                                value.push('\\');
                                i += 2;
                            }
                            _ => {
                                value.push('\\');
                                i += 1;
                            }
                        }
                        run_start = i;
                    }
                    Some(_) => i += 1,
                }
            }
            tokens.push(Token {
                kind: TokenKind::Quoted(value),
                line,
            });
        } else {
            let start = i;
            while i < bytes.len() {
                let b = bytes[i];
                if ends_word(b) || (b == b'/' && bytes.get(i + 1) == Some(&b'*')) {
                    break;
                }
                i += 1;
            }
            // The first byte is neither a delimiter nor the start of a
            // comment, so the word is never empty; all delimiters are ASCII,
            // so the slice falls on character boundaries.
            assert!(i > start);
            tokens.push(Token {
                kind: TokenKind::Word(text[start..i].to_string()),
                line,
            });
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<TokenKind> {
        tokenize(text)
            .unwrap()
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    fn word(text: &str) -> TokenKind {
        TokenKind::Word(text.into())
    }

    #[test]
    fn bare_words_keep_slashes_colons_and_brackets() {
        assert_eq!(
            kinds("relay_hosts = ( 10.0.0.0/8 [::1]:25 )"),
            vec![
                word("relay_hosts"),
                TokenKind::Equals,
                TokenKind::OpenParen,
                word("10.0.0.0/8"),
                word("[::1]:25"),
                TokenKind::CloseParen
            ]
        );
    }

    #[test]
    fn delimiters_end_words_without_spaces() {
        assert_eq!(
            kinds("a=b{c}"),
            vec![
                word("a"),
                TokenKind::Equals,
                word("b"),
                TokenKind::OpenBrace,
                word("c"),
                TokenKind::CloseBrace
            ]
        );
    }

    #[test]
    fn both_comment_kinds_are_skipped_and_lines_still_count() {
        let tokens = tokenize("a # one\n/* two\nthree */ b/* x */c\n#end").unwrap();
        let seen: Vec<(TokenKind, u32)> = tokens.into_iter().map(|t| (t.kind, t.line)).collect();
        assert_eq!(seen, vec![(word("a"), 1), (word("b"), 3), (word("c"), 3)]);
    }

    #[test]
    fn comments_do_not_nest() {
        assert_eq!(kinds("/* /* */ a"), vec![word("a")]);
    }

    #[test]
    fn string_escapes_resolve_quote_and_backslash_and_keep_others() {
        assert_eq!(
            kinds(r#""say \"hi\" \\ \n ünï""#),
            vec![TokenKind::Quoted(r#"say "hi" \ \n ünï"#.into())]
        );
    }

    #[test]
    fn hash_inside_a_string_is_not_a_comment() {
        assert_eq!(kinds("\"a # b\""), vec![TokenKind::Quoted("a # b".into())]);
    }

    #[test]
    fn unterminated_string_blames_its_own_line() {
        assert_eq!(
            tokenize("a = 1\nb = \"oops\nc = 2\n"),
            Err((2, ConfigErrorKind::UnterminatedString))
        );
        assert_eq!(
            tokenize("b = \"oops"),
            Err((1, ConfigErrorKind::UnterminatedString))
        );
    }

    #[test]
    fn unterminated_comment_blames_the_line_it_opened() {
        assert_eq!(
            tokenize("a\n\n/* never\nclosed\n"),
            Err((3, ConfigErrorKind::UnterminatedComment))
        );
        assert_eq!(
            tokenize("/*/"),
            Err((1, ConfigErrorKind::UnterminatedComment))
        );
    }

    #[test]
    fn any_bytes_lex_or_fail_without_panicking() {
        // Goal: the lexer never panics. Method: every short string over an
        // alphabet of the delimiters, quotes, escapes and a multibyte char.
        let alphabet = ["\"", "\\", "/", "*", "#", "\n", "a", "é", "{", "=", " "];
        let mut stack = vec![String::new()];
        while let Some(text) = stack.pop() {
            let _ = tokenize(&text);
            if text.chars().count() < 5 {
                for piece in alphabet {
                    stack.push(format!("{text}{piece}"));
                }
            }
        }
    }
}
