//! A message's header block as a scriptlet edits it (`msg:header`): the
//! fields in order, each kept as written (folding included) until a script
//! replaces it, so an untouched field reaches the wire byte for byte.
//!
//! Owns: splitting a message into header block and body, reading,
//! adding, replacing and deleting fields, rendering the block again.
//! May call: std only. Never: I/O, Lua.

/// Most header fields a script may hold in one message.
pub const HEADER_FIELDS_MAX: usize = 1000;
/// Longest header name or value a script may write, in bytes.
pub const HEADER_VALUE_BYTES_MAX: usize = 998;

/// Where the header block ends in `message`: the index just after the
/// blank line (CRLF CRLF), or `message.len()` when there is no blank line
/// (the whole text is headers, or the message starts with the body: a
/// leading CRLF gives 2).
pub fn head_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 2;
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(message.len())
}

/// One field as written: `Name: value\r\n` with continuation lines.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name_len: usize,
    raw: String,
}

impl Field {
    fn name(&self) -> &str {
        &self.raw[..self.name_len]
    }

    /// The value unfolded (CRLFs dropped), leading and trailing blanks off.
    fn value(&self) -> String {
        let value = &self.raw[self.name_len + 1..];
        value.replace("\r\n", "").trim().to_string()
    }
}

/// Where `msg:header(name, value, mode)` puts a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every field of that name goes; the new one takes the first's place
    /// (or the end).
    Replace,
    /// At the top of the block.
    Prepend,
    /// At the end of the block.
    Append,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Mode> {
        match text.to_ascii_lowercase().as_str() {
            "replace" => Some(Mode::Replace),
            "prepend" => Some(Mode::Prepend),
            "append" => Some(Mode::Append),
            _ => None,
        }
    }
}

/// The fields of a header block, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderBlock {
    fields: Vec<Field>,
}

impl HeaderBlock {
    /// Reads `head` (a header block, its blank line optional). Lines that
    /// are not fields (no colon) are kept with the field before them; a
    /// stray first continuation line becomes a field of its own.
    pub fn parse(head: &[u8]) -> HeaderBlock {
        let text = String::from_utf8_lossy(head);
        let mut fields: Vec<Field> = Vec::new();
        for line in text.split_inclusive("\r\n") {
            if line == "\r\n" {
                break;
            }
            let continuation = line.starts_with([' ', '\t']) || !line.contains(':');
            match fields.last_mut() {
                Some(last) if continuation => last.raw.push_str(line),
                _ => {
                    let mut raw = line.to_string();
                    if !raw.ends_with("\r\n") {
                        raw.push_str("\r\n");
                    }
                    // A line that is no field is kept, readable by no name.
                    let name_len = match line.find(':') {
                        Some(at) if !continuation => at,
                        _ => 0,
                    };
                    fields.push(Field { name_len, raw });
                }
            }
        }
        HeaderBlock { fields }
    }

    /// The values of every field named `name` (any case), in order.
    pub fn get(&self, name: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|f| f.name_len > 0 && f.name().trim().eq_ignore_ascii_case(name))
            .map(Field::value)
            .collect()
    }

    /// Removes every field named `name`; returns how many went.
    pub fn delete(&mut self, name: &str) -> usize {
        let before = self.fields.len();
        self.fields
            .retain(|f| !(f.name_len > 0 && f.name().trim().eq_ignore_ascii_case(name)));
        before - self.fields.len()
    }

    /// Writes `name: value`. `Err` says why the field is refused (a name
    /// that is not a header name, a CR or LF in the value, too long, too
    /// many fields); the block is unchanged then.
    pub fn set(&mut self, name: &str, value: &str, mode: Mode) -> Result<(), String> {
        let name_ok = !name.is_empty()
            && name.len() <= HEADER_VALUE_BYTES_MAX
            && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        if !name_ok {
            return Err(format!("`{}` is not a header name", name.escape_debug()));
        }
        if value.contains(['\r', '\n']) {
            return Err(format!("the value of {name} holds a CR or LF"));
        }
        if value.len() > HEADER_VALUE_BYTES_MAX {
            return Err(format!(
                "the value of {name} is over {HEADER_VALUE_BYTES_MAX} bytes"
            ));
        }
        if self.fields.len() >= HEADER_FIELDS_MAX {
            return Err(format!("a message may hold {HEADER_FIELDS_MAX} fields"));
        }
        let field = Field {
            name_len: name.len(),
            raw: format!("{name}: {value}\r\n"),
        };
        match mode {
            Mode::Prepend => self.fields.insert(0, field),
            Mode::Append => self.fields.push(field),
            Mode::Replace => {
                let first = self
                    .fields
                    .iter()
                    .position(|f| f.name_len > 0 && f.name().trim().eq_ignore_ascii_case(name));
                self.delete(name);
                let at = first.unwrap_or(self.fields.len()).min(self.fields.len());
                self.fields.insert(at, field);
            }
        }
        Ok(())
    }

    /// The block as text, without its blank line.
    pub fn render(&self) -> String {
        self.fields.iter().map(|f| f.raw.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] =
        b"From: a@b.test\r\nSubject: one\r\n two\r\nX-Tag: 1\r\nx-tag: 2\r\n\r\nbody\r\n";

    /// Goal: an untouched block renders byte for byte; folded values read
    /// unfolded; names match in any case.
    #[test]
    fn a_block_reads_and_renders_as_written() {
        let end = head_end(MESSAGE);
        assert_eq!(&MESSAGE[end..], b"body\r\n");
        let block = HeaderBlock::parse(&MESSAGE[..end]);
        assert_eq!(block.render().as_bytes(), &MESSAGE[..end - 2]);
        assert_eq!(block.get("subject"), vec!["one two".to_string()]);
        assert_eq!(block.get("X-TAG"), vec!["1".to_string(), "2".to_string()]);
        assert!(block.get("missing").is_empty());
    }

    /// Goal: replace, prepend, append and delete put fields where
    /// Momentum's msg:header does; bad input leaves the block alone.
    #[test]
    fn edits_land_in_place_and_bad_ones_are_refused() {
        let mut block = HeaderBlock::parse(&MESSAGE[..head_end(MESSAGE)]);
        block.set("X-Tag", "new", Mode::Replace).unwrap();
        block.set("X-First", "top", Mode::Prepend).unwrap();
        block.set("X-Last", "end", Mode::Append).unwrap();
        assert_eq!(
            block.render(),
            "X-First: top\r\nFrom: a@b.test\r\nSubject: one\r\n two\r\nX-Tag: new\r\nX-Last: end\r\n"
        );
        assert_eq!(block.delete("subject"), 1);
        assert!(block.set("Bad Name", "v", Mode::Append).is_err());
        assert!(block
            .set("X-Inject", "v\r\nBcc: x@y", Mode::Append)
            .is_err());
        assert_eq!(
            block.render(),
            "X-First: top\r\nFrom: a@b.test\r\nX-Tag: new\r\nX-Last: end\r\n"
        );
    }

    #[test]
    fn a_message_without_a_blank_line_is_all_headers() {
        assert_eq!(head_end(b"A: b\r\n"), 6);
        assert_eq!(head_end(b"\r\nbody"), 2);
    }
}
