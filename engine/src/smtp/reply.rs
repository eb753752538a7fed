//! Incremental parser for SMTP replies (RFC 5321 section 4.2), as the
//! outbound client reads them: "250-first\r\n250 last\r\n", fed in any split.
//! Enhanced status codes (RFC 2034, RFC 3463) are lifted off the text.
//!
//! Owns: the bytes read from a server that do not yet form a whole reply.
//! Bounded: a line longer than `REPLY_LINE_BYTES_MAX` keeps its code and
//! the start of its text, and the rest up to its line end is read and
//! dropped; lines of one reply past `REPLY_LINES_MAX` are read and dropped
//! too (as Postfix does: a long 250 after the body still means the message
//! was taken). Only input that is not a reply fails the parser, for good.
//! May call: std only. Never: I/O, clocks, the client's state (that is
//! `client`).

use std::fmt;
use std::fmt::Write as _;

/// Longest reply line kept whole, CRLF included. RFC 5321 says 512; real
/// servers send longer text. A longer line is truncated to its first
/// `REPLY_LINE_BYTES_MAX - 2` bytes, never refused: refusing a long 250
/// after the body would re-send a message the server took.
pub const REPLY_LINE_BYTES_MAX: usize = 2048;
/// Most lines kept of one multiline reply; later lines are read and
/// dropped. EHLO replies are the longest seen in practice, at some 20 lines.
pub const REPLY_LINES_MAX: usize = 128;
/// Most bytes of bad input quoted in an error, so a hostile server cannot
/// fill our logs.
pub const REPLY_ERROR_QUOTE_BYTES_MAX: usize = 64;

const _: () = assert!(REPLY_LINE_BYTES_MAX >= 512);
const _: () = assert!(REPLY_LINES_MAX >= 1);

/// One complete SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code, always in 200..=599.
    pub code: u16,
    /// Enhanced status code of the first line, when it carries one whose
    /// class agrees with `code`. It is removed from every line that repeats
    /// it.
    pub enhanced: Option<EnhancedCode>,
    /// Text of each line, without code, separator and enhanced code.
    /// Control characters are replaced by spaces so the text is safe to
    /// log. Never empty.
    pub lines: Vec<String>,
}

impl Reply {
    /// A reply made by this client, not read from a server (for a timeout,
    /// a protocol error, an address we refuse to send).
    pub fn synthetic(code: u16, enhanced: EnhancedCode, text: String) -> Reply {
        assert!((200..=599).contains(&code));
        assert_eq!(u16::from(enhanced.class), code / 100);
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text],
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx: go ahead (354 to DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The reply on one line for logs: "550 5.1.1 no such user".
    pub fn text(&self) -> String {
        let text_bytes: usize = self.lines.iter().map(|line| line.len() + 1).sum();
        let mut text = String::with_capacity(16 + text_bytes);
        let _ = write!(text, "{}", self.code);
        if let Some(enhanced) = self.enhanced {
            let _ = write!(text, " {enhanced}");
        }
        for line in self.lines.iter().filter(|line| !line.is_empty()) {
            text.push(' ');
            text.push_str(line);
        }
        text
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// RFC 3463 enhanced status code, "class.subject.detail".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2, 4 or 5.
    pub class: u8,
    /// 0..=999.
    pub subject: u16,
    /// 0..=999.
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedCode {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }

    /// Parses "x.y.z" at the start of `text`, followed by a space or the
    /// end. Returns the code and the number of bytes it took, space included.
    fn parse_prefix(text: &[u8]) -> Option<(EnhancedCode, usize)> {
        const FIELD_DIGITS_MAX: usize = 3;
        let class = *text.first()?;
        if !matches!(class, b'2' | b'4' | b'5') || text.get(1) != Some(&b'.') {
            return None;
        }
        let mut position = 2;
        let mut fields = [0u16; 2];
        for (index, field) in fields.iter_mut().enumerate() {
            let digits = text[position..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits == 0 || digits > FIELD_DIGITS_MAX {
                return None;
            }
            for &digit in &text[position..position + digits] {
                *field = *field * 10 + u16::from(digit - b'0');
            }
            position += digits;
            if index == 0 {
                if text.get(position) != Some(&b'.') {
                    return None;
                }
                position += 1;
            }
        }
        match text.get(position) {
            None => {}
            Some(b' ') => position += 1,
            Some(_) => return None,
        }
        Some((
            EnhancedCode::new(class - b'0', fields[0], fields[1]),
            position,
        ))
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Why the bytes from a server are not a reply. The parser stays failed:
/// the connection can no longer be trusted to be in step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line does not start with a code in 200..=599: `{line}`")]
    BadCode { line: String },
    #[error("reply line has code {got} inside a reply with code {expected}")]
    InconsistentCode { expected: u16, got: u16 },
    #[error("reply code not followed by space or hyphen: `{line}`")]
    BadSeparator { line: String },
}

/// Reads replies from bytes fed in any split. Feed what the socket gives,
/// then call `next_reply` until it returns `Ok(None)`.
#[derive(Debug)]
pub struct ReplyParser {
    /// Bytes received; `buffer[consumed..]` are not yet parsed. Once the
    /// caller has drained every reply, fewer than REPLY_LINE_BYTES_MAX
    /// bytes remain.
    buffer: Vec<u8>,
    /// Bytes of `buffer` already parsed. Never above `buffer.len()`.
    consumed: usize,
    /// Bytes after `consumed` already searched for LF and found without
    /// one, so feeding a long line byte by byte stays linear.
    searched: usize,
    /// Code of the reply being read; 0 between replies.
    code: u16,
    /// Enhanced code of the first line of the reply being read.
    enhanced: Option<EnhancedCode>,
    /// Lines of the reply being read. Never more than REPLY_LINES_MAX.
    lines: Vec<String>,
    /// Inside a line longer than REPLY_LINE_BYTES_MAX whose start was
    /// taken: bytes up to its LF are dropped.
    skipping_line: bool,
    /// A reply whose last line was over-long, returned once that line's
    /// LF has been read (so its tail is not taken for the next reply).
    held: Option<Reply>,
    /// Set on the first error; every later call returns it.
    failed: Option<ReplyError>,
}

impl Default for ReplyParser {
    fn default() -> Self {
        ReplyParser::new()
    }
}

impl ReplyParser {
    pub fn new() -> ReplyParser {
        ReplyParser {
            buffer: Vec::with_capacity(REPLY_LINE_BYTES_MAX),
            consumed: 0,
            searched: 0,
            code: 0,
            enhanced: None,
            lines: Vec::new(),
            skipping_line: false,
            held: None,
            failed: None,
        }
    }

    /// Adds bytes read from the server. After a failure, input is dropped.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.consumed > 0 {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete reply, `Ok(None)` when more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        match self.parse() {
            Ok(reply) => Ok(reply),
            Err(error) => {
                self.failed = Some(error.clone());
                self.buffer = Vec::new();
                self.consumed = 0;
                self.searched = 0;
                self.lines = Vec::new();
                self.held = None;
                Err(error)
            }
        }
    }

    /// Bytes received and not yet part of a returned reply or line.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.consumed
    }

    /// True once the parser has failed; it then accepts nothing more.
    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    fn parse(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let pending = &self.buffer[self.consumed..];
            if self.skipping_line {
                let Some(lf) = pending.iter().position(|&b| b == b'\n') else {
                    self.consumed = self.buffer.len();
                    return Ok(None);
                };
                self.consumed += lf + 1;
                self.skipping_line = false;
                if let Some(reply) = self.held.take() {
                    return Ok(Some(reply));
                }
                continue;
            }
            let window = &pending[..pending.len().min(REPLY_LINE_BYTES_MAX)];
            let Some(lf) = window[self.searched..].iter().position(|&b| b == b'\n') else {
                if pending.len() < REPLY_LINE_BYTES_MAX {
                    self.searched = window.len();
                    return Ok(None);
                }
                // Over-long: take its start as the line, drop the rest.
                self.searched = 0;
                let start = self.consumed;
                let end = start + REPLY_LINE_BYTES_MAX - 2;
                self.consumed += REPLY_LINE_BYTES_MAX;
                self.skipping_line = true;
                self.held = self.parse_line(start, end)?;
                continue;
            };
            let lf = self.searched + lf;
            self.searched = 0;
            let start = self.consumed;
            self.consumed += lf + 1;
            let mut end = start + lf;
            if end > start && self.buffer[end - 1] == b'\r' {
                end -= 1;
            }
            if let Some(reply) = self.parse_line(start, end)? {
                return Ok(Some(reply));
            }
        }
    }

    /// Takes one line, `buffer[start..end]` without its line ending.
    /// Returns the reply when this line was its last.
    fn parse_line(&mut self, start: usize, end: usize) -> Result<Option<Reply>, ReplyError> {
        let line = &self.buffer[start..end];
        let code = parse_code(line).ok_or_else(|| ReplyError::BadCode { line: quote(line) })?;
        let is_last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(ReplyError::BadSeparator { line: quote(line) }),
        };
        let mut text = line.get(4..).unwrap_or(&[]);
        if self.code == 0 {
            assert!(self.lines.is_empty());
            self.code = code;
            self.enhanced = EnhancedCode::parse_prefix(text)
                .filter(|(enhanced, _)| u16::from(enhanced.class) == code / 100)
                .map(|(enhanced, _)| enhanced);
        } else if code != self.code {
            return Err(ReplyError::InconsistentCode {
                expected: self.code,
                got: code,
            });
        }
        if self.lines.len() < REPLY_LINES_MAX {
            if let Some(enhanced) = self.enhanced {
                if let Some((found, taken)) = EnhancedCode::parse_prefix(text) {
                    if found == enhanced {
                        text = &text[taken..];
                    }
                }
            }
            self.lines.push(printable(text));
        }
        if !is_last {
            return Ok(None);
        }
        let reply = Reply {
            code: self.code,
            enhanced: self.enhanced.take(),
            lines: std::mem::take(&mut self.lines),
        };
        self.code = 0;
        Ok(Some(reply))
    }
}

/// The code of a reply line: three digits, the first 2 to 5.
fn parse_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u16, |code, &digit| code * 10 + u16::from(digit - b'0')),
    )
}

/// Reply text as a string safe to log: invalid UTF-8 replaced, control
/// characters (tab aside) turned into spaces.
fn printable(text: &[u8]) -> String {
    let mut string = String::from_utf8_lossy(text).into_owned();
    if string
        .bytes()
        .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        string = string
            .chars()
            .map(|c| {
                if c.is_ascii_control() && c != '\t' {
                    ' '
                } else {
                    c
                }
            })
            .collect();
    }
    string
}

/// Bad input quoted in an error, cut to REPLY_ERROR_QUOTE_BYTES_MAX.
fn quote(line: &[u8]) -> String {
    printable(&line[..line.len().min(REPLY_ERROR_QUOTE_BYTES_MAX)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `split` bytes and collects every reply.
    fn parse_all(input: &[u8], split: usize) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::new();
        let mut replies = Vec::new();
        for chunk in input.chunks(split.max(1)) {
            parser.feed(chunk);
            while let Some(reply) = parser.next_reply()? {
                replies.push(reply);
            }
        }
        Ok(replies)
    }

    fn one(input: &str) -> Result<Reply, ReplyError> {
        let mut replies = parse_all(input.as_bytes(), input.len())?;
        assert_eq!(replies.len(), 1, "{input:?}");
        Ok(replies.remove(0))
    }

    #[test]
    fn single_line_reply_yields_code_and_text() {
        let reply = one("250 ok queued\r\n").unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.lines, vec!["ok queued".to_string()]);
        assert!(reply.is_positive() && !reply.is_transient() && !reply.is_permanent());
        assert_eq!(reply.text(), "250 ok queued");
    }

    #[test]
    fn enhanced_code_is_lifted_from_every_line_and_shown_once() {
        let reply = one("550-5.1.1 no such\r\n550 5.1.1 user here\r\n").unwrap();
        assert_eq!(reply.enhanced, Some(EnhancedCode::new(5, 1, 1)));
        assert_eq!(
            reply.lines,
            vec!["no such".to_string(), "user here".to_string()]
        );
        assert_eq!(reply.text(), "550 5.1.1 no such user here");
        assert!(reply.is_permanent());
        assert_eq!(EnhancedCode::new(4, 7, 100).to_string(), "4.7.100");
    }

    #[test]
    fn enhanced_code_of_the_wrong_class_or_shape_stays_text() {
        assert_eq!(one("250 5.1.1 odd\r\n").unwrap().enhanced, None);
        assert_eq!(one("451 4.3.2x busy\r\n").unwrap().enhanced, None);
        assert_eq!(one("451 4.3 busy\r\n").unwrap().enhanced, None);
        assert_eq!(one("451 4.3.2222 busy\r\n").unwrap().enhanced, None);
        let bare = one("451 4.3.2\r\n").unwrap();
        assert_eq!(bare.enhanced, Some(EnhancedCode::new(4, 3, 2)));
        assert_eq!(bare.text(), "451 4.3.2");
    }

    #[test]
    fn multiline_reply_is_returned_only_after_its_last_line() {
        let mut parser = ReplyParser::new();
        parser.feed(b"250-mx.example.com\r\n250-PIPELINING\r\n");
        assert_eq!(parser.next_reply(), Ok(None));
        parser.feed(b"250 SIZE 1000\r\n354 go");
        let reply = parser.next_reply().unwrap().unwrap();
        assert_eq!(
            reply.lines,
            vec!["mx.example.com", "PIPELINING", "SIZE 1000"]
        );
        assert_eq!(parser.next_reply(), Ok(None));
        assert_eq!(parser.buffered_bytes(), 6);
        parser.feed(b"\n");
        assert_eq!(parser.next_reply().unwrap().unwrap().code, 354);
    }

    #[test]
    fn every_split_of_the_input_gives_the_same_replies() {
        let input = b"220 mx ESMTP\r\n250-a\r\n250-5.0.0 b\r\n250 c\n421 4.3.2 bye\r\n354\r\n";
        let whole = parse_all(input, input.len()).unwrap();
        assert_eq!(whole.len(), 4);
        for split in 1..input.len() {
            assert_eq!(parse_all(input, split).unwrap(), whole, "split {split}");
        }
        for cut in 0..input.len() {
            let mut parser = ReplyParser::new();
            let mut replies = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                parser.feed(part);
                while let Some(reply) = parser.next_reply().unwrap() {
                    replies.push(reply);
                }
            }
            assert_eq!(replies, whole, "cut {cut}");
        }
    }

    #[test]
    fn bare_lf_ends_a_line_and_code_alone_is_a_reply() {
        let reply = one("250\n").unwrap();
        assert_eq!(reply.lines, vec![String::new()]);
        assert_eq!(reply.text(), "250");
    }

    #[test]
    fn control_characters_in_text_become_spaces() {
        let reply = one("250 a\rb\x00c\td\r\n").unwrap();
        assert_eq!(reply.lines, vec!["a b c\td".to_string()]);
        let invalid = parse_all(b"250 caf\xff\r\n", 64).unwrap();
        assert_eq!(invalid[0].lines, vec!["caf\u{fffd}".to_string()]);
    }

    #[test]
    fn bad_codes_are_rejected() {
        for input in [
            "25\r\n",
            "abc ok\r\n",
            "150 ok\r\n",
            "650 ok\r\n",
            "2a0 ok\r\n",
            "\r\n",
        ] {
            assert!(
                matches!(one(input), Err(ReplyError::BadCode { .. })),
                "{input:?}"
            );
        }
    }

    #[test]
    fn bad_separator_is_rejected() {
        assert!(matches!(
            one("250_ok\r\n"),
            Err(ReplyError::BadSeparator { .. })
        ));
        assert!(matches!(
            one("2500 ok\r\n"),
            Err(ReplyError::BadSeparator { .. })
        ));
    }

    #[test]
    fn a_code_change_inside_a_multiline_reply_is_rejected() {
        assert_eq!(
            one("250-a\r\n251 b\r\n"),
            Err(ReplyError::InconsistentCode {
                expected: 250,
                got: 251
            })
        );
    }

    #[test]
    fn a_line_over_the_limit_is_truncated_and_read_to_its_end() {
        let mut fits = b"250 ".to_vec();
        fits.resize(REPLY_LINE_BYTES_MAX - 2, b'x');
        fits.extend_from_slice(b"\r\n");
        let whole = parse_all(&fits, 100).unwrap();
        assert_eq!(whole[0].lines[0].len(), REPLY_LINE_BYTES_MAX - 6);

        // A 5 KB 250 after the body, then the next reply: the first keeps
        // its code and the start of its text, the second is intact.
        let mut long = b"250 2.0.0 queued ".to_vec();
        long.resize(5000, b'y');
        long.extend_from_slice(b"\r\n221 2.0.0 bye\r\n");
        for split in [1, 7, 100, 2048, 2049, long.len()] {
            let replies = parse_all(&long, split).unwrap();
            assert_eq!(replies.len(), 2, "split {split}");
            assert_eq!(replies[0].code, 250);
            assert_eq!(replies[0].enhanced, Some(EnhancedCode::new(2, 0, 0)));
            let text = &replies[0].lines[0];
            assert!(text.starts_with("queued yyy"), "{text:.40}");
            assert_eq!(text.len(), REPLY_LINE_BYTES_MAX - 2 - "250 2.0.0 ".len());
            assert_eq!(replies[1].text(), "221 2.0.0 bye");
        }

        // Over-long continuation lines too; the reply ends with its last line.
        let mut multi = format!("250-{}\r\n", "a".repeat(3 * REPLY_LINE_BYTES_MAX)).into_bytes();
        multi.extend_from_slice(b"250 ok\r\n");
        let replies = parse_all(&multi, 333).unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].lines.len(), 2);
        assert_eq!(replies[0].lines[1], "ok");

        // A line with no end holds no more than the limit while it streams.
        let mut parser = ReplyParser::new();
        parser.feed(b"250 ");
        for _ in 0..100 {
            parser.feed(&[b'z'; 1000]);
            assert_eq!(parser.next_reply(), Ok(None));
            assert!(parser.buffered_bytes() < REPLY_LINE_BYTES_MAX);
        }
        parser.feed(b"\r\n");
        assert_eq!(parser.next_reply().unwrap().unwrap().code, 250);
        // Still a code is needed: a long line of garbage is an error.
        assert!(matches!(
            parse_all(&vec![b'2'; REPLY_LINE_BYTES_MAX], 7),
            Err(ReplyError::BadSeparator { .. })
        ));
    }

    #[test]
    fn lines_past_the_count_limit_are_dropped_not_refused() {
        let mut fits = "250-x\r\n".repeat(REPLY_LINES_MAX - 1);
        fits.push_str("250 x\r\n");
        assert_eq!(one(&fits).unwrap().lines.len(), REPLY_LINES_MAX);
        let mut long = "250-x\r\n".repeat(REPLY_LINES_MAX * 3);
        long.push_str("250 last\r\n354 next\r\n");
        let replies = parse_all(long.as_bytes(), 50).unwrap();
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].lines.len(), REPLY_LINES_MAX);
        assert_eq!(replies[1].code, 354);
    }

    #[test]
    fn a_failed_parser_stays_failed_and_drops_input() {
        let mut parser = ReplyParser::new();
        parser.feed(b"xyz\r\n");
        let error = parser.next_reply().unwrap_err();
        parser.feed(b"250 ok\r\n");
        assert_eq!(parser.next_reply(), Err(error));
        assert_eq!(parser.buffered_bytes(), 0);
        assert!(parser.has_failed());
    }

    #[test]
    fn error_quotes_are_cut_to_their_limit() {
        let line = format!("x{}\r\n", "y".repeat(500));
        let Err(ReplyError::BadCode { line }) = one(&line) else {
            panic!()
        };
        assert_eq!(line.len(), REPLY_ERROR_QUOTE_BYTES_MAX);
    }

    /// Goal: no input makes the parser panic or hold more than one line.
    /// Method: a seeded `Rng` draws bytes biased towards reply syntax,
    /// fed in random splits; after each drain the buffer is checked.
    #[test]
    fn random_input_never_panics_and_keeps_buffers_bounded() {
        const RUNS: u64 = 300;
        const BYTES_PER_RUN_MAX: u64 = 3000;
        const ALPHABET: &[u8] = b"0123456789 -.\r\n\r\n25045x\xff";
        let mut rng = ecelerity_testkit::Rng::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next_u64();
        for _ in 0..RUNS {
            let length = next() % BYTES_PER_RUN_MAX;
            let input: Vec<u8> = (0..length)
                .map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        r as u8
                    } else {
                        ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                    }
                })
                .collect();
            let mut parser = ReplyParser::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let take = (next() as usize % 40 + 1).min(rest.len());
                parser.feed(&rest[..take]);
                rest = &rest[take..];
                while let Ok(Some(reply)) = parser.next_reply() {
                    assert!((200..=599).contains(&reply.code));
                    assert!(!reply.lines.is_empty() && reply.lines.len() <= REPLY_LINES_MAX);
                }
                assert!(parser.buffered_bytes() < REPLY_LINE_BYTES_MAX);
                assert!(parser.lines.len() <= REPLY_LINES_MAX);
            }
        }
    }
}
